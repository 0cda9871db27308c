"""Speed and memory of ewc_lib.fisher_diagonal against BackPACK and simple baselines.

Setting (issue 3): 784-400-400-10 ReLU MLP (``ewc_lib.mlp``, seed 0, untrained -- the cost
does not depend on the weights), the first 1000 MNIST training images, float32,
``torch.set_num_threads(2)``.

Timed, interleaved round by round so that every method sees the same machine load, and
reported as the minimum over ``--repeats`` rounds of both the wall time and the process CPU
time (user + system of all threads). The machine may be shared and noisy: the minimum is the
least disturbed run, and CPU time is less sensitive to other processes than wall time.
Ratios come from the same rounds:

* ``fisher_diagonal(exact)`` and BackPACK ``DiagGGNExact`` (forward + backward included);
* ``fisher_diagonal(empirical)`` and BackPACK ``SumGradSquared``;
* 10 plain forward+backward passes of the mean cross-entropy over the 1000 images (the
  natural floor for an exact Fisher with C = 10 classes);
* the brute-force loop of ``ewc_lib.reference.fisher_diagonal_loop`` (one autograd call
  per example and class) on a subset, extrapolated linearly to 1000 images.

Also timed in the same rounds: ``fisher_diagonal(empirical)`` with the skipping of all-zero
input features switched off (``ZERO_FEATURES_MIN_FRACTION > 1``), to show what that exact
shortcut contributes (about a fifth of the MNIST pixels are zero in all 1000 images).

Because the empirical diagonal takes only ~30 ms, a second, longer interleaved run times just
``fisher_diagonal(empirical)`` (skipping on and off) and BackPACK ``SumGradSquared`` for
``--empirical-rounds`` rounds and reports the ratio of the minima, of the 10th percentiles and
the median of the per-round ratios.

Cold and warm calls on the generic path: a small CNN (conv 1->8 5x5, ReLU, max-pool 2, conv
8->16 5x5, ReLU, max-pool 2, Linear 256->10; 5,994 parameters, float32) on the same 1000
images, exact Fisher (``torch.func`` path). In each of ``--cold-runs`` fresh subprocesses per
variant (variants alternate): the first call (*cold*), then three more (*warm*, the minimum is
kept), with wall time, CPU time and minor page faults. Two variants: the first call as a user
sees it, and the same after ``import torch._dynamo`` outside the timing: ``torch.func``'s
reverse mode imports ``torch._dynamo`` on its first use (``torch/_functorch/eager_transforms.py``,
``_autograd_grad``), a one-time cost of the process that no chunking can remove.

Then, in a fresh subprocess each, the peak resident memory of the exact diagonal over all
60,000 training images for a few chunk sizes (``batch_size``): the peak RSS during the call
(VmHWM, reset just before it) minus the RSS before it (Linux ``/proc``).

BackPACK is optional (``pip install .[bench]``); without it those rows are skipped.

Usage: ``python benchmarks/fisher_speed.py [--repeats 30] [--empirical-rounds 200] [--cold-runs 5]
[--no-memory] [--no-cold]``
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import resource
import statistics
import subprocess
import sys
import time
import warnings

import torch
from torch import nn

import ewc_lib
from ewc_lib import curvature, reference
from ewc_lib.curvature import flatten_params

THREADS = 2


def setup(n):
    torch.set_num_threads(THREADS)
    x_tr, y_tr, _, _ = ewc_lib.data.load_mnist()
    x, y = ewc_lib.data.as_tensors(x_tr[:n], y_tr[:n], dtype=torch.float32)
    model = ewc_lib.mlp([784, 400, 400, 10], activation="relu", seed=0, dtype=torch.float32)
    return model, x, y


def cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(256, 10),
    )


def cold_child(n, import_dynamo):
    """Run in a fresh subprocess: one cold and three warm exact diagonals of the CNN (JSON line)."""
    torch.set_num_threads(THREADS)
    t0 = time.perf_counter()
    if import_dynamo:  # the one-time import that torch.func's reverse mode does on first use
        importlib.import_module("torch._dynamo")
    import_seconds = time.perf_counter() - t0
    x_tr, y_tr, _, _ = ewc_lib.data.load_mnist()
    x = ewc_lib.data.as_tensors(x_tr[:n], y_tr[:n], dtype=torch.float32)[0].reshape(-1, 1, 28, 28)
    model = cnn()
    assert ewc_lib.fisher_path(model)[0] == "generic"
    runs = []
    for _ in range(4):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t, c = time.perf_counter(), time.process_time()
        ewc_lib.fisher_diagonal(model, x)
        runs.append(
            (time.perf_counter() - t, time.process_time() - c, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        )
    print(json.dumps({"cold": runs[0], "warm": runs[1:], "import": import_seconds}))


def cold_warm(n, runs):
    variants = [("first call, as a user sees it", False), ("first call after `import torch._dynamo`", True)]
    results = {name: [] for name, _ in variants}
    for r in range(runs):
        for name, dyn in variants if r % 2 == 0 else variants[::-1]:
            out = subprocess.run(
                [sys.executable, __file__, "--cold-child", str(n), str(int(dyn))],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            results[name].append(json.loads(out.strip().splitlines()[-1]))
    print(
        f"\nGeneric path, small CNN (5,994 parameters, float32), exact diagonal of {n} MNIST images "
        f"(GENERIC_BUDGET = {curvature.GENERIC_BUDGET}); {runs} fresh processes per variant, variants "
        f"alternating; minimum over processes (warm: over 3 calls x processes), median page faults:\n"
    )
    print(
        "| variant | cold wall (s) | cold CPU (s) | warm wall (s) | warm CPU (s) | cold / warm wall | "
        "cold / warm CPU | page faults cold | page faults warm |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    for name, rows in results.items():
        cw, cc = min(r["cold"][0] for r in rows), min(r["cold"][1] for r in rows)
        ww = min(w[0] for r in rows for w in r["warm"])
        wc = min(w[1] for r in rows for w in r["warm"])
        fc = statistics.median(r["cold"][2] for r in rows)
        fw = statistics.median(r["warm"][-1][2] for r in rows)
        print(
            f"| {name} | {cw:.2f} | {cc:.2f} | {ww:.2f} | {wc:.2f} | {cw / ww:.2f} | {cc / wc:.2f} | "
            f"{fc:.0f} | {fw:.0f} |"
        )
    imports = [r["import"] for name, dyn in variants if dyn for r in results[name]]
    print(
        f"\n`import torch._dynamo` alone (outside the timed calls above): min {min(imports):.2f} s, "
        f"median {statistics.median(imports):.2f} s wall"
    )


def _status_kib(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def memory_child(n, chunk):
    """Run in a subprocess: peak RSS increase of one exact diagonal over n images.

    Linux: the peak-RSS counter (VmHWM) is reset through /proc/self/clear_refs just before
    the call, so the peak of loading the data does not hide the call's own peak.
    """
    model, x, _ = setup(n)
    ewc_lib.fisher_diagonal(model, x[:64], batch_size=chunk)  # warm up allocator and kernels
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    t0, c0 = time.perf_counter(), time.process_time()
    ewc_lib.fisher_diagonal(model, x, batch_size=chunk)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = _status_kib("VmHWM")
    print(f"{(peak - before) / 1024:.1f} {wall:.2f} {cpu:.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="images for the timings")
    parser.add_argument("--repeats", type=int, default=30, help="rounds; the minimum is reported")
    parser.add_argument("--naive-subset", type=int, default=20, help="images for the brute-force loop")
    parser.add_argument("--no-memory", action="store_true", help="skip the 60,000-image memory runs")
    parser.add_argument(
        "--empirical-rounds", type=int, default=200, help="rounds of the long empirical-vs-SumGradSquared run (0: skip)"
    )
    parser.add_argument("--cold-runs", type=int, default=5, help="fresh processes per cold/warm variant")
    parser.add_argument("--no-cold", action="store_true", help="skip the cold/warm CNN runs")
    parser.add_argument("--memory-child", nargs=2, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cold-child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(*args.memory_child)
        return
    if args.cold_child:
        cold_child(*args.cold_child)
        return

    model, x, y = setup(args.n)
    n = x.shape[0]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, MLP 784-400-400-10 ReLU, "
        f"N = {n} MNIST images, min of {args.repeats} interleaved rounds after a warm-up (shared machine: "
        f"wall times are noisy; compare ratios measured in the same rounds)\n"
    )

    methods = {
        "ewc_lib fisher_diagonal(exact)": lambda: ewc_lib.fisher_diagonal(model, x),
        "ewc_lib fisher_diagonal(empirical)": lambda: ewc_lib.fisher_diagonal(
            model, x, estimator="empirical", targets=y
        ),
    }

    def ten_passes():
        for _ in range(10):
            model.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
        model.zero_grad()

    def empirical_dense():
        saved = curvature.ZERO_FEATURES_MIN_FRACTION
        curvature.ZERO_FEATURES_MIN_FRACTION = 2.0  # never skip all-zero input features
        try:
            ewc_lib.fisher_diagonal(model, x, estimator="empirical", targets=y)
        finally:
            curvature.ZERO_FEATURES_MIN_FRACTION = saved

    methods["ewc_lib fisher_diagonal(empirical), zero-feature skipping off"] = empirical_dense
    methods["10 x forward+backward (mean CE)"] = ten_passes

    try:
        import backpack
        from backpack.extensions import DiagGGNExact, SumGradSquared
    except ImportError:
        backpack = None
        print("BackPACK is not installed (pip install '.[bench]'): BackPACK rows and ratios skipped.\n")
    if backpack is not None:
        ext = backpack.extend(copy.deepcopy(model))
        loss_sum = backpack.extend(nn.CrossEntropyLoss(reduction="sum"))

        def run_backpack(extension):
            ext.zero_grad()
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                with backpack.backpack(extension):
                    loss_sum(ext(x), y).backward()

        methods["BackPACK DiagGGNExact"] = lambda: run_backpack(DiagGGNExact())
        methods["BackPACK SumGradSquared"] = lambda: run_backpack(SumGradSquared())

        # correctness in the same setting (float32): sum reduction, divided by N
        run_backpack(DiagGGNExact())
        bp = torch.cat([p.diag_ggn_exact.reshape(-1) for p in ext.parameters()]) / n
        ours = flatten_params(ewc_lib.fisher_diagonal(model, x))
        run_backpack(SumGradSquared())
        bp_ef = torch.cat([p.sum_grad_squared.reshape(-1) for p in ext.parameters()]) / n
        ours_ef = flatten_params(ewc_lib.fisher_diagonal(model, x, estimator="empirical", targets=y))
        rel = (ours - bp).abs().max() / bp.abs().max()
        rel_ef = (ours_ef - bp_ef).abs().max() / bp_ef.abs().max()
        print(f"check vs BackPACK (max |diff| / max |value|): exact {rel:.1e}, empirical {rel_ef:.1e}\n")

    wall = {k: float("inf") for k in methods}
    cpu = {k: float("inf") for k in methods}
    ex, em = "ewc_lib fisher_diagonal(exact)", "ewc_lib fisher_diagonal(empirical)"
    dense = "ewc_lib fisher_diagonal(empirical), zero-feature skipping off"
    floor = "10 x forward+backward (mean CE)"
    pairs = [(ex, floor), (em, dense)]
    if backpack is not None:
        pairs += [(ex, "BackPACK DiagGGNExact"), (em, "BackPACK SumGradSquared"), (dense, "BackPACK SumGradSquared")]
    last, per_round = {}, {}
    for fn in methods.values():  # warm-up
        fn()
    order = list(methods.items())
    for r in range(args.repeats):
        for name, fn in order if r % 2 == 0 else order[::-1]:  # alternate the order: no position bias
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            last[name] = time.perf_counter() - t0
            wall[name] = min(wall[name], last[name])
            cpu[name] = min(cpu[name], time.process_time() - c0)
        for a, b in pairs:
            per_round.setdefault((a, b), []).append(last[a] / last[b])

    sub = min(args.naive_subset, n)
    t0, c0 = time.perf_counter(), time.process_time()
    reference.fisher_diagonal_loop(model, x[:sub])
    name = f"reference loop (per example and class; {sub} images, x{n / sub:g} extrapolated)"
    wall[name], cpu[name] = (time.perf_counter() - t0) * n / sub, (time.process_time() - c0) * n / sub

    width = max(len(k) for k in wall)
    print(f"| {'method':<{width}} | wall (s) | CPU (s) |")
    print(f"|{'-' * (width + 2)}|---------:|--------:|")
    for k in wall:
        print(f"| {k:<{width}} | {wall[k]:8.4f} | {cpu[k]:7.4f} |")

    def ratio(a, b):
        return f"{wall[a] / wall[b]:.2f} | {cpu[a] / cpu[b]:.2f} | {statistics.median(per_round[(a, b)]):.2f}"

    print(
        "\n| ratio | min wall / min wall | min CPU / min CPU | median of per-round wall ratios |\n|---|---:|---:|---:|"
    )
    if backpack is not None:
        print(
            f"| fisher_diagonal(exact) / BackPACK DiagGGNExact (must be <= 1) | {ratio(ex, 'BackPACK DiagGGNExact')} |"
        )
        print(
            f"| fisher_diagonal(empirical) / BackPACK SumGradSquared (target <= 0.7) | "
            f"{ratio(em, 'BackPACK SumGradSquared')} |"
        )
        print(
            f"| same, zero-feature skipping off / BackPACK SumGradSquared | {ratio(dense, 'BackPACK SumGradSquared')} |"
        )
    else:
        print("| BackPACK ratios | skipped (BackPACK not installed) | | |")
    print(f"| fisher_diagonal(empirical) / same with zero-feature skipping off | {ratio(em, dense)} |")
    print(f"| fisher_diagonal(exact) / 10 forward+backward passes | {ratio(ex, floor)} |")
    print(
        f"| reference loop (extrapolated) / fisher_diagonal(exact) | {wall[name] / wall[ex]:.0f} | "
        f"{cpu[name] / cpu[ex]:.0f} | |"
    )

    if backpack is not None and args.empirical_rounds > 0:
        focus = [em, dense, "BackPACK SumGradSquared"]
        times = {k: [] for k in focus}
        for r in range(args.empirical_rounds):
            for name in focus if r % 2 == 0 else focus[::-1]:
                t0 = time.perf_counter()
                methods[name]()
                times[name].append(time.perf_counter() - t0)

        def stats(a, b):
            p10 = {k: statistics.quantiles(times[k], n=10)[0] for k in (a, b)}
            paired = statistics.median(u / v for u, v in zip(times[a], times[b]))
            return f"{min(times[a]) / min(times[b]):.2f} | {p10[a] / p10[b]:.2f} | {paired:.2f}"

        print(
            f"\nLonger interleaved run, {args.empirical_rounds} rounds of the three methods only (wall):\n\n"
            "| ratio | min / min | 10th pct / 10th pct | median of per-round ratios |\n|---|---:|---:|---:|"
        )
        print(
            f"| fisher_diagonal(empirical) / BackPACK SumGradSquared (target <= 0.7) | "
            f"{stats(em, 'BackPACK SumGradSquared')} |"
        )
        print(
            f"| same, zero-feature skipping off / BackPACK SumGradSquared | {stats(dense, 'BackPACK SumGradSquared')} |"
        )
        print(f"| fisher_diagonal(empirical) / same with zero-feature skipping off | {stats(em, dense)} |")

    if not args.no_cold:
        cold_warm(n, args.cold_runs)

    if not args.no_memory:
        print(
            "\nExact diagonal over all 60,000 training images (fresh subprocess each; peak RSS increase "
            "during the call):\n"
        )
        print("| batch_size (chunk) | peak RSS increase (MiB) | wall (s) | CPU (s) |\n|---:|---:|---:|---:|")
        for chunk in (256, 1024, 4096):
            out = subprocess.run(
                [sys.executable, __file__, "--memory-child", "60000", str(chunk)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            print(f"| {chunk} | {float(out[0]):.0f} | {float(out[1]):.1f} | {float(out[2]):.1f} |")


if __name__ == "__main__":
    main()
