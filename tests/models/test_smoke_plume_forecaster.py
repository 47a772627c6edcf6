"""Smoke plume forecaster arms (models/smoke_plume.py): shapes, C4 equivariance of the equivariant arms."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_relaxeq.export.projection import project
from keras_relaxeq.groups.cyclic import FieldType
from keras_relaxeq.layers import set_theta
from keras_relaxeq.models.smoke_plume import ARMS, smoke_plume_forecaster
from keras_relaxeq.testing.cyclic import check_cyclic_equivariance

VECTOR = FieldType.vector(4)  # acts on every frame of [B, T, H, W, 2] and on the output [B, H, W, 2]


def frames(grid=16, seed=0):
    return tf.constant(np.random.default_rng(seed).normal(size=(1, 10, grid, grid, 2)), tf.float32)


def rel_error(model, x):
    report = check_cyclic_equivariance(model, x, VECTOR, VECTOR, atol=0.0)
    return report.max_error / report.scale


@pytest.mark.parametrize("arm", ARMS)
def test_arms_build_and_predict_the_next_frame(arm):
    model = smoke_plume_forecaster(arm, grid=16, width=0.05, relaxation_initializer="random_normal")
    x = frames()
    assert model(x).shape == (1, 16, 16, 2)
    error = rel_error(model, x)
    if arm == "equivariant":
        assert error < 1e-5
    else:  # a plain CNN, random relaxation branches, per-tap RSteer coefficients
        assert error > 1e-3
    if arm in ("relaxed", "rsteer_relaxed"):
        plain = project(model)
        plain_arm = smoke_plume_forecaster(
            arm.replace("_relaxed", "").replace("relaxed", "equivariant"), grid=16, width=0.05
        )
        assert plain.count_params() == plain_arm.count_params()
        set_theta(model, 0.0)
        np.testing.assert_allclose(plain(x), model(x), atol=1e-5)
        if arm == "relaxed":
            assert rel_error(plain, x) < 1e-5


def test_published_width_at_64x64_is_equivariant_after_projection():
    model = smoke_plume_forecaster(
        "relaxed", width=0.1, relaxation_initializer=keras.initializers.RandomNormal(stddev=0.05)
    )
    x = frames(grid=64, seed=1)
    assert model(x).shape == (1, 64, 64, 2)
    assert rel_error(project(model), x) < 1e-5
    layers = [layer for layer in model.layers if hasattr(layer, "out_type")]
    assert len(layers) == 5 and layers[1].out_type == FieldType.regular(4, 9)  # round(92 * 0.1)


def test_relaxed_arm_trains_with_the_defect_penalty():
    model = smoke_plume_forecaster("relaxed", grid=8, width=0.03, relaxation_initializer="random_normal")
    model.compile(optimizer="adam", loss="mse")
    x = np.random.default_rng(2).normal(size=(2, 10, 8, 8, 2)).astype("float32")
    y = np.random.default_rng(3).normal(size=(2, 8, 8, 2)).astype("float32")
    history = model.fit(x, y, epochs=1, verbose=0)
    assert history.history["lie_penalty"][0] > 0.0


def test_schedule_monitor_and_export_work_unchanged(tmp_path):
    from keras_relaxeq.export.serving import export_saved_model
    from keras_relaxeq.training.diagnostics import relaxation_report
    from keras_relaxeq.training.schedules import ThetaScheduler

    model = smoke_plume_forecaster("rsteer_relaxed", grid=8, width=0.03, relaxation_initializer="random_normal")
    model.compile(optimizer="adam", loss="mse")
    x = np.random.default_rng(4).normal(size=(2, 10, 8, 8, 2)).astype("float32")
    model.fit(x, x[:, -1], epochs=2, verbose=0, callbacks=[ThetaScheduler("decay")])
    assert model.layers[-1].theta.numpy() == 0.0  # the schedule ends at exactly 0
    rows = relaxation_report(model, x)
    assert [r["layer"] for r in rows][-1] == "total" and len(rows) == 6
    path = export_saved_model(
        model, tmp_path, "smoke_plume_c4", 1, allow_relaxed=True, input_name="frames", outputs="regression"
    )
    served = tf.saved_model.load(str(path)).signatures["serving_default"]
    out = served(frames=tf.constant(x))
    np.testing.assert_allclose(list(out.values())[0], project(model)(x), atol=1e-5)
