"""Cost of one collapsed log-density (+ gradient) for crossed designs: blocked vs dense vs sparse.

    OPENBLAS_NUM_THREADS=1 python bench/crossed_probe.py [--designs a b c] [--reps 20]

Designs (simulated):
  a  60 subjects x 80 items x 2 conditions (9,600 rows), correlated intercept + condition slope
     on both factors (Q = 280 effects)
  b  500 subjects x 400 items, random intercepts, every pair observed half the time at random
     (about 100,000 rows; Q = 900)
  b2 the same, balanced: subject s sees the 200 items i with (i + s) even (100,000 rows)
  c  2,000 subjects x 1,000 items, each subject sees 25 random items twice (100,000 rows), random
     intercepts: a sparsely crossed design, where a general sparse factorisation should win

Variants: ``blocked`` (largest factor eliminated, dense Schur complement), ``grouped`` (the same,
eliminated levels with identical Z'Z blocks sharing their factorisation: balanced designs; the
default picks it by cost), ``dense`` (all Q effects dense), and the sparse factorisation of A = I + Lambda'Z'Z Lambda /
sigma^2 with qdldl (AMD ordering once, numeric refactorisation per step) and scipy's SuperLU:
factorisation and log-determinant only, a lower bound for a sparse logp + gradient (the gradient
would add a selected inverse). qdldl is optional (``pip install qdldl``); missing, it is skipped.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bayeslmm.paths.crossed_kernel import crossed_logp  # noqa: E402
from bayeslmm.paths.crossed_stats import MAX_GRAM, Factor, crossed_stats  # noqa: E402


def design(name: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    if name == "a":
        s, i, c = np.meshgrid(np.arange(60), np.arange(80), np.arange(2), indexing="ij")
        s, i, c = s.ravel(), i.ravel(), c.ravel()
        x = c - 0.5
        Z = np.column_stack([np.ones_like(x), x])
        fac = [Factor("subject", s, Z, 60), Factor("item", i, Z, 80)]
        q = 2
    elif name == "b":
        s, i = np.meshgrid(np.arange(500), np.arange(400), indexing="ij")
        keep = rng.random(s.size) < 0.5
        s, i = s.ravel()[keep], i.ravel()[keep]
        x = rng.standard_normal(len(s))
        fac = [Factor("subject", s, np.ones((len(s), 1)), 500), Factor("item", i, np.ones((len(s), 1)), 400)]
        q = 1
    elif name == "b2":
        s, i = np.meshgrid(np.arange(500), np.arange(400), indexing="ij")
        keep = (s + i).ravel() % 2 == 0
        s, i = s.ravel()[keep], i.ravel()[keep]
        x = rng.standard_normal(len(s))
        fac = [Factor("subject", s, np.ones((len(s), 1)), 500), Factor("item", i, np.ones((len(s), 1)), 400)]
        q = 1
    elif name == "c":
        s = np.repeat(np.arange(2000), 50)
        i = np.concatenate([np.repeat(rng.choice(1000, 25, replace=False), 2) for _ in range(2000)])
        x = rng.standard_normal(len(s))
        fac = [Factor("subject", s, np.ones((len(s), 1)), 2000), Factor("item", i, np.ones((len(s), 1)), 1000)]
        q = 1
    else:
        raise SystemExit(f"unknown design {name!r}")
    n = len(s)
    X = np.column_stack([np.ones(n), x])
    y = 400 + 20 * x + rng.normal(0, 30, 60 if name == "a" else fac[0].n_levels)[s] \
        + rng.normal(0, 20, fac[1].n_levels)[i] + rng.normal(0, 50, n)
    sds = [np.full(q, 20.0), np.full(q, 15.0)]
    Cs = [np.linalg.cholesky(np.array([[1, .3], [.3, 1]])) if q == 2 else np.eye(1)] * 2
    return y, X, fac, (np.array([400.0, 20.0]), sds, Cs, 50.0)


def timeit(fn, reps: int) -> float:
    """Best of three, in ms of CPU time of this process (the machine may be shared: CPU time is
    what the call costs; with OPENBLAS_NUM_THREADS=1 it is also the wall time on an idle core)."""
    fn()
    best = np.inf
    for _ in range(3):
        t0 = time.process_time()
        for _ in range(reps):
            fn()
        best = min(best, (time.process_time() - t0) / reps)
    return best * 1e3


def sparse_A(y, X, fac, par):
    """A = I + Lambda'Z'Z Lambda / sigma^2 as CSC (random intercepts / shared T only), and a refresher."""
    n = len(y)
    cols, vals, off = [], [], 0
    for f in fac:
        q = f.Z.shape[1]
        for a in range(q):
            cols.append(off + f.codes * q + a)
            vals.append(f.Z[:, a])
        off += f.n_levels * q
    rows = np.repeat(np.arange(n), len(cols))
    Zs = sp.csr_matrix((np.column_stack(vals).ravel(), (rows, np.column_stack(cols).ravel())), shape=(n, off))
    C = (Zs.T @ Zs).tocsc()
    b, sds, Cs, sigma = par
    lam = sp.block_diag([sp.kron(sp.eye(f.n_levels), sd[:, None] * Cc) for f, sd, Cc in zip(fac, sds, Cs)]).tocsc()

    def build():
        return (sp.eye(off) + lam.T @ C @ lam / sigma ** 2).tocsc()
    return build


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--designs", nargs="*", default=["a", "b", "b2", "c"])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--sample", type=int, default=0, metavar="DRAWS",
                    help="also sample the collapsed model with PyMC's default NUTS (2 chains, DRAWS "
                         "tuning + DRAWS draws) and report ESS/s")
    args = ap.parse_args()
    try:
        import qdldl
    except ImportError:
        qdldl = None
    for name in args.designs:
        y, X, fac, par = design(name)
        t0 = time.perf_counter()
        st = crossed_stats(y, X, fac)
        t_stats = time.perf_counter() - t0
        print(f"design {name}: n={len(y)}, Q={st.Q} (eliminated {st.Q1}, dense {st.Q2}); "
              f"statistics {t_stats * 1e3:.0f} ms; default: {'grouped' if st.gram.shape[0] else 'blocked'}")
        reps = args.reps if st.Q2 < 1500 else max(2, args.reps // 10)
        b, sds, Cs, sigma = par
        for label, opts in [("blocked", dict(group_levels=False)), ("grouped", dict(group_levels=True)),
                            ("dense", dict(eliminate=False))]:
            if label == "dense" and st.Q > 3000:
                print("  dense: skipped (Q > 3000)")
                continue
            try:
                stx = crossed_stats(y, X, fac, **opts)
            except Exception as err:                    # noqa: BLE001 - a variant may not apply
                print(f"  {label}: {err}")
                continue
            if label == "grouped":
                label = f"grouped ({stx.gram.shape[0]} groups)"
                if not stx.gram.shape[0]:
                    print(f"  grouped: too many groups for {MAX_GRAM} Gram entries")
                    continue
            t_lp = timeit(lambda: crossed_logp(stx, b, sds, Cs, sigma), reps)
            t_g = timeit(lambda: crossed_logp(stx, b, sds, Cs, sigma, grad=True), reps)
            print(f"  {label:20s} logp {t_lp:8.2f} ms   logp+grad {t_g:8.2f} ms")
        build = sparse_A(y, X, fac, par)
        A = build()
        t_build = timeit(build, reps)
        if qdldl is not None:
            solver = qdldl.Solver(A)
            L = solver.factors()[0]
            t_q = timeit(lambda: solver.update(A), reps)
            print(f"  qdldl    refactor {t_q:8.2f} ms (+ forming A {t_build:.2f} ms), nnz(L) = {L.nnz}")
        t_lu = timeit(lambda: spla.splu(A, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                                        options={"SymmetricMode": True}), max(2, reps // 4))
        print(f"  SuperLU  factor   {t_lu:8.2f} ms")
        if args.sample:
            sample(y, X, fac, st, args.sample)


def sample(y, X, fac, st, draws: int):
    """Collapsed model, weakly informative priors scaled to y; wall time, min ESS of b and the SDs."""
    import arviz as az
    import pymc as pm

    from bayeslmm.paths.crossed import build_crossed_model
    sy = float(np.std(y))
    pri = {"b": pm.Normal.dist(np.r_[np.mean(y), np.zeros(X.shape[1] - 1)], 2.5 * sy, shape=X.shape[1]),
           "sigma": pm.HalfNormal.dist(sy)}
    for f in fac:
        pri[f"sd_{f.name}"] = pm.HalfNormal.dist(sy, shape=f.Z.shape[1])
    t0 = time.perf_counter()
    model = build_crossed_model(y, X, fac, pri, stats=st)
    idata = pm.sample(model=model, draws=draws, tune=draws, chains=2, random_seed=1, progressbar=False)
    wall = time.perf_counter() - t0
    ess = az.ess(idata.posterior)
    vals = {v: float(np.min(np.asarray(ess[v]))) for v in ["b", *[f"sd_{f.name}" for f in fac], "sigma"]}
    worst = min(vals, key=vals.get)
    div = int(idata.sample_stats["diverging"].sum())
    print(f"  sampled 2 x {draws} (+{draws} tuning): {wall:.1f} s wall incl. model build and compile, "
          f"min ESS {vals[worst]:.0f} ({worst}), min ESS(b) {vals['b']:.0f}, {vals[worst] / wall:.1f} ESS/s, "
          f"{div} divergences")


if __name__ == "__main__":
    main()
