"""Per-row log-likelihoods of the GLMM families in the linear predictor, with the derivatives AGHQ needs.

Numba helpers of :mod:`bayeslmm.paths.quadrature_kernel` (no PyMC, no PyTensor). Each family is a
log-concave function l(eta) of one row's linear predictor eta = offset + x'b + z'u, written without
its data-only constants (log binomial coefficient, -log y!), which the caller adds per group:

====  ====================  =================================================================
code  family / link         l(eta)
====  ====================  =================================================================
0     binomial / logit      y eta - n log(1 + e^eta)                   (bernoulli: n = 1)
1     binomial / probit     y log Phi(eta) + (n - y) log Phi(-eta)
2     poisson / log         y eta - e^eta
3     negbinomial / log     y eta - (y + phi) log(1 + e^(eta - log phi))   (Var = mu + mu^2/phi)
====  ====================  =================================================================

For the negative binomial the eta-free part of the log-density, lgamma(y + phi) - lgamma(phi) -
y log phi, is :func:`nb_phi_part`. Newton's method needs l' and l''; a quadrature node l, l' and
dl/dphi; the mode also l''' and the derivatives of l' and l'' in phi (for the gradient through the
mode and the curvature), all in closed form.

**Speed**: every loop below runs over a group's rows with no branch inside, and the exponential
and log(1 + e) are polynomial (Cody-Waite reduction, 2^k by a bit cast), so LLVM vectorises them
(AVX2: 4 rows per instruction); libm's ``exp``/``log1p`` are scalar calls and were 5x slower here.
Both are accurate to a few ulp (tested against numpy). The probit rows call ``erfc`` and stay
scalar.

**Tails**: log(1 + e^x) and the logistic function come from e^-|x| (no overflow, no
cancellation); log Phi and the inverse Mills ratio phi/Phi use erfc down to x = -37 and the
asymptotic series of the Mills ratio below (relative error < 1e-12), so a probit row stays finite
for any finite eta. The exponential is clamped to [-708, 709] (a Poisson mean beyond e^709 makes
the log-likelihood about -1e308 either way).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .quadrature import BINOMIAL_LOGIT, NEGBINOMIAL_LOG, POISSON_LOG


_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_LOG2E = 1.4426950408889634
_LN2HI = 6.93147180369123816490e-01
_LN2LO = 1.90821492927058770002e-10
_LN2 = math.log(2.0)
_SQRT2 = math.sqrt(2.0)
_FM = {"contract", "nsz", "arcp", "reassoc"}
# no reassociation inside exp/log: it would fold the two-constant Cody-Waite reduction
# (x - k ln2_hi - k ln2_lo) and cost ~5 bits; LLVM keeps these per-instruction flags when it
# inlines them into the (reassociating, vectorised) row loops
_INL = dict(cache=True, nogil=True, error_model="numpy", fastmath={"contract", "nsz", "arcp"})
# logistic is inlined at numba's IR level (LLVM then vectorises the loops it sits in); inlining
# everything there made a cold compile 5x longer for no further speed
_INL_IR = dict(_INL, inline="always")
_LOOP = dict(cache=True, nogil=True, error_model="numpy", fastmath=_FM)


@intrinsic
def _bits_to_double(typingctx, x):
    sig = types.float64(types.int64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return sig, codegen


@numba.njit(**_INL)
def vexp(x):
    """e^x (relative error < 1e-15) for x clamped to [-708, 709]; vectorisable."""
    x = min(max(x, -708.0), 709.0)
    k = math.floor(x * _LOG2E + 0.5)
    r = x - k * _LN2HI - k * _LN2LO
    p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6 + r * (1.0 / 24 + r * (1.0 / 120 + r * (
        1.0 / 720 + r * (1.0 / 5040 + r * (1.0 / 40320 + r * (1.0 / 362880 + r * (
            1.0 / 3628800 + r * (1.0 / 39916800 + r * (1.0 / 479001600 + r * (1.0 / 6227020800)))))))))))))
    return p * _bits_to_double((np.int64(k) + 1023) << 52)


@numba.njit(**_INL)
def vlog1p01(e):
    """log(1 + e) for e in [0, 1] (absolute error < 3e-16); vectorisable.

    m = 1 + e is halved when above sqrt 2 (exact), so m lies in [1/sqrt 2, sqrt 2] and
    s = (m - 1)/(m + 1) in [-0.172, 0.172]; log m = 2 atanh(s), whose series to s^21 is exact to
    double precision there.
    """
    m = 1.0 + e
    big = m > _SQRT2
    m = m * 0.5 if big else m
    s = (m - 1.0) / (m + 1.0)
    s2 = s * s
    p = 2.0 * s * (1.0 + s2 * (1.0 / 3 + s2 * (1.0 / 5 + s2 * (1.0 / 7 + s2 * (1.0 / 9 + s2 * (
        1.0 / 11 + s2 * (1.0 / 13 + s2 * (1.0 / 15 + s2 * (1.0 / 17 + s2 * (1.0 / 19 + s2 * (1.0 / 21)))))))))))
    return p + (_LN2 if big else 0.0)


@numba.njit(**_INL_IR)
def logistic(x):
    """(log(1 + e^x), sigmoid(x), sigmoid(-x)), stable for any x; vectorisable."""
    e = vexp(-abs(x))
    inv = 1.0 / (1.0 + e)
    pos = x >= 0.0
    return max(x, 0.0) + vlog1p01(e), inv if pos else e * inv, e * inv if pos else inv


@numba.njit(cache=True, nogil=True, error_model="numpy")
def log_ndtr_mills(x):
    """(log Phi(x), phi(x) / Phi(x)) for any finite x."""
    if x < -37.0:
        t = -x
        t2 = 1.0 / (t * t)
        m = (1.0 - t2 * (1.0 - 3.0 * t2 * (1.0 - 5.0 * t2 * (1.0 - 7.0 * t2 * (1.0 - 9.0 * t2))))) / t
        return -0.5 * t * t - _LOG_SQRT_2PI + math.log(m), 1.0 / m
    dens = math.exp(-0.5 * x * x - _LOG_SQRT_2PI)
    if x > 0.0:
        tail = 0.5 * math.erfc(x * _INV_SQRT2)
        return math.log1p(-tail), dens / (1.0 - tail)
    cdf = 0.5 * math.erfc(-x * _INV_SQRT2)
    return math.log(cdf), dens / cdf


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _probit_row(y, n, eta):
    """(l, l', l'', l''') of one probit row; r(x) = phi/Phi, r' = -r (x + r), r'' = -r'(x + r) - r (1 + r')."""
    l = 0.0
    d1 = 0.0
    d2 = 0.0
    d3 = 0.0
    if y > 0.0:
        lc, r = log_ndtr_mills(eta)
        r1 = -r * (eta + r)
        l += y * lc
        d1 += y * r
        d2 += y * r1
        d3 += y * (-r1 * (eta + r) - r * (1.0 + r1))
    if n - y > 0.0:
        lc, r = log_ndtr_mills(-eta)
        r1 = -r * (r - eta)
        l += (n - y) * lc
        d1 -= (n - y) * r
        d2 += (n - y) * r1
        d3 -= (n - y) * (-r1 * (r - eta) - r * (1.0 + r1))
    return l, d1, d2, d3


@numba.njit(cache=True, nogil=True, error_model="numpy")
def digamma(x):
    """psi(x) for x > 0 (recurrence up to 6, then the asymptotic series; error < 1e-14)."""
    acc = 0.0
    while x < 6.0:
        acc -= 1.0 / x
        x += 1.0
    f = 1.0 / (x * x)
    s = f * (1.0 / 12 - f * (1.0 / 120 - f * (1.0 / 252 - f * (1.0 / 240 - f * (1.0 / 132)))))
    return acc + math.log(x) - 0.5 / x - s


@numba.njit(cache=True, nogil=True, error_model="numpy")
def nb_phi_part(y, phi):
    """(lgamma(y + phi) - lgamma(phi) - y log phi, its derivative in phi) of one row."""
    if y == 0.0:
        return 0.0, 0.0
    return (math.lgamma(y + phi) - math.lgamma(phi) - y * math.log(phi),
            digamma(y + phi) - digamma(phi) - y / phi)


# --------------------------------------------------------------------------------------------
# Row loops (one per family, branch-free inside)
# --------------------------------------------------------------------------------------------
@numba.njit(**_LOOP)
def fam_newton(fam, y, n, eta, phi, lphi, d1, d2):
    """l' and l'' of every row (what a Newton step needs)."""
    m = eta.shape[0]
    if fam == BINOMIAL_LOGIT:
        for i in range(m):
            _, p, q = logistic(eta[i])
            d1[i] = y[i] * q - (n[i] - y[i]) * p
            d2[i] = -n[i] * p * q
    elif fam == POISSON_LOG:
        for i in range(m):
            mu = vexp(eta[i])
            d1[i] = y[i] - mu
            d2[i] = -mu
    elif fam == NEGBINOMIAL_LOG:
        for i in range(m):
            _, s, sc = logistic(eta[i] - lphi)
            d1[i] = y[i] * sc - phi * s
            d2[i] = -(y[i] + phi) * s * sc
    else:
        for i in range(m):
            _, a1, a2, _ = _probit_row(y[i], n[i], eta[i])
            d1[i] = a1
            d2[i] = a2


@numba.njit(**_LOOP)
def fam_node(fam, y, n, eta, phi, lphi, l, d1, pl):
    """l, l' and dl/dphi of every row (what a quadrature node needs)."""
    m = eta.shape[0]
    if fam == BINOMIAL_LOGIT:
        for i in range(m):
            lp, p, q = logistic(eta[i])
            l[i] = y[i] * eta[i] - n[i] * lp
            d1[i] = y[i] * q - (n[i] - y[i]) * p
            pl[i] = 0.0
    elif fam == POISSON_LOG:
        for i in range(m):
            mu = vexp(eta[i])
            l[i] = y[i] * eta[i] - mu
            d1[i] = y[i] - mu
            pl[i] = 0.0
    elif fam == NEGBINOMIAL_LOG:
        for i in range(m):
            lp, s, sc = logistic(eta[i] - lphi)
            a = y[i] + phi
            l[i] = y[i] * eta[i] - a * lp
            d1[i] = y[i] * sc - phi * s
            pl[i] = -lp + a * s / phi
    else:
        for i in range(m):
            a0, a1, _, _ = _probit_row(y[i], n[i], eta[i])
            l[i] = a0
            d1[i] = a1
            pl[i] = 0.0


@numba.njit(**_LOOP)
def fam_mode(fam, y, n, eta, phi, lphi, l, d1, d2, d3, pl, p1, p2):
    """l, l', l'', l''', and the phi-derivatives of l, l', l'' of every row (at the mode)."""
    m = eta.shape[0]
    if fam == BINOMIAL_LOGIT:
        for i in range(m):
            lp, p, q = logistic(eta[i])
            pq = p * q
            l[i] = y[i] * eta[i] - n[i] * lp
            d1[i] = y[i] * q - (n[i] - y[i]) * p
            d2[i] = -n[i] * pq
            d3[i] = -n[i] * pq * (q - p)
            pl[i] = 0.0
            p1[i] = 0.0
            p2[i] = 0.0
    elif fam == POISSON_LOG:
        for i in range(m):
            mu = vexp(eta[i])
            l[i] = y[i] * eta[i] - mu
            d1[i] = y[i] - mu
            d2[i] = -mu
            d3[i] = -mu
            pl[i] = 0.0
            p1[i] = 0.0
            p2[i] = 0.0
    elif fam == NEGBINOMIAL_LOG:
        for i in range(m):
            lp, s, sc = logistic(eta[i] - lphi)
            a = y[i] + phi
            ssc = s * sc
            l[i] = y[i] * eta[i] - a * lp
            d1[i] = y[i] * sc - phi * s
            d2[i] = -a * ssc
            d3[i] = -a * ssc * (sc - s)
            pl[i] = -lp + a * s / phi
            p1[i] = -s + a * ssc / phi
            p2[i] = -ssc + a * (sc - s) * ssc / phi
    else:
        for i in range(m):
            a0, a1, a2, a3 = _probit_row(y[i], n[i], eta[i])
            l[i] = a0
            d1[i] = a1
            d2[i] = a2
            d3[i] = a3
            pl[i] = 0.0
            p1[i] = 0.0
            p2[i] = 0.0


# --------------------------------------------------------------------------------------------
# One term (q = 1, the common random intercept): the linear predictor and the sums fused into
# the row loop, so that a Newton step or a node is a single vectorised pass over the rows
# --------------------------------------------------------------------------------------------
@numba.njit(**_LOOP)
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
            _, a1, a2, _ = _probit_row(y[i], n[i], eta0[i] + w[i] * v)
            g += a1 * w[i]
            h -= a2 * w[i] * w[i]
    return g, h


@numba.njit(**_LOOP)
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
            a0, a1, _, _ = _probit_row(y[i], n[i], eta0[i] + w[i] * v)
            S += a0
            d1[i] = a1
            G += a1 * w[i]
    return S, P, G


@numba.njit(**_LOOP)
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
            a0, a1, a2, a3 = _probit_row(y[i], n[i], eta0[i] + w[i] * v)
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


@numba.njit(**_LOOP)
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


@numba.njit(**_LOOP)
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


@numba.njit(**_LOOP)
def exp_rows(eta0, A):
    """A_i = e^eta0_i and max_i |eta0_i| (two loops, so that both vectorise)."""
    for i in range(eta0.shape[0]):
        A[i] = vexp(eta0[i])
    big = 0.0
    for i in range(eta0.shape[0]):
        a = abs(eta0[i])
        big = a if a > big else big
    return big


@numba.njit(**_LOOP)
def unit_rows(z, n):
    """Whether every z_i and n_i is 1 (a random intercept over single-trial rows)."""
    s = 0.0
    for i in range(z.shape[0]):
        s += abs(z[i] - 1.0) + abs(n[i] - 1.0)
    return s == 0.0


@numba.njit(**_LOOP)
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
@numba.njit(**_LOOP)
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
            a0, a1, _, _ = _probit_row(y[i], n[i], eta0[i] + w0[i] * v0 + w1[i] * v1 + w2[i] * v2)
            S += a0
            d1[i] = a1
            G0 += a1 * w0[i]
            G1 += a1 * w1[i]
            G2 += a1 * w2[i]
    return S, P, G0, G1, G2
