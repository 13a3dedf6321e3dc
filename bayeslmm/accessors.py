"""lme4/brms accessors of a fit: ``fixef``, ``ranef``, ``coef``, ``VarCorr``, ``fitted``,
``residuals``, ``r2``, ``update``, ``prior_predictive``.

Pure numpy/xarray (never PyMC, except :func:`update`, which refits through :class:`bayeslmm.Model`).
Each is also a method of :class:`bayeslmm.Fit` (``fit.fixef()``). Every summary is a
:class:`~bayeslmm.tables.Table` (prints whole, rounded) with the posterior ``mean``, ``sd`` and the
``hdi_lower``/``hdi_upper`` of the highest-density interval of probability ``prob``; with
``summary=False`` the draws come back instead, stacked over chains (first axis = draw, chain-major as
in :meth:`bayeslmm.Fit.draws`).

Definitions
-----------
fixef
    The fixed effects ``b`` (intercept on the original scale), one row per term.
ranef
    The group-level effects ``r_g[j, t]``: each group's *deviation* from the fixed part, per
    grouping factor, one row per (level, term).
coef
    Fixed part plus deviation per group, draw by draw: ``b[t] + r_g[j, t]`` for every term of the
    fixed part and every random term of ``g`` (a term only in one of them contributes only that
    part). As lme4's ``coef``: only factor ``g``'s own effects are added.
VarCorr
    Group-level SDs and correlations per factor, plus the residual SD (posterior means; lme4's
    layout), with HDIs in ``.table``.
fitted / residuals
    ``mu = E[y | b, r, ...]`` at each observed row (group effects included), and ``y - mu``.
r2
    Bayesian R^2 (Gelman, Goodrich, Gabry & Vehtari 2019, *The American Statistician* 73:307):
    per draw ``var(mu) / (var(mu) + var(y - mu))`` (variances over the observations; the
    residual-based version that brms's ``bayes_R2`` reports). Nakagawa's R^2 for mixed models
    (Nakagawa & Schielzeth 2013; random slopes by Johnson 2014), per draw with
    ``V_f = var(X b)``, ``V_r = sum_g mean_i z_gi' Sigma_g z_gi`` and ``V_e`` the family's latent
    residual variance (Gaussian: ``sigma^2``): marginal ``V_f / (V_f + V_r + V_e)`` (what the
    fixed effects explain) and conditional ``(V_f + V_r) / (V_f + V_r + V_e)`` (fixed and group
    effects together).
"""

from __future__ import annotations

import difflib
import warnings

import numpy as np
import pandas as pd
import xarray as xr

from .errors import BayesLMMError
from .families import family_of
from .posterior import cov_draws, hdi, labelled_draws, level_dim, r_var, stack, term_dim
from .tables import Table, as_table, format_number

__all__ = ["fixef", "ranef", "coef", "VarCorr", "VarCorrResult", "fitted", "residuals", "r2",
           "r2_draws", "update", "prior_predictive", "draws_by_label"]


def _summ(x: np.ndarray, prob: float) -> dict:
    """mean, sd, HDI of draws ``x`` (S, K) per column."""
    lo_hi = np.array([hdi(x[:, k], prob) for k in range(x.shape[1])]).reshape(-1, 2)
    return {"mean": x.mean(axis=0), "sd": x.std(axis=0, ddof=1), "hdi_lower": lo_hi[:, 0],
            "hdi_upper": lo_hi[:, 1]}


def _check_prob(prob: float, what: str) -> None:
    if not 0 < prob < 1:
        raise BayesLMMError(f"the 'prob' parameter of {what} must be in (0, 1). Got {prob!r} instead.")


def _table(d: dict, index, prob: float) -> Table:
    t = as_table(pd.DataFrame(d, index=index))
    t.attrs["ci_prob"] = prob
    return t


def draws_by_label(fit, name: str) -> np.ndarray:
    """Draws of a posterior variable (``"sd_Subject"``) or of one parameter by its table label
    (``"sd(Subject, Days)"``, ``"cor(Subject, Intercept, Days)"``, ``"Days"``, ``"sigma"``),
    stacked over chains. Unknown names raise with the closest labels."""
    post = fit.posterior
    if name in post.data_vars:
        return stack(post[name])
    labelled = labelled_draws(post, fit.design, family_of(fit.spec).aux_names)
    if name in labelled:
        return stack(labelled[name])
    options = list(post.data_vars) + [k for k in labelled if k not in post.data_vars]
    close = difflib.get_close_matches(name, options, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise BayesLMMError(f"no posterior variable or parameter label {name!r}.{hint} Variables: "
                        f"{list(post.data_vars)}; labels: {list(labelled)}.")


# -- fixed and group effects ---------------------------------------------------------------
def fixef(fit, *, prob: float = 0.95, summary: bool = True):
    """Fixed effects: one row per term (``mean``, ``sd``, ``hdi_lower``, ``hdi_upper``).

    ``summary=False``: the draws, shape (S, p), columns in ``fit.design.fixed_terms`` order.

    Examples
    --------
    >>> fit.fixef().loc["Days", "mean"]                                # doctest: +SKIP
    """
    b = fit.draws("b")
    if not summary:
        return b
    _check_prob(prob, "fixef")
    return _table(_summ(b, prob), pd.Index(fit.design.fixed_terms, name="term"), prob)


def _factors(fit, factor):
    facs = list(fit.design.factors)
    if not facs:
        raise BayesLMMError("the model has no grouping factor, so it has no group effects; add a "
                            "random term such as '(1 | group)' to the formula.")
    if factor is None:
        return facs
    names = [f.name for f in facs]
    if factor not in names:
        close = difflib.get_close_matches(str(factor), names, n=1)
        raise BayesLMMError(f"no grouping factor {factor!r}"
                            + (f"; did you mean {close[0]!r}?" if close else "")
                            + f" The factors are {names}.")
    return [fit.design.factor(factor)]


def _long(draws3: np.ndarray, levels, terms, prob: float) -> Table:
    """Summary of draws (S, J, T) as rows (level, term)."""
    S, J, T = draws3.shape
    d = _summ(draws3.reshape(S, J * T), prob)
    idx = pd.MultiIndex.from_product([list(levels), list(terms)], names=["level", "term"])
    return _table(d, idx, prob)


def ranef(fit, *, factor: str | None = None, prob: float = 0.95, summary: bool = True) -> dict:
    """Group-level effects (deviations from the fixed part) per grouping factor.

    Returns
    -------
    dict
        ``{factor: Table}`` with rows (``level``, ``term``) and columns ``mean``, ``sd``,
        ``hdi_lower``, ``hdi_upper``; ``summary=False``: ``{factor: draws (S, J, q)}``.
        ``table["mean"].unstack()`` gives lme4's level x term layout.

    Examples
    --------
    >>> fit.ranef()["Subject"].loc[("308", "Days")]                    # doctest: +SKIP
    """
    out = {}
    for f in _factors(fit, factor):
        r = fit.draws(r_var(f.name))
        out[f.name] = _long(r, f.levels, f.terms, prob) if summary else r
    return out


def coef_terms(design, f) -> list[str]:
    """Terms of ``coef`` for factor ``f``: the fixed terms, then random-only terms of ``f``."""
    return list(design.fixed_terms) + [t for t in f.terms if t not in design.fixed_terms]


def coef(fit, *, factor: str | None = None, prob: float = 0.95, summary: bool = True) -> dict:
    """Per group, fixed part plus the group's deviation: ``b[t] + r_g[j, t]`` draw by draw.

    Returns
    -------
    dict
        ``{factor: Table}`` with rows (``level``, ``term``) over :func:`coef_terms` (every fixed
        term, then random-only terms); ``summary=False``: ``{factor: draws (S, J, T)}``.

    Examples
    --------
    >>> fit.coef()["Subject"]["mean"].unstack()                        # doctest: +SKIP
    """
    design = fit.design
    b = fit.draws("b")
    out = {}
    for f in _factors(fit, factor):
        r = fit.draws(r_var(f.name))
        terms = coef_terms(design, f)
        c = np.zeros((b.shape[0], f.n_levels, len(terms)))
        for k, t in enumerate(terms):
            if t in design.fixed_terms:
                c[:, :, k] += b[:, design.fixed_terms.index(t)][:, None]
            if t in f.terms:
                c[:, :, k] += r[:, :, f.terms.index(t)]
        out[f.name] = _long(c, f.levels, terms, prob) if summary else c
    return out


# -- variance components ---------------------------------------------------------------------
class VarCorrResult:
    """Group-level SDs and correlations, printed like lme4's ``VarCorr``.

    Attributes
    ----------
    table : Table
        One row per SD and correlation: ``group``, ``name``, ``kind`` (sd/cor/aux), posterior
        ``mean``, ``sd``, ``hdi_lower``, ``hdi_upper``.
    cov, cor : dict
        ``{factor: (q, q) DataFrame}``: posterior mean covariance and correlation matrices.
    """

    def __init__(self, table: Table, cov: dict, cor: dict, prob: float):
        self.table, self.cov, self.cor, self.prob = table, cov, cor, prob

    def _lines(self) -> list[list[str]]:
        rows = [["Groups", "Name", "Std.Dev.", f"{self.prob:.0%} HDI", "Corr"]]
        t = self.table
        for g in dict.fromkeys(t["group"]):
            sds = t[(t.group == g) & (t.kind != "cor")]
            C = self.cor.get(g)
            for k, r in enumerate(sds.itertuples()):
                corr = ""
                if C is not None and k > 0:
                    corr = " ".join(f"{C.iloc[k, i]:+.2f}" for i in range(k))
                rows.append([g if k == 0 else "", "(Intercept)" if r.name == "Intercept" else r.name,
                             format_number(r.mean),
                             f"[{format_number(r.hdi_lower)}, {format_number(r.hdi_upper)}]", corr])
        return rows

    def __repr__(self) -> str:
        rows = self._lines()
        w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join(" " + " ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip() for r in rows)

    def _repr_html_(self) -> str:
        rows = self._lines()
        head = "".join(f"<th>{c}</th>" for c in rows[0])
        body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows[1:])
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def VarCorr(fit, *, prob: float = 0.95) -> VarCorrResult:  # noqa: N802 (lme4's name)
    """Group-level SDs and correlations per factor and the residual SD (lme4's layout).

    Correlations only exist within correlated blocks (``(1 + x | g)``); ``||`` blocks have none.

    Examples
    --------
    >>> fit.VarCorr()                                                  # doctest: +SKIP
     Groups   Name        Std.Dev. 95% HDI        Corr
     Subject  (Intercept) 25.3     [14.1, 37.9]
              Days        6.2      [4.1, 8.7]     +0.06
     Residual             25.8     [23.2, 28.6]
    """
    _check_prob(prob, "VarCorr")
    post = fit.posterior
    family = family_of(fit.spec)
    rows, cov, cor = [], {}, {}
    for f in fit.design.factors:
        sd = stack(post[f"sd_{f.name}"])
        for k, t in enumerate(f.terms):
            rows.append((f.name, t, "sd", sd[:, k]))
        S = cov_draws(post, f)
        D = np.sqrt(np.einsum("sii->si", S))
        C = S / (D[:, :, None] * D[:, None, :])
        for i, j in f.correlation_pairs:
            rows.append((f.name, f"{f.terms[i]}, {f.terms[j]}", "cor", C[:, i, j]))
        cov[f.name] = pd.DataFrame(S.mean(axis=0), index=f.terms, columns=f.terms)
        if f.has_correlation:
            cor[f.name] = pd.DataFrame(C.mean(axis=0), index=f.terms, columns=f.terms)
    for a in family.aux_names:
        rows.append(("Residual" if a == "sigma" else a, "", "aux", stack(post[a])))
    x = np.column_stack([r[3] for r in rows])
    d = {"group": [r[0] for r in rows], "name": [r[1] for r in rows], "kind": [r[2] for r in rows]}
    d.update(_summ(x, prob))
    return VarCorrResult(_table(d, None, prob), cov, cor, prob)


# -- fitted values, residuals, R^2 ---------------------------------------------------------------
def _mu_blocks(fit, chunk: int = 200):
    """``mu`` for the observed rows, draws in blocks: yields (slice, mu (s, n))."""
    from .predict import linear_predictor
    design = fit.design
    family = family_of(fit.spec)
    b = fit.draws("b")
    rs = [fit.draws(r_var(f.name)) for f in design.factors]
    step = max(1, int(2e7 // max(design.n, 1)))
    step = min(step, max(chunk, 1)) if design.n > 1e5 else step
    for s0 in range(0, b.shape[0], step):
        sl = slice(s0, s0 + step)
        eff = [(f.Z, f.codes, r[sl]) for f, r in zip(design.factors, rs)]
        yield sl, family.inverse_link(linear_predictor(design.X, b[sl], eff))


def _per_row(fit, kind: str, prob: float, summary: bool):
    y = fit.design.y
    mu = np.concatenate([m for _, m in _mu_blocks(fit)], axis=0)
    x = mu if kind == "fitted" else y[None, :] - mu
    if not summary:
        return x
    _check_prob(prob, kind)
    return _table(_summ(x, prob), pd.RangeIndex(x.shape[1], name="row"), prob)


def fitted(fit, *, prob: float = 0.95, summary: bool = True):
    """Fitted means ``mu`` of the observed rows (group effects included): a row per observation
    (rows of the data that were kept, in order), or the draws (S, n) with ``summary=False``.
    For new data or population-level predictions use :meth:`bayeslmm.Fit.predict`."""
    return _per_row(fit, "fitted", prob, summary)


def residuals(fit, *, prob: float = 0.95, summary: bool = True):
    """Residuals ``y - mu`` of the observed rows, per draw summarised (or draws (S, n))."""
    return _per_row(fit, "residuals", prob, summary)


def r2_draws(fit) -> dict[str, np.ndarray]:
    """Per-draw R^2 (see the module docstring): ``{"bayes_R2", "marginal_R2", "conditional_R2"}``;
    the two Nakagawa ones only for models with grouping factors."""
    design = fit.design
    y = design.y
    S = fit.n_draws
    var_mu, var_res = np.empty(S), np.empty(S)
    for sl, mu in _mu_blocks(fit):
        var_mu[sl] = mu.var(axis=1, ddof=1)
        var_res[sl] = (y[None, :] - mu).var(axis=1, ddof=1)
    out = {"bayes_R2": var_mu / (var_mu + var_res)}
    if not design.factors:
        return out
    b = fit.draws("b")
    v_f = (b @ design.X.T).var(axis=1, ddof=1)
    post = fit.posterior
    v_r = np.zeros(S)
    for f in design.factors:
        ZtZ_n = f.Z.T @ f.Z / design.n                      # mean_i z_i z_i'
        v_r += np.einsum("sij,ji->s", cov_draws(post, f), ZtZ_n)
    family = family_of(fit.spec)
    aux = {a: stack(post[a]) for a in family.aux_names}
    # known standard errors: the typical within-study variance (+ sigma^2), as in the ICC (I^2)
    v_e = np.asarray(family.latent_residual_variance(aux, se=design.se) if family.known_se
                     else family.latent_residual_variance(aux))
    tot = v_f + v_r + v_e
    out["marginal_R2"] = v_f / tot
    out["conditional_R2"] = (v_f + v_r) / tot
    return out


def r2(fit, *, prob: float = 0.95) -> Table:
    """Bayesian R^2 (Gelman et al. 2019) and Nakagawa's marginal and conditional R^2 (posterior
    ``mean``, ``sd``, HDI); definitions in the module docstring.

    Examples
    --------
    >>> fit.r2()                                                       # doctest: +SKIP
    """
    _check_prob(prob, "r2")
    d = r2_draws(fit)
    return _table(_summ(np.column_stack(list(d.values())), prob), pd.Index(list(d), name="R2"), prob)


# -- refits and the prior ------------------------------------------------------------------------
def update(fit, formula: str | None = None, *, data=None, priors: dict | None = None, **kwargs):
    """Refit with a new formula, data or priors, reusing everything else.

    Kept from ``fit``: the family, the sampling path (a non-centred fit stays non-centred; a
    collapsed one uses ``"auto"``, i.e. collapsed where it applies), the user's priors (those that still name a
    parameter or class of the new model; ``priors`` adds to or replaces them, a value of ``None``
    removes one), the data (its used columns; pass ``data`` when the new formula needs other
    columns) and the sampler settings with the seed the fit actually used, so
    ``fit.update(priors=p)`` draws exactly what ``Model(formula, data, priors=p).fit(seed=...)``
    would. Keyword arguments override the sampler settings (``draws=2000``, ``seed=2``,
    ``verbose=False``).

    Returns
    -------
    Fit
        A new fit; ``fit`` is not changed.

    Examples
    --------
    >>> fit2 = fit.update("Reaction ~ Days + (Days || Subject)")        # doctest: +SKIP
    >>> fit3 = fit.update(priors={"sd(Subject, Days)": "halfnormal(5)"})  # doctest: +SKIP
    """
    from .model import Model
    spec = fit.spec
    new_formula = formula if formula is not None else spec.formula.text
    frame = data if data is not None else fit.design.data_frame()
    model_keys = {"family", "missing"}
    mk = {"family": spec.family, "method": spec.method, "missing": "drop"}
    if "method" in kwargs:                  # Model(method=) and fit(method=) mean the same path
        mk["method"] = kwargs["method"]
    mk.update({k: kwargs.pop(k) for k in list(kwargs) if k in model_keys})
    user = {k: p.text for k, p in spec.priors}
    for k, v in (priors or {}).items():
        if v is None:
            user.pop(k, None)
        else:
            user[k] = v
    if formula is not None:
        bare = Model(new_formula, frame, family=mk["family"], method=mk["method"], missing=mk["missing"])
        names = {e.label for e in bare.prior_table.entries} | {e.cls for e in bare.prior_table.entries}
        names |= {f"{e.cls}({e.factor})" for e in bare.prior_table.entries if e.factor}
        dropped = [k for k in user if k not in names and k not in (priors or {})]
        if dropped:
            warnings.warn(f"update: prior(s) {dropped} name no parameter of the new model "
                          f"{new_formula!r} and were dropped.", stacklevel=3)
        user = {k: v for k, v in user.items() if k not in dropped}
    cov = {k.factor: k for k in getattr(fit.design, "kinship", ())} or None     # known covariances stay
    model = Model(new_formula, frame, priors=user or None, cov=cov, **mk)
    s = fit.sampler
    fk = {"chains": s.chains, "draws": s.draws, "tune": s.tune, "seed": fit.info.get("seed", s.seed),
          "target_accept": s.target_accept, "sampler": s.sampler, "cores": s.cores,
          "progressbar": s.progressbar}
    if fit.info.get("method") == "noncentred" and "method" not in kwargs:
        fk["method"] = "noncentred"        # a non-centred fit stays non-centred (valid for any model)
    fk.update(kwargs)
    return model.fit(**fk)


def prior_predictive(model_or_fit, *, draws: int = 500, seed: int = 0) -> xr.DataTree:
    """Draws from the prior and the data sets they imply (prior predictive check).

    Parameters are drawn from the model's prior table with the conventions of the fitted graph
    (:func:`bayeslmm.simulate.draw_parameters`), group effects from them, then ``y`` from the
    family, for the design's own predictors and groups. No PyMC: pure numpy, seeded.

    Returns
    -------
    DataTree
        ``prior`` (the posterior's variable names and dims: ``b``, ``sd_g``, ``cor_g``, ``r_g``,
        auxiliary), ``prior_predictive`` (``y``, dims chain=1, draw, obs) and ``observed_data``:
        the layout of ``arviz.plot_ppc_dist(tree, group="prior_predictive")``.

    Examples
    --------
    >>> pp = fit.prior_predictive(draws=200)                            # doctest: +SKIP
    >>> pp["prior_predictive"]["y"].std()                               # doctest: +SKIP
    """
    from .posterior import coords_of, cor_var, sd_var, term2_dim
    from .simulate import draw_parameters, simulate_response
    design, table = model_or_fit.design, model_or_fit.prior_table
    family = model_or_fit.spec.family
    rng = np.random.default_rng(seed)
    ps, ys, effs = [], [], []
    for _ in range(int(draws)):
        p = draw_parameters(table, design, rng)
        y, eff = simulate_response(design, p, rng, family=family, link=model_or_fit.spec.link)
        ps.append(p), ys.append(y), effs.append(eff)
    dims2 = ("chain", "draw")
    coords = {"chain": [0], "draw": np.arange(draws), **coords_of(design)}
    v = {"b": (dims2 + ("term",), np.array([[p.b[t] for t in design.fixed_terms] for p in ps])[None])}
    for f in design.factors:
        v[sd_var(f.name)] = (dims2 + (term_dim(f.name),), np.array([p.sds(f) for p in ps])[None])
        if f.has_correlation:
            v[cor_var(f.name)] = (dims2 + (term_dim(f.name), term2_dim(f.name)),
                                  np.array([p.correlation(f) for p in ps])[None])
        v[r_var(f.name)] = (dims2 + (level_dim(f.name), term_dim(f.name)),
                            np.array([e[f.name] for e in effs])[None])
    for a in family_of(model_or_fit.spec).aux_names:
        v[a] = (dims2, np.array([p.aux[a] for p in ps])[None])
    obs = np.arange(design.n)
    prior = xr.Dataset(v, coords=coords)
    pp = xr.Dataset({"y": (("chain", "draw", "obs"), np.array(ys)[None])},
                    coords={"chain": [0], "draw": np.arange(draws), "obs": obs})
    od = xr.Dataset({"y": (("obs",), design.y)}, coords={"obs": obs})
    return xr.DataTree.from_dict({"prior": prior, "prior_predictive": pp, "observed_data": od})
