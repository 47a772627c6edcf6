"""Multi-worker training (MultiWorkerMirroredStrategy) on 127.0.0.1.

* Two worker processes train a small relaxed model; their weights, theta, task loss and
  both penalties equal those of a single-process run fed the same global batches.
* One worker is killed (SIGKILL) after a backup exists; the job controller restarts the
  whole job (as a real one must: the surviving worker's collectives are broken) and
  training resumes from the backed-up epoch, ending with the same weights.

Every process runs in its own process group and is killed in ``finally``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from keras_relaxeq.training import distribute as dist

EPOCHS = 4
GLOBAL_BATCH = 8
NUM_SAMPLES = 16  # 2 steps per epoch
START_TIMEOUT = 300  # seconds for a launch: importing TF + keras_relaxeq alone takes 20-60 s on 2 busy cores

WORKER_SCRIPT = textwrap.dedent('''
    import argparse, json, os, sys, time

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--backup-dir", default=None)
    parser.add_argument("--marker-dir", default=None)
    parser.add_argument("--hang-at-epoch", type=int, default=-1,
                        help="non-chief workers block at the end of this epoch (to be killed)")
    from keras_relaxeq.training import backup
    from keras_relaxeq.training import distribute as dist
    dist.add_strategy_argument(parser)
    args = parser.parse_args()

    strategy = dist.get_strategy(args.strategy)  # first TensorFlow call of the program
    import numpy as np
    import tensorflow as tf
    import keras
    import keras_relaxeq as kr
    from keras_relaxeq.layers import VNLinear, VNLeakyReLU, VNMeanPool

    task_type, task_id = dist.task_info(strategy)
    tag = f"{task_type or 'single'}{task_id}"
    batch = dist.global_batch_size(args.global_batch, strategy)

    def build():
        keras.utils.set_random_seed(0)
        inp = keras.Input((12, 2, 3))
        relax = dict(relaxation_initializer="glorot_uniform")
        h = VNLinear(4, name="lin", **relax)(inp)
        h = VNLeakyReLU(4, use_batchnorm=False, name="act", **relax)(h)
        h = VNMeanPool(name="pool")(h)
        h = keras.layers.Lambda(lambda t: tf.norm(t, axis=-1), name="norm")(h)
        out = keras.layers.Dense(3, name="head")(keras.layers.Flatten()(h))
        m = kr.RelaxedModel(inp, out, lambda_lie=0.1, lambda_proj=0.1)
        m.compile(optimizer=keras.optimizers.SGD(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return m

    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.samples, 12, 2, 3)).astype("float32")
    y = rng.integers(0, 3, args.samples).astype("int32")

    def pipeline():
        """(index, x, y) in a seeded order identical on every worker, batched globally."""
        ds = tf.data.Dataset.from_tensor_slices((np.arange(args.samples), x, y))
        ds = ds.shuffle(args.samples, seed=7, reshuffle_each_iteration=False).batch(batch)
        return dist.shard_dataset(ds, "data")

    # Which samples does each local replica get at each step of one epoch?
    shards = []
    for step in strategy.experimental_distribute_dataset(pipeline().map(lambda i, a, b: i)):
        shards.append([t.numpy().tolist() for t in strategy.experimental_local_results(step)])

    with strategy.scope():
        model = dist.prepare_model(build())  # Keras 3.15 multi-worker workarounds (no-op otherwise)
    train = pipeline().map(lambda i, a, b: (a, b))

    def theta_var():
        return next(l.theta for l in model._flatten_layers() if getattr(l, "theta", None) is not None)

    class Record(keras.callbacks.Callback):
        thetas = []       # theta seen by every local replica at each batch
        def on_train_batch_begin(self, b, logs=None):
            var = theta_var()
            value = getattr(var, "value", var)
            self.thetas.append([float(v) for v in strategy.experimental_local_results(value)])

    class Marker(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if args.marker_dir:
                with open(os.path.join(args.marker_dir, f"{tag}_epoch{epoch}"), "w") as f:
                    f.write(str(time.time()))
            if epoch == args.hang_at_epoch and not dist.is_chief(strategy):
                time.sleep(600)

    callbacks = [kr.ThetaScheduler("triangle", epochs=args.epochs, per_step=True), Record()]
    if args.backup_dir:
        callbacks.append(backup.MultiWorkerBackupAndRestore(args.backup_dir))
    callbacks.append(Marker())
    history = model.fit(train, epochs=args.epochs, verbose=0, callbacks=callbacks)
    result = {
        "tag": tag, "chief": dist.is_chief(strategy), "replicas": strategy.num_replicas_in_sync,
        "workers": dist.num_workers(strategy), "batch": batch, "shards": shards,
        "epochs_run": list(history.epoch), "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
        "thetas": Record.thetas, "final_theta": kr.get_theta(model),
        "weights": [w.tolist() for w in model.get_weights()],
    }
    with open(args.out + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(args.out + ".tmp", args.out)
''')


# --------------------------------------------------------------------------- process helpers
def free_ports(n):
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def tf_config(ports, index):
    return json.dumps(
        {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}
    )


class Job:
    """Processes started in their own process groups; ``kill()`` always cleans up all of them."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.procs = {}
        self.script = tmp_path / "worker.py"
        self.script.write_text(WORKER_SCRIPT)

    def start(self, name, args, tf_config_value=None):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="-1", PYTHONUNBUFFERED="1")
        env.pop("TF_CONFIG", None)
        if tf_config_value is not None:
            env["TF_CONFIG"] = tf_config_value
        log = open(self.tmp_path / f"{name}.log", "ab")
        proc = subprocess.Popen(
            [sys.executable, str(self.script), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            cwd=str(self.tmp_path),
        )
        log.close()
        self.procs[name] = proc
        return proc

    def log(self, name, tail=3000):
        path = self.tmp_path / f"{name}.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""

    def wait(self, names, timeout):
        deadline = time.monotonic() + timeout
        for name in names:
            try:
                self.procs[name].wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{name} did not finish within {timeout}s:\n{self.log(name)}") from None
            assert self.procs[name].returncode == 0, f"{name} failed:\n{self.log(name)}"

    def kill(self, name, sig=signal.SIGKILL):
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass

    def kill_all(self):
        for name in list(self.procs):
            self.kill(name)


@pytest.fixture
def job(tmp_path):
    j = Job(tmp_path)
    try:
        yield j
    finally:
        j.kill_all()


def load(path):
    with open(path) as f:
        return json.load(f)


def assert_same_training(run, ref, rtol=1e-4, atol=1e-5):
    assert len(run["weights"]) == len(ref["weights"])
    for a, b in zip(run["weights"], ref["weights"]):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=rtol, atol=atol)
    np.testing.assert_allclose(run["final_theta"], ref["final_theta"], rtol=1e-6)


def check_two_workers_against_reference(workers, ref, epochs_run):
    epochs = list(range(epochs_run[0], EPOCHS))
    assert epochs_run == epochs
    for w in workers:
        assert w["replicas"] == 2 and w["workers"] == 2 and w["batch"] == GLOBAL_BATCH
        assert w["epochs_run"] == epochs
        assert_same_training(w, ref)
        for key in ("loss", "lie_penalty", "projection_penalty", "theta"):
            np.testing.assert_allclose(
                w["history"][key], ref["history"][key][epochs[0] :], rtol=1e-4, atol=1e-6, err_msg=f"{w['tag']} {key}"
            )
        # theta is set identically on every replica, at every step, and equals the single run.
        steps = NUM_SAMPLES // GLOBAL_BATCH
        ref_thetas = [t[0] for t in ref["thetas"][epochs[0] * steps :]]
        assert [t[0] for t in w["thetas"]] == pytest.approx(ref_thetas, abs=1e-7)
        assert all(len(set(t)) == 1 for t in w["thetas"])
    # Both workers end with bit-identical weights (same all-reduced gradients).
    for a, b in zip(workers[0]["weights"], workers[1]["weights"]):
        np.testing.assert_array_equal(np.array(a), np.array(b))


# --------------------------------------------------------------------------- tests
def test_tf_config_validation_and_helpers(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="needs the TF_CONFIG"):
        dist.get_strategy("multiworker")
    with pytest.raises(ValueError, match="not valid JSON"):
        dist.parse_tf_config("{cluster")
    with pytest.raises(ValueError, match="'task'"):
        dist.parse_tf_config('{"cluster": {"worker": ["127.0.0.1:1"]}}')
    with pytest.raises(ValueError, match="out of range"):
        dist.parse_tf_config('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 1}}')
    with pytest.raises(ValueError, match="host:port"):
        dist.parse_tf_config('{"cluster": {"worker": ["127.0.0.1"]}, "task": {"type": "worker", "index": 0}}')
    with pytest.raises(ValueError, match="not use"):
        dist.parse_tf_config('{"cluster": {"ps": ["a:1"], "worker": ["b:2"]}, "task": {"type": "worker", "index": 0}}')
    assert dist.parse_tf_config(tf_config([1, 2], 1))["task"]["index"] == 1
    with pytest.raises(ValueError, match="Unknown strategy"):
        dist.get_strategy("tpu")

    import argparse

    import tensorflow as tf

    args = dist.add_strategy_argument(argparse.ArgumentParser()).parse_args(["--strategy", "mirrored"])
    assert args.strategy == "mirrored"
    strategy = dist.get_strategy("default")
    assert dist.is_chief(strategy) and dist.task_info(strategy) == (None, 0) and dist.num_workers(strategy) == 1
    assert dist.worker_dir("/tmp/x_base", strategy) == "/tmp/x_base"
    assert dist.global_batch_size(8, strategy) == 8 and dist.global_batch_size(4, strategy, per_replica=True) == 4
    ds = dist.shard_dataset(tf.data.Dataset.range(4).batch(2), "data")
    assert ds.options().experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.DATA
    with pytest.raises(ValueError, match="shard policy"):
        dist.distribute_dataset_options("rows")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The single-process run (same global batch, seed and data order), started once."""
    j = Job(tmp_path_factory.mktemp("reference"))
    out = j.tmp_path / "single.json"
    j.start("single", ["--strategy", "default", "--out", str(out), "--epochs", str(EPOCHS)])

    def result():
        j.wait(["single"], START_TIMEOUT)
        return load(out)

    try:
        yield result
    finally:
        j.kill_all()


def test_two_workers_match_single_process(job, reference, tmp_path):
    ports = free_ports(2)
    outs = [tmp_path / f"w{i}.json" for i in range(2)]
    for i in range(2):
        job.start(
            f"w{i}", ["--strategy", "multiworker", "--out", str(outs[i]), "--epochs", str(EPOCHS)], tf_config(ports, i)
        )
    job.wait(["w0", "w1"], START_TIMEOUT)
    ref = reference()
    workers = [load(o) for o in outs]
    assert [w["chief"] for w in workers] == [True, False]

    # AutoShardPolicy.DATA: worker i gets slice i of every global batch, so the two workers
    # together see exactly the single run's global batches, each sample once per epoch.
    assert ref["replicas"] == 1
    ref_batches = [s[0] for s in ref["shards"]]
    assert len(ref_batches) == NUM_SAMPLES // GLOBAL_BATCH
    for step, global_batch in enumerate(ref_batches):
        slices = [w["shards"][step][0] for w in workers]
        assert slices[0] + slices[1] == global_batch
    seen = [i for w in workers for s in w["shards"] for i in s[0]]
    assert sorted(seen) == list(range(NUM_SAMPLES))

    assert ref["epochs_run"] == list(range(EPOCHS))
    check_two_workers_against_reference(workers, ref, workers[0]["epochs_run"])
    assert workers[0]["epochs_run"] == list(range(EPOCHS))
    # The penalties really are active (non-trivial comparison).
    assert min(ref["history"]["lie_penalty"]) > 0 and min(ref["history"]["projection_penalty"]) > 0


def wait_for(predicate, timeout, what, job, names):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        for name in names:
            if job.procs[name].poll() is not None:
                raise AssertionError(
                    f"{name} exited ({job.procs[name].returncode}) while waiting for {what}:\n{job.log(name)}"
                )
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}:\n" + "\n".join(job.log(n) for n in names))


def test_killed_worker_is_restarted_and_training_resumes_from_backup(job, reference, tmp_path):
    ports = free_ports(2)
    backup = tmp_path / "backup"  # shared by both workers
    markers = tmp_path / "markers"
    markers.mkdir()
    outs = [tmp_path / f"w{i}.json" for i in range(2)]
    common = [
        "--strategy",
        "multiworker",
        "--epochs",
        str(EPOCHS),
        "--backup-dir",
        str(backup),
        "--marker-dir",
        str(markers),
    ]
    kill_after_epoch = 1  # the backup of epochs 0-1 exists, epochs 2-3 remain

    # Launch 1: worker 1 blocks at the end of epoch 1 and is killed there (mid-run).
    for i in range(2):
        job.start(
            f"w{i}", [*common, "--out", str(outs[i]), "--hang-at-epoch", str(kill_after_epoch)], tf_config(ports, i)
        )
    # The chief writes its marker after MultiWorkerBackupAndRestore saved the epoch.
    wait_for(
        lambda: all((markers / f"worker{i}_epoch{kill_after_epoch}").exists() for i in range(2)),
        START_TIMEOUT,
        "both workers to finish epoch 1",
        job,
        ["w0", "w1"],
    )
    meta = json.loads((backup / "training_metadata.json").read_text())
    assert meta["epoch"] == kill_after_epoch + 1
    assert (backup / "latest.weights.h5").exists()
    assert not list(backup.glob("tmp-*")) and not list(backup.glob(".*.tmp"))  # atomic writes left nothing behind
    job.kill("w1")
    assert job.procs["w1"].returncode == -signal.SIGKILL

    # The surviving worker cannot finish epoch 2 alone: it errors out or hangs in a collective.
    # A job controller restarts the whole job; give the chief a moment to fail on its own.
    try:
        job.procs["w0"].wait(timeout=10)
    except subprocess.TimeoutExpired:
        job.kill("w0")
    assert job.procs["w0"].returncode != 0
    assert not outs[0].exists() and not outs[1].exists()
    assert json.loads((backup / "training_metadata.json").read_text())["epoch"] == kill_after_epoch + 1

    # Launch 2: the same command and TF_CONFIG on every worker.
    for i in range(2):
        job.start(f"w{i}", [*common, "--out", str(outs[i])], tf_config(ports, i))
    job.wait(["w0", "w1"], START_TIMEOUT)
    workers = [load(o) for o in outs]
    # Resumed at the backed-up epoch (not epoch 0) and completed.
    assert workers[0]["epochs_run"] == workers[1]["epochs_run"] == list(range(kill_after_epoch + 1, EPOCHS))
    # Same final state as an uninterrupted run: the restore is exact (SGD, epoch-wise data order).
    check_two_workers_against_reference(workers, reference(), workers[0]["epochs_run"])
    assert not backup.exists()  # the chief deleted the backup after training completed
