"""Inputs as users pass them (issue 11, items 3, 4 and 6).

* item 3: parameters the outputs do not use get zeros from every estimator (``batched_empirical``
  raised a raw autograd error); tensors made under ``torch.inference_mode()`` work everywhere;
* item 4: when the model's outputs are not finite, every estimator and matrix function raises a
  ValueError saying so (they used to return NaN);
* item 6: numpy scalars and 0-d tensors are accepted wherever an int or float is taken; a wrong
  input size or a model with mixed parameter dtypes gives an error naming ``inputs``/``model``.

Results are compared in float64 with the brute-force loops of ``ewc_lib.reference``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cases import CASES, GAUSSIAN, Wrapped, assert_close, gen, make, make_model
from torch import nn

import ewc_lib
from ewc_lib import reference
from ewc_lib.curvature import flatten_params

D = torch.float64
ESTIMATORS = ["exact", "mc", "empirical", "batched_empirical"]


def diag(model, x, estimator, y, likelihood="categorical", **kw):
    kw = dict(dict(num_samples=2, generator=gen(3), batch_size=3 if estimator == "batched_empirical" else None), **kw)
    return ewc_lib.fisher_diagonal(model, x, likelihood=likelihood, estimator=estimator, targets=y, **kw)


def loop(model, x, estimator, y, likelihood="categorical"):
    sampled = ewc_lib.sample_targets(model, x, likelihood=likelihood, num_samples=2, generator=gen(3))
    return reference.fisher_diagonal_loop(
        model, x, likelihood=likelihood, estimator=estimator, targets=y, sampled_targets=sampled, batch_size=3
    )


# ------------------------------------------------------------------ item 3: unused parameters


class UnusedLinear(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.used = nn.Linear(3, 3, dtype=D)
        self.unused = nn.Linear(3, 3, dtype=D)

    def forward(self, x):
        return self.used(torch.tanh(x))


class UnusedBias(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.lin = nn.Linear(3, 3, dtype=D)

    def forward(self, x):
        return nn.functional.linear(x, self.lin.weight)


class TrainOnlyHead(nn.Module):
    """An auxiliary head used only in train mode: unused in the eval-mode Fisher."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.body = nn.Linear(3, 3, dtype=D)
        self.aux = nn.Linear(3, 3, dtype=D)

    def forward(self, x):
        h = torch.sigmoid(self.body(x))
        return h + self.aux(h) if self.training else h


def sequential_with_extra_parameter():
    model = ewc_lib.mlp([3, 4, 3], seed=3, dtype=D)
    model.register_parameter("extra", nn.Parameter(torch.ones(2, dtype=D)))
    return model


UNUSED = [
    ("unused-linear", UnusedLinear, ["unused.weight", "unused.bias"]),
    ("unused-bias", UnusedBias, ["lin.bias"]),
    ("train-only-head", TrainOnlyHead, ["aux.weight", "aux.bias"]),
    ("sequential-extra-parameter", sequential_with_extra_parameter, ["extra"]),
]


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("name,factory,unused", UNUSED, ids=[u[0] for u in UNUSED])
def test_unused_parameters_get_zeros(name, factory, unused, estimator):
    model = factory()
    model.train()
    x = torch.randn(7, 3, generator=gen(1), dtype=D)
    y = torch.randint(0, 3, (7,), generator=gen(2))
    d = diag(model, x, estimator, y)
    for key in unused:
        assert torch.equal(d[key], torch.zeros_like(d[key])), f"{name}/{estimator}: {key} not zero"
    assert any(d[k].abs().sum() > 0 for k in d if k not in unused)
    assert_close(flatten_params(d), flatten_params(loop(model, x, estimator, y)), what=f"{name}/{estimator}")
    m = ewc_lib.fisher_matrix(model, x, estimator=estimator, targets=y, num_samples=2, generator=gen(3), batch_size=3)
    assert_close(m.diagonal(), flatten_params(d), what=f"{name}/{estimator}: matrix diagonal")
    assert model.training


def test_train_continual_with_batched_empirical_on_a_model_with_an_unused_parameter():
    from types import SimpleNamespace

    from ewc_lib.continual import train_continual

    def task(seed):
        g = gen(seed)
        x = torch.randn(16, 3, generator=g)
        return SimpleNamespace(
            name=str(seed), x_train=x, y_train=(x[:, 0] > 0).long(), x_test=x, y_test=(x[:, 0] > 0).long()
        )

    model = UnusedLinear().float()
    hist = train_continual(
        model,
        [task(4), task(5)],
        method="ewc",
        lam=1.0,
        lr=0.1,
        batch_size=8,
        fisher_estimator="batched_empirical",
        fisher_batch_size=4,
        progress=False,
    )
    fisher = hist.penalty.fishers[0]
    assert torch.equal(fisher["unused.weight"], torch.zeros(3, 3)) and fisher["used.weight"].abs().sum() > 0


# ------------------------------------------------------------------ item 3: inference mode


def _all_calls(model, x, y, likelihood="categorical"):
    kw = dict(likelihood=likelihood)
    calls = {f"fisher_diagonal/{e}": (lambda e=e: diag(model, x, e, y, likelihood)) for e in ESTIMATORS}
    calls.update(
        {
            f"fisher_matrix/{e}": (
                lambda e=e: ewc_lib.fisher_matrix(
                    model, x, estimator=e, targets=y, num_samples=2, generator=gen(3), batch_size=3, **kw
                )
            )
            for e in ESTIMATORS
        }
    )
    calls.update(
        {
            "hessian": lambda: ewc_lib.hessian(model, x, y, **kw),
            "expected_hessian": lambda: ewc_lib.expected_hessian(model, x, **kw),
            "ggn": lambda: ewc_lib.ggn(model, x, **kw),
            "sample_targets": lambda: ewc_lib.sample_targets(model, x, num_samples=2, generator=gen(3), **kw),
            "reference.fisher_matrix_loop": lambda: reference.fisher_matrix_loop(
                model, x, estimator="batched_empirical", targets=y, batch_size=3, **kw
            ),
            "reference.hessian_loop": lambda: reference.hessian_loop(model, x, y, **kw),
            "reference.ggn_loop": lambda: reference.ggn_loop(model, x, **kw),
            "reference.per_example_scores": lambda: reference.per_example_scores(model, x, y, **kw),
        }
    )
    return calls


def _flat(result):
    return flatten_params(result) if isinstance(result, dict) else result


@pytest.mark.parametrize("case", [CASES[0], GAUSSIAN[0], CASES[-1]], ids=str)
@pytest.mark.parametrize("model_kind", ["fast", "generic"])
def test_inference_mode_tensors_and_calls(case, model_kind):
    model, x, y = make(case)
    if model_kind == "generic":
        model = Wrapped(model)
    with torch.inference_mode():
        xi, yi = x.clone(), y.clone()
    assert xi.is_inference() and yi.is_inference()
    normal = {k: _flat(f()) for k, f in _all_calls(model, x, y, case.likelihood).items()}
    for k, f in _all_calls(model, xi, yi, case.likelihood).items():
        assert_close(_flat(f()), normal[k], what=f"{case}/{k}: inference-mode inputs and targets")
    with torch.inference_mode():  # called inside inference mode
        for k, f in _all_calls(model, xi, yi, case.likelihood).items():
            assert_close(_flat(f()), normal[k], what=f"{case}/{k}: inside torch.inference_mode()")


def test_model_built_in_inference_mode_is_a_clear_error():
    with torch.inference_mode():
        model = ewc_lib.mlp([3, 4, 3], seed=0, dtype=D)
    x = torch.randn(4, 3, dtype=D)
    for fn in (
        lambda: ewc_lib.fisher_diagonal(model, x),
        lambda: ewc_lib.ggn(model, x),
        lambda: reference.fisher_diagonal_loop(model, x),
    ):
        with pytest.raises(ValueError, match="model.*inference_mode"):
            fn()


# ------------------------------------------------------------------ item 4: non-finite outputs


class LogOfInputs(nn.Module):
    """A custom module whose outputs are NaN where its first input is negative (generic path)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.lin = nn.Linear(3, 3, dtype=D)

    def forward(self, x):
        return self.lin(x) + torch.log(x[:, :1])


def _ones_first(model):
    """Set the first Linear's weights to 1: a row of inputs 1e308 (3 features) sums to inf."""
    first = next(m for m in model.modules() if isinstance(m, nn.Linear))
    with torch.no_grad():
        first.weight.fill_(1.0)
    return model


def _overflowing():
    """(name, model, inputs, likelihood): finite inputs and parameters, non-finite outputs."""
    x = torch.randn(7, 3, generator=gen(1), dtype=D)
    big = x.clone()
    big[4] = 1e308  # only the fifth example overflows (not the first: the chunk check must see it)
    lin = _ones_first(ewc_lib.mlp([3, 3], seed=0, dtype=D))  # a single Linear: +inf logits
    nan = _ones_first(ewc_lib.mlp([3, 4, 3], activation="relu", seed=1, dtype=D))  # inf * (+w) + inf * (-w)
    x32 = x.float()
    x32[2] = 3e38  # float32: 3 * 3e38 overflows
    f32_out = _ones_first(ewc_lib.mlp([3, 3], seed=3, dtype=torch.float32))
    neg = x.abs()
    neg[3, 0] = -1.0  # log(-1) = NaN
    gauss = _ones_first(ewc_lib.mlp([3, 4, 2], activation="relu", seed=4, dtype=D))
    bern = _ones_first(ewc_lib.mlp([3, 1], seed=5, dtype=D))
    return [
        ("linear-inf", lin, big, "categorical"),
        ("relu-nan", nan, big, "categorical"),
        ("float32-linear", f32_out, x32, "categorical"),
        ("custom-log", LogOfInputs(), neg, "categorical"),
        ("gaussian", gauss, big, "gaussian"),
        ("bernoulli", bern, big, "bernoulli"),
    ]


OVERFLOW = _overflowing()


@pytest.mark.parametrize("name,model,x,likelihood", OVERFLOW, ids=[o[0] for o in OVERFLOW])
def test_non_finite_outputs_raise_everywhere(name, model, x, likelihood):
    with torch.no_grad():
        assert not torch.isfinite(model(x)).all() and torch.isfinite(x).all()
    n = x.shape[0]
    if likelihood == "categorical":
        y = torch.zeros(n, dtype=torch.long)
    elif likelihood == "bernoulli":
        y = torch.ones(n, dtype=x.dtype)
    else:
        y = torch.zeros(n, 2, dtype=x.dtype)
    calls = _all_calls(model, x, y, likelihood)
    calls["reference.fisher_diagonal_loop"] = lambda: reference.fisher_diagonal_loop(model, x, likelihood=likelihood)
    calls["reference.expected_hessian_loop"] = lambda: reference.expected_hessian_loop(model, x, likelihood=likelihood)
    assert len(calls) == 18
    for what, call in calls.items():
        with pytest.raises(ValueError, match="outputs are not finite"):
            call()
            print(what)  # (only reached if no error: names the culprit in the failure output)


def test_overflow_inside_the_fisher_is_an_error_too():
    # outputs finite (tanh saturates), but squares of the 1e200 inputs overflow on the fast path
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    x = torch.full((3, 2), 1e200, dtype=D)
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()
    with pytest.raises(ValueError, match="not finite"):
        ewc_lib.fisher_diagonal(model, x)


# ------------------------------------------------------------------ item 6: numbers as users pass them


INTS = [np.int64(2), np.int32(2), np.uint8(2), torch.tensor(2), np.array(2)]
FLOATS = [
    np.float32(2.0),
    np.float64(2.0),
    torch.tensor(2.0),
    torch.tensor(2.0, dtype=D),
    np.array(2.0),
    np.int64(2),
    torch.tensor(2),
]


@pytest.mark.parametrize("value", INTS, ids=lambda v: f"{type(v).__name__}-{getattr(v, 'dtype', '')}")
def test_integer_arguments_accept_numpy_and_0d_tensors(value):
    model, x, y = make(CASES[0])

    def mc(n):
        return flatten_params(ewc_lib.fisher_diagonal(model, x, estimator="mc", num_samples=n, generator=gen(1)))

    assert torch.equal(mc(value), mc(2))

    def b(bs):
        return flatten_params(
            ewc_lib.fisher_diagonal(model, x, estimator="batched_empirical", targets=y, batch_size=bs)
        )

    assert torch.equal(b(value), b(2))
    assert_close(ewc_lib.fisher_matrix(model, x, batch_size=value), ewc_lib.fisher_matrix(model, x), what="chunks")
    for fn in (ewc_lib.ggn, ewc_lib.expected_hessian):
        assert_close(fn(model, x, batch_size=value), fn(model, x), what=fn.__name__)
    assert_close(ewc_lib.hessian(model, x, y, batch_size=value), ewc_lib.hessian(model, x, y), what="hessian")
    assert torch.equal(
        ewc_lib.sample_targets(model, x, num_samples=value, generator=gen(2)),
        ewc_lib.sample_targets(model, x, num_samples=2, generator=gen(2)),
    )
    assert_close(
        reference.fisher_matrix_loop(model, x, estimator="batched_empirical", targets=y, batch_size=value),
        reference.fisher_matrix_loop(model, x, estimator="batched_empirical", targets=y, batch_size=2),
        what="reference batch_size",
    )


@pytest.mark.parametrize("value", FLOATS, ids=lambda v: f"{type(v).__name__}-{getattr(v, 'dtype', '')}")
def test_sigma2_accepts_numpy_and_0d_tensors(value):
    case = GAUSSIAN[1]
    model, x, y = make(case)
    kw = dict(likelihood="gaussian")
    for fn in (ewc_lib.fisher_diagonal, ewc_lib.fisher_matrix, ewc_lib.ggn, ewc_lib.expected_hessian):
        assert_close(_flat(fn(model, x, sigma2=value, **kw)), _flat(fn(model, x, sigma2=2.0, **kw)), what=fn.__name__)
    assert_close(
        ewc_lib.hessian(model, x, y, sigma2=value, **kw), ewc_lib.hessian(model, x, y, sigma2=2.0, **kw), what="hessian"
    )
    assert_close(
        reference.ggn_loop(model, x, sigma2=value, **kw),
        ewc_lib.ggn(model, x, sigma2=2.0, **kw),
        what="reference ggn_loop",
    )


BAD_INTS = [
    (2.0, TypeError),
    (np.float64(2.0), TypeError),
    (torch.tensor(2.0), TypeError),
    (True, TypeError),
    (np.bool_(True), TypeError),
    (torch.tensor([2]), TypeError),
    (np.array([2]), TypeError),
    ("2", TypeError),
    (np.int64(0), ValueError),
    (torch.tensor(-1), ValueError),
]
BAD_FLOATS = [
    ("1", TypeError),
    (torch.tensor([1.0]), TypeError),
    (True, TypeError),
    (1j, TypeError),
    (np.float32("nan"), ValueError),
    (torch.tensor(0.0), ValueError),
    (np.float64(-1.0), ValueError),
    (float("inf"), ValueError),
]


@pytest.mark.parametrize("value,exc", BAD_INTS, ids=[repr(v) for v, _ in BAD_INTS])
def test_bad_integer_arguments(value, exc):
    model, x, y = make(CASES[0])
    with pytest.raises(exc, match="num_samples"):
        ewc_lib.fisher_diagonal(model, x, estimator="mc", num_samples=value)
    with pytest.raises(exc, match="num_samples"):
        ewc_lib.sample_targets(model, x, num_samples=value)
    with pytest.raises(exc, match="batch_size"):
        ewc_lib.fisher_matrix(model, x, batch_size=value)
    with pytest.raises(exc, match="batch_size"):
        ewc_lib.fisher_diagonal(model, x, estimator="batched_empirical", targets=y, batch_size=value)
    with pytest.raises(exc, match="batch_size"):
        reference.fisher_diagonal_loop(model, x, estimator="batched_empirical", targets=y, batch_size=value)


@pytest.mark.parametrize("value,exc", BAD_FLOATS, ids=[repr(v) for v, _ in BAD_FLOATS])
def test_bad_sigma2(value, exc):
    model, x, _ = make(GAUSSIAN[1])
    for fn in (ewc_lib.fisher_diagonal, ewc_lib.ggn, reference.ggn_loop):
        with pytest.raises(exc, match="sigma2"):
            fn(model, x, likelihood="gaussian", sigma2=value)


class Conv(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.conv = nn.Conv2d(2, 3, 3, dtype=D)

    def forward(self, x):
        return self.conv(x).flatten(1)


WRONG_SIZE = [
    ("fast", lambda: make_model(CASES[0]), (5, 4), "3 input features"),
    ("generic", lambda: Wrapped(make_model(CASES[0])), (5, 4), "3 input features"),
    ("flatten-first", lambda: nn.Sequential(nn.Flatten(), nn.Linear(6, 3, dtype=D)), (5, 2, 4), "6 input features"),
    ("conv", Conv, (5, 3, 4, 4), "2 input channels"),
]


@pytest.mark.parametrize("name,factory,shape,expects", WRONG_SIZE, ids=[w[0] for w in WRONG_SIZE])
def test_wrong_input_size_names_inputs_and_shapes(name, factory, shape, expects):
    model = factory()
    x = torch.randn(*shape, generator=gen(6), dtype=D)
    y = torch.zeros(shape[0], dtype=torch.long)
    for call in (
        lambda: ewc_lib.fisher_diagonal(model, x),
        lambda: ewc_lib.fisher_matrix(model, x),
        lambda: ewc_lib.hessian(model, x, y),
        lambda: ewc_lib.ggn(model, x),
        lambda: ewc_lib.sample_targets(model, x),
        lambda: ewc_lib.fisher_diagonal(model, x, estimator="batched_empirical", targets=y, batch_size=2),
    ):
        with pytest.raises(ValueError, match="inputs") as info:
            call()
        assert str(shape) in str(info.value) and expects in str(info.value), str(info.value)
    with pytest.raises(ValueError, match="inputs"):
        reference.fisher_diagonal_loop(model, x)


def test_mixed_parameter_dtypes_name_model_and_dtypes():
    models = [
        nn.Sequential(nn.Linear(3, 4, dtype=D), nn.Tanh(), nn.Linear(4, 3)),
        Wrapped(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3, dtype=D))),
    ]
    frozen = nn.Sequential(nn.Linear(3, 4, dtype=D), nn.Tanh(), nn.Linear(4, 3))
    frozen[2].requires_grad_(False)  # a frozen float32 layer in a float64 model
    models.append(frozen)
    for model in models:
        x = torch.randn(4, 3, dtype=D)
        for call in (lambda: ewc_lib.fisher_diagonal(model, x), lambda: ewc_lib.ggn(model, x)):
            with pytest.raises(TypeError, match="model") as info:
                call()
            assert "float32" in str(info.value) and "float64" in str(info.value)
        with pytest.raises(TypeError, match="model"):
            reference.fisher_diagonal_loop(model, x)
