"""Revised MD17 (rMD17): reader, the 950 / 50 / 1000 protocol, target scaling and the ``tf.data`` pipeline.

The data are split 01 of the revised MD17 set of Christensen and von Lilienfeld (2020, CC0): for each of
ten small molecules, ``rmd17_<molecule>_train_01.npz`` and ``rmd17_<molecule>_test_01.npz`` hold 1,000
disjoint frames of an MD trajectory each, with keys ``nuclear_charges`` ``[A]`` uint8, ``coords``
``[F, A, 3]`` (Å), ``energies`` ``[F]`` (kcal/mol) and ``forces`` ``[F, A, 3]`` (kcal/mol/Å) recomputed at
PBE/def2-SVP, ``old_energies`` / ``old_forces`` (the original MD17 labels of the same frames) and
``old_indices`` (each frame's index in the original trajectory).

Protocol (Equiformer's MD17 setting): 950 training and 50 validation frames drawn from ``train_01`` by
``numpy.random.default_rng(split_seed).permutation(n)`` (the first 950 of the permutation train, the next 50
validate; both returned in file order), and all 1,000 frames of ``test_01`` for testing.  The label set is
chosen by ``labels``: ``"rmd17"`` (the recomputed labels) or ``"md17"`` (the original ones, which the paper
used; they are noisier).  Errors are reported in meV and meV/Å: 1 kcal/mol = 43.364 meV.

Targets are standardised with statistics of the training split only (:class:`TargetScaler`):
``energy' = (E - mean) / scale`` and ``forces' = F / scale``, one ``scale`` for both so that
``forces' = -d energy' / d positions`` still holds; ``scale`` is the training energy std by default
(Equiformer's recipe) or the training force rms.

The reader keeps energies in float64: absolute energies (-4e5 kcal/mol for aspirin) have a float32 spacing of
0.03 kcal/mol (1.4 meV); the pipeline subtracts the mean in float64 before it casts to float32.

``python -m keras_relaxeq.datasets.rmd17 --stats`` prints the statistics of every molecule (``docs/rmd17.md``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import threading
import zipfile
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

__all__ = [
    "DATA_ENV_VAR",
    "DEFAULT_CUTOFF",
    "KCAL_MOL_TO_MEV",
    "LABEL_SETS",
    "MOLECULES",
    "NUM_TRAIN",
    "NUM_VALIDATION",
    "RMD17Data",
    "SPLITS",
    "TargetScaler",
    "TargetStatistics",
    "clear_cache",
    "data_file",
    "kcal_mol_to_mev",
    "load_rmd17",
    "mae_mev",
    "mev_to_kcal_mol",
    "radius_graph",
    "read_rmd17_file",
    "resolve_data_dir",
    "rmd17_dataset",
    "rmd17_target_scaler",
    "split_indices",
    "target_statistics",
]

MOLECULES = {
    "aspirin": 21,
    "azobenzene": 24,
    "benzene": 12,
    "ethanol": 9,
    "malonaldehyde": 9,
    "naphthalene": 18,
    "paracetamol": 20,
    "salicylic": 16,
    "toluene": 15,
    "uracil": 12,
}
"""The ten molecules and their atom counts."""

LABEL_SETS = ("rmd17", "md17")
"""``"rmd17"``: recomputed PBE/def2-SVP labels; ``"md17"``: the original MD17 labels of the same frames."""

SPLITS = ("train", "validation", "test")
NUM_TRAIN, NUM_VALIDATION = 950, 50
FILE_SPLIT = "01"
KCAL_MOL_TO_MEV = 43.364
"""1 kcal/mol in meV (and 1 kcal/mol/Å in meV/Å)."""
DEFAULT_CUTOFF = 5.0
"""Radius of the neighbour graph, Å."""

DATA_ENV_VAR = "KERAS_RELAXEQ_DATA"
"""Environment variable naming a folder that contains ``rmd17/`` (or the rMD17 files themselves)."""
DATA_SUBDIR = "rmd17"
DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data"
"""Fallback data root: ``<repo>/../shared/data`` (the files in its ``rmd17/``)."""
DOWNLOAD_URL = "https://raw.githubusercontent.com/andersx/rmd17-npz/master/rmd17-npz/"
FIGSHARE_URL = "https://figshare.com/articles/dataset/Revised_MD17_dataset_rMD17_/12672038"

_LABEL_KEYS = {"rmd17": ("energies", "forces"), "md17": ("old_energies", "old_forces")}
_FRAME_KEYS = ("coords", "energies", "forces", "old_energies", "old_forces", "old_indices")
_KEYS = ("nuclear_charges", *_FRAME_KEYS)


# ----------------------------------------------------------------------------- argument checks


def _check_molecule(molecule) -> str:
    if molecule not in MOLECULES:
        raise ValueError(f"Unknown rMD17 molecule {molecule!r}: choose one of {', '.join(MOLECULES)}.")
    return molecule


def _check_labels(labels) -> str:
    if labels not in LABEL_SETS:
        raise ValueError(
            f"Unknown label set {labels!r}: choose 'rmd17' (energies/forces recomputed at PBE/def2-SVP) "
            "or 'md17' (old_energies/old_forces, the original MD17 labels of the same frames)."
        )
    return labels


def _check_split(split) -> str:
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}: choose one of {', '.join(map(repr, SPLITS))}.")
    return split


def _check_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}.")
    return int(value)


# ----------------------------------------------------------------------------- locating data


_HOW_TO_GET = (
    f"Download split 01 of the rMD17 npz files into a folder named {DATA_SUBDIR}/ below ${DATA_ENV_VAR} "
    f"(or {DEFAULT_DATA_ROOT}, or pass data_dir=<folder>), e.g. wget {DOWNLOAD_URL}rmd17_ethanol_train_01.npz "
    f"{DOWNLOAD_URL}rmd17_ethanol_test_01.npz (all files: {FIGSHARE_URL})."
)


def _holds_rmd17(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob(f"rmd17_*_{FILE_SPLIT}.npz"))


def _find_data_dir(root: Path) -> Path | None:
    for folder in (root, root / DATA_SUBDIR):
        if _holds_rmd17(folder):
            return folder
    return None


def resolve_data_dir(data_dir=None) -> Path:
    """The folder holding the ``rmd17_*_01.npz`` files.

    Order: ``data_dir`` (the folder itself or its parent), else ``$KERAS_RELAXEQ_DATA`` (likewise), else
    ``<repo>/../shared/data/rmd17``.  An explicit ``data_dir`` or environment variable without rMD17 files
    is an error (no silent fallback).
    """
    if data_dir is not None:
        found = _find_data_dir(Path(data_dir).expanduser())
        if found is None:
            raise FileNotFoundError(
                f"No rMD17 files (rmd17_*_{FILE_SPLIT}.npz) in data_dir={str(data_dir)!r} or its {DATA_SUBDIR}/. "
                + _HOW_TO_GET
            )
        return found
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        found = _find_data_dir(Path(env).expanduser())
        if found is None:
            raise FileNotFoundError(
                f"No rMD17 files (rmd17_*_{FILE_SPLIT}.npz) in ${DATA_ENV_VAR}={env!r} or its {DATA_SUBDIR}/. "
                f"Fix or unset {DATA_ENV_VAR}, or pass data_dir=... {_HOW_TO_GET}"
            )
        return found
    found = _find_data_dir(DEFAULT_DATA_ROOT)
    if found is None:
        raise FileNotFoundError(f"rMD17 data not found. {_HOW_TO_GET}")
    return found


def data_file(molecule: str, file_split: str = "train", data_dir=None) -> Path:
    """Path of ``rmd17_<molecule>_<file_split>_01.npz`` (``file_split`` ``"train"`` or ``"test"``); a missing
    file raises ``FileNotFoundError`` saying where it should be and where to download it."""
    _check_molecule(molecule)
    if file_split not in ("train", "test"):
        raise ValueError(f"file_split must be 'train' or 'test', got {file_split!r}.")
    folder = resolve_data_dir(data_dir)
    path = folder / f"rmd17_{molecule}_{file_split}_{FILE_SPLIT}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path.name} is missing in {folder}: wget -P {folder} {DOWNLOAD_URL}{path.name}")
    return path


# ----------------------------------------------------------------------------- reading


def _check_finite(path, key, array) -> None:
    finite = np.isfinite(array).reshape(array.shape[0], -1).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(
            f"{path}: {key!r} has NaN/Inf values in {bad.size} frame(s), the first at frame {bad[0]}; "
            "the file is damaged: download it again."
        )


def read_rmd17_file(path, molecule: str | None = None) -> dict:
    """The arrays of one rMD17 npz file (a dict keyed like the file, dtypes as stored), checked: every key
    present, consistent shapes, real finite numbers, and (with ``molecule``) the molecule's atom count."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: np.asarray(f[k]) for k in _KEYS if k in f.files}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise ValueError(f"{path} is not a readable npz file ({exc}); download it again.") from None
    missing = [k for k in _KEYS if k not in arrays]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}; an rMD17 npz file has {list(_KEYS)}.")
    z = arrays["nuclear_charges"]
    if z.ndim != 1 or z.size == 0:
        raise ValueError(f"{path}: 'nuclear_charges' must have shape [atoms], got {z.shape}.")
    if not np.issubdtype(z.dtype, np.integer) or z.min() < 1 or z.max() > 118:
        raise ValueError(f"{path}: 'nuclear_charges' must be atomic numbers 1..118, got {z.dtype} {z.tolist()}.")
    atoms = z.size
    if molecule is not None and atoms != MOLECULES[_check_molecule(molecule)]:
        raise ValueError(f"{path}: {atoms} atoms, but {molecule} has {MOLECULES[molecule]}.")
    coords = arrays["coords"]
    if coords.ndim != 3 or coords.shape[1:] != (atoms, 3) or coords.shape[0] == 0:
        raise ValueError(f"{path}: 'coords' must have shape [frames, {atoms}, 3], got {coords.shape}.")
    frames = coords.shape[0]
    for key in _FRAME_KEYS:
        shape = (frames, atoms, 3) if key in ("coords", "forces", "old_forces") else (frames,)
        if arrays[key].shape != shape:
            raise ValueError(f"{path}: {key!r} must have shape {shape}, got {arrays[key].shape}.")
        kinds, what = ("iu", "integers") if key == "old_indices" else ("iuf", "real numbers")
        if arrays[key].dtype.kind not in kinds:
            raise ValueError(f"{path}: {key!r} must hold {what}, got dtype {arrays[key].dtype}.")
        if key != "old_indices":
            _check_finite(path, key, arrays[key])
    for array in arrays.values():
        array.setflags(write=False)
    return arrays


_CACHE: dict = {}
_LOCK = threading.Lock()


def clear_cache() -> None:
    """Forget the files read by :func:`load_rmd17` in this process."""
    with _LOCK:
        _CACHE.clear()


def _read_cached(path: Path, molecule: str) -> dict:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, molecule)
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = read_rmd17_file(path, molecule)
        return _CACHE[key]


# ----------------------------------------------------------------------------- the protocol


def split_indices(num_frames: int = 1000, split_seed: int = 0) -> tuple:
    """``(train, validation)`` frame indices of ``train_01``: 950 and 50 (sorted int64), drawn with
    ``numpy.random.default_rng(split_seed).permutation(num_frames)`` (train = its first 950, validation the
    next 50).  Needs ``num_frames >= 1000``; frames past the first 1000 of the permutation are unused."""
    num_frames, split_seed = _check_int("num_frames", num_frames), _check_int("split_seed", split_seed)
    if num_frames < NUM_TRAIN + NUM_VALIDATION:
        raise ValueError(
            f"The training file has {num_frames} frames; the protocol draws {NUM_TRAIN} training and "
            f"{NUM_VALIDATION} validation frames from it, so it needs at least {NUM_TRAIN + NUM_VALIDATION}."
        )
    order = np.random.default_rng(split_seed).permutation(num_frames)
    train = np.sort(order[:NUM_TRAIN]).astype(np.int64)
    validation = np.sort(order[NUM_TRAIN : NUM_TRAIN + NUM_VALIDATION]).astype(np.int64)
    return train, validation


@dataclasses.dataclass(frozen=True)
class RMD17Data:
    """One split of one molecule in memory (read-only arrays).

    ``positions`` float32 ``[F, A, 3]`` (Å), ``atomic_numbers`` int32 ``[A]``, ``energy`` float64 ``[F]``
    (kcal/mol; float64 because float32 cannot resolve absolute energies to better than 0.03 kcal/mol),
    ``forces`` float32 ``[F, A, 3]`` (kcal/mol/Å) of the label set ``labels``; ``frame_indices`` int64 ``[F]``
    (rows of ``path``) and ``md17_indices`` int64 ``[F]`` (frames of the original MD17 trajectory).
    """

    molecule: str
    split: str
    labels: str
    positions: np.ndarray
    atomic_numbers: np.ndarray
    energy: np.ndarray
    forces: np.ndarray
    frame_indices: np.ndarray
    md17_indices: np.ndarray
    path: Path

    @property
    def num_frames(self) -> int:
        return int(self.positions.shape[0])

    @property
    def num_atoms(self) -> int:
        return int(self.atomic_numbers.shape[0])

    def __len__(self) -> int:
        return self.num_frames


def load_rmd17(
    molecule: str, split: str = "train", labels: str = "rmd17", data_dir=None, *, split_seed: int = 0
) -> RMD17Data:
    """One split of ``molecule``: ``"train"`` (950 frames of ``train_01``), ``"validation"`` (the other 50
    drawn by :func:`split_indices` with ``split_seed``) or ``"test"`` (all of ``test_01``), with the labels
    ``"rmd17"`` or ``"md17"``.  ``data_dir`` as :func:`resolve_data_dir`; files are read once per process."""
    _check_split(split)
    _check_labels(labels)
    path = data_file(molecule, "test" if split == "test" else "train", data_dir)
    arrays = _read_cached(path, molecule)
    if split == "test":
        rows = np.arange(arrays["coords"].shape[0], dtype=np.int64)
    else:
        train, validation = split_indices(arrays["coords"].shape[0], split_seed)
        rows = train if split == "train" else validation
    energy_key, forces_key = _LABEL_KEYS[labels]
    fields = {
        "positions": arrays["coords"][rows].astype(np.float32),
        "atomic_numbers": arrays["nuclear_charges"].astype(np.int32),
        "energy": arrays[energy_key][rows].astype(np.float64),
        "forces": arrays[forces_key][rows].astype(np.float32),
        "frame_indices": rows,
        "md17_indices": arrays["old_indices"][rows].astype(np.int64),
    }
    for array in fields.values():
        array.setflags(write=False)
    return RMD17Data(molecule=molecule, split=split, labels=labels, path=path, **fields)


# ----------------------------------------------------------------------------- units and scaling


def kcal_mol_to_mev(value):
    """kcal/mol -> meV (and kcal/mol/Å -> meV/Å), for a number or an array (float64)."""
    out = np.asarray(value, dtype=np.float64) * KCAL_MOL_TO_MEV
    return float(out) if out.ndim == 0 else out


def mev_to_kcal_mol(value):
    """meV -> kcal/mol (and meV/Å -> kcal/mol/Å)."""
    out = np.asarray(value, dtype=np.float64) / KCAL_MOL_TO_MEV
    return float(out) if out.ndim == 0 else out


def mae_mev(prediction, target) -> float:
    """Mean absolute error in meV (or meV/Å) of predictions and targets given in kcal/mol (kcal/mol/Å),
    computed in float64; for forces the mean runs over every x, y, z component."""
    prediction, target = np.asarray(prediction, np.float64), np.asarray(target, np.float64)
    if prediction.shape != target.shape:
        raise ValueError(f"prediction and target shapes differ: {prediction.shape} vs {target.shape}.")
    return kcal_mol_to_mev(np.mean(np.abs(prediction - target)))


@dataclasses.dataclass(frozen=True)
class TargetStatistics:
    """Label statistics of a split (float64): energy mean and std in kcal/mol (``ddof=1``, as Equiformer's
    ``torch.std``), force rms ``sqrt(mean F^2)`` and mean ``|F|`` component in kcal/mol/Å."""

    energy_mean: float
    energy_std: float
    force_rms: float
    force_mean_abs: float
    num_frames: int


def target_statistics(data: RMD17Data) -> TargetStatistics:
    """:class:`TargetStatistics` of ``data`` (any split; the scaler uses the training split only)."""
    energy, forces = np.asarray(data.energy, np.float64), np.asarray(data.forces, np.float64)
    if energy.size < 2:
        raise ValueError(f"Label statistics need at least 2 frames, got {energy.size}.")
    return TargetStatistics(
        energy_mean=float(energy.mean()),
        energy_std=float(energy.std(ddof=1)),
        force_rms=float(np.sqrt(np.mean(forces**2))),
        force_mean_abs=float(np.mean(np.abs(forces))),
        num_frames=len(data),
    )


_SCALE_BY = ("energy_std", "force_rms")


@dataclasses.dataclass(frozen=True)
class TargetScaler:
    """Standardised targets: ``energy' = (E - energy_mean) / scale``, ``forces' = F / scale`` (kcal/mol).

    One ``scale`` for energy and forces keeps ``forces' = -d energy' / d positions``.  Works on NumPy
    arrays and TF tensors alike; pass float64 arrays to :meth:`energy_from_standard` to keep the absolute
    energies exact.  :meth:`get_config` is a JSON-ready dict (store it with a model; :meth:`from_config`).
    """

    energy_mean: float
    scale: float
    scale_by: str = "energy_std"
    molecule: str | None = None
    labels: str | None = None
    split_seed: int | None = None

    def __post_init__(self):
        for name in ("energy_mean", "scale"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if not math.isfinite(self.energy_mean) or not math.isfinite(self.scale) or self.scale <= 0:
            raise ValueError(f"TargetScaler needs a finite energy_mean and scale > 0, got {self}.")
        if self.scale_by not in _SCALE_BY + ("custom",):
            raise ValueError(f"scale_by must be one of {_SCALE_BY + ('custom',)}, got {self.scale_by!r}.")

    @classmethod
    def from_statistics(cls, stats: TargetStatistics, scale_by: str = "energy_std", **meta) -> TargetScaler:
        if scale_by not in _SCALE_BY:
            raise ValueError(f"scale_by must be one of {_SCALE_BY}, got {scale_by!r}.")
        return cls(stats.energy_mean, getattr(stats, scale_by), scale_by, **meta)

    def energy_to_standard(self, energy):
        return (energy - self.energy_mean) / self.scale

    def energy_from_standard(self, energy):
        return energy * self.scale + self.energy_mean

    def forces_to_standard(self, forces):
        return forces / self.scale

    def forces_from_standard(self, forces):
        return forces * self.scale

    def standardize(self, targets: dict) -> dict:
        """``{"energy", "forces"}`` in kcal/mol -> standardised."""
        return {"energy": self.energy_to_standard(targets["energy"]), "forces": targets["forces"] / self.scale}

    def unstandardize(self, targets: dict) -> dict:
        """Standardised ``{"energy", "forces"}`` (e.g. a model's outputs) -> kcal/mol, kcal/mol/Å."""
        return {"energy": self.energy_from_standard(targets["energy"]), "forces": targets["forces"] * self.scale}

    def mae_to_mev(self, mae) -> float:
        """A mean absolute error of standardised energies or forces -> meV (meV/Å)."""
        return kcal_mol_to_mev(float(mae) * self.scale)

    def get_config(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config: dict) -> TargetScaler:
        return cls(**config)


def rmd17_target_scaler(
    molecule: str, labels: str = "rmd17", *, scale_by: str = "energy_std", split_seed: int = 0, data_dir=None
) -> TargetScaler:
    """The :class:`TargetScaler` of the 950 training frames of ``molecule`` (never validation or test)."""
    train = load_rmd17(molecule, "train", labels, data_dir, split_seed=split_seed)
    return TargetScaler.from_statistics(
        target_statistics(train), scale_by, molecule=molecule, labels=labels, split_seed=int(split_seed)
    )


# ----------------------------------------------------------------------------- tf.data


def radius_graph(positions, cutoff: float = DEFAULT_CUTOFF):
    """Dense radius graph of ``positions [..., A, 3]``: float32 ``[..., A, A]``, 1 where
    ``0 < |r_i - r_j| < cutoff`` (compared as squared distances), so 0 on the diagonal (TF ops)."""
    import tensorflow as tf

    number = isinstance(cutoff, (int, float, np.floating, np.integer)) and not isinstance(cutoff, bool)
    if not (number and 0 < float(cutoff) < math.inf):
        raise ValueError(f"cutoff must be a positive number (Å), got {cutoff!r}.")
    positions = tf.convert_to_tensor(positions)
    diff = positions[..., :, None, :] - positions[..., None, :, :]
    dist2 = tf.reduce_sum(tf.square(diff), axis=-1)
    inside = (dist2 > 0) & (dist2 < tf.cast(float(cutoff) ** 2, dist2.dtype))
    return tf.cast(inside, tf.float32)


def rmd17_dataset(
    molecule: str,
    split: str = "train",
    batch_size: int = 8,
    *,
    labels: str = "rmd17",
    shuffle: bool | None = None,
    seed: int | None = 0,
    split_seed: int = 0,
    cutoff: float | None = DEFAULT_CUTOFF,
    standardize=False,
    drop_remainder: bool = False,
    data_dir=None,
):
    """Batches ``(inputs, targets)`` of one molecule's split for ``model.fit`` / ``evaluate``.

    ``inputs``: ``positions`` float32 ``[B, A, 3]`` (Å), ``atomic_numbers`` int32 ``[B, A]`` and, unless
    ``cutoff=None``, ``neighbors`` float32 ``[B, A, A]`` (:func:`radius_graph` with ``cutoff``, computed in
    the pipeline).  ``targets``: ``energy`` float32 ``[B]`` and ``forces`` float32 ``[B, A, 3]``, in kcal/mol
    and kcal/mol/Å, or standardised with ``standardize=True`` (the scaler of :func:`rmd17_target_scaler` for
    the same ``molecule``, ``labels``, ``split_seed``) or a given :class:`TargetScaler`; the mean is removed
    in float64 before the cast.  Unstandardised absolute energies in float32 are rounded to 0.03 kcal/mol.

    ``shuffle`` (default: train only) reshuffles every epoch with ``seed``; ``split_seed`` picks the
    950 / 50 split (:func:`split_indices`); the last, smaller batch is dropped only with ``drop_remainder``.
    """
    import tensorflow as tf

    batch_size = _check_int("batch_size", batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    if cutoff is not None:
        radius_graph(np.zeros((1, 3), np.float32), cutoff)  # checks the value before any data is read
    data = load_rmd17(molecule, split, labels, data_dir, split_seed=split_seed)
    if standardize is True:
        scaler = rmd17_target_scaler(molecule, labels, split_seed=split_seed, data_dir=data_dir)
    elif standardize is False or standardize is None:
        scaler = None
    elif isinstance(standardize, TargetScaler):
        scaler = standardize
    else:
        raise TypeError(f"standardize must be True, False or a TargetScaler, got {standardize!r}.")
    energy, forces = data.energy, data.forces.astype(np.float64)
    if scaler is not None:
        energy, forces = scaler.energy_to_standard(energy), scaler.forces_to_standard(forces)
    ds = tf.data.Dataset.from_tensor_slices((data.positions, energy.astype(np.float32), forces.astype(np.float32)))
    if (split == "train") if shuffle is None else shuffle:
        ds = ds.shuffle(len(data), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=bool(drop_remainder))
    numbers = tf.constant(data.atomic_numbers, tf.int32)

    def to_model(positions, energy, forces):
        inputs = {"positions": positions, "atomic_numbers": tf.tile(numbers[None], [tf.shape(positions)[0], 1])}
        if cutoff is not None:
            inputs["neighbors"] = radius_graph(positions, cutoff)
        return inputs, {"energy": energy, "forces": forces}

    return ds.map(to_model, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)


# ----------------------------------------------------------------------------- statistics (command line)


def molecule_statistics(molecule: str, *, split_seed: int = 0, cutoff: float = DEFAULT_CUTOFF, data_dir=None) -> dict:
    """Statistics of the training split of ``molecule`` for both label sets (kcal/mol, kcal/mol/Å, Å):
    energy std, force rms, the label difference ``mean |F_rmd17 - F_md17|`` and ``std(E_rmd17 - E_md17)``,
    the largest interatomic distance and the mean number of neighbours per atom within ``cutoff``."""
    sets = {labels: load_rmd17(molecule, "train", labels, data_dir, split_seed=split_seed) for labels in LABEL_SETS}
    out = {"molecule": molecule, "atoms": sets["rmd17"].num_atoms, "frames": len(sets["rmd17"])}
    for labels, data in sets.items():
        stats = target_statistics(data)
        out[labels] = {k: v for k, v in dataclasses.asdict(stats).items() if k != "num_frames"}
    new, old = sets["rmd17"], sets["md17"]
    out["force_label_mad"] = float(np.mean(np.abs(new.forces.astype(np.float64) - old.forces)))
    out["energy_label_diff_std"] = float(np.std(new.energy - old.energy))
    pos = new.positions.astype(np.float64)
    dist = np.sqrt(np.sum((pos[:, :, None] - pos[:, None]) ** 2, axis=-1))
    out["max_distance"] = float(dist.max())
    out["neighbors_per_atom"] = float(((dist > 0) & (dist < cutoff)).sum(axis=-1).mean())
    return out


def _markdown(rows: list, cutoff: float) -> str:
    head = (
        "| molecule | atoms | E std rMD17 | E std MD17 | F rms rMD17 | F rms MD17 | mean abs dF | std dE "
        f"| max distance | neighbours/atom < {cutoff:g} Å |\n|" + " --- |" * 10
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['molecule']} | {r['atoms']} | {r['rmd17']['energy_std']:.3f} | {r['md17']['energy_std']:.3f} "
            f"| {r['rmd17']['force_rms']:.2f} | {r['md17']['force_rms']:.2f} | {r['force_label_mad']:.2f} "
            f"| {r['energy_label_diff_std']:.3f} | {r['max_distance']:.2f} | {r['neighbors_per_atom']:.2f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Check the rMD17 files and print their statistics.")
    parser.add_argument("--stats", action="store_true", help="label statistics of every training split")
    parser.add_argument("--molecules", nargs="+", default=list(MOLECULES), choices=list(MOLECULES))
    parser.add_argument("--data-dir", default=None, help=f"default: ${DATA_ENV_VAR}/{DATA_SUBDIR}")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--cutoff", type=float, default=DEFAULT_CUTOFF)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    args = parser.parse_args(argv)
    folder = resolve_data_dir(args.data_dir)
    if not args.stats:
        for molecule in args.molecules:
            sizes = {s: len(load_rmd17(molecule, s, data_dir=folder, split_seed=args.split_seed)) for s in SPLITS}
            print(f"{molecule}: {MOLECULES[molecule]} atoms, " + ", ".join(f"{s} {n}" for s, n in sizes.items()))
        print(f"all files valid in {folder}")
        return 0
    rows = [
        molecule_statistics(m, split_seed=args.split_seed, cutoff=args.cutoff, data_dir=folder)
        for m in tqdm(args.molecules, desc="rMD17 statistics", unit="molecule")
    ]
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(f"Training split (950 frames, split_seed {args.split_seed}) of {folder}; kcal/mol, kcal/mol/Å, Å.")
        print(_markdown(rows, args.cutoff))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
