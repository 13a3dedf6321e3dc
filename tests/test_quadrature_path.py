"""The collapsed GLMM path from a formula (issue 13): path choice, agreement with the non-centred
graph, and SBC of the exact group-effect draws with a negative control (the SBC with NUTS, >= 100
replicates per family, runs in ``make validate``: docs/validation.md).

The kernel itself (log-likelihood against brute-force integration per number of nodes, gradient
against finite differences, the draws' moments) is tested in tests/test_quadrature.py; recovery,
every report, LOO and cbpp against lme4 run through this path in tests/test_families.py (``method``
``auto`` takes it there).

**Agreement with the non-centred path** (bernoulli; binomial with trials; Poisson with an offset;
the simulated data of tests/test_families.py, whose quadrature fits the session cache shares): both
paths sample the same posterior, so for every parameter (fixed effects, sd(g)) and every group
effect the difference of posterior means, divided by its Monte Carlo SE sqrt(MCSE_a^2 + MCSE_b^2)
(MCSE = posterior SD / sqrt(bulk ESS)), is roughly standard normal. With 3 x (3 + 30 or 40)
comparisons we allow |z| < 4.5 (two-sided P = 6.8e-6 each, < 1e-3 for all together), and the
posterior SDs of b and sd(g) must agree within 35% (the relative error of an SD estimate is about
1 / sqrt(2 ESS); with bulk ESS >= 50 on the slower path and several hundred on the quadrature path,
the ratio's relative SD is <= 0.105, so 35% is 3.3 SDs). The quadrature error itself is below 1% of a
posterior SD by construction (:data:`bayeslmm.paths.quadrature.ERROR_TOL`).
"""

import numpy as np
import pandas as pd
import pytest

import bayeslmm as blmm
from bayeslmm.errors import SpecError
from bayeslmm.validation import family_cases

from test_families import FIT, _sim

Z_MAX = 4.5


def _frame(n_groups=12, n=6, seed=0):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), n)
    return pd.DataFrame({"y": (rng.random(len(g)) < 0.5).astype(float), "x": rng.normal(size=len(g)),
                         "g": g.astype(str), "h": (g % 3).astype(str), "c": rng.poisson(3, len(g))})


def test_auto_takes_the_quadrature_path_where_it_applies_and_says_why():
    df = _frame()
    for fam, formula in [("bernoulli", "y ~ x + (1 | g)"), ("poisson", "c ~ x + (1 + x | g)"),
                         ("negbinomial", "c ~ x + (x || g)")]:
        plan = blmm.Model(formula, df, family=fam).plan()
        assert plan.path == "quadrature" and "adaptive Gauss-Hermite" in plan.reason, (fam, plan)
        assert blmm.Model(formula, df, family=fam).plan("collapsed").path == "quadrature"
        assert blmm.Model(formula, df, family=fam).plan("noncentred").path == "noncentred"
    crossed = blmm.Model("y ~ x + (1 | g) + (1 | h)", df, family="bernoulli")
    plan = crossed.plan()
    assert plan.path == "noncentred" and "one grouping factor" in plan.reason
    with pytest.raises(SpecError, match="collapsed.*one grouping factor"):
        crossed.plan("collapsed")
    four = blmm.Model("y ~ x + (1 + x + I(x**2) + I(x**3) | g)", df, family="bernoulli").plan()
    assert four.path == "noncentred" and "1 to 3" in four.reason
    st = blmm.Model("x ~ 1 + (1 | g)", df, family="student_t").plan()
    assert st.path == "noncentred"
    gauss = blmm.Model("x ~ 1 + (1 | g)", df).plan()
    assert gauss.path == "collapsed"
    # the SBC cases of the quadrature path (make validate) take it
    for case in family_cases(("bernoulli", "negbinomial"), method="collapsed"):
        assert case.model().plan().path == "quadrature" and case.name.endswith("_quadrature")


def _z_table(names, fit_a, fit_b):
    import arviz as az
    out = {}
    for name in names:
        ess_a = np.asarray(az.ess(fit_a.posterior[[name]], method="bulk")[name])
        ess_b = np.asarray(az.ess(fit_b.posterior[[name]], method="bulk")[name])
        xa, xb = fit_a.posterior[name].values, fit_b.posterior[name].values
        ma, mb = xa.mean(axis=(0, 1)), xb.mean(axis=(0, 1))
        sa, sb = xa.std(axis=(0, 1)), xb.std(axis=(0, 1))
        se = np.sqrt(sa ** 2 / ess_a + sb ** 2 / ess_b)
        out[name] = ((ma - mb) / se, sa / sb, np.minimum(ess_a, ess_b))
    return out


@pytest.mark.parametrize("family", ["bernoulli", "binomial", "poisson"])
def test_posterior_agrees_with_the_noncentred_path(get_fit, family):
    seed = {"bernoulli": 21, "binomial": 22, "poisson": 23}[family]
    formula, df, _ = _sim(family, seed)
    quad = get_fit(formula, df, {"family": family}, **FIT)
    assert quad.info["method"] == "quadrature" and quad.info["n_nodes"] >= 3
    assert quad.info["effects_exact"] == 1.0 and quad.info["effects_min_ess"] is None
    if family == "poisson":
        assert "offset" in formula
    nc = get_fit(formula, df, {"family": family, "method": "noncentred"}, **FIT)
    assert nc.info["method"] == "noncentred"
    assert set(quad.posterior.data_vars) == set(nc.posterior.data_vars)
    for name in quad.posterior.data_vars:
        assert quad.posterior[name].dims == nc.posterior[name].dims
    tab = _z_table(["b", "sd_g", "r_g"], quad, nc)
    for name, (z, ratio, ess) in tab.items():
        assert np.all(np.abs(z) < Z_MAX), (family, name, np.round(z, 2))
        if name != "r_g":
            assert np.all(ess >= 50), (family, name, ess)
            assert np.all(np.abs(ratio - 1) < 0.35), (family, name, ratio)
    # the stored group effects are the non-centred path's, level by level
    np.testing.assert_array_equal(quad.posterior["r_g"]["g__level"], nc.posterior["r_g"]["g__level"])
    assert quad.ranef() is not None


@pytest.mark.parametrize("family,q", [("bernoulli", 1), ("poisson", 2)])
def test_group_effect_draws_pass_sbc_and_flag_a_wrong_sd(family, q):
    """SBC of the exact conditional draws of the group effects (the step after NUTS), without NUTS:
    per replicate the true (b, Sigma) are known, u_j ~ N(0, Sigma), y is simulated, and L = 39 draws of
    u_j | y_j, b, Sigma are made; the rank of the true u_j among them is uniform on 0..L when the
    draws are exact. 30 replicates x 25 groups x q terms are pooled (ranks of different groups are
    independent), and a chi-square test on 10 bins must not reject at 1e-3 (false alarm 1e-3). The
    negative control draws with the SD scaled by 0.6 (over-shrunk effects): the ranks pile up at
    the ends and the test must reject."""
    from scipy import stats as st

    from bayeslmm.paths.quadrature import draw_group_effects, prepare
    rng = np.random.default_rng(7 + q)
    J, n, L, R = 25, 6, 39, 30
    b = np.array([0.2, 0.5])
    sd = np.array([1.0, 0.6])[:q]
    C = np.array([[1.0, 0.0], [0.5, np.sqrt(0.75)]])[:q, :q]
    ranks = {1.0: [], 0.6: []}
    for rep in range(R):
        g = np.repeat(np.arange(J), n)
        x = rng.normal(size=J * n)
        X = np.column_stack([np.ones(J * n), x])
        Z = X[:, :q]
        u = (rng.standard_normal((J, q)) @ C.T) * sd
        eta = X @ b + np.sum(Z * u[g], axis=1)
        if family == "bernoulli":
            y = (rng.random(J * n) < 1 / (1 + np.exp(-eta))).astype(float)
        else:
            y = rng.poisson(np.exp(eta)).astype(float)
        data = prepare(y, X, g, Z, family=family)
        for scale in ranks:
            ud, _ = draw_group_effects(data, np.tile(b, (L, 1)), np.tile(sd * scale, (L, 1)),
                                       np.tile(C, (L, 1, 1)), seed=rep)
            ranks[scale].append((ud < u[None]).sum(axis=0).ravel())
    p = {}
    for scale, rk in ranks.items():
        counts = np.bincount(np.concatenate(rk) * 10 // (L + 1), minlength=10)
        p[scale] = st.chisquare(counts).pvalue
    assert p[1.0] > 1e-3, p
    assert p[0.6] < 1e-3, p


def test_sbc_refitter_swaps_the_quadrature_data():
    """The SBC study's compiled-model refitter on the quadrature path (make validate's >= 100
    replicates per family): built without compiling, and every array a new replicate's y changes
    is one of the compiled model's data (a refitter that could not be built once stopped the
    whole study)."""
    from bayeslmm.validation.refit import PathRefitter
    m = blmm.Model("y ~ x + (1 | g)", _frame(), family="bernoulli")
    # (the study uses nutpie, whose compile is too slow here; the pymc engine compiles nothing yet)
    refit = PathRefitter(m, m.plan("collapsed"), "pymc", 0.9)
    assert refit.plan.path == "quadrature"
    y = 1.0 - m.design.y
    data, stats = refit._data(y)
    assert set(data) <= refit.sampler.data_names and "aghq_y" in data
    np.testing.assert_array_equal(np.sort(data["aghq_y"]), np.sort(y))
