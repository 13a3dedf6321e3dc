"""Random effects with a known covariance (a kinship or genetic relationship matrix K).

The model, for one grouping factor whose levels are the rows of K::

    y = X b + Z u + e,   u ~ N(0, sd_g^2 K),   e ~ N(0, sigma^2 I),

where each row of the data has one level (Z is the n x m incidence, never built: rows carry integer
codes). Marginally y ~ N(X b, sd_g^2 Z K Z' + sigma^2 I).

**The exact fast path (EMMA, Kang et al. 2008; FaST-LMM, Lippert et al. 2011).** Only the k levels
that have data enter the likelihood. With N = diag(rows per level) and Z_o the incidence of those
levels, Z_o N^-1/2 has orthonormal columns, so with M = N^1/2 K_oo N^1/2 = W diag(lam) W'::

    Z K Z' = Q diag(lam) Q',   Q = Z_o N^-1/2 W   (n x k, orthonormal columns).

Q spans the between-level space; its orthogonal complement is the within-level space (y minus its
level means, dimension n - k). Rotating by Q makes the covariance diagonal: Q'y ~ N(Q'X b,
diag(sd_g^2 lam + sigma^2)), and the within part is N(., sigma^2 I) independently. Q'y is
computed as W' (per-level sums / sqrt(n_j)), never with an n x n matrix. So

    log p(y) = -1/2 [n log 2 pi + sum_i log v_i + (n - k) log sigma^2
                     + sum_i (y~_i - X~_i b)^2 / v_i + |y_w - X_w b|^2 / sigma^2],
    v_i = sd_g^2 lam_i + sigma^2,

and, after one eigendecomposition of M (k x k) and one pass over the data, each evaluation of the
log-density and its gradient costs O(k p + p^2), whatever n is (:mod:`.kinship_kernel`). The GWAS
case (one row per level, all levels observed) is M = K: the eigendecomposition of K itself is used
and can be passed in. With equal row counts c per level, M = c K: the same.

**Levels of K without data** stay in u's prior: the likelihood does not involve them, and
:func:`draw_effects` draws them from their exact conditional given the observed levels' effects
(through their kinship with observed relatives: the BLUP of an unphenotyped animal).

Eigenvalues of K (and M) in [-tol max, 0) count as 0: K is PSD up to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import DataError

__all__ = ["KinshipMatrix", "kinship_matrix", "KinshipBasis", "kinship_basis", "KinshipData",
           "rotate", "draw_effects", "heritability"]


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.flags.writeable = False
    return a


def _names(labels, idx, limit: int = 5) -> str:
    shown = ", ".join(str(labels[i]) for i in idx[:limit])
    return shown + (f" and {len(idx) - limit} more" if len(idx) > limit else "")


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KinshipMatrix:
    """A validated kinship matrix: symmetric, PSD, finite, one row and column per level.

    Attributes
    ----------
    factor : str
        The grouping factor it belongs to (used in messages).
    labels : pandas.Index
        Level labels, in the order of the rows of ``values``; unique.
    values : numpy.ndarray
        (m, m) read-only, exactly symmetric (the average of K and K').
    """

    factor: str
    labels: pd.Index
    values: np.ndarray

    @property
    def m(self) -> int:
        return len(self.labels)


def kinship_matrix(K, labels=None, *, factor: str = "group", sym_tol: float = 1e-6,
                   psd_tol: float = 1e-8) -> KinshipMatrix:
    """Check a kinship matrix and return it labelled and symmetrised.

    Parameters
    ----------
    K : pandas.DataFrame, numpy.ndarray or KinshipMatrix
        A DataFrame with index and columns the level labels (the same set; columns are put in the
        index's order), or a square array with ``labels``.
    labels : sequence, optional
        Level labels of the rows of an array ``K``; required for an array, refused with a
        DataFrame (its index is the labels).
    factor : str
        Name of the grouping factor, for messages.
    sym_tol : float
        Largest allowed max|K - K'| relative to max|K|; K is then replaced by (K + K') / 2.
    psd_tol : float
        Smallest allowed eigenvalue is -psd_tol times the largest diagonal element.

    Returns
    -------
    KinshipMatrix

    Raises
    ------
    DataError
        Not square, labels missing, duplicated or mismatched, NaN or infinite entries, not
        symmetric, a non-positive diagonal, or not positive semi-definite. The message names the
        factor and the offending levels.
    """
    if isinstance(K, KinshipMatrix):
        return K
    what = f"kinship matrix for {factor!r}"
    if isinstance(K, pd.DataFrame):
        if labels is not None:
            raise DataError(f"{what}: give either a DataFrame (its index labels the levels) or an "
                            "array with labels, not both.")
        idx = pd.Index(K.index)
        if idx.has_duplicates:
            raise DataError(f"{what} has duplicated row labels: "
                            f"{_names(idx, np.flatnonzero(idx.duplicated()))}. Each level once.")
        cols = pd.Index(K.columns)
        if len(cols) != len(idx) or not cols.sort_values().equals(idx.sort_values()):
            raise DataError(f"{what}: its columns must be the same levels as its index "
                            f"({len(idx)} rows, {len(cols)} columns; the level in row i is also the "
                            "level of column i, in any order).")
        try:
            values = K.loc[:, idx].to_numpy(dtype=float, copy=True)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{what} has non-numeric entries ({exc}).") from None
        labels = idx
    else:
        try:
            values = np.array(K, dtype=float, copy=True)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{what} has non-numeric entries ({exc}).") from None
        if labels is None:
            raise DataError(f"{what}: an array needs labels=[...] (the level of each row), or pass "
                            "a DataFrame with the levels as index and columns.")
        labels = pd.Index(list(labels))
        if labels.has_duplicates:
            raise DataError(f"{what} has duplicated labels: "
                            f"{_names(labels, np.flatnonzero(labels.duplicated()))}. Each level once.")
    if values.ndim != 2 or values.shape[0] != values.shape[1]:
        raise DataError(f"{what} must be square; got shape {values.shape}.")
    m = values.shape[0]
    if len(labels) != m:
        raise DataError(f"{what} has {m} rows but {len(labels)} labels.")
    if m == 0:
        raise DataError(f"{what} is empty.")
    bad = ~np.isfinite(values)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise DataError(f"{what} has {int(bad.sum())} NaN or infinite entries, e.g. at "
                        f"({labels[i]}, {labels[j]}). Fill them (a kinship matrix has no missing "
                        "values: use 0 for unrelated pairs).")
    scale = np.abs(values).max()
    asym = np.abs(values - values.T)
    if asym.max() > sym_tol * max(scale, np.finfo(float).tiny):
        i, j = np.unravel_index(np.argmax(asym), asym.shape)
        raise DataError(f"{what} is not symmetric: max |K - K'| = {asym.max():.3g} at "
                        f"({labels[i]}, {labels[j]}) (K is {scale:.3g} at most). A kinship matrix "
                        "must have K[a, b] == K[b, a]; check that rows and columns are in the same order.")
    values = 0.5 * (values + values.T)
    diag = np.diag(values)
    if (diag <= 0).any():
        idx = np.flatnonzero(diag <= 0)
        raise DataError(f"{what} has a diagonal entry <= 0 for level(s) {_names(labels, idx)}. "
                        "Each level's self-kinship must be positive (1 + its inbreeding coefficient "
                        "for a pedigree relationship matrix).")
    # PSD: a Cholesky factorisation of K + tol*max(diag) I succeeds iff (up to rounding) the
    # smallest eigenvalue is above -tol*max(diag); the eigenvalues are only computed to explain a failure
    shift = psd_tol * diag.max()
    try:
        np.linalg.cholesky(values + shift * np.eye(m))
    except np.linalg.LinAlgError:
        ev, vec = np.linalg.eigh(values)
        j = np.argsort(np.abs(vec[:, 0]))[::-1][:3]
        raise DataError(f"{what} is not positive semi-definite: smallest eigenvalue {ev[0]:.3g} "
                        f"(largest {ev[-1]:.3g}), mostly on levels {_names(labels, j)}. A kinship "
                        "matrix is a covariance matrix: recompute it (e.g. from all markers, or "
                        "blend with the identity: (1 - a) K + a I).") from None
    return KinshipMatrix(factor=str(factor), labels=labels, values=_frozen(values))


# --------------------------------------------------------------------------------------------
# The rotation
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KinshipBasis:
    """The eigenbasis that makes the marginal covariance diagonal (see the module docstring).

    Attributes
    ----------
    kinship : KinshipMatrix
    observed : numpy.ndarray
        (k,) positions in ``kinship.labels`` of the levels with data, in K's order.
    codes : numpy.ndarray
        (n,) for each row, its level's position in ``observed``.
    counts : numpy.ndarray
        (k,) rows per observed level.
    lam : numpy.ndarray
        (k,) eigenvalues of M = N^1/2 K_oo N^1/2 (clipped at 0).
    vectors : numpy.ndarray
        (k, k) its eigenvectors W, columns in the order of ``lam``.
    """

    kinship: KinshipMatrix
    observed: np.ndarray
    codes: np.ndarray
    counts: np.ndarray
    lam: np.ndarray
    vectors: np.ndarray

    @property
    def n(self) -> int:
        return len(self.codes)

    @property
    def k(self) -> int:
        return len(self.observed)

    @property
    def n_within(self) -> int:
        """Dimension of the within-level space (0 with one row per level)."""
        return self.n - self.k

    def level_sums(self, A: np.ndarray) -> np.ndarray:
        """Z_o'A: per observed level, the sum of the rows of ``A`` ((n,) or (n, c))."""
        A = np.asarray(A, dtype=float)
        if self.n_within == 0:                      # one row per level: a permutation
            rows = np.empty(self.k, dtype=np.int64)
            rows[self.codes] = np.arange(self.n)
            return A[rows]
        if A.ndim == 1:
            return np.bincount(self.codes, weights=A, minlength=self.k)
        order = np.argsort(self.codes, kind="stable")
        starts = np.concatenate([[0], np.cumsum(self.counts.astype(np.int64))[:-1]])
        return np.add.reduceat(A[order], starts, axis=0)

    def between(self, A: np.ndarray) -> np.ndarray:
        """Q'A = W' N^-1/2 Z_o'A, the between-level coordinates ((k,) or (k, c))."""
        S = self.level_sums(A)
        S = S / np.sqrt(self.counts).reshape((-1,) + (1,) * (S.ndim - 1))
        return self.vectors.T @ S

    def within(self, A: np.ndarray) -> np.ndarray:
        """A minus its level means ((n,) or (n, c)); zeros with one row per level."""
        A = np.asarray(A, dtype=float)
        means = self.level_sums(A) / self.counts.reshape((-1,) + (1,) * (A.ndim - 1))
        return A - means[self.codes]


def kinship_basis(kinship: KinshipMatrix, levels, *, eigen=None, psd_tol: float = 1e-8) -> KinshipBasis:
    """The rotation for data whose rows have the given levels.

    Parameters
    ----------
    kinship : KinshipMatrix
        From :func:`kinship_matrix`.
    levels : sequence
        (n,) the level label of each row of the data (labels of ``kinship``).
    eigen : tuple (values, vectors), optional
        The eigendecomposition of ``kinship.values`` (K = V diag(values) V', in K's label order),
        used when every level of K has data and all have the same number of rows (then M = c K);
        otherwise ignored. Without it, M is decomposed here (O(k^3)).
    psd_tol : float
        Eigenvalues above -psd_tol * max are clipped to 0.

    Raises
    ------
    DataError
        A level of the data missing from K (the message lists them and says what to do).
    """
    labels = kinship.labels
    levels = pd.Index(levels)
    if len(levels) == 0:
        raise DataError(f"no rows of data for the kinship term of {kinship.factor!r}.")
    pos = labels.get_indexer(levels)
    if (pos < 0).any():
        missing = pd.unique(np.asarray(levels[pos < 0]))
        raise DataError(
            f"kinship matrix for {kinship.factor!r} has no row for {len(missing)} level(s) of "
            f"{kinship.factor!r} in the data: {_names(missing, np.arange(len(missing)))}. Add them "
            "to K (a level with no known relatives: 0 off the diagonal, 1 on it), or drop those rows.")
    present = np.zeros(kinship.m, dtype=bool)
    present[pos] = True
    observed = np.flatnonzero(present)
    remap = np.full(kinship.m, -1, dtype=np.int64)
    remap[observed] = np.arange(len(observed))
    codes = remap[pos]
    counts = np.bincount(codes, minlength=len(observed)).astype(float)
    c = counts[0]
    if eigen is not None and len(observed) == kinship.m and np.all(counts == c):
        values, vectors = (np.asarray(a, dtype=float) for a in eigen)
        if values.shape != (kinship.m,) or vectors.shape != (kinship.m, kinship.m):
            raise DataError(f"eigen for {kinship.factor!r} must be (values (m,), vectors (m, m)) with "
                            f"m = {kinship.m}; got {values.shape} and {vectors.shape}.")
        top = max(values.max(), np.finfo(float).tiny)
        j = np.argmax(values)         # spot check (O(m^2)): the eigenpair with the largest eigenvalue
        if np.abs(kinship.values @ vectors[:, j] - values[j] * vectors[:, j]).max() > 1e-6 * top:
            raise DataError(f"eigen for {kinship.factor!r} is not the eigendecomposition of its "
                            "kinship matrix (in the order of its labels); leave eigen out to compute it.")
        if values.min() < -psd_tol * top * 10:
            raise DataError(f"the eigendecomposition given for {kinship.factor!r} has a negative "
                            f"eigenvalue {values.min():.3g}: it is not that of a PSD kinship matrix.")
        lam = c * values
    else:
        Ko = kinship.values[np.ix_(observed, observed)]
        s = np.sqrt(counts)
        lam, vectors = np.linalg.eigh(s[:, None] * Ko * s[None, :])
    lam = np.clip(lam, 0.0, None)           # K was checked PSD: what is below 0 is rounding
    return KinshipBasis(kinship=kinship, observed=_frozen(observed), codes=_frozen(codes),
                        counts=_frozen(counts), lam=_frozen(lam), vectors=_frozen(vectors))


@dataclass(frozen=True)
class KinshipData:
    """The rotated data: everything the log-density needs (see the module docstring).

    ``lam``, ``yt`` (k,), ``Xt`` (k, p): between-level coordinates; within-level part as sufficient
    statistics: ``n_within`` rows' worth, ``XtX_w`` = X_w'X_w, ``b_w`` a least-squares solution of
    y_w ~ X_w and ``rss_w`` its residual sum of squares, so |y_w - X_w b|^2 = rss_w + (b - b_w)'
    XtX_w (b - b_w) for every b. ``n`` rows in all.
    """

    lam: np.ndarray
    yt: np.ndarray
    Xt: np.ndarray
    n_within: int
    rss_w: float
    b_w: np.ndarray
    XtX_w: np.ndarray
    n: int

    @property
    def p(self) -> int:
        return self.Xt.shape[1]

    def arrays(self) -> list[np.ndarray]:
        """The kernel's data arguments: lam, yt, Xt, n_within, rss_w, b_w, XtX_w, n (float64)."""
        return [np.ascontiguousarray(a, dtype=float) for a in
                (self.lam, self.yt, self.Xt, np.array(float(self.n_within)), np.array(self.rss_w),
                 self.b_w, self.XtX_w, np.array(float(self.n)))]


def rotate(basis: KinshipBasis, y, X) -> KinshipData:
    """Rotate a response and fixed-effect design once (O(n p + k^2 p)).

    Parameters
    ----------
    basis : KinshipBasis
    y : array (n,)
    X : array (n, p)
    """
    y = np.asarray(y, dtype=float)
    X = np.asarray(X, dtype=float)
    if X.ndim == 1:
        X = X[:, None]
    if y.shape != (basis.n,) or X.shape[0] != basis.n:
        raise DataError(f"y has shape {y.shape} and X {X.shape}; both need {basis.n} rows "
                        f"(one per row of the kinship term's levels).")
    if not (np.isfinite(y).all() and np.isfinite(X).all()):
        raise DataError("y and X must be finite for the kinship path (drop or impute missing rows first).")
    p = X.shape[1]
    if basis.n_within > 0:
        yw, Xw = basis.within(y), basis.within(X)
        b_w = np.linalg.lstsq(Xw, yw, rcond=None)[0]
        rss_w = float(np.sum((yw - Xw @ b_w) ** 2))
        XtX_w = Xw.T @ Xw
    else:
        b_w, rss_w, XtX_w = np.zeros(p), 0.0, np.zeros((p, p))
    return KinshipData(lam=basis.lam, yt=_frozen(basis.between(y)), Xt=_frozen(basis.between(X)),
                       n_within=basis.n_within, rss_w=rss_w, b_w=_frozen(b_w),
                       XtX_w=_frozen(XtX_w), n=basis.n)


# --------------------------------------------------------------------------------------------
# Group effects given the parameters
# --------------------------------------------------------------------------------------------
def _unobserved_map(basis: KinshipBasis, psd_tol: float):
    """For levels of K without data: E[u_m | u_o] = A c and a square root R of the conditional
    covariance / sd_g^2, where c = W'N^1/2 u_o are the rotated observed effects."""
    K = basis.kinship.values
    miss = np.setdiff1d(np.arange(basis.kinship.m), basis.observed)
    if len(miss) == 0:
        return miss, np.zeros((0, basis.k)), np.zeros((0, 0))
    # G = N^1/2 M^+ N^1/2 is a generalised inverse of K_oo, so K_mo G u_o is the conditional mean
    # for every u_o in the range of K_oo (where u_o lies), singular K included
    B = (K[np.ix_(miss, basis.observed)] * np.sqrt(basis.counts)[None, :]) @ basis.vectors
    keep = basis.lam > psd_tol * max(basis.lam.max(), np.finfo(float).tiny)
    lam_inv = np.where(keep, 1.0 / np.where(keep, basis.lam, 1.0), 0.0)
    A = B * lam_inv[None, :]
    C = K[np.ix_(miss, miss)] - A @ B.T
    ev, vec = np.linalg.eigh(0.5 * (C + C.T))
    R = vec * np.sqrt(np.clip(ev, 0.0, None))[None, :]
    return miss, A, R


def _effects_from_normals(basis: KinshipBasis, data: KinshipData, b, sd_g, sigma, eps,
                          psd_tol: float = 1e-8) -> np.ndarray:
    """u (S, m) as a linear function of standard normals ``eps`` (S, k + #unobserved levels)."""
    b = np.atleast_2d(np.asarray(b, dtype=float))
    sg2 = np.asarray(sd_g, dtype=float).reshape(-1, 1) ** 2
    se2 = np.asarray(sigma, dtype=float).reshape(-1, 1) ** 2
    z = data.yt[None, :] - b @ data.Xt.T                             # (S, k)
    lam = basis.lam[None, :]
    v = sg2 * lam + se2
    # c_i = (W'N^1/2 u_o)_i: prior N(0, sd_g^2 lam_i), datum z_i = c_i + N(0, sigma^2)
    mean = sg2 * lam * z / v
    sd = np.sqrt(sg2 * lam * se2 / v)
    c = mean + sd * eps[:, :basis.k]
    u = np.empty((c.shape[0], basis.kinship.m))
    u[:, basis.observed] = (c @ basis.vectors.T) / np.sqrt(basis.counts)[None, :]
    miss, A, R = _unobserved_map(basis, psd_tol)
    if len(miss):
        u[:, miss] = c @ A.T + np.sqrt(sg2) * (eps[:, basis.k:] @ R.T)
    return u


def draw_effects(basis: KinshipBasis, data: KinshipData, b, sd_g, sigma, rng=None) -> np.ndarray:
    """One exact draw of the group effects u per parameter draw, from u | y, b, sd_g, sigma.

    In the rotated basis the conditional is diagonal (independent components), so a draw costs
    O(k^2) (the rotation back), plus, for levels of K without data, their Gaussian conditional
    given the observed levels (O(m_u k) per draw after an O(m_u^3) setup).

    Parameters
    ----------
    basis, data : from :func:`kinship_basis` and :func:`rotate`
    b : array (S, p)
    sd_g, sigma : arrays (S,)
    rng : numpy.random.Generator or seed

    Returns
    -------
    numpy.ndarray
        (S, m): one column per level of K, in ``basis.kinship.labels`` order.
    """
    rng = np.random.default_rng(rng)
    S = np.atleast_2d(np.asarray(b)).shape[0]
    eps = rng.standard_normal((S, basis.kinship.m))
    return _effects_from_normals(basis, data, b, sd_g, sigma, eps)


def heritability(sd_g, sigma):
    """h^2 = sd_g^2 / (sd_g^2 + sigma^2), elementwise over draws (arrays or xarray objects).

    This is the ICC of the kinship term. It is the narrow-sense heritability when K is scaled as a
    relationship matrix (mean diagonal about 1, e.g. a GRM or a pedigree A matrix).
    """
    vg = sd_g ** 2
    return vg / (vg + sigma ** 2)
