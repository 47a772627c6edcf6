#!/usr/bin/env python
"""Cost of generating the smoke plume data (PhiFlow 3.4), with and without the factorised pressure solve.

``keras_relaxeq.datasets.smoke_plume_simulation`` solves the pressure with ``Solve("scipy-direct")``.  PhiFlow
hands each step's solve to ``scipy.sparse.linalg.spsolve``, which factorises the (constant) pressure matrix every
step; the generator now factorises it once per simulation (``_factorized_pressure_solve``).  This script runs
both side by side in one process on simulations of the chosen set and reports, per simulation grid:

* the time per step (from runs of ``--steps`` and ``2 --steps`` steps, so the one-off cost of the first
  step, with the factorisation, is reported apart as ``setup``);
* the ratio per-step-spsolve / factorised;
* the largest absolute difference of the velocity frames the two produce (0: the same numbers);

and, from a straight-line fit of the factorised time per step against the grid's cell count, the estimated
CPU time of the whole set at 310 steps per simulation.

Example (the scale set: its smallest, a middle and its largest grid)::

    python benchmarks/bench_smoke_plume_generation.py --config scale --indices 0 20 37 --steps 5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import numpy as np


def _timed(simulate, spec, steps, output_resolution):
    start = time.process_time()
    frames = simulate([spec], num_steps=steps, progress=False, output_resolution=output_resolution)
    return time.process_time() - start, frames


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="scale", choices=("scale", "rotation"))
    p.add_argument("--indices", type=int, nargs="+", default=[0, 20, 37], help="simulations of the set")
    p.add_argument("--steps", type=int, default=5, help="timed steps (runs of N and 2N steps)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)

    from keras_relaxeq.datasets import smoke_plume_simulation as sps

    config = sps.smoke_plume_config(args.config)
    fast = sps._factorized_pressure_solve
    variants = {"spsolve": contextlib.nullcontext, "factorised": fast}
    rows = []
    try:
        for index in args.indices:
            spec = config.simulations[index]
            row = {"simulation": spec.name, "grid": spec.resolution}
            frames = {}
            for name, context in variants.items():
                sps._factorized_pressure_solve = context
                short, _ = _timed(sps.simulate_smoke_plume, spec, args.steps, config.output_resolution)
                long, frames[name] = _timed(sps.simulate_smoke_plume, spec, 2 * args.steps, config.output_resolution)
                per_step = (long - short) / args.steps
                row[name] = {"cpu_s_per_step": per_step, "setup_cpu_s": max(short - args.steps * per_step, 0.0)}
            row["ratio"] = row["spsolve"]["cpu_s_per_step"] / row["factorised"]["cpu_s_per_step"]
            row["max_abs_diff"] = float(np.abs(frames["spsolve"] - frames["factorised"]).max())
            rows.append(row)
            print(
                f"sim {spec.name:>3} grid {spec.resolution:>3}: spsolve {row['spsolve']['cpu_s_per_step']:.3f} s/step, "
                f"factorised {row['factorised']['cpu_s_per_step']:.3f} s/step "
                f"(setup {row['factorised']['setup_cpu_s']:.2f} s), ratio {row['ratio']:.2f}, "
                f"max |diff| {row['max_abs_diff']:.3g}",
                flush=True,
            )
    finally:
        sps._factorized_pressure_solve = fast

    result = {"config": args.config, "steps": args.steps, "rows": rows}
    if len(rows) >= 2:
        cells = np.array([r["grid"] ** 2 for r in rows], float)
        for name in variants:
            slope, intercept = np.polyfit(cells, [r[name]["cpu_s_per_step"] for r in rows], 1)
            total = sum(
                (intercept + slope * s.resolution**2) * config.num_steps
                + np.interp(s.resolution**2, cells, [r[name]["setup_cpu_s"] for r in rows])
                for s in config.simulations
            )
            result[f"estimated_set_cpu_hours_{name}"] = total / 3600.0
            print(
                f"estimated CPU time of the {args.config} set ({len(config.simulations)} simulations x "
                f"{config.num_steps} steps), {name}: {total / 3600.0:.2f} h"
            )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
