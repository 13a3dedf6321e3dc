"""The non-centred PyMC graph, checked without sampling: names, dims, shapes, non-centring."""

import numpy as np
import pandas as pd
import pytest

import bayeslmm as blmm
from bayeslmm.paths.noncentred import build_model
from bayeslmm.posterior import stored_var_names


def built(formula, data):
    m = blmm.Model(formula, data)
    return m, build_model(m.design, m.prior_table)


def test_correlated_block(sleepstudy):
    m, pmm = built("Reaction ~ Days + (Days | Subject)", sleepstudy)
    assert sorted(v.name for v in pmm.free_RVs) == ["Intercept_c", "beta", "cpc_Subject", "sd_Subject",
                                                     "sigma", "z_Subject"]
    assert pmm.named_vars_to_dims["r_Subject"] == ("Subject__level", "Subject__term")
    assert pmm.named_vars_to_dims["cor_Subject"] == ("Subject__term", "Subject__term2")
    assert pmm.coords["Subject__term"] == ("Intercept", "Days")
    assert stored_var_names(m.design, ("sigma",)) == ["b", "sd_Subject", "cor_Subject", "r_Subject", "sigma"]


def test_non_centred_identity(sleepstudy):
    """r = (z @ L.T) * sd exactly, and b recovers the uncentred intercept."""
    m, pmm = built("Reaction ~ Days + (Days | Subject)", sleepstudy)
    rng = np.random.default_rng(3)
    z = rng.normal(size=(18, 2))
    sd = np.array([20.0, 5.0])
    rho = 0.3
    L = np.array([[1.0, 0.0], [rho, np.sqrt(1 - rho**2)]])
    f = pmm.compile_fn([pmm["r_Subject"], pmm["cor_Subject"], pmm["b"]],
                       inputs=[pmm["z_Subject"], pmm["sd_Subject"], pmm["cpc_Subject"], pmm["Intercept_c"],
                               pmm["beta"]], point_fn=False)
    r, cor, b = f(z, sd, np.array([np.arctanh(rho)]), 300.0, np.array([10.0]))   # cpc = atanh(rho) for n = 2
    np.testing.assert_allclose(r, (z @ L.T) * sd, rtol=1e-12)
    np.testing.assert_allclose(cor, L @ L.T, rtol=1e-12)
    xbar = sleepstudy.Days.mean()
    np.testing.assert_allclose(b, [300.0 - 10.0 * xbar, 10.0], rtol=1e-12)


def test_uncorrelated_has_no_lkj(sleepstudy):
    m, pmm = built("Reaction ~ Days + (Days || Subject)", sleepstudy)
    assert not any(v.name.startswith("cpc_") for v in pmm.free_RVs)
    assert "cor_Subject" not in pmm.named_vars


def test_two_correlated_blocks_on_one_factor():
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"y": rng.normal(size=60), "x": rng.normal(size=60), "w": rng.normal(size=60),
                       "v": rng.normal(size=60), "g": np.repeat(list("abcdef"), 10)})
    m, pmm = built("y ~ x + (1 + x | g) + (0 + w + v | g)", df)
    assert {"cpc_g_0", "cpc_g_1"} <= {v.name for v in pmm.free_RVs}
    f = m.design.factors[0]
    assert f.blocks == ((0, 1), (2, 3)) and f.correlation_pairs == [(0, 1), (2, 3)]


def test_crossed_and_nested_dims():
    df = pd.DataFrame({"y": np.arange(24.0) % 5, "s": np.repeat(list("abcd"), 6),
                       "i": list("uvwxyz") * 4})
    _, pmm = built("y ~ 1 + (1 | s) + (1 | i)", df)
    assert pmm.named_vars_to_dims["r_s"] == ("s__level", "s__term")
    assert len(pmm.coords["i__level"]) == 6
    _, pmm = built("y ~ 1 + (1 | s/i)", df)
    assert len(pmm.coords["s:i__level"]) == 24


def test_no_intercept_fixed_part():
    df = pd.DataFrame({"y": np.arange(12.0), "x": np.arange(12.0) % 4, "g": list("ab") * 6})
    m, pmm = built("y ~ 0 + x + (1 | g)", df)
    assert "Intercept_c" not in pmm.named_vars and pmm.coords["term"] == ("x",)
