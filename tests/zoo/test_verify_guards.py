"""``relaxeq zoo verify`` checks that an entry's artifact refuses what its ``input_checks`` promise."""

import io
import json

import keras
import pytest

from keras_relaxeq import cli
from keras_relaxeq.export.serving import export_saved_model, pack_saved_model


def invariant_classifier():
    keras.utils.set_random_seed(0)
    points = keras.Input((None, 3), name="points")
    h = keras.layers.Dense(8, activation="relu")(keras.ops.norm(points, axis=-1, keepdims=True))
    return keras.Model(points, keras.layers.Dense(40)(keras.ops.mean(h, axis=1)))


def entry(name, packed, root, **extra):
    arch, group, dataset = name.rsplit("_", 2)
    e = {"name": name, "version": 1, "arch": arch, "group": group, "dataset": dataset,
         "task": "point_cloud_classification",
         "architecture": {"class": "keras.Model", "config": {}},
         "input": {"name": "points", "dtype": "float32", "shape": [None, None, 3], "num_points": 32,
                   "preprocessing": "centre, unit sphere"},
         "outputs": {"logits": {}, "probabilities": {}, "class_id": {}},
         "artifact": {"file": str(packed.path.relative_to(root)), "size": packed.size, "sha256": packed.sha256},
         "metrics": [], "license": "Apache-2.0", "citation": "x"}
    e.update(extra)
    return e


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    model = invariant_classifier()
    entries = []
    for name, checks in (("guarded_so3_toy", True), ("unguarded_so3_toy", False)):
        path = export_saved_model(model, root / "build", name, 1, input_checks=checks, write_config=False)
        packed = pack_saved_model(path, root / "artifacts" / f"{name}-1.tar.gz")
        entries.append(entry(name, packed, root, input_checks=["shape", "finite"]))
    old = export_saved_model(model, root / "build", "old_so3_toy", 1, input_checks=False, write_config=False)
    entries.append(entry("old_so3_toy", pack_saved_model(old, root / "artifacts" / "old-1.tar.gz"), root))
    (root / "index.json").write_text(json.dumps({"schema_version": 1, "models": entries}))
    return root / "index.json"


def test_verify_checks_the_serving_input_checks(index, tmp_path):
    out = io.StringIO()
    code = cli.main(["zoo", "--index", str(index), "verify", "--no-progress", "--cache-dir", str(tmp_path)], out=out)
    lines = {ln.split()[1]: ln for ln in out.getvalue().splitlines() if ln.startswith(("OK", "FAIL"))}
    assert code == 1
    assert lines["guarded_so3_toy"].startswith("OK")
    assert "input checks ok (points last axis 6, points rank 4, NaN in points refused)" in lines["guarded_so3_toy"]
    # promised checks that the artifact does not perform: verify fails and names what was answered
    assert lines["unguarded_so3_toy"].startswith("FAIL")
    assert "answered invalid inputs (points last axis 6, " in lines["unguarded_so3_toy"]
    assert "NaN in points)" in lines["unguarded_so3_toy"]
    # an entry published before the checks (no input_checks) is not held to them
    assert lines["old_so3_toy"].startswith("OK") and "input checks n/a" in lines["old_so3_toy"]
