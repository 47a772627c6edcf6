"""ModelNet40 point clouds: readers, preprocessing, validation split, ``tf.data`` pipeline.

Two public on-disk layouts are read:

* ``modelnet40_ply_hdf5_2048`` (PointNet): ``shape_names.txt``, ``train_files.txt`` /
  ``test_files.txt`` listing ``ply_data_*.h5`` files with datasets ``data`` float32
  ``[n, P, 3]`` and ``label`` uint8 ``[n, 1]``; optional ``ply_data_<split>_<i>_id2file.json``.
  Any number of points ``P`` per shape (the shared copy ``modelnet40_aligned_1024`` has 1024).
* ``modelnet40_normal_resampled`` (PointNet++): ``modelnet40_shape_names.txt``,
  ``modelnet40_train.txt`` / ``modelnet40_test.txt`` listing ids such as ``airplane_0001``,
  and files ``airplane/airplane_0001.txt`` with ``x,y,z,nx,ny,nz`` per line (xyz is used).

Data are loaded into memory once per process (see :func:`load_modelnet40` and
:func:`clear_cache`).  :func:`modelnet40_dataset` builds the training / evaluation pipeline
of the paper (``docs/method.md`` section 9).

Randomness in the pipeline.  Every random draw is stateless: each element's seed is
``fold_in(epoch_seed, shape_index)`` and every augmentation step uses its own slot of
``stateless_split`` of that seed, so the pipeline is a pure function of ``seed`` and the
epoch.  The epoch seed is ``[seed, key]``, where ``key`` comes from
``tf.data.Dataset.random(seed, rerandomize_each_iteration=True)``: every new iteration of
the same dataset object (a new Keras epoch, or a ``.repeat()``) draws a new key, and two
pipelines built with the same ``seed`` see the same sequence of keys.  (Like every seeded
``tf.data`` op, the key sequence also depends on TensorFlow's global seed when one is set
with ``tf.random.set_seed``.)  With ``reseed_each_epoch=False`` (the default for ``"val"``
and ``"test"``) the key is a constant, so evaluation sees the same points and rotations
every epoch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import threading
from pathlib import Path

import h5py
import numpy as np
import tensorflow as tf

from keras_relaxeq.groups.so3 import random_rotations, random_z_rotations

__all__ = [
    "DATA_ENV_VAR",
    "DATA_SUBDIRS",
    "DEFAULT_DATA_ROOT",
    "MODELNET40_CLASSES",
    "ModelNet40Data",
    "available_splits",
    "clear_cache",
    "detect_layout",
    "load_modelnet40",
    "modelnet40_dataset",
    "recipe_validation_dataset",
    "normalize_point_clouds",
    "random_point_dropout",
    "read_modelnet40",
    "resolve_data_dir",
    "stratified_split",
]

DATA_ENV_VAR = "KERAS_RELAXEQ_DATA"
"""Environment variable naming a folder that contains ``modelnet40_aligned_1024/``."""

DATA_SUBDIRS = ("modelnet40_aligned_1024", "modelnet40_ply_hdf5_2048", "modelnet40_normal_resampled")
"""Sub-folder names searched (in this order) below a data root."""

DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data"
"""Fallback data root: ``<repo>/../shared/data``."""

MODELNET40_CLASSES = (
    "airplane",
    "bathtub",
    "bed",
    "bench",
    "bookshelf",
    "bottle",
    "bowl",
    "car",
    "chair",
    "cone",
    "cup",
    "curtain",
    "desk",
    "door",
    "dresser",
    "flower_pot",
    "glass_box",
    "guitar",
    "keyboard",
    "lamp",
    "laptop",
    "mantel",
    "monitor",
    "night_stand",
    "person",
    "piano",
    "plant",
    "radio",
    "range_hood",
    "sink",
    "sofa",
    "stairs",
    "stool",
    "table",
    "tent",
    "toilet",
    "tv_stand",
    "vase",
    "wardrobe",
    "xbox",
)
"""The 40 class names in the official (alphabetical) label order."""

SPLITS = ("train", "test")
HDF5 = "hdf5"
TEXT = "text"
_HDF5_LISTS = {"train": "train_files.txt", "test": "test_files.txt"}
_TEXT_LISTS = {"train": "modelnet40_train.txt", "test": "modelnet40_test.txt"}
_HDF5_NAMES = "shape_names.txt"
_TEXT_NAMES = "modelnet40_shape_names.txt"
_DEFAULT_MIN_SCALE = 1e-6


@dataclasses.dataclass(frozen=True)
class ModelNet40Data:
    """One split in memory.

    ``points`` float32 ``[n, P, 3]``, ``labels`` int32 ``[n]``, ``class_names`` (label order),
    ``shape_ids`` (e.g. ``"airplane/airplane_0001"``, or ``None`` when the files do not
    record them), the folder read and its ``layout`` (``"hdf5"`` or ``"text"``).
    """

    points: np.ndarray
    labels: np.ndarray
    class_names: tuple
    shape_ids: tuple | None
    data_dir: Path
    layout: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])


# ----------------------------------------------------------------------------- locating data


def detect_layout(data_dir) -> str | None:
    """``"hdf5"``, ``"text"`` or ``None`` for the files directly inside ``data_dir``."""
    d = Path(data_dir)
    if (d / _HDF5_NAMES).is_file() and any((d / f).is_file() for f in _HDF5_LISTS.values()):
        return HDF5
    if (d / _TEXT_NAMES).is_file() and any((d / f).is_file() for f in _TEXT_LISTS.values()):
        return TEXT
    return None


def _find_layout_dir(root: Path) -> Path | None:
    if root.is_dir():
        if detect_layout(root):
            return root
        for sub in DATA_SUBDIRS:
            if detect_layout(root / sub):
                return root / sub
    return None


_LAYOUT_HELP = (
    f"expected {_HDF5_NAMES} with {_HDF5_LISTS['train']}/{_HDF5_LISTS['test']} "
    f"(modelnet40_ply_hdf5_2048 layout) or {_TEXT_NAMES} with "
    f"{_TEXT_LISTS['train']}/{_TEXT_LISTS['test']} (modelnet40_normal_resampled layout), "
    f"directly in the folder or in a sub-folder named one of {', '.join(DATA_SUBDIRS)}"
)


def resolve_data_dir(data_dir=None) -> Path:
    """The folder holding the ModelNet40 files.

    Order: ``data_dir`` (the layout folder itself or a parent of one of
    :data:`DATA_SUBDIRS`), else ``$KERAS_RELAXEQ_DATA``, else ``<repo>/../shared/data``.
    An explicit ``data_dir`` or environment variable that holds no data is an error (no
    silent fallback).
    """
    if data_dir is not None:
        found = _find_layout_dir(Path(data_dir).expanduser())
        if found is None:
            raise FileNotFoundError(f"No ModelNet40 data in data_dir={str(data_dir)!r}: {_LAYOUT_HELP}.")
        return found
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        found = _find_layout_dir(Path(env).expanduser())
        if found is None:
            raise FileNotFoundError(
                f"No ModelNet40 data in ${DATA_ENV_VAR}={env!r}: {_LAYOUT_HELP}. "
                f"Fix or unset {DATA_ENV_VAR}, or pass data_dir=..."
            )
        return found
    found = _find_layout_dir(DEFAULT_DATA_ROOT)
    if found is not None:
        return found
    raise FileNotFoundError(
        "ModelNet40 data not found. Pass data_dir=<folder>, or set the environment variable "
        f"{DATA_ENV_VAR} to a folder containing modelnet40_aligned_1024/ (or "
        f"modelnet40_ply_hdf5_2048/, modelnet40_normal_resampled/), or put it under "
        f"{DEFAULT_DATA_ROOT} ({_LAYOUT_HELP}). The public releases are "
        "modelnet40_ply_hdf5_2048.zip (PointNet) and modelnet40_normal_resampled.zip (PointNet++)."
    )


def available_splits(data_dir) -> tuple:
    """Splits (``"train"``, ``"test"``) whose list file exists in the layout folder."""
    d = Path(data_dir)
    lists = _HDF5_LISTS if detect_layout(d) == HDF5 else _TEXT_LISTS
    return tuple(s for s in SPLITS if (d / lists[s]).is_file())


# ----------------------------------------------------------------------------- readers


def _read_lines(path: Path) -> list:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _missing_split_error(d: Path, split: str, list_name: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"ModelNet40 split {split!r} not found in {d}: there is no {list_name}. "
        "The shared copy (modelnet40_aligned_1024) holds only the training split; use "
        "split='val' for the validation split carved from train, or point data_dir at a "
        "full download that has the test split."
    )


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} for the readers, got {split!r}.")


def _id2file_path(h5_path: Path) -> Path:
    stem = re.sub(r"(\d+)$", r"_\1", h5_path.stem)  # ply_data_train0 -> ply_data_train_0
    return h5_path.with_name(f"{stem}_id2file.json")


def _read_hdf5(d: Path, split: str, max_points: int | None) -> ModelNet40Data:
    list_path = d / _HDF5_LISTS[split]
    if not list_path.is_file():
        raise _missing_split_error(d, split, list_path.name)
    class_names = tuple(_read_lines(d / _HDF5_NAMES))
    points, labels, ids = [], [], []
    for entry in _read_lines(list_path):
        path = d / Path(entry).name  # entries may carry a data/modelnet40_ply_hdf5_2048/ prefix
        if not path.is_file():
            raise FileNotFoundError(f"{list_path.name} lists {entry!r} but {path} does not exist.")
        with h5py.File(path, "r") as f:
            if "data" not in f or "label" not in f:
                raise ValueError(f"{path} lacks the datasets 'data' and 'label'.")
            data = f["data"]
            if data.ndim != 3 or data.shape[-1] < 3:
                raise ValueError(f"{path}: 'data' must have shape [n, P, 3], got {data.shape}.")
            pts = data[:, :max_points, :3] if max_points else data[:, :, :3]
            lbl = np.asarray(f["label"][:]).reshape(-1)
        if lbl.shape[0] != pts.shape[0]:
            raise ValueError(f"{path}: {pts.shape[0]} shapes but {lbl.shape[0]} labels.")
        points.append(np.asarray(pts, dtype=np.float32))
        labels.append(lbl.astype(np.int32))
        id_path = _id2file_path(path)
        ids.append(json.loads(id_path.read_text()) if id_path.is_file() else None)
    if not points:
        raise ValueError(f"{list_path} lists no files.")
    sizes = {p.shape[1] for p in points}
    if len(sizes) > 1:
        raise ValueError(
            f"Files of split {split!r} in {d} have different point counts {sorted(sizes)}; "
            "pass max_points to truncate them to a common size."
        )
    shape_ids = None
    if all(i is not None and len(i) == len(l) for i, l in zip(ids, labels)):
        shape_ids = tuple(str(s) for part in ids for s in part)
    return ModelNet40Data(np.concatenate(points), np.concatenate(labels), class_names, shape_ids, d, HDF5)


def _read_text(d: Path, split: str, max_points: int | None) -> ModelNet40Data:
    list_path = d / _TEXT_LISTS[split]
    if not list_path.is_file():
        raise _missing_split_error(d, split, list_path.name)
    class_names = tuple(_read_lines(d / _TEXT_NAMES))
    class_index = {name: i for i, name in enumerate(class_names)}
    points, labels, ids = [], [], []
    for shape_id in _read_lines(list_path):
        cls = shape_id.rsplit("_", 1)[0]  # night_stand_0001 -> night_stand
        if cls not in class_index:
            raise ValueError(f"{list_path.name}: {shape_id!r} belongs to no class of {_TEXT_NAMES}.")
        path = d / cls / f"{shape_id}.txt"
        if not path.is_file():
            raise FileNotFoundError(f"{list_path.name} lists {shape_id!r} but {path} does not exist.")
        xyz = np.loadtxt(path, delimiter=",", dtype=np.float32, usecols=(0, 1, 2), max_rows=max_points, ndmin=2)
        points.append(xyz)
        labels.append(class_index[cls])
        ids.append(f"{cls}/{shape_id}")
    if not points:
        raise ValueError(f"{list_path} lists no shapes.")
    sizes = {p.shape[0] for p in points}
    if len(sizes) > 1:
        raise ValueError(
            f"Shapes of split {split!r} in {d} have different point counts "
            f"({min(sizes)}..{max(sizes)}); pass max_points <= {min(sizes)}."
        )
    return ModelNet40Data(np.stack(points), np.asarray(labels, np.int32), class_names, tuple(ids), d, TEXT)


def read_modelnet40(data_dir, split: str = "train", max_points: int | None = None) -> ModelNet40Data:
    """Read one split of the layout folder ``data_dir`` from disk (raw, not normalised).

    ``max_points`` keeps the first ``max_points`` points of each shape (PointNet++ does the
    same with the 10,000-point text files).  Raises ``FileNotFoundError`` for a split that
    is not there.
    """
    _check_split(split)
    d = Path(data_dir)
    layout = detect_layout(d)
    if layout is None:
        raise FileNotFoundError(f"No ModelNet40 data in {d}: {_LAYOUT_HELP}.")
    if max_points is not None and max_points < 1:
        raise ValueError(f"max_points must be positive, got {max_points}.")
    data = (_read_hdf5 if layout == HDF5 else _read_text)(d, split, max_points)
    bad = np.flatnonzero((data.labels < 0) | (data.labels >= len(data.class_names)))
    if bad.size:
        raise ValueError(
            f"Split {split!r} in {d}: label {data.labels[bad[0]]} of shape index "
            f"{bad[0]} is outside the {len(data.class_names)} class names."
        )
    return data


# ----------------------------------------------------------------------------- preprocessing


def normalize_point_clouds(points, min_scale: float = _DEFAULT_MIN_SCALE) -> np.ndarray:
    """Centre each shape ``[..., P, 3]`` at its centroid and scale it into the unit sphere.

    The farthest point ends at distance 1.  The scale is floored at ``min_scale`` so
    degenerate shapes (all points nearly equal) are never divided by zero.  Raises
    ``ValueError`` naming the shape index of any NaN/Inf coordinate.
    """
    points = np.asarray(points, dtype=np.float32)
    if points.ndim < 2 or points.shape[-1] != 3:
        raise ValueError(f"points must have shape [..., P, 3], got {points.shape}.")
    finite = np.atleast_1d(np.isfinite(points).all(axis=(-2, -1)))
    if not finite.all():
        bad = np.argwhere(~finite)
        shown = ", ".join(str(int(b[0])) if b.size == 1 else str(tuple(map(int, b))) for b in bad[:10])
        raise ValueError(
            f"Non-finite (NaN/Inf) coordinates in {len(bad)} shape(s): shape index "
            f"{shown}{', ...' if len(bad) > 10 else ''}."
        )
    centroid = points.mean(axis=-2, keepdims=True, dtype=np.float64).astype(np.float32)
    centred = points - centroid
    radius = np.sqrt(np.einsum("...pi,...pi->...p", centred, centred).max(axis=-1))[..., None, None]
    return centred / np.maximum(radius, np.float32(min_scale))


def stratified_split(labels, val_fraction: float = 0.2, seed: int = 0) -> tuple:
    """Stratified train/validation index arrays ``(train_idx, val_idx)`` (sorted int64).

    In every class ``round(val_fraction * n_class)`` shapes (at most ``n_class - 1``) go to
    validation, drawn with ``numpy.random.default_rng(seed)``: deterministic and disjoint,
    together covering all indices.
    """
    labels = np.asarray(labels).reshape(-1)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    rng = np.random.default_rng(seed)
    val = [np.zeros([0], np.int64)]
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_val = min(int(np.floor(val_fraction * idx.size + 0.5)), idx.size - 1)
        val.append(rng.permutation(idx)[:n_val])
    val_idx = np.sort(np.concatenate(val)).astype(np.int64)
    train_idx = np.setdiff1d(np.arange(labels.size, dtype=np.int64), val_idx)
    return train_idx, val_idx


# ----------------------------------------------------------------------------- cache

_CACHE: dict = {}
_TENSOR_CACHE: dict = {}
_LOCK = threading.Lock()


def clear_cache() -> None:
    """Forget every split loaded by :func:`load_modelnet40` in this process."""
    with _LOCK:
        _CACHE.clear()
        _TENSOR_CACHE.clear()


def load_modelnet40(
    split: str = "train", data_dir=None, *, normalize: bool = True, max_points: int | None = None
) -> ModelNet40Data:
    """One split in memory, read once per process and cached (arrays are read-only).

    ``data_dir`` is resolved by :func:`resolve_data_dir`.  With ``normalize`` every shape is
    centred and scaled to the unit sphere (:func:`normalize_point_clouds`).
    """
    _check_split(split)
    d = resolve_data_dir(data_dir)
    key = (str(d.resolve()), split, bool(normalize), max_points)
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        raw_key = key[:2] + (False,) + key[3:]
        raw = _CACHE.get(raw_key)
        if raw is None:
            raw = read_modelnet40(d, split, max_points=max_points)
        data = raw
        if normalize:
            try:
                points = normalize_point_clouds(raw.points)
            except ValueError as err:
                raise ValueError(f"{err} (split {split!r} of {d})") from None
            data = dataclasses.replace(raw, points=points)
        for arr in (data.points, data.labels):
            arr.setflags(write=False)
        _CACHE[key] = data
        return data


def _cached_tensors(data: ModelNet40Data, key) -> tuple:
    with _LOCK:
        if key not in _TENSOR_CACHE:
            _TENSOR_CACHE[key] = (tf.constant(data.points), tf.constant(data.labels))
        return _TENSOR_CACHE[key]


# ----------------------------------------------------------------------------- augmentation

_ROTATIONS = ("so3", "z", "none")
_PIPELINE_SPLITS = ("train", "val", "test")


#: how :func:`modelnet40_dataset` picks ``num_points`` of a shape's points
POINT_SAMPLING = ("random", "first")


def random_point_dropout(points, seed, max_dropout_ratio: float = 0.875) -> tf.Tensor:
    """PointNet++ ``random_point_dropout`` for one cloud ``[P, 3]``, stateless in ``seed``.

    Draws a ratio ``r ~ U[0, max_dropout_ratio)`` and replaces every point whose uniform
    draw is ``<= r`` by the first point, so the number of points is unchanged.
    """
    points = tf.convert_to_tensor(points)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=2)
    ratio = tf.random.stateless_uniform([], seed=seeds[0]) * max_dropout_ratio
    drop = tf.random.stateless_uniform(tf.shape(points)[:1], seed=seeds[1]) <= ratio
    return tf.where(drop[:, None], points[:1], points)


def _rotation(mode: str, seed) -> tf.Tensor | None:
    if mode == "so3":
        return random_rotations(1, seed=seed)[0]
    if mode == "z":
        return random_z_rotations(1, seed=seed)[0]
    return None


def _rotate(points, rot):
    """``points @ rot^T``; identity when ``rot`` is ``None``."""
    return points if rot is None else tf.linalg.matmul(points, rot, transpose_b=True)


def _augment(points, rot, seed):
    """The training augmentations of the paper, in order (``docs/method.md`` section 9)."""
    s = tf.random.experimental.stateless_split(seed, num=5)
    uniform = tf.random.stateless_uniform
    points = points * uniform([3], s[0], 2.0 / 3.0, 1.5) + uniform([3], s[1], -0.2, 0.2)
    points = _rotate(points, rot)
    points = random_point_dropout(points, s[2])
    return points * uniform([], s[3], 0.8, 1.25) + uniform([3], s[4], -0.1, 0.1)


# ----------------------------------------------------------------------------- pipeline


def modelnet40_dataset(
    split: str = "train",
    num_points: int = 300,
    batch_size: int = 24,
    rotation: str = "so3",
    augment: bool | None = None,
    shuffle: bool | None = None,
    seed: int = 0,
    data_dir=None,
    val_fraction: float = 0.2,
    drop_remainder: bool | None = None,
    *,
    reseed_each_epoch: bool | None = None,
    split_seed: int = 0,
    max_points: int | None = None,
    point_sampling: str = "random",
) -> tf.data.Dataset:
    """Batches ``(points [B, num_points, 3] float32, labels [B] int32)`` of normalised shapes.

    * ``split``: ``"train"`` / ``"val"`` (the stratified split of the training files made
      by :func:`stratified_split` with ``val_fraction`` and ``split_seed``; with
      ``val_fraction=0`` ``"train"`` is the whole training set) or ``"test"``.
    * Per shape a random subset of ``num_points`` points (without replacement; with
      ``point_sampling="first"`` the first ``num_points`` points, always the same, as the
      reference PyTorch VN-PointNet trains), then with
      ``augment`` (default: train only) per-axis scale U[2/3, 3/2] and shift U[-0.2, 0.2],
      the rotation, point dropout (ratio up to 0.875), scale U[0.8, 1.25], shift
      U[-0.1, 0.1]; without ``augment`` only the rotation.
    * ``rotation``: ``"so3"`` (Haar-random per shape), ``"z"`` (random angle about z) or
      ``"none"``; applied as ``points @ R^T``.
    * ``shuffle`` and ``drop_remainder`` default to ``True`` for train only.
    * ``reseed_each_epoch`` (default: train only): new random draws on every iteration of
      the dataset; otherwise every iteration is identical.  See the module docstring.
    """
    if split not in _PIPELINE_SPLITS:
        raise ValueError(f"split must be one of {_PIPELINE_SPLITS}, got {split!r}.")
    if rotation not in _ROTATIONS:
        raise ValueError(f"rotation must be one of {_ROTATIONS}, got {rotation!r}.")
    if point_sampling not in POINT_SAMPLING:
        raise ValueError(f"point_sampling must be one of {POINT_SAMPLING}, got {point_sampling!r}.")
    batch_size, num_points = int(batch_size), int(num_points)
    if batch_size < 1 or num_points < 1:
        raise ValueError(f"batch_size and num_points must be positive, got {batch_size}, {num_points}.")
    is_train = split == "train"
    augment = is_train if augment is None else bool(augment)
    shuffle = is_train if shuffle is None else bool(shuffle)
    drop_remainder = is_train if drop_remainder is None else bool(drop_remainder)
    reseed_each_epoch = is_train if reseed_each_epoch is None else bool(reseed_each_epoch)

    file_split = "test" if split == "test" else "train"
    data = load_modelnet40(file_split, data_dir, normalize=True, max_points=max_points)
    num_shape_points = data.points.shape[1]
    if num_points > num_shape_points:
        raise ValueError(
            f"num_points={num_points} exceeds the {num_shape_points} points per shape stored in {data.data_dir}."
        )
    if split == "test":
        indices = np.arange(len(data), dtype=np.int64)
    else:
        if split == "val" and val_fraction <= 0:
            raise ValueError("split='val' needs val_fraction > 0.")
        train_idx, val_idx = stratified_split(data.labels, val_fraction, seed=split_seed)
        indices = train_idx if is_train else val_idx
    points_t, labels_t = _cached_tensors(data, (str(data.data_dir.resolve()), file_split, max_points))
    indices_t = tf.constant(indices)
    seed = int(seed)

    if reseed_each_epoch:
        epoch_keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
    else:
        epoch_keys = tf.data.Dataset.from_tensors(tf.constant(0, tf.int64))

    def epoch_elements(key):
        shuffle_seed, element_seed = tf.unstack(
            tf.random.experimental.stateless_split(tf.stack([tf.constant(seed, tf.int64), key]), num=2)
        )
        order = indices_t
        if shuffle:
            order = tf.random.experimental.stateless_shuffle(indices_t, seed=shuffle_seed)
        return tf.data.Dataset.from_tensor_slices(order).map(lambda i: (i, element_seed))

    def process(index, element_seed):
        seeds = tf.random.experimental.stateless_split(
            tf.random.experimental.stateless_fold_in(element_seed, index), num=3
        )
        cloud = tf.gather(points_t, index)
        if point_sampling == "first":
            cloud = cloud[:num_points]
        else:
            subset = tf.random.experimental.stateless_shuffle(tf.range(num_shape_points), seed=seeds[0])[:num_points]
            cloud = tf.gather(cloud, subset)
        rot = _rotation(rotation, seeds[1])
        cloud = _augment(cloud, rot, seeds[2]) if augment else _rotate(cloud, rot)
        return tf.ensure_shape(cloud, [num_points, 3]), tf.gather(labels_t, index)

    ds = epoch_keys.flat_map(epoch_elements)
    ds = ds.map(process, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    num_batches = indices.size // batch_size if drop_remainder else -(-indices.size // batch_size)
    ds = ds.apply(tf.data.experimental.assert_cardinality(num_batches))  # flat_map hides it
    return ds.prefetch(tf.data.AUTOTUNE)


def recipe_validation_dataset(
    config: dict, rotation: str | None = None, batch_size: int | None = None, data_dir=None
) -> tf.data.Dataset:
    """The validation split exactly as ``recipes/modelnet40.py`` draws it for a run's ``config``
    (its ``summary.json`` ``"config"``): same points, ``val_fraction``, ``split_seed`` and
    element seed (``seed + 1``).  ``rotation`` (default: the run's) and ``batch_size`` (default:
    the run's ``batch``) can be overridden without changing any element: every draw is keyed by
    the shape index.  ``data_dir``: as in :func:`modelnet40_dataset` (the run's ``data_dir`` is not
    used: it may not exist where the run is evaluated).  ``recipes/modelnet40.py`` and
    ``relaxeq zoo publish`` both use this.
    """
    return modelnet40_dataset(
        "val",
        num_points=int(config["points"]),
        batch_size=int(batch_size if batch_size is not None else config["batch"]),
        rotation=rotation or config.get("rotation", "so3"),
        data_dir=data_dir,
        val_fraction=float(config.get("val_fraction", 0.2)),
        split_seed=int(config.get("split_seed", 0)),
        seed=int(config.get("seed", 0)) + 1,
        point_sampling=config.get("point_sampling") or "random",
    )
