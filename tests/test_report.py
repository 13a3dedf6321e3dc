"""The HTML report: files written, tables consistent with the fit, and the page renders in
headless Chromium with every embedded image loaded."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pandas as pd
import pytest

import bayeslmm as blmm

SLEEP = "Reaction ~ Days + (Days | Subject)"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]

# Appended to a copy of the report: after load, writes how many <img> decoded into the DOM.
IMG_CHECK = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                .map(function (i) { return i.alt; });
  var d = document.createElement('div'); d.id = 'imgcheck';
  d.textContent = 'IMGCHECK total=' + imgs.length + ' loaded=' + (imgs.length - bad.length) +
                  ' bad=[' + bad.join('|') + ']';
  document.body.appendChild(d);
});
</script>"""


def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="session")
def chromium():
    """Path of a Chromium binary; installs Debian's package if missing (the Makefile's
    `chromium` target does the same); skips only if installation is impossible."""
    exe = _find_chromium()
    if exe is None and shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
        subprocess.run("apt-get update -qq && apt-get install -y -qq chromium", shell=True,
                       capture_output=True, timeout=900)
        exe = _find_chromium()
    if exe is None:
        pytest.skip("chromium is not installed and could not be installed (needs apt-get as root); "
                    "run 'make chromium' or 'apt-get install chromium'")
    return exe


def _chromium(exe: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def report_dir(get_fit, sleepstudy, tmp_path_factory):
    fit = get_fit(SLEEP, sleepstudy, method="noncentred")
    out = tmp_path_factory.mktemp("report")
    path = fit.report(out, verbose=False)
    assert path == str(out / "report.html")
    return out, fit


def test_report_writes_tables_figures_and_fit(report_dir):
    out, fit = report_dir
    for name in ("fixed_effects", "variance_components", "icc", "shrinkage", "pooling_factors",
                 "diagnostics_checks", "diagnostics_parameters", "priors", "group_sizes", "icc_curve_Days"):
        assert (out / "tables" / f"{name}.csv").stat().st_size > 0
        json.loads((out / "tables" / f"{name}.json").read_text())
    pngs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert {"variance_components.png", "icc.png", "shrinkage_Subject.png", "caterpillar.png",
            "spaghetti_Subject.png", "prior_posterior.png", "trace.png", "rank.png", "ppc.png"} <= set(pngs)
    # sleepstudy is balanced (10 days per subject): shrinkage vs group size would show nothing
    assert "shrinkage_vs_size_Subject.png" not in pngs
    for p in (out / "figures").glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # tables are the fit's own numbers
    fe = pd.read_csv(out / "tables" / "fixed_effects.csv", index_col=0)
    pd.testing.assert_series_equal(fe["mean"], fit.summary()["mean"], check_names=False, atol=1e-12)
    sh = pd.read_csv(out / "tables" / "shrinkage.csv", index_col=0)
    assert len(sh) == 18 * 2 and set(sh["term"]) == {"Intercept", "Days"}
    # the NetCDF round trip gives the same posterior
    back = blmm.load_fit(out / "fit.nc")
    assert back.summary()["mean"].equals(fit.summary()["mean"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["formula"] == SLEEP and "report.html" in summary["files"]


def test_report_is_standalone(report_dir):
    out, _ = report_dir
    page = (out / "report.html").read_text()
    srcs = re.findall(r'<img[^>]*src="([^"]+)"', page)
    assert len(srcs) >= 8 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'(src|href)="(https?:)?//', page)       # nothing fetched from the network
    for section in ("Model", "Priors", "Data", "Fixed effects", "Variance components",
                    "Intraclass correlation", "Shrinkage", "Convergence"):
        assert f"<h2>{section}" in page
    assert "Reaction ~ Days + (Days | Subject)" in page
    assert "<h3>PSIS-LOO, leave one observation out</h3>" in page      # says which LOO (issue 19)
    assert "&amp;lt;" not in page                                  # no double escaping


def test_report_renders_in_chromium_with_all_images(report_dir, chromium):
    out, _ = report_dir
    page = (out / "report.html").read_text()
    n_img = len(re.findall(r"<img ", page))
    check = out / "report_check.html"
    check.write_text(page.replace("</body>", IMG_CHECK + "</body>"))
    res = _chromium(chromium, "--virtual-time-budget=15000", "--dump-dom", check.as_uri())
    m = re.search(r"IMGCHECK total=(\d+) loaded=(\d+) bad=\[([^\]]*)\]", res.stdout)
    assert m, f"chromium produced no check result; stderr tail: {res.stderr[-2000:]}"
    total, loaded, bad = int(m.group(1)), int(m.group(2)), m.group(3)
    assert total == n_img >= 8
    assert loaded == total, f"images that did not load: {bad}"
    shot = out / "screenshot.png"
    _chromium(chromium, "--window-size=1280,2000", f"--screenshot={shot}", (out / "report.html").as_uri())
    assert shot.exists() and shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 20_000


@pytest.mark.parametrize("formula, n_icc_rows", [
    ("y ~ x + (1 | school/cls)", 3),                 # nested: two ICCs + the cumulative one
    ("y ~ x + (x || school)", 2),                    # uncorrelated slope: ICC at x = 0 and mean x
    ("y ~ x + (0 + x | school) + (1 | cls)", 4),     # slope-only and crossed factors
])
def test_report_handles_other_structures(fake_fit, tmp_path, formula, n_icc_rows):
    import numpy as np

    r = np.random.default_rng(5)
    a, b = np.repeat(np.arange(6), 12), np.tile(np.repeat(np.arange(3), 4), 6)
    df = pd.DataFrame({"y": r.normal(size=72), "x": r.normal(size=72),
                       "school": [f"s{i}" for i in a], "cls": [f"c{i}" for i in b]})
    fit = fake_fit(formula, df, seed=1, draws=60)
    path = fit.report(tmp_path, verbose=False, loo=False)
    page = Path(path).read_text()
    assert len(re.findall(r"<img ", page)) >= 6
    icc = pd.read_csv(tmp_path / "tables" / "icc.csv", index_col=0)
    assert len(icc) == n_icc_rows and icc["median"].between(0, 1).all()
    assert (tmp_path / "tables" / "shrinkage.csv").exists()
