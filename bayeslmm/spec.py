"""Frozen, validated model and sampler specifications.

A :class:`ModelSpec` never sees data: it is the parsed formula plus options (family, priors,
method). A :class:`SamplerSpec` holds the NUTS settings. Both are hashable, so they can key caches,
and both round-trip through plain dicts (``to_dict`` / ``from_dict``) for TOML model files and for
saved fits.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

import numpy as np

from .errors import PriorError, SpecError
from .families import FAMILIES, family_of, get_family
from .formula import ParsedFormula, parse_formula
from .priors import Prior, parse_prior
from .threads import cpu_count

__all__ = ["ModelSpec", "SamplerSpec", "build_spec", "METHODS", "METHOD_ALIASES", "SAMPLERS", "INITS"]

METHODS = ("auto", "noncentred", "collapsed", "marginal", "kinship")
#: accepted spellings of a method -> the name used everywhere else
METHOD_ALIASES = {"marginal": "collapsed"}
SAMPLERS = ("pymc", "nutpie", "numpyro")
#: how PyMC's NUTS starts: "auto" = from a Laplace approximation on the collapsed paths
#: (:func:`bayeslmm.sampling.laplace_start`), PyMC's jittered start elsewhere; "laplace" everywhere
#: it applies; "pymc" = PyMC's own (``jitter+adapt_diag``, the draws of bayeslmm <= 0.1)
INITS = ("auto", "laplace", "pymc")

#: NUTS target acceptance per sampling path when none is given. 0.8 (PyMC's, bambi's and brms's
#: default) on the exact paths, whose few parameters (fixed effects, SDs, correlations, sigma)
#: have a smooth, near-Gaussian posterior with no funnel: measured against 0.9 (2 chains x
#: (1000 + 1000), 2 seeds each), the trees are 40% shorter and the bulk ESS of the variance
#: parameters is higher, not lower (Gaussian 100,000 rows / 2,000 groups: 3.3 vs 5.6 leapfrog
#: steps per draw, ESS 2,700-3,200 vs 2,100-2,400; bernoulli 20,000 / 400 on the quadrature path:
#: 2.9 vs 4.5 steps, ESS 2,860-3,020 vs 1,700-2,180; no divergences). 0.9 on the non-centred
#: graph, where the group effects' funnel makes smaller steps pay.
TARGET_ACCEPT = {"noncentred": 0.9, "collapsed": 0.8, "crossed": 0.8, "kinship": 0.8, "quadrature": 0.8}


def canonical_method(method: str) -> str:
    """``"marginal"`` (the old name of the exact collapsed path) -> ``"collapsed"``; others unchanged."""
    if method not in METHODS:
        raise SpecError(f"the 'method' parameter must be one of {METHODS}. Got {method!r} instead.")
    return METHOD_ALIASES.get(method, method)

@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What to fit, independent of the data.

    Attributes
    ----------
    formula : ParsedFormula
    family : str
        One of :data:`bayeslmm.families.FAMILIES`; ``link`` picks one of its links.
    priors : tuple of (parameter label, Prior)
        User overrides, keyed by the labels of :attr:`bayeslmm.Model.priors` (``"Days"``,
        ``"Intercept"``, ``"sd(Subject, Days)"``, ``"cor(Subject)"``, ``"sigma"``) or by a class
        (``"b"`` all slopes, ``"sd"`` all group-level SDs, ``"cor"`` all correlations).
    method : str
        ``"auto"``, ``"noncentred"`` or ``"collapsed"`` (``"marginal"`` is accepted as an alias of
        ``"collapsed"`` and stored as ``"collapsed"``).
    """

    formula: ParsedFormula
    family: str = "gaussian"
    priors: tuple[tuple[str, Prior], ...] = ()
    method: str = "auto"
    #: the family's link; None = its default (``bayeslmm.families.LINKS``)
    link: str | None = None
    #: binomial: column of trials (alternative to ``cbind(successes, failures)``)
    trials: str | None = None
    #: column added to the linear predictor as is (link scale, e.g. a log-exposure column)
    offset: str | None = None
    #: column of observation weights: likelihood weights (row i's log-likelihood counts w_i times)
    weights: str | None = None

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise SpecError(f"family {self.family!r} is not supported; use one of {tuple(FAMILIES)}")
        fam = get_family(self.family, self.link)          # an invalid link is a SpecError here
        object.__setattr__(self, "link", fam.link)
        if self.method not in METHODS:
            raise SpecError(f"method {self.method!r} is not one of {METHODS}")
        object.__setattr__(self, "method", canonical_method(self.method))
        cb = self.formula.trials
        if fam.needs_trials and cb is None and self.trials is None:
            raise SpecError(f"the binomial family needs the number of trials: write the response as "
                            f"cbind(successes, failures) or cbind(successes, n - successes), or pass "
                            f"trials='column' (formula {self.formula.text!r})")
        if not fam.needs_trials and (cb is not None or self.trials is not None):
            raise SpecError(f"cbind() responses and trials= belong to family='binomial', not "
                            f"{self.family!r}")
        if self.formula.se is not None and self.family != "gaussian":
            raise SpecError(f"se() in the response (known standard errors) needs family='gaussian', "
                            f"not {self.family!r} (formula {self.formula.text!r})")
        if cb is not None and self.trials is not None:
            raise SpecError("give the trials once: either cbind(...) in the formula or trials=, not both")
        if self.weights is not None and (self.formula.se is not None or self.family != "gaussian"):
            raise SpecError(f"weights= (likelihood weights) are supported for family='gaussian' without "
                            f"se() in the response; got family {self.family!r} (formula {self.formula.text!r})")
        for name, v in (("trials", self.trials), ("offset", self.offset), ("weights", self.weights)):
            if v is not None and (not isinstance(v, str) or not v):
                raise SpecError(f"the {name!r} option must be a column name. Got {v!r} instead.")

    @property
    def family_object(self):
        """The :class:`~bayeslmm.families.Family` with this spec's link (its known-standard-error
        variant with ``se()`` in the response: :func:`~bayeslmm.families.family_of`)."""
        return family_of(self)

    def to_dict(self) -> dict:
        out = {"formula": self.formula.text, "family": self.family, "method": self.method,
               "priors": {k: p.text for k, p in self.priors}}
        if self.link != FAMILIES[self.family].link:
            out["link"] = self.link
        out.update({k: v for k, v in (("trials", self.trials), ("offset", self.offset),
                                      ("weights", self.weights)) if v})
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        return build_spec(d["formula"], family=d.get("family", "gaussian"),
                          priors=d.get("priors") or None, method=d.get("method", "auto"),
                          link=d.get("link"), trials=d.get("trials"), offset=d.get("offset"),
                          weights=d.get("weights"))


def build_spec(formula: str, *, family: str = "gaussian", priors: dict | None = None,
               method: str = "auto", link: str | None = None, trials: str | None = None,
               offset: str | None = None, weights: str | None = None) -> ModelSpec:
    """Parse and validate a formula and options into a :class:`ModelSpec`.

    Examples
    --------
    >>> spec = build_spec("Reaction ~ Days + (Days | Subject)", priors={"sigma": "exponential(0.02)"})
    >>> spec.priors
    (('sigma', Prior('exponential(lam=0.02)')),)
    """
    parsed = parse_formula(formula)
    if priors is not None and not isinstance(priors, Mapping):
        raise PriorError(f"the 'priors' parameter must be a dict {{parameter label: prior}}, like "
                         f"{{'sigma': 'exponential(0.1)'}}. Got {type(priors).__name__} {priors!r} instead.")
    items = []
    for k, v in (priors or {}).items():
        if not isinstance(k, str):
            raise PriorError(f"prior keys must be parameter labels (strings), got {k!r}")
        items.append((k, parse_prior(v, where=f"prior for {k!r}")))
    return ModelSpec(formula=parsed, family=family, priors=tuple(items), method=method, link=link,
                     trials=trials, offset=offset, weights=weights)


@dataclass(frozen=True, slots=True)
class SamplerSpec:
    """NUTS settings. ``seed=None`` draws a seed, which is recorded in the fit so it can be rerun.

    ``cores=None`` means ``min(chains, CPUs)``: PyMC's own default (physical cores, = 1 on a 2-CPU
    machine) would run chains one after another. ``target_accept=None`` means the sampling path's
    default (:data:`TARGET_ACCEPT`), set by :meth:`for_path` once the path is chosen.
    """

    chains: int = 4
    draws: int = 1000
    tune: int = 1000
    seed: int | None = None
    target_accept: float | None = None
    sampler: str = "pymc"
    cores: int | None = None
    progressbar: bool = True
    init: str = "auto"

    def __post_init__(self):
        # every option checked here, before anything is compiled, with one message template
        def bad(name, what, extra=""):
            return SpecError(f"the {name!r} parameter must be {what}. Got {getattr(self, name)!r} "
                             f"({type(getattr(self, name)).__name__}) instead{extra}.")

        def is_int(v):
            return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))

        for name in ("chains", "draws", "tune"):
            v = getattr(self, name)
            if not is_int(v) or v < (1 if name != "tune" else 0):
                raise bad(name, "a positive integer" if name != "tune" else "an integer >= 0")
            object.__setattr__(self, name, int(v))
        for name in ("seed", "cores"):
            v = getattr(self, name)
            if v is not None:
                if not is_int(v) or v < (0 if name == "seed" else 1):
                    raise bad(name, "None or a non-negative integer" if name == "seed"
                              else "None (one core per chain) or a positive integer")
                object.__setattr__(self, name, int(v))
        ta = self.target_accept
        if ta is not None and (not isinstance(ta, numbers.Real) or isinstance(ta, (bool, np.bool_))
                or not 0 < float(ta) < 1):
            raise bad("target_accept", "in (0, 1) (a number), or None for the sampling path's default",
                      "; 0.8-0.99 is usual, raise it if there are divergences")
        if ta is not None:
            object.__setattr__(self, "target_accept", float(ta))
        if not isinstance(self.progressbar, (bool, np.bool_)):
            raise bad("progressbar", "True or False")
        object.__setattr__(self, "progressbar", bool(self.progressbar))
        if not isinstance(self.sampler, str) or self.sampler not in SAMPLERS:
            raise bad("sampler", f"one of {SAMPLERS}")
        if not isinstance(self.init, str) or self.init not in INITS:
            raise bad("init", f"one of {INITS}")

    def for_path(self, path: str) -> "SamplerSpec":
        """These settings with ``target_accept`` set: the given one, else the path's default."""
        if self.target_accept is not None:
            return self
        return replace(self, target_accept=TARGET_ACCEPT.get(path, TARGET_ACCEPT["noncentred"]))

    @property
    def n_cores(self) -> int:
        return self.cores or max(1, min(self.chains, cpu_count()))

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "SamplerSpec":
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})
