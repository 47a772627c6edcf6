"""Charged N-body data set ("nbody_small" of EGNN / SEGNN), generated locally.

The published data set was produced by ``ChargedParticlesSim`` of the EGNN
repository (``generate_dataset.py --num-train 10000 --seed 43 --sufix small``):
one global legacy NumPy random stream, 10,000 training, then 2,000 validation,
then 2,000 test trajectories of 5 charged particles.  This module reproduces
that stream and the integrator operation by operation, but integrates all
trajectories at once (vectorised over the trajectory axis), and only as far as
the last frame that is needed.

Conventions
-----------
* Public arrays are ``[trajectory, frame, particle, xyz]`` (the original code
  stores ``[frame, xyz, particle]`` per trajectory); charges are
  ``[trajectory, particle, 1]``.  Everything is float64.
* Saved frame ``k`` (0..48) is the state after ``(k + 1) * 100`` steps of
  ``dt = 0.001``.  A sample is frame 30 (positions, velocities, charges) as
  input and the positions of frame 40 as target.

Exactness
---------
The simulation is chaotic: a difference in the last bit of one operation grows
to ~1e-3 by the end of a trajectory.  The vectorised integrator therefore uses
the very same floating-point operations as the original (squared distances as
``|a|^2 + |b|^2 - 2 a.b`` with the Gram matrix from a BLAS matrix product,
``np.power(., 1.5)``, forces summed over partners in index order, the same
update order), and agrees with a per-trajectory re-implementation of the
original code bit for bit on the same machine.  Bitwise equality with the
files published by the EGNN authors additionally depends on their BLAS
rounding the 3-term dot products the same way, which cannot be checked here.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from keras_relaxeq.groups import random_rotations
from keras_relaxeq.utils import atomic_write

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

# Simulation settings of the published data set.
NUM_PARTICLES = 5
DIM = 3
NUM_STEPS = 5000
SAMPLE_FREQ = 100
NUM_FRAMES = NUM_STEPS // SAMPLE_FREQ - 1  # 49 saved frames
DT = 0.001
MAX_FORCE = 0.1 / DT  # force components are clipped to +-100
BOX_SIZE = 5.0
LOC_STD = 1.0 * (NUM_PARTICLES / 5.0) ** (1 / 3)  # as in the original: exactly 1.0
VEL_NORM = 0.5
INTERACTION_STRENGTH = 1.0
_CHARGE_TYPES = np.array([-1.0, 0.0, 1.0])
_CHARGE_PROB = [1.0 / 2, 0, 1.0 / 2]

# The random stream: train, then valid, then test.
DEFAULT_SEED = 43
SPLITS = ("train", "valid", "test")
SPLIT_SIZES = {"train": 10_000, "valid": 2_000, "test": 2_000}
DEFAULT_NUM_SAMPLES = {"train": 3_000, "valid": 2_000, "test": 2_000}
INPUT_FRAME = 30
TARGET_FRAME = 40

_CACHE_ENV = "KERAS_RELAXEQ_CACHE"
_CACHE_VERSION = 1
_CHUNK_SIZE = 500
_AUTO_PROGRESS_MIN = 200  # show a progress bar from this many trajectories on


# --------------------------------------------------------------------------- #
# Argument checking
# --------------------------------------------------------------------------- #
def _check_count(value, name: str, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer (the number of {what}), got {value!r}.")
    return int(value)


def _check_split(split) -> str:
    if split not in SPLITS:
        raise ValueError(
            f"Unknown split {split!r}: choose one of 'train', 'valid' or 'test' "
            f"(sizes {SPLIT_SIZES['train']}, {SPLIT_SIZES['valid']}, {SPLIT_SIZES['test']})."
        )
    return split


def _check_num_samples(split: str, num_samples) -> int:
    if num_samples is None:
        return DEFAULT_NUM_SAMPLES[split]
    num_samples = _check_count(num_samples, "num_samples", f"{split!r} trajectories to use")
    if num_samples > SPLIT_SIZES[split]:
        raise ValueError(
            f"num_samples={num_samples} exceeds the {SPLIT_SIZES[split]} trajectories of the "
            f"{split!r} split; pass num_samples <= {SPLIT_SIZES[split]} (the published "
            f"experiments use {DEFAULT_NUM_SAMPLES[split]})."
        )
    return num_samples


def _check_frames(frames) -> list[int]:
    if frames is None:
        return list(range(NUM_FRAMES))
    if isinstance(frames, (int, np.integer)):
        frames = [frames]
    frames = [int(f) for f in frames]
    if not frames:
        raise ValueError("frames must name at least one saved frame (0..48), got an empty list.")
    bad = [f for f in frames if not 0 <= f < NUM_FRAMES]
    if bad:
        raise ValueError(f"frames must lie in 0..{NUM_FRAMES - 1} (frame k is step (k+1)*100), got {bad}.")
    return frames


def _check_start(start) -> int:
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or start < 0:
        raise ValueError(f"start must be a non-negative integer (a trajectory index in the stream), got {start!r}.")
    return int(start)


# --------------------------------------------------------------------------- #
# Random stream
# --------------------------------------------------------------------------- #
def _draw_trajectory(rs: np.random.RandomState):
    """Consume one trajectory's draws, in the order of ``sample_trajectory``."""
    charges = rs.choice(_CHARGE_TYPES, size=(NUM_PARTICLES, 1), p=_CHARGE_PROB)
    loc = rs.randn(DIM, NUM_PARTICLES) * LOC_STD
    vel = rs.randn(DIM, NUM_PARTICLES)
    # Observation noise of the original, multiplied by noise_var = 0 there: drawn
    # only to keep the stream aligned.
    rs.randn(NUM_FRAMES, DIM, NUM_PARTICLES)
    rs.randn(NUM_FRAMES, DIM, NUM_PARTICLES)
    return charges, loc, vel


def _skip(rs: np.random.RandomState, count: int) -> None:
    """Consume the draws of ``count`` trajectories without keeping them.

    Same stream as :func:`_draw_trajectory`, in fewer calls: legacy ``choice``
    with ``p`` draws ``random_sample(size)`` and nothing else, and consecutive
    normal draws form one stream (the cached second Box-Muller value carries
    over between calls).
    """
    num_normals = 2 * DIM * NUM_PARTICLES * (1 + NUM_FRAMES)
    for _ in range(count):
        rs.random_sample((NUM_PARTICLES, 1))
        rs.standard_normal(num_normals)


def _draw(rs: np.random.RandomState, count: int):
    """Draw ``count`` trajectories: charges ``[n,5,1]``, raw loc/vel ``[n,3,5]``."""
    draws = [_draw_trajectory(rs) for _ in range(count)]
    charges = np.stack([d[0] for d in draws])
    loc = np.stack([d[1] for d in draws])
    vel = np.stack([d[2] for d in draws])
    return charges, loc, vel


def _prepare(loc: np.ndarray, vel: np.ndarray):
    """Rescale velocities and reflect positions into the box (``_clamp``), ``[n,3,5]``."""
    vel = vel * VEL_NORM / np.sqrt((vel**2).sum(axis=1, keepdims=True))
    loc = loc.copy()
    over = loc > BOX_SIZE
    loc[over] = 2 * BOX_SIZE - loc[over]
    vel[over] = -np.abs(vel[over])
    under = loc < -BOX_SIZE
    loc[under] = -2 * BOX_SIZE - loc[under]
    vel[under] = np.abs(vel[under])
    return loc, vel


def _initial_state(num_trajectories: int, seed: int, start: int):
    rs = np.random.RandomState(seed)
    _skip(rs, start)
    charges, loc, vel = _draw(rs, num_trajectories)
    loc, vel = _prepare(loc, vel)
    return charges, loc, vel


def initial_conditions(num_trajectories: int, seed: int = DEFAULT_SEED, *, start: int = 0) -> dict:
    """Initial states of trajectories ``start .. start + n - 1`` of the stream.

    Drawing is cheap (no integration), e.g. to inspect the valid/test splits,
    which start at trajectory 10,000 and 12,000 of the stream.

    Parameters
    ----------
    num_trajectories : int
        Number of trajectories.
    seed : int
        Seed of the legacy NumPy stream (43 for the published data set).
    start : int
        Index of the first trajectory in the stream.

    Returns
    -------
    dict
        ``loc`` and ``vel`` float64 ``[n, 5, 3]`` (after the box reflection and
        the rescaling of velocities to norm 0.5), ``charges`` ``[n, 5, 1]``.
    """
    num_trajectories = _check_count(num_trajectories, "num_trajectories", "trajectories to draw")
    charges, loc, vel = _initial_state(num_trajectories, seed, _check_start(start))
    return {
        "loc": np.ascontiguousarray(loc.transpose(0, 2, 1)),
        "vel": np.ascontiguousarray(vel.transpose(0, 2, 1)),
        "charges": charges,
    }


# --------------------------------------------------------------------------- #
# Vectorised integrator
# --------------------------------------------------------------------------- #
def _forces(loc: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Clipped Coulomb forces, ``loc [n,3,p]``, ``edges = q q^T [n,p,p]`` -> ``[n,3,p]``.

    Mirrors ``ChargedParticlesSim`` operation by operation (see module notes).
    """
    num_particles = loc.shape[-1]
    points = loc.transpose(0, 2, 1)  # [n,p,3]
    sq_norm = (points**2).sum(axis=2)
    # Same buffer, transposed: NumPy calls BLAS syrk per trajectory, like A.dot(A.T).
    gram = points @ loc
    dist2 = sq_norm[:, :, None] + sq_norm[:, None, :] - 2 * gram
    forces_size = INTERACTION_STRENGTH * edges / np.power(dist2, 3.0 / 2.0)
    diag = np.arange(num_particles)
    forces_size[:, diag, diag] = 0.0
    force = np.zeros_like(loc)
    for j in range(num_particles):  # sum over partners j in index order
        force += forces_size[:, None, :, j] * (loc - loc[:, :, j : j + 1])
    np.clip(force, -MAX_FORCE, MAX_FORCE, out=force)
    return force


def _integrate(loc, vel, charges, frames, pbar=None):
    """Leapfrog of ``[n,3,p]`` states; returns saved loc, vel ``[n,len(frames),3,p]``."""
    # C order: _forces relies on loc being one contiguous buffer (see the syrk note).
    loc = np.array(loc, dtype=np.float64, order="C")
    vel = np.array(vel, dtype=np.float64, order="C")
    edges = charges @ charges.transpose(0, 2, 1)
    out_loc = np.empty((loc.shape[0], len(frames)) + loc.shape[1:])
    out_vel = np.empty_like(out_loc)
    last_step = (max(frames) + 1) * SAMPLE_FREQ
    with np.errstate(divide="ignore", invalid="ignore"):  # diagonal of dist2: zeroed above
        vel += DT * _forces(loc, edges)  # initial half kick
        for step in range(1, last_step + 1):
            loc += DT * vel
            if step % SAMPLE_FREQ == 0:
                frame = step // SAMPLE_FREQ - 1
                for k in (k for k, f in enumerate(frames) if f == frame):
                    out_loc[:, k] = loc
                    out_vel[:, k] = vel
                if pbar is not None:
                    pbar.update(SAMPLE_FREQ)
            if step == last_step:
                break
            vel += DT * _forces(loc, edges)
    return out_loc, out_vel


def _integrate_chunked(charges, loc, vel, frames, chunk_size, progress):
    """Integrate ``[n,3,p]`` states in chunks of trajectories; outputs ``[n,F,p,3]``."""
    n = loc.shape[0]
    chunk_size = _check_count(chunk_size, "chunk_size", "trajectories integrated together")
    starts = range(0, n, chunk_size)
    last_step = (max(frames) + 1) * SAMPLE_FREQ
    show = n >= _AUTO_PROGRESS_MIN if progress is None else bool(progress)
    out_loc, out_vel = [], []
    with tqdm(total=len(starts) * last_step, disable=not show, unit="step",
              desc=f"Charged N-body: {n} trajectories") as pbar:
        for s in starts:
            part = slice(s, s + chunk_size)
            l, v = _integrate(loc[part], vel[part], charges[part], frames, pbar)
            out_loc.append(l)
            out_vel.append(v)
    out_loc = np.concatenate(out_loc).transpose(0, 1, 3, 2)
    out_vel = np.concatenate(out_vel).transpose(0, 1, 3, 2)
    return np.ascontiguousarray(out_loc), np.ascontiguousarray(out_vel)


def integrate_charged(loc, vel, charges, *, frames=None, chunk_size: int = _CHUNK_SIZE,
                      progress=None) -> dict:
    """Integrate given initial states with the published charged-particle dynamics.

    Parameters
    ----------
    loc, vel : array_like
        Initial positions and velocities ``[n, p, 3]`` (used as given: no box
        reflection or velocity rescaling here).
    charges : array_like
        Charges ``[n, p, 1]``; like charges repel.
    frames : int or sequence of int, optional
        Saved frames to return (frame ``k`` = step ``(k+1)*100``); default all 49.
        Integration stops at the last requested frame.
    chunk_size : int
        Trajectories integrated together (memory / speed trade-off).
    progress : bool, optional
        Show a tqdm bar; default: only for 200 or more trajectories.

    Returns
    -------
    dict
        ``loc`` and ``vel`` float64 ``[n, len(frames), p, 3]``.
    """
    frames = _check_frames(frames)
    loc = np.asarray(loc, dtype=np.float64)
    vel = np.asarray(vel, dtype=np.float64)
    charges = np.asarray(charges, dtype=np.float64)
    if loc.ndim != 3 or loc.shape[-1] != DIM or vel.shape != loc.shape or charges.shape != loc.shape[:2] + (1,):
        raise ValueError(
            "Expected loc and vel of shape [n, particles, 3] and charges [n, particles, 1], got "
            f"{loc.shape}, {vel.shape} and {charges.shape}."
        )
    _check_count(loc.shape[0], "the number of trajectories", "trajectories to integrate")
    out_loc, out_vel = _integrate_chunked(
        charges, loc.transpose(0, 2, 1), vel.transpose(0, 2, 1), frames, chunk_size, progress
    )
    return {"loc": out_loc, "vel": out_vel}


def simulate_charged(num_trajectories: int, seed: int = DEFAULT_SEED, *, start: int = 0, frames=None,
                     chunk_size: int = _CHUNK_SIZE, progress=None) -> dict:
    """Simulate trajectories of the charged N-body data set.

    With the defaults, the result equals the first ``num_trajectories``
    trajectories of the published "nbody_small" training set (beyond 10,000
    the stream continues into the validation and then the test split).
    All random draws are made first, in per-trajectory order, from a private
    ``np.random.RandomState(seed)`` (the global NumPy state is left alone);
    then all trajectories are integrated at once.

    Parameters
    ----------
    num_trajectories : int
        Number of trajectories.
    seed : int
        Seed of the legacy NumPy stream (43 for the published data set).
    start : int
        Index of the first trajectory in the stream (the draws of the
        trajectories before it are consumed, not integrated).
    frames : int or sequence of int, optional
        Saved frames to keep (0..48); default all 49.  Integration stops at the
        last one requested.
    chunk_size : int
        Trajectories integrated together.
    progress : bool, optional
        Show a tqdm bar; default: only for 200 or more trajectories.

    Returns
    -------
    dict
        ``loc``, ``vel`` float64 ``[n, len(frames), 5, 3]`` and ``charges``
        float64 ``[n, 5, 1]`` (values -1 or +1).
    """
    num_trajectories = _check_count(num_trajectories, "num_trajectories", "trajectories to simulate")
    frames = _check_frames(frames)
    charges, loc, vel = _initial_state(num_trajectories, seed, _check_start(start))
    out_loc, out_vel = _integrate_chunked(charges, loc, vel, frames, chunk_size, progress)
    return {"loc": out_loc, "vel": out_vel, "charges": charges}


def generate_splits(num_samples=None, seed: int = DEFAULT_SEED, *, frames=None,
                    chunk_size: int = _CHUNK_SIZE, progress=None) -> dict:
    """Simulate the first trajectories of several splits from one stream.

    The stream is drawn in order (train 10,000, valid 2,000, test 2,000) up to
    the last trajectory needed; only the requested trajectories are integrated
    (together, in one vectorised pass).

    Parameters
    ----------
    num_samples : int or mapping, optional
        Trajectories per split, e.g. ``{"valid": 10}``; an int applies to all
        three splits.  Default: 3,000 train, 2,000 valid, 2,000 test.
    seed : int
        Seed of the legacy NumPy stream.
    frames, chunk_size, progress
        As in :func:`simulate_charged`.

    Returns
    -------
    dict
        ``{split: {"loc", "vel", "charges"}}`` for the requested splits, arrays
        as in :func:`simulate_charged`.
    """
    if num_samples is None:
        num_samples = dict(DEFAULT_NUM_SAMPLES)
    elif not isinstance(num_samples, Mapping):
        num_samples = {split: num_samples for split in SPLITS}
    if not num_samples:
        raise ValueError("num_samples names no split; pass e.g. {'train': 3000, 'valid': 2000, 'test': 2000}.")
    counts = {_check_split(s): _check_num_samples(s, n) for s, n in num_samples.items()}
    frames = _check_frames(frames)

    rs = np.random.RandomState(seed)
    needed = [s for s in SPLITS if s in counts]
    draws = []
    for split in SPLITS[: SPLITS.index(needed[-1]) + 1]:
        if split in counts:
            draws.append(_draw(rs, counts[split]))
            _skip(rs, SPLIT_SIZES[split] - counts[split])
        else:
            _skip(rs, SPLIT_SIZES[split])
    charges = np.concatenate([d[0] for d in draws])
    loc, vel = _prepare(np.concatenate([d[1] for d in draws]), np.concatenate([d[2] for d in draws]))
    out_loc, out_vel = _integrate_chunked(charges, loc, vel, frames, chunk_size, progress)

    result, offset = {}, 0
    for split in needed:
        part = slice(offset, offset + counts[split])
        result[split] = {"loc": out_loc[part], "vel": out_vel[part], "charges": charges[part]}
        offset += counts[split]
    return result


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
    return (f"charged{NUM_PARTICLES}_seed{seed}_splits{sizes}_f{INPUT_FRAME}-{TARGET_FRAME}"
            f"_v{_CACHE_VERSION}_{split}")


_SAMPLE_KEYS = ("loc", "vel", "charges", "target")


def _read_cache(path: Path, num_samples: int):
    """Arrays of ``path`` cut to ``num_samples``; ``None`` if unreadable or too short."""
    try:
        with np.load(path) as data:
            arrays = {key: data[key] for key in _SAMPLE_KEYS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    n = arrays["loc"].shape[0]
    shapes_ok = all(
        arrays[key].shape == (n, NUM_PARTICLES, 1 if key == "charges" else DIM) for key in _SAMPLE_KEYS
    )
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


def load_nbody(split: str = "train", num_samples=None, seed: int = DEFAULT_SEED, cache_dir=None,
               progress=None) -> dict:
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

    sim = generate_splits({split: num_samples}, seed=seed, frames=(INPUT_FRAME, TARGET_FRAME),
                          progress=progress)[split]
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


def nbody_dataset(split: str = "train", batch_size: int = 100, num_samples=None, shuffle: bool = True,
                  seed=None, rotate: bool = True, *, data_seed: int = DEFAULT_SEED, cache_dir=None,
                  drop_remainder: bool = False, dtype=tf.float32, progress=None) -> tf.data.Dataset:
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
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True,
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
    return nbody_dataset(split, batch_size=int(config["batch"]), num_samples=int(config[key]),
                         shuffle=shuffle, seed=int(config["seed"]) + offset,
                         drop_remainder=drop_remainder, **kwargs)
