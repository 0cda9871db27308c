r"""The mode of a log density and the negative Hessian there: the two steps of the Laplace approximation.

:func:`find_mode` climbs to a mode by damped Newton ascent with a backtracking line search and
checks that it is one (gradient and Newton decrement small); :func:`negative_hessian` is
:math:`A = -\nabla^2 \log f` by autograd. Both, and the errors they raise, are importable from
:mod:`ewc_lib.laplace`, which builds the Gaussian from them. Book: :ref:`sec-laplace-definition`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ._checks import as_real_vector as _as_vector

__all__ = ["LaplaceError", "ModeNotFoundError", "NotPositiveDefiniteError", "find_mode", "negative_hessian"]

DTYPE = torch.float64


class LaplaceError(RuntimeError):
    """Base class of the errors raised when a Laplace approximation cannot be formed."""


class ModeNotFoundError(LaplaceError):
    """The optimiser stopped at a point whose gradient norm is above the tolerance."""


class NotPositiveDefiniteError(LaplaceError):
    """The negative Hessian at the returned point is not positive definite."""


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------


def _eval_scalar(log_density: Callable, theta: torch.Tensor) -> torch.Tensor:
    """Call ``log_density(theta)`` and check that it returns a real scalar tensor."""
    out = log_density(theta)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"log_density must return a torch scalar tensor, got {type(out).__name__}")
    if out.numel() != 1 or out.ndim > 1:
        raise ValueError(f"log_density must return a scalar (shape ()), got shape {tuple(out.shape)}")
    return out.reshape(())


def _value_and_grad(log_density: Callable, theta: torch.Tensor) -> tuple[float, torch.Tensor]:
    x = theta.detach().clone().requires_grad_(True)
    val = _eval_scalar(log_density, x)
    if not val.requires_grad:
        # constant function: gradient is zero
        return float(val.detach()), torch.zeros_like(theta)
    (g,) = torch.autograd.grad(val, x)
    return float(val.detach()), g.detach()


# --------------------------------------------------------------------------------------------
# mode, Hessian, Laplace
# --------------------------------------------------------------------------------------------


def negative_hessian(log_density: Callable, theta) -> torch.Tensor:
    r"""Return :math:`A = -\nabla^2_\theta \log f(\theta)`, shape ``(d, d)``, symmetrised, float64.

    Book: the precision of the Laplace approximation, :ref:`sec-laplace-definition`.

    Computed by ``torch.autograd.functional.hessian`` (exact, no finite differences).

    Example
    -------
    >>> negative_hessian(lambda t: -(t ** 2).sum(), torch.zeros(2, dtype=torch.float64)).tolist()
    [[2.0, 0.0], [0.0, 2.0]]
    """
    theta = _as_vector(theta, "theta")
    _eval_scalar(log_density, theta)  # shape check with a clear message
    h = torch.autograd.functional.hessian(lambda t: _eval_scalar(log_density, t), theta)
    h = -0.5 * (h + h.T)
    if not torch.isfinite(h).all():
        raise ValueError("log_density has a non-finite Hessian at theta")
    return h.detach()


def find_mode(
    log_density: Callable,
    init,
    *,
    max_iter: int = 200,
    grad_tol: float = 1e-8,
) -> tuple[torch.Tensor, float, float]:
    r"""Maximise ``log_density`` from ``init``; return ``(mode, log_density(mode), grad_norm)``.

    Book: the mode of :prf:ref:`def-laplace-mode`, :ref:`sec-laplace-definition`.

    Damped Newton ascent on :math:`\log f` (the Hessian is needed for the Laplace precision
    anyway, so the dimension ``d`` is small). Each iteration computes
    :math:`g = \nabla\log f(\theta)` and :math:`A = -\nabla^2\log f(\theta)`, takes the direction
    :math:`p = |A|^{-1} g`, where :math:`|A|` has the eigenvalues of ``A`` replaced by their
    absolute values (floored at a tiny positive number), which is the Newton step
    :math:`A^{-1}g` wherever ``A`` is positive definite and still an ascent direction near a
    saddle, and then halves the step length ``t`` from 1 until :math:`\theta + t p` is a point
    where ``log_density`` is finite and either increases by at least :math:`10^{-4}\, t\, g^\top p`
    (Armijo) or, once increases are below rounding, has a smaller gradient. On a Gaussian target
    the first step lands on the mode to rounding error; near a non-degenerate mode the
    convergence is quadratic.

    The iteration stops when :math:`\max_i |g_i| \le 10^{-3}\,` ``grad_tol``, when no step is
    accepted, or after ``max_iter`` iterations. The point is accepted as a mode when
    :math:`\max_i |g_i| \le` ``grad_tol`` (an absolute tolerance on the gradient of the *summed*
    log density); otherwise :class:`ModeNotFoundError` is raised, naming the gradient norm
    reached.

    Example
    -------
    >>> m, v, g = find_mode(lambda t: -((t - 3.0) ** 2).sum(), torch.zeros(1, dtype=torch.float64))
    >>> round(float(m[0]), 10)
    3.0
    """
    theta = _as_vector(init, "init")
    if not isinstance(max_iter, int) or isinstance(max_iter, bool) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
    if not (isinstance(grad_tol, (int, float)) and math.isfinite(grad_tol) and grad_tol > 0):
        raise ValueError(f"grad_tol must be a positive finite number, got {grad_tol!r}")

    val, g = _value_and_grad(log_density, theta)
    if not math.isfinite(val) or not torch.isfinite(g).all():
        raise ValueError(f"log_density must be finite with a finite gradient at init, got value {val}")

    hit_nonfinite = False
    gnorm = float(g.abs().max())
    for _ in range(max_iter):
        if gnorm <= 1e-3 * grad_tol:
            break
        try:
            a = negative_hessian(log_density, theta)
        except ValueError:  # non-finite Hessian: fall back to a gradient step
            a = torch.eye(theta.numel(), dtype=DTYPE)
        evals, evecs = torch.linalg.eigh(a)
        floor = 1e-12 * max(1.0, float(evals.abs().max()))
        direction = evecs @ ((evecs.T @ g) / evals.abs().clamp_min(floor))
        slope = float(g @ direction)  # > 0: an ascent direction
        t, accepted = 1.0, False
        for _ in range(60):
            cand = theta + t * direction
            if torch.isfinite(cand).all():
                cval, cg = _value_and_grad(log_density, cand)
                if math.isfinite(cval) and torch.isfinite(cg).all():
                    cgnorm = float(cg.abs().max())
                    armijo = cval >= val + 1e-4 * t * slope
                    rounding = cval >= val - 1e-12 * (1.0 + abs(val)) and cgnorm < gnorm
                    if armijo or rounding:
                        theta, val, g, gnorm, accepted = cand, cval, cg, cgnorm, True
                        break
                else:
                    hit_nonfinite = True
            else:
                hit_nonfinite = True
            t *= 0.5
        if not accepted:
            break

    if not gnorm <= grad_tol:
        extra = (
            "; on the way it met points where log_density is not finite (outside its support?)" if hit_nonfinite else ""
        )
        raise ModeNotFoundError(
            f"mode not found: gradient max-norm {gnorm:.3g} > grad_tol={grad_tol:.3g} after at most "
            f"max_iter={max_iter} damped Newton iterations (last point {theta.tolist()}){extra}; "
            "the density may be unbounded or have its maximum on a boundary"
        )
    return theta, val, gnorm
