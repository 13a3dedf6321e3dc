"""How many CPUs bayeslmm's parallel loops use, and a map over blocks of work in threads.

The loops that use threads run numpy or numba code that releases the GIL, on independent blocks
whose results do not depend on how the work is split: the GLMM group-effect draws and the
convergence summary call :func:`map_in_threads`; the Gaussian group-effect draws
(:func:`bayeslmm.paths.elimination.draw_group_effects`) keep their own pool because they draw each
block's normals in the calling thread, in draw order, while earlier blocks run. Leaf module: the
standard library only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

__all__ = ["cpu_count", "map_in_threads"]


def cpu_count() -> int:
    """The number of CPUs (1 where Python cannot tell)."""
    return os.cpu_count() or 1


def map_in_threads(fn: Callable, args: Sequence, threads: int | None = None) -> list:
    """``[fn(a) for a in args]``, in up to ``threads`` threads (default: the number of CPUs); in this
    thread when one suffices."""
    n = max(1, min(len(args), cpu_count() if threads is None else threads))
    if n == 1:
        return [fn(a) for a in args]
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(fn, args))
