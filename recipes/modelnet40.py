#!/usr/bin/env python
"""ModelNet40 classification with a relaxed vector-neuron network (docs/method.md section 9).

    python recipes/modelnet40.py --model vn_pointnet --output-dir runs/vn_pointnet
    python recipes/modelnet40.py --model vn_dgcnn --output-dir runs/vn_dgcnn --schedule triangle
    python recipes/modelnet40.py --model vn_classifier --epochs 2 --max-train-samples 64 \
        --points 64 --width 0.25 --output-dir /tmp/quick
    python recipes/modelnet40.py --model vn_dgcnn --strategy mirrored     # all GPUs of this machine
    TF_CONFIG=... python recipes/modelnet40.py --strategy multiworker --output-dir /shared/run  # every host

``--strategy {default,mirrored,multiworker}`` (``keras_relaxeq.training.distribute``, see
docs/distributed.md): ``--batch`` is the *global* batch size; only the chief writes the
output directory (the other workers write to private temporary directories).

Each ``--model`` has the published defaults (``CONFIGS``); every option overrides them.
Training selects on the validation split carved from the training files
(``modelnet40_dataset(split="val")``), never on the test set.  The output directory gets:

* ``backup/``            ``MultiWorkerBackupAndRestore`` state: re-running the same command resumes a
                         killed run (or extends a finished one when ``--epochs`` grows);
                         ``--fresh`` starts over, ``--resume`` insists on a backup;
* ``log.csv``            per-epoch loss, accuracy, val accuracy, projected val accuracy,
                         theta and both penalties (CSVLogger, appended on resume);
* ``logs/``              TensorBoard (same quantities);
* ``best_relaxed.keras`` ``ModelCheckpoint`` of the relaxed model at the best projected val
                         accuracy, ``best_projected.keras`` its projection;
* ``projected.keras``    the final projected (exactly equivariant) model;
* ``summary.json``       ``recipe`` (this script, read by ``relaxeq zoo publish``), config,
                         strategy and number of replicas, epochs run, final and best
                         projected val accuracy, rotation-invariance error, wall time,
                         parameter counts;
* ``history.png``        accuracy / theta / penalties vs epoch.
"""

from __future__ import annotations

import argparse
import copy
import importlib
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

MODELS = ("vn_pointnet", "vn_dgcnn", "vn_classifier")
#: this recipe, as recorded in summary.json (``relaxeq zoo publish`` reads it)
RECIPE = "recipes/modelnet40.py"

#: published defaults per zoo entry (docs/method.md sections 4, 5 and 9)
CONFIGS = {
    "vn_pointnet": dict(
        epochs=200,
        batch=24,
        optimizer="adam",
        lr=1e-3,
        weight_decay=1e-4,
        momentum=0.9,
        lr_schedule="step",
        lr_step=20,
        lr_gamma=0.7,
        lr_min=0.0,
        label_smoothing=0.0,
        k=20,
        width=1.0,
        lambda_lie=0.01,
        lambda_proj=0.01,
        penalty_scale="none",
        relaxation_initializer="zeros",
        schedule="triangle",
    ),
    "vn_dgcnn": dict(
        epochs=250,
        batch=32,
        optimizer="sgd",
        lr=0.1,
        weight_decay=1e-4,
        momentum=0.9,
        lr_schedule="cosine",
        lr_step=20,
        lr_gamma=0.7,
        lr_min=1e-3,
        label_smoothing=0.2,
        k=20,
        width=1.0,
        lambda_lie=0.0005,
        lambda_proj=0.0005,
        penalty_scale="theta",
        relaxation_initializer=None,
        schedule="triangle",
    ),
    # the small demo classifier: PointNet-like training, for quick runs and tests
    "vn_classifier": dict(
        epochs=200,
        batch=24,
        optimizer="adam",
        lr=1e-3,
        weight_decay=1e-4,
        momentum=0.9,
        lr_schedule="step",
        lr_step=20,
        lr_gamma=0.7,
        lr_min=0.0,
        label_smoothing=0.0,
        k=10,
        width=1.0,
        lambda_lie=0.01,
        lambda_proj=0.01,
        penalty_scale="none",
        relaxation_initializer="zeros",
        schedule="triangle",
    ),
}

NUM_CLASSES = 40


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    d = None  # model-dependent defaults are filled in from CONFIGS
    p.add_argument("--model", choices=MODELS, default="vn_pointnet")
    g = p.add_argument_group("training (default: the published value for --model)")
    g.add_argument("--epochs", type=int, default=d)
    g.add_argument("--batch", type=int, default=d, help="batch size")
    g.add_argument("--optimizer", choices=("adam", "sgd"), default=d)
    g.add_argument("--lr", type=float, default=d, help="initial learning rate")
    g.add_argument(
        "--weight-decay", type=float, default=d, help="weight decay (Keras' decoupled form, lr * wd * w per step)"
    )
    g.add_argument("--momentum", type=float, default=d, help="SGD momentum")
    g.add_argument(
        "--lr-schedule",
        choices=("step", "cosine", "constant"),
        default=d,
        help="per-epoch LearningRateScheduler: StepLR or cosine annealing to --lr-min",
    )
    g.add_argument("--lr-step", type=int, default=d, help="StepLR step size (epochs)")
    g.add_argument("--lr-gamma", type=float, default=d, help="StepLR factor")
    g.add_argument("--lr-min", type=float, default=d, help="cosine end learning rate")
    g.add_argument("--label-smoothing", type=float, default=d)
    g = p.add_argument_group("relaxation (docs/method.md sections 4-5)")
    g.add_argument(
        "--relaxed",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="train with relaxation branches (--no-relaxed: the plain equivariant model)",
    )
    g.add_argument("--schedule", choices=("triangle", "decay", "constant", "cosine"), default=d, help="theta schedule")
    g.add_argument("--theta-value", type=float, default=0.1, help="theta of --schedule constant")
    g.add_argument("--theta-per-step", action="store_true", help="update theta at every batch")
    g.add_argument(
        "--theta-epochs",
        type=int,
        default=None,
        metavar="N",
        help="length of the theta clock in epochs (default: --epochs); the schedule reaches 0 "
        "at epoch N-1 and stays there. The reference code's clock is 200 epochs whatever "
        "the run's length: --theta-epochs 200 reproduces it in a shorter run",
    )
    g.add_argument("--lambda-lie", type=float, default=d)
    g.add_argument("--lambda-proj", type=float, default=d)
    g.add_argument("--penalty-scale", choices=("none", "theta"), default=d)
    g.add_argument("--relaxation-initializer", default=d, help="branch initializer (default: the model's)")
    g = p.add_argument_group("model and data")
    g.add_argument("--k", type=int, default=d, help="kNN neighbours")
    g.add_argument("--width", type=float, default=d, help="channel multiplier")
    g.add_argument("--points", type=int, default=300, help="points per shape")
    g.add_argument(
        "--point-sampling",
        choices=("random", "first"),
        default="random",
        help="random: a new random subset of --points of each shape's points every epoch; "
        "first: always the first --points points (the reference PyTorch code)",
    )
    g.add_argument(
        "--rotation",
        choices=("so3", "z", "none"),
        default="so3",
        help="random rotation per shape (train and validation)",
    )
    g.add_argument(
        "--data-dir", default=None, help="ModelNet40 folder (default: $KERAS_RELAXEQ_DATA or the shared copy)"
    )
    g.add_argument("--val-fraction", type=float, default=0.2, help="validation split carved from train")
    g.add_argument("--split-seed", type=int, default=0)
    g.add_argument("--train-fraction", type=float, default=None, help="use this fraction of the training split")
    g.add_argument("--max-train-samples", type=int, default=None, help="cap on training shapes per epoch")
    g.add_argument("--max-val-samples", type=int, default=None, help="cap on validation shapes")
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("evaluation and output")
    g.add_argument("--eval-every", type=int, default=1, help="projected validation every N epochs")
    g.add_argument(
        "--relaxed-val",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also validate the relaxed model each epoch (Keras val_loss / val_accuracy)",
    )
    g.add_argument(
        "--bn-reestimate",
        type=int,
        default=None,
        metavar="N",
        help="re-estimate BatchNorm statistics of the projected model on N training batches (off by default)",
    )
    g.add_argument("--invariance-samples", type=int, default=16, help="shapes for the invariance check")
    g.add_argument("--output-dir", default="runs/modelnet40")
    rg = g.add_mutually_exclusive_group()
    rg.add_argument(
        "--resume",
        action="store_true",
        help="require a backup in --output-dir and continue from it (the default is to resume when one exists)",
    )
    rg.add_argument("--fresh", action="store_true", help="delete the backup and logs and start over")
    g.add_argument("--verbose", type=int, default=1, help="Keras fit verbosity (1: progress bar)")
    g.add_argument(
        "--jit-compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="XLA-compile the training step. auto: on with one replica, also on CPU where "
        "Keras' own 'auto' leaves XLA off (1.4-1.9x faster steps here, "
        "benchmarks/README_vn_models.md); off under a multi-replica tf.distribute strategy",
    )
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
    """The effective configuration: CONFIGS[model] overridden by the given options."""
    cfg = copy.deepcopy(CONFIGS[args.model])
    for key, value in vars(args).items():
        if value is not None or key not in cfg:
            cfg[key] = value
    if cfg["epochs"] < 1 or cfg["batch"] < 1:
        raise SystemExit("--epochs and --batch must be >= 1")
    if cfg.get("theta_epochs") is not None and cfg["theta_epochs"] < 1:
        raise SystemExit("--theta-epochs must be >= 1 (or leave it out: the run's --epochs)")
    check_strategy_options(cfg)
    return cfg


# ----------------------------------------------------------------------------- pieces


def learning_rate_fn(cfg):
    lr, epochs = float(cfg["lr"]), int(cfg["epochs"])
    kind = cfg["lr_schedule"]
    if kind == "step":  # torch StepLR(step_size, gamma)
        return lambda epoch: lr * cfg["lr_gamma"] ** (epoch // cfg["lr_step"])
    if kind == "cosine":  # torch CosineAnnealingLR(T_max=epochs, eta_min=lr_min)
        lo = float(cfg["lr_min"])
        return lambda epoch: lo + (lr - lo) * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    return lambda epoch: lr


def theta_scheduler(cfg):
    """The run's ``ThetaScheduler``: ``--schedule`` on a clock of ``--theta-epochs`` (default ``--epochs``)."""
    from keras_relaxeq.training.schedules import ThetaScheduler

    return ThetaScheduler(
        cfg["schedule"],
        epochs=cfg.get("theta_epochs") or cfg["epochs"],
        per_step=cfg["theta_per_step"],
        value=cfg["theta_value"],
    )


def make_loss(cfg):
    """The task loss on one-hot labels (relaxation_report.py --gradients uses it too)."""
    import keras

    return keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=cfg["label_smoothing"])


def make_optimizer(cfg):
    import keras

    wd = cfg["weight_decay"] or None
    if cfg["optimizer"] == "sgd":
        return keras.optimizers.SGD(cfg["lr"], momentum=cfg["momentum"], weight_decay=wd)
    return keras.optimizers.Adam(cfg["lr"], weight_decay=wd)


def build_model(cfg):
    """The zoo architecture ``cfg["model"]``, imported lazily by name."""
    name = cfg["model"]
    builder = getattr(importlib.import_module(f"keras_relaxeq.models.{name}"), name)
    kwargs = dict(
        relaxed=cfg["relaxed"],
        lambda_lie=cfg["lambda_lie"],
        lambda_proj=cfg["lambda_proj"],
        penalty_scale=cfg["penalty_scale"],
    )
    if cfg.get("relaxation_initializer"):
        kwargs["relaxation_initializer"] = cfg["relaxation_initializer"]
    if name == "vn_classifier":
        channels = tuple(max(2, int(round(c * cfg["width"]))) for c in (16, 32, 64))
        return builder(
            NUM_CLASSES,
            num_points=cfg["points"],
            channels=channels,
            k=cfg["k"],
            hidden_units=max(8, int(round(64 * cfg["width"]))),
            **kwargs,
        )
    if name == "vn_pointnet":
        return builder(num_classes=NUM_CLASSES, num_points=cfg["points"], k=cfg["k"], width=cfg["width"], **kwargs)
    return builder(num_classes=NUM_CLASSES, num_points=cfg["points"], k=cfg["k"], width=cfg["width"], **kwargs)


def make_datasets(cfg):
    import tensorflow as tf

    from keras_relaxeq.datasets.modelnet40 import modelnet40_dataset, recipe_validation_dataset

    common = dict(
        num_points=cfg["points"],
        rotation=cfg["rotation"],
        data_dir=cfg["data_dir"],
        val_fraction=cfg["val_fraction"],
        split_seed=cfg["split_seed"],
        point_sampling=cfg.get("point_sampling") or "random",
    )
    train = modelnet40_dataset("train", batch_size=cfg["batch"], seed=cfg["seed"], **common)
    val = recipe_validation_dataset(cfg, data_dir=cfg["data_dir"])  # relaxeq zoo publish measures on this same split
    # the same training distribution without augmentation for the BN re-estimation
    bn = modelnet40_dataset(
        "train", batch_size=cfg["batch"], seed=cfg["seed"] + 2, augment=False, shuffle=True, **common
    )
    n_train = int(train.cardinality()) * cfg["batch"]
    if cfg.get("train_fraction"):
        n_train = min(n_train, max(cfg["batch"], int(n_train * cfg["train_fraction"])))
    if cfg.get("max_train_samples"):
        n_train = min(n_train, int(cfg["max_train_samples"]))
    train_batches = max(1, n_train // cfg["batch"])
    train = train.take(train_batches)  # the shuffle differs per epoch, so a subset is redrawn each epoch
    if cfg.get("max_val_samples"):
        val_batches = int(val.cardinality())
        n_val = int(cfg["max_val_samples"])
        val = val.unbatch().take(n_val).batch(cfg["batch"])
        if n_val <= (val_batches - 1) * cfg["batch"]:  # surely n_val shapes: keep the cardinality known
            val = val.apply(tf.data.experimental.assert_cardinality(-(-n_val // cfg["batch"])))
    depth = NUM_CLASSES

    def one_hot(x, y):  # one-hot targets for CategoricalCrossentropy(label_smoothing)
        return x, tf.one_hot(tf.cast(y, tf.int32), depth)

    train = train.map(one_hot)
    val = val.map(one_hot).cache()
    return train, val, bn, train_batches * cfg["batch"]


def _finite(values):
    return [v for v in values if isinstance(v, float) and math.isfinite(v)]


# ----------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    cfg = resolve_config(args)
    # the first TensorFlow call (MultiWorkerMirroredStrategy configures collectives at start-up)
    strategy = make_strategy(cfg)
    dist = _dist()
    chief = dist.is_chief(strategy)
    out, backup_dir, write_dir = prepare_output_dir(cfg, strategy)  # --fresh / --resume
    start = time.time()

    import keras
    import numpy as np

    from keras_relaxeq.testing import check_equivariance
    from keras_relaxeq.training.backup import CountedDataset
    from keras_relaxeq.training.callbacks import ProjectedValidation, plot_history

    cfg["batch"] = dist.global_batch_size(cfg["batch"], strategy)  # --batch is the global batch size
    keras.utils.set_random_seed(cfg["seed"])
    train, val, bn_data, n_train = make_datasets(cfg)
    # passes counted: a resumed run replays them, so its epoch E sees the shapes, points and rotations of
    # epoch E of an unbroken run (the validation pipeline draws the same elements on every pass)
    passes = {"train": CountedDataset(train)}
    # AutoShardPolicy.DATA: worker i keeps slice i of every global batch (the batches of one worker)
    train, val = dist.shard_dataset(passes["train"].dataset, "data"), dist.shard_dataset(val, "data")
    with strategy.scope():  # model, optimizer, metrics (and penalties) are created on every replica
        model = build_model(cfg)
        model.compile(
            optimizer=make_optimizer(cfg),
            loss=make_loss(cfg),
            metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
            jit_compile=use_xla(cfg["jit_compile"], strategy),
        )
    dist.prepare_model(model, strategy)  # Keras 3.15 multi-worker workarounds (no-op otherwise)
    # the projected model of ProjectedValidation is built in the callback, outside the strategy
    # scope (one device, full validation set on every worker): its metrics too
    metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]

    csv_path = write_dir / "log.csv"
    previous = read_csv_history(out / "log.csv")  # the shared log: same initial best on every worker
    best_so_far = max(_finite(previous.get("projected_val_accuracy", [])), default=None)
    projected_val = ProjectedValidation(
        val,
        every=cfg["eval_every"],
        bn_reestimate=cfg["bn_reestimate"],
        bn_data=bn_data if cfg["bn_reestimate"] else None,
        metrics=metrics,
        best_path=write_dir / "best_projected.keras",
        initial_best=best_so_far,
    )
    callbacks = [
        theta_scheduler(cfg),
        keras.callbacks.LearningRateScheduler(learning_rate_fn(cfg)),
        projected_val,  # before everything that reads projected_val_accuracy
    ]
    tail, tensorboard = run_callbacks(
        write_dir,
        backup_dir,
        monitor="projected_val_accuracy",
        mode="max",
        initial_best=best_so_far,
        strategy=strategy,
        recipe=RECIPE,
        config=cfg,  # recorded with each backup; another run's is refused
        datasets=passes,
    )
    callbacks += tail
    fit_history = model.fit(
        train,
        validation_data=val if cfg["relaxed_val"] else None,
        epochs=cfg["epochs"],
        callbacks=callbacks,
        verbose=cfg["verbose"],
        shuffle=False,
    )  # the tf.data pipeline shuffles (Keras would only warn)
    epochs_this_call = len(fit_history.epoch)

    # final: projection, validation accuracy, invariance
    # (reuses the callback's projected model and its compiled evaluation function)
    projected_val.set_model(model)
    bn_batches, projected_val.bn_reestimate = projected_val.bn_reestimate, None
    final = {k[len("projected_val_") :]: v for k, v in projected_val.evaluate().items()}
    projected = projected_val.projected
    final_bn = None
    if bn_batches:
        projected_val.bn_reestimate = bn_batches
        final_bn = {k[len("projected_val_") :]: v for k, v in projected_val.evaluate().items()}
    xs = []
    for x, _ in val:
        xs.append(np.asarray(x))
        if sum(len(a) for a in xs) >= cfg["invariance_samples"]:
            break
    points = np.concatenate(xs)[: cfg["invariance_samples"]]
    report = check_equivariance(projected, points, input_reps="vector", output_reps="invariant", seed=cfg["seed"])
    projected.save(write_dir / "projected.keras")

    history = read_csv_history(csv_path)
    pva = history.get("projected_val_accuracy", [])
    finite = [(v, i) for i, v in enumerate(pva) if math.isfinite(v)]
    best_val, best_idx = max(finite) if finite else (None, None)
    summary = {
        "recipe": RECIPE,  # tells relaxeq zoo publish which recipe family made the run
        "config": {k: v for k, v in cfg.items()},
        "strategy": cfg["strategy"],
        "num_replicas": int(strategy.num_replicas_in_sync),
        "num_workers": int(dist.num_workers(strategy)),
        "xla": bool(model.jit_compile),
        "global_batch": int(cfg["batch"]),
        "epochs_run": len(history.get("epoch", [])),
        "epochs_this_invocation": epochs_this_call,
        "resumed": epochs_this_call < cfg["epochs"],
        "train_samples_per_epoch": n_train,
        "final_projected_val_accuracy": float(final["accuracy"]),
        "final_projected_val_loss": float(final["loss"]),
        "final_projected_val_accuracy_bn_reestimated": None if final_bn is None else float(final_bn["accuracy"]),
        "best_projected_val_accuracy": best_val,
        "best_epoch": None if best_idx is None else int(history["epoch"][best_idx]) + 1,
        "invariance": {
            "max_error": report.max_error,
            "mean_error": report.mean_error,
            "relative_max_error": report.max_error / max(report.scale, 1e-12),
            "output_scale": report.scale,
            "passed": bool(report.passed),
            "num_shapes": int(points.shape[0]),
            "num_rotations": report.num_samples,
        },
        "wall_time_seconds": time.time() - start,
        "params": {"trained_model": int(model.count_params()), "projected_model": int(projected.count_params())},
        "files": {"projected_model": "projected.keras", **RUN_FILES},
        "tensorboard": tensorboard,
    }
    write_summary(write_dir, summary)
    plot_history(history, write_dir / "history.png", title=f"{cfg['model']} on ModelNet40")
    dist.cleanup_worker_dir(str(write_dir), str(out), strategy)  # non-chief: throw the private copy away
    if cfg["verbose"] and chief:
        print(
            f"projected val accuracy {summary['final_projected_val_accuracy']:.4f} (best {best_val}); "
            f"invariance max error {report.max_error:.2e}; strategy {cfg['strategy']} "
            f"({summary['num_replicas']} replicas); summary: {out / 'summary.json'}"
        )
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
