"""Small fully connected networks used throughout the book."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["mlp"]

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


def mlp(
    sizes: Sequence[int],
    *,
    activation: str = "relu",
    bias: bool = True,
    dropout_input: float = 0.0,
    dropout_hidden: float = 0.0,
    seed: int | None = None,
    dtype=None,
) -> nn.Sequential:
    """A multilayer perceptron ``sizes[0] -> sizes[1] -> ... -> sizes[-1]``.

    Book: the networks of :ref:`sec-mnist-data` and the experiments that follow it.

    Layers are ``[Dropout(dropout_input)] Linear (act [Dropout(dropout_hidden)] Linear)*``;
    the output layer has no activation (it returns logits or means). Dropout layers are
    only inserted when their rate is positive. ``seed`` makes the initialisation
    reproducible (PyTorch's default init, drawn under ``torch.random.fork_rng``).

    The paper's permuted-MNIST net (Figure 2A) is ``mlp([784, 400, 400, 10])``; its
    Figure 2B net adds ``dropout_input=0.2, dropout_hidden=0.5``.

    >>> net = mlp([784, 400, 400, 10], seed=0)
    >>> sum(p.numel() for p in net.parameters())
    478410
    """
    sizes = list(sizes)
    if len(sizes) < 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
        raise ValueError(f"sizes: expected at least two positive ints, got {sizes!r}")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation: expected one of {sorted(_ACTIVATIONS)}, got {activation!r}")
    for name, rate in (("dropout_input", dropout_input), ("dropout_hidden", dropout_hidden)):
        if not 0.0 <= float(rate) < 1.0:
            raise ValueError(f"{name}: expected a rate in [0, 1), got {rate!r}")
    layers: list[nn.Module] = []
    if dropout_input > 0:
        layers.append(nn.Dropout(dropout_input))
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(n_in, n_out, bias=bias, dtype=dtype))
            if i < len(sizes) - 2:
                layers.append(_ACTIVATIONS[activation]())
                if dropout_hidden > 0:
                    layers.append(nn.Dropout(dropout_hidden))
    return nn.Sequential(*layers)
