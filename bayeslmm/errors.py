"""Exceptions raised by bayeslmm.

Every error says what is wrong, where (column, term, key or character offset), and what to do.
All derive from :class:`BayesLMMError`, so ``except bayeslmm.BayesLMMError`` catches them all.
"""

from __future__ import annotations

__all__ = ["BayesLMMError", "FormulaError", "SpecError", "DataError", "PriorError", "ModelFileError",
           "SamplingInterrupted"]


class BayesLMMError(Exception):
    """Base class of every bayeslmm error."""


class FormulaError(BayesLMMError, ValueError):
    """A formula that does not parse or names something impossible."""


class SpecError(BayesLMMError, ValueError):
    """An invalid model option (family, method, sampler setting)."""


class DataError(BayesLMMError, ValueError):
    """The data cannot be used with the formula (missing column, NaN, one-level factor...)."""


class PriorError(BayesLMMError, ValueError):
    """A prior that names no parameter or has invalid arguments."""


class ModelFileError(BayesLMMError, ValueError):
    """A TOML model file with an unknown key, wrong type or missing data file."""


class SamplingInterrupted(KeyboardInterrupt):
    """Sampling was interrupted (Ctrl-C): no fit is returned, since its draws would be incomplete.

    A ``KeyboardInterrupt``, so ``except KeyboardInterrupt`` and the default handler see it as one;
    the message says how many draws each chain had.
    """
