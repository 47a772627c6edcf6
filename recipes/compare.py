#!/usr/bin/env python
"""Relaxed vs standard training, several seeds (and optionally a sweep), aggregated (docs/results.md).

Runs a recipe once per (sweep value, arm, seed) -- arm ``relaxed`` (``--relaxed``) and arm
``standard`` (``--no-relaxed``), every other option identical -- then aggregates the runs'
``summary.json`` / ``log.csv`` into ``comparison.json``, ``comparison.md`` (mean and sample std
per arm and sweep value) and ``comparison.png`` (per-epoch curves; the metric vs the sweep value);
a sweep writes ``comparison_<option>.*`` instead.  This file holds the command line and the
experiments; the work is done by :mod:`keras_relaxeq.experiments`.

    python recipes/compare.py modelnet40 --output-dir runs/mn40_cmp                # issue 3's CPU protocol
    python recipes/compare.py modelnet40 --output-dir runs/mn40_cmp --report-only  # aggregate only
    python recipes/compare.py segnn_nbody --output-dir runs/segnn_cmp --epochs 1000
    python recipes/compare.py segnn_nbody --sweep layers=2,4,6,8 --output-dir runs/segnn_cmp
    python recipes/compare.py segnn_nbody --sweep train-samples=1000,3000,10000 --output-dir runs/segnn_cmp
    python recipes/compare.py md17_ethanol --output-dir runs/md17/ethanol            # 3 seeds, relaxed and standard
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
* ``smoke_plume``, ``smoke_plume_scale``: ``recipes/smoke_plume.py`` (rotation; ``--symmetry scale``), five arms
  (``cnn``, ``equivariant``, ``relaxed``, ``rsteer``, ``rsteer_relaxed``, the relaxed one paired with the
  equivariant one), the CPU protocol of docs/experiments/smoke_plume.md (width 0.125, 10 epochs of 25 batches,
  10 validation batches, full test splits).  Metric: 20-step rollout RMSE on the future split (domain beside it).
* ``md17_ethanol``, ``md17_aspirin``: ``recipes/md17.py`` on one molecule with the CPU protocol of
  docs/experiments/md17.md (width 0.25, 6 blocks, 40 epochs of which 4 warm-up, the published optimiser
  otherwise; aspirin: 27 random batches of 8 per epoch).  Metric: test energy MAE (meV) of the
  projected model selected on validation loss; force MAE (meV/Å) beside it.

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
(``RECORD_FILES``: command, layout, ``summary.json``, ``log.csv``, ``relaxation.csv``) -- into
``DIR/<run>``; ``--report-only --output-dir DIR`` then rebuilds the tables and figures without the
checkpoints (``--report-dir`` writes them elsewhere).  ``docs/runs/`` holds the records behind
``docs/results.md``.  With ``--export-state`` an unfinished run also takes what it needs to resume
(``RESUME_STATE``: the backup and the best projected model so far), copied as one snapshot
with its log; ``--import-from DIR`` copies such runs into ``--output-dir`` before training, so a
comparison continues on another machine:

    python recipes/compare.py segnn_nbody --sweep layers=8 --seeds 0 --output-dir runs/segnn_cmp \
        --report-only --export docs/runs/segnn_nbody --export-state
    python recipes/compare.py segnn_nbody --sweep layers=8 --seeds 0 --output-dir runs/segnn_cmp \
        --import-from docs/runs/segnn_nbody          # on the next machine: resumes where it stopped
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from keras_relaxeq.experiments import Comparison, Experiment, Metric, run_comparison

HERE = Path(__file__).resolve().parent
SMOKE_ARMS = ("cnn", "equivariant", "relaxed", "rsteer", "rsteer_relaxed")

EXPERIMENTS = {
    "modelnet40": Experiment(
        script="modelnet40.py",
        protocol=(
            "--model",
            "vn_pointnet",
            "--width",
            "0.25",
            "--lr-step",
            "1",
            "--theta-per-step",
            "--bn-reestimate",
            "20",
        ),
        epochs=8,
        metric=Metric("final_projected_val_accuracy", "final projected val acc (%)", 100.0, 1),
        higher_is_better=True,
        curve="projected_val_accuracy",
        curve_label="projected val accuracy",
        extra_metrics=(
            Metric("final_projected_val_accuracy_bn_reestimated", "after BN re-estimation (%)", 100.0, 1),
            Metric("best_projected_val_accuracy", "best projected val acc (%)", 100.0, 1),
            Metric("invariance.max_error", "invariance max error", 1.0, -1),
        ),
        train_curve="accuracy",
    ),
    # the published protocol, uncompressed: full width, StepLR(20, 0.7), theta on the reference's
    # 200-epoch clock whatever --epochs is (so a run extended session by session follows one schedule)
    "modelnet40_full": Experiment(
        script="modelnet40.py",
        protocol=("--model", "vn_pointnet", "--theta-epochs", "200"),
        epochs=200,
        metric=Metric("best_projected_val_accuracy", "best projected val acc (%)", 100.0, 1),
        higher_is_better=True,
        curve="projected_val_accuracy",
        curve_label="projected val accuracy",
        extra_metrics=(
            Metric("final_projected_val_accuracy", "final projected val acc (%)", 100.0, 1),
            Metric("invariance.max_error", "invariance max error", 1.0, -1),
        ),
        train_curve="accuracy",
    ),
    "segnn_nbody": Experiment(
        script="segnn_nbody.py",
        protocol=(),
        epochs=1000,
        metric=Metric("best_test_mse", "test MSE of the selected projected model (x1e-3)", 1e3, 3),
        higher_is_better=False,
        curve="projected_val_loss",
        curve_label="projected val MSE",
        extra_metrics=(
            Metric("best_projected_val_mse", "best projected val MSE (x1e-3)", 1e3, 3),
            Metric("final_projected_test_mse", "final projected test MSE (x1e-3)", 1e3, 3),
            Metric("equivariance_of_best_projected.o3_max_error", "O(3) max error", 1.0, -1),
        ),
        train_curve="task_loss",
        train_curve_label="train MSE (penalties subtracted from the loss)",
        log_scale=True,
    ),
    # the CPU protocol of docs/experiments/smoke_plume.md: five arms, the relaxed one paired with the equivariant
    "smoke_plume": Experiment(
        script="smoke_plume.py",
        protocol=("--width", "0.125", "--max-train-batches", "25", "--max-val-batches", "10"),
        epochs=10,
        metric=Metric("rmse_future", "RMSE future", 1.0, 3),
        higher_is_better=False,
        curve="projected_val_rmse",
        curve_label="projected val RMSE",
        extra_metrics=(
            Metric("rmse_domain", "RMSE domain", 1.0, 3),
            Metric("best_projected_val_rmse", "best projected val RMSE", 1.0, 3),
            Metric("c4_equivariance.relative_max_error", "C4 relative error", 1.0, -1),
        ),
        train_curve="rmse",
        train_curve_label="train RMSE (6-step rollouts)",
        arms=SMOKE_ARMS,
        arm_options={arm: ("--arm", arm) for arm in SMOKE_ARMS},
        baseline_arm="equivariant",
    ),
}
# the same CPU protocol on the scale task (issue 24): SESN models, the published scale settings otherwise
EXPERIMENTS["smoke_plume_scale"] = dataclasses.replace(
    EXPERIMENTS["smoke_plume"],
    protocol=("--symmetry", "scale", *EXPERIMENTS["smoke_plume"].protocol),
    extra_metrics=(
        *EXPERIMENTS["smoke_plume"].extra_metrics[:2],
        Metric("scale_equivariance.relative_max_error", "scale-step error (trunk)", 1.0, -1),
    ),
)
# the CPU protocol of docs/experiments/md17.md: width 0.25, 6 blocks, 40 epochs with 4 warm-up, one molecule each;
# aspirin (21 atoms, 4.4x the CPU time per step of ethanol's 9) sees 27 batches per epoch, the cost of ethanol's 118
MD17_BATCHES = {"ethanol": (), "aspirin": ("--max-train-batches", "27")}
for _molecule, _batches in MD17_BATCHES.items():
    EXPERIMENTS[f"md17_{_molecule}"] = Experiment(
        script="md17.py",
        protocol=("--molecule", _molecule, "--width", "0.25", "--blocks", "6", "--warmup-epochs", "4", *_batches),
        epochs=40,
        metric=Metric("energy_mae_mev", "energy MAE (meV)", 1.0, 2),
        higher_is_better=False,
        curve="projected_val_loss",
        curve_label="projected val loss (1 x energy + 80 x force L2-MAE, standardised)",
        extra_metrics=(
            Metric("force_mae_mev_per_angstrom", "force MAE (meV/Å)", 1.0, 2),
            Metric("e3_equivariance.force_relative_error", "E(3) force relative error", 1.0, -1),
        ),
        train_curve="forces_mae",
        train_curve_label="train force MAE (standardised, with the branch)",
        log_scale=True,
    )


def build_parser() -> argparse.ArgumentParser:
    """The command line options (everything before ``--``)."""
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("experiment", choices=sorted(EXPERIMENTS))
    p.add_argument("--output-dir", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", default=None, help="default: the experiment's arms (relaxed standard)")
    p.add_argument("--epochs", type=int, default=None, help="default: the experiment's protocol")
    p.add_argument(
        "--sweep",
        default=None,
        metavar="OPTION=V1,V2,...",
        help="also vary one recipe option, e.g. layers=2,4,6,8 or train-samples=1000,3000",
    )
    p.add_argument("--jobs", type=int, default=2, help="trainings at once")
    p.add_argument("--threads", type=int, default=1, help="TensorFlow threads per training (0: TF default)")
    p.add_argument("--report-only", action="store_true", help="only aggregate the finished runs")
    p.add_argument(
        "--report-dir", metavar="DIR", default=None, help="write comparison*.{md,json,png} here (default: --output-dir)"
    )
    p.add_argument(
        "--export",
        metavar="DIR",
        default=None,
        help="copy every run's record (RECORD_FILES) into DIR/<run> after the report",
    )
    p.add_argument(
        "--export-state",
        action="store_true",
        help="with --export: unfinished runs also take their resume state (RESUME_STATE)",
    )
    p.add_argument(
        "--import-from",
        metavar="DIR",
        default=None,
        help="before training, copy the runs exported to DIR into --output-dir (runs that have no backup there yet)",
    )
    p.epilog = "Options after -- are passed to every recipe run (e.g. -- --points 64)."
    return p


def parse_args(argv=None) -> Comparison:
    """The comparison the command line asks for; everything after the first ``--`` goes to the recipe runs."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    args = build_parser().parse_args(argv)
    if args.export_state and not args.export:
        raise SystemExit("--export-state needs --export DIR")
    spec = EXPERIMENTS[args.experiment]
    if args.arms is None:
        args.arms = list(spec.arms)
    unknown = [a for a in args.arms if a not in spec.arms]
    if unknown:
        raise SystemExit(
            f"--arms: {args.experiment} has no arm {', '.join(unknown)}; choose from {', '.join(spec.arms)}"
        )
    return Comparison(spec=spec, recipes_dir=HERE, extra=extra, **vars(args))


def main(argv=None) -> dict:
    """Run the comparison of the command line; returns its report (see ``run_comparison``)."""
    return run_comparison(parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
