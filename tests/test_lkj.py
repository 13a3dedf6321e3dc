"""The LKJ prior on correlation matrices (paths.blocks.lkj_cholesky): canonical partial correlations.

Exact checks: the density is normalised (n = 2, by quadrature) and is LKJ's det(C)^(eta-1) once
the Jacobian of y -> C is accounted for (n = 3, 4, numerically differentiated Jacobian); the built
Cholesky factor has unit-norm rows. A Monte Carlo check: prior draws have LKJ's marginals.
"""

from __future__ import annotations

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
import pytest
from scipy import integrate, stats

from bayeslmm.paths.blocks import lkj_cholesky

LEVEL = 1e-3          # per KS test: a correct sampler fails one with probability 1e-3


def _fns(n, eta):
    with pm.Model() as m:
        L = lkj_cholesky("cpc", n, eta)
    y = m.rvs_to_values[m["cpc"]]
    logp = m.logp(vars=[m["cpc"]])
    Lv = m.replace_rvs_by_values([L])[0]
    return pytensor.function([y], logp, mode="FAST_COMPILE"), pytensor.function([y], Lv, mode="FAST_COMPILE"), m


@pytest.mark.parametrize("eta", [0.5, 1.0, 2.0, 4.0])
def test_density_is_normalised_for_n2(eta):
    logp, _, _ = _fns(2, eta)
    total, err = integrate.quad(lambda y: np.exp(logp(np.array([y]))), -np.inf, np.inf)
    assert abs(total - 1.0) < 1e-7 and err < 1e-7


@pytest.mark.parametrize("n,eta", [(3, 1.0), (3, 2.5), (4, 0.7)])
def test_density_is_lkj_in_the_correlation_matrix(n, eta):
    """log p(y) - log|dC/dy| - (eta - 1) log det C is the same at every y (LKJ: p(C) ~ det(C)^(eta-1)).

    Central differences with h = 1e-6 give the Jacobian to ~1e-9 relative, so 1e-6 on the
    difference of log-densities is loose for a correct density and tight for any wrong exponent.
    """
    logp, Lf, _ = _fns(n, eta)
    k = n * (n - 1) // 2
    iu = np.tril_indices(n, -1)

    def offdiag(y):
        L = Lf(y)
        return (L @ L.T)[iu]

    rng = np.random.default_rng(n)
    out = []
    for _ in range(6):
        y = rng.normal(0, 0.7, k)
        h = 1e-6
        J = np.column_stack([(offdiag(y + h * e) - offdiag(y - h * e)) / (2 * h) for e in np.eye(k)])
        L = Lf(y)
        C = L @ L.T
        out.append(float(logp(y)) - np.linalg.slogdet(J)[1] - (eta - 1) * np.linalg.slogdet(C)[1])
    assert np.ptp(out) < 1e-6, out


def test_cholesky_factor_is_lower_triangular_with_unit_rows():
    _, Lf, _ = _fns(4, 2.0)
    L = Lf(np.random.default_rng(1).normal(0, 2.0, 6))
    assert np.allclose(np.triu(L, 1), 0.0)
    np.testing.assert_allclose((L**2).sum(axis=1), 1.0, rtol=1e-12)
    assert np.all(np.diag(L) > 0)


@pytest.mark.parametrize("n,eta", [(2, 2.0), (3, 1.0), (4, 3.0)])
def test_prior_draws_have_lkj_marginals(n, eta):
    """Each correlation's marginal under LKJ(eta): (r + 1) / 2 ~ Beta(eta - 1 + n/2, same)."""
    _, _, m = _fns(n, eta)
    with m:
        L = lkj_cholesky("cpc2", n, eta)
    C = pm.draw(pt.matmul(L, L.T), draws=3000, random_seed=5)
    a = eta - 1 + n / 2
    for i, j in [(1, 0), (n - 1, 0), (n - 1, n - 2)]:
        assert stats.kstest((C[:, i, j] + 1) / 2, stats.beta(a, a).cdf).pvalue > LEVEL
