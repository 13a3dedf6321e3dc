"""Fused row passes of the AGHQ kernel: the linear predictor, the family and the sums in one loop.

Numba helpers of :mod:`bayeslmm.paths.quadrature_kernel`, built from the per-row functions of
:mod:`bayeslmm.paths.quadrature_families`. A Newton step or a quadrature node is then a single
vectorised pass over a group's rows: one term (q = 1), a random intercept over bernoulli-logit or
Poisson rows (no exponential or logarithm per row at all), and two or three terms.
"""

from __future__ import annotations

import math


from .quadrature import BINOMIAL_LOGIT, NEGBINOMIAL_LOG, POISSON_LOG
from .quadrature_families import njit, LOOP_JIT, probit_row, logistic, vexp

__all__ = ["newton_q1", "node_q1", "mode_q1", "newton_q1_intercept", "node_q1_intercept", "mode_q1_intercept",
           "exp_rows", "unit_rows", "node_q3"]


# --------------------------------------------------------------------------------------------
# One term (q = 1, the common random intercept): the linear predictor and the sums fused into
# the row loop, so that a Newton step or a node is a single vectorised pass over the rows
# --------------------------------------------------------------------------------------------
@njit(**LOOP_JIT)
def newton_q1(fam, y, n, eta0, w, v, phi, lphi):
    """(sum_i l'_i w_i, -sum_i l''_i w_i^2) at eta = eta0 + w v."""
    m = eta0.shape[0]
    g = 0.0
    h = 0.0
    if fam == BINOMIAL_LOGIT:
        for i in range(m):
            _, p, q = logistic(eta0[i] + w[i] * v)
            g += (y[i] * q - (n[i] - y[i]) * p) * w[i]
            h += n[i] * p * q * w[i] * w[i]
    elif fam == POISSON_LOG:
        for i in range(m):
            mu = vexp(eta0[i] + w[i] * v)
            g += (y[i] - mu) * w[i]
            h += mu * w[i] * w[i]
    elif fam == NEGBINOMIAL_LOG:
        for i in range(m):
            _, s, sc = logistic(eta0[i] + w[i] * v - lphi)
            g += (y[i] * sc - phi * s) * w[i]
            h += (y[i] + phi) * s * sc * w[i] * w[i]
    else:
        for i in range(m):
            _, a1, a2, _ = probit_row(y[i], n[i], eta0[i] + w[i] * v)
            g += a1 * w[i]
            h -= a2 * w[i] * w[i]
    return g, h


@njit(**LOOP_JIT)
def node_q1(fam, y, n, eta0, w, v, phi, lphi, d1):
    """(sum_i l_i, sum_i dl_i/dphi, sum_i l'_i w_i) at eta = eta0 + w v; l'_i into d1."""
    m = eta0.shape[0]
    S = 0.0
    P = 0.0
    G = 0.0
    if fam == BINOMIAL_LOGIT:
        for i in range(m):
            eta = eta0[i] + w[i] * v
            lp, p, q = logistic(eta)
            S += y[i] * eta - n[i] * lp
            d = y[i] * q - (n[i] - y[i]) * p
            d1[i] = d
            G += d * w[i]
    elif fam == POISSON_LOG:
        for i in range(m):
            eta = eta0[i] + w[i] * v
            mu = vexp(eta)
            S += y[i] * eta - mu
            d = y[i] - mu
            d1[i] = d
            G += d * w[i]
    elif fam == NEGBINOMIAL_LOG:
        for i in range(m):
            eta = eta0[i] + w[i] * v
            lp, s, sc = logistic(eta - lphi)
            a = y[i] + phi
            S += y[i] * eta - a * lp
            P += -lp + a * s / phi
            d = y[i] * sc - phi * s
            d1[i] = d
            G += d * w[i]
    else:
        for i in range(m):
            a0, a1, _, _ = probit_row(y[i], n[i], eta0[i] + w[i] * v)
            S += a0
            d1[i] = a1
            G += a1 * w[i]
    return S, P, G


@njit(**LOOP_JIT)
def mode_q1(fam, y, n, eta0, w, v, phi, lphi, d1, d2, d3, p1, p2):
    """At eta = eta0 + w v: l', l'', l''', dl'/dphi, dl''/dphi per row into the arrays, and
    (sum l, sum dl/dphi, sum l' w, -sum l'' w^2)."""
    m = eta0.shape[0]
    S = 0.0
    P = 0.0
    G = 0.0
    H = 0.0
    if fam == BINOMIAL_LOGIT:
        for i in range(m):
            eta = eta0[i] + w[i] * v
            lp, p, q = logistic(eta)
            pq = p * q
            S += y[i] * eta - n[i] * lp
            a1 = y[i] * q - (n[i] - y[i]) * p
            a2 = -n[i] * pq
            d1[i] = a1
            d2[i] = a2
            d3[i] = a2 * (q - p)
            p1[i] = 0.0
            p2[i] = 0.0
            G += a1 * w[i]
            H -= a2 * w[i] * w[i]
    elif fam == POISSON_LOG:
        for i in range(m):
            eta = eta0[i] + w[i] * v
            mu = vexp(eta)
            S += y[i] * eta - mu
            d1[i] = y[i] - mu
            d2[i] = -mu
            d3[i] = -mu
            p1[i] = 0.0
            p2[i] = 0.0
            G += (y[i] - mu) * w[i]
            H += mu * w[i] * w[i]
    elif fam == NEGBINOMIAL_LOG:
        for i in range(m):
            eta = eta0[i] + w[i] * v
            lp, s, sc = logistic(eta - lphi)
            a = y[i] + phi
            ssc = s * sc
            S += y[i] * eta - a * lp
            P += -lp + a * s / phi
            a1 = y[i] * sc - phi * s
            d1[i] = a1
            d2[i] = -a * ssc
            d3[i] = -a * ssc * (sc - s)
            p1[i] = -s + a * ssc / phi
            p2[i] = -ssc + a * (sc - s) * ssc / phi
            G += a1 * w[i]
            H += a * ssc * w[i] * w[i]
    else:
        for i in range(m):
            a0, a1, a2, a3 = probit_row(y[i], n[i], eta0[i] + w[i] * v)
            S += a0
            d1[i] = a1
            d2[i] = a2
            d3[i] = a3
            p1[i] = 0.0
            p2[i] = 0.0
            G += a1 * w[i]
            H -= a2 * w[i] * w[i]
    return S, P, G, H


# --------------------------------------------------------------------------------------------
# A random intercept (z = 1) with bernoulli-logit or Poisson rows: e^eta = e^eta0 e^(w v), so
# with A_i = e^eta0_i computed once per call a step or a node needs no exponential per row, and
# sum_i log(1 + e^eta_i) is the log of a product (one log per 512 rows): no log per row either.
# The caller checks |eta| < 700 (no overflow) before taking this path.
# --------------------------------------------------------------------------------------------
_BLOCK = 512          # factors in [1/2, 1]: a product of 512 stays far from underflow


@njit(**LOOP_JIT)
def newton_q1_intercept(fam, y, A, w, v):
    """newton_q1 for a random intercept: (sum_i l'_i w, -sum_i l''_i w^2)."""
    m = A.shape[0]
    B = math.exp(w * v)
    g = 0.0
    h = 0.0
    if fam == BINOMIAL_LOGIT:
        for i in range(m):
            ab = A[i] * B
            r = 1.0 / (1.0 + ab)
            s = ab * r
            g += y[i] * r - (1.0 - y[i]) * s
            h += s * r
    else:
        for i in range(m):
            mu = A[i] * B
            g += y[i] - mu
            h += mu
    return g * w, h * w * w


@njit(**LOOP_JIT)
def node_q1_intercept(fam, y, A, eta0, w, v, d1):
    """node_q1 for a random intercept: (sum_i l_i, 0, sum_i l'_i w); l'_i into d1.

    For the logit, log(1 + e^eta) = -log r (r = 1 / (1 + e^eta)) when e^eta <= 1, else
    eta - log s (s = 1 - r): each factor r or s lies in [1/2, 1], so their product over a block of
    rows neither underflows nor loses precision, and one log per block replaces one per row.
    """
    m = A.shape[0]
    c = w * v
    B = math.exp(c)
    S = 0.0
    G = 0.0
    if fam == BINOMIAL_LOGIT:
        logs = 0.0
        for s0 in range(0, m, _BLOCK):
            prod = 1.0
            lin = 0.0
            for i in range(s0, min(m, s0 + _BLOCK)):
                eta = eta0[i] + c
                ab = A[i] * B
                r = 1.0 / (1.0 + ab)
                s = ab * r
                big = ab > 1.0
                prod *= s if big else r
                lin += eta if big else 0.0
                S += y[i] * eta
                d = y[i] * r - (1.0 - y[i]) * s
                d1[i] = d
                G += d
            logs += lin - math.log(prod)
        S -= logs
    else:
        for i in range(m):
            mu = A[i] * B
            S += y[i] * (eta0[i] + c) - mu
            d = y[i] - mu
            d1[i] = d
            G += d
    return S, 0.0, G * w


@njit(**LOOP_JIT)
def exp_rows(eta0, A):
    """A_i = e^eta0_i and max_i |eta0_i| (two loops, so that both vectorise)."""
    for i in range(eta0.shape[0]):
        A[i] = vexp(eta0[i])
    big = 0.0
    for i in range(eta0.shape[0]):
        a = abs(eta0[i])
        big = a if a > big else big
    return big


@njit(**LOOP_JIT)
def unit_rows(z, n):
    """Whether every z_i and n_i is 1 (a random intercept over single-trial rows)."""
    s = 0.0
    for i in range(z.shape[0]):
        s += abs(z[i] - 1.0) + abs(n[i] - 1.0)
    return s == 0.0


@njit(**LOOP_JIT)
def mode_q1_intercept(fam, y, A, eta0, w, v, d1, d2, d3, p1, p2):
    """mode_q1 for a random intercept (same outputs; the phi-derivatives are zero)."""
    m = A.shape[0]
    c = w * v
    B = math.exp(c)
    S = 0.0
    G = 0.0
    H = 0.0
    if fam == BINOMIAL_LOGIT:
        logs = 0.0
        for s0 in range(0, m, _BLOCK):
            prod = 1.0
            lin = 0.0
            for i in range(s0, min(m, s0 + _BLOCK)):
                eta = eta0[i] + c
                ab = A[i] * B
                r = 1.0 / (1.0 + ab)
                s = ab * r
                big = ab > 1.0
                prod *= s if big else r
                lin += eta if big else 0.0
                S += y[i] * eta
                a1 = y[i] * r - (1.0 - y[i]) * s
                sr = s * r
                d1[i] = a1
                d2[i] = -sr
                d3[i] = -sr * (r - s)
                p1[i] = 0.0
                p2[i] = 0.0
                G += a1
                H += sr
            logs += lin - math.log(prod)
        S -= logs
    else:
        for i in range(m):
            mu = A[i] * B
            S += y[i] * (eta0[i] + c) - mu
            d1[i] = y[i] - mu
            d2[i] = -mu
            d3[i] = -mu
            p1[i] = 0.0
            p2[i] = 0.0
            G += y[i] - mu
            H += mu
    return S, 0.0, G * w, H * w * w


# --------------------------------------------------------------------------------------------
# Two or three terms: the linear predictor and the sums fused into the row loop (the unused
# third term gets v2 = 0), so that a node is one vectorised pass over the rows
# --------------------------------------------------------------------------------------------
@njit(**LOOP_JIT)
def node_q3(fam, y, n, eta0, w0, w1, w2, v0, v1, v2, phi, lphi, d1):
    """(sum_i l_i, sum_i dl_i/dphi, sum_i l'_i w_i (3,)) at eta = eta0 + w'v; l'_i into d1."""
    m = eta0.shape[0]
    S = 0.0
    P = 0.0
    G0 = 0.0
    G1 = 0.0
    G2 = 0.0
    if fam == BINOMIAL_LOGIT:
        for i in range(m):
            eta = eta0[i] + w0[i] * v0 + w1[i] * v1 + w2[i] * v2
            lp, p, q = logistic(eta)
            S += y[i] * eta - n[i] * lp
            d = y[i] * q - (n[i] - y[i]) * p
            d1[i] = d
            G0 += d * w0[i]
            G1 += d * w1[i]
            G2 += d * w2[i]
    elif fam == POISSON_LOG:
        for i in range(m):
            eta = eta0[i] + w0[i] * v0 + w1[i] * v1 + w2[i] * v2
            mu = vexp(eta)
            S += y[i] * eta - mu
            d = y[i] - mu
            d1[i] = d
            G0 += d * w0[i]
            G1 += d * w1[i]
            G2 += d * w2[i]
    elif fam == NEGBINOMIAL_LOG:
        for i in range(m):
            eta = eta0[i] + w0[i] * v0 + w1[i] * v1 + w2[i] * v2
            lp, s, sc = logistic(eta - lphi)
            a = y[i] + phi
            S += y[i] * eta - a * lp
            P += -lp + a * s / phi
            d = y[i] * sc - phi * s
            d1[i] = d
            G0 += d * w0[i]
            G1 += d * w1[i]
            G2 += d * w2[i]
    else:
        for i in range(m):
            a0, a1, _, _ = probit_row(y[i], n[i], eta0[i] + w0[i] * v0 + w1[i] * v1 + w2[i] * v2)
            S += a0
            d1[i] = a1
            G0 += a1 * w0[i]
            G1 += a1 * w1[i]
            G2 += a1 * w2[i]
    return S, P, G0, G1, G2
