"""Generate the simulated teaching data sets shipped in models/data/ (fixed seeds, documented truth).

Run ``python models/data/simulate.py`` to rewrite ``schools.csv`` and ``pigeons.csv``; the output is
byte-for-byte the shipped files (tests/test_specfile.py checks this). The true parameters are in
``SCHOOLS`` and ``PIGEONS`` below and in models/data/README.md, so notebooks can show that a model
recovers them.

schools.csv (pupils in schools; the ICC example)
    score_ij = mu + u_j + e_ij,  u_j ~ N(0, 0.35),  e_ij ~ N(0, 2.10)   (variances)
    ICC = 0.35 / (0.35 + 2.10) = 0.142857...
    40 schools with 10-40 pupils each (school sizes drawn uniformly), mu = 5.
    columns: school ("S01".."S40"), pupil (1..n_j), score

pigeons.csv (pigeons measured repeatedly; the repeated-measures example)
    peck_rate_ij = b0 + b_trained * trained_i + b_session * session_ij + u_i + e_ij
    u_i ~ N(0, sd_pigeon^2), e_ij ~ N(0, sigma^2); 24 pigeons (12 control, 12 trained),
    each measured in 10 sessions (1..10). condition varies only *between* pigeons, session only
    *within* pigeons. b0 = 40, b_trained = 6, b_session = 1.5, sd_pigeon = 6, sigma = 3 (pecks/min).
    columns: pigeon ("P01".."P24"), condition ("control"/"trained"), session, peck_rate
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

SCHOOLS = {"seed": 20260143, "n_schools": 40, "min_size": 10, "max_size": 40, "mu": 5.0,
           "var_school": 0.35, "var_pupil": 2.10}
PIGEONS = {"seed": 20260311, "n_pigeons": 24, "n_sessions": 10, "b0": 40.0, "b_trained": 6.0,
           "b_session": 1.5, "sd_pigeon": 6.0, "sigma": 3.0}


def simulate_schools(seed: int = SCHOOLS["seed"]) -> pd.DataFrame:
    """Pupils in schools with a true ICC of 0.35 / (0.35 + 2.10) ~= 0.143."""
    p = SCHOOLS
    rng = np.random.default_rng(seed)
    sizes = rng.integers(p["min_size"], p["max_size"] + 1, size=p["n_schools"])
    u = rng.normal(0.0, np.sqrt(p["var_school"]), size=p["n_schools"])
    rows = []
    for j, (n, uj) in enumerate(zip(sizes, u)):
        e = rng.normal(0.0, np.sqrt(p["var_pupil"]), size=n)
        for i in range(n):
            rows.append((f"S{j + 1:02d}", i + 1, round(p["mu"] + uj + e[i], 3)))
    return pd.DataFrame(rows, columns=["school", "pupil", "score"])


def simulate_pigeons(seed: int = PIGEONS["seed"]) -> pd.DataFrame:
    """Pigeons in two conditions, each measured in 10 sessions."""
    p = PIGEONS
    rng = np.random.default_rng(seed)
    n = p["n_pigeons"]
    trained = np.repeat([0, 1], n // 2)
    u = rng.normal(0.0, p["sd_pigeon"], size=n)
    rows = []
    for i in range(n):
        for s in range(1, p["n_sessions"] + 1):
            y = p["b0"] + p["b_trained"] * trained[i] + p["b_session"] * s + u[i] + rng.normal(0.0, p["sigma"])
            rows.append((f"P{i + 1:02d}", "trained" if trained[i] else "control", s, round(y, 2)))
    return pd.DataFrame(rows, columns=["pigeon", "condition", "session", "peck_rate"])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent),
                    help="directory to write schools.csv and pigeons.csv (default: next to this script)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    simulate_schools().to_csv(out / "schools.csv", index=False)
    simulate_pigeons().to_csv(out / "pigeons.csv", index=False)
    print(f"wrote {out / 'schools.csv'} and {out / 'pigeons.csv'}")


if __name__ == "__main__":
    main()
