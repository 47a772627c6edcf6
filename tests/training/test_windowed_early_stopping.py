"""WindowedEarlyStopping (the smoke plume reference's rule), ProjectedValidation(mode="min"), plot_history(metric)."""

import math

import keras
import numpy as np
import pytest

from keras_relaxeq.training.callbacks import ProjectedValidation, WindowedEarlyStopping, plot_history


class _Model:
    stop_training = False


def run(values, **kwargs):
    """Feed ``values`` epoch by epoch; the 0-based epoch after which it stopped (None: never)."""
    cb = WindowedEarlyStopping("v", **kwargs)
    cb.set_model(_Model())
    for epoch, v in enumerate(values):
        cb.on_epoch_end(epoch, {"v": v})
        if cb.model.stop_training:
            return epoch
    return None


def test_stops_when_the_recent_window_mean_stops_improving():
    values = [10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 1, 1, 1, 1, 1, 1]
    # window 2: at epoch index 12 the last two (1, 1) no longer beat the two before (1, 1)
    assert run(values, window=2, min_epochs=0) == 12
    assert run(values[:11], window=2, min_epochs=0) is None  # still improving


def test_waits_for_more_than_min_epochs():
    flat = [1.0] * 30
    assert run(flat, window=5, min_epochs=0) == 9  # two windows of 5 are needed
    assert run(flat, window=5, min_epochs=20) == 20  # the reference: len(history) > 100 -> epoch index 100


def test_mode_max_and_gaps():
    rising = [0.1, 0.2, 0.3, 0.4, 0.4, 0.4]
    assert run(rising, window=1, min_epochs=0, mode="max") == 4
    gaps = [3.0, float("nan"), 2.0, float("nan"), 2.0]  # validation every second epoch
    assert run(gaps, window=1, min_epochs=0) == 4


def test_resumed_run_stops_where_an_unbroken_one_does():
    values = list(np.linspace(5, 1, 12)) + [1.0] * 10
    unbroken = run(values, window=3, min_epochs=5)
    cut = 14
    cb = WindowedEarlyStopping("v", window=3, min_epochs=5, initial_history=values[:cut])
    cb.set_model(_Model())
    stopped = None
    for epoch in range(cut, len(values)):
        cb.on_epoch_end(epoch, {"v": values[epoch]})
        if cb.model.stop_training:
            stopped = epoch
            break
    assert unbroken is not None and stopped == unbroken


def test_bad_arguments():
    with pytest.raises(ValueError, match="window"):
        WindowedEarlyStopping("v", window=0)
    with pytest.raises(ValueError, match="mode"):
        WindowedEarlyStopping("v", mode="lowest")


def test_projected_validation_min_mode_keeps_the_lowest(tmp_path):
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(loss="mse")
    x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
    val = (x, np.zeros((8, 1), "float32"))
    import tensorflow as tf

    cb = ProjectedValidation(
        tf.data.Dataset.from_tensor_slices(val).batch(4),
        loss="mse",
        metrics=[],
        monitor="projected_val_loss",
        mode="min",
        best_path=tmp_path / "best.keras",
    )
    cb.set_model(model)
    cb.on_train_begin()
    losses = []
    for epoch, scale in enumerate((1.0, 0.1, 2.0)):  # the second epoch is the best
        for w in model.weights:
            w.assign(w * 0 + scale)
        logs = {}
        cb.on_epoch_end(epoch, logs)
        losses.append(logs["projected_val_loss"])
    assert cb.best_epoch == 1 and math.isclose(cb.best, min(losses))
    assert (tmp_path / "best.keras").exists()
    with pytest.raises(ValueError, match="mode"):
        ProjectedValidation(val, mode="lowest")


def test_plot_history_with_a_regression_metric(tmp_path):
    history = {
        "epoch": [0, 1, 2],
        "rmse": [3.0, 2.0, 1.0],
        "projected_val_rmse": [3.5, float("nan"), 1.5],
        "theta": [0.0, 0.5, 0.0],
    }
    path = plot_history(history, tmp_path / "h.png", title="t", metric="rmse")
    assert (tmp_path / "h.png").stat().st_size > 1000 and str(path).endswith("h.png")
