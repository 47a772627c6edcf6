"""MultiWorkerBackupAndRestore(every_epochs=N): when it backs up, and where a killed run resumes."""

import json

import keras
import numpy as np
import pytest

from keras_relaxeq.training.backup import MultiWorkerBackupAndRestore


def tiny_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    return model


class Killed(Exception):
    pass


class Watch(keras.callbacks.Callback):
    """Records the backed-up epoch after each epoch; raises at the end of epoch ``kill_at``."""

    def __init__(self, backup_dir, kill_at=None):
        super().__init__()
        self.meta = backup_dir / "training_metadata.json"
        self.kill_at, self.seen = kill_at, []

    def on_epoch_end(self, epoch, logs=None):
        self.seen.append(json.loads(self.meta.read_text())["epoch"] if self.meta.exists() else None)
        if epoch == self.kill_at:
            raise Killed


def test_backs_up_every_n_epochs_and_after_the_last(tmp_path):
    x, y = np.ones((8, 3), "float32"), np.ones((8, 1), "float32")
    watch = Watch(tmp_path)
    cb = MultiWorkerBackupAndRestore(str(tmp_path), delete_checkpoint=False, every_epochs=2)
    tiny_model().fit(x, y, epochs=5, verbose=0, callbacks=[cb, watch])
    assert watch.seen == [None, 2, 2, 4, 5]  # epochs 2 and 4, and the last (5)

    # killed after epoch 3 (index 2) with the last backup after epoch 2: the new process redoes epoch 3
    backup = tmp_path / "killed"
    model = tiny_model()
    with pytest.raises(Killed):
        model.fit(
            x,
            y,
            epochs=5,
            verbose=0,
            callbacks=[
                MultiWorkerBackupAndRestore(str(backup), delete_checkpoint=False, every_epochs=2),
                Watch(backup, kill_at=2),
            ],
        )
    saved = [w.copy() for w in model.get_weights()]  # after 3 epochs; the backup holds 2
    resumed = tiny_model()
    history = resumed.fit(
        x,
        y,
        epochs=5,
        verbose=0,
        callbacks=[MultiWorkerBackupAndRestore(str(backup), delete_checkpoint=False, every_epochs=2)],
    )
    assert history.epoch == [2, 3, 4]
    assert not np.allclose(saved[0], resumed.get_weights()[0])


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_every_epochs_must_be_a_positive_integer(tmp_path, bad):
    with pytest.raises(ValueError, match="every_epochs"):
        MultiWorkerBackupAndRestore(str(tmp_path), every_epochs=bad)
    with pytest.raises(ValueError, match="save_freq"):
        MultiWorkerBackupAndRestore(str(tmp_path), save_freq=10, every_epochs=2)
