"""Run the paper-scale experiments (Figures 2A, 2B, 2C) and record them in results/*.json.

    python tools/paper_scale.py fig2a --seeds 0 1 2
    python tools/paper_scale.py fig2c --seeds 0 1 2
    python tools/paper_scale.py fig2b --seeds 0
    python tools/paper_scale.py all            # the three, seeds 0 1 2
    python tools/paper_scale.py fig2b --seeds 2 --methods sgd_dropout single_task

Resumable: every search point and every run is written to its file when it finishes, and a
rerun skips what the file already holds. Several invocations may run at once (the files are
locked while written). The code must be committed first: each file records the commit.
Each invocation uses one CPU thread per process (run two at once on a 2-core machine).
See ewc_lib/experiments.py for the settings and how Table S1 is read.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from ewc_lib import experiments as ex
from ewc_lib.progress import progress_bar

# Measured epoch times on the 2-core reference machine, one thread (for the ETA only).
EPOCH_SECONDS = {"fig2a": 2.4, "fig2b": 2.2, "fig2c": 1.8}


def _keys(figure):
    """The runs of one seed: methods (2A, 2B) or squares (2C)."""
    if figure == "fig2a":
        return ["sgd", "l2", "ewc"]
    if figure == "fig2b":
        return ["ewc", "sgd_dropout", "single_task"]
    return ex.CONFIGS[figure]["squares"]


def _done(data):
    """The keys of what a results file holds: search points, runs and extra runs."""
    points = {(p["method"], p["lam"]) for p in (data["search"] or {}).get("points", [])}
    runs = {ex.run_key(r) for r in data["runs"]}
    extra = {(r["seed"], r["role"]) for r in data.get("extra_runs") or []}
    return points, runs, extra


def _recorded(figure, kind, job):
    """Whether a job is already in the file (another process may have recorded it)."""
    points, runs, extra = _done(ex.existing(figure))
    return job in {"search": points, "run": runs}.get(kind, extra)


def _jobs(figure, seeds, methods=None):
    """(kind, args, epochs) still to do, in order; lam resolved when the job starts.

    ``methods`` restricts the runs to some methods (2A, 2B) or squares (2C), so that two
    processes can share the runs of one seed; the search points are always included.
    """
    cfg = ex.CONFIGS[figure]
    done_points, done_runs, done_extra = _done(ex.existing(figure))
    jobs = []
    for method, grid in cfg.get("lam_grid", {}).items():
        for lam in grid:
            if (method, lam) not in done_points:
                jobs.append(("search", (method, lam), cfg["tasks"] * cfg["epochs_per_task"]))
    keys = [k for k in _keys(figure) if methods is None or str(k) in methods]
    for seed in seeds:
        for key in keys:
            if (seed, key) not in done_runs:
                epochs = cfg["epochs_per_task"] * (1 if key == "single_task" else cfg["tasks"])
                if figure == "fig2b":
                    epochs = epochs // 3  # early stopping: rough guess for the ETA
                jobs.append(("run", (seed, key), epochs))
    if figure == "fig2a" and (methods is None or "l2" in methods):
        # last: L2 as strong as it must be to protect A as well as EWC
        for seed in seeds:
            if (seed, "l2_protects_A") not in done_extra:
                jobs.append(("extra", (seed, "l2_protects_A"), cfg["tasks"] * cfg["epochs_per_task"]))
    return jobs


def _lam(figure, key):
    """The searched lam for a method (2B takes 2A's; 2C has only EWC)."""
    if figure == "fig2b":
        if key != "ewc":
            return 0.0
        while True:  # 2B takes 2A's lam: wait for that search (another job may run it)
            try:
                points = (ex.existing("fig2a")["search"] or {}).get("points", [])
                return ex.select_lambda(points, "ewc", ex.CONFIGS["fig2a"]["lam_grid"]["ewc"])
            except ValueError:
                time.sleep(60)
    if key == "sgd":
        return 0.0
    method = "ewc" if figure == "fig2c" else key
    points = ex.existing(figure)["search"]["points"]
    return ex.select_lambda(points, method, ex.CONFIGS[figure]["lam_grid"][method])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("figure", choices=["fig2a", "fig2b", "fig2c", "all"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--methods",
        nargs="+",
        default=None,
        help="only these runs of each seed: sgd l2 ewc (2A), ewc sgd_dropout single_task (2B), 8 26 (2C); default all",
    )
    args = parser.parse_args(argv)
    if args.methods is not None:
        known = {
            str(k) for f in (["fig2a", "fig2b", "fig2c"] if args.figure == "all" else [args.figure]) for k in _keys(f)
        }
        unknown = sorted(set(args.methods) - known)
        if unknown:
            parser.error(f"--methods: unknown {unknown}; expected some of {sorted(known)}")
    commit, dirty = ex.code_state()  # the code as loaded now is what runs
    if dirty:
        sys.exit("ewc_lib/ or tools/ has uncommitted changes: commit before recording results")
    torch.set_num_threads(args.threads)
    command = "python tools/paper_scale.py " + " ".join(argv if argv is not None else sys.argv[1:])
    figures = ["fig2a", "fig2c", "fig2b"] if args.figure == "all" else [args.figure]
    for figure in figures:
        jobs = _jobs(figure, args.seeds, args.methods)
        total = sum(e for *_, e in jobs) * EPOCH_SECONDS[figure]
        bar = progress_bar(
            total=round(total),
            desc=f"{figure}: {len(jobs)} jobs",
            unit="s",
            bar_format="{desc} {percentage:3.0f}%|{bar}| ETA {remaining} (elapsed {elapsed})",
            position=0,
        )
        for kind, job, epochs in jobs:
            start = time.time()
            if _recorded(figure, kind, job):  # done by another process meanwhile
                bar.update(round(epochs * EPOCH_SECONDS[figure]))
                bar.write(f"{figure} {kind} {job}: already recorded, skipped")
                continue
            if kind == "search":
                method, lam = job
                bar.set_description(f"{figure} search {method} lam={lam:g}")
                entry = ex.search_lambda(figure, method, lam)
                ex.record(figure, "search", entry, command)
            elif kind == "run":
                seed, key = job
                bar.set_description(f"{figure} seed {seed} {key}")
                if figure == "fig2c":
                    entry = ex.run_fig2c(seed, key, _lam(figure, "ewc"))
                elif figure == "fig2a":
                    entry = ex.run_fig2a(seed, key, _lam(figure, key))
                else:
                    entry = ex.run_fig2b(seed, key, _lam(figure, key))
                ex.record(figure, "runs", entry, command)
            elif kind == "extra":
                seed, role = job
                bar.set_description(f"{figure} seed {seed} {role}")
                search = ex.existing(figure)["search"]["points"]
                lam = ex.l2_matching_ewc(search)
                if lam is None:
                    bar.write(f"{figure}: no L2 lam of the grid protects A as well as EWC")
                    continue
                entry = dict(ex.run_fig2a(seed, "l2", lam), role=role)
                ex.record(figure, "extra_runs", entry, command)
            bar.update(round(epochs * EPOCH_SECONDS[figure]))
            bar.write(f"{figure} {kind} {job}: done in {time.time() - start:.0f} s")
        bar.close()


if __name__ == "__main__":
    main()
