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
``ggn_linearised_loop``             the GGN as the Hessian of the linearised network's loss
``residual_term_loop``              ``(1/N) sum_n sum_k r_nk grad^2 f_nk`` (Kunstner Prop. 2)
``jacobian_loop``                   ``(C, P)`` Jacobian of one example's outputs, row by row
=================================  =============================================================
"""

from __future__ import annotations

# This package is an independent oracle: it imports nothing from ewc_lib.curvature (nor
# anything private from the rest of ewc_lib). Its checks are its own (``_problem``), and its
# negative log-likelihoods are written differently (one row at a time, log1p, softplus).
from .first_order import fisher_diagonal_loop, fisher_matrix_loop, per_example_scores
from .second_order import (
    expected_hessian_loop,
    ggn_linearised_loop,
    ggn_loop,
    hessian_loop,
    jacobian_loop,
    residual_term_loop,
)

__all__ = [
    "per_example_scores",
    "fisher_matrix_loop",
    "fisher_diagonal_loop",
    "hessian_loop",
    "expected_hessian_loop",
    "ggn_loop",
    "ggn_linearised_loop",
    "residual_term_loop",
    "jacobian_loop",
]
