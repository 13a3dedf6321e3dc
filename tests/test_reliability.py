"""Results that never lie, same seed same draws, errors that say what is wrong (issue 18).

Every defect of issue 18 (apart from the formula allow-list, tests/test_security.py) has a test
here that failed before its fix; docs/reliability.md maps each bad-input class to its test.
Sampling is kept tiny (Dyestuff ``(1 | Batch)`` on the collapsed path, the structure the rest of
the suite compiles anyway); the subprocess tests are the only expensive ones.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import bayeslmm as blmm
from bayeslmm import cli
from bayeslmm.errors import BayesLMMError, DataError, FormulaError, PriorError, SpecError

ROOT = Path(__file__).resolve().parents[1]
DYE = "Yield ~ 1 + (1 | Batch)"
TINY = dict(chains=2, draws=60, tune=60, seed=3, progressbar=False, verbose=False)

pytestmark = pytest.mark.filterwarnings("ignore::bayeslmm.diagnostics.ConvergenceWarning")


def run_python(code: str, *, env: dict | None = None, timeout: float = 600, **popen) -> subprocess.Popen:
    """Start ``python -c code`` from the repository root (so it imports this tree's package)."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    if env and "BAYESLMM_CACHE_DIR" in env:
        full_env.pop("NUMBA_CACHE_DIR", None)        # the package's own cache rule, not the user's
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint, **popen)


def _default_sigint() -> None:
    # a shell without job control starts background commands (pytest among them) with SIGINT
    # ignored; the child would inherit that, Python would keep it, and the interrupt tests below
    # could not interrupt it
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    t0 = time.monotonic()
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"child ended early ({proc.returncode}):\n{out[-2000:]}\n{err[-4000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"child never reached {path}")
        time.sleep(0.05)


# -- 1. interrupted sampling ------------------------------------------------------------------------

def interrupt_after(monkeypatch, n_draws: int):
    """Make PyMC's sampler see a Ctrl-C after ``n_draws`` iterations of a chain (as a user would)."""
    import pymc as pm

    from bayeslmm import sampling
    real = pm.sample

    def sample(**kw):
        def callback(trace, draw):
            if draw.draw_idx >= n_draws:
                raise KeyboardInterrupt
        return real(**kw, callback=callback)
    monkeypatch.setattr(sampling.pm, "sample", sample)


def test_interrupted_sampling_raises_instead_of_returning_a_partial_fit(dyestuff, monkeypatch):
    # PyMC swallows the KeyboardInterrupt and returns the draws made so far; before the fix the
    # fit came back labelled "2 chains x 60 draws" with ~20 draws per chain
    interrupt_after(monkeypatch, 80)
    with pytest.raises(KeyboardInterrupt, match="interrupted: .* of the requested 2 x 60"):
        blmm.Model(DYE, dyestuff).fit(**TINY, cores=1)


def test_check_complete_accepts_full_and_refuses_short_posteriors():
    import xarray as xr

    from bayeslmm.errors import SamplingInterrupted
    from bayeslmm.sampling import check_complete
    post = xr.Dataset({"a": (("chain", "draw"), np.zeros((2, 5)))})
    check_complete(post, 2, 5)
    for chains, draws in ((2, 6), (3, 5)):
        with pytest.raises(SamplingInterrupted):
            check_complete(post, chains, draws)


CHILD_CLI = """
import sys, pathlib, pymc as pm
from bayeslmm import cli, sampling
marker = pathlib.Path(sys.argv[1])
real = pm.sample
def sample(**kw):
    def callback(trace, draw):
        if not draw.tuning and not marker.exists():
            marker.write_text("sampling")
    return real(**kw, callback=callback)
sampling.pm.sample = sample
sys.exit(cli.main(["fit", sys.argv[2], "--out", sys.argv[3], "--draws", "20000", "--tune", "100",
                   "--chains", "2", "--seed", "1", "--no-progress", "--no-report"]))
"""


def test_cli_sigint_during_sampling_exits_130_and_leaves_previous_outputs(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    previous = {"fit.nc": b"previous fit", "summary.json": b"{}", "report.html": b"<html>old</html>"}
    for name, data in previous.items():
        (out / name).write_bytes(data)
    marker = tmp_path / "sampling"
    proc = run_python(CHILD_CLI.replace("sys.argv[1]", repr(str(marker)))
                      .replace("sys.argv[2]", repr(str(ROOT / "models" / "dyestuff_icc.toml")))
                      .replace("sys.argv[3]", repr(str(out))))
    wait_for(marker, proc)
    time.sleep(random.Random().uniform(0.0, 1.0))     # a random moment during sampling
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == cli.EXIT_INTERRUPTED, stderr[-3000:]
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert {p.name for p in out.iterdir()} == set(previous)          # nothing new, no temp files
    for name, data in previous.items():
        assert (out / name).read_bytes() == data, name


# -- 2. atomic writes -------------------------------------------------------------------------------

def test_atomic_path_keeps_the_old_file_when_the_write_fails(tmp_path):
    from bayeslmm.atomic import atomic_path, write_text
    target = tmp_path / "a.json"
    write_text(target, "old")
    for exc in (RuntimeError, KeyboardInterrupt):
        with pytest.raises(exc):
            with atomic_path(target) as tmp:
                tmp.write_text("half of the new cont")
                raise exc
        assert target.read_text() == "old"
        assert [p.name for p in tmp_path.iterdir()] == ["a.json"]       # no temp file left
    write_text(target, "new")
    assert target.read_text() == "new"


@pytest.fixture
def tiny_fit(fake_fit, dyestuff):
    """A Fit with synthetic draws (no sampling): saving and reporting do not care how draws were made."""
    return fake_fit(DYE, dyestuff, draws=60)


CHILD_SAVE = """
import sys, pathlib, bayeslmm as blmm
fit = blmm.load_fit(sys.argv[1])
marker, target = pathlib.Path(sys.argv[2]), sys.argv[3]
fit.save(target + ".warm")          # first save imports and warms everything up
marker.write_text("saving")
while True:
    fit.save(target)
"""


def test_sigint_during_save_leaves_the_previous_file_intact(tiny_fit, tmp_path):
    src = tmp_path / "src.nc"
    tiny_fit.save(src)
    target = tmp_path / "fit.nc"
    target.write_bytes(src.read_bytes())
    marker = tmp_path / "saving"
    code = (CHILD_SAVE.replace("sys.argv[1]", repr(str(src))).replace("sys.argv[2]", repr(str(marker)))
            .replace("sys.argv[3]", repr(str(target))))
    rng = random.Random()
    for _ in range(1):                              # a random moment (saves run back to back)
        marker.unlink(missing_ok=True)
        proc = run_python(code)
        wait_for(marker, proc)
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)
        assert proc.returncode != 0
        again = blmm.load_fit(target)               # the file is always a complete fit
        np.testing.assert_array_equal(again.draws("b"), tiny_fit.draws("b"))
        assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_report_into_an_existing_file_is_a_clear_error(tiny_fit, tmp_path):
    f = tmp_path / "report"
    f.write_text("a file")
    with pytest.raises(BayesLMMError, match="report folder .* is an existing file"):
        tiny_fit.report(f)


def test_report_files_are_written_atomically(tiny_fit, tmp_path, monkeypatch):
    # a report that fails half-way (here: in the summary) keeps the previous summary.json whole
    out = tmp_path / "rep"
    tiny_fit.report(out, plots=[], loo=False, verbose=False)
    before = (out / "summary.json").read_text()
    import bayeslmm.report as rep
    monkeypatch.setattr(rep.json, "dumps", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        tiny_fit.report(out, plots=[], loo=False, verbose=False)
    assert (out / "summary.json").read_text() == before
    assert not list(out.rglob("*.partial-*"))


# -- 5. same seed, same draws, whatever the cache state ---------------------------------------------

CHILD_DRAWS = """
import hashlib, json, numpy as np, warnings
warnings.filterwarnings("ignore")
import bayeslmm as blmm
fit = blmm.Model("Yield ~ 1 + (1 | Batch)", blmm.load_dataset("Dyestuff"), method="collapsed").fit(
    chains=2, draws=40, tune=40, seed=11, progressbar=False, verbose=False)
post = fit.posterior
print(json.dumps({v: np.asarray(post[v]).ravel().tolist() for v in sorted(post.data_vars)}))
"""


def test_same_seed_same_draws_with_empty_and_warm_caches(tmp_path):
    # Two fresh processes: one with empty numba and PyTensor caches (and one thread for BLAS,
    # OpenMP and numba), one with the caches the test session already has. The kernel's numba
    # cache must go to the user cache folder (BAYESLMM_CACHE_DIR here), never into the package.
    t0 = time.time()
    env_cold = {"BAYESLMM_CACHE_DIR": str(tmp_path / "cache"),
                "PYTENSOR_FLAGS": f"compiledir={tmp_path / 'pytensor'}",
                "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                "NUMBA_NUM_THREADS": "1"}
    cold = run_python(CHILD_DRAWS, env=env_cold)
    warm = run_python(CHILD_DRAWS)
    (out_c, err_c), (out_w, err_w) = cold.communicate(timeout=600), warm.communicate(timeout=600)
    assert cold.returncode == 0, err_c[-3000:]
    assert warm.returncode == 0, err_w[-3000:]
    draws_c, draws_w = json.loads(out_c.splitlines()[-1]), json.loads(out_w.splitlines()[-1])
    assert draws_c == draws_w                      # bit for bit
    cached = list((tmp_path / "cache" / "numba").rglob("*.nbi"))
    assert {p.name.split("-")[0] for p in cached} >= {"collapsed_kernel.one_factor_kernel"}
    written = [p for p in (ROOT / "bayeslmm").rglob("*.nb[ic]") if p.stat().st_mtime >= t0]
    assert not written, f"numba wrote into the package: {written}"


# -- 3. level identity ------------------------------------------------------------------------------

def design_of(formula, data):
    return blmm.Model(formula, data).design


def group_frame(g, n_per=4, seed=0, **extra):
    r = np.random.default_rng(seed)
    g = np.repeat(np.asarray(g, dtype=object), n_per)
    return pd.DataFrame({"y": r.normal(size=len(g)), "x": r.normal(size=len(g)), "g": g, **extra})


def test_float_grouping_column_matches_integer_new_data(fake_fit, tmp_path):
    # a NaN made the grouping column float (levels 1.0, 2.0, 3.0); new data with the integers 1
    # and 3 are known groups, not new ones (before: compared as text, '1.0' != '1')
    df = group_frame([1, 2, 3, np.nan])
    df["g"] = df["g"].astype(float)
    with pytest.warns(UserWarning, match="dropped"):
        fit = fake_fit("y ~ x + (1 | g)", df)
    assert fit.design.factors[0].levels == ("1", "2", "3")
    new = pd.DataFrame({"x": [0.0, 0.0, 0.0], "g": [1, 3, 7]})
    from bayeslmm.design import predictor_arrays
    for f in (fit, blmm.load_fit(fit.save(tmp_path / "f.nc"))):        # and after save/load
        _, [(fac, _, codes, labels)] = predictor_arrays(f.design, new)
        assert codes.tolist() == [0, 2, -1] and labels.tolist() == ["1", "3", "7"]
        with pytest.raises(DataError, match=r"level\(s\) not in the fitted data: \['7'\]"):
            f.predict(new)
        p = f.predict(new.iloc[:2])
        mu = f.draws("b") @ np.array([[1.0, 0.0]]).T + f.draws("r_g")[:, [0, 2], 0]
        np.testing.assert_allclose(p["mean"].to_numpy(), mu.mean(axis=0))


def test_text_and_number_with_the_same_label_are_refused():
    df = group_frame(["1", 1, "2", 3])
    with pytest.raises(DataError, match=r"column 'g' .*holds both the number 1 and the text '1'"):
        design_of("y ~ x + (1 | g)", df)
    ok = group_frame(["a", 1, "b", 2.0])                       # mixed but distinct: accepted
    assert design_of("y ~ x + (1 | g)", ok).factors[0].n_levels == 4


def test_colon_inside_values_of_an_interaction_factor(fake_fit):
    # ('x:y', 'z') and ('x', 'y:z') would both be labelled 'x:y:z'
    df = group_frame(["x:y", "x", "w", "v"], h=np.repeat(["z", "y:z", "u", "u"], 4))
    with pytest.raises(DataError, match=r"same label 'x:y:z'.*contains ':'"):
        design_of("y ~ x + (1 | g:h)", df)
    # without a clash the labels are unique, and new data are matched by value, not by text
    df = group_frame(["x:y", "w", "v"], h=np.repeat(["z", "u", "u"], 4))
    fit = fake_fit("y ~ x + (1 | g:h)", df)
    from bayeslmm.design import predictor_arrays
    new = pd.DataFrame({"x": [0.0, 0.0], "g": ["x:y", "x"], "h": ["z", "y:z"]})
    _, [(_, _, codes, _)] = predictor_arrays(fit.design, new)
    assert codes[0] == fit.design.factors[0].levels.index("x:y:z") and codes[1] == -1


def test_new_data_of_another_type_than_the_fitted_levels_is_refused(fake_fit):
    fit = fake_fit("y ~ x + (1 | g)", group_frame(["1", "2", "3"]))
    with pytest.raises(DataError, match=r"column 'g' of the new data holds number values but the fitted "
                                        r"levels of 'g' are text"):
        fit.predict(pd.DataFrame({"x": [0.0], "g": [1]}))


def test_unseen_fixed_effect_category_is_an_error(fake_fit):
    # before: formulaic warned and coded 'd' as the baseline, a silently wrong prediction
    df = group_frame(["a", "b", "c"], c=np.tile(["p", "q", "r"], 4))
    fit = fake_fit("y ~ c + (1 | g)", df)
    with pytest.raises(DataError, match=r"column 'c' of the new data has category \['s'\] not seen in the fit"):
        fit.predict(pd.DataFrame({"c": ["p", "s"], "g": ["a", "a"]}))
    assert len(fit.predict(pd.DataFrame({"c": ["p", "r"], "g": ["a", "b"]}))) == 2


# -- 4. Intercept column, no fixed effects, extreme scales ---------------------------------------------

def test_a_data_column_named_intercept_is_refused():
    df = group_frame(["a", "b", "c"], Intercept=np.arange(12.0))
    with pytest.raises(DataError, match="data column 'Intercept' is used in the formula"):
        design_of("y ~ Intercept + (1 | g)", df)
    assert np.all(design_of("y ~ x + (1 | g)", df).X[:, 0] == 1.0)     # unused: the constant is kept


def test_no_fixed_effects_is_a_clear_error_before_sampling():
    with pytest.raises(FormulaError, match="has no fixed effects"):
        blmm.Model("y ~ 0 + (1 | g)", group_frame(["a", "b", "c"]))


@pytest.mark.parametrize("column,scale", [("y", 1e12), ("x", 1e-12), ("y", 1e-300)])
def test_extreme_scales_are_refused_with_advice_and_tiny_is_not_constant(column, scale):
    df = group_frame(["a", "b", "c"])
    df[column] = df[column] * scale
    with pytest.raises(DataError, match=rf"'{column}' has values of size about .*Rescale it"):
        design_of("y ~ x + (1 | g)", df)


def test_sd_does_not_underflow():
    from bayeslmm.priors import _sd
    v = np.array([1.0, 2.0, 4.0])
    assert _sd(v * 1e-300) == pytest.approx(_sd(v) * 1e-300, rel=1e-12, abs=0)
    assert _sd(v) == float(np.std(v, ddof=1))                        # unchanged on ordinary data


# -- 6. errors that name the file, the column, the parameter ----------------------------------------

def bad_files(tmp_path, good: Path) -> dict[str, Path]:
    raw = good.read_bytes()
    files = {"text": b"formula = 'y ~ x'\n", "empty": b"", "truncated": raw[: len(raw) // 2],
             "hdf5 garbage": raw[:8] + bytes(range(256)) * 40, "netcdf3": b"CDF\x01" + bytes(200),
             "corrupt middle": raw[:4096] + bytes(len(raw) - 8192) + raw[-4096:]}
    out = {}
    for name, data in files.items():
        p = tmp_path / f"{name.replace(' ', '_')}.nc"
        p.write_bytes(data)
        out[name] = p
    out["folder"] = tmp_path
    out["missing"] = tmp_path / "nope.nc"
    return out


def test_load_fit_and_report_on_bad_files_name_the_file(fake_fit, dyestuff, tmp_path, capsys):
    good = fake_fit(DYE, dyestuff).save(tmp_path / "good.nc")
    (tmp_path / "bad").mkdir()
    for kind, path in bad_files(tmp_path / "bad", Path(good)).items():
        with pytest.raises(BayesLMMError) as e:
            blmm.load_fit(path)
        assert str(path) in str(e.value), kind
        rc = cli.main(["report", str(path), "--out", str(tmp_path / "rep")])
        err = capsys.readouterr().err
        assert rc == cli.EXIT_ERROR and str(path) in err and "Traceback" not in err, kind
    assert "NetCDF3" in str(pytest.raises(BayesLMMError, blmm.load_fit, tmp_path / "bad" / "netcdf3.nc").value)


def test_column_names_with_slash_survive_save_and_load(fake_fit, tmp_path):
    df = group_frame(["a", "b", "c"]).rename(columns={"x": "dose/kg"})
    fit = fake_fit("y ~ `dose/kg` + (1 | g)", df)
    again = blmm.load_fit(fit.save(tmp_path / "f.nc"))      # before: h5netcdf raised on the '/'
    assert again.design.fixed_terms == fit.design.fixed_terms
    np.testing.assert_array_equal(again.design.X, fit.design.X)


BAD_OPTIONS = [
    (dict(target_accept="0.95"), "'target_accept' parameter must be in \\(0, 1\\)"),
    (dict(target_accept="abc"), "'target_accept' parameter must be in"),
    (dict(target_accept=1.0), "'target_accept' parameter must be in \\(0, 1\\)"),
    (dict(progressbar="no"), "'progressbar' parameter must be True or False"),
    (dict(cores=-1), "'cores' parameter must be None .* or a positive integer"),
    (dict(cores=0), "'cores' parameter"),
    (dict(chains=2.0), "'chains' parameter must be a positive integer"),
    (dict(seed=-1), "'seed' parameter"),
    (dict(seed="1"), "'seed' parameter"),
    (dict(sampler="stan"), "'sampler' parameter must be one of"),
]


@pytest.mark.parametrize("kw,match", BAD_OPTIONS, ids=lambda v: str(v)[:30])
def test_sampler_options_are_checked_up_front_with_one_template(kw, match):
    with pytest.raises(SpecError, match=match + ".* Got .* instead"):
        blmm.SamplerSpec(**kw)


def test_numpy_integers_are_accepted_and_absurd_draws_refused_before_sampling(dyestuff, monkeypatch):
    s = blmm.SamplerSpec(seed=np.int64(1), draws=np.int32(10), chains=np.int64(2), cores=np.int64(1))
    assert (s.seed, s.draws, type(s.seed)) == (1, 10, int)
    json.dumps(s.to_dict())                                       # saved fits store it as JSON
    from bayeslmm import sampling
    monkeypatch.setattr(sampling, "sample", lambda *a, **k: pytest.fail("sampled"))
    with pytest.raises(SpecError, match="need about .* GiB of memory"):
        blmm.Model(DYE, dyestuff).fit(draws=10**12, progressbar=False, verbose=False)


def test_priors_must_be_a_dict_and_errors_name_the_parameter(dyestuff):
    with pytest.raises(PriorError, match="'priors' parameter must be a dict"):
        blmm.Model(DYE, dyestuff, priors=["normal(0, 1)"])
    with pytest.raises(PriorError, match=r"prior for 'sigma': .*lam=-1.0 must be > 0"):
        blmm.Model(DYE, dyestuff, priors={"sigma": "exponential(-1)"})
    with pytest.raises(PriorError, match="'mu' of 'normal\\(0, sigma=1, mu=5\\)' is given twice"):
        blmm.Model(DYE, dyestuff, priors={"Intercept": "normal(0, sigma=1, mu=5)"})
    m = blmm.Model(DYE, dyestuff, priors={"Intercept": "Normal(1500, 100)", "sigma": "HalfNormal(50)"})
    assert m.prior_table["Intercept"].prior == blmm.priors.parse_prior("normal(1500, 100)")


@pytest.mark.parametrize("change,match", [
    (lambda d: d.assign(y=d.y + 1j), "response 'y' is complex"),
    (lambda d: d.assign(x=d.x.astype(object).where(d.index != 3, "oops")),
     r"column 'x' .*holds numbers and the text value\(s\) \['oops'\] \(first at row\(s\) \[3\]\)"),
    (lambda d: d.assign(x=d.x.map(lambda v: f"{v:.3f}").where(d.index != 5, "n/a")),
     r"column 'x' .*\['n/a'\]"),
    (lambda d: pd.concat([d, d[["x"]]], axis=1), "more than one column named 'x'"),
    (lambda d: d.assign(c=pd.Categorical(["p"] * len(d), categories=["p", "q"])),
     "'c\\[T.q\\]' is 0 in every row: a category that does not occur"),
])
def test_data_problems_are_named(change, match):
    df = change(group_frame(["a", "b", "c", "d", "e", "f"]))
    formula = "y ~ c + x + (1 | g)" if "c" in df.columns else "y ~ x + (1 | g)"
    with pytest.raises(DataError, match=match):
        design_of(formula, df)


def test_formula_messages_for_dot_and_offset():
    df = group_frame(["a", "b", "c"])
    with pytest.raises(FormulaError, match=r"'\.' \(all other columns\) is not supported"):
        design_of("y ~ . + (1 | g)", df)
    # offset() is a supported term since the families of issue 17: a known part of the predictor
    d = design_of("y ~ x + offset(x) + (1 | g)", df)
    np.testing.assert_array_equal(d.offset, df["x"].to_numpy(dtype=float))
    assert "offset" not in " ".join(d.fixed_terms)


@pytest.mark.parametrize("resp,group,formula", [
    ("réponse", "grüppe", "réponse ~ x + (1 | grüppe)"),
    ("my y", "my group", "`my y` ~ x + (x || `my group`)"),
    ("y", "my group", "y ~ x + (1 | `my group`/h)"),
])
def test_unicode_and_spaced_names_as_response_and_group(resp, group, formula):
    df = group_frame(["a", "b", "c"], h=np.tile(["u", "v"], 6)).rename(columns={"y": resp, "g": group})
    d = design_of(formula, df)
    assert d.response == resp and d.factors[0].name == group
    np.testing.assert_array_equal(d.y, df[resp].to_numpy())
    assert blmm.build_spec(blmm.build_spec(formula).formula.text).formula == blmm.build_spec(formula).formula


@pytest.mark.parametrize("formula,succ,trials", [
    ("cbind(réussi, échoué) ~ x + (1 | g)", "réussi", ("failures", "échoué")),
    ("cbind(`n succ`, `n total` - `n succ`) ~ x + (1 | g)", "n succ", ("trials", "n total")),
])
def test_unicode_and_spaced_names_in_cbind(formula, succ, trials):
    # the binomial response (int's cbind) follows the same column-name rule as a plain response
    f = blmm.parse_formula(formula)
    assert f.response == succ and f.trials == trials
    for bad in ("cbind(`a`b`, f) ~ x", "cbind(s, `n` - t) ~ x"):
        with pytest.raises(FormulaError):
            blmm.parse_formula(bad)


def test_bernoulli_text_response_passes_the_stray_text_check():
    df = group_frame(["a", "b", "c"])
    df["y"] = np.where(df["y"] > 0, "yes", "no")
    d = blmm.Model("y ~ x + (1 | g)", df, family="bernoulli").design
    np.testing.assert_array_equal(d.y, (df["y"] == "yes").to_numpy(dtype=float))


def test_cli_checks_out_flags_and_folders_before_sampling(tmp_path, capsys, monkeypatch):
    from bayeslmm import model
    monkeypatch.setattr(model.Model, "fit", lambda *a, **k: pytest.fail("sampled"))
    toml = str(ROOT / "models" / "dyestuff_icc.toml")
    f = tmp_path / "file"
    f.write_text("x")
    cases = [(["fit", toml, "--out", str(f)], "is an existing file, not a folder"),
             (["fit", toml, "--out", str(tmp_path / "o"), "--draws", "-5"],
              "command-line option --draws -5: the 'draws' parameter must be a positive integer"),
             (["fit", toml, "--out", str(tmp_path / "o"), "--target-accept", "1.5"], "option --target-accept"),
             (["check", str(tmp_path)], "is a folder, not a model file")]
    for argv, match in cases:
        assert cli.main(argv) == cli.EXIT_ERROR, argv
        err = capsys.readouterr().err
        assert match in err and "[sampler]" not in err and "Traceback" not in err, (argv, err)


def test_cli_keeps_the_posterior_when_the_report_fails(tmp_path, capsys, monkeypatch):
    from bayeslmm import report
    monkeypatch.setattr(report, "write_report", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    out = tmp_path / "o"
    rc = cli.main(["fit", str(ROOT / "models" / "dyestuff_icc.toml"), "--out", str(out), "--draws", "60",
                   "--tune", "60", "--chains", "2", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == cli.EXIT_ERROR and "boom" in err and f"posterior is saved in {out / 'fit.nc'}" in err
    assert blmm.load_fit(out / "fit.nc").posterior.sizes["draw"] == 60


# -- 7. properties: row order and level names do not matter; the data are never changed -------------

from hypothesis import HealthCheck, given, settings  # noqa: E402  (a test dependency)
from hypothesis import strategies as st  # noqa: E402


def collapsed_logp(design, b, sd, Cc, sigma):
    """Per-group collapsed log-density and its gradient (the exact likelihood the collapsed path samples)."""
    from bayeslmm.paths.collapsed_kernel import kernel_data, one_factor_kernel
    from bayeslmm.stats import group_stats
    data = [np.ascontiguousarray(x, dtype=float) for x in kernel_data(group_stats(design))]
    J = len(data[-1])
    return one_factor_kernel(np.array(1), np.ones(J), np.asarray(b, float), np.asarray(sd, float),
                             np.asarray(Cc, float), np.array(float(sigma)), *data)


@settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n_groups=st.integers(2, 7), labels=st.sampled_from(["str", "int", "float"]))
def test_collapsed_density_is_invariant_to_row_order_and_level_names(seed, n_groups, labels):
    r = np.random.default_rng(seed)
    sizes = r.integers(1, 6, n_groups)
    g = np.repeat(np.arange(n_groups), sizes)
    n = len(g)
    df = pd.DataFrame({"y": r.normal(size=n) * 3 + g, "x": r.normal(size=n), "g": [f"g{k}" for k in g]})
    if n < 4 or np.ptp(df["x"]) == 0:
        return
    before = df.copy(deep=True)
    formula = "y ~ x + (1 + x | g)"
    base = design_of(formula, df)
    # shuffle the rows and give the levels new names in another order (and of another type)
    perm = r.permutation(n)
    new_names = r.permutation(n_groups) * 7 + 100
    mapping = {f"g{k}": (f"level {v}" if labels == "str" else int(v) if labels == "int" else float(v) + 0.5)
               for k, v in enumerate(new_names)}
    other = df.iloc[perm].reset_index(drop=True).assign(g=lambda d: d["g"].map(mapping))
    moved = design_of(formula, other)
    pd.testing.assert_frame_equal(df, before)                              # never mutated
    params = (r.normal(size=2), np.exp(r.normal(size=2)), np.array([[1, 0], [0.3, np.sqrt(1 - 0.09)]]),
              np.exp(r.normal()))
    lp0, *grad0 = collapsed_logp(base, *params)
    lp1, *grad1 = collapsed_logp(moved, *params)
    # the same groups, matched through their names: equal per-group densities and equal gradients
    order = [moved.factors[0].levels.index(blmm.design.level_label(mapping[lv])) for lv in base.factors[0].levels]
    np.testing.assert_allclose(lp1[order], lp0, rtol=1e-9, atol=1e-9)
    for a, b in zip(grad0, grad1):
        np.testing.assert_allclose(b, a, rtol=1e-8, atol=1e-8)


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), with_nan=st.booleans(), as_category=st.booleans())
def test_the_input_dataframe_is_never_mutated(seed, with_nan, as_category):
    r = np.random.default_rng(seed)
    df = group_frame(["a", "b", "c", "d"], seed=seed, c=r.choice(["p", "q"], 16))
    if with_nan:
        df.loc[r.integers(0, 16), "x"] = np.nan
    if as_category:
        df["g"] = df["g"].astype("category")
    before = df.copy(deep=True)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = blmm.Model("y ~ x + c + (1 + x | g)", df)
        from bayeslmm.design import predictor_arrays
        predictor_arrays(m.design, df.dropna())
    pd.testing.assert_frame_equal(df, before)
    assert df.index.equals(before.index) and list(df.columns) == list(before.columns)
