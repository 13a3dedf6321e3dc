"""Observation weights (``weights=``): likelihood weights, row i's log-likelihood counts w_i times.

The identity that defines them: integer weights give the same model as duplicated rows. On the
collapsed path the model is a function of the per-group sufficient statistics only, so the identity
is checked on the statistics (to floating point) and on the fitted posterior; on the non-centred
path on the compiled log-density at random points (to floating point).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import bayeslmm as blmm
from bayeslmm.errors import DataError, SpecError
from bayeslmm.stats import group_stats

FORMULA = "y ~ x + (1 + x | g)"
# data-independent priors (the defaults scale with sd(y), which differs between the two data sets)
PRIORS = {"Intercept": "normal(0, 10)", "b": "normal(0, 5)", "sd": "half_normal(2)", "sigma": "half_normal(2)"}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(11)
    J, n = 6, 7
    g = np.repeat(np.arange(J), n)
    x = rng.normal(size=J * n)
    y = 2 + 0.5 * x + rng.normal(0, 0.7, J)[g] + rng.normal(0, 0.3, J)[g] * x + rng.normal(0, 1, J * n)
    w = rng.integers(1, 4, J * n)
    df = pd.DataFrame({"y": y, "x": x, "g": [f"g{k}" for k in g], "w": w})
    dup = df.loc[df.index.repeat(df["w"])].reset_index(drop=True)
    return df, dup


def test_integer_weights_equal_duplicated_rows_in_the_statistics(data):
    df, dup = data
    sw = group_stats(blmm.Model(FORMULA, df, weights="w").design)
    sd = group_stats(blmm.Model(FORMULA, dup).design)
    for name in ("b0", "XtX", "Xte", "ete", "n_obs"):
        np.testing.assert_allclose(getattr(sw, name), getattr(sd, name), rtol=1e-10, atol=1e-10, err_msg=name)
    for name in ("ZtZ", "ZtX", "Zte"):
        for a, b in zip(getattr(sw, name), getattr(sd, name)):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10, err_msg=name)
    assert sw.n_obs.sum() == len(dup) != len(df)
    unweighted = group_stats(blmm.Model(FORMULA, df).design)
    assert not np.allclose(unweighted.ete, sd.ete)          # the check can fail


@pytest.mark.parametrize("method", ["noncentred", "collapsed"])
def test_integer_weights_equal_duplicated_rows_on_the_log_density(data, method):
    df, dup = data
    f = "y ~ 1 + (1 + x | g)"       # no fixed slope: its centring (at the unweighted mean of x) is not weighted
    pri = {k: v for k, v in PRIORS.items() if k != "b"}
    mw = blmm.Model(f, df, weights="w", priors=pri).build(method)
    md = blmm.Model(f, dup, priors=pri).build(method)
    fw, fd = (m.compile_fn(m.logp(), mode="FAST_COMPILE") for m in (mw, md))
    rng = np.random.default_rng(0)
    for _ in range(3):
        point = {k: v + rng.normal(0, 0.3, np.shape(v)) for k, v in mw.initial_point().items()}
        assert abs(fw(point) - fd(point)) < 1e-9 * abs(fd(point))
        # the check can fail: a 1% change of sigma moves the log-density by far more than that
        moved = {**point, "sigma_log__": point["sigma_log__"] + 0.01}
        assert abs(fw(point) - fd(point)) < 1e-6 * abs(fd(point) - fd(moved))


def test_bad_weights_are_refused(data):
    df, _ = data
    with pytest.raises(DataError, match="'w'.*negative"):
        blmm.Model(FORMULA, df.assign(w=df["w"] - 3), weights="w")
    with pytest.raises(DataError, match="'wt'"):
        blmm.Model(FORMULA, df, weights="wt")
    with pytest.raises(SpecError, match="gaussian"):
        blmm.Model("w ~ x + (1 | g)", df, family="poisson", weights="w")
    with pytest.raises(DataError, match="0 in every row"):
        blmm.Model(FORMULA, df.assign(w=0), weights="w")


def test_a_model_file_takes_weights(data, tmp_path):
    from bayeslmm.specfile import load_model_file
    df, _ = data
    df.to_csv(tmp_path / "d.csv", index=False)
    (tmp_path / "m.toml").write_text('[model]\nformula = "y ~ x + (1 | g)"\nweights = "w"\n\n[data]\npath = "d.csv"\n')
    mf = load_model_file(tmp_path / "m.toml")
    design = mf.build_model().design
    np.testing.assert_array_equal(design.weights, df["w"].to_numpy(float))
    assert "weights" in (tmp_path / "m.toml").read_text() and mf.spec.to_dict()["weights"] == "w"


def test_shrinkage_and_log_likelihood_with_weights_equal_duplicated_rows(data, fake_fit):
    """Same posterior draws, weighted rows vs duplicated rows: the per-group no pooling, complete and
    partial pooling and the exact shrinkage agree, and each row's log-likelihood counts w_i times."""
    from bayeslmm.results import Fit
    df, dup = data
    fd = fake_fit(FORMULA, dup, seed=4)
    mw = blmm.Model(FORMULA, df, weights="w")
    fw = Fit(fd.idata, mw.spec, mw.design, mw.prior_table, fd.sampler, {"seed": 4, "method": "fake"})
    cols = ["no_pooling", "complete_pooling", "partial_mean", "shrinkage"]
    a, b = fw.shrinkage().table, fd.shrinkage().table
    np.testing.assert_allclose(a[cols].to_numpy(float), b[cols].to_numpy(float), rtol=1e-8, atol=1e-10)
    unweighted = Fit(fd.idata, blmm.Model(FORMULA, df).spec, blmm.Model(FORMULA, df).design, mw.prior_table,
                     fd.sampler, {"seed": 4, "method": "fake"}).shrinkage().table
    assert not np.allclose(unweighted["no_pooling"], b["no_pooling"])     # the check can fail
    ll_w, ll_d = fw.log_likelihood().to_numpy(), fd.log_likelihood().to_numpy()
    first = np.r_[0, np.cumsum(df["w"].to_numpy())[:-1]]                  # each row's first copy in dup
    np.testing.assert_allclose(ll_w, ll_d[..., first] * df["w"].to_numpy(), rtol=1e-12)
