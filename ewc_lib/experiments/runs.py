"""The runs themselves: one search point, one run of each figure, and the replay of a run's start.

Each run records a *checkpoint* (:func:`fingerprint` of the parameters after
:data:`~ewc_lib.experiments.REPLAY_STEPS` SGD steps) so that :func:`replay` can re-run the
start from the recorded configuration and check that this code produced the file.
"""

from __future__ import annotations

import torch

from ..continual import train_continual
from ..curvature import fisher_diagonal
from ..models import mlp
from ..overlap import layerwise_overlap
from ..tasks import centre_square_tasks, hold_out_validation, permuted_mnist_tasks
from .config import CONFIGS, REPLAY_STEPS


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
        net,
        tasks,
        method=method,
        lam=lam,
        lr=cfg["lr"],
        epochs_per_task=cfg["epochs_per_task"],
        batch_size=cfg["batch_size"],
        fisher_estimator=cfg["fisher"],
        fisher_num_examples=cfg["fisher_num_examples"],
        penalty_step=cfg["penalty_step"],
        eval_every=cfg.get("eval_every"),
        early_stopping=early,
        seed=seed,
        callback=callback,
        progress=progress,
    )


def _run_entry(hist, seed, checkpoint, **extra):
    entry = {
        "seed": seed,
        **extra,
        "accuracy_matrix": hist.accuracy_matrix().round(5).tolist(),
        "epochs_run": hist.epochs_run,
        "penalty_step_curvature": [round(c, 4) for c in hist.penalty_step_curvature],
        "cpu_seconds": round(hist.cpu_seconds, 1),
        "checkpoint": checkpoint,
    }
    return entry


# -------------------------------------------------------------------------- search
def search_lambda(figure: str, method: str, lam: float, progress=True) -> dict:
    """One point of the ``lam`` search: train on 50,000 images, score on validation."""
    cfg = dict(CONFIGS[figure], eval_every=None)  # only the end-of-task accuracies count
    seed = cfg["search_seed"]
    square = cfg.get("search_square")
    tasks = _tasks(figure, cfg, seed, search=True, square=square)
    try:
        hist = _train(figure, cfg, _net(cfg, seed), tasks, method, lam, seed, progress=progress)
    except FloatingPointError as err:
        return {"method": method, "lam": lam, "diverged": str(err), "val_accuracy_matrix": None, "val_final_mean": None}
    R = hist.accuracy_matrix()
    return {
        "method": method,
        "lam": lam,
        "val_accuracy_matrix": R.round(5).tolist(),
        "val_final_mean": round(float(R[-1].mean()), 5),
        "penalty_step_curvature": [round(c, 4) for c in hist.penalty_step_curvature],
        "cpu_seconds": round(hist.cpu_seconds, 1),
    }


def run_fig2a(seed: int, method: str, lam: float, progress=True) -> dict:
    cfg = CONFIGS["fig2a"]
    ck = _Checkpoint()
    hist = _train(
        "fig2a", cfg, _net(cfg, seed), _tasks("fig2a", cfg, seed), method, lam, seed, callback=ck, progress=progress
    )
    curves = {}
    for j in range(cfg["tasks"]):
        steps, acc = hist.curve(j)
        curves[str(j)] = [steps.tolist(), acc.round(5).tolist()]
    return _run_entry(hist, seed, ck.value, method=method, lam=lam, curves=curves, task_boundaries=hist.task_boundaries)


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
    hist = _train(
        "fig2b", cfg, net, tasks_used, algo, lam, seed, callback=ck, early=cfg["early_stopping"], progress=progress
    )
    avg = hist.average_after_each_task().round(5).tolist()
    return _run_entry(hist, seed, ck.value, method=method, lam=lam, average_accuracy=avg)


def run_fig2c(seed: int, square: int, lam: float, progress=True) -> dict:
    """Train on plain MNIST, then with EWC on the centre-square task; overlap per layer."""
    cfg = CONFIGS["fig2c"]
    tasks = _tasks("fig2c", cfg, seed, square=square)
    net = _net(cfg, seed)
    n = cfg["fisher_num_examples"]

    def fishers():
        return [fisher_diagonal(net, t.x_train[:n], likelihood="categorical", estimator="exact") for t in tasks]

    at_init = layerwise_overlap(*fishers(), net)
    ck = _Checkpoint()
    hist = _train("fig2c", cfg, net, tasks, "ewc", lam, seed, callback=ck, progress=progress)
    after = layerwise_overlap(*fishers(), net)
    return _run_entry(
        hist,
        seed,
        ck.value,
        square=square,
        lam=lam,
        layers=[name for name, _ in after],
        overlap=[round(o, 6) for _, o in after],
        overlap_at_init=[round(o, 6) for _, o in at_init],
    )


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
    fs = [fisher_diagonal(net, t.x_train[:n], likelihood="categorical", estimator="exact") for t in tasks]
    return [o for _, o in layerwise_overlap(*fs, net)]


# ------------------------------------------------------------------------- summaries
