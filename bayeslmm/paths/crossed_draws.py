"""Exact draws of the group effects of a crossed / multi-factor Gaussian LMM.

Given (b, sd, C, sigma), z | y ~ N(a / sigma^2, A^-1) with A = L L' the blocked factor of
:mod:`.crossed_kernel`, and gamma = Lambda z: z = a / sigma^2 + L^-T eps costs one blocked
triangular solve per draw.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import lapack

from .crossed_algebra import _solve, _wt_mul
from .crossed_kernel import _factor_nb, pack_theta, unpack_data
from .crossed_stats import CrossedStats

__all__ = ["conditional_effects", "conditional_moments", "draw_effects"]


def _posterior_z(st: CrossedStats, b, sds, Ccs, sigma, data=None):
    theta = pack_theta(b, sds, Ccs, sigma)
    data = unpack_data(*st.kernel_data()) if data is None else data
    layout, blocks, b0, D1, B, E, ZtX, Zte, XtX, Xte, ete, groups, gram = data
    ok, Ts, s2, L1i, R, _, _, _, _, L2, _ = _factor_nb(theta, layout, blocks, D1, B, E, groups, gram)
    if not ok:
        raise FloatingPointError("crossed path: the Schur complement is not positive definite at these "
                                 "parameters (sd / sigma beyond ~1e7)")
    k1 = st.order[0]
    _, a, _, _, _, _ = _solve(theta, Ts, s2, st.n, k1, st.q[k1], L1i, R, B, L2, blocks, b0, ZtX, Zte,
                              XtX, Xte, float(ete))
    return (Ts, L1i, R, B, blocks, L2), a / s2


def _back(st: CrossedStats, F, eps):
    """L^-T eps for eps (Q, m) in the internal order (a draw from N(0, A^-1) per column)."""
    Ts, L1i, R, B, blocks, L2 = F
    Q1, Q2 = st.Q1, st.Q2
    x2 = lapack.dtrtrs(L2, eps[Q1:], lower=1, trans=1)[0] if Q2 else eps[Q1:]
    if not Q1:
        return x2
    t1 = (eps[:Q1] - (_wt_mul(B, R, Ts, blocks, np.ascontiguousarray(x2)) if Q2 else 0.0))
    t1 = t1.reshape(L1i.shape[0], L1i.shape[1], -1)
    x1 = np.matmul(L1i.transpose(0, 2, 1), t1).reshape(Q1, -1)
    return np.concatenate([x1, x2])


def _split(st: CrossedStats, x):
    """Internal-order (Q, ...) -> per factor (caller order) arrays (J_k, q_k, ...)."""
    offs = st.offsets()
    return [x[offs[k]:offs[k] + st.J[k] * st.q[k]].reshape(st.J[k], st.q[k], *x.shape[1:])
            for k in range(st.K)]


def conditional_effects(st: CrossedStats, b, sds, Ccs, sigma, eps=None, data=None) -> list[np.ndarray]:
    """Group effects from their exact conditional gamma | y, b, sd, C, sigma (one solve per draw).

    Parameters
    ----------
    eps : None for the conditional mean, or standard normals of shape (Q,) or (Q, m) for m draws.
    data : ``unpack_data(*st.kernel_data())``, computed here when not given (pass it when calling
        once per posterior draw).

    Returns
    -------
    list over factors (caller order) of arrays (J_k, q_k) or (J_k, q_k, m).
    """
    F, zbar = _posterior_z(st, b, sds, Ccs, sigma, data)
    if eps is None:
        z = zbar
    else:
        eps = np.asarray(eps, dtype=float)
        z = zbar[:, None] + _back(st, F, eps.reshape(st.Q, -1))
        if eps.ndim == 1:
            z = z[:, 0]
    parts = _split(st, z)
    Ts = F[0]
    return [np.tensordot(parts[k], Ts[k, :st.q[k], :st.q[k]], axes=([1], [1])).swapaxes(1, -1)
            if parts[k].ndim == 3 else parts[k] @ Ts[k, :st.q[k], :st.q[k]].T for k in range(st.K)]


def conditional_moments(st: CrossedStats, b, sds, Ccs, sigma) -> tuple[np.ndarray, np.ndarray]:
    """Exact mean (Q,) and covariance (Q, Q) of all group effects, factors in caller order
    (each level-major). Dense (Q x Q): for checks on small designs."""
    F, zbar = _posterior_z(st, b, sds, Ccs, sigma)
    X = _back(st, F, np.eye(st.Q))                                   # L^-T, internal order
    Ts = F[0]
    offs = st.offsets()
    perm = np.concatenate([np.arange(offs[k], offs[k] + st.J[k] * st.q[k]) for k in range(st.K)])
    lam = np.zeros((st.Q, st.Q))
    for k in range(st.K):
        s, Jk, qk = offs[k], st.J[k], st.q[k]
        for j in range(Jk):
            lam[s + j * qk:s + (j + 1) * qk, s + j * qk:s + (j + 1) * qk] = Ts[k, :qk, :qk]
    LX = lam @ X
    return (lam @ zbar)[perm], (LX @ LX.T)[np.ix_(perm, perm)]


def draw_effects(st: CrossedStats, b, sds, Ccs, sigma, seed: int) -> list[np.ndarray]:
    """One exact draw of every factor's effects per posterior draw, seeded.

    Parameters
    ----------
    b : (S, p) ; sds : per factor (S, q_k) ; Ccs : per factor (S, q_k, q_k) ; sigma : (S,)

    Returns
    -------
    list over factors of arrays (S, J_k, q_k).
    """
    S = len(sigma)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 14]))
    out = [np.empty((S, J, q)) for J, q in zip(st.J, st.q)]
    data = unpack_data(*st.kernel_data())          # once, not per draw
    for s in range(S):
        parts = conditional_effects(st, b[s], [x[s] for x in sds], [x[s] for x in Ccs], sigma[s],
                                    rng.standard_normal(st.Q), data)
        for k in range(st.K):
            out[k][s] = parts[k]
    return out
