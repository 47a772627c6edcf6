"""Charged N-body simulation (``ChargedParticlesSim`` of EGNN), vectorised and bit-exact.

The published data set was produced by ``ChargedParticlesSim`` of the EGNN
repository (``generate_dataset.py --num-train 10000 --seed 43 --sufix small``):
one global legacy NumPy random stream, 10,000 training, then 2,000 validation,
then 2,000 test trajectories of 5 charged particles.  This module reproduces
that stream and the integrator operation by operation, but integrates all
trajectories at once (vectorised over the trajectory axis), and only as far as
the last frame that is needed.  :mod:`keras_relaxeq.datasets.nbody` caches the
frames used for training and builds the ``tf.data`` pipelines on top of it.

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

from collections.abc import Mapping

import numpy as np
from tqdm.auto import tqdm

__all__ = [
    "DEFAULT_NUM_SAMPLES",
    "DEFAULT_SEED",
    "INPUT_FRAME",
    "NUM_FRAMES",
    "SPLITS",
    "SPLIT_SIZES",
    "TARGET_FRAME",
    "generate_splits",
    "initial_conditions",
    "integrate_charged",
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
    with tqdm(
        total=len(starts) * last_step, disable=not show, unit="step", desc=f"Charged N-body: {n} trajectories"
    ) as pbar:
        for s in starts:
            part = slice(s, s + chunk_size)
            l, v = _integrate(loc[part], vel[part], charges[part], frames, pbar)
            out_loc.append(l)
            out_vel.append(v)
    out_loc = np.concatenate(out_loc).transpose(0, 1, 3, 2)
    out_vel = np.concatenate(out_vel).transpose(0, 1, 3, 2)
    return np.ascontiguousarray(out_loc), np.ascontiguousarray(out_vel)


def integrate_charged(loc, vel, charges, *, frames=None, chunk_size: int = _CHUNK_SIZE, progress=None) -> dict:
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


def simulate_charged(
    num_trajectories: int,
    seed: int = DEFAULT_SEED,
    *,
    start: int = 0,
    frames=None,
    chunk_size: int = _CHUNK_SIZE,
    progress=None,
) -> dict:
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


def generate_splits(
    num_samples=None, seed: int = DEFAULT_SEED, *, frames=None, chunk_size: int = _CHUNK_SIZE, progress=None
) -> dict:
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
