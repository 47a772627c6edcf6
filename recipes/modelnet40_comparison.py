#!/usr/bin/env python
"""Relaxed vs standard training of VN-PointNet on ModelNet40 under a CPU budget (issue 3, docs/results.md).

Runs ``recipes/modelnet40.py`` once per (arm, seed) -- arm ``relaxed`` (``--relaxed``) and arm
``standard`` (``--no-relaxed``), the same hyper-parameters otherwise -- then aggregates the runs'
``summary.json`` / ``log.csv`` into ``comparison.json``, ``comparison.md`` (mean and std of the
projected models' validation accuracy) and ``comparison.png`` (accuracy and theta per epoch).

    python recipes/modelnet40_comparison.py --output-dir runs/mn40_cmp            # the CPU protocol
    python recipes/modelnet40_comparison.py --output-dir runs/mn40_cmp --report-only
    python recipes/modelnet40_comparison.py --seeds 0 --epochs 1 --max-train-samples 48 \
        --output-dir /tmp/cmp -- --points 64                  # anything after -- goes to every run

The CPU protocol (defaults here): published VN-PointNet hyper-parameters (Adam 1e-3, weight decay
1e-4, batch 24, lambda 0.01 / 0.01, triangle schedule, 300 points, SO(3) rotations) with the
schedule compressed from 200 to ``--epochs`` epochs (StepLR every ``--lr-step`` epochs instead of
every 20; theta updated per step) and a ``--width`` multiplier on every channel count.

Every run resumes from its own backup, so re-running the same command after an interruption
continues where it stopped (finished runs are only re-aggregated).  ``--jobs`` runs that many
trainings at once, each with ``--threads`` TensorFlow threads (two 1-thread jobs use a 2-core
machine better than one 2-thread job at this width).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ARMS = ("relaxed", "standard")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--output-dir", default="runs/modelnet40_comparison")
    p.add_argument("--model", default="vn_pointnet", choices=("vn_pointnet", "vn_dgcnn"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--lr-step", type=int, default=1, help="StepLR step (epochs); published 20 of 200")
    p.add_argument("--bn-reestimate", type=int, default=20,
                   help="also report the projected model after BN re-estimation on N batches (0: off)")
    p.add_argument("--max-train-samples", type=int, default=None)
    p.add_argument("--jobs", type=int, default=2, help="trainings at once")
    p.add_argument("--threads", type=int, default=1, help="TensorFlow threads per training")
    p.add_argument("--report-only", action="store_true", help="only aggregate finished runs")
    p.add_argument("extra", nargs="*", help="after --: options passed to every recipes/modelnet40.py run")
    return p


def run_dir(out: Path, arm: str, seed: int) -> Path:
    return out / f"{arm}_seed{seed}"


def command(args, arm: str, seed: int) -> list[str]:
    cmd = [sys.executable, str(HERE / "modelnet40.py"), "--model", args.model,
           "--relaxed" if arm == "relaxed" else "--no-relaxed", "--seed", str(seed),
           "--epochs", str(args.epochs), "--width", str(args.width), "--lr-step", str(args.lr_step),
           "--theta-per-step", "--verbose", "2", "--output-dir", str(run_dir(Path(args.output_dir), arm, seed))]
    if args.bn_reestimate:
        cmd += ["--bn-reestimate", str(args.bn_reestimate)]
    if args.max_train_samples:
        cmd += ["--max-train-samples", str(args.max_train_samples)]
    return cmd + list(args.extra)


def finished(d: Path, epochs: int) -> bool:
    try:
        summary = json.loads((d / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    return summary.get("epochs_run", 0) >= epochs


def train_one(args, arm: str, seed: int) -> int:
    d = run_dir(Path(args.output_dir), arm, seed)
    if finished(d, args.epochs):
        print(f"[{arm} seed {seed}] finished earlier", flush=True)
        return 0
    d.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if args.threads:
        env.update(TF_NUM_INTRAOP_THREADS=str(args.threads), TF_NUM_INTEROP_THREADS=str(args.threads),
                   OMP_NUM_THREADS=str(args.threads))
    cmd = command(args, arm, seed)
    (d / "command.txt").write_text(" ".join(cmd) + "\n")
    print(f"[{arm} seed {seed}] start: {' '.join(cmd)}", flush=True)
    t0 = time.time()
    with open(d / "stdout.log", "a") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    print(f"[{arm} seed {seed}] exit {rc} after {(time.time() - t0) / 60:.1f} min (log: {d / 'stdout.log'})",
          flush=True)
    return rc


def read_log(path: Path) -> dict[str, list[float]]:
    """Per-epoch columns of a run's ``log.csv`` (the recipe's reader: a resumed epoch counts once)."""
    sys.path.insert(0, str(HERE))
    try:
        from modelnet40 import read_csv_history
    finally:
        sys.path.remove(str(HERE))
    return read_csv_history(path)


def _mean_std(values):
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None, None
    m = sum(vals) / len(vals)
    s = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return m, s


def aggregate(args) -> dict:
    out = Path(args.output_dir)
    runs, curves = [], {arm: [] for arm in args.arms}
    for arm in args.arms:
        for seed in args.seeds:
            d = run_dir(out, arm, seed)
            try:
                s = json.loads((d / "summary.json").read_text())
            except (OSError, ValueError):
                runs.append(dict(arm=arm, seed=seed, finished=False))
                continue
            log = read_log(d / "log.csv")
            curves[arm].append(log)
            runs.append(dict(
                arm=arm, seed=seed, finished=s["epochs_run"] >= args.epochs, epochs=s["epochs_run"],
                final_projected_val_accuracy=s["final_projected_val_accuracy"],
                final_projected_val_accuracy_bn_reestimated=s.get("final_projected_val_accuracy_bn_reestimated"),
                best_projected_val_accuracy=s["best_projected_val_accuracy"], best_epoch=s["best_epoch"],
                invariance_max_error=s["invariance"]["max_error"],
                invariance_relative_max_error=s["invariance"]["relative_max_error"],
                wall_time_minutes=s["wall_time_seconds"] / 60, params_trained=s["params"]["trained_model"],
                params_projected=s["params"]["projected_model"],
                command=(d / "command.txt").read_text().strip() if (d / "command.txt").exists() else None))
    table = {}
    for arm in args.arms:
        done = [r for r in runs if r["arm"] == arm and r.get("finished")]
        table[arm] = {"runs": len(done)}
        for key in ("final_projected_val_accuracy", "final_projected_val_accuracy_bn_reestimated",
                    "best_projected_val_accuracy", "invariance_max_error", "wall_time_minutes"):
            m, s = _mean_std([r.get(key) for r in done])
            table[arm][key] = {"mean": m, "std": s}
    result = {"protocol": {k: getattr(args, k) for k in ("model", "epochs", "width", "lr_step", "bn_reestimate",
                                                          "max_train_samples", "seeds", "extra")},
              "summary": table, "runs": runs}
    (out / "comparison.json").write_text(json.dumps(result, indent=2))
    (out / "comparison.md").write_text(markdown(result))
    plot(curves, out / "comparison.png", args)
    return result


def _fmt(ms, scale=100.0, digits=1):
    m, s = ms["mean"], ms["std"]
    if m is None:
        return "n/a"
    return f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}"


def markdown(result) -> str:
    lines = ["| arm | runs | final projected val acc (%) | after BN re-estimation (%) | best projected val acc (%) "
             "| invariance max error | minutes per run |", "|---|---|---|---|---|---|---|"]
    for arm, t in result["summary"].items():
        lines.append(f"| {arm} | {t['runs']} | {_fmt(t['final_projected_val_accuracy'])} "
                     f"| {_fmt(t['final_projected_val_accuracy_bn_reestimated'])} "
                     f"| {_fmt(t['best_projected_val_accuracy'])} "
                     f"| {t['invariance_max_error']['mean'] or float('nan'):.1e} "
                     f"| {_fmt(t['wall_time_minutes'], 1.0, 0)} |")
    lines += ["", "| arm | seed | epochs | final | BN re-est. | best (epoch) | invariance max error |",
              "|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        if "epochs" not in r:
            lines.append(f"| {r['arm']} | {r['seed']} | not run | | | | |")
            continue
        bn = r["final_projected_val_accuracy_bn_reestimated"]
        lines.append(f"| {r['arm']} | {r['seed']} | {r['epochs']} | {100 * r['final_projected_val_accuracy']:.2f} "
                     f"| {'n/a' if bn is None else f'{100 * bn:.2f}'} "
                     f"| {100 * (r['best_projected_val_accuracy'] or float('nan')):.2f} ({r['best_epoch']}) "
                     f"| {r['invariance_max_error']:.1e} |")
    return "\n".join(lines) + "\n"


def plot(curves, path: Path, args):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    colors = {"relaxed": "tab:red", "standard": "tab:blue"}
    for arm, logs in curves.items():
        for key, ax, label in (("projected_val_accuracy", axes[0], "projected val accuracy"),
                               ("accuracy", axes[1], "train accuracy (relaxed model)")):
            rows = [np.asarray(log.get(key, []), dtype=float) for log in logs if log.get(key)]
            if not rows:
                continue
            n = min(len(r) for r in rows)
            data = np.stack([r[:n] for r in rows])
            epochs = np.arange(1, n + 1)
            for r in data:
                ax.plot(epochs, r, color=colors[arm], alpha=0.25, lw=0.8)
            ax.plot(epochs, data.mean(0), color=colors[arm], lw=2, label=f"{arm} (mean of {len(rows)})")
            ax.set_title(label)
            ax.set_xlabel("epoch")
            ax.legend()
        thetas = [log.get("theta") for log in logs if log.get("theta")]
        if thetas:
            axes[2].plot(np.arange(1, len(thetas[0]) + 1), thetas[0], color=colors[arm], label=f"{arm} theta")
    axes[2].set_title("theta at the end of each epoch")
    axes[2].set_xlabel("epoch")
    axes[2].legend()
    fig.suptitle(f"{args.model} on ModelNet40 (SO(3)), width {args.width}, {args.epochs} epochs")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        # seed-major order, so that an interrupted comparison has complete pairs first
        jobs = [(arm, seed) for seed in args.seeds for arm in args.arms]
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            codes = list(pool.map(lambda job: train_one(args, *job), jobs))
        failed = [job for job, rc in zip(jobs, codes) if rc != 0]
        if failed:
            print(f"failed runs: {failed} (see their stdout.log); aggregating the others", file=sys.stderr)
    result = aggregate(args)
    print((out / "comparison.md").read_text())
    print(f"written: {out / 'comparison.json'}, {out / 'comparison.md'}, {out / 'comparison.png'}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
