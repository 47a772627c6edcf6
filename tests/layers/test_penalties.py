"""The Lie-derivative and projection penalties (docs/method.md section 3).

Checks: closed form == forward-mode JVP == double-backward tape; the Lie term is
zero (to float error) for an equivariant branch and positive otherwise; both
equal an independent float64 NumPy finite-difference estimate of
sum_k ||d/dt rho_out(g_t)^-1 R(rho_in(g_t) x)||^2.
"""

import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf

from keras_relaxeq.groups import so3_generators_numpy
from keras_relaxeq.layers import (
    VNLeakyReLU,
    VNLinear,
    collect_relaxation_penalties,
    safe_sqrt,
)

L = so3_generators_numpy(1)


def make_layer(c_in, c_out, dtype="float32", seed=0, equivariant=False, bias=True, branch="linear"):
    layer = VNLinear(c_out, relaxation_use_bias=bias, relaxation_branch=branch, relaxation_hidden_units=7, dtype=dtype)
    x = tf.random.stateless_normal([2, 10, c_in, 3], seed=[seed, 1], dtype=dtype)
    layer(x)
    rng = np.random.default_rng(seed)
    if equivariant:
        # W = kron(A, I_3) mixes channels only: an equivariant linear map of vector features.
        layer.relaxation_kernel.assign(np.kron(rng.normal(size=(c_in, c_out)), np.eye(3)))
    else:
        layer.relaxation_kernel.assign(rng.normal(size=layer.relaxation_kernel.shape))
    if branch == "mlp":
        layer.relaxation_hidden_kernel.assign(rng.normal(size=layer.relaxation_hidden_kernel.shape))
        layer.relaxation_hidden_bias.assign(rng.normal(size=layer.relaxation_hidden_bias.shape))
    if bias and not equivariant:
        layer.relaxation_bias.assign(rng.normal(size=layer.relaxation_bias.shape))
    return layer, x


def numpy_branch(layer):
    """R(x) on [P, C, 3] vectors, in float64 NumPy, from the layer's weights."""
    w = layer.relaxation_kernel.numpy().astype(np.float64)
    b = layer.relaxation_bias.numpy().astype(np.float64) if layer.relaxation_bias is not None else 0.0
    if layer.relaxation_branch == "mlp":
        w1 = layer.relaxation_hidden_kernel.numpy().astype(np.float64)
        b1 = layer.relaxation_hidden_bias.numpy().astype(np.float64)
        gelu = lambda h: 0.5 * h * (1 + scipy.special.erf(h / np.sqrt(2)))  # noqa: E731

        def branch(v):
            return gelu(v.reshape(len(v), -1) @ w1 + b1) @ w + b
    else:

        def branch(v):
            return v.reshape(len(v), -1) @ w + b

    c_out = w.shape[1] // 3
    return lambda v: branch(v).reshape(len(v), c_out, 3)


def finite_difference_lie(layer, x, eps=1e-4):
    """sum_k sum_p || d/dt g_t^-1 R(g_t x) ||^2 by central differences, float64."""
    r = numpy_branch(layer)
    v = np.asarray(x, np.float64).reshape(-1, x.shape[-2], 3)
    total = 0.0
    for k in range(3):

        def moved(t):
            g = scipy.linalg.expm(t * L[k])
            return r(v @ g.T) @ np.linalg.inv(g).T

        deriv = (moved(eps) - moved(-eps)) / (2 * eps)
        total += np.sum(deriv**2)
    return total


METHODS = ["closed_form", "direct", "jvp", "tape"]


@pytest.mark.parametrize("bias", [True, False])
def test_closed_form_equals_autodiff_float64(bias):
    layer, x = make_layer(3, 4, dtype="float64", bias=bias)
    values = {m: [float(v) for v in layer.branch_penalties(x, method=m)] for m in METHODS}
    for m in ("direct", "jvp", "tape"):
        np.testing.assert_allclose(values[m], values["closed_form"], rtol=1e-10)
    assert values["closed_form"][0] > 1.0 and values["closed_form"][1] > 1.0


def test_closed_form_equals_autodiff_float32():
    layer, x = make_layer(5, 6, dtype="float32", seed=3)
    cf = np.array([float(v) for v in layer.branch_penalties(x, method="closed_form")])
    for m in ("direct", "jvp", "tape"):
        np.testing.assert_allclose([float(v) for v in layer.branch_penalties(x, method=m)], cf, rtol=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_lie_penalty_matches_finite_differences(method):
    layer, x = make_layer(2, 3, dtype="float64", seed=5)
    lie, proj = layer.branch_penalties(x, method=method)
    expected = finite_difference_lie(layer, x.numpy())
    np.testing.assert_allclose(float(lie), expected, rtol=1e-6)
    r = numpy_branch(layer)(x.numpy().reshape(-1, 2, 3))
    np.testing.assert_allclose(float(proj), np.sum(r**2), rtol=1e-10)


@pytest.mark.parametrize("method", ["jvp", "tape"])
def test_nonlinear_branch_matches_finite_differences(method):
    layer, x = make_layer(2, 2, dtype="float64", seed=7, branch="mlp")
    lie, _ = layer.branch_penalties(x, method=method)
    np.testing.assert_allclose(float(lie), finite_difference_lie(layer, x.numpy()), rtol=1e-6)
    with pytest.raises(ValueError, match="closed form"):
        layer.branch_penalties(x, method="closed_form")


@pytest.mark.parametrize("method", METHODS)
def test_lie_penalty_zero_exactly_for_equivariant_branch(method):
    layer, x = make_layer(3, 4, dtype="float32", seed=2, equivariant=True)
    lie, proj = layer.branch_penalties(x, method=method)
    # Zero up to float32 rounding relative to the scale of the branch output.
    assert float(lie) <= 1e-9 * float(proj)
    assert float(proj) > 1.0
    # A bias breaks equivariance (vector outputs cannot carry a constant offset).
    layer.relaxation_bias.assign(np.ones(layer.relaxation_bias.shape))
    lie_b, _ = layer.branch_penalties(x, method=method)
    assert float(lie_b) > 1.0


def test_lie_penalty_positive_for_generic_branch_and_zero_for_zero_branch():
    layer, x = make_layer(3, 3, seed=4)
    lie, _ = layer.branch_penalties(x)
    assert float(lie) > 1.0
    layer.relaxation_kernel.assign(tf.zeros_like(layer.relaxation_kernel))
    layer.relaxation_bias.assign(tf.zeros_like(layer.relaxation_bias))
    lie, proj = layer.branch_penalties(x)
    assert float(lie) == 0.0 and float(proj) == 0.0


def test_penalty_gradient_trains_branch_only():
    layer, x = make_layer(3, 3, seed=6)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        lie, proj = layer.branch_penalties(x)
        total = lie + proj
    assert tape.gradient(total, x) is None  # computed on stop_gradient(x)
    assert tape.gradient(total, layer.kernel) is None
    grad_w = tape.gradient(total, layer.relaxation_kernel)
    assert grad_w is not None and float(tf.reduce_max(tf.abs(grad_w))) > 0


def test_composite_layer_sums_sublayer_penalties_with_shared_gram():
    layer = VNLeakyReLU(4, relaxation_initializer="random_normal")
    x = tf.random.stateless_normal([2, 12, 3, 3], seed=[1, 2])
    layer(x)
    lie, proj = layer.relaxation_penalties(x)
    parts = [layer.map_to_feat.branch_penalties(x), layer.map_to_dir.branch_penalties(x)]
    np.testing.assert_allclose(float(lie), sum(float(p[0]) for p in parts), rtol=1e-5)
    np.testing.assert_allclose(float(proj), sum(float(p[1]) for p in parts), rtol=1e-5)
    with collect_relaxation_penalties() as collector:
        layer(x)
    assert len(collector) == 2
    assert len(collector._gram_cache) == 1  # both maps read the same input: one Gram matrix


def test_no_penalties_outside_a_collector():
    layer, x = make_layer(2, 2)
    with collect_relaxation_penalties() as outer:
        layer(x)
        with collect_relaxation_penalties() as inner:
            layer(x)
    assert len(inner) == 1 and len(outer) == 2  # nested collectors report upward
    layer(x)  # no active collector: nothing recorded, nothing fails


def test_safe_sqrt_value_and_finite_gradient_at_zero():
    x = tf.constant([0.0, 4.0])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = safe_sqrt(x)
    g = tape.gradient(y, x).numpy()
    np.testing.assert_allclose(y.numpy(), [0.0, 2.0])
    assert np.all(np.isfinite(g)) and abs(g[1] - 0.25) < 1e-6


def test_auto_method_uses_direct_evaluation_for_pooled_features():
    layer, x = make_layer(3, 2, dtype="float64", seed=8)
    assert layer.resolved_lie_method(x) == "closed_form"  # [batch, points, C, 3]: Gram matrix
    pooled = x[:, 0]  # [batch, C, 3]: fewer rows than input features
    assert layer.resolved_lie_method(pooled) == "direct"
    np.testing.assert_allclose(
        [float(v) for v in layer.branch_penalties(pooled)],
        [float(v) for v in layer.branch_penalties(pooled, method="jvp")],
        rtol=1e-10,
    )
