"""Test cases for the curvature tests, as data.

Each :class:`Case` names a small float64 model, a likelihood and a data set size; ``make``
builds ``(model, inputs, targets)`` reproducibly from the case's seed. The sizes are odd
(7, 5, ...) so that chunked and minibatched code meets unequal batches.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ewc_lib.models import mlp
from ewc_lib.testing import EXACT_RTOL, assert_close  # noqa: F401  (the tests import them from here)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    sizes: tuple
    activation: str = "tanh"
    bias: bool = True
    likelihood: str = "categorical"
    n: int = 7
    sigma2: float = 1.0
    seed: int = 0

    def __str__(self):
        return self.name


CASES = [
    Case("tanh-C3", (3, 4, 3), "tanh"),
    Case("relu-C2-nobias", (3, 5, 2), "relu", bias=False, seed=1),
    Case("sigmoid-C5", (2, 3, 3, 5), "sigmoid", seed=2),
    Case("relu-C4-deep", (4, 3, 3, 4), "relu", seed=11, n=5),  # seed 3 left layer 2 dead
    Case("tanh-C2-nobias", (2, 4, 2), "tanh", bias=False, seed=4),
    Case("gauss-D1", (2, 4, 1), "tanh", likelihood="gaussian", sigma2=0.5, seed=5),
    Case("gauss-D2-relu", (3, 4, 2), "relu", likelihood="gaussian", seed=6),
    Case("gauss-D3-sigmoid-nobias", (2, 3, 3), "sigmoid", bias=False, likelihood="gaussian", sigma2=2.0, seed=7),
    Case("bernoulli-tanh", (3, 4, 1), "tanh", likelihood="bernoulli", seed=8),
    Case("bernoulli-relu-nobias", (2, 5, 1), "relu", bias=False, likelihood="bernoulli", seed=9),
]

CATEGORICAL = [c for c in CASES if c.likelihood == "categorical"]
GAUSSIAN = [c for c in CASES if c.likelihood == "gaussian"]


def make_inputs(case, n=None, seed=None):
    g = torch.Generator().manual_seed(1000 + (case.seed if seed is None else seed))
    return torch.randn(n or case.n, case.sizes[0], generator=g, dtype=torch.float64)


def make_targets(case, model, x, seed=None):
    g = torch.Generator().manual_seed(2000 + (case.seed if seed is None else seed))
    n, out = x.shape[0], case.sizes[-1]
    if case.likelihood == "categorical":
        return torch.randint(0, out, (n,), generator=g)
    if case.likelihood == "bernoulli":
        return torch.randint(0, 2, (n,), generator=g).double()
    with torch.no_grad():
        return model(x) + torch.randn(n, out, generator=g, dtype=torch.float64)


def make_model(case):
    return mlp(list(case.sizes), activation=case.activation, bias=case.bias, seed=case.seed, dtype=torch.float64)


def make(case):
    model = make_model(case)
    x = make_inputs(case)
    return model, x, make_targets(case, model, x)


class Wrapped(nn.Module):
    """Hides a model behind a custom ``forward`` so that the generic torch.func path is taken."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


def layer_zoo():
    """Sequential models covering every layer type of the fast path (name, model, input shape)."""
    torch.manual_seed(0)
    d = torch.float64
    return [
        ("leaky", nn.Sequential(nn.Linear(3, 4, dtype=d), nn.LeakyReLU(0.1), nn.Linear(4, 3, dtype=d)), (3,)),
        (
            "flatten-first",
            nn.Sequential(nn.Flatten(), nn.Linear(6, 4, dtype=d), nn.Sigmoid(), nn.Linear(4, 3, dtype=d)),
            (2, 3),
        ),
        (
            "identity-dropout",
            nn.Sequential(
                nn.Dropout(0.5),
                nn.Linear(3, 4, dtype=d),
                nn.Identity(),
                nn.ReLU(),
                nn.Dropout(0.3),
                nn.Linear(4, 3, dtype=d),
            ),
            (3,),
        ),
        (
            "nested",
            nn.Sequential(
                nn.Sequential(nn.Linear(3, 4, dtype=d), nn.Tanh()),
                nn.Sequential(nn.Linear(4, 4, dtype=d), nn.Flatten(), nn.ReLU()),
                nn.Linear(4, 3, dtype=d),
            ),
            (3,),
        ),
        ("linear-only", nn.Sequential(nn.Linear(3, 3, dtype=d)), (3,)),
        (
            "tanh-sigmoid-mix",
            nn.Sequential(
                nn.Linear(3, 4, dtype=d),
                nn.Tanh(),
                nn.Linear(4, 4, bias=False, dtype=d),
                nn.Sigmoid(),
                nn.Linear(4, 3, dtype=d),
            ),
            (3,),
        ),
    ]
