"""The package's import structure (issue 11): no cycles, no forbidden edges, a light ``import bayeslmm``.

Two checks that follow imports, not just the text of one module:

* **static graph**: every ``import`` of a bayeslmm module by another (module level and inside
  functions, relative or absolute) is an edge. Module-level edges must form no cycle; derived
  modules must not import PyMC, PyTensor, numba or :mod:`bayeslmm.paths` at any level; only
  ``model`` and ``validation`` import the paths; ``errors``, ``families`` and ``posterior`` are
  leaves.
* **transitive, at run time**: each derived module (and ``import bayeslmm``, the CLI's light
  commands) is imported in a fresh interpreter, and ``sys.modules`` must then hold no PyMC,
  PyTensor, numba or paths module (nor ArviZ for the light entry points).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "bayeslmm"
DERIVED = ("results", "icc", "shrinkage", "predict", "effects", "diagnostics", "convergence", "identifiability", "plots",
           "report",
           "sensitivity")
HEAVY = ("pymc", "pytensor", "numba")
LEAVES = {"errors": set(), "families": {"errors"}, "posterior": set()}
MAY_IMPORT_PATHS = ("model", "validation", "paths")


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts}


def _imports(name: str, path: Path, known: set[str]):
    """``(target, module_level)`` for every import in the file; targets are full module names."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    top_level = {id(n) for n in tree.body}
    # imports under `if TYPE_CHECKING:` at module level are not run
    skip = {id(n) for node in tree.body if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test)
            for n in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        level = id(node) in top_level
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, level
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                pkg = base[: len(base) - (node.level - 1)]
                mod = ".".join(pkg + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            yield mod, level
            for a in node.names:            # `from . import x` / `from .paths import collapsed`
                if f"{mod}.{a.name}" in known:
                    yield f"{mod}.{a.name}", level


def _graph():
    mods = _modules()
    known = set(mods)
    edges = {m: [] for m in mods}
    for m, p in mods.items():
        edges[m] = list(_imports(m, p, known))
    return mods, edges


def _short(m: str) -> str:
    return m.removeprefix("bayeslmm.").removeprefix("bayeslmm")


def test_no_import_cycles_at_module_level():
    mods, edges = _graph()
    graph = {m: {t for t, lvl in e if lvl and t in mods and t != m} for m, e in edges.items()}
    # a package's __init__ runs before its submodules: parent -> child edges are not cycles by
    # themselves, but keep them (a submodule importing its parent package at import is fine only
    # when the parent does not import it back)
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cyc = stack[stack.index(t):] + [t]
                if not all(a.startswith(b + ".") or b.startswith(a + ".") for a, b in zip(cyc, cyc[1:])):
                    cycles.append(" -> ".join(map(_short, cyc)))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2
    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, f"import cycles: {cycles}"


def test_forbidden_edges():
    mods, edges = _graph()
    bad = []
    for m, e in edges.items():
        short = _short(m)
        top = short.split(".")[0]
        for t, _ in e:
            root = t.split(".")[0]
            if top in DERIVED and (root in HEAVY or t.startswith("bayeslmm.paths")):
                bad.append(f"derived {short} imports {t}")
            if t.startswith("bayeslmm.paths") and top not in MAY_IMPORT_PATHS:
                bad.append(f"{short} imports {t}: only model and validation use the sampling paths")
            if short in LEAVES and t.startswith("bayeslmm") and _short(t) not in LEAVES[short]:
                bad.append(f"leaf {short} imports {t}")
    assert not bad, "\n".join(bad)


def _loaded_after(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json\n"
                          "print(json.dumps(sorted(m for m in sys.modules)))"],
                         capture_output=True, text=True, cwd=PKG.parent, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _heavy(mods: list[str], also=()) -> list[str]:
    roots = set(HEAVY) | set(also)
    return sorted(m for m in mods if m.split(".")[0] in roots or m.startswith("bayeslmm.paths."))


@pytest.mark.parametrize("module", DERIVED)
def test_derived_module_imports_no_pymc_transitively(module):
    """Importing a derived module in a fresh interpreter loads no PyMC, PyTensor, numba or paths."""
    assert _heavy(_loaded_after(f"import bayeslmm.{module}")) == []


@pytest.mark.parametrize("code", [
    "import bayeslmm; bayeslmm.load_dataset('sleepstudy')",
    "import bayeslmm.cli",
    "from bayeslmm.cli import main; main(['datasets'])",
    "from bayeslmm.cli import main; main(['priors', 'models/sleepstudy_slopes.toml'])",
])
def test_light_entry_points_import_nothing_heavy(code):
    """``import bayeslmm``, ``bayeslmm datasets`` and ``bayeslmm priors`` load no PyMC, PyTensor,
    numba, ArviZ or sampling path (PEP 562 lazy attributes; heavy imports inside the commands)."""
    assert _heavy(_loaded_after(code), also=("arviz",)) == []


@pytest.mark.parametrize("code", ["import bayeslmm.cli",
                                  "from bayeslmm.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass",
                                  "from bayeslmm.cli import main; main(['datasets'])"])
def test_cli_help_and_datasets_load_no_pandas(code):
    """``bayeslmm --help`` and ``bayeslmm datasets`` answer in well under a second (issue 17): they
    import neither pandas nor scipy (each costs seconds on a cold, busy machine)."""
    assert _heavy(_loaded_after(code), also=("pandas", "scipy")) == []


def test_import_check_can_fail():
    """The run-time check sees a heavy import when there is one."""
    assert "pymc" in _heavy(_loaded_after("import bayeslmm.paths.blocks"))
