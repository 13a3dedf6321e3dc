"""Frozen, validated model and sampler specifications.

A :class:`ModelSpec` never sees data: it is the parsed formula plus options (family, priors,
method). A :class:`SamplerSpec` holds the NUTS settings. Both are hashable, so they can key caches,
and both round-trip through plain dicts (``to_dict`` / ``from_dict``) for TOML model files and for
saved fits.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields

from .errors import PriorError, SpecError
from .formula import ParsedFormula, parse_formula

__all__ = ["Prior", "ModelSpec", "SamplerSpec", "build_spec", "parse_prior", "FAMILIES", "METHODS",
           "SAMPLERS"]

FAMILIES = ("gaussian",)
METHODS = ("auto", "noncentred", "marginal")
SAMPLERS = ("pymc", "nutpie", "numpyro")

# distribution name -> parameter names, in positional order
PRIOR_DISTS: dict[str, tuple[str, ...]] = {
    "normal": ("mu", "sigma"),
    "studentt": ("nu", "mu", "sigma"),
    "halfnormal": ("sigma",),
    "halfstudentt": ("nu", "sigma"),
    "halfcauchy": ("beta",),
    "exponential": ("lam",),
    "lkj": ("eta",),
}
POSITIVE_DISTS = ("halfnormal", "halfstudentt", "halfcauchy", "exponential")


@dataclass(frozen=True, slots=True)
class Prior:
    """A prior distribution: a name from ``PRIOR_DISTS`` and its parameters.

    Examples
    --------
    >>> Prior("normal", (("mu", 0.0), ("sigma", 10.0)))
    Prior('normal(mu=0, sigma=10)')
    >>> parse_prior("halfstudentt(3, 20)").kwargs
    {'nu': 3.0, 'sigma': 20.0}
    """

    dist: str
    params: tuple[tuple[str, float], ...]

    def __post_init__(self):
        if self.dist not in PRIOR_DISTS:
            raise PriorError(f"unknown prior distribution {self.dist!r}; use one of "
                             f"{', '.join(PRIOR_DISTS)}")
        names = PRIOR_DISTS[self.dist]
        got = tuple(k for k, _ in self.params)
        if got != names:
            raise PriorError(f"prior {self.dist!r} takes parameters {names}, got {got}")
        for k, v in self.params:
            if not isinstance(v, (int, float)) or v != v or v in (float("inf"), float("-inf")):
                raise PriorError(f"prior {self.dist}: parameter {k}={v!r} must be a finite number")
            if k in ("sigma", "beta", "lam", "eta", "nu") and v <= 0:
                raise PriorError(f"prior {self.dist}: parameter {k}={v!r} must be > 0")

    @property
    def kwargs(self) -> dict[str, float]:
        return dict(self.params)

    def __str__(self) -> str:
        """Display text, 4 significant digits (use :attr:`text` to store a prior)."""
        return f"{self.dist}({', '.join(f'{k}={_fmt(v)}' for k, v in self.params)})"

    @property
    def text(self) -> str:
        """Full-precision text that :func:`parse_prior` reads back to an equal Prior."""
        return f"{self.dist}({', '.join(f'{k}={v!r}' for k, v in self.params)})"

    def __repr__(self) -> str:
        return f"Prior({str(self)!r})"


def _fmt(v: float) -> str:
    return f"{v:.4g}"


_PRIOR_RE = re.compile(r"^\s*([a-z_]+)\s*\((.*)\)\s*$")


def parse_prior(text: str | Prior, *, where: str = "prior") -> Prior:
    """Parse ``"normal(0, 10)"``, ``"halfstudentt(nu=3, sigma=20)"``, ``"lkj(2)"`` into a Prior."""
    if isinstance(text, Prior):
        return text
    if not isinstance(text, str):
        raise PriorError(f"{where}: expected a string like 'normal(0, 10)', got {text!r}")
    m = _PRIOR_RE.match(text)
    dist = m.group(1).replace("_", "").lower() if m else None
    if not m or dist not in PRIOR_DISTS:
        raise PriorError(f"{where}: cannot read prior {text!r}; write e.g. 'normal(0, 10)', "
                         f"'halfstudentt(3, 20)', 'exponential(0.1)' or 'lkj(2)' "
                         f"(distributions: {', '.join(PRIOR_DISTS)})")
    names = PRIOR_DISTS[dist]
    args = [a.strip() for a in m.group(2).split(",") if a.strip()]
    values: dict[str, float] = {}
    for pos, a in enumerate(args):
        if "=" in a:
            k, v = (s.strip() for s in a.split("=", 1))
        else:
            if pos >= len(names):
                raise PriorError(f"{where}: {dist} takes {len(names)} parameters {names}, got {text!r}")
            k, v = names[pos], a
        if k not in names:
            raise PriorError(f"{where}: {dist} has no parameter {k!r}; its parameters are {names}")
        try:
            values[k] = float(v)
        except ValueError:
            raise PriorError(f"{where}: parameter {k}={v!r} of {text!r} is not a number") from None
    missing = [n for n in names if n not in values]
    if missing:
        raise PriorError(f"{where}: {text!r} is missing {', '.join(missing)} (parameters {names})")
    return Prior(dist, tuple((n, values[n]) for n in names))


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What to fit, independent of the data.

    Attributes
    ----------
    formula : ParsedFormula
    family : str
        Only ``"gaussian"`` for now.
    priors : tuple of (parameter label, Prior)
        User overrides, keyed by the labels of :attr:`bayeslmm.Model.priors` (``"Days"``,
        ``"Intercept"``, ``"sd(Subject, Days)"``, ``"cor(Subject)"``, ``"sigma"``) or by a class
        (``"b"`` all slopes, ``"sd"`` all group-level SDs, ``"cor"`` all correlations).
    method : str
        ``"auto"``, ``"noncentred"`` or ``"marginal"``.
    """

    formula: ParsedFormula
    family: str = "gaussian"
    priors: tuple[tuple[str, Prior], ...] = ()
    method: str = "auto"

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise SpecError(f"family {self.family!r} is not supported; use one of {FAMILIES}")
        if self.method not in METHODS:
            raise SpecError(f"method {self.method!r} is not one of {METHODS}")

    def to_dict(self) -> dict:
        return {"formula": self.formula.text, "family": self.family, "method": self.method,
                "priors": {k: p.text for k, p in self.priors}}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        return build_spec(d["formula"], family=d.get("family", "gaussian"),
                          priors=d.get("priors") or None, method=d.get("method", "auto"))


def build_spec(formula: str, *, family: str = "gaussian", priors: dict | None = None,
               method: str = "auto") -> ModelSpec:
    """Parse and validate a formula and options into a :class:`ModelSpec`.

    Examples
    --------
    >>> spec = build_spec("Reaction ~ Days + (Days | Subject)", priors={"sigma": "exponential(0.02)"})
    >>> spec.priors
    (('sigma', Prior('exponential(lam=0.02)')),)
    """
    parsed = parse_formula(formula)
    items = []
    for k, v in (priors or {}).items():
        if not isinstance(k, str):
            raise PriorError(f"prior keys must be parameter labels (strings), got {k!r}")
        items.append((k, parse_prior(v, where=f"prior for {k!r}")))
    return ModelSpec(formula=parsed, family=family, priors=tuple(items), method=method)


@dataclass(frozen=True, slots=True)
class SamplerSpec:
    """NUTS settings. ``seed=None`` draws a seed, which is recorded in the fit so it can be rerun.

    ``cores=None`` means ``min(chains, CPUs)``: PyMC's own default (physical cores, = 1 on a 2-CPU
    machine) would run chains one after another.
    """

    chains: int = 4
    draws: int = 1000
    tune: int = 1000
    seed: int | None = None
    target_accept: float = 0.9
    sampler: str = "pymc"
    cores: int | None = None
    progressbar: bool = True

    def __post_init__(self):
        for name in ("chains", "draws", "tune"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < (1 if name != "tune" else 0):
                raise SpecError(f"the {name!r} parameter must be a positive integer. Got {v!r} instead.")
        if not (0 < float(self.target_accept) < 1):
            raise SpecError(f"the 'target_accept' parameter must be in (0, 1). Got {self.target_accept!r}"
                            " instead; 0.9-0.99 is usual, raise it if there are divergences.")
        if self.sampler not in SAMPLERS:
            raise SpecError(f"the 'sampler' parameter must be one of {SAMPLERS}. Got {self.sampler!r} instead.")
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            raise SpecError(f"the 'seed' parameter must be a non-negative integer. Got {self.seed!r} instead.")

    @property
    def n_cores(self) -> int:
        return self.cores or max(1, min(self.chains, os.cpu_count() or 1))

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "SamplerSpec":
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})
