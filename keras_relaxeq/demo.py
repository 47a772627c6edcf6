"""Demo: train a relaxed vector-neuron classifier on rotated synthetic shapes, then project it.

Run ``make demo`` (or ``python -m keras_relaxeq.demo --help``).  Needs no download:
the data are point clouds of parametric shapes under random SO(3) rotations.
Prints the accuracy of the projected model and the rotation-invariance error of
the relaxed model (branch active) and of the projected model.
"""

from __future__ import annotations

import argparse
import json
import time

import keras
import tensorflow as tf

import keras_relaxeq as kr
from keras_relaxeq.datasets.shapes import CLASSES, make_shapes
from keras_relaxeq.models import vn_classifier


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--train-samples", type=int, default=960)
    p.add_argument("--test-samples", type=int, default=480)
    p.add_argument("--points", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--schedule", default="triangle", choices=kr.training.SCHEDULES)
    p.add_argument("--lambda-lie", type=float, default=0.01)
    p.add_argument("--lambda-proj", type=float, default=0.01)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-relaxed", dest="relaxed", action="store_false", help="train the plain model")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--verbose", type=int, default=1, help="Keras fit verbosity (1: progress bar)")
    return p.parse_args(argv)


def invariance(model, points, seed=0):
    return kr.testing.check_invariance(model, tf.constant(points), "vector", num_samples=2, seed=seed)


def main(argv=None):
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    start = time.time()
    x_train, y_train = make_shapes(args.train_samples, args.points, rotation="so3", seed=args.seed)
    x_test, y_test = make_shapes(args.test_samples, args.points, rotation="so3", seed=args.seed + 10_000)
    print(
        f"Data: {len(x_train)} train / {len(x_test)} test clouds of {args.points} points, "
        f"{len(CLASSES)} classes {CLASSES}, random SO(3) rotations."
    )

    model = vn_classifier(
        len(CLASSES),
        num_points=args.points,
        relaxed=args.relaxed,
        lambda_lie=args.lambda_lie,
        lambda_proj=args.lambda_proj,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(args.lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    print(
        f"Model: {model.count_params():,} parameters "
        f"({'relaxed' if args.relaxed else 'plain'}; projected: "
        f"{vn_classifier(len(CLASSES), num_points=args.points, relaxed=False).count_params():,})."
    )
    history = model.fit(
        x_train,
        y_train,
        epochs=args.epochs,
        batch_size=args.batch,
        verbose=args.verbose,
        callbacks=[kr.ThetaScheduler(args.schedule)],
    )

    probe = x_test[:32]
    results = {"theta_per_epoch": history.history.get("theta", [])}
    if args.relaxed:
        final_theta = kr.get_theta(model)
        kr.set_theta(model, 1.0)
        relaxed_report = invariance(model, probe)
        kr.set_theta(model, final_theta)
        results["relaxed_theta1_invariance_max_error"] = relaxed_report.max_error
        results["relaxed_theta1_invariance_mean_error"] = relaxed_report.mean_error
    projected = kr.project(model)
    projected.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    _, acc = projected.evaluate(x_test, y_test, batch_size=args.batch, verbose=0)
    proj_report = invariance(projected, probe)
    results.update(
        test_accuracy_projected=float(acc),
        projected_invariance_max_error=proj_report.max_error,
        projected_invariance_mean_error=proj_report.mean_error,
        projected_parameters=int(projected.count_params()),
        seconds=time.time() - start,
    )

    print("\nResults")
    print(f"  test accuracy (projected model, rotated test set): {acc:.3f}")
    if args.relaxed:
        print(
            f"  invariance error, relaxed model at theta=1 : max {results['relaxed_theta1_invariance_max_error']:.3e}"
            f"  mean {results['relaxed_theta1_invariance_mean_error']:.3e}"
        )
    print(
        f"  invariance error, projected model          : max {proj_report.max_error:.3e}"
        f"  mean {proj_report.mean_error:.3e}"
    )
    print(f"  projected parameters: {projected.count_params():,}; wall time {results['seconds']:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
