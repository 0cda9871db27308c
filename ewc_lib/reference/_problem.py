"""The oracle's own argument checks, likelihoods and loops over outcomes (private to the package).

Written independently of :mod:`ewc_lib.curvature`: the checks are the oracle's own, and the
negative log-likelihoods are written differently (one row at a time, ``log1p``, softplus).
"""

from __future__ import annotations

import math
import numbers
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn


@contextmanager
def eval_mode(model):
    """Eval mode and autograd on for the duration; modes and requires_grad flags restored."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in flags:
            p.requires_grad_(flag)


def nll(f, y, likelihood, sigma2):
    """-log p(y | f) per example, shape (n,), written so that autograd's derivatives are accurate.

    Categorical, one row at a time, with ``m`` the most probable class:
    ``-log p_y = log(1 + sum_{c != m} exp(f_c - f_m)) - (f_y - f_m)``. Its first and second
    derivatives involve only ``p_c`` for ``c != m`` and sums of them -- the plain
    ``logsumexp(f) - f_y`` gives ``p_y - 1`` and ``p_m - p_m^2``, all digits lost once a
    probability rounds to 1. Bernoulli: ``y softplus(-f) + (1 - y) softplus(f)``.
    """
    if likelihood == "categorical":
        rows = []
        for fn, yn in zip(f, y.reshape(-1)):
            m = int(fn.detach().argmax())
            rest = torch.cat([fn[:m], fn[m + 1 :]]) - fn[m]
            rows.append(torch.log1p(torch.exp(rest).sum()) - (fn[int(yn)] - fn[m]))
        return torch.stack(rows)
    if likelihood == "bernoulli":
        return (y * nn.functional.softplus(-f) + (1 - y) * nn.functional.softplus(f)).sum(-1)
    return ((y - f) ** 2).sum(-1) / (2 * sigma2) + 0.5 * f.shape[-1] * math.log(2 * math.pi * sigma2)


def _number(name, value, integer):
    """A Python int (>= 1) or float (finite, > 0) from a Python/numpy number or a 0-d tensor."""
    if isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim == 0 or isinstance(value, np.generic):
        value = value.item()
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"{name}: expected {'an int' if integer else 'a real number'}, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
    return int(value) if integer else float(value)


def _inference_safe(t):
    if t.is_inference():  # tensors made under torch.inference_mode() cannot be saved for backward
        with torch.inference_mode(False):
            return t.clone()
    return t


class Problem:
    """The checked arguments of a loop: model, inputs, likelihood, sigma2 (and targets on demand)."""

    def __init__(self, model, inputs, likelihood, sigma2):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if likelihood not in ("categorical", "gaussian", "bernoulli"):
            raise ValueError(f"likelihood: expected categorical, gaussian or bernoulli, got {likelihood!r}")
        self.model, self.likelihood = model, likelihood
        self.sigma2 = _number("sigma2", sigma2, integer=False)
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not self.named:
            raise ValueError("model: expected at least one parameter with requires_grad=True, found none")
        if any(p.is_inference() for _, p in self.named):
            raise ValueError("model: its parameters were created under torch.inference_mode()")
        dtypes = {p.dtype for p in model.parameters()}
        if len(dtypes) > 1:
            raise TypeError(f"model: its parameters have mixed dtypes {sorted(map(str, dtypes))}")
        self.dtype = self.named[0][1].dtype
        if not isinstance(inputs, torch.Tensor):
            raise TypeError(f"inputs: expected a torch.Tensor, got {type(inputs).__name__}")
        if inputs.ndim < 2 or inputs.shape[0] == 0:
            raise ValueError(f"inputs: expected shape (N, ...) with N >= 1, got {tuple(inputs.shape)}")
        if inputs.dtype != self.dtype:
            raise TypeError(f"inputs: expected dtype {self.dtype} (that of the parameters), got {inputs.dtype}")
        if not torch.isfinite(inputs).all():
            raise ValueError("inputs: expected finite values, found NaN or inf")
        for name, p in self.named:
            if not torch.isfinite(p).all():
                raise ValueError(f"model: parameter {name!r} contains NaN or inf")
        self.inputs, self.n = _inference_safe(inputs), inputs.shape[0]
        self.numel = sum(p.numel() for _, p in self.named)
        with eval_mode(model), torch.no_grad():
            try:
                out = model(self.inputs[:1])
            except RuntimeError as err:
                raise ValueError(
                    f"inputs: the model cannot be applied to inputs of shape {tuple(inputs.shape)}: {err}"
                ) from err
        expected = {"categorical": "(1, C) with C >= 2", "gaussian": "(1, D)", "bernoulli": "(1, 1)"}[likelihood]
        if (
            out.ndim != 2
            or (likelihood == "categorical" and out.shape[1] < 2)
            or (likelihood == "bernoulli" and out.shape[1] != 1)
        ):
            raise ValueError(f"model output: expected shape {expected} for one example, got {tuple(out.shape)}")
        self.out_dim = out.shape[1]

    def outputs(self, x):
        """model(x), checked to be finite."""
        return finite_outputs(self.model(x))

    def check_targets(self, targets):
        n, c = self.n, self.out_dim
        if not isinstance(targets, torch.Tensor):
            raise TypeError(f"targets: expected a torch.Tensor, got {type(targets).__name__}")
        targets = _inference_safe(targets)
        if self.likelihood == "categorical":
            if targets.is_floating_point() or targets.dtype == torch.bool or tuple(targets.shape) != (n,):
                raise ValueError(
                    f"targets: expected integer class indices of shape ({n},), got "
                    f"{targets.dtype} {tuple(targets.shape)}"
                )
            if targets.min() < 0 or targets.max() >= c:
                raise ValueError(f"targets: expected class indices in [0, {c})")
            return targets.long()
        if self.likelihood == "bernoulli":
            t = targets.reshape(-1, 1).to(self.dtype) if targets.numel() == n else None
            if t is None or not ((t == 0) | (t == 1)).all():
                raise ValueError(f"targets: expected {n} values in {{0, 1}}, got shape {tuple(targets.shape)}")
            return t
        if targets.numel() != n * c or not targets.is_floating_point() or not torch.isfinite(targets).all():
            raise ValueError(
                f"targets: expected finite floats of shape ({n}, {c}), got {targets.dtype} {tuple(targets.shape)}"
            )
        return targets.reshape(n, c).to(self.dtype)


def finite_outputs(f):
    if not torch.isfinite(f).all():
        raise ValueError("model: its outputs are not finite (NaN or inf)")
    return f


def flat_grad(scalar, params, create_graph=False, retain_graph=None):
    grads = torch.autograd.grad(scalar, params, create_graph=create_graph, retain_graph=retain_graph, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)])


def log_lik(setup, x_n, y_n):
    """log p(y_n | x_n) for ONE example (x_n with a batch axis of 1)."""
    return -nll(setup.outputs(x_n), y_n, setup.likelihood, setup.sigma2).sum()


def outcomes(setup, x_n):
    """All outcomes y of one example with their probabilities (categorical, bernoulli)."""
    with torch.no_grad():
        f = setup.outputs(x_n)[0]
    if setup.likelihood == "categorical":
        p = torch.softmax(f, -1)
        return [(p[c].item(), torch.tensor([c])) for c in range(f.shape[0])]
    s, not_s = torch.sigmoid(f[0]).item(), torch.sigmoid(-f[0]).item()  # not 1 - s: no cancellation
    return [(s, torch.ones(1, 1, dtype=f.dtype)), (not_s, torch.zeros(1, 1, dtype=f.dtype))]


def weighted_scores(setup, estimator, targets, sampled_targets, batch_size):
    """Yield (w, g) with the Fisher estimator equal to sum of w g g^T (g a flat score)."""
    params = [p for _, p in setup.named]
    n_data = setup.n
    x = setup.inputs
    if estimator == "batched_empirical":
        if batch_size is None:
            raise ValueError("batch_size: required for estimator='batched_empirical'")
        batch_size = _number("batch_size", batch_size, integer=True)
        for lo in range(0, n_data, batch_size):
            hi = min(lo + batch_size, n_data)
            g = sum(flat_grad(log_lik(setup, x[n : n + 1], targets[n : n + 1]), params) for n in range(lo, hi))
            yield (hi - lo) / n_data, g / (hi - lo)
        return
    for n in range(n_data):
        xn = x[n : n + 1]
        if estimator == "empirical":
            yield 1.0 / n_data, flat_grad(log_lik(setup, xn, targets[n : n + 1]), params)
        elif estimator == "mc":
            s_count = sampled_targets.shape[1]
            for s in range(s_count):
                y = sampled_targets[n : n + 1, s]
                if setup.likelihood == "bernoulli":
                    y = y.reshape(1, 1)
                yield 1.0 / (n_data * s_count), flat_grad(log_lik(setup, xn, y), params)
        elif setup.likelihood == "gaussian":
            # score (y - f)/sigma2 J has covariance J^T J / sigma2: sum over output coordinates
            f = setup.outputs(xn)[0]
            for d in range(f.shape[0]):
                yield 1.0 / (n_data * setup.sigma2), flat_grad(f[d], params, retain_graph=True)
        else:
            for prob, y in outcomes(setup, xn):
                yield prob / n_data, flat_grad(log_lik(setup, xn, y), params)


def prepare(model, inputs, likelihood, sigma2, estimator, targets, sampled_targets):
    setup = Problem(model, inputs, likelihood, sigma2)
    if estimator not in ("exact", "mc", "empirical", "batched_empirical"):
        raise ValueError(f"estimator: expected exact, mc, empirical or batched_empirical, got {estimator!r}")
    if estimator in ("empirical", "batched_empirical"):
        targets = setup.check_targets(targets)
    if estimator == "mc" and sampled_targets is None:
        raise ValueError("sampled_targets: required for estimator='mc' (see ewc_lib.sample_targets)")
    if estimator == "mc":
        if not isinstance(sampled_targets, torch.Tensor) or sampled_targets.shape[0] != setup.n:
            raise ValueError(f"sampled_targets: expected a tensor with {setup.n} rows (N, S) or (N, S, D)")
        sampled_targets = _inference_safe(sampled_targets)
    return setup, targets, sampled_targets
