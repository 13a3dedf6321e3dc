"""Simulation-based calibration, small version (the full study: ``make validate``).

Talts et al. (2018): draw parameters from the prior, simulate data, fit, and rank the truth among
``L`` thinned posterior draws; a calibrated model + sampler gives uniform ranks for every
parameter. Here: 2 chains x 500 draws thinned to L = 49 per replicate, for a random-intercept
model and a correlated intercept + slope model, on the non-centred graph and the exact collapsed
path. The graph and priors are the package's own; NUTS is nutpie's where installed
(compile once, swap the data per replicate: ~0.2 s a replicate) else PyMC's.

False-alarm budget: per case, a chi-square test and the simultaneous ECDF test for each tracked
parameter, Holm-corrected to a family-wise level ALPHA = 1e-3, so a correctly calibrated case fails
with probability <= 1e-3 and the whole file (4 cases) with <= 4e-3. Few replicates (60-100) give
power only against gross errors (a prior on the wrong scale, a wrong centring or LKJ convention);
the negative control below proves the test has that power on this very setup.
"""

from __future__ import annotations

import numpy as np
import pytest

# nutpie compiles once and swaps the data; PyMC's NUTS would recompile for every replicate
# (seconds each), too slow for make test. `make install` brings nutpie (the bench extra).
pytest.importorskip("nutpie", reason="the small SBC needs nutpie (pip install bayeslmm[bench])")

from bayeslmm.validation import make_refitter, run_sbc, sbc_cases  # noqa: E402

ALPHA = 1e-3
SETTINGS = dict(chains=2, draws=500, tune=400, n_ranks=49)


CASES = {c.name: c for c in sbc_cases(("noncentred", "collapsed"))}
REPLICATES = {"intercept": 100, "slope": 60}


@pytest.fixture(scope="module")
def refitters():
    """One compiled model per case, shared by the calibration run and the negative control."""
    cache = {}

    def get(case):
        if case.name not in cache:
            cache[case.name] = make_refitter(case.model(), case.method)
        return cache[case.name]
    return get


@pytest.mark.slow
# the slope cases (correlated intercept + slope) run in make validate; make test keeps the intercept
# cases of both paths and the negative control (CI's 20-minute budget)
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.validate) if n.startswith("slope") else n
                                  for n in CASES])
def test_sbc_ranks_uniform(name, refitters):
    case = CASES[name]
    n = REPLICATES[name.split("_")[0]]
    res = run_sbc(case, n, seed=2026, refitter=refitters(case), **SETTINGS)
    st = res.statistics(alpha=ALPHA)
    d = res.diagnostics
    # every parameter of the model is checked, plus the first group's effects
    expected = {"intercept": 5, "slope": 8}[name.split("_")[0]]
    assert len(st) == expected
    assert not st["holm_reject"].any(), st.round(4).to_string()
    # sampling was healthy: under 1% divergent transitions on average, and thinning kept near-
    # independent draws for (almost) every replicate (stride ~20 needs bulk ESS >= L)
    assert d["divergent_share"].mean() < 0.01, d.describe().to_string()
    assert (d["min_ess_bulk"] >= SETTINGS["n_ranks"]).mean() >= 0.95


@pytest.mark.slow
def test_sbc_detects_a_miscalibrated_simulator(refitters):
    """Negative control: the truth for sd(g) comes from halfnormal(3) but the model assumes
    halfnormal(1). With 8 groups the SD posterior leans on its prior, so the truth sits above most
    draws: SBC must flag sd(g, Intercept) at the same family-wise level."""
    from dataclasses import replace
    case = CASES["intercept_noncentred"]
    bad = replace(case, name="intercept_miscalibrated", simulate_priors=(("sd", "halfnormal(3)"),))
    res = run_sbc(bad, 60, seed=7, refitter=refitters(case), **SETTINGS)
    st = res.statistics(alpha=ALPHA)
    assert st.loc["sd(g, Intercept)", "holm_reject"], st.round(4).to_string()
    assert np.mean(res.ranks["sd(g, Intercept)"]) > 0.6 * SETTINGS["n_ranks"]
