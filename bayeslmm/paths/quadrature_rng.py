"""The draws' random numbers (numba): a counter-based generator, so that a draw does not depend
on the order in which the groups or draws are visited (:mod:`bayeslmm.paths.quadrature_draws`).

splitmix64 (Steele, Lea & Flood 2014): the state is a 64-bit counter advanced by the golden
ratio, each output a bijective mix of it; :func:`seed_state` seeds a stream from (seed, draw,
group). Uniforms take its top 53 bits, normals come from Box-Muller.
"""

from __future__ import annotations

import math

import numpy as np

from .quadrature_families import NO_NRT, njit

__all__ = ["uniform", "normal", "normal_pair", "seed_state"]

_NO_NRT = dict(cache=True, nogil=True, error_model="numpy", **NO_NRT)
_GOLD = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


@njit(**_NO_NRT)
def _mix(z):
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@njit(**_NO_NRT)
def uniform(state):
    """A uniform on (0, 1) from the splitmix64 stream in state[0] (advanced)."""
    state[0] += _GOLD
    z = _mix(state[0])
    return ((z >> np.uint64(11)) + np.uint64(1)) * (1.0 / 9007199254740994.0)


@njit(**_NO_NRT)
def normal(state):
    """A standard normal (one half of a Box-Muller transform)."""
    u1 = uniform(state)
    u2 = uniform(state)
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


@njit(**_NO_NRT)
def normal_pair(state):
    """Two independent standard normals (both halves of one Box-Muller transform)."""
    r = math.sqrt(-2.0 * math.log(uniform(state)))
    t = 2.0 * math.pi * uniform(state)
    return r * math.cos(t), r * math.sin(t)


@njit(**_NO_NRT)
def seed_state(seed, s, j, state):
    """Seed the stream in state[0] for draw s and group j of ``seed``."""
    state[0] = _mix(np.uint64(seed) ^ _mix(np.uint64(s) * _GOLD + np.uint64(j) + np.uint64(1)))
