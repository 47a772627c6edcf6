"""Publish a recipe run (``recipes/modelnet40.py`` or ``recipes/segnn_nbody.py``) as a model-zoo
entry.

    relaxeq zoo publish RUN_DIR [--name vn_pointnet_so3_modelnet40] [--version N]
        [--model-file best_projected.keras] [--max-val-samples N] [--zoo-dir zoo/]
    relaxeq zoo publish SEGNN_RUN_DIR [--max-test-samples N]   # -> segnn_o3_nbody
    python -m keras_relaxeq.zoo.publish RUN_DIR ...           # the same

:func:`publish_run` reads the run directory (``summary.json``, the projected ``.keras`` model,
``command.txt`` if present), tells the recipe from the run's config (:func:`recipe_of`) and
publishes it with that recipe's :class:`RecipeRun`: :class:`ModelNet40Run` here, N-body runs with
``keras_relaxeq.zoo.publish_nbody.NBodyRun`` (inputs ``loc`` / ``vel`` / ``charges``, output
``loc``; test MSE, E(3) equivariance and Keras parity measured on the artifact). For a
ModelNet40 run it

1. loads the model and refuses one that still has relaxation branches;
2. exports it (``export_saved_model``: input ``points`` float32 ``[None, None, 3]``, outputs
   ``logits`` / ``probabilities`` / ``class_id``) and packs it (``pack_saved_model``, byte
   reproducible) to ``artifacts/<name>/<version>/<name>-<version>.tar.gz``, next to a copy of the
   ``.keras`` file (``...-<version>.keras``, the entry's ``keras_artifact``);
3. extracts the packed archive and measures everything on it (``tf.saved_model.load``,
   ``serving_default``): accuracy on the recipe's validation split (the split, point subsets and
   SO(3) rotations of ``recipes/modelnet40.py``), the same without rotation, the rotation
   invariance of the logits on real validation shapes, and the largest difference to the Keras
   model's logits; then runs the check of ``relaxeq zoo verify`` on it;
4. writes the model card ``cards/<name>-<version>.md`` and adds the entry to ``index.json``
   (validated with ``parse_index``; entries sorted by name and version).

Nothing is written into the zoo folder until every measurement and check has passed. An existing
``(name, version)`` is only replaced with ``replace=True`` (published versions are immutable:
publish a new version instead; the default version is the next free one).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from keras_relaxeq.zoo import registry

GROUP = "so3"
DATASET = "modelnet40"
TASK = "point_cloud_classification"
NUM_CLASSES = 40
RECIPE = "recipes/modelnet40.py"
NBODY_RECIPE = "recipes/segnn_nbody.py"
DEFAULT_LICENSE = "Apache-2.0"
DEFAULT_CITATION = (
    "Pertigkiozoglou, Chatzipantazis, Trivedi, Daniilidis: Improving Equivariant Model Training "
    "via Constraint Relaxation, NeurIPS 2024; Deng, Litany, Duan, Poulenard, Tagliasacchi, "
    "Guibas: Vector Neurons: A General Framework for SO(3)-Equivariant Networks, ICCV 2021")
LABELS_FILE = "cards/modelnet40_labels.txt"
PREPROCESSING = ("centre each cloud at its mean and scale it into the unit sphere (farthest point "
                 "at distance 1); xyz only, no normals")
ARCH_TITLES = {"vn_pointnet": "VN-PointNet", "vn_dgcnn": "VN-DGCNN",
               "vn_classifier": "VN classifier (small demo network)"}
#: ``relaxeq zoo verify`` defaults (|a - b| <= atol + rtol * max|a|)
VERIFY_ATOL, VERIFY_RTOL = 1e-4, 1e-3
#: artifact logits vs. the Keras model's: same graph, same float32 kernels
PARITY_ATOL, PARITY_RTOL = 1e-5, 1e-4
#: recipe options that are not training settings (left out of a reconstructed command)
_NOT_OPTIONS = {"resume", "fresh", "cpu_replicas"}
_BOOLEAN_OPTIONAL = {"relaxed", "relaxed_val", "rotate", "branch_bias"}  # --x / --no-x


class PublishError(ValueError):
    """The run cannot be published (relaxed model, failed check, version already published...)."""


# ---------------------------------------------------------------------------------------------
# Run directory.
# ---------------------------------------------------------------------------------------------


def read_run(run_dir) -> dict:
    """``summary.json`` of a recipe run, with its ``config``."""
    run_dir = Path(run_dir)
    path = run_dir / "summary.json"
    if not path.is_file():
        raise PublishError(f"{run_dir} has no summary.json: not a finished {RECIPE} or "
                           f"{NBODY_RECIPE} run (the summary is written at the end of training). "
                           "Pass the --output-dir of a finished run.")
    summary = json.loads(path.read_text())
    if not isinstance(summary.get("config"), dict):
        raise PublishError(f"{path} has no 'config' object: not written by {RECIPE} or "
                           f"{NBODY_RECIPE}.")
    return summary


#: config keys that every ``recipes/segnn_nbody.py`` run has
NBODY_CONFIG_KEYS = ("layers", "hidden", "lmax_hidden", "lmax_attr", "norm", "batch", "seed",
                     "test_samples")


def recipe_of(cfg: dict, path="summary.json") -> str:
    """The recipe that wrote a run's ``config``: :data:`RECIPE` or :data:`NBODY_RECIPE`."""
    if "model" in cfg and "points" in cfg:
        return RECIPE
    if all(key in cfg for key in NBODY_CONFIG_KEYS):
        return NBODY_RECIPE
    raise PublishError(
        f"{path}: cannot tell which recipe wrote this run: its config has neither 'model' and "
        f"'points' ({RECIPE}) nor {', '.join(repr(k) for k in NBODY_CONFIG_KEYS)} "
        f"({NBODY_RECIPE}). Only runs of these two recipes can be published; pass the "
        "--output-dir of one of them.")


def recipe_command_from_config(cfg: dict, recipe: str = RECIPE) -> str:
    """A ``recipe`` command line that sets every option of ``cfg`` explicitly (``--model``
    first when the config has one)."""
    parts = ["python", recipe] + (["--model", str(cfg["model"])] if "model" in cfg else [])
    for key, value in cfg.items():
        if key == "model" or key in _NOT_OPTIONS or value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            if key in _BOOLEAN_OPTIONAL:
                parts.append(flag if value else "--no-" + key.replace("_", "-"))
            elif value:
                parts.append(flag)
            continue
        parts += [flag, str(value)]
    return shlex.join(parts)


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


def _read_index(zoo_dir: Path) -> dict:
    path = zoo_dir / registry.INDEX_FILENAME
    if not path.is_file():
        return {"schema_version": registry.SCHEMA_VERSION, "base_url": None, "models": []}
    doc = json.loads(path.read_text(encoding="utf-8"))
    registry.parse_index(doc, path)  # refuse to extend a broken catalogue
    return doc


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
        os.chmod(path, 0o644)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------
# Measurements on the artifact.
# ---------------------------------------------------------------------------------------------


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


def check_parity(meas: dict, what: str) -> None:
    """Refuse an artifact whose outputs differ from the Keras model's (``keras_max_abs_diff``
    beyond float32 round-off: same graph, same kernels)."""
    tol = PARITY_ATOL + PARITY_RTOL * meas["keras_scale"]
    if meas["keras_max_abs_diff"] > tol:
        raise PublishError(f"artifact {what} differ from the Keras model's by "
                           f"{meas['keras_max_abs_diff']:.3e} (> {tol:.1e}).")


def check_symmetry_error(error: float, scale: float, what: str) -> None:
    """Refuse an artifact whose measured symmetry error is beyond the tolerance of
    ``relaxeq zoo verify`` (``VERIFY_ATOL + VERIFY_RTOL * scale``)."""
    tol = VERIFY_ATOL + VERIFY_RTOL * scale
    if error > tol:
        raise PublishError(f"artifact {what}: max error {error:.3e} > {tol:.1e} (the tolerance "
                           "of relaxeq zoo verify).")


def keras_parity_metric(meas: dict, split: str, what: str, on: str) -> dict:
    """The ``keras_max_abs_diff`` metric: artifact ``what`` vs the Keras model's ``on`` data."""
    return {"name": "keras_max_abs_diff", "value": float(f"{meas['keras_max_abs_diff']:.3e}"),
            "split": split,
            "protocol": f"max |artifact {what} - Keras model {what}| on {on} (keras_artifact "
                        "loaded with keras.saving.load_model)"}


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


# ---------------------------------------------------------------------------------------------
# Model card.
# ---------------------------------------------------------------------------------------------


def _fmt(v, digits=4):
    return "n/a" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def _fmt_sci(v):
    """Errors near float32 round-off: ``2.2e-05``, not ``0.000022``."""
    return "n/a" if v is None else (f"{v:.1e}" if isinstance(v, float) else str(v))


def card_metrics_lines(entry: dict, summary: dict) -> list[str]:
    """The card's last training line (wall time, strategy) and its metrics section (``|`` in
    protocols escaped)."""
    hours = (summary.get("wall_time_seconds") or 0) / 3600
    if summary.get("resumed"):  # the summary times only the invocation that finished the run
        wall = (f"wall time of the last invocation {hours:.2f} h ({summary.get('epochs_this_invocation')} of "
                f"{summary.get('epochs_run')} epochs; the run was resumed)")
    else:
        wall = f"wall time {hours:.2f} h"
    return [f"- {wall}, strategy {summary.get('strategy')} ({summary.get('num_replicas')} replica(s))",
            "", "## Metrics of the published artifact", "",
            "Measured by `relaxeq zoo publish` on the packed SavedModel itself:", "",
            "| metric | value | protocol |", "| --- | --- | --- |"] + [
        f"| `{m['name']}` | {m['value']} | {m['protocol'].replace('|', chr(92) + '|')} |"
        for m in entry["metrics"]]


def card_command_lines(command: str, command_source: str) -> list[str]:
    """The card's recipe command block, saying where the command comes from."""
    return ["Recipe command" + (" (from the run's command.txt)" if command_source == "command.txt"
                                else f" ({command_source})") + ":",
            "", "```sh", command, "```"]


def card_closing_lines(entry: dict, limits: list[str], python_lines: list[str],
                       data_licence: str, verify_note: str = "") -> list[str]:
    """The card's Limits, Use (CLI, then ``python_lines`` between the imports and the ``.keras``
    loading), Files and Licence sections."""
    name, version = entry["name"], entry["version"]
    art, kart = entry["artifact"], entry.get("keras_artifact") or {}
    lines = ["## Limits", "", *[f"- {x}" for x in limits], "",
             "## Use", "", "```sh", f"relaxeq zoo download {name} --version {version}",
             f"relaxeq zoo verify {name}{verify_note}", "```", "",
             "```python", "import numpy as np, tensorflow as tf", "from keras_relaxeq import zoo",
             *python_lines,
             f"keras_model = zoo.load({name!r}, version={version}, as_keras=True)  # the .keras "
             "file", "```", "",
             "## Files", "",
             f"- SavedModel: `{art['file']}` ({art['size']:,} bytes, sha256 `{art['sha256']}`)"]
    if kart:
        lines.append(f"- Keras model: `{kart['file']}` ({kart['size']:,} bytes, sha256 "
                     f"`{kart['sha256']}`)")
    return lines + ["", "## Licence and citation", "",
                    f"Licence: {entry['license']}. {data_licence}", "",
                    f"Cite: {entry['citation']}.", ""]


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


# ---------------------------------------------------------------------------------------------
# Publishing.
# ---------------------------------------------------------------------------------------------


class RecipeRun:
    """How the runs of one recipe are published; :func:`publish_run` drives these steps.

    A subclass sets :attr:`recipe` and implements :meth:`default_name`, :meth:`export`,
    :meth:`measure` (on the extracted artifact; raises :class:`PublishError` when a check fails),
    :meth:`entry_fields`, :meth:`render_card` and :meth:`report`. :attr:`only_options` names the
    :func:`publish_run` options that apply to this recipe's runs only.
    """

    recipe = ""
    default_citation = DEFAULT_CITATION
    data_licence = ""
    only_options: tuple = ()

    def __init__(self, run_dir: Path, summary: dict, *, model_file: str, seed: int,
                 num_rotations: int, options: dict):
        self.run_dir, self.summary, self.model_file = run_dir, summary, model_file
        self.cfg = dict(summary["config"])
        self.seed, self.num_rotations, self.options = seed, num_rotations, options

    def default_name(self) -> str:
        raise NotImplementedError

    def export(self, model, export_dir: Path, name: str, version: int) -> Path:
        raise NotImplementedError

    def measure(self, signature, model) -> dict:
        raise NotImplementedError

    def entry_fields(self, model, meas: dict, params: int) -> dict:
        """``task, description, architecture, input[, inputs], outputs[, labels]`` and
        ``metrics``, ``training`` (recipe-specific numbers) of the catalogue entry."""
        raise NotImplementedError

    def render_card(self, entry: dict, meas: dict, command: str, source: str, params: int) -> str:
        raise NotImplementedError

    def report(self, meas: dict) -> str:
        raise NotImplementedError

    def write_extras(self, zoo_dir: Path) -> None:
        """Files besides the artifact, card and index (e.g. a label list)."""

    def training(self, command: str, **numbers) -> dict:
        """The entry's ``training`` object: the run, the command, epochs, then ``numbers``."""
        s = self.summary
        return {"run": self.run_dir.name, "model_file": self.model_file, "command": command,
                "epochs_run": s.get("epochs_run"), "epochs": self.cfg.get("epochs"),
                "best_epoch": s.get("best_epoch"), **numbers,
                "wall_time_seconds": s.get("wall_time_seconds")}

    def command(self, given=None) -> tuple[str, str]:
        """``(command, where it comes from)``: given, else the run's ``command.txt``, else one
        reconstructed from ``summary.json``."""
        if given is not None:
            return str(given), "as given to relaxeq zoo publish"
        if (self.run_dir / "command.txt").is_file():
            return (self.run_dir / "command.txt").read_text().strip(), "command.txt"
        return (recipe_command_from_config(self.cfg, self.recipe),
                "reconstructed from summary.json: every option explicit")


class ModelNet40Run(RecipeRun):
    """A ``recipes/modelnet40.py`` run: SO(3)-invariant point-cloud classifier."""

    recipe = RECIPE
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
            _atomic_write(labels_path, "\n".join(MODELNET40_CLASSES) + "\n")


def recipe_run_class(recipe: str) -> type:
    """The :class:`RecipeRun` of ``recipe`` (:data:`RECIPE` or :data:`NBODY_RECIPE`)."""
    if recipe == NBODY_RECIPE:
        from keras_relaxeq.zoo.publish_nbody import NBodyRun

        return NBodyRun
    return ModelNet40Run


def _check_options(kind: type, run_dir: Path, options: dict) -> None:
    """Refuse options that belong to the other recipe's runs (they would be silently ignored)."""
    for other in (ModelNet40Run, recipe_run_class(NBODY_RECIPE)):
        if other is kind:
            continue
        wrong = [k for k in other.only_options if options.get(k) is not None]
        if wrong:
            flags = ", ".join("--" + k.replace("_", "-") for k in wrong)
            mine = ", ".join("--" + k.replace("_", "-") for k in kind.only_options)
            raise PublishError(f"{flags} only apply to {other.recipe} runs; {run_dir} is a "
                               f"{kind.recipe} run (its options: {mine}).")


def publish_run(run_dir, name=None, version=None, zoo_dir=None, model_file="best_projected.keras",
                data_dir=None, eval_points=None, num_rotations: int = 4, seed: int = 0,
                recipe_command=None, license: str = DEFAULT_LICENSE, citation: str | None = None,
                *, max_val_samples=None, invariance_samples: int = 16, max_test_samples=None,
                equivariance_samples: int = 16, replace: bool = False, log=None) -> dict:
    """Publish the run ``run_dir`` of ``recipes/modelnet40.py`` or ``recipes/segnn_nbody.py``
    into the zoo ``zoo_dir`` (the recipe is told from the run's config: :func:`recipe_of`).

    Args:
        name: ``<arch>_<group>_<dataset>`` (default: ``<model>_so3_modelnet40`` from the run's
            ``--model``; ``segnn_o3_nbody`` for an N-body run).
        version: default: one more than the latest published version of ``name``.
        zoo_dir: the catalogue folder (default: the repository's ``zoo/``).
        model_file: the projected model in the run directory (``best_projected.keras``: the
            model selected on the validation split; ``projected.keras``: the final epoch's).
        num_rotations: random rotations per shape / system in the invariance / equivariance
            measurement.
        seed: seed of those rotations.
        recipe_command: the training command for the card (default: ``command.txt`` of the
            run, else one reconstructed from ``summary.json``).
        citation: default: the recipe's papers.
        replace: overwrite an already published ``(name, version)`` (never do that for a
            version others may have downloaded).

    ModelNet40 runs only:
        data_dir: ModelNet40 folder (default: the run's ``--data-dir`` if it exists, else the
            package default: ``$KERAS_RELAXEQ_DATA`` or ``../shared/data``).
        eval_points: points per shape for the metrics (default: the run's ``--points``).
        max_val_samples: evaluate on the first N validation shapes only (default: all).
        invariance_samples: validation shapes of the invariance measurement.

    N-body runs only:
        max_test_samples: evaluate on the first N test trajectories of the recipe's test
            pipeline (default: all of the run's ``--test-samples``).
        equivariance_samples: test systems of the E(3) equivariance measurement.

    Returns the catalogue entry (a dict) and writes the artifact, the ``.keras`` copy, the card,
    ``index.json`` (and ``cards/modelnet40_labels.txt`` for ModelNet40).
    """
    import keras
    import tensorflow as tf

    from keras_relaxeq.cli import _check_signature, check_input_guards, check_symmetry
    from keras_relaxeq.export.projection import has_relaxation_branches
    from keras_relaxeq.export.serving import pack_saved_model, sha256_file
    from keras_relaxeq.zoo.download import ServingModel, safe_extract

    say = log or (lambda msg: None)
    t0 = time.time()
    run_dir = Path(run_dir)
    summary = read_run(run_dir)
    kind = recipe_run_class(recipe_of(summary["config"], run_dir / "summary.json"))
    options = {"data_dir": data_dir, "eval_points": eval_points,
               "max_val_samples": max_val_samples, "invariance_samples": invariance_samples,
               "max_test_samples": max_test_samples,
               "equivariance_samples": equivariance_samples}
    _check_options(kind, run_dir, options)
    run = kind(run_dir, summary, model_file=model_file, seed=seed, num_rotations=num_rotations,
               options=options)
    name = name or run.default_name()
    try:
        arch, group, dataset = registry.split_name(name)
    except ValueError as exc:
        raise PublishError(str(exc)) from None
    zoo_dir = Path(zoo_dir) if zoo_dir is not None else registry.default_zoo_dir()
    doc = _read_index(zoo_dir)
    published = [m for m in doc["models"] if m["name"] == name]
    if version is None:
        version = max((m["version"] for m in published), default=0) + 1
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise PublishError(f"version must be a positive integer, got {version!r}")
    if any(m["version"] == version for m in published) and not replace:
        raise PublishError(
            f"{name} v{version} is already in {zoo_dir / registry.INDEX_FILENAME}; published "
            "versions are immutable. Publish a new version (omit --version for the next free "
            "one), or pass --replace only if this version was never distributed.")

    model_path = run_dir / model_file
    if not model_path.is_file():
        raise PublishError(f"{model_path} does not exist (files in the run: "
                           f"{sorted(p.name for p in run_dir.iterdir())}).")
    say(f"loading {model_path}")
    model = keras.saving.load_model(model_path, compile=False)
    if has_relaxation_branches(model):
        raise PublishError(
            f"{model_path} still has relaxation branches: publish a projected model "
            "(best_projected.keras or projected.keras of the run, or "
            "keras_relaxeq.export.projection.project(model) saved as .keras).")
    params = int(model.count_params())

    rel_dir = f"artifacts/{name}/{version}"
    art_rel = f"{rel_dir}/{name}-{version}.tar.gz"
    keras_rel = f"{rel_dir}/{name}-{version}.keras"
    card_rel = f"cards/{name}-{version}.md"
    zoo_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".tmp-publish-", dir=zoo_dir))
    try:
        say("exporting the SavedModel")
        export = run.export(model, stage / "export", name, version)
        packed = pack_saved_model(export, stage / "artifact.tar.gz")
        shutil.copyfile(model_path, stage / "model.keras")
        keras_sha = sha256_file(stage / "model.keras")
        keras_size = (stage / "model.keras").stat().st_size
        # everything below is measured on the packed archive, extracted like a download
        extracted = safe_extract(packed.path, stage / "extracted")
        loaded = tf.saved_model.load(str(extracted))
        signature = loaded.signatures["serving_default"]
        say("measuring the artifact")
        meas = run.measure(signature, model)

        command, source = run.command(recipe_command)
        fields = run.entry_fields(model, meas, params)
        metrics, training = fields.pop("metrics"), fields.pop("training")
        entry = {
            "name": name, "version": version, "arch": arch, "group": group, "dataset": dataset,
            **fields,
            "artifact": {"file": art_rel, "format": "saved_model.tar.gz", "size": packed.size,
                         "sha256": packed.sha256},
            "keras_artifact": {"file": keras_rel, "format": "keras", "size": keras_size,
                               "sha256": keras_sha},
            "input_checks": list(registry.INPUT_CHECKS),
            "metrics": metrics,
            "training": run.training(command, **training),
            "license": license, "citation": citation or run.default_citation, "card": card_rel,
            "recipe": run.recipe,
        }
        others = [m for m in doc["models"] if (m["name"], m["version"]) != (name, version)]
        new_doc = dict(doc, models=sorted(others + [entry],
                                          key=lambda m: (m["name"], m["version"])))
        new_doc = json.loads(json.dumps(new_doc))  # exactly what will be on disk
        cat = registry.parse_index(new_doc, zoo_dir / registry.INDEX_FILENAME)
        parsed = cat.get(name, version)

        # the check CI runs (`relaxeq zoo verify`), on the extracted archive
        serving = ServingModel(extracted, parsed)
        problems = _check_signature(serving, parsed)
        if problems:
            raise PublishError("serving signature: " + "; ".join(problems))
        checked = check_symmetry(serving, parsed, atol=VERIFY_ATOL, rtol=VERIFY_RTOL, seed=seed)
        if checked is None:
            raise PublishError(f"relaxeq zoo verify has no symmetry check for task "
                               f"{parsed.task!r} with inputs {sorted(parsed.input_signature)}")
        if not checked[0]:
            raise PublishError(f"relaxeq zoo verify would fail: {checked[1]}")
        guarded = check_input_guards(serving, parsed, seed=seed)
        if not guarded[0]:
            raise PublishError(f"relaxeq zoo verify would fail: {guarded[1]}")
        card = run.render_card(entry, meas, command, source, params)

        # everything passed: move into place, index last
        for src, rel in ((packed.path, art_rel), (stage / "model.keras", keras_rel)):
            dest = zoo_dir / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
            os.chmod(dest, 0o644)
        _atomic_write(zoo_dir / card_rel, card)
        run.write_extras(zoo_dir)
        _atomic_write(zoo_dir / registry.INDEX_FILENAME, json.dumps(new_doc, indent=2) + "\n")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    say(f"published {name} v{version} in {time.time() - t0:.0f} s: {run.report(meas)}; "
        f"{zoo_dir / art_rel}")
    return entry


# ---------------------------------------------------------------------------------------------
# Republishing a published entry's weights with the current exporter.
# ---------------------------------------------------------------------------------------------


def _verified(zoo_dir: Path, artifact) -> Path:
    path = zoo_dir / artifact.file
    if not path.is_file():
        raise PublishError(f"{path} is missing: republish reads the published files from the zoo folder.")
    from keras_relaxeq.export.serving import sha256_file

    got = sha256_file(path)
    if got != artifact.sha256:
        raise PublishError(f"{path}: sha256 {got} is not the published {artifact.sha256}.")
    return path


def _rebuild(entry, source):
    """The entry's architecture built with the current builder (input checks included), carrying
    every weight of ``source``; refuses a rebuild whose weights differ in any path or shape."""
    import keras_relaxeq.models as models
    from keras_relaxeq.models.presets import _weights_by_path, copy_pretrained_weights

    builder = entry.architecture.get("class", "").rsplit(".", 1)[-1]
    if not hasattr(models, builder):
        raise PublishError(f"{entry.name}: no builder keras_relaxeq.models.{builder} for its architecture.")
    config = dict(entry.architecture.get("config") or {})
    if builder == "segnn" and "layout" not in config:  # the feature layout of the saved model
        config["layout"] = source.get_layer("graph_features").layout
    model = getattr(models, builder)(**config)
    copy_pretrained_weights(source, model)
    if sorted(_weights_by_path(source)) != sorted(_weights_by_path(model)):
        raise PublishError(f"{entry.name}: the rebuilt model's weights differ from the published model's.")
    return model


def _republish_card(text: str, old, new: dict, diff: float, what: str) -> str:
    """The previous version's card, retitled, with a section on this version and the new files."""
    v_old, v_new = old.version, new["version"]
    lines = text.splitlines()
    if not lines or lines[0].strip() != f"# {old.name} v{v_old}":
        raise PublishError(f"the card of {old.name} v{v_old} does not start with its title")
    note = [
        "",
        f"## Version {v_new}",
        "",
        f"The weights of v{v_old}, re-exported (no retraining). The SavedModel's serving function now checks "
        "its inputs: a mis-shaped input (another rank or another size of a fixed axis, such as xyz + normals "
        "for a point cloud or extra charge columns) or NaN / Inf values fail with `InvalidArgumentError` (TF "
        "Serving: HTTP 400) instead of being answered; the `.keras` model starts with `InputCheck` layers that "
        f"refuse the same. Its {what} equal v{v_old}'s "
        + ("exactly" if diff == 0 else f"within {diff:.1e} (float32 round-off)")
        + f" on random inputs, so the metrics below, measured on v{v_old}'s artifact, hold for this version.",
    ]
    body = "\n".join([f"# {old.name} v{v_new}"] + lines[1:3] + note + lines[3:])
    body = body.replace(f"--version {v_old}", f"--version {v_new}").replace(f"version={v_old}", f"version={v_new}")
    body = body.replace("on the packed SavedModel itself:", f"on the packed SavedModel of v{v_old} (same weights):")
    for kind in ("artifact", "keras_artifact"):
        prev, cur = getattr(old, kind), new[kind]
        body = body.replace(f"`{prev.file}` ({prev.size:,} bytes, sha256 `{prev.sha256}`)",
                            f"`{cur['file']}` ({cur['size']:,} bytes, sha256 `{cur['sha256']}`)")
    return body


def republish(name: str, from_version: int | None = None, version: int | None = None, zoo_dir=None, *,
              replace: bool = False, num_samples: int = 16, seed: int = 0, log=None) -> dict:
    """Publish the weights of ``name`` v``from_version`` (default: the latest) again as a new
    version, exported by the current code: the serving function checks its inputs
    (``export_saved_model(input_checks=True)``) and the ``.keras`` model is rebuilt with the current
    builder (``InputCheck`` at its input) carrying exactly the published weights.

    The published ``.keras`` and SavedModel files are verified against their sha256 first. The new
    artifact's outputs are compared with the previous artifact's on ``num_samples`` random inputs
    (metric ``max_abs_diff_to_v<N>``, refused beyond float32 round-off) and the checks of
    ``relaxeq zoo verify`` (signature, symmetry, input checks) are run on it. The entry copies the
    previous one's metadata and metrics (same weights), with ``republished_from``; its card is the
    previous card with a section on the new version. The previous version stays in the catalogue.
    """
    import keras

    from keras_relaxeq.cli import _check_signature, check_input_guards, check_symmetry
    from keras_relaxeq.export.serving import export_saved_model, pack_saved_model, sha256_file
    from keras_relaxeq.zoo.download import ServingModel, safe_extract
    from keras_relaxeq.zoo.publish_nbody import export_nbody_saved_model

    say = log or (lambda msg: None)
    zoo_dir = Path(zoo_dir) if zoo_dir is not None else registry.default_zoo_dir()
    index_file = zoo_dir / registry.INDEX_FILENAME
    doc = _read_index(zoo_dir)
    cat = registry.parse_index(doc, index_file)
    old = cat.get(name, from_version)
    if old.keras_artifact is None:
        raise PublishError(f"{name} v{old.version} has no .keras file to republish from.")
    version = version if version is not None else max(cat.versions(name)) + 1
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise PublishError(f"version must be a positive integer, got {version!r}")
    if version in cat.versions(name) and not replace:
        raise PublishError(f"{name} v{version} is already in {index_file}; published versions are immutable.")
    if version == old.version:
        raise PublishError(f"cannot republish {name} v{version} over itself.")

    source = keras.saving.load_model(_verified(zoo_dir, old.keras_artifact), compile=False)
    model = _rebuild(old, source)
    rel_dir = f"artifacts/{name}/{version}"
    art_rel, keras_rel = f"{rel_dir}/{name}-{version}.tar.gz", f"{rel_dir}/{name}-{version}.keras"
    card_rel = f"cards/{name}-{version}.md"
    stage = Path(tempfile.mkdtemp(prefix=".tmp-republish-", dir=zoo_dir))
    try:
        say(f"exporting {name} v{version} from v{old.version}'s weights")
        if old.is_nbody_model:
            export = export_nbody_saved_model(model, stage / "export", name, version)
            what, output = "positions", "loc"
        else:
            export = export_saved_model(model, stage / "export", name, version, input_shape=(None, None, 3),
                                        write_config=False)
            what, output = "logits", "logits"
        packed = pack_saved_model(export, stage / "artifact.tar.gz")
        model.save(stage / "model.keras")
        extracted = safe_extract(packed.path, stage / "extracted")
        previous = ServingModel(safe_extract(_verified(zoo_dir, old.artifact), stage / "previous"), old)

        entry = json.loads(json.dumps(old.raw))
        entry.update(version=version, card=card_rel, republished_from=old.version,
                     input_checks=list(registry.INPUT_CHECKS),
                     artifact={"file": art_rel, "format": "saved_model.tar.gz", "size": packed.size,
                               "sha256": packed.sha256},
                     keras_artifact={"file": keras_rel, "format": "keras",
                                     "size": (stage / "model.keras").stat().st_size,
                                     "sha256": sha256_file(stage / "model.keras")})
        entry["description"] = (old.description.rstrip() + f" v{version}: v{old.version}'s weights re-exported "
                                "with serving input checks.").strip()
        # the new artifact answers as the previous one and as the rebuilt Keras model
        from keras_relaxeq.cli import _guard_probe_inputs

        feed = _guard_probe_inputs(previous, old, seed=seed, batch=num_samples)
        if old.preprocessing.get("scale"):  # clouds as the model expects them (centred, unit sphere)
            feed[old.input_name] = old.preprocess(feed[old.input_name], num_points=feed[old.input_name].shape[1])
        new_serving = ServingModel(extracted, None)
        got = np.asarray(new_serving(feed)[output], np.float64)
        want = np.asarray(previous(feed)[output], np.float64)
        keras_out = np.asarray(model.predict(feed if len(feed) > 1 else feed[old.input_name], verbose=0),
                               np.float64)
        diff = float(np.abs(got - want).max())
        scale = float(np.abs(want).max())
        tol = PARITY_ATOL + PARITY_RTOL * scale
        if not diff <= tol or not float(np.abs(keras_out - got).max()) <= tol:
            raise PublishError(f"the republished {what} differ from v{old.version}'s by {diff:.3e} (> {tol:.1e})")
        inputs = ", ".join(f"{k} {list(v.shape)}" for k, v in feed.items())
        if old.preprocessing.get("scale"):
            inputs += ", clouds centred and scaled into the unit sphere"
        entry["metrics"] = list(entry["metrics"]) + [{
            "name": f"max_abs_diff_to_v{old.version}", "value": float(f"{diff:.3e}"), "split": "synthetic",
            "protocol": f"max |{what} of this artifact - {what} of v{old.version}'s artifact| on {num_samples} "
                        f"standard-normal inputs ({inputs}; seed {seed}); the same weights re-exported, so the "
                        f"other metrics, measured on v{old.version}'s artifact, hold for this version"}]
        others = [m for m in doc["models"] if (m["name"], m["version"]) != (name, version)]
        new_doc = json.loads(json.dumps(dict(doc, models=sorted(others + [entry],
                                                                 key=lambda m: (m["name"], m["version"])))))
        parsed = registry.parse_index(new_doc, index_file).get(name, version)

        serving = ServingModel(extracted, parsed)
        problems = _check_signature(serving, parsed)
        if problems:
            raise PublishError("serving signature: " + "; ".join(problems))
        for checked in (check_symmetry(serving, parsed, atol=VERIFY_ATOL, rtol=VERIFY_RTOL, seed=seed),
                        check_input_guards(serving, parsed, seed=seed)):
            if checked is not None and not checked[0]:
                raise PublishError(f"relaxeq zoo verify would fail: {checked[1]}")
        card = _republish_card(registry.model_card(name, old.version, index=index_file), old, entry, diff, what)

        for src, rel in ((packed.path, art_rel), (stage / "model.keras", keras_rel)):
            dest = zoo_dir / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
            os.chmod(dest, 0o644)
        _atomic_write(zoo_dir / card_rel, card)
        _atomic_write(index_file, json.dumps(new_doc, indent=2) + "\n")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    say(f"republished {name} v{old.version} as v{version}: {what} differ by {diff:.2e}; {zoo_dir / art_rel}")
    return entry


# ---------------------------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="output directory of recipes/modelnet40.py or "
                                   "recipes/segnn_nbody.py (summary.json, *.keras)")
    p.add_argument("--name", default=None,
                   help="zoo name (default <model>_so3_modelnet40, e.g. "
                        "vn_pointnet_so3_modelnet40; segnn_o3_nbody for N-body runs)")
    p.add_argument("--version", type=int, default=None,
                   help="version to publish (default: the next free one)")
    p.add_argument("--model-file", default="best_projected.keras",
                   help="projected model in the run directory (projected.keras: final epoch)")
    p.add_argument("--max-val-samples", type=int, default=None,
                   help="ModelNet40 runs: evaluate on the first N validation shapes (default: "
                        "all)")
    p.add_argument("--max-test-samples", type=int, default=None,
                   help="N-body runs: evaluate on the first N test trajectories of the recipe's "
                        "test pipeline (default: all of the run's --test-samples)")
    p.add_argument("--zoo-dir", default=None,
                   help="catalogue folder to write (default: the folder of --index / "
                        "$KERAS_RELAXEQ_ZOO_INDEX, else the repository's zoo/)")
    p.add_argument("--data-dir", default=None,
                   help="ModelNet40 runs: the data folder (default: the run's, else "
                        "$KERAS_RELAXEQ_DATA or ../shared/data)")
    p.add_argument("--eval-points", type=int, default=None,
                   help="ModelNet40 runs: points per shape for the metrics (default: the run's "
                        "--points)")
    p.add_argument("--num-rotations", type=int, default=4,
                   help="random rotations per shape (system) for the invariance (equivariance) "
                        "measurement")
    p.add_argument("--seed", type=int, default=0, help="seed of those rotations")
    p.add_argument("--recipe-command", default=None,
                   help="training command for the card (default: the run's command.txt)")
    p.add_argument("--license", default=DEFAULT_LICENSE)
    p.add_argument("--citation", default=None, help="default: the recipe's papers")
    p.add_argument("--replace", action="store_true",
                   help="overwrite an existing (name, version): only for never-distributed ones")


def run_from_args(args, out=None) -> int:
    out = out or sys.stdout
    zoo_dir = args.zoo_dir
    if zoo_dir is None:
        zoo_dir = registry.index_path(getattr(args, "index", None)).parent
    try:
        entry = publish_run(
            args.run_dir, name=args.name, version=args.version, zoo_dir=zoo_dir,
            model_file=args.model_file, data_dir=args.data_dir, eval_points=args.eval_points,
            num_rotations=args.num_rotations, seed=args.seed,
            recipe_command=args.recipe_command, license=args.license, citation=args.citation,
            max_val_samples=args.max_val_samples, max_test_samples=args.max_test_samples,
            replace=args.replace,
            log=lambda msg: print(msg, file=out, flush=True))
    except PublishError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"name": entry["name"], "version": entry["version"],
                      "artifact": entry["artifact"], "metrics": {
                          m["name"]: m["value"] for m in entry["metrics"]}}, indent=2), file=out)
    return 0


def republish_main(argv) -> int:
    p = argparse.ArgumentParser(prog="python -m keras_relaxeq.zoo.publish republish",
                                description="Publish a zoo entry's weights again as a new version, "
                                            "exported with serving input checks.")
    p.add_argument("name")
    p.add_argument("--from-version", type=int, default=None, help="default: the latest")
    p.add_argument("--version", type=int, default=None, help="default: the next free one")
    p.add_argument("--zoo-dir", default=None, help="default: the repository's zoo/")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        entry = republish(args.name, args.from_version, args.version, args.zoo_dir, seed=args.seed,
                          log=lambda msg: print(msg, flush=True))
    except PublishError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"name": entry["name"], "version": entry["version"], "artifact": entry["artifact"]},
                     indent=2))
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["republish"]:
        return republish_main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m keras_relaxeq.zoo.publish",
                                description="Publish a recipes/modelnet40.py or "
                                            "recipes/segnn_nbody.py run as a zoo entry.")
    add_arguments(p)
    p.add_argument("--index", default=None, help=argparse.SUPPRESS)
    return run_from_args(p.parse_args(argv))


__all__ = ["ModelNet40Run", "PublishError", "RecipeRun", "measure_artifact", "publish_run",
           "read_run", "recipe_command_from_config", "recipe_of", "render_card", "republish"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
