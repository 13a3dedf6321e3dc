"""Data bigger than memory: sources, the first pass and the chunked sufficient statistics.

The reference is always the in-memory path on the same rows: ``make_design`` for levels, counts,
notes and errors, ``marginal_stats(make_design(...))`` for the statistics. The data sets are
built so that chunks are uneven, a category of a fixed-effect factor is absent from the early
chunks, a grouping level appears only in the last rows, and a level appears only next to a missing
value (so it is not a level). Tolerance of the statistics: 1e-10 relative to each array's
largest entry (the arrays are sums of products of O(100) numbers; the two paths differ only in
summation order and in how b0 is solved, QR here and SVD in numpy's lstsq, both backward stable,
so they agree to about cond(X) * 1e-16 ~ 1e-12).
"""

from __future__ import annotations

import pickle
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

import bayeslmm as blmm
from bayeslmm.chunked_design import plan_design
from bayeslmm.chunked_stats import chunked_stats, combine_stats, partial_stats, stats_pass
from bayeslmm.data import as_source
from bayeslmm.errors import DataError, FormulaError, SpecError
from bayeslmm.stats import group_stats as marginal_stats
from bayeslmm.firstpass import combine_moments, first_pass, moments_of

BIG = "needs the optional extra bayeslmm[big] (pip install 'bayeslmm[big]')"
RTOL = 1e-10

FORMULAS = {
    "one factor, correlated": "y ~ x + c + (1 + x | a)",
    "one factor, uncorrelated": "y ~ x * c + (1 + x || a)",
    "nested": "y ~ x + c + (1 + x | a) + (1 | a:b)",
    "nested, slash": "y ~ np.log(x) + (1 | a/b)",
    "three levels": "y ~ x + (1 | a) + (1 | a:b) + (1 | a:b:c)",
    "no intercept": "y ~ 0 + x + (1 + x | a)",
}


def make_data(seed: int = 3, n: int = 2400) -> pd.DataFrame:
    """Nested a > a:b, a numeric x, a fixed-effect category c whose level 'r' only comes late."""
    r = np.random.default_rng(seed)
    a = r.integers(0, 12, n)
    a[-40:] = 99                                       # a top-level group only in the last rows
    b = np.array([f"b{k}" for k in r.integers(0, 6, n)], dtype=object)
    c = r.choice(["p", "q"], n).astype(object)
    c[int(0.8 * n):] = r.choice(["p", "q", "r"], n - int(0.8 * n))
    x = r.normal(50, 3, n)
    ua = r.normal(0, 2, 100)
    uab = r.normal(0, 1, (100, 6))
    bi = np.array([int(s[1:]) for s in b])
    y = 100 + 0.5 * x + (c == "q") * 1.5 - (c == "r") + ua[a] + uab[a, bi] + (0.2 * x - 10) * ua[a] / 4 \
        + r.normal(0, 1.5, n)
    df = pd.DataFrame({"y": y, "x": x, "c": c, "a": a, "b": b, "unused": r.normal(size=n)})
    df.loc[5, "y"] = np.nan
    df.loc[17, "c"] = None
    df.loc[23, ["a", "b"]] = [7, "b_only_with_missing_y"]
    df.loc[23, "y"] = np.nan                            # its only row is dropped: not a level
    return df


def assert_stats_equal(got, ref, rtol=RTOL):
    assert (got.names, got.q, got.J, got.p, got.blocks, got.correlated) == \
           (ref.names, ref.q, ref.J, ref.p, ref.blocks, ref.correlated)

    def close(x, y, what):
        x, y = np.asarray(x), np.asarray(y)
        assert x.shape == y.shape, what
        scale = max(np.max(np.abs(y)), 1.0) if y.size else 1.0
        err = np.max(np.abs(x - y)) / scale if y.size else 0.0
        assert err <= rtol, f"{what}: relative error {err:.3g} > {rtol}"

    for name in ("b0", "XtX", "Xte", "ete", "n_obs"):
        close(getattr(got, name), getattr(ref, name), name)
    for name in ("ZtZ", "ZtX", "Zte", "n_nodes"):
        for l, (x, y) in enumerate(zip(getattr(got, name), getattr(ref, name))):
            close(x, y, f"{name}[{l}]")
    for l in range(ref.L):
        for m in range(l):
            np.testing.assert_array_equal(got.anc[l][m], ref.anc[l][m])
            close(got.ZtZa[l][m], ref.ZtZa[l][m], f"ZtZa[{l}][{m}]")


def reference(formula: str, df: pd.DataFrame):
    spec = blmm.build_spec(formula)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return spec, marginal_stats(blmm.make_design(spec, df))


def quiet_chunked(spec, data, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return chunked_stats(spec, data, **kw)


def write_parquet_dir(df: pd.DataFrame, path, sizes=(500, 37, 1200)) -> None:
    """Uneven files, each with small row groups (several record batches per file)."""
    path.mkdir()
    edges = np.cumsum((0,) + tuple(sizes) + (len(df) - sum(sizes),))
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        df.iloc[lo:hi].to_parquet(path / f"part-{i:02d}.parquet", row_group_size=150, index=False)


@pytest.fixture(scope="module")
def data():
    return make_data()


@pytest.fixture(scope="module")
def parquet_dir(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("pq") / "data"
    write_parquet_dir(data, path)
    return path


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------
def _sources(data, parquet_dir):
    out = {"pandas": lambda: as_source(data, chunk_rows=317),
           "dict": lambda: as_source({c: data[c].to_numpy() for c in data.columns}, chunk_rows=500),
           "parquet dir": lambda: as_source(parquet_dir, chunk_rows=300),
           "parquet glob": lambda: as_source(str(parquet_dir / "part-*.parquet"), chunk_rows=300)}
    return out


@pytest.mark.parametrize("kind", ["pandas", "dict", "parquet dir", "parquet glob"])
def test_source_reads_the_same_rows(kind, data, parquet_dir):
    src = _sources(data, parquet_dir)[kind]().select(["y", "a", "c"])
    assert src.columns == ("y", "a", "c")
    chunks = list(src.chunks())
    assert len(chunks) > 1 and all(list(c.columns) == ["y", "a", "c"] for c in chunks)
    got = pd.concat(chunks, ignore_index=True)
    pd.testing.assert_frame_equal(got, data[["y", "a", "c"]].reset_index(drop=True), check_dtype=False)
    pd.testing.assert_frame_equal(src.to_pandas().reset_index(drop=True), got, check_dtype=False)
    total = src.map_reduce(lambda c: (len(c), c["y"].sum()), lambda u, v: (u[0] + v[0], u[1] + v[1]))
    assert total[0] == len(data) and total[1] == pytest.approx(data["y"].sum(), rel=1e-13)
    assert set(src.dtypes) == {"y", "a", "c"} and pd.api.types.is_float_dtype(src.dtypes["y"])


@pytest.mark.filterwarnings("ignore:The inplace keyword:DeprecationWarning")
@pytest.mark.parametrize("kind", ["polars", "dask"])
def test_optional_sources_read_the_same_rows(kind, data):
    if kind == "polars":
        pl = pytest.importorskip("polars", reason=BIG)
        src = as_source(pl.from_pandas(data), ["y", "a", "c"], chunk_rows=700)
    else:
        dd = pytest.importorskip("dask.dataframe", reason=BIG)
        src = as_source(dd.from_pandas(data, npartitions=3), ["y", "a", "c"])
    chunks = list(src.chunks())
    assert len(chunks) > 1
    got = pd.concat(chunks, ignore_index=True)
    pd.testing.assert_frame_equal(got, data[["y", "a", "c"]].reset_index(drop=True), check_dtype=False)
    assert pd.api.types.is_string_dtype(got["c"]) and got["c"].dtype.na_value is not pd.NA    # 'str'
    pd.testing.assert_frame_equal(src.to_pandas().reset_index(drop=True), got)
    pd.testing.assert_frame_equal(src.head(10).reset_index(drop=True), got.iloc[:10])
    n = src.map_reduce(len, lambda u, v: u + v, scheduler="sync") if kind == "dask" else \
        src.map_reduce(len, lambda u, v: u + v)
    assert n == len(data)
    if kind == "dask":                     # a tree of three levels: 20 partials, 3 per combine task
        many = as_source(dd.from_pandas(data, npartitions=20), ["y"])
        assert many.map_reduce(lambda c: [len(c)], lambda u, v: u + v, split_every=3, scheduler="sync") == \
            [len(p) for p in many.chunks()]


def test_parquet_single_file_and_table(tmp_path, data):
    import pyarrow as pa
    f = tmp_path / "one.parquet"
    data.to_parquet(f, row_group_size=400, index=False)
    for src in (as_source(f, ["y", "x"], chunk_rows=1000), as_source(pa.Table.from_pandas(data), ["y", "x"])):
        assert src.n_rows == len(data)
        got = pd.concat(src.chunks(), ignore_index=True)
        pd.testing.assert_frame_equal(got, data[["y", "x"]].reset_index(drop=True))
    assert 0.5 < as_source(f, ["y", "x"]).nbytes() / (16 * len(data)) < 2


def test_to_pandas_refuses_big_data_and_names_the_size(parquet_dir):
    src = as_source(parquet_dir, ["y", "x"])
    with pytest.raises(DataError, match=r"take about [\d.]+ KiB in memory, over the limit of 1000 B") as err:
        src.to_pandas(max_bytes=1000)
    import re
    kib = float(re.search(r"about ([\d.]+) KiB", str(err.value)).group(1))
    assert 1 <= kib * 1024 / (16 * 2400) < 1.5          # two float64 columns of 2400 rows, plus footers
    assert len(src.to_pandas(max_bytes=10**6)) == 2400


def test_integer_column_names(data):
    df = pd.DataFrame({0: [1.0, 2.0], 1: ["a", "b"]})
    src = as_source(df)
    assert src.columns == ("0", "1") and list(src.to_pandas().columns) == ["0", "1"]
    assert list(df.columns) == [0, 1]


def test_source_errors(tmp_path, data):
    with pytest.raises(DataError, match=r"column 'yy' \(did you mean 'y'\?\) not in pandas DataFrame \(2400 rows\)"):
        as_source(data, ["yy", "x"])
    with pytest.raises(DataError, match="does not exist"):
        as_source(tmp_path / "nope")
    (tmp_path / "d.csv").write_text("y\n1\n")
    with pytest.raises(DataError, match="is not a Parquet file"):
        as_source(tmp_path / "d.csv")
    with pytest.raises(DataError, match="no files match"):
        as_source(str(tmp_path / "*.parquet"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="has no Parquet files"):
        as_source(tmp_path / "empty")
    with pytest.raises(DataError, match="different lengths"):
        as_source({"y": [1.0, 2.0], "g": ["a"]})
    with pytest.raises(DataError, match="cannot read data of type list"):
        as_source([1, 2, 3])
    with pytest.raises(DataError, match="'engine' parameter"):
        as_source(data, engine="spark")
    with pytest.raises(DataError, match="chunk_rows"):
        as_source(data, chunk_rows=0)


def test_missing_extra_names_it(monkeypatch, parquet_dir):
    monkeypatch.setitem(sys.modules, "dask", None)          # import dask now raises ImportError
    monkeypatch.setitem(sys.modules, "dask.dataframe", None)
    with pytest.raises(ImportError, match=r"optional dependency 'dask'.*pip install 'bayeslmm\[big\]'"):
        as_source(parquet_dir, engine="dask")


# --------------------------------------------------------------------------------------------
# First pass
# --------------------------------------------------------------------------------------------
def test_first_pass_matches_make_design(data):
    spec = blmm.build_spec(FORMULAS["nested"])
    with pytest.warns(UserWarning, match="rows have missing values"):
        design = blmm.make_design(spec, data)
    cols = ["y", "x", "c", "a", "b"]
    fp = first_pass(as_source(data, chunk_rows=317), cols, levels_of=["c"], groups=[("a",), ("a", "b")])
    assert fp.n_rows == len(data) and fp.n_complete == design.n and fp.n_dropped == design.n_dropped
    assert fp.missing == {c: int(k) for c, k in data[cols].isna().sum().items()}
    for f in design.factors:                      # same levels, same order, same labels
        assert fp.groups[f.name].labels == f.levels
    assert "7:b_only_with_missing_y" not in fp.groups["a:b"].labels
    assert fp.levels["c"] == ("p", "q", "r")
    kept = data[cols].dropna()
    for c in ("y", "x"):
        m = fp.moments[c]
        assert m.n == len(kept)
        assert m.mean[0] == pytest.approx(kept[c].mean(), rel=1e-13)
        assert m.var[0] == pytest.approx(kept[c].var(ddof=1), rel=1e-12)
        assert (m.min[0], m.max[0]) == (kept[c].min(), kept[c].max())
    assert set(fp.examples["c"]) == {"p", "q", "r"} and not fp.examples.isna().any().any()


def test_first_pass_nan_and_categorical_levels():
    df = pd.DataFrame({"y": [1.0, 2, 3, 4, 5, 6],
                       "g": pd.Categorical(["z", "x", None, "z", "w", "w"], categories=["z", "x", "w", "v"]),
                       "h": [3.0, np.nan, 1.0, 3.0, 2.0, 1.0]})
    fp = first_pass(as_source(df, chunk_rows=4), groups=[("g",), ("h",), ("g", "h")])
    design_codes = {}
    from bayeslmm.design import _encode_groups
    kept = df.dropna()
    for g in (("g",), ("h",), ("g", "h")):
        design_codes[g] = _encode_groups(kept, g)[1]
        assert fp.groups[":".join(g)].labels == design_codes[g]
    assert fp.groups["g"].labels == ("z", "w")            # category order; 'x' only next to NaN h
    assert fp.groups["h"].labels == ("1", "2", "3")         # numbers by value (design.level_label)
    assert fp.groups["g:h"].labels == ("w:1", "w:2", "z:3")     # MultiIndex: sorted by value
    assert fp.missing == {"y": 0, "g": 1, "h": 1} and fp.n_complete == 4


def test_chan_moments_are_stable():
    """mean 1e9, sd 1: sum(x^2) - n mean^2 would lose every digit; the pairwise update keeps them."""
    r = np.random.default_rng(0)
    x = 1e9 + r.normal(size=100_000)
    parts = np.array_split(x, [3, 10, 5000, 5001, 70000])
    m = moments_of(parts[0][:, None])
    for p in parts[1:]:
        m = combine_moments(m, moments_of(p[:, None]))
    exact = np.var(x - 1e9, ddof=1)             # the same data, shifted exactly, two-pass
    assert m.n == len(x)
    assert m.var[0] == pytest.approx(exact, rel=1e-6)
    assert m.mean[0] == pytest.approx(np.mean(x), rel=1e-15)


# --------------------------------------------------------------------------------------------
# Chunked statistics = in-memory statistics
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", list(FORMULAS))
def test_chunked_stats_pandas(which, data):
    spec, ref = reference(FORMULAS[which], data)
    for rows in (317, 1000, 10_000):
        assert_stats_equal(quiet_chunked(spec, data, chunk_rows=rows), ref)


def test_chunked_stats_break_check(data):
    """The comparison can fail: one changed row changes the statistics beyond the tolerance."""
    spec, ref = reference(FORMULAS["nested"], data)
    other = data.copy()
    other.loc[100, "y"] += 1e-3
    with pytest.raises(AssertionError, match="relative error"):
        assert_stats_equal(quiet_chunked(spec, other, chunk_rows=317), ref)


def test_chunked_stats_parquet_dir(data, parquet_dir):
    spec, ref = reference(FORMULAS["nested"], pd.read_parquet(parquet_dir))
    assert_stats_equal(quiet_chunked(spec, parquet_dir, chunk_rows=300), ref)
    assert_stats_equal(quiet_chunked(spec, str(parquet_dir / "*.parquet"), chunk_rows=10_000), ref)


def test_chunked_stats_parquet_categorical(tmp_path, data):
    """A categorical column is stored as a dictionary; batches carry their own dictionaries."""
    df = data.assign(c=pd.Categorical(data["c"], categories=["q", "p", "r"]))
    write_parquet_dir(df, tmp_path / "cat")
    back = pd.read_parquet(tmp_path / "cat")
    spec, ref = reference(FORMULAS["one factor, uncorrelated"], back)
    assert_stats_equal(quiet_chunked(spec, tmp_path / "cat", chunk_rows=200), ref)


def test_chunked_stats_hive_partitions(tmp_path, data):
    """dir/a=3/part.parquet: the partition column reads as pandas.read_parquet reads it (categorical)."""
    import pyarrow as pa
    import pyarrow.dataset as pads
    pads.write_dataset(pa.Table.from_pandas(data, preserve_index=False), tmp_path / "hive", format="parquet",
                       partitioning=["a"], partitioning_flavor="hive")
    back = pd.read_parquet(tmp_path / "hive")
    assert isinstance(back["a"].dtype, pd.CategoricalDtype)
    spec, ref = reference(FORMULAS["nested"], back)
    assert_stats_equal(quiet_chunked(spec, tmp_path / "hive", chunk_rows=250), ref)


def test_chunked_stats_dict(data):
    spec, ref = reference(FORMULAS["nested"], data)
    cols = {c: data[c].to_numpy() for c in data.columns}
    assert_stats_equal(quiet_chunked(spec, cols, chunk_rows=700), ref)


def test_chunked_stats_polars(data):
    pl = pytest.importorskip("polars", reason=BIG)
    pdf = pl.from_pandas(data)
    spec, ref = reference(FORMULAS["nested"], pdf.to_pandas())
    assert_stats_equal(quiet_chunked(spec, pdf, chunk_rows=333), ref)
    # a polars categorical: slices know only their own categories, the source gives them all
    pcat = pdf.with_columns(pl.col("c").cast(pl.Categorical))
    spec, ref = reference(FORMULAS["one factor, correlated"], pcat.to_pandas())
    assert_stats_equal(quiet_chunked(spec, pcat, chunk_rows=333), ref)


@pytest.mark.filterwarnings("ignore:The inplace keyword:DeprecationWarning")
def test_chunked_stats_dask_threads(data, parquet_dir):
    dd = pytest.importorskip("dask.dataframe", reason=BIG)
    ddf = dd.read_parquet(str(parquet_dir))                # one partition per file: uneven
    assert ddf.npartitions == 4
    spec, ref = reference(FORMULAS["nested"], as_source(ddf).to_pandas())   # Dask's strings -> str
    assert_stats_equal(quiet_chunked(spec, ddf, scheduler="threads"), ref)
    spec, ref = reference(FORMULAS["one factor, correlated"], data)
    assert_stats_equal(quiet_chunked(spec, dd.from_pandas(data, npartitions=5), scheduler="sync"), ref)


@pytest.mark.filterwarnings("ignore:The inplace keyword:DeprecationWarning")
def test_chunked_stats_dask_local_cluster(parquet_dir):
    """The issue's check: a LocalCluster does both passes over a Parquet directory."""
    pytest.importorskip("dask.dataframe", reason=BIG)
    distributed = pytest.importorskip("distributed", reason=BIG)
    spec, ref = reference(FORMULAS["nested"], pd.read_parquet(parquet_dir))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster):
        src = as_source(parquet_dir, engine="dask")
        assert src.kind == "dask"
        assert_stats_equal(quiet_chunked(spec, src), ref)


# --------------------------------------------------------------------------------------------
# Pieces and metadata
# --------------------------------------------------------------------------------------------
def test_partials_combine_in_any_grouping(data):
    """combine_stats is associative to rounding: ((a b) c) == (a (b c)), and an empty chunk is neutral."""
    spec, ref = reference(FORMULAS["nested"], data)
    design = plan_design(spec, data, warn=False)
    from bayeslmm.chunked_design import chunk_arrays
    chain = design.chain
    pos = [design.factors.index(f) for f in chain]
    J = tuple(f.n_levels for f in chain)
    parts = []
    for lo, hi in ((0, 1), (1, 1), (1, 900), (900, 2400)):
        arr = chunk_arrays(design, data.iloc[lo:hi])
        parts.append(partial_stats(arr.y, arr.X, tuple(arr.Z[k] for k in pos), tuple(arr.codes[k] for k in pos), J))
    assert parts[1].n == 0
    left = combine_stats(combine_stats(combine_stats(parts[0], parts[1]), parts[2]), parts[3])
    right = combine_stats(parts[0], combine_stats(parts[1], combine_stats(parts[2], parts[3])))
    from bayeslmm.chunked_stats import finish_stats
    meta = ([f.name for f in chain], [f.q for f in chain], [f.blocks for f in chain], [f.correlated for f in chain])
    assert_stats_equal(finish_stats(left, *meta), ref)
    assert_stats_equal(finish_stats(right, *meta), ref)


def test_plan_matches_design_and_moments(data):
    spec = blmm.build_spec(FORMULAS["nested"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        design = blmm.make_design(spec, data)
        plan = plan_design(spec, as_source(data, chunk_rows=317))
    assert plan.fixed_terms == design.fixed_terms
    # the in-memory design also says, per grouping factor, whether a level lost all its rows; the
    # first pass does not see the levels of dropped rows, so those notes are in-memory only
    mem_notes = tuple(n for n in design.notes if not n.startswith("grouping factor "))
    assert (plan.n, plan.n_dropped, plan.notes) == (design.n, design.n_dropped, mem_notes)
    for pf, f in zip(plan.factors, design.factors):
        assert (pf.name, pf.labels, pf.terms, pf.blocks, pf.correlated, pf.texts) == \
               (f.name, f.levels, f.terms, f.blocks, f.correlated, f.texts)
    sp = stats_pass(plan, as_source(data, chunk_rows=317))
    assert sp.y_moments.mean[0] == pytest.approx(design.y.mean(), rel=1e-13)
    assert sp.y_moments.sd[0] == pytest.approx(np.std(design.y, ddof=1), rel=1e-12)
    np.testing.assert_allclose(sp.X_moments.mean, design.X.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(sp.X_moments.sd, np.std(design.X, axis=0, ddof=1), rtol=1e-12, atol=1e-14)
    for zm, f in zip(sp.Z_moments, design.factors):
        np.testing.assert_allclose(zm.sd, np.std(f.Z, axis=0, ddof=1), rtol=1e-12, atol=1e-14)
    # the plan travels to Dask workers
    again = pickle.loads(pickle.dumps(plan))
    assert again.fixed_terms == plan.fixed_terms and again.factors[1].labels == plan.factors[1].labels


def test_a_level_unseen_in_the_first_pass_is_an_error(data):
    """If the data change between the passes (a Dask graph that is not deterministic), say so."""
    from bayeslmm.chunked_design import chunk_arrays
    spec = blmm.build_spec(FORMULAS["nested"])
    plan = plan_design(spec, data, warn=False)
    with pytest.raises(DataError, match="grouping factor 'a' has a level that was not seen.*changed between"):
        chunk_arrays(plan, data.iloc[:50].assign(a=1000))
    with pytest.raises(DataError, match="column 'c' has the value 'new'.*changed between"):
        chunk_arrays(plan, data.iloc[:50].assign(c="new"))


def test_user_data_is_not_modified(data):
    before = data.copy()
    spec = blmm.build_spec(FORMULAS["nested"])
    quiet_chunked(spec, data, chunk_rows=317)
    pd.testing.assert_frame_equal(data, before)


# --------------------------------------------------------------------------------------------
# Errors: the same as make_design's, plus what only big data needs
# --------------------------------------------------------------------------------------------
def _same_error(formula, df, **kw):
    spec = blmm.build_spec(formula)
    with pytest.raises(Exception) as mem:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            marginal_stats(blmm.make_design(spec, df, **kw))
    with pytest.raises(type(mem.value)) as big:
        quiet_chunked(spec, df, chunk_rows=7, **kw)
    assert str(big.value) == str(mem.value)


def test_errors_match_make_design(data):
    small = data.iloc[:60].copy()
    _same_error("y ~ x + (1 | a)", small, missing="raise")
    _same_error("y ~ x + zz + (1 | a)", small)
    _same_error("y ~ k + (1 | a)", small.assign(k=2.0))                         # constant column
    _same_error("y ~ x + x2 + (1 | a)", small.assign(x2=2 * small["x"]))        # collinear
    _same_error("y ~ x + (1 | k)", small.assign(k="one"))                       # one level
    _same_error("y ~ x + (1 + k | a)", small.assign(k=3.0))                     # constant slope
    _same_error("c ~ x + (1 | a)", small)                                       # non-numeric response
    _same_error("y ~ x + (1 | a)", small.assign(x=np.r_[np.inf, small["x"].to_numpy()[1:]]))


def test_big_data_refusals(data):
    crossed = data.assign(d=np.arange(len(data)) % 5)
    with pytest.raises(SpecError, match="crossed factors .* need the rows in memory"):
        quiet_chunked(blmm.build_spec("y ~ x + (1 | a) + (1 | d)"), crossed, chunk_rows=500)
    # transforms that learn a state from the rows (formulaic's center, scale, poly, splines): make_design
    # cannot evaluate them yet either (formulaic lists no required columns for them), so test the guard
    import formulaic
    from bayeslmm.chunked_design import _refuse_stateful
    mspec = formulaic.model_matrix("center(x)", data[["x"]]).model_spec
    with pytest.raises(FormulaError, match=r"uses 'center\(x\)'.*add the transformed column"):
        _refuse_stateful(mspec, "the fixed part 'center(x)'")
    _refuse_stateful(formulaic.model_matrix("np.log(x)", data[["x"]]).model_spec, "stateless: no error")


@pytest.mark.parametrize("values", [
    [3, 1, 2, 1, 3],
    [1.0, 2.5, np.nan, 1.0, -0.0],
    ["b", "a", None, "b", "c"],
    [True, 1, 2, True, 1.0],            # object column: True == 1 share a hash, not a label
    [1, 1.0, np.int64(2), 2.0, None],
    ["x", "y", "x", "z", "y"],
])
@pytest.mark.parametrize("dtype", [None, object, "category"])
def test_grouping_labels_per_distinct_value_equal_the_row_by_row_labels(values, dtype):
    """design._column_labels labels each distinct value once and spreads the labels by code; the
    reference is the canonical label of every row (design.level_label), which it replaced."""
    from bayeslmm.design import _column_labels, level_label
    try:
        s = pd.Series(values, dtype=dtype)
    except (TypeError, ValueError):
        pytest.skip("pandas refuses this dtype for these values")
    want = [level_label(v) for v in s.to_numpy(dtype=object)]
    assert list(_column_labels(s, "g", "test")) == want
