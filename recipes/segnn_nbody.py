#!/usr/bin/env python
"""Charged N-body with a relaxed SEGNN (docs/method.md section 9; SEGNN of Brandstetter et al.).

    python recipes/segnn_nbody.py --output-dir runs/segnn_nbody
    python recipes/segnn_nbody.py --no-relaxed --output-dir runs/segnn_nbody_plain
    python recipes/segnn_nbody.py --epochs 2 --train-samples 100 --hidden 16 --layers 2 \
        --output-dir /tmp/segnn_smoke
    python recipes/segnn_nbody.py --strategy mirrored --output-dir runs/segnn_nbody   # all GPUs of this machine
    TF_CONFIG=... python recipes/segnn_nbody.py --strategy multiworker --output-dir /shared/run  # every host

Published defaults (``DEFAULTS``): 1000 epochs, batch 100, Adam 5e-4, weight decay 1e-12,
3,000 training trajectories (30 steps per epoch), lambda_lie = lambda_proj = 0.01, triangle theta
schedule, SEGNN with 4 layers, 64 hidden scalars (``32x0e+32x1o``), lmax 1, no norm.  One random
rotation per training batch.  The checkpoint is selected on the validation MSE of the *projected*
model (never on the test set); the test MSE of that best projected model is reported at the end.

``--strategy {default,mirrored,multiworker}`` (``keras_relaxeq.training.distribute``, see
docs/distributed.md): ``--batch`` is the *global* batch size (divisible by the number of replicas);
the training data is batched with it, gets one rotation per global batch and is sharded with
``AutoShardPolicy.DATA`` (worker *i* keeps slice *i* of every global batch), so N replicas / workers
see the same global batches as one device.  Only the chief writes ``--output-dir``.

Differences from the reference code: Keras' Adam applies the (negligible, 1e-12) weight decay in
decoupled form; the reference evaluates the un-projected network and selects on validation but
reports the test loss of the same epoch, which is what ``best_test_mse`` is here.

The output directory gets:

* ``backup/``             ``MultiWorkerBackupAndRestore`` state, every ``--backup-every`` epochs (10) and
                          after the last: re-running the same command resumes a killed run from its
                          last backup (or extends a finished one when ``--epochs`` grows); ``--fresh``
                          starts over, ``--resume`` insists on a backup.  The epochs after the last
                          backup are trained again (with the same batches: the data passes are replayed)
                          and their rows are dropped from ``log.csv`` and ``relaxation.csv`` first; a
                          damaged backup or one of other options stops the run with what to do;
* ``log.csv``             per-epoch train MSE, relaxed and projected val MSE, theta, penalties;
* ``logs/``               TensorBoard (same quantities);
* ``relaxation.csv``      relaxed runs, every ``--monitor-every`` epochs (10): per relaxation branch, the rms
                          sizes of the equivariant output, of ``theta R(x)`` and of ``R``'s Lie derivative on
                          two validation batches (``keras_relaxeq.training.RelaxationMonitor``);
* ``best_relaxed.keras``  the relaxed model at the best projected val MSE, ``best_projected.keras``
                          its projection;
* ``projected.keras``     the final projected (exactly equivariant) model;
* ``summary.json``        ``recipe`` (this script, read by ``relaxeq zoo publish``), config, strategy / replicas /
                          workers / global batch, epochs, best / final projected val MSE, test MSE of the best
                          projected model, E(3)-equivariance errors, parameter counts, wall time;
* ``history.png``         MSE / theta / penalties vs epoch;
* ``layout.txt``          the model's feature layout (``--layout``), kept when the run resumes.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from keras_relaxeq.layers.steerable import RELAXATION_PLACEMENTS
from keras_relaxeq.models.segnn import CENTRINGS
from keras_relaxeq.training.recipe import (
    RUN_FILES,
    check_strategy_options,
    make_strategy,
    prepare_output_dir,
    read_csv_history,
    run_callbacks,
    write_summary,
)

#: published settings of the relaxation paper's N-body run (docs/method.md section 9, SEGNN README)
DEFAULTS = dict(
    epochs=1000,
    batch=100,
    lr=5e-4,
    weight_decay=1e-12,
    lambda_lie=0.01,
    lambda_proj=0.01,
    schedule="triangle",
    layers=4,
    hidden=64,
    lmax_hidden=1,
    lmax_attr=1,
    norm="none",
    train_samples=3000,
    val_samples=2000,
    test_samples=2000,
)
#: this recipe, as recorded in summary.json (``relaxeq zoo publish`` reads it)
RECIPE = "recipes/segnn_nbody.py"
#: records the run's feature layout (--layout) in --output-dir
LAYOUT_FILE = "layout.txt"


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    d = DEFAULTS
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=d["epochs"])
    g.add_argument(
        "--batch", type=int, default=d["batch"], help="global batch size (summed over all replicas and workers)"
    )
    g.add_argument("--lr", type=float, default=d["lr"], help="Adam learning rate")
    g.add_argument("--weight-decay", type=float, default=d["weight_decay"], help="weight decay (Keras' decoupled form)")
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("relaxation (docs/method.md sections 4-5)")
    g.add_argument(
        "--relaxed",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="relaxation branches on the node-update tensor products (--no-relaxed: plain SEGNN)",
    )
    g.add_argument("--schedule", choices=("triangle", "decay", "constant", "cosine"), default=d["schedule"])
    g.add_argument("--theta-value", type=float, default=0.1, help="theta of --schedule constant")
    g.add_argument("--lambda-lie", type=float, default=d["lambda_lie"])
    g.add_argument("--lambda-proj", type=float, default=d["lambda_proj"])
    g.add_argument(
        "--branch-placement",
        choices=RELAXATION_PLACEMENTS,
        default="before_gate",
        help="the first node update's branch before its gate (docs/method.md section 7) or after it (as the "
        "relaxation paper's released code)",
    )
    g.add_argument(
        "--branch-bias",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the branches' bias (--no-branch-bias: bias-free, as the released code)",
    )
    g = p.add_argument_group("model and data")
    g.add_argument("--layers", type=int, default=d["layers"], help="message-passing layers")
    g.add_argument("--hidden", type=int, default=d["hidden"], help="hidden scalar budget (weight-balanced)")
    g.add_argument("--lmax-hidden", type=int, default=d["lmax_hidden"])
    g.add_argument("--lmax-attr", type=int, default=d["lmax_attr"])
    g.add_argument("--norm", choices=("none", "instance"), default=d["norm"])
    g.add_argument(
        "--centring",
        choices=CENTRINGS,
        default="mass",
        help="node positions minus the centre of mass (equivariant), or minus the mean of each "
        "particle's own coordinates as the reference code does (NOT equivariant: ablation only)",
    )
    g.add_argument(
        "--rotate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="one random rotation per batch in every split (--no-rotate: the data's own frame, "
        "as in the reference code)",
    )
    g.add_argument(
        "--layout",
        choices=("ir_mul", "mul_ir"),
        default=None,
        help="feature layout inside the model (default ir_mul: faster, benchmarks/README.md; mul_ir: "
        "e3nn's). A resumed run keeps the layout it started with (layout.txt; runs from before "
        "this option: mul_ir)",
    )
    g.add_argument("--train-samples", type=int, default=d["train_samples"])
    g.add_argument("--val-samples", type=int, default=d["val_samples"])
    g.add_argument("--test-samples", type=int, default=d["test_samples"])
    g = p.add_argument_group("evaluation and output")
    g.add_argument("--eval-every", type=int, default=1, help="projected validation every N epochs (and last)")
    g.add_argument(
        "--relaxed-val",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also validate the relaxed model each epoch (Keras val_loss)",
    )
    g.add_argument("--output-dir", default="runs/segnn_nbody")
    rg = g.add_mutually_exclusive_group()
    rg.add_argument("--resume", action="store_true", help="require a backup in --output-dir and continue")
    rg.add_argument("--fresh", action="store_true", help="delete the backup and logs and start over")
    g.add_argument(
        "--backup-every",
        type=int,
        default=10,
        metavar="N",
        help="back up for resuming every N epochs and after the last (a backup costs about 4%% "
        "of an epoch, benchmarks/bench_segnn.py; a killed run repeats at most N-1 epochs)",
    )
    g.add_argument(
        "--monitor-every",
        type=int,
        default=10,
        metavar="N",
        help="relaxed runs: every N epochs (and after the last) append the per-branch sizes of the "
        "relaxation on 2 validation batches to relaxation.csv (0: never)",
    )
    g.add_argument("--verbose", type=int, default=1, help="Keras fit verbosity (1: progress bar)")
    g = p.add_argument_group("distribution (docs/distributed.md)")
    _dist().add_strategy_argument(g)
    g.add_argument(
        "--cpu-replicas",
        type=int,
        default=None,
        metavar="N",
        help="testing aid: split the CPU into N logical devices and mirror over them "
        "(with --strategy mirrored, e.g. to test 2 replicas on a CPU-only machine)",
    )
    return p


def _dist():
    """``keras_relaxeq.training.distribute`` (imports TensorFlow, but runs no TensorFlow op)."""
    from keras_relaxeq.training import distribute

    return distribute


def resolve_config(args) -> dict:
    cfg = dict(vars(args))
    for key in (
        "epochs",
        "batch",
        "layers",
        "hidden",
        "train_samples",
        "val_samples",
        "test_samples",
        "eval_every",
        "backup_every",
    ):
        if cfg[key] < 1:
            raise SystemExit(f"--{key.replace('_', '-')} must be >= 1")
    if cfg["monitor_every"] < 0:
        raise SystemExit("--monitor-every must be >= 0 (0: no relaxation.csv)")
    if cfg["train_samples"] < cfg["batch"]:
        raise SystemExit("--train-samples must be at least --batch (full batches are used for training)")
    check_strategy_options(cfg)
    return cfg


# ----------------------------------------------------------------------------- pieces


def build_model(cfg):
    from keras_relaxeq.models.segnn import segnn

    return segnn(
        num_layers=cfg["layers"],
        hidden_features=cfg["hidden"],
        lmax_hidden=cfg["lmax_hidden"],
        lmax_attr=cfg["lmax_attr"],
        relaxed=cfg["relaxed"],
        lambda_lie=cfg["lambda_lie"],
        lambda_proj=cfg["lambda_proj"],
        norm=None if cfg["norm"] == "none" else cfg["norm"],
        centring=cfg.get("centring", "mass"),  # runs from before an option have no key
        relaxation_placement=cfg.get("branch_placement", "before_gate"),
        relaxation_use_bias=cfg.get("branch_bias", True),
        # no key: a run from before --layout (mul_ir); None: not resolved yet (the default)
        layout=cfg.get("layout", "mul_ir") or "ir_mul",
    )


def layout_of_run(out, requested=None, fresh=False) -> str:
    """The feature layout of the run in ``out``: the one it started with (``layout.txt``), else
    ``"mul_ir"`` for a run from before ``--layout`` existed (it has a backup or a summary but no
    ``layout.txt``), else ``requested`` or ``"ir_mul"``.  A relaxation branch is a matrix in the
    layout's coordinates, so a resumed run must keep its layout; asking for another one is an error.
    """
    out = Path(out)
    if not fresh:
        record = out / LAYOUT_FILE
        if record.is_file():
            stored = record.read_text().strip()
        elif (out / "backup").is_dir() or (out / "summary.json").is_file():
            stored = "mul_ir"
        else:
            stored = None
        if stored is not None:
            if requested and requested != stored:
                raise SystemExit(
                    f"{out} holds a run with --layout {stored}; resume it with that layout (its "
                    f"relaxation branches are matrices in that layout) or start over with --fresh."
                )
            return stored
    return requested or "ir_mul"


def make_loss(cfg):
    """The task loss (relaxation_report.py --gradients uses it too)."""
    return "mse"


def make_datasets(cfg):
    """Train / val / test pipelines batched with ``cfg["batch"]``, the *global* batch size.

    ``nbody_dataset`` shuffles, batches and then rotates each batch, so there is one rotation per
    global batch; sharded with ``AutoShardPolicy.DATA`` each replica / worker gets its slice of every
    (rotated) global batch, i.e. the same global batches as on one device.  The pipelines are seeded,
    hence identical on every worker (which DATA sharding needs).
    """
    from keras_relaxeq.datasets.nbody import recipe_dataset

    # training: reshuffled, one random rotation per batch, full batches (the reference drops the last);
    # validation / test: rotated too (the projected model is equivariant, so only float error changes).
    # relaxeq zoo publish measures the test MSE on this same test pipeline.
    return tuple(recipe_dataset(cfg, split) for split in ("train", "valid", "test"))


def plot_regression_history(history, path, title=None):
    """PNG of the MSEs (log scale), theta and the penalties vs epoch."""
    from keras_relaxeq.training.callbacks import plot_history

    return plot_history(history, path, title=title, metric="loss", ylabel="MSE")


def equivariance_errors(model, inputs, seed=0):
    """O(3) (rotations and reflections) and translation errors of ``model`` on ``inputs``
    (``keras_relaxeq.testing.check_equivariance`` with the groups ``O3`` and ``T3``)."""
    from keras_relaxeq.testing import check_equivariance

    reps = {"loc": "vector", "vel": "vector", "charges": "invariant"}
    report = check_equivariance(model, inputs, input_reps=reps, output_reps="vector", group="O3", seed=seed)
    # translations move the positions (input and prediction) and leave velocities and charges alone
    shifted = check_equivariance(
        model,
        inputs,
        input_reps=dict(reps, loc="position"),
        output_reps="position",
        group="T3",
        num_samples=1,
        seed=seed,
    )
    return {
        "o3_max_error": report.max_error,
        "o3_mean_error": report.mean_error,
        "o3_relative_max_error": report.max_error / max(report.scale, 1e-12),
        "o3_passed": bool(report.passed),
        "translation_max_error": shifted.max_error,
        "num_systems": int(inputs["loc"].shape[0]),
    }


# ----------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    cfg = resolve_config(args)
    # the first TensorFlow call (MultiWorkerMirroredStrategy configures collectives at start-up)
    strategy = make_strategy(cfg)
    dist = _dist()
    chief = dist.is_chief(strategy)
    cfg["layout"] = layout_of_run(cfg["output_dir"], cfg.get("layout"), fresh=bool(cfg.get("fresh")))
    out, backup_dir, write_dir = prepare_output_dir(cfg, strategy)  # --fresh / --resume, checks the backup
    layout = cfg["layout"]
    (write_dir / LAYOUT_FILE).write_text(layout + "\n")
    start = time.time()

    import keras

    import keras_relaxeq as kr
    from keras_relaxeq.training.backup import CountedDataset
    from keras_relaxeq.training.callbacks import ProjectedValidation

    cfg["batch"] = dist.global_batch_size(cfg["batch"], strategy)  # --batch is the global batch size
    keras.utils.set_random_seed(cfg["seed"])
    train, val, test = make_datasets(cfg)
    # passes counted: a resumed run replays them, so its epoch E sees the shuffle and rotations of epoch E
    passes = {"train": CountedDataset(train), "val": CountedDataset(val)}
    # AutoShardPolicy.DATA: worker i keeps slice i of every global batch (one rotation per global batch)
    train, val = dist.shard_dataset(passes["train"].dataset, "data"), dist.shard_dataset(passes["val"].dataset, "data")
    with strategy.scope():  # model, optimizer, metrics (and penalties) are created on every replica
        model = build_model(cfg)
        model.compile(
            optimizer=keras.optimizers.Adam(cfg["lr"], weight_decay=cfg["weight_decay"] or None), loss=make_loss(cfg)
        )
    dist.prepare_model(model, strategy)  # Keras 3.15 multi-worker workarounds (no-op otherwise)

    # the projected model of ProjectedValidation is built in the callback, outside the strategy scope
    # (one device, full validation set on every worker)
    csv_path = write_dir / "log.csv"
    previous = read_csv_history(out / "log.csv")  # the shared log: same initial best on every worker
    finite_prev = [v for v in previous.get("projected_val_loss", []) if math.isfinite(v)]
    best_so_far = min(finite_prev) if finite_prev else None
    # the best projected model has the lowest validation MSE
    projected_val = ProjectedValidation(
        val,
        every=cfg["eval_every"],
        loss="mse",
        metrics=[],
        monitor="projected_val_loss",
        mode="min",
        best_path=write_dir / "best_projected.keras",
        initial_best=best_so_far,
    )
    callbacks = []
    if cfg["relaxed"]:
        callbacks.append(kr.ThetaScheduler(cfg["schedule"], epochs=cfg["epochs"], value=cfg["theta_value"]))
    if cfg["relaxed"] and cfg["monitor_every"]:
        callbacks.append(kr.training.RelaxationMonitor(val, write_dir / "relaxation.csv", every=cfg["monitor_every"]))
    callbacks.append(projected_val)  # before everything that reads projected_val_loss
    tail, tensorboard = run_callbacks(
        write_dir,
        backup_dir,
        monitor="projected_val_loss",
        mode="min",
        initial_best=best_so_far,
        strategy=strategy,
        recipe=RECIPE,
        backup_every=cfg["backup_every"],
        config=cfg,
        datasets=passes,
    )
    callbacks += tail
    fit_start = time.time()
    fit_history = model.fit(
        train,
        validation_data=val if cfg["relaxed_val"] else None,
        epochs=cfg["epochs"],
        callbacks=callbacks,
        verbose=cfg["verbose"],
        shuffle=False,
    )  # the tf.data pipeline shuffles (Keras would only warn)
    fit_seconds = time.time() - fit_start
    epochs_this_call = len(fit_history.epoch)

    # final projection (reuses the callback's projected model and its compiled evaluation)
    projected_val.set_model(model)
    final_val = projected_val.evaluate()["projected_val_loss"]
    projected = projected_val.projected
    projected.save(write_dir / "projected.keras")
    best_path = write_dir / "best_projected.keras"
    best = keras.saving.load_model(best_path, compile=False) if best_path.exists() else projected
    best.compile(loss=make_loss(cfg), jit_compile=False)
    best_test = float(best.evaluate(test, verbose=0, return_dict=True)["loss"])
    final_test = float(projected.evaluate(test, verbose=0, return_dict=True)["loss"])
    x_check, _ = next(iter(val))
    x_check = {k: v[:16] for k, v in x_check.items()}
    equivariance = equivariance_errors(best, x_check, seed=cfg["seed"])

    history = read_csv_history(csv_path)
    pvl = history.get("projected_val_loss", [])
    finite = [(v, i) for i, v in enumerate(pvl) if math.isfinite(v)]
    best_val, best_idx = min(finite) if finite else (None, None)
    plain_params = build_model(dict(cfg, relaxed=False)).count_params() if cfg["relaxed"] else model.count_params()
    summary = {
        "recipe": RECIPE,  # tells relaxeq zoo publish which recipe family made the run
        "config": cfg,
        "strategy": cfg["strategy"],
        "num_replicas": int(strategy.num_replicas_in_sync),
        "num_workers": int(dist.num_workers(strategy)),
        "global_batch": int(cfg["batch"]),
        "epochs_run": len(history.get("epoch", [])),
        "epochs_this_invocation": epochs_this_call,
        "resumed": epochs_this_call < cfg["epochs"],
        "steps_per_epoch": cfg["train_samples"] // cfg["batch"],
        "best_projected_val_mse": best_val,
        "best_epoch": None if best_idx is None else int(history["epoch"][best_idx]) + 1,
        "best_test_mse": best_test,
        "final_projected_val_mse": float(final_val),
        "final_projected_test_mse": final_test,
        "equivariance_of_best_projected": equivariance,
        "params": {
            "trained_model": int(model.count_params()),
            "projected_model": int(projected.count_params()),
            "plain_model": int(plain_params),
        },
        "fit_seconds_this_invocation": fit_seconds,
        "wall_time_seconds": time.time() - start,
        "files": {
            "projected_model": "projected.keras",
            **RUN_FILES,
            "relaxation_log": "relaxation.csv" if cfg["relaxed"] and cfg["monitor_every"] else None,
        },
        "tensorboard": tensorboard,
    }
    write_summary(write_dir, summary)
    plot_regression_history(
        history,
        write_dir / "history.png",
        title=f"SEGNN ({'relaxed' if cfg['relaxed'] else 'plain'}) on charged N-body",
    )
    dist.cleanup_worker_dir(str(write_dir), str(out), strategy)  # non-chief: throw the private copy away
    if cfg["verbose"] and chief:
        print(
            f"best projected val MSE {best_val} (epoch {summary['best_epoch']}); test MSE of the best projected "
            f"model {best_test:.5f}; O(3) error {equivariance['o3_max_error']:.2e}, translation error "
            f"{equivariance['translation_max_error']:.2e}; strategy {cfg['strategy']} "
            f"({summary['num_replicas']} replicas, global batch {cfg['batch']}); summary: {out / 'summary.json'}"
        )
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
