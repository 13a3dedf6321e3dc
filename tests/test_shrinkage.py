"""Shrinkage: exact algebra on synthetic posteriors, the analytic Gaussian factor on a simulated
balanced design, and small-groups-shrink-more on radon."""

from __future__ import annotations

import arviz as az
import numpy as np
import pandas as pd
import pytest

import bayeslmm as blmm
from bayeslmm.shrinkage import model_shrinkage_draws, no_pooling_estimates

RADON = "log_radon ~ floor_measure + (1 | county_idx)"


@pytest.fixture(scope="session")
def sim_fit(get_fit, sim_ri):
    df, _ = sim_ri
    return get_fit("y ~ x + (1 | g)", df, chains=2, draws=1000, tune=1000, seed=11,
                   method="noncentred")


@pytest.fixture(scope="session")
def radon_fit(get_fit, radon):
    # default method: the exact marginal path where it applies (effects drawn afterwards)
    return get_fit(RADON, radon, chains=2, draws=500, tune=500, seed=2)


def test_no_pooling_is_group_mean_for_intercept_only(fake_fit, dyestuff):
    fit = fake_fit("Yield ~ 1 + (1 | Batch)", dyestuff, seed=1)
    tab = fit.shrinkage().table
    means = dyestuff.groupby("Batch")["Yield"].mean()
    # the group's own fit of y ~ 1 is its mean, whatever the posterior of the intercept
    np.testing.assert_allclose(tab["no_pooling"], means.loc[tab["level"]].to_numpy(), atol=1e-9)
    np.testing.assert_allclose(tab["complete_pooling"], fit.draws("b")[:, 0].mean(), atol=1e-12)
    coef = fit.draws("b")[:, :1] + fit.draws("r_Batch")[:, :, 0]
    np.testing.assert_allclose(tab["partial_mean"], coef.mean(axis=0), atol=1e-9)
    # empirical ratio is its definition where defined, NaN (and flagged) where no pooling is
    # within a tenth of an SD of complete pooling
    emp = 1 - (tab.partial_mean - tab.complete_pooling) / (tab.no_pooling - tab.complete_pooling)
    near = np.abs(tab.no_pooling - tab.complete_pooling) < 0.1 * fit.draws("sd_Batch")[:, 0].mean()
    np.testing.assert_array_equal(tab["near_complete"], near)
    np.testing.assert_allclose(tab["shrinkage_empirical"][~near], emp[~near], atol=1e-12)
    assert tab["shrinkage_empirical"][near].isna().all()


def test_no_pooling_is_per_group_ols_for_intercept_and_slope(fake_fit, sleepstudy):
    fit = fake_fit("Reaction ~ Days + (Days | Subject)", sleepstudy, seed=2)
    u = no_pooling_estimates(fit, "Subject")
    b_hat = fit.draws("b").mean(axis=0)
    for j, lv in enumerate(fit.design.factor("Subject").levels):
        d = sleepstudy[sleepstudy.Subject.astype(str) == lv]
        ols = np.polynomial.polynomial.polyfit(d.Days, d.Reaction, 1)     # (intercept, slope)
        np.testing.assert_allclose(b_hat + u[j], ols, atol=1e-8)


def test_shrinkage_is_conditional_variance_ratio(fake_fit, sleepstudy):
    fit = fake_fit("Reaction ~ Days + (Days | Subject)", sleepstudy, seed=3, draws=20)
    W = model_shrinkage_draws(fit, "Subject")                     # (S, J, 2)
    f = fit.design.factor("Subject")
    sd, C, s2 = fit.draws("sd_Subject"), fit.draws("cor_Subject"), fit.draws("sigma") ** 2
    for s in (0, 7, 33):
        S = np.outer(sd[s], sd[s]) * C[s]
        for j in (0, 5):
            Zj = f.Z[f.codes == j]
            # Var(r_j | y, theta) = (S^-1 + Z_j'Z_j / sigma^2)^-1 (Henderson), over Var(r_j) = S
            V = np.linalg.inv(np.linalg.inv(S) + Zj.T @ Zj / s2[s])
            np.testing.assert_allclose(W[s, j], np.diag(V) / np.diag(S), atol=1e-10)
    assert np.all((W >= 0) & (W <= 1))


def test_pooling_factor_is_gelman_pardoe(fake_fit, dyestuff):
    fit = fake_fit("Yield ~ 1 + (1 | Batch)", dyestuff, seed=4)
    r = fit.draws("r_Batch")[:, :, 0]
    lam = 1 - np.var(r.mean(axis=0), ddof=1) / np.mean(np.var(r, axis=1, ddof=1))
    pf = fit.pooling_factor()
    assert pf.loc[0, "pooling_factor"] == pytest.approx(lam, abs=1e-12)


def test_balanced_shrinkage_matches_analytic_factor(sim_fit, sim_ri):
    _, truth = sim_ri
    n = truth["n"]
    tab = sim_fit.shrinkage().table
    sd, sigma = sim_fit.draws("sd_g")[:, 0], sim_fit.draws("sigma")
    analytic = np.mean(1 - n * sd**2 / (n * sd**2 + sigma**2))
    # the model factor is exactly that posterior mean (same n in every group)
    np.testing.assert_allclose(tab["shrinkage"], analytic, atol=1e-12)
    assert 0.1 < analytic < 0.5          # plug-in truth: 2.1 / (2.1 + 20 * 0.35) = 0.23
    # Empirical factor 1 - (partial - complete)/(nopool - complete) per group vs the analytic
    # mean. E[r_j] = E[(1 - B) (ybar_j - xbar_j b - b0)] and in a balanced design B and b are
    # nearly independent a posteriori, so they agree up to Monte Carlo error. The error of the
    # empirical factor is mcse(partial_j) / |nopool_j - complete|, plus the MCSE of the analytic
    # mean; 4 x that (two-sided false-alarm ~6e-5 per group under normality) plus 0.02 for the
    # small posterior dependence between B and b. Groups whose no-pooling estimate lies within
    # 0.3 of complete pooling are too ill-conditioned for the ratio and are skipped.
    r = sim_fit.posterior["r_g"]
    mcse_r = az.mcse(r.to_dataset(name="r"))["r"].sel(g__term="Intercept").to_numpy()
    mcse_b = float(az.mcse(sim_fit.posterior["b"].to_dataset(name="b"))["b"].sel(term="Intercept"))
    mcse_partial = np.sqrt(mcse_r**2 + mcse_b**2)
    B = 1 - n * sd**2 / (n * sd**2 + sigma**2)
    mcse_analytic = np.std(B) / np.sqrt(float(az.ess(sim_fit.posterior["sd_g"].to_dataset(name="s"))["s"].min()))
    gap = np.abs(tab["no_pooling"] - tab["complete_pooling"]).to_numpy()
    keep = gap > 0.3
    assert keep.sum() >= 25
    tol = 4 * (mcse_partial[keep] / gap[keep] + mcse_analytic) + 0.02
    err = np.abs(tab["shrinkage_empirical"].to_numpy()[keep] - analytic)
    assert np.all(err < tol), (err.max(), tol.min())
    # across all groups: slope of (partial - complete) on (nopool - complete) is 1 - mean B
    dx = (tab.no_pooling - tab.complete_pooling).to_numpy()
    dy = (tab.partial_mean - tab.complete_pooling).to_numpy()
    assert np.sum(dx * dy) / np.sum(dx * dx) == pytest.approx(1 - analytic, abs=0.02)


def test_small_groups_shrink_more_on_radon(radon_fit):
    res = radon_fit.shrinkage()
    tab = res.table
    assert len(tab) == 85 and tab["n"].sum() == radon_fit.design.n
    # The model factor sigma^2 / (sigma^2 + n sd^2) decreases in n draw by draw, so its posterior
    # mean is strictly decreasing in group size: an exact property.
    by_n = tab.groupby("n")["shrinkage"].agg(["min", "max"]).sort_index()
    assert np.all(np.diff(by_n["min"].to_numpy()) < 0)
    assert np.allclose(by_n["min"], by_n["max"], atol=1e-12)
    # The empirical factors tell the same story: counties with <= 2 houses are pulled most of the
    # way to the state mean, counties with >= 20 houses little (median of each set).
    small = tab.loc[tab.n <= 2, "shrinkage_empirical"].median()
    large = tab.loc[tab.n >= 20, "shrinkage_empirical"].median()
    assert small > 0.6 > 0.3 > large
    assert tab.loc[tab.n <= 2, "shrinkage"].min() > tab.loc[tab.n >= 20, "shrinkage"].max()
    pf = res.pooling.loc[0, "pooling_factor"]
    assert 0.2 < pf < 0.8            # radon counties: partial pooling, neither extreme
    # partial-pooling estimates lie between no pooling and complete pooling (for the groups whose
    # own estimate is well away from the state mean; MC noise can flip the sign near it)
    far = np.abs(tab.no_pooling - tab.complete_pooling) > 0.3
    lo = np.minimum(tab.no_pooling, tab.complete_pooling)[far]
    hi = np.maximum(tab.no_pooling, tab.complete_pooling)[far]
    assert ((tab.partial_mean[far] > lo) & (tab.partial_mean[far] < hi)).all()


def test_shrinkage_errors(fake_fit, dyestuff):
    fit = fake_fit("Yield ~ 1 + (1 | Batch)", dyestuff)
    with pytest.raises(blmm.BayesLMMError, match="no grouping factor 'Bach'"):
        fit.shrinkage(factor="Bach")


def _nested_crossed_frame(rng):
    # recipe (fixed, 2 levels) > replicate (nested random intercept), crossed with an operator
    rows = []
    for rec in "AB":
        for rep in range(6):
            for k in range(rng.integers(2, 7)):
                rows.append({"recipe": rec, "replicate": f"{rec}{rep}", "op": f"o{k % 3}", "x": rng.normal()})
    df = pd.DataFrame(rows)
    df["y"] = 10 + 5 * (df.recipe == "B") + df.x + rng.normal(size=len(df))
    return df


def test_three_estimates_on_the_groups_own_scale(fake_fit, rng):
    df = _nested_crossed_frame(rng)
    fit = fake_fit("y ~ recipe + x + (1 | recipe:replicate) + (1 | op)", df, seed=7)
    tab = fit.shrinkage(full=True).table
    rep = tab[tab.group == "recipe:replicate"].set_index("level")
    b = fit.draws("b")
    X, d = fit.design.X, fit.design
    f, o = d.factor("recipe:replicate"), d.factor("op")
    r_op = fit.draws("r_op")[:, :, 0]
    for j, lv in enumerate(f.levels):
        rows = f.codes == j
        # no pooling: the replicate's own mean of y; complete pooling: its own recipe's prediction
        # at its own x values plus its operators' effects (not recipe A's intercept)
        assert rep.loc[lv, "no_pooling"] == pytest.approx(d.y[rows].mean(), rel=1e-12)
        cp = (X[rows] @ b.mean(axis=0) + r_op.mean(axis=0)[o.codes[rows]]).mean()
        assert rep.loc[lv, "complete_pooling"] == pytest.approx(cp, rel=1e-10)
        pp = (b @ X[rows].T + r_op[:, o.codes[rows]]).mean(axis=1) + fit.draws("r_recipe:replicate")[:, j, 0]
        assert rep.loc[lv, "partial_mean"] == pytest.approx(pp.mean(), rel=1e-10)
    assert tab["shrinkage"].between(0, 1).all()


def test_shrinkage_in_unit_interval_with_random_slopes(fake_fit, sleepstudy):
    fit = fake_fit("Reaction ~ Days + (Days | Subject)", sleepstudy, seed=8)
    res = fit.shrinkage()
    assert res.table["shrinkage"].between(0, 1).all()
    assert res.table["shrinkage_lower"].between(0, 1).all() and res.table["shrinkage_upper"].between(0, 1).all()
    # the narrow default view and the full one
    assert list(res.view.columns) == ["group", "level", "term", "n", "no_pooling", "partial_mean",
                                      "partial_lower", "partial_upper", "shrinkage"]
    assert "complete_pooling" in fit.shrinkage(full=True).view.columns
    assert "no pooling" in repr(res) and "..." not in repr(res)
    assert "0 = its own data decide" in blmm.shrinkage.__doc__.replace("\n    ", " ") or "0 = the group" in blmm.shrinkage.__doc__


def test_plot_shows_the_table_values(fake_fit, rng):
    df = _nested_crossed_frame(rng)
    fit = fake_fit("y ~ recipe + x + (1 | recipe:replicate)", df, seed=9)
    res = fit.shrinkage()
    t = res.table
    fig = fit.plot_shrinkage(result=res)
    ax = fig.axes[0]
    pts = {c.get_label(): c.get_offsets() for c in ax.collections}
    np.testing.assert_allclose(np.sort(pts["no pooling"][:, 0]), np.sort(t.no_pooling), rtol=1e-12)
    np.testing.assert_allclose(np.sort(pts["partial pooling (posterior mean)"][:, 0]), np.sort(t.partial_mean),
                               rtol=1e-12)
    # complete pooling differs by recipe, so it is drawn per group, not as one line
    np.testing.assert_allclose(np.sort(pts["complete pooling (each group's own)"][:, 0]),
                               np.sort(t.complete_pooling), rtol=1e-12)
    fig2 = fit.plot_shrinkage_vs_size(result=res)
    got = [c for c in fig2.axes[1].collections if c.get_label().startswith("shrinkage")][0].get_offsets()[:, 1]
    np.testing.assert_allclose(np.sort(got), np.sort(t.shrinkage), rtol=1e-12)
