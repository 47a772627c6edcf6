"""The smoke plume forecaster's serving signature (``export_smoke_saved_model``): ``frames [batch, 10, H, W, 2]`` ->
``next_frame [batch, H, W, 2]``, the Keras model's answers, and every mis-shaped or non-finite input refused inside
the SavedModel with a message naming the input and the expected shape."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_relaxeq.export.serving import check_guards
from keras_relaxeq.models.smoke_plume import smoke_plume_forecaster
from keras_relaxeq.zoo.publish.smoke_plume import export_smoke_saved_model
from keras_relaxeq.zoo.verify import signature_def_specs

GRID = 8


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = smoke_plume_forecaster("equivariant", grid=GRID, width=0.05)
    path = export_smoke_saved_model(model, tmp_path_factory.mktemp("export"), "toy_cnn_c4_smoke", 1)
    return model, path, tf.saved_model.load(str(path)).signatures["serving_default"]


def test_signature_and_answers(exported):
    model, path, serve = exported
    assert signature_def_specs(path) == {
        "inputs": {"frames": ("DT_FLOAT", [-1, 10, GRID, GRID, 2])},
        "outputs": {"next_frame": ("DT_FLOAT", [-1, GRID, GRID, 2])},
    }
    check_guards(path, {"frames": tf.TensorSpec([None, 10, GRID, GRID, 2])})  # Assert, EnsureShape, CheckNumerics
    x = np.random.default_rng(0).normal(size=(3, 10, GRID, GRID, 2)).astype("float32")
    np.testing.assert_allclose(serve(frames=tf.constant(x))["next_frame"], model(x), atol=1e-5)


@pytest.mark.parametrize(
    "shape",
    [(2, 9, GRID, GRID, 2), (2, 10, 4, 4, 2), (2, 10, GRID, GRID, 3), (1, 2, 10, GRID, GRID, 2), (10, GRID, GRID, 2)],
    ids=["nine frames", "another grid", "three components", "extra axis", "no batch axis"],
)
def test_mis_shaped_frames_refused_naming_the_expected_shape(exported, shape):
    serve = exported[2]
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"serving input frames must have shape "
        rf"\[batch, 10, {GRID}, {GRID}, 2\]",
    ):
        serve(frames=tf.zeros(shape))


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_frames_refused(exported, value):
    x = np.zeros((2, 10, GRID, GRID, 2), "float32")
    x[1, 9, 3, 4, 0] = value
    with pytest.raises(tf.errors.InvalidArgumentError, match="serving input frames contains NaN or Inf"):
        exported[2](frames=tf.constant(x))
