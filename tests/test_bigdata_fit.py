"""Fitting from per-group statistics (data bigger than memory): Parquet, Dask, model files, the CLI.

References:

* the in-memory path on the same rows. The statistics agree to 1e-10 (tests/test_data.py), so the
  collapsed log-density and its gradient agree to ~1e-12 relative: checked at random points with a
  tolerance of 1e-9. The *draws* cannot be compared with the in-memory path: NUTS amplifies a
  last-bit difference in the gradient (1e-14 becomes 1e-10 after 20 adaptive iterations and O(1)
  after ~100), so posterior means are compared within 5 Monte Carlo standard errors instead;
* the chunked pandas path with the same chunks as the Parquet files: the statistics are then bitwise
  the same whatever reads the rows (pandas slices, pyarrow, Dask workers on a ``LocalCluster``), so
  the draws with the same seed are identical (Dask vs pyarrow fits: checked to 1e-8).

One model structure (``Reaction ~ Days + (Days | Subject)``, compiled once) and 2 x 150 draws.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import bayeslmm as blmm
from bayeslmm.bigfit import StatsDesign
from bayeslmm.data import as_source
from bayeslmm.errors import DataError, SpecError
from bayeslmm.results import load_fit
from bayeslmm.stats import group_stats

FORMULA = "Reaction ~ Days + (Days | Subject)"
KW = dict(chains=2, draws=150, tune=150, seed=11, cores=1, progressbar=False, verbose=False)
HALF = 90      # rows per Parquet file = chunk_rows of the pandas reference


def _fit(model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")           # short chains: convergence warnings are expected
        return model.fit(**KW)


@pytest.fixture(scope="module")
def parts(tmp_path_factory, sleepstudy):
    d = tmp_path_factory.mktemp("parts")
    sleepstudy.iloc[:HALF].to_parquet(d / "part-0.parquet")
    sleepstudy.iloc[HALF:].to_parquet(d / "part-1.parquet")
    return d


@pytest.fixture(scope="module")
def parquet_fit(parts):
    m = blmm.Model(FORMULA, as_source(str(parts), chunk_rows=HALF))      # a path, in the same chunks
    assert isinstance(m.design, StatsDesign) and m.design.n == 180
    return m, _fit(m)


def test_density_and_priors_equal_in_memory(sleepstudy):
    """Same priors, centring and collapsed log-density (and gradient) as the in-memory model."""
    mem = blmm.Model(FORMULA, sleepstudy)
    big = blmm.Model(FORMULA, sleepstudy, engine="chunked")
    assert mem.prior_table.to_dict() == big.prior_table.to_dict()
    for a, b in zip(mem.prior_table.entries, big.prior_table.entries):
        for (k, x), (_, y) in zip(a.prior.params, b.prior.params):
            assert x == pytest.approx(y, rel=1e-13, abs=1e-13), (a.label, k)
    np.testing.assert_allclose(big.design.slope_means, mem.design.slope_means, rtol=1e-13)
    assert big.plan().path == "collapsed" and "per-group statistics" in big.plan().reason
    pm_mem, pm_big = mem.build("collapsed"), big.build("collapsed")
    logp_m, logp_b = pm_mem.compile_logp(), pm_big.compile_logp()
    dlogp_m, dlogp_b = pm_mem.compile_dlogp(), pm_big.compile_dlogp()
    rng = np.random.default_rng(0)
    ip = pm_mem.initial_point()
    for _ in range(8):
        pt = {k: v + rng.normal(0, 0.5, np.shape(v)) for k, v in ip.items()}
        assert logp_b(pt) == pytest.approx(logp_m(pt), rel=1e-9)
        np.testing.assert_allclose(dlogp_b(pt), dlogp_m(pt), rtol=1e-7, atol=1e-9)


def _arrays(s):
    return [s.b0, s.XtX, s.Xte, s.ete, s.n_obs, *s.ZtZ, *s.ZtX, *s.Zte, *s.n_nodes]


def test_parquet_and_localcluster_equal_pandas(parts, sleepstudy, parquet_fit):
    """Issue 16's check: a LocalCluster reading a Parquet directory gives the pandas statistics and
    posterior. The pandas path read in the same two chunks gives bitwise the Parquet statistics (so
    the same draws: everything after the statistics is deterministic given the seed), and the Dask
    fit's draws equal the Parquet fit's."""
    distributed = pytest.importorskip("distributed")
    dd = pytest.importorskip("dask.dataframe")
    pq_model, ref = parquet_fit
    pandas_model = blmm.Model(FORMULA, as_source(sleepstudy, chunk_rows=HALF), engine="chunked")
    for x, y in zip(_arrays(pandas_model.design.group_stats), _arrays(pq_model.design.group_stats)):
        np.testing.assert_array_equal(x, y)
    assert pandas_model.prior_table.to_dict() == pq_model.prior_table.to_dict()
    mem_stats = group_stats(blmm.Model(FORMULA, sleepstudy).design)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        m = blmm.Model(FORMULA, dd.read_parquet(str(parts)), scheduler=client)
        assert isinstance(m.design, StatsDesign) and "Dask" in m.design.source
        s = m.design.group_stats
        for name in ("XtX", "Xte", "ete", "n_obs", "b0"):       # vs in-memory: floating point
            ref_a = getattr(mem_stats, name)
            np.testing.assert_allclose(getattr(s, name), ref_a, rtol=0, atol=1e-10 * np.abs(ref_a).max())
        for name in ("ZtZ", "ZtX", "Zte"):
            np.testing.assert_allclose(getattr(s, name)[0], getattr(mem_stats, name)[0], rtol=0,
                                       atol=1e-10 * np.abs(getattr(mem_stats, name)[0]).max())
        dask_fit = _fit(m)
    for x, y in zip(_arrays(s), _arrays(pq_model.design.group_stats)):
        np.testing.assert_array_equal(x, y)
    for v in ref.posterior.data_vars:
        np.testing.assert_allclose(dask_fit.posterior[v].values, ref.posterior[v].values, rtol=0, atol=1e-8)


def test_posterior_agrees_with_in_memory_fit(get_fit, parquet_fit, sleepstudy):
    """Posterior means of the statistics fit within 5 combined MCSEs of the in-memory fit's."""
    mem = get_fit(FORMULA, sleepstudy, **{k: v for k, v in KW.items() if k != "verbose"})
    big = parquet_fit[1]
    a, b = mem.variance_components(), big.variance_components()
    rows = ["sd(Subject, Intercept)", "sd(Subject, Days)", "sigma"]
    se = np.sqrt(a.loc[rows, "mcse_mean"].astype(float) ** 2 + b.loc[rows, "mcse_mean"].astype(float) ** 2)
    assert (np.abs(a.loc[rows, "mean"].astype(float) - b.loc[rows, "mean"].astype(float)) < 5 * se).all()
    fa, fb = mem.summary(), big.summary()
    se = np.sqrt(fa["mcse_mean"].astype(float) ** 2 + fb["mcse_mean"].astype(float) ** 2)
    assert (np.abs(fa["mean"].astype(float) - fb["mean"].astype(float)) < 5 * se).all()


def test_fit_methods_from_statistics(parquet_fit, sleepstudy, tmp_path):
    """What works from the statistics, what raises naming the feature, and save/load."""
    _, fit = parquet_fit
    assert fit.icc().table.shape[0] == 2                     # at Days = 0 and at the streamed mean
    assert set(fit.ranef()) == {"Subject"}
    loo = fit.loo()                                          # leave-one-group-out
    assert loo.n_data_points == 18
    pred = fit.predict(sleepstudy.head(5))                   # new rows work
    assert len(pred) == 5
    for name, feature in [("fitted", "fitted values"), ("residuals", "residuals"),
                          ("posterior_predictive", "posterior_predictive"), ("shrinkage", "shrinkage"),
                          ("log_likelihood", "log-likelihood"), ("r2", "R^2")]:
        with pytest.raises(DataError, match="needs the rows") as e:
            getattr(fit, name)()
        assert feature in str(e.value) and "Parquet directory" in str(e.value)
    with pytest.raises(DataError, match="predict"):
        fit.posterior_predictive()
    back = load_fit(fit.save(tmp_path / "fit.nc"))
    assert isinstance(back.design, StatsDesign)
    assert back.prior_table.to_dict() == fit.prior_table.to_dict()
    np.testing.assert_array_equal(back.posterior["b"].values, fit.posterior["b"].values)
    np.testing.assert_allclose(back.predict(sleepstudy.head(5))["mean"], pred["mean"], rtol=1e-12)
    assert back.loo().elpd == pytest.approx(loo.elpd, rel=1e-12)


def test_features_that_need_rows_raise(parts, tmp_path):
    with pytest.raises(SpecError, match="family 'poisson'.*pandas"):
        blmm.Model("Reaction ~ Days + (1 | Subject)", str(parts), family="poisson")
    with pytest.raises(SpecError, match="noncentred.*rows"):
        blmm.Model(FORMULA, str(parts), method="noncentred")
    r = np.random.default_rng(1)
    df = pd.DataFrame({"y": r.normal(size=60), "a": r.integers(0, 4, 60).astype(str),
                                         "b": r.integers(0, 3, 60).astype(str)})
    df.to_parquet(tmp_path / "crossed.parquet")
    with pytest.raises(SpecError, match="crossed factors.*method='noncentred'"):
        blmm.Model("y ~ 1 + (1 | a) + (1 | b)", str(tmp_path / "crossed.parquet"))
    with pytest.raises(DataError, match="engine"):
        blmm.Model(FORMULA, str(parts), engine="spark")


def test_model_file_and_cli_fit(parts, tmp_path, capsys):
    from bayeslmm.cli import main
    from bayeslmm.specfile import load_model_file
    toml = tmp_path / "big.toml"
    toml.write_text(f'[model]\nformula = "{FORMULA}"\n[data]\npath = "{parts}/*.parquet"\nengine = "chunked"\n'
                    '[sampler]\nchains = 2\ndraws = 50\ntune = 50\nseed = 2\ncores = 1\n')
    mf = load_model_file(toml)
    assert mf.data.chunked and mf.data.engine == "chunked"
    assert isinstance(mf.build_model().design, StatsDesign)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["fit", str(toml), "--out", str(tmp_path / "out"), "--no-progress"])
    out = capsys.readouterr().out
    assert rc in (0, 3) and "180 rows used" in out and "per-group statistics" in out
    assert (tmp_path / "out" / "fit.nc").is_file() and (tmp_path / "out" / "summary.csv").is_file()
    assert load_model_file(tmp_path / "out" / "model.toml").data.engine == "chunked"
