"""A mistyped prior key gets a "did you mean" with the label it names (issue 19), in Python and the CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest

import bayeslmm as blmm
from bayeslmm.errors import PriorError

F = "Reaction ~ Days + (Days | Subject)"


@pytest.mark.parametrize("key, label", [("sd_Subject", "'sd(Subject, Intercept)' or 'sd(Subject, Days)'"),
                                        ("sd_Subject_Days", "'sd(Subject, Days)'"),
                                        ("cor_Subject", "'cor(Subject)'"), ("b_Days", "'Days'"),
                                        ("Sigma", "'sigma'"), ("sigmaa", "'sigma'")])
def test_a_variable_name_or_typo_gets_the_label(sleepstudy, key, label):
    with pytest.raises(PriorError, match=f"Did you mean {label}".replace("(", r"\(").replace(")", r"\)")):
        blmm.Model(F, sleepstudy, priors={key: "normal(0, 1)"})


def test_no_guess_for_a_key_like_nothing(sleepstudy):
    with pytest.raises(PriorError) as e:
        blmm.Model(F, sleepstudy, priors={"xyz": "normal(0, 1)"})
    assert "did you mean" not in str(e.value).lower()


def test_the_cli_prints_the_hint_once(tmp_path):
    (tmp_path / "m.toml").write_text('[model]\nformula = "Yield ~ 1 + (1 | Batch)"\n\n[data]\ndataset = "Dyestuff"\n\n'
                                     '[priors]\nsd_Batch = "half_normal(100)"\n')
    r = subprocess.run([sys.executable, "-m", "bayeslmm.cli", "check", str(tmp_path / "m.toml")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    assert r.stderr.count("Did you mean 'sd(Batch, Intercept)' for 'sd_Batch'?") == 1, r.stderr
