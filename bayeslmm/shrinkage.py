"""Shrinkage (partial pooling) diagnostics.

Pure numpy/xarray. For each grouping factor ``g``, group ``j`` and random-effect term ``t``:

no-pooling estimate
    The group's own least-squares fit of its random-effect coefficients: the partial residual
    ``e = y - X b_hat - sum_{k != g} Z_k r_hat_k`` (everything else in the model at its posterior
    mean) regressed on the group's own columns ``Z_j``: ``u_np = (Z_j'Z_j)^-1 Z_j' e_j``, reported
    on the coefficient scale ``b_hat[t] + u_np[t]``. NaN when the group cannot identify its
    coefficients on its own (e.g. one observation and a random slope).
complete-pooling estimate
    The fixed part ``b_hat[t]`` (0 for a term with no fixed counterpart).
partial-pooling posterior
    ``b[t] + r_g[j, t]`` draw by draw (mean and HDI).
shrinkage factor (empirical)
    How far the estimate moved from no pooling toward complete pooling:
    ``1 - (partial_mean - complete) / (no_pooling - complete)``. 0 = no pooling, 1 = complete.
    Unstable when the no-pooling estimate is close to the complete-pooling one.
shrinkage factor (model)
    Gaussian family: the posterior of the diagonal of ``W_j = (I + S Z_j'Z_j / sigma^2)^-1``, the
    matrix that maps the no-pooling estimate to the conditional posterior mean
    (``E[u_j | rest] = (I - W_j) u_np``). For a random intercept this is
    ``sigma^2 / (sigma^2 + n_j sd^2) = 1 - n_j sd^2 / (n_j sd^2 + sigma^2)``.
non-Gaussian families
    Everything on the link scale: the no-pooling estimate is the group's own maximum-likelihood
    fit (:func:`glm_no_pooling`); groups with complete separation or all-zero counts are flagged in
    column ``flag`` and get a finite penalised estimate; no model shrinkage factor.
pooling factor (Gelman & Pardoe 2006)
    Per factor and term: ``lambda = 1 - Var_j(E[r_j]) / E[Var_j(r_j)]``; near 0 little pooling,
    near 1 nearly complete pooling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import BayesLMMError
from .families import get_family
from .posterior import cov_draws, hdi, r_var, stack
from .stats import group_crossprods

__all__ = ["ShrinkageResult", "shrinkage", "pooling_factor", "no_pooling_estimates",
           "glm_no_pooling", "model_shrinkage_draws"]


def _factor(design, factor):
    if not design.factors:
        raise BayesLMMError("the model has no grouping factor, so nothing is shrunk; add a random "
                            "term such as '(1 | group)' to the formula.")
    if factor is None:
        return list(design.factors)
    names = [f.name for f in design.factors]
    if factor not in names:
        raise BayesLMMError(f"no grouping factor {factor!r}; the factors are {names}.")
    return [design.factor(factor)]


def no_pooling_estimates(fit, factor: str) -> np.ndarray:
    """No-pooling deviations ``u_np`` of every group of ``factor``: shape (J, q), NaN where unidentified.

    Examples
    --------
    >>> fit = blmm.Model("Yield ~ 1 + (1 | Batch)", blmm.load_dataset("Dyestuff")).fit(
    ...     chains=2, draws=300, seed=1, progressbar=False)               # doctest: +SKIP
    >>> no_pooling_estimates(fit, "Batch")[:, 0]    # batch means minus the intercept  # doctest: +SKIP
    """
    if not get_family(fit.spec.family, fit.spec.link).supports_collapsed:
        return glm_no_pooling(fit, factor)[0]
    design = fit.design
    f = design.factor(factor)
    post = fit.posterior
    b_hat = post["b"].mean(("chain", "draw")).to_numpy()
    e = design.y - design.X @ b_hat
    for k in design.factors:
        if k.name != f.name:
            r_hat = post[r_var(k.name)].mean(("chain", "draw")).to_numpy()     # (J_k, q_k)
            e = e - np.einsum("nq,nq->n", k.Z, r_hat[k.codes])
    ZtZ, Zte = group_crossprods(f, e)
    out = np.full((f.n_levels, f.q), np.nan)
    for j in range(f.n_levels):
        M = ZtZ[j]
        if np.linalg.matrix_rank(M) == f.q:
            out[j] = np.linalg.solve(M, Zte[j])
    return out


#: link-scale bound beyond which a per-group estimate counts as diverging (separation), and the SD
#: of the normal penalty that keeps a flagged group's estimate finite
SEPARATION_BOUND = 10.0
FLAG_PENALTY_SD = 2.5


def glm_no_pooling(fit, factor: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-group maximum-likelihood deviations on the link scale (non-Gaussian families).

    Each group's own fit of its random-effect coefficients ``u`` with everything else at the
    posterior mean as an offset: ``eta_i = X_i b_hat + sum_{k != g} Z_ki r_hat_k + offset_i +
    Z_ji u``, the family's log-likelihood maximised over ``u`` (auxiliary parameters at their
    posterior means). A group whose maximum is at infinity (complete separation: all successes or
    all failures; all-zero counts) or beyond ``SEPARATION_BOUND`` on the link scale is flagged and
    gets the maximum of the likelihood times a N(0, 2.5^2) penalty on ``u`` instead: finite, never
    inf. A group that cannot identify its coefficients (rank-deficient ``Z_j``) gets NaN.

    Returns
    -------
    u : ndarray (J, q)
    flags : ndarray (J,) of str
        ``""``, ``"separation"``, ``"all-zero counts"``, ``"not converged"`` or ``"unidentified"``.
    """
    from scipy.optimize import minimize
    design = fit.design
    family = get_family(fit.spec.family, fit.spec.link)
    f = design.factor(factor)
    post = fit.posterior
    b_hat = post["b"].mean(("chain", "draw")).to_numpy()
    base = design.X @ b_hat + (0.0 if design.offset is None else design.offset)
    for k in design.factors:
        if k.name != f.name:
            r_hat = post[r_var(k.name)].mean(("chain", "draw")).to_numpy()
            base = base + np.einsum("nq,nq->n", k.Z, r_hat[k.codes])
    aux = {a: float(post[a].mean()) for a in family.aux_names}
    y, trials = design.y, design.trials
    out = np.full((f.n_levels, f.q), np.nan)
    flags = np.full(f.n_levels, "", dtype=object)
    order = np.argsort(f.codes, kind="stable")
    bounds = np.searchsorted(f.codes[order], np.arange(f.n_levels + 1))
    for j in range(f.n_levels):
        idx = order[bounds[j]:bounds[j + 1]]
        Z, yj, o = f.Z[idx], y[idx], base[idx]
        nj = None if trials is None else trials[idx]
        if np.linalg.matrix_rank(Z) < f.q:
            flags[j] = "unidentified"
            continue

        def nll(u, pen=0.0):
            v = -np.sum(family.log_likelihood(yj, o + Z @ u, aux, trials=nj)) + pen * 0.5 * u @ u
            return v if np.isfinite(v) else 1e300

        res = minimize(nll, np.zeros(f.q), method="BFGS")
        degenerate = ""
        if family.link in ("logit", "probit"):
            top = 1.0 if nj is None else nj
            if np.all(yj == 0) or np.all(yj == top):
                degenerate = "separation"
        elif family.link == "log" and np.all(yj == 0):
            degenerate = "all-zero counts"
        if degenerate or not res.success or np.max(np.abs(res.x)) > SEPARATION_BOUND:
            flags[j] = degenerate or ("separation" if np.max(np.abs(res.x)) > SEPARATION_BOUND
                                      else "not converged")
            if flags[j] == "not converged" and np.all(np.isfinite(res.x)):
                out[j] = res.x
                continue
            res = minimize(nll, np.zeros(f.q), args=(1.0 / FLAG_PENALTY_SD ** 2,), method="BFGS")
        out[j] = res.x
    return out, flags


def model_shrinkage_draws(fit, factor: str, chunk: int = 256) -> np.ndarray:
    """Posterior draws of the model shrinkage factors diag(W_j): shape (S, J, q) (Gaussian family).

    ``W_j = (I + S Z_j'Z_j / sigma^2)^-1`` per draw; for a random intercept
    ``sigma^2 / (sigma^2 + n_j sd^2)``.
    """
    family = get_family(fit.spec.family, fit.spec.link)
    if not family.supports_collapsed:
        raise BayesLMMError(f"the model-based shrinkage factor needs a Gaussian conditional of the group "
                            f"effects; family {family.name!r} has none.")
    f = fit.design.factor(factor)
    post = fit.posterior
    S = cov_draws(post, f)                                        # (S, q, q)
    sigma2 = family.latent_residual_variance({a: stack(post[a]) for a in family.aux_names})   # (S,)
    ZtZ, _ = group_crossprods(f)                                  # (J, q, q)
    n_s, q = S.shape[0], f.q
    out = np.empty((n_s, f.n_levels, q))
    if q == 1:
        out[:, :, 0] = sigma2[:, None] / (sigma2[:, None] + S[:, 0, 0][:, None] * ZtZ[None, :, 0, 0])
        return out
    eye = np.eye(q)
    for j0 in range(0, f.n_levels, chunk):
        sl = slice(j0, j0 + chunk)
        M = eye + np.einsum("sab,jbc->sjac", S, ZtZ[sl]) / sigma2[:, None, None, None]
        out[:, sl, :] = np.diagonal(np.linalg.inv(M), axis1=-2, axis2=-1)
    return out


def pooling_factor(fit, factor: str | None = None) -> pd.DataFrame:
    """Gelman-Pardoe pooling factor per grouping factor and term.

    ``lambda = 1 - Var_j(E[r_j]) / E[Var_j(r_j)]`` where ``Var_j`` is the variance across the
    groups and ``E`` the posterior mean (Gelman & Pardoe 2006, Technometrics 48:241-251).

    Returns
    -------
    DataFrame
        Columns ``group``, ``term``, ``n_groups``, ``pooling_factor``, ``var_of_means``,
        ``mean_of_var``.

    Examples
    --------
    >>> fit.pooling_factor()                                            # doctest: +SKIP
    """
    rows = []
    for f in _factor(fit.design, factor):
        r = fit.draws(r_var(f.name))                               # (S, J, q)
        for k, t in enumerate(f.terms):
            rk = r[:, :, k]
            var_of_means = float(np.var(rk.mean(axis=0), ddof=1))
            mean_of_var = float(np.mean(np.var(rk, axis=1, ddof=1)))
            rows.append({"group": f.name, "term": t, "n_groups": f.n_levels,
                         "pooling_factor": 1.0 - var_of_means / mean_of_var,
                         "var_of_means": var_of_means, "mean_of_var": mean_of_var})
    return pd.DataFrame(rows)


@dataclass
class ShrinkageResult:
    """Shrinkage of every group's estimate.

    Attributes
    ----------
    table : DataFrame
        One row per (group factor, level, term): ``group``, ``level``, ``term``, ``n``,
        ``no_pooling``, ``complete_pooling``, ``partial_mean``, ``partial_lower``,
        ``partial_upper``, ``effect_mean``, ``effect_lower``, ``effect_upper`` (the deviation
        ``r``), ``shrinkage`` (empirical) and, Gaussian family, ``shrinkage_model`` with
        ``shrinkage_model_lower`` / ``shrinkage_model_upper``.
    pooling : DataFrame
        :func:`pooling_factor` per factor and term.
    prob : float
    """

    table: pd.DataFrame
    pooling: pd.DataFrame
    prob: float = 0.95

    def __repr__(self) -> str:
        return (f"Shrinkage ({self.prob:.0%} HDI), {len(self.table)} group effects\n"
                f"{self.table.head(20).to_string()}\n...\nPooling factors\n{self.pooling.to_string()}")

    def _repr_html_(self) -> str:
        return self.table._repr_html_()


def shrinkage(fit, *, factor: str | None = None, prob: float = 0.95) -> ShrinkageResult:
    """No-pooling, complete-pooling and partial-pooling estimates of every group, and shrinkage.

    Parameters
    ----------
    fit : Fit
    factor : str, optional
        One grouping factor (default: all).
    prob : float
        HDI probability of the partial-pooling and model shrinkage intervals.

    Returns
    -------
    ShrinkageResult

    Examples
    --------
    >>> import bayeslmm as blmm
    >>> fit = blmm.Model("log_radon ~ floor_measure + (1 | county_idx)",
    ...                  blmm.load_dataset("radon_mn")).fit(chains=2, draws=300, seed=1,
    ...                                                     progressbar=False)  # doctest: +SKIP
    >>> s = fit.shrinkage()                                                      # doctest: +SKIP
    >>> s.table[["level", "n", "no_pooling", "partial_mean", "shrinkage"]]        # doctest: +SKIP
    """
    if not 0 < prob < 1:
        raise BayesLMMError(f"the 'prob' parameter of shrinkage must be in (0, 1). Got {prob!r} instead.")
    design = fit.design
    b = fit.draws("b")                                             # (S, p)
    b_hat = b.mean(axis=0)
    gaussian = get_family(fit.spec.family, fit.spec.link).supports_collapsed
    frames = []
    for f in _factor(design, factor):
        r = fit.draws(r_var(f.name))                               # (S, J, q)
        flags = None
        if gaussian:
            u_np = no_pooling_estimates(fit, f.name)
        else:
            u_np, flags = glm_no_pooling(fit, f.name)
        W = model_shrinkage_draws(fit, f.name) if gaussian else None
        sizes = f.group_sizes
        for k, t in enumerate(f.terms):
            if t in design.fixed_terms:
                i = design.fixed_terms.index(t)
                coef = b[:, i][:, None] + r[:, :, k]
                complete = float(b_hat[i])
            else:
                coef = r[:, :, k]
                complete = 0.0
            hd = np.array([hdi(coef[:, j], prob) for j in range(f.n_levels)])
            he = np.array([hdi(r[:, j, k], prob) for j in range(f.n_levels)])
            partial = coef.mean(axis=0)
            nopool = complete + u_np[:, k]
            with np.errstate(divide="ignore", invalid="ignore"):
                emp = 1.0 - (partial - complete) / (nopool - complete)
            d = {"group": f.name, "level": list(f.levels), "term": t, "n": sizes,
                 "no_pooling": nopool, "complete_pooling": complete, "partial_mean": partial,
                 "partial_lower": hd[:, 0], "partial_upper": hd[:, 1],
                 "effect_mean": r[:, :, k].mean(axis=0), "effect_lower": he[:, 0],
                 "effect_upper": he[:, 1], "shrinkage": emp}
            if flags is not None:
                d["flag"] = flags
                d["scale"] = f"link ({fit.spec.link})"
            if W is not None:
                hw = np.array([hdi(W[:, j, k], prob) for j in range(f.n_levels)])
                d.update({"shrinkage_model": W[:, :, k].mean(axis=0),
                          "shrinkage_model_lower": hw[:, 0], "shrinkage_model_upper": hw[:, 1]})
            frames.append(pd.DataFrame(d))
    table = pd.concat(frames, ignore_index=True)
    table.attrs["ci_prob"] = prob
    return ShrinkageResult(table=table, pooling=pooling_factor(fit, factor), prob=prob)
