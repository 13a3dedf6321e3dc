"""LOO by observation and by group (bayeslmm.elpd) and the report's LOO section.

The leave-one-group-out numbers are checked against the exact leave-one-group-out predictive density
log p(y_j | y_-j) of a random-intercept model, computed by brute-force integration over a grid of the
three parameters (mu, tau, sigma) with the model's own priors: no refits, no sampling error in the
reference.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.special import logsumexp

import bayeslmm as blmm
from bayeslmm import elpd
from bayeslmm.errors import SpecError
from bayeslmm.report.loo_section import loo_section

J, N = 10, 5
PRIORS = {"Intercept": "normal(0, 5)", "sd": "half_normal(2)", "sigma": "half_normal(2)"}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    g = np.repeat(np.arange(J), N)
    y = 1.0 + rng.normal(0, 0.6, J)[g] + rng.normal(0, 1.0, J * N)
    return pd.DataFrame({"y": y, "g": [f"g{k:02d}" for k in g]})


@pytest.fixture(scope="module")
def fit(data, get_fit):
    return get_fit("y ~ 1 + (1 | g)", data, model_kwargs={"priors": PRIORS}, draws=1000)


def _exact_logo(data) -> np.ndarray:
    """log p(y_j | y_-j) for each group j by integration on a (mu, tau, sigma) grid."""
    mu = np.linspace(-2.0, 4.0, 121)[:, None, None]
    tau = np.linspace(1e-3, 3.0, 120)[None, :, None]
    sig = np.linspace(0.4, 2.5, 120)[None, None, :]
    logprior = (stats.norm.logpdf(mu, 0, 5) + stats.halfnorm.logpdf(tau, scale=2)
                + stats.halfnorm.logpdf(sig, scale=2))
    ll = []
    for _, grp in data.groupby("g", sort=True):        # compound symmetry: sigma^2 I + tau^2 11'
        y = grp["y"].to_numpy()
        n, s1, s2 = len(y), y.sum(), (y**2).sum()
        e1, e2 = s1 - n * mu, s2 - 2 * mu * s1 + n * mu**2          # sum e, sum e^2 with e = y - mu
        lam = sig**2 + n * tau**2
        quad = (e2 - tau**2 * e1**2 / lam) / sig**2
        ll.append(-0.5 * (n * np.log(2 * np.pi) + (n - 1) * np.log(sig**2) + np.log(lam) + quad))
    ll = np.stack(ll)                                   # (J, grid)
    total = ll.sum(0) + logprior
    return np.array([logsumexp(total) - logsumexp(total - ll[j]) for j in range(len(ll))])


def test_group_loo_matches_the_exact_leave_one_group_out_density(fit, data):
    lo = fit.loo(kind="group")
    assert lo.loo_kind == "group" and lo.n_data_points == J
    assert str(lo).startswith("Leave-one-group-out PSIS-LOO: each level of 'g'")
    exact = _exact_logo(data)
    est = np.asarray(lo.elpd_i)
    k = np.asarray(lo.pareto_k)
    good = k < 0.5
    assert good.sum() >= J - 2, k
    # 2 x 1000 draws: the MC error of a PSIS log-mean with k < 0.5 is a few hundredths; grid error < 0.01
    assert np.max(np.abs(est[good] - exact[good])) < 0.1, np.c_[est, exact, k]
    # a different quantity: observation LOO summed by group is not the group's predictive density
    obs = fit.loo(kind="observation")
    by_group = pd.Series(np.asarray(obs.elpd_i)).groupby(data["g"].to_numpy()).sum().to_numpy()
    assert obs.loo_kind == "observation" and np.max(np.abs(by_group - exact)) > 0.3


def test_auto_kind_follows_the_number_of_rows(fit, monkeypatch):
    assert fit.loo().loo_kind == "observation"            # 50 rows
    monkeypatch.setattr(elpd, "GROUP_LOO_ROWS", 10)
    lo = fit.loo()
    assert lo.loo_kind == "group" and lo.n_data_points == J
    with pytest.raises(SpecError, match="not one of"):
        fit.loo(kind="groups")


def test_the_report_section_says_which_loo_and_why_it_is_missing(fit, monkeypatch):
    sec = loo_section(fit)
    assert sec.title == "PSIS-LOO, leave one observation out" and "elpd_loo" in sec.text
    assert sec.text.startswith("Leave-one-observation-out PSIS-LOO: one row left out")
    assert sec.table["kind"].iloc[0] == "observation"
    off = loo_section(fit, enabled=False)
    assert "loo=False" in off.text
    from bayeslmm.report import loo_section as mod
    monkeypatch.setattr(mod, "OBS_LOO_MAX", 10)
    skipped = loo_section(fit)
    assert skipped.table is None and "Not computed" in skipped.advice and "kind='group'" in skipped.advice
    monkeypatch.setattr(elpd, "GROUP_LOO_ROWS", 10)
    big = loo_section(fit)
    assert big.kind == "group" and big.title == "PSIS-LOO, leave one group out" and "of 10 groups" in big.text
