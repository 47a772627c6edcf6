#!/usr/bin/env python
"""Relaxed vs standard training, several seeds (and optionally a sweep), aggregated (docs/results.md).

Runs a recipe once per (sweep value, arm, seed) -- arm ``relaxed`` (``--relaxed``) and arm
``standard`` (``--no-relaxed``), every other option identical -- then aggregates the runs'
``summary.json`` / ``log.csv`` into ``comparison.json``, ``comparison.md`` (mean and sample std
per arm and sweep value) and ``comparison.png`` (per-epoch curves; the metric vs the sweep value);
a sweep writes ``comparison_<option>.*`` instead.

    python recipes/compare.py modelnet40 --output-dir runs/mn40_cmp                # issue 3's CPU protocol
    python recipes/compare.py modelnet40 --output-dir runs/mn40_cmp --report-only  # aggregate only
    python recipes/compare.py segnn_nbody --output-dir runs/segnn_cmp --epochs 1000
    python recipes/compare.py segnn_nbody --sweep layers=2,4,6,8 --output-dir runs/segnn_cmp
    python recipes/compare.py segnn_nbody --sweep train-samples=1000,3000,10000 --output-dir runs/segnn_cmp
    python recipes/compare.py modelnet40 --seeds 0 --epochs 1 --output-dir /tmp/cmp -- --points 64
                                        # anything after -- goes to every run (and overrides the protocol)

Experiments (``EXPERIMENTS``):

* ``modelnet40``: ``recipes/modelnet40.py --model vn_pointnet`` with the published VN-PointNet
  hyper-parameters (Adam 1e-3, weight decay 1e-4, batch 24, lambda 0.01 / 0.01, triangle schedule,
  300 points, SO(3) rotations), the schedule compressed from 200 to ``--epochs`` (default 8) epochs:
  StepLR every epoch instead of every 20, theta updated per step; ``--width 0.25`` on every channel
  count; BN re-estimation of the projected model reported as well.  Metric: validation accuracy of
  the projected model (higher is better).
* ``modelnet40_full``: the same recipe with the published VN-PointNet protocol uncompressed (full
  width, StepLR(20, 0.7), 200 epochs) and theta on the reference's 200-epoch clock
  (``--theta-epochs 200``) whatever ``--epochs`` is, so ``--epochs 4`` now and ``--epochs 8`` later
  extend one run along one schedule.  Metric: best projected validation accuracy.
* ``segnn_nbody``: ``recipes/segnn_nbody.py`` with its published defaults (1000 epochs, batch 100,
  Adam 5e-4, 3,000 trajectories, 4 layers) unless overridden.  Metric: test MSE of the projected
  model selected on validation MSE (lower is better).

Every run resumes from its own backup, so re-running the same command after an interruption
continues where it stopped (finished runs are only re-aggregated).  ``--jobs`` runs that many
trainings at once, each limited to ``--threads`` TensorFlow threads (two 1-thread jobs use a 2-core
machine better than one 2-thread job for these small models).  Runs are ordered seed-major, so an
interrupted comparison has complete (relaxed, standard) pairs first.

A sweep value equal to what the comparison runs with anyway (``layers=4`` and
``train-samples=3000`` for ``segnn_nbody``: the recipe's default, or the protocol's / the extras'
value) is not trained again: its runs are the comparison's ``<arm>_seed<k>`` in the same
``--output-dir``.  A run directory is locked while it trains, so a sweep started while the
comparison still trains one of those runs skips it (run the sweep again later to aggregate it).

``--export DIR`` copies every run's record -- the small text files the report is made from
(:data:`RECORD_FILES`: command, layout, ``summary.json``, ``log.csv``, ``relaxation.csv``) -- into
``DIR/<run>``; ``--report-only --output-dir DIR`` then rebuilds the tables and figures without the
checkpoints (``--report-dir`` writes them elsewhere).  ``docs/runs/`` holds the records behind
``docs/results.md``.  With ``--export-state`` an unfinished run also takes what it needs to resume
(:data:`RESUME_STATE`: the backup and the best projected model so far), copied as one snapshot
with its log; ``--import-from DIR`` copies such runs into ``--output-dir`` before training, so a
comparison continues on another machine:

    python recipes/compare.py segnn_nbody --sweep layers=8 --seeds 0 --output-dir runs/segnn_cmp \
        --report-only --export docs/runs/segnn_nbody --export-state
    python recipes/compare.py segnn_nbody --sweep layers=8 --seeds 0 --output-dir runs/segnn_cmp \
        --import-from docs/runs/segnn_nbody          # on the next machine: resumes where it stopped
"""

from __future__ import annotations

import argparse
import fcntl
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ARMS = ("relaxed", "standard")
#: a run's record: the text files the report reads (``--export``)
RECORD_FILES = ("command.txt", "layout.txt", "summary.json", "log.csv", "relaxation.csv")
#: what an unfinished run needs besides its record to resume elsewhere (``--export-state``): the
#: backup, and the best projected model so far (model selection continues from it).  The relaxed
#: model at that epoch (``best_relaxed.keras``, several times larger: dense branches) stays behind.
RESUME_STATE = ("backup", "best_projected.keras")


@dataclass(frozen=True)
class Metric:
    key: str            # summary.json key (dotted for nested)
    label: str
    scale: float = 1.0  # shown as value * scale
    digits: int = 2


@dataclass(frozen=True)
class Experiment:
    script: str
    protocol: tuple             # recipe options of the CPU protocol (before --epochs and the extras)
    epochs: int
    metric: Metric              # the headline metric
    higher_is_better: bool
    curve: str                  # log.csv column plotted per epoch
    curve_label: str
    extra_metrics: tuple = ()
    train_curve: str | None = None  # log.csv column (or "task_loss", see task_loss) of the training panel
    train_curve_label: str | None = None
    log_scale: bool = False
    notes: dict = field(default_factory=dict)


EXPERIMENTS = {
    "modelnet40": Experiment(
        script="modelnet40.py",
        protocol=("--model", "vn_pointnet", "--width", "0.25", "--lr-step", "1", "--theta-per-step",
                  "--bn-reestimate", "20"),
        epochs=8,
        metric=Metric("final_projected_val_accuracy", "final projected val acc (%)", 100.0, 1),
        higher_is_better=True,
        curve="projected_val_accuracy", curve_label="projected val accuracy",
        extra_metrics=(Metric("final_projected_val_accuracy_bn_reestimated", "after BN re-estimation (%)", 100.0, 1),
                       Metric("best_projected_val_accuracy", "best projected val acc (%)", 100.0, 1),
                       Metric("invariance.max_error", "invariance max error", 1.0, -1)),
        train_curve="accuracy"),
    # the published protocol, uncompressed: full width, StepLR(20, 0.7), theta on the reference's
    # 200-epoch clock whatever --epochs is (so a run extended session by session follows one schedule)
    "modelnet40_full": Experiment(
        script="modelnet40.py",
        protocol=("--model", "vn_pointnet", "--theta-epochs", "200"),
        epochs=200,
        metric=Metric("best_projected_val_accuracy", "best projected val acc (%)", 100.0, 1),
        higher_is_better=True,
        curve="projected_val_accuracy", curve_label="projected val accuracy",
        extra_metrics=(Metric("final_projected_val_accuracy", "final projected val acc (%)", 100.0, 1),
                       Metric("invariance.max_error", "invariance max error", 1.0, -1)),
        train_curve="accuracy"),
    "segnn_nbody": Experiment(
        script="segnn_nbody.py",
        protocol=(),
        epochs=1000,
        metric=Metric("best_test_mse", "test MSE of the selected projected model (x1e-3)", 1e3, 3),
        higher_is_better=False,
        curve="projected_val_loss", curve_label="projected val MSE",
        extra_metrics=(Metric("best_projected_val_mse", "best projected val MSE (x1e-3)", 1e3, 3),
                       Metric("final_projected_test_mse", "final projected test MSE (x1e-3)", 1e3, 3),
                       Metric("equivariance_of_best_projected.o3_max_error", "O(3) max error", 1.0, -1)),
        train_curve="task_loss", train_curve_label="train MSE (penalties subtracted from the loss)",
        log_scale=True),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("experiment", choices=sorted(EXPERIMENTS))
    p.add_argument("--output-dir", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    p.add_argument("--epochs", type=int, default=None, help="default: the experiment's protocol")
    p.add_argument("--sweep", default=None, metavar="OPTION=V1,V2,...",
                   help="also vary one recipe option, e.g. layers=2,4,6,8 or train-samples=1000,3000")
    p.add_argument("--jobs", type=int, default=2, help="trainings at once")
    p.add_argument("--threads", type=int, default=1, help="TensorFlow threads per training (0: TF default)")
    p.add_argument("--report-only", action="store_true", help="only aggregate the finished runs")
    p.add_argument("--report-dir", metavar="DIR", default=None,
                   help="write comparison*.{md,json,png} here (default: --output-dir)")
    p.add_argument("--export", metavar="DIR", default=None,
                   help="copy every run's record (RECORD_FILES) into DIR/<run> after the report")
    p.add_argument("--export-state", action="store_true",
                   help="with --export: unfinished runs also take their resume state (RESUME_STATE)")
    p.add_argument("--import-from", metavar="DIR", default=None,
                   help="before training, copy the runs exported to DIR into --output-dir (runs that "
                        "have no backup there yet)")
    p.epilog = "Options after -- are passed to every recipe run (e.g. -- --points 64)."
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """The driver's options; everything after the first ``--`` is kept for the recipe runs."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    args = build_parser().parse_args(argv)
    args.extra = extra
    if args.export_state and not args.export:
        raise SystemExit("--export-state needs --export DIR")
    return args


def parse_sweep(text):
    """``"layers=2,4"`` -> ``("layers", ["2", "4"])``; None -> ``(None, [None])``."""
    if not text:
        return None, [None]
    name, _, values = text.partition("=")
    name = name.strip().lstrip("-")
    vals = [v.strip() for v in values.split(",") if v.strip()]
    if not name or not vals:
        raise SystemExit(f"--sweep: expected OPTION=V1,V2,..., got {text!r}")
    return name, vals


def recipe_default(args, option: str):
    """The value a run of the experiment gets for ``--option`` when the sweep does not set it.

    The recipe's own defaults, overridden by the experiment's protocol and the ``--`` extras.
    """
    exp = EXPERIMENTS[args.experiment]
    spec = importlib.util.spec_from_file_location(f"_recipe_{args.experiment}", HERE / exp.script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    parsed, _ = module.build_parser().parse_known_args([*exp.protocol, *args.extra])
    return getattr(parsed, option.replace("-", "_"), None)


def run_name(arm: str, seed: int, sweep_name=None, value=None, baseline=False) -> str:
    """``relaxed_seed0``; in a sweep ``relaxed_layers2_seed0``, except at the baseline value, whose
    run is the plain comparison's (same command), so a sweep in the comparison's output directory
    reuses it instead of training it again."""
    if sweep_name is None or baseline:
        return f"{arm}_seed{seed}"
    return f"{arm}_{sweep_name.replace('-', '_')}{value}_seed{seed}"


def baseline_values(args, sweep_name) -> set:
    """The sweep values the plain comparison runs with anyway (their runs are reused); the
    recipe is loaded once to learn its default."""
    if sweep_name is None:
        return set()
    default = recipe_default(args, sweep_name)
    return {v for v in parse_sweep(args.sweep)[1] if default is not None and str(v) == str(default)}


def report_dir(args) -> Path:
    """Where the report goes: ``--report-dir``, else ``--output-dir`` (next to the runs)."""
    return Path(args.report_dir or args.output_dir)


def output_stem(sweep_name) -> str:
    """``comparison``, or ``comparison_<option>`` for a sweep (sweeps may share the comparison's folder)."""
    return "comparison" if sweep_name is None else f"comparison_{sweep_name.replace('-', '_')}"


def jobs_of(args):
    sweep_name, values = parse_sweep(args.sweep)
    return [(arm, seed, value) for value in values for seed in args.seeds for arm in args.arms], sweep_name


def epochs_of(args) -> int:
    return args.epochs or EXPERIMENTS[args.experiment].epochs


def command(args, arm: str, seed: int, value=None, sweep_name=None, baseline=False) -> list[str]:
    exp = EXPERIMENTS[args.experiment]
    out = Path(args.output_dir) / run_name(arm, seed, sweep_name, value, baseline)
    cmd = [sys.executable, str(HERE / exp.script), *exp.protocol,
           "--relaxed" if arm == "relaxed" else "--no-relaxed", "--seed", str(seed),
           "--epochs", str(epochs_of(args)), "--verbose", "2", "--output-dir", str(out)]
    if sweep_name is not None and not baseline:
        cmd += [f"--{sweep_name}", str(value)]
    return cmd + list(args.extra)


def _load(d: Path):
    try:
        return json.loads((d / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def train_one(args, arm, seed, value, sweep_name, baseline=False) -> int:
    d = Path(args.output_dir) / run_name(arm, seed, sweep_name, value, baseline)
    tag = f"[{d.name}]"
    summary = _load(d)
    if summary and summary.get("epochs_run", 0) >= epochs_of(args):
        print(f"{tag} finished earlier", flush=True)
        return 0
    d.mkdir(parents=True, exist_ok=True)
    # one trainer per run directory: a sweep reuses the comparison's runs, and both may be started
    # from two shells; the lock goes with the process, so a killed driver leaves nothing stale
    lock = open(d / ".compare.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        print(f"{tag} skipped: another compare.py is training it (run this command again when it has "
              f"finished to aggregate it)", flush=True)
        return 0
    try:
        env = dict(os.environ)
        if args.threads:
            n = str(args.threads)
            env.update(TF_NUM_INTRAOP_THREADS=n, TF_NUM_INTEROP_THREADS=n, OMP_NUM_THREADS=n)
        cmd = command(args, arm, seed, value, sweep_name, baseline)
        (d / "command.txt").write_text(" ".join(cmd) + "\n")
        print(f"{tag} start: {' '.join(cmd)}", flush=True)
        t0 = time.time()
        with open(d / "stdout.log", "a") as log:
            rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        print(f"{tag} exit {rc} after {(time.time() - t0) / 60:.1f} min (log: {d / 'stdout.log'})", flush=True)
        return rc
    finally:
        lock.close()


def _tree_stamp(path: Path):
    """(relative name, size, mtime) of every file under ``path``: equal twice means nothing wrote in between."""
    files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())
    return [(str(f.relative_to(path.parent)), f.stat().st_size, f.stat().st_mtime_ns) for f in files]


def _snapshot(src: Path, names, dst: Path, attempts: int = 20) -> list[str]:
    """Copy the items ``names`` of run directory ``src`` that exist into ``dst``, as one snapshot:
    a training writes its log every epoch and its backup every N epochs, so the copy is kept only
    if none of them changed while copying (else it is taken again).  Whatever ``dst`` held of
    :data:`RECORD_FILES` and :data:`RESUME_STATE` before is replaced, so an export never mixes
    files of two moments.  Returns the names copied."""
    from keras_relaxeq.training.recipe import remove_path

    tmp = dst.with_name(dst.name + ".partial")
    for _ in range(attempts):
        present = [n for n in names if (src / n).exists()]
        before = [_tree_stamp(src / n) for n in present]
        remove_path(tmp)
        tmp.mkdir(parents=True)
        for n in present:
            if (src / n).is_dir():
                shutil.copytree(src / n, tmp / n)
            else:
                shutil.copy2(src / n, tmp / n)
        if [n for n in names if (src / n).exists()] == present and [_tree_stamp(src / n) for n in present] == before:
            dst.mkdir(parents=True, exist_ok=True)
            for n in (*RECORD_FILES, *RESUME_STATE):
                remove_path(dst / n)
            for n in present:
                (tmp / n).rename(dst / n)
            remove_path(tmp)
            return present
        time.sleep(1.0)
    remove_path(tmp)
    raise SystemExit(f"--export: {src} kept changing while it was copied; pause or stop its training and retry")


def export_runs(args, dest) -> list[dict]:
    """Copy each run's record (:data:`RECORD_FILES`) into ``dest/<run>``; with ``--export-state``
    an unfinished run also takes its :data:`RESUME_STATE`.  Each run's copy is one consistent
    snapshot and replaces what an earlier export left (a finished run's, or one exported without
    ``--export-state``, has no resume state).  Returns one row per run directory found."""
    jobs, sweep_name = jobs_of(args)
    base = baseline_values(args, sweep_name)
    rows = []
    for arm, seed, value in jobs:
        name = run_name(arm, seed, sweep_name, value, value in base)
        src, dst = Path(args.output_dir) / name, Path(dest) / name
        if not src.is_dir():
            continue
        summary = _load(src)
        finished = bool(summary) and summary.get("epochs_run", 0) >= epochs_of(args)
        names = RECORD_FILES + (RESUME_STATE if args.export_state and not finished else ())
        copied = _snapshot(src, names, dst)
        rows.append({"run": name, "finished": finished, "files": copied})
        print(f"[{name}] exported to {dst}: {', '.join(copied)}", flush=True)
    return rows


def import_runs(args, source) -> list[str]:
    """Copy the runs exported to ``source`` into ``--output-dir``, except where a run already has
    a backup or a finished summary there (never overwrites training progress).  Returns their names."""
    jobs, sweep_name = jobs_of(args)
    base = baseline_values(args, sweep_name)
    imported = []
    for arm, seed, value in jobs:
        name = run_name(arm, seed, sweep_name, value, value in base)
        src, dst = Path(source) / name, Path(args.output_dir) / name
        if not src.is_dir():
            continue
        if (dst / "backup").exists() or _load(dst) is not None:
            print(f"[{name}] not imported: {dst} already has a backup or a summary", flush=True)
            continue
        shutil.copytree(src, dst, dirs_exist_ok=True)
        imported.append(name)
        print(f"[{name}] imported from {src}", flush=True)
    return imported


def read_log(path: Path) -> dict:
    """Per-epoch columns of a run's ``log.csv`` (the recipes' reader: a resumed epoch counts once)."""
    from keras_relaxeq.training.recipe import read_csv_history
    return read_csv_history(path)


def read_relaxation(path: Path) -> dict:
    """The all-branch totals of a relaxed run's ``relaxation.csv`` (``RelaxationMonitor``), or {}."""
    from keras_relaxeq.training.diagnostics import read_relaxation_log
    return read_relaxation_log(path)


def task_loss(history: dict, config: dict) -> list[float]:
    """The training loss without the relaxation penalties, per epoch.

    ``loss`` in ``log.csv`` is what ``RelaxedModel`` minimises: the task loss plus
    ``lambda_lie * lie_penalty + lambda_proj * projection_penalty`` (times theta with
    ``penalty_scale="theta"``), with both penalties logged as epoch means; subtracting the
    penalty gives the epoch mean of the task loss (exact when the batches of an epoch have equal
    size, as in the SEGNN recipe, and theta is constant within the epoch).  Standard runs log no
    penalty: their loss is the task loss.
    """
    loss = history.get("loss", [])
    lie, proj = history.get("lie_penalty"), history.get("projection_penalty")
    if lie is None or proj is None:
        return list(loss)
    theta = history.get("theta") if config.get("penalty_scale") == "theta" else None
    out = []
    for i, value in enumerate(loss):
        penalty = config.get("lambda_lie", 0.0) * lie[i] + config.get("lambda_proj", 0.0) * proj[i]
        out.append(value - penalty * (theta[i] if theta is not None else 1.0))
    return out


def _direction(signed) -> dict:
    """The median of the signed ``relaxed / standard - 1`` and the share of epochs where the
    relaxed curve is lower (about 0 and 50% when the arms differ only by noise)."""
    import numpy as np

    signed = signed[~np.isnan(signed)]
    if not signed.size:
        return {"epochs": 0, "signed_median": None, "relaxed_lower": None}
    return {"epochs": int(signed.size), "signed_median": float(np.median(signed)),
            "relaxed_lower": float(np.mean(signed < 0))}


def paired_curves(by_seed: dict, key: str, selected: dict | None = None) -> list[dict]:
    """How far apart the two arms' per-epoch ``key`` curves are, per seed (and sweep value) where
    both arms have finished: quantiles of ``|relaxed / standard - 1|`` over the common epochs.
    The same seed gives both arms the same initial weights and batches, so this measures how
    much the relaxation moves the trajectory. Its direction: the median of the signed
    ``relaxed / standard - 1`` and the share of epochs where the relaxed curve is lower (about
    0 and 50% when the arms differ only by noise).

    ``selected`` maps ``(value, arm, seed)`` to the run's selected (1-based) epoch. With both arms'
    epochs known, the direction is also given separately for epochs ``1..s`` and ``s+1..end``,
    ``s`` the later of the two: whether a direction arises before the models are selected (and
    so can reach the reported metric) or only after."""
    import numpy as np

    selected = selected or {}
    out = []
    for (value, arm, seed), relaxed in by_seed.items():  # filled in the jobs' order: sweep value, then seed
        standard = by_seed.get((value, "standard", seed))
        if arm != "relaxed" or standard is None:
            continue
        n = min(len(relaxed.get(key, [])), len(standard.get(key, [])))
        if not n:
            continue
        signed = np.asarray(relaxed[key][:n]) / np.asarray(standard[key][:n]) - 1.0
        diff = np.abs(signed[~np.isnan(signed)])
        direction = _direction(signed)
        pair = {"sweep_value": value, "seed": seed, "epochs": n,  # no finite epoch (a diverged run): None
                "median": float(np.median(diff)) if diff.size else None,
                "p90": float(np.percentile(diff, 90)) if diff.size else None,
                "max": float(np.max(diff)) if diff.size else None,
                "signed_median": direction["signed_median"], "relaxed_lower": direction["relaxed_lower"]}
        picks = [selected.get((value, a, seed)) for a in ("relaxed", "standard")]
        if all(isinstance(e, int) and e > 0 for e in picks):
            split = min(max(picks), n)
            pair.update(split_epoch=split, to_selection=_direction(signed[:split]),
                        after_selection=_direction(signed[split:]))
        out.append(pair)
    return out


def paired_metric(runs: list[dict], metric: Metric) -> list[dict]:
    """The headline metric of the two arms side by side, per seed (and sweep value) where both
    have finished: ``relaxed - standard`` and ``relaxed / standard - 1``."""
    finished = {(r["sweep_value"], r["arm"], r["seed"]): r[metric.key] for r in runs
                if r.get("finished") and r.get(metric.key) is not None}
    out = []
    for (value, arm, seed), relaxed in finished.items():
        standard = finished.get((value, "standard", seed))
        if arm != "relaxed" or standard is None:
            continue
        out.append({"sweep_value": value, "seed": seed, "relaxed": relaxed, "standard": standard,
                    "difference": relaxed - standard,
                    "relative": relaxed / standard - 1.0 if standard else float("nan")})
    return out


def _get(summary: dict, dotted: str):
    value = summary
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value if isinstance(value, (int, float)) else None


def mean_std(values):
    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    m = sum(vals) / len(vals)
    # the sample standard deviation is undefined for one run (None: the tables print the mean alone)
    s = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else None
    return {"mean": m, "std": s, "n": len(vals)}


def selected_epochs(runs: list[dict]) -> dict:
    """``(sweep value, arm, seed)`` -> the selected (1-based) epoch of each finished run."""
    return {(r["sweep_value"], r["arm"], r["seed"]): r.get("best_epoch") for r in runs if r.get("finished")}


def aggregate(args) -> dict:
    exp = EXPERIMENTS[args.experiment]
    out = Path(args.output_dir)
    jobs, sweep_name = jobs_of(args)
    metrics = (exp.metric, *exp.extra_metrics)
    runs, curves, by_seed, partial = [], {}, {}, {}
    base = baseline_values(args, sweep_name)
    for arm, seed, value in jobs:
        d = out / run_name(arm, seed, sweep_name, value, value in base)
        summary = _load(d)
        row = {"arm": arm, "seed": seed, "sweep_value": value, "run": d.name}
        if summary is None:  # not started, or running / killed before its first summary
            history = read_log(d / "log.csv") if (d / "log.csv").exists() else {}
            if history.get("epoch"):
                row["epochs_logged"] = len(history["epoch"])
                partial.setdefault((value, arm), []).append(history)  # drawn, never aggregated
            runs.append(dict(row, finished=False))
            continue
        row.update(finished=summary.get("epochs_run", 0) >= epochs_of(args), epochs=summary.get("epochs_run"),
                   best_epoch=summary.get("best_epoch"),
                   wall_time_minutes=summary.get("wall_time_seconds", float("nan")) / 60,
                   command=(d / "command.txt").read_text().strip() if (d / "command.txt").exists() else None)
        row.update({m.key: _get(summary, m.key) for m in metrics})
        runs.append(row)
        if row["finished"]:
            history = read_log(d / "log.csv")
            history["task_loss"] = task_loss(history, summary.get("config", {}))
            history["relaxation"] = read_relaxation(d / "relaxation.csv")
            curves.setdefault((value, arm), []).append(history)
            by_seed[(value, arm, seed)] = history
    selected = selected_epochs(runs)
    groups = []
    for value in parse_sweep(args.sweep)[1]:
        for arm in args.arms:
            done = [r for r in runs if r["arm"] == arm and r["sweep_value"] == value and r["finished"]]
            stats = {m.key: mean_std(r[m.key] for r in done) for m in metrics}
            stats["wall_time_minutes"] = mean_std(r["wall_time_minutes"] for r in done)
            groups.append({"arm": arm, "sweep_value": value, "runs": len(done), "stats": stats})
    result = {"experiment": args.experiment, "sweep": sweep_name,
              "protocol": {"script": exp.script, "options": list(exp.protocol), "epochs": epochs_of(args),
                           "seeds": args.seeds, "extra": list(args.extra)},
              "metric": exp.metric.key, "higher_is_better": exp.higher_is_better,
              "groups": groups, "runs": runs, "paired_metric": paired_metric(runs, exp.metric),
              "paired_curves": paired_curves(by_seed, exp.curve, selected)}
    stem = output_stem(sweep_name)
    report = report_dir(args)
    report.mkdir(parents=True, exist_ok=True)
    (report / f"{stem}.json").write_text(json.dumps(result, indent=2))
    (report / f"{stem}.md").write_text(markdown(result, exp))
    if sweep_name:
        result["figure_panels"] = plot_sweep(curves, result, exp, report / f"{stem}.png")
    else:
        result["figure_panels"] = plot(curves, result, exp, report / f"{stem}.png", partial=partial)
    return result


def _fmt(value, m: Metric):
    if value is None:
        return "n/a"
    if m.digits < 0:
        return f"{value:.1e}"
    return f"{value * m.scale:.{m.digits}f}"


def _fmt_ms(stats, m: Metric):
    if stats["mean"] is None:
        return "n/a"
    if m.digits < 0:
        return f"{stats['mean']:.1e}"
    if stats["std"] is None:
        return f"{stats['mean'] * m.scale:.{m.digits}f}"
    return f"{stats['mean'] * m.scale:.{m.digits}f} ± {stats['std'] * m.scale:.{m.digits}f}"


def run_progress(run: dict, epochs: int) -> str:
    """How far a run that has not finished is: ``N of M epochs logged`` (no summary yet),
    ``N of M epochs (unfinished)`` (a summary from an invocation with fewer epochs) or ``not started``."""
    if run.get("epochs") is not None:
        return f"{run['epochs']} of {epochs} epochs (unfinished)"
    return f"{run['epochs_logged']} of {epochs} epochs logged" if run.get("epochs_logged") else "not started"


def _direction_cells(d: dict) -> list[str]:
    """Signed median and share of epochs with the relaxed curve lower, or n/a (no finite epochs)."""
    if d["signed_median"] is None:
        return ["n/a", "n/a"]
    return [f"{100 * d['signed_median']:+.2f}%", f"{100 * d['relaxed_lower']:.0f}%"]


def markdown(result, exp: Experiment) -> str:
    metrics = (exp.metric, *exp.extra_metrics)
    sweep = result["sweep"]
    head = ([sweep] if sweep else []) + ["arm", "runs"] + [m.label for m in metrics] + ["minutes (last invocation)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    minutes = Metric("wall_time_minutes", "", 1.0, 0)
    for g in result["groups"]:
        cells = ([str(g["sweep_value"])] if sweep else []) + [g["arm"], str(g["runs"])]
        cells += [_fmt_ms(g["stats"][m.key], m) for m in metrics] + [_fmt_ms(g["stats"]["wall_time_minutes"], minutes)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Mean ± sample standard deviation over the finished seeds (the mean alone for one run). Per run:",
              ""]
    head = ([sweep] if sweep else []) + ["arm", "seed", "epochs"] + [m.label for m in metrics]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["runs"]:
        cells = ([str(r["sweep_value"])] if sweep else []) + [r["arm"], str(r["seed"])]
        if "epochs" not in r:
            progress = run_progress(r, result["protocol"]["epochs"])
            cells += [f"in progress: {progress}" if r.get("epochs_logged") else progress] + [""] * len(metrics)
        else:
            cells += [f"{r['epochs']}" + ("" if r["finished"] else " (unfinished)")]
            cells += [_fmt(r[m.key], m) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    pairs = result.get("paired_metric") or []
    if pairs:
        m = exp.metric
        lines += ["", f"Relaxed vs standard, per seed (both finished): {m.label}:", ""]
        head = ([sweep] if sweep else []) + ["seed", "relaxed", "standard", "relaxed - standard",
                                             "relaxed / standard - 1"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for p in pairs:
            cells = ([str(p["sweep_value"])] if sweep else []) + [str(p["seed"])]
            cells += [_fmt(p["relaxed"], m), _fmt(p["standard"], m), f"{p['difference'] * m.scale:+.{max(m.digits, 0)}f}",
                      f"{100 * p['relative']:+.1f}%"]
            lines.append("| " + " | ".join(cells) + " |")
    pairs = result.get("paired_curves") or []
    if pairs:
        lines += ["", f"Relaxed vs standard at the same epoch, per seed (both finished): |relaxed / standard - 1| of "
                      f"the {exp.curve_label} over the epochs (median, 90th percentile, max), the median of the "
                      f"signed relaxed / standard - 1, and the share of epochs where the relaxed curve is lower:", ""]
        head = ([sweep] if sweep else []) + ["seed", "epochs", "median", "90th percentile", "max", "signed median",
                                             "relaxed lower"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for p in pairs:
            cells = ([str(p["sweep_value"])] if sweep else []) + [str(p["seed"]), str(p["epochs"])]
            cells += ["n/a" if p[k] is None else f"{100 * p[k]:.2f}%" for k in ("median", "p90", "max")]
            cells += _direction_cells(p)
            lines.append("| " + " | ".join(cells) + " |")
        split = [p for p in pairs if "split_epoch" in p]
        if split:
            lines += ["", "The direction up to the selected epochs and after them: signed median and share of epochs "
                          "with the relaxed curve lower over epochs 1..s and s+1..end, s the later of the two arms' "
                          "selected epochs:", ""]
            head = ([sweep] if sweep else []) + ["seed", "s", "signed median to s", "relaxed lower to s",
                                                 "signed median after s", "relaxed lower after s"]
            lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for p in split:
                cells = ([str(p["sweep_value"])] if sweep else []) + [str(p["seed"]), str(p["split_epoch"])]
                cells += _direction_cells(p["to_selection"]) + _direction_cells(p["after_selection"])
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


#: line colour of each arm in the figures
ARM_COLORS = {"relaxed": "tab:red", "standard": "tab:blue"}


def _stacked(logs, key):
    """The runs' per-epoch ``key`` curves as one array ``[runs, common epochs]``, or None."""
    import numpy as np

    rows = [np.asarray(log[key], dtype=float) for log in logs if key and log.get(key)]
    if not rows:
        return None
    n = min(len(r) for r in rows)
    return np.stack([r[:n] for r in rows])


def _branch_size(logs):
    """The branch size ``||theta R(x)|| / ||E(x)||`` the runs logged (``relaxation.csv``), mean over
    the runs at their common epochs: ``(epochs counted from 1, values, number of runs)``, or None."""
    import numpy as np

    series = [dict(zip(log["relaxation"]["epoch"], log["relaxation"]["relative"]))
              for log in logs if log.get("relaxation", {}).get("epoch")]
    common = sorted(set.intersection(*map(set, series))) if series else []
    if not common:
        return None
    return np.asarray(common) + 1, [np.mean([by_epoch[e] for by_epoch in series]) for e in common], len(series)


def plot(curves, result, exp: Experiment, path: Path, partial=None) -> list[str]:
    """Writes the figure of a comparison without a sweep (``plot_sweep`` draws sweeps); returns the
    panel titles: the per-epoch curve and training curve (each seed thin, the mean thick), theta,
    and the branch size when the relaxed runs logged it.  ``partial``: the logs of runs still in
    progress, ``{(sweep value, arm): [history, ...]}``, drawn dashed with their epochs so far (a long
    run shows its learning curve before it ends; they enter no statistic)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    colors = ARM_COLORS
    panels = [(exp.curve, exp.curve_label)]
    if exp.train_curve:
        panels.append((exp.train_curve, exp.train_curve_label or f"train {exp.train_curve}"))
    monitored = any(log.get("relaxation", {}).get("epoch") for logs in curves.values() for log in logs)
    ncols = len(panels) + 1 + (1 if monitored else 0)
    fig, axes = plt.subplots(1, ncols, figsize=(5 * ncols, 4))
    for (_, arm), logs in sorted(curves.items(), key=lambda kv: kv[0][1]):
        for (key, label), ax in zip(panels, axes):
            data = _stacked(logs, key)
            if data is None:
                continue
            epochs = np.arange(1, data.shape[1] + 1)
            for r in data:
                ax.plot(epochs, r, color=colors[arm], alpha=0.25, lw=0.8)
            ax.plot(epochs, data.mean(0), color=colors[arm], lw=2, label=f"{arm} (mean of {len(data)})")
            ax.set_title(label)
            ax.set_xlabel("epoch")
            if exp.log_scale:
                ax.set_yscale("log")
        thetas = [log.get("theta") for log in logs if log.get("theta")]
        if thetas and arm == "relaxed":
            axes[len(panels)].plot(np.arange(1, len(thetas[0]) + 1), thetas[0], color=colors[arm], label="theta")
        # how large the branches were (recipes' RelaxationMonitor)
        size = _branch_size(logs)
        if size is not None:
            epochs, mean, runs = size
            axes[len(panels) + 1].plot(epochs, mean, color=colors[arm], marker=".", label=f"{arm} (mean of {runs})")
    for (_, arm), logs in sorted((partial or {}).items(), key=lambda kv: kv[0][1]):
        for (key, label), ax in zip(panels, axes):
            for log in logs:
                if key and log.get(key):
                    values = log[key]
                    ax.plot(np.arange(1, len(values) + 1), values, color=colors[arm], ls="--", marker="o", ms=3,
                            label=f"{arm} (in progress, {len(values)} epochs)")
                    ax.set_title(label)
                    ax.set_xlabel("epoch")
        if arm == "relaxed" and not any(log.get("theta") for log in curves.get((_, arm), [])):
            thetas = [log.get("theta") for log in logs if log.get("theta")]
            if thetas:
                axes[len(panels)].plot(np.arange(1, len(thetas[0]) + 1), thetas[0], color=colors[arm], ls="--",
                                       marker="o", ms=3, label="theta (in progress)")
    axes[len(panels)].set_title("theta at the end of each epoch")
    axes[len(panels)].set_xlabel("epoch")
    if monitored:
        if any(np.any(line.get_ydata() > 0) for line in axes[len(panels) + 1].get_lines()):
            axes[len(panels) + 1].set_yscale("log")  # (a run too short for theta > 0 logs zeros only)
        axes[len(panels) + 1].set_title("||theta R(x)|| / ||E(x)|| (rms, all branches)")
        axes[len(panels) + 1].set_xlabel("epoch")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"{result['experiment']}: relaxed vs standard, {result['protocol']['epochs']} epochs")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    titles = [ax.get_title() for ax in axes]
    plt.close(fig)
    return titles


def _metric_vs_value(ax, result, exp: Experiment, position: dict, colors: dict) -> None:
    """The headline metric against the sweep value, one line per arm (mean ± std over seeds)."""
    m = exp.metric
    for arm, color in colors.items():
        gs = [g for g in result["groups"] if g["arm"] == arm and g["stats"][m.key]["mean"] is not None]
        if gs:
            ax.errorbar([position[g["sweep_value"]] for g in gs], [g["stats"][m.key]["mean"] * m.scale for g in gs],
                        yerr=[(g["stats"][m.key]["std"] or 0.0) * m.scale for g in gs],
                        color=color, marker="o", capsize=3, label=arm)
    ax.set_title(textwrap.fill(m.label, 40), fontsize=10)


def _sweep_axis(ax, result, exp: Experiment, position: dict) -> None:
    """x axis of a metric-vs-sweep-value panel: ticks at the values; log scale for 1,000-10,000."""
    ax.set_xlabel(result["sweep"])
    numeric = all(isinstance(x, float) for x in position.values())
    ticks = list(position.values())
    if numeric and exp.log_scale and min(ticks) > 0 and max(ticks) >= 10 * min(ticks):
        ax.set_xscale("log")
        ax.minorticks_off()
    ax.set_xticks(ticks, [str(v) for v in position])
    if not numeric:  # categorical values (e.g. centring)
        ax.set_xlim(-0.5, len(position) - 0.5)


def plot_sweep(curves, result, exp: Experiment, path: Path) -> list[str]:
    """The figure of a sweep; returns the panel titles.

    Top row: the headline metric against the sweep value for both arms; the per-seed
    ``relaxed / standard - 1`` of it; and, when the relaxed runs logged it, the size of the
    branches over the epochs, one line per value.  Bottom row: one panel per sweep value with both
    arms' per-epoch curve (the training curve thin) and the selected epochs marked, on shared axes.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    colors = ARM_COLORS
    values = parse_sweep_values(result)
    position = sweep_positions(values)
    m = exp.metric
    monitored = any(log.get("relaxation", {}).get("epoch") for logs in curves.values() for log in logs)
    ncols = max(len(values), 3 if monitored else 2)
    fig = plt.figure(figsize=(4.5 * ncols, 8.5), layout="constrained")
    top, bottom = fig.subfigures(2, 1, hspace=0.05)
    upper = top.subplots(1, 3 if monitored else 2)
    lower = np.atleast_1d(bottom.subplots(1, len(values), sharey=True))

    _metric_vs_value(upper[0], result, exp, position, colors)
    _sweep_axis(upper[0], result, exp, position)

    ax = upper[1]
    pairs = result.get("paired_metric") or []
    ax.axhline(0.0, color="0.5", lw=1)
    if pairs:
        xs = [position[p["sweep_value"]] for p in pairs]
        ax.scatter(xs, [100 * p["relative"] for p in pairs], color="k", s=18, label="one seed")
        by_value = {}
        for p in pairs:
            by_value.setdefault(p["sweep_value"], []).append(100 * p["relative"])
        vs = [v for v in values if v in by_value]
        ax.plot([position[v] for v in vs], [np.mean(by_value[v]) for v in vs], color="k", lw=1.5,
                label="mean over seeds")
    better = "higher" if result["higher_is_better"] else "lower"
    ax.set_title(textwrap.fill(f"relaxed / standard - 1 of that metric, % ({better}: relaxed is better)", 40),
                 fontsize=10)
    _sweep_axis(ax, result, exp, position)

    if monitored:
        ax = upper[2]
        cmap = plt.get_cmap("viridis")
        for i, value in enumerate(values):
            size = _branch_size(curves.get((value, "relaxed"), []))
            if size is not None:
                ax.plot(*size[:2], marker=".", ms=3, color=cmap(i / max(1, len(values) - 1)),
                        label=f"{result['sweep']}={value}")
        if any(np.any(line.get_ydata() > 0) for line in ax.get_lines()):
            ax.set_yscale("log")
        ax.set_title(textwrap.fill("relaxed runs: ||theta R(x)|| / ||E(x)|| (rms, all branches)", 40), fontsize=10)
        ax.set_xlabel("epoch")

    best = selected_epochs(result["runs"])
    markers = {"relaxed": "v", "standard": "^"}  # distinct, so that two arms selecting one epoch both show
    for ax, value in zip(lower, values):
        for arm, color in colors.items():
            logs = curves.get((value, arm), [])
            for key, lw, alpha in ((exp.curve, 1.5, 1.0), (exp.train_curve, 0.7, 0.5)):
                data = _stacked(logs, key)
                if data is None:
                    continue
                n, mean = data.shape[1], data.mean(0)
                name = exp.curve_label if key == exp.curve else "train"
                ax.plot(np.arange(1, n + 1), mean, color=color, lw=lw, alpha=alpha,
                        label=f"{arm}, {name}" + (f" (mean of {len(data)})" if len(data) > 1 else ""))
                if key == exp.curve:
                    for (v, a, seed), epoch in best.items():
                        if v == value and a == arm and epoch and epoch <= n:
                            ax.plot([epoch], [mean[epoch - 1]], marker=markers.get(arm, "v"), ms=8, color=color,
                                    mec="black", mew=0.5, alpha=0.8, ls="none")
        if not ax.get_lines():  # no finished run for this value: say how far its runs are
            running = [f"{r['arm']} seed {r['seed']}: {run_progress(r, result['protocol']['epochs'])}"
                       for r in result["runs"] if r["sweep_value"] == value and not r.get("finished")]
            note = "\n".join(["no finished run yet", *running])
            ax.text(0.5, 0.5, note, ha="center", va="center", transform=ax.transAxes, fontsize=9, color="0.3")
            result.setdefault("figure_notes", {})[value] = note
        ax.set_title(f"{result['sweep']}={value} (triangles: the selected epochs)", fontsize=10)
        ax.set_xlabel("epoch")
        if exp.log_scale:
            ax.set_yscale("log")
    lower[0].set_ylabel(exp.curve_label)
    for ax in (*upper, *lower):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"{result['experiment']}: relaxed vs standard over {result['sweep']}, "
                 f"{result['protocol']['epochs']} epochs")
    fig.savefig(path, dpi=100)
    titles = [ax.get_title() for ax in (*upper, *lower)]
    plt.close(fig)
    return titles


def sweep_positions(values) -> dict:
    """x positions of the sweep values on the metric-vs-value panel: the numbers themselves
    (floats), or 0, 1, ... (ints) in the given order when a value is not a number."""
    try:
        return {v: float(v) for v in values}
    except (TypeError, ValueError):
        return {v: i for i, v in enumerate(values)}


def parse_sweep_values(result):
    """The sweep values in the order of the command (``--sweep layers=2,4,6,8``)."""
    return list(dict.fromkeys(g["sweep_value"] for g in result["groups"]))


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.import_from:
        import_runs(args, args.import_from)
    if not args.report_only:
        jobs, sweep_name = jobs_of(args)
        base = baseline_values(args, sweep_name)
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            codes = list(pool.map(lambda job: train_one(args, *job, sweep_name, job[2] in base), jobs))
        failed = [job for job, rc in zip(jobs, codes) if rc != 0]
        if failed:
            print(f"failed runs: {failed} (see their stdout.log); aggregating the others", file=sys.stderr)
    result = aggregate(args)
    stem = report_dir(args) / output_stem(result["sweep"])
    print(stem.with_suffix(".md").read_text())
    print(f"written: {stem}.json, {stem}.md, {stem}.png")
    if args.export:
        result["exported"] = export_runs(args, args.export)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
