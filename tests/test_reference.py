"""Tests of the brute-force references themselves, against closed forms on linear models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ewc_lib import reference
from ewc_lib.curvature import unflatten_params

from cases import make

#: float64 closed forms vs autograd loops: round-off only (observed ~1e-16 relative).
EXACT_RTOL = 1e-12


def close(a, b, what):
    rel = ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()
    assert rel <= EXACT_RTOL, f"{what}: relative difference {rel:.2e} > {EXACT_RTOL:.0e}"


def linear_model(d_in, d_out, bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(d_in, d_out, bias=bias, dtype=torch.float64)


def features(x, bias):
    """Per-example gradient of a Linear output: weight part kron(e_k, x), bias part e_k."""
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1) if bias else x


def closed_form_linear(lam, x, bias):
    """(1/N) sum_n Lambda_n kron x~_n x~_n^T, reordered to [weight (row-major), bias]."""
    n, d = x.shape
    c = lam.shape[1]
    xt = features(x, bias)
    full = torch.einsum("nab,ni,nj->aibj", lam, xt, xt) / n  # (C, d+1, C, d+1)
    idx = [(a, i) for a in range(c) for i in range(d)] + ([(a, d) for a in range(c)] if bias else [])
    flat = full.reshape(c * xt.shape[1], c * xt.shape[1])
    order = [a * xt.shape[1] + i for a, i in idx]
    return flat[order][:, order]


@pytest.mark.parametrize("bias", [True, False])
def test_categorical_fisher_loop_on_logistic_regression(bias):
    model = linear_model(3, 4, bias)
    x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        p = torch.softmax(model(x), -1)
    lam = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    expected = closed_form_linear(lam, x, bias)
    close(reference.fisher_matrix_loop(model, x), expected, "Fisher loop vs closed form")
    close(reference.ggn_loop(model, x), expected, "GGN loop vs closed form")
    close(reference.expected_hessian_loop(model, x), expected, "E[H] loop vs closed form")
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    # linear logits: the Hessian of the NLL does not depend on y and equals the GGN
    close(reference.hessian_loop(model, x, y), expected, "Hessian loop vs closed form")
    assert reference.residual_term_loop(model, x, y).abs().max() == 0


def test_gaussian_loops_on_linear_regression():
    model = linear_model(2, 3, seed=3)
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    sigma2 = 0.7
    lam = torch.eye(3, dtype=torch.float64).expand(5, 3, 3) / sigma2
    expected = closed_form_linear(lam, x, True)
    kw = dict(likelihood="gaussian", sigma2=sigma2)
    close(reference.fisher_matrix_loop(model, x, **kw), expected, "Gaussian Fisher loop")
    close(reference.ggn_loop(model, x, **kw), expected, "Gaussian GGN loop")
    close(reference.expected_hessian_loop(model, x, **kw), expected, "Gaussian E[H] loop")


def test_bernoulli_empirical_loop_by_hand():
    model = linear_model(2, 1, seed=5)
    x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    y = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    with torch.no_grad():
        r = y - torch.sigmoid(model(x)[:, 0])
    g = r[:, None] * features(x, True)  # score of a logistic regression
    close(reference.per_example_scores(model, x, y, likelihood="bernoulli"), g, "Bernoulli scores")
    close(reference.fisher_matrix_loop(model, x, likelihood="bernoulli", estimator="empirical", targets=y),
          g.T @ g / 4, "Bernoulli EF loop")
    d = reference.fisher_diagonal_loop(model, x, likelihood="bernoulli", estimator="empirical", targets=y)
    close(torch.cat([d["weight"].reshape(-1), d["bias"]]), (g ** 2).mean(0), "Bernoulli EF diagonal loop")


def test_hessian_loop_against_torch_autograd_functional_hessian():
    from cases import CASES

    model, x, y = make(CASES[0])

    def mean_nll(theta):
        params = unflatten_params(theta, model)
        f = torch.func.functional_call(model, params, (x,))
        return -torch.log_softmax(f, -1).gather(1, y[:, None]).mean()

    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    close(reference.hessian_loop(model, x, y), torch.autograd.functional.hessian(mean_nll, theta),
          "hessian_loop vs torch.autograd.functional.hessian")


def test_mc_loop_needs_sampled_targets():
    model = linear_model(2, 3)
    with pytest.raises(ValueError, match="sampled_targets"):
        reference.fisher_matrix_loop(model, torch.zeros(2, 2, dtype=torch.float64), estimator="mc")
