"""Reproducible packing of a SavedModel directory into the ``.tar.gz`` a zoo entry publishes: sorted
members, zeroed times and owners, normalised modes, a gzip header without name or time; the same
directory always packs to the same sha256.
"""

from __future__ import annotations

import gzip
import os
import stat
import tarfile
from pathlib import Path
from typing import NamedTuple

from keras_relaxeq.utils import atomic_write, sha256_file


class PackedArtifact(NamedTuple):
    path: Path
    sha256: str
    size: int


def _tarinfo(name: str, st: os.stat_result, is_dir: bool) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.mtime = 0
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    if is_dir:
        ti.type = tarfile.DIRTYPE
        ti.mode = 0o755
    else:
        ti.type = tarfile.REGTYPE
        ti.size = st.st_size
        ti.mode = 0o755 if st.st_mode & stat.S_IXUSR else 0o644
    return ti


def pack_saved_model(export_dir, tar_path) -> PackedArtifact:
    """Pack ``export_dir``'s contents into a byte-reproducible ``.tar.gz``.

    Members are the directory's contents (``saved_model.pb``, ``variables/...``) at the archive
    root, in sorted order, with mtime 0, uid/gid 0, no user names and normalised modes; the gzip
    header carries no name and mtime 0. Packing the same directory twice gives the same sha256.
    Returns ``(path, sha256, size)`` for the catalogue entry.
    """
    export_dir = Path(export_dir)
    if not (export_dir / "saved_model.pb").is_file():
        raise ValueError(f"{export_dir} is not a SavedModel directory (no saved_model.pb).")
    tar_path = Path(tar_path)
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    members = []
    for root, dirs, files in os.walk(export_dir):
        dirs.sort()
        rel_root = Path(root).relative_to(export_dir)
        for d in dirs:
            members.append((rel_root / d, True))
        for f in sorted(files):
            members.append((rel_root / f, False))
    members.sort(key=lambda m: m[0].as_posix())

    def write(raw):
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
                for rel, is_dir in members:
                    full = export_dir / rel
                    st = full.lstat()
                    if stat.S_ISLNK(st.st_mode) or not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                        raise ValueError(f"{full}: only regular files and directories can be packed")
                    ti = _tarinfo(rel.as_posix(), st, is_dir)
                    if is_dir:
                        tar.addfile(ti)
                    else:
                        with open(full, "rb") as f:
                            tar.addfile(ti, f)

    atomic_write(tar_path, write)
    return PackedArtifact(tar_path, sha256_file(tar_path), tar_path.stat().st_size)


__all__ = ["PackedArtifact", "pack_saved_model"]
