"""Prior sensitivity: exact prior rescaling, and on Dyestuff (6 batches) the batch SD follows its prior."""

from __future__ import annotations

import pytest

import bayeslmm as blmm
from bayeslmm.errors import SpecError
from bayeslmm.priors import scale_prior
from bayeslmm.sensitivity import sensitivity_priors
from bayeslmm.priors import parse_prior

DYE = "Yield ~ 1 + (1 | Batch)"


@pytest.mark.parametrize("text,factor,expected", [
    ("halfnormal(2)", 3.0, "halfnormal(sigma=6)"),
    ("halfstudentt(3, 20)", 0.5, "halfstudentt(nu=3, sigma=10)"),
    ("halfcauchy(5)", 2.0, "halfcauchy(beta=10)"),
    ("exponential(0.1)", 2.0, "exponential(lam=0.05)"),
])
def test_scale_prior(text, factor, expected):
    assert str(scale_prior(parse_prior(text), factor)) == expected


def test_scale_prior_rejects_bad_input():
    with pytest.raises(SpecError, match="> 0"):
        scale_prior(parse_prior("halfnormal(1)"), 0.0)
    with pytest.raises(SpecError, match="lkj"):
        scale_prior(parse_prior("lkj(2)"), 2.0)


def test_sensitivity_priors_touch_only_the_sds(sleepstudy):
    m = blmm.Model("Reaction ~ Days + (Days | Subject)", sleepstudy)
    new = sensitivity_priors(m.prior_table, 2.0)
    assert set(new) == {e.label for e in m.prior_table.entries}
    for e in m.prior_table.entries:
        if e.cls == "sd":
            assert new[e.label] == scale_prior(e.prior, 2.0)
            assert new[e.label].kwargs["sigma"] == 2.0 * e.prior.kwargs["sigma"]   # exact, no rounding
        else:
            assert new[e.label] == e.prior
    # the rescaled table is accepted as user priors and reproduces itself exactly
    m2 = blmm.Model("Reaction ~ Days + (Days | Subject)", sleepstudy, priors=new)
    assert {e.label: e.prior for e in m2.prior_table.entries} == new


@pytest.mark.slow
def test_dyestuff_batch_sd_moves_with_its_prior(get_fit, dyestuff):
    """With 6 batches the batch SD is partly prior-driven: its posterior mean rises with the prior
    scale. sigma, informed by 24 within-batch degrees of freedom, barely moves.

    The refits use 2 x 1000 draws (posterior-mean MCSE ~ sd/30); the ordering check needs shifts
    of a few MCSE, and the observed shifts (about 0.3-0.5 posterior SD per factor 4 in scale)
    are ~10 MCSE.
    """
    fit = get_fit(DYE, dyestuff, chains=2, draws=1000, tune=1000, seed=3, method="noncentred")
    tab = fit.prior_sensitivity(scales=(0.25, 4.0))
    sd = tab.loc["sd(Batch, Intercept)"].set_index("scale")
    assert list(sd.index) == [0.25, 1.0, 4.0]
    assert sd.loc[0.25, "mean"] < sd.loc[1.0, "mean"] < sd.loc[4.0, "mean"], sd.to_string()
    assert sd.loc[4.0, "prior"] == str(scale_prior(fit.prior_table["sd(Batch, Intercept)"].prior, 4.0))
    sig = tab.loc["sigma"].set_index("scale")
    assert (sig["shift_sd"].abs() < 0.5).all(), sig.to_string()
    assert set(tab.attrs["fits"]) == {0.25, 1.0, 4.0}
