"""Display: tables print whole and rounded; Diagnostics has an HTML view; the CLI prints each
warning once without source paths."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

import bayeslmm as blmm
from bayeslmm.cli import _quiet_fit
from bayeslmm.diagnostics import ConvergenceWarning
from bayeslmm.tables import Table, format_number


def test_tables_print_whole_with_significant_digits(fake_fit, sleepstudy):
    fit = fake_fit("Reaction ~ Days + (Days | Subject)", sleepstudy, seed=1)
    for tab in (fit.summary(), fit.variance_components(), fit.fixef(), fit.r2()):
        assert isinstance(tab, Table)
        with pd.option_context("display.width", 40, "display.max_columns", 3):
            text = repr(tab)
        assert "..." not in text
        assert all(c in text for c in tab.columns)
        assert "_repr_html_" in dir(tab) and "<table" in tab._repr_html_()
    assert format_number(251.40531) == "251.4" and format_number(1523.7) == "1524"
    assert format_number(0.000012345) == "1.234e-05" and format_number(np.nan) == "-"
    big = Table(pd.DataFrame(np.arange(300.0).reshape(100, 3) / 7))
    assert len(repr(big).splitlines()) == 101            # every row, never truncated


def test_diagnostics_html_and_icc_without_at_all(fake_fit, dyestuff):
    fit = fake_fit("Yield ~ 1 + (1 | Batch)", dyestuff, seed=2)
    html = fit.diagnostics()._repr_html_()
    assert "<table" in html and ("passed" in html or "What to do" in html)
    res = fit.icc()
    assert "at" not in res.table.columns and "all" not in repr(res)


def test_cli_prints_each_warning_once_without_paths(capsys):
    class M:
        def fit(self, **kw):
            for _ in range(3):
                warnings.warn("dropped 3 rows with missing values", UserWarning)
            warnings.warn("THE FIT HAS CONVERGENCE PROBLEMS", ConvergenceWarning)
            warnings.warn("old api", DeprecationWarning)
            return "fit"

    assert _quiet_fit(M(), {}) == "fit"
    err = capsys.readouterr().err
    assert err.count("warning: dropped 3 rows") == 1
    assert "CONVERGENCE" not in err and "old api" not in err and ".py:" not in err
