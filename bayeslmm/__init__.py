"""bayeslmm: Bayesian linear mixed models on PyMC.

lme4-style formulas in, a posterior out, with variance components, ICC posteriors and shrinkage
diagnostics.

>>> import bayeslmm as blmm
>>> df = blmm.load_dataset("sleepstudy")
>>> model = blmm.Model("Reaction ~ Days + (Days | Subject)", df)
>>> fit = model.fit(chains=4, draws=1000, seed=1)          # doctest: +SKIP
>>> fit.summary(); fit.variance_components()                 # doctest: +SKIP
"""

from .datasets import list_datasets, load_dataset
from .design import Design, FactorDesign, make_design
from .errors import BayesLMMError, DataError, FormulaError, ModelFileError, PriorError, SpecError
from .formula import ParsedFormula, RandomTerm, parse_formula
from .model import Model, fit
from .priors import Prior, PriorTable, parse_prior, resolve_priors
from .results import Fit, load_fit
from .spec import ModelSpec, SamplerSpec, build_spec

__version__ = "0.1.0"

__all__ = [
    "Model", "fit", "Fit", "load_fit", "load_dataset", "list_datasets",
    "parse_formula", "build_spec", "parse_prior", "make_design", "resolve_priors",
    "ModelSpec", "SamplerSpec", "Prior", "PriorTable", "Design", "FactorDesign", "ParsedFormula",
    "RandomTerm",
    "BayesLMMError", "FormulaError", "SpecError", "DataError", "PriorError", "ModelFileError",
]
