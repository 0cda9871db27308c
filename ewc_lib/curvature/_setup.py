"""Validated arguments and the model plumbing shared by every curvature function (private).

:class:`_Setup` checks the model, inputs, likelihood and options once and knows how to call
the model with swapped-in parameters; :func:`_eval_mode` puts the model in eval mode and
restores it; ``_check_outputs``/``_check_result`` turn non-finite numbers into errors.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from .._checks import check_choice, check_int, check_positive_float, trainable_parameters
from .likelihoods import LIKELIHOODS

#: Largest number of parameters for the dense (P, P) functions (20,000**2 float64 = 3.2 GB).
MAX_DENSE_PARAMS = 20_000


@contextmanager
def _eval_mode(model):
    """Put every submodule in eval mode; restore modes and requires_grad flags afterwards.

    Autograd is switched on, also inside ``torch.no_grad()`` or ``torch.inference_mode()``.
    """
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


def _usable(t):
    """A tensor created under ``torch.inference_mode()`` cannot be saved for backward: copy it."""
    if isinstance(t, torch.Tensor) and t.is_inference():
        with torch.inference_mode(False):
            return t.clone()
    return t


def _check_outputs(f, lo=None, hi=None):
    """ValueError unless the model's outputs ``f`` are finite."""
    if not _all_finite(f):
        where = "" if lo is None else f" for inputs[{lo}:{hi}]"
        raise ValueError(
            f"model: its outputs are not finite (NaN or inf){where}, although the inputs and "
            f"parameters are; the activations overflow in {f.dtype} (rescale the inputs, or use "
            f"float64)"
        )


def _check_result(result, function):
    """ValueError if an accumulated result overflowed although every output was finite."""
    values = result.values() if isinstance(result, dict) else (result,)
    if not all(_all_finite(t) for t in values):
        raise ValueError(
            f"model: {function} is not finite (overflow) although the model's outputs are finite: "
            f"the per-example gradients are too large for {next(iter(values)).dtype} (rescale the "
            f"inputs, or use float64)"
        )
    return result


def _all_finite(t, rows=4096):
    """isfinite(t).all(), cheaply.

    A sum containing NaN or inf is not finite, so one reduction settles the common case; only
    when the sum is not finite (NaN/inf present, or an overflow of huge finite values) are the
    entries checked, in row blocks (a full boolean copy of 60,000 images costs ~150 MB peak).
    """
    if t.numel() == 0 or bool(torch.isfinite(t.sum())):
        return True
    if t.ndim == 0:
        return bool(torch.isfinite(t))
    return all(bool(torch.isfinite(t[i : i + rows]).all()) for i in range(0, t.shape[0], rows))


class _Setup:
    """Validated arguments shared by all public functions."""

    def __init__(self, model, inputs, likelihood, sigma2, batch_size=None):
        check_choice("likelihood", likelihood, LIKELIHOODS)
        self.named = trainable_parameters(model)
        self.model = model
        self.likelihood = likelihood
        self.sigma2 = check_positive_float("sigma2", sigma2)
        self.batch_size = check_int("batch_size", batch_size, allow_none=True)
        if not isinstance(inputs, torch.Tensor):
            raise TypeError(f"inputs: expected a torch.Tensor of shape (N, ...), got {type(inputs).__name__}")
        if inputs.ndim < 2:
            raise ValueError(
                f"inputs: expected a tensor with at least 2 dimensions (N, ...), got shape {tuple(inputs.shape)}"
            )
        if inputs.shape[0] == 0:
            raise ValueError("inputs: expected at least one data point, got an empty batch (N = 0)")
        if not inputs.is_floating_point():
            raise TypeError(f"inputs: expected a floating-point tensor, got dtype {inputs.dtype}")
        if not _all_finite(inputs):
            raise ValueError("inputs: expected finite values, found NaN or inf")
        dtypes = {}
        for name, p in model.named_parameters():
            dtypes.setdefault(p.dtype, []).append(name)
        if len(dtypes) > 1:
            listing = "; ".join(f"{dt}: {names}" for dt, names in dtypes.items())
            raise TypeError(
                f"model: its parameters have mixed dtypes ({listing}); convert the model to one "
                f"dtype, e.g. model.double()"
            )
        dtype = self.named[0][1].dtype
        for name, p in self.named:
            if not _all_finite(p.detach()):
                raise ValueError(f"model: parameter {name!r} contains NaN or inf")
        if inputs.dtype != dtype:
            raise TypeError(f"inputs: expected dtype {dtype} (that of the model's parameters), got {inputs.dtype}")
        self.inputs = _usable(inputs)
        self.n = inputs.shape[0]
        with _eval_mode(model), torch.no_grad():  # eval: no dropout draw, no batch-norm update
            try:
                out = model(self.inputs[:1].clone())
            except (RuntimeError, ValueError, TypeError, IndexError) as err:
                raise ValueError(
                    f"inputs: the model cannot be applied to inputs of shape {tuple(inputs.shape)} "
                    f"(one example: {tuple(inputs.shape[1:])}, dtype {inputs.dtype})"
                    f"{_expected_input(model, inputs)}; torch says: {str(err).splitlines()[0]}"
                ) from err
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"model output: expected a tensor, got {type(out).__name__}")
        if likelihood == "categorical" and (out.ndim != 2 or out.shape[1] < 2):
            raise ValueError(
                f"model output: expected logits of shape (N, C) with C >= 2 for likelihood="
                f"'categorical', got shape {tuple(out.shape)} for N = 1"
            )
        if likelihood == "gaussian" and out.ndim != 2:
            raise ValueError(
                f"model output: expected means of shape (N, D) for likelihood='gaussian', got "
                f"shape {tuple(out.shape)} for N = 1"
            )
        if likelihood == "bernoulli" and tuple(out.shape) != (1, 1):
            raise ValueError(
                f"model output: expected one logit per example, shape (N, 1), for likelihood="
                f"'bernoulli', got shape {tuple(out.shape)} for N = 1"
            )
        if out.dtype != dtype:
            raise TypeError(f"model output: expected dtype {dtype} (that of the parameters), got {out.dtype}")
        self.out_dim = out.shape[1]
        self.dtype = dtype
        self.params = {n: p.detach() for n, p in self.named}
        self.numel = sum(p.numel() for _, p in self.named)
        self.slots = _param_slots(model, self.named)

    # -- targets
    def check_targets(self, targets, name="targets"):
        n, c = self.n, self.out_dim
        if targets is None:
            raise ValueError(f"{name}: required for this estimator/function, got None")
        if not isinstance(targets, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(targets).__name__}")
        targets = _usable(targets)
        if self.likelihood == "categorical":
            if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
                raise TypeError(f"{name}: expected an integer tensor of class indices, got dtype {targets.dtype}")
            if tuple(targets.shape) != (n,):
                raise ValueError(f"{name}: expected shape ({n},), got {tuple(targets.shape)}")
            if targets.min() < 0 or targets.max() >= c:
                raise ValueError(
                    f"{name}: expected class indices in [0, {c}), got values in "
                    f"[{int(targets.min())}, {int(targets.max())}]"
                )
            return targets.long()
        if self.likelihood == "bernoulli":
            if tuple(targets.shape) not in ((n,), (n, 1)):
                raise ValueError(f"{name}: expected shape ({n},) or ({n}, 1), got {tuple(targets.shape)}")
            t = targets.reshape(n, 1).to(self.dtype)
            if not ((t == 0) | (t == 1)).all():
                raise ValueError(f"{name}: expected values in {{0, 1}} for likelihood='bernoulli'")
            return t
        # gaussian
        if not targets.is_floating_point():
            raise TypeError(
                f"{name}: expected a floating-point tensor for likelihood='gaussian', got dtype {targets.dtype}"
            )
        if tuple(targets.shape) == (n,) and c == 1:
            targets = targets.reshape(n, 1)
        if tuple(targets.shape) != (n, c):
            raise ValueError(f"{name}: expected shape ({n}, {c}), got {tuple(targets.shape)}")
        if not _all_finite(targets):
            raise ValueError(f"{name}: expected finite values, found NaN or inf")
        return targets.to(self.dtype)

    def check_dense(self, function):
        if self.numel > MAX_DENSE_PARAMS:
            raise ValueError(
                f"model: {function} builds a dense (P, P) matrix and P = {self.numel} trainable "
                f"parameters exceeds MAX_DENSE_PARAMS = {MAX_DENSE_PARAMS}; use fisher_diagonal, or "
                f"freeze parameters (requires_grad=False) to look at a block"
            )

    def chunks(self, size):
        for start in range(0, self.n, size):
            yield start, min(start + size, self.n)

    def call(self, params, x):
        """``model(x)`` with the trainable parameters replaced by ``params`` (name -> tensor)."""
        return _call_with(self.model, self.slots, params, x)

    def forward_single(self, params, x):
        """Output of one example (no batch axis) as a function of the trainable parameters."""
        return self.call(params, x.unsqueeze(0)).squeeze(0)


def _param_slots(model, named):
    """Every place ``(module, attribute, name)`` that holds a trainable parameter.

    A module that appears several times in the model (``model.modules()`` lists it once) and a
    parameter shared by several modules (tied weights) are both handled: every slot that
    holds the parameter gets the same replacement tensor, and each slot is swapped once.
    """
    ids = {id(p): name for name, p in named}
    return [
        (m, attr, ids[id(p)])
        for m in model.modules()
        for attr, p in m._parameters.items()
        if p is not None and id(p) in ids
    ]


def _call_with(model, slots, params, x):
    """``model(x)`` with the parameter in every slot replaced by ``params[name]`` (restored afterwards).

    Used instead of ``torch.func.functional_call``, which (torch 2.13) leaves a module that
    appears twice in the model with a plain tensor in place of its parameter.
    """
    saved = [m._parameters[attr] for m, attr, _ in slots]
    try:
        for m, attr, name in slots:
            m._parameters[attr] = params[name]
        return model(x)
    finally:
        for (m, attr, _), p in zip(slots, saved):
            m._parameters[attr] = p


def _expected_input(model, inputs):
    """A hint on the input size the model expects (first Linear/Conv layer), or ''."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            if inputs.shape[-1] != m.in_features:
                return (
                    f"; its first nn.Linear layer ({name!r}) expects {m.in_features} input features, the "
                    f"inputs have {inputs.shape[-1]}"
                )
            return ""
        if isinstance(m, nn.modules.conv._ConvNd):
            if inputs.ndim >= 3 and inputs.shape[1] != m.in_channels:
                return (
                    f"; its first convolution ({name!r}) expects {m.in_channels} input channels, the "
                    f"inputs have {inputs.shape[1]}"
                )
            return ""
    return ""
