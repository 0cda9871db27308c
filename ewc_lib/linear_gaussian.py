r"""The linear-Gaussian model, where every posterior, penalty and minimiser is exact.

For ``y = X theta + eps`` with ``eps ~ N(0, sigma2 I)`` and a Gaussian prior, every posterior
is Gaussian, a task's negative log-likelihood is exactly quadratic in ``theta``, and its
Hessian equals its Fisher. The Laplace approximation is then exact, so the book uses this model
to check equation (2) (:ref:`sec-bayes-two-tasks-check`), the value of ``lam``
(:ref:`the value of lambda <sec-ewc-penalty-assemble>`) and the ways of combining penalties for several tasks
(:ref:`sec-ewc-penalty-several`, :ref:`sec-diagonal-and-multitask`).

A task is summarised by ``F = X^T X / sigma2`` and ``b = X^T y / sigma2`` (the curvature and
linear term of the **summed** negative log-likelihood ``1/2 theta^T F theta - b^T theta +
const``); ``reduction="mean"`` divides both by ``N`` (the mean loss of the book's convention).
Every function is plain numpy in float64.

>>> rng = np.random.default_rng(0)
>>> X, y = rng.standard_normal((20, 2)), rng.standard_normal(20)
>>> F, b = task_statistics(X, y)
>>> mean, prec = posterior(np.zeros(2), np.eye(2), X, y)
>>> bool(np.allclose(prec, np.eye(2) + F)), bool(np.allclose(mean, penalised_minimiser(F, b, [(np.eye(2), 0)])))
(True, True)
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "task_statistics",
    "posterior",
    "penalised_minimiser",
    "tilted_task",
    "rotated_tasks",
    "three_task_runs",
]


def _matrix(name, value, rows=None):
    a = np.asarray(value, dtype=float)
    if a.ndim != 2 or (rows is not None and a.shape[0] != rows):
        want = "a 2-D array" + ("" if rows is None else f" with {rows} rows")
        raise ValueError(f"{name}: expected {want}, got shape {a.shape}")
    return a


def task_statistics(X, y, *, sigma2=1.0, reduction="sum"):
    r"""``(F, b)`` of a regression task: ``F = X^T X / sigma2``, ``b = X^T y / sigma2``.

    The summed negative log-likelihood is ``1/2 theta^T F theta - b^T theta + const``, so ``F``
    is both its Hessian and its Fisher, and the task's least-squares fit is ``F^{-1} b``. With
    ``reduction="mean"`` both are divided by ``N = len(y)``: the Fisher of the mean loss
    ``L(theta)`` of :ref:`the value of lambda <sec-ewc-penalty-assemble>`.

    >>> task_statistics(np.eye(2), np.array([1.0, 2.0]), sigma2=2.0)[1].tolist()
    [0.5, 1.0]
    """
    X = _matrix("X", X)
    y = np.asarray(y, dtype=float)
    if y.shape != (X.shape[0],):
        raise ValueError(f"y: expected shape ({X.shape[0]},), got {y.shape}")
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction: expected one of ['sum', 'mean'], got {reduction!r}")
    scale = sigma2 * (X.shape[0] if reduction == "mean" else 1)
    return X.T @ X / scale, X.T @ y / scale


def posterior(prior_mean, prior_prec, X, y, *, sigma2=1.0):
    r"""Conjugate update of a Gaussian prior by a regression task: ``(mean, precision)``.

    ``precision = prior_prec + X^T X / sigma2`` and
    ``mean = precision^{-1} (prior_prec prior_mean + X^T y / sigma2)``. Applied twice, with
    the first posterior as the second prior, it gives the joint posterior: equation (2)
    (:ref:`sec-bayes-two-tasks`, checked in :ref:`sec-bayes-two-tasks-check`).

    >>> m, P = posterior(np.zeros(1), np.eye(1), np.ones((4, 1)), np.full(4, 2.0))
    >>> m.tolist(), P.tolist()
    ([1.6], [[5.0]])
    """
    F, b = task_statistics(X, y, sigma2=sigma2)
    prior_prec = _matrix("prior_prec", prior_prec, rows=F.shape[0])
    prec = prior_prec + F
    mean = np.linalg.solve(prec, prior_prec @ np.asarray(prior_mean, dtype=float) + b)
    return mean, prec


def penalised_minimiser(F, b, penalties=()):
    r"""``argmin_theta 1/2 theta^T F theta - b^T theta + sum_k 1/2 (theta - a_k)^T K_k (theta - a_k)``.

    ``penalties`` is a sequence of ``(K_k, a_k)`` (stiffness matrix, anchor); the minimiser
    solves ``(F + sum_k K_k) theta = b + sum_k K_k a_k``. With ``F, b`` of task B (mean
    reduction) and one penalty ``(lam * F_A, theta_A)`` it is the minimiser of EWC's objective
    before the diagonal step (:ref:`the value of lambda <sec-ewc-penalty-assemble>`); with several penalties, the
    separate or the single recursive penalty of :ref:`sec-ewc-penalty-several`. A scalar or
    1-D ``K_k`` is a diagonal stiffness.

    >>> penalised_minimiser(np.eye(2), np.zeros(2), [(np.eye(2), np.array([2.0, 4.0]))]).tolist()
    [1.0, 2.0]
    """
    hess = _matrix("F", F).copy()
    lin = np.asarray(b, dtype=float).copy()
    for K, anchor in penalties:
        K = np.asarray(K, dtype=float)
        K = np.diag(np.broadcast_to(K, lin.shape)) if K.ndim < 2 else K
        hess += K
        lin += K @ np.broadcast_to(np.asarray(anchor, dtype=float), lin.shape)
    return np.linalg.solve(hess, lin)


def tilted_task(n, direction, spread, theta, *, sigma, rng):
    r"""A two-parameter regression task whose inputs lie mostly along ``direction``.

    ``x = u d + spread * v d_perp`` with ``d`` the unit ``direction``, ``d_perp`` its normal
    and ``u, v ~ N(0, 1)``; ``y = x^T theta + sigma * eps``. Such a task pins down one
    combination of the parameters well and the other badly, so its posterior is a tilted
    ellipse (:ref:`sec-bayes-two-tasks-check`). Draws, in this order, ``u`` (n), ``v`` (n) and
    ``eps`` (n) from the numpy generator ``rng``.

    >>> X, y = tilted_task(5, [1.0, 1.0], 0.1, np.array([1.0, -0.5]), sigma=0.5, rng=np.random.default_rng(0))
    >>> X.shape, y.shape
    ((5, 2), (5,))
    """
    d = np.asarray(direction, float) / np.linalg.norm(direction)
    perp = np.array([-d[1], d[0]])
    x = rng.normal(size=(n, 1)) * d + spread * rng.normal(size=(n, 1)) * perp
    y = x @ np.asarray(theta, float) + sigma * rng.normal(size=n)
    return x, y


def rotated_tasks(num_params, n_per_task, seed, *, angles=None, num_tasks=3, sigma2=1.0):
    r"""``num_tasks`` regression tasks ``[(X, y)]`` that disagree, each stretched its own way.

    Task ``t``'s inputs are standard normal, scaled by 2 along one direction (its first
    coordinate before a rotation ``Q_t``), so each task pins down mostly one combination of the
    parameters; its targets come from its own parameter vector ``theta_t ~ N(0, I)``, plus
    noise of variance ``sigma2``. In two dimensions ``angles`` (degrees, one per task) give the
    rotations; otherwise they are random orthogonal matrices (QR of a Gaussian matrix). All
    draws come from ``numpy.random.default_rng(seed)``. Used in
    :ref:`sec-diagonal-and-multitask`.

    >>> [X.shape for X, _ in rotated_tasks(2, 20, 0, angles=(0, 60, 120))]
    [(20, 2), (20, 2), (20, 2)]
    """
    rng = np.random.default_rng(seed)
    tasks = []
    for t in range(num_tasks):
        if angles is not None:
            a = np.radians(angles[t])
            Q = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        else:
            Q, _ = np.linalg.qr(rng.standard_normal((num_params, num_params)))
        scales = np.ones(num_params)
        scales[0] = 2.0
        X = rng.standard_normal((n_per_task, num_params)) * scales @ Q.T
        theta_gen = rng.standard_normal(num_params)
        y = X @ theta_gen + np.sqrt(sigma2) * rng.standard_normal(n_per_task)
        tasks.append((X, y))
    return tasks


def three_task_runs(tasks, *, alpha=1.0, sigma2=1.0):
    r"""Train on tasks A, B, C in turn, with the exact posterior and two penalty rules.

    Sums, not means (so ``lam = 1``); the prior ``N(0, I / alpha)`` is folded into task A. Returns a
    dict of float64 arrays:

    * ``exact_mean``, ``exact_prec``: the joint posterior, ``alpha I + F_A + F_B + F_C``;
    * ``single_mean``, ``single_prec``: the single recursive penalty (Huszár), anchored at
      ``th_B`` with precision ``lam_AB = lam_A + F_B``;
    * ``sep_mean``, ``sep_prec``: separate penalties ``(th_A, lam_A)`` and ``(th_B, F_B)``
      (Kirkpatrick et al.);
    * ``sep_laplace_prec``: separate penalties with B's weight the full Laplace precision
      ``lam_AB`` (which counts ``lam_A`` twice);
    * the ingredients ``F_A, F_B, F_C, b_A, b_B, b_C``, ``lam_A = alpha I + F_A``, ``th_A``
      (the minimiser of task A with the prior), ``th_B`` (of task B with A's penalty) and
      ``lam_AB``.

    The single penalty equals the exact posterior; the separate penalties get the precision
    right and the mean wrong by a derived amount: :prf:ref:`prop-ewc-recursive`,
    :ref:`sec-ewc-penalty-several`, checked in :ref:`sec-diagonal-and-multitask`.

    >>> r = three_task_runs(rotated_tasks(2, 20, 0, angles=(0, 60, 120)))
    >>> bool(np.allclose(r["single_mean"], r["exact_mean"])), bool(np.allclose(r["sep_mean"], r["exact_mean"]))
    (True, False)
    """
    (F_A, b_A), (F_B, b_B), (F_C, b_C) = [task_statistics(X, y, sigma2=sigma2) for X, y in tasks]
    P = F_A.shape[0]
    prior = alpha * np.eye(P)
    out = {}
    # exact joint posterior after A, B, C
    out["exact_prec"] = prior + F_A + F_B + F_C
    out["exact_mean"] = penalised_minimiser(out["exact_prec"], b_A + b_B + b_C)
    # task A (with the prior) -- the same for every method
    lam_A = prior + F_A
    th_A = penalised_minimiser(lam_A, b_A)
    # task B with A's penalty -- the same for both multi-task rules
    th_B = penalised_minimiser(F_B + lam_A, b_B + lam_A @ th_A)
    # single recursive penalty: anchor th_B, precision lam_A + F_B
    lam_AB = lam_A + F_B
    out["single_prec"] = F_C + lam_AB
    out["single_mean"] = penalised_minimiser(out["single_prec"], b_C + lam_AB @ th_B)
    # separate penalties: (th_A, lam_A) and (th_B, F_B)
    out["sep_prec"] = F_C + lam_A + F_B
    out["sep_mean"] = penalised_minimiser(out["sep_prec"], b_C + lam_A @ th_A + F_B @ th_B)
    # separate penalties, but B's weight taken as the full Laplace precision after B
    out["sep_laplace_prec"] = F_C + lam_A + lam_AB
    out.update(F_A=F_A, F_B=F_B, F_C=F_C, b_A=b_A, b_B=b_B, b_C=b_C, lam_A=lam_A, th_A=th_A, th_B=th_B, lam_AB=lam_AB)
    return out
