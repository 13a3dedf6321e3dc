"""Convergence checks (each on constructed draws where the answer is known, then on real fits),
the pointwise log-likelihood, LOO and model comparison."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.stats as st
import xarray as xr

import bayeslmm as blmm
from bayeslmm.diagnostics import ConvergenceWarning, compare, diagnostics, warn_if_problems


def _tree(post: dict, stats: dict | None = None, chains=4, draws=1000):
    coords = {"chain": np.arange(chains), "draw": np.arange(draws)}
    p = xr.Dataset({k: (("chain", "draw") + tuple(f"{k}_dim{i}" for i in range(v.ndim - 2)), v)
                    for k, v in post.items()}, coords=coords)
    d = {"posterior": p}
    if stats is not None:
        d["sample_stats"] = xr.Dataset({k: (("chain", "draw"), v) for k, v in stats.items()}, coords=coords)
    return xr.DataTree.from_dict(d)


def _good(rng, chains=4, draws=1000):
    post = {"a": rng.standard_normal((chains, draws)), "b": rng.standard_normal((chains, draws, 3))}
    stats = {"diverging": np.zeros((chains, draws), bool),
             "reached_max_treedepth": np.zeros((chains, draws), bool),
             "energy": rng.standard_normal((chains, draws))}   # iid energy: E-BFMI ~ 2
    return post, stats


def _checks(d):
    return {p.check for p in d.problems}


def test_iid_draws_pass_every_check():
    rng = np.random.default_rng(0)
    d = diagnostics(_tree(*_good(rng)))
    # iid draws: R-hat - 1 ~ 1e-3 and ESS ~ 4000 >> 400, E-BFMI ~ 2 >> 0.3
    assert d.ok, d.message()
    assert d.table.set_index("variable").loc["b", "n_elements"] == 3
    assert all(d.to_frame()["ok"])
    assert "All convergence checks passed" in d.message()


def test_each_problem_is_detected_with_advice():
    rng = np.random.default_rng(1)
    post, stats = _good(rng)
    post["a"][0] += 1.0                                             # one chain elsewhere: R-hat ~ 1.1
    ar = np.zeros((4, 1000))
    for t in range(1, 1000):                                        # AR(1), phi = 0.995: ESS ~ 10
        ar[:, t] = 0.995 * ar[:, t - 1] + rng.standard_normal(4) * 0.1
    post["slow"] = ar
    stats["diverging"][1, :7] = True
    stats["reached_max_treedepth"][2, :100] = True                 # 2.5% of draws > 1%
    stats["energy"] = np.cumsum(rng.standard_normal((4, 1000)), axis=1)   # random walk: E-BFMI ~ 0.003
    d = diagnostics(_tree(post, stats))
    assert _checks(d) == {"rhat", "ess_bulk", "ess_tail", "divergences", "treedepth", "ebfmi"}
    msg = {p.check: p for p in d.problems}
    assert "7 divergent" in msg["divergences"].message and "target_accept" in msg["divergences"].advice
    assert "a (" in msg["rhat"].message                             # names the worst parameter
    assert "slow" in msg["ess_bulk"].message and "draws" in msg["ess_bulk"].advice
    assert "max_treedepth" in msg["treedepth"].advice
    assert "reparameterise" in msg["ebfmi"].advice
    assert d.sampler["divergences_per_chain"] == [0, 7, 0, 0]
    assert not d.to_frame().set_index("check")["ok"].any()


def test_treedepth_below_one_percent_is_fine():
    rng = np.random.default_rng(2)
    post, stats = _good(rng)
    stats["reached_max_treedepth"][0, :30] = True                   # 0.75% of draws
    assert diagnostics(_tree(post, stats)).ok


def test_group_effect_rhat_multiplicity_rule():
    rng = np.random.default_rng(3)
    post, stats = _good(rng)
    r = rng.standard_normal((4, 1000, 100))
    r[0, :, 0] += 0.05                  # one group effect slightly off (R-hat ~ 1.01): tolerated
    post["r_g"] = r
    d = diagnostics(_tree(post, stats))
    assert "rhat" not in _checks(d), d.message()
    r[0, :, 1] += 1.0                   # one group effect clearly off (R-hat ~ 1.1): flagged
    d = diagnostics(_tree(post, stats))
    assert "rhat" in _checks(d) and "r_g[1]" in d.problems[0].message


def test_bad_fit_warns_loudly(dyestuff):
    # 10 tuning steps and 30 draws x 2 chains: at most 60 draws, so the tail ESS cannot reach
    # the 200 required; the warning is emitted by Model.fit itself.
    with pytest.warns(ConvergenceWarning, match=r"(?s)CONVERGENCE PROBLEMS.*ess_tail.*draws=2000"):
        fit = blmm.Model("Yield ~ 1 + (1 | Batch)", dyestuff).fit(
            chains=2, draws=30, tune=10, seed=5, progressbar=False, verbose=False, method="noncentred")
    assert not fit.diagnostics().ok


def test_good_fit_does_not_warn(get_fit, sim_ri):
    df, _ = sim_ri
    fit = get_fit("y ~ x + (1 | g)", df, chains=2, draws=1000, tune=1000, seed=11,
                  method="noncentred")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        d = warn_if_problems(fit)                # what Model.fit runs after sampling
    assert d.ok, d.message()
    assert d.sampler["divergences"] == 0 and d.table["rhat"].max() < 1.02


def test_centred_funnel_built_in_pymc_is_flagged():
    """Eight schools, centred parameterisation: the classic funnel (divergences)."""
    pm = pytest.importorskip("pymc")
    y = np.array([28.0, 8, -3, 7, -1, 1, 18, 12])
    s = np.array([15.0, 10, 16, 11, 9, 11, 10, 18])
    with pm.Model():
        mu = pm.Normal("mu", 0, 5)
        tau = pm.HalfCauchy("tau", 5)
        theta = pm.Normal("theta", mu, tau, shape=8)
        pm.Normal("y", theta, s, observed=y)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            idata = pm.sample(draws=500, tune=500, chains=2, cores=2, random_seed=3, progressbar=False,
                              target_accept=0.8, nuts_sampler="pymc", compute_convergence_checks=False)
    d = diagnostics(idata)
    assert "divergences" in _checks(d), d.message()
    assert d.sampler["divergences"] > 0


def test_pointwise_log_likelihood_is_normal_logpdf(fake_fit, sleepstudy):
    fit = fake_fit("Reaction ~ Days + (Days | Subject)", sleepstudy, seed=7, draws=30)
    ll = fit.log_likelihood()
    assert ll.dims == ("chain", "draw", "obs") and ll.shape == (2, 30, 180)
    assert "log_likelihood" not in fit.idata.children      # reading does not change the fit
    f = fit.design.factor("Subject")
    post = fit.posterior
    for c, d in [(0, 0), (1, 29), (0, 17)]:
        b = post["b"].isel(chain=c, draw=d).to_numpy()
        r = post["r_Subject"].isel(chain=c, draw=d).to_numpy()
        sig = float(post["sigma"].isel(chain=c, draw=d))
        mu = fit.design.X @ b + np.sum(f.Z * r[f.codes], axis=1)
        np.testing.assert_allclose(ll.isel(chain=c, draw=d), st.norm.logpdf(fit.design.y, mu, sig),
                                   rtol=1e-12)


def test_loo_and_compare_rank_two_fits(get_fit, sim_ri):
    df, _ = sim_ri
    good = get_fit("y ~ x + (1 | g)", df, chains=2, draws=1000, tune=1000, seed=11,
                   method="noncentred")
    worse = get_fit("y ~ 1 + (1 | g)", df, chains=2, draws=500, tune=500, seed=12,
                    method="noncentred")
    groups = set(good.idata.children)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lo = good.loo()
        cmp = compare({"with x": good, "without x": worse})
    assert np.isfinite(lo.elpd) and lo.se > 0
    assert set(good.idata.children) == groups, "loo/compare must not change the fit"
    # x explains var 1 of 3.45 in y: the expected elpd gain is ~ n/2 log(3.1/2.1) ~ 230, many SEs.
    assert list(cmp.index) == ["with x", "without x"]
    assert abs(cmp.loc["without x", "elpd_diff"]) > 5 * cmp.loc["without x", "dse"]


def test_posterior_predictive_layout(fake_fit, dyestuff):
    fit = fake_fit("Yield ~ 1 + (1 | Batch)", dyestuff)
    pp = fit.posterior_predictive(num_draws=40, seed=1)
    assert pp["posterior_predictive"]["y"].shape == (1, 40, 30)
    np.testing.assert_array_equal(pp["observed_data"]["y"].to_numpy(), fit.design.y)
    again = fit.posterior_predictive(num_draws=40, seed=1)
    np.testing.assert_array_equal(pp["posterior_predictive"]["y"], again["posterior_predictive"]["y"])


def test_many_group_levels_are_checked_on_a_seeded_subset():
    """A group-effect variable with more levels than max_group_levels is checked on a random
    subset (ArviZ is ~2 ms per element). With 20% of 3,000 levels badly mixed, a subset of 500
    contains ~100 of them (binomial SD 9), far above the 5% rule, so the check still fails."""
    rng = np.random.default_rng(5)
    post, stats = _good(rng, chains=2, draws=500)
    r = rng.standard_normal((2, 500, 3000, 1))

    def tree_with(r):
        t = _tree(post, stats, chains=2, draws=500)
        p = t["posterior"].to_dataset()
        p["r_g"] = (("chain", "draw", "g__level", "g__term"), r)
        t["posterior"] = xr.DataTree(p)
        return t

    ok = diagnostics(tree_with(r), max_group_levels=500)
    assert ok.ok, ok.message()
    assert "r_g checked on a random subset of 500 of 3000 levels" in ok.message()
    assert ok.table.set_index("variable").loc["r_g", "n_elements"] == 500
    r[0, :, :600] += 1.0                                            # chain 0 elsewhere: R-hat ~ 1.1
    tree = tree_with(r)
    bad = diagnostics(tree, max_group_levels=500)
    assert "rhat" in _checks(bad)
    again = diagnostics(tree, max_group_levels=500)                 # seeded: the same subset
    assert list(again.parameters["parameter"]) == list(bad.parameters["parameter"])


def test_parameter_labels_name_each_element_by_its_coordinates(fake_fit, sleepstudy):
    """Every row of the diagnostics table names its element by the posterior's coordinate values,
    in the variable's dimension order (diagnostics._element_labels reads each coordinate once)."""
    fit = fake_fit("Reaction ~ Days + (Days | Subject)", sleepstudy)
    table = fit.diagnostics(max_group_levels=None).parameters
    names = list(table["parameter"])
    post = fit.posterior
    levels = [str(v) for v in post["r_Subject"].coords[post["r_Subject"].dims[2]].values]
    terms = [str(v) for v in post["r_Subject"].coords[post["r_Subject"].dims[3]].values]
    want_r = [f"r_Subject[{lv}, {t}]" for lv in levels for t in terms]
    assert [n for n in names if n.startswith("r_Subject[")] == want_r
    assert [n for n in names if n.startswith("b[")] == ["b[Intercept]", "b[Days]"]
    assert "sigma" in names and "sd_Subject[Days]" in names
