"""The models refuse inputs they cannot use: wrong last axis or rank, NaN / Inf, empty batches.

Keras' functional input spec only sees static shapes; ``InputCheck`` also catches tensors whose
shape is unknown when the model is traced (``tf.function`` with open shapes, ``tf.data``), where a
``[batch, N, 6]`` cloud used to be reshaped silently into ``2N`` points.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_relaxeq.models import segnn, vn_classifier
from keras_relaxeq.models.checks import InputCheck

OPEN = tf.TensorSpec([None, None, None], tf.float32)  # rank known, every axis open


@pytest.fixture(scope="module")
def classifier():
    keras.utils.set_random_seed(0)
    return vn_classifier(4, relaxed=False, channels=(4, 4, 4), k=4, hidden_units=8)


def clouds(n=2, points=16, dim=3, seed=0):
    return np.random.default_rng(seed).normal(size=(n, points, dim)).astype(np.float32)


@pytest.mark.parametrize("dim", [6, 2])
def test_wrong_last_axis_refused_when_the_shape_is_open(classifier, dim):
    fn = tf.function(lambda x: classifier(x), input_signature=[OPEN])
    assert fn(clouds()).shape == (2, 4)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"Input points must have shape \[batch, points, 3\]"):
        fn(clouds(dim=dim))


def test_wrong_last_axis_refused_under_xla(classifier):
    """XLA drops Assert; EnsureShape stays and refuses the cloud."""
    fn = tf.function(lambda x: classifier(x), input_signature=[OPEN], jit_compile=True)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[2,16,6\] is not compatible with expected shape"):
        fn(clouds(dim=6))


@pytest.mark.parametrize("shape", [(2, 16, 6), (1, 2, 16, 3), (16, 3)])
def test_static_shapes_refused_by_call_and_predict(classifier, shape):
    x = np.ones(shape, np.float32)
    for call in (classifier, lambda t: classifier.predict(t, verbose=0)):
        with pytest.raises(ValueError, match=r"shape"):
            call(x)


def test_nan_refused_by_call_and_predict(classifier):
    x = clouds()
    x[1, 3, 2] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match="Input points contains NaN or Inf"):
        classifier(x)
    with pytest.raises(ValueError, match="NaN or Inf"):
        classifier.predict(x, verbose=0)
    x[1, 3, 2] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        classifier.predict(x, verbose=0)
    assert np.all(np.isfinite(classifier.predict(clouds(), verbose=0)))


def test_empty_batch_under_predict(classifier):
    with pytest.raises(ValueError, match="predict got 0 samples"):
        classifier.predict(np.zeros((0, 16, 3), np.float32), verbose=0)


def test_segnn_refuses_extra_charge_columns():
    keras.utils.set_random_seed(0)
    model = segnn(num_layers=1, hidden_features=8, relaxed=False)
    rng = np.random.default_rng(0)
    loc, vel = rng.normal(size=(2, 5, 3)).astype(np.float32), rng.normal(size=(2, 5, 3)).astype(np.float32)
    charges = np.ones((2, 5, 1), np.float32)
    fn = tf.function(lambda a, b, c: model({"loc": a, "vel": b, "charges": c}), input_signature=[OPEN] * 3)
    assert fn(loc, vel, charges).shape == (2, 5, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"Input charges must have shape \[batch, 5, 1\]"):
        fn(loc, vel, np.ones((2, 5, 2), np.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"Input loc must have shape \[batch, 5, 3\]"):
        fn(np.ones((2, 4, 3), np.float32), np.ones((2, 4, 3), np.float32), np.ones((2, 4, 1), np.float32))
    bad = vel.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match="Input vel contains NaN or Inf"):
        model({"loc": loc, "vel": bad, "charges": charges})


def test_input_check_config_round_trip_and_saving(classifier, tmp_path):
    layer = InputCheck((None, 3), finite=False, input_name="xyz", layout="[b, n, 3]", hint="do X", name="chk")
    clone = InputCheck.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    x = clouds()
    x[0, 0, 0] = np.nan
    assert np.isnan(clone(x).numpy()[0, 0, 0])  # finite=False lets NaN through
    path = tmp_path / "c.keras"
    classifier.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    np.testing.assert_allclose(loaded(clouds()), classifier(clouds()), atol=1e-6)
    fn = tf.function(lambda t: loaded(t), input_signature=[OPEN])
    with pytest.raises(tf.errors.InvalidArgumentError, match="must have shape"):
        fn(clouds(dim=6))
