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
``flatten_params``          dict of per-parameter tensors -> one vector (P,)
``unflatten_params``        one vector (P,) -> dict of per-parameter tensors
=========================  =================================================================

Dense matrices flatten the *trainable* parameters (``requires_grad=True``) in the order of
``model.named_parameters()``; parameters with ``requires_grad=False`` are left out.

Every function evaluates the model in **eval mode** (dropout off, batch norm with its running
statistics) and leaves the model as it found it: the train/eval flag of every submodule and
the ``requires_grad`` flag of every parameter are restored, also when the call raises.

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
  one column fewer). Gaussian: ``e_d / sqrt(sigma2)``; Bernoulli: ``sqrt(s (1 - s))`` with
  ``s = sigmoid(f)``;
* mc: ``(e_yhat - p) / sqrt(S)`` for ``S = num_samples`` labels ``yhat`` drawn from the model;
* empirical: the output-space score of the observed target, e.g. ``e_y - p``;
* batched_empirical does not fit this pattern: one ordinary backward pass per minibatch.

For ``nn.Sequential`` models made of ``nn.Linear`` layers and elementwise layers (ReLU,
LeakyReLU, Tanh, Sigmoid, Identity, Flatten, Dropout) the diagonal takes a fast path: the
``K`` vectors of all examples in a chunk are backpropagated together by hand, and since the
per-example gradient of a Linear weight is the outer product ``delta a^T`` of the
backpropagated output gradient and the layer input, the sum over examples and ``k`` of its
square is the single matrix product ``(sum_k delta^2)^T (a^2)`` (Linear layers must see
2-D inputs ``(n, features)``; otherwise the generic path is used). Every other model takes a
generic ``torch.func`` path (``vmap`` over examples of ``vjp``). Both paths give the same
numbers (tested); ``_fast_plan(model)`` tells which one a model takes.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import nn
from torch.func import functional_call, vjp, vmap

__all__ = [
    "LIKELIHOODS",
    "ESTIMATORS",
    "fisher_diagonal",
    "fisher_matrix",
    "expected_hessian",
    "hessian",
    "ggn",
    "sample_targets",
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
    return named


@contextmanager
def _eval_mode(model):
    """Put every submodule in eval mode; restore modes and requires_grad flags afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        with torch.enable_grad():
            yield
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in flags:
            p.requires_grad_(flag)


def _check_choice(name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}: expected one of {list(choices)}, got {value!r}")


def _check_positive_int(name, value, allow_none=False):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected a positive int{' or None' if allow_none else ''}, "
                        f"got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {value}")


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
        if isinstance(sigma2, bool) or not isinstance(sigma2, (int, float)) or not math.isfinite(sigma2) \
                or sigma2 <= 0:
            raise ValueError(f"sigma2: expected a finite float > 0, got {sigma2!r}")
        self.sigma2 = float(sigma2)
        _check_positive_int("batch_size", batch_size, allow_none=True)
        self.batch_size = batch_size
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
        dtype = self.named[0][1].dtype
        for name, p in self.named:
            if not _all_finite(p.detach()):
                raise ValueError(f"model: parameter {name!r} contains NaN or inf")
        if inputs.dtype != dtype:
            raise TypeError(f"inputs: expected dtype {dtype} (that of the model's parameters), got {inputs.dtype}")
        self.inputs = inputs
        self.n = inputs.shape[0]
        with _eval_mode(model), torch.no_grad():  # eval: no dropout draw, no batch-norm update
            out = model(inputs[:1].clone())
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
        self.out_dim = out.shape[1]
        self.dtype = dtype
        self.params = {n: p.detach() for n, p in self.named}
        self.numel = sum(p.numel() for _, p in self.named)

    # -- targets
    def check_targets(self, targets, name="targets"):
        n, c = self.n, self.out_dim
        if targets is None:
            raise ValueError(f"{name}: required for this estimator/function, got None")
        if not isinstance(targets, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(targets).__name__}")
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

    def forward_single(self, params, x):
        """Output of one example (no batch axis) as a function of the trainable parameters."""
        return functional_call(self.model, params, (x.unsqueeze(0),)).squeeze(0)


# ------------------------------------------------------------------- likelihood pieces


def _nll(f, y, likelihood, sigma2):
    """Per-example negative log-likelihood, shape (n,). ``y`` as returned by check_targets."""
    if likelihood == "categorical":
        return -torch.log_softmax(f, dim=-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
    if likelihood == "bernoulli":
        return nn.functional.binary_cross_entropy_with_logits(f, y, reduction="none").sum(-1)
    d = f.shape[-1]
    return ((y - f) ** 2).sum(-1) / (2 * sigma2) + 0.5 * d * math.log(2 * math.pi * sigma2)


def _score_out(f, y, likelihood, sigma2):
    """grad_f log p(y | f) for a batch: f (n, C), y per check_targets -> (n, C)."""
    if likelihood == "categorical":
        return nn.functional.one_hot(y, f.shape[-1]).to(f.dtype) - torch.softmax(f, dim=-1)
    if likelihood == "bernoulli":
        return y - torch.sigmoid(f)
    return (y - f) / sigma2


def _output_hessian(f, likelihood, sigma2):
    """Lambda_n = Hessian of the NLL w.r.t. the outputs, shape (n, C, C)."""
    n, c = f.shape
    if likelihood == "categorical":
        p = torch.softmax(f, dim=-1)
        return torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)
    if likelihood == "bernoulli":
        s = torch.sigmoid(f)
        return (s * (1 - s)).unsqueeze(-1)
    return torch.eye(c, dtype=f.dtype).expand(n, c, c) / sigma2


def _sqrt_output_hessian(f, likelihood, sigma2):
    """Columns v_k with sum_k v_k v_k^T = Lambda_n, returned as (n, K, C)."""
    n, c = f.shape
    if likelihood == "categorical":
        p = torch.softmax(f, dim=-1)
        eye = torch.eye(c, dtype=f.dtype)
        return p.sqrt().unsqueeze(-1) * (eye - p.unsqueeze(-2))  # [n, k, :] = sqrt(p_k) (e_k - p)
    if likelihood == "bernoulli":
        s = torch.sigmoid(f)
        return (s * (1 - s)).sqrt().unsqueeze(-1)
    return (torch.eye(c, dtype=f.dtype) / math.sqrt(sigma2)).expand(n, c, c)


def _cholesky_output_hessian(f):
    """C - 1 columns ``v_k`` with ``sum_k v_k v_k^T = diag(p) - p p^T`` (categorical), (n, C-1, C).

    The Cholesky factor of the multinomial covariance in closed form (Tanabe and Sagae,
    1992): with tail sums ``q_j = sum_{i >= j} p_i``, column ``j`` has
    ``L[j, j] = sqrt(p_j q_{j+1} / q_j)``, ``L[i, j] = -p_i sqrt(p_j / (q_j q_{j+1}))`` for
    ``i > j`` and zeros above; the last column is zero and is dropped. Used by the fast
    path: one backpropagated column fewer than the symmetric factor.
    """
    p = torch.softmax(f, dim=-1)
    n, c = p.shape
    q = p.flip(-1).cumsum(-1).flip(-1)
    q_next = torch.cat([q[:, 1:], torch.zeros_like(q[:, :1])], 1)
    qq = q * q_next
    ok = qq > 0
    diag = torch.where(ok, p * q_next / torch.where(ok, q, 1.0), 0.0).sqrt()
    off = torch.where(ok, (p / torch.where(ok, qq, 1.0)).sqrt(), 0.0)
    below = torch.ones(c, c, dtype=torch.bool).tril(-1)  # [i, j]: i > j
    lower = torch.diag_embed(diag) - below * p.unsqueeze(-1) * off.unsqueeze(-2)  # [n, i, j]
    return lower[:, :, :c - 1].transpose(1, 2)


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
        v = nn.functional.one_hot(y, f.shape[-1]).to(f.dtype) - torch.softmax(f, -1).unsqueeze(1)
    elif likelihood == "bernoulli":
        v = (y - torch.sigmoid(f)).unsqueeze(-1)
    else:
        v = (y - f.unsqueeze(1)) / sigma2
    return v / math.sqrt(s)


# ------------------------------------------------------------------------- fast path

_ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid)
_PASS = (nn.Identity, nn.Dropout, nn.Flatten)


class _NotFast(Exception):
    pass


def _fast_plan(model):
    """The list of layers if ``model`` takes the fast path, else None."""
    if type(model) is not nn.Sequential:
        return None
    layers = []
    for m in model:
        if type(m) is nn.Sequential:
            sub = _fast_plan(m)
            if sub is None:
                return None
            layers.extend(sub)
        elif type(m) in (nn.Linear,) + _ELEMENTWISE + _PASS:
            if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks:
                return None
            layers.append(m)
        else:
            return None
    if model._forward_hooks or model._forward_pre_hooks:
        return None
    if not any(isinstance(m, nn.Linear) for m in layers):
        return None
    return layers


def _act_derivative(m, z, out):
    if isinstance(m, nn.ReLU):
        return (z > 0).to(z.dtype)
    if isinstance(m, nn.LeakyReLU):
        return torch.where(z > 0, torch.ones_like(z), torch.full_like(z, m.negative_slope))
    if isinstance(m, nn.Tanh):
        return 1 - out * out
    return out * (1 - out)  # Sigmoid


def _fast_diag_chunk(layers, x, factor_fn, acc, trainable_ids, names, scale):
    """Add ``scale * sum_n sum_k (J_n^T v_{n,k})^2`` of one chunk to ``acc`` (name -> tensor)."""
    records = []
    h = x
    with torch.no_grad():
        for m in layers:
            if isinstance(m, nn.Linear):
                if h.ndim != 2:
                    raise _NotFast
                records.append((m, h))
                h = nn.functional.linear(h, m.weight, m.bias)
            elif isinstance(m, _ELEMENTWISE):
                out = m(h.clone()) if getattr(m, "inplace", False) else m(h)
                records.append((m, (h, out)))
                h = out
            elif isinstance(m, nn.Flatten):
                h = m(h)
            # Identity, Dropout (eval): nothing
        first = next(i for i, (m, _) in enumerate(records) if isinstance(m, nn.Linear))
        v = factor_fn(h)  # (n, K, C)
        n, k, _ = v.shape
        delta = v.reshape(n * k, -1).contiguous()  # rows: (example, k); ours to modify in place
        for i in range(len(records) - 1, first - 1, -1):
            m, rec = records[i]
            if isinstance(m, nn.Linear):
                a = rec
                sq = delta * delta
                if k > 1:
                    sq = sq.reshape(n, k, -1).sum(1)  # (n, out): summed over the K columns
                if id(m.weight) in trainable_ids:
                    acc[names[id(m.weight)]].addmm_(sq.T, a * a, alpha=scale)
                if m.bias is not None and id(m.bias) in trainable_ids:
                    acc[names[id(m.bias)]].add_(sq.sum(0), alpha=scale)
                if i > first:
                    delta = delta @ m.weight
            elif isinstance(m, nn.ReLU):
                z, _ = rec
                delta.view(n, k, -1).masked_fill_((z <= 0).unsqueeze(1), 0.0)
            elif isinstance(m, _ELEMENTWISE):
                z, out = rec
                delta.view(n, k, -1).mul_(_act_derivative(m, z, out).unsqueeze(1))
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
    _check_positive_int("num_samples", num_samples)
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
    """Yield (weight, mean log-likelihood gradient of minibatch) for batched_empirical."""
    model = setup.model
    plist = [p for _, p in setup.named]
    for lo, hi in setup.chunks(setup.batch_size):
        f = model(setup.inputs[lo:hi])
        loglik = -_nll(f, targets[lo:hi], setup.likelihood, setup.sigma2).mean()
        grads = torch.autograd.grad(loglik, plist)
        yield (hi - lo) / setup.n, grads




# ------------------------------------------------------------------------ public API


_ESTIMATOR_PARAMS_DOC = """Parameters
    ----------
    model : torch.nn.Module
        Maps inputs ``(N, ...)`` to natural parameters: logits ``(N, C)`` (categorical),
        means ``(N, D)`` (gaussian), one logit ``(N, 1)`` (bernoulli). Evaluated in eval
        mode; its modes and ``requires_grad`` flags are restored afterwards.
    inputs : Tensor (N, ...)
        Floating point, finite, same dtype as the parameters, ``N >= 1``.
    likelihood : {"categorical", "gaussian", "bernoulli"}
    estimator : {"exact", "mc", "empirical", "batched_empirical"}
    targets : Tensor, optional
        Observed targets; required by "empirical" and "batched_empirical", ignored by
        "exact" and "mc". Categorical: integer class indices ``(N,)``; gaussian: floats
        ``(N, D)``; bernoulli: 0/1 ``(N,)`` or ``(N, 1)``.
    num_samples : int >= 1
        Labels drawn per input by "mc".
    batch_size : int >= 1 or None
        For "batched_empirical": the minibatch size ``B`` (required; it changes the result).
        For every other estimator: only the number of examples processed at once (bounds the
        memory; the result does not depend on it up to round-off). ``None`` picks a chunk
        size automatically.
    generator : torch.Generator or None
        Source of the "mc" draws (``None``: PyTorch's global generator). The same generator
        state gives the same labels as :func:`sample_targets`.
    sigma2 : float > 0
        Fixed variance of the Gaussian likelihood (ignored otherwise).
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
            return acc
        plan = _fast_plan(model)
        if plan is not None:
            try:
                return _fast_diagonal(setup, plan, estimator, targets, noise, acc)
            except _NotFast:
                acc = {n: torch.zeros_like(p) for n, p in setup.named}
        for lo, hi, v, grads in _generic_chunks(setup, estimator, targets, noise, k):
            for name in acc:
                acc[name].add_((grads[name] ** 2).sum((0, 1)))
        return {name: t / setup.n for name, t in acc.items()}


def _generic_chunks(setup, estimator, targets, noise, k):
    """Per-chunk ``(lo, hi, v, grads)`` of the generic path: ``v`` the output-space factors of
    ``estimator`` and ``grads`` the per-example parameter gradients they backpropagate to."""
    for lo, hi in setup.chunks(setup.batch_size or _generic_chunk(setup, k)):
        x = setup.inputs[lo:hi]
        with torch.no_grad():
            f = setup.model(x)
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
            return acc
        for lo, hi, v, grads in _generic_chunks(setup, estimator, targets, noise, k):
            g = torch.cat([grads[name].reshape(hi - lo, v.shape[1], -1) for name, _ in setup.named], -1)
            g = g.reshape(-1, P)
            acc.addmm_(g.T, g)
        return acc / setup.n


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
    _check_positive_int("num_samples", num_samples)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
    with _eval_mode(model), torch.no_grad():
        noise = _draw_noise(setup.n, num_samples, setup.out_dim, likelihood, generator, setup.dtype)
        f = model(inputs)
        return _noise_to_targets(f, noise, likelihood, setup.sigma2)


def _flat_function(setup, fn):
    """theta (P,) -> fn(outputs of the chunk) using functional_call."""
    def wrapped(theta, x, *args):
        params, i = {}, 0
        for name, p in setup.named:
            params[name] = theta[i:i + p.numel()].reshape(p.shape)
            i += p.numel()
        return fn(functional_call(setup.model, params, (x,)), *args)
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
            acc += _hess(fn)(theta, inputs[lo:hi], targets[lo:hi])
        return acc / setup.n


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
        if likelihood == "categorical":
            w = torch.softmax(f0, -1)
            return -(w * torch.log_softmax(f, -1)).sum()
        if likelihood == "bernoulli":
            w = torch.sigmoid(f0)
            return -(w * nn.functional.logsigmoid(f) + (1 - w) * nn.functional.logsigmoid(-f)).sum()
        return ((f - f0) ** 2).sum() / (2 * s2)  # + constant D/2 (1 + log 2 pi sigma2)

    with _eval_mode(model):
        fn = _flat_function(setup, expected_nll)
        theta = _theta(setup)
        acc = torch.zeros(setup.numel, setup.numel, dtype=setup.dtype)
        size = setup.batch_size or max(1, min(setup.n, 256))
        for lo, hi in setup.chunks(size):
            x = inputs[lo:hi]
            with torch.no_grad():
                f0 = model(x)
            acc += _hess(fn)(theta, x, f0)
        return acc / setup.n


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
            x = inputs[lo:hi]
            J = jac(theta, x)  # (n, C, P)
            with torch.no_grad():
                lam = _output_hessian(model(x), likelihood, setup.sigma2)
            lj = torch.einsum("ncd,ndq->ncq", lam, J).reshape(-1, P)
            acc.addmm_(J.reshape(-1, P).T, lj)
        return acc / setup.n


for _f in (fisher_diagonal, fisher_matrix):
    _f.__doc__ = _f.__doc__.replace("%(estimator_params)s", _ESTIMATOR_PARAMS_DOC.rstrip("\n"))
del _f
