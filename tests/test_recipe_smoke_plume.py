"""recipes/smoke_plume.py on a stand-in data set (8x8 grid, random fields): train, select, evaluate, resume."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_relaxeq.datasets import smoke_plume as sp
from keras_relaxeq.models.smoke_plume import rollout_rmse

ROOT = Path(__file__).resolve().parents[1]
GRID = 8


def load_recipe():
    spec = importlib.util.spec_from_file_location("recipe_smoke_plume", ROOT / "recipes" / "smoke_plume.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Every simulation of the rotation set at 8x8: smooth random fields (no PhiFlow)."""
    folder = tmp_path_factory.mktemp("smoke_plume_rotation8")
    config = sp.smoke_plume_config("rotation", resolution=GRID)
    rng = np.random.default_rng(0)
    t = np.arange(config.num_frames)[:, None, None, None]
    for spec in config.simulations:
        base = rng.normal(size=(1, 2, GRID, GRID))
        drift = rng.normal(size=(1, 2, GRID, GRID))
        frames = base + 0.01 * t * drift + 0.05 * rng.normal(size=(config.num_frames, 2, GRID, GRID))
        np.save(folder / f"sim_{spec.name}.npy", frames.astype(np.float32))
    return folder


def argv(data_dir, out, *extra):
    return [
        "--data-dir",
        str(data_dir),
        "--no-generate",
        "--resolution",
        str(GRID),
        "--output-dir",
        str(out),
        "--width",
        "0.05",
        "--batch",
        "4",
        "--max-train-batches",
        "2",
        "--max-val-batches",
        "1",
        "--max-test-batches",
        "1",
        "--test-length",
        "3",
        "--verbose",
        "0",
        *extra,
    ]


def test_relaxed_arm_trains_selects_evaluates_and_resumes(data_dir, tmp_path, monkeypatch):
    recipe = load_recipe()
    out = tmp_path / "relaxed"
    summary = recipe.main(
        argv(data_dir, out, "--arm", "relaxed", "--epochs", "2", "--relaxation-initializer", "random_normal")
    )
    for name in ("summary.json", "log.csv", "projected.keras", "best_projected.keras", "history.png", "backup"):
        assert (out / name).exists(), name
    assert summary["epochs_run"] == 2 and summary["arm"] == "relaxed"
    assert summary["c4_equivariance"]["relative_max_error"] < 1e-5  # the projected forecaster
    assert summary["test_windows"] == {"test_future": 4, "test_domain": 4}
    assert len(summary["rmse_per_step"]["test_future"]) == 3
    # the reported RMSE is that of the saved forecaster, recomputed here
    forecaster = keras.saving.load_model(out / "projected.keras")
    again = rollout_rmse(forecaster, recipe.make_dataset(summary["config"], "test_domain", output_length=3, limit=1))
    assert again["rmse"] == pytest.approx(summary["rmse_domain"], rel=1e-5)
    log = (out / "log.csv").read_text().splitlines()
    header = log[0].split(",")
    for key in ("projected_val_rmse", "lie_penalty", "projection_penalty", "theta", "learning_rate"):
        assert key in header
    lr = [float(row.split(",")[header.index("learning_rate")]) for row in log[1:]]
    assert lr == pytest.approx([1e-3, 1e-3 * 0.95], rel=1e-6)  # x0.95 per epoch
    # recipes/relaxation_report.py reads the run: branch sizes on validation data, the gradient split on training data
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    import relaxation_report

    rows = relaxation_report.main([str(out), "--batches", "1"])
    assert len(rows) >= 5 and all(np.isfinite(r["lie_rms"]) and r["r_rms"] > 0 for r in rows[:-1])
    grads = relaxation_report.main([str(out), "--gradients", "2"])
    assert len(grads) == 5 and all(g["penalty_ne_norm"] > 0 for g in grads)
    # as a command in a fresh process, where nothing has imported the forecasters' classes yet
    cli = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "relaxation_report.py"), str(out), "--batches", "1"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert cli.returncode == 0 and "| lifting |" in cli.stdout, cli.stderr[-2000:]
    # the same command with more epochs continues the run
    summary = recipe.main(
        argv(data_dir, out, "--arm", "relaxed", "--epochs", "3", "--relaxation-initializer", "random_normal")
    )
    assert summary["epochs_run"] == 3 and summary["epochs_this_invocation"] == 1


@pytest.mark.parametrize("arm", ["cnn"])  # the other arms train in tests/models/test_smoke_plume_*.py
def test_other_arms_and_early_stopping(data_dir, tmp_path, arm):
    recipe = load_recipe()
    summary = recipe.main(
        argv(
            data_dir,
            tmp_path / arm,
            "--arm",
            arm,
            "--epochs",
            "3",
            "--lr",
            "0",
            "--early-stop-after",
            "0",
            "--early-stop-window",
            "1",
        )
    )
    # with lr 0 the validation RMSE cannot improve: the run stops after the second epoch
    assert summary["epochs_run"] == 2 and summary["early_stopped"]
    # the same command again evaluates the stopped run and trains no further epoch
    again = recipe.main(
        argv(
            data_dir,
            tmp_path / arm,
            "--arm",
            arm,
            "--epochs",
            "3",
            "--lr",
            "0",
            "--early-stop-after",
            "0",
            "--early-stop-window",
            "1",
        )
    )
    assert again["epochs_run"] == 2 and again["epochs_this_invocation"] == 0
    assert again["rmse_future"] == pytest.approx(summary["rmse_future"], rel=1e-6)
    assert np.isfinite(summary["rmse_future"]) and np.isfinite(summary["rmse_domain"])
    if arm == "cnn":
        assert summary["c4_equivariance"]["relative_max_error"] > 1e-3  # a plain CNN is not equivariant


def test_bad_options_say_what_to_fix(data_dir, tmp_path):
    recipe = load_recipe()
    with pytest.raises(SystemExit, match="--kernel"):
        recipe.main(argv(data_dir, tmp_path / "k", "--kernel", "4"))
    with pytest.raises(SystemExit, match="--max-train-batches"):
        recipe.main(argv(data_dir, tmp_path / "m", "--max-train-batches", "0"))
    with pytest.raises(FileNotFoundError, match="generate them with"):
        recipe.main(argv(tmp_path / "empty", tmp_path / "e"))


def test_scale_symmetry_trains_the_scale_forecaster(tmp_path):
    """--symmetry scale: the scale data set, the scale arms with their published defaults, the scale-step check."""
    folder = tmp_path / "smoke_plume_scale8"
    folder.mkdir()
    config = sp.smoke_plume_config("scale", resolution=GRID)
    rng = np.random.default_rng(1)
    for spec in config.simulations:
        np.save(folder / f"sim_{spec.name}.npy", rng.normal(size=(config.num_frames, 2, GRID, GRID)).astype("float32"))
    recipe = load_recipe()
    out = tmp_path / "scale_relaxed"
    summary = recipe.main(
        argv(folder, out, "--symmetry", "scale", "--arm", "relaxed", "--epochs", "3", "--hidden", "4", "--layers", "3")
    )
    cfg = summary["config"]
    assert cfg["symmetry"] == "scale" and (cfg["lr"], cfg["alpha"], cfg["kernel"]) == (1e-4, 1e-6, 5)
    assert cfg["batch"] == 4  # given on the command line: the per-symmetry default does not override it
    check = summary["scale_equivariance"]
    assert check["pairs"] == [[0, 2]] and np.isfinite(check["relative_max_error"])
    assert "c4_equivariance" not in summary
    forecaster = keras.saving.load_model(out / "projected.keras")
    assert [layer.name for layer in forecaster.layers][-2:] == ["velocity_scales", "velocity"]
    assert recipe.resolve_config(recipe.build_parser().parse_args(["--symmetry", "scale"]))["batch"] == 8
    assert recipe.resolve_config(recipe.build_parser().parse_args([]))["batch"] == 16
