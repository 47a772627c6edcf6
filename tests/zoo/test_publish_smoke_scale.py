"""Publishing a ``recipes/smoke_plume.py --symmetry scale`` run (a tiny relaxed SESN forecaster trained for two steps
on a 16x16 stand-in scale data set, then projected) as ``sesn_scale_smokeplume``, and ``relaxeq zoo verify`` on it:
sha256, loading, signature, translation equivariance, input checks, the ``.keras`` file's parity and published
scale-step error, ``SignatureDef``, a fresh TensorFlow-only process. Negative controls: the other arms are refused,
and an entry whose published scale-step error does not hold fails verify.
"""

import importlib.util
import io
import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_relaxeq.datasets import smoke_plume as sp
from keras_relaxeq.export.projection import project
from keras_relaxeq.models.smoke_plume import forecaster_of, rollout_model, rollout_rmse, summed_frame_mse
from keras_relaxeq.models.smoke_plume_scale import smoke_plume_scale_forecaster
from keras_relaxeq.zoo import registry
from keras_relaxeq.zoo.download import load
from keras_relaxeq.zoo.publish import PublishError, publish_run
from keras_relaxeq.zoo.publish.driver import recipe_run_class
from keras_relaxeq.zoo.publish.smoke_plume import SmokePlumeRun
from keras_relaxeq.zoo.publish.smoke_plume_scale import NAME, SmokePlumeScaleRun
from keras_relaxeq.zoo.verify import verify_entries

ROOT = Path(__file__).resolve().parents[2]
GRID, KERNEL, LAYERS, WIDTH = 16, 3, 3, 0.0625  # receptive radius 3: a 10x10 interior for the translation check


def load_recipe():
    spec = importlib.util.spec_from_file_location("recipe_smoke_plume_scale_zoo", ROOT / "recipes" / "smoke_plume.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stand_in_scale_data(folder: Path) -> Path:
    """Every simulation of the scale set at 16x16: smooth random fields (no PhiFlow)."""
    config = sp.smoke_plume_config("scale", resolution=GRID)
    rng = np.random.default_rng(0)
    t = np.arange(config.num_frames)[:, None, None, None]
    for spec in config.simulations:
        base, drift = rng.normal(size=(2, 1, 2, GRID, GRID))
        frames = base + 0.01 * t * drift + 0.05 * rng.normal(size=(config.num_frames, 2, GRID, GRID))
        np.save(folder / f"sim_{spec.name}.npy", frames.astype(np.float32))
    return folder


def make_run(root: Path, arm="relaxed", *, train=True):
    """A run folder laid out as the recipe writes it: the config from the recipe's own parser (``--symmetry
    scale``), a forecaster of ``arm`` trained for two steps (2-step rollouts), projected, saved as ``projected.keras``,
    and the recipe's own test RMSEs and scale-step error in ``summary.json``."""
    recipe = load_recipe()
    data = root / "data"
    if not data.exists():
        data.mkdir(parents=True)
        stand_in_scale_data(data)
    run = root / f"run_{arm}"
    args = ["--symmetry", "scale", "--arm", arm, "--data-dir", str(data), "--no-generate", "--resolution", str(GRID),
            "--width", str(WIDTH), "--kernel", str(KERNEL), "--layers", str(LAYERS), "--batch", "4", "--epochs", "1",
            "--max-train-batches", "2", "--max-val-batches", "1", "--max-test-batches", "2", "--test-length", "3",
            "--output-length", "2", "--relaxation-initializer", "random_normal", "--output-dir", str(run)]
    cfg = recipe.resolve_config(recipe.build_parser().parse_args(args))
    keras.utils.set_random_seed(0)
    forecaster = smoke_plume_scale_forecaster(arm, grid=GRID, width=WIDTH, kernel_size=KERNEL, num_layers=LAYERS,
                                              relaxation_initializer="random_normal", name=f"smoke_plume_scale_{arm}")
    run.mkdir()
    summary = {"recipe": "recipes/smoke_plume.py", "config": cfg, "arm": arm, "epochs_run": 1, "best_epoch": 1,
               "best_projected_val_rmse": 1.0, "wall_time_seconds": 12.0}
    if train:
        model = rollout_model(forecaster, steps=2)
        # two batches: tracing the relaxed scale model's train step costs ~10x more than running it eagerly
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=summed_frame_mse, run_eagerly=True)
        data = recipe.make_dataset(cfg, "train", seed=0, output_length=2, limit=2)
        model.fit(data, epochs=1, verbose=0, shuffle=False)
        forecaster = forecaster_of(project(model))
        tests = {s: rollout_rmse(forecaster, recipe.make_dataset(cfg, s, output_length=3, limit=2))
                 for s in ("test_future", "test_domain")}
        summary.update(rmse_future=tests["test_future"]["rmse"], rmse_domain=tests["test_domain"]["rmse"],
                       test_windows={s: v["num_windows"] for s, v in tests.items()},
                       scale_equivariance=recipe.scale_equivariance(forecaster, cfg))
    forecaster.save(run / "projected.keras")
    (run / "summary.json").write_text(json.dumps(summary))
    return run, summary, forecaster


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke_scale_publish")
    run, summary, trained = make_run(root)
    messages = []
    entry = publish_run(run, zoo_dir=root / "zoo", seed=0, log=messages.append)
    return {"root": root, "run": run, "summary": summary, "entry": entry, "trained": trained,
            "messages": messages, "index": root / "zoo" / "index.json"}


def test_entry_fields_metrics_and_card(published, tmp_path):
    summary, zoo = published["summary"], published["index"].parent
    e = registry.load_index(published["index"]).get(NAME)
    assert (e.version, e.arch, e.group, e.dataset, e.task) == (1, "sesn", "scale", "smokeplume", "field_forecasting")
    assert e.is_scale_field_forecaster and e.is_field_forecaster and not e.is_c4_field_forecaster
    assert e.input["shape"] == [None, 10, GRID, GRID, 2] and list(e.outputs) == ["next_frame"]
    assert e.input_checks == ("shape", "finite") and e.recipe == "recipes/smoke_plume.py"
    assert e.architecture["class"] == "keras_relaxeq.models.smoke_plume_scale.smoke_plume_scale_forecaster"
    assert e.architecture["config"] == {"arm": "equivariant", "input_frames": 10, "grid": GRID, "hidden": 64,
                                        "width": WIDTH, "kernel_size": KERNEL, "num_layers": LAYERS,
                                        "scales": [1.0, 1.5, 2.0, 2.5]}
    assert e.raw["evaluation"]["symmetry"] == "scale" and e.raw["training"]["scale_penalty"] == "step"
    metrics = {m["name"]: m for m in e.metrics}
    assert set(metrics) == {"rmse_future", "rmse_domain", "scale_step_relative_error", "keras_max_abs_diff"}
    # recomputed from the scale data on the artifact: the RMSEs of the trained Keras forecaster (2 batches of 4)
    for split in ("future", "domain"):
        assert metrics[f"rmse_{split}"]["value"] == pytest.approx(summary[f"rmse_{split}"], rel=1e-5)
        assert "8 windows" in metrics[f"rmse_{split}"]["protocol"]
    assert "28 training simulations" in metrics["rmse_future"]["protocol"]
    # the recipe's measure of the scale-step error, on the same weights: the value the run's summary reports
    scale = metrics["scale_step_relative_error"]
    assert scale["value"] == pytest.approx(summary["scale_equivariance"]["relative_max_error"], rel=1e-5)
    assert scale["value"] > 1e-2  # kernel 3 SESN layers: far from round-off
    assert "only approximately scale-equivariant" in scale["protocol"] and "seed 0" in scale["protocol"]
    assert metrics["keras_max_abs_diff"]["value"] <= 1e-5
    card = (zoo / e.card).read_text()
    assert card.startswith(f"# {NAME} v1\n")
    assert f"width {WIDTH} (4 channels per scale instead of 64)" in card
    assert "python recipes/smoke_plume.py --symmetry scale --arm relaxed --seed 0 --output-dir " \
           "runs/smoke_scale/relaxed_seed0" in card  # the GPU command
    assert "--symmetry scale --arm relaxed" in card and "--max-train-batches 2" in card  # the run's own command
    assert "Conv 0.83 / 0.95, Equiv 0.75 / 0.87, RSteer 0.70 / 0.73" in card
    assert "Scale equivariance is approximate" in card and "One training run (seed 0)" in card
    assert "A small CPU budget" in card and "scale penalty `step`" in card
    assert f"| `scale_step_relative_error` | {scale['value']} |" in card
    assert "published sesn_scale_smokeplume v1" in published["messages"][-1]
    # zoo.load(as_keras=True) imports the builder's module: the SESN layers load; same answers as the trained model
    model = load(NAME, index=published["index"], cache_dir=tmp_path, progress=False, as_keras=True)
    assert model.layers[1].name == "check_frames"
    x = np.random.default_rng(3).normal(size=(2, 10, GRID, GRID, 2)).astype("float32")
    np.testing.assert_allclose(model(x), published["trained"](x), atol=1e-5)


def test_verify_runs_every_check_on_the_entry(published, tmp_path):
    out = io.StringIO()
    failures = verify_entries(index=published["index"], out=out, cache_dir=tmp_path, progress=False)
    text = out.getvalue()
    assert failures == 0, text
    line = next(ln for ln in text.splitlines() if ln.startswith("OK"))
    for step in ("sha256 ok", "loads", "signature ok", "translation equivariance relative err",
                 "at least 3 cells from the borders",
                 "input checks ok (9 frames, 8x8 grid, 3 components, extra leading axis, no batch axis, NaN, Inf "
                 "refused, naming 'frames')", "Keras parity ok", "scale-step error of the .keras trunk",
                 f"SignatureDef ok (frames (-1, 10, {GRID}, {GRID}, 2); next_frame (-1, {GRID}, {GRID}, 2))",
                 "fresh process ok (TensorFlow only, no keras_relaxeq"):
        assert step in line, (step, line)


def test_publish_refuses_other_arms(published, tmp_path):
    for arm in ("cnn", "rsteer", "rsteer_relaxed"):
        run, _, _ = make_run(published["root"], arm, train=False)
        with pytest.raises(PublishError, match=f"a '{arm}' scale run is not published.*SESN scale-space trunk"):
            publish_run(run, zoo_dir=tmp_path / "zoo")
    assert not (tmp_path / "zoo" / "index.json").exists()
    # the driver picks the publisher by the run's task
    assert recipe_run_class("recipes/smoke_plume.py", published["summary"]) is SmokePlumeScaleRun
    assert recipe_run_class("recipes/smoke_plume.py", {"config": {"arm": "relaxed"}}) is SmokePlumeRun
    # the data are gone: refused, nothing written
    moved = tmp_path / "run"
    shutil.copytree(published["run"], moved)
    summary = json.loads((moved / "summary.json").read_text())
    summary["config"]["data_dir"] = str(tmp_path / "no_data")
    (moved / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(PublishError, match="smoke plume data are missing"):
        publish_run(moved, zoo_dir=tmp_path / "zoo")
    assert not (tmp_path / "zoo" / "index.json").exists()


def test_an_entry_whose_published_scale_error_does_not_hold_fails_verify(published, tmp_path):
    zoo = tmp_path / "zoo"
    shutil.copytree(published["index"].parent, zoo)
    doc = json.loads((zoo / "index.json").read_text())
    metric = next(m for m in doc["models"][0]["metrics"] if m["name"] == "scale_step_relative_error")
    metric["value"] = round(metric["value"] * 1.01, 6)  # 1% off: far beyond float32 round-off of the measure
    (zoo / "index.json").write_text(json.dumps(doc))
    out = io.StringIO()
    assert verify_entries(index=zoo / "index.json", out=out, cache_dir=tmp_path / "cache", progress=False) == 1
    line = next(ln for ln in out.getvalue().splitlines() if ln.startswith("FAIL"))
    assert "Keras parity ok" in line and "AssertionError: scale-step error of the .keras trunk" in line, line
    assert "the .keras weights are not those measured at publication" in line


def test_published_metrics_are_measured_again_from_the_data(published, tmp_path, monkeypatch):
    from keras_relaxeq.zoo.publish.smoke_plume_scale import evaluate_entry, main

    rows = evaluate_entry(index=published["index"], data_dir=published["root"] / "data", cache_dir=tmp_path)
    assert set(rows) == {"rmse_future", "rmse_domain", "scale_step_relative_error", "keras_max_abs_diff"}
    for name in ("rmse_future", "rmse_domain", "scale_step_relative_error"):
        assert rows[name][1] == pytest.approx(rows[name][0], rel=1e-5), name
    assert rows["keras_max_abs_diff"][1] <= 1e-5
    from keras_relaxeq.zoo.settings import ENV_CACHE

    monkeypatch.setenv(ENV_CACHE, str(tmp_path / "cli_cache"))  # the command's downloads stay out of ~/.keras
    assert main(["--index", str(published["index"]), "--data-dir", str(tmp_path / "nowhere")]) == 1
