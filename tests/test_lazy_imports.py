"""``import keras_relaxeq`` and the light ``relaxeq`` commands do not import TensorFlow; the
subpackages and top-level names are reachable lazily; Keras still finds the package's classes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_relaxeq as kr

REPO = Path(kr.__file__).resolve().parents[1]


def run_python(code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO
    )


def test_light_commands_do_not_import_tensorflow(tmp_path):
    code = f"""
import contextlib, io, json, sys
import keras_relaxeq as kr
from keras_relaxeq import cli
seen = {{}}
seen["import"] = sorted({{"tensorflow", "keras"}} & set(sys.modules))
zoo = kr.zoo
seen["kr.zoo"] = [zoo.__name__, zoo.list_models() == sorted(zoo.list_models())]
out = io.StringIO()
with contextlib.redirect_stderr(io.StringIO()):
    try:
        cli.main(["--help"], out=out)
    except SystemExit as exc:
        seen["help_exit"] = exc.code
name = zoo.list_models()[0]
codes = [cli.main(["zoo", "list"], out=out), cli.main(["zoo", "info", name], out=out),
         cli.main(["zoo", "download", name, "--no-progress", "--cache-dir", {str(tmp_path / "c")!r}],
                  out=out),
         cli.main(["zoo", "serve-config", name, "--cache-dir", {str(tmp_path / "c")!r},
                   "--base-dir", {str(tmp_path / "serving")!r}], out=out)]
seen["codes"] = codes
seen["after"] = sorted({{"tensorflow", "keras"}} & set(sys.modules))
print(json.dumps(seen))
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.splitlines()[-1])
    assert (tmp_path / "serving" / "models.config").is_file()
    assert seen == {
        "import": [],
        "kr.zoo": ["keras_relaxeq.zoo", True],
        "help_exit": 0,
        "codes": [0, 0, 0, 0],
        "after": [],
    }


@pytest.fixture(scope="module")
def saved_vn_model(tmp_path_factory):
    from keras_relaxeq.layers import VNLinear

    keras.utils.set_random_seed(0)
    x = keras.Input((5, 2, 3))
    model = keras.Model(x, VNLinear(4)(x))
    path = tmp_path_factory.mktemp("lazy") / "vn.keras"
    model.save(path)
    data = np.random.default_rng(0).normal(size=(2, 5, 2, 3)).astype("float32")
    np.save(path.with_suffix(".npy"), data)
    return path, model.predict(data, verbose=0)


@pytest.mark.parametrize(
    "first_import",
    [
        "import keras",
        pytest.param("import tensorflow as tf", marks=pytest.mark.slow),  # a second TF process
    ],
)
def test_load_model_after_plain_import(saved_vn_model, first_import):
    """``import keras_relaxeq`` (which imports neither Keras nor TensorFlow), then Keras or
    TensorFlow: the package's classes are registered, ``keras.saving.load_model`` works, and the
    lazy names resolve."""
    path, want = saved_vn_model
    code = f"""
import sys
import numpy as np
import keras_relaxeq as kr
assert "tensorflow" not in sys.modules and "keras" not in sys.modules
{first_import}
import keras
model = keras.saving.load_model({str(path)!r})
np.save({str(path.with_suffix(".out.npy"))!r}, model.predict(np.load({str(path.with_suffix(".npy"))!r}), verbose=0))
print(type(model.layers[-1]).__module__, kr.RelaxedModel.__name__, kr.project.__name__,
      kr.datasets.__name__, kr.layers.VNLinear.__name__, "zoo" in dir(kr))
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "keras_relaxeq.layers.vector_neurons",
        "RelaxedModel",
        "project",
        "keras_relaxeq.datasets",
        "VNLinear",
        "True",
    ]
    np.testing.assert_allclose(np.load(path.with_suffix(".out.npy")), want, rtol=1e-6, atol=1e-6)


def test_lazy_attributes_in_process():
    assert kr.zoo is sys.modules["keras_relaxeq.zoo"] and callable(kr.zoo.load)
    assert kr.RelaxedModel is kr.training.RelaxedModel
    assert kr.project is kr.export.project
    assert kr.__version__
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        kr.nope  # noqa: B018 (the attribute access raises)
    from keras_relaxeq import ThetaScheduler, datasets

    assert ThetaScheduler is kr.training.ThetaScheduler and datasets.__name__ == "keras_relaxeq.datasets"
