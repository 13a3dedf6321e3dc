"""Response families: the one place that knows what a family is.

A :class:`Family` holds everything the rest of the package asks about the distribution of the
response given the linear predictor ``eta``:

* the link and its inverse (``mu = inverse_link(eta)``);
* its auxiliary parameters (``sigma`` for the Gaussian), each with the rule for its default
  prior, scaled to the data (:meth:`Family.default_aux_prior`);
* the log-likelihood, in numpy (:meth:`Family.log_likelihood`) and as a PyMC observed variable
  (:meth:`Family.observe`, PyMC imported inside, so this module stays light);
* random draws of new observations (:meth:`Family.draw`);
* the latent-scale residual variance used by the ICC (:meth:`Family.latent_residual_variance`);
* whether the exact collapsed sampling path applies (:attr:`Family.supports_collapsed`).

Only ``gaussian`` exists so far. A new family is one more entry in :data:`FAMILIES` (plus its
tests): nothing else in the package spells out a likelihood.

Examples
--------
>>> fam = get_family("gaussian")
>>> fam.aux_names, fam.supports_collapsed
(('sigma',), True)
>>> float(fam.log_likelihood(0.0, 0.0, {"sigma": 1.0}))          # log N(0 | 0, 1)
-0.9189385332046727
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import SpecError

__all__ = ["AuxParameter", "Family", "GAUSSIAN", "FAMILIES", "get_family"]

LOG_2PI = float(np.log(2.0 * np.pi))


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


@dataclass(frozen=True, slots=True)
class Family:
    """A response distribution with its link; see the module docstring.

    Subclass per family and register an instance in :data:`FAMILIES`.
    """

    name: str
    link: str
    aux: tuple[AuxParameter, ...]
    supports_collapsed: bool = False

    @property
    def aux_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.aux)

    def inverse_link(self, eta):
        raise NotImplementedError

    def default_aux_prior(self, name: str, s_y: float) -> tuple[str, tuple[tuple[str, float], ...], str]:
        """``(distribution, params, source note)`` of the default prior of auxiliary ``name``."""
        raise NotImplementedError

    def log_likelihood(self, y, eta, aux: dict):
        """Pointwise log-density of ``y`` given the linear predictor (numpy, broadcasting)."""
        raise NotImplementedError

    def observe(self, name: str, eta, aux: dict, observed, dims=None):
        """Register the observed variable in the current PyMC model context."""
        raise NotImplementedError

    def draw(self, eta, aux: dict, rng: np.random.Generator):
        """New observations given ``eta`` (numpy, broadcasting; same shape as ``eta``)."""
        raise NotImplementedError

    def latent_residual_variance(self, aux: dict):
        """Residual variance on the latent (link) scale, per draw, for the ICC and R^2 (keeps the
        type of ``aux``'s values: numpy arrays or xarray DataArrays)."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Gaussian(Family):
    """``y ~ Normal(eta, sigma)``, identity link."""

    def inverse_link(self, eta):
        return eta

    def default_aux_prior(self, name, s_y):
        if name != "sigma":
            raise SpecError(f"family {self.name!r} has no auxiliary parameter {name!r}")
        return "halfstudentt", (("nu", 3.0), ("sigma", float(s_y))), f"default: sd(y)={s_y:.4g}"

    def log_likelihood(self, y, eta, aux):
        s = aux["sigma"]
        return -0.5 * LOG_2PI - np.log(s) - 0.5 * ((y - eta) / s) ** 2

    def observe(self, name, eta, aux, observed, dims=None):
        import pymc as pm
        return pm.Normal(name, mu=eta, sigma=aux["sigma"], observed=observed, dims=dims)

    def draw(self, eta, aux, rng):
        eta = np.asarray(eta, dtype=float)
        return eta + np.asarray(aux["sigma"]) * rng.standard_normal(eta.shape)

    def latent_residual_variance(self, aux):
        return aux["sigma"] ** 2


GAUSSIAN = Gaussian("gaussian", "identity", (AuxParameter("sigma", "residual SD"),),
                    supports_collapsed=True)

#: Every family by name.
FAMILIES: dict[str, Family] = {f.name: f for f in (GAUSSIAN,)}


def get_family(name: str) -> Family:
    """The :class:`Family` called ``name``; :class:`~bayeslmm.errors.SpecError` if there is none."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise SpecError(f"family {name!r} is not supported; use one of {tuple(FAMILIES)}") from None
