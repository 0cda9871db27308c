r"""Second derivatives: :func:`hessian`, :func:`expected_hessian` and :func:`ggn` (dense).

Three routes to ``(P, P)`` curvature matrices that do not go through outer products of
first derivatives, so that the Fisher identities can be checked between independent
computations: the Hessian of the observed NLL and minus the expected Hessian of the
log-likelihood, both by ``torch.func`` (reverse-over-reverse), and the generalised
Gauss-Newton matrix ``J^T Lambda J`` from per-example Jacobians.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import vmap

from ._setup import _check_outputs, _check_result, _eval_mode, _Setup
from .fisher import _generic_chunk
from .likelihoods import _nll, _output_hessian, _pivoted_lse

__all__ = ["hessian", "expected_hessian", "ggn"]


def _flat_function(setup, fn):
    """theta (P,) -> fn(outputs of the chunk), the parameters swapped in by ``setup.call``."""

    def wrapped(theta, x, *args):
        params, i = {}, 0
        for name, p in setup.named:
            params[name] = theta[i : i + p.numel()].reshape(p.shape)
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

    Book: :prf:ref:`thm-fisher-hessian-residual` in :ref:`sec-fisher-identities`; checked in
    :ref:`sec-fisher-identities-check`.

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

    Book: :prf:ref:`thm-fisher-identity` in :ref:`sec-fisher-identities`; checked in
    :ref:`sec-fisher-identities-check`.

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
    >>> from ewc_lib.curvature import fisher_matrix
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

    Book: :prf:ref:`def-fisher-ggn` and :prf:ref:`thm-fisher-ggn` in :ref:`sec-fisher-identities`;
    checked in :ref:`sec-fisher-identities-check`.

    ``J_n = d f(x_n) / d theta`` (per-example Jacobians by ``torch.func.jacrev``) and
    ``Lambda_n`` the Hessian of the NLL with respect to the natural parameters:
    ``diag(p) - p p^T`` (categorical), ``s (1 - s)`` (bernoulli), ``I / sigma2``
    (gaussian). It does not depend on targets; for these likelihoods (exponential families
    in their natural parameters) it equals the exact Fisher. Mean convention (sum: ``N``
    times). ``batch_size`` only chunks the computation.

    >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2)).double()
    >>> x = torch.randn(5, 2, dtype=torch.float64)
    >>> from ewc_lib.curvature import fisher_matrix
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
