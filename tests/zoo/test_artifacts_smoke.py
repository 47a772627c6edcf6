"""Every C4 field forecaster of the repository's ``zoo/index.json`` (``steerable_cnn_c4_smokeplume``) works as
published: ``relaxeq zoo verify`` passes every step on it (sha256, loading, signature, C4 equivariance, input
checks, ``SignatureDef``, a fresh TensorFlow-only process), ``saved_model_cli show`` lists the serving signature,
the ``.keras`` file answers as the SavedModel and is C4-equivariant itself, and the card lists the entry's
metrics. With no such entry a single test checks that the catalogue has none.
"""

import io
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_relaxeq.groups.cyclic import FieldType
from keras_relaxeq.testing.cyclic import check_cyclic_equivariance
from keras_relaxeq.zoo import registry
from keras_relaxeq.zoo.download import ensure_artifact
from keras_relaxeq.zoo.loading import ServingModel
from keras_relaxeq.zoo.verify import verify_entries

REPO_INDEX = Path(__file__).resolve().parents[2] / "zoo" / "index.json"
BIN = Path(sys.executable).parent


def _keys():
    entries = registry.load_index(REPO_INDEX).entries
    keys = sorted((e.name, e.version) for e in entries if e.is_c4_field_forecaster)
    return [pytest.param(k, id=f"{k[0]}-v{k[1]}") for k in keys] or [pytest.param(None, id="no-entries")]


@pytest.mark.parametrize("key", _keys())
def test_shipped_field_forecaster(key, tmp_path):
    cat = registry.load_index(REPO_INDEX)
    if key is None:
        assert not [e for e in cat.entries if e.is_c4_field_forecaster]
        return
    e = cat.get(*key)
    out = io.StringIO()
    assert verify_entries([e.name], index=REPO_INDEX, out=out, cache_dir=tmp_path / "cache", progress=False) == 0, (
        out.getvalue())
    line = next(ln for ln in out.getvalue().splitlines() if ln.startswith(f"OK    {e.name} v{e.version}:"))
    for step in ("sha256 ok", "C4 equivariance relative err", "input checks ok", "SignatureDef ok",
                 "fresh process ok (TensorFlow only, no keras_relaxeq"):
        assert step in line, (step, line)

    path = ensure_artifact(e, e.artifact, catalogue=cat, cache_dir=tmp_path / "cache", progress=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERAS_RELAXEQ") and k != "PYTHONPATH"}
    cli = subprocess.run([str(BIN / "saved_model_cli"), "show", "--dir", str(path), "--tag_set", "serve",
                          "--signature_def", "serving_default"], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=300)
    assert cli.returncode == 0, cli.stderr[-2000:]
    frames, grid = e.input["shape"][1], e.input["shape"][2]
    block = cli.stdout.split("inputs['frames'] tensor_info:")[1].split("outputs[")[0]
    assert "DT_FLOAT" in block and f"(-1, {frames}, {grid}, {grid}, 2)" in block, cli.stdout
    block = cli.stdout.split("outputs['next_frame'] tensor_info:")[1]
    assert "DT_FLOAT" in block and f"(-1, {grid}, {grid}, 2)" in block, cli.stdout

    # the .keras file: same answers as the SavedModel, C4-equivariant, its own input check
    served = ServingModel(path, e)
    keras_model = keras.saving.load_model(REPO_INDEX.parent / e.keras_artifact.file, compile=False)
    x = (3.0 * np.random.default_rng(0).normal(size=(2, frames, grid, grid, 2))).astype("float32")
    want = served(frames=x)["next_frame"]
    np.testing.assert_allclose(keras_model.predict(x, verbose=0), want, atol=1e-5 + 1e-4 * np.abs(want).max())
    vector = FieldType.vector(4)
    report = check_cyclic_equivariance(keras_model, tf.constant(x), vector, vector, atol=0.0)
    assert report.max_error < 1e-5 * report.scale, report
    with pytest.raises(ValueError, match="NaN or Inf"):
        keras_model.predict(np.where(x > 2, np.nan, x), verbose=0)

    card = (REPO_INDEX.parent / e.card).read_text()
    for m in e.metrics:
        assert f"| `{m['name']}` | {m['value']} |" in card, m["name"]
    assert "## Limits" in card and e.artifact.sha256 in card
