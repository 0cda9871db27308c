"""Symbolic (SymPy) checks of the Fisher information identities.

For a family of densities ``p_theta(z) = exp(log_density)`` on a support that does not depend on
``theta``, differentiating ``integral p_theta(z) dz = 1`` under the integral sign gives

* ``E[s] = 0`` with the score ``s = grad_theta log p_theta(z)``, and
* ``E[s s^T] = -E[hess_theta log p_theta(z)]`` (the Fisher information, for ONE observation).

:func:`check_fisher_identity` computes both sides exactly (integrating over a
``sympy.Interval``, summing over a ``sympy.Range`` or ``sympy.FiniteSet``) and reports whether
they agree. When the support depends on ``theta`` (``Uniform(0, theta)``) the identities fail, and
the result says so (``holds == False``) and gives the boundary term from Leibniz's rule that
explains the failure.

Conventions: everything is per observation (one draw of ``z``); the Fisher of ``N`` i.i.d.
observations is ``N`` times this matrix, and the book's mean-over-data Fisher averages it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp

__all__ = ["FisherIdentityResult", "check_fisher_identity", "example_families", "is_zero"]


@dataclass
class FisherIdentityResult:
    """Outcome of :func:`check_fisher_identity`; all matrices are ``sympy.Matrix``.

    Attributes
    ----------
    params : list of sympy.Symbol
        The parameters, in the order of the rows and columns below.
    normaliser : sympy.Expr
        ``integral (or sum) of exp(log_density)`` over the support, simplified (equal to 1).
    score_mean : sympy.Matrix, shape (P, 1)
        ``E[s]``, the expected score.
    outer : sympy.Matrix, shape (P, P)
        ``E[s s^T]``, the Fisher information of one observation.
    neg_hessian : sympy.Matrix, shape (P, P)
        ``-E[hess_theta log p]``, the expected negative Hessian.
    difference : sympy.Matrix, shape (P, P)
        ``outer - neg_hessian``, simplified.
    score_covariance : sympy.Matrix, shape (P, P)
        ``Cov(s) = E[s s^T] - E[s] E[s]^T``.
    boundary_term : sympy.Matrix, shape (P, 1)
        For an ``Interval`` support ``[a(theta), b(theta)]``, Leibniz's boundary contribution
        ``p(b) db/dtheta - p(a) da/dtheta``. Since the normaliser is 1 for every theta,
        ``score_mean + boundary_term == 0``: a nonzero boundary term is exactly why ``E[s] != 0``.
        Zero when the support does not depend on the parameters.
    score_mean_is_zero, identity_holds, holds : bool
        ``E[s] == 0``; ``outer == neg_hessian``; and both together.
    explanation : str
        One sentence saying what held or what failed and why.
    """

    params: list
    normaliser: sp.Expr
    score_mean: sp.Matrix
    outer: sp.Matrix
    neg_hessian: sp.Matrix
    difference: sp.Matrix
    score_covariance: sp.Matrix
    boundary_term: sp.Matrix
    score_mean_is_zero: bool
    identity_holds: bool
    holds: bool
    explanation: str = field(default="")

    @property
    def fisher(self) -> sp.Matrix:
        """The Fisher information of one observation, defined as ``E[s s^T]`` (= ``outer``)."""
        return self.outer


def is_zero(expr) -> bool:
    """True if the SymPy expression (or every entry of a matrix) simplifies to zero.

    Uses ``sympy.simplify`` first and falls back to ``expr.equals(0)`` (which may test numerically
    at random points); an undecided comparison counts as *not* zero.

    >>> import sympy as sp
    >>> x = sp.Symbol("x")
    >>> is_zero(sp.sin(x) ** 2 + sp.cos(x) ** 2 - 1)
    True
    """
    if isinstance(expr, sp.MatrixBase):
        return all(is_zero(e) for e in expr)
    expr = sp.sympify(expr)
    if expr == 0:
        return True
    simplified = sp.simplify(expr)
    if simplified == 0:
        return True
    if sp.simplify(sp.expand(simplified.rewrite(sp.exp))) == 0:
        return True
    if simplified.has(sp.Integral, sp.Sum):
        return False
    return simplified.equals(0) is True


def _validate(log_density, variable, params, support):
    if not isinstance(variable, sp.Symbol):
        raise TypeError(f"variable must be a sympy.Symbol, got {type(variable).__name__}: {variable!r}")
    if isinstance(params, sp.Symbol):
        raise TypeError("params must be a list of sympy.Symbol (wrap a single symbol in a list)")
    try:
        params = list(params)
    except TypeError as exc:
        raise TypeError(f"params must be a list of sympy.Symbol, got {type(params).__name__}") from exc
    if not params:
        raise ValueError("params must contain at least one sympy.Symbol, got an empty list")
    for p in params:
        if not isinstance(p, sp.Symbol):
            raise TypeError(f"every entry of params must be a sympy.Symbol, got {type(p).__name__}: {p!r}")
    if len(set(params)) != len(params):
        raise ValueError(f"params contains a repeated symbol: {params}")
    if variable in params:
        raise ValueError(f"variable {variable} must not also be one of params {params}")
    if isinstance(log_density, str) or not isinstance(log_density, (sp.Expr, int, float)):
        raise TypeError(
            f"log_density must be a SymPy expression in {variable} and {params}, got {type(log_density).__name__}"
        )
    log_density = sp.sympify(log_density)
    if log_density.has(sp.nan, sp.zoo) or log_density.has(sp.oo, -sp.oo):
        raise ValueError(f"log_density must be finite, got {log_density}")
    if support is sp.S.EmptySet or (isinstance(support, sp.Range) and support.is_empty):
        raise ValueError(f"support must not be empty, got {support}")
    if not isinstance(support, (sp.Interval, sp.Range, sp.FiniteSet)):
        raise TypeError(
            "support must be a sympy.Interval (continuous: integrate) or a sympy.Range / sympy.FiniteSet "
            f"(discrete: sum), got {type(support).__name__}: {support!r}"
        )
    if isinstance(support, (sp.Range, sp.FiniteSet)) and support.free_symbols & set(params):
        raise ValueError(
            "a discrete support must not depend on params (the derivative with respect to an integer-valued "
            f"endpoint is not defined); got support {support} with params {params}"
        )
    if support.free_symbols & {variable}:
        raise ValueError(f"support {support} must not depend on the variable {variable}")
    return log_density, params


def _density(log_density):
    """exp(log_density) in a form that SymPy integrates and sums well."""
    dens = sp.exp(sp.expand(log_density))
    # exp(a + b - log(c)) -> exp(a) exp(b) / c
    return sp.powsimp(sp.expand_power_exp(dens), combine="base")


def _expectation(density, expr, variable, support):
    """Integral (Interval) or sum (Range/FiniteSet) of ``density * expr`` over ``support``."""
    integrand = density * expr
    if isinstance(support, sp.Interval):
        return sp.integrate(integrand, (variable, support.start, support.end), conds="none")
    if isinstance(support, sp.FiniteSet) or support.is_finite_set:
        return sp.Add(*[integrand.subs(variable, value) for value in support])
    # an infinite Range
    step = abs(support.step)
    lo, hi = support.inf, support.sup
    m = sp.Dummy("m", integer=True, nonnegative=True)
    if lo.is_finite:
        return _series_sum(integrand.subs(variable, lo + step * m), m)
    if hi.is_finite:
        return _series_sum(integrand.subs(variable, hi - step * m), m)
    if step != 1:
        raise ValueError(f"support {support}: a Range infinite on both sides must have step 1")
    return sp.summation(integrand, (variable, -sp.oo, sp.oo))


def _series_sum(term, m):
    """sum_{m=0}^oo term, helping SymPy with terms like exp(eta * m) / m!.

    SymPy recognises r**m / m! (an exponential series) but not exp(eta * m) / m!, so every factor
    exp(c * m) is replaced by R**m with a positive dummy R = exp(c), and R is substituted back.
    """
    term = sp.expand(sp.powsimp(sp.expand_power_exp(term)))
    replacements = {}
    for atom in term.atoms(sp.exp):
        arg = sp.expand(atom.args[0])
        coeff = arg.coeff(m)
        if coeff != 0 and not coeff.has(m):
            rest = sp.expand(arg - coeff * m)
            base = replacements.setdefault(coeff, sp.Dummy("R", positive=True))
            term = term.subs(atom, base**m * sp.exp(rest))
    total = sp.summation(term, (m, 0, sp.oo))
    return total.subs({base: sp.exp(c) for c, base in replacements.items()})


# Results that mean SymPy could not decide a sign or a branch: the symbols lack assumptions.
_UNDECIDED = (sp.polar_lift, sp.periodic_argument, sp.arg, sp.Piecewise)

_HYPERBOLIC = (sp.sinh, sp.cosh, sp.tanh, sp.coth, sp.sech, sp.csch)


def _simplify(expr):
    """Simplify, keeping exponentials (not cosh/tanh) so results read like the book's formulas."""
    expr = sp.simplify(expr)
    if expr.has(*_HYPERBOLIC):
        expr = expr.rewrite(sp.exp)
    try:
        tidy = sp.factor(sp.cancel(sp.expand(expr)))
    except sp.PolynomialError:  # pragma: no cover - factor refuses some transcendental forms
        return expr
    return tidy if sp.count_ops(tidy) <= sp.count_ops(expr) or expr.has(*_HYPERBOLIC) else expr


def check_fisher_identity(log_density, variable, params, support) -> FisherIdentityResult:
    r"""Check ``E[s] = 0`` and ``E[s s^T] = -E[hess log p]`` exactly with SymPy.

    Book: :prf:ref:`lem-fisher-score-mean` and :prf:ref:`thm-fisher-identity` in
    :ref:`sec-fisher-identities`; checked in :ref:`sec-fisher-identities-check`.

    With ``p(z) = exp(log_density)``, ``s = grad_params log p(z)`` and ``E`` the integral
    (``support`` a ``sympy.Interval``) or the sum (``support`` a ``sympy.Range`` or
    ``sympy.FiniteSet``) against ``p`` over ``support``, computes

    * ``normaliser = E[1]`` (must simplify to 1, otherwise ``ValueError``),
    * ``score_mean = E[s]`` (P x 1), ``outer = E[s s^T]`` and ``neg_hessian = -E[hess log p]``
      (P x P), all per ONE observation (the Fisher of N i.i.d. draws is N times ``outer``),

    and ``holds`` is True when ``score_mean`` and ``outer - neg_hessian`` simplify to zero.
    A support that depends on the parameters (``Uniform(0, theta)``: ``Interval(0, theta)``) is
    allowed and typically gives ``holds == False``, with the Leibniz boundary term in
    ``boundary_term``.

    Parameters
    ----------
    log_density : sympy.Expr
        ``log p(z)`` as an expression in ``variable`` and ``params`` (other free symbols are treated
        as fixed constants). Valid on ``support`` only. For a discrete variable the expression is
        evaluated by substituting each value; write category-dependent densities with
        ``sympy.KroneckerDelta(y, k)`` or ``sympy.Piecewise``. Give symbols the assumptions that
        make the integrals converge (e.g. ``positive=True`` for a variance or a rate).
    variable : sympy.Symbol
        The random variable ``z``.
    params : list of sympy.Symbol
        The parameters ``theta``; fixes the order of rows/columns.
    support : sympy.Interval | sympy.Range | sympy.FiniteSet
        Where ``p > 0``.

    Returns
    -------
    FisherIdentityResult

    Raises
    ------
    TypeError
        ``variable`` or an entry of ``params`` is not a Symbol, ``log_density`` is not a SymPy
        expression, or ``support`` is not one of the three set types.
    ValueError
        ``params`` empty or repeated; a discrete support depending on ``params``; the density
        does not integrate (sum) to one, or its normaliser cannot be evaluated in closed form.

    Examples
    --------
    Bernoulli with logit ``eta``: the Fisher is ``sigma(eta) (1 - sigma(eta))``.

    >>> import sympy as sp
    >>> y, eta = sp.symbols("y eta", real=True)
    >>> res = check_fisher_identity(y * eta - sp.log(1 + sp.exp(eta)), y, [eta], sp.FiniteSet(0, 1))
    >>> res.holds
    True
    >>> sp.simplify(res.outer[0, 0] - sp.exp(eta) / (1 + sp.exp(eta)) ** 2)
    0
    """
    log_density, params = _validate(log_density, variable, params, support)
    if support.is_empty:
        raise ValueError(f"support must not be empty, got {support}")
    density = _density(log_density)

    normaliser = _simplify(_expectation(density, sp.Integer(1), variable, support))
    if normaliser.has(sp.Integral, sp.Sum, *_UNDECIDED):
        raise ValueError(
            f"log_density: could not evaluate the normaliser of exp({log_density}) over {support} in closed form "
            "(give the symbols assumptions such as positive=True)"
        )
    if not is_zero(normaliser - 1):
        raise ValueError(
            f"log_density does not define a normalised density on {support}: "
            f"the {'integral' if isinstance(support, sp.Interval) else 'sum'} of exp({log_density}) is "
            f"{normaliser}, not 1"
        )

    P = len(params)
    score = sp.Matrix([sp.diff(log_density, t) for t in params])
    hess = sp.hessian(log_density, params)

    score_mean = sp.Matrix([_simplify(_expectation(density, score[i], variable, support)) for i in range(P)])
    outer = sp.zeros(P, P)
    neg_hessian = sp.zeros(P, P)
    for i in range(P):
        for j in range(i, P):
            outer[i, j] = outer[j, i] = _simplify(_expectation(density, score[i] * score[j], variable, support))
            neg_hessian[i, j] = neg_hessian[j, i] = _simplify(-_expectation(density, hess[i, j], variable, support))
    for name, mat in (("score mean", score_mean), ("E[s s^T]", outer), ("-E[Hessian]", neg_hessian)):
        if any(e.has(sp.Integral, sp.Sum) for e in mat):
            raise ValueError(f"log_density: could not evaluate the {name} in closed form over {support}")
        if any(e.has(*_UNDECIDED) for e in mat):
            raise ValueError(
                f"log_density: the {name} depends on the sign or branch of a symbol ({list(mat)}); "
                "declare the symbols' assumptions (e.g. sympy.Symbol('v', positive=True) for a variance)"
            )
    difference = (outer - neg_hessian).applyfunc(_simplify)
    score_covariance = (outer - score_mean * score_mean.T).applyfunc(_simplify)

    boundary = sp.zeros(P, 1)
    if isinstance(support, sp.Interval):
        dens_plain = sp.exp(log_density)
        for i, t in enumerate(params):
            term = sp.Integer(0)
            for endpoint, sign in ((support.end, 1), (support.start, -1)):
                if endpoint.is_finite is not False and endpoint.has(t):
                    term += sign * dens_plain.subs(variable, endpoint) * sp.diff(endpoint, t)
            boundary[i] = _simplify(term)

    mean_zero = is_zero(score_mean)
    ident = is_zero(difference)
    holds = mean_zero and ident
    if holds:
        explanation = "E[s] = 0 and E[s s^T] = -E[Hessian]: the Fisher identities hold."
    else:
        parts = []
        if not mean_zero:
            parts.append(f"E[s] = {list(score_mean)} is not zero")
        if not ident:
            parts.append("E[s s^T] differs from -E[Hessian]")
        explanation = "; ".join(parts) + "."
        if not is_zero(boundary):
            explanation += (
                f" The support {support} depends on the parameters: differentiating the normalisation integral "
                f"picks up the boundary term {list(boundary)} (Leibniz's rule), so the derivative cannot be moved "
                "under the integral sign."
            )
    return FisherIdentityResult(
        params=params,
        normaliser=normaliser,
        score_mean=score_mean,
        outer=outer,
        neg_hessian=neg_hessian,
        difference=difference,
        score_covariance=score_covariance,
        boundary_term=boundary,
        score_mean_is_zero=mean_zero,
        identity_holds=ident,
        holds=holds,
        explanation=explanation,
    )


def example_families() -> dict:
    """The families the book checks, as ``name -> (log_density, variable, params, support)``.

    Book: the families of :ref:`sec-fisher-identities` and :ref:`sec-fisher-identities-check`.

    * ``"Bernoulli (logit)"``: ``y eta - log(1 + e^eta)`` on ``{0, 1}``;
    * ``"Categorical (softmax, K=3)"``: ``sum_k [y = k] eta_k - log sum_k e^{eta_k}`` on ``{0, 1, 2}``
      (the indicator written with ``KroneckerDelta``);
    * ``"Gaussian (mean, variance)"``: ``-(x - mu)^2 / (2 v) - log(2 pi v) / 2`` on the real line;
    * ``"Poisson (log-rate)"``: ``k eta - e^eta - log k!`` on ``{0, 1, 2, ...}``;
    * ``"Exponential (rate)"``: ``log lam - lam x`` on ``[0, oo)``;
    * ``"Uniform(0, theta)"``: ``-log theta`` on ``[0, theta]`` -- the counterexample.

    Each entry can be passed straight to :func:`check_fisher_identity`:

    >>> fams = example_families()
    >>> check_fisher_identity(*fams["Exponential (rate)"]).holds
    True
    """
    y = sp.Symbol("y", integer=True)
    k = sp.Symbol("k", integer=True, nonnegative=True)
    x = sp.Symbol("x", real=True)
    eta = sp.Symbol("eta", real=True)
    etas = list(sp.symbols("eta0:3", real=True))
    mu = sp.Symbol("mu", real=True)
    v = sp.Symbol("v", positive=True)
    lam = sp.Symbol("lambda", positive=True)
    theta = sp.Symbol("theta", positive=True)
    log_z3 = sp.log(sum(sp.exp(e) for e in etas))
    return {
        "Bernoulli (logit)": (y * eta - sp.log(1 + sp.exp(eta)), y, [eta], sp.FiniteSet(0, 1)),
        "Categorical (softmax, K=3)": (
            sum(sp.KroneckerDelta(y, c) * etas[c] for c in range(3)) - log_z3,
            y,
            etas,
            sp.Range(3),
        ),
        "Gaussian (mean, variance)": (
            -((x - mu) ** 2) / (2 * v) - sp.log(2 * sp.pi * v) / 2,
            x,
            [mu, v],
            sp.Interval(-sp.oo, sp.oo),
        ),
        "Poisson (log-rate)": (k * eta - sp.exp(eta) - sp.log(sp.factorial(k)), k, [eta], sp.Range(0, sp.oo)),
        "Exponential (rate)": (sp.log(lam) - lam * x, x, [lam], sp.Interval(0, sp.oo)),
        "Uniform(0, theta)": (-sp.log(theta), x, [theta], sp.Interval(0, theta)),
    }
