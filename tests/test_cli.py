"""The ``bayeslmm`` command line: every shipped model file fits through it, errors exit non-zero.

Fits run in-process through ``bayeslmm.cli.main`` (short chains, the compile cache is shared);
the console script itself is run as a subprocess for ``--help`` and for a broken file, so the real
exit codes are checked.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import bayeslmm as blmm
from bayeslmm import cli
from bayeslmm.specfile import load_model_file

ROOT = Path(__file__).resolve().parents[1]
MODELS = sorted((ROOT / "models").glob("*.toml"))
SHORT = ["--draws", "150", "--tune", "150", "--chains", "2", "--no-progress"]

# short test chains fail the convergence checks on purpose; the CLI prints them, the warning is noise here
pytestmark = pytest.mark.filterwarnings("ignore::bayeslmm.diagnostics.ConvergenceWarning")


def console_script() -> list[str]:
    exe = Path(sys.executable).with_name("bayeslmm")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "bayeslmm.cli"]


@pytest.fixture(scope="module")
def cli_fits(tmp_path_factory):
    """Fit every model file once through the CLI: name -> (exit code, out dir, stdout)."""
    base = tmp_path_factory.mktemp("cli_fits")
    results = {}
    for path in MODELS:
        out = base / path.stem
        import contextlib
        import io
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = cli.main(["fit", str(path), "--out", str(out), *SHORT])
        results[path.stem] = (rc, out, buf.getvalue())
    return results


@pytest.mark.slow
@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.stem)
def test_every_model_file_fits_through_the_cli(cli_fits, path):
    rc, out, stdout = cli_fits[path.stem]
    assert rc == cli.EXIT_OK, stdout[-3000:]
    assert "Fixed effects" in stdout and "Variance components" in stdout
    assert f"report: {out}" in stdout
    for name in ("fit.nc", "model.toml"):
        assert (out / name).is_file(), name
    for name in ("report.html", "tables/fixed_effects.csv", "tables/variance_components.csv",
                 "tables/icc.csv", "figures/icc.png"):
        assert (out / name).is_file(), name
    mf = load_model_file(path)
    html = (out / "report.html").read_text()
    assert f"<h1>{mf.report.title}</h1>" in html          # [report] title
    drawn = {p.stem for p in (out / "figures").glob("*.png")}
    assert ("caterpillar" in drawn) == ("caterpillar" in mf.report.plots)   # [report] plots
    assert any(d.startswith("shrinkage") for d in drawn) == ("shrinkage" in mf.report.plots)
    # the saved posterior reloads with the file's formula and the overridden sampler settings
    fit = blmm.load_fit(out / "fit.nc")
    assert fit.spec.formula.text == mf.spec.formula.text
    assert fit.spec.priors == mf.spec.priors
    assert (fit.sampler.chains, fit.sampler.draws, fit.sampler.seed) == (2, 150, mf.sampler.seed)
    assert fit.posterior.sizes["draw"] == 150
    # the model.toml written next to the outputs reproduces the run (with the overrides applied)
    again = load_model_file(out / "model.toml")
    assert again.spec == mf.spec and again.report == mf.report
    assert again.sampler == mf.sampler.__class__(**{**mf.sampler.to_dict(), "draws": 150, "tune": 150,
                                                    "chains": 2, "progressbar": False})
    pd.testing.assert_frame_equal(again.load_data(), mf.load_data())


@pytest.mark.slow
def test_cli_fit_numbers_match_the_simulated_truth(cli_fits):
    # pigeons: true trained effect 6 and session slope 1.5 (models/data/simulate.py)
    fit = blmm.load_fit(cli_fits["pigeons_repeated"][1] / "fit.nc")
    s = fit.summary()
    assert abs(s.loc["session", "mean"] - 1.5) < 0.2
    assert s.loc["condition[T.trained]", "hdi_lower"] < 6 < s.loc["condition[T.trained]", "hdi_upper"]


@pytest.mark.slow
def test_report_command_writes_a_report_from_a_saved_fit(cli_fits, tmp_path, capsys):
    nc = cli_fits["dyestuff_icc"][1] / "fit.nc"
    rc = cli.main(["report", str(nc), "--out", str(tmp_path / "rep"),
                   "--model", str(ROOT / "models" / "dyestuff_icc.toml")])
    assert rc == 0
    out = capsys.readouterr().out
    assert f"report: {tmp_path / 'rep'}" in out
    assert (tmp_path / "rep" / "report.html").is_file()
    assert "<h1>Dyestuff: between-batch variance and ICC</h1>" in (tmp_path / "rep" / "report.html").read_text()


@pytest.mark.slow
def test_report_icc_points_come_from_the_model_file(cli_fits):
    # sleepstudy_slopes.toml: icc_at = { Days = [0, 4.5, 9] }
    out = cli_fits["sleepstudy_slopes"][1]
    icc = pd.read_csv(out / "tables" / "icc.csv")
    assert icc["at"].tolist() == ["Days = 0", "Days = 4.5", "Days = 9"]
    assert icc["median"].is_monotonic_increasing      # subjects fan out: the ICC grows with Days


def test_strict_exits_3_when_convergence_checks_fail(tmp_path, capsys):
    # 20 draws x 2 chains cannot reach the ESS threshold: a deterministic convergence failure
    model = ROOT / "models" / "dyestuff_icc.toml"
    args = ["fit", str(model), "--out", str(tmp_path / "o"), "--draws", "20", "--tune", "20",
            "--chains", "2", "--no-progress", "--no-report"]
    assert cli.main(args + ["--strict"]) == cli.EXIT_NOT_CONVERGED
    captured = capsys.readouterr()
    assert "Convergence checks FAILED" in captured.out and "--strict" in captured.err
    assert (tmp_path / "o" / "fit.nc").is_file()   # outputs are still written
    assert cli.main(args) == cli.EXIT_OK            # without --strict it is only reported


def test_help_lists_every_command():
    r = subprocess.run(console_script() + ["--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for word in ("fit", "priors", "report", "datasets", "check", "exit codes", "--strict" ):
        assert word in r.stdout, word
    r = subprocess.run(console_script() + ["fit", "--help"], capture_output=True, text=True, timeout=120)
    for word in ("--out", "--strict", "--draws", "--chains", "--seed"):
        assert word in r.stdout, word


def test_broken_model_file_exits_nonzero_naming_key_and_file(tmp_path):
    bad = tmp_path / "broken.toml"
    shutil.copy(ROOT / "models" / "dyestuff_icc.toml", bad)
    bad.write_text(bad.read_text().replace("draws = 1000", "draws = \"many\""))
    r = subprocess.run(console_script() + ["fit", str(bad), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == cli.EXIT_ERROR
    assert str(bad) in r.stderr and "sampler.draws" in r.stderr and "must be an integer" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_missing_data_file_and_unknown_key_exit_1(tmp_path, capsys):
    bad = tmp_path / "schools_moved.toml"
    shutil.copy(ROOT / "models" / "schools_icc.toml", bad)   # data/schools.csv is not next to it
    assert cli.main(["priors", str(bad)]) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert str(bad) in err and "data.path" in err and "does not exist" in err
    bad.write_text("[model]\nformula = \"Yield ~ 1 + (1 | Batch)\"\nfamly = \"gaussian\"\n"
                   "[data]\ndataset = \"Dyestuff\"\n")
    assert cli.main(["check", str(bad)]) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert "model.famly" in err and "Did you mean 'family'" in err and str(bad) in err


def test_priors_command_prints_the_prior_table(capsys):
    assert cli.main(["priors", str(ROOT / "models" / "pigeons_repeated.toml")]) == 0
    out = capsys.readouterr().out
    for label in ("Intercept", "condition[T.trained]", "session", "sd(pigeon, Intercept)", "sigma"):
        assert label in out
    assert "user ('sigma')" in out
    assert cli.main(["priors", "--csv", str(ROOT / "models" / "pigeons_repeated.toml")]) == 0
    import io
    tab = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert tab.loc[tab["parameter"] == "sigma", "prior"].item() == "halfnormal(sigma=10)"
    assert tab["source"].str.startswith("default").sum() == 3


def test_datasets_and_check_commands(capsys):
    assert cli.main(["datasets"]) == 0
    out = capsys.readouterr().out
    for name in ("sleepstudy", "Dyestuff", "radon_mn", "cbpp"):
        assert name in out
    assert cli.main(["check", str(ROOT / "models" / "radon_county_shrinkage.toml")]) == 0
    assert "ok" in capsys.readouterr().out


def test_no_command_prints_help_and_exits_2(capsys):
    assert cli.main([]) == cli.EXIT_USAGE
    assert "usage: bayeslmm" in capsys.readouterr().out
    with pytest.raises(SystemExit) as ei:
        cli.main(["fit"])             # missing MODEL.toml and --out
    assert ei.value.code == 2


def test_report_of_missing_fit_file_exits_1(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path / "none.nc"), "--out", str(tmp_path)]) == cli.EXIT_ERROR
    assert "none.nc" in capsys.readouterr().err


def test_demo_writes_posterior_and_report(tmp_path, capsys):
    from bayeslmm import demo

    out = tmp_path / "demo"
    assert demo.main(["--out", str(out), "--draws", "150", "--tune", "150", "--chains", "2",
                      "--no-progress"]) == 0
    printed = capsys.readouterr().out
    for text in ("Fixed effects", "Variance components", "sd(Subject, Days)", f"report:    {out}"):
        assert text in printed, text
    assert (out / "fit.nc").is_file() and (out / "report.html").is_file()
    fit = blmm.load_fit(out / "fit.nc")
    assert fit.spec.formula.text == demo.FORMULA
    assert 5 < fit.summary().loc["Days", "mean"] < 16      # lme4: 10.47 ms/day


def test_cli_sampler_choices_mirror_the_spec():
    """The CLI keeps its own copies of the choices so that `bayeslmm --help` need not import
    bayeslmm.spec (~2 s); they must stay equal to the owner's."""
    from bayeslmm.cli import build_parser
    from bayeslmm.spec import INITS, SAMPLERS
    fit = next(a for a in build_parser()._subparsers._group_actions[0].choices["fit"]._actions
               if "--init" in a.option_strings)
    assert tuple(fit.choices) == INITS
    sampler = next(a for a in build_parser()._subparsers._group_actions[0].choices["fit"]._actions
                   if "--sampler" in a.option_strings)
    assert tuple(sampler.choices) == SAMPLERS
