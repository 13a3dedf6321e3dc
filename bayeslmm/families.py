"""Response families: the one place that knows what a family is.

A :class:`Family` holds everything the rest of the package asks about the distribution of the
response given the linear predictor ``eta`` (offset included):

* the link and its inverse (``mu = inverse_link(eta)``), and the expected response
  (:meth:`Family.mean`: ``trials * p`` for the binomial);
* its auxiliary parameters (``sigma``, ``nu``, ``phi``), each with the rule for its default prior
  (:meth:`Family.default_aux_prior`), and whether the regression priors are on the link scale
  (:attr:`Family.link_scale_priors`: fixed link-scale defaults, not ``sd(y)``);
* the log-likelihood, in numpy (:meth:`Family.log_likelihood`) and as a PyMC observed variable
  (:meth:`Family.observe`, PyMC imported inside, so this module stays light);
* random draws of new observations (:meth:`Family.draw`);
* checks and encoding of the response (:meth:`Family.encode_response`, :meth:`Family.check_response`);
* the latent-scale residual variance used by the ICC (:meth:`Family.latent_residual_variance`,
  Nakagawa, Johnson & Schielzeth 2017, J. R. Soc. Interface 14: 20170213) and the words that say
  which scale that is (:attr:`Family.latent_scale`);
* whether the exact collapsed sampling path applies (:attr:`Family.supports_collapsed`).

Every method that takes ``eta`` takes the **linear predictor** (link scale), never the mean.

=============  ==============  =========  ============================  =============================
family         links           aux        default aux prior             latent residual variance
=============  ==============  =========  ============================  =============================
gaussian       identity        sigma      halfstudentt(3, sd(y))        sigma^2
student_t      identity        sigma, nu  halfstudentt(3, sd(y));       sigma^2 (the squared scale:
                                          nu: gamma(2, 0.1)             the t variance is infinite
                                                                        for nu <= 2)
bernoulli      logit, probit   --         --                            pi^2/3 (logit), 1 (probit)
binomial       logit, probit   --         --                            pi^2/3 (logit), 1 (probit)
poisson        log             --         --                            log(1 + 1/lambda)
negbinomial    log             phi        gamma(2, 0.1)                 log(1 + 1/lambda + 1/phi)
=============  ==============  =========  ============================  =============================

``lambda`` is the mean count of an average observation, ``exp(b_0c + mean(offset) + sum_g
sd_g(Intercept)^2 / 2)`` per draw (``b_0c`` the intercept at centred predictors): the log-normal
approximation of Nakagawa et al. (2017, Table 1; for the negative binomial with
``Var = mu + mu^2/phi`` its analogue ``log(1 + 1/lambda + 1/phi)``).

**Known standard errors** (``y | se(s) ~ ...``, meta-analysis): the Gaussian likelihood with a
per-row scale, y_i ~ N(eta_i, s_i^2 + sigma^2), where sigma is estimated only with
``se(s, sigma = TRUE)`` (else it is 0 and the family has no auxiliary parameter). The variant is
the same :class:`Gaussian` class (:func:`family_of` picks it for a spec, :meth:`Family.with_known_se`
makes it; every other family raises :class:`~bayeslmm.errors.SpecError`); its methods take the
per-row standard errors as ``se=``. Its latent residual variance (for the ICC, which is then I^2) is
the typical within-study variance of Higgins & Thompson (2002) plus sigma^2: :func:`typical_variance`.

Examples
--------
>>> fam = get_family("gaussian")
>>> fam.aux_names, fam.supports_collapsed
(('sigma',), True)
>>> float(fam.log_likelihood(0.0, 0.0, {"sigma": 1.0}))          # log N(0 | 0, 1)
-0.9189385332046727
>>> get_family("bernoulli", "probit").link
'probit'
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import special

from .errors import DataError, SpecError

__all__ = ["AuxParameter", "Family", "GAUSSIAN", "FAMILIES", "LINKS", "get_family", "family_of",
           "typical_variance", "link_function", "inverse_link_function"]

LOG_2PI = float(np.log(2.0 * np.pi))
LOGIT_VARIANCE = float(np.pi ** 2 / 3.0)


@dataclass(frozen=True, slots=True)
class AuxParameter:
    """An auxiliary (non-regression) parameter of a family.

    Attributes
    ----------
    name : str
        Posterior variable name, prior label and prior class (``"sigma"``).
    meaning : str
        One line for tables and docs.
    support : str
        ``"positive"``: any positive prior distribution is allowed.
    """

    name: str
    meaning: str
    support: str = "positive"


# -- links (numpy) -----------------------------------------------------------------------------
#: link -> (inverse link: eta -> mu, link: mu -> eta)
_LINKS = {
    "identity": (lambda eta: eta, lambda mu: mu),
    "logit": (special.expit, special.logit),
    "probit": (special.ndtr, special.ndtri),
    "log": (np.exp, np.log),
}


def _link_pair(link: str):
    try:
        return _LINKS[link]
    except KeyError:
        raise SpecError(f"unknown link {link!r}; links are {list(_LINKS)}") from None


def inverse_link_function(link: str, eta):
    """``mu`` from ``eta`` for ``link`` (identity, logit, probit, log)."""
    return _link_pair(link)[0](np.asarray(eta, dtype=float))


def link_function(link: str, mu):
    """``eta`` from ``mu`` for ``link``."""
    return _link_pair(link)[1](np.asarray(mu, dtype=float))


def _log_p(link: str, eta):
    """``(log p, log(1 - p))`` of a binary/binomial model, stable for large |eta|."""
    if link == "logit":
        return -np.logaddexp(0.0, -eta), -np.logaddexp(0.0, eta)
    return special.log_ndtr(eta), special.log_ndtr(-eta)


#: Poisson rates are capped here when drawing (numpy's sampler fails above ~9e18): only prior
#: predictive draws from wide priors reach it, and a count of 1e15 is as absurd as a larger one.
MAX_RATE = 1e15


def _rate(eta):
    """``exp(eta)`` capped at :data:`MAX_RATE` (for drawing counts)."""
    return np.minimum(np.exp(np.minimum(np.asarray(eta, dtype=float), 700.0)), MAX_RATE)


def _is_whole(y) -> bool:
    return bool(np.all(np.isfinite(y)) and np.all(y == np.round(y)))


@dataclass(frozen=True, slots=True)
class Family:
    """A response distribution with its link; see the module docstring.

    Subclass per family and register an instance (with its default link) in :data:`FAMILIES`;
    :func:`get_family` returns it with another of its :attr:`links`.
    """

    name: str
    link: str
    aux: tuple[AuxParameter, ...]
    supports_collapsed: bool = False
    links: tuple[str, ...] = ("identity",)
    #: True: Intercept/slope/SD default priors are fixed link-scale scales (normal(0, 2.5),
    #: halfstudentt(3, 1)), not multiples of sd(y)
    link_scale_priors: bool = False
    #: True: the response is successes out of ``trials`` (binomial)
    needs_trials: bool = False
    #: the known-standard-error variant (``y | se(s) ~ ...``): methods take the per-row ``se=``
    known_se: bool = False

    @property
    def aux_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.aux)

    @property
    def latent_scale(self) -> str:
        """Which scale the ICC and ``var(Residual)`` are on, in words."""
        return "data scale (identity link)"

    def inverse_link(self, eta):
        return inverse_link_function(self.link, eta)

    def link_fn(self, mu):
        return link_function(self.link, mu)

    def mean(self, eta, trials=None):
        """Expected response ``E[y | eta]`` (binomial: ``trials * p``)."""
        return self.inverse_link(eta)

    def with_known_se(self, sigma: bool = False) -> "Family":
        """The variant with known per-row standard errors (``sigma``: also estimate a residual SD)."""
        raise SpecError(f"family {self.name!r} has no known-standard-error variant; se() in the "
                        "response needs family='gaussian'")

    def default_aux_prior(self, name: str, s_y: float) -> tuple[str, tuple[tuple[str, float], ...], str]:
        """``(distribution, params, source note)`` of the default prior of auxiliary ``name``."""
        raise SpecError(f"family {self.name!r} has no auxiliary parameter {name!r}")

    def log_likelihood(self, y, eta, aux: dict, trials=None):
        """Pointwise log-density of ``y`` given the linear predictor (numpy, broadcasting)."""
        raise NotImplementedError

    def observe(self, name: str, eta, aux: dict, observed, dims=None, trials=None):
        """Register the observed variable in the current PyMC model context."""
        raise NotImplementedError

    def draw(self, eta, aux: dict, rng: np.random.Generator, trials=None):
        """New observations given ``eta`` (numpy, broadcasting; same shape as ``eta``)."""
        raise NotImplementedError

    def latent_residual_variance(self, aux: dict, mean=None):
        """Residual variance on the latent (link) scale, per draw, for the ICC and R^2 (keeps the
        type of ``aux``'s and ``mean``'s values). ``mean`` is the per-draw mean count ``lambda``
        of an average observation, needed by the log-link families only."""
        raise NotImplementedError

    def encode_response(self, values, column: str) -> tuple[np.ndarray, str | None]:
        """The response as floats, and a note for the design (which level is 1, ...).

        ``values`` is the pandas Series of the kept rows. Non-numeric responses are a
        :class:`~bayeslmm.errors.DataError` except where the family reads them (bernoulli).
        """
        import pandas as pd
        if not (pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)):
            raise DataError(f"response {column!r} must be numeric; it has dtype {values.dtype}. "
                            "Convert it (e.g. pd.to_numeric) or choose a numeric column.")
        return values.to_numpy(dtype=float), None

    def check_response(self, y: np.ndarray, column: str, trials=None) -> None:
        """Raise :class:`~bayeslmm.errors.DataError` naming ``column`` if ``y`` is impossible."""


# -- identity-link families --------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Gaussian(Family):
    """``y ~ Normal(eta, sigma)``, identity link; with known standard errors (``se=``, per row)
    ``y ~ Normal(eta, sqrt(se^2 + sigma^2))``, sigma = 0 when the family has no ``sigma``."""

    @property
    def latent_scale(self):
        if self.known_se:
            return ("data scale (identity link); residual variance = the typical within-study "
                    "variance s_typ^2 (+ sigma^2), so the ICC is I^2")
        return "data scale (identity link)"

    def with_known_se(self, sigma: bool = False) -> "Gaussian":
        aux = (AuxParameter("sigma", "residual SD beyond the known standard errors"),) if sigma else ()
        # with sigma the residual covariance diag(se^2 + sigma^2) cannot be whitened: no collapsed path
        return replace(self, aux=aux, supports_collapsed=not sigma, known_se=True)

    def default_aux_prior(self, name, s_y):
        if name != "sigma" or name not in self.aux_names:
            raise SpecError(f"family {self.name!r} has no auxiliary parameter {name!r}")
        return "halfstudentt", (("nu", 3.0), ("sigma", float(s_y))), f"default: sd(y)={s_y:.4g}"

    def scale(self, aux, se=None):
        """The per-row SD of y given eta: sigma, or sqrt(se^2 + sigma^2) with known ``se``."""
        if se is None:
            return aux["sigma"]
        se = np.asarray(se, dtype=float)
        return np.sqrt(se ** 2 + aux["sigma"] ** 2) if "sigma" in aux else se

    def log_likelihood(self, y, eta, aux, trials=None, se=None):
        s = self.scale(aux, se)
        return -0.5 * LOG_2PI - np.log(s) - 0.5 * ((y - eta) / s) ** 2

    def observe(self, name, eta, aux, observed, dims=None, trials=None, se=None):
        import pymc as pm
        if se is None:
            sd = aux["sigma"]
        else:
            import pytensor.tensor as pt
            se = np.asarray(se, dtype=float)
            sd = pt.sqrt(se ** 2 + aux["sigma"] ** 2) if "sigma" in aux else se
        return pm.Normal(name, mu=eta, sigma=sd, observed=observed, dims=dims)

    def draw(self, eta, aux, rng, trials=None, se=None):
        eta = np.asarray(eta, dtype=float)
        return eta + np.asarray(self.scale(aux, se)) * rng.standard_normal(eta.shape)

    def latent_residual_variance(self, aux, mean=None, se=None):
        """sigma^2; with known ``se``, the typical within-study variance (:func:`typical_variance`)
        plus sigma^2 (when estimated). Without ``se`` and sigma: 0."""
        extra = aux["sigma"] ** 2 if "sigma" in aux else 0.0
        return extra if se is None else typical_variance(se) + extra


@dataclass(frozen=True, slots=True)
class StudentT(Family):
    """``y ~ StudentT(nu, eta, sigma)``, identity link; robust to outlying observations."""

    @property
    def latent_scale(self):
        return "data scale (identity link); residual variance = sigma^2, the squared t scale"

    def default_aux_prior(self, name, s_y):
        if name == "sigma":
            return "halfstudentt", (("nu", 3.0), ("sigma", float(s_y))), f"default: sd(y)={s_y:.4g}"
        if name == "nu":
            return "gamma", (("alpha", 2.0), ("beta", 0.1)), ("default: gamma(2, 0.1), mean 20 "
                                                             "(Juarez & Steel 2010)")
        raise SpecError(f"family {self.name!r} has no auxiliary parameter {name!r}")

    def log_likelihood(self, y, eta, aux, trials=None):
        s, nu = aux["sigma"], aux["nu"]
        z = (y - eta) / s
        return (special.gammaln((nu + 1) / 2) - special.gammaln(nu / 2) - 0.5 * np.log(nu * np.pi)
                - np.log(s) - (nu + 1) / 2 * np.log1p(z * z / nu))

    def observe(self, name, eta, aux, observed, dims=None, trials=None):
        import pymc as pm
        return pm.StudentT(name, nu=aux["nu"], mu=eta, sigma=aux["sigma"], observed=observed, dims=dims)

    def draw(self, eta, aux, rng, trials=None):
        eta = np.asarray(eta, dtype=float)
        nu = np.broadcast_to(np.asarray(aux["nu"], dtype=float), eta.shape)
        return eta + np.asarray(aux["sigma"]) * rng.standard_t(nu)

    def latent_residual_variance(self, aux, mean=None):
        return aux["sigma"] ** 2


# -- binary and binomial ------------------------------------------------------------------------
def _latent_binary(link: str) -> str:
    return ("latent scale (logit link, residual variance pi^2/3)" if link == "logit"
            else "latent scale (probit link, residual variance 1)")


def _binary_pymc_logp(link: str, y, eta, trials):
    """Binomial log-density (PyTensor) for a logit or probit link, stable for large |eta|."""
    import pytensor.tensor as pt
    if link == "logit":
        lp, lq = -pt.softplus(-eta), -pt.softplus(eta)
    else:
        from pymc.distributions.dist_math import normal_lcdf
        lp, lq = normal_lcdf(0.0, 1.0, eta), normal_lcdf(0.0, 1.0, -eta)
    out = y * lp + (trials - y) * lq
    if trials is not None and not isinstance(trials, (int, float)):
        out = out + (pt.gammaln(trials + 1) - pt.gammaln(y + 1) - pt.gammaln(trials - y + 1))
    return out


@dataclass(frozen=True, slots=True)
class Bernoulli(Family):
    """``y ~ Bernoulli(inverse_link(eta))``; y is 0/1, boolean, or a two-level categorical (the
    second level in sorted or categorical order is 1, as in R's glm)."""

    @property
    def latent_scale(self):
        return _latent_binary(self.link)

    def log_likelihood(self, y, eta, aux, trials=None):
        lp, lq = _log_p(self.link, np.asarray(eta, dtype=float))
        return np.where(np.asarray(y) > 0.5, lp, lq)

    def observe(self, name, eta, aux, observed, dims=None, trials=None):
        import pymc as pm
        if self.link == "logit":
            return pm.Bernoulli(name, logit_p=eta, observed=observed, dims=dims)
        return pm.CustomDist(name, eta, logp=lambda v, e: _binary_pymc_logp("probit", v, e, 1),
                             observed=observed, dims=dims)

    def draw(self, eta, aux, rng, trials=None):
        p = self.inverse_link(eta)
        return (rng.random(p.shape) < p).astype(float)

    def latent_residual_variance(self, aux, mean=None):
        return LOGIT_VARIANCE if self.link == "logit" else 1.0

    def encode_response(self, values, column):
        import pandas as pd
        if pd.api.types.is_bool_dtype(values):
            return values.to_numpy(dtype=float), f"{column}: boolean response, True = 1"
        if pd.api.types.is_numeric_dtype(values):
            return values.to_numpy(dtype=float), None
        if isinstance(values.dtype, pd.CategoricalDtype):
            levels = [lv for lv in values.cat.categories if (values == lv).any()]
        else:
            levels = sorted(values.unique(), key=str)
        if len(levels) != 2:
            raise DataError(f"response {column!r} of the bernoulli family must have two values; it has "
                            f"{len(levels)}: {list(map(str, levels[:10]))}. Recode it to 0/1, or use "
                            "family='binomial' for counts of successes.")
        y = (values == levels[1]).to_numpy(dtype=float)
        return y, (f"{column}: bernoulli response, {levels[1]!r} = 1 and {levels[0]!r} = 0 "
                   "(the second level in sorted or categorical order, as in R's glm)")

    def check_response(self, y, column, trials=None):
        vals = np.unique(y)
        if not np.all(np.isin(vals, (0.0, 1.0))):
            shown = ", ".join(f"{v:g}" for v in vals[:10])
            raise DataError(f"response {column!r} of the bernoulli family must be 0/1 (or boolean, or "
                            f"a two-level category); it has the values {shown}"
                            f"{' ...' if len(vals) > 10 else ''}. Use family='binomial' with trials "
                            "for counts of successes.")


@dataclass(frozen=True, slots=True)
class Binomial(Family):
    """``y ~ Binomial(trials, inverse_link(eta))``; ``cbind(successes, failures) ~ ...``,
    ``cbind(successes, n - successes) ~ ...`` or ``trials="n"``."""

    @property
    def latent_scale(self):
        return _latent_binary(self.link)

    def mean(self, eta, trials=None):
        return _need_trials(trials) * self.inverse_link(eta)

    def log_likelihood(self, y, eta, aux, trials=None):
        n = _need_trials(trials)
        lp, lq = _log_p(self.link, np.asarray(eta, dtype=float))
        lchoose = special.gammaln(n + 1) - special.gammaln(y + 1) - special.gammaln(n - y + 1)
        # y * log p with y = 0 and log p = -inf (never at finite eta) would give nan
        return lchoose + np.where(y > 0, y * lp, 0.0) + np.where(n - y > 0, (n - y) * lq, 0.0)

    def observe(self, name, eta, aux, observed, dims=None, trials=None):
        import pymc as pm
        if self.link == "logit":
            return pm.Binomial(name, n=trials, logit_p=eta, observed=observed, dims=dims)
        return pm.CustomDist(name, eta, trials, logp=lambda v, e, n: _binary_pymc_logp("probit", v, e, n),
                             observed=observed, dims=dims)

    def draw(self, eta, aux, rng, trials=None):
        p = self.inverse_link(eta)
        n = np.broadcast_to(_need_trials(trials), p.shape).astype(np.int64)
        return rng.binomial(n, p).astype(float)

    def latent_residual_variance(self, aux, mean=None):
        return LOGIT_VARIANCE if self.link == "logit" else 1.0

    def check_response(self, y, column, trials=None):
        n = _need_trials(trials)
        _check_counts(y, column, "successes")
        bad = np.flatnonzero(y > n)
        if bad.size:
            i = int(bad[0])
            raise DataError(f"response {column!r} has more successes than trials in {bad.size} row(s) "
                            f"(first: row {i}, {y[i]:g} successes of {n[i]:g} trials); check the "
                            "cbind(successes, failures) or trials= column.")


def _need_trials(trials):
    if trials is None:
        raise SpecError("the binomial family needs trials: write cbind(successes, failures) ~ ... or "
                        "pass trials='column'")
    return np.asarray(trials, dtype=float)


def _check_counts(y, column: str, what: str = "counts") -> None:
    bad = np.flatnonzero((y < 0) | (y != np.round(y)))
    if bad.size:
        i = int(bad[0])
        raise DataError(f"column {column!r} must hold non-negative whole numbers ({what}); {bad.size} "
                        f"row(s) do not (first: row {i}, value {y[i]:g}).")


# -- counts -------------------------------------------------------------------------------------
def _latent_log(extra: str = "") -> str:
    return (f"latent scale (log link, residual variance log(1 + 1/lambda{extra}), the log-normal "
            "approximation of Nakagawa et al. 2017)")


@dataclass(frozen=True, slots=True)
class Poisson(Family):
    """``y ~ Poisson(exp(eta))``; offsets such as ``offset(log(exposure))`` enter ``eta``."""

    @property
    def latent_scale(self):
        return _latent_log()

    def log_likelihood(self, y, eta, aux, trials=None):
        eta = np.asarray(eta, dtype=float)
        return y * eta - np.exp(eta) - special.gammaln(np.asarray(y, dtype=float) + 1)

    def observe(self, name, eta, aux, observed, dims=None, trials=None):
        import pymc as pm
        import pytensor.tensor as pt
        return pm.Poisson(name, mu=pt.exp(eta), observed=observed, dims=dims)

    def draw(self, eta, aux, rng, trials=None):
        return rng.poisson(_rate(eta)).astype(float)

    def latent_residual_variance(self, aux, mean=None):
        if mean is None:
            raise SpecError("the Poisson latent residual variance needs the mean count lambda")
        return np.log1p(1.0 / mean)

    def check_response(self, y, column, trials=None):
        _check_counts(y, column)


@dataclass(frozen=True, slots=True)
class NegBinomial(Family):
    """``y ~ NegBinomial(mu = exp(eta), phi)``, ``Var(y) = mu + mu^2 / phi`` (PyMC's ``alpha``)."""

    @property
    def latent_scale(self):
        return _latent_log(" + 1/phi")

    def default_aux_prior(self, name, s_y):
        if name != "phi":
            raise SpecError(f"family {self.name!r} has no auxiliary parameter {name!r}")
        return "gamma", (("alpha", 2.0), ("beta", 0.1)), ("default: gamma(2, 0.1) on the size phi "
                                                         "(Var = mu + mu^2/phi), mean 20")

    def log_likelihood(self, y, eta, aux, trials=None):
        phi = aux["phi"]
        eta = np.asarray(eta, dtype=float)
        y = np.asarray(y, dtype=float)
        log_phi_mu = np.logaddexp(np.log(phi), eta)                 # log(phi + mu)
        return (special.gammaln(y + phi) - special.gammaln(phi) - special.gammaln(y + 1)
                + phi * (np.log(phi) - log_phi_mu) + y * (eta - log_phi_mu))

    def observe(self, name, eta, aux, observed, dims=None, trials=None):
        import pymc as pm
        import pytensor.tensor as pt
        return pm.NegativeBinomial(name, mu=pt.exp(eta), alpha=aux["phi"], observed=observed, dims=dims)

    def draw(self, eta, aux, rng, trials=None):
        mu = _rate(eta)
        phi = np.broadcast_to(np.asarray(aux["phi"], dtype=float), mu.shape)
        return rng.poisson(np.minimum(rng.gamma(phi, mu / phi), MAX_RATE)).astype(float)  # gamma-Poisson

    def latent_residual_variance(self, aux, mean=None):
        if mean is None:
            raise SpecError("the negative binomial latent residual variance needs the mean count lambda")
        return np.log1p(1.0 / mean + 1.0 / aux["phi"])

    def check_response(self, y, column, trials=None):
        _check_counts(y, column)


GAUSSIAN = Gaussian("gaussian", "identity", (AuxParameter("sigma", "residual SD"),),
                    supports_collapsed=True)
STUDENT_T = StudentT("student_t", "identity", (AuxParameter("sigma", "residual scale"),
                                               AuxParameter("nu", "degrees of freedom")))
BERNOULLI = Bernoulli("bernoulli", "logit", (), links=("logit", "probit"), link_scale_priors=True)
BINOMIAL = Binomial("binomial", "logit", (), links=("logit", "probit"), link_scale_priors=True,
                    needs_trials=True)
POISSON = Poisson("poisson", "log", (), links=("log",), link_scale_priors=True)
NEGBINOMIAL = NegBinomial("negbinomial", "log", (AuxParameter("phi", "size (Var = mu + mu^2/phi)"),),
                          links=("log",), link_scale_priors=True)

#: Every family by name, with its default link.
FAMILIES: dict[str, Family] = {f.name: f for f in (GAUSSIAN, STUDENT_T, BERNOULLI, BINOMIAL, POISSON,
                                                   NEGBINOMIAL)}
#: Valid links per family (the first is the default).
LINKS: dict[str, tuple[str, ...]] = {k: f.links for k, f in FAMILIES.items()}


def typical_variance(se) -> float:
    """The typical within-study variance of Higgins & Thompson (2002), from standard errors s_i.

    s_typ^2 = (k - 1) sum w_i / ((sum w_i)^2 - sum w_i^2), w_i = 1 / s_i^2 (k = number of rows).
    With equal s_i it is s^2; I^2 = tau^2 / (tau^2 + s_typ^2) is the share of the total variance
    that lies between studies (Higgins & Thompson 2002, Statistics in Medicine 21:1539-1558, eq. 9).

    Examples
    --------
    >>> round(typical_variance([2.0, 2.0, 2.0]), 12)
    4.0
    """
    w = 1.0 / np.asarray(se, dtype=float) ** 2
    k = w.size
    if k < 2:
        raise SpecError("the typical within-study variance needs at least two standard errors")
    return float((k - 1) * w.sum() / (w.sum() ** 2 - (w ** 2).sum()))


def family_of(spec) -> Family:
    """The family of a :class:`~bayeslmm.spec.ModelSpec`: ``spec.family`` with ``spec.link``, or its
    known-standard-error variant when the formula's response has ``se()`` (``sigma`` estimated only
    with ``sigma = TRUE``; only the Gaussian family has that variant, the others raise
    :class:`~bayeslmm.errors.SpecError`).

    Examples
    --------
    >>> from bayeslmm.spec import build_spec
    >>> fam = family_of(build_spec("y | se(s) ~ 1 + (1 | study)"))
    >>> fam.known_se, fam.aux_names, fam.supports_collapsed
    (True, (), True)
    >>> family_of(build_spec("y | se(s, sigma = TRUE) ~ 1 + (1 | study)")).aux_names
    ('sigma',)
    >>> family_of(build_spec("y ~ x + (1 | g)", family="bernoulli", link="probit")).link
    'probit'
    """
    fam = get_family(spec.family, getattr(spec, "link", None))
    se = getattr(spec.formula, "se", None)
    return fam if se is None else fam.with_known_se(sigma=spec.formula.se_sigma)


def get_family(name: str, link: str | None = None) -> Family:
    """The :class:`Family` called ``name`` with ``link`` (default: the family's default link).

    Raises
    ------
    SpecError
        An unknown family, or a link the family does not have (the message lists the valid
        combinations).
    """
    try:
        fam = FAMILIES[name]
    except KeyError:
        raise SpecError(f"family {name!r} is not supported; use one of {tuple(FAMILIES)}") from None
    if link is None or link == fam.link:
        return fam
    if link not in fam.links:
        combos = "; ".join(f"{k}: {', '.join(v)}" for k, v in LINKS.items())
        raise SpecError(f"family {name!r} has no link {link!r}; valid family/link combinations are "
                        f"{combos}")
    return replace(fam, link=link)
