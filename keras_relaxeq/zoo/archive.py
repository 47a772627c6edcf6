"""Zoo archives: verifying a file against the catalogue, the manifest of a ``.tar.gz`` and safe extraction.

:func:`safe_extract` refuses links, special files, paths leaving the target, and archives that
expand beyond :data:`MAX_EXPANSION` times their declared size or have more than
:data:`MAX_MEMBERS` members; it extracts into a locked temporary directory and renames it into place.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import tarfile
from pathlib import Path, PurePosixPath

from keras_relaxeq.utils import sha256_file
from keras_relaxeq.zoo.errors import REPORT_URL_HINT, UnsafeArchiveError, ZooError
from keras_relaxeq.zoo.registry import Artifact
from keras_relaxeq.zoo.tempfiles import TMP_EXTRACT_PREFIX, _lock, _new_temp

#: errors of a read-only (or not permitted) location: reported as cache errors, not broken archives
_READ_ONLY_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
#: An archive may expand to at most this many times the size the catalogue declares for it
#: (the published SavedModels expand 1.4-2.7 times); more is refused as a decompression bomb.
MAX_EXPANSION = 64
#: At most this many archive members (a SavedModel has a handful).
MAX_MEMBERS = 10_000


def _check_file(path: Path, artifact: Artifact) -> str | None:
    """None if ``path`` has the published size and sha256, else a description of the problem."""
    size = path.stat().st_size
    if size != artifact.size:
        return f"size {size} bytes, expected {artifact.size}"
    got = sha256_file(path)
    if got != artifact.sha256:
        return f"sha256 {got}, expected {artifact.sha256}"
    return None


def archive_manifest(archive) -> dict[str, tuple]:
    """``{relpath: ("dir",) | ("file", size, sha256)}`` for every member of a ``.tar.gz``."""
    manifest = {}
    with tarfile.open(archive, "r:gz") as tar:
        for m in tar:
            name = PurePosixPath(m.name).as_posix().rstrip("/")
            if name in ("", "."):
                continue
            if m.isdir():
                manifest[name] = ("dir",)
            elif m.isreg():
                h = hashlib.sha256()
                f = tar.extractfile(m)
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
                manifest[name] = ("file", m.size, h.hexdigest())
    return manifest


def tree_problems(directory: Path, manifest: dict[str, tuple]) -> list[str]:
    """Differences between an extracted directory and the archive manifest (empty: identical)."""
    problems, seen = [], set()
    for root, dirs, files in os.walk(directory):
        for n in dirs + files:
            full = Path(root) / n
            rel = full.relative_to(directory).as_posix()
            seen.add(rel)
            want = manifest.get(rel)
            st = full.lstat()
            if want is None:
                problems.append(f"unexpected {rel}")
            elif want[0] == "dir":
                if not stat.S_ISDIR(st.st_mode):
                    problems.append(f"{rel} is not a directory")
            elif not stat.S_ISREG(st.st_mode):
                problems.append(f"{rel} is not a regular file")
            elif st.st_size != want[1]:
                problems.append(f"{rel} has {st.st_size} bytes, expected {want[1]}")
            elif sha256_file(full) != want[2]:
                problems.append(f"{rel} has a different sha256")
    problems += [f"missing {rel}" for rel in sorted(set(manifest) - seen)]
    return problems


def _within(base: str, path: str) -> bool:
    return os.path.commonpath([base, path]) == base


def extraction_limit(artifact: Artifact) -> int:
    """The most bytes ``artifact`` may expand to: :data:`MAX_EXPANSION` times its declared size."""
    return MAX_EXPANSION * artifact.size


def _read_members(tar, archive, max_bytes: int | None, max_members: int | None) -> list:
    """The members of ``tar``, stopping as soon as their total size or number exceeds a limit
    (so that a decompression bomb is not even decompressed in full)."""
    members, total = [], 0
    for m in tar:
        members.append(m)
        total += m.size if m.isreg() else 0
        if max_members is not None and len(members) > max_members:
            raise UnsafeArchiveError(f"{archive} has more than {max_members} members; a zoo "
                                     "archive has a handful. Refusing to extract it. "
                                     + REPORT_URL_HINT)
        if max_bytes is not None and total > max_bytes:
            raise UnsafeArchiveError(
                f"{archive} expands to more than {max_bytes} bytes, the limit for this artifact "
                f"({MAX_EXPANSION} times the archive size the catalogue declares): refusing to "
                "extract it (a decompression bomb, or a wrong size in the catalogue). "
                + REPORT_URL_HINT)
    return members


def _umask_data_filter(member, dest_path):
    """``tarfile``'s ``data`` filter, then no mode at all: files and directories get 0666 / 0777
    minus the umask, like any file the user creates (the data filter alone makes directories
    0700)."""
    return tarfile.data_filter(member, dest_path).replace(mode=None, deep=False)


def check_members(members, dest, *, max_bytes: int | None = None,
                  max_members: int | None = None) -> None:
    """Raise :class:`UnsafeArchiveError` unless every member is a plain file or directory whose
    path stays inside ``dest``, and the members are at most ``max_members`` with at most
    ``max_bytes`` in total.

    Rejected: absolute paths, ``..`` components, paths resolving outside ``dest``, symbolic and
    hard links (zoo archives never need them; links pointing outside are reported as such),
    device files, FIFOs, duplicate names, NUL bytes.
    """
    _read_members(iter(members), "The archive", max_bytes, max_members)
    base = os.path.realpath(dest)
    seen = set()
    for m in members:
        name = m.name
        if "\x00" in name:
            raise UnsafeArchiveError(f"Archive member {name!r} has a NUL byte in its name.")
        if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
            raise UnsafeArchiveError(f"Archive member {name!r} has an absolute path.")
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if ".." in parts:
            raise UnsafeArchiveError(f"Archive member {name!r} contains '..' (path traversal).")
        target = os.path.realpath(os.path.join(base, name))
        if not _within(base, target):
            raise UnsafeArchiveError(f"Archive member {name!r} resolves outside the target "
                                     "directory.")
        if m.issym() or m.islnk():
            link = m.linkname
            if m.issym():
                resolved = os.path.normpath(os.path.join(os.path.dirname(target), link))
            else:
                resolved = os.path.normpath(os.path.join(base, link))
            if os.path.isabs(link) or ".." in PurePosixPath(link).parts or not _within(
                    base, resolved):
                raise UnsafeArchiveError(f"Archive member {name!r} is a link to {link!r}, "
                                         "outside the target directory.")
            raise UnsafeArchiveError(f"Archive member {name!r} is a link; zoo archives may only "
                                     "contain regular files and directories.")
        if not (m.isreg() or m.isdir()):
            raise UnsafeArchiveError(f"Archive member {name!r} is a device, FIFO or other special "
                                     "file; zoo archives may only contain regular files and "
                                     "directories.")
        key = PurePosixPath(name).as_posix().rstrip("/")
        if key in seen:
            raise UnsafeArchiveError(f"Archive member {name!r} appears twice.")
        seen.add(key)


def safe_extract(archive, dest, *, require_saved_model: bool = True, max_bytes: int | None = None,
                 max_members: int | None = MAX_MEMBERS) -> Path:
    """Extract ``archive`` to ``dest`` atomically (temp dir next to it, then rename).

    Members are checked with :func:`check_members` (at most ``max_members`` members and
    ``max_bytes`` bytes in total) and extracted with ``filter="data"``, with the umask's
    permissions.
    """
    dest = Path(dest)
    tmp_name, _ = _new_temp(dest.parent, TMP_EXTRACT_PREFIX, is_dir=True)
    tmp = Path(tmp_name)
    lock_fd = None
    try:
        try:
            lock_fd = os.open(tmp, os.O_RDONLY)
            _lock(lock_fd)
        except OSError:
            pass  # directories cannot be opened here (Windows): protected by their age only
        try:
            with tarfile.open(archive, "r:gz") as tar:
                members = _read_members(tar, archive, max_bytes, max_members)
                check_members(members, tmp)
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, members=members, filter=_umask_data_filter)
                else:  # pragma: no cover - Python without PEP 706
                    tar.extractall(tmp, members=members)
        except tarfile.FilterError as exc:
            raise UnsafeArchiveError(f"{archive}: {exc}") from None
        except (tarfile.TarError, EOFError, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno in _READ_ONLY_ERRNOS:
                raise
            raise ZooError(f"{archive} is not a readable .tar.gz ({exc}) although its hash "
                           f"matches the catalogue: the published artifact is broken. "
                           + REPORT_URL_HINT) from None
        if require_saved_model and not (tmp / "saved_model.pb").is_file():
            raise ZooError(f"{archive} does not contain saved_model.pb at its root; the "
                           "published artifact is not a SavedModel archive. " + REPORT_URL_HINT)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not dest.is_dir():  # else: a concurrent process extracted it first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if lock_fd is not None:
            os.close(lock_fd)
    return dest
