"""Small NumPy models behind the reproduction of Kunstner, Balles & Hennig (2019), Figures 1 and 2.

Two toy problems with two parameters, where every curvature matrix is a 2 x 2 matrix in closed
form (the logistic regression lives in ``ewc_lib.logistic``), plus (from
``ewc_lib.moments``) the gradient-moment identities of the empirical Fisher; all re-exported
here.

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
``y ~ N(x^T theta, 1)``. Mean loss ``L = (1/2N) sum_n (x_n^T theta - y_n)^2``; gradient
``(1/N) sum_n r_n x_n`` with residual ``r_n = x_n^T theta - y_n`` (prediction minus target, the
book's :math:`r_n`); Fisher ``(1/N) X^T X`` (the
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
from ._checks import as_finite_targets as _as_targets
from ._checks import as_theta as _as_theta
from .logistic import (
    LOGREG_DATASETS,
    logreg_data,
    logreg_empirical_fisher,
    logreg_fisher,
    logreg_fit,
    logreg_grad,
    logreg_loss,
)
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
    return theta @ X.T - y  # (..., N): prediction minus target, the book's r_n


def linreg_loss(theta, X, y):
    """Mean squared-error loss ``L(theta) = (1/2N) sum_n (x_n^T theta - y_n)^2`` (shape ``(...)``).

    >>> float(linreg_loss(np.zeros(2), np.ones((3, 2)), np.ones(3)))
    0.5
    """
    X = _as_matrix(X)
    y = _as_targets(y, X.shape[0])
    theta = _as_theta(theta, X.shape[1])
    return 0.5 * np.mean(_residuals(theta, X, y) ** 2, axis=-1)


def linreg_grad(theta, X, y):
    """Gradient of :func:`linreg_loss`: ``(1/N) sum_n r_n x_n`` with ``r_n = x_n^T theta - y_n``.

    >>> linreg_grad(np.zeros(2), np.ones((3, 2)), np.ones(3))
    array([-1., -1.])
    """
    X = _as_matrix(X)
    y = _as_targets(y, X.shape[0])
    theta = _as_theta(theta, X.shape[1])
    return (_residuals(theta, X, y) @ X) / X.shape[0]


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
