"""The catalogue: the shipped zoo/index.json, overrides, lookups, validation, model cards."""

import copy
import json
from pathlib import Path

import pytest

import keras_relaxeq
from keras_relaxeq.zoo import errors, registry

REPO_ZOO = Path(__file__).resolve().parents[2] / "zoo"
SHA = "ab" * 32


def entry(name="vnpointnet_so3_modelnet40", version=1, **extra):
    arch, group, dataset = name.rsplit("_", 2)
    e = {
        "name": name, "version": version, "arch": arch, "group": group, "dataset": dataset,
        "task": "point_cloud_classification",
        "architecture": {"class": "keras_relaxeq.models.VNPointNet",
                         "config": {"num_classes": 40}},
        "input": {"name": "points", "dtype": "float32", "shape": [None, None, 3],
                  "preprocessing": "unit sphere"},
        "outputs": {"logits": {}, "probabilities": {}, "class_id": {}},
        "artifact": {"file": f"artifacts/{name}-{version}.tar.gz", "size": 10, "sha256": SHA},
        "metrics": [{"name": "accuracy", "value": 0.745, "split": "test",
                     "protocol": "SO(3)-rotated test set"}],
        "license": "Apache-2.0", "citation": "Pertigkiozoglou et al. 2024",
        "card": f"cards/{name}.md",
    }
    e.update(extra)
    return e


@pytest.fixture
def index(tmp_path, monkeypatch):
    root = tmp_path / "zoo"
    (root / "cards").mkdir(parents=True)
    (root / "cards" / "vnpointnet_so3_modelnet40.md").write_text("# VN-PointNet\nCard text.\n")
    entries = [entry(), entry(version=2, artifact={"file": "a/v2.tar.gz", "size": 11,
                                                   "sha256": "cd" * 32}),
               entry("vndgcnn_so3_modelnet40", card=None)]
    path = root / "index.json"
    path.write_text(json.dumps({"schema_version": 1, "models": entries}))
    monkeypatch.setenv(registry.ENV_INDEX, str(path))
    return path


def write(tmp_path, doc):
    path = tmp_path / "bad_index.json"
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return path


def test_shipped_catalogue_is_valid(monkeypatch):
    monkeypatch.delenv(registry.ENV_INDEX, raising=False)
    assert registry.default_zoo_dir() == Path(keras_relaxeq.__file__).resolve().parents[1] / "zoo"
    assert registry.index_path() == REPO_ZOO / "index.json"
    cat = registry.load_index()
    assert cat.path == REPO_ZOO / "index.json"
    assert registry.list_models() == cat.names()
    for e in cat.entries:  # every published entry has its card and a plausible artifact
        assert e.card and (REPO_ZOO / e.card).is_file(), e.name
        assert e.artifact.size > 0 and len(e.artifact.sha256) == 64
    assert (REPO_ZOO / "README.md").is_file()


def test_env_var_and_argument_select_the_catalogue(index, tmp_path):
    assert registry.index_path() == index
    assert registry.list_models() == ["vndgcnn_so3_modelnet40", "vnpointnet_so3_modelnet40"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "index.json").write_text(json.dumps({"schema_version": 1, "models": []}))
    assert registry.list_models(index=other) == []  # a folder holding index.json also works
    assert registry.load_index(other).root == other


def test_get_entry_latest_and_specific(index):
    latest = registry.get_entry("vnpointnet_so3_modelnet40")
    assert latest.version == 2 and latest.artifact.file == "a/v2.tar.gz"
    assert latest.artifact.basename == "v2.tar.gz"
    v1 = registry.get_entry("vnpointnet_so3_modelnet40", version=1)
    assert v1.version == 1 and v1.artifact.sha256 == SHA
    assert v1.input_name == "points" and v1.is_invariant_classifier
    assert v1.metrics[0]["protocol"] == "SO(3)-rotated test set"
    assert v1.to_dict()["architecture"]["config"] == {"num_classes": 40}
    assert [e.version for e in registry.list_entries()
            if e.name == "vnpointnet_so3_modelnet40"] == [1, 2]


def test_unknown_name_and_version(index):
    with pytest.raises(errors.UnknownModelError) as info:
        registry.get_entry("vnpointnet_so3_modelnet")
    msg = str(info.value)
    assert "Did you mean 'vnpointnet_so3_modelnet40'" in msg and "relaxeq zoo list" in msg
    assert isinstance(info.value, KeyError) and isinstance(info.value, errors.ZooError)
    with pytest.raises(errors.UnknownModelError) as info:
        registry.get_entry("resnet50_none_imagenet")
    assert "Did you mean" not in str(info.value)
    with pytest.raises(errors.UnknownModelError, match="no version 3; available versions: 1, 2"):
        registry.get_entry("vnpointnet_so3_modelnet40", version=3)


def test_model_card(index):
    assert registry.model_card("vnpointnet_so3_modelnet40").startswith("# VN-PointNet")
    with pytest.raises(errors.ZooError, match="no model card"):
        registry.model_card("vndgcnn_so3_modelnet40")


@pytest.mark.parametrize("mutate, message", [
    (lambda e: e.update(name="VNPointNet_so3_modelnet40"), "name must be"),
    (lambda e: e.update(arch="vndgcnn"), "name must equal"),
    (lambda e: e.update(version=0), "version"),
    (lambda e: e.update(version="1"), "version"),
    (lambda e: e["artifact"].update(sha256="xyz"), "sha256"),
    (lambda e: e["artifact"].update(size=0), "size"),
    (lambda e: e["artifact"].update(file="../../etc/passwd"), "relative POSIX path"),
    (lambda e: e["artifact"].update(file="/abs/file.tar.gz"), "relative POSIX path"),
    (lambda e: e.pop("license"), "license"),
    (lambda e: e["input"].pop("preprocessing"), "preprocessing"),
    (lambda e: e["metrics"][0].pop("protocol"), "protocol"),
    (lambda e: e.update(task="segmentation"), "task"),
], ids=["uppercase-name", "name-not-arch-group-dataset", "version-0", "version-str", "bad-sha",
        "size-0", "dotdot-file", "absolute-file", "no-license", "no-preprocessing",
        "no-protocol", "unknown-task"])
def test_malformed_entries_are_rejected(tmp_path, mutate, message):
    e = copy.deepcopy(entry())
    mutate(e)
    path = write(tmp_path, {"schema_version": 1, "models": [e]})
    with pytest.raises(errors.InvalidIndexError, match=message) as info:
        registry.load_index(path)
    assert str(path) in str(info.value) and "zoo/README.md" in str(info.value)


def test_multi_word_arch_names(tmp_path):
    # the zoo's names: the arch may have several words, group and dataset are the last two
    names = ["vn_pointnet_so3_modelnet40", "vn_dgcnn_so3_modelnet40", "vnpointnet_so3_modelnet40"]
    path = write(tmp_path, {"models": [entry(n) for n in names]})
    cat = registry.load_index(path)
    assert cat.names() == sorted(names)
    e = cat.get("vn_pointnet_so3_modelnet40")
    assert (e.arch, e.group, e.dataset) == ("vn_pointnet", "so3", "modelnet40")
    assert registry.split_name("vn_dgcnn_so3_modelnet40") == ("vn_dgcnn", "so3", "modelnet40")
    assert registry.split_name("a_b_c") == ("a", "b", "c")
    for bad in ("vn_so3", "VN_pointnet_so3_modelnet40", "vn__pointnet_so3_x", ""):
        with pytest.raises(ValueError, match="Invalid zoo name"):
            registry.split_name(bad)


@pytest.mark.parametrize("fields, message", [
    ({"arch": "vn", "group": "pointnet_so3"}, "group must match"),
    ({"arch": "vn_pointnet_so3", "group": "modelnet40", "dataset": ""}, "dataset must match"),
    ({"arch": "vn_pointnet_", "group": "so3"}, "arch must be"),
    ({"arch": "vn_dgcnn"}, "name must equal"),
], ids=["group-with-underscore", "empty-dataset", "arch-trailing-underscore", "arch-mismatch"])
def test_multi_word_arch_must_still_spell_the_name(tmp_path, fields, message):
    e = entry("vn_pointnet_so3_modelnet40")
    e.update(fields)
    with pytest.raises(errors.InvalidIndexError, match=message):
        registry.load_index(write(tmp_path, {"models": [e]}))


def test_malformed_catalogues_are_rejected(tmp_path):
    with pytest.raises(errors.InvalidIndexError, match="listed twice"):
        registry.load_index(write(tmp_path, {"models": [entry(), entry()]}))
    with pytest.raises(errors.InvalidIndexError, match="not valid JSON"):
        registry.load_index(write(tmp_path, "{not json"))
    with pytest.raises(errors.InvalidIndexError, match="unsupported schema"):
        registry.load_index(write(tmp_path, {"schema_version": 99, "models": []}))
    with pytest.raises(errors.InvalidIndexError, match="does not exist"):
        registry.load_index(tmp_path / "missing.json")


def test_index_reloads_when_the_file_changes(tmp_path):
    path = write(tmp_path, {"models": []})
    assert registry.list_models(index=path) == []
    path.write_text(json.dumps({"models": [entry()]}))
    assert registry.list_models(index=path) == ["vnpointnet_so3_modelnet40"]
