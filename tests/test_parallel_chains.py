"""Chains in forked workers without a message per draw (bayeslmm.parallel_chains).

The reference is PyMC's own multiprocess sampler on the same model and seed: the draws must be
identical, bit for bit, with the Laplace start and with PyMC's start, with and without the progress
bar (which receives the sampler statistics in batches). Then the failure modes: an exception in a
worker is raised in the caller with the worker's traceback, and an interrupt leaves no fit.
"""

from __future__ import annotations

import contextlib
import multiprocessing

import numpy as np
import pytest

import bayeslmm as blmm
from bayeslmm import parallel_chains, sampling
from bayeslmm.errors import SamplingInterrupted

pytestmark = pytest.mark.skipif(not parallel_chains.available(), reason="needs the fork start method")

DYE = "Yield ~ 1 + (1 | Batch)"
SMALL = dict(chains=3, cores=2, draws=60, tune=60, seed=11, verbose=False)


def _fit(dyestuff, **kw):
    return blmm.Model(DYE, dyestuff).fit(**{**SMALL, **kw})


@pytest.mark.parametrize("init,progressbar", [("laplace", False), ("pymc", True)])
def test_draws_equal_pymcs_own_parallel_sampler(dyestuff, monkeypatch, init, progressbar):
    used = []
    real = parallel_chains._fork_mp_sample

    def spy(**kw):
        used.append(kw["chains"])
        return real(**kw)
    monkeypatch.setattr(parallel_chains, "_fork_mp_sample", spy)
    ours = _fit(dyestuff, init=init, progressbar=progressbar)
    assert used == [3]                                     # the workers ran this fit
    monkeypatch.setattr(sampling, "fork_chains", lambda enabled=True: contextlib.nullcontext())
    theirs = _fit(dyestuff, init=init, progressbar=progressbar)
    assert used == [3]                                     # ...and not PyMC's
    for v in ours.posterior.data_vars:
        np.testing.assert_array_equal(ours.posterior[v].values, theirs.posterior[v].values, err_msg=v)
    for v in ("diverging", "n_steps", "step_size"):
        np.testing.assert_array_equal(ours.idata["sample_stats"][v].values, theirs.idata["sample_stats"][v].values)


def test_a_workers_exception_is_raised_with_its_traceback(dyestuff, monkeypatch):
    def broken(**kw):
        raise ValueError("boom in the chain loop")
        yield
    monkeypatch.setattr(parallel_chains._mcmc, "_iter_sample", broken)     # inherited by the forked workers
    with pytest.raises(parallel_chains.ChainWorkerError, match="(?s)boom in the chain loop.*Traceback|Traceback.*boom"):
        _fit(dyestuff, progressbar=False)
    assert multiprocessing.active_children() == []


def test_an_interrupt_leaves_no_fit_and_no_workers(dyestuff, monkeypatch):
    def interrupted(*a, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(parallel_chains.multiprocessing.connection, "wait", interrupted)
    with pytest.raises(SamplingInterrupted, match="interrupted"):
        _fit(dyestuff, progressbar=False)
    assert multiprocessing.active_children() == []


def test_a_worker_killed_without_its_draws_is_an_error(dyestuff, monkeypatch):
    import os
    import signal

    def killed(**kw):
        os.kill(os.getpid(), signal.SIGKILL)         # as the kernel's out-of-memory killer would
        yield
    monkeypatch.setattr(parallel_chains._mcmc, "_iter_sample", killed)
    with pytest.raises(parallel_chains.ChainWorkerError, match=r"ended without its draws \(exit code -9"):
        _fit(dyestuff, progressbar=False)
    assert multiprocessing.active_children() == []


def test_an_interrupt_in_the_workers_leaves_no_fit(dyestuff, monkeypatch):
    def ctrl_c(**kw):                                 # Ctrl-C in a terminal reaches every process
        raise KeyboardInterrupt
        yield
    monkeypatch.setattr(parallel_chains._mcmc, "_iter_sample", ctrl_c)
    with pytest.raises(SamplingInterrupted, match="interrupted"):
        _fit(dyestuff, progressbar=False)


def test_the_swap_is_undone():
    import pymc.sampling.mcmc as mcmc
    before = mcmc._mp_sample
    with pytest.raises(RuntimeError):
        with parallel_chains.fork_chains():
            assert mcmc._mp_sample is not before
            raise RuntimeError
    assert mcmc._mp_sample is before
    with parallel_chains.fork_chains(enabled=False):
        assert mcmc._mp_sample is before
