"""Where bayeslmm keeps compiled code: a per-user cache folder, never the installed package.

The collapsed path's numba kernel (:mod:`bayeslmm.paths.collapsed_kernel`) is cached on disk.
numba's default puts the cache in ``__pycache__`` beside the source, i.e. inside the installed
package, which fails on read-only installs and mixes run-time state into the install. Here the
kernel's cache goes to ``user_cache_dir("numba")``:

* ``$BAYESLMM_CACHE_DIR`` when set, else
* ``$XDG_CACHE_HOME/bayeslmm`` or ``~/.cache/bayeslmm`` (Linux and other POSIX),
  ``~/Library/Caches/bayeslmm`` (macOS), ``%LOCALAPPDATA%\\bayeslmm\\Cache`` (Windows),
* a folder in the temporary directory when none of those can be created.

Inside it, one sub-folder per version of the numba sources (:func:`_sources_key`), because numba
does not notice when a function's callee in another file changes. A ``NUMBA_CACHE_DIR`` set by
the user is respected as numba documents it. Which cache is used
never changes the draws: a cached kernel is the same machine code as a freshly compiled one
(tests/test_reliability.py runs the same seed with empty and with warm caches).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import tempfile
from pathlib import Path

__all__ = ["user_cache_dir", "numba_cache_dir", "cached_njit", "numba_sources"]


def _base() -> Path:
    env = os.environ.get("BAYESLMM_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        root = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(root) / "bayeslmm" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "bayeslmm"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "bayeslmm"


def user_cache_dir(*parts: str) -> Path:
    """The per-user cache folder of bayeslmm (``parts`` appended), created if needed."""
    path = _base().joinpath(*parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
        return path
    except OSError:
        uid = getattr(os, "getuid", lambda: "user")()
        path = Path(tempfile.gettempdir()) / f"bayeslmm-cache-{uid}" / Path(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path


@contextlib.contextmanager
def numba_cache_dir():
    """Within this block, ``numba.njit(cache=True)`` functions defined cache in :func:`user_cache_dir`.

    numba fixes a function's cache folder when the decorator runs (it reads
    ``numba.config.CACHE_DIR`` then), so the kernel module defines its functions inside this block;
    the setting is restored afterwards, so other numba users in the process are not affected.
    """
    import numba

    if numba.config.CACHE_DIR:          # NUMBA_CACHE_DIR set by the user: numba's own rule
        yield Path(numba.config.CACHE_DIR)
        return
    folder = user_cache_dir("numba", _sources_key())
    numba.config.CACHE_DIR = str(folder)
    try:
        yield folder
    finally:
        numba.config.CACHE_DIR = ""


@functools.cache
def _sources_key() -> str:
    """A hash of every bayeslmm source file that defines numba code, naming the cache's sub-folder.

    numba invalidates a cached function when *its own* file changes, not when a function it calls
    from another file does: the compiled model densities (``paths/collapsed_density.py``,
    ``paths/quadrature_density.py``) link the kernels of other files and would keep running an
    edited kernel's old machine code. A new folder for any change of any numba source rules that
    out (the price: an edit recompiles every kernel once).
    """
    import hashlib
    h = hashlib.sha256()
    for path in numba_sources():
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def numba_sources() -> list[Path]:
    """The package's source files that define numba code (those that mention ``njit``)."""
    return [p for p in sorted(Path(__file__).parent.rglob("*.py")) if b"njit" in p.read_bytes()]


def cached_njit(**options):
    """``numba.njit(cache=True, **options)`` with the cache in :func:`user_cache_dir`, never in the
    installed package. Used as a decorator by every numba kernel of bayeslmm."""
    def deco(fn):
        import numba
        with numba_cache_dir():
            return numba.njit(cache=True, **options)(fn)
    return deco
