"""Numba building blocks of the crossed kernel: Lambda on the dense part, the block elimination
of the largest factor, and the solves (the algebra is in :mod:`.crossed_kernel`).

Arrays are C-order. A dense-part row block ``(start, q, factor)`` per level comes from
:meth:`.crossed_stats.CrossedStats.dense_blocks`; ``Ts`` holds T_k = diag(sd_k) C_k, zero-padded to
(K, q_max, q_max).
"""

from __future__ import annotations

import numpy as np

from ..cachedir import cached_njit

__all__: list[str] = []

#: every crossed kernel function: cached in the user's cache folder (bayeslmm.cachedir), GIL released
_NB = dict(nogil=True, error_model="numpy", fastmath={"reassoc", "contract"})
njit = cached_njit(**_NB)


@njit
def _theta_offsets(p, q):
    """Where factor k's sd_k and C_k start in theta (see :func:`.crossed_kernel.pack_theta`)."""
    K = q.shape[0]
    o_sd = np.empty(K, dtype=np.int64)
    o_c = np.empty(K, dtype=np.int64)
    pos = p
    for k in range(K):
        o_sd[k] = pos
        pos += q[k]
    for k in range(K):
        o_c[k] = pos
        pos += q[k] * q[k]
    return o_sd, o_c


@njit
def _transforms(theta, p, q):
    """T_k = diag(sd_k) C_k, zero-padded to (K, q_max, q_max)."""
    K = q.shape[0]
    qm = 1
    for k in range(K):
        qm = max(qm, q[k])
    Ts = np.zeros((K, qm, qm))
    o_sd, o_c = _theta_offsets(p, q)
    for k in range(K):
        qk = q[k]
        for i in range(qk):
            for m in range(qk):
                Ts[k, i, m] = theta[o_sd[k] + i] * theta[o_c[k] + i * qk + m]
    return Ts


# --------------------------------------------------------------------------------------------
# Lambda_2 (block-diagonal over the dense part's levels) applied to dense arrays
# --------------------------------------------------------------------------------------------
@njit
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


@njit
def _sandwich(E, Ts, blocks):
    """Lambda_2' E Lambda_2 for symmetric E, as Lambda_2' (Lambda_2' E)' (row operations only)."""
    return _lmul(_lmul(E, Ts, blocks, True).T.copy(), Ts, blocks, True)


# --------------------------------------------------------------------------------------------
# Stage 1: eliminate the first factor level by level; the Schur complement's pieces
# --------------------------------------------------------------------------------------------
@njit
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


@njit
def _representatives(groups, Ng):
    """One level of each group."""
    rep = np.full(Ng, -1, dtype=np.int64)
    for j in range(groups.shape[0]):
        if rep[groups[j]] < 0:
            rep[groups[j]] = j
    return rep


@njit
def _level_mul(M, x, transpose):
    """Per level j of the eliminated factor: M_j x_j (or M_j' x_j) for x (J_1 q_1, m) and
    M (J_1, q_1, q_1): the one owner of the level-by-level block products (R_j in the solves,
    Lambda_1 = I kron T_1 through :func:`_lambda1`)."""
    J1, q1 = M.shape[0], M.shape[1]
    out = np.zeros_like(x)
    for j in range(J1):
        for a in range(q1):
            for b in range(q1):
                r = M[j, b, a] if transpose else M[j, a, b]
                if r != 0.0:
                    for col in range(x.shape[1]):
                        out[j * q1 + a, col] += r * x[j * q1 + b, col]
    return out


@njit
def _lambda1(Ts, k1, q1, x, transpose):
    """Lambda_1 x (or Lambda_1' x) for the eliminated factor's part x (J_1 q_1,)."""
    J1 = x.shape[0] // q1 if q1 else 0
    T = np.empty((J1, q1, q1))
    for j in range(J1):
        T[j] = Ts[k1, :q1, :q1]
    return _level_mul(T, x.copy().reshape(x.shape[0], 1), transpose)[:, 0]


@njit
def _w_mul(B, R, Ts, blocks, X):
    """W X = Lambda_2' B (R_j X_j) for X (Q_1, m), without forming W."""
    return _lmul(np.dot(B, _level_mul(R, X, False)), Ts, blocks, True)


@njit
def _wt_mul(B, R, Ts, blocks, X):
    """W' X = R_j' (B' Lambda_2 X)_j for X (Q_2, m), without forming W."""
    return _level_mul(R, np.dot(B.T, _lmul(X, Ts, blocks, False)), True)


# --------------------------------------------------------------------------------------------
# Stage 2: the residual statistics, a = A^-1 Lambda' Z'r and the log-density
# --------------------------------------------------------------------------------------------
@njit
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
    u[:Q1] = _lambda1(Ts, k1, q1, c[:Q1], True)
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
