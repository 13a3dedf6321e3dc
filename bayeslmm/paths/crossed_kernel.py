"""Exact collapsed Gaussian log-likelihood for crossed and multi-factor designs (numba + LAPACK).

The model, for K grouping factors (crossed, nested or both):

    y = X b + sum_k Z_k gamma_k + e,   gamma_k = (I_{J_k} kron T_k) z_k,   z ~ N(0, I),   e ~ N(0, sigma^2 I),

with T_k = diag(sd_k) C_k and C_k the lower Cholesky factor of factor k's term correlation matrix
(block-diagonal, the identity where terms are uncorrelated): the parameterisation of the one-factor
kernel (:mod:`bayeslmm.marginal_kernel`). With Lambda = blockdiag_k(I kron T_k), Z = [Z_1 .. Z_K],
C = Z'Z (Q x Q, Q = sum_k J_k q_k), r = y - X b, c = Z'r and

    A = I + Lambda' C Lambda / sigma^2 = L L',      u = Lambda' c,      a = A^-1 u,

the marginal density y ~ N(X b, sigma^2 I + Z Lambda Lambda' Z') is (Bates et al. 2015, eq. 14-34)

    log p(y) = -1/2 [n log(2 pi sigma^2) + log|A| + (r'r - u'a / sigma^2) / sigma^2],

finite at sd = 0 (then A = I). The gradient, with P = A^-1, v = Lambda a and
g = Z'V^-1 r = (c - C v / sigma^2) / sigma^2:

    d/dLambda  = (g a' - C Lambda P) / sigma^2          (only its diagonal q_k x q_k blocks are used)
    d/dsigma^2 = -1/2 [(n - Q + tr P) / sigma^2 - r'r / sigma^4 + (u'a + a'a) / sigma^6]
    d/db       = (X'r - (Z'X)' v / sigma^2) / sigma^2,

so the trace terms need P only on the sparsity pattern of C (a selected inverse), never all of it.

**The factorisation** (the blocked Cholesky of MixedModels.jl; Bates, Alday & Kokandakar 2025).
A factor's own block of C is block-diagonal (a row belongs to one level of each factor), so the
factor with the most effects (J_1 q_1) is eliminated block by block and the rest, Q_2 = Q - J_1 q_1
effects, is held dense:

    A = [[A11, A21'], [A21, A22]],  A11 = blockdiag_j L_j L_j',  W = A21 L11^-T,  S = A22 - W W' = L2 L2'.

S >= I (it is the inverse of a block of P <= I), so the dense Cholesky is always well conditioned.
The selected inverse comes from the same blocks: P22 = S^-1, P21 = -S^-1 W L11^-1 (on the pattern
of C21 = all of it when the design is fully crossed), diagonal blocks P11_j = L_j^-T (I + W_j'
S^-1 W_j) L_j^-1. One evaluation costs about 4 Q_2^2 Q_1 + Q_2^3 flops (two gemms, a potrf and a
potri) plus O(Q_2 Q_1 q^2 + J_1 q_1^3), and never touches the n rows: everything starts from the
sufficient statistics of :func:`~.crossed_stats.crossed_stats`. With ``eliminate=False`` (the
"dense" variant) all Q effects go to the dense part. In balanced designs many eliminated levels
have equal Z'Z blocks and share L_j; then W W' and the gradient's coupling terms are sums over the
groups of precomputed Gram matrices, O(N_g q_1^2 Q_2^2) instead of O(Q_2^2 Q_1) (see
:class:`~.crossed_stats.CrossedStats`). All variants are exact; bench/crossed_probe.py
measures which is faster (the blocked one, on every design tried), and against a general sparse
factorisation (qdldl): faster on fully crossed designs, slower on sparsely crossed ones with
large factors (there the dense Schur complement, Q_2 x Q_2, is the limit: :attr:`CrossedStats.flops`).

**Implementation**: the dense steps are single LAPACK/BLAS calls from Python (dgemm through
numpy, dpotrf, dpotri: all release the GIL, so chains sampled in threads run in parallel);
everything level by level (the q x q blocks, Lambda, the solves, the gradient assembly) is three
numba functions, so a call costs about ten Python-level steps whatever the number of levels. An
all-numpy version of the same algebra was 10-30x slower on a 60 x 80 design (hundreds of small
array operations per call).

Group effects are drawn from their exact conditional: z | y ~ N(a / sigma^2, A^-1), gamma = Lambda z,
i.e. z = a / sigma^2 + L^-T eps with one blocked triangular solve per draw.
"""

from __future__ import annotations

import ctypes

import numba
import numpy as np
from numba.extending import get_cython_function_address
from scipy.linalg import lapack

from .crossed_stats import CrossedStats

__all__ = ["crossed_kernel", "crossed_logp", "pack_theta", "unpack_theta", "unpack_data", "conditional_effects",
           "conditional_moments", "draw_effects", "compile_kernel"]

LOG_2PI = float(np.log(2.0 * np.pi))
_NB = dict(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract"})


def _fortran(module: str, name: str, nargs: int):
    """A BLAS/LAPACK routine of scipy's Cython interface as a ctypes function (all arguments pointers).

    Passed to the numba kernel as an argument: numba cannot cache a function that refers to a
    ctypes pointer as a global, but it can one that receives it.
    """
    addr = get_cython_function_address(f"scipy.linalg.cython_{module}", name)
    return ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * nargs))(addr)


# the kernel sees C-order arrays; to Fortran they are transposed, so its "U" is our lower triangle
_DPOTRF = _fortran("lapack", "dpotrf", 5)       # uplo, n, a, lda, info
_DPOTRI = _fortran("lapack", "dpotri", 5)
_DSYRK = _fortran("blas", "dsyrk", 10)          # uplo, trans, n, k, alpha, a, lda, beta, c, ldc


# --------------------------------------------------------------------------------------------
# Parameter vector: theta = [b (p), sd_0 .. sd_{K-1}, C_0 .. C_{K-1} (row-major), sigma]
# --------------------------------------------------------------------------------------------
def pack_theta(b, sds, Ccs, sigma) -> np.ndarray:
    """The kernel's flat parameter vector from b (p,), per-factor sd (q_k,) and C (q_k, q_k), sigma."""
    return np.concatenate([np.asarray(b, float).ravel()] + [np.asarray(s, float).ravel() for s in sds]
                          + [np.asarray(C, float).ravel() for C in Ccs] + [[float(sigma)]])


def unpack_theta(theta, p: int, q) -> tuple:
    """Inverse of :func:`pack_theta`: ``(b, [sd_k], [C_k], sigma)``."""
    theta = np.asarray(theta)
    b = theta[:p]
    pos, sds, Ccs = p, [], []
    for qk in q:
        sds.append(theta[pos:pos + qk])
        pos += qk
    for qk in q:
        Ccs.append(theta[pos:pos + qk * qk].reshape(qk, qk))
        pos += qk * qk
    return b, sds, Ccs, theta[pos]


@numba.njit(**_NB)
def _transforms(theta, p, q):
    """T_k = diag(sd_k) C_k, zero-padded to (K, q_max, q_max)."""
    K = q.shape[0]
    qm = 1
    for k in range(K):
        qm = max(qm, q[k])
    Ts = np.zeros((K, qm, qm))
    o_sd = p
    o_c = p
    for k in range(K):
        o_c += q[k]
    for k in range(K):
        qk = q[k]
        for i in range(qk):
            for m in range(qk):
                Ts[k, i, m] = theta[o_sd + i] * theta[o_c + i * qk + m]
        o_sd += qk
        o_c += qk * qk
    return Ts


# --------------------------------------------------------------------------------------------
# Lambda_2 (block-diagonal over the dense part's levels) applied to dense arrays
# --------------------------------------------------------------------------------------------
@numba.njit(**_NB)
def _lmul(M, Ts, blocks, transpose):
    """Lambda_2 M, or Lambda_2' M when ``transpose``, for M (Q_2, m)."""
    out = np.zeros_like(M)
    for r in range(blocks.shape[0]):
        s, qb, f = blocks[r, 0], blocks[r, 1], blocks[r, 2]
        for b in range(qb):
            for a in range(qb):
                t = Ts[f, a, b] if transpose else Ts[f, b, a]
                if t != 0.0:
                    for col in range(M.shape[1]):
                        out[s + b, col] += t * M[s + a, col]
    return out


@numba.njit(**_NB)
def _sandwich(E, Ts, blocks):
    """Lambda_2' E Lambda_2 for symmetric E, as Lambda_2' (Lambda_2' E)' (row operations only)."""
    return _lmul(_lmul(E, Ts, blocks, True).T.copy(), Ts, blocks, True)


# --------------------------------------------------------------------------------------------
# Stage 1: eliminate the first factor level by level; the Schur complement's pieces
# --------------------------------------------------------------------------------------------
@numba.njit(**_NB)
def _eliminate(Ts, s2, k1, q1, D1, B, E, blocks, groups, gram):
    """Per level of the eliminated factor L_j, L_j^-1, R_j = T1 L_j^-T / s2 and log|A11|;
    BL = Lambda_2' B, BR = B R, W = A21 L11^-T = BL R, and S0 = I + Lambda_2' E Lambda_2 / s2
    (the Schur complement is S0 - W W').

    With level groups (``gram`` non-empty: levels whose Z'Z blocks are equal share L_j and R_j),
    W W' = Lambda_2' U Lambda_2 with U = sum_g sum_ab (R_g R_g')_ab Gram_gab, so S0 is the whole
    Schur complement, V = E / s2 - U is returned, and BL, BR, W are not formed (empty)."""
    J1 = D1.shape[0]
    Q2 = E.shape[0]
    L1 = np.zeros((J1, q1, q1))
    L1i = np.zeros((J1, q1, q1))
    R = np.zeros((J1, q1, q1))
    DT = np.empty((q1, q1))
    logdet = 0.0
    for j in range(J1):
        for a in range(q1):
            for b in range(q1):
                v = 0.0
                for m in range(q1):
                    v += D1[j, a, m] * Ts[k1, m, b]
                DT[a, b] = v
        for a in range(q1):                       # A_j = T1' D1_j T1 / s2 + I; L_j its Cholesky
            for b in range(a + 1):
                v = 1.0 if a == b else 0.0
                for m in range(q1):
                    v += Ts[k1, m, a] * DT[m, b] / s2
                for m in range(b):
                    v -= L1[j, a, m] * L1[j, b, m]
                if a == b:
                    L1[j, a, a] = np.sqrt(v)
                    logdet += np.log(v)
                else:
                    L1[j, a, b] = v / L1[j, b, b]
        for b in range(q1):                       # L_j^-1
            L1i[j, b, b] = 1.0 / L1[j, b, b]
            for a in range(b + 1, q1):
                v = 0.0
                for m in range(b, a):
                    v -= L1[j, a, m] * L1i[j, m, b]
                L1i[j, a, b] = v / L1[j, a, a]
        for a in range(q1):                       # R_j = T1 L_j^-T / s2
            for b in range(q1):
                v = 0.0
                for m in range(q1):
                    v += Ts[k1, a, m] * L1i[j, b, m]
                R[j, a, b] = v / s2
    if gram.shape[0]:
        Ng = gram.shape[0]
        rep = _representatives(groups, Ng)
        V = E / s2
        for g in range(Ng):
            j = rep[g]
            for a in range(q1):
                for b in range(q1):
                    kab = 0.0
                    for m in range(q1):
                        kab += R[j, a, m] * R[j, b, m]
                    if kab != 0.0:
                        Gab = gram[g, a, b]
                        for i in range(Q2):
                            for m in range(Q2):
                                V[i, m] -= kab * Gab[i, m]
        S0 = _sandwich(V, Ts, blocks)
        for i in range(Q2):
            S0[i, i] += 1.0
        empty = np.zeros((Q2, 0))
        return L1, L1i, R, logdet, empty, empty, empty, S0, V
    BL = _lmul(B, Ts, blocks, True)               # Lambda_2' B
    W = np.empty((Q2, J1 * q1))                   # W_j = BL_j R_j
    BR = np.empty((Q2, J1 * q1))                  # B_j R_j (for the gradient)
    for i in range(Q2):
        for j in range(J1):
            for b in range(q1):
                v = 0.0
                v2 = 0.0
                for a in range(q1):
                    v += BL[i, j * q1 + a] * R[j, a, b]
                    v2 += B[i, j * q1 + a] * R[j, a, b]
                W[i, j * q1 + b] = v
                BR[i, j * q1 + b] = v2
    S0 = _sandwich(E, Ts, blocks)
    for i in range(Q2):
        for m in range(Q2):
            S0[i, m] /= s2
        S0[i, i] += 1.0
    return L1, L1i, R, logdet, BL, BR, W, S0, np.zeros((0, 0))


@numba.njit(**_NB)
def _representatives(groups, Ng):
    """One level of each group."""
    rep = np.full(Ng, -1, dtype=np.int64)
    for j in range(groups.shape[0]):
        if rep[groups[j]] < 0:
            rep[groups[j]] = j
    return rep


@numba.njit(**_NB)
def _w_mul(B, R, Ts, blocks, X):
    """W X = Lambda_2' B (R_j X_j) for X (Q_1, m), without forming W."""
    J1, q1 = R.shape[0], R.shape[1]
    RX = np.zeros_like(X)
    for j in range(J1):
        for a in range(q1):
            for b in range(q1):
                r = R[j, a, b]
                for col in range(X.shape[1]):
                    RX[j * q1 + a, col] += r * X[j * q1 + b, col]
    return _lmul(np.dot(B, RX), Ts, blocks, True)


@numba.njit(**_NB)
def _wt_mul(B, R, Ts, blocks, X):
    """W' X = R_j' (B' Lambda_2 X)_j for X (Q_2, m), without forming W."""
    J1, q1 = R.shape[0], R.shape[1]
    Y = np.dot(B.T, _lmul(X, Ts, blocks, False))
    out = np.zeros_like(Y)
    for j in range(J1):
        for a in range(q1):
            for b in range(q1):
                r = R[j, a, b]
                for col in range(Y.shape[1]):
                    out[j * q1 + b, col] += r * Y[j * q1 + a, col]
    return out


# --------------------------------------------------------------------------------------------
# Stage 2: the residual statistics, a = A^-1 Lambda' Z'r and the log-density
# --------------------------------------------------------------------------------------------
@numba.njit(**_NB)
def _solve(theta, Ts, s2, n, k1, q1, L1i, R, B, L2, blocks, b0, ZtX, Zte, XtX, Xte, ete):
    """Returns (lp without log|A|, a, u, c, Xr, rr)."""
    p = b0.shape[0]
    Q = Zte.shape[0]
    Q2 = L2.shape[0]
    Q1 = Q - Q2
    J1 = L1i.shape[0]
    d = np.empty(p)
    for k in range(p):
        d[k] = theta[k] - b0[k]
    Xr = Xte - np.dot(XtX, d) if p else Xte.copy()
    rr = ete
    for k in range(p):
        rr -= d[k] * (Xte[k] + Xr[k])
    c = Zte - np.dot(ZtX, d) if p else Zte.copy()
    u = np.empty(Q)                                # u = Lambda' c
    for j in range(J1):
        for b in range(q1):
            v = 0.0
            for a in range(q1):
                v += Ts[k1, a, b] * c[j * q1 + a]
            u[j * q1 + b] = v
    u2 = _lmul(c[Q1:].copy().reshape(Q2, 1), Ts, blocks, True)
    for i in range(Q2):
        u[Q1 + i] = u2[i, 0]
    y1 = np.empty(Q1)                              # forward: y1 = L11^-1 u1, y2 = L2^-1 (u2 - W y1)
    for j in range(J1):
        for a in range(q1):
            v = 0.0
            for b in range(a + 1):
                v += L1i[j, a, b] * u[j * q1 + b]
            y1[j * q1 + a] = v
    y2 = u[Q1:] - _w_mul(B, R, Ts, blocks, y1.copy().reshape(Q1, 1))[:, 0] if Q1 and Q2 else u[Q1:].copy()
    for i in range(Q2):                            # L2 is C-order, lower triangle: row sweeps
        v = y2[i]
        for k in range(i):
            v -= L2[i, k] * y2[k]
        y2[i] = v / L2[i, i]
    quad = np.dot(y1, y1) + np.dot(y2, y2)
    a = np.empty(Q)                                # back: a2 = L2^-T y2, a1 = L11^-T (y1 - W' a2)
    t2 = y2.copy()
    for i in range(Q2 - 1, -1, -1):
        ai = t2[i] / L2[i, i]
        a[Q1 + i] = ai
        for k in range(i):
            t2[k] -= L2[i, k] * ai
    t1 = y1 - _wt_mul(B, R, Ts, blocks, a[Q1:].copy().reshape(Q2, 1))[:, 0] if Q1 and Q2 else y1.copy()
    for j in range(J1):
        for a_ in range(q1):
            v = 0.0
            for b in range(a_, q1):
                v += L1i[j, b, a_] * t1[j * q1 + b]
            a[j * q1 + a_] = v
    lp = -0.5 * (n * (np.log(2.0 * np.pi) + np.log(s2)) + (rr - quad / s2) / s2)
    return lp, a, u, c, Xr, rr


# --------------------------------------------------------------------------------------------
# Stage 3: the gradient from the selected inverse
# --------------------------------------------------------------------------------------------
@numba.njit(**_NB)
def _grouped_terms(G, Ts, k1, q1, D1, L1i, R, Sinv, blocks, groups, gram, g, a):
    """The eliminated factor's gradient terms with level groups: adds them to G[k1], returns its
    part of tr P. Per group (levels j sharing L_j, R_j): sum_j H_j = F_g R_g with
    F_g[a, b] = <Lambda_2 S^-1 Lambda_2', Gram_gab>, then the same algebra as per level."""
    J1, Ng, Q2 = L1i.shape[0], gram.shape[0], Sinv.shape[0]
    rep = _representatives(groups, Ng)
    count = np.zeros(Ng)
    for j in range(J1):
        count[groups[j]] += 1.0
        for a_ in range(q1):
            for b in range(q1):
                G[k1, a_, b] += g[j * q1 + a_] * a[j * q1 + b]
    Sg = _lmul(_lmul(Sinv, Ts, blocks, False).T.copy(), Ts, blocks, False)   # Lambda_2 S^-1 Lambda_2'
    F = np.empty((q1, q1))
    H = np.empty((q1, q1))
    inner = np.empty((q1, q1))
    P11 = np.empty((q1, q1))
    tr = 0.0
    for gg in range(Ng):
        j = rep[gg]
        for a_ in range(q1):
            for b in range(q1):
                t = 0.0
                Gab = gram[gg, a_, b]
                for x in range(Q2):
                    for y in range(Q2):
                        t += Sg[x, y] * Gab[x, y]
                F[a_, b] = t
        for a_ in range(q1):
            for b in range(q1):
                t = 0.0
                for m in range(q1):
                    t += F[a_, m] * R[j, m, b]
                H[a_, b] = t
        for a_ in range(q1):
            for b in range(q1):
                t = count[gg] if a_ == b else 0.0
                for m in range(q1):
                    t += R[j, m, a_] * H[m, b]
                inner[a_, b] = t
        for a_ in range(q1):
            for b in range(q1):
                t = 0.0
                for m in range(q1):
                    for m2 in range(q1):
                        t += L1i[j, m, a_] * inner[m, m2] * L1i[j, m2, b]
                P11[a_, b] = t
        for a_ in range(q1):
            tr += P11[a_, a_]
        for a_ in range(q1):
            for b in range(q1):
                t = 0.0
                for m in range(q1):
                    dt = 0.0
                    for m2 in range(q1):
                        dt += D1[j, a_, m2] * Ts[k1, m2, m]
                    t -= dt * P11[m, b]
                    t += H[a_, m] * L1i[j, m, b]
                G[k1, a_, b] += t
    return tr



# --------------------------------------------------------------------------------------------
@numba.njit(**_NB)
def _gradient(w, theta, Ts, s2, n, p, q, k1, q1, blocks, D1, B, E, ZtX, L1i, R, BL, BR, Sinv, M, a, u, c,
              Xr, rr, groups, gram, V):
    """w * d lp / d theta. ``Sinv`` = S^-1 (full), ``M`` = S^-1 W; the rest from :func:`_eliminate`."""
    K = q.shape[0]
    Q = a.shape[0]
    Q2 = E.shape[0]
    Q1 = Q - Q2
    J1 = D1.shape[0]
    # v = Lambda a ; g = (c - C v / s2) / s2 = Z'V^-1 r
    v = np.empty(Q)
    for j in range(J1):
        for a_ in range(q1):
            t = 0.0
            for b in range(q1):
                t += Ts[k1, a_, b] * a[j * q1 + b]
            v[j * q1 + a_] = t
    v2 = _lmul(a[Q1:].copy().reshape(Q2, 1), Ts, blocks, False)
    for i in range(Q2):
        v[Q1 + i] = v2[i, 0]
    Cv = np.zeros(Q)
    if Q2:
        Cv[Q1:] = np.dot(E, v[Q1:])
    if Q1:
        BTv2 = np.zeros(Q1)
        if Q2:
            Cv[Q1:] += np.dot(B, v[:Q1])
            BTv2 = np.dot(B.T, v[Q1:])
        for j in range(J1):
            for a_ in range(q1):
                t = BTv2[j * q1 + a_]
                for b in range(q1):
                    t += D1[j, a_, b] * v[j * q1 + b]
                Cv[j * q1 + a_] = t
    g = (c - Cv / s2) / s2
    gtheta = np.zeros(theta.shape[0])
    if p:
        gb = (Xr - np.dot(ZtX.T, v) / s2) / s2
        for k in range(p):
            gtheta[k] = gb[k]
    # sum over levels of g_j a_j' - (C Lambda P)_jj, per factor
    qm = Ts.shape[1]
    G = np.zeros((K, qm, qm))
    trP = 0.0
    for i in range(Q2):
        trP += Sinv[i, i]
    grouped = gram.shape[0] > 0
    # E Lambda_2 (E symmetric); grouped, (E - s2 U) Lambda_2 also holds the coupling term below
    EL = _lmul(s2 * V if grouped else E, Ts, blocks, True).T.copy()
    for r in range(blocks.shape[0]):
        s, qb, f = blocks[r, 0], blocks[r, 1], blocks[r, 2]
        for a_ in range(qb):
            for b in range(qb):
                t = g[Q1 + s + a_] * a[Q1 + s + b]
                for l in range(Q2):
                    t -= EL[s + a_, l] * Sinv[s + b, l]
                G[f, a_, b] += t
    if Q1 and grouped:
        trP += _grouped_terms(G, Ts, k1, q1, D1, L1i, R, Sinv, blocks, groups, gram, g, a)
    elif Q1:
        # With H_j = BL_j' M_j (M = S^-1 W, P21 = -M L11^-1, W_j = BL_j R_j):
        #   P11_j = L_j^-T (I + R_j' H_j) L_j^-1,
        #   sum_i B[i, j]' (Lambda_2 P21)[i, j] = -H_j L_j^-1,
        #   (B Lambda_1 P12) diagonal blocks = -s2 (B R M')_{jj}.
        H = np.zeros((J1, q1, q1))
        for i in range(Q2):
            for j in range(J1):
                for a_ in range(q1):
                    bv = BL[i, j * q1 + a_]
                    for b in range(q1):
                        H[j, a_, b] += bv * M[i, j * q1 + b]
        inner = np.empty((q1, q1))
        P11 = np.empty((q1, q1))
        DT = np.empty((q1, q1))
        for j in range(J1):
            for a_ in range(q1):
                for b in range(q1):
                    t = 1.0 if a_ == b else 0.0
                    for m in range(q1):
                        t += R[j, m, a_] * H[j, m, b]
                    inner[a_, b] = t
            for a_ in range(q1):
                for b in range(q1):
                    t = 0.0
                    for m in range(q1):
                        for m2 in range(q1):
                            t += L1i[j, m, a_] * inner[m, m2] * L1i[j, m2, b]
                    P11[a_, b] = t
            for a_ in range(q1):
                trP += P11[a_, a_]
            for a_ in range(q1):
                for b in range(q1):
                    t = 0.0
                    for m in range(q1):
                        t += D1[j, a_, m] * Ts[k1, m, b]
                    DT[a_, b] = t
            for a_ in range(q1):
                for b in range(q1):
                    t = g[j * q1 + a_] * a[j * q1 + b]
                    for m in range(q1):
                        t -= DT[a_, m] * P11[m, b]
                        t += H[j, a_, m] * L1i[j, m, b]
                    G[k1, a_, b] += t
        for r in range(blocks.shape[0]):
            s, qb, f = blocks[r, 0], blocks[r, 1], blocks[r, 2]
            for a_ in range(qb):
                for b in range(qb):
                    t = 0.0
                    for m in range(Q1):
                        t += BR[s + a_, m] * M[s + b, m]
                    G[f, a_, b] += s2 * t
    # chain rule to sd and C (T = diag(sd) C), sigma
    o_sd = p
    o_c = p
    for k in range(K):
        o_c += q[k]
    for k in range(K):
        qk = q[k]
        for i in range(qk):
            for m in range(qk):
                Gim = G[k, i, m] / s2
                gtheta[o_sd + i] += Gim * theta[o_c + i * qk + m]
                gtheta[o_c + i * qk + m] = Gim * theta[o_sd + i]
        o_sd += qk
        o_c += qk * qk
    ua = np.dot(u, a)
    aa = np.dot(a, a)
    gs2 = -0.5 * ((n - Q + trP) / s2 - rr / (s2 * s2) + (ua + aa) / (s2 * s2 * s2))
    gtheta[theta.shape[0] - 1] = 2.0 * np.sqrt(s2) * gs2
    for k in range(theta.shape[0]):
        gtheta[k] *= w
    return gtheta


# --------------------------------------------------------------------------------------------
# The kernel: one call per NUTS step
# --------------------------------------------------------------------------------------------
@numba.njit(**_NB)
def _syrk_potrf(S, W, potrf, syrk):
    """S <- chol(S - W W') in place (lower triangle of the C-order S); returns LAPACK's info.

    To Fortran a C-order array is its transpose: S is symmetric, W (Q2 x Q1) is A = W' (Q1 x Q2),
    so the call is syrk("U", "T"): C <- C - A'A, and "U" in Fortran is our lower triangle. The
    scalar arguments live in three small arrays that are read after the calls, so that numba keeps
    them alive while LAPACK holds their addresses.
    """
    n, k = S.shape[0], W.shape[1]
    ints = np.array([n, k, 0], dtype=np.int32)          # n, k (= lda), info
    chars = np.array([85, 84], dtype=np.uint8)          # "U", "T"
    dbl = np.array([-1.0, 1.0])                          # alpha, beta
    pi, pc, pd = ints.ctypes.data, chars.ctypes.data, dbl.ctypes.data
    if k:
        syrk(pc, pc + 1, pi, pi + 4, pd, W.ctypes.data, pi + 4, pd + 8, S.ctypes.data, pi)
    potrf(pc, pi, S.ctypes.data, pi, pi + 8)
    return ints[2] + 0 * (chars[0] + chars[1]) + int(0.0 * (dbl[0] + dbl[1]))


@numba.njit(**_NB)
def _potri(S, potri):
    """S <- S^-1 in place from its Cholesky factor (lower triangle of C-order S), mirrored."""
    n = S.shape[0]
    ints = np.array([n, 0], dtype=np.int32)
    chars = np.array([85], dtype=np.uint8)
    potri(chars.ctypes.data, ints.ctypes.data, S.ctypes.data, ints.ctypes.data, ints.ctypes.data + 4)
    for i in range(n):
        for j in range(i):
            S[j, i] = S[i, j]
    return ints[1] + 0 * chars[0]


@numba.njit(**_NB)
def _factor_nb(theta, layout, blocks, D1, B, E, groups, gram, potrf, syrk):
    """Stage 1 and the dense Cholesky. Returns (ok, Ts, s2, L1i, R, logdet, BL, BR, W, L2, V) with
    L2 C-order, its lower triangle the factor (the upper one holds leftovers of S)."""
    K, p, k1 = layout[0], layout[1], layout[4]
    q = layout[5:5 + K]
    Ts = _transforms(theta, p, q)
    s2 = theta[theta.shape[0] - 1] ** 2
    L1, L1i, R, logdet, BL, BR, W, S, V = _eliminate(Ts, s2, k1, q[k1], D1, B, E, blocks, groups, gram)
    Q2, Q1 = S.shape[0], W.shape[1]
    ok = np.isfinite(logdet)
    if Q2 and ok:
        # S >= I in exact arithmetic; rounding breaks it only where sd / sigma is extreme (~1e7
        # and beyond, A's entries swamping its Schur complement): there is no density there
        ok = _syrk_potrf(S, W, potrf, syrk) == 0
        if ok:
            for i in range(Q2):
                logdet += 2.0 * np.log(S[i, i])
    return ok, Ts, s2, L1i, R, logdet, BL, BR, W, S, V


@numba.njit(**_NB)
def unpack_data(ints, floats):
    """Views of the statistics packed by :meth:`CrossedStats.kernel_data`: (layout, blocks, b0, D1,
    B, E, ZtX, Zte, XtX, Xte, ete, groups, gram)."""
    K, p, n_elim, k1 = ints[0], ints[1], ints[3], ints[4]
    q, J = ints[5:5 + K], ints[5 + K:5 + 2 * K]
    nb, Ng = ints[5 + 2 * K], ints[6 + 2 * K]
    o = 7 + 2 * K
    blocks = ints[o:o + 3 * nb].reshape((nb, 3))
    o += 3 * nb
    q1 = q[k1]
    J1 = J[k1] if n_elim else 0
    groups = ints[o:o + (J1 if Ng else 0)]
    Q = 0
    for k in range(K):
        Q += J[k] * q[k]
    Q1 = J1 * q1
    Q2 = Q - Q1
    f = 0
    b0 = floats[f:f + p]
    f += p
    D1 = floats[f:f + J1 * q1 * q1].reshape((J1, q1, q1))
    f += J1 * q1 * q1
    B = floats[f:f + Q2 * Q1].reshape((Q2, Q1))
    f += Q2 * Q1
    E = floats[f:f + Q2 * Q2].reshape((Q2, Q2))
    f += Q2 * Q2
    ZtX = floats[f:f + Q * p].reshape((Q, p))
    f += Q * p
    Zte = floats[f:f + Q]
    f += Q
    XtX = floats[f:f + p * p].reshape((p, p))
    f += p * p
    Xte = floats[f:f + p]
    f += p
    ete = floats[f]
    f += 1
    gram = floats[f:f + Ng * q1 * q1 * Q2 * Q2].reshape((Ng, q1, q1, Q2, Q2))
    return ints[:5 + 2 * K], blocks, b0, D1, B, E, ZtX, Zte, XtX, Xte, ete, groups, gram


@numba.njit(**_NB)
def _kernel_nb(grad, w, theta, ints, floats, potrf, potri, syrk):
    layout, blocks, b0, D1, B, E, ZtX, Zte, XtX, Xte, ete, groups, gram = unpack_data(ints, floats)
    P = theta.shape[0]
    K, p, n, k1 = layout[0], layout[1], layout[2], layout[4]
    q = layout[5:5 + K]
    ok, Ts, s2, L1i, R, logdet, BL, BR, W, L2, V = _factor_nb(theta, layout, blocks, D1, B, E, groups, gram,
                                                              potrf, syrk)
    if not ok:
        return -np.inf, np.zeros(P)
    lp, a, u, c, Xr, rr = _solve(theta, Ts, s2, n, k1, q[k1], L1i, R, B, L2, blocks, b0, ZtX, Zte, XtX, Xte, ete)
    lp -= 0.5 * logdet
    if not np.isfinite(lp):
        return -np.inf, np.zeros(P)
    if not grad:
        return lp, np.zeros(P)
    Q2 = L2.shape[0]
    Sinv = L2                                      # overwritten: S^-1
    if Q2:
        _potri(Sinv, potri)
    M = np.dot(Sinv, W) if Q2 and W.shape[1] else np.zeros(W.shape)
    return lp, _gradient(w, theta, Ts, s2, n, p, q, k1, q[k1], blocks, D1, B, E, ZtX, L1i, R, BL, BR, Sinv,
                         M, a, u, c, Xr, rr, groups, gram, V)


def crossed_kernel(grad, w, theta, ints, floats):
    """Collapsed log-density and ``w`` x its gradient with respect to ``theta`` (one call).

    Parameters
    ----------
    grad : bool or 0-d int ; w : cotangent of the log-density (float)
    theta : (P,) parameters, see :func:`pack_theta`
    ints, floats : :meth:`CrossedStats.kernel_data`

    Returns
    -------
    (lp, gtheta) : float and (P,) array (zeros when not ``grad``). ``(-inf, zeros)`` where the
    density cannot be evaluated (non-finite parameters, or sd / sigma so extreme that the Schur
    complement loses positive definiteness in floating point): NUTS then rejects the step.

    The whole evaluation is one numba call (the GIL is released throughout, LAPACK included).
    """
    theta = np.array(theta, dtype=np.float64)                 # a writable contiguous copy
    if not np.all(np.isfinite(theta)):
        return -np.inf, np.zeros_like(theta)
    return _kernel_nb(bool(grad), float(w), theta, _readonly(ints, np.int64), _readonly(floats, np.float64),
                      _DPOTRF, _DPOTRI, _DSYRK)


def _readonly(x, dtype):
    """A read-only contiguous view (no copy when x already is one): numba types read-only and
    writable arrays apart, and compiling the kernel twice would double its cold start."""
    x = np.ascontiguousarray(x, dtype=dtype)
    if x.flags.writeable:
        x = x.view()
        x.flags.writeable = False
    return x


def crossed_logp(st: CrossedStats, b, sds, Ccs, sigma, grad: bool = False):
    """Marginal log-density log N(y | X b, sigma^2 I + Z Lambda Lambda' Z') and its gradient.

    Parameters
    ----------
    st : CrossedStats
    b : (p,) ; sds : per factor (q_k,) ; Ccs : per factor (q_k, q_k) lower Cholesky factors of the
        term correlations ; sigma : residual SD.
    grad : also return the gradient.

    Returns
    -------
    lp : float, or ``(lp, d/db (p,), [d/dsd_k (q_k,)], [d/dC_k (q_k, q_k)], d/dsigma)`` with grad.
    ``d/dC_k`` is the full q_k x q_k array (entries outside the lower triangle or the correlation
    blocks are the derivative had they been free; the caller's graph keeps the ones that are).

    Examples
    --------
    >>> import numpy as np
    >>> from bayeslmm.paths.crossed_stats import Factor, crossed_stats
    >>> g = np.array([0, 0, 1, 1]); h = np.array([0, 1, 0, 1]); one = np.ones((4, 1))
    >>> st = crossed_stats(np.array([1., 2., 3., 5.]), one, [Factor("s", g, one, 2), Factor("i", h, one, 2)])
    >>> lp = crossed_logp(st, [2.5], [[1.0], [0.5]], [np.eye(1), np.eye(1)], 1.0)
    >>> V = np.eye(4) + (g[:, None] == g) + 0.25 * (h[:, None] == h)      # sigma^2 I + Z G Z'
    >>> from scipy.stats import multivariate_normal
    >>> bool(np.isclose(lp, multivariate_normal(np.full(4, 2.5), V).logpdf([1., 2., 3., 5.])))
    True
    """
    theta = pack_theta(b, sds, Ccs, sigma)
    lp, g = crossed_kernel(grad, 1.0, theta, *st.kernel_data())
    if not grad:
        return float(lp)
    gb, gsds, gCs, gsig = unpack_theta(g, st.p, st.q)
    return float(lp), gb, gsds, gCs, float(gsig)


# --------------------------------------------------------------------------------------------
# Conditional draws of the group effects: z | y ~ N(a / s2, A^-1), gamma = Lambda z
# --------------------------------------------------------------------------------------------
def _posterior_z(st: CrossedStats, b, sds, Ccs, sigma):
    theta = pack_theta(b, sds, Ccs, sigma)
    layout, blocks, b0, D1, B, E, ZtX, Zte, XtX, Xte, ete, groups, gram = unpack_data(*st.kernel_data())
    ok, Ts, s2, L1i, R, _, _, _, _, L2, _ = _factor_nb(theta, layout, blocks, D1, B, E, groups, gram, _DPOTRF,
                                                       _DSYRK)
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


def conditional_effects(st: CrossedStats, b, sds, Ccs, sigma, eps=None) -> list[np.ndarray]:
    """Group effects from their exact conditional gamma | y, b, sd, C, sigma (one solve per draw).

    Parameters
    ----------
    eps : None for the conditional mean, or standard normals of shape (Q,) or (Q, m) for m draws.

    Returns
    -------
    list over factors (caller order) of arrays (J_k, q_k) or (J_k, q_k, m).
    """
    F, zbar = _posterior_z(st, b, sds, Ccs, sigma)
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
    for s in range(S):
        parts = conditional_effects(st, b[s], [x[s] for x in sds], [x[s] for x in Ccs], sigma[s],
                                    rng.standard_normal(st.Q))
        for k in range(st.K):
            out[k][s] = parts[k]
    return out


def compile_kernel() -> float:
    """Compile the kernel and the draw functions now (numba caches them on disk next to this file);
    returns the seconds. For ``make install``, so that the first fit does not wait for it."""
    import time

    from .crossed_stats import Factor, crossed_stats
    t0 = time.perf_counter()
    g, h = np.array([0, 0, 1, 1, 2]), np.array([0, 1, 0, 1, 1])
    Z = np.column_stack([np.ones(5), np.arange(5.0)])
    facs = [Factor("a", g, Z, 3), Factor("b", h, Z[:, :1], 2)]
    for group in (False, True):
        st = crossed_stats(np.arange(5.0), Z, facs, group_levels=group)
        crossed_logp(st, [0.0, 0.0], [[1.0, 1.0], [1.0]], [np.eye(2), np.eye(1)], 1.0, grad=True)
        conditional_effects(st, [0.0, 0.0], [[1.0, 1.0], [1.0]], [np.eye(2), np.eye(1)], 1.0, np.zeros(st.Q))
    return time.perf_counter() - t0
