"""Execute every teaching notebook in notebooks/ (nbclient); their own assertions must hold.

Each notebook fits one or two small models with short chains; a failed assertion inside a notebook
(a teaching claim that no longer holds) fails the test with the cell's error.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))
TIMEOUT_S = 600   # per cell


def test_the_teaching_notebooks_exist_and_match_their_builder(tmp_path):
    names = [p.name for p in NOTEBOOKS]
    assert names == ["01_repeated_measures_pigeons.ipynb", "02_pooling_radon.ipynb",
                     "03_icc_schools_dyestuff.ipynb", "04_random_slopes_sleepstudy.ipynb",
                     "05_loo_model_comparison.ipynb", "06_eight_schools.ipynb", "07_population_averaged_logit.ipynb",
                     "08_robust_outliers.ipynb", "09_kinship_gwas.ipynb"]
    import importlib.util
    spec = importlib.util.spec_from_file_location("build_notebooks", NB_DIR / "build_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for p in mod.build(tmp_path):
        fresh = nbformat.read(p, as_version=4)
        stored = nbformat.read(NB_DIR / p.name, as_version=4)
        assert [c.source for c in fresh.cells] == [c.source for c in stored.cells], \
            f"{p.name} is stale: run notebooks/build_notebooks.py"
        assert all(not c.get("outputs") for c in stored.cells if c.cell_type == "code"), \
            f"{p.name} is stored with outputs"
        kinds = {c.cell_type for c in stored.cells}
        assert kinds == {"markdown", "code"}
        assert any("assert " in c.source for c in stored.cells if c.cell_type == "code"), p.name


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path):
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(NB_DIR)}})
    client.execute()
    # every code cell ran, and at least one figure was drawn
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code_cells)
    images = sum("image/png" in o.get("data", {}) for c in code_cells for o in c.get("outputs", []))
    assert images >= 2, f"{path.name} should draw its plots"
