"""recipes/modelnet40.py end to end on a tiny budget (real ModelNet40 data), then resumed."""

import csv
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def load_recipe():
    spec = importlib.util.spec_from_file_location("recipe_modelnet40", ROOT / "recipes" / "modelnet40.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_config_defaults_per_model():
    recipe = load_recipe()
    args = recipe.build_parser().parse_args(["--model", "vn_dgcnn"])
    cfg = recipe.resolve_config(args)
    assert (cfg["epochs"], cfg["batch"], cfg["optimizer"], cfg["lr"], cfg["lr_min"]) == (250, 32, "sgd", 0.1, 1e-3)
    assert cfg["label_smoothing"] == 0.2 and cfg["k"] == 20 and cfg["lambda_lie"] == 0.0005
    cfg = recipe.resolve_config(recipe.build_parser().parse_args(["--model", "vn_pointnet", "--lr", "0.01"]))
    assert (cfg["epochs"], cfg["batch"], cfg["optimizer"], cfg["lr"]) == (200, 24, "adam", 0.01)
    step = recipe.learning_rate_fn(cfg)
    assert step(19) == pytest.approx(0.01) and step(20) == pytest.approx(0.007)
    cos = recipe.learning_rate_fn(recipe.resolve_config(recipe.build_parser().parse_args(["--model", "vn_dgcnn"])))
    assert cos(0) == pytest.approx(0.1) and cos(250) == pytest.approx(1e-3)
    assert recipe.resolve_config(recipe.build_parser().parse_args(["--no-relaxed"]))["relaxed"] is False


def test_theta_clock_can_be_longer_than_the_run():
    recipe = load_recipe()
    cfg = recipe.resolve_config(recipe.build_parser().parse_args(["--epochs", "8", "--theta-epochs", "200"]))
    assert cfg["theta_epochs"] == 200 and cfg["epochs"] == 8
    # the reference's clock: after 8 of 200 epochs theta is 7/99.5, not the run's own triangle
    theta = recipe.theta_scheduler(cfg).theta_at
    assert theta(7) == pytest.approx(7 / 99.5) and theta(199) == 0.0
    own = recipe.theta_scheduler(recipe.resolve_config(recipe.build_parser().parse_args(["--epochs", "8"])))
    assert own.theta_at(7) == 0.0 and own.theta_at(3.5) == pytest.approx(1.0)
    with pytest.raises(SystemExit, match="--theta-epochs must be >= 1"):
        recipe.resolve_config(recipe.build_parser().parse_args(["--theta-epochs", "0"]))


def on_disk_tb(out):
    return json.loads((out / "summary.json").read_text())["tensorboard"]


def test_recipe_runs_and_resumes(tmp_path):
    recipe = load_recipe()
    out = tmp_path / "run"
    base = [
        "--model",
        "vn_classifier",
        "--data-dir",
        str(DATA),
        "--points",
        "32",
        "--width",
        "0.125",
        "--k",
        "4",
        "--batch",
        "16",
        "--max-train-samples",
        "64",
        "--max-val-samples",
        "32",
        "--invariance-samples",
        "4",
        "--output-dir",
        str(out),
        "--verbose",
        "0",
        "--seed",
        "1",
        "--no-relaxed-val",
    ]
    summary = recipe.main(base + ["--epochs", "2"])
    for name in (
        "summary.json",
        "history.png",
        "projected.keras",
        "best_projected.keras",
        "best_relaxed.keras",
        "log.csv",
    ):
        assert (out / name).exists(), name
    assert (out / "backup").is_dir()
    manifest = json.loads((out / "backup" / "manifest.json").read_text())
    assert manifest["data_passes"] == {"train": 2}  # replayed on resume: epoch 3 sees the third pass
    if on_disk_tb(out):
        assert any((out / "logs").iterdir())
    assert (out / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["epochs_run"] == 2 and summary["epochs_this_invocation"] == 2
    assert 0.0 <= on_disk["final_projected_val_accuracy"] <= 1.0
    assert on_disk["best_projected_val_accuracy"] is not None
    assert on_disk["invariance"]["passed"], on_disk["invariance"]
    assert on_disk["params"]["projected_model"] < on_disk["params"]["trained_model"]
    assert on_disk["config"]["model"] == "vn_classifier" and on_disk["wall_time_seconds"] > 0
    assert on_disk["xla"] is True  # --jit-compile auto: XLA with one replica, also on CPU
    with open(out / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    for key in ("projected_val_accuracy", "theta", "lie_penalty", "projection_penalty", "accuracy"):
        assert key in rows[0], key
    assert float(rows[-1]["theta"]) == 0.0  # the schedule ends at 0
    assert on_disk["config"]["point_sampling"] == "random"

    # a second invocation with a larger budget resumes from the backup: one more epoch only
    summary2 = recipe.main(base + ["--epochs", "3"])
    assert summary2["epochs_this_invocation"] == 1 and summary2["resumed"]
    assert summary2["epochs_run"] == 3
    with open(out / "log.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [0, 1, 2]


@pytest.mark.parametrize("recipe_file", ["modelnet40.py", "segnn_nbody.py"])
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--cpu-replicas", "0", "--strategy", "mirrored"], "--cpu-replicas must be >= 1"),
        (["--cpu-replicas", "2"], "--cpu-replicas needs --strategy mirrored"),
        (["--cpu-replicas", "2", "--strategy", "multiworker"], "--cpu-replicas needs --strategy mirrored"),
    ],
)
def test_recipes_reject_bad_strategy_options(recipe_file, argv, message):
    spec = importlib.util.spec_from_file_location(f"recipe_{recipe_file[:-3]}", ROOT / "recipes" / recipe_file)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    with pytest.raises(SystemExit, match=message):
        recipe.resolve_config(recipe.build_parser().parse_args(argv))
    ok = recipe.resolve_config(recipe.build_parser().parse_args(["--cpu-replicas", "2", "--strategy", "mirrored"]))
    assert ok["cpu_replicas"] == 2
