"""Charged N-body data set ("nbody_small" of EGNN / SEGNN), generated locally, cached, as ``tf.data``.

The trajectories come from :mod:`keras_relaxeq.datasets.nbody_simulation` (the published random stream and
integrator, vectorised and bit-exact).  This module caches the frames a sample needs (frame 30 as input,
the positions of frame 40 as target) per split in ``$KERAS_RELAXEQ_CACHE/nbody`` and builds the pipelines of
the recipes (``nbody_dataset``, ``recipe_dataset``: batches with one random rotation each).  The
simulation's names are importable from here as well.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_relaxeq.datasets.nbody_simulation import (  # noqa: F401  (the simulation's names, re-exported)
    BOX_SIZE,
    DEFAULT_NUM_SAMPLES,
    DEFAULT_SEED,
    DIM,
    DT,
    INPUT_FRAME,
    INTERACTION_STRENGTH,
    LOC_STD,
    MAX_FORCE,
    NUM_FRAMES,
    NUM_PARTICLES,
    NUM_STEPS,
    SAMPLE_FREQ,
    SPLIT_SIZES,
    SPLITS,
    TARGET_FRAME,
    VEL_NORM,
    _check_count,
    _check_num_samples,
    _check_split,
    _prepare,
    generate_splits,
    initial_conditions,
    integrate_charged,
    simulate_charged,
)
from keras_relaxeq.groups import random_rotations
from keras_relaxeq.utils import atomic_write

_CACHE_ENV = "KERAS_RELAXEQ_CACHE"
_CACHE_VERSION = 1

__all__ = [
    "DEFAULT_NUM_SAMPLES",
    "DEFAULT_SEED",
    "INPUT_FRAME",
    "NUM_FRAMES",
    "SPLITS",
    "SPLIT_SIZES",
    "TARGET_FRAME",
    "default_cache_dir",
    "generate_splits",
    "initial_conditions",
    "integrate_charged",
    "load_nbody",
    "nbody_dataset",
    "recipe_dataset",
    "simulate_charged",
]


# --------------------------------------------------------------------------- #
# Disk cache of the frames used for training
# --------------------------------------------------------------------------- #
def default_cache_dir() -> Path:
    """Directory of the cached N-body samples: ``$KERAS_RELAXEQ_CACHE/nbody``.

    The cache root defaults to ``~/.keras/keras_relaxeq``.
    """
    root = os.environ.get(_CACHE_ENV) or os.path.join("~", ".keras", "keras_relaxeq")
    return Path(root).expanduser() / "nbody"


def _cache_prefix(seed: int, split: str) -> str:
    sizes = "-".join(str(SPLIT_SIZES[s]) for s in SPLITS)
    return f"charged{NUM_PARTICLES}_seed{seed}_splits{sizes}_f{INPUT_FRAME}-{TARGET_FRAME}_v{_CACHE_VERSION}_{split}"


_SAMPLE_KEYS = ("loc", "vel", "charges", "target")


def _read_cache(path: Path, num_samples: int):
    """Arrays of ``path`` cut to ``num_samples``; ``None`` if unreadable or too short."""
    try:
        with np.load(path) as data:
            arrays = {key: data[key] for key in _SAMPLE_KEYS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    n = arrays["loc"].shape[0]
    shapes_ok = all(arrays[key].shape == (n, NUM_PARTICLES, 1 if key == "charges" else DIM) for key in _SAMPLE_KEYS)
    if not shapes_ok or n < num_samples:
        return None
    return {key: np.ascontiguousarray(value[:num_samples], dtype=np.float64) for key, value in arrays.items()}


def _cached_files(cache_dir: Path, prefix: str, num_samples: int) -> list[Path]:
    """Cache files of this stream and split holding at least ``num_samples``, smallest first."""
    pattern = re.compile(re.escape(prefix) + r"_n(\d+)\.npz")
    found = []
    if cache_dir.is_dir():
        for path in cache_dir.iterdir():
            match = pattern.fullmatch(path.name)
            if match and int(match.group(1)) >= num_samples:
                found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def load_nbody(split: str = "train", num_samples=None, seed: int = DEFAULT_SEED, cache_dir=None, progress=None) -> dict:
    """Samples of the charged N-body data set, generated once and cached.

    A sample is frame 30 (positions, velocities, charges) as input and the
    positions at frame 40 as target.  Only these frames are cached, as
    ``.npz`` keyed by seed, split sizes and number of samples (a cached file
    with more samples of the same split is reused, since splits are prefixes
    of one stream).  Files are written atomically.

    Parameters
    ----------
    split : {"train", "valid", "test"}
        Split of the published stream.
    num_samples : int, optional
        First trajectories of the split to use; default 3,000 for train (as in
        the published experiments), the whole split (2,000) for valid / test.
    seed : int
        Seed of the legacy NumPy stream (43 for the published data set).
    cache_dir : str or path-like, optional
        Directory of the cache files; default :func:`default_cache_dir`
        (``$KERAS_RELAXEQ_CACHE/nbody``, root ``~/.keras/keras_relaxeq``).
    progress : bool, optional
        Progress bar while generating; default: only for 200 or more samples.

    Returns
    -------
    dict
        float64 arrays ``loc``, ``vel``, ``target`` ``[n, 5, 3]`` and
        ``charges`` ``[n, 5, 1]``.
    """
    split = _check_split(split)
    num_samples = _check_num_samples(split, num_samples)
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
    prefix = _cache_prefix(int(seed), split)
    for path in _cached_files(cache_dir, prefix, num_samples):
        arrays = _read_cache(path, num_samples)
        if arrays is not None:
            return arrays

    sim = generate_splits({split: num_samples}, seed=seed, frames=(INPUT_FRAME, TARGET_FRAME), progress=progress)[split]
    arrays = {
        "loc": np.ascontiguousarray(sim["loc"][:, 0]),
        "vel": np.ascontiguousarray(sim["vel"][:, 0]),
        "charges": sim["charges"],
        "target": np.ascontiguousarray(sim["loc"][:, 1]),
    }
    atomic_write(cache_dir / f"{prefix}_n{num_samples}.npz", lambda f: np.savez(f, **arrays))
    return arrays


# --------------------------------------------------------------------------- #
# tf.data pipeline
# --------------------------------------------------------------------------- #
def _rotate_batch(features, target, rng_pair):
    """Apply one random rotation (``x @ R^T``) to loc, vel and target of a batch."""
    rotation = random_rotations(1, seed=rng_pair, dtype=features["loc"].dtype)[0]
    rotate = lambda x: tf.einsum("...i,ji->...j", x, rotation)  # noqa: E731
    features = dict(features, loc=rotate(features["loc"]), vel=rotate(features["vel"]))
    return features, rotate(target)


def nbody_dataset(
    split: str = "train",
    batch_size: int = 100,
    num_samples=None,
    shuffle: bool = True,
    seed=None,
    rotate: bool = True,
    *,
    data_seed: int = DEFAULT_SEED,
    cache_dir=None,
    drop_remainder: bool = False,
    dtype=tf.float32,
    progress=None,
) -> tf.data.Dataset:
    """``tf.data`` pipeline of charged N-body samples for a SEGNN.

    Parameters
    ----------
    split : {"train", "valid", "test"}
        Split (see :func:`load_nbody`).
    batch_size : int
        Samples per batch (100 in the published experiments).
    num_samples : int, optional
        Trajectories of the split; default 3,000 train, 2,000 valid / test.
    shuffle : bool
        Reshuffle the samples every epoch.
    seed : int, optional
        Seed of the shuffling and the rotations: with a seed every iteration of
        the dataset is reproducible (epochs differ from each other, in the same
        way each time); without, they are random.
    rotate : bool
        Apply one Haar-random rotation per batch to ``loc``, ``vel`` and the
        target (as ``x @ R^T``); charges are invariant.
    data_seed : int
        Seed of the simulation stream (43 for the published data set).
    cache_dir : str or path-like, optional
        See :func:`load_nbody`.
    drop_remainder : bool
        Drop a last, smaller batch.
    dtype : tf.DType
        Floating dtype of the yielded tensors.
    progress : bool, optional
        Progress bar if the data has to be generated.

    Returns
    -------
    tf.data.Dataset
        Elements ``({"loc": [B,5,3], "vel": [B,5,3], "charges": [B,5,1]}, target [B,5,3])``,
        the target being the positions 1,000 steps after the input.
    """
    batch_size = _check_count(batch_size, "batch_size", "samples per batch")
    data = load_nbody(split, num_samples, seed=data_seed, cache_dir=cache_dir, progress=progress)
    dtype = tf.as_dtype(dtype)
    features = {key: tf.constant(data[key], dtype=dtype) for key in ("loc", "vel", "charges")}
    ds = tf.data.Dataset.from_tensor_slices((features, tf.constant(data["target"], dtype=dtype)))
    if shuffle:
        ds = ds.shuffle(len(data["loc"]), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if rotate:
        # Per-batch stateless seeds from a seeded stream: deterministic, different each epoch.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            lambda batch, rng_pair: _rotate_batch(*batch, rng_pair),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    return ds.prefetch(tf.data.AUTOTUNE)


#: How ``recipes/segnn_nbody.py`` draws each split from a run's config: the config key of the
#: number of trajectories, reshuffling, the offset added to ``config["seed"]``, full batches only.
RECIPE_SPLITS = {
    "train": ("train_samples", True, 0, True),
    "valid": ("val_samples", False, 1, False),
    "test": ("test_samples", False, 2, False),
}


def recipe_dataset(config: Mapping, split: str, **kwargs) -> tf.data.Dataset:
    """The split ``split`` exactly as ``recipes/segnn_nbody.py`` draws it for a run's ``config``
    (its ``summary.json`` ``"config"``): ``config[<split>_samples]`` trajectories batched with
    ``config["batch"]`` (the global batch), one random rotation per batch (none if
    ``config["rotate"]`` is false, ``--no-rotate``); training data is
    reshuffled every epoch and drops a last partial batch (``seed``), validation and test are not
    shuffled (``seed + 1``, ``seed + 2``).  ``kwargs`` go to :func:`nbody_dataset` (e.g.
    ``cache_dir``, ``progress``).

    The per-batch rotations come from ``tf.data.Dataset.random(seed=...)``, whose stream also
    depends on TensorFlow's global seed: the recipe sets it with
    ``keras.utils.set_random_seed(config["seed"])`` before building its pipelines, so do the same
    to get the run's batches (``relaxeq zoo publish`` does).  ``recipes/segnn_nbody.py`` and
    ``relaxeq zoo publish`` both use this.
    """
    key, shuffle, offset, drop_remainder = RECIPE_SPLITS[_check_split(split)]
    kwargs.setdefault("rotate", bool(config.get("rotate", True)))  # --no-rotate: the reference's frames
    return nbody_dataset(
        split,
        batch_size=int(config["batch"]),
        num_samples=int(config[key]),
        shuffle=shuffle,
        seed=int(config["seed"]) + offset,
        drop_remainder=drop_remainder,
        **kwargs,
    )
