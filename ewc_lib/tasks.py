"""Permuted-MNIST task sequences as tensors, ready for :mod:`ewc_lib.continual`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .data import (
    apply_permutation,
    as_tensors,
    centre_square_permutation,
    load_mnist,
    task_permutations,
)

__all__ = ["Task", "permuted_mnist_tasks", "centre_square_tasks", "hold_out_validation"]


@dataclass(frozen=True)
class Task:
    """One supervised task: flattened inputs ``(N, 784)`` in [0, 1] and int64 labels.

    ``x_val``/``y_val`` are an optional validation split held out of the training images
    (see :func:`hold_out_validation`); ``None`` when the task has none.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    permutation: np.ndarray
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None

    def __post_init__(self):
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
                raise ValueError(
                    f"Task {self.name!r}: expected x_{split} (N, D) and y_{split} (N,) with N > 0, "
                    f"got {tuple(x.shape)} and {tuple(y.shape)}"
                )


def _subset(n_total: int, n: int | None, name: str) -> slice:
    if n is None:
        return slice(None)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= n_total:
        raise ValueError(f"{name}: expected an int in [1, {n_total}] or None, got {n!r}")
    return slice(0, int(n))


def _tasks_from_perms(perms, names, n_train, n_test, dtype, path):
    x_tr, y_tr, x_te, y_te = load_mnist(path)
    tr, te = _subset(len(y_tr), n_train, "n_train"), _subset(len(y_te), n_test, "n_test")
    xtr, ytr = as_tensors(x_tr[tr], y_tr[tr], dtype=dtype)
    xte, yte = as_tensors(x_te[te], y_te[te], dtype=dtype)
    return [
        Task(name, apply_permutation(xtr, p).contiguous(), ytr, apply_permutation(xte, p).contiguous(), yte, p)
        for name, p in zip(names, perms)
    ]


def permuted_mnist_tasks(
    num_tasks: int,
    *,
    seed: int = 0,
    n_train: int | None = None,
    n_test: int | None = None,
    identity_first: bool = True,
    dtype=None,
    path=None,
) -> list[Task]:
    """``num_tasks`` permuted-MNIST tasks named A, B, C, ... (then T10, T11, ...).

    Book: :ref:`sec-mnist-data`.

    Task ``t`` applies ``task_permutations(num_tasks, seed)[t]`` to the first ``n_train``
    training and ``n_test`` test images (all when ``None``). Task A is plain MNIST when
    ``identity_first`` (default).

    >>> tasks = permuted_mnist_tasks(2, n_train=100, n_test=50)
    >>> [t.name for t in tasks], tuple(tasks[1].x_train.shape)
    (['A', 'B'], (100, 784))
    """
    perms = task_permutations(num_tasks, seed, identity_first=identity_first)
    names = [chr(ord("A") + t) if t < 10 else f"T{t}" for t in range(num_tasks)]
    return _tasks_from_perms(perms, names, n_train, n_test, dtype, path)


def centre_square_tasks(
    size: int,
    num_tasks: int = 2,
    *,
    seed: int = 0,
    n_train: int | None = None,
    n_test: int | None = None,
    dtype=None,
    path=None,
) -> list[Task]:
    """Tasks whose central ``size x size`` square is permuted (task 0 is plain MNIST).

    Book: :ref:`sec-mnist-data` and :ref:`sec-fisher-overlap`.

    Used for the Fisher-overlap experiment (paper's Figure 2C): ``size=8`` changes little of
    the image, ``size=26`` almost all of it.
    """
    perms = [np.arange(28 * 28)] + [centre_square_permutation(size, seed + t) for t in range(1, num_tasks)]
    names = [f"sq{size}-{t}" for t in range(num_tasks)]
    return _tasks_from_perms(perms, names, n_train, n_test, dtype, path)


def hold_out_validation(task: Task, n_val: int, *, as_test: bool = False) -> Task:
    """Split the **last** ``n_val`` training images of ``task`` off as a validation split.

    Book: the searches for ``lam`` of :ref:`sec-paper-scale-runs`.

    The returned task trains on the first ``N - n_val`` training images and carries the rest
    as ``x_val``/``y_val``. With ``as_test=True`` the validation split also replaces the test
    split (``x_test``/``y_test``), so that code which reports "test" accuracy (such as
    :func:`ewc_lib.continual.train_continual`) measures validation accuracy instead: that is
    how hyperparameters are searched without ever touching the test set.

    >>> t = hold_out_validation(permuted_mnist_tasks(1, n_train=100, n_test=10)[0], 20)
    >>> tuple(t.x_train.shape), tuple(t.x_val.shape), tuple(t.x_test.shape)
    ((80, 784), (20, 784), (10, 784))
    """
    if not isinstance(task, Task):
        raise TypeError(f"task: expected an ewc_lib.tasks.Task, got {type(task).__name__}")
    n = task.x_train.shape[0]
    if isinstance(n_val, bool) or not isinstance(n_val, (int, np.integer)) or not 1 <= n_val < n:
        raise ValueError(f"n_val: expected an int in [1, {n - 1}], got {n_val!r}")
    cut = n - int(n_val)
    xv, yv = task.x_train[cut:], task.y_train[cut:]
    return Task(
        task.name,
        task.x_train[:cut],
        task.y_train[:cut],
        xv if as_test else task.x_test,
        yv if as_test else task.y_test,
        task.permutation,
        xv,
        yv,
    )
