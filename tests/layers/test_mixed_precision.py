"""The ``mixed_bfloat16`` policy on relaxed VN layers and models.

The VN maps and branches compute in bfloat16; the branch variables, ``theta``, the batch-norm
statistics and the penalties stay float32; a relaxed VN-PointNet train step runs and its penalties
are float32.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_relaxeq as kr
from keras_relaxeq.layers import VNLeakyReLU, VNLinear, collect_relaxation_penalties
from keras_relaxeq.layers.relaxation import relaxed_layers
from keras_relaxeq.models.vn_pointnet import vn_pointnet
from keras_relaxeq.testing import run_layer_test


@pytest.mark.parametrize("rank", [None, 2])
def test_bf16_layer_computes_in_bf16_with_float32_penalties(rank):
    x = tf.random.stateless_normal([2, 16, 4, 3], seed=[1, 2])
    layers = {}
    for policy in ("float32", "mixed_bfloat16"):
        layer = VNLeakyReLU(5, relaxation_rank=rank, relaxation_initializer="random_normal", dtype=policy)
        layer(x)
        layers[policy] = layer
    layers["mixed_bfloat16"].set_weights(layers["float32"].get_weights())
    mixed = layers["mixed_bfloat16"]
    assert mixed(x).dtype == tf.bfloat16
    for sub in relaxed_layers(mixed):
        assert sub.theta.dtype == "float32"
        assert all(v.dtype == "float32" for v in sub.relaxation_variables)
    assert mixed.batchnorm.batchnorm.moving_mean.dtype == "float32"
    lie, proj = mixed.relaxation_penalties(x)
    assert lie.dtype == tf.float32 and proj.dtype == tf.float32
    lie32, proj32 = layers["float32"].relaxation_penalties(x)
    # the penalties see the bf16-rounded inputs (relative rounding 2^-8 per entry): ~1% on the sums
    np.testing.assert_allclose([float(lie), float(proj)], [float(lie32), float(proj32)], rtol=3e-2)
    # the layer output: bf16 matmuls, relative error of a few 2^-8 against the float32 layer
    y32, y16 = layers["float32"](x).numpy(), mixed(x).numpy().astype(np.float32)
    assert np.linalg.norm(y16 - y32) <= 5e-2 * np.linalg.norm(y32)


@pytest.mark.parametrize(
    "layer_cls, kwargs",
    [
        pytest.param(VNLinear, dict(channels=5), id="vn_linear"),
        pytest.param(VNLeakyReLU, dict(channels=5), id="vn_leaky_relu"),
        pytest.param(VNLeakyReLU, dict(channels=5, relaxation_rank=2), id="vn_leaky_relu_low_rank"),
    ],
)
def test_run_layer_test_mixed_bfloat16(layer_cls, kwargs):
    """bf16 layers through run_layer_test (float32 inputs; bfloat16 tolerances for the equivariance check)."""
    result = run_layer_test(layer_cls, dict(kwargs, dtype="mixed_bfloat16"), (2, 16, 4, 3))
    assert result.layer.compute_dtype == "bfloat16" and result.report.passed
    assert all(sub.theta.dtype == "float32" for sub in relaxed_layers(result.relaxed_layer))


def test_bf16_relaxed_train_step_small_model():
    """A bf16 relaxed train step (dense and low-rank branches, fused and unfused maps) runs; penalties float32."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 4, 3))
    h = VNLeakyReLU(6, relaxation_initializer="random_normal", dtype="mixed_bfloat16", name="full_rank")(inputs)
    h = VNLeakyReLU(
        6, relaxation_rank=2, relaxation_initializer="random_normal", dtype="mixed_bfloat16", name="low_rank"
    )(h)
    logits = keras.layers.Dense(3, dtype="float32")(keras.layers.Flatten(dtype="mixed_bfloat16")(h))
    model = kr.RelaxedModel(inputs, logits)
    x = tf.random.stateless_normal([4, 12, 4, 3], seed=[5, 6])
    with collect_relaxation_penalties() as collector:
        model(x, training=True)
    assert len(collector) == 4 and all(t.dtype == tf.float32 for t in collector.lie + collector.projection)
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        run_eagerly=True,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    logs = model.train_on_batch(x, np.array([0, 1, 2, 0]), return_dict=True)
    assert np.isfinite(logs["loss"]) and logs["lie_penalty"] > 0.0 and logs["projection_penalty"] > 0.0


@pytest.mark.slow
def test_bf16_relaxed_pointnet_step_runs_with_float32_penalties():
    """Rank 2: a low-rank branch in every VN map (all have min(D_in, D_out) > 2 at width 0.1)."""
    rank = 2
    keras.utils.set_random_seed(0)
    model = vn_pointnet(
        width=0.1,
        k=6,
        num_classes=5,
        relaxation_rank=rank,
        relaxation_initializer="random_normal",
        dtype="mixed_bfloat16",
    )
    assert keras.config.dtype_policy().name == "float32"  # the global policy is left as it was
    x = tf.random.stateless_normal([4, 32, 3], seed=[3, 4])
    y = np.array([0, 1, 2, 3])
    with collect_relaxation_penalties() as collector:
        logits = model(x, training=True)
    assert logits.dtype == tf.float32  # the logits layer stays float32
    assert len(collector) == 23
    assert all(t.dtype == tf.float32 for t in collector.lie + collector.projection)
    lie, proj = collector.totals()
    assert np.isfinite(float(lie)) and float(proj) > 0.0
    conv = model.get_layer("conv1")
    assert conv.compute_dtype == "bfloat16" and conv.map_to_feat.theta.dtype == "float32"
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, clipvalue=1.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        run_eagerly=True,
    )
    before = [v.numpy().copy() for v in relaxed_layers(model)[3].relaxation_variables]
    logs = model.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"]) and logs["lie_penalty"] > 0.0 and logs["projection_penalty"] > 0.0
    after = relaxed_layers(model)[3].relaxation_variables
    assert any(np.any(b != a.numpy()) for b, a in zip(before, after))  # the float32 branch variables train
    plain = kr.project(model)
    assert plain.get_layer("conv1").compute_dtype == "bfloat16"
    assert not relaxed_layers(plain)
