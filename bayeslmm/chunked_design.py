"""The design stage without all rows at once: one cheap pass, then model matrices chunk by chunk.

:func:`plan_design` does what :func:`bayeslmm.design.make_design` does, except building the arrays:
it reads the data once (:func:`bayeslmm.firstpass.first_pass`) for the row and missing-value counts,
the dtypes, the levels of every grouping factor and of every column formulaic encodes as categorical,
and one example row per such level. formulaic then learns its model specs on that small example
frame, which holds every observed level (and, for categorical dtypes, the same categories), so the
specs are the ones formulaic would learn on all rows: same columns, same baselines, same names.
:func:`chunk_arrays` applies them to any chunk: a chunk that lacks a level still gets its column.

The result is exactly what ``make_design`` computes on the same rows: the same kept rows (rows with a
missing value in a used column are dropped, with the same note, or raise with ``missing="raise"``),
the same fixed-effect columns, the same level codes (levels are sorted by ``_encode_groups``
itself) and the same errors for bad input. Checks that need every row's model-matrix values
(constant or collinear columns) run after the statistics pass (:mod:`bayeslmm.chunked_stats`).

formulaic transforms that learn a state from the data (``center(x)``, ``scale(x)``, ``poly``,
splines) would learn it from the example rows, so they are refused with a message that says to add
the transformed column to the data. Stateless transforms (``np.log(x)``, ``x:z``, ``C(k)``) work.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .data import Source, as_source
from .design import MISSING_ACTIONS, _baseline_notes, _check_columns, _model_matrix, _required_columns, term_columns
from .errors import DataError, FormulaError
from .firstpass import FirstPass, GroupLevels, first_pass
from .spec import ModelSpec

__all__ = ["FactorPlan", "ChunkedDesign", "ChunkArrays", "plan_design", "chunk_arrays", "needed_columns"]


@dataclass(frozen=True)
class FactorPlan:
    """One grouping factor as :class:`bayeslmm.design.FactorDesign` describes it, without rows."""

    name: str
    levels: GroupLevels = field(repr=False)
    terms: tuple[str, ...]
    blocks: tuple[tuple[int, ...], ...]
    correlated: tuple[bool, ...]
    term_specs: tuple = field(repr=False, default=())
    texts: tuple[str, ...] = ()
    index: pd.Index = field(repr=False, default=None)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.levels.labels

    @property
    def n_levels(self) -> int:
        return self.levels.n_levels

    @property
    def q(self) -> int:
        return len(self.terms)

    @property
    def columns(self) -> tuple[str, ...]:
        return self.levels.columns


@dataclass(frozen=True)
class ChunkedDesign:
    """What ``make_design`` knows about a data set, learnt in one pass; no rows are held.

    Attributes
    ----------
    response : str
    columns : tuple of str
        The used columns, in ``make_design``'s order.
    dtypes : dict
        Their dtypes once all chunks are put together (chunks are cast to these).
    fixed_terms : tuple of str
    fixed_spec : formulaic ModelSpec of the fixed part
    factors : tuple of FactorPlan
        In design order (the order of the random terms).
    n, n_rows, n_dropped : int
        Kept rows, all rows, rows dropped for missing values.
    notes : tuple of str
        The notes ``make_design`` would record (dropped rows, baselines).
    level_columns : dict of str -> tuple
        Columns formulaic encodes as categorical, with their levels (checked in every chunk).
    scan : FirstPass
        The first pass (moments of the raw numeric columns, missing counts).
    """

    response: str
    columns: tuple[str, ...]
    dtypes: dict = field(repr=False)
    fixed_terms: tuple[str, ...] = ()
    fixed_spec: object = field(repr=False, default=None)
    factors: tuple[FactorPlan, ...] = ()
    n: int = 0
    n_rows: int = 0
    n_dropped: int = 0
    notes: tuple[str, ...] = ()
    level_columns: dict = field(repr=False, default_factory=dict)
    scan: FirstPass = field(repr=False, default=None)

    @property
    def p(self) -> int:
        return len(self.fixed_terms)

    @property
    def chain(self) -> tuple[FactorPlan, ...]:
        """Factors ordered by number of levels (stable), as ``marginal.nesting_chain`` orders them."""
        return tuple(sorted(self.factors, key=lambda f: f.n_levels))


@dataclass(frozen=True)
class ChunkArrays:
    """The design arrays of one chunk's kept rows (factors in design order)."""

    y: np.ndarray
    X: np.ndarray
    Z: tuple[np.ndarray, ...]
    codes: tuple[np.ndarray, ...]


def needed_columns(spec: ModelSpec) -> dict[str, str]:
    """Used column -> where it is used, in ``make_design``'s order (response, fixed, random)."""
    f = spec.formula
    needed: dict[str, str] = {f.response: "the response (left of '~')"}
    for c, where in term_columns(f).items():
        needed.setdefault(c, where)
    return needed


def _categorical_columns(spec: ModelSpec, head: pd.DataFrame, data_columns) -> tuple[str, ...]:
    """Data columns that formulaic encodes as categorical in the fixed part or a random term."""
    out = []
    texts = [spec.formula.fixed] + [t.expr for t in spec.formula.random]
    for text in texts:
        mspec = _model_matrix(text, head, "the formula").model_spec
        for factor, (kind, _) in mspec.encoder_state.items():
            if getattr(kind, "value", kind) != "categorical":
                continue
            for fac, variables in mspec.factor_variables.items():
                if str(fac) == str(factor):
                    out += [str(v) for v in variables if str(v) in data_columns]
    for c in head.columns:   # a string or categorical column is categorical whatever the formula says
        if c in data_columns and not (pd.api.types.is_numeric_dtype(head[c].dtype)
                                      and not pd.api.types.is_bool_dtype(head[c].dtype)):
            if any(c in _required_columns(t, "the formula") for t in texts):
                out.append(c)
    return tuple(dict.fromkeys(out))


def _head(src: Source, needed: list[str]) -> pd.DataFrame:
    """Complete rows from the start of the data (formulaic learns which columns are categorical on them)."""
    for n in (1000, 100_000):
        head = src.head(n)
        kept = head[needed].dropna()
        if len(kept) or len(head) < n:
            return kept if len(kept) else head.iloc[:0]
    return head.iloc[:0]


def plan_design(spec: ModelSpec, data, *, missing: str = "drop", warn: bool = True,
                scheduler=None) -> ChunkedDesign:
    """The design of ``spec`` on ``data`` from one pass over the rows (see the module docstring).

    Parameters
    ----------
    spec : ModelSpec
    data : anything :func:`bayeslmm.data.as_source` accepts (pandas, polars, dict, Parquet, Dask)
    missing : {"drop", "raise"}
        As in :func:`bayeslmm.design.make_design`.
    warn : bool
        Emit a warning when rows are dropped.
    scheduler : optional
        Dask scheduler for the pass.

    Raises
    ------
    DataError, FormulaError
        The errors of ``make_design`` with the same messages, and a FormulaError for transforms
        that learn a state from all rows.
    """
    if missing not in MISSING_ACTIONS:
        raise DataError(f"the 'missing' parameter must be one of {MISSING_ACTIONS}. Got {missing!r} instead.")
    f = spec.formula
    needed = needed_columns(spec)
    src = data if isinstance(data, Source) else as_source(data)
    _check_columns(pd.DataFrame(columns=list(src.all_columns)), needed)
    src = src.select(list(needed))
    ytype = src.dtypes[f.response]
    if not (pd.api.types.is_numeric_dtype(ytype) and not pd.api.types.is_bool_dtype(ytype)):
        raise DataError(f"response {f.response!r} must be numeric; it has dtype {ytype}. "
                        "Convert it (e.g. pd.to_numeric) or choose a numeric column.")
    level_cols = _categorical_columns(spec, _head(src, list(needed)), needed)
    groups = [t.group_columns for t in dict((t.group, t) for t in f.random).values()]
    in_formula = {f.response} | {c for text in [f.fixed] + [t.expr for t in f.random]
                                 for c in _required_columns(text, "the formula")}
    fp = first_pass(src, list(needed), levels_of=level_cols, groups=groups,
                    moments_for=[c for c in needed if c in in_formula], scheduler=scheduler)
    if fp.n_rows == 0:
        raise DataError("data has no rows; pass a DataFrame with observations")
    for c in needed:
        if fp.infinite.get(c):
            raise DataError(f"column {c!r} ({needed[c]}) has {fp.infinite[c]} infinite value(s); "
                            "replace or remove them before fitting.")
    notes: list[str] = []
    if fp.n_dropped:
        per_col = {c: k for c, k in fp.missing.items() if k}
        msg = (f"{fp.n_dropped} of {fp.n_rows} rows have missing values in used columns "
               f"({', '.join(f'{c}: {k}' for c, k in per_col.items())})")
        if missing == "raise":
            raise DataError(msg + "; remove or impute them, or pass missing='drop'.")
        notes.append(msg + "; they were dropped.")
        if warn:
            warnings.warn(notes[-1] + " Pass missing='raise' to make this an error.", UserWarning, stacklevel=2)
        if fp.n_complete == 0:
            raise DataError("no rows left after dropping missing values")

    proto = fp.examples
    mm = _model_matrix(f.fixed, proto, "the fixed part")
    _refuse_stateful(mm.model_spec, f"the fixed part {f.fixed!r}")
    notes += _baseline_notes(proto, _required_columns(f.fixed, "the fixed part"))
    factors = _plan_factors(f.random, proto, fp)
    return ChunkedDesign(response=f.response, columns=tuple(needed), dtypes=fp.dtypes,
                         fixed_terms=tuple(str(c) for c in mm.columns), fixed_spec=mm.model_spec,
                         factors=factors, n=fp.n_complete, n_rows=fp.n_rows, n_dropped=fp.n_dropped,
                         notes=tuple(notes), level_columns={c: fp.levels[c] for c in level_cols}, scan=fp)


def _refuse_stateful(mspec, where: str) -> None:
    state = dict(getattr(mspec, "transform_state", {}) or {})
    if state:
        raise FormulaError(f"{where} uses {', '.join(map(repr, state))}, which learns its state (a mean, a "
                           "scale, knots) from all rows; with data read in chunks add the transformed column "
                           "to the data before fitting, or load the data into pandas.")


def _plan_factors(terms, proto: pd.DataFrame, fp: FirstPass) -> tuple[FactorPlan, ...]:
    by_group: dict = {}
    for t in terms:
        by_group.setdefault(t.group, []).append(t)
    out = []
    for group, gterms in by_group.items():
        levels = fp.groups[group]
        if levels.n_levels < 2:
            raise DataError(f"grouping factor {group!r} in {gterms[0].text!r} has {levels.n_levels} level; "
                            "need >= 2. Remove the term, or check the column.")
        names, blocks, corr, specs = [], [], [], []
        for t in gterms:
            mm = _model_matrix(t.expr, proto, f"random term {t.text}")
            _refuse_stateful(mm.model_spec, f"random term {t.text!r}")
            cols = [str(c) for c in mm.columns]
            if not cols:
                raise FormulaError(f"random term {t.text!r} has no columns")
            for c in cols:
                if c in names:
                    raise FormulaError(f"column {c!r} appears in two random terms for {group!r} "
                                       f"({t.text!r}); each effect may appear once per factor.")
            idx = tuple(range(len(names), len(names) + len(cols)))
            if t.correlated:
                blocks.append(idx)
                corr.append(len(idx) > 1)
            else:
                blocks += [(i,) for i in idx]
                corr += [False] * len(idx)
            names += cols
            specs.append(mm.model_spec)
        out.append(FactorPlan(name=group, levels=levels, terms=tuple(names), blocks=tuple(blocks),
                              correlated=tuple(corr), term_specs=tuple(specs),
                              texts=tuple(dict.fromkeys(t.text for t in gterms)), index=levels.index()))
    return tuple(out)


def chunk_arrays(design: ChunkedDesign, chunk: pd.DataFrame) -> ChunkArrays:
    """The arrays ``make_design`` would give the kept rows of ``chunk`` (a pure function).

    Rows with a missing value in a used column are dropped; columns are cast to the design's dtypes;
    the model matrices use the specs learnt by :func:`plan_design`.

    Raises
    ------
    DataError
        A row with a level that the first pass did not see (the data changed between the passes).
    """
    frame = chunk[list(design.columns)]
    complete = ~frame.isna().any(axis=1).to_numpy()
    if not complete.all():
        frame = frame.loc[complete]
    casts = {c: t for c, t in design.dtypes.items() if frame[c].dtype != t}
    if casts:
        frame = frame.astype(casts)
    if len(frame) == 0:
        return ChunkArrays(np.zeros(0), np.zeros((0, design.p)),
                           tuple(np.zeros((0, fac.q)) for fac in design.factors),
                           tuple(np.zeros(0, dtype=np.int64) for _ in design.factors))
    for c, levels in design.level_columns.items():
        unseen = ~frame[c].isin(levels).to_numpy()
        if unseen.any():
            _changed(f"column {c!r} has the value {frame[c].to_numpy()[unseen][0]!r}")
    y = frame[design.response].to_numpy(dtype=float)
    X = np.asfortranarray(np.asarray(design.fixed_spec.get_model_matrix(frame), dtype=float)
                          .reshape(len(frame), design.p))
    Z, codes = [], []
    for fac in design.factors:
        Z.append(np.asfortranarray(np.concatenate(   # column-major: the statistics use whole columns
            [np.asarray(s.get_model_matrix(frame), dtype=float) for s in fac.term_specs], axis=1)))
        k = fac.levels.codes(frame, fac.index)
        if (k < 0).any():
            _changed(f"grouping factor {fac.name!r} has a level that was not seen")
        codes.append(k)
    return ChunkArrays(y, X, tuple(Z), tuple(codes))


def _changed(what: str):
    raise DataError(f"{what} in the second pass over the data but not in the first; the data changed "
                    "between the passes (or a Dask graph gives different rows each time). Persist the data "
                    "(e.g. write it to Parquet) and fit again.")
