"""Benchmark: bambi vs bayeslmm (non-centred graph) vs bayeslmm (exact marginal path).

Usage::

    python bench/run.py --out bench/results            # full run (about 15-25 min on 2 cores)
    python bench/run.py --out bench/results --quick    # small sizes, fewer draws (a few minutes)
    python bench/run.py --out bench/results --case bernoulli   # one case only (bench_<case>.md)
    python bench/run.py --out bench/results --case crossed --chains 4 --reps 1   # issue 14

Every fit runs in its own Python process (so the timings include PyTensor compilation as a user
sees it) with the same settings: ``chains`` chains on ``cores`` cores, ``tune`` + ``draws``
iterations, PyMC's NUTS. Uncorrelated random slopes everywhere, because bambi's ``(x|g)`` is
uncorrelated: bambi ``y ~ x + (x|g)`` is compared with bayeslmm ``y ~ x + (x || g)``; bambi uses
its default priors, bayeslmm its own defaults.

Columns (per case and engine):

* ``setup_s``: from building the model to the first NUTS iteration (design matrices, sufficient
  statistics, PyTensor compilation), i.e. ``total_s - sampling_s``;
* ``sampling_s``: PyMC's own sampling-loop time (``posterior.attrs["sampling_time"]``);
* ``total_s``: model construction + fit (+ the exact random-effect draws for the marginal path),
  not counting the Python imports (``import_s``, reported separately);
* ``min_ess``: minimum bulk ESS over the variance parameters (group SDs and sigma);
  ``ess_per_s`` = min_ess / total_s;
* ``divergences``, ``max_rhat`` (over fixed effects and variance parameters);
* ``x_bambi``: ESS/s relative to bambi's in the same run; ``x_bambi_with_imports`` the same with
  each engine's import time added to its total (what a fresh script waits for).

sleepstudy is run twice per engine: with an empty PyTensor compile cache ("cold") and again with
that cache ("warm"), engines interleaved, ``--reps`` times (default 3; the row is the repetition
with the median total, the column shows the range). "cold" empties PyTensor's cache only: the
package's own numba kernel (``bayeslmm.paths.collapsed_kernel``) is compiled once at install by ``make``,
like a compiled extension, so a first fit after ``make install`` finds it; the extra
"cold+kernel" row empties numba's cache too (the first fit after a bare ``pip install``).
``sleepstudy_corr`` is the correlated ``(Days | Subject)`` model (bayeslmm only: bambi has no
correlated group effects). ``bernoulli`` is a logit GLMM with a random intercept (20k rows / 500
groups; bambi and bayeslmm's non-centred graph: there is no collapsed path for it). The other
cases use one shared warm cache directory. Results go to
``OUT/bench.json`` and ``OUT/bench.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# case -> (bambi formula, bayeslmm formula, data builder key)
CASES = {
    "sleepstudy": ("Reaction ~ Days + (Days|Subject)", "Reaction ~ Days + (Days || Subject)"),
    "radon": ("log_radon ~ floor_measure + (floor_measure|county)",
              "log_radon ~ floor_measure + (floor_measure || county)"),
    "sim": ("y ~ x + (x|g)", "y ~ x + (x || g)"),
    "sleepstudy_corr": (None, "Reaction ~ Days + (Days | Subject)"),    # bayeslmm only (LKJ)
    "bernoulli": ("y ~ x + (1|g)", "y ~ x + (1 | g)"),                  # logit GLMM (issue 12)
    # issue 13: the quadrature path (engine bayeslmm-quadrature) against bambi and the non-centred graph
    "glmm_bernoulli": ("y ~ x + (1|g)", "y ~ x + (1 | g)"),             # 100k rows / 2k groups
    "glmm_binomial_slope": ("p(y, n) ~ x + (x|g)", "cbind(y, n - y) ~ x + (x || g)"),
    # issue 14: subjects x items. bambi's (cond|g) terms are uncorrelated; bayeslmm fits the
    # correlated model the data were simulated from (its crossed collapsed path)
    "crossed": ("rt ~ cond + (cond|subject) + (cond|item)", "rt ~ cond + (1 + cond | subject) + (1 + cond | item)"),
    "crossed_big": ("y ~ x + (1|subject) + (1|item)", "y ~ x + (1 | subject) + (1 | item)"),
}
#: family of a case (default gaussian)
FAMILY = {"bernoulli": "bernoulli", "glmm_bernoulli": "bernoulli", "glmm_binomial_slope": "binomial"}
#: the GLMM cases of the quadrature path: (groups, rows) full and --quick
GLMM_SIZES = {"glmm_bernoulli": ((2_000, 100_000), (200, 10_000)),
              "glmm_binomial_slope": ((500, 10_000), (100, 2_000))}

#: what a bayeslmm fit imports at first use (bayeslmm imports lazily, so that ``import bayeslmm``
#: is quick): its model, sampling and path modules, and formulaic, numba, scipy's optimizers and
#: arviz-base. ``import bambi`` imports its own modules and the same kind of libraries at once
#: (formulae, numba, scipy.optimize, arviz-base: 3-4 s), outside its total; these are imported in
#: bayeslmm's import stage likewise, so that neither total includes imports. Until 2026-12-01 they
#: were inside bayeslmm's total (~1.3 s on this machine). ``x_bambi_with_imports`` compares the
#: totals with each engine's imports added back.
LAZY_IMPORTS = ("formulaic", "numba", "scipy.optimize", "arviz_base", "bayeslmm.model", "bayeslmm.sampling",
                "bayeslmm.paths.noncentred", "bayeslmm.paths.collapsed", "bayeslmm.paths.collapsed_density",
                "bayeslmm.paths.crossed_path", "bayeslmm.paths.quadrature_path", "bayeslmm.paths.quadrature_density")


def _data(case: str, groups: int = 0, rows: int = 0):
    import numpy as np
    import pandas as pd

    import bayeslmm as blmm
    if case.startswith("sleepstudy"):
        df = blmm.load_dataset("sleepstudy")
        df["Subject"] = df["Subject"].astype(str)
        return df
    if case == "radon":
        df = blmm.load_dataset("radon_mn")
        df["county"] = df["county_idx"].astype(str)
        return df[["log_radon", "floor_measure", "county"]]
    rng = np.random.default_rng(2024)
    if case == "glmm_binomial_slope":           # logit, uncorrelated slope: b = (-0.3, 0.6), sd = (0.8, 0.4)
        g = np.repeat(np.arange(groups), rows // groups)
        x = rng.normal(size=len(g))
        eta = -0.3 + 0.6 * x + rng.normal(0, 0.8, groups)[g] + rng.normal(0, 0.4, groups)[g] * x
        n = rng.integers(1, 11, len(g))
        y = rng.binomial(n, 1 / (1 + np.exp(-eta)))
        return pd.DataFrame({"y": y, "n": n, "x": x, "g": pd.Categorical([f"g{k:05d}" for k in g])})
    if case == "crossed":                       # 60 subjects x 80 items x 2 conditions, every cell seen
        S, I = 60, 80
        s, i, c = (m.ravel() for m in np.meshgrid(np.arange(S), np.arange(I), np.arange(2), indexing="ij"))
        cond = c - 0.5
        def eff(n, sd, rho):
            cov = np.array([[sd[0] ** 2, rho * sd[0] * sd[1]], [rho * sd[0] * sd[1], sd[1] ** 2]])
            return rng.multivariate_normal([0, 0], cov, size=n)
        us, ui = eff(S, (50.0, 20.0), 0.4), eff(I, (30.0, 10.0), -0.3)
        rt = 600 + 30 * cond + us[s, 0] + us[s, 1] * cond + ui[i, 0] + ui[i, 1] * cond + rng.normal(0, 60, len(s))
        return pd.DataFrame({"rt": rt, "cond": cond, "subject": [f"s{k:02d}" for k in s],
                             "item": [f"i{k:02d}" for k in i]})
    if case == "crossed_big":                   # 500 subjects x 400 items, each subject sees 200 items
        S, I = 500, 400
        s = np.repeat(np.arange(S), I // 2)
        i = np.concatenate([rng.permutation(I)[:I // 2] for _ in range(S)])
        x = rng.normal(size=len(s))
        y = 1.0 + 0.3 * x + rng.normal(0, 0.8, S)[s] + rng.normal(0, 0.5, I)[i] + rng.normal(0, 1.0, len(s))
        return pd.DataFrame({"y": y, "x": x, "subject": [f"s{k:03d}" for k in s], "item": [f"i{k:03d}" for k in i]})
    if case in ("bernoulli", "glmm_bernoulli"):  # logit random intercept: b = (-0.5, 0.8), sd(g) = 1
        g = np.repeat(np.arange(groups), rows // groups)
        x = rng.normal(size=len(g))
        eta = -0.5 + 0.8 * x + rng.normal(0, 1.0, groups)[g]
        y = (rng.random(len(g)) < 1 / (1 + np.exp(-eta))).astype(int)
        return pd.DataFrame({"y": y, "x": x, "g": pd.Categorical([f"g{k:05d}" for k in g])})
    g = rng.integers(0, groups, rows)
    g[:groups] = np.arange(groups)              # every group present
    x = rng.normal(size=rows)
    u0 = rng.normal(0, 1.0, groups)
    u1 = rng.normal(0, 0.5, groups)
    y = 1.0 + 0.5 * x + u0[g] + u1[g] * x + rng.normal(0, 1.0, rows)
    return pd.DataFrame({"y": y, "x": x, "g": pd.Categorical([f"g{k:05d}" for k in g])})


def _summaries(post, stats, variance_vars, other_vars):
    import arviz as az
    import numpy as np
    ess = az.ess(post[variance_vars], method="bulk")
    min_ess = float(min(float(np.min(ess[v].values)) for v in variance_vars))
    rh = az.rhat(post[variance_vars + other_vars])
    max_rhat = float(max(float(np.max(rh[v].values)) for v in variance_vars + other_vars))
    div = int(stats["diverging"].values.sum())
    return min_ess, max_rhat, div


def run_one(engine: str, case: str, groups: int, rows: int, chains: int, draws: int, tune: int,
            seed: int) -> dict:
    """One fit in this process; returns the measurements."""
    t_import = time.perf_counter()
    import warnings
    warnings.filterwarnings("ignore")
    if engine == "bambi":
        import bambi as bmb
    import bayeslmm as blmm
    # bambi imports PyMC when it is imported (above, outside its total); bayeslmm imports PyMC at
    # its first fit. Both in the import stage, so that neither total includes importing PyMC
    # (the fresh-process time to first result, imports included, is bench/first_fit.py's).
    import pymc  # noqa: F401
    if engine != "bambi":
        import importlib
        for mod in LAZY_IMPORTS:
            importlib.import_module(mod)
    import_s = time.perf_counter() - t_import
    df = _data(case, groups, rows)
    bambi_f, ours_f = CASES[case]
    t0 = time.perf_counter()
    if engine == "bambi":
        model = bmb.Model(bambi_f, df, family=FAMILY.get(case, "gaussian"))
        idata = model.fit(draws=draws, tune=tune, chains=chains, cores=min(chains, 2),
                          random_seed=seed, progressbar=False)
        total = time.perf_counter() - t0
        post = idata["posterior"].to_dataset()
        variance = [v for v in post.data_vars if v == "sigma" or v.endswith("_sigma")]
        fixed = [v for v in post.data_vars if "|" not in v and v not in variance]
        stats = idata["sample_stats"].to_dataset()
        intercept = post["Intercept"]
    else:
        method = "noncentred" if engine == "bayeslmm-noncentred" else "marginal"   # quadrature for GLMMs
        m = blmm.Model(ours_f, df, family=FAMILY.get(case, "gaussian"))
        fit = m.fit(chains=chains, draws=draws, tune=tune, seed=seed, cores=min(chains, 2),
                    progressbar=False, verbose=False, method=method)
        total = time.perf_counter() - t0
        post = fit.posterior
        variance = [v for v in post.data_vars if v.startswith("sd_") or v == "sigma"]
        fixed = ["b"]
        stats = fit.idata["sample_stats"].to_dataset()
        stages = dict(fit.info.get("stages", {}))
        intercept = post["b"].sel(term="Intercept", drop=True)
    sampling = float(post.attrs.get("sampling_time", float("nan")))
    if engine == "bambi":           # bambi's own stages cannot be split finer than this
        stages = {"model build + compile + init": total - sampling, "sampling": sampling}
    min_ess, max_rhat, div = _summaries(post, stats, variance, fixed)
    import arviz as az
    intercept_ess = float(az.ess(intercept.to_dataset(name="i"), method="bulk")["i"])
    gcol = {"sleepstudy": "Subject", "sleepstudy_corr": "Subject", "radon": "county", "sim": "g",
            "bernoulli": "g", "glmm_bernoulli": "g", "glmm_binomial_slope": "g", "crossed": "subject",
            "crossed_big": "subject"}[case]
    return {"engine": engine, "case": case, "groups": int(df[gcol].nunique()), "rows": int(len(df)),
            "chains": chains, "draws": draws, "tune": tune, "import_s": import_s,
            "setup_s": total - sampling, "sampling_s": sampling, "total_s": total,
            "min_ess": min_ess, "ess_per_s": min_ess / total, "divergences": div,
            "max_rhat": max_rhat, "stages": {"import": import_s, **stages}, "intercept_ess": intercept_ess,
            "method": fit.info.get("method") if engine != "bambi" else "bambi"}


def _spawn(args, engine, case, groups, rows, compiledir, label, timeout, numba_dir=None):
    cmd = [sys.executable, __file__, "--one", engine, case, str(groups), str(rows),
           "--chains", str(args.chains), "--draws", str(args.draws), "--tune", str(args.tune)]
    env = dict(os.environ, PYTENSOR_FLAGS=f"base_compiledir={compiledir}")
    if numba_dir:          # also an empty numba cache: bayeslmm's kernel as if never compiled
        env["NUMBA_CACHE_DIR"] = numba_dir
    t0 = time.perf_counter()
    print(f"[bench] {case} ({rows or 'data'} rows) {engine} {label} ...", flush=True)
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"engine": engine, "case": case, "cache": label, "error": f"timed out after {timeout} s"}
    wall = time.perf_counter() - t0
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        return {"engine": engine, "case": case, "cache": label,
                "error": (out.stderr or out.stdout).strip().splitlines()[-1][:300]}
    res = json.loads(lines[-1][7:])
    res["cache"] = label
    res["process_wall_s"] = wall
    print(f"[bench]   total {res['total_s']:.1f}s (setup {res['setup_s']:.1f}s, sampling "
          f"{res['sampling_s']:.1f}s), min ESS {res['min_ess']:.0f}, {res['ess_per_s']:.1f} ESS/s",
          flush=True)
    print("[bench]   stages: " + ", ".join(f"{k} {v:.2f}" for k, v in res.get("stages", {}).items()),
          flush=True)
    return res


def _median(rows: list[dict]) -> dict:
    """The repetition with the median total time (the others' totals kept in ``total_s_all``)."""
    ok = sorted((r for r in rows if "error" not in r), key=lambda r: r["total_s"])
    if not ok:
        return rows[0]
    res = dict(ok[(len(ok) - 1) // 2])
    res["total_s_all"] = [round(r["total_s"], 2) for r in rows if "error" not in r]
    return res


def _total(r: dict) -> str:
    alls = r.get("total_s_all") or []
    return f"{r['total_s']:.1f}" + (f" ({min(alls):.1f}-{max(alls):.1f})" if len(alls) > 1 else "")


def _markdown(results: list[dict], meta: dict) -> str:
    lines = [f"Benchmark ({meta['date']}, {meta['machine']}; {meta['settings']}).",
             "", meta["note"], "",
             "| case | rows / groups | engine | cache | setup+compile s | sampling s | total s "
             "| min bulk ESS (variance) | ESS/s | x bambi | x bambi, imports incl. | divergences | max R-hat |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        size = f"{r.get('rows', '')} / {r.get('groups', '')}"
        if "error" in r:
            lines.append(f"| {r['case']} | {size} | {r['engine']} | {r['cache']} | error: {r['error']} "
                         "| | | | | | | | |")
            continue
        xb = f"{r['x_bambi']:.1f}" if r.get("x_bambi") is not None else "-"
        xi = f"{r['x_bambi_with_imports']:.1f}" if r.get("x_bambi_with_imports") is not None else "-"
        if r.get("x_bambi_per_rep"):
            xb += " (" + ", ".join(f"{x:.1f}" for x in r["x_bambi_per_rep"]) + ")"
        lines.append(f"| {r['case']} | {size} | {r['engine']} | {r['cache']} | {r['setup_s']:.1f} | "
                     f"{r['sampling_s']:.1f} | {_total(r)} | {r['min_ess']:.0f} | "
                     f"{r['ess_per_s']:.1f} | {xb} | {xi} | {r['divergences']} | {r['max_rhat']:.3f} |")
    return "\n".join(lines) + "\n" + _profile(results)


def _profile(results: list[dict]) -> str:
    """Where each fit spent its time (issue 17): ``fit.info["stages"]`` plus the import, seconds."""
    rows = [r for r in results if r.get("stages")]
    if not rows:
        return ""
    lines = ["", "Stage profile (seconds; `fit.info[\"stages\"]`, import measured in the same fresh process):", "",
             "| case | engine | cache | stages |", "| --- | --- | --- | --- |"]
    for r in rows:
        st = ", ".join(f"{k} {v:.2f}" for k, v in r["stages"].items())
        lines.append(f"| {r['case']} | {r['engine']} | {r['cache']} | {st} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--quick", action="store_true", help="small sizes and fewer draws (smoke run)")
    ap.add_argument("--chains", type=int, default=2)
    ap.add_argument("--draws", type=int, default=None)
    ap.add_argument("--tune", type=int, default=None)
    ap.add_argument("--reps", type=int, default=3, help="repetitions of the sleepstudy runs (median kept)")
    ap.add_argument("--render", action="store_true", help="rewrite OUT/bench.md from OUT/bench.json")
    ap.add_argument("--case", choices=sorted(CASES), default=None,
                    help="run only this case (its engines once; results to OUT/bench_<case>.json/.md)")
    ap.add_argument("--engines", default=None,
                    help="with --case: only these engines (comma-separated, e.g. bambi,bayeslmm-quadrature)")
    ap.add_argument("--one", nargs=4, metavar=("ENGINE", "CASE", "GROUPS", "ROWS"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.draws is None:
        args.draws = 300 if args.quick else 1000
    if args.tune is None:
        args.tune = 300 if args.quick else 1000
    if args.one:
        engine, case, groups, rows = args.one
        res = run_one(engine, case, int(groups), int(rows), args.chains, args.draws, args.tune, seed=1)
        print("RESULT " + json.dumps(res))
        return 0

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.render:
        saved = json.loads((out / "bench.json").read_text())
        (out / "bench.md").write_text(_markdown(saved["results"], saved["meta"]))
        print((out / "bench.md").read_text())
        return 0
    engines = ["bambi", "bayeslmm-noncentred", "bayeslmm-marginal"]
    bern = (100, 4_000) if args.quick else (500, 20_000)
    if args.case:
        return _one_case(args, out, engines, bern)
    big = (200, 10_000) if args.quick else (2_000, 100_000)
    huge = (1_000, 100_000) if args.quick else (10_000, 1_000_000)
    results = []
    warm_dir = tempfile.mkdtemp(prefix="bayeslmm-bench-warm-")
    small = []
    for _ in range(args.reps):          # sleepstudy: cold then warm, engines interleaved, repeated
        for engine in engines:
            cold_dir = tempfile.mkdtemp(prefix="bayeslmm-bench-cold-")
            small.append(_spawn(args, engine, "sleepstudy", 0, 0, cold_dir, "cold", 1800))
            small.append(_spawn(args, engine, "sleepstudy", 0, 0, cold_dir, "warm", 1800))
    for engine in engines:
        for cache in ("cold", "warm"):
            results.append(_median([r for r in small if r["engine"] == engine and r["cache"] == cache]))
    cold_dir = tempfile.mkdtemp(prefix="bayeslmm-bench-cold-")
    results.append(_spawn(args, "bayeslmm-marginal", "sleepstudy", 0, 0, cold_dir, "cold+kernel", 1800,
                          numba_dir=os.path.join(cold_dir, "numba")))
    corr_dir = tempfile.mkdtemp(prefix="bayeslmm-bench-cold-")
    for cache in ("cold", "warm"):
        results.append(_spawn(args, "bayeslmm-marginal", "sleepstudy_corr", 0, 0, corr_dir, cache, 1800))
    for engine in engines:
        results.append(_spawn(args, engine, "radon", 0, 0, warm_dir, "shared", 1800))
    for engine in engines:
        results.append(_spawn(args, engine, "sim", *big, warm_dir, "shared", 3600))
    results.append(_spawn(args, "bayeslmm-marginal", "sim", *huge, warm_dir, "shared", 3600))
    for case, (full, quick) in GLMM_SIZES.items():       # issue 13: engines interleaved per case
        for engine in ["bambi", "bayeslmm-noncentred", "bayeslmm-quadrature"]:
            results.append(_spawn(args, engine, case, *(quick if args.quick else full), warm_dir, "shared", 7200))
    for engine in engines[:2]:                # no collapsed path for a logit GLMM
        results.append(_spawn(args, engine, "bernoulli", *bern, warm_dir, "shared", 3600))

    _ratios(results)
    meta = _meta(args)
    (out / "bench.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    md = _markdown(results, meta)
    (out / "bench.md").write_text(md)
    print(md)
    return 0


def _ratios(results: list[dict]) -> None:
    for r in results:                                        # ratios to bambi, same run
        cache = "cold" if r.get("cache") == "cold+kernel" else r.get("cache")
        ref = next((b for b in results if b.get("engine") == "bambi" and b.get("case") == r.get("case")
                    and b.get("cache") == cache and b.get("rows") == r.get("rows")
                    and "error" not in b), None)
        r["x_bambi"] = (r["ess_per_s"] / ref["ess_per_s"]) if ref and "error" not in r else None
        if r["x_bambi"] is not None and "import_s" in r and "import_s" in ref:
            r["x_bambi_with_imports"] = ((r["min_ess"] / (r["total_s"] + r["import_s"]))
                                         / (ref["min_ess"] / (ref["total_s"] + ref["import_s"])))


def _one_case(args, out: Path, engines: list[str], bern: tuple[int, int]) -> int:
    """``--case NAME``: that case's engines once each, in one warm cache shared by the engines."""
    case = args.case
    sizes = {"bernoulli": bern, "sim": (200, 10_000) if args.quick else (2_000, 100_000)}.get(case, (0, 0))
    if case.startswith("crossed"):          # issue 14: engines interleaved, repeated (--reps)
        return _crossed_case(args, out, engines)
    if case in GLMM_SIZES:
        sizes = GLMM_SIZES[case][1 if args.quick else 0]
    engs = [e for e in engines if not (e == "bambi" and CASES[case][0] is None)
            and not (e == "bayeslmm-marginal" and FAMILY.get(case, "gaussian") != "gaussian")]
    if case in GLMM_SIZES:
        engs.append("bayeslmm-quadrature")
    if args.engines:
        engs = [e for e in engs if e in args.engines.split(",")]
    runs = []
    for _ in range(args.reps if case in GLMM_SIZES or case == "sim" else 1):  # engines interleaved, repeated
        warm_dir = tempfile.mkdtemp(prefix="bayeslmm-bench-warm-")          # each repetition compiles cold
        runs += [_spawn(args, e, case, *sizes, warm_dir, "shared", 7200) for e in engs]
    # the repetition with the median total per engine (all totals in total_s_all)
    results = [_median([r for r in runs if r.get("engine") == e]) for e in engs]
    _ratios(results)
    if "bambi" in engs and len(runs) > len(engs):     # the ratio within each repetition, too
        reps = [runs[i:i + len(engs)] for i in range(0, len(runs), len(engs))]
        for r in results:
            if r.get("engine") != "bambi" and "error" not in r:
                r["x_bambi_per_rep"] = [
                    (o["min_ess"] / o["total_s"]) / (b["min_ess"] / b["total_s"]) for rep in reps
                    for o in rep if o.get("engine") == r["engine"] and "error" not in o
                    for b in rep if b.get("engine") == "bambi" and "error" not in b]
    meta = _meta(args)
    (out / f"bench_{case}.json").write_text(json.dumps({"meta": meta, "results": results, "runs": runs},
                                                       indent=2))
    md = _markdown(results, meta)
    (out / f"bench_{case}.md").write_text(md)
    print(md)
    return 0


def _crossed_case(args, out: Path, engines: list[str]) -> int:
    """The crossed cases (issue 14): bambi, the non-centred graph and the crossed collapsed path
    (``bayeslmm-marginal`` takes it for crossed factors), interleaved, ``--reps`` times, one warm
    cache shared by the engines; results to OUT/bench_<case>.json/.md."""
    case = args.case
    warm_dir = tempfile.mkdtemp(prefix="bayeslmm-bench-warm-")
    runs = []
    for _ in range(args.reps):
        for e in engines:
            runs.append(_spawn(args, e, case, 0, 0, warm_dir, "shared", 7200))
    results = [_median([r for r in runs if r.get("engine") == e]) for e in engines]
    _ratios(results)
    for r in results:                       # the same ratio for the intercept's ESS/s
        ref = next((b for b in results if b.get("engine") == "bambi" and "error" not in b), None)
        if "error" not in r and ref:
            r["intercept_ess_per_s"] = r["intercept_ess"] / r["total_s"]
            r["x_bambi_intercept"] = r["intercept_ess_per_s"] / (ref["intercept_ess"] / ref["total_s"])
    meta = _meta(args)
    (out / f"bench_{case}.json").write_text(json.dumps({"meta": meta, "results": results, "runs": runs}, indent=2))
    md = _markdown(results, meta)
    md += ("\n| engine | method | intercept bulk ESS | intercept ESS/s | x bambi (intercept) |\n"
           "| --- | --- | --- | --- | --- |\n")
    md += "".join(f"| {r['engine']} | {r.get('method', '')} | {r['intercept_ess']:.0f} | "
                  f"{r['intercept_ess_per_s']:.2f} | {r.get('x_bambi_intercept', float('nan')):.1f} |\n"
                  for r in results if "error" not in r and "intercept_ess_per_s" in r)
    (out / f"bench_{case}.md").write_text(md)
    print(md)
    return 0


def _meta(args) -> dict:
    return {"date": time.strftime("%Y-%m-%d %H:%M"),
            "machine": f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
                       f"Python {platform.python_version()}",
            "settings": f"{args.chains} chains x ({args.tune} tune + {args.draws} draws), PyMC NUTS, "
                        f"cores={min(args.chains, 2)}" + (", --quick" if args.quick else ""),
            "note": "ESS/s = min bulk ESS over the variance parameters / total wall time (model "
                    "construction + compile + sampling, imports excluded). bambi's (x|g) is "
                    "uncorrelated, so bayeslmm fits (x || g). x bambi = ESS/s ratio to bambi in "
                    "the same run (sim 1M: bayeslmm marginal only; bernoulli: a logit GLMM, "
                    "random intercept, on the non-centred graph; glmm_*: bayeslmm-quadrature is "
                    "the exact collapsed GLMM path of issue 13, AGHQ with nodes checked on the data)."}


if __name__ == "__main__":
    sys.exit(main())
