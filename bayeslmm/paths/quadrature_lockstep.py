"""The modes of many small groups at once: Newton's method in lockstep across groups (numba).

A helper of :mod:`bayeslmm.paths.quadrature_kernel` for two or three terms. Group by group, a
Newton step on a group of 20 rows is three calls of 20-row loops (linear predictor, family, sums),
and the calls, the array views they take and the loops' scalar remainders cost more than the rows:
on 500 groups x 20 binomial rows a Newton evaluation took 139 us as 500 group calls against 39 us as
one call over the 10,000 rows (min of 7 x 100, tests/bench data). Here the rows of the groups with
at most :data:`LOCKSTEP_MAX_ROWS` rows are laid out rank-major (row r of every group with more than
r rows, one after another; the groups sorted by size, largest first, so each rank is a prefix of
the lanes): one evaluation is one long family pass plus, per rank, loops over the groups ("lanes")
that vectorise whatever the groups' sizes. The layout is a constant of the data
(:func:`lockstep_layout`: the plan, and y, n, offset, X and Z in its order), made once and passed to
the kernel as data, so a call computes eta0 and w in that order with no sort or strided gather.
Once fewer than a quarter of the lanes are still trying a step (with the fitted model's Newton start,
typically the third evaluation, for ~10% of the groups), an evaluation covers those lanes only.

Each lane follows exactly the iteration of :func:`~bayeslmm.paths.quadrature_mode.find_mode`
(Newton steps, halved until the gradient norm decreases, stop once a step is below NEWTON_TOL and
take it); lanes that have stopped are carried along unchanged. So a group's mode is the same
deterministic function of the parameters as before (to rounding: the sums run in another order).
"""

from __future__ import annotations

import math

import numpy as np

from .quadrature import NEGBINOMIAL_LOG
from .quadrature_families import NO_NRT, njit, fam_mode, fam_newton
from .quadrature_mode import MAX_NEWTON, NEWTON_TOL

__all__ = ["LOCKSTEP_MAX_ROWS", "lockstep_plan", "lockstep_layout", "unpack_plan", "lockstep_modes", "lockstep_core"]

_NJIT = dict(cache=True, nogil=True, error_model="numpy", fastmath={"contract", "nsz", "arcp", "reassoc"})
# numba's reference counting off where nothing is allocated (see quadrature_kernel._groups)
_NO_NRT = dict(_NJIT, **NO_NRT)

#: groups with at most this many rows share the lockstep Newton; larger ones are fast on their own
#: (a group's loops then vectorise) and would leave the ranks beyond the small groups' sizes with
#: few lanes each
LOCKSTEP_MAX_ROWS = 64
# step halvings per Newton step before the trial point is taken anyway (as find_mode)
_HALVINGS = 60
# a Newton evaluation covers only the lanes still trying a step when they are under 1/_FEW of all
# (gathering a lane's rows costs a few times what a pass over them in the rank-major layout does)
_FEW = 4


@njit(**_NJIT)
def lockstep_plan(starts, max_rows):
    """The rank-major layout of the groups with 1..max_rows rows.

    Returns (lanes (L,) the groups, largest first; cnt (R,) the lanes with more than r rows;
    off (R + 1,) where rank r starts; src (off[R],) the sorted-by-group row of each rank-major row).
    """
    J = starts.shape[0] - 1
    sizes = np.empty(J, dtype=np.int64)
    nl = 0
    for j in range(J):
        sizes[j] = starts[j + 1] - starts[j]
        if 1 <= sizes[j] <= max_rows:
            nl += 1
    lanes = np.empty(nl, dtype=np.int64)
    key = np.empty(nl, dtype=np.int64)
    m = 0
    R = 0
    for j in range(J):
        if 1 <= sizes[j] <= max_rows:
            lanes[m] = j
            key[m] = -sizes[j]
            R = max(R, sizes[j])
            m += 1
    order = np.argsort(key, kind="mergesort")
    lanes = lanes[order]
    cnt = np.zeros(R, dtype=np.int64)
    for l in range(nl):
        for r in range(sizes[lanes[l]]):
            cnt[r] += 1
    off = np.zeros(R + 1, dtype=np.int64)
    for r in range(R):
        off[r + 1] = off[r] + cnt[r]
    src = np.empty(off[R], dtype=np.int64)
    for r in range(R):
        o = off[r]
        for l in range(cnt[r]):
            src[o + l] = starts[lanes[l]] + r
    return lanes, cnt, off, src


@njit(**_NJIT)
def lockstep_layout(starts, y, n, offset, Xt, Zt, max_rows):
    """The plan of :func:`lockstep_plan` packed into one int64 array, and the rows' constant data in
    its rank-major order: the kernel's data inputs (made once per data set, not per call: the plan's
    sort and these strided gathers cost ~0.1 ms a call on 10,000 rows).

    Returns (lplan, lrows): lplan = [L, R, nr, lanes (L), cnt (R), off (R + 1), src (nr)] (read by
    :func:`unpack_plan`); lrows (3 + p + q, nr) the rank-major rows of y, n, offset, X and Z.
    """
    lanes, cnt, off, src = lockstep_plan(starts, max_rows)
    nl, R, nr = lanes.shape[0], cnt.shape[0], src.shape[0]
    lplan = np.empty(3 + nl + R + R + 1 + nr, dtype=np.int64)
    lplan[0] = nl
    lplan[1] = R
    lplan[2] = nr
    lplan[3:3 + nl] = lanes
    lplan[3 + nl:3 + nl + R] = cnt
    lplan[3 + nl + R:4 + nl + 2 * R] = off
    lplan[4 + nl + 2 * R:] = src
    p, q = Xt.shape[0], Zt.shape[0]
    lrows = np.empty((3 + p + q, nr))
    for i in range(nr):
        s = src[i]
        lrows[0, i] = y[s]
        lrows[1, i] = n[s]
        lrows[2, i] = offset[s]
        for k in range(p):
            lrows[3 + k, i] = Xt[k, s]
        for a in range(q):
            lrows[3 + p + a, i] = Zt[a, s]
    return lplan, lrows


@njit(**_NJIT)        # (it returns views: reference counting on, unlike the loops here)
def unpack_plan(lplan):
    """(lanes, cnt, off, src) of a plan packed by :func:`lockstep_layout` (views)."""
    nl, R = lplan[0], lplan[1]
    return (lplan[3:3 + nl], lplan[3 + nl:3 + nl + R], lplan[3 + nl + R:4 + nl + 2 * R],
            lplan[4 + nl + 2 * R:4 + nl + 2 * R + lplan[2]])


@njit(**_NO_NRT)
def _eta_lanes(q, E0, W, cnt, off, vn, ETA):
    """ETA = E0 + W'vn, each rank-major row at its lane's point vn (3, L)."""
    v0, v1, v2 = vn[0], vn[1], vn[2]
    W0, W1, W2 = W[0], W[1], W[2]
    for r in range(cnt.shape[0]):
        c = cnt[r]
        o = off[r]
        e = ETA[o:o + c]
        e0 = E0[o:o + c]
        a0 = W0[o:o + c]
        a1 = W1[o:o + c]
        if q == 3:
            a2 = W2[o:o + c]
            for l in range(c):
                e[l] = e0[l] + a0[l] * v0[l] + a1[l] * v1[l] + a2[l] * v2[l]
        else:
            for l in range(c):
                e[l] = e0[l] + a0[l] * v0[l] + a1[l] * v1[l]


@njit(**_NO_NRT)
def _sums_lanes(q, W, cnt, off, D1, D2, acc):
    """acc[0:3] = sum_i l'_i w_i and acc[3:9] = sum_i l''_i w_i w_i' (00, 10, 11, 20, 21, 22) per lane."""
    for k in range(9):
        for l in range(acc.shape[1]):
            acc[k, l] = 0.0
    W0, W1, W2 = W[0], W[1], W[2]
    g0, g1, g2 = acc[0], acc[1], acc[2]
    h00, h10, h11, h20, h21, h22 = acc[3], acc[4], acc[5], acc[6], acc[7], acc[8]
    for r in range(cnt.shape[0]):
        c = cnt[r]
        o = off[r]
        d1 = D1[o:o + c]
        d2 = D2[o:o + c]
        a0 = W0[o:o + c]
        a1 = W1[o:o + c]
        if q == 3:
            a2 = W2[o:o + c]
            for l in range(c):
                t0 = d2[l] * a0[l]
                t1 = d2[l] * a1[l]
                g0[l] += d1[l] * a0[l]
                g1[l] += d1[l] * a1[l]
                g2[l] += d1[l] * a2[l]
                h00[l] += t0 * a0[l]
                h10[l] += t1 * a0[l]
                h11[l] += t1 * a1[l]
                h20[l] += d2[l] * a2[l] * a0[l]
                h21[l] += d2[l] * a2[l] * a1[l]
                h22[l] += d2[l] * a2[l] * a2[l]
        else:
            for l in range(c):
                t0 = d2[l] * a0[l]
                t1 = d2[l] * a1[l]
                g0[l] += d1[l] * a0[l]
                g1[l] += d1[l] * a1[l]
                h00[l] += t0 * a0[l]
                h10[l] += t1 * a0[l]
                h11[l] += t1 * a1[l]


@njit(**_NO_NRT)
def _evaluate(fam, q, Y, N, E0, W, cnt, off, vn, phi, lphi, ETA, D1, D2, acc):
    """The sums of :func:`_sums_lanes` at the lanes' points vn (3, L): one Newton evaluation."""
    _eta_lanes(q, E0, W, cnt, off, vn, ETA)
    fam_newton(fam, Y, N, ETA, phi, lphi, D1, D2)
    _sums_lanes(q, W, cnt, off, D1, D2, acc)


@njit(**_NO_NRT)
def _evaluate_some(fam, q, Y, N, E0, W, cnt, off, vn, phi, lphi, state, acc, buf):
    """:func:`_evaluate` for the lanes still trying a step (state 0) only, each lane's rows gathered
    from the rank-major layout into ``buf`` (5, max rows): when few lanes are left, a pass over all
    rows would cost more than these gathers. Sums in the same order as :func:`_sums_lanes`."""
    R = cnt.shape[0]
    eta, yb, nb, d1, d2 = buf[0], buf[1], buf[2], buf[3], buf[4]
    for l in range(state.shape[0]):
        if state[l] != 0:
            continue
        v0, v1, v2 = vn[0, l], vn[1, l], vn[2, l]
        m = 0
        while m < R and cnt[m] > l:
            i = off[m] + l
            e = E0[i] + W[0, i] * v0 + W[1, i] * v1
            if q == 3:
                e += W[2, i] * v2
            eta[m] = e
            yb[m] = Y[i]
            nb[m] = N[i]
            m += 1
        fam_newton(fam, yb[:m], nb[:m], eta[:m], phi, lphi, d1[:m], d2[:m])
        g0 = g1 = g2 = h00 = h10 = h11 = h20 = h21 = h22 = 0.0
        for r in range(m):
            i = off[r] + l
            a0, a1 = W[0, i], W[1, i]
            t0 = d2[r] * a0
            t1 = d2[r] * a1
            g0 += d1[r] * a0
            g1 += d1[r] * a1
            h00 += t0 * a0
            h10 += t1 * a0
            h11 += t1 * a1
            if q == 3:
                a2 = W[2, i]
                g2 += d1[r] * a2
                h20 += d2[r] * a2 * a0
                h21 += d2[r] * a2 * a1
                h22 += d2[r] * a2 * a2
        acc[0, l] = g0
        acc[1, l] = g1
        acc[2, l] = g2
        acc[3, l] = h00
        acc[4, l] = h10
        acc[5, l] = h11
        acc[6, l] = h20
        acc[7, l] = h21
        acc[8, l] = h22


@njit(**_NO_NRT)
def _step(acc, l, v, g, H, st):
    """Lane l: g = grad f, H = -Hessian at v (3,) from the sums, and the Newton step H^-1 g into
    st; returns max |step| (nan if H is not positive definite). Unused third terms have zero sums,
    so H's third row is the identity's and their step is -v = 0."""
    g[0] = acc[0, l] - v[0]
    g[1] = acc[1, l] - v[1]
    g[2] = acc[2, l] - v[2]
    H[0] = 1.0 - acc[3, l]
    H[1] = -acc[4, l]
    H[2] = 1.0 - acc[5, l]
    H[3] = -acc[6, l]
    H[4] = -acc[7, l]
    H[5] = 1.0 - acc[8, l]
    return _solve(H, g, st)


@njit(**_NO_NRT)
def _solve(H, g, st):
    """st = H^-1 g by Cholesky (H packed 00, 10, 11, 20, 21, 22); max |st|, or nan if H is not
    positive definite."""
    if not H[0] > 0.0:
        return np.nan
    l00 = math.sqrt(H[0])
    l10 = H[1] / l00
    d = H[2] - l10 * l10
    if not d > 0.0:
        return np.nan
    l11 = math.sqrt(d)
    l20 = H[3] / l00
    l21 = (H[4] - l20 * l10) / l11
    d = H[5] - l20 * l20 - l21 * l21
    if not d > 0.0:
        return np.nan
    l22 = math.sqrt(d)
    y0 = g[0] / l00
    y1 = (g[1] - l10 * y0) / l11
    y2 = (g[2] - l20 * y0 - l21 * y1) / l22
    st[2] = y2 / l22
    st[1] = (y1 - l21 * st[2]) / l11
    st[0] = (y0 - l10 * st[1] - l20 * st[2]) / l00
    return max(abs(st[0]), max(abs(st[1]), abs(st[2])))


@njit(**_NO_NRT)
def _after_step(l, big, st, V, VN, ST, state):
    """Lane l has a new Newton step ``st`` (max |st| = ``big``): failed (nan), done (the step is
    below NEWTON_TOL and taken, as find_mode) or its next trial point V + st. Returns whether the
    lane is still trying; a lane that is not keeps VN = V (carried along unchanged)."""
    if not big < np.inf:
        state[l] = 2
    elif big < NEWTON_TOL:
        for a in range(3):
            V[a, l] += st[a]
        state[l] = 1
    else:
        for a in range(3):
            ST[a, l] = st[a]
            VN[a, l] = V[a, l] + st[a]
        return True
    for a in range(3):
        VN[a, l] = V[a, l]
    return False


@njit(**_NJIT)
def lockstep_modes(fam, q, y, n, eta0, w, phi, lphi, plan, v0, modes, ok, rows, gh, want_l=True):
    """Newton's method for every lane of ``plan`` (:func:`lockstep_plan`) at once, then the mode pass.

    ``y``, ``n``, ``eta0`` (rows sorted by group) and ``w`` (q, rows) are the rows' data, linear
    predictors without the group effects and w_i = T'z_i; ``v0`` (J, q) the starting points. For
    each lane's group j, ``modes[j]`` gets the mode and ``ok[j]`` whether Newton converged (other
    groups are left as they are). The mode pass of :func:`~bayeslmm.paths.quadrature_kernel._group`
    is done here too: ``rows`` (8, rows) gets, at the lanes' rows, eta and
    :func:`~bayeslmm.paths.quadrature_families.fam_mode`'s seven outputs at the mode (l only with
    ``want_l``, the phi-derivatives only for the negative binomial); ``gh[j]`` (9,)
    the gradient of f there (0:3, zero beyond q) and its negative Hessian (3:9, packed 00, 10, 11,
    20, 21, 22). (The rows gathered into the plan's rank-major order here; the kernel has its
    constant rows in that order already, :func:`lockstep_layout`, and calls :func:`lockstep_core`.)
    """
    lanes, cnt, off, src = plan
    nr = src.shape[0]
    if lanes.shape[0] == 0:
        return
    Y = np.empty(nr)
    N = np.empty(nr)
    E0 = np.empty(nr)
    W = np.zeros((3, nr))
    for i in range(nr):
        s = src[i]
        Y[i] = y[s]
        N[i] = n[s]
        E0[i] = eta0[s]
    for a in range(q):
        for i in range(nr):
            W[a, i] = w[a, src[i]]
    lockstep_core(fam, q, Y, N, E0, W, phi, lphi, lanes, cnt, off, src, v0, modes, ok, rows, gh, want_l)


@njit(**_NJIT)
def lockstep_core(fam, q, Y, N, E0, W, phi, lphi, lanes, cnt, off, src, v0, modes, ok, rows, gh, want_l):
    """:func:`lockstep_modes` on rows already in the plan's rank-major order: ``Y``, ``N``, ``E0``
    (nr,) and ``W`` (3, nr) (rows beyond q unread)."""
    nl = lanes.shape[0]
    nr = src.shape[0]
    if nl == 0:
        return
    ETA = np.empty(nr)
    D1 = np.empty(nr)
    D2 = np.empty(nr)
    acc = np.empty((9, nl))
    V = np.zeros((3, nl))
    VN = np.zeros((3, nl))
    ST = np.zeros((3, nl))
    G2 = np.empty(nl)
    T = np.ones(nl)
    state = np.zeros(nl, dtype=np.int64)      # 0 trying a step, 1 done, 2 failed
    iters = np.zeros(nl, dtype=np.int64)
    halv = np.zeros(nl, dtype=np.int64)
    g = np.empty(3)
    H = np.empty(6)
    st = np.empty(3)
    vl = np.empty(3)
    buf = np.empty((5, cnt.shape[0]))
    for l in range(nl):
        for a in range(q):
            V[a, l] = v0[lanes[l], a]
    _evaluate(fam, q, Y, N, E0, W, cnt, off, V, phi, lphi, ETA, D1, D2, acc)
    active = 0
    for l in range(nl):
        for a in range(3):
            vl[a] = V[a, l]
        big = _step(acc, l, vl, g, H, st)
        G2[l] = g[0] * g[0] + g[1] * g[1] + g[2] * g[2]
        if _after_step(l, big, st, V, VN, ST, state):
            active += 1
    while active > 0:
        if active * _FEW < nl:          # few lanes left (the last step of a few groups): those only
            _evaluate_some(fam, q, Y, N, E0, W, cnt, off, VN, phi, lphi, state, acc, buf)
        else:
            _evaluate(fam, q, Y, N, E0, W, cnt, off, VN, phi, lphi, ETA, D1, D2, acc)
        for l in range(nl):
            if state[l] != 0:
                continue
            for a in range(3):
                vl[a] = VN[a, l]
            g[0] = acc[0, l] - vl[0]
            g[1] = acc[1, l] - vl[1]
            g[2] = acc[2, l] - vl[2]
            gn2 = g[0] * g[0] + g[1] * g[1] + g[2] * g[2]
            if not gn2 < G2[l]:
                halv[l] += 1
                if halv[l] < _HALVINGS:
                    T[l] *= 0.5
                    for a in range(3):
                        VN[a, l] = V[a, l] + T[l] * ST[a, l]
                    continue
            # the trial point is taken (as find_mode after its halvings, whatever their outcome)
            halv[l] = 0
            T[l] = 1.0
            iters[l] += 1
            for a in range(3):
                V[a, l] = vl[a]
            big = _step(acc, l, vl, g, H, st)
            G2[l] = gn2
            if iters[l] >= MAX_NEWTON:
                big = np.nan
            if not _after_step(l, big, st, V, VN, ST, state):
                active -= 1
    # the mode pass: everything the node and reverse passes need at each lane's mode
    R8 = np.empty((8, nr))
    _eta_lanes(q, E0, W, cnt, off, V, R8[0])
    fam_mode(fam, Y, N, R8[0], phi, lphi, R8[1], R8[2], R8[3], R8[4], R8[5], R8[6], R8[7], want_l)
    _sums_lanes(q, W, cnt, off, R8[2], R8[3], acc)
    # scattered back to group order: eta and the first three derivatives always; l only where a
    # rule is the Laplace approximation, the phi-derivatives only for the negative binomial (the
    # scatter's strided writes cost more than the rest of the mode pass; the kernel reads no other)
    for k in range(8):
        if (k == 1 and not want_l) or (k >= 5 and fam != NEGBINOMIAL_LOG):
            continue
        rk = R8[k]
        out = rows[k]
        for i in range(nr):
            out[src[i]] = rk[i]
    for l in range(nl):
        j = lanes[l]
        ok[j] = state[l] == 1
        for a in range(3):
            vl[a] = V[a, l]
        _step(acc, l, vl, g, H, st)          # g and H at the mode (the step itself is not needed)
        for a in range(q):
            modes[j, a] = vl[a]
        for a in range(3):
            gh[j, a] = g[a]
        for a in range(6):
            gh[j, 3 + a] = H[a]
