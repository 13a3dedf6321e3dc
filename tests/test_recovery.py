"""Parameter recovery on simulated data with known truth, one design per random-effect structure.

Reasoning for the tolerances: for each parameter we compute z = (posterior mean - truth) / posterior SD.
If the model is right, z is roughly standard normal across data sets, so |z| < 3.5 has a two-sided
false-alarm rate of 4.7e-4 per parameter (under 1% for the 19 parameters below together).
The Monte Carlo error of the posterior mean (MCSE ~ SD / sqrt(ESS)) adds at most 0.12 SD (bulk ESS
>= 70 of 1200 draws; the crossed design's intercept had ~70 on the non-centred graph, it now takes
the exact crossed collapsed path, issue 14), well inside that margin.
We also check 95% HDI coverage in aggregate: with 19 parameters, P(more than 5 missed | p = 0.95)
= 2.4e-4.
"""

import numpy as np
import pandas as pd
import pytest

import bayeslmm as blmm

pytestmark = pytest.mark.slow
FIT = dict(chains=2, draws=600, tune=600, seed=7, progressbar=False, verbose=False)


def z_scores(fit, truth: dict[str, float]):
    tab = pd.concat([fit.summary(), fit.variance_components()])
    out = {}
    for label, value in truth.items():
        row = tab.loc[label]
        out[label] = ((row["mean"] - value) / row["sd"], row["hdi_lower"] <= value <= row["hdi_upper"])
    return out


# -- the four designs: name -> () -> (formula, data, truth) ----------------------------------
def random_intercept():
    rng = np.random.default_rng(101)
    J, n_j = 30, 10
    g = np.repeat(np.arange(J), n_j)
    x = rng.normal(size=J * n_j)
    u = rng.normal(0, 0.8, J)
    y = 2.0 + 0.5 * x + u[g] + rng.normal(0, 1.0, J * n_j)
    df = pd.DataFrame({"y": y, "x": x, "g": g.astype(str)})
    return "y ~ x + (1 | g)", df, {"Intercept": 2.0, "x": 0.5, "sd(g, Intercept)": 0.8, "sigma": 1.0}


def correlated_intercept_and_slope():
    rng = np.random.default_rng(202)
    J, n_j = 40, 10
    g = np.repeat(np.arange(J), n_j)
    x = np.tile(np.arange(n_j) - 4.5, J) / 3
    sd, rho = np.array([1.0, 0.5]), 0.4
    cov = np.diag(sd) @ np.array([[1, rho], [rho, 1]]) @ np.diag(sd)
    u = rng.multivariate_normal([0, 0], cov, size=J)
    y = 1.0 + 0.3 * x + u[g, 0] + u[g, 1] * x + rng.normal(0, 0.7, J * n_j)
    df = pd.DataFrame({"y": y, "x": x, "g": g})
    return "y ~ x + (1 + x | g)", df, {"Intercept": 1.0, "x": 0.3, "sd(g, Intercept)": 1.0, "sd(g, x)": 0.5,
                                       "cor(g, Intercept, x)": rho, "sigma": 0.7}


def crossed_factors():
    rng = np.random.default_rng(303)
    S, I = 30, 20
    s = np.repeat(np.arange(S), I)
    i = np.tile(np.arange(I), S)
    x = rng.normal(size=S * I)
    y = 5.0 - 0.4 * x + rng.normal(0, 0.7, S)[s] + rng.normal(0, 0.5, I)[i] + rng.normal(0, 1.0, S * I)
    df = pd.DataFrame({"y": y, "x": x, "subject": s, "item": i})
    return "y ~ x + (1 | subject) + (1 | item)", df, {
        "Intercept": 5.0, "x": -0.4, "sd(subject, Intercept)": 0.7, "sd(item, Intercept)": 0.5, "sigma": 1.0}


def nested_design():
    rng = np.random.default_rng(404)
    K, C, P = 15, 4, 8
    school = np.repeat(np.arange(K), C * P)
    cls = np.tile(np.repeat(np.arange(C), P), K)
    sch_eff = rng.normal(0, 1.0, K)
    cls_eff = rng.normal(0, 0.5, (K, C))
    y = 10.0 + sch_eff[school] + cls_eff[school, cls] + rng.normal(0, 1.0, K * C * P)
    df = pd.DataFrame({"y": y, "school": school, "cls": cls})
    return "y ~ 1 + (1 | school/cls)", df, {"Intercept": 10.0, "sd(school, Intercept)": 1.0,
                                            "sd(school:cls, Intercept)": 0.5, "sigma": 1.0}


DESIGNS = {f.__name__: f for f in (random_intercept, correlated_intercept_and_slope, crossed_factors,
                                   nested_design)}


@pytest.fixture(scope="module")
def recovered():
    """name -> (fit, truth); each design is fitted once per module, whichever test asks first."""
    cache = {}

    def get(name):
        if name not in cache:
            formula, df, truth = DESIGNS[name]()
            cache[name] = (blmm.Model(formula, df).fit(**FIT), truth)
        return cache[name]
    return get


@pytest.mark.parametrize("name", list(DESIGNS))
def test_recovery(name, recovered):
    fit, truth = recovered(name)
    if name == "nested_design":
        assert [f.name for f in fit.design.factors] == ["school", "school:cls"]
        assert fit.design.factors[1].n_levels == 15 * 4
    zs = z_scores(fit, truth)
    bad = {k: round(z, 2) for k, (z, _) in zs.items() if abs(z) > 3.5}
    assert not bad, f"parameters too far from the truth (z-scores): {bad}"


def test_aggregate_interval_coverage(recovered):
    """95% HDIs cover the truth at the nominal rate over all 19 parameters (see module docstring).

    Computes every fit it needs itself (shared with the tests above when they ran first)."""
    results = [c for name in DESIGNS for _, c in z_scores(*recovered(name)).values()]
    assert len(results) == 19
    covered = sum(results)
    assert covered >= len(results) - 5, f"{covered}/{len(results)} truths inside the 95% HDI"
