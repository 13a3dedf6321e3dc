"""Exact collapsed Gaussian log-likelihood for crossed and multi-factor designs (numba + LAPACK).

The model, for K grouping factors (crossed, nested or both):

    y = X b + sum_k Z_k gamma_k + e,   gamma_k = (I_{J_k} kron T_k) z_k,   z ~ N(0, I),   e ~ N(0, sigma^2 I),

with T_k = diag(sd_k) C_k and C_k the lower Cholesky factor of factor k's term correlation matrix
(block-diagonal, the identity where terms are uncorrelated): the parameterisation of the one-factor
kernel (:mod:`bayeslmm.marginal_kernel`). With Lambda = blockdiag_k(I kron T_k), Z = [Z_1 .. Z_K],
C = Z'Z (Q x Q, Q = sum_k J_k q_k), r = y - X b, c = Z'r and

    A = I + Lambda' C Lambda / sigma^2 = L L',      u = Lambda' c,      a = A^-1 u,

the marginal density y ~ N(X b, sigma^2 I + Z Lambda Lambda' Z') is (Bates et al. 2015, eq. 14-34)

    log p(y) = -1/2 [n log(2 pi sigma^2) + log|A| + (r'r - u'a / sigma^2) / sigma^2],

finite at sd = 0 (then A = I). The gradient, with P = A^-1, v = Lambda a and
g = Z'V^-1 r = (c - C v / sigma^2) / sigma^2:

    d/dLambda  = (g a' - C Lambda P) / sigma^2          (only its diagonal q_k x q_k blocks are used)
    d/dsigma^2 = -1/2 [(n - Q + tr P) / sigma^2 - r'r / sigma^4 + (u'a + a'a) / sigma^6]
    d/db       = (X'r - (Z'X)' v / sigma^2) / sigma^2,

so the trace terms need P only on the sparsity pattern of C (a selected inverse), never all of it.

**The factorisation** (the blocked Cholesky of MixedModels.jl; Bates, Alday & Kokandakar 2025).
A factor's own block of C is block-diagonal (a row belongs to one level of each factor), so the
factor with the most effects (J_1 q_1) is eliminated block by block and the rest, Q_2 = Q - J_1 q_1
effects, is held dense:

    A = [[A11, A21'], [A21, A22]],  A11 = blockdiag_j L_j L_j',  W = A21 L11^-T,  S = A22 - W W' = L2 L2'.

S >= I (it is the inverse of a block of P <= I), so the dense Cholesky is always well conditioned.
The selected inverse comes from the same blocks: P22 = S^-1, P21 = -S^-1 W L11^-1 (on the pattern
of C21 = all of it when the design is fully crossed), diagonal blocks P11_j = L_j^-T (I + W_j'
S^-1 W_j) L_j^-1. One evaluation costs about 4 Q_2^2 Q_1 + Q_2^3 flops (two gemms, a potrf and a
inverse) plus O(Q_2 Q_1 q^2 + J_1 q_1^3), and never touches the n rows: everything starts from the
sufficient statistics of :func:`~.crossed_stats.crossed_stats`. With ``eliminate=False`` (the
"dense" variant) all Q effects go to the dense part. In balanced designs many eliminated levels
have equal Z'Z blocks and share L_j; then W W' and the gradient's coupling terms are sums over the
groups of precomputed Gram matrices, O(N_g q_1^2 Q_2^2) instead of O(Q_2^2 Q_1) (see
:class:`~.crossed_stats.CrossedStats`). All variants are exact; bench/crossed_probe.py
measures which is faster (the blocked one, on every design tried), and against a general sparse
factorisation (qdldl): faster on fully crossed designs, slower on sparsely crossed ones with
large factors (there the dense Schur complement, Q_2 x Q_2, is the limit: :attr:`CrossedStats.flops`).

**Implementation**: one numba call per evaluation (:func:`_kernel_nb`); the dense steps are
LAPACK/BLAS calls (dsyrk, dpotrf, dpotri of scipy's Cython interface, bound as numba external
functions; ``np.dot``: dgemm), the level-by-level work (the q x q blocks, Lambda, the
solves, the gradient assembly) numba loops; the GIL is released throughout. Every function is
cached on disk in the user's cache folder (:mod:`bayeslmm.cachedir`) and compiled at install by
:func:`compile_kernels`. An all-numpy version of the same algebra was 10-30x slower on a 60 x 80
design (hundreds of small array operations per call).

Group effects are drawn from their exact conditional: z | y ~ N(a / sigma^2, A^-1), gamma = Lambda z,
i.e. z = a / sigma^2 + L^-T eps with one blocked triangular solve per draw.
"""

from __future__ import annotations

import numpy as np
from llvmlite import binding
from numba import types
from numba.extending import get_cython_function_address

from .crossed_algebra import njit, _eliminate, _solve, _transforms
from .crossed_gradient import _gradient
from .crossed_stats import CrossedStats

__all__ = ["crossed_kernel", "crossed_logp", "pack_theta", "unpack_theta", "unpack_data", "compile_kernel",
           "compile_kernels"]

LOG_2PI = float(np.log(2.0 * np.pi))


# --------------------------------------------------------------------------------------------
# Parameter vector: theta = [b (p), sd_0 .. sd_{K-1}, C_0 .. C_{K-1} (row-major), sigma]
# --------------------------------------------------------------------------------------------
def pack_theta(b, sds, Ccs, sigma) -> np.ndarray:
    """The kernel's flat parameter vector from b (p,), per-factor sd (q_k,) and C (q_k, q_k), sigma."""
    return np.concatenate([np.asarray(b, float).ravel()] + [np.asarray(s, float).ravel() for s in sds]
                          + [np.asarray(C, float).ravel() for C in Ccs] + [[float(sigma)]])


def unpack_theta(theta, p: int, q) -> tuple:
    """Inverse of :func:`pack_theta`: ``(b, [sd_k], [C_k], sigma)``."""
    theta = np.asarray(theta)
    b = theta[:p]
    pos, sds, Ccs = p, [], []
    for qk in q:
        sds.append(theta[pos:pos + qk])
        pos += qk
    for qk in q:
        Ccs.append(theta[pos:pos + qk * qk].reshape(qk, qk))
        pos += qk * qk
    return b, sds, Ccs, theta[pos]


# --------------------------------------------------------------------------------------------
# The kernel: one call per NUTS step
# --------------------------------------------------------------------------------------------
def _lapack(module: str, name: str, nargs: int):
    """A BLAS/LAPACK routine of scipy's Cython interface as a numba external function (every
    argument a pointer, passed as an integer address).

    The symbol is registered with LLVM under a bayeslmm name at import, so compiled code that calls
    it can be cached on disk and reloaded. (Passing the routines as ctypes arguments instead cost
    ~45 us of dispatch each per call, more than the whole kernel on small designs.)"""
    sym = f"bayeslmm_{module}_{name}"
    binding.add_symbol(sym, get_cython_function_address(f"scipy.linalg.cython_{module}", name))
    return types.ExternalFunction(sym, types.void(*([types.intp] * nargs)))


# the kernel sees C-order arrays; to Fortran they are transposed, so its "U" is our lower triangle
_DPOTRF = _lapack("lapack", "dpotrf", 5)       # uplo, n, a, lda, info
_DPOTRI = _lapack("lapack", "dpotri", 5)
_DSYRK = _lapack("blas", "dsyrk", 10)          # uplo, trans, n, k, alpha, a, lda, beta, c, ldc


@njit
def _syrk_potrf(S, W):
    """S <- chol(S - W W') in place (lower triangle of the C-order S); returns LAPACK's info.

    To Fortran a C-order array is its transpose: S is symmetric, W (Q2 x Q1) is A = W' (Q1 x Q2),
    so the call is syrk("U", "T"): C <- C - A'A, and "U" in Fortran is our lower triangle. The
    scalar arguments live in three small arrays that are read after the calls, so that numba keeps
    them alive while LAPACK holds their addresses.
    """
    n, k = S.shape[0], W.shape[1]
    ints = np.array([n, k, 0], dtype=np.int32)          # n, k (= lda), info
    chars = np.array([85, 84], dtype=np.uint8)          # "U", "T"
    dbl = np.array([-1.0, 1.0])                          # alpha, beta
    pi, pc, pd = ints.ctypes.data, chars.ctypes.data, dbl.ctypes.data
    if k:
        _DSYRK(pc, pc + 1, pi, pi + 4, pd, W.ctypes.data, pi + 4, pd + 8, S.ctypes.data, pi)
    _DPOTRF(pc, pi, S.ctypes.data, pi, pi + 8)
    return ints[2] + 0 * (chars[0] + chars[1]) + int(0.0 * (dbl[0] + dbl[1]))


@njit
def _potri(S):
    """S <- S^-1 in place from its Cholesky factor (lower triangle of C-order S), mirrored."""
    n = S.shape[0]
    ints = np.array([n, 0], dtype=np.int32)
    chars = np.array([85], dtype=np.uint8)
    _DPOTRI(chars.ctypes.data, ints.ctypes.data, S.ctypes.data, ints.ctypes.data, ints.ctypes.data + 4)
    for i in range(n):
        for j in range(i):
            S[j, i] = S[i, j]
    return ints[1] + 0 * chars[0]


@njit
def _factor_nb(theta, layout, blocks, D1, B, E, groups, gram):
    """Stage 1 and the dense Cholesky. Returns (ok, Ts, s2, L1i, R, logdet, BL, BR, W, L2, V) with
    L2 C-order, its lower triangle the factor (the upper one holds leftovers of S)."""
    K, p, k1 = layout[0], layout[1], layout[4]
    q = layout[5:5 + K]
    Ts = _transforms(theta, p, q)
    s2 = theta[theta.shape[0] - 1] ** 2
    L1, L1i, R, logdet, BL, BR, W, S, V = _eliminate(Ts, s2, k1, q[k1], D1, B, E, blocks, groups, gram)
    Q2, Q1 = S.shape[0], W.shape[1]
    ok = np.isfinite(logdet)
    if Q2 and ok:
        # S >= I in exact arithmetic; rounding breaks it only where sd / sigma is extreme (~1e7
        # and beyond, A's entries swamping its Schur complement): there is no density there
        ok = _syrk_potrf(S, W) == 0
        if ok:
            for i in range(Q2):
                logdet += 2.0 * np.log(S[i, i])
    return ok, Ts, s2, L1i, R, logdet, BL, BR, W, S, V


@njit
def unpack_data(ints, floats):
    """Views of the statistics packed by :meth:`CrossedStats.kernel_data`: (layout, blocks, b0, D1,
    B, E, ZtX, Zte, XtX, Xte, ete, groups, gram)."""
    K, p, n_elim, k1 = ints[0], ints[1], ints[3], ints[4]
    q, J = ints[5:5 + K], ints[5 + K:5 + 2 * K]
    nb, Ng = ints[5 + 2 * K], ints[6 + 2 * K]
    o = 7 + 2 * K
    blocks = ints[o:o + 3 * nb].reshape((nb, 3))
    o += 3 * nb
    q1 = q[k1]
    J1 = J[k1] if n_elim else 0
    groups = ints[o:o + (J1 if Ng else 0)]
    Q = 0
    for k in range(K):
        Q += J[k] * q[k]
    Q1 = J1 * q1
    Q2 = Q - Q1
    f = 0
    b0 = floats[f:f + p]
    f += p
    D1 = floats[f:f + J1 * q1 * q1].reshape((J1, q1, q1))
    f += J1 * q1 * q1
    B = floats[f:f + Q2 * Q1].reshape((Q2, Q1))
    f += Q2 * Q1
    E = floats[f:f + Q2 * Q2].reshape((Q2, Q2))
    f += Q2 * Q2
    ZtX = floats[f:f + Q * p].reshape((Q, p))
    f += Q * p
    Zte = floats[f:f + Q]
    f += Q
    XtX = floats[f:f + p * p].reshape((p, p))
    f += p * p
    Xte = floats[f:f + p]
    f += p
    ete = floats[f]
    f += 1
    gram = floats[f:f + Ng * q1 * q1 * Q2 * Q2].reshape((Ng, q1, q1, Q2, Q2))
    return ints[:5 + 2 * K], blocks, b0, D1, B, E, ZtX, Zte, XtX, Xte, ete, groups, gram


@njit
def _kernel_nb(grad, w, theta, ints, floats):
    layout, blocks, b0, D1, B, E, ZtX, Zte, XtX, Xte, ete, groups, gram = unpack_data(ints, floats)
    P = theta.shape[0]
    K, p, n, k1 = layout[0], layout[1], layout[2], layout[4]
    q = layout[5:5 + K]
    ok, Ts, s2, L1i, R, logdet, BL, BR, W, L2, V = _factor_nb(theta, layout, blocks, D1, B, E, groups, gram)
    if not ok:
        return -np.inf, np.zeros(P)
    lp, a, u, c, Xr, rr = _solve(theta, Ts, s2, n, k1, q[k1], L1i, R, B, L2, blocks, b0, ZtX, Zte, XtX, Xte, ete)
    lp -= 0.5 * logdet
    if not np.isfinite(lp):
        return -np.inf, np.zeros(P)
    if not grad:
        return lp, np.zeros(P)
    Q2 = L2.shape[0]
    Sinv = L2                                      # overwritten: S^-1
    if Q2:
        _potri(Sinv)
    M = np.dot(Sinv, W) if Q2 and W.shape[1] else np.zeros(W.shape)
    return lp, _gradient(w, theta, Ts, s2, n, p, q, k1, q[k1], blocks, D1, B, E, ZtX, L1i, R, BL, BR, Sinv,
                         M, a, u, c, Xr, rr, groups, gram, V)


def crossed_kernel(grad, w, theta, ints, floats):
    """Collapsed log-density and ``w`` x its gradient with respect to ``theta`` (one call).

    Parameters
    ----------
    grad : bool or 0-d int ; w : cotangent of the log-density (float)
    theta : (P,) parameters, see :func:`pack_theta`
    ints, floats : :meth:`CrossedStats.kernel_data`

    Returns
    -------
    (lp, gtheta) : float and (P,) array (zeros when not ``grad``). ``(-inf, zeros)`` where the
    density cannot be evaluated (non-finite parameters, or sd / sigma so extreme that the Schur
    complement loses positive definiteness in floating point): NUTS then rejects the step.

    The whole evaluation is one numba call (the GIL is released throughout, LAPACK included).
    """
    theta = np.array(theta, dtype=np.float64)                 # a writable contiguous copy
    if not np.all(np.isfinite(theta)):
        return -np.inf, np.zeros_like(theta)
    return _kernel_nb(bool(grad), float(w), theta, _readonly(ints, np.int64), _readonly(floats, np.float64))


def _readonly(x, dtype):
    """A read-only contiguous view (no copy when x already is one): numba types read-only and
    writable arrays apart, and compiling the kernel twice would double its cold start."""
    x = np.ascontiguousarray(x, dtype=dtype)
    if x.flags.writeable:
        x = x.view()
        x.flags.writeable = False
    return x


def crossed_logp(st: CrossedStats, b, sds, Ccs, sigma, grad: bool = False):
    """Marginal log-density log N(y | X b, sigma^2 I + Z Lambda Lambda' Z') and its gradient.

    Parameters
    ----------
    st : CrossedStats
    b : (p,) ; sds : per factor (q_k,) ; Ccs : per factor (q_k, q_k) lower Cholesky factors of the
        term correlations ; sigma : residual SD.
    grad : also return the gradient.

    Returns
    -------
    lp : float, or ``(lp, d/db (p,), [d/dsd_k (q_k,)], [d/dC_k (q_k, q_k)], d/dsigma)`` with grad.
    ``d/dC_k`` is the full q_k x q_k array (entries outside the lower triangle or the correlation
    blocks are the derivative had they been free; the caller's graph keeps the ones that are).

    Examples
    --------
    >>> import numpy as np
    >>> from bayeslmm.paths.crossed_stats import Factor, crossed_stats
    >>> g = np.array([0, 0, 1, 1]); h = np.array([0, 1, 0, 1]); one = np.ones((4, 1))
    >>> st = crossed_stats(np.array([1., 2., 3., 5.]), one, [Factor("s", g, one, 2), Factor("i", h, one, 2)])
    >>> lp = crossed_logp(st, [2.5], [[1.0], [0.5]], [np.eye(1), np.eye(1)], 1.0)
    >>> V = np.eye(4) + (g[:, None] == g) + 0.25 * (h[:, None] == h)      # sigma^2 I + Z G Z'
    >>> from scipy.stats import multivariate_normal
    >>> bool(np.isclose(lp, multivariate_normal(np.full(4, 2.5), V).logpdf([1., 2., 3., 5.])))
    True
    """
    theta = pack_theta(b, sds, Ccs, sigma)
    lp, g = crossed_kernel(grad, 1.0, theta, *st.kernel_data())
    if not grad:
        return float(lp)
    gb, gsds, gCs, gsig = unpack_theta(g, st.p, st.q)
    return float(lp), gb, gsds, gCs, float(gsig)


def compile_kernels() -> float:
    """Compile the kernel and the draw functions now (numba caches them in the user's cache folder,
    :mod:`bayeslmm.cachedir`); returns the seconds. ``make install`` runs it, so that the first
    crossed fit does not wait for it (about a minute on a slow machine)."""
    import time

    from .crossed_draws import conditional_effects
    from .crossed_stats import Factor, crossed_stats
    t0 = time.perf_counter()
    g, h = np.array([0, 0, 1, 1, 2]), np.array([0, 1, 0, 1, 1])
    Z = np.column_stack([np.ones(5), np.arange(5.0)])
    facs = [Factor("a", g, Z, 3), Factor("b", h, Z[:, :1], 2)]
    for group in (False, True):
        st = crossed_stats(np.arange(5.0), Z, facs, group_levels=group)
        crossed_logp(st, [0.0, 0.0], [[1.0, 1.0], [1.0]], [np.eye(2), np.eye(1)], 1.0, grad=True)
        conditional_effects(st, [0.0, 0.0], [[1.0, 1.0], [1.0]], [np.eye(2), np.eye(1)], 1.0, np.zeros(st.Q))
    return time.perf_counter() - t0


compile_kernel = compile_kernels      # the name of the one-factor kernel's hook
