"""Tests of ewc_lib._checks: the one module of argument checks, and its one error style."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch
from torch import nn

from ewc_lib import _checks
from ewc_lib._checks import check_choice, check_int, check_positive_float, trainable_parameters


@pytest.mark.parametrize("value", [3, np.int64(3), torch.tensor(3), np.array(3)])
def test_check_int_accepts_python_numpy_and_0d_tensor_ints(value):
    assert check_int("n", value) == 3 and type(check_int("n", value)) is int


@pytest.mark.parametrize(
    "value, exc",
    [
        (1.5, TypeError),
        (True, TypeError),
        ("3", TypeError),
        (None, TypeError),
        (torch.tensor([3]), TypeError),
        (0, ValueError),
        (-2, ValueError),
    ],
)
def test_check_int_wrong_type_is_a_type_error_out_of_range_a_value_error(value, exc):
    with pytest.raises(exc, match=r"^n: expected .*, got "):
        check_int("n", value)


def test_check_int_minimum_and_none():
    assert check_int("seed", 0, minimum=0) == 0
    assert check_int("size", None, allow_none=True) is None
    with pytest.raises(ValueError, match="seed: expected an int >= 0, got -1"):
        check_int("seed", -1, minimum=0)


def test_check_positive_float_and_choice():
    assert check_positive_float("sigma2", np.float32(2.0)) == 2.0
    for bad, exc in [(0.0, ValueError), (float("inf"), ValueError), ("1", TypeError), (False, TypeError)]:
        with pytest.raises(exc, match="sigma2: expected"):
            check_positive_float("sigma2", bad)
    assert check_choice("likelihood", "gaussian", ("gaussian",)) == "gaussian"
    with pytest.raises(ValueError, match=r"likelihood: expected one of \['gaussian'\], got 'x'"):
        check_choice("likelihood", "x", ("gaussian",))


def test_trainable_parameters():
    net = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    net[0].weight.requires_grad_(False)
    assert [n for n, _ in trainable_parameters(net)] == ["0.bias", "1.weight", "1.bias"]
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module"):
        trainable_parameters("net")
    with pytest.raises(ValueError, match="found none to consolidate"):
        trainable_parameters(nn.Linear(2, 1).requires_grad_(False), purpose="to consolidate")


def test_doctests():
    assert doctest.testmod(_checks).failed == 0
