"""How the posterior is sampled: the sampling paths, and the one place a path is chosen.

* :mod:`bayeslmm.paths.noncentred`: the full graph, every random effect sampled (any family);
* :mod:`bayeslmm.paths.collapsed`: the exact Gaussian path, random effects integrated out and
  drawn afterwards (one factor or nested factors);
* :mod:`bayeslmm.paths.quadrature_path`: the exact collapsed GLMM path (bernoulli, binomial, Poisson,
  negative binomial; one grouping factor, 1-3 terms): group effects integrated out by adaptive
  Gauss-Hermite quadrature (:mod:`bayeslmm.paths.quadrature`) and drawn afterwards;
* :mod:`bayeslmm.paths.crossed_path`: the same for crossed (or crossed and nested) factors, by the
  blocked Cholesky algebra of :mod:`bayeslmm.paths.crossed_kernel`;
* :mod:`bayeslmm.paths.blocks`: the pieces both share (fixed effects and their centring, LKJ).

:func:`choose_path` returns a :class:`Plan` (which path, and why); ``Model.fit`` prints the reason.
Importing this package does not import PyMC (the path modules do). Only :mod:`bayeslmm.model` and
:mod:`bayeslmm.validation` import the paths.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..covariance import kinship_plan
from ..errors import SpecError
from ..families import family_of
from ..spec import canonical_method
from ..stats import nesting_chain

__all__ = ["Plan", "choose_path", "PATHS"]

PATHS = ("noncentred", "collapsed", "crossed", "quadrature", "kinship")


@dataclass(frozen=True)
class Plan:
    """The chosen sampling path.

    Attributes
    ----------
    path : str
        ``"noncentred"``, ``"collapsed"`` (one factor or a nesting chain), ``"crossed"`` (Gaussian,
        factors that do not form a nesting chain), ``"quadrature"`` (the collapsed GLMM path) or
        ``"kinship"`` (the rotated path of a known covariance).
    reason : str
        Why, in words (printed by ``fit``).
    chain : tuple of FactorDesign or None
        The factors ordered top -> deepest, for the collapsed path.
    """

    path: str
    reason: str
    chain: tuple | None = None


def choose_path(spec, design, method: str | None = None) -> Plan:
    """The sampling path for ``spec`` and ``design`` (``method`` overrides ``spec.method``).

    ``"auto"`` takes the exact collapsed path where it applies (a family that supports it and
    grouping factors that form a nesting chain; for crossed factors the crossed collapsed path,
    Gaussian without known standard errors or offset; for bernoulli, binomial, Poisson and negative
    binomial models with one factor of 1-3 terms, the quadrature path), else the non-centred graph. Asking for
    ``"collapsed"`` (alias ``"marginal"``) where it does not apply is a :class:`SpecError`.

    Examples
    --------
    >>> import bayeslmm as blmm
    >>> m = blmm.Model("Reaction ~ Days + (Days | Subject)", blmm.load_dataset("sleepstudy"))
    >>> choose_path(m.spec, m.design).path
    'collapsed'
    >>> choose_path(m.spec, m.design, "noncentred").reason
    'requested'
    """
    method = canonical_method(method or spec.method)
    weighted = getattr(design, "weights", None) is not None
    kin = kinship_plan(spec, design, method, family_of(spec))     # cov={g: K}: never the collapsed path
    if kin is not None:
        if weighted and kin[0] == "kinship":
            if method in ("kinship", "collapsed"):
                raise SpecError(f"method={method!r} does not apply: the rotated path of a known covariance "
                                "does not take likelihood weights. Use method='noncentred'.")
            return Plan("noncentred", "likelihood weights: the rotated path of a known covariance does "
                                      "not take them; the non-centred graph does")
        return Plan(*kin)
    if method == "kinship":
        raise SpecError("method='kinship' needs a known covariance: Model(..., cov={'g': K}).")
    if method == "noncentred":
        return Plan("noncentred", "requested")
    family = family_of(spec)
    from .quadrature import FAMILIES as QUADRATURE_FAMILIES    # here: light commands load no path module
    from .quadrature import applies as quadrature_applies
    if family.name in QUADRATURE_FAMILIES:      # the collapsed path of non-Gaussian families (AGHQ)
        ok, why = quadrature_applies(family, design)
        if ok:
            return Plan("quadrature", why)
        if method == "collapsed":
            raise SpecError(f"method='collapsed' does not apply: {why}. Use method='noncentred'.")
        return Plan("noncentred", why)
    crossed_ok = False
    if family.known_se and not family.supports_collapsed:
        chain, why = None, ("se(..., sigma = TRUE): the residual covariance diag(s_i^2 + sigma^2) is "
                            "not a known matrix times one scale, so rows cannot be whitened into the "
                            "collapsed algebra; the non-centred graph samples it")
    elif not family.supports_collapsed:
        chain, why = None, (f"family {spec.family!r} has no exact collapsed likelihood: the collapsed "
                            "path needs a Gaussian likelihood; the random effects are sampled")
    elif getattr(design, "offset", None) is not None:
        chain, why = None, "the model has an offset, which the collapsed path does not take"
    else:
        chain, why = nesting_chain(design)
        crossed_ok = not family.known_se and getattr(design, "group_stats", None) is None and not weighted
        if chain is None and weighted and len(design.factors) > 1:
            why += " (the crossed collapsed path does not take likelihood weights)"
        if chain is None and family.known_se and len(design.factors) > 1:
            why += " (the crossed collapsed path does not take known standard errors)"
        if chain is not None and family.known_se:
            why = why.replace("gaussian,", "gaussian with known standard errors (rows whitened by 1/s_i),", 1)
    if chain is None and crossed_ok:
        crossed, why = _crossed_plan(design, why)
        if crossed is not None:
            return crossed
    if method == "collapsed" and chain is None:
        raise SpecError(f"method='collapsed' does not apply: {why}. Use method='noncentred'.")
    if chain is not None and len(chain) > 1 and crossed_ok and method == "auto":
        small = _nested_via_crossed(design, chain)
        if small is not None:
            return small
    if chain is not None:
        return Plan("collapsed", why, chain)
    return Plan("noncentred", why)


#: ``method="auto"`` samples nested factors on the crossed collapsed path when at most this many group
#: effects lie outside the largest factor (see :func:`_nested_via_crossed`)
NESTED_VIA_CROSSED_MAX = 64


def _nested_via_crossed(design, chain) -> Plan | None:
    """The crossed collapsed path for a small nesting chain (``method="auto"`` only), or None.

    Both paths integrate the same random effects out exactly; they differ in cost. The nested
    elimination graph is a PyTensor graph whose shape follows the design, so every new design
    compiles it anew: a Pastes-like ``(1 | batch/cask)`` took 52-57 s to its first result with an
    empty compile cache (bambi: 27-30 s). The crossed path's kernel is compiled once at install and
    takes the design as data: 18 s cold, 7 s warm. Its cost per evaluation grows with the square of
    the effects outside the largest factor (dense), so it is taken only up to
    :data:`NESTED_VIA_CROSSED_MAX` of them: at 64 (64 batches x 10 casks x 3 rows) a warm fit took
    7.8 s against 6.7 s on the nested path, a first fit 11.6 against 15.5 s.
    ``method="collapsed"`` keeps the nested path.
    """
    q2 = _effects_outside_largest(design)
    if q2 > NESTED_VIA_CROSSED_MAX:
        return None
    return Plan("crossed", f"gaussian, nested factors {' > '.join(f.name for f in chain)} with {q2} group "
                           "effects outside the largest factor: random effects integrated out exactly on the "
                           "crossed collapsed path (its kernel is compiled at install; the nested elimination "
                           "graph would compile for this design; method='collapsed' takes it)")


def _effects_outside_largest(design) -> int:
    """Group effects outside the largest factor: the dense part of the crossed path's algebra."""
    sizes = [f.n_levels * f.q for f in design.factors]
    return sum(sizes) - max(sizes)


def _crossed_plan(design, why: str) -> tuple[Plan | None, str]:
    """The crossed collapsed plan for factors that form no nesting chain, or None and the reason."""
    from .crossed_stats import MAX_DENSE
    if len(design.factors) < 2:
        return None, why
    q1 = max(f.n_levels * f.q for f in design.factors)
    q2 = _effects_outside_largest(design)
    pair = why.split(":")[0]                    # "crossed factors a and b"
    if q2 * max(q1, q2) > MAX_DENSE:
        return None, (f"{pair}, too many group effects outside the largest factor ({q2}) for the dense "
                      "Schur complement of the crossed collapsed path: falling back to the non-centred graph")
    big = max(design.factors, key=lambda f: f.n_levels * f.q)
    return Plan("crossed", f"gaussian, {pair}: random effects integrated out exactly (blocked Cholesky, "
                           f"{big.name} eliminated level by level, {q2} effects dense)"), why
