r"""Curvature of the log-likelihood of a PyTorch model: Fisher, empirical Fisher, Hessian, GGN.

Setting
-------
A model maps a batch of inputs ``x`` of shape ``(N, ...)`` to the *natural parameters*
``f_n = f(x_n; theta)`` of a likelihood ``p(y | f)``:

* ``likelihood="categorical"``: ``f_n`` are ``C >= 2`` logits, ``p(y=c | f) = softmax(f)_c``;
  targets are integer class indices in ``[0, C)``.
* ``likelihood="gaussian"``: ``f_n`` are ``D >= 1`` means, ``p(y | f) = N(y; f, sigma2 * I)``
  with a fixed variance ``sigma2``, so ``log p = -||y - f||^2 / (2 sigma2) - (D/2) log(2 pi
  sigma2)``; targets are floats of shape ``(N, D)`` (or ``(N,)`` when ``D = 1``).
* ``likelihood="bernoulli"``: ``f_n`` is one logit (output shape ``(N, 1)``),
  ``p(y=1 | f) = sigmoid(f)``; targets are 0/1 of shape ``(N,)`` or ``(N, 1)``.

Write ``l_n(theta) = -log p(y_n | f(x_n; theta))`` for the negative log-likelihood (NLL),
``g_n = grad_theta log p(y_n | x_n)`` for the score and ``J_n = d f_n / d theta`` for the
Jacobian of the outputs.

Convention: means, not sums
---------------------------
Every quantity returned here is the **mean over the N data points** of a per-example
quantity, e.g. the Fisher ``F = (1/N) sum_n E_{y ~ p(y|x_n)}[g g^T]``. Laplace-style
libraries (``laplace-torch``, BackPACK with ``reduction="sum"``) work with the curvature of
the *summed* loss, which is ``N * F``.

The public functions
--------------------
=========================  =================================================================
``fisher_diagonal``         diagonal of a Fisher estimator, one tensor per parameter
``fisher_matrix``           the same estimator as a dense ``(P, P)`` matrix
``expected_hessian``        ``-(1/N) sum_n E_y[Hessian of log p(y|x_n)]`` by second derivatives
``hessian``                 Hessian of the mean NLL of the observed targets
``ggn``                     ``(1/N) sum_n J_n^T Lambda_n J_n`` (generalised Gauss-Newton)
``sample_targets``          the labels ``estimator="mc"`` draws (same generator, same draws)
``fisher_path``             which code path ``fisher_diagonal`` takes for a model, and why
``flatten_params``          dict of per-parameter tensors -> one vector (P,)
``unflatten_params``        one vector (P,) -> dict of per-parameter tensors
=========================  =================================================================

Dense matrices flatten the *trainable* parameters (``requires_grad=True``) in the order of
``model.named_parameters()``; parameters with ``requires_grad=False`` are left out.

Every function evaluates the model in **eval mode** (dropout off, batch norm with its running
statistics) and leaves the model as it found it: the train/eval flag of every submodule and
the ``requires_grad`` flag of every parameter are restored, also when the call raises.
Parameters the outputs do not depend on get zeros. Calls work under ``torch.no_grad()`` and
``torch.inference_mode()``, and with inputs or targets created there.

No silent wrong numbers: bad arguments raise ``TypeError``/``ValueError`` naming the argument
(integers and floats may be Python, numpy or 0-d tensor scalars); non-finite inputs,
parameters or model outputs, and results that overflow, raise ``ValueError``.

How it is computed
------------------
All Fisher estimators share one structure. For each example there are ``K`` vectors
``v_{n,k}`` in output space such that the per-example matrix is
``sum_k (J_n^T v_{n,k}) (J_n^T v_{n,k})^T``:

* exact: the columns of a square root ``S_n`` of the Hessian of the NLL with respect to the
  outputs, ``Lambda_n = S_n S_n^T``. Categorical: ``Lambda = diag(p) - p p^T`` and column
  ``c`` is ``sqrt(p_c) (e_c - p)``, the score of class ``c`` weighted by ``sqrt(p_c)`` (so the
  class sum of the Fisher's definition *is* the GGN); the fast path below uses instead the
  ``C - 1`` columns of the closed-form Cholesky factor of ``diag(p) - p p^T`` (same product,
  one column fewer; classes ordered with the most probable one last, which keeps it finite
  and accurate for tiny, subnormal and zero probabilities). Gaussian: ``e_d / sqrt(sigma2)``;
  Bernoulli: ``sqrt(s (1 - s))`` with ``s = sigmoid(f)``. Every ``1 - p`` is formed as a sum
  of the other probabilities (``sigmoid(-f)`` for Bernoulli), never by subtraction;
* mc: ``(e_yhat - p) / sqrt(S)`` for ``S = num_samples`` labels ``yhat`` drawn from the model;
* empirical: the output-space score of the observed target, e.g. ``e_y - p``;
* batched_empirical does not fit this pattern: one ordinary backward pass per minibatch.

For ``nn.Sequential`` models made of ``nn.Linear`` layers and elementwise layers (ReLU,
LeakyReLU, Tanh, Sigmoid, Identity, Flatten, Dropout) the diagonal takes a fast path: the
``K`` vectors of all examples in a chunk are backpropagated together by hand, and since the
per-example gradient of a Linear weight is the outer product ``delta a^T`` of the
backpropagated output gradient and the layer input, the sum over examples and ``k`` of its
square is the single matrix product ``(sum_k delta^2)^T (a^2)`` (Linear layers must see
2-D inputs ``(n, features)``; otherwise the generic path is used; input features that are zero
for every example of a chunk are left out of the first layer's products, exactly). This needs every
parameter to be used once: a repeated module or tied weights would give ``g1^2 + g2^2``
instead of ``(g1 + g2)^2``, so such models take the generic path. Every other model takes a
generic ``torch.func`` path (``vmap`` over examples of ``vjp``). Both paths give the same
numbers (tested); :func:`fisher_path` tells which one a model takes, and why.
"""

from __future__ import annotations

import math
import numbers
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from torch.func import vjp, vmap

__all__ = [
    "LIKELIHOODS",
    "ESTIMATORS",
    "fisher_diagonal",
    "fisher_matrix",
    "expected_hessian",
    "hessian",
    "ggn",
    "sample_targets",
    "fisher_path",
    "flatten_params",
    "unflatten_params",
]

#: Supported likelihoods (the model returns their natural parameters).
LIKELIHOODS = ("categorical", "gaussian", "bernoulli")
#: Supported Fisher estimators.
ESTIMATORS = ("exact", "mc", "empirical", "batched_empirical")

#: Chunk size (examples processed at once) of the fast Sequential/Linear path.
FAST_CHUNK = 1024
#: Number of tensor elements the generic torch.func path may materialise per chunk.
GENERIC_BUDGET = 2**23
#: Largest number of parameters for the dense (P, P) functions (20,000**2 float64 = 3.2 GB).
MAX_DENSE_PARAMS = 20_000


# ----------------------------------------------------------------------------- helpers


def flatten_params(tensors: dict) -> torch.Tensor:
    """Concatenate a dict of tensors (in its insertion order) into one vector.

    Applied to the dict returned by :func:`fisher_diagonal` this gives the diagonal of
    :func:`fisher_matrix` (both use the order of ``model.named_parameters()``).

    >>> flatten_params({"w": torch.ones(2, 2), "b": torch.zeros(2)}).tolist()
    [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    """
    if not isinstance(tensors, dict) or not tensors:
        raise TypeError(f"tensors: expected a non-empty dict of tensors, got {type(tensors).__name__}")
    return torch.cat([t.reshape(-1) for t in tensors.values()])


def unflatten_params(vector: torch.Tensor, model: nn.Module) -> dict:
    """Split a vector of length ``P`` into tensors shaped like the trainable parameters.

    The inverse of :func:`flatten_params` for the dict of ``model``'s trainable parameters.

    >>> net = nn.Linear(2, 1)
    >>> {k: tuple(v.shape) for k, v in unflatten_params(torch.arange(3.), net).items()}
    {'weight': (1, 2), 'bias': (1,)}
    """
    named = _trainable(model)
    total = sum(p.numel() for _, p in named)
    if not isinstance(vector, torch.Tensor) or vector.ndim != 1 or vector.numel() != total:
        shape = tuple(vector.shape) if isinstance(vector, torch.Tensor) else type(vector).__name__
        raise ValueError(f"vector: expected a 1-D tensor of length {total}, got {shape}")
    out, i = {}, 0
    for name, p in named:
        out[name] = vector[i:i + p.numel()].reshape(p.shape)
        i += p.numel()
    return out


def _trainable(model):
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("model: expected at least one parameter with requires_grad=True, found none")
    for n, p in named:
        if p.is_inference():
            raise ValueError(f"model: parameter {n!r} was created under torch.inference_mode() and cannot be "
                             f"differentiated; build the model outside inference mode (or load its state_dict "
                             f"into one built outside)")
    return named


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


def _check_choice(name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}: expected one of {list(choices)}, got {value!r}")


def _plain_number(value):
    """numpy scalars, 0-d numpy arrays and 0-d tensors -> the Python number they hold; else ``value``."""
    if isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim == 0:
        return value.item()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _describe(value):
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return f"{type(value).__name__} of shape {tuple(value.shape)} and dtype {value.dtype}"
    return f"{type(value).__name__} {value!r}"


def _check_positive_int(name, value, allow_none=False):
    """An int >= 1 (Python, numpy or 0-d integer tensor), returned as a Python int."""
    if value is None and allow_none:
        return None
    number = _plain_number(value)
    if isinstance(number, bool) or not isinstance(number, numbers.Integral):
        raise TypeError(f"{name}: expected a positive int{' or None' if allow_none else ''} (Python, numpy or "
                        f"a 0-d integer tensor), got {_describe(value)}")
    if number < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {number}")
    return int(number)


def _check_positive_float(name, value):
    """A finite real number > 0 (Python, numpy or 0-d real tensor), returned as a Python float."""
    number = _plain_number(value)
    if isinstance(number, bool) or not isinstance(number, numbers.Real):
        raise TypeError(f"{name}: expected a finite real number > 0 (Python, numpy or a 0-d tensor), got "
                        f"{_describe(value)}")
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{name}: expected a finite float > 0, got {number!r}")
    return float(number)


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
        raise ValueError(f"model: its outputs are not finite (NaN or inf){where}, although the inputs and "
                         f"parameters are; the activations overflow in {f.dtype} (rescale the inputs, or use "
                         f"float64)")


def _check_result(result, function):
    """ValueError if an accumulated result overflowed although every output was finite."""
    values = result.values() if isinstance(result, dict) else (result,)
    if not all(_all_finite(t) for t in values):
        raise ValueError(f"model: {function} is not finite (overflow) although the model's outputs are finite: "
                         f"the per-example gradients are too large for {next(iter(values)).dtype} (rescale the "
                         f"inputs, or use float64)")
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
    return all(bool(torch.isfinite(t[i:i + rows]).all()) for i in range(0, t.shape[0], rows))


class _Setup:
    """Validated arguments shared by all public functions."""

    def __init__(self, model, inputs, likelihood, sigma2, batch_size=None):
        _check_choice("likelihood", likelihood, LIKELIHOODS)
        self.named = _trainable(model)
        self.model = model
        self.likelihood = likelihood
        self.sigma2 = _check_positive_float("sigma2", sigma2)
        self.batch_size = _check_positive_int("batch_size", batch_size, allow_none=True)
        if not isinstance(inputs, torch.Tensor):
            raise TypeError(f"inputs: expected a torch.Tensor of shape (N, ...), got {type(inputs).__name__}")
        if inputs.ndim < 2:
            raise ValueError(f"inputs: expected a tensor with at least 2 dimensions (N, ...), got shape "
                             f"{tuple(inputs.shape)}")
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
            raise TypeError(f"model: its parameters have mixed dtypes ({listing}); convert the model to one "
                            f"dtype, e.g. model.double()")
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
                raise ValueError(f"inputs: the model cannot be applied to inputs of shape {tuple(inputs.shape)} "
                                 f"(one example: {tuple(inputs.shape[1:])}, dtype {inputs.dtype})"
                                 f"{_expected_input(model, inputs)}; torch says: {str(err).splitlines()[0]}") \
                    from err
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"model output: expected a tensor, got {type(out).__name__}")
        if likelihood == "categorical" and (out.ndim != 2 or out.shape[1] < 2):
            raise ValueError(f"model output: expected logits of shape (N, C) with C >= 2 for likelihood="
                             f"'categorical', got shape {tuple(out.shape)} for N = 1")
        if likelihood == "gaussian" and out.ndim != 2:
            raise ValueError(f"model output: expected means of shape (N, D) for likelihood='gaussian', got "
                             f"shape {tuple(out.shape)} for N = 1")
        if likelihood == "bernoulli" and tuple(out.shape) != (1, 1):
            raise ValueError(f"model output: expected one logit per example, shape (N, 1), for likelihood="
                             f"'bernoulli', got shape {tuple(out.shape)} for N = 1")
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
                raise ValueError(f"{name}: expected class indices in [0, {c}), got values in "
                                 f"[{int(targets.min())}, {int(targets.max())}]")
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
            raise TypeError(f"{name}: expected a floating-point tensor for likelihood='gaussian', got dtype "
                            f"{targets.dtype}")
        if tuple(targets.shape) == (n,) and c == 1:
            targets = targets.reshape(n, 1)
        if tuple(targets.shape) != (n, c):
            raise ValueError(f"{name}: expected shape ({n}, {c}), got {tuple(targets.shape)}")
        if not _all_finite(targets):
            raise ValueError(f"{name}: expected finite values, found NaN or inf")
        return targets.to(self.dtype)

    def check_dense(self, function):
        if self.numel > MAX_DENSE_PARAMS:
            raise ValueError(f"model: {function} builds a dense (P, P) matrix and P = {self.numel} trainable "
                             f"parameters exceeds MAX_DENSE_PARAMS = {MAX_DENSE_PARAMS}; use fisher_diagonal, or "
                             f"freeze parameters (requires_grad=False) to look at a block")

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
    return [(m, attr, ids[id(p)]) for m in model.modules() for attr, p in m._parameters.items()
            if p is not None and id(p) in ids]


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
                return (f"; its first nn.Linear layer ({name!r}) expects {m.in_features} input features, the "
                        f"inputs have {inputs.shape[-1]}")
            return ""
        if isinstance(m, nn.modules.conv._ConvNd):
            if inputs.ndim >= 3 and inputs.shape[1] != m.in_channels:
                return (f"; its first convolution ({name!r}) expects {m.in_channels} input channels, the "
                        f"inputs have {inputs.shape[1]}")
            return ""
    return ""


# ------------------------------------------------------------------- likelihood pieces


def _nll(f, y, likelihood, sigma2):
    """Per-example negative log-likelihood, shape (n,). ``y`` as returned by check_targets.

    Written so that autograd's first and second derivatives have no ``1 - p`` cancellation
    (which loses every digit once a probability rounds to 1): categorical
    ``-log p_y = _pivoted_lse(f) - (f_y - f_m)`` with ``m`` the most probable class (see
    :func:`_pivoted_lse`); Bernoulli ``y softplus(-f) + (1 - y) softplus(f)``.
    """
    if likelihood == "categorical":
        lse, fm = _pivoted_lse(f)
        return lse - (f.gather(-1, y.unsqueeze(-1)).squeeze(-1) - fm)
    if likelihood == "bernoulli":
        return (y * nn.functional.softplus(-f) + (1 - y) * nn.functional.softplus(f)).sum(-1)
    d = f.shape[-1]
    return ((y - f) ** 2).sum(-1) / (2 * sigma2) + 0.5 * d * math.log(2 * math.pi * sigma2)


def _pivoted_lse(f):
    """``(log sum_c exp(f_c - f_m), f_m)`` per row, ``m`` the most probable class.

    The ``m`` term is the constant ``exp(0)``, so autograd's derivatives involve only
    ``p_c`` for ``c != m`` and ``1 - p_m = sum_{c != m} p_c``: no ``1 - p`` cancellation.
    """
    m = f.detach().argmax(-1, keepdim=True)
    fm = f.gather(-1, m)
    z = (f - fm).masked_fill(nn.functional.one_hot(m.squeeze(-1), f.shape[-1]).bool(), 0.0)
    return torch.logsumexp(z, dim=-1), fm.squeeze(-1)


def _one_minus_softmax(p):
    """``1 - p_c = sum_{i != c} p_i`` for every class, as sums of positive numbers (n, C).

    ``1 - p_c`` computed by subtraction loses all digits once ``p_c`` rounds to 1 (e.g. float32
    logits 14 apart); the prefix and suffix sums of the other probabilities do not.
    """
    zero = torch.zeros_like(p[:, :1])
    before = torch.cat([zero, p[:, :-1].cumsum(-1)], 1)
    after = torch.cat([p[:, 1:].flip(-1).cumsum(-1).flip(-1), zero], 1)
    return before + after


def _score_out(f, y, likelihood, sigma2):
    """grad_f log p(y | f) for a batch: f (n, C), y per check_targets -> (n, C).

    Categorical ``e_y - p`` and Bernoulli ``y - s`` are formed without subtracting from 1.
    """
    if likelihood == "categorical":
        p = torch.softmax(f, dim=-1)
        rest = _one_minus_softmax(p).gather(-1, y.unsqueeze(-1))
        return (-p).scatter_(-1, y.unsqueeze(-1), rest)
    if likelihood == "bernoulli":
        return torch.where(y > 0.5, torch.sigmoid(-f), -torch.sigmoid(f))
    return (y - f) / sigma2


def _output_hessian(f, likelihood, sigma2):
    """Lambda_n = Hessian of the NLL w.r.t. the outputs, shape (n, C, C)."""
    n, c = f.shape
    if likelihood == "categorical":
        p = torch.softmax(f, dim=-1)
        lam = -p.unsqueeze(-1) * p.unsqueeze(-2)
        lam.diagonal(dim1=-2, dim2=-1).copy_(p * _one_minus_softmax(p))  # p_c (1 - p_c), accurately
        return lam
    if likelihood == "bernoulli":
        return (torch.sigmoid(f) * torch.sigmoid(-f)).unsqueeze(-1)
    return torch.eye(c, dtype=f.dtype).expand(n, c, c) / sigma2


def _sqrt_output_hessian(f, likelihood, sigma2):
    """Columns v_k with sum_k v_k v_k^T = Lambda_n, returned as (n, K, C)."""
    n, c = f.shape
    if likelihood == "categorical":
        p = torch.softmax(f, dim=-1)
        root = p.sqrt()
        v = -root.unsqueeze(-1) * p.unsqueeze(-2)  # [n, k, :] = sqrt(p_k) (e_k - p)
        v.diagonal(dim1=-2, dim2=-1).copy_(root * _one_minus_softmax(p))
        return v
    if likelihood == "bernoulli":
        return (torch.sigmoid(f) * torch.sigmoid(-f)).sqrt().unsqueeze(-1)
    return (torch.eye(c, dtype=f.dtype) / math.sqrt(sigma2)).expand(n, c, c)


def _cholesky_output_hessian(f):
    """C - 1 columns ``v_k`` with ``sum_k v_k v_k^T = diag(p) - p p^T`` (categorical), (n, C-1, C).

    The Cholesky factor of the multinomial covariance in closed form (Tanabe and Sagae,
    1992): with the classes in some order and tail sums ``q_j = sum_{i >= j} p_i``, column
    ``j`` has ``L[j, j] = sqrt(p_j / q_j) sqrt(q_{j+1})``, ``L[i, j] = -p_i sqrt(p_j / q_j) /
    sqrt(q_{j+1})`` for ``i > j`` and zeros above; the last column is zero and is dropped.

    Stability: the classes are ordered with the most probable one **last**, so every tail sum
    ``q_{j+1}`` that is divided by is at least ``max_c p_c >= 1/C``. Every factor is then
    bounded (``p_j / q_j`` in [0, 1], ``1 / sqrt(q_{j+1}) <= sqrt(C)``): no overflow, no
    ``0/0``, for any softmax output in float32 or float64 (tiny, subnormal or zero
    probabilities included), and the diagonal ``p_c (1 - p_c)`` of the product comes out as a
    sum of positive terms (no ``1 - p`` cancellation). Used by the fast path: one
    backpropagated column fewer than the symmetric factor.
    """
    p = torch.softmax(f, dim=-1)
    n, c = p.shape
    rows = torch.arange(n)
    top = p.argmax(-1)
    order = torch.arange(c).repeat(n, 1)  # a swap of the most probable class and the last one
    order[rows, top] = c - 1
    order[:, c - 1] = top
    ps = p.gather(-1, order)
    q = ps.flip(-1).cumsum(-1).flip(-1)  # q[:, j] = sum_{i >= j} ps_i >= max p
    q_next = q[:, 1:].sqrt()  # sqrt(q_{j+1}) for the kept columns j = 0 .. C-2, >= sqrt(1/C)
    r = (ps[:, :-1] / q[:, :-1]).sqrt()  # sqrt(p_j / q_j) in [0, 1]
    lower = -ps.unsqueeze(-1) * (r / q_next).unsqueeze(-2)  # [n, i, j] for i > j
    lower = lower * torch.ones(c, c - 1, dtype=torch.bool).tril(-1)
    lower.diagonal(dim1=-2, dim2=-1).copy_(r * q_next)
    # back to the original class order: row i of the ordered factor belongs to class order[i]
    # (a swap is its own inverse)
    return lower.gather(1, order.unsqueeze(-1).expand(n, c, c - 1)).transpose(1, 2)


def _draw_noise(n, num_samples, out_dim, likelihood, generator, dtype):
    """Random numbers for estimator='mc', drawn once for the whole data set (chunk-invariant)."""
    if likelihood == "gaussian":
        return torch.randn((n, num_samples, out_dim), generator=generator, dtype=torch.float64).to(dtype)
    return torch.rand((n, num_samples), generator=generator, dtype=torch.float64)


def _noise_to_targets(f, noise, likelihood, sigma2):
    """Turn the noise of _draw_noise into sampled targets for outputs f (n, C)."""
    if likelihood == "categorical":
        cdf = torch.softmax(f.detach().double(), dim=-1).cumsum(-1)  # (n, C)
        labels = (cdf.unsqueeze(1) < noise.unsqueeze(-1)).sum(-1)  # (n, S)
        return labels.clamp_(max=f.shape[-1] - 1)
    if likelihood == "bernoulli":
        s = torch.sigmoid(f.detach().double())  # (n, 1)
        return (noise < s).to(f.dtype)  # (n, S)
    return f.detach().unsqueeze(1) + math.sqrt(sigma2) * noise  # (n, S, D)


def _factors(f, likelihood, estimator, sigma2, targets=None, noise=None, cholesky=False):
    """The output-space vectors v_{n,k} of the module docstring, shape (n, K, C)."""
    if estimator == "exact" and likelihood == "categorical" and cholesky:
        return _cholesky_output_hessian(f)
    if estimator == "exact":
        return _sqrt_output_hessian(f, likelihood, sigma2)
    if estimator == "empirical":
        return _score_out(f, targets, likelihood, sigma2).unsqueeze(1)
    # mc
    s = noise.shape[1]
    y = _noise_to_targets(f, noise, likelihood, sigma2)
    if likelihood == "categorical":
        p = torch.softmax(f, -1)
        rest = _one_minus_softmax(p).unsqueeze(1).expand(-1, s, -1).gather(-1, y.unsqueeze(-1))
        v = (-p).unsqueeze(1).repeat(1, s, 1).scatter_(-1, y.unsqueeze(-1), rest)
    elif likelihood == "bernoulli":
        v = torch.where(y > 0.5, torch.sigmoid(-f), -torch.sigmoid(f)).unsqueeze(-1)
    else:
        v = (y - f.unsqueeze(1)) / sigma2
    return v / math.sqrt(s)


# ------------------------------------------------------------------------- fast path

_ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid)
_PASS = (nn.Identity, nn.Dropout, nn.Flatten)


class _NotFast(Exception):
    pass


_FAST_TYPES = (nn.Linear,) + _ELEMENTWISE + _PASS
_FAST_NAMES = "nn.Linear, " + ", ".join(f"nn.{t.__name__}" for t in _ELEMENTWISE + _PASS) + " and nested nn.Sequential"
_REUSE = ("its per-layer squares would add g1^2 + g2^2 of the two uses instead of the square (g1 + g2)^2 of "
          "the parameter's gradient")


def _hooked(m):
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                or getattr(m, "_backward_pre_hooks", None))


def _global_hooks():
    from torch.nn.modules import module as mod
    return any(getattr(mod, name, None) for name in (
        "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
        "_global_backward_pre_hooks"))


def _plan(model):
    """``(layers, reason)``: the flat list of layers of the fast path (None: generic path) and why."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if type(model) is not nn.Sequential:
        return None, (f"the model is a {type(model).__name__}, not an nn.Sequential (a custom forward can do "
                      f"anything)")
    if _global_hooks():
        return None, "global module hooks are registered (torch.nn.modules.module.register_module_*_hook)"
    layers, where = [], []

    def walk(seq, prefix):
        if _hooked(seq):
            return f"the nn.Sequential {prefix.rstrip('.') or 'model'!r} has hooks"
        for key, m in seq._modules.items():  # not named_children(): that skips a repeated module
            path = prefix + key
            if type(m) is nn.Sequential:
                why = walk(m, path + ".")
                if why:
                    return why
            elif type(m) in _FAST_TYPES:
                if _hooked(m):
                    return f"layer {path!r} ({type(m).__name__}) has hooks"
                layers.append(m)
                where.append(path)
            else:
                return (f"layer {path!r} is a {type(m).__name__}; the fast path handles only {_FAST_NAMES}"
                        if m is not None else f"layer {path!r} is None")
        return None

    why = walk(model, "")
    if why:
        return None, why
    linear = [(path, m) for path, m in zip(where, layers) if type(m) is nn.Linear]
    if not linear:
        return None, "the model has no nn.Linear layer"
    seen_modules, seen_params = {}, {}
    for path, m in linear:
        if id(m) in seen_modules:
            return None, (f"layers {seen_modules[id(m)]!r} and {path!r} are the same nn.Linear module (a "
                          f"repeated module); {_REUSE}")
        seen_modules[id(m)] = path
        for attr in ("weight", "bias"):
            t = getattr(m, attr)
            if t is None:
                continue
            if id(t) in seen_params:
                return None, (f"{path}.{attr} and {seen_params[id(t)]} are the same parameter (tied weights); "
                              f"{_REUSE}")
            seen_params[id(t)] = f"{path}.{attr}"
    return layers, (f"an nn.Sequential of {_FAST_NAMES} without hooks, every parameter used once: the squares "
                    f"of the per-example gradients in closed form, layer by layer")


def _fast_plan(model):
    """The list of layers if ``model`` takes the fast path, else None (see :func:`fisher_path`)."""
    return _plan(model)[0]


def _input_dims_ok(layers, inputs):
    """Whether every nn.Linear of the plan sees a 2-D input (n, features), from the shapes alone."""
    ndim = inputs.ndim
    for m in layers:
        if type(m) is nn.Linear:
            if ndim != 2:
                return False
        elif type(m) is nn.Flatten:
            start, end = (d % ndim if d < 0 else d for d in (m.start_dim, m.end_dim))
            ndim = ndim - (end - start) if end >= start else ndim
    return True


def fisher_path(model, inputs=None):
    r"""Which code path :func:`fisher_diagonal` takes for ``model``, and why: ``(path, reason)``.

    ``path`` is ``"fast"`` or ``"generic"`` (the ``reason`` is a sentence):

    * ``"fast"``: ``model`` is a plain ``nn.Sequential`` (possibly nested) of ``nn.Linear``
      and the elementwise layers ReLU, LeakyReLU, Tanh, Sigmoid, Identity, Dropout, Flatten,
      with no hooks, and every parameter is used once. Then the per-example gradient of a
      Linear weight is ``delta_n a_n^T`` and ``sum_n sum_k (grad_{n,k})^2`` is the product
      ``(sum_k delta^2)^T (a^2)``, computed layer by layer without per-example gradients.
    * ``"generic"``: everything else -- custom modules, convolutions, batch norm, hooks, and
      **parameters used more than once** (a Linear module repeated in the Sequential, or two
      modules sharing one weight): per-use squares would give ``g1^2 + g2^2`` instead of
      ``(g1 + g2)^2``, so the per-example gradients ``J_n^T v_{n,k}`` are formed with
      ``torch.func`` (``vmap`` of ``vjp``), which sums the uses first.

    Both paths give the same numbers (tested against each other and against the loops of
    :mod:`ewc_lib.reference`). With ``inputs`` (a tensor ``(N, ...)``) the answer also takes
    their shape into account: the fast path needs 2-D inputs ``(n, features)`` at every
    Linear layer, otherwise :func:`fisher_diagonal` falls back to the generic path.
    This describes ``estimator`` "exact", "mc" and "empirical" of :func:`fisher_diagonal`;
    ``"batched_empirical"`` takes one ordinary backward pass per minibatch, and
    :func:`fisher_matrix`, :func:`hessian`, :func:`expected_hessian` and :func:`ggn` always
    use ``torch.func``.

    >>> lin = nn.Linear(3, 3)
    >>> fisher_path(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), lin))[0]
    'fast'
    >>> path, reason = fisher_path(nn.Sequential(lin, nn.Tanh(), lin))
    >>> path
    'generic'
    >>> print(reason.split(";")[0])
    layers '0' and '2' are the same nn.Linear module (a repeated module)
    """
    layers, reason = _plan(model)
    if layers is None:
        return "generic", reason
    if inputs is not None:
        if not isinstance(inputs, torch.Tensor) or inputs.ndim < 2:
            raise ValueError(f"inputs: expected a tensor of shape (N, ...) or None, got {_describe(inputs)}")
        if not _input_dims_ok(layers, inputs):
            return "generic", (f"inputs of shape {tuple(inputs.shape)} reach an nn.Linear layer with more than "
                               f"2 dimensions; the fast path needs (n, features) at every Linear layer")
    return "fast", reason


def _act_derivative(m, z, out):
    if isinstance(m, nn.ReLU):
        return (z > 0).to(z.dtype)
    if isinstance(m, nn.LeakyReLU):
        return torch.where(z > 0, torch.ones_like(z), torch.full_like(z, m.negative_slope))
    if isinstance(m, nn.Tanh):
        return 1 - out * out
    return out * (1 - out)  # Sigmoid


#: The fast path skips the input features (of the model's inputs, at the first Linear layer)
#: that are zero for every example of the chunk -- exactly: they add nothing to the outputs and
#: their weights get zero Fisher -- when at least this fraction of them are zero (e.g. the
#: always-black border pixels of MNIST, about a fifth of the pixels in 1000 images).
ZERO_FEATURES_MIN_FRACTION = 0.125


def _nonzero_features(a):
    """Indices of the columns of ``a`` (n, d) that are not all zero, or None if too few are zero."""
    keep = a.abs().amax(0) != 0  # a column reduction; (a != 0).any(0) is several times slower
    cols = keep.nonzero().squeeze(1)
    if a.shape[1] - cols.numel() < ZERO_FEATURES_MIN_FRACTION * a.shape[1]:
        return None
    return cols


def _fast_diag_chunk(layers, x, factor_fn, acc, trainable_ids, names, scale):
    """Add ``scale * sum_n sum_k (J_n^T v_{n,k})^2`` of one chunk to ``acc`` (name -> tensor).

    Forward through the layers keeping what the backward needs; then backpropagate the
    ``K`` output-space vectors of every example together (rows ``(example, k)``): at a Linear
    layer with input ``a`` and backpropagated ``delta`` the weight gets
    ``(sum_k delta^2)^T (a^2)`` and the bias ``sum_n sum_k delta^2``.
    """
    records = []
    h = x
    first_linear = True
    with torch.no_grad():
        for m in layers:
            if type(m) is nn.Linear:
                if h.ndim != 2:
                    raise _NotFast
                cols = _nonzero_features(h) if first_linear else None
                first_linear = False
                if cols is None:
                    records.append((m, (h, None)))
                    h = nn.functional.linear(h, m.weight, m.bias)
                else:  # all-zero input features: leave them out of the product and the squares
                    h = h.index_select(1, cols)
                    records.append((m, (h, cols)))
                    h = nn.functional.linear(h, m.weight.index_select(1, cols), m.bias)
            elif isinstance(m, _ELEMENTWISE):
                out = m(h.clone()) if getattr(m, "inplace", False) else m(h)
                records.append((m, (h, out)))
                h = out
            elif isinstance(m, nn.Flatten):
                h = m(h)
            # Identity, Dropout (eval): nothing
        first = next(i for i, (m, _) in enumerate(records) if type(m) is nn.Linear)
        v = factor_fn(h)  # (n, K, C)
        n, k, _ = v.shape
        delta = v.reshape(n * k, -1)  # rows: (example, k)
        for i in range(len(records) - 1, first - 1, -1):
            m, rec = records[i]
            if type(m) is nn.Linear:
                a, cols = rec
                sq = delta * delta
                if k > 1:
                    sq = sq.reshape(n, k, -1).sum(1)  # (n, out): summed over the K columns
                if id(m.weight) in trainable_ids:
                    target = acc[names[id(m.weight)]]
                    if cols is None:
                        target.addmm_(sq.T, a * a, alpha=scale)
                    else:
                        target.index_add_(1, cols, sq.T @ (a * a), alpha=scale)
                if m.bias is not None and id(m.bias) in trainable_ids:
                    acc[names[id(m.bias)]].add_(sq.sum(0), alpha=scale)
                if i > first:
                    delta = delta @ m.weight
            elif type(m) is nn.ReLU:
                z, _ = rec
                delta = torch.ops.aten.threshold_backward(delta.view(n, k, -1), z.unsqueeze(1), 0).view(n * k, -1)
            elif isinstance(m, _ELEMENTWISE):
                z, out = rec
                delta = (delta.view(n, k, -1) * _act_derivative(m, z, out).unsqueeze(1)).view(n * k, -1)
        # (Flatten is not recorded: after the first Linear it acts on 2-D tensors as the identity)


# ------------------------------------------------------------------------ generic path


def _per_example_grads(setup, x, v):
    """J_n^T v_{n,k} for a chunk: dict name -> (n, K, *shape), by torch.func."""
    params = setup.params

    def one(xi, vi):
        _, pullback = vjp(lambda p: setup.forward_single(p, xi), params)
        return vmap(pullback)(vi)[0]

    return vmap(one)(x, v)


def _generic_chunk(setup, k):
    return max(1, min(setup.n, GENERIC_BUDGET // max(1, k * setup.numel)))


def _estimator_args(setup, estimator, targets, num_samples, generator):
    _check_choice("estimator", estimator, ESTIMATORS)
    num_samples = _check_positive_int("num_samples", num_samples)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
    if estimator in ("empirical", "batched_empirical"):
        targets = setup.check_targets(targets)
    else:
        targets = None
    if estimator == "batched_empirical" and setup.batch_size is None:
        raise ValueError("batch_size: required for estimator='batched_empirical' (the minibatch size B), got None")
    noise = None
    if estimator == "mc":
        noise = _draw_noise(setup.n, num_samples, setup.out_dim, setup.likelihood, generator, setup.dtype)
    k = {"exact": setup.out_dim if setup.likelihood != "bernoulli" else 1, "mc": num_samples,
         "empirical": 1, "batched_empirical": 1}[estimator]
    return targets, noise, k


def _batched_grads(setup, targets):
    """Yield (weight, mean log-likelihood gradient of minibatch) for batched_empirical.

    A parameter the outputs do not depend on gets a zero gradient (as on the other paths).
    """
    model = setup.model
    plist = [p for _, p in setup.named]
    for lo, hi in setup.chunks(setup.batch_size):
        f = model(setup.inputs[lo:hi])
        _check_outputs(f.detach(), lo, hi)
        loglik = -_nll(f, targets[lo:hi], setup.likelihood, setup.sigma2).mean()
        grads = torch.autograd.grad(loglik, plist, allow_unused=True)
        yield (hi - lo) / setup.n, [torch.zeros_like(p) if g is None else g for p, g in zip(plist, grads)]




# ------------------------------------------------------------------------ public API


_ESTIMATOR_PARAMS_DOC = """Parameters
    ----------
    model : torch.nn.Module
        Maps inputs ``(N, ...)`` to natural parameters: logits ``(N, C)`` (categorical),
        means ``(N, D)`` (gaussian), one logit ``(N, 1)`` (bernoulli). Evaluated in eval
        mode; its modes and ``requires_grad`` flags are restored afterwards.
    inputs : Tensor (N, ...)
        Floating point, finite, same dtype as the parameters (which must all have one
        dtype), ``N >= 1``, shaped as the model expects. The model's outputs must be finite.
    likelihood : {"categorical", "gaussian", "bernoulli"}
    estimator : {"exact", "mc", "empirical", "batched_empirical"}
    targets : Tensor, optional
        Observed targets; required by "empirical" and "batched_empirical", ignored by
        "exact" and "mc". Categorical: integer class indices ``(N,)``; gaussian: floats
        ``(N, D)``; bernoulli: 0/1 ``(N,)`` or ``(N, 1)``.
    num_samples : int >= 1
        Labels drawn per input by "mc". Integers may be Python ints, numpy integers or 0-d
        integer tensors (here and for ``batch_size``).
    batch_size : int >= 1 or None
        For "batched_empirical": the minibatch size ``B`` (required; it changes the result).
        For every other estimator: only the number of examples processed at once (bounds the
        memory; the result does not depend on it up to round-off). ``None`` picks a chunk
        size automatically.
    generator : torch.Generator or None
        Source of the "mc" draws (``None``: PyTorch's global generator). The same generator
        state gives the same labels as :func:`sample_targets`.
    sigma2 : float > 0
        Fixed variance of the Gaussian likelihood (ignored otherwise); a Python, numpy or
        0-d tensor real number.
"""


def fisher_diagonal(model, inputs, *, likelihood="categorical", estimator="exact", targets=None,
                    num_samples=1, batch_size=None, generator=None, sigma2=1.0):
    r"""Diagonal of a Fisher information estimator, as a dict ``name -> tensor``.

    One tensor per trainable entry of ``model.named_parameters()``, same names, shapes and
    dtype. With ``g(y, x) = grad_theta log p_theta(y | x)`` the estimators are the
    **means over the N data points**

    * ``"exact"``:  ``F_i = (1/N) sum_n E_{y ~ p_theta(y|x_n)} [g_i(y, x_n)^2]``, the
      expectation taken exactly (sum over all classes; closed form for the Gaussian, where
      it equals ``(1/N) sum_n sum_d (d f_nd / d theta_i)^2 / sigma2``). Equal to the
      diagonal of :func:`ggn` and :func:`expected_hessian`.
    * ``"mc"``: ``(1/N) sum_n (1/S) sum_s g_i(yhat_ns, x_n)^2`` with ``S = num_samples``
      labels ``yhat_ns ~ p_theta(y | x_n)`` (drawn with ``generator``); unbiased for
      "exact", with a standard error that falls like ``1/sqrt(S N)``.
    * ``"empirical"``: ``(1/N) sum_n g_i(y_n, x_n)^2`` with the observed ``targets`` (the
      "empirical Fisher" of Kunstner et al., 2019). Not the Fisher in general; equal to it
      in expectation when the targets are drawn from the model.
    * ``"batched_empirical"``: split the data into consecutive minibatches ``b`` of
      ``batch_size = B`` examples (the last one may be smaller) and return
      ``sum_b (|b|/N) (gbar_{b,i})^2`` with ``gbar_b = (1/|b|) sum_{n in b} g(y_n, x_n)``:
      the square of the minibatch-mean gradient, averaged over minibatches weighted by their
      size (a plain average when ``B`` divides ``N``). This is what much EWC code computes.
      For minibatches that look like random samples it is about
      ``empirical / B + (1 - 1/B) * (mean gradient)^2``: near a minimum of the training loss,
      about ``B`` times smaller than the empirical Fisher. ``B = 1`` gives "empirical".

    Sum convention: the curvature of the *summed* NLL used by Laplace libraries (and by
    BackPACK with ``reduction="sum"``) is ``N`` times these numbers.

    %(estimator_params)s

    Returns
    -------
    dict[str, Tensor]

    Example
    -------
    >>> net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    >>> x = torch.randn(5, 3, dtype=torch.float64)
    >>> F = fisher_diagonal(net, x)
    >>> [tuple(t.shape) for t in F.values()]
    [(4, 3), (4,), (2, 4), (2,)]
    >>> M = fisher_matrix(net, x)
    >>> torch.allclose(flatten_params(F), M.diagonal())
    True
    """
    setup = _Setup(model, inputs, likelihood, sigma2, batch_size)
    with _eval_mode(model):
        targets, noise, k = _estimator_args(setup, estimator, targets, num_samples, generator)
        acc = {n: torch.zeros_like(p) for n, p in setup.named}
        if estimator == "batched_empirical":
            for w, grads in _batched_grads(setup, targets):
                for (name, _), g in zip(setup.named, grads):
                    acc[name].add_(w * g.detach() ** 2)
            return _check_result(acc, "the Fisher diagonal")
        plan = _fast_plan(model)
        if plan is not None and _input_dims_ok(plan, setup.inputs):
            try:
                return _check_result(_fast_diagonal(setup, plan, estimator, targets, noise, acc),
                                     "the Fisher diagonal")
            except _NotFast:  # (not expected: _input_dims_ok checks the shapes first)
                acc = {n: torch.zeros_like(p) for n, p in setup.named}
        for lo, hi, v, grads in _generic_chunks(setup, estimator, targets, noise, k):
            for name in acc:
                acc[name].add_((grads[name] ** 2).sum((0, 1)))
        return _check_result({name: t / setup.n for name, t in acc.items()}, "the Fisher diagonal")


def _generic_chunks(setup, estimator, targets, noise, k):
    """Per-chunk ``(lo, hi, v, grads)`` of the generic path: ``v`` the output-space factors of
    ``estimator`` and ``grads`` the per-example parameter gradients they backpropagate to."""
    for lo, hi in setup.chunks(setup.batch_size or _generic_chunk(setup, k)):
        x = setup.inputs[lo:hi]
        with torch.no_grad():
            f = setup.model(x)
        _check_outputs(f, lo, hi)
        v = _factors(f, setup.likelihood, estimator, setup.sigma2,
                     None if targets is None else targets[lo:hi],
                     None if noise is None else noise[lo:hi])
        yield lo, hi, v, _per_example_grads(setup, x, v)


def _fast_diagonal(setup, plan, estimator, targets, noise, acc):
    trainable_ids = {id(p) for _, p in setup.named}
    names = {id(p): n for n, p in setup.named}
    size = setup.batch_size or FAST_CHUNK
    for lo, hi in setup.chunks(size):
        def factor_fn(f, lo=lo, hi=hi):
            _check_outputs(f, lo, hi)
            return _factors(f, setup.likelihood, estimator, setup.sigma2,
                            None if targets is None else targets[lo:hi],
                            None if noise is None else noise[lo:hi], cholesky=True)
        _fast_diag_chunk(plan, setup.inputs[lo:hi], factor_fn, acc, trainable_ids, names, 1.0 / setup.n)
    return acc


def fisher_matrix(model, inputs, *, likelihood="categorical", estimator="exact", targets=None,
                  num_samples=1, batch_size=None, generator=None, sigma2=1.0):
    r"""The Fisher estimator of :func:`fisher_diagonal` as a dense ``(P, P)`` matrix.

    Same estimators, options and conventions: with ``g(y, x)`` the score,
    ``"exact"`` is ``(1/N) sum_n E_{y ~ p_theta(y|x_n)}[g g^T]``, ``"mc"`` replaces the
    expectation by the mean over ``num_samples`` drawn labels, ``"empirical"`` is
    ``(1/N) sum_n g(y_n, x_n) g(y_n, x_n)^T`` and ``"batched_empirical"`` is
    ``sum_b (|b|/N) gbar_b gbar_b^T``. Parameters are flattened in ``named_parameters()``
    order (trainable ones only, see :func:`flatten_params`); its diagonal equals
    :func:`fisher_diagonal` for every estimator (same random draws for "mc" given the same
    generator state). Mean over data points; the summed-loss convention is ``N`` times this.
    Dense: meant for small models (``P`` up to a few thousand).

    %(estimator_params)s

    Example
    -------
    >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 3)).double()
    >>> x = torch.randn(4, 2, dtype=torch.float64)
    >>> F = fisher_matrix(net, x)
    >>> F.shape, torch.allclose(F, F.T), torch.allclose(F, ggn(net, x))
    (torch.Size([21, 21]), True, True)
    """
    setup = _Setup(model, inputs, likelihood, sigma2, batch_size)
    setup.check_dense("fisher_matrix")
    with _eval_mode(model):
        targets, noise, k = _estimator_args(setup, estimator, targets, num_samples, generator)
        P = setup.numel
        acc = torch.zeros(P, P, dtype=setup.dtype)
        if estimator == "batched_empirical":
            for w, grads in _batched_grads(setup, targets):
                g = torch.cat([t.detach().reshape(-1) for t in grads])
                acc.add_(w * torch.outer(g, g))
            return _check_result(acc, "the Fisher matrix")
        for lo, hi, v, grads in _generic_chunks(setup, estimator, targets, noise, k):
            g = torch.cat([grads[name].reshape(hi - lo, v.shape[1], -1) for name, _ in setup.named], -1)
            g = g.reshape(-1, P)
            acc.addmm_(g.T, g)
        return _check_result(acc / setup.n, "the Fisher matrix")


def sample_targets(model, inputs, *, likelihood="categorical", num_samples=1, generator=None, sigma2=1.0):
    r"""The targets ``yhat ~ p_theta(y | x_n)`` that ``estimator="mc"`` draws.

    Returns ``(N, S)`` int64 class indices (categorical), ``(N, S)`` 0/1 floats (bernoulli) or
    ``(N, S, D)`` floats (gaussian) with ``S = num_samples``. From the same generator state,
    :func:`fisher_diagonal` with ``estimator="mc"`` uses exactly these draws, so it equals the
    mean over ``s`` of the empirical Fisher with ``targets=yhat[:, s]``. Categorical draws use
    the inverse CDF of one float64 uniform per label; Gaussian draws are
    ``f + sqrt(sigma2) * eps`` with standard normal ``eps``.

    >>> net = nn.Linear(3, 4)
    >>> y = sample_targets(net, torch.randn(5, 3), num_samples=2, generator=torch.Generator().manual_seed(0))
    >>> tuple(y.shape), y.dtype
    ((5, 2), torch.int64)
    """
    setup = _Setup(model, inputs, likelihood, sigma2)
    num_samples = _check_positive_int("num_samples", num_samples)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
    with _eval_mode(model), torch.no_grad():
        noise = _draw_noise(setup.n, num_samples, setup.out_dim, likelihood, generator, setup.dtype)
        f = model(setup.inputs)
        _check_outputs(f)
        return _noise_to_targets(f, noise, likelihood, setup.sigma2)


def _flat_function(setup, fn):
    """theta (P,) -> fn(outputs of the chunk), the parameters swapped in by ``setup.call``."""
    def wrapped(theta, x, *args):
        params, i = {}, 0
        for name, p in setup.named:
            params[name] = theta[i:i + p.numel()].reshape(p.shape)
            i += p.numel()
        return fn(setup.call(params, x), *args)
    return wrapped


def _hess(fn):
    """Hessian in the first argument by reverse-over-reverse ``torch.func.jacrev``.

    (``torch.func.hessian`` is forward-over-reverse; in torch 2.13 its first use emits a
    ``DeprecationWarning`` from ``torch.jit.script``, which would break warning-free builds.)
    """
    return torch.func.jacrev(torch.func.jacrev(fn))


def _theta(setup):
    return torch.cat([p.detach().reshape(-1) for _, p in setup.named])


def hessian(model, inputs, targets, *, likelihood="categorical", sigma2=1.0, batch_size=None):
    r"""Hessian of the mean negative log-likelihood of the observed data, ``(P, P)``.

    ``H = (1/N) sum_n grad^2_theta [-log p_theta(y_n | x_n)]`` by ``torch.func`` (jacrev of jacrev),
    over the trainable parameters flattened in ``named_parameters()`` order. Unlike the
    Fisher it depends on the targets and need not be positive semi-definite. Kunstner et
    al. (2019, Prop. 2): ``H = ggn + (1/N) sum_n sum_k r_nk grad^2 f_nk`` with residuals
    ``r_n = d(-log p)/d f_n`` (``(f_n - y_n)/sigma2`` for the Gaussian), so ``H`` equals
    :func:`ggn` at a perfect fit of a Gaussian model. Mean convention; the summed loss has
    ``N * H``. ``batch_size`` only chunks the computation.

    >>> net = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).double()
    >>> x = torch.randn(4, 2, dtype=torch.float64)
    >>> y = net(x).detach()   # perfect fit
    >>> H = hessian(net, x, y, likelihood="gaussian")
    >>> torch.allclose(H, ggn(net, x, likelihood="gaussian"))
    True
    """
    setup = _Setup(model, inputs, likelihood, sigma2, batch_size)
    setup.check_dense("hessian")
    with _eval_mode(model):
        targets = setup.check_targets(targets)
        fn = _flat_function(setup, lambda f, y: _nll(f, y, likelihood, setup.sigma2).sum())
        theta = _theta(setup)
        acc = torch.zeros(setup.numel, setup.numel, dtype=setup.dtype)
        size = setup.batch_size or max(1, min(setup.n, 256))
        for lo, hi in setup.chunks(size):
            x = setup.inputs[lo:hi]
            with torch.no_grad():
                _check_outputs(model(x), lo, hi)
            acc += _hess(fn)(theta, x, targets[lo:hi])
        return _check_result(acc / setup.n, "the Hessian")


def expected_hessian(model, inputs, *, likelihood="categorical", sigma2=1.0, batch_size=None):
    r"""Minus the mean expected Hessian of the log-likelihood, ``(P, P)``, by second derivatives.

    ``(1/N) sum_n E_{y ~ p_theta0(y|x_n)} [ -grad^2_theta log p_theta(y | x_n) ]`` at
    ``theta = theta0``, the expectation taken exactly with the sampling distribution frozen
    at ``theta0``: a ``p0``-weighted sum over classes (categorical, bernoulli) or the closed
    form ``E||y - f||^2 = ||f0 - f||^2 + D sigma2`` (gaussian). The Hessian of that
    function of ``theta`` is taken with ``torch.func`` (jacrev of jacrev) -- a different route from
    :func:`fisher_matrix` (outer products of first derivatives) and :func:`ggn`; all three
    agree (the Fisher identity ``F = -E[Hessian]``). Mean convention (sum: ``N`` times).
    ``batch_size`` only chunks the computation.

    >>> net = nn.Sequential(nn.Linear(2, 3), nn.Sigmoid(), nn.Linear(3, 4)).double()
    >>> x = torch.randn(6, 2, dtype=torch.float64)
    >>> torch.allclose(expected_hessian(net, x), fisher_matrix(net, x))
    True
    """
    setup = _Setup(model, inputs, likelihood, sigma2, batch_size)
    setup.check_dense("expected_hessian")
    s2 = setup.sigma2

    def expected_nll(f, f0):
        if likelihood == "categorical":  # sum_y w_y (-log p_y(f)), pivoted as in _nll
            w = torch.softmax(f0, -1)
            lse, fm = _pivoted_lse(f)
            return (lse * w.sum(-1) - (w * f).sum(-1) + fm * w.sum(-1)).sum()
        if likelihood == "bernoulli":
            w = torch.sigmoid(f0)
            return (w * nn.functional.softplus(-f) + torch.sigmoid(-f0) * nn.functional.softplus(f)).sum()
        return ((f - f0) ** 2).sum() / (2 * s2)  # + constant D/2 (1 + log 2 pi sigma2)

    with _eval_mode(model):
        fn = _flat_function(setup, expected_nll)
        theta = _theta(setup)
        acc = torch.zeros(setup.numel, setup.numel, dtype=setup.dtype)
        size = setup.batch_size or max(1, min(setup.n, 256))
        for lo, hi in setup.chunks(size):
            x = setup.inputs[lo:hi]
            with torch.no_grad():
                f0 = model(x)
            _check_outputs(f0, lo, hi)
            acc += _hess(fn)(theta, x, f0)
        return _check_result(acc / setup.n, "the expected Hessian")


def ggn(model, inputs, *, likelihood="categorical", sigma2=1.0, batch_size=None):
    r"""Generalised Gauss-Newton matrix ``(1/N) sum_n J_n^T Lambda_n J_n``, ``(P, P)``.

    ``J_n = d f(x_n) / d theta`` (per-example Jacobians by ``torch.func.jacrev``) and
    ``Lambda_n`` the Hessian of the NLL with respect to the natural parameters:
    ``diag(p) - p p^T`` (categorical), ``s (1 - s)`` (bernoulli), ``I / sigma2``
    (gaussian). It does not depend on targets; for these likelihoods (exponential families
    in their natural parameters) it equals the exact Fisher. Mean convention (sum: ``N``
    times). ``batch_size`` only chunks the computation.

    >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2)).double()
    >>> x = torch.randn(5, 2, dtype=torch.float64)
    >>> torch.allclose(ggn(net, x, likelihood="gaussian", sigma2=2.0),
    ...                fisher_matrix(net, x, likelihood="gaussian", sigma2=2.0))
    True
    """
    setup = _Setup(model, inputs, likelihood, sigma2, batch_size)
    setup.check_dense("ggn")
    with _eval_mode(model):
        P = setup.numel
        acc = torch.zeros(P, P, dtype=setup.dtype)
        size = setup.batch_size or _generic_chunk(setup, setup.out_dim)
        theta = _theta(setup)
        fn = _flat_function(setup, lambda f: f.squeeze(0))
        jac = vmap(torch.func.jacrev(lambda th, xi: fn(th, xi.unsqueeze(0))), in_dims=(None, 0))
        for lo, hi in setup.chunks(size):
            x = setup.inputs[lo:hi]
            with torch.no_grad():
                f = model(x)
            _check_outputs(f, lo, hi)
            J = jac(theta, x)  # (n, C, P)
            lam = _output_hessian(f, likelihood, setup.sigma2)
            lj = torch.einsum("ncd,ndq->ncq", lam, J).reshape(-1, P)
            acc.addmm_(J.reshape(-1, P).T, lj)
        return _check_result(acc / setup.n, "the GGN")


for _f in (fisher_diagonal, fisher_matrix):
    _f.__doc__ = _f.__doc__.replace("%(estimator_params)s", _ESTIMATOR_PARAMS_DOC.rstrip("\n"))
del _f
