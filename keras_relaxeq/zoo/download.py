"""Download, verify, cache and load model-zoo artifacts.

Where files come from (first that is set):
  1. ``base_url=`` argument (CLI ``--base-url``),
  2. ``$KERAS_RELAXEQ_ZOO_URL``,
  3. the catalogue's ``base_url`` field,
  4. the folder holding the catalogue (the repository's ``zoo/``): the fallback local mirror.
A base URL is ``http(s)://...``, ``file://...`` or a plain local directory; the artifact is at
``<base>/<artifact.file>``.

Where files go: ``$KERAS_RELAXEQ_CACHE`` (default ``~/.keras/keras_relaxeq``) /
``zoo/<name>/<version>/`` holds the archive exactly as published plus the extracted
``saved_model/`` directory. Every use re-verifies the archive's full sha256 and size against the
catalogue, and the extracted files against the archive's members (so a file edited in the
extracted directory is detected too); a damaged extraction is re-extracted from the verified
archive, a damaged archive is deleted and fetched again.

Offline (``offline=True`` or ``KERAS_RELAXEQ_OFFLINE=1``): no network access at all. The cache and
*local* mirrors (plain directories, ``file://``) are still used, so an air-gapped machine can point
``KERAS_RELAXEQ_ZOO_URL`` at a copied folder of artifacts.

Read-only caches: when the entry is present and verifies, nothing is written. A read-only cache
that lacks the entry gives a :class:`CacheError` saying how to pre-fill it. Files and directories
are created with the permissions of the umask (0644 / 0755 under the usual 022), so a cache filled
by one user can be read by others.

Temporary files (``.tmp-download-*.part``, ``.tmp-extract-*``) hold an advisory lock while in use;
ones left behind by a killed process are removed the next time the entry is used.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import random
import secrets
import shutil
import socket
import math
import stat
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: stale temp files are recognised by age only
    fcntl = None

from keras_relaxeq.zoo.errors import (
    MIRROR_HINT,
    REPORT_URL_HINT,
    CacheError,
    DownloadError,
    HashMismatchError,
    KerasFormatUnavailableError,
    NetworkError,
    OfflineError,
    UnsafeArchiveError,
    InvalidSettingError,
    ZooError,
)
from keras_relaxeq.zoo.registry import Artifact, Catalogue, ZooEntry, load_index

ENV_CACHE = "KERAS_RELAXEQ_CACHE"
ENV_URL = "KERAS_RELAXEQ_ZOO_URL"
ENV_OFFLINE = "KERAS_RELAXEQ_OFFLINE"
ENV_MAX_TRIES = "KERAS_RELAXEQ_MAX_TRIES"
ENV_RETRY_DELAY = "KERAS_RELAXEQ_RETRY_DELAY"
ENV_TIMEOUT = "KERAS_RELAXEQ_TIMEOUT"
DEFAULT_CACHE = "~/.keras/keras_relaxeq"
EXTRACTED_DIRNAME = "saved_model"
CHUNK = 1 << 16

DEFAULT_MAX_TRIES = 5
DEFAULT_BASE_DELAY = 1.0
MAX_DELAY = 30.0
DEFAULT_TIMEOUT = 60.0
TRANSIENT_HTTP = frozenset({408, 425, 429})
_READ_ONLY_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})

#: An archive may expand to at most this many times the size the catalogue declares for it
#: (the published SavedModels expand 1.4-2.7 times); more is refused as a decompression bomb.
MAX_EXPANSION = 64
#: At most this many archive members (a SavedModel has a handful).
MAX_MEMBERS = 10_000
TMP_DOWNLOAD_PREFIX = ".tmp-download-"
TMP_DOWNLOAD_SUFFIX = ".part"
TMP_EXTRACT_PREFIX = ".tmp-extract-"
#: A temporary file or directory younger than this (seconds) is never treated as stale.
STALE_GRACE = 60.0
#: Where advisory locks are unavailable, a temporary entry is stale after this many seconds.
STALE_AGE_WITHOUT_LOCKS = 24 * 3600.0
#: Without a terminal, progress is one line at the start, one every LOG_INTERVAL seconds and one
#: at the end (a terminal gets a tqdm bar).
LOG_INTERVAL = 10.0


# ---------------------------------------------------------------------------------------------
# Configuration.
# ---------------------------------------------------------------------------------------------


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


def is_offline(offline: bool | None = None) -> bool:
    """``offline`` if given, else ``$KERAS_RELAXEQ_OFFLINE`` (1/true/yes/on or 0/false/no/off)."""
    if offline is not None:
        return bool(offline)
    raw = os.environ.get(ENV_OFFLINE, "")
    value = raw.strip().lower()
    if value not in _TRUE | _FALSE:
        raise InvalidSettingError(f"${ENV_OFFLINE}={raw!r} is not understood: set it to 1 (offline) "
                                  "or 0 (network allowed), or unset it.")
    return value in _TRUE


def _number_setting(value, env_var: str, arg: str, default, *, integer: bool, minimum: float,
                    strict: bool, what: str):
    """``value`` (an argument), else ``$env_var``, else ``default``, checked to be a finite
    number ``>= minimum`` (``> minimum`` if ``strict``); :class:`InvalidSettingError` otherwise."""
    if value is not None:
        source, raw = f"{arg}=", value
    else:
        raw = os.environ.get(env_var, "")
        if not raw.strip():
            return default
        source = f"${env_var}="
    try:
        if isinstance(raw, bool):
            raise ValueError
        if integer:
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError
            number = int(raw.strip() if isinstance(raw, str) else raw)
        else:
            number = float(raw.strip() if isinstance(raw, str) else raw)
        if not math.isfinite(number) or number < minimum or (strict and number == minimum):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        bound = f"{'>' if strict else '>='} {minimum:g}"
        kind = "an integer" if integer else "a number"
        raise InvalidSettingError(f"{source}{raw!r} is invalid: {what} must be {kind} {bound} "
                                  f"(default {default:g}).") from None
    return number


def cache_root(cache_dir=None) -> Path:
    """``cache_dir``, else ``$KERAS_RELAXEQ_CACHE``, else ``~/.keras/keras_relaxeq``."""
    raw = cache_dir if cache_dir is not None else os.environ.get(ENV_CACHE) or DEFAULT_CACHE
    return Path(raw).expanduser()


def entry_cache_dir(entry: ZooEntry, cache_dir=None) -> Path:
    return cache_root(cache_dir) / "zoo" / entry.name / str(entry.version)


def resolve_base_url(base_url=None, catalogue: Catalogue | None = None) -> str:
    if base_url:
        return str(base_url)
    env = os.environ.get(ENV_URL)
    if env:
        return env
    if catalogue is not None and catalogue.base_url:
        return catalogue.base_url
    if catalogue is None:
        catalogue = load_index()
    return str(catalogue.root)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential back-off: delay ``base_delay * 2**k`` (+ up to 10% jitter), capped."""

    max_tries: int = DEFAULT_MAX_TRIES
    base_delay: float = DEFAULT_BASE_DELAY
    max_delay: float = MAX_DELAY
    timeout: float = DEFAULT_TIMEOUT

    @classmethod
    def resolve(cls, max_tries=None, base_delay=None, timeout=None) -> "RetryPolicy":
        mt = _number_setting(max_tries, ENV_MAX_TRIES, "max_tries", DEFAULT_MAX_TRIES,
                             integer=True, minimum=1, strict=False, what="the number of tries")
        bd = _number_setting(base_delay, ENV_RETRY_DELAY, "base_delay", DEFAULT_BASE_DELAY,
                             integer=False, minimum=0, strict=False,
                             what="the first retry delay (seconds)")
        to = _number_setting(timeout, ENV_TIMEOUT, "timeout", DEFAULT_TIMEOUT, integer=False,
                             minimum=0, strict=True, what="the socket timeout (seconds)")
        return cls(max_tries=mt, base_delay=bd, timeout=to)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        d = self.base_delay * (2 ** (attempt - 1))
        d += random.uniform(0, 0.1 * d)
        if retry_after is not None:
            d = max(d, retry_after)
        return min(d, self.max_delay)


# ---------------------------------------------------------------------------------------------
# Sources.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where one artifact is fetched from: ``kind`` is ``"http"`` or ``"local"``."""

    kind: str
    location: str

    @property
    def is_network(self) -> bool:
        return self.kind == "http"


def artifact_source(base: str, artifact: Artifact) -> Source:
    rel = PurePosixPath(artifact.file)
    parsed = urllib.parse.urlparse(base)
    if parsed.scheme in ("http", "https"):
        url = base.rstrip("/") + "/" + urllib.parse.quote(rel.as_posix())
        return Source("http", url)
    if parsed.scheme == "file":
        root = Path(urllib.request.url2pathname(parsed.path))
        return Source("local", str(root.joinpath(*rel.parts)))
    if parsed.scheme and len(parsed.scheme) > 1:
        raise DownloadError(f"Unsupported base URL scheme {parsed.scheme!r} in {base!r}. "
                            + MIRROR_HINT, url=base)
    return Source("local", str(Path(base).expanduser().joinpath(*rel.parts)))


# ---------------------------------------------------------------------------------------------
# Hashing and verification.
# ---------------------------------------------------------------------------------------------


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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


# ---------------------------------------------------------------------------------------------
# Temporary files: created with the umask's permissions, locked while in use, stale ones removed.
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Safe extraction.
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Fetching.
# ---------------------------------------------------------------------------------------------


class _Truncated(Exception):
    """The transfer ended before Content-Length bytes arrived."""


def _retry_after(exc) -> float | None:
    if isinstance(exc, urllib.error.HTTPError) and exc.headers is not None:
        try:
            return float(exc.headers.get("Retry-After"))
        except (TypeError, ValueError):
            return None
    return None


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code in TRANSIENT_HTTP or 500 <= exc.code < 600
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        if isinstance(reason, socket.gaierror):
            return reason.errno == socket.EAI_AGAIN
        return isinstance(reason, (TimeoutError, socket.timeout, ConnectionError, OSError))
    return isinstance(exc, (_Truncated, TimeoutError, socket.timeout, ConnectionError,
                            http.client.HTTPException))


def _is_network_error(exc: BaseException) -> bool:
    return isinstance(exc, (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout,
                            http.client.HTTPException, _Truncated))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"{type(exc.reason).__name__}: {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


class _LogProgress:
    """Download progress for logs (stderr is not a terminal, where a tqdm bar would leave only
    its first ``0%`` state): a line at the start, one every :data:`LOG_INTERVAL` seconds, one
    when an attempt is abandoned and one at the end, each formatted by tqdm."""

    _FORMAT = "{desc}: {percentage:3.0f}% {n_fmt}B/{total_fmt}B [{elapsed}, {rate_fmt}]"

    def __init__(self, total: int, desc: str, file, interval: float):
        self.total, self.desc, self.file, self.interval = total, desc, file, interval
        self.n = 0
        self.start = self.last = time.monotonic()
        self._line()

    def _line(self, note: str = "") -> None:
        from tqdm import tqdm

        meter = tqdm.format_meter(self.n, self.total, time.monotonic() - self.start,
                                  prefix=self.desc, unit="B", unit_scale=True, unit_divisor=1024,
                                  bar_format=self._FORMAT)
        print(meter + note, file=self.file, flush=True)

    def update(self, n: int) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval and self.n < self.total:
            self.last = now
            self._line()

    def reset(self, total: int | None = None) -> None:
        if self.n:
            self._line(" (attempt failed; retrying)")
        self.total = self.total if total is None else total
        self.n = 0
        self.start = self.last = time.monotonic()

    def close(self) -> None:
        self._line(" done" if self.n == self.total else " (stopped)")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar on a terminal, periodic lines in logs, nothing when not ``enabled``."""
    from tqdm.auto import tqdm

    stream = sys.stderr
    if enabled and stream is not None and not (hasattr(stream, "isatty") and stream.isatty()):
        return _LogProgress(total, desc, stream, LOG_INTERVAL)
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                disable=not enabled, leave=False)


def _copy_stream(read, out, hasher, artifact: Artifact, bar, where: str) -> int:
    n = 0
    while True:
        chunk = read(CHUNK)
        if not chunk:
            return n
        n += len(chunk)
        if n > artifact.size:
            raise HashMismatchError(
                f"{where} sends more than the {artifact.size} bytes the catalogue publishes for "
                f"{artifact.file}; the mirror holds a different file. Nothing was cached. "
                + REPORT_URL_HINT, expected=artifact.sha256)
        hasher.update(chunk)
        out.write(chunk)
        bar.update(len(chunk))


def _fetch_once(source: Source, out, hasher, artifact: Artifact, bar, timeout: float) -> None:
    if source.kind == "local":
        try:
            f = open(source.location, "rb")
        except OSError as exc:
            missing = isinstance(exc, FileNotFoundError)
            raise DownloadError(
                f"The local mirror {'has no' if missing else 'cannot read'} {source.location} "
                f"(needed for {artifact.file}{'' if missing else ': ' + str(exc.strerror)}). "
                + MIRROR_HINT, url=source.location, tries=1) from None

        def read(n):
            try:
                return f.read(n)
            except OSError as exc:
                raise DownloadError(f"Reading {source.location} failed: {exc}.",
                                    url=source.location, tries=1) from None

        with f:
            _copy_stream(read, out, hasher, artifact, bar, source.location)
        return
    from keras_relaxeq.version import __version__

    req = urllib.request.Request(source.location, headers={
        "User-Agent": f"keras_relaxeq/{__version__} (+model zoo)",
        "Accept-Encoding": "identity",
    })
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        length = resp.headers.get("Content-Length")
        length = int(length) if length is not None and length.isdigit() else None
        if length is not None and length != artifact.size:
            raise HashMismatchError(
                f"{source.location} announces {length} bytes but the catalogue publishes "
                f"{artifact.size} bytes for {artifact.file}: the mirror holds a different file. "
                "Nothing was cached. " + REPORT_URL_HINT, expected=artifact.sha256)
        n = _copy_stream(resp.read, out, hasher, artifact, bar, source.location)
        if length is not None and n < length:
            raise _Truncated(f"received {n} of {length} bytes")
        if n < artifact.size:
            raise _Truncated(f"received {n} of {artifact.size} bytes")


def fetch(source: Source, dest: Path, artifact: Artifact, *, policy: RetryPolicy,
          progress: bool = True, desc: str = "") -> Path:
    """Fetch ``source`` to ``dest``: temp file next to it, hash while writing, size check,
    full sha256 check, atomic ``os.replace``. Retries transient failures with back-off.

    Nothing but a verified file is ever left at ``dest``; temp files are always removed.
    """
    tries = policy.max_tries if source.is_network else 1
    last = None
    with _progress_bar(artifact.size, desc or artifact.basename, progress) as bar:
        for attempt in range(1, tries + 1):
            bar.reset(total=artifact.size)
            hasher = hashlib.sha256()
            tmp, fd = _new_temp(dest.parent, TMP_DOWNLOAD_PREFIX, TMP_DOWNLOAD_SUFFIX)
            _lock(fd)  # released when the file is closed, or the process dies
            try:
                with os.fdopen(fd, "wb") as out:
                    _fetch_once(source, out, hasher, artifact, bar, policy.timeout)
                size = os.path.getsize(tmp)
                got = hasher.hexdigest()
                if size != artifact.size or got != artifact.sha256:
                    raise HashMismatchError(
                        f"Hash mismatch for {artifact.file} from {source.location}: expected "
                        f"sha256 {artifact.sha256} ({artifact.size} bytes), got {got} "
                        f"({size} bytes). The downloaded file was deleted and nothing was cached. "
                        "Either the mirror serves a different or corrupted file, or the catalogue "
                        "is wrong; do not disable the check. " + REPORT_URL_HINT,
                        expected=artifact.sha256, got=got, path=str(dest))
                os.replace(tmp, dest)
                return dest
            except (HashMismatchError, DownloadError):
                raise
            except Exception as exc:
                if not _is_network_error(exc):
                    raise  # local I/O (e.g. a read-only cache): the caller reports it
                if not _is_transient(exc):
                    raise DownloadError(
                        f"Could not download {source.location}: {_describe(exc)} (not retried: "
                        "not a transient error). Check the URL / mirror. " + MIRROR_HINT,
                        url=source.location, tries=attempt) from exc
                last = exc
                if attempt < tries:
                    time.sleep(policy.delay(attempt, _retry_after(exc)))
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
    raise NetworkError(
        f"Could not download {source.location} after {tries} tries; last error: "
        f"{_describe(last)}. Check your connection, retry later, raise the number of tries "
        f"(max_tries=..., ${ENV_MAX_TRIES}), or use a mirror. " + MIRROR_HINT,
        url=source.location, tries=tries)


# ---------------------------------------------------------------------------------------------
# Cache logic.
# ---------------------------------------------------------------------------------------------


def _is_read_only_error(exc: OSError) -> bool:
    return exc.errno in _READ_ONLY_ERRNOS


def _cache_error(exc: OSError, path, entry: ZooEntry) -> CacheError:
    return CacheError(
        f"Cannot write to the model cache at {path} ({exc.strerror or exc}) and it does not "
        f"already hold a verified copy of {entry.name} v{entry.version}. Use a writable cache "
        f"(${ENV_CACHE}=<dir> or cache_dir=...), or pre-fill this read-only cache from a "
        f"machine that has it: `{ENV_CACHE}=<dir> relaxeq zoo download {entry.name}` there, "
        f"then copy <dir>/zoo/{entry.name}/{entry.version}/ (archive and {EXTRACTED_DIRNAME}/) "
        "into this cache.")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _not_a_directory(path: Path) -> Path | None:
    """The first existing ancestor of ``path`` (or ``path``) that is not a directory, if any."""
    for p in (path, *path.parents):
        if p.exists():
            return None if p.is_dir() else p
        if p.is_symlink():  # dangling link
            return p
    return None


def _check_cache_path(edir: Path, cache_dir) -> None:
    blocker = _not_a_directory(edir)
    if blocker is not None:
        root = cache_root(cache_dir)
        raise CacheError(f"The model cache {root} cannot be used: {blocker} is a file, not a "
                         f"directory. Point {ENV_CACHE} (or --cache-dir / cache_dir=) at a "
                         "directory, or remove that file.")


def ensure_artifact(entry: ZooEntry, artifact: Artifact, *, catalogue: Catalogue | None = None,
                    cache_dir=None, base_url=None, offline=None, progress=True,
                    extract: bool = True, fetch_missing: bool = True, max_tries=None,
                    base_delay=None, timeout=None) -> Path | None:
    """Verified path of ``artifact`` of ``entry`` in the cache, fetching it if needed.

    With ``extract`` the extracted SavedModel directory is returned, else the file itself.
    With ``fetch_missing=False`` nothing is fetched and ``None`` means "not cached".
    Problems with the cache directory itself (a file where a directory should be, no space
    left, ...) are reported as :class:`CacheError`.
    """
    offline = is_offline(offline)
    policy = RetryPolicy.resolve(max_tries, base_delay, timeout) if fetch_missing else None
    edir = entry_cache_dir(entry, cache_dir)
    _check_cache_path(edir, cache_dir)
    try:
        return _ensure_artifact(entry, artifact, edir, catalogue=catalogue, cache_dir=cache_dir,
                                base_url=base_url, offline=offline, progress=progress,
                                extract=extract, fetch_missing=fetch_missing, policy=policy)
    except OSError as exc:
        where = exc.filename or edir
        hint = (" A cache shared by several users must be readable by all of them (on the "
                "machine that filled it: chmod -R a+rX <cache>)."
                if exc.errno in (errno.EACCES, errno.EPERM) else "")
        raise CacheError(f"Cannot use the model cache at {edir} for {entry.name} "
                         f"v{entry.version}: {exc.strerror or exc} ({where}). Fix or free that "
                         f"location, or point {ENV_CACHE} (or --cache-dir / cache_dir=) at "
                         f"another directory.{hint}") from None


def _ensure_artifact(entry: ZooEntry, artifact: Artifact, edir: Path, *, catalogue, cache_dir,
                     base_url, offline: bool, progress, extract: bool, fetch_missing: bool,
                     policy: RetryPolicy | None) -> Path | None:
    archive = edir / artifact.basename
    target = edir / EXTRACTED_DIRNAME
    label = f"{entry.name} v{entry.version}"
    max_bytes = extraction_limit(artifact)
    if edir.is_dir():
        clean_stale_temp(edir)  # left by killed downloads; a read-only cache keeps them
    if (archive.exists() or archive.is_symlink()) and not archive.is_file():
        raise CacheError(f"{archive} is in the way: the archive of {label} belongs there, but it "
                         f"is a directory or a special file. Remove it (rm -r {archive}) and run "
                         "again.")

    def source() -> Source:
        return artifact_source(resolve_base_url(base_url, catalogue), artifact)

    if archive.is_file():
        problem = _check_file(archive, artifact)
        if problem is None:
            if not extract:
                return archive
            if target.is_dir():
                problems = tree_problems(target, archive_manifest(archive))
                if not problems:
                    return target  # verified cache hit: nothing written
                try:
                    shutil.rmtree(target)
                except OSError as exc:
                    raise HashMismatchError(
                        f"The extracted files of {label} in the read-only cache {target} do not "
                        f"match its verified archive ({'; '.join(problems[:3])}) and cannot be "
                        f"repaired here ({exc.strerror}). Re-extract {archive} there, or delete "
                        f"{target} on a writable copy.", path=str(target)) from None
                warnings.warn(f"Extracted files of {label} in {target} were modified "
                              f"({'; '.join(problems[:3])}); re-extracting from the verified "
                              "archive.", RuntimeWarning, stacklevel=3)
            try:
                if target.exists() or target.is_symlink():
                    _remove(target)  # not a directory: cannot be ours
                return safe_extract(archive, target, max_bytes=max_bytes)
            except OSError as exc:
                if _is_read_only_error(exc):
                    raise _cache_error(exc, edir, entry) from None
                raise
        # A damaged archive in the cache.
        msg = (f"The cached archive {archive} of {label} is corrupted ({problem}; expected "
               f"sha256 {artifact.sha256}).")
        try:
            _remove(archive)
            if target.exists():
                _remove(target)
        except OSError as exc:
            raise HashMismatchError(
                msg + f" The cache is read-only ({exc.strerror}), so it was not deleted: replace "
                "it with a good copy, or point " + ENV_CACHE + " elsewhere.",
                expected=artifact.sha256, path=str(archive)) from None
        if not fetch_missing:
            raise HashMismatchError(msg + " It was deleted; download it again.",
                                    expected=artifact.sha256, path=str(archive))
        src = source()
        if offline and src.is_network:
            raise HashMismatchError(
                msg + f" It was deleted. Download it again with network access (unset "
                f"{ENV_OFFLINE}), or point {ENV_URL} at a local mirror.",
                expected=artifact.sha256, path=str(archive))
        warnings.warn(msg + " It was deleted and is fetched again.", RuntimeWarning, stacklevel=3)
    elif not fetch_missing:
        return None

    src = source()
    if offline and src.is_network:
        raise OfflineError(
            f"Offline mode is on ({ENV_OFFLINE}=1 or offline=True) and {label} is not in the "
            f"cache {cache_root(cache_dir)}. Pre-fill the cache: on a machine with network run "
            f"`{ENV_CACHE}=<dir> relaxeq zoo download {entry.name}` and copy <dir> here (or set "
            f"{ENV_CACHE} to it), or set {ENV_URL} to a local directory holding the artifacts "
            f"({artifact.file}); local mirrors are allowed offline.")
    try:
        edir.mkdir(parents=True, exist_ok=True)
        fetch(src, archive, artifact, policy=policy, progress=progress, desc=label)
    except OSError as exc:
        if _is_read_only_error(exc):
            raise _cache_error(exc, edir, entry) from None
        raise
    if not extract:
        return archive
    try:
        if target.exists():
            _remove(target)
        return safe_extract(archive, target, max_bytes=max_bytes)
    except UnsafeArchiveError:
        _remove(archive)
        raise
    except OSError as exc:
        if _is_read_only_error(exc):
            raise _cache_error(exc, edir, entry) from None
        raise


def download(name: str, version: int | None = None, *, cache_dir=None, base_url=None,
             offline: bool | None = None, progress: bool = True, index=None,
             max_tries: int | None = None, base_delay: float | None = None,
             timeout: float | None = None) -> Path:
    """Path of the verified, extracted SavedModel directory of ``name`` (latest version default).

    Args:
        cache_dir: cache root (default ``$KERAS_RELAXEQ_CACHE`` or ``~/.keras/keras_relaxeq``).
        base_url: mirror (http(s) URL, file:// URL or local directory); default
            ``$KERAS_RELAXEQ_ZOO_URL``, the catalogue's ``base_url``, or the catalogue's folder.
        offline: forbid network access (default ``$KERAS_RELAXEQ_OFFLINE``); local mirrors and
            the cache still work.
        progress: show a tqdm progress bar while fetching.
        index: catalogue file to use instead of ``$KERAS_RELAXEQ_ZOO_INDEX`` / ``zoo/index.json``.
        max_tries, base_delay, timeout: retry policy for transient network errors (defaults
            5 tries, 1 s doubling, 60 s socket timeout; env ``KERAS_RELAXEQ_MAX_TRIES``,
            ``KERAS_RELAXEQ_RETRY_DELAY``, ``KERAS_RELAXEQ_TIMEOUT``).

    Raises the typed errors of :mod:`keras_relaxeq.zoo.errors`.
    """
    cat = load_index(index)
    entry = cat.get(name, version)
    return ensure_artifact(entry, entry.artifact, catalogue=cat, cache_dir=cache_dir,
                           base_url=base_url, offline=offline, progress=progress,
                           max_tries=max_tries, base_delay=base_delay, timeout=timeout)


def cached_path(name: str, version: int | None = None, *, cache_dir=None, index=None):
    """Verified extracted directory of ``name`` if it is in the cache, else ``None``; never
    fetches (a damaged extraction is repaired from the verified archive when writable)."""
    cat = load_index(index)
    entry = cat.get(name, version)
    return ensure_artifact(entry, entry.artifact, catalogue=cat, cache_dir=cache_dir,
                           fetch_missing=False, progress=False)


# ---------------------------------------------------------------------------------------------
# Loading.
# ---------------------------------------------------------------------------------------------


class ServingModel:
    """A loaded zoo SavedModel's ``serving_default`` signature as a plain callable.

    ``model(points)`` takes a ``[batch, points, 3]`` (or a single ``[points, 3]``) array and
    returns a dict of NumPy arrays (``logits``, ``probabilities``, ``class_id`` for classifiers).
    Models with several inputs take them by name or as one dict, e.g. an N-body model
    ``model(loc=..., vel=..., charges=...)`` or ``model({"loc": ..., "vel": ..., "charges": ...})``
    (``[batch, 5, 3]``, ``[batch, 5, 3]``, ``[batch, 5, 1]``, or one system without the batch
    axis), returning ``{"loc": predicted positions}``.
    ``model.signature`` is the raw concrete function, ``model.path`` the SavedModel directory.
    """

    def __init__(self, path: Path, entry: ZooEntry | None = None):
        import tensorflow as tf

        self.path = Path(path)
        self.entry = entry
        self._loaded = tf.saved_model.load(str(self.path))  # keeps the variables alive
        self.signature = self._loaded.signatures["serving_default"]
        _, kwargs = self.signature.structured_input_signature
        self.input_specs = dict(kwargs)
        self.output_names = sorted(self.signature.structured_outputs)
        if entry is not None and entry.input_name in self.input_specs:
            self.input_name = entry.input_name
        else:
            self.input_name = next(iter(self.input_specs))

    def __call__(self, points=None, **inputs) -> dict:
        import numpy as np
        import tensorflow as tf

        if isinstance(points, Mapping):
            inputs = {**points, **inputs}
        elif points is not None:
            inputs[self.input_name] = points
        unknown = set(inputs) - set(self.input_specs)
        if unknown or not inputs:
            raise TypeError(f"Inputs must be {sorted(self.input_specs)}; got {sorted(inputs)}.")
        missing = set(self.input_specs) - set(inputs)
        if missing:
            raise TypeError(f"Missing inputs {sorted(missing)}: this model takes "
                            f"{sorted(self.input_specs)}; pass them by name, e.g. "
                            f"model({', '.join(f'{k}=...' for k in sorted(self.input_specs))}).")
        squeeze = False
        feed = {}
        for key, value in inputs.items():
            spec = self.input_specs[key]
            t = tf.convert_to_tensor(np.asarray(value), dtype=spec.dtype)
            if spec.shape.rank is not None and t.shape.rank == spec.shape.rank - 1:
                t, squeeze = t[tf.newaxis], True
            if self.entry is not None and key == self.entry.input_name:
                self.entry.check_num_points(t)  # warns: the answers change with the point count
            feed[key] = t
        out = self.signature(**feed)
        return {k: (v.numpy()[0] if squeeze else v.numpy()) for k, v in out.items()}

    def __repr__(self):
        label = f"{self.entry.name} v{self.entry.version}" if self.entry else str(self.path)
        return f"<ServingModel {label}: inputs {sorted(self.input_specs)} -> {self.output_names}>"


def load(name: str, version: int | None = None, *, as_keras: bool = False, cache_dir=None,
         base_url=None, offline: bool | None = None, progress: bool = True, index=None,
         **download_kwargs):
    """Download (if needed), verify and load a zoo model.

    Returns a :class:`ServingModel` (callable on a ``points`` array, or on its named inputs for
    models with several, e.g. ``loc``, ``vel``, ``charges``; returns the output dict).
    ``as_keras=True`` returns a ``keras.Model`` loaded from the entry's ``.keras`` file, if the
    entry publishes one; otherwise :class:`KerasFormatUnavailableError` says what exists.  The
    model is not compiled (the file's training-time loss and empty optimizer state are not
    restored): call ``compile`` with your own optimizer and loss to fine-tune it.
    """
    cat = load_index(index)
    entry = cat.get(name, version)
    common = dict(catalogue=cat, cache_dir=cache_dir, base_url=base_url, offline=offline,
                  progress=progress, **download_kwargs)
    if as_keras:
        if entry.keras_artifact is None:
            raise KerasFormatUnavailableError(
                f"{entry.name} v{entry.version} publishes only a SavedModel "
                f"({entry.artifact.file}), no .keras file. Use load({entry.name!r}) for the "
                "serving callable, keras.layers.TFSMLayer(download(name), "
                "call_endpoint='serving_default') to use it inside a Keras model, or rebuild "
                f"the architecture ({entry.architecture.get('class')}) and retrain it with its "
                "recipe.")
        path = ensure_artifact(entry, entry.keras_artifact, extract=False, **common)
        import keras

        # the custom classes are registered: importing this module imported keras_relaxeq
        return keras.saving.load_model(path, compile=False)
    path = ensure_artifact(entry, entry.artifact, **common)
    return ServingModel(path, entry)


__all__ = [
    "DEFAULT_CACHE",
    "ENV_CACHE",
    "ENV_OFFLINE",
    "ENV_URL",
    "RetryPolicy",
    "ServingModel",
    "Source",
    "archive_manifest",
    "artifact_source",
    "cache_root",
    "cached_path",
    "check_members",
    "clean_stale_temp",
    "download",
    "ensure_artifact",
    "entry_cache_dir",
    "extraction_limit",
    "fetch",
    "is_offline",
    "load",
    "resolve_base_url",
    "safe_extract",
    "sha256_file",
    "tree_problems",
]
