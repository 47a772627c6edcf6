#!/usr/bin/env python
"""2D smoke plume forecasting with relaxed C4-steerable or scale-equivariant CNNs (docs/experiments/smoke_plume.md).

    python recipes/smoke_plume.py --arm relaxed --output-dir runs/smoke/relaxed_seed0
    python recipes/smoke_plume.py --arm rsteer_relaxed --seed 1 --output-dir runs/smoke/rsteer_relaxed_seed1
    python recipes/smoke_plume.py --arm cnn --width 0.125 --epochs 4 --max-train-batches 40 \
        --output-dir /tmp/smoke_quick                                          # a quick CPU run

Arms (``keras_relaxeq.models.smoke_plume``): ``cnn`` (plain CNN), ``equivariant`` (exactly C4-equivariant
steerable CNN), ``relaxed`` (the equivariant CNN with the method's ``theta * Conv2D`` branch on every layer),
``rsteer`` (Wang, Walters, Yu 2022: steerable coefficients that vary over kernel positions, smoothness weight
``--alpha``) and ``rsteer_relaxed`` (RSteer plus the method's branches, the paper's "RSteer + ours").

``--symmetry scale`` trains the scale task instead (issue 24, ``keras_relaxeq.models.smoke_plume_scale``: SESN
scale-equivariant layers, the same five arms, the relaxation branch on the lifting layer; data: the 38-simulation
scale set) with its published settings (``SCALE_DEFAULTS``: batch 8, Adam 1e-4, 64 hidden channels per scale,
kernel 5, alpha 1e-6); its summary reports the scale-step equivariance error of the projected model's trunk
instead of the C4 error.

Training is autoregressive as the reference: the model predicts one frame from the previous 10, the
prediction is fed back, and the loss is the MSE summed over ``--output-length`` (6) predicted frames.
Published settings (``DEFAULTS``): batch 16, Adam 1e-3 with *coupled* L2 weight decay 4e-4 (torch's Adam
``weight_decay``), learning rate x0.95 per epoch, RSteer alpha 1e-5, 92 regular hidden fields, kernel 3,
5 layers, up to 1000 epochs with early stopping once more than 100 epochs have run and the mean of the
last 5 validation RMSEs is not below the mean of the 5 before.  The relaxed arms' theta follows
``--schedule`` (triangle) on a clock of ``--theta-epochs`` epochs (default: ``--epochs``; the reference's
clock is its 1000 maximum epochs, ``--theta-epochs 1000``).

Selection and evaluation: after every epoch the *projected* model (branches dropped; for the relaxed arm
exactly C4-equivariant) is evaluated on the validation windows (6-step rollouts, ``projected_val_rmse``);
the best one is kept.  At the end it is evaluated by 20-step rollouts on ``test_future`` (training
simulations, later times) and ``test_domain`` (held-out simulations): the RMSE is the square root of the
mean over batches of the per-batch MSE over all predicted frames (the reference's definition).

The output directory gets ``backup/`` (resume: rerun the same command; ``--fresh`` starts over),
``log.csv``, ``logs/`` (TensorBoard), ``best_relaxed.keras`` (the training rollout model),
``best_projected.keras`` (the projected rollout model), ``projected.keras`` (the best projected *one-step*
forecaster ``[B, 10, 64, 64, 2] -> [B, 64, 64, 2]``, the model to export), ``summary.json`` (config, RMSEs,
per-step RMSE curves, C4 equivariance error, wall time) and ``history.png``.
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
    use_xla,
    write_summary,
)

ARMS = ("cnn", "equivariant", "relaxed", "rsteer", "rsteer_relaxed")
#: this recipe, as recorded in summary.json
RECIPE = "recipes/smoke_plume.py"
#: modules whose Keras classes this recipe's model files use (imported before loading one elsewhere)
MODEL_MODULES = ("keras_relaxeq.models.smoke_plume", "keras_relaxeq.models.smoke_plume_scale")
RELAXED_ARMS = ("relaxed", "rsteer_relaxed")

#: published settings (Wang, Walters, Yu 2022 rotation runs; Pertigkiozoglou et al. 2024)
DEFAULTS = dict(
    epochs=1000,
    batch=16,
    lr=1e-3,
    lr_decay=0.95,
    weight_decay=4e-4,
    alpha=1e-5,
    hidden=92,
    width=1.0,
    kernel=3,
    layers=5,
    output_length=6,
    test_length=20,
    lambda_lie=0.01,
    lambda_proj=0.01,
    schedule="triangle",
    early_stop_after=100,
    early_stop_window=5,
)
#: published settings of the scale task (Wang, Walters, Yu 2022 scale runs), where they differ
SCALE_DEFAULTS = dict(batch=8, lr=1e-4, alpha=1e-6, hidden=64, kernel=5)
#: the options whose default depends on --symmetry
PER_SYMMETRY = tuple(SCALE_DEFAULTS)


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    d = DEFAULTS
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--arm", choices=ARMS, default="relaxed")
    p.add_argument(
        "--symmetry",
        choices=("rotation", "scale"),
        default="rotation",
        help="the task: rotation (C4 steerable CNNs) or scale (SESN scale-equivariant CNNs)",
    )
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=d["epochs"], help="maximum epochs (early stopping may end sooner)")
    g.add_argument("--batch", type=int, default=None, help="global batch size (rotation 16, scale 8)")
    g.add_argument("--lr", type=float, default=None, help="Adam learning rate (rotation 1e-3, scale 1e-4)")
    g.add_argument("--lr-decay", type=float, default=d["lr_decay"], help="learning rate factor per epoch")
    g.add_argument(
        "--weight-decay",
        type=float,
        default=d["weight_decay"],
        help="coupled L2 weight decay (torch Adam's weight_decay): wd * w is added to the gradient",
    )
    g.add_argument(
        "--output-length",
        type=int,
        default=d["output_length"],
        help="predicted frames per training window (the loss sums their MSEs)",
    )
    g.add_argument(
        "--early-stop-after",
        type=int,
        default=d["early_stop_after"],
        metavar="N",
        help="early stopping is checked once more than N epochs have run (0: from the start)",
    )
    g.add_argument(
        "--early-stop-window",
        type=int,
        default=d["early_stop_window"],
        metavar="W",
        help="stop when the mean of the last W projected val RMSEs is not below that of the W before",
    )
    g.add_argument(
        "--max-train-batches",
        type=int,
        default=None,
        metavar="N",
        help="CPU protocol: N batches per epoch (a new shuffle every epoch) instead of all 250",
    )
    g.add_argument("--max-val-batches", type=int, default=None, metavar="N", help="cap on validation batches")
    g.add_argument("--max-test-batches", type=int, default=None, metavar="N", help="cap on test batches (each split)")
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("model")
    g.add_argument(
        "--hidden",
        type=int,
        default=None,
        help="at width 1: regular hidden fields (4 channels each; rotation, 92) or channels per scale (scale, 64)",
    )
    g.add_argument("--width", type=float, default=d["width"], help="multiplier of --hidden")
    g.add_argument("--kernel", type=int, default=None, help="odd kernel size (rotation 3, scale 5)")
    g.add_argument("--layers", type=int, default=d["layers"])
    g.add_argument(
        "--alpha",
        type=float,
        default=None,
        help="RSteer smoothness weight (alpha * mean |neighbouring coefficient differences|, per layer "
        "and per training batch; rotation 1e-5, scale 1e-6)",
    )
    g.add_argument(
        "--scale-penalty",
        choices=("step", "lie", "subspace"),
        default="step",
        help="scale task: the lifting branch's equivariance penalty (docs/scale_equivariance.md)",
    )
    g = p.add_argument_group("relaxation (docs/method.md)")
    g.add_argument("--schedule", choices=("triangle", "decay", "constant", "cosine"), default=d["schedule"])
    g.add_argument("--theta-value", type=float, default=0.1, help="theta of --schedule constant")
    g.add_argument(
        "--theta-epochs",
        type=int,
        default=None,
        metavar="N",
        help="length of the theta clock in epochs (default: --epochs)",
    )
    g.add_argument("--lambda-lie", type=float, default=d["lambda_lie"], help="weight of sqrt(C4 defect)")
    g.add_argument("--lambda-proj", type=float, default=d["lambda_proj"], help="weight of sqrt(branch size)")
    g.add_argument("--relaxation-initializer", default="zeros", help="branch kernel initializer")
    g = p.add_argument_group("data")
    g.add_argument(
        "--data-dir", default=None, help="simulation folder (default: $KERAS_RELAXEQ_CACHE/smoke_plume_<symmetry>)"
    )
    g.add_argument(
        "--generate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="simulate missing simulations with PhiFlow (pip install '.[smoke]'; about an hour)",
    )
    g.add_argument("--resolution", type=int, default=64, help="grid size of the data set (64; smaller for tests)")
    g = p.add_argument_group("evaluation and output")
    g.add_argument("--test-length", type=int, default=d["test_length"], help="rollout length of the test RMSEs")
    g.add_argument("--output-dir", default="runs/smoke_plume")
    rg = g.add_mutually_exclusive_group()
    rg.add_argument("--resume", action="store_true", help="require a backup in --output-dir and continue from it")
    rg.add_argument("--fresh", action="store_true", help="delete the backup and logs and start over")
    g.add_argument("--verbose", type=int, default=1, help="Keras fit verbosity (1: progress bar)")
    g.add_argument(
        "--jit-compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="XLA-compile the training step (auto: on with one replica)",
    )
    g = p.add_argument_group("distribution (docs/distributed.md)")
    _dist().add_strategy_argument(g)
    return p


def _dist():
    from keras_relaxeq.training import distribute

    return distribute


def resolve_config(args) -> dict:
    cfg = dict(vars(args))
    published = dict(DEFAULTS, **SCALE_DEFAULTS) if cfg["symmetry"] == "scale" else DEFAULTS
    for key in PER_SYMMETRY:
        if cfg[key] is None:
            cfg[key] = published[key]
    for key in ("epochs", "batch", "output_length", "test_length", "layers", "hidden"):
        if cfg[key] < 1:
            raise SystemExit(f"--{key.replace('_', '-')} must be >= 1")
    if cfg["kernel"] < 1 or cfg["kernel"] % 2 == 0:
        raise SystemExit("--kernel must be an odd number >= 1")
    if cfg["early_stop_window"] < 1 or cfg["early_stop_after"] < 0:
        raise SystemExit("--early-stop-window must be >= 1 and --early-stop-after >= 0")
    if cfg.get("theta_epochs") is not None and cfg["theta_epochs"] < 1:
        raise SystemExit("--theta-epochs must be >= 1 (or leave it out: the run's --epochs)")
    for key in ("max_train_batches", "max_val_batches", "max_test_batches"):
        if cfg[key] is not None and cfg[key] < 1:
            raise SystemExit(f"--{key.replace('_', '-')} must be >= 1")
    check_strategy_options(cfg)
    return cfg


# ----------------------------------------------------------------------------- pieces


def data_config(cfg):
    from keras_relaxeq.datasets.smoke_plume import smoke_plume_config

    return smoke_plume_config(cfg.get("symmetry", "rotation"), resolution=cfg["resolution"])


def make_dataset(cfg, split, *, seed=None, output_length=None, limit=None):
    """Windows of ``split`` batched with the global batch; ``limit`` caps the batches (``take``)."""
    from keras_relaxeq.datasets.smoke_plume import smoke_plume_dataset

    ds = smoke_plume_dataset(
        split,
        cfg["batch"],
        config=data_config(cfg),
        output_length=output_length,
        seed=seed,
        data_dir=cfg["data_dir"],
        generate=cfg["generate"],
        progress=bool(cfg["verbose"]),
        drop_remainder=split == "train",
    )
    return ds.take(limit) if limit else ds


def make_datasets(cfg):
    """``(train, val)`` as the run trains and validates on them (``recipes/relaxation_report.py`` reads them)."""
    train = make_dataset(
        cfg, "train", seed=cfg["seed"], output_length=cfg["output_length"], limit=cfg["max_train_batches"]
    )
    return train, make_dataset(cfg, "val", output_length=cfg["output_length"], limit=cfg["max_val_batches"])


def make_loss(cfg):
    from keras_relaxeq.models.smoke_plume import summed_frame_mse

    return summed_frame_mse


def build_model(cfg):
    """The training model: the arm's one-step forecaster unrolled over ``--output-length`` frames."""
    from keras_relaxeq.models.smoke_plume import rollout_model, smoke_plume_forecaster

    common = dict(
        grid=cfg["resolution"],
        hidden=cfg["hidden"],
        width=cfg["width"],
        kernel_size=cfg["kernel"],
        num_layers=cfg["layers"],
        alpha=cfg["alpha"] / cfg["output_length"],  # once per batch, not per step
        relaxation_initializer=cfg["relaxation_initializer"],
        lambda_lie=cfg["lambda_lie"],
        lambda_proj=cfg["lambda_proj"],
    )
    if cfg.get("symmetry", "rotation") == "scale":
        from keras_relaxeq.models.smoke_plume_scale import smoke_plume_scale_forecaster

        forecaster = smoke_plume_scale_forecaster(
            cfg["arm"], scale_penalty=cfg["scale_penalty"], name=f"smoke_plume_scale_{cfg['arm']}", **common
        )
    else:
        forecaster = smoke_plume_forecaster(cfg["arm"], name=f"smoke_plume_{cfg['arm']}", **common)
    return rollout_model(forecaster, steps=cfg["output_length"])


def make_optimizer(cfg):
    from keras_relaxeq.training.optimizers import AdamL2

    return AdamL2(cfg["lr"], l2=cfg["weight_decay"])


def early_stopping(cfg, previous):
    """The reference's rule on the projected validation RMSE, continuing the history of a resumed run."""
    from keras_relaxeq.training.callbacks import WindowedEarlyStopping

    return WindowedEarlyStopping(
        "projected_val_rmse",
        window=cfg["early_stop_window"],
        min_epochs=cfg["early_stop_after"],
        mode="min",
        initial_history=previous.get("projected_val_rmse", []),
    )


def c4_equivariance(forecaster, frames):
    """Relative C4 equivariance error of the one-step forecaster (every element, grid and vector components)."""
    from keras_relaxeq.groups.cyclic import FieldType
    from keras_relaxeq.testing.cyclic import check_cyclic_equivariance

    vector = FieldType.vector(4)
    report = check_cyclic_equivariance(forecaster, frames, vector, vector, atol=0.0)
    return {
        "max_error": float(report.max_error),
        "relative_max_error": float(report.max_error / max(report.scale, 1e-12)),
        "output_scale": float(report.scale),
        "num_windows": int(frames.shape[0]),
    }


def scale_equivariance(forecaster, cfg, seed=0):
    """Scale-step error of the one-step forecaster's scale-space trunk (every layer up to the last scale-space
    output, before the finest slice is read): a smooth random field sampled at spacing 1 and 2, slices
    ``sigma = 1`` (coarse) against ``sigma = 2`` (fine), as ``keras_relaxeq.testing.scale`` checks layers
    (``trunk_scale_step_error``, also what the zoo publishes).  None for the plain CNN (no scale axis)."""
    from keras_relaxeq.testing.scale import trunk_scale_step_error

    check = trunk_scale_step_error(forecaster, cfg["layers"], cfg["kernel"], seed=seed)
    if check is None:
        return None
    return {"factor": 2.0, "pairs": [list(p) for p in check.pairs], "relative_max_error": check.max_error}


# ----------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    cfg = resolve_config(args)
    strategy = make_strategy(cfg)
    dist = _dist()
    chief = dist.is_chief(strategy)
    out, backup_dir, write_dir = prepare_output_dir(cfg, strategy)
    start = time.time()

    import keras
    import numpy as np

    from keras_relaxeq.models.smoke_plume import forecaster_of, rollout_rmse, summed_frame_mse
    from keras_relaxeq.training.backup import CountedDataset
    from keras_relaxeq.training.callbacks import ProjectedValidation, plot_history
    from keras_relaxeq.training.schedules import ThetaScheduler

    cfg["batch"] = dist.global_batch_size(cfg["batch"], strategy)
    keras.utils.set_random_seed(cfg["seed"])
    train, val = make_datasets(cfg)
    val = val.cache()
    passes = {"train": CountedDataset(train)}
    train = dist.shard_dataset(passes["train"].dataset, "data")
    with strategy.scope():
        model = build_model(cfg)
        model.compile(
            optimizer=make_optimizer(cfg),
            loss=summed_frame_mse,
            metrics=[keras.metrics.RootMeanSquaredError(name="rmse")],
            jit_compile=use_xla(cfg["jit_compile"], strategy),
        )
    dist.prepare_model(model, strategy)
    relaxed = cfg["arm"] in RELAXED_ARMS

    previous = read_csv_history(out / "log.csv")
    finite = [v for v in previous.get("projected_val_rmse", []) if math.isfinite(v)]
    best_so_far = min(finite) if finite else None
    projected_val = ProjectedValidation(
        val,
        loss=summed_frame_mse,
        metrics=[keras.metrics.RootMeanSquaredError(name="rmse")],
        monitor="projected_val_rmse",
        mode="min",
        best_path=write_dir / "best_projected.keras",
        initial_best=best_so_far,
    )
    lr, decay = cfg["lr"], cfg["lr_decay"]
    callbacks = [keras.callbacks.LearningRateScheduler(lambda epoch: lr * decay**epoch)]
    if relaxed:
        callbacks.insert(
            0,
            ThetaScheduler(cfg["schedule"], epochs=cfg.get("theta_epochs") or cfg["epochs"], value=cfg["theta_value"]),
        )
    stopper = early_stopping(cfg, previous)
    callbacks += [projected_val, stopper]
    tail, tensorboard = run_callbacks(
        write_dir,
        backup_dir,
        monitor="projected_val_rmse",
        mode="min",
        initial_best=best_so_far,
        strategy=strategy,
        recipe=RECIPE,
        config=cfg,
        datasets=passes,
    )
    callbacks += tail
    epochs_logged = len(previous.get("epoch", []))
    if stopper.should_stop(epochs_logged) and (write_dir / "best_projected.keras").exists():
        epochs_trained = 0  # an early-stopped run that is run again: evaluate it, train no further epoch
    else:
        fit = model.fit(
            train, validation_data=val, epochs=cfg["epochs"], callbacks=callbacks, verbose=cfg["verbose"], shuffle=False
        )
        epochs_trained = len(fit.epoch)

    # the best projected model (by validation RMSE), evaluated by 20-step rollouts on both test splits
    best_path = write_dir / "best_projected.keras"
    best = keras.saving.load_model(best_path, compile=False) if best_path.exists() else projected_val.projected
    forecaster = forecaster_of(best)
    tests = {}
    for split in ("test_future", "test_domain"):
        data = make_dataset(cfg, split, output_length=cfg["test_length"], limit=cfg["max_test_batches"])
        tests[split] = rollout_rmse(forecaster, data, progress=bool(cfg["verbose"]) and chief)
    if cfg.get("symmetry", "rotation") == "scale":
        equivariance = {"scale_equivariance": scale_equivariance(forecaster, cfg)}
    else:
        sample = next(iter(data))[0][:4]  # the first held-out windows (test_domain), for the C4 check
        equivariance = {"c4_equivariance": c4_equivariance(forecaster, np.asarray(sample))}
    forecaster.save(write_dir / "projected.keras")

    history = read_csv_history(write_dir / "log.csv")
    pv = history.get("projected_val_rmse", [])
    scored = [(v, i) for i, v in enumerate(pv) if math.isfinite(v)]
    best_val, best_idx = min(scored) if scored else (None, None)
    summary = {
        "recipe": RECIPE,
        "config": cfg,
        "arm": cfg["arm"],
        "strategy": cfg["strategy"],
        "num_replicas": int(strategy.num_replicas_in_sync),
        "epochs_run": len(history.get("epoch", [])),
        "epochs_this_invocation": epochs_trained,
        "early_stopped": len(history.get("epoch", [])) < cfg["epochs"],
        "best_projected_val_rmse": best_val,
        "best_epoch": None if best_idx is None else int(history["epoch"][best_idx]) + 1,
        "rmse_future": tests["test_future"]["rmse"],
        "rmse_domain": tests["test_domain"]["rmse"],
        "rmse_per_step": {k: v["rmse_per_step"] for k, v in tests.items()},
        "test_windows": {k: v["num_windows"] for k, v in tests.items()},
        **equivariance,
        "params": {"trained_model": int(model.count_params()), "projected_forecaster": int(forecaster.count_params())},
        "wall_time_seconds": time.time() - start,
        "files": {"projected_forecaster": "projected.keras", **RUN_FILES},
        "tensorboard": tensorboard,
    }
    write_summary(write_dir, summary)
    title = f"smoke plume ({cfg.get('symmetry', 'rotation')}), {cfg['arm']}"
    plot_history(history, write_dir / "history.png", title=title, metric="rmse")
    dist.cleanup_worker_dir(str(write_dir), str(out), strategy)
    if cfg["verbose"] and chief:
        ((kind, check),) = equivariance.items()
        error = "n/a (no scale axis)" if check is None else f"{check['relative_max_error']:.1e}"
        print(
            f"{cfg['arm']}: RMSE future {summary['rmse_future']:.4f}, domain {summary['rmse_domain']:.4f} "
            f"(best projected val RMSE {best_val}); {kind.replace('_', ' ')} relative error {error}; "
            f"summary: {out / 'summary.json'}"
        )
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
