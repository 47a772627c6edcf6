"""MultiWorkerBackupAndRestore never resumes from a broken or foreign backup, and one interrupted at
any point of its writing resumes to the same result as an unbroken run (in-process: the SIGKILL
variant is tests/test_recipe_segnn_resume.py)."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_relaxeq.training import backup as backup_lib
from keras_relaxeq.training.backup import BackupError, CountedDataset, MultiWorkerBackupAndRestore, read_backup

CONFIG = {"hidden": 16, "seed": 0, "relaxed": True, "epochs": 4, "verbose": 0}
MAY_DIFFER = ("epochs", "verbose")


def tiny_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    return model


def shuffled_data():
    """Reshuffled every pass, as the recipes' training pipelines: a resumed run must replay the passes."""
    x = np.random.default_rng(1).normal(size=(12, 3)).astype("float32")
    y = np.sin(x.sum(axis=1, keepdims=True))
    return tf.data.Dataset.from_tensor_slices((x, y)).shuffle(12, seed=5, reshuffle_each_iteration=True).batch(4)


def train(backup, epochs=4, callbacks=(), config=CONFIG):
    """fit with a backup every epoch; returns (model, callback, history)."""
    model = tiny_model()  # sets the global seed, which the shuffle's seeds derive from
    data = CountedDataset(shuffled_data())
    cb = MultiWorkerBackupAndRestore(
        str(backup), delete_checkpoint=False, config=config, may_differ=MAY_DIFFER, datasets={"train": data}
    )
    history = model.fit(data.dataset, epochs=epochs, verbose=0, callbacks=[cb, *callbacks], shuffle=False)
    return model, cb, history


class Stop(Exception):
    pass


class StopAt(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise Stop


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """An unbroken 4-epoch run: its final weights and its backup directory."""
    backup = tmp_path_factory.mktemp("finished") / "backup"
    model, _, _ = train(backup)
    return [w.copy() for w in model.get_weights()], backup


def copy_backup(src, dst):
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_the_backup_is_committed_by_its_manifest(finished):
    _, backup = finished
    manifest = json.loads((backup / "manifest.json").read_text())
    assert manifest["epoch"] == 4 and manifest["iterations"] == 4 * 3  # 12 samples, batches of 4
    assert manifest["data_passes"] == {"train": 4} and manifest["config"] == CONFIG
    assert sorted(manifest["files"]) == ["latest.weights.h5", "training_metadata.json"]
    assert not [p.name for p in backup.iterdir() if p.name.startswith("tmp-")]  # nothing pending is left
    assert not list(backup.glob(".*.tmp"))  # nor the temporary file of the manifest's atomic write
    assert read_backup(backup, config=dict(CONFIG, epochs=9, verbose=2), may_differ=MAY_DIFFER)["epoch"] == 4


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: (b / "latest.weights.h5").unlink(), "damaged: latest.weights.h5 is missing"),
        (lambda b: (b / "training_metadata.json").unlink(), "damaged: training_metadata.json is missing"),
        (
            lambda b: (b / "latest.weights.h5").write_bytes((b / "latest.weights.h5").read_bytes()[:500]),
            "latest.weights.h5 does not match its manifest",
        ),
        (
            lambda b: (b / "training_metadata.json").write_text('{"epoch": 99, "batch": 0}'),
            "training_metadata.json does not match its manifest",
        ),
        (lambda b: (b / "manifest.json").write_text('{"format": 1, "epoch": '), "not valid JSON"),
        (lambda b: (b / "manifest.json").write_bytes(b"\x89\xff\x00"), "not valid JSON"),
        (lambda b: (b / "manifest.json").write_text("[1, 2]"), "not one this version writes"),
    ],
)
def test_a_damaged_backup_is_refused_with_what_to_do(finished, tmp_path, damage, message):
    backup = copy_backup(finished[1], tmp_path / "backup")
    damage(backup)
    with pytest.raises(BackupError, match=message) as e:
        read_backup(backup, config=CONFIG, may_differ=MAY_DIFFER)
    assert "--fresh" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(BackupError, match=message):  # the callback refuses it too, before training anything
        train(backup)


@pytest.mark.parametrize(
    "epoch, epochs, message",
    [
        (99, 10, "after epoch 99 but --epochs is 10: pass --epochs 99 or more"),
        (-5, 10, "epoch -5, not an integer >= 0"),
        ("4", 10, "epoch '4', not an integer >= 0"),
        (None, 10, "epoch None, not an integer >= 0"),
    ],
)
def test_an_impossible_epoch_is_refused(finished, tmp_path, epoch, epochs, message):
    backup = copy_backup(finished[1], tmp_path / "backup")
    manifest = json.loads((backup / "manifest.json").read_text())
    (backup / "manifest.json").write_text(json.dumps(dict(manifest, epoch=epoch)))
    with pytest.raises(BackupError, match=message):
        read_backup(backup, config=CONFIG, epochs=epochs, may_differ=MAY_DIFFER)


def test_a_backup_of_another_run_config_is_refused_naming_the_option(finished, tmp_path):
    backup = finished[1]
    other = dict(CONFIG, hidden=32, relaxed=False)
    with pytest.raises(BackupError) as e:
        read_backup(backup, config=other, may_differ=MAY_DIFFER)
    assert "--hidden 16 --relaxed, not --hidden 32 --no-relaxed" in str(e.value)
    assert "pass --hidden 16 --relaxed to resume it" in str(e.value) and "--fresh" in str(e.value)
    with pytest.raises(BackupError, match="--hidden 16"):
        train(backup, config=other)
    # --epochs may differ (extending a finished run); options added since the backup are not compared
    assert read_backup(backup, config=dict(CONFIG, epochs=10, new_option=3), may_differ=MAY_DIFFER)["epoch"] == 4


def test_weights_that_disagree_with_the_manifest_are_refused(finished, tmp_path):
    """A manifest edited by hand (hashes recomputed) to another optimizer step."""
    backup = copy_backup(finished[1], tmp_path / "backup")
    manifest = json.loads((backup / "manifest.json").read_text())
    (backup / "manifest.json").write_text(json.dumps(dict(manifest, iterations=5)))
    with pytest.raises(BackupError, match="optimizer step 12 instead of 5"):
        train(backup, epochs=6)


def test_a_legacy_backup_is_used_only_whole(finished, tmp_path):
    """Backups written before manifests: both Keras files, a valid epoch."""
    backup = copy_backup(finished[1], tmp_path / "backup")
    (backup / "manifest.json").unlink()
    assert read_backup(backup)["legacy"] and read_backup(backup)["epoch"] == 4
    (backup / "latest.weights.h5").unlink()
    with pytest.raises(BackupError, match="incomplete: it has training_metadata.json but no latest.weights.h5"):
        read_backup(backup)
    backup = copy_backup(finished[1], tmp_path / "backup2")
    (backup / "manifest.json").unlink()
    (backup / "training_metadata.json").write_text("{not json")
    with pytest.raises(BackupError, match="not valid JSON"):
        read_backup(backup)
    (backup / "training_metadata.json").write_text('{"epoch": -5, "batch": 0}')
    with pytest.raises(BackupError, match="epoch -5, not an integer >= 0"):
        read_backup(backup)
    (backup / "training_metadata.json").write_text('{"epoch": 99, "batch": 0}')
    with pytest.raises(BackupError, match="after epoch 99 but --epochs is 10"):
        read_backup(backup, epochs=10)
    assert read_backup(tmp_path / "nothing") is None


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("where", ["before_commit", "after_commit", "truncated_weights"])
def test_a_backup_interrupted_while_written_resumes_to_the_unbroken_result(finished, tmp_path, monkeypatch, where):
    """The second backup (after epoch 2) is interrupted: before its manifest (resume after epoch 1),
    after its manifest but before the renames (resume after epoch 2 from the pending files), or in
    the middle of the weights file.  The resumed run ends with the unbroken run's weights, bitwise:
    same process, same kernels, and the replayed data passes give every epoch its own batches."""
    reference, _ = finished
    backup = tmp_path / "backup"
    write, save = backup_lib._write_manifest, keras.Model.save_weights
    calls = {"manifest": 0, "weights": 0}

    def write_manifest(path, text):
        calls["manifest"] += 1
        if where == "before_commit" and calls["manifest"] == 2:
            raise Interrupt
        write(path, text)
        if where == "after_commit" and calls["manifest"] == 2:
            raise Interrupt

    def save_weights(self, filepath, *args, **kwargs):
        save(self, filepath, *args, **kwargs)
        calls["weights"] += 1
        if where == "truncated_weights" and calls["weights"] == 2:
            with open(filepath, "r+b") as f:
                f.truncate(os.path.getsize(filepath) // 2)
            raise Interrupt

    monkeypatch.setattr(backup_lib, "_write_manifest", write_manifest)
    monkeypatch.setattr(keras.Model, "save_weights", save_weights)
    with pytest.raises(Interrupt):
        train(backup)
    monkeypatch.undo()
    pending = sorted(p.name for p in backup.iterdir() if p.name.startswith(backup_lib.PENDING))
    assert pending, "the interruption left the pending files of the second backup"
    model, cb, history = train(backup)
    assert cb.restored_epoch == (2 if where == "after_commit" else 1)
    assert history.epoch == list(range(cb.restored_epoch, 4))
    for got, want in zip(model.get_weights(), reference):
        np.testing.assert_array_equal(got, want)
    assert not [p.name for p in backup.iterdir() if p.name.startswith("tmp-")]


def test_without_replayed_data_passes_a_resumed_run_differs(finished, tmp_path):
    """What CountedDataset is for: the resumed fit's first pass otherwise gets the order of pass 0."""
    reference, _ = finished
    backup = tmp_path / "backup"
    with pytest.raises(Stop):
        train(backup, callbacks=[StopAt(1)])
    manifest = json.loads((backup / "manifest.json").read_text())
    (backup / "manifest.json").write_text(json.dumps(dict(manifest, data_passes={})))
    model, cb, _ = train(backup)
    assert cb.restored_epoch == 2
    assert not all(np.array_equal(g, w) for g, w in zip(model.get_weights(), reference))
