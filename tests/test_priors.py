"""Priors: pinned defaults, overrides by label and class, unknown keys refused, and every declared
prior reaching the PyMC graph (checked by comparing log-densities with scipy)."""

import numpy as np
import pymc as pm
import pytest
from scipy import special, stats

import bayeslmm as blmm
from bayeslmm import PriorError
from bayeslmm.paths.noncentred import build_model

FORMULA = "Reaction ~ Days + (Days | Subject)"


def test_default_prior_table_is_pinned(sleepstudy):
    """Snapshot of the defaults for the canonical model (change = CHANGELOG entry)."""
    m = blmm.Model(FORMULA, sleepstudy)
    s_y = sleepstudy.Reaction.std(ddof=1)
    s_x = sleepstudy.Days.std(ddof=1)
    t = m.prior_table
    assert [e.label for e in t.entries] == ["Intercept", "Days", "sd(Subject, Intercept)",
                                            "sd(Subject, Days)", "cor(Subject)", "sigma"]
    assert t["Intercept"].prior.dist == "normal"
    np.testing.assert_allclose([t["Intercept"].prior.kwargs["mu"], t["Intercept"].prior.kwargs["sigma"]],
                               [sleepstudy.Reaction.mean(), 2.5 * s_y], rtol=1e-12)
    np.testing.assert_allclose(t["Days"].prior.kwargs["sigma"], 2.5 * s_y / s_x, rtol=1e-12)
    assert t["sd(Subject, Intercept)"].prior.kwargs == {"nu": 3.0, "sigma": pytest.approx(s_y, rel=1e-12)}
    assert t["sd(Subject, Days)"].prior.kwargs == {"nu": 3.0, "sigma": pytest.approx(s_y / s_x, rel=1e-12)}
    assert t["cor(Subject)"].prior.kwargs == {"eta": 2.0}
    assert t["sigma"].prior.kwargs == {"nu": 3.0, "sigma": pytest.approx(s_y, rel=1e-12)}
    assert all(e.source.startswith("default") for e in t.entries)
    assert t["sigma"].source == f"default: sd(y)={s_y:.4g}"  # the printed scale is the data's
    assert list(m.priors.columns) == ["parameter", "class", "prior", "source"]


# PyMC's normal log-density uses a rounded log(2 pi) constant: it differs from scipy by ~5e-8
# absolute, so compare to rtol=1e-7 (a wrong prior parameter changes logp by far more).
RTOL = 1e-7


def _logp(model, name, value):
    return np.asarray(pm.logp(model[name], np.asarray(value, dtype=float)).eval())


def test_every_declared_prior_reaches_the_model(sleepstudy):
    priors = {"Intercept": "normal(250, 30)", "Days": "studentt(4, 5, 3)",
              "sd(Subject, Intercept)": "halfnormal(40)", "sd(Subject, Days)": "halfnormal(8)",
              "cor(Subject)": "lkj(4)", "sigma": "exponential(0.05)"}
    m = blmm.Model(FORMULA, sleepstudy, priors=priors)
    assert all(e.source.startswith("user") for e in m.prior_table.entries)
    pmm = build_model(m.design, m.prior_table)
    # the intercept prior is on the intercept at centred predictors (mean(y) scale, brms convention)
    np.testing.assert_allclose(_logp(pmm, "Intercept_c", 260.0), stats.norm(250, 30).logpdf(260.0), rtol=RTOL)
    np.testing.assert_allclose(_logp(pmm, "beta", [7.0]), stats.t(4, 5, 3).logpdf(7.0), rtol=RTOL)
    np.testing.assert_allclose(_logp(pmm, "sd_Subject", [25.0, 6.0]),
                               [stats.halfnorm(scale=40).logpdf(25.0), stats.halfnorm(scale=8).logpdf(6.0)],
                               rtol=RTOL)
    np.testing.assert_allclose(_logp(pmm, "sigma", 30.0), stats.expon(scale=20).logpdf(30.0), rtol=RTOL)
    # lkj(4) on a 2 x 2 correlation: rho = tanh(y) has density (1 - rho^2)^(eta-1) / (2^(2eta-1)
    # B(eta, eta)) on (-1, 1), so with the tanh Jacobian log p(y) = eta log(1 - rho^2) + const
    for rho in (0.5, -0.1, 0.97):
        ref = 4 * np.log(1 - rho**2) - 7 * np.log(2) - special.betaln(4, 4)
        np.testing.assert_allclose(_logp(pmm, "cpc_Subject", [np.arctanh(rho)]), [ref], rtol=1e-10)


def test_mixed_prior_families_on_one_factor(sleepstudy):
    m = blmm.Model(FORMULA, sleepstudy, priors={"sd(Subject, Days)": "exponential(0.2)"})
    pmm = build_model(m.design, m.prior_table)
    names = {v.name for v in pmm.free_RVs}
    assert {"sd_Subject[Intercept]", "sd_Subject[Days]"} <= names
    np.testing.assert_allclose(_logp(pmm, "sd_Subject[Days]", 3.0), stats.expon(scale=5).logpdf(3.0), rtol=RTOL)
    s_y = sleepstudy.Reaction.std(ddof=1)
    np.testing.assert_allclose(_logp(pmm, "sd_Subject[Intercept]", 10.0),
                               np.log(2) + stats.t(3, 0, s_y).logpdf(10.0),
                               rtol=RTOL)


def test_class_prior_and_precedence(sleepstudy):
    m = blmm.Model("Reaction ~ Days + (Days || Subject)", sleepstudy,
                   priors={"sd": "halfnormal(10)", "sd(Subject, Days)": "halfnormal(3)"})
    t = m.prior_table
    assert str(t["sd(Subject, Intercept)"].prior) == "halfnormal(sigma=10)"
    assert str(t["sd(Subject, Days)"].prior) == "halfnormal(sigma=3)"
    assert t["sd(Subject, Intercept)"].source == "user ('sd')"


@pytest.mark.parametrize("priors, match", [
    ({"sd(Subject, Dayz)": "halfnormal(1)"}, "do not correspond to any model parameter: \\['sd\\(Subject, Dayz\\)'\\]"),
    ({"sigma": "normal(0, 1)"}, "not allowed for a sigma parameter"),
    ({"Days": "halfnormal(1)"}, "not allowed for a b parameter"),
    ({"sigma": "halfnormal(-1)"}, "sigma=-1.0 must be > 0"),
    ({"sigma": "weibull(2, 1)"}, "cannot read prior 'weibull\\(2, 1\\)'"),
    ({"sigma": "normal(0)"}, "missing sigma"),
    ({"sigma": "halfnormal(abc)"}, "not a number"),
])
def test_bad_priors(sleepstudy, priors, match):
    with pytest.raises(PriorError, match=match):
        blmm.Model(FORMULA, sleepstudy, priors=priors)


def test_prior_text_round_trips_full_precision(sleepstudy):
    """Saved specs keep priors exactly (display text rounds to 4 digits; storage must not)."""
    p = blmm.parse_prior("normal(251.41234567, 10.000001)")
    assert str(p) == "normal(mu=251.4, sigma=10)"
    assert blmm.parse_prior(p.text) == p
    spec = blmm.build_spec("Reaction ~ Days + (1 | Subject)", priors={"Intercept": p})
    assert blmm.ModelSpec.from_dict(spec.to_dict()) == spec
