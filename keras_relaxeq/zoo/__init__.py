"""Model zoo client: the catalogue (``zoo/index.json``), verified downloads and loading.

    from keras_relaxeq import zoo
    zoo.list_models()                       # names in the catalogue
    zoo.get_entry("vn_pointnet_so3_modelnet40")  # latest version's metadata
    model = zoo.load("vn_pointnet_so3_modelnet40")
    out = model(points)                     # {"logits", "probabilities", "class_id"}

Environment: ``KERAS_RELAXEQ_CACHE`` (cache root, default ``~/.keras/keras_relaxeq``),
``KERAS_RELAXEQ_ZOO_URL`` (mirror), ``KERAS_RELAXEQ_OFFLINE=1`` (no network),
``KERAS_RELAXEQ_ZOO_INDEX`` (another catalogue). See ``zoo/README.md``.

Importing this package does not import TensorFlow (only loading a model does), so ``relaxeq zoo
list`` and ``info`` start quickly; ``keras_relaxeq.zoo`` is also reachable as an attribute of
``keras_relaxeq`` without importing it first.

Modules: ``registry`` (the catalogue), ``download`` (the client API, re-exporting ``settings``,
``fetch``, ``tempfiles``, ``archive``, ``cache`` and ``loading``), ``verify`` (the checks of
``relaxeq zoo verify``), ``serve`` (TF Serving layout) and ``publish`` (recipe runs -> entries).
"""

from keras_relaxeq.zoo.download import (
    ServingModel,
    cache_root,
    classify,
    cached_path,
    download,
    entry_cache_dir,
    load,
)
from keras_relaxeq.zoo.errors import (
    CacheError,
    DownloadError,
    HashMismatchError,
    InvalidIndexError,
    InvalidSettingError,
    KerasFormatUnavailableError,
    NetworkError,
    OfflineError,
    UnknownModelError,
    UnsafeArchiveError,
    ZooError,
)
from keras_relaxeq.zoo.registry import (
    Artifact,
    ZooEntry,
    get_entry,
    list_entries,
    list_models,
    load_index,
    model_card,
)

__all__ = [
    "Artifact",
    "CacheError",
    "DownloadError",
    "HashMismatchError",
    "InvalidIndexError",
    "InvalidSettingError",
    "KerasFormatUnavailableError",
    "NetworkError",
    "OfflineError",
    "ServingModel",
    "UnknownModelError",
    "UnsafeArchiveError",
    "ZooEntry",
    "ZooError",
    "cache_root",
    "cached_path",
    "classify",
    "download",
    "entry_cache_dir",
    "get_entry",
    "list_entries",
    "list_models",
    "load",
    "load_index",
    "model_card",
]
