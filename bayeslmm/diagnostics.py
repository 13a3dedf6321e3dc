"""Convergence diagnostics with advice, pointwise log-likelihood (LOO, model comparison), and
posterior predictive draws for checks.

Pure numpy/xarray/ArviZ (no PyMC), so it works on fits from either sampling path and on plain
ArviZ DataTrees. R-hat and ESS come from :mod:`bayeslmm.convergence` (ArviZ's numbers, all
parameters in one vectorised pass).

Checks and thresholds (Vehtari, Gelman, Simpson, Carpenter & Buerkner 2021, "Rank-normalization,
folding, and localization: an improved R-hat"; Betancourt 2016 for E-BFMI):

=================  ==========================================  =====================================
check id           problem when                                advice
=================  ==========================================  =====================================
``rhat``           rank-normalised split R-hat > 1.01 (group   more tuning/draws; check multimodality
                   effects: any > 1.05, or > 5% above 1.01)
``ess_bulk``       bulk ESS < 100 per chain                    more draws, or reparameterise
``ess_tail``       tail ESS < 100 per chain                    more draws (intervals unreliable)
``divergences``    any divergent transition                    raise target_accept; reparameterise
``treedepth``      > 1% of draws hit the maximum tree depth    raise max_treedepth; rescale
``ebfmi``          E-BFMI < 0.3 in some chain                  reparameterise (heavy-tailed energy)
=================  ==========================================  =====================================
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import xarray as xr

from .errors import BayesLMMError
from .families import family_of
from .posterior import level_dim, r_var, term_dim
from .predict import linear_predictor

__all__ = ["ConvergenceWarning", "Problem", "Diagnostics", "diagnostics", "warn_if_problems",
           "pointwise_log_likelihood", "log_likelihood_tree", "add_log_likelihood", "loo", "compare",
           "posterior_predictive",
           "RHAT_MAX", "RHAT_GROUP_MAX", "GROUP_FRAC_MAX", "ESS_PER_CHAIN_MIN", "EBFMI_MIN", "TREEDEPTH_FRAC_MAX"]

RHAT_MAX = 1.01
ESS_PER_CHAIN_MIN = 100
EBFMI_MIN = 0.3
TREEDEPTH_FRAC_MAX = 0.01
MAX_GROUP_LEVELS = 250
RHAT_GROUP_MAX = 1.05
GROUP_FRAC_MAX = 0.05


class ConvergenceWarning(UserWarning):
    """The sampler's output fails a convergence check; the message says what to do."""


@dataclass(frozen=True)
class Problem:
    """One failed check: ``check`` id, what was found, and what to do."""

    check: str
    message: str
    advice: str

    def __str__(self) -> str:
        return f"[{self.check}] {self.message} -> {self.advice}"


@dataclass
class Diagnostics:
    """Convergence diagnostics of a fit.

    Attributes
    ----------
    table : DataFrame
        One row per posterior variable: worst element's ``rhat`` (max), ``ess_bulk`` and
        ``ess_tail`` (min), and ``n_elements``.
    parameters : DataFrame
        One row per scalar element (``parameter`` like ``sd_Subject[Days]``).
    sampler : dict
        ``chains``, ``draws``, ``divergences``, ``divergences_per_chain``, ``treedepth_hits``,
        ``ebfmi`` (list per chain), ``target_accept`` when known.
    problems : list of Problem
    thresholds : dict
    """

    table: pd.DataFrame
    parameters: pd.DataFrame
    sampler: dict
    problems: list[Problem] = field(default_factory=list)
    thresholds: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return not self.problems

    def message(self) -> str:
        """A readable summary; lists each problem with its advice."""
        s = self.sampler
        head = (f"{s['chains']} chains x {s['draws']} draws; max R-hat "
                f"{_fmt(self.table['rhat'].max())}, min bulk ESS {_fmt(self.table['ess_bulk'].min())}, "
                f"min tail ESS {_fmt(self.table['ess_tail'].min())}, divergences {s['divergences']}, "
                f"tree-depth hits {s['treedepth_hits']}, E-BFMI "
                f"{', '.join(_fmt(v) for v in s['ebfmi']) or 'n/a'}")
        for name, (k, J) in self.thresholds.get("group_subsets", {}).items():
            head += f"; {name} checked on a random subset of {k} of {J} levels"
        if self.ok:
            return "All convergence checks passed: " + head
        lines = [f"{len(self.problems)} convergence problem(s): " + head]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)

    def to_frame(self) -> pd.DataFrame:
        """The checks as a table: ``check``, ``value``, ``threshold``, ``ok``, ``advice``."""
        t, s = self.thresholds, self.sampler
        failed = {p.check: p for p in self.problems}
        rows = [("rhat", self.table["rhat"].max(), f"<= {t['rhat_max']}"),
                ("ess_bulk", self.table["ess_bulk"].min(), f">= {t['ess_min']:g}"),
                ("ess_tail", self.table["ess_tail"].min(), f">= {t['ess_min']:g}"),
                ("divergences", s["divergences"], "0"),
                ("treedepth", s["treedepth_hits"], f"<= {t['treedepth_frac_max']:.0%} of draws"),
                ("ebfmi", min(s["ebfmi"]) if s["ebfmi"] else np.nan, f">= {t['ebfmi_min']}")]
        return pd.DataFrame([{"check": c, "value": v, "threshold": th, "ok": c not in failed,
                              "advice": failed[c].advice if c in failed else ""}
                             for c, v, th in rows])

    def __repr__(self) -> str:
        return self.message()

    def _repr_html_(self) -> str:
        import html

        from .tables import to_html
        ok = self.ok
        head = ("<p style='color:#1e8449'><b>All convergence checks passed.</b></p>" if ok else
                f"<p style='color:#c0392b'><b>{len(self.problems)} convergence problem(s); do not trust "
                "the results yet.</b></p><ul>" + "".join(
                    f"<li><b>{html.escape(p.check)}</b>: {html.escape(p.message)}<br><i>What to do:</i> "
                    f"{html.escape(p.advice)}</li>" for p in self.problems) + "</ul>")
        return head + to_html(self.to_frame().set_index("check"))


def _fmt(v) -> str:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return str(v)
    if not np.isfinite(v):
        return "n/a"
    return f"{v:.4g}" if abs(v) < 100 else f"{v:.0f}"


def _tree_and_target(fit_or_tree):
    if isinstance(fit_or_tree, xr.DataTree):
        return fit_or_tree, None
    if hasattr(fit_or_tree, "idata"):
        return fit_or_tree.idata, getattr(getattr(fit_or_tree, "sampler", None), "target_accept", None)
    raise BayesLMMError(f"diagnostics needs a bayeslmm Fit or an ArviZ DataTree, got "
                        f"{type(fit_or_tree).__name__}.")


def _element_labels(name: str, da: xr.DataArray):
    """``label(idx)``: the text of one element of ``da`` (``name[level, term]``); each coordinate
    is read once per variable, not once per element."""
    dims = [d for d in da.dims if d not in ("chain", "draw")]
    if not dims:
        return lambda idx: name
    coords = [da.coords[d].values if d in da.coords else None for d in dims]
    return lambda idx: f"{name}[{', '.join(str(i) if c is None else str(c[i]) for c, i in zip(coords, idx))}]"


def _parameter_table(post: xr.Dataset) -> pd.DataFrame:
    from .convergence import summary
    arrays = {name: da.transpose("chain", "draw", ...).to_numpy() for name, da in post.data_vars.items()}
    if not arrays:
        return pd.DataFrame(columns=["variable", "parameter", "rhat", "ess_bulk", "ess_tail"])
    first = next(iter(arrays.values()))
    stacked = np.concatenate([a.reshape(first.shape[0], first.shape[1], -1) for a in arrays.values()], axis=2)
    with warnings.catch_warnings():      # constant elements (unit diagonal of cor_g) give 0/0
        warnings.simplefilter("ignore", RuntimeWarning)
        rhat, ess_b, ess_t = summary(stacked)          # all parameters in one vectorised pass
    rows, at = [], 0
    for name, arr in arrays.items():
        da = post[name]
        shape = arr.shape[2:]
        size = int(np.prod(shape))
        rh, eb, et = (x[at:at + size].reshape(shape) for x in (rhat, ess_b, ess_t))
        at += size
        const = np.ptp(arr, axis=(0, 1)) == 0          # e.g. the unit diagonal of cor_{g}
        is_cor = name.startswith("cor_") and const.ndim >= 2
        label = _element_labels(name, da)
        for idx in np.ndindex(const.shape):
            if const[idx] or (is_cor and idx[-2] >= idx[-1]):   # cor_g: upper triangle only
                continue
            rows.append({"variable": name, "parameter": label(idx),
                         "rhat": float(rh[idx]), "ess_bulk": float(eb[idx]), "ess_tail": float(et[idx])})
    return pd.DataFrame(rows, columns=["variable", "parameter", "rhat", "ess_bulk", "ess_tail"])


def _sampler_stats(tree: xr.DataTree, chains: int, draws: int) -> dict:
    out = {"chains": chains, "draws": draws, "divergences": 0, "divergences_per_chain": [],
           "treedepth_hits": 0, "ebfmi": []}
    if "sample_stats" not in tree.children:
        out["missing"] = True
        return out
    ss = tree["sample_stats"].to_dataset()
    div = next((ss[k] for k in ("diverging", "divergences") if k in ss), None)
    if div is not None:
        d = (div.to_numpy() != 0).reshape(chains, -1)
        out["divergences"] = int(d.sum())
        out["divergences_per_chain"] = [int(x) for x in d.sum(axis=1)]
    td = next((ss[k] for k in ("reached_max_treedepth", "maxdepth_reached") if k in ss), None)
    if td is not None:
        out["treedepth_hits"] = int((td.to_numpy() != 0).sum())
    if "energy" in ss:
        e = ss["energy"].transpose("chain", "draw").to_numpy()
        num = np.mean(np.diff(e, axis=1) ** 2, axis=1)
        den = np.var(e, axis=1)
        out["ebfmi"] = [float(x) for x in num / den]
    return out


def diagnostics(fit, *, var_names: list[str] | None = None, rhat_max: float = RHAT_MAX,
                ess_per_chain_min: float = ESS_PER_CHAIN_MIN, ebfmi_min: float = EBFMI_MIN,
                treedepth_frac_max: float = TREEDEPTH_FRAC_MAX, rhat_group_max: float = RHAT_GROUP_MAX,
                group_frac_max: float = GROUP_FRAC_MAX,
                max_group_levels: int | None = MAX_GROUP_LEVELS) -> Diagnostics:
    """Convergence checks: R-hat, bulk/tail ESS, divergences, tree depth, E-BFMI.

    Parameters
    ----------
    fit : Fit or xarray.DataTree
        A bayeslmm fit, or any ArviZ DataTree with ``posterior`` (and ``sample_stats``) groups.
    var_names : list of str, optional
        Posterior variables to check (default: all stored ones, group effects included).
    rhat_max, ess_per_chain_min, ebfmi_min, treedepth_frac_max : float
        Thresholds (defaults from Vehtari et al. 2021 and Betancourt 2016, see the module doc).
    rhat_group_max, group_frac_max : float
        Group effects (``r_*``) fail the R-hat check when any exceeds ``rhat_group_max`` (1.05)
        or more than ``group_frac_max`` (5%) of them exceed ``rhat_max``.
    max_group_levels : int or None
        A group-effect variable with more levels than this is checked on a random subset of this
        many levels (seeded, so repeatable; the message says so), which bounds the time of the
        check (every draw of every level is ranked: ~1 ms per parameter at 4,000 draws). The share
        of bad R-hats is then estimated with a standard
        error below 1.4 percentage points (250 levels, 5% bad). None checks every level.

    Returns
    -------
    Diagnostics
        ``.ok``, ``.problems`` (each with advice), ``.table``, ``.parameters``, ``.sampler``.

    Examples
    --------
    >>> d = fit.diagnostics()                                          # doctest: +SKIP
    >>> d.ok, d.to_frame()                                             # doctest: +SKIP
    """
    tree, target = _tree_and_target(fit)
    post = tree["posterior"].to_dataset()
    if var_names is not None:
        missing = [v for v in var_names if v not in post]
        if missing:
            raise BayesLMMError(f"diagnostics(var_names=...) names {missing}, not in the posterior; "
                                f"variables are {list(post.data_vars)}.")
        post = post[var_names]
    chains, draws = post.sizes["chain"], post.sizes["draw"]
    subsets = {}
    if max_group_levels is not None:
        rng = np.random.default_rng(0)
        for name in [v for v in post.data_vars if v.startswith("r_")]:
            level = next((d for d in post[name].dims if d.endswith("__level")), None)
            if level is not None and post.sizes[level] > max_group_levels:
                keep = np.sort(rng.choice(post.sizes[level], max_group_levels, replace=False))
                subsets[name] = (max_group_levels, post.sizes[level])
                post = post.isel({level: keep})   # only r_{g} has this dim
    params = _parameter_table(post)
    table = (params.groupby("variable", sort=False)
             .agg(rhat=("rhat", "max"), ess_bulk=("ess_bulk", "min"), ess_tail=("ess_tail", "min"),
                  n_elements=("parameter", "size"))
             .reset_index())
    stats = _sampler_stats(tree, chains, draws)
    stats["target_accept"] = target
    ess_min = ess_per_chain_min * chains
    thresholds = {"rhat_max": rhat_max, "ess_min": ess_min, "ebfmi_min": ebfmi_min,
                  "treedepth_frac_max": treedepth_frac_max, "rhat_group_max": rhat_group_max,
                  "group_frac_max": group_frac_max, "group_subsets": subsets}
    problems: list[Problem] = []

    def worst(col, largest):
        p = params.dropna(subset=[col])
        if p.empty:
            return ""
        p = p.nlargest(3, col) if largest else p.nsmallest(3, col)
        return ", ".join(f"{r.parameter} ({_fmt(getattr(r, col))})" for r in p.itertuples())

    # R-hat: every population parameter must pass rhat_max. Group effects r_* are many (one per
    # level and term) and each R-hat estimate is noisy, so among J of them a few exceed 1.01 by
    # chance in a good fit (2 chains x 1000 draws, 40 groups: max ~ 1.01); they fail when any
    # exceeds rhat_group_max or more than group_frac_max of them exceed rhat_max.
    is_group = params["variable"].str.startswith("r_")
    bad = params["rhat"] > rhat_max
    n_pop_bad = int((bad & ~is_group).sum())
    n_grp, n_grp_bad = int(is_group.sum()), int((bad & is_group).sum())
    grp_fail = n_grp_bad and (bool((params.loc[is_group, "rhat"] > rhat_group_max).any())
                              or n_grp_bad > group_frac_max * n_grp)
    if n_pop_bad or grp_fail:
        problems.append(Problem(
            "rhat", f"R-hat > {rhat_max} for {int(bad.sum())} of {len(params)} parameters (worst: "
            f"{worst('rhat', True)}): the chains do not agree",
            f"run longer (more tune and draws, e.g. tune=2000, draws=2000) and check for "
            f"multimodality in plot_trace(); if it persists, reparameterise or use stronger priors"))
    for col, what, adv in (
            ("ess_bulk", "bulk ESS", "posterior means and medians are unreliable"),
            ("ess_tail", "tail ESS", "interval endpoints (HDIs, quantiles) are unreliable")):
        n_low = int((params[col] < ess_min).sum())
        if n_low:
            problems.append(Problem(
                col, f"{what} < {ess_min:g} ({ess_per_chain_min:g} per chain) for {n_low} of "
                f"{len(params)} parameters (worst: {worst(col, False)}): {adv}",
                "draw more (e.g. draws=2000 or more chains); if ESS stays low relative to draws, the "
                "sampler mixes badly: raise target_accept or reparameterise"))
    if stats["divergences"]:
        ta = f" (now {target})" if target is not None else ""
        problems.append(Problem(
            "divergences", f"{stats['divergences']} divergent transitions after tuning "
            f"({stats['divergences'] / (chains * draws):.1%} of draws; per chain "
            f"{stats['divergences_per_chain']}): the posterior may be biased",
            f"raise target_accept{ta} towards 0.95-0.99; if divergences remain, the geometry is a "
            "funnel: use the non-centred parameterisation (bayeslmm's default) or the collapsed "
            "method, or give the group SDs tighter priors"))
    if stats["treedepth_hits"] > treedepth_frac_max * chains * draws:
        problems.append(Problem(
            "treedepth", f"{stats['treedepth_hits']} draws ({stats['treedepth_hits'] / (chains * draws):.1%}) "
            "hit the maximum tree depth: NUTS trajectories were cut short (inefficient, not biased)",
            "raise the maximum tree depth (e.g. nuts={'max_treedepth': 12}), or rescale predictors "
            "and reparameterise so the posterior is less correlated"))
    low_bfmi = [i for i, v in enumerate(stats["ebfmi"]) if v < ebfmi_min]
    if low_bfmi:
        problems.append(Problem(
            "ebfmi", f"E-BFMI < {ebfmi_min} in chain(s) {low_bfmi} "
            f"({', '.join(_fmt(stats['ebfmi'][i]) for i in low_bfmi)}): momentum resampling cannot "
            "explore the energy distribution (heavy tails / funnel)",
            "reparameterise (non-centred random effects, marginal method) or use more informative "
            "priors on the variance parameters; more tuning can help"))
    return Diagnostics(table=table, parameters=params, sampler=stats, problems=problems,
                       thresholds=thresholds)


def warn_if_problems(fit) -> Diagnostics | None:
    """Run :func:`diagnostics` and emit one loud :class:`ConvergenceWarning` listing each problem.

    Called after every ``Model.fit``. Returns the diagnostics (None if they could not be computed,
    which itself warns).
    """
    try:
        d = diagnostics(fit)
    except Exception as exc:  # never lose a fit because a check failed to run
        warnings.warn(f"bayeslmm could not compute convergence diagnostics ({type(exc).__name__}: "
                      f"{exc}); check the fit with arviz (az.summary, az.plot_trace).",
                      ConvergenceWarning, stacklevel=3)
        return None
    if not d.ok:
        warnings.warn("\n" + "!" * 72 + "\nbayeslmm: THE FIT HAS CONVERGENCE PROBLEMS; do not trust "
                      "its results yet.\n" + d.message() + "\n" + "!" * 72,
                      ConvergenceWarning, stacklevel=3)
    return d


# -- log-likelihood, LOO and model comparison --------------------------------------------------

def _mu_chunks(fit, max_elems: int = 20_000_000):
    """Yield (chain, draw slice, eta) with the linear predictor eta of shape (draws_in_chunk, n):
    X b + sum Z r[codes] (+ offset)."""
    design = fit.design
    post = fit.posterior
    b = post["b"].transpose("chain", "draw", "term").to_numpy()
    rs = [(f, post[r_var(f.name)].transpose("chain", "draw", level_dim(f.name), term_dim(f.name)).to_numpy())
          for f in design.factors]
    n = design.n
    step = max(1, max_elems // max(n * max([1] + [f.q for f in design.factors]), 1))
    C, D = b.shape[:2]
    for c in range(C):
        for d0 in range(0, D, step):
            sl = slice(d0, min(D, d0 + step))
            eta = linear_predictor(design.X, b[c, sl], [(f.Z, f.codes, r[c, sl]) for f, r in rs])
            yield c, sl, (eta if design.offset is None else eta + design.offset)


def pointwise_log_likelihood(fit) -> xr.DataArray:
    """Conditional log-likelihood of each observation given each draw: dims (chain, draw, obs).

    The family's log-density of ``y_i`` at the linear predictor ``X_i b + sum_g Z_gi r_g[g_i]``
    (+ offset; gaussian: ``log N(y_i | ., sigma)``, binomial with the row's trials), computed in numpy from the posterior draws, so it works on fits from
    either sampling path. Memory: chains x draws x n floats. Cached on the fit (not saved with it):
    the fit's posterior never changes.

    Examples
    --------
    >>> ll = pointwise_log_likelihood(fit)                             # doctest: +SKIP
    >>> ll.dims                                                         # doctest: +SKIP
    ('chain', 'draw', 'obs')
    """
    cache = getattr(fit, "_cache", None)
    if cache is not None and "log_likelihood" in cache:
        return cache["log_likelihood"]
    family = family_of(fit.spec)
    post = fit.posterior
    aux = {a: post[a].transpose("chain", "draw").to_numpy() for a in family.aux_names}
    y = fit.design.y
    C, D = post.sizes["chain"], post.sizes["draw"]
    out = np.empty((C, D, len(y)))
    chunks = _mu_chunks(fit)
    if C * D * len(y) > 2e7:          # long: a progress bar (chains x draws of the linear predictor)
        from tqdm.auto import tqdm
        chunks = tqdm(chunks, desc="bayeslmm: pointwise log-likelihood", unit="chunk", leave=False)
    for c, sl, mu in chunks:
        aux_cs = {a: v[c, sl][:, None] for a, v in aux.items()}
        out[c, sl] = (family.log_likelihood(y, mu, aux_cs, trials=fit.design.trials) if not family.known_se
                      else family.log_likelihood(y, mu, aux_cs, se=fit.design.se))
    if getattr(fit.design, "weights", None) is not None:     # likelihood weights: w_i log p(y_i | .)
        out *= fit.design.weights
    ll = xr.DataArray(out, dims=("chain", "draw", "obs"),
                      coords={"chain": post["chain"].values, "draw": post["draw"].values,
                              "obs": np.arange(len(y))}, name="y")
    if cache is not None:
        cache["log_likelihood"] = ll
    return ll


def log_likelihood_tree(fit) -> xr.DataTree:
    """A new DataTree: the fit's groups plus ``log_likelihood`` (variable ``y``), for ``az.loo`` /
    ``az.compare``. ``fit.idata`` is not changed."""
    tree = xr.DataTree.from_dict({k: fit.idata[k].to_dataset() for k in fit.idata.children})
    tree.attrs = dict(fit.idata.attrs)
    tree["log_likelihood"] = xr.DataTree(xr.Dataset({"y": pointwise_log_likelihood(fit)}))
    return tree


def add_log_likelihood(fit, *, overwrite: bool = False) -> xr.DataTree:
    """Store the pointwise log-likelihood as group ``log_likelihood`` (variable ``y``) in ``fit.idata``.

    This changes the fit (and what :meth:`~bayeslmm.Fit.save` writes); :func:`loo` and
    :func:`compare` do not need it. Returns the DataTree.
    """
    if "log_likelihood" not in fit.idata.children or overwrite:
        fit.idata["log_likelihood"] = xr.DataTree(xr.Dataset({"y": pointwise_log_likelihood(fit)}))
    return fit.idata


def loo(fit, **kwargs):
    """PSIS-LOO of a fit (``az.loo`` on the conditional pointwise log-likelihood).

    Conditional LOO leaves out one observation but keeps its group's effect; Pareto k values above
    0.7 are common for small groups. Keyword arguments go to ``arviz.loo``. The fit is not changed.

    Examples
    --------
    >>> fit.loo().elpd                                                  # doctest: +SKIP
    """
    import arviz as az
    return az.loo(log_likelihood_tree(fit), var_name="y", **kwargs)


def compare(fits: dict, **kwargs) -> pd.DataFrame:
    """Rank fits by expected log predictive density (``az.compare`` on their PSIS-LOO).

    Available as ``bayeslmm.compare``. Each fit's pointwise log-likelihood is the conditional one
    (group effects kept), so this is leave-one-observation-out: it asks which model predicts a
    new observation of a group already seen. A difference ``elpd_diff`` of a few ``dse`` (its
    standard error) or more is a clear preference; within about 2 ``dse`` the models predict
    about equally well.

    Parameters
    ----------
    fits : dict
        ``{name: Fit}``; all fitted to the same observations (same rows, same response).
    **kwargs
        Passed to ``az.compare``; ``round_to`` defaults to ``"none"`` (unrounded ELPDs).

    Returns
    -------
    Table
        One row per fit, best first: ``rank``, ``elpd`` (higher is better), ``p`` (effective
        number of parameters), ``elpd_diff`` (to the best), ``weight`` (stacking weight), ``se``,
        ``dse`` (standard error of the difference), ``warning`` (True when Pareto k values are
        high: the estimate is unreliable for that fit).

    Examples
    --------
    >>> import bayeslmm as blmm
    >>> blmm.compare({"intercept": fit1, "slope": fit2})                # doctest: +SKIP
    """
    if len(fits) < 2:
        raise BayesLMMError(f"compare needs at least two fits in a dict {{name: fit}}; got {len(fits)}.")
    ns = {k: f.design.n for k, f in fits.items()}
    if len(set(ns.values())) != 1:
        raise BayesLMMError(f"compare needs fits to the same observations; the numbers of rows differ: {ns}.")
    kwargs.setdefault("round_to", "none")  # ArviZ rounds to 2 significant digits by default
    import arviz as az
    from .tables import as_table
    return as_table(az.compare({k: log_likelihood_tree(f) for k, f in fits.items()}, var_name="y", **kwargs))


def posterior_predictive(fit, *, num_draws: int = 100, seed: int = 0) -> xr.DataTree:
    """Replicated data sets from the posterior, for posterior predictive checks.

    Returns a DataTree with ``posterior_predictive`` (variable ``y``, dims chain=1, draw, obs) and
    ``observed_data``, the layout ``arviz.plot_ppc_dist`` expects. ``num_draws`` posterior draws
    are chosen at random (seeded).
    """
    family = family_of(fit.spec)
    rng = np.random.default_rng(seed)
    post = fit.posterior
    C, D = post.sizes["chain"], post.sizes["draw"]
    pick = rng.choice(C * D, size=min(num_draws, C * D), replace=False)
    aux = {a: post[a].transpose("chain", "draw").to_numpy().reshape(-1)[pick][:, None] for a in family.aux_names}
    wanted, mus = set(int(i) for i in pick), {}
    for c, sl, mu in _mu_chunks(fit):
        for k, d in enumerate(range(sl.start, sl.stop)):
            if c * D + d in wanted:
                mus[c * D + d] = mu[k]
    mu = np.stack([mus[i] for i in pick])
    yrep = (family.draw(mu, aux, rng, trials=fit.design.trials) if not family.known_se else
            family.draw(mu, aux, rng, se=fit.design.se))
    obs = np.arange(fit.design.n)
    pp = xr.Dataset({"y": (("chain", "draw", "obs"), yrep[None])},
                    coords={"chain": [0], "draw": np.arange(len(pick)), "obs": obs})
    od = xr.Dataset({"y": (("obs",), fit.design.y)}, coords={"obs": obs})
    return xr.DataTree.from_dict({"posterior_predictive": pp, "observed_data": od})
