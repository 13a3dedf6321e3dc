"""Each group's mode for AGHQ: Newton's method, the row passes it uses, and the q x q algebra (numba).

Helpers of :mod:`bayeslmm.paths.quadrature_kernel` and :mod:`bayeslmm.paths.quadrature_draws`. In
the standardised effects v (u = T v) the log integrand f(v) = sum_i l_i(eta0_i + w_i'v) - v'v/2 is
strictly concave with -Hessian H = I + sum_i c_i w_i w_i' >= I, so Newton's method with step
halving on the gradient norm finds the unique mode from any start. Iterations stop once a step is
below :data:`NEWTON_TOL` and that last step is taken: with quadratic convergence the mode is then
exact to ~1e-12 whatever the start, which keeps the log-likelihood a deterministic function of
the parameters (HMC needs that). The row passes take w as (q, m) arrays, rows last, so that the
loops over a group's rows vectorise; one term (q = 1) has its own fused scalar path.
"""

from __future__ import annotations

import math

import numpy as np

from .quadrature_families import NO_NRT, njit, fam_newton
from .quadrature_fused import newton_q1, newton_q1_intercept

__all__ = ["find_mode", "find_mode_q1", "intercept_ok", "linpred", "rowsum", "grad_hess", "chol", "solve_lower",
           "solve_upper_t", "chol_adjoint", "NEWTON_TOL", "MAX_NEWTON", "n_start_coords", "start_coords", "start_params",
           "coords_into", "group_start", "newton_v0"]

NEWTON_TOL = 1e-6       # |Newton step| (standardised scale) below which one last step is taken:
                        # quadratic convergence leaves an error ~1e-12 after it
MAX_NEWTON = 100
_FM = {"contract", "nsz", "arcp", "reassoc"}
_NJIT = dict(cache=True, nogil=True, error_model="numpy", fastmath=_FM, **NO_NRT)   # nothing here allocates
_VEC = _NJIT


# --------------------------------------------------------------------------------------------
# q x q algebra (q <= 3), written out
# --------------------------------------------------------------------------------------------
@njit(**_NJIT)
def chol(A, q, L):
    """Lower Cholesky factor of the SPD A into L; False if A is not positive definite."""
    for i in range(q):
        for k in range(i + 1):
            v = A[i, k]
            for m in range(k):
                v -= L[i, m] * L[k, m]
            if i == k:
                if not v > 0.0:
                    return False
                L[i, i] = math.sqrt(v)
            else:
                L[i, k] = v / L[k, k]
        for k in range(i + 1, q):
            L[i, k] = 0.0
    return True


@njit(**_NJIT)
def solve_lower(L, q, b, x):
    """x = L^-1 b."""
    for i in range(q):
        v = b[i]
        for m in range(i):
            v -= L[i, m] * x[m]
        x[i] = v / L[i, i]


@njit(**_NJIT)
def solve_upper_t(L, q, b, x):
    """x = L^-T b."""
    for i in range(q - 1, -1, -1):
        v = b[i]
        for m in range(i + 1, q):
            v -= L[m, i] * x[m]
        x[i] = v / L[i, i]


@njit(**_NJIT)
def chol_adjoint(L, Lbar, q, Hbar, P, Y, col, out):
    """dF/dH (symmetric) from dF/dL for H = L L': sym(L^-T Phi(L' Lbar) L^-1); P, Y (q, q), col,
    out (q,) are scratch. Two terms written out (a kernel call makes one per group)."""
    if q == 2:
        i00 = 1.0 / L[0, 0]
        i11 = 1.0 / L[1, 1]
        i10 = -L[1, 0] * i00 * i11                   # L^-1 = [[i00, 0], [i10, i11]]
        p00 = 0.5 * (L[0, 0] * Lbar[0, 0] + L[1, 0] * Lbar[1, 0])
        p10 = L[1, 1] * Lbar[1, 0]
        p11 = 0.5 * L[1, 1] * Lbar[1, 1]
        x10 = p10 * i00 + p11 * i10                  # X = P L^-1 (X01 = 0)
        x11 = p11 * i11
        Hbar[0, 0] = i00 * p00 * i00 + i10 * x10     # M = L^-T X
        Hbar[1, 1] = i11 * x11
        off = 0.5 * (i10 * x11 + i11 * x10)
        Hbar[0, 1] = off
        Hbar[1, 0] = off
        return
    for i in range(q):
        for k in range(i + 1):
            v = 0.0
            for m in range(q):
                v += L[m, i] * Lbar[m, k]
            P[i, k] = 0.5 * v if i == k else v
        for k in range(i + 1, q):
            P[i, k] = 0.0
    # M = L^-T P L^-1: first Y = L^-T P (columns), then M = Y L^-1 (rows of M' = L^-T Y')
    for k in range(q):
        for i in range(q):
            col[i] = P[i, k]
        solve_upper_t(L, q, col, out)
        for i in range(q):
            Y[i, k] = out[i]
    for i in range(q):
        for k in range(q):
            col[k] = Y[i, k]
        solve_upper_t(L, q, col, out)
        for k in range(q):
            Hbar[i, k] = out[k]
    for i in range(q):
        for k in range(i):
            s = 0.5 * (Hbar[i, k] + Hbar[k, i])
            Hbar[i, k] = s
            Hbar[k, i] = s


# --------------------------------------------------------------------------------------------
# Row passes (vectorised over the group's rows; w is (q, m), rows last)
# --------------------------------------------------------------------------------------------
@njit(**_VEC)
def linpred(eta0, w, vv, eta):
    """eta = eta0 + w' vv."""
    m = eta0.shape[0]
    for i in range(m):
        eta[i] = eta0[i]
    for a in range(w.shape[0]):
        va = vv[a]
        for i in range(m):
            eta[i] += w[a, i] * va


@njit(**_VEC)
def rowsum(x):
    s = 0.0
    for i in range(x.shape[0]):
        s += x[i]
    return s


@njit(**_VEC)
def grad_hess(d1, d2, w, v, q, g, H):
    """g = w d1 - v (gradient of f) and H = I - w diag(d2) w' (its negative Hessian)."""
    m = d1.shape[0]
    for a in range(q):
        s = 0.0
        for i in range(m):
            s += d1[i] * w[a, i]
        g[a] = s - v[a]
        for c in range(a + 1):
            s = 0.0
            for i in range(m):
                s -= d2[i] * w[a, i] * w[c, i]
            H[a, c] = s + (1.0 if a == c else 0.0)
            H[c, a] = H[a, c]


@njit(**_NJIT)
def intercept_ok(emax, w, v):
    """Whether the random-intercept passes are safe at v: |eta| stays below 700 (no overflow)."""
    return emax + abs(w * v) < 700.0


@njit(**_NJIT)
def _newton_q1_any(fam, y, n, eta0, w, v, phi, lphi, A, emax):
    if eta0.shape[0] > 0 and intercept_ok(emax, w[0], v):
        return newton_q1_intercept(fam, y, A, w[0], v)
    return newton_q1(fam, y, n, eta0, w, v, phi, lphi)


@njit(**_NJIT)
def find_mode_q1(fam, y, n, eta0, w, v, phi, lphi, H, L, A, emax):
    """find_mode for one term: scalars, and one fused pass over the rows per step.

    ``A`` (e^eta0) and ``emax`` (max |eta0|) enable the random-intercept pass
    (:func:`~bayeslmm.paths.quadrature_families.newton_q1_intercept`); emax = inf disables it.
    """
    vv = v[0]
    gs, hs = _newton_q1_any(fam, y, n, eta0, w, vv, phi, lphi, A, emax)
    g = gs - vv
    h = 1.0 + hs
    for it in range(MAX_NEWTON):
        step = g / h
        if not abs(step) < np.inf:
            return False
        if abs(step) < NEWTON_TOL:
            v[0] = vv + step
            H[0, 0] = h
            L[0, 0] = math.sqrt(h)
            return True
        t = 1.0
        for half in range(60):
            vn = vv + t * step
            gs, hs = _newton_q1_any(fam, y, n, eta0, w, vn, phi, lphi, A, emax)
            gn = gs - vn
            if gn * gn < g * g:
                break
            t *= 0.5
        vv = vn
        g = gn
        h = 1.0 + hs
    return False


@njit(**_NJIT)
def find_mode(fam, y, n, eta0, w, q, v, phi, lphi, H, L, eta, d1, d2, mats, vecs):
    """Newton's method from v (overwritten with the mode); False if it did not converge.

    Steps are halved until the gradient norm decreases (a merit function whose only stationary
    point is the mode, since H >= I); once a step is below NEWTON_TOL it is taken and the
    iteration stops, so the mode is exact to rounding. ``mats`` (>= 1, q, q) and ``vecs`` (>= 5, q)
    are scratch.
    """
    if q == 1:
        return find_mode_q1(fam, y, n, eta0, w[0], v, phi, lphi, H, L, eta0, np.inf)
    Hn = mats[0]
    g, step, tmp, vn, gn = vecs[0], vecs[1], vecs[2], vecs[3], vecs[4]
    linpred(eta0, w, v, eta)
    fam_newton(fam, y, n, eta, phi, lphi, d1, d2)
    grad_hess(d1, d2, w, v, q, g, H)
    g2 = 0.0
    for a in range(q):
        g2 += g[a] * g[a]
    for it in range(MAX_NEWTON):
        if not chol(H, q, L):
            return False
        solve_lower(L, q, g, tmp)
        solve_upper_t(L, q, tmp, step)
        big = 0.0
        for a in range(q):
            big = max(big, abs(step[a]))
        if not big < np.inf:
            return False
        if big < NEWTON_TOL:
            for a in range(q):
                v[a] += step[a]
            return True
        t = 1.0
        gn2 = 0.0
        for half in range(60):
            for a in range(q):
                vn[a] = v[a] + t * step[a]
            linpred(eta0, w, vn, eta)
            fam_newton(fam, y, n, eta, phi, lphi, d1, d2)
            grad_hess(d1, d2, w, vn, q, gn, Hn)
            gn2 = 0.0
            for a in range(q):
                gn2 += gn[a] * gn[a]
            if gn2 < g2:
                break
            t *= 0.5
        for a in range(q):
            v[a] = vn[a]
            g[a] = gn[a]
            for c in range(q):
                H[a, c] = Hn[a, c]
        g2 = gn2
    return False


# --------------------------------------------------------------------------------------------
# Newton's start in a fitted model
# --------------------------------------------------------------------------------------------
def n_start_coords(p: int, q: int) -> int:
    """How many coordinates :func:`start_coords` has for p fixed effects and q terms."""
    return p + q + q * (q - 1) // 2 + 1


@njit(**_NJIT)
def coords_into(b, sd, Cc, phi, th):
    """th = :func:`start_coords` (b, sd, Cc, phi), into a given array (nothing allocated)."""
    p, q = b.shape[0], sd.shape[0]
    for k in range(p):
        th[k] = b[k]
    for a in range(q):
        th[p + a] = math.log(sd[a])
    m = p + q
    for a in range(q):
        for c in range(a):
            th[m] = Cc[a, c]
            m += 1
    th[m] = math.log(phi)


@njit(cache=True, nogil=True, error_model="numpy")
def start_coords(b, sd, Cc, phi):
    """The coordinates a fitted model's Newton start is linear in: (b, log sd, the strictly lower
    entries of Cc by rows, log phi) (:func:`newton_v0`; inverse :func:`start_params`)."""
    th = np.empty(b.shape[0] + sd.shape[0] + sd.shape[0] * (sd.shape[0] - 1) // 2 + 1)
    coords_into(b, sd, Cc, phi, th)
    return th


def start_params(th: np.ndarray, p: int, q: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(b, sd, Cc, phi) at the coordinates ``th`` of :func:`start_coords` (Cc's diagonal from its
    rows' unit length; NaN there if a row's entries are too long)."""
    th = np.asarray(th, dtype=float)
    b, sd = th[:p].copy(), np.exp(th[p:p + q])
    Cc = np.zeros((q, q))
    m = p + q
    for a in range(q):
        for c in range(a):
            Cc[a, c] = th[m]
            m += 1
        rest = 1.0 - np.sum(Cc[a, :a] ** 2)
        Cc[a, a] = np.sqrt(rest) if rest > 0 else np.nan
    return b, sd, Cc, float(np.exp(th[m]))


@njit(**_NJIT)
def group_start(u0, j, th, sd, Cc, v):
    """Group j's start of :func:`newton_v0` into v (q,) (th: :func:`start_coords` at the parameters;
    u0 with one column: a fixed point); zero if it is not finite or |v| >= 30. Allocates nothing."""
    q = sd.shape[0]
    P = th.shape[0] if u0.shape[2] == th.shape[0] + 1 else 0
    ok = True
    for a in range(q):
        s = u0[j, a, 0]
        for k in range(P):
            s += u0[j, a, 1 + k] * th[k]
        for c in range(a):
            s -= sd[a] * Cc[a, c] * v[c]
        v[a] = s / (sd[a] * Cc[a, a])
        ok &= abs(v[a]) < 30.0
    if not ok:
        for a in range(q):
            v[a] = 0.0


@njit(cache=True, nogil=True, error_model="numpy")      # sd = 0 gives inf, not an exception
def newton_v0(u0, b, sd, Cc, phi, J):
    """Newton's starts (J, q) in the standardised scale at the parameters (b, sd, Cc, phi).

    ``u0`` (J, q, 1 + P) holds each group's start in the scale of the terms as a linear function of
    the P = :func:`n_start_coords` coordinates th = :func:`start_coords`: u = u0[:, :, 0] +
    u0[:, :, 1:] th (with one column, a fixed point). It is converted to v = T^-1 u (T = diag(sd) Cc,
    lower triangular, by forward substitution); zero for a group whose start is not finite or has
    |v| >= 30, and for all when u0 has no rows (:func:`group_start`).
    """
    v0 = np.zeros((J, sd.shape[0]))
    if u0.shape[0] != J:
        return v0
    th = start_coords(b, sd, Cc, phi)
    for j in range(J):
        group_start(u0, j, th, sd, Cc, v0[j])
    return v0
