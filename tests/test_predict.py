"""Predictions: exact identities against the posterior draws, and the documented new-level semantics."""

import numpy as np
import pandas as pd
import pytest

import bayeslmm as blmm

SLEEP = "Reaction ~ Days + (Days | Subject)"


@pytest.fixture(scope="module")
def fit(get_fit, sleepstudy):
    return get_fit(SLEEP, sleepstudy, method="noncentred")


def test_known_levels_equal_linear_predictor(fit):
    new = pd.DataFrame({"Days": [0.0, 9.0, 4.5], "Subject": ["308", "308", "372"]})
    draws = fit.predict(new, summary=False)
    b, r = fit.draws("b"), fit.draws("r_Subject")
    j308, j372 = fit.design.factor("Subject").levels.index("308"), fit.design.factor("Subject").levels.index("372")
    expected = np.stack([b[:, 0] + r[:, j308, 0],
                         b[:, 0] + 9 * b[:, 1] + r[:, j308, 0] + 9 * r[:, j308, 1],
                         b[:, 0] + 4.5 * b[:, 1] + r[:, j372, 0] + 4.5 * r[:, j372, 1]], axis=1)
    np.testing.assert_allclose(draws.stack(s=("chain", "draw")).transpose("s", "obs").to_numpy(), expected,
                               rtol=1e-12)
    tab = fit.predict(new)
    np.testing.assert_allclose(tab["mean"], expected.mean(axis=0), rtol=1e-12)
    assert list(tab.index) == [0, 1, 2]


def test_population_prediction(fit):
    new = pd.DataFrame({"Days": [2.0], "Subject": ["anything"]})
    d = fit.predict(new, include_random=False, summary=False).to_numpy().reshape(-1)
    b = fit.draws("b")
    np.testing.assert_allclose(d, b[:, 0] + 2 * b[:, 1], rtol=1e-12)


def test_new_levels_error_by_default(fit):
    new = pd.DataFrame({"Days": [1.0], "Subject": ["999"]})
    with pytest.raises(blmm.DataError, match="'Subject' has level\\(s\\) not in the fitted data: \\['999'\\]"):
        fit.predict(new)


def test_new_levels_semantics(fit):
    """New level: one draw of N(0, Sigma) per posterior draw, shared by its rows, seeded."""
    new = pd.DataFrame({"Days": [0.0, 0.0, 5.0], "Subject": ["new1", "new1", "new2"]})
    a = fit.predict(new, allow_new_levels=True, seed=3, summary=False).to_numpy().reshape(-1, 3)
    b2 = fit.predict(new, allow_new_levels=True, seed=3, summary=False).to_numpy().reshape(-1, 3)
    c = fit.predict(new, allow_new_levels=True, seed=4, summary=False).to_numpy().reshape(-1, 3)
    np.testing.assert_array_equal(a, b2)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(a[:, 0], a[:, 1])          # same level, same effect
    # the new-level intercept deviations r = pred - b0 have variance E[sd0^2] (law of total variance);
    # with S draws the sample variance has relative SE ~ sqrt(2/S)*kurtosis factor (< 0.15 for S=1000).
    b = fit.draws("b")
    dev = a[:, 0] - b[:, 0]
    sd0 = fit.draws("sd_Subject")[:, 0]
    assert abs(dev.var() / np.mean(sd0**2) - 1) < 0.3
    assert abs(dev.mean()) < 4 * np.sqrt(np.mean(sd0**2) / len(dev))


def test_response_adds_residual_noise(fit):
    new = pd.DataFrame({"Days": [3.0], "Subject": ["308"]})
    m = fit.predict(new, summary=False).to_numpy().reshape(-1)
    y = fit.predict(new, kind="response", seed=1, summary=False).to_numpy().reshape(-1)
    sigma = fit.draws("sigma")
    # var(y) = var(mu) + E[sigma^2]; sample variance of 1000 draws: relative SE ~ 0.045
    assert abs(y.var() / (m.var() + np.mean(sigma**2)) - 1) < 0.2


def test_bad_new_data(fit):
    with pytest.raises(blmm.DataError, match="lacks column\\(s\\) \\['Days'\\]"):
        fit.predict(pd.DataFrame({"Subject": ["308"]}))
    with pytest.raises(blmm.DataError, match="missing values in \\['Days'\\]"):
        fit.predict(pd.DataFrame({"Days": [np.nan], "Subject": ["308"]}))
    with pytest.raises(blmm.DataError, match="'kind' parameter"):
        fit.predict(None, kind="latent")
