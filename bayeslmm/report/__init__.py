"""Standalone HTML report and exports of a fit.

``write_report(fit, out_dir)`` writes::

    out_dir/report.html          standalone: opens offline, every figure embedded as base64 PNG
    out_dir/tables/*.csv, *.json fixed effects, variance components, ICC, shrinkage, pooling,
                                 diagnostics (checks and per parameter), priors, group sizes
    out_dir/figures/*.png        the same figures as files
    out_dir/fit.nc               the fit (Fit.save; blmm.load_fit reads it back)
    out_dir/summary.json         model, sampler settings, diagnostics verdict, file list

The report draws results computed by icc, shrinkage and diagnostics and figures from plots.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from ..atomic import atomic_path, write_text

__all__ = ["write_report", "export_tables"]

_TEMPLATES = Path(__file__).with_name("templates")


def _fmt_num(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        if not np.isfinite(v):
            return "" if np.isnan(v) else str(v)
        a = abs(v)
        if a != 0 and (a >= 1e5 or a < 1e-3):
            return f"{v:.3e}"
        return f"{v:.4g}" if a < 1000 else f"{v:.1f}"
    return str(v)      # DataFrame.to_html(escape=True) escapes it


def _html_table(df: pd.DataFrame, index: bool = True) -> Markup:
    d = df.copy()
    return Markup(d.to_html(index=index, classes="tbl", border=0, escape=True,
                            formatters={c: _fmt_num for c in d.columns}, na_rep=""))


def _save_fig(fig, path: Path, dpi: int) -> dict:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return {"name": path.stem, "path": str(path), "b64": base64.b64encode(path.read_bytes()).decode("ascii")}


def export_tables(tables: dict[str, pd.DataFrame], out: Path) -> list[str]:
    """Write each table as ``name.csv`` and ``name.json`` (records) under ``out``; return the paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, df in tables.items():
        csv, js = out / f"{name}.csv", out / f"{name}.json"
        with atomic_path(csv) as tmp:
            df.to_csv(tmp)
        write_text(js, df.reset_index().to_json(orient="records", indent=1, default_handler=str))
        paths += [str(csv), str(js)]
    return paths


def _factors_table(design) -> pd.DataFrame:
    rows = []
    for f in design.factors:
        n = f.group_sizes
        blocks = "; ".join(("correlated " if c and len(b) > 1 else "") + ", ".join(f.terms[i] for i in b)
                           for b, c in zip(f.blocks, f.correlated))
        parent = f.parent(design.factors)
        rows.append({"factor": f.name, "levels": f.n_levels, "terms": ", ".join(f.terms),
                     "covariance blocks": blocks, "nested in": parent.name if parent else "",
                     "rows per level (min)": int(n.min()), "median": float(np.median(n)),
                     "max": int(n.max())})
    return pd.DataFrame(rows)


def _data_table(design) -> pd.DataFrame:
    frame = design.data_frame()
    rows = []
    for c in frame.columns:
        s = frame[c]
        if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
            rows.append({"column": c, "type": "numeric", "n": int(s.notna().sum()), "mean": float(s.mean()),
                         "sd": float(s.std()), "min": float(s.min()), "max": float(s.max()),
                         "levels": np.nan})
        else:
            rows.append({"column": c, "type": "categorical", "n": int(s.notna().sum()), "mean": np.nan,
                         "sd": np.nan, "min": np.nan, "max": np.nan, "levels": int(s.nunique())})
    t = pd.DataFrame(rows)
    t.loc[t["column"] == design.response, "type"] += " (response)"
    return t


def write_report(fit, out_dir, *, prob: float = 0.95, dpi: int = 100, loo: bool = True,
                 max_shrinkage_rows: int = 60, verbose: bool = True, title: str | None = None,
                 plots=None, icc_at=None, save_fit: bool = True, progress: bool | None = None) -> str:
    """Write a standalone HTML report of ``fit`` plus CSV/JSON tables, PNG figures and fit.nc.

    Parameters
    ----------
    fit : Fit
    out_dir : str or Path
        Created if needed; existing report files are overwritten.
    prob : float
        Probability of every HDI.
    dpi : int
        Resolution of the figures.
    loo : bool
        Include PSIS-LOO: by group for more than 20,000 rows where it exists (nested factors,
        Gaussian), else by observation (:mod:`bayeslmm.elpd`); the section says which, and says why
        when it is not computed (loo=False, or observation LOO over chains x draws x rows = 5e7).
    max_shrinkage_rows : int
        Rows of the per-group shrinkage table shown in the HTML (all of them are in the CSV).
    verbose : bool
        Print the path of report.html.
    title : str, optional
        Report heading (default "bayeslmm report").
    plots : list of str, optional
        Figures to draw, any of ``caterpillar``, ``shrinkage`` (with shrinkage vs group size),
        ``icc``, ``variance_components``, ``trace`` (trace and rank plots), ``ppc``. Default: all.
    icc_at : dict or list of dict, optional
        Covariate points for the ICC table (``at`` of :meth:`Fit.icc`); default x = 0 and mean x.
    save_fit : bool
        Write ``fit.nc`` (False when the caller saved this fit there already).
    progress : bool, optional
        Show a progress bar of the report's steps; default: when ``verbose`` and the post-processing
        is long (chains x draws x rows above 2e7).

    Every file is written atomically (:mod:`bayeslmm.atomic`) and ``summary.json`` last, so an
    interrupted report leaves each file either as it was or complete.

    Returns
    -------
    str
        Path of ``report.html``.

    Examples
    --------
    >>> import bayeslmm as blmm
    >>> fit = blmm.Model("Reaction ~ Days + (Days | Subject)", blmm.load_dataset("sleepstudy")).fit(
    ...     chains=2, draws=500, seed=1, progressbar=False)               # doctest: +SKIP
    >>> fit.report("out/sleepstudy")                                    # doctest: +SKIP
    'out/sleepstudy/report.html'
    """
    from .. import __version__
    from ..diagnostics import diagnostics
    from ..identifiability import weakly_identified
    from ..plots import (plot_caterpillar, plot_icc, plot_ppc, plot_prior_posterior, plot_shrinkage,
                         plot_shrinkage_vs_size, plot_spaghetti, plot_trace, plot_variance_components)

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        from ..errors import BayesLMMError
        raise BayesLMMError(f"the report folder {str(out)!r} is an existing file; give a folder name "
                            "(it is created if needed).")
    fig_dir, tab_dir = out / "figures", out / "tables"
    fig_dir.mkdir(parents=True, exist_ok=True)
    design = fit.design
    has_groups = bool(design.factors)

    from tqdm.auto import tqdm
    show = verbose if progress is None else progress
    bar = tqdm(total=4, desc="bayeslmm report", unit="step", leave=False,
               disable=not show or (progress is None and fit.n_draws * design.n < 2e7))
    fixed = fit.summary(prob=prob)
    vc = fit.variance_components(prob=prob)
    diag = diagnostics(fit)
    ident = weakly_identified(fit, prob=prob) if design.factors else None
    icc_res = fit.icc(prob=prob, **({"at": icc_at} if icc_at else {})) if has_groups else None
    known = ("caterpillar", "shrinkage", "icc", "variance_components", "trace", "ppc")
    want = set(known if plots is None else plots)
    if want - set(known):
        raise ValueError(f"unknown plot(s) {sorted(want - set(known))} in the 'plots' parameter of "
                         f"write_report; choose from {', '.join(known)}.")
    shr = fit.shrinkage(prob=prob) if has_groups else None
    sizes = pd.DataFrame([{"factor": f.name, "level": lv, "n": int(n)} for f in design.factors
                          for lv, n in zip(f.levels, f.group_sizes)])
    tables = {"fixed_effects": fixed, "variance_components": vc,
              "priors": fit.prior_table.to_frame().set_index("parameter"),
              "diagnostics_checks": diag.to_frame().set_index("check"),
              "diagnostics_parameters": diag.parameters.set_index("parameter"),
              "group_sizes": sizes}
    if has_groups:
        tables["identification"] = ident
        tables["icc"] = icc_res.table
        tables["shrinkage"] = shr.table
        tables["pooling_factors"] = shr.pooling
        for term, cur in icc_res.curves.items():
            tables[f"icc_curve_{_safe(term)}"] = cur
    bar.update()
    from .loo_section import loo_section
    loo_sec = loo_section(fit, loo)
    if loo_sec.table is not None:
        tables["loo"] = loo_sec.table
    bar.update()
    files = export_tables(tables, tab_dir)

    figs_vc, figs_icc, figs_shr, figs_chk = [], [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if "variance_components" in want:
            figs_vc.append(_save_fig(plot_prior_posterior(fit), fig_dir / "prior_posterior.png", dpi)
                           | {"caption": "Prior (grey) and posterior (blue) of each parameter: a posterior "
                                         "like its prior means the data said little about it."})
            figs_vc.append(_save_fig(plot_variance_components(fit, prob=prob, table=vc),
                                     fig_dir / "variance_components.png", dpi)
                           | {"caption": "Posterior of each group-level SD, correlation and sigma "
                                         f"(median line, {prob:.0%} HDI bar)."})
        if has_groups and "icc" in want:
            figs_icc.append(_save_fig(plot_icc(fit, result=icc_res), fig_dir / "icc.png", dpi)
                            | {"caption": "ICC posterior per grouping factor"
                                          + (" and the ICC over each random-slope covariate."
                                             if icc_res.curves else ".")})
        for f in design.factors if has_groups and "shrinkage" in want else ():
            s = _safe(f.name)
            figs_shr.append(_save_fig(plot_shrinkage(fit, factor=f.name, result=shr),
                                      fig_dir / f"shrinkage_{s}.png", dpi)
                            | {"caption": f"{f.name}: no pooling -> partial pooling"
                                          + (" in 2-D (intercept, slope)." if "Intercept" in f.terms
                                             and f.q >= 2 else ".")})
            if f.q >= 2:
                for t in f.terms:
                    figs_shr.append(_save_fig(plot_shrinkage(fit, factor=f.name, term=t, kind="1d",
                                                             result=shr),
                                              fig_dir / f"shrinkage_{s}_{_safe(t)}.png", dpi)
                                    | {"caption": f"{f.name}, {t}: 1-D shrinkage."})
            if len(set(f.group_sizes.tolist())) > 1:        # balanced: every group shrinks alike
                figs_shr.append(_save_fig(plot_shrinkage_vs_size(fit, factor=f.name, result=shr),
                                          fig_dir / f"shrinkage_vs_size_{s}.png", dpi)
                                | {"caption": f"{f.name}: estimates and shrinkage by group size "
                                              "(small groups are pulled further toward complete pooling)."})
            if "Intercept" in f.terms and f.q >= 2 and any(t in design.column_names for t in f.terms):
                figs_shr.append(_save_fig(plot_spaghetti(fit, factor=f.name),
                                          fig_dir / f"spaghetti_{s}.png", dpi)
                                | {"caption": f"Fitted line of each {f.name} (partial pooling) over its own "
                                              "range, and the population line."})
        if has_groups and "caterpillar" in want:
            figs_shr.append(_save_fig(plot_caterpillar(fit, result=shr), fig_dir / "caterpillar.png", dpi)
                            | {"caption": f"Group effects, sorted (posterior mean, {prob:.0%} HDI)."})
        if "trace" in want:
            figs_chk.append(_save_fig(plot_trace(fit, kind="trace"), fig_dir / "trace.png", dpi)
                            | {"caption": "Trace plots and marginal posteriors per chain, one parameter "
                                          "per row on its own scale."})
            figs_chk.append(_save_fig(plot_trace(fit, kind="rank"), fig_dir / "rank.png", dpi)
                            | {"caption": "Rank plots: for each chain, the difference between the "
                                          "empirical CDF of its fractional ranks (ranks over all chains) "
                                          "and the uniform CDF, with a simultaneous envelope. Lines that "
                                          "stay inside the envelope mean the chains sample the same "
                                          "distribution."})
        if "ppc" in want:
            figs_chk.append(_save_fig(plot_ppc(fit), fig_dir / "ppc.png", dpi)
                            | {"caption": "Posterior predictive check: observed y against 100 replicated data sets."})
    all_figs = figs_vc + figs_icc + figs_shr + figs_chk
    files += [f["path"] for f in all_figs]
    bar.update()

    nc = out / "fit.nc"
    if save_fit:
        fit.save(nc)
    files.append(str(nc))
    bar.update()
    bar.close()

    shr_tab = None
    if has_groups:
        cols = ["group", "level", "term", "n", "no_pooling", "complete_pooling", "partial_mean",
                "partial_lower", "partial_upper", "shrinkage"]
        shr_tab = shr.table[cols].head(max_shrinkage_rows)
    s = fit.sampler
    info = fit.info
    timing = ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in info.items()
                       if k.endswith("_s") and isinstance(v, (int, float)))
    ctx = dict(
        title=title or "bayeslmm report",
        formula=fit.spec.formula.text, family=fit.spec.family, method=info.get("method", "?"),
        method_reason=info.get("method_reason", ""), n=design.n, n_dropped=design.n_dropped,
        chains=s.chains, draws=s.draws, tune=s.tune, seed=info.get("seed"), sampler=info.get("sampler", s.sampler),
        target_accept=s.target_accept, timing=timing or "n/a", version=__version__,
        created=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        prob_pct=f"{prob:.0%}",
        diag_ok=diag.ok, diag_message=diag.message(), problems=diag.problems,
        checks_table=_html_table(diag.to_frame().drop(columns="advice"), index=False),
        diag_table=_html_table(diag.table, index=False),
        factors_table=_html_table(_factors_table(design), index=False) if has_groups else Markup("<p>No grouping factors.</p>"),
        notes=list(design.notes),
        priors_table=_html_table(fit.prior_table.to_frame(), index=False),
        data_table=_html_table(_data_table(design), index=False),
        group_size_table=Markup(""),
        fixed_table=_html_table(fixed),
        vc_table=_html_table(vc),
        weak=[(k, r["message"]) for k, r in ident.iterrows() if r["weakly_identified"]] if has_groups else [],
        identification_table=_html_table(ident[["median", "lower", "upper", "prior", "width_ratio",
                                                "message"]]) if has_groups else Markup(""),
        icc_table=_html_table(icc_res.table, index=False) if has_groups else Markup(""),
        pooling_table=_html_table(shr.pooling, index=False) if has_groups else Markup(""),
        shrinkage_table=_html_table(shr_tab, index=False) if has_groups else Markup(""),
        shrink_truncated=has_groups and len(shr.table) > max_shrinkage_rows,
        shrink_rows=max_shrinkage_rows, shrink_total=len(shr.table) if has_groups else 0,
        loo_title=loo_sec.title, loo_text=loo_sec.text, loo_advice=loo_sec.advice,
        figures_vc=figs_vc, figures_icc=figs_icc, figures_shrinkage=figs_shr, figures_checks=figs_chk,
        files=[str(Path(p).relative_to(out)) for p in files] + ["report.html", "summary.json"],
    )
    env = Environment(loader=FileSystemLoader(str(_TEMPLATES)), autoescape=select_autoescape(["html", "j2"]))
    page = env.get_template("report.html.j2").render(**ctx)
    path = out / "report.html"
    write_text(path, page)
    summary = {"formula": ctx["formula"], "family": ctx["family"], "method": ctx["method"], "n": design.n,
               "sampler": s.to_dict(), "info": info, "diagnostics_ok": diag.ok,
               "problems": [str(p) for p in diag.problems], "files": ctx["files"],
               "weakly_identified": [k for k, _ in ctx["weak"]], "loo": loo_sec.title,
               "bayeslmm_version": __version__}
    write_text(out / "summary.json", json.dumps(summary, indent=1, default=str))
    if verbose:
        print(f"bayeslmm report: {path}")
    return str(path)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in str(name))
