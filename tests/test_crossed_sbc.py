"""Simulation-based calibration of the crossed collapsed path, small version (issue 14).

The case (:func:`bayeslmm.validation.crossed_cases`): ``y ~ x + (1 | g) + (1 | h)`` on 8 subjects x
6 items, every subject seeing every item once, on the exact crossed path (NUTS on the collapsed
likelihood, group effects drawn afterwards). 24 replicates (the negative control 40), 2 chains x 300 draws thinned to L = 19:
power only against gross errors (a wrong factor order, effects drawn for the wrong levels, a prior
on the wrong scale); the negative control proves that power on this very setup. The full study,
200+ replicates with L = 99, is run by ``make validate`` (``--methods crossed``) and reported in
docs/validation.md.

False-alarm budget as tests/test_sbc.py: chi-square and simultaneous-ECDF tests for each of the 7
tracked parameters, Holm-corrected to a family-wise ALPHA = 1e-3.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("nutpie", reason="the small SBC needs nutpie (pip install bayeslmm[bench])")

from bayeslmm.validation import crossed_cases, make_refitter, run_sbc  # noqa: E402

ALPHA = 1e-3
SETTINGS = dict(chains=2, draws=300, tune=300, n_ranks=19)
N = 24
N_BAD = 40      # the negative control needs 40 replicates to reject reliably (24 did not)


@pytest.fixture(scope="module")
def setup():
    case = crossed_cases()[0]
    return case, make_refitter(case.model(), case.method)


@pytest.mark.slow
def test_crossed_sbc_ranks_uniform(setup):
    case, refitter = setup
    assert refitter[0].plan.path == "crossed"
    res = run_sbc(case, N, seed=2026, refitter=refitter, **SETTINGS)
    st = res.statistics(alpha=ALPHA)
    # every parameter, plus the first level's effect of each factor (drawn after sampling)
    assert len(st) == 7 and {"r(g, g0, Intercept)", "r(h, h0, Intercept)"} <= set(st.index)
    assert not st["holm_reject"].any(), st.round(4).to_string()
    assert res.diagnostics["divergent_share"].mean() < 0.01


@pytest.mark.slow
def test_crossed_sbc_detects_a_miscalibrated_simulator(setup):
    """Negative control: the truth of sd(h) drawn from halfnormal(3), the model assumes halfnormal(1).
    With 6 items the posterior of sd(h) leans on its prior, so the truth ranks high: SBC must flag
    sd(h, Intercept) at the same family-wise level."""
    case, refitter = setup
    bad = replace(case, name="crossed_miscalibrated", simulate_priors=(("sd(h, Intercept)", "halfnormal(3)"),))
    res = run_sbc(bad, N_BAD, seed=7, refitter=refitter, **SETTINGS)
    st = res.statistics(alpha=ALPHA)
    assert st.loc["sd(h, Intercept)", "holm_reject"], st.round(4).to_string()
    assert np.mean(res.ranks["sd(h, Intercept)"]) > 0.6 * SETTINGS["n_ranks"]
