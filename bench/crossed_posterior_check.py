"""Posterior of the collapsed crossed model against a plain non-centred PyMC model (same priors).

    OPENBLAS_NUM_THREADS=1 python bench/crossed_posterior_check.py [--draws 500] [--design penicillin|slopes]

``penicillin``: 24 plates x 6 samples, fully crossed, one row per cell (144 rows; lme4's Penicillin
layout), y ~ 1 + (1 | plate) + (1 | sample), simulated with lme4's estimates (intercept 22.97, sd
0.85 and 1.93, sigma 0.55). ``slopes``: 30 subjects x 20 items x 2 conditions with correlated
intercept + condition slope on both factors (1,200 rows).

Both models are sampled with PyMC's NUTS (2 chains, seeded); the collapsed posterior's group effects
are drawn afterwards from their exact conditional (:func:`draw_effects`). For every scalar the
script prints both posterior means and sds and the z-score of the difference in means against the
Monte Carlo error (sd / sqrt(ESS) of each run); |z| > 4 anywhere fails (exit status 1).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def simulate(kind: str, seed: int = 2):
    from bayeslmm.paths.crossed_stats import Factor
    rng = np.random.default_rng(seed)
    if kind == "penicillin":
        plate, sample = np.meshgrid(np.arange(24), np.arange(6), indexing="ij")
        plate, sample = plate.ravel(), sample.ravel()
        n = len(plate)
        y = 22.97 + rng.normal(0, 0.85, 24)[plate] + rng.normal(0, 1.93, 6)[sample] + rng.normal(0, 0.55, n)
        one = np.ones((n, 1))
        return y, one, [Factor("plate", plate, one, 24), Factor("sample", sample, one, 6)]
    s, i, c = np.meshgrid(np.arange(30), np.arange(20), np.arange(2), indexing="ij")
    s, i, c = s.ravel(), i.ravel(), c.ravel()
    x = c - 0.5
    n = len(s)
    Z = np.column_stack([np.ones(n), x])
    cov = np.array([[1.0, 0.3], [0.3, 0.5]])
    y = 5.0 + 1.0 * x + np.sum(Z * rng.multivariate_normal([0, 0], cov, 30)[s], 1) \
        + np.sum(Z * rng.multivariate_normal([0, 0], 0.6 * cov, 20)[i], 1) + rng.normal(0, 1.0, n)
    return y, Z, [Factor("subject", s, Z, 30), Factor("item", i, Z, 20)]


def priors(pm, y, X, factors):
    sy = float(np.std(y))
    out = {"b": pm.Normal.dist(np.r_[np.mean(y), np.zeros(X.shape[1] - 1)], 2.5 * sy, shape=X.shape[1]),
           "sigma": pm.HalfNormal.dist(sy)}
    for f in factors:
        out[f"sd_{f.name}"] = pm.HalfNormal.dist(sy, shape=f.Z.shape[1])
    return out


def noncentred(pm, pt, y, X, factors, pri):
    """The reference: group effects as free variables, r = (z @ L') * sd."""
    from bayeslmm.paths.crossed import _lkj_cholesky
    lkj = _lkj_cholesky()
    with pm.Model() as m:
        b = m.register_rv(pri["b"], "b")
        mu = pt.dot(X, b)
        for f in factors:
            q = f.Z.shape[1]
            sd = m.register_rv(pri[f"sd_{f.name}"], f"sd_{f.name}")
            z = pm.Normal(f"z_{f.name}", 0, 1, shape=(f.n_levels, q))
            if q > 1:
                L = lkj(f"cpc_{f.name}", q, 2.0)
                pm.Deterministic(f"cor_{f.name}", pt.dot(L, L.T))
                r = pt.dot(z, L.T) * sd
            else:
                r = z * sd
            pm.Deterministic(f"r_{f.name}", r)
            mu = mu + pt.sum(f.Z * r[f.codes], axis=1)
        sigma = m.register_rv(pri["sigma"], "sigma")
        pm.Normal("y", mu, sigma, observed=y)
    return m


def summary(draws: np.ndarray, ess: np.ndarray | float):
    return draws.mean(0), draws.std(0), draws.std(0) / np.sqrt(ess)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--draws", type=int, default=500)
    ap.add_argument("--design", default="penicillin", choices=["penicillin", "slopes"])
    args = ap.parse_args()
    import arviz as az
    import pymc as pm
    import xarray as xr
    import pytensor.tensor as pt

    from bayeslmm.paths.crossed import build_crossed_model
    from bayeslmm.paths.crossed_draws import draw_effects
    from bayeslmm.paths.crossed_stats import crossed_stats

    y, X, factors = simulate(args.design)
    st = crossed_stats(y, X, factors)
    kw = dict(draws=args.draws, tune=args.draws, chains=2, cores=1, random_seed=3, progressbar=False,
              target_accept=0.9)
    res = {}
    for label in ("collapsed", "noncentred"):
        pri = priors(pm, y, X, factors)
        model = build_crossed_model(y, X, factors, pri, stats=st) if label == "collapsed" \
            else noncentred(pm, pt, y, X, factors, pri)
        t0 = time.perf_counter()
        idata = pm.sample(model=model, **kw)
        wall = time.perf_counter() - t0
        post = idata.posterior
        flat = {v: post[v].values.reshape(-1, *post[v].shape[2:]) for v in post.data_vars}
        if label == "collapsed":
            S = len(flat["sigma"])
            Cs = [np.linalg.cholesky(flat[f"cor_{f.name}"]) if f"cor_{f.name}" in flat
                  else np.broadcast_to(np.eye(f.Z.shape[1]), (S, f.Z.shape[1], f.Z.shape[1])) for f in factors]
            t1 = time.perf_counter()
            eff = draw_effects(st, flat["b"], [flat[f"sd_{f.name}"] for f in factors], Cs, flat["sigma"], seed=4)
            eff_s = time.perf_counter() - t1
            for f, e in zip(factors, eff):
                flat[f"r_{f.name}"] = e
        nc = post.sizes["chain"]
        ds = xr.Dataset({v: (("chain", "draw", *[f"{v}_d{k}" for k in range(x.ndim - 1)]),
                             x.reshape(nc, -1, *x.shape[1:])) for v, x in flat.items()})
        ess = az.ess(ds)
        div = int(idata.sample_stats["diverging"].sum())
        min_ess_b = float(np.min(ess["b"].values))
        extra = f", effects drawn in {eff_s:.1f} s" if label == "collapsed" else ""
        print(f"{label:10s}: {wall:6.1f} s (incl. compile), divergences {div}, min ESS(b) {min_ess_b:.0f}, "
              f"ESS/s(b) {min_ess_b / wall:.1f}{extra}")
        res[label] = (flat, {v: np.asarray(ess[v]) for v in flat})
    worst = 0.0
    (fa, ea), (fb, eb) = res["collapsed"], res["noncentred"]
    for v in ["b", *[f"sd_{f.name}" for f in factors], "sigma", *[f"r_{f.name}" for f in factors]]:
        ma, sa, ea_ = summary(fa[v], ea[v])
        mb, sb, eb_ = summary(fb[v], eb[v])
        z = np.abs(ma - mb) / np.sqrt(ea_ ** 2 + eb_ ** 2)
        worst = max(worst, float(np.max(z)))
        k = int(np.argmax(np.ravel(z)))
        print(f"  {v:12s} mean {np.ravel(ma)[k]:9.4f} vs {np.ravel(mb)[k]:9.4f}   sd {np.ravel(sa)[k]:8.4f} vs "
              f"{np.ravel(sb)[k]:8.4f}   max |z| {np.max(z):.2f} over {np.size(z)}")
    print(f"worst |z| = {worst:.2f} ({'ok' if worst < 4 else 'DISAGREE'})")
    return 0 if worst < 4 else 1


if __name__ == "__main__":
    raise SystemExit(main())
