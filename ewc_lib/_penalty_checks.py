"""Argument and state checks of :mod:`ewc_lib.penalty` (private).

``_check_lam``, ``_check_mode_gamma`` and ``_check_fisher`` validate what
:class:`~ewc_lib.penalty.EWCPenalty` is given; ``_checked_state`` validates a state dict for
``load_state_dict`` and returns its parts, changing nothing.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import torch

from ._checks import check_int, plain_number

_MODES = ("separate", "online")
_STATE_KEYS = ("lam", "mode", "gamma", "num_tasks", "anchors", "fishers")


def _check_lam(lam) -> float:
    lam = plain_number(lam)
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real):
        raise TypeError(f"lam: expected a real number, got {type(lam).__name__}")
    lam = float(lam)
    if not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lam: expected a finite number >= 0, got {lam!r}")
    return lam


def _check_mode_gamma(mode, gamma) -> tuple[str, float]:
    if not isinstance(mode, str) or mode not in _MODES:
        raise ValueError(f"mode: expected one of {_MODES}, got {mode!r}")
    gamma = plain_number(gamma)
    if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real):
        raise TypeError(f"gamma: expected a real number in (0, 1], got {type(gamma).__name__}")
    gamma = float(gamma)
    if not (0.0 < gamma <= 1.0):
        raise ValueError(f"gamma: expected a number in (0, 1], got {gamma!r}")
    if mode == "separate" and gamma != 1.0:
        raise ValueError(
            f"gamma: the decay gamma={gamma!r} only applies to mode='online'; "
            "mode='separate' keeps every task's term unchanged (use gamma=1.0)"
        )
    return mode, gamma


def _check_fisher(fisher, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Validate a diagonal-Fisher dict against the model's parameters; return detached copies."""
    if not isinstance(fisher, Mapping):
        raise TypeError(
            f"fisher: expected a dict name -> tensor (as returned by ewc_lib.fisher_diagonal), "
            f"got {type(fisher).__name__}"
        )
    unknown = sorted(set(fisher) - set(params))
    missing = sorted(set(params) - set(fisher))
    if unknown:
        raise ValueError(f"fisher: names not among the model's trainable parameters: {unknown}")
    if missing:
        raise ValueError(f"fisher: no entry for the model's trainable parameters {missing}")
    out = {}
    for name, p in params.items():
        f = fisher[name]
        if not isinstance(f, torch.Tensor):
            raise TypeError(f"fisher[{name!r}]: expected a torch.Tensor, got {type(f).__name__}")
        if tuple(f.shape) != tuple(p.shape):
            raise ValueError(
                f"fisher[{name!r}]: shape {tuple(f.shape)} does not match the parameter's shape {tuple(p.shape)}"
            )
        f = f.detach().to(device=p.device, dtype=p.dtype).clone()
        if not torch.isfinite(f).all():
            raise ValueError(f"fisher[{name!r}]: contains NaN or inf")
        if (f < 0).any():
            raise ValueError(
                f"fisher[{name!r}]: has negative entries (min {float(f.min()):.3g}); a Fisher diagonal is >= 0"
            )
        out[name] = f
    return out


def _checked_state(state):
    """``(lam, mode, gamma, num_tasks, anchors, fishers)`` of a state dict, all checked (see
    :meth:`ewc_lib.penalty.EWCPenalty.load_state_dict`); anchors and Fishers are copies."""
    if not isinstance(state, Mapping):
        raise TypeError(f"state: expected a dict, got {type(state).__name__}")
    missing = sorted(set(_STATE_KEYS) - set(state))
    if missing:
        raise ValueError(f"state: missing keys {missing}")
    unknown = sorted(map(str, set(state) - set(_STATE_KEYS)))
    if unknown:
        raise ValueError(f"state: unknown keys {unknown}; expected {list(_STATE_KEYS)}")
    lam = _check_lam(state["lam"])
    mode, gamma = _check_mode_gamma(state["mode"], state["gamma"])
    num_tasks = check_int("num_tasks", state["num_tasks"], minimum=0)
    terms = {}
    for field in ("anchors", "fishers"):
        value = state[field]
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{field}: expected a list of dicts name -> tensor, got {type(value).__name__}")
        for t, d in enumerate(value):
            if not isinstance(d, Mapping):
                raise TypeError(f"{field}[{t}]: expected a dict name -> tensor, got {type(d).__name__}")
        terms[field] = list(value)
    anchors, fishers = terms["anchors"], terms["fishers"]
    if len(anchors) != len(fishers):
        raise ValueError(
            f"anchors, fishers: expected one Fisher per anchor, got {len(anchors)} anchors and {len(fishers)} fishers"
        )
    expected_terms = num_tasks if mode == "separate" else min(num_tasks, 1)
    if len(anchors) != expected_terms:
        raise ValueError(
            f"num_tasks: {num_tasks} consolidated task(s) in mode={mode!r} means {expected_terms} stored "
            f"term(s) ({'one per task' if mode == 'separate' else 'one term in online mode'}), but "
            f"'anchors' has {len(anchors)}"
        )
    new_anchors, new_fishers = [], []
    for t, (a, f) in enumerate(zip(anchors, fishers)):
        anchor = {}
        for name, v in a.items():
            field = f"anchors[{t}][{name!r}]"
            if not isinstance(name, str):
                raise TypeError(f"anchors[{t}]: expected str parameter names, got {type(name).__name__}")
            if not isinstance(v, torch.Tensor):
                raise TypeError(f"{field}: expected a torch.Tensor, got {type(v).__name__}")
            if not v.is_floating_point():
                raise TypeError(f"{field}: expected a floating-point tensor (a parameter), got {v.dtype}")
            if not torch.isfinite(v).all():
                raise ValueError(f"{field}: contains NaN or inf")
            anchor[name] = v.detach().clone()
        if not anchor:
            raise ValueError(f"anchors[{t}]: expected at least one parameter, got an empty dict")
        try:
            fisher = _check_fisher(f, anchor)
        except (TypeError, ValueError) as err:
            raise type(err)(f"fishers[{t}]: {err}") from err
        if t > 0:
            first = new_anchors[0]
            if set(anchor) != set(first) or any(anchor[n].shape != first[n].shape for n in first):
                raise ValueError(f"anchors[{t}]: its names or shapes differ from those of anchors[0]")
            if any(anchor[n].device != first[n].device for n in first):
                raise ValueError(f"anchors[{t}]: on another device than anchors[0]")
        new_anchors.append(anchor)
        new_fishers.append(fisher)
    return lam, mode, gamma, num_tasks, new_anchors, new_fishers
