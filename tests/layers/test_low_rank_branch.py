"""The low-rank relaxation branch ``relaxation_rank=r`` (``W = U V`` stored as its two factors).

Checks: the closed form and the direct evaluation through the factors == forward-mode JVP ==
double-backward tape == an independent float64 NumPy computation (dense ``W = U V``, explicit
Kronecker generators, the Lie derivative summed over points); penalties 0 when ``U`` or ``V`` is 0
and the Lie term 0 for an equivariant low-rank ``W``; the layer's output and gradients equal the
dense branch with ``W = U V``; ``relaxation_rank=None`` keeps the dense kernel; the config round
trip; projection drops both factors.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_relaxeq as kr
from keras_relaxeq.groups import so3_generators_numpy
from keras_relaxeq.layers import VNLeakyReLU, VNLinear, collect_relaxation_penalties
from keras_relaxeq.layers.base import gram_statistics, low_rank_branch_penalties
from keras_relaxeq.layers.relaxation import relaxed_layers
from keras_relaxeq.testing import run_layer_test

L = so3_generators_numpy(1)
METHODS = ["closed_form", "direct", "jvp", "tape"]


def make_layer(c_in, c_out, rank, dtype="float64", seed=0, bias=True, points=10):
    layer = VNLinear(c_out, relaxation_rank=rank, relaxation_use_bias=bias, dtype=dtype)
    x = tf.random.stateless_normal([2, points, c_in, 3], seed=[seed, 1], dtype=dtype)
    layer(x)
    rng = np.random.default_rng(seed)
    for v in layer.relaxation_variables:
        v.assign(rng.normal(size=v.shape))
    return layer, x


def numpy_penalties(layer, x):
    """``(LD, N)`` in float64 NumPy: ``W = U V`` dense, generators ``kron(I_C, L_k)``, sums over points."""
    u = layer.relaxation_kernel_u.numpy().astype(np.float64)
    v = layer.relaxation_kernel_v.numpy().astype(np.float64)
    w = u @ v
    b = layer.relaxation_bias.numpy().astype(np.float64) if layer.relaxation_bias is not None else np.zeros(w.shape[1])
    c_in, c_out = w.shape[0] // 3, w.shape[1] // 3
    rows = np.asarray(x, np.float64).reshape(-1, 3 * c_in)
    r = rows @ w + b
    lie = 0.0
    for gen in L:
        g_in, g_out = np.kron(np.eye(c_in), gen), np.kron(np.eye(c_out), gen)
        # L_k R(x) = J_R(x) (G_in x) - G_out R(x), in row vectors: (x G_in^T) W - R(x) G_out^T
        lie += np.sum(((rows @ g_in.T) @ w - r @ g_out.T) ** 2)
    return lie, np.sum(r**2)


@pytest.mark.parametrize("bias", [True, False])
def test_low_rank_penalties_all_methods_equal_numpy_float64(bias):
    layer, x = make_layer(4, 5, rank=2, bias=bias)
    assert layer.relaxation_low_rank and layer.relaxation_kernel is None
    expected = numpy_penalties(layer, x.numpy())
    assert expected[0] > 1.0 and expected[1] > 1.0
    for method in METHODS:
        np.testing.assert_allclose(
            [float(v) for v in layer.branch_penalties(x, method=method)], expected, rtol=1e-10, err_msg=method
        )


def test_low_rank_penalties_float32():
    layer, x = make_layer(6, 7, rank=3, dtype="float32", seed=3)
    expected = numpy_penalties(layer, x.numpy())
    for method in METHODS:
        # float32 sums of ~10^2 terms of size ~10^2: relative error well below 1e-4
        np.testing.assert_allclose(
            [float(v) for v in layer.branch_penalties(x, method=method)], expected, rtol=1e-4, err_msg=method
        )


@pytest.mark.parametrize("method", ["closed_form", "direct"])
def test_low_rank_penalty_gradients_equal_autodiff_of_the_dense_form(method):
    """Gradients w.r.t. U and V of the factor forms == those of the JVP penalty on the same branch."""
    layer, x = make_layer(4, 5, rank=2, seed=4)
    variables = layer.relaxation_variables
    grads = {}
    for m in (method, "jvp"):
        with tf.GradientTape() as tape:
            lie, proj = layer.branch_penalties(x, method=m)
            total = lie + 0.3 * proj
        grads[m] = [g.numpy() for g in tape.gradient(total, variables)]
    for g, g_ref in zip(grads[method], grads["jvp"]):
        np.testing.assert_allclose(g, g_ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("zero", ["relaxation_kernel_u", "relaxation_kernel_v"])
@pytest.mark.parametrize("method", METHODS)
def test_penalties_zero_when_a_factor_is_zero(zero, method):
    layer, x = make_layer(4, 5, rank=2, seed=5, bias=False)
    getattr(layer, zero).assign(tf.zeros_like(getattr(layer, zero)))
    lie, proj = layer.branch_penalties(x, method=method)
    assert float(lie) == 0.0 and float(proj) == 0.0


@pytest.mark.parametrize("method", METHODS)
def test_lie_penalty_zero_for_equivariant_low_rank_kernel(method):
    """``W = kron(a b^T, I_3) = (kron(a, I_3)) (kron(b^T, I_3))``: rank 3, equivariant."""
    layer, x = make_layer(4, 5, rank=3, dtype="float32", seed=6, bias=False)
    rng = np.random.default_rng(6)
    layer.relaxation_kernel_u.assign(np.kron(rng.normal(size=(4, 1)), np.eye(3)))
    layer.relaxation_kernel_v.assign(np.kron(rng.normal(size=(1, 5)), np.eye(3)))
    lie, proj = layer.branch_penalties(x, method=method)
    assert float(proj) > 1.0
    assert float(lie) <= 1e-9 * float(proj)  # zero up to float32 rounding against the branch's scale


def test_low_rank_closed_form_near_equivariance_float32():
    """Near an equivariant W the factor closed form keeps float32 accuracy (no cancellation)."""
    rng = np.random.default_rng(7)
    c_in, c_out, eps = 6, 5, 1e-4
    u = np.kron(rng.normal(size=(c_in, 2)), np.eye(3)) + eps * rng.normal(size=(3 * c_in, 6))
    v = np.kron(rng.normal(size=(2, c_out)), np.eye(3))
    x = rng.normal(size=(200, 3 * c_in))
    layer, _ = make_layer(c_in, c_out, rank=6, dtype="float32", bias=False)
    layer.relaxation_kernel_u.assign(u)
    layer.relaxation_kernel_v.assign(v)
    x32 = tf.constant(x.reshape(1, 200, c_in, 3), tf.float32)
    expected = numpy_penalties(layer, x32.numpy())[0]  # float64, from the float32-rounded weights
    lie, _ = low_rank_branch_penalties(
        layer.relaxation_kernel_u,
        layer.relaxation_kernel_v,
        None,
        gram_statistics(tf.reshape(x32, [200, -1])),
        layer.input_rep,
        layer.output_rep,
    )
    # the penalty is ~1e-8 of ||W||^2 ||S||; float32 Gram matrix rounding allows ~1e-2 relative error
    np.testing.assert_allclose(float(lie), expected, rtol=2e-2)


def test_low_rank_layer_equals_dense_branch_with_the_product():
    """Outputs and input/kernel gradients of the relaxed layer equal the dense branch with W = U V."""
    low, x = make_layer(4, 5, rank=2, seed=8)
    dense = VNLinear(5, dtype="float64")
    dense(x)
    dense.kernel.assign(low.kernel)
    dense.relaxation_kernel.assign(low.relaxation_kernel_value())
    dense.relaxation_bias.assign(low.relaxation_bias)
    np.testing.assert_allclose(low(x).numpy(), dense(x).numpy(), rtol=1e-12, atol=1e-12)
    grads = []
    for layer in (low, dense):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.reduce_sum(tf.sin(layer(x)))
        grads.append(tape.gradient(y, x).numpy())
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-10, atol=1e-12)


def test_rank_none_and_large_rank_keep_the_dense_kernel():
    x = tf.zeros([1, 4, 3, 3])
    for rank in (None, 9, 20):  # D_in = 9, D_out = 12: rank >= min(D_in, D_out) is no restriction
        layer = VNLinear(4, relaxation_rank=rank)
        layer(x)
        assert not layer.relaxation_low_rank
        assert [v.path.split("/")[-1] for v in layer.relaxation_variables] == ["relaxation_kernel", "relaxation_bias"]
    layer = VNLinear(4, relaxation_rank=2)
    layer(x)
    assert [tuple(v.shape) for v in layer.relaxation_variables] == [(9, 2), (2, 12), (12,)]


def test_zero_initialised_v_gives_zero_branch_and_trains():
    """Default relaxation_initializer zeros: W = U V = 0 at the start, but V gets gradients through U."""
    layer = VNLinear(5, relaxation_rank=2)
    x = tf.random.stateless_normal([2, 8, 4, 3], seed=[9, 1])
    layer(x)
    assert float(tf.reduce_max(tf.abs(layer.relaxation_kernel_value()))) == 0.0
    assert float(tf.reduce_max(tf.abs(layer.relaxation_kernel_u))) > 0.0
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(tf.square(layer(x) - 1.0))
    g_v = tape.gradient(y, layer.relaxation_kernel_v)
    assert float(tf.reduce_max(tf.abs(g_v))) > 0.0


def test_bad_rank_arguments():
    with pytest.raises(ValueError, match="relaxation_rank"):
        VNLinear(3, relaxation_rank=0)
    with pytest.raises(ValueError, match="relaxation_rank"):
        VNLinear(3, relaxation_rank=1.5)
    with pytest.raises(ValueError, match="linear"):
        VNLinear(3, relaxation_rank=2, relaxation_branch="mlp")


def test_config_round_trip_and_composite_layers_pass_the_rank():
    layer = VNLeakyReLU(6, relaxation_rank=3, relaxation_initializer="random_normal")
    x = tf.random.stateless_normal([2, 8, 5, 3], seed=[10, 1])
    y = layer(x)
    assert layer.get_config()["relaxation_rank"] == 3
    assert layer.map_to_feat.relaxation_low_rank and layer.map_to_dir.relaxation_low_rank
    clone = VNLeakyReLU.from_config(layer.get_config())
    clone(x)
    clone.set_weights(layer.get_weights())
    assert clone.map_to_feat.relaxation_rank == 3
    np.testing.assert_allclose(clone(x).numpy(), y.numpy(), rtol=1e-6, atol=1e-6)
    lie, proj = layer.relaxation_penalties(x)
    parts = [layer.map_to_feat.branch_penalties(x, method="jvp"), layer.map_to_dir.branch_penalties(x, method="jvp")]
    np.testing.assert_allclose([float(lie), float(proj)], [sum(float(p[i]) for p in parts) for i in (0, 1)], rtol=1e-4)


def test_projection_drops_both_factors():
    inputs = keras.Input((8, 4, 3))
    outputs = VNLinear(5, relaxation_rank=2, relaxation_initializer="random_normal", name="lin")(inputs)
    model = kr.RelaxedModel(inputs, outputs)
    x = tf.random.stateless_normal([2, 8, 4, 3], seed=[11, 1])
    plain = kr.project(model)
    names = [v.path for v in plain.weights]
    assert not any("relaxation" in n or "theta" in n for n in names), names
    assert plain.count_params() == 4 * 5
    kr.set_theta(model, 0.0)
    np.testing.assert_allclose(plain(x).numpy(), model(x).numpy(), rtol=1e-6, atol=1e-6)
    with collect_relaxation_penalties() as collector:
        plain(x)
    assert len(collector) == 0


@pytest.mark.parametrize(
    "layer_cls, kwargs",
    [
        pytest.param(VNLinear, dict(channels=5, relaxation_rank=2), id="vn_linear"),
        pytest.param(
            VNLeakyReLU, dict(channels=6, relaxation_rank=3, relaxation_initializer="random_normal"), id="vn_leaky_relu"
        ),
    ],
)
def test_run_layer_test_low_rank(layer_cls, kwargs):
    """Low-rank branches through run_layer_test: round trips keep the rank, project drops both factors and
    equals theta = 0, the relaxed layer at theta = 1 is not equivariant."""
    result = run_layer_test(layer_cls, kwargs, (2, 8, 5, 3), negative_control=True)
    branches = relaxed_layers(result.relaxed_layer)
    assert branches and all(sub.relaxation_low_rank for sub in branches)
