"""TOML model files: round trips, data sources, and errors that name the key and the file.

No sampling here: every test is fast.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import bayeslmm as blmm
from bayeslmm.errors import ModelFileError
from bayeslmm.specfile import (REPORT_PLOTS, ModelFile, dumps_model_file, load_model_file,
                               loads_model_file, save_model_file)

ROOT = Path(__file__).resolve().parents[1]
MODELS = sorted((ROOT / "models").glob("*.toml"))

MINIMAL = """
[model]
formula = "Reaction ~ Days + (Days | Subject)"
[data]
dataset = "sleepstudy"
"""


def write(tmp_path: Path, text: str, name: str = "model.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# -- the shipped model files ---------------------------------------------------------------------

def test_models_directory_ships_the_six_examples():
    names = {p.stem for p in MODELS}
    assert {"sleepstudy_intercept", "sleepstudy_slopes", "dyestuff_icc", "radon_county_shrinkage",
            "schools_icc", "pigeons_repeated"} <= names


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.stem)
def test_shipped_model_loads_builds_and_round_trips(path, tmp_path):
    mf = load_model_file(path)
    assert mf.name == path.stem
    assert mf.sampler.seed is not None, "shipped models must be reproducible: give [sampler] seed"
    model = mf.build_model()
    assert model.design.n > 0
    # text round trip, and a file round trip into another directory (relative data path rewritten)
    assert loads_model_file(dumps_model_file(mf), source=str(path), base_dir=str(path.parent)) == mf
    (tmp_path / "sub").mkdir()
    copy = load_model_file(save_model_file(mf, tmp_path / "sub" / "copy.toml"))
    assert copy.spec == mf.spec and copy.sampler == mf.sampler and copy.report == mf.report
    pd.testing.assert_frame_equal(copy.load_data(), mf.load_data())


def test_round_trip_keeps_full_precision_priors_and_all_sections():
    text = MINIMAL + """
[priors]
Days = "normal(10.123456789, 3.25)"
"sd(Subject, Days)" = "halfstudentt(3, 7.77777)"
"cor(Subject)" = "lkj(1.5)"
[sampler]
chains = 3
draws = 123
tune = 45
seed = 7
target_accept = 0.975
cores = 1
progressbar = false
[report]
title = "t \\"quoted\\" ü"
prob = 0.9
plots = ["trace", "icc"]
icc_at = { Days = [0, 9], Other = 2.5 }
"""
    mf = loads_model_file(text, source="x.toml")
    assert dict(mf.spec.priors)["Days"].kwargs == {"mu": 10.123456789, "sigma": 3.25}
    assert mf.report.icc_at == (("Days", (0.0, 9.0)), ("Other", (2.5,)))
    assert mf.report.title == 't "quoted" ü'
    again = loads_model_file(dumps_model_file(mf), source="x.toml")
    assert again == mf
    assert dict(again.spec.priors)["Days"].kwargs["mu"] == 10.123456789
    assert again.sampler.to_dict() == {"chains": 3, "draws": 123, "tune": 45, "seed": 7,
                                       "target_accept": 0.975, "sampler": "pymc", "cores": 1,
                                       "progressbar": False, "init": "auto"}


def test_defaults_of_a_minimal_file():
    mf = loads_model_file(MINIMAL, source="dir/my_model.toml")
    assert mf.name == "my_model"
    assert mf.spec.family == "gaussian" and mf.spec.method == "auto" and mf.missing == "drop"
    assert mf.sampler == blmm.SamplerSpec()
    assert mf.report.plots == REPORT_PLOTS and mf.report.prob == 0.95
    assert mf.fit_kwargs()["draws"] == 1000


def test_with_sampler_overrides_only_given_values():
    mf = loads_model_file(MINIMAL + "[sampler]\nseed = 5\ndraws = 900\n", source="m.toml")
    new = mf.with_sampler(draws=50, chains=None, seed=None)
    assert (new.sampler.draws, new.sampler.seed, new.sampler.chains) == (50, 5, 4)
    with pytest.raises(ModelFileError, match=r"m\.toml.*'draws'"):
        mf.with_sampler(draws=0)


# -- data sources --------------------------------------------------------------------------------

def test_csv_path_is_relative_to_the_model_file_and_categorical_columns_are_text(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    pd.DataFrame({"y": [1.0, 2.0, 3.5, 4.0], "g": [1, 1, 2, 2]}).to_csv(tmp_path / "data" / "d.csv", index=False)
    p = write(tmp_path, '[model]\nformula = "y ~ 1 + (1 | g)"\n[data]\npath = "data/d.csv"\n'
                        'categorical = ["g"]\n')
    monkeypatch.chdir("/")  # the current directory must not matter
    df = load_model_file(p).load_data()
    assert df["g"].tolist() == ["1", "1", "2", "2"]
    assert load_model_file(p).build_model().design.factors[0].levels == ("1", "2")


def test_parquet_data(tmp_path):
    pytest.importorskip("pyarrow")
    df = blmm.load_dataset("Dyestuff")
    df.to_parquet(tmp_path / "dye.parquet")
    p = write(tmp_path, '[model]\nformula = "Yield ~ 1 + (1 | Batch)"\n[data]\npath = "dye.parquet"\n')
    got = load_model_file(p).load_data()
    pd.testing.assert_frame_equal(got, df)


def test_loading_data_never_shares_memory_with_the_bundled_copy():
    mf = loads_model_file(MINIMAL, source="m.toml")
    a = mf.load_data()
    a.loc[0, "Reaction"] = -1.0
    assert mf.load_data().loc[0, "Reaction"] != -1.0


def test_simulated_data_are_reproduced_by_the_generator(tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location("simulate", ROOT / "models" / "data" / "simulate.py")
    sim = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sim)
    sim.main(["--out", str(tmp_path)])
    for name in ("schools.csv", "pigeons.csv"):
        assert (tmp_path / name).read_bytes() == (ROOT / "models" / "data" / name).read_bytes(), name
    schools = pd.read_csv(ROOT / "models" / "data" / "schools.csv")
    sizes = schools.groupby("school").size()
    assert len(sizes) == 40 and sizes.min() >= 10 and sizes.max() <= 40
    assert sim.SCHOOLS["var_school"] / (sim.SCHOOLS["var_school"] + sim.SCHOOLS["var_pupil"]) == \
        pytest.approx(0.142857, abs=1e-6)
    pigeons = pd.read_csv(ROOT / "models" / "data" / "pigeons.csv")
    assert pigeons.shape == (240, 4)
    # condition is constant within each pigeon (a between-pigeon factor), 12 pigeons each
    assert (pigeons.groupby("pigeon")["condition"].nunique() == 1).all()
    assert pigeons.groupby("condition")["pigeon"].nunique().tolist() == [12, 12]
    assert np.array_equal(np.sort(pigeons["session"].unique()), np.arange(1, 11))


# -- errors: each names the file and the key -----------------------------------------------------

BROKEN = [
    # (file text, the key the message must name, another fragment it must contain)
    (MINIMAL + "[sampler]\ndraw = 100\n", "sampler.draw", "Did you mean 'draws'"),
    (MINIMAL + "[sampler]\ndraws = \"1000\"\n", "sampler.draws", "must be an integer"),
    (MINIMAL + "[sampler]\ndraws = 10.5\n", "sampler.draws", "must be an integer"),
    (MINIMAL + "[sampler]\nprogressbar = 1\n", "sampler.progressbar", "true or false"),
    (MINIMAL + "[sampler]\nchains = 0\n", "sampler.chains", "positive integer"),
    (MINIMAL + "[sampler]\ntarget_accept = 1.5\n", "sampler.target_accept", "(0, 1)"),
    (MINIMAL + "[sampler]\nsampler = \"stan\"\n", "sampler.sampler", "pymc"),
    (MINIMAL + "[smapler]\ndraws = 5\n", "smapler", "Did you mean 'sampler'"),
    (MINIMAL + "[report]\nplots = \"trace\"\n", "report.plots", "list of strings"),
    (MINIMAL + "[report]\nplots = [\"trace\", \"forest\"]\n", "report.plots", "forest"),
    (MINIMAL + "[report]\nprob = 95\n", "report.prob", "(0, 1)"),
    (MINIMAL + "[report]\nicc_at = { Days = \"nine\" }\n", "report.icc_at", "table of number lists"),
    (MINIMAL + "[priors]\nsigma = 3\n", 'priors."sigma"', "must be a string"),
    (MINIMAL + "[priors]\nsigma = \"weibull(2, 3)\"\n", 'priors."sigma"', "cannot read prior"),
    (MINIMAL.replace("Reaction ~", "Reaction ~~"), "model.formula", "Reaction ~~"),
    (MINIMAL.replace('formula = "Reaction ~ Days + (Days | Subject)"', 'formula = ["y ~ x"]'),
     "model.formula", "must be a string"),
    (MINIMAL.replace('formula = "Reaction ~ Days + (Days | Subject)"\n', ""), "model.formula", "missing"),
    (MINIMAL + "family = \"poisson\"\n", "data.family", "unknown key"),
    (MINIMAL.replace("[data]", "family = \"gamma\"\n[data]"), "model.family", "gaussian"),
    (MINIMAL.replace("[data]", "method = \"laplace\"\n[data]"), "model.method", "marginal"),
    (MINIMAL.replace("[data]", "formla = \"y ~ x\"\n[data]"), "model.formla", "Did you mean 'formula'"),
    (MINIMAL.replace('dataset = "sleepstudy"', 'dataset = "sleepstudi"'), "data.dataset", "sleepstudy"),
    (MINIMAL.replace('dataset = "sleepstudy"', 'dataset = "sleepstudy"\npath = "x.csv"'), "data.dataset",
     "both"),
    (MINIMAL.replace('dataset = "sleepstudy"', 'path = "nothere.csv"'), "data.path", "does not exist"),
    (MINIMAL.replace('dataset = "sleepstudy"', 'path = "data.xlsx"'), "data.path", "CSV or Parquet"),
    ('seed = 1\n' + MINIMAL, "seed", "unknown key"),
    ("[model]\nformula = \"y ~ 1\"\n", "[data]", "missing table"),
]


@pytest.mark.parametrize("text, key, fragment", BROKEN, ids=[b[1] + "-" + str(i) for i, b in enumerate(BROKEN)])
def test_broken_file_names_the_key_and_the_file(tmp_path, text, key, fragment):
    p = write(tmp_path, text, "broken_model.toml")
    with pytest.raises(ModelFileError) as ei:
        load_model_file(p)
    msg = str(ei.value)
    assert str(p) in msg, msg
    assert key in msg, msg
    assert fragment in msg, msg


def test_invalid_toml_syntax_names_the_file_and_line(tmp_path):
    p = write(tmp_path, "[model]\nformula = Reaction ~ Days\n", "syntax.toml")
    with pytest.raises(ModelFileError, match=r"syntax\.toml: not valid TOML.*line 2"):
        load_model_file(p)


def test_missing_model_file():
    with pytest.raises(ModelFileError, match=r"nope\.toml.*does not exist"):
        load_model_file("nope.toml")


def test_errors_found_with_the_data_name_the_file(tmp_path):
    # a prior label that names no parameter is only known once the design exists
    p = write(tmp_path, MINIMAL + '[priors]\n"sd(Subject, Day)" = "halfnormal(5)"\n', "prior.toml")
    mf = load_model_file(p)
    with pytest.raises(ModelFileError, match=r"prior\.toml: table \[priors\].*sd\(Subject, Day\)"):
        mf.build_model()
    # a column that is not in the data
    p = write(tmp_path, MINIMAL.replace("Days +", "Dayz +"), "column.toml")
    with pytest.raises(ModelFileError, match=r"column\.toml: keys 'model\.formula' / 'data'.*Dayz"):
        load_model_file(p).build_model()
    # a categorical column that is not in the data
    p = write(tmp_path, MINIMAL + 'categorical = ["Subjekt"]\n', "cat.toml")
    with pytest.raises(ModelFileError, match=r"cat\.toml: key 'data\.categorical'.*Subjekt"):
        load_model_file(p).load_data()


def test_model_file_is_frozen_and_hashable():
    mf = loads_model_file(MINIMAL, source="m.toml")
    assert isinstance(hash(mf), int)
    with pytest.raises(AttributeError):
        mf.name = "other"  # type: ignore[misc]
    assert isinstance(mf, ModelFile)


def test_report_options_icc_points_and_report_kwargs():
    mf = loads_model_file(MINIMAL + "[report]\ntitle = \"T\"\nplots = [\"icc\"]\n"
                          "icc_at = { Days = [0, 9], x = 1 }\n", source="m.toml")
    assert mf.report.icc_points() == [{"Days": 0.0, "x": 1.0}, {"Days": 9.0, "x": 1.0}]
    assert mf.report.kwargs() == {"title": "T", "prob": 0.95, "plots": ["icc"],
                                  "icc_at": [{"Days": 0.0, "x": 1.0}, {"Days": 9.0, "x": 1.0}]}
    assert loads_model_file(MINIMAL, source="m.toml").report.kwargs()["icc_at"] is None


def test_icc_points_must_be_random_slope_terms(tmp_path):
    p = write(tmp_path, MINIMAL + "[report]\nicc_at = { Dayz = [0, 9] }\n", "icc.toml")
    with pytest.raises(ModelFileError, match=r"icc\.toml: key 'report\.icc_at' names \['Dayz'\].*\['Days'\]"):
        load_model_file(p).build_model()
    p = write(tmp_path, MINIMAL.replace("(Days | Subject)", "(1 | Subject)")
              + "[report]\nicc_at = { Days = [0, 9] }\n", "icc2.toml")
    with pytest.raises(ModelFileError, match=r"icc2\.toml: key 'report\.icc_at'.*no random slopes"):
        load_model_file(p).build_model()
