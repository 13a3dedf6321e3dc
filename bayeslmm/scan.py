"""Association scan with a linear mixed model (GWAS-style): one marker at a time as a fixed effect.

For each marker g (a column of G) the model is y = X b + g beta + Z u + e with u ~ N(0, sd_g^2 K),
e ~ N(0, sigma^2 I), and the variance components fixed at values learnt once from the null model
(EMMAX, Kang et al. 2010; FaST-LMM, Lippert et al. 2011). With h^2 = sd_g^2 / (sd_g^2 + sigma^2)
fixed, the covariance is known up to a scale, V = s^2 H, H = h^2 Z K Z' + (1 - h^2) I, and the
whitened problem is an ordinary linear regression: the GLS estimate of beta, its standard error
with the scale re-estimated per marker (s^2 = RSS_1 / (n - p - 1)), and a t-test with n - p - 1
degrees of freedom, exact given h^2. This is FaST-LMM's ``single_snp`` statistic.

**Cost.** On the rotated data (:mod:`bayeslmm.paths.kinship`) H is diagonal, so after rotating a
block of markers once (one matrix product, O(n^2) per marker: BLAS) every statistic is a weighted
sum over n rows: O(n p) per marker, vectorised over the block; no Python loop over markers.

**Which variance components.** ``h2`` (a number) is used as given. Posterior draws of ``sd_g`` and
``sigma`` from a null-model fit give the plug-in h^2 = posterior mean of h^2 (the p-values need one
V; h^2 is bounded and well identified, and the test is insensitive to small changes of h^2, as
EMMAX showed); the draws are then also integrated over for a Bayesian summary per marker: with a
flat prior on beta and V fixed at a draw, beta | y ~ N(beta_s, 1 / g'P_s g) exactly, and the
mixture over (up to ``tail_draws``) draws gives ``post_mean``, ``post_sd``, ``prob_positive`` and
the local false sign rate ``lfsr`` = min(P(beta > 0), P(beta < 0)). The rotation does not depend on
V, so each extra draw costs O(n p) per marker, not another rotation. Neither given: h^2 by REML on
the null model (as FaST-LMM). ``h2=0`` (or no kinship) is ordinary least squares.

Genomic inflation: lambda = median(chi2) / 0.4549, with chi2 the 1-df chi-square quantile of each
p-value.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, special, stats

from .errors import DataError
from .kinship import KinshipBasis, KinshipMatrix, heritability, kinship_basis, kinship_matrix

__all__ = ["scan", "ScanResult", "genomic_inflation", "genetic_relationship", "simulate_gwas", "GwasData"]

CHI2_MEDIAN = float(stats.chi2.ppf(0.5, 1))          # 0.454936...
H2_MAX = 0.99999


@dataclass(frozen=True)
class ScanResult:
    """Per-marker statistics and the genomic inflation factor.

    Attributes
    ----------
    table : pandas.DataFrame
        Index: marker names. Columns ``beta`` (effect per unit of the marker), ``se``, ``t``,
        ``p_value`` (two-sided, t with ``df`` degrees of freedom), ``chi2`` (its 1-df chi-square
        quantile); with posterior draws also ``post_mean``, ``post_sd``, ``prob_positive``, ``lfsr``.
        Markers constant or collinear with the covariates have NaN statistics.
    lambda_gc : float
        median(chi2) / 0.4549.
    h2 : float
        The h^2 used for the p-values; ``h2_source`` says where it came from.
    h2_source : str
    n, df : int
        Rows; residual degrees of freedom n - p - 1.
    """

    table: pd.DataFrame
    lambda_gc: float
    h2: float
    h2_source: str
    n: int
    df: int


def genomic_inflation(p_values) -> float:
    """lambda = median of the 1-df chi-square quantiles of the p-values / 0.4549 (NaNs ignored)."""
    p = np.asarray(p_values, dtype=float)
    return float(np.nanmedian(stats.chi2.isf(p, 1)) / CHI2_MEDIAN)


# --------------------------------------------------------------------------------------------
# The whitened problem
# --------------------------------------------------------------------------------------------
def _rows(basis: KinshipBasis | None, A: np.ndarray) -> np.ndarray:
    """A in the rotated space: k between-level rows, then (several rows per level) the n rows of
    A minus its level means; inner products there are those of H^-1 with the weights below."""
    if basis is None:
        return np.asarray(A, dtype=float)
    if not basis.n_within:
        return basis.between(A)
    return np.concatenate([basis.between(A), basis.within(A)], axis=0)


@dataclass(frozen=True)
class _Rotated:
    """y and X in the rotated space and each row's eigenvalue ``lam_rows``: variance h2 lam + 1 - h2
    up to scale (0 for within-level rows: they span only n - k dimensions, which ``logdet`` counts)."""

    basis: KinshipBasis | None
    lam_rows: np.ndarray
    y: np.ndarray
    X: np.ndarray
    n: int

    def logdet(self, h2: float) -> float:
        """log |h2 Z K Z' + (1 - h2) I|."""
        if self.basis is None:
            return self.n * np.log1p(-h2)
        return float(np.sum(np.log(h2 * self.basis.lam + 1.0 - h2)) + self.basis.n_within * np.log1p(-h2))


def _null(rot: _Rotated, w: np.ndarray):
    Xw = rot.X * w[:, None]
    XtWX = rot.X.T @ Xw
    XtWy = Xw.T @ rot.y
    A = np.linalg.inv(XtWX)
    rss = float(rot.y @ (w * rot.y) - XtWy @ A @ XtWy)
    return Xw, XtWX, XtWy, A, rss


class _PlugIn:
    """Per-marker GLS with H^-1 = diag(w) on the rotated rows, scale re-estimated per marker."""

    def __init__(self, rot: _Rotated, w: np.ndarray):
        self.rot, self.w = rot, w
        self.Xw, _, XtWy, self.A, self.rss0 = _null(rot, w)
        self.AXy = self.A @ XtWy
        self.wy = w * rot.y

    def block(self, Gr: np.ndarray, df: int) -> dict:
        gWg = np.einsum("ij,ij->j", Gr, Gr * self.w[:, None])
        XWg = self.Xw.T @ Gr
        gPg = gWg - np.einsum("ij,ij->j", XWg, self.A @ XWg)           # g'P g, P = H^-1 - H^-1 X (.)^-1 X'H^-1
        gPy = self.wy @ Gr - XWg.T @ self.AXy
        # a marker constant or collinear with the covariates has g'Pg ~ 0: no test
        gPg = np.where(gPg > 1e-10 * np.maximum(gWg, np.finfo(float).tiny), gPg, np.nan)
        beta = gPy / gPg
        se = np.sqrt(np.maximum(self.rss0 - gPy * beta, 0.0) / df / gPg)
        t = beta / se
        return {"beta": beta, "se": se, "t": t, "p_value": 2.0 * stats.t.sf(np.abs(t), df)}


class _Draws:
    """Per marker and draw s, with V_s = sd_g^2 Z K Z' + sigma^2 I fixed and flat priors on the fixed
    effects: beta | y, V_s ~ N(g'P_s y / g'P_s g, 1 / g'P_s g); the mixture over the draws."""

    def __init__(self, rot: _Rotated, sd_g: np.ndarray, sigma: np.ndarray):
        self.rot = rot
        self.W = 1.0 / (sd_g[None, :] ** 2 * rot.lam_rows[:, None] + sigma[None, :] ** 2)   # (rows, S)
        self.A = np.linalg.inv(np.einsum("rs,ri,rj->sij", self.W, rot.X, rot.X))
        self.AXy = np.einsum("sij,sj->si", self.A, np.einsum("rs,ri,r->si", self.W, rot.X, rot.y))

    def block(self, Gr: np.ndarray) -> dict:
        X, y, W = self.rot.X, self.rot.y, self.W
        gWg = (Gr * Gr).T @ W                                                          # (B, S)
        XWg = np.stack([(Gr * X[:, [i]]).T @ W for i in range(X.shape[1])], axis=-1)  # (B, S, p)
        gPg = gWg - np.einsum("bsi,sij,bsj->bs", XWg, self.A, XWg)
        gPy = (Gr * y[:, None]).T @ W - np.einsum("bsi,si->bs", XWg, self.AXy)
        with np.errstate(invalid="ignore", divide="ignore"):
            b, v = gPy / gPg, 1.0 / gPg
            mean = b.mean(axis=1)
            return {"post_mean": mean, "post_sd": np.sqrt(np.maximum((v + b ** 2).mean(axis=1) - mean ** 2, 0.0)),
                    "prob_positive": special.ndtr(b / np.sqrt(v)).mean(axis=1)}


def _reml_h2(rot: _Rotated) -> float:
    """h^2 maximising the REML likelihood of the null model (grid, then Brent in the best bracket)."""
    n, p = rot.n, rot.X.shape[1]

    def crit(h2):
        w = 1.0 / (h2 * rot.lam_rows + 1.0 - h2)
        _, XtWX, _, _, rss = _null(rot, w)
        return rot.logdet(h2) + np.linalg.slogdet(XtWX)[1] + (n - p) * np.log(rss / (n - p))

    grid = np.linspace(0.0, H2_MAX, 21)
    vals = np.array([crit(h) for h in grid])
    i = int(np.argmin(vals))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    res = optimize.minimize_scalar(crit, bounds=(lo, hi), method="bounded", options={"xatol": 1e-7})
    return float(res.x) if res.fun <= vals[i] else float(grid[i])


def _as_matrix(a, n: int, what: str) -> np.ndarray:
    a = np.asarray(a, dtype=float)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or a.shape[0] != n:
        raise DataError(f"{what} must have {n} rows (one per row of y); got shape {a.shape}.")
    return a


def scan(y, G, kinship=None, *, covariates=None, ids=None, h2: float | None = None, sd_g=None,
         sigma=None, basis: KinshipBasis | None = None, eigen=None, tail_draws: int = 100,
         block_size: int = 2048, markers=None) -> ScanResult:
    """Test each marker (column of ``G``) as a fixed effect in the LMM, one at a time.

    Parameters
    ----------
    y : array (n,) or Fit
        The trait, no missing values. Or the **null model's fit** (``Model("y ~ covariates +
        (1 | id)", data, cov={"id": K}).fit()``): then y, K, the level of each row (``ids``), the
        covariates (its fixed effects besides the intercept) and the variance components
        (posterior draws of ``sd_{id}`` and ``sigma``) all come from it; ``G``'s rows are the
        fit's rows (the data rows it used, in order).
    G : array or DataFrame (n, M)
        Markers (e.g. allele counts 0/1/2), no missing values (impute first); DataFrame columns
        name the markers. Processed ``block_size`` columns at a time.
    kinship : DataFrame, KinshipMatrix or array, optional
        K over the individuals (see :func:`bayeslmm.kinship.kinship_matrix`); a bare (n, n)
        array is taken to be in the order of y's rows. None: ordinary least squares.
    covariates : array or DataFrame (n, q), optional
        Fixed covariates besides the intercept (which is always added).
    ids : sequence (n,), optional
        The level of K of each row of y (several rows may share one). Default: the rows are K's
        levels in K's order.
    h2 : float in [0, 1), optional
        Fixed h^2 = sd_g^2 / (sd_g^2 + sigma^2).
    sd_g, sigma : arrays of posterior draws, optional
        From a null-model fit with the same K: h^2 is their posterior mean, and the posterior
        columns are added (see the module docstring).
    basis : KinshipBasis, optional
        A rotation already computed for these rows (skips the eigendecomposition).
    eigen : (values, vectors), optional
        Eigendecomposition of K to reuse (one row per level, all levels).
    tail_draws : int
        Most draws used for the posterior columns (evenly thinned).
    block_size : int
        Markers per block.
    markers : sequence of str, optional
        Marker names (default: DataFrame columns, else ``m0, m1, ...``).

    Returns
    -------
    ScanResult

    Examples
    --------
    >>> sim = simulate_gwas(n=200, markers=300, seed=1)
    >>> res = scan(sim.y, sim.G, sim.kinship)
    >>> res.table.columns.tolist()[:4]
    ['beta', 'se', 't', 'p_value']
    """
    if hasattr(y, "design") and hasattr(y, "posterior"):        # a null-model Fit
        if kinship is not None or ids is not None or covariates is not None or h2 is not None \
                or sd_g is not None or sigma is not None:
            raise DataError("with a null-model fit, scan takes y, K, ids, covariates and the variance "
                            "components from it: leave kinship, ids, covariates, h2, sd_g, sigma out.")
        y, kinship, ids, covariates, sd_g, sigma = _from_null_fit(y)
    y = np.asarray(y, dtype=float).ravel()
    n = len(y)
    if not np.isfinite(y).all():
        raise DataError(f"y has {int((~np.isfinite(y)).sum())} missing or infinite values; drop those "
                        "rows (from y, G, covariates and ids) before the scan.")
    if isinstance(G, pd.DataFrame):
        markers = list(G.columns) if markers is None else markers
        G = G.to_numpy()
    G = np.asarray(G)
    if G.ndim == 1:
        G = G[:, None]
    if G.ndim != 2 or G.shape[0] != n:
        raise DataError(f"G must be (n, markers) with n = {n} rows (one per row of y); got {G.shape}.")
    M = G.shape[1]
    markers = [f"m{j}" for j in range(M)] if markers is None else list(markers)
    if len(markers) != M:
        raise DataError(f"{len(markers)} marker names for {M} markers.")
    X = np.ones((n, 1))
    if covariates is not None:
        C = _as_matrix(covariates.to_numpy() if isinstance(covariates, pd.DataFrame) else covariates,
                       n, "covariates")
        if not np.isfinite(C).all():
            raise DataError("covariates have missing or infinite values; drop or impute those rows.")
        const = np.flatnonzero(np.ptp(C, axis=0) == 0)
        if len(const):
            raise DataError(f"covariate column(s) {const.tolist()} are constant; leave the intercept "
                            "out of covariates (it is always added).")
        X = np.column_stack([X, C])
    p = X.shape[1]
    if np.linalg.matrix_rank(X) < p:
        raise DataError("the covariates are collinear (with each other or the intercept); drop the "
                        "redundant ones.")
    if n - p - 1 < 1:
        raise DataError(f"{n} rows leave no residual degrees of freedom for {p} covariates and a marker.")

    draws = None
    if sd_g is not None or sigma is not None:
        if sd_g is None or sigma is None or h2 is not None:
            raise DataError("give sd_g and sigma (posterior draws) together, or h2 alone.")
        sd_g, sigma = (np.asarray(a, dtype=float).ravel() for a in (sd_g, sigma))
        if sd_g.shape != sigma.shape or not len(sd_g):
            raise DataError("sd_g and sigma must be draws of the same length.")
        keep = np.unique(np.linspace(0, len(sd_g) - 1, min(tail_draws, len(sd_g))).round().astype(int))
        draws = (sd_g[keep], sigma[keep])
    if h2 is not None and not 0.0 <= h2 < 1.0:
        raise DataError(f"h2 must be in [0, 1); got {h2}.")

    if kinship is None and basis is None:
        if draws is not None or (h2 is not None and h2 != 0.0):
            raise DataError("h2 or variance draws need a kinship matrix.")
        rot = _Rotated(None, np.zeros(n), y, X, n)
        h2, source = 0.0, "no kinship: ordinary least squares"
    else:
        if basis is None:
            if isinstance(kinship, (pd.DataFrame, KinshipMatrix)):
                kin = kinship_matrix(kinship, factor="individual")
            else:                                   # a bare array: its rows are y's rows
                if ids is not None:
                    raise DataError("an array kinship has no level labels for ids= to refer to: "
                                    "pass K as a DataFrame labelled by individual.")
                kin = kinship_matrix(kinship, labels=np.arange(n), factor="individual")
            if ids is None:
                if kin.m != n:
                    raise DataError(f"y has {n} rows but K has {kin.m} levels: pass ids= (the level "
                                    "of each row).")
                ids = kin.labels
            basis = kinship_basis(kin, ids, eigen=eigen)
        if basis.n != n:
            raise DataError(f"the basis is for {basis.n} rows, y has {n}.")
        lam_rows = basis.lam if not basis.n_within else np.concatenate([basis.lam, np.zeros(n)])
        rot = _Rotated(basis, lam_rows, _rows(basis, y), _rows(basis, X), n)
        if draws is not None:
            h2 = float(np.mean(heritability(sd_g, sigma)))
            source = f"posterior mean over {len(sd_g)} draws"
        elif h2 is not None:
            source = "given"
        else:
            h2, source = _reml_h2(rot), "REML on the null model"

    df = n - p - 1
    plug = _PlugIn(rot, 1.0 / (h2 * rot.lam_rows + 1.0 - h2))
    post = _Draws(rot, *draws) if draws is not None else None
    cols = {k: np.full(M, np.nan) for k in ("beta", "se", "t", "p_value")}
    if post is not None:
        cols.update({k: np.full(M, np.nan) for k in ("post_mean", "post_sd", "prob_positive")})
    for start in range(0, M, block_size):
        sl = slice(start, min(start + block_size, M))
        Gb = np.asarray(G[:, sl], dtype=float)
        if not np.isfinite(Gb).all():
            j = start + int(np.flatnonzero(~np.isfinite(Gb).all(axis=0))[0])
            raise DataError(f"marker {markers[j]!r} has missing values; impute them (e.g. with the "
                            "marker's mean) before the scan.")
        Gr = _rows(rot.basis, Gb)
        for k, v in plug.block(Gr, df).items():
            cols[k][sl] = v
        if post is not None:
            for k, v in post.block(Gr).items():
                cols[k][sl] = np.where(np.isfinite(cols["beta"][sl]), v, np.nan)
    table = pd.DataFrame(cols, index=pd.Index(markers, name="marker"))
    table.insert(4, "chi2", stats.chi2.isf(table["p_value"].to_numpy(), 1))
    if draws is not None:
        table["lfsr"] = np.minimum(table["prob_positive"], 1.0 - table["prob_positive"])
    return ScanResult(table=table, lambda_gc=float(np.nanmedian(table["chi2"]) / CHI2_MEDIAN),
                      h2=float(h2), h2_source=source, n=n, df=df)


def _from_null_fit(fit):
    """y, K, ids, covariates, sd_g draws, sigma draws of a fit with one known covariance."""
    design = fit.design
    kin = tuple(getattr(design, "kinship", None) or ())
    if len(kin) != 1 or fit.spec.family != "gaussian" or len(design.factors) != 1:
        raise DataError("scan(fit, G) needs the fit of a Gaussian null model with one random "
                        "intercept with a known covariance: Model('y ~ covariates + (1 | id)', data, "
                        "cov={'id': K}).fit(); this fit has "
                        f"{len(kin)} known covariance(s), family {fit.spec.family!r} and "
                        f"{len(design.factors)} grouping factor(s).")
    k = kin[0]
    f = design.factor(k.factor)
    ids = np.asarray(f.levels, dtype=object)[f.codes]
    slopes = list(design.slope_columns)
    covariates = design.X[:, slopes] if slopes else None
    post = fit.posterior
    sd_g = post[f"sd_{f.name}"].to_numpy().reshape(-1)
    sigma = post["sigma"].to_numpy().reshape(-1)
    return design.y, k, ids, covariates, sd_g, sigma


# --------------------------------------------------------------------------------------------
# Genotypes: relationship matrix and a structured simulation
# --------------------------------------------------------------------------------------------
def genetic_relationship(G, labels=None):
    """Genomic relationship matrix K = S S' / M from standardised markers (mean diagonal 1).

    Parameters
    ----------
    G : array (n, M)
        Allele counts; monomorphic markers are skipped.
    labels : sequence (n,), optional
        Individual labels: the result is then a DataFrame (ready for :func:`scan` / ``cov=``).
    """
    G = np.asarray(G, dtype=float)
    if not np.isfinite(G).all():
        raise DataError("G has missing values; impute them before computing the relationship matrix.")
    sd = G.std(axis=0)
    use = sd > 0
    S = (G[:, use] - G[:, use].mean(axis=0)) / sd[use]
    K = S @ S.T / use.sum()
    return K if labels is None else pd.DataFrame(K, index=list(labels), columns=list(labels))


@dataclass(frozen=True)
class GwasData:
    """A simulated association study: ``y`` (n,), markers ``G`` (n, M) as allele counts, ``pop``
    (n,) subpopulation, ``causal`` marker indices, ``kinship`` (DataFrame GRM from G, labelled by
    ``ids``), and the truth ``h2`` (polygenic share of the non-population variance)."""

    y: np.ndarray
    G: np.ndarray
    pop: np.ndarray
    causal: np.ndarray
    kinship: pd.DataFrame
    ids: list
    h2: float


def simulate_gwas(n: int = 500, markers: int = 2000, *, fst: float = 0.1, h2: float = 0.5,
                  n_causal: int = 100, pop_shift: float = 1.0, seed=None) -> GwasData:
    """Balding-Nichols genotypes for two equal subpopulations and a trait that differs between them.

    Ancestral allele frequencies ~ U(0.05, 0.95); each subpopulation's frequency ~ Beta(f (1 - F)
    / F, (1 - f)(1 - F) / F) with F = ``fst``; genotypes ~ Binomial(2, frequency). The trait is
    ``pop_shift`` (in units of the residual sd) times the subpopulation indicator, plus a polygenic
    part from ``n_causal`` markers (centred within each subpopulation, so that it does not change
    the difference between them) scaled to variance h2 / (1 - h2), plus N(0, 1) noise.
    """
    rng = np.random.default_rng(seed)
    pop = np.repeat([0, 1], [n // 2, n - n // 2])
    f = rng.uniform(0.05, 0.95, markers)
    a, b = f * (1 - fst) / fst, (1 - f) * (1 - fst) / fst
    freq = rng.beta(a, b, size=(2, markers))
    G = rng.binomial(2, freq[pop]).astype(np.int8)
    causal = np.sort(rng.choice(markers, min(n_causal, markers), replace=False))
    Gc = G[:, causal].astype(float)
    g = (Gc - Gc.mean(0)) @ rng.standard_normal(len(causal))
    for k in (0, 1):        # centred within subpopulation: the populations differ by pop_shift exactly
        g[pop == k] -= g[pop == k].mean()
    g = g / g.std() * np.sqrt(h2 / (1 - h2)) if h2 > 0 else 0 * g
    y = pop_shift * pop + g + rng.standard_normal(n)
    ids = [f"i{i}" for i in range(n)]
    return GwasData(y=y, G=G, pop=pop, causal=causal, kinship=genetic_relationship(G, ids), ids=ids, h2=h2)


class _CallableModule(types.ModuleType):
    """``bayeslmm.scan(...)`` calls :func:`scan` whether ``bayeslmm.scan`` is this module (after
    ``import bayeslmm.scan``, which sets the attribute to the module) or the function."""

    def __call__(self, *args, **kwargs):
        return scan(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
