"""recipes/segnn_nbody.py with ``--strategy mirrored`` on two logical CPU devices (2 replicas).

The recipe runs in a subprocess: the logical CPU devices (``--cpu-replicas 2``) and the
strategy must be configured before TensorFlow is initialised, which other tests may already
have done in this process.  The N-body data (100 trajectories per split) is generated into a
temporary ``KERAS_RELAXEQ_CACHE``.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 600  # importing TF + keras_relaxeq alone takes 20-60 s on 2 busy cores; the run ~1 min


def test_segnn_recipe_mirrored_two_cpu_replicas(tmp_path, monkeypatch):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        str(ROOT / "recipes" / "segnn_nbody.py"),
        "--strategy",
        "mirrored",
        "--cpu-replicas",
        "2",
        "--epochs",
        "1",
        "--train-samples",
        "100",
        "--val-samples",
        "100",
        "--test-samples",
        "100",
        "--hidden",
        "16",
        "--layers",
        "2",
        "--batch",
        "20",
        "--seed",
        "1",
        "--verbose",
        "0",
        "--output-dir",
        str(out),
    ]
    env = dict(
        os.environ,
        CUDA_VISIBLE_DEVICES="-1",
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONUNBUFFERED="1",
        KERAS_RELAXEQ_CACHE=str(tmp_path / "cache"),
    )
    env.pop("TF_CONFIG", None)
    proc = subprocess.run(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=str(tmp_path), timeout=TIMEOUT
    )
    log = proc.stdout.decode(errors="replace")[-4000:]
    assert proc.returncode == 0, log

    summary = json.loads((out / "summary.json").read_text())
    assert summary["strategy"] == "mirrored" and summary["config"]["strategy"] == "mirrored"
    assert summary["config"]["cpu_replicas"] == 2
    assert summary["num_replicas"] == 2 and summary["num_workers"] == 1, log
    assert summary["global_batch"] == 20 and summary["steps_per_epoch"] == 5  # 100 // 20 global batches
    assert summary["epochs_run"] == 1
    # the chief (the only process) wrote every output file into --output-dir
    for name in ("projected.keras", "best_projected.keras", "best_relaxed.keras", "log.csv", "history.png"):
        assert (out / name).exists(), name
    assert (out / "backup").is_dir()
    assert summary["params"]["projected_model"] == summary["params"]["plain_model"]
    eq = summary["equivariance_of_best_projected"]
    assert eq["o3_passed"] and eq["o3_relative_max_error"] < 1e-4, eq
    assert eq["translation_max_error"] < 1e-3, eq
    for key in ("best_projected_val_mse", "best_test_mse", "final_projected_val_mse", "final_projected_test_mse"):
        assert math.isfinite(summary[key]), (key, summary[key])

    # recipes/relaxation_report.py on the finished run (config from summary.json, best_relaxed.keras)
    # and on the same run seen as one still training (config from compare.py's command.txt, backup)
    monkeypatch.setenv("KERAS_RELAXEQ_CACHE", str(tmp_path / "cache"))
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    import relaxation_report

    rows = relaxation_report.main([str(out), "--batches", "2", "--json", str(tmp_path / "report.json")])
    assert len(rows) == 2 * 2 + 1 and rows[-1]["layer"] == "total"  # two relaxed update products per layer
    assert rows[-1]["points"] == 2 * 20 * 5 * 4  # 2 batches of 20 graphs x 5 nodes, 4 branches
    assert all(r["theta"] == 0.0 and r["branch_rms"] == 0.0 for r in rows)  # theta ends at 0 (1 epoch)
    assert all(0 < r["r_rms"] < 1 and r["equivariant_rms"] > 0 for r in rows)  # N(0, 1e-4) branch init
    assert json.loads((tmp_path / "report.json").read_text())["rows"] == rows
    # the recipe's RelaxationMonitor logged the same branches after the (last) epoch
    from keras_relaxeq.training import read_relaxation_log

    monitored = read_relaxation_log(out / "relaxation.csv")
    assert monitored["epoch"] == [0.0] and monitored["theta"] == [0.0]
    # (other random rotations of the validation batches: the equivariant part's norm does not change,
    # the branch's, not being equivariant, a little)
    assert monitored["equivariant_rms"][0] == pytest.approx(rows[-1]["equivariant_rms"], rel=1e-4)
    assert monitored["r_rms"][0] == pytest.approx(rows[-1]["r_rms"], rel=0.1)
    (out / "summary.json").rename(tmp_path / "summary.json")
    (out / "command.txt").write_text(" ".join(cmd) + "\n")
    backup_rows = relaxation_report.main([str(out), "--checkpoint", "backup", "--batches", "2"])
    assert [r["r_rms"] for r in backup_rows] == [r["r_rms"] for r in rows]  # same weights after the last epoch
    # the random-branch reference: N(0, 1) weights, the same (theta = 0) inputs and equivariant outputs
    reference = relaxation_report.main([str(out), "--random-branches", "--batches", "2"])
    assert [r["equivariant_rms"] for r in reference] == pytest.approx([r["equivariant_rms"] for r in rows], rel=1e-5)
    assert all(r["r_rms"] > 100 * b["r_rms"] and r["branch_rms"] == 0.0 for r, b in zip(reference, rows))
    assert all(1.0 < r["lie_over_r"] < 3.0 for r in reference)
    # --gradients: the split of the gradients on the branch kernels, on training batches with the recipe's loss
    grads = relaxation_report.main([str(out), "--gradients", "2"])
    assert [r["layer"] for r in grads] == [r["layer"] for r in rows[:-1]]
    assert all(r["batches"] == 2 and 0.0 < r["kernel_equivariant_share"] < 1.0 for r in grads)
    # theta = 0: the task loss does not reach the branches, the penalties do (off the equivariant maps too)
    assert all(r["task_eq_norm"] == 0.0 and r["task_ne_norm"] == 0.0 for r in grads)
    assert all(r["penalty_ne_norm"] > 0.0 for r in grads)
    with pytest.raises(SystemExit, match="do not go together"):
        relaxation_report.main([str(out), "--gradients", "2", "--random-branches"])
