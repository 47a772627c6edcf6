"""The by-type tensor product (``TypePlan``, layers/steerable/type_plan.py) against plain references, in float64.

``O3TensorProduct`` evaluates ``x (x) attr -> out`` by irrep type (merged blocks, attributes
contracted with the CG tensors first or weights applied first, one matmul per type).  Here it
is compared with

* an explicit per-path NumPy einsum with the Clebsch-Gordan tensors (values), and
* the dense ``outer(x, attr) @ dense_tensor()`` evaluation (values and gradients),

on random inputs and random weights, for irreps that exercise every code path: repeated and
interleaved blocks of one irrep (merged types), attributes with multiplicity > 1, zero
multiplicities, output irreps no path reaches, no attributes, both evaluation orders and the
diagonal (``l2 = 0``) shortcut.  Also the SEGNN graph helpers against gathers / incidence sums.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from tp_reference import reference_tp as reference

from keras_relaxeq.groups import Irreps
from keras_relaxeq.layers.steerable import O3TensorProduct
from keras_relaxeq.models.segnn import _edge_endpoints, _incidence, _sum_incoming, fully_connected_edges
from keras_relaxeq.testing import run_layer_test

F64 = "float64"
LEAD = (3, 5)

CASES = {
    "segnn_message": ("32x0e+32x1o+32x0e+32x1o+2x0e", "1x0e+1x1o", "64x0e+32x1o"),
    "segnn_update": ("8x0e+8x1o+8x0e+8x1o", "1x0e+1x1o", "16x0e+8x1o"),
    "segnn_out": ("4x0e+4x1o", "1x0e+1x1o", "1x1o"),
    "lmax2_attr": ("3x0e+2x1o+1x2e", "1x0e+1x1o+1x2e", "2x0e+2x1o+1x1e+2x2e+1x0o"),
    "mixed": ("3x1o+2x0e+1x2e+2x1o", "2x0e+1x1o+2x1e+1x2e", "1x1o+2x0e+3x1e+1x0e+1x2o+2x1o"),
    "unreached_output": ("2x0e", "1x1o", "3x0e+1x1o+1x2e"),
    "zero_multiplicities": ("1x0e+0x1o+2x1o", "1x0e+1x1o", "0x0e+2x0e+1x1e+2x1o"),
    "no_attr": ("2x0e+2x1o+1x1e", None, "2x0e+1x0o+2x1o+1x1e+1x2e"),
}


def make(name, tp_rescale, seed=0):
    in1, in2, out = CASES[name]
    rng = np.random.default_rng(seed)
    layer = O3TensorProduct(in1, in2, out, tp_rescale=tp_rescale, relaxed=False, dtype=F64)
    x = tf.constant(rng.normal(size=LEAD + (Irreps(in1).dim,)))
    y = None if in2 is None else tf.constant(rng.normal(size=LEAD + (Irreps(in2).dim,)))
    layer(x if y is None else (x, y))
    for w in layer.weights:
        w.assign(rng.normal(size=tuple(w.shape)))
    return layer, x, y


@pytest.mark.parametrize("tp_rescale", [True, False])
@pytest.mark.parametrize("name", list(CASES))
def test_fast_tensor_product_matches_einsum_reference(name, tp_rescale):
    layer, x, y = make(name, tp_rescale)
    in1, in2, out = CASES[name]
    got = layer(x if y is None else (x, y)).numpy()
    y_np = np.ones(LEAD + (1,)) if y is None else y.numpy()
    bias = None if layer.bias is None else layer.bias.numpy()
    ref = reference(in1, in2 or "1x0e", out, layer.kernel.numpy(), bias, x.numpy(), y_np, tp_rescale)
    scale = max(1.0, np.abs(ref).max())
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(layer.tensor_product_dense(x, y).numpy(), ref, rtol=0, atol=1e-12 * scale)


@pytest.mark.parametrize("name", list(CASES))
def test_fast_tensor_product_gradients_match_dense(name):
    layer, x, y = make(name, True, seed=1)
    r = tf.constant(np.random.default_rng(2).normal(size=LEAD + (layer.irreps_out.dim,)))
    inputs = [x] if y is None else [x, y]

    def grads(fn):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            loss = tf.reduce_sum(fn(x, y) * r)
        return tape.gradient(loss, inputs + layer.trainable_weights)

    for fast, dense in zip(grads(layer.tensor_product), grads(layer.tensor_product_dense)):
        fast, dense = tf.convert_to_tensor(fast).numpy(), tf.convert_to_tensor(dense).numpy()
        np.testing.assert_allclose(fast, dense, rtol=0, atol=1e-11 * max(1.0, np.abs(dense).max()))


@pytest.mark.parametrize("name", list(CASES))
def test_run_layer_test(name):
    """Every case through run_layer_test (relaxed, float64, O(3) with reflections)."""
    in1, in2, out = CASES[name]
    shape = LEAD + (Irreps(in1).dim,)
    shapes = shape if in2 is None else (shape, LEAD + (Irreps(in2).dim,))
    run_layer_test(
        O3TensorProduct,
        dict(irreps_in1=in1, irreps_in2=in2, irreps_out=out, dtype=F64),
        shapes,
        group="O3",
        num_samples=1,
    )


def test_cases_cover_both_evaluation_orders_and_the_diagonal_shortcut():
    triples = [t for name in CASES for t in O3TensorProduct(*CASES[name]).type_plan.triples]
    assert {t.order for t in triples} == {"Y", "Z"}
    assert {t.diagonal for t in triples} == {True, False}
    assert any(t.mul2 > 1 and t.order == "Y" for t in triples)
    assert any(t.mul2 > 1 and t.order == "Z" for t in triples)


def test_weight_permutation_covers_the_kernel_once():
    for name in CASES:
        layer = O3TensorProduct(*CASES[name])
        plan = layer.type_plan
        used = plan.w_index[plan.w_index < layer.weight_numel]
        assert sorted(used.tolist()) == list(range(layer.weight_numel)), name


@pytest.mark.parametrize("num_nodes", [2, 3, 5])
def test_segnn_graph_helpers_match_gathers(num_nodes):
    rng = np.random.default_rng(num_nodes)
    senders, receivers = fully_connected_edges(num_nodes)
    x = tf.constant(rng.normal(size=(4, num_nodes, 6)))
    x_i, x_j = _edge_endpoints(x, num_nodes)
    np.testing.assert_array_equal(x_i.numpy(), tf.gather(x, receivers, axis=1).numpy())
    np.testing.assert_array_equal(x_j.numpy(), tf.gather(x, senders, axis=1).numpy())
    e = tf.constant(rng.normal(size=(4, len(senders), 7)))
    expected = np.einsum("ne,bed->bnd", _incidence(receivers, num_nodes), e.numpy())
    np.testing.assert_allclose(_sum_incoming(e, num_nodes).numpy(), expected, rtol=0, atol=1e-13)

    @tf.function(input_signature=[tf.TensorSpec([None, num_nodes, None], tf.float64)])
    def dynamic(t):
        return _edge_endpoints(t, num_nodes)

    np.testing.assert_array_equal(dynamic(x)[1].numpy(), x_j.numpy())


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)
