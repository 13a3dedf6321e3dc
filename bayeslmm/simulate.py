"""Simulate data from a linear mixed model: known parameters in, a DataFrame out.

Used for parameter recovery, simulation-based calibration (:mod:`bayeslmm.validation`) and
boundary studies. The generative model is exactly the one :mod:`bayeslmm.paths.noncentred` fits:

.. math::

    y_i = x_i' b + \\sum_g z_{gi}' r_{g, j[i]} + e_i,\\quad e_i \\sim N(0, \\sigma^2),\\quad
    r_{g,j} \\sim N(0, D_g C_g D_g),

with ``D_g = diag(sd_g)`` and ``C_g`` the correlation matrix of factor ``g`` (identity across
uncorrelated blocks). Parameters drawn from a :class:`~bayeslmm.priors.PriorTable` follow the
same conventions as the fitted graph: the ``Intercept`` prior is on the intercept at centred
predictors, and each correlated block gets its own LKJ draw.

This module depends only on numpy/pandas and the design and prior stages (no PyMC), so
simulation is cheap and independent of the sampler it is used to check.

Examples
--------
>>> import numpy as np
>>> import bayeslmm as blmm
>>> rng = np.random.default_rng(1)
>>> df = grouped_frame(n_groups=6, n_per_group=4, rng=rng)
>>> m = blmm.Model("y ~ x + (1 + x | g)", df)
>>> truth = TrueParameters(b={"Intercept": 1.0, "x": 0.5}, sd={"g": {"Intercept": 1.0, "x": 0.3}},
...                        cor={"g": np.array([[1.0, 0.4], [0.4, 1.0]])}, sigma=0.5)
>>> sim = simulate(m.design, truth, rng)
>>> sim.shape, list(sim.columns)
((24, 3), ['y', 'x', 'g'])
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .design import Design, FactorDesign
from .errors import SpecError
from .families import get_family
from .priors import PriorTable, draw_prior

__all__ = ["TrueParameters", "draw_parameters", "draw_lkj_corr", "random_effects",
           "simulate_response", "simulate", "grouped_frame", "parameter_labels", "estimates_sigma"]


@dataclass(frozen=True)
class TrueParameters:
    """Known parameter values of a linear mixed model.

    Attributes
    ----------
    b : dict of str to float
        Fixed effects by term name, on the original (uncentred) scale, e.g. ``{"Intercept": 250,
        "Days": 10}``.
    sd : dict of str to dict of str to float
        Group-level SDs: factor -> term -> SD.
    cor : dict of str to ndarray
        Factor -> (q, q) correlation matrix. Factors without correlated blocks may be omitted
        (identity).
    sigma : float or None
        Residual SD (None: the family has none, e.g. bernoulli or poisson).
    extra_aux : dict of str to float
        The family's other auxiliary parameters (student_t: ``nu``; negbinomial: ``phi``).
    """

    b: dict
    sd: dict
    cor: dict = field(default_factory=dict)
    sigma: float | None = 1.0
    extra_aux: dict = field(default_factory=dict)

    @property
    def aux(self) -> dict[str, float]:
        """The family's auxiliary parameters by name (gaussian: ``sigma``)."""
        return {**({} if self.sigma is None else {"sigma": self.sigma}), **self.extra_aux}

    def sds(self, factor: FactorDesign) -> np.ndarray:
        """Group-level SDs of ``factor`` in term order (q,)."""
        try:
            return np.array([float(self.sd[factor.name][t]) for t in factor.terms])
        except KeyError as exc:
            raise SpecError(f"TrueParameters.sd has no value for {exc} of factor {factor.name!r}; "
                            f"give sd[{factor.name!r}] = {{term: value}} for terms {factor.terms}") from None

    def correlation(self, factor: FactorDesign) -> np.ndarray:
        """Correlation matrix of ``factor`` (q x q; identity when not given)."""
        C = np.asarray(self.cor.get(factor.name, np.eye(factor.q)), dtype=float)
        if C.shape != (factor.q, factor.q):
            raise SpecError(f"correlation of {factor.name!r} must be {factor.q}x{factor.q} "
                            f"(terms {factor.terms}); got shape {C.shape}")
        return C

    def covariance(self, factor: FactorDesign) -> np.ndarray:
        """Covariance matrix ``D C D`` of the random effects of ``factor`` (q x q)."""
        sds = self.sds(factor)
        return self.correlation(factor) * np.outer(sds, sds)

    def flat(self, design: Design) -> dict[str, float]:
        """Scalar values keyed by the labels of :func:`parameter_labels`."""
        out: dict[str, float] = {t: float(self.b[t]) for t in design.fixed_terms}
        for f in design.factors:
            for t in f.terms:
                out[f"sd({f.name}, {t})"] = float(self.sd[f.name][t])
            C = np.asarray(self.cor.get(f.name, np.eye(f.q)))
            for i, j in f.correlation_pairs:
                out[f"cor({f.name}, {f.terms[i]}, {f.terms[j]})"] = float(C[i, j])
        out.update({k: float(v) for k, v in self.aux.items()})
        return out


def parameter_labels(design: Design, aux_names: tuple[str, ...] | None = None) -> list[str]:
    """Labels of every scalar model parameter, as used in :meth:`bayeslmm.Fit.variance_components`.

    Fixed effects by term name, then ``sd(g, term)``, ``cor(g, t1, t2)`` per factor, then the
    family's auxiliary parameters (gaussian: ``sigma``).
    """
    labels = list(design.fixed_terms)
    for f in design.factors:
        labels += [f"sd({f.name}, {t})" for t in f.terms]
        labels += [f"cor({f.name}, {f.terms[i]}, {f.terms[j]})" for i, j in f.correlation_pairs]
    return labels + list(aux_names if aux_names is not None else (("sigma",) if estimates_sigma(design) else ()))


def estimates_sigma(design: Design) -> bool:
    """False for known standard errors without sigma (``y | se(s) ~ ...``): no residual SD."""
    return getattr(design, "se", None) is None or design.se_sigma


def draw_lkj_corr(n: int, eta: float, rng: np.random.Generator) -> np.ndarray:
    """One n x n correlation matrix from LKJ(eta), by the onion method.

    Lewandowski, Kurowicka & Joe (2009), "Generating random correlation matrices based on vines
    and extended onion method", J. Multivariate Anal. 100:1989-2001, section 3.2. Each off-diagonal
    element then has marginal ``(r + 1) / 2 ~ Beta(eta - 1 + n/2, eta - 1 + n/2)``.
    """
    if n == 1:
        return np.ones((1, 1))
    beta = eta + (n - 2) / 2.0
    r12 = 2.0 * rng.beta(beta, beta) - 1.0
    R = np.array([[1.0, r12], [r12, 1.0]])
    for k in range(2, n):
        beta -= 0.5
        y = rng.beta(k / 2.0, beta)
        u = rng.normal(size=k)
        u /= np.linalg.norm(u)
        w = np.sqrt(y) * u
        z = np.linalg.cholesky(R) @ w
        R = np.block([[R, z[:, None]], [z[None, :], np.ones((1, 1))]])
    return R


def draw_parameters(prior_table: PriorTable, design: Design, rng: np.random.Generator) -> TrueParameters:
    """Draw one parameter set from the prior table, with the conventions of the fitted graph.

    The ``Intercept`` prior is on the intercept at centred predictors (as in
    ``Design.slope_means``, as in :func:`bayeslmm.paths.blocks.fixed_effects`), so the returned ``b["Intercept"]`` is
    ``Intercept_c - mean(X_slopes) @ b_slopes``. Each correlated block of a factor gets an
    independent LKJ draw with the factor's ``cor(g)`` eta.
    """
    terms = design.fixed_terms
    slopes = list(design.slope_columns)
    b = {terms[j]: float(draw_prior(prior_table[terms[j]].prior, rng)) for j in slopes}
    if design.has_intercept:
        ic = float(draw_prior(prior_table["Intercept"].prior, rng))
        xm = design.slope_means
        b["Intercept"] = ic - float(xm @ np.array([b[terms[j]] for j in slopes]))
    b = {t: b[t] for t in terms}
    sd, cor = {}, {}
    for f in design.factors:
        sd[f.name] = {e.term: float(draw_prior(e.prior, rng)) for e in prior_table.of_class("sd", f.name)}
        if f.has_correlation:
            eta = prior_table[f"cor({f.name})"].prior.kwargs["eta"]
            C = np.eye(f.q)
            for block, corr in zip(f.blocks, f.correlated):
                if corr and len(block) > 1:
                    C[np.ix_(block, block)] = draw_lkj_corr(len(block), eta, rng)
            cor[f.name] = C
    # the family's auxiliary parameters are the table's other entries (class = name: sigma, nu, phi)
    aux = {e.label: float(draw_prior(e.prior, rng)) for e in prior_table.entries
           if e.cls not in ("Intercept", "b", "sd", "cor")}
    sigma = aux.pop("sigma", None)
    return TrueParameters(b=b, sd=sd, cor=cor, sigma=sigma, extra_aux=aux)


def random_effects(design: Design, params: TrueParameters, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Draw the group-level effects: factor name -> (J, q) array ``r_g`` (deviations)."""
    out = {}
    for f in design.factors:
        scale = params.sds(f)
        if np.any(scale < 0):
            raise SpecError(f"group-level SDs of {f.name!r} must be >= 0, got {scale}")
        # r = (z @ L.T) * sd, as in the non-centred graph; a tiny jitter keeps a correlation of
        # exactly +-1 factorisable
        L = np.linalg.cholesky(params.correlation(f) + 1e-12 * np.eye(f.q))
        z = rng.normal(size=(f.n_levels, f.q))
        out[f.name] = (z @ L.T) * scale
    return out


def simulate_response(design: Design, params: TrueParameters, rng: np.random.Generator,
                      effects: dict[str, np.ndarray] | None = None, *,
                      family: str = "gaussian", link: str | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Simulate ``y`` for the design's predictors and groups.

    Returns
    -------
    (y, effects) : the response (n,) and the random effects used (factor -> (J, q)).
    """
    missing = [t for t in design.fixed_terms if t not in params.b]
    if missing:
        raise SpecError(f"TrueParameters.b has no value for fixed term(s) {missing}; "
                        f"terms are {list(design.fixed_terms)}")
    if params.sigma is not None and not params.sigma >= 0:
        raise SpecError(f"sigma must be >= 0, got {params.sigma!r}")
    if effects is None:
        effects = random_effects(design, params, rng)
    b = np.array([params.b[t] for t in design.fixed_terms], dtype=float)
    eta = design.X @ b
    for f in design.factors:
        eta = eta + np.einsum("nq,nq->n", f.Z, effects[f.name][f.codes])
    if design.offset is not None:
        eta = eta + design.offset
    extra = {} if getattr(design, "se", None) is None else {"se": design.se}   # known SEs: N(eta, s^2 + sigma^2)
    y = get_family(family, link).draw(eta, params.aux, rng, trials=design.trials, **extra)
    return y, effects


def simulate(design: Design, params: TrueParameters, rng: np.random.Generator,
             effects: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """A copy of the design's data with the response replaced by a simulation from ``params``.

    Parameters
    ----------
    design : Design
        From :func:`bayeslmm.make_design` or ``Model(...).design``; its predictors and groups are kept.
    params : TrueParameters
    rng : numpy.random.Generator
    effects : dict, optional
        Fixed random effects to use (factor -> (J, q)); drawn when omitted.

    Returns
    -------
    pandas.DataFrame
        Same columns and rows as ``design.data_frame()``; ``attrs["effects"]`` holds the random effects.
    """
    y, eff = simulate_response(design, params, rng, effects)
    out = design.data_frame(y)
    out.attrs["effects"] = eff
    return out


def grouped_frame(n_groups: int, n_per_group: int | np.ndarray, rng: np.random.Generator, *,
                  slopes: tuple[str, ...] = ("x",), group: str = "g", response: str = "y") -> pd.DataFrame:
    """A synthetic predictor frame: ``n_groups`` levels of ``group``, standard-normal ``slopes``.

    ``n_per_group`` is an int (balanced) or one size per group. The response column is filled with
    standard-normal noise (replace it with :func:`simulate`). Level labels are zero-padded
    (``g00``, ``g01``, ...) so they sort in code order.
    """
    sizes = np.broadcast_to(np.asarray(n_per_group, dtype=int), (n_groups,))
    if n_groups < 2 or (sizes < 1).any():
        raise SpecError(f"need n_groups >= 2 and every group size >= 1; got {n_groups} groups, sizes {sizes}")
    width = len(str(n_groups - 1))
    labels = np.repeat([f"{group}{j:0{width}d}" for j in range(n_groups)], sizes)
    n = int(sizes.sum())
    data = {response: rng.normal(size=n)}
    for s in slopes:
        data[s] = rng.normal(size=n)
    data[group] = labels
    return pd.DataFrame(data)
