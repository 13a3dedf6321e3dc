"""The collapsed Gaussian path's sufficient statistics as one map-reduce over chunks of rows.

:func:`bayeslmm.marginal.marginal_stats` computes, from a whole :class:`~bayeslmm.design.Design`,
per-node sums (Z'Z, Z'Z with each ancestor, Z'X, Z'e) and per top-level group sums (X'X, X'e, e'e,
row counts), with e = y - X b0 the residuals of the least-squares fit b0. Here the same arrays come
from chunks: :func:`partial_stats` is a pure function of one chunk's arrays, :func:`combine_stats`
adds two partials, :func:`finish_stats` turns the total into a ``MarginalStats``. With the first pass
(:func:`bayeslmm.chunked_design.plan_design`) that is two passes over the data in all.

**One pass for b0 and the sums.** b0 is not known while the chunks are read, so each partial keeps
its sums around its own centre c (the chunk's least-squares fit) together with the R factor of the
QR decomposition of [X | y - X c]. Moving a partial to another centre c + d is exact algebra,

    e' = e - X d:   Z'e' = Z'e - (Z'X) d,   X'e' = X'e - (X'X) d,   e''e' = e'e - 2 d'X'e + d'X'X d,
    and R becomes R [[I, -d], [0, 1]] (still upper triangular).

:func:`combine_stats` stacks the two R factors (the TSQR reduction of Demmel et al. 2012), solves
for the least-squares fit of the union of their rows, and moves both partials there; the last
combine therefore ends at the least-squares fit of all rows, b0, with the accuracy of a QR solve.
Cancellation in the moves is bounded: both centres fit the rows being moved (a chunk's own fit, or
a fit of a superset of its rows), so X d on those rows is of the order of their residuals.

The chunk partials also carry streaming moments (Chan et al.) of y and of every X and Z column, which
the default priors and the centring of the fixed effects need, min/max for the constant-column
checks, and R for the rank check, so the checks of ``make_design`` run without the rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .chunked_design import ChunkedDesign, chunk_arrays, plan_design
from .data import Source, as_source
from .errors import DataError, SpecError
from .firstpass import Moments, combine_moments, moments_of

__all__ = ["PartialStats", "partial_stats", "combine_stats", "finish_stats", "StatsPass", "stats_pass",
           "chunked_stats"]


@dataclass(frozen=True)
class PartialStats:
    """Sufficient statistics of some rows around ``center`` (levels in chain order, 0 = top).

    ``anc[l][m]`` is the level-m ancestor of each level-l node (-1 where no row of the node was
    seen yet) and ``clash[l][m]`` says whether a node was seen under two level-m nodes (the
    factors are then crossed, not nested). The other arrays are those of ``MarginalStats``.
    """

    n: int
    center: np.ndarray
    R: np.ndarray
    ZtZ: tuple
    ZtZa: tuple
    ZtX: tuple
    Zte: tuple
    XtX: np.ndarray
    Xte: np.ndarray
    ete: np.ndarray
    n_obs: np.ndarray
    anc: tuple
    clash: tuple
    y_moments: Moments
    X_moments: Moments
    Z_moments: tuple


def _qr_r(A: np.ndarray) -> np.ndarray:
    k = A.shape[1]
    R = np.linalg.qr(A, mode="r") if A.shape[0] else np.zeros((0, k))
    return np.vstack([R, np.zeros((k - R.shape[0], k))]) if R.shape[0] < k else R


def _solve_r(R: np.ndarray) -> np.ndarray:
    """Least-squares coefficients from the R factor of [X | e] (minimum norm if X lacks rank)."""
    p = R.shape[1] - 1
    return np.linalg.lstsq(R[:p, :p], R[:p, p], rcond=None)[0] if p else np.zeros(0)


class _PairSums:
    """Per-group sums of products of columns, each distinct product computed once.

    Equal columns (the intercept of X and of Z, a slope that is both fixed and random) share one
    id, and products with an all-ones column are plain group sums, so ``y ~ x + (1 + x | g)`` needs
    6 ``bincount`` passes instead of 18. The sums are bit-for-bit those of the unshared products.
    """

    def __init__(self, columns: list[np.ndarray]):
        self.reps: list[np.ndarray] = []
        self.ids: list[int] = []
        self.ones: set[int] = set()
        self.cache: dict = {}
        for v in columns:
            k = next((i for i, r in enumerate(self.reps) if np.array_equal(r, v)), None)
            if k is None:
                k = len(self.reps)
                self.reps.append(v)
                if len(v) and v.min() == 1.0 and v.max() == 1.0:
                    self.ones.add(k)
            self.ids.append(k)

    def __call__(self, level: int, codes: np.ndarray, J: int, a: int, b: int) -> np.ndarray:
        ia, ib = sorted((self.ids[a], self.ids[b]))
        key = (level, ia, ib)
        if key not in self.cache:
            if ia in self.ones and ib in self.ones:
                w = None
            elif ia in self.ones or ib in self.ones:
                w = self.reps[ib if ia in self.ones else ia]
            else:
                w = self.reps[ia] * self.reps[ib]
            self.cache[key] = np.bincount(codes, weights=w, minlength=J).astype(float, copy=False)
        return self.cache[key]


def partial_stats(y: np.ndarray, X: np.ndarray, Z: tuple, codes: tuple, J: tuple) -> PartialStats:
    """Statistics of one chunk: a pure function of its arrays (factors in chain order, top first).

    Parameters
    ----------
    y : (n,) response; X : (n, p) fixed-effect columns
    Z : per level l, (n, q_l) random-effect columns
    codes : per level l, (n,) level codes in ``range(J[l])``
    J : per level, the number of levels of the whole data set
    """
    n, p = X.shape
    A = np.empty((n, p + 1), order="F")            # LAPACK's layout: no copy inside qr
    A[:, :p] = X
    A[:, p] = y
    R = _qr_r(A)
    c = _solve_r(R)
    R[:, p] -= R[:, :p] @ c
    e = np.array(y, dtype=float)                   # y - X c, column by column (no BLAS call for p ~ 2)
    for j in range(p):
        e -= X[:, j] * c[j]
    # column ids: X 0..p-1, then each level's Z columns, then e
    zstart = np.cumsum([p] + [Zl.shape[1] for Zl in Z]).tolist()
    ie = zstart[-1]
    S = _PairSums([X[:, j] for j in range(p)] + [Zl[:, i] for Zl in Z for i in range(Zl.shape[1])] + [e])
    top, J0 = codes[0], J[0]
    anc, clash, ZtZ, ZtZa, ZtX, Zte = [], [], [], [], [], []
    for l, (Zl, g) in enumerate(zip(Z, codes)):
        q, z0 = Zl.shape[1], zstart[l]
        a, cl = [], []
        for m in range(l):
            idx = np.full(J[l], -1, dtype=np.int64)
            idx[g] = codes[m]
            a.append(idx)
            cl.append(bool(np.any(idx[g] != codes[m])))
        anc.append(tuple(a))
        clash.append(tuple(cl))
        zz = np.empty((J[l], q, q))
        for i in range(q):
            for j in range(i, q):
                zz[:, i, j] = zz[:, j, i] = S(l, g, J[l], z0 + i, z0 + j)
        ZtZ.append(zz)
        za = []
        for m in range(l):
            qm = Z[m].shape[1]
            za.append(np.stack([np.stack([S(l, g, J[l], z0 + i, zstart[m] + j) for j in range(qm)], axis=1)
                                for i in range(q)], axis=1).reshape(J[l], q, qm))
        ZtZa.append(tuple(za))
        zx = np.empty((J[l], q, p))
        for i in range(q):
            for j in range(p):
                zx[:, i, j] = S(l, g, J[l], z0 + i, j)
        ZtX.append(zx)
        Zte.append(np.stack([S(l, g, J[l], z0 + i, ie) for i in range(q)], axis=1).reshape(J[l], q))
    XtX = np.empty((J0, p, p))
    for i in range(p):
        for j in range(i, p):
            XtX[:, i, j] = XtX[:, j, i] = S(0, top, J0, i, j)
    Xte = np.stack([S(0, top, J0, i, ie) for i in range(p)], axis=1) if p else np.zeros((J0, 0))
    return PartialStats(n=n, center=c, R=R, ZtZ=tuple(ZtZ), ZtZa=tuple(ZtZa), ZtX=tuple(ZtX), Zte=tuple(Zte),
                        XtX=XtX, Xte=Xte, ete=S(0, top, J0, ie, ie),
                        n_obs=np.bincount(top, minlength=J0).astype(float), anc=tuple(anc), clash=tuple(clash),
                        y_moments=moments_of(y), X_moments=moments_of(X),
                        Z_moments=tuple(moments_of(Zl) for Zl in Z))


def _move(s: PartialStats, d: np.ndarray) -> dict:
    """The e-dependent sums of ``s`` around ``s.center + d`` (e' = e - X d)."""
    if not d.size or not np.any(d):
        return {"Zte": s.Zte, "Xte": s.Xte, "ete": s.ete}
    return {"Zte": tuple(z - zx @ d for z, zx in zip(s.Zte, s.ZtX)),
            "Xte": s.Xte - s.XtX @ d,
            "ete": s.ete - 2.0 * (s.Xte @ d) + np.einsum("jab,a,b->j", s.XtX, d, d)}


def _shift_r(R: np.ndarray, d: np.ndarray) -> np.ndarray:
    p = R.shape[1] - 1
    out = R.copy()
    out[:, p] -= R[:, :p] @ d
    return out


def _merge_anc(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, bool]:
    both = (a >= 0) & (b >= 0)
    return np.where(a >= 0, a, b), bool(np.any(a[both] != b[both]))


def combine_stats(a: PartialStats, b: PartialStats) -> PartialStats:
    """The statistics of the rows of ``a`` and ``b`` together, around their joint least-squares fit."""
    if b.n == 0:
        return a
    if a.n == 0:
        return b
    R = _qr_r(np.vstack([a.R, _shift_r(b.R, a.center - b.center)]))
    delta = _solve_r(R)
    center = a.center + delta
    R = _shift_r(R, delta)
    ma, mb = _move(a, center - a.center), _move(b, center - b.center)
    anc, clash = [], []
    for l in range(len(a.anc)):
        merged = [_merge_anc(x, y) for x, y in zip(a.anc[l], b.anc[l])]
        anc.append(tuple(m for m, _ in merged))
        clash.append(tuple(ca or cb or cm for (_, cm), ca, cb in zip(merged, a.clash[l], b.clash[l])))
    return PartialStats(
        n=a.n + b.n, center=center, R=R,
        ZtZ=tuple(x + y for x, y in zip(a.ZtZ, b.ZtZ)),
        ZtZa=tuple(tuple(x + y for x, y in zip(xs, ys)) for xs, ys in zip(a.ZtZa, b.ZtZa)),
        ZtX=tuple(x + y for x, y in zip(a.ZtX, b.ZtX)),
        Zte=tuple(x + y for x, y in zip(ma["Zte"], mb["Zte"])),
        XtX=a.XtX + b.XtX, Xte=ma["Xte"] + mb["Xte"], ete=ma["ete"] + mb["ete"], n_obs=a.n_obs + b.n_obs,
        anc=tuple(anc), clash=tuple(clash), y_moments=combine_moments(a.y_moments, b.y_moments),
        X_moments=combine_moments(a.X_moments, b.X_moments),
        Z_moments=tuple(combine_moments(x, y) for x, y in zip(a.Z_moments, b.Z_moments)))


def _marginal_stats_class():
    from .stats import GroupStats
    return GroupStats


def finish_stats(s: PartialStats, names, q, blocks, correlated):
    """``MarginalStats`` from the combined partial of all rows (chain order, top first).

    Raises
    ------
    SpecError
        The factors are crossed, not nested (the reason of ``stats.nesting_chain``).
    """
    for l in range(1, len(names)):
        if s.clash[l][l - 1]:
            m = next(m for m in range(l) if s.clash[l][m])
            raise SpecError(f"the collapsed path does not apply: crossed factors {names[m]} and {names[l]}: "
                            "falling back to the non-centred graph. Crossed factors need the rows in memory: "
                            "load the data into pandas and fit with method='noncentred'.")
    delta = _solve_r(s.R)              # one refinement step: the centre is already the fit of all rows
    e = _move(s, delta)
    J = tuple(len(z) for z in s.ZtZ)
    anc = s.anc
    for l, al in enumerate(anc):
        for a in al:
            if (a < 0).any():
                raise DataError(f"level {int(np.argmax(a < 0))} of grouping factor {names[l]!r} has no rows in "
                                "the statistics pass; the data changed between the passes")
    n_nodes = tuple(np.bincount(anc[l][0] if l else np.arange(J[0]), minlength=J[0]).astype(float)
                    for l in range(len(J)))
    return _marginal_stats_class()(
        names=tuple(names), q=tuple(q), blocks=tuple(blocks), correlated=tuple(correlated), J=J,
        p=s.XtX.shape[1], b0=s.center + delta, anc=anc, ZtZ=s.ZtZ, ZtZa=s.ZtZa, ZtX=s.ZtX, Zte=e["Zte"],
        XtX=s.XtX, Xte=e["Xte"], ete=e["ete"], n_obs=s.n_obs, n_nodes=n_nodes)


@dataclass(frozen=True)
class StatsPass:
    """The statistics pass: ``MarginalStats`` plus the column moments the priors need.

    ``X_moments`` are over the fixed-effect columns (``design.fixed_terms``), ``Z_moments`` one per
    factor in design order; all over the kept rows. ``X_moments.mean`` is the centring of the fixed
    effects (``marginal._fixed_effects``), ``y_moments`` and the sds scale the default priors.
    """

    design: ChunkedDesign
    stats: object
    y_moments: Moments
    X_moments: Moments
    Z_moments: tuple


def _check(design: ChunkedDesign, s: PartialStats) -> None:
    """The constant/collinear checks of ``make_design``, from min/max and the R factor."""
    xm = s.X_moments
    for j, name in enumerate(design.fixed_terms):
        if name != "Intercept" and xm.min[j] == xm.max[j]:
            raise DataError(f"fixed-effect column {name!r} is constant ({xm.min[j]:g} in every row); "
                            "drop it from the formula, it cannot be estimated beside the intercept.")
    p = design.p
    if p:
        sv = np.linalg.svd(s.R[:p, :p], compute_uv=False)
        rank = int(np.sum(sv > sv.max() * max(s.n, p) * np.finfo(float).eps))
        if rank < p:
            raise DataError(f"the fixed-effect columns {list(design.fixed_terms)} are collinear (rank "
                            f"{rank} < {p}); remove redundant predictors.")
    order = {f.name: l for l, f in enumerate(design.chain)}
    for fac in design.factors:
        zm = s.Z_moments[order[fac.name]]
        for j, name in enumerate(fac.terms):
            if name != "Intercept" and zm.min[j] == zm.max[j]:
                raise DataError(f"random-effect column {name!r} for {fac.name!r} is constant; a random "
                                "slope on it is the same as a random intercept. Remove it.")


def stats_pass(design: ChunkedDesign, data, *, scheduler=None) -> StatsPass:
    """The second pass: map every chunk through :func:`chunk_arrays` and :func:`partial_stats`, fold.

    Parameters
    ----------
    design : ChunkedDesign from :func:`plan_design` on the same data
    data : Source or anything :func:`as_source` accepts
    scheduler : optional, Dask only
    """
    src = data if isinstance(data, Source) else as_source(data)
    src = src.select(design.columns)
    chain = design.chain
    pos = [design.factors.index(f) for f in chain]
    J = tuple(f.n_levels for f in chain)

    def map_fn(chunk):
        a = chunk_arrays(design, chunk)
        return partial_stats(a.y, a.X, tuple(a.Z[k] for k in pos), tuple(a.codes[k] for k in pos), J)

    total = src.map_reduce(map_fn, combine_stats, scheduler=scheduler)
    if total.n != design.n:
        raise DataError(f"the statistics pass kept {total.n} rows, the first pass {design.n}; the data "
                        "changed between the passes")
    _check(design, total)
    stats = finish_stats(total, [f.name for f in chain], [f.q for f in chain], [f.blocks for f in chain],
                         [f.correlated for f in chain])
    zm = {f.name: m for f, m in zip(chain, total.Z_moments)}
    return StatsPass(design, stats, total.y_moments, total.X_moments, tuple(zm[f.name] for f in design.factors))


def chunked_stats(spec, data, *, missing: str = "drop", warn: bool = True, chunk_rows: int | None = None,
                  scheduler=None):
    """``marginal_stats(make_design(spec, data))`` in two passes over chunks, never all rows at once.

    Parameters
    ----------
    spec : ModelSpec
    data : pandas or polars DataFrame, dict of columns, Parquet file/directory/glob, dask DataFrame
    missing, warn : as in :func:`bayeslmm.design.make_design`
    chunk_rows : int, optional
        Rows per chunk for in-memory and Parquet data.
    scheduler : optional
        Dask scheduler (default: the active ``distributed`` client, else Dask's default).

    Returns
    -------
    MarginalStats
        Equal to the in-memory statistics to floating-point accuracy.

    Raises
    ------
    SpecError
        Crossed factors, or no grouping factor (the collapsed path needs a nesting chain).

    Examples
    --------
    >>> import bayeslmm as blmm
    >>> spec = blmm.build_spec("Reaction ~ Days + (Days | Subject)")
    >>> s = chunked_stats(spec, blmm.load_dataset("sleepstudy"), chunk_rows=50)
    >>> s.J, s.q, s.ZtZ[0].shape
    ((18,), (2,), (18, 2, 2))
    """
    if spec.family != "gaussian":
        raise SpecError(f"family {spec.family!r} is not gaussian: sufficient statistics exist for the Gaussian "
                        "likelihood only; load the data into pandas for other families.")
    if not spec.formula.random:
        raise SpecError("the model has no grouping factors; the collapsed path needs at least one")
    src = as_source(data, chunk_rows=chunk_rows) if not isinstance(data, Source) else data
    design = plan_design(spec, src, missing=missing, warn=warn, scheduler=scheduler)
    return stats_pass(design, src, scheduler=scheduler).stats
