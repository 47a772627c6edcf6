"""Fetching one zoo artifact from a mirror (HTTP(S), ``file://`` or a local directory) into the cache.

:func:`fetch` writes a locked temporary file beside the destination, hashes while writing, checks
the size and sha256 against the catalogue and renames the file into place; transient network
errors (timeouts, resets, HTTP 408 / 425 / 429 / 5xx) are retried with the back-off of a
:class:`~keras_relaxeq.zoo.settings.RetryPolicy`.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from keras_relaxeq.zoo.errors import (
    MIRROR_HINT,
    REPORT_URL_HINT,
    DownloadError,
    HashMismatchError,
    NetworkError,
)
from keras_relaxeq.zoo.registry import Artifact
from keras_relaxeq.zoo.settings import ENV_MAX_TRIES, RetryPolicy
from keras_relaxeq.zoo.tempfiles import TMP_DOWNLOAD_PREFIX, TMP_DOWNLOAD_SUFFIX, _lock, _new_temp

CHUNK = 1 << 16
TRANSIENT_HTTP = frozenset({408, 425, 429})
#: Without a terminal, progress is one line at the start, one every LOG_INTERVAL seconds and one
#: at the end (a terminal gets a tqdm bar).
LOG_INTERVAL = 10.0


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
