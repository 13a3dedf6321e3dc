"""TOML model files: a declarative, reproducible definition of a model, its data and its report.

A model file has up to five tables; only ``[model]`` (with ``formula``) and ``[data]`` are required::

    # models/sleepstudy_slopes.toml
    [model]
    name = "sleepstudy_slopes"                  # optional; default: the file name
    description = "Correlated random intercepts and slopes for Days"
    formula = "Reaction ~ Days + (Days | Subject)"
    # known standard errors (meta-analysis) are part of the formula, as in brms:
    # formula = "y | se(s) ~ 1 + (1 | study)"   # or se(s, sigma = TRUE) for an extra residual SD
    family = "gaussian"                         # optional (default "gaussian"; see bayeslmm.families)
    # link = "probit"                           # optional: the family's link (default: its first)
    # trials = "n"                              # binomial: column of trials (or cbind(s, f) ~ ...)
    # offset = "log_exposure"                   # column added to the linear predictor as is
    # weights = "w"                             # gaussian: likelihood weights (weight k = k copies of the row)
    method = "auto"                             # "auto" | "collapsed" | "noncentred" ("marginal" = "collapsed")
    missing = "drop"                            # "drop" (with a printed count) | "raise"

    [data]
    dataset = "sleepstudy"                      # a bundled data set (``bayeslmm datasets``) ...
    # path = "data/schools.csv"                 # ... or a .csv / .parquet file, relative to this file
    categorical = ["Subject"]                   # optional: columns read as text (ids, codes)

    [cov]                                       # optional: known covariances of random intercepts
    # animal = "kinship.csv"                    # (1 | animal) has u ~ N(0, sd^2 K); a CSV/Parquet file
                                                # relative to this file: a label column, then one
                                                # column per level (bayeslmm.covariance)

    [priors]                                    # optional overrides, keyed by the labels of `bayeslmm priors`
    sigma = "exponential(0.02)"
    "sd(Subject, Days)" = "halfnormal(10)"

    [sampler]                                   # optional; every key optional
    chains = 4
    draws = 1000
    tune = 1000
    seed = 1
    target_accept = 0.9
    sampler = "pymc"                            # "pymc" | "nutpie" | "numpyro"
    # cores = 2                                 # default min(chains, CPUs)
    # progressbar = true

    [report]                                    # optional
    title = "Sleep deprivation: random slopes"
    prob = 0.95                                 # interval probability in the tables
    plots = ["caterpillar", "shrinkage", "icc", "variance_components", "trace", "ppc"]
    icc_at = { Days = [0, 4.5, 9] }             # ICC at these covariate values (every combination
                                                # when several covariates are listed)

Every key is checked: an unknown key, a value of the wrong type, a data file that does not exist,
a formula that does not parse or a prior that cannot be read raises :class:`ModelFileError` with
the file and the key in the message and a hint on how to fix it.

:func:`load_model_file` reads a file into a frozen :class:`ModelFile`; :func:`dumps_model_file`
writes one back (``loads(dumps(m)) == m``).
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
import os
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import pandas as pd

from .errors import BayesLMMError, ModelFileError
from .families import FAMILIES, LINKS
from .spec import METHODS, SAMPLERS, ModelSpec, SamplerSpec, build_spec

__all__ = ["ModelFile", "DataSource", "ReportOptions", "load_model_file", "loads_model_file",
           "dumps_model_file", "save_model_file", "REPORT_PLOTS", "SCHEMA"]

REPORT_PLOTS = ("caterpillar", "shrinkage", "icc", "variance_components", "trace", "ppc")
MISSING = ("drop", "raise")
DATA_SUFFIXES = (".csv", ".parquet", ".pq")

# table -> key -> (expected kind, description). Kinds: str, int, float (int accepted), bool,
# list[str], table[list[float]] (icc_at), table[str] (priors: any key).
SCHEMA: dict[str, dict[str, tuple[str, str]]] = {
    "model": {
        "formula": ("str", "lme4 formula, e.g. \"Reaction ~ Days + (Days | Subject)\" (required)"),
        "family": ("str", f"one of {', '.join(FAMILIES)}"),
        "link": ("str", "the family's link: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in LINKS.items())),
        "trials": ("str", "binomial: column of trials (the response holds successes)"),
        "offset": ("str", "column added to the linear predictor as is (link scale), no coefficient"),
        "weights": ("str", "gaussian: column of likelihood weights (row i counts w_i times; >= 0)"),
        "method": ("str", f"one of {', '.join(METHODS)}"),
        "missing": ("str", f"one of {', '.join(MISSING)}"),
        "name": ("str", "a short name for outputs"),
        "description": ("str", "free text"),
    },
    "data": {
        "dataset": ("str", "a bundled data set name (see `bayeslmm datasets`)"),
        "path": ("str", "a .csv or .parquet file, relative to the model file"),
        "categorical": ("list[str]", "columns to read as text"),
        "engine": ("str", "how to read Parquet: auto (a directory or glob in chunks, from per-group statistics; a "
                          "file into pandas), memory, chunked (pyarrow), dask"),
        "scheduler": ("str", "engine = \"dask\": a dask.distributed scheduler address, e.g. \"tcp://host:8786\" "
                             "(default: local threads)"),
    },
    "priors": {},
    "cov": {},
    "sampler": {
        "chains": ("int", "number of chains"),
        "draws": ("int", "draws per chain after tuning"),
        "tune": ("int", "tuning steps per chain"),
        "seed": ("int", "random seed (non-negative)"),
        "target_accept": ("float", "NUTS target acceptance in (0, 1)"),
        "sampler": ("str", f"one of {', '.join(SAMPLERS)}"),
        "cores": ("int", "parallel chains"),
        "progressbar": ("bool", "show a progress bar"),
        "init": ("str", "how NUTS starts: auto (Laplace approximation on the collapsed paths), laplace, pymc"),
    },
    "report": {
        "title": ("str", "report title"),
        "prob": ("float", "interval probability in (0, 1)"),
        "plots": ("list[str]", f"any of {', '.join(REPORT_PLOTS)}"),
        "icc_at": ("table[list[float]]", "covariate -> values at which to report the ICC, "
                                         "e.g. icc_at = { Days = [0, 9] }"),
    },
}
REQUIRED_TABLES = ("model", "data")

_TYPE_WORDS = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
               "list[str]": "a list of strings", "table[list[float]]": "a table of number lists",
               "table[str]": "a table of strings"}


# ------------------------------------------------------------------------------------------------
# the parsed file


@dataclass(frozen=True, slots=True)
class DataSource:
    """Where the data of a model file come from: a bundled data set or a file.

    Attributes
    ----------
    dataset : str or None
        A bundled data set name (:func:`bayeslmm.load_dataset`).
    path : str or None
        The path as written in the file (relative paths are relative to ``base_dir``).
    base_dir : str
        The directory of the model file.
    categorical : tuple of str
        Columns read as text.
    engine : str
        ``Model``'s engine (:data:`bayeslmm.bigfit.ENGINES`); ``"auto"`` reads a Parquet directory
        or glob in chunks (statistics only) and loads a single file into pandas.
    scheduler : str or None
        A ``dask.distributed`` scheduler address for ``engine = "dask"``.
    """

    dataset: str | None = None
    path: str | None = None
    base_dir: str = "."
    categorical: tuple[str, ...] = ()
    engine: str = "auto"
    scheduler: str | None = None

    @property
    def many_files(self) -> bool:
        """A Parquet directory or glob pattern (not one file)."""
        return self.path is not None and (any(ch in self.path for ch in "*?[") or self.resolved_path.is_dir())

    @property
    def chunked(self) -> bool:
        """Whether the model is built from per-group statistics (the rows are never all in memory)."""
        if self.path is None:
            return False
        return self.engine in ("chunked", "dask") or (self.engine == "auto" and self.many_files)

    @property
    def resolved_path(self) -> Path | None:
        """The data file's absolute path (None for a bundled data set)."""
        if self.path is None:
            return None
        p = Path(self.path).expanduser()
        return p if p.is_absolute() else (Path(self.base_dir) / p).resolve()

    def describe(self) -> str:
        return f"bundled data set {self.dataset!r}" if self.dataset else str(self.resolved_path)

    def load(self, *, source: str = "model file") -> pd.DataFrame:
        """Read the data as a new DataFrame.

        Raises
        ------
        ModelFileError
            The file does not exist, cannot be read, or a ``categorical`` column is missing.
        """
        from .datasets import DATASETS, load_dataset

        if self.dataset is not None:
            if self.dataset not in DATASETS:
                raise ModelFileError(
                    f"{source}: key 'data.dataset' = {self.dataset!r} is not a bundled data set; "
                    f"use one of {', '.join(DATASETS)} (see `bayeslmm datasets`), or give "
                    "'data.path' = a CSV/Parquet file instead.")
            df = load_dataset(self.dataset)
        else:
            p = self.resolved_path
            if not p.is_file():
                raise ModelFileError(
                    f"{source}: key 'data.path' = {self.path!r}: data file {str(p)!r} does not exist. "
                    "Paths are relative to the model file's directory; fix the path or create the file.")
            try:
                if p.suffix.lower() == ".csv":
                    df = pd.read_csv(p, dtype={c: str for c in self.categorical})
                else:
                    df = pd.read_parquet(p)
            except ImportError as e:
                raise ModelFileError(f"{source}: key 'data.path' = {self.path!r}: reading Parquet needs "
                                     f"pyarrow ({e}); pip install pyarrow, or convert the data to CSV.") from e
            except Exception as e:  # noqa: BLE001 - any reader failure is a data file problem
                raise ModelFileError(f"{source}: key 'data.path' = {self.path!r}: cannot read {str(p)!r}: "
                                     f"{type(e).__name__}: {e}") from e
        missing = [c for c in self.categorical if c not in df.columns]
        if missing:
            raise ModelFileError(f"{source}: key 'data.categorical' names columns {missing} that are not in "
                                 f"the data ({self.describe()}); its columns are {list(df.columns)}.")
        for c in self.categorical:
            df[c] = df[c].astype(str)
        return df


@dataclass(frozen=True, slots=True)
class ReportOptions:
    """What the report shows.

    Attributes
    ----------
    title : str or None
        Report title (default: the model name).
    prob : float
        Interval probability of the tables.
    plots : tuple of str
        Plots to draw, from :data:`REPORT_PLOTS`.
    icc_at : tuple of (covariate, tuple of float)
        Covariate values at which to report the ICC of random-slope models; with several
        covariates, every combination (:meth:`icc_points`).
    """

    title: str | None = None
    prob: float = 0.95
    plots: tuple[str, ...] = REPORT_PLOTS
    icc_at: tuple[tuple[str, tuple[float, ...]], ...] = ()

    def icc_points(self) -> list[dict[str, float]]:
        """The ICC points of ``icc_at``: every combination of the listed covariate values.

        Examples
        --------
        >>> ReportOptions(icc_at=(("Days", (0.0, 9.0)), ("x", (1.0,)))).icc_points()
        [{'Days': 0.0, 'x': 1.0}, {'Days': 9.0, 'x': 1.0}]
        """
        if not self.icc_at:
            return []
        keys = [k for k, _ in self.icc_at]
        return [dict(zip(keys, combo)) for combo in itertools.product(*(v for _, v in self.icc_at))]

    def kwargs(self) -> dict:
        """Keyword arguments for :meth:`bayeslmm.Fit.report` (``title``, ``prob``, ``plots``, ``icc_at``)."""
        return {"title": self.title, "prob": self.prob, "plots": list(self.plots),
                "icc_at": self.icc_points() or None}


@dataclass(frozen=True, slots=True)
class ModelFile:
    """A model file: spec, data source, sampler settings, report options.

    Build one with :func:`load_model_file`; it is frozen and hashable.

    Examples
    --------
    >>> mf = loads_model_file('''
    ... [model]
    ... formula = "Yield ~ 1 + (1 | Batch)"
    ... [data]
    ... dataset = "Dyestuff"
    ... [sampler]
    ... seed = 3
    ... ''', source="dyestuff.toml")
    >>> mf.spec.formula.text, mf.sampler.seed, mf.name
    ('Yield ~ 1 + (1 | Batch)', 3, 'dyestuff')
    >>> loads_model_file(dumps_model_file(mf), source="dyestuff.toml") == mf
    True
    """

    spec: ModelSpec
    data: DataSource
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    report: ReportOptions = field(default_factory=ReportOptions)
    missing: str = "drop"
    name: str = "model"
    description: str = ""
    source: str = field(default="<string>", compare=False)
    #: ``[cov]``: (grouping factor, path as written) of known covariances; paths relative to ``cov_dir``
    cov: tuple = ()
    cov_dir: str = field(default=".", compare=False)

    def load_data(self) -> pd.DataFrame:
        """The model's data as a new DataFrame (see :meth:`DataSource.load`)."""
        return self.data.load(source=self.source)

    def build_model(self, data: pd.DataFrame | None = None):
        """A :class:`bayeslmm.Model` for this file (no sampling).

        Errors from the formula, data or priors are re-raised as :class:`ModelFileError` naming the
        file and the key to fix.
        """
        from .model import Model

        if data is None and (self.data.many_files or self.data.chunked):   # Parquet dir/glob: not read here
            df = str(self.data.resolved_path)
        else:
            df = self.load_data() if data is None else data
        engine = self.data.engine if data is None else "auto"
        cov = {g: str(Path(self.cov_dir) / p) for g, p in self.cov} or None
        try:
            model = Model(self.spec, df, missing=self.missing, engine=engine, scheduler=self.data.scheduler,
                          cov=cov)
        except BayesLMMError as e:
            key = {"PriorError": "table [priors]",
                   "DataError": "keys 'model.formula' / 'data'" + (" / [cov]" if cov else ""),
                   "FormulaError": "key 'model.formula'"}.get(type(e).__name__, "table [model]")
            raise ModelFileError(f"{self.source}: {key}: {e}") from e
        slopes = sorted({t for f in model.design.factors for t in f.terms if t != "Intercept"})
        bad = [k for k, _ in self.report.icc_at if k not in slopes]
        if bad:
            raise ModelFileError(
                f"{self.source}: key 'report.icc_at' names {bad}, which "
                + (f"are not random-slope terms of the model; its random-slope terms are {slopes}."
                   if slopes else "the model does not have: it has no random slopes, so its ICC does "
                   "not depend on covariates. Remove icc_at."))
        return model

    def with_sampler(self, **overrides) -> "ModelFile":
        """A copy with some sampler settings replaced (None values are ignored)."""
        kw = {k: v for k, v in overrides.items() if v is not None}
        if not kw:
            return self
        unknown = set(kw) - {f.name for f in fields(SamplerSpec)}
        if unknown:
            raise ModelFileError(f"{self.source}: unknown sampler setting(s) {sorted(unknown)}")
        return replace(self, sampler=_sampler_spec({**self.sampler.to_dict(), **kw}, self.source))

    def fit_kwargs(self) -> dict:
        """Keyword arguments for :meth:`bayeslmm.Model.fit` from the ``[sampler]`` table."""
        return self.sampler.to_dict()

    def to_dict(self) -> dict:
        """A plain dict in the file's layout (what :func:`dumps_model_file` writes)."""
        model = {"name": self.name}
        if self.description:
            model["description"] = self.description
        model.update({"formula": self.spec.formula.text, "family": self.spec.family,
                      "method": self.spec.method, "missing": self.missing})
        model.update({k: v for k, v in self.spec.to_dict().items() if k in ("link", "trials", "offset", "weights")})
        data: dict = {}
        if self.data.dataset is not None:
            data["dataset"] = self.data.dataset
        else:
            data["path"] = self.data.path
        if self.data.categorical:
            data["categorical"] = list(self.data.categorical)
        if self.data.engine != "auto":
            data["engine"] = self.data.engine
        if self.data.scheduler:
            data["scheduler"] = self.data.scheduler
        report: dict = {}
        if self.report.title is not None:
            report["title"] = self.report.title
        report["prob"] = self.report.prob
        report["plots"] = list(self.report.plots)
        if self.report.icc_at:
            report["icc_at"] = {k: list(v) for k, v in self.report.icc_at}
        out = {"model": model, "data": data}
        if self.spec.priors:
            out["priors"] = {k: p.text for k, p in self.spec.priors}
        if self.cov:
            out["cov"] = dict(self.cov)
        out["sampler"] = {k: v for k, v in self.sampler.to_dict().items() if v is not None}
        out["report"] = report
        return out


# ------------------------------------------------------------------------------------------------
# reading


def load_model_file(path: str | os.PathLike) -> ModelFile:
    """Read and validate a TOML model file.

    Parameters
    ----------
    path : str or path-like
        The ``.toml`` file. A relative ``data.path`` inside it is taken relative to its directory.

    Returns
    -------
    ModelFile

    Raises
    ------
    ModelFileError
        The file is missing or is not valid TOML, or a key is unknown, has the wrong type or an
        invalid value, or the data file does not exist. The message names the file and the key.

    Examples
    --------
    >>> mf = load_model_file("models/dyestuff_icc.toml")        # doctest: +SKIP
    >>> fit = mf.build_model().fit(**mf.fit_kwargs())            # doctest: +SKIP
    """
    p = Path(path)
    if p.is_dir():
        raise ModelFileError(f"{str(p)!r} is a folder, not a model file; give the path of a .toml "
                             "model file (the shipped examples are in models/*.toml).")
    if not p.is_file():
        raise ModelFileError(f"model file {str(p)!r} does not exist; check the path "
                             "(the shipped examples are in models/*.toml).")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{p}: cannot read the model file: {e}") from e
    return loads_model_file(text, source=str(p), base_dir=str(p.resolve().parent))


def loads_model_file(text: str, *, source: str = "<string>", base_dir: str | None = None,
                     check_data: bool = True) -> ModelFile:
    """Parse model-file text (see :func:`load_model_file`).

    Parameters
    ----------
    text : str
        TOML text.
    source : str
        Name used in error messages and to derive the default model name.
    base_dir : str, optional
        Directory that relative data paths are relative to (default: the current directory).
    check_data : bool
        Check that a ``data.path`` file exists (default True).
    """
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ModelFileError(f"{source}: not valid TOML: {e}. Strings need double quotes; "
                             "keys with spaces or parentheses need quotes too, e.g. "
                             "\"sd(Subject, Days)\" = \"halfnormal(10)\".") from e
    return parse_model_dict(raw, source=source, base_dir=base_dir or os.getcwd(), check_data=check_data)


def parse_model_dict(raw: dict, *, source: str = "<dict>", base_dir: str = ".",
                     check_data: bool = True) -> ModelFile:
    """Validate a dict with the model file's layout and build a :class:`ModelFile`."""
    _check_structure(raw, source)
    m, d = raw["model"], raw["data"]
    if "formula" not in m:
        raise ModelFileError(f"{source}: missing key 'model.formula'; add e.g. "
                             "formula = \"y ~ x + (1 | g)\" under [model].")
    for key, allowed in (("family", FAMILIES), ("method", METHODS), ("missing", MISSING)):
        if key in m and m[key] not in allowed:
            raise ModelFileError(f"{source}: key 'model.{key}' = {m[key]!r} is not allowed; "
                                 f"use one of {', '.join(allowed)}.")
    priors = raw.get("priors", {})
    parsed_priors = {}
    from .priors import parse_prior
    for k, v in priors.items():
        try:
            parsed_priors[k] = parse_prior(v, where=f"prior {k!r}")
        except BayesLMMError as e:
            raise ModelFileError(f"{source}: key 'priors.\"{k}\"': {e}") from e
    try:
        spec = build_spec(m["formula"], family=m.get("family", "gaussian"), priors=parsed_priors or None,
                          method=m.get("method", "auto"), link=m.get("link"), trials=m.get("trials"),
                          offset=m.get("offset"), weights=m.get("weights"))
    except BayesLMMError as e:
        raise ModelFileError(f"{source}: key 'model.formula' = {m['formula']!r}: {e}") from e

    data = _data_source(d, source, base_dir, check_data)
    sampler = _sampler_spec(raw.get("sampler", {}), source)
    report = _report_options(raw.get("report", {}), source)
    name = m.get("name") or Path(source).stem or "model"
    cov = tuple(raw.get("cov", {}).items())
    cov_dir = str(Path(base_dir).resolve())
    for g, p in cov:
        if check_data and not (Path(cov_dir) / p).exists():
            raise ModelFileError(f"{source}: key 'cov.{g}': file {p!r} not found (relative to "
                                 f"{cov_dir}); give the kinship matrix's CSV/Parquet path.")
    return ModelFile(spec=spec, data=data, sampler=sampler, report=report,
                     missing=m.get("missing", "drop"), name=name,
                     description=m.get("description", ""), source=source, cov=cov, cov_dir=cov_dir)


def _did_you_mean(key: str, options) -> str:
    close = difflib.get_close_matches(key, list(options), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def _type_ok(value, kind: str) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "list[str]":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == "table[str]":
        return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
    if kind == "table[list[float]]":
        def _num(x):
            return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
        return isinstance(value, dict) and all(
            _num(v) or (isinstance(v, list) and len(v) > 0 and all(_num(x) for x in v))
            for v in value.values())
    raise AssertionError(kind)


def _describe(value) -> str:
    kind = {str: "the string", bool: "the boolean", int: "the integer", float: "the number",
            list: "the list", dict: "the table"}.get(type(value), f"a {type(value).__name__}")
    return f"{kind} {value!r}" if not isinstance(value, dict) else f"{kind} {json.dumps(value, default=str)}"


def _check_structure(raw: dict, source: str) -> None:
    """Unknown tables/keys and wrong types, each naming the file and the key."""
    for key, value in raw.items():
        if key not in SCHEMA:
            where = "table" if isinstance(value, dict) else "key"
            raise ModelFileError(f"{source}: unknown {where} {key!r}.{_did_you_mean(key, SCHEMA)} "
                                 f"Allowed tables: {', '.join(f'[{t}]' for t in SCHEMA)}; fix or remove it.")
        if not isinstance(value, dict):
            raise ModelFileError(f"{source}: key {key!r} must be a table ([{key}] followed by its keys), "
                                 f"got {_describe(value)}.")
    for t in REQUIRED_TABLES:
        if t not in raw:
            hint = ('formula = "y ~ x + (1 | g)"' if t == "model"
                    else 'dataset = "sleepstudy" or path = "data/my.csv"')
            raise ModelFileError(f"{source}: missing table [{t}]; add it with e.g. [{t}] {hint}.")
    for table, keys in SCHEMA.items():
        if table not in raw:
            continue
        if table == "priors":
            for k, v in raw[table].items():
                if not isinstance(v, str):
                    raise ModelFileError(f"{source}: key 'priors.\"{k}\"' must be a string such as "
                                         f"\"normal(0, 10)\", got {_describe(v)}.")
            continue
        if table == "cov":
            for k, v in raw[table].items():
                if not isinstance(v, str):
                    raise ModelFileError(f"{source}: key 'cov.{k}' must be the path of a CSV/Parquet "
                                         f"kinship matrix, such as \"kinship.csv\", got {_describe(v)}.")
            continue
        for k, v in raw[table].items():
            if k not in keys:
                raise ModelFileError(
                    f"{source}: unknown key '{table}.{k}'.{_did_you_mean(k, keys)} "
                    f"Allowed keys in [{table}]: {', '.join(keys)}; fix or remove it.")
            kind, desc = keys[k]
            if not _type_ok(v, kind):
                raise ModelFileError(f"{source}: key '{table}.{k}' must be {_TYPE_WORDS[kind]} ({desc}), "
                                     f"got {_describe(v)}.")


def _data_source(d: dict, source: str, base_dir: str, check_data: bool) -> DataSource:
    if ("dataset" in d) == ("path" in d):
        raise ModelFileError(f"{source}: table [data] needs exactly one of 'data.dataset' (a bundled "
                             "data set) or 'data.path' (a CSV/Parquet file relative to the model file); "
                             f"got {'both' if 'dataset' in d else 'neither'}.")
    ds = DataSource(dataset=d.get("dataset"), path=d.get("path"),
                    base_dir=str(Path(base_dir).resolve()) if "path" in d else ".",
                    categorical=tuple(d.get("categorical", ())), engine=d.get("engine", "auto"),
                    scheduler=d.get("scheduler"))
    from .bigfit import ENGINES
    if ds.engine not in ENGINES:
        raise ModelFileError(f"{source}: key 'data.engine' = {ds.engine!r} is not allowed; use one of "
                             f"{', '.join(ENGINES)}.")
    if ds.dataset is not None:
        from .datasets import DATASETS
        if ds.dataset not in DATASETS:
            raise ModelFileError(f"{source}: key 'data.dataset' = {ds.dataset!r} is not a bundled data set."
                                 f"{_did_you_mean(ds.dataset, DATASETS)} Bundled: {', '.join(DATASETS)}; "
                                 "or use 'data.path' for your own CSV/Parquet file.")
    elif ds.many_files:
        from .data import _parquet_files
        try:
            _parquet_files(str(ds.resolved_path)) if check_data else None
        except BayesLMMError as e:
            raise ModelFileError(f"{source}: key 'data.path' = {ds.path!r}: {e}") from e
    else:
        if Path(ds.path).suffix.lower() not in DATA_SUFFIXES:
            raise ModelFileError(f"{source}: key 'data.path' = {ds.path!r} must end in "
                                 f"{', '.join(DATA_SUFFIXES)} (CSV or Parquet).")
        if check_data and not ds.resolved_path.is_file():
            raise ModelFileError(f"{source}: key 'data.path' = {ds.path!r}: data file "
                                 f"{str(ds.resolved_path)!r} does not exist. Paths are relative to the "
                                 "model file's directory; fix the path or create the file.")
    return ds


def _sampler_spec(d: dict, source: str) -> SamplerSpec:
    try:
        return SamplerSpec.from_dict(d)
    except BayesLMMError as e:
        m = re.search(r"'(\w+)' parameter", str(e))
        key = f"key 'sampler.{m.group(1)}'" if m else "table [sampler]"
        raise ModelFileError(f"{source}: {key}: {e}") from e


def _report_options(d: dict, source: str) -> ReportOptions:
    prob = float(d.get("prob", 0.95))
    if not 0 < prob < 1:
        raise ModelFileError(f"{source}: key 'report.prob' = {prob!r} must be in (0, 1), e.g. 0.95.")
    plots = tuple(d.get("plots", REPORT_PLOTS))
    bad = [p for p in plots if p not in REPORT_PLOTS]
    if bad:
        raise ModelFileError(f"{source}: key 'report.plots' has unknown plot(s) {bad}."
                             f"{_did_you_mean(bad[0], REPORT_PLOTS)} Choose from {', '.join(REPORT_PLOTS)}.")
    icc_at = tuple((k, tuple(float(x) for x in (v if isinstance(v, list) else [v])))
                   for k, v in d.get("icc_at", {}).items())
    return ReportOptions(title=d.get("title"), prob=prob, plots=plots, icc_at=icc_at)


# ------------------------------------------------------------------------------------------------
# writing

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(k: str) -> str:
    return k if _BARE_KEY.match(k) else json.dumps(k, ensure_ascii=False)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ModelFileError(f"cannot write the non-finite number {v!r} to TOML")
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # JSON string escapes are valid TOML basic strings
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise ModelFileError(f"cannot write {v!r} ({type(v).__name__}) to TOML")


def dumps_model_file(mf: ModelFile) -> str:
    """The model file as TOML text; :func:`loads_model_file` reads it back to an equal ModelFile."""
    lines = [f"# bayeslmm model file (written by bayeslmm; source: {mf.source})"]
    for table, content in mf.to_dict().items():
        lines.append("")
        lines.append(f"[{table}]")
        for k, v in content.items():
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"


def _relative(target: Path, path: Path) -> str:
    try:
        return Path(os.path.relpath(target.resolve(), path.resolve().parent)).as_posix()
    except ValueError:  # different drives on Windows
        return str(target)


def save_model_file(mf: ModelFile, path: str | os.PathLike) -> str:
    """Write ``mf`` to ``path`` as TOML. A relative data path is rewritten relative to the new file."""
    path = Path(path)
    if mf.data.path is not None:
        target = mf.data.resolved_path
        try:
            rel = os.path.relpath(target, path.resolve().parent)
        except ValueError:  # different drives on Windows
            rel = str(target)
        mf = replace(mf, data=replace(mf.data, path=Path(rel).as_posix(),
                                      base_dir=str(path.resolve().parent)))
    if mf.cov:      # kinship files: relative to the new file, as the data path
        mf = replace(mf, cov=tuple((g, _relative(Path(mf.cov_dir) / p, path)) for g, p in mf.cov),
                     cov_dir=str(path.resolve().parent))
    from .atomic import write_text
    write_text(path, dumps_model_file(mf))
    return str(path)
