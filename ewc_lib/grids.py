r"""Densities tabulated on a uniform grid, and divergences between them.

The numerical side of the Laplace chapter: a density known up to a constant is tabulated on a
uniform 1-D, 2-D (or d-D) tensor-product grid, normalised there, and compared with its Laplace
approximation by the Kullback-Leibler divergence and the total variation distance. Everything
here is float64, and also importable from :mod:`ewc_lib.laplace`. Book: :ref:`sec-laplace-demo`.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from ._checks import as_real_vector as _as_vector

__all__ = ["GridNormalisationError", "Grid", "make_grid", "normalise_on_grid", "grid_kl", "grid_tv"]

DTYPE = torch.float64


class GridNormalisationError(ValueError):
    """A gridded density does not normalise on its grid (mass at the grid edge, or no mass)."""


@dataclasses.dataclass(frozen=True, eq=False)
class Grid:
    """A uniform tensor-product grid.

    ``points`` has shape ``(M, d)`` (``M = prod(shape)``, ``indexing="ij"``), ``shape`` is the
    grid shape ``(n_1, ..., n_d)`` so that ``values.reshape(shape)`` lays values out on the grid,
    ``axes`` are the 1-D axes and ``cell_volume`` is the product of the spacings.
    """

    points: torch.Tensor
    shape: tuple
    axes: tuple
    cell_volume: float


def make_grid(*axes) -> Grid:
    r"""Tensor-product grid from uniformly spaced 1-D ``axes``; cell volume :math:`\prod_k \Delta_k`.

    Book: the grids of :ref:`sec-laplace-demo`.

    Example
    -------
    >>> g = make_grid(torch.linspace(-1, 1, 5, dtype=torch.float64), torch.linspace(0, 1, 3, dtype=torch.float64))
    >>> g.points.shape, g.shape, g.cell_volume
    (torch.Size([15, 2]), (5, 3), 0.25)
    """
    if len(axes) == 0:
        raise ValueError("make_grid needs at least one axis")
    ts, vol = [], 1.0
    for k, a in enumerate(axes):
        t = _as_vector(a, f"axes[{k}]")
        if t.numel() < 3:
            raise ValueError(f"axes[{k}] must have at least 3 points, got {t.numel()}")
        d = torch.diff(t)
        if not (d > 0).all():
            raise ValueError(f"axes[{k}] must be strictly increasing")
        if float((d - d.mean()).abs().max()) > 1e-9 * float(d.mean()) + 1e-15:
            raise ValueError(f"axes[{k}] must be uniformly spaced")
        ts.append(t)
        vol *= float(d.mean())
    mesh = torch.meshgrid(*ts, indexing="ij")
    points = torch.stack([m.reshape(-1) for m in mesh], dim=-1)
    return Grid(points=points, shape=tuple(t.numel() for t in ts), axes=tuple(ts), cell_volume=vol)


def _check_log_grid(log_grid, name: str) -> torch.Tensor:
    t = torch.as_tensor(log_grid, dtype=DTYPE)
    if t.ndim == 0 or t.numel() < 3:
        raise ValueError(f"{name} must be an array of log densities laid out on the grid, got shape {tuple(t.shape)}")
    if torch.isnan(t).any():
        raise ValueError(f"{name} contains NaN")
    if (t == float("inf")).any():
        raise ValueError(f"{name} contains +inf (an infinite density)")
    if not torch.isfinite(t).any():
        raise GridNormalisationError(f"{name} is -inf everywhere: the density has no mass on the grid")
    return t


def _edge_mask(shape) -> torch.Tensor:
    mask = torch.zeros(shape, dtype=torch.bool)
    for k in range(len(shape)):
        idx = [slice(None)] * len(shape)
        idx[k] = 0
        mask[tuple(idx)] = True
        idx[k] = -1
        mask[tuple(idx)] = True
    return mask


def normalise_on_grid(log_grid, cell_volume: float, *, edge_tol: float = 1e-6, name: str = "log_grid"):
    r"""Normalise a gridded log density numerically; return ``(log_p, log_mass)``.

    Book: the tabulated densities of :ref:`sec-laplace-demo`.

    ``log_p = log_grid - log_mass`` with :math:`\text{log\_mass} = \log \sum_i e^{\text{log\_grid}_i}\,\Delta`
    (``logsumexp``), so that :math:`\sum_i p_i \Delta = 1`. ``log_grid`` must be laid out with the
    grid's shape (1-D: ``(n,)``, 2-D: ``(n_1, n_2)``): the cells on the faces of that array are the
    grid edge, and if they hold a fraction of the mass above ``edge_tol`` the density is cut off
    by the grid and :class:`GridNormalisationError` is raised (widen the grid).

    Example
    -------
    >>> z = torch.linspace(-10, 10, 2001, dtype=torch.float64)
    >>> lp, lm = normalise_on_grid(-0.5 * z ** 2, 0.01)
    >>> round(float(lm), 6) == round(0.5 * math.log(2 * math.pi), 6)
    True
    """
    t = _check_log_grid(log_grid, name)
    if not (isinstance(cell_volume, (int, float)) and math.isfinite(cell_volume) and cell_volume > 0):
        raise ValueError(f"cell_volume must be a positive finite number, got {cell_volume!r}")
    if not (isinstance(edge_tol, (int, float)) and 0 <= edge_tol < 1):
        raise ValueError(f"edge_tol must be in [0, 1), got {edge_tol!r}")
    log_mass = torch.logsumexp(t.reshape(-1), 0) + math.log(cell_volume)
    log_p = t - log_mass
    edge = float(torch.exp(log_p[_edge_mask(t.shape)]).sum() * cell_volume)
    if edge > edge_tol:
        raise GridNormalisationError(
            f"{name} does not normalise on its grid: a fraction {edge:.3g} > edge_tol={edge_tol:.3g} "
            "of its mass sits in the edge cells, so mass outside the grid is not negligible "
            "(widen the grid)"
        )
    return log_p, float(log_mass)


def _pair(log_p_grid, log_q_grid, cell_volume, edge_tol):
    lp = _check_log_grid(log_p_grid, "log_p_grid")
    lq = _check_log_grid(log_q_grid, "log_q_grid")
    if lp.shape != lq.shape:
        raise ValueError(
            f"log_p_grid and log_q_grid must have the same shape, got {tuple(lp.shape)} and {tuple(lq.shape)}"
        )
    lp, _ = normalise_on_grid(lp, cell_volume, edge_tol=edge_tol, name="log_p_grid")
    lq, _ = normalise_on_grid(lq, cell_volume, edge_tol=edge_tol, name="log_q_grid")
    return lp, lq


def grid_kl(log_p_grid, log_q_grid, cell_volume: float, *, edge_tol: float = 1e-6) -> float:
    r"""KL divergence :math:`\mathrm{KL}(p\,\|\,q) = \sum_i p_i \log(p_i/q_i)\,\Delta` on a grid.

    Book: the errors of the Laplace approximation measured in :ref:`sec-laplace-demo`.

    Both inputs are log densities (normalised or not) tabulated on the same uniform grid with
    cell volume :math:`\Delta`; each is normalised numerically (:func:`normalise_on_grid`, which
    raises if mass at the grid edge exceeds ``edge_tol``). Cells with :math:`p_i = 0` contribute
    0; a cell with :math:`p_i > 0 = q_i` makes the result ``inf``. Order matters: for a Laplace
    fit pass the true density as ``p`` and the Gaussian as ``q``.

    Example
    -------
    >>> z = torch.linspace(-12, 12, 4001, dtype=torch.float64)
    >>> round(grid_kl(-0.5 * z ** 2, -0.5 * (z - 1) ** 2, float(z[1] - z[0])), 6)
    0.5
    """
    lp, lq = _pair(log_p_grid, log_q_grid, cell_volume, edge_tol)
    p = torch.exp(lp)
    mask = p > 0
    if (mask & torch.isneginf(lq)).any():
        return float("inf")
    return float((p[mask] * (lp[mask] - lq[mask])).sum() * cell_volume)


def grid_tv(log_p_grid, log_q_grid, cell_volume: float, *, edge_tol: float = 1e-6) -> float:
    r"""Total variation distance :math:`\tfrac12 \sum_i |p_i - q_i|\,\Delta \in [0, 1]` on a grid.

    Book: the errors of the Laplace approximation measured in :ref:`sec-laplace-demo`.

    Same input conventions as :func:`grid_kl`; symmetric in ``p`` and ``q``.

    Example
    -------
    >>> z = torch.linspace(-12, 12, 4001, dtype=torch.float64)
    >>> round(grid_tv(-0.5 * z ** 2, -0.5 * z ** 2, float(z[1] - z[0])), 12)
    0.0
    """
    lp, lq = _pair(log_p_grid, log_q_grid, cell_volume, edge_tol)
    return float(0.5 * (torch.exp(lp) - torch.exp(lq)).abs().sum() * cell_volume)
