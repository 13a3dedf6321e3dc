"""The collapsed GLMM path: each group's random effects integrated out by adaptive Gauss-Hermite quadrature.

For a non-Gaussian family with one grouping factor and q <= 3 terms on it, the likelihood of
group j is the q-dimensional integral

    L_j(b, Sigma, phi) = int prod_i p(y_ij | offset_ij + x_ij'b + z_ij'u) N(u | 0, Sigma) du,

computed by adaptive Gauss-Hermite quadrature (AGHQ) at each group's mode
(:mod:`bayeslmm.paths.quadrature_kernel`), with its exact gradient, in one compiled kernel that
NUTS calls once per step (:mod:`bayeslmm.paths.quadrature_op`). NUTS then samples only b, the
SDs, the correlations (and phi), and the group effects are drawn afterwards from their exact
conditional (:mod:`bayeslmm.paths.quadrature_draws`).

This module is the array-level entry point: :func:`prepare` sorts the rows by group once and
checks them; :func:`group_loglik` and :func:`group_loglik_grad` evaluate the kernel in numpy;
:func:`node_rule` builds the node sets (product Gauss-Hermite rules, and a 12-node rule of degree 7 for
two terms); :data:`DEFAULT_NODES` is the default number of
nodes per axis and why (measured in tests/test_quadrature.py); :func:`choose_n_nodes` picks it for a
data set; :func:`draw_group_effects` draws the group effects after sampling.

Families (``family``, ``link``): ``bernoulli`` / ``binomial`` (``trials``) with ``logit`` or
``probit``; ``poisson`` and ``negbinomial`` (dispersion ``phi``, Var = mu + mu^2 / phi) with
``log``. Offsets are added to the linear predictor. Student-t residuals do not fit this path: the
latent t scale mixture does not make a log-concave, low-dimensional integrand per group.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import gammaln

from ..errors import DataError, SpecError
from ..threads import cpu_count, map_in_threads

__all__ = ["FAMILIES", "applies", "QuadratureData", "NodeRule", "prepare", "gauss_hermite_rule", "node_rule",
           "symmetric_rule_2d_degree7", "default_nodes",
           "DEFAULT_NODES",
           "ERROR_TOL", "choose_n_nodes", "compile_kernels",
           "group_loglik", "group_loglik_grad", "draw_group_effects", "kernel_arrays", "node_table", "family_code",
           "MAX_Q"]

MAX_Q = 3

# the kernel's family/link codes (quadrature_families.py branches on them); defined here so that
# this module does not import numba
BINOMIAL_LOGIT = 0
BINOMIAL_PROBIT = 1
POISSON_LOG = 2
NEGBINOMIAL_LOG = 3

_CODES = {("bernoulli", "logit"): BINOMIAL_LOGIT, ("binomial", "logit"): BINOMIAL_LOGIT,
          ("bernoulli", "probit"): BINOMIAL_PROBIT, ("binomial", "probit"): BINOMIAL_PROBIT,
          ("poisson", "log"): POISSON_LOG, ("negbinomial", "log"): NEGBINOMIAL_LOG}
_DEFAULT_LINK = {"bernoulli": "logit", "binomial": "logit", "poisson": "log", "negbinomial": "log"}

#: Default nodes per axis by q (rules of degree 2k - 1, :func:`node_rule`); see :func:`default_nodes`.
DEFAULT_NODES = {1: 11, 2: 7, 3: 7}

#: The accuracy the defaults were chosen for: the SD, over the posterior, of the error of the total
#: log-likelihood. Reweighting a posterior by e^E moves a posterior mean by at most sd(E) posterior
#: SDs (Cov(g, E) <= sd(g) sd(E)), so 0.01 keeps the quadrature's bias under 1% of a posterior SD,
#: well below the Monte Carlo error of any posterior summary.
ERROR_TOL = 0.01


def default_nodes(q: int) -> int:
    """Nodes per axis used when none are given: 11 for one term, 7 for two or three (49 or 343 nodes).

    Chosen by a measured criterion (tests/test_quadrature.py, ``test_default_nodes_meet_the_bound``,
    and the study in its docstring): with draws of (b, sd, C) near the posterior, the SD of
    E = sum_j (log L_j by AGHQ - log L_j exact) is below :data:`ERROR_TOL` = 0.01 on every study
    design: bernoulli logit with SD 1 and 2.2, probit with SD 1.65, Poisson, binomial with trials,
    bernoulli and probit with two or three terms (SDs up to 1.5), groups of 1 to 50 rows, all-zero
    and all-one groups included. Two or three terms needed 7 per axis on bernoulli/probit groups of
    1-30 rows (5 gave 0.012-0.029), while binomial and count designs met the bound with 4. One node
    is the Laplace approximation, whose error SD was 0.1 to 0.8 on the same designs (biased
    variance components), which is why it is never the default. Eleven nodes for one term is also
    GLMMadaptive's default.

    The error of the total adds up over groups, so no fixed number bounds it for every data set:
    :func:`bayeslmm.paths.quadrature_nodes.auto_n_nodes` checks the candidates on the data before
    sampling (a second or two on these designs) and usually needs fewer nodes (7 sufficed for
    bernoulli groups of 50 rows, 4 for the negative binomial with two terms).
    """
    if not 1 <= q <= MAX_Q:
        raise SpecError(f"the quadrature path handles 1 to {MAX_Q} group-level terms per factor, got {q}; "
                        "use method='noncentred'")
    return DEFAULT_NODES[q]


def family_code(family: str, link: str | None = None) -> int:
    """The kernel's integer code of a family/link pair (SpecError for a pair that does not exist)."""
    link = _DEFAULT_LINK.get(family) if link is None else link
    try:
        return _CODES[(family, link)]
    except KeyError:
        ok = ", ".join(f"{f}/{l}" for f, l in _CODES)
        raise SpecError(f"family {family!r} with link {link!r} is not available on the quadrature path; "
                        f"available: {ok}") from None


#: the families whose likelihood the AGHQ kernel evaluates (Student-t: see the module docstring)
FAMILIES = ("bernoulli", "binomial", "poisson", "negbinomial")


def applies(family, design) -> tuple[bool, str]:
    """Whether the quadrature path applies to ``design`` with ``family`` (a :class:`Family`), and why."""
    if family.name not in FAMILIES:
        return False, f"family {family.name!r} has no collapsed likelihood"
    if getattr(design, "group_stats", None) is not None:
        return False, "the design holds per-group statistics, not rows"
    if len(design.factors) != 1:
        return False, (f"the quadrature path integrates one grouping factor; the model has "
                       f"{len(design.factors)}: the random effects are sampled")
    f = design.factors[0]
    if f.q > MAX_Q:
        return False, (f"{f.q} terms on {f.name} (the quadrature path handles 1 to {MAX_Q}): the random "
                       "effects are sampled")
    return True, (f"{family.name} ({family.link}) with one grouping factor ({f.name}, {f.q} term"
                  f"{'s' if f.q > 1 else ''}): each group's effects are integrated out by adaptive "
                  "Gauss-Hermite quadrature (nodes checked on the data: total log-likelihood error SD "
                  "<= 0.01) and drawn exactly afterwards")


# --------------------------------------------------------------------------------------------
# Nodes
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NodeRule:
    """A quadrature rule for the standard normal in q dimensions, exact for polynomials of degree
    2k - 1 (:func:`node_rule`).

    ``nodes`` (M, q); ``lwn`` (M,) = log W_k + z_k'z_k / 2 (the log weight with the
    standard-normal kernel divided out, as the kernel uses it); ``center`` the index of the node at
    the origin, or -1.
    """

    k: int
    q: int
    nodes: np.ndarray
    lwn: np.ndarray
    center: int


def _rule(k: int, q: int, nodes: np.ndarray, log_w: np.ndarray, center: int) -> NodeRule:
    """A NodeRule from nodes and log weights (summing to 1): the kernel's lwn = log W + z'z / 2."""
    lwn = log_w + 0.5 * np.sum(nodes ** 2, axis=1)
    return NodeRule(int(k), q, np.ascontiguousarray(nodes), np.ascontiguousarray(lwn), center)


def gauss_hermite_rule(k: int, q: int) -> NodeRule:
    """The k^q-node product rule; ``k = 1`` is the Laplace approximation (one node at the mode)."""
    if not (isinstance(k, (int, np.integer)) and 1 <= k <= 64):
        raise SpecError(f"n_nodes must be an integer from 1 to 64 (1 = Laplace), got {k!r}")
    z, wt = np.polynomial.hermite_e.hermegauss(int(k))
    lw1 = np.log(wt / wt.sum())
    grids = np.meshgrid(*([z] * q), indexing="ij")
    nodes = np.stack([g.ravel() for g in grids], axis=1)
    lw = sum(g.ravel() for g in np.meshgrid(*([lw1] * q), indexing="ij"))
    center = -1
    if k % 2 == 1:
        center = int(np.flatnonzero(np.all(np.abs(nodes) < 1e-300, axis=1))[0])
        nodes[center] = 0.0
    return _rule(k, q, nodes, lw, center)


def symmetric_rule_2d_degree7() -> NodeRule:
    """12 nodes exact for every polynomial of degree <= 7 under N(0, I_2), against 16 for the 4 x 4
    product rule of the same degree (Stroud 1971's fully symmetric form E2r^2 7-1).

    Nodes (+-a, 0), (0, +-a) with weight w1, (+-b, +-b) with w2, (+-c, +-c) with w3. Matching the
    even moments E x^4 = 3 and E x^2 y^2 = 1 gives a^4 w1 = 1; E x^6 = 15 and E x^4 y^2 = 3 give
    a^6 w1 = 6: a^2 = 6, w1 = 1/36. The rest is a 2-node Gauss rule in t = b^2, c^2 for the moments
    (8/9, 2/3, 1, 3) left over: t^2 - 9/2 t + 9/4 = 0, t = (9 +- sqrt 45) / 4, with positive weights.
    Odd moments vanish by symmetry. On the bench's binomial random-slope data (two terms, 20 rows a
    group) its total log-likelihood error SD was 0.0016 against the product rule's 0.0013 (bound
    0.01), and a log-likelihood + gradient took 3.3 against 4.3 ms.
    """
    a2 = 6.0
    w1 = 1.0 / 36.0
    t_hi, t_lo = (9.0 + np.sqrt(45.0)) / 4.0, (9.0 - np.sqrt(45.0)) / 4.0
    m0, m1 = 1.0 - 4.0 * w1, 1.0 - 2.0 * a2 * w1              # what the (b, b), (c, c) orbits must carry
    W_hi = (m1 - m0 * t_lo) / (t_hi - t_lo)
    W_lo = m0 - W_hi
    a, b, c = np.sqrt(a2), np.sqrt(t_hi), np.sqrt(t_lo)
    pts = [(a, 0.0), (-a, 0.0), (0.0, a), (0.0, -a)]
    wts = [w1] * 4
    for sx in (1.0, -1.0):
        for sy in (1.0, -1.0):
            pts += [(sx * b, sy * b), (sx * c, sy * c)]
            wts += [W_hi / 4.0, W_lo / 4.0]
    return _rule(4, 2, np.array(pts), np.log(np.array(wts)), -1)


def node_rule(k: int, q: int) -> NodeRule:
    """The rule of degree 2k - 1 the kernel uses for k nodes per axis: the k^q product rule
    (:func:`gauss_hermite_rule`), except for two terms and k = 4, where
    :func:`symmetric_rule_2d_degree7` does the same with 12 nodes instead of 16."""
    if q == 2 and k == 4:
        return symmetric_rule_2d_degree7()
    return gauss_hermite_rule(k, q)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QuadratureData:
    """Rows of one grouping factor sorted by group (the kernel's data), built by :func:`prepare`.

    ``Xt`` (p, n) and ``Zt`` (q, n) are the designs transposed (rows last, so that the kernel's
    loops over a group's rows vectorise). ``row_of`` (n,) gives, for each of the caller's rows,
    the kernel row that holds it (rows with the same group, predictors and offset may be merged:
    see :func:`prepare`); ``starts`` (J + 1,) the
    first row of each group; ``const`` (J,) the data-only part of each group's log-likelihood
    (log binomial coefficients, -log y!), so that :func:`group_loglik` is the full log-density.
    """

    family: str
    link: str
    code: int
    y: np.ndarray
    trials: np.ndarray
    offset: np.ndarray
    Xt: np.ndarray
    Zt: np.ndarray
    starts: np.ndarray
    row_of: np.ndarray
    const: np.ndarray

    @property
    def n_groups(self) -> int:
        return len(self.starts) - 1

    @property
    def q(self) -> int:
        return self.Zt.shape[0]

    @property
    def p(self) -> int:
        return self.Xt.shape[0]

    @property
    def group_sizes(self) -> np.ndarray:
        return np.diff(self.starts)


def _column(x, n: int, name: str, default: float) -> np.ndarray:
    if x is None:
        return np.full(n, default)
    x = np.asarray(x, dtype=float).reshape(-1)
    if x.shape[0] != n:
        raise DataError(f"{name} has {x.shape[0]} values but y has {n}; give one per row")
    if not np.all(np.isfinite(x)):
        raise DataError(f"{name} has {int(np.sum(~np.isfinite(x)))} NaN or infinite values; remove those rows")
    return x


def prepare(y, X, codes, Z=None, *, family: str, link: str | None = None, trials=None, offset=None,
            n_groups: int | None = None, merge: bool = True) -> QuadratureData:
    """Check the arrays and sort the rows by group once.

    With ``merge`` (binomial, bernoulli and Poisson), rows of one group with identical predictors,
    group-level predictors and offset are merged into one: their likelihoods are a function of the
    sums (successes and trials; counts, with log(number of rows) added to the offset), so the
    kernel is exact and its cost falls with the number of distinct rows (bernoulli trials under a
    few conditions per subject collapse to a few rows per subject). The data-only constants are
    computed from the original rows, so the log-likelihood is unchanged.

    Parameters
    ----------
    y : (n,) responses: 0/1 (bernoulli), successes (binomial, with ``trials``), counts.
    X : (n, p) fixed-effects design.
    codes : (n,) integer group of each row, 0 .. J - 1.
    Z : (n, q) group-level design (q = 1..3); None for a random intercept (a column of ones).
    family, link : see :func:`family_code`.
    trials : (n,) binomial trials (None: 1, i.e. bernoulli).
    offset : (n,) added to the linear predictor (None: 0).
    n_groups : J (default: max(codes) + 1); groups without rows contribute log L_j = 0.

    Raises
    ------
    DataError naming the array and the problem (NaN, negative or non-integer counts, successes
    above trials, codes out of range); SpecError for an unknown family/link or q > 3.
    """
    code = family_code(family, link)
    link = _DEFAULT_LINK[family] if link is None else link
    y = np.asarray(y, dtype=float).reshape(-1)
    n = y.shape[0]
    y = _column(y, n, "y", 0.0)
    X = np.asarray(X, dtype=float)
    if X.ndim != 2 or X.shape[0] != n:
        raise DataError(f"X must be (n, p) with n = {n} rows, got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise DataError("X has NaN or infinite values; remove those rows")
    Z = np.ones((n, 1)) if Z is None else np.asarray(Z, dtype=float)
    if Z.ndim == 1:
        Z = Z[:, None]
    if Z.shape[0] != n:
        raise DataError(f"Z must have n = {n} rows, got shape {Z.shape}")
    if not 1 <= Z.shape[1] <= MAX_Q:
        raise SpecError(f"the quadrature path handles 1 to {MAX_Q} group-level terms, got {Z.shape[1]}; "
                        "use method='noncentred'")
    if not np.all(np.isfinite(Z)):
        raise DataError("Z has NaN or infinite values; remove those rows")
    codes = np.asarray(codes)
    if codes.shape != (n,) or not np.issubdtype(codes.dtype, np.integer):
        raise DataError(f"codes must be n = {n} integers (the group of each row)")
    J = int(codes.max()) + 1 if n_groups is None else int(n_groups)
    if n and (codes.min() < 0 or codes.max() >= J):
        raise DataError(f"codes must lie in 0 .. {J - 1}")
    trials = _column(trials, n, "trials", 1.0)
    offset = _column(offset, n, "offset", 0.0)
    if code in (BINOMIAL_LOGIT, BINOMIAL_PROBIT):
        if np.any(trials < 1) or np.any(trials != np.round(trials)):
            raise DataError("trials must be positive integers")
        if np.any(y < 0) or np.any(y > trials) or np.any(y != np.round(y)):
            bad = int(np.flatnonzero((y < 0) | (y > trials) | (y != np.round(y)))[0])
            raise DataError(f"y must be whole numbers of successes between 0 and trials "
                            f"(row {bad}: y = {y[bad]}, trials = {trials[bad]})")
        row_const = gammaln(trials + 1) - gammaln(y + 1) - gammaln(trials - y + 1)
    else:
        if np.any(y < 0) or np.any(y != np.round(y)):
            bad = int(np.flatnonzero((y < 0) | (y != np.round(y)))[0])
            raise DataError(f"{family} counts must be non-negative whole numbers (row {bad}: y = {y[bad]})")
        row_const = -gammaln(y + 1)
    const = np.bincount(codes, weights=row_const, minlength=J)
    c = np.ascontiguousarray
    if merge and code != NEGBINOMIAL_LOG and n:
        key = np.column_stack([codes, X, Z, offset])
        uniq, row_of = np.unique(key, axis=0, return_inverse=True)
        row_of = row_of.reshape(-1)
        if len(uniq) < n:
            g = uniq[:, 0].astype(np.int64)
            Xm, Zm, off = uniq[:, 1:1 + X.shape[1]], uniq[:, 1 + X.shape[1]:-1], uniq[:, -1]
            ym = np.bincount(row_of, weights=y)
            if code == POISSON_LOG:
                m = np.bincount(row_of).astype(float)
                off = off + np.log(m)
                tm = np.ones(len(uniq))
                const -= np.bincount(g, weights=ym * np.log(m), minlength=J)   # the kernel's y log m
            else:
                tm = np.bincount(row_of, weights=trials)
            starts = np.zeros(J + 1, dtype=np.int64)
            starts[1:] = np.cumsum(np.bincount(g, minlength=J))
            return QuadratureData(family, link, code, c(ym), c(tm), c(off), c(Xm.T), c(Zm.T), starts, row_of, const)
    order = np.argsort(codes, kind="stable")
    row_of = np.empty(n, dtype=np.int64)
    row_of[order] = np.arange(n)
    starts = np.zeros(J + 1, dtype=np.int64)
    starts[1:] = np.cumsum(np.bincount(codes, minlength=J))
    return QuadratureData(family, link, code, c(y[order]), c(trials[order]), c(offset[order]), c(X[order].T),
                          c(Z[order].T), starts, row_of, const)


# --------------------------------------------------------------------------------------------
# numpy evaluation
# --------------------------------------------------------------------------------------------
def _params(data: QuadratureData, b, sd, Cc, phi):
    q = data.q
    b = np.ascontiguousarray(b, dtype=float).reshape(data.p)
    sd = np.ascontiguousarray(sd, dtype=float).reshape(q)
    Cc = np.eye(q) if Cc is None else np.ascontiguousarray(Cc, dtype=float).reshape(q, q)
    return b, sd, Cc, np.array(float(phi))


def node_table(data: QuadratureData, n_nodes=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The kernel's node arrays for ``n_nodes`` per axis, one number or one per group (J,).

    Returns (nodes (M, q), lwn (M,), rules (R, 3) [first, end, centre or -1], rule_of (J,)): the
    distinct rules one after another, and which one each group uses.
    """
    q, J = data.q, data.n_groups
    k = default_nodes(q) if n_nodes is None else n_nodes
    if np.ndim(k) and np.shape(k) != (J,):
        raise SpecError(f"n_nodes must be one number or one per group ({J}), got shape {np.shape(k)}")
    ks = np.broadcast_to(np.asarray(k), (J,))
    distinct, rule_of = np.unique(ks, return_inverse=True)
    if len(distinct) == 0:
        distinct = np.array([default_nodes(q)])
    parts, lws, rules, start = [], [], [], 0
    for k in distinct:
        r = node_rule(k, q)
        parts.append(r.nodes)
        lws.append(r.lwn)
        rules.append((start, start + len(r.lwn), r.center))
        start += len(r.lwn)
    return (np.ascontiguousarray(np.concatenate(parts)), np.ascontiguousarray(np.concatenate(lws)),
            np.array(rules, dtype=np.int64).reshape(-1, 3), np.ascontiguousarray(rule_of.reshape(-1), dtype=np.int64))


def kernel_arrays(data: QuadratureData, n_nodes=None) -> list[np.ndarray]:
    """The kernel's data arguments after ``v0``: y, trials, offset, Xt, Zt, starts, ictl, nodes, lwn,
    rules, rule_of, lplan, lrows, const (``n_nodes`` as in :func:`node_table`; lplan and lrows the
    lockstep's layout, :func:`~bayeslmm.paths.quadrature_lockstep.lockstep_layout`, for two or
    three terms, else empty)."""
    nodes, lwn, rules, rule_of = node_table(data, n_nodes)
    ictl = np.array([data.code], dtype=np.int64)
    if data.q > 1:
        from .quadrature_lockstep import LOCKSTEP_MAX_ROWS, lockstep_layout
        lplan, lrows = lockstep_layout(data.starts, data.y, data.trials, data.offset, data.Xt, data.Zt,
                                       LOCKSTEP_MAX_ROWS)
    else:
        lplan, lrows = np.zeros(3, dtype=np.int64), np.zeros((3 + data.p + data.q, 0))
    return [data.y, data.trials, data.offset, data.Xt, data.Zt, data.starts, ictl, nodes, lwn, rules, rule_of,
            lplan, lrows, data.const]


def _run(data, b, sd, Cc, phi, n_nodes, weights, grad, start):
    from .quadrature_kernel import aghq_kernel
    b, sd, Cc, phi = _params(data, b, sd, Cc, phi)
    J = data.n_groups
    w = np.ones(J) if weights is None else np.ascontiguousarray(weights, dtype=float)
    v0 = np.zeros((J, data.q)) if start is None else np.ascontiguousarray(start, dtype=float).reshape(J, data.q)
    return aghq_kernel(np.array(int(grad)), w, b, sd, Cc, phi, v0, *kernel_arrays(data, n_nodes))


def group_loglik(data: QuadratureData, b, sd, Cc=None, phi=1.0, *, n_nodes=None, start=None) -> np.ndarray:
    """log L_j for every group (J,), by AGHQ with ``n_nodes`` per axis (default :func:`default_nodes`;
    one number, or one per group).

    ``sd`` (q,) and ``Cc`` (q, q) the lower Cholesky factor of the terms' correlation (None: the
    identity); ``phi`` the negative-binomial dispersion (ignored by the other families); ``start``
    optional (J, q) Newton starting points in the standardised scale (the result does not depend on
    them beyond rounding).
    """
    return _run(data, b, sd, Cc, phi, n_nodes, None, False, start)[0]


def group_loglik_grad(data: QuadratureData, b, sd, Cc=None, phi=1.0, *, n_nodes=None, weights=None,
                      start=None) -> dict[str, np.ndarray]:
    """log L_j (J,) and the gradient of sum_j weights_j log L_j (weights default to ones).

    Returns a dict with ``logl`` (J,), ``b`` (p,), ``sd`` (q,), ``Cc`` (q, q), ``phi`` (), and
    ``modes`` (J, q), the groups' modes in the standardised scale u = T v.
    """
    lp, gb, gsd, gC, gphi, modes = _run(data, b, sd, Cc, phi, n_nodes, weights, True, start)
    return {"logl": lp, "b": gb, "sd": gsd, "Cc": gC, "phi": gphi, "modes": modes}


# --------------------------------------------------------------------------------------------
# Group effects after sampling
# --------------------------------------------------------------------------------------------
def draw_group_effects(data: QuadratureData, b, sd, Cc=None, phi=None, *, seed: int,
                       n_proposals: int = 64, min_ess: float = 16.0, threads: int | None = None, start=None,
                       max_expected: float | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One draw of every group's effects u_j from p(u_j | y_j, b, Sigma, phi) per posterior draw.

    Parameters
    ----------
    b (S, p), sd (S, q), Cc (S, q, q) or None (identity), phi (S,) or None: S posterior draws.
    seed : the draws are a deterministic function of (seed, draw index, group index).
    n_proposals, min_ess, max_expected : the fallback for q >= 2 (see
        :mod:`bayeslmm.paths.quadrature_draws`): groups whose exact rejection sampler would need
        more than ``max_expected`` proposals per draw (default ``n_proposals / 2``; 0 sends every
        group there) are drawn by importance resampling from ``n_proposals`` Student-t proposals
        (redrawn with four times as many when the weights' ESS is below ``min_ess``).
    threads : blocks of draws run in this many threads (default: the number of CPUs).
        The kernel releases the GIL, and each draw's random numbers depend on (seed, draw, group)
        only, so the result is the same for any number of threads.
    start : optional Newton's start per group, as the fitted model's
        (:func:`~bayeslmm.paths.quadrature_nodes.newton_start`, (J, q, 1 + P)); fewer iterations to
        each mode, the same modes (to ~1e-12), so the same draws but for rounding.

    Returns
    -------
    (u, diag) : u (S, J, q) on the scale of the terms (u = T v); diag a dict of (S, J) arrays:
    ``proposals`` the proposals each draw used, ``ess`` the importance weights' effective sample
    size where a draw fell back to importance resampling and NaN where it is exact. NaN in u (and
    in ``proposals``) marks a group whose mode could not be found (non-finite parameters).

    Examples
    --------
    >>> import numpy as np
    >>> from bayeslmm.paths.quadrature import prepare, draw_group_effects
    >>> data = prepare(np.array([0.0, 1, 1, 0, 1]), np.ones((5, 1)), np.array([0, 0, 1, 1, 1]),
    ...                family="bernoulli", Z=np.column_stack([np.ones(5), np.arange(5.0)]))
    >>> u, diag = draw_group_effects(data, np.zeros((3, 1)), np.ones((3, 2)), seed=1)
    >>> u.shape, bool(np.isnan(diag["ess"]).all())        # 3 draws, 2 groups, 2 terms; all exact
    ((3, 2, 2), True)
    """
    from .quadrature_draws import draw_kernel
    q, p = data.q, data.p
    b = np.ascontiguousarray(np.atleast_2d(np.asarray(b, dtype=float)).reshape(-1, p))
    S = b.shape[0]
    sd = np.ascontiguousarray(np.asarray(sd, dtype=float).reshape(S, q))
    Cc = (np.broadcast_to(np.eye(q), (S, q, q)).copy() if Cc is None
          else np.ascontiguousarray(np.asarray(Cc, dtype=float).reshape(S, q, q)))
    phi = np.ones(S) if phi is None else np.ascontiguousarray(np.asarray(phi, dtype=float).reshape(S))
    ictl = np.array([data.code], dtype=np.int64)
    seed = int(seed) & 0x7FFFFFFFFFFFFFFF
    u0 = (np.zeros((0, q, 1)) if start is None
          else np.ascontiguousarray(np.asarray(start, dtype=float).reshape(data.n_groups, q, -1)))

    def block(lo, hi):
        return draw_kernel(b[lo:hi], sd[lo:hi], Cc[lo:hi], phi[lo:hi], data.y, data.trials, data.offset, data.Xt,
                           data.Zt, data.starts, ictl, u0, seed, int(n_proposals), float(min_ess), int(lo),
                           float(0.5 * n_proposals if max_expected is None else max_expected))
    n = max(1, min(S, threads if threads is not None else cpu_count()))
    cuts = np.linspace(0, S, n + 1).astype(int)
    parts = map_in_threads(lambda lohi: block(*lohi), list(zip(cuts[:-1], cuts[1:])), n)
    return np.concatenate([u for u, _, _ in parts]), {"proposals": np.concatenate([t for _, t, _ in parts]),
                                                      "ess": np.concatenate([e for _, _, e in parts])}


def choose_n_nodes(data: QuadratureData, b, sd, Cc=None, phi=None, *, tol: float = ERROR_TOL,
                   candidates=None, reference: int | None = None) -> tuple[int, dict[int, float]]:
    """The smallest number of nodes per axis whose total-error SD over the given draws is <= tol.

    ``b`` (S, p), ``sd`` (S, q), ``Cc`` (S, q, q) or None, ``phi`` (S,) or None: a few dozen draws
    of the parameters near the posterior (e.g. from a Laplace approximation or a short run). For each
    candidate k the total log-likelihood error E(theta) = sum_j log L_j(k) - sum_j log L_j(reference)
    is computed at every draw; its SD over the draws is what biases posterior means (see
    :data:`ERROR_TOL`). Returns (k, {candidate: sd(E)}); k is the reference when none suffices.
    """
    q, p = data.q, data.p
    cand = list(candidates) if candidates is not None else {1: [5, 7, 9, 11, 15], 2: [3, 4, 5, 7],
                                                            3: [3, 4, 5]}[q]
    ref = reference if reference is not None else {1: 31, 2: 15, 3: 9}[q]
    b = np.atleast_2d(np.asarray(b, dtype=float)).reshape(-1, p)
    S = b.shape[0]
    sd = np.asarray(sd, dtype=float).reshape(S, q)
    Cc = np.broadcast_to(np.eye(q), (S, q, q)) if Cc is None else np.asarray(Cc, dtype=float).reshape(S, q, q)
    phi = np.ones(S) if phi is None else np.asarray(phi, dtype=float).reshape(S)

    def total(k):            # the draws in parallel threads (the kernel releases the GIL)
        return np.array(map_in_threads(lambda s: group_loglik(data, b[s], sd[s], Cc[s], phi[s], n_nodes=k).sum(),
                                       range(S)))
    base = total(ref)
    sds = {}
    for k in sorted(cand):
        sds[k] = float(np.std(total(k) - base))
        if sds[k] <= tol:
            return k, sds
    return ref, sds


def compile_kernels() -> float:
    """Compile the AGHQ kernel and the draw kernel now (numba caches them on disk); returns seconds.

    One call covers every family, link, q and number of nodes (they are run-time values), so
    ``make install`` can run it once, as for the Gaussian kernel, and the first fit does not wait.
    """
    import time
    t0 = time.perf_counter()
    data = prepare(np.array([0.0, 1.0, 1.0]), np.ones((3, 1)), np.array([0, 0, 1]), family="bernoulli")
    group_loglik_grad(data, np.zeros(1), np.ones(1), n_nodes=3)
    draw_group_effects(data, np.zeros((1, 1)), np.ones((1, 1)), seed=0)
    return time.perf_counter() - t0
