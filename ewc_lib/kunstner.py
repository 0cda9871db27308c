"""Small NumPy models behind the reproduction of Kunstner, Balles & Hennig (2019), Figures 1 and 2.

Two toy problems with two parameters, where every curvature matrix is a 2 x 2 matrix in closed
form, plus (from :mod:`ewc_lib.moments`, re-exported here) the gradient-moment identities of
the empirical Fisher.

Conventions (the book's, see ``book/notation.md``)
--------------------------------------------------
* Losses and curvature matrices are **means** over the ``N`` data points. The paper uses sums;
  multiply by ``N`` to compare. Preconditioned directions ``M^{-1} grad`` do not depend on the
  choice, because ``M`` and ``grad`` scale together.
* ``fisher`` uses labels drawn from the model (for these models it is available in closed form);
  ``empirical_fisher`` uses the observed labels:
  ``EF(theta) = (1/N) sum_n g_n g_n^T`` with ``g_n`` the gradient of the loss of example ``n``.
* Arrays are float64. Functions that take ``theta`` accept a single vector of shape ``(2,)`` or
  a stack of vectors ``(..., 2)`` and return results with the same leading shape.

Linear least squares (Figure 1)
-------------------------------
Features ``x_n = (1, u_n)``, parameters ``theta = (b, w)`` (intercept, slope), model
``y ~ N(x^T theta, 1)``. Mean loss ``L = (1/2N) sum_n (y_n - x_n^T theta)^2``; gradient
``-(1/N) sum_n r_n x_n`` with residual ``r_n = y_n - x_n^T theta``; Fisher ``(1/N) X^T X`` (the
Hessian, independent of ``theta``); empirical Fisher ``(1/N) sum_n r_n^2 x_n x_n^T``.

Logistic regression (Figure 2)
------------------------------
Inputs ``x_n`` in R^2, labels ``y_n`` in {0, 1}, no bias, ``p(y=1|x) = sigmoid(x^T theta)``.
Mean loss = mean negative log-likelihood; gradient ``(1/N) sum_n (pi_n - y_n) x_n``; Fisher
``(1/N) sum_n pi_n (1 - pi_n) x_n x_n^T`` (equal to the Hessian); empirical Fisher
``(1/N) sum_n (pi_n - y_n)^2 x_n x_n^T``.
"""

from __future__ import annotations

import numpy as np

from ._checks import as_finite_matrix as _as_matrix
from .moments import (
    batched_second_moment,
    expected_batched_second_moment,
    generalized_eigenvalues,
    gradient_moments,
    relative_gap,
)

__all__ = [
    "linreg_data",
    "linreg_loss",
    "linreg_grad",
    "linreg_fisher",
    "linreg_empirical_fisher",
    "linreg_solution",
    "linreg_fast",
    "preconditioned_descent",
    "max_deviation_from_segment",
    "LOGREG_DATASETS",
    "logreg_data",
    "logreg_loss",
    "logreg_grad",
    "logreg_fisher",
    "logreg_empirical_fisher",
    "logreg_fit",
    "gradient_moments",
    "batched_second_moment",
    "expected_batched_second_moment",
    "relative_gap",
    "generalized_eigenvalues",
]


# ----------------------------------------------------------------------------- validation


def _as_targets(y, n, name="y"):
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if y.shape[0] != n:
        raise ValueError(f"{name}: expected {n} targets (one per row of X), got {y.shape[0]}")
    if not np.all(np.isfinite(y)):
        raise ValueError(f"{name}: contains NaN or inf")
    return y


def _as_theta(theta, d):
    theta = np.asarray(theta, dtype=np.float64)
    if theta.ndim == 0 or theta.shape[-1] != d:
        raise ValueError(f"theta: expected shape (..., {d}), got {theta.shape}")
    if not np.all(np.isfinite(theta)):
        raise ValueError("theta: contains NaN or inf")
    return theta


def _check_binary(y):
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("y: expected labels in {0, 1}")


# ----------------------------------------------------------------------------- Figure 1


def linreg_data(
    n: int = 1000, *, seed: int = 0, intercept: float = 2.0, slope: float = 2.0, sigma: float = 0.75, noise: float = 1.0
):
    """The data of Kunstner et al.'s Figure 1: ``u ~ Lognormal(0, sigma)``, ``y = b + w u + eps``.

    Defaults follow the paper (App. D.1): ``n = 1000``, ``sigma = 0.75`` (the log-scale standard
    deviation), ``y = 2 + 2 u + eps`` with ``eps ~ N(0, noise^2)``, ``noise = 1``. Returns the
    feature matrix ``X = [1, u]`` of shape ``(n, 2)`` and ``y`` of shape ``(n,)``.

    >>> X, y = linreg_data(5, seed=0)
    >>> X.shape, y.shape, bool(np.all(X[:, 0] == 1))
    ((5, 2), (5,), True)
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n: expected a positive int, got {n!r}")
    if not (sigma > 0 and noise >= 0):
        raise ValueError(f"sigma, noise: expected sigma > 0 and noise >= 0, got {sigma}, {noise}")
    rng = np.random.default_rng(seed)
    u = rng.lognormal(0.0, sigma, size=n)
    y = intercept + slope * u + noise * rng.standard_normal(n)
    return np.column_stack([np.ones(n), u]), y


def _residuals(theta, X, y):
    return y - theta @ X.T  # (..., N)


def linreg_loss(theta, X, y):
    """Mean squared-error loss ``L(theta) = (1/2N) sum_n (y_n - x_n^T theta)^2`` (shape ``(...)``).

    >>> float(linreg_loss(np.zeros(2), np.ones((3, 2)), np.ones(3)))
    0.5
    """
    X = _as_matrix(X)
    y = _as_targets(y, X.shape[0])
    theta = _as_theta(theta, X.shape[1])
    return 0.5 * np.mean(_residuals(theta, X, y) ** 2, axis=-1)


def linreg_grad(theta, X, y):
    """Gradient of :func:`linreg_loss`: ``-(1/N) sum_n r_n x_n`` with ``r_n = y_n - x_n^T theta``.

    >>> linreg_grad(np.zeros(2), np.ones((3, 2)), np.ones(3))
    array([-1., -1.])
    """
    X = _as_matrix(X)
    y = _as_targets(y, X.shape[0])
    theta = _as_theta(theta, X.shape[1])
    return -(_residuals(theta, X, y) @ X) / X.shape[0]


def linreg_fisher(X, noise_var: float = 1.0):
    """Fisher of the Gaussian model ``y ~ N(x^T theta, noise_var)``: ``X^T X / (N noise_var)``.

    Book: :ref:`sec-empirical-fisher`; figures in :ref:`sec-kunstner-figures`.

    It does not depend on ``theta`` or on the observed ``y`` and equals the Hessian of the mean
    loss (for ``noise_var = 1``).

    >>> linreg_fisher(np.array([[1.0, 2.0], [1.0, 0.0]]))
    array([[1., 1.],
           [1., 2.]])
    """
    X = _as_matrix(X)
    if not noise_var > 0:
        raise ValueError(f"noise_var: expected > 0, got {noise_var!r}")
    return X.T @ X / (X.shape[0] * noise_var)


def linreg_empirical_fisher(theta, X, y):
    """Empirical Fisher ``(1/N) sum_n r_n^2 x_n x_n^T`` (unit noise variance), shape ``(..., 2, 2)``.

    Book: :prf:ref:`def-empirical-fisher`, :ref:`sec-empirical-fisher`.

    >>> linreg_empirical_fisher(np.zeros(2), np.ones((2, 2)), np.array([1.0, 3.0]))
    array([[5., 5.],
           [5., 5.]])
    """
    X = _as_matrix(X)
    y = _as_targets(y, X.shape[0])
    theta = _as_theta(theta, X.shape[1])
    r2 = _residuals(theta, X, y) ** 2
    return np.einsum("...n,ni,nj->...ij", r2, X, X) / X.shape[0]


def linreg_solution(X, y):
    """Least-squares minimiser ``theta* = (X^T X)^{-1} X^T y``.

    >>> linreg_solution(np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([1.0, 3.0]))
    array([1., 2.])
    """
    X = _as_matrix(X)
    y = _as_targets(y, X.shape[0])
    return np.linalg.solve(X.T @ X, X.T @ y)


def linreg_fast(X, y):
    """Fast closures ``(grad, empirical_fisher)`` for many evaluations on one data set.

    Both are polynomials in ``theta``, so they are computed from data moments fixed once:
    ``grad(theta) = F theta - mean(y x)`` and, with ``r^2 = y^2 - 2 y x^T theta + (x^T theta)^2``,
    ``EF(theta) = M0 - 2 theta_k M1[k] + theta_k theta_l M2[k, l]`` where
    ``M0 = mean(y^2 x x^T)``, ``M1[k] = mean(y x_k x x^T)``, ``M2[k, l] = mean(x_k x_l x x^T)``.
    The results equal :func:`linreg_grad` and :func:`linreg_empirical_fisher` up to round-off;
    each call costs O(D^4) instead of O(N D^2).

    >>> X, y = linreg_data(50, seed=1)
    >>> grad, ef = linreg_fast(X, y)
    >>> bool(np.allclose(ef(np.ones(2)), linreg_empirical_fisher(np.ones(2), X, y)))
    True
    """
    X = _as_matrix(X)
    y = _as_targets(y, X.shape[0])
    n = X.shape[0]
    F = X.T @ X / n
    b = X.T @ y / n
    xx = np.einsum("ni,nj->nij", X, X)
    M0 = np.einsum("n,nij->ij", y**2, xx) / n
    M1 = np.einsum("n,nk,nij->kij", y, X, xx) / n
    M2 = np.einsum("nk,nl,nij->klij", X, X, xx) / n

    def grad(theta):
        theta = _as_theta(theta, X.shape[1])
        return theta @ F - b

    def empirical_fisher(theta):
        theta = _as_theta(theta, X.shape[1])
        return M0 - 2.0 * np.einsum("...k,kij->...ij", theta, M1) + np.einsum("...k,...l,klij->...ij", theta, theta, M2)

    return grad, empirical_fisher


def preconditioned_descent(direction, theta0, *, step: float, num_steps: int):
    """Iterate ``theta_{t+1} = theta_t - step * direction(theta_t)`` and return the whole path.

    Book: the descent paths of :ref:`sec-kunstner-figures`.

    ``direction`` maps an array ``(..., D)`` to an array of the same shape (e.g. the gradient,
    or ``(M + damping I)^{-1}`` times the gradient). ``theta0`` may hold several starting points
    ``(K, D)``; they are run together. Returns ``(num_steps + 1, *theta0.shape)``.

    >>> path = preconditioned_descent(lambda t: t, np.ones(2), step=0.5, num_steps=2)
    >>> path[-1]
    array([0.25, 0.25])
    """
    theta = np.array(theta0, dtype=np.float64)
    if not np.all(np.isfinite(theta)):
        raise ValueError("theta0: contains NaN or inf")
    if not (np.isfinite(step) and step > 0):
        raise ValueError(f"step: expected a positive finite number, got {step!r}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 0:
        raise ValueError(f"num_steps: expected a non-negative int, got {num_steps!r}")
    path = np.empty((num_steps + 1,) + theta.shape)
    path[0] = theta
    for t in range(num_steps):
        theta = theta - step * direction(theta)
        path[t + 1] = theta
    return path


def max_deviation_from_segment(path, start=None, end=None):
    """Largest distance of the points of ``path`` (T, D) from the segment ``start -> end``.

    Divided by the segment's length, so 0 means "a straight path" and 0.1 means the path strays
    by a tenth of the start-to-end distance. ``start``/``end`` default to the path's first and
    last points.

    >>> max_deviation_from_segment(np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]]))
    0.5
    """
    path = np.asarray(path, dtype=np.float64)
    if path.ndim != 2 or path.shape[0] < 2:
        raise ValueError(f"path: expected shape (T, D) with T >= 2, got {path.shape}")
    a = path[0] if start is None else np.asarray(start, dtype=np.float64)
    b = path[-1] if end is None else np.asarray(end, dtype=np.float64)
    d = b - a
    length = np.linalg.norm(d)
    if length == 0:
        raise ValueError("start, end: the segment has length zero")
    s = np.clip((path - a) @ d / length**2, 0.0, 1.0)
    dist = np.linalg.norm(path - a - s[:, None] * d, axis=1)
    return float(dist.max() / length)


# ----------------------------------------------------------------------------- Figure 2

#: The three data sets of Kunstner et al.'s Figure 2 / Table 2; for each, the class means and
#: covariance matrices of the inputs of class 0 and class 1 (equal class sizes).
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
