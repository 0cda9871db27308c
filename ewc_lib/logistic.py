"""Logistic regression in two parameters, the second problem of Kunstner et al. (2019), Figure 2.

Inputs ``x_n`` in R^2, labels ``y_n`` in {0, 1}, no bias, ``p(y=1|x) = sigmoid(x^T theta)``.
Mean loss = mean negative log-likelihood; gradient ``(1/N) sum_n (pi_n - y_n) x_n``; Fisher
``(1/N) sum_n pi_n (1 - pi_n) x_n x_n^T`` (equal to the Hessian); empirical Fisher
``(1/N) sum_n (pi_n - y_n)^2 x_n x_n^T``. Conventions as in :mod:`ewc_lib.kunstner`, which
re-exports every name. Book: :ref:`sec-empirical-fisher`, figures in :ref:`sec-kunstner-figures`.
"""

from __future__ import annotations

import numpy as np

from ._checks import as_finite_matrix as _as_matrix
from ._checks import as_finite_targets as _as_targets
from ._checks import as_theta as _as_theta
from ._checks import check_binary as _check_binary

__all__ = [
    "LOGREG_DATASETS",
    "logreg_data",
    "logreg_loss",
    "logreg_grad",
    "logreg_fisher",
    "logreg_empirical_fisher",
    "logreg_fit",
]


#: The three data sets of Kunstner et al.'s Figure 2 / Table 2; for each, the class means and
#: covariance matrices of the inputs of class 0 and class 1 (equal class sizes).
#:
#: :meta hide-value:
LOGREG_DATASETS = {
    "correct": {
        "mean0": (1.0, 1.0),
        "cov0": ((2.0, 0.0), (0.0, 2.0)),
        "mean1": (-1.0, -1.0),
        "cov1": ((2.0, 0.0), (0.0, 2.0)),
    },
    "misspecified_a": {
        "mean0": (1.5, 1.5),
        "cov0": ((3.0, 0.0), (0.0, 3.0)),
        "mean1": (-1.5, -1.5),
        "cov1": ((1.0, 0.0), (0.0, 1.0)),
    },
    "misspecified_b": {
        "mean0": (1.0, 1.0),
        "cov0": ((1.5, -0.9), (-0.9, 1.5)),
        "mean1": (-1.0, -1.0),
        "cov1": ((1.5, 0.9), (0.9, 1.5)),
    },
}


def logreg_data(kind: str = "correct", n: int = 1000, *, seed: int = 0, matrix_is_root: bool = False):
    """Two Gaussian classes of ``n // 2`` points each, labels 0 then 1 (Kunstner et al., Table 2).

    ``kind`` is one of ``LOGREG_DATASETS``. By default the listed matrices are the class
    **covariances** (points are drawn as ``mean + z @ chol(cov).T``), as in the paper's table.
    ``matrix_is_root=True`` reproduces the original code instead, which draws
    ``mean + z @ matrix``, so that its covariances are the squares of the listed matrices.
    Only in ``"correct"`` do the classes share one covariance, which makes
    ``p(y=1|x)`` exactly logistic in ``x`` (with ``theta = (-1, -1)`` by default).

    >>> X, y = logreg_data("correct", 4, seed=0)
    >>> X.shape, y.tolist()
    ((4, 2), [0.0, 0.0, 1.0, 1.0])
    """
    if kind not in LOGREG_DATASETS:
        raise ValueError(f"kind: expected one of {sorted(LOGREG_DATASETS)}, got {kind!r}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"n: expected an int >= 2, got {n!r}")
    spec = LOGREG_DATASETS[kind]
    rng = np.random.default_rng(seed)
    half = n // 2
    parts = []
    for c, m in ((0, half), (1, n - half)):
        mat = np.array(spec[f"cov{c}"])
        factor = mat if matrix_is_root else np.linalg.cholesky(mat).T
        parts.append(np.array(spec[f"mean{c}"]) + rng.standard_normal((m, 2)) @ factor)
    X = np.vstack(parts)
    y = np.concatenate([np.zeros(half), np.ones(n - half)])
    return X, y


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _logreg_checked(theta, X, y=None):
    X = _as_matrix(X)
    theta = _as_theta(theta, X.shape[1])
    if y is not None:
        y = _as_targets(y, X.shape[0])
        _check_binary(y)
    return theta, X, y


def logreg_loss(theta, X, y):
    """Mean negative log-likelihood ``(1/N) sum_n [log(1 + e^{z_n}) - y_n z_n]``, ``z_n = x_n^T theta``.

    >>> float(logreg_loss(np.zeros(2), np.ones((2, 2)), np.array([0.0, 1.0]))) == float(np.log(2))
    True
    """
    theta, X, y = _logreg_checked(theta, X, y)
    z = theta @ X.T
    return np.mean(np.logaddexp(0.0, z) - y * z, axis=-1)


def logreg_grad(theta, X, y):
    """Gradient of :func:`logreg_loss`: ``(1/N) sum_n (pi_n - y_n) x_n``, ``pi_n = sigmoid(z_n)``.

    >>> logreg_grad(np.zeros(2), np.ones((2, 2)), np.array([1.0, 1.0]))
    array([-0.5, -0.5])
    """
    theta, X, y = _logreg_checked(theta, X, y)
    return ((_sigmoid(theta @ X.T) - y) @ X) / X.shape[0]


def logreg_fisher(theta, X):
    """Fisher (= Hessian of the mean loss): ``(1/N) sum_n pi_n (1 - pi_n) x_n x_n^T``.

    Book: :ref:`sec-empirical-fisher`; figures in :ref:`sec-kunstner-figures`.

    Labels are drawn from the model, so only the inputs enter.

    >>> logreg_fisher(np.zeros(2), np.eye(2))
    array([[0.125, 0.   ],
           [0.   , 0.125]])
    """
    theta, X, _ = _logreg_checked(theta, X)
    pi = _sigmoid(theta @ X.T)
    return np.einsum("...n,ni,nj->...ij", pi * (1 - pi), X, X) / X.shape[0]


def logreg_empirical_fisher(theta, X, y):
    """Empirical Fisher with the observed labels: ``(1/N) sum_n (pi_n - y_n)^2 x_n x_n^T``.

    Book: :prf:ref:`def-empirical-fisher`, :ref:`sec-empirical-fisher`.

    >>> logreg_empirical_fisher(np.zeros(2), np.eye(2), np.array([1.0, 0.0]))
    array([[0.125, 0.   ],
           [0.   , 0.125]])
    """
    theta, X, y = _logreg_checked(theta, X, y)
    r = _sigmoid(theta @ X.T) - y
    return np.einsum("...n,ni,nj->...ij", r**2, X, X) / X.shape[0]


def logreg_fit(X, y, *, tol: float = 1e-12, max_iter: int = 100):
    """Maximum-likelihood ``theta`` by Newton's method with backtracking (no bias, no prior).

    Stops when the gradient's max-norm is below ``tol``; raises ``RuntimeError`` if that has not
    happened after ``max_iter`` steps. Check the data are not separable first: there no finite
    minimiser exists, and the iterates grow until the gradient falls below ``tol`` anyway.

    >>> X, y = logreg_data("correct", 200, seed=0)
    >>> bool(np.abs(logreg_grad(logreg_fit(X, y), X, y)).max() < 1e-10)
    True
    """
    theta, X, y = _logreg_checked(np.zeros(np.shape(X)[1]), X, y)
    loss = logreg_loss(theta, X, y)
    for _ in range(max_iter):
        g = logreg_grad(theta, X, y)
        if np.abs(g).max() < tol:
            return theta
        try:
            step = np.linalg.solve(logreg_fisher(theta, X), g)
        except np.linalg.LinAlgError:
            break
        t = 1.0
        while True:
            candidate = theta - t * step
            new_loss = logreg_loss(candidate, X, y)
            # the slack 1e-13 |loss| lets round-off-level changes through near the optimum
            if new_loss <= loss + 1e-4 * t * (g @ -step) + 1e-13 * abs(loss) or t < 1e-10:
                break
            t *= 0.5
        theta, loss = candidate, new_loss
    if np.all(np.isfinite(theta)) and np.abs(logreg_grad(theta, X, y)).max() < tol:
        return theta
    raise RuntimeError(f"logreg_fit: no convergence in {max_iter} Newton steps")
