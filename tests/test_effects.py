"""Conditional vs population-averaged effects (bayeslmm.effects), on synthetic posterior draws.

No sampling: each fit's posterior is built by hand with known parameter values (the same in every
draw), so the population-averaged mean has an exact reference by Gauss-Hermite quadrature,
E_u[expit(eta + s Z)] with s the SD of z(x)'u, and the only error left is the Monte Carlo error
of the group-effect draws. Because every posterior draw has the same parameters, the spread of a
quantity over the draws *is* its Monte Carlo spread: the SE of its mean over S draws is
sd / sqrt(S). Tolerances are 4 such SEs (two-sided false-alarm rate 6e-5 per check).
"""

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy.special import expit, logit

import bayeslmm as blmm
from bayeslmm.effects import ATTENUATION_C2, logit_attenuation, marginal_effects
from bayeslmm.errors import DataError, SpecError
from bayeslmm.results import Fit

GH_X, GH_W = np.polynomial.hermite_e.hermegauss(80)
GH_W = GH_W / GH_W.sum()


def _data(seed=0, J=30, n_j=8):
    r = np.random.default_rng(seed)
    g = np.repeat(np.arange(J), n_j)
    x = r.uniform(-3, 3, J * n_j)
    return pd.DataFrame({"y": (r.random(J * n_j) < 0.5).astype(float), "x": x,
                         "z": r.normal(size=J * n_j), "g": g.astype(str)})


def synthetic_fit(formula, data, b, sd, cor=None, family="bernoulli", chains=2, draws=100, seed=0):
    """A Fit whose every posterior draw has fixed effects ``b`` (dict), SDs ``sd`` (list, the
    factor ``g``'s terms) and correlation ``cor`` (q x q); group effects drawn from N(0, Sigma)."""
    m = blmm.Model(formula, data, family=family)
    d = m.design
    f = d.factor("g")
    r = np.random.default_rng(seed)
    sh = (chains, draws)
    C = np.eye(f.q) if cor is None else np.asarray(cor)
    sdv = np.asarray(sd, dtype=float)
    L = np.linalg.cholesky(C * np.outer(sdv, sdv))
    coords = {"chain": np.arange(chains), "draw": np.arange(draws), "term": list(d.fixed_terms),
              "g__term": list(f.terms), "g__level": list(f.levels)}
    ds = {"b": (("chain", "draw", "term"), np.broadcast_to([b[t] for t in d.fixed_terms],
                                                           sh + (len(d.fixed_terms),)).copy()),
          "sd_g": (("chain", "draw", "g__term"), np.broadcast_to(sdv, sh + (f.q,)).copy()),
          "r_g": (("chain", "draw", "g__level", "g__term"),
                  r.standard_normal(sh + (f.n_levels, f.q)) @ L.T)}
    if f.has_correlation:
        coords["g__term2"] = list(f.terms)
        ds["cor_g"] = (("chain", "draw", "g__term", "g__term2"), np.broadcast_to(C, sh + (f.q, f.q)).copy())
    if family == "gaussian":
        ds["sigma"] = (("chain", "draw"), np.ones(sh))
    tree = xr.DataTree.from_dict({"posterior": xr.Dataset(ds, coords=coords)})
    return Fit(tree, m.spec, d, m.prior_table, blmm.SamplerSpec(chains=chains, draws=draws, tune=0, seed=seed),
               {"seed": seed, "method": "fake"})


def gh_mean(eta, s):
    """E[expit(eta + s Z)], Z ~ N(0, 1), by 80-point Gauss-Hermite quadrature (exact to ~1e-12)."""
    eta, s = np.broadcast_arrays(np.asarray(eta, float), np.asarray(s, float))
    return np.array([(GH_W * expit(e + sj * GH_X)).sum() for e, sj in zip(eta.ravel(), s.ravel())])


def test_gaussian_population_averaged_equals_conditional(fake_fit):
    """Identity link: E_u[eta + z'u] = eta. The antithetic draws (u, -u) make the Monte Carlo
    average exactly eta too, so the two coincide to rounding (1e-9 covers the finite difference)."""
    df = _data(1)
    df["y"] = df["x"] + df["z"] + np.random.default_rng(2).normal(size=len(df))
    fit = fake_fit("y ~ x + z + (1 + x | g)", df)
    me = fit.marginal_effects("x", n_points=9, n_mc=20)
    for tab in (me.predictions, me.slopes, me.link_slopes):
        c, p = (tab[tab.effect == e].reset_index(drop=True) for e in ("conditional", "population_averaged"))
        np.testing.assert_allclose(p[["mean", "hdi_lower", "hdi_upper"]], c[["mean", "hdi_lower", "hdi_upper"]],
                                   atol=1e-9)
    # and the conditional slope of a linear term is its coefficient, draw by draw
    np.testing.assert_allclose(me.draws["conditional_slope"], fit.draws("x")[:, None] * np.ones((1, 9)),
                               rtol=1e-6)


def test_logit_random_intercept_matches_quadrature_and_the_attenuation_formula():
    sd, b0, b1 = 2.0, 0.0, 1.0
    fit = synthetic_fit("y ~ x + (1 | g)", _data(3), {"Intercept": b0, "x": b1}, [sd])
    xs = np.linspace(-3, 3, 13)
    me = fit.marginal_effects("x", values=xs, n_mc=200, seed=4)
    S = fit.n_draws
    pa = me.draws["population_averaged"]
    exact = gh_mean(b0 + b1 * xs, sd)
    mc_se = pa.std(axis=0, ddof=1) / np.sqrt(S)
    # the mcse column estimates the same Monte Carlo error (from the within-draw spread); the
    # spread over S = 200 draws is itself known to ~1/sqrt(2S) = 5%: 4 SEs = 20%, allowed 25%.
    # At x = 0 (eta = 0) the antithetic pairs average to exactly 1/2: both are 0.
    col = me.predictions.query("effect == 'population_averaged'")["mcse"].to_numpy()
    np.testing.assert_allclose(col, mc_se, rtol=0.25, atol=1e-15)
    assert np.all(np.abs(pa.mean(axis=0) - exact) < 4 * mc_se + 1e-12), (pa.mean(axis=0) - exact) / mc_se
    # conditional: group effects at 0
    np.testing.assert_allclose(me.draws["conditional"], np.broadcast_to(expit(b0 + b1 * xs), (S, 13)), rtol=1e-12)
    np.testing.assert_allclose(me.draws["conditional_link_slope"], b1, rtol=1e-6)
    # local link-scale slope of the population-averaged curve against quadrature (finite difference)
    h = 1e-4
    exact_slope = (logit(gh_mean(xs + h, sd)) - logit(gh_mean(xs - h, sd))) / (2 * h)
    ls = me.draws["population_averaged_link_slope"]
    assert np.all(np.abs(ls.mean(axis=0) - exact_slope) < 4 * ls.std(axis=0, ddof=1) / np.sqrt(S) + 1e-6)
    # Zeger et al.'s formula: the least-squares slope of logit(mu_PA) over eta in [-3, 3] is
    # b1 / sqrt(1 + 0.346 sd^2) up to the approximation's own error, 3.7% at sd = 2 by quadrature
    # (the slope of the quadrature curve / the formula = 0.963); allowed: 5% (+ MC error << 1%)
    coef = me.coefficients()
    ratio = coef.loc["ratio", "mean"]
    assert abs(ratio / float(logit_attenuation(sd)) - 1) < 0.05, (ratio, logit_attenuation(sd))
    exact_coef = np.polyfit(xs, logit(exact), 1)[0]
    assert abs(coef.loc["population_averaged", "mean"] - exact_coef) < 4 * coef.loc[
        "population_averaged", "sd"] / np.sqrt(S) + 1e-6
    assert abs(ATTENUATION_C2 - 0.346) < 5e-4
    # the attenuation grows with sd: sd = 0.5 gives a ratio near 0.96
    small = synthetic_fit("y ~ x + (1 | g)", _data(3), {"Intercept": b0, "x": b1}, [0.5])
    r_small = small.marginal_effects("x", values=xs, n_mc=200, seed=4).coefficients().loc["ratio", "mean"]
    assert ratio < r_small < 1 and abs(r_small / float(logit_attenuation(0.5)) - 1) < 0.02


def test_random_slope_with_correlation_matches_quadrature():
    """(1 + x | g) with sd (0.8, 0.6) and correlation 0.5: z(x)'u has SD
    s(x) = sqrt(0.64 + 2 * 0.5 * 0.8 * 0.6 x + 0.36 x^2), so the exact mean is a 1-D quadrature."""
    sd, rho = np.array([0.8, 0.6]), 0.5
    fit = synthetic_fit("y ~ x + z + (1 + x | g)", _data(5), {"Intercept": -0.5, "x": 0.7, "z": 0.3},
                        sd, cor=[[1, rho], [rho, 1]])
    xs = np.linspace(-2, 2, 7)
    me = marginal_effects(fit, "x", values=xs, at={"z": 1.0}, n_mc=100, seed=1)
    s = np.sqrt(sd[0] ** 2 + 2 * rho * sd[0] * sd[1] * xs + sd[1] ** 2 * xs ** 2)
    exact = gh_mean(-0.5 + 0.7 * xs + 0.3, s)
    pa = me.draws["population_averaged"]
    assert np.all(np.abs(pa.mean(axis=0) - exact) < 4 * pa.std(axis=0, ddof=1) / np.sqrt(fit.n_draws) + 1e-12)
    assert me.info["at"]["z"] == 1.0 and list(me.grid["z"].unique()) == [1.0]


def test_seeded_and_reproducible_and_plots():
    fit = synthetic_fit("y ~ x + (1 | g)", _data(3), {"Intercept": 0.0, "x": 1.0}, [1.5], draws=20)
    a = fit.marginal_effects("x", n_points=5, n_mc=10, seed=9)
    b = fit.marginal_effects("x", n_points=5, n_mc=10, seed=9)
    c = fit.marginal_effects("x", n_points=5, n_mc=10, seed=10)
    np.testing.assert_array_equal(a.draws["population_averaged"], b.draws["population_averaged"])
    assert not np.array_equal(a.draws["population_averaged"], c.draws["population_averaged"])
    np.testing.assert_array_equal(fit.marginal_effects("x", n_points=5, n_mc=10).draws["population_averaged"],
                                  fit.marginal_effects("x", n_points=5, n_mc=10, seed=0).draws["population_averaged"])
    assert a.group_curves.shape == (30, 5)
    fig = a.plot()
    ax = fig.axes[0]
    assert len(ax.lines) == 30 + 2 and "Population-averaged" in ax.get_title()
    assert fit.plot_marginal_effects("x", scale="link", n_points=5, n_mc=10).axes
    att = a.attenuation()
    assert ((att["mean"] > 0) & (att["mean"] < 1)).all()


def test_bad_input_names_the_column():
    df = _data(3)
    df["k"] = np.where(df["x"] > 0, "a", "b")
    fit = synthetic_fit("y ~ x + k + (1 | g)", df, {"Intercept": 0.0, "x": 1.0, "k[T.b]": 0.2}, [1.0], draws=5)
    with pytest.raises(DataError, match="'k'"):
        fit.marginal_effects("k")
    with pytest.raises(DataError, match="'g'"):
        fit.marginal_effects("g")
    with pytest.raises(DataError, match="'nope'"):
        fit.marginal_effects("nope")
    with pytest.raises(DataError, match="w"):
        fit.marginal_effects("x", at={"w": 1})
    with pytest.raises(SpecError, match="n_mc"):
        fit.marginal_effects("x", n_mc=3)
    with pytest.raises(SpecError, match="h"):
        fit.marginal_effects("x", factors=["h"])
    # a categorical reference level other than the most frequent one
    me = fit.marginal_effects("x", at={"k": "b"}, n_points=3, n_mc=4)
    assert list(me.grid["k"].astype(str).unique()) == ["b"]
