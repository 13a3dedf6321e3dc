"""Agreement with peers: statsmodels MixedLM (REML and ML) and bambi, on the bundled data sets."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pandas as pd

__all__ = ["PEER_MODELS", "statsmodels_fit", "peer_comparison", "bambi_comparison", "bambi_cbpp_comparison"]


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

    from ..formula import parse_formula
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

    from ..model import Model
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


def bambi_cbpp_comparison(*, chains: int = 4, draws: int = 1000, seed: int = 1) -> pd.DataFrame:
    """bayeslmm against bambi on cbpp (binomial logit GLMM, issue 12), with the same priors.

    ``cbind(incidence, size - incidence) ~ period + (1 | herd)`` against bambi's
    ``p(incidence, size) ~ period + (1|herd)``, both non-centred, bayeslmm's default priors given
    to bambi: the intercept normal(mu, sigma) at centred predictors (bambi centres too), each
    period effect normal(0, 2.5 / sd(dummy)), sd(herd) half-Student-t(3, 1).

    Returns the same table as :func:`bambi_comparison`: per parameter both posterior means and
    MCSEs, the difference and ``z = diff / sqrt(mcse_a^2 + mcse_b^2)``.
    """
    import arviz as az
    import bambi as bmb

    from ..datasets import load_dataset
    from ..model import Model
    data = load_dataset("cbpp")
    m = Model("cbind(incidence, size - incidence) ~ period + (1 | herd)", data, family="binomial",
              method="noncentred")
    pt = m.prior_table
    k = lambda lab: pt[lab].prior.kwargs  # noqa: E731
    levels = ("2", "3", "4")
    priors = {
        "Intercept": bmb.Prior("Normal", **k("Intercept")),
        "period": bmb.Prior("Normal", mu=0.0, sigma=np.array([k(f"period[T.{v}]")["sigma"] for v in levels])),
        "1|herd": bmb.Prior("Normal", mu=0, sigma=bmb.Prior("HalfStudentT", **k("sd(herd, Intercept)"))),
    }
    t0 = time.perf_counter()
    fit = m.fit(chains=chains, draws=draws, tune=1000, seed=seed, progressbar=False, verbose=False)
    t_a = time.perf_counter() - t0
    bdata = data.assign(period=data["period"].astype(str), herd=data["herd"].astype(str))
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bm = bmb.Model("p(incidence, size) ~ period + (1|herd)", bdata, family="binomial", priors=priors,
                       noncentered=True)
        tr = bm.fit(draws=draws, tune=1000, chains=chains, cores=min(chains, 2), random_seed=seed,
                    progressbar=False)
    t_b = time.perf_counter() - t0
    bpost = tr["posterior"].to_dataset()
    b_draws = {"Intercept": bpost["Intercept"], "sd(herd, Intercept)": bpost["1|herd_sigma"]}
    pdim = [d for d in bpost["period"].dims if d not in ("chain", "draw")][0]
    for v in levels:
        b_draws[f"period[T.{v}]"] = bpost["period"].sel({pdim: v})
    a_tab = pd.concat([fit.summary(), fit.variance_components()])
    rows = []
    for lab, v in b_draws.items():
        arr = np.asarray(v.transpose("chain", "draw").to_numpy(), dtype=float)
        mean_b = float(arr.mean())
        mcse_b = float(np.asarray(az.mcse(arr, method="mean")))
        a = a_tab.loc[lab]
        diff = float(a["mean"]) - mean_b
        rows.append({"parameter": lab, "bayeslmm_mean": float(a["mean"]), "bayeslmm_mcse": float(a["mcse_mean"]),
                     "bambi_mean": mean_b, "bambi_mcse": mcse_b, "post_sd": float(a["sd"]),
                     "diff": diff, "z": diff / float(np.hypot(a["mcse_mean"], mcse_b))})
    tab = pd.DataFrame(rows).set_index("parameter")
    tab.attrs.update({"bayeslmm_s": t_a, "bambi_s": t_b})
    return tab
