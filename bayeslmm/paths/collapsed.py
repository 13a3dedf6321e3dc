"""The exact collapsed path for Gaussian models: random effects integrated out, drawn afterwards.

For a Gaussian mixed model

    y = X b + Z u + e,   u ~ N(0, G),   e ~ N(0, sigma^2 I)

the random effects can be integrated out analytically: y ~ N(X b, V), V = sigma^2 I + Z G Z'.
NUTS then samples only the fixed effects and the variance parameters, and the random effects are
drawn afterwards, exactly, from their Gaussian conditional u | y, b, G, sigma
(:func:`bayeslmm.paths.elimination.draw_group_effects`). The returned posterior has the same
variables as the non-centred graph (:mod:`bayeslmm.posterior`), so everything downstream works
unchanged. (``method="marginal"`` is the old name of this path and still accepted.)

**When it applies** (:func:`bayeslmm.paths.choose_path`): a family that supports it (Gaussian) and
grouping factors that form a nesting chain (:func:`bayeslmm.stats.nesting_chain`): one factor (any
number of correlated and uncorrelated blocks on it), or nested factors ``a``, ``a:b``, ... (also
factors nested in the data without the ``a:b`` syntax). Crossed factors use the non-centred graph.

**Known standard errors** (``y | se(s) ~ ...``): the statistics are those of the rows whitened by
1/s_i (:mod:`bayeslmm.stats`), the same algebra and kernel run with sigma fixed at 1 (no ``sigma``
variable), and each group's log-density gains the constant -sum_i log s_i (shared ``m_log_se``):
exact, with y_j ~ N(X_j b, diag(s_j^2) + Z_j D Z_j'). ``se(s, sigma = TRUE)`` takes the non-centred
path (:func:`bayeslmm.paths.choose_path` says why).

**Sufficient statistics** come from :mod:`bayeslmm.stats`, once per data set; the algebra from
:mod:`bayeslmm.paths.elimination`.

**Log-likelihood for LOO**: the collapsed likelihood is a ``pm.CustomDist`` named ``y_marginal``
whose elements are the **per top-level group marginal** log-densities log p(y_j | b, G, sigma)
(random effects integrated out); :func:`bayeslmm.paths.elimination.group_log_likelihood` computes
the same quantity in numpy from any fit's draws, for leave-one-group-out LOO.

**Two implementations of the likelihood**: with one grouping factor (the common case) NUTS
evaluates :mod:`bayeslmm.paths.collapsed_kernel`, one numba function for the per-group
log-densities and their gradient (hand-derived, checked against finite differences); it compiles
once per machine and keeps the model's PyTensor graph small, which is what makes a cold first fit
fast. Nested factors use the elimination as a PyTensor graph (automatic gradient). Both are tested
against the dense multivariate-normal density. With one factor and PyMC's NUTS, the sampler does not
even compile the model's graph: it evaluates :mod:`bayeslmm.paths.collapsed_density`, the whole
log-density (priors, transforms, kernel) as one numba function compiled at install and tested equal
to PyMC's (a cold sleepstudy fit 18.5 -> 4.5 s); the graph remains the model's definition, for nutpie,
for log-likelihood terms and for that test.

**Compiled-function reuse**: the data enter the graph as shape-agnostic shared variables (no static
shapes), so the graph of a model depends only on its *structure* (number of fixed effects, the
factors' q and blocks, nesting depth), not on n or the number of groups; PyTensor's on-disk cache
then serves the compiled pieces to every data set with that structure.
"""

from __future__ import annotations

import time

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
import xarray as xr

from ..design import Design, FactorDesign
from ..errors import SpecError
from ..posterior import (add_group_effects, coords_of, level_dim, param_draws, r_var, sd_var, stored_var_names,
                         term_dim)
from ..priors import PriorTable
from ..sampling import links_kernels, resolve_seed, sample
from ..spec import SamplerSpec
from ..stats import GroupStats, group_stats, nesting_chain
from .blocks import cor_cholesky, correlation_factors, correlation_matrix, fixed_effects, prior_rv
from .collapsed_kernel import kernel_data, one_factor_logp
from .elimination import LOG_2PI, _eliminate, _initial_blocks, draw_group_effects

__all__ = ["build_collapsed_model", "sample_collapsed", "collapsed_logp_graph", "data_values",
           "kernel_inputs", "add_drawn_effects", "sample_and_draw", "posterior_tree", "AUX"]

#: the auxiliary parameters of the (Gaussian) collapsed likelihood
AUX = ("sigma",)


class _TensorOps:
    sqrt = staticmethod(pt.sqrt)
    log = staticmethod(pt.log)

    def __init__(self, anc, J):
        self.anc = anc          # anc[l][m] integer tensors
        self.J = J              # J[m] symbolic lengths

    def scatter(self, l: int, m: int, vals: list):
        stacked = pt.stack(vals, axis=1)                           # (J_l, K)
        out = pt.inc_subtensor(pt.zeros((self.J[m], len(vals)))[self.anc[l][m]], stacked)
        return [out[:, k] for k in range(len(vals))]


def _shared(name: str, value) -> pt.TensorVariable:
    """A data input without static shape: the compiled graph does not depend on n or J."""
    value = np.asarray(value)
    return pytensor.shared(value, name=name, shape=(None,) * value.ndim)


def _covariance_tensors(f: FactorDesign, priors: PriorTable):
    """``sd_{g}``, the LKJ Cholesky factors (same names as graph.py) and ``cor_{g}``.

    Returns ``(sd, [(block, L), ...])`` with one entry per correlated block.
    """
    sd = prior_rv(sd_var(f.name), priors.of_class("sd", f.name), dims=term_dim(f.name))
    Ls = correlation_factors(f, priors)
    correlation_matrix(f, Ls)
    return sd, Ls


def _precision_entries(f: FactorDesign, sd, Ls: list):
    """S^-1 entries (nested lists of scalars) and log|S| for the graph path."""
    q = f.q
    Cinv = [[pt.constant(1.0 if i == j else 0.0) for j in range(q)] for i in range(q)]
    logC = 0.0
    for block, L in Ls:
        Linv = pt.linalg.solve_triangular(L, pt.eye(len(block)), lower=True)
        Ci = pt.dot(Linv.T, Linv)
        for a, i in enumerate(block):
            for bb, j in enumerate(block):
                Cinv[i][j] = Ci[a, bb]
        logC = logC + 2.0 * pt.sum(pt.log(pt.diag(L)))
    isd = 1.0 / sd
    Sinv = [[Cinv[i][j] * isd[i] * isd[j] if (i == j or _same_block(f, i, j)) else pt.constant(0.0)
             for j in range(q)] for i in range(q)]
    logS = 2.0 * pt.sum(pt.log(sd)) + logC
    return Sinv, logS


def _same_block(f: FactorDesign, i: int, j: int) -> bool:
    return any(i in b and j in b and c for b, c in zip(f.blocks, f.correlated))


def collapsed_logp_graph(stats: GroupStats, data: dict, b, Sinv, logS, sigma):
    """Per top-level group marginal log-density as a PyTensor vector (J_0,).

    ``data`` holds the shared inputs made by :func:`_stats_inputs`.
    """
    d = b - data["b0"]
    s2 = sigma ** 2
    backend = {
        "ZtZ": [[[data["ZtZ"][l][:, i, j] for j in range(stats.q[l])] for i in range(stats.q[l])]
                for l in range(stats.L)],
        "ZtZa": [{m: [[data["ZtZa"][l][m][:, i, j] for j in range(stats.q[m])]
                      for i in range(stats.q[l])] for m in range(l)} for l in range(stats.L)],
        "Zte": [[data["Zte"][l][:, i] for i in range(stats.q[l])] for l in range(stats.L)],
        "ZtXd": lambda l, i, dd: pt.dot(data["ZtX"][l][:, i, :], dd),
    }
    D, C, c = _initial_blocks(stats, s2, Sinv, d, backend)
    J = [data["Zte"][l].shape[0] for l in range(stats.L)]
    ops = _TensorOps(data["anc"], J)
    logdet, quad, _ = _eliminate(D, C, c, ops)
    ld, qd = logdet[0], quad[0]
    for l in range(1, stats.L):
        s_ld, s_qd = ops.scatter(l, 0, [logdet[l], quad[l]])
        ld, qd = ld + s_ld, qd + s_qd
    XtXf = data["XtX"].reshape((data["XtX"].shape[0], -1))
    rr = data["ete"] - 2.0 * pt.dot(data["Xte"], d) + pt.dot(XtXf, pt.outer(d, d).ravel())
    n = data["n_obs"]
    Q, logG = 0.0, 0.0
    for l in range(stats.L):
        Q = Q + data["n_nodes"][l] * stats.q[l]
        logG = logG + data["n_nodes"][l] * logS[l]
    return -0.5 * (n * LOG_2PI + (n - Q) * pt.log(s2) + logG + ld + (rr - qd) / s2)


def kernel_inputs(stats: GroupStats) -> dict[str, np.ndarray]:
    """The one-factor kernel's data arrays by the names of the model's shared variables."""
    return dict(zip(("m_b0", "m_ZtZ", "m_ZtX", "m_Zte", "m_XtX", "m_Xte", "m_ete", "m_n_obs"),
                    kernel_data(stats)))


def data_values(stats: GroupStats) -> dict[str, np.ndarray]:
    """Every shared variable of :func:`build_collapsed_model` by name, for swapping in new data
    (same structure) without rebuilding the model."""
    if stats.L == 1:
        out = kernel_inputs(stats)
        if stats.known_scale:
            out["m_log_se"] = stats.log_se
        return out
    out = {}

    def walk(x):
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)
        else:
            out[x.name] = x.get_value()
    walk(_stats_inputs(stats))
    return out


def _stats_inputs(stats: GroupStats) -> dict:
    return {
        "b0": _shared("m_b0", stats.b0),
        "anc": [[_shared(f"m_anc_{l}_{m}", a) for m, a in enumerate(stats.anc[l])] for l in range(stats.L)],
        "ZtZ": [_shared(f"m_ZtZ_{l}", x) for l, x in enumerate(stats.ZtZ)],
        "ZtZa": [{m: _shared(f"m_ZtZa_{l}_{m}", x) for m, x in enumerate(stats.ZtZa[l])}
                 for l in range(stats.L)],
        "ZtX": [_shared(f"m_ZtX_{l}", x) for l, x in enumerate(stats.ZtX)],
        "Zte": [_shared(f"m_Zte_{l}", x) for l, x in enumerate(stats.Zte)],
        "XtX": _shared("m_XtX", stats.XtX), "Xte": _shared("m_Xte", stats.Xte),
        "ete": _shared("m_ete", stats.ete), "n_obs": _shared("m_n_obs", stats.n_obs),
        "n_nodes": [_shared(f"m_n_nodes_{l}", x) for l, x in enumerate(stats.n_nodes)],
        **({"log_se": _shared("m_log_se", stats.log_se)} if stats.known_scale else {}),
    }


def build_collapsed_model(design: Design, prior_table: PriorTable, stats: GroupStats | None = None,
                          *, sampler: str = "pymc", chain: tuple | None = None) -> pm.Model:
    """The collapsed Gaussian LMM as a ``pm.Model``: random effects integrated out.

    Free variables and priors are those of :func:`bayeslmm.paths.noncentred.build_model` without the
    offsets ``z_{g}``: ``Intercept_c``, ``beta``, ``sd_{g}``, ``cpc_{g}`` (LKJ), ``sigma``. The
    likelihood is a ``pm.CustomDist`` ``y_marginal`` with one element per top-level group (its
    marginal log-density), so ``pm.compute_log_likelihood`` gives leave-one-group-out terms.

    With one grouping factor the likelihood is the compiled kernel of
    :mod:`bayeslmm.paths.collapsed_kernel`; with nested factors, the elimination graph of
    :func:`collapsed_logp_graph`. ``sampler`` (``"pymc"`` or ``"nutpie"``) is the NUTS the model
    will be sampled by: it decides how the kernel is called (see ``OneFactorMarginal``).

    Examples
    --------
    >>> import bayeslmm as blmm
    >>> m = blmm.Model("Reaction ~ Days + (Days | Subject)", blmm.load_dataset("sleepstudy"))
    >>> sorted(v.name for v in build_collapsed_model(m.design, m.prior_table).free_RVs)
    ['Intercept_c', 'beta', 'cpc_Subject', 'sd_Subject', 'sigma']
    """
    if chain is None:
        chain, why = nesting_chain(design)
        if chain is None:
            raise SpecError(f"the collapsed path does not apply: {why}. Use method='noncentred'.")
    stats = stats if stats is not None else group_stats(design, chain)
    coords = coords_of(design)
    coords = {k: v for k, v in coords.items() if not k.endswith("__level") or k == level_dim(chain[0].name)}
    slope_terms = [t for t in design.fixed_terms if t != "Intercept"]
    if slope_terms:
        coords["slope"] = slope_terms
    if stats.L == 1:
        kdata = [_shared(name, x) for name, x in kernel_inputs(stats).items()]
        log_se = _shared("m_log_se", stats.log_se) if stats.known_scale else None
    else:
        data = _stats_inputs(stats)
        log_se = data.get("log_se")
    with pm.Model(coords=coords) as model:
        _, b = fixed_effects(design, prior_table, linear_predictor=False)
        cov = {f.name: _covariance_tensors(f, prior_table) for f in design.factors}   # design order
        # known standard errors: rows whitened by 1/s_i, so the residual SD is fixed at 1
        sigma = pt.constant(1.0) if stats.known_scale else prior_rv("sigma", [prior_table["sigma"]])
        top = chain[0].name
        if stats.L == 1:
            sd, Ls = cov[top]
            params = [b, sd, cor_cholesky(stats.q[0], Ls), sigma]
            signature = "(p),(q),(q,q),()->()"
            shapes = [(stats.p,), (stats.q[0],), (stats.q[0], stats.q[0]), ()]

            def logp(value, *par):
                # PyMC hands the parameters over with a leading length-1 batch axis: drop it
                par = [x.reshape(shape) for x, shape in zip(par, shapes)]
                lp = one_factor_logp(*par, *kdata, linked=links_kernels(sampler))
                return lp if log_se is None else lp - log_se
        else:
            prec = [_precision_entries(f, *cov[f.name]) for f in chain]
            params = [b, sigma] + [lS for _, lS in prec] + [
                Sinv[i][j] for (Sinv, _), q in zip(prec, stats.q) for i in range(q) for j in range(q)]
            signature = "(p)" + ",()" * (len(params) - 1) + "->()"

            def logp(value, b_, sigma_, *rest):
                b_ = b_.reshape((stats.p,))
                sigma_ = sigma_.reshape(())
                rest = [x.reshape(()) for x in rest]
                logS_ = list(rest[:stats.L])
                flat = list(rest[stats.L:])
                Sinv_ = []
                for l in range(stats.L):
                    q = stats.q[l]
                    Sinv_.append([[flat.pop(0) for _ in range(q)] for _ in range(q)])
                lp = collapsed_logp_graph(stats, data, b_, Sinv_, logS_, sigma_)
                return lp if log_se is None else lp - log_se

        params = [pt.as_tensor_variable(x) for x in params]
        pm.CustomDist("y_marginal", *params, logp=logp, observed=np.zeros(stats.J[0]),
                      signature=signature, dims=level_dim(top))
    return model


def add_drawn_effects(post: xr.Dataset, design: Design, stats: GroupStats, chain: tuple, seed: int) -> xr.Dataset:
    """``post`` (b, sd, cor, sigma) plus ``r_{g}`` drawn exactly from their conditional, seeded."""
    b, sds, cors, aux = param_draws(post, chain, () if stats.known_scale else AUX)
    sigma = np.ones(len(b)) if stats.known_scale else aux["sigma"]     # whitened rows: sigma = 1
    effects = draw_group_effects(stats, b, sds, cors, sigma, seed)
    return add_group_effects(post, design, chain, effects, AUX)


def sample_collapsed(design: Design, prior_table: PriorTable, settings: SamplerSpec,
                     seed: int | None = None, chain: tuple | None = None) -> tuple[xr.DataTree, dict]:
    """NUTS on the collapsed model, then exact draws of the random effects.

    Returns
    -------
    (DataTree, info)
        Groups ``posterior`` (``b``, ``sd_{g}``, ``cor_{g}``, ``r_{g}``, ``sigma``; the same names
        and dims as the non-centred graph), ``sample_stats`` and ``observed_data`` (``y`` over
        ``obs``). ``info`` adds ``setup_s`` (statistics and model build), ``sampling_s`` (NUTS,
        including PyTensor compilation) and ``effects_s`` (drawing ``r``).
    """
    seed = resolve_seed(settings.seed if seed is None else seed)
    t0 = time.perf_counter()
    if chain is None:
        chain, why = nesting_chain(design)
        if chain is None:
            raise SpecError(f"the collapsed path does not apply: {why}. Use method='noncentred'.")
    stats = group_stats(design, chain)
    model = build_collapsed_model(design, prior_table, stats, sampler=settings.sampler, chain=chain)
    setup_s = time.perf_counter() - t0
    density = None
    if stats.L == 1:
        from .collapsed_density import one_factor_density
        density = one_factor_density(model, stats, chain[0].name)
    tree, info = sample_and_draw(model, design, settings, seed,
                                 lambda post: add_drawn_effects(post, design, stats, chain, seed), density=density)
    info.update({"setup_s": setup_s, "collapsed_structure": str(stats.structure())})
    return tree, info


def sample_and_draw(model: pm.Model, design: Design, settings: SamplerSpec, seed: int, add_effects,
                    density=None) -> tuple[xr.DataTree, dict]:
    """NUTS on a collapsed model, then ``add_effects(posterior) -> posterior with r_{g}``; the fit's
    DataTree and info (``effects_s`` added). Shared by the collapsed paths; ``density`` see
    :func:`bayeslmm.sampling.laplace_start`."""
    keep = [v for v in stored_names(design) if v in model.named_vars]
    idata, info = sample(model, settings, var_names=keep, seed=seed, laplace=True, density=density)
    t1 = time.perf_counter()
    post = idata["posterior"].to_dataset()
    merged = add_effects(post[[v for v in keep if v in post.data_vars]])
    info = dict(info)
    info["effects_s"] = time.perf_counter() - t1
    return posterior_tree(idata, merged, design), info


def posterior_tree(idata: xr.DataTree, merged: xr.Dataset, design: Design) -> xr.DataTree:
    """The fit's DataTree from the sampler's output and the posterior with the drawn effects
    (``posterior``, ``sample_stats``, ``observed_data``); shared by the collapsed paths."""
    merged.attrs = dict(idata["posterior"].attrs)
    tree = xr.DataTree()
    tree["posterior"] = xr.DataTree(merged)
    tree["sample_stats"] = idata["sample_stats"].copy()
    if getattr(design, "group_stats", None) is None:      # a statistics-only design has no rows
        tree["observed_data"] = xr.DataTree(xr.Dataset(
            {"y": ("obs", design.y)}, coords={"obs": np.arange(design.n)}))
    tree.attrs = dict(idata.attrs)
    return tree


def stored_names(design: Design) -> list[str]:
    """The sampled variables the collapsed path stores (the stored names without ``r_{g}``)."""
    effects = {r_var(f.name) for f in design.factors}
    return [v for v in stored_var_names(design, AUX) if v not in effects]
