"""Default priors scaled to the data, merged with user overrides.

Stage 4. Every parameter gets an explicit prior and a note saying where its scale came from.
Defaults (weakly informative, as in brms/rstanarm; ``s_y`` = sample SD of the response):

=====================  ==========================================  ==============================
parameter              default                                     note
=====================  ==========================================  ==============================
``Intercept``          normal(mean(y), 2.5 s_y)                    at centred predictors
slope ``x``            normal(0, 2.5 s_y / sd(x))
``sd(g, Intercept)``   halfstudentt(3, s_y)
``sd(g, x)``           halfstudentt(3, s_y / sd(x))
``cor(g)``             lkj(2)                                      each correlated block of g
``sigma``              halfstudentt(3, s_y)
=====================  ==========================================  ==============================

User priors are keyed by the labels in the table (``"Days"``, ``"sd(Subject, Days)"``,
``"cor(Subject)"``, ``"sigma"``) or by a class (``"b"``, ``"sd"``, ``"cor"``); an exact label wins
over a class. A key that matches no parameter is an error, never ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .design import Design
from .errors import DataError, PriorError
from .spec import POSITIVE_DISTS, ModelSpec, Prior

__all__ = ["ResolvedPrior", "PriorTable", "resolve_priors"]

ALLOWED = {
    "Intercept": ("normal", "studentt"),
    "b": ("normal", "studentt"),
    "sd": POSITIVE_DISTS,
    "sigma": POSITIVE_DISTS,
    "cor": ("lkj",),
}


@dataclass(frozen=True, slots=True)
class ResolvedPrior:
    """One parameter's prior. ``cls`` is Intercept, b, sd, cor or sigma."""

    label: str
    cls: str
    prior: Prior
    source: str
    factor: str | None = None
    term: str | None = None


@dataclass(frozen=True, slots=True)
class PriorTable:
    """Every prior of a model. ``to_frame()`` gives the printed table."""

    entries: tuple[ResolvedPrior, ...]

    def __getitem__(self, label: str) -> ResolvedPrior:
        for e in self.entries:
            if e.label == label:
                return e
        raise KeyError(f"no parameter {label!r}; parameters are {[e.label for e in self.entries]}")

    def of_class(self, cls: str, factor: str | None = None) -> list[ResolvedPrior]:
        return [e for e in self.entries if e.cls == cls and (factor is None or e.factor == factor)]

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"parameter": [e.label for e in self.entries],
                             "class": [e.cls for e in self.entries],
                             "prior": [str(e.prior) for e in self.entries],
                             "source": [e.source for e in self.entries]})

    def to_dict(self) -> dict[str, str]:
        return {e.label: e.prior.text for e in self.entries}

    def __repr__(self) -> str:
        return "Priors\n" + self.to_frame().to_string(index=False)

    def _repr_html_(self) -> str:
        return self.to_frame().to_html(index=False)


def _sd(v: np.ndarray) -> float:
    return float(np.std(v, ddof=1)) if len(v) > 1 else 0.0


def resolve_priors(spec: ModelSpec, design: Design) -> PriorTable:
    """Build the full prior table: data-scaled defaults plus the spec's overrides.

    Raises
    ------
    PriorError
        A user prior whose key names no parameter, or a distribution not allowed for that
        parameter (e.g. a normal prior on an SD).

    Examples
    --------
    >>> import bayeslmm as blmm
    >>> m = blmm.Model("Reaction ~ Days + (Days | Subject)", blmm.load_dataset("sleepstudy"))
    >>> m.prior_table["sd(Subject, Days)"].prior
    Prior('halfstudentt(nu=3, sigma=19.49)')
    """
    y = design.y
    s_y = _sd(y)
    if not s_y > 0:
        raise DataError(f"response {design.response!r} is constant ({y[0]:g}); there is nothing to model.")
    sy = f"{s_y:.4g}"
    entries: list[ResolvedPrior] = []
    for j, term in enumerate(design.fixed_terms):
        if term == "Intercept":
            entries.append(ResolvedPrior("Intercept", "Intercept",
                                         Prior("normal", (("mu", float(np.mean(y))), ("sigma", 2.5 * s_y))),
                                         f"default: mean(y), 2.5 sd(y), sd(y)={sy}; at centred predictors"))
        else:
            sx = _sd(design.X[:, j])
            entries.append(ResolvedPrior(term, "b", Prior("normal", (("mu", 0.0), ("sigma", 2.5 * s_y / sx))),
                                         f"default: 2.5 sd(y)/sd(x), sd(y)={sy}, sd(x)={sx:.4g}", term=term))
    for fac in design.factors:
        for k, term in enumerate(fac.terms):
            sz = _sd(fac.Z[:, k]) if term != "Intercept" else 1.0
            scale = s_y / sz if sz > 0 else s_y
            src = (f"default: sd(y)={sy}" if term == "Intercept"
                   else f"default: sd(y)/sd(x), sd(y)={sy}, sd(x)={sz:.4g}")
            entries.append(ResolvedPrior(f"sd({fac.name}, {term})", "sd",
                                         Prior("halfstudentt", (("nu", 3.0), ("sigma", scale))), src,
                                         factor=fac.name, term=term))
        if fac.has_correlation:
            entries.append(ResolvedPrior(f"cor({fac.name})", "cor", Prior("lkj", (("eta", 2.0),)),
                                         "default", factor=fac.name))
    entries.append(ResolvedPrior("sigma", "sigma", Prior("halfstudentt", (("nu", 3.0), ("sigma", s_y))),
                                 f"default: sd(y)={sy}"))

    overrides = dict(spec.priors)
    labels = {e.label for e in entries}
    classes = {e.cls for e in entries} - {"Intercept"}
    unknown = [k for k in overrides if k not in labels and k not in classes]
    if unknown:
        raise PriorError(f"the following priors do not correspond to any model parameter: {unknown}. "
                         f"Parameters: {sorted(labels)}; classes: {sorted(classes)}. "
                         "See Model(...).priors for the labels.")
    out = []
    for e in entries:
        key = e.label if e.label in overrides else (e.cls if e.cls in overrides else None)
        if key is None:
            out.append(e)
            continue
        p = overrides[key]
        if p.dist not in ALLOWED[e.cls]:
            raise PriorError(f"prior {p} for {key!r} is not allowed for a {e.cls} parameter; use one of "
                             f"{ALLOWED[e.cls]}")
        out.append(ResolvedPrior(e.label, e.cls, p, f"user ({key!r})", e.factor, e.term))
    return PriorTable(tuple(out))
