"""Choosing the number of AGHQ nodes for a data set, before sampling.

No fixed number of nodes bounds the posterior error for every data set: the error of the total
log-likelihood adds up over groups, and small groups with large SDs (bernoulli, probit) are the
least Gaussian. So the number is checked on the data: :func:`posterior_sketch` draws the
parameters from a Laplace approximation of the likelihood (maximum by BFGS with the kernel's
exact gradient, curvature by differences of that gradient; a few dozen kernel calls), and
:func:`auto_n_nodes` returns the smallest candidate whose total-error SD over those draws is below
:data:`~bayeslmm.paths.quadrature.ERROR_TOL` (see :func:`~bayeslmm.paths.quadrature.choose_n_nodes`).
The sketch uses flat priors on b and log phi and weak N(0, 3^2) ones on log sd and atanh of the
partial correlations; it only has to land in the region the posterior will occupy.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize

from .quadrature import (ERROR_TOL, NEGBINOMIAL_LOG, QuadratureData, choose_n_nodes, group_loglik,
                         group_loglik_grad, node_rule)
from .quadrature_mode import start_coords, start_params

__all__ = ["cpc_cholesky", "posterior_sketch", "choose_nodes_per_group", "auto_n_nodes", "newton_start"]


def cpc_cholesky(z: np.ndarray, q: int) -> np.ndarray:
    """Cholesky factor of a correlation matrix from q(q-1)/2 partial correlations in (-1, 1), row
    by row as in :func:`bayeslmm.paths.blocks.lkj_cholesky` (L_i0 = z_i0, L_ij = z_ij sqrt(1 - sum_k<j L_ik^2))."""
    L = np.zeros((q, q))
    L[0, 0] = 1.0
    k = 0
    for i in range(1, q):
        rest = 1.0
        for j in range(i):
            L[i, j] = z[k] * np.sqrt(rest)
            rest -= L[i, j] ** 2
            k += 1
        L[i, i] = np.sqrt(rest)
    return L


#: nodes per axis of the likelihood :func:`posterior_sketch` fits, by number of terms
SKETCH_NODES = {1: 5, 2: 3, 3: 3}


def posterior_sketch(data: QuadratureData, n_draws: int = 30, seed: int = 0,
                     n_nodes: int | None = None) -> dict[str, np.ndarray]:
    """Draws of (b, sd, Cc, phi) from a Laplace approximation of the likelihood (flat priors on the
    unconstrained scale), for :func:`~bayeslmm.paths.quadrature.choose_n_nodes`.

    The likelihood is fitted with ``n_nodes`` per axis (default :data:`SKETCH_NODES`: a few, since
    the sketch only says where to check the node counts; on the bench's binomial slope data the
    default nodes (7 per axis, 49 in all) and 3 per axis gave the same sketch to 0.1% in the SDs,
    in 0.67 against 0.11 s).

    Returns a dict with ``b`` (S, p), ``sd`` (S, q), ``Cc`` (S, q, q), ``phi`` (S,), and the
    centre (the likelihood's maximum) as ``centre``: a tuple (b, sd, Cc, phi).
    """
    p, q = data.p, data.q
    nz = q * (q - 1) // 2
    nb = data.code == NEGBINOMIAL_LOG
    k_fit = SKETCH_NODES[q] if n_nodes is None else n_nodes

    def unpack(th):
        b, lsd = th[:p], th[p:p + q]
        z = np.tanh(th[p + q:p + q + nz])
        phi = np.exp(th[-1]) if nb else 1.0
        return b, np.exp(lsd), cpc_cholesky(z, q), phi

    def nll(th):
        b, sd, C, phi = unpack(th)
        o = group_loglik_grad(data, b, sd, C, phi, n_nodes=k_fit)
        g = [o["b"], o["sd"] * sd]
        if nz:
            # d Cc / d theta_z by differences of the (cheap) map, contracted with the exact d/dCc
            h = 1e-6
            gz = np.empty(nz)
            for m in range(nz):
                e = np.zeros(len(th))
                e[p + q + m] = h
                dC = (unpack(th + e)[2] - unpack(th - e)[2]) / (2 * h)
                gz[m] = np.sum(o["Cc"] * dC)
            g.append(gz)
        if nb:
            g.append([float(o["phi"]) * phi])
        # a weak N(0, 3^2) penalty on log sd and atanh(z) keeps the fit finite when the likelihood
        # is flat towards sd = 0 or |correlation| = 1
        reg = th[p:p + q + nz]
        val = -o["logl"].sum() + 0.5 * np.sum(reg ** 2) / 9.0
        grad = -np.concatenate(g)
        grad[p:p + q + nz] += reg / 9.0
        if not np.isfinite(val):
            return 1e300, np.zeros(len(th))
        return val, grad
    th0 = np.zeros(p + q + nz + nb)
    fit = optimize.minimize(nll, th0, jac=True, method="BFGS")
    k = len(th0)
    step = 1e-4
    H = np.array([(nll(fit.x + step * e)[1] - nll(fit.x - step * e)[1]) / (2 * step) for e in np.eye(k)])
    H = 0.5 * (H + H.T)
    w, V = np.linalg.eigh(H)
    cov = (V / np.maximum(w, 1e-8)) @ V.T          # a flat direction (sd at 0) gets a wide but finite spread
    ths = np.random.default_rng(seed).multivariate_normal(fit.x, cov, size=n_draws)
    parts = [unpack(t) for t in ths]
    return {"b": np.array([x[0] for x in parts]), "sd": np.array([x[1] for x in parts]),
            "Cc": np.array([x[2] for x in parts]), "phi": np.array([x[3] for x in parts]),
            "centre": unpack(fit.x)}


def choose_nodes_per_group(data: QuadratureData, b, sd, Cc=None, phi=None, *, tol: float = ERROR_TOL,
                           candidates=None, reference: int | None = None) -> tuple[np.ndarray, dict]:
    """Nodes per axis for each group: as few as the total-error bound allows, where they cost most.

    The error concentrates in small, skewed groups, which are cheap (a node costs a pass over the
    group's rows), while large groups are nearly Gaussian. Starting from the smallest candidate
    everywhere, the groups that contribute most to the SD (over the draws) of the total error,
    cov(E_j, E) / sd(E), move up one candidate at a time until sd(E) <= tol / 2 on the given draws
    (the factor 2 is the margin for the posterior's own draws: without it, fresh draws from the same
    sketch showed 1.2-1.3 x tol on bernoulli/probit designs with two or three terms).

    Returns (k (J,), info) with info ``sd`` (the total-error SD reached), ``cost`` (sum of rows x
    nodes, relative to the largest candidate everywhere) and ``uniform`` (the smallest single
    candidate meeting the bound, or None).
    """
    q, p, J = data.q, data.p, data.n_groups
    cand = sorted(candidates) if candidates is not None else {1: [3, 5, 7, 9, 11, 15, 21], 2: [3, 4, 5, 7, 9],
                                                              3: [3, 4, 5, 7]}[q]
    ref = reference if reference is not None else {1: 31, 2: 15, 3: 9}[q]
    b = np.atleast_2d(np.asarray(b, dtype=float)).reshape(-1, p)
    S = b.shape[0]
    sd = np.asarray(sd, dtype=float).reshape(S, q)
    Cc = np.broadcast_to(np.eye(q), (S, q, q)) if Cc is None else np.asarray(Cc, dtype=float).reshape(S, q, q)
    phi = np.ones(S) if phi is None else np.asarray(phi, dtype=float).reshape(S)

    def per_group(k):
        return np.array([group_loglik(data, b[s], sd[s], Cc[s], phi[s], n_nodes=k) for s in range(S)])
    base = per_group(ref)
    err = np.stack([per_group(k) - base for k in cand])          # (candidates, S, J)
    uniform = next((k for i, k in enumerate(cand) if np.std(err[i].sum(1)) <= tol), None)
    idx = np.zeros(J, dtype=np.int64)
    cols = np.arange(J)
    for _ in range(len(cand) * J):
        E = err[idx, :, cols].T                                   # (S, J) at the current choice
        tot = E.sum(1)
        sd_tot = float(np.std(tot))
        if sd_tot <= 0.5 * tol:
            break
        contrib = ((E - E.mean(0)) * (tot - tot.mean())[:, None]).mean(0) / sd_tot
        contrib[idx == len(cand) - 1] = -np.inf                   # nothing left to raise there
        order = np.argsort(-contrib)
        order = order[contrib[order] > 0]
        if len(order) == 0:
            break
        need = sd_tot - 0.4 * tol
        take = order[:int(np.searchsorted(np.cumsum(contrib[order]), need)) + 1]
        idx[take] += 1
    E = err[idx, :, cols].T
    sizes = data.group_sizes.astype(float)
    ks = np.asarray(cand)[idx]
    n_of = {k: len(node_rule(k, q).lwn) for k in cand}          # k^q, or fewer (node_rule)
    cost = float(np.sum(sizes * np.array([n_of[k] for k in ks])) / max(np.sum(sizes * n_of[cand[-1]]), 1.0))
    return ks, {"sd": float(np.std(E.sum(1))), "cost": cost, "uniform": uniform}


def newton_start(data: QuadratureData, sketch: dict, n_nodes, first_order: bool = True) -> np.ndarray:
    """Newton's start for every group, (J, q, 1 + P): in the scale of the terms (u = T v), the mode at
    the sketch's centre and its first-order change with the parameters.

    The AGHQ kernel of the fitted model starts each group's Newton iteration at
    u = u0[:, :, 0] + u0[:, :, 1:] th, linear in the P coordinates th of the parameters
    (:func:`~bayeslmm.paths.quadrature_mode.start_coords`: b, log sd, Cc's lower entries, log phi),
    converted to the standardised scale of the parameters it is called at
    (:func:`~bayeslmm.paths.quadrature_mode.newton_v0`). A constant of the model, so the
    log-likelihood stays a function of the parameters alone. The slopes are central differences
    of the modes at the centre (2 P kernel calls; zero for a group where they are not finite, and
    with ``first_order=False``). On the bench's binomial slope data, at posterior draws, Newton took
    4 evaluations from zero, 3-4 from the centre's modes (mean 3.0 a group) and 2-3 from this
    first-order start (mean 2.1).
    """
    b, sd, Cc, phi = sketch["centre"]
    p, q, J = data.p, data.q, data.n_groups
    th0 = start_coords(np.asarray(b, dtype=float), np.asarray(sd, dtype=float), np.asarray(Cc, dtype=float),
                       float(phi))
    P = len(th0)

    def modes_u(th):
        bb, ss, cc, ph = start_params(th, p, q)
        v = group_loglik_grad(data, bb, ss, cc, ph, n_nodes=n_nodes)["modes"]
        return v @ (ss[:, None] * cc).T
    u = modes_u(th0)
    D = np.zeros((J, q, P))
    if first_order:
        h = 1e-4
        # log phi only moves the negative binomial's modes
        for k in range(P if data.code == NEGBINOMIAL_LOG else P - 1):
            e = np.zeros(P)
            e[k] = h
            D[:, :, k] = (modes_u(th0 + e) - modes_u(th0 - e)) / (2 * h)
        D[~np.isfinite(D).all(axis=(1, 2))] = 0.0
    out = np.zeros((J, q, 1 + P))
    out[:, :, 0] = u - D @ th0                      # so that u = out[..., 0] + out[..., 1:] th
    out[:, :, 1:] = D
    out[~np.isfinite(out).all(axis=(1, 2))] = 0.0
    return np.ascontiguousarray(out)


def auto_n_nodes(data: QuadratureData, *, tol: float = ERROR_TOL, n_draws: int = 30, seed: int = 0,
                 candidates=None, per_group: bool = False, sketch: dict | None = None):
    """The number of nodes per axis for this data set, checked on a :func:`posterior_sketch`.

    ``per_group=False``: the smallest single candidate whose total-error SD over the sketch is
    <= tol; returns (k, {candidate: SD}) (see :func:`~bayeslmm.paths.quadrature.choose_n_nodes`).
    ``per_group=True``: one number per group (:func:`choose_nodes_per_group`); returns (k (J,), info).
    Costs one BFGS fit and a few kernel calls per candidate and draw, once before sampling
    (``sketch``: a :func:`posterior_sketch` already made, else one is).
    """
    sk = posterior_sketch(data, n_draws=n_draws, seed=seed) if sketch is None else sketch
    if per_group:
        return choose_nodes_per_group(data, sk["b"], sk["sd"], sk["Cc"], sk["phi"], tol=tol, candidates=candidates)
    return choose_n_nodes(data, sk["b"], sk["sd"], sk["Cc"], sk["phi"], tol=tol, candidates=candidates)
