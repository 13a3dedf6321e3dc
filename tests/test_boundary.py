"""Boundary behaviour: a data set whose REML estimate of the group SD is exactly zero.

Construction: 12 groups x 8 rows, a predictor centred within each group, and noise whose group
means are removed. Then every group has the same mean of y, the between-group mean square is 0,
and REML (lme4 would say "boundary (singular) fit") puts sd(g) at zero. A Bayesian fit must still
sample cleanly (<= 1% divergent transitions), its posterior for sd(g) must pile up near zero, and
:func:`bayeslmm.identifiability.weakly_identified` must say so.
"""

from __future__ import annotations

import numpy as np
import pytest

from bayeslmm.identifiability import weakly_identified
from bayeslmm.priors import prior_quantile
from bayeslmm.simulate import grouped_frame
from bayeslmm.validation import statsmodels_fit

FORMULA = "y ~ x + (1 | g)"


@pytest.fixture(scope="module")
def boundary_data():
    rng = np.random.default_rng(20261126)
    df = grouped_frame(12, 8, rng)
    grp = df.groupby("g")
    df["x"] = df["x"] - grp["x"].transform("mean")
    e = rng.normal(size=len(df))
    e = e - df.assign(e=e).groupby("g")["e"].transform("mean").to_numpy()
    df["y"] = 2.0 + 0.5 * df["x"] + e
    return df


def test_reml_estimate_is_on_the_boundary(boundary_data):
    est = statsmodels_fit(boundary_data, FORMULA, reml=True)
    # every group mean of y is exactly 2: the REML group SD is zero up to optimiser tolerance
    assert est["sd(g, Intercept)"] < 1e-3 * est["sigma"], est


@pytest.fixture(scope="module", params=["noncentred", "collapsed"])
def boundary_fit(request, get_fit, boundary_data):
    return get_fit(FORMULA, boundary_data, chains=2, draws=1000, tune=1000,
                   seed=4, method=request.param)


def test_boundary_samples_cleanly_and_sd_concentrates_near_zero(boundary_fit):
    fit = boundary_fit
    n_div = int(np.asarray(fit.idata["sample_stats"]["diverging"]).sum())
    assert n_div <= 0.01 * fit.n_draws, f"{n_div} divergent transitions of {fit.n_draws}"
    sd = fit.draws("sd_g").ravel()
    sigma = fit.draws("sigma")
    prior = fit.prior_table["sd(g, Intercept)"].prior
    prior_median = float(prior_quantile(prior, 0.5))
    # Concentrated near zero, three ways (the draws give these quantiles to within a few percent
    # at ESS > 1000; the margins below are factors of 2 or more from the values seen):
    # the posterior median is under a fifth of the prior median (seen: ~0.1),
    assert np.median(sd) < 0.2 * prior_median
    # the whole 95% interval lies below half the residual SD (seen: upper ~0.3 sigma),
    assert np.quantile(sd, 0.975) < 0.5 * np.median(sigma)
    # and the density does not vanish at zero: 2.5% quantile / median well below 0.1 (seen ~0.05).
    assert np.quantile(sd, 0.025) / np.median(sd) < 0.1


def test_boundary_component_reported_as_weakly_identified(boundary_fit):
    tab = weakly_identified(boundary_fit)
    row = tab.loc["sd(g, Intercept)"]
    assert row["at_boundary"] and row["weakly_identified"]
    assert "zero" in row["message"]
    # the Fit method is the same function
    assert boundary_fit.weakly_identified().loc["sd(g, Intercept)", "weakly_identified"]


def test_report_says_the_component_is_weakly_identified(boundary_fit, tmp_path):
    import json
    path = boundary_fit.report(tmp_path, loo=False, plots=[])
    html = open(path, encoding="utf-8").read()
    assert "Note: weakly identified component(s)" in html and "sd(g, Intercept)</b>: weakly identified" in html
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["weakly_identified"] == ["sd(g, Intercept)"]
    assert (tmp_path / "tables" / "identification.csv").exists()


def test_identified_component_is_not_flagged(get_fit, sleepstudy):
    """Control: sleepstudy's intercept SD (REML 24.7, far from 0) is identified by the data."""
    fit = get_fit("Reaction ~ Days + (Days | Subject)", sleepstudy, method="noncentred")
    tab = weakly_identified(fit)
    for p in ("sd(Subject, Intercept)", "sd(Subject, Days)"):
        assert not tab.loc[p, "weakly_identified"], tab.loc[p].to_dict()
    # with 18 subjects the correlation is poorly informed: its interval is most of the LKJ(2) prior's
    assert tab.loc["cor(Subject, Intercept, Days)", "prior_dominated"]
