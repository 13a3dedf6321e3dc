"""Shared fixtures. Expensive fits are made once per session and reused (compile once per structure).

`fitted(key, formula, data, **fit_kwargs)` caches fits by key for the whole session.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

import bayeslmm as blmm

os.environ.setdefault("PYTENSOR_FLAGS", "")
warnings.filterwarnings("ignore", message=".*BLAS.*")


@pytest.fixture(scope="session")
def fit_cache():
    """Session-wide dict of fits keyed by a string; use `get_fit` to fill it."""
    return {}


@pytest.fixture(scope="session")
def get_fit(fit_cache):
    """Return a cached fit: get_fit(key, formula, data, model_kwargs=None, **fit_kwargs)."""

    def _get(key, formula, data, model_kwargs=None, **fit_kwargs):
        if key not in fit_cache:
            kw = dict(chains=2, draws=500, tune=500, seed=1, progressbar=False, verbose=False)
            kw.update(fit_kwargs)
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
