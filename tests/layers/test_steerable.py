"""Steerable O(3) layers (docs/method.md sections 2, 3, 6).

Covers O3Linear, O3TensorProduct, Gate, O3TensorProductGate, SteerableNorm:

1. O(3) equivariance including reflections (plain layers; relaxed layers at theta = 0 with
   random branch weights) and a negative control (relaxed, theta = 1: not equivariant);
   parity matters (1o (x) 1o -> 1e);
2. agreement with independent float64 NumPy implementations (per-path CG einsums);
3. Lie penalty: closed form == direct == JVP == tape; zero for an equivariant branch;
4. ``get_config`` round trip, ``.keras`` save/load (theta survives), projection;
5. errors.

Layers run in float64 (``dtype="float64"``) so the equivariance tolerance is ~1e-9.
"""

import functools
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from tp_reference import reference_tp

from keras_relaxeq.groups import Irreps, IrrepsRep, fully_connected_tp_num_weights
from keras_relaxeq.layers import collect_relaxation_penalties, get_theta, relaxed_layers, set_theta
from keras_relaxeq.layers.steerable import (
    Gate,
    O3Linear,
    O3TensorProduct,
    O3TensorProductGate,
    SteerableNorm,
    gate_irreps,
)
from keras_relaxeq.testing import assert_equivariant, check_equivariance, run_layer_test

IN1 = "2x0e+2x1o+1x1e"  # dim 11; 1e so that 0o and parity-flipped paths exist
ATTR = "1x0e+1x1o"  # spherical harmonics up to l = 1
OUT = "2x0e+1x0o+2x1o+1x1e+1x2e"  # dim 17
GATED_OUT = "2x0e+2x1o+1x1e+1x0o"  # leading 0e are the scalars, the rest (0o included) is gated
LEAD = (3, 4)  # [batch, nodes]; assert_equivariant's first O(3) draw (seed 0) has 2 improper, 1 proper element
O3_DRAWS = 1
F64 = "float64"


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(4321)


def feats(irreps, seed=0, lead=LEAD, dtype=F64):
    return tf.constant(np.random.default_rng(seed).normal(size=lead + (Irreps(irreps).dim,)), dtype=dtype)


def randomize(layer, names, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    hits = 0
    for w in layer.weights:
        if w.path.split("/")[-1] in names:
            w.assign(scale * rng.normal(size=tuple(w.shape)))
            hits += 1
    return hits


def np_(t):
    return np.asarray(keras.ops.convert_to_numpy(t), dtype=np.float64)


# --------------------------------------------------------------------------- catalogue
# name -> (layer class, constructor arguments, irreps of the inputs, has its own / a nested relaxation branch)
SPECS = {
    "linear": (O3Linear, dict(irreps_in=IN1, irreps_out="3x0e+1x1o+2x1e+1x0o"), (IN1,), True),
    "tp": (O3TensorProduct, dict(irreps_in1=IN1, irreps_in2=ATTR, irreps_out=OUT), (IN1, ATTR), True),
    "tp_no_attr": (O3TensorProduct, dict(irreps_in1=IN1, irreps_in2=None, irreps_out=OUT), (IN1,), True),
    "tp_gate": (O3TensorProductGate, dict(irreps_in1=IN1, irreps_in2=ATTR, irreps_out=GATED_OUT), (IN1, ATTR), True),
    "tp_gate_after": (
        O3TensorProductGate,
        dict(irreps_in1=IN1, irreps_in2=ATTR, irreps_out=GATED_OUT, relaxation_placement="after_gate"),
        (IN1, ATTR),
        True,
    ),
    "tp_gate_scalars": (
        O3TensorProductGate,
        dict(irreps_in1=IN1, irreps_in2=ATTR, irreps_out="3x0e"),
        (IN1, ATTR),
        True,
    ),
    "gate": (
        Gate,
        dict(irreps_scalars="2x0e", irreps_gated="2x1o+1x1e+1x2e+1x0o"),
        ("2x0e+5x0e+2x1o+1x1e+1x2e+1x0o",),
        False,
    ),
    "norm_instance": (SteerableNorm, dict(irreps=OUT), (OUT,), False),
    "norm_instance_max_norm": (SteerableNorm, dict(irreps=OUT, reduce="max", normalization="norm"), (OUT,), False),
    "norm_batch": (SteerableNorm, dict(irreps=OUT, mode="batch"), (OUT,), False),
}


def _inputs_of(irreps):
    """``inputs(seed)``: one tensor for one input, ``(x, attr)`` for two."""
    if len(irreps) == 1:
        return lambda s=0: feats(irreps[0], s)
    return lambda s=0: tuple(feats(i, s + k) for k, i in enumerate(irreps))


# name -> (factory(**kw), inputs(seed) , has its own / a nested relaxation branch)
CASES = {
    name: (functools.partial(cls, **kwargs), _inputs_of(irreps), branch)
    for name, (cls, kwargs, irreps, branch) in SPECS.items()
}
BRANCH_CASES = [n for n, c in CASES.items() if c[2]]


def built(name, seed=0, **kw):
    factory, make_inputs, _ = CASES[name]
    layer = factory(dtype=F64, **kw)
    x = make_inputs(seed)
    layer(x)
    return layer, x


def reps_of(layer):
    return layer.equivariance_input_reps


def randomize_affine(layer, seed=1):
    """Random affine weights / running statistics (kept positive) in norm layers."""
    rng = np.random.default_rng(seed)
    for w in layer.weights:
        name = w.path.split("/")[-1]
        if name in ("weight", "bias", "running_mean"):
            w.assign(rng.normal(size=tuple(w.shape)))
        elif name == "running_var":
            w.assign(rng.uniform(0.5, 2.0, size=tuple(w.shape)))


# --------------------------------------------------------------------------- 1. equivariance
EQUIVARIANCE_PARAMS = [
    pytest.param(name, relaxed, id=f"{name}-{'relaxed_theta0' if relaxed else 'plain'}")
    for name, (_, _, branch) in CASES.items()
    for relaxed in ((False, True) if branch else (False,))
]


@pytest.mark.parametrize("name, relaxed", EQUIVARIANCE_PARAMS)
def test_o3_equivariant(name, relaxed):
    layer, x = built(name, relaxed=relaxed)
    randomize_affine(layer)
    if relaxed:
        assert randomize(layer, ("relaxation_kernel", "relaxation_bias"), seed=2) > 0
        assert set_theta(layer, 0.0) > 0
    report = assert_equivariant(layer, x, input_reps=reps_of(layer), group="O3", num_samples=O3_DRAWS)
    assert report.scale > 1e-2


@pytest.mark.parametrize("name", list(SPECS))
def test_run_layer_test(name):
    """Build, call, config / serialization / .keras round trips, relaxed -> project == theta = 0 == plain,
    zero penalties of an equivariant branch, O(3) equivariance with reflections (and the negative control)."""
    cls, kwargs, irreps, branch = SPECS[name]
    shapes = tuple(LEAD + (Irreps(i).dim,) for i in irreps)
    result = run_layer_test(
        cls,
        dict(kwargs, dtype=F64),
        shapes[0] if len(shapes) == 1 else shapes,
        group="O3",
        num_samples=O3_DRAWS,
        negative_control=branch,
    )
    assert (result.projected_model is not None) == branch
    assert result.report.passed and result.report.scale > 1e-2


@pytest.mark.parametrize("training", [False, True])
def test_batch_norm_equivariant_in_both_modes(training):
    layer, x = built("norm_batch")
    randomize_affine(layer)
    assert_equivariant(layer, x, group="O3", num_samples=O3_DRAWS, training=training)


def test_reflection_draws_cover_inversion():
    """The explicit inversion -I: 1e outputs of 1o (x) 1o are unchanged, 1o outputs flip sign."""
    layer = O3TensorProduct("1x1o", "1x1o", "1x1e+1x0e+1x2e", dtype=F64)
    x, y = feats("1x1o", 0), feats("1x1o", 1)
    out = np_(layer((x, y)))
    out_inv = np_(layer((-x, -y)))
    np.testing.assert_allclose(out_inv, out, atol=1e-12)
    assert np.abs(out).max() > 1e-2
    lin = O3Linear("1x1o+1x1e", "1x1o+1x1e", dtype=F64)
    v = feats("1x1o+1x1e", 2)
    flipped = tf.concat([-v[..., :3], v[..., 3:]], -1)
    out = np_(lin(v))
    np.testing.assert_allclose(np_(lin(flipped)), np.concatenate([-out[..., :3], out[..., 3:]], -1), atol=1e-12)


def test_parity_matters():
    """1o (x) 1o -> 1e: declared as 1e it is O(3)-equivariant; mislabelled 1o it passes SO(3) only."""
    layer = O3TensorProduct("1x1o", "1x1o", "1x1e", dtype=F64)
    inputs = (feats("1x1o", 0, lead=(8, 2)), feats("1x1o", 1, lead=(8, 2)))
    layer(inputs)
    assert_equivariant(layer, inputs, input_reps=reps_of(layer), group="O3", num_samples=2)
    wrong = IrrepsRep("1x1o")
    assert_equivariant(layer, inputs, input_reps=reps_of(layer), output_reps=wrong, group="SO3")
    report = check_equivariance(layer, inputs, input_reps=reps_of(layer), output_reps=wrong, group="O3", num_samples=1)
    assert not report.passed
    # no path 1o (x) 1o -> 1o: weight-free, output zero
    assert O3TensorProduct("1x1o", "1x1o", "1x1o").weight_numel == 0


@pytest.mark.parametrize("name", BRANCH_CASES)
def test_negative_control_theta_one(name):
    layer, x = built(name, relaxed=True)
    randomize(layer, ("relaxation_kernel", "relaxation_bias"), seed=3)
    set_theta(layer, 1.0)
    report = check_equivariance(layer, x, input_reps=reps_of(layer), group="O3", num_samples=O3_DRAWS)
    assert not report.passed, report


def test_float32_default_dtype():
    layer = O3TensorProductGate(IN1, ATTR, GATED_OUT, relaxed=True)
    inputs = (feats(IN1, 0, dtype="float32"), feats(ATTR, 1, dtype="float32"))
    out = layer(inputs)
    assert out.dtype == tf.float32 and out.shape == LEAD + (Irreps(GATED_OUT).dim,)
    set_theta(layer, 0.0)
    assert_equivariant(layer, inputs, input_reps=reps_of(layer), group="O3", num_samples=O3_DRAWS)


# --------------------------------------------------------------------------- 2. reference implementations
@pytest.mark.parametrize("tp_rescale", [True, False])
def test_tensor_product_matches_numpy(tp_rescale):
    layer = O3TensorProduct(IN1, ATTR, OUT, tp_rescale=tp_rescale, relaxed=False, dtype=F64)
    x, y = feats(IN1, 0), feats(ATTR, 1)
    out = np_(layer((x, y)))
    assert layer.weight_numel == fully_connected_tp_num_weights(IN1, ATTR, OUT)
    ref = reference_tp(IN1, ATTR, OUT, np_(layer.kernel), np_(layer.bias), np_(x), np_(y), tp_rescale)
    np.testing.assert_allclose(out, ref, atol=1e-12)
    # no attributes == attributes fixed to 1x0e = 1
    single = O3TensorProduct(IN1, None, OUT, tp_rescale=tp_rescale, relaxed=False, dtype=F64)
    single(x)
    assert single.weight_numel == fully_connected_tp_num_weights(IN1, "1x0e", OUT)
    ones = np.ones(LEAD + (1,))
    ref = reference_tp(IN1, "1x0e", OUT, np_(single.kernel), np_(single.bias), np_(x), ones, tp_rescale)
    np.testing.assert_allclose(np_(single(x)), ref, atol=1e-12)


def test_tensor_product_segnn_initialisation():
    """Weights U(-1/sqrt(fan_in), 1/sqrt(fan_in)) per output block (tp_rescale); U(-1, 1) without."""
    layer = O3TensorProduct("8x0e+4x1o", ATTR, "6x0e+3x1o", dtype=F64)
    layer((feats("8x0e+4x1o", 0), feats(ATTR, 1)))
    k = np_(layer.kernel)
    plan = layer.plan
    assert np.all(np.abs(k) <= plan.init_scales + 1e-12)
    for sl, (_i1, _i2, io) in zip(plan.path_slices, plan.instructions):
        bound = 1 / math.sqrt(plan.fan_in[io])
        assert np.abs(k[sl]).max() > 0.3 * bound  # really drawn up to the bound
    # fan-in of 0e outputs: 8x0e(x)0e + 4x1o(x)1o = 8 + 4
    assert np.abs(np_(layer.bias)).max() <= 1 / math.sqrt(12) + 1e-12
    plain = O3TensorProduct("8x0e+4x1o", ATTR, "6x0e+3x1o", tp_rescale=False, dtype=F64)
    plain((feats("8x0e+4x1o", 0), feats(ATTR, 1)))
    assert np.abs(np_(plain.kernel)).max() > 1 / math.sqrt(12)


def test_linear_matches_numpy():
    irreps_in, irreps_out = "3x0e+2x1o+1x2e", "2x0e+1x1o+1x1e+1x0e"
    layer = O3Linear(irreps_in, irreps_out, relaxed=False, dtype=F64)
    x = feats(irreps_in, 0)
    randomize(layer, ("bias",), seed=1)
    out = np_(layer(x))
    ins, outs = Irreps(irreps_in), Irreps(irreps_out)
    kernel, bias = np_(layer.kernel), np_(layer.bias)
    # e3nn Linear weight order: instructions (i_in, i_out) for i_in, for i_out with equal irreps
    offsets, off = {}, 0
    for i, (mi, ri) in enumerate(ins):
        for o, (mo, ro) in enumerate(outs):
            if ri == ro:
                offsets[i, o] = off
                off += mi * mo
    ref, ib = [], 0
    xn = np_(x)
    for o, (_so, (mo, ro)) in enumerate(zip(outs.slices(), outs)):
        block = np.zeros(LEAD + (mo, ro.dim))
        fan = sum(m for m, r in ins if r == ro)
        for i, (si, (mi, ri)) in enumerate(zip(ins.slices(), ins)):
            if ri != ro:
                continue
            w = kernel[offsets[i, o] : offsets[i, o] + mi * mo].reshape(mi, mo)
            block += np.einsum("...ui,uw->...wi", xn[..., si].reshape(LEAD + (mi, ri.dim)), w) / math.sqrt(fan)
        if ro.is_scalar():
            block += bias[ib : ib + mo, None]
            ib += mo
        ref.append(block.reshape(LEAD + (-1,)))
    assert off == kernel.size == layer.weight_numel == 3 * 2 + 2 * 1 + 3 * 1
    np.testing.assert_allclose(out, np.concatenate(ref, -1), atol=1e-12)
    # 1e output fed by no input irrep: zero
    np.testing.assert_allclose(out[..., outs.slices()[2]], 0.0)


def test_gate_matches_numpy():
    layer = Gate("2x0e", "1x1o+2x2e", dtype=F64)
    x = feats(layer.irreps_in, 0)
    out = np_(layer(x))
    xn = np_(x)
    z = np.random.default_rng(0).normal(size=2_000_000)
    silu = lambda t: t / (1 + np.exp(-t))  # noqa: E731
    sigmoid = lambda t: 1 / (1 + np.exp(-t))  # noqa: E731
    c_s, c_g = 1 / np.sqrt(np.mean(silu(z) ** 2)), 1 / np.sqrt(np.mean(sigmoid(z) ** 2))
    assert layer.scalar_constant == pytest.approx(c_s, rel=3e-3)
    assert layer.gate_constant == pytest.approx(c_g, rel=3e-3)
    c_s, c_g = layer.scalar_constant, layer.gate_constant
    gates = c_g * sigmoid(xn[..., 2:5])
    ref = np.concatenate(
        [
            c_s * silu(xn[..., :2]),
            xn[..., 5:8] * gates[..., :1],
            xn[..., 8:13] * gates[..., 1:2],
            xn[..., 13:18] * gates[..., 2:3],
        ],
        -1,
    )
    np.testing.assert_allclose(out, ref, atol=1e-12)
    assert layer.irreps_in == "2x0e+3x0e+1x1o+2x2e" and layer.irreps_out == "2x0e+1x1o+2x2e"


def test_gate_irreps_split_like_segnn():
    scalars, gated, tp_out = gate_irreps("32x0e+32x1o")
    assert (scalars, gated, tp_out) == (Irreps("32x0e"), Irreps("32x1o"), Irreps("64x0e+32x1o"))
    scalars, gated, tp_out = gate_irreps("4x0e")
    assert gated.dim == 0 and tp_out == "4x0e"
    layer = O3TensorProductGate("4x0e", None, "4x0e", dtype=F64)
    x = feats("4x0e", 0)
    tp_out = layer.tensor_product(x)
    np.testing.assert_allclose(np_(layer(x)), np_(tf.nn.silu(tp_out)), atol=1e-12)  # SEGNN: plain SiLU


def test_norm_statistics():
    layer = SteerableNorm(OUT, dtype=F64)
    x = feats(OUT, 0) * 3.0 + 1.0
    out = np_(layer(x))
    irreps = Irreps(OUT)
    for sl, (mul, ir) in zip(irreps.slices(), irreps):
        block = out[..., sl].reshape(LEAD + (mul, ir.dim))
        if ir.l == 0:
            np.testing.assert_allclose(block.mean(axis=1), 0.0, atol=1e-12)  # centred per sample
        sq = (block**2).mean(-1).mean(axis=1)  # component norm averaged over nodes
        np.testing.assert_allclose(sq, 1.0, rtol=1e-4)


def test_batch_norm_running_statistics():
    layer = SteerableNorm("2x0e+1x1o", mode="batch", momentum=0.5, dtype=F64)
    x = feats("2x0e+1x1o", 0) * 2.0 + 0.5
    layer(x, training=True)
    xn = np_(x)
    mean = xn[..., :2].reshape(-1, 2).mean(0)
    np.testing.assert_allclose(np_(layer.running_mean), 0.5 * mean, atol=1e-12)
    var_s = ((xn[..., :2] - mean) ** 2).reshape(-1, 2).mean(0)
    var_v = (xn[..., 2:] ** 2).mean(-1).reshape(-1).mean()
    np.testing.assert_allclose(np_(layer.running_var), 0.5 + 0.5 * np.r_[var_s, var_v], atol=1e-12)
    # inference uses the running statistics
    out = np_(layer(x, training=False))
    expect = (xn[..., :2] - np_(layer.running_mean)) / np.sqrt(np_(layer.running_var)[:2] + 1e-5)
    np.testing.assert_allclose(out[..., :2], expect, atol=1e-12)


# --------------------------------------------------------------------------- 3. penalties
def own_branch_layers(layer):
    return relaxed_layers(layer)


@pytest.mark.parametrize("name", BRANCH_CASES)
def test_lie_closed_form_equals_autodiff(name):
    layer, x = built(name, relaxed=True)
    randomize(layer, ("relaxation_kernel", "relaxation_bias"), seed=5)
    branches = own_branch_layers(layer)
    assert len(branches) == 1
    branch_layer = branches[0]
    closed = [float(v) for v in branch_layer.branch_penalties(x, method="closed_form")]
    jvp = [float(v) for v in branch_layer.branch_penalties(x, method="jvp")]
    direct = [float(v) for v in branch_layer.branch_penalties(x, method="direct")]
    assert closed[0] > 1.0 and closed[1] > 1.0
    np.testing.assert_allclose(jvp, closed, rtol=1e-10)
    np.testing.assert_allclose(direct, closed, rtol=1e-10)
    if name in ("tp", "tp_gate"):  # (kept to two cases for speed)
        tape = [float(v) for v in branch_layer.branch_penalties(x, method="tape")]
        np.testing.assert_allclose(tape, closed, rtol=1e-10)
        # the layer's total (collector) is the branch's, and the tuple input feeds only x to the branch
        total = [float(v) for v in layer.relaxation_penalties(x)]
        np.testing.assert_allclose(total, closed, rtol=1e-10)


def test_lie_penalty_zero_for_equivariant_branch():
    # identity on irreps_in == irreps_out, bias only on 0e: equivariant branch
    layer = O3Linear(IN1, IN1, relaxed=True, dtype=F64)
    x = feats(IN1, 0)
    layer(x)
    layer.relaxation_kernel.assign(np.eye(Irreps(IN1).dim))
    bias = np.zeros(Irreps(IN1).dim)
    bias[:2] = [0.7, -1.3]
    layer.relaxation_bias.assign(bias)
    for method in ("closed_form", "direct", "jvp"):
        lie, proj = (float(v) for v in layer.branch_penalties(x, method=method))
        assert abs(lie) < 1e-18 * proj and proj > 1.0, (method, lie, proj)
    # a tensor product whose branch is an equivariant linear map irreps_in1 -> irreps_out
    tp = O3TensorProduct(IN1, ATTR, OUT, relaxed=True, dtype=F64)
    inputs = (x, feats(ATTR, 1))
    tp(inputs)
    lin = O3Linear(IN1, OUT, dtype=F64)
    lin(x)
    randomize(lin, ("bias",), seed=3)
    tp.relaxation_kernel.assign(lin.dense_matrix())
    tp.relaxation_bias.assign(lin.dense_bias())
    for method in ("closed_form", "direct", "jvp"):
        lie, proj = (float(v) for v in tp.branch_penalties(inputs, method=method))
        assert abs(lie) < 1e-18 * proj and proj > 1.0, (method, lie, proj)
    # the equivariant branch keeps the relaxed layer equivariant at theta = 1
    set_theta(tp, 1.0)
    assert_equivariant(tp, inputs, input_reps=reps_of(tp), group="O3", num_samples=O3_DRAWS)
    # ... and a bias on a non-scalar output does not
    bad = np.zeros(Irreps(OUT).dim)
    bad[5] = 1.0  # inside 2x1o
    tp.relaxation_bias.assign(bad)
    assert float(tp.branch_penalties(inputs, method="closed_form")[0]) > 1.0


def test_penalties_only_inside_collector():
    layer, x = built("tp_gate", relaxed=True)
    randomize(layer, ("relaxation_kernel",), seed=1)
    with collect_relaxation_penalties() as collector:
        layer(x)
    assert len(collector) == 1 and collector.layers[0] is layer.tensor_product
    plain, _ = built("tp_gate", relaxed=False)
    assert not relaxed_layers(plain)


# --------------------------------------------------------------------------- 4. serialization
@pytest.mark.parametrize("name", list(CASES))
def test_config_round_trip(name):
    layer, x = built(
        name,
        relaxed=CASES[name][2],
        **({"relaxation_initializer": keras.initializers.RandomNormal(stddev=1e-4)} if CASES[name][2] else {}),
    )
    randomize_affine(layer)
    config = layer.get_config()
    for key in ("irreps", "irreps_in", "irreps_in1", "irreps_in2", "irreps_out", "irreps_scalars", "irreps_gated"):
        if config.get(key) is not None:
            assert isinstance(config[key], str)
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    clone(x)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(np_(clone(x)), np_(layer(x)), atol=1e-12)


@pytest.mark.parametrize("name", ["tp_gate", "linear", "norm_batch"])
def test_keras_file_round_trip(name, tmp_path):
    factory, make_inputs, branch = CASES[name]
    layer = factory(dtype=F64, **({"relaxed": True} if branch else {}))
    values = make_inputs(0)
    flat = tf.nest.flatten(values)
    inputs = [keras.Input(shape=v.shape[1:], dtype=F64) for v in flat]
    model = keras.Model(inputs, layer(tuple(inputs) if len(inputs) > 1 else inputs[0]))
    model(flat)
    if branch:
        randomize(model, ("relaxation_kernel", "relaxation_bias"), seed=2)
        set_theta(model, 0.3)
    randomize_affine(model)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(np_(loaded(flat)), np_(model(flat)), atol=1e-12)
    if branch:
        assert get_theta(loaded) == pytest.approx(0.3)


def test_gate_branch_placement():
    """``relaxation_placement="after_gate"``: ``gate(TP(x, attr)) + theta (W x + b)``, the branch
    the layer's own (the tensor product has none); ``"before_gate"`` puts it inside the gate."""
    after, x = built("tp_gate_after", relaxed=True)
    assert own_branch_layers(after) == [after] and not after.tensor_product.relaxed
    assert randomize(after, ("relaxation_kernel", "relaxation_bias"), seed=4) == 2
    set_theta(after, 0.7)
    flat_x = np_(x[0])
    expected = np_(after.gate(after.tensor_product(x))) + 0.7 * (
        flat_x @ np_(after.relaxation_kernel) + np_(after.relaxation_bias)
    )
    np.testing.assert_allclose(np_(after(x)), expected, atol=1e-12)
    assert after.relaxation_kernel.shape == (Irreps(IN1).dim, Irreps(GATED_OUT).dim)

    before, _ = built("tp_gate", relaxed=True)
    assert own_branch_layers(before) == [before.tensor_product]
    assert before.tensor_product.relaxation_kernel.shape[1] == Irreps(before.irreps_tp_out).dim
    plain = O3TensorProductGate(IN1, ATTR, GATED_OUT, relaxation_placement="after_gate", relaxed=False, dtype=F64)
    plain(x)
    assert (
        not relaxed_layers(plain)
        and plain.count_params()
        == after.count_params() - sum(int(np.prod(v.shape)) for v in after.relaxation_variables) - 1
    )  # branch W, b and theta
    with pytest.raises(ValueError, match="relaxation_placement must be one of"):
        O3TensorProductGate(IN1, ATTR, GATED_OUT, relaxation_placement="inside")


def test_projection_of_steerable_model():
    from keras_relaxeq.export import project

    xi, ai = keras.Input((4, Irreps(IN1).dim), dtype=F64), keras.Input((4, Irreps(ATTR).dim), dtype=F64)
    h = O3TensorProductGate(
        IN1,
        ATTR,
        "3x0e+2x1o",
        name="tpg",
        dtype=F64,
        relaxation_initializer=keras.initializers.RandomNormal(stddev=1e-4),
    )((xi, ai))
    h = SteerableNorm("3x0e+2x1o", name="norm", dtype=F64)(h)
    out = O3TensorProduct("3x0e+2x1o", ATTR, "1x1o", name="head", dtype=F64)((h, ai))
    model = keras.Model([xi, ai], out)
    inputs = [feats(IN1, 0), feats(ATTR, 1)]
    model(inputs)
    randomize(model, ("relaxation_kernel", "relaxation_bias"), seed=3)
    set_theta(model, 0.0)
    plain_model = project(model)
    assert not relaxed_layers(plain_model)
    np.testing.assert_allclose(np_(plain_model(inputs)), np_(model(inputs)), atol=1e-12)
    n_branch = sum(int(np.prod(v.shape)) for l in relaxed_layers(model) for v in l.relaxation_variables + [l.theta])
    assert plain_model.count_params() == model.count_params() - n_branch


def test_training_steps_keep_projected_model_equivariant():
    """A few RelaxedModel.fit steps (penalties in the loss), then the projected model is O(3)-equivariant."""
    from keras_relaxeq.export import project
    from keras_relaxeq.training.model import RelaxedModel

    xi, ai = keras.Input((4, Irreps(IN1).dim), dtype=F64), keras.Input((4, Irreps(ATTR).dim), dtype=F64)
    h = O3TensorProductGate(
        IN1, ATTR, "3x0e+2x1o", dtype=F64, relaxation_initializer=keras.initializers.RandomNormal(stddev=1e-4)
    )((xi, ai))
    h = SteerableNorm("3x0e+2x1o", mode="batch", dtype=F64)(h)
    out = O3TensorProduct("3x0e+2x1o", ATTR, "1x1o", dtype=F64)((h, ai))
    model = RelaxedModel([xi, ai], out)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", run_eagerly=True)  # no tracing: fast test
    inputs = [feats(IN1, 0, lead=(6, 4)), feats(ATTR, 1, lead=(6, 4))]
    target = feats("1x1o", 2, lead=(6, 4))
    history = model.fit(inputs, target, batch_size=3, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert {"lie_penalty", "projection_penalty"} <= set(history.history)
    set_theta(model, 0.0)
    plain_model = project(model)
    np.testing.assert_allclose(np_(plain_model(inputs)), np_(model(inputs)), atol=1e-12)
    assert_equivariant(
        plain_model,
        tuple(inputs),
        input_reps=(IrrepsRep(IN1), IrrepsRep(ATTR)),
        output_reps=IrrepsRep("1x1o"),
        group="O3",
        num_samples=O3_DRAWS,
    )


# --------------------------------------------------------------------------- 5. errors
def test_feature_dimension_mismatch_names_both():
    with pytest.raises(ValueError, match=r"feature dimension 10 .*'2x0e\+2x1o\+1x1e' have dimension 11"):
        O3Linear(IN1, OUT)(tf.zeros((2, 10)))
    with pytest.raises(ValueError, match=r"input attr has feature dimension 3 .*'1x0e\+1x1o' have dimension 4"):
        O3TensorProduct(IN1, ATTR, OUT)((tf.zeros((2, 11)), tf.zeros((2, 3))))


@pytest.mark.parametrize("bad", ["2x1q", "x0e", "1.5x0e", "2x-1e"])
def test_bad_irreps_string(bad):
    with pytest.raises(ValueError, match=r"cannot parse irreps_out=.*as Irreps"):
        O3TensorProduct(IN1, ATTR, bad)
    with pytest.raises(ValueError, match=r"cannot parse irreps_in="):
        O3Linear(bad, OUT)


def test_input_structure_errors():
    with pytest.raises(ValueError, match=r"takes two inputs \(x, attr\)"):
        O3TensorProduct(IN1, ATTR, OUT)(tf.zeros((2, 11)))
    with pytest.raises(ValueError, match="takes one input"):
        O3TensorProduct(IN1, None, OUT)((tf.zeros((2, 11)), tf.zeros((2, 4))))


def test_other_errors():
    with pytest.raises(ValueError, match="odd scalars"):
        Gate("1x0o", "1x1o")
    Gate("1x0o", "", scalar_activation="tanh")  # odd activation keeps parity
    with pytest.raises(ValueError, match="must be scalars"):
        Gate("1x1o", "1x1o")
    with pytest.raises(ValueError, match="mode must be one of"):
        SteerableNorm(OUT, mode="group")
    with pytest.raises(ValueError, match="mode='instance'.*needs inputs"):
        SteerableNorm(OUT)(tf.zeros((2, 17)))
    with pytest.raises(ValueError, match="irreps_out is required"):
        O3TensorProduct(IN1, ATTR)
    with pytest.raises(ValueError, match="dimension 0"):
        O3Linear("", OUT)
