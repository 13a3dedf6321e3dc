"""The validation study: SBC for every case, peer comparisons and the prior-sensitivity example,
written as plots, ``summary.json`` and a markdown ``summary.md``; and its command line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..spec import canonical_method
from .figures import plot_ecdf_differences, plot_rank_histograms
from .peers import PEER_MODELS, bambi_cbpp_comparison, bambi_comparison, peer_comparison
from .sbc import crossed_cases, family_cases, run_sbc, sbc_cases

__all__ = ["run_study", "main"]


def _available_methods() -> tuple[str, ...]:
    return ("noncentred", "collapsed", "crossed")


FAMILIES = ("bernoulli", "binomial", "poisson", "negbinomial", "student_t")
#: the families whose SBC case also runs on the quadrature path (issue 13)
QUADRATURE_FAMILIES = ("bernoulli", "binomial", "poisson", "negbinomial")


def run_study(out: str | Path, *, quick: bool = False, replicates: int | None = None, seed: int = 1,
              methods: tuple[str, ...] | None = None, peers: bool = True, engine: str = "auto",
              alpha: float = 0.01, families: tuple[str, ...] = FAMILIES,
              quadrature: tuple[str, ...] = QUADRATURE_FAMILIES) -> dict:
    """Run SBC for every case (and the peer comparisons), write plots and summaries to ``out``.

    ``families``: the non-Gaussian families whose random-intercept case
    (:func:`~bayeslmm.validation.sbc.family_cases`) is run too, with the same replicates;
    ``quadrature``: those whose case is also run on the quadrature path (``method="collapsed"``).
    ``methods=()`` runs no Gaussian case.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    methods = _available_methods() if methods is None else methods
    n_rep = replicates or (100 if quick else 1000)
    summary: dict = {"replicates": n_rep, "seed": seed, "alpha": alpha, "methods": list(methods),
                     "cases": {}, "families": list(families), "notes": []}
    md = [f"# bayeslmm validation{' (quick)' if quick else ''}", "",
          f"SBC: {n_rep} replicates per case, L = 99 thinned draws (2 chains x 1000 after 500 "
          f"tuning steps), seed {seed}. A parameter fails when a chi-square or simultaneous-ECDF "
          f"test rejects at family-wise level {alpha} (Holm over all tests of the case).", ""]
    cases = sbc_cases(tuple(m for m in methods if m != "crossed"))
    cases += crossed_cases() if "crossed" in methods else []
    cases += family_cases(tuple(families)) if families else []
    cases += family_cases(tuple(quadrature), method="collapsed") if quadrature else []
    for case in cases:
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
            "formula": case.formula, "family": case.family, "method": case.method, "n_groups": case.n_groups,
            "n_per_group": case.n_per_group, "priors": dict(case.priors), "engine": res.engine,
            "replicates": res.n_replicates, "n_ranks": res.n_ranks, "wall_s": wall,
            "divergent_share_mean": float(d["divergent_share"].mean()),
            "replicates_with_divergences": int((d["divergences"] > 0).sum()),
            "min_ess_bulk_median": float(d["min_ess_bulk"].median()),
            "calibrated": bool(not st["holm_reject"].any()),
            "parameters": st.reset_index().to_dict(orient="records"),
        }
        md += [f"## {case.name}: `{case.formula}` ({case.family}, {case.method})", "",
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
    from ..datasets import load_dataset
    from ..model import Model
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
    from ..datasets import load_dataset as _ld
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
    tab = bambi_cbpp_comparison(draws=1000 if quick else 2000)
    tab.to_csv(out / "bambi_cbpp.csv")
    summary["bambi_cbpp"] = tab.reset_index().to_dict(orient="records")
    summary["bambi_cbpp_seconds"] = dict(tab.attrs)
    md += ["## Peers: bambi on cbpp, `cbind(incidence, size - incidence) ~ period + (1 | herd)` (binomial), "
           "same priors", "",
           "| parameter | bayeslmm mean (MCSE) | bambi mean (MCSE) | difference | z |", "| --- | --- | --- | --- | --- |"]
    md += [f"| {p} | {r.bayeslmm_mean:.4g} ({r.bayeslmm_mcse:.2g}) | {r.bambi_mean:.4g} ({r.bambi_mcse:.2g}) | "
           f"{r['diff']:+.3g} | {r.z:+.2f} |" for p, r in tab.iterrows()]
    md.append("")
    return md


def _sensitivity_section(out: Path, summary: dict) -> list[str]:
    """Dyestuff (6 batches): how the variance components move when the SD prior is halved/doubled."""
    from ..datasets import load_dataset
    from ..model import Model
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
    p = argparse.ArgumentParser(prog="python -m bayeslmm.validation", description="Simulation-based calibration and peer comparisons of bayeslmm.")
    p.add_argument("--out", required=True, help="output folder for plots and summaries")
    p.add_argument("--quick", action="store_true", help="100 replicates per case instead of 1000")
    p.add_argument("--replicates", type=int, default=None, help="replicates per case (overrides --quick)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--methods", default=None,
                   help="comma-separated: noncentred,collapsed,crossed ('marginal' = collapsed; crossed: "
                        "the subjects x items case on the crossed collapsed path; default: all), "
                        "or 'none' for the families' cases only")
    p.add_argument("--engine", default="auto", choices=["auto", "nutpie", "pymc", "model"])
    p.add_argument("--families", default=",".join(FAMILIES),
                   help="comma-separated non-Gaussian families with an SBC case, or 'none' "
                        f"(default: {','.join(FAMILIES)})")
    p.add_argument("--quadrature", default=",".join(QUADRATURE_FAMILIES),
                   help="comma-separated families whose case also runs on the quadrature path, or 'none' "
                        f"(default: {','.join(QUADRATURE_FAMILIES)})")
    p.add_argument("--no-peers", action="store_true",
                   help="skip the statsmodels / bambi comparisons and the prior-sensitivity example")
    a = p.parse_args(argv)
    methods = (() if a.methods == "none" else
               tuple(m if m == "crossed" else canonical_method(m) for m in a.methods.split(","))
               if a.methods else None)
    s = run_study(a.out, quick=a.quick, replicates=a.replicates, seed=a.seed, methods=methods,
                  peers=not a.no_peers, engine=a.engine,
                  families=() if a.families == "none" else tuple(f for f in a.families.split(",") if f),
                  quadrature=() if a.quadrature == "none" else tuple(f for f in a.quadrature.split(",") if f))
    bad = [k for k, v in s["cases"].items() if not v["calibrated"]]
    if bad:
        print(f"calibration FAILED for: {', '.join(bad)}")
        return 1
    return 0
