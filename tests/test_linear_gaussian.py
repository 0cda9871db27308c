"""Tests of ewc_lib.linear_gaussian: the exact posteriors and minimisers the book checks claims on."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from scipy import integrate, stats

from ewc_lib import linear_gaussian as lg
from ewc_lib.testing import CANCELLATION_RTOL, EXACT_ATOL, EXACT_RTOL, ROUNDING_RTOL, assert_close

SIGMA = 0.5  # noise standard deviation of the two tilted tasks (as in sec-bayes-two-tasks-check)


def test_doctests():
    result = doctest.testmod(lg)
    assert result.failed == 0 and result.attempted > 0


def test_sequential_posterior_equals_joint_in_either_order():
    rng = np.random.default_rng(0)
    theta = np.array([1.0, -0.5])
    X_A, y_A = lg.tilted_task(30, [1.0, 1.0], 0.15, theta, sigma=0.5, rng=rng)
    X_B, y_B = lg.tilted_task(20, [1.0, -0.3], 0.3, theta, sigma=0.5, rng=rng)
    m0, P0 = np.zeros(2), np.eye(2)
    m_A, P_A = lg.posterior(m0, P0, X_A, y_A, sigma2=0.25)
    m_AB, P_AB = lg.posterior(m_A, P_A, X_B, y_B, sigma2=0.25)
    m_B, P_B = lg.posterior(m0, P0, X_B, y_B, sigma2=0.25)
    m_BA, P_BA = lg.posterior(m_B, P_B, X_A, y_A, sigma2=0.25)
    m_J, P_J = lg.posterior(m0, P0, np.vstack([X_A, X_B]), np.concatenate([y_A, y_B]), sigma2=0.25)
    for m, P in [(m_AB, P_AB), (m_BA, P_BA)]:
        np.testing.assert_allclose(m, m_J, rtol=EXACT_RTOL)
        np.testing.assert_allclose(P, P_J, rtol=EXACT_RTOL)


def test_ewc_minimiser_with_lambda_na_over_nb_is_the_joint_least_squares_fit():
    rng = np.random.default_rng(0)
    P, N_A, N_B = 4, 300, 60
    X_A, X_B = rng.standard_normal((N_A, P)), 2.0 * rng.standard_normal((N_B, P))
    y_A = X_A @ rng.standard_normal(P) + rng.standard_normal(N_A)
    y_B = X_B @ rng.standard_normal(P) + rng.standard_normal(N_B)
    F_A, b_A = lg.task_statistics(X_A, y_A, reduction="mean")
    F_B, b_B = lg.task_statistics(X_B, y_B, reduction="mean")
    theta_A = lg.penalised_minimiser(F_A, b_A)
    joint = np.linalg.lstsq(np.vstack([X_A, X_B]), np.concatenate([y_A, y_B]), rcond=None)[0]
    np.testing.assert_allclose(lg.penalised_minimiser(F_B, b_B, [(N_A / N_B * F_A, theta_A)]), joint, rtol=EXACT_RTOL)
    off = lg.penalised_minimiser(F_B, b_B, [(F_A, theta_A)])
    assert np.linalg.norm(off - joint) / np.linalg.norm(joint) > 1e-2


@pytest.mark.parametrize("num_params, seed, angles", [(2, 0, (0, 60, 120)), (6, 1, None)])
def test_three_tasks_single_penalty_is_exact_separate_penalties_shift_the_mean(num_params, seed, angles):
    r = lg.three_task_runs(lg.rotated_tasks(num_params, 20, seed, angles=angles))
    np.testing.assert_allclose(r["single_prec"], r["exact_prec"], rtol=EXACT_RTOL, atol=EXACT_ATOL)
    np.testing.assert_allclose(r["single_mean"], r["exact_mean"], rtol=EXACT_RTOL, atol=EXACT_ATOL)
    np.testing.assert_allclose(r["sep_prec"], r["exact_prec"], rtol=EXACT_RTOL, atol=EXACT_ATOL)
    S = r["lam_A"] + r["F_B"]
    extra_A = r["F_B"] @ np.linalg.solve(S, r["lam_A"] @ r["th_A"])
    lost_B = r["lam_A"] @ np.linalg.solve(S, r["b_B"])
    predicted = np.linalg.solve(r["exact_prec"], extra_A - lost_B)
    measured = r["sep_mean"] - r["exact_mean"]
    np.testing.assert_allclose(measured, predicted, rtol=CANCELLATION_RTOL, atol=EXACT_ATOL)
    assert np.linalg.norm(measured) > 1e-3
    np.testing.assert_allclose(r["sep_laplace_prec"] - r["exact_prec"], r["lam_A"], rtol=EXACT_RTOL, atol=EXACT_ATOL)


def test_penalised_minimiser_diagonal_stiffness_and_bad_input():
    F, b = np.diag([1.0, 2.0]), np.array([1.0, 1.0])
    full = lg.penalised_minimiser(F, b, [(np.diag([3.0, 4.0]), [1.0, -1.0])])
    np.testing.assert_array_equal(lg.penalised_minimiser(F, b, [(np.array([3.0, 4.0]), [1.0, -1.0])]), full)
    np.testing.assert_allclose((F + np.diag([3.0, 4.0])) @ full, b + np.array([3.0, -4.0]), rtol=EXACT_RTOL)
    with pytest.raises(ValueError, match="y: expected shape"):
        lg.task_statistics(np.ones((3, 2)), np.ones(4))
    with pytest.raises(ValueError, match="reduction"):
        lg.task_statistics(np.ones((3, 2)), np.ones(3), reduction="total")
    with pytest.raises(ValueError, match="X: expected a 2-D array"):
        lg.task_statistics(np.ones(3), np.ones(3))


def _two_tasks(seed=0):
    """Task A and task B of sec-bayes-two-tasks-check (the prior is N(0, I))."""
    rng = np.random.default_rng(seed)
    theta = np.array([1.0, -0.5])
    X_A, y_A = lg.tilted_task(30, [1.0, 1.0], 0.15, theta, sigma=SIGMA, rng=rng)
    X_B, y_B = lg.tilted_task(20, [1.0, -0.3], 0.3, theta, sigma=SIGMA, rng=rng)
    return X_A, y_A, X_B, y_B


def _log_evidence(X, y, mean, prec):
    """log N(y; X mean, sigma^2 I + X prec^{-1} X^T), by scipy (an independent route)."""
    cov = SIGMA**2 * np.eye(len(y)) + X @ np.linalg.solve(prec, X.T)
    return float(stats.multivariate_normal(X @ mean, cov).logpdf(y))


def _log_normal(theta, mean, prec):
    return stats.multivariate_normal(mean, np.linalg.inv(prec)).logpdf(theta)


def test_evidence_chain_rule_and_equation_2_at_every_theta():
    """lem-bayes-evidence and thm-bayes-sequential, pointwise, with log p(D_B | D_A) as the last
    term; with the paper's log p(D_B) the two sides differ by a constant (lem-bayes-normaliser)."""
    X_A, y_A, X_B, y_B = _two_tasks()
    m0, P0 = np.zeros(2), np.eye(2)
    X_all, y_all = np.vstack([X_A, X_B]), np.concatenate([y_A, y_B])
    m_A, P_A = lg.posterior(m0, P0, X_A, y_A, sigma2=SIGMA**2)
    m_J, P_J = lg.posterior(m0, P0, X_all, y_all, sigma2=SIGMA**2)
    log_p_DA = _log_evidence(X_A, y_A, m0, P0)
    log_p_DB = _log_evidence(X_B, y_B, m0, P0)
    log_p_DB_given_DA = _log_evidence(X_B, y_B, m_A, P_A)
    log_p_D = _log_evidence(X_all, y_all, m0, P0)
    assert_close(log_p_DA + log_p_DB_given_DA, log_p_D, what="chain rule for the evidence", rtol=ROUNDING_RTOL)
    thetas = np.random.default_rng(1).normal(size=(20, 2))
    log_lik_B = np.array([stats.norm(X_B @ t, SIGMA).logpdf(y_B).sum() for t in thetas])
    left = _log_normal(thetas, m_J, P_J)
    right = log_lik_B + _log_normal(thetas, m_A, P_A)
    assert_close(right - log_p_DB_given_DA, left, what="equation (2) at 20 points", rtol=ROUNDING_RTOL)
    offset = left - (right - log_p_DB)
    constant = np.full_like(offset, offset[0])
    assert_close(offset, constant, what="offset with log p(D_B)", scale=np.abs(left).max(), rtol=ROUNDING_RTOL)
    assert abs(offset[0]) > 1e-2  # log p(D_B) is another number here


def test_the_normaliser_makes_the_right_side_integrate_to_one():
    """lem-bayes-normaliser, by quadrature in one dimension: the integral over theta of
    p(D_B | theta) p(theta | D_A) is p(D_B | D_A), so only c = log p(D_B | D_A) normalises."""
    rng = np.random.default_rng(3)
    X_A, X_B = rng.normal(size=(5, 1)), rng.normal(size=(4, 1))
    y_A = 0.7 * X_A[:, 0] + SIGMA * rng.normal(size=5)
    y_B = 0.7 * X_B[:, 0] + SIGMA * rng.normal(size=4)
    m_A, P_A = lg.posterior(np.zeros(1), np.eye(1), X_A, y_A, sigma2=SIGMA**2)
    sd_A = P_A[0, 0] ** -0.5
    log_p_DB_given_DA = _log_evidence(X_B, y_B, m_A, P_A)
    log_p_DB = _log_evidence(X_B, y_B, np.zeros(1), np.eye(1))

    def right_side(t):
        log_lik = stats.norm(X_B[:, 0] * t, SIGMA).logpdf(y_B).sum()
        return np.exp(log_lik + stats.norm(m_A[0], sd_A).logpdf(t) - log_p_DB_given_DA)

    total, _ = integrate.quad(right_side, m_A[0] - 20 * sd_A, m_A[0] + 20 * sd_A, epsabs=0, epsrel=1e-13, limit=200)
    # adaptive quadrature of a smooth Gaussian bump vs the closed-form evidence: two routes to one number
    assert_close(total, 1.0, what="integral of the right side of equation (2)", rtol=EXACT_RTOL)
    assert abs(total * np.exp(log_p_DB_given_DA - log_p_DB) - 1.0) > 1e-2  # with p(D_B) it is not one


def test_two_data_sets_with_one_posterior_lead_to_one_future():
    """thm-bayes-sufficiency: task A's thirty examples and two made-up ones with the same X^T X and
    X^T y give one posterior after A, one posterior after B and one p(D_B | D_A)."""
    X_A, y_A, X_B, y_B = _two_tasks()
    L = np.linalg.cholesky(X_A.T @ X_A)
    X_A2, y_A2 = L.T, np.linalg.solve(L, X_A.T @ y_A)
    m0, P0 = np.zeros(2), np.eye(2)
    m_A, P_A = lg.posterior(m0, P0, X_A, y_A, sigma2=SIGMA**2)
    m_A2, P_A2 = lg.posterior(m0, P0, X_A2, y_A2, sigma2=SIGMA**2)
    assert_close(m_A2, m_A, what="posterior mean after A", rtol=ROUNDING_RTOL)
    assert_close(P_A2, P_A, what="posterior precision after A", rtol=ROUNDING_RTOL)
    m_AB, P_AB = lg.posterior(m_A, P_A, X_B, y_B, sigma2=SIGMA**2)
    m_A2B, P_A2B = lg.posterior(m_A2, P_A2, X_B, y_B, sigma2=SIGMA**2)
    assert_close(m_A2B, m_AB, what="1. posterior mean after B", rtol=ROUNDING_RTOL)
    assert_close(P_A2B, P_AB, what="1. posterior precision after B", rtol=ROUNDING_RTOL)
    log_pred, log_pred2 = _log_evidence(X_B, y_B, m_A, P_A), _log_evidence(X_B, y_B, m_A2, P_A2)
    assert_close(log_pred2, log_pred, what="2. log p(D_B | D_A)", rtol=ROUNDING_RTOL)


def test_an_approximate_posterior_after_a_passes_its_error_on_unchanged():
    """lem-bayes-approx-error: with q_A the diagonal Gaussian of p(theta | D_A), the log error after B
    is the log error of q_A plus c = log int p(D_B | theta) q_A(theta) dtheta - log p(D_B | D_A)."""
    X_A, y_A, X_B, y_B = _two_tasks()
    m_A, P_A = lg.posterior(np.zeros(2), np.eye(2), X_A, y_A, sigma2=SIGMA**2)
    m_J, P_J = lg.posterior(m_A, P_A, X_B, y_B, sigma2=SIGMA**2)
    Q_A = np.diag(np.diag(P_A))
    m_q, P_q = lg.posterior(m_A, Q_A, X_B, y_B, sigma2=SIGMA**2)
    thetas = np.random.default_rng(2).normal(size=(20, 2))
    err_after_B = _log_normal(thetas, m_J, P_J) - _log_normal(thetas, m_q, P_q)
    err_of_A = _log_normal(thetas, m_A, P_A) - _log_normal(thetas, m_A, Q_A)
    c = _log_evidence(X_B, y_B, m_A, Q_A) - _log_evidence(X_B, y_B, m_A, P_A)
    scale = np.abs(_log_normal(thetas, m_J, P_J)).max()  # the size of the log densities subtracted
    assert_close(err_after_B, err_of_A + c, what="inherited error", scale=scale, rtol=ROUNDING_RTOL)
    assert np.ptp(err_of_A) > 1.0  # the diagonal Gaussian is visibly wrong
