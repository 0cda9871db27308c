"""Tests of ewc_lib.linear_gaussian: the exact posteriors and minimisers the book checks claims on."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from ewc_lib import linear_gaussian as lg
from ewc_lib.testing import CANCELLATION_RTOL, EXACT_ATOL, EXACT_RTOL


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
