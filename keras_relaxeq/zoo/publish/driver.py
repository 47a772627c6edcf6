"""The publishing driver: reads a recipe run, picks its recipe family's :class:`RecipeRun`, exports,
packs, measures and verifies the artifact, then writes it, its card and its entry into the zoo.

The family comes from the ``recipe`` field that each recipe writes into its run's ``summary.json``
(:data:`FAMILIES`). Runs from before that field are told apart by their config (:func:`recipe_of`,
the legacy path kept for such run folders, e.g. the records under ``docs/runs``).

Nothing is written into the zoo folder until every measurement and check has passed; an existing
``(name, version)`` is only replaced with ``replace=True``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from keras_relaxeq.zoo import registry
from keras_relaxeq.zoo.publish.base import (
    DEFAULT_LICENSE,
    VERIFY_ATOL,
    VERIFY_RTOL,
    PublishError,
    RecipeRun,
    _read_index,
    move_into_place,
    write_text,
)
from keras_relaxeq.zoo.publish.md17 import RECIPE as MD17_RECIPE
from keras_relaxeq.zoo.publish.md17 import MD17Run
from keras_relaxeq.zoo.publish.modelnet40 import RECIPE, ModelNet40Run
from keras_relaxeq.zoo.publish.nbody import RECIPE as NBODY_RECIPE
from keras_relaxeq.zoo.publish.nbody import NBodyRun
from keras_relaxeq.zoo.publish.smoke_plume import RECIPE as SMOKE_RECIPE
from keras_relaxeq.zoo.publish.smoke_plume import SmokePlumeRun
from keras_relaxeq.zoo.publish.smoke_plume_scale import SmokePlumeScaleRun

#: the recipe families that can be published, by the ``recipe`` field of their runs' summary.json
FAMILIES: dict[str, type[RecipeRun]] = {RECIPE: ModelNet40Run, NBODY_RECIPE: NBodyRun,
                                        SMOKE_RECIPE: SmokePlumeRun, MD17_RECIPE: MD17Run}
#: runs of a family's recipe on another task (their config's ``symmetry``), published by another RecipeRun
SYMMETRY_VARIANTS: dict[tuple[str, str], type[RecipeRun]] = {(SMOKE_RECIPE, "scale"): SmokePlumeScaleRun}


def read_run(run_dir) -> dict:
    """``summary.json`` of a recipe run, with its ``config``."""
    run_dir = Path(run_dir)
    path = run_dir / "summary.json"
    if not path.is_file():
        raise PublishError(f"{run_dir} has no summary.json: not a finished run of {', '.join(FAMILIES)} "
                           "(the summary is written at the end of training). "
                           "Pass the --output-dir of a finished run.")
    summary = json.loads(path.read_text())
    if not isinstance(summary.get("config"), dict):
        raise PublishError(f"{path} has no 'config' object: not written by {', '.join(FAMILIES)}.")
    return summary


#: config keys that every ``recipes/segnn_nbody.py`` run has
NBODY_CONFIG_KEYS = ("layers", "hidden", "lmax_hidden", "lmax_attr", "norm", "batch", "seed",
                     "test_samples")


#: config keys that every ``recipes/smoke_plume.py`` run has
SMOKE_CONFIG_KEYS = ("arm", "resolution", "test_length", "output_length", "width", "hidden")


def recipe_of(cfg: dict, path="summary.json") -> str:
    """The recipe that wrote a run's ``config``: :data:`RECIPE`, :data:`NBODY_RECIPE` or
    :data:`SMOKE_RECIPE`, told from the config's keys (legacy path: for runs whose summary has no
    ``recipe`` field)."""
    if "model" in cfg and "points" in cfg:
        return RECIPE
    if all(key in cfg for key in NBODY_CONFIG_KEYS):
        return NBODY_RECIPE
    if all(key in cfg for key in SMOKE_CONFIG_KEYS):
        return SMOKE_RECIPE
    raise PublishError(
        f"{path}: cannot tell which recipe wrote this run: its config has neither 'model' and "
        f"'points' ({RECIPE}) nor {', '.join(repr(k) for k in NBODY_CONFIG_KEYS)} "
        f"({NBODY_RECIPE}) nor {', '.join(repr(k) for k in SMOKE_CONFIG_KEYS)} ({SMOKE_RECIPE}). "
        "Only runs of these recipes can be published; pass the --output-dir of one of them.")


def run_recipe(summary: dict, path="summary.json") -> str:
    """The recipe of a run: the ``recipe`` field of its summary, else (runs from before that
    field) the one :func:`recipe_of` tells from the config."""
    recipe = summary.get("recipe")
    if recipe is None:
        return recipe_of(summary["config"], path)
    if recipe not in FAMILIES:
        raise PublishError(f"{path}: runs of {recipe!r} cannot be published; only runs of "
                           f"{' and '.join(FAMILIES)} can.")
    return recipe


def recipe_run_class(recipe: str, summary: dict | None = None) -> type:
    """The :class:`RecipeRun` of ``recipe`` (a key of :data:`FAMILIES`); for a run whose config has a
    ``symmetry`` listed in :data:`SYMMETRY_VARIANTS` (``recipes/smoke_plume.py --symmetry scale``), that one."""
    symmetry = ((summary or {}).get("config") or {}).get("symmetry")
    return SYMMETRY_VARIANTS.get((recipe, symmetry)) or FAMILIES[recipe]


def _check_options(kind: type, run_dir: Path, options: dict) -> None:
    """Refuse options that belong to the other recipe's runs (they would be silently ignored)."""
    for other in FAMILIES.values():
        if other is kind:
            continue
        wrong = [k for k in other.only_options if options.get(k) is not None and k not in kind.only_options]
        if wrong:
            flags = ", ".join("--" + k.replace("_", "-") for k in wrong)
            mine = ", ".join("--" + k.replace("_", "-") for k in kind.only_options)
            raise PublishError(f"{flags} only apply to {other.recipe} runs; {run_dir} is a "
                               f"{kind.recipe} run (its options: {mine}).")


def publish_run(run_dir, name=None, version=None, zoo_dir=None, model_file=None,
                data_dir=None, eval_points=None, num_rotations: int = 4, seed: int = 0,
                recipe_command=None, license: str = DEFAULT_LICENSE, citation: str | None = None,
                *, max_val_samples=None, invariance_samples: int = 16, max_test_samples=None,
                equivariance_samples: int = 16, max_test_batches=None, replace: bool = False,
                log=None) -> dict:
    """Publish the run ``run_dir`` of ``recipes/modelnet40.py``, ``recipes/segnn_nbody.py`` or
    ``recipes/smoke_plume.py`` into the zoo ``zoo_dir`` (the recipe family from the run's summary:
    :func:`run_recipe`).

    Args:
        name: ``<arch>_<group>_<dataset>`` (default: ``<model>_so3_modelnet40`` from the run's
            ``--model``; ``segnn_o3_nbody`` for an N-body run).
        version: default: one more than the latest published version of ``name``.
        zoo_dir: the catalogue folder (default: the repository's ``zoo/``).
        model_file: the projected model in the run directory (default: the family's;
            ``best_projected.keras``: the model selected on the validation split;
            ``projected.keras``: the final epoch's, for smoke plume runs the best projected
            one-step forecaster, their default).
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

    Smoke plume runs only (``recipes/smoke_plume.py``, arms ``relaxed`` and ``equivariant``; ``--symmetry
    scale`` runs are published as ``sesn_scale_smokeplume``):
        data_dir: the simulations (default: the run's ``--data-dir``, else
            ``$KERAS_RELAXEQ_CACHE/smoke_plume_rotation``, ``smoke_plume_scale`` for scale runs); never
            simulated here.
        max_test_batches: evaluate on the first N batches of each test split (default: the run's
            ``--max-test-batches``, i.e. all).

    Returns the catalogue entry (a dict) and writes the artifact, the ``.keras`` copy, the card,
    ``index.json`` (and ``cards/modelnet40_labels.txt`` for ModelNet40).
    """
    import keras
    import tensorflow as tf

    from keras_relaxeq.export.projection import has_relaxation_branches
    from keras_relaxeq.export.serving import pack_saved_model
    from keras_relaxeq.utils import sha256_file
    from keras_relaxeq.zoo.archive import safe_extract
    from keras_relaxeq.zoo.loading import ServingModel
    from keras_relaxeq.zoo.verify import check_input_guards, check_signature, check_symmetry

    say = log or (lambda msg: None)
    t0 = time.time()
    run_dir = Path(run_dir)
    summary = read_run(run_dir)
    kind = recipe_run_class(run_recipe(summary, run_dir / "summary.json"), summary)
    options = {"data_dir": data_dir, "eval_points": eval_points,
               "max_val_samples": max_val_samples, "invariance_samples": invariance_samples,
               "max_test_samples": max_test_samples,
               "equivariance_samples": equivariance_samples, "max_test_batches": max_test_batches}
    _check_options(kind, run_dir, options)
    model_file = model_file or kind.default_model_file
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
    source = model
    model = run.prepare(model)
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
        if model is source:
            shutil.copyfile(model_path, stage / "model.keras")
        else:
            model.save(stage / "model.keras")
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
            "input_checks": list(run.input_checks),
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
        problems = check_signature(serving, parsed)
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
        run.check_staged(serving, parsed, stage / "model.keras")
        card = run.render_card(entry, meas, command, source, params)

        # everything passed: move into place, index last
        for src, rel in ((packed.path, art_rel), (stage / "model.keras", keras_rel)):
            move_into_place(src, zoo_dir / rel)
        write_text(zoo_dir / card_rel, card)
        run.write_extras(zoo_dir)
        write_text(zoo_dir / registry.INDEX_FILENAME, json.dumps(new_doc, indent=2) + "\n")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    say(f"published {name} v{version} in {time.time() - t0:.0f} s: {run.report(meas)}; "
        f"{zoo_dir / art_rel}")
    return entry
