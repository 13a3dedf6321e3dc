"""The first, cheap pass over a :class:`~bayeslmm.data.Source`: levels, counts and moments.

One map-reduce over the rows collects what the design stage needs before it can build model
matrices chunk by chunk:

- rows, rows complete in every given column, missing values per column and infinite values per
  numeric column (all rows, as :func:`bayeslmm.design.make_design` counts them);
- the pandas dtype each column has once all chunks are put together (an integer column with a missing
  value in any chunk is float64, categorical columns get the union of their chunks' categories);
- the distinct levels of chosen columns and of grouping factors (one or several columns), over the
  **complete rows only** (``make_design`` drops incomplete rows before it encodes levels, so a level
  seen only next to a missing value is not a level, and missing values are never one), sorted and
  labelled by :func:`bayeslmm.design._encode_groups` itself, so the codes are the in-memory codes;
- one example row per level of the chosen columns (a small frame on which formulaic learns every
  categorical level, so a chunk that lacks a level still gets that level's column);
- count, mean and sum of squared deviations of numeric columns over the complete rows, combined
  across chunks with the pairwise update of Chan, Golub & LeVeque (1979), which is exact in exact
  arithmetic and does not lose digits to ``sum(x^2) - n mean^2`` cancellation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .data import Source, as_source
from .design import _encode_groups

__all__ = ["Moments", "moments_of", "combine_moments", "GroupLevels", "FirstPass", "first_pass"]


# --------------------------------------------------------------------------------------------
# Streaming moments
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Moments:
    """Count, mean and sum of squared deviations (``m2``) of k columns over the same n rows.

    ``var`` uses ``ddof=1`` (as :func:`numpy.std` with ``ddof=1``); ``min`` and ``max`` are exact.
    """

    n: int
    mean: np.ndarray
    m2: np.ndarray
    min: np.ndarray
    max: np.ndarray

    @property
    def var(self) -> np.ndarray:
        return self.m2 / (self.n - 1) if self.n > 1 else np.zeros_like(self.m2)

    @property
    def sd(self) -> np.ndarray:
        return np.sqrt(self.var)


def moments_of(x: np.ndarray) -> Moments:
    """Moments of the columns of ``x`` (n, k), two-pass within the chunk."""
    x = np.asarray(x, dtype=float)
    if x.ndim == 1:
        x = x[:, None]
    x = np.asfortranarray(x)           # column reductions over a C-ordered (n, 2) array are 10x slower
    n, k = x.shape
    if n == 0:
        return Moments(0, np.zeros(k), np.zeros(k), np.full(k, np.inf), np.full(k, -np.inf))
    with np.errstate(invalid="ignore"):        # inf in a column: the design refuses it after the pass
        mean = x.mean(axis=0)
        return Moments(n, mean, ((x - mean) ** 2).sum(axis=0), x.min(axis=0), x.max(axis=0))


def combine_moments(a: Moments, b: Moments) -> Moments:
    """Pairwise (Chan et al.) update: the moments of the rows of ``a`` and ``b`` together."""
    if b.n == 0:
        return a
    if a.n == 0:
        return b
    n = a.n + b.n
    with np.errstate(invalid="ignore"):
        delta = b.mean - a.mean
        mean = a.mean + delta * (b.n / n)
        m2 = a.m2 + b.m2 + delta ** 2 * (a.n * b.n / n)
    return Moments(n, mean, m2, np.minimum(a.min, b.min), np.maximum(a.max, b.max))


# --------------------------------------------------------------------------------------------
# The result
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GroupLevels:
    """The observed levels of one grouping factor, in ``make_design``'s code order.

    ``values`` has one row per level (its columns are the factor's columns); ``labels`` are the level
    names (``"a:b"`` joined for several columns). :meth:`codes` maps rows of a chunk to level codes.
    """

    columns: tuple[str, ...]
    values: pd.DataFrame = field(repr=False)
    labels: tuple[str, ...]

    @property
    def n_levels(self) -> int:
        return len(self.labels)

    def index(self) -> pd.Index:
        """An index to look codes up in (``get_indexer``)."""
        if len(self.columns) == 1:
            return pd.Index(self.values[self.columns[0]])
        return pd.MultiIndex.from_frame(self.values)

    def codes(self, chunk: pd.DataFrame, index: pd.Index | None = None) -> np.ndarray:
        """Level code of each row of ``chunk`` (-1 for a combination that is not a level)."""
        index = self.index() if index is None else index
        if len(self.columns) == 1:
            return index.get_indexer(chunk[self.columns[0]]).astype(np.int64)
        return index.get_indexer(pd.MultiIndex.from_frame(chunk[list(self.columns)])).astype(np.int64)


@dataclass(frozen=True)
class FirstPass:
    """What one cheap pass learns about the used columns (see the module docstring).

    Attributes
    ----------
    columns : tuple of str
    n_rows : int
        All rows.
    n_complete : int
        Rows with no missing value in any of ``columns`` (the rows a design keeps).
    missing, infinite : dict
        Per column counts over all rows (``infinite`` for numeric columns only).
    dtypes : dict
        The column dtypes of all chunks put together.
    moments : dict of str -> Moments
        Numeric (non-boolean) columns over the complete rows, each as a one-column :class:`Moments`.
    levels : dict of str -> tuple
        Distinct values of the ``levels_of`` columns over the complete rows, in design order.
    groups : dict of str -> GroupLevels
        Each grouping factor by its name (columns joined by ``:``).
    examples : DataFrame
        Complete rows: one per level of each ``levels_of`` column (at least one row when any row is
        complete), with the unified dtypes.
    """

    columns: tuple[str, ...]
    n_rows: int
    n_complete: int
    missing: dict
    infinite: dict
    dtypes: dict = field(repr=False)
    moments: dict = field(repr=False)
    levels: dict = field(repr=False)
    groups: dict = field(repr=False)
    examples: pd.DataFrame = field(repr=False)

    @property
    def n_dropped(self) -> int:
        return self.n_rows - self.n_complete


# --------------------------------------------------------------------------------------------
# The pass: map, combine, finish
# --------------------------------------------------------------------------------------------
def _is_numeric(dtype) -> bool:
    return pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)


def _plain(frame: pd.DataFrame) -> pd.DataFrame:
    """Categorical columns as their values (chunks may disagree on categories; restored at the end)."""
    casts = {c: t.categories.dtype for c, t in frame.dtypes.items() if isinstance(t, pd.CategoricalDtype)}
    return frame.astype(casts) if casts else frame


@dataclass(frozen=True)
class _Partial:
    n_rows: int
    n_complete: int
    missing: np.ndarray
    infinite: np.ndarray
    dtypes: tuple            # per column: tuple of distinct dtypes seen
    categories: tuple        # per column: list of categories (categorical columns) or None
    moments: Moments
    levels: tuple            # per levels_of column: Series of distinct values
    groups: tuple            # per factor: DataFrame of distinct combinations
    examples: tuple          # per levels_of column: one complete row per value
    first: pd.DataFrame      # one complete row (or empty)


def _map(chunk: pd.DataFrame, columns, numeric, levels_of, groups) -> _Partial:
    frame = chunk[list(columns)]
    na = frame.isna()
    complete = ~na.any(axis=1).to_numpy()
    kept = frame if complete.all() else frame.loc[complete]
    infinite = np.array([int(np.isinf(frame[c].to_numpy(dtype=float, na_value=np.nan)).sum()) if c in numeric
                         else 0 for c in columns])
    cats = tuple(list(frame[c].cat.categories) if isinstance(frame[c].dtype, pd.CategoricalDtype) else None
                 for c in columns)
    plain = _plain(kept)
    return _Partial(
        n_rows=len(frame), n_complete=int(complete.sum()), missing=na.sum().to_numpy(dtype=np.int64),
        infinite=infinite, dtypes=tuple((frame[c].dtype,) for c in columns), categories=cats,
        moments=_column_moments(kept, numeric),
        levels=tuple(plain[c].drop_duplicates() for c in levels_of),
        groups=tuple(plain[list(g)].drop_duplicates() for g in groups),
        examples=tuple(plain.drop_duplicates(subset=[c]) for c in levels_of),
        first=plain.iloc[:1])


def _column_moments(frame: pd.DataFrame, cols) -> Moments:
    x = np.empty((len(frame), len(cols)), order="F")
    for k, c in enumerate(cols):
        x[:, k] = frame[c].to_numpy(dtype=float)
    return moments_of(x)


def _union(a: list | None, b: list | None) -> list | None:
    if a is None or b is None:
        return a if b is None else b
    seen = set(a)
    return a + [x for x in b if x not in seen]


def _combine(a: _Partial, b: _Partial) -> _Partial:
    def cat(x, y, **kw):
        return pd.concat([x, y], ignore_index=True).drop_duplicates(**kw)
    return _Partial(
        n_rows=a.n_rows + b.n_rows, n_complete=a.n_complete + b.n_complete, missing=a.missing + b.missing,
        infinite=a.infinite + b.infinite,
        dtypes=tuple(tuple(dict.fromkeys(x + y)) for x, y in zip(a.dtypes, b.dtypes)),
        categories=tuple(_union(x, y) for x, y in zip(a.categories, b.categories)),
        moments=combine_moments(a.moments, b.moments),
        levels=tuple(cat(x, y) for x, y in zip(a.levels, b.levels)),
        groups=tuple(cat(x, y) for x, y in zip(a.groups, b.groups)),
        examples=tuple(cat(x, y, subset=[lev.name]) for x, y, lev in zip(a.examples, b.examples, a.levels)),
        first=a.first if len(a.first) else b.first)


def _unify(dtypes: tuple, categories: list | None):
    """The dtype of a column whose chunks had ``dtypes`` once the chunks are put together."""
    if categories is not None:
        ordered = any(isinstance(d, pd.CategoricalDtype) and d.ordered for d in dtypes)
        return pd.CategoricalDtype(pd.Index(categories), ordered=ordered)
    if len(dtypes) == 1:
        return dtypes[0]
    return pd.concat([pd.Series([], dtype=d) for d in dtypes]).dtype


def _cast(frame: pd.DataFrame, dtypes: dict) -> pd.DataFrame:
    return frame.astype({c: dtypes[c] for c in frame.columns if frame[c].dtype != dtypes[c]})


def first_pass(data, columns=None, *, levels_of=(), groups=(), moments_for=None, scheduler=None) -> FirstPass:
    """One pass over ``data``: counts, dtypes, levels and moments (see the module docstring).

    Parameters
    ----------
    data : Source or anything :func:`bayeslmm.data.as_source` accepts
    columns : sequence of str, optional
        The used columns (default: all of the source's). Completeness is over all of them.
    levels_of : sequence of str
        Columns whose distinct values (and one example row per value) to collect.
    groups : sequence of sequence of str
        Grouping factors, each given by its columns (``("school", "class")`` for ``school:class``).
    moments_for : sequence of str, optional
        Numeric columns whose moments to stream (default: every numeric, non-boolean column).
    scheduler : optional
        Passed to :meth:`Source.map_reduce` (Dask only).

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"y": [1.0, 2.0, None, 4.0], "g": ["b", "a", "c", "b"]})
    >>> fp = first_pass(df, groups=[("g",)])
    >>> fp.n_rows, fp.n_complete, fp.missing, fp.groups["g"].labels
    (4, 3, {'y': 1, 'g': 0}, ('a', 'b'))
    >>> float(fp.moments["y"].mean[0]), float(fp.moments["y"].var[0])
    (2.3333333333333335, 2.333333333333333)
    """
    src = as_source(data) if not isinstance(data, Source) else data
    columns = tuple(src.columns if columns is None else dict.fromkeys(columns))
    groups = tuple(tuple(g) for g in groups)
    levels_of = tuple(dict.fromkeys(levels_of))
    src = src.select(tuple(dict.fromkeys(columns + tuple(c for g in groups for c in g) + levels_of)))
    columns = src.columns
    declared = src.dtypes
    numeric = tuple(c for c in columns if _is_numeric(declared[c]) and (moments_for is None or c in moments_for))

    def map_fn(chunk):
        return _map(chunk, columns, numeric, levels_of, groups)

    p = src.map_reduce(map_fn, _combine, scheduler=scheduler)
    dtypes = {c: _unify(d, cats) for c, d, cats in zip(columns, p.dtypes, p.categories)}
    dtypes.update(dict(src.categoricals))
    m = p.moments
    moments = {c: Moments(m.n, m.mean[[k]], m.m2[[k]], m.min[[k]], m.max[[k]]) for k, c in enumerate(numeric)}

    levels = {}
    for c, vals in zip(levels_of, p.levels):
        frame, _ = _in_code_order(_cast(vals.to_frame(), dtypes), (c,))
        levels[c] = tuple(frame[c])
    glev = {}
    for g, vals in zip(groups, p.groups):
        frame, labels = _in_code_order(_cast(vals, dtypes), g)
        glev[":".join(g)] = GroupLevels(g, frame, labels)
    parts = [e for e in p.examples if len(e)] or [p.first]
    examples = _cast(pd.concat(parts, ignore_index=True), dtypes) if parts else p.first
    return FirstPass(columns=columns, n_rows=p.n_rows, n_complete=p.n_complete,
                     missing={c: int(k) for c, k in zip(columns, p.missing)},
                     infinite={c: int(k) for c, k in zip(columns, p.infinite) if c in numeric},
                     dtypes=dtypes, moments=moments, levels=levels, groups=glev, examples=examples)


def _in_code_order(frame: pd.DataFrame, cols: tuple[str, ...]) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """The distinct rows of ``frame`` sorted into the code order of ``_encode_groups``, and the labels."""
    frame = frame.reset_index(drop=True)
    codes, labels = _encode_groups(frame, cols)
    order = np.empty(len(codes), dtype=np.int64)
    order[codes] = np.arange(len(codes))
    return frame.iloc[order].reset_index(drop=True)[list(cols)], labels
