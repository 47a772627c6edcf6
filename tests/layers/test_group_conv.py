"""C_N lifting / group / projection convolutions (layers/group_conv.py): exact C4 equivariance with rot90 of the grid
and of the vector components, the relaxed branch, project(), serialization, a velocity-field stack."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_relaxeq.export.projection import project
from keras_relaxeq.groups.cyclic import FibreRep, FieldType
from keras_relaxeq.layers import (
    CyclicConv2D,
    GroupConv2D,
    LiftingConv2D,
    ProjectionConv2D,
    collect_relaxation_penalties,
    set_theta,
)
from keras_relaxeq.testing import assert_equivariant
from keras_relaxeq.testing.cyclic import assert_cyclic_equivariant, check_cyclic_equivariance

RTOL = 1e-5  # the acceptance bound: relative to the output scale


def random_fields(channels, size=9, batch=2, seed=0, dtype="float32"):
    return tf.constant(np.random.default_rng(seed).normal(size=(batch, size, size, channels)), dtype)


def relative_error(fn, x, ti, to):
    report = check_cyclic_equivariance(fn, x, ti, to, atol=0.0, rtol=RTOL)
    return report.max_error / report.scale


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_lifting_group_projection_are_exactly_equivariant(dtype):
    tol = RTOL if dtype == "float32" else 1e-12
    x = random_fields(2 * 3, dtype=dtype)  # three vector fields
    lift = LiftingConv2D(4, in_type="vector", relaxed=False, use_bias=True, dtype=dtype)
    h = lift(x)
    assert h.shape == (2, 9, 9, 16)
    lift.bias_coefficients[0].assign(np.random.default_rng(1).normal(size=(4, 1)))  # a non-zero invariant bias
    assert relative_error(lift, x, FieldType.vector(4, 3), FieldType.regular(4, 4)) < tol
    group = GroupConv2D(3, kernel_size=5, relaxed=False, dtype=dtype)
    assert relative_error(group, h, FieldType.regular(4, 4), FieldType.regular(4, 3)) < tol
    proj = ProjectionConv2D("vector", relaxed=False, dtype=dtype)
    assert relative_error(proj, h, FieldType.regular(4, 4), FieldType.vector(4)) < tol
    scalar = ProjectionConv2D([["trivial", 2]], relaxed=False, dtype=dtype)
    assert relative_error(scalar, h, FieldType.regular(4, 4), FieldType.trivial(4, 2)) < tol
    # the layers declare their field types: the generic checker needs no types
    assert_cyclic_equivariant(proj, h, rtol=tol)
    assert_equivariant(proj, h, group="C4", rtol=tol)


def test_mixed_field_types_and_c2():
    ti = FieldType(4, ["vector", "regular", "trivial", "vector"])
    to = FieldType(4, ["regular", "trivial", FibreRep("irrep", 4, frequency=2), "vector"])
    layer = CyclicConv2D(to, in_type=ti, relaxed=False, dtype="float64")
    x = random_fields(ti.channels, dtype="float64")
    layer(x)
    for v in layer.bias_coefficients.values():
        v.assign(np.ones(v.shape))
    assert relative_error(layer, x, ti, to) < 1e-12
    c2 = CyclicConv2D([["regular", 2], ["vector", 1]], in_type="vector", group_order=2, relaxed=False, dtype="float64")
    x2 = random_fields(4, dtype="float64")
    assert check_cyclic_equivariance(c2, x2, FieldType(2, ["vector"] * 2), c2.out_type, rtol=1e-12).passed


def test_equivariance_does_not_hold_for_a_plain_conv():
    # control: the checker sees non-equivariance (a Conv2D between vector fields)
    conv = keras.layers.Conv2D(2, 3, padding="same")
    x = random_fields(2)
    assert relative_error(conv, x, FieldType.vector(4), FieldType.vector(4)) > 1e-2


def test_relaxed_layer_breaks_equivariance_and_projection_restores_it():
    inputs = keras.Input((9, 9, 4))
    h = LiftingConv2D(
        3, in_type="vector", activation="relu", relaxation_initializer=keras.initializers.RandomNormal(stddev=0.3)
    )(inputs)
    h = GroupConv2D(3, activation="relu", relaxation_initializer=keras.initializers.RandomNormal(stddev=0.3))(h)
    outputs = ProjectionConv2D("vector", relaxation_initializer=keras.initializers.RandomNormal(stddev=0.3))(h)
    model = keras.Model(inputs, outputs)
    x = random_fields(4)
    ti, to = FieldType.vector(4, 2), FieldType.vector(4)
    assert relative_error(model, x, ti, to) > 1e-2  # theta = 1, random branches
    with collect_relaxation_penalties() as collector:
        model(x)
    lie, proj = collector.totals()
    assert len(collector) == 3 and float(lie) > 0.0 and float(proj) > 0.0
    plain = project(model)
    assert relative_error(plain, x, ti, to) < RTOL
    set_theta(model, 0.0)
    np.testing.assert_allclose(plain(x), model(x), atol=1e-6)
    unrelaxed = keras.Model.from_config(plain.get_config())
    assert plain.count_params() == unrelaxed.count_params() < model.count_params()


def test_activation_only_on_pointwise_fibres():
    with pytest.raises(ValueError, match="trivial and regular"):
        ProjectionConv2D("vector", activation="relu")
    with pytest.raises(ValueError, match="odd"):
        GroupConv2D(2, kernel_size=4)
    with pytest.raises(ValueError, match="whole number"):
        GroupConv2D(2)(random_fields(6))
    with pytest.raises(ValueError, match="convolution"):
        GroupConv2D(2, relaxation_branch="mlp")


@pytest.mark.parametrize(
    "cls, kwargs, channels",
    [
        (LiftingConv2D, {"filters": 2, "in_type": [["vector", 2], ["trivial", 1]]}, 5),
        (GroupConv2D, {"filters": 2, "kernel_size": 5, "activation": "relu"}, 8),
        (ProjectionConv2D, {"out_type": [["vector", 1], ["trivial", 1]], "use_bias": False}, 8),
        (CyclicConv2D, {"out_type": ["regular", "vector"], "in_type": "vector", "relaxed": False}, 4),
    ],
)
def test_config_round_trip_and_saving(cls, kwargs, channels, tmp_path):
    layer = cls(relaxation_initializer="random_normal", **kwargs) if "relaxed" not in kwargs else cls(**kwargs)
    x = random_fields(channels)
    y = layer(x)
    clone = cls.from_config(layer.get_config())
    clone(x)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(clone(x), y, atol=1e-6)
    assert clone.get_config() == layer.get_config()
    inputs = keras.Input((9, 9, channels))
    model = keras.Model(inputs, cls.from_config(layer.get_config())(inputs))
    model.set_weights(layer.get_weights())
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded(x), y, atol=1e-6)


def _velocity_stack(frames, width, relaxed):
    inputs = keras.Input((64, 64, 2 * frames))
    branch = dict(relaxed=relaxed, relaxation_initializer=keras.initializers.RandomNormal(stddev=0.05))
    h = LiftingConv2D(width, in_type="vector", **branch)(inputs)
    h = keras.layers.ReLU()(h)
    h = GroupConv2D(width, **branch)(h)
    h = keras.layers.ReLU()(h)
    return keras.Model(inputs, ProjectionConv2D("vector", **branch)(h))


@pytest.mark.parametrize("frames", [1, 10])
def test_velocity_stack_is_equivariant_after_projection(frames):
    model = _velocity_stack(frames, width=3, relaxed=True)
    x = random_fields(2 * frames, size=64, batch=1, seed=frames)
    assert model(x).shape == (1, 64, 64, 2)
    ti, to = FieldType.vector(4, frames), FieldType.vector(4)
    assert relative_error(model, x, ti, to) > 1e-3
    assert relative_error(project(model), x, ti, to) < RTOL


def test_regular_batch_norm_and_group_pooling_are_equivariant():
    from keras_relaxeq.layers import GroupPooling, RegularBatchNorm

    x = random_fields(12, seed=3) * 3.0 + 1.0
    regular = FieldType.regular(4, 3)
    norm = RegularBatchNorm(momentum=0.5)
    y = norm(x, training=True)
    np.testing.assert_allclose(tf.reduce_mean(tf.reshape(y, [-1, 3, 4]), axis=[0, 2]), np.zeros(3), atol=1e-5)
    for training in (True, False):
        assert check_cyclic_equivariance(norm, x, regular, regular, atol=0.0, rtol=RTOL, training=training).passed
    assert len(norm.weights) == 4 and norm.weights[0].shape == (3,)  # per field, not per channel
    for mode in ("max", "mean"):
        pool = GroupPooling(mode=mode)
        assert pool(x).shape == (2, 9, 9, 3)
        assert check_cyclic_equivariance(pool, x, regular, FieldType.trivial(4, 3), atol=0.0, rtol=RTOL).passed
    clone = RegularBatchNorm.from_config(norm.get_config())
    clone(x)
    clone.set_weights(norm.get_weights())
    np.testing.assert_allclose(clone(x), norm(x), atol=1e-6)
    assert GroupPooling.from_config(GroupPooling(mode="mean").get_config()).mode == "mean"


def test_mixed_precision_runs_in_bfloat16_with_float32_penalties_and_weights():
    from keras_relaxeq.layers import RSteerConv2D

    x = random_fields(8)
    for layer in (
        GroupConv2D(2, dtype="mixed_bfloat16", relaxation_initializer="random_normal"),
        RSteerConv2D([["regular", 2]], dtype="mixed_bfloat16", relaxation_initializer="random_normal"),
    ):
        with collect_relaxation_penalties() as collector:
            y = layer(x, training=True)
        assert y.dtype == tf.bfloat16
        assert all(w.dtype == "float32" for w in layer.weights)
        assert all(t.dtype == tf.float32 and float(t) > 0.0 for t in collector.totals())
    coeffs = [v.numpy() for v in layer.coefficients.values()]
    expected = np.concatenate([np.abs(np.diff(c.reshape(c.shape[:-2] + (-1,)), axis=-1)).ravel() for c in coeffs])
    np.testing.assert_allclose(float(layer.losses[0]), expected.mean(), rtol=1e-6)


RUN_LAYER_TEST_CASES = [
    (LiftingConv2D, dict(filters=3, in_type="vector"), 2 * 2, FieldType.vector(4, 2), FieldType.regular(4, 3)),
    (GroupConv2D, dict(filters=2), 4 * 3, FieldType.regular(4, 3), FieldType.regular(4, 2)),
    (ProjectionConv2D, dict(out_type="vector"), 4 * 2, FieldType.regular(4, 2), FieldType.vector(4)),
]


@pytest.mark.parametrize("cls,kwargs,channels,ti,to", RUN_LAYER_TEST_CASES, ids=lambda v: getattr(v, "__name__", None))
def test_run_layer_test(cls, kwargs, channels, ti, to):
    """The package's layer test: build, call, serialization, relaxed -> project, C4 equivariance (negative control)."""
    from keras_relaxeq.testing import CyclicGridAction, run_layer_test

    run_layer_test(cls, kwargs, (2, 7, 7, channels), group=CyclicGridAction(ti, to), negative_control=True)


@pytest.mark.parametrize("rsteer", [False, True])
def test_fused_relaxed_call_equals_the_two_convolutions(rsteer):
    """``E(x) + theta R(x)`` in one convolution (``fuse_relaxation``) gives the separate evaluation's outputs,
    penalties and gradients (of the loss with the penalties) to float64 rounding, at theta in (0, 1) and 0."""
    from keras_relaxeq.layers.rsteer import RSteerConv2D

    x = random_fields(2 * 4, size=8, dtype="float64", seed=3)
    if rsteer:
        layer = RSteerConv2D([["regular", 3]], in_type="vector", relaxed=True, activation="relu", dtype="float64")
    else:
        layer = LiftingConv2D(3, in_type="vector", relaxed=True, activation="relu", dtype="float64")
    layer(x)
    rng = np.random.default_rng(4)
    layer.relaxation_kernel.assign(rng.normal(size=layer.relaxation_kernel.shape))
    layer.relaxation_bias.assign(rng.normal(size=layer.relaxation_bias.shape))
    for v in layer.bias_coefficients.values():
        v.assign(rng.normal(size=v.shape))

    def run(fused, theta):
        layer.fuse_relaxation = fused
        set_theta(layer, theta)
        with tf.GradientTape() as tape:
            tape.watch(x)
            with collect_relaxation_penalties() as collector:
                y = layer(x, training=True)
            lie, proj = collector.totals(dtype="float64")
            loss = tf.reduce_sum(tf.sin(y)) + 0.3 * lie + 0.7 * proj
        grads = tape.gradient(loss, [x] + layer.trainable_variables)
        return [y, lie, proj] + grads

    for theta in (0.37, 0.0):
        fused, separate = run(True, theta), run(False, theta)
        assert float(tf.reduce_max(tf.abs(fused[0]))) > 0.1
        for a, b in zip(fused, separate):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-10, atol=1e-10)
    # the comparison can fail: a wrong theta in the fused kernel changes the outputs
    layer.fuse_relaxation = True
    set_theta(layer, 0.37)
    y_fused = layer(x)
    set_theta(layer, 0.5)
    assert float(tf.reduce_max(tf.abs(layer(x) - y_fused))) > 1e-3
