"""The fast exact path for Gaussian models: random effects integrated out, drawn afterwards.

Stage 5b (beside :mod:`bayeslmm.graph`). For a Gaussian LMM

    y = X b + Z u + e,   u ~ N(0, G),   e ~ N(0, sigma^2 I)

the random effects can be integrated out analytically: y ~ N(X b, V), V = sigma^2 I + Z G Z'.
NUTS then samples only the fixed effects and the variance parameters, and the random effects are
drawn afterwards, exactly, from their Gaussian conditional u | y, b, G, sigma. The returned
posterior has the same variables (``b``, ``sd_{g}``, ``cor_{g}``, ``r_{g}``, ``sigma``) as the
non-centred graph, so everything downstream works unchanged.

The algebra (Henderson 1975; Bates et al. 2015). With r = y - X b and A = sigma^2 G^-1 + Z'Z,

    r'V^-1 r = (r'r - (Z'r)' A^-1 (Z'r)) / sigma^2
    log|V|   = (n - Q) log sigma^2 + log|A| + log|G|          (Q = number of random effects)
    u | ...  ~ N(A^-1 Z'r, sigma^2 A^-1).

**When it applies** (:func:`applicable`): Gaussian family and grouping factors that form a nesting
chain: one factor (any number of correlated and uncorrelated blocks on it), or nested factors
``a``, ``a:b``, ``a:b:c``, ... (also factors that are nested in the data without the ``a:b`` syntax).
Then A is block-diagonal over the top-level groups and, inside one, has a tree ("arrow") structure:
a node (one level of one factor) couples only with its own ancestors. Eliminating the nodes from
the deepest factor upwards (block Cholesky / Schur complements) produces no fill outside the
ancestor pairs, so log|A| and the quadratic form cost O(sum_l J_l q_l^3), independent of n.
Crossed factors make A a general sparse matrix: those models use the non-centred graph (``fit``
prints the reason).

**Sufficient statistics** are computed once in numpy with the integer group codes (``np.bincount``),
never with a dense n x J indicator: per node Z_k'Z_k, Z_k'Z_anc (coupling with each ancestor),
Z_k'X, Z_k'e0 and per top-level group X_j'X_j, X_j'e0, e0_j'e0_j, where e0 = y - X b0 are the
residuals of the least-squares fit b0 (computing around b0 instead of 0 avoids cancellation
between y'y and the fitted sum of squares when the mean of y is large).

**Small-matrix algebra**: every q x q block is held as a nested list of length-J vectors (one entry
per matrix element), and the Cholesky factor and the triangular solves are written out element by
element (unrolled over q, vectorised over the J nodes). This is the closed form for q = 1 and 2
and works for any q; it avoids PyTensor's batched ``cholesky`` (a Python loop over the batch),
which was 10-35x slower in a probe. The same code runs on numpy arrays (for the per-group
log-likelihood and for the random-effect draws) and on PyTensor tensors (for NUTS).

**Log-likelihood for LOO**: the collapsed likelihood is a ``pm.CustomDist`` named ``y_marginal``
whose elements are the **per top-level group marginal** log-densities log p(y_j | b, G, sigma)
(random effects integrated out). :func:`group_log_likelihood` computes the same quantity in numpy
from any fit's draws (marginal or non-centred path), for leave-one-group-out LOO. The pointwise,
per-observation log-likelihood conditional on the random effects is the other option and is
computed from ``b``, ``r`` and ``sigma`` elsewhere (``Fit.log_likelihood``); it does not depend on
how the fit was sampled.

**Two implementations of the likelihood**: with one grouping factor (the common case) NUTS
evaluates :mod:`bayeslmm.marginal_kernel`, one numba function for the per-group log-densities and
their gradient (hand-derived, checked against finite differences); it compiles once per machine
and keeps the model's PyTensor graph small, which is what makes a cold first fit fast. Nested
factors use the elimination above as a PyTensor graph (automatic gradient). Both are tested
against the dense multivariate-normal density.

**Compiled-function reuse**: the data enter the graph as shape-agnostic shared variables (no static
shapes), so the graph of a model depends only on its *structure* (number of fixed effects, the
factors' q and blocks, nesting depth), not on n or the number of groups; PyTensor's on-disk cache
then serves the compiled pieces to every data set with that structure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
import scipy.sparse as sp
import xarray as xr

from .design import Design, FactorDesign
from .errors import SpecError
from .graph import (coords_of, cor_cholesky, correlation_factors, correlation_matrix, level_dim, prior_rv,
                    term_dim)
from .marginal_kernel import kernel_data, one_factor_logp
from .priors import PriorTable
from .sampling import resolve_seed, sample
from .spec import ModelSpec, SamplerSpec

__all__ = ["applicable", "nesting_chain", "MarginalStats", "marginal_stats", "build_marginal_model", "data_values",
           "sample_marginal", "group_log_likelihood", "draw_group_effects", "conditional_effects"]

LOG_2PI = float(np.log(2.0 * np.pi))


# --------------------------------------------------------------------------------------------
# When the path applies
# --------------------------------------------------------------------------------------------
def _nested_in(child: FactorDesign, parent: FactorDesign) -> bool:
    """True when every level of ``child`` lies inside exactly one level of ``parent``."""
    pairs = np.unique(child.codes * parent.n_levels + parent.codes)
    return len(pairs) == child.n_levels


def nesting_chain(design: Design) -> tuple[tuple[FactorDesign, ...] | None, str]:
    """The grouping factors ordered top -> deepest if they form a nesting chain, else a reason.

    Returns
    -------
    (chain, reason) : chain is None when the factors are crossed (or there are none).
    """
    facs = sorted(design.factors, key=lambda f: f.n_levels)
    if not facs:
        return None, "the model has no grouping factors"
    for i, child in enumerate(facs[1:], start=1):
        parent = facs[i - 1]
        if not _nested_in(child, parent):
            crossed = next((p for p in facs[:i] if not _nested_in(child, p)), parent)
            return None, (f"crossed factors {crossed.name} and {child.name}: falling back to the "
                          "non-centred graph")
    if len(facs) == 1:
        f = facs[0]
        kind = "correlated" if f.has_correlation else "uncorrelated" if f.q > 1 else "one"
        return tuple(facs), (f"gaussian, one grouping factor ({f.name}, {f.q} {kind} term"
                             f"{'s' if f.q > 1 else ''}): random effects integrated out exactly")
    return tuple(facs), (f"gaussian, nested factors {' > '.join(f.name for f in facs)}: random "
                         "effects integrated out exactly")


def applicable(spec: ModelSpec, design: Design) -> tuple[bool, str]:
    """Whether the exact marginal path applies to this model, and why (printed by ``fit``).

    It applies to Gaussian models whose grouping factors form a nesting chain: one factor with any
    number of correlated/uncorrelated blocks, or nested factors (``a``, ``a:b``, ...).

    Examples
    --------
    >>> import bayeslmm as blmm
    >>> m = blmm.Model("Reaction ~ Days + (Days | Subject)", blmm.load_dataset("sleepstudy"))
    >>> applicable(m.spec, m.design)[0]
    True
    """
    if spec.family != "gaussian":
        return False, f"family {spec.family!r} is not gaussian: the marginal path needs a Gaussian likelihood"
    chain, why = nesting_chain(design)
    return chain is not None, why


# --------------------------------------------------------------------------------------------
# Sufficient statistics (numpy, once per data set)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MarginalStats:
    """Per-node sufficient statistics of a nesting chain of factors.

    Level ``l`` is ``chain[l]`` (0 = top). ``anc[l][m]`` (m < l) is the level-m ancestor of each
    level-l node; ``ZtZ[l]`` (J_l, q_l, q_l); ``ZtZa[l][m]`` (J_l, q_l, q_m) the coupling with the
    level-m ancestor; ``ZtX[l]`` (J_l, q_l, p); ``Zte[l]`` (J_l, q_l). Per top-level group:
    ``XtX`` (J_0, p, p), ``Xte`` (J_0, p), ``ete`` (J_0,), ``n_obs`` (J_0,), ``n_nodes[l]`` (J_0,).
    ``b0`` (p,) is the least-squares offset the residuals e0 = y - X b0 are taken around.
    """

    names: tuple[str, ...]
    q: tuple[int, ...]
    blocks: tuple[tuple[tuple[int, ...], ...], ...]
    correlated: tuple[tuple[bool, ...], ...]
    J: tuple[int, ...]
    p: int
    b0: np.ndarray
    anc: tuple[tuple[np.ndarray, ...], ...]
    ZtZ: tuple[np.ndarray, ...]
    ZtZa: tuple[tuple[np.ndarray, ...], ...]
    ZtX: tuple[np.ndarray, ...]
    Zte: tuple[np.ndarray, ...]
    XtX: np.ndarray
    Xte: np.ndarray
    ete: np.ndarray
    n_obs: np.ndarray
    n_nodes: tuple[np.ndarray, ...]

    @property
    def L(self) -> int:
        return len(self.q)

    def structure(self) -> tuple:
        """What the compiled graph depends on (not n, not the number of groups)."""
        return (self.p, self.q, self.blocks, self.correlated)


def _bsum(codes: np.ndarray, w: np.ndarray, J: int) -> np.ndarray:
    return np.bincount(codes, weights=w, minlength=J)


def marginal_stats(design: Design, chain: tuple[FactorDesign, ...] | None = None) -> MarginalStats:
    """Compute the sufficient statistics once (O(n (q + p)^2), never a dense n x J matrix)."""
    if chain is None:
        chain, why = nesting_chain(design)
        if chain is None:
            raise SpecError(f"the marginal path does not apply: {why}")
    X, y = design.X, design.y
    n, p = X.shape
    b0 = np.linalg.lstsq(X, y, rcond=None)[0] if p else np.zeros(0)
    e = y - X @ b0
    top = chain[0].codes
    J0 = chain[0].n_levels
    anc, ZtZ, ZtZa, ZtX, Zte, n_nodes = [], [], [], [], [], []
    for l, f in enumerate(chain):
        J, q, Z, g = f.n_levels, f.q, f.Z, f.codes
        a = []
        for m in range(l):
            idx = np.zeros(J, dtype=np.int64)
            idx[g] = chain[m].codes
            a.append(idx)
        anc.append(tuple(a))
        zz = np.empty((J, q, q))
        for i in range(q):
            for j in range(i, q):
                zz[:, i, j] = zz[:, j, i] = _bsum(g, Z[:, i] * Z[:, j], J)
        ZtZ.append(zz)
        za = []
        for m in range(l):
            Zm = chain[m].Z
            c = np.empty((J, q, chain[m].q))
            for i in range(q):
                for j in range(chain[m].q):
                    c[:, i, j] = _bsum(g, Z[:, i] * Zm[:, j], J)
            za.append(c)
        ZtZa.append(tuple(za))
        zx = np.empty((J, q, p))
        for i in range(q):
            for j in range(p):
                zx[:, i, j] = _bsum(g, Z[:, i] * X[:, j], J)
        ZtX.append(zx)
        Zte.append(np.stack([_bsum(g, Z[:, i] * e, J) for i in range(q)], axis=1))
        top_of_node = np.zeros(J, dtype=np.int64)
        top_of_node[g] = top
        n_nodes.append(np.bincount(top_of_node, minlength=J0).astype(float))
    XtX = np.empty((J0, p, p))
    for i in range(p):
        for j in range(i, p):
            XtX[:, i, j] = XtX[:, j, i] = _bsum(top, X[:, i] * X[:, j], J0)
    Xte = np.stack([_bsum(top, X[:, i] * e, J0) for i in range(p)], axis=1) if p else np.zeros((J0, 0))
    return MarginalStats(
        names=tuple(f.name for f in chain), q=tuple(f.q for f in chain),
        blocks=tuple(f.blocks for f in chain), correlated=tuple(f.correlated for f in chain),
        J=tuple(f.n_levels for f in chain), p=p, b0=b0, anc=tuple(anc), ZtZ=tuple(ZtZ),
        ZtZa=tuple(ZtZa), ZtX=tuple(ZtX), Zte=tuple(Zte), XtX=XtX, Xte=Xte,
        ete=_bsum(top, e * e, J0), n_obs=np.bincount(top, minlength=J0).astype(float),
        n_nodes=tuple(n_nodes))


# --------------------------------------------------------------------------------------------
# The elimination, written once for numpy and PyTensor
# --------------------------------------------------------------------------------------------
class _NumpyOps:
    """Vectors are (J,) or (J, S) arrays (node axis first, draws last); scatter by sparse sums."""

    sqrt = staticmethod(np.sqrt)
    log = staticmethod(np.log)

    def __init__(self, stats: MarginalStats):
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


class _TensorOps:
    sqrt = staticmethod(pt.sqrt)
    log = staticmethod(pt.log)

    def __init__(self, anc, J):
        self.anc = anc          # anc[l][m] integer tensors
        self.J = J              # J[m] symbolic lengths

    def scatter(self, l: int, m: int, vals: list):
        stacked = pt.stack(vals, axis=1)                           # (J_l, K)
        out = pt.inc_subtensor(pt.zeros((self.J[m], len(vals)))[self.anc[l][m]], stacked)
        return [out[:, k] for k in range(len(vals))]


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


def _initial_blocks(stats: MarginalStats, s2, Sinv, d, backend):
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
def _cov_inverse_np(stats: MarginalStats, sds: list, cors: list):
    """Per level: S^-1 entries as lists of (S,) arrays and log|S| (S,), from sd (S,q), cor (S,q,q)."""
    Sinv, logS = [], []
    for l in range(stats.L):
        sd, cor = sds[l], cors[l]
        Sm = cor * sd[:, :, None] * sd[:, None, :]
        Si = np.linalg.inv(Sm)
        Sinv.append([[Si[:, i, j] for j in range(stats.q[l])] for i in range(stats.q[l])])
        logS.append(np.linalg.slogdet(Sm)[1])
    return Sinv, logS


def _numpy_pieces(stats: MarginalStats, b, sds, cors, sigma, keep=False):
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


def _param_draws(fit_post, stats: MarginalStats):
    """b (S,p), per-level sd (S,q) and cor (S,q,q), sigma (S,) from a posterior Dataset."""
    def flat(name):
        v = fit_post[name]
        return v.stack(sample=("chain", "draw")).transpose("sample", ...).to_numpy()
    b = flat("b")
    sds, cors = [], []
    for name, q in zip(stats.names, stats.q):
        sd = flat(f"sd_{name}")
        cor = flat(f"cor_{name}") if f"cor_{name}" in fit_post else np.broadcast_to(np.eye(q), (len(sd), q, q))
        sds.append(sd)
        cors.append(np.asarray(cor))
    return b, sds, cors, flat("sigma")


def conditional_effects(stats: MarginalStats, b, sds, cors, sigma, noise=None):
    """Random effects drawn from u | y, b, G, sigma (numpy; exact).

    Parameters
    ----------
    stats : MarginalStats
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


def draw_group_effects(stats: MarginalStats, b, sds, cors, sigma, seed: int, chunk: int = 200):
    """Exact draws of every factor's effects, one per posterior draw, seeded (same seed, same draws).

    Returns a list over levels of arrays (S, J_l, q_l). Processes ``chunk`` draws at a time.
    """
    S = len(sigma)
    # one stream per factor, drawn in draw-major order: the result does not depend on ``chunk``
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence([int(seed), 6]).spawn(stats.L)]
    out = [np.empty((S, J, q)) for J, q in zip(stats.J, stats.q)]
    for s0 in range(0, S, chunk):
        sl = slice(s0, min(S, s0 + chunk))
        k = sl.stop - sl.start
        noise = [rng.standard_normal((k, J, q)).transpose(1, 2, 0)
                 for rng, J, q in zip(rngs, stats.J, stats.q)]
        parts = conditional_effects(stats, b[sl], [x[sl] for x in sds], [x[sl] for x in cors],
                                    sigma[sl], noise)
        for l in range(stats.L):
            out[l][sl] = parts[l]
    return out


def group_log_likelihood(fit, chunk: int = 200) -> xr.DataArray:
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
    stats = marginal_stats(design, chain)
    post = fit.posterior
    b, sds, cors, sigma = _param_draws(post, stats)
    out = np.empty((len(sigma), stats.J[0]))
    for s0 in range(0, len(sigma), chunk):
        sl = slice(s0, min(len(sigma), s0 + chunk))
        d, s2, logS, logdet, quad, _, ops = _numpy_pieces(stats, b[sl], [x[sl] for x in sds],
                                                          [x[sl] for x in cors], sigma[sl])
        out[sl] = _np_group_loglik(stats, d, s2, logS, logdet, quad, ops).T
    nc, nd = post.sizes["chain"], post.sizes["draw"]
    g = stats.names[0]
    return xr.DataArray(out.reshape(nc, nd, -1), dims=("chain", "draw", level_dim(g)),
                        coords={"chain": post["chain"].values, "draw": post["draw"].values,
                                level_dim(g): list(chain[0].levels)}, name="y_marginal")


# --------------------------------------------------------------------------------------------
# The PyMC model
# --------------------------------------------------------------------------------------------
def _shared(name: str, value) -> pt.TensorVariable:
    """A data input without static shape: the compiled graph does not depend on n or J."""
    value = np.asarray(value)
    return pytensor.shared(value, name=name, shape=(None,) * value.ndim)


def _fixed_effects(design: Design, priors: PriorTable):
    """``b`` with the centring convention of :func:`bayeslmm.graph.fixed_part` (same RVs, same priors)."""
    X, terms = design.X, design.fixed_terms
    slope_idx = [j for j, t in enumerate(terms) if t != "Intercept"]
    parts = {}
    if slope_idx:
        beta = prior_rv("beta", [priors[terms[j]] for j in slope_idx], dims="slope")
        for k, j in enumerate(slope_idx):
            parts[terms[j]] = beta[k]
    if design.has_intercept:
        ic = prior_rv("Intercept_c", [priors["Intercept"]])
        xm = X[:, slope_idx].mean(axis=0) if slope_idx else np.zeros(0)
        parts["Intercept"] = ic - pt.dot(xm, beta) if slope_idx else ic
    return pm.Deterministic("b", pt.stack([parts[t] for t in terms]), dims="term")


def _covariance_tensors(f: FactorDesign, priors: PriorTable):
    """``sd_{g}``, the LKJ Cholesky factors (same names as graph.py) and ``cor_{g}``.

    Returns ``(sd, [(block, L), ...])`` with one entry per correlated block.
    """
    sd = prior_rv(f"sd_{f.name}", priors.of_class("sd", f.name), dims=term_dim(f.name))
    Ls = correlation_factors(f, priors)
    correlation_matrix(f, Ls)
    return sd, Ls


def _precision_entries(f: FactorDesign, sd, Ls: list):
    """S^-1 entries (nested lists of scalars) and log|S| for the graph path."""
    q = f.q
    Cinv = [[pt.constant(1.0 if i == j else 0.0) for j in range(q)] for i in range(q)]
    logC = 0.0
    for block, L in Ls:
        Linv = pt.linalg.solve_triangular(L, pt.eye(len(block)), lower=True)
        Ci = pt.dot(Linv.T, Linv)
        for a, i in enumerate(block):
            for bb, j in enumerate(block):
                Cinv[i][j] = Ci[a, bb]
        logC = logC + 2.0 * pt.sum(pt.log(pt.diag(L)))
    isd = 1.0 / sd
    Sinv = [[Cinv[i][j] * isd[i] * isd[j] if (i == j or _same_block(f, i, j)) else pt.constant(0.0)
             for j in range(q)] for i in range(q)]
    logS = 2.0 * pt.sum(pt.log(sd)) + logC
    return Sinv, logS


def _same_block(f: FactorDesign, i: int, j: int) -> bool:
    return any(i in b and j in b and c for b, c in zip(f.blocks, f.correlated))


def marginal_logp_graph(stats: MarginalStats, data: dict, b, Sinv, logS, sigma):
    """Per top-level group marginal log-density as a PyTensor vector (J_0,).

    ``data`` holds the shared inputs made by :func:`_stats_inputs`.
    """
    d = b - data["b0"]
    s2 = sigma ** 2
    backend = {
        "ZtZ": [[[data["ZtZ"][l][:, i, j] for j in range(stats.q[l])] for i in range(stats.q[l])]
                for l in range(stats.L)],
        "ZtZa": [{m: [[data["ZtZa"][l][m][:, i, j] for j in range(stats.q[m])]
                      for i in range(stats.q[l])] for m in range(l)} for l in range(stats.L)],
        "Zte": [[data["Zte"][l][:, i] for i in range(stats.q[l])] for l in range(stats.L)],
        "ZtXd": lambda l, i, dd: pt.dot(data["ZtX"][l][:, i, :], dd),
    }
    D, C, c = _initial_blocks(stats, s2, Sinv, d, backend)
    J = [data["Zte"][l].shape[0] for l in range(stats.L)]
    ops = _TensorOps(data["anc"], J)
    logdet, quad, _ = _eliminate(D, C, c, ops)
    ld, qd = logdet[0], quad[0]
    for l in range(1, stats.L):
        s_ld, s_qd = ops.scatter(l, 0, [logdet[l], quad[l]])
        ld, qd = ld + s_ld, qd + s_qd
    XtXf = data["XtX"].reshape((data["XtX"].shape[0], -1))
    rr = data["ete"] - 2.0 * pt.dot(data["Xte"], d) + pt.dot(XtXf, pt.outer(d, d).ravel())
    n = data["n_obs"]
    Q, logG = 0.0, 0.0
    for l in range(stats.L):
        Q = Q + data["n_nodes"][l] * stats.q[l]
        logG = logG + data["n_nodes"][l] * logS[l]
    return -0.5 * (n * LOG_2PI + (n - Q) * pt.log(s2) + logG + ld + (rr - qd) / s2)


def kernel_inputs(stats: MarginalStats) -> dict[str, np.ndarray]:
    """The one-factor kernel's data arrays by the names of the model's shared variables."""
    return dict(zip(("m_b0", "m_ZtZ", "m_ZtX", "m_Zte", "m_XtX", "m_Xte", "m_ete", "m_n_obs"),
                    kernel_data(stats)))


def data_values(stats: MarginalStats) -> dict[str, np.ndarray]:
    """Every shared variable of :func:`build_marginal_model` by name, for swapping in new data
    (same structure) without rebuilding the model."""
    if stats.L == 1:
        return kernel_inputs(stats)
    out = {}

    def walk(x):
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)
        else:
            out[x.name] = x.get_value()
    walk(_stats_inputs(stats))
    return out


def _stats_inputs(stats: MarginalStats) -> dict:
    return {
        "b0": _shared("m_b0", stats.b0),
        "anc": [[_shared(f"m_anc_{l}_{m}", a) for m, a in enumerate(stats.anc[l])] for l in range(stats.L)],
        "ZtZ": [_shared(f"m_ZtZ_{l}", x) for l, x in enumerate(stats.ZtZ)],
        "ZtZa": [{m: _shared(f"m_ZtZa_{l}_{m}", x) for m, x in enumerate(stats.ZtZa[l])}
                 for l in range(stats.L)],
        "ZtX": [_shared(f"m_ZtX_{l}", x) for l, x in enumerate(stats.ZtX)],
        "Zte": [_shared(f"m_Zte_{l}", x) for l, x in enumerate(stats.Zte)],
        "XtX": _shared("m_XtX", stats.XtX), "Xte": _shared("m_Xte", stats.Xte),
        "ete": _shared("m_ete", stats.ete), "n_obs": _shared("m_n_obs", stats.n_obs),
        "n_nodes": [_shared(f"m_n_nodes_{l}", x) for l, x in enumerate(stats.n_nodes)],
    }


def build_marginal_model(design: Design, prior_table: PriorTable,
                         stats: MarginalStats | None = None, *, sampler: str = "pymc") -> pm.Model:
    """The collapsed Gaussian LMM as a ``pm.Model``: random effects integrated out.

    Free variables and priors are those of :func:`bayeslmm.graph.build_model` without the
    offsets ``z_{g}``: ``Intercept_c``, ``beta``, ``sd_{g}``, ``cpc_{g}`` (LKJ), ``sigma``. The
    likelihood is a ``pm.CustomDist`` ``y_marginal`` with one element per top-level group (its
    marginal log-density), so ``pm.compute_log_likelihood`` gives leave-one-group-out terms.

    With one grouping factor the likelihood is the compiled kernel of
    :mod:`bayeslmm.marginal_kernel`; with nested factors, the elimination graph of
    :func:`marginal_logp_graph`. ``sampler`` (``"pymc"`` or ``"nutpie"``) is the NUTS the model
    will be sampled by: it decides how the kernel is called (see ``OneFactorMarginal``).

    Examples
    --------
    >>> import bayeslmm as blmm
    >>> m = blmm.Model("Reaction ~ Days + (Days | Subject)", blmm.load_dataset("sleepstudy"))
    >>> sorted(v.name for v in build_marginal_model(m.design, m.prior_table).free_RVs)
    ['Intercept_c', 'beta', 'cpc_Subject', 'sd_Subject', 'sigma']
    """
    chain, why = nesting_chain(design)
    if chain is None:
        raise SpecError(f"the marginal path does not apply: {why}. Use method='noncentred'.")
    stats = stats if stats is not None else marginal_stats(design, chain)
    coords = coords_of(design)
    coords = {k: v for k, v in coords.items() if not k.endswith("__level") or k == level_dim(chain[0].name)}
    slope_terms = [t for t in design.fixed_terms if t != "Intercept"]
    if slope_terms:
        coords["slope"] = slope_terms
    if stats.L == 1:
        kdata = [_shared(name, x) for name, x in kernel_inputs(stats).items()]
    else:
        data = _stats_inputs(stats)
    with pm.Model(coords=coords) as model:
        b = _fixed_effects(design, prior_table)
        cov = {f.name: _covariance_tensors(f, prior_table) for f in design.factors}   # design order
        sigma = prior_rv("sigma", [prior_table["sigma"]])
        top = chain[0].name
        if stats.L == 1:
            sd, Ls = cov[top]
            params = [b, sd, cor_cholesky(stats.q[0], Ls), sigma]
            signature = "(p),(q),(q,q),()->()"
            shapes = [(stats.p,), (stats.q[0],), (stats.q[0], stats.q[0]), ()]

            def logp(value, *par):
                # PyMC hands the parameters over with a leading length-1 batch axis: drop it
                par = [x.reshape(shape) for x, shape in zip(par, shapes)]
                return one_factor_logp(*par, *kdata, linked=sampler != "pymc")
        else:
            prec = [_precision_entries(f, *cov[f.name]) for f in chain]
            params = [b, sigma] + [lS for _, lS in prec] + [
                Sinv[i][j] for (Sinv, _), q in zip(prec, stats.q) for i in range(q) for j in range(q)]
            signature = "(p)" + ",()" * (len(params) - 1) + "->()"

            def logp(value, b_, sigma_, *rest):
                b_ = b_.reshape((stats.p,))
                sigma_ = sigma_.reshape(())
                rest = [x.reshape(()) for x in rest]
                logS_ = list(rest[:stats.L])
                flat = list(rest[stats.L:])
                Sinv_ = []
                for l in range(stats.L):
                    q = stats.q[l]
                    Sinv_.append([[flat.pop(0) for _ in range(q)] for _ in range(q)])
                return marginal_logp_graph(stats, data, b_, Sinv_, logS_, sigma_)

        params = [pt.as_tensor_variable(x) for x in params]
        pm.CustomDist("y_marginal", *params, logp=logp, observed=np.zeros(stats.J[0]),
                      signature=signature, dims=level_dim(top))
    return model


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------
def sample_marginal(design: Design, prior_table: PriorTable, settings: SamplerSpec,
                    seed: int | None = None) -> tuple[xr.DataTree, dict]:
    """NUTS on the collapsed model, then exact draws of the random effects.

    Returns
    -------
    (DataTree, info)
        Groups ``posterior`` (``b``, ``sd_{g}``, ``cor_{g}``, ``r_{g}``, ``sigma``; the same names
        and dims as the non-centred graph), ``sample_stats`` and ``observed_data`` (``y`` over
        ``obs``). ``info`` adds ``setup_s`` (statistics and model build), ``sampling_s`` (NUTS,
        including PyTensor compilation) and ``effects_s`` (drawing ``r``).
    """
    seed = resolve_seed(settings.seed if seed is None else seed)
    t0 = time.perf_counter()
    chain, why = nesting_chain(design)
    if chain is None:
        raise SpecError(f"the marginal path does not apply: {why}. Use method='noncentred'.")
    stats = marginal_stats(design, chain)
    model = build_marginal_model(design, prior_table, stats, sampler=settings.sampler)
    setup_s = time.perf_counter() - t0
    keep = ["b"] + [v for f in design.factors for v in (f"sd_{f.name}", f"cor_{f.name}")] + ["sigma"]
    keep = [v for v in keep if v in model.named_vars]
    idata, info = sample(model, settings, var_names=keep, seed=seed)
    t1 = time.perf_counter()
    post = idata["posterior"].to_dataset()
    post = post[[v for v in keep if v in post.data_vars]]
    b, sds, cors, sigma = _param_draws(post, stats)
    effects = draw_group_effects(stats, b, sds, cors, sigma, seed)
    nc, nd = post.sizes["chain"], post.sizes["draw"]
    new = {}
    for f, eff in zip(chain, effects):
        new[f"r_{f.name}"] = xr.DataArray(
            eff.reshape(nc, nd, f.n_levels, f.q), dims=("chain", "draw", level_dim(f.name), term_dim(f.name)),
            coords={level_dim(f.name): list(f.levels), term_dim(f.name): list(f.terms)})
    order = []
    for v in ["b"] + [x for f in design.factors for x in (f"sd_{f.name}", f"cor_{f.name}", f"r_{f.name}")] + ["sigma"]:
        if v in post.data_vars or v in new:
            order.append(v)
    merged = xr.merge([post, xr.Dataset(new)], compat="override", join="outer")[order]
    merged.attrs = dict(idata["posterior"].attrs)
    tree = xr.DataTree()
    tree["posterior"] = xr.DataTree(merged)
    tree["sample_stats"] = idata["sample_stats"].copy()
    tree["observed_data"] = xr.DataTree(xr.Dataset(
        {"y": ("obs", design.y)}, coords={"obs": np.arange(design.n)}))
    tree.attrs = dict(idata.attrs)
    info = dict(info)
    info.update({"setup_s": setup_s, "effects_s": time.perf_counter() - t1,
                 "marginal_structure": str(stats.structure()), "marginal_reason": why})
    return tree, info
