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

import torch
from torch import nn  # noqa: F401  (used in the examples)

from .curvature import _eval_mode, _nll, _Setup

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


def _flat_grad(scalar, params, create_graph=False, retain_graph=None):
    grads = torch.autograd.grad(scalar, params, create_graph=create_graph, retain_graph=retain_graph,
                                allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)])


def _log_lik(setup, x_n, y_n):
    """log p(y_n | x_n) for ONE example (x_n with a batch axis of 1)."""
    f = setup.model(x_n)
    return -_nll(f, y_n, setup.likelihood, setup.sigma2).sum()


def _outcomes(setup, x_n):
    """All outcomes y of one example with their probabilities (categorical, bernoulli)."""
    with torch.no_grad():
        f = setup.model(x_n)[0]
    if setup.likelihood == "categorical":
        p = torch.softmax(f, -1)
        return [(p[c].item(), torch.tensor([c])) for c in range(f.shape[0])]
    s = torch.sigmoid(f[0]).item()
    return [(s, torch.ones(1, 1, dtype=f.dtype)), (1 - s, torch.zeros(1, 1, dtype=f.dtype))]


def _weighted_scores(setup, estimator, targets, sampled_targets, batch_size):
    """Yield (w, g) with the Fisher estimator equal to sum of w g g^T (g a flat score)."""
    params = [p for _, p in setup.named]
    n_data = setup.n
    x = setup.inputs
    if estimator == "batched_empirical":
        if batch_size is None:
            raise ValueError("batch_size: required for estimator='batched_empirical'")
        for lo in range(0, n_data, batch_size):
            hi = min(lo + batch_size, n_data)
            g = sum(_flat_grad(_log_lik(setup, x[n:n + 1], targets[n:n + 1]), params) for n in range(lo, hi))
            yield (hi - lo) / n_data, g / (hi - lo)
        return
    for n in range(n_data):
        xn = x[n:n + 1]
        if estimator == "empirical":
            yield 1.0 / n_data, _flat_grad(_log_lik(setup, xn, targets[n:n + 1]), params)
        elif estimator == "mc":
            s_count = sampled_targets.shape[1]
            for s in range(s_count):
                y = sampled_targets[n:n + 1, s]
                if setup.likelihood == "bernoulli":
                    y = y.reshape(1, 1)
                yield 1.0 / (n_data * s_count), _flat_grad(_log_lik(setup, xn, y), params)
        elif setup.likelihood == "gaussian":
            # score (y - f)/sigma2 J has covariance J^T J / sigma2: sum over output coordinates
            f = setup.model(xn)[0]
            for d in range(f.shape[0]):
                yield 1.0 / (n_data * setup.sigma2), _flat_grad(f[d], params, retain_graph=True)
        else:
            for prob, y in _outcomes(setup, xn):
                yield prob / n_data, _flat_grad(_log_lik(setup, xn, y), params)


def _prepare(model, inputs, likelihood, sigma2, estimator, targets, sampled_targets):
    setup = _Setup(model, inputs, likelihood, sigma2)
    if estimator not in ("exact", "mc", "empirical", "batched_empirical"):
        raise ValueError(f"estimator: expected exact, mc, empirical or batched_empirical, got {estimator!r}")
    if estimator in ("empirical", "batched_empirical"):
        targets = setup.check_targets(targets)
    if estimator == "mc" and sampled_targets is None:
        raise ValueError("sampled_targets: required for estimator='mc' (see ewc_lib.sample_targets)")
    return setup, targets


def fisher_matrix_loop(model, inputs, *, likelihood="categorical", estimator="exact", targets=None,
                       sampled_targets=None, batch_size=None, sigma2=1.0):
    r"""The Fisher estimators of :func:`ewc_lib.fisher_matrix` by definition, ``(P, P)``.

    ``"exact"``: ``(1/N) sum_n sum_y p(y|x_n) g(y) g(y)^T`` with one autograd call per example
    and class (Gaussian: ``(1/N) sum_n sum_d grad f_nd grad f_nd^T / sigma2``);
    ``"mc"``: the empirical formula averaged over the columns of ``sampled_targets``
    (``(N, S)`` or ``(N, S, D)``, e.g. from :func:`ewc_lib.sample_targets`);
    ``"empirical"``: ``(1/N) sum_n g_n g_n^T``; ``"batched_empirical"``:
    ``sum_b (|b|/N) gbar_b gbar_b^T`` over consecutive minibatches of ``batch_size``.

    >>> net = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 3)).double()
    >>> x = torch.randn(4, 2, dtype=torch.float64)
    >>> import ewc_lib
    >>> torch.allclose(fisher_matrix_loop(net, x), ewc_lib.fisher_matrix(net, x))
    True
    """
    setup, targets = _prepare(model, inputs, likelihood, sigma2, estimator, targets, sampled_targets)
    with _eval_mode(model):
        acc = torch.zeros(setup.numel, setup.numel, dtype=setup.dtype)
        for w, g in _weighted_scores(setup, estimator, targets, sampled_targets, batch_size):
            acc += w * torch.outer(g, g)
        return acc.detach()


def fisher_diagonal_loop(model, inputs, *, likelihood="categorical", estimator="exact", targets=None,
                         sampled_targets=None, batch_size=None, sigma2=1.0):
    r"""Diagonal of :func:`fisher_matrix_loop` as a dict ``name -> tensor`` (no ``P x P`` memory).

    >>> net = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 3)).double()
    >>> x = torch.randn(4, 2, dtype=torch.float64)
    >>> import ewc_lib
    >>> d = fisher_diagonal_loop(net, x)
    >>> all(torch.allclose(d[k], v) for k, v in ewc_lib.fisher_diagonal(net, x).items())
    True
    """
    setup, targets = _prepare(model, inputs, likelihood, sigma2, estimator, targets, sampled_targets)
    with _eval_mode(model):
        acc = torch.zeros(setup.numel, dtype=setup.dtype)
        for w, g in _weighted_scores(setup, estimator, targets, sampled_targets, batch_size):
            acc += w * g.detach() ** 2
        out, i = {}, 0
        for name, p in setup.named:
            out[name] = acc[i:i + p.numel()].reshape(p.shape)
            i += p.numel()
        return out


def per_example_scores(model, inputs, targets, *, likelihood="categorical", sigma2=1.0):
    """``(N, P)`` matrix whose row ``n`` is ``grad_theta log p(y_n | x_n)`` (one autograd call each).

    >>> net = nn.Linear(2, 3).double()
    >>> per_example_scores(net, torch.randn(4, 2, dtype=torch.float64), torch.tensor([0, 1, 2, 0])).shape
    torch.Size([4, 9])
    """
    setup = _Setup(model, inputs, likelihood, sigma2)
    targets = setup.check_targets(targets)
    with _eval_mode(model):
        params = [p for _, p in setup.named]
        return torch.stack([_flat_grad(_log_lik(setup, inputs[n:n + 1], targets[n:n + 1]), params).detach()
                            for n in range(setup.n)])


def _hessian_rows(scalar, params):
    g = _flat_grad(scalar, params, create_graph=True)
    if not g.requires_grad:  # the gradient does not depend on the parameters (e.g. linear outputs)
        return torch.zeros(g.numel(), g.numel(), dtype=g.dtype)
    return torch.stack([_flat_grad(g[i], params, retain_graph=True) for i in range(g.numel())]).detach()


def hessian_loop(model, inputs, targets, *, likelihood="categorical", sigma2=1.0):
    """Hessian of the mean NLL, ``(P, P)``, one double-backward per example and row.

    >>> net = nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 2)).double()
    >>> x, y = torch.randn(3, 2, dtype=torch.float64), torch.tensor([0, 1, 1])
    >>> import ewc_lib
    >>> torch.allclose(hessian_loop(net, x, y), ewc_lib.hessian(net, x, y))
    True
    """
    setup = _Setup(model, inputs, likelihood, sigma2)
    targets = setup.check_targets(targets)
    with _eval_mode(model):
        params = [p for _, p in setup.named]
        acc = torch.zeros(setup.numel, setup.numel, dtype=setup.dtype)
        for n in range(setup.n):
            acc -= _hessian_rows(_log_lik(setup, inputs[n:n + 1], targets[n:n + 1]), params)
        return acc / setup.n


def expected_hessian_loop(model, inputs, *, likelihood="categorical", sigma2=1.0):
    r"""``-(1/N) sum_n E_{y ~ p(y|x_n)}[grad^2 log p(y | x_n)]`` by a loop over examples and outcomes.

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
    setup = _Setup(model, inputs, likelihood, sigma2)
    with _eval_mode(model):
        params = [p for _, p in setup.named]
        acc = torch.zeros(setup.numel, setup.numel, dtype=setup.dtype)
        for n in range(setup.n):
            xn = inputs[n:n + 1]
            if likelihood == "gaussian":
                with torch.no_grad():
                    y = model(xn)
                acc -= _hessian_rows(_log_lik(setup, xn, y), params)
            else:
                for prob, y in _outcomes(setup, xn):
                    acc -= prob * _hessian_rows(_log_lik(setup, xn, y), params)
        return acc / setup.n


def jacobian_loop(model, x_n, params):
    """``(C, P)`` Jacobian of the outputs of one example ``x_n`` (batch axis of 1), row by row."""
    f = model(x_n)[0]
    return torch.stack([_flat_grad(f[c], params, retain_graph=True) for c in range(f.shape[0])]).detach()


def ggn_loop(model, inputs, *, likelihood="categorical", sigma2=1.0):
    r"""``(1/N) sum_n J_n^T Lambda_n J_n`` with ``J_n`` by rows and ``Lambda_n`` by autograd.

    ``Lambda_n`` is the Hessian of the NLL with respect to the outputs, computed here with
    ``torch.autograd.functional.hessian`` (no closed form). For these likelihoods it does
    not depend on the target, so a dummy target is used.

    >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 3)).double()
    >>> x = torch.randn(3, 2, dtype=torch.float64)
    >>> import ewc_lib
    >>> torch.allclose(ggn_loop(net, x), ewc_lib.ggn(net, x))
    True
    """
    setup = _Setup(model, inputs, likelihood, sigma2)
    with _eval_mode(model):
        params = [p for _, p in setup.named]
        acc = torch.zeros(setup.numel, setup.numel, dtype=setup.dtype)
        for n in range(setup.n):
            xn = inputs[n:n + 1]
            J = jacobian_loop(model, xn, params)
            with torch.no_grad():
                f = model(xn)
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
    setup = _Setup(model, inputs, likelihood, sigma2)
    targets = setup.check_targets(targets)
    with _eval_mode(model):
        params = [p for _, p in setup.named]
        acc = torch.zeros(setup.numel, setup.numel, dtype=setup.dtype)
        for n in range(setup.n):
            xn = inputs[n:n + 1]
            with torch.no_grad():
                f0 = model(xn)
            f0 = f0.clone().requires_grad_(True)
            r = torch.autograd.grad(_nll(f0, targets[n:n + 1], likelihood, setup.sigma2).sum(), f0)[0][0]
            for k in range(r.numel()):
                f = model(xn)[0]
                acc += r[k] * _hessian_rows(f[k], params)
        return acc / setup.n

