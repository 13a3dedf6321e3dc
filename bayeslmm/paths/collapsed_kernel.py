"""The one-factor collapsed Gaussian log-density and its gradient as one compiled kernel.

The fast case of :mod:`bayeslmm.paths.collapsed`. With a single grouping factor (any number
of correlated and uncorrelated terms on it) the marginal covariance is block-diagonal over groups,

    V_j = sigma^2 I + Z_j D Z_j',   D = T T',   T = diag(sd) C_chol,

where ``C_chol`` is the Cholesky factor of the terms' correlation matrix (block-diagonal; the
identity where terms are uncorrelated). Per group, with r_j = y_j - X_j b, A_j = I + T'Z_j'Z_j T /
sigma^2 = R_j R_j' and u_j = T'Z_j'r_j:

    log p(y_j) = -1/2 [n_j log(2 pi sigma^2) + 2 sum log diag(R_j) + (r_j'r_j - u_j'A_j^-1 u_j / sigma^2) / sigma^2].

Working with T instead of D^-1 keeps the algebra finite at sd = 0 (the boundary that variance
components often sit near). The gradient uses the standard identities
d/db = X'V^-1 r, d/dD = 1/2 (Z'V^-1 r r'V^-1 Z - Z'V^-1 Z), d/dsigma^2 = 1/2 (r'V^-2 r - tr V^-1),
each written with the same per-group sufficient statistics, so one evaluation costs O(J q^3 + J q p
+ J p^2) whatever the number of rows.

**Why a hand-written kernel**: the same algebra as a PyTensor graph (:func:`bayeslmm.paths.collapsed.
collapsed_logp_graph`, still used for nested factors) compiles in ~20 s with a cold cache, most of
it numba typing ~150 graph nodes and its ``Dot`` ops; this kernel is one numba function (~2 s
cold, cached on disk afterwards) and leaves the rest of the model graph as small as bambi's. It is
checked against the dense multivariate-normal density and against the graph's automatic gradient
(tests/test_collapsed.py).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numba
import numpy as np
import pytensor.tensor as pt
from pytensor.gradient import disconnected_type
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.link.numba.dispatch.basic import register_funcify_default_op_cache_key

from ..cachedir import cached_njit

__all__ = ["one_factor_logp", "one_factor_kernel"]

LOG_2PI = float(np.log(2.0 * np.pi))


_cached_njit = cached_njit      # numba.njit(cache=True) caching in the user's folder (bayeslmm.cachedir)


@_cached_njit(nogil=True, error_model="numpy")
def _minus_product(base, M, d):
    """base[k, j] - sum_m M[k, m, j] d[m]: a per-group matrix-vector product, group axis last."""
    out = base.copy()
    for k in range(M.shape[0]):
        for m in range(M.shape[1]):
            dm = d[m]
            for j in range(M.shape[2]):
                out[k, j] -= M[k, m, j] * dm
    return out


@_cached_njit(nogil=True, error_model="numpy")
def one_factor_kernel(grad, w, b, sd, Cc, sigma, b0, ZtZ, ZtX, Zte, XtX, Xte, ete, n_obs):
    """Per-group log-densities and the w-weighted gradient (numba; see the module docstring).

    The statistics are stored group-axis last (``ZtZ`` (q, q, J), ``ZtX`` (q, p, J), ``Zte``
    (q, J), ``XtX`` (p, p, J), ``Xte`` (p, J)) so that every inner loop runs over the J groups
    and vectorises; the small-matrix algebra is written out over the outer (q, p) indices.

    Returns ``(lp (J,), d/db (p,), d/dsd (q,), d/dC_chol (q, q), d/dsigma ())``; the gradients are
    sum_j w_j d lp_j / d(.) when ``grad`` (a 0-d integer array) is nonzero, else zeros (``w`` is
    then ignored). A 0-d array rather than a bool, so that numba compiles one specialisation for
    both uses.
    """
    q, p, J = ZtX.shape
    want_grad = grad[()] != 0
    s2 = sigma[()] * sigma[()]
    is2 = 1.0 / s2
    log_s2 = np.log(s2)
    d = b - b0
    T = np.empty((q, q))
    for i in range(q):
        for k in range(q):
            T[i, k] = sd[i] * Cc[i, k]
    # r'r, X'r and Z'r per group, around the least-squares offset b0 (r = e0 - X d)
    Xr = _minus_product(Xte, XtX, d)
    Ztr = _minus_product(Zte, ZtX, d)
    rtr = ete.copy()
    for k in range(p):
        dk = d[k]
        for j in range(J):
            rtr[j] -= dk * (Xte[k, j] + Xr[k, j])
    # A = I + T'Z'Z T / s2 = R R' (lower triangle only), log|A|
    ZT = np.zeros((q, q, J))
    for i in range(q):
        for k in range(q):
            for m in range(q):
                t = T[m, k]
                for j in range(J):
                    ZT[i, k, j] += ZtZ[i, m, j] * t
    R = np.zeros((q, q, J))
    for i in range(q):
        for k in range(i + 1):
            for m in range(q):
                t = T[m, i] * is2
                for j in range(J):
                    R[i, k, j] += t * ZT[m, k, j]
    detA = np.ones(J)
    for i in range(q):
        for k in range(i + 1):
            for j in range(J):
                v = R[i, k, j] + (1.0 if i == k else 0.0)
                for m in range(k):
                    v -= R[i, m, j] * R[k, m, j]
                if i == k:
                    R[i, i, j] = np.sqrt(v)
                    detA[j] *= v
                else:
                    R[i, k, j] = v / R[k, k, j]
    # u = T'Z'r; a = A^-1 u by two triangular solves
    a = np.zeros((q, J))
    for i in range(q):
        for m in range(q):
            t = T[m, i]
            for j in range(J):
                a[i, j] += t * Ztr[m, j]
    u = a.copy()
    for i in range(q):
        for j in range(J):
            v = a[i, j]
            for m in range(i):
                v -= R[i, m, j] * a[m, j]
            a[i, j] = v / R[i, i, j]
    for i in range(q - 1, -1, -1):
        for j in range(J):
            v = a[i, j]
            for m in range(i + 1, q):
                v -= R[m, i, j] * a[m, j]
            a[i, j] = v / R[i, i, j]
    ua = np.zeros(J)
    for i in range(q):
        for j in range(J):
            ua[j] += u[i, j] * a[i, j]
    lp = np.empty(J)
    for j in range(J):
        lp[j] = -0.5 * (n_obs[j] * (LOG_2PI + log_s2) + np.log(detA[j]) + (rtr[j] - ua[j] * is2) * is2)
    gb = np.zeros(p)
    gsd = np.zeros(q)
    gC = np.zeros((q, q))
    gsigma = np.zeros(())
    if not want_grad:
        return lp, gb, gsd, gC, gsigma
    # c = T a = T A^-1 T' Z'r
    c = np.zeros((q, J))
    for i in range(q):
        for k in range(q):
            t = T[i, k]
            for j in range(J):
                c[i, j] += t * a[k, j]
    # d/db = X'V^-1 r = (X'r - X'Z c / s2) / s2
    for k in range(p):
        acc = 0.0
        for j in range(J):
            v = Xr[k, j]
            for i in range(q):
                v -= ZtX[i, k, j] * c[i, j] * is2
            acc += w[j] * v
        gb[k] = acc * is2
    # P = T A^-1 T' = B'B with B = R^-1 T'
    B = np.empty((q, q, J))
    for k in range(q):
        for i in range(q):
            for j in range(J):
                v = T[k, i]
                for m in range(i):
                    v -= R[i, m, j] * B[m, k, j]
                B[i, k, j] = v / R[i, i, j]
    P = np.zeros((q, q, J))
    for i in range(q):
        for k in range(q):
            for m in range(q):
                for j in range(J):
                    P[i, k, j] += B[m, i, j] * B[m, k, j]
    PZ = np.zeros((q, q, J))          # P Z'Z
    for i in range(q):
        for k in range(q):
            for m in range(q):
                for j in range(J):
                    PZ[i, k, j] += P[i, m, j] * ZtZ[m, k, j]
    # Z'V^-1 r = (Z'r - Z'Z c / s2) / s2
    Vr = np.empty((q, J))
    for i in range(q):
        for j in range(J):
            v = Ztr[i, j]
            for m in range(q):
                v -= ZtZ[i, m, j] * c[m, j] * is2
            Vr[i, j] = v * is2
    # d/dD = 1/2 sum_j w_j (Z'V^-1 r r'V^-1 Z - Z'V^-1 Z), Z'V^-1 Z = (Z'Z - Z'Z P Z'Z / s2) / s2
    G = np.zeros((q, q))
    for i in range(q):
        for k in range(q):
            acc = 0.0
            for j in range(J):
                ZPZ = 0.0
                for m in range(q):
                    ZPZ += ZtZ[i, m, j] * PZ[m, k, j]
                W = (ZtZ[i, k, j] - ZPZ * is2) * is2
                acc += w[j] * (Vr[i, j] * Vr[k, j] - W)
            G[i, k] = 0.5 * acc
    # d/ds2 = 1/2 sum_j w_j (r'V^-2 r - tr V^-1)
    gs2 = 0.0
    for j in range(J):
        cZr = 0.0
        cZZc = 0.0
        trPZ = 0.0
        for i in range(q):
            cZr += c[i, j] * Ztr[i, j]
            trPZ += PZ[i, i, j]
            for m in range(q):
                cZZc += c[i, j] * ZtZ[i, m, j] * c[m, j]
        rV2r = (rtr[j] - 2.0 * cZr * is2 + cZZc * is2 * is2) * is2 * is2
        trV = (n_obs[j] - trPZ * is2) * is2
        gs2 += w[j] * 0.5 * (rV2r - trV)
    # chain rule: D = T T' (G symmetric) -> d/dT = 2 G T; T = diag(sd) C_chol; s2 = sigma^2
    for i in range(q):
        for k in range(q):
            v = 0.0
            for m in range(q):
                v += 2.0 * G[i, m] * T[m, k]
            gsd[i] += v * Cc[i, k]
            gC[i, k] = v * sd[i]
    gsigma[()] = 2.0 * sigma[()] * gs2
    return lp, gb, gsd, gC, gsigma


N_PARAMS = 4          # b, sd, C_chol, sigma; after (grad, w), before the eight data arrays
FIRST = 2


class OneFactorMarginal(Op):
    """``one_factor_kernel`` as a PyTensor Op: inputs (grad, w, b, sd, C_chol, sigma, *data),
    outputs (lp, d/db, d/dsd, d/dC_chol, d/dsigma).

    The log-density is output 0 of an application with ``grad = 0``; its gradient is outputs 1-4 of
    a second application of the same Op with ``grad = 1`` and ``w`` = the incoming output gradient.
    One Op type for both means one compiled numba wrapper.

    ``linked``: False (for PyMC's NUTS) calls the kernel through numba's object mode, so that it
    is not re-linked into every enclosing compiled function (seconds with a cold cache); True
    (for nutpie) links it, because nutpie evaluates the model from Rust threads, which would wait
    for the GIL at every object-mode call.
    """

    __props__ = ("linked",)

    def __init__(self, linked: bool = False):
        self.linked = bool(linked)

    def make_node(self, *inputs):
        inputs = [pt.as_tensor_variable(x) for x in inputs]
        outs = [pt.vector(dtype="float64", shape=(None,))] + [inputs[FIRST + k].type() for k in range(N_PARAMS)]
        return Apply(self, inputs, outs)

    def infer_shape(self, node, shapes):
        # one log-density per group (the length of n_obs, the last input); gradients as parameters
        return [(shapes[-1][0],)] + [shapes[FIRST + k] for k in range(N_PARAMS)]

    def perform(self, node, inputs, output_storage):
        res = _call_kernel(np.asarray(inputs[0], dtype=np.int64), *[np.asarray(x, dtype=float) for x in inputs[1:]])
        for k, out in enumerate(res):
            output_storage[k][0] = out

    def connection_pattern(self, node):
        # the log-density depends on the parameters; the gradient outputs also on the weights
        return [[k < FIRST + N_PARAMS and (k >= FIRST or o > 0) for o in range(1 + N_PARAMS)]
                for k in range(len(node.inputs))]

    def pullback(self, inputs, outputs, output_grads):
        g = output_grads[0]
        if any(not isinstance(og.type, type(disconnected_type)) for og in output_grads[1:]):
            raise NotImplementedError("second derivatives of the one-factor marginal log-density")
        grads = self(pt.constant(np.array(1)), g, *inputs[FIRST:])[1:]
        return ([disconnected_type(), disconnected_type()] + list(grads)
                + [disconnected_type() for _ in inputs[FIRST + N_PARAMS:]])


_F64 = [numba.types.Array(numba.types.float64, nd, "C") for nd in range(3)]
_OUT_TYPE = numba.types.Tuple([_F64[1], _F64[1], _F64[1], _F64[2], _F64[0]])


def _writable(args) -> list[np.ndarray]:
    """Read-only arrays (PyTensor constants) would be a second numba specialisation: copy them."""
    return [a if a.flags.writeable else a.copy() for a in args]


def _call_kernel(*args):
    return one_factor_kernel(*_writable(args))


def compile_kernel() -> float:
    """Compile the kernel now (numba caches it in the user's cache folder); returns the seconds.

    ``make install`` runs this once, as building a compiled extension would, so the first fit
    does not wait for it. The arguments have the types every later call has.
    """
    import time
    t0 = time.perf_counter()
    J, q, p = 2, 1, 1
    one_factor_kernel(np.array(1), np.ones(J), np.zeros(p), np.ones(q), np.eye(q), np.array(1.0),
                      np.zeros(p), np.ones((q, q, J)), np.zeros((q, p, J)), np.zeros((q, J)),
                      np.ones((p, p, J)), np.zeros((p, J)), np.ones(J), np.ones(J))
    return time.perf_counter() - t0


@_cached_njit()
def _op_impl(grad, w, b, sd, Cc, sigma, b0, ZtZ, ZtX, Zte, XtX, Xte, ete, n_obs):
    # The kernel runs behind an object-mode call instead of being linked into the model's compiled
    # function: numba re-links and re-optimises a callee's machine code at every enclosing level
    # (here three: PyTensor's cache wrapper and the two of the model function), which cost ~2.5 s
    # with a cold cache; the call costs ~10 us more, negligible beside PyMC's own per-step work.
    with numba.objmode(out=_OUT_TYPE):
        out = _call_kernel(grad, w, b, sd, Cc, sigma, b0, ZtZ, ZtX, Zte, XtX, Xte, ete, n_obs)
    return out


# PyTensor caches compiled functions on disk under a key made of the Op's type and props; the
# hash of this file is added to it, so that an edited kernel never meets a stale cached wrapper.
_SOURCE_KEY = int(hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:15], 16)


@register_funcify_default_op_cache_key(OneFactorMarginal)
def _numba_one_factor(op, node, **kwargs):
    return (one_factor_kernel if op.linked else _op_impl), _SOURCE_KEY


def kernel_data(stats) -> list[np.ndarray]:
    """The kernel's data arguments from one-factor :class:`~bayeslmm.stats.GroupStats`:
    ``b0, ZtZ, ZtX, Zte, XtX, Xte, ete, n_obs`` with the group axis last (contiguous copies)."""
    def last(x):
        return np.ascontiguousarray(np.moveaxis(x, 0, -1))
    return [stats.b0, last(stats.ZtZ[0]), last(stats.ZtX[0]), last(stats.Zte[0]), last(stats.XtX),
            last(stats.Xte), stats.ete, stats.n_obs]


def one_factor_logp(b, sd, Cc, sigma, *data, linked: bool = False):
    """Per-group marginal log-densities (J,) as a PyTensor expression (differentiable once).

    ``data`` are the arrays of :func:`kernel_data` (as constants or shared variables); ``linked``
    see :class:`OneFactorMarginal`.
    """
    # Computed with the gradient for unit weights: when the log-density is summed (as in a model's
    # logp), the pullback's application below has the same inputs (its cotangent is ones of the
    # same shape) and PyTensor merges the two, so NUTS pays one kernel call per evaluation.
    w = pt.ones_like(data[-1])
    return OneFactorMarginal(linked)(pt.constant(np.array(1)), w, b, sd, Cc, sigma, *data)[0]

