"""The report's LOO section: which LOO, its numbers, advice in words, and why it is missing if it is.

Never silent: when LOO is not computed the section says why and what to run instead.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

OBS_LOO_MAX = 5e7     # chains x draws x rows above which the report does not compute observation LOO


@dataclass(frozen=True)
class LooSection:
    title: str
    text: str = ""
    advice: str = ""
    kind: str | None = None
    table: pd.DataFrame | None = field(default=None, compare=False)


def loo_section(fit, enabled: bool = True) -> LooSection:
    """The LOO section of the report for ``fit`` (see :mod:`bayeslmm.elpd` for the two kinds)."""
    from ..elpd import _group_unavailable, describe, loo_kind
    if not enabled:
        return LooSection("PSIS-LOO", "Not computed: the report was written with loo=False. "
                          "fit.loo() computes it.")
    try:
        kind = loo_kind(fit, "auto")
    except Exception as exc:  # noqa: BLE001 (the report says why, and goes on)
        return LooSection("PSIS-LOO", advice=f"PSIS-LOO is not available for this fit: {exc}")
    size = fit.n_draws * fit.design.n
    if kind == "observation" and size > OBS_LOO_MAX:
        why = _group_unavailable(fit)
        other = (f"leave-one-group-out LOO does not exist for this model ({why})" if why else
                 "fit.loo(kind='group') gives leave-one-group-out LOO quickly")
        return LooSection("PSIS-LOO", kind=kind, advice=(
            f"Not computed: leave-one-observation-out LOO needs {fit.n_draws} draws x {fit.design.n} rows "
            f"= {size:.2g} log-likelihood values (the report's limit is {OBS_LOO_MAX:.0e}), and "
            f"{other}. Run fit.loo() yourself (it may take minutes), or thin the draws."))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lo = fit.loo(kind=kind)
    except Exception as exc:  # noqa: BLE001 (LOO is optional in the report; it says why)
        return LooSection("PSIS-LOO", kind=kind,
                          advice=f"PSIS-LOO could not be computed ({type(exc).__name__}: {exc}).")
    what = describe(kind, fit)
    unit = "groups" if kind == "group" else "observations"
    k = np.asarray(lo.pareto_k).ravel()
    n_bad = int((k > 0.7).sum())
    text = (f"{what[0].upper() + what[1:]}. elpd_loo = {float(lo.elpd):.1f} (SE {float(lo.se):.1f}), effective number of parameters "
            f"p_loo = {float(lo.p):.1f}; Pareto k > 0.7 for {n_bad} of {len(k)} {unit}.")
    if kind == "group" and fit.design.n > 20_000:
        text += (" Leave-one-group-out is the default for more than 20,000 rows (it needs one number per "
                 "group and draw instead of one per row); fit.loo(kind='observation') gives the other.")
    advice = ""
    if n_bad and kind == "observation":
        advice = (f"For {n_bad} observation(s) the importance sampling behind PSIS-LOO is unreliable "
                  "(Pareto k > 0.7). This is common in mixed models: leaving out one row of a small group "
                  "changes that group's effect a lot. The elpd is then optimistic for those rows. To compare "
                  "models reliably, refit leaving out those rows (exact LOO) or whole groups (K-fold by group).")
    elif n_bad:
        advice = (f"For {n_bad} group(s) the importance sampling behind PSIS-LOO is unreliable (Pareto k > "
                  "0.7): leaving out a whole group changes the estimates a lot (few groups, or an unusual "
                  "one). To compare models reliably, refit leaving out those groups (K-fold by group).")
    table = pd.DataFrame({"kind": [kind], "elpd_loo": [float(lo.elpd)], "se": [float(lo.se)],
                          "p_loo": [float(lo.p)], "n_points": [len(k)], "n_pareto_k_gt_0.7": [n_bad]})
    title = "PSIS-LOO, leave one group out" if kind == "group" else "PSIS-LOO, leave one observation out"
    return LooSection(title, text, advice, kind, table)
