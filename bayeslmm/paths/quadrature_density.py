"""The collapsed GLMM's whole log-density and gradient as one compiled function (PyMC's NUTS).

The GLMM counterpart of :mod:`bayeslmm.paths.collapsed_density`: the same priors, the same map
from PyMC's unconstrained vector to ``(b, sd, C_chol, phi)`` and its reverse mode (the model of
:func:`bayeslmm.paths.quadrature_path.build_quadrature_model` is built from the same pieces of
:mod:`bayeslmm.paths.blocks`), with the AGHQ kernel (:func:`bayeslmm.paths.quadrature_op.op_kernel`)
for the likelihood. Compiled at install; spares the cold compile of PyMC's function for the
model (seconds) and PyTensor's per-call work. Tested against PyMC's ``logp_dlogp``
(tests/test_collapsed_density.py).
"""

from __future__ import annotations

import numpy as np

from ..cachedir import cached_njit
from .collapsed_density import LogpDlogp, density_layout, prior_logp, pullback, unpack
from .quadrature_op import DATA_NAMES, op_data, op_kernel

__all__ = ["aghq_logp_dlogp", "quadrature_density", "compile_density"]

_INT = {"starts", "ictl", "rules", "rule_of", "lplan"}


@cached_njit(nogil=True, error_model="numpy")
def aghq_logp_dlogp(x, code, par, logt, fix_idx, M, sd_idx, blocks, cpc_idx, aux_idx, const, grad, w,
                    y, trials, offset, Xt, Zt, starts, ictl, nodes, lwn, rules, rule_of, lplan, lrows, u0, qconst):
    """Log-density and gradient of the collapsed GLMM at ``x`` (see
    :func:`bayeslmm.paths.collapsed_density.one_factor_logp_dlogp`; the data are :func:`op_data`'s)."""
    g = np.zeros(x.shape[0])
    lp = prior_logp(x, code, par, logt, g) + const
    b, sd, Cc, phi = unpack(x, fix_idx, M, sd_idx, blocks, cpc_idx, aux_idx)
    lpj, gb, gsd, gC, gphi = op_kernel(grad, w, b, sd, Cc, phi, y, trials, offset, Xt, Zt, starts, ictl, nodes,
                                       lwn, rules, rule_of, lplan, lrows, u0, qconst)
    for j in range(lpj.shape[0]):
        lp += lpj[j]
    pullback(x, g, fix_idx, M, sd_idx, blocks, cpc_idx, aux_idx, sd, Cc, phi, gb, gsd, gC, gphi)
    return lp, g


def _arrays(data, n_nodes, u0=None) -> list[np.ndarray]:
    return [np.array(v, dtype=np.int64 if k in _INT else np.float64, order="C", copy=True)
            for k, v in op_data(data, n_nodes, u0).items()]


def quadrature_density(model, data, n_nodes, factor: str, aux: tuple[str, ...], u0=None):
    """``point_map_info -> LogpDlogp or None`` for a model of
    :func:`~bayeslmm.paths.quadrature_path.build_quadrature_model` (``aux``: the family's
    auxiliary names, ``("phi",)`` or none; ``u0`` Newton's start, as the model's)."""
    def make(point_map_info):
        layout = density_layout(model, point_map_info, factor, aux[0] if aux else None, "y_collapsed")
        if layout is None or len(aux) > 1:
            return None
        arrays = _arrays(data, n_nodes, u0)
        return LogpDlogp(aghq_logp_dlogp, layout.args() + (np.array(1), np.ones(len(arrays[-1])), *arrays))
    return make


def compile_density() -> float:
    """Compile :func:`aghq_logp_dlogp` now (numba caches it); returns the seconds (``make install``)."""
    import time

    from .collapsed_density import DensityLayout
    from .quadrature import prepare
    t0 = time.perf_counter()
    data = prepare(np.array([0.0, 1.0, 1.0]), np.ones((3, 1)), np.array([0, 0, 1]), family="bernoulli")
    layout = DensityLayout(np.array([0, 1]), np.ones((2, 4)), np.array([0, 1]), np.array([0]), np.eye(1),
                           np.array([1]), np.zeros((0, 3), dtype=np.int64), np.zeros(0, dtype=np.int64), -1, 0.0)
    arrays = _arrays(data, 3)
    aghq_logp_dlogp(np.zeros(2), *layout.args(), np.array(1), np.ones(len(arrays[-1])), *arrays)
    assert len(arrays) == len(DATA_NAMES)
    return time.perf_counter() - t0
