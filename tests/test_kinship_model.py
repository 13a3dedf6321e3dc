"""``Model(formula, data, cov={"animal": K})``: a random intercept with a known covariance K.

No sampling (exact): the checks of K name the factor; the path chosen (rotated for one K term and a
Gaussian response, the non-centred graph otherwise, never the collapsed path that would ignore K);
every declared covariance reaches the model: the rotated model's log-density equals the dense
N(X b, sd^2 Z K Z' + sigma^2 I) density (1e-8), differs with K = I, and is unchanged (1e-9) when K
and its labels are permuted together; the non-centred graph's r = sd L z has L L' = K (1e-10).

Sampling (small, seeded): h^2 = 0.5 recovered at n = 1000 through ``fit()`` on the rotated path,
with the ICC table reporting it as h2; rotated and non-centred paths agree within Monte Carlo error
(n = 150); K instead of I changes the posterior.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytensor
import pytest
import scipy.stats as st

import bayeslmm as blmm
from bayeslmm.errors import DataError, SpecError
from bayeslmm.scan import genetic_relationship


def _data(n: int, seed: int, reps: int = 1, h2: float = 0.5):
    """GRM from 2n unstructured markers; y = 2 + 0.5 x + u + e, u ~ N(0, h2 K), e ~ N(0, 1 - h2)
    (so sd_g^2 + sigma^2 = 1 and h^2 = h2); ``reps`` rows per animal."""
    rng = np.random.default_rng(seed)
    G = rng.binomial(2, rng.uniform(0.05, 0.5, 2 * n), size=(n, 2 * n))
    ids = [f"a{i}" for i in range(n)]
    K = genetic_relationship(G, ids)
    ev, vec = np.linalg.eigh(K.to_numpy())
    u = np.sqrt(h2) * vec @ (np.sqrt(np.clip(ev, 0, None)) * rng.standard_normal(n))
    animal = np.repeat(np.arange(n), reps)
    x = rng.standard_normal(n * reps)
    y = 2.0 + 0.5 * x + u[animal] + np.sqrt(1 - h2) * rng.standard_normal(n * reps)
    return pd.DataFrame({"y": y, "x": x, "animal": [ids[i] for i in animal]}), K, u


@pytest.fixture(scope="module")
def small():
    return _data(40, seed=3, reps=2)


# --------------------------------------------------------------------------------------------
# Checks and paths (no sampling)
# --------------------------------------------------------------------------------------------
def test_bad_covariances_name_the_factor(small):
    df, K, _ = small
    f = "y ~ x + (1 | animal)"
    asym = K.copy()
    asym.iloc[0, 1] += 0.5
    with pytest.raises(DataError, match="'animal' is not symmetric"):
        blmm.Model(f, df, cov={"animal": asym})
    npsd = K.copy()
    npsd.iloc[0, 1] = npsd.iloc[1, 0] = 3.0        # |cor| > 1 between a0 and a1: not PSD
    with pytest.raises(DataError, match="'animal' is not positive semi-definite.*a0"):
        blmm.Model(f, df, cov={"animal": npsd})
    with pytest.raises(DataError, match="no row for 2 level\\(s\\) of 'animal'.*'a0', 'a1'"):
        blmm.Model(f, df, cov={"animal": K.iloc[2:, 2:]})
    with pytest.raises(SpecError, match="'herd', which is not a grouping factor"):
        blmm.Model(f, df, cov={"herd": K})
    with pytest.raises(SpecError, match="random intercept '\\(1 \\| animal\\)' only"):
        blmm.Model("y ~ x + (x | animal)", df, cov={"animal": K})
    with pytest.raises(DataError, match="tuple \\(array, labels\\)"):
        blmm.Model(f, df, cov={"animal": K.to_numpy()})
    with pytest.raises(SpecError, match="method='collapsed' does not apply"):
        blmm.Model(f + " + (1 | herd)", df.assign(herd=np.arange(len(df)) % 4),
                   cov={"animal": K}).plan("collapsed")


def test_forms_of_k_and_integer_labels(small, tmp_path):
    df, K, _ = small
    f = "y ~ x + (1 | animal)"
    ref = blmm.Model(f, df, cov={"animal": K}).design.kinship[0]
    as_tuple = blmm.Model(f, df, cov={"animal": (K.to_numpy(), list(K.index))}).design.kinship[0]
    K.to_csv(tmp_path / "K.csv", index_label="id")
    from_csv = blmm.Model(f, df, cov={"animal": str(tmp_path / "K.csv")}).design.kinship[0]
    for other in (as_tuple, from_csv):
        assert list(other.labels) == list(ref.labels)
        np.testing.assert_allclose(other.values, ref.values, atol=1e-12)
    # integer ids in the data, integer labels on K: matched as the design's level labels
    num = df.assign(animal=df["animal"].str[1:].astype(int))
    Kn = K.set_axis(range(len(K)), axis=0).set_axis(range(len(K)), axis=1)
    m = blmm.Model(f, num, cov={"animal": Kn})
    assert m.plan().path == "kinship"
    assert df is not None and list(df.columns) == ["y", "x", "animal"]         # user's data untouched


def test_model_file_and_cli(small, tmp_path, capsys):
    """[cov] in a model file: the matrix reaches the model (rotated path), paths relative to the
    file, a missing file names the key, dumps/loads round-trips, and `bayeslmm check` accepts it."""
    from bayeslmm.cli import main
    from bayeslmm.errors import ModelFileError
    from bayeslmm.specfile import dumps_model_file, load_model_file, loads_model_file, save_model_file
    df, K, _ = small
    (tmp_path / "d").mkdir()
    df.to_csv(tmp_path / "d" / "pheno.csv", index=False)
    K.to_csv(tmp_path / "d" / "K.csv", index_label="id")
    text = ('[model]\nformula = "y ~ x + (1 | animal)"\n[data]\npath = "d/pheno.csv"\n'
            'categorical = ["animal"]\n[cov]\nanimal = "d/K.csv"\n')
    (tmp_path / "m.toml").write_text(text)
    mf = load_model_file(tmp_path / "m.toml")
    model = mf.build_model()
    assert model.plan().path == "kinship"
    np.testing.assert_allclose(model.design.kinship[0].values, K.to_numpy(), atol=1e-12)
    assert loads_model_file(dumps_model_file(mf), base_dir=str(tmp_path)) == mf
    (tmp_path / "out").mkdir()
    moved = load_model_file(save_model_file(mf, tmp_path / "out" / "m2.toml"))
    assert dict(moved.cov)["animal"] == "../d/K.csv" and moved.build_model().plan().path == "kinship"
    assert main(["check", str(tmp_path / "m.toml")]) == 0
    assert "animal (40 levels: Intercept; known covariance K)" in capsys.readouterr().out
    (tmp_path / "bad.toml").write_text(text.replace('"d/K.csv"', '"d/nope.csv"'))
    with pytest.raises(ModelFileError, match="key 'cov.animal': file 'd/nope.csv' not found"):
        load_model_file(tmp_path / "bad.toml")
    (tmp_path / "bad2.toml").write_text(text.replace('animal = "d/K.csv"', 'herd = "d/K.csv"'))
    assert main(["check", str(tmp_path / "bad2.toml")]) != 0
    assert "'herd', which is not a grouping factor" in capsys.readouterr().err


def test_path_choice(small):
    df, K, _ = small
    m = blmm.Model("y ~ x + (1 | animal)", df, cov={"animal": K})
    assert m.plan().path == "kinship" and "rotated" in m.plan().reason
    assert m.plan("collapsed").path == "kinship"
    assert m.plan("noncentred").path == "noncentred"
    two = blmm.Model("y ~ x + (1 | animal) + (1 | herd)", df.assign(herd=np.arange(len(df)) % 4),
                     cov={"animal": K})
    assert two.plan().path == "noncentred" and "L L' = K" in two.plan().reason
    binary = blmm.Model("z ~ x + (1 | animal)", df.assign(z=(df["y"] > 2).astype(int)),
                        family="bernoulli", cov={"animal": K})
    assert binary.plan().path == "noncentred"
    with pytest.raises(SpecError, match="needs a known covariance"):
        blmm.Model("y ~ x + (1 | animal)", df).plan("kinship")


def _likelihood(model, point) -> float:
    """The potential y_kinship (the model's likelihood) at ``point``."""
    return float(model.compile_fn(model.potentiallogp)(point))


def test_rotated_density_uses_k_exactly(small):
    """The rotated model's likelihood term equals the dense MVN density of y; K = I changes it; a
    permuted K with permuted labels does not change it."""
    df, K, _ = small
    m = blmm.Model("y ~ x + (1 | animal)", df, cov={"animal": K})
    model = m.build("auto")
    b, sd, sigma = np.array([1.7, 0.3]), 0.8, 0.6
    xm = m.design.slope_means[0]
    point = {"Intercept_c": np.array(b[0] + xm * b[1]), "beta": np.array([b[1]]),
             "sd_animal_log__": np.log([sd]), "sigma_log__": np.array(np.log(sigma))}
    lp = _likelihood(model, point)
    Kr = K.loc[df["animal"], df["animal"]].to_numpy()
    V = sd ** 2 * Kr + sigma ** 2 * np.eye(len(df))
    X = np.column_stack([np.ones(len(df)), df["x"]])
    assert lp == pytest.approx(st.multivariate_normal(X @ b, V).logpdf(df["y"]), abs=1e-8)
    ident = pd.DataFrame(np.eye(len(K)), index=K.index, columns=K.index)
    mi = blmm.Model("y ~ x + (1 | animal)", df, cov={"animal": ident}).build("auto")
    lp_i = _likelihood(mi, point)
    assert abs(lp_i - lp) > 1.0
    perm = np.random.default_rng(0).permutation(len(K))
    Kp = K.iloc[perm, perm]
    mp = blmm.Model("y ~ x + (1 | animal)", df, cov={"animal": Kp}).build("auto")
    assert _likelihood(mp, point) == pytest.approx(lp, abs=1e-9)


def test_noncentred_graph_has_covariance_k(small):
    """r = sd L z: with sd = 1 and z the j-th unit vector, r is column j of L; L L' = K over the
    design's levels (in the design's order), for K and for a permuted K."""
    df, K, _ = small
    for Kx in (K, K.iloc[::-1, ::-1]):
        m = blmm.Model("y ~ x + (1 | animal) + (1 | herd)", df.assign(herd=np.arange(len(df)) % 4),
                       cov={"animal": Kx})
        model = m.build("noncentred")
        levels = list(m.design.factor("animal").levels)
        J = len(levels)
        fn = pytensor.function([model["z_animal"], model["sd_animal"]], model["r_animal"])
        L = np.column_stack([fn(np.eye(J)[:, [j]], np.ones(1))[:, 0] for j in range(J)])
        np.testing.assert_allclose(L @ L.T, K.loc[levels, levels].to_numpy(), atol=1e-10)


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------
def _interval(x, prob=0.95):
    return np.quantile(x, [(1 - prob) / 2, (1 + prob) / 2])


def _mcse(da) -> np.ndarray:
    """Monte Carlo standard error of the mean, per element (flattened)."""
    import arviz as az
    return np.asarray(az.mcse(da.to_numpy().reshape(da.sizes["chain"], da.sizes["draw"], -1))).ravel()


def test_recovery_h2_half_n1000_rotated_path():
    """n = 1000 animals, h^2 = 0.5 (sd_g = sigma = sqrt(0.5)), 2 chains x 400 through ``fit()``:
    the truth lies in the 95% interval of h^2 (ICC table, kind "h2") and in the 99% intervals of
    b; the exact draws of r cover the true u at 0.95 +- 0.04 (binomial sd over 1000 levels 0.007,
    plus the dependence between levels)."""
    df, K, u = _data(1000, seed=21)
    fit = blmm.Model("y ~ x + (1 | animal)", df, cov={"animal": K}).fit(
        chains=2, draws=400, tune=400, seed=5, progressbar=False, verbose=False)
    assert fit.info["method"] == "kinship"
    row = fit.icc(prob=0.95).table.iloc[0]
    assert row["kind"] == "h2" and row["hdi_lower"] < 0.5 < row["hdi_upper"]
    b = fit.posterior["b"].stack(s=("chain", "draw")).to_numpy()
    for j, truth in enumerate([2.0, 0.5]):
        lo, hi = _interval(b[j], 0.99)
        assert lo < truth < hi
    r = fit.posterior["r_animal"].isel(animal__term=0).stack(s=("chain", "draw")).transpose("s", ...)
    order = [f"a{i}" for i in range(1000)]
    lo, hi = np.quantile(r.sel(animal__level=order).to_numpy(), [0.025, 0.975], axis=0)
    assert abs(np.mean((lo <= u) & (u <= hi)) - 0.95) < 0.04


def test_rotated_and_noncentred_agree_and_k_matters():
    """n = 150 animals with 2 rows each, the same model through the rotated path and the
    non-centred graph (2 chains x 500): posterior means of b, sd, sigma and of the first 10 r
    agree within 4 combined Monte Carlo standard errors. With K = I instead (a different model) the
    posterior means of r move by more than 10 Monte Carlo standard errors."""
    import arviz as az
    df, K, _ = _data(150, seed=22, reps=2, h2=0.6)
    m = blmm.Model("y ~ x + (1 | animal)", df, cov={"animal": K})
    kw = dict(chains=2, draws=500, tune=500, seed=6, progressbar=False, verbose=False)
    rot = m.fit(**kw)
    plain = m.fit(method="noncentred", **kw)
    assert rot.info["method"] == "kinship" and plain.info["method"] == "noncentred"
    names = ["b", "sd_animal", "sigma"]
    sr = az.summary(rot.posterior[names], round_to="none")
    sp = az.summary(plain.posterior[names], round_to="none")
    tol = 4 * np.sqrt(sr["mcse_mean"] ** 2 + sp["mcse_mean"] ** 2)
    assert ((sr["mean"] - sp["mean"]).abs() < tol).all(), pd.DataFrame({"d": sr["mean"] - sp["mean"], "tol": tol})
    ra = rot.posterior["r_animal"].isel(animal__level=slice(0, 10))
    pa = plain.posterior["r_animal"].isel(animal__level=slice(0, 10))
    d = np.abs(ra.mean(("chain", "draw")) - pa.mean(("chain", "draw"))).to_numpy().ravel()
    se = np.sqrt(_mcse(ra) ** 2 + _mcse(pa) ** 2)
    assert (d < 4 * se).all()
    ident = pd.DataFrame(np.eye(len(K)), index=K.index, columns=K.index)
    iid = blmm.Model("y ~ x + (1 | animal)", df, cov={"animal": ident}).fit(**kw)
    ri = iid.posterior["r_animal"].mean(("chain", "draw")).to_numpy().ravel()
    rk = rot.posterior["r_animal"].mean(("chain", "draw")).to_numpy().ravel()
    mc = float(_mcse(rot.posterior["r_animal"]).max())
    print("max |r(K) - r(I)|", np.abs(rk - ri).max(), "max mcse", mc)
    assert np.abs(rk - ri).max() > 10 * mc
    upd = rot.update(chains=1, draws=50, tune=50)          # a refit keeps K (and its path)
    assert upd.info["method"] == "kinship" and upd.design.kinship[0].m == len(K)


def test_scan_from_null_fit_top_level():
    """``bayeslmm.scan(null_fit, G)`` (top-level, lazy) takes y, K, ids, the covariate and the
    posterior draws of sd and sigma from the null model's fit: identical (1e-12) to passing them by
    hand; lambda of the LMM scan near 1 (|lambda - 1| < 0.2 over 1,000 markers: 4 sampling sds of
    a median-based lambda at M = 1,000 is about 0.3; measured 1.0x)."""
    import importlib
    from bayeslmm.scan import simulate_gwas
    sim = simulate_gwas(n=300, markers=1000, seed=4)
    x = np.random.default_rng(1).standard_normal(300)
    df = pd.DataFrame({"y": sim.y, "x": x, "id": sim.ids})
    null = blmm.Model("y ~ x + (1 | id)", df, cov={"id": sim.kinship}).fit(
        chains=2, draws=200, tune=300, seed=2, progressbar=False, verbose=False)
    res = blmm.scan(null, sim.G)
    assert callable(importlib.import_module("bayeslmm.scan")) and callable(blmm.scan)
    draws = {v: null.posterior[v].to_numpy().reshape(-1) for v in ("sd_id", "sigma")}
    ref = blmm.scan(sim.y, sim.G, sim.kinship, covariates=x, sd_g=draws["sd_id"], sigma=draws["sigma"])
    pd.testing.assert_frame_equal(res.table, ref.table, rtol=1e-12)
    assert "posterior mean over 400 draws" in res.h2_source
    print("lambda", res.lambda_gc, "h2", res.h2)
    assert abs(res.lambda_gc - 1.0) < 0.2
    with pytest.raises(DataError, match="leave kinship, ids"):
        blmm.scan(null, sim.G, sim.kinship)
