"""Tests for ewc_lib.symbolic.check_fisher_identity: exact SymPy checks of the Fisher identities."""

import doctest

import numpy as np
import pytest
import sympy as sp
import torch

import ewc_lib
from ewc_lib import symbolic
from ewc_lib.symbolic import check_fisher_identity, is_zero
from ewc_lib.testing import EXACT_RTOL

# Monte Carlo checks: accept a deviation of this many standard errors (two-sided p ~ 6e-5 for a Gaussian).
MC_NUM_STD_ERRORS = 4.0

y = sp.Symbol("y", integer=True)
x = sp.Symbol("x", real=True)
eta = sp.Symbol("eta", real=True)


def bernoulli_logit():
    return y * eta - sp.log(1 + sp.exp(eta)), y, [eta], sp.FiniteSet(0, 1)


def categorical_softmax(k=3):
    etas = list(sp.symbols(f"eta0:{k}", real=True))
    log_p = sum(sp.KroneckerDelta(y, c) * etas[c] for c in range(k)) - sp.log(sum(sp.exp(e) for e in etas))
    return log_p, y, etas, sp.Range(k)


def gaussian_mean_variance():
    mu = sp.Symbol("mu", real=True)
    v = sp.Symbol("v", positive=True)
    return -((x - mu) ** 2) / (2 * v) - sp.log(2 * sp.pi * v) / 2, x, [mu, v], sp.Interval(-sp.oo, sp.oo)


def poisson_log_rate():
    k = sp.Symbol("k", integer=True, nonnegative=True)
    return k * eta - sp.exp(eta) - sp.log(sp.factorial(k)), k, [eta], sp.Range(0, sp.oo)


def exponential_rate():
    lam = sp.Symbol("lam", positive=True)
    return sp.log(lam) - lam * x, x, [lam], sp.Interval(0, sp.oo)


def uniform_zero_theta():
    theta = sp.Symbol("theta", positive=True)
    return -sp.log(theta), x, [theta], sp.Interval(0, theta)


# ---------------------------------------------------------------- families where the identity holds


def test_bernoulli_logit_fisher_is_sigma_one_minus_sigma():
    res = check_fisher_identity(*bernoulli_logit())
    assert res.holds and res.score_mean_is_zero and res.identity_holds
    sigma = 1 / (1 + sp.exp(-eta))
    assert is_zero(res.outer[0, 0] - sigma * (1 - sigma))
    assert is_zero(res.neg_hessian[0, 0] - sigma * (1 - sigma))
    assert res.normaliser == 1  # a density that does not normalise raises ValueError instead
    assert is_zero(res.boundary_term)


def test_categorical_softmax_k3_fisher_is_diag_pi_minus_pi_pi_t():
    log_p, var, etas, support = categorical_softmax(3)
    res = check_fisher_identity(log_p, var, etas, support)
    assert res.holds
    z = sum(sp.exp(e) for e in etas)
    pi = sp.Matrix([sp.exp(e) / z for e in etas])
    expected = sp.diag(*pi) - pi * pi.T
    assert is_zero(res.outer - expected)
    assert is_zero(res.neg_hessian - expected)
    assert res.outer.shape == (3, 3) and res.score_mean.shape == (3, 1)


def test_categorical_via_piecewise_on_finiteset_agrees_with_kroneckerdelta():
    etas = list(sp.symbols("eta0:3", real=True))
    log_z = sp.log(sum(sp.exp(e) for e in etas))
    log_p = sp.Piecewise((etas[0], sp.Eq(y, 0)), (etas[1], sp.Eq(y, 1)), (etas[2], True)) - log_z
    res_pw = check_fisher_identity(log_p, y, etas, sp.FiniteSet(0, 1, 2))
    res_kd = check_fisher_identity(*categorical_softmax(3))
    assert res_pw.holds
    assert is_zero(res_pw.outer - res_kd.outer)


def test_gaussian_mean_and_variance_together():
    log_p, var, params, support = gaussian_mean_variance()
    res = check_fisher_identity(log_p, var, params, support)
    assert res.holds
    v = params[1]
    assert is_zero(res.outer - sp.Matrix([[1 / v, 0], [0, 1 / (2 * v**2)]]))
    assert is_zero(res.score_covariance - res.outer)  # E[s] = 0, so Cov(s) = E[s s^T]


def test_poisson_log_rate_infinite_sum():
    res = check_fisher_identity(*poisson_log_rate())
    assert res.holds
    assert is_zero(res.outer[0, 0] - sp.exp(eta))  # Fisher of the log-rate = rate


def test_exponential_rate():
    log_p, var, params, support = exponential_rate()
    res = check_fisher_identity(log_p, var, params, support)
    assert res.holds
    assert is_zero(res.outer[0, 0] - 1 / params[0] ** 2)


def test_bernoulli_probability_parameter_also_satisfies_identity():
    # The identities hold in any smooth parameterisation; only Fisher = GGN needs natural parameters.
    p = sp.Symbol("p", positive=True)
    log_p = y * sp.log(p) + (1 - y) * sp.log(1 - p)
    res = check_fisher_identity(log_p, y, [p], sp.FiniteSet(0, 1))
    assert res.holds
    assert is_zero(res.outer[0, 0] - 1 / (p * (1 - p)))


def test_gaussian_fixed_variance_treats_extra_symbols_as_constants():
    mu = sp.Symbol("mu", real=True)
    s2 = sp.Symbol("sigma2", positive=True)
    res = check_fisher_identity(-((x - mu) ** 2) / (2 * s2) - sp.log(2 * sp.pi * s2) / 2, x, [mu], sp.Reals)
    assert res.holds
    assert is_zero(res.outer[0, 0] - 1 / s2)


# ---------------------------------------------------------------- the counterexample


def test_uniform_zero_theta_fails_with_boundary_term():
    log_p, var, params, support = uniform_zero_theta()
    (theta,) = params
    res = check_fisher_identity(log_p, var, params, support)
    assert res.holds is False
    assert res.score_mean_is_zero is False and res.identity_holds is False
    assert is_zero(res.score_mean[0] + 1 / theta)  # E[s] = -1/theta
    assert is_zero(res.outer[0, 0] - 1 / theta**2)
    assert is_zero(res.neg_hessian[0, 0] + 1 / theta**2)  # opposite sign: not even PSD
    assert is_zero(res.boundary_term[0] - 1 / theta)
    assert is_zero(res.score_mean + res.boundary_term)  # Leibniz: d/dtheta (integral) = 0
    assert "boundary" in res.explanation


# ---------------------------------------------------------------- bad input


def test_non_normalised_density_raises_naming_log_density():
    with pytest.raises(ValueError, match="log_density"):
        check_fisher_identity(-x, x, [eta], sp.Interval(0, 2))
    mu = sp.Symbol("mu", real=True)
    with pytest.raises(ValueError, match="log_density.*not 1"):
        check_fisher_identity(-((x - mu) ** 2) / 2, x, [mu], sp.Interval(-sp.oo, sp.oo))
    with pytest.raises(ValueError, match="log_density"):
        check_fisher_identity(y * eta, y, [eta], sp.FiniteSet(0, 1))


@pytest.mark.parametrize(
    "kwargs, exc, pattern",
    [
        (dict(support=[0, 1]), TypeError, "support"),
        (dict(support=sp.Union(sp.Interval(0, 1), sp.Interval(2, 3))), TypeError, "support"),
        (dict(variable=y**2), TypeError, "variable"),
        (dict(variable="y"), TypeError, "variable"),
        (dict(params=[sp.Integer(1)]), TypeError, "params"),
        (dict(params=["eta"]), TypeError, "params"),
        (dict(params=eta), TypeError, "params"),
        (dict(params=[]), ValueError, "params"),
        (dict(params=[eta, eta]), ValueError, "params"),
        (dict(params=[y]), ValueError, "variable"),
        (dict(log_density="y*eta"), TypeError, "log_density"),
        (dict(support=sp.FiniteSet()), ValueError, "support"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_message(kwargs, exc, pattern):
    args = dict(zip(["log_density", "variable", "params", "support"], bernoulli_logit()))
    args.update(kwargs)
    with pytest.raises(exc, match=pattern):
        check_fisher_identity(**args)


def test_discrete_support_depending_on_params_is_rejected():
    n = sp.Symbol("n", integer=True, positive=True)
    with pytest.raises(ValueError, match="discrete support"):
        check_fisher_identity(-sp.log(n), y, [n], sp.Range(0, n))


def test_docstring_examples_run():
    failures, _ = doctest.testmod(symbolic, raise_on_error=False)
    assert failures == 0


# ---------------------------------------------------------------- numerical cross-checks


def test_categorical_fisher_matches_monte_carlo():
    """Sample labels from softmax(eta), average s s^T, compare with SymPy within standard errors."""
    log_p, var, etas, support = categorical_softmax(3)
    res = check_fisher_identity(log_p, var, etas, support)
    values = {e: v for e, v in zip(etas, [0.3, -1.1, 0.7])}
    exact = np.array(res.outer.subs(values).evalf(), dtype=float)
    pi = np.exp(list(values.values()))
    pi /= pi.sum()
    rng = np.random.default_rng(0)
    n = 200_000
    labels = rng.choice(3, size=n, p=pi)
    scores = np.eye(3)[labels] - pi  # d/d eta log softmax(eta)_y = e_y - pi
    outer = scores[:, :, None] * scores[:, None, :]
    mean = outer.mean(axis=0)
    se = outer.std(axis=0, ddof=1) / np.sqrt(n)
    assert np.all(np.abs(mean - exact) <= MC_NUM_STD_ERRORS * se + 1e-12), (mean, exact, se)


def test_sympy_fisher_matches_library_fisher_matrix():
    """A one-weight model f(x) = w x with Bernoulli(logit f) and Gaussian(mean f) likelihoods."""
    if not hasattr(ewc_lib, "fisher_matrix"):
        pytest.skip("ewc_lib.fisher_matrix not available yet")
    w0, x0, sigma2 = 0.4, 1.7, 0.5
    model = torch.nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        model.weight.fill_(w0)
    inputs = torch.tensor([[x0]], dtype=torch.float64)

    # Bernoulli: F(w) = x^2 F_eta(eta = w x), by the chain rule through the natural parameter.
    res = check_fisher_identity(*bernoulli_logit())
    f_eta = float(res.outer[0, 0].subs(eta, w0 * x0))
    lib = ewc_lib.fisher_matrix(model, inputs, likelihood="bernoulli", estimator="exact")
    np.testing.assert_allclose(lib.detach().numpy(), [[x0**2 * f_eta]], rtol=EXACT_RTOL)

    # Gaussian with fixed variance sigma2: F(w) = x^2 / sigma2.
    mu = sp.Symbol("mu", real=True)
    s2 = sp.Symbol("sigma2", positive=True)
    res_g = check_fisher_identity(-((x - mu) ** 2) / (2 * s2) - sp.log(2 * sp.pi * s2) / 2, x, [mu], sp.Reals)
    f_mu = float(res_g.outer[0, 0].subs(s2, sigma2))
    lib_g = ewc_lib.fisher_matrix(model, inputs, likelihood="gaussian", estimator="exact", sigma2=sigma2)
    np.testing.assert_allclose(lib_g.detach().numpy(), [[x0**2 * f_mu]], rtol=EXACT_RTOL)


def test_example_families_all_hold_except_uniform():
    fams = symbolic.example_families()
    assert len(fams) == 6
    for name, args in fams.items():
        res = check_fisher_identity(*args)
        assert res.holds is (name != "Uniform(0, theta)"), name


def test_symbols_without_assumptions_raise_instead_of_answering_wrongly():
    mu = sp.Symbol("mu", real=True)
    v = sp.Symbol("v")  # no positive=True: SymPy cannot decide sqrt(v)**2 = v
    with pytest.raises(ValueError, match="positive=True"):
        check_fisher_identity(-((x - mu) ** 2) / (2 * v) - sp.log(2 * sp.pi * v) / 2, x, [mu, v], sp.Reals)


def test_nan_log_density_is_rejected():
    with pytest.raises(ValueError, match="finite"):
        check_fisher_identity(sp.nan * x, x, [eta], sp.Reals)
