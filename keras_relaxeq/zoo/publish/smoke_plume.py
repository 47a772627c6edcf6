"""Publishing a ``recipes/smoke_plume.py`` run (C4 steerable CNN on the 2D smoke plume rotation set) as
``steerable_cnn_c4_smokeplume``.

:func:`keras_relaxeq.zoo.publish.publish_run` drives the steps; :class:`SmokePlumeRun` supplies what is
specific to the smoke plume recipe (``recipe`` ``recipes/smoke_plume.py`` in the run's summary):

* the model: the run's projected one-step forecaster (``projected.keras``; a rollout model such as
  ``best_projected.keras`` gives its nested forecaster), rebuilt with the current builder
  (``smoke_plume_forecaster("equivariant", ...)``: an ``InputCheck`` first) carrying exactly its weights.
  Only the exactly C4-equivariant arms (``relaxed``, projected, and ``equivariant``) are published;
* export: serving input ``frames`` float32 ``[None, 10, 64, 64, 2]`` (ten velocity frames, components
  ``(v_x, v_y)``, rows = y), output ``next_frame`` float32 ``[None, 64, 64, 2]``, input checks in the
  serving function (shape, finite);
* measurements on the extracted artifact (:func:`measure_smoke_artifact`): the recipe's 20-step rollout
  RMSEs on ``test_future`` and ``test_domain`` recomputed from the data (``rollout_rmse`` with the serving
  function as the one-step model), the C4 equivariance error on held-out windows and the largest
  difference to the Keras model;
* the entry fields (task ``field_forecasting``, group ``c4``) and the model card, which states the run's
  training budget next to the published one.
"""

from __future__ import annotations

import json

import numpy as np

from keras_relaxeq.zoo.publish.base import (
    PublishError,
    RecipeRun,
    _fmt,
    _fmt_sci,
    card_closing_lines,
    card_command_lines,
    card_metrics_lines,
    check_parity,
    keras_parity_metric,
    print_measured_again,
)

RECIPE = "recipes/smoke_plume.py"
NAME = "steerable_cnn_c4_smokeplume"
TASK = "field_forecasting"
INPUT_NAME, OUTPUT_NAME = "frames", "next_frame"
#: arms whose projected forecaster is exactly C4-equivariant (what relaxeq zoo verify checks)
PUBLISHABLE_ARMS = ("relaxed", "equivariant")
DEFAULT_CITATION = (
    "Pertigkiozoglou, Chatzipantazis, Trivedi, Daniilidis: Improving Equivariant Model Training via Constraint "
    "Relaxation, NeurIPS 2024; Wang, Walters, Yu: Approximately Equivariant Networks for Imperfectly Symmetric "
    "Dynamics, ICML 2022 (data and protocol)"
)
PREPROCESSING = (
    "none: raw simulator velocities (grid cells per time step) of the PhiFlow smoke plume rotation set, "
    "channels last, components (v_x, v_y), rows = y; the input is the last 10 frames, the output the next one"
)
#: the published recipe's budget (recipes/smoke_plume.py DEFAULTS; 250 training batches of 16 per epoch, 92 regular
#: hidden fields at width 1; the rotation set's 4,000 training and 1,000 validation windows)
PUBLISHED = {"epochs": 1000, "width": 1.0, "train_batches": 250, "val_batches": 63, "early_stop_after": 100,
             "hidden": 92, "train_windows": 4000, "val_windows": 1000}
#: the run's settings that the RMSE measurement depends on (kept in the entry's ``evaluation``)
EVALUATION_KEYS = ("batch", "test_length", "resolution", "max_test_batches")
#: held-out windows of the C4 measurement and of the comparison with the Keras model
EQUIVARIANCE_WINDOWS, PARITY_WINDOWS = 4, 16
#: where the metrics are measured
ARTIFACT_NOTE = "measured on the published SavedModel (extracted archive, serving_default, one call per step)"


def architecture_config(cfg: dict, input_frames: int = 10) -> dict:
    """Arguments of ``keras_relaxeq.models.smoke_plume.smoke_plume_forecaster`` that rebuild the projected
    forecaster of a run (``arm`` ``equivariant``: the relaxed arm without its branches)."""
    return {"arm": "equivariant", "input_frames": int(input_frames), "grid": int(cfg["resolution"]),
            "hidden": int(cfg["hidden"]), "width": float(cfg["width"]), "kernel_size": int(cfg["kernel"]),
            "num_layers": int(cfg["layers"])}


def one_step_forecaster(model, cfg: dict):
    """``(forecaster, [frames, H, W, 2])``: the one-step forecaster in ``model`` (a rollout model gives its nested
    forecaster), checked to take windows of the run's grid."""
    from keras_relaxeq.models.smoke_plume import forecaster_of

    try:
        source = forecaster_of(model)
    except ValueError as exc:
        raise PublishError(f"{exc} Publish projected.keras of the run (the projected one-step forecaster).") from None
    shape = tuple(source.input_shape[1:])
    grid = int(cfg["resolution"])
    if len(shape) != 4 or shape[1:] != (grid, grid, 2):
        raise PublishError(f"the forecaster takes {shape}, not [frames, {grid}, {grid}, 2] windows of the run.")
    return source, shape


def rebuild_with(source, builder, config: dict, name: str, *, seed: int = 0):
    """``builder(**config, name=name)`` carrying exactly the weights of ``source`` (by path), after checking that
    both answer alike on random windows."""
    import keras

    from keras_relaxeq.models.presets import _weights_by_path, copy_pretrained_weights

    keras.utils.set_random_seed(seed)
    rebuilt = builder(**config, name=name)
    try:
        copy_pretrained_weights(source, rebuilt)
    except ValueError as exc:
        raise PublishError(f"the run's forecaster does not fit {config}: {exc}") from None
    if sorted(_weights_by_path(source)) != sorted(_weights_by_path(rebuilt)):
        raise PublishError("the rebuilt forecaster's weights differ from the run's forecaster's.")
    x = np.random.default_rng(seed).normal(size=(2,) + tuple(source.input_shape[1:])).astype(np.float32)
    want, got = np.asarray(source(x), np.float64), np.asarray(rebuilt(x), np.float64)
    if not np.abs(want - got).max() <= 1e-5 + 1e-5 * np.abs(want).max():
        raise PublishError("the rebuilt forecaster answers differently from the run's forecaster.")
    return rebuilt


def rebuild_forecaster(model, cfg: dict, *, seed: int = 0):
    """The one-step forecaster in ``model`` rebuilt by the current builder with exactly its weights, after
    checking that both answer alike on random windows."""
    from keras_relaxeq.models.smoke_plume import smoke_plume_forecaster

    source, shape = one_step_forecaster(model, cfg)
    config = architecture_config(cfg, shape[0])
    return rebuild_with(source, smoke_plume_forecaster, config, f"smoke_plume_{cfg['arm']}", seed=seed), config


def export_smoke_saved_model(model, base_dir, name: str, version: int, **kwargs):
    """``export_saved_model`` with the forecaster's serving signature: input ``frames``
    ``[None, T, H, W, 2]``, output ``next_frame`` ``[None, H, W, 2]``, input checks on. ``kwargs`` go to
    ``export_saved_model`` (default ``write_config=False``)."""
    from keras_relaxeq.export.serving import export_saved_model, regression_outputs

    kwargs.setdefault("write_config", False)
    spec = (None,) + tuple(int(d) for d in model.input_shape[1:])
    return export_saved_model(model, base_dir, name, version, input_signature={INPUT_NAME: spec},
                              outputs=lambda y: regression_outputs({OUTPUT_NAME: y}), **kwargs)


def recipe_test_pipeline(cfg: dict, split: str, *, data_dir=None, max_batches=None):
    """The recipe's test pipeline of ``split``: windows of ``--test-length`` target frames in batches of
    ``--batch`` from the run's data set (``--symmetry``: rotation or scale), the first ``max_batches`` batches
    (default: the run's ``--max-test-batches``, i.e. all); never simulates missing files (``FileNotFoundError``
    saying how to generate them)."""
    from keras_relaxeq.datasets.smoke_plume import smoke_plume_config, smoke_plume_dataset

    config = smoke_plume_config(cfg.get("symmetry", "rotation"), resolution=int(cfg["resolution"]))
    ds = smoke_plume_dataset(split, int(cfg["batch"]), config=config, output_length=int(cfg["test_length"]),
                             data_dir=data_dir or cfg.get("data_dir"), generate=False, progress=False)
    limit = max_batches if max_batches is not None else cfg.get("max_test_batches")
    return ds.take(int(limit)) if limit else ds


def served_next_frame(signature):
    """``frames -> next frame`` of a forecaster's ``serving_default``."""

    def next_frame(frames):
        return signature(**{INPUT_NAME: frames})[OUTPUT_NAME]

    return next_frame


def measure_rollouts(next_frame, cfg: dict, *, data_dir=None, max_test_batches=None):
    """``(tests, held_out)``: the recipe's 20-step rollout RMSEs of ``next_frame`` on ``test_future`` and
    ``test_domain`` (``rollout_rmse``: ``{split: {"rmse", "num_windows", ...}}``) and the first batch of
    ``test_domain`` windows."""
    from keras_relaxeq.models.smoke_plume import rollout_rmse

    tests, first = {}, {}
    for split in ("test_future", "test_domain"):
        try:
            data = recipe_test_pipeline(cfg, split, data_dir=data_dir, max_batches=max_test_batches)
            first[split] = next(iter(data))[0]
        except FileNotFoundError as exc:
            raise PublishError(f"the smoke plume data are missing: {exc}") from None
        tests[split] = rollout_rmse(next_frame, data)
    return tests, first["test_domain"]


def keras_parity(next_frame, keras_model, windows) -> dict:
    """The largest difference between the served next frame and the Keras model's on ``windows``."""
    import tensorflow as tf

    keras_pred = np.asarray(keras_model.predict(np.asarray(windows), verbose=0), np.float64)
    served = np.asarray(next_frame(tf.constant(windows)), np.float64)
    return {"keras_max_abs_diff": float(np.abs(keras_pred - served).max()),
            "keras_scale": float(np.abs(keras_pred).max()), "parity_windows": int(len(windows))}


def measure_smoke_artifact(signature, keras_model, cfg: dict, *, data_dir=None, max_test_batches=None,
                           seed: int = 0) -> dict:
    """Rollout RMSEs (``test_future``, ``test_domain``), C4 equivariance and Keras parity of a forecaster's
    ``serving_default``, measured on the data."""
    from keras_relaxeq.groups.cyclic import FieldType
    from keras_relaxeq.testing.cyclic import check_cyclic_equivariance

    next_frame = served_next_frame(signature)
    tests, held_out = measure_rollouts(next_frame, cfg, data_dir=data_dir, max_test_batches=max_test_batches)
    # the recipe's C4 check takes the first held-out windows too
    vector = FieldType.vector(4)
    windows = held_out[:EQUIVARIANCE_WINDOWS]
    report = check_cyclic_equivariance(next_frame, windows, vector, vector, atol=0.0)
    return {
        "tests": tests,
        "c4": {"max_error": float(report.max_error), "scale": float(report.scale),
               "relative": float(report.max_error / max(report.scale, 1e-30)), "num_windows": int(len(windows))},
        **keras_parity(next_frame, keras_model, held_out[:PARITY_WINDOWS]),
    }


def rollout_metrics(meas: dict, cfg: dict) -> list[dict]:
    """The entry's ``rmse_future`` and ``rmse_domain`` metrics (the run's data set: ``--symmetry``)."""
    from keras_relaxeq.datasets.smoke_plume import smoke_plume_config, split_tasks

    config = smoke_plume_config(cfg.get("symmetry", "rotation"))
    trained, held_out = len(split_tasks(config, "train")), len(split_tasks(config, "test_domain"))
    t = meas["tests"]
    rollout = (f"{cfg['test_length']}-step autoregressive rollouts from 10 true frames (each prediction fed "
               "back), RMSE = sqrt(mean over batches of the per-batch MSE over every predicted frame, cell and "
               f"component), batches of {cfg['batch']} as recipes/smoke_plume.py evaluates them")
    return [
        {"name": "rmse_future", "value": float(f"{t['test_future']['rmse']:.6g}"), "split": "test_future",
         "protocol": f"{rollout}; test_future: {t['test_future']['num_windows']} windows of the {trained} training "
                     f"simulations at later times (start 200 <= t < 250); {ARTIFACT_NOTE}"},
        {"name": "rmse_domain", "value": float(f"{t['test_domain']['rmse']:.6g}"), "split": "test_domain",
         "protocol": f"{rollout}; test_domain: {t['test_domain']['num_windows']} windows of the {held_out} "
                     f"held-out simulations (start t < 100); {ARTIFACT_NOTE}"},
    ]


def _metrics(meas: dict, cfg: dict) -> list[dict]:
    c4 = meas["c4"]
    return [
        *rollout_metrics(meas, cfg),
        {"name": "c4_equivariance_relative_error", "value": float(f"{c4['relative']:.3e}"),
         "split": "test_domain",
         "protocol": f"max |f(g.x) - g.f(x)| / max |g.f(x)| over the quarter turns g = 1, 2, 3 (every frame's "
                     f"grid turned and its (v_x, v_y) rotated; the predicted frame turned likewise) on the first "
                     f"{c4['num_windows']} test_domain windows, compared in float64 "
                     f"(keras_relaxeq.testing.cyclic); {ARTIFACT_NOTE}"},
        keras_parity_metric(meas, "test_domain", "frames", f"the first {meas['parity_windows']} test_domain "
                                                           "windows"),
    ]


class SmokePlumeRun(RecipeRun):
    """A ``recipes/smoke_plume.py`` run of the relaxed (or equivariant) arm: a C4 steerable CNN forecaster."""

    recipe = RECIPE
    default_citation = DEFAULT_CITATION
    default_model_file = "projected.keras"
    data_licence = ("The smoke plume data are simulated locally with PhiFlow (keras_relaxeq.datasets.smoke_plume, "
                    "the settings of Wang, Walters and Yu 2022).")
    only_options = ("data_dir", "max_test_batches")

    def __init__(self, *args, **kwargs):
        import keras_relaxeq.models.smoke_plume  # noqa: F401  (registers ShiftFrames, StackFrames: rollout files load)

        super().__init__(*args, **kwargs)
        if self.cfg.get("arm") not in PUBLISHABLE_ARMS:
            raise PublishError(f"a {self.cfg.get('arm')!r} run is not exactly C4-equivariant; only the arms "
                               f"{PUBLISHABLE_ARMS} are published (relaxeq zoo verify checks C4 equivariance).")
        self.config = None

    def default_name(self) -> str:
        return NAME

    def prepare(self, model):
        model, self.config = rebuild_forecaster(model, self.cfg, seed=self.seed)
        return model

    def export(self, model, export_dir, name, version):
        return export_smoke_saved_model(model, export_dir, name, version)

    def measure(self, signature, model):
        from keras_relaxeq.zoo.verify import C4_RELATIVE_TOLERANCE

        meas = measure_smoke_artifact(signature, model, self.cfg, data_dir=self.options.get("data_dir"),
                                      max_test_batches=self.options.get("max_test_batches"), seed=self.seed)
        if not all(np.isfinite(v["rmse"]) for v in meas["tests"].values()):
            raise PublishError("the artifact's rollouts are not finite.")
        check_parity(meas, "frames")
        if not meas["c4"]["relative"] < C4_RELATIVE_TOLERANCE:
            raise PublishError(f"the artifact's C4 equivariance error is {meas['c4']['relative']:.2e} relative "
                               f"(> {C4_RELATIVE_TOLERANCE:.0e}) on held-out windows.")
        return meas

    def entry_fields(self, model, meas, params):
        cfg, s = self.cfg, self.summary
        frames, grid = int(model.input_shape[1]), int(cfg["resolution"])
        return {
            "task": TASK,
            "description": (f"C4 steerable CNN (5 layers, {fields(cfg)} regular fields, width {cfg['width']}) "
                            f"forecasting the next 2D smoke plume velocity frame from the last {frames}, "
                            + ("trained with constraint relaxation and projected" if cfg["arm"] == "relaxed"
                               else "trained without relaxation")
                            + f"; exactly C4-equivariant; {s.get('epochs_run')} epochs of the CPU protocol."),
            "architecture": {"class": "keras_relaxeq.models.smoke_plume.smoke_plume_forecaster",
                             "config": self.config, "params": params,
                             "keras_class": f"{type(model).__module__}.{type(model).__name__}"},
            **io_fields(frames, grid, PREPROCESSING),
            "metrics": _metrics(meas, cfg),
            "evaluation": {key: cfg.get(key) for key in EVALUATION_KEYS},
            "training": training_fields(cfg, s),
        }

    def render_card(self, entry, meas, command, source, params):
        return render_card(entry, self.summary, meas, command, source, self.model_file, params)

    def report(self, meas):
        t, c4 = meas["tests"], meas["c4"]
        return (f"RMSE future {t['test_future']['rmse']:.4f} ({t['test_future']['num_windows']} windows), domain "
                f"{t['test_domain']['rmse']:.4f} ({t['test_domain']['num_windows']}); C4 relative error "
                f"{c4['relative']:.1e}")


def io_fields(frames: int, grid: int, preprocessing: str) -> dict:
    """The entry's ``input`` and ``outputs``: ``frames`` ``[None, frames, grid, grid, 2]`` -> ``next_frame``."""
    return {"input": {"name": INPUT_NAME, "dtype": "float32", "shape": [None, frames, grid, grid, 2],
                      "layout": f"[batch, {frames} frames, y, x, (v_x, v_y)]", "preprocessing": preprocessing},
            "outputs": {OUTPUT_NAME: {"dtype": "float32", "shape": [None, grid, grid, 2],
                                      "layout": "[batch, y, x, (v_x, v_y)]: the next velocity frame"}}}


def training_fields(cfg: dict, summary: dict) -> dict:
    """The run's numbers in the entry's ``training`` (besides the command, epochs and wall time)."""
    return {
        "arm": cfg["arm"], "budget": "cpu_protocol" if is_cpu_protocol(cfg) else "published",
        "rmse_future": summary.get("rmse_future"), "rmse_domain": summary.get("rmse_domain"),
        "best_projected_val_rmse": summary.get("best_projected_val_rmse"),
        "val_rmse_protocol": "recipe's projected validation RMSE (6-step rollouts, "
                             + (f"first {cfg['max_val_batches']} batches" if cfg.get("max_val_batches")
                                else "all windows") + ")",
    }


def usage_lines(name: str, version: int, frames: int, grid: int) -> list[str]:
    """The card's Python usage lines of a field forecaster entry (``card_closing_lines``)."""
    return [
        f"model = zoo.load({name!r}, version={version})       # verified download",
        f"frames = np.zeros([1, {frames}, {grid}, {grid}, 2], np.float32)     # the last {frames} frames",
        f"nxt = model(frames)[{OUTPUT_NAME!r}]                          # [1, {grid}, {grid}, 2]",
        f"path = zoo.download({name!r}, version={version})  # or, with TensorFlow only:",
        "serve = tf.saved_model.load(str(path)).signatures['serving_default']",
        f"nxt = serve({INPUT_NAME}=tf.constant(frames))[{OUTPUT_NAME!r}]",
    ]


def fields(cfg: dict) -> int:
    """Regular hidden fields of a run (``max(1, round(hidden * width))``, as the builder)."""
    return max(1, int(round(int(cfg["hidden"]) * float(cfg["width"]))))


def is_cpu_protocol(cfg: dict) -> bool:
    return bool(float(cfg["width"]) < PUBLISHED["width"] or int(cfg["epochs"]) < PUBLISHED["epochs"]
                or cfg.get("max_train_batches"))


def gpu_command(cfg: dict, extra: str = "") -> str:
    """The published budget: the recipe command without ``--width``, ``--epochs`` and ``--max-*-batches``
    (``extra``: options of the task, e.g. ``--symmetry scale``, put before ``--arm``)."""
    folder = "smoke_scale" if cfg.get("symmetry") == "scale" else "smoke"
    return (f"python {RECIPE} {extra + ' ' if extra else ''}--arm {cfg['arm']} --seed {cfg['seed']} "
            f"--output-dir runs/{folder}/{cfg['arm']}_seed{cfg['seed']}")


def _budget_lines(cfg: dict, summary: dict, published: dict = PUBLISHED, hidden: str = "regular hidden fields",
                  relaxation: str = "") -> list[str]:
    """The card's budget, optimisation, relaxation and test-window lines; ``published`` gives the published budget
    (``hidden``: the builder's default before ``--width``, ``train_windows``, ``val_windows``), ``hidden`` says what
    ``--width`` scales, ``relaxation`` ends the relaxation line."""
    train = cfg.get("max_train_batches")
    val = cfg.get("max_val_batches")
    windows = summary.get("test_windows") or {}
    return [
        f"- budget: {'the CPU protocol of docs/experiments/smoke_plume.md' if is_cpu_protocol(cfg) else 'published'}"
        f": width {cfg['width']} ({fields(cfg)} {hidden} instead of {published['hidden']}), "
        f"{summary.get('epochs_run')} epochs (configured {cfg['epochs']}; published up to "
        f"{published['epochs']} with early stopping after {published['early_stop_after']})"
        + (f", {train} training batches x {cfg['batch']} windows per epoch ({train * int(cfg['batch'])} of the "
           f"{published['train_windows']:,} training windows, a new shuffle each epoch; published: all "
           f"{published['train_batches']})" if train else "")
        + (f", validation on the first {val} batches ({val * int(cfg['batch'])} of "
           f"{published['val_windows']:,} windows)" if val else ""),
        f"- optimisation: batch {cfg['batch']}, Adam lr {cfg['lr']} x{cfg['lr_decay']} per epoch, coupled L2 "
        f"{cfg['weight_decay']}, {cfg['output_length']}-step autoregressive loss, seed {cfg['seed']}",
        "- relaxation: " + (f"`{cfg['schedule']}` theta schedule on a {cfg.get('theta_epochs') or cfg['epochs']}-"
                             f"epoch clock, lambda_lie {cfg['lambda_lie']}, lambda_proj {cfg['lambda_proj']}"
                             f"{relaxation}; the published model is the projection (branches dropped)"
                             if cfg["arm"] == "relaxed" else "off (equivariant arm)"),
        f"- test windows of the recipe's own evaluation: {windows.get('test_future', 'n/a')} test_future, "
        f"{windows.get('test_domain', 'n/a')} test_domain",
    ]


def render_card(entry: dict, summary: dict, meas: dict, command: str, command_source: str, model_file: str,
                params: int) -> str:
    """The model card of a smoke plume forecaster entry."""
    cfg = summary["config"]
    name, version = entry["name"], entry["version"]
    t, c4 = meas["tests"], meas["c4"]
    grid, frames = int(cfg["resolution"]), entry["input"]["shape"][1]
    relaxed = cfg["arm"] == "relaxed"
    eq_train = summary.get("c4_equivariance") or {}
    metrics = card_metrics_lines(entry, summary)  # the wall-time line, then the metrics section
    limits = []
    if is_cpu_protocol(cfg):
        limits.append("A small CPU budget (width, epochs and batches per epoch above), far below the published "
                      "one: the RMSEs are not comparable with the paper's (Wang et al. 2022 at the full budget: "
                      "RSteer 0.80 / 0.67, Conv 1.21 / 1.10, Equiv 1.05 / 0.76 future / domain).")
    limits += [f"One training run (seed {cfg['seed']}); no error bars.",
               f"Fixed to {frames} input frames on a {grid}x{grid} grid (inputs [batch, {frames}, {grid}, {grid}, 2]) "
               "and to the smoke plume rotation set; other grids, boundary conditions or flows were not evaluated.",
               "The data set is regenerated locally with PhiFlow 3.4 (keras_relaxeq.datasets.smoke_plume); bitwise "
               "equality with the reference's files is not checked."]
    lines = [
        f"# {name} v{version}", "",
        f"C4 steerable CNN forecasting 2D smoke plume velocity fields: from the last {frames} frames "
        f"`[batch, {frames}, {grid}, {grid}, 2]` it predicts the next one `[batch, {grid}, {grid}, 2]`; longer "
        "forecasts feed each prediction back. The network is exactly equivariant to quarter turns of the grid "
        "(each frame's grid and its (v_x, v_y) rotated, the predicted frame rotates the same way). It was "
        + ("trained with constraint relaxation (a `theta * Conv2D` branch on every layer, C4 defect and projection "
           "penalties) and then projected onto the equivariant subspace: the published model has no relaxation "
           "branches." if relaxed else "trained as the plain equivariant arm."), "",
        "## Architecture", "",
        f"- builder: `{entry['architecture']['class']}` with "
        f"`{json.dumps(entry['architecture']['config'], sort_keys=True)}`",
        f"- lifting (vector -> regular), 3 group convolutions, projection (regular -> vector); {fields(cfg)} regular "
        f"fields, kernel {cfg['kernel']}, ReLU; {params:,} parameters; the first layer checks the input",
        f"- input: `{INPUT_NAME}` float32 `[batch, {frames}, {grid}, {grid}, 2]`; output: `{OUTPUT_NAME}` float32 "
        f"`[batch, {grid}, {grid}, 2]`; any batch size",
        f"- preprocessing: {PREPROCESSING}", "",
        "## Training", "", *card_command_lines(command, command_source), "",
        *_budget_lines(cfg, summary),
        f"- published model file: `{model_file}` of the run (the projected forecaster with the best validation "
        f"RMSE, epoch {summary.get('best_epoch')}; best projected val RMSE "
        f"{_fmt(summary.get('best_projected_val_rmse'))})",
        f"- the recipe's own numbers (summary.json of the run): RMSE future {_fmt(summary.get('rmse_future'))}, "
        f"domain {_fmt(summary.get('rmse_domain'))}, C4 relative error {_fmt_sci(eq_train.get('relative_max_error'))} "
        f"on {eq_train.get('num_windows', 'n/a')} test_domain windows",
        metrics[0], "",
        "The published budget (a GPU: up to 1000 epochs of all 250 training batches, width 1, early stopping):",
        "", "```sh", gpu_command(cfg), "```",
        *metrics[1:], "",
        f"RMSE future {t['test_future']['rmse']:.4f} over {t['test_future']['num_windows']} windows, domain "
        f"{t['test_domain']['rmse']:.4f} over {t['test_domain']['num_windows']} windows, recomputed from the data "
        f"on the artifact (`relaxeq zoo publish`; data in `$KERAS_RELAXEQ_CACHE/smoke_plume_rotation`). C4: "
        f"relative error {c4['relative']:.1e} (max {c4['max_error']:.1e} at output scale {c4['scale']:.2f}): float32 "
        "round-off only.", "",
        *card_closing_lines(entry, limits, usage_lines(name, version, frames, grid), SmokePlumeRun.data_licence,
                            verify_note="     # sha256, signature, fresh process, C4, input checks"),
    ]
    return "\n".join(lines)


def measure_entry_again(name: str, version, *, kind: str, measure, metrics, index=None, data_dir=None,
                        max_test_batches=None, cache_dir=None, seed: int = 0) -> dict:
    """A published field forecaster measured again from the data (as ``relaxeq zoo publish`` did):
    ``{metric name: (published value, measured value)}``. ``kind`` is the :class:`ZooEntry` property the entry must
    have (``is_c4_field_forecaster``), ``measure(signature, keras_model, settings, ...)`` and ``metrics(meas,
    settings)`` the family's; ``settings`` are the entry's ``evaluation`` with ``data_dir``."""
    from keras_relaxeq.zoo.loading import load
    from keras_relaxeq.zoo.registry import load_index

    entry = load_index(index).get(name, version)
    settings = entry.raw.get("evaluation")
    if not getattr(entry, kind) or not settings:
        raise PublishError(f"{entry.name} v{entry.version} is not a smoke plume forecaster entry of this kind "
                           f"({kind.removeprefix('is_')}) with evaluation settings.")
    served = load(entry.name, entry.version, index=index, cache_dir=cache_dir, progress=False)
    keras_model = load(entry.name, entry.version, index=index, cache_dir=cache_dir, progress=False, as_keras=True)
    meas = measure(served.signature, keras_model, dict(settings, data_dir=data_dir), data_dir=data_dir,
                   max_test_batches=max_test_batches, seed=seed)
    measured = {m["name"]: m["value"] for m in metrics(meas, dict(settings))}
    return {m["name"]: (m["value"], measured.get(m["name"])) for m in entry.metrics}


def evaluate_entry(name: str = NAME, version=None, *, index=None, data_dir=None, max_test_batches=None,
                   cache_dir=None, seed: int = 0) -> dict:
    """The published artifact of ``name`` measured again from the data (as ``relaxeq zoo publish`` did):
    ``{metric name: (published value, measured value)}`` for the RMSEs, the C4 error and the Keras parity.
    ``data_dir`` defaults to ``$KERAS_RELAXEQ_CACHE/smoke_plume_rotation``."""
    return measure_entry_again(name, version, kind="is_c4_field_forecaster", measure=measure_smoke_artifact,
                               metrics=_metrics, index=index, data_dir=data_dir, max_test_batches=max_test_batches,
                               cache_dir=cache_dir, seed=seed)


def measure_again_main(argv, *, module: str, default_name: str, evaluate, data_set: str) -> int:
    """``python -m MODULE [NAME] [--version N] [--data-dir DIR] [--max-test-batches N] [--index FILE]``:
    ``evaluate`` (an ``evaluate_entry``) printed metric by metric; the data default to
    ``$KERAS_RELAXEQ_CACHE/<data_set>``."""
    import argparse

    p = argparse.ArgumentParser(prog=f"python -m {module}",
                                description="Measure a published smoke plume forecaster again from the data.")
    p.add_argument("name", nargs="?", default=default_name)
    p.add_argument("--version", type=int, default=None)
    p.add_argument("--data-dir", default=None, help=f"default: $KERAS_RELAXEQ_CACHE/{data_set}")
    p.add_argument("--max-test-batches", type=int, default=None, help="default: the entry's (all)")
    p.add_argument("--index", default=None, help="catalogue (default: the repository's zoo/index.json)")
    args = p.parse_args(argv)
    return print_measured_again(evaluate, name=args.name, version=args.version, index=args.index,
                                data_dir=args.data_dir, max_test_batches=args.max_test_batches)


def main(argv=None) -> int:
    """``python -m keras_relaxeq.zoo.publish.smoke_plume [NAME] [--version N] [--data-dir DIR]``: the published
    RMSEs, C4 error and Keras parity of an entry recomputed on its artifact from the data."""
    return measure_again_main(argv, module="keras_relaxeq.zoo.publish.smoke_plume", default_name=NAME,
                              evaluate=evaluate_entry, data_set="smoke_plume_rotation")


__all__ = ["NAME", "RECIPE", "SmokePlumeRun", "evaluate_entry", "architecture_config", "export_smoke_saved_model",
           "keras_parity", "measure_again_main", "measure_entry_again", "measure_rollouts", "measure_smoke_artifact",
           "one_step_forecaster", "rebuild_forecaster", "rebuild_with", "recipe_test_pipeline", "render_card",
           "rollout_metrics", "served_next_frame"]


if __name__ == "__main__":
    raise SystemExit(main())
