"""The scale forecasters (models/smoke_plume_scale.py): arms, the relaxed lifting branch reaches the output,
projection, saving."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_relaxeq.export.projection import project
from keras_relaxeq.layers import relaxed_layers, set_theta
from keras_relaxeq.models.smoke_plume_scale import ARMS, smoke_plume_scale_forecaster
from keras_relaxeq.testing.scale import assert_relaxation_reaches_output

GRID = 12


def frames(batch=2, seed=0):
    return tf.constant(np.random.default_rng(seed).normal(size=(batch, 10, GRID, GRID, 2)), tf.float32)


def small(arm, **kwargs):
    return smoke_plume_scale_forecaster(arm, grid=GRID, hidden=3, num_layers=3, kernel_size=5, **kwargs)


@pytest.mark.parametrize("arm", ARMS)
def test_arms_predict_the_next_frame(arm):
    keras.utils.set_random_seed(0)
    model = small(arm)
    y = model(frames())
    assert y.shape == (2, GRID, GRID, 2) and np.all(np.isfinite(y))
    assert bool(relaxed_layers(model)) == arm.endswith("relaxed")


@pytest.mark.parametrize("arm", ["relaxed", "rsteer_relaxed"])
def test_relaxation_branch_changes_the_output_and_projection_drops_it(arm):
    """Issue 24's acceptance: at theta = 1 the lifting branch changes the forecast (the published scale model's
    relaxed layer never reached its output); the projected model is the theta = 0 model without the branch."""
    keras.utils.set_random_seed(1)
    model = small(arm)
    x = frames(seed=1)
    changes = assert_relaxation_reaches_output(model, x)
    assert set(changes) == {"lifting"} and changes["lifting"] > 1e-3
    set_theta(model, 0.0)
    y0 = model(x)
    projected = project(model)
    assert not relaxed_layers(projected)
    assert projected.count_params() < model.count_params()
    np.testing.assert_allclose(projected(x), y0, rtol=1e-5, atol=1e-5)
    # the check can fail: the projected model has no branch to reach the output
    with pytest.raises(AssertionError, match="no relaxation branch"):
        assert_relaxation_reaches_output(projected, x)


def test_saving_round_trip(tmp_path):
    keras.utils.set_random_seed(2)
    model = small("relaxed", relaxation_initializer="random_normal")
    set_theta(model, 0.5)
    x = frames(seed=2)
    path = tmp_path / "scale.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-5, atol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="arm must be one of"):
        smoke_plume_scale_forecaster("scale")
    with pytest.raises(ValueError, match="num_layers"):
        smoke_plume_scale_forecaster("equivariant", num_layers=1)


def test_bad_input_gets_a_clear_error():
    model = small("relaxed")
    with pytest.raises(Exception, match="frames"):
        model(tf.zeros((2, 9, GRID, GRID, 2)))
    bad = np.array(frames())
    bad[0, 0, 0, 0, 0] = np.nan
    with pytest.raises(Exception, match="frames"):
        model(tf.constant(bad))
