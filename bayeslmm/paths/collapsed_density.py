"""The one-factor collapsed model's whole log-density and gradient as one compiled function.

PyMC's NUTS evaluates a model through a function that PyTensor generates from the model's graph
and compiles with numba: for the collapsed Gaussian model of sleepstudy that compile took
11-13 s with an empty PyTensor cache (numba typing PyTensor's generated code; the kernel itself
is compiled at install), two thirds of a first fit. The model around the kernel is small and
always of one form, so it is written here once, by hand, and compiled at install like the kernel:

* the priors of the free variables on their unconstrained scale, with the log-Jacobians of the
  log transforms (:func:`prior_logp`; each distribution's formula and constants come from its
  owner, :func:`bayeslmm.priors.density_terms`);
* the map from the unconstrained vector to the kernel's parameters (:func:`unpack`): the fixed
  effects ``b = M (Intercept_c, beta)`` (the centring map of
  :func:`bayeslmm.paths.blocks.fixed_effects`), the SDs ``exp(x)``, the LKJ Cholesky factors from
  the partial correlations ``tanh(x)`` (the row recursion of
  :func:`bayeslmm.paths.blocks.lkj_cholesky`) and ``sigma = exp(x)``; and its reverse-mode
  derivative (:func:`pullback`);
* the kernel (:func:`bayeslmm.paths.collapsed_kernel.one_factor_kernel`) for the likelihood.

Nothing is rebuilt from rules: :func:`density_layout` reads the model as
:mod:`bayeslmm.paths.blocks` built it (each RV's priors and each parameter's source elements are
tagged on the graph) and returns None, so that PyMC's own function is used, for anything it does
not know. The function is PyMC's ``logp_dlogp`` in value and gradient (tests/test_collapsed_density.py
checks every prior distribution, vector and mixed priors, one or several correlated blocks, known
standard errors, with and without an intercept, at random points), and it is handed to PyMC's own
NUTS (:func:`bayeslmm.sampling.laplace_start`), so sampling is PyMC's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..cachedir import cached_njit
from ..priors import DENSITY_CPC, DENSITY_GAMMA, DENSITY_NORMAL, DENSITY_STUDENTT, density_terms
from .collapsed_kernel import kernel_data, one_factor_kernel

__all__ = ["prior_logp", "unpack", "pullback", "one_factor_logp_dlogp", "DensityLayout", "density_layout",
           "LogpDlogp", "one_factor_density", "compile_density"]

LOG2 = float(np.log(2.0))
_NORMAL, _STUDENTT, _GAMMA, _CPC = DENSITY_NORMAL, DENSITY_STUDENTT, DENSITY_GAMMA, DENSITY_CPC


@cached_njit(nogil=True, error_model="numpy")
def prior_logp(x, code, par, logt, g):
    """Sum of the priors' log-densities at the unconstrained ``x`` (log-Jacobians included); adds
    the gradient to ``g``. ``code``/``par`` per element as :func:`bayeslmm.priors.density_terms`."""
    lp = 0.0
    for k in range(x.shape[0]):
        y = x[k]
        v = np.exp(y) if logt[k] else y
        c = code[k]
        mu, shape, scale, const = par[k, 0], par[k, 1], par[k, 2], par[k, 3]
        if c == _NORMAL:
            r = (v - mu) / scale
            lpk = const - 0.5 * r * r
            dv = -r / scale
        elif c == _STUDENTT:
            r = (v - mu) / scale
            lpk = const - 0.5 * (shape + 1.0) * np.log1p(r * r / shape)
            dv = -(shape + 1.0) * r / (scale * (shape + r * r))
        elif c == _GAMMA:
            lv = y if logt[k] else np.log(v)
            lpk = const + (shape - 1.0) * lv - scale * v
            dv = (shape - 1.0) / v - scale
        else:                           # _CPC: partial correlation on the atanh scale
            a = abs(v)
            lpk = shape * 2.0 * (LOG2 - a - np.log1p(np.exp(-2.0 * a))) + const
            dv = -2.0 * shape * np.tanh(v)
        if logt[k]:
            lpk += y
            g[k] += dv * v + 1.0
        else:
            g[k] += dv
        lp += lpk
    return lp


@cached_njit(nogil=True, error_model="numpy")
def unpack(x, fix_idx, M, sd_idx, blocks, cpc_idx, aux_idx):
    """``(b, sd, C_chol, aux)`` from the unconstrained ``x``; ``aux`` is a 0-d array (1 when
    ``aux_idx`` < 0). ``blocks`` rows are ``(first term, size, offset in cpc_idx)``."""
    p = M.shape[0]
    q = sd_idx.shape[0]
    b = np.zeros(p)
    for r in range(p):
        acc = 0.0
        for c in range(fix_idx.shape[0]):
            acc += M[r, c] * x[fix_idx[c]]
        b[r] = acc
    sd = np.empty(q)
    for i in range(q):
        sd[i] = np.exp(x[sd_idx[i]])
    Cc = np.eye(q)
    for bl in range(blocks.shape[0]):
        s0, n, k = blocks[bl, 0], blocks[bl, 1], blocks[bl, 2]
        for i in range(1, n):
            ss = 0.0
            for j in range(i):
                lij = np.tanh(x[cpc_idx[k]]) * np.sqrt(1.0 - ss)
                Cc[s0 + i, s0 + j] = lij
                ss += lij * lij
                k += 1
            Cc[s0 + i, s0 + i] = np.sqrt(1.0 - ss)
    aux = np.ones(())
    if aux_idx >= 0:
        aux[()] = np.exp(x[aux_idx])
    return b, sd, Cc, aux


@cached_njit(nogil=True, error_model="numpy")
def pullback(x, g, fix_idx, M, sd_idx, blocks, cpc_idx, aux_idx, sd, Cc, aux, gb, gsd, gC, gaux):
    """Add to ``g`` the gradient with respect to ``x`` of a function of :func:`unpack`'s outputs,
    given its gradients ``gb, gsd, gC, gaux`` with respect to them (reverse mode of the map)."""
    for c in range(fix_idx.shape[0]):
        acc = 0.0
        for r in range(M.shape[0]):
            acc += M[r, c] * gb[r]
        g[fix_idx[c]] += acc
    for i in range(sd_idx.shape[0]):
        g[sd_idx[i]] += gsd[i] * sd[i]
    if aux_idx >= 0:
        g[aux_idx] += gaux[()] * aux[()]
    for bl in range(blocks.shape[0]):
        s0, n, k0 = blocks[bl, 0], blocks[bl, 1], blocks[bl, 2]
        for i in range(1, n):
            # row i: L_ij = z_j w_j, w_j = sqrt(1 - s_j), s_j+1 = s_j + L_ij^2, L_ii = sqrt(1 - s_i)
            k = k0 + (i * (i - 1)) // 2
            gs = -gC[s0 + i, s0 + i] / (2.0 * Cc[s0 + i, s0 + i])       # adjoint of s_i
            ss = np.empty(i)
            acc = 0.0
            for j in range(i):
                ss[j] = acc
                lij = Cc[s0 + i, s0 + j]
                acc += lij * lij
            for j in range(i - 1, -1, -1):
                z = np.tanh(x[cpc_idx[k + j]])
                w = np.sqrt(1.0 - ss[j])
                lij = Cc[s0 + i, s0 + j]
                gl = gC[s0 + i, s0 + j] + 2.0 * lij * gs
                g[cpc_idx[k + j]] += gl * w * (1.0 - z * z)
                gs += gl * z * (-0.5 / w)
    return g


@cached_njit(nogil=True, error_model="numpy")
def one_factor_logp_dlogp(x, code, par, logt, fix_idx, M, sd_idx, blocks, cpc_idx, aux_idx, const, grad, w,
                          b0, ZtZ, ZtX, Zte, XtX, Xte, ete, n_obs):
    """Log-density and gradient of the one-factor collapsed Gaussian model at ``x`` (PyMC's
    raveled unconstrained values); the arguments after ``x`` are a :class:`DensityLayout`'s
    fields, ``grad`` (0-d integer 1), ``w`` (ones, one per group) and the kernel's data."""
    g = np.zeros(x.shape[0])
    lp = prior_logp(x, code, par, logt, g) + const
    b, sd, Cc, sigma = unpack(x, fix_idx, M, sd_idx, blocks, cpc_idx, aux_idx)
    lpj, gb, gsd, gC, gs = one_factor_kernel(grad, w, b, sd, Cc, sigma, b0, ZtZ, ZtX, Zte, XtX, Xte, ete, n_obs)
    for j in range(lpj.shape[0]):
        lp += lpj[j]
    pullback(x, g, fix_idx, M, sd_idx, blocks, cpc_idx, aux_idx, sd, Cc, sigma, gb, gsd, gC, gs)
    return lp, g


@dataclass(frozen=True)
class DensityLayout:
    """Where each part of the model sits in PyMC's raveled unconstrained vector (see :func:`unpack`)."""

    code: np.ndarray        # (P,) prior kernel per element
    par: np.ndarray         # (P, 4)
    logt: np.ndarray        # (P,) 1 where the element is log-transformed
    fix_idx: np.ndarray     # positions of (Intercept_c, beta...) behind M's columns
    M: np.ndarray           # (p, k): b = M x[fix_idx]
    sd_idx: np.ndarray      # (q,) positions of log sd
    blocks: np.ndarray      # (n_blocks, 3): first term, size, offset in cpc_idx
    cpc_idx: np.ndarray     # positions of the partial correlations, block by block, row-major
    aux_idx: int            # position of log sigma (or log phi); -1: fixed at 1
    const: float            # added to the log-density (known standard errors: -sum log s_i)
    sd_off: np.ndarray | None = None    # several factors: factor k's SDs are sd_idx[sd_off[k]:sd_off[k + 1]]
    blk_off: np.ndarray | None = None   # and its blocks blocks[blk_off[k]:blk_off[k + 1]]

    def args(self) -> tuple:
        return (self.code, self.par, self.logt, self.fix_idx, self.M, self.sd_idx, self.blocks, self.cpc_idx,
                self.aux_idx, self.const)


def _slices(point_map_info) -> dict[str, slice]:
    out, start = {}, 0
    for name, _, size, _ in point_map_info:
        out[name] = slice(start, start + size)
        start += size
    return out


def density_layout(model, point_map_info, factor: str | list[str], aux: str | None, likelihood: str,
                   const: float = 0.0) -> DensityLayout | None:
    """The layout of a collapsed ``model`` built by :mod:`bayeslmm.paths.blocks`, for the raveled
    vector described by ``point_map_info`` (PyMC's order); None when the model has anything the
    compiled density does not know (then PyMC's own function is used).

    ``factor``: the grouping factor, or a list of them (then ``sd_off``/``blk_off`` say which SDs
    and blocks are whose); ``likelihood``: the name of the model's one observed variable or
    potential, which the kernel stands for.
    """
    from pymc.logprob.transforms import LogTransform
    from ..posterior import sd_var
    slices = _slices(point_map_info)
    if [v.name for v in model.observed_RVs + model.potentials] != [likelihood]:
        return None
    P = sum(s.stop - s.start for s in slices.values())
    code, par, logt = np.zeros(P, dtype=np.int64), np.zeros((P, 4)), np.zeros(P, dtype=np.int64)
    seen = np.zeros(P, dtype=bool)
    for rv in model.free_RVs:
        v = model.rvs_to_values[rv]
        priors = getattr(rv.tag, "priors", None)
        if v.name not in slices or priors is None:
            return None
        sl = slices[v.name]
        size = sl.stop - sl.start
        transform = model.rvs_to_transforms.get(rv)
        if transform is not None and not isinstance(transform, LogTransform):
            return None
        parts = [density_terms(priors[0], size)] if len(priors) == 1 else [density_terms(pr, 1) for pr in priors]
        if sum(len(c) for c, _, _ in parts) != size or any(lg != (transform is not None) for _, _, lg in parts):
            return None
        code[sl] = np.concatenate([c for c, _, _ in parts])
        par[sl] = np.concatenate([p for _, p, _ in parts])
        logt[sl] = transform is not None
        seen[sl] = True
    if not seen.all():
        return None

    def positions(sources, log: bool | None = None):
        out = []
        for rv, i in sources:
            if log is not None and isinstance(model.rvs_to_transforms.get(rv), LogTransform) != log:
                raise LookupError
            out.append(slices[model.rvs_to_values[rv].name].start + i)
        return np.array(out, dtype=np.int64)

    try:
        M, fixed = model["b"].tag.affine
        fix_idx = positions(fixed, log=False)
        sd_idx, sd_off, blocks, blk_off, cpc = [], [0], [], [0], []
        for f in ([factor] if isinstance(factor, str) else factor):
            sd_idx.extend(positions(model[sd_var(f)].tag.sources, log=True))
            sd_off.append(len(sd_idx))
            cor = model.named_vars.get(f"cor_{f}")
            for block, rv in (getattr(cor.tag, "blocks") if cor is not None else []):
                n = len(block)
                if tuple(block) != tuple(range(block[0], block[0] + n)):
                    return None
                blocks.append((block[0], n, len(cpc)))
                cpc.extend(positions([(rv, i) for i in range(n * (n - 1) // 2)], log=False))
            blk_off.append(len(blocks))
        aux_idx = int(positions(model[aux].tag.sources, log=True)[0]) if aux and aux in model.named_vars else -1
    except (AttributeError, KeyError, LookupError):
        return None
    return DensityLayout(code, par, logt, fix_idx, np.ascontiguousarray(M, dtype=float), np.array(sd_idx, dtype=np.int64),
                         np.array(blocks, dtype=np.int64).reshape(-1, 3), np.array(cpc, dtype=np.int64),
                         aux_idx, float(const), np.array(sd_off, dtype=np.int64), np.array(blk_off, dtype=np.int64))


class LogpDlogp:
    """A compiled ``x -> (logp, dlogp)`` with the interface of PyMC's ``ValueGradFunction`` that
    NUTS uses (``pm.NUTS(logp_dlogp_func=...)``): raveled inputs, no extra variables.

    Results are remembered by the bytes of ``x`` (:data:`CACHE_SIZE` of them, then forgotten all at
    once): PyMC's NUTS starts every iteration by evaluating the point it accepted in the previous
    one, which it had already evaluated while building that tree: a quarter of all evaluations
    (a bernoulli GLMM, 20,000 rows, one chain of 1,000 + 1,000 iterations: 8,456 -> 6,458
    evaluations, sampling 10.8 -> 8.4 s). The function is deterministic, so a remembered result is
    the result (the same draws); the gradients handed out are never written to by PyMC.
    """

    _raveled_inputs = True
    dtype = "float64"
    trust_input = True

    def __init__(self, fn, args: tuple):
        self._fn, self._args = fn, args
        self._extra_vars_shared = {}
        self._seen = {}

    def _pytensor_function(self, x):
        key = x.tobytes()
        got = self._seen.get(key)
        if got is None:
            if len(self._seen) >= CACHE_SIZE:
                self._seen.clear()
            got = self._seen[key] = self._fn(x, *self._args)
        return got

    def set_extra_values(self, extra_vars) -> None:
        pass

    def __call__(self, q, extra_vars=None):
        return self._pytensor_function(np.ascontiguousarray(getattr(q, "data", q), dtype=np.float64))

    def __getstate__(self):
        return {"_fn": self._fn, "_args": self._args, "_extra_vars_shared": {}, "_seen": {}}


#: evaluations remembered by :class:`LogpDlogp` (a NUTS tree has at most 2^10 leapfrog steps by default)
CACHE_SIZE = 2048


def one_factor_density(model, stats, factor: str):
    """``point_map_info -> LogpDlogp or None`` for a one-factor collapsed Gaussian ``model`` built
    from ``stats`` (:func:`bayeslmm.paths.collapsed.build_collapsed_model`)."""
    def make(point_map_info):
        const = -float(np.sum(stats.log_se)) if stats.known_scale else 0.0
        layout = density_layout(model, point_map_info, factor, None if stats.known_scale else "sigma", "y_marginal",
                                const)
        if layout is None:
            return None
        data = [np.ascontiguousarray(a, dtype=np.float64) for a in kernel_data(stats)]
        return LogpDlogp(one_factor_logp_dlogp, layout.args() + (np.array(1), np.ones(len(data[-1])), *data))
    return make


def compile_density() -> float:
    """Compile :func:`one_factor_logp_dlogp` now (numba caches it); returns the seconds. Run by
    ``make install`` with the kernel, so that no fit waits for it."""
    import time
    t0 = time.perf_counter()
    J, q, p = 2, 2, 1
    layout = DensityLayout(np.array([0, 1, 2, 3, 1, 2]), np.ones((6, 4)), np.array([0, 0, 1, 1, 0, 1]),
                           np.array([0, 1]), np.eye(p, 2), np.array([2, 3]), np.array([[0, 2, 0]]), np.array([4]),
                           5, 0.0)
    one_factor_logp_dlogp(np.zeros(6), *layout.args(), np.array(1), np.ones(J), np.zeros(p),
                          np.ones((q, q, J)), np.zeros((q, p, J)), np.zeros((q, J)), np.ones((p, p, J)),
                          np.zeros((p, J)), np.ones(J), np.ones(J))
    return time.perf_counter() - t0
