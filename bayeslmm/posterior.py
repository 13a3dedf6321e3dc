"""The posterior contract: what a bayeslmm posterior holds, and the one way to read it.

Every sampling path writes, and every reader (results, ICC, shrinkage, predictions, diagnostics,
validation, the collapsed path's exact draws) reads, these variables:

================  =======================================  ===================================
variable          dims                                     meaning
================  =======================================  ===================================
``b``             ``term``                                 fixed effects (original scale)
``sd_{g}``        ``{g}__term``                            group-level SDs of factor g
``cor_{g}``       ``{g}__term``, ``{g}__term2``            correlation matrix (correlated blocks)
``r_{g}``         ``{g}__level``, ``{g}__term``            group-level effects (deviations)
auxiliary         --                                       the family's (gaussian: ``sigma``)
================  =======================================  ===================================

Table labels (lme4/brms): fixed effects by term name, ``sd(g, term)``, ``cor(g, a, b)`` and the
auxiliary parameters by name (``sigma``). Draws are stacked over chains in chain-major order
(``sample = (chain, draw)``). This module is a leaf: numpy and xarray only, never PyMC; the
auxiliary parameter names come from the caller (``families.get_family(spec.family).aux_names``).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

__all__ = ["level_dim", "term_dim", "term2_dim", "sd_var", "cor_var", "r_var", "coords_of",
           "stored_var_names", "sd_label", "cor_label", "component_draws", "stack", "draws",
           "cor_draws", "cov_draws", "param_draws", "hdi", "add_group_effects", "labelled_draws"]


# -- names and dims ----------------------------------------------------------------------------
def level_dim(g: str) -> str:
    return f"{g}__level"


def term_dim(g: str) -> str:
    return f"{g}__term"


def term2_dim(g: str) -> str:
    return f"{g}__term2"


def sd_var(g: str) -> str:
    return f"sd_{g}"


def cor_var(g: str) -> str:
    return f"cor_{g}"


def r_var(g: str) -> str:
    return f"r_{g}"


def coords_of(design) -> dict[str, list[str]]:
    """Coordinates of every posterior dim except chain and draw."""
    coords: dict[str, list[str]] = {"term": list(design.fixed_terms)}
    for f in design.factors:
        coords[level_dim(f.name)] = list(f.levels)
        coords[term_dim(f.name)] = list(f.terms)
        if f.has_correlation:
            coords[term2_dim(f.name)] = list(f.terms)
    return coords


def stored_var_names(design, aux_names: tuple[str, ...]) -> list[str]:
    """Variables kept in the posterior, in order (sampler internals such as z offsets are not)."""
    names = ["b"]
    for f in design.factors:
        names.append(sd_var(f.name))
        if f.has_correlation:
            names.append(cor_var(f.name))
        names.append(r_var(f.name))
    return names + list(aux_names)


def sd_label(g: str, term: str) -> str:
    return f"sd({g}, {term})"


def cor_label(g: str, a: str, b: str) -> str:
    return f"cor({g}, {a}, {b})"


def component_draws(post: xr.Dataset, design, aux_names: tuple[str, ...]) -> dict[str, xr.DataArray]:
    """Draws (chain, draw) of every variance component by table label: SDs and correlations per
    factor, then the auxiliary parameters."""
    out: dict[str, xr.DataArray] = {}
    for f in design.factors:
        sd = post[sd_var(f.name)]
        for t in f.terms:
            out[sd_label(f.name, t)] = sd.sel({term_dim(f.name): t})
        for i, j in f.correlation_pairs:
            out[cor_label(f.name, f.terms[i], f.terms[j])] = post[cor_var(f.name)].isel(
                {term_dim(f.name): i, term2_dim(f.name): j})
    for a in aux_names:
        out[a] = post[a]
    return out


def labelled_draws(post: xr.Dataset, design, aux_names: tuple[str, ...]) -> dict[str, xr.DataArray]:
    """Draws (chain, draw) of every scalar parameter by table label: the fixed effects by term
    name (``Days``), then :func:`component_draws` (``sd(Subject, Days)``, ``cor(...)``, ``sigma``)."""
    out = {t: post["b"].sel(term=t, drop=True) for t in design.fixed_terms}
    out.update(component_draws(post, design, aux_names))
    return out


# -- draws as arrays ---------------------------------------------------------------------------
def stack(da: xr.DataArray) -> np.ndarray:
    """Draws stacked over chains: shape (chains*draws, ...)."""
    return da.stack(sample=("chain", "draw")).transpose("sample", ...).to_numpy()


def draws(post: xr.Dataset, name: str) -> np.ndarray:
    """Variable ``name`` stacked over chains (see :func:`stack`)."""
    return stack(post[name])


def cor_draws(post: xr.Dataset, f) -> np.ndarray:
    """Correlation matrix of factor ``f`` per draw (S, q, q); identity when it has none."""
    if cor_var(f.name) in post:
        return stack(post[cor_var(f.name)])
    S = post.sizes["chain"] * post.sizes["draw"]
    return np.broadcast_to(np.eye(f.q), (S, f.q, f.q))


def cov_draws(post: xr.Dataset, f) -> np.ndarray:
    """Random-effect covariance of factor ``f`` per draw: shape (S, q, q)."""
    sd = stack(post[sd_var(f.name)])                       # (S, q)
    return sd[:, :, None] * cor_draws(post, f) * sd[:, None, :]


def param_draws(post: xr.Dataset, factors, aux_names: tuple[str, ...]):
    """``b`` (S, p), per factor sd (S, q) and cor (S, q, q), and ``{aux: (S,)}``."""
    b = draws(post, "b")
    sds = [draws(post, sd_var(f.name)) for f in factors]
    cors = [np.asarray(cor_draws(post, f)) for f in factors]
    return b, sds, cors, {a: draws(post, a) for a in aux_names}


def hdi(x: np.ndarray, prob: float) -> tuple[float, float]:
    """Shortest interval holding ``prob`` of the draws ``x`` (non-finite draws ignored)."""
    s = np.sort(x[np.isfinite(x)])
    n = len(s)
    k = int(np.floor(prob * n))
    if n == 0 or k >= n:
        return (float(s[0]), float(s[-1])) if n else (np.nan, np.nan)
    widths = s[k:] - s[: n - k]
    i = int(np.argmin(widths))
    return float(s[i]), float(s[i + k])


# -- writing ---------------------------------------------------------------------------------
def add_group_effects(post: xr.Dataset, design, factors, effects, aux_names: tuple[str, ...]) -> xr.Dataset:
    """``post`` plus ``r_{g}`` for each factor from drawn effects (S, J, q), in the stored order.

    ``factors`` and ``effects`` are parallel sequences; S = chains * draws in chain-major order.
    """
    nc, nd = post.sizes["chain"], post.sizes["draw"]
    new = {}
    for f, eff in zip(factors, effects):
        new[r_var(f.name)] = xr.DataArray(
            eff.reshape(nc, nd, f.n_levels, f.q), dims=("chain", "draw", level_dim(f.name), term_dim(f.name)),
            coords={level_dim(f.name): list(f.levels), term_dim(f.name): list(f.terms)})
    order = [v for v in stored_var_names(design, aux_names) if v in post.data_vars or v in new]
    merged = xr.merge([post, xr.Dataset(new)], compat="override", join="outer")[order]
    merged.attrs = dict(post.attrs)
    return merged
