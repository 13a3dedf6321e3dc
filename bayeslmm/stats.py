"""Per-group sufficient statistics: everything the exact collapsed path and shrinkage need from
the rows, computed once.

* :func:`nesting_chain`: whether the grouping factors form a nesting chain (one factor, or
  ``a``, ``a:b``, ...), the structure the collapsed path needs; worked out here only.
* :class:`GroupStats` / :func:`group_stats`: per node (one level of one factor of the chain)
  Z_k'Z_k, Z_k'Z_anc (coupling with each ancestor), Z_k'X, Z_k'e0, and per top-level group
  X_j'X_j, X_j'e0, e0_j'e0_j, where e0 = y - X b0 are the residuals of the least-squares fit b0
  (computing around b0 instead of 0 avoids cancellation between y'y and the fitted sum of squares
  when the mean of y is large).
* :func:`crossprod` / :func:`group_crossprods`: per-group cross-products A_j'B_j by integer codes
  (``np.bincount``), never a dense n x J indicator.

**Known standard errors** (``y | se(s) ~ ...``, no sigma): y_i ~ N(mu_i, s_i^2). Dividing row i of
y, X and every Z by s_i gives unit residual variance, so the statistics are those of the whitened
rows (weighted sums with weights 1/s_i^2), the collapsed algebra runs with sigma fixed at 1, and the
log-density gains the constant -sum_i log s_i per top-level group (``log_se`` holds sum_i log s_i).
This is exact. With ``se(s, sigma = TRUE)`` the residual covariance diag(s_i^2 + sigma^2) has no
such form and :func:`group_stats` refuses.

Every statistic except ``b0`` is a sum over rows, so it can later be accumulated chunk by chunk
(given b0 from a first pass, or by re-centring the sums).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import SpecError

__all__ = ["nesting_chain", "GroupStats", "group_stats", "crossprod", "group_crossprods"]


def _nested_in(child, parent) -> bool:
    """True when every level of ``child`` lies inside exactly one level of ``parent``."""
    pairs = np.unique(child.codes * parent.n_levels + parent.codes)
    return len(pairs) == child.n_levels


def nesting_chain(design) -> tuple[tuple | None, str]:
    """The grouping factors ordered top -> deepest if they form a nesting chain, else a reason.

    Returns
    -------
    (chain, reason) : chain is None when the factors are crossed (or there are none); the reason
    is the one ``fit`` prints for the chosen sampling path.
    """
    if getattr(design, "group_stats", None) is not None:   # statistics only (bayeslmm.bigfit): its own chain
        return design.chain, design.chain_reason
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


@dataclass(frozen=True)
class GroupStats:
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
    #: known standard errors: per top-level group sum_i log s_i (rows whitened, sigma fixed at 1)
    log_se: np.ndarray | None = None

    @property
    def known_scale(self) -> bool:
        """True when the rows were whitened by known standard errors (sigma is fixed at 1)."""
        return self.log_se is not None

    @property
    def L(self) -> int:
        return len(self.q)

    def structure(self) -> tuple:
        """What the compiled graph depends on (not n, not the number of groups)."""
        return (self.p, self.q, self.blocks, self.correlated)


def _bsum(codes: np.ndarray, w: np.ndarray, J: int) -> np.ndarray:
    return np.bincount(codes, weights=w, minlength=J)


def crossprod(codes: np.ndarray, J: int, A: np.ndarray, B: np.ndarray | None = None) -> np.ndarray:
    """Per group A_j'B_j: shape (J, a, b) (``B=None``: A_j'A_j, computed once per pair and mirrored)."""
    sym = B is None
    B = A if sym else B
    out = np.empty((J, A.shape[1], B.shape[1]))
    for i in range(A.shape[1]):
        for j in range(i if sym else 0, B.shape[1]):
            out[:, i, j] = _bsum(codes, A[:, i] * B[:, j], J)
            if sym:
                out[:, j, i] = out[:, i, j]
    return out


def group_crossprods(f, e: np.ndarray | None = None):
    """Per group of factor ``f``: Z_j'Z_j (J, q, q) and, given e, Z_j'e_j (J, q)."""
    ZtZ = crossprod(f.codes, f.n_levels, f.Z)
    if e is None:
        return ZtZ, None
    return ZtZ, np.ascontiguousarray(crossprod(f.codes, f.n_levels, f.Z, e[:, None])[:, :, 0])


def group_stats(design, chain: tuple | None = None) -> GroupStats:
    """Compute the sufficient statistics once (O(n (q + p)^2), never a dense n x J matrix).

    ``chain``: the factors from :func:`nesting_chain` (worked out here when not given).
    """
    if getattr(design, "group_stats", None) is not None:   # statistics only (bayeslmm.bigfit): computed already
        return design.group_stats
    if chain is None:
        chain, why = nesting_chain(design)
        if chain is None:
            raise SpecError(f"the collapsed path does not apply: {why}")
    X, y = design.X, design.y
    top = chain[0].codes
    J0 = chain[0].n_levels
    Zs = [f.Z for f in chain]
    log_se = None
    se = getattr(design, "se", None)
    if se is not None:
        if design.se_sigma:
            raise SpecError("the collapsed path does not apply to se(..., sigma = TRUE): the residual "
                            "covariance diag(s_i^2 + sigma^2) cannot be whitened; use method='noncentred'")
        w = 1.0 / se
        X, y, Zs = X * w[:, None], y * w, [Z * w[:, None] for Z in Zs]
        log_se = _bsum(top, np.log(se), J0)
    lw = getattr(design, "weights", None)
    if lw is not None:               # likelihood weights: rows times sqrt(w_i), n_obs = sum of w_i
        sw = np.sqrt(lw)
        X, y, Zs = X * sw[:, None], y * sw, [Z * sw[:, None] for Z in Zs]
    n, p = X.shape
    b0 = np.linalg.lstsq(X, y, rcond=None)[0] if p else np.zeros(0)
    e = y - X @ b0
    anc, ZtZ, ZtZa, ZtX, Zte, n_nodes = [], [], [], [], [], []
    for l, f in enumerate(chain):
        J, q, Z, g = f.n_levels, f.q, Zs[l], f.codes
        a = []
        for m in range(l):
            idx = np.zeros(J, dtype=np.int64)
            idx[g] = chain[m].codes
            a.append(idx)
        anc.append(tuple(a))
        ZtZ.append(crossprod(g, J, Z))
        ZtZa.append(tuple(crossprod(g, J, Z, Zs[m]) for m in range(l)))
        ZtX.append(crossprod(g, J, Z, X))
        Zte.append(np.ascontiguousarray(crossprod(g, J, Z, e[:, None])[:, :, 0]))
        top_of_node = np.zeros(J, dtype=np.int64)
        top_of_node[g] = top
        n_nodes.append(np.bincount(top_of_node, minlength=J0).astype(float))
    XtX = crossprod(top, J0, X)
    Xte = np.ascontiguousarray(crossprod(top, J0, X, e[:, None])[:, :, 0]) if p else np.zeros((J0, 0))
    return GroupStats(
        names=tuple(f.name for f in chain), q=tuple(f.q for f in chain),
        blocks=tuple(f.blocks for f in chain), correlated=tuple(f.correlated for f in chain),
        J=tuple(f.n_levels for f in chain), p=p, b0=b0, anc=tuple(anc), ZtZ=tuple(ZtZ),
        ZtZa=tuple(ZtZa), ZtX=tuple(ZtX), Zte=tuple(Zte), XtX=XtX, Xte=Xte,
        ete=_bsum(top, e * e, J0),
        n_obs=np.bincount(top, minlength=J0).astype(float) if lw is None else _bsum(top, lw, J0),
        n_nodes=tuple(n_nodes), log_se=log_se)
