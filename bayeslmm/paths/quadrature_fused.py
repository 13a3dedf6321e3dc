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
           "exp_rows", "unit_rows", "value_q3", "nodes_rows", "small_trials", "POW_MAX_TRIALS"]


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
# Two or three terms: all nodes of a group in one pass over its rows
# --------------------------------------------------------------------------------------------
#: largest number of trials a binomial row may have for :func:`nodes_rows`'s product form
POW_MAX_TRIALS = 15
#: rows between two renormalisations of the product form's running products: at most
#: POW_MAX_TRIALS factors of 1 + e <= 2 a row, so 64 rows stay below 2^960
_POW_BLOCK = 64


# --------------------------------------------------------------------------------------------
# Two or three terms: f at one point (the draws' proposals), the linear predictor fused into the
# row loop (the unused third term gets v2 = 0)
# --------------------------------------------------------------------------------------------
@njit(**LOOP_JIT)
def value_q3(fam, y, n, eta0, w0, w1, w2, v0, v1, v2, phi, lphi, pow_form):
    """sum_i l_i at eta = eta0 + w'v (no derivatives: a rejection proposal needs only the value).
    ``pow_form`` as in :func:`nodes_rows`: binomial-logit rows with small integer trials take the
    log(1 + e^-|eta|) terms as one logarithm of their product per _POW_BLOCK rows."""
    m = eta0.shape[0]
    S = 0.0
    if fam == BINOMIAL_LOGIT and pow_form:
        for r0 in range(0, m, _POW_BLOCK):
            pr = 1.0
            for i in range(r0, min(m, r0 + _POW_BLOCK)):
                eta = eta0[i] + w0[i] * v0 + w1[i] * v1 + w2[i] * v2
                o1 = 1.0 + vexp(-abs(eta))
                o2 = o1 * o1
                o4 = o2 * o2
                nb = int(n[i])
                pr *= (o1 if (nb & 1) != 0 else 1.0) * (o2 if (nb & 2) != 0 else 1.0) * \
                    (o4 if (nb & 4) != 0 else 1.0) * (o4 * o4 if (nb & 8) != 0 else 1.0)
                S += y[i] * eta - n[i] * max(eta, 0.0)
            S -= math.log(pr)
    elif fam == BINOMIAL_LOGIT:
        for i in range(m):
            eta = eta0[i] + w0[i] * v0 + w1[i] * v1 + w2[i] * v2
            lp, _, _ = logistic(eta)
            S += y[i] * eta - n[i] * lp
    elif fam == POISSON_LOG:
        for i in range(m):
            eta = eta0[i] + w0[i] * v0 + w1[i] * v1 + w2[i] * v2
            S += y[i] * eta - vexp(eta)
    elif fam == NEGBINOMIAL_LOG:
        for i in range(m):
            eta = eta0[i] + w0[i] * v0 + w1[i] * v1 + w2[i] * v2
            lp, _, _ = logistic(eta - lphi)
            S += y[i] * eta - (y[i] + phi) * lp
    else:
        for i in range(m):
            a0, _, _, _ = probit_row(y[i], n[i], eta0[i] + w0[i] * v0 + w1[i] * v1 + w2[i] * v2)
            S += a0
    return S


@njit(**LOOP_JIT)
def small_trials(n):
    """Whether every trial count in ``n`` is an integer in [0, POW_MAX_TRIALS] (the product form)."""
    ok = True
    for i in range(n.shape[0]):
        ok &= (n[i] >= 0.0) & (n[i] <= POW_MAX_TRIALS) & (n[i] == math.floor(n[i]))
    return ok


@njit(**LOOP_JIT)
def _nodes_logit_pow(y, n, es, s0, s1, s2, w0, w1, w2, z0, z1, z2, M, D, Sk, G0, G1, G2, Pr, Ex, r0, r1):
    """Rows r0:r1 of :func:`nodes_rows` for binomial-logit rows with small integer trials:
    n log(1 + e^eta) = n max(eta, 0) + log (1 + e^-|eta|)^n, and the logarithms of the products
    are taken once per node (by the caller), not once per row and node."""
    for i in range(r0, r1):
        e0 = es[i]
        a0 = s0[i]
        a1 = s1[i]
        a2 = s2[i]
        yi = y[i]
        ni = n[i]
        fi = ni - yi
        u0 = w0[i]
        u1 = w1[i]
        u2 = w2[i]
        nb = int(ni)
        b1 = (nb & 1) != 0
        b2 = (nb & 2) != 0
        b4 = (nb & 4) != 0
        b8 = (nb & 8) != 0
        Drow = D[i]
        for k in range(M):
            eta = e0 + a0 * z0[k] + a1 * z1[k] + a2 * z2[k]
            e = vexp(-abs(eta))
            o1 = 1.0 + e
            inv = 1.0 / o1
            pos = eta >= 0.0
            p = inv if pos else e * inv
            q = e * inv if pos else inv
            o2 = o1 * o1
            o4 = o2 * o2
            o8 = o4 * o4
            Pr[k] *= (o1 if b1 else 1.0) * (o2 if b2 else 1.0) * (o4 if b4 else 1.0) * (o8 if b8 else 1.0)
            Sk[k] += yi * eta - ni * max(eta, 0.0)
            d = yi * q - fi * p
            Drow[k] = d
            G0[k] += d * u0
            G1[k] += d * u1
            G2[k] += d * u2


@njit(**LOOP_JIT)
def _nodes_logit_pow2(y, n, es, s0, s1, w0, w1, z0, z1, M, D, Sk, G0, G1, Pr, r0, r1):
    """:func:`_nodes_logit_pow` for two terms: without the third term's zero row (an FMA and a
    sum per row and node fewer)."""
    for i in range(r0, r1):
        e0 = es[i]
        a0 = s0[i]
        a1 = s1[i]
        yi = y[i]
        ni = n[i]
        fi = ni - yi
        u0 = w0[i]
        u1 = w1[i]
        nb = int(ni)
        b1 = (nb & 1) != 0
        b2 = (nb & 2) != 0
        b4 = (nb & 4) != 0
        b8 = (nb & 8) != 0
        Drow = D[i]
        for k in range(M):
            eta = e0 + a0 * z0[k] + a1 * z1[k]
            e = vexp(-abs(eta))
            o1 = 1.0 + e
            inv = 1.0 / o1
            pos = eta >= 0.0
            p = inv if pos else e * inv
            q = e * inv if pos else inv
            o2 = o1 * o1
            o4 = o2 * o2
            o8 = o4 * o4
            Pr[k] *= (o1 if b1 else 1.0) * (o2 if b2 else 1.0) * (o4 if b4 else 1.0) * (o8 if b8 else 1.0)
            Sk[k] += yi * eta - ni * max(eta, 0.0)
            d = yi * q - fi * p
            Drow[k] = d
            G0[k] += d * u0
            G1[k] += d * u1


@njit(**LOOP_JIT)
def nodes_rows(fam, y, n, es, s0, s1, s2, w0, w1, w2, z0, z1, z2, M, q, phi, lphi, pow_form, D, Sk, Pk, G0, G1, G2,
               Pr, Ex, reset=True):
    """All M nodes of one group in one pass over its rows, the nodes innermost (so they vectorise).

    Node k's linear predictor is eta_ik = es_i + s_i'z_k (es the linear predictor at the mode,
    s_i = L^-1 w_i, z_k the standard node; unused third components are zero rows). Into
    Sk[k] = sum_i l_ik, Pk[k] = sum_i dl_ik/dphi, G.[k] = sum_i l'_ik w_i, D[i, k] = l'_ik.
    ``pow_form`` (binomial-logit rows whose trials pass :func:`small_trials`) takes the
    log(1 + e^eta) of all rows of a node as one logarithm of a product; Pr and Ex (M,) are its
    scratch. ``reset=False`` adds to Sk, Pk and G instead (rows taken in chunks). ``q`` the number of
    terms (two: the third rows are zero, and the product form's loop leaves them out).
    """
    m = es.shape[0]
    if reset:
        for k in range(M):
            Sk[k] = 0.0
            Pk[k] = 0.0
            G0[k] = 0.0
            G1[k] = 0.0
            G2[k] = 0.0
    if fam == BINOMIAL_LOGIT and pow_form:
        two = q == 2           # the third term's rows are zero (z2, s2, w2), so is G2
        for k in range(M):
            Ex[k] = 0.0
        for r0 in range(0, m, _POW_BLOCK):
            for k in range(M):
                Pr[k] = 1.0
            if two:
                _nodes_logit_pow2(y, n, es, s0, s1, w0, w1, z0, z1, M, D, Sk, G0, G1, Pr, r0, min(m, r0 + _POW_BLOCK))
            else:
                _nodes_logit_pow(y, n, es, s0, s1, s2, w0, w1, w2, z0, z1, z2, M, D, Sk, G0, G1, G2, Pr, Ex, r0,
                                 min(m, r0 + _POW_BLOCK))
            for k in range(M):
                Ex[k] += math.log(Pr[k])
        for k in range(M):
            Sk[k] -= Ex[k]
        return
    for i in range(m):
        e0 = es[i]
        a0 = s0[i]
        a1 = s1[i]
        a2 = s2[i]
        yi = y[i]
        ni = n[i]
        u0 = w0[i]
        u1 = w1[i]
        u2 = w2[i]
        Drow = D[i]
        if fam == BINOMIAL_LOGIT:
            for k in range(M):
                eta = e0 + a0 * z0[k] + a1 * z1[k] + a2 * z2[k]
                lp, p, q = logistic(eta)
                Sk[k] += yi * eta - ni * lp
                d = yi * q - (ni - yi) * p
                Drow[k] = d
                G0[k] += d * u0
                G1[k] += d * u1
                G2[k] += d * u2
        elif fam == POISSON_LOG:
            for k in range(M):
                eta = e0 + a0 * z0[k] + a1 * z1[k] + a2 * z2[k]
                mu = vexp(eta)
                Sk[k] += yi * eta - mu
                d = yi - mu
                Drow[k] = d
                G0[k] += d * u0
                G1[k] += d * u1
                G2[k] += d * u2
        elif fam == NEGBINOMIAL_LOG:
            a = yi + phi
            for k in range(M):
                eta = e0 + a0 * z0[k] + a1 * z1[k] + a2 * z2[k]
                lp, s, sc = logistic(eta - lphi)
                Sk[k] += yi * eta - a * lp
                Pk[k] += -lp + a * s / phi
                d = yi * sc - phi * s
                Drow[k] = d
                G0[k] += d * u0
                G1[k] += d * u1
                G2[k] += d * u2
        else:
            for k in range(M):
                a0_, d, _, _ = probit_row(yi, ni, e0 + a0 * z0[k] + a1 * z1[k] + a2 * z2[k])
                Sk[k] += a0_
                Drow[k] = d
                G0[k] += d * u0
                G1[k] += d * u1
                G2[k] += d * u2
