"""The fitted model: posterior (an ArviZ DataTree) + spec + design + priors.

Stage 7. Pure xarray/ArviZ: this module never imports PyMC. ``Fit`` holds everything later stages
need (ICC, shrinkage, predictions, reports), so they work from the fit alone.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import xarray as xr

from .design import Design, make_design
from .errors import BayesLMMError
from .families import family_of
from .posterior import component_draws, sd_var, stack, term_dim
from .priors import PriorTable, resolve_priors
from .spec import ModelSpec, SamplerSpec
from .tables import as_table

__all__ = ["Fit", "load_fit", "summarize_draws", "FORMAT_VERSION"]

FORMAT_VERSION = 1

#: what a fit built from statistics (data read in chunks) offers instead of the rows' own values
PREDICT = ("Pass a pandas sample of rows to fit.predict(df_sample, kind='response', summary=False) "
           "(replicated data) or fit.predict(df_sample) (fitted means).")


def summarize_draws(draws: dict[str, xr.DataArray], prob: float = 0.95) -> pd.DataFrame:
    """ArviZ summary (mean, sd, HDI, ESS, R-hat, MCSE) of scalar draws keyed by label.

    Each value has dims ``(chain, draw)``. HDI columns are named ``hdi_lower`` / ``hdi_upper``;
    the probability is in ``df.attrs["ci_prob"]``.
    """
    ds = xr.Dataset({k: v.drop_vars([c for c in v.coords if c not in ("chain", "draw")])
                     for k, v in draws.items()})
    import arviz_stats as az      # the statistics only: arviz would also import its plots (matplotlib)
    tab = az.summary(ds, ci_kind="hdi", ci_prob=prob, round_to="none")
    lo, hi = [c for c in tab.columns if c.startswith("hdi")]
    tab = tab.rename(columns={lo: "hdi_lower", hi: "hdi_upper"})
    tab.attrs["ci_prob"] = prob
    return tab


class Fit:
    """A fitted Bayesian linear mixed model.

    Attributes
    ----------
    idata : xarray.DataTree
        The ArviZ-native posterior (groups ``posterior``, ``sample_stats``, ``observed_data``).
    spec : ModelSpec
    design : Design
    prior_table : PriorTable
    sampler : SamplerSpec
    info : dict
        Seed actually used, cores, sampler, method, timings.

    Examples
    --------
    >>> import bayeslmm as blmm
    >>> fit = blmm.Model("Yield ~ 1 + (1 | Batch)", blmm.load_dataset("Dyestuff")).fit(
    ...     chains=2, draws=200, tune=200, seed=1, progressbar=False)   # doctest: +SKIP
    >>> fit.summary().loc["Intercept", "mean"]                            # doctest: +SKIP
    1527.4...
    """

    def __init__(self, idata: xr.DataTree, spec: ModelSpec, design: Design, prior_table: PriorTable,
                 sampler: SamplerSpec, info: dict):
        self.idata = idata
        self.spec = spec
        self.design = design
        self.prior_table = prior_table
        self.sampler = sampler
        self.info = dict(info)
        self._cache: dict = {}          # derived arrays (log-likelihood); never saved

    # -- access ---------------------------------------------------------------------------
    @property
    def posterior(self) -> xr.Dataset:
        """The posterior draws as an xarray Dataset (dims chain, draw, ...)."""
        return self.idata["posterior"].to_dataset()

    @property
    def n_draws(self) -> int:
        p = self.posterior
        return p.sizes["chain"] * p.sizes["draw"]

    def draws(self, name: str) -> np.ndarray:
        """Posterior draws stacked over chains: shape (chains*draws, ...).

        ``name`` is a posterior variable (``"b"``, ``"sd_Subject"``, ``"r_Subject"``, ``"sigma"``)
        or one parameter's table label (``"Days"``, ``"sd(Subject, Days)"``,
        ``"cor(Subject, Intercept, Days)"``); see :func:`bayeslmm.accessors.draws_by_label`.
        """
        if name in self.idata["posterior"].data_vars:
            return stack(self.posterior[name])
        from .accessors import draws_by_label
        return draws_by_label(self, name)

    def __repr__(self) -> str:
        s = self.sampler
        return (f"<bayeslmm.Fit {self.spec.formula.text!r}: {self.design.n} rows, "
                f"{s.chains} chains x {s.draws} draws, method={self.info.get('method')}, "
                f"seed={self.info.get('seed')}>")

    # -- tables ---------------------------------------------------------------------------
    def summary(self, prob: float = 0.95) -> pd.DataFrame:
        """Fixed effects: mean, sd, HDI, bulk/tail ESS, R-hat, MCSE, one row per term.

        The intercept is on the original (uncentred) scale.
        """
        b = self.posterior["b"]
        return as_table(summarize_draws({t: b.sel(term=t) for t in self.design.fixed_terms}, prob))

    def variance_components(self, prob: float = 0.95) -> pd.DataFrame:
        """Group-level SDs, variances and correlations per grouping factor, plus sigma.

        Rows use lme4/brms labels: ``sd(Subject, Days)``, ``var(Subject, Days)``,
        ``cor(Subject, Intercept, Days)``, ``sigma``, ``var(Residual)``. Columns ``group``,
        ``term``, ``kind`` (sd/var/cor) and the posterior summary.
        """
        post = self.posterior
        family = family_of(self.spec)
        draws, meta = {}, []
        for f in self.design.factors:
            for t in f.terms:
                meta.append((f.name, t, "sd"))
            for i, j in f.correlation_pairs:
                meta.append((f.name, f"{f.terms[i]}, {f.terms[j]}", "cor"))
        meta += [("Residual", "", "sd") if a == "sigma" else ("Residual", a, "aux") for a in family.aux_names]
        draws.update(component_draws(post, self.design, family.aux_names))
        for f in self.design.factors:
            sd = post[sd_var(f.name)]
            for t in f.terms:
                draws[f"var({f.name}, {t})"] = sd.sel({term_dim(f.name): t}) ** 2
                meta.append((f.name, t, "var"))
        if family.known_se:    # var(Residual) is sigma^2 beyond the known SEs; none without sigma
            if family.aux_names:
                draws["var(Residual)"] = post["sigma"] ** 2
                meta.append(("Residual", "", "var"))
        else:
            from .icc import residual_variance_draws
            draws["var(Residual)"] = residual_variance_draws(self, post)
            meta.append(("Residual", "", "var"))
        tab = summarize_draws(draws, prob)
        tab.insert(0, "kind", [m[2] for m in meta])
        tab.insert(0, "term", [m[1] for m in meta])
        tab.insert(0, "group", [m[0] for m in meta])
        # logit/probit: a constant; known standard errors without sigma: no residual row at all
        if "var(Residual)" in draws and float(np.ptp(stack(draws["var(Residual)"]))) == 0.0:
            tab.loc["var(Residual)", ["sd", "mcse_mean", "mcse_sd"]] = 0.0
        tab.attrs["residual_scale"] = family.latent_scale
        return as_table(tab)

    # -- lme4/brms accessors (see bayeslmm.accessors) -------------------------------------------
    def fixef(self, **kwargs):
        """Fixed effects (mean, sd, HDI); see :func:`bayeslmm.accessors.fixef`."""
        from .accessors import fixef
        return fixef(self, **kwargs)

    def ranef(self, **kwargs) -> dict:
        """Group effects per factor, with intervals; see :func:`bayeslmm.accessors.ranef`."""
        from .accessors import ranef
        return ranef(self, **kwargs)

    def coef(self, **kwargs) -> dict:
        """Fixed part + group effect per group; see :func:`bayeslmm.accessors.coef`."""
        from .accessors import coef
        return coef(self, **kwargs)

    def VarCorr(self, **kwargs):  # noqa: N802 (lme4's name)
        """SDs and correlations per factor, printed like lme4's; see :func:`bayeslmm.accessors.VarCorr`."""
        from .accessors import VarCorr
        return VarCorr(self, **kwargs)

    def fitted(self, **kwargs):
        """Fitted means of the observed rows; see :func:`bayeslmm.accessors.fitted`."""
        self._rows("fitted values of the observed rows", PREDICT)
        from .accessors import fitted
        return fitted(self, **kwargs)

    def residuals(self, **kwargs):
        """Residuals ``y - mu``; see :func:`bayeslmm.accessors.residuals`."""
        self._rows("residuals of the observed rows", PREDICT)
        from .accessors import residuals
        return residuals(self, **kwargs)

    def r2(self, **kwargs):
        """Bayesian R^2 and Nakagawa's marginal/conditional R^2; see :func:`bayeslmm.accessors.r2`."""
        self._rows("R^2 (the variance of the fitted values over the rows)")
        from .accessors import r2
        return r2(self, **kwargs)

    def update(self, formula: str | None = None, **kwargs) -> "Fit":
        """Refit with a new formula, data or priors, reusing everything else (same seed); see
        :func:`bayeslmm.accessors.update`."""
        from .accessors import update
        return update(self, formula, **kwargs)

    def prior_predictive(self, **kwargs) -> xr.DataTree:
        """Draws from the prior and the data they imply; see :func:`bayeslmm.accessors.prior_predictive`."""
        self._rows("prior_predictive (simulated data at the observed rows)")
        from .accessors import prior_predictive
        return prior_predictive(self, **kwargs)

    def plot_spaghetti(self, **kwargs):
        """Fitted line per group for a random intercept and slope; see :func:`bayeslmm.plots.plot_spaghetti`."""
        self._rows("plot_spaghetti (the data points)")
        from .plots import plot_spaghetti
        return plot_spaghetti(self, **kwargs)

    def plot_prior_posterior(self, **kwargs):
        """Prior and posterior of each parameter, overlaid; see :func:`bayeslmm.plots.plot_prior_posterior`."""
        from .plots import plot_prior_posterior
        return plot_prior_posterior(self, **kwargs)

    # -- derived quantities, checks, plots, report (thin delegations; see the modules) -----
    def icc(self, **kwargs):
        """ICC posterior per grouping factor; see :func:`bayeslmm.icc.icc`."""
        from .icc import icc
        return icc(self, **kwargs)

    def shrinkage(self, **kwargs):
        """No/complete/partial pooling per group and shrinkage; see :func:`bayeslmm.shrinkage.shrinkage`."""
        self._rows("shrinkage (its no-pooling fits and projections are computed from the rows)")
        from .shrinkage import shrinkage
        return shrinkage(self, **kwargs)

    def pooling_factor(self, **kwargs) -> pd.DataFrame:
        """Gelman-Pardoe pooling factor; see :func:`bayeslmm.shrinkage.pooling_factor`."""
        self._rows("pooling_factor")
        from .shrinkage import pooling_factor
        return pooling_factor(self, **kwargs)

    def diagnostics(self, **kwargs):
        """Convergence checks with advice; see :func:`bayeslmm.diagnostics.diagnostics`."""
        from .diagnostics import diagnostics
        return diagnostics(self, **kwargs)

    def log_likelihood(self) -> xr.DataArray:
        """Pointwise log-likelihood, dims (chain, draw, obs); computed once and cached (``idata`` is
        not changed: :func:`bayeslmm.diagnostics.add_log_likelihood` stores it there)."""
        self._rows("the pointwise (per-row) log-likelihood",
                   "fit.loo() gives leave-one-group-out LOO from the per-group collapsed log-likelihood; "
                   "bayeslmm.paths.elimination.group_log_likelihood(fit) returns it.")
        from .diagnostics import pointwise_log_likelihood
        return pointwise_log_likelihood(self)

    def loo(self, kind: str = "auto", **kwargs):
        """PSIS-LOO, by observation or by group; see :func:`bayeslmm.elpd.loo`. Does not change the fit.

        ``kind="auto"``: leave-one-group-out (top-level groups, from the per-group collapsed
        log-likelihood) for more than 20,000 rows where it exists and for fits built from per-group
        statistics; else leave-one-observation-out. The result says which (``.loo_kind``)."""
        from .elpd import loo
        return loo(self, kind=kind, **kwargs)

    def posterior_predictive(self, **kwargs) -> xr.DataTree:
        """Replicated data for PPCs; see :func:`bayeslmm.diagnostics.posterior_predictive`."""
        self._rows("posterior_predictive (replicated data at the observed rows)", PREDICT)
        from .diagnostics import posterior_predictive
        return posterior_predictive(self, **kwargs)

    def predict(self, data=None, **kwargs):
        """Predictions for new data, for known and new groups; see :func:`bayeslmm.predict.predict`."""
        from .predict import predict
        return predict(self, data, **kwargs)

    def marginal_effects(self, variable: str, **kwargs):
        """Population-averaged (group effects integrated out) and conditional effects of a numeric
        predictor, with intervals; see :func:`bayeslmm.effects.marginal_effects`."""
        from .effects import marginal_effects
        return marginal_effects(self, variable, **kwargs)

    def plot_marginal_effects(self, variable: str, *, scale: str = "response", **kwargs):
        """The population-averaged curve over subject-specific curves; see
        :func:`bayeslmm.effects.plot_marginal_effects` (``kwargs`` go to :meth:`marginal_effects`)."""
        from .effects import marginal_effects, plot_marginal_effects
        return plot_marginal_effects(marginal_effects(self, variable, **kwargs), scale=scale)

    def plot_caterpillar(self, **kwargs):
        """Caterpillar plot of the group effects; see :func:`bayeslmm.plots.plot_caterpillar`."""
        from .plots import plot_caterpillar
        return plot_caterpillar(self, **kwargs)

    def plot_shrinkage(self, **kwargs):
        """No pooling -> partial pooling arrows; see :func:`bayeslmm.plots.plot_shrinkage`."""
        self._rows("plot_shrinkage")
        from .plots import plot_shrinkage
        return plot_shrinkage(self, **kwargs)

    def plot_shrinkage_vs_size(self, **kwargs):
        """Estimates and shrinkage against group size; see :func:`bayeslmm.plots.plot_shrinkage_vs_size`."""
        self._rows("plot_shrinkage_vs_size")
        from .plots import plot_shrinkage_vs_size
        return plot_shrinkage_vs_size(self, **kwargs)

    def plot_variance_components(self, **kwargs):
        """Posteriors of the SDs and correlations; see :func:`bayeslmm.plots.plot_variance_components`."""
        from .plots import plot_variance_components
        return plot_variance_components(self, **kwargs)

    def plot_icc(self, **kwargs):
        """ICC posteriors (and the ICC curve over x); see :func:`bayeslmm.plots.plot_icc`."""
        from .plots import plot_icc
        return plot_icc(self, **kwargs)

    def plot_trace(self, **kwargs):
        """Trace or rank plots; see :func:`bayeslmm.plots.plot_trace`."""
        from .plots import plot_trace
        return plot_trace(self, **kwargs)

    def plot_ppc(self, **kwargs):
        """Posterior predictive check; see :func:`bayeslmm.plots.plot_ppc`."""
        self._rows("plot_ppc (the observed data)", PREDICT)
        from .plots import plot_ppc
        return plot_ppc(self, **kwargs)

    def prior_sensitivity(self, scales=(0.5, 2.0), **kwargs) -> pd.DataFrame:
        """Refit with narrower/wider SD priors; see :func:`bayeslmm.sensitivity.prior_sensitivity`."""
        self._rows("prior_sensitivity (it refits on the rows)",
                   "Refit with Model(formula, data_path, priors=...) for each prior instead.")
        from .sensitivity import prior_sensitivity
        return prior_sensitivity(self, scales, **kwargs)

    def weakly_identified(self, **kwargs) -> pd.DataFrame:
        """Variance components the data do not identify; see :func:`bayeslmm.identifiability.weakly_identified`."""
        from .identifiability import weakly_identified
        return weakly_identified(self, **kwargs)

    def within_between(self, **kwargs) -> pd.DataFrame:
        """Within, between and within - between effects of ``within(x, g)`` / ``between(x, g)``;
        see :func:`bayeslmm.mundlak.within_between`."""
        from .mundlak import within_between
        return within_between(self, **kwargs)

    def report(self, out_dir, **kwargs) -> str:
        """Standalone HTML report plus tables, figures and fit.nc; see :func:`bayeslmm.report.write_report`."""
        self._rows("the HTML report (data summary, PPC and shrinkage plots)",
                   "Use fit.summary(), fit.variance_components(), fit.icc(), fit.loo() (per group) and "
                   "fit.save(); on the command line: bayeslmm fit MODEL.toml --no-report.")
        from .report import write_report
        return write_report(self, out_dir, **kwargs)

    def _rows(self, feature: str, alternative: str | None = None) -> None:
        """Raise a clear DataError when this fit holds statistics, not rows (:mod:`bayeslmm.bigfit`)."""
        from .bigfit import require_rows
        require_rows(self, feature, alternative)

    # -- persistence ----------------------------------------------------------------------
    def save(self, path) -> str:
        """Write the fit to a NetCDF file that :func:`load_fit` reads back.

        The file holds the posterior and sample stats, the used data columns (group
        ``bayeslmm_data``) and the spec, priors and sampler settings as JSON attributes, so the
        reloaded fit has the same design and every method works on it.
        """
        from .atomic import atomic_path

        path = str(path)
        tree = self.idata.copy()
        from .bigfit import is_stats_design, stats_tree
        if is_stats_design(self.design):       # statistics only: they are saved, never rows
            tree["bayeslmm_stats"] = xr.DataTree(stats_tree(self.design))
        else:
            frame = self.design.data_frame()
            cats = {c: [str(v) for v in frame[c].cat.categories] for c in frame.columns
                    if isinstance(frame[c].dtype, pd.CategoricalDtype)}
            # stored as col0, col1, ... with the names in an attribute: a name may hold '/' (an HDF5
            # path separator) or anything else a variable name cannot
            data = xr.Dataset({f"col{k}": ("row", _to_storable(frame[c])) for k, c in enumerate(frame.columns)})
            data.attrs["columns"] = json.dumps([str(c) for c in frame.columns])
            data.attrs["categories"] = json.dumps(cats)
            data.attrs["dtypes"] = json.dumps({c: str(frame[c].dtype) for c in frame.columns})
            tree["bayeslmm_data"] = xr.DataTree(data)
        tree.attrs = dict(tree.attrs)
        tree.attrs.update({
            "bayeslmm_format": FORMAT_VERSION,
            "bayeslmm_spec": json.dumps(self.spec.to_dict()),
            "bayeslmm_priors": json.dumps(self.prior_table.to_dict()),
            "bayeslmm_sampler": json.dumps(self.sampler.to_dict()),
            "bayeslmm_info": json.dumps(self.info, default=_jsonable),
            "bayeslmm_n_dropped": self.design.n_dropped,
        })
        with atomic_path(path) as tmp:      # a crash or Ctrl-C mid-save leaves the old file intact
            tree.to_netcdf(tmp, engine="h5netcdf")
        return path


def _to_storable(s: pd.Series) -> np.ndarray:
    if isinstance(s.dtype, pd.CategoricalDtype) or s.dtype == object or pd.api.types.is_string_dtype(s):
        return s.astype(str).to_numpy(dtype=object)
    return s.to_numpy()


def _jsonable(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    return str(o)


def load_fit(path) -> Fit:
    """Read a fit written by :meth:`Fit.save`.

    The design is rebuilt from the stored data with the stored formula, and the priors from the
    stored prior table, so the result behaves exactly like the saved fit.
    """
    tree = _open_fit_file(path)
    if "bayeslmm_spec" in tree.attrs and "bayeslmm_stats" in tree.children:   # a fit built from statistics
        from .bigfit import design_from_tree
        spec = ModelSpec.from_dict(json.loads(tree.attrs["bayeslmm_spec"]))
        design = design_from_tree(spec, tree["bayeslmm_stats"].to_dataset())
        del tree["bayeslmm_stats"]
        return Fit(tree, spec, design, resolve_priors(spec, design),
                   SamplerSpec.from_dict(json.loads(tree.attrs["bayeslmm_sampler"])),
                   json.loads(tree.attrs["bayeslmm_info"]))
    if "bayeslmm_spec" not in tree.attrs or "bayeslmm_data" not in tree.children:
        raise BayesLMMError(f"{path} is not a bayeslmm fit (no bayeslmm metadata); it may be a plain "
                            "ArviZ file: open it with arviz.from_netcdf instead.")
    try:
        return _fit_from_tree(tree, path)
    except BayesLMMError:
        raise
    except Exception as exc:
        raise BayesLMMError(f"{path}: the bayeslmm metadata in this file is damaged or from an "
                            f"incompatible version ({type(exc).__name__}: {exc}); refit the model "
                            "or read the draws with arviz.from_netcdf.") from exc


def _open_fit_file(path):
    """The file as a loaded DataTree, or a BayesLMMError naming the file and what is wrong with it."""
    from pathlib import Path

    p = Path(path)
    if p.is_dir():
        raise BayesLMMError(f"{path} is a folder, not a fit file; `bayeslmm fit` writes DIR/fit.nc.")
    if not p.is_file():
        raise BayesLMMError(f"fit file {str(path)!r} does not exist.")
    try:
        with open(p, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise BayesLMMError(f"{path}: cannot read the file ({exc.strerror or exc}).") from exc
    if head.startswith(b"CDF"):
        raise BayesLMMError(f"{path} is a NetCDF3 (classic) file; bayeslmm fits are NetCDF4/HDF5 "
                            "files written by Fit.save or `bayeslmm fit`.")
    if not head.startswith(b"\x89HDF\r\n\x1a\n"):
        raise BayesLMMError(f"{path} is not a NetCDF4/HDF5 file (it may be text, or another format); "
                            "bayeslmm fits are written by Fit.save or `bayeslmm fit`.")
    try:
        return xr.open_datatree(str(path), engine="h5netcdf").load()
    except Exception as exc:
        raise BayesLMMError(f"{path}: cannot read this HDF5/NetCDF4 file; it is truncated or corrupt "
                            f"({type(exc).__name__}: {exc}).") from exc


def _fit_from_tree(tree, path) -> Fit:
    data = tree["bayeslmm_data"].to_dataset()
    cats = json.loads(data.attrs.get("categories", "{}"))
    dtypes = json.loads(data.attrs.get("dtypes", "{}"))
    if "columns" in data.attrs:
        names = json.loads(data.attrs["columns"])
        frame = pd.DataFrame({c: data[f"col{k}"].to_numpy() for k, c in enumerate(names)})
    else:                                   # files written before the names were stored apart
        frame = pd.DataFrame({c: data[c].to_numpy() for c in data.data_vars})
    for c in frame.columns:
        if c in cats:
            frame[c] = pd.Categorical(frame[c].astype(str), categories=cats[c])
        elif dtypes.get(c) in ("object", "str", "string"):
            frame[c] = frame[c].astype(str)
    spec = ModelSpec.from_dict(json.loads(tree.attrs["bayeslmm_spec"]))
    design = replace(make_design(spec, frame, missing="raise"),
                     n_dropped=int(tree.attrs.get("bayeslmm_n_dropped", 0)))
    priors = resolve_priors(spec, design)
    sampler = SamplerSpec.from_dict(json.loads(tree.attrs["bayeslmm_sampler"]))
    info = json.loads(tree.attrs["bayeslmm_info"])
    del tree["bayeslmm_data"]
    if priors.to_dict() != json.loads(tree.attrs["bayeslmm_priors"]):
        raise BayesLMMError(f"{path}: the priors rebuilt from the stored data differ from the stored "
                            "prior table; the file was written by an incompatible bayeslmm version.")
    return Fit(tree, spec, design, priors, sampler, info)

