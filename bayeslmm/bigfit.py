"""Models built from per-group statistics: data bigger than memory (Parquet, Dask) on the collapsed path.

``Model(formula, data)`` with a Parquet file/directory/glob, a Dask DataFrame, or ``engine="chunked"``
/ ``"dask"``, never holds all rows: :func:`stats_design` runs the first pass
(:func:`bayeslmm.chunked_design.plan_design`: levels, counts, moments) and the statistics pass
(:func:`bayeslmm.chunked_stats.stats_pass`) and returns a :class:`StatsDesign`, which carries what
the collapsed Gaussian path, the default priors and the posterior's labels need:

* :class:`bayeslmm.stats.GroupStats` (``group_stats``; :func:`bayeslmm.stats.group_stats` and
  :func:`bayeslmm.stats.nesting_chain` return the design's own);
* :class:`bayeslmm.priors.DataScales` from the streamed moments (``scales``;
  :func:`bayeslmm.priors.data_scales` returns them), and the column means the fixed effects are
  centred at (``slope_means``);
* the level labels and term names of every factor, and the formulaic specs of the fixed part and
  of the random terms (so :func:`bayeslmm.predict.predict` works on new rows).

What needs the rows says so: ``design.y``, ``design.X``, ``factor.Z``, ``factor.codes`` and
``design.data_frame()`` raise :class:`~bayeslmm.errors.DataError` naming the source and the
alternative, and :func:`require_rows` gives the Fit's methods a message that names the feature.
Statistics are computed only for the Gaussian family and nested factors; other families, crossed
factors, offsets and binomial trials raise with the alternative (load the data into pandas).
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from .errors import DataError, SpecError
from .priors import DataScales

__all__ = ["ENGINES", "StatsFactor", "StatsDesign", "is_stats_design", "wants_statistics", "in_memory",
           "stats_design", "require_rows", "stats_tree", "design_from_tree"]

#: ``"auto"``: Parquet paths and Dask DataFrames -> statistics, in-memory data -> pandas;
#: ``"memory"``: load into pandas; ``"chunked"``: statistics, read with pyarrow (or pandas slices);
#: ``"dask"``: statistics computed by Dask (a path is read with ``dask.dataframe.read_parquet``)
ENGINES = ("auto", "memory", "chunked", "dask")


def _rows_error(source: str, what: str) -> DataError:
    return DataError(
        f"{what} needs the rows, but this model was built from per-group statistics of {source} (the data "
        "were read in chunks and only the statistics kept). Work on a sample of rows in pandas instead "
        "(e.g. pass data=df_sample where the method takes data), or load the data into pandas and fit "
        "with engine='memory'.")


def require_rows(fit_or_design, feature: str, alternative: str | None = None) -> None:
    """Raise a :class:`DataError` naming ``feature`` if the design holds statistics, not rows.

    ``alternative`` replaces the default advice (a pandas sample of rows, or engine='memory').
    """
    design = getattr(fit_or_design, "design", fit_or_design)
    if not is_stats_design(design):
        return
    if alternative is None:
        raise _rows_error(design.source, feature)
    raise DataError(f"{feature} needs the rows, but this model was built from per-group statistics of "
                    f"{design.source} (only the statistics are kept). {alternative}")


def is_stats_design(design) -> bool:
    """True for a :class:`StatsDesign` (statistics, no rows)."""
    return getattr(design, "group_stats", None) is not None


@dataclass(frozen=True)
class StatsFactor:
    """A grouping factor as :class:`bayeslmm.design.FactorDesign` describes it, without the rows.

    ``z_mean``, ``z_min``, ``z_max`` are the streamed moments of the random-effect columns over the
    kept rows (the ICC's default covariate points); ``sizes`` the rows per level (None where the
    statistics do not hold it: a factor below the top without a random intercept).
    """

    name: str
    levels: tuple[str, ...]
    terms: tuple[str, ...]
    blocks: tuple[tuple[int, ...], ...]
    correlated: tuple[bool, ...]
    term_specs: tuple = field(repr=False, default=())
    texts: tuple[str, ...] = ()
    sizes: np.ndarray | None = field(repr=False, default=None)
    z_mean: tuple = ()
    z_min: tuple = ()
    z_max: tuple = ()
    source: str = field(repr=False, default="")

    n_levels = property(lambda self: len(self.levels))
    q = property(lambda self: len(self.terms))
    columns = property(lambda self: tuple(self.name.split(":")))

    @property
    def has_correlation(self) -> bool:
        return any(c and len(b) > 1 for b, c in zip(self.blocks, self.correlated))

    @property
    def group_sizes(self) -> np.ndarray:
        if self.sizes is None:
            raise _rows_error(self.source, f"the group sizes of {self.name!r} (no random intercept)")
        return self.sizes

    @property
    def correlation_pairs(self) -> list[tuple[int, int]]:
        out = []
        for b, c in zip(self.blocks, self.correlated):
            if c:
                out += [(b[i], b[j]) for i in range(len(b)) for j in range(i + 1, len(b))]
        return out

    def parent(self, factors) -> "StatsFactor | None":
        if ":" not in self.name:
            return None
        head = self.name.rsplit(":", 1)[0]
        return next((f for f in factors if f.name == head), None)

    @property
    def codes(self):
        raise _rows_error(self.source, f"the level of each row of {self.name!r}")

    @property
    def Z(self):  # noqa: N802 (the name of FactorDesign's attribute)
        raise _rows_error(self.source, f"the random-effect columns of {self.name!r}")


@dataclass(frozen=True)
class StatsDesign:
    """What :class:`bayeslmm.design.Design` holds, with per-group statistics in place of the rows.

    Attributes
    ----------
    group_stats : GroupStats
        The collapsed path's sufficient statistics (factors in chain order, top first).
    chain_names : tuple of str
        The factors top -> deepest; ``chain`` gives them as :class:`StatsFactor`.
    scales : DataScales
        What the default priors are scaled by (streamed moments of the kept rows).
    x_mean : ndarray (p,)
        Column means of the fixed-effect columns.
    source : str
        Where the rows are (``"Parquet directory 'data/' (12 files)"``).
    examples : DataFrame
        A few rows (one per level of each categorical column) on which formulaic learnt the specs;
        kept so a saved fit rebuilds the same specs.
    """

    response: str
    fixed_terms: tuple[str, ...]
    factors: tuple[StatsFactor, ...]
    group_stats: object = field(repr=False)
    chain_names: tuple[str, ...] = ()
    chain_reason: str = ""
    scales: DataScales = field(repr=False, default=None)
    x_mean: np.ndarray = field(repr=False, default=None)
    n: int = 0
    n_dropped: int = 0
    notes: tuple[str, ...] = ()
    fixed_spec: object = field(repr=False, default=None)
    source: str = ""
    examples: pd.DataFrame = field(repr=False, default=None)
    trials = None
    offset = None
    offset_source = ()
    trials_source = None

    @property
    def columns(self) -> tuple:
        """The used columns other than the response (names and dtypes; no values)."""
        from .design import ColumnData
        ex = self.examples
        return tuple(ColumnData(c, np.zeros(0), ex[c].dtype) for c in ex.columns if c != self.response)

    @property
    def has_intercept(self) -> bool:
        return "Intercept" in self.fixed_terms

    @property
    def slope_columns(self) -> tuple[int, ...]:
        return tuple(j for j, t in enumerate(self.fixed_terms) if t != "Intercept")

    @property
    def slope_means(self) -> np.ndarray:
        idx = list(self.slope_columns)
        return np.asarray(self.x_mean)[idx] if idx else np.zeros(0)

    @property
    def chain(self) -> tuple[StatsFactor, ...]:
        return tuple(self.factor(n) for n in self.chain_names)

    def factor(self, name: str) -> StatsFactor:
        for f in self.factors:
            if f.name == name:
                return f
        raise KeyError(f"no grouping factor {name!r}; factors are {[f.name for f in self.factors]}")

    @property
    def nested(self) -> bool:
        return any(f.parent(self.factors) is not None for f in self.factors)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(self.examples.columns) if self.examples is not None else (self.response,)

    @property
    def y(self):
        raise _rows_error(self.source, "the response of each row")

    @property
    def X(self):  # noqa: N802
        raise _rows_error(self.source, "the fixed-effect columns of each row")

    def data_frame(self, y=None):
        raise _rows_error(self.source, "the data frame of the used columns")


# --------------------------------------------------------------------------------------------
# Choosing the engine
# --------------------------------------------------------------------------------------------
def _check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise DataError(f"the 'engine' parameter must be one of {ENGINES}. Got {engine!r} instead.")


def wants_statistics(data, engine: str = "auto") -> bool:
    """Whether ``Model`` builds ``data`` from statistics (True) or loads it into pandas (False)."""
    _check_engine(engine)
    if engine in ("chunked", "dask"):
        return True
    if engine == "memory":
        return False
    if isinstance(data, (str, os.PathLike)):
        return True
    from .data import Source
    if isinstance(data, Source):
        return data.kind in ("parquet", "dask")
    root = type(data).__module__.split(".")[0]
    return root == "dask" or (root == "pyarrow" and type(data).__name__ != "Table")


def in_memory(data) -> pd.DataFrame:
    """``data`` as a pandas DataFrame: pandas as it is (never copied), anything else through
    :func:`bayeslmm.data.as_source` (a dict, polars, a Parquet path or a Dask DataFrame: loaded,
    with an error naming the size when it would take over a quarter of this machine's memory)."""
    if isinstance(data, pd.DataFrame):
        return data
    from .data import as_source
    return as_source(data).to_pandas()


@contextmanager
def _scheduler(scheduler):
    """A scheduler address (``"tcp://host:8786"``) opens a ``distributed.Client`` for the passes."""
    if isinstance(scheduler, str) and "://" in scheduler:
        from .data import _require
        distributed = _require("distributed", "a Dask scheduler address")
        client = distributed.Client(scheduler, set_as_default=False)
        try:
            yield client
        finally:
            client.close()
    else:
        yield scheduler


def _refuse(spec) -> None:
    """The features that need all rows in memory, named with the alternative."""
    how = "load the data into pandas (e.g. pandas.read_parquet) and pass the DataFrame, or pass engine='memory'"
    if spec.family != "gaussian":
        raise SpecError(f"family {spec.family!r} with data read in chunks: only the Gaussian likelihood has "
                        f"per-group sufficient statistics, other families sample every random effect from the "
                        f"rows. To fit it, {how}.")
    if getattr(spec, "offset", None) or getattr(spec, "trials", None):
        raise SpecError(f"an offset with data read in chunks: the collapsed path does not take offsets. To fit "
                        f"it, {how}.")
    if spec.method == "noncentred":
        raise SpecError(f"method='noncentred' with data read in chunks: the non-centred graph samples every "
                        f"random effect from the rows. Use method='auto' (the collapsed path), or {how}.")
    if not spec.formula.random:
        raise SpecError(f"a model without grouping factors with data read in chunks: the statistics are "
                        f"per group. Add a grouping factor, or {how}.")


def stats_design(spec, data, *, missing: str = "drop", engine: str = "auto", scheduler=None,
                 chunk_rows: int | None = None) -> StatsDesign:
    """The :class:`StatsDesign` of ``spec`` on ``data``: two passes over the rows, none kept.

    Parameters
    ----------
    spec : ModelSpec
    data : Parquet file/directory/glob, Dask DataFrame, pyarrow dataset, or in-memory data
    missing : {"drop", "raise"}
    engine : {"auto", "chunked", "dask"}
        ``"dask"``: a path is read with ``dask.dataframe.read_parquet`` and a pandas frame split into
        Dask partitions, so the passes run as Dask tasks.
    scheduler : str or dask scheduler, optional
        ``"tcp://host:port"`` of a ``dask.distributed`` scheduler (a client is opened for the passes
        and closed after), a ``distributed.Client``, or ``"threads"``/``"sync"``; default: the active
        client, else a local threaded pass.
    chunk_rows : int, optional
        Rows per chunk for pyarrow and pandas sources.

    Raises
    ------
    SpecError
        Non-Gaussian family, offset, method='noncentred', no grouping factor, crossed factors.
    """
    from .chunked_design import plan_design
    from .chunked_stats import stats_pass
    from .data import as_source

    _check_engine(engine)
    _refuse(spec)
    if engine == "dask" and isinstance(data, pd.DataFrame):
        from .data import _require
        dd = _require("dask.dataframe", "engine='dask'")
        rows = chunk_rows or (1 << 18)
        data = dd.from_pandas(data, npartitions=max(1, -(-len(data) // rows)), sort=False)
    src = as_source(data, chunk_rows=chunk_rows, engine="dask" if engine == "dask" else "pyarrow")
    with _scheduler(scheduler) as sched:
        plan = plan_design(spec, src, missing=missing, scheduler=sched)
        try:
            sp = stats_pass(plan, src, scheduler=sched)
        except SpecError as e:
            raise SpecError(f"{e} (data: {src.description})") from None
    stats = sp.stats
    chain = plan.chain
    factors = []
    for i, fp in enumerate(plan.factors):
        level = [f.name for f in chain].index(fp.name)
        zm = sp.Z_moments[i]
        factors.append(StatsFactor(
            name=fp.name, levels=tuple(fp.labels), terms=fp.terms, blocks=fp.blocks, correlated=fp.correlated,
            term_specs=fp.term_specs, texts=fp.texts, sizes=_sizes(stats, level, fp.terms),
            z_mean=tuple(map(float, zm.mean)), z_min=tuple(map(float, zm.min)), z_max=tuple(map(float, zm.max)),
            source=src.description))
    scales = DataScales(float(sp.y_moments.mean[0]), float(sp.y_moments.sd[0]),
                        tuple(map(float, sp.X_moments.sd)), tuple(tuple(map(float, m.sd)) for m in sp.Z_moments))
    design = StatsDesign(
        response=plan.response, fixed_terms=plan.fixed_terms, factors=tuple(factors), group_stats=stats,
        chain_names=tuple(f.name for f in chain), scales=scales, x_mean=np.asarray(sp.X_moments.mean, dtype=float),
        n=plan.n, n_dropped=plan.n_dropped, notes=plan.notes, fixed_spec=plan.fixed_spec, source=src.description,
        examples=plan.scan.examples)
    return replace(design, chain_reason=_chain_reason(design))


def _chain_reason(design: StatsDesign) -> str:
    chain = design.chain
    what = "data read in chunks, per-group statistics"
    if len(chain) == 1:
        f = chain[0]
        kind = "correlated" if f.has_correlation else "uncorrelated" if f.q > 1 else "one"
        return (f"gaussian, one grouping factor ({f.name}, {f.q} {kind} term{'s' if f.q > 1 else ''}): random "
                f"effects integrated out exactly; {what}")
    return (f"gaussian, nested factors {' > '.join(f.name for f in chain)}: random effects integrated out "
            f"exactly; {what}")


def _sizes(stats, level: int, terms) -> np.ndarray | None:
    if level == 0:
        return stats.n_obs.astype(np.int64)
    if "Intercept" in terms:
        i = terms.index("Intercept")
        return np.rint(stats.ZtZ[level][:, i, i]).astype(np.int64)
    return None


# --------------------------------------------------------------------------------------------
# Saving: the statistics travel in the fit file, never the rows
# --------------------------------------------------------------------------------------------
def stats_tree(design: StatsDesign):
    """An ``xarray.Dataset`` of the design's statistics and metadata (group ``bayeslmm_stats``)."""
    import xarray as xr

    s = design.group_stats
    arrays = {"b0": s.b0, "XtX": s.XtX, "Xte": s.Xte, "ete": s.ete, "n_obs": s.n_obs, "x_mean": design.x_mean}
    for l in range(s.L):
        arrays[f"ZtZ_{l}"], arrays[f"ZtX_{l}"], arrays[f"Zte_{l}"] = s.ZtZ[l], s.ZtX[l], s.Zte[l]
        arrays[f"n_nodes_{l}"] = s.n_nodes[l]
        for m in range(l):
            arrays[f"anc_{l}_{m}"], arrays[f"ZtZa_{l}_{m}"] = s.anc[l][m], s.ZtZa[l][m]
    ds = xr.Dataset({k: (tuple(f"{k}_{i}" for i in range(np.ndim(v))), np.asarray(v)) for k, v in arrays.items()})
    ex = design.examples
    meta = {
        "names": s.names, "q": s.q, "blocks": s.blocks, "correlated": s.correlated, "J": s.J, "p": s.p,
        "response": design.response, "fixed_terms": design.fixed_terms, "chain_names": design.chain_names,
        "chain_reason": design.chain_reason, "n": design.n, "n_dropped": design.n_dropped, "notes": design.notes,
        "source": design.source, "scales": [design.scales.y_mean, design.scales.y_sd, design.scales.x_sd,
                                            design.scales.z_sd],
        "factors": [{"name": f.name, "levels": f.levels, "terms": f.terms, "blocks": f.blocks,
                     "correlated": f.correlated, "texts": f.texts, "z_mean": f.z_mean, "z_min": f.z_min,
                     "z_max": f.z_max, "sizes": None if f.sizes is None else f.sizes.tolist()}
                    for f in design.factors],
        "examples": {"data": ex.astype(object).where(ex.notna(), None).to_dict(orient="list"),
                     "dtypes": {c: str(t) for c, t in ex.dtypes.items()},
                     "categories": {c: [v.item() if hasattr(v, "item") else v for v in t.categories]
                                    for c, t in ex.dtypes.items() if isinstance(t, pd.CategoricalDtype)}},
    }
    ds.attrs["meta"] = json.dumps(meta, default=_jsonable)
    return ds


def _jsonable(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def design_from_tree(spec, ds) -> StatsDesign:
    """The :class:`StatsDesign` saved by :func:`stats_tree` (formulaic specs re-learnt on the examples)."""
    from .design import _model_matrix
    from .stats import GroupStats

    meta = json.loads(ds.attrs["meta"])
    a = {k: ds[k].to_numpy() for k in ds.data_vars}
    L = len(meta["q"])
    tup = lambda x: tuple(tuple(v) if isinstance(v, list) else v for v in x)  # noqa: E731
    stats = GroupStats(
        names=tuple(meta["names"]), q=tuple(meta["q"]), blocks=tuple(tup(b) for b in meta["blocks"]),
        correlated=tuple(tuple(c) for c in meta["correlated"]), J=tuple(meta["J"]), p=int(meta["p"]),
        b0=a["b0"], anc=tuple(tuple(a[f"anc_{l}_{m}"].astype(np.int64) for m in range(l)) for l in range(L)),
        ZtZ=tuple(a[f"ZtZ_{l}"] for l in range(L)),
        ZtZa=tuple(tuple(a[f"ZtZa_{l}_{m}"] for m in range(l)) for l in range(L)),
        ZtX=tuple(a[f"ZtX_{l}"] for l in range(L)), Zte=tuple(a[f"Zte_{l}"] for l in range(L)),
        XtX=a["XtX"], Xte=a["Xte"], ete=a["ete"], n_obs=a["n_obs"],
        n_nodes=tuple(a[f"n_nodes_{l}"] for l in range(L)))
    exm = meta["examples"]
    ex = pd.DataFrame(exm["data"])
    for c, t in exm["dtypes"].items():
        if c in exm["categories"]:
            ex[c] = pd.Categorical(ex[c], categories=exm["categories"][c])
        else:
            ex[c] = ex[c].astype(t)
    f = spec.formula
    fixed_spec = _model_matrix(f.fixed, ex, "the fixed part").model_spec
    by_text = {t.text: t for t in f.random}
    source = meta["source"]
    factors = tuple(StatsFactor(
        name=m["name"], levels=tuple(m["levels"]), terms=tuple(m["terms"]), blocks=tup(m["blocks"]),
        correlated=tuple(m["correlated"]), texts=tuple(m["texts"]),
        term_specs=tuple(_model_matrix(by_text[t].expr, ex, f"random term {t}").model_spec for t in m["texts"]),
        sizes=None if m["sizes"] is None else np.asarray(m["sizes"], dtype=np.int64),
        z_mean=tuple(m["z_mean"]), z_min=tuple(m["z_min"]), z_max=tuple(m["z_max"]), source=source)
        for m in meta["factors"])
    sc = meta["scales"]
    return StatsDesign(
        response=meta["response"], fixed_terms=tuple(meta["fixed_terms"]), factors=factors, group_stats=stats,
        chain_names=tuple(meta["chain_names"]), chain_reason=meta["chain_reason"],
        scales=DataScales(sc[0], sc[1], tuple(sc[2]), tuple(tuple(z) for z in sc[3])), x_mean=a["x_mean"],
        n=int(meta["n"]), n_dropped=int(meta["n_dropped"]), notes=tuple(meta["notes"]), fixed_spec=fixed_spec,
        source=source, examples=ex)
