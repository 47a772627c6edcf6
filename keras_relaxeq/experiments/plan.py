"""What a comparison runs: the experiment description, its runs, their names and their commands.

A comparison trains a recipe once per (sweep value, arm, seed): arm ``relaxed`` (``--relaxed``)
and arm ``standard`` (``--no-relaxed``), every other option identical.  A sweep value equal to
what the comparison runs with anyway (the recipe's default, or the protocol's / the extras'
value) is its baseline: its runs are the plain comparison's ``<arm>_seed<k>``.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path

ARMS = ("relaxed", "standard")


@dataclass(frozen=True)
class Metric:
    """A number of a run's ``summary.json`` and how the tables show it."""

    key: str  # summary.json key (dotted for nested)
    label: str
    scale: float = 1.0  # shown as value * scale
    digits: int = 2  # decimals; negative: scientific notation, unscaled


@dataclass(frozen=True)
class Experiment:
    """A recipe with the protocol a comparison runs it with, and what the report shows of it."""

    script: str  # the recipe, a file of the recipes directory
    protocol: tuple  # recipe options of the protocol (before --epochs and the extras)
    epochs: int
    metric: Metric  # the headline metric
    higher_is_better: bool
    curve: str  # log.csv column plotted per epoch
    curve_label: str
    extra_metrics: tuple = ()
    train_curve: str | None = None  # log.csv column (or "task_loss", see report.task_loss) of the training panel
    train_curve_label: str | None = None
    log_scale: bool = False
    notes: dict = field(default_factory=dict)
    arms: tuple = ARMS  # the arms the comparison trains by default
    arm_options: dict = field(default_factory=dict)  # arm -> recipe options (default: --relaxed / --no-relaxed)
    baseline_arm: str = "standard"  # the arm the "relaxed" arm is paired with per seed


@dataclass
class Comparison:
    """One invocation of a comparison: the experiment, the runs, where they live and what to do.

    ``recipes_dir`` holds ``spec.script``; ``extra`` are recipe options passed to every run (they
    override the protocol); ``epochs`` None means the experiment's own.  ``jobs``, ``report_only``,
    ``export`` and ``import_from`` only matter to :func:`keras_relaxeq.experiments.runner.run_comparison`.
    """

    experiment: str
    spec: Experiment
    recipes_dir: Path
    output_dir: str
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    arms: list = field(default_factory=lambda: list(ARMS))
    epochs: int | None = None
    sweep: str | None = None
    extra: list = field(default_factory=list)
    jobs: int = 2
    threads: int = 1
    report_only: bool = False
    report_dir: str | None = None
    export: str | None = None
    export_state: bool = False
    import_from: str | None = None


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


def recipe_default(args: Comparison, option: str):
    """The value a run of the experiment gets for ``--option`` when the sweep does not set it.

    The recipe's own defaults, overridden by the experiment's protocol and the ``--`` extras.
    """
    exp = args.spec
    spec = importlib.util.spec_from_file_location(f"_recipe_{args.experiment}", Path(args.recipes_dir) / exp.script)
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


def baseline_values(args: Comparison, sweep_name) -> set:
    """The sweep values the plain comparison runs with anyway (their runs are reused); the
    recipe is loaded once to learn its default."""
    if sweep_name is None:
        return set()
    default = recipe_default(args, sweep_name)
    return {v for v in parse_sweep(args.sweep)[1] if default is not None and str(v) == str(default)}


def report_dir(args: Comparison) -> Path:
    """Where the report goes: ``report_dir``, else ``output_dir`` (next to the runs)."""
    return Path(args.report_dir or args.output_dir)


def output_stem(sweep_name) -> str:
    """``comparison``, or ``comparison_<option>`` for a sweep (sweeps may share the comparison's folder)."""
    return "comparison" if sweep_name is None else f"comparison_{sweep_name.replace('-', '_')}"


def jobs_of(args: Comparison):
    """``([(arm, seed, sweep value), ...], sweep name)``, seed-major within a sweep value, so an
    interrupted comparison has complete (relaxed, standard) pairs first."""
    sweep_name, values = parse_sweep(args.sweep)
    return [(arm, seed, value) for value in values for seed in args.seeds for arm in args.arms], sweep_name


def epochs_of(args: Comparison) -> int:
    """The number of epochs a finished run has: ``epochs``, else the experiment's protocol."""
    return args.epochs or args.spec.epochs


def run_dirs(args: Comparison, root=None):
    """``[(arm, seed, sweep value, run directory), ...]`` of the jobs under ``root`` (default: ``output_dir``)."""
    jobs, sweep_name = jobs_of(args)
    base = baseline_values(args, sweep_name)
    root = Path(args.output_dir if root is None else root)
    return [
        (arm, seed, value, root / run_name(arm, seed, sweep_name, value, value in base)) for arm, seed, value in jobs
    ]


def arm_options(exp: Experiment, arm: str) -> tuple:
    """The recipe options that select ``arm``: the experiment's own, else ``--relaxed`` / ``--no-relaxed``."""
    if arm in exp.arm_options:
        return tuple(exp.arm_options[arm])
    return ("--relaxed",) if arm == "relaxed" else ("--no-relaxed",)


def command(args: Comparison, arm: str, seed: int, value=None, sweep_name=None, baseline=False) -> list[str]:
    """The recipe command of one run: protocol, arm, seed, epochs, output directory, sweep option, extras."""
    exp = args.spec
    out = Path(args.output_dir) / run_name(arm, seed, sweep_name, value, baseline)
    cmd = [
        sys.executable,
        str(Path(args.recipes_dir) / exp.script),
        *exp.protocol,
        *arm_options(exp, arm),
        "--seed",
        str(seed),
        "--epochs",
        str(epochs_of(args)),
        "--verbose",
        "2",
        "--output-dir",
        str(out),
    ]
    if sweep_name is not None and not baseline:
        cmd += [f"--{sweep_name}", str(value)]
    return cmd + list(args.extra)


def run_progress(run: dict, epochs: int) -> str:
    """How far a run that has not finished is: ``N of M epochs logged`` (no summary yet),
    ``N of M epochs (unfinished)`` (a summary from an invocation with fewer epochs) or ``not started``."""
    if run.get("epochs") is not None:
        return f"{run['epochs']} of {epochs} epochs (unfinished)"
    return f"{run['epochs_logged']} of {epochs} epochs logged" if run.get("epochs_logged") else "not started"


def selected_epochs(runs: list[dict]) -> dict:
    """``(sweep value, arm, seed)`` -> the selected (1-based) epoch of each finished run."""
    return {(r["sweep_value"], r["arm"], r["seed"]): r.get("best_epoch") for r in runs if r.get("finished")}
