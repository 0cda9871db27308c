"""Tests of ewc_lib.curvature (float64, against the brute-force loops of ewc_lib.reference)."""

from __future__ import annotations

import itertools
import math
import warnings

import pytest
import torch
from cases import (
    CASES,
    CATEGORICAL,
    EXACT_RTOL,
    GAUSSIAN,
    Case,
    Wrapped,
    assert_close,
    layer_zoo,
    make,
    make_inputs,
    make_model,
    make_targets,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import ewc_lib
from ewc_lib import curvature, reference
from ewc_lib.curvature import fast_mlp, flatten_params, likelihoods
from ewc_lib.testing import MC_NUM_STD_ERRORS

ESTIMATORS = ["exact", "mc", "empirical", "batched_empirical"]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def options(case, estimator, targets, seed=0):
    return dict(
        likelihood=case.likelihood,
        sigma2=case.sigma2,
        estimator=estimator,
        targets=targets,
        num_samples=3,
        batch_size=3 if estimator == "batched_empirical" else None,
        generator=gen(seed),
    )


# ------------------------------------------------------------------ the identities


@pytest.mark.parametrize("case", CASES, ids=str)
def test_fisher_equals_expected_hessian_equals_ggn(case):
    model, x, _ = make(case)
    kw = dict(likelihood=case.likelihood, sigma2=case.sigma2)
    F = ewc_lib.fisher_matrix(model, x, **kw)
    assert_close(ewc_lib.expected_hessian(model, x, **kw), F, what=f"{case}: expected_hessian vs fisher")
    assert_close(ewc_lib.ggn(model, x, **kw), F, what=f"{case}: ggn vs fisher")


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_diagonal_of_matrix_is_fisher_diagonal(case, estimator):
    model, x, y = make(case)
    d = ewc_lib.fisher_diagonal(model, x, **options(case, estimator, y))
    M = ewc_lib.fisher_matrix(model, x, **options(case, estimator, y))
    assert list(d) == [n for n, p in model.named_parameters()]
    assert all(d[n].shape == p.shape and d[n].dtype == p.dtype for n, p in model.named_parameters())
    assert_close(flatten_params(d), M.diagonal(), what=f"{case}/{estimator}: diag(fisher_matrix)")


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_matrix_against_reference_loop(case, estimator):
    model, x, y = make(case)
    opts = options(case, estimator, y)
    M = ewc_lib.fisher_matrix(model, x, **opts)
    sampled = None
    if estimator == "mc":
        sampled = ewc_lib.sample_targets(
            model, x, likelihood=case.likelihood, num_samples=3, generator=gen(0), sigma2=case.sigma2
        )
    R = reference.fisher_matrix_loop(
        model,
        x,
        likelihood=case.likelihood,
        estimator=estimator,
        targets=y,
        sampled_targets=sampled,
        batch_size=3,
        sigma2=case.sigma2,
    )
    assert_close(M, R, what=f"{case}/{estimator}: fisher_matrix vs per-example loop")


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_fast_path_equals_generic_path(case, estimator):
    model, x, y = make(case)
    assert fast_mlp._fast_plan(model) is not None and fast_mlp._fast_plan(Wrapped(model)) is None
    fast = ewc_lib.fisher_diagonal(model, x, **options(case, estimator, y))
    generic = ewc_lib.fisher_diagonal(Wrapped(model), x, **options(case, estimator, y))
    assert_close(flatten_params(fast), flatten_params(generic), what=f"{case}/{estimator}: fast vs generic")


@pytest.mark.parametrize("name,model,shape", layer_zoo(), ids=[z[0] for z in layer_zoo()])
@pytest.mark.parametrize("estimator", ["exact", "mc", "empirical"])
def test_fast_path_every_layer_type_against_reference(name, model, shape, estimator):
    assert fast_mlp._fast_plan(model) is not None, f"{name} should take the fast path"
    x = torch.randn(7, *shape, generator=gen(3), dtype=torch.float64)
    y = torch.randint(0, 3, (7,), generator=gen(4))
    model.train()  # dropout must be switched off by the library and the mode restored
    d = ewc_lib.fisher_diagonal(model, x, estimator=estimator, targets=y, num_samples=2, generator=gen(5), batch_size=3)
    assert model.training
    sampled = ewc_lib.sample_targets(model, x, num_samples=2, generator=gen(5))
    ref = reference.fisher_diagonal_loop(model, x, estimator=estimator, targets=y, sampled_targets=sampled)
    assert_close(flatten_params(d), flatten_params(ref), what=f"{name}/{estimator}: fast path vs loop")


def test_frozen_parameters_are_left_out_and_flags_restored():
    model = make_model(CASES[0])
    model[0].weight.requires_grad_(False)
    x = make_inputs(CASES[0])
    d = ewc_lib.fisher_diagonal(model, x)
    assert "0.weight" not in d and set(d) == {"0.bias", "2.weight", "2.bias"}
    assert not model[0].weight.requires_grad and model[0].bias.requires_grad
    ref = reference.fisher_diagonal_loop(model, x)
    assert_close(flatten_params(d), flatten_params(ref), what="frozen first weight")
    assert ewc_lib.fisher_matrix(model, x).shape == (sum(t.numel() for t in d.values()),) * 2


def test_gaussian_fisher_scales_like_one_over_sigma2():
    case = GAUSSIAN[1]
    model, x, _ = make(case)
    f1 = flatten_params(ewc_lib.fisher_diagonal(model, x, likelihood="gaussian", sigma2=1.0))
    f4 = flatten_params(ewc_lib.fisher_diagonal(model, x, likelihood="gaussian", sigma2=4.0))
    assert_close(f4, f1 / 4, what="F(sigma2=4) vs F(1)/4")


# ------------------------------------------------------------------ Hessian facts


@pytest.mark.parametrize("case", CASES[:3] + GAUSSIAN + CASES[-1:], ids=str)
def test_hessian_against_double_backward_loop(case):
    model, x, y = make(case)
    kw = dict(likelihood=case.likelihood, sigma2=case.sigma2)
    assert_close(
        ewc_lib.hessian(model, x, y, **kw), reference.hessian_loop(model, x, y, **kw), what=f"{case}: hessian vs loop"
    )
    assert_close(
        ewc_lib.expected_hessian(model, x, **kw),
        reference.expected_hessian_loop(model, x, **kw),
        what=f"{case}: expected_hessian vs loop",
    )
    assert_close(ewc_lib.ggn(model, x, **kw), reference.ggn_loop(model, x, **kw), what=f"{case}: ggn vs loop")


@pytest.mark.parametrize("case", GAUSSIAN, ids=str)
def test_hessian_equals_expected_hessian_at_a_perfect_gaussian_fit(case):
    model, x, _ = make(case)
    with torch.no_grad():
        y = model(x)
    kw = dict(likelihood="gaussian", sigma2=case.sigma2)
    assert_close(
        ewc_lib.hessian(model, x, y, **kw),
        ewc_lib.expected_hessian(model, x, **kw),
        what=f"{case}: H vs E[H] at a perfect fit",
    )


@pytest.mark.parametrize("case", CASES, ids=str)
def test_hessian_differs_from_expected_hessian_by_the_residual_term(case):
    model, x, y = make(case)
    kw = dict(likelihood=case.likelihood, sigma2=case.sigma2)
    H = ewc_lib.hessian(model, x, y, **kw)
    EH = ewc_lib.expected_hessian(model, x, **kw)
    R = reference.residual_term_loop(model, x, y, **kw)
    # relative to the size of H: the within-layer blocks of R vanish for ReLU nets, but not the
    # blocks coupling two layers (f is bilinear in consecutive weight matrices)
    assert_close(H - EH, R, scale=H.abs().max(), what=f"{case}: H - E[H] vs residual term")
    assert (H - EH).abs().max() > 1e-3 * H.abs().max(), f"{case}: H should differ from E[H] off the fit"


# ------------------------------------------------------------------ estimators


def _per_class_squared_scores(model, x):
    """(N, C, P) squared scores and (N, C) class probabilities, by the reference loop."""
    with torch.no_grad():
        p = torch.softmax(model(x), -1)
    n, c = p.shape
    g = torch.stack([reference.per_example_scores(model, x, torch.full((n,), k)) for k in range(c)], 1)
    return g**2, p


@pytest.mark.parametrize("case", CATEGORICAL[:3], ids=str)
def test_mc_converges_to_exact_within_standard_errors(case):
    model, x, _ = make(case)
    exact = flatten_params(ewc_lib.fisher_diagonal(model, x))
    g2, p = _per_class_squared_scores(model, x)
    mean = (p.unsqueeze(-1) * g2).sum(1)  # (N, P): per-example exact Fisher diagonal
    assert_close(mean.mean(0), exact, what="per-class loop vs exact")
    var = (p.unsqueeze(-1) * g2**2).sum(1) - mean**2  # per-example variance of one draw
    n = x.shape[0]
    errors = {}
    for s in (4, 64, 1024):
        mc = flatten_params(ewc_lib.fisher_diagonal(model, x, estimator="mc", num_samples=s, generator=gen(s)))
        se = (var.sum(0) / (n * n * s)).sqrt()
        z = (mc - exact).abs() / se.clamp_min(1e-300)
        ok = (z <= MC_NUM_STD_ERRORS) | (se < 1e-14)
        assert ok.all(), f"{case}, S={s}: {int((~ok).sum())} entries beyond {MC_NUM_STD_ERRORS} SE (z {z.max():.2f})"
        errors[s] = (mc - exact).norm().item()
    # the error shrinks like 1/sqrt(S): from S=4 to S=1024 by ~16x (loose: a factor 4 at least)
    assert errors[1024] < errors[4] / 4, f"{case}: MC error did not shrink like 1/sqrt(S): {errors}"


@pytest.mark.parametrize("case", [GAUSSIAN[0], GAUSSIAN[2], CASES[-1]], ids=str)
def test_mc_gaussian_and_bernoulli_within_standard_errors(case):
    model, x, _ = make(case)
    kw = dict(likelihood=case.likelihood, sigma2=case.sigma2)
    n = x.shape[0]
    # per-example exact diagonals a_n (one example at a time)
    a = torch.stack([flatten_params(ewc_lib.fisher_diagonal(model, x[i : i + 1], **kw)) for i in range(n)])
    if case.likelihood == "gaussian":
        # g_i = eps^T J_i / sqrt(sigma2) with eps ~ N(0, I) is N(0, a_ni): Var(g^2) = 2 a^2
        var = 2 * a**2
    else:
        with torch.no_grad():
            s = torch.sigmoid(model(x))  # (n, 1)
        g2 = {
            y: reference.per_example_scores(model, x, torch.full((n,), float(y)), likelihood="bernoulli") ** 2
            for y in (0, 1)
        }
        second = s * g2[1] ** 2 + (1 - s) * g2[0] ** 2
        var = second - a**2
    exact = a.mean(0)
    assert_close(flatten_params(ewc_lib.fisher_diagonal(model, x, **kw)), exact, what="mean of per-example")
    for num in (16, 1024):
        mc = flatten_params(
            ewc_lib.fisher_diagonal(model, x, estimator="mc", num_samples=num, generator=gen(num), **kw)
        )
        se = (var.sum(0) / (n * n * num)).sqrt()
        z = (mc - exact).abs() / se.clamp_min(1e-300)
        ok = (z <= MC_NUM_STD_ERRORS) | (se < 1e-14)
        assert ok.all(), f"{case}, S={num}: {int((~ok).sum())} entries beyond {MC_NUM_STD_ERRORS} SE (z {z.max():.2f})"


def test_empirical_differs_from_exact_deterministic_counterexample():
    # one example, logits far from the observed label: EF = (e_y - p)(..)^T != sum_c p_c (...)
    model = nn.Sequential(nn.Linear(2, 3, dtype=torch.float64))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
        model[0].bias.zero_()
    x = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([2])
    ef = flatten_params(ewc_lib.fisher_diagonal(model, x, estimator="empirical", targets=y))
    f = flatten_params(ewc_lib.fisher_diagonal(model, x))
    assert (ef - f).abs().max() > 0.1 * f.abs().max(), f"EF {ef} should differ from F {f}"
    # by hand: p = softmax([2, 0, 0]); bias part of EF is (e_2 - p)^2, of F is p (1 - p)
    p = torch.softmax(torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64), 0)
    assert_close(ef[-3:], (torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64) - p) ** 2, what="EF bias by hand")
    assert_close(f[-3:], p * (1 - p), what="F bias by hand")


@pytest.mark.parametrize("case", [CATEGORICAL[0], CASES[-2]], ids=str)
def test_empirical_equals_exact_in_expectation_over_model_labels(case):
    # enumerate ALL label vectors of a tiny data set, weight each by its model probability
    model = make_model(case)
    x = make_inputs(case, n=3)
    with torch.no_grad():
        f = model(x)
    if case.likelihood == "categorical":
        probs = torch.softmax(f, -1)
        outcomes = range(f.shape[1])
    else:
        s = torch.sigmoid(f[:, 0])
        probs = torch.stack([1 - s, s], -1)
        outcomes = range(2)
    expectation = 0
    for labels in itertools.product(outcomes, repeat=x.shape[0]):
        y = torch.tensor(labels)
        w = math.prod(probs[i, k].item() for i, k in enumerate(labels))
        if case.likelihood == "bernoulli":
            y = y.double()
        ef = ewc_lib.fisher_matrix(model, x, likelihood=case.likelihood, estimator="empirical", targets=y)
        expectation = expectation + w * ef
    F = ewc_lib.fisher_matrix(model, x, likelihood=case.likelihood)
    assert_close(expectation, F, what=f"{case}: E_y[EF] vs F")


def test_batched_empirical_by_hand_and_partial_last_batch():
    case = CATEGORICAL[0]
    model, x, y = make(case)  # N = 7, B = 3 -> batches of 3, 3, 1 weighted 3/7, 3/7, 1/7
    g = reference.per_example_scores(model, x, y)
    expected = sum(len(b) / 7 * g[b].mean(0) ** 2 for b in ([0, 1, 2], [3, 4, 5], [6]))
    got = flatten_params(ewc_lib.fisher_diagonal(model, x, estimator="batched_empirical", targets=y, batch_size=3))
    assert_close(got, expected, what="batched_empirical by hand")
    # B = 1 is the empirical Fisher; B = N is the squared full-batch mean gradient
    ef = flatten_params(ewc_lib.fisher_diagonal(model, x, estimator="empirical", targets=y))
    b1 = flatten_params(ewc_lib.fisher_diagonal(model, x, estimator="batched_empirical", targets=y, batch_size=1))
    assert_close(b1, ef, what="batched_empirical with B=1 vs empirical")
    bn = flatten_params(ewc_lib.fisher_diagonal(model, x, estimator="batched_empirical", targets=y, batch_size=7))
    assert_close(bn, g.mean(0) ** 2, what="batched_empirical with B=N")


@pytest.mark.parametrize("case", [CATEGORICAL[0], GAUSSIAN[0]], ids=str)
def test_empirical_is_gradient_covariance_plus_squared_mean(case):
    # thm-ef-moment on the diagonal: EF_ii = Var_n(g_ni) + mean_n(g_ni)^2, with g from the oracle's loop
    model, x, y = make(case)
    g = reference.per_example_scores(model, x, y, likelihood=case.likelihood, sigma2=case.sigma2)
    mean = g.mean(0)
    variance = ((g - mean) ** 2).mean(0)  # divisor N, as in the theorem
    kw = dict(likelihood=case.likelihood, sigma2=case.sigma2, targets=y)
    ef = flatten_params(ewc_lib.fisher_diagonal(model, x, estimator="empirical", **kw))
    assert_close(ef, variance + mean**2, what=f"{case}: EF diagonal vs covariance + squared mean")
    # the mean part alone is the batched empirical Fisher with one batch of all N examples
    bn = flatten_params(ewc_lib.fisher_diagonal(model, x, estimator="batched_empirical", batch_size=len(x), **kw))
    assert_close(ef - bn, variance, what=f"{case}: EF - (batched, B = N) vs covariance")


def test_batched_empirical_expectation_over_all_splits():
    # thm-ef-batched: the mean of batched_empirical over every split of N = 6 examples into
    # batches of B = 2 (15 splits, equally likely under a random order) is c_B EF + (1 - c_B) gbar^2
    case = CATEGORICAL[0]
    model = make_model(case)
    x = make_inputs(case, n=6)
    y = make_targets(case, model, x)
    n, b = 6, 2
    perms = itertools.permutations(range(n))
    splits = {tuple(sorted(tuple(sorted(p[i : i + b])) for i in range(0, n, b))) for p in perms}
    assert len(splits) == 15
    average = 0
    for split in splits:
        order = torch.tensor([i for batch in split for i in batch])
        diag = ewc_lib.fisher_diagonal(model, x[order], estimator="batched_empirical", targets=y[order], batch_size=b)
        average = average + flatten_params(diag) / len(splits)
    g = reference.per_example_scores(model, x, y)
    c = (n - b) / (b * (n - 1))
    expected = c * (g**2).mean(0) + (1 - c) * g.mean(0) ** 2
    assert_close(average, expected, what="mean of batched_empirical over all splits vs thm-ef-batched")


def test_mc_reproducible_and_equal_to_empirical_on_sampled_targets():
    case = CATEGORICAL[1]
    model, x, _ = make(case)
    a = flatten_params(ewc_lib.fisher_diagonal(model, x, estimator="mc", num_samples=5, generator=gen(7)))
    b = flatten_params(ewc_lib.fisher_diagonal(model, x, estimator="mc", num_samples=5, generator=gen(7), batch_size=2))
    assert torch.equal(a, b) or (a - b).abs().max() < 1e-15 * a.abs().max() * 100
    yhat = ewc_lib.sample_targets(model, x, num_samples=5, generator=gen(7))
    ef = (
        sum(
            flatten_params(ewc_lib.fisher_diagonal(model, x, estimator="empirical", targets=yhat[:, s]))
            for s in range(5)
        )
        / 5
    )
    assert_close(a, ef, what="mc vs mean of EF over the same sampled labels")


# ------------------------------------------------------------------ properties (hypothesis)

_PROPERTY = settings(max_examples=25, deadline=None)


def _small_case(seed, likelihood, activation):
    out = {"categorical": 3, "gaussian": 2, "bernoulli": 1}[likelihood]
    return Case("prop", (2, 3, out), activation, likelihood=likelihood, n=6, seed=seed)


@_PROPERTY
@given(
    seed=st.integers(0, 10_000),
    likelihood=st.sampled_from(["categorical", "gaussian", "bernoulli"]),
    estimator=st.sampled_from(ESTIMATORS),
    activation=st.sampled_from(["tanh", "relu", "sigmoid"]),
)
def test_property_symmetric_psd(seed, likelihood, estimator, activation):
    case = _small_case(seed, likelihood, activation)
    model, x, y = make(case)
    M = ewc_lib.fisher_matrix(model, x, **options(case, estimator, y, seed))
    assert_close(M, M.T, what="symmetry")
    eig = torch.linalg.eigvalsh(M)
    assert eig.min() >= -EXACT_RTOL * eig.abs().max(), f"not PSD: smallest eigenvalue {eig.min():.3e}"


@_PROPERTY
@given(
    seed=st.integers(0, 10_000),
    likelihood=st.sampled_from(["categorical", "gaussian", "bernoulli"]),
    estimator=st.sampled_from(["exact", "empirical", "mc"]),
    chunk=st.integers(1, 7),
    perm_seed=st.integers(0, 100),
)
def test_property_invariant_to_order_and_chunk_size(seed, likelihood, estimator, chunk, perm_seed):
    case = _small_case(seed, likelihood, "tanh")
    model, x, y = make(case)
    kw = options(case, estimator, y, seed)
    base = flatten_params(ewc_lib.fisher_diagonal(model, x, **kw))
    kw = options(case, estimator, y, seed)
    kw["batch_size"] = chunk
    assert_close(flatten_params(ewc_lib.fisher_diagonal(model, x, **kw)), base, what=f"chunk size {chunk}")
    if estimator != "mc":  # mc draws are tied to positions; a permutation redraws them
        perm = torch.randperm(x.shape[0], generator=gen(perm_seed))
        kw = options(case, estimator, y[perm], seed)
        assert_close(flatten_params(ewc_lib.fisher_diagonal(model, x[perm], **kw)), base, what="permuted data")


@_PROPERTY
@given(
    seed=st.integers(0, 10_000),
    likelihood=st.sampled_from(["categorical", "gaussian", "bernoulli"]),
    estimator=st.sampled_from(["exact", "empirical", "batched_empirical"]),
)
def test_property_doubling_the_data_keeps_the_mean(seed, likelihood, estimator):
    case = _small_case(seed, likelihood, "tanh")
    model, x, y = make(case)
    kw = options(case, estimator, y, seed)
    kw2 = options(case, estimator, torch.cat([y, y]), seed)  # B = 3 divides N = 6: batches repeat
    one = ewc_lib.fisher_matrix(model, x, **kw)
    two = ewc_lib.fisher_matrix(model, torch.cat([x, x]), **kw2)
    assert_close(two, one, what="data set doubled")


# ------------------------------------------------------------------ BackPACK cross-check


@pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_backpack_cross_check(activation):
    backpack = pytest.importorskip("backpack", reason="BackPACK not installed (optional extra 'bench')")
    from backpack.extensions import DiagGGNExact, SumGradSquared

    n = 32
    model = ewc_lib.mlp([6, 8, 8, 4], activation=activation, seed=0, dtype=torch.float64)
    x = torch.randn(n, 6, generator=gen(1), dtype=torch.float64)
    y = torch.randint(0, 4, (n,), generator=gen(2))
    ours_exact = flatten_params(ewc_lib.fisher_diagonal(model, x))
    ours_ef = flatten_params(ewc_lib.fisher_diagonal(model, x, estimator="empirical", targets=y))
    ext = backpack.extend(make_model_copy(model))
    # reduction="sum": diag_ggn_exact = N F and sum_grad_squared = N EF (divide by N). With
    # reduction="mean" BackPACK scales the two differently (F vs EF/N), hence sum here.
    loss = backpack.extend(nn.CrossEntropyLoss(reduction="sum"))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        with backpack.backpack(DiagGGNExact(), SumGradSquared()):
            loss(ext(x), y).backward()
    bp_exact = torch.cat([p.diag_ggn_exact.reshape(-1) for p in ext.parameters()]) / n
    bp_ef = torch.cat([p.sum_grad_squared.reshape(-1) for p in ext.parameters()]) / n
    assert_close(ours_exact, bp_exact, what="fisher_diagonal(exact) vs BackPACK DiagGGNExact / N")
    assert_close(ours_ef, bp_ef, what="fisher_diagonal(empirical) vs BackPACK SumGradSquared / N")


def make_model_copy(model):
    import copy

    return copy.deepcopy(model)


# ------------------------------------------------------------------ bad input


def _bad_calls():
    case = CATEGORICAL[0]
    model, x, y = make(case)
    gauss_model, gx, gy = make(GAUSSIAN[1])
    frozen = make_model(case)
    for p in frozen.parameters():
        p.requires_grad_(False)
    nan_model = make_model(case)
    with torch.no_grad():
        nan_model[0].weight[0, 0] = float("nan")
    xnan = x.clone()
    xnan[0, 0] = float("inf")
    F = ewc_lib.fisher_diagonal
    return [
        ("inputs nan", lambda: F(model, xnan), ValueError, "inputs"),
        ("inputs 1-d", lambda: F(model, x[0]), ValueError, "inputs"),
        ("inputs empty", lambda: F(model, x[:0]), ValueError, "inputs"),
        ("inputs not tensor", lambda: F(model, x.tolist()), TypeError, "inputs"),
        ("inputs wrong dtype", lambda: F(model, x.float()), TypeError, "inputs"),
        ("inputs integer", lambda: F(model, x.long()), TypeError, "inputs"),
        ("param nan", lambda: F(nan_model, x), ValueError, "model"),
        ("no trainable", lambda: F(frozen, x), ValueError, "model"),
        ("not a module", lambda: F(lambda t: t, x), TypeError, "model"),
        ("unknown estimator", lambda: F(model, x, estimator="fisher"), ValueError, "estimator"),
        ("unknown likelihood", lambda: F(model, x, likelihood="poisson"), ValueError, "likelihood"),
        ("num_samples 0", lambda: F(model, x, estimator="mc", num_samples=0), ValueError, "num_samples"),
        ("num_samples float", lambda: F(model, x, estimator="mc", num_samples=2.0), TypeError, "num_samples"),
        ("batch_size 0", lambda: F(model, x, batch_size=0), ValueError, "batch_size"),
        ("batched without B", lambda: F(model, x, estimator="batched_empirical", targets=y), ValueError, "batch_size"),
        ("empirical no targets", lambda: F(model, x, estimator="empirical"), ValueError, "targets"),
        ("targets out of range", lambda: F(model, x, estimator="empirical", targets=y + 5), ValueError, "targets"),
        ("targets negative", lambda: F(model, x, estimator="empirical", targets=y - 5), ValueError, "targets"),
        ("targets float", lambda: F(model, x, estimator="empirical", targets=y.double()), TypeError, "targets"),
        ("targets length", lambda: F(model, x, estimator="empirical", targets=y[:-1]), ValueError, "targets"),
        ("targets 2-d", lambda: F(model, x, estimator="empirical", targets=y[:, None]), ValueError, "targets"),
        (
            "gaussian targets int",
            lambda: F(gauss_model, gx, likelihood="gaussian", estimator="empirical", targets=gy.long()),
            TypeError,
            "targets",
        ),
        (
            "gaussian targets shape",
            lambda: F(gauss_model, gx, likelihood="gaussian", estimator="empirical", targets=gy[:, :1]),
            ValueError,
            "targets",
        ),
        (
            "bernoulli targets 2",
            lambda: F(
                make_model(CASES[-1]),
                make_inputs(CASES[-1]),
                likelihood="bernoulli",
                estimator="empirical",
                targets=torch.full((7,), 2.0),
            ),
            ValueError,
            "targets",
        ),
        ("output shape bernoulli", lambda: F(model, x, likelihood="bernoulli"), ValueError, "model output"),
        (
            "output shape categorical C=1",
            lambda: F(make_model(GAUSSIAN[0]), make_inputs(GAUSSIAN[0])),
            ValueError,
            "model output",
        ),
        ("sigma2 0", lambda: F(gauss_model, gx, likelihood="gaussian", sigma2=0.0), ValueError, "sigma2"),
        ("generator type", lambda: F(model, x, estimator="mc", generator=0), TypeError, "generator"),
        ("matrix unknown estimator", lambda: ewc_lib.fisher_matrix(model, x, estimator="x"), ValueError, "estimator"),
        ("hessian no targets", lambda: ewc_lib.hessian(model, x, None), ValueError, "targets"),
        ("ggn nan inputs", lambda: ewc_lib.ggn(model, xnan), ValueError, "inputs"),
        (
            "expected_hessian likelihood",
            lambda: ewc_lib.expected_hessian(model, x, likelihood="normal"),
            ValueError,
            "likelihood",
        ),
    ], model


_BAD, _BAD_MODEL = _bad_calls()


@pytest.mark.parametrize("name,call,exc,argname", _BAD, ids=[b[0] for b in _BAD])
def test_bad_input_raises_and_names_the_argument(name, call, exc, argname):
    _BAD_MODEL.train()
    _BAD_MODEL[2].bias.requires_grad_(False)
    try:
        with pytest.raises(exc, match=argname):
            call()
        assert _BAD_MODEL.training and all(m.training for m in _BAD_MODEL.modules()), "train mode not restored"
        assert not _BAD_MODEL[2].bias.requires_grad and _BAD_MODEL[0].weight.requires_grad, "flags changed"
    finally:
        _BAD_MODEL[2].bias.requires_grad_(True)


def test_mode_restored_after_success_and_eval_used():
    model = ewc_lib.mlp([3, 5, 3], dropout_hidden=0.5, seed=0, dtype=torch.float64)
    x = make_inputs(CASES[0])
    model.train()
    model[0].training = False  # mixed modes must come back exactly
    a = ewc_lib.fisher_matrix(model, x)
    assert model.training and not model[0].training and model[2].training
    model.eval()
    b = ewc_lib.fisher_matrix(model, x)
    assert not model.training
    assert_close(a, b, what="train-mode call must evaluate in eval mode")


def test_works_under_no_grad():
    model, x, y = make(CATEGORICAL[0])
    with torch.no_grad():
        d = ewc_lib.fisher_diagonal(model, x, estimator="batched_empirical", targets=y, batch_size=2)
        h = ewc_lib.hessian(model, x, y)
    assert flatten_params(d).abs().sum() > 0 and h.abs().sum() > 0


# ------------------------------------------------------------------ internals and examples


def test_cholesky_factor_of_the_softmax_hessian_including_saturated_outputs():
    f = torch.cat(
        [
            torch.randn(20, 5, generator=gen(11), dtype=torch.float64) * 3,
            torch.tensor([[800.0, 0, 0, 0, 0], [0, 0, 0, 0, 800.0], [0, 800.0, 800.0, 0, 0]], dtype=torch.float64),
        ]
    )  # p exactly one-hot / two-hot (underflow)
    v = likelihoods._cholesky_output_hessian(f)
    assert v.shape == (23, 4, 5) and torch.isfinite(v).all()
    p = torch.softmax(f, -1)
    lam = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    assert_close(v.transpose(1, 2) @ v, lam, what="L L^T vs diag(p) - p p^T")


def test_docstring_examples_run():
    import doctest

    modules = (curvature.fisher, curvature.fast_mlp, curvature.second_order, curvature.params)
    for module in modules + (reference.first_order, reference.second_order):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0 and result.attempted > 0, f"{module.__name__}: {result}"


def test_generic_path_model_with_batchnorm_left_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 3)).double()
    model[1].running_mean.normal_()
    assert fast_mlp._fast_plan(model) is None
    x = make_inputs(CASES[0])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    d = ewc_lib.fisher_diagonal(model, x)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), f"{k} changed by fisher_diagonal"
    ref = reference.fisher_diagonal_loop(model, x)
    assert_close(flatten_params(d), flatten_params(ref), what="batch-norm model (eval statistics) vs loop")


def test_inplace_activation_fast_path():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.ReLU(inplace=True), nn.Linear(3, 4), nn.LeakyReLU(0.2, inplace=True), nn.Linear(4, 3)
    ).double()
    x = make_inputs(CASES[0])
    x0 = x.clone()
    d = ewc_lib.fisher_diagonal(model, x)
    assert torch.equal(x, x0), "inputs modified in place"
    assert_close(flatten_params(d), flatten_params(reference.fisher_diagonal_loop(model, x)), what="inplace")


def test_dense_functions_refuse_huge_models_and_hessian_chunking():
    big = ewc_lib.mlp([784, 400, 10], seed=0, dtype=torch.float64)
    x = torch.zeros(2, 784, dtype=torch.float64)
    for fn in (ewc_lib.fisher_matrix, ewc_lib.ggn, ewc_lib.expected_hessian):
        with pytest.raises(ValueError, match="MAX_DENSE_PARAMS"):
            fn(big, x)
    model, x, y = make(CATEGORICAL[0])
    assert_close(ewc_lib.hessian(model, x, y, batch_size=2), ewc_lib.hessian(model, x, y), what="hessian chunks")
    assert_close(ewc_lib.ggn(model, x, batch_size=3), ewc_lib.ggn(model, x), what="ggn chunks")
    assert_close(
        ewc_lib.expected_hessian(model, x, batch_size=4),
        ewc_lib.expected_hessian(model, x),
        what="expected_hessian chunks",
    )


@pytest.mark.parametrize("estimator", ["exact", "mc", "empirical"])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_fast_path_skips_all_zero_input_features_exactly(activation, estimator):
    # inputs with 5 of 8 features zero in every example (and, for ReLU, hidden units dead for
    # every example): the zero input columns are left out of the fast path's first-layer
    # products; the numbers must not move
    model = ewc_lib.mlp([8, 6, 5, 3], activation=activation, seed=4, dtype=torch.float64)
    with torch.no_grad():
        model[0].bias[:3] = -50.0
    x = torch.randn(9, 8, generator=gen(8), dtype=torch.float64)
    x[:, [0, 2, 3, 5, 7]] = 0.0
    y = torch.randint(0, 3, (9,), generator=gen(9))
    kw = dict(estimator=estimator, targets=y, num_samples=2, batch_size=4)
    d = ewc_lib.fisher_diagonal(model, x, generator=gen(1), **kw)
    assert torch.equal(d["0.weight"][:, [0, 2, 3, 5, 7]], torch.zeros(6, 5, dtype=torch.float64))
    saved = curvature.ZERO_FEATURES_MIN_FRACTION
    curvature.ZERO_FEATURES_MIN_FRACTION = 2.0  # never skip
    try:
        dense = ewc_lib.fisher_diagonal(model, x, generator=gen(1), **kw)
    finally:
        curvature.ZERO_FEATURES_MIN_FRACTION = saved
    sampled = ewc_lib.sample_targets(model, x, num_samples=2, generator=gen(1))
    ref = reference.fisher_diagonal_loop(model, x, estimator=estimator, targets=y, sampled_targets=sampled)
    assert_close(flatten_params(d), flatten_params(ref), what=f"{activation}/{estimator}: skipping vs loop")
    assert_close(flatten_params(d), flatten_params(dense), what=f"{activation}/{estimator}: skipping vs dense")
    assert fast_mlp._nonzero_features(x).tolist() == [1, 4, 6]
    assert fast_mlp._nonzero_features(-x.abs()).tolist() == [1, 4, 6]  # negative entries count too
    assert fast_mlp._nonzero_features(torch.ones(3, 8, dtype=torch.float64)) is None  # nothing to skip


# ------------------------------------------------------------------ statements of the Fisher identities chapter


def _outcome_probabilities(f, likelihood):
    """(N, K) probabilities of the K outcomes given outputs f, and the (K,) outcomes (categorical, bernoulli)."""
    if likelihood == "categorical":
        return torch.softmax(f, -1), torch.arange(f.shape[-1])
    s = torch.sigmoid(f[:, 0])
    return torch.stack([1 - s, s], -1), torch.tensor([0.0, 1.0], dtype=torch.float64)


@pytest.mark.parametrize("case", [c for c in CASES if c.likelihood != "gaussian"], ids=str)
def test_fisher_of_the_label_vector_is_n_times_the_mean_fisher(case):
    # lem-fisher-additive by enumeration: for N = 3 inputs and independent labels drawn from the
    # model, E[(sum_n s_n)(sum_n s_n)^T] over all K^3 label vectors equals N times the mean Fisher
    model, x, _ = make(case)
    x = x[:3]
    n = x.shape[0]
    with torch.no_grad():
        probs, outcomes = _outcome_probabilities(model(x), case.likelihood)
    k = len(outcomes)
    scores = torch.stack(  # (N, K, P): score of outcome k at input n, by the oracle's loop
        [reference.per_example_scores(model, x, outcomes[j].repeat(n), likelihood=case.likelihood) for j in range(k)],
        1,
    )
    vectors = torch.tensor(list(itertools.product(range(k), repeat=n)))  # (K^N, N)
    rows = torch.arange(n)
    joint_score = scores[rows, vectors].sum(1)
    joint_prob = probs[rows, vectors].prod(1)
    assert_close(joint_prob.sum(), torch.tensor(1.0, dtype=torch.float64), what=f"{case}: probabilities sum to one")
    joint_fisher = torch.einsum("v,vi,vj->ij", joint_prob, joint_score, joint_score)
    mean_fisher = ewc_lib.fisher_matrix(model, x, likelihood=case.likelihood)
    assert_close(joint_fisher, n * mean_fisher, what=f"{case}: Fisher of the label vector vs N F")


@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[-2]], ids=str)
def test_mean_kl_is_half_the_fisher_quadratic_form(case):
    # prop-fisher-local-kl: (1/N) sum_n KL(p_theta* || p_theta*+t v) = t^2 v^T F v / 2 + O(t^3), so the
    # relative error of the quadratic form falls like t: by ~10 when t falls by 10
    model, x, _ = make(case)
    theta = nn.utils.parameters_to_vector(model.parameters()).detach()
    v = torch.randn(theta.numel(), generator=gen(3), dtype=torch.float64)
    v /= v.norm()
    with torch.no_grad():
        probs, _ = _outcome_probabilities(model(x), case.likelihood)
    fisher = ewc_lib.fisher_matrix(model, x, likelihood=case.likelihood)
    quad = 0.5 * float(v @ fisher @ v)

    def mean_kl(t):
        with torch.no_grad():
            moved = torch.func.functional_call(model, curvature.unflatten_params(theta + t * v, model), (x,))
        new, _ = _outcome_probabilities(moved, case.likelihood)
        return float((probs * (probs.log() - new.log())).sum(-1).mean())

    err = {t: abs(mean_kl(t) / (t**2 * quad) - 1) for t in (1e-2, 1e-3)}
    assert err[1e-3] < 1e-2, f"{case}: KL vs quadratic form off by {err[1e-3]:.2e} at t = 1e-3"
    assert 7 < err[1e-2] / err[1e-3] < 13, f"{case}: the error did not fall like t: {err}"


@pytest.mark.parametrize("case", CASES, ids=str)
def test_hessian_minus_fisher_within_the_residual_bound(case):
    # thm-fisher-hessian-residual: ||H - F||_2 <= beta * mean_n ||r_n||_1, with beta the largest spectral
    # norm of a per-example output Hessian grad^2 f_nk and r_n = d(-log p(y_n | f))/d f at f_n
    model, x, y = make(case)
    kw = dict(likelihood=case.likelihood, sigma2=case.sigma2)
    H = ewc_lib.hessian(model, x, y, **kw)
    gap = float(torch.linalg.matrix_norm(H - ewc_lib.fisher_matrix(model, x, **kw), ord=2))
    theta = nn.utils.parameters_to_vector(model.parameters()).detach()
    with torch.no_grad():
        f = model(x)
    if case.likelihood == "categorical":
        r = torch.softmax(f, -1) - nn.functional.one_hot(y, f.shape[-1])
    elif case.likelihood == "bernoulli":
        r = torch.sigmoid(f) - y.reshape(-1, 1)
    else:
        r = (f - y.reshape(f.shape)) / case.sigma2
    beta = 0.0
    for i in range(x.shape[0]):
        for k in range(f.shape[-1]):

            def f_nk(th, i=i, k=k):
                return torch.func.functional_call(model, curvature.unflatten_params(th, model), (x[i : i + 1],))[0, k]

            hess = torch.autograd.functional.hessian(f_nk, theta)
            beta = max(beta, float(torch.linalg.matrix_norm(hess, ord=2)))
    bound = beta * float(r.abs().sum(-1).mean())
    # round-off allowed relative to the size of H
    assert gap <= bound * (1 + EXACT_RTOL) + EXACT_RTOL * float(torch.linalg.matrix_norm(H, ord=2)), (
        f"{case}: ||H - F||_2 = {gap:.3e} > bound {bound:.3e}"
    )


def test_hessian_equals_fisher_where_the_output_is_linear():
    # prop-hessian-fisher-linear, with labels drawn at random (no fit at all)
    g = gen(21)
    x = torch.randn(15, 4, generator=g, dtype=torch.float64)
    y_cat = torch.randint(0, 3, (15,), generator=g)
    # case 1, generalised linear models: H = F entirely (softmax, logistic, linear regression)
    for likelihood, out, y in [
        ("categorical", 3, y_cat),
        ("bernoulli", 1, torch.randint(0, 2, (15,), generator=g).double()),
        ("gaussian", 2, 3 * torch.randn(15, 2, generator=g, dtype=torch.float64)),
    ]:
        glm = ewc_lib.mlp([4, out], seed=1, dtype=torch.float64)
        kw = dict(likelihood=likelihood, sigma2=0.5)
        assert_close(ewc_lib.hessian(glm, x, y, **kw), ewc_lib.fisher_matrix(glm, x, **kw), what=f"GLM {likelihood}")

    def blocks(model):
        sizes = [p.numel() for p in model.parameters()]
        edges = list(itertools.accumulate([0] + sizes))
        return [slice(edges[2 * i], edges[2 * i + 2]) for i in range(len(sizes) // 2)]

    # case 2, the last layer of any network: only the last-layer block agrees (tanh)
    net = ewc_lib.mlp([4, 5, 5, 3], activation="tanh", seed=2, dtype=torch.float64)
    H, F = ewc_lib.hessian(net, x, y_cat), ewc_lib.fisher_matrix(net, x)
    layers = blocks(net)
    assert_close(H[layers[-1], layers[-1]], F[layers[-1], layers[-1]], what="tanh: last-layer block")
    assert (H[layers[0], layers[0]] - F[layers[0], layers[0]]).abs().max() > 1e-2 * F.abs().max()
    # piecewise-linear activations: every layer's own block agrees (ReLU), the coupling blocks do not
    net = ewc_lib.mlp([4, 5, 5, 3], activation="relu", seed=2, dtype=torch.float64)
    H, F = ewc_lib.hessian(net, x, y_cat), ewc_lib.fisher_matrix(net, x)
    for sl in blocks(net):
        assert_close(H[sl, sl], F[sl, sl], scale=F.abs().max(), what="ReLU: one layer's block")
    assert (H[layers[0], layers[1]] - F[layers[0], layers[1]]).abs().max() > 1e-2 * F.abs().max()


@pytest.mark.parametrize("case", [c for c in CASES if c.activation == "relu"], ids=str)
def test_relu_cases_have_live_units(case):
    """A ReLU case whose hidden units are all off tests nothing but the last bias: every hidden
    layer must have each unit on for some input, and some unit off for some input (so the kinks
    matter)."""
    model, x, _ = make(case)
    h = x
    for layer in model:
        h = layer(h)
        if isinstance(layer, torch.nn.ReLU):
            on = h > 0
            assert on.any(0).all(), f"{case}: a unit of {layer} is off for every input"
            assert (~on).any(), f"{case}: every unit of {layer} is on for every input"
