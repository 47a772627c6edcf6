"""``relaxeq zoo publish``: a recipe run directory -> artifact, measured metrics, card, entry.

A tiny untrained projected VN classifier stands in for a trained run (real ModelNet40 validation
shapes, capped); everything is written to temporary zoo folders, never to the repository's.
"""

import hashlib
import importlib.util
import io
import json
import shlex
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_relaxeq import cli
from keras_relaxeq.models import vn_classifier
from keras_relaxeq.zoo import publish, registry

ROOT = Path(__file__).resolve().parents[2]
POINTS = 32
COMMAND = "python recipes/modelnet40.py --model vn_classifier --points 32 --width 0.125 --epochs 3"


def summary_for(**overrides):
    cfg = {
        "epochs": 3, "batch": 8, "optimizer": "adam", "lr": 0.001, "weight_decay": 0.0001,
        "momentum": 0.9, "lr_schedule": "step", "lr_step": 20, "lr_gamma": 0.7, "lr_min": 0.0,
        "label_smoothing": 0.0, "k": 4, "width": 0.125, "lambda_lie": 0.01, "lambda_proj": 0.01,
        "penalty_scale": "none", "relaxation_initializer": "zeros", "schedule": "triangle",
        "model": "vn_classifier", "relaxed": True, "theta_value": 0.1, "theta_per_step": False,
        "points": POINTS, "rotation": "so3", "data_dir": None, "val_fraction": 0.2,
        "split_seed": 0, "train_fraction": None, "max_train_samples": 16,
        "max_val_samples": 16, "seed": 0, "eval_every": 1, "relaxed_val": True,
        "bn_reestimate": None, "invariance_samples": 4, "output_dir": "runs/tiny",
        "resume": False, "fresh": False, "verbose": 2, "strategy": "default",
        "cpu_replicas": None,
    }
    cfg.update(overrides)
    return {"config": cfg, "strategy": "default", "num_replicas": 1, "epochs_run": 3,
            "final_projected_val_accuracy": 0.0625, "best_projected_val_accuracy": 0.125,
            "best_epoch": 2, "invariance": {"max_error": 1e-5, "relative_max_error": 1e-5},
            "wall_time_seconds": 12.0}


def tiny(relaxed=False):
    keras.utils.set_random_seed(0)
    return vn_classifier(40, num_points=POINTS, channels=(2, 4, 8), k=4, hidden_units=8,
                         relaxed=relaxed)


def make_run(path: Path, command=True, relaxed_file=False) -> Path:
    """A run directory like recipes/modelnet40.py writes it (summary, models, command)."""
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps(summary_for()))
    model = tiny()
    model.save(path / "best_projected.keras")
    model.save(path / "projected.keras")
    if relaxed_file:
        tiny(relaxed=True).save(path / "best_relaxed.keras")
    if command:
        (path / "command.txt").write_text(COMMAND + "\n")
    return path


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    root = tmp_path_factory.mktemp("publish")
    run = make_run(root / "tiny_run", relaxed_file=True)
    zoo = root / "zoo"
    entry = publish.publish_run(run, zoo_dir=zoo, max_val_samples=24, num_rotations=2,
                                invariance_samples=4)
    return {"root": root, "run": run, "zoo": zoo, "entry": entry}


def test_entry_parses_and_files_match(published):
    zoo, entry = published["zoo"], published["entry"]
    cat = registry.load_index(zoo / "index.json")
    e = cat.get("vn_classifier_so3_modelnet40")
    assert (e.version, e.arch, e.group, e.dataset) == (1, "vn_classifier", "so3", "modelnet40")
    assert e.task == "point_cloud_classification" and e.input_name == "points"
    assert e.input["shape"] == [None, None, 3] and e.input["num_points"] == POINTS
    assert sorted(e.outputs) == ["class_id", "logits", "probabilities"]
    assert e.architecture["class"] == "keras_relaxeq.models.vn_classifier"
    assert e.architecture["config"]["relaxed"] is False
    assert e.to_dict() == json.loads(json.dumps(entry))
    for art in (e.artifact, e.keras_artifact):  # size and sha256 of the files on disk
        data = (zoo / art.file).read_bytes()
        assert len(data) == art.size and hashlib.sha256(data).hexdigest() == art.sha256
    assert e.artifact.file == ("artifacts/vn_classifier_so3_modelnet40/1/"
                               "vn_classifier_so3_modelnet40-1.tar.gz")
    assert (zoo / entry["labels"]).read_text().split()[:2] == ["airplane", "bathtub"]
    assert not list(zoo.glob(".tmp-*"))
    # the .keras copy is the run's file, byte for byte
    assert (zoo / e.keras_artifact.file).read_bytes() == (
        published["run"] / "best_projected.keras").read_bytes()


def test_metrics_measured_on_the_artifact(published):
    metrics = {m["name"]: m for m in published["entry"]["metrics"]}
    assert list(metrics)[0] == "accuracy"  # the headline metric of `relaxeq zoo list`
    assert set(metrics) >= {"accuracy", "accuracy_unrotated", "invariance_max_abs_error",
                            "invariance_relative_error", "keras_max_abs_diff"}
    for m in metrics.values():
        assert 0.0 <= m["value"] <= 1.0, m
        assert m["split"] == "val" and len(m["protocol"]) > 40
    assert "SO(3)" in metrics["accuracy"]["protocol"]
    assert "24 of its" in metrics["accuracy"]["protocol"]
    assert metrics["keras_max_abs_diff"]["value"] <= 1e-4
    assert metrics["invariance_relative_error"]["value"] < 1e-3

    # the accuracy is that of the recipe's validation protocol: same shapes, points, rotations
    from keras_relaxeq.datasets.modelnet40 import modelnet40_dataset

    ds = modelnet40_dataset("val", num_points=POINTS, batch_size=24, rotation="so3",
                            val_fraction=0.2, split_seed=0, seed=1)
    x, y = next(iter(ds))
    model = keras.saving.load_model(published["run"] / "best_projected.keras")
    acc = float(np.mean(model.predict(np.asarray(x), verbose=0).argmax(-1) == np.asarray(y)))
    assert metrics["accuracy"]["value"] == pytest.approx(acc, abs=1e-6)


def test_card(published):
    zoo, entry = published["zoo"], published["entry"]
    assert entry["card"] == "cards/vn_classifier_so3_modelnet40-1.md"
    text = registry.model_card("vn_classifier_so3_modelnet40", index=zoo / "index.json")
    assert COMMAND in text
    for needle in ("width 0.125", "epochs run: 3", "best 0.1250, final 0.0625", "## Limits",
                   "not on the official test set", "Apache-2.0", "Constraint Relaxation",
                   "relaxeq zoo download vn_classifier_so3_modelnet40",
                   "tf.saved_model.load", entry["artifact"]["sha256"]):
        assert needle in text, needle
    for m in entry["metrics"]:
        assert f"`{m['name']}` | {m['value']} |" in text
    table = [ln for ln in text.splitlines() if ln.startswith("| `")]
    assert all(ln.count("|") - ln.count("\\|") == 4 for ln in table)  # pipes escaped


def test_relaxed_model_refused(published, tmp_path):
    zoo = tmp_path / "zoo"
    with pytest.raises(publish.PublishError, match="relaxation branches"):
        publish.publish_run(published["run"], zoo_dir=zoo, model_file="best_relaxed.keras")
    assert not (zoo / "index.json").exists() and not (zoo / "artifacts").exists()
    assert not list(zoo.glob(".tmp-*"))


def test_published_version_is_immutable(published):
    zoo = published["zoo"]
    before = (zoo / "index.json").read_bytes()
    with pytest.raises(publish.PublishError, match="immutable"):
        publish.publish_run(published["run"], zoo_dir=zoo, version=1)
    with pytest.raises(publish.PublishError, match="Invalid zoo name"):
        publish.publish_run(published["run"], zoo_dir=zoo, name="VN_so3")
    assert (zoo / "index.json").read_bytes() == before


def test_cli_publishes_the_next_version(published, tmp_path):
    zoo = published["zoo"]
    first = json.loads((zoo / "index.json").read_text())["models"][0]
    run = make_run(tmp_path / "run_without_command", command=False)
    out = io.StringIO()
    rc = cli.main(["zoo", "publish", str(run), "--zoo-dir", str(zoo), "--model-file",
                   "projected.keras", "--max-val-samples", "8", "--num-rotations", "1"], out=out)
    assert rc == 0, out.getvalue()
    doc = json.loads((zoo / "index.json").read_text())
    assert [(m["name"], m["version"]) for m in doc["models"]] == [
        ("vn_classifier_so3_modelnet40", 1), ("vn_classifier_so3_modelnet40", 2)]
    assert doc["models"][0] == first  # v1 untouched
    v2 = registry.load_index(zoo / "index.json").get("vn_classifier_so3_modelnet40")
    assert v2.version == 2 and v2.raw["training"]["model_file"] == "projected.keras"
    assert "8 of its" in v2.metrics[0]["protocol"]
    card = (zoo / v2.card).read_text()
    reconstructed = v2.raw["training"]["command"]
    assert reconstructed.startswith("python recipes/modelnet40.py --model vn_classifier")
    assert reconstructed in card and "reconstructed from summary.json" in card
    assert json.loads(out.getvalue()[out.getvalue().index("{"):])["version"] == 2


def test_reconstructed_command_reproduces_the_config():
    spec = importlib.util.spec_from_file_location("recipe_modelnet40_publish",
                                                  ROOT / "recipes" / "modelnet40.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    cfg = summary_for(relaxed=False, theta_per_step=True, data_dir="/data/with space")["config"]
    command = publish.recipe_command_from_config(cfg)
    argv = shlex.split(command)
    assert argv[:2] == ["python", "recipes/modelnet40.py"]
    again = recipe.resolve_config(recipe.build_parser().parse_args(argv[2:]))
    assert {k: again[k] for k in cfg} == cfg


def test_the_recipe_family_comes_from_the_summary():
    """A run names its recipe in summary.json; runs from before that field are told by their config."""
    nbody = {"recipe": publish.NBODY_RECIPE, "config": {"model": "x", "points": 8}}
    assert publish.run_recipe(nbody) == publish.NBODY_RECIPE  # the field wins over the config's keys
    assert publish.recipe_run_class(publish.run_recipe(nbody)) is publish.NBodyRun
    assert publish.run_recipe(summary_for()) == publish.RECIPE  # legacy: no field, sniffed from the config
    with pytest.raises(publish.PublishError, match="runs of 'recipes/other.py' cannot be published"):
        publish.run_recipe({"recipe": "recipes/other.py", "config": {}})
