"""A PyMC model with each group's effects integrated out by AGHQ, from arrays and prior distributions.

The array-level builder the formula front end will call (:func:`build_glmm_collapsed_model`), and
:func:`group_effect_draws`, which adds the group effects to a posterior afterwards. Free variables:
``b`` (p,), ``sd`` (q,), ``cpc`` (the LKJ partial correlations, q > 1; the same construction as
:func:`bayeslmm.graph.lkj_cholesky`) and ``phi`` (negative binomial). The likelihood is a
``pm.CustomDist`` ``y_collapsed`` with one element per group, log L_j by AGHQ (so
``pm.compute_log_likelihood`` gives leave-one-group-out terms), evaluated by one kernel call per
NUTS step (:mod:`bayeslmm.paths.quadrature_op`).
"""

from __future__ import annotations

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
import xarray as xr

from ..errors import PriorError
from .quadrature import NEGBINOMIAL_LOG, QuadratureData, draw_group_effects
from .quadrature_op import aghq_logp, op_data

__all__ = ["build_glmm_collapsed_model", "group_effect_draws"]


def _register(model: pm.Model, dist, name: str, shape: tuple, what: str):
    if dist is None or not hasattr(dist, "owner") or dist.owner is None:
        raise PriorError(f"the prior of {what} must be an unnamed PyMC distribution such as "
                         f"pm.Normal.dist(0, 2.5, shape={shape}); got {dist!r}")
    if dist.ndim != len(shape):
        raise PriorError(f"the prior of {what} has {dist.ndim} dimensions, expected shape {shape}")
    return model.register_rv(dist, name)


def build_glmm_collapsed_model(data: QuadratureData, *, b_prior, sd_prior, lkj_eta: float = 2.0,
                               phi_prior=None, n_nodes: int | None = None, linked: bool = True) -> pm.Model:
    """The GLMM with its group effects integrated out, as a ``pm.Model``.

    Parameters
    ----------
    data : from :func:`bayeslmm.paths.quadrature.prepare`.
    b_prior : unnamed distribution of the p fixed effects, e.g. ``pm.Normal.dist(0, 2.5, shape=p)``.
    sd_prior : unnamed positive distribution of the q group-level SDs, e.g. ``pm.HalfNormal.dist(1, shape=q)``.
    lkj_eta : LKJ(eta) prior of the terms' correlation (q > 1).
    phi_prior : unnamed positive distribution of the negative-binomial dispersion (required there).
    n_nodes : AGHQ nodes per axis (default :func:`~bayeslmm.paths.quadrature.default_nodes`).
    linked : link the kernel into the compiled model function (default; required by nutpie). False
        calls it through numba's object mode: a cold PyTensor cache then compiles ~2x faster
        (measured 15 s against 33 s on a loaded 2-core machine; both ~1.5 s once cached), but each
        evaluation was ~1.7x slower at 100,000 rows (13.7 against 8 ms, same arguments,
        interleaved), so for this path linking pays after a few thousand evaluations.

    Examples
    --------
    >>> import numpy as np, pymc as pm
    >>> from bayeslmm.paths.quadrature import prepare
    >>> d = prepare([0, 1, 1, 0], np.ones((4, 1)), np.array([0, 0, 1, 1]), family="bernoulli")
    >>> m = build_glmm_collapsed_model(d, b_prior=pm.Normal.dist(0, 2.5, shape=1),
    ...                                sd_prior=pm.HalfNormal.dist(1, shape=1))
    >>> sorted(v.name for v in m.free_RVs)
    ['b', 'sd']
    """
    try:                                   # main after the restructuring
        from .blocks import lkj_cholesky
    except ImportError:                    # this branch's base
        from ..graph import lkj_cholesky
    p, q, J = data.p, data.q, data.n_groups
    nb = data.code == NEGBINOMIAL_LOG
    if nb and phi_prior is None:
        raise PriorError("the negative binomial needs phi_prior, e.g. pm.Gamma.dist(2, 0.1)")
    shared = [pytensor.shared(v, name=f"aghq_{k}", shape=(None,) * np.ndim(v))
              for k, v in op_data(data, n_nodes).items()]
    with pm.Model() as model:
        b = _register(model, b_prior, "b", (p,), "b")
        sd = _register(model, sd_prior, "sd", (q,), "sd")
        if q > 1:
            Cc = pm.Deterministic("cor_chol", lkj_cholesky("cpc", q, lkj_eta))
        else:
            Cc = pt.constant(np.eye(1))
        phi = _register(model, phi_prior, "phi", (), "phi") if nb else pt.constant(np.array(1.0))
        shapes = [(p,), (q,), (q, q), ()]

        def logp(value, *par):
            par = [x.reshape(s) for x, s in zip(par, shapes)]
            return aghq_logp(*par, *shared, linked=linked)
        pm.CustomDist("y_collapsed", b, sd, pt.as_tensor_variable(Cc), pt.as_tensor_variable(phi), logp=logp,
                      observed=np.zeros(J), signature="(p),(q),(q,q),()->()")
    return model


def group_effect_draws(posterior: xr.Dataset, data: QuadratureData, seed: int, **kwargs) -> xr.DataArray:
    """The group effects u (chain, draw, group, term) for every posterior draw, exactly from their
    conditional (see :func:`~bayeslmm.paths.quadrature.draw_group_effects`; kwargs go there)."""
    nc, nd = posterior.sizes["chain"], posterior.sizes["draw"]
    S, q = nc * nd, data.q

    def flat(name, shape):
        return posterior[name].values.reshape((S,) + shape)
    Cc = flat("cor_chol", (q, q)) if "cor_chol" in posterior else None
    phi = flat("phi", ()) if "phi" in posterior else None
    u, _ = draw_group_effects(data, flat("b", (data.p,)), flat("sd", (q,)), Cc, phi, seed=seed, **kwargs)
    return xr.DataArray(u.reshape(nc, nd, data.n_groups, q), dims=("chain", "draw", "group", "term"),
                        coords={"chain": posterior["chain"].values, "draw": posterior["draw"].values})
