"""Republishing a zoo entry: the published weights of one version exported again by the current code
as a new version (serving input checks, the current builder), compared with the previous artifact
and checked like ``relaxeq zoo verify`` before anything is written.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from keras_relaxeq.zoo import registry
from keras_relaxeq.zoo.publish.base import (
    PARITY_ATOL,
    PARITY_RTOL,
    VERIFY_ATOL,
    VERIFY_RTOL,
    PublishError,
    _read_index,
    move_into_place,
    write_text,
)


def _verified(zoo_dir: Path, artifact) -> Path:
    path = zoo_dir / artifact.file
    if not path.is_file():
        raise PublishError(f"{path} is missing: republish reads the published files from the zoo folder.")
    from keras_relaxeq.utils import sha256_file

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

    from keras_relaxeq.export.serving import export_saved_model, pack_saved_model
    from keras_relaxeq.utils import sha256_file
    from keras_relaxeq.zoo.archive import safe_extract
    from keras_relaxeq.zoo.loading import ServingModel
    from keras_relaxeq.zoo.publish.nbody import export_nbody_saved_model
    from keras_relaxeq.zoo.verify import check_input_guards, check_signature, check_symmetry, guard_probe_inputs

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
                     input_checks=list(registry.BASIC_INPUT_CHECKS),
                     artifact={"file": art_rel, "format": "saved_model.tar.gz", "size": packed.size,
                               "sha256": packed.sha256},
                     keras_artifact={"file": keras_rel, "format": "keras",
                                     "size": (stage / "model.keras").stat().st_size,
                                     "sha256": sha256_file(stage / "model.keras")})
        entry["description"] = (old.description.rstrip() + f" v{version}: v{old.version}'s weights re-exported "
                                "with serving input checks.").strip()
        # the new artifact answers as the previous one and as the rebuilt Keras model
        feed = guard_probe_inputs(previous, old, seed=seed, batch=num_samples)
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
        problems = check_signature(serving, parsed)
        if problems:
            raise PublishError("serving signature: " + "; ".join(problems))
        for checked in (check_symmetry(serving, parsed, atol=VERIFY_ATOL, rtol=VERIFY_RTOL, seed=seed),
                        check_input_guards(serving, parsed, seed=seed)):
            if checked is not None and not checked[0]:
                raise PublishError(f"relaxeq zoo verify would fail: {checked[1]}")
        card = _republish_card(registry.model_card(name, old.version, index=index_file), old, entry, diff, what)

        for src, rel in ((packed.path, art_rel), (stage / "model.keras", keras_rel)):
            move_into_place(src, zoo_dir / rel)
        write_text(zoo_dir / card_rel, card)
        write_text(index_file, json.dumps(new_doc, indent=2) + "\n")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    say(f"republished {name} v{old.version} as v{version}: {what} differ by {diff:.2e}; {zoo_dir / art_rel}")
    return entry
