"""The simulator and the rank statistics used by SBC: exact properties, no sampling.

Distribution checks use KS / chi-square tests at level 1e-4 each (seeded, so they are
deterministic; the level states how unlikely a failure of a correct implementation is).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import bayeslmm as blmm
from bayeslmm.errors import SpecError
from bayeslmm.priors import draw_prior, prior_quantile
from bayeslmm.simulate import (TrueParameters, draw_lkj_corr, draw_parameters, grouped_frame, parameter_labels,
                               random_effects, simulate, simulate_response)
from bayeslmm.priors import parse_prior
from bayeslmm.validation import (_thin, chisq_uniform, ecdf_band, ecdf_uniformity, rank_statistics)

LEVEL = 1e-4


@pytest.fixture(scope="module")
def slope_model():
    df = grouped_frame(10, 6, np.random.default_rng(0))
    return blmm.Model("y ~ x + (1 + x | g)", df, priors={"Intercept": "normal(3, 2)", "b": "normal(0, 1)",
                                                          "sd": "halfnormal(1)", "sigma": "exponential(2)"})


def test_grouped_frame_layout():
    df = grouped_frame(12, [1, 2] * 6, np.random.default_rng(1))
    assert len(df) == 18 and list(df.columns) == ["y", "x", "g"]
    assert sorted(df["g"].unique()) == [f"g{j:02d}" for j in range(12)]
    with pytest.raises(SpecError, match="n_groups >= 2"):
        grouped_frame(1, 3, np.random.default_rng(1))


def test_simulate_is_exact_linear_predictor_plus_noise(slope_model):
    d = slope_model.design
    truth = TrueParameters(b={"Intercept": 1.0, "x": -2.0}, sd={"g": {"Intercept": 0.5, "x": 0.2}},
                           cor={"g": np.array([[1, 0.3], [0.3, 1]])}, sigma=0.0)
    rng = np.random.default_rng(2)
    y, eff = simulate_response(d, truth, rng)
    f = d.factors[0]
    expected = 1.0 - 2.0 * d.X[:, 1] + eff["g"][f.codes, 0] + eff["g"][f.codes, 1] * f.Z[:, 1]
    np.testing.assert_allclose(y, expected, atol=1e-12)
    out = simulate(d, truth, np.random.default_rng(2))
    np.testing.assert_allclose(out["y"], y, atol=1e-12)        # same seed, same data
    assert list(out.columns) == list(d.column_names) == list(d.data_frame().columns)
    assert truth.flat(d) == {"Intercept": 1.0, "x": -2.0, "sd(g, Intercept)": 0.5, "sd(g, x)": 0.2,
                             "cor(g, Intercept, x)": 0.3, "sigma": 0.0}
    assert list(truth.flat(d)) == parameter_labels(d)


def test_random_effects_covariance():
    df = grouped_frame(4000, 1, np.random.default_rng(3))
    d = blmm.Model("y ~ x + (1 + x | g)", df.assign(x=np.random.default_rng(4).normal(size=4000))).design
    C = np.array([[1, -0.6], [-0.6, 1]])
    truth = TrueParameters(b={"Intercept": 0, "x": 0}, sd={"g": {"Intercept": 2.0, "x": 0.5}}, cor={"g": C})
    u = random_effects(d, truth, np.random.default_rng(5))["g"]
    # sample covariance of 4000 draws: SE of a variance ~ var * sqrt(2/4000) = 2.2%; 5 SE margin
    np.testing.assert_allclose(np.cov(u.T), truth.covariance(d.factors[0]), rtol=0.12, atol=0.06)
    zero = TrueParameters(b=truth.b, sd={"g": {"Intercept": 0.0, "x": 0.5}}, cor={"g": C})
    u0 = random_effects(d, zero, np.random.default_rng(5))["g"]
    assert np.all(u0[:, 0] == 0) and np.std(u0[:, 1]) == pytest.approx(0.5, rel=0.05)


@pytest.mark.parametrize("text", ["normal(1, 2)", "studentt(4, 1, 2)", "halfnormal(2)", "halfstudentt(3, 2)",
                                  "halfcauchy(1.5)", "exponential(0.5)"])
def test_draw_prior_matches_quantiles(text):
    p = parse_prior(text)
    x = draw_prior(p, np.random.default_rng(6), 20000)
    cdf = lambda v: np.interp(v, prior_quantile(p, np.linspace(1e-6, 1 - 1e-6, 20001)),  # noqa: E731
                              np.linspace(1e-6, 1 - 1e-6, 20001))
    assert stats.kstest(x, cdf).pvalue > LEVEL


@pytest.mark.parametrize("n,eta", [(2, 2.0), (3, 1.0), (4, 3.0)])
def test_lkj_marginals(n, eta):
    rng = np.random.default_rng(7)
    R = np.array([draw_lkj_corr(n, eta, rng) for _ in range(3000)])
    assert np.all(np.linalg.eigvalsh(R) > 0) and np.allclose(R, R.transpose(0, 2, 1))
    a = eta - 1 + n / 2                    # LKJ marginal: (r + 1) / 2 ~ Beta(a, a)
    for i, j in [(0, 1), (0, n - 1)]:
        assert stats.kstest((R[:, i, j] + 1) / 2, stats.beta(a, a).cdf).pvalue > LEVEL


def test_draw_parameters_follows_graph_conventions(slope_model):
    """The Intercept prior is on the intercept at centred predictors, as in graph.fixed_part."""
    d, pt = slope_model.design, slope_model.prior_table
    rng = np.random.default_rng(8)
    draws = [draw_parameters(pt, d, rng) for _ in range(4000)]
    xm = d.X[:, 1].mean()
    ic = np.array([p.b["Intercept"] + xm * p.b["x"] for p in draws])
    assert stats.kstest(ic, stats.norm(3, 2).cdf).pvalue > LEVEL
    sig = np.array([p.sigma for p in draws])
    assert stats.kstest(sig, stats.expon(scale=0.5).cdf).pvalue > LEVEL
    cor = np.array([p.cor["g"][0, 1] for p in draws])     # lkj(2), n = 2: Beta(2, 2)
    assert stats.kstest((cor + 1) / 2, stats.beta(2, 2).cdf).pvalue > LEVEL


# ---------------------------------------------------------------- rank statistics
def test_chisq_and_ecdf_accept_uniform_and_reject_skewed():
    rng = np.random.default_rng(9)
    L = 49
    uni = rng.integers(0, L + 1, 200)
    assert chisq_uniform(uni, L)[1] > LEVEL and ecdf_uniformity(uni, L) > LEVEL
    # an overdispersed posterior (too wide) puts the truth in the middle ranks: a hump
    hump = np.clip(np.round(rng.normal(L / 2, L / 8, 200)), 0, L).astype(int)
    assert chisq_uniform(hump, L)[1] < 1e-6 and ecdf_uniformity(hump, L) < 1e-3
    # a biased posterior (truth above most draws): ranks skewed to the top
    skew = np.minimum(L, (L + 1) * rng.beta(1.6, 1, 200)).astype(int)
    assert ecdf_uniformity(skew, L) < 1e-3
    with pytest.raises(ValueError, match="divide"):
        chisq_uniform(uni, L, bins=7)


def test_ecdf_band_has_its_simultaneous_coverage():
    """The band is calibrated by simulation; check its coverage on fresh uniform rank sets.

    1000 fresh sets, nominal coverage 0.95: the count of sets leaving the band is Binomial(1000,
    <=0.05) (<= because of discreteness); 5-sigma upper bound 50 + 5 * 6.9 = 84.
    """
    n, L = 100, 49
    z, lo, hi, gamma = ecdf_band(n, L, alpha=0.05, n_sim=3000, seed=1)
    assert 0 < gamma < 0.05
    rng = np.random.default_rng(10)
    out = 0
    for _ in range(1000):
        r = rng.integers(0, L + 1, n)
        diff = np.cumsum(np.bincount(r, minlength=L + 1))[:-1] / n - z
        out += bool(np.any(diff < lo - 1e-12) or np.any(diff > hi + 1e-12))
    assert 10 <= out <= 84


def test_rank_statistics_holm_and_thinning():
    rng = np.random.default_rng(11)
    L = 49
    ranks = pd.DataFrame({"ok": rng.integers(0, L + 1, 150), "bad": np.full(150, L)})
    tab = rank_statistics(ranks, L, alpha=0.01)
    assert not tab.loc["ok", "holm_reject"] and tab.loc["bad", "holm_reject"]
    x = np.arange(2 * 500).reshape(2, 500)
    kept = _thin(x, 49)
    assert len(kept) == 49 and len(set(kept)) == 49 and kept.min() == 0 and kept.max() == 999
