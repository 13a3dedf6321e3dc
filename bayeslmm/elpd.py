"""Which LOO: leave one observation out, or leave one group out (for big data).

PSIS-LOO (Vehtari, Gelman & Gabry 2017) estimates the expected log predictive density of data the
model has not seen. Two versions, which answer different questions:

observation (``kind="observation"``)
    Leave one *row* out; the group's effect stays (it is estimated from the group's other rows).
    "How well does the model predict a new observation of a group it has seen?" Needs the
    conditional log-likelihood of every row for every draw: chains x draws x rows numbers (4000 x
    100,000 rows = 3.2 GB), and Pareto k is often high for rows of small groups.
group (``kind="group"``)
    Leave one top-level *group* out: all its rows together, its effect integrated out exactly (the
    collapsed path's per-group marginal log-likelihood, :func:`bayeslmm.paths.elimination.group_log_likelihood`).
    "How well does the model predict a new group?" chains x draws x groups numbers, so it is fast
    for any number of rows. Needs nested (or single) grouping factors and the Gaussian family.

``kind="auto"`` (the default) takes the group version for more than :data:`GROUP_LOO_ROWS` rows
(where it exists) and for fits built from per-group statistics (which have no rows), else the
observation version. The result prints which one it is (its first line) and carries it in
``.loo_kind``; the report states it too.
"""

from __future__ import annotations

import arviz as az

from .errors import SpecError

__all__ = ["loo", "loo_kind", "GROUP_LOO_ROWS", "KINDS"]

GROUP_LOO_ROWS = 20_000
KINDS = ("auto", "observation", "group")


def _group_unavailable(fit) -> str | None:
    """Why there is no per-group marginal log-likelihood for this fit (None when there is one)."""
    from .families import family_of
    from .stats import nesting_chain
    fam = family_of(fit.spec)
    if fam.name != "gaussian" or not fam.supports_collapsed:
        return f"the {fam.name} family here has no closed-form marginal likelihood of a group"
    chain, why = nesting_chain(fit.design)
    return None if chain is not None else why


def loo_kind(fit, kind: str = "auto") -> str:
    """Resolve ``kind`` ("auto", "observation", "group") for ``fit``; raises :class:`SpecError`
    when the requested kind does not exist for it."""
    from .bigfit import is_stats_design
    if kind not in KINDS:
        raise SpecError(f"loo kind {kind!r} is not one of {list(KINDS)}.")
    stats_only = is_stats_design(fit.design)
    why = _group_unavailable(fit)
    if kind == "auto":
        kind = "group" if why is None and (stats_only or fit.design.n > GROUP_LOO_ROWS) else "observation"
    if kind == "group" and why is not None:
        raise SpecError(f"leave-one-group-out LOO is not available: {why}. Use kind='observation'.")
    if kind == "observation" and stats_only:
        raise SpecError("this fit was built from per-group statistics (no rows): only leave-one-group-out "
                        "LOO exists; use kind='group' (the default).")
    return kind


def describe(kind: str, fit) -> str:
    """One sentence: which LOO this is."""
    if kind == "group":
        from .stats import nesting_chain
        chain, _ = nesting_chain(fit.design)
        g = chain[0].name if chain else "group"
        return (f"leave-one-group-out PSIS-LOO: each level of '{g}' left out with all its rows, its "
                "effect integrated out (predicts a new group)")
    return ("leave-one-observation-out PSIS-LOO: one row left out, its group's effect kept "
            "(predicts a new observation of a known group)")


def loo(fit, *, kind: str = "auto", **kwargs):
    """PSIS-LOO of a fit, leave-one-observation-out or leave-one-group-out (see the module docstring).

    Parameters
    ----------
    fit : Fit
    kind : {"auto", "observation", "group"}
        ``"auto"``: by group for more than ``GROUP_LOO_ROWS`` (20,000) rows where it exists (nested
        factors, Gaussian) and for fits from per-group statistics; else by observation.
    **kwargs
        Passed to ``arviz.loo``.

    Returns
    -------
    ELPDData
        ArviZ's result; its printout starts with the kind of LOO, and ``.loo_kind`` is
        ``"observation"`` or ``"group"``. ``n_data_points`` is the number of rows or of groups.

    Examples
    --------
    >>> fit.loo().loo_kind                                              # doctest: +SKIP
    'observation'
    >>> fit.loo(kind="group").elpd                                      # doctest: +SKIP
    """
    kind = loo_kind(fit, kind)
    if kind == "group":      # the collapsed per-group marginal log-likelihood (model owns the paths)
        from .model import group_loo
        res = group_loo(fit, **kwargs)
    else:
        from .diagnostics import log_likelihood_tree
        res = az.loo(log_likelihood_tree(fit), var_name="y", **kwargs)
    return _label(res, kind, describe(kind, fit))


def _label(res, kind: str, text: str):
    """ArviZ's ELPDData, printed with a first line saying which LOO it is."""
    base = type(res)

    class LOO(base):                       # same fields and behaviour; only the header differs
        def _header(self):
            return f"{self.loo_description}\n" + base._header(self)

    LOO.__name__ = LOO.__qualname__ = base.__name__
    res.__class__ = LOO
    res.loo_kind, res.loo_description = kind, text[0].upper() + text[1:]
    return res
