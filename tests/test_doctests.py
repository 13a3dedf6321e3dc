"""The ``>>>`` examples in the package's docstrings run and give what they show.

Examples that sample (seconds to minutes) are marked ``# doctest: +SKIP`` in the docstrings: they
need a fitted ``fit`` and are exercised by the test files of their modules instead.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import bayeslmm

MODULES = sorted(m.name for m in pkgutil.walk_packages(bayeslmm.__path__, "bayeslmm.")
                 if not m.name.endswith("__main__"))


@pytest.mark.parametrize("name", ["bayeslmm"] + MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name):          # globals: a copy of the module's
        runner.run(test)
    res = runner.summarize(verbose=False)
    assert res.failed == 0, f"{res.failed} of {res.attempted} docstring examples in {name} failed (output above)"
