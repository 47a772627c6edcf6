"""Fault-tolerant backups of a training run: :class:`MultiWorkerBackupAndRestore` writes them, :func:`read_backup`
checks one as a whole before it is resumed from, :class:`CountedDataset` replays the passes over the data.

A backup directory holds ``latest.weights.h5`` (weights and optimizer state), ``training_metadata.json`` and
``manifest.json``, the commit: written last and atomically, it names every other file with its sha256 and
records the epoch, theta, the optimizer step, the data passes and the run config.  Files written but not yet
committed carry the prefix :data:`PENDING`.
"""

from __future__ import annotations

import json
import os

import keras
import tensorflow as tf

from keras_relaxeq.training import distribute as dist
from keras_relaxeq.utils import atomic_write, is_local_path, sha256_file

__all__ = [
    "MANIFEST",
    "MANIFEST_FORMAT",
    "PENDING",
    "BackupError",
    "read_backup",
    "CountedDataset",
    "MultiWorkerBackupAndRestore",
]

#: the file that commits a backup: written last, atomically, it names every file of the backup with its
#: sha256, the epoch, theta, the optimizer step, the passes over the data pipelines and the run config
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
#: prefix of a backup file written but not yet committed (renamed to its name after the manifest)
PENDING = "tmp-pending."


class BackupError(ValueError):
    """A backup that cannot be resumed from (incomplete, damaged, or of another run); the message
    says what is wrong and what to do."""


def _fsync(path: str) -> None:
    """Flush a written local file to disk (remote file systems commit on close)."""
    if is_local_path(path):
        with open(path, "rb") as f:
            os.fsync(f.fileno())


def _write_manifest(path: str, text: str) -> None:
    """Commit a backup: its manifest ``text`` into ``path`` atomically, flushed to disk first when local."""
    atomic_write(path, text, fsync=True)


def _jsonable(config):
    """``config`` as it reads back from JSON (tuples become lists, other objects strings)."""
    return json.loads(json.dumps(dict(config), default=str))


def _option(key, value) -> str:
    flag = "--" + str(key).replace("_", "-")
    if isinstance(value, bool):
        return flag if value else "--no-" + str(key).replace("_", "-")
    return f"{flag} {value}"


def _fresh_hint(backup_dir) -> str:
    return f"start over with --fresh (or delete {backup_dir})"


def read_backup(backup_dir, *, config=None, epochs=None, may_differ=()) -> dict | None:
    """The checked manifest of the backup in ``backup_dir``, or None when there is none yet.

    A backup is used only as a whole: every file its manifest names must be there with the
    recorded sha256 (a file still under its pending name counts: the writer was stopped after the
    commit, before the renames), the epoch must be an integer >= 0 and at most ``epochs``, and every
    entry of ``config`` except the keys ``may_differ`` must equal the run config the backup was
    written with (keys one of the two configs lacks are not compared: options added later).
    Anything else raises :class:`BackupError` with what is wrong and what to do.

    A backup written before manifests existed (``latest.weights.h5`` and
    ``training_metadata.json`` only) is accepted when both files are there and the epoch is valid;
    its config cannot be checked (``"legacy": True`` in the result).

    The result has ``"epoch"``, ``"paths"`` (file name -> path to read it from) and the manifest's
    other entries (``"theta"``, ``"iterations"``, ``"data_passes"``, ``"config"``).
    """
    backup_dir = str(backup_dir)
    manifest_path = os.path.join(backup_dir, MANIFEST)
    weights_name, metadata_name = "latest.weights.h5", "training_metadata.json"
    if not tf.io.gfile.exists(manifest_path):
        present = [n for n in (weights_name, metadata_name) if tf.io.gfile.exists(os.path.join(backup_dir, n))]
        if not present:
            return None  # no backup committed yet (at most the pending files of an interrupted first one)
        if len(present) == 1:
            missing = ({weights_name, metadata_name} - set(present)).pop()
            raise BackupError(
                f"The backup in {backup_dir} is incomplete: it has {present[0]} but no {missing} (and "
                f"no {MANIFEST}); it cannot be resumed from: {_fresh_hint(backup_dir)}."
            )
        metadata_path = os.path.join(backup_dir, metadata_name)
        metadata = _read_json(metadata_path, backup_dir)
        epoch = _check_epoch(metadata.get("epoch") if isinstance(metadata, dict) else None, metadata_path, backup_dir)
        manifest = {
            "format": 0,
            "legacy": True,
            "epoch": epoch,
            "files": {},
            "paths": {n: os.path.join(backup_dir, n) for n in present},
        }
    else:
        manifest = _read_json(manifest_path, backup_dir)
        files = manifest.get("files") if isinstance(manifest, dict) else None
        if (
            not isinstance(manifest, dict)
            or manifest.get("format") != MANIFEST_FORMAT
            or not isinstance(files, dict)
            or weights_name not in files
        ):
            raise BackupError(
                f"The backup manifest {manifest_path} is not one this version writes (format "
                f"{MANIFEST_FORMAT} with a 'files' entry naming {weights_name}); "
                f"{_fresh_hint(backup_dir)}."
            )
        _check_epoch(manifest.get("epoch"), manifest_path, backup_dir)
        paths = {}
        for name, record in files.items():
            expected = record.get("sha256") if isinstance(record, dict) else None
            for candidate in (os.path.join(backup_dir, name), os.path.join(backup_dir, PENDING + name)):
                if tf.io.gfile.exists(candidate) and sha256_file(candidate) == expected:
                    paths[name] = candidate
                    break
            else:
                state = (
                    "does not match its manifest (truncated or changed after the backup)"
                    if tf.io.gfile.exists(os.path.join(backup_dir, name))
                    else "is missing"
                )
                raise BackupError(
                    f"The backup in {backup_dir} is damaged: {name} {state}; it cannot be resumed "
                    f"from: {_fresh_hint(backup_dir)}."
                )
        manifest = dict(manifest, paths=paths, legacy=False)
    if epochs is not None and manifest["epoch"] > int(epochs):
        raise BackupError(
            f"The backup in {backup_dir} is after epoch {manifest['epoch']} but --epochs is {epochs}: "
            f"pass --epochs {manifest['epoch']} or more to continue that run, or "
            f"{_fresh_hint(backup_dir)}."
        )
    stored = manifest.get("config")
    if config is not None and isinstance(stored, dict):
        current = _jsonable(config)
        differ = [k for k in stored if k in current and k not in set(may_differ) and stored[k] != current[k]]
        if differ:
            theirs = " ".join(_option(k, stored[k]) for k in differ)
            ours = " ".join(_option(k, current[k]) for k in differ)
            raise BackupError(
                f"The backup in {backup_dir} is of a run with {theirs}, not {ours}: pass {theirs} to "
                f"resume it, or {_fresh_hint(backup_dir)}."
            )
    return manifest


def _check_epoch(epoch, where, backup_dir) -> int:
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:  # 0: a save_freq=N backup in epoch 0
        raise BackupError(
            f"{where} gives the epoch {epoch!r}, not an integer >= 0; the backup cannot be trusted: "
            f"{_fresh_hint(backup_dir)}."
        )
    return epoch


def _read_json(path, backup_dir):
    """The JSON content of the backup file ``path``; :class:`BackupError` when it is not valid JSON."""
    try:
        with tf.io.gfile.GFile(path, "r") as f:
            return json.loads(f.read())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BackupError(
            f"The backup file {path} is not valid JSON ({e}); the backup cannot be trusted: {_fresh_hint(backup_dir)}."
        ) from None


class CountedDataset:
    """A ``tf.data`` pipeline whose passes are counted, so that a resumed run can replay them.

    A pipeline that reshuffles (``shuffle(..., reshuffle_each_iteration=True)``) or draws new random
    numbers (``Dataset.random(..., rerandomize_each_iteration=True)``) on every pass gives pass ``k``
    of a process the ``k``-th order; a run resumed at epoch ``E`` would see the order of pass 0
    in its epoch ``E``.  ``CountedDataset(ds).dataset`` is ``ds`` behind a counter of the passes that
    read at least one element (an iterator that is made but never read does not draw new seeds
    here, and is not counted); :class:`MultiWorkerBackupAndRestore` records the count with the
    backup and, on restore, opens the remaining passes of ``ds`` (cheap: opening an iterator draws
    its seeds, no element is read), so the resumed run sees the same data as an unbroken one.
    Create it outside ``strategy.scope()``.
    """

    def __init__(self, dataset: tf.data.Dataset):
        self.source = dataset
        self.passes = tf.Variable(0, dtype=tf.int64, trainable=False, name="dataset_passes")
        counter = self.passes

        def count(_):
            return counter.assign_add(1)

        counted = tf.data.Dataset.from_tensors(tf.constant(0, tf.int64)).map(count).flat_map(lambda _: dataset)
        cardinality = int(dataset.cardinality())
        if cardinality >= 0:  # known: Keras then counts the steps of an epoch in advance, as for ``dataset``
            counted = counted.apply(tf.data.experimental.assert_cardinality(cardinality))
        self.dataset = counted

    def fast_forward(self, passes: int) -> None:
        """Open passes until ``passes`` passes of the source have been drawn in this process."""
        done = int(self.passes.numpy())
        if passes < done:
            raise BackupError(
                f"The backup recorded {passes} passes over a data pipeline, fewer than the {done} "
                "this process already made; the backup does not belong to this pipeline."
            )
        for _ in range(passes - done):
            iter(self.source)
        self.passes.assign(passes)


class MultiWorkerBackupAndRestore(keras.callbacks.BackupAndRestore):
    """``keras.callbacks.BackupAndRestore`` that is safe with several workers and never resumes from
    a broken or foreign backup.

    A backup is written whole and committed atomically: the weights (with the optimizer state)
    and ``training_metadata.json`` go to pending files, then ``manifest.json`` is written by a
    temporary file and a rename (the commit: it names each file with its sha256 and records the
    epoch, theta, the optimizer step, the passes over the ``datasets`` and the run ``config``), then
    the pending files get their names.  A process killed at any point leaves either the previous
    backup or the new one (:func:`read_backup` takes a file under its pending name when the commit
    happened before the renames).  On restore the backup is checked as a whole
    (:func:`read_backup`, then theta and the optimizer step of the loaded weights against the
    manifest); an incomplete, damaged or foreign one raises :class:`BackupError` instead of
    training from random weights or from the wrong epoch.

    Every worker *restores* from the shared ``backup_dir`` (a restarted job resumes at the last
    backed-up epoch on every worker), every worker takes part in each save, but only the chief
    writes into ``backup_dir``; the others write into a private temporary directory that is
    removed immediately.  Only the chief deletes the backup at the end of training
    (``delete_checkpoint=True``).  ``backup_dir`` must be on storage shared by all workers (NFS,
    GCS, ...) and used by this callback only.

    ``every_epochs`` (with ``save_freq="epoch"``): back up after every ``every_epochs``-th epoch and
    after the last one.  A backup (weights and optimizer state) costs 0.1-0.2 s for the SEGNN N-body
    model, about 4% of its 4-6 s epoch (``benchmarks/bench_segnn.py``); a killed run then repeats at
    most ``every_epochs - 1`` epochs.

    ``config``: the run's configuration (JSON-able), recorded with each backup; a backup of a run
    whose config differs in a key not in ``may_differ`` is refused.  ``datasets``: name ->
    :class:`CountedDataset` whose passes are recorded and replayed on restore.
    ``restored_epoch`` is the epoch the last ``fit`` started from (0: no backup).
    """

    def __init__(
        self,
        backup_dir,
        save_freq="epoch",
        double_checkpoint=False,
        delete_checkpoint=True,
        strategy=None,
        every_epochs=1,
        config=None,
        may_differ=(),
        datasets=None,
    ):
        super().__init__(backup_dir, save_freq=save_freq, double_checkpoint=False, delete_checkpoint=delete_checkpoint)
        if double_checkpoint:
            raise ValueError(
                "double_checkpoint is not supported: a backup is committed atomically, a killed run "
                "leaves the previous backup or the new one."
            )
        if isinstance(every_epochs, bool) or not isinstance(every_epochs, int) or every_epochs < 1:
            raise ValueError(f"every_epochs must be an integer >= 1, got {every_epochs!r}.")
        if every_epochs > 1 and save_freq != "epoch":
            raise ValueError("every_epochs > 1 needs save_freq='epoch'.")
        self._strategy = strategy
        self.every_epochs = every_epochs
        self.config = None if config is None else _jsonable(config)
        self.may_differ = tuple(may_differ)
        self.datasets = dict(datasets or {})
        self.restored_epoch = 0

    def on_epoch_end(self, epoch, logs=None):
        self._current_epoch = epoch + 1
        self._last_batch_seen = 0
        total = (self.params or {}).get("epochs")
        last = total is not None and epoch + 1 >= total
        if self.save_freq == "epoch" and ((epoch + 1) % self.every_epochs == 0 or last):
            self._save_model()

    def _get_strategy(self):
        if self._strategy is not None:
            return self._strategy
        return getattr(self.model, "distribute_strategy", None) or tf.distribute.get_strategy()

    # -- restore ---------------------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        self._load_model()

    def _load_model(self):
        if not self.model.built:
            raise ValueError(
                "To use the BackupAndRestore callback, your model must be built before you call "
                f"`fit()`. Model {self.model} is unbuilt."
            )
        manifest = read_backup(
            self.backup_dir, config=self.config, epochs=(self.params or {}).get("epochs"), may_differ=self.may_differ
        )
        self.restored_epoch = 0
        if manifest is None:
            return
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)  # its variables exist before loading
        weights = manifest["paths"]["latest.weights.h5"]
        try:
            if not weights.endswith(".weights.h5"):
                raise ValueError(f"{weights} does not end in .weights.h5")
            self.model.load_weights(weights)
        except (OSError, ValueError, KeyError) as e:
            raise BackupError(
                f"The backup in {self.backup_dir} does not fit this model ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); resume with the options it was "
                f"written with, or {_fresh_hint(self.backup_dir)}."
            ) from None
        self._check_restored(manifest)
        for name, passes in (manifest.get("data_passes") or {}).items():
            if name in self.datasets:
                self.datasets[name].fast_forward(int(passes))
        self.restored_epoch = manifest["epoch"]
        self.model._initial_epoch = manifest["epoch"]

    def _check_restored(self, manifest):
        from keras_relaxeq.layers.relaxation import get_theta

        problems = []
        theta = manifest.get("theta")
        if theta is not None:
            loaded = get_theta(self.model)
            if loaded != theta:  # the same float32 written and read back: exact
                problems.append(f"theta {loaded} instead of {theta}")
        iterations = manifest.get("iterations")
        optimizer = getattr(self.model, "optimizer", None)
        if iterations is not None and optimizer is not None:
            loaded = int(keras.ops.convert_to_numpy(optimizer.iterations))
            if loaded != int(iterations):
                problems.append(f"optimizer step {loaded} instead of {iterations}")
        if problems:
            raise BackupError(
                f"The weights of the backup in {self.backup_dir} disagree with its manifest "
                f"({'; '.join(problems)}); the backup cannot be trusted: "
                f"{_fresh_hint(self.backup_dir)}."
            )

    # -- save ------------------------------------------------------------------------------------
    def _manifest(self, files: dict) -> dict:
        from keras_relaxeq.layers.relaxation import get_theta

        optimizer = getattr(self.model, "optimizer", None)
        return {
            "format": MANIFEST_FORMAT,
            "epoch": self._current_epoch,
            "batch": self._last_batch_seen,
            "theta": get_theta(self.model),
            "iterations": None if optimizer is None else int(keras.ops.convert_to_numpy(optimizer.iterations)),
            "data_passes": {name: int(d.passes.numpy()) for name, d in self.datasets.items()},
            "config": self.config,
            "files": files,
        }

    def _save_model(self):
        strategy = self._get_strategy()
        directory = dist.worker_dir(self.backup_dir, strategy)
        try:
            names = (os.path.basename(self._weights_path), os.path.basename(self._training_metadata_path))
            pending = {name: os.path.join(directory, PENDING + name) for name in names}
            self.model.save_weights(pending[names[0]], overwrite=True)  # every worker takes part
            if not dist.is_chief(strategy):
                return
            with tf.io.gfile.GFile(pending[names[1]], "w") as f:
                f.write(json.dumps({"epoch": self._current_epoch, "batch": self._last_batch_seen}))
            files = {}
            for name, path in pending.items():
                _fsync(path)
                files[name] = {"sha256": sha256_file(path), "bytes": int(tf.io.gfile.stat(path).length)}
            _write_manifest(
                os.path.join(directory, MANIFEST), json.dumps(self._manifest(files), indent=1, default=str)
            )  # the commit
            for name, path in pending.items():
                tf.io.gfile.rename(path, os.path.join(directory, name), overwrite=True)
        finally:
            dist.cleanup_worker_dir(directory, self.backup_dir, strategy)

    def on_train_end(self, logs=None):
        if dist.is_chief(self._get_strategy()):
            super().on_train_end(logs)
