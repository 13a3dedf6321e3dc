"""Random effects with a known covariance (kinship K): validation, the eigen-rotation, the Op, draws
of u, the association scan.

Exact identities (no sampling), on small random designs in four layouts (one row per level in a
shuffled order; several rows per level; levels of K without data; a singular K, rank < m):
* the rotated log-density equals scipy's dense multivariate-normal log-density of y (1e-8), its
  gradient equals central finite differences (step 1e-6, tolerance 1e-6 relative), and the
  PyTensor Op in a compiled graph returns the same numbers;
* the conditional draws of u are an affine map of standard normals whose offset and covariance
  equal the dense conditional mean sd^2 K Z'V^-1 r and covariance sd^2 K - sd^4 K Z'V^-1 Z K (1e-8);
* scan statistics equal a dense GLS fit per marker (1e-8), and the posterior columns a dense
  per-draw computation;
* scan agrees with fastlmm (if installed) and gives lambda near 1 where OLS is inflated.

Sampling through ``Model(..., cov=...)`` (recovery of h^2 = 0.5 at n = 1000, rotated vs non-centred
paths): tests/test_kinship_model.py.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytensor
import pytensor.tensor as pt
import pytest
import scipy.stats as st

from bayeslmm.errors import DataError
from bayeslmm import kinship as kn
from bayeslmm.paths.kinship_kernel import kinship_logp, logp_and_grad
from bayeslmm.scan import genetic_relationship, genomic_inflation, scan, simulate_gwas


# --------------------------------------------------------------------------------------------
# Small designs
# --------------------------------------------------------------------------------------------
def _case(layout: str, seed: int = 0):
    """K (m x m, labelled), the row levels, y, X, and the dense incidence positions."""
    rng = np.random.default_rng(seed)
    m = 14
    rank = 6 if layout == "singular" else 20
    A = rng.standard_normal((m, rank))
    K = A @ A.T / rank + (0.05 * np.eye(m) if layout != "singular" else 0)
    labels = [f"a{i}" for i in range(m)]
    if layout == "one_row":
        levels = list(np.array(labels)[rng.permutation(m)])
    elif layout in ("several_rows", "singular"):
        levels = labels + list(np.array(labels)[rng.integers(0, m, 30)])
        levels = list(np.array(levels)[rng.permutation(len(levels))])
    elif layout == "unobserved":                  # levels a10..a13 have no rows
        levels = list(np.array(labels[:10])[rng.integers(0, 10, 25)]) + labels[:10]
    n = len(levels)
    X = np.column_stack([np.ones(n), rng.standard_normal(n), rng.integers(0, 2, n)])
    y = 1.0 + rng.standard_normal(n)
    kin = kn.kinship_matrix(pd.DataFrame(K, index=labels, columns=labels), factor="animal")
    pos = kin.labels.get_indexer(levels)
    return kin, levels, y, X, pos


LAYOUTS = ["one_row", "several_rows", "unobserved", "singular"]
PARAMS = (np.array([0.7, -0.3, 0.4]), 0.9, 0.6)


def _dense_logp(kin, pos, y, X, b, sd, sigma):
    K = kin.values[np.ix_(pos, pos)]
    V = sd ** 2 * K + sigma ** 2 * np.eye(len(y))
    return st.multivariate_normal(X @ b, V).logpdf(y)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_rotated_logp_equals_dense_mvn(layout):
    kin, levels, y, X, pos = _case(layout)
    data = kn.rotate(kn.kinship_basis(kin, levels), y, X)
    for b, sd, sigma in [PARAMS, (np.array([1.2, 0.1, -0.5]), 0.05, 1.7), (np.zeros(3), 2.0, 0.2)]:
        lp = logp_and_grad(data, b, sd, sigma)[0]
        ref = _dense_logp(kin, pos, y, X, b, sd, sigma)
        assert abs(lp - ref) < 1e-8 * max(1.0, abs(ref))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradient_equals_finite_differences(layout):
    kin, levels, y, X, pos = _case(layout, seed=1)
    data = kn.rotate(kn.kinship_basis(kin, levels), y, X)
    b, sd, sigma = PARAMS
    _, gb, gsd, gsigma = logp_and_grad(data, b, sd, sigma)
    h = 1e-6

    def f(b_, sd_, s_):
        return logp_and_grad(data, b_, sd_, s_)[0]

    num_b = [(f(b + h * e, sd, sigma) - f(b - h * e, sd, sigma)) / (2 * h) for e in np.eye(3)]
    num_sd = (f(b, sd + h, sigma) - f(b, sd - h, sigma)) / (2 * h)
    num_sigma = (f(b, sd, sigma + h) - f(b, sd, sigma - h)) / (2 * h)
    np.testing.assert_allclose(gb, num_b, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose([gsd, gsigma], [num_sd, num_sigma], rtol=1e-6, atol=1e-6)


def test_eigen_of_k_reused_for_balanced_rows():
    """With c rows per level and all levels observed, M = c K: K's own eigenvectors are used."""
    kin, _, _, _, _ = _case("one_row")
    rng = np.random.default_rng(4)
    levels = list(np.array(kin.labels)[rng.permutation(np.repeat(np.arange(kin.m), 3))])
    y = rng.standard_normal(len(levels))
    X = np.ones((len(levels), 1))
    ev = np.linalg.eigh(kin.values)
    with_eigen = kn.kinship_basis(kin, levels, eigen=ev)
    np.testing.assert_allclose(with_eigen.lam, 3 * ev[0])
    lp_a = logp_and_grad(kn.rotate(with_eigen, y, X), [0.2], 0.8, 0.9)[0]
    lp_b = logp_and_grad(kn.rotate(kn.kinship_basis(kin, levels), y, X), [0.2], 0.8, 0.9)[0]
    ref = _dense_logp(kin, kin.labels.get_indexer(levels), y, X, np.array([0.2]), 0.8, 0.9)
    assert abs(lp_a - ref) < 1e-8 * abs(ref) and abs(lp_b - ref) < 1e-8 * abs(ref)


def test_eigen_of_another_matrix_is_refused():
    kin, levels, _, _, _ = _case("one_row")
    ev = np.linalg.eigh(kin.values[::-1, ::-1])          # levels in the wrong order
    with pytest.raises(DataError, match="not the eigendecomposition of its kinship matrix"):
        kn.kinship_basis(kin, levels, eigen=ev)


def test_integer_labels():
    K, _ = _k()
    kin = kn.kinship_matrix(pd.DataFrame(K, index=[10, 11, 12, 13, 14], columns=[10, 11, 12, 13, 14]))
    basis = kn.kinship_basis(kin, np.array([12, 10, 10, 14]))
    assert list(basis.observed) == [0, 2, 4] and list(basis.counts) == [2, 1, 1]


@pytest.mark.parametrize("linked", [False, True])
def test_op_in_compiled_graph_matches_kernel(linked):
    """Both ways of calling the kernel from PyTensor's numba backend (object mode for PyMC's NUTS,
    linked for nutpie); the gradient is the pullback of a scaled log-density."""
    kin, levels, y, X, _ = _case("several_rows", seed=2)
    data = kn.rotate(kn.kinship_basis(kin, levels), y, X)
    b, sd, sigma = pt.vector("b"), pt.scalar("sd"), pt.scalar("sigma")
    lp = kinship_logp(data, b, sd, sigma, linked=linked)
    f = pytensor.function([b, sd, sigma], [lp, *pt.grad(2.0 * lp, [b, sd, sigma])])
    out = f(*PARAMS)
    ref = logp_and_grad(data, *PARAMS)
    np.testing.assert_allclose(out[0], ref[0], rtol=1e-12)
    np.testing.assert_allclose(out[1], 2 * ref[1], rtol=1e-12)
    np.testing.assert_allclose(out[2:], [2 * ref[2], 2 * ref[3]], rtol=1e-12)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
def _k(m=5, seed=0):
    A = np.random.default_rng(seed).standard_normal((m, m + 2))
    return A @ A.T / (m + 2), [f"a{i}" for i in range(m)]


def test_kinship_errors_name_factor_and_problem():
    K, labels = _k()
    bad = K.copy()
    bad[1, 3] += 0.3
    with pytest.raises(DataError, match=r"'animal' is not symmetric: max \|K - K'\| = 0.3 at \(a1, a3\)"):
        kn.kinship_matrix(bad, labels, factor="animal")
    notpsd = K.copy()
    notpsd[0, 1] = notpsd[1, 0] = 3 * np.sqrt(K[0, 0] * K[1, 1])
    with pytest.raises(DataError, match="'animal' is not positive semi-definite: smallest eigenvalue -"):
        kn.kinship_matrix(notpsd, labels, factor="animal")
    nan = K.copy()
    nan[2, 2] = np.nan
    with pytest.raises(DataError, match=r"NaN or infinite entries, e.g. at \(a2, a2\)"):
        kn.kinship_matrix(nan, labels, factor="animal")
    with pytest.raises(DataError, match="needs labels"):
        kn.kinship_matrix(K, factor="animal")
    with pytest.raises(DataError, match="duplicated labels: a1"):
        kn.kinship_matrix(K, ["a0", "a1", "a1", "a3", "a4"], factor="animal")
    with pytest.raises(DataError, match="must be square"):
        kn.kinship_matrix(K[:, :4], labels, factor="animal")
    with pytest.raises(DataError, match="columns must be the same levels"):
        kn.kinship_matrix(pd.DataFrame(K, index=labels, columns=labels[:4] + ["zz"]), factor="animal")
    zero = K.copy()
    zero[4, :] = zero[:, 4] = 0.0
    with pytest.raises(DataError, match="diagonal entry <= 0 for level\\(s\\) a4"):
        kn.kinship_matrix(zero, labels, factor="animal")


def test_dataframe_columns_reordered_and_k_symmetrised():
    K, labels = _k()
    df = pd.DataFrame(K, index=labels, columns=labels).iloc[:, ::-1]
    kin = kn.kinship_matrix(df, factor="animal")
    np.testing.assert_array_equal(kin.values, K)
    tiny = K.copy()
    tiny[0, 1] += 1e-9
    assert np.array_equal(kn.kinship_matrix(tiny, labels).values, kn.kinship_matrix(tiny, labels).values.T)


def test_coverage_error_lists_missing_levels_and_extra_levels_are_kept():
    K, labels = _k()
    kin = kn.kinship_matrix(K, labels, factor="animal")
    with pytest.raises(DataError, match=r"no row for 2 level\(s\) of 'animal' in the data: b7, b9"):
        kn.kinship_basis(kin, ["a0", "b7", "a1", "b9", "b7"])
    basis = kn.kinship_basis(kin, ["a0", "a3", "a3"])
    assert basis.k == 2 and list(basis.observed) == [0, 3] and basis.n_within == 1


# --------------------------------------------------------------------------------------------
# Conditional draws of u
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", LAYOUTS)
def test_effect_draws_equal_dense_conditional(layout):
    kin, levels, y, X, pos = _case(layout, seed=3)
    basis = kn.kinship_basis(kin, levels)
    data = kn.rotate(basis, y, X)
    b, sd, sigma = PARAMS
    m, n = kin.m, len(y)
    eps = np.vstack([np.zeros(m), np.eye(m)])            # u(eps) is affine: offset, then columns
    S = m + 1
    u = kn._effects_from_normals(basis, data, np.tile(b, (S, 1)), np.full(S, sd), np.full(S, sigma), eps)
    mean, F = u[0], (u[1:] - u[0]).T
    Z = np.zeros((n, m))
    Z[np.arange(n), pos] = 1.0
    K = kin.values
    V = sd ** 2 * Z @ K @ Z.T + sigma ** 2 * np.eye(n)
    KZ = K @ Z.T
    ref_mean = sd ** 2 * KZ @ np.linalg.solve(V, y - X @ b)
    ref_cov = sd ** 2 * K - sd ** 4 * KZ @ np.linalg.solve(V, KZ.T)
    np.testing.assert_allclose(mean, ref_mean, atol=1e-8)
    np.testing.assert_allclose(F @ F.T, ref_cov, atol=1e-8)


def test_draw_effects_monte_carlo():
    """The public sampler: 20,000 draws, mean within 5 Monte Carlo SEs of the dense mean."""
    kin, levels, y, X, pos = _case("unobserved", seed=5)
    basis = kn.kinship_basis(kin, levels)
    data = kn.rotate(basis, y, X)
    b, sd, sigma = PARAMS
    S = 20_000
    u = kn.draw_effects(basis, data, np.tile(b, (S, 1)), np.full(S, sd), np.full(S, sigma), rng=7)
    ref = kn._effects_from_normals(basis, data, b[None], [sd], [sigma], np.zeros((1, kin.m)))[0]
    se = u.std(axis=0) / np.sqrt(S)
    assert np.all(np.abs(u.mean(axis=0) - ref) < 5 * se)


def test_heritability():
    assert kn.heritability(np.array([1.0, 0.0]), np.array([1.0, 2.0])).tolist() == [0.5, 0.0]


# --------------------------------------------------------------------------------------------
# Scan
# --------------------------------------------------------------------------------------------
def _dense_scan(y, G, K_rows, C, h2):
    """GLS per marker with H = h2 K + (1 - h2) I: beta, se (s^2 = RSS / (n - p - 1)), p-value."""
    n = len(y)
    Hi = np.linalg.inv(h2 * K_rows + (1 - h2) * np.eye(n))
    out = []
    for j in range(G.shape[1]):
        if np.ptp(G[:, j]) == 0:                   # a constant marker: no test (NaN in scan)
            out.append((np.nan, np.nan, np.nan))
            continue
        Xf = np.column_stack([np.ones(n), C, G[:, j]])
        XtHX = Xf.T @ Hi @ Xf
        bh = np.linalg.solve(XtHX, Xf.T @ Hi @ y)
        r = y - Xf @ bh
        df = n - Xf.shape[1]
        se = np.sqrt(r @ Hi @ r / df * np.linalg.inv(XtHX)[-1, -1])
        out.append((bh[-1], se, 2 * st.t.sf(abs(bh[-1] / se), df)))
    return np.array(out)


@pytest.mark.parametrize("layout", ["one_row", "several_rows"])
def test_scan_equals_dense_gls(layout):
    sim = simulate_gwas(n=120, markers=40, seed=11)
    rng = np.random.default_rng(0)
    C = rng.standard_normal((120, 2))
    if layout == "one_row":
        K, ids, y = sim.kinship, None, sim.y
        K_rows = K.to_numpy()
        Gr, Cr = sim.G, C
    else:                                          # 60 individuals measured twice
        ids = [f"i{i}" for i in rng.integers(0, 60, 120)]
        K = sim.kinship.iloc[:60, :60]
        pos = K.index.get_indexer(ids)
        K_rows = K.to_numpy()[np.ix_(pos, pos)]
        Gr, Cr, y = sim.G[pos], C, sim.y
    res = scan(y, Gr, K, covariates=Cr, ids=ids, h2=0.4, block_size=16)
    ref = _dense_scan(y, Gr.astype(float), K_rows, Cr, 0.4)
    t = res.table
    np.testing.assert_allclose(t["beta"], ref[:, 0], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(t["se"], ref[:, 1], rtol=1e-8)
    np.testing.assert_allclose(t["p_value"], ref[:, 2], rtol=1e-8, atol=1e-14)
    assert np.isfinite(ref[:, 0]).sum() >= 35
    assert res.df == 120 - 4 and res.h2 == 0.4 and res.h2_source == "given"


def test_scan_posterior_columns_equal_dense_per_draw_mixture():
    sim = simulate_gwas(n=80, markers=10, seed=12)
    sd_g, sigma = np.array([0.8, 1.1, 0.5]), np.array([1.0, 0.9, 1.2])
    res = scan(sim.y, sim.G, sim.kinship, sd_g=sd_g, sigma=sigma)
    K, n = sim.kinship.to_numpy(), 80
    bs, vs = [], []
    for s_g, s_e in zip(sd_g, sigma):
        Vi = np.linalg.inv(s_g ** 2 * K + s_e ** 2 * np.eye(n))
        rows = []
        for j in range(10):
            Xf = np.column_stack([np.ones(n), sim.G[:, j]])
            cov = np.linalg.inv(Xf.T @ Vi @ Xf)
            rows.append(((cov @ Xf.T @ Vi @ sim.y)[-1], cov[-1, -1]))
        bs.append([r[0] for r in rows])
        vs.append([r[1] for r in rows])
    bs, vs = np.array(bs), np.array(vs)
    mean = bs.mean(0)
    np.testing.assert_allclose(res.table["post_mean"], mean, rtol=1e-8)
    np.testing.assert_allclose(res.table["post_sd"], np.sqrt((vs + bs ** 2).mean(0) - mean ** 2), rtol=1e-7)
    np.testing.assert_allclose(res.table["prob_positive"], st.norm.cdf(bs / np.sqrt(vs)).mean(0), rtol=1e-8)
    h2 = kn.heritability(sd_g, sigma).mean()
    assert res.h2 == pytest.approx(h2) and "posterior mean over 3 draws" in res.h2_source


def test_lambda_ols_inflated_lmm_near_one():
    """Two subpopulations (F_ST 0.1) whose trait means differ by one residual sd; 4,000 tested
    markers, K from 2,000 other markers (no proximal contamination, as FaST-LMM's leave-one-
    chromosome-out). OLS: lambda > 1.1 (8.1 with this seed). LMM: |lambda - 1| < 0.15 (1.075 with
    this seed; 0.94-1.09 over seeds 0-7). The tolerance: the sampling sd of a median-based lambda
    over 4,000 independent markers is about 0.037 (1 / (2 f(0.455) sqrt(4000)) / 0.455), so 0.15 is
    4 sds."""
    sim = simulate_gwas(n=500, markers=6000, seed=3)
    G = sim.G[:, :4000]
    K = genetic_relationship(sim.G[:, 4000:], sim.ids)
    ols = scan(sim.y, G)
    lmm = scan(sim.y, G, K)
    assert ols.lambda_gc > 1.1
    assert abs(lmm.lambda_gc - 1.0) < 0.15
    assert lmm.lambda_gc == pytest.approx(genomic_inflation(lmm.table["p_value"]))


def test_scan_agrees_with_fastlmm():
    """fastlmm 0.6.13 single_snp (REML h2 on the null model, Wald/F test per SNP), same K (its
    DiagKtoN leaves our GRM unchanged: mean diagonal 1), leave_out_one_chrom=False. Measured: REML
    h2 equal to 4e-8, -log10 p to 1e-7 (4e-12 given fastlmm's h2), correlation 1.0000. Asserted:
    correlation > 0.999, max |diff| < 1e-4; with fastlmm's h2, max |diff| < 1e-8."""
    pytest.importorskip("fastlmm")
    from fastlmm.association import single_snp
    from pysnptools.kernelreader import KernelData
    from pysnptools.snpreader import SnpData

    sim = simulate_gwas(n=500, markers=2000, seed=3)
    n, M = sim.G.shape
    iid = np.array([["0", i] for i in sim.ids])
    sid = np.array([f"m{j}" for j in range(M)])
    pos = np.column_stack([np.ones(M), np.arange(M), np.arange(M)])
    fl = single_snp(test_snps=SnpData(iid=iid, sid=sid, val=sim.G.astype(float), pos=pos),
                    pheno=SnpData(iid=iid, sid=["y"], val=sim.y[:, None]),
                    K0=KernelData(iid=iid, val=sim.kinship.to_numpy()),
                    leave_out_one_chrom=False, count_A1=False).set_index("SNP").loc[sid]
    ours = scan(sim.y, sim.G, sim.kinship)
    assert ours.h2 == pytest.approx(fl["Nullh2"].iloc[0], abs=1e-4)
    a, b = -np.log10(fl["PValue"].to_numpy()), -np.log10(ours.table["p_value"].to_numpy())
    ok = np.isfinite(a) & np.isfinite(b)
    assert ok.sum() >= M - 5
    assert np.corrcoef(a[ok], b[ok])[0, 1] > 0.999
    assert np.max(np.abs(a[ok] - b[ok])) < 1e-4
    same = scan(sim.y, sim.G, sim.kinship, h2=float(fl["Nullh2"].iloc[0]))
    assert np.max(np.abs(a[ok] + np.log10(same.table["p_value"].to_numpy()[ok]))) < 1e-8


def test_scan_input_errors():
    sim = simulate_gwas(n=60, markers=5, seed=1)
    G = sim.G.astype(float)
    G[3, 2] = np.nan
    with pytest.raises(DataError, match="marker 'm2' has missing values"):
        scan(sim.y, G, sim.kinship)
    y = sim.y.copy()
    y[0] = np.nan
    with pytest.raises(DataError, match="y has 1 missing"):
        scan(y, sim.G, sim.kinship)
    with pytest.raises(DataError, match="covariate column\\(s\\) \\[0\\] are constant"):
        scan(sim.y, sim.G, sim.kinship, covariates=np.ones(60))
    with pytest.raises(DataError, match="G must be"):
        scan(sim.y, sim.G[:50], sim.kinship)
    with pytest.raises(DataError, match="pass ids="):
        scan(sim.y[:50], sim.G[:50], sim.kinship)
    with pytest.raises(DataError, match="h2 must be in"):
        scan(sim.y, sim.G, sim.kinship, h2=1.0)
