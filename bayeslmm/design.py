"""Turn a ModelSpec and a DataFrame into arrays.

Stage 3 of the pipeline. The fixed part and each random term's left-hand side become model
matrices via formulaic (treatment contrasts, baseline = first level in sorted or categorical order);
each grouping factor becomes **integer codes** plus level labels: never a dense n x J indicator.

Random terms on the same grouping factor are merged into one :class:`FactorDesign` whose columns
are split into covariance *blocks*: ``(1 + x | g)`` is one correlated block of two columns,
``(1 + x || g)`` two blocks of one column, ``(1 | g) + (0 + x | g)`` likewise.

The caller's DataFrame is never modified: we work on a copy of the used columns. A
:class:`Design` holds the response once (``y``) and the other used columns as read-only arrays
(``columns``); :meth:`Design.data_frame` rebuilds a fresh DataFrame when one is needed.

This module is also the one owner of level encoding: the codes of the fitted data
(:func:`_encode_groups`) and the matching of new data to the fitted levels
(:func:`predictor_arrays`, used by predictions).
"""

from __future__ import annotations

import difflib
import warnings
from dataclasses import dataclass, field

import formulaic
import numpy as np
import pandas as pd

from .errors import DataError, FormulaError
from .families import family_of
from .formula import FORMULA_CONTEXT, RandomTerm, required_columns
from .spec import ModelSpec

__all__ = ["FactorDesign", "Design", "ColumnData", "make_design", "predictor_arrays", "offset_and_trials",
           "level_label", "MISSING_ACTIONS"]

MISSING_ACTIONS = ("drop", "raise")
#: in-memory data also take "drop_response": rows with a missing response are dropped (they add
#: nothing to the likelihood; valid under MAR), a missing predictor is an error naming the column
MISSING_ACTIONS_IN_MEMORY = MISSING_ACTIONS + ("drop_response",)


@dataclass(frozen=True, slots=True)
class FactorDesign:
    """One grouping factor: its levels, integer codes and random-effect columns.

    Attributes
    ----------
    name : str
        Factor label (``"Subject"``, ``"school:class"``).
    levels : tuple of str
        Level labels, in code order.
    codes : ndarray of int64, shape (n,)
        Level index of each row.
    terms : tuple of str
        Names of the random-effect columns (``("Intercept", "Days")``).
    Z : ndarray, shape (n, q)
        Random-effect design columns.
    blocks : tuple of tuple of int
        Column indices of each covariance block; blocks partition ``range(q)`` in order.
    correlated : tuple of bool
        Whether each block has a full (LKJ) correlation matrix.
    term_specs : tuple
        formulaic model specs of the left-hand sides (to build Z for new data).
    texts : tuple of str
        The random terms as written.
    """

    name: str
    levels: tuple[str, ...]
    codes: np.ndarray
    terms: tuple[str, ...]
    Z: np.ndarray
    blocks: tuple[tuple[int, ...], ...]
    correlated: tuple[bool, ...]
    term_specs: tuple = field(repr=False, default=())
    texts: tuple[str, ...] = ()

    @property
    def n_levels(self) -> int:
        return len(self.levels)

    @property
    def q(self) -> int:
        return len(self.terms)

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self.name.split(":"))

    @property
    def has_correlation(self) -> bool:
        return any(c and len(b) > 1 for b, c in zip(self.blocks, self.correlated))

    @property
    def group_sizes(self) -> np.ndarray:
        return np.bincount(self.codes, minlength=self.n_levels)

    @property
    def correlation_pairs(self) -> list[tuple[int, int]]:
        """(i, j) column pairs with a free correlation, i < j."""
        out = []
        for b, c in zip(self.blocks, self.correlated):
            if c:
                out += [(b[i], b[j]) for i in range(len(b)) for j in range(i + 1, len(b))]
        return out

    def parent(self, factors: "tuple[FactorDesign, ...]") -> "FactorDesign | None":
        """The factor this one is nested in (``a`` for ``a:b``), if present."""
        if ":" not in self.name:
            return None
        head = self.name.rsplit(":", 1)[0]
        return next((f for f in factors if f.name == head), None)


@dataclass(frozen=True, slots=True)
class ColumnData:
    """One used data column (not the response) of the kept rows: read-only values and the pandas dtype."""

    name: str
    values: np.ndarray = field(repr=False)
    dtype: object = None


@dataclass(frozen=True, slots=True)
class Design:
    """Arrays for one model and data set.

    Attributes
    ----------
    y : ndarray (n,)
    X : ndarray (n, p)
        Fixed-effect design, column names in ``fixed_terms``.
    factors : tuple of FactorDesign
    columns : tuple of ColumnData
        The other used columns of the rows that were kept, in data order (for predictions,
        saving, refits); :meth:`data_frame` rebuilds them as a DataFrame with the response.
    n_dropped : int
        Rows dropped for missing values.
    notes : tuple of str
        Everything the design did that a user should know (dropped rows, baselines).
    """

    response: str
    y: np.ndarray
    X: np.ndarray
    fixed_terms: tuple[str, ...]
    factors: tuple[FactorDesign, ...]
    columns: tuple[ColumnData, ...] = field(repr=False, default=())
    fixed_spec: object = field(repr=False, default=None)
    response_position: int = 0
    n_dropped: int = 0
    notes: tuple[str, ...] = ()
    #: binomial trials per row (None for other families)
    trials: np.ndarray | None = None
    #: offset per row, added to the linear predictor with no coefficient (None: no offset)
    offset: np.ndarray | None = None
    #: how to rebuild them for new data: ``(("expr", text) | ("column", name), ...)`` and
    #: ``("failures" | "trials", column)``
    offset_source: tuple = ()
    trials_source: tuple | None = None
    #: known standard errors of the kept rows (``y | se(s) ~ ...``; read-only), else None
    se: np.ndarray | None = field(repr=False, default=None)
    #: ``se(s, sigma = TRUE)``: a residual SD is estimated besides ``se``
    se_sigma: bool = False
    #: likelihood weights of the kept rows (``weights=``; read-only), else None
    weights: np.ndarray | None = field(repr=False, default=None)
    #: known covariances of random intercepts (``Model(..., cov={g: K})``): KinshipMatrix per factor
    kinship: tuple = field(repr=False, default=())

    @property
    def n(self) -> int:
        return len(self.y)

    @property
    def has_intercept(self) -> bool:
        return "Intercept" in self.fixed_terms

    @property
    def column_names(self) -> tuple[str, ...]:
        """Every used column, the response included, in data order."""
        names = [c.name for c in self.columns]
        names.insert(self.response_position, self.response)
        return tuple(names)

    def data_frame(self, y: np.ndarray | None = None) -> pd.DataFrame:
        """A new DataFrame of the used columns of the kept rows (response ``y``, default the data's)."""
        cols = {c.name: pd.Series(c.values, dtype=c.dtype) for c in self.columns}
        cols[self.response] = pd.Series(self.y if y is None else np.asarray(y, dtype=float))
        return pd.DataFrame({k: cols[k] for k in self.column_names})

    @property
    def slope_columns(self) -> tuple[int, ...]:
        """Indices of the fixed-effect columns other than the intercept."""
        return tuple(j for j, t in enumerate(self.fixed_terms) if t != "Intercept")

    @property
    def slope_means(self) -> np.ndarray:
        """Column means of the slopes: the single centring convention of the Intercept prior.

        With an intercept, the sampled intercept ``Intercept_c`` is at centred predictors and
        ``b[Intercept] = Intercept_c - slope_means @ b[slopes]`` (every sampling path and the
        simulator use this).
        """
        idx = list(self.slope_columns)
        return self.X[:, idx].mean(axis=0) if idx else np.zeros(0)

    def factor(self, name: str) -> FactorDesign:
        for f in self.factors:
            if f.name == name:
                return f
        raise KeyError(f"no grouping factor {name!r}; factors are {[f.name for f in self.factors]}")

    @property
    def nested(self) -> bool:
        return any(f.parent(self.factors) is not None for f in self.factors)


def term_columns(f) -> dict[str, str]:
    """Columns used by the fixed part and the random terms of a parsed formula -> where they are
    used (the fixed part first, then each term's expression and grouping columns)."""
    cols: dict[str, str] = {}
    for c in _required_columns(f.fixed, "the fixed part"):
        cols.setdefault(c, f"the fixed part {f.fixed!r}")
    for t in f.random:
        for c in _required_columns(t.expr, f"random term {t.text}"):
            cols.setdefault(c, f"random term {t.text!r}")
        for c in t.group_columns:
            cols.setdefault(c, f"the grouping factor of {t.text!r}")
    return cols


def _required_columns(formula_text: str, where: str) -> set[str]:
    try:  # never formulaic's required_variables: it evaluates parts of the terms
        return set(required_columns(formula_text))
    except FormulaError as exc:
        raise FormulaError(f"cannot read {where} {formula_text!r}: {exc}") from exc


def _check_columns(data: pd.DataFrame, needed: dict[str, str]) -> None:
    missing = [c for c in needed if c not in data.columns]
    if missing:
        lines = []
        for c in missing:
            close = difflib.get_close_matches(c, [str(x) for x in data.columns], n=3)
            hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
            lines.append(f"column {c!r} used in {needed[c]} is not in the data{hint}")
        raise DataError("; ".join(lines) + f". Available columns: {list(map(str, data.columns))}")


def _model_matrix(text: str, frame: pd.DataFrame, where: str):
    try:
        return formulaic.model_matrix(text, frame, na_action="raise", ensure_full_rank=True,
                                      context=FORMULA_CONTEXT)
    except Exception as exc:
        raise FormulaError(f"cannot build the model matrix of {where} {text!r}: {exc}") from exc


# -- level identity -----------------------------------------------------------------------------
# A level of a grouping factor is identified by its value, never by its text: a float column with
# 1.0 (a column of integers that held a NaN) and new data with 1 are the same level; the text '1'
# and the number 1 in one column are refused as ambiguous; the levels of an ``a:b`` factor are
# tuples, so values that contain ':' can never make two levels one. The label of a level is the
# canonical text of its value (``level_label``), joined with ':' for ``a:b``.


def _column_kind(s: pd.Series) -> str:
    """'number', 'bool' or 'text' (object, string and categorical columns)."""
    dtype = s.dtype.categories.dtype if isinstance(s.dtype, pd.CategoricalDtype) else s.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return "bool"
    if pd.api.types.is_numeric_dtype(dtype):
        return "number"
    return "text"


def level_label(value) -> str:
    """Canonical text of one level: numbers by value (``1``, ``1.0`` and ``np.int64(1)`` -> '1')."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return str(int(v)) if v.is_integer() and abs(v) < 2**53 else repr(v)
    return str(value)


def _column_labels(s: pd.Series, column: str, where: str) -> np.ndarray:
    """The canonical label of every row of one grouping column; refuses text that equals a number."""
    # one label per distinct value, spread to the rows by its code: a Python call per row cost
    # 0.2 s at 100,000 rows. Row by row where factorize would merge values whose labels differ:
    # missing values (None and NaN) and, in an object column, bools with numbers (True == 1).
    codes, uniques = pd.factorize(s)
    values = np.asarray(uniques, dtype=object)
    if (codes < 0).any() or (s.dtype == object and _mixes_bools_and_numbers(values)):
        values, codes = s.to_numpy(dtype=object), np.arange(len(s))
    labels = np.array([level_label(v) for v in values], dtype=object)
    if _column_kind(s) == "text":
        is_num = np.array([isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
                           for v in values], dtype=bool)
        if is_num.any() and (~is_num).any():
            clash = set(labels[is_num]) & set(labels[~is_num])
            if clash:
                lv = sorted(clash)[0]
                raise DataError(f"column {column!r} ({where}) holds both the number {lv} and the text "
                                f"{lv!r}: they cannot be told apart as group levels. Convert the column "
                                f"to one type (e.g. df[{column!r}].astype(str)).")
    return labels[codes]


def _mixes_bools_and_numbers(values: np.ndarray) -> bool:
    is_bool = np.array([isinstance(v, (bool, np.bool_)) for v in values], dtype=bool)
    return bool(is_bool.any()) and any(isinstance(v, (int, float, np.integer, np.floating))
                                       for v in values[~is_bool])


def _encode_groups(frame: pd.DataFrame, cols: tuple[str, ...]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Integer codes and labels for one factor (observed levels only, sorted by value).

    The one place where levels are defined (see "level identity" above); :func:`predictor_arrays`
    matches new data with :func:`_row_keys` of the same rule.
    """
    name = ":".join(cols)
    if len(cols) == 1:
        codes, uniques = pd.factorize(frame[cols[0]], sort=True)
        _column_labels(frame[cols[0]], cols[0], f"grouping factor {name!r}")     # refuses '1' vs 1
        labels = tuple(level_label(u) for u in uniques)
    else:
        for c in cols:
            _column_labels(frame[c], c, f"grouping factor {name!r}")
        idx = pd.MultiIndex.from_frame(frame[list(cols)])
        codes, uniques = pd.factorize(idx, sort=True)
        labels = tuple(":".join(level_label(v) for v in u) for u in uniques)
    if len(set(labels)) < len(labels):
        seen: dict[str, int] = {}
        dup = next(lv for lv in labels if seen.setdefault(lv, 0) or seen.update({lv: 1}))
        raise DataError(f"grouping factor {name!r} has two different levels with the same label {dup!r}"
                        + (" (a value contains ':', the separator of the levels of "
                           f"{name!r}); remove ':' from the values of {list(cols)}" if len(cols) > 1 else
                           f"; make the values of column {cols[0]!r} distinct as text")
                        + ".")
    return codes.astype(np.int64), labels


def _row_keys(design_cols: dict, frame: pd.DataFrame, cols: tuple[str, ...], factor: str) -> list[tuple]:
    """Per row, the level of ``factor`` as a tuple of canonical labels, after checking that each
    new column has the fitted column's kind (number / text / bool)."""
    parts = []
    for c in cols:
        fitted = design_cols.get(c)
        if fitted is not None:
            kf = _column_kind(pd.Series(fitted.values, dtype=fitted.dtype))
            kn = _column_kind(frame[c])
            if kf != kn and not (kn == "text" and _all_numbers(frame[c]) and kf == "number"):
                raise DataError(f"column {c!r} of the new data holds {kn} values but the fitted levels of "
                                f"{factor!r} are {kf} values; convert it to the type it had in the fit "
                                "so that its levels can be matched.")
        parts.append(_column_labels(frame[c], c, f"grouping factor {factor!r}"))
    return list(zip(*parts))


def _all_numbers(s: pd.Series) -> bool:
    return all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
               for v in s.to_numpy(dtype=object))


def _baseline_notes(frame: pd.DataFrame, cols: set[str]) -> list[str]:
    notes = []
    for c in sorted(cols):
        s = frame[c]
        if isinstance(s.dtype, pd.CategoricalDtype):
            levels = [lv for lv in s.cat.categories if (s == lv).any()]
        elif s.dtype == object or pd.api.types.is_string_dtype(s) or pd.api.types.is_bool_dtype(s):
            levels = sorted(s.unique(), key=str)
        else:
            continue
        notes.append(f"{c}: treatment contrasts, baseline level {levels[0]!r} "
                     f"(levels: {', '.join(map(str, levels[:8]))}{', ...' if len(levels) > 8 else ''})")
    return notes


def make_design(spec: ModelSpec, data: pd.DataFrame, *, missing: str = "drop",
                warn: bool = True) -> Design:
    """Build the arrays for ``spec`` from ``data``.

    Parameters
    ----------
    spec : ModelSpec
    data : pandas.DataFrame
        Never modified.
    missing : {"drop", "raise", "drop_response"}
        Rows with a missing value in a used column are dropped with a printed count (``"drop"``),
        or raise :class:`DataError` (``"raise"``). ``"drop_response"`` drops the rows whose
        response is missing and raises for a missing predictor, naming the column. Rows are
        dropped one by one: a group keeps every observed row (a subject who dropped out keeps
        its visits before dropout), which is what makes the fit valid when the response is
        missing at random; ``design.notes`` says if a level lost all its rows.
    warn : bool
        Emit a warning when rows are dropped.

    Raises
    ------
    DataError
        Missing columns, empty data, non-numeric response, inf values, a grouping factor with one
        level, a constant or collinear fixed predictor.

    Examples
    --------
    >>> import bayeslmm as blmm
    >>> d = make_design(blmm.build_spec("Reaction ~ Days + (Days | Subject)"),
    ...                 blmm.load_dataset("sleepstudy"))
    >>> d.X.shape, d.factors[0].name, d.factors[0].n_levels, d.factors[0].terms
    ((180, 2), 'Subject', 18, ('Intercept', 'Days'))
    """
    if missing not in MISSING_ACTIONS_IN_MEMORY:
        raise DataError(f"the 'missing' parameter must be one of {MISSING_ACTIONS_IN_MEMORY}. Got {missing!r} "
                        "instead.")
    if not isinstance(data, pd.DataFrame):
        raise DataError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    if len(data) == 0:
        raise DataError("data has no rows; pass a DataFrame with observations")
    dup = sorted({str(c) for c in data.columns[data.columns.duplicated()]})
    if dup:
        raise DataError(f"the data has more than one column named {', '.join(map(repr, dup))}; column "
                        "names must be unique (rename or drop the copies).")
    f = spec.formula
    needed: dict[str, str] = {f.response: "the response (left of '~')"}
    se_col = getattr(f, "se", None)
    if se_col is not None:
        if se_col == f.response:
            raise DataError(f"se({se_col}) names the response itself; give the column of standard errors")
        needed[se_col] = f"the standard errors se({se_col})"
    for c, where in term_columns(f).items():
        needed.setdefault(c, where)
    family = family_of(spec)
    trials_source = f.trials or (("trials", spec.trials) if spec.trials else None)
    if trials_source is not None:
        needed.setdefault(trials_source[1], f"the {trials_source[0]} of the binomial response")
    offset_source = tuple(("expr", o) for o in f.offsets) + ((("column", spec.offset),) if spec.offset else ())
    offset_cols: list[str] = []
    for kind, o in offset_source:
        cols = _required_columns(o, "offset") if kind == "expr" else (o,)
        offset_cols += [c for c in cols if c not in offset_cols]
        for c in cols:
            needed.setdefault(c, f"the offset {o!r}")
    if getattr(spec, "weights", None):
        needed.setdefault(spec.weights, "the observation weights")
    _check_columns(data, needed)
    if "Intercept" in needed:
        raise DataError("the data column 'Intercept' is used in the formula, but 'Intercept' is the name "
                        "of the constant term (its estimate, its prior): the two cannot be told apart. "
                        "Rename the column, e.g. data.rename(columns={'Intercept': 'Intercept_x'}).")

    frame = data.loc[:, list(needed)].copy()
    y_raw = frame[f.response]
    if pd.api.types.is_complex_dtype(y_raw):
        raise DataError(f"response {f.response!r} is complex; a linear mixed model needs real numbers. "
                        "Model the real part, the imaginary part or the modulus as a separate column.")
    for c in needed:
        if not needed[c].startswith("the grouping factor"):     # group IDs may mix numbers and text
            _refuse_stray_text(frame[c], c, needed[c])
    if family.name != "bernoulli" and not (pd.api.types.is_numeric_dtype(y_raw)
                                           and not pd.api.types.is_bool_dtype(y_raw)):
        raise DataError(f"response {f.response!r} must be numeric; it has dtype {y_raw.dtype}. "
                        "Convert it (e.g. pd.to_numeric) or choose a numeric column.")
    for c in offset_cols:
        n_na = int(frame[c].isna().sum())
        if n_na:
            raise DataError(f"offset column {c!r} has {n_na} missing value(s); an observation without "
                            "its exposure cannot be modelled. Fill them or drop those rows first.")
    if se_col is not None:
        _check_standard_errors(frame[se_col], se_col)
    if getattr(spec, "weights", None):
        _check_weights(frame[spec.weights], spec.weights)
    for c in needed:
        s = frame[c]
        if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
            n_inf = int(np.isinf(s.to_numpy(dtype=float, na_value=np.nan)).sum())
            if n_inf:
                raise DataError(f"column {c!r} ({needed[c]}) has {n_inf} infinite value(s); "
                                "replace or remove them before fitting.")
    na = frame.isna()
    if missing == "drop_response":
        _refuse_missing_predictors(na, f.response, needed)
    n_dropped = int(na.any(axis=1).sum())
    notes: list[str] = []
    if n_dropped:
        per_col = {c: int(k) for c, k in na.sum().items() if k}
        msg = (f"{n_dropped} of {len(frame)} rows have missing values in used columns "
               f"({', '.join(f'{c}: {k}' for c, k in per_col.items())})")
        if missing == "raise":
            raise DataError(msg + "; remove or impute them, or pass missing='drop'.")
        notes.append(msg + "; they were dropped.")
        if warn:
            warnings.warn(notes[-1] + " Pass missing='raise' to make this an error.", UserWarning,
                          stacklevel=3)
        notes += _lost_levels(frame, ~na.any(axis=1).to_numpy(), f.random)
        frame = frame.loc[~na.any(axis=1)]
        if len(frame) == 0:
            raise DataError("no rows left after dropping missing values")
    frame = frame.reset_index(drop=True)
    y, y_note = family.encode_response(frame[f.response], f.response)
    if y_note:
        notes.append(y_note)
    trials = _trials(frame, y, trials_source, f.response) if trials_source is not None else None
    family.check_response(y, f.response, trials)
    offset = _offset(frame, offset_source) if offset_source else None

    fixed_cols = _required_columns(f.fixed, "the fixed part")
    mm = _model_matrix(f.fixed, frame, "the fixed part")
    X = np.asarray(mm, dtype=float)
    fixed_terms = tuple(str(c) for c in mm.columns)
    if not fixed_terms:
        raise FormulaError(f"{f.text!r} has no fixed effects (no intercept, no predictors); a mixed model "
                           "here needs at least one. Use '1 + ...' (the group effects are then deviations "
                           "from a common mean).")
    _check_scale(f.response, y, "the response")
    for j, name in enumerate(fixed_terms):
        if name != "Intercept":
            _check_scale(name, X[:, j], "a fixed-effect column")
    for j, name in enumerate(fixed_terms):
        if name != "Intercept" and not X[:, j].any():
            raise DataError(f"fixed-effect column {name!r} is 0 in every row: a category that does not "
                            "occur in the data used (an unused level of a categorical column: drop it "
                            "with .cat.remove_unused_categories()), or a predictor that is always 0.")
        if name != "Intercept" and np.ptp(X[:, j]) == 0:
            raise DataError(f"fixed-effect column {name!r} is constant ({X[0, j]:g} in every row); "
                            "drop it from the formula, it cannot be estimated beside the intercept.")
    if X.shape[1] and np.linalg.matrix_rank(X) < X.shape[1]:
        raise DataError(f"the fixed-effect columns {list(fixed_terms)} are collinear (rank "
                        f"{np.linalg.matrix_rank(X)} < {X.shape[1]}); remove redundant predictors.")
    notes += _baseline_notes(frame, fixed_cols)

    factors = _make_factors(f.random, frame)
    columns = tuple(ColumnData(c, _readonly(frame[c].to_numpy()), frame[c].dtype)
                    for c in frame.columns if c != f.response)
    se = None if se_col is None else _readonly(frame[se_col].to_numpy(dtype=float))
    return Design(response=f.response, y=_readonly(y), X=_readonly(X), fixed_terms=fixed_terms,
                  factors=factors, columns=columns, fixed_spec=mm.model_spec,
                  response_position=list(frame.columns).index(f.response), n_dropped=n_dropped,
                  notes=tuple(notes), trials=None if trials is None else _readonly(trials),
                  offset=None if offset is None else _readonly(offset), offset_source=offset_source,
                  trials_source=trials_source, se=se,
                  se_sigma=bool(getattr(f, "se_sigma", False)),
                  weights=_readonly(frame[spec.weights].to_numpy(dtype=float)) if getattr(spec, "weights", None) else None)


def _check_weights(s: pd.Series, col: str) -> None:
    """Likelihood weights: numeric, finite, >= 0, not all 0, none missing."""
    if not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
        raise DataError(f"weights column {col!r} must be numeric; it has dtype {s.dtype}.")
    v = s.to_numpy(dtype=float, na_value=np.nan)
    bad = int((~np.isfinite(v)).sum() + (v < 0).sum())
    if bad:
        raise DataError(f"weights column {col!r} has {bad} missing, infinite or negative value(s); a "
                        "likelihood weight is a finite number >= 0 (0 = the row is ignored). Fix or drop them.")
    if not (v > 0).any():
        raise DataError(f"weights column {col!r} is 0 in every row: no observation would count.")


def _refuse_missing_predictors(na: pd.DataFrame, response: str, needed: dict[str, str]) -> None:
    """missing='drop_response': a missing value outside the response is an error naming the columns."""
    bad = [c for c in na.columns if c != response and na[c].any()]
    if bad:
        parts = [f"{c!r} ({needed[c]}): {int(na[c].sum())} row(s), first at position(s) "
                 f"{[int(i) for i in np.flatnonzero(na[c].to_numpy())[:5]]}" for c in bad]
        raise DataError("missing predictor values in " + "; ".join(parts) + ". With missing='drop_response' "
                        "only rows with a missing response are dropped; fill or impute the predictors, or "
                        "pass missing='drop' to drop those rows too (with a printed count).")


def _lost_levels(frame: pd.DataFrame, keep: np.ndarray, terms) -> list[str]:
    """Notes on grouping levels that lose every row when rows with missing values are dropped."""
    notes = []
    for group in dict.fromkeys(t.group for t in terms):
        cols = list(group.split(":"))
        present = frame[cols].notna().all(axis=1).to_numpy()
        before = frame.loc[present, cols].drop_duplicates()
        after = frame.loc[present & keep, cols].drop_duplicates()
        lost = len(before) - len(after)
        kept_rows = "every level keeps its observed rows" if lost == 0 else \
            f"{lost} of {len(before)} levels had no complete row and are not in the fit"
        notes.append(f"grouping factor {group!r}: {kept_rows} (rows are dropped one by one, never whole groups)")
    return notes


def _trials(frame: pd.DataFrame, y: np.ndarray, source: tuple, response: str) -> np.ndarray:
    """Binomial trials: ``successes + failures`` or the trials column; counts checked."""
    from .families import _check_counts
    kind, col = source
    s = frame[col]
    if not (pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)):
        raise DataError(f"the {kind} column {col!r} must be numeric; it has dtype {s.dtype}.")
    v = s.to_numpy(dtype=float)
    _check_counts(v, col, kind)
    if kind == "failures":
        _check_counts(y, response, "successes")
        return y + v
    return v


def _offset(frame: pd.DataFrame, source: tuple) -> np.ndarray:
    """The summed offset terms; a clear error for a non-finite value (log of exposure <= 0)."""
    total = np.zeros(len(frame))
    for kind, o in source:
        if kind == "column":
            s = frame[o]
            if not (pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)):
                raise DataError(f"offset column {o!r} must be numeric; it has dtype {s.dtype}.")
            v = s.to_numpy(dtype=float)
        else:
            cols = _required_columns(o, "offset")
            for c in cols:
                if "log" in o and pd.api.types.is_numeric_dtype(frame[c]):
                    bad = int((frame[c].to_numpy(dtype=float) <= 0).sum())
                    if bad:
                        raise DataError(f"offset {o!r}: column {c!r} has {bad} value(s) <= 0, whose log "
                                        "is not finite; an exposure must be positive. Fix or drop those rows.")
            with np.errstate(all="ignore"):
                mm = _model_matrix(f"0 + {o}", frame, "offset")
            if mm.shape[1] != 1:
                raise FormulaError(f"offset({o}) must be one numeric column; it gives {mm.shape[1]} "
                                   f"({list(map(str, mm.columns))})")
            v = np.asarray(mm, dtype=float)[:, 0]
        if not np.all(np.isfinite(v)):
            raise DataError(f"offset {o!r} has {int((~np.isfinite(v)).sum())} non-finite value(s) "
                            "(log of a non-positive exposure?); fix or drop those rows.")
        total = total + v
    return total


def offset_and_trials(design: Design, data: pd.DataFrame, response=None):
    """Offset and trials of new data (None where the model has none).

    Trials of a ``cbind(s, f)`` response need both columns in ``data``; missing columns give
    ``None`` for the trials (link and mean-per-trial predictions still work).
    """
    frame = data
    offset = None
    if design.offset_source:
        cols = [c for kind, o in design.offset_source
                for c in (_required_columns(o, "offset") if kind == "expr" else (o,))]
        miss = [c for c in cols if c not in data.columns]
        if miss:
            raise DataError(f"new data lacks the offset column(s) {miss}; predictions need the exposure")
        offset = _offset(frame.reset_index(drop=True), design.offset_source)
    trials = None
    if design.trials_source is not None:
        kind, col = design.trials_source
        need = [col] + ([design.response] if kind == "failures" else [])
        if all(c in data.columns for c in need):
            v = data[col].to_numpy(dtype=float)
            trials = v + data[design.response].to_numpy(dtype=float) if kind == "failures" else v
    return offset, trials


def _check_standard_errors(s: pd.Series, col: str) -> None:
    """Known standard errors: numeric, present, finite and > 0 in every row (never dropped)."""
    where = f"standard-error column {col!r} (se({col}) in the formula)"
    if not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
        raise DataError(f"{where} must be numeric; it has dtype {s.dtype}. Convert it "
                        "(e.g. pd.to_numeric) or name the column of standard errors.")
    v = s.to_numpy(dtype=float, na_value=np.nan)
    rows = lambda m: ", ".join(map(str, np.flatnonzero(m)[:10])) + (" ..." if m.sum() > 10 else "")
    if np.isnan(v).any():
        raise DataError(f"{where} is missing in {int(np.isnan(v).sum())} row(s) (positions {rows(np.isnan(v))}); "
                        "a known-SE model needs every standard error: supply them or remove those rows.")
    if np.isinf(v).any():
        raise DataError(f"{where} is infinite in row(s) {rows(np.isinf(v))}; remove those rows.")
    bad = v <= 0
    if bad.any():
        raise DataError(f"{where} must be > 0; {int(bad.sum())} row(s) are zero or negative (positions "
                        f"{rows(bad)}, e.g. {v[bad][0]:g}). Standard errors are positive: check the column.")


#: typical size (root mean square) outside which a column is refused: sampling works on the
#: data's own scale, and at 1e12 or 1e-12 (squares 1e24 / 1e-24, products of both) float error and
#: NUTS's step size adaptation give wrong answers. Ordinary data (units from mm to km, counts,
#: money up to billions) are far inside.
SCALE_LIMITS = (1e-8, 1e10)


def _check_scale(name: str, v: np.ndarray, what: str) -> None:
    m = float(np.max(np.abs(v))) if len(v) else 0.0
    if m == 0.0 or not np.isfinite(m):
        return                                  # zeros: the constant checks say what is wrong
    size = m * float(np.sqrt(np.mean((v / m) ** 2)))    # root mean square, without under/overflow
    lo, hi = SCALE_LIMITS
    if not lo <= size <= hi:
        factor = 10.0 ** round(np.log10(size))
        raise DataError(f"{what} {name!r} has values of size about {size:.3g}, outside "
                        f"[{lo:g}, {hi:g}]; at that scale the sampler's arithmetic is unreliable. Rescale "
                        f"it (e.g. divide by {factor:g}: change its units) and read the estimates in the "
                        "new units.")


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _parses_as_number(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def _refuse_stray_text(s: pd.Series, column: str, where: str) -> None:
    """A numeric column with a few text values (a typo, 'n/a') would become dozens of dummy
    columns: refuse it, naming the column and the values."""
    if not (s.dtype == object or pd.api.types.is_string_dtype(s)):
        return
    vals = s.dropna().to_numpy(dtype=object)
    texts = [v for v in vals if isinstance(v, str)]
    if not texts:
        return
    numbers_ = sum(1 for v in vals if _is_number(v))
    bad = list(dict.fromkeys(v for v in texts if not _parses_as_number(v)))
    if numbers_ and bad:
        stray = bad                                       # numbers and text mixed in one column
    elif not numbers_ and bad and len(bad) <= max(1, len(vals) // 20) and len(set(texts)) > 10:
        stray = bad                                       # numbers read as text, with a few typos
    else:
        return
    rows = [int(i) for i in np.flatnonzero(s.isin(stray[:3]).to_numpy())[:3]]
    raise DataError(f"column {column!r} ({where}) holds numbers and the text value(s) "
                    f"{stray[:5]} (first at row(s) {rows}); it would be treated as a category with one "
                    f"level per distinct value. Fix or remove those values, e.g. "
                    f"pd.to_numeric(df[{column!r}], errors='coerce') turns them into missing values.")


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.array(a, copy=True)
    a.setflags(write=False)
    return a


def predictor_arrays(design: Design, data: pd.DataFrame):
    """Fixed design X and, per factor, ``(f, Z, codes, labels)`` for new data.

    Levels are matched to the fitted ones by label; unseen levels get code -1.
    """
    if not isinstance(data, pd.DataFrame) or len(data) == 0:
        raise DataError("new data must be a non-empty pandas DataFrame")
    needed = [c.name for c in design.columns]
    missing = [c for c in needed if c not in data.columns]
    if missing:
        raise DataError(f"new data lacks column(s) {missing} used by the model; it needs {needed}")
    frame = data.loc[:, needed].copy()
    bad = [c for c in needed if frame[c].isna().any()]
    if bad:
        raise DataError(f"new data has missing values in {bad}; predictions need complete rows "
                        "(drop or fill them first)")
    X = _new_model_matrix(design.fixed_spec, frame, "the fixed-effect design")
    fitted_cols = {c.name: c for c in design.columns}
    has_rows = isinstance(design, Design)
    fitted_frame = None
    parts = []
    for f in design.factors:
        Zs = [_new_model_matrix(spec, frame, f"the random-effect design of {f.name!r}")
              for spec in f.term_specs]
        keys = _row_keys(fitted_cols, frame, f.columns, f.name)
        labels = np.array([":".join(k) for k in keys], dtype=object)
        if has_rows:
            # fitted level tuples -> codes (the rule of _encode_groups): ('x:y', 'z') and ('x', 'y:z')
            # share the text 'x:y:z' but are different levels
            if fitted_frame is None:
                fitted_frame = pd.DataFrame({c.name: pd.Series(c.values, dtype=c.dtype) for c in design.columns})
            index = dict(zip(_row_keys(fitted_cols, fitted_frame, f.columns, f.name), f.codes.tolist()))
            codes = np.array([index.get(k, -1) for k in keys], dtype=np.int64)
        else:
            # a fit from per-group statistics keeps no rows: match by the level's text, unique per
            # factor (a value containing ':' in an interaction factor can then match another tuple)
            index = {label: code for code, label in enumerate(f.levels)}
            codes = np.array([index.get(lab, -1) for lab in labels], dtype=np.int64)
        parts.append((f, np.concatenate(Zs, axis=1), codes, labels))
    return X, parts


def _new_model_matrix(spec, frame: pd.DataFrame, what: str) -> np.ndarray:
    """A fitted formulaic model spec applied to new data; a category the fit never saw is an error
    (formulaic would warn and code it as the baseline)."""
    for factor, state in getattr(spec, "factor_contrasts", {}).items():
        col = str(factor.expr).strip("`")
        if col in frame.columns:
            known = {level_label(v) for v in state.levels}
            new = sorted({level_label(v) for v in frame[col].to_numpy(dtype=object)} - known)
            if new:
                raise DataError(f"column {col!r} of the new data has categor{'y' if len(new) == 1 else 'ies'} "
                                f"{new[:10]} not seen in the fit (fitted: {sorted(known)[:10]}); the model "
                                "has no estimate for an unseen category. Drop those rows or refit with them.")
    from formulaic.errors import DataMismatchWarning
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", DataMismatchWarning)
            return np.asarray(spec.get_model_matrix(frame, context=FORMULA_CONTEXT), dtype=float)
    except DataMismatchWarning as exc:
        raise DataError(f"{what} of the new data has a category not seen in the fit ({exc}); the model "
                        "has no estimate for an unseen category. Drop those rows or refit with them.") from None
    except Exception as exc:
        raise DataError(f"cannot build {what} for the new data: {exc}") from exc


def _make_factors(terms: tuple[RandomTerm, ...], frame: pd.DataFrame) -> tuple[FactorDesign, ...]:
    by_group: dict[str, list[RandomTerm]] = {}
    for t in terms:
        by_group.setdefault(t.group, []).append(t)
    out = []
    for group, gterms in by_group.items():
        codes, levels = _encode_groups(frame, gterms[0].group_columns)
        if len(levels) < 2:
            raise DataError(f"grouping factor {group!r} in {gterms[0].text!r} has {len(levels)} level; "
                            "need >= 2. Remove the term, or check the column.")
        Zs, names, blocks, corr, specs = [], [], [], [], []
        for t in gterms:
            mm = _model_matrix(t.expr, frame, f"random term {t.text}")
            cols = [str(c) for c in mm.columns]
            if not cols:
                raise FormulaError(f"random term {t.text!r} has no columns")
            for c in cols:
                if c in names:
                    raise FormulaError(f"column {c!r} appears in two random terms for {group!r} "
                                       f"({t.text!r}); each effect may appear once per factor.")
            Zt = np.asarray(mm, dtype=float)
            start = len(names)
            idx = tuple(range(start, start + len(cols)))
            if t.correlated:
                blocks.append(idx)
                corr.append(len(idx) > 1)
            else:
                blocks += [(i,) for i in idx]
                corr += [False] * len(idx)
            names += cols
            Zs.append(Zt)
            specs.append(mm.model_spec)
        Z = np.concatenate(Zs, axis=1)
        for j, name in enumerate(names):
            if name != "Intercept" and np.ptp(Z[:, j]) == 0:
                raise DataError(f"random-effect column {name!r} for {group!r} is constant; a random "
                                "slope on it is the same as a random intercept. Remove it.")
        out.append(FactorDesign(name=group, levels=levels, codes=codes, terms=tuple(names), Z=Z,
                                blocks=tuple(blocks), correlated=tuple(corr), term_specs=tuple(specs),
                                texts=tuple(dict.fromkeys(t.text for t in gterms))))
    return tuple(out)
