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
import pytensor
import pytensor.tensor as pt
import xarray as xr
from pymc.backends.ndarray import NDArray
from pymc.logprob.transforms import LogTransform
from pytensor.compile.mode import Mode
from pytensor.graph.replace import vectorize_graph

from .errors import SamplingInterrupted, SpecError
from .spec import SamplerSpec

__all__ = ["sample", "resolve_seed", "value_trace", "constrained_posterior", "CompiledSampler",
           "check_complete"]


def resolve_seed(seed: int | None) -> int:
    """The seed to use: the given one, or a fresh random one (recorded in the fit)."""
    if seed is not None:
        return int(seed)
    return int(np.random.SeedSequence().entropy % (2**31 - 1))


def check_complete(posterior, chains: int, draws: int) -> None:
    """Raise :class:`SamplingInterrupted` unless ``posterior`` has ``chains`` x ``draws`` draws.

    PyMC catches a KeyboardInterrupt during sampling and returns the draws made so far (some chains
    dropped, the others cut to one length) as if nothing had happened; a fit built on them would be
    labelled with the requested numbers. Interrupted sampling must stop the caller instead.
    """
    got_c, got_d = posterior.sizes.get("chain", 0), posterior.sizes.get("draw", 0)
    if (got_c, got_d) != (chains, draws):
        raise SamplingInterrupted(f"sampling was interrupted: {got_c} chain(s) x {got_d} draws of the "
                                  f"requested {chains} x {draws}; no fit was made. Run it again.")


def _identity(*values):
    return values


class _ValueTrace(NDArray):
    """NDArray whose copies (one per chain, made by PyMC with ``copy``) do not share draws.

    ``copy`` of a plain NDArray is shallow, so every chain would write into one ``samples`` dict.
    """

    def __copy__(self):
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.samples, new._stats, new.draws, new.draw_idx = {}, None, None, 0
        return new


def value_trace(model: pm.Model) -> _ValueTrace | None:
    """A trace that records the free variables' unconstrained values, with no compiled function.

    PyMC's default trace compiles a function from the sampler's values to the variables to keep
    (``b``, ``sd_*``, ...): ~1.4 s of numba compilation with a cold cache, a tenth of a small
    model's time to first result. Recording the values as they are and mapping them afterwards
    with :func:`constrained_posterior` (one vectorised pass, no compilation) avoids it. Only for
    models whose transforms are all ``log`` or none, and whose free variables' shapes are known
    before sampling; returns None otherwise.
    """
    if any(t is not None and not isinstance(t, LogTransform) for t in model.rvs_to_transforms.values()):
        return None
    shapes, dtypes = {}, {}
    for rv in model.free_RVs:
        v = model.rvs_to_values[rv]
        dims = model.named_vars_to_dims.get(rv.name)
        if dims:
            shapes[v.name] = tuple(len(model.coords[d]) for d in dims)
        elif all(isinstance(k, int) for k in rv.type.shape):
            shapes[v.name] = tuple(rv.type.shape)
        else:
            return None                 # shape unknown before sampling: PyMC's own trace
        dtypes[v.name] = np.dtype(v.dtype)
    return _ValueTrace(model=model, vars=model.value_vars, fn=_identity, var_shapes=shapes, var_dtypes=dtypes)


def constrained_posterior(model: pm.Model, values: xr.Dataset, var_names: list[str]) -> xr.Dataset:
    """``var_names`` computed from draws of the unconstrained values (see :func:`value_trace`).

    One call of a PyTensor function vectorised over all draws, run by the Python linker (numpy,
    nothing to compile); dims and coords come from the model.
    """
    sizes = (values.sizes["chain"], values.sizes["draw"])
    inputs = model.value_vars
    batched = [pt.tensor(dtype=v.dtype, shape=(None, *v.type.shape)) for v in inputs]
    outs = model.replace_rvs_by_values([model[n] for n in var_names])
    outs = vectorize_graph(outs, dict(zip(inputs, batched)))
    fn = pytensor.function(batched, outs, mode=Mode(linker="py", optimizer="fast_compile"),
                           on_unused_input="ignore")
    flat = [values[v.name].to_numpy().reshape(sizes[0] * sizes[1], *values[v.name].shape[2:]) for v in inputs]
    out = {}
    for name, arr in zip(var_names, fn(*flat)):
        dims = model.named_vars_to_dims.get(name, ())
        out[name] = xr.DataArray(np.asarray(arr).reshape(*sizes, *np.shape(arr)[1:]),
                                 dims=("chain", "draw", *dims),
                                 coords={d: list(model.coords[d]) for d in dims})
    return xr.Dataset(out, coords={"chain": values["chain"], "draw": values["draw"]}, attrs=dict(values.attrs))


def sample(model: pm.Model, settings: SamplerSpec, *, var_names: list[str] | None = None,
           seed: int | None = None) -> tuple[xr.DataTree, dict]:
    """Sample ``model`` with NUTS.

    With PyMC's sampler and a model that :func:`value_trace` accepts, the draws are recorded
    unconstrained and ``var_names`` are computed afterwards by :func:`constrained_posterior`.

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
    trace = value_trace(model) if var_names is not None and sampler == "pymc" else None
    if trace is not None:
        kwargs.update(trace=trace, idata_kwargs={"include_transformed": True})
    elif var_names is not None and sampler == "pymc":
        kwargs["var_names"] = var_names
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        # our own diagnostics report convergence with advice; PyMC's duplicate messages are noise
        warnings.filterwarnings("ignore", message=".*BLAS.*")
        idata = pm.sample(**kwargs)
    elapsed = time.perf_counter() - t0
    nuts_s = float(idata["posterior"].attrs.get("sampling_time", elapsed))
    check_complete(idata["posterior"], settings.chains, settings.draws)
    t1 = time.perf_counter()
    if trace is not None:
        idata["posterior"] = xr.DataTree(constrained_posterior(model, idata["posterior"].to_dataset(), var_names))
    if var_names is not None and sampler != "pymc":
        keep = [v for v in var_names if v in idata["posterior"].data_vars]
        idata["posterior"] = idata["posterior"].to_dataset()[keep]
    info = {"seed": seed, "cores": settings.n_cores, "sampler": sampler, "sampling_s": elapsed,
            "nuts_s": min(nuts_s, elapsed), "values_s": time.perf_counter() - t1}
    return idata, info


class CompiledSampler:
    """One model compiled once and sampled again and again with new data (for SBC and refits).

    ``sampler="nutpie"`` compiles with nutpie and swaps the data with ``with_data`` (~0.1 s per new
    data set); ``"pymc"`` sets the model's data containers with ``pm.set_data`` and runs PyMC's
    NUTS (recompiles from a warm cache each call: seconds). ``data`` keys are the names of the
    model's data containers / shared variables (each path's ``data_values`` gives them).
    """

    def __init__(self, model: pm.Model, sampler: str, *, var_names: list[str] | None = None,
                 target_accept: float = 0.9):
        if sampler not in ("nutpie", "pymc"):
            raise SpecError(f"CompiledSampler samples with 'nutpie' or 'pymc', not {sampler!r}")
        self.model, self.sampler = model, sampler
        self.var_names, self.target_accept = var_names, target_accept
        if sampler == "nutpie":
            import nutpie
            self._nutpie = nutpie
            self.compiled = nutpie.compile_pymc_model(model)

    @property
    def data_names(self) -> set[str]:
        """Names of the data the compiled model reads (nutpie: its shared variables)."""
        if self.sampler == "nutpie":
            return {v.name for v in self.compiled.shared_var_keys}
        return {n for n, v in self.model.named_vars.items() if isinstance(v, pytensor.compile.SharedVariable)}

    def sample(self, data: dict, *, seed: int, chains: int, draws: int, tune: int) -> tuple[xr.Dataset, int]:
        """``(posterior Dataset, number of divergent transitions)`` for new ``data``; one core."""
        if self.sampler == "nutpie":
            c = self.compiled.with_data(**data)
            tr = self._nutpie.sample(c, draws=draws, tune=tune, chains=chains, cores=1, seed=seed,
                                     progress_bar=False, target_accept=self.target_accept)
            check_complete(tr["posterior"], chains, draws)
            return tr["posterior"].to_dataset(), int(np.asarray(tr["sample_stats"]["diverging"]).sum())
        with self.model:
            pm.set_data(data)
            idata = pm.sample(draws=draws, tune=tune, chains=chains, cores=1, random_seed=seed,
                              progressbar=False, nuts_sampler="pymc", var_names=self.var_names,
                              target_accept=self.target_accept, compute_convergence_checks=False)
        check_complete(idata["posterior"], chains, draws)
        return idata["posterior"].to_dataset(), int(np.asarray(idata["sample_stats"]["diverging"]).sum())
