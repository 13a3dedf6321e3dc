"""Probe: the kinship path, rotated (eigen-rotation + compiled kernel) vs plain (dense MvNormal).

Usage::

    python bench/kinship_probe.py --out bench/results            # full (about 10 min on 2 cores)
    python bench/kinship_probe.py --out bench/results --quick    # n = 1000 only, small scan

Measures, in one process (so PyTensor compile time is included in the fit times; the compile
cache is whatever ~/.pytensor holds):

* ``grad_ms``: one log-density + gradient evaluation of the PyMC model (``model.compile_dlogp``),
  median over repeats; rotated and plain, n = 1,000 and 5,000;
* ``setup_s``: rotated only, the eigendecomposition of K and the rotation of y and X;
* ``fit_s``: model build + compile + PyMC NUTS, 2 chains x (500 tune + 500 draws), one core;
  rotated at every size; plain measured at n = 200, and at n = 1,000 with ``--plain-fit`` (about
  12,000 gradients of 125-600 ms: 0.5-2 hours on the shared machine). Both models have the same
  posterior, so NUTS takes about as many gradient steps on either: ``plain_fit_s_projected`` = the
  rotated fit's gradient count x the plain gradient time (compile time not included); the n = 200
  row, where both are measured, checks the projection;
* scan: 10,000 markers x 2,000 individuals (Balding-Nichols, two subpopulations): bayeslmm.scan
  (eigendecomposition + REML h^2 + all markers; again with 1,000 variance draws, 100 of them used
  for the posterior columns) against fastlmm.single_snp on the same K (leave_out_one_chrom=False),
  with the correlation of their -log10 p.

Measured on the shared 2-core machine (OPENBLAS_NUM_THREADS=1, load average 5-12, so absolute
times are 2-5x what a quiet machine gives): PyMC dlogp rotated 0.03 / 0.04 / 0.09 ms at n = 200 /
1,000 / 5,000, plain 6 ms / 575 ms / 58 s (125 ms at n = 1,000 on a quieter moment); rotated fit
(2 x 1,000 iterations, eigh + rotation + compile + NUTS) 35 s / 10 s / 158 s (147 s of it the
eigendecomposition at 5,000); plain fit measured 202 s at n = 200 (projected 110 s: the projection
is a lower bound), projected 7,100 s at 1,000 and ~8 days at 5,000. Scan 10,000 x 2,000: bayeslmm
14.7 s (eigh + REML + scan), fastlmm 24.4 s, h2 equal (0.4777), -log10 p equal to 8e-8.

Results: ``OUT/kinship_probe.json`` and ``OUT/kinship_probe.md``. Run with ``OPENBLAS_NUM_THREADS=1``
on a shared machine: two BLAS threads competing with other processes made the dense gradient 3-7x
slower than one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore", message=".*BLAS.*")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))      # this tree's bayeslmm


def simulate(n: int, seed: int):
    """GRM from 2n unstructured markers, h^2 = 0.5: y = 2 + 0.5 x + u + e."""
    from bayeslmm.scan import genetic_relationship
    rng = np.random.default_rng(seed)
    G = rng.binomial(2, rng.uniform(0.05, 0.5, 2 * n), size=(n, 2 * n)).astype(np.int8)
    ids = [f"i{i}" for i in range(n)]
    K = genetic_relationship(G, ids)
    S = (G - G.mean(0)) / G.std(0)                 # K = S S' / M, so S z / sqrt(M) ~ N(0, K)
    u = S @ rng.standard_normal(S.shape[1]) / np.sqrt(S.shape[1])
    X = np.column_stack([np.ones(n), rng.standard_normal(n)])
    y = X @ np.array([2.0, 0.5]) + u + rng.standard_normal(n)
    return K, ids, y, X


def build(y, X, K=None, data=None):
    import pymc as pm
    import pytensor.tensor as pt

    from bayeslmm.paths.kinship_kernel import kinship_logp
    with pm.Model() as model:
        b = pm.Normal("b", 0.0, 10.0, shape=X.shape[1])
        sd_g = pm.HalfNormal("sd_g", 2 * y.std())
        sigma = pm.HalfNormal("sigma", 2 * y.std())
        if data is not None:
            pm.Potential("y_kinship", kinship_logp(data, b, sd_g, sigma))
        else:
            pm.MvNormal("y", mu=pt.dot(X, b), cov=sd_g ** 2 * K + sigma ** 2 * np.eye(len(y)), observed=y)
    return model


def grad_ms(model, reps: int) -> float:
    f = model.compile_dlogp()
    point = {"b": np.array([1.9, 0.45]), "sd_g_log__": np.array(0.1), "sigma_log__": np.array(-0.05)}
    f(point)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f(point)
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def fit_s(y, X, K=None, data=None) -> dict:
    import arviz as az
    import pymc as pm
    t0 = time.perf_counter()
    model = build(y, X, K=K, data=data)
    idata = pm.sample(draws=500, tune=500, chains=2, cores=1, random_seed=1, progressbar=False,
                      nuts_sampler="pymc", model=model, compute_convergence_checks=False,
                      discard_tuned_samples=False)
    total = time.perf_counter() - t0
    steps = sum(int(idata[g]["n_steps"].sum()) for g in ("warmup_sample_stats", "sample_stats"))
    post = idata["posterior"]
    summ = az.summary(idata, round_to="none")
    return {"fit_s": round(total, 2), "sampling_s": round(float(post.attrs["sampling_time"]), 2),
            "n_grad": steps,
            "min_ess": round(float(summ["ess_bulk"].min())),
            "sd_g": round(float(summ.loc["sd_g", "mean"]), 3), "sigma": round(float(summ.loc["sigma", "mean"]), 3)}


def kinship_rows(sizes, plain_fit_max: int) -> list[dict]:
    from bayeslmm import kinship as kn
    rows = []
    for n in sizes:
        K, ids, y, X = simulate(n, seed=n)
        t0 = time.perf_counter()
        kin = kn.kinship_matrix(K, factor="animal")
        basis = kn.kinship_basis(kin, ids)
        data = kn.rotate(basis, y, X)
        setup = time.perf_counter() - t0
        row = {"n": n, "setup_s": round(setup, 2)}
        row["rot_grad_ms"] = round(grad_ms(build(y, X, data=data), reps=200), 4)
        row["plain_grad_ms"] = round(grad_ms(build(y, X, K=K.to_numpy()), reps=20 if n <= 2000 else 3), 2)
        row["grad_speedup"] = round(row["plain_grad_ms"] / row["rot_grad_ms"])
        rot = fit_s(y, X, data=data)
        row.update({f"rot_{k}": v for k, v in rot.items()})
        row["rot_fit_s"] = round(rot["fit_s"] + setup, 2)       # the rotation counts as part of the fit
        # the two models have the same posterior, so NUTS takes about as many gradient steps on
        # either: the plain fit would cost about n_grad plain gradients (compile time not included)
        row["plain_fit_s_projected"] = round(rot["n_grad"] * row["plain_grad_ms"] / 1e3, 1)
        if n <= plain_fit_max:
            plain = fit_s(y, X, K=K.to_numpy())
            row.update({f"plain_{k}": v for k, v in plain.items()})
            row["fit_speedup"] = round(row["plain_fit_s"] / row["rot_fit_s"], 1)
        rows.append(row)
        print(row, flush=True)
    return rows


def scan_row(n: int, M: int) -> dict:
    from bayeslmm.scan import scan, simulate_gwas
    sim = simulate_gwas(n=n, markers=M, seed=1)
    t0 = time.perf_counter()
    ours = scan(sim.y, sim.G, sim.kinship)
    row = {"n": n, "markers": M, "bayeslmm_s": round(time.perf_counter() - t0, 2), "h2": round(ours.h2, 4),
           "lambda_lmm": round(ours.lambda_gc, 3)}
    # with 1,000 posterior draws of the variance components (thinned to 100 for the posterior columns)
    rng = np.random.default_rng(2)
    sd_g, sigma = np.abs(rng.normal(0.95, 0.05, 1000)), np.abs(rng.normal(1.0, 0.03, 1000))
    t0 = time.perf_counter()
    scan(sim.y, sim.G, sim.kinship, sd_g=sd_g, sigma=sigma)
    row["bayeslmm_draws_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    row["lambda_ols"] = round(scan(sim.y, sim.G).lambda_gc, 3)
    row["ols_s"] = round(time.perf_counter() - t0, 2)
    try:
        from fastlmm.association import single_snp
        from pysnptools.kernelreader import KernelData
        from pysnptools.snpreader import SnpData
    except ImportError:
        row["fastlmm"] = "not installed"
        return row
    iid = np.array([["0", i] for i in sim.ids])
    sid = np.array([f"m{j}" for j in range(M)])
    pos = np.column_stack([np.ones(M), np.arange(M), np.arange(M)])
    t0 = time.perf_counter()
    fl = single_snp(test_snps=SnpData(iid=iid, sid=sid, val=sim.G.astype(float), pos=pos),
                    pheno=SnpData(iid=iid, sid=["y"], val=sim.y[:, None]),
                    K0=KernelData(iid=iid, val=sim.kinship.to_numpy()),
                    leave_out_one_chrom=False, count_A1=False)
    row["fastlmm_s"] = round(time.perf_counter() - t0, 2)
    fl = fl.set_index("SNP").loc[sid]
    a = -np.log10(fl["PValue"].to_numpy())
    b = -np.log10(ours.table["p_value"].to_numpy())
    ok = np.isfinite(a) & np.isfinite(b)
    row["fastlmm_h2"] = round(float(fl["Nullh2"].iloc[0]), 4)
    row["cor_log10p"] = round(float(np.corrcoef(a[ok], b[ok])[0, 1]), 6)
    row["max_abs_diff_log10p"] = float(f"{np.max(np.abs(a[ok] - b[ok])):.2g}")
    print(row, flush=True)
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--plain-fit", action="store_true",
                    help="also fit the plain model at n = 1,000 (about 30 min on one core)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = [200, 1000] if args.quick else [200, 1000, 5000]
    res = {"kinship": kinship_rows(sizes, plain_fit_max=1000 if args.plain_fit else 200),
           "scan": scan_row(*((500, 2000) if args.quick else (2000, 10_000)))}
    (out / "kinship_probe.json").write_text(json.dumps(res, indent=1))
    lines = ["# Kinship path: rotated vs plain; scan vs fastlmm", "",
             "| n | setup_s (eigh + rotate) | grad ms rotated | grad ms plain | x | fit s rotated | "
             "gradients in the fit | fit s plain (measured) | fit s plain (projected) | min ESS rotated / plain |",
             "|" + "---|" * 10]
    for r in res["kinship"]:
        lines.append(f"| {r['n']} | {r['setup_s']} | {r['rot_grad_ms']} | {r['plain_grad_ms']} | "
                     f"{r['grad_speedup']} | {r['rot_fit_s']} | {r['rot_n_grad']} | {r.get('plain_fit_s', '-')} | "
                     f"{r['plain_fit_s_projected']} | {r['rot_min_ess']} / {r.get('plain_min_ess', '-')} |")
    s = res["scan"]
    lines += ["", f"Scan {s['markers']} markers x {s['n']} individuals: bayeslmm {s['bayeslmm_s']} s "
              f"({s['bayeslmm_draws_s']} s with posterior columns from 100 draws) "
              f"(h2 {s['h2']}, lambda LMM {s['lambda_lmm']}, OLS {s['lambda_ols']}); fastlmm "
              f"{s.get('fastlmm_s', s.get('fastlmm'))} s (h2 {s.get('fastlmm_h2')}); cor(-log10 p) "
              f"{s.get('cor_log10p')}, max |diff| {s.get('max_abs_diff_log10p')}."]
    (out / "kinship_probe.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
