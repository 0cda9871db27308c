"""Named tolerances and comparison helpers shared by the tests, the notebooks and the chapters.

Every tolerance of the project lives here, each with the one-line reason for its size. Import
it instead of writing a number again:

>>> from ewc_lib.testing import EXACT_RTOL, assert_close
>>> EXACT_RTOL
1e-10
>>> assert_close([1.0, 2.0], [1.0, 2.0 + 1e-13], what="two routes to one vector")

:func:`assert_close` compares relative to the largest entry of the expected value (the scale
of the quantity, so an entry that should be zero is judged on that scale), and says which entry
is off and by how much. It goes through :func:`ewc_lib.claims.claim`: outside class mode a
failure raises :class:`ewc_lib.claims.ClaimFailed`, an ``AssertionError``, exactly as in a test;
in class mode (``EWC_CLASS=1``) a notebook reports it and goes on.

Tolerances come in four kinds:

* **float64 identities** (:data:`ROUNDING_RTOL`, :data:`EXACT_RTOL`, :data:`EXACT_ATOL`,
  :data:`CANCELLATION_RTOL`): two routes to the same number that differ only by round-off;
* **optimisers** (:data:`STATIONARY_ATOL`, :data:`OPTIMISER_RTOL`): a numerical minimiser against a
  closed form, limited by where the minimiser stops;
* **float32** (:data:`FLOAT32_RTOL`, :data:`REPLAY_RTOL`, :data:`OVERLAP_INIT_RTOL`): the summation order of
  float32 kernels;
* **statistics** (:data:`MC_NUM_STD_ERRORS`, :data:`CLAIM_MARGIN`): random estimates, allowed a number of
  standard errors.
"""

from __future__ import annotations

import numpy as np

from ewc_lib.claims import claim

__all__ = [
    "ROUNDING_RTOL",
    "EXACT_RTOL",
    "EXACT_ATOL",
    "CANCELLATION_RTOL",
    "STATIONARY_ATOL",
    "OPTIMISER_RTOL",
    "FLOAT32_RTOL",
    "REPLAY_RTOL",
    "OVERLAP_INIT_RTOL",
    "MC_NUM_STD_ERRORS",
    "CLAIM_MARGIN",
    "rel_error",
    "assert_close",
    "assert_within_std_errors",
]

# --- float64 identities ------------------------------------------------------------------

#: A few float64 operations on small, well-conditioned inputs (a 2x2 solve, a closed form
#: against a short autograd loop): round-off is ~1e-16 relative; 1e-12 allows ~1e4 ulps.
ROUNDING_RTOL = 1e-12

#: Two different float64 routes to one quantity (outer products of scores vs second
#: derivatives vs J^T Lambda J; sums of a few hundred products; solves of small systems):
#: observed round-off is ~1e-15 relative; 1e-10 leaves room without hiding a real error,
#: which is at least ~1e-3 relative in every bug these checks have caught.
EXACT_RTOL = 1e-10

#: Absolute floor for float64 entries that should be exactly zero (off-diagonals of diagonal
#: matrices, a stationary gradient of a quadratic), on quantities of order one.
EXACT_ATOL = 1e-12

#: A float64 difference of two nearly equal solutions (a shift of a minimiser) or an explicit
#: inverse of a matrix with condition number up to ~1e3: cancellation costs up to half of the
#: 16 digits.
CANCELLATION_RTOL = 1e-8

# --- optimisers --------------------------------------------------------------------------

#: A float64 minimiser stopped at a gradient norm <= 1e-8 and then polished by Newton steps
#: finds the mode and the curvature there to rounding, as the closed form gives them.
STATIONARY_ATOL = 1e-10

#: A float64 iterative minimiser (L-BFGS, one Newton step from far away) against the closed
#: form of a well-conditioned quadratic: it stops at a gradient norm of ~1e-12 relative to
#: the start, which leaves the minimiser ~1e-9 off.
OPTIMISER_RTOL = 1e-8

# --- float32 -----------------------------------------------------------------------------

#: float32 against float32 computed in another summation order (ours vs BackPACK, the fast
#: path vs the generic one, float32 vs the float64 loop on large logits): observed <= 3e-6
#: relative to the largest entry.
FLOAT32_RTOL = 1e-4

#: Replaying the first steps of a recorded float32 training run on the same kind of CPU with
#: the recorded thread count gives the same weights up to the summation order of the BLAS
#: kernels; a different seed, learning rate or data order moves them by ~1e-1 of their norm.
#: Compared relative to each parameter's norm.
REPLAY_RTOL = 1e-4

#: The Fisher overlap at initialisation recomputed from the recorded config, with float32
#: forward passes and float64 sums over 10,000 images, rounded to 6 digits in the file.
OVERLAP_INIT_RTOL = 1e-4

# --- statistics --------------------------------------------------------------------------

#: A Monte Carlo estimate may be at most this many standard errors from the exact value:
#: a two-sided Gaussian excursion this large has probability ~6e-7, small even over the
#: ~1e4 entries a notebook checks at once (and every draw is seeded, so a pass is stable).
MC_NUM_STD_ERRORS = 5.0

#: A qualitative claim about recorded accuracies ("EWC keeps A", "L2 ends below EWC on B")
#: must hold by at least this margin (accuracy in [0, 1]), more than the test-set standard
#: error of one accuracy near 0.9 measured on 10,000 images (sqrt(0.9 * 0.1 / 10000) = 0.003).
CLAIM_MARGIN = 0.01


def _as_array(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, without importing torch here
        x = x.detach().cpu().double().numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a number, an array or a tensor of numbers; got {type(x).__name__}") from exc
    return arr


def _pair(actual, expected, what: str):
    """Both as float64 arrays of one shape (no broadcasting)."""
    a, e = _as_array(actual, "actual"), _as_array(expected, "expected")
    if a.shape != e.shape:
        raise ValueError(f"{what}: actual has shape {a.shape} but expected has shape {e.shape}; they must be equal")
    return a, e


def _one_number(scale, what: str) -> float:
    arr = _as_array(scale, "scale")
    if arr.size != 1:
        raise ValueError(f"{what}: scale must be one number, got shape {arr.shape}")
    return float(arr.reshape(()))


def rel_error(actual, expected, scale=None) -> float:
    """``max |actual - expected| / max |expected|`` (or ``/ scale``), as a float.

    Entries are compared at the scale of the whole quantity, so an entry that should be zero is
    not judged relative to itself. ``actual`` and ``expected`` must have the same shape (no
    broadcasting); NaN anywhere gives NaN. A zero ``expected`` needs an explicit ``scale``.

    >>> rel_error([1.0, 0.0], [1.0, 1e-9])
    1e-09
    """
    a, e = _pair(actual, expected, "rel_error")
    if a.size == 0:
        return 0.0
    if scale is None:
        scale = float(np.max(np.abs(e)))
        if not scale > 0:
            raise ValueError("expected is zero everywhere: pass scale= (the size the difference is judged against)")
    elif not _one_number(scale, "rel_error") > 0:
        raise ValueError(f"scale must be a positive number; got {scale!r}")
    return float(np.max(np.abs(a - e)) / float(scale))


def assert_close(
    actual, expected, *, what: str, rtol: float = EXACT_RTOL, atol: float = 0.0, scale=None, entrywise: bool = False
) -> None:
    """Claim that ``actual`` equals ``expected`` up to ``rtol`` relative to the largest
    ``|expected|`` (or to ``scale``), plus an absolute ``atol``.

    ``entrywise=True`` judges each entry against its own size instead,
    ``|actual_i - expected_i| <= rtol * |expected_i| + atol`` (``numpy.testing.assert_allclose``):
    stricter for the small entries of a quantity that spans orders of magnitude (``gamma ** k``).

    ``what`` names the comparison in the message, which also gives the worst entry, its two
    values and how many entries are off. Outside class mode a failure raises
    :class:`ewc_lib.claims.ClaimFailed` (an ``AssertionError``); in class mode it is reported.

    >>> assert_close(1.0 + 1e-3, 1.0, what="a loose value", rtol=1e-6)
    Traceback (most recent call last):
    ...
    ewc_lib.claims.ClaimFailed: a loose value (|actual - expected| = 1.000e-03 > 1.000e-06 ...
    """
    if not isinstance(what, str) or not what:
        raise TypeError("what must be a non-empty string naming the comparison")
    a, e = _pair(actual, expected, what)
    if a.size == 0:
        claim(True, what)
        return
    if entrywise and scale is not None:
        raise ValueError(f"{what}: pass either scale= or entrywise=True, not both")
    if scale is None:
        scale = np.abs(e) if entrywise else float(np.max(np.abs(e)))
    else:
        scale = _one_number(scale, what)
    err = np.abs(a - e)
    bound = float(rtol) * scale + float(atol)
    bad = ~(err <= bound)  # NaN counts as off
    if not bad.any():
        claim(True, what)
        return
    excess = np.where(np.isnan(err), np.inf, err - bound)
    worst = int(np.argmax(excess))
    flat_bound = np.broadcast_to(bound, err.shape).reshape(-1)[worst]
    rule = "entry by entry" if entrywise else f"scale {float(scale):.3e}"
    detail = (
        f"|actual - expected| = {err.reshape(-1)[worst]:.3e} > {flat_bound:.3e} (rtol {rtol:.0e}, {rule}, "
        f"atol {atol:.0e}) at flat index {worst}: actual {a.reshape(-1)[worst]:.10e}, "
        f"expected {e.reshape(-1)[worst]:.10e}; {int(bad.sum())} of {bad.size} entries off"
    )
    claim(False, what, detail)


def assert_within_std_errors(estimate, exact, std_error, *, what: str, k: float = MC_NUM_STD_ERRORS) -> float:
    """Claim that every entry of a Monte Carlo ``estimate`` lies within ``k`` standard errors
    of ``exact``; return the largest ``|estimate - exact| / std_error`` (the worst z-score).

    Entries with a zero standard error must match exactly (to :data:`EXACT_RTOL` of the
    largest ``|exact|``).

    >>> round(assert_within_std_errors([1.1, 2.0], [1.0, 2.0], [0.1, 0.0], what="two entries"), 6)
    1.0
    """
    est, ex, se = (_as_array(v, n) for v, n in ((estimate, "estimate"), (exact, "exact"), (std_error, "std_error")))
    if not (est.shape == ex.shape == se.shape):
        raise ValueError(f"{what}: estimate {est.shape}, exact {ex.shape} and std_error {se.shape} must have one shape")
    if (se < 0).any() or np.isnan(se).any():
        raise ValueError(f"{what}: std_error must be >= 0 everywhere")
    diff = np.abs(est - ex)
    random = se > 0
    z = np.where(random, diff / np.where(random, se, 1.0), 0.0)
    worst = float(z.max()) if z.size else 0.0
    scale = float(np.max(np.abs(ex))) if ex.size else 0.0
    exact_ok = bool((diff[~random] <= EXACT_RTOL * scale).all())
    claim(
        worst <= k and exact_ok and not np.isnan(diff).any(),
        what,
        f"worst z = {worst:.2f} (allowed {k}); entries with zero standard error exact: {exact_ok}",
    )
    return worst
