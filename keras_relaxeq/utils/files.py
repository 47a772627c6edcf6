"""File helpers: content hashes and atomic writes (one implementation for the whole package)."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path

_CHUNK = 1 << 20

Content = str | bytes | Callable


def is_local_path(path) -> bool:
    """True unless ``path`` names a remote file system (``gs://``, ``s3://``, ``hdfs://``...)."""
    return "://" not in str(path)


def sha256_file(path, chunk_size: int = _CHUNK) -> str:
    """Hex sha256 of a file's bytes, read in chunks; remote paths go through ``tf.io.gfile``."""
    digest = hashlib.sha256()
    if is_local_path(path):
        opener = open
    else:  # only remote paths pay for the TensorFlow import
        import tensorflow as tf

        opener = tf.io.gfile.GFile
    with opener(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write(path, content: Content, *, fsync: bool = False) -> Path | str:
    """Write ``content`` to ``path`` so that readers see the old file or the whole new one, never a part.

    ``content`` is text (written as UTF-8), bytes, or a callable ``write(f)`` that receives the
    temporary file opened in binary mode (``np.savez``, ``csv`` through a wrapper, ...). The temporary
    file lives beside ``path`` under a unique name and is renamed over it (``os.replace``); it is removed
    if writing fails. It is created with ``open(..., "x")``, so the result has the usual permissions of
    the process umask (``mkstemp`` would make it private). ``fsync=True`` flushes it to disk before the
    rename (for resume state that must survive a power cut). Remote paths (``gs://``...) are written
    through ``tf.io.gfile`` with a copy-and-rename of their own file system.
    """
    if not is_local_path(path):
        return _atomic_write_remote(str(path), content)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "xb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode("utf-8") if isinstance(content, str) else content)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _atomic_write_remote(path: str, content: Content) -> str:
    import tensorflow as tf

    tmp = f"{path}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        with tf.io.gfile.GFile(tmp, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode("utf-8") if isinstance(content, str) else content)
        tf.io.gfile.rename(tmp, path, overwrite=True)
    except BaseException:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.remove(tmp)
        raise
    return path
