"""Design arrays: integer group codes (never dense indicators), Z columns, blocks, baselines, bad input."""

import numpy as np
import pandas as pd
import pytest

import bayeslmm as blmm
from bayeslmm import DataError, FormulaError


def design(formula, data, **kw):
    return blmm.make_design(blmm.build_spec(formula), data, **kw)


def test_sleepstudy_design(sleepstudy):
    d = design("Reaction ~ Days + (Days | Subject)", sleepstudy)
    assert d.fixed_terms == ("Intercept", "Days")
    np.testing.assert_array_equal(d.X[:, 1], sleepstudy["Days"].to_numpy())
    np.testing.assert_array_equal(d.y, sleepstudy["Reaction"].to_numpy())
    (f,) = d.factors
    assert f.name == "Subject" and f.terms == ("Intercept", "Days")
    assert f.blocks == ((0, 1),) and f.correlated == (True,) and f.correlation_pairs == [(0, 1)]
    assert f.levels == tuple(sorted(sleepstudy["Subject"].unique()))
    # codes index levels exactly
    np.testing.assert_array_equal(np.array(f.levels)[f.codes], sleepstudy["Subject"].to_numpy())
    np.testing.assert_array_equal(f.group_sizes, np.full(18, 10))


def test_uncorrelated_and_split_terms(sleepstudy):
    a = design("Reaction ~ Days + (Days || Subject)", sleepstudy).factors[0]
    b = design("Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)", sleepstudy).factors[0]
    for f in (a, b):
        assert f.terms == ("Intercept", "Days") and f.blocks == ((0,), (1,))
        assert not f.has_correlation
    np.testing.assert_array_equal(a.Z, b.Z)


def test_nested_and_interaction_groups():
    df = pd.DataFrame({"y": np.arange(12.0), "school": list("AABB" * 3),
                       "cls": ["1", "2"] * 6})
    d = design("y ~ 1 + (1 | school/cls)", df)
    assert [f.name for f in d.factors] == ["school", "school:cls"]
    inner = d.factors[1]
    assert inner.levels == ("A:1", "A:2", "B:1", "B:2")
    assert inner.parent(d.factors).name == "school"
    expected = [f"{s}:{c}" for s, c in zip(df.school, df.cls)]
    assert list(np.array(inner.levels)[inner.codes]) == expected


def test_numeric_group_levels_sorted_numerically(radon):
    f = design("log_radon ~ floor_measure + (1 | county_idx)", radon).factors[0]
    assert f.levels[:3] == ("1", "2", "3") and f.n_levels == 85


def test_many_levels_use_codes_not_dense_matrix():
    # 200,000 rows and 100,000 levels: a dense indicator would need 160 GB.
    rng = np.random.default_rng(0)
    n, J = 200_000, 100_000
    df = pd.DataFrame({"y": rng.normal(size=n), "g": rng.integers(0, J, n)})
    f = design("y ~ 1 + (1 | g)", df).factors[0]
    assert f.codes.shape == (n,) and f.Z.shape == (n, 1) and f.codes.dtype == np.int64


def test_categorical_baseline_is_first_level_and_noted():
    df = pd.DataFrame({"y": np.arange(9.0), "c": ["b", "a", "c"] * 3, "g": list("xyz") * 3})
    d = design("y ~ c + (1 | g)", df)
    assert d.fixed_terms == ("Intercept", "c[T.b]", "c[T.c]")
    assert any("baseline level 'a'" in n for n in d.notes)
    cat = df.assign(c=pd.Categorical(df.c, categories=["c", "b", "a"]))
    d2 = design("y ~ c + (1 | g)", cat)
    assert d2.fixed_terms == ("Intercept", "c[T.b]", "c[T.a]")
    assert any("baseline level 'c'" in n for n in d2.notes)


def test_missing_rows_dropped_with_count_or_error(sleepstudy):
    df = sleepstudy.copy()
    df.loc[[3, 50], "Reaction"] = np.nan
    df.loc[7, "Days"] = np.nan
    before = df.copy()
    with pytest.warns(UserWarning, match="3 of 180 rows have missing values.*Reaction: 2, Days: 1"):
        d = design("Reaction ~ Days + (Days | Subject)", df)
    assert d.n == 177 and d.n_dropped == 3
    pd.testing.assert_frame_equal(df, before)
    with pytest.raises(DataError, match="3 of 180 rows have missing values"):
        design("Reaction ~ Days + (Days | Subject)", df, missing="raise")


@pytest.mark.parametrize("mutate, formula, exc, match", [
    (lambda d: d, "Reaction ~ Dayz + (1 | Subject)", DataError, "column 'Dayz' .*did you mean 'Days'"),
    (lambda d: d, "Reaction ~ Days + (1 | Subjekt)", DataError, "column 'Subjekt' used in the grouping factor"),
    (lambda d: d.assign(Subject="308"), "Reaction ~ Days + (1 | Subject)", DataError,
     "grouping factor 'Subject' in '\\(1 \\| Subject\\)' has 1 level; need >= 2"),
    (lambda d: d.assign(Reaction=d.Reaction.astype(str)), "Reaction ~ Days + (1 | Subject)", DataError,
     "response 'Reaction' must be numeric"),
    (lambda d: d.assign(Days=d.Days.replace(3, np.inf)), "Reaction ~ Days + (1 | Subject)", DataError,
     "column 'Days' .* 18 infinite"),
    (lambda d: d.assign(k=1.0), "Reaction ~ Days + k + (1 | Subject)", DataError, "'k' is constant"),
    (lambda d: d.assign(k=2 * d.Days), "Reaction ~ Days + k + (1 | Subject)", DataError, "collinear"),
    (lambda d: d.iloc[:0], "Reaction ~ Days + (1 | Subject)", DataError, "no rows"),
    (lambda d: d.assign(k=1.0), "Reaction ~ Days + (0 + k | Subject)", DataError,
     "random-effect column 'k' for 'Subject' is constant"),
])
def test_bad_input_errors(sleepstudy, mutate, formula, exc, match):
    data = mutate(sleepstudy.copy())
    with pytest.raises(exc, match=match):
        design(formula, data)


def test_not_a_dataframe():
    with pytest.raises(DataError, match="pandas DataFrame"):
        design("y ~ 1 + (1|g)", {"y": [1, 2]})


def test_errors_are_bayeslmm_errors():
    assert issubclass(DataError, blmm.BayesLMMError) and issubclass(FormulaError, blmm.BayesLMMError)
