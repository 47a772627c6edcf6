"""Resuming a recipe run: the backup is checked before anything is built, the per-epoch logs keep
each epoch once, and a run killed (SIGKILL) at any point ends, once re-run, exactly as an unbroken one.

The kill tests (marked slow; ``tests/training/test_backup_manifest.py`` interrupts the same points
of a backup in-process, in the default suite) run ``recipes/segnn_nbody.py`` (tiny: 20 training
systems, width 4, one layer, 4 epochs) in subprocesses through ``tests/training/killed_recipe.py``,
which SIGKILLs the process at a named point. "The same result": ``log.csv``, ``relaxation.csv`` and
the final backup's weights are bitwise equal to those of an unbroken run, and ``summary.json`` equal
except the fields that describe the invocation (wall times, epochs of this invocation, ``resumed``,
the output directory). Bitwise is what to expect, not a tolerance: the resumed process loads the
float32 weights and the optimizer state bit for bit, replays the data pipelines' passes
(``CountedDataset``) so every epoch gets the batches and rotations of the unbroken run, and runs the
same kernels on the same machine; ``TF_DETERMINISTIC_OPS=1`` and one intra-/inter-op thread rule out
the only other source of differences (the order of multi-threaded float reductions).
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
KILLED = ROOT / "tests" / "training" / "killed_recipe.py"
TIMEOUT = 900  # one tiny run: 20-30 s of CPU, several minutes on 2 busy cores
ARGS = [
    "--train-samples",
    "20",
    "--val-samples",
    "10",
    "--test-samples",
    "10",
    "--batch",
    "10",
    "--hidden",
    "4",
    "--layers",
    "1",
    "--verbose",
    "0",
    "--epochs",
    "4",
    "--backup-every",
    "1",
    "--monitor-every",
    "1",
    "--seed",
    "3",
]
#: summary.json entries that describe the invocation rather than the run
PER_INVOCATION = ("wall_time_seconds", "fit_seconds_this_invocation", "epochs_this_invocation", "resumed")


# ----------------------------------------------------------------------------- backup check, log trimming


def tiny_backup(backup, config, epochs=3):
    """A real backup (after ``epochs`` epochs) of a tiny Keras model, written with ``config``."""
    import keras

    from keras_relaxeq.training.backup import MultiWorkerBackupAndRestore

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    model.fit(
        np.ones((8, 3), "float32"),
        np.ones((8, 1), "float32"),
        epochs=epochs,
        verbose=0,
        callbacks=[MultiWorkerBackupAndRestore(str(backup), delete_checkpoint=False, config=config)],
    )


def write_log(path, epochs, extra=()):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "loss", *extra])
        for e in epochs:
            w.writerow([e, 0.5 / (e + 1), *(["x"] * len(extra))])


def logged_epochs(path):
    with open(path, newline="") as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


def config(out, **changes):
    cfg = {
        "output_dir": str(out),
        "epochs": 5,
        "hidden": 16,
        "seed": 0,
        "relaxed": True,
        "fresh": False,
        "resume": False,
        "verbose": 0,
    }
    cfg.update(changes)
    return cfg


@pytest.fixture()
def run_dir(tmp_path):
    """An output directory with a backup after epoch 3 and logs of epochs 0-4 (epochs 3 and 4 were
    trained after the backup, by a run killed before its next one)."""
    out = tmp_path / "run"
    out.mkdir()
    tiny_backup(out / "backup", config(out))
    write_log(out / "log.csv", range(5))
    with open(out / "relaxation.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "layer", "theta"])
        for e in range(5):
            w.writerows([[e, "a", 0.1], [e, "total", 0.1]])
    return out


def test_resume_drops_the_log_rows_of_the_epochs_trained_again(run_dir):
    import tensorflow as tf

    from keras_relaxeq.training.recipe import prepare_output_dir

    out, backup, write_dir = prepare_output_dir(config(run_dir), tf.distribute.get_strategy())
    assert write_dir == out and backup == run_dir / "backup"
    assert logged_epochs(run_dir / "log.csv") == [0, 1, 2]
    assert logged_epochs(run_dir / "relaxation.csv") == [0, 0, 1, 1, 2, 2]
    with open(run_dir / "log.csv") as f:
        assert f.readline().strip() == "epoch,loss"  # the header stays
    prepare_output_dir(config(run_dir), tf.distribute.get_strategy())  # idempotent
    assert logged_epochs(run_dir / "log.csv") == [0, 1, 2]


def test_without_a_backup_the_logs_start_over(tmp_path):
    """Killed before its first backup: every logged epoch is trained again."""
    import tensorflow as tf

    from keras_relaxeq.training.recipe import prepare_output_dir

    out = tmp_path / "run"
    out.mkdir()
    write_log(out / "log.csv", range(2))
    prepare_output_dir(config(out), tf.distribute.get_strategy())
    assert not (out / "log.csv").exists()  # the next CSVLogger writes a fresh header


@pytest.mark.parametrize(
    "damage, message",
    [
        ("weights", "damaged: latest.weights.h5 is missing"),
        ("metadata", "damaged: training_metadata.json is missing"),
        ("truncated", "latest.weights.h5 does not match its manifest"),
        ("manifest", "manifest.json is not valid JSON"),
    ],
)
def test_a_broken_backup_stops_the_recipe_with_what_to_do(run_dir, damage, message):
    import tensorflow as tf

    from keras_relaxeq.training.recipe import prepare_output_dir

    backup = run_dir / "backup"
    if damage == "weights":
        (backup / "latest.weights.h5").unlink()
    elif damage == "metadata":
        (backup / "training_metadata.json").unlink()
    elif damage == "truncated":
        data = (backup / "latest.weights.h5").read_bytes()
        (backup / "latest.weights.h5").write_bytes(data[: len(data) // 2])
    else:
        (backup / "manifest.json").write_text("{")
    with pytest.raises(SystemExit, match=message) as e:
        prepare_output_dir(config(run_dir), tf.distribute.get_strategy())
    assert "--fresh" in str(e.value)
    assert logged_epochs(run_dir / "log.csv") == list(range(5))  # nothing touched
    prepare_output_dir(config(run_dir, fresh=True), tf.distribute.get_strategy())  # what the message says works
    assert not (run_dir / "backup").exists() and not (run_dir / "log.csv").exists()


def test_a_backup_of_other_options_stops_the_recipe_naming_them(run_dir):
    import tensorflow as tf

    from keras_relaxeq.training.recipe import prepare_output_dir

    strategy = tf.distribute.get_strategy()
    with pytest.raises(
        SystemExit,
        match="run with --hidden 16 --seed 0, not --hidden 32 --seed 1: pass --hidden 16 "
        "--seed 0 to resume it, or start over with --fresh",
    ):
        prepare_output_dir(config(run_dir, hidden=32, seed=1), strategy)
    with pytest.raises(SystemExit, match="after epoch 3 but --epochs is 2: pass --epochs 3 or more"):
        prepare_output_dir(config(run_dir, epochs=2), strategy)
    # what may change: --epochs (extends the run), where and how verbosely it runs
    out, _, _ = prepare_output_dir(config(run_dir, epochs=50, verbose=2, strategy="mirrored"), strategy)
    assert logged_epochs(out / "log.csv") == [0, 1, 2]


def test_a_worker_reads_the_logs_only_once_the_chief_has_trimmed_them(run_dir, monkeypatch):
    """Every worker takes its initial best value from the shared log.csv: all must see the same rows."""
    import threading

    import tensorflow as tf

    from keras_relaxeq.training import distribute, recipe

    monkeypatch.setattr(distribute, "is_chief", lambda strategy=None: False)
    monkeypatch.setattr(distribute, "worker_dir", lambda base, strategy=None: str(run_dir / "private"))
    with pytest.raises(SystemExit, match="did not trim the logs"):
        recipe._wait_for_trimmed_logs(run_dir, 3, timeout=0.5)
    chief = threading.Timer(1.0, lambda: [recipe.truncate_epoch_log(run_dir / n, 3) for n in recipe.EPOCH_LOGS])
    chief.start()
    try:
        out, _, write_dir = recipe.prepare_output_dir(config(run_dir), tf.distribute.get_strategy())
        seen = logged_epochs(out / "log.csv")  # as the worker reads it next: after the chief's trimming
    finally:
        chief.join()
    assert write_dir == run_dir / "private" and seen == [0, 1, 2]


def test_resume_insists_on_a_backup(tmp_path):
    import tensorflow as tf

    from keras_relaxeq.training.recipe import prepare_output_dir

    with pytest.raises(SystemExit, match="--resume: no backup"):
        prepare_output_dir(config(tmp_path / "run", resume=True), tf.distribute.get_strategy())


def test_the_relaxation_monitor_drops_the_rows_of_a_replayed_epoch(tmp_path):
    from keras_relaxeq.training import RelaxationMonitor

    path = tmp_path / "relaxation.csv"
    write_log(path, [0, 0, 1, 1, 2, 2], extra=["layer"])
    monitor = RelaxationMonitor(None, path, every=1)
    monitor.on_train_begin()
    monitor.on_epoch_begin(1)  # a fit resumed at epoch 1
    assert logged_epochs(path) == [0, 0]
    write_log(path, [0, 1, 2], extra=["layer"])
    monitor.on_epoch_begin(2)  # later epochs of the same fit leave the file alone
    assert logged_epochs(path) == [0, 1, 2]


# ----------------------------------------------------------------------------- SIGKILL and re-run


def run_recipe(out, cache, kill_at=None):
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        CUDA_VISIBLE_DEVICES="-1",
        TF_CPP_MIN_LOG_LEVEL="3",
        KERAS_RELAXEQ_CACHE=str(cache),
        TF_DETERMINISTIC_OPS="1",
        TF_NUM_INTRAOP_THREADS="1",
        TF_NUM_INTEROP_THREADS="1",
    )
    env.pop("KILL_AT", None)
    env.pop("TF_CONFIG", None)
    if kill_at:
        env["KILL_AT"] = kill_at
    return subprocess.Popen(
        [sys.executable, str(KILLED), *ARGS, "--output-dir", str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=str(out.parent),
    )


def finish(proc):
    log, _ = proc.communicate(timeout=TIMEOUT)
    return proc.returncode, log.decode(errors="replace")[-3000:]


def weights(path):
    import h5py

    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: arrays.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return arrays


def assert_same_run(a, b):
    for name in ("log.csv", "relaxation.csv"):
        assert (a / name).read_text() == (b / name).read_text(), name
    wa, wb = weights(a / "backup" / "latest.weights.h5"), weights(b / "backup" / "latest.weights.h5")
    assert sorted(wa) == sorted(wb)
    for name in wa:
        np.testing.assert_array_equal(wa[name], wb[name], err_msg=name)
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    for s in (sa, sb):
        for key in PER_INVOCATION:
            s.pop(key)
        s["config"].pop("output_dir")
    assert sa == sb
    assert (b / "history.png").exists() and (b / "projected.keras").exists()


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory):
    """Started once per module, in the background; the fixture value waits for it."""
    base = tmp_path_factory.mktemp("unbroken")
    out, cache = base / "run", base / "cache"
    out.mkdir()
    proc = run_recipe(out, cache)

    class Result:
        def get(self):
            if proc.returncode is None:
                code, log = finish(proc)
                assert code == 0, log
            return out

    return Result()


def kill_and_rerun(tmp_path, unbroken, kill_at, resumed_epoch):
    out = tmp_path / "run"
    out.mkdir()
    code, log = finish(run_recipe(out, tmp_path / "cache", kill_at))
    assert code == -9, f"not killed at {kill_at}: {log}"
    assert not (out / "summary.json").exists() or kill_at.startswith("final")
    code, log = finish(run_recipe(out, tmp_path / "cache"))
    assert code == 0, log
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_this_invocation"] == 4 - resumed_epoch, summary
    assert_same_run(unbroken.get(), out)


@pytest.mark.slow  # 3 recipe processes: about a minute on 2 idle cores; the in-process variant is test_backup_manifest
def test_killed_between_a_backups_commit_and_its_renames_ends_as_an_unbroken_run(tmp_path, unbroken):
    """The trickiest point: the second backup's manifest is written, its files still pending."""
    kill_and_rerun(tmp_path, unbroken, "committed:2", resumed_epoch=2)


@pytest.mark.slow
@pytest.mark.parametrize(
    "kill_at, resumed_epoch",
    [
        ("pending:2", 1),  # the second backup written but not committed: resumes after epoch 1
        ("truncated:3", 2),  # the third backup's weights half written
        ("batch:5", 2),  # after the first of the third epoch's 2 steps
        ("final:1", 4),  # after fit, summary.json written, history.png not
    ],
)
def test_killed_anywhere_ends_as_an_unbroken_run(tmp_path, unbroken, kill_at, resumed_epoch):
    kill_and_rerun(tmp_path, unbroken, kill_at, resumed_epoch)
