"""Tests of ewc_lib.overlap: the Frechet distance and Fisher overlap of Kirkpatrick et al."""

import doctest

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ewc_lib import overlap
from ewc_lib.models import mlp
from ewc_lib.overlap import fisher_overlap, frechet_distance_sq, layerwise_overlap
from ewc_lib.testing import EXACT_RTOL

#: matrix square roots of nearly singular PSD matrices lose about half the digits.
SQRT_TOL = 1e-6


def random_psd(n, rank, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, rank, generator=g, dtype=torch.float64)
    return a @ a.T


diag_strategy = (
    st.integers(1, 12)
    .flatmap(
        lambda n: st.tuples(
            st.lists(st.floats(0, 1e3, allow_nan=False), min_size=n, max_size=n),
            st.lists(st.floats(0, 1e3, allow_nan=False), min_size=n, max_size=n),
        )
    )
    .filter(lambda ab: sum(ab[0]) > 1e-6 and sum(ab[1]) > 1e-6)
)


def test_doctests():
    failures, _ = doctest.testmod(overlap)
    assert failures == 0


@given(diag_strategy)
@settings(max_examples=200, deadline=None)
def test_diagonal_overlap_in_unit_interval_and_symmetric(ab):
    a, b = (torch.tensor(v, dtype=torch.float64) for v in ab)
    o = fisher_overlap(a, b)
    assert 0.0 <= o <= 1.0
    assert o == pytest.approx(fisher_overlap(b, a), abs=EXACT_RTOL)
    assert fisher_overlap(a, a) == pytest.approx(1.0, abs=EXACT_RTOL)


@given(diag_strategy)
@settings(max_examples=100, deadline=None)
def test_diagonal_formula_is_bhattacharyya(ab):
    a, b = (np.array(v, dtype=np.float64) for v in ab)
    ah, bh = a / a.sum(), b / b.sum()
    half_sq = 0.5 * ((np.sqrt(ah) - np.sqrt(bh)) ** 2).sum()
    bc = np.sqrt(ah * bh).sum()
    d2 = frechet_distance_sq(torch.from_numpy(a), torch.from_numpy(b))
    assert d2 == pytest.approx(half_sq, abs=EXACT_RTOL)
    assert d2 == pytest.approx(1 - bc, abs=EXACT_RTOL)


@pytest.mark.parametrize("seed", range(5))
def test_overlap_one_iff_proportional(seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(20, generator=g, dtype=torch.float64)
    assert fisher_overlap(a, 7.5 * a) == pytest.approx(1.0, abs=EXACT_RTOL)
    b = a.clone()
    b[0] *= 2.0  # not proportional any more
    assert fisher_overlap(a, b) < 1.0 - 1e-6
    f = random_psd(6, 6, seed)
    assert fisher_overlap(f, 0.1 * f) == pytest.approx(1.0, abs=SQRT_TOL)
    assert fisher_overlap(f, random_psd(6, 6, seed + 100)) < 1.0 - 1e-6


def test_disjoint_supports_give_zero():
    a = torch.tensor([1.0, 2.0, 0.0, 0.0])
    b = torch.tensor([0.0, 0.0, 3.0, 0.5])
    assert fisher_overlap(a, b) == 0.0
    assert frechet_distance_sq(a, b) == 1.0
    # dense matrices with orthogonal ranges
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    f1 = q[:, :2] @ q[:, :2].T
    f2 = q[:, 2:] @ torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)) @ q[:, 2:].T
    assert fisher_overlap(f1, f2) == pytest.approx(0.0, abs=SQRT_TOL)


@given(diag_strategy)
@settings(max_examples=100, deadline=None)
def test_dense_equals_diagonal_for_diagonal_matrices(ab):
    a, b = (torch.tensor(v, dtype=torch.float64) for v in ab)
    assert fisher_overlap(torch.diag(a), torch.diag(b)) == pytest.approx(fisher_overlap(a, b), abs=SQRT_TOL)
    # mixed input: a diagonal against a matrix
    assert fisher_overlap(a, torch.diag(b)) == pytest.approx(fisher_overlap(a, b), abs=SQRT_TOL)


@pytest.mark.parametrize(
    "n,rank1,rank2,seed", [(3, 3, 3, 0), (6, 6, 2, 1), (8, 3, 5, 2), (10, 10, 10, 3), (4, 1, 4, 4)]
)
def test_dense_matches_scipy_sqrtm(n, rank1, rank2, seed):
    f1, f2 = random_psd(n, rank1, seed), random_psd(n, rank2, seed + 50)
    h1, h2 = (f / torch.trace(f) for f in (f1, f2))
    root = scipy.linalg.sqrtm(h1.numpy() @ h2.numpy())
    ref = 0.5 * np.trace(h1.numpy() + h2.numpy() - 2 * root).real
    assert frechet_distance_sq(f1, f2) == pytest.approx(ref, abs=SQRT_TOL)
    assert frechet_distance_sq(f2, f1) == pytest.approx(ref, abs=SQRT_TOL)
    assert 0.0 <= fisher_overlap(f1, f2) <= 1.0


@pytest.mark.parametrize("seed", range(4))
def test_missing_square_erratum(seed):
    """For commuting (diagonal) Fishers d^2 = 1/2 ||F1^1/2 - F2^1/2||_F^2, with the square."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.rand(6, generator=g, dtype=torch.float64), torch.rand(6, generator=g, dtype=torch.float64)
    ah, bh = a / a.sum(), b / b.sum()
    fro = torch.linalg.norm(torch.diag(ah.sqrt()) - torch.diag(bh.sqrt()))
    d2 = frechet_distance_sq(a, b)
    assert d2 == pytest.approx(0.5 * fro.item() ** 2, abs=EXACT_RTOL)
    assert abs(d2 - 0.5 * fro.item()) > 1e-3  # the printed form without the square differs


def test_dict_input_flattens_in_key_order():
    f1 = {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "b": torch.tensor([0.5, 0.0])}
    f2 = {"b": torch.tensor([1.0, 1.0]), "w": torch.tensor([[4.0, 3.0], [2.0, 1.0]])}
    flat1 = torch.cat([f1["w"].reshape(-1), f1["b"]])
    flat2 = torch.cat([f2["w"].reshape(-1), f2["b"]])
    assert fisher_overlap(f1, f2) == pytest.approx(fisher_overlap(flat1, flat2), abs=EXACT_RTOL)


def test_layerwise_overlap_matches_manual():
    net = mlp([5, 4, 3, 2], seed=0)
    g = torch.Generator().manual_seed(1)
    f1 = {n: torch.rand(p.shape, generator=g) for n, p in net.named_parameters()}
    f2 = {n: torch.rand(p.shape, generator=g) for n, p in net.named_parameters()}
    result = layerwise_overlap(f1, f2, net)
    assert [name for name, _ in result] == ["0", "2", "4"]
    for name, value in result:
        a = torch.cat([f1[f"{name}.weight"].reshape(-1), f1[f"{name}.bias"]]).double()
        b = torch.cat([f2[f"{name}.weight"].reshape(-1), f2[f"{name}.bias"]]).double()
        manual = (torch.sqrt(a / a.sum() * b / b.sum())).sum().item()
        assert value == pytest.approx(manual, abs=EXACT_RTOL)


def test_layerwise_overlap_with_dropout_layers_and_no_bias():
    net = mlp([5, 4, 2], dropout_input=0.2, dropout_hidden=0.5, bias=False, seed=0)
    f = {n: torch.ones(p.shape) for n, p in net.named_parameters()}
    names = [name for name, _ in layerwise_overlap(f, f, net)]
    assert names == [n for n, m in net.named_modules() if isinstance(m, torch.nn.Linear)]


@pytest.mark.parametrize(
    "bad,match",
    [
        (torch.tensor([1.0, -0.1]), ">= 0"),
        (torch.tensor([1.0, float("nan")]), "NaN"),
        (torch.tensor([1.0, float("inf")]), "NaN or inf"),
        (torch.tensor([0.0, 0.0]), "trace is zero"),
        (torch.tensor([1.0, 2.0, 3.0]), "shapes differ"),
        (torch.tensor([[1.0, 2.0], [0.0, 1.0]]), "symmetric"),
        (torch.tensor([[1.0, 2.0], [2.0, 1.0]]), "positive semi-definite"),
        (torch.ones(2, 2, 2), "1-D diagonals or 2-D"),
    ],
)
def test_bad_input_raises(bad, match):
    good = torch.tensor([1.0, 1.0]) if bad.ndim != 2 else torch.eye(2)
    with pytest.raises(ValueError, match=match):
        fisher_overlap(good, bad)
    with pytest.raises(ValueError):
        fisher_overlap(bad, good)


def test_bad_dicts_and_types_raise():
    with pytest.raises(ValueError, match="keys differ"):
        fisher_overlap({"a": torch.ones(2)}, {"b": torch.ones(2)})
    with pytest.raises(ValueError, match="shapes differ"):
        fisher_overlap({"a": torch.ones(2)}, {"a": torch.ones(3)})
    with pytest.raises(ValueError, match="non-empty"):
        fisher_overlap({}, {})
    with pytest.raises(TypeError):
        fisher_overlap({"a": torch.ones(2)}, torch.ones(2))
    with pytest.raises(TypeError):
        fisher_overlap([1.0, 2.0], [1.0, 2.0])
    net = mlp([3, 2, 2], seed=0)
    f = {n: torch.ones_like(p) for n, p in net.named_parameters()}
    with pytest.raises(ValueError, match="no entry"):
        layerwise_overlap({k: v for k, v in f.items() if k != "2.bias"}, f, net)
    with pytest.raises(ValueError, match="expected shape"):
        layerwise_overlap({**f, "0.weight": torch.ones(3)}, f, net)
    with pytest.raises(ValueError, match="layer '2'"):
        layerwise_overlap({**f, "2.weight": torch.zeros(2, 2), "2.bias": torch.zeros(2)}, f, net)
    with pytest.raises(TypeError):
        layerwise_overlap(f, f, "not a model")


# ------------------------------------------------------------ frozen layers (issue 11, item 7)
def _manual(f1, f2, keys):
    a = torch.cat([f1[k].reshape(-1) for k in keys]).double()
    b = torch.cat([f2[k].reshape(-1) for k in keys]).double()
    return torch.sqrt(a / a.sum() * b / b.sum()).sum().item()


FROZEN = [
    ("first layer", ["0.weight", "0.bias"], ["2", "4"], ("0",)),
    ("middle layer", ["2.weight", "2.bias"], ["0", "4"], ("2",)),
    ("first weight only", ["0.weight"], ["0", "2", "4"], ()),
    ("last bias only", ["4.bias"], ["0", "2", "4"], ()),
    ("two layers", ["0.weight", "0.bias", "4.weight", "4.bias"], ["2"], ("0", "4")),
]


@pytest.mark.parametrize("name,frozen,layers,skipped", FROZEN, ids=[f[0] for f in FROZEN])
def test_layerwise_overlap_of_fisher_diagonals_with_frozen_parameters(name, frozen, layers, skipped):
    import ewc_lib

    net = mlp([4, 5, 4, 3], seed=0, dtype=torch.float64)
    for key, p in net.named_parameters():
        p.requires_grad_(key not in frozen)
    g = torch.Generator().manual_seed(2)
    xa, xb = (torch.randn(20, 4, generator=g, dtype=torch.float64) + shift for shift in (0.0, 1.0))
    f1, f2 = ewc_lib.fisher_diagonal(net, xa), ewc_lib.fisher_diagonal(net, xb)
    assert not set(frozen) & set(f1)  # fisher_diagonal leaves frozen parameters out
    result = layerwise_overlap(f1, f2, net)
    assert isinstance(result, list) and [n for n, _ in result] == layers
    assert result.skipped == skipped
    for layer, value in result:
        keys = [k for k in (f"{layer}.weight", f"{layer}.bias") if k not in frozen]
        assert result.compared[layer] == tuple(keys)
        assert value == pytest.approx(_manual(f1, f2, keys), abs=EXACT_RTOL)
        assert 0.0 < value <= 1.0 + EXACT_RTOL
    assert layerwise_overlap(f1, f1, net) == [(n, pytest.approx(1.0, abs=EXACT_RTOL)) for n in layers]


def test_layerwise_overlap_result_is_the_old_list():
    net = mlp([5, 4, 3, 2], seed=0)
    g = torch.Generator().manual_seed(1)
    f1 = {n: torch.rand(p.shape, generator=g) for n, p in net.named_parameters()}
    f2 = {n: torch.rand(p.shape, generator=g) for n, p in net.named_parameters()}
    result = layerwise_overlap(f1, f2, net)
    assert result == list(result) and len(result) == 3 and result.skipped == ()
    assert result.compared == {n: (f"{n}.weight", f"{n}.bias") for n in ("0", "2", "4")}
    assert [o for _, o in result] == [o for _, o in list(result)]


def test_layerwise_overlap_entry_in_one_fisher_only_or_none_at_all():
    net = mlp([3, 2, 2], seed=0)
    f = {n: torch.ones_like(p) for n, p in net.named_parameters()}
    without = {k: v for k, v in f.items() if not k.startswith("0.")}
    with pytest.raises(ValueError, match="fisher1: no entry '0.weight'.*fisher2 has one"):
        layerwise_overlap(without, f, net)
    with pytest.raises(ValueError, match="fisher2: no entry '0.weight'"):
        layerwise_overlap(f, without, net)
    with pytest.raises(ValueError, match="no entries for any nn.Linear"):
        layerwise_overlap({}, {}, net)
    with pytest.raises(TypeError, match=r"fisher1\['0.weight'\]"):
        layerwise_overlap({**f, "0.weight": [1.0]}, f, net)
