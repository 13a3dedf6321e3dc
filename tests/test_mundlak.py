"""Within-between (Mundlak) effects: within(x, g) / between(x, g) in formulas (bayeslmm.mundlak).

The recovery test simulates random intercepts correlated with x (truth: within effect 1.0) and
checks that the plain random-intercept slope is biased while the within effect is not.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import bayeslmm as blmm
from bayeslmm.design import make_design, predictor_arrays
from bayeslmm.errors import FormulaError, SpecError
from bayeslmm.formula import required_columns
from bayeslmm.mundlak import between, within, within_between_pairs

WB = "y ~ within(x, g) + between(x, g) + (1 | g)"


def mundlak_data(seed=1, J=50, m=5, gamma=1.0):
    """x_ij = a_i + 0.7 e_ij, u_i = gamma a_i + N(0, 0.5^2), y = 1 + 1.0 x + u_i + N(0, 1).

    The within effect is 1.0; the between effect is 1 + gamma Var(a) / Var(xbar) (about 1.9).
    """
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(J), m)
    a = rng.normal(size=J)
    x = a[g] + 0.7 * rng.normal(size=J * m)
    u = gamma * a + rng.normal(scale=0.5, size=J)
    y = 1.0 + 1.0 * x + u[g] + rng.normal(size=J * m)
    return pd.DataFrame({"y": y, "x": x, "g": [f"s{k}" for k in g]})


def test_within_and_between_are_group_deviations_and_means():
    df = pd.DataFrame({"y": [1.0, 2, 3, 4, 5, 6.5], "x": [1.0, 3, 10, 14, 2, 2.5],
                       "g": ["a", "a", "b", "b", "c", "c"]})
    d = make_design(blmm.build_spec(WB), df)
    assert d.fixed_terms == ("Intercept", "within(x, g)", "between(x, g)")
    np.testing.assert_allclose(d.X[:, 2], [2, 2, 12, 12, 2.25, 2.25])
    np.testing.assert_allclose(d.X[:, 1] + d.X[:, 2], df["x"])            # within + between = x
    # levels are matched by value, as grouping factors are: 1 and 1.0 are one group
    np.testing.assert_allclose(between([1.0, 3.0, 5.0], [1, 1.0, 2]), [2, 2, 5])
    np.testing.assert_allclose(within(np.log([1.0, 4.0]), ["a", "a"]), [-np.log(2), np.log(2)])


def test_new_data_known_groups_keep_fitted_means_new_groups_use_their_own_rows():
    df = pd.DataFrame({"y": [1.0, 2, 3, 4], "x": [1.0, 3, 10, 14], "g": ["a", "a", "b", "b"]})
    d = make_design(blmm.build_spec(WB), df)
    new = pd.DataFrame({"x": [0.0, 5.0, 7.0, 20.0], "g": ["a", "new", "new", "b"]})
    X, _ = predictor_arrays(d, new)
    np.testing.assert_allclose(X[:, 2], [2.0, 6.0, 6.0, 12.0])        # fitted means for a, b; own for 'new'
    np.testing.assert_allclose(X[:, 1], [-2.0, -1.0, 1.0, 8.0])
    # the fitted data again: the same columns as the fit
    X0, _ = predictor_arrays(d, d.data_frame())
    np.testing.assert_allclose(X0, d.X)


def test_group_means_use_the_rows_kept_in_the_fit():
    df = pd.DataFrame({"y": [1.0, np.nan, 3, 4], "x": [1.0, 100.0, 10, 14], "g": ["a", "a", "b", "b"]})
    with pytest.warns(UserWarning, match="1 of 4 rows"):
        d = make_design(blmm.build_spec(WB), df)
    np.testing.assert_allclose(d.X[:, 2], [1.0, 12.0, 12.0])


@pytest.mark.parametrize("bad", [
    "within(x, 1)", "within(x)", "within(x, g, h)", "within(x, g=h)", "within(x, log(g))",
    "within(x, g.__class__)", "between(__import__('os').system('true'), g)", "between(x, np)",
    "within(x, 'g')", "within(x, __builtins__)", "within(x, (lambda: 1)())", "between(x.real, g)",
    "within(*x, g)", "between(x, g)[0]", "within(9**9**9, g)",
])
def test_within_between_stay_inside_the_allow_list(bad):
    with pytest.raises(FormulaError):
        required_columns(bad)
    with pytest.raises(FormulaError):
        blmm.parse_formula(f"y ~ {bad} + (1 | g)")


def test_within_between_columns_and_errors():
    assert required_columns("within(log(x), g) + between(x, `my g`)") == ("x", "g", "my g")
    df = pd.DataFrame({"y": [1.0, 2, 3, 4], "x": ["p", "q", "p", "q"], "g": ["a", "a", "b", "b"]})
    with pytest.raises(FormulaError, match="numeric x"):
        make_design(blmm.build_spec(WB), df)
    assert within_between_pairs(["Intercept", "within(x, g)", "z", "between(x, g)", "between(z, g)"]) == \
        [("x | g", "within(x, g)", "between(x, g)")]


def test_plain_slope_biased_within_effect_recovered(get_fit):
    """Random intercepts correlated with x (gamma = 1): truth within = 1.0.

    Tolerances: posterior sds are about 0.09-0.10 and MCSEs about 0.003 (1,000 draws), so a
    3-sd band is Monte Carlo error plus sampling error of one data set (false alarm about 0.3%);
    the plain slope's bias (about +0.5, 5 sd; statsmodels' MixedLM gives 1.48 +- 0.09 on these
    data) is far outside it. Over 100 replicates (bench/applied_studies.py, REML) the plain slope
    averages 1.358 +- 0.011 and the within effect 0.999 +- 0.010 (mean +- Monte Carlo error).
    """
    df = mundlak_data()
    plain = get_fit("y ~ x + (1 | g)", df).summary()
    wb = get_fit(WB, df).within_between()
    w = wb.loc["x | g: within"]
    assert abs(w["mean"] - 1.0) < 3 * w["sd"], w
    assert plain.loc["x", "mean"] - 1.0 > 3 * plain.loc["x", "sd"], plain
    d = wb.loc["x | g: within - between"]
    assert d["hdi_upper"] < 0 and d["p_gt_0"] < 0.01                      # the check fires
    assert abs(d["mean"] - (w["mean"] - wb.loc["x | g: between", "mean"])) < 1e-9
    assert list(wb.columns[-1:]) == ["p_gt_0"] and wb.attrs["ci_prob"] == 0.95


def test_within_between_needs_the_pair(get_fit):
    fit = get_fit("y ~ x + (1 | g)", mundlak_data())
    with pytest.raises(SpecError, match="within\\(x, g\\) \\+ between\\(x, g\\)"):
        fit.within_between()


def test_saved_fit_keeps_the_group_means(get_fit, tmp_path):
    """A reloaded fit rebuilds within/between from its stored rows: the same design and the same
    predictions for a fitted group at a new x and for a new group."""
    fit = get_fit(WB, mundlak_data())
    again = blmm.load_fit(fit.save(tmp_path / "wb.nc"))
    np.testing.assert_array_equal(again.design.X, fit.design.X)
    new = pd.DataFrame({"x": [0.0, 3.0, -1.0, 1.0], "g": ["s0", "s0", "new", "new"]})
    a = fit.predict(new, allow_new_levels=True, include_random=False)
    b = again.predict(new, allow_new_levels=True, include_random=False)
    np.testing.assert_allclose(a["mean"], b["mean"])
    # population prediction X b: a fitted group at x = 3 vs 0 differs by 3 x the within effect
    w = fit.draws("within(x, g)").mean()
    assert a["mean"].iloc[1] - a["mean"].iloc[0] == pytest.approx(3 * w, rel=1e-9)
    # a new group: between = its own mean (0), within = -1, +1
    icpt = fit.draws("Intercept").mean()
    assert a["mean"].iloc[2] == pytest.approx(icpt - w, rel=1e-9)
