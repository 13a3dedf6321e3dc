"""Graph pieces shared by every sampling path (PyMC models only; imported by paths only).

* :func:`prior_rv`: a random variable from prior-table entries (constructor: :mod:`bayeslmm.priors`);
* the LKJ prior on a correlation matrix as a Cholesky factor (:func:`lkj_cholesky`), one per
  correlated block of a factor (:func:`correlation_factors`), the factor's block-diagonal
  Cholesky factor (:func:`cor_cholesky`) and the stored ``cor_{g}`` (:func:`correlation_matrix`);
* :func:`group_effects`: non-centred ``r_{g}``;
* :func:`fixed_effects`: ``b`` with the single centring convention (``Design.slope_means``).

Internals that are sampled but not stored: ``Intercept_c`` (intercept at centred predictors, which
is what the Intercept prior is on), ``beta`` (slopes), ``z_{g}`` (standard-normal offsets,
``r = z * sd`` or ``z @ L.T * sd``) and ``cpc_{g}`` (the correlations' canonical partial
correlations on the atanh scale, from which the Cholesky factor L is built: :func:`lkj_cholesky`).
"""

from __future__ import annotations

import numpy as np
import pymc as pm
import pytensor.tensor as pt

from ..design import Design, FactorDesign
from ..posterior import level_dim, term2_dim, term_dim
from ..priors import Prior, PriorTable, ResolvedPrior, lkj_cpc, pymc_prior

__all__ = ["prior_rv", "lkj_cholesky", "correlation_factors", "cor_cholesky", "correlation_matrix",
           "group_effects", "fixed_effects"]


LOG2 = float(np.log(2.0))


def _cpc_logp(value, beta, const):
    # z = tanh(y) ~ 2 Beta(beta, beta) - 1, so log p(y) = beta log(1 - z^2) + const; with
    # log(1 - tanh(y)^2) = 2 (log 2 - |y| - log1p(exp(-2|y|))), stable for large |y|
    a = pt.abs(value)
    return beta * 2.0 * (LOG2 - a - pt.log1p(pt.exp(-2.0 * a))) + const


def _cpc_random(beta, const, rng=None, size=None):
    return np.arctanh(2.0 * rng.beta(beta, beta, size=size) - 1.0)


def lkj_cholesky(name: str, n: int, eta: float):
    """Cholesky factor of an n x n correlation matrix with an LKJ(eta) prior.

    The free variable ``name`` holds the n(n-1)/2 canonical partial correlations z on the atanh
    scale (unconstrained, no transform). Under LKJ(eta) they are independent with
    (z_ij + 1) / 2 ~ Beta(b_j, b_j), b_j = eta + (n - 2 - j) / 2 (Lewandowski, Kurowicka & Joe
    2009, the vine method), and the Cholesky factor follows row by row:
    L_i0 = z_i0, L_ij = z_ij sqrt(1 - sum_{k<j} L_ik^2), L_ii = sqrt(1 - sum_{k<i} L_ik^2).
    The density is exact and normalised. Why not ``pm.LKJCorr``: its transform and log-density
    graph made a cold compile of a correlated model ~30 s; these are a few elementwise ops.

    Examples
    --------
    >>> import pymc as pm
    >>> with pm.Model() as m:
    ...     L = lkj_cholesky("cpc_g", 3, eta=2.0)
    >>> [v.name for v in m.free_RVs], L.ndim
    (['cpc_g'], 2)
    """
    beta, const = lkj_cpc(n, eta)
    y = pm.CustomDist(name, beta, const, logp=_cpc_logp, random=_cpc_random, signature="(k),(k)->(k)")
    y.tag.priors = (Prior("lkj", (("eta", float(eta)),)),)
    z = pt.tanh(y)
    rows, k = [], 0
    one, zero = pt.constant(1.0), pt.constant(0.0)
    rows.append([one] + [zero] * (n - 1))
    for i in range(1, n):
        row, ss = [], 0.0
        for j in range(i):
            lij = z[k] if j == 0 else z[k] * pt.sqrt(1.0 - ss)
            row.append(lij)
            ss = ss + lij ** 2
            k += 1
        row.append(pt.sqrt(1.0 - ss))
        rows.append(row + [zero] * (n - 1 - i))
    L = pt.stack([pt.stack(r) for r in rows])
    L.tag.cpc_rv = y
    return L


def prior_rv(name: str, entries: list[ResolvedPrior], dims: str | None = None):
    """One RV for ``entries`` (vector-valued when they share a distribution), else stacked scalars.

    Every RV made here carries its priors (``rv.tag.priors``, one per element) and the returned
    tensor the RV element behind each of its elements (``tag.sources``, ``[(rv, index), ...]``),
    so that a compiled log-density (:mod:`bayeslmm.paths.collapsed_density`) reads the model as
    built instead of rebuilding the rules.
    """
    dists = {e.prior.dist for e in entries}
    if len(dists) == 1:
        dist = entries[0].prior.dist
        if dims is None:
            rv = pymc_prior(dist, name, entries[0].prior.kwargs)
            rv.tag.priors, rv.tag.sources = (entries[0].prior,), [(rv, 0)]
            return rv
        params = {k: np.array([e.prior.kwargs[k] for e in entries]) for k in entries[0].prior.kwargs}
        rv = pymc_prior(dist, name, params, dims=dims)
        rv.tag.priors, rv.tag.sources = tuple(e.prior for e in entries), [(rv, i) for i in range(len(entries))]
        return rv
    parts = [pymc_prior(e.prior.dist, f"{name}[{e.term}]", e.prior.kwargs) for e in entries]
    for part, e in zip(parts, entries):
        part.tag.priors, part.tag.sources = (e.prior,), [(part, 0)]
    out = pm.Deterministic(name, pt.stack(parts), dims=dims)
    out.tag.sources = [(part, 0) for part in parts]
    return out


def correlation_factors(f: FactorDesign, priors: PriorTable) -> list[tuple[tuple[int, ...], object]]:
    """One LKJ Cholesky factor per correlated block of ``f``: ``[(block, L), ...]``.

    The free variables are ``cpc_{g}`` (``cpc_{g}_{k}`` when g has several correlated blocks), the
    same on both sampling paths.
    """
    n_corr = sum(1 for b, c in zip(f.blocks, f.correlated) if c and len(b) > 1)
    out = []
    for k, (block, corr) in enumerate(zip(f.blocks, f.correlated)):
        if corr and len(block) > 1:
            eta = priors[f"cor({f.name})"].prior.kwargs["eta"]
            out.append((block, lkj_cholesky(f"cpc_{f.name}" + (f"_{k}" if n_corr > 1 else ""), len(block), eta)))
    return out


def cor_cholesky(q: int, Ls: list):
    """The block-diagonal Cholesky factor (q x q) of a factor's correlation matrix."""
    if not Ls:
        return pt.constant(np.eye(q))
    if len(Ls) == 1 and len(Ls[0][0]) == q:
        return Ls[0][1]
    C = pt.eye(q)
    for block, L in Ls:
        C = pt.set_subtensor(C[block[0]:block[-1] + 1, block[0]:block[-1] + 1], L)
    return C


def correlation_matrix(f: FactorDesign, Ls: list) -> None:
    """Register ``cor_{g}`` (identity outside the correlated blocks) when g has any."""
    if Ls:
        C = cor_cholesky(f.q, Ls)
        cor = pm.Deterministic(f"cor_{f.name}", pt.dot(C, C.T), dims=(term_dim(f.name), term2_dim(f.name)))
        cor.tag.blocks = [(block, L.tag.cpc_rv) for block, L in Ls]      # read by collapsed_density


def group_effects(f: FactorDesign, sd, priors: PriorTable):
    """Non-centred r (J x q) for one factor: r = z * sd, or (z @ L.T) * sd within a correlated block."""
    z = pm.Normal(f"z_{f.name}", 0.0, 1.0, dims=(level_dim(f.name), term_dim(f.name)))
    Ls = correlation_factors(f, priors)
    by_block = dict(Ls)
    parts = []
    for block in f.blocks:
        idx = list(block)
        if block in by_block:
            parts.append(pt.dot(z[:, idx], by_block[block].T) * sd[idx])
        else:
            parts.append(z[:, idx] * sd[idx])
    r = pm.Deterministic(f"r_{f.name}", pt.concatenate(parts, axis=1) if len(parts) > 1 else parts[0],
                         dims=(level_dim(f.name), term_dim(f.name)))
    correlation_matrix(f, Ls)
    return r


def fixed_effects(design: Design, priors: PriorTable, *, linear_predictor: bool = True):
    """``b`` (original scale) and, if asked, the fixed part of the linear predictor.

    With an intercept, the sampled ``Intercept_c`` is the intercept at centred predictors (its
    prior is on that) and ``b[Intercept] = Intercept_c - slope_means @ beta``. Returns
    ``(eta_fixed, b)``; ``eta_fixed`` is None when ``linear_predictor`` is False (the collapsed
    path, which needs only ``b``). Same free variables, in the same order, on every path.
    """
    X = design.X if linear_predictor else None    # the collapsed path needs no rows
    terms = design.fixed_terms
    slope_idx = list(design.slope_columns)
    eta = 0.0
    b_parts = {}
    if slope_idx:
        slope_entries = [priors[terms[j]] for j in slope_idx]
        beta = prior_rv("beta", slope_entries, dims="slope")
    if design.has_intercept:
        intercept_c = prior_rv("Intercept_c", [priors["Intercept"]])
        eta = intercept_c
        if slope_idx:
            xm = design.slope_means
            if linear_predictor:
                Xc = pm.Data("Xc", X[:, slope_idx] - xm, dims=("obs", "slope"))
                eta = eta + pt.dot(Xc, beta)
            b_parts["Intercept"] = intercept_c - pt.dot(xm, beta)
        else:
            b_parts["Intercept"] = intercept_c
    elif slope_idx and linear_predictor:
        Xd = pm.Data("X", X[:, slope_idx], dims=("obs", "slope"))
        eta = pt.dot(Xd, beta)
    for k, j in enumerate(slope_idx):
        b_parts[terms[j]] = beta[k]
    b = pm.Deterministic("b", pt.stack([b_parts[t] for t in terms]), dims="term")
    # the same map as a matrix: b = M @ (Intercept_c, beta), and the free elements behind its columns
    M = np.zeros((len(terms), int(design.has_intercept) + len(slope_idx)))
    sources = []
    if design.has_intercept:
        M[terms.index("Intercept"), 0] = 1.0
        sources += intercept_c.tag.sources
        if slope_idx:
            M[terms.index("Intercept"), 1:] = -np.asarray(design.slope_means, dtype=float)
    for k, j in enumerate(slope_idx):
        M[j, int(design.has_intercept) + k] = 1.0
    if slope_idx:
        sources += beta.tag.sources
    b.tag.affine = (M, sources)
    return (eta if linear_predictor else None), b
