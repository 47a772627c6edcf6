"""Command line of the publisher: the ``relaxeq zoo publish`` options (:func:`add_arguments`,
:func:`run_from_args`) and ``python -m keras_relaxeq.zoo.publish [republish] ...`` (:func:`main`).
"""

from __future__ import annotations

import argparse
import json
import sys

from keras_relaxeq.zoo import registry
from keras_relaxeq.zoo.publish.base import DEFAULT_LICENSE, PublishError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="output directory of recipes/modelnet40.py, recipes/segnn_nbody.py, "
                                   "recipes/smoke_plume.py or recipes/md17.py (summary.json, *.keras)")
    p.add_argument("--name", default=None,
                   help="zoo name (default <model>_so3_modelnet40, e.g. "
                        "vn_pointnet_so3_modelnet40; segnn_o3_nbody for N-body runs; "
                        "steerable_cnn_c4_smokeplume for smoke plume runs, sesn_scale_smokeplume for "
                        "--symmetry scale ones; equiformer_e3_md17<molecule> "
                        "for MD17 runs)")
    p.add_argument("--version", type=int, default=None,
                   help="version to publish (default: the next free one)")
    p.add_argument("--model-file", default=None,
                   help="projected model in the run directory (default: best_projected.keras; smoke "
                        "plume runs: projected.keras, the best projected one-step forecaster)")
    p.add_argument("--max-val-samples", type=int, default=None,
                   help="ModelNet40 runs: evaluate on the first N validation shapes (default: "
                        "all)")
    p.add_argument("--max-test-samples", type=int, default=None,
                   help="N-body runs: evaluate on the first N test trajectories of the recipe's "
                        "test pipeline (default: all of the run's --test-samples)")
    p.add_argument("--max-test-batches", type=int, default=None,
                   help="smoke plume runs: evaluate on the first N batches of each test split "
                        "(default: the run's --max-test-batches, i.e. all)")
    p.add_argument("--zoo-dir", default=None,
                   help="catalogue folder to write (default: the folder of --index / "
                        "$KERAS_RELAXEQ_ZOO_INDEX, else the repository's zoo/)")
    p.add_argument("--data-dir", default=None,
                   help="ModelNet40 runs: the data folder (default: the run's, else "
                        "$KERAS_RELAXEQ_DATA or ../shared/data); smoke plume runs: the simulations "
                        "(default: the run's, else $KERAS_RELAXEQ_CACHE/smoke_plume_rotation or "
                        "smoke_plume_scale); MD17 runs: "
                        "the rmd17 npz files (default: the run's, else $KERAS_RELAXEQ_DATA)")
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
    from keras_relaxeq.zoo.publish.driver import publish_run

    try:
        entry = publish_run(
            args.run_dir, name=args.name, version=args.version, zoo_dir=zoo_dir,
            model_file=args.model_file, data_dir=args.data_dir, eval_points=args.eval_points,
            num_rotations=args.num_rotations, seed=args.seed,
            recipe_command=args.recipe_command, license=args.license, citation=args.citation,
            max_val_samples=args.max_val_samples, max_test_samples=args.max_test_samples,
            max_test_batches=args.max_test_batches, replace=args.replace,
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
    from keras_relaxeq.zoo.publish.republish import republish

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
                                description="Publish a recipes/modelnet40.py, recipes/segnn_nbody.py "
                                            "or recipes/smoke_plume.py run as a zoo entry.")
    add_arguments(p)
    p.add_argument("--index", default=None, help=argparse.SUPPRESS)
    return run_from_args(p.parse_args(argv))
