"""``relaxeq zoo verify`` fails C4 field forecasters that break what their entry promises: an artifact that is not
C4-equivariant (a plain CNN), one whose serving function answers mis-shaped / NaN frames, and a fresh process that
answers differently from the artifact loaded here. Entries are built from exports of tiny untrained forecasters.
"""

import io
import json

import keras
import numpy as np
import pytest

from keras_relaxeq.export.serving import pack_saved_model
from keras_relaxeq.models.smoke_plume import smoke_plume_forecaster
from keras_relaxeq.zoo import registry
from keras_relaxeq.zoo.fresh import FreshProcessCheck, valid_inputs
from keras_relaxeq.zoo.loading import ServingModel
from keras_relaxeq.zoo.publish.smoke_plume import export_smoke_saved_model
from keras_relaxeq.zoo.verify import check_c4_equivariance, verify_entries

GRID = 8


def entry(name, version, packed, root, input_checks=("shape", "finite")):
    arch, group, dataset = name.rsplit("_", 2)
    return {"name": name, "version": version, "arch": arch, "group": group, "dataset": dataset,
            "task": "field_forecasting", "architecture": {"class": "x", "config": {}},
            "input": {"name": "frames", "dtype": "float32", "shape": [None, 10, GRID, GRID, 2],
                      "preprocessing": "none"},
            "outputs": {"next_frame": {"dtype": "float32", "shape": [None, GRID, GRID, 2]}},
            "artifact": {"file": str(packed.path.relative_to(root)), "size": packed.size, "sha256": packed.sha256},
            "input_checks": list(input_checks), "metrics": [], "license": "Apache-2.0", "citation": "x"}


class LastFrame(keras.layers.Layer):
    def call(self, frames):
        return frames[:, -1]


def persistence_forecaster():
    """The next frame = the last one: exactly C4-equivariant, and without any input check of its own."""
    frames = keras.Input((10, GRID, GRID, 2), name="frames")
    return keras.Model(frames, LastFrame()(frames))


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    """v1: equivariant, guarded (passes); v2: plain CNN (not C4-equivariant); v3: equivariant, exported without
    input checks and without an InputCheck layer in the model."""
    root = tmp_path_factory.mktemp("zoo")
    name = "toy_cnn_c4_smoke"
    keras.utils.set_random_seed(0)
    models = [(smoke_plume_forecaster("equivariant", grid=GRID, width=0.05), True),
              (smoke_plume_forecaster("cnn", grid=GRID, width=0.05), True),
              (persistence_forecaster(), False)]
    entries, paths = [], {}
    for version, (model, checks) in enumerate(models, start=1):
        path = export_smoke_saved_model(model, root / "build", name, version, input_checks=checks)
        packed = pack_saved_model(path, root / "artifacts" / f"{name}-{version}.tar.gz")
        entries.append(entry(name, version, packed, root))
        paths[version] = path
    (root / "index.json").write_text(json.dumps({"schema_version": 1, "models": entries}))
    return {"index": root / "index.json", "paths": paths, "name": name}


def test_verify_fails_what_the_entry_does_not_keep(catalogue, tmp_path):
    out = io.StringIO()
    failures = verify_entries(index=catalogue["index"], out=out, cache_dir=tmp_path, progress=False)
    lines = [ln for ln in out.getvalue().splitlines() if ln.startswith(("OK", "FAIL"))]
    assert failures == 2, out.getvalue()
    good, cnn, unguarded = lines
    assert good.startswith("OK") and "fresh process ok" in good and "C4 equivariance relative err" in good
    assert cnn.startswith("FAIL") and "AssertionError: C4 equivariance relative err" in cnn
    assert "C4 equivariance relative err 0.00e+00" in unguarded  # the persistence model is exactly equivariant
    assert unguarded.startswith("FAIL") and "answered invalid inputs (9 frames, 4x4 grid, 3 components" in unguarded
    assert "NaN, Inf)" in unguarded


def test_c4_check_measures_the_error_relative_to_the_output(catalogue):
    cat = registry.load_index(catalogue["index"])
    e = cat.get(catalogue["name"], 1)
    ok, relative, report = check_c4_equivariance(ServingModel(catalogue["paths"][1], e), e)
    assert ok and relative < 1e-5 and report.scale > 0 and report.num_samples == 3  # quarter turns 1, 2, 3
    ok, relative, _ = check_c4_equivariance(ServingModel(catalogue["paths"][2], cat.get(catalogue["name"], 2)), e)
    assert not ok and relative > 1e-2


def test_fresh_process_disagreeing_with_this_process_fails(catalogue):
    cat = registry.load_index(catalogue["index"])
    e = cat.get(catalogue["name"], 1)
    feed = valid_inputs(e, seed=1)
    assert feed["frames"].shape == (2, 10, GRID, GRID, 2) and np.isfinite(feed["frames"]).all()
    fresh = FreshProcessCheck(catalogue["paths"][1], feed)
    other = ServingModel(catalogue["paths"][2], cat.get(catalogue["name"], 2))  # another model, same signature
    with pytest.raises(AssertionError, match="fresh process output 'next_frame' differs"):
        fresh.finish(other)
    assert not fresh.work.exists()
