#!/usr/bin/env python
"""Cost of the relaxation penalties in a training step of a stack of VN layers.

Measures, side by side in one process and interleaved round-robin (so every
variant sees the same machine load), the compiled training step of the same
architecture in five variants:

    plain          relaxed=False, keras.Model                (the equivariant model)
    relaxed_nopen  relaxed branches, keras.Model             (branches, no penalties)
    auto           relaxed, RelaxedModel, lie_method="auto" (the default: Gram-matrix closed form
                   for per-point features, direct evaluation for pooled ones)
    closed_form    relaxed, RelaxedModel, lie_method="closed_form" (Gram matrix everywhere)
    jvp            relaxed, RelaxedModel, lie_method="jvp"   (tf.autodiff.ForwardAccumulator)
    tape           relaxed, RelaxedModel, lie_method="tape"  (double-backward GradientTape)

Penalties are only computed when a RelaxedModel runs its training forward
pass, so ``relaxed_nopen`` isolates the cost of the branches and
``penalty share = (t_method - t_relaxed_nopen) / t_method`` the cost of the
penalties (also computed pairwise within each round; the median of the paired
shares is reported alongside).  ``RelaxedModel`` is built with
``check_inputs=False`` so the only difference to ``relaxed_nopen`` is the
penalties (and their two loss trackers).

Architecture (``--channels 21,21,42,341`` by default, VN-PointNet's channel
counts 64//3, 64//3, 128//3, 1024//3): points ``[B, N, 3]`` as one-channel
vector features ``[B, N, 1, 3]`` -> ``VNLinear`` lift to ``channels[0]`` ->
one ``VNLeakyReLU`` block (slope 0, VN batch norm) per further entry -> mean
pool over points -> head -> ``Dense(hidden, relu)`` -> ``Dense(classes)``.
``--head std`` is the relaxed ``VNStdFeature`` invariant head on the pooled
features (as in ``keras_relaxeq.models.vn_classifier``); ``--head norm`` reads
out the per-channel vector norms (no relaxed layer after pooling).

Timing: each model's compiled train step (``model.train_function``, the
``tf.function`` that ``fit`` / ``train_on_batch`` run) on one fixed batch;
``--warmup`` steps (tracing, compilation, grappler) are excluded; each round
times ``--steps`` consecutive steps per variant; the table shows the median
(and inter-quartile range) over ``--repeats`` rounds.  The variant order is
rotated every round.

Memory: with ``--memory`` (default) each variant is also run alone in a fresh
subprocess (same options, warm-up + 2 steps) and its peak resident set size
(``VmHWM``; ``ru_maxrss`` where there is no ``/proc``) is reported, with the
peak before the model was built (TensorFlow + data) subtracted as ``delta``.

``--breakdown`` additionally times, per relaxed linear map of the closed_form
model, in isolation and on that map's real input: the Gram statistics, the
closed-form penalty (value + gradient w.r.t. the branch weights), the JVP
penalty (value + gradient) and the branch itself (forward + backward).

Example::

    python benchmarks/bench_penalties.py --repeats 7 --json out.json
    python benchmarks/bench_penalties.py --jit both --head norm
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from _common import peak_rss_mib, quantiles  # noqa: E402  (benchmarks/ is sys.path[0])

VARIANTS = ("plain", "relaxed_nopen", "auto", "closed_form", "jvp", "tape")
PENALTY_METHODS = ("auto", "closed_form", "jvp", "tape")
TARGET_SHARE = 0.15


# --------------------------------------------------------------------------- options
def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--batch", type=int, default=24, help="batch size (24 as VN-PointNet)")
    p.add_argument("--points", type=int, default=300, help="points per cloud")
    p.add_argument(
        "--channels",
        default="21,21,42,341",
        help="comma-separated vector channels: lift, then one VNLeakyReLU block per further entry",
    )
    p.add_argument(
        "--head",
        choices=("std", "norm"),
        default="std",
        help="std: relaxed VNStdFeature on the pooled features; norm: vector norms (not relaxed)",
    )
    p.add_argument("--classes", type=int, default=40)
    p.add_argument("--hidden", type=int, default=256, help="units of the Dense layer of the head")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    p.add_argument("--repeats", type=int, default=11, help="timed rounds (median reported)")
    p.add_argument("--steps", type=int, default=1, help="train steps per variant per round")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per model before timing")
    p.add_argument("--jit", choices=("off", "on", "both"), default="off", help="XLA jit_compile of the train step")
    p.add_argument(
        "--memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="peak RSS per variant, each in its own subprocess",
    )
    p.add_argument(
        "--breakdown",
        action="store_true",
        help="time Gram / closed form / JVP / branch per relaxed linear map in isolation",
    )
    p.add_argument(
        "--profile",
        metavar="DIR",
        default=None,
        help="write a TF profiler trace of a few closed_form steps to DIR (TensorBoard)",
    )
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: TensorFlow default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="OUT", default=None, help="write all measurements as JSON")
    p.add_argument("--_memory_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.channels = [int(c) for c in args.channels.split(",") if c.strip()]
    if not args.channels:
        p.error("--channels needs at least one entry")
    if args.head == "std" and args.channels[-1] < 4:
        p.error("--head std needs at least 4 channels after the last block")
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {VARIANTS}")
    return args


def _setup_tf(args):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    return tf


# --------------------------------------------------------------------------- model and data
def build_model(variant, args, jit):
    import keras

    from keras_relaxeq.layers import VNLeakyReLU, VNLinear, VNMeanPool, VNStdFeature
    from keras_relaxeq.training.model import RelaxedModel

    keras.utils.set_random_seed(args.seed)  # same initial weights in every variant
    relaxed = variant != "plain"
    method = variant if variant in PENALTY_METHODS else "auto"
    relax = dict(relaxed=relaxed, relaxation_initializer="zeros", lie_method=method)
    points = keras.Input((args.points, 3), batch_size=args.batch, name="points")
    x = keras.layers.Reshape((args.points, 1, 3), name="as_vectors")(points)
    x = VNLinear(args.channels[0], name="lift", **relax)(x)
    for i, c in enumerate(args.channels[1:], start=1):
        x = VNLeakyReLU(c, negative_slope=0.0, name=f"block{i}", **relax)(x)
    x = VNMeanPool(axis=-3, name="pool")(x)
    if args.head == "std":
        x, _ = VNStdFeature(negative_slope=0.0, name="std_feature", **relax)(x)
        x = keras.layers.Flatten(name="invariants")(x)
    else:
        x = keras.layers.Lambda(lambda v: keras.ops.sqrt(keras.ops.sum(v * v, axis=-1) + 1e-12), name="norms")(x)
    x = keras.layers.Dense(args.hidden, activation="relu", name="head_dense")(x)
    logits = keras.layers.Dense(args.classes, name="logits")(x)
    name = f"bench_{variant}"
    if variant in PENALTY_METHODS:
        model = RelaxedModel(points, logits, lambda_lie=0.01, lambda_proj=0.01, check_inputs=False, name=name)
    else:
        model = keras.Model(points, logits, name=name)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
    )
    return model


def make_batch(args):
    import tensorflow as tf

    g = tf.random.Generator.from_seed(args.seed + 1)
    x = g.normal([args.batch, args.points, 3])
    y = g.uniform([args.batch], 0, args.classes, dtype=tf.int32)
    return x, y


def train_steps(model, batch, steps):
    """Run ``steps`` compiled train steps on ``batch``; returns the last loss (forces completion)."""
    if model.train_function is None:
        model.make_train_function()
    logs = None
    for _ in range(steps):
        logs = model.train_function(iter([batch]))
    return float(logs["loss"])


# --------------------------------------------------------------------------- timing
def run_timing(args, configs):
    """Interleaved timing of ``configs`` = [(label, variant, jit)]; returns {label: [ms per step]}."""
    _setup_tf(args)
    batch = make_batch(args)
    models = {}
    for label, variant, jit in configs:
        t0 = time.perf_counter()
        model = build_model(variant, args, jit)
        train_steps(model, batch, max(args.warmup, 1))
        models[label] = model
        print(
            f"  built + warmed up {label:<22s} {time.perf_counter() - t0:6.1f} s ({model.count_params():,} params)",
            flush=True,
        )
    times = {label: [] for label, _, _ in configs}
    labels = [label for label, _, _ in configs]
    for r in range(args.repeats):
        order = labels[r % len(labels) :] + labels[: r % len(labels)]
        for label in order:
            t0 = time.perf_counter()
            train_steps(models[label], batch, args.steps)
            times[label].append(1000.0 * (time.perf_counter() - t0) / args.steps)
        print(f"  round {r + 1}/{args.repeats}: " + "  ".join(f"{l}={times[l][-1]:.1f}" for l in labels), flush=True)
    params = {label: models[label].count_params() for label in labels}
    return times, params, models, batch


def memory_child(args):
    """Entry point of a ``--memory`` subprocess: one variant, prints a JSON line."""
    variant, jit = args._memory_child.split(":")
    _setup_tf(args)
    batch = make_batch(args)
    before = peak_rss_mib()
    model = build_model(variant, args, jit == "on")
    train_steps(model, batch, max(args.warmup, 1) + 2)
    print("MEMORY_JSON " + json.dumps({"baseline_mb": before, "peak_mb": peak_rss_mib()}), flush=True)


def run_memory(args, configs):
    out = {}
    script = os.path.abspath(__file__)
    passthrough = [
        "--batch",
        str(args.batch),
        "--points",
        str(args.points),
        "--channels",
        ",".join(map(str, args.channels)),
        "--head",
        args.head,
        "--classes",
        str(args.classes),
        "--hidden",
        str(args.hidden),
        "--warmup",
        str(args.warmup),
        "--seed",
        str(args.seed),
        "--threads",
        str(args.threads),
    ]
    for label, variant, jit in configs:
        cmd = [sys.executable, script, *passthrough, "--_memory_child", f"{variant}:{'on' if jit else 'off'}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("MEMORY_JSON ")), None)
        if proc.returncode != 0 or line is None:
            print(f"  memory run of {label} failed (rc {proc.returncode}):\n{proc.stderr[-2000:]}", flush=True)
            continue
        out[label] = json.loads(line[len("MEMORY_JSON ") :])
        print(
            f"  memory {label:<22s} peak {out[label]['peak_mb']:.0f} MB "
            f"(+{out[label]['peak_mb'] - out[label]['baseline_mb']:.0f} MB over TF + data)",
            flush=True,
        )
    return out


# --------------------------------------------------------------------------- breakdown
def _isolated_functions(layer, flat):
    """tf.functions timing the pieces of one relaxed linear map (closures, not default args:
    tf.function would turn default-argument variables into inputs and lose their gradients)."""
    import tensorflow as tf

    from keras_relaxeq.layers.base import autodiff_branch_penalties, gram_statistics, linear_branch_penalties

    w, b = layer.relaxation_kernel, layer.relaxation_bias
    in_rep, out_rep = layer.input_rep, layer.output_rep
    variables = [v for v in (w, b) if v is not None]
    gram = gram_statistics(flat)  # constant: the closed form is timed without the Gram matrix

    @tf.function
    def f_gram():
        return gram_statistics(flat)[0]

    @tf.function
    def f_closed():
        with tf.GradientTape() as tape:
            lie, proj = linear_branch_penalties(w, b, gram, in_rep, out_rep)
            total = lie + proj
        return tape.gradient(total, variables)

    @tf.function
    def f_jvp():
        with tf.GradientTape() as tape:
            lie, proj = autodiff_branch_penalties(layer.branch, flat, in_rep, out_rep, method="jvp")
            total = lie + proj
        return tape.gradient(total, variables)

    @tf.function
    def f_branch():
        # forward + backward of the branch as in training: gradients to W, b and to the input
        with tf.GradientTape() as tape:
            tape.watch(flat)
            y = layer.branch(flat)
            total = tf.reduce_sum(y * y)
        return tape.gradient(total, variables + [flat])

    return {"gram": f_gram, "closed_form": f_closed, "jvp": f_jvp, "branch": f_branch}


def run_breakdown(args, model, batch, repeats, inner=2):
    """Per relaxed linear map: isolated cost of Gram, closed form, JVP and the branch."""
    import tensorflow as tf

    from keras_relaxeq.layers.relaxation import relaxed_layers

    # Record the input of every relaxed map in one inference pass.
    layers = relaxed_layers(model)
    inputs = {}
    originals = {}
    for layer in layers:
        originals[layer] = layer.add_relaxation

        def recorder(inp, out, _layer=layer):
            inputs[_layer] = inp
            return originals[_layer](inp, out)

        layer.add_relaxation = recorder
    model(batch[0], training=False)
    for layer in layers:
        del layer.add_relaxation  # back to the class method

    rows = []
    for layer in layers:
        x = inputs[layer]
        flat = tf.reshape(x, [-1, layer.input_rep.dim])
        funcs = _isolated_functions(layer, flat)
        for f in funcs.values():  # trace + warm up
            for _ in range(2):
                tf.nest.map_structure(lambda t: t.numpy(), f())
        samples = {k: [] for k in funcs}
        for _ in range(repeats):
            for k, f in funcs.items():  # interleaved: the four pieces see the same load
                t0 = time.perf_counter()
                for _ in range(inner):
                    out = f()
                tf.nest.map_structure(lambda t: t.numpy(), out)
                samples[k].append(1000.0 * (time.perf_counter() - t0) / inner)
        row = dict(
            layer=layer.path if hasattr(layer, "path") else layer.name,
            P=int(flat.shape[0]),
            D_in=int(layer.input_rep.dim),
            D_out=int(layer.output_rep.dim),
        )
        row.update({f"{k}_ms": statistics.median(v) for k, v in samples.items()})
        rows.append(row)
        print(f"  breakdown {row['layer']}: " + ", ".join(f"{k} {row[k + '_ms']:.2f} ms" for k in funcs), flush=True)
    return rows


# --------------------------------------------------------------------------- report
def summarize(args, configs, times, params, memory):
    rows = []
    by_jit = {}
    for label, variant, jit in configs:
        by_jit.setdefault(jit, {})[variant] = label
    for label, variant, jit in configs:
        q1, med, q3 = quantiles(times[label])
        row = dict(
            label=label,
            variant=variant,
            jit=jit,
            ms_median=med,
            ms_q1=q1,
            ms_q3=q3,
            samples_per_s=1000.0 * args.batch / med,
            params=params[label],
            ms_all=times[label],
        )
        ref = by_jit[jit]
        if "plain" in ref:
            row["ratio_vs_plain"] = med / statistics.median(times[ref["plain"]])
        if variant in PENALTY_METHODS and "relaxed_nopen" in ref:
            base = times[ref["relaxed_nopen"]]
            row["penalty_share"] = (med - statistics.median(base)) / med
            row["penalty_share_paired"] = statistics.median([(t - b) / t for t, b in zip(times[label], base)])
        if label in memory:
            row["peak_rss_mb"] = memory[label]["peak_mb"]
            row["rss_delta_mb"] = memory[label]["peak_mb"] - memory[label]["baseline_mb"]
        rows.append(row)
    return rows


def markdown_table(rows):
    head = (
        "| variant | jit | ms/step median (IQR) | samples/s | x plain | penalty share (paired) "
        "| peak RSS MB (delta) | params |"
    )
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        share = (
            f"{100 * r['penalty_share']:.1f}% ({100 * r['penalty_share_paired']:.1f}%)" if "penalty_share" in r else ""
        )
        mem = f"{r['peak_rss_mb']:.0f} (+{r['rss_delta_mb']:.0f})" if "peak_rss_mb" in r else ""
        ratio = f"{r['ratio_vs_plain']:.2f}" if "ratio_vs_plain" in r else ""
        lines.append(
            f"| {r['variant']} | {'on' if r['jit'] else 'off'} | {r['ms_median']:.1f} "
            f"({r['ms_q1']:.1f}-{r['ms_q3']:.1f}) | {r['samples_per_s']:.0f} | {ratio} | {share} "
            f"| {mem} | {r['params']:,} |"
        )
    return "\n".join(lines)


def breakdown_table(rows):
    lines = [
        "| relaxed map | P | D_in | D_out | Gram ms | closed form (val+grad) ms | JVP (val+grad) ms "
        "| branch (fwd+bwd) ms |",
        "|" + "---|" * 8,
    ]
    for r in rows:
        lines.append(
            f"| {r['layer']} | {r['P']} | {r['D_in']} | {r['D_out']} | {r['gram_ms']:.2f} "
            f"| {r['closed_form_ms']:.2f} | {r['jvp_ms']:.2f} | {r['branch_ms']:.2f} |"
        )
    tot = {k: sum(r[k] for r in rows) for k in ("gram_ms", "closed_form_ms", "jvp_ms", "branch_ms")}
    lines.append(
        f"| **total** | | | | {tot['gram_ms']:.2f} | {tot['closed_form_ms']:.2f} | {tot['jvp_ms']:.2f} "
        f"| {tot['branch_ms']:.2f} |"
    )
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args._memory_child:
        memory_child(args)
        return 0
    tf = _setup_tf(args)
    import keras

    jits = {"off": [False], "on": [True], "both": [False, True]}[args.jit]
    configs = [(f"{v}{'+xla' if jit else ''}", v, jit) for jit in jits for v in args.variants]
    load = os.getloadavg()
    print(
        f"bench_penalties: batch {args.batch}, points {args.points}, channels {args.channels}, head {args.head}, "
        f"jit {args.jit}; TF {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs, "
        f"load avg {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}",
        flush=True,
    )
    times, params, models, batch = run_timing(args, configs)
    breakdown = []
    closed_label = next((l for l, v, _ in configs if v == "closed_form"), None)
    if args.breakdown and closed_label:
        breakdown = run_breakdown(args, models[closed_label], batch, max(3, min(args.repeats, 5)))
    if args.profile and closed_label:
        tf.profiler.experimental.start(args.profile)
        train_steps(models[closed_label], batch, 3)
        tf.profiler.experimental.stop()
        print(f"  profiler trace of 3 {closed_label} steps in {args.profile}", flush=True)
    del models
    memory = run_memory(args, configs) if args.memory else {}
    rows = summarize(args, configs, times, params, memory)
    load_end = os.getloadavg()
    print()
    print(markdown_table(rows))
    print()
    print(
        f"penalty share = (t_method - t_relaxed_nopen) / t_method (target < {100 * TARGET_SHARE:.0f}% "
        f"for closed_form); paired = median over rounds of the same ratio within a round. "
        f"Load average at start {load[0]:.2f}, at end {load_end[0]:.2f} on {os.cpu_count()} CPUs."
    )
    if breakdown:
        print()
        print(breakdown_table(breakdown))
    if args.json:
        result = dict(
            options={k: v for k, v in vars(args).items() if not k.startswith("_")},
            environment=dict(
                tensorflow=tf.__version__,
                keras=keras.__version__,
                cpus=os.cpu_count(),
                python=platform.python_version(),
                machine=platform.machine(),
                load_avg_start=load,
                load_avg_end=load_end,
            ),
            results=rows,
            breakdown=breakdown,
        )
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
