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
Jacobian of the outputs. The book derives the Fisher identities in
:ref:`sec-fisher-identities` and the empirical Fisher in :ref:`sec-empirical-fisher`.

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

All of them are importable from here (``from ewc_lib.curvature import fisher_diagonal``) and
from ``ewc_lib`` itself.

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

The modules
-----------
=========================  =================================================================
``likelihoods``             output space: NLL, score, ``Lambda``, its square roots, sampling
``fisher``                  the public Fisher functions and the generic ``torch.func`` path
``fast_mlp``                the fast path for ``nn.Sequential`` MLPs, and ``fisher_path``
``second_order``            ``hessian``, ``expected_hessian``, ``ggn``
``params``                  ``flatten_params``, ``unflatten_params``
``_setup``                  argument checks and model plumbing shared by all of them
=========================  =================================================================

The tuning constants ``FAST_CHUNK``, ``GENERIC_BUDGET``, ``MAX_DENSE_PARAMS`` and
``ZERO_FEATURES_MIN_FRACTION`` live in the module that uses them; setting one on this
package (``curvature.GENERIC_BUDGET = ...``) sets it there.
"""

from __future__ import annotations

import sys
import types

from . import _setup, fast_mlp, fisher, likelihoods, params, second_order  # noqa: F401  (the submodules)
from ._setup import MAX_DENSE_PARAMS  # noqa: F401  (a tuning constant, see _TUNABLES)
from .fast_mlp import FAST_CHUNK, ZERO_FEATURES_MIN_FRACTION, fisher_path  # noqa: F401
from .fisher import ESTIMATORS, GENERIC_BUDGET, fisher_diagonal, fisher_matrix, sample_targets  # noqa: F401
from .likelihoods import LIKELIHOODS
from .params import flatten_params, unflatten_params
from .second_order import expected_hessian, ggn, hessian

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

#: Tuning constants and the module whose functions read them.
_TUNABLES = {
    "FAST_CHUNK": fast_mlp,
    "ZERO_FEATURES_MIN_FRACTION": fast_mlp,
    "GENERIC_BUDGET": fisher,
    "MAX_DENSE_PARAMS": _setup,
}


class _Package(types.ModuleType):
    """This package, with the tuning constants forwarded to the modules that read them."""

    def __setattr__(self, name, value):
        if name in _TUNABLES:
            setattr(_TUNABLES[name], name, value)
        super().__setattr__(name, value)

    def __getattribute__(self, name):
        tunables = types.ModuleType.__getattribute__(self, "__dict__").get("_TUNABLES", {})
        if name in tunables:
            return getattr(tunables[name], name)
        return types.ModuleType.__getattribute__(self, name)


sys.modules[__name__].__class__ = _Package
