"""The gradient of the crossed collapsed log-density from the selected inverse (numba).

The formulas are in :mod:`.crossed_kernel`: d/dLambda = (g a' - C Lambda P) / sigma^2, summed over
each factor's diagonal q_k x q_k blocks, with P = A^-1 needed only on the pattern of Z'Z.
"""

from __future__ import annotations

import numpy as np

from .crossed_algebra import _lambda1, _lmul, _representatives, _theta_offsets, njit

__all__: list[str] = []


@njit
def _level_terms(G, Ts, k1, q1, D1, L1i, R, H, j, diag):
    """One eliminated level (or group, ``diag`` = its number of levels): with P11_j = L_j^-T (diag I
    + R_j' H_j) L_j^-1, adds -D_j T_1 P11_j + H_j L_j^-1 to G[k1] and returns tr P11_j. The one
    owner of this step for the grouped and the per-level gradient."""
    inner = np.empty((q1, q1))
    P11 = np.empty((q1, q1))
    for a_ in range(q1):
        for b in range(q1):
            t = diag if a_ == b else 0.0
            for m in range(q1):
                t += R[j, m, a_] * H[m, b]
            inner[a_, b] = t
    tr = 0.0
    for a_ in range(q1):
        for b in range(q1):
            t = 0.0
            for m in range(q1):
                for m2 in range(q1):
                    t += L1i[j, m, a_] * inner[m, m2] * L1i[j, m2, b]
            P11[a_, b] = t
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


@njit
def _grouped_terms(G, Ts, k1, q1, D1, L1i, R, Sinv, blocks, groups, gram):
    """The eliminated factor's coupling terms with level groups: adds them to G[k1], returns its
    part of tr P. Per group (levels j sharing L_j, R_j): sum_j H_j = F_g R_g with
    F_g[a, b] = <Lambda_2 S^-1 Lambda_2', Gram_gab>, then the same algebra as per level."""
    J1, Ng, Q2 = L1i.shape[0], gram.shape[0], Sinv.shape[0]
    rep = _representatives(groups, Ng)
    count = np.zeros(Ng)
    for j in range(J1):
        count[groups[j]] += 1.0
    Sg = _lmul(_lmul(Sinv, Ts, blocks, False).T.copy(), Ts, blocks, False)   # Lambda_2 S^-1 Lambda_2'
    F = np.empty((q1, q1))
    H = np.empty((q1, q1))
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
        tr += _level_terms(G, Ts, k1, q1, D1, L1i, R, H, j, count[gg])
    return tr


# --------------------------------------------------------------------------------------------
@njit
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
    v[:Q1] = _lambda1(Ts, k1, q1, a[:Q1], False)
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
    for j in range(J1):                            # the eliminated factor's g_j a_j'
        for a_ in range(q1):
            for b in range(q1):
                G[k1, a_, b] += g[j * q1 + a_] * a[j * q1 + b]
    if Q1 and grouped:
        trP += _grouped_terms(G, Ts, k1, q1, D1, L1i, R, Sinv, blocks, groups, gram)
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
        for j in range(J1):
            trP += _level_terms(G, Ts, k1, q1, D1, L1i, R, H[j], j, 1.0)
        for r in range(blocks.shape[0]):
            s, qb, f = blocks[r, 0], blocks[r, 1], blocks[r, 2]
            for a_ in range(qb):
                for b in range(qb):
                    t = 0.0
                    for m in range(Q1):
                        t += BR[s + a_, m] * M[s + b, m]
                    G[f, a_, b] += s2 * t
    # chain rule to sd and C (T = diag(sd) C), sigma
    o_sd, o_c = _theta_offsets(p, q)
    for k in range(K):
        qk = q[k]
        for i in range(qk):
            for m in range(qk):
                Gim = G[k, i, m] / s2
                gtheta[o_sd[k] + i] += Gim * theta[o_c[k] + i * qk + m]
                gtheta[o_c[k] + i * qk + m] = Gim * theta[o_sd[k] + i]
    ua = np.dot(u, a)
    aa = np.dot(a, a)
    gs2 = -0.5 * ((n - Q + trP) / s2 - rr / (s2 * s2) + (ua + aa) / (s2 * s2 * s2))
    gtheta[theta.shape[0] - 1] = 2.0 * np.sqrt(s2) * gs2
    for k in range(theta.shape[0]):
        gtheta[k] *= w
    return gtheta
