#!/usr/bin/env python
"""Training speed of the relaxed vs the plain SEGNN on charged N-body (published size).

Both models (``keras_relaxeq.models.segnn.segnn``, default: 4 layers, 64 hidden scalars =
``32x0e+32x1o``, lmax 1, batch 100) are built in one process and timed side by side,
interleaved round-robin so both see the same machine load:

* ``plain``   ``segnn(relaxed=False)``: the equivariant model;
* ``relaxed`` ``segnn(relaxed=True)`` at theta = 1: branches on the 8 node-update tensor
  products, with the Lie and projection penalties (closed form) in the loss.

``--layouts mul_ir,ir_mul`` times both feature layouts (``segnn(layout=...)``; the default is
``ir_mul``) side by side: four models ``plain/mul_ir``, ``plain/ir_mul``, ``relaxed/...``,
interleaved the same way, and the ``mul_ir / ir_mul`` step-time ratios.  ``--profile DIR`` also
traces ``--steps`` steps of every model with ``tf.profiler`` and prints the op time by op type
and by layer (``_common.op_time_tables``).

Timing: each model's compiled train step (``model.train_function``, the ``tf.function`` that
``fit`` runs; Adam 5e-4, MSE) on real training batches from ``nbody_dataset`` (cycled);
``--warmup`` steps (tracing, grappler) are excluded; each round times ``--steps`` consecutive
steps per model; reported: median (and IQR) over ``--repeats`` rounds of the wall time and the
median process CPU time per step (``time.process_time``: less sensitive to other jobs on a
shared machine; with ``--threads 1`` it approximates the wall time of an idle machine), steps/s, the relaxed /
plain ratio, and the projected time of one full published run (``--epochs`` x
``train_samples / batch`` steps = 1000 x 30), training steps only, and with the per-epoch
projected validation (``--val-samples / batch`` evaluation steps of the plain model) added.
Also the time of one backup (``save_weights`` of the weights and the Adam state, what
``MultiWorkerBackupAndRestore`` writes) as a share of an epoch.

Example::

    python benchmarks/bench_segnn.py --repeats 5 --json /tmp/bench_segnn.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

# benchmarks/ is sys.path[0]
from _common import format_op_tables, machine_info, op_time_tables, quantiles, train_steps  # noqa: E402


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--norm", choices=("none", "instance"), default="none")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per model (tracing included)")
    p.add_argument("--steps", type=int, default=10, help="steps per model per round")
    p.add_argument("--repeats", type=int, default=5, help="rounds")
    p.add_argument("--epochs", type=int, default=1000, help="epochs of the projected full run")
    p.add_argument("--train-samples", type=int, default=3000, help="training samples of the projected run")
    p.add_argument(
        "--val-samples",
        type=int,
        default=2000,
        help="validation samples evaluated (projected model) per epoch in the projected run",
    )
    p.add_argument("--jit", action="store_true", help="XLA jit_compile the train steps")
    p.add_argument(
        "--lie-method", default=None, help="lie_method of the relaxed model (default: segnn's default, 'auto')"
    )
    p.add_argument(
        "--layouts",
        default="ir_mul",
        help="comma-separated feature layouts to time side by side (segnn's layout=: 'ir_mul', the "
        "default, and/or 'mul_ir'); with two, models are labelled plain/<layout>, relaxed/<layout>",
    )
    p.add_argument("--threads", type=int, default=None, help="TF intra-op threads (default: TF's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument(
        "--profile",
        metavar="DIR",
        default=None,
        help="also trace --steps train steps of each model with tf.profiler into DIR/<model> "
        "(TensorBoard) and print the op time by op type and by layer",
    )
    return p


def build(relaxed, args, layout="ir_mul"):
    import keras

    import keras_relaxeq as kr
    from keras_relaxeq.models.segnn import segnn

    extra = {"lie_method": args.lie_method} if args.lie_method else {}
    model = segnn(
        num_layers=args.layers,
        hidden_features=args.hidden,
        relaxed=relaxed,
        norm=None if args.norm == "none" else args.norm,
        name=f"segnn_{'relaxed' if relaxed else 'plain'}",
        layout=layout,
        **extra,
    )
    if relaxed:
        kr.set_theta(model, 1.0)
    model.compile(optimizer=keras.optimizers.Adam(5e-4), loss="mse", jit_compile=bool(args.jit))
    return model


def eval_steps(model, batches, steps):
    """Run ``steps`` compiled evaluation steps (``model.test_function``) cycling through ``batches``."""
    if model.test_function is None:
        model.make_test_function()
    logs = None
    for i in range(steps):
        logs = model.test_function(iter([batches[i % len(batches)]]))
    return float(logs["loss"])


def main(argv=None):
    args = build_parser().parse_args(argv)
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    import keras

    from keras_relaxeq.datasets.nbody import nbody_dataset
    from keras_relaxeq.layers.relaxation import relaxed_layers

    keras.utils.set_random_seed(args.seed)
    ds = nbody_dataset(
        "train", batch_size=args.batch, num_samples=max(args.batch * 4, args.batch), seed=args.seed, drop_remainder=True
    )
    batches = list(ds.take(4))
    layouts = [l.strip() for l in args.layouts.split(",") if l.strip()]
    configs = [(kind, relaxed, layout) for kind, relaxed in (("plain", False), ("relaxed", True)) for layout in layouts]
    models, build_seconds, kinds = {}, {}, {}
    for kind, relaxed, layout in configs:
        label = kind if len(layouts) == 1 else f"{kind}/{layout}"
        kinds[label] = (kind, layout)
        t0 = time.perf_counter()
        model = build(relaxed, args, layout)
        train_steps(model, batches, max(args.warmup, 1))
        models[label] = model
        build_seconds[label] = time.perf_counter() - t0
        print(
            f"  built + warmed up {label:<8s} {build_seconds[label]:6.1f} s ({model.count_params():,} params, "
            f"{len(relaxed_layers(model))} relaxed layers, jit={model.jit_compile})",
            flush=True,
        )
    labels = list(models)
    times = {l: [] for l in labels}
    cpu_times = {l: [] for l in labels}
    for r in range(args.repeats):
        order = labels[r % len(labels) :] + labels[: r % len(labels)]
        for label in order:
            t0, c0 = time.perf_counter(), time.process_time()
            train_steps(models[label], batches, args.steps, start=r)
            times[label].append(1000.0 * (time.perf_counter() - t0) / args.steps)
            cpu_times[label].append(1000.0 * (time.process_time() - c0) / args.steps)
        print(
            f"  round {r + 1}/{args.repeats}: "
            + "  ".join(f"{l}={times[l][-1]:.1f} ms (cpu {cpu_times[l][-1]:.1f})" for l in labels),
            flush=True,
        )

    # per-epoch projected validation = evaluation steps of the plain (projected) architecture
    plain_label = labels[0]  # plain, first layout
    eval_steps(models[plain_label], batches, max(args.warmup, 1))
    eval_times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        eval_steps(models[plain_label], batches, args.steps)
        eval_times.append(1000.0 * (time.perf_counter() - t0) / args.steps)
    eval_ms = statistics.median(eval_times)
    val_batches = -(-args.val_samples // args.batch)

    # per-epoch backup of the recipe (MultiWorkerBackupAndRestore: weights + optimizer state, .weights.h5)
    save_ms = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label in labels:
            path = os.path.join(tmp, f"{label.replace('/', '_')}.weights.h5")
            models[label].save_weights(path)  # warm-up
            samples = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                models[label].save_weights(path)
                samples.append(1000.0 * (time.perf_counter() - t0))
            save_ms[label] = statistics.median(samples)

    profiles = {}
    if args.profile:
        import tensorflow as tf

        for label in labels:
            logdir = os.path.join(args.profile, label.replace("/", "_"))
            tf.profiler.experimental.start(logdir)
            train_steps(models[label], batches, args.steps)
            tf.profiler.experimental.stop()
            profiles[label] = op_time_tables(logdir, args.steps)

    steps_per_epoch = args.train_samples // args.batch
    total_steps = args.epochs * steps_per_epoch
    results = {}
    for label in labels:
        q1, med, q3 = quantiles(times[label])
        results[label] = {
            "ms_per_step_median": med,
            "ms_per_step_iqr": [q1, q3],
            "steps_per_second": 1000.0 / med,
            "params": int(models[label].count_params()),
            "relaxed_layers": len(relaxed_layers(models[label])),
            "full_run_hours": total_steps * med / 1000.0 / 3600.0,
            "full_run_hours_with_validation": args.epochs
            * (steps_per_epoch * med + val_batches * eval_ms)
            / 1000.0
            / 3600.0,
            "backup_ms_median": save_ms[label],
            "backup_share_of_epoch": save_ms[label] / (steps_per_epoch * med + val_batches * eval_ms + save_ms[label]),
            "ms_per_step_all": times[label],
            "cpu_ms_per_step_median": statistics.median(cpu_times[label]),
            "cpu_ms_per_step_all": cpu_times[label],
        }
    label_of = {v: k for k, v in kinds.items()}

    def ratio(num, den):
        """(ratio of the medians, median of the per-round ratios) of two labels' wall times."""
        paired = [a / b for a, b in zip(times[num], times[den])]
        return results[num]["ms_per_step_median"] / results[den]["ms_per_step_median"], statistics.median(paired)

    relaxed_over_plain = {
        layout: ratio(label_of[("relaxed", layout)], label_of[("plain", layout)]) for layout in layouts
    }
    layout_ratios = {}
    if len(layouts) == 2:  # how many times slower the first layout is than the second
        for kind in ("plain", "relaxed"):
            layout_ratios[kind] = ratio(label_of[(kind, layouts[0])], label_of[(kind, layouts[1])])
    summary = {
        "config": vars(args),
        "steps_per_epoch": steps_per_epoch,
        "full_run_steps": total_steps,
        "results": results,
        "eval_ms_per_batch_median": eval_ms,
        "val_batches_per_epoch": val_batches,
        "relaxed_over_plain_median": relaxed_over_plain[layouts[0]][0],
        "relaxed_over_plain_paired_median": relaxed_over_plain[layouts[0]][1],
        "relaxed_over_plain_by_layout": relaxed_over_plain,
        "layout_ratio": {
            k: {"first_over_second": v[0], "paired_median": v[1], "layouts": layouts} for k, v in layout_ratios.items()
        },
        "machine": machine_info(),
        "profile": profiles,
    }
    print(
        f"\nSEGNN N-body train step, batch {args.batch}, {args.layers} layers, hidden {args.hidden} "
        f"({os.cpu_count()} CPUs, {summary['machine']['gpus']} GPUs, jit={bool(args.jit)}):"
    )
    print(
        f"{'model':<15s} {'params':>9s} {'ms/step (median)':>17s} {'IQR':>17s} {'cpu ms/step':>12s} "
        f"{'steps/s':>8s} {'full run (' + str(total_steps) + ' steps)':>26s}"
    )
    for label in labels:
        r = results[label]
        print(
            f"{label:<15s} {r['params']:>9,d} {r['ms_per_step_median']:>17.1f} "
            f"{r['ms_per_step_iqr'][0]:>8.1f}-{r['ms_per_step_iqr'][1]:<8.1f} {r['cpu_ms_per_step_median']:>12.1f} "
            f"{r['steps_per_second']:>8.2f} {r['full_run_hours']:>22.2f} h"
        )
    print(
        f"projected validation: {eval_ms:.1f} ms per batch x {val_batches} batches per epoch; full run with "
        f"validation every epoch: "
        + ", ".join(f"{l} {results[l]['full_run_hours_with_validation']:.2f} h" for l in labels)
    )
    print(
        "backup (save_weights, weights + Adam state) per epoch: "
        + ", ".join(
            f"{l} {results[l]['backup_ms_median']:.0f} ms = "
            f"{100 * results[l]['backup_share_of_epoch']:.1f}% of an epoch with validation"
            for l in labels
        )
        + "; the recipe backs up every --backup-every epochs"
    )
    for layout, (med, paired) in relaxed_over_plain.items():
        print(f"relaxed / plain (layout {layout}): {med:.2f}x (paired median {paired:.2f}x)")
    for kind, (med, paired) in layout_ratios.items():
        print(f"{kind}: {layouts[0]} / {layouts[1]} step time {med:.2f}x (paired median {paired:.2f}x)")
    for label, tables in profiles.items():
        print()
        trace = os.path.join(args.profile, label.replace("/", "_"))
        print(format_op_tables(tables, f"{label}, {args.steps} traced steps (trace in {trace})"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return summary


if __name__ == "__main__":
    main()
