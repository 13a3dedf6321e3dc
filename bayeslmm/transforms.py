"""Response transforms that are not part of a model.

:func:`rank_inverse_normal` replaces a response by normal scores of its ranks (the rank-based
inverse normal transform, "rank-INT"). It is offered because it is common in genetics and
psychology, with its caveats; the model-based alternative for heavy tails and outliers is
``family="student_t"``.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from .errors import DataError

__all__ = ["rank_inverse_normal"]


def rank_inverse_normal(y, *, offset: float = 3.0 / 8.0):
    """Rank-based inverse normal transform with the Blom offset.

    ``z_i = Phi^-1((r_i - c) / (n - 2c + 1))`` with ``r_i`` the rank of ``y_i`` (ties get their
    average rank) and ``c = 3/8`` (Blom 1958): ``(r - 3/8) / (n + 1/4)``. Missing values stay
    missing and are not ranked.

    Caveats: the transform **changes the estimand**. Coefficients and variance components of a
    model fitted to ``z`` are on the normal-scores scale, not in the units of ``y``, and do not
    transform back; a linear effect on ``y`` need not be linear on ``z``, and interactions or
    random slopes can appear or vanish. The transform is marginal (it ranks all rows together,
    ignoring groups and covariates), so the conditional residuals of a mixed model fitted to ``z``
    are not normal either; it can also inflate type I error for tests of interactions and
    variance components (Beasley, Erickson & Allison 2009, Behav. Genet. 39: 580-595). Prefer a
    model for the data you have (``family="student_t"`` for heavy tails and outliers) where the
    units matter.

    Parameters
    ----------
    y : array-like
        One numeric column (a pandas Series keeps its index).
    offset : float
        ``c`` in the formula; 3/8 (Blom, default), 1/2 (rankit), 0 (van der Waerden, ``r/(n+1)``).

    Returns
    -------
    ndarray or Series
        Same shape as ``y`` (a Series if ``y`` is one).

    Examples
    --------
    >>> rank_inverse_normal([3.0, 1.0, 2.0]).round(4)
    array([ 0.8694, -0.8694,  0.    ])
    >>> rank_inverse_normal([1.0, 5.0, 5.0, 9.0]).round(4)     # tied values share a score
    array([-1.0491,  0.    ,  0.    ,  1.0491])
    """
    import pandas as pd
    is_series = isinstance(y, pd.Series)
    try:
        v = np.asarray(y, dtype=float)
    except (TypeError, ValueError):
        raise DataError("rank_inverse_normal needs numeric values; convert the column first") from None
    if v.ndim != 1:
        raise DataError(f"rank_inverse_normal takes one column (1-D); got shape {v.shape}")
    if not 0 <= offset < 0.5 + 1e-12:
        raise DataError(f"the 'offset' of rank_inverse_normal must be in [0, 1/2]. Got {offset!r} instead.")
    ok = ~np.isnan(v)
    if np.isinf(v[ok]).any():
        raise DataError("rank_inverse_normal: the values contain inf; remove or replace them first")
    n = int(ok.sum())
    out = np.full(v.shape, np.nan)
    if n:
        r = stats.rankdata(v[ok], method="average")
        out[ok] = stats.norm.ppf((r - offset) / (n - 2.0 * offset + 1.0))
    return pd.Series(out, index=y.index, name=y.name) if is_series else out
