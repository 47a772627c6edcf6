"""Helpers shared by the benchmark scripts (run as ``python benchmarks/<script>.py``, so this
folder is on ``sys.path``): quartiles of repeated timings, peak memory, machine facts."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys


def quantiles(values):
    """``(first quartile, median, third quartile)`` of repeated timings (inclusive method)."""
    values = sorted(values)
    if len(values) == 1:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], statistics.median(values), q[2]


def peak_rss_mib():
    """Peak resident set size of this process in MiB.

    ``VmHWM`` from ``/proc/self/status`` where available: ``getrusage().ru_maxrss`` survives
    ``execve`` on Linux, so a worker subprocess started by a large parent would report the
    parent's peak.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    scale = 1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def machine_info() -> dict:
    """CPU count, platform, TensorFlow / Keras versions and visible GPUs (for the JSON summaries)."""
    import keras
    import tensorflow as tf

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "gpus": len(tf.config.list_physical_devices("GPU")),
    }


CALL_OPS = ("PartitionedCall", "StatefulPartitionedCall")

#: op types that a kernel rewrite produces from a public op (oneDNN: ``_MklMatMul``,
#: ``_MklNativeFusedMatMul``, ...; grappler's remapper: ``_FusedMatMul``, ``_FusedConv2D``)
_FUSED_PUBLIC = ("MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3", "Conv2D", "Conv3D", "DepthwiseConv2dNative")


def answer_timing_requests(run, send) -> None:
    """Worker side of the interleaved timing rounds of ``bench_vn_models.py`` (and its PyTorch
    reference worker): for every ``steps K`` line on stdin call ``run(K)`` (K steps, finished when it
    returns) and ``send({"ms": ms per step})``; stop at ``quit`` or end of input."""
    import sys
    import time

    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        steps = int(cmd[1])
        t0 = time.perf_counter()
        run(steps)
        send({"ms": 1000.0 * (time.perf_counter() - t0) / steps})


def canonical_op_type(op_type: str) -> str:
    """The public TensorFlow op type of a profiled kernel, whichever CPU kernels TensorFlow picked.

    Where TensorFlow's oneDNN rewrite is active (it depends on the CPU and on
    ``TF_ENABLE_ONEDNN_OPTS``) ``MatMul`` runs as ``_MklMatMul``, ``Einsum`` as ``_MklEinsum`` and a
    matmul fused with its bias as ``_MklNativeFusedMatMul`` or ``_FusedMatMul``; all of these are
    reported under the public name (``MatMul``, ``Einsum``), so tables and tests do not depend on
    the machine.  Other names are returned unchanged.
    """
    name = op_type
    for prefix in ("_MklNative", "_Mkl", "_"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    else:
        return op_type
    if name.startswith("Fused") and name[len("Fused") :] in _FUSED_PUBLIC:
        name = name[len("Fused") :]
    return name or op_type


def op_time_tables(logdir, steps, top=15, scope_depth=3):
    """Summarise a ``tf.profiler`` trace in ``logdir``: op time per step by op type and by scope.

    Reads the newest ``*.xplane.pb`` below ``logdir`` (written by
    ``tf.profiler.experimental.start/stop``) and adds the durations of the executed TensorFlow
    ops (host-plane events named ``op_name:OpType``) over all threads.  Returns
    ``{"total_ms": ..., "by_type": [(op_type, ms_per_step, share), ...], "by_scope": [...]}``;
    op types are reported by their public name (:func:`canonical_op_type`: ``_MklMatMul`` is
    ``MatMul``); a scope is the op name cut after ``scope_depth`` ``/``-separated parts with the model name
    dropped (for a Keras model: the layer, then its sub-layer), gradient ops keep a ``grad:``
    prefix.  Function calls are not counted (their ops are).  Shares are of the summed op time
    (which can exceed the wall time with several threads).
    """
    import glob
    from collections import Counter

    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    files = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)
    if not files:
        raise FileNotFoundError(f"no *.xplane.pb below {logdir}")
    space = xplane_pb2.XSpace()
    with open(files[-1], "rb") as fh:
        space.ParseFromString(fh.read())
    by_type, by_scope = Counter(), Counter()
    for plane in space.planes:
        if not plane.name.startswith("/host:"):
            continue
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if "::" in name or ":" not in name:
                    continue  # executor bookkeeping, not an op
                op_name, op_type = (part.strip() for part in name.rsplit(":", 1))
                if op_type.startswith("__") or op_type in CALL_OPS or " " in op_name:
                    continue  # a function call (eager or nested): its ops are counted instead
                ms = event.duration_ps / 1e9
                by_type[canonical_op_type(op_type)] += ms
                parts = op_name.split("/")
                grad = parts[0] == "gradient_tape" or any(p.startswith("gradients") for p in parts)
                parts = [p for p in parts if p != "gradient_tape" and not p.startswith("gradients")]
                scope = "/".join(parts[1 : 1 + scope_depth - 1] if len(parts) > 1 else parts)
                by_scope[("grad: " if grad else "") + scope] += ms
    total = sum(by_type.values())

    def rows(counter):
        return [(k, v / steps, v / total if total else 0.0) for k, v in counter.most_common(top)]

    return {"total_ms": total / steps, "by_type": rows(by_type), "by_scope": rows(by_scope)}


def format_op_tables(tables, title):
    """Markdown tables of :func:`op_time_tables`."""
    out = [
        f"{title}: {tables['total_ms']:.1f} ms of op time per step",
        "",
        "| op type | ms/step | share |",
        "|---|---|---|",
    ]
    out += [f"| {k} | {ms:.1f} | {100 * s:.0f}% |" for k, ms, s in tables["by_type"]]
    out += ["", "| scope | ms/step | share |", "|---|---|---|"]
    out += [f"| `{k}` | {ms:.1f} | {100 * s:.0f}% |" for k, ms, s in tables["by_scope"]]
    return "\n".join(out)


def train_steps(model, batches, steps, start=0):
    """Run ``steps`` compiled train steps (``model.train_function``, what ``fit`` runs) cycling through
    ``batches``; returns the last loss (reading it forces the steps to complete)."""
    if model.train_function is None:
        model.make_train_function()
    logs = None
    for i in range(steps):
        logs = model.train_function(iter([batches[(start + i) % len(batches)]]))
    return float(logs["loss"])
