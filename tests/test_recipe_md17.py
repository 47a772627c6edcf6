"""recipes/md17.py on ethanol at a tiny size: trains (eagerly), selects the projected model, reports test MAEs in
meV and the E(3) errors of the projected model, and resumes."""

import importlib.util
import json
from pathlib import Path

import keras
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_recipe():
    spec = importlib.util.spec_from_file_location("recipe_md17", ROOT / "recipes" / "md17.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def argv(out, *extra):
    return [
        "--molecule", "ethanol", "--width", "0.0625", "--blocks", "1", "--batch", "4", "--max-train-batches", "2",
        "--warmup-epochs", "1", "--run-eagerly", "--verbose", "0", "--output-dir", str(out), *extra,
    ]  # fmt: skip


def test_relaxed_run_reports_projected_test_maes_and_resumes(tmp_path):
    recipe = load_recipe()
    out = tmp_path / "ethanol_relaxed"
    summary = recipe.main(argv(out, "--epochs", "3"))
    assert summary["epochs_run"] == 3 and summary["relaxed"]
    assert summary["frames"] == 1000  # the whole test_01 file
    for key in ("energy_mae_mev", "force_mae_mev_per_angstrom"):
        assert np.isfinite(summary[key]) and summary[key] > 0
    # the projected model is E(3)-equivariant; the relaxed one was trained with a branch
    assert summary["e3_equivariance"]["energy_relative_error"] < 1e-4
    assert summary["e3_equivariance"]["force_relative_error"] < 1e-4
    assert summary["params"]["projected_model"] < summary["params"]["trained_model"]
    log = (out / "log.csv").read_text().splitlines()
    header = log[0].split(",")
    assert {"projected_val_loss", "lie_penalty", "theta", "energy_mae", "forces_mae"} <= set(header)
    # the reported test MAE is that of the saved projected model, recomputed from its file
    model = keras.saving.load_model(out / "projected.keras", compile=False)
    cfg = summary["config"]
    again = recipe.test_metrics(model, recipe.make_datasets(cfg)[2], summary["target_scaler"]["scale"])
    assert again["energy_mae_mev"] == pytest.approx(summary["energy_mae_mev"], rel=1e-5)
    assert json.loads((out / "summary.json").read_text())["molecule"] == "ethanol"
    summary = recipe.main(argv(out, "--epochs", "4"))
    assert summary["epochs_run"] == 4 and summary["epochs_this_invocation"] == 1


def test_bad_options_say_what_to_fix(tmp_path):
    recipe = load_recipe()
    with pytest.raises(SystemExit, match="--molecule must be one of"):
        recipe.main(argv(tmp_path / "x", "--molecule", "caffeine"))
    with pytest.raises(SystemExit, match="--warmup-epochs"):
        recipe.main(argv(tmp_path / "x", "--epochs", "1"))


def test_projected_validation_weights_the_outputs_like_training():
    """projected_val_loss is the weighted training objective (energy + force_weight x forces), not their plain sum."""
    import tensorflow as tf

    from keras_relaxeq.training.callbacks import ProjectedValidation

    inputs = keras.Input((3,))
    a = keras.layers.Dense(1, name="a")(inputs)
    b = keras.layers.Dense(1, name="b")(inputs)
    model = keras.Model(inputs, {"a": a, "b": b})
    model.compile(loss={"a": "mse", "b": "mse"})
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3)).astype("float32")
    y = {"a": rng.normal(size=(8, 1)).astype("float32"), "b": rng.normal(size=(8, 1)).astype("float32")}
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    logs = {}
    for weights in (None, {"a": 1.0, "b": 80.0}):
        callback = ProjectedValidation(data, loss={"a": "mse", "b": "mse"}, loss_weights=weights, metrics=[])
        callback.set_model(model)
        logs[weights is None] = callback.evaluate()
    unweighted, weighted = logs[True], logs[False]
    assert unweighted["projected_val_loss"] == pytest.approx(
        unweighted["projected_val_a_loss"] + unweighted["projected_val_b_loss"], rel=1e-5
    )
    assert weighted["projected_val_loss"] == pytest.approx(
        weighted["projected_val_a_loss"] + 80 * weighted["projected_val_b_loss"], rel=1e-5
    )
