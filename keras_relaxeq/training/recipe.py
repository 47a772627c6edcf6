"""Plumbing shared by the training recipes (``recipes/*.py``): strategy, output directory, CSV log.

Everything here runs before (or without) any TensorFlow op, so a recipe can create its
``tf.distribute`` strategy first, as ``MultiWorkerMirroredStrategy`` requires.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
from pathlib import Path

from keras_relaxeq.utils import atomic_write

#: files and folders a recipe run writes that ``--fresh`` deletes
RUN_STATE = ("backup", "logs", "log.csv", "relaxation.csv", "best_relaxed.keras", "best_projected.keras")
#: the per-epoch CSV logs of a run (an ``epoch`` column, counted from 0): a resumed run drops their rows of
#: the epochs it trains again, so that every epoch has its rows once
EPOCH_LOGS = ("log.csv", "relaxation.csv")
#: run-config keys (recipe options) that may change when a run is resumed: they do not change what is
#: trained (``--epochs`` extends a finished run; where it runs, how often it is backed up, evaluated,
#: monitored or printed, the data location, the test-set size).  Every other option must match the backup.
RESUME_MAY_DIFFER = (
    "epochs",
    "output_dir",
    "resume",
    "fresh",
    "verbose",
    "strategy",
    "cpu_replicas",
    "backup_every",
    "eval_every",
    "monitor_every",
    "relaxed_val",
    "jit_compile",
    "data_dir",
    "test_samples",
    "invariance_samples",
)


def check_strategy_options(cfg) -> None:
    """Exit with a message if ``--cpu-replicas`` is invalid or given without ``--strategy mirrored``."""
    n = cfg.get("cpu_replicas")
    if n is None:
        return
    if n < 1:
        raise SystemExit("--cpu-replicas must be >= 1")
    if cfg.get("strategy") != "mirrored":
        raise SystemExit("--cpu-replicas needs --strategy mirrored")


def make_strategy(cfg):
    """The ``tf.distribute`` strategy of ``cfg["strategy"]``: call it before any other TensorFlow op.

    With ``cfg["cpu_replicas"] = N`` the physical CPU is first split into N logical devices and
    the ``MirroredStrategy`` mirrors over them (N replicas without GPUs, for tests).
    """
    from keras_relaxeq.training import distribute as dist

    n = cfg.get("cpu_replicas")
    if not n:
        return dist.get_strategy(cfg["strategy"])
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError as e:  # TensorFlow already initialised (e.g. a second main() in one process)
        if len(tf.config.list_logical_devices("CPU")) < n:
            raise SystemExit(
                f"--cpu-replicas {n}: TensorFlow is already initialised with fewer CPU devices; "
                f"use a fresh process ({e})"
            ) from None
    return dist.get_strategy("mirrored", devices=[f"/cpu:{i}" for i in range(n)])


def remove_path(target: Path) -> None:
    """Delete a file or directory; tolerant of other workers deleting it at the same time."""
    target = Path(target)
    if target.is_dir():
        shutil.rmtree(target, ignore_errors=True)
    else:
        target.unlink(missing_ok=True)


def prepare_output_dir(cfg, strategy, may_differ=RESUME_MAY_DIFFER) -> tuple[Path, Path, Path]:
    """``(out, backup_dir, write_dir)`` of a run, after ``--fresh`` / ``--resume`` handling.

    ``--fresh`` deletes the run state (:data:`RUN_STATE`); every worker deletes before its own
    fit and nobody writes a backup before all workers are in fit.  Otherwise a backup in
    ``out/backup`` is checked as a whole before anything is built
    (:func:`~keras_relaxeq.training.backup.read_backup`: complete, undamaged, epoch at most
    ``--epochs``, written with the same options except :data:`RESUME_MAY_DIFFER`); one that is not
    ends the program with a message that says what to do.  ``--resume`` insists on a backup.  The
    chief then drops the rows of the epochs the run will train again (from the backup's epoch on,
    all of them without a backup) from the logs :data:`EPOCH_LOGS`.  ``write_dir`` is where this
    process writes every output file: ``out`` on the chief, one private temporary directory on the
    other workers (they take part in every save, e.g. of distributed variables, but their files are
    thrown away at the end).
    """
    from keras_relaxeq.training import distribute as dist
    from keras_relaxeq.training.backup import BackupError, read_backup

    out = Path(cfg["output_dir"])
    backup_dir = out / "backup"
    if cfg.get("fresh") and out.exists():
        for name in RUN_STATE:
            remove_path(out / name)
    try:
        manifest = read_backup(backup_dir, config=cfg, epochs=cfg.get("epochs"), may_differ=may_differ)
    except BackupError as e:
        raise SystemExit(str(e)) from None
    if cfg.get("resume") and manifest is None:
        raise SystemExit(f"--resume: no backup in {backup_dir}")
    if manifest is not None and manifest.get("legacy") and dist.is_chief(strategy):
        print(
            f"note: the backup in {backup_dir} predates backup manifests; its run options cannot be checked",
            file=sys.stderr,
        )
    epoch = manifest["epoch"] if manifest else 0
    if dist.is_chief(strategy):
        for name in EPOCH_LOGS:
            truncate_epoch_log(out / name, epoch)
    else:  # every worker reads the shared log.csv next (the best value so far): wait for the chief's trimming
        _wait_for_trimmed_logs(out, epoch)
    return out, backup_dir, Path(dist.worker_dir(str(out), strategy))


def _last_logged_epoch(path) -> int:
    history = read_csv_history(path)
    return int(max(history.get("epoch", [-1]), default=-1))


def _wait_for_trimmed_logs(out, epoch, timeout=300.0) -> None:
    """Until the chief has dropped the rows of epochs ``>= epoch`` from the shared logs (it does so
    at the same point of the program; nothing is appended before every worker is in ``fit``)."""
    import time

    deadline = time.time() + timeout
    while any(_last_logged_epoch(out / name) >= epoch for name in EPOCH_LOGS):
        if time.time() > deadline:
            raise SystemExit(
                f"{out}: the chief did not trim the logs {EPOCH_LOGS} to the backup's epoch {epoch} "
                f"within {timeout:.0f} s; is the chief running with the same --output-dir?"
            )
        time.sleep(0.5)


def truncate_epoch_log(path, epoch: int) -> int | None:
    """Drop the rows of epochs ``>= epoch`` (column ``epoch``, from 0) from the CSV log ``path``, so
    that a run resumed at ``epoch`` logs each epoch it trains again once.  The file is rewritten
    atomically (a temporary file and a rename) when a row goes, deleted when none remains.
    Returns the number of rows kept (None when there is no file)."""
    path = Path(path)
    if not path.exists():
        return None
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        rows = list(reader)
    if header is None or "epoch" not in header:
        return len(rows)
    column = header.index("epoch")

    def keep(row):
        try:
            return int(row[column]) < epoch
        except (IndexError, ValueError):
            return False

    kept = [row for row in rows if keep(row)]
    if len(kept) == len(rows):
        return len(kept)
    if not kept:
        path.unlink()
        return 0
    rows_text = io.StringIO(newline="")
    writer = csv.writer(rows_text)
    writer.writerow(header)
    writer.writerows(kept)
    atomic_write(path, rows_text.getvalue())
    return len(kept)


def read_csv_history(path, where=None) -> dict[str, list[float]]:
    """Columns of a ``CSVLogger`` file (one row per epoch, the last row wins for a repeated epoch,
    as after a resume); non-numeric cells become NaN.  ``where(row)``: keep only the rows (dicts of
    strings) for which it is true."""
    path = Path(path)
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        rows = [row for row in csv.DictReader(f) if where is None or where(row)]
    by_epoch = {}
    for row in rows:
        try:
            by_epoch[int(row["epoch"])] = row
        except (KeyError, ValueError):
            continue
    history: dict[str, list[float]] = {}
    for epoch in sorted(by_epoch):
        for key in by_epoch[epoch]:
            history.setdefault(key, [])
    for epoch in sorted(by_epoch):
        row = by_epoch[epoch]
        for key in history:
            try:
                history[key].append(float(row.get(key)))
            except (TypeError, ValueError):
                history[key].append(float("nan"))
    return history


def _csv_logger(keras):
    """``CSVLogger`` whose columns are the first epoch's log keys, or the header of the file it appends to.

    Keras' own adds a ``val_<key>`` column for every key when the first epoch has no ``val_`` key
    (meant for ``validation_freq > 1``), which gives all-``NA`` columns to a fit without validation.
    """

    class CSVLogger(keras.callbacks.CSVLogger):
        def on_train_begin(self, logs=None):
            header = None
            if self.append and Path(self.filename).exists():
                with open(self.filename, newline="") as f:
                    header = next(csv.reader(f, delimiter=self.sep), None)
            super().on_train_begin(logs)
            if header and header[0] == "epoch":
                self.keys = header[1:]  # a resumed run continues the file's columns

        def on_epoch_end(self, epoch, logs=None):
            if self.keys is None:
                self.keys = sorted(logs or {})
            super().on_epoch_end(epoch, logs)

    return CSVLogger


def run_callbacks(
    write_dir,
    backup_dir,
    *,
    monitor: str,
    mode: str,
    initial_best,
    strategy,
    recipe: str,
    backup_every: int = 1,
    config=None,
    datasets=None,
    may_differ=RESUME_MAY_DIFFER,
) -> tuple[list, bool]:
    """The callbacks every recipe ends its list with, after its theta / learning-rate schedules and
    its ``ProjectedValidation`` (which must come first: they read its ``projected_val_*`` value).

    * ``ModelCheckpoint`` of the relaxed model at the best ``monitor`` (``best_relaxed.keras``),
      starting from ``initial_best`` (the best value of the previous invocations, from ``log.csv``);
    * ``CSVLogger`` (``log.csv``, appended to, so a resumed run continues it);
    * ``TensorBoard`` (``logs/``) when the ``tensorboard`` package is installed (else a note on
      stderr from the chief: ``log.csv`` has the same quantities);
    * ``MultiWorkerBackupAndRestore`` (``backup_dir``, every ``backup_every`` epochs): every worker
      restores from the shared backup, only the chief writes it; it is kept after a finished run
      so that a larger ``--epochs`` extends it.  It records the run ``config`` (a backup of a run
      with other options, except ``may_differ``, is refused) and the passes over ``datasets``
      (name -> ``CountedDataset``, replayed on restore so that a resumed run sees the same data).

    Returns ``(callbacks, tensorboard_installed)``.
    """
    import importlib.util
    import sys

    import keras

    from keras_relaxeq.training import distribute as dist
    from keras_relaxeq.training.backup import MultiWorkerBackupAndRestore

    write_dir = Path(write_dir)
    callbacks = [
        keras.callbacks.ModelCheckpoint(
            str(write_dir / "best_relaxed.keras"),
            monitor=monitor,
            mode=mode,
            save_best_only=True,
            initial_value_threshold=initial_best,
        ),
        _csv_logger(keras)(str(write_dir / "log.csv"), append=True),
    ]
    tensorboard = importlib.util.find_spec("tensorboard") is not None
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(write_dir / "logs"), write_graph=False))
    elif dist.is_chief(strategy):
        print(
            f"{recipe}: the tensorboard package is not installed; no TensorBoard logs (log.csv has the same "
            "quantities).",
            file=sys.stderr,
        )
    callbacks.append(
        MultiWorkerBackupAndRestore(
            str(backup_dir),
            delete_checkpoint=False,
            strategy=strategy,
            every_epochs=backup_every,
            config=config,
            may_differ=may_differ,
            datasets=datasets,
        )
    )
    return callbacks, tensorboard


#: the files of a recipe run besides its final model (``summary.json``'s ``"files"``)
RUN_FILES = {
    "best_projected_model": "best_projected.keras",
    "best_relaxed_model": "best_relaxed.keras",
    "csv_log": "log.csv",
    "tensorboard": "logs",
    "plot": "history.png",
    "backup": "backup",
}


def write_summary(write_dir, summary: dict) -> Path:
    """``summary.json`` of a run (indented JSON, written atomically: a reader never sees half a file)."""
    path = Path(write_dir) / "summary.json"
    atomic_write(path, json.dumps(summary, indent=2, default=str))
    return path


def use_xla(option: str, strategy) -> bool:
    """``--jit-compile``: ``"on"`` / ``"off"``, or ``"auto"`` = on unless several replicas train in sync
    (XLA steps are 1.4-1.9x faster on this CPU; multi-replica steps run without it)."""
    if option in ("on", "off"):
        return option == "on"
    return strategy.num_replicas_in_sync == 1
