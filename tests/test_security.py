"""Formulas are data: no formula can make bayeslmm run code (issue 18, security).

formulaic evaluates call terms with Python's ``eval`` (numpy and the builtins in scope), so before
the allow-list ``y ~ x + np.f2py.os.system('touch M') + (1 | g)`` ran a shell command while the model
was built. Every attack below goes through every entry point that turns text into a model:
``parse_formula``, ``build_spec``, ``Model``, ``bayeslmm.fit``, a model file (``load_model_file`` and
the CLI's ``check`` and ``priors``) and a saved fit whose stored formula was tampered with
(``load_fit`` and ``bayeslmm report``), in each place a formula can hold one (fixed part, a bar
term's left-hand side, the grouping factor, the response). Each must refuse with a FormulaError
(the CLI: exit 1 and the message) AND the marker file the attack would write must not exist.
Allowed transforms are checked against numpy on the design matrices they produce.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import dataclasses
import io
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings  # a test dependency (pyproject [test])
from hypothesis import strategies as st

import bayeslmm as blmm
from bayeslmm import cli
from bayeslmm.errors import BayesLMMError, FormulaError, ModelFileError
from bayeslmm.formula import ParsedFormula, parse_formula, required_columns
from bayeslmm.design import predictor_arrays
from bayeslmm.specfile import load_model_file

pytestmark = pytest.mark.filterwarnings("ignore::bayeslmm.diagnostics.ConvergenceWarning",
                                        "ignore::UserWarning")

# M is replaced by the marker path; each payload would create (or try to create) that file
PAYLOADS = {
    "np.f2py.os.system": "np.f2py.os.system('touch M')",
    "np.lib._datasource.os.system": "np.lib._datasource.os.system('touch M')",
    "np.savetxt": "np.savetxt('M', [1])",
    "__import__": "__import__('os').system('touch M')",
    "eval": "eval(\"__import__('os').system('touch M')\")",
    "exec": "exec(\"open('M', 'w')\")",
    "open": "open('M', 'w')",
    "getattr": "getattr(np, 'savetxt')('M', [1])",
    "__class__ walk": "().__class__.__base__.__subclasses__()",
    "__builtins__": "__builtins__['open']('M', 'w')",
    "braces": "{__import__('os').system('touch M')}",
    "braces arithmetic": "{np.savetxt('M', [1]) or x}",
    "lambda": "(lambda: np.savetxt('M', [1]))()",
    "comprehension": "[np.savetxt('M', [1]) for _ in [1]]",
    "inside log": "log(np.f2py.os.system('touch M'))",
    "inside I": "I(x + np.savetxt('M', [1]))",
    "inside np.log": "np.log(np.savetxt('M', [1]))",
    "stateful scale": "scale(np.savetxt('M', [1]))",
    "keyword smuggling": "scale(x, _state=np.savetxt('M', [1]))",
    "C contrast": "C(g, np.savetxt('M', [1]))",
    "subscript": "x[np.savetxt('M', [1])]",
    "call of a call": "log(x)(np.savetxt('M', [1]))",
    "walrus": "I((f := np.savetxt)('M', [1]))",
    "np.exp attribute": "np.exp.__call__(np.savetxt('M', [1]))",
}

# where the payload P sits in the formula
PLACES = {
    "fixed": "y ~ x + P + (1 | g)",
    "bar lhs": "y ~ x + (1 + P | g)",
    "group": "y ~ x + (1 | P)",
    "response": "P ~ x + (1 | g)",
}

CASES = [pytest.param(p, place, id=f"{name}-{place}") for name, p in PAYLOADS.items() for place in PLACES]
# opening a saved fit takes about a second: every payload in the fixed part, three in every place
FIT_CASES = [c for c in CASES if c.values[1] == "fixed" or c.id.split("-")[0] in
             ("np.f2py.os.system", "braces", "__import__")]


def attack(payload: str, place: str, marker: Path) -> str:
    return PLACES[place].replace("P", payload.replace("M", str(marker)))


def data() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"x": rng.uniform(1, 5, 40), "g": np.repeat(list("abcd"), 10)})
    df["y"] = 1 + df.x + rng.normal(size=40)
    return df


def toml_file(dir_: Path, formula: str) -> Path:
    data().to_csv(dir_ / "d.csv", index=False)
    path = dir_ / "m.toml"
    # json.dumps gives a valid TOML basic string (same escapes)
    path.write_text(f"[model]\nformula = {json.dumps(formula)}\n\n[data]\npath = \"d.csv\"\n")
    return path


def run_cli(argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = cli.main(argv)
    return rc, err.getvalue()


def refused_message(text: str) -> bool:
    """The error is the formula check's (not some later failure that happens to stop the attack)."""
    return "not a column name" in text or "Formulas may contain only" in text or "is not allowed" in text


def test_the_attack_worked_before(tmp_path):
    """The payloads are live: evaluated the way formulaic evaluates a term, one creates the marker.

    This is the hole the allow-list closes (formulaic's model_matrix with numpy in scope).
    """
    import formulaic
    marker = tmp_path / "pwned"
    with contextlib.suppress(Exception):
        formulaic.model_matrix(PAYLOADS["np.savetxt"].replace("M", str(marker)), data())
    assert marker.exists()


@pytest.mark.parametrize("payload, place", CASES)
def test_api_entry_points_refuse(tmp_path, payload, place):
    marker = tmp_path / "pwned"
    formula = attack(payload, place, marker)
    df = data()
    calls = [
        lambda: parse_formula(formula),
        lambda: blmm.build_spec(formula),
        lambda: blmm.Model(formula, df),
        lambda: blmm.fit(formula, df, draws=10, tune=10, chains=1, progressbar=False),
    ]
    for call in calls:
        with pytest.raises(FormulaError) as e:
            call()
        assert refused_message(str(e.value)), str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize("payload, place", CASES)
def test_model_file_and_cli_refuse(tmp_path, payload, place):
    marker = tmp_path / "pwned"
    path = toml_file(tmp_path, attack(payload, place, marker))
    with pytest.raises(ModelFileError) as e:
        load_model_file(path)
    assert "model.formula" in str(e.value) and refused_message(str(e.value))
    for command in ("check", "priors"):
        rc, err = run_cli([command, str(path)])
        assert rc == cli.EXIT_ERROR
        assert f"bayeslmm {command}: error:" in err and refused_message(err), err
    rc, err = run_cli(["fit", str(path), "--out", str(tmp_path / "out"), "--draws", "10", "--tune", "10",
                       "--chains", "1", "--no-progress"])
    assert rc == cli.EXIT_ERROR and refused_message(err), err
    assert not marker.exists()


# ---------------------------------------------------------------- saved fits


@pytest.fixture(scope="module")
def saved_fit(tmp_path_factory):
    """A real (tiny) fit written by Fit.save: the file an attacker would edit and send."""
    path = tmp_path_factory.mktemp("fit") / "fit.nc"
    fit = blmm.Model("y ~ x + (1 | g)", data()).fit(chains=1, draws=30, tune=30, seed=1,
                                                    progressbar=False, verbose=False)
    fit.save(path)
    return path


def tampered(saved: Path, dest: Path, formula: str) -> Path:
    """A copy of ``saved`` whose stored formula (root attribute bayeslmm_spec) is ``formula``."""
    import h5py
    dest.write_bytes(saved.read_bytes())
    with h5py.File(dest, "r+") as h:
        spec = json.loads(h.attrs["bayeslmm_spec"])
        spec["formula"] = formula
        h.attrs["bayeslmm_spec"] = json.dumps(spec)
    return dest


def test_tampering_keeps_a_readable_fit(saved_fit, tmp_path):
    """Control: the tampering itself does not break the file, so the refusals below are the check's."""
    fit = blmm.load_fit(tampered(saved_fit, tmp_path / "ok.nc", "y ~ 1 + x + (1 | g)"))
    assert fit.spec.formula.text == "y ~ 1 + x + (1 | g)"
    assert fit.design.fixed_terms == ("Intercept", "x")


@pytest.mark.parametrize("payload, place", FIT_CASES)
def test_saved_fit_with_a_tampered_formula_is_refused(saved_fit, tmp_path, payload, place):
    marker = tmp_path / "pwned"
    path = tampered(saved_fit, tmp_path / "fit.nc", attack(payload, place, marker))
    with pytest.raises(FormulaError) as e:
        blmm.load_fit(path)
    assert refused_message(str(e.value)), str(e.value)
    rc, err = run_cli(["report", str(path), "--out", str(tmp_path / "out")])
    assert rc == cli.EXIT_ERROR and "bayeslmm report: error:" in err and refused_message(err), err
    assert not marker.exists()
    assert not (tmp_path / "out" / "report.html").exists()


# ---------------------------------------------------------------- other bypasses


def test_a_hand_built_formula_is_checked_too(tmp_path):
    """ParsedFormula repeats the check, so Model(ModelSpec(...)) cannot smuggle a term past it."""
    marker = tmp_path / "pwned"
    bad = f"np.savetxt('{marker}', [1])"
    good = parse_formula("y ~ x + (1 | g)")
    for kwargs in ({"fixed": bad}, {"response": "__class__"},
                   {"random": (dataclasses.replace(good.random[0], expr=bad),)},
                   {"random": (dataclasses.replace(good.random[0], group="np.f2py.os.system('x')"),)}):
        with pytest.raises(FormulaError):
            dataclasses.replace(good, **kwargs)
    with pytest.raises(FormulaError):
        ParsedFormula(text="y ~ x", response="y", fixed=bad, random=())
    with pytest.raises(FormulaError):
        required_columns(bad)
    assert not marker.exists()


@pytest.mark.parametrize("formula, term, offset", [
    ("y ~ x + np.f2py.os.system('touch /tmp/x') + (1 | g)", "np.f2py.os.system('touch /tmp/x')", 8),
    ("y ~ x + (1 + np.savetxt('a', [1]) | g)", "np.savetxt('a', [1])", 13),
    ("y ~ x + {1} + (1 | g)", "{1}", 8),
    ("y ~ log(x) + offset(x)", "offset(x)", 13),
    ("y ~ x + (1|g) + I(x > 1)", "I(x > 1)", 16),
])
def test_message_names_the_term_and_its_position(formula, term, offset):
    with pytest.raises(FormulaError) as e:
        parse_formula(formula)
    msg = str(e.value)
    assert repr(term) in msg and f"at character {offset} of the formula" in msg, msg
    assert formula[offset:].startswith(term[:3])
    assert "log1p()" in msg and "poly(x, degree)" in msg  # the hint lists the allowed transforms


@pytest.mark.parametrize("rhs", [
    "C(g, contr.sum)", "C(g, levels=['b', 'a'])", "C(g, Treatment('b'))", "log(x, out=x)",
    "scale(x, ddof=z)", "poly(x, z)", "poly(x, 0)", "poly(x, degree=2.5)", "bs(x, 3)", "offset(x)",
    "x %in% g", ".", "I(x > 1)", "I(x if x else 1)", "I(x // 2)", "I(x % 2)",
    "log(x.real)", "__x__", "x.__class__", "I(2 ** 3)", "I(9 ** 9 ** 9)", "'text'", "Q(x)",
    "Q('a', 'b')", "I(x, x)", "log(*x)", "log(**x)", "I('a')", "I(True)", "I(1j)", "I(log)", "C(np)",
    "lambda: 1", "x[0]", "log(x)[0]", "f\"{x}\"", "np.log(x).T", "log(x, x)",
])
def test_refused_outside_the_allow_list(rhs):
    with pytest.raises(FormulaError):
        parse_formula(f"y ~ {rhs} + (1 | g)")
    with pytest.raises(FormulaError):
        parse_formula(f"y ~ 1 + (1 + {rhs} | g)")


@pytest.mark.parametrize("name", ["np", "np.pi", "np.f2py.os", "log", "open"])
def test_plain_names_are_only_looked_up_as_columns(name):
    """A bare name (dots allowed, as in R's `my.col`) is a column label that formulaic looks up in the
    data, never evaluated: an unknown one is a DataError naming it."""
    assert parse_formula(f"y ~ {name} + (1 | g)").fixed == name
    with pytest.raises(blmm.DataError, match=f"column '{name}' used in the fixed part"):
        blmm.Model(f"y ~ {name} + (1 | g)", data())


# ---------------------------------------------------------------- what is allowed still works


def allowed_data() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    df = pd.DataFrame({"x": rng.uniform(1, 5, 60), "g": np.repeat(list("abcdef"), 10),
                       "my col": rng.normal(size=60), "my.col": rng.normal(size=60)})
    df["y"] = df.x + rng.normal(size=60)
    return df


def _std(v, ddof):
    return (v - v.mean()) / v.std(ddof=ddof)


ALLOWED = [  # (term, expected column names, expected columns from numpy)
    ("np.log(x)", ["np.log(x)"], lambda d: [np.log(d.x)]),
    ("log(x)", ["log(x)"], lambda d: [np.log(d.x)]),
    ("log2(x)", ["log2(x)"], lambda d: [np.log2(d.x)]),
    ("np.log10(x)", ["np.log10(x)"], lambda d: [np.log10(d.x)]),
    ("log1p(x)", ["log1p(x)"], lambda d: [np.log1p(d.x)]),
    ("sqrt(x)", ["sqrt(x)"], lambda d: [np.sqrt(d.x)]),
    ("np.exp(x)", ["np.exp(x)"], lambda d: [np.exp(d.x)]),
    ("abs(I(x - 3))", ["abs(I(x - 3))"], lambda d: [np.abs(d.x - 3)]),
    ("I(x**2)", ["I(x ** 2)"], lambda d: [d.x ** 2]),
    ("I(-x / 2 + 1)", ["I(-x / 2 + 1)"], lambda d: [-d.x / 2 + 1]),
    ("log(x + 1)", ["log(x + 1)"], lambda d: [np.log(d.x + 1)]),
    ("scale(x)", ["scale(x)"], lambda d: [_std(d.x, 1)]),
    ("scale(x, ddof=0)", ["scale(x, ddof=0)"], lambda d: [_std(d.x, 0)]),
    ("center(x)", ["center(x)"], lambda d: [d.x - d.x.mean()]),
    ("standardize(x)", ["standardize(x)"], lambda d: [_std(d.x, 0)]),
    ("np.exp(scale(x))", ["np.exp(scale(x))"], lambda d: [np.exp(_std(d.x, 1))]),
    ("Q('my col')", ["Q('my col')"], lambda d: [d["my col"]]),
    ("`my col`", ["my col"], lambda d: [d["my col"]]),
    ("`my.col`", ["my.col"], lambda d: [d["my.col"]]),
    ("log(`x`)", ["log(`x`)"], lambda d: [np.log(d.x)]),
    ("C(g)", [f"C(g)[T.{k}]" for k in "bcdef"], lambda d: [(d.g == k).astype(float) for k in "bcdef"]),
    ("x:C(g)", [f"x:C(g)[{k}]" for k in "abcdef"], lambda d: [d.x * (d.g == k) for k in "abcdef"]),
]


@pytest.mark.parametrize("term, names, columns", ALLOWED, ids=[a[0] for a in ALLOWED])
def test_allowed_transforms_build_the_right_columns(term, names, columns):
    df = allowed_data()
    m = blmm.Model(f"y ~ {term} + (1 + {term} | g)", df)
    expected = np.column_stack([np.asarray(c, dtype=float) for c in columns(df)])
    assert m.design.fixed_terms == ("Intercept", *names)
    np.testing.assert_allclose(m.design.X[:, 1:], expected, rtol=1e-12, atol=1e-12)
    z = m.design.factors[0]
    assert z.terms == ("Intercept", *names)
    np.testing.assert_allclose(z.Z[:, 1:], expected, rtol=1e-12, atol=1e-12)
    # predictions rebuild the same columns for new data (stateful transforms keep the fit's state)
    new = df.iloc[::7].reset_index(drop=True)
    X_new, parts = predictor_arrays(m.design, new)
    np.testing.assert_allclose(X_new, m.design.X[::7], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(parts[0][1], z.Z[::7], rtol=1e-12, atol=1e-12)


def test_poly_and_operators():
    df = allowed_data()
    m = blmm.Model("y ~ poly(x, 2) + (1 | g)", df)
    assert m.design.fixed_terms == ("Intercept", "poly(x, 2)[1]", "poly(x, 2)[2]")
    P = m.design.X[:, 1:]
    # orthogonal polynomials: orthonormal, orthogonal to the intercept, same span as 1, x, x^2
    np.testing.assert_allclose(P.T @ P, np.eye(2), atol=1e-10)
    np.testing.assert_allclose(P.sum(axis=0), 0, atol=1e-10)
    B = np.column_stack([np.ones(60), df.x, df.x ** 2])
    resid = P - B @ np.linalg.lstsq(B, P, rcond=None)[0]
    assert np.abs(resid).max() < 1e-10
    m = blmm.Model("y ~ 0 + x + (1 | g)", df)
    assert m.design.fixed_terms == ("x",)
    m = blmm.Model("y ~ (x + `my col`)**2 - 1 + (x || g)", df)
    assert m.design.fixed_terms == ("x", "my col", "x:my col")


def test_required_columns_without_evaluating():
    assert required_columns("x + np.log(z) + I(x**2) + C(g) + Q('my col') + `a b`:w") == (
        "x", "z", "g", "my col", "a b", "w")
    assert required_columns("scale(u) + poly(v, 2) + center(t) + abs(s)") == ("u", "v", "t", "s")


# ---------------------------------------------------------------- property tests

FRAGMENTS = [
    "x", "z", "g", "y", "1", "0", "-1", "2", " ", "+", "-", "*", "/", ":", "**", "^", "(", ")", "|", "||",
    "~", "{", "}", "[", "]", "'", '"', "`", ",", ".", "=", "%in%", "log(", "np.log(", "np.", "I(", "C(",
    "Q('my col')", "`my col`", "scale(", "poly(x, 2)", "center(x)", "x**2", "lambda", ":", "__import__",
    "__class__", "eval(", "open(", "os", "system", "np.f2py.os.system('touch M')", "np.savetxt('M', [1])",
    "{open('M', 'w')}", "getattr(", "()", "(1 | g)", "(x || g)", "(1 | a/b)", "\\", "\n", "\x00", "é",
]

formula_text = st.one_of(
    st.text(max_size=60),
    st.lists(st.sampled_from(FRAGMENTS), max_size=14).map("".join),
    st.builds(lambda a, b: f"y ~ {a} + {b}",
              st.lists(st.sampled_from(FRAGMENTS), max_size=8).map("".join),
              st.sampled_from(["(1 | g)", "(x | g)", "(1 | g) + (1 | z)", "x"])),
)


# formulas built from allowed terms with attack terms mixed in: most reach formulaic
GOOD_TERMS = ["x", "z", "C(g)", "log(x)", "np.log(x)", "I(x**2)", "scale(z)", "poly(x, 2)", "center(x)",
              "standardize(z)", "sqrt(z)", "log1p(x)", "abs(x)", "`my col`", "Q('my col')", "I(-x / 2 + 1)",
              "np.exp(scale(x))", "log(x + 1)", "1", "0"]
BAD_TERMS = list(PAYLOADS.values()) + ["x.y(1)", "log(x)(1)", "{x}", "I(x)[0]"]


def grammar(term):
    """``y ~ t op t op ... + (bar terms)`` with terms drawn from ``term``."""
    return st.builds(
        lambda terms, ops, bars: "y ~ " + "".join(f"{t}{o}" for t, o in zip(terms, ops)).rstrip(" +-*:")
        + "".join(f" + {b}" for b in bars),
        st.lists(term, min_size=1, max_size=4),
        st.lists(st.sampled_from([" + ", " - ", "*", ":", " + "]), min_size=4, max_size=4),
        st.lists(st.one_of(st.sampled_from(["(1 | g)", "(x | g)", "(1 | a/b)"]),
                           term.map(lambda t: f"(1 + {t} || g)")), min_size=1, max_size=2, unique=True))


good_formula = grammar(st.sampled_from(GOOD_TERMS))
mixed_formula = grammar(st.sampled_from(GOOD_TERMS + BAD_TERMS))


class Evaluated(BaseException):
    """Raised by the patched eval/exec/compile; a BaseException so no `except Exception` hides it."""


@contextlib.contextmanager
def no_evaluation():
    """Make eval, exec and code-compiling compile fail loudly (ast.parse's compile stays allowed)."""
    real_compile = builtins.compile

    def guarded_compile(source, filename, mode, flags=0, *args, **kwargs):
        if not flags & ast.PyCF_ONLY_AST:
            raise Evaluated(f"compile({source!r})")
        return real_compile(source, filename, mode, flags, *args, **kwargs)

    def refuse(*args, **kwargs):
        raise Evaluated(repr(args))

    saved = builtins.eval, builtins.exec, builtins.compile
    builtins.eval, builtins.exec, builtins.compile = refuse, refuse, guarded_compile
    try:
        yield
    finally:
        builtins.eval, builtins.exec, builtins.compile = saved


@pytest.fixture(scope="module")
def marker_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("marker")


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.one_of(formula_text, mixed_formula))
def test_parse_formula_raises_only_bayeslmm_errors_and_evaluates_nothing(marker_dir, text):
    marker = marker_dir / "pwned"
    text = text.replace("M", str(marker))
    with no_evaluation():
        try:
            parsed = parse_formula(text)
        except BayesLMMError:
            parsed = None
    if parsed is not None:  # whatever passes uses only names, numbers and allowed calls
        for part in (parsed.fixed, *(t.expr for t in parsed.random)):
            with no_evaluation():
                required_columns(part)
    assert not marker.exists()


@contextlib.contextmanager
def no_side_effects():
    """os.system, os.popen, subprocess.Popen and numpy's file writers raise Evaluated (which no
    ``except Exception`` in formulaic or bayeslmm can turn into an ordinary error)."""
    def forbidden(*args, **kwargs):
        raise Evaluated(f"a formula called a forbidden function with {args!r}")

    mp = pytest.MonkeyPatch()
    for obj, name in ((os, "system"), (os, "popen"), (subprocess, "Popen"), (np, "savetxt"), (np, "save")):
        mp.setattr(obj, name, forbidden)
    try:
        yield
    finally:
        mp.undo()


@settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.one_of(good_formula, mixed_formula, formula_text))
def test_building_any_accepted_formula_runs_nothing(marker_dir, text):
    """Whatever parse_formula accepts is then evaluated by formulaic: it may fail, but only with a
    bayeslmm error, and never reaches os.system, subprocess or a file write."""
    marker = marker_dir / "pwned"
    text = text.replace("M", str(marker))
    try:
        spec = blmm.build_spec(text)
    except BayesLMMError:
        return
    df = data().assign(z=lambda d: d.x ** 2, a=lambda d: d.g, b=lambda d: d.g, **{"my col": 1.0})
    with no_side_effects():
        try:
            blmm.make_design(spec, df, warn=False)
        except BayesLMMError:
            pass
    assert not marker.exists()
