"""Conditional versus population-averaged effects: integrating the group effects out.

In a mixed model with a non-identity link the coefficients are **conditional** (subject-specific):
``b_x`` is the change in the link of the mean *for one group* (its effects held fixed) per unit of
``x``. The **population-averaged** (marginal) mean averages over the groups,

    mu_PA(x) = E_u[ g^{-1}(eta(x) + z(x)' u) ],   u ~ N(0, Sigma),

and because ``g^{-1}`` is non-linear it is flatter than the curve of the typical group
(``u = 0``). For a logit random intercept with SD ``sd``, ``logit(mu_PA(x))`` is close to
``eta(x) / sqrt(1 + c^2 sd^2)`` with ``c^2 = (16 sqrt(3) / (15 pi))^2 = 0.346`` (Zeger, Liang &
Albert 1988, Biometrics 44:1049): the population-averaged slope is attenuated by about
``1 / sqrt(1 + 0.346 sd^2)``. With the identity link the two coincide.

:func:`marginal_effects` computes both on a grid of one numeric predictor, for every posterior
draw: the conditional mean ``g^{-1}(eta)`` (group effects at 0) and the population-averaged mean by
Monte Carlo over ``n_mc`` group-effect vectors drawn from ``N(0, Sigma)`` with that draw's
covariance (antithetic pairs ``u, -u``, so the draws average exactly to 0), and the slopes
``d mu / d x`` (central finite differences with the same group-effect draws at ``x - h`` and
``x + h``, i.e. the average derivative), on the response scale and on the link scale
(``d g(mu_PA) / d x``: the population-averaged coefficient). Everything is numpy from the posterior
draws; PyMC is never imported. The group-effect draws come from ``numpy.random.default_rng(seed)``
(default: the fit's seed), so results are reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .design import predictor_arrays
from .errors import DataError, SpecError
from .families import get_family
from .posterior import cov_draws, hdi, r_var

__all__ = ["MarginalEffects", "marginal_effects", "plot_marginal_effects", "ATTENUATION_C2",
           "logit_attenuation"]

#: ``c^2`` of the logistic-normal approximation, ``(16 sqrt(3) / (15 pi))^2`` (Zeger et al. 1988)
ATTENUATION_C2 = float((16.0 * np.sqrt(3.0) / (15.0 * np.pi)) ** 2)

EFFECTS = ("conditional", "population_averaged")
_CHUNK = 4_000_000      # elements of the (draws x MC x grid) block evaluated at once


def logit_attenuation(sd):
    """``1 / sqrt(1 + 0.346 sd^2)``: the approximate ratio of the population-averaged to the
    conditional logit slope for a random intercept with SD ``sd`` (Zeger et al. 1988).

    >>> round(float(logit_attenuation(2.0)), 4)
    0.6477
    """
    return 1.0 / np.sqrt(1.0 + ATTENUATION_C2 * np.asarray(sd, dtype=float) ** 2)


@dataclass(frozen=True)
class MarginalEffects:
    """Conditional and population-averaged predictions and slopes over a grid of one predictor.

    Attributes
    ----------
    variable : str
        The predictor on the grid.
    grid : DataFrame
        The rows predicted for (the other predictors at their reference values, see ``at``).
    predictions : DataFrame
        Columns ``<variable>``, ``effect`` (``"conditional"`` or ``"population_averaged"``),
        ``mean``, ``sd``, ``hdi_lower``, ``hdi_upper``, ``mcse`` (Monte Carlo SE of the mean from
        the group-effect draws; 0 for the conditional rows), on the response (mean) scale
        ``g^{-1}(eta)`` (binomial: the probability per trial; the offset included).
    slopes : DataFrame
        The same columns for ``d mu / d x`` (response scale).
    link_slopes : DataFrame
        The same for the slope on the link scale: ``d eta / d x`` (conditional: the coefficient
        for a linear term) and ``d g(mu_PA) / d x`` (population-averaged).
    draws : dict of str to ndarray
        Posterior draws (S, G) of ``"conditional"``, ``"population_averaged"``,
        ``"conditional_slope"``, ``"population_averaged_slope"``, ``"conditional_link_slope"``,
        ``"population_averaged_link_slope"``.
    group_curves : DataFrame
        Posterior mean curves ``g^{-1}(eta(x) + z(x)' r_j)`` of fitted groups (rows: levels of the
        first integrated factor, at most ``n_groups``; columns: the grid): subject-specific curves.
    info : dict
        ``seed``, ``n_mc``, ``factors`` integrated, ``step`` of the finite difference, ``prob``,
        ``family``, ``link``, ``at`` (reference values).
    """

    variable: str
    grid: pd.DataFrame
    predictions: pd.DataFrame
    slopes: pd.DataFrame
    link_slopes: pd.DataFrame
    draws: dict = field(repr=False)
    group_curves: pd.DataFrame = field(repr=False)
    info: dict = field(default_factory=dict)

    def attenuation(self, prob: float | None = None) -> pd.DataFrame:
        """Posterior of the ratio population-averaged / conditional link-scale slope per grid value."""
        ratio = self.draws["population_averaged_link_slope"] / self.draws["conditional_link_slope"]
        return _summary(ratio, self.grid[self.variable].to_numpy(), self.variable, "ratio",
                        prob or self.info["prob"])

    def coefficients(self, prob: float | None = None) -> pd.DataFrame:
        """The link-scale slope over the whole grid: per draw, the least-squares slope of
        ``g(mu)`` on the grid values, for the conditional curve (the coefficient, for a linear
        term), the population-averaged curve (what a marginal model such as GEE estimates) and
        their ratio (about ``1 / sqrt(1 + 0.346 sd^2)`` for a logit random intercept).
        Rows ``conditional``, ``population_averaged``, ``ratio``; columns mean, sd, HDI."""
        x = self.grid[self.variable].to_numpy(dtype=float)
        if len(x) < 2:
            raise DataError("coefficients() needs a grid of at least 2 values")
        w = (x - x.mean()) / np.sum((x - x.mean()) ** 2)
        family = get_family(self.info["family"], self.info["link"])
        with np.errstate(divide="ignore", invalid="ignore"):
            cond = family.link_fn(self.draws["conditional"]) @ w
            pa = family.link_fn(self.draws["population_averaged"]) @ w
        prob = prob or self.info["prob"]
        rows = {"conditional": cond, "population_averaged": pa, "ratio": pa / cond}
        bounds = {k: hdi(v, prob) for k, v in rows.items()}
        tab = pd.DataFrame({"mean": [v.mean() for v in rows.values()],
                            "sd": [v.std(ddof=1) for v in rows.values()],
                            "hdi_lower": [bounds[k][0] for k in rows],
                            "hdi_upper": [bounds[k][1] for k in rows]}, index=pd.Index(list(rows), name="effect"))
        tab.attrs["ci_prob"] = prob
        return tab

    def plot(self, **kwargs):
        """See :func:`plot_marginal_effects`."""
        return plot_marginal_effects(self, **kwargs)


def _summary(draws: np.ndarray, xs: np.ndarray, variable: str, effect: str, prob: float,
             mcse: np.ndarray | None = None) -> pd.DataFrame:
    bounds = np.array([hdi(draws[:, k], prob) for k in range(draws.shape[1])])
    tab = pd.DataFrame({variable: xs, "effect": effect, "mean": draws.mean(axis=0),
                        "sd": draws.std(axis=0, ddof=1), "hdi_lower": bounds[:, 0],
                        "hdi_upper": bounds[:, 1],
                        "mcse": np.zeros(len(xs)) if mcse is None else mcse})
    tab.attrs["ci_prob"] = prob
    return tab


def _reference_row(design, variable: str, at: dict) -> dict:
    """Reference values of every used column: numeric mean, other columns' most frequent value."""
    row = {}
    for c in design.columns:
        if c.name in at:
            row[c.name] = at[c.name]
            continue
        s = pd.Series(c.values, dtype=c.dtype)
        if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
            row[c.name] = float(s.mean())
        else:
            row[c.name] = s.mode(dropna=True).iloc[0]
    return row


def _check_variable(design, variable: str) -> np.ndarray:
    cols = {c.name: c for c in design.columns}
    group_cols = {c for f in design.factors for c in f.columns}
    if variable not in cols or variable in group_cols:
        usable = [c for c in cols if c not in group_cols]
        raise DataError(f"marginal_effects: {variable!r} is not a predictor column of the model; "
                        f"choose one of {usable}.")
    s = pd.Series(cols[variable].values, dtype=cols[variable].dtype)
    if not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
        raise DataError(f"marginal_effects needs a numeric predictor; {variable!r} has dtype {s.dtype}. "
                        "For a categorical predictor compare its levels with fit.predict(new_data, "
                        "include_random=False).")
    return s.to_numpy(dtype=float)


def _frame(row: dict, variable: str, values: np.ndarray, design) -> pd.DataFrame:
    df = pd.DataFrame({k: [v] * len(values) for k, v in row.items()})
    df[variable] = values
    for c in design.columns:                    # keep the fitted categories (formulaic's levels)
        if isinstance(c.dtype, pd.CategoricalDtype):
            df[c.name] = pd.Categorical(df[c.name], categories=c.dtype.categories)
    return df


def marginal_effects(fit, variable: str, *, values=None, n_points: int = 25, at: dict | None = None,
                     factors=None, n_mc: int = 200, seed: int | None = None, prob: float = 0.95,
                     n_groups: int = 30) -> MarginalEffects:
    """Population-averaged (group effects integrated out) and conditional (group effects at 0)
    predictions and slopes over a grid of the numeric predictor ``variable``.

    Parameters
    ----------
    fit : Fit
    variable : str
        A numeric predictor column of the model.
    values : array-like, optional
        The grid; default ``n_points`` evenly spaced values over the observed range.
    at : dict, optional
        Values of the other columns (default: numeric columns at their mean, others at their most
        frequent value; an offset column enters at its value, e.g. ``at={"exposure": 1}`` for a
        rate per unit exposure).
    factors : list of str, optional
        Grouping factors to integrate out (default all; the others are held at 0).
    n_mc : int
        Group-effect draws per posterior draw (even: antithetic pairs). The Monte Carlo SE of each
        population-averaged mean is in the ``mcse`` column.
    seed : int, optional
        Seed of the group-effect draws; default the fit's seed.
    prob : float
        HDI probability.
    n_groups : int
        Fitted groups whose curves are kept in ``group_curves`` (for the plot).

    Returns
    -------
    MarginalEffects

    Examples
    --------
    >>> me = fit.marginal_effects("x")                                   # doctest: +SKIP
    >>> me.link_slopes.groupby("effect")["mean"].mean()                  # doctest: +SKIP
    """
    design = fit.design
    family = get_family(fit.spec.family, fit.spec.link)
    x_obs = _check_variable(design, variable)
    if n_mc < 2 or n_mc % 2:
        raise SpecError(f"n_mc must be an even number >= 2 (antithetic pairs); got {n_mc}")
    at = dict(at or {})
    unknown = [k for k in at if k not in design.column_names or k == design.response]
    if unknown:
        raise DataError(f"marginal_effects: at= names column(s) {unknown} that the model does not use "
                        f"as predictors; it uses {[c.name for c in design.columns]}.")
    names = [f.name for f in design.factors]
    factors = names if factors is None else list(factors)
    bad = [g for g in factors if g not in names]
    if bad:
        raise SpecError(f"marginal_effects: no grouping factor(s) {bad}; the model has {names}.")
    xs = (np.linspace(x_obs.min(), x_obs.max(), n_points) if values is None
          else np.asarray(values, dtype=float).ravel())
    if xs.size == 0 or not np.all(np.isfinite(xs)):
        raise DataError(f"marginal_effects: the grid of {variable!r} must be finite and non-empty.")
    h = 1e-4 * max(float(np.std(x_obs)), 1e-8)
    row = _reference_row(design, variable, at)
    G = len(xs)
    frames = [_frame(row, variable, v, design) for v in (xs, xs - h, xs + h)]
    grid = frames[0]
    stacked = pd.concat(frames, ignore_index=True)
    eta0 = fit.predict(stacked, kind="link", include_random=False, summary=False).to_numpy()
    eta0 = eta0.reshape(-1, 3 * G)                                       # (S, 3G), offset included
    _, parts = predictor_arrays(design, stacked)
    post = fit.posterior
    rng = np.random.default_rng(fit.info.get("seed", 0) if seed is None else seed)
    S, half = eta0.shape[0], n_mc // 2
    Zs, Ls = [], []
    for f, Z, _codes, _labels in parts:
        if f.name in factors:
            Zs.append(Z)                                                  # (3G, q)
            Ls.append(np.linalg.cholesky(cov_draws(post, f) + 1e-300 * np.eye(f.q)))   # (S, q, q)
    inv = family.inverse_link
    pa = np.empty((S, 3 * G))
    var_pair = np.empty((S, 3 * G))
    step = max(1, _CHUNK // (n_mc * 3 * G))
    for s0 in range(0, S, step):
        sl = slice(s0, min(S, s0 + step))
        ns = sl.stop - sl.start
        rand = np.zeros((ns, half, 3 * G))
        for Z, L in zip(Zs, Ls):
            z = rng.standard_normal((ns, half, L.shape[-1]))
            u = np.einsum("sij,smj->smi", L[sl], z)                        # (ns, half, q)
            rand += np.einsum("gq,smq->smg", Z, u)
        e = eta0[sl, None, :]
        pair = 0.5 * (inv(e + rand) + inv(e - rand))                     # antithetic pair means
        pa[sl] = pair.mean(axis=1)
        var_pair[sl] = pair.var(axis=1, ddof=1) if half > 1 else 0.0
    cond = inv(eta0)
    mcse = np.sqrt(var_pair[:, :G].mean(axis=0) / half / S)              # SE of the posterior mean

    def slope(a):
        return (a[:, 2 * G:] - a[:, G:2 * G]) / (2 * h)

    with np.errstate(divide="ignore", invalid="ignore"):
        link_pa = family.link_fn(pa)
    draws = {"conditional": cond[:, :G], "population_averaged": pa[:, :G],
             "conditional_slope": slope(cond), "population_averaged_slope": slope(pa),
             "conditional_link_slope": slope(eta0), "population_averaged_link_slope": slope(link_pa)}
    tabs = {}
    for what, key in (("predictions", ""), ("slopes", "_slope"), ("link_slopes", "_link_slope")):
        tabs[what] = pd.concat([_summary(draws[e + key], xs, variable, e, prob,
                                         mcse if (e == "population_averaged" and not key) else None)
                                for e in EFFECTS], ignore_index=True)
        tabs[what].attrs["ci_prob"] = prob
    curves = _group_curves(fit, family, parts, eta0[:, :G], factors, xs, G, n_groups)
    info = {"seed": fit.info.get("seed", 0) if seed is None else seed, "n_mc": n_mc,
            "factors": factors, "step": h, "prob": prob, "family": family.name, "link": family.link,
            "at": {k: v for k, v in row.items() if k != variable}}
    return MarginalEffects(variable, grid, tabs["predictions"], tabs["slopes"], tabs["link_slopes"],
                           draws, curves, info)


def _group_curves(fit, family, parts, eta0, factors, xs, G, n_groups) -> pd.DataFrame:
    """Posterior mean curves of the first ``n_groups`` fitted levels of the first integrated factor."""
    part = next((p for p in parts if p[0].name in factors), None)
    if part is None or n_groups <= 0:
        return pd.DataFrame(columns=xs)
    f, Z, _, _ = part
    r = fit.draws(r_var(f.name))[:, :n_groups, :]                          # (S, J', q)
    eta = eta0[:, None, :] + np.einsum("gq,sjq->sjg", Z[:G], r)
    return pd.DataFrame(family.inverse_link(eta).mean(axis=0), index=pd.Index(list(f.levels)[:n_groups],
                        name=f.name), columns=pd.Index(xs, name="x"))


def plot_marginal_effects(result: MarginalEffects, *, ax=None, scale: str = "response"):
    """The population-averaged curve (thick, with its HDI band) over the subject-specific curves of
    fitted groups (thin) and the conditional curve of a typical group (group effects 0, dashed).

    ``scale="link"`` draws the same curves on the link scale (``g(mu)``), where the conditional
    curve is the linear predictor and the population-averaged one is flatter. Returns the Figure.
    """
    from matplotlib.figure import Figure
    if scale not in ("response", "link"):
        raise SpecError(f"scale must be 'response' or 'link'; got {scale!r}")
    family = get_family(result.info["family"], result.info["link"])

    def tr(v):
        if scale == "response":
            return np.asarray(v, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            return family.link_fn(np.asarray(v, dtype=float))
    if ax is None:
        fig = Figure(figsize=(6.4, 4.4), layout="constrained")
        ax = fig.subplots()
    else:
        fig = ax.figure
    x = result.grid[result.variable].to_numpy()
    curves = result.group_curves
    for k, (_, c) in enumerate(curves.iterrows()):
        ax.plot(x, tr(c.to_numpy()), color="#999999", lw=0.7, alpha=0.6,
                label=f"each {curves.index.name} (fitted)" if k == 0 else None)
    pred = result.predictions
    for eff, color, ls, lw, label in (("conditional", "#1b9e77", "--", 1.8, "conditional (group effects = 0)"),
                                      ("population_averaged", "#d95f02", "-", 2.6, "population-averaged")):
        p = pred[pred["effect"] == eff]
        ax.fill_between(x, tr(p["hdi_lower"]), tr(p["hdi_upper"]), color=color, alpha=0.15, lw=0)
        ax.plot(x, tr(p["mean"]), color=color, ls=ls, lw=lw, label=label)
    ax.set_xlabel(result.variable)
    ax.set_ylabel(("mean" if scale == "response" else f"{family.link}(mean)")
                  + f" ({family.name}, {family.link} link)")
    ax.set_title("Population-averaged vs conditional effect", fontsize=10)
    ax.legend(fontsize=7)
    return fig
