"""2D smoke plume data sets (PhiFlow), generated locally and cached.

The data sets of Wang, Walters and Yu (2022), *Approximately Equivariant Networks for Imperfectly
Symmetric Dynamics*, as used by Pertigkiozoglou et al. (2024) for the relaxed steerable CNNs.  A
simulation is a 64x64 incompressible smoke flow (PhiFlow 3.4.0, NumPy backend, 64-bit): smoke is
advected (MacCormack, dt 1) and fed by a spherical inflow of radius 5; the smoke density times a
buoyancy vector drives the velocity, which is advected (semi-Lagrangian) and made divergence-free
(``scipy-direct`` pressure solve; the default and CG solvers fail or diverge on 3.4.0).  The stored
data is the velocity, 309 frames (the first of 310 steps is dropped), ``[frame, component, y, x]``.

Configurations (:func:`smoke_plume_config`)
-------------------------------------------
* ``"rotation"``: 36 simulations ``k = 1..36``, ``k = 4 i + side + 1`` for ``i = 0..8`` and inflow
  ``side = 0..3``.  Side 0 is the inflow at ``(32, 5)`` with buoyancy along ``+y``; side ``s + 1``
  is side ``s`` turned a quarter counter-clockwise about the centre ``(32, 32)``: ``(59, 32)``
  along ``-x``, ``(32, 59)`` along ``-y``, ``(5, 32)`` along ``+x``.  The buoyancy magnitude is
  ``0.01 k`` (``0.011 k`` on side 2), so no two simulations are exact rotations of each other:
  the set is only approximately C4-symmetric, on purpose.  Held-out ("test-domain") simulations
  and time splits are those of the reference code (25 training, 10 held-out; simulation 32 is in
  neither).
* ``"scale"``: 38 simulations ``i = 0..37`` at resolution ``int(64 f)`` with
  ``f = linspace(1, 5, 41)[i]``, inflow ``(32 f, 5 f)`` of radius ``5 f``, buoyancy ``(0, 0.1 f)``,
  velocity dt 0.5, downsampled back to 64x64 (bilinear, corners aligned) and divided by ``f``
  (velocities in cells of the 64 grid per step); 28 training and 10 held-out simulations, the time
  splits of the rotation set.  Large ``f`` is slow (a 300x300 grid at ``f = 4.7``).  With
  ``resolution=r`` every length is scaled by ``r / 64`` and the stored grid is ``r x r`` (quick tests).

Conventions
-----------
* Velocity component 0 is ``v_x``, 1 is ``v_y``; arrays are indexed ``[y, x]`` (row = y, column =
  x), the layout of :mod:`keras_relaxeq.groups.cyclic`: a quarter turn of the flow is
  ``cyclic.rotate_grid`` of the frames with the ``"vector"`` fibre representation.
* ``sampling="staggered"`` (default, as the reference) stores PhiFlow's staggered velocity:
  ``v_x`` on the left cell faces, ``v_y`` on the lower faces (``staggered_tensor()[..., :64, :64]``).
  A quarter turn maps the faces of one component to those of the other *shifted by one cell*, so
  even an exactly symmetric pair of simulations differs by ~20% relative after ``rot90`` of these
  arrays.  ``sampling="centered"`` stores the velocity at cell centres, where a quarter turn is
  exact: two simulations whose parameters are rotated copies agree to float64 round-off
  (measured ~2e-15 relative).
* Windows (reference ``Dataset`` with ``mid = input_length + 2``): the sample at time ``t`` has
  the input frames ``[t + 2, t + 12)`` and the target frames ``[t + 12, t + 12 + k)``.

Disk layout: one ``.npy`` per simulation (float32 ``[309, 2, 64, 64]``), written atomically (a file
under its final name is always complete); ``manifest.json`` describes the configuration and the
simulations present.  Generation is resumable: a second call simulates only the missing files.
The simulation draws no random numbers (it is deterministic); the pipeline's shuffle is seeded.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from keras_relaxeq.utils import atomic_write

__all__ = [
    "INPUT_LENGTH",
    "PHIFLOW_VERSION",
    "SPLITS",
    "SimulationSpec",
    "SmokePlumeConfig",
    "default_data_dir",
    "generate_smoke_plume",
    "load_smoke_plume",
    "smoke_plume_config",
    "smoke_plume_dataset",
    "smoke_plume_windows",
    "split_tasks",
    "split_times",
    "simulate_smoke_plume",
]

from keras_relaxeq.datasets.smoke_plume_simulation import (  # noqa: F401  (re-exported)
    PHIFLOW_VERSION,
    PhiFlowMissingError,
    SimulationSpec,
    SmokePlumeConfig,
    _as_config,
    _downsample,
    simulate_smoke_plume,
    smoke_plume_config,
)

INPUT_LENGTH = 10
WINDOW_OFFSET = 2  # the reference's ``mid = input_length + 2``: inputs start 2 frames after t
SPLITS = ("train", "val", "test_future", "test_domain")
DEFAULT_OUTPUT_LENGTH = {"train": 6, "val": 6, "test_future": 20, "test_domain": 20}
# Time ranges of the reference (start times t of the windows).
TIME_SPLITS = {"train": (0, 160), "val": (160, 200), "test_future": (200, 250), "test_domain": (0, 100)}

_CACHE_ENV = "KERAS_RELAXEQ_CACHE"
_FORMAT_VERSION = 1
_MANIFEST = "manifest.json"


def _dir_name(config: SmokePlumeConfig) -> str:
    name = f"smoke_plume_{config.name}"
    if config.sampling != "staggered":
        name += f"_{config.sampling}"
    if config.num_steps != 310:
        name += f"_steps{config.num_steps}"
    return name


def default_data_dir(config="rotation") -> Path:
    """Folder of a configuration's files: ``$KERAS_RELAXEQ_CACHE/smoke_plume_<name>``.

    The cache root defaults to ``~/.keras/keras_relaxeq`` (as the other generated data sets).
    """
    root = os.environ.get(_CACHE_ENV) or os.path.join("~", ".keras", "keras_relaxeq")
    return Path(root).expanduser() / _dir_name(_as_config(config))


# --------------------------------------------------------------------------- #
# Cache on disk
# --------------------------------------------------------------------------- #
def _sim_path(data_dir: Path, name: str) -> Path:
    return data_dir / f"sim_{name}.npy"


def _expected_shape(config: SmokePlumeConfig) -> tuple:
    return (config.num_frames, 2, config.output_resolution, config.output_resolution)


def _read_sim(path: Path, config: SmokePlumeConfig, mmap: bool = False):
    """The array of ``path``, or ``None`` if it is missing, unreadable, of the wrong shape or not finite."""
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if array.shape != _expected_shape(config) or array.dtype != np.float32:
        return None
    if not mmap and not np.isfinite(array).all():
        return None
    return array


def _write_manifest(data_dir: Path, config: SmokePlumeConfig, present) -> None:
    try:
        from importlib.metadata import version

        phiflow_version = version("phiflow")
    except Exception:  # noqa: BLE001 - not installed: the files were written by another environment
        phiflow_version = None
    manifest = {
        "format_version": _FORMAT_VERSION,
        "phiflow_version": phiflow_version,
        "array": {
            "shape": list(_expected_shape(config)),
            "dtype": "float32",
            "axes": ["frame", "component (v_x, v_y)", "y", "x"],
        },
        "config": config.to_json(),
        "present": sorted(present, key=_sort_key),
        "files": {name: _sim_path(data_dir, name).name for name in sorted(present, key=_sort_key)},
    }
    text = json.dumps(manifest, indent=1)
    atomic_write(data_dir / _MANIFEST, text)


def _sort_key(name: str):
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def _groups(specs, chunk_size: int):
    """Simulations that can be batched together, in order, in chunks of at most ``chunk_size``."""
    by_key = {}
    for spec in specs:
        key = (spec.resolution, spec.velocity_dt, spec.smoke_dt, spec.downsample, spec.inflow_radius)
        by_key.setdefault(key, []).append(spec)
    for group in by_key.values():
        for start in range(0, len(group), chunk_size):
            yield group[start : start + chunk_size]


def generate_smoke_plume(config="rotation", data_dir=None, *, names=None, chunk_size: int = 6, progress=None) -> Path:
    """Simulate the missing simulations of ``config`` into ``data_dir``; return the folder.

    Resumable: files already present and valid are kept (a second call simulates nothing); a file
    that does not load with the expected shape, dtype and finite values is simulated again.  Each
    chunk of ``chunk_size`` simulations is batched into one PhiFlow run and its files are written
    atomically as soon as it finishes; ``manifest.json`` is rewritten after each chunk.

    Parameters
    ----------
    config : str or SmokePlumeConfig
        ``"rotation"``, ``"scale"`` or a configuration from :func:`smoke_plume_config`.
    data_dir : path-like, optional
        Default :func:`default_data_dir` (``$KERAS_RELAXEQ_CACHE/smoke_plume_<name>``).
    names : sequence of str, optional
        Only these simulations (default all).
    chunk_size : int
        Simulations batched together.
    progress : bool, optional
        tqdm bars (default on).
    """
    config = _as_config(config)
    data_dir = default_data_dir(config) if data_dir is None else Path(data_dir).expanduser()
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer (simulations batched together), got {chunk_size!r}.")
    wanted = [config.simulation(n) for n in names] if names is not None else list(config.simulations)
    present = {s.name for s in config.simulations if _read_sim(_sim_path(data_dir, s.name), config) is not None}
    missing = [s for s in wanted if s.name not in present]
    if not missing:
        if not (data_dir / _MANIFEST).exists():
            _write_manifest(data_dir, config, present)
        return data_dir
    show = True if progress is None else bool(progress)
    with tqdm(total=len(missing), disable=not show, unit="sim", desc=f"smoke plume {config.name}") as bar:
        for chunk in _groups(missing, int(chunk_size)):
            arrays = simulate_smoke_plume(
                chunk,
                config.num_steps,
                sampling=config.sampling,
                output_resolution=config.output_resolution,
                progress=show,
                desc=f"simulations {','.join(s.name for s in chunk)}",
            )
            for spec, array in zip(chunk, arrays):
                atomic_write(_sim_path(data_dir, spec.name), lambda f, a=array: np.save(f, a, allow_pickle=False))
                present.add(spec.name)
            _write_manifest(data_dir, config, present)
            bar.update(len(chunk))
    return data_dir


def load_smoke_plume(
    config="rotation", names=None, data_dir=None, *, generate: bool = True, mmap: bool = False, progress=None
) -> dict:
    """Velocity fields of the simulations ``names`` (default all), generated first if missing.

    Returns ``{name: float32 [frames, 2, H, W]}`` (component ``(v_x, v_y)``, rows = y).  With
    ``generate=False`` a missing simulation raises a ``FileNotFoundError`` that says how to
    generate it.
    """
    config = _as_config(config)
    data_dir = default_data_dir(config) if data_dir is None else Path(data_dir).expanduser()
    names = [s.name for s in config.simulations] if names is None else [config.simulation(n).name for n in names]
    out = {}
    missing = [n for n in names if _read_sim(_sim_path(data_dir, n), config, mmap=True) is None]
    if missing:
        if not generate:
            raise FileNotFoundError(
                f"{len(missing)} smoke plume simulation(s) of {config.name!r} missing in {data_dir} "
                f"(e.g. {_sim_path(data_dir, missing[0]).name}); generate them with "
                f"python -m keras_relaxeq.datasets.smoke_plume --config {config.name} --data-dir {data_dir}"
            )
        generate_smoke_plume(config, data_dir, names=missing, progress=progress)
    for name in names:
        array = _read_sim(_sim_path(data_dir, name), config, mmap=mmap)
        if array is None:
            raise OSError(
                f"{_sim_path(data_dir, name)} is not a valid {_expected_shape(config)} float32 array; "
                "delete it and load again to simulate it anew."
            )
        out[name] = array
    return out


# --------------------------------------------------------------------------- #
# Windows and tf.data
# --------------------------------------------------------------------------- #
def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}: choose one of {', '.join(map(repr, SPLITS))}.")
    return split


def split_tasks(config, split: str) -> tuple:
    """Simulation names of a split: the training simulations for train, val and test_future; the held-out
    ones for test_domain."""
    config = _as_config(config)
    return config.test_domain if _check_split(split) == "test_domain" else config.train


def split_times(
    split: str, num_frames: int = 309, output_length=None, input_length: int = INPUT_LENGTH, time_range=None
) -> np.ndarray:
    """Start times ``t`` of the windows of a split (reference ranges, cut so that the last target frame
    ``t + input_length + 2 + output_length - 1`` exists in ``num_frames`` frames)."""
    split = _check_split(split)
    k = DEFAULT_OUTPUT_LENGTH[split] if output_length is None else int(output_length)
    lo, hi = TIME_SPLITS[split] if time_range is None else time_range
    last = num_frames - (WINDOW_OFFSET + input_length + k)  # largest valid t
    times = np.arange(lo, min(hi, last + 1))
    if times.size == 0:
        raise ValueError(
            f"No window of split {split!r} fits in {num_frames} frames (input {input_length}, output {k}, "
            f"times [{lo}, {hi})): use more simulation steps or a shorter output_length."
        )
    return times


def smoke_plume_windows(data: np.ndarray, times, input_length: int = INPUT_LENGTH, output_length: int = 6):
    """Windows of one simulation ``data [frames, 2, H, W]``: inputs ``[n, input_length, H, W, 2]`` (frames
    ``t + 2 .. t + 1 + input_length``) and targets ``[n, output_length, H, W, 2]`` (the next frames),
    channels last.  A plain NumPy reference of what :func:`smoke_plume_dataset` yields."""
    times = np.asarray(times, dtype=np.int64)
    start = times[:, None] + WINDOW_OFFSET
    x = data[start + np.arange(input_length)]
    y = data[start + input_length + np.arange(output_length)]
    return np.moveaxis(x, 2, -1), np.moveaxis(y, 2, -1)


def smoke_plume_dataset(
    split: str = "train",
    batch_size: int = 16,
    *,
    config="rotation",
    output_length=None,
    input_length: int = INPUT_LENGTH,
    shuffle=None,
    seed=None,
    with_params: bool = False,
    data_dir=None,
    generate: bool = True,
    time_range=None,
    drop_remainder: bool = False,
    dtype="float32",
    progress=None,
):
    """``tf.data`` pipeline of smoke plume windows: ``input_length`` frames -> the next ``output_length``.

    Parameters
    ----------
    split : {"train", "val", "test_future", "test_domain"}
        train: training simulations, ``t < 160``; val: ``160 <= t < 200``; test_future: ``200 <= t < 250``
        (same simulations, later times); test_domain: the held-out simulations, ``t < 100``.
    batch_size : int
        Windows per batch (16 in the reference rotation runs).
    config : str or SmokePlumeConfig
        ``"rotation"`` (default) or ``"scale"``.
    output_length : int, optional
        Target frames; default 6 for train / val, 20 for the test splits (rollouts).
    shuffle : bool, optional
        Reshuffle every epoch; default only for train.
    seed : int, optional
        Seed of the shuffle.
    with_params : bool
        Yield ``({"frames", "buoyancy" [B, 2], "side" [B], "simulation" [B] (name), "time" [B]}, target)``
        instead of ``(frames, target)``.
    data_dir, generate, progress
        See :func:`load_smoke_plume`.
    time_range : (int, int), optional
        Override the split's range of start times (e.g. for a short generated set).

    Returns
    -------
    tf.data.Dataset
        ``frames [B, input_length, H, W, 2]`` (channels ``(v_x, v_y)``, rows = y) and
        ``target [B, output_length, H, W, 2]``.
    """
    import tensorflow as tf

    config = _as_config(config)
    split = _check_split(split)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    k = DEFAULT_OUTPUT_LENGTH[split] if output_length is None else int(output_length)
    if k < 1 or input_length < 1:
        raise ValueError(f"input_length and output_length must be >= 1, got {input_length} and {k}.")
    names = split_tasks(config, split)
    times = split_times(split, config.num_frames, k, input_length, time_range)
    data = load_smoke_plume(config, names, data_dir, generate=generate, mmap=True, progress=progress)
    last = int(times[-1]) + WINDOW_OFFSET + input_length + k
    frames = np.stack([np.moveaxis(np.asarray(data[n][:last]), 1, -1) for n in names])  # [S, T, H, W, 2]
    frames = tf.constant(frames, dtype=tf.as_dtype(dtype))
    specs = [config.simulation(n) for n in names]
    sim_index = np.repeat(np.arange(len(names)), len(times))
    start = np.tile(times, len(names))
    ds = tf.data.Dataset.from_tensor_slices((sim_index.astype(np.int32), start.astype(np.int32)))
    if shuffle if shuffle is not None else split == "train":
        ds = ds.shuffle(len(sim_index), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(int(batch_size), drop_remainder=drop_remainder)
    buoyancy = tf.constant([s.buoyancy for s in specs], dtype=tf.as_dtype(dtype))
    side = tf.constant([s.side for s in specs], dtype=tf.int32)
    sim_names = tf.constant([s.name for s in specs])
    in_offsets = tf.range(input_length, dtype=tf.int32) + WINDOW_OFFSET
    out_offsets = tf.range(k, dtype=tf.int32) + WINDOW_OFFSET + input_length

    def window(sim, t, offsets):
        steps = t[:, None] + offsets[None]  # [B, L]
        index = tf.stack([tf.broadcast_to(sim[:, None], tf.shape(steps)), steps], axis=-1)
        return tf.gather_nd(frames, index)  # [B, L, H, W, 2]

    def gather(sim, t):
        x, y = window(sim, t, in_offsets), window(sim, t, out_offsets)
        if not with_params:
            return x, y
        return {
            "frames": x,
            "buoyancy": tf.gather(buoyancy, sim),
            "side": tf.gather(side, sim),
            "simulation": tf.gather(sim_names, sim),
            "time": t,
        }, y

    ds = ds.map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------------- #
# Command line: python -m keras_relaxeq.datasets.smoke_plume
# --------------------------------------------------------------------------- #
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Generate a smoke plume data set with PhiFlow (resumable).")
    parser.add_argument("--config", default="rotation", choices=("rotation", "scale"))
    parser.add_argument("--data-dir", default=None, help="default: $KERAS_RELAXEQ_CACHE/smoke_plume_<config>")
    parser.add_argument("--sampling", default="staggered", choices=("staggered", "centered"))
    parser.add_argument("--chunk-size", type=int, default=6, help="simulations batched in one PhiFlow run")
    parser.add_argument("--names", nargs="+", default=None, help="only these simulations (default all)")
    parser.add_argument("--num-steps", type=int, default=310, help="fewer steps for a quick check (310 in the sets)")
    parser.add_argument("--resolution", type=int, default=64, help="stored grid; smaller for a quick check")
    args = parser.parse_args(argv)
    config = smoke_plume_config(
        args.config, sampling=args.sampling, num_steps=args.num_steps, resolution=args.resolution
    )
    start = time.time()
    path = generate_smoke_plume(config, args.data_dir, names=args.names, chunk_size=args.chunk_size)
    size = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    print(
        f"{config.name}: {len(config.simulations)} simulations in {path} ({size / 2**20:.1f} MiB), "
        f"{time.time() - start:.0f} s"
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
