"""Every prior distribution in one place, and the prior table of a model.

**Distributions** (:data:`PRIOR_DISTS`): parsing (:func:`parse_prior`), the PyMC constructor
(:func:`pymc_prior`, PyMC imported inside), scipy/numpy quantiles and draws
(:func:`prior_quantile`, :func:`draw_prior`) and rescaling for sensitivity analysis
(:func:`scale_prior`). No other module names a distribution.

**The prior table** (:func:`resolve_priors`): every parameter gets an explicit prior and a note
saying where its scale came from. Defaults (weakly informative, as in brms/rstanarm; ``s_y`` =
sample SD of the response):

=====================  ==========================================  ==============================
parameter              default                                     note
=====================  ==========================================  ==============================
``Intercept``          normal(mean(y), 2.5 s_y)                    at centred predictors
slope ``x``            normal(0, 2.5 s_y / sd(x))
``sd(g, Intercept)``   halfstudentt(3, s_y)
``sd(g, x)``           halfstudentt(3, s_y / sd(x))
``cor(g)``             lkj(2)                                      each correlated block of g
auxiliary (``sigma``)  the family's rule (gaussian: halfstudentt(3, s_y))
=====================  ==========================================  ==============================

User priors are keyed by the labels in the table (``"Days"``, ``"sd(Subject, Days)"``,
``"cor(Subject)"``, ``"sigma"``) or by a class (``"b"``, ``"sd"``, ``"cor"``); an exact label wins
over a class. A key that matches no parameter is an error, never ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .errors import DataError, PriorError, SpecError
from .families import family_of

if TYPE_CHECKING:
    from .design import Design
    from .spec import ModelSpec

__all__ = ["PRIOR_DISTS", "POSITIVE_DISTS", "ALLOWED", "Prior", "parse_prior", "pymc_prior",
           "draw_prior", "prior_quantile", "scale_prior", "ResolvedPrior", "PriorTable", "resolve_priors",
           "DataScales", "data_scales", "lkj_cpc", "density_terms", "DENSITY_NORMAL",
           "DENSITY_STUDENTT", "DENSITY_GAMMA", "DENSITY_CPC"]

# distribution name -> parameter names, in positional order
PRIOR_DISTS: dict[str, tuple[str, ...]] = {
    "normal": ("mu", "sigma"),
    "studentt": ("nu", "mu", "sigma"),
    "halfnormal": ("sigma",),
    "halfstudentt": ("nu", "sigma"),
    "halfcauchy": ("beta",),
    "exponential": ("lam",),
    "gamma": ("alpha", "beta"),
    "lkj": ("eta",),
}
POSITIVE_DISTS = ("halfnormal", "halfstudentt", "halfcauchy", "exponential", "gamma")
#: distributions allowed per parameter class; an auxiliary parameter of the family gets those of
#: its support (see :func:`allowed`)
ALLOWED = {
    "Intercept": ("normal", "studentt"),
    "b": ("normal", "studentt"),
    "sd": POSITIVE_DISTS,
    "cor": ("lkj",),
}
_SUPPORT = {"positive": POSITIVE_DISTS}
# PyMC class names of the scalar distributions
_PYMC = {"normal": "Normal", "studentt": "StudentT", "halfnormal": "HalfNormal",
         "halfstudentt": "HalfStudentT", "halfcauchy": "HalfCauchy", "exponential": "Exponential", "gamma": "Gamma"}


# --------------------------------------------------------------------------------------------
# one distribution
# --------------------------------------------------------------------------------------------
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
            if k in ("sigma", "beta", "lam", "eta", "nu", "alpha") and v <= 0:
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


_PRIOR_RE = re.compile(r"^\s*([A-Za-z_]+)\s*\((.*)\)\s*$")      # names case-insensitive


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
        if k in values:
            raise PriorError(f"{where}: parameter {k!r} of {text!r} is given twice; give each of "
                             f"{names} once")
        try:
            values[k] = float(v)
        except ValueError:
            raise PriorError(f"{where}: parameter {k}={v!r} of {text!r} is not a number") from None
    missing = [n for n in names if n not in values]
    if missing:
        raise PriorError(f"{where}: {text!r} is missing {', '.join(missing)} (parameters {names})")
    try:
        return Prior(dist, tuple((n, values[n]) for n in names))
    except PriorError as exc:                 # invalid values: say which parameter's prior it is
        raise PriorError(f"{where}: {exc}") from None


def pymc_prior(dist: str, name: str, params: dict, dims=None):
    """The PyMC random variable ``name`` with prior ``dist`` (scalar distributions; PyMC imported here).

    ``params`` values may be arrays (one entry per element of a vector variable with ``dims``).
    """
    import pymc as pm
    if dist not in _PYMC:
        raise PriorError(f"a {dist!r} prior is not a scalar distribution; use one of {tuple(_PYMC)}")
    cls = getattr(pm, _PYMC[dist])
    return cls(name, **params) if dims is None else cls(name, **params, dims=dims)


def draw_prior(prior: Prior, rng: np.random.Generator, size=None) -> np.ndarray | float:
    """Draw from one scalar prior (normal, studentt, halfnormal, halfstudentt, halfcauchy, exponential)."""
    k = prior.kwargs
    d = prior.dist
    if d == "normal":
        return rng.normal(k["mu"], k["sigma"], size)
    if d == "studentt":
        return k["mu"] + k["sigma"] * rng.standard_t(k["nu"], size)
    if d == "halfnormal":
        return np.abs(rng.normal(0.0, k["sigma"], size))
    if d == "halfstudentt":
        return k["sigma"] * np.abs(rng.standard_t(k["nu"], size))
    if d == "halfcauchy":
        return k["beta"] * np.abs(rng.standard_cauchy(size))
    if d == "exponential":
        return rng.exponential(1.0 / k["lam"], size)
    if d == "gamma":
        return rng.gamma(k["alpha"], 1.0 / k["beta"], size)
    raise SpecError(f"cannot draw from a {d!r} prior as a scalar")


#: kernels of the compiled log-densities of :func:`density_terms` (evaluated by
#: :func:`bayeslmm.paths.collapsed_density.prior_logp`)
DENSITY_NORMAL, DENSITY_STUDENTT, DENSITY_GAMMA, DENSITY_CPC = 0, 1, 2, 3


def lkj_cpc(n: int, eta: float) -> tuple[np.ndarray, np.ndarray]:
    """``(beta, const)`` of the canonical partial correlations of an n x n LKJ(eta) matrix.

    Under LKJ(eta) the n(n-1)/2 partial correlations z (row-major, i > j) are independent with
    (z_ij + 1) / 2 ~ Beta(b_j, b_j), b_j = eta + (n - 2 - j) / 2 (Lewandowski, Kurowicka & Joe
    2009). On the unconstrained scale y = atanh(z), log p(y) = b log(1 - z^2) + const with
    const = -(2 b - 1) log 2 - log B(b, b).
    """
    from scipy.special import betaln
    beta = np.array([eta + (n - 2 - j) / 2.0 for i in range(1, n) for j in range(i)])
    return beta, -(2.0 * beta - 1.0) * np.log(2.0) - betaln(beta, beta)


def density_terms(prior: Prior, size: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """How the compiled log-density evaluates ``prior`` for a variable of ``size`` elements.

    Returns ``(code (size,), par (size, 4), log_transformed)``: each element's log-density is
    ``const + kernel(v)`` with ``par = (mu, shape, scale_or_rate, const)``: normal and halfnormal
    ``const - (v - mu)^2 / (2 s^2)``; studentt, halfstudentt and halfcauchy (nu = 1)
    ``const - (nu + 1) / 2 log1p(((v - mu) / s)^2 / nu)``; gamma and exponential (alpha = 1)
    ``const + (alpha - 1) log v - rate v``; lkj (``size`` partial correlations on the atanh
    scale) ``beta log(1 - tanh(y)^2) + const`` (:func:`lkj_cpc`). Positive priors are sampled on
    the log scale (``log_transformed``; the log-Jacobian is added by the kernel). The constants
    are PyMC's, so the compiled density equals the model's log-density, not only up to a constant.
    """
    from scipy.special import gammaln
    k = prior.kwargs
    d = prior.dist
    code, par = np.zeros(size, dtype=np.int64), np.zeros((size, 4))
    half = np.log(2.0) if d in POSITIVE_DISTS else 0.0
    if d in ("normal", "halfnormal"):
        s = k["sigma"]
        code[:], par[:] = DENSITY_NORMAL, (k.get("mu", 0.0), 0.0, s, half - 0.5 * np.log(2 * np.pi) - np.log(s))
    elif d in ("studentt", "halfstudentt", "halfcauchy"):
        nu, s = (1.0, k["beta"]) if d == "halfcauchy" else (k["nu"], k["sigma"])
        const = half + gammaln((nu + 1) / 2) - gammaln(nu / 2) - 0.5 * np.log(np.pi * nu) - np.log(s)
        code[:], par[:] = DENSITY_STUDENTT, (k.get("mu", 0.0), nu, s, const)
    elif d in ("gamma", "exponential"):
        a, rate = (1.0, k["lam"]) if d == "exponential" else (k["alpha"], k["beta"])
        code[:], par[:] = DENSITY_GAMMA, (0.0, a, rate, a * np.log(rate) - gammaln(a))
    elif d == "lkj":
        n = int(round((1 + np.sqrt(1 + 8 * size)) / 2))
        if n * (n - 1) // 2 != size:
            raise SpecError(f"an lkj prior has n(n-1)/2 partial correlations, not {size}")
        beta, const = lkj_cpc(n, k["eta"])
        code[:] = DENSITY_CPC
        par[:, 1], par[:, 3] = beta, const
    else:
        raise SpecError(f"no compiled log-density for a {d!r} prior")
    return code, par, d in POSITIVE_DISTS


def prior_quantile(prior: Prior, q) -> np.ndarray:
    """Quantiles of a scalar prior (used to judge how much the data moved a posterior)."""
    from scipy import stats
    k = prior.kwargs
    q = np.asarray(q, dtype=float)
    d = prior.dist
    if d == "normal":
        return stats.norm.ppf(q, k["mu"], k["sigma"])
    if d == "studentt":
        return stats.t.ppf(q, k["nu"], k["mu"], k["sigma"])
    if d == "halfnormal":
        return stats.halfnorm.ppf(q, scale=k["sigma"])
    if d == "halfstudentt":
        return k["sigma"] * stats.t.ppf((1 + q) / 2, k["nu"])
    if d == "halfcauchy":
        return stats.halfcauchy.ppf(q, scale=k["beta"])
    if d == "exponential":
        return stats.expon.ppf(q, scale=1.0 / k["lam"])
    if d == "gamma":
        return stats.gamma.ppf(q, k["alpha"], scale=1.0 / k["beta"])
    raise SpecError(f"no scalar quantiles for a {d!r} prior")


def scale_prior(prior: Prior, factor: float) -> Prior:
    """The same prior with its scale multiplied by ``factor`` (for prior-sensitivity analysis).

    ``normal``/``studentt``/``halfnormal``/``halfstudentt`` scale ``sigma``; ``halfcauchy`` scales
    ``beta``; ``exponential`` divides ``lam`` (its mean ``1/lam`` is the scale). Shapes (``nu``)
    are kept.

    Examples
    --------
    >>> scale_prior(parse_prior("halfstudentt(3, 20)"), 0.5)
    Prior('halfstudentt(nu=3, sigma=10)')
    >>> scale_prior(parse_prior("exponential(0.1)"), 2.0)
    Prior('exponential(lam=0.05)')
    """
    if not factor > 0:
        raise SpecError(f"a prior scale factor must be > 0. Got {factor!r} instead.")
    k = dict(prior.params)
    if prior.dist in ("halfnormal", "halfstudentt", "normal", "studentt"):
        k["sigma"] = k["sigma"] * factor
    elif prior.dist == "halfcauchy":
        k["beta"] = k["beta"] * factor
    elif prior.dist == "exponential":
        k["lam"] = k["lam"] / factor
    elif prior.dist == "gamma":
        k["beta"] = k["beta"] / factor
    else:
        raise SpecError(f"cannot scale a {prior.dist!r} prior; sensitivity scales SD priors only")
    return Prior(prior.dist, tuple((n, float(k[n])) for n, _ in prior.params))


# --------------------------------------------------------------------------------------------
# the prior table of a model
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ResolvedPrior:
    """One parameter's prior. ``cls`` is Intercept, b, sd, cor or the name of an auxiliary
    parameter of the family (``sigma``)."""

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


def allowed(cls: str, family) -> tuple[str, ...]:
    """Distributions allowed for a parameter of class ``cls`` (an auxiliary one: by its support)."""
    if cls in ALLOWED:
        return ALLOWED[cls]
    aux = {a.name: a for a in family.aux}
    return _SUPPORT[aux[cls].support]


def _sd(v: np.ndarray) -> float:
    if len(v) < 2:
        return 0.0
    sd = float(np.std(v, ddof=1))
    if sd == 0.0 and np.ptp(v) > 0:     # tiny values (1e-300): the squares underflowed, rescale first
        m = float(np.max(np.abs(v)))
        sd = m * float(np.std(np.asarray(v) / m, ddof=1))
    return sd


@dataclass(frozen=True)
class DataScales:
    """The numbers of the data that the default priors are scaled by (one owner: :func:`data_scales`).

    Attributes
    ----------
    y_mean, y_sd : float
        Mean and sd (ddof=1) of the response (``y_sd``: of y / trials for the binomial).
    x_sd : tuple of float
        sd of each fixed-effect column, in ``design.fixed_terms`` order.
    z_sd : tuple of tuple of float
        sd of each random-effect column, per factor in ``design.factors`` order.
    """

    y_mean: float
    y_sd: float
    x_sd: tuple
    z_sd: tuple


def data_scales(design) -> DataScales:
    """:class:`DataScales` of a design: from its rows, or the streamed moments a statistics-only
    design (:mod:`bayeslmm.bigfit`) carries as ``design.scales``."""
    own = getattr(design, "scales", None)
    if own is not None:
        return own
    y = design.y
    trials = getattr(design, "trials", None)
    return DataScales(float(np.mean(y)), _sd(y if trials is None else y / np.maximum(trials, 1.0)),
                      tuple(_sd(design.X[:, j]) for j in range(design.X.shape[1])),
                      tuple(tuple(_sd(f.Z[:, k]) for k in range(f.q)) for f in design.factors))


def _alias_matches(key: str, entries) -> list[str]:
    """Labels that ``key`` names in another spelling: a PyMC variable name (``sd_Batch``,
    ``cor_Subject``, ``b_Days``), another case or punctuation (``SD(batch)``). Letters and digits
    only, lower case: a label matches when it equals the key, or starts with it (``sd_Batch`` ->
    every ``sd(Batch, ...)``), with or without its class in front."""
    import re

    def norm(t: str) -> str:
        return re.sub(r"[^0-9a-z]+", "", t.lower())

    nk = norm(key)
    if not nk:
        return []
    out = [e.label for e in entries
           if norm(e.label) == nk or norm(e.cls + e.label) == nk or (len(nk) > 2 and norm(e.label).startswith(nk))]
    return out[:4]


def resolve_priors(spec: "ModelSpec", design: "Design") -> PriorTable:
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
    Prior('halfstudentt(nu=3, sigma=19.56)')
    """
    family = family_of(spec)
    scales = data_scales(design)
    s_y = scales.y_sd
    if not s_y > 0:
        raise DataError(f"response {design.response!r} is constant ({scales.y_mean:g}); there is nothing to model.")
    sy = f"{s_y:.4g}"
    entries: list[ResolvedPrior] = []
    if family.link_scale_priors:
        entries += _link_scale_defaults(design, family, scales)
    for j, term in enumerate(design.fixed_terms if not family.link_scale_priors else ()):
        if term == "Intercept":
            entries.append(ResolvedPrior("Intercept", "Intercept",
                                         Prior("normal", (("mu", scales.y_mean), ("sigma", 2.5 * s_y))),
                                         f"default: mean(y), 2.5 sd(y), sd(y)={sy}; at centred predictors"))
        else:
            sx = scales.x_sd[j]
            entries.append(ResolvedPrior(term, "b", Prior("normal", (("mu", 0.0), ("sigma", 2.5 * s_y / sx))),
                                         f"default: 2.5 sd(y)/sd(x), sd(y)={sy}, sd(x)={sx:.4g}", term=term))
    if not family.link_scale_priors:
        entries += _group_level_defaults(design, scales, s_y, f"default: sd(y)={sy}",
                                         lambda sz: f"default: sd(y)/sd(x), sd(y)={sy}, sd(x)={sz:.4g}")
    for aux in family.aux:
        dist, params, src = family.default_aux_prior(aux.name, s_y)
        entries.append(ResolvedPrior(aux.name, aux.name, Prior(dist, params), src))

    overrides = dict(spec.priors)
    labels = {e.label for e in entries}
    classes = {e.cls for e in entries} - {"Intercept"}
    unknown = [k for k in overrides if k not in labels and k not in classes]
    if unknown:
        import difflib
        hints = []
        for k in unknown:
            close = _alias_matches(k, entries) or difflib.get_close_matches(k, sorted(labels | classes),
                                                                            n=2, cutoff=0.6)
            if close:
                hints.append(f"did you mean {' or '.join(repr(c) for c in close)} for {k!r}?")
        raise PriorError(f"the following priors do not correspond to any model parameter: {unknown}. "
                         + (" ".join(hints)[0].upper() + " ".join(hints)[1:] + " " if hints else "")
                         + f"Parameters: {sorted(labels)}; classes: {sorted(classes)}. "
                         "See Model(...).priors for the labels.")
    out = []
    for e in entries:
        key = e.label if e.label in overrides else (e.cls if e.cls in overrides else None)
        if key is None:
            out.append(e)
            continue
        p = overrides[key]
        ok = allowed(e.cls, family)
        if p.dist not in ok:
            raise PriorError(f"prior {p} for {key!r} is not allowed for a {e.cls} parameter; use one of "
                             f"{ok}")
        out.append(ResolvedPrior(e.label, e.cls, p, f"user ({key!r})", e.factor, e.term))
    return PriorTable(tuple(out))


#: link-scale defaults of the logit, probit and log families (rstanarm's, Gelman et al. 2008):
#: normal(0, 2.5) for the centred intercept (log link: centred at log of the mean rate), slopes
#: normal(0, 2.5 / sd(x)), group SDs halfstudentt(3, 1) (slopes: 1 / sd(x)); never sd(y)
LINK_SCALE = 2.5
LINK_SD_SCALE = 1.0


def _link_scale_defaults(design: "Design", family, scales: DataScales) -> list[ResolvedPrior]:
    link = family.link
    entries = []
    for j, term in enumerate(design.fixed_terms):
        if term == "Intercept":
            mu, where = 0.0, ""
            if link == "log":
                off = getattr(design, "offset", None)
                mean_off = float(np.mean(off)) if off is not None else 0.0
                m = float(np.mean(design.y))
                mu = float(np.log(m) - mean_off) if m > 0 else 0.0
                where = f", centred at log(mean(y)){' - mean(offset)' if off is not None else ''}={mu:.4g}"
            entries.append(ResolvedPrior("Intercept", "Intercept",
                                         Prior("normal", (("mu", mu), ("sigma", LINK_SCALE))),
                                         f"default: {LINK_SCALE} on the {link} scale{where}; at centred "
                                         "predictors"))
        else:
            sx = scales.x_sd[j]
            entries.append(ResolvedPrior(term, "b", Prior("normal", (("mu", 0.0), ("sigma", LINK_SCALE / sx))),
                                         f"default: {LINK_SCALE}/sd(x) on the {link} scale, sd(x)={sx:.4g}",
                                         term=term))
    entries += _group_level_defaults(
        design, scales, LINK_SD_SCALE, f"default: {LINK_SD_SCALE:g} on the {link} scale",
        lambda sz: f"default: {LINK_SD_SCALE:g}/sd(x) on the {link} scale, sd(x)={sz:.4g}")
    return entries


def _group_level_defaults(design, scales, base: float, intercept_source: str, slope_source) -> list:
    """Default group-level priors, for every family: ``sd(g, term) ~ halfstudentt(3, base / sd(z))``
    (``base`` for an intercept) and ``cor(g) ~ lkj(2)``; ``slope_source(sd_z)`` words the source."""
    entries = []
    for i, fac in enumerate(design.factors):
        for k, term in enumerate(fac.terms):
            sz = scales.z_sd[i][k] if term != "Intercept" else 1.0
            scale = base / sz if sz > 0 else base
            src = intercept_source if term == "Intercept" else slope_source(sz)
            entries.append(ResolvedPrior(f"sd({fac.name}, {term})", "sd",
                                         Prior("halfstudentt", (("nu", 3.0), ("sigma", scale))), src,
                                         factor=fac.name, term=term))
        if fac.has_correlation:
            entries.append(ResolvedPrior(f"cor({fac.name})", "cor", Prior("lkj", (("eta", 2.0),)),
                                         "default", factor=fac.name))
    return entries
