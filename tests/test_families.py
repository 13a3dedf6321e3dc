"""Families beyond Gaussian (issue 12): likelihoods against scipy, bad input, parameter recovery on
simulated data, cbpp against lme4's glmer, robustness of the Student-t family, rank-INT.

Tolerances and false-alarm budget of the recovery tests (as in tests/test_recovery.py): for every
true parameter z = (posterior mean - truth) / posterior SD is roughly standard normal when the model
is right, so |z| < 3.5 has a false-alarm rate of 4.7e-4 per parameter, under 1% for the 18
parameters below together. 95% HDI coverage is checked in aggregate: P(more than 4 of 18 missed |
p = 0.95) = 1.5e-3. The Monte Carlo error of the posterior mean (MCSE ~ SD / sqrt(ESS); with 2 x 300
draws the bulk ESS of these parameters is >= 54, so MCSE <= 0.14 SD) barely moves |z|. Fits are
seeded, so each test is deterministic once it passes.
"""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import bayeslmm as blmm
from bayeslmm.errors import DataError, FormulaError, SpecError
from bayeslmm.families import get_family

# 2 chains x 300 draws after 300 tuning steps, sequential (cores=1: on 2 busy cores PyMC's worker
# processes cost more than they save; the draws do not depend on cores).
FIT = dict(chains=2, draws=300, tune=300, seed=11, cores=1)


# -- log-likelihoods against scipy.stats --------------------------------------------------------
@pytest.mark.parametrize("link", ["logit", "probit"])
def test_binary_and_binomial_loglik_match_scipy(link):
    rng = np.random.default_rng(1)
    eta = rng.normal(0, 3, 200)
    p = stats.norm.cdf(eta) if link == "probit" else 1 / (1 + np.exp(-eta))
    y = (rng.random(200) < p).astype(float)
    ll = get_family("bernoulli", link).log_likelihood(y, eta, {})
    np.testing.assert_allclose(ll, stats.bernoulli.logpmf(y, p), rtol=1e-10, atol=1e-10)
    n = rng.integers(1, 30, 200).astype(float)
    k = rng.binomial(n.astype(int), p).astype(float)
    ll = get_family("binomial", link).log_likelihood(k, eta, {}, trials=n)
    np.testing.assert_allclose(ll, stats.binom.logpmf(k, n, p), rtol=1e-10, atol=1e-10)


def test_count_and_t_loglik_match_scipy():
    rng = np.random.default_rng(2)
    eta = rng.normal(1, 1, 300)
    mu = np.exp(eta)
    y = rng.poisson(mu).astype(float)
    np.testing.assert_allclose(get_family("poisson").log_likelihood(y, eta, {}),
                               stats.poisson.logpmf(y, mu), rtol=1e-10, atol=1e-10)
    phi = 2.7
    # scipy's nbinom(n, p): n = phi, p = phi / (phi + mu)
    np.testing.assert_allclose(get_family("negbinomial").log_likelihood(y, eta, {"phi": phi}),
                               stats.nbinom.logpmf(y, phi, phi / (phi + mu)), rtol=1e-10, atol=1e-10)
    yt = rng.standard_t(4, 300)
    np.testing.assert_allclose(get_family("student_t").log_likelihood(yt, eta, {"sigma": 0.7, "nu": 4.5}),
                               stats.t.logpdf(yt, 4.5, eta, 0.7), rtol=1e-10, atol=1e-10)


def test_draws_have_the_family_moments():
    rng = np.random.default_rng(3)
    eta = np.full(200_000, 0.4)
    y = get_family("negbinomial").draw(eta, {"phi": 3.0}, rng)
    mu = np.exp(0.4)
    # mean and variance mu + mu^2/phi, within 5 standard errors
    assert abs(y.mean() - mu) < 5 * np.sqrt((mu + mu ** 2 / 3) / y.size)
    assert abs(y.var() / (mu + mu ** 2 / 3) - 1) < 0.03
    yb = get_family("binomial", "probit").draw(eta, {}, rng, trials=np.full(eta.size, 7))
    assert abs(yb.mean() - 7 * stats.norm.cdf(0.4)) < 5 * np.sqrt(7 * 0.25 / eta.size)


def test_latent_residual_variances():
    assert get_family("bernoulli").latent_residual_variance({}) == pytest.approx(np.pi ** 2 / 3)
    assert get_family("binomial", "probit").latent_residual_variance({}) == 1.0
    assert get_family("poisson").latent_residual_variance({}, np.array([2.0])) == pytest.approx(np.log(1.5))
    assert get_family("negbinomial").latent_residual_variance({"phi": 4.0}, 2.0) == pytest.approx(np.log(1.75))


# -- formulas, specs and bad input --------------------------------------------------------------
def test_cbind_and_offset_parse():
    f = blmm.parse_formula("cbind(incidence, size - incidence) ~ period + (1 | herd)")
    assert (f.response, f.trials, f.fixed) == ("incidence", ("trials", "size"), "period")
    f = blmm.parse_formula("cbind(s, f) ~ x")
    assert f.trials == ("failures", "f")
    f = blmm.parse_formula("y ~ x + offset(log(exposure)) + (1 | g)")
    assert (f.fixed, f.offsets) == ("x", ("log(exposure)",))
    for bad in ("cbind(s, n - m) ~ x", "cbind(s) ~ x", "y ~ offset(__import__('os'))",
                "y ~ x + (offset(z) | g)", "cbind(s, open('f')) ~ x"):
        with pytest.raises(FormulaError):
            blmm.parse_formula(bad)


def _counts(n=60, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"y": rng.poisson(3, n).astype(float), "x": rng.normal(size=n),
                         "g": np.repeat(list("abcdef"), n // 6), "exposure": rng.uniform(0.5, 2, n),
                         "n": np.full(n, 10.0)})


def test_bad_input_names_the_column():
    d = _counts()
    with pytest.raises(DataError, match="'y'"):
        blmm.Model("y ~ x + (1 | g)", d.assign(y=d.y - 5), family="poisson")
    with pytest.raises(DataError, match="'y'.*whole"):
        blmm.Model("y ~ x + (1 | g)", d.assign(y=d.y + 0.5), family="negbinomial")
    with pytest.raises(DataError, match="more successes than trials"):
        blmm.Model("cbind(y, n - y) ~ x + (1 | g)", d.assign(y=d.y + 8), family="binomial")
    with pytest.raises(DataError, match="'n'"):
        blmm.Model("y ~ x + (1 | g)", d.assign(n=-d.n), family="binomial", trials="n")
    with pytest.raises(DataError, match="'y'.*two values"):
        blmm.Model("y ~ x + (1 | g)", d.assign(y=np.array(list("abc") * 20)), family="bernoulli")
    with pytest.raises(DataError, match="'y'.*0/1"):
        blmm.Model("y ~ x + (1 | g)", d, family="bernoulli")
    with pytest.raises(DataError, match="'exposure'.*<= 0"):
        blmm.Model("y ~ x + offset(log(exposure))", d.assign(exposure=d.exposure - 1), family="poisson")
    with pytest.raises(DataError, match="offset column 'exposure'.*missing"):
        e = d.exposure.copy()
        e[3] = np.nan
        blmm.Model("y ~ x + offset(log(exposure))", d.assign(exposure=e), family="poisson")
    with pytest.raises(SpecError, match="valid family/link combinations.*bernoulli: logit, probit"):
        blmm.Model("y ~ x", d, family="poisson", link="logit")
    with pytest.raises(SpecError, match="needs the number of trials"):
        blmm.Model("y ~ x", d, family="binomial")
    with pytest.raises(SpecError, match="binomial"):
        blmm.Model("cbind(y, n - y) ~ x", d, family="poisson")


def test_bernoulli_response_encoding_and_priors():
    d = _counts()
    lab = np.where(d.y > 3, "sick", "healthy")
    m = blmm.Model("y ~ x + (1 | g)", d.assign(y=lab), family="bernoulli", link="probit")
    np.testing.assert_array_equal(m.design.y, (lab == "sick").astype(float))
    assert any("'sick' = 1" in n for n in m.design.notes)
    pri = m.prior_table
    assert str(pri["Intercept"].prior) == "normal(mu=0, sigma=2.5)"
    assert pri["x"].prior.kwargs["sigma"] == pytest.approx(2.5 / np.std(d.x, ddof=1))
    assert pri["sd(g, Intercept)"].prior.kwargs["sigma"] == 1.0       # not sd(y)
    assert "probit scale" in pri["sd(g, Intercept)"].source
    mb = blmm.Model("y ~ x + (1 | g)", d.assign(y=d.y > 3), family="bernoulli")
    np.testing.assert_array_equal(mb.design.y, m.design.y)
    nb = blmm.Model("y ~ x + offset(log(exposure)) + (1 | g)", d, family="negbinomial")
    assert str(nb.prior_table["phi"].prior) == "gamma(alpha=2, beta=0.1)"
    assert "x" in nb.design.fixed_terms and len(nb.design.fixed_terms) == 2     # no offset coefficient
    np.testing.assert_allclose(nb.design.offset, np.log(d.exposure))
    mo = blmm.Model("y ~ x + (1 | g)", d.assign(le=np.log(d.exposure)), family="poisson", offset="le")
    np.testing.assert_allclose(mo.design.offset, nb.design.offset)
    assert "offset" not in mo.priors["parameter"].tolist()
    plan = blmm.Model("y ~ x + (1 | g)", d, family="poisson").plan()
    assert plan.path == "quadrature" and "Gauss-Hermite" in plan.reason      # issue 13: offsets reach the kernel


def test_model_file_keys_round_trip(tmp_path):
    from bayeslmm.specfile import dumps_model_file, loads_model_file
    text = ('[model]\nformula = "incidence ~ period + (1 | herd)"\nfamily = "binomial"\nlink = "probit"\n'
            'trials = "size"\n[data]\ndataset = "cbpp"\n')
    mf = loads_model_file(text)
    assert (mf.spec.family, mf.spec.link, mf.spec.trials) == ("binomial", "probit", "size")
    again = loads_model_file(dumps_model_file(mf))
    assert again.spec == mf.spec


def test_rank_inverse_normal():
    y = np.array([3.0, 10.0, 1.0, 10.0, 7.0, np.nan])
    z = blmm.rank_inverse_normal(y)
    r = stats.rankdata(y[:5])                       # ties averaged: 4.5, 4.5
    np.testing.assert_allclose(z[:5], stats.norm.ppf((r - 3 / 8) / (5 + 1 / 4)), rtol=1e-12)
    assert np.isnan(z[5]) and z[1] == z[3]
    s = blmm.rank_inverse_normal(pd.Series([2.0, 1.0], index=[7, 8], name="v"))
    assert list(s.index) == [7, 8] and s.name == "v" and s[7] > 0
    big = blmm.rank_inverse_normal(np.random.default_rng(0).exponential(size=4000))
    assert abs(np.mean(big)) < 1e-12 and abs(np.std(big) - 1) < 0.01   # normal scores, any input
    with pytest.raises(DataError):
        blmm.rank_inverse_normal(np.ones((2, 2)))


# -- fits -----------------------------------------------------------------------------------------
def _sim(family: str, seed: int):
    rng = np.random.default_rng(seed)
    J, n_j = 24, 12
    g = np.repeat(np.arange(J), n_j)
    x = rng.normal(size=J * n_j)
    sd = 0.6
    u = rng.normal(0, sd, J)
    df = pd.DataFrame({"x": x, "g": g.astype(str)})
    truth = {"sd(g, Intercept)": sd}
    if family == "bernoulli":
        b0, b1 = -0.3, 0.9
        df["y"] = (rng.random(len(x)) < 1 / (1 + np.exp(-(b0 + b1 * x + u[g])))).astype(float)
        formula = "y ~ x + (1 | g)"
    elif family == "binomial":
        b0, b1 = -0.5, 0.6
        n = rng.integers(3, 12, len(x))
        s = rng.binomial(n, 1 / (1 + np.exp(-(b0 + b1 * x + u[g]))))
        df["s"], df["f"] = s, n - s
        formula = "cbind(s, f) ~ x + (1 | g)"
    elif family in ("poisson", "negbinomial"):
        b0, b1 = 0.5, 0.4
        df["exposure"] = rng.uniform(0.5, 2.0, len(x))
        mu = np.exp(b0 + b1 * x + u[g] + np.log(df.exposure))
        if family == "poisson":
            df["y"] = rng.poisson(mu)
        else:
            truth["phi"] = 4.0
            df["y"] = rng.poisson(rng.gamma(4.0, mu / 4.0))
        formula = "y ~ x + offset(log(exposure)) + (1 | g)"
    else:
        b0, b1 = 1.0, 0.5
        truth.update({"sigma": 0.5, "nu": 4.0})
        df["y"] = b0 + b1 * x + u[g] + 0.5 * rng.standard_t(4.0, len(x))
        formula = "y ~ x + (1 | g)"
    truth.update({"Intercept": b0, "x": b1})
    return formula, df, truth


RECOVERY = {"bernoulli": 21, "binomial": 22, "poisson": 23, "negbinomial": 24, "student_t": 25}


@pytest.fixture(scope="module")
def recovery_fits(get_fit):
    out = {}
    for fam, seed in RECOVERY.items():
        formula, df, truth = _sim(fam, seed)
        out[fam] = (get_fit(formula, df, {"family": fam}, **FIT), truth)
    return out


def test_parameter_recovery(recovery_fits):
    misses, zs = 0, {}
    for fam, (fit, truth) in recovery_fits.items():
        tab = pd.concat([fit.summary(), fit.variance_components()])
        for label, value in truth.items():
            row = tab.loc[label]
            z = (row["mean"] - value) / row["sd"]
            zs[(fam, label)] = round(float(z), 2)
            misses += not (row["hdi_lower"] <= value <= row["hdi_upper"])
    assert len(zs) == 18
    assert all(abs(z) < 3.5 for z in zs.values()), zs
    assert misses <= 4, zs


def test_every_report_works_for_every_family(recovery_fits):
    for fam, (fit, _) in recovery_fits.items():
        vc = fit.variance_components()
        assert np.all(np.isfinite(vc["mean"])) and "var(Residual)" in vc.index
        icc = fit.icc()
        assert 0 < icc.table["mean"].iloc[0] < 1
        assert ("latent" in icc.table["scale"].iloc[0]) == (fam != "student_t")
        ll = fit.log_likelihood()
        assert ll.shape == (2, FIT["draws"], fit.design.n) and np.all(np.isfinite(ll))
        loo = fit.loo()
        assert np.isfinite(loo.elpd)
        link = fit.predict(kind="link")
        mean = fit.predict(kind="mean")
        fam_obj = get_family(fit.spec.family, fit.spec.link)
        if fam != "binomial":
            np.testing.assert_allclose(mean["mean"], fam_obj.inverse_link(
                fit.predict(kind="link", summary=False).to_numpy()).mean(axis=(0, 1)), rtol=1e-10)
        resp = fit.predict(kind="response")
        assert len(link) == len(resp) == fit.design.n
        from bayeslmm.diagnostics import posterior_predictive
        pp = posterior_predictive(fit, num_draws=20)["posterior_predictive"]["y"].to_numpy()
        if fam != "student_t":
            assert np.all(pp >= 0) and np.all(pp == np.round(pp))
        sh = fit.shrinkage().table
        assert np.all(np.isfinite(sh["no_pooling"])) and "flag" in sh.columns or fam == "student_t"
        assert fit.diagnostics() is not None


def test_offset_enters_the_predictions(recovery_fits):
    fit, _ = recovery_fits["poisson"]
    new = pd.DataFrame({"x": [0.0, 0.0], "g": ["0", "0"], "exposure": [1.0, 3.0]})
    eta = fit.predict(new, kind="link", summary=False).to_numpy()
    np.testing.assert_allclose(eta[..., 1] - eta[..., 0], np.log(3.0), atol=1e-12)


def test_html_report_for_a_count_family(recovery_fits, tmp_path):
    fit, _ = recovery_fits["negbinomial"]
    # every figure, at low resolution; PSIS-LOO is checked for every family above
    path = fit.report(tmp_path / "nb", dpi=40, loo=False, verbose=False)
    html = open(path).read() if str(path).endswith(".html") else open(f"{path}/report.html").read()
    assert "negbinomial" in html and "phi" in html


def test_shrinkage_flags_separation_and_zero_counts(get_fit):
    rng = np.random.default_rng(5)
    g = np.repeat(np.arange(12), 10)
    y = (rng.random(120) < 0.4).astype(float)
    y[g == 0] = 1.0                                          # group 0: all successes
    y[g == 1] = 0.0                                          # group 1: all failures
    df = pd.DataFrame({"y": y, "x": rng.normal(size=120), "g": g.astype(str)})
    # shorter chains (2 x 200): the flags do not depend on the draws, and the orderings below hold
    # by ~2 posterior SDs (1.65 and 2.95 apart, SDs ~0.85), far above the MCSE (~0.1 SD)
    fit = get_fit("y ~ x + (1 | g)", df, {"family": "bernoulli"}, **dict(FIT, draws=200, tune=200))
    tab = fit.shrinkage().table.set_index("level")
    assert tab.loc["0", "flag"] == "separation" and tab.loc["1", "flag"] == "separation"
    assert np.all(np.isfinite(tab[["no_pooling", "complete_pooling", "partial_mean"]].to_numpy()))
    assert tab["shrinkage"].isna().all()          # defined for the Gaussian family only (shrinkage.py)
    assert (tab.loc[[str(k) for k in range(2, 12)], "flag"] == "").all()
    assert tab.loc["0", "no_pooling"] > tab.loc["0", "partial_mean"] > tab.loc["1", "partial_mean"]


def test_cbpp_against_lme4(get_fit):
    """lme4's glmer (Laplace) on cbpp, from the ``example(glmer)`` output of lme4 (gm1):
    (Intercept) -1.3983 (SE 0.2312), period2 -0.9919 (0.3032), period3 -1.1282 (0.3228),
    period4 -1.5797 (0.4220), herd SD 0.6421 (variance 0.4123); the same summary is reproduced
    in many course notes printing ``summary(glmer(cbind(incidence, size - incidence) ~ period +
    (1 | herd), cbpp, binomial))``.

    Fixed effects: with 56 rows the likelihood is close to normal in the fixed effects and their
    priors (normal(0, 2.5 / sd(x)) on the logit scale) are weak, so the posterior mean should be
    within 1 posterior SD of the ML estimate (the SEs agree within 10%; MCSE adds < 0.1 SD).
    sd(herd): the marginal posterior of an SD from 15 groups is right-skewed and averages over
    the uncertainty ML ignores, so its median is expected above the ML estimate (by about 0.1-0.2
    here, a third to a half of its posterior SD ~0.2): we require 0.9 x ML < median < 1.5 x ML.
    """
    fit = get_fit("cbind(incidence, size - incidence) ~ period + (1 | herd)", blmm.load_dataset("cbpp"),
                  {"family": "binomial"}, **FIT)
    lme4 = {"Intercept": (-1.3983, 0.2312), "period[T.2]": (-0.9919, 0.3032),
            "period[T.3]": (-1.1282, 0.3228), "period[T.4]": (-1.5797, 0.4220)}
    s = fit.summary()
    for term, (est, se) in lme4.items():
        assert abs(s.loc[term, "mean"] - est) < s.loc[term, "sd"], (term, s.loc[term, "mean"], est)
        assert abs(s.loc[term, "sd"] / se - 1) < 0.2, term
    sd_draws = fit.draws("sd_herd")[:, 0]
    assert 0.9 * 0.6421 < np.median(sd_draws) < 1.5 * 0.6421, np.median(sd_draws)


def test_student_t_resists_outliers(get_fit):
    """5% gross outliers (+12 residual SDs, all at large x): the Gaussian slope is pulled away and its
    interval excludes the truth; the Student-t fit keeps the truth inside its 95% HDIs."""
    rng = np.random.default_rng(31)
    J, n_j = 20, 12
    g = np.repeat(np.arange(J), n_j)
    x = rng.normal(size=J * n_j)
    u = rng.normal(0, 0.6, J)
    u -= u.mean()       # centred: the realised intercept is the truth (with 20 groups, mean(u) ~ 0.13)
    y = 1.0 + 0.5 * x + u[g] + rng.normal(0, 0.5, J * n_j)
    out = np.argsort(x)[-int(0.05 * len(x)):]
    y[out] += 6.0
    df = pd.DataFrame({"y": y, "x": x, "g": g.astype(str)})
    robust = get_fit("y ~ x + (1 | g)", df, {"family": "student_t"}, **FIT).summary()
    gauss = get_fit("y ~ x + (1 | g)", df, **FIT).summary()     # the exact collapsed path
    for term, value in (("Intercept", 1.0), ("x", 0.5)):
        assert robust.loc[term, "hdi_lower"] <= value <= robust.loc[term, "hdi_upper"], term
    assert not gauss.loc["x", "hdi_lower"] <= 0.5 <= gauss.loc["x", "hdi_upper"]
