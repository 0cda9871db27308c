"""What a run of :func:`~ewc_lib.continual.train_continual` returns, and how accuracy is measured.

:class:`ContinualHistory` holds the test accuracy of every task over training, the task
boundaries and the run's configuration; :func:`evaluate_accuracy` is the accuracy it records.
Both are also importable from :mod:`ewc_lib.continual`. Book: :ref:`sec-forgetting-curves`.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["ContinualHistory", "evaluate_accuracy"]


@dataclasses.dataclass
class ContinualHistory:
    """What :func:`train_continual` did, as a tidy list of evaluation records.

    Book: the accuracy curves and matrices of :ref:`sec-forgetting-curves` and
    :ref:`sec-many-tasks`.

    Attributes
    ----------
    method : str
        ``"sgd"``, ``"l2"`` or ``"ewc"``.
    config : dict
        Every argument of the call except the model and the tasks (plus ``task_names``,
        ``num_params``, ``steps_per_task``).
    task_names : list of str
    records : list of dict
        One dict per (evaluation time, evaluated task) with keys ``step`` (global number of
        SGD steps done so far), ``epoch`` (0-based epoch within the task being trained),
        ``trained_task`` (index of the task being trained), ``eval_task`` (index of the task
        evaluated), ``accuracy`` (test accuracy in [0, 1]) and ``end_of_task`` (True for the
        evaluation at the end of ``trained_task``).
    task_boundaries : list of int
        Global step at which each task's training starts (``task_boundaries[0] == 0``).
    penalty : EWCPenalty or None
        The penalty object at the end (its anchors and Fishers), ``None`` for ``"sgd"``.
    penalty_step_curvature : list of float
        After each consolidation, ``lr * penalty.max_curvature()`` (``lr * lam * max_i sum_t
        F_{t,i}``). Plain SGD on the penalty alone is stable only while this is below 2; larger
        values make the most important parameters oscillate and blow up, which looks like a
        collapse of all accuracies rather than like an error. Empty for ``"sgd"``.
    epochs_run : list of int
        Epochs trained on each task (less than ``epochs_per_task`` only with early stopping).
    cpu_seconds, wall_seconds : float
        Process CPU time and wall time of the whole call.
    """

    method: str
    config: dict
    task_names: list
    records: list
    task_boundaries: list
    penalty: Any = None
    penalty_step_curvature: list = dataclasses.field(default_factory=list)
    epochs_run: list = dataclasses.field(default_factory=list)
    cpu_seconds: float = float("nan")
    wall_seconds: float = float("nan")

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    def _check_task(self, eval_task) -> int:
        if (
            isinstance(eval_task, bool)
            or not isinstance(eval_task, numbers.Integral)
            or not 0 <= eval_task < self.num_tasks
        ):
            raise ValueError(f"eval_task: expected an int in [0, {self.num_tasks}), got {eval_task!r}")
        return int(eval_task)

    def curve(self, eval_task: int) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, accuracies)`` of task ``eval_task`` at every evaluation, in step order."""
        eval_task = self._check_task(eval_task)
        rows = [r for r in self.records if r["eval_task"] == eval_task]
        return (
            np.array([r["step"] for r in rows], dtype=np.int64),
            np.array([r["accuracy"] for r in rows], dtype=np.float64),
        )

    def accuracy_matrix(self) -> np.ndarray:
        """``R[t, j]``: test accuracy on task ``j`` at the end of training task ``t``."""
        R = np.full((self.num_tasks, self.num_tasks), np.nan)
        for r in self.records:
            if r["end_of_task"]:
                R[r["trained_task"], r["eval_task"]] = r["accuracy"]
        return R

    def final_accuracies(self) -> np.ndarray:
        """Test accuracy of every task after the last task was trained (length ``num_tasks``)."""
        return self.accuracy_matrix()[-1].copy()

    def average_after_each_task(self) -> np.ndarray:
        """Entry ``t``: mean test accuracy over tasks ``0..t``, measured at the end of task ``t``."""
        R = self.accuracy_matrix()
        return np.array([R[t, : t + 1].mean() for t in range(self.num_tasks)])


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk_size: int = 10_000) -> float:
    """Fraction of ``argmax(model(x)) == y`` (model put in eval mode, no gradients).

    Book: the test accuracies of :ref:`sec-forgetting-curves`.

    >>> net = torch.nn.Linear(2, 2)
    >>> 0.0 <= evaluate_accuracy(net, torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)) <= 1.0
    True
    """
    model.eval()
    correct = 0
    for start in range(0, x.shape[0], chunk_size):
        logits = model(x[start : start + chunk_size])
        correct += int((logits.argmax(dim=-1) == y[start : start + chunk_size]).sum())
    return correct / x.shape[0]
