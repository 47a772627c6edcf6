"""Fusion of the dense relaxation branches with their VN maps (``fused_vn_maps``).

The fused layers (one matmul with ``kron(K, I_3) + theta W``; for ``concat_mean`` the mean's rows apart and
the Gram statistics from the blocks) must give the outputs, penalties and gradients of the unfused
formulation (``E(x)`` and ``theta R(x)`` computed apart, ``set_branch_fusion(False)``), in float64 to 1e-10.
"""

import functools

import numpy as np
import pytest
import tensorflow as tf

from keras_relaxeq.layers import VNLeakyReLU, VNLinear, VNMaxPool, collect_relaxation_penalties
from keras_relaxeq.layers.base import gram_statistics
from keras_relaxeq.layers.vector_neurons import (
    can_fuse_branches,
    concat_mean_features,
    concat_mean_gram_statistics,
    set_branch_fusion,
    vn_kernel_as_dense,
)
from keras_relaxeq.testing import run_layer_test

# name -> (layer class, constructor arguments, input shape)
SPECS = {
    "linear_points": (VNLinear, dict(channels=5), [2, 7, 4, 3]),
    "linear_pooled": (VNLinear, dict(channels=5), [3, 4, 3]),
    "lrelu": (VNLeakyReLU, dict(channels=5, negative_slope=0.2), [2, 7, 4, 3]),
    "lrelu_neighbours": (VNLeakyReLU, dict(channels=5, negative_slope=0.0), [2, 6, 3, 4, 3]),
    "lrelu_concat_mean": (VNLeakyReLU, dict(channels=5, concat_mean=True), [2, 7, 4, 3]),
    "lrelu_shared": (VNLeakyReLU, dict(channels=5, share_nonlinearity=True), [2, 7, 4, 3]),
    "maxpool": (VNMaxPool, {}, [2, 7, 4, 3]),
}
# name -> (float64 layer factory, input shape)
CASES = {
    name: (functools.partial(cls, dtype="float64", **kwargs), shape) for name, (cls, kwargs, shape) in SPECS.items()
}


def run(layer, x, fused):
    """Outputs, (LD, N) and the gradients of a scalar of the outputs + penalties w.r.t. all weights."""
    previous = set_branch_fusion(fused)
    try:
        with tf.GradientTape() as tape:
            with collect_relaxation_penalties() as collector:
                y = layer(x, training=True)
            lie, proj = collector.totals(tf.float64)
            loss = tf.reduce_sum(tf.sin(y)) + 1e-3 * (lie + proj)
        grads = tape.gradient(loss, layer.trainable_weights)
    finally:
        set_branch_fusion(previous)
    return y.numpy(), [float(lie), float(proj)], [None if g is None else g.numpy() for g in grads], len(collector)


@pytest.mark.parametrize("name", sorted(CASES))
def test_fused_equals_unfused(name):
    factory, shape = CASES[name]
    x = tf.random.stateless_normal(shape, seed=[1, 2], dtype="float64")
    layer = factory()
    layer(x)
    rng = np.random.default_rng(0)
    for w in layer.weights:
        if "relaxation" in w.path:
            w.assign(0.3 * rng.normal(size=w.shape))
        elif "theta" in w.path:
            w.assign(0.7)
    fused, unfused = run(layer, x, True), run(layer, x, False)
    np.testing.assert_allclose(fused[0], unfused[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fused[1], unfused[1], rtol=1e-10)
    assert fused[3] == unfused[3] > 0
    assert fused[1][0] > 0.0
    for g_f, g_u in zip(fused[2], unfused[2]):
        assert (g_f is None) == (g_u is None)  # VNMaxPool's direction map: argmax only, no gradient
        if g_f is not None:
            np.testing.assert_allclose(g_f, g_u, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_run_layer_test_fused_and_unfused(name, fused):
    """Both formulations through run_layer_test (float64): round trips, relaxed -> project == theta = 0, SO(3)."""
    cls, kwargs, shape = SPECS[name]
    previous = set_branch_fusion(fused)
    try:
        run_layer_test(cls, dict(kwargs, dtype="float64"), tuple(shape), negative_control=True)
    finally:
        set_branch_fusion(previous)


def test_fusion_used_only_for_dense_relaxed_maps():
    x = tf.zeros([1, 4, 3, 3])
    dense, low, plain = VNLinear(4), VNLinear(4, relaxation_rank=2), VNLinear(4, relaxed=False)
    for layer in (dense, low, plain):
        layer(x)
    assert can_fuse_branches([dense], x)
    assert not can_fuse_branches([low], x) and not can_fuse_branches([plain], x)
    with collect_relaxation_penalties(record_activations=True):
        assert not can_fuse_branches([dense], x)  # the activation report needs E(x) and R(x) apart
    previous = set_branch_fusion(False)
    assert not can_fuse_branches([dense], x)
    set_branch_fusion(previous)


def test_vn_kernel_as_dense_is_the_vn_linear_map():
    rng = np.random.default_rng(3)
    k = rng.normal(size=(4, 5))
    x = rng.normal(size=(6, 4, 3))
    dense = vn_kernel_as_dense(tf.constant(k)).numpy()
    np.testing.assert_allclose(x.reshape(6, 12) @ dense, np.einsum("pci,cd->pdi", x, k).reshape(6, 15), rtol=1e-12)


def test_concat_mean_gram_equals_gram_of_concatenated_rows():
    x = tf.random.stateless_normal([3, 7, 4, 3], seed=[4, 5], dtype="float64")
    mean = tf.reduce_mean(x, axis=-3, keepdims=True)
    full = tf.reshape(concat_mean_features(x, mean), [-1, 24])
    expected = gram_statistics(full)
    got = concat_mean_gram_statistics(tf.reshape(x, [-1, 12]), tf.reshape(mean, [-1, 12]), 7)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12)
