r"""The fast path of :func:`~ewc_lib.curvature.fisher_diagonal` for plain MLPs.

For an ``nn.Sequential`` of ``nn.Linear`` layers and elementwise layers (ReLU, LeakyReLU,
Tanh, Sigmoid, Identity, Flatten, Dropout), the ``K`` output-space vectors of all examples
of a chunk are backpropagated together by hand. The per-example gradient of a Linear weight
is the outer product ``delta a^T`` of the backpropagated output gradient and the layer
input, so the sum over examples and ``k`` of its square is the single matrix product
``(sum_k delta^2)^T (a^2)``; no per-example gradient is ever formed. Linear layers must see
2-D inputs ``(n, features)``. Input features that are zero for every example of a chunk are
left out of the first layer's products (exactly). Every parameter must be used once: a
repeated module or tied weights would give ``g1^2 + g2^2`` instead of ``(g1 + g2)^2``, so
such models take the generic path (:mod:`ewc_lib.curvature.fisher`).

:func:`fisher_path` is the public way to ask which path a model takes, and why. A new fast
path (e.g. Conv2d) belongs in a module like this one, with its own plan and a branch in
:func:`~ewc_lib.curvature.fisher_diagonal`.
"""

from __future__ import annotations

import torch
from torch import nn

from .._checks import describe
from ._setup import _check_outputs
from .likelihoods import _factors

__all__ = ["fisher_path", "FAST_CHUNK", "ZERO_FEATURES_MIN_FRACTION"]

#: Chunk size (examples processed at once) of the fast Sequential/Linear path.
FAST_CHUNK = 1024

_ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid)
_PASS = (nn.Identity, nn.Dropout, nn.Flatten)


class _NotFast(Exception):
    pass


_FAST_TYPES = (nn.Linear,) + _ELEMENTWISE + _PASS
_FAST_NAMES = "nn.Linear, " + ", ".join(f"nn.{t.__name__}" for t in _ELEMENTWISE + _PASS) + " and nested nn.Sequential"
_REUSE = (
    "its per-layer squares would add g1^2 + g2^2 of the two uses instead of the square (g1 + g2)^2 of "
    "the parameter's gradient"
)


def _hooked(m):
    return bool(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or getattr(m, "_backward_pre_hooks", None)
    )


def _global_hooks():
    from torch.nn.modules import module as mod

    return any(
        getattr(mod, name, None)
        for name in (
            "_global_forward_hooks",
            "_global_forward_pre_hooks",
            "_global_backward_hooks",
            "_global_backward_pre_hooks",
        )
    )


def _plan(model):
    """``(layers, reason)``: the flat list of layers of the fast path (None: generic path) and why."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if type(model) is not nn.Sequential:
        return None, (f"the model is a {type(model).__name__}, not an nn.Sequential (a custom forward can do anything)")
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
                return (
                    f"layer {path!r} is a {type(m).__name__}; the fast path handles only {_FAST_NAMES}"
                    if m is not None
                    else f"layer {path!r} is None"
                )
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
            return None, (
                f"layers {seen_modules[id(m)]!r} and {path!r} are the same nn.Linear module (a "
                f"repeated module); {_REUSE}"
            )
        seen_modules[id(m)] = path
        for attr in ("weight", "bias"):
            t = getattr(m, attr)
            if t is None:
                continue
            if id(t) in seen_params:
                return None, (f"{path}.{attr} and {seen_params[id(t)]} are the same parameter (tied weights); {_REUSE}")
            seen_params[id(t)] = f"{path}.{attr}"
    return layers, (
        f"an nn.Sequential of {_FAST_NAMES} without hooks, every parameter used once: the squares "
        f"of the per-example gradients in closed form, layer by layer"
    )


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

    Book: the library's Fisher in practice, :ref:`sec-ewc-penalty-library`.

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
            raise ValueError(f"inputs: expected a tensor of shape (N, ...) or None, got {describe(inputs)}")
        if not _input_dims_ok(layers, inputs):
            return "generic", (
                f"inputs of shape {tuple(inputs.shape)} reach an nn.Linear layer with more than "
                f"2 dimensions; the fast path needs (n, features) at every Linear layer"
            )
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


def _fast_diagonal(setup, plan, estimator, targets, noise, acc):
    trainable_ids = {id(p) for _, p in setup.named}
    names = {id(p): n for n, p in setup.named}
    size = setup.batch_size or FAST_CHUNK
    for lo, hi in setup.chunks(size):

        def factor_fn(f, lo=lo, hi=hi):
            _check_outputs(f, lo, hi)
            return _factors(
                f,
                setup.likelihood,
                estimator,
                setup.sigma2,
                None if targets is None else targets[lo:hi],
                None if noise is None else noise[lo:hi],
                cholesky=True,
            )

        _fast_diag_chunk(plan, setup.inputs[lo:hi], factor_fn, acc, trainable_ids, names, 1.0 / setup.n)
    return acc
