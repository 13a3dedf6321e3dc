"""Input sources: one interface for data in memory, on disk and on a Dask cluster.

The owner of *where rows come from*. :func:`as_source` turns any supported input into a frozen
:class:`Source` that the later stages use without knowing what is behind it:

=========================================  ==============================================================
input                                      rows are read as
=========================================  ==============================================================
``pandas.DataFrame``                       slices of ``chunk_rows`` rows (views; never modified)
``dict`` of equal-length columns           a pandas DataFrame built once (no copy of numpy columns)
``polars.DataFrame``                       slices converted with ``to_pandas`` (categoricals kept whole)
Parquet file, directory or glob            ``pyarrow.dataset`` scan of the used columns only, in record
                                           batches joined to about ``chunk_rows`` rows at a time
``pyarrow.Table`` / ``pyarrow.dataset``    the same scan
``dask.dataframe.DataFrame``               its partitions, on whatever scheduler is active (a
                                           ``dask.distributed`` client if one exists)
=========================================  ==============================================================

A source can (a) report the dtypes of the used columns (:attr:`Source.dtypes`), (b) iterate
column-pruned chunks as pandas DataFrames (:meth:`Source.chunks`), (c) load everything into pandas
when it is small (:meth:`Source.to_pandas`, with an error that names the size otherwise) and (d) run
a map-reduce (:meth:`Source.map_reduce`): ``map_fn(chunk) -> partial`` on every chunk and
``combine_fn(a, b) -> partial`` to fold the partials. For Parquet the fold runs chunk by chunk, so
memory holds one chunk and one partial; for Dask each partition is mapped where it lives and the
partials are combined in a tree (``split_every`` at a time), so only the partial results travel.

Polars and Dask are optional (``pip install 'bayeslmm[big]'``); pyarrow is a core dependency.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field, replace
from functools import partial, reduce
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from .errors import DataError

__all__ = ["Source", "as_source", "KINDS", "DEFAULT_CHUNK_ROWS"]

KINDS = ("pandas", "polars", "parquet", "dask")
DEFAULT_CHUNK_ROWS = 1 << 18          # 262,144 rows: ~70 MiB of working memory for y ~ x + (1 + x | g)
PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")
EXTRA = "pip install 'bayeslmm[big]'"


def _normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """String columns with ``pd.NA`` (Dask's ``string[pyarrow]``) as pandas' default ``str`` dtype.

    formulaic treats the ``pd.NA`` string dtype as numeric; the default ``str`` dtype (missing values
    are NaN), which pandas, pyarrow and polars produce, is categorical to it.
    """
    casts = {c: "str" for c, t in frame.dtypes.items() if _na_string(t)}
    return frame.astype(casts) if casts else frame


def _na_string(dtype) -> bool:
    return isinstance(dtype, pd.StringDtype) and dtype.na_value is pd.NA


def _normalised(map_fn, part):
    return map_fn(_normalise(part))


def _require(module: str, what: str):
    """Import an optional dependency or say which extra provides it."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{what} needs the optional dependency {module.split('.')[0]!r}, which is not "
                          f"installed. Install it with: {EXTRA}") from exc


def _from_module(obj, root: str) -> bool:
    return type(obj).__module__.split(".")[0] == root


def _total_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 8 << 30


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


@dataclass(frozen=True, eq=False)          # two sources are the same only if they are the same object
class Source:
    """Rows from somewhere, read as pandas chunks. Build with :func:`as_source`.

    Attributes
    ----------
    kind : {"pandas", "polars", "parquet", "dask"}
    columns : tuple of str
        The used columns; every chunk has exactly these, in this order.
    description : str
        What the data is, for messages (``"Parquet directory data/ (12 files)"``).
    chunk_rows : int
        Rows per chunk for in-memory and Parquet sources (Dask uses its partitions).
    """

    kind: str
    columns: tuple[str, ...]
    description: str
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    obj: Any = field(default=None, repr=False, compare=False)
    categoricals: tuple = field(default=(), repr=False, compare=False)   # (column, CategoricalDtype)

    # -- schema --------------------------------------------------------------------------------
    @property
    def all_columns(self) -> tuple[str, ...]:
        """Every column the underlying data has (not only the used ones)."""
        if self.kind == "parquet":
            return tuple(self.obj.schema.names)
        return tuple(str(c) for c in self.obj.columns)

    @property
    def dtypes(self) -> dict[str, Any]:
        """pandas dtypes of the used columns, as the chunks will have them.

        For Parquet and polars an integer column that holds missing values arrives as float64 in the
        chunks that contain them (pandas has no missing integers); this reports the declared type.
        """
        if self.kind in ("pandas", "dask"):
            return {c: pd.StringDtype(na_value=np.nan) if _na_string(self.obj[c].dtype) else self.obj[c].dtype
                    for c in self.columns}
        if self.kind == "polars":
            empty = self.obj.select(list(self.columns)).head(0).to_pandas()
        else:
            empty = self.obj.schema.empty_table().select(list(self.columns)).to_pandas()
        out = {c: empty[c].dtype for c in self.columns}
        out.update(dict(self.categoricals))
        return out

    @property
    def n_rows(self) -> int | None:
        """Number of rows when known without a pass over the data (None for Dask)."""
        if self.kind == "pandas":
            return len(self.obj)
        if self.kind == "polars":
            return self.obj.height
        if self.kind == "parquet":
            return int(self.obj.count_rows())
        return None

    def select(self, columns) -> "Source":
        """The same data restricted to ``columns`` (a new Source; nothing is read).

        Raises
        ------
        DataError
            A column that the data does not have (with close matches).
        """
        columns = tuple(dict.fromkeys(str(c) for c in columns))
        _check_have(columns, self.all_columns, self.description)
        cats = tuple((c, d) for c, d in self.categoricals if c in columns)
        return replace(self, columns=columns, categoricals=cats)

    # -- reading -------------------------------------------------------------------------------
    def chunks(self) -> Iterator[pd.DataFrame]:
        """Column-pruned chunks as pandas DataFrames, in row order.

        In-memory sources yield slices (views: read them, do not write to them); Parquet yields
        about ``chunk_rows`` rows at a time; Dask yields its partitions one by one (computed on the
        active scheduler), which pulls every row to this process: prefer :meth:`map_reduce`.
        String columns with ``pd.NA`` come as pandas' default ``str`` dtype.
        """
        for chunk in self._raw_chunks():
            yield _normalise(chunk)

    def _raw_chunks(self) -> Iterator[pd.DataFrame]:
        cols = list(self.columns)
        if self.kind == "pandas":
            n = len(self.obj)
            for start in range(0, max(n, 1), self.chunk_rows):
                yield self.obj.iloc[start:start + self.chunk_rows][cols]
        elif self.kind == "polars":
            n = self.obj.height
            for start in range(0, max(n, 1), self.chunk_rows):
                yield self._polars_chunk(start, self.chunk_rows)
        elif self.kind == "parquet":
            yield from self._parquet_chunks()
        else:
            for part in self.obj[cols].to_delayed():
                yield part.compute()

    def _polars_chunk(self, start: int, length: int) -> pd.DataFrame:
        out = self.obj.select(list(self.columns)).slice(start, length).to_pandas()
        # a slice's categorical knows only its own categories: give it the column's full set
        for c, dtype in self.categoricals:
            out[c] = out[c].astype(dtype)
        return out

    def _parquet_chunks(self) -> Iterator[pd.DataFrame]:
        import pyarrow as pa
        # bounded memory: a small read-ahead instead of pyarrow's default (16 batches x 4 files)
        import pyarrow.dataset as pads
        # use_threads=False and no pre-buffering: pyarrow's threaded scan does not wait for a slow
        # consumer, so decoded batches pile up (measured: +200 MiB at 10M rows against +100 MiB)
        batches = self.obj.to_batches(columns=list(self.columns), batch_size=min(self.chunk_rows, 1 << 17),
                                      batch_readahead=2, fragment_readahead=1, use_threads=False,
                                      fragment_scan_options=pads.ParquetFragmentScanOptions(pre_buffer=False))
        pending, rows = [], 0
        for b in batches:
            if b.num_rows == 0:
                continue
            pending.append(b)
            rows += b.num_rows
            if rows >= self.chunk_rows:
                yield pa.Table.from_batches(pending).to_pandas()
                pending, rows = [], 0
        if pending:
            yield pa.Table.from_batches(pending).to_pandas()

    def head(self, n: int = 1000) -> pd.DataFrame:
        """The first ``n`` rows (at most) of the used columns, reading as little as possible."""
        cols = list(self.columns)
        if self.kind == "pandas":
            out = self.obj.iloc[:n][cols]
        elif self.kind == "polars":
            out = self._polars_chunk(0, n)
        elif self.kind == "parquet":
            out = self.obj.head(n, columns=cols).to_pandas()
        else:
            out = self.obj[cols].partitions[0].compute().iloc[:n]
        return _normalise(out)

    def map_reduce(self, map_fn: Callable[[pd.DataFrame], Any], combine_fn: Callable[[Any, Any], Any], *,
                   split_every: int = 8, scheduler=None):
        """Fold ``combine_fn`` over ``map_fn`` of every chunk.

        Parameters
        ----------
        map_fn : callable
            ``map_fn(chunk) -> partial`` on a pandas chunk of the used columns. Must not modify the
            chunk (it may be a view of the caller's data).
        combine_fn : callable
            ``combine_fn(a, b) -> partial``; associative (the grouping of the fold is not fixed).
        split_every : int
            Dask only: how many partials one combine task folds (the tree's fan-in).
        scheduler : optional
            Dask only: passed to ``dask.compute`` (e.g. ``"threads"``, ``"sync"`` or a
            ``distributed.Client``); default: the active client, else Dask's default.

        Returns
        -------
        The combined partial. For Dask only this object comes back from the cluster.
        """
        if self.kind != "dask":
            return reduce(combine_fn, (map_fn(c) for c in self.chunks()))
        dask = _require("dask", "a Dask data source")
        parts = self.obj[list(self.columns)].to_delayed()
        fn = dask.delayed(partial(_normalised, map_fn), pure=True)   # one graph node, shared by the map tasks
        comb = dask.delayed(combine_fn, pure=True)
        level = [dask.delayed(_call)(fn, p) for p in parts]
        while len(level) > 1:
            k = max(int(split_every), 2)
            level = [dask.delayed(_fold)(comb, *level[i:i + k]) for i in range(0, len(level), k)]
        return dask.compute(level[0], scheduler=scheduler)[0]

    # -- materialising -------------------------------------------------------------------------
    def nbytes(self) -> int:
        """Approximate memory of the used columns once loaded in pandas (bytes).

        In-memory sources report their size; Parquet adds up the uncompressed sizes in the file
        footers (no data read); Dask computes ``memory_usage`` per partition on its scheduler.
        """
        cols = list(self.columns)
        if self.kind == "pandas":
            return int(self.obj[cols].memory_usage(deep=False, index=False).sum())
        if self.kind == "polars":
            return int(self.obj.select(cols).estimated_size())
        if self.kind == "parquet":
            return _parquet_nbytes(self.obj, cols)
        return int(self.map_reduce(lambda c: int(c.memory_usage(deep=True, index=False).sum()),
                                   lambda a, b: a + b))

    def to_pandas(self, max_bytes: int | None = None) -> pd.DataFrame:
        """All rows of the used columns as one pandas DataFrame.

        Parameters
        ----------
        max_bytes : int, optional
            Refuse to load more than this (default: a quarter of this machine's memory). In-memory
            pandas data is returned as it is (a column selection, not a copy).

        Raises
        ------
        DataError
            When the data would take more than ``max_bytes``: the message gives the size and what
            to use instead.
        """
        cols = list(self.columns)
        if self.kind == "pandas":
            return _normalise(self.obj[cols])
        limit = int(max_bytes if max_bytes is not None else _total_memory() // 4)
        size = self.nbytes()
        if size > limit:
            raise DataError(
                f"{self.description}: the columns {cols} take about {_fmt_bytes(size)} in memory, over the "
                f"limit of {_fmt_bytes(limit)} for loading them into pandas. Use a path that reads the data "
                "in chunks (the collapsed Gaussian model needs only per-group statistics), or pass a "
                "larger max_bytes if this machine has the memory.")
        if self.kind == "polars":
            return _normalise(self._polars_chunk(0, self.obj.height))
        if self.kind == "parquet":
            return _normalise(self.obj.to_table(columns=cols).to_pandas())
        return _normalise(self.obj[cols].compute())


def _call(fn, part):
    return fn(part)


def _fold(fn, *parts):
    return reduce(fn, parts)


def _parquet_nbytes(dataset, cols: list[str]) -> int:
    total = 0
    for frag in dataset.get_fragments():
        md = frag.metadata
        names = [md.schema.column(i).path for i in range(md.num_columns)]
        idx = [i for i, n in enumerate(names) if n.split(".")[0] in cols]
        for rg in range(md.num_row_groups):
            g = md.row_group(rg)
            total += sum(g.column(i).total_uncompressed_size for i in idx)
    return total


def _check_have(columns, available, description: str) -> None:
    import difflib
    missing = [c for c in columns if c not in available]
    if missing:
        hints = []
        for c in missing:
            close = difflib.get_close_matches(c, list(available), n=3)
            hints.append(f"{c!r}" + (f" (did you mean {', '.join(map(repr, close))}?)" if close else ""))
        raise DataError(f"column{'s' if len(missing) > 1 else ''} {', '.join(hints)} not in {description}. "
                        f"Available columns: {list(available)}")


# --------------------------------------------------------------------------------------------
# Building a source
# --------------------------------------------------------------------------------------------
def as_source(data, columns=None, *, chunk_rows: int | None = None, engine: str = "pyarrow") -> Source:
    """Wrap ``data`` as a :class:`Source` (nothing is read yet, and ``data`` is never modified).

    Parameters
    ----------
    data : DataFrame, dict, polars.DataFrame, str or Path, pyarrow Table / Dataset, dask DataFrame, Source
        A path may be a Parquet file, a directory of Parquet files (hive partitions are read as
        columns) or a glob pattern such as ``"data/part-*.parquet"``.
    columns : sequence of str, optional
        The columns to use (default: all). Only these are ever read.
    chunk_rows : int, optional
        Rows per chunk for in-memory and Parquet data (default ``DEFAULT_CHUNK_ROWS``).
    engine : {"pyarrow", "dask"}
        How to read a path: with pyarrow in this process (default) or as a Dask DataFrame
        (``dask.dataframe.read_parquet``), so an active ``dask.distributed`` client does the reading.

    Raises
    ------
    DataError
        Unsupported type, a path that does not exist or is not Parquet, dict columns of unequal
        lengths, or a requested column that the data does not have.
    ImportError
        ``engine="dask"`` without Dask installed (names the ``bayeslmm[big]`` extra).

    Examples
    --------
    >>> import pandas as pd
    >>> src = as_source(pd.DataFrame({"y": [1.0, 2.0, 3.0], "g": ["a", "b", "a"]}), chunk_rows=2)
    >>> [len(c) for c in src.chunks()]
    [2, 1]
    >>> src.map_reduce(lambda c: c["y"].sum(), lambda a, b: a + b)
    np.float64(6.0)
    """
    if engine not in ("pyarrow", "dask"):
        raise DataError(f"The 'engine' parameter of as_source must be one of ('pyarrow', 'dask'). "
                        f"Got {engine!r} instead.")
    rows = int(chunk_rows) if chunk_rows is not None else DEFAULT_CHUNK_ROWS
    if rows < 1:
        raise DataError(f"chunk_rows must be a positive number of rows, got {chunk_rows!r}")
    src = _wrap(data, rows, engine)
    if chunk_rows is not None and src.chunk_rows != rows:
        src = replace(src, chunk_rows=rows)
    return src.select(src.all_columns if columns is None else columns)


def _wrap(data, rows: int, engine: str) -> Source:
    if isinstance(data, Source):
        return data
    if isinstance(data, pd.DataFrame):
        if not all(isinstance(c, str) for c in data.columns):   # formulas name columns by strings
            data = data.rename(columns=str)                       # a new frame; the caller's is untouched
        return Source("pandas", (), f"pandas DataFrame ({len(data)} rows)", rows, data)
    if isinstance(data, dict):
        return Source("pandas", (), "dict of columns", rows, _frame_from_dict(data))
    if isinstance(data, (str, os.PathLike)):
        if engine == "dask":
            dd = _require("dask.dataframe", "engine='dask'")
            files, desc = _parquet_files(data)
            return _wrap_dask(dd.read_parquet(files), rows, desc + " via Dask")
        files, desc = _parquet_files(data)
        import pyarrow.dataset as pads
        # hive partition columns (dir/a=3/...) as dictionaries, so they read as pandas.read_parquet reads them
        part = pads.HivePartitioning.discover(infer_dictionary=True)
        return Source("parquet", (), desc, rows,
                      pads.dataset(files[0] if len(files) == 1 else files, format="parquet", partitioning=part))
    if _from_module(data, "polars"):
        return _wrap_polars(data, rows)
    if _from_module(data, "dask"):
        _require("dask.dataframe", "a Dask data source")
        if not hasattr(data, "to_delayed") or not hasattr(data, "columns"):
            raise DataError(f"a Dask {type(data).__name__} is not a dask.dataframe.DataFrame; "
                            "pass a dask DataFrame (e.g. dask.dataframe.read_parquet(...))")
        return _wrap_dask(data, rows, f"Dask DataFrame ({data.npartitions} partitions)")
    if _from_module(data, "pyarrow"):
        import pyarrow as pa
        import pyarrow.dataset as pads
        if isinstance(data, pa.Table):
            return Source("parquet", (), f"pyarrow Table ({data.num_rows} rows)", rows, pads.dataset(data))
        if isinstance(data, pads.Dataset):
            return Source("parquet", (), "pyarrow dataset", rows, data)
    raise DataError(f"cannot read data of type {type(data).__name__}; pass a pandas or polars DataFrame, a "
                    "dict of columns, a Parquet file/directory/glob, or a dask DataFrame")


def _frame_from_dict(data: dict) -> pd.DataFrame:
    lengths = {str(k): len(v) if hasattr(v, "__len__") else None for k, v in data.items()}
    bad = {k: n for k, n in lengths.items() if n is None}
    if bad:
        raise DataError(f"dict columns must be sequences or arrays; {sorted(bad)} are scalars")
    if len(set(lengths.values())) > 1:
        raise DataError(f"dict columns have different lengths ({lengths}); every column needs one value "
                        "per row")
    return pd.DataFrame({str(k): v for k, v in data.items()})


def _wrap_polars(data, rows: int) -> Source:
    pl = _require("polars", "a polars data source")
    if isinstance(data, pl.LazyFrame):
        raise DataError("a polars LazyFrame is not supported; collect() it, or write it to Parquet "
                        "(sink_parquet) and pass the path")
    if not isinstance(data, pl.DataFrame):
        raise DataError(f"cannot read polars {type(data).__name__}; pass a polars DataFrame")
    cats = tuple((c, data.get_column(c).to_pandas().dtype) for c, t in data.schema.items()
                 if isinstance(t, (pl.Categorical, pl.Enum)))
    return Source("polars", (), f"polars DataFrame ({data.height} rows)", rows, data, cats)


def _wrap_dask(data, rows: int, desc: str) -> Source:
    return Source("dask", (), desc, rows, data)


def _parquet_files(path) -> tuple[list[str], str]:
    text = os.fspath(path)
    if any(ch in text for ch in "*?["):
        files = sorted(glob.glob(text, recursive=True))
        files = [f for f in files if os.path.isfile(f)]
        if not files:
            raise DataError(f"no files match the pattern {text!r}; check the path and the pattern")
        _check_suffixes(files)
        return files, f"Parquet files {text!r} ({len(files)} files)"
    p = Path(text)
    if not p.exists():
        raise DataError(f"data path {text!r} does not exist; pass a Parquet file, a directory of Parquet "
                        "files or a glob pattern")
    if p.is_dir():
        n = sum(1 for f in p.rglob("*") if f.is_file() and f.suffix in PARQUET_SUFFIXES)
        if n == 0:
            raise DataError(f"directory {text!r} has no Parquet files (*.parquet); write the data as "
                            "Parquet or pass a file")
        return [text], f"Parquet directory {text!r} ({n} files)"
    _check_suffixes([text])
    return [text], f"Parquet file {text!r}"


def _check_suffixes(files: list[str]) -> None:
    bad = [f for f in files if Path(f).suffix.lower() not in PARQUET_SUFFIXES]
    if bad:
        raise DataError(f"{bad[0]!r} is not a Parquet file (expected a name ending in .parquet); read other "
                        "formats with pandas and pass the DataFrame, or convert them to Parquet")
