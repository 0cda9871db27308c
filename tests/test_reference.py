"""Tests of the brute-force references themselves, against closed forms on linear models."""

from __future__ import annotations

import pytest
import torch
from cases import CASES, make
from torch import nn

import ewc_lib
from ewc_lib import reference
from ewc_lib.curvature import unflatten_params
from ewc_lib.testing import ROUNDING_RTOL, assert_close, rel_error


def close(a, b, what):
    rel = ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()
    assert rel <= ROUNDING_RTOL, f"{what}: relative difference {rel:.2e} > {ROUNDING_RTOL:.0e}"


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
    close(
        reference.fisher_matrix_loop(model, x, likelihood="bernoulli", estimator="empirical", targets=y),
        g.T @ g / 4,
        "Bernoulli EF loop",
    )
    d = reference.fisher_diagonal_loop(model, x, likelihood="bernoulli", estimator="empirical", targets=y)
    close(torch.cat([d["weight"].reshape(-1), d["bias"]]), (g**2).mean(0), "Bernoulli EF diagonal loop")


def test_hessian_loop_against_torch_autograd_functional_hessian():
    from cases import CASES

    model, x, y = make(CASES[0])

    def mean_nll(theta):
        params = unflatten_params(theta, model)
        f = torch.func.functional_call(model, params, (x,))
        return -torch.log_softmax(f, -1).gather(1, y[:, None]).mean()

    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    close(
        reference.hessian_loop(model, x, y),
        torch.autograd.functional.hessian(mean_nll, theta),
        "hessian_loop vs torch.autograd.functional.hessian",
    )


def test_mc_loop_needs_sampled_targets():
    model = linear_model(2, 3)
    with pytest.raises(ValueError, match="sampled_targets"):
        reference.fisher_matrix_loop(model, torch.zeros(2, 2, dtype=torch.float64), estimator="mc")


def _reference_sources():
    """(file name, AST) of every module of the ewc_lib.reference package."""
    import ast
    from pathlib import Path

    files = sorted(Path(reference.__file__).parent.glob("*.py"))
    assert len(files) >= 2, files
    return [(f.name, ast.parse(f.read_text())) for f in files]


def test_reference_is_independent_of_the_curvature_module():
    import ast

    for name, tree in _reference_sources():
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
        assert not any("curvature" in (m or "") for m in imported), (name, imported)


def test_reference_imports_nothing_private_from_the_library():
    """The oracle does its own checks and writes its own likelihoods: from the rest of ``ewc_lib``
    (the code it judges) it may import only public names of public modules, and nothing from
    curvature. Imports between the modules of the reference package itself (``from ._problem
    import ...``, level 1) are its own code."""
    import ast

    offending = []
    for name, tree in _reference_sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level == 1:
                    continue  # within ewc_lib.reference
                internal = node.level > 1 or module.split(".")[0] == "ewc_lib"
                if internal and (
                    any(part.startswith("_") for part in module.split(".") if part)
                    or "curvature" in module
                    or any(a.name.startswith("_") or a.name == "curvature" for a in node.names)
                ):
                    offending.append(f"{name}: {ast.unparse(node)}")
            elif isinstance(node, ast.Import):
                for a in node.names:
                    parts = a.name.split(".")
                    if parts[0] == "ewc_lib" and (any(p.startswith("_") for p in parts) or "curvature" in parts):
                        offending.append(f"{name}: {ast.unparse(node)}")
    assert not offending, f"ewc_lib.reference imports private or judged code: {offending}"


@pytest.mark.parametrize("gap", [20.0, 40.0, 300.0, 800.0])
def test_scores_are_accurate_when_a_probability_rounds_to_one(gap):
    # logits (gap, 0, -1): p_0 = 1 - (e^-gap + e^-(gap+1)) / (1 + ...); the score of the likely
    # class is -(1 - p_0), which "p_0 - 1" computes as 0 once p_0 rounds to 1 (gap > ~37)
    model = nn.Linear(3, 3, bias=False, dtype=torch.float64)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3, dtype=torch.float64))
    x = torch.tensor([[gap, 0.0, -1.0]], dtype=torch.float64)
    g = reference.per_example_scores(model, x, torch.tensor([0]))[0].reshape(3, 3)
    tail = torch.tensor([-gap, -gap - 1.0], dtype=torch.float64).exp()
    p_rest = tail / (1 + tail.sum())  # p_1, p_2 by hand
    expected_score = torch.cat([p_rest.sum().reshape(1), -p_rest])  # e_0 - p = (1 - p_0, -p_1, -p_2)
    expected = expected_score[:, None] * x[0][None, :]  # d log p / d W = score x^T
    close(g, expected, "per-example score of the likely class")
    # the unlikely class: score e_1 - p = (-p_0, 1 - p_1, -p_2), no cancellation either way
    g1 = reference.per_example_scores(model, x, torch.tensor([1]))[0].reshape(3, 3)
    p0 = 1 / (1 + tail.sum())
    close(g1[:, 0] / gap, torch.stack([-p0, 1 - p_rest[0], -p_rest[1]]), "score of an unlikely class")


def test_bernoulli_reference_outcome_weights_do_not_cancel():
    model = nn.Linear(1, 1, dtype=torch.float64)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.zero_()
    x = torch.tensor([[60.0]], dtype=torch.float64)  # sigmoid(60) rounds to 1 in float64
    fisher = reference.fisher_matrix_loop(model, x, likelihood="bernoulli")
    s = torch.sigmoid(torch.tensor(60.0, dtype=torch.float64))
    s_not = torch.sigmoid(torch.tensor(-60.0, dtype=torch.float64))  # e^-60, not 1 - s = 0
    variance = s * s_not
    close(
        fisher,
        variance * torch.tensor([[3600.0, 60.0], [60.0, 1.0]], dtype=torch.float64),
        "Bernoulli Fisher s (1 - s) [x; 1][x; 1]^T at a saturated logit",
    )


@pytest.mark.parametrize("case", CASES, ids=str)
def test_ggn_two_definitions_agree(case):
    """J^T Lambda J built from rows of J (ggn_loop) equals the Hessian of the linearised network's
    loss, which forms no Jacobian (ggn_linearised_loop), and the library's ggn; nonlinear models."""
    model, x, _ = make(case)
    kw = dict(likelihood=case.likelihood, sigma2=case.sigma2)
    by_rows = reference.ggn_loop(model, x, **kw)
    assert_close(reference.ggn_linearised_loop(model, x, **kw), by_rows, what=f"{case}: linearised vs rows")
    assert_close(ewc_lib.ggn(model, x, **kw), reference.ggn_linearised_loop(model, x, **kw), what=f"{case}: ggn")


def test_ggn_linearised_is_not_the_hessian_of_a_nonlinear_network():
    """The linearisation drops exactly the residual term: H = GGN + R with R clearly nonzero."""
    model, x, y = make(CASES[0])
    h = reference.hessian_loop(model, x, y)
    g = reference.ggn_linearised_loop(model, x)
    r = reference.residual_term_loop(model, x, y)
    assert rel_error(g, h) > 1e-3
    assert_close(g + r, h, what="H = GGN (linearised) + residual term")
