"""Exact collapsed Gaussian log-likelihood for crossed and multi-factor designs (numpy + LAPACK).

The model, for K grouping factors (crossed, nested or both):

    y = X b + sum_k Z_k gamma_k + e,   gamma_k = (I_{J_k} kron T_k) z_k,   z ~ N(0, I),   e ~ N(0, sigma^2 I),

with T_k = diag(sd_k) C_k and C_k the lower Cholesky factor of factor k's term correlation matrix
(block-diagonal, the identity where terms are uncorrelated): the parameterisation of the one-factor
kernel (:mod:`bayeslmm.marginal_kernel`). With Lambda = blockdiag_k(I kron T_k), Z = [Z_1 .. Z_K],
C = Z'Z (Q x Q, Q = sum_k J_k q_k), r = y - X b, c = Z'r and

    A = I + Lambda' C Lambda / sigma^2 = L L',      u = Lambda' c,      a = A^-1 u,

the marginal density y ~ N(X b, sigma^2 I + Z Lambda Lambda' Z') is (Bates et al. 2015, eq. 14-34)

    log p(y) = -1/2 [n log(2 pi sigma^2) + log|A| + (r'r - u'a / sigma^2) / sigma^2],

finite at sd = 0 (then A = I). The gradient, with P = A^-1, v = Lambda a and
g = Z'V^-1 r = (c - C v / sigma^2) / sigma^2:

    d/dLambda  = (g a' - C Lambda P) / sigma^2          (only its diagonal q_k x q_k blocks are used)
    d/dsigma^2 = -1/2 [(n - Q + tr P) / sigma^2 - r'r / sigma^4 + (u'a + a'a) / sigma^6]
    d/db       = (X'r - (Z'X)' v / sigma^2) / sigma^2,

so the trace terms need P only on the sparsity pattern of C (a selected inverse), never all of it.

**The factorisation** (the blocked Cholesky of MixedModels.jl; Bates, Alday & Kokandakar 2025).
A factor's own block of C is block-diagonal (a row belongs to one level of each factor), so the
factor with the most effects (J_1 q_1) is eliminated block by block and the rest, Q_2 = Q - J_1 q_1
effects, is held dense:

    A = [[A11, A21'], [A21, A22]],  A11 = blockdiag_j L_j L_j',  W = A21 L11^-T,  S = A22 - W W' = L2 L2'.

S >= I (it is the inverse of a block of P <= I), so the dense Cholesky is always well conditioned.
The selected inverse comes from the same blocks: P22 = S^-1, P21 = -S^-1 W L11^-1 (on the pattern
of C21 = all of it when the design is fully crossed), diagonal blocks P11_j = L_j^-T (I + W_j'
S^-1 W_j) L_j^-1. One evaluation costs O(Q_2^2 Q_1 + Q_2^3) flops (a syrk, a potrf, a potri and a
gemm, all LAPACK/BLAS) plus O(J_1 q_1^3), and never touches the n rows: everything starts from the
sufficient statistics of :func:`crossed_stats`. With ``eliminate=False`` (the "dense" variant) all
Q effects go to the dense part.

Group effects are drawn from their exact conditional: z | y ~ N(a / sigma^2, A^-1), gamma = Lambda z,
i.e. z = a / sigma^2 + L^-T eps with one blocked triangular solve per draw.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import blas, lapack

from ..errors import DataError, SpecError

__all__ = ["Factor", "CrossedStats", "crossed_stats", "crossed_logp", "conditional_effects",
           "conditional_moments", "draw_effects"]

LOG_2PI = float(np.log(2.0 * np.pi))
# Largest dense block (entries) the sufficient statistics may hold: above it the dense Schur
# complement is too big for this path (about 1.6 GB of float64 at the limit).
MAX_DENSE = 200_000_000


@dataclass(frozen=True)
class Factor:
    """One grouping factor at array level (``bayeslmm.design.FactorDesign`` has the same fields).

    Attributes
    ----------
    name : str
    codes : ndarray of int, shape (n,)
        Level of each row, in ``range(n_levels)``.
    Z : ndarray, shape (n, q)
        The factor's random-effect design columns.
    n_levels : int
    """

    name: str
    codes: np.ndarray
    Z: np.ndarray
    n_levels: int


@dataclass(frozen=True)
class CrossedStats:
    """Sufficient statistics of a multi-factor Gaussian LMM in the blocked layout.

    ``q``, ``J`` and ``names`` are in the caller's factor order. Internally the effects are ordered
    factor ``order[0]``, ``order[1]``, ... (each level-major: level j's q_k effects together); when
    ``n_elim`` is 1 the first of them (the factor with the most effects) is eliminated block-wise
    and the others form the dense part. Arrays: ``D1`` (J_1, q_1, q_1) the eliminated factor's
    Z'Z blocks; ``B`` (Q_2, Q_1) = Z_rest'Z_1; ``E`` (Q_2, Q_2) = Z_rest'Z_rest; ``ZtX`` (Q, p),
    ``Zte`` (Q,), ``XtX`` (p, p), ``Xte`` (p,), ``ete`` around the least-squares fit ``b0``
    (e0 = y - X b0, against cancellation when the mean of y is large).
    """

    names: tuple[str, ...]
    q: tuple[int, ...]
    J: tuple[int, ...]
    p: int
    n: int
    order: tuple[int, ...]
    n_elim: int
    b0: np.ndarray
    D1: np.ndarray
    B: np.ndarray
    E: np.ndarray
    ZtX: np.ndarray
    Zte: np.ndarray
    XtX: np.ndarray
    Xte: np.ndarray
    ete: float

    @property
    def K(self) -> int:
        return len(self.q)

    @property
    def Q1(self) -> int:
        k = self.order[0]
        return self.J[k] * self.q[k] if self.n_elim else 0

    @property
    def Q(self) -> int:
        return int(sum(j * q for j, q in zip(self.J, self.q)))

    @property
    def Q2(self) -> int:
        return self.Q - self.Q1

    def offsets(self) -> dict[int, int]:
        """Start of each factor (by caller index) in the internal effect order."""
        out, pos = {}, 0
        for k in self.order:
            out[k] = pos
            pos += self.J[k] * self.q[k]
        return out

    def rest(self) -> list[tuple[int, int, int, int]]:
        """(factor, start in the dense part, J, q) for each factor of the dense part."""
        out, pos = [], 0
        for k in self.order[self.n_elim:]:
            out.append((k, pos, self.J[k], self.q[k]))
            pos += self.J[k] * self.q[k]
        return out


def _as_factor_arrays(f, n: int) -> tuple[np.ndarray, np.ndarray, int]:
    codes = np.asarray(f.codes)
    Z = np.asarray(f.Z, dtype=float)
    if Z.ndim == 1:
        Z = Z[:, None]
    J = int(f.n_levels)
    if codes.shape != (n,) or Z.shape[0] != n:
        raise DataError(f"grouping factor {f.name!r}: codes {codes.shape} and Z {Z.shape} must have "
                        f"one row per observation ({n}); rebuild the design from the same rows as y")
    if not np.issubdtype(codes.dtype, np.integer) or (n and (codes.min() < 0 or codes.max() >= J)):
        raise DataError(f"grouping factor {f.name!r}: codes must be integers in [0, {J}); encode the "
                        "levels with bayeslmm.design")
    if not np.all(np.isfinite(Z)):
        raise DataError(f"grouping factor {f.name!r}: Z has missing or infinite values; drop or "
                        "impute those rows first")
    return codes.astype(np.int64), Z, J


def _cross(gk, Zk, Jk, gl, Zl, Jl) -> np.ndarray:
    """Z_k'Z_l as a dense (J_k q_k, J_l q_l) array, from the codes (no n x J indicator)."""
    qk, ql = Zk.shape[1], Zl.shape[1]
    out = np.empty((Jk, qk, Jl, ql))
    idx = gk * Jl + gl
    for a in range(qk):
        for c in range(ql):
            out[:, a, :, c] = np.bincount(idx, weights=Zk[:, a] * Zl[:, c], minlength=Jk * Jl).reshape(Jk, Jl)
    return out.reshape(Jk * qk, Jl * ql)


def crossed_stats(y, X, factors, *, eliminate: bool = True) -> CrossedStats:
    """The sufficient statistics, computed once (O(n (p + q)^2) and the dense blocks).

    Parameters
    ----------
    y : (n,) ; X : (n, p)
    factors : sequence of :class:`Factor` (or anything with ``name``, ``codes``, ``Z``,
        ``n_levels``, such as ``bayeslmm.design.FactorDesign``), in the order the parameters
        ``sds`` / ``Ccs`` will be given.
    eliminate : bool
        Eliminate the factor with the most effects block-wise (default); False puts every effect
        in the dense part (cheaper only for a handful of effects, see bench/crossed_probe.py).

    Returns
    -------
    CrossedStats

    Raises
    ------
    DataError, SpecError
        Mismatched shapes, codes out of range, non-finite values; a dense part too large.
    """
    y = np.asarray(y, dtype=float)
    X = np.asarray(X, dtype=float)
    n = y.shape[0]
    if X.ndim != 2 or X.shape[0] != n:
        raise DataError(f"X has shape {X.shape}; it needs one row per observation ({n})")
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(X))):
        raise DataError("y or X has missing or infinite values; drop or impute those rows first")
    if not factors:
        raise SpecError("the crossed path needs at least one grouping factor")
    arrs = [_as_factor_arrays(f, n) for f in factors]
    names = tuple(str(f.name) for f in factors)
    q = tuple(Z.shape[1] for _, Z, _ in arrs)
    J = tuple(Jk for _, _, Jk in arrs)
    sizes = [j * qq for j, qq in zip(J, q)]
    # eliminate the factor with the most effects (ties: the first); the rest keep the caller's order
    first = int(np.argmax(sizes))
    order = (first,) + tuple(k for k in range(len(arrs)) if k != first)
    n_elim = 1 if eliminate else 0
    Q1 = sizes[first] if n_elim else 0
    Q2 = sum(sizes) - Q1
    if Q2 * max(Q1, Q2) > MAX_DENSE:
        raise SpecError(f"crossed design too large for the dense Schur complement ({Q2} effects outside "
                        f"factor {names[first]!r}, {Q1} inside): use method='noncentred'")
    p = X.shape[1]
    b0 = np.linalg.lstsq(X, y, rcond=None)[0] if p else np.zeros(0)
    e = y - X @ b0
    rest = order[n_elim:]
    # per factor: Z'X and Z'e (level-major rows)
    ZtX, Zte = {}, {}
    for k, (g, Z, Jk) in enumerate(arrs):
        qk = Z.shape[1]
        zx = np.empty((Jk, qk, p))
        for a in range(qk):
            for c in range(p):
                zx[:, a, c] = np.bincount(g, weights=Z[:, a] * X[:, c], minlength=Jk)
        ZtX[k] = zx.reshape(Jk * qk, p)
        Zte[k] = np.stack([np.bincount(g, weights=Z[:, a] * e, minlength=Jk) for a in range(qk)],
                          axis=1).reshape(-1)
    g1, Z1, J1 = arrs[first]
    q1 = Z1.shape[1]
    if n_elim:
        D1 = np.empty((J1, q1, q1))
        for a in range(q1):
            for c in range(a, q1):
                D1[:, a, c] = D1[:, c, a] = np.bincount(g1, weights=Z1[:, a] * Z1[:, c], minlength=J1)
        B = np.concatenate([_cross(*arrs[k], *arrs[first]) for k in rest], axis=0) if rest \
            else np.zeros((0, Q1))
    else:
        D1, B = np.zeros((0, q1, q1)), np.zeros((Q2, 0))
    E = np.zeros((Q2, Q2))
    pos = np.cumsum([0] + [sizes[k] for k in rest])
    for i, k in enumerate(rest):
        gk, Zk, Jk = arrs[k]
        for jj, l in enumerate(rest[:i + 1]):
            if l == k:
                blk = np.zeros((Jk, q[k], Jk, q[k]))
                for a in range(q[k]):
                    for c in range(q[k]):
                        blk[np.arange(Jk), a, np.arange(Jk), c] = np.bincount(
                            gk, weights=Zk[:, a] * Zk[:, c], minlength=Jk)
                E[pos[i]:pos[i + 1], pos[i]:pos[i + 1]] = blk.reshape(sizes[k], sizes[k])
            else:
                blk = _cross(gk, Zk, Jk, *arrs[l])
                E[pos[i]:pos[i + 1], pos[jj]:pos[jj + 1]] = blk
                E[pos[jj]:pos[jj + 1], pos[i]:pos[i + 1]] = blk.T
    return CrossedStats(
        names=names, q=q, J=J, p=p, n=n, order=order, n_elim=n_elim, b0=b0, D1=D1,
        B=np.ascontiguousarray(B), E=E, ZtX=np.concatenate([ZtX[k] for k in order], axis=0),
        Zte=np.concatenate([Zte[k] for k in order]), XtX=X.T @ X, Xte=X.T @ e, ete=float(e @ e))


# --------------------------------------------------------------------------------------------
# Block-diagonal Lambda applied to the dense part
# --------------------------------------------------------------------------------------------
def _lmul(st: CrossedStats, Ts, M, transpose: bool):
    """Lambda_2 M (or Lambda_2' M) for M with Q_2 rows (any trailing shape)."""
    out = np.empty_like(M)
    for k, s, Jk, qk in st.rest():
        T = Ts[k].T if transpose else Ts[k]
        blk = M[s:s + Jk * qk].reshape((Jk, qk, -1))
        out[s:s + Jk * qk] = np.matmul(T, blk).reshape(out[s:s + Jk * qk].shape)
    return out


def _rmul(st: CrossedStats, Ts, M):
    """M Lambda_2 for M with Q_2 columns."""
    out = np.empty_like(M)
    for k, s, Jk, qk in st.rest():
        cols = M[:, s:s + Jk * qk].reshape(M.shape[0], Jk, qk)
        out[:, s:s + Jk * qk] = np.matmul(cols, Ts[k]).reshape(M.shape[0], Jk * qk)
    return out


def _diag_blocks(st: CrossedStats, M, N):
    """Per dense-part factor k: (J_k, q_k, q_k) blocks sum_l M[kj_a, l] N[kj_b, l]."""
    out = {}
    for k, s, Jk, qk in st.rest():
        m = M[s:s + Jk * qk].reshape(Jk, qk, -1)
        nn = N[s:s + Jk * qk].reshape(Jk, qk, -1)
        out[k] = np.matmul(m, nn.transpose(0, 2, 1))
    return out


@dataclass(frozen=True)
class _Chol:
    """The blocked factor of A for one parameter value."""

    Ts: list
    s2: float
    L1: np.ndarray        # (J1, q1, q1)
    L1inv: np.ndarray     # (J1, q1, q1)
    W: np.ndarray         # (Q2, J1, q1)
    L2: np.ndarray        # (Q2, Q2) lower, Fortran order


def _tri_inv(L: np.ndarray) -> np.ndarray:
    if L.shape[-1] == 1:
        return 1.0 / L
    return np.linalg.inv(L)


def _factor(st: CrossedStats, sds, Ccs, sigma) -> _Chol:
    Ts = [np.asarray(sd, dtype=float)[:, None] * np.asarray(C, dtype=float) for sd, C in zip(sds, Ccs)]
    s2 = float(sigma) ** 2
    Q2 = st.Q2
    if st.n_elim:
        k1 = st.order[0]
        T1, J1, q1 = Ts[k1], st.J[k1], st.q[k1]
        A11 = np.matmul(np.matmul(T1.T, st.D1), T1) / s2
        A11[:, np.arange(q1), np.arange(q1)] += 1.0
        L1 = np.linalg.cholesky(A11)
        L1inv = _tri_inv(L1)
        A21 = _lmul(st, Ts, np.matmul(st.B.reshape(Q2, J1, q1), T1), transpose=True) / s2
        W = np.einsum("iJa,Jba->iJb", A21, L1inv) if q1 > 1 else A21 * L1inv[:, 0, 0][None, :, None]
    else:
        L1 = L1inv = np.zeros((0, 1, 1))
        W = np.zeros((Q2, 0, 1))
    S = np.asfortranarray(_rmul(st, Ts, _lmul(st, Ts, st.E, transpose=True)) / s2)
    S[np.diag_indices(Q2)] += 1.0
    if Q2:
        Wf = W.reshape(Q2, -1)
        if Wf.shape[1]:
            S = blas.dsyrk(-1.0, Wf.T, beta=1.0, c=S, trans=1, lower=1, overwrite_c=1)
        L2, info = lapack.dpotrf(S, lower=1, clean=1, overwrite_a=1)
        if info != 0:
            raise FloatingPointError(f"Schur complement not positive definite (info={info})")
    else:
        L2 = np.zeros((0, 0), order="F")
    return _Chol(Ts=Ts, s2=s2, L1=L1, L1inv=L1inv, W=W, L2=L2)


def _trsv(L2, x, trans: int):
    if L2.shape[0] == 0:
        return x.copy()
    out, info = lapack.dtrtrs(L2, x, lower=1, trans=trans)
    return out


def _solve(st: CrossedStats, F: _Chol, u):
    """a = A^-1 u and y = L^-1 u (internal order); returns (a, |y|^2)."""
    Q1 = st.Q1
    Q2 = st.Q2
    u1, u2 = u[:Q1].reshape(-1, F.L1.shape[-1], *u.shape[1:]), u[Q1:]
    y1 = np.einsum("Jab,Jb...->Ja...", F.L1inv, u1)
    Wf = F.W.reshape(Q2, -1)
    y2 = _trsv(F.L2, u2 - Wf @ y1.reshape(Q1, *u.shape[1:]), 0)
    quad = float(np.sum(y1 * y1) + np.sum(y2 * y2))
    a2 = _trsv(F.L2, y2, 1)
    t1 = (y1.reshape(Q1, *u.shape[1:]) - Wf.T @ a2).reshape(y1.shape)
    a1 = np.einsum("Jba,Jb...->Ja...", F.L1inv, t1)
    return np.concatenate([a1.reshape(Q1, *u.shape[1:]), a2]), quad


def _lam_full(st: CrossedStats, Ts, x, transpose: bool):
    """Lambda x or Lambda' x for an internal-order vector x (Q,)."""
    Q1 = st.Q1
    out = np.empty_like(x)
    if Q1:
        k1 = st.order[0]
        T = Ts[k1].T if transpose else Ts[k1]
        out[:Q1] = (x[:Q1].reshape(-1, st.q[k1]) @ T.T).reshape(-1)
    out[Q1:] = _lmul(st, Ts, x[Q1:, None], transpose)[:, 0]
    return out


def _Cmul(st: CrossedStats, x):
    """C x = Z'Z x from the statistics (internal order)."""
    Q1 = st.Q1
    x1, x2 = x[:Q1], x[Q1:]
    out = np.empty_like(x)
    if Q1:
        q1 = st.D1.shape[-1]
        out[:Q1] = np.matmul(st.D1, x1.reshape(-1, q1, 1)).reshape(-1) + st.B.T @ x2
    out[Q1:] = st.E @ x2 + (st.B @ x1 if Q1 else 0.0)
    return out


def crossed_logp(st: CrossedStats, b, sds, Ccs, sigma, grad: bool = False):
    """Marginal log-density log N(y | X b, sigma^2 I + Z Lambda Lambda' Z') and its gradient.

    Parameters
    ----------
    st : CrossedStats
    b : (p,) ; sds : per factor (q_k,) ; Ccs : per factor (q_k, q_k) lower Cholesky factors of the
        term correlations ; sigma : residual SD.
    grad : also return the gradient.

    Returns
    -------
    lp : float, or ``(lp, d/db (p,), [d/dsd_k (q_k,)], [d/dC_k (q_k, q_k)], d/dsigma)`` with grad.
    ``d/dC_k`` is the full q_k x q_k array (entries outside the lower triangle / correlation blocks
    are the derivative had they been free; the caller's graph keeps the ones that are).
    """
    b = np.asarray(b, dtype=float)
    F = _factor(st, sds, Ccs, sigma)
    s2 = F.s2
    d = b - st.b0
    Xr = st.Xte - st.XtX @ d
    rr = st.ete - d @ (st.Xte + Xr)
    c = st.Zte - st.ZtX @ d
    u = _lam_full(st, F.Ts, c, transpose=True)
    a, quad = _solve(st, F, u)
    logdet = 2.0 * np.sum(np.log(np.diagonal(F.L1, axis1=1, axis2=2))) + 2.0 * np.sum(np.log(np.diag(F.L2)))
    lp = -0.5 * (st.n * (LOG_2PI + np.log(s2)) + logdet + (rr - quad / s2) / s2)
    if not grad:
        return float(lp)
    Cs = [np.asarray(C, dtype=float) for C in Ccs]
    return (float(lp),) + _gradient(st, F, sds, Cs, Xr, rr, c, u, a)


def _selected_inverse(st: CrossedStats, F: _Chol):
    """P = A^-1 where the gradient needs it: diagonal blocks P11_j, P21 (Q2, J1, q1), P22 = S^-1."""
    Q2 = st.Q2
    if Q2:
        X, info = lapack.dpotri(F.L2, lower=1)
        Sinv = np.tril(X) + np.tril(X, -1).T
    else:
        Sinv = np.zeros((0, 0))
    if not st.n_elim:
        return None, None, Sinv
    J1, q1 = F.L1.shape[0], F.L1.shape[-1]
    M = (Sinv @ F.W.reshape(Q2, -1)).reshape(Q2, J1, q1)
    P21 = -np.einsum("iJa,Jab->iJb", M, F.L1inv)
    inner = np.einsum("iJa,iJb->Jab", F.W, M)
    inner[:, np.arange(q1), np.arange(q1)] += 1.0
    P11 = np.matmul(np.matmul(F.L1inv.transpose(0, 2, 1), inner), F.L1inv)
    return P11, P21, Sinv


def _gradient(st: CrossedStats, F: _Chol, sds, Cs, Xr, rr, c, u, a):
    s2, Ts = F.s2, F.Ts
    Q1, Q2 = st.Q1, st.Q2
    v = _lam_full(st, Ts, a, transpose=False)
    Cv = _Cmul(st, v)
    g = (c - Cv / s2) / s2                               # Z'V^-1 r
    gb = (Xr - st.ZtX.T @ v / s2) / s2
    P11, P21, Sinv = _selected_inverse(st, F)
    # diagonal blocks of C Lambda P, per factor (J_k, q_k, q_k)
    CLP = _diag_blocks(st, _rmul(st, Ts, st.E), Sinv)
    trP = float(np.trace(Sinv))
    if st.n_elim:
        k1 = st.order[0]
        T1, J1, q1 = Ts[k1], st.J[k1], st.q[k1]
        B3 = st.B.reshape(Q2, J1, q1)
        L2P21 = _lmul(st, Ts, P21, transpose=False)                     # Lambda_2 P21
        CLP1 = np.matmul(np.matmul(st.D1, T1), P11) + np.einsum("iJa,iJb->Jab", B3, L2P21)
        extra = _diag_blocks(st, np.matmul(B3, T1).reshape(Q2, -1), P21.reshape(Q2, -1))
        for k in extra:
            CLP[k] = CLP[k] + extra[k]
        CLP[k1] = CLP1
        trP += float(np.trace(P11, axis1=1, axis2=2).sum())
    offs = st.offsets()
    gsds, gCs = [], []
    for k in range(st.K):
        s, Jk, qk = offs[k], st.J[k], st.q[k]
        gk = g[s:s + Jk * qk].reshape(Jk, qk)
        ak = a[s:s + Jk * qk].reshape(Jk, qk)
        G = (gk.T @ ak - CLP[k].sum(axis=0)) / s2                     # d/dT_k, T_k = diag(sd_k) C_k
        gsds.append((G * Cs[k]).sum(axis=1))
        gCs.append(G * np.asarray(sds[k], dtype=float)[:, None])
    ua = float(u @ a)
    aa = float(a @ a)
    gs2 = -0.5 * ((st.n - st.Q + trP) / s2 - rr / s2 ** 2 + (ua + aa) / s2 ** 3)
    return gb, gsds, gCs, 2.0 * np.sqrt(s2) * gs2


# --------------------------------------------------------------------------------------------
# Conditional draws of the group effects
# --------------------------------------------------------------------------------------------
def _split(st: CrossedStats, x):
    """Internal-order (Q, ...) -> per factor (caller order) arrays (J_k, q_k, ...)."""
    offs = st.offsets()
    return [x[offs[k]:offs[k] + st.J[k] * st.q[k]].reshape(st.J[k], st.q[k], *x.shape[1:])
            for k in range(st.K)]


def _back(st: CrossedStats, F: _Chol, eps):
    """L^-T eps for eps (Q, m) in the internal order (a draw from N(0, A^-1) per column)."""
    Q1, Q2 = st.Q1, st.Q2
    x2 = _trsv(F.L2, eps[Q1:], 1)
    if not Q1:
        return x2
    q1 = F.L1.shape[-1]
    t1 = (eps[:Q1] - F.W.reshape(Q2, -1).T @ x2).reshape(-1, q1, eps.shape[1])
    x1 = np.einsum("Jba,Jbm->Jam", F.L1inv, t1).reshape(Q1, eps.shape[1])
    return np.concatenate([x1, x2])


def _posterior_z(st: CrossedStats, b, sds, Ccs, sigma):
    F = _factor(st, sds, Ccs, sigma)
    d = np.asarray(b, dtype=float) - st.b0
    u = _lam_full(st, F.Ts, st.Zte - st.ZtX @ d, transpose=True)
    a, _ = _solve(st, F, u)
    return F, a / F.s2


def conditional_effects(st: CrossedStats, b, sds, Ccs, sigma, eps=None) -> list[np.ndarray]:
    """Group effects from their exact conditional gamma | y, b, sd, C, sigma (one solve per draw).

    Parameters
    ----------
    eps : None for the conditional mean, or standard normals of shape (Q,) or (Q, m) for m draws.

    Returns
    -------
    list over factors (caller order) of arrays (J_k, q_k) or (J_k, q_k, m).
    """
    F, zbar = _posterior_z(st, b, sds, Ccs, sigma)
    z = zbar if eps is None else zbar[:, None] + _back(st, F, np.asarray(eps, float).reshape(st.Q, -1))
    if eps is not None and np.ndim(eps) == 1:
        z = z[:, 0]
    parts = _split(st, z)
    return [np.einsum("ab,jb...->ja...", F.Ts[k], parts[k]) for k in range(st.K)]


def conditional_moments(st: CrossedStats, b, sds, Ccs, sigma) -> tuple[np.ndarray, np.ndarray]:
    """Exact mean (Q,) and covariance (Q, Q) of all group effects, factors in caller order.

    Dense (Q x Q): for checks on small designs.
    """
    F, zbar = _posterior_z(st, b, sds, Ccs, sigma)
    X = _back(st, F, np.eye(st.Q))                                   # L^-T, internal order
    offs = st.offsets()
    perm = np.concatenate([np.arange(offs[k], offs[k] + st.J[k] * st.q[k]) for k in range(st.K)])
    lam = np.zeros((st.Q, st.Q))
    for k in range(st.K):
        s, Jk, qk = offs[k], st.J[k], st.q[k]
        for j in range(Jk):
            lam[s + j * qk:s + (j + 1) * qk, s + j * qk:s + (j + 1) * qk] = F.Ts[k]
    LX = lam @ X
    return (lam @ zbar)[perm], (LX @ LX.T)[np.ix_(perm, perm)]


def draw_effects(st: CrossedStats, b, sds, Ccs, sigma, seed: int) -> list[np.ndarray]:
    """One exact draw of every factor's effects per posterior draw, seeded.

    Parameters
    ----------
    b : (S, p) ; sds : per factor (S, q_k) ; Ccs : per factor (S, q_k, q_k) ; sigma : (S,)

    Returns
    -------
    list over factors of arrays (S, J_k, q_k).
    """
    S = len(sigma)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 14]))
    out = [np.empty((S, J, q)) for J, q in zip(st.J, st.q)]
    for s in range(S):
        eps = rng.standard_normal(st.Q)
        parts = conditional_effects(st, b[s], [x[s] for x in sds], [x[s] for x in Ccs], sigma[s], eps)
        for k in range(st.K):
            out[k][s] = parts[k]
    return out
