"""Tests for ewc_lib.kunstner: closed forms against brute force (finite differences, loops) in float64."""

import numpy as np
import pytest

from ewc_lib import kunstner as k

TIGHT = 1e-10  # float64 identities between closed forms (round-off only)
FD = 1e-6  # central finite differences with step 1e-5 in float64


def _fd_grad(f, theta, h=1e-5):
    g = np.zeros_like(theta)
    for i in range(theta.size):
        e = np.zeros_like(theta)
        e[i] = h
        g[i] = (f(theta + e) - f(theta - e)) / (2 * h)
    return g


def _per_example_grads_linreg(theta, X, y):
    return -(y - X @ theta)[:, None] * X


def _per_example_grads_logreg(theta, X, y):
    pi = 1 / (1 + np.exp(-X @ theta))
    return (pi - y)[:, None] * X


# --------------------------------------------------------------------------- least squares


def test_linreg_data_shape_and_reproducible():
    X1, y1 = k.linreg_data(100, seed=3)
    X2, y2 = k.linreg_data(100, seed=3)
    assert X1.shape == (100, 2) and y1.shape == (100,)
    np.testing.assert_array_equal(X1, X2)
    np.testing.assert_array_equal(y1, y2)
    assert np.all(X1[:, 0] == 1) and np.all(X1[:, 1] > 0)


def test_linreg_grad_matches_finite_differences():
    X, y = k.linreg_data(50, seed=1)
    theta = np.array([0.3, -1.2])
    np.testing.assert_allclose(k.linreg_grad(theta, X, y), _fd_grad(lambda t: k.linreg_loss(t, X, y), theta), atol=FD)


def test_linreg_fisher_is_hessian_and_ef_is_outer_product_mean():
    X, y = k.linreg_data(40, seed=2)
    theta = np.array([1.0, 0.5])
    H = np.stack([_fd_grad(lambda t: k.linreg_grad(t, X, y)[i], theta) for i in range(2)])
    np.testing.assert_allclose(k.linreg_fisher(X), H, atol=FD)
    G = _per_example_grads_linreg(theta, X, y)
    np.testing.assert_allclose(k.linreg_empirical_fisher(theta, X, y), G.T @ G / len(y), rtol=TIGHT)


def test_linreg_fast_equals_direct_on_a_stack_of_thetas():
    X, y = k.linreg_data(64, seed=4)
    grad, ef = k.linreg_fast(X, y)
    thetas = np.random.default_rng(0).normal(size=(3, 5, 2))
    np.testing.assert_allclose(grad(thetas), k.linreg_grad(thetas, X, y), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ef(thetas), k.linreg_empirical_fisher(thetas, X, y), rtol=1e-9)


def test_linreg_solution_zero_gradient():
    X, y = k.linreg_data(30, seed=5)
    np.testing.assert_allclose(k.linreg_grad(k.linreg_solution(X, y), X, y), 0, atol=1e-12)


def test_natural_gradient_path_is_straight_and_ef_path_is_not():
    X, y = k.linreg_data(1000, seed=0)
    theta_star = k.linreg_solution(X, y)
    F = k.linreg_fisher(X)
    grad, ef = k.linreg_fast(X, y)
    start = np.array([[2.0, 4.5]])
    ngd = k.preconditioned_descent(
        lambda t: np.linalg.solve(F, grad(t)[..., None])[..., 0], start, step=1e-2, num_steps=3000
    )[:, 0]
    efd = k.preconditioned_descent(
        lambda t: np.linalg.solve(ef(t), grad(t)[..., None])[..., 0], start, step=3e-2, num_steps=3000
    )[:, 0]
    assert k.max_deviation_from_segment(ngd, start[0], theta_star) < 1e-12
    assert k.max_deviation_from_segment(efd, start[0], theta_star) > 0.1


def test_preconditioned_descent_shapes_and_errors():
    path = k.preconditioned_descent(lambda t: 0.5 * t, np.ones((3, 2)), step=1.0, num_steps=4)
    assert path.shape == (5, 3, 2)
    np.testing.assert_allclose(path[-1], 0.5**4)
    with pytest.raises(ValueError, match="step"):
        k.preconditioned_descent(lambda t: t, np.ones(2), step=-1.0, num_steps=1)
    with pytest.raises(ValueError, match="num_steps"):
        k.preconditioned_descent(lambda t: t, np.ones(2), step=1.0, num_steps=-1)
    with pytest.raises(ValueError, match="theta0"):
        k.preconditioned_descent(lambda t: t, np.array([np.nan, 1.0]), step=1.0, num_steps=1)


def test_max_deviation_from_segment():
    assert k.max_deviation_from_segment(np.array([[0.0, 0], [0.5, 0], [1, 0]])) == 0.0
    assert k.max_deviation_from_segment(np.array([[0.0, 0], [0.5, 0.25], [1, 0]])) == 0.25
    # points beyond the end are measured to the end point, not to the infinite line
    assert k.max_deviation_from_segment(np.array([[0.0, 0], [2, 0], [1, 0]])) == 1.0
    with pytest.raises(ValueError, match="length zero"):
        k.max_deviation_from_segment(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="path"):
        k.max_deviation_from_segment(np.zeros(3))


def test_linreg_bad_input():
    X, y = k.linreg_data(10, seed=0)
    with pytest.raises(ValueError, match="theta"):
        k.linreg_grad(np.zeros(3), X, y)
    with pytest.raises(ValueError, match="y"):
        k.linreg_grad(np.zeros(2), X, y[:5])
    with pytest.raises(ValueError, match="X"):
        k.linreg_fisher(np.full((3, 2), np.inf))
    with pytest.raises(ValueError, match="n"):
        k.linreg_data(0)
    with pytest.raises(ValueError, match="noise_var"):
        k.linreg_fisher(X, noise_var=0.0)


# --------------------------------------------------------------------------- logistic regression


@pytest.mark.parametrize("kind", sorted(k.LOGREG_DATASETS))
@pytest.mark.parametrize("root", [False, True])
def test_logreg_data_moments(kind, root):
    X, y = k.logreg_data(kind, 40000, seed=1, matrix_is_root=root)
    spec = k.LOGREG_DATASETS[kind]
    for c in (0, 1):
        Xc = X[y == c]
        m = np.array(spec[f"cov{c}"])
        cov = m @ m.T if root else m
        np.testing.assert_allclose(Xc.mean(axis=0), spec[f"mean{c}"], atol=0.05)
        np.testing.assert_allclose(np.cov(Xc.T), cov, atol=0.1 * np.abs(cov).max())


def test_logreg_grad_fisher_against_brute_force():
    X, y = k.logreg_data("misspecified_b", 60, seed=2)
    theta = np.array([-0.4, 0.7])
    np.testing.assert_allclose(k.logreg_grad(theta, X, y), _fd_grad(lambda t: k.logreg_loss(t, X, y), theta), atol=FD)
    H = np.stack([_fd_grad(lambda t: k.logreg_grad(t, X, y)[i], theta) for i in range(2)])
    np.testing.assert_allclose(k.logreg_fisher(theta, X), H, atol=FD)
    G = _per_example_grads_logreg(theta, X, y)
    np.testing.assert_allclose(k.logreg_empirical_fisher(theta, X, y), G.T @ G / len(y), rtol=TIGHT)
    # the Fisher is the expectation of the EF over labels drawn from the model
    pi = 1 / (1 + np.exp(-X @ theta))
    expected = sum(
        w[:, None, None] * np.einsum("ni,nj->nij", *(2 * [(pi - lab)[:, None] * X]))
        for lab, w in ((1.0, pi), (0.0, 1 - pi))
    ).mean(axis=0)
    np.testing.assert_allclose(k.logreg_fisher(theta, X), expected, rtol=TIGHT)


def test_logreg_fit_and_bad_input():
    X, y = k.logreg_data("correct", 500, seed=0)
    theta = k.logreg_fit(X, y)
    np.testing.assert_allclose(k.logreg_grad(theta, X, y), 0, atol=1e-12)
    with pytest.raises(RuntimeError, match="no convergence"):
        k.logreg_fit(X, y, max_iter=1)
    with pytest.raises(ValueError, match="kind"):
        k.logreg_data("wrong")
    with pytest.raises(ValueError, match="y"):
        k.logreg_loss(np.zeros(2), X, np.full(500, 0.5))


# --------------------------------------------------------------------------- moments


def test_gradient_moments_identity_and_batched_expectation():
    rng = np.random.default_rng(0)
    G = rng.normal(size=(12, 3)) + np.array([0.5, -1.0, 0.0])
    ef, cov, mean = k.gradient_moments(G)
    np.testing.assert_allclose(ef, cov + np.outer(mean, mean), rtol=TIGHT)
    np.testing.assert_allclose(k.batched_second_moment(G, 1), ef, rtol=TIGHT)
    np.testing.assert_allclose(k.batched_second_moment(G, 12), np.outer(mean, mean), rtol=TIGHT)
    # exact expectation over all orderings = average over random orderings (many, to 1%)
    B = 4
    avg = np.mean([k.batched_second_moment(G[rng.permutation(12)], B) for _ in range(20000)], axis=0)
    np.testing.assert_allclose(avg, k.expected_batched_second_moment(ef, mean, 12, B), atol=0.02 * np.abs(ef).max())


def test_expected_batched_second_moment_exact_by_enumeration():
    # N = 4, B = 2: every partition into two pairs, averaged, equals the formula exactly
    G = np.array([[1.0, 0.0], [2.0, 1.0], [-1.0, 3.0], [0.5, 0.5]])
    ef, _, mean = k.gradient_moments(G)
    parts = [[0, 1, 2, 3], [0, 2, 1, 3], [0, 3, 1, 2]]
    avg = np.mean([k.batched_second_moment(G[p], 2) for p in parts], axis=0)
    np.testing.assert_allclose(avg, k.expected_batched_second_moment(ef, mean, 4, 2), rtol=TIGHT)


def test_moment_bad_input():
    with pytest.raises(ValueError, match="batch_size"):
        k.batched_second_moment(np.ones((5, 2)), 2)
    with pytest.raises(ValueError, match="grads"):
        k.gradient_moments(np.ones(3))
    with pytest.raises(ValueError, match="n, batch_size"):
        k.expected_batched_second_moment(np.eye(2), np.zeros(2), 4, 5)


def test_relative_gap_and_generalized_eigenvalues():
    A = np.array([[2.0, 0.5], [0.5, 1.0]])
    assert k.relative_gap(A, A) == 0.0
    np.testing.assert_allclose(k.generalized_eigenvalues(3 * A, A), [3, 3], rtol=TIGHT)
    B = np.diag([1.0, 4.0])
    ev = k.generalized_eigenvalues(A, B)
    np.testing.assert_allclose(ev, np.sort(np.linalg.eigvals(np.linalg.solve(B, A)).real), rtol=TIGHT)
    with pytest.raises(ValueError, match="zero"):
        k.relative_gap(A, np.zeros((2, 2)))
    with pytest.raises(ValueError, match="shapes"):
        k.relative_gap(A, np.eye(3))


def test_docstring_examples_and_reexports():
    import doctest

    from ewc_lib import logistic

    for module in (k, logistic):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__
    for name in logistic.__all__:
        assert getattr(k, name) is getattr(logistic, name) and name in k.__all__
