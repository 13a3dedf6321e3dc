"""Atomic file writes: the one helper every file bayeslmm writes goes through.

A file is written under a temporary name in the target's own folder, flushed to disk (``fsync``)
and then renamed over the target (``os.replace``, atomic on POSIX and Windows). A reader, or a
process killed half-way (Ctrl-C, SIGKILL, a full disk), therefore sees either the previous
complete file or the new complete file, never a truncated one; the temporary file is removed
when the write fails.

Ctrl-C (SIGINT) during a write is held back until the file is complete and in place, then raised
as the usual ``KeyboardInterrupt``: libraries such as h5py can swallow a KeyboardInterrupt that
lands in their clean-up code (the process then carries on), and one interrupted file is enough.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import threading
from pathlib import Path

__all__ = ["atomic_path", "write_text", "write_bytes"]


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:                       # makes the rename itself durable; not possible on every platform
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _sigint_held_back():
    """Delay SIGINT to the end of the block (main thread with Python's default handler only)."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    caught = []
    signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if caught:
        raise KeyboardInterrupt


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    The temporary name keeps the suffix (``.fit.nc.partial-1a2b3c.nc``) so that writers that
    choose a format by suffix (matplotlib, pandas) behave as for the target. On any exception,
    KeyboardInterrupt included, the temporary file is deleted and ``path`` is left untouched.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_text("hello")
    >>> target.read_text()
    'hello'
    """
    path = Path(path)
    if path.is_dir():
        from .errors import BayesLMMError
        raise BayesLMMError(f"cannot write the file {str(path)!r}: it is an existing folder")
    tmp = path.with_name(f".{path.name}.partial-{secrets.token_hex(4)}{path.suffix}")
    with _sigint_held_back():
        try:
            yield tmp
            _fsync_file(tmp)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        _fsync_dir(path.parent)


def write_text(path, text: str) -> str:
    """Write ``text`` (UTF-8) to ``path`` atomically; return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return str(path)


def write_bytes(path, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically; return the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return str(path)
