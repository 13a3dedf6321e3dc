"""The one-factor collapsed model's compiled log-density (paths/collapsed_density.py) is PyMC's.

NUTS on the one-factor collapsed path evaluates ``one_factor_logp_dlogp`` instead of the function
PyTensor compiles from the model's graph. Here both are evaluated at random points of the
unconstrained space (PyMC's compiled with the Python linker: nothing to compile with numba) for
every prior distribution, vector and mixed priors on one variable, one to three correlated terms,
several correlated blocks, known standard errors, with and without an intercept.

Tolerances: the gradients agree to 1e-7 (relative and absolute), the log-densities to 1e-6 absolute (with the
default priors the gradients agree to 1e-14). Exact agreement is not possible: PyMC computes some
constants in float32 (its own ``0.`` locations, the reciprocal of a gamma's or exponential's rate:
an exponential(3) prior's log-density differs by 1.5e-7, gamma(2, 3) by 1.7e-7, halfstudentt by
2e-8, a gamma(2.5, 1.5) prior's gradient by 8e-9 relative), while the compiled density's
constants are float64 (bayeslmm.priors.density_terms). A wrong term is off by far more.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pymc.blocking import DictToArrayBijection
from pytensor.compile.mode import Mode

import bayeslmm as blmm
from bayeslmm import stats as gs
from bayeslmm.paths import collapsed_density as cd
from bayeslmm.paths.collapsed import build_collapsed_model

CASES = {
    "default_corr2": ("y ~ x + (1 + x | g)", None),
    "corr3_nondefault": ("y ~ x + x2 + (1 + x + x2 | g)",
                         {"b": "studentt(4, 0.5, 3)", "Intercept": "normal(1, 10)", "sd": "halfnormal(2)",
                          "cor": "lkj(3)", "sigma": "exponential(0.7)"}),
    "mixed_sd_priors": ("y ~ x + (1 + x | g)",
                        {"sd(g, x)": "gamma(2.5, 1.5)", "sd(g, Intercept)": "halfcauchy(2)",
                         "x": "normal(0, 4)", "sigma": "halfnormal(3)"}),
    "mixed_b_priors": ("y ~ x + x2 + (1 | g)", {"x": "studentt(3, 0, 2)", "x2": "normal(0, 3)"}),
    "uncorrelated": ("y ~ x + (1 + x || g)", {"sigma": "gamma(2, 0.5)"}),
    "two_corr_blocks": ("y ~ x + x2 + (1 + x | g) + (0 + x2 + x3 | g)", {"cor": "lkj(1.5)"}),
    "corr_and_uncorr": ("y ~ x + x2 + (1 + x | g) + (0 + x2 | g)", None),
    "no_intercept": ("y ~ 0 + x + (1 | g)", None),
    "intercept_only": ("y ~ 1 + (1 | g)", {"sd": "exponential(0.5)"}),
    "known_se": ("y | se(s) ~ x + (1 + x | g)", None),
}


def _frame(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = 60
    df = pd.DataFrame({"g": [f"g{k}" for k in rng.integers(0, 8, n)], "x": rng.normal(size=n),
                       "x2": rng.normal(size=n), "x3": rng.normal(size=n), "s": rng.uniform(0.5, 2.0, n)})
    df["y"] = 2.0 + 1.5 * df["x"] + rng.normal(size=n) * 1.3
    return df


def _model_and_density(formula, priors, seed):
    m = blmm.Model(formula, _frame(seed), priors=priors)
    chain, _ = gs.nesting_chain(m.design)
    stats = gs.group_stats(m.design, chain)
    model = build_collapsed_model(m.design, m.prior_table, stats, chain=chain)
    ip = model.initial_point(random_seed=seed)
    start = DictToArrayBijection.map({v.name: ip[v.name] for v in model.continuous_value_vars})
    density = cd.one_factor_density(model, stats, chain[0].name)(start.point_map_info)
    return model, start, density


def _assert_equals_pymc(model, start, density, seed, scale):
    """Value and gradient of ``density`` against PyMC's ``logp_dlogp`` (Python linker) at random
    points around ``start`` (tolerances: module docstring)."""
    assert density is not None, "the compiled density should apply to this model"
    ref = model.logp_dlogp_function(ravel_inputs=True, mode=Mode(linker="py", optimizer="fast_compile"))
    ref.set_extra_values({})
    rng = np.random.default_rng(seed)
    for _ in range(4):
        x = start.data + rng.normal(0.0, scale, len(start.data))
        lp_ref, g_ref = ref._pytensor_function(x)
        lp, g = density._pytensor_function(x)
        assert abs(float(lp) - float(lp_ref)) < 1e-6
        np.testing.assert_allclose(g, g_ref, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("case", list(CASES))
def test_compiled_density_equals_pymc_logp_dlogp(case):
    formula, priors = CASES[case]
    model, start, density = _model_and_density(formula, priors, seed=len(case))
    _assert_equals_pymc(model, start, density, seed=7, scale=0.7)


def test_every_free_element_has_its_prior_and_role():
    """Priors of every element reach the compiled density (no element left at a default code)."""
    model, start, density = _model_and_density(*CASES["corr3_nondefault"], seed=3)
    layout = cd.density_layout(model, start.point_map_info, "g", "sigma", "y_marginal")
    names = [n for n, _, size, _ in start.point_map_info for _ in range(size)]
    by_name = dict(zip(names, layout.code))
    assert by_name["beta"] == blmm.priors.DENSITY_STUDENTT
    assert by_name["cpc_g"] == blmm.priors.DENSITY_CPC
    assert by_name["sigma_log__"] == blmm.priors.DENSITY_GAMMA           # exponential = gamma(1, lam)
    assert sorted(layout.sd_idx) == [i for i, n in enumerate(names) if n == "sd_g_log__"]
    assert len(layout.cpc_idx) == 3 and layout.blocks.tolist() == [[0, 3, 0]]
    assert layout.aux_idx == names.index("sigma_log__")


def test_unknown_models_fall_back_to_pymc():
    """A model with a term the compiled density does not know gets None (PyMC's function)."""
    import pymc as pm
    model, start, _ = _model_and_density(*CASES["default_corr2"], seed=1)
    assert cd.density_layout(model, start.point_map_info, "g", "sigma", "y_marginal") is not None
    assert cd.density_layout(model, start.point_map_info, "g", "sigma", "y_other") is None
    with model:
        pm.Potential("extra", 0.0 * model["sigma"])
    assert cd.density_layout(model, start.point_map_info, "g", "sigma", "y_marginal") is None


def test_fit_samples_with_the_compiled_density():
    fit = blmm.Model("y ~ x + (1 + x | g)", _frame(5)).fit(chains=2, draws=1000, tune=1000, seed=1,
                                                             progressbar=False, verbose=False)
    assert fit.info["method"] == "collapsed" and fit.info["density"] == "compiled"


# --------------------------------------------------------------------------------------------
# The collapsed GLMM (AGHQ) model: paths/quadrature_density.py
# --------------------------------------------------------------------------------------------
GLMM_CASES = {
    "bernoulli_intercept": ("bernoulli", "yb ~ x + (1 | g)", None),
    "binomial_trials_slope": ("binomial", "cbind(k, n - k) ~ x + (1 + x | g)", {"cor": "lkj(2.5)"}),
    "poisson_uncorrelated": ("poisson", "c ~ x + (1 + x || g)", {"sd": "halfnormal(1.5)"}),
    "negbinomial_phi": ("negbinomial", "c ~ x + (1 | g)", {"phi": "gamma(2, 0.5)"}),
}


def _glmm_frame(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = 80
    g = rng.integers(0, 10, n)
    x = rng.normal(size=n)
    eta = -0.3 + 0.6 * x + rng.normal(0, 0.8, 10)[g]
    trials = rng.integers(1, 8, n)
    return pd.DataFrame({"g": [f"g{k}" for k in g], "x": x, "yb": (rng.random(n) < 1 / (1 + np.exp(-eta))) * 1.0,
                         "n": trials, "k": rng.binomial(trials, 1 / (1 + np.exp(-eta))),
                         "c": rng.poisson(np.exp(eta + 1.0))})


@pytest.mark.parametrize("case", list(GLMM_CASES))
def test_compiled_glmm_density_equals_pymc_logp_dlogp(case):
    from bayeslmm.families import get_family
    from bayeslmm.paths import quadrature_density as qd
    from bayeslmm.paths.quadrature_path import build_quadrature_model, quadrature_data
    family, formula, priors = GLMM_CASES[case]
    m = blmm.Model(formula, _glmm_frame(len(case)), family=family, priors=priors)
    data = quadrature_data(m.design, family, None)
    model = build_quadrature_model(m.design, m.prior_table, family, None, data=data, n_nodes=5)
    ip = model.initial_point(random_seed=1)
    start = DictToArrayBijection.map({v.name: ip[v.name] for v in model.continuous_value_vars})
    aux = get_family(family, None).aux_names
    density = qd.quadrature_density(model, data, 5, m.design.factors[0].name, aux)(start.point_map_info)
    _assert_equals_pymc(model, start, density, seed=11, scale=0.5)


def test_numba_cache_folder_follows_every_kernel_source():
    """The densities link kernels from other files, and numba only notices edits of a function's own
    file: the cache sub-folder is keyed by every numba source, kernels and densities included."""
    from bayeslmm.cachedir import numba_sources
    names = {p.name for p in numba_sources()}
    assert {"collapsed_kernel.py", "collapsed_density.py", "quadrature_kernel.py", "quadrature_op.py",
            "quadrature_density.py", "quadrature_fused.py", "quadrature_mode.py", "quadrature_families.py"} <= names


# --------------------------------------------------------------------------------------------
# The collapsed crossed model: paths/crossed_density.py
# --------------------------------------------------------------------------------------------
CROSSED_CASES = {
    "two_intercepts": ("y ~ x + (1 | s) + (1 | i)", None),
    "correlated_slope_and_intercept": ("y ~ x + (1 + x | s) + (1 | i)",
                                       {"sd(i, Intercept)": "gamma(2, 1)", "cor": "lkj(1.5)", "x": "studentt(3, 0, 2)"}),
    "three_factors_two_slopes": ("y ~ x + (1 + x | s) + (1 + x || i) + (1 | h)", {"sigma": "halfnormal(2)"}),
}


def _crossed_frame(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    s, i = (m.ravel() for m in np.meshgrid(np.arange(6), np.arange(5), indexing="ij"))
    n = len(s)
    x = rng.normal(size=n)
    y = 1.0 + 0.5 * x + rng.normal(0, 0.8, 6)[s] + rng.normal(0, 0.6, 5)[i] + rng.normal(0, 0.7, n)
    return pd.DataFrame({"y": y, "x": x, "s": [f"s{k}" for k in s], "i": [f"i{k}" for k in i],
                         "h": [f"h{k % 3}" for k in range(n)]})


@pytest.mark.parametrize("case", list(CROSSED_CASES))
def test_compiled_crossed_density_equals_pymc_logp_dlogp(case):
    from bayeslmm.paths import crossed_density as xd
    from bayeslmm.paths.crossed_path import build_crossed_path_model, design_stats
    formula, priors = CROSSED_CASES[case]
    m = blmm.Model(formula, _crossed_frame(len(case)), priors=priors)
    assert m.plan().path == "crossed"
    stats = design_stats(m.design)
    model = build_crossed_path_model(m.design, m.prior_table, stats)
    ip = model.initial_point(random_seed=2)
    start = DictToArrayBijection.map({v.name: ip[v.name] for v in model.continuous_value_vars})
    density = xd.crossed_density(model, stats, [f.name for f in m.design.factors])(start.point_map_info)
    _assert_equals_pymc(model, start, density, seed=5, scale=0.5)


def test_density_survives_pickling():
    """PyMC's own parallel sampler (where chains are not forked) pickles the step and its function."""
    import pickle
    _, start, density = _model_and_density(*CASES["default_corr2"], seed=4)
    again = pickle.loads(pickle.dumps(density))
    lp, g = density._pytensor_function(start.data)
    lp2, g2 = again._pytensor_function(start.data)
    assert lp == lp2 and np.array_equal(g, g2)


def test_remembered_evaluations_are_exact_and_bounded(monkeypatch):
    """NUTS re-evaluates each iteration's starting point; LogpDlogp answers it from memory."""
    calls = []

    def fn(x, k):
        calls.append(x.copy())
        return float(x.sum() * k), x * k

    monkeypatch.setattr(cd, "CACHE_SIZE", 3)
    f = cd.LogpDlogp(fn, (2.0,))
    a, b = np.array([1.0, 2.0]), np.array([1.0, 2.0 + 1e-15])
    assert f._pytensor_function(a)[0] == 6.0 and f._pytensor_function(a.copy())[0] == 6.0
    assert len(calls) == 1                              # the same bytes: remembered
    f._pytensor_function(b)
    assert len(calls) == 2                              # any other bit pattern: evaluated
    for v in (3.0, 4.0):
        f._pytensor_function(np.array([v, v]))
    assert len(f._seen) <= 3                            # bounded: forgotten all at once
    f._pytensor_function(a)
    assert len(calls) == 5


def test_same_draws_with_and_without_remembered_evaluations(monkeypatch):
    df = _frame(9)

    def draws():
        fit = blmm.Model("y ~ x + (1 + x | g)", df).fit(chains=2, draws=200, tune=200, seed=3, progressbar=False,
                                                        verbose=False)
        assert fit.info["density"] == "compiled"
        return fit.posterior["sd_g"].to_numpy()

    remembered = draws()
    monkeypatch.setattr(cd.LogpDlogp, "_pytensor_function", lambda self, x: self._fn(x, *self._args))
    np.testing.assert_array_equal(draws(), remembered)
