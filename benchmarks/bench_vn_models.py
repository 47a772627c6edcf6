#!/usr/bin/env python
"""Training / inference speed, peak memory and FLOPs of VN-PointNet and VN-DGCNN (relaxed vs plain).

Variants (one worker subprocess each, so that peak memory is per variant):

* ``plain``     ``vn_pointnet(relaxed=False)`` / ``vn_dgcnn(relaxed=False)``: compiled train step;
* ``relaxed``   ``relaxed=True`` at theta = 1 with the Lie and projection penalties (closed form,
  ``lie_method="auto"``) in the loss: compiled train step;
* ``projected`` the relaxed model passed through ``keras_relaxeq.project`` (exactly equivariant):
  compiled inference forward (``tf.function(model(x, training=False))``).

Suffixes (combinable): ``_r<rank>`` low-rank branches (``relaxation_rank=<rank>``, e.g. ``relaxed_r16``),
``_bf16`` the ``mixed_bfloat16`` policy (``relaxed_bf16``), ``_xla`` XLA ``jit_compile``.  Further variants:

* ``matmul_peak`` / ``matmul_peak_bf16``: three ``[--peak-size]^2`` ``tf.matmul`` products per step, in float32 /
  bfloat16, timed in the same rounds as the models; the median GFLOP/s of ``matmul_peak`` is the machine's
  measured fp32 matmul peak under the same load, and every variant's achieved GFLOP/s is also given as a
  fraction of it (``peak%``);
* ``torch_plain`` / ``torch_relaxed`` / ``torch_projected``: the reference PyTorch VN-PointNet (the paper's public
  code, imported from ``--torch-reference``; see ``bench_vn_torch_reference.py``), in the same rounds.

Timing: each worker builds its model, runs ``--warmup`` untimed steps (tracing, grappler; XLA
compilation with ``--jit``), then waits.  The parent runs ``--repeats`` rounds; in each round every
variant runs ``--steps`` consecutive steps in turn (round-robin, rotating the order each round), so
all variants see the same background load; only one worker computes at a time.  Train steps are
``model.train_function`` (the ``tf.function`` that ``fit`` runs) on synthetic point clouds
(standard normal points, random labels; Adam 1e-3 for PointNet, SGD 0.1 / momentum 0.9 for DGCNN,
sparse categorical cross-entropy on logits).  Reported: median and IQR of ms per step over the
rounds, samples/s, relaxed / plain ratio (also the median of the per-round paired ratios), and the
1-minute load average sampled around every round.

Peak memory: ``VmHWM`` (peak resident set) of each worker after its last step
(the process high-water mark: imports + model + optimizer + the largest step), and the same value
minus the RSS after building the model and the data but before the first step (``peak_delta``:
what tracing and running the step adds).

FLOPs (analytic, from the graph): the train step is traced (``tf.function(model.train_step)``, the
same computation ``train_function`` runs, backward pass and optimizer included) with the fixed batch
shape, and every ``MatMul`` / ``BatchMatMul`` / ``Einsum`` op of the graph is counted from its
static shapes as ``2 x (output size) x (contracted size)``.  Element-wise ops, reductions, top-k,
gathers and the optimizer update are not counted, so this is a (tight for these matmul-dominated
models) lower bound; achieved GFLOP/s = counted FLOPs / median step time.  The forward count alone
is reported too (``fwd``), the ratio is the usual ~3.

Example::

    python benchmarks/bench_vn_models.py --model pointnet --points 300 --batch 24 --repeats 5
    python benchmarks/bench_vn_models.py --model pointnet --points 1024 --batch 32 --repeats 3 --steps 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from _common import (  # noqa: E402  (benchmarks/ is sys.path[0])
    answer_timing_requests,
    machine_info,
    peak_rss_mib,
    quantiles,
)

#: Published PyTorch VN-PointNet, 1024 points, batch 32, on this machine type (seconds per batch).
PYTORCH_REFERENCE_1024_B32 = {"plain": 32.0, "relaxed": 102.0, "projected": 16.0}
DEFAULT_BATCH = {"pointnet": 24, "dgcnn": 32}
PROTO = "@@BENCH "


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("pointnet", "dgcnn"), default="pointnet")
    p.add_argument("--points", type=int, default=300)
    p.add_argument("--batch", type=int, default=None, help="default: published (PointNet 24, DGCNN 32)")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--k", type=int, default=20)
    p.add_argument(
        "--variants",
        default="plain,relaxed,projected",
        help="comma-separated subset of plain,relaxed,projected; a '_xla' suffix (plain_xla, ...) "
        "runs that variant with XLA jit_compile, so XLA and non-XLA are timed in one run",
    )
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant (tracing included)")
    p.add_argument("--steps", type=int, default=3, help="steps per variant per round")
    p.add_argument("--repeats", type=int, default=5, help="rounds")
    p.add_argument("--jit", action="store_true", help="XLA jit_compile the train / inference steps")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    p.add_argument("--threads", type=int, default=None, help="TF intra-op threads (default: TF's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--peak-size", type=int, default=2048, help="matrix size of the matmul_peak variants")
    p.add_argument(
        "--torch-reference",
        default=None,
        help="folder PCClassification/vn-pointnet of the reference code, for the torch_* variants",
    )
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p


# ----------------------------------------------------------------------------------------------- worker
def _rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _send(obj):
    sys.stdout.write(PROTO + json.dumps(obj) + "\n")
    sys.stdout.flush()


def _einsum_flops(op):
    eq = op.get_attr("equation").decode()
    lhs, out = eq.replace(" ", "").split("->")
    specs = lhs.split(",")
    sizes = {}
    for spec, t in zip(specs, op.inputs):
        shape = t.shape.as_list()
        if "..." in spec:
            head, tail = spec.split("...")
            for i, c in enumerate(head):
                sizes[c] = shape[i]
            for i, c in enumerate(tail):
                sizes[c] = shape[len(shape) - len(tail) + i]
        else:
            for i, c in enumerate(spec):
                sizes[c] = shape[i]
    contracted = set("".join(specs).replace(".", "")) - set(out.replace(".", ""))
    k = 1
    for c in contracted:
        k *= sizes[c]
    return 2 * op.outputs[0].shape.num_elements() * k


def count_matmul_flops(graph):
    """``(flops, counted ops, uncounted function-call ops)`` of the MatMul/BatchMatMul/Einsum ops."""
    flops, ops, calls = 0, 0, 0
    for op in graph.get_operations():
        try:
            if op.type == "MatMul":
                a = op.inputs[0].shape.as_list()
                k = a[0] if op.get_attr("transpose_a") else a[1]
                flops += 2 * op.outputs[0].shape.num_elements() * k
            elif op.type in ("BatchMatMul", "BatchMatMulV2", "BatchMatMulV3"):
                a = op.inputs[0].shape.as_list()
                k = a[-2] if op.get_attr("adj_x") else a[-1]
                flops += 2 * op.outputs[0].shape.num_elements() * k
            elif op.type == "Einsum":
                flops += _einsum_flops(op)
            else:
                if op.type in (
                    "PartitionedCall",
                    "StatefulPartitionedCall",
                    "While",
                    "StatelessWhile",
                    "If",
                    "StatelessIf",
                ):
                    calls += 1
                continue
            ops += 1
        except (TypeError, ValueError, KeyError):
            calls += 1  # unknown static shape
    return flops, ops, calls


def parse_variant(variant, args):
    """``"relaxed_r16_bf16"`` -> ``{"base": "relaxed", "jit": False, "rank": 16, "bf16": True}``.

    ``--jit`` turns XLA on for every model variant.  ``matmul_peak[_bf16]`` and ``torch_*`` are their own bases.
    """
    if variant in ("matmul_peak", "matmul_peak_bf16"):
        return {"base": "matmul_peak", "jit": False, "rank": None, "bf16": variant.endswith("bf16")}
    if variant.startswith("torch_"):
        if variant not in ("torch_plain", "torch_relaxed", "torch_projected"):
            raise SystemExit(f"unknown variant {variant!r}: use torch_plain, torch_relaxed or torch_projected")
        return {"base": "torch", "jit": False, "rank": None, "bf16": False}
    base, *suffixes = variant.split("_")
    out = {"base": base, "jit": bool(args.jit), "rank": None, "bf16": False}
    if base not in ("plain", "relaxed", "projected"):
        raise SystemExit(
            f"unknown variant {variant!r}: use plain, relaxed, projected with optional _r<rank>, "
            "_bf16, _xla suffixes, matmul_peak[_bf16] or torch_plain/torch_relaxed/torch_projected"
        )
    for suffix in suffixes:
        if suffix == "xla":
            out["jit"] = True
        elif suffix == "bf16":
            out["bf16"] = True
        elif suffix.startswith("r") and suffix[1:].isdigit() and base != "plain":
            out["rank"] = int(suffix[1:])
        else:
            raise SystemExit(f"unknown suffix {suffix!r} in variant {variant!r}")
    return out


def _split_variant(variant, args):
    """``(base, jit)`` of a variant (see :func:`parse_variant`)."""
    spec = parse_variant(variant, args)
    return spec["base"], spec["jit"]


def build_model(args, relaxed, jit=False, rank=None, bf16=False):
    import keras

    import keras_relaxeq as kr
    from keras_relaxeq.models.vn_dgcnn import vn_dgcnn
    from keras_relaxeq.models.vn_pointnet import vn_pointnet

    extra = dict(relaxation_rank=rank, dtype="mixed_bfloat16" if bf16 else None)
    if args.model == "pointnet":
        model = vn_pointnet(num_points=args.points, relaxed=relaxed, width=args.width, k=args.k, **extra)
        optimizer = keras.optimizers.Adam(1e-3)
    else:
        model = vn_dgcnn(num_points=args.points, relaxed=relaxed, width=args.width, k=args.k, **extra)
        optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    if relaxed:
        kr.set_theta(model, 1.0)
    model.compile(
        optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=bool(jit)
    )
    return model


def worker(args):
    import numpy as np
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    import keras

    import keras_relaxeq as kr
    from keras_relaxeq.layers.relaxation import relaxed_layers

    spec = parse_variant(args.worker, args)
    variant, jit = spec["base"], spec["jit"]
    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    batches = [
        (
            tf.constant(rng.standard_normal((args.batch, args.points, 3)).astype("float32")),
            tf.constant(rng.integers(0, 40, size=(args.batch,)).astype("int32")),
        )
        for _ in range(2)
    ]
    t0 = time.perf_counter()
    info = {"variant": args.worker, "jit_compile": jit}
    if variant == "matmul_peak":
        return matmul_peak_worker(args, spec)
    if variant == "projected":
        relaxed_model = build_model(args, relaxed=True, rank=spec["rank"], bf16=spec["bf16"])
        model = kr.project(relaxed_model)
        info["relaxed_layers_before_projection"] = len(relaxed_layers(relaxed_model))
        del relaxed_model
        forward = tf.function(lambda x: model(x, training=False), jit_compile=jit)

        def step(i):
            return forward(batches[i % 2][0])
    else:
        model = build_model(args, relaxed=(variant == "relaxed"), jit=jit, rank=spec["rank"], bf16=spec["bf16"])
        model.make_train_function()

        def step(i):
            return model.train_function(iter([batches[i % 2]]))["loss"]

    info.update(params=int(model.count_params()), relaxed_layers=len(relaxed_layers(model)))
    info["rss_after_build_mib"] = _rss_mib()
    for i in range(max(args.warmup, 1)):
        np.asarray(step(i))
    info["build_warmup_s"] = time.perf_counter() - t0
    if not args.no_flops:
        x_spec = tf.TensorSpec(batches[0][0].shape, tf.float32)
        fwd = tf.function(lambda x: model(x, training=variant != "projected")).get_concrete_function(x_spec)
        info["flops_forward"], _, _ = count_matmul_flops(fwd.graph)
        if variant != "projected":
            y_spec = tf.TensorSpec(batches[0][1].shape, tf.int32)
            cf = tf.function(lambda x, y: model.train_step((x, y))).get_concrete_function(x_spec, y_spec)
            info["flops_step"], info["flop_ops"], info["uncounted_ops"] = count_matmul_flops(cf.graph)
        else:
            info["flops_step"] = info["flops_forward"]
    _send({"ready": info})
    n = max(args.warmup, 1)

    def run(steps):
        nonlocal n
        for _ in range(steps):
            out = step(n)
            n += 1
        np.asarray(out)  # forces completion

    answer_timing_requests(run, _send)
    info.update(peak_rss_mib=peak_rss_mib())
    info["peak_delta_mib"] = info["peak_rss_mib"] - info["rss_after_build_mib"]
    _send({"done": info})


def matmul_peak_worker(args, spec):
    """Three ``[n, n] x [n, n]`` products per step (float32, or bfloat16 with ``spec["bf16"]``)."""
    import numpy as np
    import tensorflow as tf

    n = args.peak_size
    dtype = tf.bfloat16 if spec["bf16"] else tf.float32
    rng = np.random.default_rng(args.seed)
    a = [tf.cast(tf.constant(rng.standard_normal((n, n)).astype("float32")), dtype) for _ in range(3)]
    b = tf.cast(tf.constant(rng.standard_normal((n, n)).astype("float32")), dtype)

    @tf.function
    def step():
        return tf.add_n([tf.cast(tf.matmul(x, b)[0, 0], tf.float32) for x in a])

    for _ in range(max(args.warmup, 1)):
        np.asarray(step())
    info = {
        "variant": args.worker,
        "jit_compile": False,
        "params": 0,
        "relaxed_layers": 0,
        "flops_step": 3 * 2 * n**3,
        "build_warmup_s": 0.0,
    }
    _send({"ready": info})

    def run(steps):
        for _ in range(steps):
            out = step()
        np.asarray(out)  # forces completion

    answer_timing_requests(run, _send)
    info.update(peak_rss_mib=peak_rss_mib(), peak_delta_mib=0.0)
    _send({"done": info})


# ----------------------------------------------------------------------------------------------- parent
class Worker:
    def __init__(self, variant, argv, args=None):
        cmd = [sys.executable, "-u", os.path.abspath(__file__), *argv, "--worker", variant]
        if variant.startswith("torch_"):
            script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_vn_torch_reference.py")
            cmd = [
                sys.executable,
                "-u",
                script,
                "--reference",
                args.torch_reference,
                "--points",
                str(args.points),
                "--batch",
                str(args.batch),
                "--warmup",
                str(args.warmup),
                "--worker",
                variant,
            ]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            if args.no_flops:
                cmd += ["--no-flops"]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        self.variant = variant
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def recv(self):
        for line in self.proc.stdout:
            if line.startswith(PROTO):
                return json.loads(line[len(PROTO) :])
            sys.stderr.write(f"[{self.variant}] {line}")
        raise RuntimeError(f"worker {self.variant} exited (code {self.proc.wait()})")

    def send(self, text):
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.batch is None:
        args.batch = DEFAULT_BATCH[args.model]
        argv += ["--batch", str(args.batch)]
    if args.worker:
        return worker(args)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if parse_variant(v, args)["base"] == "torch" and not args.torch_reference:
            raise SystemExit(f"variant {v} needs --torch-reference PATH (the reference's PCClassification/vn-pointnet)")
    infos, workers = {}, {}
    load_start = os.getloadavg()
    # Build + warm up one worker at a time (no overlap with another worker's tracing).
    for v in variants:
        w = Worker(v, argv, args)
        infos[v] = w.recv()["ready"]
        workers[v] = w
        print(
            f"  ready {v:<9s} build+warm-up {infos[v]['build_warmup_s']:6.1f} s, {infos[v]['params']:,} params, "
            f"{infos[v]['relaxed_layers']} relaxed layers, "
            f"counted {infos[v].get('flops_step', 0) / 1e9:.1f} GFLOP/step",
            flush=True,
        )
    times = {v: [] for v in variants}
    loads = []
    for r in range(args.repeats):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        loads.append(os.getloadavg()[0])
        for v in order:
            workers[v].send(f"run {args.steps}")
            times[v].append(workers[v].recv()["ms"])
        loads.append(os.getloadavg()[0])
        print(
            f"  round {r + 1}/{args.repeats} (load {loads[-1]:.2f}): "
            + "  ".join(f"{v}={times[v][-1]:.0f} ms" for v in variants),
            flush=True,
        )
    for v in variants:
        workers[v].send("quit")
        infos[v].update(workers[v].recv()["done"])
        workers[v].proc.wait()

    results = {}
    for v in variants:
        q1, med, q3 = quantiles(times[v])
        info = infos[v]
        base = v.split("_")[-1] if v.startswith("torch_") else parse_variant(v, args)["base"]
        kind = {"projected": "inference", "matmul_peak": "matmul"}.get(base, "train")
        res = {
            "kind": kind,
            "ms_per_step_median": med,
            "ms_per_step_iqr": [q1, q3],
            "samples_per_second": args.batch * 1000.0 / med,
            "ms_per_step_all": times[v],
            **info,
        }
        if info.get("flops_step"):
            res["gflop_per_step"] = info["flops_step"] / 1e9
            res["achieved_gflops"] = info["flops_step"] / 1e9 / (med / 1000.0)
        if (
            base in PYTORCH_REFERENCE_1024_B32
            and args.model == "pointnet"
            and args.points == 1024
            and args.batch == 32
            and args.width == 1.0
            and not v.startswith("torch_")
        ):
            ref = PYTORCH_REFERENCE_1024_B32[base]
            res["pytorch_reference_s"] = ref
            res["ours_over_pytorch"] = med / 1000.0 / ref
        results[v] = res
    summary = {
        "config": {k: v for k, v in vars(args).items() if k != "worker"},
        "command": "python benchmarks/bench_vn_models.py " + " ".join(sys.argv[1:]),
        "results": results,
        "load_average_start": load_start,
        "load_average_rounds": loads,
        "load_average_end": os.getloadavg(),
        "machine": machine_info(),
    }
    if "matmul_peak" in results:
        peak = results["matmul_peak"]["achieved_gflops"]
        summary["fp32_matmul_peak_gflops"] = peak
        for r in results.values():
            if r.get("achieved_gflops"):
                r["peak_fraction"] = r["achieved_gflops"] / peak
    if "plain" in results:
        summary["over_plain_median"] = {
            v: r["ms_per_step_median"] / results["plain"]["ms_per_step_median"]
            for v, r in results.items()
            if r["kind"] == "train"
        }
        summary["over_plain_paired_median"] = {
            v: statistics.median(a / b for a, b in zip(times[v], times["plain"]))
            for v, r in results.items()
            if r["kind"] == "train"
        }
    if "plain" in results and "relaxed" in results:
        summary["relaxed_over_plain_median"] = (
            results["relaxed"]["ms_per_step_median"] / results["plain"]["ms_per_step_median"]
        )
        summary["relaxed_over_plain_paired_median"] = statistics.median(
            r / p for r, p in zip(times["relaxed"], times["plain"])
        )

    print(
        f"\nVN-{args.model} {args.points} points, batch {args.batch}, width {args.width} ({os.cpu_count()} CPUs, "
        f"jit={bool(args.jit)}; load avg {load_start[0]:.2f} at start, rounds {min(loads):.2f}-{max(loads):.2f}):"
    )
    print(
        f"{'variant':<13s} {'kind':<9s} {'params':>10s} {'ms/step med':>11s} {'IQR':>15s} {'samples/s':>9s} "
        f"{'GFLOP':>7s} {'GFLOP/s':>7s} {'peak%':>6s} {'/plain':>6s} {'peak RSS':>9s} {'delta':>7s}"
    )
    for v, r in results.items():
        print(
            f"{v:<13s} {r['kind']:<9s} {r['params']:>10,d} {r['ms_per_step_median']:>11.0f} "
            f"{r['ms_per_step_iqr'][0]:>7.0f}-{r['ms_per_step_iqr'][1]:<7.0f} {r['samples_per_second']:>9.1f} "
            f"{r.get('gflop_per_step', float('nan')):>7.1f} {r.get('achieved_gflops', float('nan')):>7.1f} "
            f"{100 * r.get('peak_fraction', float('nan')):>5.1f}% "
            f"{summary.get('over_plain_paired_median', {}).get(v, float('nan')):>5.2f}x "
            f"{r['peak_rss_mib']:>6.0f} MiB {r['peak_delta_mib']:>4.0f} MiB"
            + (
                f"   {r['ours_over_pytorch']:.3f}x PyTorch ({r['pytorch_reference_s']:.0f} s)"
                if "ours_over_pytorch" in r
                else ""
            )
        )
    if "relaxed_over_plain_median" in summary:
        print(
            f"relaxed / plain: {summary['relaxed_over_plain_median']:.2f}x (paired median "
            f"{summary['relaxed_over_plain_paired_median']:.2f}x)"
        )
    summary["xla_speedup_paired_median"] = {}
    for v in variants:
        if v + "_xla" in times:  # same round, so the same background load
            speedup = statistics.median(a / b for a, b in zip(times[v], times[v + "_xla"]))
            summary["xla_speedup_paired_median"][v] = speedup
            print(f"{v}: XLA is {speedup:.2f}x faster (paired median over rounds)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return summary


if __name__ == "__main__":
    main()
