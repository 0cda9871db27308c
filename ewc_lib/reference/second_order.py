"""Second-order oracles: Hessian, expected Hessian, GGN and Kunstner's residual term, row by row."""

from __future__ import annotations

import torch
from torch import nn  # noqa: F401  (the docstring examples use nn)

from ._problem import Problem, eval_mode, finite_outputs, flat_grad, log_lik, nll, outcomes

__all__ = [
    "hessian_loop",
    "expected_hessian_loop",
    "jacobian_loop",
    "ggn_loop",
    "ggn_linearised_loop",
    "residual_term_loop",
]


def _hessian_rows(scalar, params):
    g = flat_grad(scalar, params, create_graph=True)
    if not g.requires_grad:  # the gradient does not depend on the parameters (e.g. linear outputs)
        return torch.zeros(g.numel(), g.numel(), dtype=g.dtype)
    return torch.stack([flat_grad(g[i], params, retain_graph=True) for i in range(g.numel())]).detach()


def _dummy_target(likelihood, f):
    """A label for one example with outputs ``f``: Lambda = d^2 NLL / d f^2 does not depend on it."""
    return torch.zeros(1, dtype=torch.long) if likelihood == "categorical" else torch.zeros_like(f)


def _mean_over_examples(model, setup, term):
    """``(1/N) sum_n term(n, x_n, params)`` for ``(P, P)`` terms, with the model in eval mode."""
    with eval_mode(model):
        params = [p for _, p in setup.named]
        acc = torch.zeros(setup.numel, setup.numel, dtype=setup.dtype)
        for n in range(setup.n):
            acc += term(n, setup.inputs[n : n + 1], params)
        return acc / setup.n


def hessian_loop(model, inputs, targets, *, likelihood="categorical", sigma2=1.0):
    """Hessian of the mean NLL, ``(P, P)``, one double-backward per example and row.

    Book: :ref:`sec-fisher-identities`.

    >>> net = nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 2)).double()
    >>> x, y = torch.randn(3, 2, dtype=torch.float64), torch.tensor([0, 1, 1])
    >>> import ewc_lib
    >>> torch.allclose(hessian_loop(net, x, y), ewc_lib.hessian(net, x, y))
    True
    """
    setup = Problem(model, inputs, likelihood, sigma2)
    targets = setup.check_targets(targets)

    def term(n, xn, params):
        return -_hessian_rows(log_lik(setup, xn, targets[n : n + 1]), params)

    return _mean_over_examples(model, setup, term)


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
    setup = Problem(model, inputs, likelihood, sigma2)

    def term(n, xn, params):
        if likelihood == "gaussian":
            with torch.no_grad():
                y = setup.outputs(xn)
            return -_hessian_rows(log_lik(setup, xn, y), params)
        return -sum(prob * _hessian_rows(log_lik(setup, xn, y), params) for prob, y in outcomes(setup, xn))

    return _mean_over_examples(model, setup, term)


def jacobian_loop(model, x_n, params):
    """``(C, P)`` Jacobian of the outputs of one example ``x_n`` (batch axis of 1), row by row.

    Book: :ref:`sec-fisher-identities`.
    """
    f = finite_outputs(model(x_n))[0]
    return torch.stack([flat_grad(f[c], params, retain_graph=True) for c in range(f.shape[0])]).detach()


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
    setup = Problem(model, inputs, likelihood, sigma2)

    def term(n, xn, params):
        J = jacobian_loop(model, xn, params)
        with torch.no_grad():
            f = setup.outputs(xn)
        y = _dummy_target(likelihood, f)
        lam = torch.autograd.functional.hessian(lambda ff: nll(ff, y, likelihood, setup.sigma2).sum(), f)
        lam = lam.reshape(f.shape[1], f.shape[1])
        return J.T @ lam @ J

    return _mean_over_examples(model, setup, term)


def ggn_linearised_loop(model, inputs, *, likelihood="categorical", sigma2=1.0):
    r"""The GGN by a second definition: the Hessian of the mean NLL of the *linearised* network.

    Book: :prf:ref:`def-fisher-ggn`, :ref:`sec-fisher-identities`.

    Around the current parameters :math:`\theta_0`, replace each output by its first-order
    Taylor polynomial :math:`f_n(\theta_0) + J_n \delta`; the loss of that linear model has
    Hessian :math:`\frac1N\sum_n J_n^\top \Lambda_n J_n` in :math:`\delta`, because a linear map
    has no second derivative. This is how curvlinops checks its GGN. No Jacobian is formed:
    :math:`J_n \delta` is a Jacobian-vector product by the double-backward trick
    (:math:`J_n^\top u` by one backward pass, then its derivative in :math:`u` along
    :math:`\delta`), and the Hessian in :math:`\delta` is ``torch.autograd.functional.hessian``.
    An independent check of :func:`ggn_loop` (which builds :math:`J_n` row by row and
    :math:`\Lambda_n` separately). :math:`\Lambda_n` does not depend on the label for these
    likelihoods, so a dummy label is used.

    >>> net = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 3)).double()
    >>> x = torch.randn(4, 2, dtype=torch.float64)
    >>> torch.allclose(ggn_linearised_loop(net, x), ggn_loop(net, x))
    True
    """
    setup = Problem(model, inputs, likelihood, sigma2)

    def term(n, xn, params):
        f = setup.outputs(xn)
        u = torch.zeros_like(f, requires_grad=True)
        jt_u = flat_grad((f * u).sum(), params, create_graph=True)  # J^T u, linear in u
        f0 = f.detach()
        y = _dummy_target(likelihood, f0)

        def linearised_nll(delta):
            j_delta = torch.autograd.grad(jt_u, u, grad_outputs=delta, create_graph=True)[0]  # J delta
            return nll(f0 + j_delta, y, likelihood, setup.sigma2).sum()

        return torch.autograd.functional.hessian(linearised_nll, torch.zeros(setup.numel, dtype=setup.dtype))

    return _mean_over_examples(model, setup, term)


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
    setup = Problem(model, inputs, likelihood, sigma2)
    targets = setup.check_targets(targets)

    def term(n, xn, params):
        f = setup.outputs(xn)[0]  # one forward pass: its graph gives grad^2 f_nk, its value r_n
        f0 = f.detach().unsqueeze(0).requires_grad_(True)
        r = torch.autograd.grad(nll(f0, targets[n : n + 1], likelihood, setup.sigma2).sum(), f0)[0][0]
        return sum(r[k] * _hessian_rows(f[k], params) for k in range(r.numel()))

    return _mean_over_examples(model, setup, term)
