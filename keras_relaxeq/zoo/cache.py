"""The zoo cache: ``<cache root>/zoo/<name>/<version>/`` holds the archive as published and its
extracted ``saved_model/`` directory.

:func:`ensure_artifact` re-verifies the archive (size, sha256) and the extracted files (against the
archive's members) on every use, repairs a damaged extraction from the verified archive, deletes and
fetches again a damaged archive, and writes nothing when a (possibly read-only) cache verifies.
"""

from __future__ import annotations

import errno
import shutil
import warnings
from pathlib import Path

from keras_relaxeq.zoo.archive import (
    _READ_ONLY_ERRNOS,
    _check_file,
    archive_manifest,
    extraction_limit,
    safe_extract,
    tree_problems,
)
from keras_relaxeq.zoo.errors import CacheError, HashMismatchError, OfflineError, UnsafeArchiveError
from keras_relaxeq.zoo.fetch import Source, artifact_source, fetch
from keras_relaxeq.zoo.registry import Artifact, Catalogue, ZooEntry, load_index
from keras_relaxeq.zoo.settings import (
    ENV_CACHE,
    ENV_OFFLINE,
    ENV_URL,
    RetryPolicy,
    cache_root,
    entry_cache_dir,
    is_offline,
    resolve_base_url,
)
from keras_relaxeq.zoo.tempfiles import _remove, clean_stale_temp

EXTRACTED_DIRNAME = "saved_model"


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
