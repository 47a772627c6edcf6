"""Vector-neuron layers (docs/method.md sections 2, 6, 10).

Covers VNLinear, VNLeakyReLU, VNBatchNorm, VNMeanPool, VNMaxPool, VNStdFeature,
VNGraphFeature / knn_graph_feature / knn_indices:

1. equivariance (plain layers, relaxed layers at theta = 0 with nonzero branch
   weights) and a negative control (relaxed, theta = 1, random branch: fails);
2. numerical agreement with independent float64 NumPy implementations;
3. ``get_config`` round trip and ``.keras`` save/load (theta survives);
4. weight names and parameter counts of plain vs relaxed layers;
5. errors on bad input;
6. penalties only inside ``collect_relaxation_penalties()``.
"""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_relaxeq.layers import (
    VNBatchNorm,
    VNGraphFeature,
    VNLeakyReLU,
    VNLinear,
    VNMaxPool,
    VNMeanPool,
    VNStdFeature,
    collect_relaxation_penalties,
    get_theta,
    knn_graph_feature,
    knn_indices,
    relaxed_layers,
    set_theta,
)
from keras_relaxeq.layers.base import active_collector
from keras_relaxeq.layers.vector_neurons import concat_mean_features
from keras_relaxeq.testing import assert_equivariant, run_layer_test

VN_EPS = 1e-6  # the epsilon of the VN code (norms, leaky-ReLU denominator)
SHAPE_POINTS = (2, 32, 4, 3)  # [batch, points, channels, 3]
SHAPE_NEIGHBOURS = (2, 8, 6, 4, 3)  # [batch, points, k, channels, 3]
SHAPE_POOLED = (2, 4, 3)  # [batch, channels, 3]
# VNStdFeature maps C -> C/2 -> C/4 -> frame; C/4 >= 2 keeps the two Gram-Schmidt vectors independent
SHAPE_STD = (2, 32, 8, 3)
SHAPE_STD_NEIGHBOURS = (2, 6, 4, 8, 3)


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)


def vectors(shape, seed=0, dtype="float32"):
    return tf.constant(np.random.default_rng(seed).normal(size=shape), dtype=dtype)


def randomize(layer, names, seed=0, scale=1.0):
    """Assign N(0, scale^2) values to every weight of ``layer`` (and sublayers) whose name is in ``names``."""
    rng = np.random.default_rng(seed)
    hits = 0
    for w in layer.weights:
        if w.path.split("/")[-1] in names:
            w.assign(scale * rng.normal(size=tuple(w.shape)))
            hits += 1
    return hits


def randomize_branches(layer, seed=0):
    hits = randomize(layer, ("relaxation_kernel", "relaxation_bias"), seed=seed)
    assert hits > 0, "relaxed layer without branch weights"


def randomize_batchnorm(layer, seed=0):
    """Random gamma/beta and moving stats (variance kept positive) in every BN inside ``layer``."""
    rng = np.random.default_rng(seed)
    for w in layer.weights:
        name = w.path.split("/")[-1]
        if name in ("gamma", "beta", "moving_mean"):
            w.assign(rng.normal(size=tuple(w.shape)))
        elif name == "moving_variance":
            w.assign(rng.uniform(0.5, 2.0, size=tuple(w.shape)))


# --------------------------------------------------------------------------- layer catalogue
# name -> (layer class, constructor arguments, input shapes the layer accepts, has a relaxation branch)
SPECS = {
    "linear": (VNLinear, dict(channels=5), [SHAPE_POINTS, SHAPE_NEIGHBOURS, SHAPE_POOLED], True),
    "lrelu_feat_s02": (
        VNLeakyReLU,
        dict(channels=5, negative_slope=0.2),
        [SHAPE_POINTS, SHAPE_NEIGHBOURS, SHAPE_POOLED],
        True,
    ),
    "lrelu_feat_s0": (VNLeakyReLU, dict(channels=5, negative_slope=0.0), [SHAPE_POINTS, SHAPE_POOLED], True),
    "lrelu_feat_shared": (
        VNLeakyReLU,
        dict(channels=5, negative_slope=0.2, share_nonlinearity=True),
        [SHAPE_POINTS, SHAPE_POOLED],
        True,
    ),
    "lrelu_nofeat_s0": (
        VNLeakyReLU,
        dict(channels=None, negative_slope=0.0),
        [SHAPE_POINTS, SHAPE_NEIGHBOURS, SHAPE_POOLED],
        True,
    ),
    "lrelu_nofeat_shared_s02": (
        VNLeakyReLU,
        dict(channels=None, negative_slope=0.2, share_nonlinearity=True),
        [SHAPE_POINTS, SHAPE_POOLED],
        True,
    ),
    "batchnorm": (VNBatchNorm, {}, [SHAPE_POINTS, SHAPE_NEIGHBOURS], False),
    "meanpool": (VNMeanPool, {}, [SHAPE_POINTS, SHAPE_NEIGHBOURS], False),
    "meanpool_points_keepdims": (VNMeanPool, dict(axis=1, keepdims=True), [SHAPE_NEIGHBOURS], False),
    "maxpool": (VNMaxPool, {}, [SHAPE_POINTS, SHAPE_NEIGHBOURS], True),
    "maxpool_points": (VNMaxPool, dict(axis=1), [SHAPE_NEIGHBOURS], True),
    "std": (VNStdFeature, {}, [SHAPE_STD, SHAPE_STD_NEIGHBOURS], True),
    "std_normalized": (VNStdFeature, dict(normalize_frame=True), [SHAPE_STD, SHAPE_STD_NEIGHBOURS], True),
    "lrelu_concat_mean": (
        VNLeakyReLU,
        dict(channels=5, negative_slope=0.2, concat_mean=True),
        [SHAPE_POINTS, SHAPE_NEIGHBOURS],
        True,
    ),
    "std_concat_mean": (VNStdFeature, dict(concat_mean=True), [SHAPE_POINTS, SHAPE_NEIGHBOURS], True),
    "graph": (VNGraphFeature, dict(k=5), [(2, 16, 4, 3)], False),
    "graph_cross": (VNGraphFeature, dict(k=5, cross=True), [(2, 16, 4, 3)], False),
}
# name -> (factory(**relaxation kwargs), input shapes the layer accepts, has a relaxation branch)
CASES = {
    name: (functools.partial(cls, **kwargs), shapes, branch) for name, (cls, kwargs, shapes, branch) in SPECS.items()
}

EQUIVARIANCE_PARAMS = [
    pytest.param(name, shape, relaxed, id=f"{name}-{'x'.join(map(str, shape))}-{'relaxed' if relaxed else 'plain'}")
    for name, (_, shapes, branch) in CASES.items()
    for i, shape in enumerate(shapes)
    for relaxed in ((False, True) if branch and i == 0 else (False,))
]
BRANCH_CASES = [name for name, (_, _, branch) in CASES.items() if branch]
# one configuration of each layer class (and of each VNLeakyReLU / VNStdFeature mode)
REPRESENTATIVE = [
    "linear",
    "lrelu_feat_s02",
    "lrelu_nofeat_shared_s02",
    "batchnorm",
    "meanpool",
    "maxpool",
    "std_normalized",
    "graph_cross",
]


def built(name, shape, seed=0, **kw):
    layer = CASES[name][0](**kw)
    x = vectors(shape, seed=seed)
    layer(x)
    return layer, x


# --------------------------------------------------------------------------- 1. equivariance
@pytest.mark.parametrize("name, shape, relaxed", EQUIVARIANCE_PARAMS)
def test_equivariant(name, shape, relaxed):
    layer, x = built(name, shape, relaxed=relaxed)
    randomize_batchnorm(layer, seed=1)
    if relaxed:
        randomize_branches(layer, seed=2)
        assert set_theta(layer, 0.0) > 0
    report = assert_equivariant(layer, x, num_samples=2)
    assert report.scale > 1e-2  # outputs are not trivially zero


# cases whose relaxed layer at theta = 1 with a random branch is observably not equivariant
NEGATIVE_CONTROL = [n for n in BRANCH_CASES if n not in ("lrelu_nofeat_s0", "maxpool_points")]


@pytest.mark.parametrize(
    "name, shape",
    [
        pytest.param(name, shape, id=f"{name}-{'x'.join(map(str, shape))}")
        for name, (_, _, shapes, _) in SPECS.items()
        for shape in shapes[:1]
    ],
)
def test_run_layer_test(name, shape):
    """Build, call, config / serialization / .keras round trips, relaxed -> project == theta = 0 == plain,
    zero penalties of an equivariant branch, SO(3) equivariance (and the negative control)."""
    cls, kwargs, _, branch = SPECS[name]
    result = run_layer_test(cls, kwargs, shape, negative_control=name in NEGATIVE_CONTROL)
    assert (result.projected_model is not None) == branch
    assert result.report.passed and result.report.scale > 1e-2


@pytest.mark.parametrize("training", [False, True])
def test_batchnorm_equivariant_in_both_modes(training):
    layer, x = built("batchnorm", SHAPE_POINTS)
    randomize_batchnorm(layer, seed=3)
    assert_equivariant(layer, x, num_samples=2, training=training)


@pytest.mark.parametrize("name", NEGATIVE_CONTROL)
def test_negative_control_relaxed_theta_one_is_not_equivariant(name):
    shape = CASES[name][1][0]
    layer, x = built(name, shape, relaxed=True)
    randomize_branches(layer, seed=4)
    assert set_theta(layer, 1.0) > 0
    with pytest.raises(AssertionError, match="Not equivariant"):
        assert_equivariant(layer, x, num_samples=2)
    set_theta(layer, 0.0)  # same weights, branch switched off: equivariant again
    assert_equivariant(layer, x, num_samples=1)


def test_negative_control_pooled_vnlinear():
    layer, x = built("linear", SHAPE_POOLED, relaxed=True)
    randomize_branches(layer, seed=5)
    set_theta(layer, 1.0)
    with pytest.raises(AssertionError, match="Not equivariant"):
        assert_equivariant(layer, x, num_samples=2)


def test_declared_representations():
    layer, _ = built("std", SHAPE_STD, relaxed=False)
    assert layer.input_rep.feature_shape == (8, 3)
    x_rep, z_rep = layer.output_rep
    assert x_rep.is_trivial and x_rep.feature_shape == (8, 3)
    assert not z_rep.is_trivial and z_rep.feature_shape == (3, 3)
    lin, _ = built("linear", SHAPE_NEIGHBOURS)
    assert (lin.input_rep.feature_shape, lin.output_rep.feature_shape) == ((4, 3), (5, 3))
    graph, _ = built("graph_cross", (2, 16, 4, 3))
    assert graph.output_rep.feature_shape == (12, 3)


# --------------------------------------------------------------------------- 2. numerics vs NumPy (float64)
def np_vnlinear(x, w):
    """out[..., d, i] = sum_c W[c, d] x[..., c, i]."""
    return np.einsum("...ci,cd->...di", x, w)


def np_vn_batchnorm(x, gamma, beta, mean, var, eps):
    norm = np.linalg.norm(x, axis=-1) + VN_EPS
    norm_bn = gamma * (norm - mean) / np.sqrt(var + eps) + beta
    return x * (norm_bn / norm)[..., None]


def np_leaky(p, d, slope):
    dot = np.sum(p * d, axis=-1, keepdims=True)
    d_sq = np.sum(d * d, axis=-1, keepdims=True)
    neg = (dot < 0).astype(np.float64)
    return p - (1.0 - slope) * neg * dot / (d_sq + VN_EPS) * d


def np_branch(layer, x):
    """theta * R(x) of a relaxed VNLinear, flattened channel-major per point (c * 3 + i)."""
    c_out = layer.relaxation_kernel.shape[1] // 3
    flat = x.reshape(-1, x.shape[-2] * 3)
    r = flat @ f64(layer.relaxation_kernel) + f64(layer.relaxation_bias)
    return f64(layer.theta) * r.reshape(x.shape[:-2] + (c_out, 3))


def f64(v):
    return np.asarray(keras.ops.convert_to_numpy(v), dtype=np.float64)


def np_linear_layer(layer, x):
    out = np_vnlinear(x, f64(layer.kernel))
    if layer.relaxed:
        out = out + np_branch(layer, x)
    return out


def close(actual, expected, atol=2e-5, rtol=2e-5):
    np.testing.assert_allclose(f64(actual), expected, atol=atol, rtol=rtol)


@pytest.mark.parametrize("shape", [SHAPE_POINTS, SHAPE_POOLED])
def test_vnlinear_mixes_channels(shape):
    layer, x = built("linear", shape, relaxed=False)
    close(layer(x), np_vnlinear(f64(x), f64(layer.kernel)))


def test_relaxed_vnlinear_adds_theta_times_dense_branch():
    layer, x = built("linear", SHAPE_POINTS, relaxed=True)
    randomize_branches(layer, seed=6)
    set_theta(layer, 0.37)
    out = layer(x)
    close(out, np_linear_layer(layer, f64(x)), atol=1e-4, rtol=1e-4)
    # and the branch contributes: the relaxed output differs from W-mixing alone
    assert np.abs(f64(out) - np_vnlinear(f64(x), f64(layer.kernel))).max() > 1e-2


@pytest.mark.parametrize(
    "channels, share, slope, use_bn",
    [
        (5, False, 0.2, True),
        (5, False, 0.0, False),
        (5, True, 0.2, False),
        (None, False, 0.0, False),
        (None, True, 0.2, False),
    ],
)
def test_vn_leaky_relu_formula(channels, share, slope, use_bn):
    layer = VNLeakyReLU(channels, negative_slope=slope, share_nonlinearity=share, use_batchnorm=use_bn, relaxed=False)
    x = vectors(SHAPE_POINTS, seed=7)
    layer(x)
    randomize_batchnorm(layer, seed=8)
    xn = f64(x)
    p = xn if channels is None else np_vnlinear(xn, f64(layer.map_to_feat.kernel))
    if use_bn:
        bn = layer.batchnorm.batchnorm
        p = np_vn_batchnorm(p, f64(bn.gamma), f64(bn.beta), f64(bn.moving_mean), f64(bn.moving_variance), bn.epsilon)
    d = np_vnlinear(xn, f64(layer.map_to_dir.kernel))
    assert d.shape[-2] == (1 if share else p.shape[-2])
    expected = np_leaky(p, d, slope)
    # both branches of the nonlinearity are exercised
    dot = np.sum(p * d, axis=-1)
    assert (dot < 0).any() and (dot > 0).any()
    close(layer(x, training=False), expected, atol=1e-4, rtol=1e-4)


def test_relaxed_vn_leaky_relu_formula_with_branches():
    layer = VNLeakyReLU(5, negative_slope=0.2, use_batchnorm=False, relaxed=True)
    x = vectors(SHAPE_POINTS, seed=9)
    layer(x)
    randomize_branches(layer, seed=10)
    set_theta(layer, 0.37)
    xn = f64(x)
    expected = np_leaky(np_linear_layer(layer.map_to_feat, xn), np_linear_layer(layer.map_to_dir, xn), 0.2)
    close(layer(x), expected, atol=1e-4, rtol=1e-4)


def test_vn_batchnorm_inference_keeps_directions():
    layer, x = built("batchnorm", SHAPE_NEIGHBOURS)
    randomize_batchnorm(layer, seed=11)
    out = f64(layer(x, training=False))
    bn = layer.batchnorm
    xn = f64(x)
    expected = np_vn_batchnorm(
        xn, f64(bn.gamma), f64(bn.beta), f64(bn.moving_mean), f64(bn.moving_variance), bn.epsilon
    )
    close(out, expected, atol=1e-4, rtol=1e-4)
    # direction kept (up to the sign of the normalised norm): out is parallel to x
    np.testing.assert_allclose(np.cross(out, xn), 0.0, atol=1e-4)
    # the norm went through the BN affine map with the moving statistics
    signed_norm = np.sum(out * xn, axis=-1) / np.linalg.norm(xn, axis=-1)
    norm = np.linalg.norm(xn, axis=-1) + VN_EPS
    mapped = f64(bn.gamma) * (norm - f64(bn.moving_mean)) / np.sqrt(f64(bn.moving_variance) + bn.epsilon) + f64(bn.beta)
    np.testing.assert_allclose(signed_norm, mapped, atol=1e-4, rtol=1e-4)


def test_vn_batchnorm_training_uses_batch_statistics_of_norms():
    layer, x = built("batchnorm", SHAPE_POINTS)
    out = f64(layer(x, training=True))
    xn = f64(x)
    norm = np.linalg.norm(xn, axis=-1) + VN_EPS  # [B, N, C]
    mean = norm.mean(axis=(0, 1))
    var = norm.var(axis=(0, 1))
    expected = xn * ((norm - mean) / np.sqrt(var + layer.epsilon) / norm)[..., None]
    close(out, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "shape, axis, keepdims",
    [
        (SHAPE_POINTS, -3, False),
        (SHAPE_NEIGHBOURS, -3, False),
        (SHAPE_NEIGHBOURS, 1, True),
    ],
)
def test_vn_mean_pool(shape, axis, keepdims):
    layer = VNMeanPool(axis=axis, keepdims=keepdims)
    x = vectors(shape, seed=12)
    out = layer(x)
    expected = f64(x).mean(axis=axis, keepdims=keepdims)
    assert tuple(out.shape) == expected.shape == tuple(layer.compute_output_shape(shape))
    close(out, expected)


@pytest.mark.parametrize(
    "shape, axis, relaxed",
    [
        (SHAPE_POINTS, -3, False),
        (SHAPE_NEIGHBOURS, -3, False),
        (SHAPE_NEIGHBOURS, 1, False),
        (SHAPE_POINTS, -3, True),
    ],
)
def test_vn_max_pool_picks_largest_projection(shape, axis, relaxed):
    layer = VNMaxPool(axis=axis, relaxed=relaxed)
    x = vectors(shape, seed=13)
    layer(x)
    xn = f64(x)
    if relaxed:
        randomize_branches(layer, seed=14)
        set_theta(layer, 0.37)
    d = np_linear_layer(layer.map_to_dir, xn)
    dot = np.sum(xn * d, axis=-1)  # [..., n, ..., C]
    ax = axis % xn.ndim  # the pooled axis, counted from the front (same in x and in dot)
    idx = np.expand_dims(np.argmax(dot, axis=ax), ax)  # per channel
    expected = np.squeeze(np.take_along_axis(xn, idx[..., None], axis=ax), axis=ax)
    out = layer(x)
    assert tuple(out.shape) == expected.shape
    close(out, expected, atol=1e-6, rtol=1e-6)
    # the selection is not trivial: not every channel picks the same point
    assert len(np.unique(idx)) > 1


def distinct_distance_points(batch, n, channels, seed):
    """Random vector features whose pairwise feature distances are well separated per point."""
    rng = np.random.default_rng(seed)
    for _ in range(100):
        x = rng.normal(size=(batch, n, channels, 3))
        flat = x.reshape(batch, n, -1)
        dist = np.linalg.norm(flat[:, :, None] - flat[:, None, :], axis=-1)
        gaps = np.diff(np.sort(dist, axis=-1), axis=-1)
        if gaps.min() > 1e-3:
            return x
    raise AssertionError("no well-separated draw")  # pragma: no cover


def np_knn(x, k):
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    dist = np.linalg.norm(flat[:, :, None] - flat[:, None, :], axis=-1)
    return np.argsort(dist, axis=-1)[:, :, :k]


@pytest.mark.parametrize("cross", [False, True])
def test_knn_graph_feature_matches_brute_force(cross):
    k = 4
    xn = distinct_distance_points(2, 10, 2, seed=15)
    idx = np_knn(xn, k)
    assert (idx[:, :, 0] == np.arange(10)).all()  # self is the nearest
    np.testing.assert_array_equal(knn_indices(tf.constant(xn.reshape(2, 10, -1), tf.float32), k).numpy(), idx)

    nb = np.stack([xn[b][idx[b]] for b in range(2)])  # [B, N, k, C, 3]
    centre = np.broadcast_to(xn[:, :, None], nb.shape)
    parts = [nb - centre, centre] + ([np.cross(nb, centre)] if cross else [])
    expected = np.concatenate(parts, axis=-2)
    x = tf.constant(xn, tf.float32)
    out = knn_graph_feature(x, k, cross=cross)
    assert tuple(out.shape) == (2, 10, k, (3 if cross else 2) * 2, 3)
    close(out, expected)
    layer = VNGraphFeature(k=k, cross=cross)
    out_layer = layer(x)
    assert tuple(out_layer.shape) == tuple(layer.compute_output_shape(x.shape))
    close(out_layer, expected)
    # precomputed indices give the same features
    close(knn_graph_feature(x, k, cross=cross, indices=tf.constant(idx, tf.int32)), expected)


@pytest.mark.parametrize("normalize_frame", [False, True])
def test_vn_std_feature_projects_onto_frame(normalize_frame):
    layer, x = built("std", SHAPE_STD, normalize_frame=normalize_frame, relaxed=False)
    randomize_batchnorm(layer, seed=16)
    x_std, z = layer(x, training=False)
    x_std, z, xn = f64(x_std), f64(z), f64(x)
    assert x_std.shape == SHAPE_STD and z.shape == SHAPE_STD[:2] + (3, 3)
    # x_std[..., c, k] = <x_c, z_k>
    close(x_std, np.einsum("...cj,...kj->...ck", xn, z), atol=1e-4, rtol=1e-4)
    raw = f64(layer.vn_lin(layer.vn2(layer.vn1(x, training=False), training=False)))
    if not normalize_frame:
        assert raw.shape[-2] == 3
        close(z, raw, atol=1e-5, rtol=1e-5)
    else:
        assert raw.shape[-2] == 2
        v1, v2 = raw[..., 0, :], raw[..., 1, :]
        u1 = v1 / np.linalg.norm(v1, axis=-1, keepdims=True)
        v2_perp = v2 - np.sum(v2 * u1, -1, keepdims=True) * u1
        u2 = v2_perp / np.linalg.norm(v2_perp, axis=-1, keepdims=True)
        # single-pass Gram-Schmidt in float32 is only accurate where v1 and v2 are far from
        # zero / parallel; check the frame tightly there (most points)
        ok = (np.linalg.norm(v1, axis=-1) > 0.05) & (
            np.linalg.norm(v2_perp, axis=-1) > 0.05 * np.maximum(np.linalg.norm(v2, axis=-1), 1.0)
        )
        assert ok.mean() > 0.5
        zk = z[ok]
        gram = np.einsum("pki,pli->pkl", zk, zk)
        np.testing.assert_allclose(gram, np.broadcast_to(np.eye(3), gram.shape), atol=1e-4)
        np.testing.assert_allclose(np.linalg.det(zk), 1.0, atol=1e-4)
        # u1 is the normalised first vector, u2 lies in span(v1, v2) on the side of v2, u3 = u1 x u2
        np.testing.assert_allclose(zk[:, 0], u1[ok], atol=1e-4)
        np.testing.assert_allclose(zk[:, 1], u2[ok], atol=1e-4)
        np.testing.assert_allclose(zk[:, 2], np.cross(u1[ok], u2[ok]), atol=1e-4)


# --------------------------------------------------------------------------- 3. serialization
ROUNDTRIP_CASES = [
    pytest.param(
        name,
        CASES[name][1][0],
        relaxed,
        use_bias,
        id=f"{name}-{'relaxed' if relaxed else 'plain'}{'' if use_bias else '-nobias'}",
    )
    for name, relaxed, use_bias in [(n, True, i % 2 == 0) for i, n in enumerate(CASES)]
    + [("linear", False, True), ("lrelu_feat_shared", False, True), ("std", False, True)]
]


def outputs_np(layer, x):
    return [f64(o) for o in tf.nest.flatten(layer(x, training=False))]


@pytest.mark.parametrize("name, shape, relaxed, use_bias", ROUNDTRIP_CASES)
def test_get_config_round_trip(name, shape, relaxed, use_bias):
    layer, x = built(name, shape, relaxed=relaxed, relaxation_use_bias=use_bias)
    randomize_batchnorm(layer, seed=17)
    if relaxed and CASES[name][2]:
        randomize_branches(layer, seed=18)
        set_theta(layer, 0.37)
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    clone(x)
    weights = layer.get_weights()
    assert [w.shape for w in clone.get_weights()] == [w.shape for w in weights]
    clone.set_weights(weights)
    for a, b in zip(outputs_np(clone, x), outputs_np(layer, x)):
        np.testing.assert_array_equal(a, b)


SAVE_CASES = [
    pytest.param(name, CASES[name][1][0], id=name)
    for name in (
        "linear",
        "lrelu_feat_s02",
        "lrelu_nofeat_s0",
        "batchnorm",
        "meanpool",
        "maxpool",
        "std_normalized",
        "graph_cross",
    )
]


@pytest.mark.parametrize("name, shape", SAVE_CASES)
def test_keras_file_round_trip_keeps_theta(name, shape, tmp_path):
    layer = CASES[name][0](relaxed=True)
    inputs = keras.Input(shape=shape[1:])
    model = keras.Model(inputs, layer(inputs))
    x = vectors(shape, seed=19)
    randomize_batchnorm(model, seed=20)
    has_branch = CASES[name][2]
    if has_branch:
        randomize_branches(model, seed=21)
        assert set_theta(model, 0.37) > 0
    expected = [f64(o) for o in tf.nest.flatten(model(x, training=False))]
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    got = [f64(o) for o in tf.nest.flatten(loaded(x, training=False))]
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert type(loaded.layers[-1]) is type(layer)
    assert len(relaxed_layers(loaded)) == len(relaxed_layers(model))
    if has_branch:
        assert get_theta(loaded) == pytest.approx(0.37)
        for sub in relaxed_layers(loaded):
            assert float(sub.theta.numpy()) == pytest.approx(0.37)
    else:
        assert get_theta(loaded) is None


# --------------------------------------------------------------------------- 4. weights and parameter counts
def weight_names(layer):
    return [w.path.split("/")[-1] for w in layer.weights]


@pytest.mark.parametrize(
    "name, relaxed", [(n, False) for n in REPRESENTATIVE] + [(n, True) for n in REPRESENTATIVE if not CASES[n][2]]
)
def test_no_branch_and_no_theta(name, relaxed):
    """relaxed=False layers, and relaxed layers without a linear map of their own, carry no branch."""
    layer, _ = built(name, CASES[name][1][0], relaxed=relaxed)
    names = weight_names(layer)
    assert not [n for n in names if n.startswith("relaxation") or n == "theta"]
    assert relaxed_layers(layer) == [] and get_theta(layer) is None


@pytest.mark.parametrize(
    "name, use_bias",
    [(n, True) for n in REPRESENTATIVE if CASES[n][2]]
    + [("linear", False), ("lrelu_nofeat_s0", False), ("std", False)],
)
def test_relaxed_layers_have_branch_and_frozen_theta(name, use_bias):
    layer, _ = built(name, CASES[name][1][0], relaxed=True, relaxation_use_bias=use_bias)
    branches = relaxed_layers(layer)
    assert branches and all(isinstance(b, VNLinear) for b in branches)
    for sub in branches:
        own = {w.path.split("/")[-1]: w for w in sub.weights}
        assert "relaxation_kernel" in own and own["relaxation_kernel"].trainable
        assert ("relaxation_bias" in own) == use_bias
        assert "theta" in own and not own["theta"].trainable
        assert own["theta"].shape == ()
    names = weight_names(layer)
    assert names.count("relaxation_kernel") == names.count("theta") == len(branches)
    trainable = {id(w) for w in layer.trainable_weights}
    assert not [w.path for w in layer.weights if w.path.endswith("/theta") and id(w) in trainable]


@pytest.mark.parametrize("c_in, c_out", [(4, 5), (2, 1)])
@pytest.mark.parametrize("use_bias", [True, False])
def test_vnlinear_parameter_counts(c_in, c_out, use_bias):
    x = vectors((2, 6, c_in, 3))
    plain = VNLinear(c_out, relaxed=False)
    relaxed = VNLinear(c_out, relaxed=True, relaxation_use_bias=use_bias)
    plain(x)
    relaxed(x)
    assert plain.count_params() == c_in * c_out
    expected = c_in * c_out + (3 * c_in) * (3 * c_out) + (3 * c_out if use_bias else 0) + 1
    assert relaxed.count_params() == expected
    assert sum(int(np.prod(w.shape)) for w in relaxed.trainable_weights) == expected - 1


def test_vn_leaky_relu_parameter_counts():
    c_in, c = 4, 5
    x = vectors((2, 6, c_in, 3))
    plain = VNLeakyReLU(c, relaxed=False)
    relaxed = VNLeakyReLU(c, relaxed=True)
    plain(x)
    relaxed(x)
    plain_count = 2 * c_in * c + 4 * c  # map_to_feat + map_to_dir + BN (gamma, beta, moving mean/var)
    assert plain.count_params() == plain_count
    assert relaxed.count_params() == plain_count + 2 * (9 * c_in * c + 3 * c + 1)


# --------------------------------------------------------------------------- 5. errors
ALL_LAYER_FACTORIES = [
    pytest.param(CASES[n][0], id=n)
    for n in ("linear", "lrelu_feat_s02", "lrelu_nofeat_s0", "batchnorm", "meanpool", "maxpool", "std", "graph")
]


@pytest.mark.parametrize("factory", ALL_LAYER_FACTORIES)
def test_last_axis_not_three(factory):
    with pytest.raises(ValueError, match=r"\[batch, points, channels, 3\]"):
        factory()(tf.zeros([2, 8, 4, 2]))


@pytest.mark.parametrize("factory", ALL_LAYER_FACTORIES)
def test_rank_too_small(factory):
    with pytest.raises(ValueError, match=r"\[batch, points, channels, 3\]"):
        factory()(tf.zeros([2, 3]))


@pytest.mark.parametrize("layer", [VNMeanPool(), VNMaxPool(), VNGraphFeature(k=2)], ids=["mean", "max", "graph"])
def test_pooled_input_rejected_by_point_layers(layer):
    with pytest.raises(ValueError):
        layer(tf.zeros(SHAPE_POOLED))


def test_graph_feature_rejects_neighbour_axis():
    with pytest.raises(ValueError, match=r"\[batch, points, channels, 3\]"):
        VNGraphFeature(k=2)(tf.zeros(SHAPE_NEIGHBOURS))


def test_knn_graph_feature_rejects_bad_shape():
    with pytest.raises(ValueError, match=r"\[batch, points, channels, 3\]"):
        knn_graph_feature(tf.zeros([2, 8, 4, 2]), 2)


def test_knn_k_larger_than_static_points():
    with pytest.raises(ValueError, match="k=9"):
        VNGraphFeature(k=9)(tf.zeros([2, 8, 4, 3]))
    with pytest.raises(ValueError, match="k=9"):
        knn_graph_feature(tf.zeros([2, 8, 4, 3]), 9)


def test_knn_k_larger_than_dynamic_points():
    layer = VNGraphFeature(k=9)
    spec = tf.TensorSpec([None, None, 4, 3], tf.float32)
    f_layer = tf.function(lambda x: layer(x), input_signature=[spec])
    x_ok, x_small = vectors((2, 12, 4, 3)), vectors((2, 8, 4, 3))
    assert tuple(f_layer(x_ok).shape) == (2, 12, 9, 8, 3)  # the graph itself runs
    with pytest.raises(tf.errors.InvalidArgumentError, match="k=9"):
        f_layer(x_small)


@pytest.mark.parametrize("channels", [4, 7])
def test_std_feature_normalized_frame_with_few_channels(channels):
    """With 4 <= C < 8 the last block has C // 4 = 1 channel, so both Gram-Schmidt inputs are parallel.

    The layer must either refuse such inputs at build time or still return an orthonormal
    right-handed frame.
    """
    layer = VNStdFeature(normalize_frame=True, relaxed=False)
    x = vectors((2, 16, channels, 3), seed=24)
    try:
        layer.build(x.shape)
    except ValueError as err:
        assert "channels" in str(err)
        return
    _, z = layer(x, training=False)
    z = f64(z)
    gram = np.einsum("...ki,...li->...kl", z, z)
    np.testing.assert_allclose(gram, np.broadcast_to(np.eye(3), gram.shape), atol=1e-3)
    np.testing.assert_allclose(np.linalg.det(z), 1.0, atol=1e-3)


def test_std_feature_needs_four_channels():
    with pytest.raises(ValueError, match="4"):
        VNStdFeature()(tf.zeros([2, 8, 3, 3]))
    VNStdFeature()(tf.zeros([2, 8, 4, 3]))  # the boundary works


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="channels"):
        VNLinear(0)
    with pytest.raises(ValueError, match="k >= 1"):
        VNGraphFeature(k=0)
    with pytest.raises(ValueError, match="lie_method"):
        VNLinear(3, lie_method="finite_difference")
    with pytest.raises(ValueError, match="relaxation_branch"):
        VNLeakyReLU(3, relaxation_branch="conv")
    with pytest.raises(ValueError, match="relaxation_branch"):
        VNStdFeature(relaxation_branch="conv")


# --------------------------------------------------------------------------- 6. penalties
def test_penalties_only_collected_inside_collector():
    layer, x = built("lrelu_feat_s02", SHAPE_POINTS, relaxed=True)
    randomize_branches(layer, seed=22)
    assert active_collector() is None
    with collect_relaxation_penalties() as finished:
        pass
    layer(x, training=False)  # outside any collector
    layer(x, training=True)
    assert len(finished) == 0 and active_collector() is None
    assert list(layer.losses) == []
    with collect_relaxation_penalties() as collector:
        assert active_collector() is collector
        layer(x, training=False)
    assert active_collector() is None
    assert len(collector) == 2
    assert {id(l) for l in collector.layers} == {id(layer.map_to_feat), id(layer.map_to_dir)}
    lie, proj = collector.totals()
    assert float(lie) > 0 and float(proj) > 0
    layer(x)
    assert len(collector) == 2  # closed collectors stay closed


def test_plain_layer_reports_no_penalties():
    layer, x = built("lrelu_feat_s02", SHAPE_POINTS, relaxed=False)
    with collect_relaxation_penalties() as collector:
        layer(x)
    assert len(collector) == 0
    lie, proj = layer.relaxation_penalties(x)
    assert float(lie) == 0.0 and float(proj) == 0.0


def test_vn_leaky_relu_penalties_are_sum_of_both_maps():
    layer, x = built("lrelu_feat_s02", SHAPE_POINTS, relaxed=True)
    randomize_branches(layer, seed=23)
    lie, proj = layer.relaxation_penalties(x)
    lie_f, proj_f = layer.map_to_feat.branch_penalties(x)
    lie_d, proj_d = layer.map_to_dir.branch_penalties(x)
    assert min(float(lie_f), float(lie_d), float(proj_f), float(proj_d)) > 0
    np.testing.assert_allclose(float(lie), float(lie_f) + float(lie_d), rtol=1e-4)
    np.testing.assert_allclose(float(proj), float(proj_f) + float(proj_d), rtol=1e-4)
    # the projection term is sum_points ||R(x)||^2, independently in NumPy (theta-free)
    xn = f64(x)
    for sub, value in ((layer.map_to_feat, proj_f), (layer.map_to_dir, proj_d)):
        r = xn.reshape(-1, 12) @ f64(sub.relaxation_kernel) + f64(sub.relaxation_bias)
        np.testing.assert_allclose(float(value), np.sum(r**2), rtol=1e-4)


# --------------------------------------------------------------------------- dtype
@pytest.mark.parametrize(
    "factory", [pytest.param(CASES[n][0], id=n) for n in ("linear", "lrelu_feat_s02", "batchnorm", "maxpool", "std")]
)
def test_layers_compute_in_their_float64_dtype(factory):
    """A float64 layer computes in float64, sublayers included (conventions: check equivariance in float64)."""
    layer = factory(relaxed=True, dtype="float64")
    x = vectors(SHAPE_STD, dtype="float64")
    layer.build(x.shape)
    assert layer.weights
    assert not [w.path for w in layer.weights if w.dtype != "float64"], "sublayer weights not float64"
    outputs = tf.nest.flatten(layer(x))
    assert [o.dtype for o in outputs] == [tf.float64] * len(outputs)


# --------------------------------------------------------------------------- concat_mean
@pytest.mark.parametrize("relaxed", [False, True])
@pytest.mark.parametrize("kind", ["lrelu", "std"])
def test_concat_mean_equals_layer_on_concatenated_features(kind, relaxed):
    """``concat_mean=True`` on x == the same weights with ``concat_mean=False`` on [x, mean_points(x)]:
    outputs, relaxation penalties and gradients (the fast path never builds the concatenation)."""
    make = {
        "lrelu": lambda **kw: VNLeakyReLU(5, negative_slope=0.2, **kw),
        "std": lambda **kw: VNStdFeature(negative_slope=0.2, **kw),
    }[kind]
    fast, ref = make(concat_mean=True, relaxed=relaxed), make(concat_mean=False, relaxed=relaxed)
    x = vectors(SHAPE_POINTS, seed=31)
    full = concat_mean_features(x)
    assert full.shape == (2, 32, 8, 3)
    np.testing.assert_allclose(
        full[:, :, 4:].numpy(), np.broadcast_to(x.numpy().mean(axis=1, keepdims=True), x.shape), rtol=1e-6, atol=1e-7
    )
    fast(x), ref(full)
    assert [w.shape for w in fast.weights] == [w.shape for w in ref.weights]
    randomize_batchnorm(fast, seed=32)
    if relaxed:
        randomize_branches(fast, seed=33)
    ref.set_weights(fast.get_weights())
    set_theta(fast, 0.37 if relaxed else 0.0)
    set_theta(ref, 0.37 if relaxed else 0.0)
    for training in (False, True):
        out_fast, out_ref = fast(x, training=training), ref(full, training=training)
        for a, b in zip(tf.nest.flatten(out_fast), tf.nest.flatten(out_ref)):
            close(a, b, atol=1e-4, rtol=1e-4)
    with tf.GradientTape(persistent=True) as tape:
        loss_fast = tf.reduce_sum(tf.nest.flatten(fast(x, training=True))[0] ** 2)
        loss_ref = tf.reduce_sum(tf.nest.flatten(ref(full, training=True))[0] ** 2)
    for g_fast, g_ref in zip(
        tape.gradient(loss_fast, fast.trainable_weights), tape.gradient(loss_ref, ref.trainable_weights)
    ):
        close(g_fast, g_ref, atol=1e-3, rtol=1e-4)
    if relaxed:
        penalties_fast = [float(v) for v in fast.relaxation_penalties(x)]
        penalties_ref = [float(v) for v in ref.relaxation_penalties(full)]
        assert min(penalties_fast) > 0
        np.testing.assert_allclose(penalties_fast, penalties_ref, rtol=1e-4)


def test_concat_mean_needs_points_axis_and_channels():
    with pytest.raises(ValueError, match="concat_mean=True needs per-point features"):
        VNStdFeature(concat_mean=True)(vectors((2, 8, 3)))
    with pytest.raises(ValueError, match=r"concat_mean=True\) needs channels"):
        VNLeakyReLU(None, concat_mean=True)


def test_knn_run_time_check_only_for_a_dynamic_number_of_points():
    """XLA drops Assert ops with a warning at every compilation: none where the static shape was checked."""

    def op_types(spec):
        fn = tf.function(lambda x: knn_graph_feature(x, k=4))
        return {op.type for op in fn.get_concrete_function(spec).graph.get_operations()}

    assert "Assert" not in op_types(tf.TensorSpec([None, 8, 2, 3], tf.float32))
    assert "Assert" in op_types(tf.TensorSpec([None, None, 2, 3], tf.float32))
    dynamic = tf.function(lambda x: knn_graph_feature(x, k=4), input_signature=[tf.TensorSpec([None, None, 1, 3])])
    with pytest.raises(tf.errors.InvalidArgumentError, match="needs at least 4 points"):
        dynamic(tf.zeros([1, 3, 1, 3]))
