"""Typed errors of the model zoo.

Every message says what went wrong *and* what to do about it. All errors derive from
:class:`ZooError`, so ``except ZooError`` catches every zoo failure; they never masquerade as one
another (a network failure is not reported as "not found", a corrupted file not as a network
failure).
"""

from __future__ import annotations

import difflib
from typing import Iterable, Sequence

REPORT_URL_HINT = (
    "If a fresh download fails the same way, report it: open an issue in the keras_relaxeq "
    "repository quoting this message."
)

MIRROR_HINT = (
    "To use a mirror, pass base_url=... (CLI: --base-url) or set KERAS_RELAXEQ_ZOO_URL to an "
    "http(s) URL, a file:// URL or a local directory that holds the artifacts at the same "
    "relative paths as the catalogue."
)


class ZooError(Exception):
    """Base class of every model-zoo error."""


class InvalidIndexError(ZooError):
    """The catalogue file (``zoo/index.json``) is missing or malformed."""


class UnknownModelError(ZooError, KeyError):
    """No catalogue entry has this name (or this version)."""

    def __init__(self, name: str, known: Iterable[str] = (), *, version=None,
                 versions: Sequence[int] = ()):
        self.name = name
        self.version = version
        self.known = sorted(set(known))
        self.versions = list(versions)
        self.suggestions: list[str] = []
        if version is not None and self.versions:
            msg = (f"Model {name!r} has no version {version!r}; available versions: "
                   f"{', '.join(str(v) for v in self.versions)} (give no version for the latest, "
                   f"{self.versions[-1]}).")
        else:
            self.suggestions = difflib.get_close_matches(name, self.known, n=3, cutoff=0.5)
            msg = f"Unknown model {name!r}."
            if self.suggestions:
                msg += " Did you mean " + " or ".join(repr(s) for s in self.suggestions) + "?"
            elif not self.known:
                msg += " The catalogue is empty."
            msg += " Run `relaxeq zoo list` (or keras_relaxeq.zoo.list_models()) to see all models."
        super().__init__(msg)

    def __str__(self):  # KeyError would otherwise repr() the message
        return self.args[0]


class InvalidSettingError(ZooError, ValueError):
    """An argument or environment variable of the zoo client has an invalid value."""


class CacheError(ZooError):
    """The cache cannot be used (for example read-only and missing the entry)."""


class DownloadError(ZooError):
    """The artifact could not be fetched (not found at the mirror, HTTP error, ...)."""

    def __init__(self, message: str, *, url: str | None = None, tries: int | None = None):
        self.url = url
        self.tries = tries
        super().__init__(message)


class NetworkError(DownloadError):
    """Transient network failures persisted after every retry."""


class OfflineError(ZooError):
    """Offline mode is on and the artifact is not in the cache (nor in a local mirror)."""


class HashMismatchError(ZooError):
    """A file does not have the sha256 (or size) that the catalogue publishes."""

    def __init__(self, message: str, *, expected: str | None = None, got: str | None = None,
                 path=None):
        self.expected = expected
        self.got = got
        self.path = path
        super().__init__(message)


class UnsafeArchiveError(ZooError):
    """An archive member would escape the extraction directory or is not a plain file/dir."""


class KerasFormatUnavailableError(ZooError, NotImplementedError):
    """``load(..., as_keras=True)`` on an entry that publishes no ``.keras`` file."""


__all__ = [
    "CacheError",
    "DownloadError",
    "HashMismatchError",
    "InvalidIndexError",
    "InvalidSettingError",
    "KerasFormatUnavailableError",
    "NetworkError",
    "OfflineError",
    "UnknownModelError",
    "UnsafeArchiveError",
    "ZooError",
]
