"""The results files: reading, checking, recording with provenance, and summarising.

One JSON file per figure in :data:`RESULTS_DIR`. :func:`record` adds one finished run or
search point under a file lock (several jobs may run at once) and updates the provenance;
:func:`load_results` checks a file; :func:`summarize` gives mean and spread over seeds.
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

from .config import CONFIGS

_ROOT = pathlib.Path(__file__).resolve().parents[2]

RESULTS_DIR = pathlib.Path(os.environ.get("EWC_RESULTS_DIR") or _ROOT / "results")


#: SGD steps after which a run records its checkpoint (the replay test re-runs these).
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
    if not (isinstance(commit, str) and len(commit) == 40 and all(c in "0123456789abcdef" for c in commit)):
        raise ValueError(f"{path}: provenance.commit must be 40 hex digits, got {commit!r}")
    for run in data["runs"]:
        if "checkpoint" not in run or "seed" not in run:
            raise ValueError(f"{path}: a run lacks 'seed' or 'checkpoint': {sorted(run)}")
    if "lam" in data["config"]:
        chosen = chosen_lambdas(figure, data)
        if data["config"]["lam"] != chosen:
            raise ValueError(
                f"{path}: config.lam {data['config']['lam']} is not what the recorded search selects ({chosen})"
            )
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
    return {
        "provenance": {
            "command": command,
            "commit": "",
            "finished": "",
            "cpu_seconds": 0.0,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "machine": platform.machine(),
        },
        "config": cfg,
        "search": None,
        "runs": [],
    }


def _git(*args) -> str:
    root = _ROOT
    out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True)
    return out.stdout.strip()


#: The code this process runs, i.e. the commit checked out when ``ewc_lib.experiments`` was
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
            raise ValueError(
                f"{path}: recorded config differs from CONFIGS[{figure!r}]; move the file away to start a new record"
            )
        return data
    return _empty(figure, command)


def record(figure: str, key: str, entry: dict, command: str) -> None:
    """Add one finished run (``key='runs'``) or search point (``key='search'``) to the file.

    Provenance is updated on every write: the commit the code ran from (refused if
    ``ewc_lib`` has uncommitted changes), the finishing date, the summed CPU seconds.
    """
    commit, dirty = code_state()
    if dirty:
        raise RuntimeError("ewc_lib or tools has uncommitted changes: commit before recording results")
    entry = dict(entry, commit=commit)
    with _locked(figure):
        data = _read_or_new(figure, command)
        if key == "runs":
            data["runs"] = _sorted_runs(data["runs"] + [entry])
        elif key == "search":
            data["search"] = data["search"] or {"points": []}
            data["search"]["points"].append(entry)
        elif key == "extra_runs":
            data.setdefault("extra_runs", []).append(entry)
            data["extra_runs"].sort(key=lambda r: (r["role"], r["seed"]))
        else:
            raise ValueError(f"key: expected 'runs', 'search' or 'extra_runs', got {key!r}")
        prov = data["provenance"]
        prov.update(
            command=command,
            commit=commit,
            finished=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            torch=torch.__version__,
            threads=torch.get_num_threads(),
        )
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


def run_key(run: dict) -> tuple:
    """What identifies a recorded run in its file: ``(seed, method)``, or ``(seed, square)`` for 2C."""
    return run["seed"], run.get("method", run.get("square"))


def _sorted_runs(runs: list) -> list:
    return sorted(runs, key=lambda r: (r["seed"], str(run_key(r)[1])))


def merge_runs(figure: str, other_path) -> list[tuple]:
    """Add to the results file the runs of another file of the same figure that it lacks.

    For work shared between machines or results directories (``EWC_RESULTS_DIR``): each run
    keeps the commit it was recorded with, and its CPU seconds are added to the provenance.
    The two files must have the same config (apart from the derived ``lam``). Returns the
    ``(seed, method or square)`` of the runs added.
    """
    other = json.loads(pathlib.Path(other_path).read_text())
    if not _same_config(other["config"], figure):
        raise ValueError(f"{other_path}: config differs from CONFIGS[{figure!r}]")
    for run in other["runs"]:
        if "commit" not in run or "checkpoint" not in run:
            raise ValueError(f"{other_path}: run {run_key(run)} lacks 'commit' or 'checkpoint'")
    with _locked(figure):
        data = _read_or_new(figure, "")
        have = {run_key(r) for r in data["runs"]}
        added = [r for r in other["runs"] if run_key(r) not in have]
        if not added:
            return []
        data["runs"] = _sorted_runs(data["runs"] + added)
        prov = data["provenance"]
        prov["cpu_seconds"] = round(prov["cpu_seconds"] + sum(float(r.get("cpu_seconds", 0.0)) for r in added), 1)
        prov["finished"] = max(prov["finished"], other["provenance"]["finished"])
        _set_lam(figure, data)
        _write(figure, data)
    return [run_key(r) for r in added]


def existing(figure: str) -> dict:
    """The current contents of a results file (or an empty record)."""
    with _locked(figure):
        return _read_or_new(figure, " ".join(sys.argv))


# ----------------------------------------------------------------- building blocks


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
    ok = sorted(
        p["lam"]
        for p in points
        if p["method"] == "l2" and p["val_accuracy_matrix"] and p["val_accuracy_matrix"][-1][0] >= target
    )
    return ok[0] if ok else None


# ----------------------------------------------------------------------------- runs
def _stats(values) -> dict:
    a = np.asarray(values, dtype=float)
    return {
        "mean": a.mean(axis=0),
        "std": a.std(axis=0, ddof=1) if len(a) > 1 else 0 * a[0],
        "min": a.min(axis=0),
        "max": a.max(axis=0),
        "n": len(a),
    }


def summarize(figure: str, data: dict, key: str = "runs") -> dict:
    """Mean, sample standard deviation, min and max over seeds of a results file's numbers.

    ``fig2a``: per method, ``"R"`` (accuracy matrices) and ``"curves"`` (per task, the
    accuracy at each evaluation step, with ``"steps"``). ``fig2b``: per method,
    ``"average"``. ``key="extra_runs"`` summarises the extra runs instead (Figure 2A: L2 at
    the ``lam`` that protects task A as well as EWC, :func:`l2_matching_ewc`). ``fig2c``: per
    square, ``"overlap"`` and ``"overlap_at_init"``, plus ``"R"``. Every entry is a dict with
    arrays ``mean``, ``std``, ``min``, ``max`` and the number of seeds ``n``.
    """
    runs_all = data.get(key) or []
    key = "square" if figure == "fig2c" else "method"
    out = {}
    for value in sorted({r[key] for r in runs_all}, key=str):
        runs = sorted((r for r in runs_all if r[key] == value), key=lambda r: r["seed"])
        s = {
            "seeds": [r["seed"] for r in runs],
            "lam": runs[0]["lam"],
            "R": _stats([r["accuracy_matrix"] for r in runs]),
        }
        if figure == "fig2a":
            s["curves"] = {}
            for j in sorted(runs[0]["curves"], key=int):
                steps = runs[0]["curves"][j][0]
                if any(r["curves"][j][0] != steps for r in runs):
                    raise ValueError(f"{figure}: evaluation steps differ between seeds")
                s["curves"][int(j)] = dict(_stats([r["curves"][j][1] for r in runs]), steps=np.array(steps))
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
