"""A fit makes the interpreter's exit cheap: ``gc.freeze`` runs at exit (see
``bayeslmm.sampling._freeze_heap_at_exit``; measured 0.9 s -> 0.15 s after a sleepstudy fit)."""

from __future__ import annotations

import subprocess
import sys


def test_a_fit_registers_the_exit_freeze(get_fit, dyestuff):
    from bayeslmm import sampling
    get_fit("Yield ~ 1 + (1 | Batch)", dyestuff, chains=2, draws=200, tune=200, seed=1)
    assert sampling._freeze_heap_at_exit.cache_info().currsize == 1


def test_the_freeze_runs_at_exit_and_only_then():
    # atexit runs handlers last-registered-first, so the checker registered before sees the freeze
    # (the interpreter may start with a few hundred objects frozen: the counts are compared)
    code = ("import atexit, gc\n"
            "start = gc.get_freeze_count()\n"
            "atexit.register(lambda: print(gc.get_freeze_count() - start))\n"
            "from bayeslmm import sampling\n"
            "sampling._freeze_heap_at_exit(); sampling._freeze_heap_at_exit()\n"
            "print(gc.get_freeze_count() - start)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    running, at_exit = (int(x) for x in out.stdout.split())
    assert running == 0 and at_exit > 10_000, out.stdout
