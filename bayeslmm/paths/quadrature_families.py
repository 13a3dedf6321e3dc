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
import numba.core.cpu
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ..cachedir import numba_cache_dir
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
# numba's reference counting off, for functions that allocate nothing: every array view and every
# array argument of a call otherwise costs an atomic increment and decrement, a quarter of the AGHQ
# kernel's time on small groups (quadrature_kernel's docstring). A private numba option, so only
# where this numba has it (without it the code is the same, only slower).
NO_NRT = {"_nrt": False} if hasattr(numba.core.cpu.CPUTargetOptions, "_nrt") else {}
LOOP_JIT = dict(cache=True, nogil=True, error_model="numpy", fastmath=_FM, **NO_NRT)


def njit(**options):
    """``numba.njit(**options)`` with its on-disk cache in the user's cache folder, never in the installed
    package (:mod:`bayeslmm.cachedir`; the same rule as the Gaussian kernel's ``_cached_njit``)."""
    def decorate(fn):
        with numba_cache_dir():
            return numba.njit(**options)(fn)
    return decorate


@intrinsic
def _bits_to_double(typingctx, x):
    sig = types.float64(types.int64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return sig, codegen


@intrinsic
def _double_to_bits(typingctx, x):
    sig = types.int64(types.float64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))
    return sig, codegen


#: 2^52 + 1023: for an integer-valued k in [-1022, 1023], the low bits of k + _EXP_MAGIC are k + 1023
_EXP_MAGIC = 4503599627371519.0


@njit(**_INL)
def vexp(x):
    """e^x (relative error < 1e-15) for x clamped to [-708, 709]; vectorisable."""
    x = min(max(x, -708.0), 709.0)
    k = np.floor(x * _LOG2E + 0.5)       # np.floor stays a double (math.floor is an int: scalar per lane)
    r = x - k * _LN2HI - k * _LN2LO
    p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6 + r * (1.0 / 24 + r * (1.0 / 120 + r * (
        1.0 / 720 + r * (1.0 / 5040 + r * (1.0 / 40320 + r * (1.0 / 362880 + r * (
            1.0 / 3628800 + r * (1.0 / 39916800 + r * (1.0 / 479001600 + r * (1.0 / 6227020800)))))))))))))
    # 2^k built from the bits of k + 2^52 + 1023 (shifted into the exponent field), not by a
    # double -> int64 conversion, which AVX2 has no vector instruction for
    return p * _bits_to_double(_double_to_bits(k + _EXP_MAGIC) << 52)


@njit(**_INL)
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


@njit(**_INL_IR)
def sigmoids(x):
    """(e^-|x|, sigmoid(x), sigmoid(-x)), stable for any x; vectorisable (:func:`logistic` without
    its logarithm)."""
    e = vexp(-abs(x))
    inv = 1.0 / (1.0 + e)
    pos = x >= 0.0
    return e, inv if pos else e * inv, e * inv if pos else inv


@njit(**_INL_IR)
def logistic(x):
    """(log(1 + e^x), sigmoid(x), sigmoid(-x)), stable for any x; vectorisable."""
    e, p, q = sigmoids(x)
    return max(x, 0.0) + vlog1p01(e), p, q


@njit(cache=True, nogil=True, error_model="numpy")
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


@njit(cache=True, nogil=True, error_model="numpy")
def probit_row(y, n, eta):
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


@njit(cache=True, nogil=True, error_model="numpy")
def digamma(x):
    """psi(x) for x > 0 (recurrence up to 6, then the asymptotic series; error < 1e-14)."""
    acc = 0.0
    while x < 6.0:
        acc -= 1.0 / x
        x += 1.0
    f = 1.0 / (x * x)
    s = f * (1.0 / 12 - f * (1.0 / 120 - f * (1.0 / 252 - f * (1.0 / 240 - f * (1.0 / 132)))))
    return acc + math.log(x) - 0.5 / x - s


@njit(cache=True, nogil=True, error_model="numpy")
def nb_phi_part(y, phi):
    """(lgamma(y + phi) - lgamma(phi) - y log phi, its derivative in phi) of one row."""
    if y == 0.0:
        return 0.0, 0.0
    return (math.lgamma(y + phi) - math.lgamma(phi) - y * math.log(phi),
            digamma(y + phi) - digamma(phi) - y / phi)


# --------------------------------------------------------------------------------------------
# Row loops (one per family, branch-free inside)
# --------------------------------------------------------------------------------------------
@njit(**LOOP_JIT)
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
            _, a1, a2, _ = probit_row(y[i], n[i], eta[i])
            d1[i] = a1
            d2[i] = a2


@njit(**LOOP_JIT)
def curvature_floors(fam, y, n, eta, r, phi, lphi, c):
    """c_i, a lower bound of -l''(x) over |x - eta_i| <= r_i, for every row (the draws' envelope,
    :mod:`bayeslmm.paths.quadrature_draws`). Logit and negative binomial: n p (1 - p) is symmetric
    about p = 1/2 and falls with |eta| (|eta - log phi|), so its least value is at
    |eta_i| + r_i; Poisson: e^x grows, so it is e^(eta_i - r_i); probit: the curvature of
    y log Phi(x), y (1 - Var(Z | Z < x)), falls with x and that of (n - y) log Phi(-x) rises, so
    each term is bounded at its own end."""
    m = eta.shape[0]
    if fam == BINOMIAL_LOGIT:
        for i in range(m):
            _, p, q = sigmoids(abs(eta[i]) + r[i])
            c[i] = n[i] * p * q
    elif fam == POISSON_LOG:
        for i in range(m):
            c[i] = vexp(eta[i] - r[i])
    elif fam == NEGBINOMIAL_LOG:
        for i in range(m):
            _, p, q = sigmoids(abs(eta[i] - lphi) + r[i])
            c[i] = (y[i] + phi) * p * q
    else:
        for i in range(m):
            c[i] = -(probit_row(y[i], y[i], eta[i] + r[i])[2] + probit_row(0.0, n[i] - y[i], eta[i] - r[i])[2])


@njit(**LOOP_JIT)
def fam_mode(fam, y, n, eta, phi, lphi, l, d1, d2, d3, pl, p1, p2, want_l=True):
    """l, l', l'', l''', and the phi-derivatives of l, l', l'' of every row (at the mode).
    ``want_l=False``: l may be left unwritten (binomial logit then takes :func:`sigmoids`, without
    :func:`logistic`'s logarithm; the kernel reads l only for the one-node rule)."""
    m = eta.shape[0]
    if fam == BINOMIAL_LOGIT and not want_l:
        for i in range(m):
            _, p, q = sigmoids(eta[i])
            pq = p * q
            d1[i] = y[i] * q - (n[i] - y[i]) * p
            d2[i] = -n[i] * pq
            d3[i] = -n[i] * pq * (q - p)
            pl[i] = 0.0
            p1[i] = 0.0
            p2[i] = 0.0
    elif fam == BINOMIAL_LOGIT:
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
            a0, a1, a2, a3 = probit_row(y[i], n[i], eta[i])
            l[i] = a0
            d1[i] = a1
            d2[i] = a2
            d3[i] = a3
            pl[i] = 0.0
            p1[i] = 0.0
            p2[i] = 0.0
