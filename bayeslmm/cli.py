"""The ``bayeslmm`` command line.

::

    bayeslmm fit MODEL.toml --out DIR [--strict] [--draws N] [--tune N] [--chains N] [--seed N]
    bayeslmm priors MODEL.toml [--csv]
    bayeslmm report FIT.nc --out DIR [--model MODEL.toml]
    bayeslmm check MODEL.toml
    bayeslmm datasets

Exit codes: 0 success; 1 an error (bad model file, data, formula or prior; the message names the
file and the key); 2 bad command-line usage; 3 ``--strict`` and a convergence check failed;
130 interrupted (Ctrl-C): no output that looks complete is written for an interrupted fit.

Every file is written atomically (:mod:`bayeslmm.atomic`). ``fit`` checks what it can before
sampling (the output folder, the sampler settings, the size of the posterior) and saves the
posterior (``fit.nc``) before anything else, so a failing report never loses it.

The module is imported by nothing else in the package; :func:`main` is the console script.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_ERROR", "EXIT_USAGE", "EXIT_NOT_CONVERGED",
           "EXIT_INTERRUPTED"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_CONVERGED = 0, 1, 2, 3
EXIT_INTERRUPTED = 130          # 128 + SIGINT, the shell's convention for Ctrl-C

_EPILOG = """\
model files: see the [model], [data], [priors], [sampler] and [report] tables documented in
bayeslmm.specfile (and the examples in models/*.toml). Data is a bundled data set
(`bayeslmm datasets`) or a CSV/Parquet path relative to the model file.

exit codes: 0 ok; 1 error (the message names the file and the key to fix); 2 usage;
3 convergence checks failed and --strict was given; 130 interrupted (Ctrl-C).

examples:
  bayeslmm datasets
  bayeslmm priors models/sleepstudy_slopes.toml
  bayeslmm fit models/sleepstudy_slopes.toml --out out/sleepstudy
  bayeslmm fit models/dyestuff_icc.toml --out out/dyestuff --draws 500 --chains 2 --strict
  bayeslmm report out/sleepstudy/fit.nc --out out/sleepstudy_report
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``bayeslmm`` command (all subcommands)."""
    from . import __version__

    p = argparse.ArgumentParser(
        prog="bayeslmm",
        description="Bayesian linear mixed models on PyMC: fit a model file, print its priors, "
                    "write a posterior report, list the bundled data sets.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"bayeslmm {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    f = sub.add_parser("fit", help="fit a TOML model file and write the report",
                       description="Fit MODEL.toml with NUTS, print fixed effects, variance components "
                                   "and diagnostics, and write the report (report.html, tables, figures, "
                                   "fit.nc, model.toml) to --out.")
    f.add_argument("model", metavar="MODEL.toml", help="the model file")
    f.add_argument("--out", required=True, metavar="DIR", help="output directory (created if needed)")
    f.add_argument("--strict", action="store_true",
                   help="exit with code 3 when a convergence check fails (R-hat, ESS, divergences)")
    g = f.add_argument_group("sampler overrides (default: the model file's [sampler] table)")
    g.add_argument("--draws", type=int, metavar="N", help="draws per chain")
    g.add_argument("--tune", type=int, metavar="N", help="tuning steps per chain")
    g.add_argument("--chains", type=int, metavar="N", help="number of chains")
    g.add_argument("--seed", type=int, metavar="N", help="random seed")
    g.add_argument("--cores", type=int, metavar="N", help="parallel chains")
    g.add_argument("--target-accept", type=float, metavar="X", help="NUTS target acceptance, e.g. 0.95")
    g.add_argument("--sampler", choices=("pymc", "nutpie", "numpyro"), help="NUTS implementation")
    g.add_argument("--init", choices=("auto", "laplace", "pymc"),
                   help="how NUTS starts (auto: from a Laplace approximation on the collapsed paths)")
    g.add_argument("--method", choices=("auto", "collapsed", "marginal", "noncentred", "kinship"),
                   help="sampling path (marginal = old name of collapsed; kinship = the rotated path of "
                        "a known covariance, [cov])")
    f.add_argument("--no-progress", action="store_true", help="no progress bar")
    f.add_argument("--no-report", action="store_true",
                   help="skip report.html and the figures; write only the tables and fit.nc")

    pr = sub.add_parser("priors", help="print every prior of a model file (no sampling)",
                        description="Print the prior table of MODEL.toml: every parameter, its prior, and "
                                    "whether it is a data-scaled default or set in [priors].")
    pr.add_argument("model", metavar="MODEL.toml")
    pr.add_argument("--csv", action="store_true", help="print CSV instead of a table")

    ck = sub.add_parser("check", help="validate a model file and its data (no sampling)")
    ck.add_argument("model", metavar="MODEL.toml")

    r = sub.add_parser("report", help="write the report of a saved fit",
                       description="Load FIT.nc (written by `bayeslmm fit` or Fit.save) and write its report.")
    r.add_argument("fit", metavar="FIT.nc")
    r.add_argument("--out", required=True, metavar="DIR", help="output directory")
    r.add_argument("--model", metavar="MODEL.toml",
                   help="take report options (title, plots, ICC points) from this model file's [report]")

    sub.add_parser("datasets", help="list the bundled data sets")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (the console script exits with it)."""
    from .errors import BayesLMMError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    handler = {"fit": _cmd_fit, "priors": _cmd_priors, "check": _cmd_check, "report": _cmd_report,
               "datasets": _cmd_datasets}[args.command]
    try:
        return handler(args)
    except BayesLMMError as e:
        print(f"bayeslmm {args.command}: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt as e:
        detail = f" ({e})" if str(e) else ""
        print(f"bayeslmm {args.command}: interrupted{detail}. Files already in place are complete "
              "(each is written whole or not at all); outputs not yet written were not made.",
              file=sys.stderr)
        return EXIT_INTERRUPTED


# ------------------------------------------------------------------------------------------------
# commands


def _cmd_datasets(args) -> int:
    import textwrap

    from .datasets import dataset_info

    for d in dataset_info():        # plain text: importing pandas alone would take seconds
        print(f"{d['name']}  ({d['rows']} rows; columns: {d['columns']})")
        print(textwrap.indent(textwrap.fill(d["description"], 96), "    "))
    print("\nuse one in a model file with:  [data]  dataset = \"NAME\"")
    return EXIT_OK


def _cmd_priors(args) -> int:
    from .specfile import load_model_file

    mf = load_model_file(args.model)
    model = mf.build_model()
    tab = model.priors
    if args.csv:
        print(tab.to_csv(index=False), end="")
    else:
        print(f"{mf.source}: {mf.spec.formula.text}  ({model.design.n} rows, {mf.data.describe()})")
        print(tab.to_string(index=False))
    return EXIT_OK


def _cmd_check(args) -> int:
    from .specfile import load_model_file

    mf = load_model_file(args.model)
    model = mf.build_model()
    print(f"{mf.source}: ok")
    print(repr(model))
    return EXIT_OK


def _cmd_fit(args) -> int:
    from .errors import BayesLMMError
    from .specfile import load_model_file

    t0 = time.perf_counter()
    out = Path(args.out)
    _check_out_dir(out)                    # before anything slow: a bad --out never costs a fit
    flags = dict(draws=args.draws, tune=args.tune, chains=args.chains, seed=args.seed,
                 cores=args.cores, target_accept=args.target_accept, sampler=args.sampler, init=args.init)
    _check_flags(flags)
    mf = load_model_file(args.model)
    mf = mf.with_sampler(**flags, progressbar=False if args.no_progress else None)
    _say(f"bayeslmm fit: {mf.source} ({mf.name})")
    _say(f"  formula: {mf.spec.formula.text}")
    _say(f"  family:  {mf.spec.family} ({mf.spec.link} link)")
    model = mf.build_model()
    _say(f"  data:    {mf.data.describe()}, {model.design.n} rows used"
         + (f" ({model.design.n_dropped} dropped: missing values)" if model.design.n_dropped else ""))
    _say("")
    _say(model.prior_table.to_frame().to_string(index=False))
    _say("")
    kw = mf.fit_kwargs()
    if args.method:
        kw["method"] = args.method
    fit = _quiet_fit(model, kw)
    _say(f"\nsampled in {fit.info.get('total_s', float('nan')):.1f} s")
    out.mkdir(parents=True, exist_ok=True)
    saved = _save_posterior_first(fit, out)
    try:
        return _finish_fit(fit, mf, out, args, t0, saved)
    except BayesLMMError as e:
        raise BayesLMMError(f"{e}\nThe posterior is saved in {saved} (blmm.load_fit reads it; "
                            f"`bayeslmm report {saved} --out DIR` writes the report).") from e
    except Exception as e:  # noqa: BLE001 - never lose a finished posterior to an output step
        raise BayesLMMError(f"writing the outputs failed ({type(e).__name__}: {e}). The posterior is "
                            f"saved in {saved} (blmm.load_fit reads it; `bayeslmm report {saved} "
                            "--out DIR` writes the report).") from e


def _finish_fit(fit, mf, out: Path, args, t0: float, saved: str) -> int:
    from .specfile import save_model_file

    prob = mf.report.prob
    _say("\nFixed effects")
    _say(_fmt_table(fit.summary(prob=prob)))
    _say("\nVariance components")
    _say(_fmt_table(fit.variance_components(prob=prob).drop(columns=["group", "term", "kind"])))
    if hasattr(fit, "icc") and fit.design.factors:
        try:
            icc = fit.icc(**_icc_kwargs(mf.report, prob))
            _say("\nICC")
            _say(icc.table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        except Exception as e:  # noqa: BLE001 - the ICC is a summary, never a reason to lose the fit
            _say(f"\n(ICC not computed: {type(e).__name__}: {e})")

    save_model_file(mf, out / "model.toml")
    from .bigfit import is_stats_design
    stats_only = is_stats_design(fit.design)
    if stats_only and not args.no_report:   # the report needs rows (PPC, shrinkage)
        _say("\n(no HTML report: the model was built from per-group statistics; tables and fit.nc written)")
    report_path = _write_outputs(fit, out, mf.report, with_report=not args.no_report and not stats_only,
                                 saved=saved == str(out / "fit.nc"))
    problems = _convergence_problems(fit)
    if problems:
        _say("\nConvergence checks FAILED:")
        for msg in problems:
            _say(f"  - {msg}")
    else:
        _say("\nConvergence checks passed.")
    _say(f"\noutputs in {out}/ ({time.perf_counter() - t0:.1f} s in all)")
    _say(f"report: {report_path}")
    if problems and args.strict:
        print(f"bayeslmm fit: {len(problems)} convergence check(s) failed (--strict); exit code "
              f"{EXIT_NOT_CONVERGED}. Run longer chains (--draws, --tune) or raise --target-accept.",
              file=sys.stderr)
        return EXIT_NOT_CONVERGED
    return EXIT_OK


def _cmd_report(args) -> int:
    from .errors import BayesLMMError
    from .results import load_fit
    from .specfile import ReportOptions, load_model_file

    p = Path(args.fit)
    if not p.is_file():
        raise BayesLMMError(f"fit file {str(p)!r} does not exist; `bayeslmm fit MODEL.toml --out DIR` "
                            "writes DIR/fit.nc.")
    fit = load_fit(p)
    opts = load_model_file(args.model).report if args.model else ReportOptions()
    _say(f"bayeslmm report: {p} ({fit.spec.formula.text}, {fit.n_draws} draws)")
    path = _write_outputs(fit, Path(args.out), opts, with_report=True)
    _say(f"report: {path}")
    return EXIT_OK


# ------------------------------------------------------------------------------------------------
# helpers


def _say(msg: str = "") -> None:
    print(msg, flush=True)


def _quiet_fit(model, kw):
    """``model.fit(**kw)`` with its Python warnings printed once each as ``warning: message``
    (no source paths); convergence warnings are left out here because the command reports the
    failed checks itself at the end."""
    import warnings

    from .diagnostics import ConvergenceWarning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = model.fit(**kw)
    seen = set()
    for w in caught:
        msg = str(w.message).strip()
        if issubclass(w.category, (ConvergenceWarning, DeprecationWarning, PendingDeprecationWarning,
                                   ImportWarning, ResourceWarning)) or msg in seen:
            continue
        seen.add(msg)
        print(f"warning: {msg}", file=sys.stderr, flush=True)
    return fit


def _fmt_table(tab) -> str:
    cols = [c for c in ("mean", "sd", "hdi_lower", "hdi_upper", "ess_bulk", "r_hat") if c in tab.columns]
    return tab[cols].to_string(float_format=lambda v: f"{v:.4g}")


def _icc_kwargs(report, prob: float) -> dict:
    pts = report.icc_points()
    return {"prob": prob, **({"at": pts} if pts else {})}


def _write_outputs(fit, out: Path, report, *, with_report: bool, saved: bool = False) -> str:
    """Write the report (``fit.report``: report.html, tables, figures, fit.nc) or, with
    ``with_report=False``, only the summary tables and fit.nc; return the main path.
    ``saved``: out/fit.nc already holds this fit (not written again)."""
    from .atomic import atomic_path

    out.mkdir(parents=True, exist_ok=True)
    if with_report:
        return str(fit.report(str(out), **report.kwargs(), verbose=False, save_fit=not saved))
    for name, tab in (("summary.csv", fit.summary(prob=report.prob)),
                      ("variance_components.csv", fit.variance_components(prob=report.prob))):
        with atomic_path(out / name) as tmp:
            tab.to_csv(tmp)
    if not saved:
        fit.save(out / "fit.nc")
    return str(out / "fit.nc")


def _check_out_dir(out: Path) -> None:
    """``--out`` must be a folder that can be written (created if needed); checked before sampling."""
    from .atomic import write_text
    from .errors import BayesLMMError

    if out.exists() and not out.is_dir():
        raise BayesLMMError(f"--out {str(out)!r} is an existing file, not a folder; give a folder "
                            "name (it is created if needed).")
    # a folder that does not exist yet is not created here (a model-file error must leave nothing
    # behind): its nearest existing parent must be a writable folder
    where = out
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        if not where.is_dir():
            raise NotADirectoryError(f"{where} is not a folder")
        probe = where / f".bayeslmm-write-test-{os.getpid()}"
        write_text(probe, "")
        probe.unlink()
    except OSError as e:
        raise BayesLMMError(f"--out {str(out)!r} cannot be written ({e.strerror or e}); choose "
                            "another folder.") from e


def _check_flags(flags: dict) -> None:
    """Each sampler flag on its own, so that an error names the flag, not the model file's key."""
    from dataclasses import replace

    from .errors import SpecError
    from .spec import SamplerSpec

    base = SamplerSpec()
    for k, v in flags.items():
        if v is None:
            continue
        try:
            replace(base, **{k: v})
        except SpecError as e:
            flag = "--" + k.replace("_", "-")
            raise SpecError(f"command-line option {flag} {v}: {e}") from None


def _save_posterior_first(fit, out: Path) -> str:
    """Save the fit to out/fit.nc right after sampling; if that fails, to a file in the current
    folder (or the temp folder) whose name says it was rescued. Returns the path."""
    import tempfile

    from .errors import BayesLMMError

    target = out / "fit.nc"
    try:
        return fit.save(target)
    except Exception as first:  # noqa: BLE001
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for folder in (Path.cwd(), Path(tempfile.gettempdir())):
            rescue = folder / f"bayeslmm-rescued-fit-{stamp}-{os.getpid()}.nc"
            try:
                fit.save(rescue)
            except Exception:  # noqa: BLE001
                continue
            _say(f"\ncould not write {target} ({type(first).__name__}: {first}); the posterior is "
                 f"saved in {rescue}")
            return str(rescue)
        raise BayesLMMError(f"could not save the posterior to {target}: {type(first).__name__}: "
                            f"{first}") from first


def _convergence_problems(fit) -> list[str]:
    """Messages of the failed convergence checks of ``fit.diagnostics()`` (empty when all pass)."""
    return [str(p) for p in fit.diagnostics().problems]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
