#!/usr/bin/env python
"""Energies and forces of one MD17 molecule with a (relaxed) Equiformer (issue 25; docs/equiformer.md, docs/rmd17.md).

    python recipes/md17.py --molecule ethanol --relaxed --output-dir runs/md17/ethanol_relaxed_seed0
    python recipes/md17.py --molecule aspirin --no-relaxed --seed 1 --output-dir runs/md17/aspirin_plain_seed1
    python recipes/md17.py --molecule ethanol --width 0.25 --blocks 2 --epochs 20 --max-train-batches 40 \
        --output-dir /tmp/md17_quick                                              # a quick CPU run

Published settings (``DEFAULTS``, Equiformer's MD17 runs as the paper's reference code trains them): the 950 / 50
split of ``train_01`` (``--split-seed``), the original MD17 labels (``--labels md17``; ``rmd17`` for the
recomputed ones), targets standardised with the training frames' energy mean and std, loss ``1 * L1(energy) +
80 * L2-MAE(forces)`` (L2-MAE: the mean over atoms of the Euclidean norm of the force error), AdamW lr 5e-4 with
weight decay 1e-6 and a cosine schedule after 10 linear warm-up epochs, batch 8, 1500 epochs, Equiformer at
full width (``128x0e+64x1o+32x2e``, 6 blocks).

Relaxation (``--relaxed``): every block's feed-forward network gets the reference's branch, an MLP on the
features, the element one-hot and the centred positions (``--relaxation-kind position_mlp``), with the
finite-rotation penalty (5 degrees, ``--penalty finite_rotation``) or the Lie derivative (``--penalty lie``);
theta follows ``--schedule`` (triangle) on ``--theta-epochs`` (default ``--epochs``) and reaches 0, and the
evaluated model is the *projected* one (in the published code a typo keeps theta at 1, so it never is).

Selection and evaluation: after every ``--eval-every`` epochs the projected model is evaluated on the 50
validation frames (``projected_val_loss``, the training loss); the best one is kept.  At the end it is evaluated
on ``test_01`` (1,000 frames): energy MAE in meV and force MAE in meV/Å (mean absolute error of every component;
1 kcal/mol = 43.364 meV), and its E(3) equivariance on test frames (energy change and force error under a
random rotation + reflection + translation).  The output directory gets ``backup/`` (rerun the same command to
continue), ``log.csv``, ``best_projected.keras``, ``projected.keras``, ``history.png`` and ``summary.json``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

from keras_relaxeq.training.recipe import (
    RUN_FILES,
    check_strategy_options,
    make_strategy,
    prepare_output_dir,
    read_csv_history,
    run_callbacks,
    write_summary,
)

#: this recipe, as recorded in summary.json
RECIPE = "recipes/md17.py"
DEFAULTS = dict(
    epochs=1500,
    warmup_epochs=10,
    batch=8,
    lr=5e-4,
    weight_decay=1e-6,
    energy_weight=1.0,
    force_weight=80.0,
    width=1.0,
    blocks=6,
    lambda_lie=0.01,
    lambda_proj=0.0,
    angle=5.0,
)
KCAL_MOL_TO_MEV = 43.364


def build_parser() -> argparse.ArgumentParser:
    d = DEFAULTS
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--molecule", default="ethanol", help="one of keras_relaxeq.datasets.rmd17.MOLECULES")
    p.add_argument("--labels", choices=("md17", "rmd17"), default="md17", help="original MD17 or recomputed labels")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the 950 / 50 split of train_01")
    p.add_argument("--data-dir", default=None, help="folder of the rmd17 npz files (default: $KERAS_RELAXEQ_DATA)")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=d["epochs"])
    g.add_argument("--warmup-epochs", type=int, default=d["warmup_epochs"], help="linear warm-up of the lr")
    g.add_argument("--batch", type=int, default=d["batch"])
    g.add_argument("--lr", type=float, default=d["lr"], help="AdamW peak learning rate (cosine to 0)")
    g.add_argument("--weight-decay", type=float, default=d["weight_decay"], help="AdamW (decoupled) weight decay")
    g.add_argument("--energy-weight", type=float, default=d["energy_weight"])
    g.add_argument("--force-weight", type=float, default=d["force_weight"])
    g.add_argument("--max-train-batches", type=int, default=None, metavar="N", help="CPU protocol: N batches/epoch")
    g.add_argument("--eval-every", type=int, default=1, metavar="N", help="projected validation every N epochs")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--run-eagerly", action="store_true", help="no tf.function (debugging, tiny tests)")
    g = p.add_argument_group("model")
    g.add_argument("--width", type=float, default=d["width"], help="multiplier of 128x0e+64x1o+32x2e")
    g.add_argument("--blocks", type=int, default=d["blocks"])
    g = p.add_argument_group("relaxation (docs/method.md)")
    g.add_argument("--relaxed", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--relaxation-kind", choices=("position_mlp", "ffn_output"), default="position_mlp")
    g.add_argument("--penalty", choices=("finite_rotation", "lie"), default="finite_rotation")
    g.add_argument("--angle", type=float, default=d["angle"], help="degrees of the finite-rotation penalty")
    g.add_argument("--schedule", choices=("triangle", "decay", "constant", "cosine"), default="triangle")
    g.add_argument("--theta-value", type=float, default=0.1, help="theta of --schedule constant")
    g.add_argument("--theta-epochs", type=int, default=None, help="theta clock in epochs (default: --epochs)")
    g.add_argument("--lambda-lie", type=float, default=d["lambda_lie"], help="weight of the equivariance penalty")
    g.add_argument("--lambda-proj", type=float, default=d["lambda_proj"], help="weight of the branch size")
    g = p.add_argument_group("output")
    g.add_argument("--output-dir", default="runs/md17")
    rg = g.add_mutually_exclusive_group()
    rg.add_argument("--resume", action="store_true", help="require a backup in --output-dir and continue from it")
    rg.add_argument("--fresh", action="store_true", help="delete the backup and logs and start over")
    g.add_argument("--verbose", type=int, default=1)
    g.add_argument("--strategy", default="default", help=argparse.SUPPRESS)
    return p


def resolve_config(args) -> dict:
    from keras_relaxeq.datasets.rmd17 import MOLECULES

    cfg = dict(vars(args))
    if cfg["molecule"] not in MOLECULES:
        raise SystemExit(f"--molecule must be one of {sorted(MOLECULES)}, got {cfg['molecule']!r}")
    for key in ("epochs", "batch", "blocks", "eval_every"):
        if cfg[key] < 1:
            raise SystemExit(f"--{key.replace('_', '-')} must be >= 1")
    if cfg["warmup_epochs"] < 0 or cfg["warmup_epochs"] >= cfg["epochs"]:
        raise SystemExit("--warmup-epochs must be >= 0 and below --epochs")
    if cfg["max_train_batches"] is not None and cfg["max_train_batches"] < 1:
        raise SystemExit("--max-train-batches must be >= 1")
    if cfg["width"] <= 0:
        raise SystemExit("--width must be positive")
    check_strategy_options(cfg)
    return cfg


# ----------------------------------------------------------------------------- pieces


def make_datasets(cfg):
    """``(train, val, test)`` with standardised targets (the scaler of the training frames)."""
    from keras_relaxeq.datasets.rmd17 import rmd17_dataset

    common = dict(labels=cfg["labels"], split_seed=cfg["split_seed"], standardize=True, data_dir=cfg["data_dir"])
    train = rmd17_dataset(cfg["molecule"], "train", cfg["batch"], seed=cfg["seed"], drop_remainder=True, **common)
    if cfg["max_train_batches"]:
        train = train.take(cfg["max_train_batches"])
    val = rmd17_dataset(cfg["molecule"], "validation", cfg["batch"], **common)
    test = rmd17_dataset(cfg["molecule"], "test", max(cfg["batch"], 32), **common)
    return train, val, test


def compile_args(cfg, steps_per_epoch):
    import keras

    from keras_relaxeq.models.equiformer import l2_mae

    total = cfg["epochs"] * steps_per_epoch
    warmup = cfg["warmup_epochs"] * steps_per_epoch
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0 if warmup else cfg["lr"], total - warmup, warmup_target=cfg["lr"] if warmup else None, warmup_steps=warmup
    )
    return dict(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=cfg["weight_decay"]),
        loss={"energy": "mae", "forces": l2_mae},
        loss_weights={"energy": cfg["energy_weight"], "forces": cfg["force_weight"]},
        metrics={
            "energy": [keras.metrics.MeanAbsoluteError(name="mae")],
            "forces": [keras.metrics.MeanAbsoluteError(name="mae")],
        },
    )


def build_model(cfg):
    from keras_relaxeq.models.equiformer import equiformer

    relaxation = None
    if cfg["relaxed"]:
        relaxation = {"relaxed": True}
        if cfg["relaxation_kind"] == "position_mlp":
            relaxation["equivariance_penalty"] = cfg["penalty"]
            relaxation["rotation_degrees"] = cfg["angle"]
    return equiformer(
        width=cfg["width"],
        num_blocks=cfg["blocks"],
        relaxation=relaxation,
        relaxation_kind=cfg["relaxation_kind"],
        lambda_lie=cfg["lambda_lie"],
        lambda_proj=cfg["lambda_proj"],
        name=f"equiformer_{cfg['molecule']}",
    )


def test_metrics(model, test, scale):
    """Energy and force MAE of ``model`` on ``test`` (standardised targets), in meV and meV/Å."""
    import numpy as np

    e_err, f_err = [], []
    for x, y in test:
        out = model(x, training=False)
        e_err.append(np.abs(np.asarray(out["energy"]) - np.asarray(y["energy"])))
        f_err.append(np.abs(np.asarray(out["forces"]) - np.asarray(y["forces"])).reshape(-1))
    to_mev = scale * KCAL_MOL_TO_MEV
    return {
        "energy_mae_mev": float(np.mean(np.concatenate(e_err)) * to_mev),
        "force_mae_mev_per_angstrom": float(np.mean(np.concatenate(f_err)) * to_mev),
        "frames": int(sum(len(e) for e in e_err)),
    }


def e3_errors(model, x, seed=0):
    """Relative energy change and force error under a random rotation + reflection + translation."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q = -q if np.linalg.det(q) > 0 else q  # an improper rotation: O(3), reflections included
    shift = rng.normal(size=(1, 1, 3))
    moved = {k: v for k, v in x.items() if k != "neighbors"}  # the radius graph is recomputed from the positions
    moved["positions"] = tf.constant(np.asarray(x["positions"]) @ q.T + shift, tf.float32)
    base = model({k: v for k, v in x.items() if k != "neighbors"}, training=False)
    out = model(moved, training=False)
    f0 = np.asarray(base["forces"]) @ q.T
    scale_e = float(np.max(np.abs(np.asarray(base["energy"])))) or 1.0
    scale_f = float(np.max(np.abs(f0))) or 1.0
    return {
        "energy_relative_error": float(
            np.max(np.abs(np.asarray(out["energy"]) - np.asarray(base["energy"]))) / scale_e
        ),
        "force_relative_error": float(np.max(np.abs(np.asarray(out["forces"]) - f0)) / scale_f),
    }


# ----------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    cfg = resolve_config(args)
    strategy = make_strategy(cfg)
    out, backup_dir, write_dir = prepare_output_dir(cfg, strategy)
    start = time.time()

    import keras

    from keras_relaxeq.datasets.rmd17 import rmd17_target_scaler
    from keras_relaxeq.training.backup import CountedDataset
    from keras_relaxeq.training.callbacks import ProjectedValidation, plot_history
    from keras_relaxeq.training.schedules import ThetaScheduler

    keras.utils.set_random_seed(cfg["seed"])
    scaler = rmd17_target_scaler(cfg["molecule"], cfg["labels"], split_seed=cfg["split_seed"], data_dir=cfg["data_dir"])
    train, val, test = make_datasets(cfg)
    steps = int(train.cardinality())
    passes = {"train": CountedDataset(train)}
    model = build_model(cfg)
    model(next(iter(val))[0])  # built before fit (BackupAndRestore restores into built variables)
    model.compile(**compile_args(cfg, steps), run_eagerly=cfg["run_eagerly"])

    previous = read_csv_history(out / "log.csv")
    finite = [v for v in previous.get("projected_val_loss", []) if math.isfinite(v)]
    best_so_far = min(finite) if finite else None
    projected_val = ProjectedValidation(
        val,
        every=cfg["eval_every"],
        loss=compile_args(cfg, steps)["loss"],
        loss_weights=compile_args(cfg, steps)["loss_weights"],
        metrics=[],
        monitor="projected_val_loss",
        mode="min",
        best_path=write_dir / "best_projected.keras",
        initial_best=best_so_far,
    )
    callbacks = []
    if cfg["relaxed"]:
        clock = cfg.get("theta_epochs") or cfg["epochs"]
        callbacks.append(ThetaScheduler(cfg["schedule"], epochs=clock, value=cfg["theta_value"]))
    callbacks.append(projected_val)
    tail, tensorboard = run_callbacks(
        write_dir,
        backup_dir,
        monitor="projected_val_loss",
        mode="min",
        initial_best=best_so_far,
        strategy=strategy,
        recipe=RECIPE,
        config=cfg,
        datasets=passes,
    )
    callbacks += tail
    fit = model.fit(
        passes["train"].dataset, epochs=cfg["epochs"], callbacks=callbacks, verbose=cfg["verbose"], shuffle=False
    )

    best_path = write_dir / "best_projected.keras"
    projected_val.set_model(model)
    if best_path.exists():
        best = keras.saving.load_model(best_path, compile=False)
    else:
        projected_val.evaluate()
        best = projected_val.projected
    best.save(write_dir / "projected.keras")
    metrics = test_metrics(best, test, scaler.scale)
    x_check, _ = next(iter(test))
    equivariance = e3_errors(best, {k: v[:8] for k, v in x_check.items()}, seed=cfg["seed"])

    history = read_csv_history(write_dir / "log.csv")
    pv = history.get("projected_val_loss", [])
    scored = [(v, i) for i, v in enumerate(pv) if math.isfinite(v)]
    best_val, best_idx = min(scored) if scored else (None, None)
    summary = {
        "recipe": RECIPE,
        "config": cfg,
        "molecule": cfg["molecule"],
        "relaxed": cfg["relaxed"],
        "epochs_run": len(history.get("epoch", [])),
        "epochs_this_invocation": len(fit.epoch),
        "steps_per_epoch": steps,
        "best_projected_val_loss": best_val,
        "best_epoch": None if best_idx is None else int(history["epoch"][best_idx]) + 1,
        "target_scaler": scaler.get_config(),
        **metrics,
        "e3_equivariance": equivariance,
        "params": {"trained_model": int(model.count_params()), "projected_model": int(best.count_params())},
        "wall_time_seconds": time.time() - start,
        "strategy": cfg["strategy"],
        "num_replicas": int(strategy.num_replicas_in_sync),
        "files": {"projected_model": "projected.keras", **RUN_FILES},
        "tensorboard": tensorboard,
    }
    write_summary(write_dir, summary)
    plot_history(history, write_dir / "history.png", title=f"MD17 {cfg['molecule']}", metric="loss")
    if cfg["verbose"]:
        print(
            f"{cfg['molecule']} ({'relaxed' if cfg['relaxed'] else 'standard'}): energy MAE "
            f"{metrics['energy_mae_mev']:.2f} meV, force MAE {metrics['force_mae_mev_per_angstrom']:.2f} meV/Å "
            f"on {metrics['frames']} test frames; E(3) errors {equivariance}; summary: {out / 'summary.json'}"
        )
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
