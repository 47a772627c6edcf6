"""Autoregressive training model of the smoke plume forecasters (rollout_model, rollout_rmse)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_relaxeq.export.projection import has_relaxation_branches, project
from keras_relaxeq.layers import set_theta
from keras_relaxeq.models.smoke_plume import forecaster_of, rollout_model, rollout_rmse, smoke_plume_forecaster


def data(n=4, steps=3, grid=8, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(n, 10, grid, grid, 2)).astype("float32"),
        rng.normal(size=(n, steps, grid, grid, 2)).astype("float32"),
    )


def test_rollout_feeds_each_prediction_back():
    forecaster = smoke_plume_forecaster("cnn", grid=8, width=0.05)
    model = rollout_model(forecaster, steps=3)
    x, _ = data()
    out = model(x).numpy()
    assert out.shape == (4, 3, 8, 8, 2)
    frames = x.copy()
    for k in range(3):  # by hand: the one-step model on the window that ends with the previous predictions
        y = forecaster(frames).numpy()
        np.testing.assert_allclose(out[:, k], y, atol=1e-5)
        frames = np.concatenate([frames[:, 1:], y[:, None]], axis=1)
    assert forecaster_of(model) is not forecaster and forecaster_of(model).count_params() == forecaster.count_params()
    assert forecaster_of(forecaster) is forecaster


def test_relaxed_rollout_trains_with_penalties_of_every_step_and_projects():
    forecaster = smoke_plume_forecaster("relaxed", grid=8, width=0.05, relaxation_initializer="random_normal")
    model = rollout_model(forecaster, steps=2)
    model.compile(optimizer="adam", loss="mse")
    x, y = data(steps=2)
    logs = model.fit(x, y, epochs=1, verbose=0).history
    assert logs["lie_penalty"][0] > 0 and logs["projection_penalty"][0] > 0
    # one step penalised twice: the rollout's penalties are those of both calls of the forecaster
    one = rollout_model(forecaster, steps=1)
    one.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    two = rollout_model(forecaster, steps=2)
    two.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    n1 = one.fit(x, y[:, :1], epochs=1, verbose=0, batch_size=4).history["projection_penalty"][0]
    n2 = two.fit(x, y, epochs=1, verbose=0, batch_size=4).history["projection_penalty"][0]
    assert n2 > n1
    plain = project(model)
    assert not has_relaxation_branches(plain)
    set_theta(model, 0.0)
    np.testing.assert_allclose(plain(x), model(x), atol=1e-5)


def test_rollout_rmse_is_the_root_of_the_mean_per_batch_mse():
    forecaster = smoke_plume_forecaster("equivariant", grid=8, width=0.05)
    x, y = data(n=6, steps=3, seed=1)
    result = rollout_rmse(forecaster, tf.data.Dataset.from_tensor_slices((x, y)).batch(4))  # batches of 4 and 2
    pred = rollout_model(forecaster, steps=3)(x).numpy().astype(np.float64)
    per_batch = [np.mean((pred[:4] - y[:4]) ** 2), np.mean((pred[4:] - y[4:]) ** 2)]
    assert result["rmse"] == pytest.approx(np.sqrt(np.mean(per_batch)), rel=1e-5)
    assert result["num_windows"] == 6 and len(result["rmse_per_step"]) == 3
    with pytest.raises(ValueError, match="empty"):
        rollout_rmse(forecaster, tf.data.Dataset.from_tensor_slices((x, y)).batch(4).take(0))


def test_rollout_saves_and_loads(tmp_path):
    model = rollout_model(
        smoke_plume_forecaster("rsteer_relaxed", grid=8, width=0.05, relaxation_initializer="random_normal"), steps=2
    )
    x, _ = data()
    model.save(tmp_path / "r.keras")
    loaded = keras.saving.load_model(tmp_path / "r.keras")
    np.testing.assert_allclose(loaded(x), model(x), atol=1e-6)
    with pytest.raises(ValueError, match="steps"):
        rollout_model(smoke_plume_forecaster("cnn", grid=8, width=0.05), steps=0)


def test_bad_input_gets_a_clear_error():
    forecaster = smoke_plume_forecaster("relaxed", grid=8, width=0.05)
    with pytest.raises(ValueError, match=r"expected shape=\(None, 10, 8, 8, 2\)"):
        forecaster.predict(np.zeros((1, 10, 8, 8, 3), "float32"), verbose=0)  # three velocity components
    with pytest.raises(ValueError, match="NaN or Inf"):
        forecaster.predict(np.full((1, 10, 8, 8, 2), np.nan, "float32"), verbose=0)


OPEN = tf.TensorSpec([None, None, None, None, None], tf.float32)  # rank known, every axis open


@pytest.mark.parametrize(
    "shape, what",
    [((1, 9, 8, 8, 2), "nine frames"), ((1, 10, 4, 4, 2), "another grid"), ((1, 10, 8, 8, 3), "three components")],
)
def test_input_check_refuses_mis_shaped_frames_when_the_shape_is_open(shape, what):
    forecaster = smoke_plume_forecaster("equivariant", grid=8, width=0.05)
    fn = tf.function(lambda x: forecaster(x), input_signature=[OPEN])
    assert fn(np.zeros((2, 10, 8, 8, 2), "float32")).shape == (2, 8, 8, 2)  # the right shape is answered
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"Input frames must have shape \[batch, 10, 8, 8, 2\]"):
        fn(np.zeros(shape, "float32"))


def test_input_check_refuses_nan_in_eager_calls_and_survives_saving(tmp_path):
    forecaster = smoke_plume_forecaster("relaxed", grid=8, width=0.05)
    assert forecaster.layers[1].name == "check_frames"
    x = np.random.default_rng(0).normal(size=(2, 10, 8, 8, 2)).astype("float32")
    bad = x.copy()
    bad[1, 3, 2, 2, 0] = np.inf
    with pytest.raises(tf.errors.InvalidArgumentError, match="Input frames contains NaN or Inf"):
        forecaster(bad)
    with pytest.raises(ValueError, match=r"expected shape=\(None, 10, 8, 8, 2\)"):
        forecaster(x[0])  # a window without its batch axis: Keras' own static check
    forecaster.save(tmp_path / "f.keras")
    loaded = keras.saving.load_model(tmp_path / "f.keras", compile=False)
    np.testing.assert_allclose(loaded(x), forecaster(x), atol=1e-6)
    with pytest.raises(tf.errors.InvalidArgumentError, match="Input frames contains NaN or Inf"):
        loaded(bad)
    # the rollout model calls the checked forecaster at every step; its predictions are unchanged
    rollout = rollout_model(forecaster, steps=2)
    assert rollout(x).shape == (2, 2, 8, 8, 2)
