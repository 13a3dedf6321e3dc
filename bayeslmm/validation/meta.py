"""Validation of the known-standard-error (meta-analysis) models: the exact eight-schools posterior
by numerical integration, and simulation-based calibration of a meta-regression on the collapsed
path.

* :func:`exact_meta_posterior`: p(mu, tau | y) for y_j ~ N(mu, tau^2 + s_j^2) on a grid (the
  likelihood is closed-form), with the moments and quantiles of mu and tau and the exact mixture
  moments of each study's effect theta_j = mu + r_j (normal given mu and tau, with precision
  1/s_j^2 + 1/tau^2 and mean (y_j/s_j^2 + mu/tau^2) / precision). Used by tests/test_meta.py and
  notebooks/06_eight_schools.ipynb.
* :class:`MetaSBCCase` / :func:`meta_sbc_case`: ``y | se(s) ~ x + (1 | study)`` on a fixed design
  (k studies with unequal standard errors); it has the interface :func:`~bayeslmm.validation.run_sbc`
  needs, so the SBC loop is the package's own.
* ``python -m bayeslmm.validation.meta --out docs/validation [--replicates 200]``: the study
  (rank histograms, ECDF plots, ``meta_summary.json`` / ``meta_summary.md``) plus the negative
  control (the truth's tau drawn from a wider prior than the model's), which must be flagged.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["exact_meta_posterior", "MetaSBCCase", "meta_sbc_case", "META_PRIORS", "run_meta_study"]

#: unit-scale priors of the SBC case (explicit and proper, as SBC needs)
META_PRIORS = (("Intercept", "normal(0, 2)"), ("b", "normal(0, 1)"), ("sd", "halfnormal(1)"))


def exact_meta_posterior(y, s, *, mu_sd: float = 5.0, tau_prior: str = "halfcauchy", tau_scale: float = 5.0,
                         mu_grid=(-30.0, 35.0, 1301), log_tau_grid=(np.log(1e-4), np.log(400.0), 1500)) -> dict:
    """Exact posterior summaries of the random-effects meta-analysis by 2-D numerical integration.

    Model: y_j ~ N(mu, tau^2 + s_j^2), mu ~ normal(0, mu_sd), tau ~ halfcauchy(tau_scale) or
    halfnormal(tau_scale). The grid is uniform in mu and in log tau (Jacobian tau).

    Returns
    -------
    dict
        ``"mu"``, ``"tau"``: (mean, sd); ``"mu_q<p>"``, ``"tau_q<p>"`` for p in 0.05, 0.5, 0.95;
        ``"theta_<j>"``: (mean, sd) of study j's effect; ``"grid"``: (mu, tau, weights) with weights
        summing to 1; ``"tau_density"``: (tau, marginal density of tau).
    """
    import scipy.stats as st
    y, s = np.asarray(y, dtype=float), np.asarray(s, dtype=float)
    mu = np.linspace(*mu_grid[:2], int(mu_grid[2]))
    u = np.linspace(*log_tau_grid[:2], int(log_tau_grid[2]))
    tau = np.exp(u)
    M, T = mu[:, None], tau[None, :]
    tau_pdf = {"halfcauchy": st.halfcauchy, "halfnormal": st.halfnorm}[tau_prior]
    logp = st.norm.logpdf(M, 0, mu_sd) + tau_pdf.logpdf(T, scale=tau_scale) + np.log(T)
    for yj, sj in zip(y, s):
        logp = logp + st.norm.logpdf(yj, M, np.sqrt(T**2 + sj**2))
    w = np.exp(logp - logp.max()) * np.outer(np.gradient(mu), np.gradient(u))
    w /= w.sum()
    out: dict = {"grid": (mu, tau, w)}

    def moments(g):
        m1 = float((w * g).sum())
        return m1, float(np.sqrt(max((w * g**2).sum() - m1**2, 0.0)))

    out["mu"], out["tau"] = moments(M + 0 * T), moments(T + 0 * M)
    for name, marg, grid in (("mu", w.sum(axis=1), mu), ("tau", w.sum(axis=0), tau)):
        cdf = np.cumsum(marg) - 0.5 * marg
        for p in (0.05, 0.5, 0.95):
            out[f"{name}_q{p}"] = float(np.interp(p, cdf, grid))
    out["tau_density"] = (tau, w.sum(axis=0) / np.gradient(u) / tau)
    for j, (yj, sj) in enumerate(zip(y, s)):
        prec = 1 / sj**2 + 1 / T**2
        mean = (yj / sj**2 + M / T**2) / prec
        m1 = float((w * mean).sum())
        out[f"theta_{j}"] = (m1, float(np.sqrt((w * (1 / prec + mean**2)).sum() - m1**2)))
    return out


@dataclass(frozen=True)
class MetaSBCCase:
    """A meta-regression SBC case: ``k`` studies, one estimate each, standard errors fixed.

    Same interface as :class:`~bayeslmm.validation.SBCCase` (``name``, ``formula``, ``method``,
    ``priors``, ``simulate_priors``, ``model``), so :func:`~bayeslmm.validation.run_sbc` runs it.
    """

    name: str = "meta_collapsed"
    formula: str = "y | se(s) ~ x + (1 | study)"
    k: int = 12
    se_range: tuple = (0.3, 1.5)
    method: str = "collapsed"
    priors: tuple = META_PRIORS
    design_seed: int = 20260220
    simulate_priors: tuple = ()

    @property
    def n_groups(self) -> int:
        return self.k

    n_per_group = 1

    def frame(self) -> pd.DataFrame:
        rng = np.random.default_rng(self.design_seed)
        return pd.DataFrame({"y": rng.normal(size=self.k), "x": rng.normal(size=self.k),
                             "s": rng.uniform(*self.se_range, self.k),
                             "study": [f"s{j:02d}" for j in range(self.k)]})

    def model(self, *, simulator: bool = False):
        from ..model import Model
        priors = dict(self.priors)
        if simulator:
            priors.update(dict(self.simulate_priors))
        return Model(self.formula, self.frame(), priors=priors, method=self.method)


def meta_sbc_case(*, negative_control: bool = False) -> MetaSBCCase:
    """The SBC case; ``negative_control=True``: the truth's tau comes from halfnormal(4) while the
    model assumes halfnormal(1), a miscalibration SBC must flag on ``sd(study, Intercept)``."""
    case = MetaSBCCase()
    if negative_control:
        case = replace(case, name="meta_miscalibrated", simulate_priors=(("sd", "halfnormal(4)"),))
    return case


def run_meta_study(out, *, replicates: int = 200, control_replicates: int = 60, seed: int = 1,
                   alpha: float = 0.01, engine: str = "auto") -> dict:
    """SBC of :func:`meta_sbc_case` and its negative control; plots and summaries into ``out``."""
    from .figures import plot_ecdf_differences, plot_rank_histograms
    from .refit import make_refitter
    from .sbc import run_sbc
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    case = meta_sbc_case()
    refitter = make_refitter(case.model(), case.method, engine=engine)
    summary: dict = {"alpha": alpha, "seed": seed, "cases": {}}
    md = ["# SBC: meta-analysis with known standard errors (collapsed path)", "",
          f"`{case.formula}`, {case.k} studies with standard errors uniform on {case.se_range} (fixed), "
          f"priors {dict(case.priors)}; 2 chains x 1000 draws after 500 tuning steps per replicate, "
          f"thinned to L = 99. A parameter fails when a chi-square or simultaneous-ECDF test rejects "
          f"at family-wise level {alpha} (Holm). Seed {seed}.", ""]
    for c, n in ((case, replicates), (meta_sbc_case(negative_control=True), control_replicates)):
        t0 = time.perf_counter()
        res = run_sbc(c, n, seed=seed, refitter=refitter, progress=True)
        wall = time.perf_counter() - t0
        stt = res.statistics(alpha=alpha)
        plot_rank_histograms(res, out / f"sbc_{c.name}_hist.png")
        plot_ecdf_differences(res, out / f"sbc_{c.name}_ecdf.png", alpha=alpha)
        d = res.diagnostics
        summary["cases"][c.name] = {
            "formula": c.formula, "method": c.method, "k": c.k, "priors": dict(c.priors),
            "simulate_priors": dict(c.simulate_priors), "engine": res.engine, "replicates": n,
            "n_ranks": res.n_ranks, "wall_s": wall, "divergences_total": int(d["divergences"].sum()),
            "min_ess_bulk_median": float(d["min_ess_bulk"].median()),
            "calibrated": bool(not stt["holm_reject"].any()),
            "parameters": stt.reset_index().to_dict(orient="records")}
        title = ("negative control: truth's tau from " + dict(c.simulate_priors)["sd"] + ", model "
                 "halfnormal(1): must FAIL on sd(study, Intercept)") if c.simulate_priors else "calibration"
        md += [f"## {c.name} ({title})", "",
               f"{n} replicates, engine {res.engine}, {wall:.0f} s; divergent transitions in total: "
               f"{int(d['divergences'].sum())}; median of the minimum bulk ESS: {d['min_ess_bulk'].median():.0f}.",
               "", "| parameter | chi-square p | ECDF p | fails (Holm) |", "| --- | --- | --- | --- |"]
        md += [f"| {p} | {r.chisq_p:.3g} | {r.ecdf_p:.3g} | {'FAIL' if r.holm_reject else 'no'} |"
               for p, r in stt.iterrows()]
        md.append("")
        print(stt.round(4).to_string(), flush=True)
    (out / "meta_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "meta_summary.md").write_text("\n".join(md) + "\n")
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bayeslmm.validation.meta",
                                description="SBC of the known-SE meta-analysis model (collapsed path).")
    p.add_argument("--out", required=True)
    p.add_argument("--replicates", type=int, default=200)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)
    s = run_meta_study(a.out, replicates=a.replicates, seed=a.seed)
    ok = s["cases"]["meta_collapsed"]["calibrated"] and not s["cases"]["meta_miscalibrated"]["calibrated"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
