"""Publish a recipe run (``recipes/modelnet40.py``, ``recipes/segnn_nbody.py`` or
``recipes/smoke_plume.py``) as a model-zoo entry.

    relaxeq zoo publish RUN_DIR [--name vn_pointnet_so3_modelnet40] [--version N]
        [--model-file best_projected.keras] [--max-val-samples N] [--zoo-dir zoo/]
    relaxeq zoo publish SEGNN_RUN_DIR [--max-test-samples N]   # -> segnn_o3_nbody
    relaxeq zoo publish SMOKE_RUN_DIR [--max-test-batches N]   # -> steerable_cnn_c4_smokeplume
    relaxeq zoo publish SMOKE_SCALE_RUN_DIR                    # --symmetry scale run -> sesn_scale_smokeplume
    relaxeq zoo publish MD17_RUN_DIR [--data-dir DIR]           # -> equiformer_e3_md17<molecule>
    python -m keras_relaxeq.zoo.publish RUN_DIR ...           # the same
    python -m keras_relaxeq.zoo.publish republish NAME [--from-version N]

:func:`publish_run` (``driver``) reads the run directory (``summary.json``, the projected
``.keras`` model, ``command.txt`` if present), picks the recipe family from the ``recipe`` field of
the summary (older runs: from their config, :func:`recipe_of`) and publishes the run with that
family's :class:`RecipeRun`: :class:`ModelNet40Run` (``modelnet40``), :class:`NBodyRun`
(``nbody``), :class:`SmokePlumeRun` (``smoke_plume``; ``--symmetry scale`` runs: :class:`SmokePlumeScaleRun`,
``smoke_plume_scale``) or :class:`MD17Run` (``md17``). For every family it

1. loads the model and refuses one that still has relaxation branches;
2. exports it (the family's serving signature) and packs it (``pack_saved_model``, byte
   reproducible) to ``artifacts/<name>/<version>/<name>-<version>.tar.gz``, next to a copy of the
   ``.keras`` file (``...-<version>.keras``, the entry's ``keras_artifact``);
3. extracts the packed archive and measures everything on it (the family's metrics, its symmetry
   error and the largest difference to the Keras model), then runs the checks of
   ``relaxeq zoo verify`` (``keras_relaxeq.zoo.verify``) on it;
4. writes the model card ``cards/<name>-<version>.md`` and adds the entry to ``index.json``
   (validated with ``parse_index``; entries sorted by name and version).

Nothing is written into the zoo folder until every measurement and check has passed. An existing
``(name, version)`` is only replaced with ``replace=True`` (published versions are immutable:
publish a new version instead; the default version is the next free one). :func:`republish`
(``republish``) exports a published entry's weights again as a new version.
"""

# ruff: noqa: F401  (the package re-exports the names of its modules)
from keras_relaxeq.zoo.publish.base import (
    DEFAULT_LICENSE,
    PARITY_ATOL,
    PARITY_RTOL,
    VERIFY_ATOL,
    VERIFY_RTOL,
    PublishError,
    RecipeRun,
    card_closing_lines,
    card_command_lines,
    card_metrics_lines,
    check_parity,
    check_symmetry_error,
    keras_parity_metric,
    recipe_command_from_config,
)
from keras_relaxeq.zoo.publish.command import add_arguments, main, republish_main, run_from_args
from keras_relaxeq.zoo.publish.driver import (
    FAMILIES,
    NBODY_CONFIG_KEYS,
    NBODY_RECIPE,
    publish_run,
    read_run,
    recipe_of,
    recipe_run_class,
    run_recipe,
)
from keras_relaxeq.zoo.publish.modelnet40 import (
    ARCH_TITLES,
    DATASET,
    DEFAULT_CITATION,
    GROUP,
    LABELS_FILE,
    NUM_CLASSES,
    PREPROCESSING,
    RECIPE,
    TASK,
    ModelNet40Run,
    architecture_config,
    measure_artifact,
    render_card,
)
from keras_relaxeq.zoo.publish.md17 import MD17Run
from keras_relaxeq.zoo.publish.nbody import NBodyRun
from keras_relaxeq.zoo.publish.smoke_plume import SmokePlumeRun
from keras_relaxeq.zoo.publish.smoke_plume_scale import SmokePlumeScaleRun
from keras_relaxeq.zoo.publish.republish import republish

__all__ = ["FAMILIES", "MD17Run", "ModelNet40Run", "NBodyRun", "PublishError", "RecipeRun", "SmokePlumeRun",
           "SmokePlumeScaleRun",
           "add_arguments", "main", "measure_artifact", "publish_run", "read_run", "recipe_command_from_config",
           "recipe_of", "render_card", "republish", "run_from_args", "run_recipe"]
