"""SBC figures: rank histograms and ECDF-difference plots (matplotlib, Agg backend)."""

from __future__ import annotations

import numpy as np
from scipy import stats

from .uniformity import _ecdf_counts, chisq_uniform, ecdf_band

__all__ = ["plot_rank_histograms", "plot_ecdf_differences"]


def _grid(n: int):
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    ncol = min(4, n)
    nrow = int(np.ceil(n / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.5 * nrow), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes.flat


def plot_rank_histograms(result, path=None, bins: int | None = None):
    """Rank histogram per parameter with the central 99% band of a uniform bin count."""
    n = result.n_replicates
    if bins is None:  # >= 10 expected ranks per bin, so the 99% band is informative
        cands = [b for b in range(2, 21) if (result.n_ranks + 1) % b == 0 and n / b >= 10]
        bins = max(cands) if cands else 2
    fig, axes = _grid(result.ranks.shape[1])
    for ax, col in zip(axes, result.ranks.columns):
        _, p, b = chisq_uniform(result.ranks[col], result.n_ranks, bins)
        lo, hi = stats.binom.ppf([0.005, 0.995], n, 1 / b)
        ax.axhspan(lo, hi, color="0.85")
        ax.axhline(n / b, color="0.5", lw=0.8)
        ax.hist(result.ranks[col], bins=np.linspace(0, result.n_ranks + 1, b + 1), color="C0",
                edgecolor="white")
        ax.set_title(f"{col}\nchi-square p={p:.2g} ({b} bins)", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"SBC rank histograms: {result.case.name} ({result.case.formula}), "
                 f"{n} replicates, L={result.n_ranks}; grey: 99% band per bin", fontsize=9)
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=110)
    return fig


def plot_ecdf_differences(result, path=None, alpha: float = 0.01):
    """ECDF(rank) - uniform CDF per parameter, inside the simultaneous ``1 - alpha`` band."""
    n = result.n_replicates
    z, lower, upper, _ = ecdf_band(n, result.n_ranks, alpha)
    fig, axes = _grid(result.ranks.shape[1])
    for ax, col in zip(axes, result.ranks.columns):
        diff = _ecdf_counts(result.ranks[col], result.n_ranks) / n - z
        ax.fill_between(z, lower, upper, step="mid", color="0.85")
        ax.step(z, diff, where="mid", color="C0")
        ax.axhline(0, color="0.5", lw=0.8)
        ax.set_title(col, fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"SBC ECDF differences: {result.case.name}, {n} replicates; grey: simultaneous "
                 f"{100 * (1 - alpha):.0f}% band", fontsize=9)
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=110)
    return fig
