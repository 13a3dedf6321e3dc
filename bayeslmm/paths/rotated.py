"""The exact rotated path for a random intercept with a known covariance K, and K in the graph.

**Rotated path** (``Plan.path == "kinship"``): for ``y ~ X + (1 | g)`` with u ~ N(0, sd_g^2 K) and
a Gaussian response, the data are rotated once by the eigenvectors of K (over the levels with
data, :func:`bayeslmm.kinship.kinship_basis` / :func:`~bayeslmm.kinship.rotate`), after which the
marginal covariance sd_g^2 Z K Z' + sigma^2 I is diagonal; NUTS samples only ``Intercept_c``,
``beta``, ``sd_{g}`` and ``sigma`` on the compiled kernel of :mod:`.kinship_kernel` (O(k p) per
gradient), and ``r_{g}`` is drawn afterwards, exactly, from u | y, b, sd_g, sigma
(:func:`bayeslmm.kinship.draw_effects`), under the same names and dims as every other path.

**Non-centred graph** (other factors too, other families): :func:`kinship_effects` gives
r = sd L z, L L' = K over the design's levels (:func:`bayeslmm.covariance.factor_square_root`).

The rotated data enter the graph as shape-agnostic shared variables, so the compiled function
depends on the number of fixed effects only, not on n.
"""

from __future__ import annotations

import time

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
import xarray as xr

from ..covariance import factor_square_root, kinship_of
from ..design import Design
from ..kinship import KinshipBasis, KinshipData, draw_effects, kinship_basis, rotate
from ..posterior import add_group_effects, coords_of, level_dim, param_draws, r_var, sd_var, term_dim
from ..priors import PriorTable
from ..sampling import links_kernels, resolve_seed, sample
from ..spec import SamplerSpec
from .blocks import fixed_effects, prior_rv
from .kinship_kernel import kinship_logp

__all__ = ["rotated_data", "build_rotated_model", "sample_rotated", "kinship_effects", "AUX"]

AUX = ("sigma",)
_NAMES = ("k_lam", "k_yt", "k_Xt", "k_n_within", "k_rss_w", "k_b_w", "k_XtX_w", "k_n")


def rotated_data(design: Design) -> tuple:
    """``(factor, basis, data)``: the kinship factor, its eigenbasis over the rows' levels and the
    rotated response and fixed-effect design (O(k^3) once for the eigendecomposition)."""
    (g, kin), = kinship_of(design).items()
    f = design.factor(g)
    basis = kinship_basis(kin, np.asarray(f.levels, dtype=object)[f.codes])
    return f, basis, rotate(basis, design.y, design.X)


def build_rotated_model(design: Design, prior_table: PriorTable, data: KinshipData, *,
                        sampler: str = "pymc") -> pm.Model:
    """The rotated model: free variables ``Intercept_c``, ``beta``, ``sd_{g}``, ``sigma`` (the
    priors of every path), likelihood the potential ``y_kinship`` (the exact marginal log-density
    of y)."""
    (g, _), = kinship_of(design).items()
    coords = {k: v for k, v in coords_of(design).items() if not k.endswith("__level")}
    slope_terms = [t for t in design.fixed_terms if t != "Intercept"]
    if slope_terms:
        coords["slope"] = slope_terms
    arrays = [pytensor.shared(a, name=nm, shape=(None,) * a.ndim) for nm, a in zip(_NAMES, data.arrays())]
    with pm.Model(coords=coords) as model:
        _, b = fixed_effects(design, prior_table, linear_predictor=False)
        sd = prior_rv(sd_var(g), prior_table.of_class("sd", g), dims=term_dim(g))
        sigma = prior_rv("sigma", [prior_table["sigma"]])
        pm.Potential("y_kinship", kinship_logp(arrays, b, sd[0], sigma, linked=links_kernels(sampler)))
    return model


def add_kinship_effects(post: xr.Dataset, design: Design, f, basis: KinshipBasis, data: KinshipData,
                        seed: int) -> xr.Dataset:
    """``post`` plus ``r_{g}`` drawn exactly from u | y, b, sd_g, sigma (the design's levels)."""
    b, sds, _, aux = param_draws(post, [f], AUX)
    u = draw_effects(basis, data, b, sds[0][:, 0], aux["sigma"], rng=seed)      # (S, m): K's levels
    pos = basis.kinship.labels.get_indexer(list(f.levels))
    return add_group_effects(post, design, [f], [u[:, pos][:, :, None]], AUX)


def sample_rotated(design: Design, prior_table: PriorTable, settings: SamplerSpec,
                   seed: int | None = None) -> tuple[xr.DataTree, dict]:
    """NUTS on the rotated model, then exact draws of ``r_{g}``.

    Returns
    -------
    (DataTree, info)
        ``posterior`` (``b``, ``sd_{g}``, ``r_{g}``, ``sigma``), ``sample_stats``, ``observed_data``;
        ``info`` adds ``setup_s`` (eigendecomposition, rotation, model build) and ``effects_s``.
    """
    seed = resolve_seed(settings.seed if seed is None else seed)
    t0 = time.perf_counter()
    f, basis, data = rotated_data(design)
    model = build_rotated_model(design, prior_table, data, sampler=settings.sampler)
    setup_s = time.perf_counter() - t0
    keep = ["b", sd_var(f.name), "sigma"]
    idata, info = sample(model, settings, var_names=keep, seed=seed, laplace=True)
    t1 = time.perf_counter()
    post = idata["posterior"].to_dataset()
    post = post[[v for v in keep if v in post.data_vars]]
    merged = add_kinship_effects(post, design, f, basis, data, seed)
    merged.attrs = dict(idata["posterior"].attrs)
    tree = xr.DataTree()
    tree["posterior"] = xr.DataTree(merged)
    tree["sample_stats"] = idata["sample_stats"].copy()
    tree["observed_data"] = xr.DataTree(xr.Dataset({"y": ("obs", design.y)}, coords={"obs": np.arange(design.n)}))
    tree.attrs = dict(idata.attrs)
    info = dict(info)
    info.update({"setup_s": setup_s, "effects_s": time.perf_counter() - t1,
                 "kinship_levels": basis.k, "kinship_factor": f.name})
    return tree, info


def kinship_effects(f, sd, kin) -> pt.TensorVariable:
    """Non-centred ``r_{g}`` (J x 1) = sd * L z, z ~ N(0, 1), L L' = K over the design's levels."""
    z = pm.Normal(f"z_{f.name}", 0.0, 1.0, dims=(level_dim(f.name), term_dim(f.name)))
    L = pytensor.shared(factor_square_root(kin, f.levels), name=f"L_{f.name}", shape=(None, None))
    return pm.Deterministic(r_var(f.name), pt.dot(L, z) * sd, dims=(level_dim(f.name), term_dim(f.name)))
