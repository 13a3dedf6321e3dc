"""The user-facing entry point: ``Model(formula, data).fit()``.

Chains the stages: formula -> spec -> design -> priors -> path (:func:`bayeslmm.paths.choose_path`)
-> sampling -> Fit. The sampling paths (and with them PyMC) are imported when a model is built or
fitted, not when this module is imported.
"""

from __future__ import annotations

import os
import time

import pandas as pd

from .design import Design, make_design
from .diagnostics import warn_if_problems
from .families import family_of
from .paths import Plan, choose_path
from .posterior import stored_var_names
from .priors import PriorTable, resolve_priors
from .results import Fit
from .errors import SpecError
from .spec import ModelSpec, SamplerSpec, build_spec, canonical_method

__all__ = ["Model", "fit", "group_loo", "check_posterior_size", "stage_profile", "STAGES"]


class Model:
    """A Bayesian (generalised) linear mixed model: formula + data + priors, ready to sample.

    Parameters
    ----------
    formula : str
        lme4 syntax, e.g. ``"Reaction ~ Days + (Days | Subject)"``; see :func:`parse_formula`.
    data : pandas.DataFrame, polars.DataFrame, dict of columns, Parquet path, or dask.dataframe.DataFrame
        Never modified. A polars frame or a dict is loaded into pandas. A Parquet file, directory or
        glob and a Dask DataFrame are read in chunks: the model is built from per-group statistics
        and never holds all rows (Gaussian family, nested factors; see :mod:`bayeslmm.bigfit`).
    family : str
        ``"gaussian"`` (default), ``"student_t"``, ``"bernoulli"``, ``"binomial"``, ``"poisson"`` or
        ``"negbinomial"`` (see :mod:`bayeslmm.families`); bernoulli, binomial, Poisson and negative
        binomial models with one grouping factor (1-3 terms) take the exact quadrature path
        (:mod:`bayeslmm.paths.quadrature_path`), other non-Gaussian models the non-centred path.
    priors : dict, optional
        Overrides keyed by parameter label or class, values like ``"normal(0, 10)"``; see
        :attr:`priors` for the labels and defaults.
    method : {"auto", "noncentred", "collapsed"}
        ``"auto"`` uses the exact collapsed path where it applies (one factor, nested factors, and
        crossed factors for Gaussian models), else the non-centred graph.
        ``"marginal"`` is accepted as the old name of ``"collapsed"``.
    missing : {"drop", "raise"}
        What to do with rows that have missing values in used columns (dropping prints a count).
    link : str, optional
        The family's link (bernoulli/binomial: ``"logit"`` default or ``"probit"``).
    trials : str, optional
        Binomial: the column of trials, with the successes as the response (or write
        ``cbind(successes, failures) ~ ...`` as in lme4).
    offset : str, optional
        A column added to the linear predictor as is, on the link scale (e.g. a log-exposure
        column); ``offset(log(exposure))`` in the formula does the same. No coefficient, no prior.
    engine : {"auto", "memory", "chunked", "dask"}
        ``"auto"``: Parquet paths and Dask DataFrames from statistics, in-memory data in pandas;
        ``"memory"``: load into pandas; ``"chunked"``: statistics read with pyarrow in chunks;
        ``"dask"``: statistics computed by Dask tasks (a path is read with Dask).
    cov : dict, optional
        Known covariances of random intercepts, ``{"animal": K}``: the term ``(1 | animal)`` then
        has u ~ N(0, sd^2 K). K is a DataFrame with the levels as index and columns, a tuple
        ``(array, labels)`` or a CSV/Parquet path (first column the labels); it must be symmetric
        PSD and cover every level of the data (:mod:`bayeslmm.covariance`). Its ICC is h^2.
    scheduler : str or dask scheduler, optional
        For the statistics passes: ``"tcp://host:8786"`` (a ``dask.distributed`` scheduler), a
        ``distributed.Client``, or ``"threads"``; default the active client, else local threads.
    weights : str, optional
        A column of observation weights (family gaussian), as lme4's ``weights`` and brms's
        ``| weights()``: **likelihood weights**, row i's log-likelihood counts ``w_i`` times
        (``w_i log N(y_i | eta_i, sigma)``), so an integer weight k is exactly the same as k copies
        of the row. Weights >= 0 (0 ignores the row); they are not precision weights of known
        variances (use ``y | se(s) ~ ...`` for those) and do not rescale to the number of rows.

    Examples
    --------
    >>> import bayeslmm as blmm
    >>> m = blmm.Model("Reaction ~ Days + (Days | Subject)", blmm.load_dataset("sleepstudy"))
    >>> m.priors["parameter"].tolist()
    ['Intercept', 'Days', 'sd(Subject, Intercept)', 'sd(Subject, Days)', 'cor(Subject)', 'sigma']
    >>> fit = m.fit(chains=2, draws=300, seed=1, progressbar=False)   # doctest: +SKIP
    """

    def __init__(self, formula: str | ModelSpec, data: pd.DataFrame, *, family: str = "gaussian",
                 priors: dict | None = None, method: str = "auto", missing: str = "drop",
                 link: str | None = None, trials: str | None = None, offset: str | None = None,
                 engine: str = "auto", scheduler=None, weights: str | None = None,
                 cov: dict | None = None):
        if isinstance(formula, ModelSpec):
            self.spec = formula
        else:
            self.spec = build_spec(formula, family=family, priors=priors, method=method, link=link,
                                   trials=trials, offset=offset, weights=weights)
        from .bigfit import in_memory, stats_design, wants_statistics
        t0 = time.perf_counter()
        if wants_statistics(data, engine):
            if weights is not None:
                raise SpecError("weights= needs the rows in memory (engine='memory'); the statistics "
                                "passes for Parquet paths and Dask DataFrames do not read weights yet.")
            self.design = stats_design(self.spec, data, missing=missing, engine=engine, scheduler=scheduler)
        else:
            self.design: Design = make_design(self.spec, in_memory(data), missing=missing)
        if cov:         # known covariances of random intercepts (kinship): checked against the levels
            from .covariance import attach_covariances
            self.design = attach_covariances(cov, self.design)
        self.prior_table: PriorTable = resolve_priors(self.spec, self.design)
        self.design_s = time.perf_counter() - t0      # the first stage of fit.info["stages"]

    @property
    def priors(self) -> pd.DataFrame:
        """Every prior, with its source (default scaled to the data, or user)."""
        return self.prior_table.to_frame()

    def __repr__(self) -> str:
        d = self.design
        kin = {k.factor for k in getattr(d, "kinship", ())}
        facs = ", ".join(f"{f.name} ({f.n_levels} levels: {', '.join(f.terms)}"
                         f"{'; known covariance K' if f.name in kin else ''})" for f in d.factors)
        return (f"<bayeslmm.Model {self.spec.formula.text!r}\n  family={self.spec.family}, n={d.n}"
                f"{f' ({d.n_dropped} dropped)' if d.n_dropped else ''}\n  fixed: {', '.join(d.fixed_terms)}"
                f"\n  groups: {facs or 'none'}\n{self.prior_table!r}>")

    def plan(self, method: str | None = None) -> Plan:
        """The sampling path that ``fit`` will use, and why (:func:`bayeslmm.paths.choose_path`)."""
        return choose_path(self.spec, self.design, method)

    def choose_method(self, method: str | None = None) -> tuple[str, str]:
        """``(path, reason)`` of :meth:`plan`."""
        p = self.plan(method)
        return p.path, p.reason

    def build(self, method: str = "noncentred"):
        """The PyMC model for ``method`` (for inspection, or to sample yourself)."""
        if self.plan(method).path == "kinship":
            from .paths.rotated import build_rotated_model, rotated_data
            return build_rotated_model(self.design, self.prior_table, rotated_data(self.design)[2])
        if canonical_method(method) != "noncentred" and self.plan(method).path == "quadrature":
            from .paths.quadrature_path import build_quadrature_model
            return build_quadrature_model(self.design, self.prior_table, self.spec.family, self.spec.link)
        if canonical_method(method) == "collapsed":
            plan = self.plan("collapsed")
            if plan.path == "crossed":
                from .paths.crossed_path import build_crossed_path_model
                return build_crossed_path_model(self.design, self.prior_table)
            from .paths.collapsed import build_collapsed_model
            return build_collapsed_model(self.design, self.prior_table, chain=plan.chain)
        from .paths.noncentred import build_model
        return build_model(self.design, self.prior_table, self.spec.family, self.spec.link)

    def fit(self, *, chains: int = 4, draws: int = 1000, tune: int = 1000, seed: int | None = None,
            target_accept: float | None = None, sampler: str = "pymc", cores: int | None = None,
            progressbar: bool = True, method: str | None = None, verbose: bool = True,
            init: str = "auto") -> Fit:
        """Sample the posterior with NUTS.

        Parameters
        ----------
        chains, draws, tune : int
            Defaults 4 x 1000 draws after 1000 tuning steps.
        seed : int, optional
            Same seed, same draws. If None a seed is drawn and recorded in ``fit.info["seed"]``.
        target_accept : float, optional
            NUTS target acceptance. Default: 0.8 on the exact (collapsed, crossed, kinship,
            quadrature) paths, 0.9 on the non-centred graph (see :data:`bayeslmm.spec.TARGET_ACCEPT`);
            raise it towards 0.99 if the diagnostics report divergences.
        sampler : {"pymc", "nutpie", "numpyro"}
        cores : int, optional
            Default ``min(chains, CPUs)``.
        method : str, optional
            Override the spec's method.
        verbose : bool
            Print the settings used.
        init : {"auto", "laplace", "pymc"}
            How PyMC's NUTS starts. "auto": on the collapsed paths, at overdispersed draws from a
            Laplace approximation with the mass matrix initialised from it (much shorter warm-up,
            same posterior); PyMC's own jittered start on the non-centred graph. "pymc": PyMC's
            start everywhere (with ``target_accept=0.9``, reproduces the draws of bayeslmm 0.1
            for the same seed).

        Returns
        -------
        Fit
        """
        settings = SamplerSpec(chains=chains, draws=draws, tune=tune, seed=seed,
                               target_accept=target_accept, sampler=sampler, cores=cores,
                               progressbar=progressbar, init=init)
        check_posterior_size(self.design, settings)
        from .sampling import resolve_seed, sample
        plan = self.plan(method)
        chosen, why = plan.path, plan.reason
        settings = settings.for_path(chosen)
        seed_used = resolve_seed(settings.seed)
        if verbose:
            print(f"bayeslmm: method={chosen} ({why}); NUTS sampler={settings.sampler}, "
                  f"{settings.chains} chains x {settings.draws} draws ({settings.tune} tune), "
                  f"cores={settings.n_cores}, target_accept={settings.target_accept}, seed={seed_used}")
        t0 = time.perf_counter()
        if chosen == "kinship":
            from .paths.rotated import sample_rotated
            idata, info = sample_rotated(self.design, self.prior_table, settings, seed=seed_used)
        elif chosen == "quadrature":
            from .paths.quadrature_path import sample_quadrature
            idata, info = sample_quadrature(self.design, self.prior_table, settings, self.spec.family,
                                            self.spec.link, seed=seed_used)
        elif chosen == "collapsed":
            from .paths.collapsed import sample_collapsed
            idata, info = sample_collapsed(self.design, self.prior_table, settings, seed=seed_used,
                                           chain=plan.chain)
        elif chosen == "crossed":
            from .paths.crossed_path import sample_crossed
            idata, info = sample_crossed(self.design, self.prior_table, settings, seed=seed_used)
        else:
            from .paths.noncentred import build_model
            model = build_model(self.design, self.prior_table, self.spec.family, self.spec.link)
            names = stored_var_names(self.design, family_of(self.spec).aux_names)
            setup_s = time.perf_counter() - t0
            idata, info = sample(model, settings, var_names=names, seed=seed_used)
            info["setup_s"] = setup_s
        info["total_s"] = time.perf_counter() - t0
        info["method"] = chosen
        info["method_reason"] = why
        t1 = time.perf_counter()
        fit = Fit(idata, self.spec, self.design, self.prior_table, settings, info)
        warn_if_problems(fit)   # a fit with problems says so loudly when it returns
        fit.info["stages"] = stage_profile(info, design_s=getattr(self, "design_s", 0.0),
                                           result_s=time.perf_counter() - t1)
        return fit


#: The stages of a fit, in order, as ``fit.info["stages"]`` reports them (seconds).
STAGES = ("design", "model build", "compile + init", "sampling", "posterior values",
          "group effects", "diagnostics + result")


def stage_profile(info: dict, *, design_s: float = 0.0, result_s: float = 0.0) -> dict[str, float]:
    """Seconds per stage of one fit, from the timings the sampling path put in ``info``.

    ``design``: formula, design and priors (``Model(...)``); ``model build``: sufficient statistics
    and the PyMC graph (``setup_s``); ``compile + init``: PyMC's compilation of the log-density and
    gradient and the initial point (``pm.sample``'s time outside its sampling loop); ``sampling``:
    the NUTS loop (PyMC's ``sampling_time``); ``posterior values``: the stored variables computed
    from the recorded unconstrained draws; ``group effects``: the exact draws of the group effects
    (collapsed paths); ``diagnostics + result``: building the :class:`Fit` and its convergence
    checks. Python imports are not included (measure them in a fresh process, as ``make bench``).
    """
    nuts = float(info.get("nuts_s", info.get("sampling_s", 0.0)))
    return dict(zip(STAGES, (
        float(design_s), float(info.get("setup_s", 0.0)),
        max(float(info.get("sampling_s", 0.0)) - nuts, 0.0), nuts,
        float(info.get("values_s", 0.0)), float(info.get("effects_s", 0.0)), float(result_s))))




def check_posterior_size(design: Design, settings: SamplerSpec, memory_bytes: int | None = None) -> int:
    """Refuse, before compiling or sampling, a posterior that cannot fit in memory.

    The estimate counts 8 bytes per stored value: every parameter (fixed effects, group effects,
    SDs, correlations, sigma) twice (constrained and unconstrained) plus ~20 sampler statistics,
    per draw and chain. Raises :class:`SpecError` when it exceeds half of ``memory_bytes`` (default:
    this machine's physical memory). Returns the estimate in bytes.
    """
    per_draw = len(design.fixed_terms) + 1
    for f in design.factors:
        per_draw += f.n_levels * f.q + f.q + len(f.correlation_pairs)
    need = 8 * settings.chains * settings.draws * (2 * per_draw + 20)
    if memory_bytes is None:
        try:
            memory_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):
            return need
    if need > memory_bytes / 2:
        raise SpecError(f"{settings.chains} chains x {settings.draws} draws of {per_draw} parameters "
                        f"need about {need / 2**30:.1f} GiB of memory, more than half of this machine's "
                        f"{memory_bytes / 2**30:.1f} GiB; use fewer draws (1000-4000 per chain is usual).")
    return need


def fit(formula: str, data: pd.DataFrame, **kwargs) -> Fit:
    """One call: ``Model(formula, data, ...)`` then ``.fit(...)``.

    Model options (family, link, trials, offset, priors, method, missing) and fit options (chains, draws, seed, ...)
    are routed to the right place.
    """
    model_keys = {"family", "priors", "method", "missing", "link", "trials", "offset", "engine", "scheduler",
                  "weights", "cov"}
    mk = {k: v for k, v in kwargs.items() if k in model_keys}
    fk = {k: v for k, v in kwargs.items() if k not in model_keys}
    return Model(formula, data, **mk).fit(**fk)


def group_loo(fit, **kwargs):
    """Leave-one-group-out PSIS-LOO (top-level groups) from the collapsed per-group log-likelihood.

    Any fit on the collapsed path; the LOO of a fit built from statistics (``Fit.loo`` calls it).
    Keyword arguments go to ``arviz.loo``.
    """
    import arviz as az
    import xarray as xr

    from .paths.elimination import group_log_likelihood
    tree = xr.DataTree.from_dict({k: fit.idata[k].to_dataset() for k in fit.idata.children})
    tree["log_likelihood"] = xr.DataTree(xr.Dataset({"y": group_log_likelihood(fit)}))
    return az.loo(tree, var_name="y", **kwargs)
