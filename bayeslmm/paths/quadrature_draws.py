"""Draws of the group effects from their exact conditional, given each posterior draw (numba).

After NUTS has sampled (b, sd, C_chol, phi) with the group effects integrated out, each group's
effects are drawn from p(u_j | y_j, b, Sigma, phi) proportional to exp f(v), u_j = T v (see
:mod:`bayeslmm.paths.quadrature_kernel` for f and the standardised scale v). The target is
log-concave with -Hessian >= I, which both samplers below use.

* **q = 1: exact rejection sampling** (adaptive-rejection style). In x = (v - v*) sqrt(H) the log
  target h(x) is concave with its maximum at 0, so the tangents at 0 and at x = -a, +a
  (a = sqrt 2, the optimum for a Gaussian target) bound it from above; the envelope exp(min of the
  three lines) is a piecewise exponential that is sampled exactly, and a proposal is accepted with
  probability exp(h(x) - envelope(x)). Acceptance is about 0.89 for a Gaussian target and never
  needs a tuning constant. Each draw costs a Newton solve, two tangent evaluations and about 1.1
  proposal evaluations (passes over the group's rows); an inverse CDF on a fine grid would cost
  hundreds of passes for the same exactness.
* **q = 2, 3: exact rejection sampling from a ball envelope.** Because every l_i is concave and
  the gradient of f vanishes at the mode, f(v) <= f(v*) - |v - v*|^2 / 2 for all v (the prior's
  curvature alone): an unnormalised N(v*, I) bounds exp f, with acceptance rate about
  1 / sqrt(det H) (the Laplace approximation's mass over the envelope's: 1/4 to 1/10 for groups of
  tens of binomial rows, falling as the group's information grows). The data's curvature gives a
  much tighter bound near the mode: the ball envelope of :mod:`bayeslmm.paths.quadrature_envelope`
  (a Gaussian with the rows' least curvature within a ball around the mode, an exponential radial
  piece outside it; 1.5 proposals a draw on the bench's binomial slope groups, and it does not
  degrade with the group's information). Whichever of the two envelopes has less mass is used.
  A group whose expected number of proposals (the envelope's mass over the Laplace
  approximation's) exceeds ``max_expected`` (default ``n_proposals / 2``), or that used
  ``4 n_proposals`` proposals without an acceptance, is drawn by the fallback below instead; which
  groups did is reported.
* **fallback: sampling importance resampling** from a multivariate Student-t (5 degrees of
  freedom) centred at the mode with scale H^-1/2: ``n_proposals`` proposals, one of them chosen
  with probability proportional to its weight. This is exact only as the number of proposals
  grows (the bias is O(1/n_proposals) and shrinks with the weights' spread); the effective sample
  size of the weights, (sum w)^2 / sum w^2, is returned for every such group and draw, and a group
  whose ESS falls below ``min_ess`` is redrawn with four times as many proposals (once).

Random numbers come from a counter-based generator (:mod:`bayeslmm.paths.quadrature_rng`) seeded
by (seed, draw, group), so a draw does not depend on the order the groups or draws are visited in.
"""

from __future__ import annotations

import math

import numpy as np

from .quadrature import BINOMIAL_LOGIT, POISSON_LOG
from .quadrature_envelope import ball_envelope, draw_ball, target_q3
from .quadrature_families import NO_NRT, njit
from .quadrature_fused import exp_rows, node_q1, node_q1_intercept, small_trials, unit_rows
from .quadrature_mode import coords_into, find_mode, find_mode_q1, group_start, intercept_ok, linpred, solve_upper_t
from .quadrature_rng import normal as _normal, normal_pair as _normal_pair, seed_state as _seed_state
from .quadrature_rng import uniform as _uniform

__all__ = ["draw_kernel", "T_DF"]

T_DF = 5
_NJIT = dict(cache=True, nogil=True, error_model="numpy")
# numba's reference counting off where nothing is allocated (as quadrature_kernel._groups): its
# atomic increments on every view and array argument cost more than a small group's rows
_NO_NRT = dict(_NJIT, **NO_NRT)


_GAMMA_D = T_DF / 2.0 - 1.0 / 3.0
_GAMMA_C = 1.0 / math.sqrt(9.0 * _GAMMA_D)


@njit(**_NO_NRT)
def _chi2_tdf(state):
    """A chi-square variate with T_DF degrees of freedom: 2 x Gamma(T_DF / 2) by Marsaglia & Tsang
    (2000), about one normal and one uniform per variate instead of T_DF normals."""
    while True:
        x = _normal(state)
        v = 1.0 + _GAMMA_C * x
        if v <= 0.0:
            continue
        v = v * v * v
        u = _uniform(state)
        x2 = x * x
        if u < 1.0 - 0.0331 * x2 * x2 or math.log(u) < 0.5 * x2 + _GAMMA_D * (1.0 - v + math.log(v)):
            return 2.0 * _GAMMA_D * v


@njit(**_NO_NRT)
def _h1(fam, y, n, eta0, w, v, phi, lphi, d1, A, emax):
    """(f(v), f'(v)) for one term, by the fused row pass (exponential-free for a random intercept)."""
    if eta0.shape[0] > 0 and intercept_ok(emax, w[0], v):
        S, _, G = node_q1_intercept(fam, y, A, eta0, w[0], v, d1)
    else:
        S, _, G = node_q1(fam, y, n, eta0, w, v, phi, lphi, d1)
    return S - 0.5 * v * v, G - v


@njit(**_NO_NRT)
def _draw_q1(fam, y, n, eta0, w, v, Lf, phi, lphi, d1, A, emax, state, vv):
    """One exact draw of v (q = 1) by rejection from the three-tangent envelope, into vv[0];
    returns the number of proposals it took."""
    a = math.sqrt(2.0)
    f0, _ = _h1(fam, y, n, eta0, w, v[0], phi, lphi, d1, A, emax)
    fl, gl = _h1(fam, y, n, eta0, w, v[0] - a / Lf, phi, lphi, d1, A, emax)
    fr, gr = _h1(fam, y, n, eta0, w, v[0] + a / Lf, phi, lphi, d1, A, emax)
    # in x = (v - v*) Lf: h(x) = f - f0, slope h'(x) = f'(v) / Lf
    s1 = max(gl / Lf, 1e-300)
    s2 = min(gr / Lf, -1e-300)
    z1 = min(-a - (fl - f0) / s1, 0.0)
    z2 = max(a - (fr - f0) / s2, 0.0)
    m1 = 1.0 / s1
    m2 = z2 - z1
    m3 = -1.0 / s2
    tot = m1 + m2 + m3
    for tries in range(1, 100000):
        u = _uniform(state) * tot
        if u < m1:
            x = z1 + math.log(_uniform(state)) / s1
            env = s1 * (x - z1)
        elif u < m1 + m2:
            x = z1 + (u - m1)
            env = 0.0
        else:
            x = z2 + math.log(_uniform(state)) / s2
            env = s2 * (x - z2)
        vv[0] = v[0] + x / Lf
        hx, _ = _h1(fam, y, n, eta0, w, vv[0], phi, lphi, d1, A, emax)
        if math.log(_uniform(state)) <= hx - f0 - env:
            return tries
    return -1


@njit(**_NO_NRT)
def _draw_reject(fam, y, n, eta0, w, q, v, phi, lphi, pow_form, state, max_tries, out):
    """One exact draw of v (q = 2, 3) by rejection from N(v*, I) (``v`` the mode), into ``out``;
    returns the number of proposals it took, or -1 after ``max_tries`` without an acceptance."""
    f0 = target_q3(fam, y, n, eta0, w, q, v, phi, lphi, pow_form)
    for tries in range(1, max_tries + 1):
        zz = 0.0
        for a in range(0, q, 2):
            z1, z2 = _normal_pair(state)
            out[a] = v[a] + z1
            zz += z1 * z1
            if a + 1 < q:
                out[a + 1] = v[a + 1] + z2
                zz += z2 * z2
        fx = target_q3(fam, y, n, eta0, w, q, out, phi, lphi, pow_form)
        if math.log(_uniform(state)) <= fx - f0 + 0.5 * zz:
            return tries
    return -1


@njit(**_NO_NRT)
def _draw_sir(fam, y, n, eta0, w, q, v, L, phi, lphi, pow_form, state, n_prop, out, props, lw, zbuf, xbuf):
    """One draw of v (q = 2, 3) by importance resampling from a t(T_DF) proposal; returns the ESS."""
    nu = float(T_DF)
    for k in range(n_prop):
        sc = math.sqrt(nu / _chi2_tdf(state))
        for a in range(0, q, 2):
            z1, z2 = _normal_pair(state)
            zbuf[a] = z1
            if a + 1 < q:
                zbuf[a + 1] = z2
        zz = 0.0
        for a in range(q):
            zz += zbuf[a] * zbuf[a]
            zbuf[a] *= sc
        solve_upper_t(L, q, zbuf, xbuf)
        for a in range(q):
            props[k, a] = v[a] + xbuf[a]
        # log t density of the standardised proposal, up to a constant: -(nu + q)/2 log(1 + |z|^2/nu)
        r2 = zz * sc * sc
        lt = -0.5 * (nu + q) * math.log1p(r2 / nu)
        lw[k] = target_q3(fam, y, n, eta0, w, q, props[k], phi, lphi, pow_form) - lt
    mx = -np.inf
    for k in range(n_prop):
        mx = max(mx, lw[k])
    s = 0.0
    s2 = 0.0
    for k in range(n_prop):
        lw[k] = math.exp(lw[k] - mx)
        s += lw[k]
        s2 += lw[k] * lw[k]
    u = _uniform(state) * s
    acc = 0.0
    pick = n_prop - 1
    for k in range(n_prop):
        acc += lw[k]
        if u < acc:
            pick = k
            break
    for a in range(q):
        out[a] = props[pick, a]
    return s * s / s2


@njit(**_NO_NRT)
def _draw_all(fam, S, J, p, q, b, sd, Cc, phi, y, trials, offset, Xt, Zt, starts, u0, seed, n_prop, min_ess, s_first,
              max_exp,
              big, work, wq, u, tries, ess_out, T, H, L, mats, vecs, v, vv, zbuf, xbuf, g, props, lw, state, th, env):
    """The loop over draws and groups of :func:`draw_kernel`, which allocates its arrays."""
    for s in range(S):
        ph = phi[s]
        lphi = math.log(ph) if ph > 0 else 0.0
        if u0.shape[0] == J:
            coords_into(b[s], sd[s], Cc[s], ph, th)
        for a in range(q):
            for c in range(q):
                T[a, c] = sd[s, a] * Cc[s, a, c]
        for j in range(J):
            s0 = starts[j]
            s1 = starts[j + 1]
            nj = s1 - s0
            eta0 = work[0:nj]
            eta = work[nj:2 * nj]
            d1 = work[2 * nj:3 * nj]
            d2 = work[3 * nj:4 * nj]
            w = wq[0:q * nj].reshape((q, nj))
            for i in range(nj):
                eta0[i] = offset[s0 + i]
            for k in range(p):
                bk = b[s, k]
                for i in range(nj):
                    eta0[i] += Xt[k, s0 + i] * bk
            for a in range(q):
                for i in range(nj):
                    w[a, i] = 0.0
                for m in range(q):
                    t = T[m, a]
                    for i in range(nj):
                        w[a, i] += t * Zt[m, s0 + i]
            if u0.shape[0] == J:
                group_start(u0, j, th, sd[s], Cc[s], v)
            else:
                for a in range(q):
                    v[a] = 0.0
            yj = y[s0:s1]
            nj_tr = trials[s0:s1]
            if q == 1:
                A = d2
                emax = np.inf
                if (fam == BINOMIAL_LOGIT or fam == POISSON_LOG) and unit_rows(Zt[0, s0:s1], nj_tr):
                    emax = exp_rows(eta0, A)
                if not find_mode_q1(fam, yj, nj_tr, eta0, w[0], v, ph, lphi, H, L, A, emax):
                    continue
                _seed_state(seed, s_first + s, j, state)
                # any tangent points give a valid envelope: the curvature of the last Newton iterate will do
                tries[s, j] = _draw_q1(fam, yj, nj_tr, eta0, w[0], v, L[0, 0], ph, lphi, d1, A, emax, state, vv)
                for a in range(q):
                    u[s, j, a] = T[a, 0] * vv[0]
                continue
            if not find_mode(fam, yj, nj_tr, eta0, w, q, v, ph, lphi, H, L, eta, d1, d2, mats, vecs):
                continue
            # L is the Cholesky factor of the -Hessian at Newton's last iterate, < NEWTON_TOL from the
            # mode: any factor gives the envelopes (they need the mode itself, and its linear predictor)
            # and the importance proposals their coordinates, so it is not evaluated again at the mode
            linpred(eta0, w, v, eta)
            _seed_state(seed, s_first + s, j, state)
            root_det = 1.0
            for a in range(q):
                root_det *= L[a, a]
            used = 0
            pow_form = fam == BINOMIAL_LOGIT and small_trials(nj_tr)
            # the ball envelope where its mass is below N(v*, I)'s (module docstring); the expected
            # number of proposals is about the envelope's mass over the Laplace approximation's
            lexp, slope, p_gauss = ball_envelope(fam, yj, nj_tr, eta, w, q, L, ph, lphi, env[0], env[1], d1, d2)
            # N(v*, I)'s expected number of proposals is root_det
            tight = lexp < math.log(root_det)
            expected = math.exp(lexp) if tight else root_det
            if expected <= max_exp:
                if tight:
                    used = draw_ball(fam, yj, nj_tr, eta0, w, q, v, L, ph, lphi, pow_form, state, big, slope,
                                     p_gauss, env[1], xbuf, zbuf, g, vv)
                else:
                    used = _draw_reject(fam, yj, nj_tr, eta0, w, q, v, ph, lphi, pow_form, state, big, vv)
            if used > 0:
                tries[s, j] = used
            else:
                ess = _draw_sir(fam, yj, nj_tr, eta0, w, q, v, L, ph, lphi, pow_form, state, n_prop, vv,
                                props, lw, zbuf, xbuf)
                used = n_prop + (big if used < 0 else 0)      # plus the rejection tries, if any
                if ess < min_ess:
                    ess = _draw_sir(fam, yj, nj_tr, eta0, w, q, v, L, ph, lphi, pow_form, state, big, vv,
                                    props, lw, zbuf, xbuf)
                    used += big
                tries[s, j] = used
                ess_out[s, j] = ess
            for a in range(q):
                acc = 0.0
                for m in range(q):
                    acc += T[a, m] * vv[m]
                u[s, j, a] = acc


@njit(**_NJIT)
def draw_kernel(b, sd, Cc, phi, y, trials, offset, Xt, Zt, starts, ictl, u0, seed, n_prop, min_ess, s_first,
                max_exp):
    """Group effects u (S, J, q) for S posterior draws of b (S, p), sd (S, q), Cc (S, q, q), phi (S,).

    ``s_first``: the index of the first of these draws among all the posterior's draws (the random
    numbers of draw s and group j depend on (seed, s_first + s, j) only, so the draws can be split
    into blocks run in parallel threads with the same result).

    Data arrays as for :func:`~bayeslmm.paths.quadrature_kernel.aghq_kernel` (rows sorted by group,
    Xt (p, n), Zt (q, n)); ``u0`` Newton's start as the fitted model's
    (:func:`~bayeslmm.paths.quadrature_mode.newton_v0`; no rows: zero). Returns (u, tries, ess), the
    last two (S, J): the proposals each draw used,
    and the importance weights' ESS where a draw fell back to importance resampling (NaN where the
    draw is exact); tries is NaN where the mode was not found.
    """
    fam = ictl[0]
    S = b.shape[0]
    J = starts.shape[0] - 1
    p = Xt.shape[0]
    q = Zt.shape[0]
    maxn = 1
    for j in range(J):
        maxn = max(maxn, starts[j + 1] - starts[j])
    work = np.empty(4 * maxn)
    wq = np.empty(q * maxn)
    u = np.full((S, J, q), np.nan)
    tries = np.full((S, J), np.nan)
    ess_out = np.full((S, J), np.nan)
    T = np.empty((q, q))
    H = np.empty((q, q))
    L = np.empty((q, q))
    mats = np.empty((1, q, q))
    env = np.empty((2, q, q))
    vecs = np.empty((5, q))
    v = np.zeros(q)
    vv = np.empty(q)
    zbuf = np.empty(q)
    xbuf = np.empty(q)
    g = np.empty(q)
    big = 4 * n_prop
    props = np.empty((big, q))
    lw = np.empty(big)
    state = np.zeros(1, dtype=np.uint64)
    th = np.empty(p + q + q * (q - 1) // 2 + 1)
    _draw_all(fam, S, J, p, q, b, sd, Cc, phi, y, trials, offset, Xt, Zt, starts, u0, seed, n_prop, min_ess, s_first,
              max_exp,
              big, work, wq, u, tries, ess_out, T, H, L, mats, vecs, v, vv, zbuf, xbuf, g, props, lw, state, th, env)
    return u, tries, ess_out

