"""Known measurement error (``y | se(s) ~ ...``): meta-analysis and the eight schools (issue 20).

* Exact identities (no sampling): the collapsed log-density of whitened rows (numpy elimination,
  the one-factor kernel and the nested graph inside the built ``pm.Model``) equals the dense
  multivariate-normal density y ~ N(X b, diag(s^2) + Z G Z') to 1e-10; the non-centred graph's
  likelihood is N(y_i | eta_i, s_i) (and sqrt(s_i^2 + sigma^2) with ``sigma = TRUE``).
* The eight schools (mu ~ normal(0, 5), tau ~ halfcauchy(5)) on the collapsed path at default
  settings (4 chains x 1000 draws): 0 divergences, and the posterior of (mu, tau) and of the
  school effects against an exact reference by two-dimensional numerical integration of
  p(mu, tau | y), whose likelihood is closed-form: y_j ~ N(mu, tau^2 + s_j^2).

Tolerance: |posterior estimate - exact| <= Z * MCSE (ArviZ's MCSE of the mean, SD or quantile),
Z = 4: a two-sided false alarm of 6.3e-5 per comparison if the MCSE is right, <= 26 x 6.3e-5
= 1.7e-3 for all 26 comparisons (Bonferroni). The grid error is far below the MCSE (mu step 0.05
on a posterior SD of ~3.3; log tau from 1e-4 to 400 in 1500 steps: the neglected mass is < 1e-5).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.stats as st

import bayeslmm as blmm
from bayeslmm import stats as gs
from bayeslmm.errors import DataError, FormulaError, SpecError
from bayeslmm.families import family_of, typical_variance
from bayeslmm.paths import choose_path
from bayeslmm.paths import elimination as el
from bayeslmm.validation.meta import exact_meta_posterior

EIGHT = blmm.load_dataset("eight_schools")
PRIORS = {"Intercept": "normal(0, 5)", "sd": "halfcauchy(5)"}
FORMULA = "y | se(s) ~ 1 + (1 | school)"
Z = 4.0


# --------------------------------------------------------------------------------------------
# grammar and bad input
# --------------------------------------------------------------------------------------------
def test_formula_grammar():
    f = blmm.parse_formula("y | se(s) ~ x + (1 | lab/study)")
    assert (f.response, f.se, f.se_sigma, f.fixed) == ("y", "s", False, "x")
    assert [t.group for t in f.random] == ["lab", "lab:study"]
    assert blmm.parse_formula("y|se( s , sigma = TRUE )~1").se_sigma is True
    assert blmm.parse_formula("y | se(s, sigma=FALSE) ~ 1").se_sigma is False
    spec = blmm.build_spec(FORMULA)
    assert blmm.build_spec(**{k: v for k, v in spec.to_dict().items() if k != "priors"}) == spec
    for bad in ["y | se(s * 2) ~ 1", "y | weights(w) ~ 1", "y | se(__import__) ~ 1",
                "y | se(s, sigma = 1) ~ 1", "y | se(s, sd = TRUE) ~ 1", "y | ~ 1", "y | se(s) | se(t) ~ 1",
                "y | se(s); import os ~ 1"]:
        with pytest.raises(FormulaError, match="se\\(column\\)"):
            blmm.parse_formula(bad)


def test_family_variant_and_typical_variance():
    fam = family_of(blmm.build_spec(FORMULA))
    assert fam.known_se and fam.aux_names == () and fam.supports_collapsed
    s = EIGHT["s"].to_numpy(float)
    # the Gaussian family owns the likelihood: N(y | eta, s) per row, sqrt(s^2 + sigma^2) with sigma
    np.testing.assert_allclose(fam.log_likelihood(EIGHT["y"].to_numpy(float), 1.0, {}, se=s),
                               st.norm.logpdf(EIGHT["y"], 1.0, s), rtol=1e-13)
    fs = family_of(blmm.build_spec("y | se(s, sigma = TRUE) ~ 1 + (1 | school)"))
    np.testing.assert_allclose(fs.log_likelihood(EIGHT["y"].to_numpy(float), 1.0, {"sigma": 2.0}, se=s),
                               st.norm.logpdf(EIGHT["y"], 1.0, np.sqrt(s**2 + 4.0)), rtol=1e-13)
    # Higgins & Thompson (2002): (k-1) sum w / ((sum w)^2 - sum w^2); equal s -> s^2
    w = 1 / s**2
    assert typical_variance(s) == pytest.approx(7 * w.sum() / (w.sum() ** 2 - (w**2).sum()), rel=1e-14)
    assert typical_variance([3.0] * 5) == pytest.approx(9.0, rel=1e-14)


@pytest.mark.parametrize("value, match", [
    (-1.0, "must be > 0"), (0.0, "must be > 0"), (np.nan, "is missing"), (np.inf, "infinite")])
def test_bad_standard_errors_name_the_column(value, match):
    df = EIGHT.rename(columns={"s": "stderr"}).astype({"stderr": float})
    df.loc[3, "stderr"] = value
    with pytest.raises(DataError, match=f"'stderr'.*{match}"):
        blmm.Model("y | se(stderr) ~ 1 + (1 | school)", df)
    assert np.isfinite(EIGHT["s"]).all()                  # the user's frame is untouched


def test_non_numeric_or_absent_standard_errors():
    df = EIGHT.assign(s=EIGHT["s"].astype(str))
    with pytest.raises(DataError, match="standard-error column 's'.*numeric"):
        blmm.Model(FORMULA, df)
    with pytest.raises(DataError, match="'se_col'.*not in the data"):
        blmm.Model("y | se(se_col) ~ 1 + (1 | school)", EIGHT)
    with pytest.raises(DataError, match="names the response"):
        blmm.Model("y | se(y) ~ 1 + (1 | school)", EIGHT)


def test_sigma_true_takes_the_noncentred_path_and_says_why():
    m = blmm.Model("y | se(s, sigma = TRUE) ~ 1 + (1 | school)", EIGHT)
    plan = m.plan()
    assert plan.path == "noncentred" and "cannot be whitened" in plan.reason
    assert "sigma" in m.priors["parameter"].tolist()
    with pytest.raises(SpecError, match="whitened"):
        m.plan("collapsed")
    with pytest.raises(SpecError, match="whitened"):
        gs.group_stats(m.design, (m.design.factors[0],))
    m0 = blmm.Model(FORMULA, EIGHT, priors=PRIORS)
    assert m0.plan().path == "collapsed" and "known standard errors" in m0.plan().reason
    assert "sigma" not in m0.priors["parameter"].tolist()
    with pytest.raises(blmm.errors.PriorError, match="sigma"):
        blmm.Model(FORMULA, EIGHT, priors={"sigma": "halfnormal(1)"})


def test_se_belongs_to_the_gaussian_family_only():
    """se() with another family, or beside a cbind() response, is refused before any data are read;
    family_of keeps the spec's link for every other family."""
    for fam in ("student_t", "bernoulli", "poisson", "negbinomial"):
        with pytest.raises(SpecError, match="needs family='gaussian'"):
            blmm.build_spec(FORMULA, family=fam)
    with pytest.raises(FormulaError, match="cbind\\(\\) response cannot have known standard errors"):
        blmm.parse_formula("cbind(s, f) | se(e) ~ 1 + (1 | g)")
    with pytest.raises(SpecError, match="no known-standard-error variant"):
        blmm.families.get_family("poisson").with_known_se()
    probit = family_of(blmm.build_spec("y ~ 1 + (1 | g)", family="bernoulli", link="probit"))
    assert (probit.name, probit.link, probit.known_se) == ("bernoulli", "probit", False)
    assert blmm.build_spec(FORMULA).family_object.known_se


def test_known_se_shrinkage_measure_matches_dense_algebra():
    """The primary shrinkage measure with known standard errors, [(I + S Z_j' Omega_j^-1 Z_j)^-1 S]_tt
    / S_tt, against a dense per-group computation (random intercept and slope, several rows per
    group, with and without sigma); sigma -> 0 gives the no-sigma branch."""
    from bayeslmm.shrinkage import _known_se_shrinkage
    rng = np.random.default_rng(3)
    n, J = 40, 5
    df = pd.DataFrame({"y": rng.normal(size=n), "x": rng.normal(size=n), "s": rng.uniform(0.5, 2, n),
                       "g": np.repeat(list("abcde"), n // J)})
    f = blmm.Model("y | se(s) ~ x + (x | g)", df).design.factors[0]
    se = df["s"].to_numpy()
    A = rng.normal(size=(3, 2, 2))
    S = A @ A.transpose(0, 2, 1) + 0.1 * np.eye(2)                      # 3 draws of a 2x2 covariance
    sigma = np.array([0.3, 1.0, 2.0])
    for sig in (None, sigma):
        got = _known_se_shrinkage(f, S, se, sig)
        for d in range(3):
            for j in range(J):
                rows = f.codes == j
                om = se[rows] ** 2 + (0.0 if sig is None else sig[d] ** 2)
                Zj = f.Z[rows]
                V = np.linalg.solve(np.eye(2) + S[d] @ Zj.T @ (Zj / om[:, None]), S[d])
                np.testing.assert_allclose(got[d, j], np.diag(V) / np.diag(S[d]), rtol=1e-10)
    np.testing.assert_allclose(_known_se_shrinkage(f, S, se, np.full(3, 1e-9)),
                               _known_se_shrinkage(f, S, se, None), rtol=1e-9)


# --------------------------------------------------------------------------------------------
# exact identities against the dense multivariate normal
# --------------------------------------------------------------------------------------------
def _meta_frame(seed: int) -> pd.DataFrame:
    """Labs > studies > 1-3 estimates each, with a covariate and unequal standard errors."""
    rng = np.random.default_rng(seed)
    rows = []
    for lab in range(5):
        for study in range(rng.integers(2, 4)):
            for _ in range(rng.integers(1, 4)):
                rows.append({"lab": f"L{lab}", "study": f"S{study}", "x": rng.normal(),
                             "s": rng.uniform(0.3, 3.0)})
    df = pd.DataFrame(rows)
    df["y"] = 1 + 0.5 * df["x"] + rng.normal(size=len(df)) * df["s"]
    return df


DESIGNS = {"regression_slope": "y | se(s) ~ x + (1 + x | lab)",
           "nested": "y | se(s) ~ x + (1 | lab/study)"}


def _dense_group_logpdf(design, chain, b, covs):
    """log N(y_j | X_j b, diag(s_j^2) + Z_j G Z_j') per top-level group, by dense algebra."""
    V = np.diag(design.se**2)
    for f in design.factors:
        for j in range(f.n_levels):
            idx = np.flatnonzero(f.codes == j)
            Zj = f.Z[idx]
            V[np.ix_(idx, idx)] += Zj @ covs[f.name] @ Zj.T
    top = chain[0].codes
    return np.array([st.multivariate_normal(design.X[idx] @ b, V[np.ix_(idx, idx)]).logpdf(design.y[idx])
                     for idx in (np.flatnonzero(top == j) for j in range(chain[0].n_levels))])


@pytest.mark.parametrize("name", list(DESIGNS))
def test_whitened_numpy_logdensity_equals_dense_mvn(name):
    m = blmm.Model(DESIGNS[name], _meta_frame(3))
    chain, _ = gs.nesting_chain(m.design)
    stats = gs.group_stats(m.design, chain)
    assert stats.known_scale
    rng = np.random.default_rng(4)
    b = rng.normal(size=len(m.design.fixed_terms))
    sds = [rng.uniform(0.3, 2.0, f.q) for f in chain]
    cors = [np.array([[1.0, -0.4], [-0.4, 1.0]]) if f.q == 2 else np.eye(f.q) for f in chain]
    d, s2, logS, logdet, quad, _, ops = el._numpy_pieces(stats, b[None], [x[None] for x in sds],
                                                         [c[None] for c in cors], np.ones(1))
    got = el._np_group_loglik(stats, d, s2, logS, logdet, quad, ops)[:, 0] - stats.log_se
    covs = {f.name: c * np.outer(sd, sd) for f, sd, c in zip(chain, sds, cors)}
    np.testing.assert_allclose(got, _dense_group_logpdf(m.design, chain, b, covs), rtol=1e-10, atol=0)


@pytest.mark.parametrize("name", list(DESIGNS))
def test_built_collapsed_model_equals_dense_mvn(name):
    """The pm.Model NUTS samples: the kernel (one factor) or the elimination graph (nested), with
    sigma fixed at 1 on whitened rows and the -sum log s_i constant, against the dense MVN."""
    from bayeslmm.paths.collapsed import build_collapsed_model
    m = blmm.Model(DESIGNS[name], _meta_frame(5))
    chain, _ = gs.nesting_chain(m.design)
    model = build_collapsed_model(m.design, m.prior_table, chain=chain)
    assert "sigma" not in {v.name for v in model.free_RVs}
    outs = [model.logp(vars=[model["y_marginal"]], sum=False)[0], model["b"]]
    outs += [model[f"sd_{f.name}"] for f in chain]
    cor_names = [f"cor_{f.name}" for f in chain if f.has_correlation]
    outs += [model[c] for c in cor_names]
    fn = model.compile_fn(model.replace_rvs_by_values(outs), point_fn=True, mode="FAST_COMPILE")
    rng = np.random.default_rng(6)
    point = {k: v + 0.4 * rng.normal(size=np.shape(v)) for k, v in model.initial_point().items()}
    lp, b, *rest = fn(point)
    sds, cors = rest[:len(chain)], dict(zip(cor_names, rest[len(chain):]))
    covs = {f.name: cors.get(f"cor_{f.name}", np.eye(f.q)) * np.outer(sd, sd) for f, sd in zip(chain, sds)}
    np.testing.assert_allclose(lp, _dense_group_logpdf(m.design, chain, b, covs), rtol=1e-10, atol=0)


@pytest.mark.parametrize("formula", [FORMULA, "y | se(s, sigma = TRUE) ~ 1 + (1 | school)"])
def test_noncentred_likelihood_uses_the_known_standard_errors(formula):
    from bayeslmm.paths.noncentred import build_model
    m = blmm.Model(formula, EIGHT, priors=PRIORS)
    model = build_model(m.design, m.prior_table)
    names = ["b", "r_school"] + (["sigma"] if "sigma" in model.named_vars else [])
    outs = [model.logp(vars=[model["y"]], sum=False)[0]] + [model[n] for n in names]
    fn = model.compile_fn(model.replace_rvs_by_values(outs), point_fn=True, mode="FAST_COMPILE")
    rng = np.random.default_rng(2)
    point = {k: v + 0.5 * rng.normal(size=np.shape(v)) for k, v in model.initial_point().items()}
    lp, b, r, *sigma = fn(point)
    sd = np.sqrt(m.design.se**2 + (sigma[0] ** 2 if sigma else 0.0))
    np.testing.assert_allclose(lp, st.norm.logpdf(m.design.y, b[0] + r[:, 0], sd), rtol=1e-12)


# --------------------------------------------------------------------------------------------
# the eight schools against exact numerical integration
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def eight_fit():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # default settings: 4 chains x 1000 draws after 1000 tuning steps, target_accept 0.8 (the collapsed path's default)
        return blmm.Model(FORMULA, EIGHT, priors=PRIORS).fit(seed=20, progressbar=False, verbose=False)


def test_eight_schools_collapsed_has_no_divergences(eight_fit):
    assert eight_fit.info["method"] == "collapsed"
    assert int(eight_fit.idata["sample_stats"]["diverging"].sum()) == 0


def _check(name, draws, exact, what, prob=None):
    import arviz as az
    da = np.asarray(draws)[None] if np.ndim(draws) == 1 else np.asarray(draws)
    if what == "mean":
        est, se = da.mean(), float(az.mcse(da, method="mean"))
    elif what == "sd":
        est, se = da.std(ddof=1), float(az.mcse(da, method="sd"))
    else:
        est, se = np.quantile(da, prob), float(az.mcse(da, method="quantile", prob=prob))
    assert abs(est - exact) <= Z * se, f"{name} {what}{prob or ''}: {est:.4f} vs exact {exact:.4f} (MCSE {se:.4f})"


def test_eight_schools_posterior_matches_numerical_integration(eight_fit):
    ex = exact_meta_posterior(EIGHT["y"], EIGHT["s"], mu_sd=5.0, tau_prior="halfcauchy", tau_scale=5.0)
    post = eight_fit.posterior
    mu = post["b"].sel(term="Intercept").transpose("chain", "draw").to_numpy()
    tau = post["sd_school"].isel(school__term=0).transpose("chain", "draw").to_numpy()
    for name, x in (("mu", mu), ("tau", tau)):
        _check(name, x, ex[name][0], "mean")
        _check(name, x, ex[name][1], "sd")
        for p in (0.05, 0.5, 0.95):
            _check(name, x, ex[f"{name}_q{p}"], "quantile", p)
    # school effects: the collapsed path draws r_j exactly from its conditional after sampling
    theta = mu[..., None] + post["r_school"].isel(school__term=0).transpose("chain", "draw", ...).to_numpy()
    for j in range(8):
        _check(f"theta_{j}", theta[..., j], ex[f"theta_{j}"][0], "mean")
        _check(f"theta_{j}", theta[..., j], ex[f"theta_{j}"][1], "sd")


def test_eight_schools_i2_and_shrinkage(eight_fit):
    """I^2 draws are tau^2 / (tau^2 + s_typ^2); the model shrinkage of school j is the posterior mean
    of s_j^2 / (s_j^2 + tau^2); the no-pooling estimate of a one-study group is its own y_j."""
    tau = eight_fit.draws("sd_school")[:, 0]
    s = EIGHT["s"].to_numpy(float)
    res = eight_fit.icc()
    assert res.table["kind"].tolist() == ["I2"] and "Higgins" in res.table.attrs["definition"]
    np.testing.assert_allclose(res.draws[("school", "all")], tau**2 / (tau**2 + typical_variance(s)), rtol=1e-12)
    tab = eight_fit.shrinkage().table
    np.testing.assert_allclose(tab["no_pooling"], EIGHT["y"], rtol=1e-10)
    np.testing.assert_allclose(tab["shrinkage"], (s**2 / (s**2 + tau[:, None] ** 2)).mean(axis=0), rtol=1e-10)
    assert tab["shrinkage"].idxmax() == int(np.argmax(s))     # the noisiest school shrinks most
    fig = eight_fit.plot_shrinkage()
    assert fig.axes
    # no residual SD is estimated: no Residual rows in the variance components
    vc = eight_fit.variance_components()
    assert "var(school, Intercept)" in vc.index and not any(str(i).endswith("(Residual)") or i == "sigma"
                                                            for i in vc.index)
    # per-school LOO works from the known-SE likelihood
    assert eight_fit.log_likelihood().shape[-1] == 8


def test_model_file_carries_se_in_the_formula_key():
    from bayeslmm.specfile import dumps_model_file, loads_model_file
    mf = loads_model_file('[model]\nformula = "y | se(s) ~ 1 + (1 | school)"\n[data]\ndataset = "eight_schools"\n')
    assert (mf.spec.formula.se, mf.spec.formula.se_sigma) == ("s", False)
    assert loads_model_file(dumps_model_file(mf)).spec == mf.spec
    assert mf.build_model().plan().path == "collapsed"
