"""keras_relaxeq.testing.run_layer_test: passes on real layers of every family and group action, and fails,
naming what broke, on a non-equivariant layer, a get_config that drops an argument, a branch that misses the
output and a relaxed layer whose projection is not its theta = 0 output."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_relaxeq.groups import FieldType
from keras_relaxeq.layers import VNBatchNorm, VNLeakyReLU, VNLinear
from keras_relaxeq.layers.base import RelaxedEquivariantLayer
from keras_relaxeq.layers.steerable import O3Linear, O3TensorProduct, SteerableNorm
from keras_relaxeq.testing import (
    CyclicGridAction,
    LayerTestResult,
    ScaleAction,
    check_action_equivariance,
    run_layer_test,
)

register = keras.saving.register_keras_serializable(package="keras_relaxeq_tests")
POINTS = (2, 12, 4, 3)


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(2024)


# --------------------------------------------------------------------------- layers for the checks
@register
class Centre(keras.layers.Layer):
    """Points ``[B, N, 3]`` minus their centroid: E(3)-equivariant from positions to vectors."""

    def call(self, x):
        return x - tf.reduce_mean(x, axis=1, keepdims=True)


@register
class SymmetricConv(keras.layers.Layer):
    """A 3x3 convolution of scalar fields whose kernel is averaged over the quarter turns (C_4-equivariant);
    ``symmetric=False`` keeps the raw kernel."""

    def __init__(self, filters, symmetric=True, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.symmetric = int(filters), bool(symmetric)

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel", shape=(3, 3, input_shape[-1], self.filters))

    def call(self, x):
        k = self.kernel
        if self.symmetric:
            turns = [k]
            for _ in range(3):  # a quarter turn of the two spatial axes
                turns.append(tf.transpose(tf.reverse(turns[-1], [1]), [1, 0, 2, 3]))
            k = tf.add_n(turns) / 4.0
        return tf.nn.conv2d(x, k, strides=1, padding="SAME")

    def get_config(self):
        return dict(super().get_config(), filters=self.filters, symmetric=self.symmetric)


@register
class AbsVNLinear(VNLinear):
    """Not equivariant: the absolute value of the VN linear map."""

    def call(self, inputs, training=None):
        return tf.abs(super().call(inputs, training=training))


@register
class ForgetfulLeakyReLU(VNLeakyReLU):
    """``get_config`` drops ``negative_slope``: a clone has the default slope."""

    def get_config(self):
        config = super().get_config()
        del config["negative_slope"]
        return config


@register
class UnusedBranchVNLinear(VNLinear):
    """Builds a relaxation branch and never adds it."""

    def call(self, inputs, training=None):
        return self.equivariant_call(inputs)


@register
class LeakyBranchVNLinear(VNLinear):
    """Adds ``(theta + 0.5) R(x)``: the branch is still there at theta = 0, so projection changes the output."""

    def call(self, inputs, training=None):
        outputs = RelaxedEquivariantLayer.call(self, inputs, training=training)
        if self.relaxed:
            r = self.branch(tf.reshape(inputs, [-1, self.input_rep.dim]))
            outputs = outputs + 0.5 * tf.reshape(r, tf.shape(outputs))
        return outputs


# --------------------------------------------------------------------------- passes
@pytest.mark.parametrize(
    "layer_cls, kwargs, shape, group",
    [
        pytest.param(VNLinear, {"channels": 5}, POINTS, None, id="vn_linear"),
        pytest.param(VNLeakyReLU, {"channels": 5, "relaxation_rank": 2}, POINTS, "SO3", id="vn_leaky_relu_low_rank"),
        pytest.param(VNBatchNorm, {}, POINTS, "O3", id="vn_batchnorm"),
        pytest.param(
            O3Linear,
            {"irreps_in": "2x0e+1x1o+1x1e", "irreps_out": "1x0e+2x1o+1x1e", "dtype": "float64"},
            (2, 5, 8),
            "O3",
            id="o3_linear",
        ),
        pytest.param(
            O3TensorProduct,
            {
                "irreps_in1": "2x0e+1x1o",
                "irreps_in2": "1x0e+1x1o",
                "irreps_out": "1x0e+2x1o+1x1e",
                "layout": "ir_mul",
                "dtype": "float64",
            },
            ((2, 5, 5), (2, 5, 4)),
            "O3",
            id="o3_tensor_product_ir_mul",
        ),
        pytest.param(
            SteerableNorm,
            {"irreps": "2x0e+1x1o", "mode": "batch", "dtype": "float64"},
            (3, 4, 5),
            "O3",
            id="steerable_batch_norm",
        ),
    ],
)
def test_passes_on_real_layers(layer_cls, kwargs, shape, group):
    result = run_layer_test(layer_cls, kwargs, shape, group=group)
    assert isinstance(result, LayerTestResult) and result.report.passed and result.report.scale > 1e-2
    assert result.report.group == (group or "SO3")
    if layer_cls in (VNLinear, VNLeakyReLU, O3Linear, O3TensorProduct):  # layers with a branch
        assert result.relaxed_layer is not None and result.projected_model is not None
        assert not result.plain_layer.relaxed
    else:
        assert result.projected_model is None


def test_expected_shape_negative_control_and_training_mode():
    result = run_layer_test(
        VNLinear, {"channels": 5}, POINTS, expected_output_shape=(2, 12, 5, 3), negative_control=True
    )
    assert result.outputs[0].shape == (2, 12, 5, 3)
    run_layer_test(VNLeakyReLU, {"channels": 3}, POINTS, training=True)
    with pytest.raises(AssertionError, match=r"output shapes \[\(2, 12, 5, 3\)\] instead of the expected"):
        run_layer_test(VNLinear, {"channels": 5}, POINTS, expected_output_shape=(2, 12, 4, 3))


def test_e3_with_positions():
    result = run_layer_test(Centre, {}, (3, 8, 3), group="E3", input_reps="position", output_reps="vector")
    assert result.report.group == "E3" and result.relaxed_layer is None
    with pytest.raises(AssertionError, match="E3 equivariance.*Not equivariant"):
        run_layer_test(keras.layers.Identity, {}, (3, 8, 3), group="E3", input_reps="position", output_reps="vector")


def test_cyclic_grid_action():
    action = CyclicGridAction(FieldType.trivial(4, 2), FieldType.trivial(4, 3))
    result = run_layer_test(SymmetricConv, {"filters": 3}, (2, 7, 7, 2), group=action)
    assert result.report.group == "C4" and result.report.num_samples == 3
    with pytest.raises(AssertionError, match="C4 equivariance.*Not equivariant"):
        run_layer_test(SymmetricConv, {"filters": 3, "symmetric": False}, (2, 7, 7, 2), group=action)
    # fibres: a velocity field turned as a grid and as vectors; read as two scalars it is not invariant
    field = tf.constant(np.random.default_rng(0).normal(size=(2, 5, 5, 2)), tf.float64)
    vector = FieldType.vector(4)
    assert check_action_equivariance(tf.identity, field, CyclicGridAction(vector)).max_error == 0.0
    assert not check_action_equivariance(tf.identity, field, CyclicGridAction(vector, FieldType.trivial(4, 2))).passed
    with pytest.raises(ValueError, match="cannot act exactly on a square grid"):
        CyclicGridAction(FieldType.trivial(3))


def test_scale_action():
    # VN linear maps and the VN leaky ReLU without batch norm are positively homogeneous of degree 1
    run_layer_test(VNLinear, {"channels": 5}, POINTS, group=ScaleAction())
    report = run_layer_test(
        VNLeakyReLU, {"channels": 5, "use_batchnorm": False}, POINTS, group=ScaleAction(scales=(0.25, 4.0))
    ).report
    assert report.group == "scale" and report.num_samples == 2
    with pytest.raises(AssertionError, match="scale equivariance.*Not equivariant"):
        run_layer_test(VNBatchNorm, {}, POINTS, group=ScaleAction())  # the affine map of the norms
    # directions are scale-free: degree 1 -> 0
    x = tf.constant(np.random.default_rng(1).normal(size=(4, 3)))
    unit = lambda v: v / tf.norm(v, axis=-1, keepdims=True)  # noqa: E731
    assert check_action_equivariance(unit, x, ScaleAction(1, 0)).passed
    assert not check_action_equivariance(unit, x, ScaleAction(1, 1)).passed
    with pytest.raises(ValueError, match="positive scales"):
        ScaleAction(scales=(0.0,))


# --------------------------------------------------------------------------- failures say what broke
def test_fails_on_a_non_equivariant_layer():
    with pytest.raises(AssertionError, match=r"run_layer_test\(AbsVNLinear\): SO3 equivariance .*Not equivariant"):
        run_layer_test(AbsVNLinear, {"channels": 5}, POINTS)


def test_fails_when_get_config_drops_an_argument():
    with pytest.raises(
        AssertionError,
        match=r"get_config / from_config round trip: get_config\(\) drops the "
        r"constructor argument\(s\) \['negative_slope'\]",
    ):
        run_layer_test(ForgetfulLeakyReLU, {"channels": 5, "negative_slope": 0.0}, POINTS)


def test_fails_when_the_branch_does_not_reach_the_output():
    with pytest.raises(AssertionError, match="theta = 1 .*does not reach the output"):
        run_layer_test(UnusedBranchVNLinear, {"channels": 5}, POINTS)


def test_fails_when_the_projection_is_not_the_theta_zero_output():
    with pytest.raises(
        AssertionError,
        match=r"project\(\) of a model .*projected model's output and the relaxed "
        r"layer's output at theta = 0: outputs differ",
    ):
        run_layer_test(LeakyBranchVNLinear, {"channels": 5}, POINTS)


def test_group_arguments_are_checked():
    with pytest.raises(ValueError, match="Unknown group 'SE2'"):
        run_layer_test(VNLinear, {"channels": 2}, POINTS, group="SE2", check_relaxed=False, check_serialization=False)
    with pytest.raises(ValueError, match="input_reps / output_reps go with a group name"):
        run_layer_test(
            VNLinear,
            {"channels": 2},
            POINTS,
            group=ScaleAction(),
            input_reps="vector",
            check_relaxed=False,
            check_serialization=False,
        )
    with pytest.raises(ValueError, match="input_shape or input_data"):
        run_layer_test(VNLinear, {"channels": 2})
