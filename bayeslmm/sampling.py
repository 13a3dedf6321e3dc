"""Run NUTS on a built model.

Stage 6. Thin wrapper over ``pm.sample``: parallel chains (``cores = min(chains, CPUs)``; PyMC's
own default is 1 core here), a recorded seed (drawn when not given, so every fit can be rerun),
the sampler choice, and a progress bar.

Default sampler: PyMC's NUTS, chosen by measurement (sleepstudy ``(Days | Subject)``, 4 chains x
(1000 tune + 1000 draws), warm compile cache, min bulk ESS over the variance parameters per second
of total wall time, this 2-core machine while other jobs ran): non-centred graph PyMC 31 ESS/s vs
nutpie 26 ESS/s; exact marginal path PyMC 170 ESS/s vs nutpie 60 ESS/s (nutpie's own compile step
dominates small models). ``sampler="nutpie"`` or ``"numpyro"`` when installed.
"""

from __future__ import annotations

import importlib.util
import time
import warnings

import numpy as np
import pymc as pm
import xarray as xr

from .errors import SpecError
from .spec import SamplerSpec

__all__ = ["sample", "resolve_seed"]


def resolve_seed(seed: int | None) -> int:
    """The seed to use: the given one, or a fresh random one (recorded in the fit)."""
    if seed is not None:
        return int(seed)
    return int(np.random.SeedSequence().entropy % (2**31 - 1))


def sample(model: pm.Model, settings: SamplerSpec, *, var_names: list[str] | None = None,
           seed: int | None = None) -> tuple[xr.DataTree, dict]:
    """Sample ``model`` with NUTS.

    Returns
    -------
    (DataTree, info) : the posterior and a dict with ``seed``, ``cores``, ``sampler``, ``sampling_s``.
    """
    seed = resolve_seed(settings.seed if seed is None else seed)
    sampler = settings.sampler
    if sampler != "pymc" and importlib.util.find_spec(sampler) is None:
        raise SpecError(f"sampler {sampler!r} is not installed; pip install {sampler} "
                        f"(or 'bayeslmm[{sampler}]'), or use sampler='pymc'.")
    kwargs = dict(draws=settings.draws, tune=settings.tune, chains=settings.chains,
                  cores=settings.n_cores, random_seed=seed, progressbar=settings.progressbar,
                  target_accept=settings.target_accept, nuts_sampler=sampler, model=model,
                  compute_convergence_checks=False)
    if var_names is not None and sampler == "pymc":
        kwargs["var_names"] = var_names
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        # our own diagnostics report convergence with advice; PyMC's duplicate messages are noise
        warnings.filterwarnings("ignore", message=".*BLAS.*")
        idata = pm.sample(**kwargs)
    elapsed = time.perf_counter() - t0
    if var_names is not None and sampler != "pymc":
        keep = [v for v in var_names if v in idata["posterior"].data_vars]
        idata["posterior"] = idata["posterior"].to_dataset()[keep]
    info = {"seed": seed, "cores": settings.n_cores, "sampler": sampler, "sampling_s": elapsed}
    return idata, info
