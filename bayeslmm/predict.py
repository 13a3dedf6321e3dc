"""Predictions for new (or the original) data, for known and new groups.

Pure numpy/xarray from the posterior draws (no PyMC, no recompilation).

Semantics of new group levels (fixed here, documented in the README, tested):

* A level of a grouping factor that was not in the fitted data gets, **for each posterior draw**, a
  fresh random effect drawn from N(0, Sigma_g) with that draw's SDs and correlations (brms's
  ``sample_new_levels = "gaussian"``). Every row of the same new level shares that draw.
* The draws come from ``numpy.random.default_rng(seed)``: the same ``seed`` gives the same
  predictions. ``seed=None`` uses the fit's own seed, so predictions are reproducible by default.
* With ``allow_new_levels=False`` (the default, as in lme4) a new level is an error that names the
  factor and the levels.
* ``include_random=False`` gives the population-level (marginal over groups, conditional on the
  group effects being 0) prediction ``X b``.
* ``kind="link"`` gives the linear predictor ``eta`` (offset included); ``kind="mean"`` the
  expected value ``mu = inverse_link(eta)`` (binomial: ``trials * p``); ``kind="response"`` draws a
  new observation from the family (gaussian: adds N(0, sigma) noise), a posterior predictive draw.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from .design import offset_and_trials, predictor_arrays
from .errors import DataError
from .families import family_of
from .posterior import cov_draws, r_var

__all__ = ["predict", "linear_predictor"]

KINDS = ("link", "mean", "response")


def linear_predictor(X: np.ndarray, b: np.ndarray, effects) -> np.ndarray:
    """``X b + sum_g Z_g . r_g[codes_g]`` for S draws at once: shape (S, n).

    ``b`` is (S, p); ``effects`` is an iterable of ``(Z (n, q), codes (n,), r (S, J, q))``.
    """
    mu = b @ X.T
    for Z, codes, r in effects:
        mu = mu + np.einsum("nq,snq->sn", Z, r[:, codes, :])
    return mu


def _sample_cov(fit, f):
    """Per-draw Cholesky factor of the group covariance of factor f: (S, q, q)."""
    return np.linalg.cholesky(cov_draws(fit.posterior, f) + 1e-300 * np.eye(f.q))


def predict(fit, data: pd.DataFrame | None = None, *, kind: str = "mean", include_random: bool = True,
            allow_new_levels: bool = False, seed: int | None = None, summary: bool = True,
            prob: float = 0.95):
    """Posterior predictions for the rows of ``data`` (default: the fitted data).

    Parameters
    ----------
    fit : Fit
    data : DataFrame, optional
        Needs every predictor and grouping column of the model (not the response).
    kind : {"link", "mean", "response"}
        The linear predictor (link scale, offset included), the expected response
        ``E[y] = inverse_link(eta)`` (binomial: ``trials * p``), or a new observation drawn from
        the family (gaussian: adds N(0, sigma) noise).
    include_random : bool
        Include group effects (conditional prediction) or not (``X b`` only).
    allow_new_levels : bool
        Unseen group levels get effects drawn from N(0, Sigma_g) per draw (see module docstring);
        if False they raise :class:`DataError`.
    seed : int, optional
        Seed for new-level effects and response noise; default the fit's seed.
    summary : bool
        Return a DataFrame (mean, sd, HDI per row) if True, else the draws as a DataArray with dims
        (chain, draw, obs).

    Examples
    --------
    >>> new = pd.DataFrame({"Days": [0, 9], "Subject": ["308", "new"]})
    >>> fit.predict(new, allow_new_levels=True)                    # doctest: +SKIP
    """
    if kind not in KINDS:
        raise DataError(f"the 'kind' parameter must be one of {KINDS}. Got {kind!r} instead.")
    design = fit.design
    X, parts = predictor_arrays(design, design.data_frame() if data is None else data)
    family = family_of(fit.spec)
    rng = np.random.default_rng(fit.info.get("seed", 0) if seed is None else seed)
    post = fit.posterior
    C, D = post.sizes["chain"], post.sizes["draw"]
    effects = []
    if include_random:
        for f, Z, codes, labels in parts:
            r = fit.draws(r_var(f.name))                                   # (S, J, q)
            new = codes < 0
            if new.any():
                new_levels = list(dict.fromkeys(labels[new]))
                if not allow_new_levels:
                    raise DataError(f"grouping factor {f.name!r} has level(s) not in the fitted data: "
                                    f"{new_levels[:10]}{' ...' if len(new_levels) > 10 else ''}. Pass "
                                    "allow_new_levels=True to draw their effects from the fitted "
                                    "group distribution.")
                L = _sample_cov(fit, f)
                z = rng.standard_normal((r.shape[0], len(new_levels), f.q))
                r_new = np.einsum("sij,skj->ski", L, z)
                r = np.concatenate([r, r_new], axis=1)
                extra = {lv: f.n_levels + k for k, lv in enumerate(new_levels)}
                codes = codes.copy()
                codes[new] = [extra[lv] for lv in labels[new]]
            effects.append((Z, codes, r))
    eta = linear_predictor(X, fit.draws("b"), effects)
    offset, trials = (design.offset, design.trials) if data is None else offset_and_trials(design, data)
    if offset is not None:
        eta = eta + offset
    if family.needs_trials and kind != "link" and trials is None:
        kind_what = "expected successes" if kind == "mean" else "new observations"
        raise DataError(f"binomial {kind_what} need the trials: new data needs the columns "
                        f"{[design.trials_source[1], design.response] if design.trials_source[0] == 'failures' else [design.trials_source[1]]}"
                        " (kind='link' needs neither; apply the inverse link for the probability)")
    if kind == "link":
        mu = eta
    elif kind == "mean":
        mu = family.mean(eta, trials)
    elif family.known_se:     # a new study's estimate: its own known s_i
        se = design.se if data is None else _new_standard_errors(design, fit.spec.formula.se, data)
        mu = family.draw(eta, {a: fit.draws(a)[:, None] for a in family.aux_names}, rng, se=se)
    else:
        mu = family.draw(eta, {a: fit.draws(a)[:, None] for a in family.aux_names}, rng, trials=trials)
    da = xr.DataArray(mu.reshape(C, D, -1), dims=("chain", "draw", "obs"),
                      coords={"chain": post["chain"].values, "draw": post["draw"].values})
    if not summary:
        return da
    import arviz_stats as az      # the statistics only: arviz would also import its plots (matplotlib)
    hdi = az.hdi(da, prob=prob)
    tab = pd.DataFrame({"mean": mu.mean(axis=0), "sd": mu.std(axis=0, ddof=1),
                        "hdi_lower": hdi.sel(ci_bound="lower").to_numpy(),
                        "hdi_upper": hdi.sel(ci_bound="upper").to_numpy()},
                       index=pd.RangeIndex(mu.shape[1], name="row") if data is None else data.index)
    tab.attrs["ci_prob"] = prob
    return tab


def _new_standard_errors(design, column: str, data: pd.DataFrame) -> np.ndarray:
    """The known standard errors of new rows (``se()`` column), checked as for fitting."""
    from .design import _check_standard_errors
    if column not in data.columns:
        raise DataError(f"kind='response' for a known-SE model draws each new row with its own standard "
                        f"error: the new data need the column {column!r} (or use kind='mean')")
    _check_standard_errors(data[column], column)
    return data[column].to_numpy(dtype=float)
