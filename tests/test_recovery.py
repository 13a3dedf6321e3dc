"""Parameter recovery on simulated data with known truth, one design per random-effect structure.

Reasoning for the tolerances: for each parameter we compute z = (posterior mean - truth) / posterior SD.
If the model is right, z is roughly standard normal across data sets, so |z| < 3.5 has a two-sided
false-alarm rate of 4.7e-4 per parameter (under 1% for the 19 parameters below together).
The Monte Carlo error of the posterior mean (MCSE ~ SD / sqrt(ESS)) adds at most 0.12 SD (the worst
case, the intercept of the crossed design, has bulk ESS ~70 of 1200 draws), well inside that margin.
We also check 95% HDI coverage in aggregate: with 19 parameters, P(more than 5 missed | p = 0.95)
= 2.4e-4.
"""

import numpy as np
import pandas as pd
import pytest

import bayeslmm as blmm

pytestmark = pytest.mark.slow
FIT = dict(chains=2, draws=600, tune=600, seed=7, progressbar=False, verbose=False)
RESULTS = []


def z_scores(fit, truth: dict[str, float]):
    tab = pd.concat([fit.summary(), fit.variance_components()])
    out = {}
    for label, value in truth.items():
        row = tab.loc[label]
        out[label] = ((row["mean"] - value) / row["sd"], row["hdi_lower"] <= value <= row["hdi_upper"])
    return out


def check(fit, truth):
    zs = z_scores(fit, truth)
    RESULTS.extend(zs.values())
    bad = {k: round(z, 2) for k, (z, _) in zs.items() if abs(z) > 3.5}
    assert not bad, f"parameters too far from the truth (z-scores): {bad}"


def test_random_intercept():
    rng = np.random.default_rng(101)
    J, n_j = 30, 10
    g = np.repeat(np.arange(J), n_j)
    x = rng.normal(size=J * n_j)
    u = rng.normal(0, 0.8, J)
    y = 2.0 + 0.5 * x + u[g] + rng.normal(0, 1.0, J * n_j)
    df = pd.DataFrame({"y": y, "x": x, "g": g.astype(str)})
    fit = blmm.Model("y ~ x + (1 | g)", df).fit(**FIT)
    check(fit, {"Intercept": 2.0, "x": 0.5, "sd(g, Intercept)": 0.8, "sigma": 1.0})


def test_correlated_intercept_and_slope():
    rng = np.random.default_rng(202)
    J, n_j = 40, 10
    g = np.repeat(np.arange(J), n_j)
    x = np.tile(np.arange(n_j) - 4.5, J) / 3
    sd, rho = np.array([1.0, 0.5]), 0.4
    cov = np.diag(sd) @ np.array([[1, rho], [rho, 1]]) @ np.diag(sd)
    u = rng.multivariate_normal([0, 0], cov, size=J)
    y = 1.0 + 0.3 * x + u[g, 0] + u[g, 1] * x + rng.normal(0, 0.7, J * n_j)
    df = pd.DataFrame({"y": y, "x": x, "g": g})
    fit = blmm.Model("y ~ x + (1 + x | g)", df).fit(**FIT)
    check(fit, {"Intercept": 1.0, "x": 0.3, "sd(g, Intercept)": 1.0, "sd(g, x)": 0.5,
                "cor(g, Intercept, x)": rho, "sigma": 0.7})


def test_crossed_factors():
    rng = np.random.default_rng(303)
    S, I = 30, 20
    s = np.repeat(np.arange(S), I)
    i = np.tile(np.arange(I), S)
    x = rng.normal(size=S * I)
    y = 5.0 - 0.4 * x + rng.normal(0, 0.7, S)[s] + rng.normal(0, 0.5, I)[i] + rng.normal(0, 1.0, S * I)
    df = pd.DataFrame({"y": y, "x": x, "subject": s, "item": i})
    fit = blmm.Model("y ~ x + (1 | subject) + (1 | item)", df).fit(**FIT)
    check(fit, {"Intercept": 5.0, "x": -0.4, "sd(subject, Intercept)": 0.7, "sd(item, Intercept)": 0.5,
                "sigma": 1.0})


def test_nested_design():
    rng = np.random.default_rng(404)
    K, C, P = 15, 4, 8
    school = np.repeat(np.arange(K), C * P)
    cls = np.tile(np.repeat(np.arange(C), P), K)
    sch_eff = rng.normal(0, 1.0, K)
    cls_eff = rng.normal(0, 0.5, (K, C))
    y = 10.0 + sch_eff[school] + cls_eff[school, cls] + rng.normal(0, 1.0, K * C * P)
    df = pd.DataFrame({"y": y, "school": school, "cls": cls})
    fit = blmm.Model("y ~ 1 + (1 | school/cls)", df).fit(**FIT)
    assert [f.name for f in fit.design.factors] == ["school", "school:cls"]
    assert fit.design.factors[1].n_levels == K * C
    check(fit, {"Intercept": 10.0, "sd(school, Intercept)": 1.0, "sd(school:cls, Intercept)": 0.5,
                "sigma": 1.0})


def test_aggregate_interval_coverage():
    """Runs last in this module: 95% HDIs cover the truth at the nominal rate (see module docstring)."""
    if len(RESULTS) < 19:
        pytest.skip("needs the recovery tests above in the same run")
    covered = sum(c for _, c in RESULTS)
    assert covered >= len(RESULTS) - 5, f"{covered}/{len(RESULTS)} truths inside the 95% HDI"
