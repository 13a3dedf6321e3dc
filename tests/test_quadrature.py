"""The collapsed GLMM likelihood by adaptive Gauss-Hermite quadrature (bayeslmm.paths.quadrature*).

What is checked, and against what:
- each group's log-likelihood against brute-force integration written independently here (scipy's
  distributions; ``scipy.integrate.quad`` for one term, a dense trapezoid grid for two), for every
  family and link, groups of 0 to 30 rows including all-zero and all-one groups, with the error per
  number of nodes printed (``-s`` shows the table);
- the gradient against central finite differences of the kernel itself (every parameter, q = 1..3);
- that the value does not depend on Newton's starting point, and is exact at sd = 0;
- the default number of nodes against the stated bound (SD over the posterior of the total error
  <= 0.01), with a negative control that fails it;
- the conditional draws' means and variances against brute-force moments;
- the PyTensor Op against the numpy kernel, merged into a single kernel call per evaluation.

Error study behind ``DEFAULT_NODES`` (SD over 100 posterior draws of the total log-likelihood
error, reference 31 nodes for q = 1, 15 for q = 2, 9 for q = 3; measured 2026-12 with
/tmp scripts equivalent to ``test_default_nodes_meet_the_bound``):

=========================================  ======  ======  ======  ======  ======  ======
design (J groups, rows per group)          k=1     k=5     k=7     k=9     k=11    k=15
=========================================  ======  ======  ======  ======  ======  ======
bernoulli logit, SD 1, J=2000 x 50         9.3e-2  2.9e-3  1.4e-4  2.5e-5  5.7e-6  7.2e-8
bernoulli logit, SD 1, J=300 x 1-30        2.2e-1  6.8e-3  2.0e-4  1.2e-5  9.5e-6  8.9e-8
bernoulli logit, SD 2.2, J=300 x 1-30      3.8e-1  1.2e-1  1.6e-2  4.4e-3  2.2e-3  6.0e-4
bernoulli probit, SD 1.65, J=300 x 1-30    7.1e-1  2.2e-1  5.7e-2  1.0e-2  2.0e-3  9.8e-4
poisson log, SD 1, J=200 x 1-20            5.2e-2  5.3e-3  3.3e-4  5.9e-5  5.0e-5  2.1e-6
=========================================  ======  ======  ======  ======  ======  ======

Two and three terms, nodes per axis (k^q nodes in all), 120 groups of 1-30 rows unless stated:

==============================================  ======  ======  ======  ======
design                                          k=3     k=4     k=5     k=7
==============================================  ======  ======  ======  ======
binomial logit, trials 1-10, SD (1, .5), J=100  2.3e-2  2.4e-3  1.9e-3  1.2e-4
bernoulli logit, SD (1.5, .7)                   1.1e-1  1.7e-2  1.4e-2  1.8e-3
bernoulli probit, SD (1.2, .6)                  1.5e-1  2.6e-2  2.9e-2  4.2e-3
negative binomial, SD (.8, .4)                  1.9e-2  1.3e-3
bernoulli logit, three terms SD (1, .5, .5)     9.6e-2  1.6e-2  1.2e-2  1.1e-3
==============================================  ======  ======  ======  ======

Pruning the product grid's low-weight nodes cost more accuracy than it saved. Since the total
error adds up over groups, ``auto_n_nodes`` checks the candidates on each data set before sampling.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import integrate, optimize, special, stats

from bayeslmm.errors import DataError, SpecError
from bayeslmm.paths import quadrature as Q

FAMILIES = [("bernoulli", "logit"), ("bernoulli", "probit"), ("binomial", "logit"), ("binomial", "probit"),
            ("poisson", "log"), ("negbinomial", "log")]
PHI = 2.5


# --------------------------------------------------------------------------------------------
# Designs and an independent brute-force reference
# --------------------------------------------------------------------------------------------
def make_design(family, link, q, sizes, sd, seed, extremes=True):
    """Rows for groups of the given sizes; with ``extremes`` two more groups of 6 rows whose
    responses are all zero and all at their maximum (trials, or a large count)."""
    rng = np.random.default_rng(seed)
    sizes = list(sizes) + ([6, 6] if extremes else [])
    J, n = len(sizes), int(sum(sizes))
    codes = np.repeat(np.arange(J), sizes)
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    Z = np.column_stack([np.ones(n)] + [rng.normal(size=n) for _ in range(q - 1)])
    b = np.array([0.3, -0.5])
    offset = 0.2 * rng.normal(size=n)
    eta = offset + X @ b + (rng.normal(size=(J, q))[codes] * Z * np.asarray(sd)).sum(1)
    trials = rng.integers(1, 6, size=n).astype(float) if family == "binomial" else None
    if family in ("bernoulli", "binomial"):
        pr = special.expit(eta) if link == "logit" else stats.norm.cdf(eta)
        y = rng.binomial(1 if trials is None else trials.astype(int), pr).astype(float)
    elif family == "poisson":
        y = rng.poisson(np.exp(eta)).astype(float)
    else:
        mu = np.exp(eta)
        y = rng.negative_binomial(PHI, PHI / (PHI + mu)).astype(float)
    if extremes:
        lo, hi = codes == J - 2, codes == J - 1
        y[lo] = 0.0
        y[hi] = (1.0 if trials is None else trials[hi]) if family in ("bernoulli", "binomial") else 9.0
    return Q.prepare(y, X, codes, Z, family=family, link=link, trials=trials, offset=offset), b


def row_logpmf(data, j, eta, phi=PHI):
    """log p(y_ij | eta) summed over group j's rows, eta (..., n_j), with scipy's distributions."""
    s0, s1 = data.starts[j], data.starts[j + 1]
    y, n = data.y[s0:s1], data.trials[s0:s1]
    if data.family in ("bernoulli", "binomial"):
        # log Bernoulli/binomial in a form that stays finite in the tails (scipy's binom.logpmf takes
        # log(1 - p) of a p that has rounded to 1)
        if data.link == "logit":
            out = y * eta - n * np.logaddexp(0.0, eta)
        else:
            out = y * special.log_ndtr(eta) + (n - y) * special.log_ndtr(-eta)
        out = out + special.gammaln(n + 1) - special.gammaln(y + 1) - special.gammaln(n - y + 1)
    elif data.family == "poisson":
        out = stats.poisson.logpmf(y, np.exp(eta))
    else:
        out = stats.nbinom.logpmf(y, phi, phi / (phi + np.exp(eta)))
    return out.sum(-1)


def group_parts(data, j, b):
    s0, s1 = data.starts[j], data.starts[j + 1]
    return data.offset[s0:s1] + data.Xt[:, s0:s1].T @ b, data.Zt[:, s0:s1].T


def brute_q1(data, b, sd, phi=PHI):
    """log L_j by scipy.integrate.quad around the mode (relative tolerance 1e-13)."""
    out = []
    for j in range(data.n_groups):
        eta0, Z = group_parts(data, j, b)
        z = Z[:, 0]

        def lf(u):
            return row_logpmf(data, j, eta0 + z * u, phi) + stats.norm.logpdf(u, 0.0, sd)
        m = optimize.minimize_scalar(lambda u: -lf(u), bracket=(-1.0, 1.0)).x
        c = lf(m)
        half = 40.0 * sd + 5.0
        val = sum(integrate.quad(lambda u: np.exp(lf(u) - c), lo, hi, epsabs=0.0, epsrel=1e-13, limit=500)[0]
                  for lo, hi in [(m - half, m), (m, m + half)])
        out.append(np.log(val) + c)
    return np.array(out)


def grid_q2(data, b, sd, Cc, phi=PHI, h=0.02, width=9.0, moments=False):
    """log L_j (and, with ``moments``, E[u_j] and Cov[u_j]) on a dense trapezoid grid in v (u = T v).

    In v the integrand is below exp(f(v*) - |v - v*|^2 / 2), so +-9 around the mode holds all but
    e^-40 of the mass; the trapezoid rule is spectrally accurate for these analytic integrands.
    """
    T = np.diag(sd) @ Cc
    out, means, covs = [], [], []
    g = np.arange(-width, width + h / 2, h)
    for j in range(data.n_groups):
        eta0, Z = group_parts(data, j, b)
        W = Z @ T                                   # rows' w_i' = z_i' T

        def lf(v):
            return row_logpmf(data, j, eta0 + v @ W.T, phi) - 0.5 * np.sum(v * v, -1) - np.log(2 * np.pi)
        vs = optimize.minimize(lambda v: -lf(v[None])[0], np.zeros(2), method="BFGS").x
        V = np.stack(np.meshgrid(vs[0] + g, vs[1] + g, indexing="ij"), -1).reshape(-1, 2)
        lv = np.concatenate([lf(V[k:k + 40000]) for k in range(0, len(V), 40000)])
        out.append(special.logsumexp(lv) + 2 * np.log(h))
        if moments:
            wts = np.exp(lv - lv.max())
            wts /= wts.sum()
            U = V @ T.T
            mu = wts @ U
            means.append(mu)
            covs.append((U - mu).T @ ((U - mu) * wts[:, None]))
    return (np.array(out), np.array(means), np.array(covs)) if moments else np.array(out)


def random_corr_chol(q, rng):
    if q == 1:
        return np.eye(1)
    M = rng.normal(size=(q, q + 2))
    S = M @ M.T
    d = np.sqrt(np.diag(S))
    return np.linalg.cholesky(S / np.outer(d, d))


# --------------------------------------------------------------------------------------------
# The log-likelihood against brute force
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family,link", FAMILIES)
def test_loglik_matches_quad_q1(family, link):
    """q = 1, groups of 0-30 rows plus all-zero / all-one groups, SD 1.2: the default (11 nodes) is
    within 1e-4 of scipy's quad in every group (observed 4e-7 to 5e-5, the worst an all-one
    binomial-probit group), and 31 nodes within 1e-8 (observed <= 7e-10: the rule converges to the
    integral; quad's relative tolerance is 1e-13). Errors per number of nodes are printed."""
    data, b = make_design(family, link, 1, [1, 2, 5, 10, 30, 0, 3], 1.2, seed=1)
    sd = np.array([1.2])
    ref = brute_q1(data, b, 1.2)
    errs = {k: np.abs(Q.group_loglik(data, b, sd, None, PHI, n_nodes=k) - ref).max()
            for k in (1, 3, 5, 7, 9, 11, 15, 21, 31)}
    print(f"\n{family}/{link} q=1 max |log L error| by nodes: "
          + "  ".join(f"k={k}: {e:.1e}" for k, e in errs.items()))
    assert errs[Q.default_nodes(1)] < 1e-4
    assert errs[31] < 1e-8
    assert errs[1] > 1e-3             # Laplace is visibly worse: the comparison has teeth


@pytest.mark.parametrize("family,link", [("bernoulli", "logit"), ("binomial", "probit"), ("poisson", "log"),
                                         ("negbinomial", "log")])
def test_loglik_matches_grid_q2(family, link):
    """q = 2 (correlated intercept and slope), groups of 1-12 rows plus extreme groups: the default
    (5 x 5 nodes) within 5e-3 and 15 x 15 nodes within 1e-6 of a dense trapezoid grid."""
    rng = np.random.default_rng(2)
    data, b = make_design(family, link, 2, [1, 4, 12], [0.8, 0.5], seed=3)
    sd, Cc = np.array([0.8, 0.5]), random_corr_chol(2, rng)
    ref = grid_q2(data, b, sd, Cc)
    errs = {k: np.abs(Q.group_loglik(data, b, sd, Cc, PHI, n_nodes=k) - ref).max() for k in (1, 2, 3, 4, 5, 7, 11, 15)}
    print(f"\n{family}/{link} q=2 max |log L error| by nodes: "
          + "  ".join(f"k={k}: {e:.1e}" for k, e in errs.items()))
    assert errs[Q.default_nodes(2)] < 5e-3
    assert errs[15] < 1e-6
    assert errs[2] < 0.1          # 4 nodes padded with zero-weight ones to 8 (a weighted pad moves it by O(1))


def test_node_pass_product_form_equals_the_log_form():
    """The binomial-logit node pass's product form (n log(1 + e^-|eta|) of all rows of a node as one
    logarithm of a product, renormalised every 64 rows) against the per-row logarithms on 200 rows
    x 12 nodes with trials 0-15 and extreme linear predictors: the same sums to 1e-12 relative
    and the same derivatives exactly. Breaking the renormalisation (one product over all rows)
    overflows here (200 rows x 15 trials > 1023 bits)."""
    from bayeslmm.paths.quadrature_fused import nodes_rows, small_trials
    rng = np.random.default_rng(5)
    m, M = 200, 12
    n = rng.integers(0, 16, size=m).astype(float)
    n[:20] = 15.0
    y = rng.binomial(n.astype(int), 0.4).astype(float)
    es = rng.normal(0.0, 0.5, size=m)          # near 0: 1 + e^-|eta| ~ 2, so the products need renormalising
    es[:5] = [-40.0, 40.0, 300.0, -300.0, 0.0]
    s = rng.normal(0.0, 0.3, size=(3, m))
    w = rng.normal(size=(3, m))
    z = rng.normal(size=(3, M))
    assert small_trials(n) and not small_trials(np.append(n, 16.0)) and not small_trials(np.append(n, 2.5))
    for q in (3, 2):                # two terms: the third rows zero, and the product form's own loop
        if q == 2:
            s[2], w[2], z[2] = 0.0, 0.0, 0.0
        out = {}
        for form in (True, False):
            D, Sk, Pk, G, Pr, Ex = np.zeros((m, M)), np.zeros(M), np.zeros(M), np.zeros((3, M)), np.zeros(M), np.zeros(M)
            nodes_rows(0, y, n, es, s[0], s[1], s[2], w[0], w[1], w[2], z[0], z[1], z[2], M, q, 1.0, 0.0, form, D, Sk,
                       Pk, G[0], G[1], G[2], Pr, Ex)
            out[form] = (Sk, D, G)
        ref = np.array([np.sum(y * (es + s.T @ z[:, k]) - n * np.logaddexp(0.0, es + s.T @ z[:, k])) for k in range(M)])
        np.testing.assert_allclose(out[False][0], ref, rtol=1e-12)
        np.testing.assert_allclose(out[True][0], out[False][0], rtol=1e-12)
        np.testing.assert_allclose(out[True][1], out[False][1], rtol=1e-15, atol=1e-300)
        np.testing.assert_allclose(out[True][2], out[False][2], rtol=1e-13, atol=1e-300)
        ref_g = np.array([[np.sum(out[False][1][:, k] * w[a]) for k in range(M)] for a in range(3)])
        np.testing.assert_allclose(out[True][2], ref_g, rtol=1e-10, atol=1e-12)


def test_value_pass_product_form_equals_the_log_form():
    """The draws' value pass (value_q3, f at a rejection proposal) in the product form against the
    per-row logarithms and scipy, on the rows of the test above (200 rows, trials 0-15, linear
    predictors up to +-300): equal to 1e-12 relative. Without the renormalisation every 64 rows the
    product overflows here."""
    from bayeslmm.paths.quadrature_fused import value_q3
    rng = np.random.default_rng(6)
    m = 200
    n = rng.integers(0, 16, size=m).astype(float)
    n[:20] = 15.0
    y = rng.binomial(n.astype(int), 0.4).astype(float)
    eta0 = rng.normal(0.0, 0.5, size=m)
    eta0[:5] = [-40.0, 40.0, 300.0, -300.0, 0.0]
    w = rng.normal(size=(3, m))
    v = rng.normal(0.0, 0.3, size=3)
    eta = eta0 + v @ w
    ref = np.sum(y * eta - n * np.logaddexp(0.0, eta))
    got = {form: value_q3(0, y, n, eta0, w[0], w[1], w[2], v[0], v[1], v[2], 1.0, 0.0, form) for form in (True, False)}
    np.testing.assert_allclose(got[False], ref, rtol=1e-12)
    np.testing.assert_allclose(got[True], ref, rtol=1e-12)


def test_binomial_two_terms_large_groups_match_grid():
    """Two terms over binomial-logit groups of 3, 70 and 150 rows (more than one 64-row block of the
    node pass's product form) with trials 1-15, and a group with trials up to 40 (the per-row
    logarithms): 15 x 15 nodes within 1e-6 and the default rule within 5e-3 of a dense grid."""
    rng = np.random.default_rng(6)
    sizes = [3, 70, 150, 40]
    codes = np.repeat(np.arange(4), sizes)
    N = len(codes)
    X = np.column_stack([np.ones(N), rng.normal(size=N)])
    Z = np.column_stack([np.ones(N), rng.normal(size=N)])
    trials = rng.integers(1, 16, size=N).astype(float)
    trials[codes == 3] = rng.integers(1, 41, size=sizes[3])
    b, sd = np.array([0.2, -0.4]), np.array([0.9, 0.5])
    eta = X @ b + (rng.normal(size=(4, 2)) * sd)[codes].__mul__(Z).sum(1)
    y = rng.binomial(trials.astype(int), special.expit(eta)).astype(float)
    data = Q.prepare(y, X, codes, Z, family="binomial", link="logit", trials=trials)
    Cc = random_corr_chol(2, rng)
    ref = grid_q2(data, b, sd, Cc, h=0.01, width=6.0)
    err15 = np.abs(Q.group_loglik(data, b, sd, Cc, n_nodes=15) - ref)
    errd = np.abs(Q.group_loglik(data, b, sd, Cc, n_nodes=Q.default_nodes(2)) - ref)
    print(f"\nbinomial large groups: max error 15 x 15 {err15.max():.1e}, default {errd.max():.1e}")
    assert err15.max() < 1e-6
    assert errd.max() < 5e-3


def test_large_group_node_pass_in_chunks_is_the_same():
    """A group of 6,000 rows at 15 x 15 nodes (228 with the padding) exceeds the node pass's scratch
    (2^20 numbers), so its rows are passed in chunks, twice with the gradient; at 11 x 11 nodes
    (124) it fits in one. Both are exact to ~1e-9 here, so they agree to 1e-6 in log L and in the
    gradient, and the chunked gradient matches central differences of the chunked value.
    (Breaking the chunking, e.g. the second pass's row offset, moves the gradient by O(1).)"""
    rng = np.random.default_rng(8)
    sizes = [6000, 30]
    codes = np.repeat(np.arange(2), sizes)
    N = len(codes)
    X = np.column_stack([np.ones(N), rng.normal(size=N)])
    Z = np.column_stack([np.ones(N), rng.normal(size=N)])
    b, sd = np.array([-0.2, 0.3]), np.array([0.7, 0.4])
    eta = X @ b + (rng.normal(size=(2, 2)) * sd)[codes].__mul__(Z).sum(1)
    y = rng.binomial(1, special.expit(eta)).astype(float)
    data = Q.prepare(y, X, codes, Z, family="bernoulli", link="logit")
    Cc = random_corr_chol(2, rng)
    out15 = Q.group_loglik_grad(data, b, sd, Cc, n_nodes=15)
    out11 = Q.group_loglik_grad(data, b, sd, Cc, n_nodes=11)
    np.testing.assert_allclose(out15["logl"], out11["logl"], rtol=0, atol=1e-6)
    for key in ("b", "sd", "Cc"):
        np.testing.assert_allclose(out15[key], out11[key], rtol=1e-6, atol=1e-6)
    h = 1e-5
    for i in range(2):
        e = np.zeros(2)
        e[i] = h
        num = (Q.group_loglik(data, b + e, sd, Cc, n_nodes=15).sum()
               - Q.group_loglik(data, b - e, sd, Cc, n_nodes=15).sum()) / (2 * h)
        assert abs(out15["b"][i] - num) <= 1e-6 * max(1.0, abs(num)), (out15["b"][i], num)


def test_symmetric_rule_2d_is_degree_7():
    """The 12-node rule two terms use at 4 nodes per axis integrates every monomial x^i y^j of degree
    <= 7 exactly against N(0, I_2) (to 1e-12), not x^8 (so it is the degree-7 rule it claims, with
    12 nodes instead of the 16 of the 4 x 4 product rule), and its weights are positive."""
    r = Q.node_rule(4, 2)
    assert r.nodes.shape == (12, 2) and r.center == -1
    assert Q.node_rule(4, 1).nodes.shape == (4, 1) and Q.node_rule(4, 3).nodes.shape == (64, 3)
    w = np.exp(r.lwn - 0.5 * np.sum(r.nodes ** 2, axis=1))
    assert np.all(w > 0)

    def normal_moment(i):
        return 0.0 if i % 2 else float(np.prod(np.arange(i - 1, 0, -2)))
    for i in range(8):
        for j in range(8 - i):
            got = np.sum(w * r.nodes[:, 0] ** i * r.nodes[:, 1] ** j)
            assert abs(got - normal_moment(i) * normal_moment(j)) < 1e-12, (i, j, got)
    assert abs(np.sum(w * r.nodes[:, 0] ** 8) - 105.0) > 1.0


@pytest.mark.parametrize("family,link", [("bernoulli", "logit"), ("poisson", "log")])
def test_symmetric_rule_2d_is_as_accurate_as_the_product_rule(family, link):
    """On the grid-checked design of test_loglik_matches_grid_q2, the 12-node rule's error per group is
    of the 16-node product rule's order (both degree 7; at most 5x it plus 1e-4) and well below the
    9-node (degree 5) product rule's: the fewer nodes lose nothing that matters."""
    from bayeslmm.paths.quadrature_kernel import aghq_kernel
    rng = np.random.default_rng(2)
    data, b = make_design(family, link, 2, [1, 4, 12], [0.8, 0.5], seed=3)
    sd, Cc = np.array([0.8, 0.5]), random_corr_chol(2, rng)
    ref = grid_q2(data, b, sd, Cc)
    arrays = Q.kernel_arrays(data, 4)
    prod = Q.gauss_hermite_rule(4, 2)
    arrays[7:11] = [prod.nodes, prod.lwn, np.array([[0, 16, -1]], dtype=np.int64),
                    np.zeros(data.n_groups, dtype=np.int64)]
    J = data.n_groups
    lp16 = aghq_kernel(np.array(0), np.ones(J), b, sd, Cc, np.array(PHI), np.zeros((J, 2)), *arrays)[0]
    err16 = np.abs(lp16 - ref)
    err12 = np.abs(Q.group_loglik(data, b, sd, Cc, PHI, n_nodes=4) - ref)
    err9 = np.abs(Q.group_loglik(data, b, sd, Cc, PHI, n_nodes=3) - ref)
    print(f"\n{family}: max error 12 nodes {err12.max():.1e}, 16 nodes {err16.max():.1e}, 9 nodes {err9.max():.1e}")
    assert np.all(err12 <= 5 * err16 + 1e-4), (err12, err16)
    assert err12.max() < 0.5 * err9.max()


def test_exact_at_zero_sd():
    """sd = 0: the integral is the likelihood at u = 0, for any number of nodes."""
    data, b = make_design("binomial", "logit", 2, [3, 7], [0.5, 0.5], seed=4)
    ref = np.array([row_logpmf(data, j, group_parts(data, j, b)[0]) for j in range(data.n_groups)])
    for k in (1, 4, 7):
        np.testing.assert_allclose(Q.group_loglik(data, b, np.zeros(2), None, n_nodes=k), ref, rtol=0, atol=1e-12)


def test_value_does_not_depend_on_newton_start():
    """Newton is run to convergence and then takes its last step, so the value is a function of the
    parameters alone: random starting points change it by < 1e-10 (HMC needs a deterministic logp)."""
    rng = np.random.default_rng(5)
    data, b = make_design("bernoulli", "logit", 2, [1, 5, 30], [1.5, 0.7], seed=6)
    sd, Cc = np.array([1.5, 0.7]), random_corr_chol(2, rng)
    base = Q.group_loglik_grad(data, b, sd, Cc)
    for _ in range(3):
        start = rng.normal(scale=3.0, size=(data.n_groups, 2))
        other = Q.group_loglik_grad(data, b, sd, Cc, start=start)
        np.testing.assert_allclose(other["logl"], base["logl"], rtol=0, atol=1e-10)
        np.testing.assert_allclose(other["b"], base["b"], rtol=0, atol=1e-8)


@pytest.mark.parametrize("q", [1, 2])
def test_fixed_newton_start_changes_nothing_but_the_iterations(q):
    """The fitted model's kernel starts Newton at u0 + D th (newton_start: the modes at the sketch's
    centre, in the scale of the terms, and their slopes in the coordinates th of the parameters),
    converted to v = T^-1 u at each call. Against the cold start: the same log-likelihoods (< 1e-10)
    and gradient (< 1e-8), with the first-order start, the fixed one (D = 0) and a start far out
    (|v| >= 30: zero), also at sd = 0 in a term (T singular: that start falls back to zero); at the
    centre the converted start is the mode; and near it the first-order start is closer to the
    mode than the fixed one by the square of the distance (a wrong slope would not be)."""
    from bayeslmm.paths.quadrature_mode import newton_v0, start_coords, start_params
    from bayeslmm.paths.quadrature_nodes import newton_start, posterior_sketch
    from bayeslmm.paths.quadrature_op import DATA_NAMES, op_data, op_kernel
    iu = DATA_NAMES.index("u0")
    data, b = make_design("binomial", "logit", q, [1, 4, 12, 30, 80], np.full(q, 0.9), seed=31 + q)
    sk = posterior_sketch(data, n_draws=6, seed=3)
    u0 = newton_start(data, sk, 4)
    fixed = newton_start(data, sk, 4, first_order=False)
    J, P = data.n_groups, data.p + q + q * (q - 1) // 2 + 1
    assert u0.shape == (J, q, 1 + P) and np.any(u0[:, :, 1:] != 0) and np.all(fixed[:, :, 1:] == 0)
    cold = list(op_data(data, 4).values())
    assert cold[iu].shape == (0, q, 1) and op_data(data, 4, u0[:, :, 0])["u0"].shape == (J, q, 1)
    starts = []
    for start in (u0, fixed, u0[:, :, 0] + 1e3):
        arrays = list(cold)
        arrays[iu] = op_data(data, 4, start)["u0"]
        starts.append(arrays)
    b0, sd0, C0, _ = sk["centre"]
    points = [(sk["b"][s], sk["sd"][s], sk["Cc"][s]) for s in range(3)] + [(b0, sd0, C0)]
    points.append((b0, np.concatenate([[0.0], sd0[1:]]), C0))
    for bb, sd, Cc in points:
        ref = op_kernel(np.array(1), np.ones(J), bb, sd, Cc, np.array(1.0), *cold)
        for arrays in starts:
            got = op_kernel(np.array(1), np.ones(J), bb, sd, Cc, np.array(1.0), *arrays)
            np.testing.assert_allclose(got[0], ref[0], rtol=0, atol=1e-10)
            for g, r in zip(got[1:], ref[1:]):
                np.testing.assert_allclose(g, r, rtol=1e-8, atol=1e-8)
    modes = Q.group_loglik_grad(data, b0, sd0, C0, n_nodes=4)["modes"]
    np.testing.assert_allclose(newton_v0(u0, b0, sd0, C0, 1.0, J), modes, rtol=0, atol=1e-10)
    np.testing.assert_array_equal(newton_v0(u0, b0, np.concatenate([[0.0], sd0[1:]]), C0, 1.0, J), 0.0)
    np.testing.assert_array_equal(newton_v0(u0[:0], b0, sd0, C0, 1.0, J), 0.0)
    th0 = start_coords(b0, sd0, C0, 1.0)
    for k, v in zip(range(4), start_params(th0, data.p, q)):
        np.testing.assert_allclose(v, (b0, sd0, C0, 1.0)[k], rtol=1e-14, atol=1e-15)
    # a step of 0.05 in every coordinate: the fixed start is off by O(0.05), the first-order one by
    # O(0.05^2); 5x closer leaves room for the second-order terms' constants
    th = th0 + 0.05 * np.where(np.arange(P) < P - 1, 1.0, 0.0)
    bb, sd, Cc, _ = start_params(th, data.p, q)
    at = Q.group_loglik_grad(data, bb, sd, Cc, n_nodes=4)["modes"]
    err1 = np.abs(newton_v0(u0, bb, sd, Cc, 1.0, J) - at).max()
    err0 = np.abs(newton_v0(fixed, bb, sd, Cc, 1.0, J) - at).max()
    assert err1 < err0 / 5, (err1, err0)


@pytest.mark.parametrize("family,link", FAMILIES)
@pytest.mark.parametrize("q", [2, 3])
def test_lockstep_modes_equal_each_groups_newton(family, link, q):
    """The small groups' modes found in lockstep (quadrature_lockstep) against find_mode run on each
    group alone from the same start: the same iteration per lane, so equal to rounding (< 1e-10;
    the sums run in another order), and so are the mode pass's rows, gradient and -Hessian. Sizes
    1..64 take the lockstep, 0 and 65+ are left alone (ok stays False), and the kernel's modes equal
    the per-group ones too."""
    from bayeslmm.paths.quadrature_lockstep import LOCKSTEP_MAX_ROWS, lockstep_modes, lockstep_plan
    from bayeslmm.paths.quadrature_families import fam_mode
    from bayeslmm.paths.quadrature_mode import find_mode, grad_hess
    rng = np.random.default_rng(40 + q)
    sizes = [1, 2, 3, 5, 8, 13, 20, 21, 0, 40, 64, 65, 90, 7, 7, 1]
    data, b = make_design(family, link, q, sizes, np.full(q, 1.1), seed=q + 3)
    sd, Cc = rng.uniform(0.4, 1.5, size=q), random_corr_chol(q, rng)
    J, phi = data.n_groups, PHI if family == "negbinomial" else 1.0
    lphi = np.log(phi) if family == "negbinomial" else 0.0
    T = sd[:, None] * Cc
    eta0 = data.offset + b @ data.Xt
    w = np.ascontiguousarray(T.T @ data.Zt)
    start = rng.normal(scale=2.0, size=(J, q))
    modes, ok = np.full((J, q), 7.0), np.zeros(J, dtype=np.bool_)
    rows, gh = np.full((8, len(data.y)), np.nan), np.full((J, 9), np.nan)
    lockstep_modes(data.code, q, data.y, data.trials, eta0, w, phi, lphi,
                   lockstep_plan(data.starts, LOCKSTEP_MAX_ROWS), start, modes, ok, rows, gh)
    # without want_l, the rows of l are not written (the kernel reads them only for one node)
    rows2 = np.full((8, len(data.y)), np.nan)
    lockstep_modes(data.code, q, data.y, data.trials, eta0, w, phi, lphi,
                   lockstep_plan(data.starts, LOCKSTEP_MAX_ROWS), start.copy(), modes.copy(), ok.copy(), rows2,
                   gh.copy(), False)
    assert np.isnan(rows2[1]).all()
    # (fam_mode's loop without l computes the sigmoid inline: equal but for the last bit)
    np.testing.assert_allclose(rows2[[0, 2, 3, 4]], rows[[0, 2, 3, 4]], rtol=1e-14, atol=1e-15)
    # the phi-derivatives (rows 5-7) are written only for the negative binomial, zero otherwise
    written = [0, 1, 2, 3, 4] + ([5, 6, 7] if family == "negbinomial" else [])
    assert family == "negbinomial" or np.isnan(rows[5:]).all()
    small = (np.diff(data.starts) >= 1) & (np.diff(data.starts) <= LOCKSTEP_MAX_ROWS)
    np.testing.assert_array_equal(ok, small)
    np.testing.assert_array_equal(modes[~small], 7.0)
    for j in np.flatnonzero(small):
        s0, s1 = data.starts[j], data.starts[j + 1]
        v = start[j].copy()
        m = s1 - s0
        assert find_mode(data.code, data.y[s0:s1], data.trials[s0:s1], eta0[s0:s1], np.ascontiguousarray(w[:, s0:s1]),
                         q, v, phi, lphi, np.zeros((q, q)), np.zeros((q, q)), np.empty(m), np.empty(m), np.empty(m),
                         np.zeros((3, q, q)), np.zeros((12, q)))
        np.testing.assert_allclose(modes[j], v, rtol=0, atol=1e-10)
        start[j] = v
        # the mode pass: the rows' eta, l, l', l'', l''' and phi-derivatives, g and H at the mode
        ref = [data.offset[s0:s1] + b @ data.Xt[:, s0:s1] + v @ w[:, s0:s1]] + [np.empty(m) for _ in range(7)]
        fam_mode(data.code, data.y[s0:s1], data.trials[s0:s1], ref[0], phi, lphi, *ref[1:])
        np.testing.assert_allclose(rows[written, s0:s1], np.array(ref)[written], rtol=1e-9, atol=1e-12)
        if family != "negbinomial":
            np.testing.assert_array_equal(np.array(ref)[5:], 0.0)
        g, H = np.empty(q), np.empty((q, q))
        grad_hess(ref[2], ref[3], np.ascontiguousarray(w[:, s0:s1]), v, q, g, H)
        np.testing.assert_allclose(gh[j, :q], g, rtol=0, atol=1e-10)
        np.testing.assert_allclose(gh[j, [3, 4, 5, 6, 7, 8][:3 if q == 2 else 6]],
                                   H[np.tril_indices(q)] if q == 2 else H[[0, 1, 1, 2, 2, 2], [0, 0, 1, 0, 1, 2]],
                                   rtol=1e-12, atol=1e-10)
    kernel_modes = Q.group_loglik_grad(data, b, sd, Cc, phi, n_nodes=3)["modes"]
    np.testing.assert_allclose(kernel_modes[small], start[small], rtol=0, atol=1e-10)


# --------------------------------------------------------------------------------------------
# The gradient against finite differences
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family,link", FAMILIES)
@pytest.mark.parametrize("q", [1, 2, 3])
def test_gradient_matches_finite_differences(family, link, q):
    """d(sum_j w_j log L_j) with respect to b, sd, C_chol (lower triangle) and phi against central
    differences (h = 1e-5) of the same kernel: relative error < 1e-6 (observed <= 5e-8; the
    difference quotient's own error is ~1e-9). This is the exact gradient of the approximation,
    through the modes and the curvature, not of the exact integral."""
    rng = np.random.default_rng(10 * q + len(family))
    data, b = make_design(family, link, q, [1, 3, 0, 8, 20], np.full(q, 0.8), seed=q)
    sd = rng.uniform(0.3, 1.2, size=q)
    Cc = random_corr_chol(q, rng)
    k = {1: 5, 2: 4, 3: 3}[q]
    wts = rng.uniform(0.5, 1.5, size=data.n_groups)
    out = Q.group_loglik_grad(data, b, sd, Cc, PHI, n_nodes=k, weights=wts)

    def f(b_, sd_, C_, ph_):
        return wts @ Q.group_loglik(data, b_, sd_, C_, ph_, n_nodes=k)
    h = 1e-5
    checks = []
    for i in range(len(b)):
        e = np.zeros(len(b))
        e[i] = h
        checks.append((out["b"][i], (f(b + e, sd, Cc, PHI) - f(b - e, sd, Cc, PHI)) / (2 * h)))
    for i in range(q):
        e = np.zeros(q)
        e[i] = h
        checks.append((out["sd"][i], (f(b, sd + e, Cc, PHI) - f(b, sd - e, Cc, PHI)) / (2 * h)))
        for m in range(i + 1):
            E = np.zeros((q, q))
            E[i, m] = h
            checks.append((out["Cc"][i, m], (f(b, sd, Cc + E, PHI) - f(b, sd, Cc - E, PHI)) / (2 * h)))
    if family == "negbinomial":
        checks.append((float(out["phi"]), (f(b, sd, Cc, PHI + h) - f(b, sd, Cc, PHI - h)) / (2 * h)))
    else:
        assert float(out["phi"]) == 0.0
    for an, num in checks:
        assert abs(an - num) <= 1e-6 * max(1.0, abs(num)), (an, num)


# --------------------------------------------------------------------------------------------
# The default number of nodes
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family,link,q,sd", [("bernoulli", "logit", 1, [2.0]), ("bernoulli", "probit", 1, [1.5]),
                                              ("binomial", "logit", 2, [1.0, 0.5]),
                                              ("bernoulli", "logit", 2, [1.5, 0.7])])
def test_default_nodes_meet_the_bound(family, link, q, sd):
    """The SD over posterior-like draws (a Laplace sketch of the likelihood) of the total
    log-likelihood error is <= ERROR_TOL (0.01) with the default nodes on hard designs (SD up to 2
    on the link scale, 120 groups of 1-30 rows, all-zero and all-one groups), and a too-small rule
    (3 per axis) fails the same check (negative control)."""
    from bayeslmm.paths.quadrature_nodes import posterior_sketch
    rng = np.random.default_rng(20)
    sizes = rng.integers(1, 31, size=120)
    data, _ = make_design(family, link, q, sizes, sd, seed=21)
    sk = posterior_sketch(data, n_draws=30, seed=22)
    k, table = Q.choose_n_nodes(data, sk["b"], sk["sd"], sk["Cc"], candidates=[3, Q.default_nodes(q)])
    print(f"\n{family}/{link} q={q}: SD over the posterior of the total error: {table}")
    assert table[Q.default_nodes(q)] <= Q.ERROR_TOL
    assert table[3] > Q.ERROR_TOL
    assert k == Q.default_nodes(q)


def test_auto_n_nodes_picks_fewer_nodes_where_the_data_allow():
    """Negative binomial with two terms: the check on the data settles for 4 per axis (16 nodes
    instead of the default 49), and 4 does meet the bound against the reference."""
    from bayeslmm.paths.quadrature_nodes import auto_n_nodes
    rng = np.random.default_rng(20)
    data, _ = make_design("negbinomial", "log", 2, rng.integers(1, 31, size=120), [0.8, 0.4], seed=26)
    k, table = auto_n_nodes(data, candidates=[3, 4, 5, 7])
    assert k == 4 and table[4] <= Q.ERROR_TOL < table[3]


# --------------------------------------------------------------------------------------------
# Conditional draws of the group effects
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family,link", [("bernoulli", "logit"), ("bernoulli", "probit"), ("poisson", "log"),
                                         ("negbinomial", "log")])
def test_draws_q1_match_brute_force_moments(family, link):
    """Exact rejection draws (q = 1): mean and variance per group within 5 Monte Carlo SEs of the
    moments by quad (two-sided false-alarm rate ~6e-7 per comparison); about 1.1 proposals per draw."""
    data, b = make_design(family, link, 1, [1, 3, 0, 10, 30], 1.3, seed=31)
    S = 8000
    u, diag = Q.draw_group_effects(data, np.tile(b, (S, 1)), np.full((S, 1), 1.3), None, np.full(S, PHI), seed=1)
    assert np.all(np.isfinite(u)) and 1.0 <= np.mean(diag["proposals"]) < 1.5 and np.isnan(diag["ess"]).all()
    for j in range(data.n_groups):
        eta0, Z = group_parts(data, j, b)

        def dens(x):
            return np.exp(row_logpmf(data, j, eta0 + Z[:, 0] * x) + stats.norm.logpdf(x, 0.0, 1.3) - c)
        m = optimize.minimize_scalar(lambda x: -row_logpmf(data, j, eta0 + Z[:, 0] * x)
                                     + 0.5 * (x / 1.3) ** 2, bracket=(-1, 1)).x
        c = row_logpmf(data, j, eta0 + Z[:, 0] * m) + stats.norm.logpdf(m, 0.0, 1.3)
        lim = (m - 40.0, m + 40.0)
        mass = integrate.quad(dens, *lim, points=[m], limit=300)[0]
        mean = integrate.quad(lambda x: x * dens(x), *lim, points=[m], limit=300)[0] / mass
        var = integrate.quad(lambda x: (x - mean) ** 2 * dens(x), *lim, points=[m], limit=300)[0] / mass
        uj = u[:, j, 0]
        assert abs(uj.mean() - mean) < 5 * np.sqrt(var / S), (j, uj.mean(), mean)
        # SE of a sample variance: sqrt((m4 - var^2) / S), m4 estimated from the draws
        se_var = np.sqrt((np.mean((uj - uj.mean()) ** 4) - uj.var() ** 2) / S)
        assert abs(uj.var() - var) < 5 * se_var, (j, uj.var(), var)


def test_draws_q2_match_grid_moments():
    """Draws for q = 2: means and variances per group within 5 Monte Carlo SEs of the dense-grid
    moments. Every group is drawn exactly (ESS reported as NaN), the 300-row one too, by rejection
    from the ball envelope: 1 to 3 proposals a draw, where N(v*, I) needed ~26 for the 300-row group
    (more than n_proposals / 2 = 16, so it used to fall back to importance resampling). The
    fallback itself (``max_expected=0`` sends every group there): importance resampling from 32
    proposals, biased O(1/n_proposals), which is far below 5 SEs where the t proposal matches the
    target, so its moments are checked on the 300-row group (weights' ESS > 20). Broken once, the
    rows' curvature floors tripled (B no longer a bound), the small groups' variances failed."""
    rng = np.random.default_rng(40)
    data, b = make_design("binomial", "logit", 2, [1, 4, 12, 300], [0.9, 0.6], seed=41)
    sd, Cc = np.array([0.9, 0.6]), random_corr_chol(2, rng)
    _, means, covs = grid_q2(data, b, sd, Cc, h=0.03, moments=True)
    S = 6000
    args = (np.tile(b, (S, 1)), np.tile(sd, (S, 1)), np.tile(Cc, (S, 1, 1)))
    u, diag = Q.draw_group_effects(data, *args, seed=2, n_proposals=32)
    assert np.isnan(diag["ess"]).all()
    assert 1.0 <= np.mean(diag["proposals"]) < 3 and np.mean(diag["proposals"][:, 3]) < 3
    us, ds = Q.draw_group_effects(data, *args, seed=3, n_proposals=32, max_expected=0.0)
    assert not np.isnan(ds["ess"]).any() and np.median(ds["ess"][:, 3]) > 20 and np.all(ds["proposals"] >= 32)

    def close(x, j, a):
        assert abs(x.mean() - means[j, a]) < 5 * np.sqrt(covs[j, a, a] / S), (j, a, x.mean(), means[j, a])
        se_var = np.sqrt((np.mean((x - x.mean()) ** 4) - x.var() ** 2) / S)
        assert abs(x.var() - covs[j, a, a]) < 5 * se_var, (j, a, x.var(), covs[j, a, a])
    for a in range(2):
        for j in range(data.n_groups):
            close(u[:, j, a], j, a)
        close(us[:, 3, a], 3, a)


def test_curvature_floor_is_the_least_curvature_over_the_interval():
    """The draws' envelope rests on curvature_floors: a lower bound of -l''(eta) over [lo, hi] per
    row. Against -l'' on a 2001-point grid of the interval (numpy and scipy formulas), on random
    rows and intervals up to eta = +-40: never above the grid's least value (to 1e-12 relative; probit
    1e-8, the two Mills ratios' agreement where r (x + r) cancels),
    and equal to it for logit, Poisson and the negative binomial (their bound is exact: the least
    value is at an end, which the grid holds). Probit bounds each of its two terms at its own end,
    so it may be lower, but stays positive. Broken once (the logit's at |eta| - r), it fails, and so does
    test_ball_envelope_bounds_the_target."""
    from scipy import special as sp

    from bayeslmm.paths.quadrature_families import curvature_floors
    rng = np.random.default_rng(71)

    def probit_curv(x):          # -(d/dx)^2 log Phi(x) = r (x + r), r = phi / Phi
        r = np.exp(stats.norm.logpdf(x) - sp.log_ndtr(x))
        return r * (x + r)
    lphi = np.log(PHI)
    for fam in (0, 1, 2, 3):
        for _ in range(60):
            n = float(rng.integers(1, 12))
            y = float(rng.integers(0, int(n) + 1)) if fam in (0, 1) else float(rng.integers(0, 30))
            lo = rng.uniform(-40, 10) if fam != 2 else rng.uniform(-20, 5)
            hi = lo + rng.exponential(3.0)
            t = np.linspace(lo, hi, 2001)
            if fam == 0:
                curv = n * special.expit(t) * special.expit(-t)
            elif fam == 1:
                curv = y * probit_curv(t) + (n - y) * probit_curv(-t)
            elif fam == 2:
                curv = np.exp(t)
            else:
                curv = (y + PHI) * special.expit(t - lphi) * special.expit(lphi - t)
            got = np.empty(1)
            curvature_floors(fam, np.array([y]), np.array([n]), np.array([0.5 * (lo + hi)]),
                             np.array([0.5 * (hi - lo)]), PHI, lphi, got)
            got = got[0]
            # probit: the curvature r (x + r) cancels for x << 0 (r ~ -x), so the two implementations of
            # the Mills ratio (both ~1e-12) differ by up to ~1e-9 there
            tol = 1e-8 if fam == 1 else 1e-12
            assert 0.0 <= got <= curv.min() * (1 + tol), (fam, y, n, lo, hi, got, curv.min())
            if fam != 1:
                np.testing.assert_allclose(got, curv.min(), rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("family,link", FAMILIES[1:])
@pytest.mark.parametrize("q", [2, 3])
def test_ball_envelope_bounds_the_target(family, link, q):
    """The ball envelope of the two- and three-term draws is an upper bound of the target: at the
    mode of every group (1 to 200 rows, and the all-zero / all-maximum groups), f(v) - f(v*) computed
    with scipy's log-pmfs stays below log envelope(y), y = L'(v - v*), at 400 points from the mode
    out to |y| = 60 (inside and outside the ball, along the axes and at random directions), to
    1e-9. The bound is also of use: its mass is below N(v*, I)'s for the informative groups. Negative
    control in the test: the same envelope with B doubled is exceeded somewhere."""
    from bayeslmm.paths.quadrature_envelope import RHO, ball_envelope
    from bayeslmm.paths.quadrature_families import fam_newton
    rng = np.random.default_rng(72 + q)
    sd = np.full(q, 0.9)
    data, b = make_design(family, link, q, [1, 3, 10, 40, 200], sd, seed=73 + q)
    Cc = random_corr_chol(q, rng)
    phi = PHI if family == "negbinomial" else 1.0
    modes = Q.group_loglik_grad(data, b, sd, Cc, phi, n_nodes=3)["modes"]
    T = np.diag(sd) @ Cc
    dirs = rng.normal(size=(400, q))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    dirs[:2 * q] = np.vstack([np.eye(q), -np.eye(q)])
    radii = np.geomspace(0.02, 60.0, 400)
    rng.shuffle(radii)
    ys = dirs * radii[:, None]
    violated_doubled = False
    for j in range(data.n_groups):
        s0, s1 = data.starts[j], data.starts[j + 1]
        eta0, Z = group_parts(data, j, b)
        w = np.ascontiguousarray((Z @ T).T)
        v = modes[j]
        eta = eta0 + v @ w
        d1, d2 = np.empty(len(eta)), np.empty(len(eta))
        fam_newton(data.code, data.y[s0:s1], data.trials[s0:s1], eta, phi, np.log(phi), d1, d2)
        H = np.eye(q) + (w * -d2) @ w.T
        L = np.linalg.cholesky(H)
        B, LB = np.empty((q, q)), np.empty((q, q))
        lexp, slope, _ = ball_envelope(data.code, data.y[s0:s1], data.trials[s0:s1], eta, w, q, L, phi, np.log(phi),
                                       B, LB, np.empty(s1 - s0), np.empty(s1 - s0))
        assert np.isfinite(lexp)
        if s1 - s0 >= 40:
            assert lexp < np.sum(np.log(np.diag(L))), (j, lexp)   # expected proposals below N(v*, I)'s
        x = np.linalg.solve(L.T, ys.T).T                   # v - v* = L^-T y
        f = np.array([row_logpmf(data, j, eta0 + (v + xi) @ w, phi) - 0.5 * (v + xi) @ (v + xi) for xi in x])
        f0 = row_logpmf(data, j, eta, phi) - 0.5 * v @ v
        r = np.linalg.norm(ys, axis=1)
        quad = np.einsum("ka,ab,kb->k", ys, B, ys)
        outer = np.where(r > RHO, -slope * (r - 0.5 * RHO), -np.inf)
        env = np.logaddexp(-0.5 * quad, outer)
        gap = (f - f0) - env
        assert np.all(gap <= 1e-9 * (1 + np.abs(f - f0))), (j, gap.max(), r[np.argmax(gap)])
        violated_doubled |= bool(np.any((f - f0) - np.logaddexp(-quad, outer) > 1e-6))
    assert violated_doubled


def test_draws_are_seeded():
    data, b = make_design("poisson", "log", 2, [2, 9], [0.5, 0.5], seed=50)
    args = (np.tile(b, (5, 1)), np.full((5, 2), 0.5))
    u1, _ = Q.draw_group_effects(data, *args, seed=3)
    u2, _ = Q.draw_group_effects(data, *args, seed=3)
    u3, _ = Q.draw_group_effects(data, *args, seed=4)
    np.testing.assert_array_equal(u1, u2)
    assert not np.allclose(u1, u3)


@pytest.mark.parametrize("q", [1, 2])
def test_draws_do_not_depend_on_the_number_of_threads(q):
    """Blocks of draws in parallel threads give exactly the serial result (each draw's random
    numbers depend on (seed, draw, group) only), and a different draw offset gives other numbers."""
    data, b = make_design("poisson", "log", q, [3, 7, 12], [0.5] * q, seed=51)
    S = 7
    args = (np.tile(b, (S, 1)) + np.linspace(-0.1, 0.1, S)[:, None], np.full((S, q), 0.6))
    u1, d1 = Q.draw_group_effects(data, *args, seed=5, threads=1)
    for n in (2, 3, S, 20):
        un, dn = Q.draw_group_effects(data, *args, seed=5, threads=n)
        np.testing.assert_array_equal(un, u1)
        for key in ("proposals", "ess"):
            np.testing.assert_array_equal(dn[key], d1[key])
    # the offset matters: the last block alone, drawn as if it were draws 0.., differs
    u_last, _ = Q.draw_group_effects(data, args[0][4:], args[1][4:], seed=5, threads=1)
    assert not np.allclose(u_last, u1[4:])


@pytest.mark.parametrize("q", [1, 2])
def test_draws_with_the_models_newton_start_are_the_same_draws(q):
    """The group effects drawn with the fitted model's Newton start (newton_start, first order) are
    those drawn from a cold start, with the same proposal counts, over draws spread around the
    start's centre. The envelopes sit at the mode (the same to ~1e-12 from either start), but their
    coordinates (two or three terms: L, the -Hessian's factor) or tangent points (one term) are
    those of Newton's last iterate (any give an exact draw), which is < NEWTON_TOL = 1e-6 from the
    mode whatever the start, so the draws move by O(1e-6): equal to 1e-4."""
    from bayeslmm.paths.quadrature_nodes import newton_start, posterior_sketch
    data, b = make_design("binomial", "logit", q, [2, 6, 15, 40], np.full(q, 0.8), seed=61 + q)
    sk = posterior_sketch(data, n_draws=8, seed=2)
    u0 = newton_start(data, sk, 4)
    args = (sk["b"], sk["sd"], sk["Cc"])
    cold, dc = Q.draw_group_effects(data, *args, seed=9, threads=1)
    warm, dw = Q.draw_group_effects(data, *args, seed=9, threads=1, start=u0)
    assert np.isfinite(cold).all()
    np.testing.assert_allclose(warm, cold, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(dw["proposals"], dc["proposals"])


# --------------------------------------------------------------------------------------------
# The PyTensor Op
# --------------------------------------------------------------------------------------------
def test_op_matches_kernel_in_one_call():
    """The Op's log-likelihood and gradient equal the numpy kernel's, and the compiled function
    holds a single kernel application (value and gradient merged: one call per NUTS step).
    Python linker: the Op's own perform (the numba-linked dispatch is what every fit runs, e.g.
    tests/test_families.py and tests/test_quadrature_path.py; compiling it here cost ~90 s cold)."""
    import pytensor
    import pytensor.tensor as pt
    from pytensor.compile.mode import Mode

    from bayeslmm.paths.quadrature_op import AGHQLogLik, aghq_logp, op_data
    data, _ = make_design("negbinomial", "log", 2, [1, 3, 10], [0.7, 0.4], seed=60)
    b, sd, C, phi = pt.vector("b"), pt.vector("sd"), pt.matrix("C"), pt.scalar("phi")
    shared = [pytensor.shared(v, name=k, shape=(None,) * np.ndim(v)) for k, v in op_data(data, 5).items()]
    lp = aghq_logp(b, sd, C, phi, *shared, linked=True).sum()
    f = pytensor.function([b, sd, C, phi], [lp] + pytensor.grad(lp, [b, sd, C, phi]),
                          mode=Mode(linker="py", optimizer="fast_run"))
    bv, sv, Cv = np.array([0.1, 0.2]), np.array([0.7, 0.4]), np.array([[1.0, 0.0], [0.6, 0.8]])
    out = f(bv, sv, Cv, np.array(2.0))
    ref = Q.group_loglik_grad(data, bv, sv, Cv, 2.0, n_nodes=5)
    np.testing.assert_allclose(out[0], ref["logl"].sum(), rtol=1e-12)
    for got, key in zip(out[1:], ["b", "sd", "Cc", "phi"]):
        np.testing.assert_allclose(got, ref[key], rtol=1e-10, atol=1e-12)
    n_ops = sum(isinstance(nd.op, AGHQLogLik) for nd in f.maker.fgraph.toposort())
    assert n_ops == 1


def test_object_mode_call_takes_read_only_and_zero_d_inputs():
    """PyMC's fits call the kernel through numba's object mode (quadrature_op._call_kernel), where
    constants arrive read-only: they are copied, and a 0-d one (phi, grad) must stay 0-d (it once
    became 1-d and the kernel failed to compile inside every model). Same numbers as a direct call."""
    from bayeslmm.paths.quadrature_op import _call_kernel, op_data, op_kernel
    data, _ = make_design("negbinomial", "log", 2, [1, 3, 10], [0.7, 0.4], seed=61)
    arrays = list(op_data(data, 5).values())
    params = [np.array(1), np.ones(len(arrays[-1])), np.array([0.1, 0.2]), np.array([0.7, 0.4]),
              np.array([[1.0, 0.0], [0.6, 0.8]]), np.array(2.0)]
    frozen = []
    for a in params + arrays:
        a = np.array(a)
        a.flags.writeable = False
        frozen.append(a)
    got = _call_kernel(*frozen)
    ref = op_kernel(*[np.asarray(a, dtype=np.int64 if a.dtype.kind in "iu" else np.float64).copy()
                      for a in params + arrays])
    for x, y in zip(got, ref):
        np.testing.assert_array_equal(x, y)


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------
def test_bad_input_raises_clear_errors():
    X, codes = np.ones((4, 1)), np.array([0, 0, 1, 1])
    with pytest.raises(DataError, match="between 0 and trials"):
        Q.prepare([0, 3, 1, 0], X, codes, family="binomial", trials=[2, 2, 2, 2])
    with pytest.raises(DataError, match="non-negative whole"):
        Q.prepare([0, -1, 1, 0], X, codes, family="poisson")
    with pytest.raises(DataError, match="non-negative whole"):
        Q.prepare([0, 1.5, 1, 0], X, codes, family="negbinomial")
    with pytest.raises(DataError, match="offset has 1 NaN"):
        Q.prepare([0, 1, 1, 0], X, codes, family="poisson", offset=[0, np.nan, 0, 0])
    with pytest.raises(SpecError, match="link 'log' is not available.*bernoulli/logit"):
        Q.prepare([0, 1, 1, 0], X, codes, family="bernoulli", link="log")
    with pytest.raises(SpecError, match="1 to 3 group-level terms"):
        Q.prepare([0, 1, 1, 0], X, codes, np.ones((4, 4)), family="bernoulli")
    with pytest.raises(DataError, match="codes must lie"):
        Q.prepare([0, 1, 1, 0], X, np.array([0, 0, 1, 5]), family="bernoulli", n_groups=2)


# --------------------------------------------------------------------------------------------
# Cost at scale
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cost_at_100k_rows():
    """Bernoulli random intercept, 100,000 rows / 2,000 groups: seconds per log-likelihood + gradient
    (CPU time of this process, so other load on the machine inflates it less), printed per number
    of nodes. The bound asserted is loose (a regression alarm, not a benchmark)."""
    rng = np.random.default_rng(70)
    J, n = 2000, 100_000
    codes = rng.integers(0, J, size=n)
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    b, sd = np.array([-0.5, 0.7]), np.array([1.0])
    y = (rng.random(n) < special.expit(X @ b + rng.normal(size=J)[codes])).astype(float)
    data = Q.prepare(y, X, codes, family="bernoulli")
    Q.group_loglik_grad(data, b, sd, n_nodes=1)
    costs = {}
    for k in (1, 7, Q.default_nodes(1)):
        Q.group_loglik_grad(data, b, sd, n_nodes=k)
        t0 = time.process_time()
        for r in range(10):
            Q.group_loglik_grad(data, b * (1 + 1e-3 * r), sd, n_nodes=k)
        costs[k] = (time.process_time() - t0) / 10
    print("\nlogp + gradient, 100k rows / 2k groups: "
          + ", ".join(f"k={k}: {c * 1e3:.1f} ms" for k, c in costs.items()))
    assert costs[Q.default_nodes(1)] < 0.2


# --------------------------------------------------------------------------------------------
# The posterior against a plain non-centred PyMC model
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family,link", [("bernoulli", "logit"), ("binomial", "probit"), ("poisson", "log")])
def test_merged_rows_give_the_same_likelihood(family, link):
    """Rows with identical group, predictors and offset are merged (successes and trials summed;
    counts summed with log(rows) in the offset): the log-likelihood and its gradient are unchanged
    (to rounding), with far fewer kernel rows."""
    rng = np.random.default_rng(80)
    J, n = 12, 600
    codes = rng.integers(0, J, size=n)
    cond = rng.integers(0, 3, size=n)                               # a three-level predictor
    X = np.column_stack([np.ones(n), cond == 1, cond == 2]).astype(float)
    Z = np.column_stack([np.ones(n), cond == 2]).astype(float)
    trials = rng.integers(1, 4, size=n).astype(float) if family == "binomial" else None
    eta = X @ np.array([0.2, -0.5, 0.4]) + rng.normal(size=J)[codes]
    y = (rng.poisson(np.exp(eta)) if family == "poisson"
         else rng.binomial(1 if trials is None else trials.astype(int), special.expit(eta))).astype(float)
    merged = Q.prepare(y, X, codes, Z, family=family, link=link, trials=trials)
    plain = Q.prepare(y, X, codes, Z, family=family, link=link, trials=trials, merge=False)
    assert len(merged.y) <= 3 * J < len(plain.y)
    args = (np.array([0.2, -0.5, 0.4]), np.array([0.8, 0.5]), np.array([[1.0, 0.0], [0.3, np.sqrt(0.91)]]))
    a, b = Q.group_loglik_grad(merged, *args), Q.group_loglik_grad(plain, *args)
    for key in ("logl", "b", "sd", "Cc"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-10, atol=1e-10)
    group_of_kernel_row = np.searchsorted(merged.starts, np.arange(len(merged.y)), side="right") - 1
    np.testing.assert_array_equal(group_of_kernel_row[merged.row_of], codes)
    np.testing.assert_array_equal(merged.Xt.T[merged.row_of], X)


# --------------------------------------------------------------------------------------------
# Numerics of the row functions
# --------------------------------------------------------------------------------------------
def test_fast_exp_log_and_probit_tails_match_scipy():
    """The vectorisable exp and log(1 + e) against numpy (relative error < 4e-15 over the whole
    range, absolute < 3e-16 for the log), and log Phi and phi/Phi against scipy down to x = -1e4."""
    import numba

    from bayeslmm.paths.quadrature_families import log_ndtr_mills, vexp, vlog1p01

    @numba.njit
    def run(x, e, z):
        a = np.empty_like(x)
        c = np.empty_like(e)
        d = np.empty_like(z)
        r = np.empty_like(z)
        for i in range(x.shape[0]):
            a[i] = vexp(x[i])
        for i in range(e.shape[0]):
            c[i] = vlog1p01(e[i])
        for i in range(z.shape[0]):
            d[i], r[i] = log_ndtr_mills(z[i])
        return a, c, d, r
    x = np.concatenate([np.linspace(-708, 709, 200001), np.random.default_rng(0).normal(size=10000)])
    e = np.concatenate([np.linspace(0, 1, 100001), np.logspace(-300, 0, 1000)])
    z = np.concatenate([-np.logspace(4, -3, 3000), np.linspace(-40, 40, 8001)])
    a, c, d, r = run(x, e, z)
    assert np.max(np.abs(a / np.exp(x) - 1)) < 4e-15
    assert np.max(np.abs(c - np.log1p(e))) < 3e-16
    np.testing.assert_allclose(d, special.log_ndtr(z), rtol=1e-12, atol=1e-300)
    # phi/Phi without cancellation: for z < 0, Phi(z) = erfcx(-z/sqrt 2) e^(-z^2/2) / 2
    with np.errstate(all="ignore"):
        mills = np.where(z < 0, np.sqrt(2 / np.pi) / special.erfcx(-z / np.sqrt(2)),
                         stats.norm.pdf(z) / stats.norm.cdf(z))
    np.testing.assert_allclose(r, mills, rtol=1e-11, atol=1e-300)


@pytest.mark.parametrize("family,link", FAMILIES)
@pytest.mark.parametrize("q", [1, 2])
def test_extreme_linear_predictors_stay_exact(family, link, q):
    """Offsets of +-40 (probabilities within e^-40 of 0 or 1, Poisson means e^+-10): at sd = 0 the
    kernel equals scipy's log-density exactly, and with sd > 0 the value and gradient are finite
    (one term, and two through the node pass of all nodes at once)."""
    data, b = make_design(family, link, q, [4, 4, 4], [0.5] * q, seed=90, extremes=False)
    scale = 10.0 if family in ("poisson", "negbinomial") else 40.0
    off = np.where(np.arange(len(data.y)) % 2 == 0, scale, -scale)
    ext = Q.QuadratureData(data.family, data.link, data.code, data.y, data.trials, off, data.Xt, data.Zt,
                           data.starts, data.row_of, data.const)
    ref = np.array([row_logpmf(ext, j, group_parts(ext, j, b)[0]) for j in range(ext.n_groups)])
    np.testing.assert_allclose(Q.group_loglik(ext, b, np.zeros(q), None, PHI), ref, rtol=1e-12)
    out = Q.group_loglik_grad(ext, b, np.full(q, 0.7), None, PHI)
    assert all(np.all(np.isfinite(out[k])) for k in ("logl", "b", "sd", "Cc", "phi"))


@pytest.mark.parametrize("family", ["bernoulli", "poisson"])
def test_random_intercept_path_equals_the_general_path(family):
    """A random intercept with bernoulli-logit or Poisson rows takes the exponential-free path
    (e^eta0 once per call, a product instead of a log per row); z = 2 with half the SD is the same
    model through the general path: equal log-likelihoods and gradients (d/dsd doubles)."""
    data, b = make_design(family, "logit" if family == "bernoulli" else "log", 1, [1, 3, 0, 10, 700], 1.1,
                          seed=100)
    twice = Q.QuadratureData(data.family, data.link, data.code, data.y, data.trials, data.offset, data.Xt,
                             2.0 * data.Zt, data.starts, data.row_of, data.const)
    a = Q.group_loglik_grad(data, b, np.array([1.1]))
    g = Q.group_loglik_grad(twice, b, np.array([0.55]))
    np.testing.assert_allclose(a["logl"], g["logl"], rtol=1e-12)
    np.testing.assert_allclose(a["b"], g["b"], rtol=1e-10)
    np.testing.assert_allclose(2.0 * a["sd"], g["sd"], rtol=1e-10)


def test_groups_can_use_different_numbers_of_nodes():
    """One kernel call with a number of nodes per group equals, group by group, the calls with one
    number for all (values, and gradients summed over the groups that use each number)."""
    rng = np.random.default_rng(110)
    data, b = make_design("bernoulli", "probit", 2, [1, 3, 8, 20, 2], [1.0, 0.5], seed=111)
    sd, Cc = np.array([1.0, 0.5]), random_corr_chol(2, rng)
    ks = np.array([3, 7, 4, 4, 7, 3, 5])
    mixed = Q.group_loglik_grad(data, b, sd, Cc, n_nodes=ks)
    grads = {key: 0.0 for key in ("b", "sd", "Cc")}
    for k in np.unique(ks):
        one = Q.group_loglik_grad(data, b, sd, Cc, n_nodes=int(k), weights=(ks == k).astype(float))
        np.testing.assert_allclose(mixed["logl"][ks == k], one["logl"][ks == k], rtol=1e-13)
        for key in grads:
            grads[key] = grads[key] + one[key]
    for key in grads:
        np.testing.assert_allclose(mixed[key], grads[key], rtol=1e-11, atol=1e-12)
    with pytest.raises(SpecError, match="one per group"):
        Q.group_loglik(data, b, sd, Cc, n_nodes=[3, 4])


def test_nodes_chosen_per_group_meet_the_bound_on_fresh_draws():
    """choose_nodes_per_group (two terms, bernoulli, 120 groups of 1-30 rows): the total-error SD
    on fresh draws from the sketch is <= ERROR_TOL, at about half the cost of the single number
    that meets the bound (7 per axis)."""
    from bayeslmm.paths.quadrature_nodes import choose_nodes_per_group, posterior_sketch
    rng = np.random.default_rng(20)
    data, _ = make_design("bernoulli", "logit", 2, rng.integers(1, 31, size=120), [1.5, 0.7], seed=22)
    sk = posterior_sketch(data, n_draws=30, seed=1)
    ks, info = choose_nodes_per_group(data, sk["b"], sk["sd"], sk["Cc"])
    fresh = posterior_sketch(data, n_draws=30, seed=2)
    err = [Q.group_loglik(data, fresh["b"][s], fresh["sd"][s], fresh["Cc"][s], n_nodes=ks).sum()
           - Q.group_loglik(data, fresh["b"][s], fresh["sd"][s], fresh["Cc"][s], n_nodes=15).sum() for s in range(30)]
    assert np.std(err) <= Q.ERROR_TOL
    sizes = data.group_sizes
    assert np.sum(sizes * ks ** 2) < 0.7 * np.sum(sizes * info["uniform"] ** 2)


def test_collapsed_model_logp_is_the_kernel_sum():
    """The formula front end's model (build_quadrature_model) with two correlated terms and a negative
    binomial: the likelihood term at a point equals the sum of the kernel's group log-likelihoods at
    that point's b, sd, correlation factor (LKJ from paths/blocks.py) and phi, and b[Intercept] is
    Intercept_c - mean(x) beta (the centring of paths/blocks.py). Python linker (no compilation)."""
    import pandas as pd
    import pytensor
    from pytensor.compile.mode import Mode

    import bayeslmm as blmm
    from bayeslmm.paths.quadrature_path import build_quadrature_model, quadrature_data
    rng = np.random.default_rng(120)
    g = np.repeat(np.arange(9), 5)
    x = rng.normal(0.7, 1.0, len(g))
    df = pd.DataFrame({"c": rng.poisson(np.exp(0.3 + 0.2 * x)), "x": x, "g": g.astype(str)})
    m = blmm.Model("c ~ x + (1 + x | g)", df, family="negbinomial")
    model = build_quadrature_model(m.design, m.prior_table, "negbinomial", None, n_nodes=5)
    assert sorted(v.name for v in model.free_RVs) == ["Intercept_c", "beta", "cpc_g", "phi", "sd_g"]
    lp = model.logp(vars=[model["y_collapsed"]], jacobian=False)
    outs = model.replace_rvs_by_values([model["b"], model["cor_g"]])
    fn = pytensor.function(model.value_vars, [lp, *outs], mode=Mode(linker="py", optimizer="fast_compile"),
                           on_unused_input="ignore")
    point = {"Intercept_c": 0.4, "beta": np.array([0.25]), "sd_g_log__": np.log([0.6, 0.3]),
             "cpc_g": np.array([0.4]), "phi_log__": np.log(3.0)}
    lik, b, cor = fn(*[np.asarray(point[v.name], dtype=float) for v in model.value_vars])
    np.testing.assert_allclose(b, [0.4 - x.mean() * 0.25, 0.25], rtol=1e-12)
    Cc = np.linalg.cholesky(cor)
    assert abs(Cc[1, 0] - np.tanh(0.4)) < 1e-12
    data = quadrature_data(m.design, "negbinomial", None)
    ref = Q.group_loglik(data, b, [0.6, 0.3], Cc, 3.0, n_nodes=5).sum()
    np.testing.assert_allclose(lik, ref, rtol=1e-12)


def test_proposal_variates_have_their_distributions():
    """The importance-resampling proposal's random numbers (quadrature_draws): the chi-square with
    T_DF degrees of freedom (Marsaglia-Tsang gamma) and both halves of a Box-Muller pair, against
    scipy by Kolmogorov-Smirnov on 100,000 seeded variates (deterministic; p > 1e-3), and the pair's
    halves uncorrelated (|r| < 4 / sqrt(n), 4 SEs)."""
    from scipy import stats
    from bayeslmm.paths.quadrature_draws import T_DF, _chi2_tdf
    from bayeslmm.paths.quadrature_rng import normal_pair as _normal_pair, seed_state as _seed_state
    state = np.zeros(1, dtype=np.uint64)
    _seed_state(11, 0, 0, state)
    n = 100_000
    chi = np.array([_chi2_tdf(state) for _ in range(n)])
    assert stats.kstest(chi, stats.chi2(T_DF).cdf).pvalue > 1e-3
    z = np.array([_normal_pair(state) for _ in range(n)])
    assert stats.kstest(z[:, 0], "norm").pvalue > 1e-3 and stats.kstest(z[:, 1], "norm").pvalue > 1e-3
    assert abs(np.corrcoef(z.T)[0, 1]) < 4 / np.sqrt(n)
