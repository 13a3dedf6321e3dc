"""bayeslmm: Bayesian linear mixed models on PyMC.

lme4-style formulas in, a posterior out, with variance components, ICC posteriors and shrinkage
diagnostics.

>>> import bayeslmm as blmm
>>> df = blmm.load_dataset("sleepstudy")
>>> model = blmm.Model("Reaction ~ Days + (Days | Subject)", df)
>>> fit = model.fit(chains=4, draws=1000, seed=1)          # doctest: +SKIP
>>> fit.summary(); fit.variance_components()                 # doctest: +SKIP

The package imports lazily (PEP 562): ``import bayeslmm`` loads nothing heavy, and each name
below loads its module on first use, so ``bayeslmm.load_dataset`` or the ``bayeslmm datasets``
command never import PyMC, PyTensor, numba or ArviZ. PyMC is imported when a model is built or
fitted.
"""

from __future__ import annotations

import importlib
import importlib.util

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "Model": "model", "fit": "model",
    "Fit": "results", "load_fit": "results",
    "load_dataset": "datasets", "list_datasets": "datasets",
    "parse_formula": "formula", "ParsedFormula": "formula", "RandomTerm": "formula",
    "build_spec": "spec", "ModelSpec": "spec", "SamplerSpec": "spec",
    "parse_prior": "priors", "Prior": "priors", "PriorTable": "priors", "resolve_priors": "priors",
    "make_design": "design", "Design": "design", "FactorDesign": "design",
    "get_family": "families", "FAMILIES": "families",
    "rank_inverse_normal": "transforms",
    "compare": "diagnostics", "Table": "tables", "load_model_file": "specfile",
    "scan": "scan", "genomic_inflation": "scan", "genetic_relationship": "scan",
    "BayesLMMError": "errors", "FormulaError": "errors", "SpecError": "errors", "DataError": "errors",
    "PriorError": "errors", "ModelFileError": "errors",
}

__all__ = [
    "Model", "fit", "Fit", "load_fit", "load_dataset", "list_datasets", "compare", "Table", "load_model_file",
    "parse_formula", "build_spec", "parse_prior", "make_design", "resolve_priors", "get_family",
    "FAMILIES", "rank_inverse_normal", "scan", "genomic_inflation", "genetic_relationship",
    "ModelSpec", "SamplerSpec", "Prior", "PriorTable", "Design", "FactorDesign", "ParsedFormula",
    "RandomTerm",
    "BayesLMMError", "FormulaError", "SpecError", "DataError", "PriorError", "ModelFileError",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value          # later look-ups skip this function
        return value
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f".{name}", __name__)      # a submodule: bayeslmm.results
    raise AttributeError(f"module 'bayeslmm' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
