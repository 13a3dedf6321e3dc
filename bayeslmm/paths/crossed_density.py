"""The collapsed crossed model's whole log-density and gradient as one compiled function.

The crossed / multi-factor counterpart of :mod:`bayeslmm.paths.collapsed_density`: the same priors,
the same map from PyMC's unconstrained vector to the fixed effects, each factor's SDs and LKJ
Cholesky factor and sigma (applied factor by factor) and its reverse mode, with the crossed kernel
(:mod:`bayeslmm.paths.crossed_kernel`, its parameter vector ``theta = [b, sd_0.., C_0.., sigma]``)
for the likelihood. Compiled at install; PyMC's NUTS evaluates it instead of compiling the model's
graph (:func:`bayeslmm.sampling.laplace_start`). Tested against PyMC's ``logp_dlogp``
(tests/test_collapsed_density.py).
"""

from __future__ import annotations

import numpy as np

from ..cachedir import cached_njit
from .collapsed_density import LogpDlogp, density_layout, prior_logp, pullback, unpack
from .crossed_kernel import _kernel_nb, _readonly

__all__ = ["crossed_logp_dlogp", "crossed_density", "compile_density"]


@cached_njit(nogil=True, error_model="numpy")
def crossed_logp_dlogp(x, code, par, logt, fix_idx, M, sd_idx, blocks, cpc_idx, aux_idx, const, sd_off, blk_off,
                       ints, floats):
    """Log-density and gradient of the collapsed crossed model at ``x``; factor k's SDs are
    ``sd_idx[sd_off[k]:sd_off[k + 1]]`` and its correlation blocks ``blocks[blk_off[k]:blk_off[k + 1]]``
    (see :func:`bayeslmm.paths.collapsed_density.one_factor_logp_dlogp`)."""
    g = np.zeros(x.shape[0])
    lp = prior_logp(x, code, par, logt, g) + const
    K = sd_off.shape[0] - 1
    p = M.shape[0]
    nq = sd_off[K]
    nc = 0
    for k in range(K):
        qk = sd_off[k + 1] - sd_off[k]
        nc += qk * qk
    none = fix_idx[0:0]
    b, _, _, sigma = unpack(x, fix_idx, M, sd_idx[0:0], blocks[0:0], cpc_idx, aux_idx)
    theta = np.empty(p + nq + nc + 1)
    theta[:p] = b
    pos = p + nq
    for k in range(K):
        _, sdk, Ck, _ = unpack(x, none, M, sd_idx[sd_off[k]:sd_off[k + 1]], blocks[blk_off[k]:blk_off[k + 1]],
                               cpc_idx, -1)
        qk = sdk.shape[0]
        theta[p + sd_off[k]:p + sd_off[k + 1]] = sdk
        theta[pos:pos + qk * qk] = Ck.ravel()
        pos += qk * qk
    theta[-1] = sigma[()]
    if not np.all(np.isfinite(theta)):
        return -np.inf, np.zeros(x.shape[0])
    lpk, gth = _kernel_nb(True, 1.0, theta, ints, floats)
    lp += lpk
    gaux = np.empty(())
    gaux[()] = gth[-1]
    pullback(x, g, fix_idx, M, sd_idx[0:0], blocks[0:0], cpc_idx, aux_idx, np.empty(0), np.empty((0, 0)), sigma,
             gth[:p].copy(), np.empty(0), np.empty((0, 0)), gaux)
    zb = np.zeros(p)
    pos = p + nq
    for k in range(K):
        _, sdk, Ck, _ = unpack(x, none, M, sd_idx[sd_off[k]:sd_off[k + 1]], blocks[blk_off[k]:blk_off[k + 1]],
                               cpc_idx, -1)
        qk = sdk.shape[0]
        gC = gth[pos:pos + qk * qk].copy().reshape((qk, qk))
        pos += qk * qk
        pullback(x, g, none, M, sd_idx[sd_off[k]:sd_off[k + 1]], blocks[blk_off[k]:blk_off[k + 1]], cpc_idx, -1,
                 sdk, Ck, sigma, zb, gth[p + sd_off[k]:p + sd_off[k + 1]].copy(), gC, gaux)
    return lp, g


def crossed_density(model, stats, factors: list[str]):
    """``point_map_info -> LogpDlogp or None`` for a model of
    :func:`bayeslmm.paths.crossed_path.build_crossed_path_model` (``factors`` in the stats' order)."""
    def make(point_map_info):
        layout = density_layout(model, point_map_info, factors, "sigma", "y_marginal")
        if layout is None:
            return None
        ints, floats = stats.kernel_data()
        return LogpDlogp(crossed_logp_dlogp, layout.args() + (layout.sd_off, layout.blk_off,
                                                              _readonly(ints, np.int64), _readonly(floats, np.float64)))
    return make


def compile_density() -> float:
    """Compile :func:`crossed_logp_dlogp` now (numba caches it); returns the seconds (``make install``)."""
    import time

    from .collapsed_density import DensityLayout
    from .crossed_stats import Factor, crossed_stats
    t0 = time.perf_counter()
    g, h, one = np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]), np.ones((4, 1))
    st = crossed_stats(np.array([1.0, 2.0, 3.0, 5.0]), one, [Factor("s", g, one, 2), Factor("i", h, one, 2)])
    layout = DensityLayout(np.array([0, 1, 1, 1]), np.ones((4, 4)), np.array([0, 1, 1, 1]), np.array([0]), np.eye(1),
                           np.array([1, 2]), np.zeros((0, 3), dtype=np.int64), np.zeros(0, dtype=np.int64), 3, 0.0,
                           np.array([0, 1, 2]), np.array([0, 0, 0]))
    ints, floats = st.kernel_data()
    crossed_logp_dlogp(np.zeros(4), *layout.args(), layout.sd_off, layout.blk_off, _readonly(ints, np.int64),
                       _readonly(floats, np.float64))
    return time.perf_counter() - t0
