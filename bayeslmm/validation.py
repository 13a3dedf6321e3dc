"""Proof of correctness: simulation-based calibration (SBC) and agreement with peers.

``python -m bayeslmm.validation --out DIR`` (``make validate``) runs the full study; ``--quick``
runs a small version in a few minutes. Results: ``DIR/summary.json``, ``DIR/summary.md``, rank
histograms and ECDF-difference plots (``DIR/sbc_<case>_hist.png``, ``DIR/sbc_<case>_ecdf.png``)
and, unless ``--no-peers``, the peer comparisons (``DIR/peers.csv``, ``DIR/bambi.csv``) and the
Dyestuff prior-sensitivity example (``DIR/sensitivity_dyestuff.csv``), also as sections of
``summary.md``.

SBC (Talts, Betancourt, Simpson, Vehtari & Gelman 2018, arXiv:1804.06788): for each replicate,
draw parameters from the prior, simulate data with :mod:`bayeslmm.simulate`, sample the posterior,
thin it to ``L`` nearly independent draws and record the rank of the true value among them (0..L).
If the model, the sampler and the simulator agree, every parameter's ranks are uniform on 0..L.
Two tests per parameter:

* chi-square on ``bins`` equal-width bins of the ranks;
* the simultaneous ECDF band of Säilynoja, Bürkner & Vehtari (2022), Stat. Comput. 32:32: the
  ECDF of the ranks must stay inside a band whose *joint* coverage is ``1 - alpha`` (the band is
  calibrated by simulating uniform ranks). Its p-value is the share of uniform simulations whose
  most extreme pointwise binomial tail probability is at least as extreme as the observed one.

The predictors and groups of a case stay fixed across replicates and only ``y`` changes, and the
priors are set explicitly (they must not be rescaled to each simulated ``y``). So the model is
compiled once and reused: with nutpie, ``compiled.with_data(y_obs=...)`` samples a new data set in
about 0.1 s.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from .simulate import TrueParameters, draw_parameters, grouped_frame, parameter_labels, simulate_response

__all__ = ["SBCCase", "SBCResult", "sbc_cases", "run_sbc", "rank_statistics", "chisq_uniform",
           "ecdf_uniformity", "ecdf_band", "posterior_scalars", "plot_rank_histograms",
           "plot_ecdf_differences", "peer_comparison", "main"]

#: Explicit SBC priors, the same for every case (the data are on unit scale). Weakly informative
#: but proper, as SBC needs; half-normal SDs keep the prior mass away from the extreme funnels
#: whose divergences would bias any sampler.
SBC_PRIORS = (("Intercept", "normal(0, 2)"), ("b", "normal(0, 1)"), ("sd", "halfnormal(1)"),
              ("sigma", "halfnormal(1)"))


@dataclass(frozen=True)
class SBCCase:
    """One SBC configuration: a formula on a synthetic design, explicit priors and a sampling path.

    Attributes
    ----------
    name : str
    formula : str
        Over the columns of :func:`bayeslmm.simulate.grouped_frame` (``y``, ``x``, ``g``).
    n_groups, n_per_group : int
    method : {"noncentred", "marginal"}
    priors : tuple of (label, prior text)
    design_seed : int
        Seed of the (fixed) predictor values.
    simulate_priors : tuple of (label, prior text)
        Overrides of ``priors`` used only to *draw the truth* (empty: the fitted priors). A
        mismatch makes a deliberately miscalibrated case: a negative control that SBC must flag.
    x_mean : float
        Added to the standard-normal predictor ``x``. Non-zero, it makes the convention of the
        Intercept prior (at centred predictors) matter, so SBC checks it.
    """

    name: str
    formula: str
    n_groups: int
    n_per_group: int
    method: str = "noncentred"
    priors: tuple = SBC_PRIORS
    design_seed: int = 20261126
    simulate_priors: tuple = ()
    x_mean: float = 0.0

    def model(self, *, simulator: bool = False):
        """The :class:`bayeslmm.Model` on the case's fixed synthetic design (y is a placeholder).

        ``simulator=True`` applies ``simulate_priors`` (the priors the truth is drawn from).
        """
        from .model import Model
        df = grouped_frame(self.n_groups, self.n_per_group, np.random.default_rng(self.design_seed))
        df["x"] = df["x"] + self.x_mean
        priors = dict(self.priors)
        if simulator:
            priors.update(dict(self.simulate_priors))
        return Model(self.formula, df, priors=priors, method=self.method)


def sbc_cases(methods=("noncentred", "marginal"), *, quick: bool = False) -> list[SBCCase]:
    """The standard study: random intercept and correlated intercept + slope, per method.

    Small designs on purpose: with 8-10 groups the posterior of the group SDs is far from normal
    and prior-sensitive, which is where calibration errors show. In the slope case ``x`` has mean
    about 1, so the Intercept (at x = 0) differs from the centred intercept its prior is on.
    """
    out = []
    for m in methods:
        out.append(SBCCase(f"intercept_{m}", "y ~ x + (1 | g)", n_groups=8, n_per_group=5, method=m))
        out.append(SBCCase(f"slope_{m}", "y ~ x + (1 + x | g)", n_groups=10, n_per_group=6, method=m,
                           x_mean=1.0))
    return out


# --------------------------------------------------------------------------------------------
# posterior draws of every scalar parameter
# --------------------------------------------------------------------------------------------
def tracked_labels(design) -> list[str]:
    """Parameters whose calibration is checked: every scalar parameter plus the first group's effects.

    The group effects of the first level (``r(g, <level>, <term>)``) check the random effects
    themselves, which on the marginal path are drawn after sampling from their exact conditional.
    """
    labels = parameter_labels(design)
    for f in design.factors:
        labels += [f"r({f.name}, {f.levels[0]}, {t})" for t in f.terms]
    return labels


def true_values(design, params: TrueParameters, effects: dict) -> dict[str, float]:
    out = params.flat(design)
    for f in design.factors:
        for k, t in enumerate(f.terms):
            out[f"r({f.name}, {f.levels[0]}, {t})"] = float(effects[f.name][0, k])
    return out


def posterior_scalars(posterior, design, labels: list[str] | None = None) -> dict[str, np.ndarray]:
    """Draws (chain, draw) of each tracked scalar from a posterior Dataset with bayeslmm's names."""
    labels = labels or tracked_labels(design)
    out = {}
    for t in design.fixed_terms:
        out[t] = np.asarray(posterior["b"].sel(term=t))
    for f in design.factors:
        sd = posterior[f"sd_{f.name}"]
        for t in f.terms:
            out[f"sd({f.name}, {t})"] = np.asarray(sd.sel({f"{f.name}__term": t}))
        for i, j in f.correlation_pairs:
            c = posterior[f"cor_{f.name}"].isel({f"{f.name}__term": i, f"{f.name}__term2": j})
            out[f"cor({f.name}, {f.terms[i]}, {f.terms[j]})"] = np.asarray(c)
        r = posterior[f"r_{f.name}"]
        for k, t in enumerate(f.terms):
            out[f"r({f.name}, {f.levels[0]}, {t})"] = np.asarray(
                r.isel({f"{f.name}__level": 0, f"{f.name}__term": k}))
    out["sigma"] = np.asarray(posterior["sigma"])
    return {k: out[k] for k in labels}


# --------------------------------------------------------------------------------------------
# refitting one structure many times
# --------------------------------------------------------------------------------------------
class _NutpieRefitter:
    """Compile the PyMC model once with nutpie; each replicate only swaps the data."""

    def __init__(self, pm_model, target_accept: float):
        import nutpie
        self._nutpie = nutpie
        self.compiled = nutpie.compile_pymc_model(pm_model)
        self.target_accept = target_accept

    def __call__(self, y, *, seed, chains, draws, tune):
        c = self.compiled.with_data(y_obs=y)
        tr = self._nutpie.sample(c, draws=draws, tune=tune, chains=chains, cores=1, seed=seed,
                                 progress_bar=False, target_accept=self.target_accept)
        post = tr["posterior"].to_dataset()
        div = int(np.asarray(tr["sample_stats"]["diverging"]).sum())
        return post, div


class _MarginalNutpieRefitter:
    """The exact marginal path (:mod:`bayeslmm.marginal`), compiled once with nutpie.

    The collapsed graph reads the sufficient statistics from named shared variables; a new ``y``
    changes ``b0``, ``Z'e``, ``X'e`` and ``e'e``, which are recomputed in numpy and swapped in with
    ``with_data``. The random effects are then drawn exactly from their conditional with
    :func:`bayeslmm.marginal.draw_group_effects`, as :func:`bayeslmm.marginal.sample_marginal` does.
    """

    def __init__(self, design, prior_table, target_accept: float):
        import nutpie

        from . import marginal
        self._nutpie, self._marginal = nutpie, marginal
        self.design = design
        self.chain, why = marginal.nesting_chain(design)
        if self.chain is None:
            raise ValueError(f"the marginal path does not apply: {why}")
        stats = marginal.marginal_stats(design, self.chain)
        self.compiled = nutpie.compile_pymc_model(
            marginal.build_marginal_model(design, prior_table, stats, sampler="nutpie"))
        self.known = {v.name for v in self.compiled.shared_var_keys}
        self.target_accept = target_accept

    def _updates(self, stats) -> dict:
        values = self._marginal.data_values(stats)
        missing = self.known - set(values)
        if missing:
            raise RuntimeError(f"no new values for the model's data {sorted(missing)}")
        return {k: v for k, v in values.items() if k in self.known}

    def __call__(self, y, *, seed, chains, draws, tune):
        import xarray as xr
        from dataclasses import replace

        from .graph import level_dim, term_dim
        m = self._marginal
        stats = m.marginal_stats(replace(self.design, y=np.asarray(y, dtype=float)), self.chain)
        c = self.compiled.with_data(**self._updates(stats))
        tr = self._nutpie.sample(c, draws=draws, tune=tune, chains=chains, cores=1, seed=seed,
                                 progress_bar=False, target_accept=self.target_accept)
        post = tr["posterior"].to_dataset()
        flat = {v: post[v].stack(sample=("chain", "draw")).transpose("sample", ...).to_numpy()
                for v in post.data_vars}
        sds, cors = [], []
        for name, q in zip(stats.names, stats.q):
            sds.append(flat[f"sd_{name}"])
            cors.append(flat[f"cor_{name}"] if f"cor_{name}" in flat
                        else np.broadcast_to(np.eye(q), (len(flat["sigma"]), q, q)))
        effects = m.draw_group_effects(stats, flat["b"], sds, cors, flat["sigma"], seed)
        nc, nd = post.sizes["chain"], post.sizes["draw"]
        new = {f"r_{f.name}": xr.DataArray(eff.reshape(nc, nd, f.n_levels, f.q),
                                           dims=("chain", "draw", level_dim(f.name), term_dim(f.name)))
               for f, eff in zip(self.chain, effects)}
        post = post.assign(new)
        return post, int(np.asarray(tr["sample_stats"]["diverging"]).sum())


class _PymcRefitter:
    """PyMC's NUTS with ``pm.set_data`` (recompiles each call from a warm cache: seconds)."""

    def __init__(self, pm_model, target_accept: float, var_names):
        self.model = pm_model
        self.target_accept = target_accept
        self.var_names = var_names

    def __call__(self, y, *, seed, chains, draws, tune):
        import pymc as pm
        with self.model:
            pm.set_data({"y_obs": y})
            idata = pm.sample(draws=draws, tune=tune, chains=chains, cores=1, random_seed=seed,
                              progressbar=False, nuts_sampler="pymc", var_names=self.var_names,
                              target_accept=self.target_accept, compute_convergence_checks=False)
        return idata["posterior"].to_dataset(), int(np.asarray(idata["sample_stats"]["diverging"]).sum())


class _ModelRefitter:
    """The public path: a new ``Model(...).fit(...)`` per replicate (slowest, most faithful)."""

    def __init__(self, model, method: str, target_accept: float):
        self.model = model
        self.method = method
        self.target_accept = target_accept

    def __call__(self, y, *, seed, chains, draws, tune):
        from .model import Model
        frame = self.model.design.frame.copy()
        frame[self.model.design.response] = y
        m = Model(self.model.spec, frame)
        fit = m.fit(chains=chains, draws=draws, tune=tune, seed=seed, progressbar=False,
                    method=self.method, verbose=False, cores=1, target_accept=self.target_accept)
        ss = fit.idata["sample_stats"]
        div = int(np.asarray(ss["diverging"]).sum()) if "diverging" in ss else 0
        return fit.posterior, div


def make_refitter(model, method: str, *, engine: str = "auto", target_accept: float = 0.9):
    """A callable ``(y, seed=, chains=, draws=, tune=) -> (posterior Dataset, n_divergent)``.

    ``engine``: ``"nutpie"`` (compile once, swap data; the default where nutpie is installed),
    ``"pymc"`` (PyMC's NUTS with ``pm.set_data``) or ``"model"`` (``Model.fit`` per replicate).
    The graph sampled is always the package's own (:func:`bayeslmm.graph.build_model`, or
    ``bayeslmm.marginal``'s model); only the NUTS implementation differs.
    """
    import importlib.util
    if engine == "auto":
        engine = "nutpie" if importlib.util.find_spec("nutpie") else "pymc"
    if engine == "model":
        return _ModelRefitter(model, method, target_accept), engine
    if method == "marginal":
        if engine == "nutpie":
            return _MarginalNutpieRefitter(model.design, model.prior_table, target_accept), engine
        return _ModelRefitter(model, method, target_accept), "model"
    from .graph import build_model, stored_var_names
    pm_model = build_model(model.design, model.prior_table)
    if engine == "nutpie":
        return _NutpieRefitter(pm_model, target_accept), engine
    return _PymcRefitter(pm_model, target_accept, stored_var_names(model.design)), engine


# --------------------------------------------------------------------------------------------
# the SBC loop
# --------------------------------------------------------------------------------------------
@dataclass
class SBCResult:
    """Ranks and per-replicate diagnostics of one SBC case.

    Attributes
    ----------
    case : SBCCase
    ranks : DataFrame
        One row per replicate, one column per tracked parameter, integer ranks in ``0..n_ranks``.
    n_ranks : int
        ``L``: posterior draws kept per replicate (ranks take ``L + 1`` values).
    diagnostics : DataFrame
        Per replicate: divergences, share of divergent transitions, minimum bulk ESS over the
        tracked parameters, seconds.
    truths : DataFrame
        The true values drawn from the prior.
    """

    case: SBCCase
    ranks: pd.DataFrame
    n_ranks: int
    diagnostics: pd.DataFrame
    truths: pd.DataFrame
    engine: str = ""
    setup_s: float = 0.0
    info: dict = field(default_factory=dict)

    @property
    def n_replicates(self) -> int:
        return len(self.ranks)

    def statistics(self, bins: int | None = None, alpha: float = 0.01, seed: int = 0) -> pd.DataFrame:
        """Per parameter: chi-square and ECDF p-values; see :func:`rank_statistics`."""
        return rank_statistics(self.ranks, self.n_ranks, bins=bins, alpha=alpha, seed=seed)


def _thin(x: np.ndarray, n_keep: int) -> np.ndarray:
    """``n_keep`` evenly spaced draws across chains from a (chain, draw) array."""
    chains, draws = x.shape
    per = [n_keep // chains + (1 if c < n_keep % chains else 0) for c in range(chains)]
    parts = [x[c, np.linspace(0, draws - 1, per[c]).round().astype(int)] for c in range(chains)]
    return np.concatenate(parts)


def run_sbc(case: SBCCase, n_replicates: int, *, seed: int = 1, chains: int = 2, draws: int = 1000,
            tune: int = 500, n_ranks: int = 99, engine: str = "auto", target_accept: float = 0.9,
            progress: bool = False, refitter=None) -> SBCResult:
    """Simulation-based calibration of one case.

    Parameters
    ----------
    case : SBCCase
    n_replicates : int
        Number of simulated data sets.
    seed : int
        Seeds the parameter draws, the simulations and the samplers (replicate ``i`` uses
        ``SeedSequence([seed, i])``), so a run is reproducible.
    chains, draws, tune : int
        NUTS settings per replicate. ``chains * draws`` draws are thinned to ``n_ranks`` evenly
        spaced ones (default 2 x 1000 -> 99, a stride of ~20, so that the kept draws are nearly
        independent, as the rank statistic assumes; the minimum bulk ESS is recorded to check).
    n_ranks : int
        ``L``; ranks take values ``0..L``.
    engine : str
        See :func:`make_refitter`.
    refitter : tuple, optional
        ``(callable, engine name)`` from :func:`make_refitter` for the same case structure and
        fitted priors, to reuse one compiled model across calls.

    Returns
    -------
    SBCResult
    """
    import arviz as az

    if chains * draws < n_ranks:
        raise ValueError(f"chains * draws = {chains * draws} must be >= n_ranks = {n_ranks}")
    model = case.model()
    design = model.design
    priors = case.model(simulator=True).prior_table if case.simulate_priors else model.prior_table
    labels = tracked_labels(design)
    t0 = time.perf_counter()
    refit, engine_used = refitter or make_refitter(model, case.method, engine=engine,
                                                   target_accept=target_accept)
    setup_s = time.perf_counter() - t0
    ranks, diag, truths = [], [], []
    for i in range(n_replicates):
        ss = np.random.SeedSequence([seed, i])
        rng = np.random.default_rng(ss)
        params = draw_parameters(priors, design, rng)
        y, effects = simulate_response(design, params, rng)
        truth = true_values(design, params, effects)
        t1 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            post, n_div = refit(y, seed=int(ss.generate_state(1)[0] % (2**31 - 1)), chains=chains,
                                draws=draws, tune=tune)
        elapsed = time.perf_counter() - t1
        draws_by = posterior_scalars(post, design, labels)
        ranks.append({k: int(np.sum(_thin(v, n_ranks) < truth[k])) for k, v in draws_by.items()})
        ess = az.ess(np.stack([draws_by[k] for k in labels], axis=-1))
        diag.append({"divergences": n_div, "divergent_share": n_div / (chains * draws),
                     "min_ess_bulk": float(np.nanmin(np.asarray(ess))), "seconds": elapsed})
        truths.append(truth)
        if progress and (i + 1) % max(1, n_replicates // 10) == 0:
            print(f"  {case.name}: {i + 1}/{n_replicates} replicates", flush=True)
    return SBCResult(case, pd.DataFrame(ranks, columns=labels), n_ranks, pd.DataFrame(diag),
                     pd.DataFrame(truths, columns=labels), engine=engine_used, setup_s=setup_s,
                     info={"seed": seed, "chains": chains, "draws": draws, "tune": tune,
                           "target_accept": target_accept})


# --------------------------------------------------------------------------------------------
# uniformity tests
# --------------------------------------------------------------------------------------------
def _default_bins(n_values: int, n: int) -> int:
    """Largest divisor of ``n_values`` (L + 1) up to 20 with >= 5 expected ranks per bin."""
    cands = [b for b in range(2, 21) if n_values % b == 0 and n / b >= 5]
    return max(cands) if cands else 2


def chisq_uniform(ranks: np.ndarray, n_ranks: int, bins: int | None = None) -> tuple[float, float, int]:
    """Chi-square test that integer ranks are uniform on ``0..n_ranks``.

    ``bins`` must divide ``n_ranks + 1`` so that every bin holds the same number of rank values
    (default: the largest such divisor <= 20 with >= 5 expected counts per bin).

    Returns
    -------
    (statistic, p_value, bins)
    """
    ranks = np.asarray(ranks, dtype=int)
    n_values = n_ranks + 1
    bins = bins or _default_bins(n_values, len(ranks))
    if n_values % bins:
        raise ValueError(f"bins={bins} must divide n_ranks + 1 = {n_values}")
    counts = np.bincount(ranks * bins // n_values, minlength=bins)
    res = stats.chisquare(counts)
    return float(res.statistic), float(res.pvalue), bins


def _pointwise_extremeness(counts_below: np.ndarray, n: int, z: np.ndarray) -> np.ndarray:
    """Two-sided binomial tail probability of each ECDF point; min over points along the last axis."""
    lo = stats.binom.cdf(counts_below, n, z)
    hi = stats.binom.sf(counts_below - 1, n, z)
    return np.minimum(1.0, 2.0 * np.minimum(lo, hi)).min(axis=-1)


def _ecdf_counts(ranks: np.ndarray, n_ranks: int) -> np.ndarray:
    """Number of ranks < k for k = 1..L (the ECDF of fractional ranks at z_k = k / (L+1))."""
    c = np.bincount(np.asarray(ranks, dtype=int), minlength=n_ranks + 1)
    return np.cumsum(c)[:-1]


def _uniform_minima(n: int, n_ranks: int, n_sim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = np.arange(1, n_ranks + 1) / (n_ranks + 1)
    sims = rng.integers(0, n_ranks + 1, size=(n_sim, n))
    counts = np.stack([_ecdf_counts(s, n_ranks) for s in sims])
    return _pointwise_extremeness(counts, n, z)


def ecdf_band(n: int, n_ranks: int, alpha: float = 0.01, n_sim: int = 2000, seed: int = 0):
    """Simultaneous ``1 - alpha`` band for the ECDF of ``n`` uniform ranks on ``0..n_ranks``.

    Säilynoja, Bürkner & Vehtari (2022), "Graphical test for discrete uniformity and its
    applications in goodness-of-fit evaluation and multiple sample comparison", Stat. Comput. 32:32:
    the pointwise level ``gamma`` is the ``alpha`` quantile, over uniform simulations, of the most
    extreme pointwise binomial tail probability; the band is the pointwise binomial interval at
    ``gamma``.

    Returns
    -------
    (z, lower, upper, gamma) : evaluation points z_k = k/(L+1) and the band for ECDF(z) - z.
    """
    z = np.arange(1, n_ranks + 1) / (n_ranks + 1)
    gamma = float(np.quantile(_uniform_minima(n, n_ranks, n_sim, seed), alpha))
    lower = stats.binom.ppf(gamma / 2, n, z) / n - z
    upper = stats.binom.ppf(1 - gamma / 2, n, z) / n - z
    return z, lower, upper, gamma


def ecdf_uniformity(ranks: np.ndarray, n_ranks: int, n_sim: int = 2000, seed: int = 0,
                    minima: np.ndarray | None = None) -> float:
    """p-value of the simultaneous ECDF test (share of uniform simulations at least as extreme)."""
    ranks = np.asarray(ranks, dtype=int)
    n = len(ranks)
    z = np.arange(1, n_ranks + 1) / (n_ranks + 1)
    obs = _pointwise_extremeness(_ecdf_counts(ranks, n_ranks)[None, :], n, z)[0]
    if minima is None:
        minima = _uniform_minima(n, n_ranks, n_sim, seed)
    return float((np.sum(minima <= obs) + 1) / (len(minima) + 1))


def rank_statistics(ranks: pd.DataFrame, n_ranks: int, *, bins: int | None = None, alpha: float = 0.01,
                    n_sim: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Uniformity tests for every column of ``ranks``.

    Columns: ``chisq``, ``chisq_p``, ``bins``, ``ecdf_p``, and ``holm_reject``: whether the parameter
    fails at family-wise level ``alpha`` after a Holm correction over all 2 x (number of parameters)
    p-values of the case (so a calibrated case is flagged with probability <= ``alpha``).
    """
    minima = _uniform_minima(len(ranks), n_ranks, n_sim, seed)
    rows = []
    for col in ranks.columns:
        stat, p, b = chisq_uniform(ranks[col].to_numpy(), n_ranks, bins)
        rows.append({"parameter": col, "chisq": stat, "bins": b, "chisq_p": p,
                     "ecdf_p": ecdf_uniformity(ranks[col].to_numpy(), n_ranks, minima=minima)})
    tab = pd.DataFrame(rows).set_index("parameter")
    pv = np.concatenate([tab["chisq_p"].to_numpy(), tab["ecdf_p"].to_numpy()])
    rej = _holm(pv, alpha)
    k = len(tab)
    tab["holm_reject"] = rej[:k] | rej[k:]
    tab["min_p"] = np.minimum(tab["chisq_p"], tab["ecdf_p"])
    return tab


def _holm(p: np.ndarray, alpha: float) -> np.ndarray:
    order = np.argsort(p)
    m = len(p)
    reject = np.zeros(m, dtype=bool)
    for rank, idx in enumerate(order):
        if p[idx] <= alpha / (m - rank):
            reject[idx] = True
        else:
            break
    return reject


# --------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------
def _grid(n: int):
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    ncol = min(4, n)
    nrow = int(np.ceil(n / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.5 * nrow), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes.flat


def plot_rank_histograms(result: SBCResult, path=None, bins: int | None = None):
    """Rank histogram per parameter with the central 99% band of a uniform bin count."""
    n = result.n_replicates
    if bins is None:  # >= 10 expected ranks per bin, so the 99% band is informative
        cands = [b for b in range(2, 21) if (result.n_ranks + 1) % b == 0 and n / b >= 10]
        bins = max(cands) if cands else 2
    fig, axes = _grid(result.ranks.shape[1])
    for ax, col in zip(axes, result.ranks.columns):
        _, p, b = chisq_uniform(result.ranks[col], result.n_ranks, bins)
        lo, hi = stats.binom.ppf([0.005, 0.995], n, 1 / b)
        ax.axhspan(lo, hi, color="0.85")
        ax.axhline(n / b, color="0.5", lw=0.8)
        ax.hist(result.ranks[col], bins=np.linspace(0, result.n_ranks + 1, b + 1), color="C0",
                edgecolor="white")
        ax.set_title(f"{col}\nchi-square p={p:.2g} ({b} bins)", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"SBC rank histograms: {result.case.name} ({result.case.formula}), "
                 f"{n} replicates, L={result.n_ranks}; grey: 99% band per bin", fontsize=9)
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=110)
    return fig


def plot_ecdf_differences(result: SBCResult, path=None, alpha: float = 0.01):
    """ECDF(rank) - uniform CDF per parameter, inside the simultaneous ``1 - alpha`` band."""
    n = result.n_replicates
    z, lower, upper, _ = ecdf_band(n, result.n_ranks, alpha)
    fig, axes = _grid(result.ranks.shape[1])
    for ax, col in zip(axes, result.ranks.columns):
        diff = _ecdf_counts(result.ranks[col], result.n_ranks) / n - z
        ax.fill_between(z, lower, upper, step="mid", color="0.85")
        ax.step(z, diff, where="mid", color="C0")
        ax.axhline(0, color="0.5", lw=0.8)
        ax.set_title(col, fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"SBC ECDF differences: {result.case.name}, {n} replicates; grey: simultaneous "
                 f"{100 * (1 - alpha):.0f}% band", fontsize=9)
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=110)
    return fig


# --------------------------------------------------------------------------------------------
# peers
# --------------------------------------------------------------------------------------------
#: Data sets and formulas of the peer comparison (statsmodels MixedLM).
PEER_MODELS = (
    ("sleepstudy", "Reaction ~ Days + (Days | Subject)"),
    ("Dyestuff", "Yield ~ 1 + (1 | Batch)"),
    ("radon_mn", "log_radon ~ floor_measure + (1 | county_idx)"),
)


def statsmodels_fit(data: pd.DataFrame, formula: str, reml: bool = True) -> dict[str, float]:
    """Point estimates from statsmodels MixedLM keyed by bayeslmm labels (one grouping factor).

    Fixed effects by term name, ``sd(g, term)``, ``cor(g, t1, t2)`` and ``sigma``.
    """
    import statsmodels.formula.api as smf

    from .formula import parse_formula
    f = parse_formula(formula)
    if len(f.random) != 1:
        raise ValueError("statsmodels_fit handles one grouping factor")
    term = f.random[0]
    expr = term.expr.strip()
    re_formula = None if expr == "1" else "~" + expr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        md = smf.mixedlm(f"{f.response} ~ {f.fixed}", data, groups=data[term.group], re_formula=re_formula)
        # statsmodels' gradient optimisers can stop short of a boundary (a zero SD) without
        # converging; try several and keep the best converged optimum
        fits = []
        for method in ("bfgs", "lbfgs", "powell", "nm"):
            try:
                r = md.fit(reml=reml, method=method)
            except (np.linalg.LinAlgError, ValueError):
                continue
            if np.isfinite(r.llf):
                fits.append((bool(r.converged), float(r.llf), method, r))
        if not fits:
            raise RuntimeError(f"statsmodels MixedLM failed on {formula!r} with every optimiser")
        res = max(fits, key=lambda t: (t[0], t[1]))[3]
    out = {("Intercept" if k == "Intercept" else k): float(v) for k, v in res.fe_params.items()}
    cov = np.asarray(res.cov_re)
    names = ["Intercept" if n in ("Group", "Intercept") else n for n in res.cov_re.index]
    sds = np.sqrt(np.diag(cov))
    for i, n in enumerate(names):
        out[f"sd({term.group}, {n})"] = float(sds[i])
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            out[f"cor({term.group}, {names[i]}, {names[j]})"] = float(cov[i, j] / (sds[i] * sds[j]))
    out["sigma"] = float(np.sqrt(res.scale))
    return out


def peer_comparison(fit, data: pd.DataFrame, formula: str) -> pd.DataFrame:
    """Posterior of a fit next to statsmodels' REML and ML estimates.

    Columns: ``post_mean``, ``post_median``, ``post_sd``, ``mcse_mean``, ``hdi_lower``,
    ``hdi_upper``, ``reml``, ``ml``, ``diff_reml_sd`` = (posterior mean - REML) / posterior SD,
    ``diff_ml_sd``, ``reml_in_hdi``.
    """
    reml = statsmodels_fit(data, formula, reml=True)
    ml = statsmodels_fit(data, formula, reml=False)
    rows = []
    fixed = fit.summary()
    vc = fit.variance_components()
    med = {}
    post = fit.posterior
    for t in fit.design.fixed_terms:
        med[t] = float(post["b"].sel(term=t).median())
    for f in fit.design.factors:
        for t in f.terms:
            med[f"sd({f.name}, {t})"] = float(post[f"sd_{f.name}"].sel({f"{f.name}__term": t}).median())
    med["sigma"] = float(post["sigma"].median())
    for label, ref in reml.items():
        tab = fixed if label in fixed.index else vc
        if label not in tab.index:
            continue
        r = tab.loc[label]
        rows.append({"parameter": label, "post_mean": r["mean"], "post_median": med.get(label, np.nan),
                     "post_sd": r["sd"], "mcse_mean": r["mcse_mean"], "hdi_lower": r["hdi_lower"],
                     "hdi_upper": r["hdi_upper"], "reml": ref, "ml": ml[label]})
    tab = pd.DataFrame(rows).set_index("parameter")
    tab["diff_reml_sd"] = (tab["post_mean"] - tab["reml"]) / tab["post_sd"]
    tab["diff_ml_sd"] = (tab["post_mean"] - tab["ml"]) / tab["post_sd"]
    tab["reml_in_hdi"] = (tab["hdi_lower"] <= tab["reml"]) & (tab["reml"] <= tab["hdi_upper"])
    return tab


def bambi_comparison(data: pd.DataFrame, *, response: str, x: str, group: str, chains: int = 4,
                     draws: int = 1000, seed: int = 1) -> pd.DataFrame:
    """bayeslmm ``y ~ x + (x || g)`` against bambi ``y ~ x + (x | g)`` (uncorrelated) with the same priors.

    Priors on both sides: slope normal(0, 2.5 s_y / s_x), group SDs half-Student-t(3) scaled as in
    bayeslmm's defaults, sigma half-Student-t(3, s_y). The intercept gets a flat-ish normal(mean(y),
    2.5 s_y) prior: bayeslmm puts it at centred predictors and bambi (which also centres predictors
    by default) the same, so the priors are the same model.

    Returns
    -------
    DataFrame with, per parameter, both posterior means and MCSEs, the difference and
    ``z = diff / sqrt(mcse_a^2 + mcse_b^2)``.
    """
    import arviz as az
    import bambi as bmb

    from .model import Model
    m = Model(f"{response} ~ {x} + ({x} || {group})", data, method="noncentred")
    pt = m.prior_table
    k = lambda lab: pt[lab].prior.kwargs  # noqa: E731
    priors = {
        "Intercept": bmb.Prior("Normal", **k("Intercept")),
        x: bmb.Prior("Normal", **k(x)),
        f"1|{group}": bmb.Prior("Normal", mu=0, sigma=bmb.Prior("HalfStudentT", **k(f"sd({group}, Intercept)"))),
        f"{x}|{group}": bmb.Prior("Normal", mu=0, sigma=bmb.Prior("HalfStudentT", **k(f"sd({group}, {x})"))),
        "sigma": bmb.Prior("HalfStudentT", **k("sigma")),
    }
    t0 = time.perf_counter()
    fit = m.fit(chains=chains, draws=draws, tune=1000, seed=seed, progressbar=False, verbose=False)
    t_a = time.perf_counter() - t0
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bm = bmb.Model(f"{response} ~ {x} + ({x}|{group})", data, priors=priors, noncentered=True)
        tr = bm.fit(draws=draws, tune=1000, chains=chains, cores=min(chains, 2), random_seed=seed,
                    progressbar=False)
    t_b = time.perf_counter() - t0
    bpost = tr["posterior"].to_dataset()
    b_draws = {"Intercept": bpost["Intercept"], x: bpost[x],
               f"sd({group}, Intercept)": bpost[f"1|{group}_sigma"],
               f"sd({group}, {x})": bpost[f"{x}|{group}_sigma"], "sigma": bpost["sigma"]}
    a_tab = pd.concat([fit.summary(), fit.variance_components()])
    rows = []
    for lab, v in b_draws.items():
        v = v.drop_vars([c for c in v.coords if c not in ("chain", "draw")])
        mean_b = float(v.mean())
        mcse_b = float(np.asarray(az.mcse(v.to_numpy(), method="mean")))
        a = a_tab.loc[lab]
        diff = float(a["mean"]) - mean_b
        se = float(np.hypot(a["mcse_mean"], mcse_b))
        rows.append({"parameter": lab, "bayeslmm_mean": float(a["mean"]), "bayeslmm_mcse": float(a["mcse_mean"]),
                     "bambi_mean": mean_b, "bambi_mcse": mcse_b, "post_sd": float(a["sd"]),
                     "diff": diff, "z": diff / se})
    tab = pd.DataFrame(rows).set_index("parameter")
    tab.attrs.update({"bayeslmm_s": t_a, "bambi_s": t_b})
    return tab


# --------------------------------------------------------------------------------------------
# the study
# --------------------------------------------------------------------------------------------
def _available_methods() -> tuple[str, ...]:
    try:
        from . import marginal  # noqa: F401
    except ImportError:
        return ("noncentred",)
    return ("noncentred", "marginal")


def run_study(out: str | Path, *, quick: bool = False, replicates: int | None = None, seed: int = 1,
              methods: tuple[str, ...] | None = None, peers: bool = True, engine: str = "auto",
              alpha: float = 0.01) -> dict:
    """Run SBC for every case (and the peer comparisons), write plots and summaries to ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    methods = methods or _available_methods()
    n_rep = replicates or (100 if quick else 1000)
    summary: dict = {"replicates": n_rep, "seed": seed, "alpha": alpha, "methods": list(methods),
                     "cases": {}, "notes": [
                         "A logit GLMM SBC is not run: only the gaussian family exists so far."]}
    md = [f"# bayeslmm validation{' (quick)' if quick else ''}", "",
          f"SBC: {n_rep} replicates per case, L = 99 thinned draws (2 chains x 1000 after 500 "
          f"tuning steps), seed {seed}. A parameter fails when a chi-square or simultaneous-ECDF "
          f"test rejects at family-wise level {alpha} (Holm over all tests of the case).", ""]
    for case in sbc_cases(methods):
        print(f"SBC {case.name}: {case.formula}, {case.n_groups} groups x {case.n_per_group}, "
              f"{n_rep} replicates", flush=True)
        t0 = time.perf_counter()
        res = run_sbc(case, n_rep, seed=seed, engine=engine, progress=True)
        wall = time.perf_counter() - t0
        st = res.statistics(alpha=alpha)
        plot_rank_histograms(res, out / f"sbc_{case.name}_hist.png")
        plot_ecdf_differences(res, out / f"sbc_{case.name}_ecdf.png", alpha=alpha)
        res.ranks.to_csv(out / f"sbc_{case.name}_ranks.csv", index=False)
        d = res.diagnostics
        summary["cases"][case.name] = {
            "formula": case.formula, "method": case.method, "n_groups": case.n_groups,
            "n_per_group": case.n_per_group, "priors": dict(case.priors), "engine": res.engine,
            "replicates": res.n_replicates, "n_ranks": res.n_ranks, "wall_s": wall,
            "divergent_share_mean": float(d["divergent_share"].mean()),
            "replicates_with_divergences": int((d["divergences"] > 0).sum()),
            "min_ess_bulk_median": float(d["min_ess_bulk"].median()),
            "calibrated": bool(not st["holm_reject"].any()),
            "parameters": st.reset_index().to_dict(orient="records"),
        }
        md += [f"## {case.name}: `{case.formula}` ({case.method})", "",
               f"{res.n_replicates} replicates, {case.n_groups} groups x {case.n_per_group}, engine "
               f"{res.engine}, {wall:.0f} s. Divergent transitions: {100 * d['divergent_share'].mean():.2f}% "
               f"on average ({int((d['divergences'] > 0).sum())} replicates with any); median of the "
               f"minimum bulk ESS: {d['min_ess_bulk'].median():.0f}.", "",
               "| parameter | chi-square p | ECDF p | fails (Holm, family-wise 1%) |", "| --- | --- | --- | --- |"]
        md += [f"| {p} | {r.chisq_p:.3f} | {r.ecdf_p:.3f} | {'FAIL' if r.holm_reject else 'no'} |"
               for p, r in st.iterrows()]
        md.append("")
        print(st.round(4).to_string(), flush=True)
    if peers:
        md += _peer_section(out, summary, quick=quick)
        md += _sensitivity_section(out, summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=_json))
    (out / "summary.md").write_text("\n".join(md) + "\n")
    print(f"wrote {out / 'summary.md'}, {out / 'summary.json'} and plots in {out}")
    return summary


def _peer_section(out: Path, summary: dict, quick: bool) -> list[str]:
    from .datasets import load_dataset
    from .model import Model
    md = ["## Peers: statsmodels MixedLM (REML and ML)", "",
          "| data | parameter | posterior mean (sd) | REML | ML | (mean - REML) / sd | REML in 95% HDI |",
          "| --- | --- | --- | --- | --- | --- | --- |"]
    tabs = []
    summary["peers"] = {}
    for name, formula in PEER_MODELS:
        data = load_dataset(name)
        if name == "radon_mn":
            data = data.assign(county_idx=data["county_idx"].astype(str))
        fit = Model(formula, data).fit(chains=4, draws=1000, tune=1000, seed=1, progressbar=False,
                                       verbose=False)
        tab = peer_comparison(fit, data, formula)
        tab.insert(0, "data", name)
        tabs.append(tab)
        summary["peers"][name] = tab.reset_index().to_dict(orient="records")
        md += [f"| {name} | {p} | {r.post_mean:.4g} ({r.post_sd:.3g}) | {r.reml:.4g} | {r.ml:.4g} | "
               f"{r.diff_reml_sd:+.2f} | {'yes' if r.reml_in_hdi else 'no'} |" for p, r in tab.iterrows()]
    pd.concat(tabs).to_csv(out / "peers.csv")
    md.append("")
    try:
        import bambi  # noqa: F401
    except ImportError:
        md.append("bambi is not installed: comparison skipped.")
        return md
    from .datasets import load_dataset as _ld
    tab = bambi_comparison(_ld("sleepstudy"), response="Reaction", x="Days", group="Subject",
                           draws=1000 if quick else 2000)
    tab.to_csv(out / "bambi.csv")
    summary["bambi"] = tab.reset_index().to_dict(orient="records")
    summary["bambi_seconds"] = dict(tab.attrs)
    md += ["## Peers: bambi, `Reaction ~ Days + (Days || Subject)` vs bambi `(Days|Subject)`, same priors", "",
           "| parameter | bayeslmm mean (MCSE) | bambi mean (MCSE) | difference | z |", "| --- | --- | --- | --- | --- |"]
    md += [f"| {p} | {r.bayeslmm_mean:.4g} ({r.bayeslmm_mcse:.2g}) | {r.bambi_mean:.4g} ({r.bambi_mcse:.2g}) | "
           f"{r['diff']:+.3g} | {r.z:+.2f} |" for p, r in tab.iterrows()]
    md.append("")
    return md


def _sensitivity_section(out: Path, summary: dict) -> list[str]:
    """Dyestuff (6 batches): how the variance components move when the SD prior is halved/doubled."""
    from .datasets import load_dataset
    from .model import Model
    fit = Model("Yield ~ 1 + (1 | Batch)", load_dataset("Dyestuff")).fit(
        chains=4, draws=1000, tune=1000, seed=1, progressbar=False, verbose=False)
    tab = fit.prior_sensitivity(scales=(0.5, 2.0))
    tab.to_csv(out / "sensitivity_dyestuff.csv")
    summary["sensitivity_dyestuff"] = tab.reset_index().to_dict(orient="records")
    md = ["## Prior sensitivity: Dyestuff `Yield ~ 1 + (1 | Batch)`, SD prior scale x 0.5 / x 2", "",
          "| parameter | scale | prior | posterior mean (sd) | shift / posterior sd | sensitive |",
          "| --- | --- | --- | --- | --- | --- |"]
    md += [f"| {p} | {r.scale:g} | {r.prior} | {r['mean']:.4g} ({r.sd:.3g}) | {r.shift_sd:+.2f} | "
           f"{'yes' if r.sensitive else 'no'} |" for p, r in tab.sort_values("scale").iterrows()]
    md.append("")
    return md


def _json(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (np.bool_,)):
        return bool(o)
    return str(o)


def main(argv=None) -> int:
    """Command line: ``python -m bayeslmm.validation --out DIR [--quick]``."""
    p = argparse.ArgumentParser(prog="python -m bayeslmm.validation", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output folder for plots and summaries")
    p.add_argument("--quick", action="store_true", help="100 replicates per case instead of 1000")
    p.add_argument("--replicates", type=int, default=None, help="replicates per case (overrides --quick)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--methods", default=None, help="comma-separated: noncentred,marginal (default: all available)")
    p.add_argument("--engine", default="auto", choices=["auto", "nutpie", "pymc", "model"])
    p.add_argument("--no-peers", action="store_true",
                   help="skip the statsmodels / bambi comparisons and the prior-sensitivity example")
    a = p.parse_args(argv)
    methods = tuple(a.methods.split(",")) if a.methods else None
    s = run_study(a.out, quick=a.quick, replicates=a.replicates, seed=a.seed, methods=methods,
                  peers=not a.no_peers, engine=a.engine)
    bad = [k for k, v in s["cases"].items() if not v["calibrated"]]
    if bad:
        print(f"calibration FAILED for: {', '.join(bad)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
