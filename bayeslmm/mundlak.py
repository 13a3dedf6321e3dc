"""Within-between (Mundlak) effects: ``within(x, g)`` and ``between(x, g)`` in formulas.

A random-intercept model ``y ~ x + (1 | g)`` assumes the group effects are uncorrelated with
``x``. When they are not (schools with richer pupils are also better schools for other reasons,
people who exercise more differ in ways that also change their blood pressure), the slope of
``x`` mixes two different effects, and it is biased for both:

* the **within** effect: how ``y`` changes when ``x`` changes inside one group (the
  "fixed-effects" or econometric within estimator; it is immune to anything constant per group);
* the **between** effect: how group means of ``y`` differ with group means of ``x`` (it carries
  every group-level confounder).

Splitting ``x`` into its group mean and the deviation from it,
``y ~ within(x, g) + between(x, g) + (1 | g)`` (Mundlak 1978; Bell & Jones 2015, "Explaining
fixed effects", Political Science Research and Methods 3: 133-153), estimates both: the
coefficient of ``within(x, g)`` is the within effect whatever the correlation of the group effects
with ``x``, and :func:`within_between` gives the posterior of **within - between**, the built-in
check. Its interval far from 0 says the two effects differ, so the plain ``y ~ x + (1 | g)``
slope is not to be trusted (a Bayesian analogue of the Hausman test); near 0, the simpler model
is fine and more precise.

Definitions (computed at design time, per group, from the rows used in the fit: rows dropped for
missing values do not count):

* ``between(x, g)``: the mean of ``x`` over the rows of the row's group;
* ``within(x, g)``: ``x`` minus that mean (so ``within + between = x``).

Predictions on new data (``fit.predict(new)``):

* a group **seen in the fit** keeps the group mean of the fitted data, so ``between`` is that
  group's fitted mean and ``within`` is the new ``x`` minus it (a fitted subject at a new value of
  ``x`` is a within-subject change);
* a group **not in the fit** is described by its own rows in the new data: ``between`` is the mean
  of ``x`` over the new rows of that group, ``within`` the deviation from it (a new group with one
  row has ``within = 0``). Pass all of a new group's rows in one call.

``x`` may be a column or an allowed transform of columns (``within(log(x), g)``); ``g`` must be a
single column name (its levels are matched by value, as for grouping factors).

Examples
--------
>>> import pandas as pd
>>> df = pd.DataFrame({"x": [1.0, 3.0, 10.0, 14.0], "g": ["a", "a", "b", "b"]})
>>> within(df["x"], df["g"]).tolist(), between(df["x"], df["g"]).tolist()
([-1.0, 1.0, -2.0, 2.0], [2.0, 2.0, 12.0, 12.0])
"""

from __future__ import annotations

import ast

import numpy as np
import pandas as pd
from formulaic.utils.stateful_transforms import stateful_transform

from .errors import DataError, SpecError

__all__ = ["within", "between", "within_between", "within_between_pairs"]

TRANSFORMS = ("within", "between")


def _labels(g) -> np.ndarray:
    from .design import level_label          # the one owner of level identity (lazy: no cycle)
    values = g.to_numpy(dtype=object) if isinstance(g, pd.Series) else np.asarray(g, dtype=object)
    if values.ndim != 1:
        raise DataError("the group of within()/between() must be one column")
    if any(v is None or (isinstance(v, float) and np.isnan(v)) for v in values):
        raise DataError("the group column of within()/between() has missing values; drop those rows")
    return np.array([level_label(v) for v in values], dtype=object)


def _numeric(x, what: str) -> np.ndarray:
    if isinstance(x, pd.Series) and not (pd.api.types.is_numeric_dtype(x) or pd.api.types.is_bool_dtype(x)):
        raise DataError(f"{what} needs a numeric x; got a column of dtype {x.dtype} (a categorical "
                        "predictor has no group mean: use its dummy columns or a numeric coding)")
    try:
        v = np.asarray(x, dtype=float)
    except (TypeError, ValueError):
        raise DataError(f"{what} needs a numeric x") from None
    if v.ndim != 1:
        raise DataError(f"{what} needs one column for x; got shape {v.shape}")
    if np.isnan(v).any():
        raise DataError(f"{what}: x has missing values; drop or fill those rows first")
    return v


def _group_means(x, g, state: dict, what: str) -> np.ndarray:
    """Each row's group mean: fitted means for fitted groups (kept in ``state``), the new rows'
    own means for groups the state does not know."""
    v = _numeric(x, what)
    labels = _labels(g)
    if len(labels) != len(v):
        raise DataError(f"{what}: x and the group have different lengths ({len(v)} and {len(labels)})")
    own = pd.Series(v).groupby(labels, sort=False).mean()
    if "means" not in state:                  # the fitted data: learn the group means
        state["means"] = {str(k): float(m) for k, m in own.items()}
    known = state["means"]
    means = {k: known.get(k, float(m)) for k, m in own.items()}
    return np.array([means[k] for k in labels], dtype=float)


@stateful_transform
def within(x, g, _state=None):
    """``x`` minus its group mean (group means from the fitted data; see the module docstring).

    Parameters
    ----------
    x : array-like
        A numeric column (or an allowed transform of columns in a formula).
    g : array-like
        The group of each row (one column).

    Returns
    -------
    ndarray

    Examples
    --------
    >>> within([1.0, 3.0, 5.0], ["a", "a", "b"]).tolist()
    [-1.0, 1.0, 0.0]
    """
    return _numeric(x, "within()") - _group_means(x, g, {} if _state is None else _state, "within()")


@stateful_transform
def between(x, g, _state=None):
    """The mean of ``x`` over the rows of each row's group (fitted means for fitted groups).

    Parameters
    ----------
    x : array-like
        A numeric column (or an allowed transform of columns in a formula).
    g : array-like
        The group of each row (one column).

    Returns
    -------
    ndarray

    Examples
    --------
    >>> between([1.0, 3.0, 5.0], ["a", "a", "b"]).tolist()
    [2.0, 2.0, 5.0]
    """
    return _group_means(x, g, {} if _state is None else _state, "between()")


def _term_call(term: str):
    """``("within" | "between", x text, g text)`` for a fixed-effect column name, else None."""
    try:
        node = ast.parse(term, mode="eval").body
    except SyntaxError:
        return None
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in TRANSFORMS
            and len(node.args) == 2 and not node.keywords):
        return node.func.id, ast.unparse(node.args[0]), ast.unparse(node.args[1])
    return None


def within_between_pairs(fixed_terms) -> list[tuple[str, str, str]]:
    """``(label, within term, between term)`` for every ``x, g`` with both terms in the model.

    Examples
    --------
    >>> within_between_pairs(["Intercept", "within(x, g)", "between(x, g)", "z"])
    [('x | g', 'within(x, g)', 'between(x, g)')]
    """
    found: dict[tuple[str, str], dict[str, str]] = {}
    for t in fixed_terms:
        call = _term_call(t)
        if call is not None:
            found.setdefault(call[1:], {})[call[0]] = t
    return [(f"{x} | {g}", d["within"], d["between"]) for (x, g), d in found.items()
            if "within" in d and "between" in d]


def within_between(fit, prob: float = 0.95):
    """Posterior of the within effect, the between effect and **within - between**, per predictor.

    The model must have both ``within(x, g)`` and ``between(x, g)`` as fixed effects. The row
    ``within - between`` is the check of the random-intercept assumption: if its interval is far
    from 0, the group effects are correlated with ``x`` and a plain ``y ~ x + (1 | g)`` slope is
    biased; keep the within effect. (With ``y ~ x + between(x, g) + ...`` instead, the
    coefficient of ``between`` is already the contextual effect, between - within.)

    Parameters
    ----------
    fit : Fit
    prob : float
        Probability mass of the HDI.

    Returns
    -------
    Table
        Three rows per pair (``"x | g: within"``, ``"x | g: between"``,
        ``"x | g: within - between"``): mean, sd, HDI, ESS, R-hat, MCSE, and ``p_gt_0``, the
        posterior probability that the value is above 0.

    Raises
    ------
    SpecError
        If the model has no within/between pair.

    Examples
    --------
    >>> import numpy as np, pandas as pd, bayeslmm as blmm
    >>> rng = np.random.default_rng(0)
    >>> g = np.repeat(np.arange(20), 5); a = rng.normal(size=20)
    >>> x = a[g] + rng.normal(size=100)                     # x's group means follow a ...
    >>> y = 1.0 * x + 2.0 * a[g] + rng.normal(size=100)     # ... and so do the group effects
    >>> df = pd.DataFrame({"y": y, "x": x, "g": g})
    >>> fit = blmm.Model("y ~ within(x, g) + between(x, g) + (1 | g)", df).fit(
    ...     chains=2, draws=300, tune=300, seed=1, progressbar=False)      # doctest: +SKIP
    >>> fit.within_between()        # doctest: +SKIP
    >>> # within about 1, between about 1 + 2 Var(a) / Var(mean of x) = 1 + 2 / 1.2: within - between ~ -1.7
    """
    from .results import summarize_draws
    from .tables import as_table
    pairs = within_between_pairs(fit.design.fixed_terms)
    if not pairs:
        raise SpecError(f"the model {fit.spec.formula.text!r} has no within(x, g) + between(x, g) pair of "
                        "fixed effects; write e.g. 'y ~ within(x, g) + between(x, g) + (1 | g)'.")
    b = fit.posterior["b"]
    draws = {}
    for label, w, bt in pairs:
        draws[f"{label}: within"] = b.sel(term=w)
        draws[f"{label}: between"] = b.sel(term=bt)
        draws[f"{label}: within - between"] = b.sel(term=w) - b.sel(term=bt)
    tab = summarize_draws(draws, prob)
    tab["p_gt_0"] = [float((draws[k] > 0).mean()) for k in tab.index]
    out = as_table(tab)
    out.attrs["ci_prob"] = prob
    return out
