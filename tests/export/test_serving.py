"""SavedModel export for TF Serving: signature, fresh-process loading, models.config, packing."""

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_relaxeq.export import serving

NUM_CLASSES = 5
BIN = Path(sys.executable).parent


def tiny_classifier(seed=0):
    """Rotation-invariant toy classifier: per-point norms -> Dense -> mean pool -> logits."""
    keras.utils.set_random_seed(seed)
    points = keras.Input((None, 3), name="points")
    norms = keras.ops.norm(points, axis=-1, keepdims=True)
    h = keras.layers.Dense(8, activation="relu")(norms)
    h = keras.ops.mean(h, axis=1)
    return keras.Model(points, keras.layers.Dense(NUM_CLASSES)(h), name="tiny")


def tiny_regressor(seed=1):
    keras.utils.set_random_seed(seed)
    x = keras.Input((4, 3), name="positions")
    y = keras.layers.Dense(3)(x)
    return keras.Model(x, y, name="reg")


FRESH_PROCESS_CODE = """
import json, sys
import numpy as np
import tensorflow as tf
obj = tf.saved_model.load(sys.argv[1])
sig = obj.signatures["serving_default"]
args, kwargs = sig.structured_input_signature
x = np.load(sys.argv[2])
out = sig(points=tf.constant(x))
# a different number of points and batch size must work too
other = sig(points=tf.zeros([1, 5, 3]))
np.savez(sys.argv[3], **{k: v.numpy() for k, v in out.items()})
print(json.dumps({
    "inputs": {k: [v.dtype.name, v.shape.as_list()] for k, v in kwargs.items()},
    "positional": len(args),
    "outputs": {k: [v.dtype.name, v.shape.as_list()] for k, v in sig.structured_outputs.items()},
    "other_shape": other["logits"].shape.as_list(),
    "signatures": sorted(obj.signatures.keys()),
    "imported_keras_relaxeq": any(m.startswith("keras_relaxeq") for m in sys.modules),
}))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One export, plus the two slow out-of-process checks started at once in the background
    (a fresh interpreter that does not import keras_relaxeq, and `saved_model_cli show`)."""
    base = tmp_path_factory.mktemp("serving")
    model = tiny_classifier()
    path = serving.export_saved_model(model, base, "tiny_so3_toy", 1)
    x = np.random.default_rng(0).normal(size=(3, 17, 3)).astype(np.float32)
    np.save(base / "x.npy", x)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERAS_RELAXEQ")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env.pop("PYTHONPATH", None)
    fresh = subprocess.Popen(
        [sys.executable, "-c", FRESH_PROCESS_CODE, str(path), str(base / "x.npy"), str(base / "out.npz")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=base,
    )
    cli = subprocess.Popen(
        [
            str(BIN / "saved_model_cli"),
            "show",
            "--dir",
            str(path),
            "--tag_set",
            "serve",
            "--signature_def",
            "serving_default",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=base,
    )
    yield {"model": model, "base": base, "path": path, "x": x, "fresh": fresh, "cli": cli}
    for proc in (fresh, cli):
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_layout_is_tf_serving_layout(exported):
    base, path = exported["base"], exported["path"]
    assert path == base / "tiny_so3_toy" / "1"
    assert (path / "saved_model.pb").is_file()
    assert (path / "variables" / "variables.index").is_file()
    assert not [p for p in (base / "tiny_so3_toy").iterdir() if p.name.startswith(".tmp")]


def test_only_stock_ops(exported):
    ops = serving.check_stock_ops(exported["path"])
    assert "Softmax" in ops and "ArgMax" in ops
    assert not ops & serving.FORBIDDEN_OPS


def test_py_function_is_rejected(tmp_path):
    def py_outputs(y):
        return {"y": tf.py_function(lambda t: t * 2.0, [y], tf.float32)}

    with pytest.raises(ValueError, match="non-stock ops"):
        serving.export_saved_model(tiny_classifier(), tmp_path, "bad", 1, outputs=py_outputs)
    assert not (tmp_path / "bad" / "1").exists()


def test_models_config_written_and_updated(exported, tmp_path):
    model = exported["model"]
    base = tmp_path / "base"
    base.mkdir()
    # A hand-written config with an extra model, a comment and a version policy must survive.
    (base / "models.config").write_text(
        textwrap.dedent("""\
        # served by hand
        model_config_list {
          config {
            name: "hand_made"
            base_path: "/elsewhere/hand_made"
            model_platform: "tensorflow"
            model_version_policy { specific { versions: 3 } }
          }
        }
    """)
    )
    serving.export_saved_model(model, base, "tiny_so3_toy", 1, config_base_path="/models")
    reg = tiny_regressor()
    reg_path = serving.export_saved_model(reg, base, "reg_o3_nbody", 2, outputs="regression")
    serving.export_saved_model(model, base, "tiny_so3_toy", 2, config_base_path="/models")

    blocks = serving.read_models_config(base / "models.config")
    assert [name for name, _ in blocks] == ["hand_made", "tiny_so3_toy", "reg_o3_nbody"]
    by_name = dict(blocks)
    assert "specific { versions: 3 }" in " ".join(by_name["hand_made"].split())
    assert 'base_path: "/models/tiny_so3_toy"' in by_name["tiny_so3_toy"]
    assert f'base_path: "{(base / "reg_o3_nbody").resolve()}"' in by_name["reg_o3_nbody"]
    for body in by_name.values():
        assert 'model_platform: "tensorflow"' in body
    text = (base / "models.config").read_text()
    assert text.count("config {") == 3 and text.startswith("model_config_list {")
    assert sorted(p.name for p in (base / "tiny_so3_toy").iterdir()) == ["1", "2"]

    # Regression mode: a single "prediction" output with the model's own input shape.
    sig = tf.saved_model.load(str(reg_path)).signatures["serving_default"]
    _, kwargs = sig.structured_input_signature
    assert list(kwargs) == ["points"]
    assert kwargs["points"].shape.as_list() == [None, 4, 3]
    assert sorted(sig.structured_outputs) == ["prediction"]
    x = np.random.default_rng(1).normal(size=(2, 4, 3)).astype(np.float32)
    np.testing.assert_allclose(
        sig(points=tf.constant(x))["prediction"].numpy(), reg.predict(x, verbose=0), rtol=1e-5, atol=1e-6
    )


def test_refuses_to_overwrite_a_published_version(exported):
    model, base, path = exported["model"], exported["base"], exported["path"]
    before = (path / "saved_model.pb").stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="immutable"):
        serving.export_saved_model(model, base, "tiny_so3_toy", 1)
    assert (path / "saved_model.pb").stat().st_mtime_ns == before


@pytest.mark.parametrize("version", [0, -1, "1", 1.0, True])
def test_rejects_non_integer_versions(tmp_path, version):
    with pytest.raises(ValueError, match="version"):
        serving.export_saved_model(tiny_classifier(), tmp_path, "m", version)


class FakeRelaxed(keras.layers.Layer):
    """A stand-in for a relaxed layer: carries a weight named ``relaxation_kernel``."""

    def build(self, input_shape):
        self.relaxation_kernel = self.add_weight(shape=(3, 3), initializer="ones", name="relaxation_kernel")

    def call(self, x):
        return x + keras.ops.matmul(x, self.relaxation_kernel)


def relaxed_model():
    points = keras.Input((None, 3), name="points")
    h = FakeRelaxed()(points)
    return keras.Model(points, keras.layers.Dense(2)(keras.ops.mean(h, axis=1)))


def test_relaxed_model_refused_and_projected_on_request(tmp_path, monkeypatch):
    model = relaxed_model()
    calls = []

    def has_branches(m):
        return any(isinstance(layer, FakeRelaxed) for layer in m.layers)

    def project(m):
        calls.append(m)
        points = keras.Input((None, 3), name="points")
        out = m.layers[-1](keras.ops.mean(points, axis=1))  # drops the branch, shares the head
        return keras.Model(points, out)

    monkeypatch.setattr(serving, "_projection_api", lambda: (has_branches, project))
    with pytest.raises(ValueError, match="relaxation branches.*project"):
        serving.export_saved_model(model, tmp_path, "relaxed", 1)
    assert not (tmp_path / "relaxed").exists() and calls == []

    path = serving.export_saved_model(model, tmp_path, "relaxed", 1, allow_relaxed=True)
    assert len(calls) == 1
    x = np.random.default_rng(2).normal(size=(2, 6, 3)).astype(np.float32)
    sig = tf.saved_model.load(str(path)).signatures["serving_default"]
    expected = project(model).predict(x, verbose=0)
    np.testing.assert_allclose(sig(points=tf.constant(x))["logits"].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(expected, model.predict(x, verbose=0))


def test_relaxation_weights_refused_without_projection_module(tmp_path, monkeypatch):
    # If keras_relaxeq.export.projection cannot be imported, a model that visibly carries
    # `relaxation_kernel` weights is still refused, and plain models still export.
    monkeypatch.setitem(sys.modules, "keras_relaxeq.export.projection", None)
    with pytest.raises(ValueError, match="relaxation_kernel"):
        serving.export_saved_model(relaxed_model(), tmp_path, "relaxed", 1)
    with pytest.raises(RuntimeError, match="project"):
        serving.export_saved_model(relaxed_model(), tmp_path, "relaxed", 1, allow_relaxed=True)


def test_pack_is_reproducible(exported, tmp_path):
    path = exported["path"]
    a = serving.pack_saved_model(path, tmp_path / "a.tar.gz")
    for f in path.rglob("*"):  # new mtimes must not change the bytes
        os.utime(f, (1_700_000_000, 1_700_000_000))
    b = serving.pack_saved_model(path, tmp_path / "sub" / "b.tar.gz")
    assert a.sha256 == b.sha256
    assert a.sha256 == hashlib.sha256((tmp_path / "a.tar.gz").read_bytes()).hexdigest()
    assert a.size == (tmp_path / "a.tar.gz").stat().st_size
    assert a.path == tmp_path / "a.tar.gz"
    with tarfile.open(a.path) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names)
    assert "saved_model.pb" in names and "variables/variables.index" in names
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "" for m in members)
    assert all(m.isfile() or m.isdir() for m in members)
    files = {m.name: m.size for m in members if m.isfile()}
    assert files["saved_model.pb"] == (path / "saved_model.pb").stat().st_size
    assert not list(tmp_path.glob(".tmp-pack-*"))


def test_pack_rejects_non_saved_model(tmp_path):
    with pytest.raises(ValueError, match="saved_model.pb"):
        serving.pack_saved_model(tmp_path, tmp_path / "x.tar.gz")


# The out-of-process checks run last: their subprocesses work while the tests above run.
def test_loads_in_fresh_process_without_keras_relaxeq(exported):
    stdout, stderr = exported["fresh"].communicate(timeout=600)
    assert exported["fresh"].returncode == 0, stderr[-3000:]
    info = json.loads(stdout.strip().splitlines()[-1])
    assert info["imported_keras_relaxeq"] is False
    assert info["positional"] == 0
    assert info["inputs"] == {"points": ["float32", [None, None, 3]]}
    assert info["outputs"] == {
        "logits": ["float32", [None, NUM_CLASSES]],
        "probabilities": ["float32", [None, NUM_CLASSES]],
        "class_id": ["int64", [None]],
    }
    assert info["other_shape"] == [1, NUM_CLASSES]
    assert "serving_default" in info["signatures"]

    out = np.load(exported["base"] / "out.npz")
    expected = exported["model"].predict(exported["x"], verbose=0)
    np.testing.assert_allclose(out["logits"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["probabilities"], tf.nn.softmax(expected).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["probabilities"].sum(-1), 1.0, rtol=1e-5)
    # the served class is the argmax of the served logits (those match Keras' only to the tolerance above,
    # and two nearly equal logits may swap between kernels)
    np.testing.assert_array_equal(out["class_id"], out["logits"].argmax(-1))
    assert out["class_id"].dtype == np.int64


def test_saved_model_cli_lists_signature(exported):
    proc = exported["cli"]
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    text = stdout
    assert "inputs['points'] tensor_info:" in text
    block = text.split("inputs['points']")[1].split("outputs[")[0]
    assert "DT_FLOAT" in block and "(-1, -1, 3)" in block
    for name in ("logits", "probabilities", "class_id"):
        assert f"outputs['{name}']" in text
    class_block = text.split("outputs['class_id']")[1].split("outputs[")[0]
    assert "DT_INT64" in class_block
    assert "tensorflow/serving/predict" in text
