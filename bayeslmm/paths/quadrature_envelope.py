"""The exact two- and three-term draws' ball envelope (numba; :mod:`bayeslmm.paths.quadrature_draws`).

The target, exp f(v) with f(v) = sum_i l_i(eta0_i + w_i'v) - v'v/2 (:func:`target_q3`), is
log-concave with its maximum at the mode v*, where its -Hessian is H = L L'. In y = L'(v - v*):

* on the ball |y| <= rho (:data:`RHO` = 3), each row's linear predictor stays within
  r_i = rho |L^-1 w_i| of its value at the mode, so its curvature -l_i'' is at least c_i, its least
  value over that interval (:func:`~bayeslmm.paths.quadrature_families.curvature_floors`), and
  -f'' >= B = L^-1 (I + sum_i c_i w_i w_i') L^-T along every segment from the mode in the ball;
* with h(t) = f(v* + L^-T t d) - f(v*), |d| = 1: h(0) = h'(0) = 0 and h'' <= -d'Bd on [0, rho], so
  h(t) <= -t^2 d'Bd / 2 there, h(rho) <= -rho^2 d'Bd / 2 and h'(rho) <= -rho d'Bd, and beyond rho
  concavity keeps h below its tangent at rho: h(t) <= -beta0 rho (t - rho / 2), beta0 the least
  eigenvalue of B (for three terms a Gershgorin lower bound);
* so exp h(y) <= e^(-y'By/2) + [|y| > rho] e^(-a (|y| - rho/2)), a = beta0 rho: a Gaussian (mass
  (2 pi)^(q/2) / det chol(B)) plus a radial piece (mass S_q e^(-a rho/2) sum_k C(q-1, k)
  rho^(q-1-k) k! / a^(k+1), S_q the unit sphere's area), which :func:`draw_ball` samples exactly (a
  uniform direction and the radius rho + s, s from a mixture of Gamma(k + 1, a)); a proposal is
  accepted with probability exp h(y) over the envelope.

The Laplace approximation's mass is (2 pi)^(q/2) in y, so the envelope's over it is the expected
number of proposals a draw (:func:`ball_envelope`); N(v*, I), the bound of the prior's curvature
alone, has root_det = det L times that mass. B tends to H as the group's information grows, so
the ball envelope does not degrade with it: on the bench's binomial slope groups (20 rows) 1.5
proposals a draw against N(v*, I)'s 7.3.
"""

from __future__ import annotations

import math

import numpy as np

from .quadrature_families import NO_NRT, njit, curvature_floors
from .quadrature_fused import value_q3
from .quadrature_mode import chol, solve_upper_t
from .quadrature_rng import normal_pair, uniform

__all__ = ["RHO", "target_q3", "ball_envelope", "draw_ball"]

#: the ball's radius in y = L'(v - v*) (the Laplace approximation's scale)
RHO = 3.0
_LOG_2PI = math.log(2.0 * math.pi)
_NO_NRT = dict(cache=True, nogil=True, error_model="numpy", **NO_NRT)


@njit(**_NO_NRT)
def target_q3(fam, y, n, eta0, w, q, vv, phi, lphi, pow_form):
    """f(vv) (without constants) for q = 2, 3, by the fused value pass."""
    w2 = w[2] if q == 3 else w[1]
    v2 = vv[2] if q == 3 else 0.0
    S = value_q3(fam, y, n, eta0, w[0], w[1], w2, vv[0], vv[1], v2, phi, lphi, pow_form)
    for a in range(q):
        S -= 0.5 * vv[a] * vv[a]
    return S


@njit(**_NO_NRT)
def ball_envelope(fam, y, n, eta, w, q, L, phi, lphi, B, LB, R, C):
    """The ball envelope (module docstring) of the group whose mode has linear predictor ``eta``
    and -Hessian L L': B into ``B`` and its Cholesky factor into ``LB`` (``R``, ``C`` (m,) scratch:
    each row's reach and curvature floor). Returns (log E, a, p_G): the log of the expected number
    of proposals a draw (the envelope's mass in y = L'(v - v*) over the Laplace approximation's,
    (2 pi)^(q/2)), the outer piece's slope a and the Gaussian piece's share of the envelope's mass;
    log E = inf where it does not apply."""
    m = eta.shape[0]
    for a in range(q):                  # L^-1 L^-T, the prior's curvature in y
        for c in range(a + 1):
            acc = 0.0
            for k in range(c + 1):
                acc += _linv(L, q, a, k) * _linv(L, q, c, k)
            B[a, c] = acc
    # s_i = L^-1 w_i, written out (forward substitution; for two terms the third row's factor is
    # zero, so s2 is); in the ball |y| <= rho the linear predictor moves by at most rho |s_i|
    i00, i11 = 1.0 / L[0, 0], 1.0 / L[1, 1]
    l10 = L[1, 0]
    w0, w1 = w[0], w[1]
    w2 = w[2] if q == 3 else w[1]
    i22 = 1.0 / L[2, 2] if q == 3 else 0.0
    l20 = L[2, 0] if q == 3 else 0.0
    l21 = L[2, 1] if q == 3 else 0.0
    for i in range(m):
        s0 = w0[i] * i00
        s1 = (w1[i] - l10 * s0) * i11
        s2 = (w2[i] - l20 * s0 - l21 * s1) * i22
        R[i] = RHO * math.sqrt(s0 * s0 + s1 * s1 + s2 * s2)
    curvature_floors(fam, y, n, eta, R, phi, lphi, C)
    b00 = b10 = b11 = b20 = b21 = b22 = 0.0
    for i in range(m):
        s0 = w0[i] * i00
        s1 = (w1[i] - l10 * s0) * i11
        s2 = (w2[i] - l20 * s0 - l21 * s1) * i22
        b00 += C[i] * s0 * s0
        b10 += C[i] * s1 * s0
        b11 += C[i] * s1 * s1
        b20 += C[i] * s2 * s0
        b21 += C[i] * s2 * s1
        b22 += C[i] * s2 * s2
    B[0, 0] += b00
    B[1, 0] += b10
    B[1, 1] += b11
    if q == 3:
        B[2, 0] += b20
        B[2, 1] += b21
        B[2, 2] += b22
    for a in range(q):
        for c in range(a):
            B[c, a] = B[a, c]
    if not chol(B, q, LB):
        return np.inf, 1.0, 1.0
    if q == 2:                          # the least eigenvalue of B, or a lower bound (Gershgorin)
        h = 0.5 * (B[0, 0] - B[1, 1])
        beta0 = 0.5 * (B[0, 0] + B[1, 1]) - math.sqrt(h * h + B[0, 1] * B[0, 1])
    else:
        beta0 = np.inf
        for a in range(q):
            r = B[a, a]
            for c in range(q):
                if c != a:
                    r -= abs(B[a, c])
            beta0 = min(beta0, r)
    if not beta0 > 0.0:
        return np.inf, 1.0, 1.0
    slope = beta0 * RHO
    log_mg = 0.5 * q * _LOG_2PI
    for a in range(q):
        log_mg -= math.log(LB[a, a])
    log_mo = (_LOG_2PI if q == 2 else math.log(4.0 * math.pi)) - 0.5 * slope * RHO + math.log(_radial(q, slope))
    top = max(log_mg, log_mo)
    log_m = top + math.log(math.exp(log_mg - top) + math.exp(log_mo - top))
    return log_m - 0.5 * q * _LOG_2PI, slope, math.exp(log_mg - log_m)


@njit(**_NO_NRT)
def _linv(L, q, a, c):
    """(L^-1)[a, c] of a lower-triangular L with q <= 3."""
    if c > a:
        return 0.0
    if c == a:
        return 1.0 / L[a, a]
    if a == c + 1:
        return -L[a, c] / (L[a, a] * L[c, c])
    # a = 2, c = 0
    return (L[2, 1] * L[1, 0] - L[2, 0] * L[1, 1]) / (L[0, 0] * L[1, 1] * L[2, 2])


@njit(**_NO_NRT)
def _radial(q, a):
    """sum_k C(q-1, k) rho^(q-1-k) k! / a^(k+1): the outer piece's radial mass over e^(-a rho / 2)."""
    ia = 1.0 / a
    if q == 2:
        return RHO * ia + ia * ia
    return RHO * RHO * ia + 2.0 * RHO * ia * ia + 2.0 * ia * ia * ia


@njit(**_NO_NRT)
def draw_ball(fam, y, n, eta0, w, q, v, L, phi, lphi, pow_form, state, max_tries, slope, p_gauss, LB,
                xbuf, zbuf, ybuf, out):
    """One exact draw of v (q = 2, 3) by rejection from the ball envelope (module docstring; ``LB``,
    ``slope`` and ``p_gauss`` = m_G / m from :func:`ball_envelope`), into ``out``; returns the
    number of proposals it took, or -1 after ``max_tries`` without an acceptance."""
    f0 = target_q3(fam, y, n, eta0, w, q, v, phi, lphi, pow_form)
    for tries in range(1, max_tries + 1):
        if uniform(state) < p_gauss:
            for a in range(0, q, 2):
                z1, z2 = normal_pair(state)
                zbuf[a] = z1
                if a + 1 < q:
                    zbuf[a + 1] = z2
            solve_upper_t(LB, q, zbuf, ybuf)            # y = LB^-T z ~ N(0, B^-1)
        else:
            # a uniform direction and radius rho + s, s from the radial density (s + rho)^(q-1) e^(-a s):
            # a mixture of Gamma(k + 1, a), k < q, with the weights of _radial's terms
            zn = 0.0
            for a in range(0, q, 2):
                z1, z2 = normal_pair(state)
                zbuf[a] = z1
                zn += z1 * z1
                if a + 1 < q:
                    zbuf[a + 1] = z2
                    zn += z2 * z2
            ia = 1.0 / slope
            u = uniform(state) * _radial(q, slope)
            k = 0
            if q == 2:
                k = 0 if u < RHO * ia else 1
            elif u >= RHO * RHO * ia:
                k = 1 if u < RHO * RHO * ia + 2.0 * RHO * ia * ia else 2
            sr = 0.0
            for _ in range(k + 1):                      # Gamma(k + 1, a): k + 1 exponentials over a
                sr -= math.log(uniform(state))
            t = (RHO + sr * ia) / math.sqrt(zn)
            for a in range(q):
                ybuf[a] = zbuf[a] * t
        # log envelope at y: log(e^(-y'By/2) + [|y| > rho] e^(-a (|y| - rho/2)))
        yy = 0.0
        qb = 0.0
        for a in range(q):
            yy += ybuf[a] * ybuf[a]
            t = 0.0
            for c in range(a, q):
                t += LB[c, a] * ybuf[c]                 # (LB' y)_a
            qb += t * t
        le = -0.5 * qb
        r = math.sqrt(yy)
        if r > RHO:
            lo = -slope * (r - 0.5 * RHO)
            top = max(le, lo)
            le = top + math.log(math.exp(le - top) + math.exp(lo - top))
        solve_upper_t(L, q, ybuf, xbuf)                 # v = v* + L^-T y
        for a in range(q):
            out[a] = v[a] + xbuf[a]
        fx = target_q3(fam, y, n, eta0, w, q, out, phi, lphi, pow_form)
        if math.log(uniform(state)) <= fx - f0 - le:
            return tries
    return -1
