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

    return {"cpus": os.cpu_count(), "platform": platform.platform(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "gpus": len(tf.config.list_physical_devices("GPU"))}
