"""Same seed, same draws: posterior values pinned from the code as it was before the package was
reshaped (issue 11). Any change to the sampled model, the priors, the centring convention, the
order of the free variables, the seeding or the exact random-effect draws changes these numbers.

The literals were produced by this file's ``pinned_values`` on commit af80783 (before the
refactor). Tolerance: rtol 1e-12 (same machine, same libraries: the draws are bit-for-bit
reproducible; the slack only absorbs the last digit of a float printed by ``repr``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import bayeslmm as blmm


def _nested_frame() -> pd.DataFrame:
    r = np.random.default_rng(3)
    a = np.repeat(np.arange(6), 12)
    b = np.repeat(np.arange(24), 3)
    ua, ub = r.normal(0, 1.0, 6), r.normal(0, 0.7, 24)
    x = r.normal(size=72)
    y = 2 + 0.5 * x + ua[a] + ub[b] + r.normal(0, 0.5, 72)
    return pd.DataFrame({"y": y, "x": x, "a": [f"a{k}" for k in a], "b": [f"b{k % 4}" for k in b]})


# name -> (formula, data factory, method)
CASES = {
    "collapsed": ("Reaction ~ Days + (Days | Subject)", lambda: blmm.load_dataset("sleepstudy"), "marginal"),
    "noncentred": ("Reaction ~ Days + (Days | Subject)", lambda: blmm.load_dataset("sleepstudy"), "noncentred"),
    "nested": ("y ~ x + (1 | a/b)", _nested_frame, "marginal"),
}
DRAWS = (0, 10, 49)


def pinned_values(name: str) -> dict[str, list[float]]:
    """Chain 0, draws 0/10/49, the first (up to) 4 elements of every posterior variable."""
    formula, data, method = CASES[name]
    fit = blmm.Model(formula, data(), method=method).fit(chains=2, draws=50, tune=100, seed=1,
                                                         progressbar=False, verbose=False)
    post = fit.posterior
    out = {}
    for v in post.data_vars:
        a = post[v].isel(chain=0).to_numpy()
        a = a.reshape(a.shape[0], -1)
        out[v] = [float(x) for i in DRAWS for x in a[i, :4]]
    return out


PINNED = {
    'collapsed': {
        'b': [
            251.77237478814638, 10.629924001067964, 261.97155204861053, 10.196011535862699,
            258.3935631319219, 10.491395370547046,
        ],
        'sd_Subject': [
            31.19451950939983, 6.060778171932235, 38.48707102269433, 9.683629153843885,
            30.062509289001248, 5.331788601229026,
        ],
        'cor_Subject': [
            1.0, 0.1330277424782405, 0.1330277424782405, 0.9999999999999999, 1.0,
            -0.31777046980951057, -0.31777046980951057, 1.0, 1.0, 0.1917887332082013,
            0.1917887332082013, 1.0,
        ],
        'r_Subject': [
            2.21495229803345, 9.933219454947855, -28.443181516362856, -10.97554729978058,
            -14.397144025234857, 10.180896896700999, -74.05132445962273, -2.3865859589734604,
            -1.9240892564560217, 10.64559092248961, -54.49712890438022, -9.66253829405223,
        ],
        'sigma': [
            25.82872116621867, 26.761285871798034, 25.73737661957099,
        ],
    },
    'noncentred': {
        'b': [
            262.0347761784276, 10.77301753750794, 255.43052408585183, 12.105407424301013,
            253.38546339369225, 10.847767643188957,
        ],
        'sd_Subject': [
            25.843541582633016, 7.905928068587335, 30.872880226898918, 5.90640858644266,
            25.230652977703485, 6.755205546074829,
        ],
        'cor_Subject': [
            1.0, 0.26145598939205905, 0.26145598939205905, 0.9999999999999999, 1.0,
            0.5451848256756867, 0.5451848256756867, 1.0, 1.0, 0.32710228034852445,
            0.32710228034852445, 1.0,
        ],
        'r_Subject': [
            0.8988393384855697, 4.3781727080259465, -15.579831745486596, -14.162663079058671,
            6.561299708139954, 6.472527058207762, -51.64091935059201, -10.142432365412793,
            7.330811536895578, 8.06001389858142, -46.9737166575692, -11.99186233733779,
        ],
        'sigma': [
            25.966877291738363, 23.8046981345318, 24.847179158726213,
        ],
    },
    'nested': {
        'b': [
            1.4800783299738272, 0.5381519563036254, 1.6702554852076823, 0.5669399074715392,
            0.34550424470994645, 0.6133819987276381,
        ],
        'sd_a': [
            1.3315608213577328, 1.1870305571628927, 1.995491342231945,
        ],
        'r_a': [
            2.7112869098394965, -1.909199688869534, 1.0762199506335337, -0.12258337184279017,
            2.5649369167759297, -2.1172984090564344, 1.3137583476880357,
            -0.14502916717932696, 4.208711164260134, -1.429273912226945, 2.6038305930067014,
            0.8515595481969731,
        ],
        'sd_a:b': [
            0.767269378031909, 0.606874183916393, 1.020392892588437,
        ],
        'r_a:b': [
            -1.313543967811009, -0.33880067374099854, 0.038748845878131856,
            1.3094246049724112, -1.3288964899828224, -0.1370999173882288, -0.515231378391514,
            1.8344817157848896, -2.073216104556559, -0.6333955627528716,
            -0.28357509104241246, 1.4593890939114695,
        ],
        'sigma': [
            0.47885737243712573, 0.5222544696967697, 0.4983752323933298,
        ],
    },
}


@pytest.mark.parametrize("name", list(CASES))
def test_same_seed_same_draws_as_before_the_refactor(name):
    got = pinned_values(name)
    want = PINNED[name]
    assert list(got) == list(want), "posterior variables (names or order) changed"
    for v in want:
        np.testing.assert_allclose(got[v], want[v], rtol=1e-12, atol=0, err_msg=f"{name}: {v}")
