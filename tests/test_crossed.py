"""The exact collapsed path for crossed and multi-factor Gaussian designs (bayeslmm.paths.crossed*).

References: the dense multivariate normal (scipy) on the explicit marginal covariance
V = sigma^2 I + Z G Z' (Z built densely here, in the test only), the dense Gaussian conditional of
the group effects, central finite differences, and the one-factor collapsed kernel.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg as sla
import scipy.stats as ss

from bayeslmm.errors import DataError, SpecError
from bayeslmm.paths.crossed_draws import conditional_effects, conditional_moments, draw_effects
from bayeslmm.paths.crossed_kernel import crossed_logp, pack_theta, unpack_theta
from bayeslmm.paths.crossed_stats import Factor, crossed_stats


# --------------------------------------------------------------------------------------------
# Designs
# --------------------------------------------------------------------------------------------
def _crossed(rng, n_s=9, n_i=7, reps=2, drop=0.25):
    """Unbalanced subjects x items: random cells dropped (some subject x item cells are empty),
    and one extra subject observed in a single row."""
    s, i = np.meshgrid(np.arange(n_s), np.arange(n_i), indexing="ij")
    s, i = np.repeat(s.ravel(), reps), np.repeat(i.ravel(), reps)
    keep = rng.random(s.size) > drop
    keep[(s == 0) & (i == 0)] = False                   # a subject x item cell with no rows, surely
    s, i = np.append(s[keep], n_s), np.append(i[keep], 3)   # subject n_s: one row
    x = rng.standard_normal(len(s))
    return s, i, x, n_s + 1, n_i


def _make(rng, kind):
    if kind == "balanced":
        # every subject sees every item once per condition: all subjects' Z'Z blocks are equal,
        # so the level-group shortcut applies (one group)
        s, i, c = (m.ravel() for m in np.meshgrid(np.arange(9), np.arange(7), np.arange(2), indexing="ij"))
        s, i, x, J_s, J_i = s, i, c - 0.5, 9, 7
    else:
        s, i, x, J_s, J_i = _crossed(rng)
    n = len(s)
    X = np.column_stack([np.ones(n), x, rng.standard_normal(n)])
    one = np.ones((n, 1))
    slope = np.column_stack([np.ones(n), x])
    if kind == "intercepts":
        facs = [Factor("subject", s, one, J_s), Factor("item", i, one, J_i)]
    elif kind in ("slopes", "balanced"):
        facs = [Factor("subject", s, slope, J_s), Factor("item", i, slope, J_i)]
    elif kind == "nested":
        # subject:session nested in subject, crossed with item; 3 factors, different q
        sess = s * 3 + rng.integers(0, 3, n)
        _, sess = np.unique(sess, return_inverse=True)
        facs = [Factor("subject", s, slope, J_s), Factor("item", i, one, J_i),
                Factor("subject:session", sess, one, int(sess.max()) + 1)]
    elif kind == "blocks":
        # three terms on subject: (intercept, x) correlated, a third uncorrelated -> C block-diagonal
        z = rng.standard_normal(n)
        facs = [Factor("subject", s, np.column_stack([np.ones(n), x, z]), J_s), Factor("item", i, slope, J_i)]
    else:
        raise ValueError(kind)
    y = 10.0 + X @ np.array([0.0, 1.0, -0.5]) + rng.standard_normal(n)
    for f in facs:
        eff = rng.normal(0, 0.7, (f.n_levels, f.Z.shape[1]))
        y += np.sum(f.Z * eff[f.codes], axis=1)
    return y, X, facs


def _params(facs, rng, p=3):
    sds, Cs = [], []
    for f in facs:
        q = f.Z.shape[1]
        sds.append(rng.uniform(0.3, 1.2, q))
        if q == 1:
            Cs.append(np.eye(1))
        elif q == 2:
            Cs.append(np.linalg.cholesky(np.array([[1.0, -0.4], [-0.4, 1.0]])))
        else:   # block ((0, 1), (2,)): identity outside the correlated block
            C = np.eye(q)
            C[:2, :2] = np.linalg.cholesky(np.array([[1.0, 0.6], [0.6, 1.0]]))
            Cs.append(C)
    return rng.normal(0, 1, p) + np.array([10.0, 0, 0]), sds, Cs, 0.9


def _dense(y, X, facs, b, sds, Cs, sigma):
    """Dense Z (n x Q, factors in order, each level-major), G, V."""
    n = len(y)
    Zs, Gs = [], []
    for f, sd, C in zip(facs, sds, Cs):
        q = f.Z.shape[1]
        Zf = np.zeros((n, f.n_levels * q))
        for a in range(q):
            Zf[np.arange(n), f.codes * q + a] = f.Z[:, a]
        Zs.append(Zf)
        T = np.asarray(sd)[:, None] * C
        Gs.append(np.kron(np.eye(f.n_levels), T @ T.T))
    Z, G = np.hstack(Zs), sla.block_diag(*Gs)
    return Z, G, sigma ** 2 * np.eye(n) + Z @ G @ Z.T


KINDS = ["intercepts", "slopes", "nested", "blocks", "balanced"]
# blocked: the largest factor eliminated level by level, dense Schur complement (the default);
# dense: every effect in the dense part; grouped: levels with equal Z'Z blocks share their
# factorisation (forced on, also where every level is its own group)
MODES = {"blocked": dict(group_levels=False), "dense": dict(eliminate=False), "grouped": dict(group_levels=True)}


@pytest.fixture(params=KINDS)
def case(request):
    rng = np.random.default_rng(KINDS.index(request.param) + 11)
    y, X, facs = _make(rng, request.param)
    return request.param, y, X, facs, _params(facs, rng)


# --------------------------------------------------------------------------------------------
# Log-density
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_logp_equals_dense_mvn(case, mode):
    kind, y, X, facs, (b, sds, Cs, sigma) = case
    st = crossed_stats(y, X, facs, **MODES[mode])
    _, _, V = _dense(y, X, facs, b, sds, Cs, sigma)
    ref = ss.multivariate_normal(X @ b, V).logpdf(y)
    assert crossed_logp(st, b, sds, Cs, sigma) == pytest.approx(ref, rel=1e-8)


def test_design_has_the_awkward_cases():
    """The fixture really has an empty subject x item cell and a level with one row."""
    y, X, facs = _make(np.random.default_rng(11), "intercepts")
    s, i = facs[0].codes, facs[1].codes
    cells = np.zeros((facs[0].n_levels, facs[1].n_levels), int)
    np.add.at(cells, (s, i), 1)
    assert (cells == 0).any() and (np.bincount(s) == 1).any()


@pytest.mark.parametrize("mode", ["blocked", "grouped"])
def test_sd_zero_boundary_is_finite_and_exact(case, mode):
    """sd = 0 (on one factor, and on all): the density is the one without that factor."""
    kind, y, X, facs, (b, sds, Cs, sigma) = case
    st = crossed_stats(y, X, facs, **MODES[mode])
    for zero in ([0], list(range(len(facs)))):
        sd0 = [np.zeros_like(s) if k in zero else s for k, s in enumerate(sds)]
        lp, gb, gsd, gC, gsig = crossed_logp(st, b, sd0, Cs, sigma, grad=True)
        _, _, V = _dense(y, X, facs, b, sd0, Cs, sigma)
        assert lp == pytest.approx(ss.multivariate_normal(X @ b, V).logpdf(y), rel=1e-8)
        flat = np.concatenate([gb, *gsd, *[c.ravel() for c in gC], [gsig]])
        assert np.all(np.isfinite(flat))


# --------------------------------------------------------------------------------------------
# Gradient
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_gradient_equals_finite_differences(case, mode):
    """Central differences with step 1e-5 (relative to the parameter's scale): truncation error
    ~1e-10 and round-off ~1e-16 |lp| / 1e-5 ~ 1e-9 in absolute terms, so rtol 1e-6 on each entry
    (plus atol 1e-6 for entries near zero) is a strict check; entries are compared for every
    element of each C_k (the kernel returns d/dC for the full q x q array)."""
    kind, y, X, facs, (b, sds, Cs, sigma) = case
    st = crossed_stats(y, X, facs, **MODES[mode])
    theta = pack_theta(b, sds, Cs, sigma)
    lp, gb, gsd, gC, gsig = crossed_logp(st, b, sds, Cs, sigma, grad=True)
    an = pack_theta(gb, gsd, gC, gsig)

    def f(th):
        return crossed_logp(st, *unpack_theta(th, st.p, st.q))
    h = 1e-5 * np.maximum(1.0, np.abs(theta))
    fd = np.array([(f(theta + h[k] * e) - f(theta - h[k] * e)) / (2 * h[k]) for k, e in enumerate(np.eye(len(theta)))])
    np.testing.assert_allclose(an, fd, rtol=1e-6, atol=1e-6)


def test_gradient_at_tiny_sd():
    """Near the boundary (sd 1e-6 sigma) the gradient stays exact (no 1/sd anywhere)."""
    rng = np.random.default_rng(3)
    y, X, facs = _make(rng, "slopes")
    b, sds, Cs, sigma = _params(facs, rng)
    sds[1] = np.array([1e-6, 2e-6])
    st = crossed_stats(y, X, facs)
    theta = pack_theta(b, sds, Cs, sigma)
    an = pack_theta(*crossed_logp(st, b, sds, Cs, sigma, grad=True)[1:])

    def f(th):
        return crossed_logp(st, *unpack_theta(th, st.p, st.q))
    h = 1e-5 * np.maximum(1.0, np.abs(theta))
    fd = np.array([(f(theta + h[k] * e) - f(theta - h[k] * e)) / (2 * h[k]) for k, e in enumerate(np.eye(len(theta)))])
    np.testing.assert_allclose(an, fd, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------
# One factor: the same numbers as the one-factor collapsed kernel
# --------------------------------------------------------------------------------------------
def _one_factor_reference(design):
    """The one-factor kernel and its data, wherever the restructuring has put them."""
    from bayeslmm.paths import collapsed_kernel as mk
    from bayeslmm.stats import group_stats as stats_of
    return mk.one_factor_kernel, mk.kernel_data(stats_of(design))


def test_one_factor_equals_collapsed_kernel(sleepstudy):
    import bayeslmm as blmm
    d = blmm.Model("Reaction ~ Days + (Days | Subject)", sleepstudy).design
    kernel, data = _one_factor_reference(d)
    f = d.factors[0]
    b, sd, C, sigma = np.array([250.0, 10.0]), np.array([24.0, 6.0]), \
        np.linalg.cholesky(np.array([[1.0, 0.1], [0.1, 1.0]])), 25.0
    one = kernel(np.array(1), np.ones(f.n_levels), b, sd, C, np.array(sigma), *data)
    st = crossed_stats(d.y, d.X, d.factors)
    lp, gb, gsd, gC, gsig = crossed_logp(st, b, [sd], [C], sigma, grad=True)
    assert lp == pytest.approx(one[0].sum(), rel=1e-10)
    np.testing.assert_allclose(gb, one[1], rtol=1e-8)
    np.testing.assert_allclose(gsd[0], one[2], rtol=1e-8)
    np.testing.assert_allclose(gC[0], one[3], rtol=1e-8, atol=1e-12)
    assert gsig == pytest.approx(float(one[4]), rel=1e-8)


# --------------------------------------------------------------------------------------------
# Conditional draws of the group effects
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_conditional_moments_equal_dense_gaussian(case, mode):
    kind, y, X, facs, (b, sds, Cs, sigma) = case
    st = crossed_stats(y, X, facs, **MODES[mode])
    Z, G, V = _dense(y, X, facs, b, sds, Cs, sigma)
    VZG = np.linalg.solve(V, Z @ G)
    mean_ref = VZG.T @ (y - X @ b)
    cov_ref = G - G @ Z.T @ VZG
    mean, cov = conditional_moments(st, b, sds, Cs, sigma)
    scale = np.sqrt(np.diag(cov_ref)).max()
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-8, atol=1e-8 * scale)
    np.testing.assert_allclose(cov, cov_ref, rtol=1e-8, atol=1e-8 * scale ** 2)
    parts = conditional_effects(st, b, sds, Cs, sigma)             # the mean, per factor
    np.testing.assert_allclose(np.concatenate([p_.ravel() for p_ in parts]), mean_ref, rtol=1e-8,
                               atol=1e-8 * scale)


def test_conditional_draws_have_the_exact_moments():
    """m = 40,000 draws: each mean within 4.5 standard errors of the exact mean and each variance
    within 4.5 of its standard errors (sd(s^2) = sqrt(2) var / sqrt(m) for Gaussian draws); with
    ~80 entries the family-wise false-alarm rate is below 1e-3."""
    rng = np.random.default_rng(5)
    y, X, facs = _make(rng, "nested")
    b, sds, Cs, sigma = _params(facs, rng)
    st = crossed_stats(y, X, facs)
    mean, cov = conditional_moments(st, b, sds, Cs, sigma)
    m = 40_000
    parts = conditional_effects(st, b, sds, Cs, sigma, eps=rng.standard_normal((st.Q, m)))
    draws = np.concatenate([p_.reshape(-1, m) for p_ in parts])     # (Q, m), caller order
    sd = np.sqrt(np.diag(cov))
    assert np.all(np.abs(draws.mean(axis=1) - mean) < 4.5 * sd / np.sqrt(m))
    var = draws.var(axis=1)
    assert np.all(np.abs(var - sd ** 2) < 4.5 * np.sqrt(2.0 / m) * sd ** 2)
    # one off-diagonal entry with a strong correlation, against its standard error (~(1 + rho^2) / m)
    corr = cov / np.outer(sd, sd)
    np.fill_diagonal(corr, 0.0)
    i, j = np.unravel_index(np.argmax(np.abs(corr)), corr.shape)
    r = np.corrcoef(draws[i], draws[j])[0, 1]
    assert abs(r - corr[i, j]) < 4.5 * (1 - corr[i, j] ** 2) / np.sqrt(m)


def test_draw_effects_seeded_and_shaped():
    rng = np.random.default_rng(6)
    y, X, facs = _make(rng, "slopes")
    b, sds, Cs, sigma = _params(facs, rng)
    st = crossed_stats(y, X, facs)
    S = 3
    args = (np.tile(b, (S, 1)), [np.tile(s, (S, 1)) for s in sds], [np.tile(C, (S, 1, 1)) for C in Cs],
            np.full(S, sigma))
    one, two = draw_effects(st, *args, seed=1), draw_effects(st, *args, seed=1)
    assert [x.shape for x in one] == [(S, f.n_levels, f.Z.shape[1]) for f in facs]
    for a, c in zip(one, two):
        np.testing.assert_array_equal(a, c)
    assert not np.allclose(one[0][0], one[0][1])


# --------------------------------------------------------------------------------------------
# The PyTensor Op: same numbers, one kernel call per log-density + gradient
# --------------------------------------------------------------------------------------------
def test_op_matches_kernel_and_is_called_once():
    import pytensor
    import pytensor.tensor as pt
    from bayeslmm.paths.crossed import CrossedMarginal, crossed_logp_tensor
    rng = np.random.default_rng(8)
    y, X, facs = _make(rng, "nested")
    b, sds, Cs, sigma = _params(facs, rng)
    st = crossed_stats(y, X, facs)
    data = [pytensor.shared(x, shape=(None,)) for x in st.kernel_data()]
    bt = pt.vector("b")
    sdt = [pt.vector(f"sd{k}") for k in range(3)]
    Ct = [pt.matrix(f"C{k}") for k in range(3)]
    sg = pt.scalar("sigma")
    lp = crossed_logp_tensor(bt, sdt, Ct, sg, data)
    total = lp - 2.0 * pt.log(sg)                  # as in a model: the likelihood plus prior terms
    wrt = [bt, *sdt, *Ct, sg]
    f = pytensor.function(wrt, [total, *pytensor.grad(total, wrt)])
    assert sum(isinstance(nd.op, CrossedMarginal) for nd in f.maker.fgraph.apply_nodes) == 1
    out = f(b, *sds, *Cs, sigma)
    lp_ref, gb, gsd, gC, gsig = crossed_logp(st, b, sds, Cs, sigma, grad=True)
    assert out[0] == pytest.approx(lp_ref - 2.0 * np.log(sigma), rel=1e-12)
    np.testing.assert_allclose(out[1], gb, rtol=1e-12)
    for k in range(3):
        np.testing.assert_allclose(out[2 + k], gsd[k], rtol=1e-12)
        np.testing.assert_allclose(out[5 + k], gC[k], rtol=1e-12, atol=1e-14)
    assert out[8] == pytest.approx(gsig - 2.0 / sigma, rel=1e-12)


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------
def test_bad_input_names_the_factor():
    rng = np.random.default_rng(9)
    y, X, facs = _make(rng, "intercepts")
    bad = Factor("item", facs[1].codes, facs[1].Z, 2)                # codes beyond n_levels
    with pytest.raises(DataError, match="item"):
        crossed_stats(y, X, [facs[0], bad])
    short = Factor("subject", facs[0].codes[:-1], facs[0].Z[:-1], facs[0].n_levels)
    with pytest.raises(DataError, match="subject"):
        crossed_stats(y, X, [short, facs[1]])
    with pytest.raises(DataError, match="missing"):
        crossed_stats(np.where(np.arange(len(y)) == 0, np.nan, y), X, facs)
    with pytest.raises(SpecError):
        crossed_stats(y, X, [])


def test_level_groups_chosen_by_cost():
    """Auto mode shares the factorisation on a balanced 40 x 30 x 2 design (all items' Z'Z blocks are
    equal: one group) and not once 5% of the rows are dropped (nearly every item its own group)."""
    rng = np.random.default_rng(1)
    s, i, c = (m.ravel() for m in np.meshgrid(np.arange(30), np.arange(40), np.arange(2), indexing="ij"))
    Z = np.column_stack([np.ones(len(s)), c - 0.5])
    y = rng.standard_normal(len(s))
    for keep, groups in [(np.ones(len(s), bool), 1), (rng.random(len(s)) > 0.05, 0)]:
        facs = [Factor("subject", s[keep], Z[keep], 30), Factor("item", i[keep], Z[keep], 40)]
        st = crossed_stats(y[keep], Z[keep], facs)
        assert st.names[st.order[0]] == "item" and st.gram.shape[0] == groups
