"""Publish a ModelNet40 recipe run (``recipes/modelnet40.py``) as a model-zoo entry.

    relaxeq zoo publish RUN_DIR [--name vn_pointnet_so3_modelnet40] [--version N]
        [--model-file best_projected.keras] [--max-val-samples N] [--zoo-dir zoo/]
    python -m keras_relaxeq.zoo.publish RUN_DIR ...           # the same

:func:`publish_run` reads the run directory (``summary.json``, the projected ``.keras`` model,
``command.txt`` if present), then

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
_BOOLEAN_OPTIONAL = {"relaxed", "relaxed_val"}  # --x / --no-x


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
        raise PublishError(f"{run_dir} has no summary.json: not a finished recipes/modelnet40.py "
                           "run (the summary is written at the end of training).")
    summary = json.loads(path.read_text())
    cfg = summary.get("config")
    if not isinstance(cfg, dict) or "model" not in cfg or "points" not in cfg:
        raise PublishError(f"{path} has no config with 'model' and 'points'.")
    return summary


def recipe_command_from_config(cfg: dict) -> str:
    """A ``recipes/modelnet40.py`` command line that sets every option of ``cfg`` explicitly."""
    parts = ["python", RECIPE, "--model", str(cfg["model"])]
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
        {"name": "keras_max_abs_diff", "value": float(f"{meas['keras_max_abs_diff']:.3e}"),
         "split": "val",
         "protocol": f"max |artifact logits - Keras model logits| on the first "
                     f"{meas['parity_shapes']} rotated validation shapes (keras_artifact loaded "
                     "with keras.saving.load_model)"},
    ]


# ---------------------------------------------------------------------------------------------
# Model card.
# ---------------------------------------------------------------------------------------------


def _fmt(v, digits=4):
    return "n/a" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


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
        limits.append(f"Trained for {epochs_run} epochs, not the {published_epochs} of the "
                      "published recipe.")
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
    metrics_rows = "\n".join(
        f"| `{m['name']}` | {m['value']} | {m['protocol'].replace('|', chr(92) + '|')} |"
        for m in entry["metrics"])
    art, kart = entry["artifact"], entry.get("keras_artifact") or {}
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
        "Recipe command" + (" (from the run's command.txt)" if command_source == "command.txt"
                            else f" ({command_source})") + ":",
        "",
        "```sh",
        command,
        "```",
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
        f"{_fmt(inv.get('max_error'), 6)}, relative {_fmt(inv.get('relative_max_error'), 6)}",
        f"- wall time {(summary.get('wall_time_seconds') or 0) / 3600:.2f} h, strategy "
        f"{summary.get('strategy')} ({summary.get('num_replicas')} replica(s))",
        "",
        "## Metrics of the published artifact",
        "",
        "Measured by `relaxeq zoo publish` on the packed SavedModel itself:",
        "",
        "| metric | value | protocol |",
        "| --- | --- | --- |",
        metrics_rows,
        "",
        f"Rotation invariance: max |logits(Rx) - logits(x)| = {meas['invariance_max_abs']:.2e} "
        f"(relative {meas['invariance_relative']:.2e}) over {meas['invariance_shapes']} "
        f"validation shapes x {meas['num_rotations']} random rotations; "
        "float32 round-off only.",
        "",
        "## Limits",
        "",
        *[f"- {x}" for x in limits],
        "",
        "## Use",
        "",
        "```sh",
        f"relaxeq zoo download {name} --version {version}",
        f"relaxeq zoo verify {name}",
        "```",
        "",
        "```python",
        "import numpy as np, tensorflow as tf",
        "from keras_relaxeq import zoo",
        f"path = zoo.download({name!r}, version={version})   # verified, extracted SavedModel",
        "model = tf.saved_model.load(str(path))             # needs only TensorFlow",
        "serve = model.signatures['serving_default']",
        f"points = np.zeros([1, {cfg['points']}, 3], np.float32)   # centred, in the unit sphere",
        "out = serve(points=tf.constant(points))            # logits, probabilities, class_id",
        f"keras_model = zoo.load({name!r}, version={version}, as_keras=True)  # the .keras file",
        "```",
        "",
        "## Files",
        "",
        f"- SavedModel: `{art['file']}` ({art['size']:,} bytes, sha256 `{art['sha256']}`)",
    ]
    if kart:
        lines.append(f"- Keras model: `{kart['file']}` ({kart['size']:,} bytes, sha256 "
                     f"`{kart['sha256']}`)")
    lines += [
        "",
        "## Licence and citation",
        "",
        f"Licence: {entry['license']}. ModelNet40 is distributed by Princeton for research use.",
        "",
        f"Cite: {entry['citation']}.",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Publishing.
# ---------------------------------------------------------------------------------------------


def publish_run(run_dir, name=None, version=None, zoo_dir=None, model_file="best_projected.keras",
                data_dir=None, eval_points=None, num_rotations: int = 4, seed: int = 0,
                recipe_command=None, license: str = DEFAULT_LICENSE,
                citation: str = DEFAULT_CITATION, *, max_val_samples=None,
                invariance_samples: int = 16, replace: bool = False, log=None) -> dict:
    """Publish the run ``run_dir`` of ``recipes/modelnet40.py`` into the zoo ``zoo_dir``.

    Args:
        name: ``<arch>_so3_modelnet40`` (default from the run's ``--model``).
        version: default: one more than the latest published version of ``name``.
        zoo_dir: the catalogue folder (default: the repository's ``zoo/``).
        model_file: the projected model in the run directory (``best_projected.keras``: the
            model selected on the validation split; ``projected.keras``: the final epoch's).
        data_dir: ModelNet40 folder (default: the run's ``--data-dir`` if it exists, else the
            package default: ``$KERAS_RELAXEQ_DATA`` or ``../shared/data``).
        eval_points: points per shape for the metrics (default: the run's ``--points``).
        num_rotations: random rotations per shape in the invariance measurement.
        seed: seed of those rotations.
        recipe_command: the training command for the card (default: ``command.txt`` of the
            run, else one reconstructed from ``summary.json``).
        max_val_samples: evaluate on the first N validation shapes only (default: all).
        replace: overwrite an already published ``(name, version)`` (never do that for a
            version others may have downloaded).

    Returns the catalogue entry (a dict) and writes the artifact, the ``.keras`` copy, the card,
    ``cards/modelnet40_labels.txt`` and ``index.json``.
    """
    import keras

    import keras_relaxeq  # noqa: F401  (registers the custom layers)
    import keras_relaxeq.models  # noqa: F401  (VNConcatGlobal etc.)
    from keras_relaxeq.datasets.modelnet40 import (
        MODELNET40_CLASSES,
        load_modelnet40,
        stratified_split,
    )
    from keras_relaxeq.export.projection import has_relaxation_branches
    from keras_relaxeq.export.serving import export_saved_model, pack_saved_model, sha256_file
    from keras_relaxeq.zoo.download import ServingModel, safe_extract

    say = log or (lambda msg: None)
    t0 = time.time()
    run_dir = Path(run_dir)
    summary = read_run(run_dir)
    cfg = dict(summary["config"])
    eval_cfg = dict(cfg, points=int(eval_points)) if eval_points else cfg
    if data_dir is None and cfg.get("data_dir") and Path(cfg["data_dir"]).expanduser().exists():
        data_dir = cfg["data_dir"]
    name = name or _default_name(cfg)
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
        export = export_saved_model(model, stage / "export", name, version,
                                    input_shape=(None, None, 3), write_config=False)
        packed = pack_saved_model(export, stage / "artifact.tar.gz")
        shutil.copyfile(model_path, stage / "model.keras")
        keras_sha = sha256_file(stage / "model.keras")
        keras_size = (stage / "model.keras").stat().st_size
        # everything below is measured on the packed archive, extracted like a download
        extracted = safe_extract(packed.path, stage / "extracted")
        import tensorflow as tf

        loaded = tf.saved_model.load(str(extracted))
        signature = loaded.signatures["serving_default"]
        say("measuring the artifact on the validation split")
        meas = measure_artifact(signature, model, eval_cfg, data_dir=data_dir,
                                max_val_samples=max_val_samples, num_rotations=num_rotations,
                                invariance_samples=invariance_samples, seed=seed)
        parity_tol = PARITY_ATOL + PARITY_RTOL * meas["keras_scale"]
        if meas["keras_max_abs_diff"] > parity_tol:
            raise PublishError(f"artifact logits differ from the Keras model's by "
                               f"{meas['keras_max_abs_diff']:.3e} (> {parity_tol:.1e}).")
        inv_tol = VERIFY_ATOL + VERIFY_RTOL * meas["logit_scale"]
        if meas["invariance_max_abs"] > inv_tol:
            raise PublishError(f"artifact logits are not rotation invariant: max error "
                               f"{meas['invariance_max_abs']:.3e} > {inv_tol:.1e} (the tolerance "
                               "of relaxeq zoo verify).")
        labels = load_modelnet40("train", data_dir)
        val_size = int(stratified_split(labels.labels, float(cfg.get("val_fraction", 0.2)),
                                        seed=int(cfg.get("split_seed", 0)))[1].size)

        if recipe_command is None and (run_dir / "command.txt").is_file():
            command, source = (run_dir / "command.txt").read_text().strip(), "command.txt"
        elif recipe_command is None:
            command = recipe_command_from_config(summary["config"])
            source = "reconstructed from summary.json: every option explicit"
        else:
            command, source = str(recipe_command), "as given to relaxeq zoo publish"
        title = ARCH_TITLES.get(cfg["model"], cfg["model"])
        entry = {
            "name": name, "version": version, "arch": arch, "group": group, "dataset": dataset,
            "task": TASK,
            "description": (f"{title} (width {cfg.get('width')}) on ModelNet40, "
                            + ("trained with constraint relaxation and projected"
                               if cfg.get("relaxed", True) else "trained without relaxation")
                            + f"; SO(3)-invariant; {summary.get('epochs_run')} epochs."),
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
            "artifact": {"file": art_rel, "format": "saved_model.tar.gz", "size": packed.size,
                         "sha256": packed.sha256},
            "keras_artifact": {"file": keras_rel, "format": "keras", "size": keras_size,
                               "sha256": keras_sha},
            "metrics": _metrics(meas, eval_cfg, val_size, seed),
            "training": {
                "run": run_dir.name, "model_file": model_file, "command": command,
                "epochs_run": summary.get("epochs_run"), "epochs": cfg.get("epochs"),
                "best_epoch": summary.get("best_epoch"),
                "best_projected_val_accuracy": summary.get("best_projected_val_accuracy"),
                "final_projected_val_accuracy": summary.get("final_projected_val_accuracy"),
                "val_accuracy_protocol": "recipe's projected validation (SO(3)-rotated "
                                         "validation split"
                                         + (f", first {cfg['max_val_samples']} shapes)"
                                            if cfg.get("max_val_samples") else ")"),
                "wall_time_seconds": summary.get("wall_time_seconds"),
            },
            "license": license, "citation": citation, "card": card_rel, "recipe": RECIPE,
        }
        others = [m for m in doc["models"] if (m["name"], m["version"]) != (name, version)]
        new_doc = dict(doc, models=sorted(others + [entry],
                                          key=lambda m: (m["name"], m["version"])))
        new_doc = json.loads(json.dumps(new_doc))  # exactly what will be on disk
        cat = registry.parse_index(new_doc, zoo_dir / registry.INDEX_FILENAME)
        parsed = cat.get(name, version)

        # the check CI runs (`relaxeq zoo verify`), on the extracted archive
        from keras_relaxeq.cli import _check_signature, check_invariance

        serving = ServingModel(extracted, parsed)
        problems = _check_signature(serving, parsed)
        if problems:
            raise PublishError("serving signature: " + "; ".join(problems))
        ok, err, _, tol = check_invariance(serving, parsed, atol=VERIFY_ATOL, rtol=VERIFY_RTOL,
                                           seed=seed)
        if not ok:
            raise PublishError(f"relaxeq zoo verify would fail: invariance error {err:.3e} > "
                               f"{tol:.1e}")
        card = render_card(entry, summary, meas, command, source, model_file, params)

        # everything passed: move into place, index last
        for src, rel in ((packed.path, art_rel), (stage / "model.keras", keras_rel)):
            dest = zoo_dir / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
            os.chmod(dest, 0o644)
        _atomic_write(zoo_dir / card_rel, card)
        labels_path = zoo_dir / LABELS_FILE
        if not labels_path.is_file():
            _atomic_write(labels_path, "\n".join(MODELNET40_CLASSES) + "\n")
        _atomic_write(zoo_dir / registry.INDEX_FILENAME, json.dumps(new_doc, indent=2) + "\n")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    say(f"published {name} v{version} in {time.time() - t0:.0f} s: accuracy "
        f"{meas['accuracy_so3']:.4f} (SO(3)), {meas['accuracy_unrotated']:.4f} (unrotated) on "
        f"{meas['num_val']} validation shapes; invariance {meas['invariance_max_abs']:.2e}; "
        f"{zoo_dir / art_rel}")
    return entry


# ---------------------------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="output directory of recipes/modelnet40.py (summary.json, "
                                   "*.keras)")
    p.add_argument("--name", default=None,
                   help="zoo name (default <model>_so3_modelnet40, e.g. "
                        "vn_pointnet_so3_modelnet40)")
    p.add_argument("--version", type=int, default=None,
                   help="version to publish (default: the next free one)")
    p.add_argument("--model-file", default="best_projected.keras",
                   help="projected model in the run directory (projected.keras: final epoch)")
    p.add_argument("--max-val-samples", type=int, default=None,
                   help="evaluate on the first N validation shapes (default: all)")
    p.add_argument("--zoo-dir", default=None,
                   help="catalogue folder to write (default: the folder of --index / "
                        "$KERAS_RELAXEQ_ZOO_INDEX, else the repository's zoo/)")
    p.add_argument("--data-dir", default=None, help="ModelNet40 folder (default: the run's, "
                                                   "else $KERAS_RELAXEQ_DATA or ../shared/data)")
    p.add_argument("--eval-points", type=int, default=None,
                   help="points per shape for the metrics (default: the run's --points)")
    p.add_argument("--num-rotations", type=int, default=4,
                   help="random rotations per shape for the invariance measurement")
    p.add_argument("--seed", type=int, default=0, help="seed of those rotations")
    p.add_argument("--recipe-command", default=None,
                   help="training command for the card (default: the run's command.txt)")
    p.add_argument("--license", default=DEFAULT_LICENSE)
    p.add_argument("--citation", default=DEFAULT_CITATION)
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
            max_val_samples=args.max_val_samples, replace=args.replace,
            log=lambda msg: print(msg, file=out, flush=True))
    except PublishError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"name": entry["name"], "version": entry["version"],
                      "artifact": entry["artifact"], "metrics": {
                          m["name"]: m["value"] for m in entry["metrics"]}}, indent=2), file=out)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m keras_relaxeq.zoo.publish",
                                description="Publish a recipes/modelnet40.py run as a zoo entry.")
    add_arguments(p)
    p.add_argument("--index", default=None, help=argparse.SUPPRESS)
    return run_from_args(p.parse_args(argv))


__all__ = ["PublishError", "measure_artifact", "publish_run", "read_run",
           "recipe_command_from_config", "render_card"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
