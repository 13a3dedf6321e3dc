"""Is each variance component identified by the data, or only by its prior?

A pure function of a fit (no sampling, no PyMC). Two symptoms, both computed from posterior
quantiles so they work for any prior, including heavy-tailed ones without a variance:

* **at the boundary**: the posterior of an SD piles up at zero. For a posterior whose density is
  positive at zero (half-normal, exponential, uniform near 0) the ratio of its 2.5% to its 50%
  quantile is below about 0.05 (half-normal 0.047, exponential 0.037, uniform 0.05); for a posterior
  bounded away from zero it is far larger (log-normal with CV 0.3: 0.56; gamma with shape 2: 0.14).
  The threshold ``boundary_ratio = 0.1`` separates the two. This is the Bayesian face of a
  REML/ML estimate of zero (lme4's "boundary (singular) fit").
* **prior-dominated**: the data barely narrowed the prior. The width of the central 95% posterior
  interval divided by that of the prior exceeds ``width_ratio = 0.5`` (the posterior is at least
  half as wide as the prior: the data carried little information about the component).

A component showing either symptom is *weakly identified*: report it with its prior, consider a
simpler model, or run :func:`bayeslmm.sensitivity.prior_sensitivity` to see how much the prior
decides.

Examples
--------
>>> import bayeslmm as blmm
>>> fit = blmm.Model("Yield ~ 1 + (1 | Batch)", blmm.load_dataset("Dyestuff")).fit(
...     chains=2, draws=300, seed=1, progressbar=False, verbose=False)        # doctest: +SKIP
>>> weakly_identified(fit)[["weakly_identified", "message"]]                   # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from .posterior import cor_label, cor_var, sd_label, sd_var, term2_dim, term_dim
from .priors import prior_quantile

__all__ = ["weakly_identified", "BOUNDARY_RATIO", "WIDTH_RATIO"]

BOUNDARY_RATIO = 0.1
WIDTH_RATIO = 0.5


def _lkj_marginal_quantile(eta: float, n: int, q) -> np.ndarray:
    """Quantiles of one correlation under LKJ(eta) on n x n: (r + 1)/2 ~ Beta(eta - 1 + n/2, same)."""
    a = eta - 1 + n / 2
    return 2 * stats.beta.ppf(q, a, a) - 1


def weakly_identified(fit, *, boundary_ratio: float = BOUNDARY_RATIO, width_ratio: float = WIDTH_RATIO,
                      prob: float = 0.95) -> pd.DataFrame:
    """Flag variance components that the data do not identify.

    Parameters
    ----------
    fit : bayeslmm.Fit
    boundary_ratio : float
        An SD is *at the boundary* when its posterior ``q(0.025) / q(0.5)`` is below this (see the
        module docstring for why 0.1).
    width_ratio : float
        A component is *prior-dominated* when its posterior central ``prob`` interval is wider than
        this share of the prior's.
    prob : float
        Interval probability for the width comparison.

    Returns
    -------
    DataFrame
        One row per group-level SD and correlation (labels as in ``fit.variance_components()``):
        ``median``, ``lower``, ``upper`` (posterior), ``lower_ratio`` (q(0.025)/median, SDs only),
        ``prior_width``, ``width_ratio``, ``at_boundary``, ``prior_dominated``,
        ``weakly_identified`` and a ``message`` in words.
    """
    post = fit.posterior
    lo_q, hi_q = (1 - prob) / 2, (1 + prob) / 2
    rows = []
    for f in fit.design.factors:
        sd = post[sd_var(f.name)]
        for t in f.terms:
            label = sd_label(f.name, t)
            x = np.asarray(sd.sel({term_dim(f.name): t})).ravel()
            p = fit.prior_table[label].prior
            plo, phi = prior_quantile(p, [lo_q, hi_q])
            rows.append(_row(label, x, phi - plo, lo_q, hi_q, boundary_ratio, width_ratio, is_sd=True,
                             prior=str(p)))
        if f.correlation_pairs:
            eta = fit.prior_table[f"cor({f.name})"].prior.kwargs["eta"]
            C = post[cor_var(f.name)]
            for i, j in f.correlation_pairs:
                label = cor_label(f.name, f.terms[i], f.terms[j])
                x = np.asarray(C.isel({term_dim(f.name): i, term2_dim(f.name): j})).ravel()
                n = next(len(b) for b in f.blocks if i in b)
                plo, phi = _lkj_marginal_quantile(eta, n, [lo_q, hi_q])
                rows.append(_row(label, x, phi - plo, lo_q, hi_q, boundary_ratio, width_ratio, is_sd=False,
                                 prior=f"lkj(eta={eta:g})"))
    return pd.DataFrame(rows).set_index("parameter") if rows else pd.DataFrame(
        columns=["median", "lower", "upper", "lower_ratio", "prior", "prior_width", "width_ratio",
                 "at_boundary", "prior_dominated", "weakly_identified", "message"])


def _row(label, x, prior_width, lo_q, hi_q, boundary_ratio, width_ratio, *, is_sd, prior):
    med = float(np.median(x))
    lo, hi = (float(v) for v in np.quantile(x, [lo_q, hi_q]))
    lower_ratio = lo / med if is_sd and med > 0 else np.nan
    wr = (hi - lo) / prior_width if prior_width > 0 else np.nan
    at_boundary = bool(is_sd and lower_ratio < boundary_ratio)
    dominated = bool(wr > width_ratio)
    msgs = []
    if at_boundary:
        msgs.append(f"posterior piles up at zero (2.5% quantile = {lower_ratio:.2f} x median): "
                    "the data are consistent with no variation here (a REML fit would be singular)")
    if dominated:
        msgs.append(f"posterior interval is {wr:.0%} as wide as the prior's ({prior}): the prior, "
                    "not the data, sets its scale; check prior sensitivity")
    return {"parameter": label, "median": med, "lower": lo, "upper": hi, "lower_ratio": lower_ratio,
            "prior": prior, "prior_width": float(prior_width), "width_ratio": wr,
            "at_boundary": at_boundary, "prior_dominated": dominated,
            "weakly_identified": at_boundary or dominated,
            "message": ("weakly identified: " + "; ".join(msgs)) if msgs else "identified by the data"}
