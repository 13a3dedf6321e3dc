"""One group's AGHQ log-likelihood and its gradient for a single term (q = 1; numba).

The one-term case of :func:`bayeslmm.paths.quadrature_kernel._group` (the same integral, mode,
nodes and reverse mode; see that module's docstring), with scalars for the 1 x 1 algebra and one
fused pass over the group's rows per Newton step and per node
(:mod:`bayeslmm.paths.quadrature_fused`). A random intercept over bernoulli-logit or Poisson rows
takes the exponential-free passes (``A`` = e^eta0, ``emax``).
"""

from __future__ import annotations

import math

import numpy as np

from .quadrature_families import NO_NRT, njit
from .quadrature_fused import mode_q1, mode_q1_intercept, node_q1, node_q1_intercept
from .quadrature_mode import find_mode_q1, intercept_ok

__all__ = ["group_q1"]

# no allocation here, so numba's reference counting is off (quadrature_kernel's docstring)
_NO_NRT = dict(cache=True, nogil=True, error_model="numpy", fastmath={"contract", "nsz", "arcp", "reassoc"},
               **NO_NRT)


@njit(**_NO_NRT)
def group_q1(want_grad, fam, y, n, eta0, w, phi, lphi, nodes, lwn, center, v,
              d1s, d2s, d3s, p1s, p2s, nd1, acc_e, acc_o, km, A, emax, H, L):
    """:func:`~bayeslmm.paths.quadrature_kernel._group` for one term, with scalars for the 1 x 1
    algebra and one fused pass over the rows per node. ``w`` (m,); d/d eta0 is returned in acc_e
    and d/d w in acc_o. With a random intercept and bernoulli-logit or Poisson rows, ``A`` = e^eta0
    and ``emax`` = max |eta0| (else inf) select the exponential-free passes of the families module.
    ``H``, ``L`` (1, 1) scratch. Returns (logL, dphi, ok)."""
    nj = eta0.shape[0]
    M = nodes.shape[0]
    if not find_mode_q1(fam, y, n, eta0, w, v, phi, lphi, H, L, A, emax):
        return -np.inf, 0.0, False
    vs = v[0]
    if nj > 0 and intercept_ok(emax, w[0], vs):
        S0, P0, G0, Hs = mode_q1_intercept(fam, y, A, eta0, w[0], vs, d1s, d2s, d3s, p1s, p2s)
    else:
        S0, P0, G0, Hs = mode_q1(fam, y, n, eta0, w, vs, phi, lphi, d1s, d2s, d3s, p1s, p2s)
    h = 1.0 + Hs
    if not h > 0.0:
        return -np.inf, 0.0, False
    Lf = math.sqrt(h)
    lw, Gk = km[0], km[1]
    P, SK = km[2], km[3]
    ref = -np.inf
    tot = 0.0
    if want_grad:
        acc_e[:] = 0.0
        acc_o[:] = 0.0
    for k in range(M):
        sk = nodes[k, 0] / Lf
        vk = vs + sk
        SK[k] = sk
        if k == center:
            S = S0
            P[k] = P0
            Gk[k] = G0 - vk
            dk = d1s
        elif nj > 0 and intercept_ok(emax, w[0], vk):
            S, P[k], gk = node_q1_intercept(fam, y, A, eta0, w[0], vk, nd1)
            Gk[k] = gk - vk
            dk = nd1
        else:
            S, P[k], gk = node_q1(fam, y, n, eta0, w, vk, phi, lphi, nd1)
            Gk[k] = gk - vk
            dk = nd1
        lw[k] = lwn[k] - 0.5 * vk * vk + S
        if not abs(lw[k]) < np.inf:
            return -np.inf, 0.0, False
        if lw[k] > ref + 30.0:
            scale = math.exp(ref - lw[k]) if ref > -np.inf else 0.0
            tot *= scale
            if want_grad:
                for i in range(nj):
                    acc_e[i] *= scale
                    acc_o[i] *= scale
            ref = lw[k]
        wk = math.exp(lw[k] - ref)
        tot += wk
        if want_grad:
            c = wk * vk
            for i in range(nj):
                acc_e[i] += wk * dk[i]
                acc_o[i] += c * dk[i]
    logL = -math.log(Lf) + ref + math.log(tot)
    if not want_grad:
        return logL, 0.0, True
    itot = 1.0 / tot
    av = 0.0
    Lbar = -1.0 / Lf
    dphi = 0.0
    for k in range(M):
        pk = math.exp(lw[k] - ref) * itot
        dphi += pk * P[k]
        av += pk * Gk[k]
        Lbar -= pk * SK[k] * Gk[k] / Lf
    Hbar = 0.5 * Lbar / Lf
    s3 = 0.0
    for i in range(nj):
        s3 += d3s[i] * w[i] * w[i] * w[i]
    lam = (av - Hbar * s3) / h
    for i in range(nj):
        wi = w[i]
        coef = -Hbar * wi * wi * d3s[i] + d2s[i] * lam * wi
        acc_e[i] = acc_e[i] * itot + coef
        acc_o[i] = acc_o[i] * itot + coef * vs - 2.0 * d2s[i] * Hbar * wi + d1s[i] * lam
        dphi += -Hbar * wi * wi * p2s[i] + lam * wi * p1s[i]
    return logL, dphi, True
