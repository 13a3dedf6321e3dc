"""The block elimination behind the exact collapsed path, and its numpy evaluations.

For a Gaussian mixed model with random-effect covariance G, residual sd sigma, r = y - X b and
A = sigma^2 G^-1 + Z'Z (Henderson 1975; Bates et al. 2015):

    r'V^-1 r = (r'r - (Z'r)' A^-1 (Z'r)) / sigma^2
    log|V|   = (n - Q) log sigma^2 + log|A| + log|G|          (Q = number of random effects)
    u | ...  ~ N(A^-1 Z'r, sigma^2 A^-1).

When the factors form a nesting chain (:func:`bayeslmm.stats.nesting_chain`) A is block-diagonal
over the top-level groups and, inside one, has a tree ("arrow") structure: a node (one level of one
factor) couples only with its own ancestors. Eliminating the nodes from the deepest factor upwards
(block Cholesky / Schur complements) produces no fill outside the ancestor pairs, so log|A| and the
quadratic form cost O(sum_l J_l q_l^3), independent of n.

**Small-matrix algebra**: every q x q block is held as a nested list of length-J vectors (one entry
per matrix element), and the Cholesky factor and the triangular solves are written out element by
element (unrolled over q, vectorised over the J nodes). The same code (:func:`_eliminate`) runs on
numpy arrays here (per-group log-likelihood, exact random-effect draws) and on PyTensor tensors in
:mod:`bayeslmm.paths.collapsed` (for NUTS); only the ``ops`` object differs. This module imports
no PyTensor.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.sparse as sp
import xarray as xr

from ..errors import SpecError
from ..posterior import level_dim, param_draws
from ..stats import GroupStats, group_stats, nesting_chain
from ..threads import cpu_count

__all__ = ["conditional_effects", "draw_group_effects", "group_log_likelihood", "LOG_2PI"]

LOG_2PI = float(np.log(2.0 * np.pi))


class _NumpyOps:
    """Vectors are (J,) or (J, S) arrays (node axis first, draws last); scatter by sparse sums."""

    sqrt = staticmethod(np.sqrt)
    log = staticmethod(np.log)

    def __init__(self, stats: GroupStats):
        self._agg = {}
        for l in range(stats.L):
            for m in range(l):
                idx = stats.anc[l][m]
                self._agg[l, m] = sp.csr_matrix((np.ones(len(idx)), (idx, np.arange(len(idx)))),
                                                shape=(stats.J[m], len(idx)))

    def scatter(self, l: int, m: int, vals: list):
        """Sum level-l node values into their level-m ancestors."""
        M = self._agg[l, m]
        stacked = np.stack(vals, axis=0)                          # (K, J_l[, S])
        flat = stacked.reshape(stacked.shape[0], stacked.shape[1], -1).transpose(1, 0, 2)
        out = M @ flat.reshape(flat.shape[0], -1)
        out = out.reshape(M.shape[0], stacked.shape[0], -1).transpose(1, 0, 2)
        return [o.reshape((M.shape[0],) + stacked.shape[2:]) for o in out]


def _chol(D: list, ops) -> list:
    """Unrolled Cholesky of a q x q block of length-J vectors (lower triangle used)."""
    q = len(D)
    L = [[None] * q for _ in range(q)]
    for j in range(q):
        s = D[j][j]
        for k in range(j):
            s = s - L[j][k] * L[j][k]
        L[j][j] = ops.sqrt(s)
        for i in range(j + 1, q):
            s = D[i][j]
            for k in range(j):
                s = s - L[i][k] * L[j][k]
            L[i][j] = s / L[j][j]
    return L


def _fsolve(L: list, b: list) -> list:
    """Forward substitution L w = b (b a list of q vectors)."""
    w = []
    for i in range(len(L)):
        s = b[i]
        for k in range(i):
            s = s - L[i][k] * w[k]
        w.append(s / L[i][i])
    return w


def _bsolve(L: list, b: list) -> list:
    """Back substitution L' u = b."""
    q = len(L)
    u = [None] * q
    for i in reversed(range(q)):
        s = b[i]
        for k in range(i + 1, q):
            s = s - L[k][i] * u[k]
        u[i] = s / L[i][i]
    return u


def _eliminate(D: list, C: list, c: list, ops, keep: bool = False):
    """Block elimination of the tree-structured A from the deepest level up.

    Parameters
    ----------
    D : list over levels of q_l x q_l nested lists of vectors (the diagonal blocks of A)
    C : list over levels of dicts m -> q_l x q_m nested lists (coupling with the level-m ancestor)
    c : list over levels of lists of q_l vectors (Z'r per node)

    Returns
    -------
    logdet, quad : lists over levels of per-node vectors (log|L_k|^2 and |L_k^-1 c_k|^2)
    factors : when ``keep``, per level (L, w, W) for drawing the effects afterwards.
    """
    nlev = len(D)
    D = [[row[:] for row in Dl] for Dl in D]
    C = [{m: [row[:] for row in blk] for m, blk in Cl.items()} for Cl in C]
    c = [cl[:] for cl in c]
    logdet, quad, factors = [None] * nlev, [None] * nlev, [None] * nlev
    for l in reversed(range(nlev)):
        L = _chol(D[l], ops)
        q = len(L)
        ld = 2.0 * ops.log(L[0][0])
        for i in range(1, q):
            ld = ld + 2.0 * ops.log(L[i][i])
        w = _fsolve(L, c[l])
        qd = w[0] * w[0]
        for i in range(1, q):
            qd = qd + w[i] * w[i]
        logdet[l], quad[l] = ld, qd
        W = {}
        for m in range(l):
            blk = C[l][m]
            cols = [_fsolve(L, [blk[i][j] for i in range(q)]) for j in range(len(blk[0]))]
            W[m] = [[cols[j][i] for j in range(len(cols))] for i in range(q)]   # q_l x q_m
        if keep:
            factors[l] = (L, w, W)
        for m in range(l):
            Wm = W[m]
            qm = len(Wm[0])
            vals, slots = [], []
            for a in range(qm):                      # rhs: c_m -= W_m' w
                v = Wm[0][a] * w[0]
                for i in range(1, q):
                    v = v + Wm[i][a] * w[i]
                vals.append(v)
                slots.append(("c", a, None))
            for a in range(qm):                      # diagonal block of the level-m ancestor
                for b in range(a, qm):
                    v = Wm[0][a] * Wm[0][b]
                    for i in range(1, q):
                        v = v + Wm[i][a] * Wm[i][b]
                    vals.append(v)
                    slots.append(("D", a, b))
            for m2 in range(m):                      # its coupling with the level-m2 ancestor
                W2 = W[m2]
                for a in range(qm):
                    for b in range(len(W2[0])):
                        v = Wm[0][a] * W2[0][b]
                        for i in range(1, q):
                            v = v + Wm[i][a] * W2[i][b]
                        vals.append(v)
                        slots.append((m2, a, b))
            for (kind, a, b), s in zip(slots, ops.scatter(l, m, vals)):
                if kind == "c":
                    c[m][a] = c[m][a] - s
                elif kind == "D":
                    D[m][a][b] = D[m][a][b] - s
                    if a != b:
                        D[m][b][a] = D[m][b][a] - s
                else:
                    C[m][kind][a][b] = C[m][kind][a][b] - s
    return logdet, quad, factors


def _initial_blocks(stats: GroupStats, s2, Sinv, d, backend):
    """D = sigma^2 S^-1 + Z'Z, the couplings, and c = Z'e0 - Z'X d, as nested lists of vectors.

    ``Sinv[l][i][j]`` are scalars (PyTensor) or (S,) draws (numpy); ``d = b - b0``.
    """
    D, C, c = [], [], []
    for l in range(stats.L):
        q = stats.q[l]
        zz = backend["ZtZ"][l]
        D.append([[s2 * Sinv[l][i][j] + zz[i][j] for j in range(q)] for i in range(q)])
        C.append({m: [[backend["ZtZa"][l][m][i][j] for j in range(stats.q[m])] for i in range(q)]
                  for m in range(l)})
        c.append([backend["Zte"][l][i] - backend["ZtXd"](l, i, d) for i in range(q)])
    return D, C, c



# --------------------------------------------------------------------------------------------
# Numpy evaluation: per-group log-likelihood and exact random-effect draws
# --------------------------------------------------------------------------------------------
def _cov_inverse_np(stats: GroupStats, sds: list, cors: list):
    """Per level: S^-1 entries as lists of (S,) arrays and log|S| (S,), from sd (S,q), cor (S,q,q)."""
    Sinv, logS = [], []
    for l in range(stats.L):
        sd, cor = sds[l], cors[l]
        Sm = cor * sd[:, :, None] * sd[:, None, :]
        Si = np.linalg.inv(Sm)
        Sinv.append([[Si[:, i, j] for j in range(stats.q[l])] for i in range(stats.q[l])])
        logS.append(np.linalg.slogdet(Sm)[1])
    return Sinv, logS


def _numpy_pieces(stats: GroupStats, b, sds, cors, sigma, keep=False):
    """Run the elimination on numpy arrays for S draws at once (vectors are (J, S))."""
    d = (np.atleast_2d(b) - stats.b0).T                               # (p, S)
    s2 = np.asarray(sigma, dtype=float) ** 2                         # (S,)
    Sinv, logS = _cov_inverse_np(stats, sds, cors)
    backend = {
        "ZtZ": [[[stats.ZtZ[l][:, i, j, None] for j in range(stats.q[l])] for i in range(stats.q[l])]
                for l in range(stats.L)],
        "ZtZa": [{m: [[stats.ZtZa[l][m][:, i, j, None] for j in range(stats.q[m])]
                      for i in range(stats.q[l])] for m in range(l)} for l in range(stats.L)],
        "Zte": [[stats.Zte[l][:, i, None] for i in range(stats.q[l])] for l in range(stats.L)],
        "ZtXd": lambda l, i, dd: stats.ZtX[l][:, i, :] @ dd,
    }
    D, C, c = _initial_blocks(stats, s2, Sinv, d, backend)
    ops = _NumpyOps(stats)
    logdet, quad, factors = _eliminate(D, C, c, ops, keep=keep)
    return d, s2, logS, logdet, quad, factors, ops


def _np_group_loglik(stats, d, s2, logS, logdet, quad, ops):
    ld, qd = logdet[0], quad[0]
    for l in range(1, stats.L):
        s_ld, s_qd = ops.scatter(l, 0, [logdet[l], quad[l]])
        ld, qd = ld + s_ld, qd + s_qd
    rr = (stats.ete[:, None] - 2.0 * stats.Xte @ d
          + np.einsum("jab,as,bs->js", stats.XtX, d, d))
    n = stats.n_obs[:, None]
    Q, logG = 0.0, 0.0
    for l in range(stats.L):
        nn = stats.n_nodes[l][:, None]
        Q = Q + nn * stats.q[l]
        logG = logG + nn * logS[l][None, :]
    return -0.5 * (n * LOG_2PI + (n - Q) * np.log(s2) + logG + ld + (rr - qd) / s2)   # (J0, S)


def conditional_effects(stats: GroupStats, b, sds, cors, sigma, noise=None):
    """Random effects drawn from u | y, b, G, sigma (numpy; exact).

    Parameters
    ----------
    stats : GroupStats
    b : (S, p) ; sds : per level (S, q_l) ; cors : per level (S, q_l, q_l) ; sigma : (S,)
    noise : per level arrays (J_l, q_l, S) of standard normals, or None for the conditional mean.

    Returns
    -------
    list over levels of arrays (S, J_l, q_l): mean + sigma * L^-T noise, i.e. a draw from
    N(A^-1 Z'r, sigma^2 A^-1) when ``noise`` is standard normal.
    """
    d, s2, logS, logdet, quad, factors, ops = _numpy_pieces(stats, b, sds, cors, sigma, keep=True)
    sig = np.sqrt(s2)
    u = [None] * stats.L
    for l in range(stats.L):
        L, w, W = factors[l]
        q = stats.q[l]
        rhs = []
        for i in range(q):
            v = w[i]
            for m in range(l):
                um = u[m]                                     # list of (J_m, S)
                for a in range(stats.q[m]):
                    v = v - W[m][i][a] * um[a][stats.anc[l][m]]
            if noise is not None:
                v = v + sig * noise[l][:, i, :]
            rhs.append(v)
        u[l] = _bsolve(L, rhs)
    return [np.stack(ul, axis=-1).transpose(1, 0, 2) for ul in u]


#: draws per block of :func:`draw_group_effects` ~ this many array elements / random effects: the
#: elimination's (effects x draws) arrays then stay in the CPU caches. Blocks of 200 draws cost
#: 0.38-0.46 s at 2,000 groups x 2 terms and 1.8-2.5 s at 10,000; blocks of 50 and 20, 0.17-0.18 s
#: and 0.75-1.1 s (2,000 posterior draws, 2 threads).
_BLOCK_ELEMENTS = 200_000


def _block_draws(stats: GroupStats) -> int:
    return int(np.clip(_BLOCK_ELEMENTS // max(1, sum(J * q for J, q in zip(stats.J, stats.q))), 16, 200))


def draw_group_effects(stats: GroupStats, b, sds, cors, sigma, seed: int, chunk: int | None = None,
                       threads: int | None = None):
    """Exact draws of every factor's effects, one per posterior draw, seeded (same seed, same draws).

    Returns a list over levels of arrays (S, J_l, q_l). Processes ``chunk`` draws at a time (default:
    16 to 200, fewer with more random effects, see ``_BLOCK_ELEMENTS``), in ``threads`` threads
    (default: the number of CPUs; numpy's array arithmetic releases the GIL). The normal deviates
    are drawn in the calling thread, in draw order, so the result depends on neither ``chunk`` nor
    ``threads``.
    """
    chunk = _block_draws(stats) if chunk is None else chunk
    S = len(sigma)
    # one stream per factor, drawn in draw-major order: the result does not depend on ``chunk``
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence([int(seed), 6]).spawn(stats.L)]
    out = [np.empty((S, J, q)) for J, q in zip(stats.J, stats.q)]

    def block(sl, noise):
        parts = conditional_effects(stats, b[sl], [x[sl] for x in sds], [x[sl] for x in cors], sigma[sl], noise)
        for l in range(stats.L):
            out[l][sl] = parts[l]
    n = max(1, threads if threads is not None else cpu_count())
    with ThreadPoolExecutor(n) as pool:
        jobs = []
        for s0 in range(0, S, chunk):
            sl = slice(s0, min(S, s0 + chunk))
            k = sl.stop - sl.start
            noise = [rng.standard_normal((k, J, q)).transpose(1, 2, 0)
                     for rng, J, q in zip(rngs, stats.J, stats.q)]
            jobs.append(pool.submit(block, sl, noise))
        for job in jobs:
            job.result()
    return out


def group_log_likelihood(fit, chunk: int | None = None) -> xr.DataArray:
    """Per top-level group marginal log-likelihood log p(y_j | b, G, sigma), random effects integrated out.

    Works for fits from either path (it needs only ``b``, ``sd_*``, ``cor_*`` and ``sigma``), and is
    the log-likelihood for leave-one-group-out LOO: ``arviz.loo`` on a DataTree whose
    ``log_likelihood`` group holds this array.

    Returns
    -------
    xarray.DataArray with dims (chain, draw, ``{g}__level``) of the top-level factor g.

    Raises
    ------
    SpecError
        When the factors are crossed (no per-group factorisation of the likelihood).
    """
    design = fit.design
    chain, why = nesting_chain(design)
    if chain is None:
        raise SpecError(f"no per-group marginal log-likelihood for this model: {why}")
    stats = group_stats(design, chain)
    post = fit.posterior
    b, sds, cors, aux = param_draws(post, chain, () if stats.known_scale else ("sigma",))
    sigma = np.ones(len(b)) if stats.known_scale else aux["sigma"]     # whitened rows: sigma = 1
    out = np.empty((len(sigma), stats.J[0]))
    chunk = _block_draws(stats) if chunk is None else chunk
    for s0 in range(0, len(sigma), chunk):
        sl = slice(s0, min(len(sigma), s0 + chunk))
        d, s2, logS, logdet, quad, _, ops = _numpy_pieces(stats, b[sl], [x[sl] for x in sds],
                                                          [x[sl] for x in cors], sigma[sl])
        out[sl] = _np_group_loglik(stats, d, s2, logS, logdet, quad, ops).T
    if stats.known_scale:
        out -= stats.log_se
    nc, nd = post.sizes["chain"], post.sizes["draw"]
    g = stats.names[0]
    return xr.DataArray(out.reshape(nc, nd, -1), dims=("chain", "draw", level_dim(g)),
                        coords={"chain": post["chain"].values, "draw": post["draw"].values,
                                level_dim(g): list(chain[0].levels)}, name="y_marginal")
