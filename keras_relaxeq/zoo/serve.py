"""Laying out downloaded zoo entries for TF Serving (``relaxeq zoo serve-config``).

:func:`serve_config` copies (or links) each cached, verified entry to ``<base>/<name>/<version>/``
and adds ``<name>`` to the ``models.config`` of ``base``. An existing version folder must match the
verified archive; nothing is copied when ``models.config`` cannot be updated. TensorFlow is not
imported.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from keras_relaxeq.export.models_config import MODELS_CONFIG, read_models_config, update_models_config
from keras_relaxeq.zoo import registry
from keras_relaxeq.zoo.archive import archive_manifest, tree_problems
from keras_relaxeq.zoo.cache import cached_path, download
from keras_relaxeq.zoo.errors import ZooError
from keras_relaxeq.zoo.settings import entry_cache_dir

__all__ = ["check_serving_base", "serve_config"]


def check_serving_base(base: Path) -> None:
    """Before anything is copied: ``base`` (or an existing parent) is a directory, and an existing
    ``models.config`` in it can be parsed and updated."""
    for p in (base, *base.parents):
        if p.exists():
            if not p.is_dir():
                raise ZooError(f"--base-dir {base}: {p} is a file, not a directory; pass a "
                               "directory (created if missing).")
            break
    config = base / MODELS_CONFIG
    try:
        read_models_config(config)
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ZooError(f"{config} cannot be updated ({str(detail).rstrip('.')}); fix or remove it "
                       "and run again. Nothing was copied.") from None


def _place(src: Path, dest: Path, link: bool) -> None:
    """``dest`` becomes a copy of (or, with ``link``, a symlink to) the directory ``src``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if link:
        os.symlink(src.resolve(), dest, target_is_directory=True)
        return
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{dest.name}-", dir=dest.parent))
    try:
        shutil.copytree(src, tmp / "v")  # copies: never share inodes with the cache
        os.replace(tmp / "v", dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def serve_config(names=(), *, base_dir, out, index=None, cache_dir=None, fetch_missing=False,
                 progress=True, model_base_path_prefix=None, link=False) -> int:
    """Lay out the entries ``names`` (default: all) under ``base_dir`` and write its
    ``models.config``; one line per entry on ``out``. Entries not in the cache are skipped, or
    downloaded with ``fetch_missing``. ``model_base_path_prefix`` is ``base_dir`` as TF Serving
    sees it (default: its absolute path). Returns the exit status (0)."""
    cat = registry.load_index(index)
    base = Path(base_dir).expanduser()
    entries = sorted(cat.entries, key=lambda e: (e.name, e.version))
    if names:
        wanted = {cat.get(name).name for name in names}  # unknown names: typed error, close matches
        entries = [e for e in entries if e.name in wanted]
    check_serving_base(base)
    prefix = model_base_path_prefix or str(base.resolve())
    served = {}
    for e in entries:
        src = cached_path(e.name, e.version, cache_dir=cache_dir, index=index)
        if src is None and fetch_missing:
            src = download(e.name, e.version, cache_dir=cache_dir, index=index, progress=progress)
        if src is None:
            print(f"skip  {e.name} v{e.version}: not downloaded (relaxeq zoo download "
                  f"{e.name} --version {e.version}, or serve-config --download)", file=out)
            continue
        dest = base / e.name / str(e.version)
        if dest.exists() or dest.is_symlink():
            manifest = archive_manifest(entry_cache_dir(e, cache_dir) / e.artifact.basename)
            problems = tree_problems(dest, manifest)
            if problems:
                raise ZooError(f"{dest} exists and differs from the verified "
                               f"{e.name} v{e.version} ({'; '.join(problems[:3])}); "
                               "remove it and run again.")
        else:
            _place(src, dest, link)
        served[e.name] = prefix.rstrip("/") + "/" + e.name
        print(f"serve {e.name} v{e.version}: {dest}", file=out)
    if not served:
        print("No downloaded entries; models.config not written. Download some with "
              "`relaxeq zoo download NAME`, or add --download.", file=out)
        return 0
    config = update_models_config(base, served)
    print(f"wrote {config}", file=out)
    print("Serve with:\n  docker run -p 8501:8501 -v "
          f"{base.resolve()}:/models -t tensorflow/serving "
          "--model_config_file=/models/models.config"
          + ("" if model_base_path_prefix == "/models" else
             "\n  (write the config with --model-base-path-prefix /models for that mount)"),
          file=out)
    return 0
