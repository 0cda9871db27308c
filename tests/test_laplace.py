"""Tests for ewc_lib.laplace: exact cases in float64, closed forms, and bad input."""

from __future__ import annotations

import doctest
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize, special, stats

import ewc_lib.laplace
from ewc_lib.laplace import (
    GridNormalisationError,
    LaplaceGaussian,
    ModeNotFoundError,
    NotPositiveDefiniteError,
    find_mode,
    gaussian_kl,
    grid_kl,
    grid_tv,
    laplace_approximation,
    make_grid,
    negative_hessian,
    normalise_on_grid,
)
from ewc_lib.testing import EXACT_ATOL, EXACT_RTOL, STATIONARY_ATOL, assert_close

F64 = torch.float64
GRID_TOL = 1e-6  # Riemann sums on fine grids of smooth, well-contained densities


def _spd(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(d, d, generator=g, dtype=F64)
    return m @ m.T + 0.5 * torch.eye(d, dtype=F64)


# ------------------------------------------------------------------ exact: Gaussian target


@pytest.mark.parametrize("d", [1, 2, 5])
def test_laplace_of_gaussian_is_itself(d):
    prec = _spd(d, seed=d)
    mean = torch.linspace(-1.0, 2.0, d, dtype=F64)

    def log_f(t):  # unnormalised, with an arbitrary constant
        diff = t - mean
        return -0.5 * diff @ prec @ diff + 3.7

    q = laplace_approximation(log_f, torch.zeros(d, dtype=F64))
    torch.testing.assert_close(q.mean, mean, rtol=0, atol=STATIONARY_ATOL)
    torch.testing.assert_close(q.precision, prec, rtol=STATIONARY_ATOL, atol=STATIONARY_ATOL)
    torch.testing.assert_close(q.covariance, torch.linalg.inv(prec), rtol=1e-9, atol=STATIONARY_ATOL)
    # log normaliser of a Gaussian is exact: 3.7 + d/2 log 2pi - 1/2 log det A
    exact = 3.7 + 0.5 * d * math.log(2 * math.pi) - 0.5 * float(torch.logdet(prec))
    assert abs(q.log_normaliser - exact) < STATIONARY_ATOL
    # log_prob agrees with torch.distributions
    x = torch.randn(7, d, generator=torch.Generator().manual_seed(1), dtype=F64)
    ref = torch.distributions.MultivariateNormal(mean, precision_matrix=prec).log_prob(x)
    torch.testing.assert_close(q.log_prob(x), ref, rtol=1e-12, atol=1e-12)
    assert q.log_prob(x[0]).shape == ()


def test_sample_moments_within_standard_error():
    prec = _spd(2, seed=3)
    q = LaplaceGaussian(torch.tensor([1.0, -2.0], dtype=F64), prec)
    n = 40_000
    s = q.sample(n, torch.Generator().manual_seed(0))
    assert s.shape == (n, 2)
    se = torch.sqrt(q.covariance.diagonal() / n)
    assert ((s.mean(0) - q.mean).abs() < 5 * se).all()  # 5 standard errors
    emp = torch.cov(s.T)
    # sample variance has standard error ~ sigma^2 sqrt(2/n)
    assert ((emp - q.covariance).abs() < 5 * q.covariance.diagonal().max() * math.sqrt(2 / n)).all()
    # same generator seed -> same draw
    torch.testing.assert_close(
        q.sample(5, torch.Generator().manual_seed(4)), q.sample(5, torch.Generator().manual_seed(4))
    )


# ------------------------------------------------------------------ Bishop's skewed density


def test_bishop_skewed_density_known_mode():
    # f(z) = exp(-z^2/2) sigmoid(20 z + 4) (Bishop 2006, Fig. 4.14)
    def log_f(z):
        return -0.5 * (z**2).sum() + torch.nn.functional.logsigmoid(20 * z + 4).sum()

    q = laplace_approximation(log_f, torch.tensor([1.5], dtype=F64))
    # stationarity condition d/dz log f = -z + 20 sigmoid(-(20z+4)) = 0, solved by bracketing
    z0 = optimize.brentq(lambda z: -z + 20 * special.expit(-(20 * z + 4)), -1.0, 1.0, xtol=1e-15)
    assert abs(float(q.mean[0]) - z0) < STATIONARY_ATOL
    s = special.expit(20 * z0 + 4)
    assert abs(float(q.precision[0, 0]) - (1 + 400 * s * (1 - s))) < 1e-8


def test_taylor_remainder_within_third_derivative_bound():
    # thm-laplace-expansion, part 3, on Bishop's density: on the ball |z - z*| <= 1/2,
    # |log f(z) - log f(z*) + A (z - z*)^2 / 2| <= kappa/6 |z - z*|^3, with kappa the largest
    # |d^3/dz^3 log f| = 8000 s (1 - s) |1 - 2 s| (s = sigmoid(20 z + 4)) on the ball, in closed form
    def log_f(z):
        return -0.5 * (z**2).sum(-1) + torch.nn.functional.logsigmoid(20 * z + 4).sum(-1)

    q = laplace_approximation(log_f, torch.tensor([0.0], dtype=F64))
    z_star, a = float(q.mean[0]), float(q.precision[0, 0])
    z = torch.linspace(z_star - 0.5, z_star + 0.5, 4001, dtype=F64)
    s = torch.sigmoid(20 * z + 4)
    kappa = float((8000 * s * (1 - s) * (1 - 2 * s)).abs().max())
    delta = (z - z_star).abs()
    remainder = (log_f(z[:, None]) - q.log_density_at_mode + 0.5 * a * delta**2).abs()
    # the found mode leaves a gradient of at most grad_norm (its linear term is allowed), plus round-off
    assert (remainder <= kappa / 6 * delta**3 + q.grad_norm * delta + EXACT_ATOL).all()
    # and the remainder really is cubic near the mode: R / delta^3 -> |d^3 log f (z*)| / 6
    s0 = special.expit(20 * z_star + 4)
    third_at_mode = 8000 * s0 * (1 - s0) * abs(1 - 2 * s0)
    near = (delta > 1e-3) & (delta < 3e-3)
    ratio = remainder[near] / delta[near] ** 3
    assert ((ratio - third_at_mode / 6).abs() < 0.1 * third_at_mode / 6).all()


# ------------------------------------------------------------------ 2-D logistic regression


def test_logistic_regression_mode_is_stationary_and_precision_matches_formula():
    g = torch.Generator().manual_seed(0)
    n, alpha = 60, 1.0
    x = torch.randn(n, 2, generator=g, dtype=F64)
    w_true = torch.tensor([1.5, -1.0], dtype=F64)
    y = (torch.rand(n, generator=g, dtype=F64) < torch.sigmoid(x @ w_true)).to(F64)

    def log_post(w):
        logits = x @ w
        return (y * logits - torch.nn.functional.softplus(logits)).sum() - 0.5 * alpha * (w @ w)

    q = laplace_approximation(log_post, torch.zeros(2, dtype=F64))
    w = q.mean
    s = torch.sigmoid(x @ w)
    grad = x.T @ (y - s) - alpha * w  # closed-form gradient
    assert float(grad.abs().max()) < 1e-9
    a_ref = alpha * torch.eye(2, dtype=F64) + x.T @ (x * (s * (1 - s))[:, None])
    torch.testing.assert_close(q.precision, a_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(negative_hessian(log_post, w), a_ref, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ grid divergences


def test_grid_kl_two_gaussians_1d_matches_closed_form():
    z = torch.linspace(-15, 15, 6001, dtype=F64)
    dz = float(z[1] - z[0])
    m1, s1, m2, s2 = 0.3, 1.2, -0.5, 0.8
    lp = torch.as_tensor(stats.norm.logpdf(z.numpy(), m1, s1))
    lq = -0.5 * ((z - m2) / s2) ** 2  # unnormalised on purpose
    closed = math.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5
    assert abs(grid_kl(lp, lq, dz) - closed) < GRID_TOL
    assert (
        abs(
            gaussian_kl(
                torch.tensor([m1], dtype=F64),
                torch.tensor([[s1**-2]], dtype=F64),
                torch.tensor([m2], dtype=F64),
                torch.tensor([[s2**-2]], dtype=F64),
            )
            - closed
        )
        < 1e-12
    )
    # TV for equal variances: 2 Phi(|dm| / (2 s)) - 1
    lq_eq = -0.5 * ((z - m2) / s1) ** 2
    tv_closed = 2 * stats.norm.cdf(abs(m1 - m2) / (2 * s1)) - 1
    assert abs(grid_tv(lp, lq_eq, dz) - tv_closed) < GRID_TOL
    assert grid_tv(lp, lp, dz) == 0.0


def test_grid_kl_two_gaussians_2d_matches_closed_form():
    pa, pb = _spd(2, 10), _spd(2, 11)
    ma, mb = torch.tensor([0.2, -0.1], dtype=F64), torch.tensor([-0.3, 0.4], dtype=F64)
    qa, qb = LaplaceGaussian(ma, pa), LaplaceGaussian(mb, pb)
    half = 8 * float(torch.sqrt(torch.maximum(qa.covariance.diagonal(), qb.covariance.diagonal())).max())
    ax = torch.linspace(-half, half, 801, dtype=F64)
    grid = make_grid(ax, ax)
    lp = qa.log_prob(grid.points).reshape(grid.shape)
    lq = qb.log_prob(grid.points).reshape(grid.shape)
    closed = gaussian_kl(ma, pa, mb, pb)
    assert closed > 0.1
    assert abs(grid_kl(lp, lq, grid.cell_volume) - closed) < 1e-5 * max(1.0, closed)
    assert 0.0 < grid_tv(lp, lq, grid.cell_volume) < 1.0


def test_normalise_on_grid_and_make_grid():
    z = torch.linspace(-10, 10, 2001, dtype=F64)
    lp, lm = normalise_on_grid(-0.5 * z**2 + 2.0, 0.01)
    assert abs(lm - (2.0 + 0.5 * math.log(2 * math.pi))) < 1e-12
    assert abs(float(torch.exp(lp).sum() * 0.01) - 1.0) < 1e-12
    g = make_grid(torch.linspace(0, 1, 3, dtype=F64), torch.linspace(0, 2, 5, dtype=F64))
    assert g.points.shape == (15, 2) and g.shape == (3, 5) and abs(g.cell_volume - 0.25) < 1e-15
    torch.testing.assert_close(g.points.reshape(3, 5, 2)[1, 2], torch.tensor([0.5, 1.0], dtype=F64))


def test_grid_kl_infinite_when_q_vanishes_where_p_does_not():
    z = torch.linspace(-10, 10, 2001, dtype=F64)
    lp = -0.5 * z**2
    lq = torch.where(z > 0, -0.5 * z**2, torch.tensor(-math.inf, dtype=F64))
    assert grid_kl(lp, lq, 0.01) == math.inf
    assert math.isfinite(grid_kl(lq, lp, 0.01))


# ------------------------------------------------------------------ bad input


def _quad(t):
    return -0.5 * (t**2).sum()


@pytest.mark.parametrize(
    "init, exc, match",
    [
        ([math.nan, 0.0], ValueError, "init must be finite"),
        ([math.inf], ValueError, "init must be finite"),
        ([[0.0, 1.0]], ValueError, "shape"),
        ([], ValueError, "non-empty"),
        ("abc", TypeError, "init"),
    ],
)
def test_bad_init(init, exc, match):
    with pytest.raises(exc, match=match):
        laplace_approximation(_quad, init)


def test_log_density_not_scalar_or_not_finite():
    with pytest.raises(ValueError, match="scalar"):
        laplace_approximation(lambda t: -(t**2), torch.zeros(2, dtype=F64))
    with pytest.raises(TypeError, match="torch scalar tensor"):
        laplace_approximation(lambda t: 1.0, torch.zeros(2, dtype=F64))
    with pytest.raises(ValueError, match="finite"):
        laplace_approximation(lambda t: torch.log(t).sum(), -torch.ones(1, dtype=F64))


def test_mode_not_found_unbounded_density():
    # log f(t) = t: no maximum; the gradient is 1 everywhere
    with pytest.raises(ModeNotFoundError, match="mode not found"):
        laplace_approximation(lambda t: t.sum(), torch.zeros(1, dtype=F64), max_iter=20)


def test_mode_near_support_boundary_is_found():
    # Beta(1.5, 21) in p: interior mode 0.5 / 20.5 close to the boundary; full Newton steps from
    # init overshoot into p < 0 (non-finite), the line search must back off
    def log_f(p):
        return 0.5 * torch.log(p).sum() + 20.0 * torch.log1p(-p).sum()

    q = laplace_approximation(log_f, torch.tensor([0.9], dtype=F64))
    assert abs(float(q.mean[0]) - 0.5 / 20.5) < STATIONARY_ATOL


def test_saddle_free_direction_escapes_a_saddle():
    # started near (not at) a saddle of a density with a mode at (0, 2): Newton alone would go to the saddle
    def log_f(t):
        return -0.5 * t[0] ** 2 - 0.25 * (t[1] ** 2 - 4.0) ** 2

    q = laplace_approximation(log_f, torch.tensor([0.3, 0.05], dtype=F64))
    torch.testing.assert_close(q.mean, torch.tensor([0.0, 2.0], dtype=F64), rtol=0, atol=1e-10)


def test_mode_not_found_boundary_maximum():
    # Beta(1, 20) density on (0, 1): maximum at the boundary p = 0, no stationary point inside
    def log_f(p):
        return 19.0 * torch.log1p(-p).sum() + 0.0 * torch.log(p).sum()

    with pytest.raises(ModeNotFoundError, match="mode not found"):
        laplace_approximation(log_f, torch.tensor([0.5], dtype=F64))


def test_mode_not_found_maximum_at_infinity():
    # f(p) = (1 - p)^19 on p < 1 increases forever as p -> -inf; its gradient becomes tiny there,
    # but the Newton decrement (scale-free) shows the point is not a mode
    def log_f(p):
        return 19.0 * torch.log1p(-p).sum()

    with pytest.raises(ModeNotFoundError, match="mode not found"):
        laplace_approximation(log_f, torch.tensor([0.5], dtype=F64))
    # a loose gradient tolerance is met far out (gradient 19 / (1 - p) -> 0) ...
    mode, _, gnorm = find_mode(log_f, torch.tensor([0.5], dtype=F64), grad_tol=1e-3)
    assert gnorm <= 1e-3 and float(mode[0]) < -1e4
    # ... but the Newton decrement 0.5 g^2 / A = 19 / 2 nats shows it is no mode
    with pytest.raises(ModeNotFoundError, match="Newton decrement"):
        laplace_approximation(log_f, torch.tensor([0.5], dtype=F64), grad_tol=1e-3)


def test_mode_not_found_too_few_iterations():
    # Rosenbrock-like banana: one damped Newton iteration cannot reach the mode
    def log_f(t):
        return -((1 - t[0]) ** 2 + 100 * (t[1] - t[0] ** 2) ** 2)

    with pytest.raises(ModeNotFoundError, match="grad_tol"):
        laplace_approximation(log_f, torch.tensor([-1.5, 2.0], dtype=F64), max_iter=1)
    q = laplace_approximation(log_f, torch.tensor([-1.5, 2.0], dtype=F64))
    torch.testing.assert_close(q.mean, torch.ones(2, dtype=F64), rtol=0, atol=1e-8)


def test_hessian_not_positive_definite():
    # a saddle: the gradient vanishes at the origin, where the optimiser starts
    with pytest.raises(NotPositiveDefiniteError, match="not positive definite"):
        laplace_approximation(lambda t: -(t[0] ** 2) + t[1] ** 2, torch.zeros(2, dtype=F64))
    # a flat direction: -t^4 has zero curvature at its maximum
    with pytest.raises(NotPositiveDefiniteError, match="not positive definite"):
        laplace_approximation(lambda t: -(t**4).sum(), torch.zeros(1, dtype=F64))
    with pytest.raises(NotPositiveDefiniteError):
        LaplaceGaussian(torch.zeros(2, dtype=F64), torch.diag(torch.tensor([1.0, -1.0], dtype=F64)))


def test_bad_options():
    with pytest.raises(ValueError, match="max_iter"):
        find_mode(_quad, [0.0], max_iter=0)
    with pytest.raises(ValueError, match="grad_tol"):
        find_mode(_quad, [0.0], grad_tol=-1.0)
    with pytest.raises(ValueError, match="max_iter"):
        find_mode(_quad, [0.0], max_iter=True)
    with pytest.raises(ValueError, match="decrement_tol"):
        laplace_approximation(_quad, [0.0], decrement_tol=0.0)


def test_gaussian_bad_input():
    q = LaplaceGaussian(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64))
    with pytest.raises(ValueError, match="shape"):
        q.log_prob(torch.zeros(3, dtype=F64))
    with pytest.raises(TypeError, match="generator"):
        q.sample(3, None)
    with pytest.raises(ValueError, match="n must be"):
        q.sample(0, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="precision must have shape"):
        LaplaceGaussian(torch.zeros(2, dtype=F64), torch.eye(3, dtype=F64))
    with pytest.raises(ValueError, match="same dimension"):
        gaussian_kl(torch.zeros(1), torch.eye(1), torch.zeros(2), torch.eye(2))


def test_grid_bad_input():
    z = torch.linspace(-3, 3, 601, dtype=F64)
    dz = float(z[1] - z[0])
    # mass at the grid edge: a standard normal cut at +-3 sigma
    with pytest.raises(GridNormalisationError, match="does not normalise"):
        grid_kl(-0.5 * z**2, -0.5 * z**2, dz)
    # a wide enough grid passes
    zz = torch.linspace(-10, 10, 2001, dtype=F64)
    assert grid_kl(-0.5 * zz**2, -0.5 * zz**2, 0.01) == 0.0
    with pytest.raises(ValueError, match="same shape"):
        grid_kl(-0.5 * zz**2, -0.5 * zz[:-1] ** 2, 0.01)
    with pytest.raises(ValueError, match="NaN"):
        grid_tv(torch.full((5,), math.nan, dtype=F64), torch.zeros(5, dtype=F64), 1.0)
    with pytest.raises(ValueError, match=r"\+inf"):
        grid_tv(torch.full((5,), math.inf, dtype=F64), torch.zeros(5, dtype=F64), 1.0)
    with pytest.raises(GridNormalisationError, match="no mass"):
        normalise_on_grid(torch.full((5,), -math.inf, dtype=F64), 1.0)
    with pytest.raises(ValueError, match="cell_volume"):
        normalise_on_grid(-0.5 * zz**2, -0.01)
    with pytest.raises(ValueError, match="uniformly spaced"):
        make_grid(torch.tensor([0.0, 1.0, 3.0], dtype=F64))
    with pytest.raises(ValueError, match="strictly increasing"):
        make_grid(torch.tensor([0.0, -1.0, -2.0], dtype=F64))
    with pytest.raises(ValueError, match="at least 3"):
        make_grid(torch.tensor([0.0, 1.0], dtype=F64))


# ------------------------------------------------------------------ laws and docstring examples


@settings(max_examples=25, deadline=None)
@given(
    m=st.floats(-2.0, 2.0),
    log_s1=st.floats(-0.7, 0.7),
    log_s2=st.floats(-0.7, 0.7),
)
def test_grid_divergences_are_nonnegative_and_bounded(m, log_s1, log_s2):
    z = torch.linspace(-16, 16, 3201, dtype=F64)
    dz = float(z[1] - z[0])
    lp = -0.5 * (z / math.exp(log_s1)) ** 2
    lq = -0.5 * ((z - m) / math.exp(log_s2)) ** 2
    kl = grid_kl(lp, lq, dz)
    tv = grid_tv(lp, lq, dz)
    assert kl >= -1e-12 and 0.0 <= tv <= 1.0
    # Pinsker's inequality: TV <= sqrt(KL / 2)
    assert tv <= math.sqrt(max(kl, 0.0) / 2) + 1e-9
    closed = gaussian_kl(
        torch.zeros(1, dtype=F64),
        torch.tensor([[math.exp(-2 * log_s1)]], dtype=F64),
        torch.tensor([m], dtype=F64),
        torch.tensor([[math.exp(-2 * log_s2)]], dtype=F64),
    )
    assert abs(kl - closed) < GRID_TOL


def test_docstring_examples_run():
    # the examples of the Laplace chapter's functions, wherever they live since the split
    attempted = 0
    for module in (ewc_lib.laplace, ewc_lib.grids, ewc_lib.modes):
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.attempted > 0 and result.failed == 0, module.__name__
        attempted += result.attempted
    assert attempted > 10


def test_grid_and_mode_functions_are_importable_from_laplace():
    from ewc_lib import grids, laplace, modes

    for module in (grids, modes):
        for name in module.__all__:
            assert getattr(laplace, name) is getattr(module, name) and name in laplace.__all__


# ------------------------------------------------------------------ prop-ewc-diagonal-kl


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_diagonal_of_the_precision_is_the_best_independent_gaussian(seed):
    """prop-ewc-diagonal-kl: D = diag(Lambda) minimises KL(q_D || p), with the stated minimum and
    formula; D_ii = 1 / (Lambda^{-1})_ii minimises KL(p || q_D); and 1 / Lambda_ii <= (Lambda^{-1})_ii."""
    d = 5
    lam = _spd(d, seed)
    mu = torch.randn(d, generator=torch.Generator().manual_seed(seed), dtype=F64)
    d_prec = torch.diagonal(lam).clone()
    d_marg = 1.0 / torch.diagonal(torch.linalg.inv(lam))

    def kl_q_p(diag):
        return gaussian_kl(mu, torch.diag(diag), mu, lam)

    def kl_p_q(diag):
        return gaussian_kl(mu, lam, mu, torch.diag(diag))

    logdet = float(torch.linalg.slogdet(lam)[1])
    minimum = 0.5 * (float(torch.log(d_prec).sum()) - logdet)
    assert_close(kl_q_p(d_prec), minimum, what="the minimum of KL(q_D || p)", rtol=EXACT_RTOL)
    assert minimum > 0  # Hadamard: lam is not diagonal
    # eq-ewc-kl-diag at any positive diagonal D, against the general formula
    wiggles = torch.exp(0.3 * torch.randn(10, d, generator=torch.Generator().manual_seed(100 + seed), dtype=F64))
    for w in wiggles:
        D = d_prec * w
        formula = 0.5 * (float((d_prec / D).sum()) - d + float(torch.log(D).sum()) - logdet)
        assert_close(kl_q_p(D), formula, what="eq-ewc-kl-diag", rtol=EXACT_RTOL)
        assert kl_q_p(D) > kl_q_p(d_prec)
        assert kl_p_q(d_marg * w) > kl_p_q(d_marg)
    assert bool((1.0 / d_prec <= 1.0 / d_marg * (1 + EXACT_RTOL)).all())
    # a diagonal precision is its own best diagonal: the minimum is zero
    assert_close(gaussian_kl(mu, torch.diag(d_prec), mu, torch.diag(d_prec)), 0.0, what="diagonal p", atol=EXACT_ATOL)
