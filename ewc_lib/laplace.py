r"""The Laplace approximation of a log density, and divergences to a gridded density.

The Laplace approximation replaces an (unnormalised) density :math:`f(\theta)` on
:math:`\mathbb{R}^d` by the Gaussian obtained from a second-order Taylor expansion of
:math:`\log f` at a mode :math:`\theta^*` (Bishop 2006, eqs. 4.131--4.134; MacKay 1992):

.. math::

    \log f(\theta) \approx \log f(\theta^*) - \tfrac12 (\theta-\theta^*)^\top A (\theta-\theta^*),
    \qquad A = -\nabla^2 \log f(\theta)\big|_{\theta=\theta^*},

    q(\theta) = \mathcal{N}(\theta \mid \theta^*, A^{-1}).

The first-order term vanishes because :math:`\nabla \log f(\theta^*) = 0` at a mode; ``A`` must
be positive definite for ``q`` to exist.

Public API
----------
* :func:`laplace_approximation` -- find the mode by damped Newton ascent (backtracking line
  search), take ``A`` = minus the autograd Hessian, return a :class:`LaplaceGaussian`.
* :func:`find_mode`, :func:`negative_hessian` -- the two building blocks.
* :class:`LaplaceGaussian` -- ``.mean``, ``.precision``, ``.covariance``, ``.log_prob(x)``,
  ``.sample(n, generator)``, ``.log_normaliser`` (Laplace estimate of ``log int f``).
* :func:`make_grid`, :func:`normalise_on_grid`, :func:`grid_kl`, :func:`grid_tv` -- numerical
  divergences between densities tabulated on a uniform 1-D or 2-D (or d-D) grid.
* :func:`gaussian_kl` -- the closed-form KL divergence between two Gaussians.

Conventions: everything is float64. ``log_density`` takes a 1-D tensor of shape ``(d,)`` and
returns a scalar tensor; it is the log of the *unnormalised* density, so for a posterior it is
``log p(D | theta) + log p(theta)`` -- a **sum** over data points, not a mean (the book's
mean-loss convention multiplies by ``N`` here).

Errors: bad input raises ``ValueError``/``TypeError`` naming the argument; a mode that cannot be
found raises :class:`ModeNotFoundError`; a negative Hessian that is not positive definite raises
:class:`NotPositiveDefiniteError`; a gridded density with non-negligible mass at the edge of its
grid raises :class:`GridNormalisationError`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch

from ._checks import as_real_vector as _as_vector
from .grids import Grid, GridNormalisationError, grid_kl, grid_tv, make_grid, normalise_on_grid
from .modes import (
    LaplaceError,
    ModeNotFoundError,
    NotPositiveDefiniteError,
    _value_and_grad,
    find_mode,
    negative_hessian,
)

__all__ = [
    "LaplaceError",
    "ModeNotFoundError",
    "NotPositiveDefiniteError",
    "GridNormalisationError",
    "LaplaceGaussian",
    "Grid",
    "find_mode",
    "negative_hessian",
    "laplace_approximation",
    "make_grid",
    "normalise_on_grid",
    "grid_kl",
    "grid_tv",
    "gaussian_kl",
]

DTYPE = torch.float64


# --------------------------------------------------------------------------------------------
# the Gaussian
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class LaplaceGaussian:
    r"""The Gaussian :math:`\mathcal{N}(\theta \mid \text{mode}, \text{precision}^{-1})`.

    Book: :prf:ref:`def-laplace-approximation` in :ref:`sec-laplace-definition`.

    Attributes
    ----------
    mode : Tensor (d,)
        The point :math:`\theta^*` of the expansion (the mean of the Gaussian).
    precision : Tensor (d, d)
        :math:`A = -\nabla^2 \log f(\theta^*)`, symmetric positive definite.
    log_density_at_mode : float
        :math:`\log f(\theta^*)` of the *unnormalised* target (``nan`` if unknown).
    grad_norm : float
        Max-abs gradient of :math:`\log f` at ``mode`` (how stationary the point is).

    Example
    -------
    >>> g = LaplaceGaussian(torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64) * 4)
    >>> g.covariance.diagonal().tolist()
    [0.25, 0.25]
    """

    mode: torch.Tensor
    precision: torch.Tensor
    log_density_at_mode: float = float("nan")
    grad_norm: float = float("nan")

    def __post_init__(self):
        mode = _as_vector(self.mode, "mode")
        prec = torch.as_tensor(self.precision, dtype=DTYPE).detach().clone()
        d = mode.numel()
        if prec.shape != (d, d):
            raise ValueError(f"precision must have shape ({d}, {d}) to match mode, got {tuple(prec.shape)}")
        if not torch.isfinite(prec).all():
            raise ValueError("precision must be finite")
        prec = 0.5 * (prec + prec.T)
        chol, info = torch.linalg.cholesky_ex(prec)
        if int(info) != 0:
            eig = torch.linalg.eigvalsh(prec)
            raise NotPositiveDefiniteError(
                f"precision is not positive definite (smallest eigenvalue {float(eig.min()):.3g})"
            )
        object.__setattr__(self, "mode", mode)
        object.__setattr__(self, "precision", prec)
        object.__setattr__(self, "_chol", chol)

    @property
    def dim(self) -> int:
        """Dimension d."""
        return self.mode.numel()

    @property
    def mean(self) -> torch.Tensor:
        """The mean, equal to the mode :math:`\\theta^*`."""
        return self.mode

    @property
    def covariance(self) -> torch.Tensor:
        """The covariance :math:`A^{-1}` (via the Cholesky factor of ``precision``)."""
        return torch.cholesky_inverse(self._chol)

    @property
    def log_det_precision(self) -> float:
        r""":math:`\log\det A`."""
        return float(2.0 * torch.log(torch.diagonal(self._chol)).sum())

    @property
    def log_normaliser(self) -> float:
        r"""Laplace estimate of :math:`\log \int f`, namely
        :math:`\log f(\theta^*) + \tfrac d2 \log 2\pi - \tfrac12\log\det A`.

        (Bishop 2006, eq. 4.135.) ``nan`` if ``log_density_at_mode`` is unknown.
        """
        return self.log_density_at_mode + 0.5 * self.dim * math.log(2 * math.pi) - 0.5 * self.log_det_precision

    def log_prob(self, x) -> torch.Tensor:
        r"""Normalised Gaussian log density at ``x`` of shape ``(..., d)``; returns shape ``(...)``.

        :math:`\log q(x) = -\tfrac d2\log 2\pi + \tfrac12\log\det A - \tfrac12 (x-\theta^*)^\top A (x-\theta^*)`.
        """
        x = torch.as_tensor(x, dtype=DTYPE)
        if x.ndim == 0 or x.shape[-1] != self.dim:
            raise ValueError(f"x must have shape (..., {self.dim}), got {tuple(x.shape)}")
        diff = x - self.mode
        # (x-m)^T A (x-m) = ||L^T (x-m)||^2 with A = L L^T
        z = diff @ self._chol
        maha = (z * z).sum(-1)
        return -0.5 * self.dim * math.log(2 * math.pi) + 0.5 * self.log_det_precision - 0.5 * maha

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        r"""Draw ``n`` samples, shape ``(n, d)``: :math:`\theta^* + L^{-\top} z`,
        :math:`z\sim\mathcal N(0,I)`, :math:`A = LL^\top`.

        ``generator`` (a ``torch.Generator``) makes the draw reproducible; it is required, so that
        every random draw in the book is seeded.

        Example
        -------
        >>> g = LaplaceGaussian(torch.zeros(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64))
        >>> g.sample(4, torch.Generator().manual_seed(0)).shape
        torch.Size([4, 3])
        """
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        if not isinstance(generator, torch.Generator):
            raise TypeError("generator must be a torch.Generator (every random draw is seeded)")
        z = torch.randn(n, self.dim, generator=generator, dtype=DTYPE)
        # solve L^T y = z^T  ->  y = L^{-T} z^T
        y = torch.linalg.solve_triangular(self._chol.T, z.T, upper=True).T
        return self.mode + y


# --------------------------------------------------------------------------------------------
# the Laplace approximation
# --------------------------------------------------------------------------------------------


def laplace_approximation(
    log_density: Callable,
    init,
    *,
    max_iter: int = 200,
    grad_tol: float = 1e-8,
    decrement_tol: float = 1e-10,
) -> LaplaceGaussian:
    r"""Laplace approximation :math:`\mathcal N(\theta^*, A^{-1})` of the density
    :math:`\propto \exp(\text{log\_density})`.

    Book: derived in :ref:`sec-laplace-definition` (:prf:ref:`thm-laplace-expansion`); checked in
    :ref:`sec-laplace-demo`.

    :math:`\theta^*` = :func:`find_mode` from ``init`` (gradient max-norm :math:`\le` ``grad_tol``);
    :math:`A = -\nabla^2 \log f(\theta^*)` = :func:`negative_hessian`, which must be positive
    definite (Cholesky), else :class:`NotPositiveDefiniteError` is raised with its smallest
    eigenvalue. A second, scale-free stationarity test follows: the Newton decrement
    :math:`\tfrac12 g^\top A^{-1} g` (with :math:`g = \nabla\log f(\theta^*)`; the increase of
    :math:`\log f` that one more Newton step would predict, in nats) must be
    :math:`\le` ``decrement_tol``, else :class:`ModeNotFoundError` (this catches "modes" at
    infinity of densities such as :math:`f(p) = (1-p)^{19}`, where the gradient is tiny only
    because the curvature is tinier).

    ``log_density`` maps a float64 tensor of shape ``(d,)`` to a scalar tensor; it is the
    *unnormalised* log density (for a posterior: log-likelihood **summed** over the data plus
    log prior; with a mean loss :math:`\mathcal L` over ``N`` points this is :math:`-N\mathcal L`).

    Example
    -------
    Bishop (2006), Fig. 4.14: :math:`f(z) = e^{-z^2/2}\sigma(20z+4)`.

    >>> f = lambda z: -0.5 * (z ** 2).sum() + torch.nn.functional.logsigmoid(20 * z + 4).sum()
    >>> q = laplace_approximation(f, torch.zeros(1, dtype=torch.float64))
    >>> round(float(q.mean[0]), 4), round(float(q.precision[0, 0]), 4)
    (0.0775, 2.5436)
    """
    if not (isinstance(decrement_tol, (int, float)) and math.isfinite(decrement_tol) and decrement_tol > 0):
        raise ValueError(f"decrement_tol must be a positive finite number, got {decrement_tol!r}")
    mode, val, gnorm = find_mode(log_density, init, max_iter=max_iter, grad_tol=grad_tol)
    a = negative_hessian(log_density, mode)
    chol, info = torch.linalg.cholesky_ex(a)
    if int(info) != 0:
        eig = torch.linalg.eigvalsh(a)
        raise NotPositiveDefiniteError(
            f"the negative Hessian at the stationary point {mode.tolist()} is not positive definite "
            f"(eigenvalues {eig.tolist()}): the point is a saddle, a minimum or a flat direction, "
            "so no Gaussian approximation exists there"
        )
    _, g = _value_and_grad(log_density, mode)
    decrement = 0.5 * float(g @ torch.cholesky_solve(g.unsqueeze(1), chol).squeeze(1))
    if not decrement <= decrement_tol:
        raise ModeNotFoundError(
            f"mode not found: at {mode.tolist()} the Newton decrement 0.5 g^T A^-1 g = {decrement:.3g} "
            f"nats > decrement_tol={decrement_tol:.3g}, although the gradient max-norm is {gnorm:.3g}; "
            "the density keeps increasing along a flat direction (unbounded, or maximum at infinity)"
        )
    return LaplaceGaussian(mode, a, log_density_at_mode=val, grad_norm=gnorm)


def gaussian_kl(mean_p, precision_p, mean_q, precision_q) -> float:
    r"""Closed-form :math:`\mathrm{KL}(\mathcal N(m_p, A_p^{-1}) \,\|\, \mathcal N(m_q, A_q^{-1}))`.

    Book: :prf:ref:`prop-ewc-diagonal-kl` in :ref:`sec-ewc-penalty-diagonal`; used in
    :ref:`sec-bayes-two-tasks-check` and :ref:`sec-diagonal-and-multitask`.

    .. math::

        \tfrac12\Big[\operatorname{tr}(A_q A_p^{-1}) + (m_q-m_p)^\top A_q (m_q-m_p) - d
        + \log\det A_p - \log\det A_q\Big].

    Example
    -------
    >>> one = torch.ones(1, 1, dtype=torch.float64)
    >>> gaussian_kl(torch.zeros(1), one, torch.ones(1), one)
    0.5
    """
    p = LaplaceGaussian(_as_vector(mean_p, "mean_p"), precision_p)
    q = LaplaceGaussian(_as_vector(mean_q, "mean_q"), precision_q)
    if p.dim != q.dim:
        raise ValueError(f"mean_p and mean_q must have the same dimension, got {p.dim} and {q.dim}")
    diff = q.mean - p.mean
    tr = float(torch.trace(q.precision @ p.covariance))
    maha = float(diff @ q.precision @ diff)
    return 0.5 * (tr + maha - p.dim + p.log_det_precision - q.log_det_precision)
