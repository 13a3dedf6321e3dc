"""The collapsed GLMM path from a formula: group effects integrated out by AGHQ, drawn afterwards.

The formula front end of :mod:`bayeslmm.paths.quadrature` (the kernel, its nodes and its Op). For
a bernoulli, binomial, Poisson or negative-binomial model with one grouping factor and 1-3 terms on
it, NUTS samples only the fixed effects, the factor's SDs and correlations (and the negative
binomial's ``phi``), with each group's likelihood integrated over its effects by adaptive
Gauss-Hermite quadrature; the group effects are then drawn from their exact conditional per
posterior draw (:func:`~bayeslmm.paths.quadrature.draw_group_effects`: rejection sampling for one
term, importance resampling for two or three) and stored as ``r_{g}``, so the posterior has the
variables of the non-centred graph (:mod:`bayeslmm.posterior`) and every report works unchanged.

**Free variables and priors** are those of :func:`bayeslmm.paths.noncentred.build_model` without
the offsets ``z_{g}``: ``Intercept_c`` / ``beta`` with the one centring convention
(:func:`bayeslmm.paths.blocks.fixed_effects`), ``sd_{g}``, ``cpc_{g}``
(:func:`bayeslmm.paths.blocks.correlation_factors`), and ``phi``. The likelihood is a
``pm.CustomDist`` ``y_collapsed`` with one element per group, log L_j by AGHQ.

**Number of nodes**: checked on the data before sampling (:func:`choose_nodes`): the smallest
number per axis whose total log-likelihood error has SD <= :data:`~bayeslmm.paths.quadrature.ERROR_TOL`
= 0.01 over draws from a Laplace sketch of the posterior, against a 31 (q = 1), 15 (q = 2) or 9
(q = 3) node reference. Reweighting the posterior by e^E moves any posterior mean by at most sd(E)
posterior SDs, so the path is exact to 1% of a posterior SD, well under Monte Carlo error; this is
why ``method="auto"`` takes it.
"""

from __future__ import annotations

import time

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
import xarray as xr

from ..design import Design
from ..errors import SpecError
from ..posterior import add_group_effects, coords_of, level_dim, param_draws, r_var, sd_var, stored_var_names, term_dim
from ..priors import PriorTable
from ..sampling import links_kernels, resolve_seed, sample
from ..spec import SamplerSpec
from .blocks import cor_cholesky, correlation_factors, correlation_matrix, fixed_effects, prior_rv
from .quadrature import QuadratureData, draw_group_effects, prepare
from .quadrature_op import aghq_logp, op_data

__all__ = ["quadrature_data", "choose_nodes", "build_quadrature_model",
           "add_quadrature_effects", "sample_quadrature"]

def quadrature_data(design: Design, family: str, link: str | None) -> QuadratureData:
    """The kernel's data (rows sorted by group; offsets and binomial trials included)."""
    f = design.factors[0]
    return prepare(design.y, design.X, np.asarray(f.codes, dtype=np.int64), f.Z, family=family, link=link,
                   trials=design.trials, offset=design.offset, n_groups=f.n_levels)


def choose_nodes(data: QuadratureData, seed: int = 0, with_start: bool = False):
    """Nodes per axis for ``data`` (see the module docstring); ``(k, {candidate: error SD})``, and
    with ``with_start`` Newton's start per group (J, q) from the same sketch
    (:func:`~bayeslmm.paths.quadrature_nodes.newton_start`) as a third element."""
    from .quadrature_nodes import auto_n_nodes, newton_start, posterior_sketch
    sketch = posterior_sketch(data, seed=seed)
    k, checked = auto_n_nodes(data, seed=seed, sketch=sketch)
    return (k, checked, newton_start(data, sketch, k)) if with_start else (k, checked)


def build_quadrature_model(design: Design, prior_table: PriorTable, family: str, link: str | None,
                           data: QuadratureData | None = None, n_nodes=None, *, sampler: str = "pymc",
                           u0=None) -> pm.Model:
    """The GLMM with its group effects integrated out, as a ``pm.Model`` (names: module docstring).

    ``sampler`` (``"pymc"`` or ``"nutpie"``) is the NUTS the model is for: nutpie needs the kernel
    linked into the compiled function (:class:`~bayeslmm.paths.quadrature_op.AGHQLogLik`), PyMC
    calls it through object mode (a cold compile of 7 s instead of 19 s at 100,000 rows, the same
    cost per call). ``u0``: Newton's start per group (:func:`choose_nodes`), else zero.

    Examples
    --------
    >>> import bayeslmm as blmm
    >>> m = blmm.Model("cbind(incidence, size - incidence) ~ period + (1 | herd)",
    ...                blmm.load_dataset("cbpp"), family="binomial")
    >>> sorted(v.name for v in build_quadrature_model(m.design, m.prior_table, "binomial", None,
    ...                                               n_nodes=11).free_RVs)
    ['Intercept_c', 'beta', 'sd_herd']
    """
    from ..families import get_family
    fam = get_family(family, link)
    f = design.factors[0]
    data = quadrature_data(design, family, link) if data is None else data
    if n_nodes is None:
        n_nodes = choose_nodes(data)[0]
    shared = [pytensor.shared(v, name=f"aghq_{k}", shape=(None,) * np.ndim(v))
              for k, v in op_data(data, n_nodes, u0).items()]
    coords = coords_of(design)
    slope_terms = [t for t in design.fixed_terms if t != "Intercept"]
    if slope_terms:
        coords["slope"] = slope_terms
    p, q = len(design.fixed_terms), f.q
    with pm.Model(coords=coords) as model:
        _, b = fixed_effects(design, prior_table, linear_predictor=False)
        sd = prior_rv(sd_var(f.name), prior_table.of_class("sd", f.name), dims=term_dim(f.name))
        Ls = correlation_factors(f, prior_table)
        correlation_matrix(f, Ls)
        Cc = cor_cholesky(q, Ls)
        aux = {a: prior_rv(a, [prior_table[a]]) for a in fam.aux_names}
        phi = aux.get("phi", pt.constant(np.array(1.0)))
        shapes = [(p,), (q,), (q, q), ()]

        def logp(value, *par):
            par = [x.reshape(s) for x, s in zip(par, shapes)]
            return aghq_logp(*par, *shared, linked=links_kernels(sampler))
        params = [pt.as_tensor_variable(x) for x in (b, sd, Cc, phi)]
        pm.CustomDist("y_collapsed", *params, logp=logp, observed=np.zeros(f.n_levels),
                      signature="(p),(q),(q,q),()->()", dims=level_dim(f.name))
    return model


def add_quadrature_effects(post: xr.Dataset, design: Design, data: QuadratureData, aux_names: tuple[str, ...],
                           seed: int, u0=None) -> tuple[xr.Dataset, dict[str, np.ndarray]]:
    """``post`` plus ``r_{g}`` drawn from the exact conditional per draw; and the draws' diagnostics
    (:func:`~bayeslmm.paths.quadrature.draw_group_effects`: proposals per draw, and the importance
    weights' ESS where a group fell back to importance resampling). ``u0``: Newton's start, as the
    model's."""
    f = design.factors[0]
    b, sds, cors, aux = param_draws(post, (f,), aux_names)
    Cc = np.linalg.cholesky(np.asarray(cors[0]))
    u, diag = draw_group_effects(data, b, sds[0], Cc, aux.get("phi"), seed=seed, start=u0)
    if not np.all(np.isfinite(u)):
        raise SpecError("the group effects could not be drawn for some posterior draws (non-finite "
                        "parameters); refit with method='noncentred'")
    return add_group_effects(post, design, (f,), (u,), aux_names), diag


def sample_quadrature(design: Design, prior_table: PriorTable, settings: SamplerSpec, family: str,
                      link: str | None, seed: int | None = None, n_nodes=None) -> tuple[xr.DataTree, dict]:
    """NUTS on :func:`build_quadrature_model`, then exact draws of the group effects.

    Returns ``(DataTree, info)`` as :func:`bayeslmm.paths.collapsed.sample_collapsed` does;
    ``info`` adds ``n_nodes``, ``node_error_sd`` (the checked error SDs), ``setup_s``, ``effects_s``,
    ``effects_exact`` (the share of group-effect draws drawn exactly; the rest, in groups with much
    information and two or three terms, by importance resampling) and ``effects_min_ess`` (the
    lowest importance-weight ESS among those, or None).
    """
    from ..families import get_family
    seed = resolve_seed(settings.seed if seed is None else seed)
    aux_names = get_family(family, link).aux_names
    t0 = time.perf_counter()
    data = quadrature_data(design, family, link)
    checked, u0 = {}, None
    if n_nodes is None:
        n_nodes, checked, u0 = choose_nodes(data, seed=seed, with_start=True)
    model = build_quadrature_model(design, prior_table, family, link, data=data, n_nodes=n_nodes,
                                   sampler=settings.sampler, u0=u0)
    setup_s = time.perf_counter() - t0
    effects = {r_var(f.name) for f in design.factors}
    keep = [v for v in stored_var_names(design, aux_names) if v not in effects and v in model.named_vars]
    from .quadrature_density import quadrature_density
    density = quadrature_density(model, data, n_nodes, design.factors[0].name, aux_names, u0)
    idata, info = sample(model, settings, var_names=keep, seed=seed, laplace=True, density=density)
    t1 = time.perf_counter()
    post = idata["posterior"].to_dataset()
    post = post[[v for v in keep if v in post.data_vars]]
    merged, diag = add_quadrature_effects(post, design, data, aux_names, seed, u0)
    merged.attrs = dict(idata["posterior"].attrs)
    tree = xr.DataTree()
    tree["posterior"] = xr.DataTree(merged)
    tree["sample_stats"] = idata["sample_stats"].copy()
    tree["observed_data"] = xr.DataTree(xr.Dataset({"y": ("obs", design.y)}, coords={"obs": np.arange(design.n)}))
    tree.attrs = dict(idata.attrs)
    info = dict(info)
    info.update({"setup_s": setup_s, "effects_s": time.perf_counter() - t1, "n_nodes": int(n_nodes),
                 "node_error_sd": {int(k): float(v) for k, v in checked.items()},
                 "effects_exact": float(np.mean(np.isnan(diag["ess"]))),
                 "effects_min_ess": (float(np.nanmin(diag["ess"])) if not np.isnan(diag["ess"]).all() else None)})
    return tree, info
