"""Benchmark: a random intercept with a known covariance K through the package, and the LMM scan.

Usage::

    python bench/kinship.py --out bench/results            # n = 1,000 and 5,000; scan 10,000 x 2,000
    python bench/kinship.py --out bench/results --quick    # n = 300 and 1,000; scan 2,000 x 500

``make bench`` runs it. Measures, in one process (PyTensor compile time included in the first
fit of each structure; the compile cache is whatever ~/.pytensor holds):

* ``Model("y ~ x + (1 | animal)", df, cov={"animal": K}).fit()`` on the **rotated path** (auto:
  eigendecomposition of K, rotation, NUTS on the compiled kernel, exact draws of u) and on the
  **non-centred path** (``method="noncentred"``: u = sd L z, L L' = K, every u sampled), each
  2 chains x (500 tune + 500 draws) on one core, h^2 = 0.5;
* one log-density + gradient of each PyMC model (``compile_dlogp``), median over repeats;
* the non-centred fit is measured at the smaller size; at the larger one it is projected as its
  gradient time x the number of gradients the non-centred fit took at the smaller size (a lower
  bound: the tree depth grows with the dimension);
* agreement of the two paths (posterior means of h^2, sd, sigma, b) in Monte Carlo standard errors;
* the scan: ``bayeslmm.scan`` over 10,000 markers x 2,000 individuals (Balding-Nichols, two
  subpopulations; REML h^2; then from a null-model Fit, its posterior draws of the variance
  components) against ``fastlmm.single_snp`` on the same K (if installed), with the correlation of
  -log10 p (``bench/kinship_probe.py``'s ``scan_row``).

Results: ``OUT/kinship.json`` and ``OUT/kinship.md``. Run with ``OPENBLAS_NUM_THREADS=1`` on a
shared machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))          # this tree's bayeslmm
sys.path.insert(0, str(HERE))


def _frame(n: int, seed: int):
    import pandas as pd

    from kinship_probe import simulate
    K, ids, y, X = simulate(n, seed)
    return pd.DataFrame({"y": y, "x": X[:, 1], "animal": ids}), K


def _grad_ms(model, reps: int) -> float:
    f = model.compile_dlogp()
    point = model.initial_point()
    f(point)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f(point)
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def _fit(model, method: str) -> tuple[dict, object]:
    import arviz as az
    t0 = time.perf_counter()
    fit = model.fit(chains=2, draws=500, tune=500, cores=1, seed=1, progressbar=False, verbose=False,
                    method=method)
    total = time.perf_counter() - t0
    n_grad = int(fit.idata["sample_stats"]["n_steps"].sum()) * 2          # draws only: x2 for tuning
    h2 = fit.icc().table.iloc[0]
    names = ["b", "sd_animal", "sigma"]
    summ = az.summary(fit.posterior[names], round_to="none")
    return ({"fit_s": round(total, 1), "setup_s": round(fit.info.get("setup_s", 0.0), 2),
             "n_grad_est": n_grad, "h2": round(float(h2["mean"]), 3),
             "h2_interval": [round(float(h2["hdi_lower"]), 3), round(float(h2["hdi_upper"]), 3)],
             "min_ess": round(float(summ["ess_bulk"].min())),
             "min_ess_per_s": round(float(summ["ess_bulk"].min()) / total, 2)}, (fit, summ))


def _agreement(a, b) -> float:
    """Largest |difference of posterior means| in combined Monte Carlo standard errors."""
    (_, sa), (_, sb) = a, b
    return round(float(((sa["mean"] - sb["mean"]).abs()
                        / np.sqrt(sa["mcse_mean"] ** 2 + sb["mcse_mean"] ** 2)).max()), 2)


def kinship_rows(sizes: list[int]) -> list[dict]:
    import bayeslmm as blmm
    rows, nc_grads = [], None
    for i, n in enumerate(sizes):
        df, K = _frame(n, seed=n)
        t0 = time.perf_counter()
        m = blmm.Model("y ~ x + (1 | animal)", df, cov={"animal": K})
        row = {"n": n, "model_s": round(time.perf_counter() - t0, 2)}
        t0 = time.perf_counter()
        rot_model = m.build("auto")
        row["rot_build_s"] = round(time.perf_counter() - t0, 2)          # eigh + rotation + graph
        row["rot_grad_ms"] = round(_grad_ms(rot_model, 200), 4)
        nc_model = m.build("noncentred")
        row["nc_grad_ms"] = round(_grad_ms(nc_model, 20 if n <= 2000 else 5), 3)
        row["grad_speedup"] = round(row["nc_grad_ms"] / row["rot_grad_ms"])
        rot, rot_all = _fit(m, "auto")
        row.update({f"rot_{k}": v for k, v in rot.items()})
        if i == 0:
            nc, nc_all = _fit(m, "noncentred")
            row.update({f"nc_{k}": v for k, v in nc.items()})
            row["fit_speedup"] = round(nc["fit_s"] / rot["fit_s"], 1)
            row["agreement_max_mcse"] = _agreement(rot_all, nc_all)
            nc_grads = nc["n_grad_est"]
        else:
            row["nc_fit_s_projected"] = round(nc_grads * row["nc_grad_ms"] / 1e3, 1)
            row["fit_speedup_projected"] = round(row["nc_fit_s_projected"] / rot["fit_s"], 1)
        rows.append(row)
        print(row, flush=True)
    return rows


def null_fit_scan_row(n: int, M: int) -> dict:
    import pandas as pd

    import bayeslmm as blmm
    from bayeslmm.scan import simulate_gwas
    sim = simulate_gwas(n=n, markers=M, seed=1)
    df = pd.DataFrame({"y": sim.y, "id": sim.ids})
    t0 = time.perf_counter()
    null = blmm.Model("y ~ 1 + (1 | id)", df, cov={"id": sim.kinship}).fit(
        chains=2, draws=500, tune=500, cores=1, seed=1, progressbar=False, verbose=False)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = blmm.scan(null, sim.G)
    return {"null_fit_s": round(fit_s, 1), "scan_from_fit_s": round(time.perf_counter() - t0, 1),
            "h2_posterior_mean": round(res.h2, 4), "lambda_lmm_posterior": round(res.lambda_gc, 3)}


def main(argv=None) -> None:
    from kinship_probe import scan_row
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--scan-only", action="store_true", help="skip the fits with K (smoke test of the scan)")
    ap.add_argument("--scan-size", type=int, nargs=2, metavar=("N", "MARKERS"), default=None)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = [300, 1000] if args.quick else [1000, 5000]
    if args.scan_only:
        sizes = []
    n_scan, m_scan = args.scan_size or ((500, 2000) if args.quick else (2000, 10_000))
    res = {"kinship": kinship_rows(sizes), "scan": scan_row(n_scan, m_scan)}
    res["scan"].update(null_fit_scan_row(n_scan, m_scan))
    (out / "kinship.json").write_text(json.dumps(res, indent=1))
    lines = ["# Known covariance K: rotated vs non-centred path; LMM scan vs fastlmm", "",
             "2 chains x (500 tune + 500 draws), one core each, h^2 = 0.5, y ~ x + (1 | animal).", "",
             "| n | grad ms rotated | grad ms non-centred | x | fit s rotated (eigh, rotation, compile, NUTS, draws of u) "
             "| fit s non-centred | fit speed-up | min bulk ESS / s rotated | min bulk ESS / s non-centred "
             "| h2 rotated | h2 non-centred | max diff (MCSE) |",
             "|" + "---|" * 12]
    for r in res["kinship"]:
        nc_fit = r.get("nc_fit_s", f"{r.get('nc_fit_s_projected')} (projected)")
        speed = r.get("fit_speedup", f"{r.get('fit_speedup_projected')} (projected)")
        lines.append(f"| {r['n']} | {r['rot_grad_ms']} | {r['nc_grad_ms']} | {r['grad_speedup']} | "
                     f"{r['rot_fit_s']} | {nc_fit} | {speed} | {r['rot_min_ess_per_s']} | "
                     f"{r.get('nc_min_ess_per_s', '-')} | {r['rot_h2']} {r['rot_h2_interval']} | "
                     f"{r.get('nc_h2', '-')} {r.get('nc_h2_interval', '')} | {r.get('agreement_max_mcse', '-')} |")
    s = res["scan"]
    lines += ["", f"Scan {s['markers']} markers x {s['n']} individuals: bayeslmm {s['bayeslmm_s']} s "
              f"(eigendecomposition + REML h2 + all markers; {s['bayeslmm_draws_s']} s with posterior "
              f"columns from 100 draws); fastlmm {s.get('fastlmm_s', s.get('fastlmm'))} s. h2 {s['h2']} "
              f"(fastlmm {s.get('fastlmm_h2')}); cor(-log10 p) {s.get('cor_log10p')}, max |diff| "
              f"{s.get('max_abs_diff_log10p')}; lambda LMM {s['lambda_lmm']}, OLS {s['lambda_ols']}.",
              f"From a null-model Fit: fit {s['null_fit_s']} s, then `bayeslmm.scan(fit, G)` "
              f"{s['scan_from_fit_s']} s (h2 posterior mean {s['h2_posterior_mean']}, lambda "
              f"{s['lambda_lmm_posterior']})."]
    (out / "kinship.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
