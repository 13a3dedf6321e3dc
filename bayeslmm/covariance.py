"""Random effects with a known covariance in a model: ``Model(..., cov={"animal": K})``.

The term ``(1 | animal)`` then has u ~ N(0, sd_animal^2 K) instead of N(0, sd_animal^2 I). This
module checks the declared matrices against the design (every factor named exists, has a random
intercept only, and every level with data has a row of K), attaches them to the design
(``Design.kinship``) and says which sampling path applies (:func:`kinship_plan`):

* one such term, a Gaussian response and no other grouping factor: the exact rotated path
  (:mod:`bayeslmm.paths.rotated`; K's eigenvectors make the marginal covariance diagonal);
* otherwise the non-centred graph with u = sd L z, L = V diag(sqrt(lam)) from K = V diag(lam) V'
  over the levels with data (exact for PSD K; nothing dropped).

The ICC of the term is reported as h^2 by :func:`bayeslmm.icc.icc`. No PyMC here (numpy, pandas).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from .design import level_label
from .errors import DataError, SpecError
from .kinship import KinshipMatrix, kinship_matrix

__all__ = ["attach_covariances", "kinship_of", "kinship_plan", "read_kinship", "factor_square_root",
           "H2_DEFINITION"]

#: how the h^2 row of the ICC table reads (stated in the table's attrs)
H2_DEFINITION = ("h2 = sd_g^2 / (sd_g^2 + other variance components + sigma^2): the ICC of a term "
                 "with a known covariance K (u ~ N(0, sd_g^2 K)); the narrow-sense heritability "
                 "when K is a relationship matrix (mean diagonal about 1).")


def read_kinship(path, *, label_column: str | None = None, factor: str = "group") -> pd.DataFrame:
    """Read a kinship matrix from a CSV or Parquet file: one label column, then one column per level.

    Parameters
    ----------
    path : str or Path
        ``.csv``, ``.parquet`` or ``.pq``.
    label_column : str, optional
        The column of level labels (default: the first column).
    factor : str
        For messages.

    Returns
    -------
    pandas.DataFrame
        Index: the labels; columns: the levels (checked later by :func:`attach_covariances`).
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"kinship matrix file for {factor!r} not found: {str(p)!r}.")
    suffix = p.suffix.lower()
    if suffix == ".csv":
        df = pd.read_csv(p, dtype={label_column: str} if label_column else None)
    elif suffix in (".parquet", ".pq"):
        df = pd.read_parquet(p)
    else:
        raise DataError(f"kinship matrix file for {factor!r} must be .csv, .parquet or .pq; got {str(p)!r}.")
    col = label_column if label_column is not None else df.columns[0]
    if col not in df.columns:
        raise DataError(f"kinship matrix file {str(p)!r} for {factor!r} has no label column {col!r}; "
                        f"its columns start {list(df.columns[:5])}.")
    return df.set_index(col)


def _as_kinship(K, factor: str) -> KinshipMatrix:
    """A KinshipMatrix with labels canonicalised like the design's levels ('1', not 1.0)."""
    if isinstance(K, KinshipMatrix):
        K = pd.DataFrame(np.asarray(K.values), index=K.labels, columns=K.labels)
    elif isinstance(K, (str, Path)):
        K = read_kinship(K, factor=factor)
    if isinstance(K, tuple) and len(K) == 2:
        values, labels = K
        labels = [level_label(v) for v in labels]
        return kinship_matrix(values, labels, factor=factor)
    if isinstance(K, pd.DataFrame):
        K = K.copy()        # never touch the user's frame
        K.index = [level_label(v) for v in K.index]
        K.columns = [level_label(v) for v in K.columns]
        return kinship_matrix(K, factor=factor)
    raise DataError(f"cov[{factor!r}] must be a DataFrame labelled by level (index and columns), "
                    f"a tuple (array, labels) or a CSV/Parquet path; got {type(K).__name__}.")


def attach_covariances(cov, design):
    """``design`` with the known covariances of ``cov`` checked and attached (``design.kinship``).

    Parameters
    ----------
    cov : dict
        ``{factor: K}``; K a DataFrame with the levels as index and columns, a tuple
        ``(array, labels)``, a :class:`~bayeslmm.kinship.KinshipMatrix` or a CSV/Parquet path
        (:func:`read_kinship`).
    design : Design

    Raises
    ------
    SpecError
        ``cov`` not a dict, a factor that is not a grouping factor of the formula, or a term with
        more than a random intercept.
    DataError
        K not square, symmetric, PSD or finite, or without a row for some level of the data (the
        message names the factor and the levels).
    """
    if cov is None or (isinstance(cov, dict) and not cov):
        return design
    if not isinstance(cov, dict):
        raise SpecError(f"cov must be a dict {{grouping factor: K}}, like {{'animal': K}}; got "
                        f"{type(cov).__name__}.")
    if not hasattr(design, "kinship"):
        raise SpecError("cov= needs the data in memory (a DataFrame); it is not available for data "
                        "read in chunks from statistics.")
    names = [f.name for f in design.factors]
    out = []
    for g, K in cov.items():
        if g not in names:
            raise SpecError(f"cov names {g!r}, which is not a grouping factor of the formula; the "
                            f"grouping factors are {names}. Write the term as '(1 | {g})'.")
        f = design.factor(g)
        if tuple(f.terms) != ("Intercept",):
            raise SpecError(f"a known covariance (cov={{{g!r}: K}}) applies to a random intercept "
                            f"'(1 | {g})' only; the term of {g!r} has {list(f.terms)}.")
        kin = _as_kinship(K, g)
        pos = kin.labels.get_indexer(pd.Index(f.levels))
        if (pos < 0).any():
            missing = [f.levels[i] for i in np.flatnonzero(pos < 0)]
            shown = ", ".join(map(repr, missing[:5])) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise DataError(f"kinship matrix for {g!r} has no row for {len(missing)} level(s) of {g!r} "
                            f"in the data: {shown}. Add them to K (a level with no known relatives: "
                            "0 off the diagonal, 1 on it), or drop those rows.")
        out.append(kin)
    note = "; ".join(f"{k.factor}: u ~ N(0, sd^2 K), K {k.m} x {k.m}" for k in out)
    return replace(design, kinship=tuple(out), notes=tuple(design.notes) + (f"known covariance ({note})",))


def kinship_of(design) -> dict[str, KinshipMatrix]:
    """``{factor: KinshipMatrix}`` of the design's terms with a known covariance (empty if none)."""
    return {k.factor: k for k in (getattr(design, "kinship", None) or ())}


def factor_square_root(kin: KinshipMatrix, levels) -> np.ndarray:
    """L (J, J) with L L' = K over ``levels`` (the design's, in its order): V diag(sqrt(lam)),
    eigenvalues below 0 (rounding) set to 0, so a singular PSD K is exact."""
    pos = kin.labels.get_indexer(pd.Index(levels))
    ev, vec = np.linalg.eigh(kin.values[np.ix_(pos, pos)])
    return np.ascontiguousarray(vec * np.sqrt(np.clip(ev, 0.0, None))[None, :])


def kinship_plan(spec, design, method: str, family) -> tuple[str, str] | None:
    """``(path, reason)`` for a design with known covariances, None without any.

    ``method``: "auto", "collapsed" or "kinship" take the rotated path where it applies (else
    "collapsed"/"kinship" are a SpecError: the collapsed path would ignore K); "noncentred" the graph.
    """
    kin = kinship_of(design)
    if not kin:
        return None
    g = next(iter(kin))
    if method == "noncentred":
        return "noncentred", "requested (u = sd L z, L L' = K)"
    why = None
    if not family.supports_collapsed or family.known_se:
        why = f"family {spec.family!r}{' with known standard errors' if family.known_se else ''} has no rotated likelihood"
    elif getattr(design, "offset", None) is not None:
        why = "the model has an offset"
    elif len(design.factors) > 1:
        others = [f.name for f in design.factors if f.name != g]
        why = (f"the kinship term of {g!r} has other grouping factors besides it ({others}) or "
               "several known covariances")
    if why is None:
        return "kinship", (f"a Gaussian model with one random intercept with a known covariance K "
                           f"({g!r}): the exact rotated path, K's eigenvectors make the marginal "
                           "covariance diagonal (EMMA/FaST-LMM), u drawn exactly afterwards")
    if method in ("collapsed", "kinship"):
        raise SpecError(f"method={method!r} does not apply: {why}. Use method='noncentred' (the graph "
                        "with u = sd L z, L L' = K).")
    return "noncentred", f"{why}: the non-centred graph samples u = sd L z with L L' = K"
