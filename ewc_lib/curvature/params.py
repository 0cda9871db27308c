"""Dicts of per-parameter tensors <-> one flat vector, in ``model.named_parameters()`` order.

Every dense matrix of :mod:`ewc_lib.curvature` flattens the *trainable* parameters
(``requires_grad=True``) in this order; parameters with ``requires_grad=False`` are left out.
"""

from __future__ import annotations

import torch
from torch import nn

from .._checks import trainable_parameters

__all__ = ["flatten_params", "unflatten_params"]


def flatten_params(tensors: dict) -> torch.Tensor:
    """Concatenate a dict of tensors (in its insertion order) into one vector.

    Applied to the dict returned by :func:`fisher_diagonal` this gives the diagonal of
    :func:`fisher_matrix` (both use the order of ``model.named_parameters()``).

    >>> flatten_params({"w": torch.ones(2, 2), "b": torch.zeros(2)}).tolist()
    [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    """
    if not isinstance(tensors, dict) or not tensors:
        raise TypeError(f"tensors: expected a non-empty dict of tensors, got {type(tensors).__name__}")
    return torch.cat([t.reshape(-1) for t in tensors.values()])


def unflatten_params(vector: torch.Tensor, model: nn.Module) -> dict:
    """Split a vector of length ``P`` into tensors shaped like the trainable parameters.

    The inverse of :func:`flatten_params` for the dict of ``model``'s trainable parameters.

    >>> net = nn.Linear(2, 1)
    >>> {k: tuple(v.shape) for k, v in unflatten_params(torch.arange(3.), net).items()}
    {'weight': (1, 2), 'bias': (1,)}
    """
    named = trainable_parameters(model)
    total = sum(p.numel() for _, p in named)
    if not isinstance(vector, torch.Tensor) or vector.ndim != 1 or vector.numel() != total:
        shape = tuple(vector.shape) if isinstance(vector, torch.Tensor) else type(vector).__name__
        raise ValueError(f"vector: expected a 1-D tensor of length {total}, got {shape}")
    out, i = {}, 0
    for name, p in named:
        out[name] = vector[i : i + p.numel()].reshape(p.shape)
        i += p.numel()
    return out
