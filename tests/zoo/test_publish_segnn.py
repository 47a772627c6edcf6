"""``relaxeq zoo publish / verify / load`` for an N-body SEGNN run (``recipes/segnn_nbody.py``).

A real, tiny recipe run (1 epoch, 10 training trajectories, plain SEGNN with 1 layer) is written
once per module into a temporary directory (N-body data in a temporary ``KERAS_RELAXEQ_CACHE``)
and published with the CLI into a temporary zoo folder, never into the repository's ``zoo/``.
Its metrics are then re-measured here independently; ``relaxeq zoo verify`` must pass on it and
fail on a relaxed SEGNN (theta = 1, strong branches) exported without projection and on a
corrupted archive; publishing refuses relaxed and non-equivariant models.
"""

import hashlib
import importlib.util
import io
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_relaxeq import cli
from keras_relaxeq.zoo import publish, publish_nbody, registry
from keras_relaxeq.zoo.download import load
from keras_relaxeq.zoo.errors import InvalidIndexError

ROOT = Path(__file__).resolve().parents[2]
NAME = "segnn_o3_nbody"
SEED = 3  # not 0: the test pipeline depends on it (element seed SEED + 2, TF global seed SEED)
RECIPE_ARGS = ["--epochs", "1", "--train-samples", "10", "--val-samples", "10",
               "--test-samples", "20", "--batch", "10", "--hidden", "8", "--layers", "1",
               "--no-relaxed", "--seed", str(SEED), "--verbose", "0"]


def _load_recipe():
    spec = importlib.util.spec_from_file_location("recipe_segnn_nbody_publish",
                                                  ROOT / "recipes" / "segnn_nbody.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli(*argv):
    out = io.StringIO()
    return cli.main(list(argv), out=out), out.getvalue()


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A real tiny recipe run, published with ``relaxeq zoo publish`` into a temporary zoo."""
    root = tmp_path_factory.mktemp("segnn_publish")
    mp = pytest.MonkeyPatch()
    mp.setenv("KERAS_RELAXEQ_CACHE", str(root / "cache"))  # N-body data and zoo downloads
    mp.delenv("KERAS_RELAXEQ_ZOO_URL", raising=False)
    recipe = _load_recipe()
    run, zoo = root / "run", root / "zoo"
    t0 = time.time()
    summary = recipe.main(RECIPE_ARGS + ["--output-dir", str(run)])
    print(f"recipe run: {time.time() - t0:.0f} s", file=sys.stderr)
    t0 = time.time()
    code, out = run_cli("zoo", "publish", str(run), "--zoo-dir", str(zoo))
    print(f"publish: {time.time() - t0:.0f} s", file=sys.stderr)
    assert code == 0, out
    cat = registry.load_index(zoo / "index.json")
    yield {"root": root, "run": run, "zoo": zoo, "summary": summary, "recipe": recipe,
           "out": out, "entry": cat.get(NAME), "cfg": summary["config"]}
    mp.undo()


@pytest.fixture(scope="module")
def relaxed_model(published):
    """The run's architecture with relaxation branches, theta = 1 and strong branch weights:
    clearly not equivariant until projected."""
    from keras_relaxeq import set_theta
    from keras_relaxeq.layers.relaxation import relaxed_layers

    keras.utils.set_random_seed(1)
    model = published["recipe"].build_model(dict(published["cfg"], relaxed=True))
    x, _ = publish_nbody.recipe_test_samples(published["cfg"], 2)
    model(x)  # build
    assert set_theta(model, 1.0) > 0
    rng = np.random.default_rng(0)
    for layer in relaxed_layers(model):
        for v in layer.relaxation_variables:
            v.assign(rng.normal(scale=0.5, size=v.shape).astype("float32"))
    return model


def test_entry_fields_and_files(published):
    zoo, e, cfg, summary = (published[k] for k in ("zoo", "entry", "cfg", "summary"))
    assert (e.version, e.arch, e.group, e.dataset, e.task) == (1, "segnn", "o3", "nbody",
                                                               "nbody_regression")
    assert e.is_nbody_model and not e.is_invariant_classifier
    assert e.input_name == "loc"
    assert {k: (v["dtype"], v["shape"]) for k, v in e.input_signature.items()} == {
        "loc": ("float32", [None, 5, 3]), "vel": ("float32", [None, 5, 3]),
        "charges": ("float32", [None, 5, 1])}
    assert list(e.outputs) == ["loc"] and e.outputs["loc"]["shape"] == [None, 5, 3]
    assert e.recipe == "recipes/segnn_nbody.py"
    assert e.architecture["class"] == "keras_relaxeq.models.segnn"
    assert e.architecture["config"] == {"num_layers": 1, "hidden_features": 8, "lmax_hidden": 1,
                                        "lmax_attr": 1, "norm": None, "num_nodes": 5,
                                        "relaxed": False}
    assert e.architecture["params"] == summary["params"]["projected_model"]
    training = e.raw["training"]
    assert training["epochs_run"] == summary["epochs_run"] == 1
    assert training["best_test_mse"] == summary["best_test_mse"]
    assert training["command"].startswith("python recipes/segnn_nbody.py --epochs 1")
    for art in (e.artifact, e.keras_artifact):  # size and sha256 of the files on disk
        data = (zoo / art.file).read_bytes()
        assert len(data) == art.size and hashlib.sha256(data).hexdigest() == art.sha256
    assert e.artifact.file == f"artifacts/{NAME}/1/{NAME}-1.tar.gz"
    assert (zoo / e.keras_artifact.file).read_bytes() == (
        published["run"] / "best_projected.keras").read_bytes()
    assert not list(zoo.glob(".tmp-*")) and not (zoo / "cards" / "modelnet40_labels.txt").exists()
    printed = json.loads(published["out"][published["out"].index("{"):])
    assert printed["artifact"]["sha256"] == e.artifact.sha256


def test_metrics_agree_with_independent_measurements(published):
    """Test MSE, equivariance and Keras parity, re-measured here on the artifact and the
    .keras model with the recipe's test data built independently."""
    from keras_relaxeq.datasets.nbody import nbody_dataset

    e, cfg, summary = published["entry"], published["cfg"], published["summary"]
    metrics = {m["name"]: m for m in e.metrics}
    assert list(metrics) == ["test_mse", "equivariance_max_abs_error",
                             "equivariance_relative_error", "keras_max_abs_diff"]
    assert all(m["split"] == "test" and len(m["protocol"]) > 60 for m in metrics.values())
    assert "first 20 test trajectories" in metrics["test_mse"]["protocol"]
    # the recipe's own evaluation of the same model file (Keras evaluate, end of training)
    assert metrics["test_mse"]["value"] == pytest.approx(summary["best_test_mse"], rel=1e-5)

    # independently: the recipe's test pipeline (seed + 2, after the recipe's global seed)
    keras.utils.set_random_seed(cfg["seed"])
    ds = nbody_dataset("test", batch_size=cfg["batch"], num_samples=cfg["test_samples"],
                       shuffle=False, seed=cfg["seed"] + 2)
    batches = [({k: np.asarray(v) for k, v in x.items()}, np.asarray(y)) for x, y in ds]
    assert len(batches) == 2  # two batches, two rotations
    model = load(NAME, index=published["zoo"] / "index.json", progress=False)  # the artifact
    keras_model = keras.saving.load_model(published["run"] / "best_projected.keras", compile=False)
    sq, keras_sq, diff = [], [], 0.0
    for x, y in batches:
        pred = model(x)["loc"].astype(np.float64)
        kpred = np.asarray(keras_model.predict(x, verbose=0), np.float64)
        sq.append((pred - y) ** 2)
        keras_sq.append((kpred - y) ** 2)
        diff = max(diff, float(np.abs(pred - kpred).max()))
    mse = float(np.mean(np.concatenate(sq)))
    assert metrics["test_mse"]["value"] == pytest.approx(mse, rel=1e-5)
    assert float(np.mean(np.concatenate(keras_sq))) == pytest.approx(mse, rel=1e-5)
    assert diff <= 1e-5 and metrics["keras_max_abs_diff"]["value"] <= 1e-5
    # the agreement is not trivial: other trajectories give another MSE
    x, y = next(iter(nbody_dataset("valid", batch_size=20, num_samples=20, shuffle=False)))
    other = float(np.mean((model({k: np.asarray(v) for k, v in x.items()})["loc"]
                           - np.asarray(y)) ** 2))
    assert abs(other - mse) > 1e-3 * mse

    # E(3) on test systems with one move drawn here: a reflection, then a translation
    x, _ = batches[0]
    q, _ = np.linalg.qr(np.random.default_rng(5).normal(size=(3, 3)))
    q = q * np.sign(np.linalg.det(q)) @ np.diag([1.0, -1.0, 1.0])  # det -1
    t = np.array([2.0, -3.0, 0.5])
    moved = dict(x, loc=(x["loc"] @ q.T + t).astype(np.float32),
                 vel=(x["vel"] @ q.T).astype(np.float32))
    err = np.abs(model(moved)["loc"] - (model(x)["loc"].astype(np.float64) @ q.T + t)).max()
    assert err < 1e-4
    assert metrics["equivariance_max_abs_error"]["value"] < 1e-4
    assert metrics["equivariance_relative_error"]["value"] < 1e-5


def test_card(published):
    zoo, e = published["zoo"], published["entry"]
    assert e.card == f"cards/{NAME}-1.md"
    text = registry.model_card(NAME, index=zoo / "index.json")
    for needle in (e.raw["training"]["command"], "reconstructed from summary.json",
                   "epochs run: 1 (configured 1)", "Trained for 1 epoch, not the 1000",
                   "Trained on 10 trajectories", "## Limits", "trained as a plain (unrelaxed)",
                   "`loc` float32 `[batch, 5, 3]`", "`charges` float32 `[batch, 5, 1]`",
                   "relaxeq zoo verify segnn_o3_nbody", "model(loc=loc, vel=vel, charges=charges)",
                   "The recipe reported a test MSE of", e.artifact.sha256, "Apache-2.0",
                   "Constraint Relaxation", "E(3) Equivariant Message Passing"):
        assert needle in text, needle
    for m in e.metrics:
        assert f"| `{m['name']}` | {m['value']} |" in text, m["name"]
    assert f"reported a test MSE of {published['summary']['best_test_mse']:.6f}" in text


def test_reconstructed_command_reproduces_the_config(published):
    recipe, cfg = published["recipe"], published["cfg"]
    argv = shlex.split(publish.recipe_command_from_config(cfg, publish.NBODY_RECIPE))
    assert argv[:2] == ["python", "recipes/segnn_nbody.py"] and "--no-relaxed" in argv
    again = recipe.resolve_config(recipe.build_parser().parse_args(argv[2:]))
    assert {k: again[k] for k in cfg} == cfg


def test_verify_info_and_load(published):
    index = str(published["zoo"] / "index.json")
    code, out = run_cli("zoo", "--index", index, "verify", "--no-progress")
    assert code == 0, out
    assert out.startswith(f"OK    {NAME} v1: sha256 ok, loads, signature ok, E(3) equivariance")
    code, out = run_cli("zoo", "--index", index, "info", NAME)
    assert code == 0 and "input:        charges float32 [None, 5, 1]" in out

    model = load(NAME, index=index, progress=False)
    rng = np.random.default_rng(0)
    loc, vel = rng.normal(size=(2, 3, 5, 3)).astype(np.float32)
    charges = rng.choice([-1.0, 1.0], size=(3, 5, 1)).astype(np.float32)
    out = model(loc=loc, vel=vel, charges=charges)
    assert list(out) == ["loc"] and out["loc"].shape == (3, 5, 3)
    same = model({"loc": loc, "vel": vel, "charges": charges})["loc"]
    np.testing.assert_array_equal(same, out["loc"])
    one = model(loc=loc[0], vel=vel[0], charges=charges[0])["loc"]  # one system, no batch axis
    assert one.shape == (5, 3)
    np.testing.assert_allclose(one, out["loc"][0], atol=1e-5)
    keras_model = load(NAME, index=index, as_keras=True, progress=False)
    np.testing.assert_allclose(keras_model.predict({"loc": loc, "vel": vel, "charges": charges},
                                                   verbose=0), out["loc"], atol=1e-5)
    with pytest.raises(TypeError, match=r"Missing inputs \['charges', 'vel'\]"):
        model(loc)


def _packed_entry(published, tmp, source_dir, version, entry=None):
    """A copy of the published v1 entry as ``version`` with the SavedModel ``source_dir``
    packed as its artifact (in the mirror ``tmp``)."""
    from keras_relaxeq.export.serving import pack_saved_model

    rel = f"artifacts/{NAME}/{version}/{NAME}-{version}.tar.gz"
    packed = pack_saved_model(source_dir, tmp / rel)
    entry = json.loads(json.dumps(entry or published["entry"].raw))
    entry.update(version=version, keras_artifact=None,
                 artifact={"file": rel, "format": "saved_model.tar.gz", "size": packed.size,
                           "sha256": packed.sha256})
    return entry


def test_verify_fails_on_non_equivariant_and_corrupted_artifacts(published, relaxed_model,
                                                                   tmp_path):
    import tensorflow as tf

    from keras_relaxeq.export.serving import export_saved_model

    # The exporter refuses the relaxed model, or projects it (allow_relaxed=True) ...
    with pytest.raises(ValueError, match="relaxation branches"):
        export_saved_model(relaxed_model, tmp_path / "export", NAME, 2)
    projected_dir = publish_nbody.export_nbody_saved_model(relaxed_model, tmp_path / "export",
                                                           NAME, 3, allow_relaxed=True)
    # ... so export the relaxed model as it is (theta = 1) through keras.export directly
    specs = {k: tf.TensorSpec(v["shape"], tf.float32, name=k)
             for k, v in publish_nbody.input_signature().items()}
    archive = keras.export.ExportArchive()
    archive.track(relaxed_model)
    archive.add_endpoint("serve", lambda inputs: {"loc": relaxed_model(dict(inputs),
                                                                       training=False)},
                         input_signature=[specs])
    archive.write_out(str(tmp_path / "relaxed_export"), verbose=False)

    v1 = published["entry"].raw
    shutil.copytree(published["zoo"] / "artifacts", tmp_path / "artifacts")
    corrupted = json.loads(json.dumps(v1))
    corrupted["version"], corrupted["keras_artifact"] = 4, None
    corrupted["artifact"]["file"] = f"artifacts/{NAME}/4/{NAME}-4.tar.gz"
    data = bytearray((tmp_path / v1["artifact"]["file"]).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / corrupted["artifact"]["file"]).parent.mkdir(parents=True)
    (tmp_path / corrupted["artifact"]["file"]).write_bytes(bytes(data))
    index = tmp_path / "index.json"
    index.write_text(json.dumps({"schema_version": 1, "base_url": None, "models": [
        v1, _packed_entry(published, tmp_path, tmp_path / "relaxed_export", 2),
        _packed_entry(published, tmp_path, projected_dir, 3), corrupted]}))

    code, out = run_cli("zoo", "--index", str(index), "verify", "--no-progress")
    lines = {ln.split()[2]: ln for ln in out.splitlines() if ln.startswith(("OK", "FAIL"))}
    assert code == 1, out
    assert lines["v1:"].startswith("OK") and lines["v3:"].startswith("OK"), out
    assert lines["v2:"].startswith("FAIL") and "AssertionError: E(3) equivariance max err" in \
        lines["v2:"] and "signature ok" in lines["v2:"], out
    assert lines["v4:"].startswith("FAIL") and "HashMismatchError" in lines["v4:"], out
    assert "2/4 entries passed." in out
    # the tolerance decides: with an absurd one the relaxed artifact passes
    code, out = run_cli("zoo", "--index", str(index), "verify", NAME, "--no-progress",
                        "--atol", "1e6")
    assert "FAIL  segnn_o3_nbody v2" not in out and "3/4 entries passed." in out


def _run_copy(published, tmp_path, model=None, model_file="best_projected.keras"):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(published["run"] / "summary.json", run / "summary.json")
    if model is not None:
        model.save(run / model_file)
    return run


def _assert_nothing_written(zoo: Path):
    assert not (zoo / "index.json").exists() and not (zoo / "artifacts").exists()
    assert not (zoo / "cards").exists() and not list(zoo.glob(".tmp-*"))


def test_publish_refuses_a_relaxed_model(published, relaxed_model, tmp_path):
    run = _run_copy(published, tmp_path, relaxed_model, "best_relaxed.keras")
    with pytest.raises(publish.PublishError, match="relaxation branches"):
        publish.publish_run(run, zoo_dir=tmp_path / "zoo", model_file="best_relaxed.keras")
    _assert_nothing_written(tmp_path / "zoo")


def test_publish_refuses_a_non_equivariant_model(published, tmp_path):
    keras.utils.set_random_seed(0)
    inputs = {"loc": keras.Input((5, 3), name="loc"), "vel": keras.Input((5, 3), name="vel"),
              "charges": keras.Input((5, 1), name="charges")}
    h = keras.layers.Concatenate()([inputs["loc"], inputs["vel"], inputs["charges"]])
    delta = keras.layers.Dense(3)(keras.layers.Dense(8, activation="tanh")(h))
    model = keras.Model(inputs, keras.layers.Add()([inputs["loc"], delta]))
    run = _run_copy(published, tmp_path, model)
    with pytest.raises(publish.PublishError, match="not E\\(3\\) equivariant on test systems"):
        publish.publish_run(run, zoo_dir=tmp_path / "zoo", max_test_samples=10)
    _assert_nothing_written(tmp_path / "zoo")


def test_bad_run_directories(published, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _ = run_cli("zoo", "publish", str(empty), "--zoo-dir", str(tmp_path / "zoo"))
    err = capsys.readouterr().err
    assert code == 1 and "no summary.json" in err and "recipes/segnn_nbody.py" in err

    other = tmp_path / "other"
    other.mkdir()
    (other / "summary.json").write_text(json.dumps({"config": {"epochs": 3, "lr": 0.1}}))
    with pytest.raises(publish.PublishError, match="neither 'model' and 'points'.*"
                                                   "recipes/segnn_nbody.py"):
        publish.publish_run(other, zoo_dir=tmp_path / "zoo")

    run = _run_copy(published, tmp_path)
    with pytest.raises(publish.PublishError, match="--max-val-samples only apply to "
                                                   "recipes/modelnet40.py runs"):
        publish.publish_run(run, zoo_dir=tmp_path / "zoo", max_val_samples=8)
    _assert_nothing_written(tmp_path / "zoo")


def test_catalogue_validates_multi_input_entries(published):
    doc = json.loads((published["zoo"] / "index.json").read_text())
    registry.parse_index(doc)
    bad = json.loads(json.dumps(doc))
    bad["models"][0]["input"]["name"] = "points"
    with pytest.raises(InvalidIndexError, match="input.name 'points' must be one of inputs"):
        registry.parse_index(bad)
    bad = json.loads(json.dumps(doc))
    bad["models"][0]["inputs"]["vel"]["shape"] = [None, 0, 3]
    with pytest.raises(InvalidIndexError, match="inputs.vel.shape must be a list of positive"):
        registry.parse_index(bad)
