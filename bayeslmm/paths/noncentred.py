"""The full (non-centred) graph: every random effect sampled, any family.

``r_{g} = z_{g} * sd_{g}`` (or ``z_{g} @ L.T * sd_{g}`` within a correlated block), ``z ~ N(0, 1)``;
the linear predictor gathers ``r[:, k][codes]`` by integer codes (never a dense indicator) and the
family adds the observed variable. Posterior variables: :mod:`bayeslmm.posterior`.
"""

from __future__ import annotations

import numpy as np
import pymc as pm

from ..covariance import kinship_of
from ..design import Design
from ..families import get_family
from ..posterior import coords_of, sd_var, term_dim
from ..priors import PriorTable
from .blocks import fixed_effects, group_effects, prior_rv

__all__ = ["build_model", "random_part", "data_values", "OBSERVED", "OBSERVED_DATA"]

#: name of the observed variable and of the data container holding the response
OBSERVED = "y"
OBSERVED_DATA = "y_obs"


def random_part(design: Design, priors: PriorTable):
    """Sum over factors of Z_i . r[g_i] (gathered by integer codes, never a dense indicator)."""
    eta = 0.0
    kin = kinship_of(design)
    for f in design.factors:
        sd = prior_rv(sd_var(f.name), priors.of_class("sd", f.name), dims=term_dim(f.name))
        if f.name in kin:           # a known covariance: r = sd L z, L L' = K
            from .rotated import kinship_effects
            r = kinship_effects(f, sd, kin[f.name])
        else:
            r = group_effects(f, sd, priors)
        codes = pm.Data(f"codes_{f.name}", f.codes, dims="obs")
        for k, term in enumerate(f.terms):
            # r[:, k][codes] is a 1-D gather (AdvancedSubtensor1), whose gradient is a fast scatter-add;
            # r[codes, k] is a general AdvancedSubtensor and made each gradient ~50x slower at 100k rows.
            col = r[:, k][codes]
            if np.all(f.Z[:, k] == 1.0):
                eta = eta + col
            else:
                Zk = pm.Data(f"Z_{f.name}_{k}", f.Z[:, k], dims="obs")
                eta = eta + col * Zk
    return eta


def data_values(y: np.ndarray) -> dict[str, np.ndarray]:
    """The model's data containers for a new response ``y`` (same design): for refitting."""
    return {OBSERVED_DATA: np.asarray(y, dtype=float)}


def build_model(design: Design, priors: PriorTable, family: str = "gaussian",
                link: str | None = None) -> pm.Model:
    """The non-centred mixed model as a ``pm.Model``.

    Examples
    --------
    >>> import bayeslmm as blmm
    >>> m = blmm.Model("Reaction ~ Days + (Days | Subject)", blmm.load_dataset("sleepstudy"))
    >>> sorted(v.name for v in build_model(m.design, m.prior_table).free_RVs)
    ['Intercept_c', 'beta', 'cpc_Subject', 'sd_Subject', 'sigma', 'z_Subject']
    """
    coords = coords_of(design)
    coords["obs"] = np.arange(design.n)
    slope_terms = [t for t in design.fixed_terms if t != "Intercept"]
    if slope_terms:
        coords["slope"] = slope_terms
    with pm.Model(coords=coords) as model:
        eta_fixed, _ = fixed_effects(design, priors)
        eta = eta_fixed + random_part(design, priors)
        if design.offset is not None:      # a known term: no coefficient, no prior
            eta = eta + pm.Data("offset", design.offset, dims="obs")
        fam = get_family(family, link)
        if design.se is not None:        # y | se(s) ~ ...: the family's known-SE variant
            fam = fam.with_known_se(sigma=design.se_sigma)
        aux = {a: prior_rv(a, [priors[a]]) for a in fam.aux_names}
        y = pm.Data(OBSERVED_DATA, design.y, dims="obs")
        trials = None if design.trials is None else pm.Data("trials", design.trials, dims="obs")
        if getattr(design, "weights", None) is not None:   # likelihood weights: w_i * log N(y_i | eta_i, sigma)
            w = pm.Data("weights", design.weights, dims="obs")
            pm.Potential("weighted_loglik", (w * pm.logp(pm.Normal.dist(mu=eta, sigma=aux["sigma"]), y)).sum())
        elif design.se is None:
            fam.observe(OBSERVED, eta, aux, observed=y, dims="obs", trials=trials)
        else:
            fam.observe(OBSERVED, eta, aux, observed=y, dims="obs", se=design.se)
    return model
