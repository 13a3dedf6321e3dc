"""Time to first result, as a user meets it (issue 17): a fresh Python process that imports the
package, loads the data and fits with default settings (4 chains x 1000 draws), timed from outside
(wall clock of the whole process, interpreter start and imports included).

Usage::

    python bench/first_fit.py --out bench/results [--reps 3] [--cases sleepstudy,nested,crossed]

For each case, bayeslmm and bambi alternate (interleaved pairs), ``--reps`` times, each with an empty
PyTensor compile directory ("cold": the first fit of that model on a machine) and then again with
that directory ("warm"); the table reports the median and range. bayeslmm's own numba kernels are
compiled at install (``make``) and found in numba's cache, as a compiled extension would be.
Results: OUT/first_fit.{json,md}.

Models (bambi has no correlated group effects, so it fits ``(Days | Subject)`` uncorrelated; bayeslmm
fits the correlated model the issue names):

* sleepstudy: ``Reaction ~ Days + (Days | Subject)``;
* nested (Pastes-like, simulated: 10 batches x 3 casks x 2 samples): ``strength ~ 1 + (1 | batch/cask)``;
* crossed (Penicillin-like, simulated: 24 plates x 6 samples): ``diameter ~ 1 + (1 | plate) + (1 | sample)``.

lme4's Pastes and Penicillin are not bundled; the simulated sets have their layout and roughly their
variance components, and both engines read the same CSV file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = {
    "sleepstudy": ("sleepstudy", "Reaction ~ Days + (Days | Subject)", "Reaction ~ Days + (Days | Subject)"),
    "nested": ("pastes", "strength ~ 1 + (1 | batch/cask)", "strength ~ 1 + (1 | batch/cask)"),
    "crossed": ("penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)",
                "diameter ~ 1 + (1 | plate) + (1 | sample)"),
}


def _simulated(name: str, folder: Path) -> str:
    """A CSV of the Pastes-like or Penicillin-like data (fixed seed); its path."""
    import numpy as np
    import pandas as pd
    rng = np.random.default_rng(17)
    if name == "pastes":
        b, c, k = (m.ravel() for m in np.meshgrid(np.arange(10), np.arange(3), np.arange(2), indexing="ij"))
        y = 60 + rng.normal(0, 1.3, 10)[b] + rng.normal(0, 2.9, 30)[b * 3 + c] + rng.normal(0, 0.8, len(b))
        df = pd.DataFrame({"strength": y, "batch": [f"B{i:02d}" for i in b], "cask": [f"c{i}" for i in c]})
    else:
        p, s = (m.ravel() for m in np.meshgrid(np.arange(24), np.arange(6), indexing="ij"))
        y = 23 + rng.normal(0, 0.85, 24)[p] + rng.normal(0, 1.9, 6)[s] + rng.normal(0, 0.55, len(p))
        df = pd.DataFrame({"diameter": y, "plate": [f"p{i:02d}" for i in p], "sample": list("ABCDEF"[i] for i in s)})
    path = folder / f"{name}.csv"
    df.to_csv(path, index=False)
    return str(path)


LOAD = """
import pandas as pd
df = None
if {data!r}.endswith(".csv"):
    df = pd.read_csv({data!r}, dtype={{c: "category" for c in ("batch", "cask", "plate", "sample")}})
"""

OURS = LOAD + """
import bayeslmm as blmm
df = blmm.load_dataset({data!r}) if df is None else df
fit = blmm.Model({formula!r}, df).fit(progressbar=False, verbose=False)
print("RESULT", fit.info["method"])
"""

BAMBI = LOAD + """
import bambi as bmb
if df is None:                   # bayeslmm only for its bundled data (pandas, a fraction of a second)
    import bayeslmm as blmm
    df = blmm.load_dataset({data!r})
    df = df.astype({{c: "category" for c in df.columns if df[c].dtype == object}})
idata = bmb.Model({formula!r}, df).fit(progressbar=False)
print("RESULT bambi")
"""


def _run(code: str, compiledir: str) -> float:
    env = dict(os.environ, PYTENSOR_FLAGS=f"base_compiledir={compiledir}")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    if out.returncode != 0 or "RESULT" not in out.stdout:
        raise RuntimeError((out.stderr or out.stdout).strip().splitlines()[-1])
    return wall


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--cases", default="sleepstudy,nested,crossed")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    times: dict = {}
    tmp = Path(tempfile.mkdtemp(prefix="bayeslmm-first-fit-data-"))
    for case in a.cases.split(","):
        data, ours, theirs = CASES[case]
        if data in ("pastes", "penicillin"):
            data = _simulated(data, tmp)
        for rep in range(a.reps):
            for engine, code in (("bayeslmm", OURS.format(data=data, formula=ours)),
                                 ("bambi", BAMBI.format(data=data, formula=theirs))):
                d = tempfile.mkdtemp(prefix="bayeslmm-first-fit-")
                for cache in ("cold", "warm"):
                    t = _run(code, d)
                    times.setdefault((case, engine, cache), []).append(t)
                    print(f"[first_fit] {case} {engine} {cache} rep {rep + 1}: {t:.1f} s", flush=True)
    rows = []
    for (case, engine, cache), ts in times.items():
        rows.append({"case": case, "engine": engine, "cache": cache, "median_s": statistics.median(ts),
                     "min_s": min(ts), "max_s": max(ts), "all_s": ts})
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{os.cpu_count()} CPUs, "
            f"{platform.machine()}, Python {platform.python_version()}", "reps": a.reps}
    (out / "first_fit.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    md = [f"Time to first result ({meta['date']}, {meta['machine']}): a fresh process, imports included, "
          f"default fit (4 chains x 1000 draws), median of {a.reps} interleaved repetitions (range).", "",
          "| case | cache | bayeslmm s | bambi s | bayeslmm / bambi |", "| --- | --- | --- | --- | --- |"]
    for case in a.cases.split(","):
        for cache in ("cold", "warm"):
            o, b = times.get((case, "bayeslmm", cache)), times.get((case, "bambi", cache))
            if o and b:
                mo, mb = statistics.median(o), statistics.median(b)
                md.append(f"| {case} | {cache} | {mo:.1f} ({min(o):.1f}-{max(o):.1f}) | "
                          f"{mb:.1f} ({min(b):.1f}-{max(b):.1f}) | {mo / mb:.2f} |")
    (out / "first_fit.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
