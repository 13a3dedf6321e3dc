"""Rank-normalised split R-hat and bulk / tail effective sample size, all parameters at once.

The definitions are Vehtari, Gelman, Simpson, Carpenter & Buerkner (2021), "Rank-normalization,
folding, and localization: an improved R-hat", exactly as ``arviz_stats`` implements them (same
split, Blom ranks with ties averaged, FFT autocovariance, Geyer's initial positive and monotone
sequences, the ``1 / log10(S)`` floor on tau): ``tests/test_convergence.py`` checks every number
against ``arviz_stats.rhat`` / ``ess`` to 1e-8.

Why not call ``arviz_stats``: it loops over parameters in Python (``make_ufunc``) and ranks each one
with ``scipy.stats.rankdata``, about 2 ms per parameter and method, 1-3 s after every fit with
group effects; importing it also costs ~1 s in a fresh process. Here one array ``(chain, draw, K)``
is ranked, transformed and autocorrelated in a few vectorised passes (tens of ms for hundreds of
parameters). Derived module: numpy and scipy only.
"""

from __future__ import annotations

import numpy as np
from scipy.fftpack import next_fast_len
from scipy.special import ndtri

from .threads import cpu_count, map_in_threads

__all__ = ["summary", "TAIL_PROB"]

#: the tail ESS is the smaller of the quantile ESS at these probabilities. ArviZ 1's default (its
#: ``ci_prob`` 0.89 and 1 - 0.89), kept so that our numbers equal ``arviz_stats.ess(method="tail")``;
#: Vehtari et al. use 0.05 and 0.95.
TAIL_PROB = (0.11, 0.89)
_MIN_DRAWS = 4
#: parameters per thread below which the summary runs in one thread: each parameter's numbers depend
#: on its own draws only, so blocks of parameters run in parallel threads (numpy releases the GIL:
#: 505 parameters x 2,000 draws, 0.31-0.36 -> 0.16-0.17 s on 2 CPUs) with the same result
_PER_THREAD = 64


def _as_3d(draws) -> np.ndarray:
    a = np.asarray(draws, dtype=float)
    if a.ndim < 2:
        raise ValueError(f"draws must have dims (chain, draw, ...), got shape {a.shape}")
    return a.reshape(a.shape[0], a.shape[1], -1)


def _split(a: np.ndarray) -> np.ndarray:
    """(C, D, K) -> (2C, D // 2, K): each chain's first and last halves (a middle draw is dropped)."""
    half = a.shape[1] // 2
    return np.concatenate((a[:, :half], a[:, a.shape[1] - half:]), axis=0)


def _z_scale(a: np.ndarray) -> np.ndarray:
    """Normal scores of the pooled ranks of each parameter (ties get their average rank)."""
    m, n, k = a.shape
    flat = np.ascontiguousarray(a.reshape(m * n, k).T)            # (K, N)
    N = flat.shape[1]
    # quicksort: the order among tied values does not matter, they all get their average rank
    order = np.argsort(flat, axis=1)
    s = np.take_along_axis(flat, order, axis=1)
    z_sorted = np.broadcast_to(ndtri((np.arange(1, N + 1) - 0.375) / (N + 0.25)), s.shape)
    tied = np.flatnonzero((s[:, 1:] == s[:, :-1]).any(axis=1))
    if tied.size:
        st = s[tied]
        idx = np.broadcast_to(np.arange(N), st.shape)
        first = np.ones(st.shape, dtype=bool)
        first[:, 1:] = st[:, 1:] != st[:, :-1]
        last = np.ones(st.shape, dtype=bool)
        last[:, :-1] = first[:, 1:]
        start = np.maximum.accumulate(np.where(first, idx, 0), axis=1)
        end = np.minimum.accumulate(np.where(last, idx, N)[:, ::-1], axis=1)[:, ::-1]
        z_sorted = np.array(z_sorted)
        z_sorted[tied] = ndtri(((start + end) / 2.0 + 1.0 - 0.375) / (N + 0.25))
    z = np.empty(flat.shape)
    z[np.arange(k)[:, None], order] = z_sorted
    return z.T.reshape(m, n, k)


def _rhat_basic(a: np.ndarray) -> np.ndarray:
    n = a.shape[1]
    chain_mean = a.mean(axis=1)
    between = n * np.var(chain_mean, axis=0, ddof=1)
    within = np.mean(np.var(a, axis=1, ddof=1), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt((between / within + n - 1) / n)


def _ess(a: np.ndarray) -> np.ndarray:
    """Effective sample size of each parameter of (M, n, K) (arviz_stats ``_ess``, vectorised)."""
    m, n, k = a.shape
    out = np.full(k, float(m * n))
    const = np.ptp(a, axis=(0, 1)) < np.finfo(float).resolution
    live = np.flatnonzero(~const)
    if live.size == 0:
        return out
    a = a[:, :, live]
    size = next_fast_len(2 * n)
    c = a - a.mean(axis=1, keepdims=True)
    f = np.fft.rfft(c, n=size, axis=1)
    f *= np.conjugate(f)
    acov = np.fft.irfft(f, n=size, axis=1)[:, :n] / n              # (M, n, K')
    acov_m = acov.mean(axis=0)                                     # (n, K')
    mean_var = acov_m[0] * n / (n - 1.0)
    var_plus = mean_var * (n - 1.0) / n
    if m > 1:
        var_plus = var_plus + np.var(a.mean(axis=1), axis=0, ddof=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho_all = 1.0 - (mean_var - acov_m) / var_plus             # (n, K')
    kk = live.size
    cols = np.arange(kk)
    rho = np.zeros((n, kk))
    rho[0] = 1.0
    rho[1] = rho_all[1]
    even = np.ones(kk)
    odd = rho_all[1].copy()
    t_end = np.ones(kk, dtype=np.int64)         # each parameter's t when Geyer's loop stops
    active = (even + odd) > 0.0
    t = 1
    # Geyer's initial positive sequence: every parameter still running is at the same t
    while t < n - 3 and active.any():
        e, o = rho_all[t + 1], rho_all[t + 2]
        even = np.where(active, e, even)
        odd = np.where(active, o, odd)
        keep = active & ((e + o) >= 0)
        rho[t + 1] = np.where(keep, e, rho[t + 1])
        rho[t + 2] = np.where(keep, o, rho[t + 2])
        t += 2
        t_end = np.where(active, t, t_end)
        active = active & ((e + o) > 0.0)
    max_t = t_end - 2
    fix = even > 0
    rho[np.maximum(max_t + 1, 0)[fix], cols[fix]] = even[fix]
    # Geyer's initial monotone sequence
    t = 1
    while t <= max_t.max() - 2:
        sel = (t <= max_t - 2) & ((rho[t + 1] + rho[t + 2]) > (rho[t - 1] + rho[t]))
        avg = (rho[t - 1] + rho[t]) / 2.0
        rho[t + 1] = np.where(sel, avg, rho[t + 1])
        rho[t + 2] = np.where(sel, avg, rho[t + 2])
        t += 2
    csum = np.cumsum(rho, axis=0)
    head = np.where(max_t >= 0, csum[np.maximum(max_t, 0), cols], 0.0)
    tail = rho[np.minimum(max_t + 1, n - 1), cols]
    tau = -1.0 + 2.0 * head + tail
    ess = m * n
    tau = np.maximum(tau, 1.0 / np.log10(ess))
    res = ess / tau
    res[np.isnan(rho_all).any(axis=0)] = np.nan
    out[live] = res
    return out


def _valid(a: np.ndarray) -> np.ndarray:
    """Parameters whose draws are all finite, given enough draws (else NaN, as ArviZ)."""
    ok = np.isfinite(a).all(axis=(0, 1))
    if a.shape[1] < _MIN_DRAWS:
        ok[:] = False
    return ok


def _rhat_from(split: np.ndarray, z_split: np.ndarray) -> np.ndarray:
    folded = np.abs(split - np.median(split, axis=(0, 1)))
    return np.fmax(_rhat_basic(z_split), _rhat_basic(_z_scale(folded)))


def _ess_tail(a: np.ndarray) -> np.ndarray:
    q = np.quantile(a, TAIL_PROB, axis=(0, 1))                      # (2, K)
    return np.fmin(*(_ess(_split((a <= q[i]).astype(float))) for i in range(len(TAIL_PROB))))


def summary(draws) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rhat, ess_bulk, ess_tail)`` of every parameter, sharing the ranking of the split chains.

    Parameters
    ----------
    draws : array_like, shape (chain, draw, ...)

    Returns
    -------
    tuple of numpy.ndarray
        Each with the trailing shape of ``draws``. NaN for a parameter with a non-finite draw, and
        everywhere with fewer than 4 draws; R-hat is NaN with fewer than 2 chains.

    Examples
    --------
    >>> import numpy as np
    >>> r, eb, et = summary(np.random.default_rng(0).normal(size=(4, 1000, 3)))
    >>> r.shape, bool((np.abs(r - 1) < 0.01).all()), bool((eb > 3000).all())
    ((3,), True, True)
    """
    a = _as_3d(draws)
    shape = np.shape(draws)[2:]
    k = a.shape[2]
    outs = [np.full(k, np.nan) for _ in range(3)]
    ok = _valid(a)
    if ok.any():
        b = a[:, :, ok]
        n = min(cpu_count(), max(1, b.shape[2] // _PER_THREAD))
        cuts = np.linspace(0, b.shape[2], n + 1).astype(int)
        parts = map_in_threads(_summary_block, [b[:, :, lo:hi] for lo, hi in zip(cuts[:-1], cuts[1:])])
        for i in range(3):
            outs[i][ok] = np.concatenate([part[i] for part in parts])
    return tuple(o.reshape(shape) for o in outs)


def _summary_block(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rhat, ess_bulk, ess_tail) of the finite parameters of (C, D, K); R-hat NaN with one chain."""
    split = _split(b)
    z = _z_scale(split)
    rhat = _rhat_from(split, z) if b.shape[0] >= 2 else np.full(b.shape[2], np.nan)
    return rhat, _ess(z), _ess_tail(b)
