"""The teaching notebooks in notebooks/: stored with their outputs, built from notebooks/build_notebooks.py,
and executed as notebooks (nbclient) with every ``check`` cell passing.

Each notebook fits one or two small models with short chains. The claims it teaches are checked in
cells tagged ``check`` (source hidden in Jupyter); a failed check (a teaching claim that no longer
holds) fails the test with the cell's error. After changing a notebook's cells, regenerate the stored
outputs with ``make notebooks`` (notebooks/build_notebooks.py --execute).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))
TIMEOUT_S = 600   # per cell


def _builder():
    spec = importlib.util.spec_from_file_location("build_notebooks", NB_DIR / "build_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _tags(cell) -> list:
    return cell.get("metadata", {}).get("tags", [])


def test_the_teaching_notebooks_exist_match_their_builder_and_are_stored_with_outputs():
    mod = _builder()
    assert [p.name for p in NOTEBOOKS] == sorted(mod.NOTEBOOKS), "notebooks/ and build_notebooks.NOTEBOOKS differ"
    for path in NOTEBOOKS:
        stored = nbformat.read(path, as_version=4)
        assert mod.same_sources(mod.notebook(path.name), stored), \
            f"{path.name} is stale: run `make notebooks` (notebooks/build_notebooks.py --execute)"
        code = [c for c in stored.cells if c.cell_type == "code"]
        assert all(c.get("execution_count") for c in code), \
            f"{path.name} is stored without outputs: run `make notebooks`"
        assert sum("image/png" in o.get("data", {}) for c in code for o in c.get("outputs", [])) >= 2, path.name
        assert not any(o.get("output_type") == "error" for c in code for o in c.get("outputs", [])), path.name
        assert {c.cell_type for c in stored.cells} == {"markdown", "code"}
        checks = [c for c in code if "check" in _tags(c)]
        assert checks and all("assert " in c.source for c in checks), f"{path.name}: no tagged check cells"
        assert all(c.metadata.get("jupyter", {}).get("source_hidden") for c in checks)


def test_the_builder_moves_trailing_asserts_into_a_hidden_check_cell():
    mod = _builder()
    body, chk = mod.code("x = 1\nprint(x)\n# the claim\nassert x == 1\ny = 2\nassert y > x, 'y'\n")
    assert body.source == "x = 1\nprint(x)"
    assert chk.source.startswith("# the claim\nassert x == 1") and "check" in _tags(chk)
    # asserts followed by other code stay where they are
    cell = mod.code("x = 1\nassert x == 1\nprint(x)")
    assert not isinstance(cell, tuple) and "assert" in cell.source
    nb2 = mod.notebook("02_pooling_radon.ipynb")
    assert any("solution" in _tags(c) for c in nb2.cells), "notebook 2 has exercises with solutions"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path):
    mod = _builder()
    nb = mod.execute(nbformat.read(path, as_version=4), timeout=TIMEOUT_S)   # raises on a failed cell
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), "every code cell ran"
    checks = [c for c in code if "check" in _tags(c)]
    assert checks and not any(o.get("output_type") == "error" for c in checks for o in c.get("outputs", []))
    images = sum("image/png" in o.get("data", {}) for c in code for o in c.get("outputs", []))
    assert images >= 2, f"{path.name} should draw its plots"
