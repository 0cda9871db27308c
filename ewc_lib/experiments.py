"""The paper-scale permuted-MNIST experiments (Figures 2A, 2B, 2C), recorded in ``results/``.

Each figure has a fixed configuration (:data:`CONFIGS`, the paper's Table S1 read as
explained below), a search for the penalty strength ``lam`` on a validation split held out
of the training images, and one *run* per (seed, method) or (seed, square). A run is written
to its results file as soon as it finishes, together with its provenance, so that a long
job can be stopped and resumed (:func:`record`), and each run records an early *checkpoint*
(a fingerprint of the parameters after :data:`REPLAY_STEPS` SGD steps) so that a test can
replay the start of the run from the recorded configuration and check that this code
produced the file (:func:`replay`).

Reading of Table S1 (column A, the same for B and C unless said):

* "learning rate 1e-3" with no minibatch size: we read it as a step of 1e-3 per example on
  the *summed* loss of a minibatch, which is ``lr = 0.1`` on the *mean* loss of a minibatch
  of 100 (the common Torch7 practice of the time; ``lr = 1e-3`` on a mean loss moves a
  network by 1/100 as much and needs ~100 times the epochs to train).
* The data term is plain SGD. The quadratic penalty (EWC or L2) is applied in closed form
  after each data step (:meth:`ewc_lib.EWCPenalty.proximal_step`): the same fixed points as
  SGD on the sum, but stable for any ``lam``, so that the search is not capped by the
  step-size bound ``lr * lam * max F < 2``.
* The Fisher is the exact diagonal (:func:`ewc_lib.fisher_diagonal`, labels averaged over
  the model's predictive distribution) on the first 10,000 training images of the task.
* ``lam`` is searched on a validation split: the last 10,000 training images of every task
  (:func:`ewc_lib.tasks.hold_out_validation`), training on the first 50,000; the test set is
  never used to choose anything.
* Test accuracies are on the full 10,000-image test set of every task.
* Figure 2C uses ``lr = 0.01``: at 0.1 the six-layer network, after 100 epochs on plain
  MNIST, diverged (non-finite loss) within the first steps of the second task.
* A search point whose training diverges is recorded as diverged (no accuracy), not dropped.
"""

from __future__ import annotations

import copy
import datetime as _dt
import fcntl
import json
import os
import pathlib
import platform
import subprocess
import sys
from contextlib import contextmanager

import numpy as np
import torch

from .continual import train_continual
from .curvature import fisher_diagonal
from .models import mlp
from .overlap import layerwise_overlap
from .tasks import centre_square_tasks, hold_out_validation, permuted_mnist_tasks

__all__ = ["CONFIGS", "REPLAY_STEPS", "RESULTS_DIR", "load_results", "recorded", "planned_runs",
           "record", "replay", "chosen_lambdas", "write_chosen_lambdas",
           "fingerprint", "search_lambda", "run_fig2a", "run_fig2b", "run_fig2c"]

#: Where the result files live: the repository's ``results/``, or ``$EWC_RESULTS_DIR`` (so that
#: a clean checkout of a fixed commit can run the experiments for a working copy that is edited).
RESULTS_DIR = pathlib.Path(os.environ.get("EWC_RESULTS_DIR")
                           or pathlib.Path(__file__).resolve().parent.parent / "results")

#: SGD steps after which a run records its checkpoint (the replay test re-runs these).
REPLAY_STEPS = 300

N_VAL = 10_000        # validation images held out of each task's 60,000 training images
FISHER_N = 10_000     # training images per Fisher diagonal

CONFIGS = {
    "fig2a": dict(hidden=[400, 400], tasks=3, epochs_per_task=20, lr=0.1, batch_size=100,
                  n_train=60_000, n_test=10_000, dropout=None, early_stopping=None,
                  fisher="exact", fisher_num_examples=FISHER_N, penalty_step="proximal",
                  eval_every=600, search_seed=0, n_val=N_VAL,
                  lam_grid={"ewc": [1.0, 10.0, 100.0, 1000.0, 10000.0],
                            "l2": [0.001, 0.01, 0.1, 1.0, 10.0]}),
    "fig2b": dict(hidden=[400, 400], tasks=10, epochs_per_task=100, lr=0.1, batch_size=100,
                  n_train=50_000, n_test=10_000, dropout=[0.2, 0.5], early_stopping=5,
                  fisher="exact", fisher_num_examples=FISHER_N, penalty_step="proximal",
                  n_val=N_VAL, lam_from="fig2a"),
    "fig2c": dict(hidden=[100] * 6, tasks=2, epochs_per_task=100, lr=0.01, batch_size=100,
                  n_train=60_000, n_test=10_000, squares=[8, 26], fisher="exact",
                  fisher_num_examples=FISHER_N, penalty_step="proximal", search_seed=0,
                  search_square=26, n_val=N_VAL, lam_grid={"ewc": [10.0, 100.0, 1000.0]}),
}


# ---------------------------------------------------------------------------- files
def _path(figure: str) -> pathlib.Path:
    return RESULTS_DIR / f"{figure}.json"


@contextmanager
def _locked(figure: str):
    """Exclusive lock around a read-modify-write of one results file (several jobs may run)."""
    RESULTS_DIR.mkdir(exist_ok=True)
    with open(RESULTS_DIR / f".{figure}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def load_results(figure: str, path=None) -> dict:
    """Read and check ``results/<figure>.json``; raise ``ValueError`` naming what is wrong."""
    if figure not in CONFIGS:
        raise ValueError(f"figure: expected one of {sorted(CONFIGS)}, got {figure!r}")
    path = pathlib.Path(path) if path is not None else _path(figure)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no recorded results; run `make paper-scale`")
    data = json.loads(path.read_text())
    for key in ("provenance", "config", "runs"):
        if key not in data:
            raise ValueError(f"{path}: missing key {key!r}")
    prov = data["provenance"]
    for key in ("command", "commit", "finished", "cpu_seconds", "torch", "threads"):
        if key not in prov:
            raise ValueError(f"{path}: provenance has no {key!r}")
    commit = prov["commit"]
    if not (isinstance(commit, str) and len(commit) == 40
            and all(c in "0123456789abcdef" for c in commit)):
        raise ValueError(f"{path}: provenance.commit must be 40 hex digits, got {commit!r}")
    for run in data["runs"]:
        if "checkpoint" not in run or "seed" not in run:
            raise ValueError(f"{path}: a run lacks 'seed' or 'checkpoint': {sorted(run)}")
    if "lam" in data["config"]:
        chosen = chosen_lambdas(figure, data)
        if data["config"]["lam"] != chosen:
            raise ValueError(f"{path}: config.lam {data['config']['lam']} is not what the recorded "
                             f"search selects ({chosen})")
    return data


def chosen_lambdas(figure: str, data: dict) -> dict | None:
    """The ``lam`` of each penalty that the recorded search selects (``None`` while incomplete).

    Figure 2A: ``{"ewc": ..., "l2": ...}``; 2C: ``{"ewc": ...}``; 2B takes EWC's from the
    Figure 2A file. Written into the file's ``config["lam"]`` (a field derived from the search,
    so that a reader of the file finds the values without re-running the selection).
    """
    if figure == "fig2b":
        if not _path("fig2a").exists():
            return None
        lam = chosen_lambdas("fig2a", json.loads(_path("fig2a").read_text()))
        return None if lam is None else {"ewc": lam["ewc"]}
    points = (data.get("search") or {}).get("points", [])
    try:
        return {m: select_lambda(points, m, g) for m, g in CONFIGS[figure]["lam_grid"].items()}
    except ValueError:
        return None


def _same_config(recorded_cfg: dict, figure: str) -> bool:
    """A file's config equals the code's, apart from the derived ``lam``."""
    return {k: v for k, v in recorded_cfg.items() if k != "lam"} == CONFIGS[figure]


def recorded(figure: str) -> dict:
    """``load_results(figure)``, or an empty record (no search, no runs) if there is no file.

    The pages use it so that they build while a long job is still filling the files; what is
    missing is said on the page (``len(data["runs"])`` against :func:`planned_runs`).
    """
    try:
        return load_results(figure)
    except FileNotFoundError:
        return _empty(figure, "")


def planned_runs(figure: str, seeds=(0, 1, 2)) -> int:
    """How many runs ``make paper-scale`` records for ``figure`` (three per seed)."""
    return 3 * len(seeds) if figure != "fig2c" else len(CONFIGS[figure]["squares"]) * len(seeds)


def _empty(figure: str, command: str) -> dict:
    cfg = copy.deepcopy(CONFIGS[figure])
    return {"provenance": {"command": command, "commit": "", "finished": "", "cpu_seconds": 0.0,
                           "torch": torch.__version__, "threads": torch.get_num_threads(),
                           "python": platform.python_version(), "numpy": np.__version__,
                           "machine": platform.machine()},
            "config": cfg, "search": None, "runs": []}


def _git(*args) -> str:
    root = pathlib.Path(__file__).resolve().parent.parent
    out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


#: The code this process runs: the commit checked out when ``ewc_lib.experiments`` was
#: imported, and whether ``ewc_lib/`` or ``tools/`` had uncommitted changes then (later edits
#: of the files do not change a running process).
_CODE_STATE = {}


def code_state() -> tuple[str, bool]:
    """``(commit, dirty)`` of the code as it was when this process first asked."""
    if not _CODE_STATE:
        _CODE_STATE["commit"] = _git("rev-parse", "HEAD")
        _CODE_STATE["dirty"] = bool(_git("status", "--porcelain", "--", "ewc_lib", "tools"))
    return _CODE_STATE["commit"], _CODE_STATE["dirty"]


def _read_or_new(figure: str, command: str) -> dict:
    path = _path(figure)
    if path.exists():
        data = json.loads(path.read_text())
        if not _same_config(data["config"], figure):
            raise ValueError(f"{path}: recorded config differs from CONFIGS[{figure!r}]; move the "
                             "file away to start a new record")
        return data
    return _empty(figure, command)


def record(figure: str, key: str, entry: dict, command: str) -> None:
    """Add one finished run (``key='runs'``) or search point (``key='search'``) to the file.

    Provenance is updated on every write: the commit the code ran from (refused if
    ``ewc_lib`` has uncommitted changes), the finishing date, the summed CPU seconds.
    """
    commit, dirty = code_state()
    if dirty:
        raise RuntimeError("ewc_lib or tools has uncommitted changes: commit before recording "
                           "results")
    entry = dict(entry, commit=commit)
    with _locked(figure):
        data = _read_or_new(figure, command)
        if key == "runs":
            data["runs"].append(entry)
            data["runs"].sort(key=lambda r: (r["seed"], str(r.get("method", r.get("square")))))
        elif key == "search":
            data["search"] = data["search"] or {"points": []}
            data["search"]["points"].append(entry)
        elif key == "extra_runs":
            data.setdefault("extra_runs", []).append(entry)
            data["extra_runs"].sort(key=lambda r: (r["role"], r["seed"]))
        else:
            raise ValueError(f"key: expected 'runs', 'search' or 'extra_runs', got {key!r}")
        prov = data["provenance"]
        prov.update(command=command, commit=commit,
                    finished=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    torch=torch.__version__, threads=torch.get_num_threads())
        prov["cpu_seconds"] = round(float(entry.get("cpu_seconds", 0.0)) + prov["cpu_seconds"], 1)
        _set_lam(figure, data)
        _write(figure, data)


def _set_lam(figure: str, data: dict) -> None:
    lam = chosen_lambdas(figure, data)
    if lam is not None:
        data["config"]["lam"] = lam


def _write(figure: str, data: dict) -> None:
    tmp = _path(figure).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, _path(figure))


def write_chosen_lambdas(figure: str) -> dict | None:
    """Write ``config["lam"]`` (:func:`chosen_lambdas`) into an existing file; nothing else
    changes. :func:`record` does this on every write; this is for files recorded before."""
    if not _path(figure).exists():
        raise FileNotFoundError(f"{_path(figure)}: no recorded results")
    with _locked(figure):
        data = _read_or_new(figure, "")
        _set_lam(figure, data)
        _write(figure, data)
        return data["config"].get("lam")


def existing(figure: str) -> dict:
    """The current contents of a results file (or an empty record)."""
    with _locked(figure):
        return _read_or_new(figure, " ".join(sys.argv))


# ----------------------------------------------------------------- building blocks
def fingerprint(model: torch.nn.Module) -> dict:
    """Per-parameter sum and Euclidean norm (float64): a compact checkpoint of the weights."""
    out = {}
    for name, p in model.named_parameters():
        q = p.detach().to(torch.float64)
        out[name] = [float(q.sum()), float(q.norm())]
    return out


class _StopReplay(Exception):
    pass


class _Checkpoint:
    """A ``train_continual`` callback that records :func:`fingerprint` at ``REPLAY_STEPS``."""

    def __init__(self, steps=REPLAY_STEPS, stop=False):
        self.steps, self.stop, self.value = steps, stop, None

    def __call__(self, step, model):
        if step == self.steps:
            self.value = {"step": step, "params": fingerprint(model)}
            if self.stop:
                raise _StopReplay


def _net(cfg, seed, dropout=False):
    rates = cfg.get("dropout") if dropout else None
    kwargs = dict(dropout_input=rates[0], dropout_hidden=rates[1]) if rates else {}
    return mlp([784, *cfg["hidden"], 10], seed=seed, **kwargs)


def _tasks(figure, cfg, seed, *, search=False, square=None):
    """The task list of one run: permuted MNIST (2A, 2B) or centre squares (2C).

    ``search=True``: train on the first 50,000 images and report validation accuracy in
    place of test accuracy. 2B always carries the validation split (early stopping).
    """
    if figure == "fig2c":
        tasks = centre_square_tasks(square, num_tasks=cfg["tasks"], seed=seed)
    else:
        tasks = permuted_mnist_tasks(cfg["tasks"], seed=seed)
    if search or figure == "fig2b":
        tasks = [hold_out_validation(t, cfg["n_val"], as_test=search) for t in tasks]
    return tasks


def _train(figure, cfg, net, tasks, method, lam, seed, callback=None, early=None, progress=True):
    return train_continual(
        net, tasks, method=method, lam=lam, lr=cfg["lr"], epochs_per_task=cfg["epochs_per_task"],
        batch_size=cfg["batch_size"], fisher_estimator=cfg["fisher"],
        fisher_num_examples=cfg["fisher_num_examples"], penalty_step=cfg["penalty_step"],
        eval_every=cfg.get("eval_every"), early_stopping=early, seed=seed, callback=callback,
        progress=progress)


def _run_entry(hist, seed, checkpoint, **extra):
    entry = {"seed": seed, **extra, "accuracy_matrix": hist.accuracy_matrix().round(5).tolist(),
             "epochs_run": hist.epochs_run,
             "penalty_step_curvature": [round(c, 4) for c in hist.penalty_step_curvature],
             "cpu_seconds": round(hist.cpu_seconds, 1), "checkpoint": checkpoint}
    return entry


# -------------------------------------------------------------------------- search
def search_lambda(figure: str, method: str, lam: float, progress=True) -> dict:
    """One point of the ``lam`` search: train on 50,000 images, score on validation."""
    cfg = dict(CONFIGS[figure], eval_every=None)   # only the end-of-task accuracies count
    seed = cfg["search_seed"]
    square = cfg.get("search_square")
    tasks = _tasks(figure, cfg, seed, search=True, square=square)
    try:
        hist = _train(figure, cfg, _net(cfg, seed), tasks, method, lam, seed,
                      progress=progress)
    except FloatingPointError as err:
        return {"method": method, "lam": lam, "diverged": str(err), "val_accuracy_matrix": None,
                "val_final_mean": None}
    R = hist.accuracy_matrix()
    return {"method": method, "lam": lam, "val_accuracy_matrix": R.round(5).tolist(),
            "val_final_mean": round(float(R[-1].mean()), 5),
            "penalty_step_curvature": [round(c, 4) for c in hist.penalty_step_curvature],
            "cpu_seconds": round(hist.cpu_seconds, 1)}


def select_lambda(points: list[dict], method: str, grid=None) -> float:
    """The grid value with the best mean final validation accuracy (ties: the smaller lam).

    With ``grid``, every value of it must have been searched (else ``ValueError``).
    """
    cands = [p for p in points if p["method"] == method]
    missing = sorted(set(grid or ()) - {p["lam"] for p in cands})
    if not cands or missing:
        raise ValueError(f"search for method {method!r} incomplete: missing lam {missing}")
    finite = [p for p in cands if p["val_final_mean"] is not None]
    if not finite:
        raise ValueError(f"search for method {method!r}: every lam diverged")
    return min(finite, key=lambda p: (-p["val_final_mean"], p["lam"]))["lam"]


def l2_matching_ewc(points: list[dict]) -> float | None:
    """The smallest L2 ``lam`` whose final validation accuracy on task A is at least EWC's.

    EWC at its selected ``lam`` is the reference. ``None`` when no grid value protects A as
    well.
    """
    lam_ewc = select_lambda(points, "ewc")
    ewc_a = next(p for p in points if p["method"] == "ewc" and p["lam"] == lam_ewc)
    target = ewc_a["val_accuracy_matrix"][-1][0]
    ok = sorted(p["lam"] for p in points if p["method"] == "l2" and p["val_accuracy_matrix"]
                and p["val_accuracy_matrix"][-1][0] >= target)
    return ok[0] if ok else None


# ----------------------------------------------------------------------------- runs
def run_fig2a(seed: int, method: str, lam: float, progress=True) -> dict:
    cfg = CONFIGS["fig2a"]
    ck = _Checkpoint()
    hist = _train("fig2a", cfg, _net(cfg, seed), _tasks("fig2a", cfg, seed), method, lam, seed,
                  callback=ck, progress=progress)
    curves = {}
    for j in range(cfg["tasks"]):
        steps, acc = hist.curve(j)
        curves[str(j)] = [steps.tolist(), acc.round(5).tolist()]
    return _run_entry(hist, seed, ck.value, method=method, lam=lam, curves=curves,
                      task_boundaries=hist.task_boundaries)


def run_fig2b(seed: int, method: str, lam: float, progress=True) -> dict:
    """``method`` in ewc / sgd_dropout / single_task (plain net, task A only)."""
    cfg = CONFIGS["fig2b"]
    tasks = _tasks("fig2b", cfg, seed)
    ck = _Checkpoint()
    if method == "ewc":
        net, algo, tasks_used = _net(cfg, seed), "ewc", tasks
    elif method == "sgd_dropout":
        net, algo, tasks_used, lam = _net(cfg, seed, dropout=True), "sgd", tasks, 0.0
    elif method == "single_task":
        net, algo, tasks_used, lam = _net(cfg, seed), "sgd", tasks[:1], 0.0
    else:
        raise ValueError(f"method: expected ewc, sgd_dropout or single_task, got {method!r}")
    hist = _train("fig2b", cfg, net, tasks_used, algo, lam, seed, callback=ck,
                  early=cfg["early_stopping"], progress=progress)
    avg = hist.average_after_each_task().round(5).tolist()
    return _run_entry(hist, seed, ck.value, method=method, lam=lam, average_accuracy=avg)


def run_fig2c(seed: int, square: int, lam: float, progress=True) -> dict:
    """Train on plain MNIST, then with EWC on the centre-square task; overlap per layer."""
    cfg = CONFIGS["fig2c"]
    tasks = _tasks("fig2c", cfg, seed, square=square)
    net = _net(cfg, seed)
    n = cfg["fisher_num_examples"]

    def fishers():
        return [fisher_diagonal(net, t.x_train[:n], likelihood="categorical", estimator="exact")
                for t in tasks]

    at_init = layerwise_overlap(*fishers(), net)
    ck = _Checkpoint()
    hist = _train("fig2c", cfg, net, tasks, "ewc", lam, seed, callback=ck, progress=progress)
    after = layerwise_overlap(*fishers(), net)
    return _run_entry(hist, seed, ck.value, square=square, lam=lam,
                      layers=[name for name, _ in after],
                      overlap=[round(o, 6) for _, o in after],
                      overlap_at_init=[round(o, 6) for _, o in at_init])


# --------------------------------------------------------------------------- replay
def replay(figure: str, run: dict, config: dict, steps: int | None = None) -> dict:
    """Re-run the first ``checkpoint.step`` SGD steps of a recorded run; return its checkpoint.

    Uses the recorded ``config`` (not :data:`CONFIGS`), seed and method/square, and stops as
    soon as the checkpoint is taken. Compare the result with ``run["checkpoint"]``.
    """
    cfg = config
    steps = run["checkpoint"]["step"] if steps is None else steps
    seed = run["seed"]
    ck = _Checkpoint(steps, stop=True)
    if figure == "fig2a":
        net, tasks, algo, lam = _net(cfg, seed), _tasks(figure, cfg, seed), run["method"], run["lam"]
        early = None
    elif figure == "fig2b":
        tasks = _tasks(figure, cfg, seed)
        method = run["method"]
        net = _net(cfg, seed, dropout=method == "sgd_dropout")
        algo, lam = ("ewc", run["lam"]) if method == "ewc" else ("sgd", 0.0)
        tasks = tasks[:1] if method == "single_task" else tasks
        early = cfg["early_stopping"]
    else:
        net, tasks = _net(cfg, seed), _tasks(figure, cfg, seed, square=run["square"])
        algo, lam, early = "ewc", run["lam"], None
    try:
        _train(figure, cfg, net, tasks, algo, lam, seed, callback=ck, early=early, progress=False)
    except _StopReplay:
        pass
    return ck.value


def overlap_at_init(run: dict, config: dict) -> list[float]:
    """Recompute a Figure 2C run's overlap at initialisation (cheap: no training)."""
    net = _net(config, run["seed"])
    tasks = _tasks("fig2c", config, run["seed"], square=run["square"])
    n = config["fisher_num_examples"]
    fs = [fisher_diagonal(net, t.x_train[:n], likelihood="categorical", estimator="exact")
          for t in tasks]
    return [o for _, o in layerwise_overlap(*fs, net)]



# ------------------------------------------------------------------------- summaries
def _stats(values) -> dict:
    a = np.asarray(values, dtype=float)
    return {"mean": a.mean(axis=0), "std": a.std(axis=0, ddof=1) if len(a) > 1 else 0 * a[0],
            "min": a.min(axis=0), "max": a.max(axis=0), "n": len(a)}


def summarize(figure: str, data: dict, key: str = "runs") -> dict:
    """Mean, sample standard deviation, min and max over seeds of a results file's numbers.

    ``fig2a``: per method, ``"R"`` (accuracy matrices) and ``"curves"`` (per task, the
    accuracy at each evaluation step, with ``"steps"``). ``fig2b``: per method,
    ``"average"``. ``key="extra_runs"`` summarises the extra runs instead (Figure 2A: L2 at
    the ``lam`` that protects task A as well as EWC, :func:`l2_matching_ewc`). ``fig2c``: per square, ``"overlap"`` and ``"overlap_at_init"``, plus
    ``"R"``. Every entry is a dict with arrays ``mean``, ``std``, ``min``, ``max`` and the
    number of seeds ``n``.
    """
    runs_all = data.get(key) or []
    key = "square" if figure == "fig2c" else "method"
    out = {}
    for value in sorted({r[key] for r in runs_all}, key=str):
        runs = sorted((r for r in runs_all if r[key] == value), key=lambda r: r["seed"])
        s = {"seeds": [r["seed"] for r in runs], "lam": runs[0]["lam"],
             "R": _stats([r["accuracy_matrix"] for r in runs])}
        if figure == "fig2a":
            s["curves"] = {}
            for j in sorted(runs[0]["curves"], key=int):
                steps = runs[0]["curves"][j][0]
                if any(r["curves"][j][0] != steps for r in runs):
                    raise ValueError(f"{figure}: evaluation steps differ between seeds")
                s["curves"][int(j)] = dict(_stats([r["curves"][j][1] for r in runs]),
                                           steps=np.array(steps))
            s["boundaries"] = runs[0]["task_boundaries"]
        elif figure == "fig2b":
            s["average"] = _stats([r["average_accuracy"] for r in runs])
            s["epochs_run"] = [r["epochs_run"] for r in runs]
        else:
            s["overlap"] = _stats([r["overlap"] for r in runs])
            s["overlap_at_init"] = _stats([r["overlap_at_init"] for r in runs])
            s["layers"] = runs[0]["layers"]
        out[value] = s
    return out
