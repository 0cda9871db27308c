r"""The likelihood algebra in output space: NLL, score, Lambda, its square roots, sampling.

Everything here acts on the model's outputs ``f`` (natural parameters, shape ``(n, C)``),
never on the model. The three likelihoods (categorical logits, Gaussian means with fixed
variance ``sigma2``, one Bernoulli logit) and, for each:

* ``_nll``: the per-example negative log-likelihood;
* ``_score_out``: ``grad_f log p(y | f)`` (``e_y - p``, ``(y - f) / sigma2``, ``y - s``);
* ``_output_hessian``: ``Lambda = grad_f^2 (-log p)`` (``diag(p) - p p^T``, ``I / sigma2``,
  ``s (1 - s)``), which does not depend on ``y``;
* ``_sqrt_output_hessian`` and ``_cholesky_output_hessian``: columns ``v_k`` with
  ``sum_k v_k v_k^T = Lambda``;
* ``_draw_noise``/``_noise_to_targets``: the labels ``yhat ~ p(y | f)`` of the "mc" estimator;
* ``_factors``: the output-space vectors ``v_{n,k}`` of each Fisher estimator, which both
  code paths backpropagate (``sum_k (J^T v_k)(J^T v_k)^T`` is the estimator).

Every ``1 - p`` is formed as a sum of the other probabilities (``sigmoid(-f)`` for
Bernoulli), never by subtraction. The book derives these pieces in
:ref:`sec-fisher-identities` (the Fisher of an exponential family in its natural parameters).
"""

from __future__ import annotations

import math

import torch
from torch import nn

#: Supported likelihoods (the model returns their natural parameters).
LIKELIHOODS = ("categorical", "gaussian", "bernoulli")


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
