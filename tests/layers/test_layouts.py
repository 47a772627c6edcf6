"""Feature layouts of the steerable layers: ``"mul_ir"`` (e3nn, the default) and ``"ir_mul"``.

1. ``layout_permutation`` / ``convert_layout`` against the definition (entry ``i * mul + u`` of
   an ``ir_mul`` block is entry ``u * d + i`` of the ``mul_ir`` block);
2. ``IrrepsRep(..., "ir_mul")``: generators, generator action, transform and matrix are the
   ``mul_ir`` ones conjugated by the permutation;
3. every steerable layer with ``layout="ir_mul"`` computes the ``mul_ir`` layer's function in
   the other coordinates (same weights), is O(3)-equivariant in its own layout, and its
   relaxation penalties (closed form == direct == JVP) equal the ``mul_ir`` ones for the
   permuted branch, and vanish for an equivariant branch of its layout;
4. configs keep the layout; a config without one (saved before layouts existed) is ``mul_ir``.
"""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_relaxeq.groups import (
    Irreps,
    IrrepsRep,
    convert_layout,
    equivariant_projection,
    layout_permutation,
    random_rotations,
)
from keras_relaxeq.layers import set_theta, transfer_weights
from keras_relaxeq.layers.steerable import Gate, O3Linear, O3TensorProduct, O3TensorProductGate, SteerableNorm
from keras_relaxeq.testing import assert_equivariant, run_layer_test

F64 = "float64"
# repeated types (0e, 1o) in separate blocks, mul > 1 on l > 0 blocks, an l = 2 block
IN1 = "2x0e+3x1o+1x0e+2x1e+2x2e+2x1o"
ATTR = "1x0e+2x1o+1x2e"  # mul > 1 in the attributes too
OUT = "3x0e+2x1o+2x1e+1x0e+3x1o+1x0o"  # repeated output types: not the identity output layout
GATED = "2x0e+3x1o+2x1e+1x2e"
LEAD = (3, 4)


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(99)


def feats(irreps, seed=0, lead=LEAD):
    return np.random.default_rng(seed).normal(size=lead + (Irreps(irreps).dim,))


def to_ir_mul(x, irreps):
    return np.asarray(x)[..., layout_permutation(irreps, "ir_mul")]


# --------------------------------------------------------------------------- 1. permutations
def test_layout_permutation_definition():
    irreps = Irreps("2x0e+3x1o+2x2e")
    perm = layout_permutation(irreps, "ir_mul")
    assert sorted(perm.tolist()) == list(range(irreps.dim))
    # 2x0e unchanged; 3x1o block at offset 2: ir_mul entry i * 3 + u is mul_ir entry u * 3 + i
    for u in range(3):
        for i in range(3):
            assert perm[2 + i * 3 + u] == 2 + u * 3 + i
    for u in range(2):  # 2x2e at offset 11
        for i in range(5):
            assert perm[11 + i * 2 + u] == 11 + u * 5 + i
    np.testing.assert_array_equal(layout_permutation(irreps, "mul_ir"), np.arange(irreps.dim))
    x = feats(irreps)
    y = convert_layout(x, irreps, "mul_ir", "ir_mul").numpy()
    np.testing.assert_array_equal(y, x[..., perm])
    np.testing.assert_array_equal(convert_layout(y, irreps, "ir_mul", "mul_ir").numpy(), x)
    with pytest.raises(ValueError, match="layout must be one of"):
        layout_permutation(irreps, "ir-mul")


# --------------------------------------------------------------------------- 2. representation
def test_irreps_rep_ir_mul_is_the_permuted_rep():
    irreps = Irreps(IN1)
    perm = layout_permutation(irreps, "ir_mul")
    a, b = IrrepsRep(irreps), IrrepsRep(irreps, "ir_mul")
    assert a != b and b == IrrepsRep(IN1, layout="ir_mul") and "ir_mul" in repr(b)
    g_a, g_b = a.generators_numpy(), b.generators_numpy()
    np.testing.assert_array_equal(g_b, g_a[:, perm][:, :, perm])
    v = feats(irreps, 1, lead=(5,))
    np.testing.assert_allclose(b.apply_generators(tf.constant(v)).numpy(), np.einsum("nj,kij->kni", v, g_b), atol=1e-14)
    np.testing.assert_allclose(
        b.apply_generators(tf.constant(v), transpose=True).numpy(), np.einsum("nj,kji->kni", v, g_b), atol=1e-14
    )
    rot = random_rotations(5, dtype=tf.float64)
    improper = rot * tf.constant([-1.0, 1.0, -1.0, 1.0, 1.0], tf.float64)[:, None, None]  # two reflections
    for g in (rot, improper):
        mat_b = b.matrix(g).numpy()
        np.testing.assert_allclose(mat_b, a.matrix(g).numpy()[:, perm][:, :, perm], atol=1e-13)
        np.testing.assert_allclose(b.transform(g, v).numpy(), np.einsum("nij,nj->ni", mat_b, v), atol=1e-12)
    single = rot[0]
    np.testing.assert_allclose(b.transform(single, v).numpy(), v @ b.matrix(single).numpy().T, atol=1e-12)


# --------------------------------------------------------------------------- 3. layers
# name -> (layer class, constructor arguments, irreps of the inputs, irreps of the output)
SPECS = {
    "linear": (O3Linear, dict(irreps_in=IN1, irreps_out=OUT), (IN1,), OUT),
    "tp": (O3TensorProduct, dict(irreps_in1=IN1, irreps_in2=ATTR, irreps_out=OUT), (IN1, ATTR), OUT),
    "tp_no_attr": (O3TensorProduct, dict(irreps_in1=IN1, irreps_in2=None, irreps_out=OUT), (IN1,), OUT),
    "tp_gate": (O3TensorProductGate, dict(irreps_in1=IN1, irreps_in2=ATTR, irreps_out=GATED), (IN1, ATTR), GATED),
    "tp_gate_after": (
        O3TensorProductGate,
        dict(irreps_in1=IN1, irreps_in2=ATTR, irreps_out=GATED, relaxation_placement="after_gate"),
        (IN1, ATTR),
        GATED,
    ),
    "gate": (
        Gate,
        dict(irreps_scalars="2x0e", irreps_gated="3x1o+2x1e+1x2e"),
        ("2x0e+6x0e+3x1o+2x1e+1x2e",),
        "2x0e+3x1o+2x1e+1x2e",
    ),
    "norm_instance": (SteerableNorm, dict(irreps=OUT), (OUT,), OUT),
    "norm_batch": (SteerableNorm, dict(irreps=OUT, mode="batch"), (OUT,), OUT),
}
# name -> (factory(**kw), irreps of the inputs, irreps of the output)
CASES = {
    name: (functools.partial(cls, **kwargs), in_irreps, out_irreps)
    for name, (cls, kwargs, in_irreps, out_irreps) in SPECS.items()
}
BRANCHES = ("linear", "tp", "tp_no_attr", "tp_gate", "tp_gate_after")


def pair(name, relaxed=False):
    """The layer in both layouts with the same weights (branches permuted) and matching inputs."""
    factory, in_irreps, _ = CASES[name]
    xs = [feats(irreps, seed) for seed, irreps in enumerate(in_irreps)]
    inputs_a = tuple(tf.constant(x) for x in xs)
    inputs_b = tuple(tf.constant(to_ir_mul(x, irreps)) for x, irreps in zip(xs, in_irreps))
    unwrap = (lambda t: t[0]) if len(xs) == 1 else (lambda t: t)
    a = factory(dtype=F64, relaxed=relaxed)
    b = factory(dtype=F64, relaxed=relaxed, layout="ir_mul")
    assert a.layout == "mul_ir" and b.layout == "ir_mul"
    a(unwrap(inputs_a))
    b(unwrap(inputs_b))
    rng = np.random.default_rng(7)
    for w in a.weights:  # random values everywhere (biases, norm weights, running statistics kept positive)
        name_w = w.path.split("/")[-1]
        value = (
            rng.uniform(0.5, 2.0, size=tuple(w.shape)) if name_w == "running_var" else rng.normal(size=tuple(w.shape))
        )
        w.assign(value)
    assert transfer_weights(a, b) == (len(branch_layers(a)) if relaxed else 0)
    for la, lb in zip(branch_layers(a), branch_layers(b)):  # the definition of the converted branch
        pin = layout_permutation(la.input_rep.irreps, "ir_mul")
        pout = layout_permutation(la.output_rep.irreps, "ir_mul")
        np.testing.assert_array_equal(lb.relaxation_kernel.numpy(), la.relaxation_kernel.numpy()[pin][:, pout])
        if la.relaxation_bias is not None:
            np.testing.assert_array_equal(lb.relaxation_bias.numpy(), la.relaxation_bias.numpy()[pout])
    return a, b, unwrap(inputs_a), unwrap(inputs_b)


def branch_layers(layer):
    from keras_relaxeq.layers import relaxed_layers

    return [l for l in relaxed_layers(layer) if l.has_relaxation_branch]


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("name", list(CASES))
def test_ir_mul_layer_is_the_mul_ir_layer_permuted(name, training):
    a, b, xa, xb = pair(name)
    out_irreps = CASES[name][2]
    ya = a(xa, training=training).numpy()
    yb = b(xb, training=training).numpy()
    np.testing.assert_allclose(yb, to_ir_mul(ya, out_irreps), rtol=1e-12, atol=1e-12)
    if name in ("tp", "tp_no_attr"):  # the dense reference evaluation follows the layout too
        attr = xb[1] if isinstance(xb, tuple) else None
        x = xb[0] if isinstance(xb, tuple) else xb
        np.testing.assert_allclose(b.tensor_product_dense(x, attr).numpy(), yb, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("name", list(CASES))
def test_ir_mul_layer_equivariant(name):
    _, b, _, xb = pair(name)
    reps = b.equivariance_input_reps
    assert all(r.layout == "ir_mul" for r in (reps if isinstance(reps, tuple) else (reps,)))
    report = assert_equivariant(b, xb, input_reps=reps, output_reps=b.output_rep, group="O3", num_samples=2)
    assert report.scale > 1e-2
    # a mul_ir representation does not fit the ir_mul layer (the check can fail)
    wrong_in = tuple(IrrepsRep(r.irreps) for r in reps) if isinstance(reps, tuple) else IrrepsRep(reps.irreps)
    with pytest.raises(AssertionError):
        assert_equivariant(b, xb, input_reps=wrong_in, output_reps=IrrepsRep(CASES[name][2]), group="O3", num_samples=1)


@pytest.mark.parametrize("name", list(SPECS))
def test_run_layer_test_ir_mul(name):
    """Every layer in the ir_mul layout through run_layer_test: round trips, relaxed -> project, zero penalties
    of a branch projected onto the equivariant maps of its layout, O(3) equivariance in its own layout."""
    cls, kwargs, in_irreps, _ = SPECS[name]
    shapes = tuple(LEAD + (Irreps(i).dim,) for i in in_irreps)
    result = run_layer_test(
        cls,
        dict(kwargs, layout="ir_mul", dtype=F64),
        shapes[0] if len(shapes) == 1 else shapes,
        group="O3",
        num_samples=1,
    )
    assert result.layer.layout == "ir_mul" and (result.projected_model is not None) == (name in BRANCHES)


@pytest.mark.parametrize("name", BRANCHES)
def test_ir_mul_penalties_equal_permuted_mul_ir(name):
    a, b, xa, xb = pair(name, relaxed=True)
    (lb,) = branch_layers(b)
    ref = [float(v) for v in a.relaxation_penalties(xa)]  # (LD, N) of the mul_ir layer's one branch
    np.testing.assert_allclose([float(v) for v in b.relaxation_penalties(xb)], ref, rtol=1e-10)
    # the branch reads x (of (x, attr)) whichever layer carries it
    closed = [float(v) for v in lb.branch_penalties(xb, method="closed_form")]
    for method in ("direct", "jvp"):
        np.testing.assert_allclose([float(v) for v in lb.branch_penalties(xb, method=method)], closed, rtol=1e-10)
    np.testing.assert_allclose(closed, ref, rtol=1e-10)
    assert closed[0] > 1.0
    # the branch projected onto the equivariant maps of the ir_mul representations has no Lie derivative
    kernel = equivariant_projection(lb.relaxation_kernel.numpy(), lb.input_rep, lb.output_rep)
    lb.relaxation_kernel.assign(kernel)
    if lb.relaxation_bias is not None:
        lb.relaxation_bias.assign(np.zeros(lb.relaxation_bias.shape))
    lie, proj = (float(v) for v in lb.branch_penalties(xb, method="closed_form"))
    assert proj > 1.0 and abs(lie) < 1e-14 * proj, (lie, proj)
    set_theta(b, 1.0)
    # SO(3) only: the projection keeps maps between equal l and opposite parity (the Lie derivative
    # does not see parity)
    assert_equivariant(b, xb, input_reps=b.equivariance_input_reps, group="SO3", num_samples=1)


@pytest.mark.parametrize("branch", ["linear", "mlp"])
def test_transfer_weights_converts_branches_between_layouts(branch):
    """transfer_weights: the ir_mul layer computes the mul_ir one (branch active); plain
    set_weights would not (the check can fail); and back again gives the original weights."""
    x = feats(IN1)
    a = O3Linear(IN1, OUT, dtype=F64, relaxation_branch=branch, relaxation_initializer="random_normal")
    b = O3Linear(IN1, OUT, dtype=F64, relaxation_branch=branch, layout="ir_mul")
    ya = a(tf.constant(x)).numpy()  # theta = 1: the branch is a large part of the output
    b(tf.constant(to_ir_mul(x, IN1)))
    assert transfer_weights(a, b) == 1
    yb = b(tf.constant(to_ir_mul(x, IN1))).numpy()
    np.testing.assert_allclose(yb, to_ir_mul(ya, OUT), rtol=1e-12, atol=1e-12)
    if branch == "mlp":  # the hidden units keep their order: only the hidden kernel's rows move
        np.testing.assert_array_equal(
            b.relaxation_hidden_kernel.numpy(), a.relaxation_hidden_kernel.numpy()[layout_permutation(IN1, "ir_mul")]
        )
    b.set_weights(a.get_weights())  # equivariant weights right, branch in the wrong coordinates
    wrong = b(tf.constant(to_ir_mul(x, IN1))).numpy()
    assert np.abs(wrong - to_ir_mul(ya, OUT)).max() > 1e-3 * np.abs(ya).max()
    transfer_weights(a, b)
    c = O3Linear(IN1, OUT, dtype=F64, relaxation_branch=branch)
    c(tf.constant(x))
    assert transfer_weights(b, c) == 1  # ir_mul -> mul_ir
    for wa, wc in zip(a.weights, c.weights):
        np.testing.assert_array_equal(wc.numpy(), wa.numpy(), err_msg=wa.path)


def test_transfer_weights_needs_the_same_architecture():
    a, b = O3Linear(IN1, OUT), O3Linear(IN1, OUT, relaxed=False, layout="ir_mul")
    x = feats(IN1).astype("float32")
    a(x), b(x)
    with pytest.raises(ValueError, match="1 relaxed layers in the source, 0 in the target"):
        transfer_weights(a, b)
    c, d = O3Linear(IN1, OUT), O3Linear(IN1, GATED, layout="ir_mul")
    c(x), d(x)
    with pytest.raises(ValueError):
        transfer_weights(c, d)


# --------------------------------------------------------------------------- 4. config
@pytest.mark.parametrize("name", ["tp", "tp_gate", "norm_batch"])
def test_config_keeps_layout_and_defaults_to_mul_ir(name):
    _, b, _, xb = pair(name)
    config = b.get_config()
    assert config["layout"] == "ir_mul"
    clone = type(b).from_config(config)
    assert clone.layout == "ir_mul"
    old = dict(config)
    del old["layout"]  # a layer saved before layouts existed
    assert type(b).from_config(old).layout == "mul_ir"
    if name == "tp_gate":
        assert b.tensor_product.layout == b.gate.layout == "ir_mul"


def test_bad_layout_is_named():
    with pytest.raises(ValueError, match=r"O3TensorProduct 'tp'.*layout must be one of \('mul_ir', 'ir_mul'\)"):
        O3TensorProduct(IN1, ATTR, OUT, layout="irmul", name="tp")
    with pytest.raises(ValueError, match="IrrepsRep: layout must be one of"):
        IrrepsRep(IN1, "uvw")
