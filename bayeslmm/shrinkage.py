"""Shrinkage (partial pooling): how far each group's estimate is pulled toward the others.

Pure numpy/xarray. For grouping factor ``g``, group ``j`` and random-effect term ``t`` (e.g. a
county's intercept), three estimates on **one scale**, the group's own coefficient of ``t`` at its
own covariate values (for a random intercept: the group's predicted mean):

no pooling (``no_pooling``)
    *What the group's own rows say, ignoring every other group.* The group's own least-squares
    fit of ``y`` on its random-effect columns ``Z_j``: ``(Z_j'Z_j)^-1 Z_j' y_j``. For a random
    intercept this is the group's raw mean of ``y``; for ``(1 + x | g)`` its own regression line.
    NaN when the group's rows cannot determine it (one row and a random slope).
complete pooling (``complete_pooling``)
    *What the model predicts for the group if the group had no effect of its own.* The same
    projection of the rest of the model, ``(Z_j'Z_j)^-1 Z_j' (X_j b + sum_{k != g} Z_k r_k)`` at
    the posterior means: the fixed part at the group's own covariate values (a recipe-B replicate
    gets recipe B's mean, not recipe A's intercept), plus the effects of the other factors (a
    class is compared with its own school).
partial pooling (``partial_mean``, ``partial_lower``, ``partial_upper``)
    *The model's estimate, which borrows strength from the other groups.* The same projection
    of the group's fitted values, draw by draw: complete pooling's expression plus the group's
    effect ``r_g[j]``; posterior mean and HDI.
shrinkage (``shrinkage``, ``shrinkage_lower``, ``shrinkage_upper``): the primary measure
    *The fraction of the way from no pooling to complete pooling that the model moves the
    group: 0 = the group's own data decide (no pooling), 1 = its data say nothing and it gets the
    population value (complete pooling).* Exactly: the share of the population variance of the
    group's effect that is still uncertain after seeing its rows,
    ``Var(r_jt | y, theta) / Var(r_jt | theta) = [(I + S Z_j'Z_j / sigma^2)^-1 S]_tt / S_tt``,
    per posterior draw (``S`` the group covariance, ``sigma^2`` the family's residual variance),
    reported as posterior mean and HDI. Always in [0, 1]. For a random intercept it is
    ``sigma^2 / (sigma^2 + n_j sd^2) = 1 - n_j sd^2 / (n_j sd^2 + sigma^2)``, and then, given the
    parameters, ``partial = shrinkage * complete + (1 - shrinkage) * no_pooling`` exactly. Small
    groups and noisy data shrink more. Defined for the Gaussian family (its conditional of the
    group effects is Gaussian); NaN for other families.
empirical ratio (``shrinkage_empirical``, with ``full=True``)
    The same idea read off the three estimates: ``(no_pooling - partial_mean) / (no_pooling -
    complete_pooling)``. Not bounded (with random slopes a group's intercept and slope pull on
    each other) and unstable when no pooling is close to complete pooling: it is NaN and the
    group is flagged in ``near_complete`` when ``|no_pooling - complete_pooling|`` is below a
    tenth of the group-level SD ``sd(g, t)`` (posterior mean).
known standard errors (meta-analysis, ``y | se(s) ~ ...``)
    Rows are weighted by 1/s_i^2 (the whitened rows of :mod:`bayeslmm.stats`): no pooling is the
    group's own weighted least-squares fit (one study: its own estimate y_j), complete pooling the
    same weighted projection of the rest of the model, and the shrinkage is
    ``[(I + S Z_j' Omega_j^-1 Z_j)^-1 S]_tt / S_tt`` with ``Omega = diag(s_i^2 + sigma^2)``
    (sigma = 0 unless ``se(s, sigma = TRUE)``). For a random intercept and one row per study it is
    the weight of the pooled mean in the study's conditional mean,
    ``s_j^2 / (s_j^2 + tau^2) = 1 - tau^2 / (tau^2 + s_j^2)``.
non-Gaussian families
    Everything on the link scale: no pooling is the group's own maximum-likelihood fit given the
    rest of the model (:func:`glm_no_pooling`), added to complete pooling; groups with complete
    separation or all-zero counts are flagged in column ``flag`` and get a finite penalised
    estimate; ``shrinkage`` is NaN (the conditional of a group effect is not Gaussian).
pooling factor (:func:`pooling_factor`, one number per factor and term)
    Gelman & Pardoe (2006): ``lambda = 1 - Var_j(E[r_j]) / E[Var_j(r_j)]``, a summary of how
    much the factor as a whole pools; near 0 little pooling, near 1 nearly complete pooling.

:func:`shrinkage` shows the narrow view (``level``, ``n``, no pooling, partial pooling with its
interval, shrinkage); ``full=True`` shows every column (complete pooling, the effects ``r``, the
shrinkage interval, the empirical ratio and its flag). ``ShrinkageResult.table`` always holds
every column.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .errors import BayesLMMError
from .families import family_of
from .posterior import cov_draws, hdi, r_var, stack
from .stats import crossprod, group_crossprods

__all__ = ["ShrinkageResult", "shrinkage", "pooling_factor", "no_pooling_estimates",
           "model_shrinkage_draws"]


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
    design = fit.design
    f = design.factor(factor)
    post = fit.posterior
    b_hat = post["b"].mean(("chain", "draw")).to_numpy()
    e = design.y - design.X @ b_hat
    for k in design.factors:
        if k.name != f.name:
            r_hat = post[r_var(k.name)].mean(("chain", "draw")).to_numpy()     # (J_k, q_k)
            e = e - np.einsum("nq,nq->n", k.Z, r_hat[k.codes])
    if design.se is not None:     # known standard errors: weighted least squares, weights 1/s_i^2
        f = replace(f, Z=f.Z / design.se[:, None])
        e = e / design.se
    ZtZ, Zte = group_crossprods(f, e)
    out = np.full((f.n_levels, f.q), np.nan)
    for j in range(f.n_levels):
        M = ZtZ[j]
        if np.linalg.matrix_rank(M) == f.q:
            out[j] = np.linalg.solve(M, Zte[j])
    return out


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
    family = family_of(fit.spec)
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
    """Posterior draws of the primary shrinkage measure: shape (S, J, q) (Gaussian family).

    Per draw, ``[(I + S Z_j'Z_j / sigma^2)^-1 S]_tt / S_tt``: the conditional posterior variance
    of the group effect over its population variance (see the module docstring). In [0, 1]; for a
    random intercept ``sigma^2 / (sigma^2 + n_j sd^2)``.
    """
    family = family_of(fit.spec)
    if not (family.supports_collapsed or family.known_se):
        raise BayesLMMError(f"the shrinkage factor needs a Gaussian conditional of the group "
                            f"effects; family {family.name!r} has none.")
    f = fit.design.factor(factor)
    post = fit.posterior
    S = cov_draws(post, f)                                        # (S, q, q)
    if family.known_se:
        return _known_se_shrinkage(f, S, fit.design.se, stack(post["sigma"]) if "sigma" in post else None)
    sigma2 = family.latent_residual_variance({a: stack(post[a]) for a in family.aux_names})   # (S,)
    ZtZ, _ = group_crossprods(_whitened(fit.design).factor(factor))   # (J, q, q); Z'WZ with weights
    n_s, q = S.shape[0], f.q
    out = np.empty((n_s, f.n_levels, q))
    if q == 1:
        out[:, :, 0] = sigma2[:, None] / (sigma2[:, None] + S[:, 0, 0][:, None] * ZtZ[None, :, 0, 0])
        return out
    eye = np.eye(q)
    diagS = np.einsum("sii->si", S)
    for j0 in range(0, f.n_levels, chunk):
        sl = slice(j0, j0 + chunk)
        M = eye + np.einsum("sab,jbc->sjac", S, ZtZ[sl]) / sigma2[:, None, None, None]
        V = np.linalg.solve(M, np.broadcast_to(S[:, None], M.shape))        # (I + S M)^-1 S
        out[:, sl, :] = np.diagonal(V, axis1=-2, axis2=-1) / diagS[:, None, :]
    return np.clip(out, 0.0, 1.0)       # exact bounds; clip only rounding


def _known_se_shrinkage(f, S: np.ndarray, se: np.ndarray, sigma: np.ndarray | None) -> np.ndarray:
    """``[(I + S Z_j' Omega^-1 Z_j)^-1 S]_tt / S_tt`` per draw, Omega = diag(se^2 + sigma^2): (S, J, q)."""
    n_s, q = S.shape[0], f.q
    eye = np.eye(q)
    if sigma is None:                                 # weights known: one weighted Z'Z for all draws
        ZtZ, _ = group_crossprods(replace(f, Z=f.Z / se[:, None]))
        M = eye + np.einsum("sab,jbc->sjac", S, ZtZ)
    else:
        ind = sp.csr_matrix((np.ones(len(se)), (np.arange(len(se)), f.codes)), shape=(len(se), f.n_levels))
        w = 1.0 / (se[None, :] ** 2 + sigma[:, None] ** 2)                    # (S, n)
        ZtZ = np.empty((n_s, f.n_levels, q, q))
        for a in range(q):
            for b in range(a, q):
                ZtZ[:, :, a, b] = ZtZ[:, :, b, a] = np.asarray((w * (f.Z[:, a] * f.Z[:, b])) @ ind)
        M = eye + np.einsum("sab,sjbc->sjac", S, ZtZ)
    V = np.linalg.solve(M, np.broadcast_to(S[:, None], M.shape))            # (I + S Z'W Z)^-1 S
    out = np.diagonal(V, axis1=-2, axis2=-1) / np.einsum("sii->si", S)[:, None, :]
    return np.clip(out, 0.0, 1.0)       # exact bounds; clip only rounding


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


NARROW = ["group", "level", "term", "n", "no_pooling", "partial_mean", "partial_lower",
          "partial_upper", "shrinkage"]


@dataclass
class ShrinkageResult:
    """Shrinkage of every group's estimate (columns defined in :mod:`bayeslmm.shrinkage`).

    Attributes
    ----------
    table : DataFrame
        Every column, one row per (group factor, level, term): ``group``, ``level``, ``term``,
        ``n``, ``no_pooling``, ``complete_pooling``, ``partial_mean``, ``partial_lower``,
        ``partial_upper``, ``shrinkage`` (primary, posterior mean) with ``shrinkage_lower`` /
        ``shrinkage_upper``, ``effect_mean`` / ``effect_lower`` / ``effect_upper`` (the deviation
        ``r``), ``shrinkage_empirical`` and ``near_complete``.
    pooling : DataFrame
        :func:`pooling_factor` per factor and term.
    prob : float
    full : bool
        Whether the printed view shows every column (else the narrow view, :data:`NARROW`).
    """

    table: pd.DataFrame
    pooling: pd.DataFrame
    prob: float = 0.95
    full: bool = False

    def __post_init__(self):
        from .tables import as_table         # shown rounded in notebooks, whole when printed
        self.table, self.pooling = as_table(self.table), as_table(self.pooling)

    @property
    def view(self) -> pd.DataFrame:
        """The displayed table: every column with ``full``, else the narrow view."""
        from .tables import as_table
        return as_table(self.table if self.full else self.table[[c for c in NARROW if c in self.table]])

    def __repr__(self) -> str:
        from .tables import to_text
        return (f"Shrinkage ({self.prob:.0%} HDI): 0 = no pooling (the group's own rows decide), "
                f"1 = complete pooling\n{to_text(self.view)}\nPooling factors (per factor)\n"
                f"{to_text(self.pooling)}")

    def _repr_html_(self) -> str:
        from .tables import to_html
        return (f"<p>Shrinkage ({self.prob:.0%} HDI): 0 = no pooling (the group's own rows decide), "
                f"1 = complete pooling</p>{to_html(self.view)}")


def _projection(design, f, ok):
    """Per group of ``f`` the least-squares projection onto its own columns: ``(Z_j'Z_j)^-1 Z_j'``
    applied to X (J, q, p); unidentified groups (``~ok``) get NaN."""
    ZtZ, _ = group_crossprods(f)
    ZtX = crossprod(f.codes, f.n_levels, f.Z, design.X)                # (J, q, p)
    out = np.full(ZtX.shape, np.nan)
    out[ok] = np.linalg.solve(ZtZ[ok], ZtX[ok])
    return out, ZtZ


def _whitened(design):
    """Known standard errors: the design with every row divided by s_i (y, X and each Z), so that
    least squares on it is weighted least squares with weights 1/s_i^2; likelihood weights
    (``weights=``) multiply row i by sqrt(w_i) likewise; else ``design`` itself."""
    lw = getattr(design, "weights", None)
    if design.se is None and lw is None:
        return design
    w = np.ones(design.n) if design.se is None else 1.0 / design.se
    if lw is not None:
        w = w * np.sqrt(lw)
    return replace(design, y=design.y * w, X=design.X * w[:, None],
                   factors=tuple(replace(k, Z=k.Z * w[:, None]) for k in design.factors))


def _projected_other_effects(fit, f, ZtZ, ok, chunk_elems: int = 20_000_000, design=None) -> np.ndarray:
    """``(Z_j'Z_j)^-1 Z_j' sum_{k != g} Z_k r_k`` per draw: (S, J, q) (``design``: the whitened
    design for known standard errors, default ``fit.design``)."""
    design = fit.design if design is None else design
    others = [k for k in design.factors if k.name != f.name]
    S = fit.n_draws
    out = np.zeros((S, f.n_levels, f.q))
    if not others:
        return out
    rs = [fit.draws(r_var(k.name)) for k in others]
    step = max(1, chunk_elems // max(design.n, 1))
    for s0 in range(0, S, step):
        sl = slice(s0, s0 + step)
        e = sum(np.einsum("nq,snq->ns", k.Z, r[sl][:, k.codes, :]) for k, r in zip(others, rs))  # (n, s)
        Zte = crossprod(f.codes, f.n_levels, f.Z, e)                      # (J, q, s)
        sol = np.full(Zte.shape, np.nan)
        sol[ok] = np.linalg.solve(ZtZ[ok], Zte[ok])
        out[sl] = sol.transpose(2, 0, 1)
    return out


def shrinkage(fit, *, factor: str | None = None, prob: float = 0.95, full: bool = False,
              near: float = 0.1) -> ShrinkageResult:
    """No pooling, complete pooling and partial pooling of every group, and its shrinkage.

    Every column is defined, with a sentence, in the module docstring (:mod:`bayeslmm.shrinkage`):
    ``no_pooling`` the group's own fit on its own rows (a random intercept: its mean of y),
    ``complete_pooling`` the model's prediction for it without its own effect, ``partial_mean``
    the model's estimate (with its HDI), all three on the same scale; ``shrinkage`` in [0, 1] is
    how far the model moves the group from no pooling to complete pooling (0 = none, 1 = all
    the way), ``sigma^2 / (sigma^2 + n_j sd^2)`` for a random intercept.

    Parameters
    ----------
    fit : Fit
    factor : str, optional
        One grouping factor (default: all).
    prob : float
        HDI probability of the partial-pooling and shrinkage intervals.
    full : bool
        Print every column; by default the narrow view (level, n, no pooling, partial pooling
        with its interval, shrinkage). ``result.table`` holds every column either way.
    near : float
        The empirical ratio is NaN (and ``near_complete`` True) where ``|no_pooling -
        complete_pooling| < near * sd(g, t)``.

    Returns
    -------
    ShrinkageResult

    Examples
    --------
    >>> import bayeslmm as blmm
    >>> fit = blmm.Model("log_radon ~ floor_measure + (1 | county_idx)",
    ...                  blmm.load_dataset("radon_mn")).fit(chains=2, draws=300, seed=1,
    ...                                                     progressbar=False)  # doctest: +SKIP
    >>> fit.shrinkage()                            # narrow view                  # doctest: +SKIP
    >>> fit.shrinkage(full=True).table             # every column                 # doctest: +SKIP
    """
    if not 0 < prob < 1:
        raise BayesLMMError(f"the 'prob' parameter of shrinkage must be in (0, 1). Got {prob!r} instead.")
    design = fit.design
    b = fit.draws("b")                                             # (S, p)
    fam = family_of(fit.spec)
    gaussian = fam.supports_collapsed or fam.known_se
    frames = []
    wd = _whitened(design)        # known standard errors: projections weighted by 1/s_i^2
    for f in _factor(design, factor):
        r = fit.draws(r_var(f.name))                               # (S, J, q)
        fw = wd.factor(f.name)
        ZtZ, Zty = group_crossprods(fw, wd.y)
        ok = np.linalg.matrix_rank(ZtZ) == f.q                     # (J,) identified on own rows
        nopool = np.full((f.n_levels, f.q), np.nan)
        nopool[ok] = np.linalg.solve(ZtZ[ok], Zty[ok][..., None])[..., 0]
        flags = None
        PX, _ = _projection(wd, fw, ok)                            # (J, q, p)
        base = (np.einsum("jqp,sp->sjq", PX, b)
                + _projected_other_effects(fit, fw, ZtZ, ok, design=wd))                    # (S, J, q)
        # groups that cannot fit their own coefficients: partial pooling on the coefficient scale
        for k, t in enumerate(f.terms):
            base[:, ~ok, k] = b[:, [design.fixed_terms.index(t)]] if t in design.fixed_terms else 0.0
        complete = base.mean(axis=0)
        complete[~ok] = np.nan
        if not gaussian:       # link scale: the group's own ML fit given the rest of the model
            u_np, flags = glm_no_pooling(fit, f.name)
            nopool = complete + u_np
        coef = base + r
        W = model_shrinkage_draws(fit, f.name) if gaussian else None
        sd_mean = fit.draws(f"sd_{f.name}").mean(axis=0)
        for k, t in enumerate(f.terms):
            hd = np.array([hdi(coef[:, j, k], prob) for j in range(f.n_levels)])
            he = np.array([hdi(r[:, j, k], prob) for j in range(f.n_levels)])
            partial = coef[:, :, k].mean(axis=0)
            gap = nopool[:, k] - complete[:, k]
            flag = np.abs(gap) < near * sd_mean[k]
            with np.errstate(divide="ignore", invalid="ignore"):
                emp = np.where(flag | ~ok, np.nan, (nopool[:, k] - partial) / gap)
            if W is not None:
                wk = W[:, :, k]
                hw = np.array([hdi(wk[:, j], prob) for j in range(f.n_levels)])
                w_mean, w_lo, w_hi = wk.mean(axis=0), hw[:, 0], hw[:, 1]
            else:
                w_mean = w_lo = w_hi = np.full(f.n_levels, np.nan)
            frames.append(pd.DataFrame({
                "group": f.name, "level": list(f.levels), "term": t, "n": f.group_sizes,
                "no_pooling": nopool[:, k], "complete_pooling": complete[:, k], "partial_mean": partial,
                "partial_lower": hd[:, 0], "partial_upper": hd[:, 1],
                "shrinkage": w_mean, "shrinkage_lower": w_lo, "shrinkage_upper": w_hi,
                "effect_mean": r[:, :, k].mean(axis=0), "effect_lower": he[:, 0], "effect_upper": he[:, 1],
                "shrinkage_empirical": emp, "near_complete": flag & ok,
                **({} if flags is None else {"flag": flags, "scale": f"link ({fit.spec.link})"})}))
    table = pd.concat(frames, ignore_index=True)
    table.attrs["ci_prob"] = prob
    return ShrinkageResult(table=table, pooling=pooling_factor(fit, factor), prob=prob, full=full)
