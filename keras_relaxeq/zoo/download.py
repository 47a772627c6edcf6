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

The work is done by cohesive modules, re-exported here: :mod:`~keras_relaxeq.zoo.settings`
(environment, cache root, mirror, retry policy), :mod:`~keras_relaxeq.zoo.fetch` (HTTP / local
fetching with retries), :mod:`~keras_relaxeq.zoo.tempfiles` (locked temporary files),
:mod:`~keras_relaxeq.zoo.archive` (verification and safe extraction), :mod:`~keras_relaxeq.zoo.cache`
(the cache layout, :func:`download`) and :mod:`~keras_relaxeq.zoo.loading` (:class:`ServingModel`,
:func:`load`, :func:`classify`).
"""

# ruff: noqa: F401  (this module re-exports the client API of its parts)
from keras_relaxeq.utils import sha256_file
from keras_relaxeq.zoo.archive import (
    MAX_EXPANSION,
    MAX_MEMBERS,
    archive_manifest,
    check_members,
    extraction_limit,
    safe_extract,
    tree_problems,
)
from keras_relaxeq.zoo.cache import EXTRACTED_DIRNAME, cached_path, download, ensure_artifact
from keras_relaxeq.zoo.fetch import CHUNK, LOG_INTERVAL, TRANSIENT_HTTP, Source, artifact_source, fetch
from keras_relaxeq.zoo.loading import ServingModel, classify, load
from keras_relaxeq.zoo.settings import (
    DEFAULT_BASE_DELAY,
    DEFAULT_CACHE,
    DEFAULT_MAX_TRIES,
    DEFAULT_TIMEOUT,
    ENV_CACHE,
    ENV_MAX_TRIES,
    ENV_OFFLINE,
    ENV_RETRY_DELAY,
    ENV_TIMEOUT,
    ENV_URL,
    MAX_DELAY,
    RetryPolicy,
    cache_root,
    entry_cache_dir,
    is_offline,
    resolve_base_url,
)
from keras_relaxeq.zoo.tempfiles import (
    STALE_AGE_WITHOUT_LOCKS,
    STALE_GRACE,
    TMP_DOWNLOAD_PREFIX,
    TMP_DOWNLOAD_SUFFIX,
    TMP_EXTRACT_PREFIX,
    _lock,
    clean_stale_temp,
)

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
    "classify",
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
