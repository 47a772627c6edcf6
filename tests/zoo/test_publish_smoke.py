"""Publishing a ``recipes/smoke_plume.py`` run (a tiny relaxed forecaster trained for two steps on an 8x8 stand-in
data set, then projected) as a zoo entry, and ``relaxeq zoo verify`` on it: sha256, loading, signature,
``SignatureDef``, a fresh TensorFlow-only process, C4 equivariance and the serving input checks.
"""

import importlib.util
import io
import json
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_relaxeq.datasets import smoke_plume as sp
from keras_relaxeq.export.projection import project
from keras_relaxeq.models.smoke_plume import (
    forecaster_of,
    rollout_model,
    rollout_rmse,
    smoke_plume_forecaster,
    summed_frame_mse,
)
from keras_relaxeq.zoo import registry
from keras_relaxeq.zoo.publish import PublishError, publish_run
from keras_relaxeq.zoo.publish.smoke_plume import NAME
from keras_relaxeq.zoo.verify import verify_entries

ROOT = Path(__file__).resolve().parents[2]
GRID = 8


def load_recipe():
    spec = importlib.util.spec_from_file_location("recipe_smoke_plume_zoo", ROOT / "recipes" / "smoke_plume.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stand_in_data(folder: Path) -> Path:
    """Every simulation of the rotation set at 8x8: smooth random fields (no PhiFlow)."""
    config = sp.smoke_plume_config("rotation", resolution=GRID)
    rng = np.random.default_rng(0)
    t = np.arange(config.num_frames)[:, None, None, None]
    for spec in config.simulations:
        base, drift = rng.normal(size=(2, 1, 2, GRID, GRID))
        frames = base + 0.01 * t * drift + 0.05 * rng.normal(size=(config.num_frames, 2, GRID, GRID))
        np.save(folder / f"sim_{spec.name}.npy", frames.astype(np.float32))
    return folder


def make_run(root: Path, arm="relaxed", *, project_it=True):
    """A run folder laid out as the recipe writes it: the config from the recipe's own parser, a forecaster of
    ``arm`` trained for two steps (6-step rollouts -> 2 here), projected, saved as ``projected.keras``."""
    recipe = load_recipe()
    data = root / "data"
    if not data.exists():
        data.mkdir(parents=True)
        stand_in_data(data)
    run = root / f"run_{arm}"
    args = ["--arm", arm, "--data-dir", str(data), "--no-generate", "--resolution", str(GRID), "--width", "0.05",
            "--batch", "4", "--epochs", "1", "--max-train-batches", "2", "--max-val-batches", "1",
            "--max-test-batches", "2", "--test-length", "3", "--output-length", "2", "--output-dir", str(run)]
    cfg = recipe.resolve_config(recipe.build_parser().parse_args(args))
    keras.utils.set_random_seed(0)
    forecaster = smoke_plume_forecaster(
        arm, grid=GRID, width=0.05, relaxation_initializer="random_normal", name=f"smoke_plume_{arm}"
    )
    model = rollout_model(forecaster, steps=2)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=summed_frame_mse)
    model.fit(recipe.make_dataset(cfg, "train", seed=0, output_length=2, limit=2), epochs=1, verbose=0, shuffle=False)
    trained = forecaster_of(project(model) if project_it else model)
    run.mkdir()
    trained.save(run / "projected.keras")
    tests = {s: rollout_rmse(trained, recipe.make_dataset(cfg, s, output_length=3, limit=2))
             for s in ("test_future", "test_domain")}
    summary = {"recipe": "recipes/smoke_plume.py", "config": cfg, "arm": arm, "epochs_run": 1, "best_epoch": 1,
               "best_projected_val_rmse": 1.0, "rmse_future": tests["test_future"]["rmse"],
               "rmse_domain": tests["test_domain"]["rmse"], "wall_time_seconds": 12.0,
               "test_windows": {s: v["num_windows"] for s, v in tests.items()},
               "c4_equivariance": {"relative_max_error": 1e-7, "num_windows": 4}}
    (run / "summary.json").write_text(json.dumps(summary))
    return run, summary, trained


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke_publish")
    run, summary, trained = make_run(root)
    messages = []
    entry = publish_run(run, zoo_dir=root / "zoo", seed=0, log=messages.append)
    return {"root": root, "run": run, "summary": summary, "entry": entry, "trained": trained,
            "messages": messages, "index": root / "zoo" / "index.json"}


def test_entry_fields_metrics_and_card(published):
    summary, zoo = published["summary"], published["index"].parent
    e = registry.load_index(published["index"]).get(NAME)
    assert (e.version, e.arch, e.group, e.dataset, e.task) == (1, "steerable_cnn", "c4", "smokeplume",
                                                               "field_forecasting")
    assert e.is_c4_field_forecaster and not e.is_nbody_model and not e.is_invariant_classifier
    assert e.input_signature == {"frames": dict(e.input)} and e.input["shape"] == [None, 10, GRID, GRID, 2]
    assert e.outputs == {"next_frame": {"dtype": "float32", "shape": [None, GRID, GRID, 2],
                                        "layout": "[batch, y, x, (v_x, v_y)]: the next velocity frame"}}
    assert e.input_checks == ("shape", "finite") and e.recipe == "recipes/smoke_plume.py"
    assert e.architecture["config"] == {"arm": "equivariant", "input_frames": 10, "grid": GRID, "hidden": 92,
                                        "width": 0.05, "kernel_size": 3, "num_layers": 5}
    assert e.raw["training"]["model_file"] == "projected.keras" and e.raw["training"]["budget"] == "cpu_protocol"
    metrics = {m["name"]: m for m in e.metrics}
    assert set(metrics) == {"rmse_future", "rmse_domain", "c4_equivariance_relative_error", "keras_max_abs_diff"}
    # recomputed from the data on the artifact: the RMSEs of the trained Keras forecaster (2 batches of 4 windows)
    for split in ("future", "domain"):
        assert metrics[f"rmse_{split}"]["value"] == pytest.approx(summary[f"rmse_{split}"], rel=1e-5)
        assert "8 windows" in metrics[f"rmse_{split}"]["protocol"]
    assert 0 <= metrics["c4_equivariance_relative_error"]["value"] < 1e-5
    assert metrics["keras_max_abs_diff"]["value"] <= 1e-5
    card = (zoo / e.card).read_text()
    assert card.startswith(f"# {NAME} v1\n")
    assert "the CPU protocol of docs/experiments/smoke_plume.md: width 0.05" in card
    assert "python recipes/smoke_plume.py --arm relaxed --seed 0 --output-dir runs/smoke/relaxed_seed0" in card
    assert f"RMSE future {summary['rmse_future']:.4f} over 8 windows" in card
    assert "--max-train-batches 2" in card and "--no-generate" in card  # the run's command, every option
    assert "published steerable_cnn_c4_smokeplume v1" in published["messages"][-1]


def test_keras_artifact_is_the_rebuilt_forecaster_with_its_input_check(published):
    e = registry.load_index(published["index"]).get(NAME)
    model = keras.saving.load_model(published["index"].parent / e.keras_artifact.file, compile=False)
    assert model.layers[1].name == "check_frames"
    x = np.random.default_rng(3).normal(size=(2, 10, GRID, GRID, 2)).astype("float32")
    np.testing.assert_allclose(model(x), published["trained"](x), atol=1e-5)
    with pytest.raises(ValueError, match="NaN or Inf"):
        model.predict(np.full_like(x, np.nan), verbose=0)


def test_verify_runs_every_check_on_the_entry(published, tmp_path):
    out = io.StringIO()
    failures = verify_entries(index=published["index"], out=out, cache_dir=tmp_path, progress=False)
    text = out.getvalue()
    assert failures == 0, text
    line = next(ln for ln in text.splitlines() if ln.startswith("OK"))
    for step in ("sha256 ok", "loads", "signature ok", "C4 equivariance relative err",
                 "input checks ok (9 frames, 4x4 grid, 3 components, extra leading axis, no batch axis, NaN, Inf "
                 "refused, naming 'frames')",
                 f"SignatureDef ok (frames (-1, 10, {GRID}, {GRID}, 2); next_frame (-1, {GRID}, {GRID}, 2))",
                 "fresh process ok (TensorFlow only, no keras_relaxeq"):
        assert step in line, (step, line)


def test_publish_refuses_runs_it_cannot_stand_behind(published, tmp_path):
    root = published["root"]
    # an arm that is not exactly C4-equivariant
    run, _, _ = make_run(root, "cnn")
    with pytest.raises(PublishError, match="not exactly C4-equivariant"):
        publish_run(run, zoo_dir=tmp_path / "zoo")
    # a relaxed forecaster that was not projected
    relaxed = root / "run_relaxed_unprojected"
    relaxed.mkdir()
    summary = json.loads((published["run"] / "summary.json").read_text())
    (relaxed / "summary.json").write_text(json.dumps(summary))
    keras.utils.set_random_seed(1)
    smoke_plume_forecaster("relaxed", grid=GRID, width=0.05, relaxation_initializer="random_normal").save(
        relaxed / "projected.keras")
    with pytest.raises(PublishError, match="still has relaxation branches"):
        publish_run(relaxed, zoo_dir=tmp_path / "zoo")
    # the data are gone: refused with the way to generate them, nothing written
    summary["config"]["data_dir"] = str(tmp_path / "no_data")
    (relaxed / "summary.json").write_text(json.dumps(summary))
    (relaxed / "projected.keras").write_bytes((published["run"] / "projected.keras").read_bytes())
    with pytest.raises(PublishError, match="smoke plume data are missing.*generate"):
        publish_run(relaxed, zoo_dir=tmp_path / "zoo")
    assert not (tmp_path / "zoo" / "index.json").exists()
    # the version is immutable
    with pytest.raises(PublishError, match="already in"):
        publish_run(published["run"], zoo_dir=published["index"].parent, version=1)


def test_published_metrics_are_measured_again_from_the_data(published, tmp_path, monkeypatch):
    from keras_relaxeq.zoo.publish.smoke_plume import evaluate_entry, main

    rows = evaluate_entry(index=published["index"], data_dir=published["root"] / "data", cache_dir=tmp_path)
    assert set(rows) == {"rmse_future", "rmse_domain", "c4_equivariance_relative_error", "keras_max_abs_diff"}
    for name in ("rmse_future", "rmse_domain"):
        assert rows[name][1] == pytest.approx(rows[name][0], rel=1e-5)
    assert rows["c4_equivariance_relative_error"][1] < 1e-5
    # one test batch only: another RMSE than the published one over two batches
    fewer = evaluate_entry(index=published["index"], data_dir=published["root"] / "data", cache_dir=tmp_path,
                           max_test_batches=1)
    assert fewer["rmse_domain"][1] != pytest.approx(rows["rmse_domain"][0], rel=1e-5)
    from keras_relaxeq.zoo.settings import ENV_CACHE

    monkeypatch.setenv(ENV_CACHE, str(tmp_path / "cli_cache"))  # the command's downloads stay out of ~/.keras
    assert main(["--index", str(published["index"]), "--data-dir", str(tmp_path / "nowhere")]) == 1


def test_card_says_when_the_wall_time_covers_only_the_last_invocation():
    from keras_relaxeq.zoo.publish.base import card_metrics_lines

    entry = {"metrics": []}
    resumed = card_metrics_lines(entry, {"wall_time_seconds": 3600, "epochs_run": 10, "epochs_this_invocation": 5})
    assert resumed[0].startswith("- wall time of the last invocation 1.00 h (5 of 10 epochs; the run was resumed)")
    whole = card_metrics_lines(entry, {"wall_time_seconds": 3600, "epochs_run": 10, "epochs_this_invocation": 10,
                                       "strategy": "default", "num_replicas": 1})
    assert whole[0] == "- wall time 1.00 h, strategy default (1 replica(s))"
    # a run that did not record its tf.distribute strategy: no "strategy None"
    assert card_metrics_lines(entry, {"wall_time_seconds": 3600})[0] == "- wall time 1.00 h"
