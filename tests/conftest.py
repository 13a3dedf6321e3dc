"""Shared fixtures. Expensive fits are made once per session and reused (compile once per structure).

``get_fit(formula, data, model_kwargs=None, **fit_kwargs)`` caches fits for the whole session,
keyed by the actual arguments: the formula, a hash of the data (values, columns, dtypes), the
model options and the fit options (defaults filled in), so two tests share a fit only when they
ask for the same one.
"""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pytest

import bayeslmm as blmm

warnings.filterwarnings("ignore", message=".*BLAS.*")


def data_key(data) -> str:
    """Hash of a DataFrame's values, index, column names and dtypes."""
    import pandas as pd
    h = hashlib.sha256(pd.util.hash_pandas_object(data, index=True).to_numpy().tobytes())
    h.update(repr([(str(c), str(t)) for c, t in data.dtypes.items()]).encode())
    return h.hexdigest()


def fit_key(formula, data, model_kwargs, fit_kwargs) -> tuple:
    """The cache key of a fit: every argument that can change it."""
    def frozen(d):
        return tuple(sorted((k, repr(sorted(v.items())) if isinstance(v, dict) else repr(v)) for k, v in d.items()))
    return (formula, data_key(data), frozen(model_kwargs), frozen(fit_kwargs))


@pytest.fixture(scope="session")
def fit_cache():
    """Session-wide dict of fits keyed by :func:`fit_key`; use `get_fit` to fill it."""
    return {}


@pytest.fixture(scope="session")
def get_fit(fit_cache):
    """Return a cached fit: ``get_fit(formula, data, model_kwargs=None, **fit_kwargs)``."""

    def _get(formula, data, model_kwargs=None, **fit_kwargs):
        kw = dict(chains=2, draws=500, tune=500, seed=1, progressbar=False, verbose=False)
        kw.update(fit_kwargs)
        key = fit_key(formula, data, model_kwargs or {}, kw)
        if key not in fit_cache:
            fit_cache[key] = blmm.Model(formula, data, **(model_kwargs or {})).fit(**kw)
        return fit_cache[key]

    return _get


@pytest.fixture(scope="session")
def sleepstudy():
    return blmm.load_dataset("sleepstudy")


@pytest.fixture(scope="session")
def dyestuff():
    return blmm.load_dataset("Dyestuff")


@pytest.fixture(scope="session")
def radon():
    return blmm.load_dataset("radon_mn")


@pytest.fixture
def rng():
    return np.random.default_rng(20261126)


# -- ICC / shrinkage / diagnostics / report fixtures ------------------------------------------

# Balanced random-intercept design with known variances: sd(g)^2 = 0.35, sigma^2 = 2.10, so the
# true ICC is 0.35 / (0.35 + 2.10) = 0.1429. A covariate x (slope 1) lets LOO rank two models.
SIM_RI_TRUTH = {"J": 60, "n": 20, "intercept": 5.0, "slope": 1.0, "sd_g": 0.35 ** 0.5,
                "sigma": 2.10 ** 0.5, "icc": 0.35 / (0.35 + 2.10), "seed": 20261126}


@pytest.fixture(scope="session")
def sim_ri():
    """(DataFrame, truth) of the balanced random-intercept simulation (J=60 groups x n=20)."""
    import pandas as pd
    t = SIM_RI_TRUTH
    r = np.random.default_rng(t["seed"])
    g = np.repeat(np.arange(t["J"]), t["n"])
    x = r.standard_normal(t["J"] * t["n"])
    u = r.normal(0.0, t["sd_g"], t["J"])
    y = t["intercept"] + t["slope"] * x + u[g] + r.normal(0.0, t["sigma"], len(g))
    return pd.DataFrame({"y": y, "x": x, "g": [f"g{k:02d}" for k in g]}), dict(t)


@pytest.fixture(scope="session")
def fake_fit():
    """Factory: a Fit whose posterior is synthetic random draws with the right names and dims.

    For exact identities (ICC, shrinkage algebra, log-likelihood) without sampling:
    ``fake_fit(formula, data, seed=0, chains=2, draws=100)``.
    """
    import xarray as xr
    from bayeslmm.results import Fit

    def _make(formula, data, seed=0, chains=2, draws=100):
        m = blmm.Model(formula, data)
        d = m.design
        r = np.random.default_rng(seed)
        sh = (chains, draws)
        coords = {"chain": np.arange(chains), "draw": np.arange(draws), "term": list(d.fixed_terms)}
        ds = {"b": (("chain", "draw", "term"), r.normal(0, 1, sh + (len(d.fixed_terms),))
                    + np.linalg.lstsq(d.X, d.y, rcond=None)[0]),
              "sigma": (("chain", "draw"), np.exp(r.normal(np.log(np.std(d.y) / 2), 0.2, sh)))}
        for f in d.factors:
            g = f.name
            coords[f"{g}__term"] = list(f.terms)
            coords[f"{g}__level"] = list(f.levels)
            sd = np.exp(r.normal(0, 0.3, sh + (f.q,))) * np.std(d.y) / 3
            ds[f"sd_{g}"] = (("chain", "draw", f"{g}__term"), sd)
            ds[f"r_{g}"] = (("chain", "draw", f"{g}__level", f"{g}__term"),
                            r.normal(0, 1, sh + (f.n_levels, f.q)) * sd[:, :, None, :])
            if f.has_correlation:
                C = np.broadcast_to(np.eye(f.q), sh + (f.q, f.q)).copy()
                for i, j in f.correlation_pairs:
                    rho = r.uniform(-0.8, 0.8, sh)
                    C[..., i, j] = C[..., j, i] = rho
                coords[f"{g}__term2"] = list(f.terms)
                ds[f"cor_{g}"] = (("chain", "draw", f"{g}__term", f"{g}__term2"), C)
        post = xr.Dataset(ds, coords=coords)
        stats = xr.Dataset({"diverging": (("chain", "draw"), np.zeros(sh, bool)),
                            "energy": (("chain", "draw"), r.normal(0, 1, sh))},
                           coords={"chain": coords["chain"], "draw": coords["draw"]})
        tree = xr.DataTree.from_dict({"posterior": post, "sample_stats": stats})
        sampler = blmm.SamplerSpec(chains=chains, draws=draws, tune=0, seed=seed)
        return Fit(tree, m.spec, d, m.prior_table, sampler, {"seed": seed, "method": "fake"})

    return _make
