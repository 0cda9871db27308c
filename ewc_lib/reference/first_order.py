"""First-order oracles: per-example scores and the Fisher by its definition, one gradient at a time."""

from __future__ import annotations

import torch
from torch import nn  # noqa: F401  (the docstring examples use nn)

from ._problem import Problem, eval_mode, flat_grad, log_lik, prepare, weighted_scores

__all__ = ["per_example_scores", "fisher_matrix_loop", "fisher_diagonal_loop"]


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
    setup, targets, sampled_targets = prepare(model, inputs, likelihood, sigma2, estimator, targets, sampled_targets)
    with eval_mode(model):
        acc = torch.zeros(setup.numel, setup.numel, dtype=setup.dtype)
        for w, g in weighted_scores(setup, estimator, targets, sampled_targets, batch_size):
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
    setup, targets, sampled_targets = prepare(model, inputs, likelihood, sigma2, estimator, targets, sampled_targets)
    with eval_mode(model):
        acc = torch.zeros(setup.numel, dtype=setup.dtype)
        for w, g in weighted_scores(setup, estimator, targets, sampled_targets, batch_size):
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
    setup = Problem(model, inputs, likelihood, sigma2)
    targets = setup.check_targets(targets)
    with eval_mode(model):
        params = [p for _, p in setup.named]
        x = setup.inputs
        return torch.stack(
            [flat_grad(log_lik(setup, x[n : n + 1], targets[n : n + 1]), params).detach() for n in range(setup.n)]
        )
