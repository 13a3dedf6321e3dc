"""Uniformity tests of SBC ranks: chi-square on equal-width bins, and the simultaneous ECDF band of
Säilynoja, Bürkner & Vehtari (2022), Stat. Comput. 32:32, with Holm's correction per case.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["chisq_uniform", "ecdf_band", "ecdf_uniformity", "rank_statistics"]


def _default_bins(n_values: int, n: int) -> int:
    """Largest divisor of ``n_values`` (L + 1) up to 20 with >= 5 expected ranks per bin."""
    cands = [b for b in range(2, 21) if n_values % b == 0 and n / b >= 5]
    return max(cands) if cands else 2


def chisq_uniform(ranks: np.ndarray, n_ranks: int, bins: int | None = None) -> tuple[float, float, int]:
    """Chi-square test that integer ranks are uniform on ``0..n_ranks``.

    ``bins`` must divide ``n_ranks + 1`` so that every bin holds the same number of rank values
    (default: the largest such divisor <= 20 with >= 5 expected counts per bin).

    Returns
    -------
    (statistic, p_value, bins)
    """
    ranks = np.asarray(ranks, dtype=int)
    n_values = n_ranks + 1
    bins = bins or _default_bins(n_values, len(ranks))
    if n_values % bins:
        raise ValueError(f"bins={bins} must divide n_ranks + 1 = {n_values}")
    counts = np.bincount(ranks * bins // n_values, minlength=bins)
    res = stats.chisquare(counts)
    return float(res.statistic), float(res.pvalue), bins


def _pointwise_extremeness(counts_below: np.ndarray, n: int, z: np.ndarray) -> np.ndarray:
    """Two-sided binomial tail probability of each ECDF point; min over points along the last axis."""
    lo = stats.binom.cdf(counts_below, n, z)
    hi = stats.binom.sf(counts_below - 1, n, z)
    return np.minimum(1.0, 2.0 * np.minimum(lo, hi)).min(axis=-1)


def _ecdf_counts(ranks: np.ndarray, n_ranks: int) -> np.ndarray:
    """Number of ranks < k for k = 1..L (the ECDF of fractional ranks at z_k = k / (L+1))."""
    c = np.bincount(np.asarray(ranks, dtype=int), minlength=n_ranks + 1)
    return np.cumsum(c)[:-1]


def _uniform_minima(n: int, n_ranks: int, n_sim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = np.arange(1, n_ranks + 1) / (n_ranks + 1)
    sims = rng.integers(0, n_ranks + 1, size=(n_sim, n))
    counts = np.stack([_ecdf_counts(s, n_ranks) for s in sims])
    return _pointwise_extremeness(counts, n, z)


def ecdf_band(n: int, n_ranks: int, alpha: float = 0.01, n_sim: int = 2000, seed: int = 0):
    """Simultaneous ``1 - alpha`` band for the ECDF of ``n`` uniform ranks on ``0..n_ranks``.

    Säilynoja, Bürkner & Vehtari (2022), "Graphical test for discrete uniformity and its
    applications in goodness-of-fit evaluation and multiple sample comparison", Stat. Comput. 32:32:
    the pointwise level ``gamma`` is the ``alpha`` quantile, over uniform simulations, of the most
    extreme pointwise binomial tail probability; the band is the pointwise binomial interval at
    ``gamma``.

    Returns
    -------
    (z, lower, upper, gamma) : evaluation points z_k = k/(L+1) and the band for ECDF(z) - z.
    """
    z = np.arange(1, n_ranks + 1) / (n_ranks + 1)
    gamma = float(np.quantile(_uniform_minima(n, n_ranks, n_sim, seed), alpha))
    lower = stats.binom.ppf(gamma / 2, n, z) / n - z
    upper = stats.binom.ppf(1 - gamma / 2, n, z) / n - z
    return z, lower, upper, gamma


def ecdf_uniformity(ranks: np.ndarray, n_ranks: int, n_sim: int = 2000, seed: int = 0,
                    minima: np.ndarray | None = None) -> float:
    """p-value of the simultaneous ECDF test (share of uniform simulations at least as extreme)."""
    ranks = np.asarray(ranks, dtype=int)
    n = len(ranks)
    z = np.arange(1, n_ranks + 1) / (n_ranks + 1)
    obs = _pointwise_extremeness(_ecdf_counts(ranks, n_ranks)[None, :], n, z)[0]
    if minima is None:
        minima = _uniform_minima(n, n_ranks, n_sim, seed)
    return float((np.sum(minima <= obs) + 1) / (len(minima) + 1))


def rank_statistics(ranks: pd.DataFrame, n_ranks: int, *, bins: int | None = None, alpha: float = 0.01,
                    n_sim: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Uniformity tests for every column of ``ranks``.

    Columns: ``chisq``, ``chisq_p``, ``bins``, ``ecdf_p``, and ``holm_reject``: whether the parameter
    fails at family-wise level ``alpha`` after a Holm correction over all 2 x (number of parameters)
    p-values of the case (so a calibrated case is flagged with probability <= ``alpha``).
    """
    minima = _uniform_minima(len(ranks), n_ranks, n_sim, seed)
    rows = []
    for col in ranks.columns:
        stat, p, b = chisq_uniform(ranks[col].to_numpy(), n_ranks, bins)
        rows.append({"parameter": col, "chisq": stat, "bins": b, "chisq_p": p,
                     "ecdf_p": ecdf_uniformity(ranks[col].to_numpy(), n_ranks, minima=minima)})
    tab = pd.DataFrame(rows).set_index("parameter")
    pv = np.concatenate([tab["chisq_p"].to_numpy(), tab["ecdf_p"].to_numpy()])
    rej = _holm(pv, alpha)
    k = len(tab)
    tab["holm_reject"] = rej[:k] | rej[k:]
    tab["min_p"] = np.minimum(tab["chisq_p"], tab["ecdf_p"])
    return tab


def _holm(p: np.ndarray, alpha: float) -> np.ndarray:
    order = np.argsort(p)
    m = len(p)
    reject = np.zeros(m, dtype=bool)
    for rank, idx in enumerate(order):
        if p[idx] <= alpha / (m - rank):
            reject[idx] = True
        else:
            break
    return reject
