"""Prior sensitivity of the variance components: refit with narrower and wider SD priors.

With few groups the data say little about a group-level SD, so its posterior partly echoes the
prior. :func:`prior_sensitivity` makes that visible: it multiplies the *scale* of every group-level
SD prior (and optionally sigma's) by each factor in ``scales``, refits the same model on the same
data with the same sampler settings, and tabulates how the posterior of each SD, correlation and
sigma moves relative to the original fit.

How to read it: ``shift_sd`` is the change of the posterior mean in units of the original
posterior SD. A component whose posterior mean moves by more than ``threshold`` (default 0.5)
posterior SDs when its prior scale is halved or doubled is flagged ``sensitive``: report it with
its prior, and prefer a prior you can defend on substantive grounds.

Scaling rule per distribution (:func:`bayeslmm.priors.scale_prior`): ``halfnormal(sigma)`` and ``halfstudentt(nu, sigma)`` scale
``sigma``; ``halfcauchy(beta)`` scales ``beta``; ``exponential(lam)`` divides ``lam`` (its mean
``1/lam`` is the scale). The shape (``nu``) is kept.

Examples
--------
>>> import bayeslmm as blmm
>>> fit = blmm.Model("Yield ~ 1 + (1 | Batch)", blmm.load_dataset("Dyestuff")).fit(
...     chains=2, draws=500, seed=1, progressbar=False, verbose=False)       # doctest: +SKIP
>>> tab = fit.prior_sensitivity(scales=(0.5, 2.0))                         # doctest: +SKIP
>>> tab.loc["sd(Batch, Intercept)", ["scale", "mean", "shift_sd", "sensitive"]]  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import SpecError
from .priors import Prior, scale_prior

__all__ = ["sensitivity_priors", "prior_sensitivity"]


def sensitivity_priors(prior_table, factor: float, classes=("sd",)) -> dict[str, Prior]:
    """Every prior of ``prior_table`` (full precision), with those of ``classes`` scaled by ``factor``.

    The result can be passed as ``priors=`` to :class:`bayeslmm.Model` / :func:`bayeslmm.build_spec`.
    """
    return {e.label: scale_prior(e.prior, factor) if e.cls in classes else e.prior
            for e in prior_table.entries}


def prior_sensitivity(fit, scales=(0.5, 2.0), *, classes=("sd",), threshold: float = 0.5,
                      chains: int | None = None, draws: int | None = None, tune: int | None = None,
                      seed: int | None = None, prob: float = 0.95) -> pd.DataFrame:
    """Refit with the SD priors' scales multiplied by each of ``scales``; tabulate the movement.

    Parameters
    ----------
    fit : bayeslmm.Fit
        The reference fit (scale 1). Its data, formula, other priors, method and sampler settings
        are reused.
    scales : sequence of float
        Factors applied to the scale of every prior in ``classes``.
    classes : tuple of str
        Prior classes to rescale: ``"sd"`` (group-level SDs, the default) and/or ``"sigma"``.
    threshold : float
        ``sensitive`` is set when ``|shift_sd| > threshold`` for some scale.
    chains, draws, tune, seed : int, optional
        Override the reference fit's settings for the refits (default: the same).
    prob : float
        HDI probability.

    Returns
    -------
    DataFrame
        Indexed by component label (``sd(g, term)``, ``cor(g, t1, t2)``, ``sigma``), one row per
        (component, scale) including ``scale = 1`` (the reference fit). Columns: ``scale``,
        ``prior``, ``mean``, ``sd``, ``hdi_lower``, ``hdi_upper``, ``shift`` (mean minus the
        reference mean), ``shift_sd`` (that in reference posterior SDs), ``rel_change`` (mean /
        reference mean - 1) and ``sensitive`` (same for all rows of a component).
        ``attrs["fits"]`` holds the refits keyed by scale.
    """
    from .model import Model
    from .spec import build_spec

    scales = tuple(float(s) for s in scales)
    if not scales or any(not s > 0 for s in scales):
        raise SpecError(f"the 'scales' parameter must be positive numbers. Got {scales!r} instead.")
    bad = [c for c in classes if c not in ("sd", "sigma")]
    if bad:
        raise SpecError(f"the 'classes' parameter may contain 'sd' and 'sigma'. Got {bad!r}.")
    s = fit.sampler
    kw = dict(chains=chains or s.chains, draws=draws or s.draws, tune=s.tune if tune is None else tune,
              seed=fit.info.get("seed") if seed is None else seed, target_accept=s.target_accept,
              sampler=s.sampler, progressbar=False, verbose=False, method=fit.info.get("method"))
    fits = {1.0: fit}
    for sc in scales:
        if sc == 1.0:
            continue
        spec = build_spec(fit.spec.formula.text, family=fit.spec.family,
                          priors=sensitivity_priors(fit.prior_table, sc, classes), method=fit.spec.method)
        fits[sc] = Model(spec, fit.design.data_frame(),
                         cov={k.factor: k for k in getattr(fit.design, "kinship", ())} or None).fit(**kw)
    rows = []
    keep = None
    for sc, f in sorted(fits.items()):
        vc = f.variance_components(prob=prob)
        if keep is None:
            keep = [i for i, k in zip(vc.index, vc["kind"]) if k in ("sd", "cor")]
        for label in keep:
            r = vc.loc[label]
            prior = _prior_of(f, label)
            rows.append({"parameter": label, "scale": sc, "prior": prior, "mean": float(r["mean"]),
                         "sd": float(r["sd"]), "hdi_lower": float(r["hdi_lower"]),
                         "hdi_upper": float(r["hdi_upper"])})
    tab = pd.DataFrame(rows)
    ref = tab[tab["scale"] == 1.0].set_index("parameter")
    tab["shift"] = tab["mean"] - tab["parameter"].map(ref["mean"])
    tab["shift_sd"] = tab["shift"] / tab["parameter"].map(ref["sd"])
    tab["rel_change"] = tab["mean"] / tab["parameter"].map(ref["mean"]) - 1.0
    worst = tab.groupby("parameter")["shift_sd"].apply(lambda v: float(np.nanmax(np.abs(v))))
    tab["sensitive"] = tab["parameter"].map(worst > threshold)
    tab = tab.set_index("parameter")
    tab.attrs["fits"] = fits
    tab.attrs["threshold"] = threshold
    tab.attrs["classes"] = tuple(classes)
    return tab


def _prior_of(fit, label: str) -> str:
    if label.startswith("cor("):
        g = label[4:].split(",")[0]
        return str(fit.prior_table[f"cor({g})"].prior)
    if label == "sigma":
        return str(fit.prior_table["sigma"].prior)
    return str(fit.prior_table[label].prior)
