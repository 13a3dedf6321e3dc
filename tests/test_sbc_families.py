"""SBC plumbing of the non-Gaussian families (bayeslmm.validation.family_cases), without sampling.

The SBC study of the families samples with NUTS and is too slow for ``make test`` (compiling the
nutpie model alone takes ~50 s on 2 busy cores); it runs in ``make validate`` (>= 100 replicates per
family: ``python -m bayeslmm.validation --out validation/results --quick``). Here every piece of
the loop except NUTS is checked: parameters drawn with the family's auxiliary parameters, data
simulated through the family (valid responses), the labels tracked, the ranks and the uniformity
tests. The "posterior" is an independent draw from the *prior* (``prior_refitter``): the truth
is then exchangeable with the draws, so ranks are exactly uniform and SBC must pass; with the truth
drawn from a wider prior (the negative control) it must fail.

False alarms: per family, a chi-square and an ECDF test per tracked parameter (4-6), Holm-corrected
to family-wise ALPHA = 1e-3, so the three families pass together with probability >= 0.997.
"""

from dataclasses import replace

import numpy as np
import pytest
import xarray as xr

from bayeslmm.errors import SpecError
from bayeslmm.families import get_family
from bayeslmm.simulate import draw_parameters, simulate_response
from bayeslmm.validation import family_cases, run_sbc
from bayeslmm.validation.sbc import tracked_labels

ALPHA = 1e-3
FAMILIES = ("bernoulli", "binomial", "poisson", "negbinomial", "student_t")


def prior_refitter(model):
    """A stand-in for NUTS: ``draws`` independent draws from the prior of ``model``."""
    design, table = model.design, model.prior_table
    aux = get_family(model.spec.family).aux_names

    def refit(y, *, seed, chains, draws, tune):
        rng = np.random.default_rng(seed)
        ps = [draw_parameters(table, design, rng) for _ in range(draws)]
        f = design.factors[0]
        sd = np.array([p.sds(f) for p in ps])                                   # (draws, 1)
        r = rng.standard_normal((draws, f.n_levels, 1)) * sd[:, None, :]
        v = {"b": (("chain", "draw", "term"), np.array([[p.b[t] for t in design.fixed_terms] for p in ps])[None]),
             "sd_g": (("chain", "draw", "g__term"), sd[None]),
             "r_g": (("chain", "draw", "g__level", "g__term"), r[None])}
        v.update({a: (("chain", "draw"), np.array([p.aux[a] for p in ps])[None]) for a in aux})
        return xr.Dataset(v, coords={"term": list(design.fixed_terms), "g__term": list(f.terms),
                                     "g__level": list(f.levels)}), 0
    return refit, "prior"


@pytest.mark.parametrize("family", FAMILIES)
def test_family_case_simulates_valid_data_with_its_parameters(family):
    case = family_cases((family,))[0]
    m = case.model()
    fam = get_family(family)
    labels = tracked_labels(m.design, case.aux_names)
    assert labels == ["Intercept", "x", "sd(g, Intercept)", *fam.aux_names, "r(g, g0, Intercept)"]
    rng = np.random.default_rng(0)
    p = draw_parameters(m.prior_table, m.design, rng)
    assert set(p.aux) == set(fam.aux_names)
    y, _ = simulate_response(m.design, p, rng, family=family)
    fam.check_response(y, "y", trials=m.design.trials)          # raises if impossible
    if family == "binomial":
        assert y.max() <= case.trials and np.all(m.design.trials == case.trials)


@pytest.mark.parametrize("family", ["bernoulli", "negbinomial", "student_t"])   # none, phi, sigma + nu
def test_sbc_loop_is_calibrated_with_exact_draws_and_flags_a_wrong_simulator(family):
    case = family_cases((family,))[0]
    refit = prior_refitter(case.model())
    kw = dict(chains=1, draws=59, tune=0, n_ranks=29, refitter=refit)
    good = run_sbc(case, 40, seed=3, **kw).statistics(alpha=ALPHA)
    assert not good["holm_reject"].any(), good.round(4).to_string()
    # negative control: the truth of sd(g) from a prior 5x wider than the draws' prior
    scale = dict(case.priors)["sd"].split("(")[1].rstrip(")")
    bad_case = replace(case, simulate_priors=(("sd", f"halfnormal({5 * float(scale):g})"),))
    bad = run_sbc(bad_case, 40, seed=4, **kw).statistics(alpha=ALPHA)
    assert bad.loc["sd(g, Intercept)", "holm_reject"], bad.round(4).to_string()


def test_unknown_family_case():
    with pytest.raises(SpecError, match="gamma"):
        family_cases(("gamma",))
