"""Each group's GLMM likelihood by adaptive Gauss-Hermite quadrature, and its exact gradient (numba).

The integral, for one grouping factor with q <= 3 terms and Sigma = T T', T = diag(sd) C_chol:

    L_j = int prod_i p(y_ij | eta0_ij + z_ij'u) N(u | 0, Sigma) du,    eta0 = offset + X b.

It is written in the standardised effects v (u = T v, v ~ N(0, I)), so the integrand is
exp f(v) with f(v) = sum_i l_i(eta0_i + w_i'v) - v'v/2 - (q/2) log 2 pi and w_i = T'z_i. This
keeps everything finite at sd = 0 (the boundary variance components often sit near), and the
negative Hessian H = I + sum_i c_i w_i w_i' (c_i = -l_i'' >= 0 for these log-concave families) is
never below the identity, so Newton's method is safe and the mode unique.

**AGHQ** (Liu & Pierce 1994; Pinheiro & Bates 1995; as GLMMadaptive and lme4's nAGQ): v* = the
mode, H = L L' (Cholesky) at v*, standard-normal nodes z_k with weights W_k (M of them: the k^q
product rule for k nodes per axis, or a smaller rule of the same degree,
:func:`~bayeslmm.paths.quadrature.node_rule`), v_k = v* + L^-T z_k:

    log L_j ~= -log|L| + logsumexp_k [log W_k + z_k'z_k/2 - v_k'v_k/2 + sum_i l_i(eta0_i + w_i'v_k)].

One node (z = 0) is the Laplace approximation. The value is a deterministic function of the
parameters: the mode (:mod:`bayeslmm.paths.quadrature_mode`) is exact to ~1e-12 whatever Newton's
starting point (the tests check < 1e-10 from random starts).

**Gradient** of this approximation (not of the exact integral), by reverse mode through the
mode and the Cholesky factor. With pi_k the softmax weights of the nodes, G_k = grad_v f(v_k):
  * the nodes give dF/dv* = sum_k pi_k G_k and dF/dL = -diag(1/L) - sum_k pi_k tril(L^-T z_k (L^-1 G_k)');
  * the Cholesky adjoint turns dF/dL into dF/dH = sym(L^-T Phi(L' dF/dL) L^-1) (Murray 2016);
  * H depends on v* through c_i(eta_i*), whose derivative is -l_i''' (closed form per family);
  * the implicit function theorem (grad_v f(v*) = 0) gives dv*/dtheta = H^-1 d(grad_v f)/dtheta,
    applied as one solve lambda = H^-1 (dF/dv*).
Every contribution is collected per row as d/d eta0_i and d/d w_i (plus d/d phi), then mapped to
b (eta0 = offset + X b), to T (w_i = T'z_i) and to sd and C_chol. Checked against central
finite differences of the kernel itself (tests/test_quadrature.py).

Rows are sorted by group once (``starts``); the kernel loops per group, so each group's rows stay
in cache through its Newton iterations and node passes; one term (q = 1) has a scalar path whose
Newton steps and nodes are each a single vectorised pass over the rows
(:func:`~bayeslmm.paths.quadrature_q1.group_q1`). For
two or three terms all nodes are one pass over the group's rows with the nodes innermost
(:func:`~bayeslmm.paths.quadrature_fused.nodes_rows`: node k's linear predictor is
eta*_i + s_i'z_k with s_i = L^-1 w_i, so the loop over the nodes is branch-free and vectorises
whatever the group's size); on groups of 20 rows this made a likelihood + gradient 3.4 -> 2.8 ms
(binomial, two terms, 500 groups, 12 nodes), as a call per node and group paid its loop set-up
and scalar remainder 6,000 times. The per-node algebra (v_k, the softmax, the adjoints of the
mode and of L) is likewise written over all nodes at once.

What a group's rows cost is small next to what a call per group costs, so two more rules:

* the modes of the groups of at most 64 rows, and the mode pass there, are found in lockstep
  across groups (:mod:`bayeslmm.paths.quadrature_lockstep`: one long family pass per Newton
  evaluation instead of three 20-row calls per group);
* numba's reference counting is off (``_nrt=False``) in the loop over the groups
  (:func:`_groups`, called by :func:`aghq_kernel`, which allocates everything) and in every helper
  it calls: each array view and each array argument of a call otherwise costs an atomic increment
  and decrement, which perf showed at a quarter of the kernel's time on 500 groups of 20 rows.

Together: 3.3 -> 1.6 ms a likelihood + gradient on that data; with Newton started to first order
near each mode (:func:`~bayeslmm.paths.quadrature_nodes.newton_start`), the lockstep's layout made
once, and the per-group views remade only when a group's size changes, 1.4 ms (docs/bench-glmm.md).
"""

from __future__ import annotations

import math

import numpy as np

from .quadrature import BINOMIAL_LOGIT, NEGBINOMIAL_LOG, POISSON_LOG
from .quadrature_families import NO_NRT, njit, fam_mode, nb_phi_part, vexp
from .quadrature_fused import exp_rows, nodes_rows, small_trials, unit_rows
from .quadrature_lockstep import lockstep_core, unpack_plan
from .quadrature_mode import chol, chol_adjoint, find_mode, grad_hess, linpred, rowsum, solve_lower, solve_upper_t
from .quadrature_q1 import group_q1

__all__ = ["aghq_kernel"]

_NJIT = dict(cache=True, nogil=True, error_model="numpy", fastmath={"contract", "nsz", "arcp", "reassoc"})
_NO_NRT = dict(_NJIT, **NO_NRT)
# the node pass's loop over the nodes vectorises from 8 nodes on (4 lanes, unrolled twice); a rule
# with 2-7 nodes is padded with zero-weight nodes to 8, which is faster than its scalar loop
_MIN_VEC = 8
# the most numbers the node pass keeps per group at once (rows x nodes of l'): 8 MB
_D_CAP = 1 << 20


# --------------------------------------------------------------------------------------------
# One group
# --------------------------------------------------------------------------------------------
@njit(**_NO_NRT)
def _group(want_grad, have_mode, fam, y, n, eta0, w, q, phi, lphi, zT, lwn, pow_form, v,
           eta, ls, d1s, d2s, d3s, pls, p1s, p2s, nd1, acc_e, acc_o, gw, mats, vecs, km, k8, sr, dbuf, dfull, zrow):
    """log L_j (without data constants) and, if want_grad, d/d eta0_i (in acc_e), d/d w_i (gw)
    and d/d phi. ``v`` holds the Newton start on entry and the mode on exit. With ``have_mode``,
    :func:`~bayeslmm.paths.quadrature_lockstep.lockstep_modes` has found the mode (in ``v``) and
    done the mode pass: eta ... p2s hold its rows, mats[0] and vecs[5] the -Hessian and gradient.
    Returns (logL, dphi, ok).

    Scratch (m,) arrays: eta; at the mode l and its first three derivatives in eta, and the
    phi-derivatives of l, dl, d2l (nd1 is reused by the reverse pass); acc_e and acc_o (3, m) the
    softmax-weighted sums over the nodes; gw is (3, m) and ``zrow`` (m,) zeros (the third term's
    row when there are two). All contiguous, so the row loops vectorise. Small scratch (allocated
    once per call): ``mats`` (7, q, q), ``vecs`` (12, q), ``km`` (4, M), ``k8`` (22, M) (the node
    pass's sums and scratch in rows 0-12, then SK, VK and G per node, the nodes innermost); per row
    ``sr`` (3, m); ``dbuf`` the node pass's row x node scratch (at most _D_CAP
    numbers: rows are taken in chunks), and ``dfull`` the same as an (m, Mp) view where the group
    is one chunk (made by the caller, once per group size).
    ``zT`` (3, M) are the standard nodes transposed (zero rows beyond q); ``pow_form`` as in
    :func:`~bayeslmm.paths.quadrature_fused.nodes_rows`.
    """
    nj = eta0.shape[0]
    M = lwn.shape[0]
    Mp = zT.shape[1]                  # M, or more: zero nodes that fill a vector (weight 0)
    H, L, Lbar, Hbar = mats[0], mats[1], mats[2], mats[3]
    g, zk, av, vbar, lam = vecs[5], vecs[6], vecs[7], vecs[9], vecs[10]
    P, lw = km[0], km[1]
    # per-node quantities, nodes innermost (rows of k8): SK_k = L^-T z_k, VK_k = v* + SK_k,
    # G_k = grad_v f(v_k) and HK_k = L^-1 G_k, three rows each (zero rows beyond q)
    SK0, SK1, SK2 = k8[13], k8[14], k8[15]
    VK0, VK1, VK2 = k8[16], k8[17], k8[18]
    G0, G1, G2 = k8[19], k8[20], k8[21]
    if not have_mode:
        if not find_mode(fam, y, n, eta0, w, q, v, phi, lphi, H, L, eta, d1s, d2s, mats[4:], vecs):
            return -np.inf, 0.0, False
        # the mode pass: everything the gradient needs at v*
        linpred(eta0, w, v, eta)
        fam_mode(fam, y, n, eta, phi, lphi, ls, d1s, d2s, d3s, pls, p1s, p2s, M == 1)   # l: one node only
        grad_hess(d1s, d2s, w, v, q, g, H)
    if not chol(H, q, L):
        return -np.inf, 0.0, False
    logdet = 0.0
    for a in range(q):
        logdet += math.log(L[a, a])
    # nodes: v_k = v* + L^-T z_k; with s_i = L^-1 w_i, w_i'v_k = w_i'v* + s_i'z_k, so all nodes
    # are one pass over the rows (quadrature_fused.nodes_rows), the nodes innermost
    z0, z1, z2 = zT[0], zT[1], zT[2]
    i00 = 1.0 / L[0, 0]
    i11 = 1.0 / L[1, 1]
    l10 = L[1, 0]
    v0_, v1_ = v[0], v[1]
    if q == 3:
        i22 = 1.0 / L[2, 2]
        l20, l21 = L[2, 0], L[2, 1]
        v2_ = v[2]
        for k in range(Mp):
            SK2[k] = z2[k] * i22
            SK1[k] = (z1[k] - l21 * SK2[k]) * i11
            SK0[k] = (z0[k] - l10 * SK1[k] - l20 * SK2[k]) * i00
    else:
        i22 = l20 = l21 = v2_ = 0.0
        for k in range(Mp):
            SK2[k] = 0.0
            SK1[k] = z1[k] * i11
            SK0[k] = (z0[k] - l10 * SK1[k]) * i00
    for k in range(Mp):
        VK0[k] = v0_ + SK0[k]
        VK1[k] = v1_ + SK1[k]
        VK2[k] = v2_ + SK2[k]
    Sk, wk = km[2], km[3]
    laplace = M == 1 and zT[0, 0] == 0.0 and zT[1, 0] == 0.0 and zT[2, 0] == 0.0
    if laplace:
        # one node, at the mode (the Laplace approximation): the mode pass has computed it
        Sk[0] = rowsum(ls)
        P[0] = rowsum(pls) if fam == NEGBINOMIAL_LOG else 0.0
        G0[0] = g[0]
        G1[0] = g[1]
        G2[0] = g[2] if q == 3 else 0.0
    else:
        s0, s1, s2 = sr[0], sr[1], sr[2]
        for i in range(nj):
            s0[i] = w[0, i] * i00
            s1[i] = (w[1, i] - l10 * s0[i]) * i11
        w2 = s2
        if q == 3:
            for i in range(nj):
                s2[i] = (w[2, i] - l20 * s0[i] - l21 * s1[i]) * i22
            w2 = w[2]
        else:
            s2[:] = 0.0
        for k in range(Mp):
            Sk[k] = P[k] = k8[0, k] = k8[1, k] = k8[2, k] = 0.0
        # rows in chunks of ch, so that their derivatives at the nodes (D) stay within _D_CAP
        # numbers; a group with more rows is passed twice (again for the gradient, below)
        ch = max(8, _D_CAP // Mp)
        for c0 in range(0, nj, ch):
            c1 = min(nj, c0 + ch)
            nodes_rows(fam, y[c0:c1], n[c0:c1], eta[c0:c1], s0[c0:c1], s1[c0:c1], s2[c0:c1], w[0, c0:c1],
                       w[1, c0:c1], w2[c0:c1], z0, z1, z2, Mp, q, phi, lphi, pow_form,
                       dfull if nj <= ch else dbuf[:(c1 - c0) * Mp].reshape((c1 - c0, Mp)), Sk, P, k8[0], k8[1], k8[2],
                       k8[6], k8[7], False)
        for k in range(Mp):
            G0[k] = k8[0, k] - VK0[k]
            G1[k] = k8[1, k] - VK1[k]
            G2[k] = k8[2, k] - VK2[k]
    ref = -np.inf
    finite = True
    for k in range(M):
        lw[k] = lwn[k] - 0.5 * (VK0[k] * VK0[k] + VK1[k] * VK1[k] + VK2[k] * VK2[k]) + Sk[k]
        finite &= abs(lw[k]) < np.inf
        ref = max(ref, lw[k])
    if not finite:
        return -np.inf, 0.0, False
    tot = 0.0
    for k in range(M):
        wk[k] = vexp(lw[k] - ref)
        tot += wk[k]
    logL = -logdet + ref + math.log(tot)
    if not want_grad:
        return logL, 0.0, True
    # --- reverse mode ---
    itot = 1.0 / tot
    # softmax-weighted sums over the nodes per row: sum_k pi_k l'_ik and sum_k pi_k v_k l'_ik
    wv0, wv1, wv2 = k8[3], k8[4], k8[5]
    for k in range(M, Mp):
        wk[k] = 0.0
    for k in range(Mp):
        pk = wk[k] * itot
        wv0[k] = pk * VK0[k]
        wv1[k] = pk * VK1[k]
        wv2[k] = pk * VK2[k]
    if laplace:
        for i in range(nj):
            acc_e[i] = d1s[i]
            acc_o[0, i] = wv0[0] * d1s[i]
            acc_o[1, i] = wv1[0] * d1s[i]
            acc_o[2, i] = wv2[0] * d1s[i]
    else:
        ch = max(8, _D_CAP // Mp)
        for c0 in range(0, nj, ch):
            c1 = min(nj, c0 + ch)
            D = dfull if nj <= ch else dbuf[:(c1 - c0) * Mp].reshape((c1 - c0, Mp))
            if nj > ch:                  # this chunk's derivatives again (the sums go to scratch)
                s0, s1, s2 = sr[0], sr[1], sr[2]
                w2 = w[2] if q == 3 else s2
                nodes_rows(fam, y[c0:c1], n[c0:c1], eta[c0:c1], s0[c0:c1], s1[c0:c1], s2[c0:c1], w[0, c0:c1],
                           w[1, c0:c1], w2[c0:c1], z0, z1, z2, Mp, q, phi, lphi, pow_form, D, k8[8], k8[9],
                           k8[10], k8[11], k8[12], k8[6], k8[7])
            if q == 3:
                for i in range(c0, c1):
                    Drow = D[i - c0]
                    se = 0.0
                    so0 = 0.0
                    so1 = 0.0
                    so2 = 0.0
                    for k in range(Mp):
                        se += wk[k] * Drow[k]
                        so0 += wv0[k] * Drow[k]
                        so1 += wv1[k] * Drow[k]
                        so2 += wv2[k] * Drow[k]
                    acc_e[i] = se * itot
                    acc_o[0, i] = so0
                    acc_o[1, i] = so1
                    acc_o[2, i] = so2
            else:                        # two terms: no third sum (wv2 is zero)
                for i in range(c0, c1):
                    Drow = D[i - c0]
                    se = 0.0
                    so0 = 0.0
                    so1 = 0.0
                    for k in range(Mp):
                        se += wk[k] * Drow[k]
                        so0 += wv0[k] * Drow[k]
                        so1 += wv1[k] * Drow[k]
                    acc_e[i] = se * itot
                    acc_o[0, i] = so0
                    acc_o[1, i] = so1
                    acc_o[2, i] = 0.0
    # av = sum_k pi_k G_k and Lbar = -diag(1/L) - sum_k pi_k tril(SK_k (L^-1 G_k)'), over the
    # nodes at once (h = L^-1 G_k by forward substitution, written out; zero rows beyond q)
    dphi = 0.0
    a0 = a1 = a2 = 0.0
    b00 = b10 = b11 = b20 = b21 = b22 = 0.0
    for k in range(Mp):
        pk = wk[k] * itot
        dphi += pk * P[k]
        a0 += pk * G0[k]
        a1 += pk * G1[k]
        a2 += pk * G2[k]
        h0 = G0[k] * i00
        h1 = (G1[k] - l10 * h0) * i11
        h2 = (G2[k] - l20 * h0 - l21 * h1) * i22
        b00 += pk * SK0[k] * h0
        b10 += pk * SK1[k] * h0
        b11 += pk * SK1[k] * h1
        b20 += pk * SK2[k] * h0
        b21 += pk * SK2[k] * h1
        b22 += pk * SK2[k] * h2
    av[0] = a0
    av[1] = a1
    Lbar[:, :] = 0.0
    Lbar[0, 0] = -b00 - i00
    Lbar[1, 0] = -b10
    Lbar[1, 1] = -b11 - i11
    if q == 3:
        av[2] = a2
        Lbar[2, 0] = -b20
        Lbar[2, 1] = -b21
        Lbar[2, 2] = -b22 - i22
    chol_adjoint(L, Lbar, q, Hbar, mats[4], mats[5], vecs[0], vecs[1])
    # two fused passes over the rows, written for three terms (zero row / entries for two):
    # m_i = w_i' Hbar w_i and dF/dv* = av - sum_i m_i l3_i w_i (l3 = l'''); then, with
    # lambda = H^-1 dF/dv*, the gradient in eta0_i (acc_e) and in w_i (gw)
    w0, w1 = w[0], w[1]
    w2 = w[2] if q == 3 else zrow
    h00, h10, h11 = Hbar[0, 0], Hbar[1, 0], Hbar[1, 1]
    h20 = Hbar[2, 0] if q == 3 else 0.0
    h21 = Hbar[2, 1] if q == 3 else 0.0
    h22 = Hbar[2, 2] if q == 3 else 0.0
    mrow = nd1
    nb = fam == NEGBINOMIAL_LOG         # (the rows' phi-derivatives are zero otherwise)
    vb0 = vb1 = vb2 = 0.0
    for i in range(nj):
        a0, a1, a2 = w0[i], w1[i], w2[i]
        m = h00 * a0 * a0 + h11 * a1 * a1 + h22 * a2 * a2 + 2.0 * (h10 * a0 * a1 + h20 * a0 * a2 + h21 * a1 * a2)
        mrow[i] = m
        t = m * d3s[i]
        vb0 += t * a0
        vb1 += t * a1
        vb2 += t * a2
    vbar[0] = av[0] - vb0
    vbar[1] = av[1] - vb1
    if q == 3:
        vbar[2] = av[2] - vb2
    solve_lower(L, q, vbar, zk)
    solve_upper_t(L, q, zk, lam)
    l0, l1 = lam[0], lam[1]
    l2 = lam[2] if q == 3 else 0.0
    v0_, v1_ = v[0], v[1]
    v2_ = v[2] if q == 3 else 0.0
    o0, o1, o2 = acc_o[0], acc_o[1], acc_o[2]
    g0, g1, g2 = gw[0], gw[1], gw[2]
    for i in range(nj):
        a0, a1, a2 = w0[i], w1[i], w2[i]
        m = mrow[i]
        lwi = l0 * a0 + l1 * a1 + l2 * a2
        coef = -m * d3s[i] + d2s[i] * lwi               # multiplies d eta_i* (eta0 and the w'v* part)
        acc_e[i] += coef
        if nb:
            dphi += -m * p2s[i] + lwi * p1s[i]
        c2 = -2.0 * d2s[i]
        dd = d1s[i]
        g0[i] = o0[i] + coef * v0_ + c2 * (h00 * a0 + h10 * a1 + h20 * a2) + dd * l0
        g1[i] = o1[i] + coef * v1_ + c2 * (h10 * a0 + h11 * a1 + h21 * a2) + dd * l1
        g2[i] = o2[i] + coef * v2_ + c2 * (h20 * a0 + h21 * a1 + h22 * a2) + dd * l2
    return logL, dphi, True


@njit(**_NO_NRT)
def _tbar(Zt, s0, gw, q, wj, Tbar):
    """Tbar[m, a] += wj sum_i z_im dF/dw_ia over one group's rows (q = 2, 3; gw has 3 rows), one pass."""
    t00 = t01 = t02 = t10 = t11 = t12 = t20 = t21 = t22 = 0.0
    g0, g1, g2 = gw[0], gw[1], gw[2]
    z0, z1 = Zt[0], Zt[1]
    if q == 2:
        for i in range(gw.shape[1]):
            a, b_ = z0[s0 + i], z1[s0 + i]
            t00 += a * g0[i]
            t01 += a * g1[i]
            t10 += b_ * g0[i]
            t11 += b_ * g1[i]
    else:
        z2 = Zt[2]
        for i in range(gw.shape[1]):
            a, b_, c = z0[s0 + i], z1[s0 + i], z2[s0 + i]
            t00 += a * g0[i]
            t01 += a * g1[i]
            t02 += a * g2[i]
            t10 += b_ * g0[i]
            t11 += b_ * g1[i]
            t12 += b_ * g2[i]
            t20 += c * g0[i]
            t21 += c * g1[i]
            t22 += c * g2[i]
    Tbar[0, 0] += wj * t00
    Tbar[0, 1] += wj * t01
    Tbar[1, 0] += wj * t10
    Tbar[1, 1] += wj * t11
    if q == 3:
        Tbar[0, 2] += wj * t02
        Tbar[1, 2] += wj * t12
        Tbar[2, 0] += wj * t20
        Tbar[2, 1] += wj * t21
        Tbar[2, 2] += wj * t22


# --------------------------------------------------------------------------------------------
# All groups
# --------------------------------------------------------------------------------------------
@njit(**_NO_NRT)
def _groups(want_grad, fam, q, p, ph, lphi, wgt, b, T, v0, y, trials, offset, Xt, Zt, starts, nodes, lwn, rules,
            rule_of, const, work, work_q, work_o, work_s, work_g, zrow, work_d, zbuf, k8, mats, vecs, km, v,
            lp, modes, gb, Tbar, eta0_all, w_all, lmodes, mode_ok, rows_all, gh):
    """The loop over the groups of :func:`aghq_kernel`, which allocates all of its arrays (numba's
    reference counting off here: its atomic increments and decrements on every view and every
    array argument of the calls per group cost a third of the kernel's time on 500 groups of 20
    rows). Fills lp, modes and the gradient's gb and Tbar; returns the gradient in phi."""
    J = starts.shape[0] - 1
    rule_now = -1
    gphi = 0.0
    # contiguous per-group views of the scratch, the 2-D ones by reshaping a flat slice, remade only
    # when the group's size (or its rule's node count) changes: numba's reshape is a call into its
    # C helpers, which cost 3% of the kernel when made for every group
    nj_v = -1
    Mj_v = -1
    w = gw = gw1 = acc_o = sr = work_q[0:0].reshape((q, 0))
    zT = dfull = zbuf[0:0].reshape((0, 0))
    for j in range(J):
        s0 = starts[j]
        s1 = starts[j + 1]
        nj = s1 - s0
        r0, r1, center = rules[rule_of[j], 0], rules[rule_of[j], 1], rules[rule_of[j], 2]
        nodes_j = nodes[r0:r1]
        lwn_j = lwn[r0:r1]
        eta0 = work[0:nj]
        ge = work[11 * nj:12 * nj]
        new_size = nj != nj_v
        if new_size:
            nj_v = nj
            w = work_q[0:q * nj].reshape((q, nj))
            gw1 = work_q[q * nj:2 * q * nj].reshape((q, nj))
            acc_o = work_o[:3 * nj].reshape((3, nj))
            if q > 1:
                gw = work_g[:3 * nj].reshape((3, nj))
                sr = work_s[:3 * nj].reshape((3, nj))
        if q == 1:
            gw = gw1
        if q == 1:
            for i in range(nj):
                eta0[i] = offset[s0 + i]
            for k in range(p):
                bk = b[k]
                for i in range(nj):
                    eta0[i] += Xt[k, s0 + i] * bk
            for i in range(nj):
                w[0, i] = T[0, 0] * Zt[0, s0 + i]
        else:
            if not mode_ok[j]:          # (only Newton and the mode pass read eta0)
                for i in range(nj):
                    eta0[i] = eta0_all[s0 + i]
            for a in range(q):
                for i in range(nj):
                    w[a, i] = w_all[a, s0 + i]
        for a in range(q):
            v[a] = v0[j, a] if q == 1 or not mode_ok[j] else lmodes[j, a]
        if q == 1:
            A = work[nj:2 * nj]
            emax = np.inf
            if (fam == BINOMIAL_LOGIT or fam == POISSON_LOG) and unit_rows(Zt[0, s0:s1], trials[s0:s1]):
                emax = exp_rows(eta0, A)
            logL, dphi, ok = group_q1(want_grad, fam, y[s0:s1], trials[s0:s1], eta0, w[0], ph, lphi, nodes_j, lwn_j,
                                       center, v, work[2 * nj:3 * nj], work[3 * nj:4 * nj], work[4 * nj:5 * nj],
                                       work[6 * nj:7 * nj], work[7 * nj:8 * nj], work[8 * nj:9 * nj], ge, gw[0], km,
                                       A, emax, mats[0], mats[1])
        else:
            Mj = r1 - r0
            if Mj > 1:
                Mj = max(_MIN_VEC, (Mj + 3) // 4 * 4)
            if Mj != Mj_v or new_size:
                if Mj != Mj_v:
                    zT = zbuf[:3 * Mj].reshape((3, Mj))
                    rule_now = -1
                Mj_v = Mj
                if nj <= max(8, _D_CAP // Mj):
                    dfull = work_d[:nj * Mj].reshape((nj, Mj))
            if rule_of[j] != rule_now:          # the rule's nodes transposed (rows contiguous, zeros beyond q)
                rule_now = rule_of[j]
                zT[:, :] = 0.0
                for k in range(r1 - r0):
                    for a in range(q):
                        zT[a, k] = nodes_j[k, a]
            pow_form = fam == BINOMIAL_LOGIT and small_trials(trials[s0:s1])
            if mode_ok[j]:          # the mode pass done in lockstep: its rows, gradient and -Hessian
                r8 = (rows_all[0, s0:s1], rows_all[1, s0:s1], rows_all[2, s0:s1], rows_all[3, s0:s1],
                      rows_all[4, s0:s1], rows_all[5, s0:s1], rows_all[6, s0:s1], rows_all[7, s0:s1])
                Hj = mats[0]
                for a in range(q):
                    vecs[5, a] = gh[j, a]
                Hj[0, 0] = gh[j, 3]
                Hj[1, 0] = Hj[0, 1] = gh[j, 4]
                Hj[1, 1] = gh[j, 5]
                if q == 3:
                    Hj[2, 0] = Hj[0, 2] = gh[j, 6]
                    Hj[2, 1] = Hj[1, 2] = gh[j, 7]
                    Hj[2, 2] = gh[j, 8]
            else:
                r8 = (work[nj:2 * nj], work[2 * nj:3 * nj], work[3 * nj:4 * nj], work[4 * nj:5 * nj],
                      work[5 * nj:6 * nj], work[6 * nj:7 * nj], work[7 * nj:8 * nj], work[8 * nj:9 * nj])
            logL, dphi, ok = _group(want_grad, mode_ok[j], fam, y[s0:s1], trials[s0:s1], eta0, w, q, ph, lphi, zT,
                                    lwn_j, pow_form, v, r8[0], r8[1], r8[2], r8[3], r8[4], r8[5], r8[6], r8[7],
                                    work[9 * nj:10 * nj], ge, acc_o, gw, mats, vecs, km, k8, sr, work_d, dfull,
                                    zrow[:nj])
        extra = 0.0
        dextra = 0.0
        if fam == NEGBINOMIAL_LOG:
            for i in range(nj):
                a0, a1 = nb_phi_part(y[s0 + i], ph)
                extra += a0
                dextra += a1
        lp[j] = logL + const[j] + extra
        for a in range(q):
            modes[j, a] = v[a]
        if not ok or not want_grad:
            continue
        wj = wgt[j]
        gphi += wj * (dphi + dextra)
        for k in range(p):
            s = 0.0
            for i in range(nj):
                s += ge[i] * Xt[k, s0 + i]
            gb[k] += wj * s
        if q == 1:
            s = 0.0
            for i in range(nj):
                s += Zt[0, s0 + i] * gw[0, i]
            Tbar[0, 0] += wj * s
        else:
            _tbar(Zt, s0, gw, q, wj, Tbar)
    return gphi


@njit(**_NJIT)
def aghq_kernel(grad, wgt, b, sd, Cc, phi, v0, y, trials, offset, Xt, Zt, starts, ictl, nodes, lwn, rules, rule_of,
                lplan, lrows, const):
    """Per-group AGHQ log-likelihoods and the wgt-weighted gradient.

    Parameters
    ----------
    grad : 0-d int64 array; nonzero to compute the gradient (else zeros are returned for it).
    wgt : (J,) weights of the gradient (sum_j wgt_j d logL_j / d theta).
    b (p,), sd (q,), Cc (q, q) lower Cholesky factor of the correlation, phi 0-d (negbinomial).
    v0 : (J, q) Newton starting points in the standardised scale (zeros for a cold start).
    y, trials, offset (n,), Xt (p, n), Zt (q, n): rows sorted by group (X and Z transposed, so
        that the loops over a group's rows vectorise); starts (J + 1,).
    ictl : int64 [family code].
    nodes (M, q), lwn (M,): standard-normal product nodes and log W_k + z_k'z_k / 2, the rules one
        after another; rules (R, 3) int64 [first, end, index of the node at z = 0 or -1] of each
        rule in them; rule_of (J,) the rule of each group (groups may use different numbers of nodes).
    lplan, lrows : the lockstep's plan and its rank-major constant rows
        (:func:`~bayeslmm.paths.quadrature_lockstep.lockstep_layout`; read for two or three terms).
    const : (J,) data-only log-density constants per group (log binomial coefficients, -log y!).

    Returns
    -------
    (logL (J,), d/db (p,), d/dsd (q,), d/dCc (q, q), d/dphi (), modes (J, q))
    """
    fam = ictl[0]
    want_grad = grad[()] != 0
    J = starts.shape[0] - 1
    p = Xt.shape[0]
    q = Zt.shape[0]
    ph = phi[()]
    lphi = math.log(ph) if fam == NEGBINOMIAL_LOG else 0.0
    T = np.empty((q, q))
    for a in range(q):
        for c in range(q):
            T[a, c] = sd[a] * Cc[a, c]
    maxn = 1
    for j in range(J):
        maxn = max(maxn, starts[j + 1] - starts[j])
    work = np.empty(12 * maxn)
    work_q = np.empty(2 * q * maxn)
    work_o = np.empty(3 * maxn)
    M = 1
    for r in range(rules.shape[0]):
        M = max(M, rules[r, 1] - rules[r, 0])
    if q > 1:
        # every row's linear predictor without the group effects and w_i = T'z_i, in long loops,
        # then the modes of the small groups in lockstep (quadrature_lockstep)
        n_all = Xt.shape[1]
        eta0_all = np.empty(n_all)
        for i in range(n_all):
            eta0_all[i] = offset[i]
        for k in range(p):
            bk = b[k]
            xk = Xt[k]
            for i in range(n_all):
                eta0_all[i] += xk[i] * bk
        w_all = np.empty((q, n_all))
        for a in range(q):
            wa = w_all[a]
            t = T[0, a]
            z0 = Zt[0]
            for i in range(n_all):
                wa[i] = t * z0[i]
            for m in range(1, q):
                t = T[m, a]
                zm = Zt[m]
                for i in range(n_all):
                    wa[i] += t * zm[i]
        lmodes = np.zeros((J, q))
        mode_ok = np.zeros(J, dtype=np.bool_)
        rows_all = np.empty((8, n_all))
        gh = np.empty((J, 9))
        laplace_rule = False
        for r in range(rules.shape[0]):
            laplace_rule |= rules[r, 1] - rules[r, 0] == 1
        # the lockstep's rows are in its rank-major order (lrows: y, n, offset, X, Z), where eta0 and
        # w are computed again in long loops (cheaper than gathering them)
        lanes, cnt, off, src = unpack_plan(lplan)
        nr = src.shape[0]
        E0 = np.empty(nr)
        W = np.empty((3, nr))
        for i in range(nr):
            E0[i] = lrows[2, i]
        for k in range(p):
            bk = b[k]
            xk = lrows[3 + k]
            for i in range(nr):
                E0[i] += xk[i] * bk
        for a in range(3):
            Wa = W[a]
            for i in range(nr):
                Wa[i] = 0.0
            if a < q:
                for m in range(q):
                    t = T[m, a]
                    zm = lrows[3 + p + m]
                    for i in range(nr):
                        Wa[i] += t * zm[i]
        lockstep_core(fam, q, lrows[0], lrows[1], E0, W, ph, lphi, lanes, cnt, off, src, v0, lmodes, mode_ok, rows_all,
                      gh, laplace_rule)
        work_s = np.empty(3 * maxn)
        work_g = np.empty(3 * maxn)
        zrow = np.zeros(maxn)
        Mmax = max((M + 3) // 4 * 4, _MIN_VEC)
        work_d = np.empty(min(Mmax * maxn, max(_D_CAP, 8 * Mmax)))
        zbuf = np.zeros(3 * Mmax)
        k8 = np.zeros((22, Mmax))
    mats = np.zeros((7, q, q))
    vecs = np.zeros((12, q))
    km = np.zeros((4, max((M + 3) // 4 * 4, _MIN_VEC)))
    v = np.empty(q)
    lp = np.empty(J)
    modes = np.empty((J, q))
    gb = np.zeros(p)
    Tbar = np.zeros((q, q))
    if q == 1:               # (the arrays only two or three terms use)
        eta0_all = np.empty(0)
        w_all = np.empty((q, 0))
        lmodes = np.zeros((J, q))
        mode_ok = np.zeros(J, dtype=np.bool_)
        rows_all = np.empty((8, 0))
        gh = np.empty((J, 9))
        work_s = work_g = zrow = work_d = zbuf = np.empty(0)
        k8 = np.empty((22, 8))
    gphi = _groups(want_grad, fam, q, p, ph, lphi, wgt, b, T, v0, y, trials, offset, Xt, Zt, starts, nodes, lwn, rules,
                   rule_of, const, work, work_q, work_o, work_s, work_g, zrow, work_d, zbuf, k8, mats, vecs, km, v,
                   lp, modes, gb, Tbar, eta0_all, w_all, lmodes, mode_ok, rows_all, gh)
    gsd = np.zeros(q)
    gC = np.zeros((q, q))
    if want_grad:
        for a in range(q):
            for c in range(q):
                gsd[a] += Tbar[a, c] * Cc[a, c]
                gC[a, c] = Tbar[a, c] * sd[a]
    gph = np.zeros(())
    gph[()] = gphi
    return lp, gb, gsd, gC, gph, modes
