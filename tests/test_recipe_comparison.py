"""recipes/modelnet40_comparison.py: the commands it runs and the aggregation of finished runs."""

import csv
import importlib.util
import json
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_driver():
    spec = importlib.util.spec_from_file_location("modelnet40_comparison",
                                                  ROOT / "recipes" / "modelnet40_comparison.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_run(d: Path, final, bn, best, epochs=3, accs=(0.1, 0.2, 0.3)):
    """A run directory as recipes/modelnet40.py leaves it (summary.json and log.csv)."""
    d.mkdir(parents=True)
    summary = {"epochs_run": epochs, "final_projected_val_accuracy": final,
               "final_projected_val_accuracy_bn_reestimated": bn, "best_projected_val_accuracy": best,
               "best_epoch": 2, "invariance": {"max_error": 1e-5, "relative_max_error": 1e-6},
               "wall_time_seconds": 600.0, "params": {"trained_model": 10, "projected_model": 5}}
    (d / "summary.json").write_text(json.dumps(summary))
    with open(d / "log.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "accuracy", "projected_val_accuracy", "theta"])
        for e, a in enumerate(accs):
            w.writerow([e, a, a + 0.01, 0.5])
        w.writerow([len(accs) - 1, accs[-1], accs[-1] + 0.01, 0.0])  # a resumed epoch, logged twice


def test_commands_keep_the_arms_identical_but_relaxed():
    drv = load_driver()
    args = drv.build_parser().parse_args(["--output-dir", "/tmp/x", "--epochs", "5", "--", "--points", "64"])
    relaxed, standard = drv.command(args, "relaxed", 1), drv.command(args, "standard", 1)
    assert "--relaxed" in relaxed and "--no-relaxed" in standard
    diff = set(relaxed) ^ set(standard)
    assert diff == {"--relaxed", "--no-relaxed", "/tmp/x/relaxed_seed1", "/tmp/x/standard_seed1"}
    assert relaxed[-2:] == ["--points", "64"]
    i = relaxed.index("--epochs")
    assert relaxed[i + 1] == "5" and relaxed[relaxed.index("--width") + 1] == "0.25"


def test_aggregate_mean_std_and_outputs(tmp_path):
    drv = load_driver()
    fake_run(tmp_path / "relaxed_seed0", 0.50, 0.52, 0.55)
    fake_run(tmp_path / "relaxed_seed1", 0.60, 0.61, 0.65)
    fake_run(tmp_path / "standard_seed0", 0.40, None, 0.45)
    fake_run(tmp_path / "standard_seed1", 0.30, None, 0.35, epochs=2)  # unfinished: not in the mean
    args = drv.build_parser().parse_args(["--output-dir", str(tmp_path), "--seeds", "0", "1", "--epochs", "3"])
    result = drv.aggregate(args)
    rel, std = result["summary"]["relaxed"], result["summary"]["standard"]
    assert rel["runs"] == 2 and std["runs"] == 1
    assert math.isclose(rel["final_projected_val_accuracy"]["mean"], 0.55)
    assert math.isclose(rel["final_projected_val_accuracy"]["std"], math.sqrt(0.005))  # sample std
    assert math.isclose(std["final_projected_val_accuracy"]["mean"], 0.40)
    assert std["final_projected_val_accuracy_bn_reestimated"]["mean"] is None
    md = (tmp_path / "comparison.md").read_text()
    assert "| relaxed | 2 | 55.0 ± 7.1 |" in md and "| standard | 0 | 3 | 40.00 |" in md
    assert (tmp_path / "comparison.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "comparison.json").read_text())["protocol"]["epochs"] == 3
    # the recipe's CSV reader: the epoch logged twice (resume) counts once, the last row wins
    log = drv.read_log(tmp_path / "relaxed_seed0" / "log.csv")
    assert log["theta"] == [0.5, 0.5, 0.0]
