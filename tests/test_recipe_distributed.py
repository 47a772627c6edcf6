"""recipes/modelnet40.py with ``--strategy mirrored`` on two logical CPU devices (2 replicas).

The recipe runs in a subprocess: the logical CPU devices (``--cpu-replicas 2``) and the
strategy must be configured before TensorFlow is initialised, which the in-process recipe
test (tests/test_recipe_modelnet40.py) has already done in this process.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
TIMEOUT = 600  # importing TF + keras_relaxeq alone takes 20-60 s on 2 busy cores; the run ~1-2 min


def test_recipe_mirrored_two_cpu_replicas(tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        str(ROOT / "recipes" / "modelnet40.py"),
        "--strategy",
        "mirrored",
        "--cpu-replicas",
        "2",
        "--model",
        "vn_classifier",
        "--data-dir",
        str(DATA),
        "--epochs",
        "1",
        "--max-train-samples",
        "32",
        "--max-val-samples",
        "32",
        "--points",
        "32",
        "--width",
        "0.25",
        "--k",
        "4",
        "--batch",
        "8",
        "--invariance-samples",
        "4",
        "--no-relaxed-val",
        "--seed",
        "1",
        "--verbose",
        "0",
        "--output-dir",
        str(out),
    ]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="-1", TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    env.pop("TF_CONFIG", None)
    proc = subprocess.run(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=str(tmp_path), timeout=TIMEOUT
    )
    log = proc.stdout.decode(errors="replace")[-4000:]
    assert proc.returncode == 0, log

    summary = json.loads((out / "summary.json").read_text())
    assert summary["strategy"] == "mirrored" and summary["config"]["strategy"] == "mirrored"
    assert summary["num_replicas"] == 2 and summary["num_workers"] == 1, log
    assert summary["xla"] is False  # --jit-compile auto: no XLA with several replicas
    assert summary["global_batch"] == 8 and summary["train_samples_per_epoch"] == 32
    assert summary["epochs_run"] == 1
    # the chief (the only process) wrote every output file into --output-dir
    for name in ("projected.keras", "best_relaxed.keras", "log.csv", "history.png"):
        assert (out / name).exists(), name
    assert (out / "backup").is_dir()
    inv = summary["invariance"]
    assert inv["passed"] and inv["relative_max_error"] < 1e-3, inv
    assert 0.0 <= summary["final_projected_val_accuracy"] <= 1.0
