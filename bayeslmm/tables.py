"""Result tables that print whole, with sensible significant digits.

A :class:`Table` is a :class:`pandas.DataFrame` (every pandas operation works on it) whose
printed forms are made for reading: ``print(table)`` shows every row and column (pandas would
truncate a wide table to the terminal width) and ``_repr_html_`` (notebooks) shows rounded numbers.
The values themselves are never rounded; only their display is.

Number format (:func:`format_number`): 4 significant digits, integers as integers, counts such as
ESS without decimals, very small or large values in scientific notation, NaN as ``-``.

Examples
--------
>>> import pandas as pd
>>> t = as_table(pd.DataFrame({"mean": [251.4053, 10.46729], "ess_bulk": [1523.7, 980.2]},
...                           index=["Intercept", "Days"]))
>>> print(t)
            mean ess_bulk
Intercept  251.4     1524
Days       10.47    980.2
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["Table", "as_table", "format_number", "to_text", "to_html"]


def format_number(v) -> str:
    """One number for display: 4 significant digits (see the module docstring)."""
    if v is None:
        return "-"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        if np.isnan(v):
            return "-"
        if not np.isfinite(v):
            return str(v)
        a = abs(v)
        if a == 0:
            return "0"
        if a >= 1e6 or a < 1e-4:
            return f"{v:.3e}"
        if a >= 1000:
            return f"{v:.0f}"
        return f"{v:.4g}"
    return str(v)


def _formatted(df: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame(index=df.index)
    for c in df.columns:
        col = df[c]
        if pd.api.types.is_float_dtype(col.dtype) or col.dtype == object:
            out[c] = [format_number(v) if isinstance(v, (float, np.floating)) else
                      ("-" if v is None else str(v)) for v in col]
        else:
            out[c] = col
    return out


def to_text(df: pd.DataFrame) -> str:
    """The whole table as text: every row and column, numbers as in :func:`format_number`."""
    with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", None,
                           "display.max_colwidth", None):
        return _formatted(pd.DataFrame(df)).to_string()


def to_html(df: pd.DataFrame) -> str:
    """The whole table as HTML with rounded numbers (for notebooks)."""
    return _formatted(pd.DataFrame(df)).to_html(border=0, escape=True)


class Table(pd.DataFrame):
    """A DataFrame that prints whole and rounded; see the module docstring."""

    @property
    def _constructor(self):
        return Table

    def __repr__(self) -> str:
        return to_text(self)

    def __str__(self) -> str:
        return to_text(self)

    def _repr_html_(self) -> str:
        return to_html(self)


def as_table(df: pd.DataFrame) -> Table:
    """``df`` as a :class:`Table` (same data, index and ``attrs``; not a copy of the user's frame
    semantics: a new object)."""
    t = Table(df)
    t.attrs = dict(df.attrs)
    return t
