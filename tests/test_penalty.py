"""Tests for ewc_lib.penalty: laws of the quadratic EWC / L2 penalties, in float64.

Brute-force reference: the penalty written out on flattened vectors,
(lam/2) * sum_t sum_i F_{t,i} (theta_i - theta*_{t,i})^2.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ewc_lib import EWCPenalty, L2Penalty
from ewc_lib.testing import EXACT_ATOL, EXACT_RTOL

FAST = settings(max_examples=25, deadline=None)


def make_net(seed: int, width: int = 3) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(2, width), torch.nn.Tanh(), torch.nn.Linear(width, 2)).double()


def random_fisher(net, seed: int, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    return {n: scale * torch.rand(p.shape, generator=g, dtype=p.dtype) for n, p in net.named_parameters()}


def perturb(net, seed: int, scale: float = 0.5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def flat(d_or_params):
    if isinstance(d_or_params, dict):
        return torch.cat([v.reshape(-1) for v in d_or_params.values()])
    return torch.cat([p.detach().reshape(-1) for p in d_or_params])


def reference(lam, anchors, fishers, theta):
    return 0.5 * lam * sum(float((f * (theta - a) ** 2).sum()) for a, f in zip(anchors, fishers))


seeds = st.integers(0, 10_000)
lams = st.floats(0.0, 1e3, allow_nan=False, allow_infinity=False)


# ----------------------------------------------------------------------------- laws
@FAST
@given(seed=seeds, lam=lams, mode=st.sampled_from(["separate", "online"]))
def test_nonnegative_and_zero_at_anchor(seed, lam, mode):
    net = make_net(seed)
    pen = EWCPenalty(lam, mode=mode)
    pen.consolidate(net, random_fisher(net, seed))
    assert pen(net).item() == 0.0  # exactly zero at the anchor
    perturb(net, seed + 1)
    assert pen(net).item() >= 0.0


@FAST
@given(seed=seeds, lam=lams)
def test_value_matches_formula(seed, lam):
    net = make_net(seed)
    fisher = random_fisher(net, seed)
    anchor = flat(net.parameters()).clone()
    pen = EWCPenalty(lam)
    pen.consolidate(net, fisher)
    perturb(net, seed + 1)
    expected = reference(lam, [anchor], [flat(fisher)], flat(net.parameters()))
    assert math.isclose(pen(net).item(), expected, rel_tol=EXACT_RTOL, abs_tol=EXACT_ATOL)


@FAST
@given(seed=seeds, lam=lams, mode=st.sampled_from(["separate", "online"]), num_tasks=st.integers(1, 3))
def test_gradient_is_lam_F_delta(seed, lam, mode, num_tasks):
    """Autograd gradient == lam * sum_t F_t (theta - theta*_t) (the 1/2 cancels the 2)."""
    net = make_net(seed)
    pen = EWCPenalty(lam, mode=mode)
    anchors, fishers = [], []
    for t in range(num_tasks):
        perturb(net, seed + 10 * t)
        f = random_fisher(net, seed + 10 * t + 1)
        anchors.append({n: p.detach().clone() for n, p in net.named_parameters()})
        fishers.append(f)
        pen.consolidate(net, f)
    perturb(net, seed + 999)
    pen(net).backward()
    for name, p in net.named_parameters():
        if mode == "separate":
            expected = lam * sum(f[name] * (p.detach() - a[name]) for a, f in zip(anchors, fishers))
        else:  # one term: summed Fishers, latest anchor
            expected = lam * sum(f[name] for f in fishers) * (p.detach() - anchors[-1][name])
        torch.testing.assert_close(p.grad, expected, rtol=EXACT_RTOL, atol=EXACT_ATOL)


@FAST
@given(seed=seeds, lam=lams)
def test_separate_equals_online_after_one_task(seed, lam):
    net = make_net(seed)
    fisher = random_fisher(net, seed)
    sep, onl = EWCPenalty(lam, "separate"), EWCPenalty(lam, "online", gamma=0.5)
    sep.consolidate(net, fisher)
    onl.consolidate(net, fisher)
    perturb(net, seed + 1)
    assert math.isclose(sep(net).item(), onl(net).item(), rel_tol=EXACT_RTOL, abs_tol=EXACT_ATOL)


@FAST
@given(seed=seeds, lam=lams, gamma=st.floats(0.01, 1.0))
def test_online_recursion(seed, lam, gamma):
    """Online after two tasks == one penalty with gamma*F_A + F_B anchored at the latest optimum."""
    net = make_net(seed)
    f_a, f_b = random_fisher(net, seed), random_fisher(net, seed + 1)
    onl = EWCPenalty(lam, "online", gamma=gamma)
    onl.consolidate(net, f_a)
    perturb(net, seed + 2)
    onl.consolidate(net, f_b)
    single = EWCPenalty(lam)
    single.consolidate(net, {n: gamma * f_a[n] + f_b[n] for n in f_a})
    perturb(net, seed + 3)
    assert onl.num_tasks == 2 and onl.num_terms == 1
    assert math.isclose(onl(net).item(), single(net).item(), rel_tol=EXACT_RTOL, abs_tol=EXACT_ATOL)


@FAST
@given(seed=seeds, lam=lams)
def test_separate_two_tasks_sum_of_terms(seed, lam):
    net = make_net(seed)
    pen = EWCPenalty(lam)
    anchors, fishers = [], []
    for t in range(2):
        perturb(net, seed + t)
        fishers.append(random_fisher(net, seed + 5 + t))
        anchors.append(flat(net.parameters()).clone())
        pen.consolidate(net, fishers[-1])
    perturb(net, seed + 7)
    expected = reference(lam, anchors, [flat(f) for f in fishers], flat(net.parameters()))
    assert pen.num_terms == 2
    assert math.isclose(pen(net).item(), expected, rel_tol=EXACT_RTOL, abs_tol=EXACT_ATOL)


@FAST
@given(seed=seeds, lam=lams, mode=st.sampled_from(["separate", "online"]))
def test_l2_is_ewc_with_unit_fisher(seed, lam, mode):
    net = make_net(seed)
    l2, ewc = L2Penalty(lam, mode=mode), EWCPenalty(lam, mode=mode)
    for t in range(2):
        perturb(net, seed + t)
        l2.consolidate(net)
        ewc.consolidate(net, {n: torch.ones_like(p) for n, p in net.named_parameters()})
    perturb(net, seed + 9)
    assert math.isclose(l2(net).item(), ewc(net).item(), rel_tol=EXACT_RTOL, abs_tol=EXACT_ATOL)


def test_anchor_is_a_copy_and_fisher_is_a_copy():
    net = make_net(0)
    fisher = random_fisher(net, 0)
    pen = EWCPenalty(1.0)
    pen.consolidate(net, fisher)
    for f in fisher.values():
        f.mul_(100.0)  # changing the caller's dict must not change the stored Fisher
    perturb(net, 1)
    assert pen(net).item() > 0.0  # the anchor did not move with the parameters
    stored = pen.fishers[0]
    assert all(float(v.max()) <= 1.0 for v in stored.values())


def test_empty_penalty_is_zero_and_reset():
    net = make_net(0)
    pen = EWCPenalty(3.0)
    assert pen(net).item() == 0.0 and pen.num_tasks == 0
    pen.consolidate(net, random_fisher(net, 0))
    perturb(net, 1)
    assert pen(net).item() > 0
    pen.reset()
    assert pen.num_tasks == 0 and pen(net).item() == 0.0


def test_penalty_lam_zero_is_zero():
    net = make_net(0)
    pen = EWCPenalty(0.0)
    pen.consolidate(net, random_fisher(net, 0))
    perturb(net, 1)
    assert pen(net).item() == 0.0


def test_state_dict_roundtrip():
    net = make_net(0)
    pen = EWCPenalty(7.0, mode="online", gamma=0.8)
    pen.consolidate(net, random_fisher(net, 0))
    perturb(net, 1)
    pen.consolidate(net, random_fisher(net, 2))
    other = EWCPenalty(1.0)
    other.load_state_dict(pen.state_dict())
    perturb(net, 3)
    assert other.mode == "online" and other.gamma == 0.8 and other.num_tasks == 2
    assert other(net).item() == pen(net).item()


def test_float32_model():
    net = torch.nn.Linear(3, 2)
    pen = EWCPenalty(2.0)
    pen.consolidate(net, {n: torch.ones_like(p) for n, p in net.named_parameters()})
    assert pen(net).dtype == torch.float32


# --------------------------------------------------------------------- bad input
def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="lam"):
        EWCPenalty(-1.0)
    with pytest.raises(ValueError, match="lam"):
        EWCPenalty(float("nan"))
    with pytest.raises(TypeError, match="lam"):
        EWCPenalty("1")
    with pytest.raises(ValueError, match="mode"):
        EWCPenalty(1.0, mode="sum")
    for gamma in (0.0, -0.5, 1.5, float("nan")):
        with pytest.raises(ValueError, match="gamma"):
            EWCPenalty(1.0, mode="online", gamma=gamma)
    with pytest.raises(ValueError, match="gamma"):
        EWCPenalty(1.0, mode="separate", gamma=0.9)
    with pytest.raises(ValueError, match="lam"):
        L2Penalty(-2.0)


def test_bad_fisher():
    net = make_net(0)
    good = random_fisher(net, 0)
    pen = EWCPenalty(1.0)
    with pytest.raises(TypeError, match="fisher"):
        pen.consolidate(net, [v for v in good.values()])
    with pytest.raises(ValueError, match="no entry"):
        pen.consolidate(net, {k: v for k, v in list(good.items())[1:]})
    with pytest.raises(ValueError, match="not among"):
        pen.consolidate(net, {**good, "extra.weight": torch.ones(1)})
    name = next(iter(good))
    with pytest.raises(ValueError, match="shape"):
        pen.consolidate(net, {**good, name: torch.ones(7)})
    for bad in (float("nan"), float("inf")):
        f = {**good, name: good[name].clone().fill_(bad)}
        with pytest.raises(ValueError, match="NaN or inf"):
            pen.consolidate(net, f)
    with pytest.raises(ValueError, match="negative"):
        pen.consolidate(net, {**good, name: -good[name] - 1})
    with pytest.raises(TypeError, match=r"fisher\["):
        pen.consolidate(net, {**good, name: good[name].numpy()})
    with pytest.raises(TypeError, match="model"):
        pen.consolidate("not a model", good)
    assert pen.num_tasks == 0  # nothing was stored by the failed calls


def test_model_mismatch_at_penalty_time():
    net = make_net(0, width=3)
    pen = EWCPenalty(1.0)
    pen.consolidate(net, random_fisher(net, 0))
    with pytest.raises(ValueError, match="shape"):
        pen(make_net(0, width=4))
    with pytest.raises(ValueError, match="names"):
        pen(torch.nn.Linear(2, 2).double())


def test_l2_rejects_a_fisher():
    net = make_net(0)
    with pytest.raises(TypeError, match="fisher"):
        L2Penalty(1.0).consolidate(net, random_fisher(net, 0))


def test_max_curvature_is_largest_hessian_eigenvalue():
    """The penalty's Hessian is lam * sum_t diag(F_t): its top eigenvalue is max_curvature()."""
    for mode, gamma in (("separate", 1.0), ("online", 0.7)):
        net = make_net(0)
        pen = EWCPenalty(4.0, mode=mode, gamma=gamma)
        assert pen.max_curvature() == 0.0
        total = None
        for t in range(3):
            perturb(net, t)
            f = flat(random_fisher(net, 10 + t))
            pen.consolidate(net, random_fisher(net, 10 + t))
            total = f if total is None else (gamma * total + f)
        names = [n for n, _ in net.named_parameters()]
        sizes = [p.numel() for p in net.parameters()]
        shapes = [p.shape for p in net.parameters()]

        def as_fn(v):  # the stored penalty written out on the flat parameter vector
            params = dict(zip(names, [c.reshape(s) for c, s in zip(torch.split(v, sizes), shapes)]))
            out = 0.0
            for anchor, fisher in zip(pen.anchors, pen.fishers):
                for n in names:
                    out = out + (fisher[n] * (params[n] - anchor[n]) ** 2).sum()
            return 0.5 * pen.lam * out

        hess = torch.autograd.functional.hessian(as_fn, flat(net.parameters()))
        top = float(torch.linalg.eigvalsh(hess).max())
        assert math.isclose(pen.max_curvature(), top, rel_tol=1e-10)
        assert math.isclose(pen.max_curvature(), 4.0 * float(total.max()), rel_tol=1e-12)


# ------------------------------------------------------- load_state_dict validation (issue 11)
def _state(mode="separate", gamma=1.0, tasks=2, cls=EWCPenalty):
    net = make_net(0)
    pen = cls(3.0, mode=mode, gamma=gamma)
    for t in range(tasks):
        perturb(net, t)
        pen.consolidate(net) if cls is L2Penalty else pen.consolidate(net, random_fisher(net, t))
    return pen.state_dict()


def _with(state, **changes):
    out = {k: v for k, v in state.items()}
    out.update(changes)
    return out


def _term(state, field, t, name, value):
    terms = [dict(d) for d in state[field]]
    terms[t][name] = value
    return _with(state, **{field: terms})


def _corrupt_states():
    s = _state()
    on = _state("online", 0.5, tasks=2)
    name = next(iter(s["anchors"][0]))
    a0 = s["anchors"][0][name]
    return [
        ("nan anchor", _term(s, "anchors", 1, name, a0 * float("nan")), ValueError, r"anchors\[1\]\['0.weight'\].*NaN"),
        ("inf anchor", _term(s, "anchors", 0, name, a0 + float("inf")), ValueError, r"anchors\[0\]"),
        ("nan fisher", _term(s, "fishers", 0, name, a0 * float("nan")), ValueError, r"fishers\[0\].*NaN"),
        ("negative fisher", _term(s, "fishers", 1, name, -a0.abs() - 1), ValueError, r"fishers\[1\].*negative"),
        ("negative num_tasks", _with(s, num_tasks=-1), ValueError, "num_tasks"),
        ("bool num_tasks", _with(s, num_tasks=True), TypeError, "num_tasks"),
        ("float num_tasks", _with(s, num_tasks=2.0), TypeError, "num_tasks"),
        ("num_tasks vs terms (separate)", _with(s, num_tasks=3), ValueError, "num_tasks"),
        ("online with two terms", _with(on, anchors=s["anchors"], fishers=s["fishers"]), ValueError, "num_tasks"),
        ("online, no task, one term", _with(on, num_tasks=0), ValueError, "num_tasks"),
        ("list where a tensor belongs", _term(s, "anchors", 0, name, a0.tolist()), TypeError, r"anchors\[0\]"),
        ("numpy fisher", _term(s, "fishers", 0, name, a0.numpy()), TypeError, r"fishers\[0\]"),
        ("anchors not a list", _with(s, anchors=s["anchors"][0]), TypeError, "anchors"),
        ("fisher term not a dict", _with(s, fishers=[s["fishers"][0], 5]), TypeError, r"fishers\[1\]"),
        ("a fisher missing", _with(s, fishers=s["fishers"][:1]), ValueError, "fishers"),
        ("fisher name missing", _term(s, "fishers", 0, "extra", a0), ValueError, r"fishers\[0\]"),
        ("fisher shape", _term(s, "fishers", 0, name, a0[:1]), ValueError, r"fishers\[0\].*shape"),
        (
            "terms with other names",
            _term(_term(s, "anchors", 1, "extra", a0), "fishers", 1, "extra", a0.abs()),
            ValueError,
            r"anchors\[1\].*differ",
        ),
        ("integer anchor", _term(s, "anchors", 0, name, a0.long()), TypeError, r"anchors\[0\]"),
        ("empty anchor", _with(s, anchors=[{}, s["anchors"][1]]), ValueError, r"anchors\[0\]"),
        ("unknown key", _with(s, extra=1), ValueError, "unknown"),
        ("missing key", {k: v for k, v in s.items() if k != "gamma"}, ValueError, "missing"),
        ("lam", _with(s, lam=-1.0), ValueError, "lam"),
        ("mode", _with(s, mode=["online"]), ValueError, "mode"),
        ("gamma", _with(on, gamma=1.5), ValueError, "gamma"),
        ("not a dict", [("lam", 1.0)], TypeError, "state"),
    ]


CORRUPT = _corrupt_states()


@pytest.mark.parametrize("name,state,exc,field", CORRUPT, ids=[c[0] for c in CORRUPT])
def test_load_state_dict_refuses_corrupt_state_and_changes_nothing(name, state, exc, field):
    pen = EWCPenalty(5.0)
    net = make_net(0)
    pen.consolidate(net, random_fisher(net, 9))
    before = pen.state_dict()
    with pytest.raises(exc, match=field):
        pen.load_state_dict(state)
    after = pen.state_dict()
    assert after["lam"] == before["lam"] and after["num_tasks"] == before["num_tasks"]
    assert all(torch.equal(a, b) for a, b in zip(flat(after["anchors"][0]), flat(before["anchors"][0])))


def test_l2_load_checks_the_unit_stiffness():
    for mode, gamma, tasks in (("separate", 1.0, 2), ("online", 0.5, 3)):
        state = _state(mode, gamma, tasks, cls=L2Penalty)
        other = L2Penalty(1.0)
        other.load_state_dict(state)  # a genuine L2 state loads
        assert other.num_tasks == tasks and other.mode == mode
        bad = _term(
            state, "fishers", 0, next(iter(state["fishers"][0])), 2.0 * next(iter(state["fishers"][0].values()))
        )
        with pytest.raises(ValueError, match=r"fishers\[0\].*stiffness"):
            L2Penalty(1.0).load_state_dict(bad)
    EWCPenalty(1.0).load_state_dict(_state(cls=L2Penalty))  # any valid Fisher is fine for EWC


def test_load_state_dict_accepts_what_state_dict_can_hold():
    s = _state("online", 0.9, tasks=3)  # three tasks, one online term
    net = make_net(1)
    for num_tasks in (3, np.int64(3), torch.tensor(3)):
        pen = EWCPenalty(1.0)
        pen.load_state_dict(
            _with(
                s, num_tasks=num_tasks, lam=torch.tensor(3.0), anchors=tuple(s["anchors"]), fishers=tuple(s["fishers"])
            )
        )
        assert pen.num_tasks == 3 and isinstance(pen.num_tasks, int) and pen.lam == 3.0
        ref = EWCPenalty(1.0)
        ref.load_state_dict(s)
        assert pen(net).item() == ref(net).item()
    empty = EWCPenalty(2.0).state_dict()
    pen = EWCPenalty(1.0)
    pen.load_state_dict(empty)
    assert pen.num_tasks == 0 and pen(net).item() == 0.0


def test_consolidate_separate_refuses_a_different_model():
    pen = EWCPenalty(1.0)
    pen.consolidate(make_net(0, width=3), random_fisher(make_net(0, width=3), 0))
    other = make_net(0, width=4)
    with pytest.raises(ValueError, match="model"):
        pen.consolidate(other, random_fisher(other, 1))
    assert pen.num_tasks == 1


# ------------------------------------------------------------- .to(device, dtype) (issue 11)
@pytest.mark.parametrize("mode,gamma", [("separate", 1.0), ("online", 0.7)])
def test_to_dtype_moves_all_state(mode, gamma):
    net = make_net(0)
    pen = EWCPenalty(4.0, mode=mode, gamma=gamma)
    for t in range(2):
        perturb(net, t)
        pen.consolidate(net, random_fisher(net, t))
    perturb(net, 5)
    value64 = pen(net).item()
    assert pen.to(dtype=torch.float32) is pen
    assert all(t.dtype == torch.float32 for d in pen.anchors + pen.fishers for t in d.values())
    net32 = net.float()
    #: float32 penalty of O(1) terms: a few roundings of 1e-7 each
    assert math.isclose(pen(net32).item(), value64, rel_tol=1e-5)
    assert pen(net32).dtype == torch.float32
    # proximal_step uses the moved state (closed form of its docstring, per parameter)
    before = {n: p.detach().double().clone() for n, p in net32.named_parameters()}
    pen.proximal_step(net32, np.float64(0.1))
    step = 0.1 * pen.lam
    for name, p in net32.named_parameters():
        stiff = sum(f[name].double() for f in pen.fishers)
        pull = sum(f[name].double() * a[name].double() for f, a in zip(pen.fishers, pen.anchors))
        expected = (before[name] + step * pull) / (1 + step * stiff)
        assert torch.allclose(p.detach().double(), expected, rtol=1e-5, atol=1e-6)


def test_model_on_another_device_is_a_clear_error_and_to_fixes_it():
    net = make_net(0)
    pen = EWCPenalty(2.0)
    pen.consolidate(net, random_fisher(net, 0))
    meta = make_net(0).to("meta")  # another device, available on every machine
    for call in (
        lambda: pen(meta),
        lambda: pen.proximal_step(meta, 0.1),
        lambda: pen.consolidate(meta, {n: torch.ones_like(p) for n, p in meta.named_parameters()}),
    ):
        with pytest.raises(ValueError, match=r"model.*meta.*penalty\.to"):
            call()
    assert pen.to("meta") is pen
    assert all(t.device.type == "meta" for d in pen.anchors + pen.fishers for t in d.values())
    assert pen(meta).device.type == "meta"
    pen.proximal_step(meta, 0.1)  # runs on the meta device
    cpu = EWCPenalty(2.0)
    cpu.consolidate(net, random_fisher(net, 0))
    assert cpu.to(torch.device("cpu"), torch.float32).anchors[0]["0.weight"].dtype == torch.float32


def test_to_rejects_bad_arguments():
    pen = EWCPenalty(1.0)
    with pytest.raises(TypeError, match="dtype"):
        pen.to(dtype=torch.int64)
    with pytest.raises(TypeError, match="dtype"):
        pen.to(dtype="float32")
    with pytest.raises(TypeError, match="device"):
        pen.to(device=3.5)
    assert L2Penalty(1.0).to(dtype=torch.float32).num_tasks == 0


def test_scalars_as_numpy_and_0d_tensors():
    net = make_net(0)
    for lam in (np.float32(2.0), torch.tensor(2.0), np.array(2.0), np.int64(2)):
        pen = EWCPenalty(lam, mode="online", gamma=torch.tensor(0.5))
        assert pen.lam == 2.0 and pen.gamma == 0.5
        pen.consolidate(net, random_fisher(net, 0))
        perturb(net, 1)
        pen.proximal_step(net, torch.tensor(0.01))
    with pytest.raises(TypeError, match="lam"):
        EWCPenalty(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="lr"):
        EWCPenalty(1.0).proximal_step(net, torch.tensor(-1.0))
