#!/usr/bin/env python
"""Op-time profile of one VN-PointNet / VN-DGCNN training step (``tf.profiler``), per variant.

Each variant (``plain``, ``relaxed``, ``relaxed_r<rank>`` for a low-rank branch, a ``_bf16`` suffix for the
``mixed_bfloat16`` policy) is built, warmed up (``--warmup`` untimed steps), then ``--steps`` steps of
``model.train_function`` are traced with ``tf.profiler.experimental`` and summarised by
``_common.op_time_tables``: op time per step by op type and by layer (gradient ops prefixed ``grad:``).
On a shared machine the shares are more telling than the absolute times.

Example::

    python benchmarks/profile_vn_step.py --variants plain,relaxed --points 300 --batch 24 --steps 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from _common import format_op_tables, op_time_tables  # noqa: E402  (benchmarks/ is sys.path[0])


def parse_variant(variant):
    """``"relaxed_r16_bf16"`` -> ``(relaxed=True, rank=16, bf16=True)``."""
    parts = variant.split("_")
    if parts[0] not in ("plain", "relaxed"):
        raise SystemExit(f"unknown variant {variant!r}")
    relaxed, rank, bf16 = parts[0] == "relaxed", None, False
    for p in parts[1:]:
        if p == "bf16":
            bf16 = True
        elif p.startswith("r") and p[1:].isdigit() and relaxed:
            rank = int(p[1:])
        else:
            raise SystemExit(f"unknown variant suffix {p!r} in {variant!r}")
    return relaxed, rank, bf16


def build(args, variant):
    import keras

    import keras_relaxeq as kr
    from keras_relaxeq.models.vn_dgcnn import vn_dgcnn
    from keras_relaxeq.models.vn_pointnet import vn_pointnet

    relaxed, rank, bf16 = parse_variant(variant)
    keras.config.set_dtype_policy("mixed_bfloat16" if bf16 else "float32")
    extra = {"relaxation_rank": rank} if rank else {}
    builder = vn_pointnet if args.model == "pointnet" else vn_dgcnn
    model = builder(num_points=args.points, relaxed=relaxed, width=args.width, k=args.k, **extra)
    keras.config.set_dtype_policy("float32")
    if relaxed:
        kr.set_theta(model, 1.0)
    optimizer = keras.optimizers.Adam(1e-3) if args.model == "pointnet" else keras.optimizers.SGD(0.1, momentum=0.9)
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("pointnet", "dgcnn"), default="pointnet")
    p.add_argument("--points", type=int, default=300)
    p.add_argument("--batch", type=int, default=24)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--variants", default="plain,relaxed")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--logdir", default=None, help="trace directory (default: a temporary one)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = tf.constant(rng.standard_normal((args.batch, args.points, 3)).astype("float32"))
    y = tf.constant(rng.integers(0, 40, size=(args.batch,)).astype("int32"))
    root = args.logdir or tempfile.mkdtemp(prefix="vn_profile_")
    out = {"config": vars(args), "load_average_start": os.getloadavg(), "profiles": {}}
    for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
        model = build(args, variant)
        model.make_train_function()
        for _ in range(args.warmup):
            np.asarray(model.train_function(iter([(x, y)]))["loss"])
        logdir = os.path.join(root, variant)
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        tf.profiler.experimental.start(logdir)
        for _ in range(args.steps):
            loss = model.train_function(iter([(x, y)]))["loss"]
        np.asarray(loss)
        tf.profiler.experimental.stop()
        wall = (time.perf_counter() - t0) * 1000.0 / args.steps
        tables = op_time_tables(logdir, args.steps, top=args.top)
        tables.update(wall_ms_per_step=wall, load_average=load)
        out["profiles"][variant] = tables
        print(
            format_op_tables(
                tables,
                f"{variant} ({args.steps} traced steps, wall {wall:.0f} ms/step "
                f"incl. tracing overhead, load {load:.2f})",
            ),
            flush=True,
        )
        print(flush=True)
        del model
    out["load_average_end"] = os.getloadavg()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return out


if __name__ == "__main__":
    sys.exit(main() and 0)
