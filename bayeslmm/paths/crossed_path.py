"""The exact collapsed path for crossed / multi-factor Gaussian models, wired to a ``Design``.

For grouping factors that do not form a nesting chain (subjects x items, or crossed with nested),
every group effect is integrated out exactly by the blocked Cholesky algebra of
:mod:`.crossed_kernel` (one numba kernel call per NUTS step, :class:`.crossed.CrossedMarginal`),
NUTS samples only the fixed effects, SDs, correlations and sigma, and the group effects are drawn
afterwards from their exact joint Gaussian conditional, one draw per posterior draw
(:func:`.crossed_draws.draw_effects`). The posterior has the same variables, dims and coords as the
non-centred graph (:mod:`bayeslmm.posterior`), so everything downstream works unchanged.

Free variables and priors are those of the other paths (:mod:`.blocks`): ``Intercept_c``,
``beta``, ``sd_{g}``, ``cpc_{g}`` (LKJ), ``sigma``. The likelihood is the potential ``y_marginal``
(one scalar: a crossed design has no per-group factorisation, so LOO uses the pointwise
log-likelihood computed from the drawn effects, as for the non-centred path).

PyMC's NUTS does not compile this graph: it evaluates :mod:`.crossed_density`, the same log-density
and gradient as one numba function compiled at install and tested equal to the graph's.
"""

from __future__ import annotations

import time

import numpy as np
import pymc as pm
import pytensor
import xarray as xr

from ..design import Design
from ..posterior import add_group_effects, coords_of, param_draws, term_dim
from ..priors import PriorTable
from ..sampling import resolve_seed
from ..spec import SamplerSpec
from .blocks import cor_cholesky, correlation_factors, correlation_matrix, fixed_effects, prior_rv
from .collapsed import sample_and_draw
from .crossed import crossed_logp_tensor
from .crossed_draws import draw_effects
from .crossed_stats import CrossedStats, crossed_stats

__all__ = ["design_stats", "build_crossed_path_model", "data_values", "add_crossed_effects", "sample_crossed", "AUX"]

#: the auxiliary parameters of the (Gaussian) collapsed likelihood
AUX = ("sigma",)
_DATA_NAMES = ("crossed_ints", "crossed_floats")


def design_stats(design: Design, y=None) -> CrossedStats:
    """:class:`CrossedStats` of the design's rows (``y`` replaces the response, e.g. for SBC)."""
    return crossed_stats(design.y if y is None else np.asarray(y, dtype=float), design.X, design.factors)


def data_values(stats: CrossedStats) -> dict[str, np.ndarray]:
    """The model's shared variables by name, for swapping in a new response without rebuilding."""
    return dict(zip(_DATA_NAMES, stats.kernel_data()))


def build_crossed_path_model(design: Design, prior_table: PriorTable, stats: CrossedStats | None = None) -> pm.Model:
    """The collapsed crossed Gaussian LMM as a ``pm.Model`` (group effects integrated out).

    Examples
    --------
    >>> import numpy as np, pandas as pd, bayeslmm as blmm
    >>> rng = np.random.default_rng(0)
    >>> df = pd.DataFrame({"y": rng.normal(size=40), "s": np.repeat(list("abcd"), 10),
    ...                    "i": np.tile(list("vwxyz"), 8)})
    >>> m = blmm.Model("y ~ 1 + (1 | s) + (1 | i)", df)
    >>> sorted(v.name for v in build_crossed_path_model(m.design, m.prior_table).free_RVs)
    ['Intercept_c', 'sd_i', 'sd_s', 'sigma']
    """
    stats = stats if stats is not None else design_stats(design)
    coords = {k: v for k, v in coords_of(design).items() if not k.endswith("__level")}
    slope_terms = [t for t in design.fixed_terms if t != "Intercept"]
    if slope_terms:
        coords["slope"] = slope_terms
    with pm.Model(coords=coords) as model:
        data = [pytensor.shared(np.asarray(x), name=nm, shape=(None,) * np.ndim(x))
                for nm, x in zip(_DATA_NAMES, stats.kernel_data())]
        _, b = fixed_effects(design, prior_table, linear_predictor=False)
        sds, Ccs = [], []
        for f in design.factors:                 # the order of crossed_stats' factors
            sds.append(prior_rv(f"sd_{f.name}", prior_table.of_class("sd", f.name), dims=term_dim(f.name)))
            Ls = correlation_factors(f, prior_table)
            correlation_matrix(f, Ls)
            Ccs.append(cor_cholesky(f.q, Ls))
        sigma = prior_rv("sigma", [prior_table["sigma"]])
        pm.Potential("y_marginal", crossed_logp_tensor(b, sds, Ccs, sigma, data))
    return model


def _cholesky(cors: np.ndarray) -> np.ndarray:
    """Lower Cholesky factors of correlation matrices (S, q, q); block-diagonal stays block-diagonal."""
    try:
        return np.linalg.cholesky(cors)
    except np.linalg.LinAlgError:      # |cor| -> 1 in floating point: nudge the diagonal
        q = cors.shape[-1]
        return np.linalg.cholesky(cors + 1e-12 * np.eye(q))


def add_crossed_effects(post: xr.Dataset, design: Design, stats: CrossedStats, seed: int) -> xr.Dataset:
    """``post`` (b, sd, cor, sigma) plus ``r_{g}`` of every factor drawn exactly from their joint
    conditional given each posterior draw, seeded."""
    b, sds, cors, aux = param_draws(post, design.factors, AUX)
    effects = draw_effects(stats, b, sds, [_cholesky(c) for c in cors], aux["sigma"], seed)
    return add_group_effects(post, design, design.factors, effects, AUX)


def sample_crossed(design: Design, prior_table: PriorTable, settings: SamplerSpec,
                   seed: int | None = None) -> tuple[xr.DataTree, dict]:
    """NUTS on the collapsed crossed model, then exact draws of every factor's group effects.

    Returns
    -------
    (DataTree, info)
        As :func:`bayeslmm.paths.collapsed.sample_collapsed`: groups ``posterior`` (same names and
        dims as the non-centred graph), ``sample_stats``, ``observed_data``; ``info`` adds
        ``setup_s``, ``effects_s`` and ``crossed_structure``.
    """
    seed = resolve_seed(settings.seed if seed is None else seed)
    t0 = time.perf_counter()
    stats = design_stats(design)
    model = build_crossed_path_model(design, prior_table, stats)
    setup_s = time.perf_counter() - t0
    from .crossed_density import crossed_density
    density = crossed_density(model, stats, [f.name for f in design.factors])
    tree, info = sample_and_draw(model, design, settings, seed,
                                 lambda post: add_crossed_effects(post, design, stats, seed), density=density)
    elim = stats.names[stats.order[0]] if stats.n_elim else None
    info.update({"setup_s": setup_s,
                 "crossed_structure": f"{stats.Q} group effects ({stats.Q1} eliminated level by level"
                                      f"{f' on {elim}' if elim else ''}, {stats.Q2} dense)"
                                      f"{f', {stats.gram.shape[0]} level group(s)' if stats.gram.shape[0] else ''}"})
    return tree, info
