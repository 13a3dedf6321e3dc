"""Plots of a fit. They draw results computed elsewhere (icc, shrinkage, diagnostics, the posterior);
they compute nothing themselves.

Every function returns a :class:`matplotlib.figure.Figure` (created without pyplot, so nothing is
left open in a global figure list); in a notebook it displays as the cell's result, and
``fig.savefig(path)`` writes it. Trace, rank and posterior predictive plots are ArviZ's.
Precomputed results can be passed (``result=``) to avoid recomputing them.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .errors import BayesLMMError
from .families import family_of
from .posterior import component_draws, labelled_draws, sd_var

__all__ = ["plot_caterpillar", "plot_shrinkage", "plot_shrinkage_vs_size", "plot_variance_components",
           "plot_icc", "plot_trace", "plot_ppc", "plot_prior_posterior", "plot_spaghetti"]

_C_NO, _C_PART, _C_POOL = "#d95f02", "#1b9e77", "#555555"


def _shrink(fit, result, prob=0.95):
    return result if result is not None else fit.shrinkage(prob=prob)


def _constant(x) -> float | None:
    """The common value of ``x`` when every finite entry is the same (to rounding), else None."""
    v = np.asarray(x, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return None
    return float(v[0]) if np.allclose(v, v[0], rtol=1e-9, atol=1e-12 * max(1.0, abs(v[0]))) else None


def _pick(table, fit, factor, term):
    names = [f.name for f in fit.design.factors]
    if not names:
        raise BayesLMMError("the model has no grouping factor; there are no group effects to plot.")
    factor = factor or names[0]
    if factor not in names:
        raise BayesLMMError(f"no grouping factor {factor!r}; the factors are {names}.")
    f = fit.design.factor(factor)
    term = term or f.terms[0]
    if term not in f.terms:
        raise BayesLMMError(f"factor {factor!r} has no random term {term!r}; its terms are {list(f.terms)}.")
    return factor, term, table[(table["group"] == factor) & (table["term"] == term)]


def plot_caterpillar(fit, *, factor: str | None = None, result=None, prob: float = 0.95,
                     max_labels: int = 40) -> Figure:
    """Caterpillar plot: every group's effect ``r`` (posterior mean and HDI), sorted.

    One panel per random-effect term of ``factor`` (default: every factor and term).

    Examples
    --------
    >>> fig = fit.plot_caterpillar()                                   # doctest: +SKIP
    >>> fig.savefig("caterpillar.png")                                 # doctest: +SKIP
    """
    res = _shrink(fit, result, prob)
    t = res.table
    keys = [(f.name, term) for f in fit.design.factors for term in f.terms
            if factor is None or f.name == factor]
    if not keys:
        _pick(t, fit, factor, None)
    n_max = max(int(((t.group == g) & (t.term == k)).sum()) for g, k in keys)
    fig = Figure(figsize=(4.2 * len(keys), max(3.0, min(12.0, 0.16 * n_max + 1.2))), layout="constrained")
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for ax, (g, k) in zip(axes, keys):
        d = t[(t.group == g) & (t.term == k)].sort_values("effect_mean")
        y = np.arange(len(d))
        ax.hlines(y, d.effect_lower, d.effect_upper, color=_C_PART, lw=1.2, alpha=0.8)
        ax.plot(d.effect_mean, y, "o", color=_C_PART, ms=3.5)
        ax.axvline(0, color=_C_POOL, ls="--", lw=1)
        if len(d) <= max_labels:
            ax.set_yticks(y, d.level.astype(str), fontsize=7)
        else:
            ax.set_yticks([])
            ax.set_ylabel(f"{len(d)} groups (sorted)")
        ax.set_xlabel(f"r_{g}[{k}]  (mean, {res.prob:.0%} HDI)")
        ax.set_title(f"{g}: {k}", fontsize=10)
    fig.suptitle("Group effects (deviations from the fixed part)", fontsize=11)
    return fig


def plot_shrinkage(fit, *, factor: str | None = None, term: str | None = None, kind: str = "auto",
                   result=None, prob: float = 0.95) -> Figure:
    """The classic shrinkage plot: arrows from each group's no-pooling estimate to its
    partial-pooling posterior mean, with the complete-pooling estimate marked.

    Parameters
    ----------
    kind : {"auto", "1d", "2d"}
        ``"2d"`` plots (Intercept, slope) pairs for a factor with a random intercept and slope;
        ``"auto"`` picks 2-D when it applies.

    Examples
    --------
    >>> fit.plot_shrinkage()                                           # doctest: +SKIP
    """
    if kind not in ("auto", "1d", "2d"):
        raise BayesLMMError(f"the 'kind' parameter of plot_shrinkage must be one of ('auto', '1d', '2d'). "
                            f"Got {kind!r} instead.")
    res = _shrink(fit, result, prob)
    factor, term0, _ = _pick(res.table, fit, factor, term)
    f = fit.design.factor(factor)
    two_d = "Intercept" in f.terms and f.q >= 2 and term is None
    if kind == "2d" and not ("Intercept" in f.terms and f.q >= 2):
        raise BayesLMMError(f"a 2-D shrinkage plot needs a random intercept and slope for {factor!r}; "
                            f"its terms are {list(f.terms)}. Use kind='1d'.")
    if kind == "2d" or (kind == "auto" and two_d):
        slope = term if term not in (None, "Intercept") else next(t for t in f.terms if t != "Intercept")
        return _shrinkage_2d(res, factor, slope)
    return _shrinkage_1d(res, fit, factor, term0)


def _shrinkage_1d(res, fit, factor, term):
    _, _, d = _pick(res.table, fit, factor, term)
    fig = Figure(figsize=(7.5, 3.6), layout="constrained")
    ax = fig.subplots()
    ok = d[np.isfinite(d.no_pooling)]
    sizes = 12 + 60 * ok.n / max(ok.n.max(), 1)
    for r in ok.itertuples():
        ax.annotate("", xy=(r.partial_mean, 0), xytext=(r.no_pooling, 1),
                    arrowprops=dict(arrowstyle="->", color="#7570b3", alpha=0.55, lw=0.9))
    ax.scatter(ok.no_pooling, np.ones(len(ok)), s=sizes, color=_C_NO, zorder=3, label="no pooling")
    ax.scatter(ok.partial_mean, np.zeros(len(ok)), s=sizes, color=_C_PART, zorder=3,
               label="partial pooling (posterior mean)")
    cp = _constant(ok.complete_pooling)
    if cp is not None:
        ax.axvline(cp, color=_C_POOL, ls="--", lw=1.2, label=f"complete pooling ({cp:.4g})")
        ax.set_yticks([0, 1], ["partial\npooling", "no\npooling"])
        ax.set_ylim(-0.35, 1.35)
    else:   # complete pooling differs by group (covariates or other factors): one mark per group
        ax.scatter(ok.complete_pooling, np.full(len(ok), -0.6), marker="|", s=120, color=_C_POOL,
                   zorder=3, label="complete pooling (each group's own)")
        ax.set_yticks([-0.6, 0, 1], ["complete\npooling", "partial\npooling", "no\npooling"])
        ax.set_ylim(-0.9, 1.35)
    ax.set_xlabel(f"{term} for each level of {factor} (marker size ~ group size)")
    n_nan = int((~np.isfinite(d.no_pooling)).sum())
    ax.set_title(f"Shrinkage of {factor} ({term}): no pooling -> partial pooling"
                 + (f"  [{n_nan} groups unidentified alone]" if n_nan else ""), fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def _shrinkage_2d(res, factor, slope):
    t = res.table
    a = t[(t.group == factor) & (t.term == "Intercept")].set_index("level")
    b = t[(t.group == factor) & (t.term == slope)].set_index("level").loc[a.index]
    fig = Figure(figsize=(6.4, 5.4), layout="constrained")
    ax = fig.subplots()
    ok = np.isfinite(a.no_pooling.to_numpy()) & np.isfinite(b.no_pooling.to_numpy())
    for x0, y0, x1, y1 in zip(a.no_pooling[ok], b.no_pooling[ok], a.partial_mean[ok], b.partial_mean[ok]):
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops=dict(arrowstyle="->", color="#7570b3", alpha=0.6, lw=0.9))
    ax.scatter(a.no_pooling[ok], b.no_pooling[ok], color=_C_NO, s=22, zorder=3, label="no pooling")
    ax.scatter(a.partial_mean, b.partial_mean, color=_C_PART, s=22, zorder=3,
               label="partial pooling (posterior mean)")
    ca, cb = _constant(a.complete_pooling[ok]), _constant(b.complete_pooling[ok])
    if ca is not None and cb is not None:
        ax.scatter([ca], [cb], marker="*", s=220, color=_C_POOL, zorder=4,
                   label="complete pooling (fixed effects)")
    else:
        ax.scatter(a.complete_pooling[ok], b.complete_pooling[ok], marker="+", s=40, color=_C_POOL,
                   zorder=4, label="complete pooling (each group's own)")
    ax.set_xlabel("Intercept")
    ax.set_ylabel(slope)
    ax.set_title(f"Shrinkage of {factor} in 2-D (Intercept, {slope})", fontsize=10)
    ax.legend(fontsize=8)
    return fig


def plot_shrinkage_vs_size(fit, *, factor: str | None = None, term: str | None = None, result=None,
                           prob: float = 0.95) -> Figure:
    """Estimates and shrinkage factors against group size: small groups shrink more.

    Left: no-pooling and partial-pooling estimates (with HDIs) by group size, and complete
    pooling. Right: the shrinkage (posterior mean and HDI; 0 = no pooling, 1 = complete pooling)
    and, where it is defined and in [0, 1], the empirical ratio. Meaningful only when group sizes
    differ: in a balanced design every group has the same shrinkage.

    Examples
    --------
    >>> fit.plot_shrinkage_vs_size()                                   # doctest: +SKIP
    """
    res = _shrink(fit, result, prob)
    factor, term, d = _pick(res.table, fit, factor, term)
    jit = np.random.default_rng(0).uniform(-0.12, 0.12, len(d))   # deterministic jitter, display only
    logx = d.n.max() / max(d.n.min(), 1) > 10
    x = d.n * np.exp(jit) if logx else d.n + jit
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    ax1.vlines(x, d.partial_lower, d.partial_upper, color=_C_PART, alpha=0.35, lw=1)
    ax1.scatter(x, d.no_pooling, facecolors="none", edgecolors=_C_NO, s=20, label="no pooling")
    ax1.scatter(x, d.partial_mean, color=_C_PART, s=14, label=f"partial pooling ({res.prob:.0%} HDI)")
    cp = _constant(d.complete_pooling)
    if cp is not None:
        ax1.axhline(cp, color=_C_POOL, ls="--", lw=1.2, label="complete pooling")
    else:
        ax1.scatter(x, d.complete_pooling, marker="_", color=_C_POOL, s=30, label="complete pooling")
    ax1.set_xlabel(f"group size (rows per level of {factor})")
    ax1.set_ylabel(term)
    ax1.set_title("Estimates by group size", fontsize=10)
    ax1.legend(fontsize=7)
    if np.isfinite(d.shrinkage).any():
        ax2.vlines(x, d.shrinkage_lower, d.shrinkage_upper, color="#7570b3", alpha=0.35)
        ax2.scatter(x, d.shrinkage, color="#7570b3", s=14,
                    label="shrinkage: sigma^2/(sigma^2 + n sd^2)" if fit.design.factor(factor).q == 1
                    else "shrinkage (posterior mean, HDI)")
    emp = d.shrinkage_empirical
    inside = np.isfinite(emp) & (emp >= -0.05) & (emp <= 1.05)
    ax2.scatter(x[inside], emp[inside], marker="x", color=_C_NO, s=14, alpha=0.6,
                label="empirical ratio (no pooling - partial)/(no pooling - complete)")
    ax2.set_ylim(-0.05, 1.05)
    ax2.axhline(0, color="#999999", lw=0.6)
    ax2.axhline(1, color="#999999", lw=0.6)
    ax2.set_xlabel(f"group size (rows per level of {factor})")
    ax2.set_ylabel("shrinkage factor (0 = none, 1 = complete)")
    ax2.set_title("Shrinkage factor by group size", fontsize=10)
    ax2.legend(fontsize=7)
    for ax in (ax1, ax2):
        if logx:
            ax.set_xscale("log")
    fig.suptitle(f"{factor}: {term}", fontsize=11)
    return fig


def _hist_with_hdi(ax, x, lo, hi, med, color, title):
    ax.hist(x, bins=40, density=True, color=color, alpha=0.55)
    ax.axvline(med, color="k", lw=1)
    ax.hlines(0, lo, hi, color="k", lw=4)
    ax.set_title(title, fontsize=9)
    ax.set_yticks([])


def plot_variance_components(fit, *, prob: float = 0.95, table=None) -> Figure:
    """Posteriors of each group-level SD, correlation and sigma (histogram, median, HDI bar).

    Examples
    --------
    >>> fit.plot_variance_components()                                 # doctest: +SKIP
    """
    vc = table if table is not None else fit.variance_components(prob=prob)
    post = fit.posterior
    items = list(component_draws(post, fit.design, family_of(fit.spec).aux_names).items())
    ncol = min(3, len(items))
    nrow = int(np.ceil(len(items) / ncol))
    fig = Figure(figsize=(3.6 * ncol, 2.6 * nrow), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrow, ncol)).ravel()
    for ax, (label, da) in zip(axes, items):
        r = vc.loc[label]
        _hist_with_hdi(ax, da.to_numpy().ravel(), r.hdi_lower, r.hdi_upper, r["median"] if "median" in r
                       else r["mean"], "#1f78b4" if label != "sigma" else "#a6761d", label)
    for ax in axes[len(items):]:
        ax.set_visible(False)
    fig.suptitle(f"Variance components (posterior, {prob:.0%} HDI as bar)", fontsize=11)
    return fig


def plot_icc(fit, *, result=None, prob: float = 0.95) -> Figure:
    """ICC posteriors per grouping factor (and cumulative ICCs of nested factors); with random
    slopes, also the ICC as a curve over each slope covariate (median and HDI band).

    Examples
    --------
    >>> fit.plot_icc()                                                 # doctest: +SKIP
    """
    res = result if result is not None else fit.icc(prob=prob)
    tab = res.table if "at" in res.table else res.table.assign(at="all")
    points = list(dict.fromkeys(tab["at"]))
    n_curve = len(res.curves)
    fig = Figure(figsize=(4.6 * (len(points) + n_curve), 3.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(points) + n_curve))
    colors = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02"]
    for ax, at in zip(axes, points):
        rows = tab[tab["at"] == at]
        for c, r in zip(colors, rows.itertuples()):
            label = r.group + (" (cumulative)" if r.kind == "cumulative" else "")
            x = res.draws[(label, at)]
            ax.hist(x, bins=40, range=(0, 1), density=True, alpha=0.45, color=c,
                    label=f"{label}: {r.median:.2f} [{r.hdi_lower:.2f}, {r.hdi_upper:.2f}]")
        ax.set_xlim(0, 1)
        ax.set_yticks([])
        ax.set_xlabel("ICC")
        ax.set_title("ICC posterior" + ("" if at == "all" else f" at {at}"), fontsize=9)
        ax.legend(fontsize=7)
    for ax, (term, cur) in zip(axes[len(points):], res.curves.items()):
        for c, (g, d) in zip(colors, cur.groupby("group", sort=False)):
            ax.fill_between(d.x, d.hdi_lower, d.hdi_upper, color=c, alpha=0.25)
            ax.plot(d.x, d["median"], color=c, label=g)
        ax.set_ylim(0, 1)
        ax.set_xlabel(term)
        ax.set_ylabel("ICC")
        ax.set_title(f"ICC over {term} (median, {res.prob:.0%} HDI)", fontsize=9)
        ax.legend(fontsize=7)
    return fig


def _default_vars(fit):
    names = ["b"] + [sd_var(f.name) for f in fit.design.factors] + list(family_of(fit.spec).aux_names)
    return [n for n in names if n in fit.posterior]


def _figure_of(pc):
    return pc.viz["figure"].item()


def _by_label(fit) -> "xr.DataTree":
    """The posterior with one scalar variable per parameter label (each gets its own axis/scale)."""
    import xarray as xr
    d = labelled_draws(fit.posterior, fit.design, family_of(fit.spec).aux_names)
    return xr.DataTree.from_dict({"posterior": xr.Dataset(
        {k: v.drop_vars([c for c in v.coords if c not in ("chain", "draw")]) for k, v in d.items()})})


def plot_trace(fit, *, var_names: list[str] | None = None, kind: str = "trace") -> Figure:
    """Trace (``kind="trace"``, ArviZ ``plot_trace_dist``) or rank plots (``kind="rank"``,
    ArviZ ``plot_rank``: fractional rank Delta-ECDF per chain with a simultaneous envelope) of
    every fixed effect, group SD, correlation and sigma by default, each parameter on its own
    axis (its own scale). ``var_names`` selects posterior variables instead.

    Examples
    --------
    >>> fit.plot_trace(kind="rank")                                    # doctest: +SKIP
    """
    import arviz as az
    tree = fit.idata if var_names else _by_label(fit)
    if kind == "trace":
        pc = az.plot_trace_dist(tree, var_names=var_names, backend="matplotlib")
    elif kind == "rank":
        pc = az.plot_rank(tree, var_names=var_names, backend="matplotlib")
    else:
        raise BayesLMMError(f"the 'kind' parameter of plot_trace must be one of ('trace', 'rank'). "
                            f"Got {kind!r} instead.")
    return _tidy_labels(_figure_of(pc))


def _tidy_labels(fig: Figure) -> Figure:
    """Parameter names as small panel titles (long rotated y-labels overlap each other, and a
    lone x-label under the last panel reads as its title), with a layout that keeps them apart."""
    for ax in fig.axes:
        name = ax.get_ylabel() or (ax.get_xlabel() if ax.get_xlabel() not in ("", "Draw") else "")
        if name:
            ax.set_ylabel("")
            if ax.get_xlabel() == name:
                ax.set_xlabel("")
            ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=7)
    fig.set_layout_engine("constrained")
    return fig


def plot_ppc(fit, *, num_draws: int = 100, seed: int = 0) -> Figure:
    """Posterior predictive check: density of the observed y against replicated data sets
    (ArviZ ``plot_ppc_dist``; replicates from :func:`bayeslmm.diagnostics.posterior_predictive`).

    Examples
    --------
    >>> fit.plot_ppc()                                                 # doctest: +SKIP
    """
    import arviz as az
    from .diagnostics import posterior_predictive
    pp = posterior_predictive(fit, num_draws=num_draws, seed=seed)
    return _figure_of(az.plot_ppc_dist(pp, num_samples=num_draws, backend="matplotlib"))


def plot_prior_posterior(fit, *, draws: int = 2000, seed: int = 0, prior=None) -> Figure:
    """Prior (grey) and posterior (colour) of every fixed effect, group SD, correlation and sigma.

    A posterior much narrower than its prior means the data were informative about that
    parameter; one that looks like its prior means they were not (the prior decides it). The
    x-range follows the posterior (widened 3 times around it), so a heavy-tailed prior is cut.

    Parameters
    ----------
    draws, seed : int
        Prior draws (:func:`bayeslmm.accessors.prior_predictive`), unless ``prior`` (its result)
        is given.

    Examples
    --------
    >>> fit.plot_prior_posterior()                                     # doctest: +SKIP
    """
    from .accessors import prior_predictive
    aux = family_of(fit.spec).aux_names
    tree = prior if prior is not None else prior_predictive(fit, draws=draws, seed=seed)
    pri = labelled_draws(tree["prior"].to_dataset(), fit.design, aux)
    post = labelled_draws(fit.posterior, fit.design, aux)
    items = list(post)
    ncol = min(4, len(items))
    nrow = int(np.ceil(len(items) / ncol))
    fig = Figure(figsize=(3.2 * ncol, 2.4 * nrow), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrow, ncol)).ravel()
    for ax, label in zip(axes, items):
        x = post[label].to_numpy().ravel()
        p = pri[label].to_numpy().ravel()
        lo, hi = np.quantile(x, [0.005, 0.995])
        w = hi - lo if hi > lo else max(abs(hi), 1.0)
        rng_ = (lo - w, hi + w)
        if label.startswith(("sd(", "sigma")):
            rng_ = (max(0.0, rng_[0]), rng_[1])
        elif label.startswith("cor("):
            rng_ = (-1.0, 1.0)
        inside = p[(p >= rng_[0]) & (p <= rng_[1])]
        bw = (rng_[1] - rng_[0]) / 40       # density of the whole prior (its mass outside is cut)
        ax.hist(inside, bins=40, range=rng_, weights=np.full(len(inside), 1.0 / (len(p) * bw)),
                color="#bbbbbb", alpha=0.8, label="prior")
        ax.hist(x, bins=40, range=rng_, density=True, color="#1f78b4", alpha=0.6, label="posterior")
        ax.set_title(label, fontsize=9)
        ax.set_yticks([])
        ax.tick_params(labelsize=7)
    for ax in axes[len(items):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    fig.suptitle("Prior (grey) vs posterior (blue): how much the data moved each parameter", fontsize=10)
    return fig


def plot_spaghetti(fit, *, factor: str | None = None, slope: str | None = None, max_groups: int = 60) -> Figure:
    """Fitted lines per group (partial pooling, posterior means of :meth:`Fit.coef`) for a factor
    with a random intercept and slope, over each group's own range of the slope covariate, with
    the data and the population line ``b[Intercept] + b[slope] x`` (thick). Other covariates are
    at 0 in the lines.

    Examples
    --------
    >>> fit.plot_spaghetti()                                           # doctest: +SKIP
    """
    from .accessors import coef
    design = fit.design
    cands = [f for f in design.factors if "Intercept" in f.terms and f.q >= 2
             and (factor is None or f.name == factor)]
    if not cands:
        raise BayesLMMError("a spaghetti plot needs a factor with a random intercept and slope "
                            f"(factors: {[(f.name, list(f.terms)) for f in design.factors]}).")
    f = cands[0]
    slope = slope or next(t for t in f.terms if t != "Intercept")
    if slope not in f.terms or slope not in design.column_names:
        raise BayesLMMError(f"slope {slope!r} must be a random term of {f.name!r} and a data column.")
    c = coef(fit, factor=f.name)[f.name]["mean"].unstack()
    x = np.asarray(dict((cd.name, cd.values) for cd in design.columns)[slope], dtype=float)
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.subplots()
    ax.scatter(x, design.y, s=6, color="#999999", alpha=0.5, label="data")
    levels = list(f.levels)[:max_groups]
    for j, lv in enumerate(levels):
        xs = x[f.codes == j]
        grid = np.array([xs.min(), xs.max()])
        ax.plot(grid, c.loc[lv, "Intercept"] + c.loc[lv, slope] * grid, color=_C_PART, lw=0.9, alpha=0.6)
    b = fit.draws("b").mean(axis=0)
    grid = np.array([x.min(), x.max()])
    if slope in design.fixed_terms and "Intercept" in design.fixed_terms:
        ax.plot(grid, b[design.fixed_terms.index("Intercept")] + b[design.fixed_terms.index(slope)] * grid,
                color="k", lw=2.5, label="population (fixed effects)")
    ax.plot([], [], color=_C_PART, label=f"each {f.name} (partial pooling)")
    ax.set_xlabel(slope)
    ax.set_ylabel(design.response)
    ax.set_title(f"Fitted lines per {f.name}" + (f" (first {max_groups})" if f.n_levels > max_groups else ""),
                 fontsize=10)
    ax.legend(fontsize=7)
    return fig
