"""Gradient moments: the empirical Fisher split into covariance and mean, and its batched form.

With per-example gradients ``g_n`` (rows of an array ``(N, P)``), the empirical Fisher
``(1/N) sum_n g_n g_n^T`` is the covariance of the gradients plus the outer product of their
mean (:prf:ref:`thm-ef-moment`), and the batched empirical Fisher that much EWC code computes is
about ``1/B`` of it near a minimum (:prf:ref:`thm-ef-batched`); both in :ref:`sec-empirical-fisher`.
Also two ways to compare curvature matrices. Float64 NumPy; re-exported by
:mod:`ewc_lib.kunstner`.
"""

from __future__ import annotations

import numpy as np

from ._checks import as_finite_matrix as _as_matrix

__all__ = [
    "gradient_moments",
    "batched_second_moment",
    "expected_batched_second_moment",
    "relative_gap",
    "generalized_eigenvalues",
]


def gradient_moments(grads):
    """Split the empirical Fisher of per-example gradients ``grads`` (N, P) into its two parts.

    Book: :prf:ref:`thm-ef-moment`, :ref:`sec-empirical-fisher`.

    Returns ``(ef, cov, mean)`` with ``ef = (1/N) sum_n g_n g_n^T``, ``mean = (1/N) sum_n g_n``
    and ``cov = (1/N) sum_n (g_n - mean)(g_n - mean)^T`` (population covariance, divisor N), so
    that ``ef = cov + mean mean^T`` exactly.

    >>> ef, cov, mean = gradient_moments(np.array([[1.0], [3.0]]))
    >>> float(ef[0, 0]), float(cov[0, 0]), float(mean[0])
    (5.0, 1.0, 2.0)
    """
    G = _as_matrix(grads, "grads")
    mean = G.mean(axis=0)
    ef = G.T @ G / G.shape[0]
    D = G - mean
    cov = D.T @ D / G.shape[0]
    return ef, cov, mean


def batched_second_moment(grads, batch_size: int):
    """The "batched empirical Fisher": mean over consecutive minibatches of ``gbar_b gbar_b^T``.

    Book: :prf:ref:`def-batched-empirical-fisher`, :ref:`sec-empirical-fisher`.

    ``gbar_b`` is the mean of the per-example gradients in minibatch ``b``; ``N`` must be a
    multiple of ``batch_size``. This is what EWC code computes when it squares the gradient of a
    mean minibatch loss. ``batch_size = 1`` gives the empirical Fisher.

    >>> batched_second_moment(np.array([[1.0], [3.0]]), 2)
    array([[4.]])
    """
    G = _as_matrix(grads, "grads")
    n = G.shape[0]
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or batch_size < 1
        or n % batch_size
    ):
        raise ValueError(f"batch_size: expected a positive divisor of N = {n}, got {batch_size!r}")
    means = G.reshape(n // batch_size, batch_size, -1).mean(axis=1)
    return means.T @ means / means.shape[0]


def expected_batched_second_moment(ef, mean, n: int, batch_size: int):
    """Expectation of :func:`batched_second_moment` over random orderings of the ``n`` examples.

    Book: :prf:ref:`thm-ef-batched`, :ref:`sec-empirical-fisher`.

    ``E = c ef + (1 - c) mean mean^T`` with ``c = (n - B) / (B (n - 1))``: minibatches are drawn
    without replacement, so the minibatch mean has covariance ``cov (n - B) / (B (n - 1))``.
    For ``n >> B`` this is ``ef / B + (1 - 1/B) mean mean^T``.

    >>> float(expected_batched_second_moment(np.eye(1) * 5, np.array([2.0]), 2, 2)[0, 0])
    4.0
    """
    ef = np.asarray(ef, dtype=np.float64)
    mean = np.asarray(mean, dtype=np.float64)
    if ef.ndim != 2 or ef.shape != (mean.shape[0], mean.shape[0]):
        raise ValueError(f"ef, mean: expected shapes (P, P) and (P,), got {ef.shape}, {mean.shape}")
    if not (
        isinstance(n, (int, np.integer))
        and isinstance(batch_size, (int, np.integer))
        and 1 <= batch_size <= n
        and n >= 2
    ):
        raise ValueError(f"n, batch_size: expected ints with 1 <= batch_size <= n, n >= 2; got {n!r}, {batch_size!r}")
    c = (n - batch_size) / (batch_size * (n - 1))
    return c * ef + (1.0 - c) * np.outer(mean, mean)


# ----------------------------------------------------------------------------- comparisons


def relative_gap(approx, reference):
    """Frobenius-norm relative difference ``||approx - reference||_F / ||reference||_F``.

    >>> relative_gap(np.eye(2) * 1.1, np.eye(2))
    0.10000000000000009
    """
    a = np.asarray(approx, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if a.shape != r.shape:
        raise ValueError(f"approx, reference: shapes differ, {a.shape} vs {r.shape}")
    norm = np.linalg.norm(r)
    if norm == 0:
        raise ValueError("reference: is zero, the relative gap is undefined")
    return float(np.linalg.norm(a - r) / norm)


def generalized_eigenvalues(a, b):
    """Eigenvalues of ``b^{-1} a`` for symmetric ``a`` and positive definite ``b``, ascending.

    They are the ratios ``v^T a v / v^T b v`` along the principal directions: all equal to one
    iff ``a == b``. Used to say by what factor the empirical Fisher's quadratic differs from
    the Fisher's.

    >>> generalized_eigenvalues(np.diag([2.0, 3.0]), np.eye(2))
    array([2., 3.])
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape != b.shape:
        raise ValueError(f"a, b: expected two square matrices of one shape, got {a.shape}, {b.shape}")
    L = np.linalg.cholesky(b)
    Li = np.linalg.inv(L)
    return np.linalg.eigvalsh(Li @ a @ Li.T)
