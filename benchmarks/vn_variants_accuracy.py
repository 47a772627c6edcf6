#!/usr/bin/env python
"""Short-run accuracy of VN-PointNet variants: plain, relaxed (dense branches), low-rank relaxed, bfloat16.

Every variant trains the same (narrow) VN-PointNet from the same seed on the same rotated synthetic point
clouds (``keras_relaxeq.datasets.shapes.make_shapes``, 6 classes, SO(3) rotations) with ``model.fit``, Adam
and the triangle theta schedule (relaxed variants), then the model is projected (``kr.project``) and its
accuracy measured on a rotated test set.  A short run on a small problem: it shows whether a variant keeps
up with the dense relaxed model and with float32, not the ModelNet40 numbers.  Variants are named like the
benchmark's: ``plain``, ``relaxed``, ``relaxed_r<rank>``, a ``_bf16`` suffix for ``mixed_bfloat16``.

Example::

    python benchmarks/vn_variants_accuracy.py --variants plain,relaxed,relaxed_r4,relaxed_bf16 --epochs 6
"""

from __future__ import annotations

import argparse
import json
import os
import time


def parse_variant(variant):
    parts = variant.split("_")
    relaxed, rank, bf16 = parts[0] == "relaxed", None, False
    if parts[0] not in ("plain", "relaxed"):
        raise SystemExit(f"unknown variant {variant!r}")
    for p in parts[1:]:
        if p == "bf16":
            bf16 = True
        elif p.startswith("r") and p[1:].isdigit() and relaxed:
            rank = int(p[1:])
        else:
            raise SystemExit(f"unknown variant suffix {p!r} in {variant!r}")
    return relaxed, rank, bf16


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default="plain,relaxed,relaxed_r4,relaxed_r16,relaxed_bf16")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--points", type=int, default=128)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--train", type=int, default=768)
    p.add_argument("--test", type=int, default=384)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch", type=int, default=24)
    p.add_argument("--seeds", default="0", help="comma-separated model seeds")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import keras
    import numpy as np

    import keras_relaxeq as kr
    from keras_relaxeq.datasets.shapes import make_shapes
    from keras_relaxeq.models.vn_pointnet import vn_pointnet

    x_train, y_train = make_shapes(args.train, num_points=args.points, seed=1)
    x_test, y_test = make_shapes(args.test, num_points=args.points, seed=2)
    results = {"config": vars(args), "load_average_start": os.getloadavg(), "runs": []}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
            relaxed, rank, bf16 = parse_variant(variant)
            keras.utils.set_random_seed(seed)
            model = vn_pointnet(
                num_classes=6,
                relaxed=relaxed,
                width=args.width,
                k=args.k,
                relaxation_rank=rank,
                dtype="mixed_bfloat16" if bf16 else None,
            )
            model.compile(
                optimizer=keras.optimizers.Adam(1e-3),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"],
            )
            t0 = time.perf_counter()
            history = model.fit(
                x_train,
                y_train,
                epochs=args.epochs,
                batch_size=args.batch,
                verbose=0,
                callbacks=[kr.ThetaScheduler("triangle")] if relaxed else [],
            )
            seconds = time.perf_counter() - t0
            final = kr.project(model) if relaxed else model
            final.compile(metrics=["accuracy"], loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            _, acc = final.evaluate(x_test, y_test, batch_size=64, verbose=0)
            run = {
                "variant": variant,
                "seed": seed,
                "test_accuracy_projected": float(acc),
                "train_accuracy_last_epoch": float(history.history["accuracy"][-1]),
                "train_loss_last_epoch": float(history.history["loss"][-1]),
                "fit_seconds": seconds,
                "params": int(model.count_params()),
                "load_average": os.getloadavg()[0],
            }
            results["runs"].append(run)
            print(
                f"{variant:<18s} seed {seed}: projected test accuracy {acc:.3f}, train acc "
                f"{run['train_accuracy_last_epoch']:.3f}, loss {run['train_loss_last_epoch']:.3f}, "
                f"fit {seconds:.0f} s, {run['params']:,} params (load {run['load_average']:.1f})",
                flush=True,
            )
            del model, final
    results["load_average_end"] = os.getloadavg()
    by_variant = {}
    for run in results["runs"]:
        by_variant.setdefault(run["variant"], []).append(run["test_accuracy_projected"])
    results["mean_test_accuracy"] = {v: float(np.mean(a)) for v, a in by_variant.items()}
    means = results["mean_test_accuracy"]
    print("mean projected test accuracy: " + ", ".join(f"{v} {a:.3f}" for v, a in means.items()))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return results


if __name__ == "__main__":
    main()
