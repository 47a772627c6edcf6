"""``republish``: a published entry's weights as a new version with serving input checks."""

import importlib
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_relaxeq.export.serving import export_saved_model, pack_saved_model, sha256_file
from keras_relaxeq.models import vn_classifier
from keras_relaxeq.zoo import registry
from keras_relaxeq.zoo.download import ServingModel, safe_extract
from keras_relaxeq.zoo.publish import PublishError, republish

vn_classifier_module = importlib.import_module("keras_relaxeq.models.vn_classifier")
NAME = "vn_classifier_so3_toy"
CONFIG = {"num_classes": 40, "num_points": 32, "channels": [2, 4, 8], "k": 4, "hidden_units": 8,
          "relaxed": False}


@pytest.fixture
def zoo_v1(tmp_path, monkeypatch):
    """A zoo with v1 published as before the input checks existed (no InputCheck layer, no checks
    in the serving function)."""
    zoo = tmp_path / "zoo"
    (zoo / "cards").mkdir(parents=True)
    keras.utils.set_random_seed(0)
    with monkeypatch.context() as m:
        m.setattr(vn_classifier_module, "point_cloud_check", lambda n: keras.layers.Identity(name="check_points"))
        model = vn_classifier(**CONFIG)
    export = export_saved_model(model, tmp_path / "build", NAME, 1, input_shape=(None, None, 3),
                                input_checks=False, write_config=False)
    art_dir = zoo / "artifacts" / NAME / "1"
    packed = pack_saved_model(export, art_dir / f"{NAME}-1.tar.gz")
    model.save(art_dir / f"{NAME}-1.keras")
    arch, group, dataset = NAME.rsplit("_", 2)
    entry = {"name": NAME, "version": 1, "arch": arch, "group": group, "dataset": dataset,
             "task": "point_cloud_classification", "description": "toy.",
             "architecture": {"class": "keras_relaxeq.models.vn_classifier", "config": CONFIG},
             "input": {"name": "points", "dtype": "float32", "shape": [None, None, 3], "num_points": 32,
                       "preprocessing": "centre, unit sphere",
                       "preprocess": {"centre": "mean", "scale": "unit_sphere", "num_points": 32}},
             "outputs": {"logits": {"dtype": "float32", "shape": [None, 40]},
                         "probabilities": {"dtype": "float32", "shape": [None, 40]},
                         "class_id": {"dtype": "int64", "shape": [None]}},
             "artifact": {"file": f"artifacts/{NAME}/1/{NAME}-1.tar.gz", "format": "saved_model.tar.gz",
                          "size": packed.size, "sha256": packed.sha256},
             "keras_artifact": {"file": f"artifacts/{NAME}/1/{NAME}-1.keras", "format": "keras",
                                "size": (art_dir / f"{NAME}-1.keras").stat().st_size,
                                "sha256": sha256_file(art_dir / f"{NAME}-1.keras")},
             "metrics": [{"name": "accuracy", "value": 0.5, "protocol": "toy"}],
             "license": "Apache-2.0", "citation": "x", "card": f"cards/{NAME}-1.md"}
    (zoo / "cards" / f"{NAME}-1.md").write_text(
        f"# {NAME} v1\n\nA toy.\n\n## Use\n\n`relaxeq zoo download {NAME} --version 1`\n\n## Files\n\n"
        f"- SavedModel: `{entry['artifact']['file']}` ({packed.size:,} bytes, sha256 `{packed.sha256}`)\n")
    (zoo / "index.json").write_text(json.dumps({"schema_version": 1, "models": [entry]}, indent=2) + "\n")
    return zoo


def test_republish_adds_a_checked_version_with_the_same_weights(zoo_v1, tmp_path):
    before = (zoo_v1 / "artifacts" / NAME / "1" / f"{NAME}-1.tar.gz").read_bytes()
    entry = republish(NAME, zoo_dir=zoo_v1, num_samples=4)
    assert entry["version"] == 2 and entry["republished_from"] == 1
    assert entry["input_checks"] == ["shape", "finite"]
    cat = registry.load_index(zoo_v1 / "index.json")
    assert cat.versions(NAME) == [1, 2]  # v1 stays, unchanged
    assert (zoo_v1 / "artifacts" / NAME / "1" / f"{NAME}-1.tar.gz").read_bytes() == before
    v2 = cat.get(NAME)
    diff = [m for m in v2.metrics if m["name"] == "max_abs_diff_to_v1"][0]
    assert diff["value"] <= 1e-4 and v2.metrics[0]["name"] == "accuracy"
    card = registry.model_card(NAME, 2, index=zoo_v1 / "index.json")
    assert card.startswith(f"# {NAME} v2\n") and "## Version 2" in card and "--version 2" in card
    assert v2.artifact.sha256 in card

    old = ServingModel(safe_extract(zoo_v1 / v2.artifact.file.replace("/2/", "/1/").replace("-2.", "-1."),
                                    tmp_path / "old"))
    new = ServingModel(safe_extract(zoo_v1 / v2.artifact.file, tmp_path / "new"), v2)
    bad = np.ones((2, 32, 6), np.float32)
    assert old(bad)["logits"].shape == (2, 40)  # v1 answers a cloud with normals
    with pytest.raises(tf.errors.InvalidArgumentError, match="serving input points must have shape"):
        new(bad)
    x = v2.preprocess(np.random.default_rng(1).normal(size=(3, 32, 3)))
    np.testing.assert_allclose(new(x)["logits"], old(x)["logits"], atol=1e-5)
    keras_v2 = keras.saving.load_model(zoo_v1 / v2.keras_artifact.file, compile=False)
    assert type(keras_v2.get_layer("check_points")).__name__ == "InputCheck"

    with pytest.raises(PublishError, match="already in"):
        republish(NAME, from_version=1, version=2, zoo_dir=zoo_v1)


def test_republish_refuses_a_tampered_file(zoo_v1):
    path = zoo_v1 / "artifacts" / NAME / "1" / f"{NAME}-1.keras"
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(PublishError, match="is not the published"):
        republish(NAME, zoo_dir=zoo_v1)
    assert registry.load_index(zoo_v1 / "index.json").versions(NAME) == [1]
