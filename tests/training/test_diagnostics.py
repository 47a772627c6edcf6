"""``relaxation_report``: per-branch sizes of the relaxation, checked against independent
computations (the branch from relaxed - projected outputs, its Lie derivative by central finite
differences of rotations in float64)."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_relaxeq as kr
from keras_relaxeq.groups import equivariant_projection
from keras_relaxeq.layers import VNLinear, set_theta
from keras_relaxeq.layers.relaxation import relaxed_layers
from keras_relaxeq.training import (
    branch_gradient_report,
    format_branch_gradient_report,
    format_relaxation_report,
    relaxation_report,
)

SHAPE = (2, 16, 4, 3)  # [batch, points, channels, 3]
THETA = 0.7


def rotation(axis: int, angle: float) -> np.ndarray:
    """``exp(angle * L_axis)``: the rotation about coordinate axis ``axis``."""
    c, s = math.cos(angle), math.sin(angle)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def two_layer_model(dtype="float64"):
    inputs = keras.Input(SHAPE[1:], dtype=dtype)
    h = VNLinear(5, relaxed=True, dtype=dtype, name="first")(inputs)
    outputs = VNLinear(3, relaxed=True, dtype=dtype, name="second")(h)
    model = kr.RelaxedModel(inputs, outputs)
    rng = np.random.default_rng(0)
    for w in model.weights:
        if w.path.split("/")[-1] in ("relaxation_kernel", "relaxation_bias"):
            w.assign(rng.normal(size=tuple(w.shape)))
    set_theta(model, THETA)
    return model


def layer_io(model, x):
    """Inputs and outputs of each VNLinear, and the layers, for the independent computations."""
    first, second = model.get_layer("first"), model.get_layer("second")
    h = first(x)
    return [(first, x), (second, h)]


def branch_output(layer, x):
    """``R(x)`` of a relaxed layer from its outputs at theta and at 0 (no internals used)."""
    set_theta(layer, THETA)
    relaxed = layer(x).numpy()
    set_theta(layer, 0.0)
    plain = layer(x).numpy()
    set_theta(layer, THETA)
    return (relaxed - plain) / THETA, plain


def lie_derivative_fd(layer, x, eps=1e-5):
    """``sum_k || d/dt g_k(-t) R(g_k(t) x) |_0 ||^2`` by central differences (rotations act on the last axis)."""
    total = 0.0
    for axis in range(3):

        def conj(t):
            g = rotation(axis, t)
            r, _ = branch_output(layer, tf.constant(x.numpy() @ g.T))
            return r @ g  # g^{-1} R(g x) with row vectors: (R) @ (g^{-1})^T = R @ g

        d = (conj(eps) - conj(-eps)) / (2 * eps)
        total += float(np.sum(d**2))
    return total


def test_report_matches_independent_computation():
    model = two_layer_model()
    x = tf.constant(np.random.default_rng(1).normal(size=SHAPE))
    rows = relaxation_report(model, x)
    assert [r["layer"] for r in rows][-1] == "total" and len(rows) == 3
    points = SHAPE[0] * SHAPE[1]
    totals = dict(r=0.0, e=0.0, lie=0.0)
    for row, (layer, inp) in zip(rows, layer_io(model, x)):
        assert layer.name in row["layer"]
        assert row["points"] == points
        assert row["theta"] == pytest.approx(THETA)
        r, plain = branch_output(layer, inp)
        assert row["r_rms"] == pytest.approx(math.sqrt(np.sum(r**2) / points), rel=1e-9)
        assert row["branch_rms"] == pytest.approx(THETA * row["r_rms"], rel=1e-9)
        assert row["equivariant_rms"] == pytest.approx(math.sqrt(np.sum(plain**2) / points), rel=1e-9)
        lie = lie_derivative_fd(layer, inp)
        assert row["lie_rms"] == pytest.approx(math.sqrt(lie / points), rel=1e-5)
        assert row["lie_over_r"] == pytest.approx(math.sqrt(lie / np.sum(r**2)), rel=1e-5)
        assert row["lie_rms"] > 0.1 * row["r_rms"]  # random branches are far from equivariant
        totals["r"] += np.sum(r**2)
        totals["e"] += np.sum(plain**2)
        totals["lie"] += lie
    total = rows[-1]
    assert total["points"] == 2 * points
    assert total["sqrt_n"] == pytest.approx(math.sqrt(totals["r"]), rel=1e-9)
    assert total["sqrt_ld"] == pytest.approx(math.sqrt(totals["lie"]), rel=1e-5)
    assert total["equivariant_rms"] == pytest.approx(math.sqrt(totals["e"] / (2 * points)), rel=1e-9)
    # the totals are what the model's own penalty collector sums (RelaxedModel's loss terms)
    with kr.collect_relaxation_penalties() as collector:
        model(x, training=False)
    ld, n = (float(v) for v in collector.totals(dtype=tf.float64))
    assert total["sqrt_ld"] == pytest.approx(math.sqrt(ld), rel=1e-9)
    assert total["sqrt_n"] == pytest.approx(math.sqrt(n), rel=1e-9)


def test_dataset_batches_add_up_to_one_batch():
    model = two_layer_model()
    x = np.random.default_rng(2).normal(size=(4, *SHAPE[1:]))
    y = np.zeros((4, SHAPE[1], 3, 3))
    whole = relaxation_report(model, tf.constant(x))
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(2)
    batched = relaxation_report(model, data, num_batches=None)
    first_only = relaxation_report(model, data, num_batches=1)
    for a, b in zip(whole, batched):
        assert a["points"] == b["points"]
        for key in ("equivariant_rms", "branch_rms", "r_rms", "lie_rms", "sqrt_ld", "sqrt_n"):
            assert b[key] == pytest.approx(a[key], rel=1e-9), key
    assert first_only[0]["points"] == whole[0]["points"] // 2


def test_theta_zero_branch_contributes_nothing_and_table_renders():
    model = two_layer_model()
    set_theta(model, 0.0)
    x = tf.constant(np.random.default_rng(3).normal(size=SHAPE))
    rows = relaxation_report(model, x)
    assert all(r["branch_rms"] == 0.0 and r["relative"] == 0.0 for r in rows)
    assert all(r["r_rms"] > 0 for r in rows)  # R itself is still reported
    table = format_relaxation_report(rows)
    assert table.startswith("theta = 0") and "| **total** |" in table
    assert len(table.splitlines()) == 2 + 2 + len(rows)


def test_errors():
    model = two_layer_model()
    with pytest.raises(ValueError, match="no relaxed layers"):
        relaxation_report(kr.project(model), tf.zeros(SHAPE, tf.float64))
    empty = tf.data.Dataset.from_tensor_slices(np.zeros((0, *SHAPE[1:])))
    with pytest.raises(ValueError, match="no batch"):
        relaxation_report(model, empty.batch(2))


def test_saved_segnn_loads_after_plain_package_import(tmp_path):
    """``import keras_relaxeq`` alone registers the model classes (a SEGNN .keras file loads)."""
    import subprocess
    import sys

    model = kr.models.segnn(num_layers=1, hidden_features=8, relaxed=True)
    path = tmp_path / "segnn.keras"
    model.save(path)
    code = (
        "import keras, keras_relaxeq as kr; "
        f"m = keras.saving.load_model({str(path)!r}, compile=False); "
        "print(len(kr.layers.relaxed_layers(m)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.strip().splitlines()[-1]) == len(kr.layers.relaxed_layers(model)) > 0


def test_monitor_logs_the_report_during_fit(tmp_path):
    from keras_relaxeq.training import RelaxationMonitor, read_relaxation_log

    model = two_layer_model()
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(8, *SHAPE[1:])), rng.normal(size=(8, SHAPE[1], 3, 3))
    val = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    path = tmp_path / "relaxation.csv"
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    model.fit(
        x,
        y,
        batch_size=4,
        epochs=5,
        verbose=0,
        callbacks=[kr.ThetaScheduler("triangle", epochs=5), RelaxationMonitor(val, path, every=2)],
    )
    log = read_relaxation_log(path)
    assert log["epoch"] == [1.0, 3.0, 4.0]  # every 2nd epoch and the last
    assert log["theta"] == pytest.approx([kr.training.get_schedule("triangle", 5)(e) for e in (1, 3, 4)])
    assert log["theta"][-1] == 0.0 and log["branch_rms"][-1] == 0.0
    assert min(log["branch_rms"][:2]) > 0
    final = relaxation_report(model, val, num_batches=2)  # the weights after the last epoch
    assert log["r_rms"][-1] == pytest.approx(final[-1]["r_rms"], rel=1e-6)
    assert read_relaxation_log(path, layer=final[0]["layer"])["lie_rms"][-1] == pytest.approx(
        final[0]["lie_rms"], rel=1e-6
    )
    # a resumed run logs an epoch again: the last rows win
    set_theta(model, 0.25)
    monitor = RelaxationMonitor(val, path, every=1)
    monitor.set_model(model)
    monitor.set_params({"epochs": 5})
    monitor.on_epoch_end(3)
    assert read_relaxation_log(path)["theta"] == pytest.approx([log["theta"][0], 0.25, 0.0])
    with pytest.raises(ValueError, match="every"):
        RelaxationMonitor(val, path, every=0)


# ----------------------------------------------------------------------------- branch_gradient_report


def octahedral_rotations() -> np.ndarray:
    """The 24 rotations of the cube (signed permutation matrices with det 1).  Averaging over them
    is the SO(3) average on representations with degrees l <= 3 except l = 0 invariants, in
    particular on the maps between vector features (l <= 2)."""
    import itertools

    mats = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            m = np.zeros((3, 3))
            m[range(3), perm] = signs
            if np.linalg.det(m) > 0:
                mats.append(m)
    assert len(mats) == 24
    return np.stack(mats)


def rotated_copies(seed=4):
    """One batch and its 24 octahedral rotations (inputs and targets rotated together)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=SHAPE)
    y = rng.normal(size=(SHAPE[0], SHAPE[1], 3, 3))
    g = octahedral_rotations()
    xs = np.einsum("rij,...j->r...i", g, x)
    ys = np.einsum("rij,...j->r...i", g, y)
    return tf.data.Dataset.from_tensor_slices((xs, ys))


def test_gradient_report_split_and_the_rotation_average():
    """With equivariant branches the model is equivariant, so averaged over the rotations of a batch
    the task gradient on every branch is an equivariant map (no non-equivariant part); with random
    branches it is not.  The per-batch norms agree with a direct GradientTape computation."""
    model = two_layer_model()
    data = rotated_copies()
    rows = branch_gradient_report(model, data, loss="mse", num_batches=None)
    assert [r["layer"] for r in rows] == [r["layer"] for r in relaxation_report(model, next(iter(data))[0])[:-1]]
    assert all(r["batches"] == 24 and r["theta"] == pytest.approx(THETA) for r in rows)
    assert all(r["task_ne_coherence"] > 0.05 for r in rows)  # the relaxed model is not equivariant
    assert all(0.0 < r["kernel_equivariant_share"] < 0.7 for r in rows)
    assert all(r["penalty_ne_norm"] > 0 and r["penalty_eq_norm"] > 0 for r in rows)
    # the first batch on its own, against an independent gradient
    x, y = next(iter(data))
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(x) - y))
    grads = tape.gradient(loss, [l.relaxation_kernel for l in relaxed_layers(model)])
    one = branch_gradient_report(model, data, loss=lambda a, b: tf.square(a - b), num_batches=1)
    for row, g, layer in zip(one, grads, relaxed_layers(model)):
        g = g.numpy()
        eq = equivariant_projection(g, layer.input_rep, layer.output_rep)
        assert row["task_eq_norm"] == pytest.approx(np.linalg.norm(eq), rel=1e-9)
        assert row["task_ne_norm"] == pytest.approx(np.linalg.norm(g - eq), rel=1e-9)
        assert row["task_eq_norm"] ** 2 + row["task_ne_norm"] ** 2 == pytest.approx(np.sum(g**2), rel=1e-9)
        assert row["task_eq_coherence"] == pytest.approx(1.0) and row["task_ne_coherence"] == pytest.approx(1.0)
        assert row["task_ne_noise_coherence"] == pytest.approx(1.0)
    # equivariant branches: the non-equivariant part averages out exactly
    for layer in relaxed_layers(model):
        layer.relaxation_kernel.assign(
            equivariant_projection(layer.relaxation_kernel.numpy(), layer.input_rep, layer.output_rep)
        )
        layer.relaxation_bias.assign(np.zeros(layer.relaxation_bias.shape))  # a vector bias is not equivariant
    rows = branch_gradient_report(model, data, loss="mse", num_batches=None)
    for row in rows:
        assert row["kernel_equivariant_share"] == pytest.approx(1.0)
        assert row["task_ne_norm"] > 1e-3 * row["task_eq_norm"]  # single batches do push off the equivariant maps
        assert row["task_ne_coherence"] < 1e-9
        # the noise reference: between 1 / sqrt(24) (equal norms) and 1
        assert 1 / math.sqrt(24) - 1e-12 <= row["task_ne_noise_coherence"] < 1.0
        assert row["task_eq_coherence"] > 0.1
    table = format_branch_gradient_report(rows)
    assert "1 / sqrt(24)" in table and len(table.splitlines()) == 4 + len(rows)


def test_gradient_report_errors():
    model = two_layer_model()
    with pytest.raises(ValueError, match="no relaxed layers"):
        branch_gradient_report(kr.project(model), rotated_copies(), loss="mse")
    with pytest.raises(ValueError, match="pass loss="):
        branch_gradient_report(model, rotated_copies())
    with pytest.raises(TypeError, match="tf.data.Dataset"):
        branch_gradient_report(model, tf.zeros(SHAPE, tf.float64), loss="mse")
    inputs = keras.Input(SHAPE[1:], dtype="float64")
    low_rank = kr.RelaxedModel(
        inputs, VNLinear(3, relaxed=True, relaxation_rank=1, dtype="float64", name="thin")(inputs)
    )
    with pytest.raises(ValueError, match=r"\['thin'\] are low-rank"):
        branch_gradient_report(low_rank, rotated_copies(), loss="mse")


def test_gradient_report_on_c4_conv_branches():
    """C4 conv branches are split by the group average: the defect penalty's gradient has no part along the
    equivariant kernels (lambda_proj = 0), while the task gradient has both; the split matches project_kernel."""
    from keras_relaxeq.groups.cyclic_kernels import project_kernel
    from keras_relaxeq.layers import LiftingConv2D, ProjectionConv2D
    from keras_relaxeq.training.model import RelaxedModel

    inputs = keras.Input((8, 8, 4))
    h = LiftingConv2D(2, in_type="vector", relaxed=True, relaxation_initializer="random_normal", activation="relu")(
        inputs
    )
    outputs = ProjectionConv2D("vector", relaxed=True, relaxation_initializer="random_normal")(h)
    model = RelaxedModel(inputs, outputs, lambda_lie=1.0, lambda_proj=0.0)
    set_theta(model, 0.5)
    rng = np.random.default_rng(0)
    data = tf.data.Dataset.from_tensor_slices(
        (rng.normal(size=(6, 8, 8, 4)).astype("float32"), rng.normal(size=(6, 8, 8, 2)).astype("float32"))
    ).batch(3)
    rows = branch_gradient_report(model, data, loss="mse", num_batches=None)
    assert len(rows) == 2 and all(r["batches"] == 2 for r in rows)
    for row in rows:
        assert row["penalty_ne_norm"] > 0 and row["penalty_eq_norm"] < 1e-5 * row["penalty_ne_norm"]
        assert row["task_eq_norm"] > 0 and row["task_ne_norm"] > 0
        assert 0.05 < row["kernel_equivariant_share"] < 0.95
    layer = relaxed_layers(model)[0]
    w = layer.relaxation_kernel.numpy()
    share = np.linalg.norm(project_kernel(w, layer.input_rep.field_type, layer.output_rep.field_type))
    assert rows[0]["kernel_equivariant_share"] == pytest.approx(share / np.linalg.norm(w), rel=1e-6)
