"""Input checks inside the serving function: mis-shaped and non-finite inputs are refused.

A SavedModel does not enforce its signature's shapes when it is served (``tf.saved_model.load``
and TF Serving feed whatever arrives), so without checks a ``[batch, N, 6]`` cloud is silently
reshaped into another one and answered with a confident class. These tests load the export in
fresh interpreters that do not import keras_relaxeq: through ``tf.saved_model.load``, through a
TF1 session fed without the Python client's shape check (as TF Serving's C++ server feeds it), and
through ``saved_model_cli run``.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_relaxeq.export import serving

BIN = Path(sys.executable).parent
NUM_POINTS = 17

#: name -> the array fed; every one but "good" and "empty" must be refused
CASES = """{
    "good": np.ones((2, N, 3)),
    "normals": np.ones((2, N, 6)),
    "xy": np.ones((2, N, 2)),
    "rank4": np.ones((1, 2, N, 3)),
    "unbatched": np.ones((N, 3)),
    "nan": np.where(np.arange(2 * N * 3).reshape(2, N, 3) == 7, np.nan, 1.0),
    "inf": np.where(np.arange(2 * N * 3).reshape(2, N, 3) == 7, np.inf, 1.0),
    "empty": np.ones((0, N, 3)),
}"""

FRESH_CODE = """
import json, sys
import numpy as np
import tensorflow as tf
N = %d
cases = {k: v.astype(np.float32) for k, v in (%s).items()}
path, out = sys.argv[1], {}
sig = tf.saved_model.load(path).signatures["serving_default"]
for name, x in cases.items():
    try:
        out["load/" + name] = ["ok", sig(points=tf.constant(x))["logits"].shape.as_list()]
    except tf.errors.InvalidArgumentError as exc:
        out["load/" + name] = ["error", exc.message]
# TF Serving's path: a session on the SavedModel's graph (grappler on), fed through the C API
# without the Python client's placeholder shape check
tf.compat.v1.disable_eager_execution()
with tf.compat.v1.Session(graph=tf.Graph()) as sess:
    sig = tf.compat.v1.saved_model.load(sess, ["serve"], path).signature_def["serving_default"]
    feed = sess.graph.get_tensor_by_name(sig.inputs["points"].name)._as_tf_output()
    fetch = sess.graph.get_tensor_by_name(sig.outputs["logits"].name)._as_tf_output()
    for name, x in cases.items():
        try:
            out["session/" + name] = ["ok", list(sess._call_tf_sessionrun(None, {feed: x}, [fetch], [], None)[0].shape)]
        except tf.errors.InvalidArgumentError as exc:
            out["session/" + name] = ["error", exc.message]
out["imported_keras_relaxeq"] = any(m.startswith("keras_relaxeq") for m in sys.modules)
print(json.dumps(out))
""" % (NUM_POINTS, CASES)  # noqa: UP031 (a script template)


def tiny_classifier(seed=0):
    keras.utils.set_random_seed(seed)
    points = keras.Input((None, 3), name="points")
    h = keras.layers.Dense(8, activation="relu")(keras.ops.norm(points, axis=-1, keepdims=True))
    return keras.Model(points, keras.layers.Dense(4)(keras.ops.mean(h, axis=1)), name="tiny")


def _env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERAS_RELAXEQ")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env.pop("PYTHONPATH", None)
    return env


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    base = tmp_path_factory.mktemp("guards")
    path = serving.export_saved_model(tiny_classifier(), base, "tiny_so3_toy", 1, write_config=False)
    fresh = subprocess.Popen(
        [sys.executable, "-c", FRESH_CODE, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=base,
    )
    np.save(base / "nan.npy", np.full((1, NUM_POINTS, 3), np.nan, np.float32))
    cli = subprocess.Popen(
        [
            str(BIN / "saved_model_cli"),
            "run",
            "--dir",
            str(path),
            "--tag_set",
            "serve",
            "--signature_def",
            "serving_default",
            "--inputs",
            f"points={base / 'nan.npy'}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=base,
    )
    yield {"path": path, "base": base, "fresh": fresh, "cli": cli}
    for proc in (fresh, cli):
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_guard_ops_are_in_the_exported_graph(exported):
    ops = serving.list_ops(exported["path"])
    assert {"Assert", "EnsureShape", "CheckNumerics"} <= ops
    serving.check_guards(exported["path"], {"points": tf.TensorSpec([None, None, 3])})


def test_export_without_checks_is_detected(tmp_path):
    path = serving.export_saved_model(tiny_classifier(), tmp_path, "plain", 1, input_checks=False, write_config=False)
    assert "CheckNumerics" not in serving.list_ops(path)
    with pytest.raises(ValueError, match="missing ops"):
        serving.check_guards(path, {"points": tf.TensorSpec([None, None, 3])})


def test_several_inputs_each_checked(tmp_path):
    """An N-body-like signature: extra charge columns and a wrong particle count are refused."""
    loc, charges = keras.Input((5, 3), name="loc"), keras.Input((5, 1), name="charges")
    model = keras.Model({"loc": loc, "charges": charges}, keras.layers.Add()([loc, charges * 0.0]))
    specs = {"loc": tf.TensorSpec([None, 5, 3]), "charges": tf.TensorSpec([None, 5, 1])}
    path = serving.export_saved_model(
        model, tmp_path, "toy", 1, input_signature=specs, outputs="regression", write_config=False
    )
    sig = tf.saved_model.load(str(path)).signatures["serving_default"]
    loc_x = tf.ones([2, 5, 3])
    assert sig(loc=loc_x, charges=tf.ones([2, 5, 1]))["prediction"].shape == (2, 5, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"serving input charges must have shape \[batch, 5, 1\]"):
        sig(loc=loc_x, charges=tf.ones([2, 5, 2]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"serving input loc must have shape \[batch, 5, 3\]"):
        sig(loc=tf.ones([2, 4, 3]), charges=tf.ones([2, 4, 1]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="serving input charges contains NaN or Inf"):
        sig(loc=loc_x, charges=tf.fill([2, 5, 1], np.inf))


def test_fresh_process_refuses_bad_inputs(exported):
    stdout, stderr = exported["fresh"].communicate(timeout=600)
    assert exported["fresh"].returncode == 0, stderr[-3000:]
    out = json.loads(stdout.strip().splitlines()[-1])
    assert out.pop("imported_keras_relaxeq") is False
    for how in ("load", "session"):
        assert out[f"{how}/good"] == ["ok", [2, 4]]
        assert out[f"{how}/empty"] == ["ok", [0, 4]]
        for case in ("normals", "xy", "rank4", "unbatched"):
            status, message = out[f"{how}/{case}"]
            assert status == "error", (how, case)
            assert "serving input points must have shape [batch, ?, 3]" in message, (how, case, message)
        for case in ("nan", "inf"):
            status, message = out[f"{how}/{case}"]
            assert status == "error" and "serving input points contains NaN or Inf" in message, (how, case)


def test_saved_model_cli_run_refuses_nan(exported):
    proc = exported["cli"]
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode != 0
    assert "serving input points contains NaN or Inf values" in stdout + stderr
