"""Extreme class probabilities (issue 11, item 2): tiny, subnormal and zero softmax outputs.

The closed-form Cholesky factor of ``diag(p) - p p^T`` used to divide by products of tail
sums of probabilities, which underflow: float32 logits ``(0, -13.8, -89.8)`` gave NaN and inf
on the fast path, float64 failed at gaps of ~700-1000. The class of inputs here: logit rows
with tiny / subnormal / exactly-zero probabilities, in every order of the classes, in float32
and float64; and models whose logits are that extreme, through every estimator, compared
with the generic path and the float64 brute-force loop.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from cases import EXACT_RTOL, Wrapped, assert_close, gen
from torch import nn

import ewc_lib
from ewc_lib import reference
from ewc_lib.curvature import flatten_params, likelihoods
from ewc_lib.testing import FLOAT32_RTOL

#: Entrywise relative error of L L^T against diag(p) - p p^T (same p) for entries that are
#: normal numbers: a handful of roundings per entry. Observed 1.6e-7 (float32), 4.6e-16 (float64).
ENTRY_RTOL = {torch.float32: 2e-6, torch.float64: 1e-13}
#: Entries at least this large are compared entrywise (smaller ones are subnormal or close to it
#: and have fewer significant bits; they are covered by the comparison relative to the largest).
NORMAL_FLOOR = {torch.float32: 1e-30, torch.float64: 1e-290}
#: float32 fast vs float32 generic path (same inputs, different summation order): observed <= 3e-7.
FLOAT32_PATHS_RTOL = 1e-5

ROWS = {
    torch.float32: [
        (0, -13.8, -89.8),
        (0, -20, -100, -104),
        (0, -87, -103, -150),
        (0, -1e4, 3),
        (5, 5, -80, 0),
        (0, 0, 0),
        (200, 170, -300),
    ],
    torch.float64: [
        (0, -13.8, -89.8),
        (0, -700, -745, -1000),
        (0, -1e4, 3),
        (5, 5, -800, 0),
        (0, 0, 0),
        (1e4, 1e4 - 30, 1e4 - 800),
        (0, -36, -37, -38),
    ],
}


def exact_lambda(f):
    """diag(p) - p p^T in float64 from the softmax of ``f``; 1 - p_c summed from the other classes."""
    p = torch.softmax(f.double(), -1)
    lam = -p[:, :, None] * p[:, None, :]
    others = torch.stack([torch.cat([p[:, :c], p[:, c + 1 :]], 1).sum(1) for c in range(p.shape[1])], 1)
    lam.diagonal(dim1=1, dim2=2).copy_(p * others)
    return lam


def all_orders(dtype):
    """Every row of ROWS in every order of its classes, as one (n, C) batch per class count."""
    by_c = {}
    for row in ROWS[dtype]:
        for perm in itertools.permutations(row):
            by_c.setdefault(len(row), []).append(perm)
    return [torch.tensor(rows, dtype=dtype) for rows in by_c.values()]


@pytest.mark.parametrize("factor", ["cholesky", "symmetric"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_factors_of_the_softmax_hessian_for_extreme_logits(dtype, factor):
    for f in all_orders(dtype):
        v = (
            likelihoods._cholesky_output_hessian(f)
            if factor == "cholesky"
            else likelihoods._sqrt_output_hessian(f, "categorical", 1.0)
        )
        assert v.dtype == dtype and torch.isfinite(v).all(), f"{factor}: non-finite factor for {f}"
        got = v.double().transpose(1, 2) @ v.double()
        lam = exact_lambda(f)
        for i in range(f.shape[0]):
            scale = lam[i].abs().max()
            if scale == 0:  # one class has probability 1, all others exactly 0
                assert got[i].abs().max() == 0, f"{factor}: {f[i].tolist()}"
                continue
            assert_close(got[i], lam[i], rtol=ENTRY_RTOL[dtype], what=f"{factor} {f[i].tolist()}")
            big = lam[i].abs() >= NORMAL_FLOOR[dtype]
            if big.any():
                rel = ((got[i] - lam[i]).abs()[big] / lam[i].abs()[big]).max().item()
                assert rel <= ENTRY_RTOL[dtype], f"{factor} {f[i].tolist()}: entrywise relative error {rel:.2e}"


def test_the_issue_example_and_zero_probabilities():
    f = torch.tensor([[0.0, -13.8, -89.8]])  # float32; p_3 = 1e-39 is subnormal
    v = likelihoods._cholesky_output_hessian(f)
    assert torch.isfinite(v).all()
    p = torch.softmax(f, -1)
    assert 0 < p[0, 2] < torch.finfo(torch.float32).tiny  # really subnormal
    f = torch.tensor([[0.0, -1e4, -2e4, 5.0]], dtype=torch.float64)  # exact zeros
    assert (torch.softmax(f, -1) == 0).sum() == 2
    v = likelihoods._cholesky_output_hessian(f)
    assert torch.isfinite(v).all()
    assert_close(v.transpose(1, 2) @ v, exact_lambda(f), what="zero probabilities")


def identity_model(c, dtype):
    """Two identity Linear layers: the logits are the inputs (so they can be chosen exactly)."""
    model = nn.Sequential(nn.Linear(c, c), nn.Identity(), nn.Linear(c, c)).to(dtype)
    with torch.no_grad():
        for m in (model[0], model[2]):
            m.weight.copy_(torch.eye(c))
            m.bias.zero_()
    return model


def scaled_model(scale, dtype, seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4)).to(dtype)
    with torch.no_grad():
        model[2].weight.mul_(scale)
        model[2].bias.mul_(scale)
    return model


def extreme_problems(dtype):
    out = []
    for f in all_orders(dtype):
        if f.shape[1] <= 4:
            out.append((f"logits C={f.shape[1]}", identity_model(f.shape[1], dtype), f))
    scales = (10, 60, 300) if dtype == torch.float32 else (100, 1000, 5000)
    for seed, scale in enumerate(scales):
        out.append(
            (
                f"tanh net x{scale}",
                scaled_model(scale, dtype, seed),
                torch.randn(9, 3, generator=gen(seed), dtype=dtype),
            )
        )
    return out


@pytest.mark.parametrize("estimator", ["exact", "mc", "empirical", "batched_empirical"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_fisher_with_extreme_logits_agrees_with_generic_path_and_loop(dtype, estimator):
    for name, model, x in extreme_problems(dtype):
        with torch.no_grad():
            f = model(x)
        # observed labels: the most probable class (p_y ~ 1, the hardest case) and another one
        y = f.argmax(-1)
        y[::2] = (y[::2] + 1) % f.shape[1]
        kw = dict(
            estimator=estimator, targets=y, num_samples=3, batch_size=2 if estimator == "batched_empirical" else None
        )
        fast = ewc_lib.fisher_diagonal(model, x, generator=gen(1), **kw)
        generic = ewc_lib.fisher_diagonal(Wrapped(model), x, generator=gen(1), **kw)
        assert ewc_lib.fisher_path(model)[0] == "fast"
        assert all(torch.isfinite(t).all() for t in fast.values()), f"{name}: non-finite Fisher"
        sampled = ewc_lib.sample_targets(model, x, num_samples=3, generator=gen(1))
        ref = reference.fisher_diagonal_loop(
            copy.deepcopy(model).double(),
            x.double(),
            estimator=estimator,
            targets=y,
            sampled_targets=sampled,
            batch_size=2,
        )
        what = f"{name} {dtype}/{estimator}"
        if dtype == torch.float64:
            assert_close(flatten_params(fast), flatten_params(ref), what=f"{what}: fast vs loop")
            assert_close(flatten_params(generic), flatten_params(ref), what=f"{what}: generic vs loop")
        else:
            assert_close(
                flatten_params(fast), flatten_params(generic), rtol=FLOAT32_PATHS_RTOL, what=f"{what}: fast vs generic"
            )
            assert_close(
                flatten_params(fast).double(),
                flatten_params(ref),
                rtol=FLOAT32_RTOL,
                what=f"{what}: fast vs float64 loop",
            )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_dense_matrices_with_extreme_logits(dtype):
    for name, model, x in extreme_problems(dtype)[-3:] + extreme_problems(dtype)[:1]:
        m64, x64 = copy.deepcopy(model).double(), x.double()
        rtol = EXACT_RTOL if dtype == torch.float64 else FLOAT32_RTOL
        loop = reference.ggn_loop(m64, x64)
        for fn in (ewc_lib.fisher_matrix, ewc_lib.ggn, ewc_lib.expected_hessian):
            got = fn(model, x)
            assert torch.isfinite(got).all(), f"{name}: {fn.__name__} not finite"
            assert_close(got.double(), loop, rtol=rtol, what=f"{name} {dtype}: {fn.__name__} vs ggn loop")
        with torch.no_grad():
            f = model(x)
        y = f.argmax(-1)
        y[::2] = (y[::2] + 1) % f.shape[1]  # likely and unlikely labels
        got = ewc_lib.hessian(model, x, y)
        assert_close(got.double(), reference.hessian_loop(m64, x64, y), rtol=rtol, what=f"{name} {dtype}: hessian")


def test_bernoulli_saturated_scores_are_accurate():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).double()
    with torch.no_grad():
        model[2].weight.mul_(300.0)  # logits of a few hundred: sigmoid rounds to 0 or 1
    x = torch.randn(8, 2, generator=gen(3), dtype=torch.float64)
    with torch.no_grad():
        y = (model(x)[:, 0] > 0).double()  # the likely label: score 1 - s, all digits lost by subtraction
    for estimator in ("exact", "empirical", "batched_empirical"):
        kw = dict(likelihood="bernoulli", estimator=estimator, targets=y, batch_size=3)
        got = ewc_lib.fisher_diagonal(model, x, **kw)
        generic = ewc_lib.fisher_diagonal(Wrapped(model), x, **kw)
        ref = reference.fisher_diagonal_loop(model, x, **kw)
        assert_close(flatten_params(got), flatten_params(ref), what=f"bernoulli {estimator}")
        assert_close(flatten_params(generic), flatten_params(ref), what=f"bernoulli generic {estimator}")
