"""Temporary files of the zoo cache: created with the umask's permissions, locked while in use, and
removed when a killed process left them behind.

Temporary downloads (``.tmp-download-*.part``) and extractions (``.tmp-extract-*``) hold an advisory
lock (``fcntl.flock``) while in use; :func:`clean_stale_temp` removes the unlocked ones older than
:data:`STALE_GRACE` seconds.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: stale temp files are recognised by age only
    fcntl = None

TMP_DOWNLOAD_PREFIX = ".tmp-download-"
TMP_DOWNLOAD_SUFFIX = ".part"
TMP_EXTRACT_PREFIX = ".tmp-extract-"
#: A temporary file or directory younger than this (seconds) is never treated as stale.
STALE_GRACE = 60.0
#: Where advisory locks are unavailable, a temporary entry is stale after this many seconds.
STALE_AGE_WITHOUT_LOCKS = 24 * 3600.0


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _new_temp(directory, prefix: str, suffix: str = "", *, is_dir: bool = False):
    """``(path, fd)`` of a new, uniquely named file opened for writing, or ``(path, None)`` of a
    new directory. Unlike :mod:`tempfile` (0600 / 0700), the mode is 0666 / 0777 minus the umask,
    so what is renamed into the cache is readable by the users the umask allows."""
    for _ in range(100):
        path = os.path.join(os.fspath(directory), f"{prefix}{secrets.token_hex(8)}{suffix}")
        try:
            if is_dir:
                os.mkdir(path)
                return path, None
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
            return path, os.open(path, flags, 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", os.fspath(directory))


def _lock(fd: int) -> None:
    """Hold an advisory lock on ``fd`` until it is closed (also when the process is killed): it
    tells :func:`clean_stale_temp` that the temporary file or directory is in use."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pass  # no locks on this file system: the entry is protected by its age only


def _in_use(path: str) -> bool | None:
    """True if a process holds the lock of ``path``, False if none does, None if unknown."""
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)
    return False


def _is_temp_name(name: str) -> bool:
    return ((name.startswith(TMP_DOWNLOAD_PREFIX) and name.endswith(TMP_DOWNLOAD_SUFFIX))
            or name.startswith(TMP_EXTRACT_PREFIX))


def clean_stale_temp(directory) -> list[Path]:
    """Remove the temporary downloads and extractions in ``directory`` that a killed process left
    behind: older than :data:`STALE_GRACE` seconds and not locked by a running download (where
    locks are unavailable: older than :data:`STALE_AGE_WITHOUT_LOCKS`). Returns what was removed;
    what cannot be removed (a read-only cache) is left alone."""
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        if not _is_temp_name(name):
            continue
        path = os.path.join(os.fspath(directory), name)
        try:
            age = now - os.lstat(path).st_mtime
        except OSError:
            continue
        if age < STALE_GRACE:
            continue
        in_use = _in_use(path)
        if in_use or (in_use is None and age < STALE_AGE_WITHOUT_LOCKS):
            continue
        try:
            _remove(Path(path))
        except OSError:
            continue
        removed.append(Path(path))
    return removed
