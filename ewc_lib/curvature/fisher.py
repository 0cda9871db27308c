r"""The Fisher estimators: :func:`fisher_diagonal`, :func:`fisher_matrix`, :func:`sample_targets`.

All Fisher estimators share one structure. For each example there are ``K`` vectors
``v_{n,k}`` in output space (:func:`ewc_lib.curvature.likelihoods._factors`) such that the
per-example matrix is ``sum_k (J_n^T v_{n,k}) (J_n^T v_{n,k})^T``:

* exact: the columns of a square root ``S_n`` of the Hessian of the NLL with respect to the
  outputs, ``Lambda_n = S_n S_n^T``. Categorical: ``Lambda = diag(p) - p p^T`` and column
  ``c`` is ``sqrt(p_c) (e_c - p)``, the score of class ``c`` weighted by ``sqrt(p_c)`` (so the
  class sum of the Fisher's definition *is* the GGN); the fast path uses instead the
  ``C - 1`` columns of the closed-form Cholesky factor of ``diag(p) - p p^T`` (same product,
  one column fewer). Gaussian: ``e_d / sqrt(sigma2)``; Bernoulli: ``sqrt(s (1 - s))``;
* mc: ``(e_yhat - p) / sqrt(S)`` for ``S = num_samples`` labels ``yhat`` drawn from the model;
* empirical: the output-space score of the observed target, e.g. ``e_y - p``;
* batched_empirical does not fit this pattern: one ordinary backward pass per minibatch.

Two code paths backpropagate the ``v_{n,k}``: the fast path for plain MLPs
(:mod:`ewc_lib.curvature.fast_mlp`) and, for every other model, the generic ``torch.func``
path defined here (``vmap`` over examples of ``vjp``). Both give the same numbers (tested);
:func:`~ewc_lib.curvature.fisher_path` tells which one a model takes, and why.
"""

from __future__ import annotations

import torch
from torch import nn  # noqa: F401  (the docstring examples use nn)
from torch.func import vjp, vmap

from .._checks import check_choice, check_int
from ._setup import _check_outputs, _check_result, _eval_mode, _Setup
from .fast_mlp import _fast_diagonal, _fast_plan, _input_dims_ok, _NotFast
from .likelihoods import _draw_noise, _factors, _nll, _noise_to_targets

__all__ = ["ESTIMATORS", "GENERIC_BUDGET", "fisher_diagonal", "fisher_matrix", "sample_targets"]

#: Supported Fisher estimators.
ESTIMATORS = ("exact", "mc", "empirical", "batched_empirical")

#: Number of tensor elements the generic torch.func path may materialise per chunk.
GENERIC_BUDGET = 2**23


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
    check_choice("estimator", estimator, ESTIMATORS)
    num_samples = check_int("num_samples", num_samples)
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
    k = {
        "exact": setup.out_dim if setup.likelihood != "bernoulli" else 1,
        "mc": num_samples,
        "empirical": 1,
        "batched_empirical": 1,
    }[estimator]
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


def fisher_diagonal(
    model,
    inputs,
    *,
    likelihood="categorical",
    estimator="exact",
    targets=None,
    num_samples=1,
    batch_size=None,
    generator=None,
    sigma2=1.0,
):
    r"""Diagonal of a Fisher information estimator, as a dict ``name -> tensor``.

    Book: the Fisher is defined and its identities derived in :ref:`sec-fisher-identities`; the
    estimators "empirical" and "batched_empirical" in :ref:`sec-empirical-fisher`; EWC's use of the
    diagonal in :ref:`sec-ewc-penalty-diagonal`. Checked in :ref:`sec-fisher-identities-check` and
    :ref:`sec-empirical-fisher-mnist`.

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
    >>> from ewc_lib.curvature import flatten_params
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
                return _check_result(_fast_diagonal(setup, plan, estimator, targets, noise, acc), "the Fisher diagonal")
            except _NotFast:  # (not expected: _input_dims_ok checks the shapes first)
                acc = {n: torch.zeros_like(p) for n, p in setup.named}
        for _lo, _hi, _v, grads in _generic_chunks(setup, estimator, targets, noise, k):
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
        v = _factors(
            f,
            setup.likelihood,
            estimator,
            setup.sigma2,
            None if targets is None else targets[lo:hi],
            None if noise is None else noise[lo:hi],
        )
        yield lo, hi, v, _per_example_grads(setup, x, v)


def fisher_matrix(
    model,
    inputs,
    *,
    likelihood="categorical",
    estimator="exact",
    targets=None,
    num_samples=1,
    batch_size=None,
    generator=None,
    sigma2=1.0,
):
    r"""The Fisher estimator of :func:`fisher_diagonal` as a dense ``(P, P)`` matrix.

    Book: :prf:ref:`def-fisher` and :prf:ref:`thm-fisher-ggn` in :ref:`sec-fisher-identities`;
    checked in :ref:`sec-fisher-identities-check`.

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
    >>> from ewc_lib.curvature import ggn
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

    Book: the Monte Carlo estimator of the Fisher, :ref:`sec-empirical-fisher`; compared with the
    others in :ref:`sec-fisher-estimators-lambda`.

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
    num_samples = check_int("num_samples", num_samples)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
    with _eval_mode(model), torch.no_grad():
        noise = _draw_noise(setup.n, num_samples, setup.out_dim, likelihood, generator, setup.dtype)
        f = model(setup.inputs)
        _check_outputs(f)
        return _noise_to_targets(f, noise, likelihood, setup.sigma2)


for _f in (fisher_diagonal, fisher_matrix):
    _f.__doc__ = _f.__doc__.replace("%(estimator_params)s", _ESTIMATOR_PARAMS_DOC.rstrip("\n"))
del _f
