"""Simulation-based calibration: the SBC loop over replicates (Talts et al. 2018).

For each replicate: draw parameters from the prior, simulate data with :mod:`bayeslmm.simulate`,
sample the posterior (through :mod:`bayeslmm.validation.refit`), thin it to ``L`` nearly
independent draws and record the rank of the true value among them (0..L).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..posterior import component_draws, level_dim, r_var, term_dim
from ..simulate import (TrueParameters, draw_parameters, estimates_sigma, grouped_frame, parameter_labels,
                        simulate_response)
from .refit import make_refitter
from .uniformity import rank_statistics

__all__ = ["SBC_PRIORS", "GLMM_PRIORS", "SBCCase", "SBCResult", "sbc_cases", "crossed_cases", "family_cases", "run_sbc",
           "tracked_labels", "true_values", "posterior_scalars"]

#: Explicit SBC priors, the same for every case (the data are on unit scale). Weakly informative
#: but proper, as SBC needs; half-normal SDs keep the prior mass away from the extreme funnels
#: whose divergences would bias any sampler.
SBC_PRIORS = (("Intercept", "normal(0, 2)"), ("b", "normal(0, 1)"), ("sd", "halfnormal(1)"),
              ("sigma", "halfnormal(1)"))

#: Explicit SBC priors of the non-Gaussian families, per family (link scale; none depends on y).
GLMM_PRIORS = {
    "bernoulli": (("Intercept", "normal(0, 1.5)"), ("b", "normal(0, 1)"), ("sd", "halfnormal(1)")),
    "binomial": (("Intercept", "normal(0, 1.5)"), ("b", "normal(0, 1)"), ("sd", "halfnormal(1)")),
    "poisson": (("Intercept", "normal(1, 0.5)"), ("b", "normal(0, 0.5)"), ("sd", "halfnormal(0.5)")),
    "negbinomial": (("Intercept", "normal(1, 0.5)"), ("b", "normal(0, 0.5)"), ("sd", "halfnormal(0.5)"),
                    ("phi", "gamma(4, 1)")),
    "student_t": SBC_PRIORS + (("nu", "gamma(4, 0.5)"),),
}


@dataclass(frozen=True)
class SBCCase:
    """One SBC configuration: a formula on a synthetic design, explicit priors and a sampling path.

    Attributes
    ----------
    name : str
    formula : str
        Over the columns of :func:`bayeslmm.simulate.grouped_frame` (``y``, ``x``, ``g``).
    n_groups, n_per_group : int
    method : {"noncentred", "collapsed"}
    priors : tuple of (label, prior text)
    design_seed : int
        Seed of the (fixed) predictor values.
    simulate_priors : tuple of (label, prior text)
        Overrides of ``priors`` used only to *draw the truth* (empty: the fitted priors). A
        mismatch makes a deliberately miscalibrated case: a negative control that SBC must flag.
    x_mean : float
        Added to the standard-normal predictor ``x``. Non-zero, it makes the convention of the
        Intercept prior (at centred predictors) matter, so SBC checks it.
    family : str
        Response family (default gaussian); ``binomial`` gets a column ``n`` of ``trials`` trials.
    trials : int
        Trials per row of a binomial case.
    crossed_with : int
        If > 0, a second grouping column ``h`` with this many levels crossed with ``g`` (row k of
        each group sees level ``k % crossed_with``): a subjects x items design.
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
    family: str = "gaussian"
    trials: int = 6
    crossed_with: int = 0

    @property
    def aux_names(self) -> tuple[str, ...]:
        from ..families import get_family
        return get_family(self.family).aux_names

    def model(self, *, simulator: bool = False):
        """The :class:`bayeslmm.Model` on the case's fixed synthetic design (y is a placeholder).

        ``simulator=True`` applies ``simulate_priors`` (the priors the truth is drawn from).
        """
        from ..model import Model
        df = grouped_frame(self.n_groups, self.n_per_group, np.random.default_rng(self.design_seed))
        df["x"] = df["x"] + self.x_mean
        if self.crossed_with:
            df["h"] = [f"h{k % self.crossed_with}" for k in range(len(df))]
        kw = {}
        if self.family != "gaussian":           # a valid placeholder response for the family
            df["y"] = np.arange(len(df)) % 2
            if self.family == "binomial":
                df["n"] = self.trials
                kw["trials"] = "n"
        priors = dict(self.priors)
        if simulator:
            priors.update(dict(self.simulate_priors))
        return Model(self.formula, df, priors=priors, method=self.method, family=self.family, **kw)


def sbc_cases(methods=("noncentred", "collapsed"), *, quick: bool = False) -> list[SBCCase]:
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


def crossed_cases() -> list[SBCCase]:
    """The crossed design (issue 14) on the exact crossed collapsed path: ``y ~ x + (1 | g) + (1 | h)``,
    8 subjects x 6 items, every subject sees every item once (48 rows). Few levels on both factors,
    so both SD posteriors lean on their priors."""
    return [SBCCase("crossed_collapsed", "y ~ x + (1 | g) + (1 | h)", n_groups=8, n_per_group=6,
                    method="collapsed", crossed_with=6)]


def family_cases(families=("bernoulli", "binomial", "poisson", "negbinomial", "student_t"),
                 method: str = "noncentred") -> list[SBCCase]:
    """Random-intercept SBC cases of the non-Gaussian families (issue 12), on the non-centred graph
    (or ``method="collapsed"``: the quadrature path, names suffixed ``_quadrature``) with the
    explicit priors of :data:`GLMM_PRIORS`: ``y ~ x + (1 | g)``, 10 groups x 8 rows (binomial: 6
    trials a row)."""
    unknown = [f for f in families if f not in GLMM_PRIORS]
    if unknown:
        from ..errors import SpecError
        raise SpecError(f"no SBC case for famil{'y' if len(unknown) == 1 else 'ies'} {unknown}; "
                        f"choose from {list(GLMM_PRIORS)}")
    suffix = "" if method == "noncentred" else "_quadrature"
    return [SBCCase(f"intercept_{fam}{suffix}", "y ~ x + (1 | g)", n_groups=10, n_per_group=8,
                    method=method, priors=GLMM_PRIORS[fam], family=fam) for fam in families]


# --------------------------------------------------------------------------------------------
# posterior draws of every scalar parameter
# --------------------------------------------------------------------------------------------
def tracked_labels(design, aux_names: tuple[str, ...] | None = None) -> list[str]:
    """Parameters whose calibration is checked: every scalar parameter plus the first group's effects.

    The group effects of the first level (``r(g, <level>, <term>)``) check the random effects
    themselves, which on the collapsed path are drawn after sampling from their exact conditional.
    """
    labels = parameter_labels(design, aux_names)
    for f in design.factors:
        labels += [f"r({f.name}, {f.levels[0]}, {t})" for t in f.terms]
    return labels


def true_values(design, params: TrueParameters, effects: dict) -> dict[str, float]:
    out = params.flat(design)
    for f in design.factors:
        for k, t in enumerate(f.terms):
            out[f"r({f.name}, {f.levels[0]}, {t})"] = float(effects[f.name][0, k])
    return out


def posterior_scalars(posterior, design, labels: list[str] | None = None,
                      aux_names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """Draws (chain, draw) of each tracked scalar from a posterior Dataset (names: :mod:`bayeslmm.posterior`).

    ``aux_names`` default: ``("sigma",)``, none for known standard errors without sigma.
    """
    if aux_names is None:
        aux_names = ("sigma",) if estimates_sigma(design) else ()
    labels = labels or tracked_labels(design, aux_names)
    out = {t: np.asarray(posterior["b"].sel(term=t)) for t in design.fixed_terms}
    out.update({k: np.asarray(v) for k, v in component_draws(posterior, design, aux_names).items()})
    for f in design.factors:
        r = posterior[r_var(f.name)]
        for k, t in enumerate(f.terms):
            out[f"r({f.name}, {f.levels[0]}, {t})"] = np.asarray(
                r.isel({level_dim(f.name): 0, term_dim(f.name): k}))
    return {k: out[k] for k in labels}


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
        See :func:`bayeslmm.validation.refit.make_refitter`.
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
    labels = tracked_labels(design, case.aux_names)
    t0 = time.perf_counter()
    refit, engine_used = refitter or make_refitter(model, case.method, engine=engine,
                                                   target_accept=target_accept)
    setup_s = time.perf_counter() - t0
    ranks, diag, truths = [], [], []
    for i in range(n_replicates):
        ss = np.random.SeedSequence([seed, i])
        rng = np.random.default_rng(ss)
        params = draw_parameters(priors, design, rng)
        y, effects = simulate_response(design, params, rng, family=case.family)
        truth = true_values(design, params, effects)
        t1 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            post, n_div = refit(y, seed=int(ss.generate_state(1)[0] % (2**31 - 1)), chains=chains,
                                draws=draws, tune=tune)
        elapsed = time.perf_counter() - t1
        draws_by = posterior_scalars(post, design, labels, case.aux_names)
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
