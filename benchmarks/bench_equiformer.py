#!/usr/bin/env python
"""Training step time of the Equiformer energy / force model (``keras_relaxeq.models.equiformer``) on CPU.

One step = forward (energy), forces ``-dE/dpos`` by the inner ``GradientTape``, the energy + force loss and its
gradient with respect to the weights (second order through the force), and the Adam update: the compiled
``model.train_function`` that ``fit`` runs.  Models: ``--widths`` (default ``0.25`` (a CPU size,
``32x0e+16x1o+8x2e``) and ``1.0`` (published, ``128x0e+64x1o+32x2e``)) times ``--atoms`` (default 9 (ethanol) and 21
(aspirin)), 6 blocks, one batch of ``--batch`` 8 molecules with random positions (Gaussian, 1.2 Å per axis) and
elements H/C/O; all built in one process and timed round-robin (``--repeats`` rounds of ``--steps`` steps after
``--warmup`` untimed steps).  Reported per model: parameters, trace + warm-up time, median (and IQR) ms per step,
process CPU time per step, molecules/s, and a forward-only (energy + forces, inference) time.

``--variants`` adds relaxed models (theta = 1, ``lambda_lie = lambda_proj = 0.01``) next to ``plain``:

* ``ffn_linear``: a linear branch on every block's feed-forward output map (closed-form penalties);
* ``mlp_lie`` / ``mlp_tape``: the reference's branch (``relaxation_kind="position_mlp"``: an MLP on features,
  element one-hot and centred positions) with the Lie-derivative penalty by forward mode (JVP) / double backward;
* ``mlp_rotation``: the same branch with the finite-rotation penalty (5 degrees).

For the ``mlp_*`` variants the script also evaluates both penalties of the same weights on the same batch (summed
over the blocks): ``LD`` (JVP) and the 5-degree finite-rotation error ``FR``, and ``FR / (angle^2 / 3 * LD)`` (1 in
the small-angle limit).

Example::

    python benchmarks/bench_equiformer.py --json benchmarks/results/equiformer_b8.json
"""

from __future__ import annotations

import argparse
import json
import time

# benchmarks/ is sys.path[0]
from _common import machine_info, peak_rss_mib, quantiles, train_steps  # noqa: E402


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", default="0.25,1.0", help="comma-separated width multipliers")
    p.add_argument("--atoms", default="9,21", help="comma-separated molecule sizes")
    p.add_argument("--blocks", type=int, default=6)
    p.add_argument(
        "--variants", default="plain", help="comma-separated: plain, ffn_linear, mlp_lie, mlp_tape, mlp_rotation"
    )
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per model (tracing included)")
    p.add_argument("--steps", type=int, default=3, help="steps per model per round")
    p.add_argument("--repeats", type=int, default=3, help="rounds")
    p.add_argument("--threads", type=int, default=None, help="TF intra-op threads (default: TF's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the results here")
    return p


def make_batch(batch, atoms, seed):
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    x = {
        "positions": tf.constant(rng.normal(scale=1.2, size=(batch, atoms, 3)), tf.float32),
        "atomic_numbers": tf.constant(rng.choice([1, 6, 8], size=(batch, atoms)), tf.int32),
    }
    y = {
        "energy": tf.constant(rng.normal(size=(batch,)), tf.float32),
        "forces": tf.constant(rng.normal(size=(batch, atoms, 3)), tf.float32),
    }
    return x, y


VARIANTS = {
    "plain": {},
    "ffn_linear": {"relaxation": {"relaxed": True}},
    "mlp_lie": {"relaxation": {"relaxed": True, "lie_method": "jvp"}, "relaxation_kind": "position_mlp"},
    "mlp_tape": {"relaxation": {"relaxed": True, "lie_method": "tape"}, "relaxation_kind": "position_mlp"},
    "mlp_rotation": {
        "relaxation": {"relaxed": True, "equivariance_penalty": "finite_rotation"},
        "relaxation_kind": "position_mlp",
    },
}


def compare_penalties(model, x, degrees=5.0):
    """``LD`` and the finite-rotation error summed over the position-MLP branches of ``model`` on the batch ``x``
    (same weights, same inputs: the layers' ``equivariance_penalty`` is switched between two training calls)."""
    import math

    import tensorflow as tf

    from keras_relaxeq.layers.equiformer import RelaxedGatedFeedForward
    from keras_relaxeq.layers.penalties import collect_relaxation_penalties

    layers = [layer for layer in model._flatten_layers() if isinstance(layer, RelaxedGatedFeedForward)]
    saved = [(layer.equivariance_penalty, layer.rotation_degrees) for layer in layers]
    totals = {}
    for kind in ("lie", "finite_rotation"):
        for layer in layers:
            layer.equivariance_penalty, layer.rotation_degrees = kind, degrees
        with collect_relaxation_penalties() as collector:
            model(x, training=True)
        totals[kind] = float(collector.totals(dtype=tf.float32)[0])
    for layer, (kind, deg) in zip(layers, saved):
        layer.equivariance_penalty, layer.rotation_degrees = kind, deg
    totals["ratio"] = totals["finite_rotation"] / (math.radians(degrees) ** 2 / 3 * totals["lie"])
    return totals


def main(argv=None):
    args = build_parser().parse_args(argv)
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    import keras

    from keras_relaxeq.models.equiformer import equiformer

    keras.utils.set_random_seed(args.seed)
    widths = [float(w) for w in args.widths.split(",") if w.strip()]
    sizes = [int(a) for a in args.atoms.split(",") if a.strip()]
    variants = [v for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")
    models, batches, info = {}, {}, {}
    for variant, width, atoms in [(v, w, a) for v in variants for w in widths for a in sizes]:
        label = f"w{width:g}_a{atoms}" + ("" if variant == "plain" else f"_{variant}")
        t0 = time.perf_counter()
        model = equiformer(width=width, num_blocks=args.blocks, **VARIANTS[variant])
        model.compile(optimizer=keras.optimizers.Adam(5e-4), loss={"energy": "mse", "forces": "mse"})
        batches[label] = [make_batch(args.batch, atoms, args.seed)]
        train_steps(model, batches[label], max(args.warmup, 1))
        models[label] = model
        info[label] = {
            "variant": variant,
            "width": width,
            "atoms": atoms,
            "irreps_node": str(model.irreps_node),
            "params": int(model.count_params()),
            "build_and_warmup_s": time.perf_counter() - t0,
        }
        print(
            f"  built + warmed up {label:<10s} {info[label]['build_and_warmup_s']:7.1f} s "
            f"({info[label]['params']:,} params, {model.irreps_node})",
            flush=True,
        )
    wall = {k: [] for k in models}
    cpu = {k: [] for k in models}
    for r in range(args.repeats):
        order = list(models)[r % len(models) :] + list(models)[: r % len(models)]
        for label in order:
            c0, t0 = time.process_time(), time.perf_counter()
            train_steps(models[label], batches[label], args.steps)
            wall[label].append(1000.0 * (time.perf_counter() - t0) / args.steps)
            cpu[label].append(1000.0 * (time.process_time() - c0) / args.steps)
    for label, model in models.items():
        x = batches[label][0][0]
        predict = tf.function(lambda inputs, m=model: m(inputs, training=False))
        predict(x)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            out = predict(x)
        float(out["energy"][0])
        q1, med, q3 = quantiles(wall[label])
        info[label].update(
            step_ms_median=med,
            step_ms_iqr=[q1, q3],
            step_cpu_ms_median=sorted(cpu[label])[len(cpu[label]) // 2],
            molecules_per_s=1000.0 * args.batch / med,
            forward_forces_ms=1000.0 * (time.perf_counter() - t0) / args.steps,
        )
        if info[label]["variant"].startswith("mlp_"):
            info[label]["penalties"] = compare_penalties(model, x)
    for label, r in info.items():
        if "penalties" in r:
            p = r["penalties"]
            print(f"{label}: LD {p['lie']:.4g}, FR(5 deg) {p['finite_rotation']:.4g}, FR / (a^2/3 LD) {p['ratio']:.3f}")
    print("\n| model | node irreps | params | step ms (IQR) | CPU ms | molecules/s | energy+forces ms |")
    print("|---|---|---|---|---|---|---|")
    for label, r in info.items():
        print(
            f"| {label} | {r['irreps_node']} | {r['params']:,} | {r['step_ms_median']:.0f} "
            f"({r['step_ms_iqr'][0]:.0f}-{r['step_ms_iqr'][1]:.0f}) | {r['step_cpu_ms_median']:.0f} | "
            f"{r['molecules_per_s']:.1f} | {r['forward_forces_ms']:.0f} |"
        )
    result = {
        "benchmark": "bench_equiformer",
        "batch": args.batch,
        "blocks": args.blocks,
        "variants": variants,
        "warmup": args.warmup,
        "steps": args.steps,
        "repeats": args.repeats,
        "threads": args.threads,
        "models": info,
        "peak_rss_mib": peak_rss_mib(),
        "machine": machine_info(),
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
