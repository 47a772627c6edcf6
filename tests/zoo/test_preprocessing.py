"""Zoo entries ship their preprocessing, labels and input checks; ``classify`` returns names."""

import copy
import json
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_relaxeq import zoo
from keras_relaxeq.zoo import errors, registry

REPO_ZOO = Path(__file__).resolve().parents[2] / "zoo"
LABELS = [f"class{i}" for i in range(40)]


def entry(version=1, **extra):
    e = {
        "name": "toy_so3_modelnet40", "version": version, "arch": "toy", "group": "so3", "dataset": "modelnet40",
        "task": "point_cloud_classification",
        "architecture": {"class": "keras_relaxeq.models.vn_classifier", "config": {"num_classes": 40}},
        "input": {"name": "points", "dtype": "float32", "shape": [None, None, 3], "num_points": 50,
                  "preprocessing": "centre, unit sphere",
                  "preprocess": {"centre": "mean", "scale": "unit_sphere", "num_points": 50}},
        "outputs": {"logits": {"dtype": "float32", "shape": [None, 40]}},
        "labels": "cards/labels.txt",
        "artifact": {"file": "a.tar.gz", "size": 10, "sha256": "ab" * 32},
        "metrics": [], "license": "Apache-2.0", "citation": "x",
    }
    e.update(extra)
    return e


@pytest.fixture
def catalogue(tmp_path):
    (tmp_path / "cards").mkdir()
    (tmp_path / "cards" / "labels.txt").write_text("\n".join(LABELS) + "\n")
    path = tmp_path / "index.json"
    path.write_text(json.dumps({"schema_version": 1, "models": [entry(), entry(2, input_checks=["shape"])]}))
    return registry.load_index(path)


def test_labels_and_preprocessing_spec(catalogue):
    e = catalogue.get("toy_so3_modelnet40", 1)
    assert e.labels == tuple(LABELS)
    assert e.preprocessing == {"centre": "mean", "scale": "unit_sphere", "num_points": 50}
    assert e.num_points == 50
    assert e.input_checks == () and catalogue.get("toy_so3_modelnet40", 2).input_checks == ("shape",)


def test_preprocess_centres_scales_and_draws_the_points(catalogue):
    e = catalogue.get("toy_so3_modelnet40")
    raw = np.random.default_rng(0).normal(loc=5.0, scale=3.0, size=(4, 200, 3))
    x = e.preprocess(raw, seed=1)
    assert x.shape == (4, 50, 3) and x.dtype == np.float32
    full = e.preprocess(raw, num_points=200)  # every point: centred exactly, farthest at 1
    np.testing.assert_allclose(full.mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(full, axis=-1).max(axis=1), 1.0, rtol=1e-6)
    # the drawn points are points of the normalised cloud, without repeats
    for cloud, sub in zip(full, x):
        d = np.linalg.norm(sub[:, None] - cloud[None], axis=-1)
        assert d.min(axis=1).max() < 1e-6 and len(np.unique(d.argmin(axis=1))) == 50
    assert e.preprocess(raw[0], seed=1).shape == (50, 3)  # one cloud keeps its rank
    assert e.preprocess(raw[:, :20], seed=1).shape == (4, 50, 3)  # fewer points: drawn with repeats
    with pytest.raises(ValueError, match=r"xyz only"):
        e.preprocess(np.ones((2, 60, 6)))
    bad = raw.copy()
    bad[1, 2, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        e.preprocess(bad)


def test_point_count_warning(catalogue):
    e = catalogue.get("toy_so3_modelnet40")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert e.check_num_points(np.zeros((2, 50, 3)))
    with pytest.warns(UserWarning, match="trained and evaluated on 50 points per cloud, got 1024"):
        assert not e.check_num_points(np.zeros((2, 1024, 3)))


def constant_classifier(winner: int):
    """A real Keras model whose logits favour class ``winner`` (bias) whatever the cloud."""
    points = keras.Input((None, 3), name="points")
    dense = keras.layers.Dense(40, kernel_initializer="zeros",
                               bias_initializer=keras.initializers.Constant(np.eye(40)[winner] * 5.0))
    return keras.Model(points, dense(keras.layers.GlobalAveragePooling1D()(points)))


def test_classify_returns_names(catalogue):
    e = catalogue.get("toy_so3_modelnet40")
    model = constant_classifier(7)
    raw = np.random.default_rng(0).normal(size=(3, 80, 3))
    assert zoo.classify(model, raw, entry=e) == ["class7"] * 3
    assert zoo.classify(model, raw[0], entry=e) == "class7"
    top = zoo.classify(model, raw, entry=e, top_k=2)
    assert [name for name, _ in top[0]][0] == "class7" and 0.5 < top[0][0][1] <= 1.0
    with pytest.warns(UserWarning, match="got 80"):
        zoo.classify(model, raw, entry=e, preprocess=False)
    with pytest.raises(TypeError, match="needs the zoo entry"):
        zoo.classify(model, raw)


def test_a_loaded_artifact_warns_on_another_point_count(catalogue, tmp_path):
    from keras_relaxeq.export.serving import export_saved_model
    from keras_relaxeq.zoo.download import ServingModel

    e = catalogue.get("toy_so3_modelnet40")
    path = export_saved_model(constant_classifier(3), tmp_path, "toy", 1, input_name="points")
    served = ServingModel(path, e)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert served(np.zeros((2, 50, 3), np.float32))["class_id"].tolist() == [3, 3]
    with pytest.warns(UserWarning, match="trained and evaluated on 50 points per cloud, got 1024"):
        served(np.zeros((1024, 3), np.float32))  # one unbatched cloud


def test_label_count_must_match_the_logits(catalogue, tmp_path):
    (tmp_path / "cards" / "labels.txt").write_text("a\nb\n")
    with pytest.raises(errors.ZooError, match="lists 2 labels but"):
        catalogue.get("toy_so3_modelnet40").labels


@pytest.mark.parametrize("mutate, message", [
    (lambda e: e["input"]["preprocess"].update(centre="median"), "preprocess.centre"),
    (lambda e: e["input"]["preprocess"].update(scale="cube"), "preprocess.scale"),
    (lambda e: e["input"]["preprocess"].update(num_points=0), "preprocess.num_points"),
    (lambda e: e["input"].update(preprocess="unit sphere"), "input.preprocess must be an object"),
    (lambda e: e.update(labels="../labels.txt"), "relative POSIX path"),
    (lambda e: e.update(input_checks=["shape", "dtype"]), "input_checks"),
])
def test_malformed_preprocessing_fields_rejected(tmp_path, mutate, message):
    e = copy.deepcopy(entry())
    mutate(e)
    path = tmp_path / "index.json"
    path.write_text(json.dumps({"schema_version": 1, "models": [e]}))
    with pytest.raises(errors.InvalidIndexError, match=message):
        registry.load_index(path)


#: entries whose first version predates the serving input checks
PUBLISHED_BEFORE_INPUT_CHECKS = ("segnn_o3_nbody", "vn_dgcnn_so3_modelnet40", "vn_pointnet_so3_modelnet40")


def test_shipped_entries_have_preprocessing_labels_and_checked_versions():
    cat = registry.load_index(REPO_ZOO / "index.json")
    for name in cat.names():
        versions = cat.versions(name)
        latest = cat.get(name)
        # potentials also refuse another molecule's atoms
        checks = ("shape", "finite") + (("composition",) if latest.task == "interatomic_potential" else ())
        assert latest.input_checks == checks, name  # republished with serving checks
        if name in PUBLISHED_BEFORE_INPUT_CHECKS:  # v1 without the checks is still there for its users
            assert len(versions) >= 2 and cat.get(name, versions[0]).input_checks == (), name
        else:  # entries first published with the checks have them in every version
            assert all(cat.get(name, v).input_checks == checks for v in versions), name
        if latest.task in ("field_forecasting", "interatomic_potential"):  # inputs go in as they are (Å, frames)
            assert not latest.preprocessing, name
        else:
            assert latest.preprocessing, name
        if latest.task == "point_cloud_classification":
            assert latest.labels[:3] == ("airplane", "bathtub", "bed") and len(latest.labels) == 40
            assert latest.preprocessing["num_points"] == latest.num_points == 300
