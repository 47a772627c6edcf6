"""Equiformer layers (keras_relaxeq/layers/equiformer): O(3) equivariance of each piece with negative controls,
the smooth cutoff, the layer-norm mode of SteerableNorm, attention weights and config round trips."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_relaxeq.groups import Irreps, spherical_harmonics
from keras_relaxeq.groups.representations import TrivialRep
from keras_relaxeq.layers.equiformer import (
    AtomEmbedding,
    DepthwiseTensorProduct,
    EdgeDegreeEmbedding,
    EquiformerBlock,
    EquivariantGraphAttention,
    GatedFeedForward,
    GaussianRadialBasis,
    RadialMLP,
    dense_edges,
    depthwise_plan,
    smooth_envelope,
)
from keras_relaxeq.layers.steerable import SteerableNorm
from keras_relaxeq.testing import assert_equivariant, check_equivariance

NODE = "4x0e+2x1o+2x2e"
SH = "1x0e+1x1o+1x2e"
F64 = dict(dtype="float64")


def _molecule(batch=2, atoms=6, seed=0):
    rng = np.random.default_rng(seed)
    return tf.constant(rng.normal(size=(batch, atoms, 3)) * 1.3)


def _edge_inputs(pos, cutoff=5.0, num_rbf=8):
    vectors, distances, mask = dense_edges(pos, cutoff)
    sh = spherical_harmonics(SH, vectors, normalize=True, normalization="component")
    rbf = GaussianRadialBasis(num_rbf, cutoff, **F64)(distances)
    return sh, rbf, mask * smooth_envelope(distances, cutoff)


def _rep(irreps):
    from keras_relaxeq.groups import IrrepsRep

    return IrrepsRep(Irreps(irreps))


def test_depthwise_plan_paths_and_parity():
    out, paths, num_weights = depthwise_plan(Irreps("3x0e+2x1o"), Irreps(SH), Irreps("1x0e+1x1o+1x2e"))
    # 0e (x) {0e,1o,2e} -> 0e,1o,2e; 1o (x) {0e,1o,2e} -> 0e (1o.1o), 1o (0e, 2e), 2e (1o): parity respected
    assert out == Irreps("3x0e+3x1o+3x2e+2x0e+2x1o+2x2e")
    assert num_weights == 3 * 3 + 2 * 4
    assert all(p.cg.shape[2] == out[p.block_out].ir.dim for p in paths)
    # the published all-even labels allow the "odd" paths too (1e (x) 1e -> 1e, the cross product)
    out_even, _, _ = depthwise_plan(Irreps("2x1e"), Irreps("1x0e+1x1e+1x2e"), Irreps("1x0e+1x1e+1x2e"))
    assert out_even == Irreps("2x0e+2x1e+2x2e")


def test_depthwise_tensor_product_is_o3_equivariant_and_a_broken_one_is_not():
    keras.utils.set_random_seed(0)
    layer = DepthwiseTensorProduct("3x0e+2x1o+1x2e", SH, "1x0e+1x1o+1x2e", **F64)
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(4, 5, layer.irreps_in.dim)))
    sh = spherical_harmonics(SH, tf.constant(rng.normal(size=(4, 5, 3))))
    w = tf.constant(rng.normal(size=(4, 5, layer.num_weights)))
    reps = layer.equivariance_input_reps
    report = assert_equivariant(layer, (x, sh, w), reps, layer.output_rep, group="O3")
    assert report.max_error < 1e-10
    # negative control: the same layer with the m components of one CG tensor permuted
    path = layer.paths[-1]
    broken = path._replace(cg=np.ascontiguousarray(path.cg[:, :, ::-1]))
    layer.paths[-1] = broken
    assert not check_equivariance(layer, (x, sh, w), reps, layer.output_rep, group="SO3").passed


def test_envelope_and_radial_basis_vanish_smoothly_at_the_cutoff():
    d = tf.constant(np.linspace(0.0, 6.0, 601))
    with tf.GradientTape(persistent=True) as t2:
        t2.watch(d)
        with tf.GradientTape() as t1:
            t1.watch(d)
            u = smooth_envelope(d, 5.0)
        du = t1.gradient(u, d)
    d2u = t2.gradient(du, d)
    u, du, d2u = u.numpy(), du.numpy(), d2u.numpy()
    assert u[0] == pytest.approx(1.0) and np.all(u[d.numpy() >= 5.0] == 0)
    near = np.abs(d.numpy() - 5.0) <= 0.011
    assert np.abs(u[near]).max() < 1e-6 and np.abs(du[near]).max() < 1e-3 and np.abs(d2u[near]).max() < 0.2
    assert np.all(np.isfinite(d2u))
    rbf = GaussianRadialBasis(16, 5.0, **F64)(d).numpy()
    assert rbf.shape == (601, 16) and np.all(rbf[d.numpy() >= 5.0] == 0)


def test_dense_edges_mask_and_zero_distance_gradients():
    pos = tf.constant([[[0.0, 0, 0], [1.0, 0, 0], [7.0, 0, 0], [0.0, 2.0, 0]]], tf.float64)
    z = tf.constant([[1, 1, 1, 0]])
    with tf.GradientTape() as tape:
        tape.watch(pos)
        _, distances, mask = dense_edges(pos, 5.0, atom_mask=z > 0)
        total = tf.reduce_sum(distances)
    grad = tape.gradient(total, pos)
    expect = np.zeros((4, 4))
    expect[0, 1] = expect[1, 0] = 1  # atom 2 is beyond the cutoff, atom 3 is padding, no self loops
    np.testing.assert_array_equal(mask.numpy()[0], expect)
    assert np.all(np.isfinite(grad.numpy()))
    given = tf.constant(np.ones((1, 4, 4)))
    np.testing.assert_array_equal(dense_edges(pos, 5.0, given, z > 0)[2].numpy()[0], expect)


def test_layer_norm_mode_is_equivariant_per_node_and_normalises():
    keras.utils.set_random_seed(0)
    norm = SteerableNorm(NODE, mode="layer", eps=1e-12, **F64)
    x = tf.constant(np.random.default_rng(0).normal(size=(3, 5, Irreps(NODE).dim)) * 3.0 + 1.0)
    y = norm(x).numpy()
    assert_equivariant(norm, x, NODE, NODE, group="O3")
    scalars = y[..., :4]
    np.testing.assert_allclose(scalars.mean(-1), 0.0, atol=1e-12)
    np.testing.assert_allclose(np.mean(scalars**2, -1), 1.0, rtol=1e-4)
    vectors = y[..., 4:10].reshape(3, 5, 2, 3)
    np.testing.assert_allclose(np.mean(np.sum(vectors**2, -1) / 3, -1), 1.0, rtol=1e-4)
    # per node: changing one node leaves the others unchanged
    x2 = x.numpy().copy()
    x2[:, 0] *= 10
    np.testing.assert_allclose(norm(tf.constant(x2)).numpy()[:, 1:], y[:, 1:], atol=1e-12)
    cfg = SteerableNorm.from_config(norm.get_config()).get_config()
    assert cfg["mode"] == "layer"


def test_attention_and_block_are_o3_equivariant():
    keras.utils.set_random_seed(0)
    pos = _molecule()
    sh, rbf, ew = _edge_inputs(pos)
    x = tf.constant(np.random.default_rng(2).normal(size=(2, 6, Irreps(NODE).dim)))
    reps = (_rep(NODE), _rep(SH), TrivialRep(8), TrivialRep())
    attention = EquivariantGraphAttention(NODE, SH, num_heads=2, radial_hidden=(8,), **F64)
    block = EquiformerBlock(NODE, SH, num_heads=2, radial_hidden=(8,), ffn_multiplier=2.0, **F64)
    for layer in (attention, block):
        out = layer((x, sh, rbf, ew))
        assert out.shape == x.shape
        report = assert_equivariant(layer, (x, sh, rbf, ew), reps, _rep(NODE), group="O3")
        assert report.max_error < 1e-9
    # a rotation of the edge geometry alone (not of the features) is not a symmetry: the check can fail
    bad = check_equivariance(attention, (x, sh, rbf, ew), (TrivialRep(x.shape[-1]), *reps[1:]), _rep(NODE))
    assert not bad.passed


def test_attention_weights_are_a_weighted_softmax():
    layer = EquivariantGraphAttention(NODE, SH, num_heads=2, **F64)
    logits = tf.constant(np.random.default_rng(0).normal(size=(1, 3, 3, 2)))
    ew = tf.constant([[[0.0, 1.0, 0.5], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]], tf.float64)
    a = layer.attention_weights(logits, ew).numpy()
    np.testing.assert_allclose(a[0, 0].sum(0), 1.0)
    e = np.exp(logits.numpy()[0, 0, 1:, 0])
    np.testing.assert_allclose(a[0, 0, 1:, 0], np.array([1.0, 0.5]) * e / (e[0] + 0.5 * e[1]))
    np.testing.assert_allclose(a[0, 1, :, :], [[1, 1], [0, 0], [0, 0]])
    np.testing.assert_array_equal(a[0, 2], 0.0)  # no neighbours: no message


def test_embeddings_feed_forward_and_config_round_trips():
    keras.utils.set_random_seed(0)
    pos = _molecule()
    sh, rbf, ew = _edge_inputs(pos)
    emb = AtomEmbedding(NODE, max_atomic_number=9, **F64)
    z = tf.constant([[1, 6, 8, 1, 1, 7], [6, 6, 1, 1, 0, 0]])
    h = emb(z).numpy()
    assert h.shape == (2, 6, Irreps(NODE).dim) and np.all(h[..., 4:] == 0)
    np.testing.assert_allclose(h[0, 0], h[0, 3])  # same element, same embedding
    edge = EdgeDegreeEmbedding(NODE, SH, avg_num_neighbors=4.0, radial_hidden=(8,), **F64)
    assert_equivariant(edge, (sh, rbf, ew), (_rep(SH), TrivialRep(8), TrivialRep()), _rep(NODE), group="O3")
    ffn = GatedFeedForward(NODE, 2.0, **F64)
    x = tf.constant(np.random.default_rng(3).normal(size=(2, 6, Irreps(NODE).dim)))
    assert_equivariant(ffn, x, NODE, NODE, group="O3")
    mlp = RadialMLP(5, (8,), **F64)
    w = mlp((rbf, ew)).numpy()
    assert np.all(w[ew.numpy() == 0] == 0)
    for layer, args in (
        (emb, z),
        (edge, (sh, rbf, ew)),
        (ffn, x),
        (EquiformerBlock(NODE, SH, 2, 2.0, (8,), **F64), (x, sh, rbf, ew)),
        (DepthwiseTensorProduct(NODE, SH, NODE, **F64), None),
    ):
        clone = type(layer).from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()
        if args is not None and layer.weights:
            clone(args)
            clone.set_weights(layer.get_weights())
            np.testing.assert_allclose(clone(args).numpy(), layer(args).numpy(), atol=1e-12)


def test_bad_arguments_are_refused_with_clear_errors():
    with pytest.raises(ValueError, match="one copy per irrep"):
        DepthwiseTensorProduct(NODE, "2x0e", NODE)
    with pytest.raises(ValueError, match="no path"):
        DepthwiseTensorProduct("2x0e", "1x0e", "1x1o")
    with pytest.raises(ValueError, match="num_heads"):
        EquivariantGraphAttention(NODE, SH, num_heads=0)
    with pytest.raises(ValueError, match="start with 0e"):
        AtomEmbedding("2x1o+2x0e")
    with pytest.raises(ValueError, match="mode"):
        SteerableNorm(NODE, mode="group")
