"""Helpers for training with ``tf.distribute``: one strategy flag for every recipe.

A recipe does::

    parser = argparse.ArgumentParser()
    add_strategy_argument(parser)                     # --strategy {default,mirrored,multiworker}
    args = parser.parse_args()
    strategy = get_strategy(args.strategy)            # FIRST TensorFlow call of the program
    batch = global_batch_size(args.batch, strategy)   # --batch is the *global* batch
    with strategy.scope():                            # model, optimizer, metrics, penalties
        model = build_model(); model.compile(...)
    train = shard_dataset(make_dataset(batch_size=batch), "data")
    callbacks = [ThetaScheduler(...),
                 MultiWorkerBackupAndRestore(os.path.join(out, "backup")),
                 keras.callbacks.ModelCheckpoint(checkpoint_path(os.path.join(out, "best.keras"), strategy))]
    model.fit(train, epochs=E, callbacks=callbacks)
    if is_chief(strategy):
        write_summary(...)

Why each piece (see docs/distributed.md):

* ``RelaxedModel`` sums the penalty sums ``LD`` and ``N`` over *all* replicas (of all
  workers) before the square root, and Keras averages the task loss over the global
  batch, so N workers optimise the same objective as one worker fed the same global
  batches.  That only holds if the global batches really are the same: with
  ``MultiWorkerMirroredStrategy`` a dataset batched with the global batch size is split
  into per-replica slices and, with ``AutoShardPolicy.DATA``, worker ``i`` keeps slice
  ``i`` of every global batch.  ``OFF`` gives every worker every slice (each sample is
  seen once per worker, i.e. N times per epoch, and an epoch has N times the steps);
  ``FILE`` (and ``AUTO`` on file-based pipelines) gives each worker its own files, which
  is correct (no sample twice) but forms different global batches than a single worker.
* ``MultiWorkerMirroredStrategy`` must be created before any other TensorFlow operation
  (collective ops are configured at program start-up).
* Every worker runs every callback and must take part in every save (reading
  distributed variables can need collective ops), but only the chief may write to the
  shared directory: the others write to a private temporary directory
  (:func:`worker_dir`, :func:`checkpoint_path`) that is thrown away.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile

import keras
import tensorflow as tf

__all__ = [
    "STRATEGIES", "SHARD_POLICIES", "add_strategy_argument", "parse_tf_config", "get_strategy",
    "task_info", "num_workers", "is_chief", "worker_dir", "checkpoint_path", "cleanup_worker_dir",
    "distribute_dataset_options", "shard_dataset", "global_batch_size", "MultiWorkerBackupAndRestore",
    "prepare_model", "BackupError", "read_backup", "CountedDataset",
]

STRATEGIES = ("default", "mirrored", "multiworker")
SHARD_POLICIES = {
    "auto": tf.data.experimental.AutoShardPolicy.AUTO,
    "file": tf.data.experimental.AutoShardPolicy.FILE,
    "data": tf.data.experimental.AutoShardPolicy.DATA,
    "hint": tf.data.experimental.AutoShardPolicy.HINT,
    "off": tf.data.experimental.AutoShardPolicy.OFF,
}
_MWMS_TASK_TYPES = ("chief", "worker")
_TF_CONFIG_EXAMPLE = ('TF_CONFIG=\'{"cluster": {"worker": ["host0:12345", "host1:12345"]}, '
                      '"task": {"type": "worker", "index": 0}}\'')


# --------------------------------------------------------------------------- argparse
def add_strategy_argument(parser, default: str = "default"):
    """Add ``--strategy {default,mirrored,multiworker}`` to an ``argparse`` parser."""
    parser.add_argument(
        "--strategy", choices=STRATEGIES, default=default,
        help="tf.distribute strategy: 'default' (one device), 'mirrored' (all GPUs of this "
             "machine), 'multiworker' (MultiWorkerMirroredStrategy; reads TF_CONFIG, run the same "
             "command on every host). --batch is the global batch size in every case.")
    return parser


# --------------------------------------------------------------------------- TF_CONFIG
def parse_tf_config(value: str | None = None) -> dict:
    """Parse and validate ``TF_CONFIG`` (default: the environment variable) for multi-worker.

    Raises ``ValueError`` with the problem and an example when it is missing or malformed.
    """
    if value is None:
        value = os.environ.get("TF_CONFIG")
    if not value:
        raise ValueError("--strategy multiworker needs the TF_CONFIG environment variable, e.g. "
                         f"{_TF_CONFIG_EXAMPLE} (same cluster on every host, its own task on each).")
    try:
        config = json.loads(value)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON ({e}); expected e.g. {_TF_CONFIG_EXAMPLE}") from None
    if not isinstance(config, dict):
        raise ValueError(f"TF_CONFIG must be a JSON object, got {type(config).__name__}.")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise ValueError(f"TF_CONFIG has no 'cluster' mapping of task types to address lists; e.g. {_TF_CONFIG_EXAMPLE}")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ValueError("TF_CONFIG needs 'task': {\"type\": ..., \"index\": ...} telling this process which "
                         f"cluster entry it is; e.g. {_TF_CONFIG_EXAMPLE}")
    unknown = sorted(set(cluster) - set(_MWMS_TASK_TYPES) - {"evaluator"})
    if unknown:
        raise ValueError(f"TF_CONFIG cluster has task types {unknown} that MultiWorkerMirroredStrategy does not "
                         f"use (ps-based training is not supported); use {_MWMS_TASK_TYPES}.")
    for kind, addresses in cluster.items():
        if not isinstance(addresses, list) or not addresses:
            raise ValueError(f"TF_CONFIG cluster[{kind!r}] must be a non-empty list of 'host:port' strings.")
        for address in addresses:
            if not isinstance(address, str) or ":" not in address or not address.rsplit(":", 1)[1].isdigit():
                raise ValueError(f"TF_CONFIG cluster[{kind!r}] entry {address!r} is not 'host:port'.")
    if len(cluster.get("chief", [])) > 1:
        raise ValueError("TF_CONFIG may have at most one 'chief'.")
    if not any(k in cluster for k in _MWMS_TASK_TYPES):
        raise ValueError("TF_CONFIG cluster needs a 'worker' (and optionally one 'chief') list.")
    kind, index = task["type"], task["index"]
    if kind == "evaluator":
        raise ValueError("This process is the TF_CONFIG 'evaluator'; it does not train with "
                         "MultiWorkerMirroredStrategy (run a separate evaluation loop instead).")
    if kind not in cluster:
        raise ValueError(f"TF_CONFIG task type {kind!r} is not in the cluster ({sorted(cluster)}).")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(cluster[kind]):
        raise ValueError(f"TF_CONFIG task index {index!r} is out of range for {len(cluster[kind])} "
                         f"{kind!r} task(s).")
    return config


# --------------------------------------------------------------------------- strategies
def get_strategy(name: str = "default", devices=None, communication: str = "auto") -> tf.distribute.Strategy:
    """The ``tf.distribute.Strategy`` for ``--strategy name``.

    * ``"default"``: ``tf.distribute.get_strategy()`` (one device, no replication).
    * ``"mirrored"``: ``MirroredStrategy(devices)`` over all local GPUs (or the CPU).
    * ``"multiworker"``: ``MultiWorkerMirroredStrategy`` configured from a validated
      ``TF_CONFIG``; ``communication`` is ``"auto"``, ``"ring"`` or ``"nccl"``.

    Call it before any other TensorFlow operation (multi-worker collectives must be
    configured at program start-up).
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices)
    if name == "multiworker":
        parse_tf_config()
        impl = {"auto": tf.distribute.experimental.CommunicationImplementation.AUTO,
                "ring": tf.distribute.experimental.CommunicationImplementation.RING,
                "nccl": tf.distribute.experimental.CommunicationImplementation.NCCL}
        if communication not in impl:
            raise ValueError(f"communication must be one of {sorted(impl)}, got {communication!r}.")
        options = tf.distribute.experimental.CommunicationOptions(implementation=impl[communication])
        try:
            return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        except RuntimeError as e:
            if "startup" in str(e) or "initialized" in str(e):
                raise RuntimeError("MultiWorkerMirroredStrategy must be created before any other TensorFlow "
                                   "operation: call get_strategy() first in the program.") from e
            raise
    raise ValueError(f"Unknown strategy {name!r}; use one of {STRATEGIES}.")


def _strategy(strategy):
    return strategy if strategy is not None else tf.distribute.get_strategy()


def task_info(strategy=None):
    """``(task_type, task_id)`` of this process; ``(None, 0)`` outside multi-worker training."""
    resolver = getattr(_strategy(strategy), "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return None, 0
    return resolver.task_type, int(resolver.task_id or 0)


def num_workers(strategy=None) -> int:
    """Number of training processes (chief + workers) of the strategy's cluster."""
    resolver = getattr(_strategy(strategy), "cluster_resolver", None)
    if resolver is None:
        return 1
    spec = resolver.cluster_spec().as_dict()
    return max(1, sum(len(spec.get(k, [])) for k in _MWMS_TASK_TYPES))


def is_chief(strategy=None) -> bool:
    """True for the process that writes shared outputs: the ``chief`` task, or ``worker`` 0
    when the cluster has no chief, or the only process of a single-worker strategy."""
    task_type, task_id = task_info(strategy)
    if task_type is None or task_type == "chief":
        return True
    if task_type != "worker":
        return False
    resolver = _strategy(strategy).cluster_resolver
    return task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()


# --------------------------------------------------------------------------- output paths
def worker_dir(base_dir: str, strategy=None) -> str:
    """Where this process should write: ``base_dir`` on the chief, else a fresh private temp dir.

    Non-chief workers still have to *call* the save functions (they take part in the
    collective reads of distributed variables); pass the result to
    :func:`cleanup_worker_dir` afterwards.
    """
    if is_chief(strategy):
        tf.io.gfile.makedirs(base_dir)
        return base_dir
    task_type, task_id = task_info(strategy)
    return tempfile.mkdtemp(prefix=f"keras_relaxeq_{task_type}{task_id}_")


def checkpoint_path(path: str, strategy=None) -> str:
    """``path`` on the chief; the same file name inside a private temp dir on other workers
    (e.g. for ``keras.callbacks.ModelCheckpoint``, ``CSVLogger``, ``TensorBoard``)."""
    if is_chief(strategy):
        parent = os.path.dirname(path)
        if parent:
            tf.io.gfile.makedirs(parent)
        return path
    return os.path.join(worker_dir(os.path.dirname(path) or ".", strategy), os.path.basename(path))


def cleanup_worker_dir(path: str, base_dir: str, strategy=None):
    """Delete a directory returned by :func:`worker_dir` unless it is the shared ``base_dir``."""
    if os.path.normpath(path) != os.path.normpath(base_dir) and not is_chief(strategy):
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- data
def distribute_dataset_options(policy: str = "data", options: tf.data.Options | None = None) -> tf.data.Options:
    """``tf.data.Options`` with ``experimental_distribute.auto_shard_policy`` set.

    ``"data"`` (recommended for exact equivalence with one worker): every worker runs the
    whole pipeline and keeps its slice of each global batch; the pipeline must be
    deterministic and identical on every worker (shuffle with a fixed seed).
    ``"file"``: each worker reads its own files (needs >= one file per worker; cheaper I/O,
    different global batches).  ``"off"``: no sharding (only for pipelines that already
    call ``ds.shard(num_workers, index)`` themselves).
    """
    key = str(policy).lower()
    if key not in SHARD_POLICIES:
        raise ValueError(f"Unknown shard policy {policy!r}; use one of {sorted(SHARD_POLICIES)}.")
    options = options if options is not None else tf.data.Options()
    options.experimental_distribute.auto_shard_policy = SHARD_POLICIES[key]
    return options


def shard_dataset(dataset: tf.data.Dataset, policy: str = "data") -> tf.data.Dataset:
    """``dataset.with_options(distribute_dataset_options(policy))``.

    Apply it to the dataset batched with the *global* batch size (what ``model.fit`` and
    ``strategy.experimental_distribute_dataset`` receive).
    """
    return dataset.with_options(distribute_dataset_options(policy))


def global_batch_size(batch_size: int, strategy=None, per_replica: bool = False) -> int:
    """The global batch size to ``.batch()`` the dataset with.

    ``per_replica=False`` (default): ``batch_size`` is already global; checks that it is
    divisible by the number of replicas (equal per-replica batches are what makes the
    replica-averaged task loss equal to the global-batch mean).  ``per_replica=True``:
    returns ``batch_size * num_replicas_in_sync``.
    """
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    replicas = _strategy(strategy).num_replicas_in_sync
    if per_replica:
        return batch_size * replicas
    if batch_size % replicas:
        raise ValueError(f"The global batch size {batch_size} is not divisible by the {replicas} replicas; "
                         f"use a multiple of {replicas} (or per_replica=True).")
    return batch_size


# --------------------------------------------------------------------------- Keras workaround
def _local_values(strategy, structure):
    def first(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value
    return tf.nest.map_structure(first, structure)


def _maybe_symbolic_build_locally(model, iterator=None, data_batch=None):
    """``Trainer._maybe_symbolic_build`` without the cross-worker reduce of a data batch.

    Keras 3.15 (TF backend) reduces the first (x, y) batch with
    ``strategy.reduce("MEAN", batch)`` just to learn its shapes; with
    ``MultiWorkerMirroredStrategy`` and several workers that fails ("Attempt to convert a
    value (PerReplica ...) to a Tensor").  The shapes of this worker's first replica are
    all the symbolic build needs.
    """
    if model._distribute_strategy is None:
        return
    strategy = model.distribute_strategy
    if iterator is not None and data_batch is None:
        for _, _, it in iterator:
            data_batch = next(it)
            break
    if data_batch is not None:
        data_batch = _local_values(strategy, data_batch)
    with strategy.scope():
        model._symbolic_build(data_batch=data_batch)


def _multi_worker(strategy) -> bool:
    extended = getattr(strategy, "extended", None)
    return bool(getattr(extended, "_in_multi_worker_mode", lambda: False)())


def _rank1_logs(step):
    """Wrap a ``train_step`` / ``test_step`` so that scalar logs have shape ``[1]``."""

    def wrapped(data):
        logs = step(data)

        def expand(value):
            if isinstance(value, (tf.Tensor, tf.Variable)) and value.shape.rank == 0:
                return tf.reshape(value, [1])
            return value

        return tf.nest.map_structure(expand, logs)

    return wrapped


def prepare_model(model, strategy=None):
    """Make ``model.fit`` / ``evaluate`` work under ``MultiWorkerMirroredStrategy`` with Keras 3.15.

    Returns ``model``.  Two Keras 3.15 (TF backend) multi-worker bugs are worked around on
    this instance; nothing changes for the default and mirrored strategies:

    * ``fit`` reduces the first data batch across workers only to learn its shapes, which
      fails with several workers ("Attempt to convert a value (PerReplica ...)");
      :func:`_maybe_symbolic_build_locally` uses this worker's first replica instead.
    * the per-step logs are reduced with ``strategy.reduce("MEAN", value, axis=0)``, which
      fails for scalars ("Invalid reduction dimension 0 for input with 0 dimensions");
      ``train_step`` / ``test_step`` are wrapped to return them with shape ``[1]``, which
      that reduce turns back into the scalar mean over all replicas.  (Epoch logs,
      ``History`` and callbacks get the metrics aggregated over all workers as usual.)

    Call it after building the model in ``strategy.scope()`` and before ``fit``.
    """
    strategy = strategy if strategy is not None else model.distribute_strategy
    if not _multi_worker(strategy) or getattr(model, "_keras_relaxeq_prepared", False):
        return model
    object.__setattr__(model, "_maybe_symbolic_build",
                       lambda iterator=None, data_batch=None: _maybe_symbolic_build_locally(model, iterator, data_batch))
    object.__setattr__(model, "train_step", _rank1_logs(model.train_step))
    object.__setattr__(model, "test_step", _rank1_logs(model.test_step))
    object.__setattr__(model, "_keras_relaxeq_prepared", True)
    return model


# --------------------------------------------------------------------------- fault tolerance
#: the file that commits a backup: written last, atomically, it names every file of the backup with its
#: sha256, the epoch, theta, the optimizer step, the passes over the data pipelines and the run config
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
#: prefix of a backup file written but not yet committed (renamed to its name after the manifest)
PENDING = "tmp-pending."


class BackupError(ValueError):
    """A backup that cannot be resumed from (incomplete, damaged, or of another run); the message
    says what is wrong and what to do."""


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _is_local(path: str) -> bool:
    return "://" not in str(path)


def _write_atomically(path: str, text: str) -> None:
    """``text`` into ``path`` by a temporary file and a rename (flushed to disk first when local)."""
    tmp = os.path.join(os.path.dirname(path), f"tmp-{os.getpid()}.{os.path.basename(path)}")
    if _is_local(path):
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    else:
        with tf.io.gfile.GFile(tmp, "w") as f:
            f.write(text)
        tf.io.gfile.rename(tmp, path, overwrite=True)


def _fsync(path: str) -> None:
    if _is_local(path):
        with open(path, "rb") as f:
            os.fsync(f.fileno())


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
            raise BackupError(f"The backup in {backup_dir} is incomplete: it has {present[0]} but no {missing} (and "
                              f"no {MANIFEST}); it cannot be resumed from: {_fresh_hint(backup_dir)}.")
        epoch = _read_epoch(os.path.join(backup_dir, metadata_name), backup_dir)
        manifest = {"format": 0, "legacy": True, "epoch": epoch, "files": {},
                    "paths": {n: os.path.join(backup_dir, n) for n in present}}
    else:
        try:
            with tf.io.gfile.GFile(manifest_path, "r") as f:
                manifest = json.loads(f.read())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BackupError(f"The backup manifest {manifest_path} is not valid JSON ({e}); the backup cannot be "
                              f"trusted: {_fresh_hint(backup_dir)}.") from None
        files = manifest.get("files") if isinstance(manifest, dict) else None
        if (not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT or not isinstance(files, dict)
                or weights_name not in files):
            raise BackupError(f"The backup manifest {manifest_path} is not one this version writes (format "
                              f"{MANIFEST_FORMAT} with a 'files' entry naming {weights_name}); "
                              f"{_fresh_hint(backup_dir)}.")
        _check_epoch(manifest.get("epoch"), manifest_path, backup_dir)
        paths = {}
        for name, record in files.items():
            expected = record.get("sha256") if isinstance(record, dict) else None
            for candidate in (os.path.join(backup_dir, name), os.path.join(backup_dir, PENDING + name)):
                if tf.io.gfile.exists(candidate) and _sha256(candidate) == expected:
                    paths[name] = candidate
                    break
            else:
                state = "does not match its manifest (truncated or changed after the backup)" \
                    if tf.io.gfile.exists(os.path.join(backup_dir, name)) else "is missing"
                raise BackupError(f"The backup in {backup_dir} is damaged: {name} {state}; it cannot be resumed "
                                  f"from: {_fresh_hint(backup_dir)}.")
        manifest = dict(manifest, paths=paths, legacy=False)
    if epochs is not None and manifest["epoch"] > int(epochs):
        raise BackupError(f"The backup in {backup_dir} is after epoch {manifest['epoch']} but --epochs is {epochs}: "
                          f"pass --epochs {manifest['epoch']} or more to continue that run, or "
                          f"{_fresh_hint(backup_dir)}.")
    stored = manifest.get("config")
    if config is not None and isinstance(stored, dict):
        current = _jsonable(config)
        differ = [k for k in stored if k in current and k not in set(may_differ) and stored[k] != current[k]]
        if differ:
            theirs = " ".join(_option(k, stored[k]) for k in differ)
            ours = " ".join(_option(k, current[k]) for k in differ)
            raise BackupError(f"The backup in {backup_dir} is of a run with {theirs}, not {ours}: pass {theirs} to "
                              f"resume it, or {_fresh_hint(backup_dir)}.")
    return manifest


def _check_epoch(epoch, where, backup_dir) -> int:
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:  # 0: a save_freq=N backup in epoch 0
        raise BackupError(f"{where} gives the epoch {epoch!r}, not an integer >= 0; the backup cannot be trusted: "
                          f"{_fresh_hint(backup_dir)}.")
    return epoch


def _read_epoch(path, backup_dir) -> int:
    try:
        with tf.io.gfile.GFile(path, "r") as f:
            metadata = json.loads(f.read())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BackupError(f"{path} is not valid JSON ({e}); the backup cannot be trusted: "
                          f"{_fresh_hint(backup_dir)}.") from None
    return _check_epoch(metadata.get("epoch") if isinstance(metadata, dict) else None, path, backup_dir)


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
            raise BackupError(f"The backup recorded {passes} passes over a data pipeline, fewer than the {done} "
                              "this process already made; the backup does not belong to this pipeline.")
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

    def __init__(self, backup_dir, save_freq="epoch", double_checkpoint=False, delete_checkpoint=True,
                 strategy=None, every_epochs=1, config=None, may_differ=(), datasets=None):
        super().__init__(backup_dir, save_freq=save_freq, double_checkpoint=False,
                         delete_checkpoint=delete_checkpoint)
        if double_checkpoint:
            raise ValueError("double_checkpoint is not supported: a backup is committed atomically, a killed run "
                             "leaves the previous backup or the new one.")
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
            raise ValueError("To use the BackupAndRestore callback, your model must be built before you call "
                             f"`fit()`. Model {self.model} is unbuilt.")
        manifest = read_backup(self.backup_dir, config=self.config, epochs=(self.params or {}).get("epochs"),
                               may_differ=self.may_differ)
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
            raise BackupError(f"The backup in {self.backup_dir} does not fit this model ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); resume with the options it was "
                              f"written with, or {_fresh_hint(self.backup_dir)}.") from None
        self._check_restored(manifest)
        for name, passes in (manifest.get("data_passes") or {}).items():
            if name in self.datasets:
                self.datasets[name].fast_forward(int(passes))
        self.restored_epoch = manifest["epoch"]
        self.model._initial_epoch = manifest["epoch"]

    def _check_restored(self, manifest):
        from keras_relaxeq.layers.base import get_theta

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
            raise BackupError(f"The weights of the backup in {self.backup_dir} disagree with its manifest "
                              f"({'; '.join(problems)}); the backup cannot be trusted: "
                              f"{_fresh_hint(self.backup_dir)}.")

    # -- save ------------------------------------------------------------------------------------
    def _manifest(self, files: dict) -> dict:
        from keras_relaxeq.layers.base import get_theta

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
        directory = worker_dir(self.backup_dir, strategy)
        try:
            names = (os.path.basename(self._weights_path), os.path.basename(self._training_metadata_path))
            pending = {name: os.path.join(directory, PENDING + name) for name in names}
            self.model.save_weights(pending[names[0]], overwrite=True)  # every worker takes part
            if not is_chief(strategy):
                return
            with tf.io.gfile.GFile(pending[names[1]], "w") as f:
                f.write(json.dumps({"epoch": self._current_epoch, "batch": self._last_batch_seen}))
            files = {}
            for name, path in pending.items():
                _fsync(path)
                files[name] = {"sha256": _sha256(path), "bytes": int(tf.io.gfile.stat(path).length)}
            _write_atomically(os.path.join(directory, MANIFEST),
                              json.dumps(self._manifest(files), indent=1, default=str))  # the commit
            for name, path in pending.items():
                tf.io.gfile.rename(path, os.path.join(directory, name), overwrite=True)
        finally:
            cleanup_worker_dir(directory, self.backup_dir, strategy)

    def on_train_end(self, logs=None):
        if is_chief(self._get_strategy()):
            super().on_train_end(logs)
