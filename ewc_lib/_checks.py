"""Argument checks shared by every module of ``ewc_lib``: one module, one error style.

Every message reads ``"<argument>: expected <what>, got <what was passed>"``. A value of the
wrong *type* raises ``TypeError``; a value of the right type outside its range raises
``ValueError``. Numbers may be Python, numpy or 0-d tensor scalars.

>>> check_int("epochs", 3)
3
>>> check_int("seed", -1, minimum=0)
Traceback (most recent call last):
...
ValueError: seed: expected an int >= 0, got -1
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from torch import nn

__all__ = [
    "plain_number",
    "describe",
    "check_choice",
    "check_int",
    "check_positive_float",
    "trainable_parameters",
    "as_real_vector",
    "as_finite_matrix",
    "as_finite_targets",
    "as_theta",
    "check_binary",
]


def plain_number(value):
    """numpy scalars, 0-d numpy arrays and 0-d tensors -> the Python number they hold; else ``value``."""
    if isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim == 0:
        return value.item()
    if isinstance(value, np.generic):
        return value.item()
    return value


def describe(value) -> str:
    """A short description of ``value`` for an error message (type, and shape and dtype of arrays)."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return f"{type(value).__name__} of shape {tuple(value.shape)} and dtype {value.dtype}"
    return f"{type(value).__name__} {value!r}"


def check_choice(name: str, value, choices) -> str:
    """``value`` if it is one of the strings ``choices``, else ``ValueError``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}: expected one of {list(choices)}, got {value!r}")
    return value


def check_int(name: str, value, *, minimum: int = 1, allow_none: bool = False):
    """An int ``>= minimum`` (Python, numpy or 0-d integer tensor), returned as a Python int.

    ``None`` passes (and is returned) when ``allow_none``. Booleans are not integers here.
    """
    if value is None and allow_none:
        return None
    number = plain_number(value)
    if isinstance(number, bool) or not isinstance(number, numbers.Integral):
        kind = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise TypeError(
            f"{name}: expected {kind}{' or None' if allow_none else ''} (Python, numpy or a 0-d "
            f"integer tensor), got {describe(value)}"
        )
    if number < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {number}")
    return int(number)


def check_positive_float(name: str, value) -> float:
    """A finite real number > 0 (Python, numpy or 0-d real tensor), returned as a Python float."""
    number = plain_number(value)
    if isinstance(number, bool) or not isinstance(number, numbers.Real):
        raise TypeError(
            f"{name}: expected a finite real number > 0 (Python, numpy or a 0-d tensor), got {describe(value)}"
        )
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{name}: expected a finite float > 0, got {number!r}")
    return float(number)


def trainable_parameters(model, *, purpose: str = "") -> list[tuple[str, torch.Tensor]]:
    """``[(name, parameter)]`` of the parameters of ``model`` with ``requires_grad=True``.

    In ``model.named_parameters()`` order. ``TypeError`` unless ``model`` is an
    ``nn.Module``; ``ValueError`` if it has no trainable parameter (``purpose`` completes the
    message: "... found none <purpose>") or one created under ``torch.inference_mode()``
    (such a tensor cannot be differentiated).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError(
            f"model: expected at least one parameter with requires_grad=True, found none"
            f"{' ' + purpose if purpose else ''}"
        )
    for n, p in named:
        if p.is_inference():
            raise ValueError(
                f"model: parameter {n!r} was created under torch.inference_mode() and cannot be "
                f"differentiated; build the model outside inference mode (or load its state_dict "
                f"into one built outside)"
            )
    return named


def as_real_vector(x, name: str) -> torch.Tensor:
    """``x`` as a finite float64 tensor of shape ``(d,)``, ``d >= 1`` (a copy); used by :mod:`ewc_lib.laplace`."""
    if isinstance(x, torch.Tensor):
        if x.is_complex():
            raise TypeError(f"{name} must be real, got a complex tensor")
        t = x.detach().to(torch.float64).clone()
    else:
        try:
            t = torch.as_tensor(x, dtype=torch.float64).clone()
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"{name} must be a real 1-D tensor or array, got {type(x).__name__}") from exc
    if t.ndim != 1 or t.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D tensor of shape (d,), got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite, got {t.tolist()}")
    return t


def as_finite_matrix(X, name="X", cols=None) -> np.ndarray:
    """``X`` as a finite, non-empty float64 array ``(N, D)`` (with ``cols`` columns, if given)."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty 2-D array (N, D), got shape {X.shape}")
    if cols is not None and X.shape[1] != cols:
        raise ValueError(f"{name}: expected {cols} columns, got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError(f"{name}: contains NaN or inf")
    return X


def as_finite_targets(y, n, name="y") -> np.ndarray:
    """``y`` as ``n`` finite float64 targets, shape ``(n,)``."""
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if y.shape[0] != n:
        raise ValueError(f"{name}: expected {n} targets (one per row of X), got {y.shape[0]}")
    if not np.all(np.isfinite(y)):
        raise ValueError(f"{name}: contains NaN or inf")
    return y


def as_theta(theta, d) -> np.ndarray:
    """``theta`` as a finite float64 array of shape ``(..., d)`` (one parameter vector or a stack)."""
    theta = np.asarray(theta, dtype=np.float64)
    if theta.ndim == 0 or theta.shape[-1] != d:
        raise ValueError(f"theta: expected shape (..., {d}), got {theta.shape}")
    if not np.all(np.isfinite(theta)):
        raise ValueError("theta: contains NaN or inf")
    return theta


def check_binary(y) -> None:
    """``ValueError`` unless every label in ``y`` is 0 or 1."""
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("y: expected labels in {0, 1}")
