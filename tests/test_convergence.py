"""bayeslmm.convergence gives ArviZ's R-hat and bulk / tail ESS, every parameter at once.

The reference is ``arviz_stats`` (the per-element implementation of Vehtari et al. 2021) on the same
draws; the two agree to rounding (relative 1e-8: both are the same arithmetic, only the order of
floating-point sums differs). The draws cover what the Geyer sequences and the ranking branch on:
independent draws, AR(1) chains from weak to strong autocorrelation, chains that disagree (R-hat
well above 1), heavy ties, a binary parameter, a constant one, a non-finite draw, a random walk
(a long positive sequence), and odd numbers of draws (the split drops the middle draw).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr

from bayeslmm import convergence as cv


def _draws(chains: int, draws: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(chains, draws, 40))
    for k in range(10, 30):
        phi = 0.05 * (k - 10)                       # AR(1), phi 0 .. 0.95
        e = rng.normal(size=(chains, draws))
        for d in range(1, draws):
            e[:, d] += phi * e[:, d - 1]
        x[:, :, k] = e + (k % 3 == 0) * np.arange(chains)[:, None]      # every third: chains disagree
    x[:, :, 30] = np.round(x[:, :, 30])             # heavy ties
    x[:, :, 31] = 2.0                               # constant
    x[:, :, 32] = x[:, :, 32] > 1.0                 # binary
    x[0, 5, 33] = np.nan                            # a non-finite draw: NaN, as ArviZ
    x[:, :, 34] = np.cumsum(rng.normal(size=(chains, draws)), axis=1)   # random walk
    return x


def _arviz(x: np.ndarray):
    azs = pytest.importorskip("arviz_stats")
    ds = xr.Dataset({"v": xr.DataArray(x, dims=("chain", "draw", "k"))})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return (azs.rhat(ds)["v"].values, azs.ess(ds, method="bulk")["v"].values,
                azs.ess(ds, method="tail")["v"].values)


@pytest.mark.parametrize("chains,draws", [(4, 500), (2, 301), (3, 40), (1, 200)])
def test_equals_arviz(chains, draws):
    x = _draws(chains, draws)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ours = cv.summary(x)
    for name, a, b in zip(("rhat", "ess_bulk", "ess_tail"), ours, _arviz(x)):
        assert np.array_equal(np.isnan(a), np.isnan(b)), (name, np.isnan(a), np.isnan(b))
        np.testing.assert_allclose(a, b, rtol=1e-8, err_msg=name)
    if chains == 1:
        assert np.isnan(ours[0]).all()          # R-hat needs two chains
    else:
        assert ours[0][[12, 15, 18]].min() > 1.1      # chains that disagree are flagged


def test_trailing_shape_and_too_few_draws():
    x = np.random.default_rng(0).normal(size=(2, 100, 3, 2))
    r, eb, et = cv.summary(x)
    assert r.shape == eb.shape == et.shape == (3, 2)
    assert np.isnan(cv.summary(x[:, :3])[1]).all()        # fewer than 4 draws
    with pytest.raises(ValueError, match="chain, draw"):
        cv.summary(np.zeros(10))


def test_summary_in_threads_equals_one_pass():
    """Blocks of parameters run in threads (convergence._PER_THREAD) give exactly the one-pass numbers,
    NaN parameters included, whatever the number of CPUs."""
    from unittest import mock
    from bayeslmm import convergence as cv
    a = np.random.default_rng(5).standard_t(4, size=(3, 300, 450)).cumsum(axis=1)
    a[1, 7, 10] = np.nan
    with mock.patch.object(cv, "cpu_count", return_value=1):
        one = cv.summary(a)
    with mock.patch.object(cv, "cpu_count", return_value=3):
        three = cv.summary(a)
    for x, y in zip(one, three):
        np.testing.assert_array_equal(x, y)
    assert np.isnan(one[0][10]) and np.isfinite(one[0][11])
