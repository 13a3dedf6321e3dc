"""Bundled example data sets (offline; never downloaded).

=============  =====  ==========================================  ===============================
name           rows   source                                      classic model
=============  =====  ==========================================  ===============================
sleepstudy     180    Belenky et al. (2003) J. Sleep Res. 12:1-12;  ``Reaction ~ Days + (Days | Subject)``
                      distributed with R's lme4
Dyestuff       30     Davies (1947); lme4                          ``Yield ~ 1 + (1 | Batch)``
radon_mn       919    EPA radon survey, Minnesota; Gelman & Hill   ``log_radon ~ floor_measure + (1 | county_idx)``
                      (2007)
cbpp           56     Lesnoff et al. (2004); lme4                  binomial ``incidence/size ~ period + (1 | herd)``
eight_schools  8      Rubin (1981); Gelman et al., BDA3 sec. 5.5   ``y | se(s) ~ 1 + (1 | school)``
=============  =====  ==========================================  ===============================

Factor columns (Subject, Batch, herd, period, county_idx) are read as strings... except
``county_idx`` in radon_mn, an integer county code (1..85), kept as the integer the source gives.
"""

from __future__ import annotations

import csv
from importlib import resources
from typing import TYPE_CHECKING

from ..errors import DataError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["load_dataset", "list_datasets", "dataset_info", "DATASETS"]

DATASETS = {
    "sleepstudy": ("sleepstudy.csv", {"Subject": str},
                   "Reaction times (ms) over 10 days of sleep deprivation, 18 subjects. Belenky et al. "
                   "(2003), J. Sleep Res. 12:1-12; lme4."),
    "Dyestuff": ("Dyestuff.csv", {"Batch": str},
                 "Yield of dyestuff (g) in 6 batches x 5 preparations. Davies (1947); lme4."),
    "radon_mn": ("radon_mn.csv", {},
                 "log radon in 919 Minnesota homes, 85 counties (county_idx 1..85), floor of measurement "
                 "and county log uranium. EPA survey via Gelman & Hill (2007)."),
    "cbpp": ("cbpp.csv", {"herd": str, "period": str},
             "Contagious bovine pleuropneumonia: new cases (incidence) of herd size, 15 herds x 4 "
             "periods. Lesnoff et al. (2004); lme4."),
    "eight_schools": ("eight_schools.csv", {"school": str},
                      "SAT coaching effects (y) and their standard errors (s) in 8 schools. Rubin (1981), "
                      "J. Educ. Stat. 6:377-401; Gelman et al., Bayesian Data Analysis (3rd ed.), sec. 5.5."),
}


def dataset_info() -> list[dict]:
    """Name, rows, columns and provenance of every bundled data set, read without pandas (so that
    ``bayeslmm datasets`` answers at once)."""
    out = []
    for name, (fname, _, desc) in DATASETS.items():
        with resources.files(__package__).joinpath(fname).open("r", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader)
            n = sum(1 for _ in reader)
        out.append({"name": name, "rows": n, "columns": ", ".join(header), "description": desc})
    return out


def list_datasets() -> pd.DataFrame:
    """Name, rows, columns and provenance of every bundled data set.

    Examples
    --------
    >>> int(list_datasets().set_index("name").loc["sleepstudy", "rows"])
    180
    """
    import pandas as pd
    return pd.DataFrame(dataset_info())


def load_dataset(name: str) -> pd.DataFrame:
    """Load a bundled data set as a new DataFrame.

    Examples
    --------
    >>> load_dataset("sleepstudy").shape
    (180, 3)
    """
    if name not in DATASETS:
        raise DataError(f"no bundled data set {name!r}; available: {', '.join(DATASETS)}")
    import pandas as pd
    fname, dtypes, _ = DATASETS[name]
    with resources.files(__package__).joinpath(fname).open("r") as fh:
        return pd.read_csv(fh, dtype=dtypes)
