"""Agreement with peers: statsmodels MixedLM (REML and ML) and bambi.

Reference values for the statsmodels wrapper come from lme4 (Bates, Maechler, Bolker & Walker 2015,
"Fitting linear mixed-effects models using lme4", J. Stat. Softw. 67(1), sections 1 and 3:
sleepstudy ``fm1`` REML; Dyestuff ``fm01`` REML and ``fm01ML``, printed to 4-5 significant digits
in the paper and in ``?sleepstudy`` / ``?Dyestuff``), so the peer we compare against is itself
checked against the reference implementation first.

Tolerances for bayeslmm against REML/ML point estimates
--------------------------------------------------------
A posterior mean is not a REML estimate: with weakly informative priors they differ by the prior's
pull and by the posterior's asymmetry, both O(1/n) while the posterior SD is O(1/sqrt(n)) (Bernstein-
von Mises), so the difference is a small fraction of the posterior SD. We allow

    |posterior mean - REML| <= 0.5 * posterior SD + 4 * MCSE

for fixed effects and sigma. The 4 * MCSE term absorbs Monte Carlo error (two-sided false-alarm
rate about 6e-5 per comparison if the MCSE is right); 0.5 posterior SD is the systematic allowance,
a bound that a wrong model (a missing or misplaced variance component, a prior on the wrong
scale) breaks by a wide margin: e.g. dropping the random slope in sleepstudy moves the Days SD by
a factor 3, and ignoring the centring of the Intercept prior shifts the intercept by ~1 SD.
Group SDs have skewed posteriors with few groups (Dyestuff: 6 batches), so for them we check that
the REML estimate lies inside the 95% HDI and that the posterior *median* is within one posterior
SD of it.
"""

from __future__ import annotations

import numpy as np
import pytest

from bayeslmm.validation import peer_comparison, statsmodels_fit

SLEEP = "Reaction ~ Days + (Days | Subject)"
DYE = "Yield ~ 1 + (1 | Batch)"
RADON = "log_radon ~ floor_measure + (1 | county_idx)"

# lme4 reference values (Bates et al. 2015, JSS 67(1); lme4 help pages)
LME4 = {
    ("sleepstudy", True): {"Intercept": 251.405, "Days": 10.467, "sd(Subject, Intercept)": 24.741,
                           "sd(Subject, Days)": 5.922, "cor(Subject, Intercept, Days)": 0.066,
                           "sigma": 25.592},
    ("Dyestuff", True): {"Intercept": 1527.5, "sd(Batch, Intercept)": 42.00, "sigma": 49.51},
    ("Dyestuff", False): {"Intercept": 1527.5, "sd(Batch, Intercept)": 37.26, "sigma": 49.51},
}


@pytest.mark.parametrize("name,reml", [("sleepstudy", True), ("Dyestuff", True), ("Dyestuff", False)])
def test_statsmodels_wrapper_matches_lme4(name, reml, sleepstudy, dyestuff):
    """The peer is right before we compare with it: statsmodels == lme4 to the printed digits."""
    data, formula = (sleepstudy, SLEEP) if name == "sleepstudy" else (dyestuff, DYE)
    est = statsmodels_fit(data, formula, reml=reml)
    for k, ref in LME4[(name, reml)].items():
        # lme4 prints 4-5 significant digits; optimiser differences are far below 1e-3 relative
        assert est[k] == pytest.approx(ref, rel=2e-3, abs=2e-3), (k, est[k], ref)


@pytest.fixture(scope="module")
def peer_tables(get_fit, sleepstudy, dyestuff, radon):
    """Posterior vs REML/ML for the three data sets (fits shared with other test modules by key)."""
    fits = {
        "sleepstudy": (get_fit(SLEEP, sleepstudy, method="noncentred"), sleepstudy, SLEEP),
        "Dyestuff": (get_fit(DYE, dyestuff, chains=2, draws=1000, tune=1000, seed=3,
                             method="noncentred"), dyestuff, DYE),
        "radon_mn": (get_fit(RADON, radon, chains=2, draws=500, tune=500, seed=2,
                             method="noncentred"), radon, RADON),
    }
    return {k: peer_comparison(f, d, formula) for k, (f, d, formula) in fits.items()}


@pytest.mark.parametrize("name", ["sleepstudy", "Dyestuff", "radon_mn"])
def test_fixed_effects_and_sigma_match_reml_and_ml(peer_tables, name):
    tab = peer_tables[name]
    rows = [p for p in tab.index if not p.startswith(("sd(", "cor("))]
    assert "sigma" in rows and len(rows) >= 2
    for p in rows:
        r = tab.loc[p]
        tol = 0.5 * r.post_sd + 4 * r.mcse_mean
        assert abs(r.post_mean - r.reml) <= tol, f"{name} {p}: mean {r.post_mean:.4g} vs REML {r.reml:.4g} (tol {tol:.3g})"
        assert abs(r.post_mean - r.ml) <= tol, f"{name} {p}: mean {r.post_mean:.4g} vs ML {r.ml:.4g} (tol {tol:.3g})"


@pytest.mark.parametrize("name", ["sleepstudy", "Dyestuff", "radon_mn"])
def test_group_sds_consistent_with_reml(peer_tables, name):
    tab = peer_tables[name]
    sds = [p for p in tab.index if p.startswith("sd(")]
    assert sds
    for p in sds:
        r = tab.loc[p]
        assert r.reml_in_hdi, f"{name} {p}: REML {r.reml:.4g} outside HDI [{r.hdi_lower:.4g}, {r.hdi_upper:.4g}]"
        assert abs(r.post_median - r.reml) <= r.post_sd, (name, p, r.post_median, r.reml, r.post_sd)
    # REML >= ML for variance components (ML is biased towards zero), and the posterior lies
    # on the REML side: its median is at least the ML estimate minus MC noise
    for p in sds:
        assert tab.loc[p, "reml"] >= tab.loc[p, "ml"] - 1e-6


@pytest.mark.slow
def test_bambi_uncorrelated_same_priors(sleepstudy):
    """bayeslmm ``(Days || Subject)`` vs bambi ``(Days|Subject)`` (uncorrelated), the same priors.

    Same model, same priors, different code: posterior means agree within Monte Carlo error,
    ``|z| = |diff| / sqrt(mcse_a^2 + mcse_b^2) < 4`` per parameter (false alarm ~6e-5 each, 3e-4
    for the five parameters, if the MCSEs are right).
    """
    pytest.importorskip("bambi")
    from bayeslmm.validation import bambi_comparison
    tab = bambi_comparison(sleepstudy, response="Reaction", x="Days", group="Subject", chains=2,
                           draws=1000, seed=5)
    assert len(tab) == 5
    assert np.all(np.abs(tab["z"]) < 4), tab.to_string()
