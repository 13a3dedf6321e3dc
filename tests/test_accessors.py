"""lme4/brms accessors checked against their definitions: coef = fixef + ranef draw by draw, R^2
against a hand computation, update() = the new model built from scratch with the same seed, prior
draws against the prior's quantiles, draws by table label."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import bayeslmm as blmm
from bayeslmm.errors import BayesLMMError, PriorError
from bayeslmm.priors import prior_quantile


@pytest.fixture(scope="module")
def slope_fake(fake_fit, sleepstudy):
    # a random-only term (Days is not fixed) and a correlated block
    return fake_fit("Reaction ~ 1 + (Days | Subject)", sleepstudy, seed=4)


def test_coef_is_fixef_plus_ranef_draw_by_draw(slope_fake, fake_fit, sleepstudy):
    for fit in (slope_fake, fake_fit("Reaction ~ Days + (1 | Subject)", sleepstudy, seed=5)):
        b = fit.fixef(summary=False)
        r = fit.ranef(summary=False)["Subject"]
        c = fit.coef(summary=False)["Subject"]
        f = fit.design.factor("Subject")
        terms = list(fit.design.fixed_terms) + [t for t in f.terms if t not in fit.design.fixed_terms]
        for k, t in enumerate(terms):
            want = np.zeros_like(c[:, :, k])
            if t in fit.design.fixed_terms:
                want += b[:, [fit.design.fixed_terms.index(t)]]
            if t in f.terms:
                want += r[:, :, f.terms.index(t)]
            np.testing.assert_array_equal(c[:, :, k], want)
        # the summary is the summary of those draws
        tab = fit.coef()["Subject"]
        j = 3
        np.testing.assert_allclose(tab.loc[(f.levels[j], terms[0]), "mean"], c[:, j, 0].mean(), rtol=1e-12)
    r_tab = slope_fake.ranef()["Subject"]
    assert list(r_tab.index.names) == ["level", "term"] and len(r_tab) == 18 * 2
    assert (r_tab.hdi_lower <= r_tab["mean"]).all() and (r_tab["mean"] <= r_tab.hdi_upper).all()


def test_fixef_and_varcorr_agree_with_summary_tables(slope_fake):
    fit = slope_fake
    np.testing.assert_allclose(fit.fixef()["mean"], fit.summary()["mean"], rtol=1e-12)
    vc = fit.VarCorr()
    comp = fit.variance_components()
    sds = vc.table[vc.table.kind == "sd"]
    np.testing.assert_allclose(sds["mean"].to_numpy(),
                               comp.loc[["sd(Subject, Intercept)", "sd(Subject, Days)"], "mean"], rtol=1e-12)
    cor = vc.table[vc.table.kind == "cor"]["mean"].iloc[0]
    np.testing.assert_allclose(cor, comp.loc["cor(Subject, Intercept, Days)", "mean"], rtol=1e-12)
    text = repr(vc)
    assert "Std.Dev." in text and "(Intercept)" in text and "Residual" in text and "Corr" in text


def test_draws_by_label(slope_fake):
    fit = slope_fake
    np.testing.assert_array_equal(fit.draws("sd(Subject, Days)"), fit.draws("sd_Subject")[:, 1])
    np.testing.assert_array_equal(fit.draws("cor(Subject, Intercept, Days)"), fit.draws("cor_Subject")[:, 0, 1])
    np.testing.assert_array_equal(fit.draws("Intercept"), fit.draws("b")[:, 0])
    with pytest.raises(BayesLMMError, match="Did you mean 'sd\\(Subject, Days\\)'"):
        fit.draws("sd(Subjet, Days)")


def test_fitted_plus_residuals_is_y(slope_fake):
    fit = slope_fake
    mu, e = fit.fitted(summary=False), fit.residuals(summary=False)
    np.testing.assert_allclose(mu + e, np.broadcast_to(fit.design.y, mu.shape), atol=1e-9)
    np.testing.assert_allclose(fit.fitted()["mean"], mu.mean(axis=0), rtol=1e-12)


def test_r2_matches_a_hand_computation(fake_fit, rng):
    # crossed factors, a random slope: every piece of Nakagawa's formula is exercised
    n = 240
    df = pd.DataFrame({"x": rng.normal(size=n), "g": rng.integers(0, 12, n).astype(str),
                       "h": rng.integers(0, 5, n).astype(str)})
    df["y"] = 1 + df.x + rng.normal(size=n)
    fit = fake_fit("y ~ x + (1 + x | g) + (1 | h)", df, seed=6, draws=30)
    got = fit.r2_draws() if hasattr(fit, "r2_draws") else blmm.accessors.r2_draws(fit)
    d = fit.design
    b, sig = fit.draws("b"), fit.draws("sigma")
    g, h = d.factor("g"), d.factor("h")
    rg, rh = fit.draws("r_g"), fit.draws("r_h")
    sdg, cg, sdh = fit.draws("sd_g"), fit.draws("cor_g"), fit.draws("sd_h")
    for s in (0, 17, 59):
        mu = np.array([d.X[i] @ b[s] + g.Z[i] @ rg[s, g.codes[i]] + rh[s, h.codes[i], 0] for i in range(n)])
        res = d.y - mu
        assert got["bayes_R2"][s] == pytest.approx(np.var(mu) / (np.var(mu) + np.var(res)), rel=1e-10)
        Sg = np.diag(sdg[s]) @ cg[s] @ np.diag(sdg[s])
        v_r = np.mean([g.Z[i] @ Sg @ g.Z[i] for i in range(n)]) + sdh[s, 0] ** 2
        v_f = np.var(d.X @ b[s], ddof=1)
        tot = v_f + v_r + sig[s] ** 2
        assert got["marginal_R2"][s] == pytest.approx(v_f / tot, rel=1e-10)
        assert got["conditional_R2"][s] == pytest.approx((v_f + v_r) / tot, rel=1e-10)
    tab = fit.r2()
    assert list(tab.index) == ["bayes_R2", "marginal_R2", "conditional_R2"]
    assert ((tab["mean"] > 0) & (tab["mean"] < 1)).all()


def test_r2_recovers_the_simulated_variance_shares(get_fit, sim_ri):
    df, t = sim_ri
    fit = get_fit("y ~ x + (1 | g)", df, chains=2, draws=1000, tune=1000, seed=11, method="noncentred")
    v_f = t["slope"] ** 2 * np.var(df.x, ddof=1)
    tot = v_f + t["sd_g"] ** 2 + t["sigma"] ** 2
    tab = fit.r2(prob=0.99)
    # truth inside the posterior's 99% HDI (the design's own variances are near but not the truth)
    for name, want in (("marginal_R2", v_f / tot), ("conditional_R2", (v_f + t["sd_g"] ** 2) / tot)):
        assert tab.loc[name, "hdi_lower"] < want < tab.loc[name, "hdi_upper"], (name, want, tab)


def test_update_equals_the_new_model_from_scratch(get_fit, sim_ri):
    df, _ = sim_ri
    fit = get_fit("y ~ x + (1 | g)", df, chains=2, draws=1000, tune=1000, seed=11, method="noncentred")
    ref = get_fit("y ~ 1 + (1 | g)", df, chains=2, draws=500, tune=500, seed=12, method="noncentred")
    new = fit.update("y ~ 1 + (1 | g)", draws=500, tune=500, seed=12, verbose=False)
    assert new.spec.formula.text == "y ~ 1 + (1 | g)" and new.info["method"] == ref.info["method"]
    for v in ("b", "sd_g", "r_g", "sigma"):
        np.testing.assert_array_equal(new.draws(v), ref.draws(v))
    assert fit.spec.formula.text == "y ~ x + (1 | g)"           # the original is unchanged


def test_update_keeps_valid_priors_and_warns_about_the_rest(fake_fit, dyestuff, monkeypatch):
    from bayeslmm import model as model_mod
    fit = fake_fit("Yield ~ 1 + (1 | Batch)", dyestuff, seed=1)
    fit.spec = blmm.build_spec("Yield ~ 1 + (1 | Batch)", priors={"sigma": "exponential(0.02)",
                                                                  "sd(Batch, Intercept)": "halfnormal(60)"})
    seen = {}
    monkeypatch.setattr(model_mod.Model, "fit", lambda self, **kw: seen.update(model=self, kw=kw) or "fitted")
    assert fit.update(priors={"Intercept": "normal(1500, 100)"}) == "fitted"
    pt = seen["model"].prior_table
    assert pt["sigma"].prior.text == "exponential(lam=0.02)" and pt["Intercept"].source.startswith("user")
    assert seen["kw"]["seed"] == fit.info["seed"] and seen["kw"]["draws"] == fit.sampler.draws
    dy = dyestuff.assign(Plate=np.arange(len(dyestuff)) % 5)
    with pytest.warns(UserWarning, match="sd\\(Batch, Intercept\\)"):
        fit.update("Yield ~ 1 + (1 | Plate)", data=dy)
    assert seen["model"].prior_table["sigma"].source.startswith("user")


def test_mistyped_prior_key_gets_did_you_mean(dyestuff):
    with pytest.raises(PriorError, match="Did you mean 'sd\\(Batch, Intercept\\)'"):
        blmm.Model("Yield ~ 1 + (1 | Batch)", dyestuff, priors={"sd(Bacth, Intercept)": "halfnormal(10)"})


def test_prior_predictive_draws_follow_the_priors(slope_fake):
    fit = slope_fake
    tree = fit.prior_predictive(draws=2000, seed=3)
    pri = tree["prior"].to_dataset()
    assert tree["prior_predictive"]["y"].shape == (1, 2000, fit.design.n)
    qs = np.array([0.1, 0.25, 0.5, 0.75, 0.9])
    for label, x in (("sigma", pri["sigma"].to_numpy().ravel()),
                     ("sd(Subject, Days)", pri["sd_Subject"].to_numpy()[0, :, 1])):
        # quantiles of 2000 draws: empirical CDF at the prior quantile within 4 binomial SEs
        cdf = np.array([(x <= v).mean() for v in prior_quantile(fit.prior_table[label].prior, qs)])
        assert np.all(np.abs(cdf - qs) < 4 * np.sqrt(qs * (1 - qs) / 2000)), (label, cdf)
    fig = fit.plot_prior_posterior(prior=tree)
    assert len([a for a in fig.axes if a.get_visible()]) == 1 + 2 + 1 + 1    # Intercept, 2 sds, cor, sigma


def test_compare_is_exported():
    assert blmm.compare is blmm.diagnostics.compare
    assert "Returns" in blmm.compare.__doc__
