"""Benchmark: sufficient statistics from a Parquet directory bigger than we want in memory.

Usage::

    python bench/bigdata.py --rows 2000000 --groups 10000             # about a minute on 2 cores
    python bench/bigdata.py --rows 10000000 --groups 50000            # the issue's size
    python bench/bigdata.py --rows 2000000 --groups 10000 --engine dask

Steps (each measured step runs in its own Python process, so each peak RSS is its own):

1. **generate** (not timed as a result): a Parquet directory of ``--rows`` rows in files of
   ``--file-rows`` rows (row groups of 128 Ki rows), columns ``y`` (float64), ``x`` (float64) and
   ``g`` (int64, ``--groups`` levels, uniformly spread, so every chunk touches every group), from
   ``y = 1 + 0.5 x + u0[g] + u1[g] x + e``. One file is in memory at a time. Reused if it exists
   with the same size and seed.
2. **read**: a pyarrow dataset scan of the three columns, batch by batch, converting nothing: the
   physical limit for any pass over these files on this machine.
3. **chunks**: the same scan through ``Source.chunks`` (pyarrow batches joined to ``--chunk-rows``
   rows and converted to pandas), touching nothing else: the cost of getting pandas chunks.
5. **fit** (``--no-fit`` skips it): the whole big-data fit in one process, ``Model(formula, dir)``
   (both passes) then ``fit(chains=2, draws=--draws, tune=--tune)`` on the statistics: the
   time split into statistics and sampling, and the peak RSS of a fit.
4. **stats**: what a fit does before sampling, in one process: the first pass
   (``plan_design``: levels, counts, moments) then the statistics pass (``stats_pass``), for
   ``--formula`` (default ``y ~ x + (1 + x | g)``). Reports each pass's time and rows/s, and checks
   the result (J, n, b0 against the generating values).

Memory: ``ru_maxrss`` (peak resident set size) of each step's process, the RSS after its imports
(``import bayeslmm`` loads PyMC today), and their difference, next to the size the same columns
take in one pandas DataFrame (24 bytes a row). Results: ``OUT/bigdata.json`` and ``OUT/bigdata.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _rss_mib() -> float:
    """Current resident set size (Linux /proc), MiB."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024      # Linux: KiB


# --------------------------------------------------------------------------------------------
# 1. data
# --------------------------------------------------------------------------------------------
def generate(path: Path, rows: int, groups: int, file_rows: int, seed: int) -> dict:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    stamp = path / "_bench.json"
    want = {"rows": rows, "groups": groups, "file_rows": file_rows, "seed": seed}
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        return {"generated": False, "generate_s": 0.0}
    path.mkdir(parents=True, exist_ok=True)
    for f in path.glob("*.parquet"):
        f.unlink()
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    u0 = rng.normal(0.0, 1.0, groups)
    u1 = rng.normal(0.0, 0.3, groups)
    done, k = 0, 0
    while done < rows:
        m = min(file_rows, rows - done)
        g = rng.integers(0, groups, m)
        x = rng.normal(0.0, 1.0, m)
        y = 1.0 + 0.5 * x + u0[g] + u1[g] * x + rng.normal(0.0, 1.0, m)
        pq.write_table(pa.table({"y": y, "x": x, "g": g}), path / f"part-{k:05d}.parquet",
                       row_group_size=1 << 17)
        done += m
        k += 1
    stamp.write_text(json.dumps(want))
    return {"generated": True, "generate_s": time.perf_counter() - t0}


# --------------------------------------------------------------------------------------------
# 2-4. steps, each in a child process (python bench/bigdata.py --step NAME ...)
# --------------------------------------------------------------------------------------------
def _timed(fn, reps: int) -> tuple[float, float, object]:
    """Best wall-clock and best CPU time (this process, all threads) over ``reps`` runs."""
    walls, cpus, out = [], [], None
    for _ in range(reps):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return min(walls), min(cpus), out


def step_read(args) -> dict:
    import pyarrow.dataset as pads

    def scan():
        ds = pads.dataset(str(args.dir), format="parquet")
        rows = nbytes = 0
        for b in ds.to_batches(columns=["y", "x", "g"], batch_readahead=2, fragment_readahead=1):
            rows += b.num_rows
            nbytes += b.nbytes
        return rows, nbytes

    scan_small = pads.dataset(str(args.dir), format="parquet").head(1000, columns=["y", "x", "g"])  # warm-up
    del scan_small
    base = _rss_mib()
    wall, cpu, (rows, nbytes) = _timed(scan, args.reps)
    return {"wall_s": wall, "cpu_s": cpu, "rows": rows, "arrow_bytes": nbytes, "base_rss_mib": base,
            "peak_rss_mib": _peak_mib()}


def step_chunks(args) -> dict:
    from bayeslmm.data import as_source
    src = as_source(args.dir, ["y", "x", "g"], chunk_rows=args.chunk_rows)
    src.head(1000)                                                            # warm-up
    base = _rss_mib()
    wall, cpu, rows = _timed(lambda: sum(len(c) for c in src.chunks()), args.reps)
    return {"wall_s": wall, "cpu_s": cpu, "rows": rows, "base_rss_mib": base, "peak_rss_mib": _peak_mib()}


def step_stats(args) -> dict:
    import numpy as np
    import bayeslmm as blmm
    from bayeslmm.chunked_design import plan_design
    from bayeslmm.chunked_stats import stats_pass
    from bayeslmm.data import as_source

    client = None
    if args.engine == "dask":
        import distributed
        client = distributed.Client(distributed.LocalCluster(n_workers=2, threads_per_worker=1,
                                                             processes=False, dashboard_address=None))
    spec = blmm.build_spec(args.formula)
    src = as_source(args.dir, chunk_rows=args.chunk_rows, engine=args.engine)
    small = src.head(1000)                             # warm-up: formulaic's and pandas' lazy imports
    stats_pass(plan_design(spec, small), small)
    del small
    base = _rss_mib()
    w1, c1, design = _timed(lambda: plan_design(spec, src), args.reps)
    w2, c2, sp = _timed(lambda: stats_pass(design, src), args.reps)
    s = sp.stats
    if client is not None:
        client.close()
    return {"first_wall_s": w1, "first_cpu_s": c1, "stats_wall_s": w2, "stats_cpu_s": c2, "n": design.n,
            "J": list(s.J), "q": list(s.q), "p": s.p, "b0": [float(v) for v in s.b0],
            "y_sd": float(sp.y_moments.sd[0]), "n_obs_sum": float(np.sum(s.n_obs)),
            "base_rss_mib": base, "peak_rss_mib": _peak_mib(), "engine": args.engine}


def step_inmemory(args) -> dict:
    """The in-memory path for comparison: pandas.read_parquet, make_design, marginal_stats."""
    import pandas as pd
    import pyarrow.dataset as pads
    import bayeslmm as blmm
    from bayeslmm.stats import group_stats as marginal_stats
    spec = blmm.build_spec(args.formula)
    small = pads.dataset(str(args.dir), format="parquet").head(1000).to_pandas()     # warm-up
    marginal_stats(blmm.make_design(spec, small))
    del small
    base = _rss_mib()
    w0, c0 = time.perf_counter(), time.process_time()
    df = pd.read_parquet(args.dir, columns=["y", "x", "g"])
    w1, c1 = time.perf_counter(), time.process_time()
    s = marginal_stats(blmm.make_design(spec, df))
    w2, c2 = time.perf_counter(), time.process_time()
    return {"read_wall_s": w1 - w0, "read_cpu_s": c1 - c0, "stats_wall_s": w2 - w1, "stats_cpu_s": c2 - c1,
            "pandas_mib": float(df.memory_usage(index=False).sum() / 2**20), "b0": [float(v) for v in s.b0],
            "base_rss_mib": base, "peak_rss_mib": _peak_mib()}


def step_fit(args) -> dict:
    """The whole big-data fit: ``Model(formula, parquet_dir)`` (both passes) then NUTS on the statistics."""
    import warnings

    import bayeslmm as blmm
    small = pads_head(args.dir)
    blmm.Model(args.formula, small, engine="chunked")                     # warm-up: lazy imports
    base = _rss_mib()
    w0, c0 = time.perf_counter(), time.process_time()
    model = blmm.Model(args.formula, str(args.dir), engine="chunked" if args.engine == "pyarrow" else "dask")
    w1, c1 = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = model.fit(chains=2, draws=args.draws, tune=args.tune, seed=1, cores=1, progressbar=False,
                        verbose=False)
    w2, c2 = time.perf_counter(), time.process_time()
    vc = fit.variance_components()
    return {"model_wall_s": w1 - w0, "model_cpu_s": c1 - c0, "fit_wall_s": w2 - w1, "fit_cpu_s": c2 - c1,
            "sampling_s": fit.info.get("sampling_s"), "effects_s": fit.info.get("effects_s"),
            "draws": args.draws, "tune": args.tune,
            "sd_mean": [float(vc.loc[k, "mean"]) for k in ("sd(g, Intercept)", "sd(g, x)", "sigma")
                        if k in vc.index],
            "max_rhat": float(vc["r_hat"].astype(float).max()),
            "base_rss_mib": base, "peak_rss_mib": _peak_mib()}


def pads_head(path, n: int = 1000):
    import pyarrow.dataset as pads
    return pads.dataset(str(path), format="parquet").head(n).to_pandas()


STEPS = {"read": step_read, "chunks": step_chunks, "stats": step_stats, "inmemory": step_inmemory,
         "fit": step_fit}


def run_step(name: str, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--step", name, "--dir", str(args.dir),
           "--chunk-rows", str(args.chunk_rows), "--formula", args.formula, "--engine", args.engine,
           "--rows", str(args.rows), "--groups", str(args.groups), "--reps", str(args.reps),
           "--draws", str(args.draws), "--tune", str(args.tune)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"step {name} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(res: dict) -> str:
    a = res["args"]
    n = a["rows"]
    pandas_mib = n * 24 / 2**20
    r, c, s = res["read"], res["chunks"], res["stats"]

    def row(name, wall, cpu, step=None):
        mem = (f"{step['peak_rss_mib']:.0f} | {step['base_rss_mib']:.0f} | "
               f"{step['peak_rss_mib'] - step['base_rss_mib']:.0f}") if step else " | | "
        return f"| {name} | {wall:.2f} | {cpu:.2f} | {n / wall / 1e6:.2f} | {mem} |"

    lines = [
        f"# Sufficient statistics from Parquet: {n:,} rows, {a['groups']:,} groups",
        "",
        f"`{a['formula']}`, engine {a['engine']}, chunks of {a['chunk_rows']:,} rows, best of {a['reps']}; "
        f"{res['machine']}. The three columns in one pandas DataFrame: {pandas_mib:,.0f} MiB.",
        "",
        "| step | wall (s) | CPU (s) | M rows/s (wall) | peak RSS (MiB) | RSS before (MiB) | peak - before |",
        "|---|---:|---:|---:|---:|---:|---:|",
        row("pyarrow scan of the 3 columns (the physical limit)", r["wall_s"], r["cpu_s"], r),
        row("Source.chunks (scan + to_pandas)", c["wall_s"], c["cpu_s"], c),
        row("first pass (plan_design: levels, counts, moments)", s["first_wall_s"], s["first_cpu_s"]),
        row("statistics pass (stats_pass)", s["stats_wall_s"], s["stats_cpu_s"]),
        row("both passes (one process)", s["first_wall_s"] + s["stats_wall_s"], s["first_cpu_s"] + s["stats_cpu_s"], s),
    ]
    if "fit" in res:
        f = res["fit"]
        lines.append(row("**fit**: Model(formula, parquet_dir) (both passes)", f["model_wall_s"], f["model_cpu_s"]))
        lines.append(f"| **fit**: NUTS on the statistics, 2 chains x ({f['tune']} + {f['draws']}) (incl. compile) "
                     f"+ drawing r | {f['fit_wall_s']:.2f} | {f['fit_cpu_s']:.2f} | | {f['peak_rss_mib']:.0f} | "
                     f"{f['base_rss_mib']:.0f} | {f['peak_rss_mib'] - f['base_rss_mib']:.0f} |")
    if "inmemory" in res:
        m = res["inmemory"]
        lines.append(row("in memory: read_parquet + make_design + marginal_stats", m["read_wall_s"] + m["stats_wall_s"],
                         m["read_cpu_s"] + m["stats_cpu_s"], m))
    lines += [
        "",
        f"Statistics pass / pyarrow scan: {s['stats_wall_s'] / r['wall_s']:.1f}x the wall time, "
        f"{s['stats_cpu_s'] / r['cpu_s']:.1f}x the CPU time; both passes / scan: "
        f"{(s['first_wall_s'] + s['stats_wall_s']) / r['wall_s']:.1f}x wall. "
        f"Result: n = {s['n']:,}, J = {s['J']}, b0 = {[round(v, 4) for v in s['b0']]} (generated: 1, 0.5)"
        + (f"; in-memory b0 = {[round(v, 4) for v in res['inmemory']['b0']]}." if "inmemory" in res else "."),
        "RSS before = after imports and a warm-up on 1,000 rows (`import bayeslmm` loads PyMC today).",
    ]
    if "fit" in res:
        f = res["fit"]
        lines.append(f"Fit: sampling {f['sampling_s']:.1f} s, drawing the random effects {f['effects_s']:.1f} s; "
                     f"posterior means sd(g, Intercept), sd(g, x), sigma = {[round(v, 3) for v in f['sd_mean']]} "
                     f"(generated: 1, 0.3, 1); max R-hat {f['max_rhat']}.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--groups", type=int, default=10_000)
    ap.add_argument("--file-rows", type=int, default=500_000)
    ap.add_argument("--chunk-rows", type=int, default=1 << 18)
    ap.add_argument("--formula", default="y ~ x + (1 + x | g)")
    ap.add_argument("--engine", choices=("pyarrow", "dask"), default="pyarrow")
    ap.add_argument("--seed", type=int, default=20261201)
    ap.add_argument("--reps", type=int, default=3, help="repetitions per step; the best time is reported")
    ap.add_argument("--draws", type=int, default=500, help="draws per chain of the fit step (2 chains)")
    ap.add_argument("--tune", type=int, default=500, help="tuning steps per chain of the fit step")
    ap.add_argument("--no-fit", action="store_true", help="skip the fit step (both passes + NUTS)")
    ap.add_argument("--no-inmemory", action="store_true",
                    help="skip the in-memory comparison (pandas + make_design: needs several times the data)")
    ap.add_argument("--dir", type=Path, default=None, help="Parquet directory (default: /tmp/bayeslmm-bigdata-ROWS-GROUPS)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--step", choices=tuple(STEPS), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.dir is None:
        args.dir = Path(f"/tmp/bayeslmm-bigdata-{args.rows}-{args.groups}")
    if args.step:
        print(json.dumps(STEPS[args.step](args)))
        return 0
    gen = generate(args.dir, args.rows, args.groups, args.file_rows, args.seed)
    print(f"data: {args.dir} ({'generated in %.1f s' % gen['generate_s'] if gen['generated'] else 'reused'})",
          flush=True)
    res = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "step"},
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
           "generate": gen}
    steps = ("read", "chunks", "stats") + (() if args.no_fit else ("fit",)) + (() if args.no_inmemory else ("inmemory",))
    for name in steps:
        res[name] = run_step(name, args)
        print(f"{name}: {json.dumps(res[name])}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bigdata.json").write_text(json.dumps(res, indent=2))
    md = report(res)
    (args.out / "bigdata.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
