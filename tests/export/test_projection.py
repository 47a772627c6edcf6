"""project(): a functional RelaxedModel becomes a plain functional keras.Model (saved without the model class)."""

import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import keras
import numpy as np

import keras_relaxeq as kr
from keras_relaxeq.layers import VNLinear, VNMeanPool

REPO = Path(__file__).resolve().parents[2]


def relaxed_two_input_model():
    """Dict inputs, as SEGNN's: the projected model keeps the input structure."""
    points = keras.Input((6, 1, 3), name="points")
    scale = keras.Input((1,), name="scale")
    h = VNLinear(4, relaxation_initializer="glorot_uniform")(points)
    h = VNMeanPool()(h)
    out = keras.layers.Dense(2)(keras.layers.Flatten()(h)) * scale
    return kr.RelaxedModel({"points": points, "scale": scale}, out, lambda_lie=0.05, name="tiny")


def inputs(n=3):
    rng = np.random.default_rng(0)
    return {"points": rng.normal(size=(n, 6, 1, 3)).astype("float32"), "scale": np.full((n, 1), 2.0, "float32")}


def test_projected_relaxed_model_is_a_plain_functional_model(tmp_path):
    model = relaxed_two_input_model()
    model.compile(optimizer="adam", loss="mse", metrics=["mae"])
    x = inputs()
    kr.set_theta(model, 0.0)
    expected = model(x).numpy()
    plain = kr.project(model)
    probe = keras.Input((1,))
    assert type(plain) is type(keras.Model(probe, probe))  # Keras' Functional, not RelaxedModel
    assert plain.name == "tiny" and not kr.has_relaxation_branches(plain)
    assert set(plain.input) == {"points", "scale"}
    np.testing.assert_allclose(plain(x).numpy(), expected, rtol=1e-6, atol=1e-6)  # same graph, theta = 0
    assert plain.compiled and plain.get_compile_config()["loss"] == "mse"
    logs = plain.evaluate(x, np.zeros((3, 2), "float32"), verbose=0, return_dict=True)
    assert set(logs) == {"loss", "mae"}  # no penalty trackers of RelaxedModel

    path = tmp_path / "projected.keras"
    plain.save(path)
    config = json.loads(zipfile.ZipFile(path).read("config.json"))
    assert config["class_name"] == "Functional" and "RelaxedModel" not in json.dumps(config)
    np.save(tmp_path / "x.npy", x["points"])
    np.save(tmp_path / "expected.npy", expected)
    # a fresh process: the layer classes are registered by `import keras_relaxeq`, nothing else is needed
    script = textwrap.dedent(f"""
        import keras, numpy as np
        import keras_relaxeq
        model = keras.saving.load_model({str(path)!r})
        assert type(model).__name__ == "Functional", type(model)
        points = np.load({str(tmp_path / "x.npy")!r})
        out = model({{"points": points, "scale": np.full((len(points), 1), 2.0, "float32")}})
        np.testing.assert_allclose(np.asarray(out), np.load({str(tmp_path / "expected.npy")!r}), rtol=1e-6, atol=1e-6)
        print("loaded", type(model).__name__)
    """)
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert result.returncode == 0 and "loaded Functional" in result.stdout, result.stderr[-2000:]


def test_projecting_a_plain_keras_model_keeps_its_class():
    points = keras.Input((6, 1, 3))
    model = keras.Model(points, VNMeanPool()(VNLinear(2)(points)))
    plain = kr.project(model)
    assert type(plain) is type(model) and not kr.has_relaxation_branches(plain)


def test_weights_of_the_relaxed_model_copy_into_its_plain_projection():
    """ProjectedValidation re-projects by copying weights into the model project() returned."""
    model = relaxed_two_input_model()
    x = inputs()
    plain = kr.project(model)
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)][0].kernel
    dense.assign(dense.numpy() + 1.0)  # as training would
    kr.set_theta(model, 0.0)
    assert np.abs(plain(x).numpy() - model(x).numpy()).max() > 1e-2
    kr.export.copy_equivariant_weights(model, plain)
    np.testing.assert_allclose(plain(x).numpy(), model(x).numpy(), rtol=1e-6, atol=1e-6)
