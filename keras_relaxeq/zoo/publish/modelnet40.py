"""Publishing a ``recipes/modelnet40.py`` run: an SO(3)-invariant point-cloud classifier
(``<model>_so3_modelnet40``).

:class:`ModelNet40Run` exports the serving signature (input ``points`` float32 ``[None, None, 3]``,
outputs ``logits`` / ``probabilities`` / ``class_id``), measures the extracted artifact
(:func:`measure_artifact`: accuracy on the recipe's validation split with and without SO(3)
rotations, rotation invariance on real validation shapes, parity with the Keras model), and writes
the entry fields, the model card and the class list ``cards/modelnet40_labels.txt``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from keras_relaxeq.zoo.publish.base import (
    RecipeRun,
    _fmt,
    _fmt_sci,
    card_closing_lines,
    card_command_lines,
    card_metrics_lines,
    check_parity,
    check_symmetry_error,
    keras_parity_metric,
    write_text,
)

RECIPE = "recipes/modelnet40.py"
GROUP = "so3"
DATASET = "modelnet40"
TASK = "point_cloud_classification"
NUM_CLASSES = 40
DEFAULT_CITATION = (
    "Pertigkiozoglou, Chatzipantazis, Trivedi, Daniilidis: Improving Equivariant Model Training "
    "via Constraint Relaxation, NeurIPS 2024; Deng, Litany, Duan, Poulenard, Tagliasacchi, "
    "Guibas: Vector Neurons: A General Framework for SO(3)-Equivariant Networks, ICCV 2021")
LABELS_FILE = "cards/modelnet40_labels.txt"
PREPROCESSING = ("centre each cloud at its mean and scale it into the unit sphere (farthest point "
                 "at distance 1); xyz only, no normals")
ARCH_TITLES = {"vn_pointnet": "VN-PointNet", "vn_dgcnn": "VN-DGCNN",
               "vn_classifier": "VN classifier (small demo network)"}


def architecture_config(cfg: dict) -> dict:
    """Arguments of the ``keras_relaxeq.models`` builder that rebuild the projected model
    (mirrors ``build_model`` of ``recipes/modelnet40.py``, with ``relaxed=False``)."""
    name, width = cfg["model"], float(cfg.get("width") or 1.0)
    out = {"num_classes": NUM_CLASSES, "num_points": int(cfg["points"]), "k": int(cfg["k"]),
           "relaxed": False}
    if name == "vn_classifier":
        out["channels"] = [max(2, int(round(c * width))) for c in (16, 32, 64)]
        out["hidden_units"] = max(8, int(round(64 * width)))
    else:
        out["width"] = width
    return out


def _default_name(cfg: dict) -> str:
    return f"{cfg['model']}_{GROUP}_{DATASET}"


def _val_dataset(cfg: dict, rotation: str, data_dir, batch_size: int = 32):
    from keras_relaxeq.datasets.modelnet40 import recipe_validation_dataset

    return recipe_validation_dataset(cfg, rotation=rotation, batch_size=batch_size, data_dir=data_dir)


def _take(ds, n):
    xs, ys, count = [], [], 0
    for x, y in ds:
        xs.append(np.asarray(x))
        ys.append(np.asarray(y))
        count += len(xs[-1])
        if n is not None and count >= n:
            break
    x, y = np.concatenate(xs), np.concatenate(ys)
    return (x, y) if n is None else (x[:n], y[:n])


def _logits(signature, x, batch_size=32):
    import tensorflow as tf

    out = [signature(points=tf.constant(x[i:i + batch_size]))["logits"].numpy()
           for i in range(0, len(x), batch_size)]
    return np.concatenate(out).astype(np.float64)


def measure_artifact(signature, keras_model, cfg: dict, *, data_dir=None, max_val_samples=None,
                     num_rotations: int = 4, invariance_samples: int = 16, parity_samples: int = 32,
                     seed: int = 0) -> dict:
    """Accuracy (SO(3) / unrotated), invariance and Keras parity of a ``serving_default``."""
    import tensorflow as tf

    from keras_relaxeq.groups import random_rotations

    n_val = None if not max_val_samples else int(max_val_samples)
    x_rot, y = _take(_val_dataset(cfg, "so3", data_dir), n_val)
    x_id, y_id = _take(_val_dataset(cfg, "none", data_dir), n_val)
    if not np.array_equal(y, y_id):
        raise RuntimeError("rotated and unrotated validation sets differ in their labels")
    logits_rot = _logits(signature, x_rot)
    logits_id = _logits(signature, x_id)
    acc_rot = float(np.mean(logits_rot.argmax(-1) == y))
    acc_id = float(np.mean(logits_id.argmax(-1) == y))

    # rotation invariance on real validation shapes: every shape under num_rotations rotations
    m = min(int(invariance_samples), len(x_id))
    base = x_id[:m].astype(np.float64)
    ref = logits_id[:m]
    rots = random_rotations(m * num_rotations, seed=seed, dtype=tf.float64).numpy()
    rots = rots.reshape(num_rotations, m, 3, 3)
    errs = []
    for r in range(num_rotations):
        xr = np.einsum("bij,bnj->bni", rots[r], base).astype(np.float32)
        errs.append(np.abs(_logits(signature, xr) - ref))
    errs = np.stack(errs)
    scale = float(np.abs(ref).max())
    inv_max, inv_mean = float(errs.max()), float(errs.mean())

    # the artifact computes what the Keras model computes
    p = min(int(parity_samples), len(x_rot))
    keras_logits = np.asarray(keras_model.predict(x_rot[:p], batch_size=32, verbose=0),
                              dtype=np.float64)
    parity = float(np.abs(keras_logits - logits_rot[:p]).max())
    return {
        "num_val": int(len(y)), "accuracy_so3": acc_rot, "accuracy_unrotated": acc_id,
        "invariance_max_abs": inv_max, "invariance_mean_abs": inv_mean,
        "invariance_relative": inv_max / max(scale, 1e-12), "logit_scale": scale,
        "invariance_shapes": m, "num_rotations": int(num_rotations),
        "keras_max_abs_diff": parity, "keras_scale": float(np.abs(keras_logits).max()),
        "parity_shapes": p,
    }


def _metrics(meas: dict, cfg: dict, val_size: int, seed: int) -> list[dict]:
    n, pts = meas["num_val"], int(cfg["points"])
    split = (f"validation split of the ModelNet40 training files (stratified, val_fraction "
             f"{cfg.get('val_fraction', 0.2)}, split_seed {cfg.get('split_seed', 0)}; "
             f"{n} of its {val_size} shapes"
             + (", the first ones in split order" if n < val_size else "") + "), "
             f"{pts} points per shape drawn as in recipes/modelnet40.py (element seed "
             f"{int(cfg.get('seed', 0)) + 1}), clouds centred and scaled into the unit sphere")
    art = "measured on the published SavedModel (extracted archive, serving_default)"
    return [
        {"name": "accuracy", "value": round(meas["accuracy_so3"], 6), "split": "val",
         "protocol": f"top-1 accuracy, {split}, one Haar-random SO(3) rotation per shape "
                     f"(the recipe's projected validation protocol); {art}; not the test set"},
        {"name": "accuracy_unrotated", "value": round(meas["accuracy_unrotated"], 6),
         "split": "val",
         "protocol": f"top-1 accuracy, {split}, no rotation (canonical ModelNet40 poses); {art}"},
        {"name": "invariance_max_abs_error", "value": float(f"{meas['invariance_max_abs']:.3e}"),
         "split": "val",
         "protocol": f"max |logits(R x) - logits(x)| over the first {meas['invariance_shapes']} "
                     f"unrotated validation shapes x and {meas['num_rotations']} Haar-random "
                     f"rotations R each (seed {seed}, rotated in float64, fed as float32); {art}"},
        {"name": "invariance_relative_error", "value": float(f"{meas['invariance_relative']:.3e}"),
         "split": "val",
         "protocol": "invariance_max_abs_error / max |logits(x)| over the same shapes "
                     f"(logit scale {meas['logit_scale']:.4g}); {art}"},
        keras_parity_metric(meas, "val", "logits", f"the first {meas['parity_shapes']} rotated "
                                                   "validation shapes"),
    ]


def render_card(entry: dict, summary: dict, meas: dict, command: str, command_source: str,
                model_file: str, params: int) -> str:
    cfg = summary["config"]
    name, version = entry["name"], entry["version"]
    title = ARCH_TITLES.get(cfg["model"], cfg["model"])
    arch_cfg = entry["architecture"]["config"]
    inv = summary.get("invariance") or {}
    width = float(cfg.get("width") or 1.0)
    relaxed = cfg.get("relaxed", True)
    epochs_run, epochs_cfg = summary.get("epochs_run"), cfg.get("epochs")
    limits = []
    if width < 1.0:
        limits.append(f"Reduced width ({width} x the published channel counts, {params:,} "
                      "parameters): trained on a CPU budget, so accuracy is well below the "
                      "paper's full-width models.")
    published_epochs = {"vn_pointnet": 200, "vn_dgcnn": 250}.get(cfg["model"])
    if epochs_cfg and epochs_run is not None and int(epochs_run) < int(epochs_cfg):
        limits.append(f"Training stopped after {epochs_run} of {epochs_cfg} epochs.")
    elif published_epochs and epochs_run is not None and int(epochs_run) < published_epochs:
        unit = "epoch" if int(epochs_run) == 1 else "epochs"
        limits.append(f"Trained for {epochs_run} {unit}, not the {published_epochs} of the published recipe.")
    subset = {k: cfg.get(k) for k in ("max_train_samples", "train_fraction") if cfg.get(k)}
    if subset:
        limits.append("Each epoch used a subset of the training split ("
                      + ", ".join(f"{k} {v}" for k, v in subset.items()) + ").")
    selection = (" The same split selected the published epoch (best projected validation "
                 "accuracy), which biases it upwards." if model_file.startswith("best") else "")
    limits.append("All numbers are on the validation split carved from the ModelNet40 training "
                  "files, not on the official test set." + selection)
    limits.append(f"Trained on {cfg['points']} points per cloud; other point counts are accepted "
                  "(at least k) but were not evaluated. Clouds must be centred and scaled into "
                  "the unit sphere (see preprocessing).")
    lines = [
        f"# {name} v{version}",
        "",
        f"{title} for ModelNet40 point-cloud classification (40 classes), exactly invariant to "
        "3D rotations (SO(3)): a vector-neuron network"
        + (" trained with constraint relaxation (the equivariance constraint is relaxed during "
           f"training with a `{cfg.get('schedule')}` theta schedule and Lie-derivative / "
           "projection penalties) and then projected onto the equivariant subspace"
           if relaxed else " trained as a plain (unrelaxed) equivariant model")
        + ". The published model is the projected one: it has no relaxation branches.",
        "",
        "## Architecture",
        "",
        f"- builder: `{entry['architecture']['class']}` with "
        f"`{json.dumps(arch_cfg, sort_keys=True)}`",
        f"- width multiplier {width}, k = {cfg['k']} neighbours, {params:,} parameters "
        f"(projected model)",
        f"- input `points`: float32 `[batch, points, 3]` (any batch size and number of points); "
        f"trained on {cfg['points']} points per cloud",
        "- outputs: `logits` float32 `[batch, 40]`, `probabilities` (softmax), `class_id` "
        "(argmax, int64); class order in `modelnet40_labels.txt`",
        f"- preprocessing: {PREPROCESSING}",
        "",
        "## Training",
        "",
        *card_command_lines(command, command_source),
        "",
        f"- epochs run: {epochs_run} (configured {epochs_cfg}); batch {cfg.get('batch')}, "
        f"optimizer {cfg.get('optimizer')} lr {cfg.get('lr')} ({cfg.get('lr_schedule')}), "
        f"seed {cfg.get('seed')}, training rotations `{cfg.get('rotation')}`",
        f"- relaxation: {'on' if relaxed else 'off'}"
        + (f", schedule `{cfg.get('schedule')}`, lambda_lie {cfg.get('lambda_lie')}, "
           f"lambda_proj {cfg.get('lambda_proj')}" if relaxed else ""),
        f"- published model file: `{model_file}` of the run"
        + (f" (best epoch {summary.get('best_epoch')})" if model_file.startswith("best") else ""),
        "- training-time projected val accuracy (recipe, SO(3)-rotated validation split"
        + (f", first {cfg['max_val_samples']} shapes" if cfg.get("max_val_samples") else "")
        + f"): best {_fmt(summary.get('best_projected_val_accuracy'))}, final "
        f"{_fmt(summary.get('final_projected_val_accuracy'))}",
        f"- training-time invariance check of the final projected model: max error "
        f"{_fmt_sci(inv.get('max_error'))}, relative {_fmt_sci(inv.get('relative_max_error'))}",
        *card_metrics_lines(entry, summary),
        "",
        f"Rotation invariance: max |logits(Rx) - logits(x)| = {meas['invariance_max_abs']:.2e} "
        f"(relative {meas['invariance_relative']:.2e}) over {meas['invariance_shapes']} "
        f"validation shapes x {meas['num_rotations']} random rotations; "
        "float32 round-off only.",
        "",
        *card_closing_lines(entry, limits, [
            f"path = zoo.download({name!r}, version={version})   # verified, extracted SavedModel",
            "model = tf.saved_model.load(str(path))             # needs only TensorFlow",
            "serve = model.signatures['serving_default']",
            f"points = np.zeros([1, {cfg['points']}, 3], np.float32)   # centred, in the unit "
            "sphere",
            "out = serve(points=tf.constant(points))            # logits, probabilities, class_id",
        ], "ModelNet40 is distributed by Princeton for research use."),
    ]
    return "\n".join(lines)


class ModelNet40Run(RecipeRun):
    """A ``recipes/modelnet40.py`` run: SO(3)-invariant point-cloud classifier."""

    recipe = RECIPE
    default_citation = DEFAULT_CITATION
    data_licence = "ModelNet40 is distributed by Princeton for research use."
    only_options = ("data_dir", "eval_points", "max_val_samples")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        cfg, opts = self.cfg, self.options
        self.eval_cfg = dict(cfg, points=int(opts["eval_points"])) if opts.get("eval_points") \
            else cfg
        self.data_dir = opts.get("data_dir")
        if self.data_dir is None and cfg.get("data_dir") and \
                Path(cfg["data_dir"]).expanduser().exists():
            self.data_dir = cfg["data_dir"]

    def default_name(self) -> str:
        return _default_name(self.cfg)

    def export(self, model, export_dir, name, version):
        from keras_relaxeq.export.serving import export_saved_model

        return export_saved_model(model, export_dir, name, version, input_shape=(None, None, 3),
                                  write_config=False)

    def measure(self, signature, model):
        meas = measure_artifact(signature, model, self.eval_cfg, data_dir=self.data_dir,
                                max_val_samples=self.options.get("max_val_samples"),
                                num_rotations=self.num_rotations,
                                invariance_samples=self.options["invariance_samples"],
                                seed=self.seed)
        check_parity(meas, "logits")
        check_symmetry_error(meas["invariance_max_abs"], meas["logit_scale"],
                             "logits are not rotation invariant")
        return meas

    def entry_fields(self, model, meas, params):
        from keras_relaxeq.datasets.modelnet40 import load_modelnet40, stratified_split

        cfg = self.cfg
        labels = load_modelnet40("train", self.data_dir)
        val_size = int(stratified_split(labels.labels, float(cfg.get("val_fraction", 0.2)),
                                        seed=int(cfg.get("split_seed", 0)))[1].size)
        title = ARCH_TITLES.get(cfg["model"], cfg["model"])
        return {
            "task": TASK,
            "description": (f"{title} (width {cfg.get('width')}) on ModelNet40, "
                            + ("trained with constraint relaxation and projected"
                               if cfg.get("relaxed", True) else "trained without relaxation")
                            + f"; SO(3)-invariant; {self.summary.get('epochs_run')} epochs."),
            "architecture": {"class": f"keras_relaxeq.models.{cfg['model']}",
                             "config": architecture_config(cfg),
                             "keras_class": f"{type(model).__module__}.{type(model).__name__}",
                             "params": params},
            "input": {"name": "points", "dtype": "float32", "shape": [None, None, 3],
                      "layout": "[batch, points, xyz]", "num_points": int(cfg["points"]),
                      "preprocessing": PREPROCESSING},
            "outputs": {"logits": {"dtype": "float32", "shape": [None, NUM_CLASSES]},
                        "probabilities": {"dtype": "float32", "shape": [None, NUM_CLASSES]},
                        "class_id": {"dtype": "int64", "shape": [None]}},
            "labels": LABELS_FILE,
            "metrics": _metrics(meas, self.eval_cfg, val_size, self.seed),
            "training": {
                "best_projected_val_accuracy": self.summary.get("best_projected_val_accuracy"),
                "final_projected_val_accuracy": self.summary.get("final_projected_val_accuracy"),
                "val_accuracy_protocol": "recipe's projected validation (SO(3)-rotated "
                                         "validation split"
                                         + (f", first {cfg['max_val_samples']} shapes)"
                                            if cfg.get("max_val_samples") else ")"),
            },
        }

    def render_card(self, entry, meas, command, source, params):
        return render_card(entry, self.summary, meas, command, source, self.model_file, params)

    def report(self, meas):
        return (f"accuracy {meas['accuracy_so3']:.4f} (SO(3)), {meas['accuracy_unrotated']:.4f} "
                f"(unrotated) on {meas['num_val']} validation shapes; invariance "
                f"{meas['invariance_max_abs']:.2e}")

    def write_extras(self, zoo_dir):
        from keras_relaxeq.datasets.modelnet40 import MODELNET40_CLASSES

        labels_path = zoo_dir / LABELS_FILE
        if not labels_path.is_file():
            write_text(labels_path, "\n".join(MODELNET40_CLASSES) + "\n")


__all__ = ["ModelNet40Run", "RECIPE", "architecture_config", "measure_artifact", "render_card"]
