"""Every scale field forecaster of the repository's ``zoo/index.json`` (``sesn_scale_smokeplume``) works as published:
``relaxeq zoo verify`` passes every step on it (sha256, loading, signature, translation equivariance, input checks,
the ``.keras`` file's parity and published scale-step error, ``SignatureDef``, a fresh TensorFlow-only process),
``saved_model_cli show`` lists the serving signature, the ``.keras`` file answers as the SavedModel on inputs of
another scale than verify's, its trunk's scale-step error is the published one, and the card lists the entry's
metrics and says that the scale equivariance is approximate. With no such entry a single test checks that the
catalogue has none.
"""

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from keras_relaxeq.zoo import registry
from keras_relaxeq.zoo.download import ensure_artifact, load
from keras_relaxeq.zoo.loading import ServingModel
from keras_relaxeq.zoo.verify import verify_entries
from keras_relaxeq.zoo.verify_scale import METRIC, SCALE_ERROR_ATOL, SCALE_ERROR_RTOL, trunk_scale_error

REPO_INDEX = Path(__file__).resolve().parents[2] / "zoo" / "index.json"
BIN = Path(sys.executable).parent
NAME = "sesn_scale_smokeplume"


def _keys():
    entries = registry.load_index(REPO_INDEX).entries
    keys = sorted((e.name, e.version) for e in entries if e.name == NAME or e.is_scale_field_forecaster)
    return [pytest.param(k, id=f"{k[0]}-v{k[1]}") for k in keys] or [pytest.param(None, id="no-entries")]


@pytest.mark.parametrize("key", _keys())
def test_shipped_scale_forecaster(key, tmp_path):
    cat = registry.load_index(REPO_INDEX)
    if key is None:
        assert not [e for e in cat.entries if e.name == NAME or e.group == "scale"]
        return
    e = cat.get(*key)
    assert e.is_scale_field_forecaster and e.keras_artifact is not None, e.name
    out = io.StringIO()
    assert verify_entries([e.name], index=REPO_INDEX, out=out, cache_dir=tmp_path / "cache", progress=False) == 0, (
        out.getvalue())
    line = next(ln for ln in out.getvalue().splitlines() if ln.startswith(f"OK    {e.name} v{e.version}:"))
    for step in ("sha256 ok", "translation equivariance relative err", "input checks ok", "Keras parity ok",
                 "scale-step error of the .keras trunk", "SignatureDef ok",
                 "fresh process ok (TensorFlow only, no keras_relaxeq"):
        assert step in line, (step, line)

    path = ensure_artifact(e, e.artifact, catalogue=cat, cache_dir=tmp_path / "cache", progress=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERAS_RELAXEQ") and k != "PYTHONPATH"}
    cli = subprocess.run([str(BIN / "saved_model_cli"), "show", "--dir", str(path), "--tag_set", "serve",
                          "--signature_def", "serving_default"], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=300)
    assert cli.returncode == 0, cli.stderr[-2000:]
    frames, grid = e.input["shape"][1], e.input["shape"][2]
    for block, shape in (("inputs['frames']", f"(-1, {frames}, {grid}, {grid}, 2)"),
                         ("outputs['next_frame']", f"(-1, {grid}, {grid}, 2)")):
        info = cli.stdout.split(f"{block} tensor_info:")[1].split("name:")[0]
        assert "DT_FLOAT" in info and shape in info, (block, cli.stdout)

    # the .keras file: the SavedModel's answers on large inputs, the published trunk error, its own input check
    served = ServingModel(path, e)
    keras_model = load(e.name, e.version, index=REPO_INDEX, cache_dir=tmp_path / "cache", progress=False,
                       as_keras=True)
    x = (3.0 * np.random.default_rng(0).normal(size=(2, frames, grid, grid, 2))).astype("float32")
    want = served(frames=x)["next_frame"]
    np.testing.assert_allclose(keras_model.predict(x, verbose=0), want, atol=1e-5 + 1e-4 * np.abs(want).max())
    published = {m["name"]: m["value"] for m in e.metrics}[METRIC]
    assert abs(trunk_scale_error(keras_model, e) - published) <= SCALE_ERROR_ATOL + SCALE_ERROR_RTOL * published
    with pytest.raises(ValueError, match="NaN or Inf"):
        keras_model.predict(np.where(x > 2, np.nan, x), verbose=0)

    card = (REPO_INDEX.parent / e.card).read_text()
    for m in e.metrics:
        assert f"| `{m['name']}` | {m['value']} |" in card, m["name"]
    assert "## Limits" in card and "Scale equivariance is approximate" in card and e.artifact.sha256 in card
