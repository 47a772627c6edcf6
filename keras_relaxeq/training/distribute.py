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
                 backup.MultiWorkerBackupAndRestore(os.path.join(out, "backup")),   # training/backup.py
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

import json
import os
import shutil
import tempfile

import tensorflow as tf

__all__ = [
    "STRATEGIES",
    "SHARD_POLICIES",
    "add_strategy_argument",
    "parse_tf_config",
    "get_strategy",
    "task_info",
    "num_workers",
    "is_chief",
    "worker_dir",
    "checkpoint_path",
    "cleanup_worker_dir",
    "distribute_dataset_options",
    "shard_dataset",
    "global_batch_size",
    "prepare_model",
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
_TF_CONFIG_EXAMPLE = (
    'TF_CONFIG=\'{"cluster": {"worker": ["host0:12345", "host1:12345"]}, "task": {"type": "worker", "index": 0}}\''
)


# --------------------------------------------------------------------------- argparse
def add_strategy_argument(parser, default: str = "default"):
    """Add ``--strategy {default,mirrored,multiworker}`` to an ``argparse`` parser."""
    parser.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default=default,
        help="tf.distribute strategy: 'default' (one device), 'mirrored' (all GPUs of this "
        "machine), 'multiworker' (MultiWorkerMirroredStrategy; reads TF_CONFIG, run the same "
        "command on every host). --batch is the global batch size in every case.",
    )
    return parser


# --------------------------------------------------------------------------- TF_CONFIG
def parse_tf_config(value: str | None = None) -> dict:
    """Parse and validate ``TF_CONFIG`` (default: the environment variable) for multi-worker.

    Raises ``ValueError`` with the problem and an example when it is missing or malformed.
    """
    if value is None:
        value = os.environ.get("TF_CONFIG")
    if not value:
        raise ValueError(
            "--strategy multiworker needs the TF_CONFIG environment variable, e.g. "
            f"{_TF_CONFIG_EXAMPLE} (same cluster on every host, its own task on each)."
        )
    try:
        config = json.loads(value)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON ({e}); expected e.g. {_TF_CONFIG_EXAMPLE}") from None
    if not isinstance(config, dict):
        raise ValueError(f"TF_CONFIG must be a JSON object, got {type(config).__name__}.")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise ValueError(
            f"TF_CONFIG has no 'cluster' mapping of task types to address lists; e.g. {_TF_CONFIG_EXAMPLE}"
        )
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ValueError(
            'TF_CONFIG needs \'task\': {"type": ..., "index": ...} telling this process which '
            f"cluster entry it is; e.g. {_TF_CONFIG_EXAMPLE}"
        )
    unknown = sorted(set(cluster) - set(_MWMS_TASK_TYPES) - {"evaluator"})
    if unknown:
        raise ValueError(
            f"TF_CONFIG cluster has task types {unknown} that MultiWorkerMirroredStrategy does not "
            f"use (ps-based training is not supported); use {_MWMS_TASK_TYPES}."
        )
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
        raise ValueError(
            "This process is the TF_CONFIG 'evaluator'; it does not train with "
            "MultiWorkerMirroredStrategy (run a separate evaluation loop instead)."
        )
    if kind not in cluster:
        raise ValueError(f"TF_CONFIG task type {kind!r} is not in the cluster ({sorted(cluster)}).")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(cluster[kind]):
        raise ValueError(f"TF_CONFIG task index {index!r} is out of range for {len(cluster[kind])} {kind!r} task(s).")
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
        impl = {
            "auto": tf.distribute.experimental.CommunicationImplementation.AUTO,
            "ring": tf.distribute.experimental.CommunicationImplementation.RING,
            "nccl": tf.distribute.experimental.CommunicationImplementation.NCCL,
        }
        if communication not in impl:
            raise ValueError(f"communication must be one of {sorted(impl)}, got {communication!r}.")
        options = tf.distribute.experimental.CommunicationOptions(implementation=impl[communication])
        try:
            return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        except RuntimeError as e:
            if "startup" in str(e) or "initialized" in str(e):
                raise RuntimeError(
                    "MultiWorkerMirroredStrategy must be created before any other TensorFlow "
                    "operation: call get_strategy() first in the program."
                ) from e
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
        raise ValueError(
            f"The global batch size {batch_size} is not divisible by the {replicas} replicas; "
            f"use a multiple of {replicas} (or per_replica=True)."
        )
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

    def symbolic_build(iterator=None, data_batch=None):
        return _maybe_symbolic_build_locally(model, iterator, data_batch)

    object.__setattr__(model, "_maybe_symbolic_build", symbolic_build)
    object.__setattr__(model, "train_step", _rank1_logs(model.train_step))
    object.__setattr__(model, "test_step", _rank1_logs(model.test_step))
    object.__setattr__(model, "_keras_relaxeq_prepared", True)
    return model
