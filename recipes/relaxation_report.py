#!/usr/bin/env python
"""How much is the relaxation doing in a recipe run?  Per-layer sizes of the branch on validation data.

    python recipes/relaxation_report.py runs/segnn_cmp/relaxed_seed0                       # best_relaxed.keras
    python recipes/relaxation_report.py runs/segnn_cmp/relaxed_seed1 --checkpoint backup   # the last backup
    python recipes/relaxation_report.py runs/zoo_dgcnn --batches 2 --json /tmp/report.json
    python recipes/relaxation_report.py runs/segnn_cmp/relaxed_seed0 --random-branches       # reference
    python recipes/relaxation_report.py runs/segnn_cmp/relaxed_seed0 --gradients 30          # where training pushes

Reads a run directory of ``recipes/segnn_nbody.py``, ``recipes/modelnet40.py`` or ``recipes/smoke_plume.py`` (a
relaxed arm; also one that is still training), rebuilds the run's configuration (from ``summary.json``, or else from the
``command.txt`` that ``recipes/compare.py`` writes), loads a relaxed checkpoint:

* ``--checkpoint best`` (default): ``best_relaxed.keras``, the relaxed model at the best projected
  validation value;
* ``--checkpoint backup``: the weights of the run's last ``BackupAndRestore`` backup (mid-training,
  at that epoch's theta), put into the recipe's model;

and prints ``keras_relaxeq.training.relaxation_report`` on ``--batches`` batches of the recipe's
validation pipeline: per relaxed branch, the rms sizes of the equivariant output ``E(x)``, of the
branch's contribution ``theta R(x)`` and their ratio, of ``R(x)`` and of its Lie derivative.

``--gradients N`` prints ``keras_relaxeq.training.branch_gradient_report`` instead, on ``N`` batches
of the recipe's *training* pipeline (with its per-batch random rotations) and the recipe's task
loss: per branch, how much of the task-loss and penalty gradients on the kernel lies along
equivariant maps and how much off them, and how coherent each part is across batches.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

RECIPES = ("segnn_nbody", "modelnet40", "smoke_plume")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="output directory of a recipe run")
    p.add_argument("--checkpoint", choices=("best", "backup"), default="best")
    p.add_argument("--batches", type=int, default=5, help="validation batches to use")
    p.add_argument(
        "--random-branches",
        action="store_true",
        help="reference: replace every branch's weights by N(0, 1) draws (seed 0) and set theta = 0 (so "
        "every layer sees the inputs of the projected model), to see what sqrt(LD / N) a random "
        "branch of these layers gives",
    )
    p.add_argument(
        "--gradients",
        type=int,
        default=None,
        metavar="N",
        help="report the split of the task and penalty gradients on the branch kernels into equivariant "
        "and non-equivariant parts over N training batches (branch_gradient_report) instead",
    )
    p.add_argument("--json", default=None, help="also write the rows here")
    return p


def run_config(run_dir: Path):
    """``(recipe module, cfg)`` of a run: ``summary.json``'s config, or the recipe's parser on ``command.txt``."""
    summary, command = run_dir / "summary.json", run_dir / "command.txt"
    if summary.exists():
        data = json.loads(summary.read_text())
        cfg = data["config"]
        if "recipe" in data:  # "recipes/<name>.py"
            name = Path(data["recipe"]).stem
        else:  # runs from before summaries named their recipe
            name = "segnn_nbody" if "lmax_hidden" in cfg else "modelnet40"
        return importlib.import_module(name), cfg
    if command.exists():
        argv = shlex.split(command.read_text())
        script = next((i for i, a in enumerate(argv) if Path(a).stem in RECIPES), None)
        if script is not None:
            recipe = importlib.import_module(Path(argv[script]).stem)
            return recipe, recipe.resolve_config(recipe.build_parser().parse_args(argv[script + 1 :]))
    raise SystemExit(
        f"{run_dir}: neither summary.json nor a command.txt naming one of the recipes {RECIPES}; "
        "is this the --output-dir of a recipe run?"
    )


def load_checkpoint(recipe, cfg, run_dir: Path, which: str):
    """The relaxed model and a label saying where it comes from."""
    import keras  # the recipe module imported keras_relaxeq, which registers its classes

    for module in getattr(recipe, "MODEL_MODULES", ()):  # classes of models the package imports lazily
        importlib.import_module(module)
    if which == "best":
        path = run_dir / "best_relaxed.keras"
        if not path.exists():
            raise SystemExit(
                f"{path} does not exist (yet): the run saves it after its first validation; try --checkpoint backup."
            )
        return keras.saving.load_model(path, compile=False), str(path)
    backup = run_dir / "backup" / "latest.weights.h5"
    if not backup.exists():
        raise SystemExit(f"{backup} does not exist: the run has not backed up yet.")
    meta = run_dir / "backup" / "training_metadata.json"
    if hasattr(recipe, "layout_of_run"):  # branch kernels are matrices in the run's feature layout
        cfg = dict(cfg, layout=recipe.layout_of_run(run_dir, cfg.get("layout")))
    model = recipe.build_model(dict(cfg, relaxed=True))
    with tempfile.TemporaryDirectory() as tmp:  # a copy: the training may rewrite the backup meanwhile
        copy = Path(tmp) / "latest.weights.h5"
        epoch = None
        for _ in range(5):  # weights and metadata of the same backup: unchanged while (and just after) copying
            before = (backup.stat().st_mtime_ns, meta.read_text() if meta.exists() else None)
            shutil.copyfile(backup, copy)
            time.sleep(0.5)  # the training writes the metadata just after the weights
            if (backup.stat().st_mtime_ns, meta.read_text() if meta.exists() else None) == before:
                epoch = json.loads(before[1]).get("epoch") if before[1] else None
                break
        else:
            raise SystemExit(f"{backup} kept changing while it was copied; try again.")
        model.load_weights(copy)
    return model, f"{backup} (after epoch {epoch + 1})" if epoch is not None else str(backup)


def randomize_branches(model, seed=0):
    """Every relaxation kernel and bias gets N(0, 1) values (the equivariant weights are kept)."""
    import numpy as np

    from keras_relaxeq.layers import relaxed_layers

    rng = np.random.default_rng(seed)
    for layer in relaxed_layers(model):
        for var in layer.relaxation_variables:
            var.assign(rng.normal(size=tuple(var.shape)).astype(var.dtype))


def main(argv=None) -> list[dict]:
    args = build_parser().parse_args(argv)
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise SystemExit(f"{run_dir} is not a directory.")
    recipe, cfg = run_config(run_dir)
    if not cfg.get("relaxed", True) or not str(cfg.get("arm", "relaxed")).endswith("relaxed"):
        raise SystemExit(f"{run_dir} is not a relaxed run: it has no relaxation branch to report on.")

    from keras_relaxeq.layers import set_theta
    from keras_relaxeq.training import (
        branch_gradient_report,
        format_branch_gradient_report,
        format_relaxation_report,
        relaxation_report,
    )

    model, source = load_checkpoint(recipe, cfg, run_dir, args.checkpoint)
    if args.random_branches:
        randomize_branches(model)
        set_theta(model, 0.0)
        source += ", branches replaced by N(0, 1) weights, theta set to 0"
    if args.gradients is not None:
        if args.gradients < 1:
            raise SystemExit(f"--gradients needs at least 1 batch, got {args.gradients}.")
        if args.random_branches:
            raise SystemExit(
                "--gradients and --random-branches do not go together: at theta = 0 the task loss does "
                "not depend on the branches."
            )
        train = recipe.make_datasets(cfg)[0]
        rows = branch_gradient_report(model, train, loss=recipe.make_loss(cfg), num_batches=args.gradients)
        print(f"{source}; {rows[0]['batches']} training batches of {cfg['batch']}\n")
        print(format_branch_gradient_report(rows))
    else:
        val = recipe.make_datasets(cfg)[1]
        rows = relaxation_report(model, val, num_batches=args.batches)
        print(f"{source}; {args.batches} validation batches of {cfg['batch']}\n")
        print(format_relaxation_report(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"run": str(run_dir), "checkpoint": source, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
