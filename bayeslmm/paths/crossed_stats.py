"""Sufficient statistics of a Gaussian LMM with several grouping factors (crossed, nested or both).

Computed once per data set, in numpy, from the integer level codes (``np.bincount``; never a dense
n x J indicator). After this, evaluating the collapsed log-density (:mod:`.crossed_kernel`) does
not touch the n rows. The layout follows the blocked Cholesky factorisation of MixedModels.jl
(Bates, Alday & Kokandakar 2025): the factor with the most effects J_1 q_1 first (its block of
Z'Z is block-diagonal and is eliminated level by level), the other factors after it, held dense.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DataError, SpecError

__all__ = ["Factor", "CrossedStats", "crossed_stats", "MAX_DENSE", "MAX_GRAM"]

# Largest dense block (entries) the statistics may hold: above it the dense Schur complement is too
# big for this path (about 1.6 GB of float64 at the limit, and minutes per gradient).
MAX_DENSE = 200_000_000
# Most entries the level groups' Gram matrices may hold (160 MB of float64).
MAX_GRAM = 20_000_000


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

    **Level groups** (balanced designs): when many levels of the eliminated factor have identical
    Z'Z blocks (every subject sees the same number of items in each condition, say), they share
    their q_1 x q_1 factorisation, and the Schur complement's W W' and the gradient's coupling
    terms become sums over groups of precomputed Gram matrices: ``groups`` (J_1,) is each level's
    group and ``gram`` (N_g, q_1, q_1, Q_2, Q_2) holds Gram_gab = sum_{j in g} B_ja B_jb'. One
    evaluation then costs O(N_g q_1^2 Q_2^2 + Q_2^3) instead of O(Q_2^2 Q_1). Empty (N_g = 0) when
    not used.

    :meth:`layout` and :meth:`dense_blocks` describe this structure as integer arrays, and
    :meth:`kernel_data` packs everything the compiled kernel takes into two flat arrays.
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
    groups: np.ndarray
    gram: np.ndarray

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

    @property
    def flops(self) -> float:
        """Approximate flops of one log-density + gradient (two Q_2^2 Q_1 gemms or, with level
        groups, two passes over the Gram matrices; potrf + potri).

        About 1e8 is ~5 ms on one core (bench/crossed_probe.py); a path chooser can compare it
        with the non-centred graph's O(n) per gradient.
        """
        Q1, Q2 = self.Q1, self.Q2
        q1 = self.q[self.order[0]]
        if self.gram.shape[0]:
            return 4.0 * self.gram.shape[0] * q1 * q1 * Q2 * Q2 + Q2 ** 3 + 8.0 * Q2 * Q1 * q1
        return 4.0 * Q2 * Q2 * Q1 + Q2 ** 3 + 8.0 * Q2 * Q1 * max(self.q) ** 2

    def offsets(self) -> dict[int, int]:
        """Start of each factor (by caller index) in the internal effect order."""
        out, pos = {}, 0
        for k in self.order:
            out[k] = pos
            pos += self.J[k] * self.q[k]
        return out

    def layout(self) -> np.ndarray:
        """``[K, p, n, n_elim, order[0], q_0..q_{K-1}, J_0..J_{K-1}]`` (int64), caller order."""
        return np.array([self.K, self.p, self.n, self.n_elim, self.order[0], *self.q, *self.J], dtype=np.int64)

    def dense_blocks(self) -> np.ndarray:
        """One row ``(start, q, factor)`` per level of each dense-part factor (int64, (n_blocks, 3))."""
        rows = [np.column_stack([s + np.arange(Jk) * qk, np.full(Jk, qk), np.full(Jk, k)])
                for k, s, Jk, qk in self.rest()]
        return np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 3), dtype=np.int64)

    def kernel_data(self) -> list[np.ndarray]:
        """The kernel's data: ``[ints (int64), floats (float64)]``, every statistic packed flat.

        ``ints`` = [K, p, n, n_elim, order[0], q_0.., J_0.., n_blocks, N_g, dense_blocks (flat),
        groups]; ``floats`` = [b0, D1, B, E, ZtX, Zte, XtX, Xte, ete, gram] (each flattened);
        :func:`.crossed_kernel.unpack_data` reads them back as views. Two 1-d arrays instead of
        thirteen of assorted ranks: a sampler such as nutpie compiles the handling of each input's
        array type (tens of seconds for the thirteen, with a cold cache).
        """
        blocks = self.dense_blocks()
        head = [self.K, self.p, self.n, self.n_elim, self.order[0], *self.q, *self.J, len(blocks),
                self.gram.shape[0]]
        ints = np.concatenate([np.array(head, dtype=np.int64), blocks.ravel(), self.groups]).astype(np.int64)
        floats = np.concatenate([self.b0, self.D1.ravel(), self.B.ravel(), self.E.ravel(), self.ZtX.ravel(),
                                 self.Zte, self.XtX.ravel(), self.Xte, [self.ete], self.gram.ravel()])
        floats = np.ascontiguousarray(floats, dtype=np.float64)
        # read-only, as samplers hand them over (nutpie does): numba compiles one specialisation
        ints.flags.writeable = False
        floats.flags.writeable = False
        return [ints, floats]

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


def crossed_stats(y, X, factors, *, eliminate: bool = True, group_levels: bool | None = None) -> CrossedStats:
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
    group_levels : bool or None
        Share the factorisation among eliminated-factor levels with identical Z'Z blocks (see
        :class:`CrossedStats`). None (default) decides by cost: when N_g q_1^2 <= J_1 q_1 / 16
        and the Gram matrices fit in :data:`MAX_GRAM` entries.

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
    groups, gram = _level_groups(D1, B, group_levels)
    return CrossedStats(
        names=names, q=q, J=J, p=p, n=n, order=order, n_elim=n_elim, b0=b0, D1=D1,
        B=np.ascontiguousarray(B), E=E, ZtX=np.concatenate([ZtX[k] for k in order], axis=0),
        Zte=np.concatenate([Zte[k] for k in order]), XtX=X.T @ X, Xte=X.T @ e, ete=float(e @ e),
        groups=groups, gram=gram)


def _level_groups(D1, B, group_levels: bool | None):
    """Levels of the eliminated factor with identical Z'Z blocks, and their Gram matrices."""
    J1, q1 = D1.shape[0], D1.shape[-1]
    Q2 = B.shape[0]
    none = np.zeros(0, dtype=np.int64), np.zeros((0, q1, q1, Q2, Q2))
    if not J1 or not Q2 or group_levels is False:
        return none
    _, groups = np.unique(D1.reshape(J1, -1), axis=0, return_inverse=True)
    groups = groups.reshape(-1).astype(np.int64)
    Ng = int(groups.max()) + 1
    if Ng * q1 * q1 * Q2 * Q2 > MAX_GRAM or (group_levels is None and 16 * Ng * q1 > J1):
        return none
    B3 = B.reshape(Q2, J1, q1)
    gram = np.empty((Ng, q1, q1, Q2, Q2))
    for g in range(Ng):
        Bg = B3[:, groups == g, :]
        for a in range(q1):
            for c in range(q1):
                gram[g, a, c] = Bg[:, :, a] @ Bg[:, :, c].T
    return groups, gram


