"""SEGNN for the charged N-body task (models/segnn.py): shapes, E(3) equivariance, projection, saving.

A small SEGNN (2 layers, 16 hidden scalars) is trained for a few steps on real simulated
charged N-body data at theta = 1, so that the relaxation branches are non-zero; then

* the projected model is O(3)-equivariant (rotations and reflections act on ``loc``, ``vel``
  and the output, charges are invariant) and translation-equivariant;
* the relaxed model at theta = 1 is not (negative control), at theta = 0 it equals the projection;
* exactly the two node-update tensor products of every layer are relaxed;
* projection gives the plain model's parameter count; ``.keras`` files round-trip.
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_relaxeq as kr
from keras_relaxeq.groups import Irreps
from keras_relaxeq.layers.relaxation import relaxed_layers
from keras_relaxeq.models.segnn import NBodyGraphFeatures, SEGNNLayer, fully_connected_edges, segnn, segnn_hidden_irreps
from keras_relaxeq.testing import assert_equivariant, check_equivariance

SMALL = dict(num_layers=2, hidden_features=16)
REPS = {"loc": "vector", "vel": "vector", "charges": "invariant"}
BATCH = 25


@pytest.fixture(scope="module")
def nbody_cache(tmp_path_factory):
    """``KERAS_RELAXEQ_CACHE`` pointed at a temporary directory for the whole module."""
    mp = pytest.MonkeyPatch()
    mp.setenv("KERAS_RELAXEQ_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def train_ds(nbody_cache):
    from keras_relaxeq.datasets.nbody import nbody_dataset

    return nbody_dataset("train", batch_size=BATCH, num_samples=100, seed=0, progress=False)


@pytest.fixture(scope="module")
def batch(train_ds):
    x, y = next(iter(train_ds))
    return {k: v[:8] for k, v in x.items()}, y[:8]


@pytest.fixture(scope="module")
def trained(train_ds):
    """The relaxed small SEGNN after one epoch (4 steps) at theta = 1."""
    keras.utils.set_random_seed(0)
    model = segnn(relaxed=True, **SMALL)
    assert kr.set_theta(model, 1.0) == 2 * SMALL["num_layers"]
    # Eager: tracing the penalised train step costs more than these few small steps.
    model.compile(optimizer=keras.optimizers.Adam(5e-3), loss="mse", run_eagerly=True)
    history = model.fit(train_ds, epochs=1, verbose=0, shuffle=False)
    assert np.all(np.isfinite(history.history["loss"]))
    assert history.history["lie_penalty"][0] > 0.0 and history.history["projection_penalty"][0] > 0.0
    return model


@pytest.fixture(scope="module")
def projected(trained):
    return kr.project(trained)


def test_hidden_irreps_are_the_published_weight_balanced_ones():
    assert segnn_hidden_irreps(64, 1, 1) == Irreps("32x0e+32x1o")


def test_output_shape_and_residual(batch):
    x, y = batch
    model = segnn(relaxed=False, **SMALL)
    out = model(x)
    assert out.shape == (8, 5, 3) and out.dtype == tf.float32
    assert y.shape == (8, 5, 3)
    assert np.all(np.isfinite(out.numpy()))


def test_graph_features_match_reference(batch):
    x, _ = batch
    loc, vel, q = (x[k].numpy().astype(np.float64) for k in ("loc", "vel", "charges"))
    layer = NBodyGraphFeatures(num_nodes=5, lmax_attr=1, dtype="float64")
    feats, node_attr, edge_attr, edge_features = (t.numpy() for t in layer([loc, vel, q]))
    send, recv = fully_connected_edges(5)
    assert len(send) == 20 and not np.any(send == recv)
    rel = loc[:, send] - loc[:, recv]
    np.testing.assert_allclose(edge_features[..., 0], np.linalg.norm(rel, axis=-1), rtol=1e-12)
    np.testing.assert_allclose(edge_features[..., 1], (q[:, send] * q[:, recv])[..., 0], rtol=1e-12)
    np.testing.assert_allclose(feats[..., :3], loc - loc.mean(axis=1, keepdims=True), atol=1e-12)
    np.testing.assert_allclose(feats[..., 3:6], vel, atol=1e-12)
    np.testing.assert_allclose(feats[..., 6], np.linalg.norm(vel, axis=-1), rtol=1e-12)
    # "integral" spherical harmonics: Y_0 = 1/sqrt(4 pi), Y_1 = sqrt(3 / (4 pi)) r_hat
    c0, c1 = 1 / np.sqrt(4 * np.pi), np.sqrt(3 / (4 * np.pi))
    np.testing.assert_allclose(edge_attr[..., 0], c0, rtol=1e-12)
    rhat = rel / np.linalg.norm(rel, axis=-1, keepdims=True)
    np.testing.assert_allclose(edge_attr[..., 1:], c1 * rhat, atol=1e-12)
    vhat = vel / np.linalg.norm(vel, axis=-1, keepdims=True)
    mean_in = np.stack([rhat[:, recv == i].mean(axis=1) for i in range(5)], axis=1)
    np.testing.assert_allclose(node_attr[..., 0], 1.0)  # the reference sets the 0e attribute to 1
    np.testing.assert_allclose(node_attr[..., 1:], c1 * (mean_in + vhat), atol=1e-12)


def test_only_node_update_tensor_products_are_relaxed():
    model = segnn(relaxed=True, num_layers=3, hidden_features=8)
    relaxed = relaxed_layers(model)
    assert len(relaxed) == 2 * 3
    assert sorted(l.name for l in relaxed) == sorted(["tensor_product", "update_layer_2"] * 3)
    for layer in model.layers:
        if isinstance(layer, SEGNNLayer):
            assert layer.update_layer_1.tensor_product in relaxed and layer.update_layer_2 in relaxed
            assert not relaxed_layers(layer.message_layer_1) and not relaxed_layers(layer.message_layer_2)
    assert not relaxed_layers(segnn(relaxed=False, num_layers=3, hidden_features=8))
    with pytest.raises(ValueError, match="pool"):
        segnn(pool="avg", **SMALL)
    with pytest.raises(ValueError, match="norm"):
        segnn(norm="batch", **SMALL)


def test_projected_parameter_count_equals_plain(trained, projected):
    plain = segnn(relaxed=False, **SMALL)
    assert not kr.has_relaxation_branches(projected)
    assert projected.count_params() == plain.count_params()
    assert trained.count_params() > plain.count_params()
    for layer in relaxed_layers(trained):  # training made the branches move away from N(0, 1e-4)
        assert float(tf.reduce_max(tf.abs(layer.relaxation_kernel))) > 1e-3


def test_reference_centring_reproduces_the_reference_features(batch, tmp_path):
    """``centring="coordinates"``: the reference code's ``pos - pos.mean(1)`` on ``[B*N, 3]`` (each
    particle minus the mean of its own x, y, z); the model built with it is not equivariant."""
    x, _ = batch
    loc, vel, q = (x[k].numpy().astype(np.float64) for k in ("loc", "vel", "charges"))
    feats = NBodyGraphFeatures(num_nodes=5, centring="coordinates", dtype="float64")([loc, vel, q])[0].numpy()
    flat = loc.reshape(-1, 3)
    np.testing.assert_allclose(feats[..., :3].reshape(-1, 3), flat - flat.mean(axis=1, keepdims=True), atol=1e-12)
    mass = NBodyGraphFeatures(num_nodes=5, dtype="float64")([loc, vel, q])[0].numpy()
    np.testing.assert_allclose(feats[..., 3:], mass[..., 3:], atol=1e-12)  # vel, |vel| unchanged
    with pytest.raises(ValueError, match="centring must be one of"):
        NBodyGraphFeatures(num_nodes=5, centring="origin")
    keras.utils.set_random_seed(3)
    model = segnn(relaxed=False, centring="coordinates", **SMALL)
    assert model.get_layer("graph_features").get_config()["centring"] == "coordinates"
    report = check_equivariance(model, x, input_reps=REPS, output_reps="vector", group="O3", num_samples=2)
    assert not report.passed, report
    t = tf.constant(np.random.default_rng(1).normal(scale=3.0, size=(8, 1, 3)), tf.float32)
    moved = model(dict(x, loc=x["loc"] + t)).numpy()
    assert np.abs(moved - (model(x).numpy() + t.numpy())).max() > 1e-3
    path = tmp_path / "coordinates.keras"  # the centring survives saving: the loaded model gives the same output
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.get_layer("graph_features").centring == "coordinates"
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), atol=1e-6)


def test_released_branch_placement(batch, tmp_path):
    """``relaxation_placement="after_gate", relaxation_use_bias=False``: the released code's
    bias-free branches, the first one after the first update's gate; the projection removes them."""
    x, _ = batch
    keras.utils.set_random_seed(4)
    model = segnn(relaxed=True, relaxation_placement="after_gate", relaxation_use_bias=False, **SMALL)
    branches = relaxed_layers(model)
    assert sorted(l.name for l in branches) == sorted(["update_layer_1", "update_layer_2"] * SMALL["num_layers"])
    assert all(l.relaxation_bias is None for l in branches)
    # the first update's branch is the gate layer's own, not its tensor product's
    assert {type(l).__name__ for l in branches if l.name == "update_layer_1"} == {"O3TensorProductGate"}
    for layer in branches:
        layer.relaxation_kernel.assign(np.random.default_rng(0).normal(size=layer.relaxation_kernel.shape))
    kr.set_theta(model, 1.0)
    assert not check_equivariance(model, x, input_reps=REPS, output_reps="vector", group="O3", num_samples=2).passed
    path = tmp_path / "released.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), atol=1e-5)
    plain = kr.project(model)
    assert plain.count_params() == segnn(relaxed=False, **SMALL).count_params()
    assert_equivariant(plain, x, input_reps=REPS, output_reps="vector", group="O3", num_samples=2)
    kr.set_theta(model, 0.0)
    np.testing.assert_allclose(model(x).numpy(), plain(x).numpy(), atol=1e-5)


def test_projected_segnn_is_e3_equivariant(trained, projected, batch):
    x, _ = batch
    report = assert_equivariant(projected, x, input_reps=REPS, output_reps="vector", group="O3", num_samples=3)
    assert report.max_error < 1e-4
    # translations: loc + t -> out + t (charges, velocities unchanged)
    t = tf.constant(np.random.default_rng(1).normal(scale=3.0, size=(8, 1, 3)), tf.float32)
    out = projected(x).numpy()
    moved = projected(dict(x, loc=x["loc"] + t)).numpy()
    np.testing.assert_allclose(moved, out + t.numpy(), atol=2e-4)
    # the relaxed model at theta = 0 computes the projected model
    kr.set_theta(trained, 0.0)
    try:
        np.testing.assert_allclose(trained(x).numpy(), out, atol=1e-5)
    finally:
        kr.set_theta(trained, 1.0)


def test_relaxed_segnn_at_theta_one_is_not_equivariant(trained, batch):
    x, _ = batch
    kr.set_theta(trained, 0.0)
    exact = check_equivariance(trained, x, input_reps=REPS, output_reps="vector", group="O3", num_samples=2)
    kr.set_theta(trained, 1.0)
    report = check_equivariance(trained, x, input_reps=REPS, output_reps="vector", group="O3", num_samples=2)
    # after 4 steps the branches (initialised N(0, 1e-4)) are still small, so the error is measured
    # against the same model's float32 error at theta = 0 rather than against a fixed tolerance
    assert exact.passed, exact
    assert report.max_error > 100 * exact.max_error, (report, exact)


def test_instance_norm_variant_is_equivariant(batch):
    x, _ = batch
    keras.utils.set_random_seed(2)
    model = segnn(relaxed=True, norm="instance", **SMALL)
    assert kr.set_theta(model, 0.0) == 4
    assert_equivariant(model, x, input_reps=REPS, output_reps="vector", group="O3", num_samples=2)
    plain = kr.project(model)
    assert plain.count_params() == segnn(relaxed=False, norm="instance", **SMALL).count_params()


def test_keras_round_trip(trained, projected, batch, tmp_path):
    x, _ = batch
    kr.set_theta(trained, 0.25)
    try:
        path = os.fspath(tmp_path / "relaxed.keras")
        trained.save(path)
        loaded = keras.saving.load_model(path)
        assert isinstance(loaded, kr.RelaxedModel)
        assert kr.get_theta(loaded) == pytest.approx(0.25)
        assert len(relaxed_layers(loaded)) == 4
        np.testing.assert_allclose(loaded(x).numpy(), trained(x).numpy(), atol=1e-6)
    finally:
        kr.set_theta(trained, 1.0)
    path = os.fspath(tmp_path / "projected.keras")
    projected.save(path)
    loaded = keras.saving.load_model(path)
    assert not kr.has_relaxation_branches(loaded)
    np.testing.assert_allclose(loaded(x).numpy(), projected(x).numpy(), atol=1e-6)


# --------------------------------------------------------------------------- recipes/segnn_nbody.py
def _load_recipe():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "recipes" / "segnn_nbody.py"
    spec = importlib.util.spec_from_file_location("recipe_segnn_nbody", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recipe_published_defaults():
    recipe = _load_recipe()
    cfg = recipe.resolve_config(recipe.build_parser().parse_args([]))
    assert (cfg["epochs"], cfg["batch"], cfg["lr"], cfg["weight_decay"]) == (1000, 100, 5e-4, 1e-12)
    assert (cfg["lambda_lie"], cfg["lambda_proj"], cfg["schedule"]) == (0.01, 0.01, "triangle")
    assert (cfg["layers"], cfg["hidden"], cfg["train_samples"], cfg["norm"], cfg["relaxed"]) == (
        4,
        64,
        3000,
        "none",
        True,
    )
    assert recipe.resolve_config(recipe.build_parser().parse_args(["--no-relaxed"]))["relaxed"] is False
    assert (cfg["centring"], cfg["rotate"]) == ("mass", True)
    assert (cfg["branch_placement"], cfg["branch_bias"]) == ("before_gate", True)
    released = recipe.resolve_config(
        recipe.build_parser().parse_args(["--branch-placement", "after_gate", "--no-branch-bias"])
    )
    layer = recipe.build_model(released).get_layer("layer_0").update_layer_1
    assert layer.relaxation_placement == "after_gate" and layer.relaxation_bias is None
    ablation = recipe.resolve_config(recipe.build_parser().parse_args(["--centring", "coordinates", "--no-rotate"]))
    assert (ablation["centring"], ablation["rotate"]) == ("coordinates", False)
    assert recipe.build_model(dict(ablation, relaxed=False)).get_layer("graph_features").centring == "coordinates"
    old_run = {k: v for k, v in cfg.items() if k not in ("centring", "rotate")}  # summary.json of older runs
    assert recipe.build_model(dict(old_run, relaxed=False)).get_layer("graph_features").centring == "mass"


@pytest.mark.slow
def test_recipe_runs_and_resumes(nbody_cache, tmp_path):
    import json

    recipe = _load_recipe()
    out = tmp_path / "run"
    common = [
        "--train-samples",
        "50",
        "--val-samples",
        "50",
        "--test-samples",
        "50",
        "--batch",
        "25",
        "--hidden",
        "8",
        "--layers",
        "1",
        "--output-dir",
        str(out),
        "--verbose",
        "0",
    ]
    summary = recipe.main(["--epochs", "2"] + common)
    for name in ("summary.json", "history.png", "log.csv", "projected.keras", "best_projected.keras", "backup"):
        assert (out / name).exists(), name
    assert summary["epochs_run"] == 2 and summary["params"]["projected_model"] == summary["params"]["plain_model"]
    assert summary["equivariance_of_best_projected"]["o3_passed"]
    assert summary["equivariance_of_best_projected"]["translation_max_error"] < 1e-3
    assert np.isfinite(summary["best_test_mse"])
    summary = recipe.main(["--epochs", "3"] + common)  # resumes from the backup, one more epoch
    assert summary["epochs_run"] == 3 and summary["epochs_this_invocation"] == 1
    assert json.loads((out / "summary.json").read_text())["resumed"] is True


def test_recipe_layout_is_kept_by_a_resumed_run(tmp_path):
    recipe = _load_recipe()
    cfg = recipe.resolve_config(recipe.build_parser().parse_args([]))
    assert cfg["layout"] is None  # resolved per run directory by layout_of_run
    assert recipe.build_model(dict(cfg, relaxed=False)).get_layer("layer_0").layout == "ir_mul"
    old_run = {k: v for k, v in cfg.items() if k != "layout"}  # summary.json of a run from before --layout
    assert recipe.build_model(dict(old_run, relaxed=False)).get_layer("layer_0").layout == "mul_ir"

    new = tmp_path / "new"
    assert recipe.layout_of_run(new) == "ir_mul" and recipe.layout_of_run(new, "mul_ir") == "mul_ir"
    old = tmp_path / "old"
    (old / "backup").mkdir(parents=True)  # a backup without layout.txt: started before --layout
    assert recipe.layout_of_run(old) == "mul_ir"
    with pytest.raises(SystemExit, match="--layout mul_ir"):
        recipe.layout_of_run(old, "ir_mul")
    assert recipe.layout_of_run(old, "ir_mul", fresh=True) == "ir_mul"
    recorded = tmp_path / "recorded"
    recorded.mkdir()
    (recorded / recipe.LAYOUT_FILE).write_text("ir_mul\n")
    assert recipe.layout_of_run(recorded) == "ir_mul"
    with pytest.raises(SystemExit, match="start over with --fresh"):
        recipe.layout_of_run(recorded, "mul_ir")


@pytest.mark.parametrize("relaxed", [False, True])
def test_layouts_compute_the_same_model(batch, relaxed):
    """segnn(layout="ir_mul") is segnn(layout="mul_ir") in other coordinates: same weights (branch
    kernels permuted), same predictions and penalties; the graph features are the permuted ones."""
    from keras_relaxeq.groups import layout_permutation
    from keras_relaxeq.models.segnn import NBODY_INPUT_IRREPS

    x, y = batch
    keras.utils.set_random_seed(5)
    a = segnn(relaxed=relaxed, layout="mul_ir", **SMALL)
    b = segnn(relaxed=relaxed, layout="ir_mul", **SMALL)
    assert segnn(**SMALL).get_layer("layer_0").layout == "ir_mul"  # the default
    for la in relaxed_layers(a):  # branches large enough to matter
        rng = np.random.default_rng(la.relaxation_kernel.shape[0])
        la.relaxation_kernel.assign(rng.normal(scale=0.1, size=tuple(la.relaxation_kernel.shape)))
    assert kr.layers.transfer_weights(a, b) == (2 * SMALL["num_layers"] if relaxed else 0)
    if relaxed:
        assert kr.set_theta(a, 1.0) == kr.set_theta(b, 1.0) == 2 * SMALL["num_layers"]
    np.testing.assert_allclose(b(x).numpy(), a(x).numpy(), rtol=1e-5, atol=1e-5)
    if relaxed:
        with kr.layers.collect_relaxation_penalties() as ca:
            a(x)
        with kr.layers.collect_relaxation_penalties() as cb:
            b(x)
        np.testing.assert_allclose([float(v) for v in cb.totals()], [float(v) for v in ca.totals()], rtol=1e-4)
        assert float(ca.totals()[0]) > 0
    # one optimiser step from equal weights: equal gradients, so the weights stay equal
    for model in (a, b):
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
        model.train_on_batch(x, y)
    branch_vars = {
        id(v)
        for layer in relaxed_layers(a) + relaxed_layers(b)
        for v in (layer.relaxation_kernel, layer.relaxation_bias)
    }
    for va, vb in zip(a.weights, b.weights):
        if id(va) not in branch_vars:  # equivariant weights: the same in both layouts
            np.testing.assert_allclose(vb.numpy(), va.numpy(), rtol=1e-4, atol=1e-6, err_msg=va.path)
    for la, lb in zip(relaxed_layers(a), relaxed_layers(b)):  # branches: in permuted coordinates
        pin = layout_permutation(la.input_rep.irreps, "ir_mul")
        pout = layout_permutation(la.output_rep.irreps, "ir_mul")
        np.testing.assert_allclose(
            lb.relaxation_kernel.numpy(), la.relaxation_kernel.numpy()[pin][:, pout], rtol=1e-4, atol=1e-6
        )
        np.testing.assert_allclose(lb.relaxation_bias.numpy(), la.relaxation_bias.numpy()[pout], rtol=1e-4, atol=1e-6)
    feats_a = a.get_layer("graph_features")([x["loc"], x["vel"], x["charges"]])[0].numpy()
    feats_b = b.get_layer("graph_features")([x["loc"], x["vel"], x["charges"]])[0].numpy()
    np.testing.assert_array_equal(feats_b, feats_a[..., layout_permutation(NBODY_INPUT_IRREPS, "ir_mul")])
