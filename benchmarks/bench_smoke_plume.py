#!/usr/bin/env python
"""Training step time of the smoke plume forecaster arms, side by side (issue 23's relaxed vs plain cost).

Every arm of ``keras_relaxeq.models.smoke_plume`` is built in one process as the recipe trains it
(``rollout_model``: the one-step forecaster unrolled over ``--output-length`` frames, summed-MSE loss,
``AdamL2`` with coupled L2) and timed round-robin, so all arms see the same machine load:

* ``cnn``            plain CNN (``4 x hidden`` channels per layer);
* ``equivariant``    C4 lifting / group / projection convolutions (also the *projected* relaxed model);
* ``relaxed``        the same plus ``theta * Conv2D`` branches at theta = 1 with the C4 defect penalties;
* ``rsteer``         RSteer (per-tap steerable coefficients, smoothness penalty);
* ``rsteer_relaxed`` RSteer plus the method's branches at theta = 1;
* ``relaxed_unfused`` / ``rsteer_relaxed_unfused``: the relaxed arms with ``fuse_relaxation = False`` (the
  equivariant map and the branch as two convolutions instead of one with the kernel ``W_E + theta W_R``), to
  measure what the fused call saves.

Timing: the compiled train step (``model.train_function``, what ``fit`` runs; XLA with ``--jit``) on
``--batches`` random batches ``[batch, 10, grid, grid, 2] -> [batch, output_length, grid, grid, 2]``
(convolution cost does not depend on the values); ``--warmup`` untimed steps per arm, then ``--repeats``
rounds of ``--steps`` steps per arm.  Reported: median wall and process-CPU time per step, the ratio to
``equivariant``, and the time of one epoch of the published data (``--epoch-steps`` = 4,000 windows / 16).

Example (the CPU protocol's width)::

    python benchmarks/bench_smoke_plume.py --width 0.125 --jit --json /tmp/bench_smoke.json
    python benchmarks/bench_smoke_plume.py --arms equivariant,relaxed,relaxed_unfused --width 0.125 --jit
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from _common import machine_info, quantiles, train_steps  # noqa: E402

ARMS = ("cnn", "equivariant", "relaxed", "rsteer", "rsteer_relaxed")
UNFUSED = ("relaxed_unfused", "rsteer_relaxed_unfused")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arms", default=",".join(ARMS), help="comma-separated arms")
    p.add_argument("--width", type=float, default=0.125, help="multiplier of the published 92 regular fields")
    p.add_argument("--grid", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--output-length", type=int, default=6, help="rollout steps per training window")
    p.add_argument("--batches", type=int, default=2, help="distinct random batches cycled through")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per arm (tracing included)")
    p.add_argument("--steps", type=int, default=3, help="steps per arm per round")
    p.add_argument("--repeats", type=int, default=3, help="rounds")
    p.add_argument("--epoch-steps", type=int, default=250, help="steps of one epoch (4,000 windows / batch 16)")
    p.add_argument("--jit", action="store_true", help="XLA jit_compile the train steps (the recipe's default)")
    p.add_argument("--threads", type=int, default=None, help="TF intra-op threads (default: TF's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the results here")
    return p


def build(arm, args):
    from keras_relaxeq.layers.relaxation import relaxed_layers, set_theta
    from keras_relaxeq.models.smoke_plume import rollout_model, smoke_plume_forecaster, summed_frame_mse
    from keras_relaxeq.training.optimizers import AdamL2

    unfused = arm.endswith("_unfused")
    arm = arm.removesuffix("_unfused")
    forecaster = smoke_plume_forecaster(
        arm, grid=args.grid, width=args.width, alpha=1e-5, relaxation_initializer="random_normal", name=f"smoke_{arm}"
    )
    if unfused:
        for layer in relaxed_layers(forecaster):
            layer.fuse_relaxation = False
    model = rollout_model(forecaster, steps=args.output_length)
    if arm.endswith("relaxed"):
        set_theta(model, 1.0)
    model.compile(optimizer=AdamL2(1e-3, l2=4e-4), loss=summed_frame_mse, jit_compile=bool(args.jit))
    return model


def main(argv=None):
    args = build_parser().parse_args(argv)
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    import keras
    import numpy as np

    keras.utils.set_random_seed(args.seed)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = sorted(set(arms) - set(ARMS + UNFUSED))
    if unknown:
        raise SystemExit(f"unknown arms {unknown}; choose from {ARMS + UNFUSED}")
    rng = np.random.default_rng(args.seed)
    batches = [
        (
            tf.constant(rng.normal(size=(args.batch, 10, args.grid, args.grid, 2)), tf.float32),
            tf.constant(rng.normal(size=(args.batch, args.output_length, args.grid, args.grid, 2)), tf.float32),
        )
        for _ in range(args.batches)
    ]
    models = {arm: build(arm, args) for arm in arms}
    params = {arm: int(m.count_params()) for arm, m in models.items()}
    for arm, model in models.items():
        t0 = time.perf_counter()
        train_steps(model, batches, args.warmup)
        print(f"{arm}: warm-up {time.perf_counter() - t0:.1f} s ({params[arm]:,} parameters)", flush=True)
    wall = {arm: [] for arm in arms}
    cpu = {arm: [] for arm in arms}
    for r in range(args.repeats):
        for arm, model in models.items():
            t0, c0 = time.perf_counter(), time.process_time()
            train_steps(model, batches, args.steps, start=r)
            wall[arm].append((time.perf_counter() - t0) / args.steps)
            cpu[arm].append((time.process_time() - c0) / args.steps)
    base = statistics.median(wall["equivariant"]) if "equivariant" in wall else None
    rows = []
    print(
        f"\nwidth {args.width} ({max(1, round(92 * args.width))} regular fields), grid {args.grid}, "
        f"batch {args.batch}, {args.output_length}-step rollouts, XLA {'on' if args.jit else 'off'}"
    )
    header = ("arm", "s/step", "IQR", "CPU s/step", "x equiv", "epoch min", "params")
    print("{:22s} {:>8s} {:>15s} {:>10s} {:>8s} {:>9s} {:>10s}".format(*header))
    for arm in arms:
        med = statistics.median(wall[arm])
        q25, _, q75 = quantiles(wall[arm])
        ratio = med / base if base else None
        row = {
            "arm": arm,
            "wall_s_per_step": med,
            "wall_iqr": [q25, q75],
            "cpu_s_per_step": statistics.median(cpu[arm]),
            "ratio_to_equivariant": ratio,
            "epoch_minutes": med * args.epoch_steps / 60,
            "params": params[arm],
        }
        rows.append(row)
        print(
            f"{arm:22s} {med:8.3f} {q25:7.3f}-{q75:<7.3f} {row['cpu_s_per_step']:10.3f} "
            f"{'' if ratio is None else f'{ratio:8.2f}'} {row['epoch_minutes']:9.1f} {params[arm]:10,d}"
        )
    result = {"config": vars(args), "machine": machine_info(), "arms": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
