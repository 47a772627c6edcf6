"""The generator-defect penalty of finite groups (layers/finite_group_penalties.py).

Checks: closed form (one convolution with W - T_g(W); Gram statistics for a per-pixel branch) == generic
evaluation (R on g.x) == an independent float64 NumPy computation with per-cell loops; zero to float error on
equivariant branches; the defect fills the Lie slot that RelaxedModel reports as lie_penalty.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_relaxeq.groups.cyclic import FibreRep, FieldType
from keras_relaxeq.groups.cyclic_kernels import FieldRep, equivariant_kernel_basis
from keras_relaxeq.layers import RelaxedEquivariantLayer, collect_relaxation_penalties
from keras_relaxeq.layers.base import gram_statistics
from keras_relaxeq.layers.finite_group_penalties import (
    conv_branch_defect,
    dense_branch_defect,
    direct_dense_branch_defect,
    generic_field_defect,
    generic_pointwise_defect,
    reference_rot90_penalty,
)
from keras_relaxeq.layers.group_conv import CyclicConv2D, GroupConv2D

TYPES = [
    (FieldType(4, ["vector"] * 2), FieldType(4, ["regular"] * 2)),
    (FieldType(4, ["regular"] * 2), FieldType(4, ["regular"] * 3)),
    (FieldType(4, ["regular"] * 2), FieldType(4, ["vector"])),
    (
        FieldType(4, ["vector", "regular", "trivial"]),
        FieldType(4, ["regular", FibreRep("irrep", 4, frequency=2), "vector", "trivial"]),
    ),
    (FieldType(2, ["vector", "regular"]), FieldType(2, ["regular", "trivial"])),
]


def naive_conv(x, w, b):
    k = w.shape[0]
    r = k // 2
    pad = np.pad(x, ((0, 0), (r, r), (r, r), (0, 0)))
    h, wd = x.shape[1:3]
    out = np.zeros(x.shape[:3] + (w.shape[-1],)) + b
    for a in range(k):
        for c in range(k):
            out += pad[:, a : a + h, c : c + wd] @ w[a, c]
    return out


def naive_act(field_type, g, z):
    n = z.shape[1]
    out = np.empty_like(z)
    m = field_type.matrix(g)
    for i in range(n):
        for j in range(n):
            src = (i, j)
            for _ in range(field_type.group.quarter_turns(g)):
                src = (n - 1 - src[1], src[0])  # one quarter turn: new[i, j] = old[n - 1 - j, i]
            out[:, i, j] = z[:, src[0], src[1]] @ m.T
    return out


def numpy_defect(f, x, ti, to):
    """sum over the generator of ||g.f(x) - f(g.x)||^2 and ||f(x)||^2, float64 loops."""
    y = f(x)
    lie = sum(float(np.sum((naive_act(to, g, y) - f(naive_act(ti, g, x))) ** 2)) for g in ti.generators())
    return lie, float(np.sum(y**2))


def equivariant_conv_kernel(ti, to, k, rng):
    """An equivariant kernel assembled fibre pair by fibre pair from the basis, with random coefficients."""
    w = np.zeros((k, k, ti.channels, to.channels))
    ci = 0
    for fi in ti.fibres:
        co = 0
        for fo in to.fibres:
            basis = equivariant_kernel_basis(fi, fo, k, group_order=ti.group.order)
            if len(basis):
                w[:, :, ci : ci + fi.dim, co : co + fo.dim] = np.einsum(
                    "b,bxypq->xypq", rng.normal(size=len(basis)), basis
                )
            co += fo.dim
        ci += fi.dim
    return w


def equivariant_bias(to, rng):
    parts = []
    for f in to.fibres:
        v = rng.normal()
        parts.append({"trivial": [v], "regular": [v] * f.dim}.get(f.kind, [0.0] * f.dim))
    return np.concatenate(parts)


@pytest.mark.parametrize("types", TYPES, ids=str)
@pytest.mark.parametrize("k", [1, 3])
def test_conv_closed_form_equals_generic_and_numpy(types, k):
    ti, to = types
    rng = np.random.default_rng(k)
    x = rng.normal(size=(2, 6, 6, ti.channels))
    w = rng.normal(size=(k, k, ti.channels, to.channels))
    b = rng.normal(size=to.channels)
    expected = numpy_defect(lambda z: naive_conv(z, w, b), x, ti, to)
    closed = conv_branch_defect(tf.constant(w), tf.constant(b), tf.constant(x), ti, to)
    generic = generic_field_defect(lambda z: tf.nn.conv2d(z, w, 1, "SAME") + b, tf.constant(x), ti, to)
    assert expected[0] > 1.0
    for got in (closed, generic):
        np.testing.assert_allclose([float(got[0]), float(got[1])], expected, rtol=1e-10)
    no_bias = conv_branch_defect(tf.constant(w), None, tf.constant(x), ti, to)
    np.testing.assert_allclose(
        [float(v) for v in no_bias], numpy_defect(lambda z: naive_conv(z, w, 0.0), x, ti, to), rtol=1e-10
    )


@pytest.mark.parametrize("types", TYPES, ids=str)
def test_conv_defect_is_zero_on_equivariant_kernels(types):
    ti, to = types
    rng = np.random.default_rng(5)
    x = tf.constant(rng.normal(size=(2, 7, 7, ti.channels)))
    w, b = equivariant_conv_kernel(ti, to, 3, rng), equivariant_bias(to, rng)
    lie, proj = conv_branch_defect(tf.constant(w), tf.constant(b), x, ti, to)
    assert float(proj) > 1.0 and float(lie) < 1e-20 * float(proj) + 1e-24
    lie32, proj32 = conv_branch_defect(
        tf.constant(w, tf.float32), tf.constant(b, tf.float32), tf.cast(x, tf.float32), ti, to
    )
    assert float(lie32) < 1e-10 * float(proj32)


def test_rot90_of_the_kernel_alone_is_not_the_condition():
    # The reference penalty ||W - rot90(W)|| vanishes on this kernel, yet the conv between vector fields is not
    # equivariant (the fibres are not rotated); conversely an equivariant vector conv has W != rot90(W).
    ti = to = FieldType(4, ["vector"])
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(1, 6, 6, 2)))
    centre_only = np.zeros((3, 3, 2, 2))
    centre_only[1, 1] = rng.normal(size=(2, 2))
    w_iso = np.stack([np.stack([centre_only[1, 1]] * 3)] * 3)  # the same tap everywhere: rot90-invariant
    assert np.array_equal(np.rot90(w_iso, axes=(0, 1)), w_iso)
    assert float(reference_rot90_penalty(tf.constant(w_iso))) == 0.0
    assert float(conv_branch_defect(tf.constant(w_iso), None, x, ti, to)[0]) > 1e-3
    w_eq = equivariant_conv_kernel(ti, to, 3, rng)
    assert not np.allclose(np.rot90(w_eq, axes=(0, 1)), w_eq)
    assert float(reference_rot90_penalty(tf.constant(w_eq))) > 1e-3
    assert float(conv_branch_defect(tf.constant(w_eq), None, x, ti, to)[0]) < 1e-20


# --------------------------------------------------------------------------- the per-pixel (dense) branch


class PointwiseField(RelaxedEquivariantLayer):
    """A test layer: identity on regular fields, with the base layer's dense per-pixel branch."""

    def __init__(self, field_type, **kwargs):
        super().__init__(**kwargs)
        self.field_type = field_type

    def input_representation(self, input_shape):
        return FieldRep(self.field_type)

    def output_representation(self, input_shape):
        return FieldRep(self.field_type)

    def equivariant_call(self, inputs, training=None):
        return inputs


@pytest.mark.parametrize("method", ["closed_form", "direct", "jvp"])
def test_dense_branch_defect_by_every_method(method):
    ft = FieldType(4, ["regular", "vector", "trivial"])
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 5, 5, ft.channels))
    layer = PointwiseField(ft, lie_method=method, dtype="float64")
    layer(tf.constant(x))
    w, b = rng.normal(size=(ft.channels, ft.channels)), rng.normal(size=ft.channels)
    layer.relaxation_kernel.assign(w)
    layer.relaxation_bias.assign(b)
    expected = numpy_defect(lambda z: z @ w + b, x, ft, ft)
    got = layer.relaxation_penalties(tf.constant(x))
    np.testing.assert_allclose([float(v) for v in got], expected, rtol=1e-10)
    flat = tf.reshape(tf.constant(x), [-1, ft.channels])
    for value in (
        dense_branch_defect(tf.constant(w), tf.constant(b), gram_statistics(flat), ft, ft),
        direct_dense_branch_defect(tf.constant(w), tf.constant(b), flat, ft, ft),
        generic_pointwise_defect(lambda v: tf.matmul(v, w) + b, flat, ft, ft),
    ):
        np.testing.assert_allclose([float(v) for v in value], expected, rtol=1e-10)


def test_dense_branch_defect_zero_on_equivariant_maps_and_mlp_branch_runs():
    ft = FieldType(4, ["regular"] * 2)
    rng = np.random.default_rng(2)
    x = tf.constant(rng.normal(size=(2, 4, 4, 8)))
    layer = PointwiseField(ft, dtype="float64")
    layer(x)
    circ = [np.stack([np.roll(v, i) for i in range(4)]) for v in rng.normal(size=(4, 4))]  # circulant blocks
    w = np.block([[circ[0], circ[1]], [circ[2], circ[3]]])
    layer.relaxation_kernel.assign(w)
    layer.relaxation_bias.assign(np.repeat(rng.normal(size=2), 4))
    lie, proj = layer.relaxation_penalties(x)
    assert float(proj) > 1.0 and float(lie) < 1e-20
    mlp = PointwiseField(
        ft, relaxation_branch="mlp", relaxation_hidden_units=5, dtype="float64", relaxation_initializer="random_normal"
    )
    mlp(x)
    lie, proj = mlp.relaxation_penalties(x)
    expected = generic_pointwise_defect(mlp.branch, tf.reshape(x, [-1, 8]), ft, ft)
    np.testing.assert_allclose([float(lie), float(proj)], [float(v) for v in expected], rtol=1e-12)
    assert float(lie) > 0.0


# --------------------------------------------------------------------------- layers and the training loop


def test_conv_layer_penalties_closed_form_equal_generic():
    rng = np.random.default_rng(3)
    x = tf.constant(rng.normal(size=(2, 6, 6, 8)), tf.float64)
    layers = {
        m: GroupConv2D(3, lie_method=m, relaxation_initializer="random_normal", dtype="float64")
        for m in ("auto", "direct")
    }
    for layer in layers.values():
        layer(x)
    layers["direct"].set_weights(layers["auto"].get_weights())
    a, b = (layers[m].relaxation_penalties(x) for m in ("auto", "direct"))
    np.testing.assert_allclose([float(v) for v in a], [float(v) for v in b], rtol=1e-10)
    assert float(a[0]) > 0.0


def test_defect_fills_the_lie_penalty_slot_of_relaxed_model():
    from keras_relaxeq.training.model import RelaxedModel

    inputs = keras.Input((8, 8, 2))
    h = CyclicConv2D(
        [["regular", 2]],
        in_type="vector",
        activation="relu",
        relaxation_initializer=keras.initializers.RandomNormal(stddev=0.1),
    )(inputs)
    outputs = CyclicConv2D("vector", relaxation_initializer=keras.initializers.RandomNormal(stddev=0.1))(h)
    model = RelaxedModel(inputs, outputs, lambda_lie=0.1, lambda_proj=0.1)
    model.compile(optimizer="adam", loss="mse")
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(4, 8, 8, 2)).astype("float32"), rng.normal(size=(4, 8, 8, 2)).astype("float32")
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    with collect_relaxation_penalties() as collector:
        model(x, training=False)
    assert len(collector) == 2
    assert history.history["lie_penalty"][0] > 0.0 and history.history["projection_penalty"][0] > 0.0
