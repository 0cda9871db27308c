"""Parameters used more than once (issue 11, item 1), and ``ewc_lib.fisher_path``.

A Linear module repeated in an ``nn.Sequential``, two modules sharing one weight or bias, a
repeated sub-block, a custom forward that uses a parameter twice: the gradient of such a
parameter is the *sum* of its uses, ``g = g1 + g2``, and its Fisher has ``(g1 + g2)^2``. The
layer-wise fast path would add ``g1^2 + g2^2``, so these models must take the generic path.
Every member is compared in float64 with the brute-force loops of ``ewc_lib.reference``
(plain autograd, which sums the uses by construction).
"""

from __future__ import annotations

import pytest
import torch
from cases import Wrapped, assert_close, gen
from torch import nn

import ewc_lib
from ewc_lib import reference
from ewc_lib.curvature import flatten_params

D = torch.float64


def _lin(i, o, seed, bias=True):
    torch.manual_seed(seed)
    return nn.Linear(i, o, bias=bias, dtype=D)


def repeated_square():
    lin = _lin(3, 3, 0)
    return nn.Sequential(lin, nn.Tanh(), lin)


def repeated_three_times():
    lin = _lin(3, 3, 1)
    return nn.Sequential(lin, nn.Tanh(), lin, nn.Sigmoid(), lin)


def repeated_in_nested_sequential():
    lin = _lin(3, 3, 2)
    return nn.Sequential(lin, nn.ReLU(), nn.Sequential(lin, nn.Tanh()), _lin(3, 3, 3))


def repeated_block():
    block = nn.Sequential(_lin(3, 3, 4), nn.Tanh())
    return nn.Sequential(block, block, _lin(3, 3, 5))


def tied_weight():
    a, b = _lin(3, 3, 6), _lin(3, 3, 7)
    b.weight = a.weight  # separate biases
    return nn.Sequential(a, nn.Tanh(), b)


def tied_bias():
    a, b = _lin(3, 3, 8), _lin(3, 3, 9)
    b.bias = a.bias
    return nn.Sequential(a, nn.Sigmoid(), b)


def tied_weight_frozen_bias():
    lin = _lin(3, 3, 10)
    lin.bias.requires_grad_(False)
    return nn.Sequential(lin, nn.LeakyReLU(0.1), lin)


def tied_gaussian():
    a, b = _lin(2, 2, 11), _lin(2, 2, 12)
    b.weight = a.weight
    return nn.Sequential(a, nn.Tanh(), b)


def tied_bernoulli():
    lin = _lin(3, 3, 13)
    return nn.Sequential(lin, nn.Tanh(), lin, nn.Tanh(), _lin(3, 1, 14))


class TwiceInForward(nn.Module):
    """A custom forward using one weight matrix twice (already generic; the loop must agree)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(15)
        self.w = nn.Parameter(torch.randn(3, 3, dtype=D) / 2)
        self.b = nn.Parameter(torch.randn(3, dtype=D) / 2)

    def forward(self, x):
        return nn.functional.linear(torch.tanh(nn.functional.linear(x, self.w, self.b)), self.w)


# name, model factory, likelihood, input features, output size
REUSE = [
    ("repeated-square", repeated_square, "categorical", 3),
    ("repeated-three-times", repeated_three_times, "categorical", 3),
    ("repeated-in-nested-sequential", repeated_in_nested_sequential, "categorical", 3),
    ("repeated-block", repeated_block, "categorical", 3),
    ("tied-weight", tied_weight, "categorical", 3),
    ("tied-bias", tied_bias, "categorical", 3),
    ("tied-weight-frozen-bias", tied_weight_frozen_bias, "categorical", 3),
    ("tied-gaussian", tied_gaussian, "gaussian", 2),
    ("tied-bernoulli", tied_bernoulli, "bernoulli", 3),
    ("custom-forward-twice", TwiceInForward, "categorical", 3),
]
ESTIMATORS = ["exact", "mc", "empirical", "batched_empirical"]


def data(likelihood, features, model, n=7, seed=0):
    x = torch.randn(n, features, generator=gen(100 + seed), dtype=D)
    with torch.no_grad():
        out = model(x)
    if likelihood == "categorical":
        y = torch.randint(0, out.shape[1], (n,), generator=gen(200 + seed))
    elif likelihood == "bernoulli":
        y = torch.randint(0, 2, (n,), generator=gen(200 + seed)).to(D)
    else:
        y = out + torch.randn(out.shape, generator=gen(200 + seed), dtype=D)
    return x, y


def snapshot(model):
    return [
        (m, attr, p, p.detach().clone()) for m in model.modules() for attr, p in m._parameters.items() if p is not None
    ]


def assert_untouched(model, snap):
    for m, attr, p, value in snap:
        assert m._parameters[attr] is p, f"{type(m).__name__}.{attr} was replaced"
        assert isinstance(p, nn.Parameter) and torch.equal(p.detach(), value)


@pytest.mark.parametrize("name,factory,likelihood,features", REUSE, ids=[r[0] for r in REUSE])
def test_reuse_takes_the_generic_path_and_says_why(name, factory, likelihood, features):
    path, reason = ewc_lib.fisher_path(factory())
    assert path == "generic", f"{name}: {reason}"
    if name != "custom-forward-twice":
        assert "same" in reason and ("repeated" in reason or "tied" in reason), reason
        assert "(g1 + g2)^2" in reason


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("name,factory,likelihood,features", REUSE, ids=[r[0] for r in REUSE])
def test_reuse_fisher_diagonal_against_loop(name, factory, likelihood, features, estimator):
    model = factory()
    x, y = data(likelihood, features, model)
    snap = snapshot(model)
    kw = dict(likelihood=likelihood, estimator=estimator, targets=y)
    d = ewc_lib.fisher_diagonal(
        model, x, num_samples=2, generator=gen(5), batch_size=3 if estimator == "batched_empirical" else None, **kw
    )
    sampled = ewc_lib.sample_targets(model, x, likelihood=likelihood, num_samples=2, generator=gen(5))
    ref = reference.fisher_diagonal_loop(model, x, sampled_targets=sampled, batch_size=3, **kw)
    assert list(d) == list(ref)
    assert_close(flatten_params(d), flatten_params(ref), what=f"{name}/{estimator}: fisher_diagonal vs loop")
    m = ewc_lib.fisher_matrix(model, x, num_samples=2, generator=gen(5), batch_size=3, **kw)
    assert_close(m.diagonal(), flatten_params(ref), what=f"{name}/{estimator}: diag(fisher_matrix) vs loop")
    assert_untouched(model, snap)


@pytest.mark.parametrize("name,factory,likelihood,features", REUSE, ids=[r[0] for r in REUSE])
def test_reuse_dense_functions_against_loops_and_model_left_intact(name, factory, likelihood, features):
    # torch.func.functional_call (torch 2.13) left a repeated module holding a plain tensor
    # instead of its Parameter; the library swaps parameters itself.
    model = factory()
    x, y = data(likelihood, features, model)
    snap = snapshot(model)
    kw = dict(likelihood=likelihood)
    assert_close(ewc_lib.ggn(model, x, **kw), reference.ggn_loop(model, x, **kw), what=f"{name}: ggn")
    assert_close(
        ewc_lib.expected_hessian(model, x, **kw),
        reference.expected_hessian_loop(model, x, **kw),
        what=f"{name}: expected_hessian",
    )
    assert_close(ewc_lib.hessian(model, x, y, **kw), reference.hessian_loop(model, x, y, **kw), what=f"{name}: hessian")
    assert_untouched(model, snap)


def test_the_issue_example_fast_path_error_is_gone():
    model = repeated_square()
    x = torch.randn(5, 3, generator=gen(1), dtype=D)
    d = flatten_params(ewc_lib.fisher_diagonal(model, x))
    assert_close(d, ewc_lib.fisher_matrix(model, x).diagonal(), what="diag vs matrix (was 0.45 off)")
    # and the per-use sum of squares (what the fast path computed) is really different
    lin = model[0]
    uses = nn.Sequential(_lin(3, 3, 0), nn.Tanh(), _lin(3, 3, 99))
    with torch.no_grad():
        uses[2].weight.copy_(lin.weight)
        uses[2].bias.copy_(lin.bias)
    per_use = ewc_lib.fisher_diagonal(uses, x)
    summed = per_use["0.weight"] + per_use["2.weight"]
    assert (summed - ewc_lib.fisher_diagonal(model, x)["0.weight"]).abs().max() > 0.05 * summed.abs().max()


# ------------------------------------------------------------------ fisher_path for other models


def _fast_models():
    torch.manual_seed(0)
    tanh = nn.Tanh()
    return [
        ("mlp", ewc_lib.mlp([3, 4, 3], seed=0, dtype=D)),
        ("repeated activation module", nn.Sequential(_lin(3, 4, 1), tanh, _lin(4, 4, 2), tanh, _lin(4, 3, 3))),
        ("nested", nn.Sequential(nn.Sequential(_lin(3, 4, 4), nn.ReLU()), _lin(4, 3, 5))),
    ]


@pytest.mark.parametrize("name,model", _fast_models(), ids=[m[0] for m in _fast_models()])
def test_fast_models_say_fast_and_agree_with_loop(name, model):
    path, reason = ewc_lib.fisher_path(model)
    assert path == "fast" and "every parameter used once" in reason
    x = torch.randn(6, 3, generator=gen(2), dtype=D)
    assert_close(
        flatten_params(ewc_lib.fisher_diagonal(model, x)),
        flatten_params(reference.fisher_diagonal_loop(model, x)),
        what=name,
    )


def _generic_models():
    hooked = ewc_lib.mlp([3, 4, 3], seed=0, dtype=D)
    hooked[0].register_forward_hook(lambda m, i, o: o * 2)
    seq_hooked = ewc_lib.mlp([3, 4, 3], seed=0, dtype=D)
    seq_hooked.register_forward_pre_hook(lambda m, i: (i[0] * 2,))
    bn = nn.Sequential(_lin(3, 4, 1), nn.BatchNorm1d(4, dtype=D), nn.Tanh(), _lin(4, 3, 2))
    return [
        ("custom module", Wrapped(ewc_lib.mlp([3, 4, 3], seed=0, dtype=D)), "Wrapped"),
        ("batch norm", bn, "BatchNorm1d"),
        ("hook on a layer", hooked, "hooks"),
        ("hook on the Sequential", seq_hooked, "hooks"),
        ("no Linear", nn.Sequential(nn.Tanh()), "no nn.Linear"),
    ]


@pytest.mark.parametrize("name,model,word", _generic_models(), ids=[m[0] for m in _generic_models()])
def test_generic_models_say_why(name, model, word):
    path, reason = ewc_lib.fisher_path(model)
    assert path == "generic" and word in reason, reason
    if name != "no Linear":
        x = torch.randn(6, 3, generator=gen(3), dtype=D)
        assert_close(
            flatten_params(ewc_lib.fisher_diagonal(model, x)),
            flatten_params(reference.fisher_diagonal_loop(model, x)),
            what=name,
        )


def test_global_hooks_send_models_to_the_generic_path():
    model = ewc_lib.mlp([3, 4, 3], seed=0, dtype=D)
    x = torch.randn(6, 3, generator=gen(4), dtype=D)
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda m, i, o: o * 1.5 if isinstance(m, nn.Linear) else None
    )
    try:
        path, reason = ewc_lib.fisher_path(model)
        assert path == "generic" and "global" in reason
        assert_close(
            flatten_params(ewc_lib.fisher_diagonal(model, x)),
            flatten_params(reference.fisher_diagonal_loop(model, x)),
            what="global hook",
        )
    finally:
        handle.remove()
    assert ewc_lib.fisher_path(model)[0] == "fast"


def test_fisher_path_with_inputs_of_more_dimensions():
    model = nn.Sequential(_lin(3, 4, 1), nn.Tanh(), nn.Flatten(), _lin(8, 3, 2))
    x = torch.randn(5, 2, 3, generator=gen(5), dtype=D)  # the first Linear sees (5, 2, 3)
    assert ewc_lib.fisher_path(model)[0] == "fast"
    path, reason = ewc_lib.fisher_path(model, x)
    assert path == "generic" and "(5, 2, 3)" in reason
    flat_first = nn.Sequential(nn.Flatten(), _lin(6, 3, 3))
    assert ewc_lib.fisher_path(flat_first, x)[0] == "fast"
    assert_close(
        flatten_params(ewc_lib.fisher_diagonal(model, x)),
        flatten_params(reference.fisher_diagonal_loop(model, x)),
        what="3-D inputs",
    )
    with pytest.raises(TypeError, match="model"):
        ewc_lib.fisher_path("not a model")
    with pytest.raises(ValueError, match="inputs"):
        ewc_lib.fisher_path(model, torch.zeros(3))
