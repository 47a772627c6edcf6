"""``relaxeq zoo verify`` fails scale field forecasters (group ``scale``) that break what their entry promises: a
SavedModel that is not translation-equivariant (a position-dependent output), weights changed consistently in both
artifacts (so their trunk no longer has the published scale-step error), a ``.keras`` file that answers differently
from the SavedModel, an entry without its ``.keras`` file, and a receptive field wider than the grid leaves room
for. Entries are built from exports of tiny untrained SESN forecasters (no data, no training).
"""

import io
import json

import keras
import numpy as np
import pytest

from keras_relaxeq.export.serving import pack_saved_model
from keras_relaxeq.models.smoke_plume_scale import smoke_plume_scale_forecaster
from keras_relaxeq.testing.scale import trunk_scale_step_error
from keras_relaxeq.utils import sha256_file
from keras_relaxeq.zoo import registry
from keras_relaxeq.zoo.loading import ServingModel
from keras_relaxeq.zoo.publish.smoke_plume import export_smoke_saved_model
from keras_relaxeq.zoo.verify import check_symmetry, verify_entries
from keras_relaxeq.zoo.verify_scale import check_keras_artifact, check_translation_equivariance

GRID, KERNEL, LAYERS, WIDTH = 16, 3, 3, 0.0625
CONFIG = {"arm": "equivariant", "grid": GRID, "width": WIDTH, "kernel_size": KERNEL, "num_layers": LAYERS}


class PositionBias(keras.layers.Layer):
    """Adds a fixed pattern that depends on the column: the output is no longer translation-equivariant."""

    def call(self, x):
        pattern = 0.5 * keras.ops.sin(0.7 * keras.ops.arange(GRID, dtype="float32"))
        return x + pattern[None, None, :, None]


def sesn(seed=0):
    keras.utils.set_random_seed(seed)
    return smoke_plume_scale_forecaster(**CONFIG)


def scale_error(model):
    return float(f"{trunk_scale_step_error(model, LAYERS, KERNEL, seed=0).max_error:.6g}")


def add_entry(root, entries, name, version, served, keras_model=None, metric_of=None):
    """Export ``served`` (and save ``keras_model``) into ``root``; the entry publishes the scale-step error of
    ``metric_of`` (default: of ``keras_model``)."""
    path = export_smoke_saved_model(served, root / "build", name, version)
    packed = pack_saved_model(path, root / "artifacts" / f"{name}-{version}.tar.gz")
    arch, group, dataset = name.rsplit("_", 2)
    entry = {"name": name, "version": version, "arch": arch, "group": group, "dataset": dataset,
             "task": "field_forecasting",
             "architecture": {"class": "keras_relaxeq.models.smoke_plume_scale.smoke_plume_scale_forecaster",
                              "config": CONFIG},
             "input": {"name": "frames", "dtype": "float32", "shape": [None, 10, GRID, GRID, 2], "preprocessing": "x"},
             "outputs": {"next_frame": {"dtype": "float32", "shape": [None, GRID, GRID, 2]}},
             "artifact": {"file": str(packed.path.relative_to(root)), "size": packed.size, "sha256": packed.sha256},
             "input_checks": ["shape", "finite"], "license": "Apache-2.0", "citation": "x",
             "metrics": [{"name": "scale_step_relative_error", "value": scale_error(metric_of or keras_model or served),
                          "protocol": "x"}]}
    if keras_model is not None:
        file = root / "artifacts" / f"{name}-{version}.keras"
        keras_model.save(file)
        entry["keras_artifact"] = {"file": str(file.relative_to(root)), "format": "keras",
                                   "size": file.stat().st_size, "sha256": sha256_file(file)}
    entries.append(entry)
    return path


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    """``good_sesn_scale_smoke`` v1: a forecaster and its own .keras (passes); ``toy_sesn_scale_smoke`` v1: a
    position-dependent output; v2: the lifting weights changed in both artifacts, the original's scale-step error
    published."""
    root = tmp_path_factory.mktemp("scale_zoo")
    good, entries, paths = sesn(0), [], {}
    paths["good"] = add_entry(root, entries, "good_sesn_scale_smoke", 1, good, good)
    frames = keras.Input((10, GRID, GRID, 2), name="frames")
    positional = keras.Model(frames, PositionBias()(good(frames)))
    add_entry(root, entries, "toy_sesn_scale_smoke", 1, positional, good)
    tampered = sesn(0)
    coefficients = tampered.get_layer("lifting").coefficients
    noise = np.random.default_rng(1).normal(size=tuple(coefficients.shape)).astype("float32")
    coefficients.assign(coefficients.numpy() + 0.1 * float(np.std(coefficients.numpy())) * noise)
    add_entry(root, entries, "toy_sesn_scale_smoke", 2, tampered, tampered, metric_of=good)
    (root / "index.json").write_text(json.dumps({"schema_version": 1, "models": entries}))
    return {"root": root, "index": root / "index.json", "paths": paths, "good": good, "tampered": tampered}


def test_verify_fails_what_the_entry_does_not_keep(catalogue, tmp_path):
    out = io.StringIO()
    failures = verify_entries(["toy_sesn_scale_smoke"], index=catalogue["index"], out=out, cache_dir=tmp_path,
                              progress=False)
    lines = [ln for ln in out.getvalue().splitlines() if ln.startswith(("OK", "FAIL"))]
    assert failures == 2, out.getvalue()
    positional, tampered = lines
    assert positional.startswith("FAIL") and "AssertionError: translation equivariance relative err" in positional
    assert tampered.startswith("FAIL") and "translation equivariance relative err 0.00e+00" in tampered
    assert "input checks ok" in tampered and "Keras parity ok" in tampered  # both artifacts carry the same weights
    assert "AssertionError: scale-step error of the .keras trunk" in tampered, tampered


def test_translation_check_is_exact_on_sesn_and_needs_room(catalogue):
    cat = registry.load_index(catalogue["index"])
    good = cat.get("good_sesn_scale_smoke")
    served = ServingModel(catalogue["paths"]["good"], good)
    ok, relative, detail = check_translation_equivariance(served, good)
    assert ok and relative < 1e-6 and "at least 3 cells from the borders" in detail
    assert check_symmetry(served, good) == (True, detail)  # what verify runs for a scale entry
    # a zero margin compares cells that see the zero padding: the SESN stack is not equivariant there
    assert not check_translation_equivariance(served, _with_config(good, num_layers=0))[0]
    # a receptive field wider than the grid leaves room for: refused, not passed vacuously
    ok, relative, detail = check_translation_equivariance(served, _with_config(good, num_layers=8))
    assert not ok and relative == float("inf") and "translation check impossible" in detail


def test_keras_artifact_must_be_the_served_model(catalogue):
    cat = registry.load_index(catalogue["index"])
    good = cat.get("good_sesn_scale_smoke")
    served = ServingModel(catalogue["paths"]["good"], good)
    keras_file = cat.root / good.keras_artifact.file
    steps = check_keras_artifact(served, good, keras_file)
    assert steps[0].startswith("Keras parity ok") and f"as published {good.metrics[0]['value']}" in steps[1]
    other = catalogue["root"] / "tampered.keras"
    catalogue["tampered"].save(other)
    with pytest.raises(AssertionError, match="the .keras artifact answers differently from the SavedModel"):
        check_keras_artifact(served, good, other)
    with pytest.raises(AssertionError, match="publishes no .keras file"):
        check_keras_artifact(served, good, None)


def _with_config(entry, **changes):
    raw = json.loads(json.dumps(entry.raw))
    raw["architecture"]["config"].update(changes)
    return registry.parse_index({"models": [raw]}, entry.root / "index.json").entries[0]
