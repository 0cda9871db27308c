"""Train one network on a sequence of tasks: plain SGD, L2, or EWC, and record test accuracy.

The loop behind the book's permuted-MNIST experiments (the paper's Figure 2A/2B):

* for each task in order, ``epochs_per_task`` epochs of plain SGD (``torch.optim.SGD``,
  no momentum, no weight decay) on the mean cross-entropy of minibatches, plus the
  consolidation penalty of the earlier tasks (none for ``method="sgd"``);
* after each task (except the last): the diagonal Fisher at the end point (EWC) with
  :func:`~ewc_lib.curvature.fisher_diagonal`, and :meth:`~ewc_lib.penalty.EWCPenalty.consolidate` /
  :meth:`~ewc_lib.penalty.L2Penalty.consolidate`;
* the test accuracy of **every** task (also those not yet trained) every ``eval_every``
  optimisation steps and at the end of each task.

"SGD with dropout" (the paper's Figure 2B baseline) is ``method="sgd"`` on a model built with
dropout, e.g. ``ewc_lib.mlp([784, 400, 400, 10], dropout_input=0.2, dropout_hidden=0.5)``.

The model is trained **in place**: nothing is restored afterwards (no early stopping, no
reset to the best weights); on return the model holds the weights after the last task and is
in eval mode. The returned :class:`ContinualHistory` says what happened.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import nn

from ._checks import check_int
from ._training import _fisher, _Run
from .history import ContinualHistory, evaluate_accuracy
from .penalty import EWCPenalty, L2Penalty

__all__ = ["ContinualHistory", "train_continual", "evaluate_accuracy"]


_METHODS = ("sgd", "l2", "ewc")
_ESTIMATORS = ("exact", "mc", "empirical", "batched_empirical")
_PENALTY_STEPS = ("gradient", "proximal")


def _check_tasks(tasks):
    if isinstance(tasks, (str, bytes)) or not isinstance(tasks, Sequence) or len(tasks) == 0:
        raise ValueError(
            "tasks: expected a non-empty sequence of tasks with x_train, y_train, "
            "x_test, y_test (e.g. ewc_lib.tasks.permuted_mnist_tasks)"
        )
    for t, task in enumerate(tasks):
        for attr in ("x_train", "y_train", "x_test", "y_test"):
            value = getattr(task, attr, None)
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"tasks[{t}].{attr}: expected a torch.Tensor, got {type(value).__name__}")
        for split in ("train", "test"):
            x, y = getattr(task, f"x_{split}"), getattr(task, f"y_{split}")
            if x.shape[0] == 0 or y.ndim != 1 or x.shape[0] != y.shape[0]:
                raise ValueError(
                    f"tasks[{t}]: x_{split} {tuple(x.shape)} and y_{split} "
                    f"{tuple(y.shape)} must hold the same number N > 0 of examples"
                )
            if y.dtype != torch.int64:
                raise TypeError(f"tasks[{t}].y_{split}: expected int64 class labels, got {y.dtype}")
    return [getattr(task, "name", f"T{t}") for t, task in enumerate(tasks)]


def _check_validation_splits(tasks):
    for t, task in enumerate(tasks):
        xv, yv = getattr(task, "x_val", None), getattr(task, "y_val", None)
        if not isinstance(xv, torch.Tensor) or not isinstance(yv, torch.Tensor):
            raise TypeError(
                f"tasks[{t}]: early_stopping needs x_val and y_val tensors (a "
                "validation split held out of the training set)"
            )
        if xv.shape[0] == 0 or yv.ndim != 1 or xv.shape[0] != yv.shape[0]:
            raise ValueError(
                f"tasks[{t}]: x_val {tuple(xv.shape)} and y_val {tuple(yv.shape)} "
                "must hold the same number N > 0 of examples"
            )


def train_continual(
    model: nn.Module,
    tasks,
    *,
    method: str = "sgd",
    lam: float = 0.0,
    lr: float = 1e-3,
    epochs_per_task: int = 1,
    batch_size: int = 100,
    fisher_estimator: str = "exact",
    fisher_num_examples: int | None = None,
    fisher_batch_size: int | None = None,
    penalty_mode: str = "separate",
    gamma: float = 1.0,
    eval_every: int | None = None,
    eval_num_examples: int | None = None,
    seed: int = 0,
    penalty_step: str = "gradient",
    early_stopping: int | None = None,
    callback=None,
    fisher_fn=None,
    progress: bool = True,
) -> ContinualHistory:
    r"""Train ``model`` on ``tasks`` in order with plain SGD (+ L2 or EWC); return the history.

    Book: the training loop of :ref:`sec-ewc-penalty-library`; used in :ref:`sec-forgetting-curves`,
    :ref:`sec-many-tasks` and :ref:`sec-fisher-estimators-lambda`.

    Objective while training task ``t`` (minibatch ``b`` of task ``t``):

        mean_{n in b} CE(model(x_n), y_n) + penalty(theta)

    with ``penalty = 0`` (``"sgd"``), ``L2Penalty(lam)`` (``"l2"``: ``(lam/2) sum_i
    (theta_i - theta*_i)^2``) or ``EWCPenalty(lam, penalty_mode, gamma)`` (``"ewc"``:
    ``(lam/2) sum_i F_i (theta_i - theta*_i)^2``, ``F`` the **mean** Fisher diagonal over
    ``fisher_num_examples`` training images of each earlier task), consolidated at the end of
    every task but the last. Since both the loss and ``F`` are means, Bayes' value of ``lam``
    is ``N_A / N_B`` (1 here); useful values are much larger.

    Parameters
    ----------
    model : nn.Module
        Maps a batch ``(B, D)`` to logits ``(B, C)``. Trained in place (nothing is restored).
        Train mode during SGD steps (dropout active); eval mode for evaluation and Fisher.
    tasks : sequence of tasks
        Objects with ``x_train, y_train, x_test, y_test`` tensors (``int64`` labels) and
        optionally ``name`` -- e.g. :func:`~ewc_lib.tasks.permuted_mnist_tasks`.
    method : {"sgd", "l2", "ewc"}
    lam : float >= 0
        Penalty strength; must be 0 for ``"sgd"``.
    lr : float > 0
        SGD step size.
    epochs_per_task, batch_size : int
        Each epoch visits a fresh random order of the task's training set in minibatches of
        ``batch_size`` (the last one may be smaller).
    fisher_estimator : {"exact", "mc", "empirical", "batched_empirical"}
        Passed to :func:`~ewc_lib.curvature.fisher_diagonal` (EWC only). The empirical estimators use the
        training labels; ``"mc"`` draws labels with a generator seeded from ``seed``.
    fisher_num_examples : int or None
        The Fisher uses the first ``fisher_num_examples`` training images (all if ``None``
        or if the task has fewer).
    fisher_batch_size : int or None
        Minibatch size of ``"batched_empirical"`` (default ``batch_size``, as in Avalanche);
        ignored by the other estimators.
    penalty_mode : {"separate", "online"}, gamma : float in (0, 1]
        Several old tasks: separate penalties (Kirkpatrick) or one recursive penalty with
        ``F <- gamma F + F_new`` (Huszar, online EWC); see :class:`~ewc_lib.penalty.EWCPenalty`. Also used
        for ``"l2"``.
    eval_every : int or None
        Evaluate every task every ``eval_every`` global steps (and at step 0). ``None``: only
        at the end of each task.
    eval_num_examples : int or None
        Evaluate on the first ``eval_num_examples`` test images of each task (all if None).
    seed : int
        Seeds the minibatch order (a ``torch.Generator``), the MC Fisher labels (a second
        generator, ``seed + 1``) and dropout (the global RNG, inside ``torch.random.fork_rng``
        so that the caller's RNG state is left untouched). Same seed, same model init ->
        identical history.
    penalty_step : {"gradient", "proximal"}
        ``"gradient"``: SGD on ``loss + penalty`` (the penalty's gradient is part of every
        step). ``"proximal"``: SGD on the loss alone, then the penalty's part of the step in
        closed form (:meth:`~ewc_lib.penalty.EWCPenalty.proximal_step`); same fixed points, and stable for any
        ``lam`` (see *Stability*).
    early_stopping : int or None
        ``None``: exactly ``epochs_per_task`` epochs per task. An int ``k``: each task must
        carry a validation split (``x_val``, ``y_val``); after every epoch the accuracy on the
        **current** task's validation split is measured, training of the task stops when it
        has not improved for ``k`` epochs in a row (or after ``epochs_per_task`` epochs), and
        the weights with the best validation accuracy of that task are restored. No earlier
        task's data is used.
    fisher_fn : callable or None
        ``fisher_fn(model, x_train, y_train) -> dict`` replaces the Fisher diagonal of EWC
        (for example a brute-force reference in a test, or another estimator); it gets the
        whole training set of the task that just ended, with the model in eval mode at its end
        point. ``None``: :func:`~ewc_lib.curvature.fisher_diagonal` with ``fisher_estimator``.
    callback : callable or None
        Called as ``callback(step, model)`` after every optimisation step (``step`` counts
        from 1), e.g. to record an early checkpoint. It must not change the model.
    progress : bool
        Show a ``tqdm.auto`` progress bar over all SGD steps.

    Notes
    -----
    Stability: the penalty's Hessian is ``lam * sum_t diag(F_t)``; SGD with step ``lr`` is unstable on it
    when ``lr * lam * max_i sum_t F_{t,i} >= 2``. The history records this number after each
    consolidation (``penalty_step_curvature``); a non-finite loss raises ``FloatingPointError``.
    ``penalty_step="proximal"`` removes this bound (the recorded number may then exceed 2).

    Returns
    -------
    ContinualHistory

    Examples
    --------
    >>> import torch
    >>> from types import SimpleNamespace
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(64, 5, generator=g); y = (x[:, 0] > 0).long()
    >>> task = SimpleNamespace(name="A", x_train=x, y_train=y, x_test=x, y_test=y)
    >>> net = torch.nn.Linear(5, 2)
    >>> hist = train_continual(net, [task, task], method="l2", lam=1.0, lr=0.1,
    ...                        batch_size=16, progress=False)
    >>> hist.accuracy_matrix().shape, len(hist.records), hist.task_boundaries
    ((2, 2), 4, [0, 4])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    task_names = _check_tasks(tasks)
    if method not in _METHODS:
        raise ValueError(f"method: expected one of {_METHODS}, got {method!r}")
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real) or not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lam: expected a finite number >= 0, got {lam!r}")
    if method == "sgd" and lam != 0:
        raise ValueError(f"lam: method='sgd' has no penalty, so lam must be 0 (got {lam!r}); use method='l2' or 'ewc'")
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr: expected a finite number > 0, got {lr!r}")
    epochs_per_task = check_int("epochs_per_task", epochs_per_task)
    batch_size = check_int("batch_size", batch_size)
    fisher_num_examples = check_int("fisher_num_examples", fisher_num_examples, allow_none=True)
    fisher_batch_size = check_int("fisher_batch_size", fisher_batch_size, allow_none=True)
    eval_every = check_int("eval_every", eval_every, allow_none=True)
    eval_num_examples = check_int("eval_num_examples", eval_num_examples, allow_none=True)
    seed = check_int("seed", seed, minimum=0)
    if fisher_estimator not in _ESTIMATORS:
        raise ValueError(f"fisher_estimator: expected one of {_ESTIMATORS}, got {fisher_estimator!r}")
    if penalty_step not in _PENALTY_STEPS:
        raise ValueError(f"penalty_step: expected one of {_PENALTY_STEPS}, got {penalty_step!r}")
    early_stopping = check_int("early_stopping", early_stopping, allow_none=True)
    if early_stopping is not None:
        _check_validation_splits(tasks)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback: expected a callable(step, model) or None, got {type(callback).__name__}")
    if fisher_fn is not None and not callable(fisher_fn):
        raise TypeError(f"fisher_fn: expected a callable(model, x, y) or None, got {type(fisher_fn).__name__}")
    # Validates penalty_mode, gamma (and lam) once, before any training happens.
    if method == "l2":
        penalty = L2Penalty(lam, mode=penalty_mode, gamma=gamma)
    else:
        penalty = EWCPenalty(lam, mode=penalty_mode, gamma=gamma)
    if method == "sgd":
        penalty = None
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model: it has no trainable parameters")

    n_train = [t.x_train.shape[0] for t in tasks]
    steps_per_task = [epochs_per_task * math.ceil(n / batch_size) for n in n_train]
    config = dict(
        method=method,
        lam=float(lam),
        lr=float(lr),
        epochs_per_task=epochs_per_task,
        batch_size=batch_size,
        fisher_estimator=fisher_estimator,
        fisher_num_examples=fisher_num_examples,
        fisher_batch_size=fisher_batch_size if fisher_batch_size else batch_size,
        penalty_mode=penalty_mode,
        gamma=float(gamma),
        eval_every=eval_every,
        eval_num_examples=eval_num_examples,
        seed=seed,
        penalty_step=penalty_step,
        early_stopping=early_stopping,
        fisher_fn=getattr(fisher_fn, "__name__", None),
        task_names=task_names,
        num_params=sum(p.numel() for p in params),
        steps_per_task=steps_per_task,
    )
    if fisher_fn is None:
        fisher_gen = torch.Generator().manual_seed(seed + 1)

        def fisher_fn(model, x, y):
            return _fisher(
                model, x, y, fisher_estimator, fisher_num_examples, fisher_batch_size or batch_size, fisher_gen
            )

    run = _Run(
        model=model,
        tasks=tasks,
        penalty=penalty,
        params=params,
        config=config,
        fisher_fn=fisher_fn,
        callback=callback,
        progress=progress,
    )
    return run.train()
