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

import atexit
import functools
import gc
import importlib.util
import time
import warnings

import numpy as np
# ArviZ before PyMC: arviz_base's import asks lazy_loader for jax and numpyro, and where they are
# not installed lazy_loader calls inspect.stack(), whose cost grows with the modules loaded and
# the frames on the stack; imported here (before PyMC, near the top of a fit) it took 0.18 s, imported
# by PyMC when it converts the first trace 0.32 s (fresh process, 100,000-row fit)
import arviz_base  # noqa: F401
import pymc as pm
import pytensor
import pytensor.tensor as pt
import xarray as xr
from pymc.backends.ndarray import NDArray
from pymc.logprob.transforms import LogTransform
from pymc.model.core import ValueGradFunction
from pytensor.compile.mode import Mode
from pytensor.graph.replace import vectorize_graph

from .errors import SamplingInterrupted, SpecError
from .parallel_chains import fork_chains
from .spec import SamplerSpec
from .threads import cpu_count

__all__ = ["sample", "resolve_seed", "links_kernels", "value_trace", "constrained_posterior", "CompiledSampler",
           "check_complete", "laplace_start", "LAPLACE_MAX_DIM"]

#: models with at most this many unconstrained parameters start NUTS from a Laplace approximation
LAPLACE_MAX_DIM = 100


def links_kernels(sampler: str) -> bool:
    """Whether the exact paths' compiled kernels are linked into the model's compiled function.

    nutpie evaluates the model from Rust threads, which would wait for the GIL at every call through
    numba's object mode: linked. PyMC calls the model from Python: object mode, which spares the
    cold compile of linking the kernel into every enclosing function (seconds to tens of seconds).
    """
    return sampler != "pymc"


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


def _blas_threads_per_chain(cores: int):
    """BLAS threads limited to CPUs / cores while chains run in parallel processes.

    PyMC forks its chain processes and, with fork, does not limit their BLAS threads, so every
    process kept OpenBLAS's default (all CPUs): on the crossed path (dense LAPACK calls) two chains
    on 2 CPUs ran 4 busy threads and each kernel call took ~5x longer than alone. The limit is set
    in this process before the fork and inherited by the children.
    """
    import contextlib
    if cores <= 1:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits
    return threadpool_limits(limits=max(1, cpu_count() // cores), user_api="blas")


def _mode_and_variance(fn, x0: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Posterior mode (L-BFGS) and the diagonal of the inverse Hessian there (central differences
    of the gradient: 2 P evaluations); None when either is not finite or the Hessian is not
    negative definite."""
    from scipy.optimize import minimize

    def neg(x):
        lp, g = fn(x)
        if not np.isfinite(lp) or not np.all(np.isfinite(g)):
            return np.inf, np.zeros_like(x)
        return -float(lp), -np.asarray(g, dtype=np.float64)

    with np.errstate(all="ignore"):
        res = minimize(neg, x0, jac=True, method="L-BFGS-B", options={"maxiter": 200})
        x = np.asarray(res.x, dtype=np.float64)
        if not np.isfinite(neg(x)[0]):
            return None
        n = len(x)
        H = np.empty((n, n))
        for j in range(n):
            h = 1e-4 * (1.0 + abs(x[j]))
            e = np.zeros(n)
            e[j] = h
            H[:, j] = (neg(x + e)[1] - neg(x - e)[1]) / (2 * h)
        H = (H + H.T) / 2
        try:
            L = np.linalg.cholesky(H)
        except np.linalg.LinAlgError:
            return None
        Linv = np.linalg.inv(L)
        var = np.sum(Linv * Linv, axis=0)          # diag(H^-1) = column sums of squares of L^-1
    if not np.all(np.isfinite(var)) or np.any(var <= 0):
        return None
    return x, var


def laplace_start(model: pm.Model, chains: int, seed: int, target_accept: float, density=None):
    """A NUTS step and per-chain starting points from a Laplace approximation of the posterior.

    PyMC starts NUTS with a unit mass matrix at jittered prior-based points. On the collapsed
    paths the unconstrained parameters' posterior scales differ by orders of magnitude (an
    intercept's posterior SD in the units of y against log(sigma)'s ~1/sqrt(2n)), so the first
    adaptation windows take trees of hundreds of leapfrog steps: 90% of the gradient evaluations
    of a crossed fit were warm-up. Here the mode is found by L-BFGS and the Hessian there by
    finite differences (a few hundred evaluations of the log-density, milliseconds on a
    collapsed path); the mass matrix starts at the diagonal of the inverse Hessian and every chain
    starts at an overdispersed draw from the approximation, N(mode, 1.5^2 diag). PyMC then adapts
    as usual, so the posterior is the same; only warm-up is shorter.

    ``density``: ``point_map_info -> logp_dlogp function or None``, a compiled log-density of the
    whole model that NUTS then uses instead of compiling PyMC's (the one-factor collapsed path:
    :func:`bayeslmm.paths.collapsed_density.one_factor_density`); PyMC's when None.

    Returns ``(step, initvals)``, or None where it does not apply (more than
    :data:`LAPLACE_MAX_DIM` parameters, discrete variables, a mode or Hessian that is not finite).
    """
    from pymc.blocking import DictToArrayBijection, RaveledVars
    from pymc.step_methods.hmc import integration
    from pymc.step_methods.hmc.quadpotential import QuadPotentialDiagAdapt

    if model.discrete_value_vars or not model.continuous_value_vars:
        return None
    ip = model.initial_point(random_seed=seed)
    if sum(int(np.prod(ip[v.name].shape)) for v in model.continuous_value_vars) > LAPLACE_MAX_DIM:
        return None
    value_vars = model.continuous_value_vars            # NUTS's own order (its default ``vars``)
    start = DictToArrayBijection.map({v.name: ip[v.name] for v in value_vars})
    compiled = density(start.point_map_info) if density is not None else None
    extra = {} if compiled is None else {"logp_dlogp_func": compiled}
    step = pm.NUTS(vars=value_vars, model=model, target_accept=target_accept, initial_point=ip, **extra)
    fn = step._logp_dlogp_func
    fn.set_extra_values({})
    got = _mode_and_variance(lambda x: fn(RaveledVars(x, start.point_map_info)), start.data)
    if got is None:
        return None
    mode, var = got
    rng = np.random.default_rng(seed)
    step.potential = QuadPotentialDiagAdapt(len(mode), mode, var, 10, rng=step.rng.spawn(1)[0])
    step.integrator = integration.CpuLeapfrogIntegrator(step.potential, step._logp_dlogp_func)
    points = []
    for _ in range(chains):
        x = mode + 1.5 * np.sqrt(var) * rng.standard_normal(len(mode))
        points.append(DictToArrayBijection.rmap(RaveledVars(x, start.point_map_info)))
    return step, points


@functools.cache
def _freeze_heap_at_exit() -> None:
    """At interpreter exit, move every live object out of the garbage collector's reach.

    A fit leaves hundreds of thousands of objects (PyTensor graphs, numba types, compiled
    functions); at exit Python's finalisation ran the cyclic collector over them again and again
    while it cleared the modules: ~0.9 s after every script or CLI run that had fitted (sleepstudy,
    this 2-core machine), 0.15 s with ``gc.freeze()`` first. Only the interpreter's exit changes:
    nothing is frozen while the process runs, and Python does not promise to collect objects
    still alive at exit anyway. Registered once, by the first fit.
    """
    atexit.register(gc.freeze)


def sample(model: pm.Model, settings: SamplerSpec, *, var_names: list[str] | None = None,
           seed: int | None = None, laplace: bool = False, density=None) -> tuple[xr.DataTree, dict]:
    """Sample ``model`` with NUTS.

    With PyMC's sampler and a model that :func:`value_trace` accepts, the draws are recorded
    unconstrained and ``var_names`` are computed afterwards by :func:`constrained_posterior`.
    ``laplace=True`` (the collapsed paths: a few well-identified parameters, no funnel) starts
    PyMC's NUTS from :func:`laplace_start` when ``settings.init`` is "auto" ("laplace": always,
    "pymc": never); ``info["init"]`` says which start was used. ``density`` (with the Laplace
    start): a compiled log-density of the whole model for NUTS (see :func:`laplace_start`);
    ``info["density"]`` says whether it ("compiled") or PyMC's function ("pymc") was used.

    Returns
    -------
    (DataTree, info) : the posterior and a dict with ``seed``, ``cores``, ``sampler``, ``sampling_s``.
    """
    seed = resolve_seed(settings.seed if seed is None else seed)
    sampler = settings.sampler
    if settings.target_accept is None:      # Model.fit resolves it with SamplerSpec.for_path
        raise SpecError("sample() needs settings with target_accept set: use settings.for_path(path)")
    _freeze_heap_at_exit()
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
    t0 = time.perf_counter()            # the Laplace start is part of "compile + init"
    init, used = "pymc", "pymc"
    if sampler == "pymc" and (settings.init == "laplace" or (settings.init == "auto" and laplace)):
        started = laplace_start(model, settings.chains, seed, settings.target_accept, density=density)
        if started is not None:
            # PyMC's ValueGradFunction, or the path's compiled density when it applied
            used = "pymc" if isinstance(started[0]._logp_dlogp_func, ValueGradFunction) else "compiled"
            kwargs["step"], kwargs["initvals"] = started
            del kwargs["target_accept"]
            init = "laplace"
    with warnings.catch_warnings(), _blas_threads_per_chain(settings.n_cores), fork_chains(sampler == "pymc"):
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
    info = {"seed": seed, "cores": settings.n_cores, "sampler": sampler, "sampling_s": elapsed, "init": init,
            "density": used,
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
        """Names of the data the compiled model reads (its shared variables)."""
        if self.sampler == "nutpie":
            return {v.name for v in self.compiled.shared_var_keys}
        return set(self._shared)

    @functools.cached_property
    def _shared(self) -> dict:
        """The model's named shared variables: data containers and those inside its log-density
        (the collapsed paths' kernel data are not registered with the model). Found once."""
        from pytensor.graph.traversal import ancestors
        found = {v.name: v for v in ancestors([self.model.logp()])
                 if isinstance(v, pytensor.compile.SharedVariable) and v.name}
        found.update({n: v for n, v in self.model.named_vars.items()
                      if isinstance(v, pytensor.compile.SharedVariable)})
        return found

    def sample(self, data: dict, *, seed: int, chains: int, draws: int, tune: int) -> tuple[xr.Dataset, int]:
        """``(posterior Dataset, number of divergent transitions)`` for new ``data``; one core."""
        if self.sampler == "nutpie":
            c = self.compiled.with_data(**data)
            tr = self._nutpie.sample(c, draws=draws, tune=tune, chains=chains, cores=1, seed=seed,
                                     progress_bar=False, target_accept=self.target_accept)
            check_complete(tr["posterior"], chains, draws)
            return tr["posterior"].to_dataset(), int(np.asarray(tr["sample_stats"]["diverging"]).sum())
        for k, v in data.items():
            if k not in self.model.named_vars:
                self._shared[k].set_value(v)
        with self.model:
            pm.set_data({k: v for k, v in data.items() if k in self.model.named_vars})
            idata = pm.sample(draws=draws, tune=tune, chains=chains, cores=1, random_seed=seed,
                              progressbar=False, nuts_sampler="pymc", var_names=self.var_names,
                              target_accept=self.target_accept, compute_convergence_checks=False)
        check_complete(idata["posterior"], chains, draws)
        return idata["posterior"].to_dataset(), int(np.asarray(idata["sample_stats"]["diverging"]).sum())
