r"""Fisher overlap between two tasks (the paper's Figure 2C).

Kirkpatrick et al. (2017, SI "Fisher overlap") compare two tasks' Fisher matrices
``F1`` and ``F2`` by first normalising each to unit trace, ``F1_hat = F1 / tr F1``, and
then taking the squared Frechet distance (Dowson & Landau 1982) between them::

    d^2(F1_hat, F2_hat) = 1/2 tr(F1_hat + F2_hat - 2 (F1_hat F2_hat)^{1/2})
                        = 1 - tr((F1_hat F2_hat)^{1/2}),

which lies in [0, 1]. The *overlap* is ``1 - d^2 = tr((F1_hat F2_hat)^{1/2})``: 1 iff
``F1 = alpha F2`` for some ``alpha > 0``, 0 iff the two matrices have orthogonal ranges
(the tasks depend on disjoint sets of parameter directions).

Erratum. The paper continues the display with ``= 1/2 ||F1_hat^{1/2} - F2_hat^{1/2}||_F``;
the Frobenius norm is missing its **square**. With the square the identity holds whenever
``F1_hat`` and ``F2_hat`` commute (in particular for diagonals); without it, it is wrong
even then.

For diagonal Fishers (what EWC stores) the formula reduces to the Bhattacharyya
coefficient of the two normalised diagonals::

    d^2 = 1/2 sum_i (sqrt(f1_hat_i) - sqrt(f2_hat_i))^2 = 1 - sum_i sqrt(f1_hat_i f2_hat_i),
    overlap = sum_i sqrt(f1_hat_i f2_hat_i).

Scale conventions do not matter here: the normalisation to unit trace removes any factor
(mean or sum over data points, lambda, the number of data points).

Inputs may be

* 1-D tensors (diagonals, entries >= 0),
* 2-D tensors (symmetric positive semi-definite matrices),
* dicts ``name -> tensor`` as returned by :func:`~ewc_lib.curvature.fisher_diagonal`; every value is
  flattened and the values are concatenated in the key order of the first dict into one
  diagonal. Both dicts must have the same keys and shapes.

Everything is computed in float64; results are Python floats.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

__all__ = ["frechet_distance_sq", "fisher_overlap", "layerwise_overlap", "LayerwiseOverlap"]

#: Relative tolerance for "symmetric" and "positive semi-definite" checks of dense inputs
#: (float64 round-off of matrices built as sums of outer products is far below this).
_PSD_RTOL = 1e-8


def _as_float64(x, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, numpy array or dict of tensors, got {type(x).__name__}")
    if x.is_complex():
        raise TypeError(f"{name}: expected a real tensor, got dtype {x.dtype}")
    return x.detach().to(dtype=torch.float64, device="cpu")


def _flatten_pair(f1, f2) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn two inputs into float64 tensors of matching shape (dicts -> 1-D diagonals)."""
    is_map1, is_map2 = isinstance(f1, Mapping), isinstance(f2, Mapping)
    if is_map1 != is_map2:
        raise TypeError(f"f1, f2: expected both dicts or both tensors, got {type(f1).__name__} and {type(f2).__name__}")
    if is_map1:
        if len(f1) == 0:
            raise ValueError("f1: expected a non-empty dict of tensors")
        if set(f1) != set(f2):
            raise ValueError(
                f"f1, f2: keys differ: only in f1 {sorted(set(f1) - set(f2))}, only in f2 {sorted(set(f2) - set(f1))}"
            )
        parts1, parts2 = [], []
        for key in f1:
            a, b = _as_float64(f1[key], f"f1[{key!r}]"), _as_float64(f2[key], f"f2[{key!r}]")
            if a.shape != b.shape:
                raise ValueError(f"f1[{key!r}], f2[{key!r}]: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
            parts1.append(a.reshape(-1))
            parts2.append(b.reshape(-1))
        return torch.cat(parts1), torch.cat(parts2)
    a, b = _as_float64(f1, "f1"), _as_float64(f2, "f2")
    if a.ndim not in (1, 2) or b.ndim not in (1, 2):
        raise ValueError(
            f"f1, f2: expected 1-D diagonals or 2-D matrices, got shapes {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.ndim != b.ndim:  # one diagonal and one matrix: compare as matrices
        a = torch.diag(a) if a.ndim == 1 else a
        b = torch.diag(b) if b.ndim == 1 else b
    if a.shape != b.shape:
        raise ValueError(f"f1, f2: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    return a, b


def _normalise(f: torch.Tensor, name: str) -> torch.Tensor:
    """Check one input (finite, >= 0 / symmetric PSD, non-zero trace); return f / tr f."""
    if f.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty tensor")
    if not torch.isfinite(f).all():
        raise ValueError(f"{name}: contains NaN or inf")
    if f.ndim == 1:
        if (f < 0).any():
            raise ValueError(f"{name}: a Fisher diagonal must be >= 0, found min {f.min().item():.3g}")
        trace = f.sum()
    else:
        if f.shape[0] != f.shape[1]:
            raise ValueError(f"{name}: expected a square matrix, got shape {tuple(f.shape)}")
        scale = f.abs().max()
        if (f - f.T).abs().max() > _PSD_RTOL * scale:
            raise ValueError(f"{name}: expected a symmetric matrix")
        f = 0.5 * (f + f.T)
        if scale > 0 and torch.linalg.eigvalsh(f).min() < -_PSD_RTOL * scale * f.shape[0]:
            raise ValueError(f"{name}: expected a positive semi-definite matrix")
        trace = torch.diagonal(f).sum()
    if not trace > 0:
        raise ValueError(f"{name}: the trace is zero; a Fisher of all zeros cannot be normalised")
    return f / trace


def _psd_sqrt(f: torch.Tensor) -> torch.Tensor:
    evals, evecs = torch.linalg.eigh(f)
    return (evecs * evals.clamp_min(0).sqrt()) @ evecs.T


def frechet_distance_sq(f1, f2) -> float:
    r"""Squared Frechet distance between two Fishers after normalising both to unit trace.

    Book: the paper's ``d^2``, :ref:`sec-paper-notes-frechet`.

    ``d^2 = 1/2 tr(F1_hat + F2_hat - 2 (F1_hat F2_hat)^{1/2}) = 1 - tr((F1_hat F2_hat)^{1/2})``
    with ``F_hat = F / tr F``; in [0, 1]. The paper's second form
    ``1/2 ||F1_hat^{1/2} - F2_hat^{1/2}||_F`` is missing a square (see the module docstring).

    * Dense (2-D) inputs: ``tr((F1 F2)^{1/2})`` is computed as the trace of the symmetric
      square root of ``F1^{1/2} F2 F1^{1/2}`` (same non-zero eigenvalues as ``F1 F2``).
    * Diagonal (1-D) inputs and dicts of tensors:
      ``d^2 = 1/2 sum_i (sqrt(f1_hat_i) - sqrt(f2_hat_i))^2 = 1 - sum_i sqrt(f1_hat_i f2_hat_i)``.

    Raises ``ValueError`` for NaN/inf, negative diagonal entries, non-symmetric or indefinite
    matrices, a zero trace, or mismatched shapes/keys; ``TypeError`` for other input types.

    >>> import torch
    >>> frechet_distance_sq(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 3.0]))
    1.0
    >>> round(frechet_distance_sq(torch.tensor([1.0, 1.0]), torch.tensor([2.0, 2.0])), 12)
    0.0
    """
    a, b = _flatten_pair(f1, f2)
    a, b = _normalise(a, "f1"), _normalise(b, "f2")
    if a.ndim == 1:
        d2 = 0.5 * ((a.sqrt() - b.sqrt()) ** 2).sum()
    else:
        s = _psd_sqrt(a)
        m = s @ b @ s
        m = 0.5 * (m + m.T)
        d2 = 1.0 - torch.linalg.eigvalsh(m).clamp_min(0).sqrt().sum()
    return float(min(max(d2.item(), 0.0), 1.0))


def fisher_overlap(f1, f2) -> float:
    r"""Fisher overlap ``1 - d^2`` of Kirkpatrick et al. (2017) between two Fishers.

    Book: the paper's Figure 2C, :ref:`sec-fisher-overlap` and :ref:`sec-paper-notes-frechet`.

    ``overlap = tr((F1_hat F2_hat)^{1/2})`` with ``F_hat = F / tr F``; for diagonals (1-D
    tensors, or dicts of tensors as returned by :func:`~ewc_lib.curvature.fisher_diagonal`, flattened
    in key order) ``overlap = sum_i sqrt(f1_hat_i f2_hat_i)``, the Bhattacharyya coefficient
    of the normalised diagonals. 1 iff ``F1`` is proportional to ``F2``; 0 iff they live on
    disjoint parameters (orthogonal ranges). See :func:`frechet_distance_sq`.

    >>> import torch
    >>> fisher_overlap(torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 2.0, 2.0]))
    0.0
    >>> round(fisher_overlap(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0])), 4)  # sqrt(1/2)
    0.7071
    >>> round(fisher_overlap({"w": torch.ones(2, 2)}, {"w": 5 * torch.ones(2, 2)}), 12)
    1.0
    """
    return 1.0 - frechet_distance_sq(f1, f2)


class LayerwiseOverlap(list):
    """The list ``[(layer_name, overlap), ...]`` returned by :func:`layerwise_overlap`.

    A plain list of pairs (so ``for name, value in result`` works), with two attributes that
    say exactly what was compared:

    * ``compared``: dict ``layer_name -> tuple of parameter names`` whose Fisher entries
      entered that layer's overlap (e.g. only ``("0.bias",)`` when ``0.weight`` is frozen);
    * ``skipped``: tuple of the names of the ``nn.Linear`` layers left out because neither
      Fisher has an entry for any of their parameters (frozen layers).
    """

    def __init__(self, pairs, compared, skipped):
        super().__init__(pairs)
        self.compared = dict(compared)
        self.skipped = tuple(skipped)

    def __repr__(self):
        return f"LayerwiseOverlap({list(self)!r}, skipped={self.skipped!r})"


def layerwise_overlap(fisher1: Mapping, fisher2: Mapping, model: nn.Module) -> LayerwiseOverlap:
    r"""Fisher overlap per ``nn.Linear`` layer of ``model``, input layer first.

    Book: the paper's Figure 2C, :ref:`sec-fisher-overlap`.

    For each linear layer the diagonal Fisher entries of its weight and bias (keys
    ``"<layer>.weight"``, ``"<layer>.bias"`` as in ``model.named_parameters()``) are
    concatenated, normalised to unit sum within the layer, and compared with
    :func:`fisher_overlap`: ``overlap_layer = sum_{i in layer} sqrt(f1_hat_i f2_hat_i)``.
    This is the per-depth quantity plotted in the paper's Figure 2C.

    Frozen parameters: :func:`~ewc_lib.curvature.fisher_diagonal` leaves out parameters with
    ``requires_grad=False``, so a parameter that has an entry in **neither** dict is skipped;
    the layer is compared on the parameters both dicts have, and a layer none of whose
    parameters has an entry is left out. A parameter present in only **one** of the dicts is
    an error (the two Fishers then belong to different sets of trainable parameters).

    Returns a :class:`LayerwiseOverlap`: the list of ``(layer_name, overlap)`` of the compared
    layers in the order of ``model.named_modules()``, with ``.compared`` (layer -> the
    parameter names used) and ``.skipped`` (layers with no entries). Raises ``ValueError`` if
    a parameter is in one dict only, if shapes differ, if a layer's Fisher is identically
    zero or if no layer can be compared; ``TypeError`` if ``model`` is not an ``nn.Module``.

    >>> import torch
    >>> from ewc_lib.models import mlp
    >>> net = mlp([3, 2, 2], seed=0)
    >>> f = {n: torch.ones_like(p) for n, p in net.named_parameters()}
    >>> [(name, round(o, 6)) for name, o in layerwise_overlap(f, f, net)]
    [('0', 1.0), ('2', 1.0)]
    >>> _ = net[0].requires_grad_(False)  # a frozen first layer: its entries are in neither Fisher
    >>> f = {n: torch.ones_like(p) for n, p in net.named_parameters() if p.requires_grad}
    >>> result = layerwise_overlap(f, f, net)
    >>> [name for name, _ in result], result.compared, result.skipped
    (['2'], {'2': ('2.weight', '2.bias')}, ('0',))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    for arg, fisher in (("fisher1", fisher1), ("fisher2", fisher2)):
        if not isinstance(fisher, Mapping):
            raise TypeError(f"{arg}: expected a dict name -> tensor, got {type(fisher).__name__}")
    params = dict(model.named_parameters())
    pairs, compared, skipped = [], {}, []
    for layer_name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        prefix = f"{layer_name}." if layer_name else ""
        keys = [
            prefix + p
            for p, v in (("weight", module.weight), ("bias", module.bias))
            if v is not None and prefix + p in params
        ]
        sub1, sub2 = {}, {}
        for key in keys:
            in1, in2 = key in fisher1, key in fisher2
            if not in1 and not in2:  # frozen: fisher_diagonal leaves it out of both
                continue
            if in1 != in2:
                arg = "fisher1" if not in1 else "fisher2"
                other = "fisher2" if not in1 else "fisher1"
                raise ValueError(f"{arg}: no entry {key!r} for linear layer {layer_name!r} ({other} has one)")
            for arg, fisher, sub in (("fisher1", fisher1, sub1), ("fisher2", fisher2, sub2)):
                if not hasattr(fisher[key], "shape"):
                    raise TypeError(f"{arg}[{key!r}]: expected a tensor, got {type(fisher[key]).__name__}")
                if tuple(fisher[key].shape) != tuple(params[key].shape):
                    raise ValueError(
                        f"{arg}[{key!r}]: expected shape {tuple(params[key].shape)}, got {tuple(fisher[key].shape)}"
                    )
                sub[key] = fisher[key]
        if not sub1:
            skipped.append(layer_name)
            continue
        try:
            pairs.append((layer_name, fisher_overlap(sub1, sub2)))
        except ValueError as err:
            raise ValueError(f"layer {layer_name!r}: {err}") from err
        compared[layer_name] = tuple(sub1)
    if not pairs:
        if skipped:
            raise ValueError(
                f"fisher1, fisher2: no entries for any nn.Linear layer of the model (layers "
                f"{skipped} have none in either dict)"
            )
        raise ValueError("model: contains no nn.Linear layer")
    return LayerwiseOverlap(pairs, compared, skipped)
