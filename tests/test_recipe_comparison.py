"""recipes/compare.py and keras_relaxeq.experiments: the commands it runs and the aggregation of finished runs."""

import csv
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from keras_relaxeq.experiments import plan, plots, records, report, runner

ROOT = Path(__file__).resolve().parents[1]


def load_driver():
    spec = importlib.util.spec_from_file_location("compare", ROOT / "recipes" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def fake_run(d: Path, summary: dict, column: str, values):
    """A run directory as the recipes leave it (summary.json and a CSVLogger log.csv)."""
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps(summary))
    with open(d / "log.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", column, "theta"])
        for e, a in enumerate(values):
            w.writerow([e, a, 0.5])
        w.writerow([len(values) - 1, values[-1], 0.0])  # a resumed epoch, logged twice


def mn40_summary(final, bn, best, epochs=3):
    return {
        "epochs_run": epochs,
        "final_projected_val_accuracy": final,
        "final_projected_val_accuracy_bn_reestimated": bn,
        "best_projected_val_accuracy": best,
        "invariance": {"max_error": 1e-5},
        "wall_time_seconds": 600.0,
    }


def test_commands_differ_only_in_the_arm():
    drv = load_driver()
    args = drv.parse_args(["modelnet40", "--output-dir", "/tmp/x", "--epochs", "5", "--", "--points", "64"])
    relaxed, standard = plan.command(args, "relaxed", 1), plan.command(args, "standard", 1)
    assert set(relaxed) ^ set(standard) == {
        "--relaxed",
        "--no-relaxed",
        "/tmp/x/relaxed_seed1",
        "/tmp/x/standard_seed1",
    }
    assert relaxed[1].endswith("modelnet40.py") and relaxed[-2:] == ["--points", "64"]
    assert relaxed[relaxed.index("--epochs") + 1] == "5" and relaxed[relaxed.index("--width") + 1] == "0.25"
    # a sweep adds the option and names the run after it; the protocol's default epochs apply
    args = drv.parse_args(["segnn_nbody", "--output-dir", "/tmp/s", "--sweep", "layers=2,8"])
    jobs, name = plan.jobs_of(args)
    assert name == "layers" and len(jobs) == 2 * 2 * 3
    cmd = plan.command(args, "standard", 2, "8", name)
    assert cmd[cmd.index("--layers") + 1] == "8" and cmd[cmd.index("--epochs") + 1] == "1000"
    assert cmd[cmd.index("--output-dir") + 1] == "/tmp/s/standard_layers8_seed2"
    with pytest.raises(SystemExit):
        plan.parse_sweep("layers=")


def test_full_protocol_keeps_the_reference_theta_clock_at_any_length():
    drv = load_driver()
    spec = importlib.util.spec_from_file_location("recipe_modelnet40_full", ROOT / "recipes" / "modelnet40.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    for epochs, expected in ((None, 200), ("6", 6)):
        args = drv.parse_args(["modelnet40_full", "--output-dir", "/tmp/x"] + (["--epochs", epochs] if epochs else []))
        cmd = plan.command(args, "relaxed", 0)
        cfg = recipe.resolve_config(recipe.build_parser().parse_args(cmd[2:]))
        # published settings at full width; only the length of the invocation follows --epochs
        assert (cfg["epochs"], cfg["theta_epochs"], cfg["width"], cfg["lr_step"]) == (expected, 200, 1.0, 20)
        assert cfg["theta_per_step"] is False and cfg["bn_reestimate"] is None


def test_aggregate_mean_std_and_outputs(tmp_path):
    drv = load_driver()
    fake_run(tmp_path / "relaxed_seed0", mn40_summary(0.50, 0.52, 0.55), "projected_val_accuracy", [0.1, 0.2, 0.5])
    fake_run(tmp_path / "relaxed_seed1", mn40_summary(0.60, 0.61, 0.65), "projected_val_accuracy", [0.1, 0.3, 0.6])
    fake_run(tmp_path / "standard_seed0", mn40_summary(0.40, None, 0.45), "projected_val_accuracy", [0.1, 0.2, 0.4])
    fake_run(
        tmp_path / "standard_seed1",
        mn40_summary(0.30, None, 0.35, epochs=2),  # unfinished: not in the mean
        "projected_val_accuracy",
        [0.1, 0.3],
    )
    args = drv.parse_args(["modelnet40", "--output-dir", str(tmp_path), "--seeds", "0", "1", "--epochs", "3"])
    result = report.aggregate(args)
    rel, std = ({g["arm"]: g for g in result["groups"]}[a] for a in ("relaxed", "standard"))
    assert rel["runs"] == 2 and std["runs"] == 1
    acc = rel["stats"]["final_projected_val_accuracy"]
    assert math.isclose(acc["mean"], 0.55) and math.isclose(acc["std"], math.sqrt(0.005))  # sample std
    assert math.isclose(std["stats"]["final_projected_val_accuracy"]["mean"], 0.40)
    assert std["stats"]["final_projected_val_accuracy_bn_reestimated"]["mean"] is None
    md = (tmp_path / "comparison.md").read_text()
    assert "| relaxed | 2 | 55.0 ± 7.1 | 56.5 ± 6.4 |" in md
    assert "| standard | 1 | 2 (unfinished) |" in md
    assert (tmp_path / "comparison.png").stat().st_size > 10_000
    # a run killed before its first summary shows its logged epochs; a missing run says so
    (tmp_path / "relaxed_seed2").mkdir()
    (tmp_path / "relaxed_seed2" / "log.csv").write_text("epoch,projected_val_accuracy\n0,0.1\n1,0.2\n1,0.2\n")
    args = drv.parse_args(["modelnet40", "--output-dir", str(tmp_path), "--seeds", "0", "1", "2", "--epochs", "3"])
    md = report.markdown(report.aggregate(args), drv.EXPERIMENTS["modelnet40"])
    assert "| relaxed | 2 | in progress: 2 of 3 epochs logged |" in md
    assert "| standard | 2 | not started |" in md
    assert json.loads((tmp_path / "comparison.json").read_text())["protocol"]["epochs"] == 3
    # the recipes' CSV reader: the epoch logged twice (resume) counts once, the last row wins
    assert records.read_log(tmp_path / "relaxed_seed0" / "log.csv")["theta"] == [0.5, 0.5, 0.0]


def test_aggregate_sweep_lower_is_better(tmp_path):
    drv = load_driver()
    for layers, mse in (("2", 0.006), ("6", 0.004)):
        for arm, shift in (("relaxed", -0.001), ("standard", 0.0)):
            summary = {
                "epochs_run": 2,
                "best_test_mse": mse + shift,
                "best_projected_val_mse": mse,
                "final_projected_test_mse": mse,
                "equivariance_of_best_projected": {"o3_max_error": 1e-6},
                "wall_time_seconds": 60.0,
            }
            fake_run(tmp_path / f"{arm}_layers{layers}_seed0", summary, "projected_val_loss", [0.1, mse])
    args = drv.parse_args(
        ["segnn_nbody", "--output-dir", str(tmp_path), "--seeds", "0", "--epochs", "2", "--sweep", "layers=2,6"]
    )
    result = report.aggregate(args)
    assert result["higher_is_better"] is False
    by = {(g["sweep_value"], g["arm"]): g["stats"]["best_test_mse"]["mean"] for g in result["groups"]}
    assert math.isclose(by[("6", "relaxed")], 0.003) and math.isclose(by[("2", "standard")], 0.006)
    md = (tmp_path / "comparison_layers.md").read_text()
    assert "| 6 | relaxed | 1 | 3.000 |" in md  # one run: the mean alone (no sample std)
    assert (tmp_path / "comparison_layers.png").stat().st_size > 10_000
    # relaxed vs standard per seed: -0.001 on 0.006 and on 0.004
    assert [(p["sweep_value"], p["seed"]) for p in result["paired_metric"]] == [("2", 0), ("6", 0)]
    assert [round(p["relative"], 4) for p in result["paired_metric"]] == [round(-1 / 6, 4), -0.25]
    assert "| 2 | 0 | 5.000 | 6.000 | -1.000 | -16.7% |" in md
    # the sweep figure: metric vs value, relaxed / standard - 1, then one curve panel per value
    titles = result["figure_panels"]
    assert len(titles) == 4 and titles[0].startswith("test MSE") and titles[1].startswith("relaxed / standard")
    assert titles[2].startswith("layers=2") and titles[3].startswith("layers=6")
    assert not any("R(x)" in t for t in titles)  # no relaxation.csv: no such panel
    assert "figure_notes" not in result  # every panel has curves
    # a relaxed run with a RelaxationMonitor log gets the branch-size panel
    with open(tmp_path / "relaxed_layers2_seed0" / "relaxation.csv", "w") as f:
        f.write("epoch,layer,theta,relative\n0,total,0.5,0.01\n1,total,0.0,0.0\n0,layer_0,0.5,0.02\n")
    result = report.aggregate(args)
    assert len(result["figure_panels"]) == 5
    assert "R(x)" in result["figure_panels"][2] and result["figure_panels"][3].startswith("layers=2")
    # a value whose runs have not finished gets an empty panel that says how far they are
    (tmp_path / "relaxed_layers8_seed0").mkdir()  # in progress: a log, no summary.json yet
    (tmp_path / "relaxed_layers8_seed0" / "log.csv").write_text("epoch,projected_val_loss,theta\n0,0.1,0.5\n")
    args = drv.parse_args(
        ["segnn_nbody", "--output-dir", str(tmp_path), "--seeds", "0", "--epochs", "2", "--sweep", "layers=2,6,8"]
    )
    result = report.aggregate(args)
    assert result["figure_panels"][-1].startswith("layers=8")
    assert result["figure_notes"] == {
        "8": ("no finished run yet\nrelaxed seed 0: 1 of 2 epochs logged\nstandard seed 0: not started")
    }
    # a summary from a shorter invocation (1 of 2 epochs): unfinished, not "not started"
    fake_run(
        tmp_path / "standard_layers8_seed0", {"epochs_run": 1, "wall_time_seconds": 60.0}, "projected_val_loss", [0.1]
    )
    result = report.aggregate(args)
    assert result["figure_notes"]["8"].endswith("standard seed 0: 1 of 2 epochs (unfinished)")
    assert "| 8 | standard | 0 | 1 (unfinished) |" in (tmp_path / "comparison_layers.md").read_text()
    # values keep the command's order (not the string order: 10000 sorts before 3000)
    args = drv.parse_args(
        ["segnn_nbody", "--output-dir", str(tmp_path), "--seeds", "0", "--epochs", "2", "--sweep", "layers=6,2"]
    )
    assert [t.split(" ")[0] for t in report.aggregate(args)["figure_panels"][3:]] == ["layers=6", "layers=2"]


def test_sweep_over_a_categorical_option(tmp_path):
    """A sweep over a non-numeric option (e.g. ``centring=mass,coordinates``) plots its values as
    categories, in the command's order."""
    drv = load_driver()
    assert plots.sweep_positions(["1000", "300"]) == {"1000": 1000.0, "300": 300.0}
    assert plots.sweep_positions(["mass", "coordinates"]) == {"mass": 0, "coordinates": 1}
    for centring, mse in (("mass", 0.005), ("coordinates", 0.0045)):
        summary = {
            "epochs_run": 2,
            "best_test_mse": mse,
            "best_projected_val_mse": mse,
            "final_projected_test_mse": mse,
            "equivariance_of_best_projected": {"o3_max_error": 1e-6},
            "wall_time_seconds": 60.0,
        }
        name = "standard_seed0" if centring == "mass" else f"standard_centring{centring}_seed0"  # the default
        fake_run(tmp_path / name, summary, "projected_val_loss", [0.1, mse])
    args = drv.parse_args(
        [
            "segnn_nbody",
            "--output-dir",
            str(tmp_path),
            "--seeds",
            "0",
            "--arms",
            "standard",
            "--epochs",
            "2",
            "--sweep",
            "centring=mass,coordinates",
        ]
    )
    result = report.aggregate(args)
    by = {g["sweep_value"]: g["stats"]["best_test_mse"]["mean"] for g in result["groups"]}
    assert math.isclose(by["coordinates"], 0.0045) and math.isclose(by["mass"], 0.005)
    assert "| coordinates | standard | 1 | 4.500 | " in (tmp_path / "comparison_centring.md").read_text()
    assert (tmp_path / "comparison_centring.png").stat().st_size > 10_000


def test_sweep_reuses_the_comparison_runs_at_the_baseline_value(tmp_path):
    drv = load_driver()
    args = drv.parse_args(["segnn_nbody", "--output-dir", str(tmp_path), "--seeds", "0", "--sweep", "layers=2,4,8"])
    _, name = plan.jobs_of(args)
    assert plan.recipe_default(args, "layers") == 4 and plan.baseline_values(args, name) == {"4"}
    base = plan.command(args, "relaxed", 0)  # the plain comparison's run
    assert plan.command(args, "relaxed", 0, "4", name, baseline=True) == base
    assert "--layers" not in base and plan.command(args, "relaxed", 0, "2", name)[-2:] == ["--layers", "2"]
    # the extras (and the protocol) override the recipe's default: then 8 is the baseline
    args8 = drv.parse_args(
        ["segnn_nbody", "--output-dir", str(tmp_path), "--sweep", "layers=2,4,8", "--", "--layers", "8"]
    )
    assert plan.baseline_values(args8, name) == {"8"}
    assert plan.baseline_values(
        drv.parse_args(["segnn_nbody", "--output-dir", str(tmp_path), "--sweep", "train-samples=1000,3000"]),
        "train-samples",
    ) == {"3000"}
    # aggregation reads the comparison's runs for the baseline value, into its own files
    for arm in ("relaxed", "standard"):
        for run, mse in ((f"{arm}_seed0", 0.004), (f"{arm}_layers2_seed0", 0.006), (f"{arm}_layers8_seed0", 0.008)):
            summary = {"epochs_run": 2, "best_test_mse": mse, "wall_time_seconds": 60.0}
            fake_run(tmp_path / run, summary, "projected_val_loss", [0.1, mse])
    args = drv.parse_args(
        ["segnn_nbody", "--output-dir", str(tmp_path), "--seeds", "0", "--epochs", "2", "--sweep", "layers=2,4,8"]
    )
    result = report.aggregate(args)
    by = {(r["sweep_value"], r["arm"]): r for r in result["runs"]}
    assert by[("4", "relaxed")]["run"] == "relaxed_seed0" and math.isclose(by[("4", "relaxed")]["best_test_mse"], 0.004)
    assert by[("8", "standard")]["run"] == "standard_layers8_seed0"
    assert (tmp_path / "comparison_layers.md").exists() and not (tmp_path / "comparison.md").exists()


def test_a_run_directory_trains_in_one_driver_at_a_time(tmp_path, capsys):
    import fcntl

    drv = load_driver()
    args = drv.parse_args(["segnn_nbody", "--output-dir", str(tmp_path), "--seeds", "0"])
    d = tmp_path / "relaxed_seed0"
    d.mkdir()
    with open(d / ".compare.lock", "w") as held:  # another driver trains this run
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert runner.train_one(args, "relaxed", 0, None, None) == 0
    assert "skipped: another compare.py is training it" in capsys.readouterr().out
    assert not (d / "stdout.log").exists() and not (d / "command.txt").exists()


def test_runs_in_progress_are_drawn_but_not_aggregated(tmp_path):
    drv = load_driver()
    fake_run(tmp_path / "relaxed_seed0", mn40_summary(0.5, 0.5, 0.6), "projected_val_accuracy", [0.2, 0.4, 0.5])
    (tmp_path / "standard_seed0").mkdir()  # killed before its first summary: a log of 2 epochs only
    with open(tmp_path / "standard_seed0" / "log.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "projected_val_accuracy", "accuracy", "theta"])
        w.writerows([[0, 0.1, 0.1, 0.0], [1, 0.3, 0.2, 0.0]])
    args = drv.parse_args(
        ["modelnet40", "--output-dir", str(tmp_path), "--seeds", "0", "--epochs", "3", "--report-only"]
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = {}
    real_savefig = plt.Figure.savefig

    def capture(fig, *a, **k):
        for ax in fig.axes:
            for line in ax.get_lines():
                drawn.setdefault(ax.get_title(), []).append((line.get_label(), list(line.get_ydata())))
        return real_savefig(fig, *a, **k)

    plt.Figure.savefig = capture
    try:
        result = report.aggregate(args)
    finally:
        plt.Figure.savefig = real_savefig
    standard = next(g for g in result["groups"] if g["arm"] == "standard")
    assert standard["runs"] == 0  # in no statistic
    assert next(r for r in result["runs"] if r["arm"] == "standard")["epochs_logged"] == 2
    assert ("standard (in progress, 2 epochs)", [0.1, 0.3]) in drawn["projected val accuracy"]
    assert ("standard (in progress, 2 epochs)", [0.1, 0.2]) in drawn["train accuracy"]


def test_task_loss_subtracts_the_logged_penalties():
    history = {"loss": [1.0, 2.0], "lie_penalty": [10.0, 20.0], "projection_penalty": [5.0, 5.0], "theta": [0.5, 1.0]}
    config = {"lambda_lie": 0.01, "lambda_proj": 0.02}
    assert report.task_loss(history, config) == pytest.approx([1.0 - 0.1 - 0.1, 2.0 - 0.2 - 0.1])
    # penalty_scale="theta": the penalty was multiplied by the epoch's theta
    scaled = report.task_loss(history, dict(config, penalty_scale="theta"))
    assert scaled == pytest.approx([1.0 - 0.5 * 0.2, 2.0 - 0.3])
    # a standard run logs no penalty: its loss is the task loss
    assert report.task_loss({"loss": [0.3, 0.2]}, config) == [0.3, 0.2]


def test_paired_curves_compare_the_arms_seed_by_seed(tmp_path):
    drv = load_driver()
    summary = {
        "epochs_run": 4,
        "best_test_mse": 0.005,
        "best_projected_val_mse": 0.005,
        "final_projected_test_mse": 0.005,
        "equivariance_of_best_projected": {"o3_max_error": 1e-6},
        "wall_time_seconds": 60.0,
    }
    fake_run(tmp_path / "relaxed_seed0", summary, "projected_val_loss", [1.0, 1.1, 2.0, 0.5])
    fake_run(tmp_path / "standard_seed0", summary, "projected_val_loss", [1.0, 1.0, 1.0, 1.0])
    fake_run(tmp_path / "relaxed_seed1", summary, "projected_val_loss", [1.0, 1.0, 1.0, 1.0])  # no standard pair
    args = drv.parse_args(["segnn_nbody", "--output-dir", str(tmp_path), "--seeds", "0", "1", "--epochs", "4"])
    result = report.aggregate(args)
    # fake_run logs the last epoch twice (a resume); the last row wins: relaxed [1, 1.1, 2, 0.5]
    (pair,) = result["paired_curves"]
    assert pair["seed"] == 0 and pair["epochs"] == 4
    assert pair["median"] == pytest.approx(0.3) and pair["max"] == pytest.approx(1.0)
    assert pair["p90"] == pytest.approx(0.85)  # numpy's linear interpolation between 0.5 and 1.0
    # signed: [0, +0.1, +1.0, -0.5]: median +0.05, relaxed lower in 1 of 4 epochs
    assert pair["signed_median"] == pytest.approx(0.05) and pair["relaxed_lower"] == pytest.approx(0.25)
    assert "| 0 | 4 | 30.00% | 85.00% | 100.00% | +5.00% | 25% |" in (tmp_path / "comparison.md").read_text()
    assert "split_epoch" not in pair  # the summaries name no selected epoch: no split


def test_paired_curves_split_the_direction_at_the_selected_epochs(tmp_path):
    """Epochs 1..s and s+1..end, s the later of the two arms' selected epochs."""
    drv = load_driver()
    summary = {"epochs_run": 6, "best_test_mse": 0.005, "wall_time_seconds": 60.0}
    # signed relaxed / standard - 1: [+0.2, +0.1, -0.1, | -0.2, -0.3, +0.1]
    fake_run(
        tmp_path / "relaxed_seed0", dict(summary, best_epoch=2), "projected_val_loss", [1.2, 1.1, 0.9, 0.8, 0.7, 1.1]
    )
    fake_run(tmp_path / "standard_seed0", dict(summary, best_epoch=3), "projected_val_loss", [1.0] * 6)
    args = drv.parse_args(["segnn_nbody", "--output-dir", str(tmp_path), "--seeds", "0", "--epochs", "6"])
    (pair,) = report.aggregate(args)["paired_curves"]
    assert pair["split_epoch"] == 3
    assert pair["to_selection"] == pytest.approx({"epochs": 3, "signed_median": 0.1, "relaxed_lower": 1 / 3})
    assert pair["after_selection"] == pytest.approx({"epochs": 3, "signed_median": -0.2, "relaxed_lower": 2 / 3})
    # over all six epochs the direction is mixed: median of the signed ratios 0.0, lower in half
    assert pair["signed_median"] == pytest.approx(0.0, abs=1e-12) and pair["relaxed_lower"] == pytest.approx(0.5)
    assert "| 0 | 3 | +10.00% | 33% | -20.00% | 67% |" in (tmp_path / "comparison.md").read_text()
    # a selection at the last epoch leaves nothing after it
    fake_run(tmp_path / "x" / "relaxed_seed0", dict(summary, best_epoch=6), "projected_val_loss", [1.1] * 6)
    fake_run(tmp_path / "x" / "standard_seed0", dict(summary, best_epoch=1), "projected_val_loss", [1.0] * 6)
    args = drv.parse_args(["segnn_nbody", "--output-dir", str(tmp_path / "x"), "--seeds", "0", "--epochs", "6"])
    (pair,) = report.aggregate(args)["paired_curves"]
    assert pair["split_epoch"] == 6 and pair["after_selection"]["signed_median"] is None
    assert "| 0 | 6 | +10.00% | 0% | n/a | n/a |" in (tmp_path / "x" / "comparison.md").read_text()
    # a diverged run (no finite val MSE) has no direction: n/a in both tables, not a crash
    fake_run(tmp_path / "nan" / "relaxed_seed0", dict(summary, best_epoch=2), "projected_val_loss", ["nan"] * 6)
    fake_run(tmp_path / "nan" / "standard_seed0", dict(summary, best_epoch=2), "projected_val_loss", [1.0] * 6)
    args = drv.parse_args(["segnn_nbody", "--output-dir", str(tmp_path / "nan"), "--seeds", "0", "--epochs", "6"])
    (pair,) = report.aggregate(args)["paired_curves"]
    assert pair["signed_median"] is None and pair["median"] is None and pair["to_selection"]["epochs"] == 0
    assert "| 0 | 6 | n/a | n/a | n/a | n/a | n/a |" in (tmp_path / "nan" / "comparison.md").read_text()
    assert "| 0 | 2 | n/a | n/a | n/a | n/a |" in (tmp_path / "nan" / "comparison.md").read_text()


def test_sweep_tables_keep_the_order_of_the_sweep(tmp_path):
    """Values are strings: "10000" sorts before "2000" as text, not in the tables."""
    drv = load_driver()
    summary = {
        "epochs_run": 2,
        "best_test_mse": 0.005,
        "best_projected_val_mse": 0.005,
        "final_projected_test_mse": 0.005,
        "equivariance_of_best_projected": {"o3_max_error": 1e-6},
        "wall_time_seconds": 60.0,
    }
    for value in ("2000", "10000"):
        for arm in ("relaxed", "standard"):
            fake_run(tmp_path / f"{arm}_train_samples{value}_seed0", summary, "projected_val_loss", [0.1, 0.05])
    args = drv.parse_args(
        [
            "segnn_nbody",
            "--output-dir",
            str(tmp_path),
            "--seeds",
            "0",
            "--epochs",
            "2",
            "--sweep",
            "train-samples=2000,10000",
        ]
    )
    result = report.aggregate(args)
    assert [p["sweep_value"] for p in result["paired_metric"]] == ["2000", "10000"]
    assert [p["sweep_value"] for p in result["paired_curves"]] == ["2000", "10000"]


def test_export_and_import_carry_runs_to_another_machine(tmp_path):
    """--export copies the records (and with --export-state an unfinished run's resume state);
    --report-only on the export rebuilds the same tables; --import-from never overwrites progress."""
    drv = load_driver()
    runs, export, other = tmp_path / "runs", tmp_path / "export", tmp_path / "other"
    summary = {
        "epochs_run": 2,
        "best_test_mse": 0.004,
        "best_projected_val_mse": 0.005,
        "final_projected_test_mse": 0.0045,
        "equivariance_of_best_projected": {"o3_max_error": 1e-6},
        "wall_time_seconds": 60.0,
    }
    fake_run(runs / "relaxed_layers8_seed0", summary, "projected_val_loss", [0.1, 0.005])
    unfinished = runs / "standard_layers8_seed0"
    unfinished.mkdir(parents=True)
    (unfinished / "log.csv").write_text("epoch,projected_val_loss\n0,0.2\n")
    for d in (runs / "relaxed_layers8_seed0", unfinished):
        (d / "backup").mkdir()
        (d / "backup" / "latest.weights.h5").write_bytes(b"weights")
        (d / "best_projected.keras").write_bytes(b"model")
        (d / "best_relaxed.keras").write_bytes(b"relaxed model")  # not needed to resume: stays
        (d / "logs").mkdir()  # TensorBoard: not part of a record
        (d / "stdout.log").write_text("Epoch 1/2\n")
        (d / "command.txt").write_text("segnn_nbody.py --layers 8\n")
    argv = ["segnn_nbody", "--output-dir", str(runs), "--seeds", "0", "--epochs", "2", "--sweep", "layers=8"]
    with pytest.raises(SystemExit):
        drv.parse_args(argv + ["--export-state"])  # only with --export
    result = drv.main(argv + ["--report-only", "--export", str(export), "--export-state"])
    rows = {r["run"]: r for r in result["exported"]}
    assert rows["relaxed_layers8_seed0"]["finished"] and not rows["standard_layers8_seed0"]["finished"]
    done, todo = export / "relaxed_layers8_seed0", export / "standard_layers8_seed0"
    assert sorted(p.name for p in done.iterdir()) == ["command.txt", "log.csv", "summary.json"]
    assert sorted(p.name for p in todo.iterdir()) == ["backup", "best_projected.keras", "command.txt", "log.csv"]
    assert (todo / "backup" / "latest.weights.h5").read_bytes() == b"weights"
    # the export alone makes the same report
    table = (runs / "comparison_layers.md").read_text()
    drv.main(
        [
            "segnn_nbody",
            "--output-dir",
            str(export),
            "--seeds",
            "0",
            "--epochs",
            "2",
            "--sweep",
            "layers=8",
            "--report-only",
            "--report-dir",
            str(tmp_path / "report"),
        ]
    )
    assert (tmp_path / "report" / "comparison_layers.md").read_text() == table
    assert not list(export.glob("comparison*"))  # the records folder stays as it was
    assert "| 8 | standard | 0 | in progress: 1 of 2 epochs logged |" in table
    # another machine: the import brings both runs; a run with a backup there is left alone
    (other / "standard_layers8_seed0" / "backup").mkdir(parents=True)
    args = drv.parse_args(
        ["segnn_nbody", "--output-dir", str(other), "--seeds", "0", "--epochs", "2", "--sweep", "layers=8"]
    )
    assert records.import_runs(args, export) == ["relaxed_layers8_seed0"]
    assert not (other / "standard_layers8_seed0" / "log.csv").exists()
    assert (other / "relaxed_layers8_seed0" / "summary.json").read_text() == json.dumps(summary)
    # once the run has finished, a new export drops the resume state the earlier one left
    (unfinished / "summary.json").write_text(json.dumps(summary))
    drv.main(argv + ["--report-only", "--export", str(export), "--export-state"])
    assert not (todo / "backup").exists() and not (todo / "best_projected.keras").exists()
    assert (todo / "summary.json").exists()


def test_export_takes_a_consistent_snapshot(tmp_path, monkeypatch):
    src, dst = tmp_path / "run", tmp_path / "export" / "run"
    (src / "backup").mkdir(parents=True)
    (src / "backup" / "latest.weights.h5").write_bytes(b"a")
    (src / "log.csv").write_text("epoch\n0\n")
    dst.mkdir(parents=True)
    (dst / "best_projected.keras").write_bytes(b"older export")  # not in this snapshot: goes
    assert records._snapshot(src, ("log.csv", "summary.json", "backup"), dst) == ["log.csv", "backup"]
    assert sorted(p.name for p in dst.iterdir()) == ["backup", "log.csv"]
    assert (dst / "backup" / "latest.weights.h5").read_bytes() == b"a"
    stamps = iter(range(1000))  # a training writes between every two looks
    monkeypatch.setattr(records, "_tree_stamp", lambda path: next(stamps))
    monkeypatch.setattr(records.time, "sleep", lambda s: None)
    with pytest.raises(SystemExit, match="kept changing"):
        records._snapshot(src, ("log.csv", "backup"), tmp_path / "export" / "run2", attempts=3)
    assert not (tmp_path / "export" / "run2").exists() and not (tmp_path / "export" / "run2.partial").exists()
    assert (dst / "log.csv").exists()


def test_an_exported_run_resumes_on_another_machine(tmp_path, monkeypatch):
    """The real thing: a tiny SEGNN comparison run trains 1 of 2 epochs, is exported with its
    state, imported into a new output directory and finishes there from its backup."""
    monkeypatch.setenv("KERAS_RELAXEQ_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    drv = load_driver()
    tiny = [
        "--",
        "--train-samples",
        "20",
        "--val-samples",
        "20",
        "--test-samples",
        "20",
        "--batch",
        "10",
        "--hidden",
        "8",
        "--layers",
        "1",
    ]
    first, export, second = tmp_path / "first", tmp_path / "export", tmp_path / "second"
    common = ["segnn_nbody", "--seeds", "0", "--arms", "relaxed", "--jobs", "1"]
    drv.main(common + ["--output-dir", str(first), "--epochs", "1"] + tiny)
    assert json.loads((first / "relaxed_seed0" / "summary.json").read_text())["epochs_run"] == 1
    # seen as a 2-epoch comparison the run is unfinished: its backup goes along
    drv.main(
        common
        + ["--output-dir", str(first), "--epochs", "2", "--report-only", "--export", str(export), "--export-state"]
        + tiny
    )
    assert (export / "relaxed_seed0" / "backup").is_dir()
    result = drv.main(common + ["--output-dir", str(second), "--epochs", "2", "--import-from", str(export)] + tiny)
    summary = json.loads((second / "relaxed_seed0" / "summary.json").read_text())
    assert summary["epochs_run"] == 2 and summary["epochs_this_invocation"] == 1 and summary["resumed"]
    assert records.read_log(second / "relaxed_seed0" / "log.csv")["epoch"] == [0.0, 1.0]
    assert result["groups"][0]["runs"] == 1


def smoke_summary(future, domain):
    return {
        "epochs_run": 2,
        "rmse_future": future,
        "rmse_domain": domain,
        "best_projected_val_rmse": future,
        "c4_equivariance": {"relative_max_error": 1e-7},
        "wall_time_seconds": 60.0,
    }


def test_an_experiment_with_its_own_arms(tmp_path):
    """smoke_plume: five arms selected by --arm, the relaxed arm paired with the equivariant one."""
    drv = load_driver()
    args = drv.parse_args(["smoke_plume", "--output-dir", str(tmp_path), "--seeds", "0", "--epochs", "2"])
    assert args.arms == list(drv.SMOKE_ARMS)
    cmd = plan.command(args, "rsteer_relaxed", 0)
    assert cmd[cmd.index("--arm") + 1] == "rsteer_relaxed" and "--relaxed" not in cmd and "--no-relaxed" not in cmd
    assert cmd[1].endswith("smoke_plume.py") and cmd[cmd.index("--width") + 1] == "0.125"
    with pytest.raises(SystemExit, match="no arm standard"):
        drv.parse_args(["smoke_plume", "--output-dir", str(tmp_path), "--arms", "standard"])
    for arm, (future, domain) in {"relaxed": (0.8, 0.7), "equivariant": (1.0, 0.75), "cnn": (1.2, 1.1)}.items():
        fake_run(tmp_path / f"{arm}_seed0", smoke_summary(future, domain), "projected_val_rmse", [1.5, future])
    args = drv.parse_args(
        [
            "smoke_plume",
            "--output-dir",
            str(tmp_path),
            "--seeds",
            "0",
            "--epochs",
            "2",
            "--arms",
            "cnn",
            "equivariant",
            "relaxed",
        ]
    )
    result = report.aggregate(args)
    (pair,) = result["paired_metric"]
    assert pair["relaxed"] == 0.8 and pair["standard"] == 1.0 and math.isclose(pair["difference"], -0.2)
    md = (tmp_path / "comparison.md").read_text()
    assert "Relaxed vs equivariant, per seed" in md and "| cnn | 1 | 1.200 | 1.100 |" in md


def test_the_scale_smoke_experiment_trains_the_scale_task_with_the_same_protocol(tmp_path):
    """smoke_plume_scale: the rotation experiment's arms and CPU protocol, with --symmetry scale added."""
    drv = load_driver()
    rotation, scale = drv.EXPERIMENTS["smoke_plume"], drv.EXPERIMENTS["smoke_plume_scale"]
    assert scale.arms == rotation.arms and scale.epochs == rotation.epochs and scale.metric == rotation.metric
    args = drv.parse_args(["smoke_plume_scale", "--output-dir", str(tmp_path), "--seeds", "2"])
    cmd = plan.command(args, "rsteer_relaxed", 2)
    assert cmd[cmd.index("--symmetry") + 1] == "scale" and cmd[cmd.index("--arm") + 1] == "rsteer_relaxed"
    for flag, value in zip(rotation.protocol[::2], rotation.protocol[1::2]):
        assert cmd[cmd.index(flag) + 1] == value
    assert "scale_equivariance.relative_max_error" in [m.key for m in scale.extra_metrics]


def test_md17_experiments_run_the_cpu_protocol_per_molecule(tmp_path):
    """md17_<molecule>: recipes/md17.py on that molecule, relaxed vs standard, the width-0.25 40-epoch protocol."""
    drv = load_driver()
    for molecule in ("ethanol", "aspirin"):
        args = drv.parse_args([f"md17_{molecule}", "--output-dir", str(tmp_path), "--seeds", "1"])
        assert args.arms == ["relaxed", "standard"]
        relaxed, standard = plan.command(args, "relaxed", 1), plan.command(args, "standard", 1)
        assert relaxed[1].endswith("md17.py") and relaxed[relaxed.index("--molecule") + 1] == molecule
        assert "--relaxed" in relaxed and "--no-relaxed" in standard
        for cmd in (relaxed, standard):
            assert [
                cmd[cmd.index(flag) + 1] for flag in ("--width", "--blocks", "--epochs", "--warmup-epochs", "--seed")
            ] == ["0.25", "6", "40", "4", "1"]
        assert ("--max-train-batches" in relaxed) == (molecule == "aspirin")


def test_every_arm_of_a_figure_has_its_own_colour():
    from keras_relaxeq.experiments.plots import arm_colors

    drv = load_driver()
    colours = arm_colors(drv.EXPERIMENTS["smoke_plume"])
    assert colours["relaxed"] == "tab:red" and len(set(colours.values())) == len(colours) == 5
    assert arm_colors(drv.EXPERIMENTS["segnn_nbody"]) == {"relaxed": "tab:red", "standard": "tab:blue"}
