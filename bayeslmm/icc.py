"""Intraclass correlation (ICC) posteriors.

Pure numpy/xarray: works from the posterior variables ``sd_{g}``, ``cor_{g}`` and ``sigma`` of a
:class:`~bayeslmm.results.Fit`, whichever sampling path produced them.

Definitions (DESIGN.md). For grouping factor ``g`` with random-effect covariance
``S_g = diag(sd_g) C_g diag(sd_g)`` and a random-effect design row ``z`` (1 for the intercept, the
covariate values for slopes) the variance contributed by ``g`` at ``z`` is ``v_g(z) = z' S_g z``
and

    ICC_g(z) = v_g(z) / (sum_k v_k(z) + sigma^2).

``sigma^2`` is the family's latent-scale residual variance
(:meth:`bayeslmm.families.Family.latent_residual_variance`). With random intercepts only,
``v_g = sd_g^2`` and the ICC does not depend on ``z``. For a factor
nested in another (``a:b`` in ``a``), the *cumulative* ICC adds the variances of the factor and all
its ancestors: the correlation of two observations in the same ``a`` and the same ``a:b``.
Every quantity is computed draw by draw, so the result is itself a posterior.

**Meta-analysis** (known standard errors, ``y | se(s) ~ ...``): the residual variance is the
*typical within-study variance* of Higgins & Thompson (2002),
``s_typ^2 = (k - 1) sum w_i / ((sum w_i)^2 - sum w_i^2)``, ``w_i = 1 / s_i^2`` over the k rows
(:func:`bayeslmm.families.typical_variance`), plus sigma^2 when ``se(s, sigma = TRUE)``. For one
grouping factor with a random intercept the ICC is then Higgins & Thompson's
``I^2 = tau^2 / (tau^2 + s_typ^2)``: the share of the variance of a typical study's estimate that
lies between studies (kind ``"I2"`` in the table, with the definition in ``table.attrs``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import xarray as xr

from .errors import BayesLMMError
from .families import family_of
from .posterior import cov_draws, hdi, sd_var, stack, term_dim

__all__ = ["ICCResult", "icc", "icc_draws", "factor_variance", "default_points", "residual_variance_draws",
           "mean_count_draws", "I2_DEFINITION"]

#: how the ICC reads for known standard errors (stated in the table's attrs and its printout)
I2_DEFINITION = ("I2 = tau^2 / (tau^2 + s_typ^2) (+ sigma^2 in the denominator with se(s, sigma = TRUE)), "
                 "s_typ^2 = (k - 1) sum w_i / ((sum w_i)^2 - sum w_i^2), w_i = 1/s_i^2: the typical "
                 "within-study variance of Higgins & Thompson (2002), Stat. Med. 21:1539-1558.")


def factor_variance(post: xr.Dataset, f, z: np.ndarray) -> np.ndarray:
    """Variance ``z' S_g z`` contributed by factor ``f`` at design row ``z`` (length q), per draw."""
    S = cov_draws(post, f)
    return np.einsum("i,sij,j->s", z, S, z)


def default_points(design) -> dict[str, dict[str, float]]:
    """Covariate points at which the ICC is reported: ``x = 0`` and ``mean x``.

    Keys are labels; values map random-effect term names to values (``Intercept`` is always 1).
    Only one point (``"all"``) when no factor has a random slope: the ICC does not depend on x.
    """
    slopes = _slope_means(design)
    if not slopes:
        return {"all": {}}
    zero = {t: 0.0 for t in slopes}
    mean = dict(slopes)
    return {_label(zero): zero, _label(mean, "mean "): mean}


def _slope_means(design) -> dict[str, float]:
    out: dict[str, float] = {}
    for f in design.factors:
        for k, t in enumerate(f.terms):
            if t != "Intercept" and t not in out:
                out[t] = float(f.z_mean[k]) if hasattr(f, "z_mean") else float(np.mean(f.Z[:, k]))   # bigfit: streamed
    return out


def _label(point: dict[str, float], prefix: str = "") -> str:
    if not point:
        return "all"
    if prefix:
        return ", ".join(f"{t} = mean ({v:.4g})" for t, v in point.items())
    return ", ".join(f"{t} = {v:.4g}" for t, v in point.items())


def _z_of(f, point: dict[str, float]) -> np.ndarray:
    return np.array([1.0 if t == "Intercept" else float(point.get(t, 0.0)) for t in f.terms])


def _ancestors(f, factors) -> list:
    chain, p = [], f.parent(factors)
    while p is not None:
        chain.append(p)
        p = p.parent(factors)
    return chain


def mean_count_draws(fit, post: xr.Dataset | None = None) -> xr.DataArray:
    """``lambda`` per draw (dims chain, draw): the mean count of an average observation on the
    response scale, ``exp(b_0c + mean(offset) + sum_g sd_g(Intercept)^2 / 2)`` with
    ``b_0c = mean(X) @ b`` the intercept at centred predictors (Nakagawa et al. 2017)."""
    post = fit.posterior if post is None else post
    design = fit.design
    xbar = xr.DataArray(design.X.mean(axis=0), dims="term", coords={"term": list(design.fixed_terms)})
    eta = (post["b"] * xbar).sum("term")
    if design.offset is not None:
        eta = eta + float(np.mean(design.offset))
    for f in design.factors:
        if "Intercept" in f.terms:
            eta = eta + 0.5 * post[sd_var(f.name)].sel({term_dim(f.name): "Intercept"}, drop=True) ** 2
    return np.exp(eta)


def residual_variance_draws(fit, post: xr.Dataset | None = None) -> xr.DataArray:
    """The family's latent-scale residual variance per draw, dims (chain, draw) (gaussian: sigma^2;
    logit: pi^2/3; probit: 1; log link: the log-normal approximation, see :mod:`bayeslmm.families`)."""
    post = fit.posterior if post is None else post
    family = family_of(fit.spec)
    mean = mean_count_draws(fit, post) if family.link == "log" else None
    aux = {a: post[a] for a in family.aux_names}
    if family.known_se:      # typical within-study variance (Higgins & Thompson 2002) + sigma^2
        v = family.latent_residual_variance(aux, se=fit.design.se)
    else:
        v = family.latent_residual_variance(aux, mean)
    if not isinstance(v, xr.DataArray):     # a constant (logit, probit, known SE): one value per draw
        v = xr.full_like(post["b"].isel(term=0, drop=True), float(v))
    return v


def _residual_variance(fit, post: xr.Dataset) -> np.ndarray:
    """The family's latent-scale residual variance per draw, stacked (gaussian: sigma^2)."""
    return stack(residual_variance_draws(fit, post))


def icc_draws(fit, at: dict[str, float] | None = None) -> dict[str, np.ndarray]:
    """ICC draws per grouping factor at one covariate point.

    Parameters
    ----------
    fit : Fit
    at : dict, optional
        Random-slope term -> value (e.g. ``{"Days": 4.5}``); terms not given are 0. Ignored for
        random intercepts.

    Returns
    -------
    dict
        ``{factor: draws}`` and, for nested factors, ``{"factor (cumulative)": draws}``; each
        value has shape (chains*draws,) in the order of :meth:`Fit.draws`.

    Examples
    --------
    >>> import bayeslmm as blmm
    >>> fit = blmm.Model("Yield ~ 1 + (1 | Batch)", blmm.load_dataset("Dyestuff")).fit(
    ...     chains=2, draws=300, seed=1, progressbar=False)               # doctest: +SKIP
    >>> icc_draws(fit)["Batch"].mean()                                    # doctest: +SKIP
    0.4...
    """
    design = fit.design
    if not design.factors:
        raise BayesLMMError("the model has no grouping factor, so it has no ICC; add a random term "
                            "such as '(1 | group)' to the formula.")
    at = dict(at or {})
    known = {t for f in design.factors for t in f.terms}
    unknown = [t for t in at if t not in known]
    if unknown:
        raise BayesLMMError(f"icc(at=...) names {unknown}, which are not random-effect terms; "
                            f"the random-effect terms are {sorted(known)}.")
    post = fit.posterior
    var = {f.name: factor_variance(post, f, _z_of(f, at)) for f in design.factors}
    total = sum(var.values()) + _residual_variance(fit, post)
    out = {g: v / total for g, v in var.items()}
    for f in design.factors:
        anc = _ancestors(f, design.factors)
        if anc:
            out[f"{f.name} (cumulative)"] = (var[f.name] + sum(var[a.name] for a in anc)) / total
    return out


@dataclass
class ICCResult:
    """ICC posterior of a fit.

    Attributes
    ----------
    table : DataFrame
        One row per (factor, covariate point): ``group``, ``kind`` (``icc`` or ``cumulative``),
        ``at`` (only with random slopes: the ICC then depends on x), and ``mean``, ``median``, ``sd``,
        ``hdi_lower``, ``hdi_upper``, and ``scale``: which scale the ICC is on (the data scale for
        identity links; the latent scale of Nakagawa et al. 2017 otherwise, with its residual variance).
    draws : dict
        ``(label, at) -> ndarray`` of draws (chains*draws,); ``at`` is ``"all"`` without random
        slopes.
    curves : dict
        ``term -> DataFrame`` of the ICC over a grid of that covariate (columns ``x``, ``group``,
        ``median``, ``hdi_lower``, ``hdi_upper``); only with random slopes.
    prob : float
    """

    table: pd.DataFrame
    draws: dict = field(repr=False)
    curves: dict = field(repr=False)
    prob: float = 0.95

    def __post_init__(self):
        from .tables import as_table         # shown rounded in notebooks, whole when printed
        self.table = as_table(self.table)

    def __repr__(self) -> str:
        from .tables import to_text
        scale = f" on the {self.table['scale'].iloc[0]}" if len(self.table) and "scale" in self.table else ""
        note = f"\n{self.table.attrs['definition']}" if "definition" in self.table.attrs else ""
        return (f"ICC posterior ({self.prob:.0%} HDI){scale}\n"
                f"{to_text(self.table.drop(columns='scale', errors='ignore'))}{note}")

    def _repr_html_(self) -> str:
        from .tables import to_html
        return to_html(self.table)


def _row(x: np.ndarray, prob: float) -> dict:
    lo, hi = hdi(x, prob)
    return {"mean": float(np.mean(x)), "median": float(np.median(x)), "sd": float(np.std(x, ddof=1)),
            "hdi_lower": lo, "hdi_upper": hi}


def icc(fit, *, at: dict | list | None = None, prob: float = 0.95, curve_points: int = 50) -> ICCResult:
    """The ICC posterior per grouping factor.

    Parameters
    ----------
    fit : Fit
    at : dict or list of dict, optional
        Covariate points for models with random slopes, as ``{term: value}``. Default: ``x = 0``
        and ``x = mean(x)`` for every random-slope term.
    prob : float
        HDI probability.
    curve_points : int
        Grid size of the ICC curve over each random-slope covariate (observed range; the other
        slope terms held at 0).

    Returns
    -------
    ICCResult
        ``.table`` (one row per factor and point, plus cumulative ICCs of nested factors),
        ``.draws`` and ``.curves``.

    Examples
    --------
    >>> import bayeslmm as blmm
    >>> fit = blmm.Model("Yield ~ 1 + (1 | Batch)", blmm.load_dataset("Dyestuff")).fit(
    ...     chains=2, draws=300, seed=1, progressbar=False)               # doctest: +SKIP
    >>> fit.icc().table[["group", "median", "hdi_lower", "hdi_upper"]]    # doctest: +SKIP
    """
    if not 0 < prob < 1:
        raise BayesLMMError(f"the 'prob' parameter of icc must be in (0, 1). Got {prob!r} instead.")
    design = fit.design
    if at is None:
        points = default_points(design)
    else:
        pts = [at] if isinstance(at, dict) else list(at)
        points = {_label(p): p for p in pts}
    rows, draws = [], {}
    known_se = family_of(fit.spec).known_se
    kin = {k.factor for k in (getattr(design, "kinship", None) or ())}    # known covariance K: h^2
    for label, point in points.items():
        for g, x in icc_draws(fit, point).items():
            kind = ("cumulative" if g.endswith("(cumulative)") else "I2" if known_se
                    else "h2" if g in kin else "icc")
            group = g.removesuffix(" (cumulative)")
            draws[(g, label)] = x
            rows.append({"group": group, "kind": kind, "at": label, **_row(x, prob)})
    table = pd.DataFrame(rows)
    table["scale"] = family_of(fit.spec).latent_scale
    if list(points) == ["all"]:       # no random slopes: the ICC does not depend on x; no `at` column
        table = table.drop(columns="at")
    table.attrs["ci_prob"] = prob
    if known_se:
        table.attrs["definition"] = I2_DEFINITION
    elif kin:
        from .covariance import H2_DEFINITION
        table.attrs["definition"] = H2_DEFINITION
    curves = {}
    ranges = _slope_ranges(design)
    for term, (lo, hi) in ranges.items():
        grid = np.linspace(lo, hi, curve_points)
        recs = []
        for xv in grid:
            for g, x in icc_draws(fit, {term: float(xv)}).items():
                lo_, hi_ = hdi(x, prob)
                recs.append({"x": float(xv), "group": g, "median": float(np.median(x)),
                             "mean": float(np.mean(x)), "hdi_lower": lo_, "hdi_upper": hi_})
        curves[term] = pd.DataFrame(recs)
    return ICCResult(table=table, draws=draws, curves=curves, prob=prob)


def _slope_ranges(design) -> dict[str, tuple[float, float]]:
    out: dict[str, tuple[float, float]] = {}
    for f in design.factors:
        for k, t in enumerate(f.terms):
            if t != "Intercept" and t not in out:
                out[t] = ((float(f.z_min[k]), float(f.z_max[k])) if hasattr(f, "z_min")   # bigfit: streamed
                          else (float(np.min(f.Z[:, k])), float(np.max(f.Z[:, k]))))
    return out
