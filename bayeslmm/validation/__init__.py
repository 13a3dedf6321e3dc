"""Proof of correctness: simulation-based calibration (SBC) and agreement with peers.

``python -m bayeslmm.validation --out DIR`` (``make validate``) runs the full study; ``--quick``
runs a small version in a few minutes. Results: ``DIR/summary.json``, ``DIR/summary.md``, rank
histograms and ECDF-difference plots (``DIR/sbc_<case>_hist.png``, ``DIR/sbc_<case>_ecdf.png``)
and, unless ``--no-peers``, the peer comparisons (``DIR/peers.csv``, ``DIR/bambi.csv``) and the
Dyestuff prior-sensitivity example (``DIR/sensitivity_dyestuff.csv``), also as sections of
``summary.md``.

SBC (Talts, Betancourt, Simpson, Vehtari & Gelman 2018, arXiv:1804.06788): for each replicate,
draw parameters from the prior, simulate data with :mod:`bayeslmm.simulate`, sample the posterior,
thin it to ``L`` nearly independent draws and record the rank of the true value among them (0..L).
If the model, the sampler and the simulator agree, every parameter's ranks are uniform on 0..L.
Two tests per parameter:

* chi-square on ``bins`` equal-width bins of the ranks;
* the simultaneous ECDF band of Säilynoja, Bürkner & Vehtari (2022), Stat. Comput. 32:32: the
  ECDF of the ranks must stay inside a band whose *joint* coverage is ``1 - alpha`` (the band is
  calibrated by simulating uniform ranks). Its p-value is the share of uniform simulations whose
  most extreme pointwise binomial tail probability is at least as extreme as the observed one.

The predictors and groups of a case stay fixed across replicates and only ``y`` changes, and the
priors are set explicitly (they must not be rescaled to each simulated ``y``). So the model is
compiled once and reused: with nutpie, a new data set is swapped in and sampled in about 0.1 s
(:mod:`bayeslmm.validation.refit`).

Modules: :mod:`~bayeslmm.validation.sbc` (the SBC loop), :mod:`~bayeslmm.validation.refit`
(refitting through :mod:`bayeslmm.sampling`), :mod:`~bayeslmm.validation.uniformity` (rank
tests), :mod:`~bayeslmm.validation.figures`, :mod:`~bayeslmm.validation.peers` and
:mod:`~bayeslmm.validation.study` (the study, its markdown summary and the command line).
"""

from __future__ import annotations

from .peers import PEER_MODELS, bambi_comparison, peer_comparison, statsmodels_fit
from .refit import make_refitter
from .sbc import (GLMM_PRIORS, SBC_PRIORS, SBCCase, SBCResult, _thin, crossed_cases, family_cases, posterior_scalars,
                  run_sbc, sbc_cases)
from .study import main, run_study
from .uniformity import chisq_uniform, ecdf_band, ecdf_uniformity, rank_statistics
from .figures import plot_ecdf_differences, plot_rank_histograms

__all__ = ["SBCCase", "SBCResult", "sbc_cases", "crossed_cases", "family_cases", "GLMM_PRIORS", "run_sbc", "rank_statistics", "chisq_uniform",
           "ecdf_uniformity", "ecdf_band", "posterior_scalars", "plot_rank_histograms",
           "plot_ecdf_differences", "peer_comparison", "statsmodels_fit", "bambi_comparison",
           "make_refitter", "run_study", "main", "SBC_PRIORS", "PEER_MODELS"]
