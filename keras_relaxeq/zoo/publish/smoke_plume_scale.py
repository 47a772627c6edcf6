"""Publishing a ``recipes/smoke_plume.py --symmetry scale`` run (an SESN scale-equivariant forecaster on the 2D smoke
plume scale set) as ``sesn_scale_smokeplume``.

:func:`keras_relaxeq.zoo.publish.publish_run` drives the steps and picks :class:`SmokePlumeScaleRun` for a run of
``recipes/smoke_plume.py`` whose config has ``symmetry`` ``scale``; it reuses the rotation publisher's pieces
(:mod:`keras_relaxeq.zoo.publish.smoke_plume`) and supplies what is specific to the scale task:

* the model: the run's projected one-step forecaster (``projected.keras``), rebuilt with the current builder
  (``smoke_plume_scale_forecaster("equivariant", ...)``, an ``InputCheck`` first, the run's scales) carrying exactly
  its weights. Only the ``relaxed`` (projected) and ``equivariant`` arms are published: their trunk is made of the
  SESN layers; the ``cnn`` arm has no scale axis and the RSteer arms' coefficients vary over the kernel taps;
* export: the rotation entry's serving signature (``frames`` float32 ``[None, 10, 64, 64, 2]`` -> ``next_frame``
  float32 ``[None, 64, 64, 2]``, shape / finite input checks in the serving function);
* measurements (:func:`measure_scale_artifact`): the recipe's 20-step rollout RMSEs on ``test_future`` and
  ``test_domain`` recomputed from the scale data with the serving function, the largest difference to the Keras
  model, and the scale-step error of the ``.keras`` model's scale-space trunk (the recipe's measure,
  ``keras_relaxeq.testing.scale.trunk_scale_step_error``: approximate at kernel 5, docs/scale_equivariance.md).
  Before anything is written the publisher runs what ``relaxeq zoo verify`` checks on such an entry
  (:mod:`keras_relaxeq.zoo.verify_scale`): translation equivariance of the SavedModel away from the borders, and the
  staged ``.keras`` file answering as the SavedModel with the published scale-step error;
* the entry fields (task ``field_forecasting``, group ``scale``) and the model card (budget, command, the GPU
  command, Wang et al. 2022's scale numbers, the limits).

``python -m keras_relaxeq.zoo.publish.smoke_plume_scale [NAME]`` measures a published entry again from the data.
"""

from __future__ import annotations

import json

import numpy as np

from keras_relaxeq.zoo.publish.base import (
    PublishError,
    RecipeRun,
    _fmt,
    card_closing_lines,
    card_command_lines,
    card_metrics_lines,
    check_parity,
    keras_parity_metric,
)
from keras_relaxeq.zoo.publish.smoke_plume import (
    EVALUATION_KEYS,
    INPUT_NAME,
    OUTPUT_NAME,
    PARITY_WINDOWS,
    RECIPE,
    TASK,
    SmokePlumeRun,
    _budget_lines,
    export_smoke_saved_model,
    fields,
    gpu_command,
    io_fields,
    is_cpu_protocol,
    keras_parity,
    measure_again_main,
    measure_entry_again,
    measure_rollouts,
    one_step_forecaster,
    rebuild_with,
    rollout_metrics,
    served_next_frame,
    training_fields,
    usage_lines,
)
from keras_relaxeq.zoo.verify_scale import (
    FIELD_SEED,
    METRIC,
    SCALE_ERROR_ATOL,
    SCALE_ERROR_RTOL,
    TRANSLATION_RTOL,
    check_keras_artifact,
)

NAME = "sesn_scale_smokeplume"
GROUP = "scale"
#: arms whose projected forecaster is the SESN trunk (what ``relaxeq zoo verify`` checks)
PUBLISHABLE_ARMS = ("relaxed", "equivariant")
DEFAULT_CITATION = (
    "Pertigkiozoglou, Chatzipantazis, Trivedi, Daniilidis: Improving Equivariant Model Training via Constraint "
    "Relaxation, NeurIPS 2024; Wang, Walters, Yu: Approximately Equivariant Networks for Imperfectly Symmetric "
    "Dynamics, ICML 2022 (data and protocol); Sosnovik, Szmaja, Smeulders: Scale-Equivariant Steerable Networks, "
    "ICLR 2020 (the layers)"
)
PREPROCESSING = (
    "none: raw simulator velocities (cells of the 64 grid per time step) of the PhiFlow smoke plume scale set, "
    "channels last, components (v_x, v_y), rows = y; the input is the last 10 frames, the output the next one"
)
#: the published scale budget (recipes/smoke_plume.py DEFAULTS with SCALE_DEFAULTS: batch 8, 64 channels per scale;
#: the scale set's 28 training simulations: 4,480 training and 1,120 validation windows)
PUBLISHED = {"epochs": 1000, "width": 1.0, "train_batches": 560, "val_batches": 140, "early_stop_after": 100,
             "hidden": 64, "train_windows": 4480, "val_windows": 1120}
#: the run's settings that the measurements depend on (the entry's ``evaluation``)
SCALE_EVALUATION_KEYS = EVALUATION_KEYS + ("symmetry", "layers", "kernel")
#: Wang, Walters and Yu 2022, the scale task at their budget: 20-step RMSE (future, domain)
WANG_2022_SCALE = {"Conv": (0.83, 0.95), "Equiv": (0.75, 0.87), "RSteer": (0.70, 0.73)}
#: the recipe's task option of these runs (the GPU command keeps it)
SYMMETRY_OPTION = "--symmetry scale"


def scale_gpu_command(cfg: dict) -> str:
    """The published budget's command: the rotation one (``gpu_command``) with ``--symmetry scale`` (and the run's
    ``--scale-penalty`` when a relaxed run used another than the default ``step``)."""
    penalty = cfg.get("scale_penalty") or "step"
    extra = f" --scale-penalty {penalty}" if cfg["arm"] == "relaxed" and penalty != "step" else ""
    return gpu_command(cfg, SYMMETRY_OPTION + extra)


def architecture_config(cfg: dict, input_frames: int = 10, scales=(1.0, 1.5, 2.0, 2.5)) -> dict:
    """Arguments of ``keras_relaxeq.models.smoke_plume_scale.smoke_plume_scale_forecaster`` that rebuild the projected
    forecaster of a run (``arm`` ``equivariant``: the relaxed arm without its branch)."""
    return {"arm": "equivariant", "input_frames": int(input_frames), "grid": int(cfg["resolution"]),
            "hidden": int(cfg["hidden"]), "width": float(cfg["width"]), "kernel_size": int(cfg["kernel"]),
            "num_layers": int(cfg["layers"]), "scales": [float(s) for s in scales]}


def rebuild_scale_forecaster(model, cfg: dict, *, seed: int = 0):
    """``(forecaster, config)``: the one-step forecaster in ``model`` rebuilt by the current builder with exactly its
    weights and the scales of its lifting layer, checked to answer alike on random windows."""
    from keras_relaxeq.models.smoke_plume_scale import smoke_plume_scale_forecaster

    source, shape = one_step_forecaster(model, cfg)
    names = [layer.name for layer in source.layers]
    if "lifting" not in names or "velocity_scales" not in names:
        raise PublishError(f"the run's forecaster has no SESN scale-space trunk (layers {names}).")
    config = architecture_config(cfg, shape[0], source.get_layer("lifting").scales)
    rebuilt = rebuild_with(source, smoke_plume_scale_forecaster, config, f"smoke_plume_scale_{cfg['arm']}", seed=seed)
    return rebuilt, config


def measure_scale_artifact(signature, keras_model, cfg: dict, *, data_dir=None, max_test_batches=None,
                           seed: int = 0) -> dict:
    """Rollout RMSEs (``test_future``, ``test_domain``) and Keras parity of a scale forecaster's
    ``serving_default`` on the scale data, and the scale-step error of the Keras model's trunk."""
    from keras_relaxeq.testing.scale import trunk_scale_step_error

    next_frame = served_next_frame(signature)
    tests, held_out = measure_rollouts(next_frame, cfg, data_dir=data_dir, max_test_batches=max_test_batches)
    layers, kernel = int(cfg["layers"]), int(cfg["kernel"])
    check = trunk_scale_step_error(keras_model, layers, kernel, seed=FIELD_SEED)
    if check is None:
        raise PublishError("the forecaster has no scale-space trunk with sigma = 2 among its scales.")
    return {
        "tests": tests,
        "scale": {"relative": float(check.max_error), "pairs": [list(p) for p in check.pairs],
                  "compared": int(check.compared), "margin": 2 * layers * (kernel // 2), "kernel": kernel},
        **keras_parity(next_frame, keras_model, held_out[:PARITY_WINDOWS]),
    }


def _metrics(meas: dict, cfg: dict) -> list[dict]:
    sc = meas["scale"]
    return [
        *rollout_metrics(meas, cfg),
        {"name": METRIC, "value": float(f"{sc['relative']:.6g}"), "split": "synthetic",
         "protocol": "scale-step error of the keras_artifact's scale-space trunk (every layer after `images` up to "
                     "`velocity_scales`, before the finest scale is read; "
                     "keras_relaxeq.testing.scale.trunk_scale_step_error, what recipes/smoke_plume.py --symmetry "
                     f"scale reports): a smooth random field (plane waves below 0.25 rad per cell, seed {FIELD_SEED},"
                     " one per image channel) sampled at spacing 1 (fine) and 2 (coarse), max |trunk(coarse)[n, "
                     "sigma 1] - trunk(fine)[2n, sigma 2]| / max |trunk(fine)[2n, sigma 2]| over the cells at least "
                     f"{sc['margin']} fine cells from the borders ({sc['compared']} values; float32 model, float64 "
                     f"field). Not round-off: at kernel {sc['kernel']} the SESN layers are only approximately "
                     "scale-equivariant (tens of percent, docs/scale_equivariance.md). relaxeq zoo verify recomputes "
                     f"it on the .keras file and requires this value within {SCALE_ERROR_ATOL:.0e} + "
                     f"{SCALE_ERROR_RTOL:.0e} x value"},
        keras_parity_metric(meas, "test_domain", "frames", f"the first {meas['parity_windows']} test_domain "
                                                           "windows"),
    ]


class SmokePlumeScaleRun(RecipeRun):
    """A ``recipes/smoke_plume.py --symmetry scale`` run of the relaxed (or equivariant) arm: an SESN forecaster."""

    recipe = RECIPE
    default_citation = DEFAULT_CITATION
    default_model_file = "projected.keras"
    data_licence = ("The smoke plume scale data are simulated locally with PhiFlow "
                    "(keras_relaxeq.datasets.smoke_plume, the settings of Wang, Walters and Yu 2022).")
    only_options = SmokePlumeRun.only_options

    def __init__(self, *args, **kwargs):
        import keras_relaxeq.models.smoke_plume  # noqa: F401  (registers ShiftFrames, StackFrames: rollout files load)
        import keras_relaxeq.models.smoke_plume_scale  # noqa: F401  (registers ScaleSlice and the SESN layers)

        super().__init__(*args, **kwargs)
        if self.cfg.get("symmetry") != "scale":
            raise PublishError(f"{self.run_dir} is a {self.cfg.get('symmetry', 'rotation')!r} run, not a "
                               "--symmetry scale run.")
        if self.cfg.get("arm") not in PUBLISHABLE_ARMS:
            raise PublishError(f"a {self.cfg.get('arm')!r} scale run is not published: only the arms "
                               f"{PUBLISHABLE_ARMS} have the SESN scale-space trunk that {NAME} promises (the cnn "
                               "arm has no scale axis, the RSteer arms' coefficients vary over the kernel taps).")
        self.config = None

    def default_name(self) -> str:
        return NAME

    def prepare(self, model):
        model, self.config = rebuild_scale_forecaster(model, self.cfg, seed=self.seed)
        return model

    def export(self, model, export_dir, name, version):
        return export_smoke_saved_model(model, export_dir, name, version)

    def measure(self, signature, model):
        meas = measure_scale_artifact(signature, model, self.cfg, data_dir=self.options.get("data_dir"),
                                      max_test_batches=self.options.get("max_test_batches"), seed=self.seed)
        if not all(np.isfinite(v["rmse"]) for v in meas["tests"].values()):
            raise PublishError("the artifact's rollouts are not finite.")
        if not np.isfinite(meas["scale"]["relative"]):
            raise PublishError("the trunk's scale-step error is not finite.")
        check_parity(meas, "frames")
        return meas

    def check_staged(self, serving, entry, keras_file):
        try:
            check_keras_artifact(serving, entry, keras_file, seed=self.seed)
        except AssertionError as exc:
            raise PublishError(f"relaxeq zoo verify would fail: {exc}") from None

    def entry_fields(self, model, meas, params):
        cfg, s = self.cfg, self.summary
        frames, grid = int(model.input_shape[1]), int(cfg["resolution"])
        return {
            "task": TASK,
            "description": (f"SESN scale-equivariant CNN ({cfg['layers']} layers, {fields(cfg)} channels per scale, "
                            f"scales {', '.join(f'{x:g}' for x in self.config['scales'])}, kernel {cfg['kernel']}, "
                            f"width {cfg['width']}) forecasting the next 2D smoke plume velocity frame of the scale "
                            f"set from the last {frames}, "
                            + ("trained with constraint relaxation and projected" if cfg["arm"] == "relaxed"
                               else "trained without relaxation")
                            + "; translation-equivariant away from the borders, scale-equivariant only approximately "
                            f"(scale-step error {meas['scale']['relative']:.2g}); {s.get('epochs_run')} epochs of the "
                            + ("CPU protocol." if is_cpu_protocol(cfg) else "published budget.")),
            "architecture": {"class": "keras_relaxeq.models.smoke_plume_scale.smoke_plume_scale_forecaster",
                             "config": self.config, "params": params,
                             "keras_class": f"{type(model).__module__}.{type(model).__name__}"},
            **io_fields(frames, grid, PREPROCESSING),
            "metrics": _metrics(meas, cfg),
            "evaluation": {key: cfg.get(key) for key in SCALE_EVALUATION_KEYS},
            "training": dict(training_fields(cfg, s), scale_penalty=cfg.get("scale_penalty"),
                             scale_equivariance=s.get("scale_equivariance")),
        }

    def render_card(self, entry, meas, command, source, params):
        return render_card(entry, self.summary, meas, command, source, self.model_file, params)

    def report(self, meas):
        t = meas["tests"]
        return (f"RMSE future {t['test_future']['rmse']:.4f} ({t['test_future']['num_windows']} windows), domain "
                f"{t['test_domain']['rmse']:.4f} ({t['test_domain']['num_windows']}); scale-step error (trunk) "
                f"{meas['scale']['relative']:.3g}")


def render_card(entry: dict, summary: dict, meas: dict, command: str, command_source: str, model_file: str,
                params: int) -> str:
    """The model card of a smoke plume scale forecaster entry."""
    cfg = summary["config"]
    name, version = entry["name"], entry["version"]
    t, sc = meas["tests"], meas["scale"]
    grid, frames = int(cfg["resolution"]), entry["input"]["shape"][1]
    scales = ", ".join(f"{x:g}" for x in entry["architecture"]["config"]["scales"])
    relaxed = cfg["arm"] == "relaxed"
    recipe_scale = (summary.get("scale_equivariance") or {}).get("relative_max_error")
    metrics = card_metrics_lines(entry, summary)  # the wall-time line, then the metrics section
    wang = ", ".join(f"{arm} {f:.2f} / {d:.2f}" for arm, (f, d) in WANG_2022_SCALE.items())
    limits = [f"Scale equivariance is approximate: at kernel {cfg['kernel']} the SESN layers are tens of percent from "
              f"scale-equivariant (docs/scale_equivariance.md); this model's trunk has a scale-step error of "
              f"{sc['relative']:.2g}. Exact are only translations (away from the borders), which verify checks."]
    if is_cpu_protocol(cfg):
        limits.append("A small CPU budget (width, epochs and batches per epoch above), far below the published one: "
                      f"the RMSEs are not comparable with the paper's (Wang et al. 2022, scale task: {wang} RMSE "
                      "future / domain).")
    limits += [f"One training run (seed {cfg['seed']}); no error bars.",
               f"Fixed to {frames} input frames on a {grid}x{grid} grid (inputs [batch, {frames}, {grid}, {grid}, 2]) "
               "and to the smoke plume scale set; other grids, boundary conditions or flows were not evaluated.",
               "The data set is regenerated locally with PhiFlow 3.4 (keras_relaxeq.datasets.smoke_plume); bitwise "
               "equality with the reference's files is not checked."]
    lines = [
        f"# {name} v{version}", "",
        f"SESN scale-equivariant steerable CNN forecasting 2D smoke plume velocity fields of the scale set: from the "
        f"last {frames} frames `[batch, {frames}, {grid}, {grid}, 2]` it predicts the next one "
        f"`[batch, {grid}, {grid}, 2]`; longer forecasts feed each prediction back. The {2 * frames} velocity "
        "channels are scalar images (a dilation resamples the grid and keeps the vectors) lifted to scale space. The "
        "network is exactly equivariant to integer translations away from the borders and only approximately to "
        "dilations (see Limits). It was "
        + (f"trained with constraint relaxation (a `theta * Conv2D` branch on the lifting layer, scale penalty "
           f"`{cfg.get('scale_penalty')}`, projection penalty) and then projected: the published model has no "
           "relaxation branch." if relaxed else "trained as the plain equivariant arm."), "",
        "## Architecture", "",
        f"- builder: `{entry['architecture']['class']}` with "
        f"`{json.dumps(entry['architecture']['config'], sort_keys=True)}`",
        f"- lifting (images -> scale space), {int(cfg['layers']) - 2} scale-space convolutions, a scale-space "
        f"convolution to 2 channels read at the finest scale; {fields(cfg)} channels per scale, scales {scales}, "
        f"kernel {cfg['kernel']} (Hermite-Gaussian basis), ReLU; {params:,} parameters; the first layer checks the "
        "input",
        f"- input: `{INPUT_NAME}` float32 `[batch, {frames}, {grid}, {grid}, 2]`; output: `{OUTPUT_NAME}` float32 "
        f"`[batch, {grid}, {grid}, 2]`; any batch size",
        f"- preprocessing: {PREPROCESSING}", "",
        "## Training", "", *card_command_lines(command, command_source), "",
        *_budget_lines(cfg, summary, PUBLISHED, "channels per scale",
                       f", scale penalty `{cfg.get('scale_penalty')}` on the lifting layer's branch"),
        f"- published model file: `{model_file}` of the run (the projected forecaster with the best validation "
        f"RMSE, epoch {summary.get('best_epoch')}; best projected val RMSE "
        f"{_fmt(summary.get('best_projected_val_rmse'))})",
        f"- the recipe's own numbers (summary.json of the run): RMSE future {_fmt(summary.get('rmse_future'))}, "
        f"domain {_fmt(summary.get('rmse_domain'))}, scale-step error of the trunk {_fmt(recipe_scale)}",
        metrics[0], "",
        f"The published budget (a GPU: up to {PUBLISHED['epochs']} epochs of all {PUBLISHED['train_batches']} "
        "training batches of 8, width 1, early stopping):", "", "```sh", scale_gpu_command(cfg), "```", "",
        f"Wang et al. 2022 at that budget (scale task, 20-step RMSE future / domain): {wang}.",
        *metrics[1:], "",
        f"RMSE future {t['test_future']['rmse']:.4f} over {t['test_future']['num_windows']} windows, domain "
        f"{t['test_domain']['rmse']:.4f} over {t['test_domain']['num_windows']} windows, recomputed from the data "
        "on the artifact (`relaxeq zoo publish`; data in `$KERAS_RELAXEQ_CACHE/smoke_plume_scale`). Scale-step error "
        f"of the trunk {sc['relative']:.4g} (factor 2, scales 1 against 2): the SESN layers' approximation at kernel "
        f"{cfg['kernel']}, not round-off. `relaxeq zoo verify` checks translation equivariance of the SavedModel "
        f"(relative error below {TRANSLATION_RTOL:.0e}, away from the borders) and recomputes the scale-step error on "
        "the `.keras` file.", "",
        *card_closing_lines(entry, limits, usage_lines(name, version, frames, grid), SmokePlumeScaleRun.data_licence,
                            verify_note="     # sha256, signature, fresh process, translations, .keras scale error"),
    ]
    return "\n".join(lines)


def evaluate_entry(name: str = NAME, version=None, *, index=None, data_dir=None, max_test_batches=None,
                   cache_dir=None, seed: int = 0) -> dict:
    """The published artifact of ``name`` measured again from the data (as ``relaxeq zoo publish`` did):
    ``{metric name: (published value, measured value)}`` for the RMSEs, the trunk's scale-step error and the Keras
    parity. ``data_dir`` defaults to ``$KERAS_RELAXEQ_CACHE/smoke_plume_scale``."""
    return measure_entry_again(name, version, kind="is_scale_field_forecaster", measure=measure_scale_artifact,
                               metrics=_metrics, index=index, data_dir=data_dir, max_test_batches=max_test_batches,
                               cache_dir=cache_dir, seed=seed)


def main(argv=None) -> int:
    """``python -m keras_relaxeq.zoo.publish.smoke_plume_scale [NAME] [--version N] [--data-dir DIR]``: the published
    RMSEs, scale-step error and Keras parity of an entry recomputed on its artifacts from the data."""
    return measure_again_main(argv, module="keras_relaxeq.zoo.publish.smoke_plume_scale", default_name=NAME,
                              evaluate=evaluate_entry, data_set="smoke_plume_scale")


__all__ = ["GROUP", "NAME", "PUBLISHED", "SmokePlumeScaleRun", "WANG_2022_SCALE", "architecture_config",
           "evaluate_entry", "measure_scale_artifact", "rebuild_scale_forecaster", "render_card", "scale_gpu_command"]


if __name__ == "__main__":
    raise SystemExit(main())
