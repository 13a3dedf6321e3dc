"""The crossed collapsed path wired into the package (issue 14): Model -> choose_path -> fit.

References: the dense multivariate normal on V = sigma^2 I + Z G Z' (Z built densely here, in the
test only) for the model's likelihood term, central finite differences for the model's gradient on
the sampler's unconstrained space, the dense Gaussian conditional for the drawn group effects, and
the non-centred path (a different algorithm on the same model) for the posterior.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.linalg as sla
import scipy.stats as ss
import xarray as xr
from pytensor.compile.mode import Mode

import bayeslmm as blmm
from bayeslmm.paths import choose_path


def _frame(seed=4):
    """Subjects x items, unbalanced (a quarter of the cells dropped, subject 0 never sees item 0),
    with sessions nested in subjects: crossed + nested, three factors."""
    rng = np.random.default_rng(seed)
    s, i = (m.ravel() for m in np.meshgrid(np.arange(7), np.arange(6), indexing="ij"))
    s, i = np.repeat(s, 2), np.repeat(i, 2)
    keep = (rng.random(s.size) > 0.25) & ~((s == 0) & (i == 0))
    s, i = s[keep], i[keep]
    n = len(s)
    x = rng.normal(size=n)
    sess = rng.integers(0, 2, n)
    y = 3 + 0.5 * x + rng.normal(0, 1, 7)[s] + rng.normal(0, 0.5, 7)[s] * x + rng.normal(0, .7, 6)[i] \
        + rng.normal(size=n)
    return pd.DataFrame({"y": y, "x": x, "s": [f"s{k}" for k in s], "i": [f"i{k}" for k in i],
                         "sess": [f"t{k}" for k in sess]})


# PyTensor's Python linker: nothing to compile (the kernel is numba already), seconds saved per test
PY = Mode(linker="py", optimizer="fast_compile")
FORMULA = "y ~ x + (1 + x | s) + (1 | i) + (1 | s:sess)"


def _dense_V(design, sds, cors, sigma):
    n = design.n
    Zs, Gs = [], []
    for f, sd, C in zip(design.factors, sds, cors):
        Zf = np.zeros((n, f.n_levels * f.q))
        for a in range(f.q):
            Zf[np.arange(n), f.codes * f.q + a] = f.Z[:, a]
        Zs.append(Zf)
        Gs.append(np.kron(np.eye(f.n_levels), np.outer(sd, sd) * C))
    Z, G = np.hstack(Zs), sla.block_diag(*Gs)
    return Z, G, sigma ** 2 * np.eye(n) + Z @ G @ Z.T


@pytest.fixture(scope="module")
def built():
    from bayeslmm.paths.crossed_path import build_crossed_path_model
    m = blmm.Model(FORMULA, _frame())
    return m, build_crossed_path_model(m.design, m.prior_table)


def _point(pmm, seed):
    rng = np.random.default_rng(seed)
    ip = pmm.initial_point()
    return {k: v + 0.4 * rng.standard_normal(np.shape(v)) for k, v in ip.items()}


def test_plan_and_design_are_crossed_and_nested(built):
    m, _ = built
    plan = choose_path(m.spec, m.design)
    assert plan.path == "crossed" and "integrated out exactly" in plan.reason
    f = {f.name: f for f in m.design.factors}
    cells = np.zeros((f["s"].n_levels, f["i"].n_levels), int)
    np.add.at(cells, (f["s"].codes, f["i"].codes), 1)
    assert (cells == 0).any() and len(m.design.factors) == 3
    # Model.build("collapsed") gives the crossed collapsed model: no offsets z_{g} to sample
    free = {v.name for v in m.build("collapsed").free_RVs}
    assert free == {"Intercept_c", "beta", "sd_s", "cpc_s", "sd_i", "sd_s:sess", "sigma"}


def test_known_se_offset_and_other_families_keep_their_paths():
    """Only Gaussian crossed models without known standard errors or offset take the crossed path."""
    df = _frame().assign(s_e=0.5, expo=1.0, k=lambda d: (d.y > 3).astype(int))
    f = "y ~ x + (1 | s) + (1 | i)"
    assert blmm.Model(f, df).plan().path == "crossed"
    assert blmm.Model("y | se(s_e) ~ x + (1 | s) + (1 | i)", df).plan().path == "noncentred"
    off = blmm.Model(f, df, offset="expo").plan()
    assert off.path == "noncentred" and "offset" in off.reason
    assert blmm.Model("k ~ x + (1 | s) + (1 | i)", df, family="bernoulli").plan().path == "noncentred"


def test_model_likelihood_equals_dense_mvn(built):
    """The model's likelihood term at random points = log N(y | X b, V) from the model's own b, sd,
    cor and sigma, to 1e-8 (relative)."""
    m, pmm = built
    d = m.design
    names = ["b", *[f"sd_{f.name}" for f in d.factors], "cor_s", "sigma"]
    fn = pmm.compile_fn([pmm["y_marginal"], *[pmm[v] for v in names]], inputs=pmm.value_vars,
                        on_unused_input="ignore", mode=PY)
    for seed in range(3):
        lp, b, *rest = fn(_point(pmm, seed))
        sds, cor_s, sigma = rest[:3], rest[3], rest[4]
        cors = [cor_s, np.eye(1), np.eye(1)]
        _, _, V = _dense_V(d, sds, cors, float(sigma))
        ref = ss.multivariate_normal(d.X @ b, V).logpdf(d.y)
        assert float(lp) == pytest.approx(ref, rel=1e-8)


def test_model_gradient_equals_finite_differences(built):
    """The model's gradient on the unconstrained space (log SDs, LKJ's transform, centred
    intercept) against central differences, step 1e-5: truncation ~1e-10, round-off ~1e-9."""
    _, pmm = built
    logp, dlogp = pmm.compile_logp(mode=PY), pmm.compile_dlogp(mode=PY)
    pt0 = _point(pmm, 7)
    g = dlogp(pt0)
    fd = []
    for v in pmm.value_vars:
        x = np.asarray(pt0[v.name], dtype=float)
        for k in range(x.size):
            h = 1e-5
            up, dn = dict(pt0), dict(pt0)
            e = np.zeros(x.size)
            e[k] = h
            up[v.name] = (x.ravel() + e).reshape(x.shape)
            dn[v.name] = (x.ravel() - e).reshape(x.shape)
            fd.append((logp(up) - logp(dn)) / (2 * h))
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-5)


def test_drawn_effects_follow_the_exact_conditional(built):
    """With S = 6000 identical posterior draws, the drawn r_{g} (stored under the package's names,
    dims and level coords) have the dense conditional's mean and variance: each entry within 4.5
    standard errors (family-wise false alarm < 1e-3 over ~60 entries)."""
    from bayeslmm.paths.crossed_path import add_crossed_effects, design_stats
    from bayeslmm.posterior import coords_of, level_dim, term_dim
    m, _ = built
    d = m.design
    S = 6000
    b = np.array([2.5, 0.4])
    sds = [np.array([0.9, 0.4]), np.array([0.6]), np.array([0.5])]
    cor = np.array([[1.0, -0.3], [-0.3, 1.0]])
    sigma = 0.8

    def rep(x, dims):
        return (("chain", "draw", *dims), np.broadcast_to(x, (2, S // 2, *np.shape(x))).copy())
    post = xr.Dataset({"b": rep(b, ["term"]), "sd_s": rep(sds[0], ["s__term"]), "cor_s": rep(cor, ["s__term", "s__term2"]),
                       "sd_i": rep(sds[1], ["i__term"]), "sd_s:sess": rep(sds[2], ["s:sess__term"]),
                       "sigma": rep(sigma, [])},
                      coords={"term": list(d.fixed_terms)})
    out = add_crossed_effects(post, d, design_stats(d), seed=3)
    coords = coords_of(d)
    Z, G, V = _dense_V(d, sds, [cor, np.eye(1), np.eye(1)], sigma)
    VZG = np.linalg.solve(V, Z @ G)
    mean, cov = VZG.T @ (d.y - d.X @ b), G - G @ Z.T @ VZG
    sd = np.sqrt(np.diag(cov))
    got = []
    for f in d.factors:
        r = out[f"r_{f.name}"]
        assert r.dims == ("chain", "draw", level_dim(f.name), term_dim(f.name))
        assert list(r[level_dim(f.name)].values) == coords[level_dim(f.name)]
        got.append(r.values.reshape(S, -1))
    draws = np.hstack(got)
    assert np.all(np.abs(draws.mean(0) - mean) < 4.5 * sd / np.sqrt(S))
    assert np.all(np.abs(draws.var(0) - sd ** 2) < 4.5 * np.sqrt(2.0 / S) * sd ** 2)
    assert list(out.data_vars) == ["b", "sd_s", "cor_s", "r_s", "sd_i", "r_i", "sd_s:sess", "r_s:sess", "sigma"]


# --------------------------------------------------------------------------------------------
# The whole fit: agreement with the non-centred path, and every reader works unchanged
# --------------------------------------------------------------------------------------------
def penicillin_like(seed=11):
    """Penicillin's design (lme4): 24 plates x 6 samples, one diameter per cell, with its REML
    estimates as the truth (plate sd 0.85, sample sd 1.93, sigma 0.55)."""
    rng = np.random.default_rng(seed)
    p, s = (m.ravel() for m in np.meshgrid(np.arange(24), np.arange(6), indexing="ij"))
    y = 22.97 + rng.normal(0, 0.85, 24)[p] + rng.normal(0, 1.93, 6)[s] + rng.normal(0, 0.55, p.size)
    return pd.DataFrame({"diameter": y, "plate": [chr(97 + k) for k in p], "sample": list("ABCDEF" * 24)})


PEN = "diameter ~ 1 + (1 | plate) + (1 | sample)"


@pytest.fixture(scope="module")
def pen_fits():
    df = penicillin_like()
    kw = dict(chains=2, draws=600, tune=600, seed=5, progressbar=False, verbose=False)
    m = blmm.Model(PEN, df)
    return df, m.fit(**kw), m.fit(method="noncentred", **kw)


def test_posterior_agrees_with_noncentred(pen_fits):
    """Posterior means of the parameters and of a few group effects agree within Monte Carlo error:
    |mean_c - mean_nc| < 4.5 sqrt(mcse_c^2 + mcse_nc^2) (z < 4.5: false alarm ~7e-6 each), and the
    posterior SDs within 4.5 of their combined MCSE plus 10% (the MCSE of an SD is approximate)."""
    _, fc, fn = pen_fits
    assert fc.info["method"] == "crossed" and fn.info["method"] == "noncentred"

    def table(f):
        t = pd.concat([f.summary(), f.variance_components()])
        r = f.draws("r_sample")[:, :2, 0]
        return t, r
    (tc, rc), (tn, rn) = table(fc), table(fn)
    for lab in ["Intercept", "sd(plate, Intercept)", "sd(sample, Intercept)", "sigma"]:
        a, b = tc.loc[lab], tn.loc[lab]
        assert abs(a["mean"] - b["mean"]) < 4.5 * np.hypot(a["mcse_mean"], b["mcse_mean"]), (lab, a, b)
        assert abs(a["sd"] - b["sd"]) < 4.5 * np.hypot(a["mcse_sd"], b["mcse_sd"]) + 0.1 * b["sd"], lab
    # the group effects: MCSE from each fit's ESS
    import arviz as az
    for k in range(2):
        se = [np.std(x[:, k]) / np.sqrt(float(az.ess(x[:, k].reshape(2, -1)))) for x in (rc, rn)]
        assert abs(rc[:, k].mean() - rn[:, k].mean()) < 4.5 * np.hypot(*se)
    # the point of the path: the intercept mixes far better than on the non-centred graph
    assert tc.loc["Intercept", "ess_bulk"] > 600


def test_every_reader_works_on_a_crossed_fit(pen_fits, tmp_path):
    df, fc, _ = pen_fits
    assert set(fc.ranef()) == {"plate", "sample"}
    assert set(fc.icc().table["group"]) >= {"plate", "sample"}
    assert fc.shrinkage().table["shrinkage"].between(0, 1).all()
    pred = fc.predict(df.head(5))
    assert len(pred) == 5
    # prediction at known levels = mean over draws of b + r_plate + r_sample
    b, rp, rs = fc.draws("b")[:, 0], fc.draws("r_plate")[:, :, 0], fc.draws("r_sample")[:, :, 0]
    mu0 = np.mean(b + rp[:, 0] + rs[:, 0])
    assert float(pred.iloc[0]["mean"]) == pytest.approx(mu0, rel=1e-8)
    assert np.isfinite(fc.loo().elpd)
    back = blmm.load_fit(fc.save(tmp_path / "fit"))
    xr.testing.assert_allclose(back.posterior, fc.posterior)
    assert back.info["method"] == "crossed"


def test_small_nested_designs_take_the_crossed_path_with_the_same_posterior():
    """method="auto" samples a small nesting chain (Pastes-like: 10 batches x 3 casks x 2 rows) on the
    crossed path; method="collapsed" on the nested elimination path. Same model, same exact
    marginal likelihood: posterior means agree within Monte Carlo error. Tolerance: 4 Monte Carlo
    SEs of the difference, sd / sqrt(ESS) from each fit (both ESS >= 400 here)."""
    rng = np.random.default_rng(17)
    b, c, k = (m.ravel() for m in np.meshgrid(np.arange(10), np.arange(3), np.arange(2), indexing="ij"))
    y = 60 + rng.normal(0, 1.3, 10)[b] + rng.normal(0, 2.9, 30)[b * 3 + c] + rng.normal(0, 0.8, len(b))
    df = pd.DataFrame({"strength": y, "batch": [f"B{i:02d}" for i in b], "cask": [f"c{i}" for i in c]})
    m = blmm.Model("strength ~ 1 + (1 | batch/cask)", df)
    assert m.plan().path == "crossed" and m.plan("collapsed").path == "collapsed"
    kw = dict(chains=2, draws=1000, tune=1000, seed=5, progressbar=False, verbose=False)
    auto, nested = m.fit(**kw), m.fit(method="collapsed", **kw)
    assert auto.info["method"] == "crossed" and nested.info["method"] == "collapsed"
    assert set(auto.posterior.data_vars) == set(nested.posterior.data_vars)
    from bayeslmm.convergence import summary
    for v in ("sd_batch", "sd_batch:cask", "sigma", "b"):
        a, n = (f.posterior[v].transpose("chain", "draw", ...).values for f in (auto, nested))
        a, n = a.reshape(*a.shape[:2], -1), n.reshape(*n.shape[:2], -1)
        se = np.sqrt(a.var(axis=(0, 1)) / summary(a)[1] + n.var(axis=(0, 1)) / summary(n)[1])
        assert np.all(np.abs(a.mean(axis=(0, 1)) - n.mean(axis=(0, 1))) < 4 * se), v
