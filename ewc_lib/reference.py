r"""Brute-force references for :mod:`ewc_lib.curvature` (slow, obvious, for tiny models).

Everything here is a plain Python loop over examples (and classes / output coordinates)
calling ``torch.autograd.grad`` one scalar at a time, so each line can be checked against
the definition on paper. The tests compare the fast code in :mod:`ewc_lib.curvature` with
these functions in float64; the book uses them to show that the fast numbers are right.

Conventions are those of :mod:`ewc_lib.curvature`: means over data points, trainable
parameters flattened in ``named_parameters()`` order, model evaluated in eval mode (and
its modes and ``requires_grad`` flags restored afterwards).

=================================  =============================================================
``per_example_scores``              ``(N, P)`` rows ``grad_theta log p(y_n | x_n)``, one grad each
``fisher_matrix_loop``              ``(P, P)`` Fisher by definition: weighted sums of ``g g^T``
``fisher_diagonal_loop``            same weighted sums of ``g^2`` (dict), no ``P x P`` memory
``hessian_loop``                    Hessian of the mean NLL, row by row (double backward)
``expected_hessian_loop``           ``-(1/N) sum_n sum_y p(y) Hessian log p(y)`` row by row
``ggn_loop``                        ``(1/N) sum_n J_n^T Lambda_n J_n``, ``Lambda_n`` by autograd
``residual_term_loop``              ``(1/N) sum_n sum_k r_nk grad^2 f_nk`` (Kunstner Prop. 2)
``jacobian_loop``                   ``(C, P)`` Jacobian of one example's outputs, row by row
=================================  =============================================================
"""

from __future__ import annotations

import math
import numbers
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

__all__ = [
    "per_example_scores",
    "fisher_matrix_loop",
    "fisher_diagonal_loop",
    "hessian_loop",
    "expected_hessian_loop",
    "ggn_loop",
    "residual_term_loop",
    "jacobian_loop",
]

# This module is an independent oracle: it imports nothing from ewc_lib.curvature. Its checks
# are its own, and its negative log-likelihoods are written differently (logsumexp, softplus).


@contextmanager
def _eval_mode(model):
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


def _nll(f, y, likelihood, sigma2):
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


class _Problem:
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
        with _eval_mode(model), torch.no_grad():
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
        return _finite_outputs(self.model(x))

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


def _finite_outputs(f):
    if not torch.isfinite(f).all():
        raise ValueError("model: its outputs are not finite (NaN or inf)")
    return f


def _flat_grad(scalar, params, create_graph=False, retain_graph=None):
    grads = torch.autograd.grad(scalar, params, create_graph=create_graph, retain_graph=retain_graph, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)])


def _log_lik(setup, x_n, y_n):
    """log p(y_n | x_n) for ONE example (x_n with a batch axis of 1)."""
    return -_nll(setup.outputs(x_n), y_n, setup.likelihood, setup.sigma2).sum()


def _outcomes(setup, x_n):
    """All outcomes y of one example with their probabilities (categorical, bernoulli)."""
    with torch.no_grad():
        f = setup.outputs(x_n)[0]
    if setup.likelihood == "categorical":
        p = torch.softmax(f, -1)
        return [(p[c].item(), torch.tensor([c])) for c in range(f.shape[0])]
    s, not_s = torch.sigmoid(f[0]).item(), torch.sigmoid(-f[0]).item()  # not 1 - s: no cancellation
    return [(s, torch.ones(1, 1, dtype=f.dtype)), (not_s, torch.zeros(1, 1, dtype=f.dtype))]


def _weighted_scores(setup, estimator, targets, sampled_targets, batch_size):
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
            g = sum(_flat_grad(_log_lik(setup, x[n : n + 1], targets[n : n + 1]), params) for n in range(lo, hi))
            yield (hi - lo) / n_data, g / (hi - lo)
        return
    for n in range(n_data):
        xn = x[n : n + 1]
        if estimator == "empirical":
            yield 1.0 / n_data, _flat_grad(_log_lik(setup, xn, targets[n : n + 1]), params)
        elif estimator == "mc":
            s_count = sampled_targets.shape[1]
            for s in range(s_count):
                y = sampled_targets[n : n + 1, s]
                if setup.likelihood == "bernoulli":
                    y = y.reshape(1, 1)
                yield 1.0 / (n_data * s_count), _flat_grad(_log_lik(setup, xn, y), params)
        elif setup.likelihood == "gaussian":
            # score (y - f)/sigma2 J has covariance J^T J / sigma2: sum over output coordinates
            f = setup.outputs(xn)[0]
            for d in range(f.shape[0]):
                yield 1.0 / (n_data * setup.sigma2), _flat_grad(f[d], params, retain_graph=True)
        else:
            for prob, y in _outcomes(setup, xn):
                yield prob / n_data, _flat_grad(_log_lik(setup, xn, y), params)


def _prepare(model, inputs, likelihood, sigma2, estimator, targets, sampled_targets):
    setup = _Problem(model, inputs, likelihood, sigma2)
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


def fisher_matrix_loop(
    model,
    inputs,
    *,
    likelihood="categorical",
    estimator="exact",
    targets=None,
    sampled_targets=None,
    batch_size=None,
    sigma2=1.0,
):
    r"""The Fisher estimators of :func:`~ewc_lib.curvature.fisher_matrix` by definition, ``(P, P)``.

    Book: :prf:ref:`def-fisher`, :ref:`sec-fisher-identities`.

    ``"exact"``: ``(1/N) sum_n sum_y p(y|x_n) g(y) g(y)^T`` with one autograd call per example
    and class (Gaussian: ``(1/N) sum_n sum_d grad f_nd grad f_nd^T / sigma2``);
    ``"mc"``: the empirical formula averaged over the columns of ``sampled_targets``
    (``(N, S)`` or ``(N, S, D)``, e.g. from :func:`~ewc_lib.curvature.sample_targets`);
    ``"empirical"``: ``(1/N) sum_n g_n g_n^T``; ``"batched_empirical"``:
    ``sum_b (|b|/N) gbar_b gbar_b^T`` over consecutive minibatches of ``batch_size``.

    >>> net = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 3)).double()
    >>> x = torch.randn(4, 2, dtype=torch.float64)
    >>> import ewc_lib
    >>> torch.allclose(fisher_matrix_loop(net, x), ewc_lib.fisher_matrix(net, x))
    True
    """
    setup, targets, sampled_targets = _prepare(model, inputs, likelihood, sigma2, estimator, targets, sampled_targets)
    with _eval_mode(model):
        acc = torch.zeros(setup.numel, setup.numel, dtype=setup.dtype)
        for w, g in _weighted_scores(setup, estimator, targets, sampled_targets, batch_size):
            acc += w * torch.outer(g, g)
        return acc.detach()


def fisher_diagonal_loop(
    model,
    inputs,
    *,
    likelihood="categorical",
    estimator="exact",
    targets=None,
    sampled_targets=None,
    batch_size=None,
    sigma2=1.0,
):
    r"""Diagonal of :func:`fisher_matrix_loop` as a dict ``name -> tensor`` (no ``P x P`` memory).

    Book: :prf:ref:`def-fisher`, :ref:`sec-fisher-identities`.

    >>> net = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 3)).double()
    >>> x = torch.randn(4, 2, dtype=torch.float64)
    >>> import ewc_lib
    >>> d = fisher_diagonal_loop(net, x)
    >>> all(torch.allclose(d[k], v) for k, v in ewc_lib.fisher_diagonal(net, x).items())
    True
    """
    setup, targets, sampled_targets = _prepare(model, inputs, likelihood, sigma2, estimator, targets, sampled_targets)
    with _eval_mode(model):
        acc = torch.zeros(setup.numel, dtype=setup.dtype)
        for w, g in _weighted_scores(setup, estimator, targets, sampled_targets, batch_size):
            acc += w * g.detach() ** 2
        out, i = {}, 0
        for name, p in setup.named:
            out[name] = acc[i : i + p.numel()].reshape(p.shape)
            i += p.numel()
        return out


def per_example_scores(model, inputs, targets, *, likelihood="categorical", sigma2=1.0):
    """``(N, P)`` matrix whose row ``n`` is ``grad_theta log p(y_n | x_n)`` (one autograd call each).

    Book: the score of :ref:`sec-fisher-identities`; the oracles are used in
    :ref:`sec-fisher-identities-check`.

    >>> net = nn.Linear(2, 3).double()
    >>> per_example_scores(net, torch.randn(4, 2, dtype=torch.float64), torch.tensor([0, 1, 2, 0])).shape
    torch.Size([4, 9])
    """
    setup = _Problem(model, inputs, likelihood, sigma2)
    targets = setup.check_targets(targets)
    with _eval_mode(model):
        params = [p for _, p in setup.named]
        x = setup.inputs
        return torch.stack(
            [_flat_grad(_log_lik(setup, x[n : n + 1], targets[n : n + 1]), params).detach() for n in range(setup.n)]
        )


def _hessian_rows(scalar, params):
    g = _flat_grad(scalar, params, create_graph=True)
    if not g.requires_grad:  # the gradient does not depend on the parameters (e.g. linear outputs)
        return torch.zeros(g.numel(), g.numel(), dtype=g.dtype)
    return torch.stack([_flat_grad(g[i], params, retain_graph=True) for i in range(g.numel())]).detach()


def hessian_loop(model, inputs, targets, *, likelihood="categorical", sigma2=1.0):
    """Hessian of the mean NLL, ``(P, P)``, one double-backward per example and row.

    Book: :ref:`sec-fisher-identities`.

    >>> net = nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 2)).double()
    >>> x, y = torch.randn(3, 2, dtype=torch.float64), torch.tensor([0, 1, 1])
    >>> import ewc_lib
    >>> torch.allclose(hessian_loop(net, x, y), ewc_lib.hessian(net, x, y))
    True
    """
    setup = _Problem(model, inputs, likelihood, sigma2)
    targets = setup.check_targets(targets)
    with _eval_mode(model):
        params = [p for _, p in setup.named]
        acc = torch.zeros(setup.numel, setup.numel, dtype=setup.dtype)
        for n in range(setup.n):
            acc -= _hessian_rows(_log_lik(setup, setup.inputs[n : n + 1], targets[n : n + 1]), params)
        return acc / setup.n


def expected_hessian_loop(model, inputs, *, likelihood="categorical", sigma2=1.0):
    r"""``-(1/N) sum_n E_{y ~ p(y|x_n)}[grad^2 log p(y | x_n)]`` by a loop over examples and outcomes.

    Book: :prf:ref:`thm-fisher-identity`, :ref:`sec-fisher-identities`.

    Categorical and Bernoulli: the probability-weighted sum over all outcomes of the
    double-backward Hessian of ``log p(y|x_n)``. Gaussian: that Hessian is
    ``-(J^T J - sum_d (y_d - f_d) grad^2 f_d) / sigma2`` and its expectation over
    ``y ~ N(f, sigma2 I)`` removes the second term, which is what the loop computes by
    evaluating at ``y = f`` (the mean).

    >>> net = nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 3)).double()
    >>> x = torch.randn(3, 2, dtype=torch.float64)
    >>> import ewc_lib
    >>> torch.allclose(expected_hessian_loop(net, x), ewc_lib.fisher_matrix(net, x))
    True
    """
    setup = _Problem(model, inputs, likelihood, sigma2)
    with _eval_mode(model):
        params = [p for _, p in setup.named]
        acc = torch.zeros(setup.numel, setup.numel, dtype=setup.dtype)
        for n in range(setup.n):
            xn = setup.inputs[n : n + 1]
            if likelihood == "gaussian":
                with torch.no_grad():
                    y = setup.outputs(xn)
                acc -= _hessian_rows(_log_lik(setup, xn, y), params)
            else:
                for prob, y in _outcomes(setup, xn):
                    acc -= prob * _hessian_rows(_log_lik(setup, xn, y), params)
        return acc / setup.n


def jacobian_loop(model, x_n, params):
    """``(C, P)`` Jacobian of the outputs of one example ``x_n`` (batch axis of 1), row by row.

    Book: :ref:`sec-fisher-identities`.
    """
    f = _finite_outputs(model(x_n))[0]
    return torch.stack([_flat_grad(f[c], params, retain_graph=True) for c in range(f.shape[0])]).detach()


def ggn_loop(model, inputs, *, likelihood="categorical", sigma2=1.0):
    r"""``(1/N) sum_n J_n^T Lambda_n J_n`` with ``J_n`` by rows and ``Lambda_n`` by autograd.

    Book: :prf:ref:`def-fisher-ggn`, :ref:`sec-fisher-identities`.

    ``Lambda_n`` is the Hessian of the NLL with respect to the outputs, computed here with
    ``torch.autograd.functional.hessian`` (no closed form). For these likelihoods it does
    not depend on the target, so a dummy target is used.

    >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 3)).double()
    >>> x = torch.randn(3, 2, dtype=torch.float64)
    >>> import ewc_lib
    >>> torch.allclose(ggn_loop(net, x), ewc_lib.ggn(net, x))
    True
    """
    setup = _Problem(model, inputs, likelihood, sigma2)
    with _eval_mode(model):
        params = [p for _, p in setup.named]
        acc = torch.zeros(setup.numel, setup.numel, dtype=setup.dtype)
        for n in range(setup.n):
            xn = setup.inputs[n : n + 1]
            J = jacobian_loop(model, xn, params)
            with torch.no_grad():
                f = setup.outputs(xn)
            if likelihood == "categorical":
                y = torch.zeros(1, dtype=torch.long)
            else:
                y = torch.zeros_like(f)
            lam = torch.autograd.functional.hessian(lambda ff: _nll(ff, y, likelihood, setup.sigma2).sum(), f)
            lam = lam.reshape(f.shape[1], f.shape[1])
            acc += J.T @ lam @ J
        return acc / setup.n


def residual_term_loop(model, inputs, targets, *, likelihood="categorical", sigma2=1.0):
    r"""``(1/N) sum_n sum_k r_nk grad^2_theta f_nk`` with ``r_n = d(-log p(y_n|f))/d f_n``.

    Book: :prf:ref:`thm-fisher-hessian-residual`, :ref:`sec-fisher-identities`.

    The part of the Hessian the GGN leaves out (Kunstner et al. 2019, Prop. 2):
    ``hessian = ggn + residual_term``. ``r`` by autograd; ``grad^2 f_nk`` by double backward.

    >>> net = nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 1)).double()
    >>> x, y = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 1, dtype=torch.float64)
    >>> import ewc_lib
    >>> H = ewc_lib.hessian(net, x, y, likelihood="gaussian")
    >>> R = residual_term_loop(net, x, y, likelihood="gaussian")
    >>> torch.allclose(H, ewc_lib.ggn(net, x, likelihood="gaussian") + R)
    True
    """
    setup = _Problem(model, inputs, likelihood, sigma2)
    targets = setup.check_targets(targets)
    with _eval_mode(model):
        params = [p for _, p in setup.named]
        acc = torch.zeros(setup.numel, setup.numel, dtype=setup.dtype)
        for n in range(setup.n):
            xn = setup.inputs[n : n + 1]
            with torch.no_grad():
                f0 = setup.outputs(xn)
            f0 = f0.clone().requires_grad_(True)
            r = torch.autograd.grad(_nll(f0, targets[n : n + 1], likelihood, setup.sigma2).sum(), f0)[0][0]
            for k in range(r.numel()):
                f = setup.outputs(xn)[0]
                acc += r[k] * _hessian_rows(f[k], params)
        return acc / setup.n
