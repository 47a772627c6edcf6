"""The benchmark scripts' profiler summary (``benchmarks/_common.op_time_tables``) and a tiny
``bench_segnn.py --profile`` run (the speed numbers themselves are not asserted: timings belong
in benchmarks, not in tests)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tensorflow as tf

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 600


@pytest.fixture
def common(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import _common

    return _common


def test_op_time_tables_counts_the_ops_inside_a_function(common, tmp_path):
    a = tf.random.normal([400, 400])
    small = tf.random.normal([4])

    @tf.function
    def step(a, small):
        with tf.name_scope("model"), tf.name_scope("big"):
            p = tf.matmul(a, a)
            for _ in range(3):
                p = tf.matmul(p, a)
        with tf.name_scope("model"), tf.name_scope("tiny"):
            q = small + 1.0
        return tf.reduce_sum(p) + tf.reduce_sum(q)

    step(a, small)  # trace outside the profile
    tf.profiler.experimental.start(str(tmp_path))
    for _ in range(3):
        step(a, small).numpy()
    tf.profiler.experimental.stop()
    tables = common.op_time_tables(str(tmp_path), steps=3)

    types = {k: ms for k, ms, _ in tables["by_type"]}
    # the function call enclosing the ops is not counted, its ops are
    assert not any(k.startswith("__inference") for k in types), types
    assert max(types, key=types.get) == "MatMul", types
    assert types["MatMul"] > 5 * types.get("AddV2", 0.0)
    shares = [s for _, _, s in tables["by_type"]]
    assert all(0 <= s <= 1 for s in shares) and sum(shares) <= 1 + 1e-9
    assert tables["total_ms"] >= sum(ms for _, ms, _ in tables["by_type"]) - 1e-9
    scopes = {k: ms for k, ms, _ in tables["by_scope"]}
    assert max(scopes, key=scopes.get).startswith("big/"), scopes  # the model's name scope is dropped
    text = common.format_op_tables(tables, "tiny")
    assert "| MatMul |" in text and "ms of op time per step" in text


@pytest.mark.parametrize(
    "kernel, public",
    [
        ("MatMul", "MatMul"),
        ("_MklMatMul", "MatMul"),
        ("_MklNativeFusedMatMul", "MatMul"),
        ("_FusedMatMul", "MatMul"),
        ("_MklFusedMatMul", "MatMul"),
        ("_MklEinsum", "Einsum"),
        ("_MklBatchMatMulV2", "BatchMatMulV2"),
        ("_MklNativeFusedConv2D", "Conv2D"),
        ("_MklFusedBatchNormV3", "FusedBatchNormV3"),
        ("FusedBatchNormV3", "FusedBatchNormV3"),
        ("AddV2", "AddV2"),
        ("_Recv", "Recv"),
    ],
)
def test_canonical_op_type_names_the_public_op(common, kernel, public):
    assert common.canonical_op_type(kernel) == public


_ONEDNN_PROFILE = """
import json, sys, tempfile
sys.path.insert(0, sys.argv[1])
import tensorflow as tf, _common
a, b = tf.random.normal([300, 300]), tf.random.normal([300])

@tf.function
def step(a):
    p = tf.nn.bias_add(tf.matmul(tf.matmul(a, a), a), b)  # a matmul the remapper may fuse with its bias
    return tf.reduce_sum(tf.einsum("ij,jk->ik", p, a))

step(a)
logdir = tempfile.mkdtemp()
tf.profiler.experimental.start(logdir)
step(a).numpy()
tf.profiler.experimental.stop()
print(json.dumps(sorted(k for k, _, _ in _common.op_time_tables(logdir, steps=1)["by_type"])))
"""


@pytest.mark.parametrize("onednn", ["0", "1"])
def test_op_time_tables_do_not_depend_on_the_cpu_kernels(onednn):
    # oneDNN's rewrite (on by default on some CPUs) runs MatMul as _MklMatMul, Einsum as _MklEinsum:
    # the tables name the public ops either way
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=onednn, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="-1")
    proc = subprocess.run(
        [sys.executable, "-c", _ONEDNN_PROFILE, str(ROOT / "benchmarks")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=TIMEOUT,
    )
    out = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0, out[-3000:]
    types = json.loads(out.strip().splitlines()[-1])
    assert "MatMul" in types and "Einsum" in types, types
    assert not any(t.startswith("_") for t in types), types


def test_op_time_tables_without_a_trace_says_so(common, tmp_path):
    with pytest.raises(FileNotFoundError, match="xplane"):
        common.op_time_tables(str(tmp_path), steps=1)


def test_bench_segnn_profile_run(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "bench_segnn.py"),
        "--hidden",
        "8",
        "--layers",
        "1",
        "--batch",
        "10",
        "--repeats",
        "1",
        "--steps",
        "1",
        "--warmup",
        "1",
        "--threads",
        "1",
        "--epochs",
        "2",
        "--train-samples",
        "20",
        "--val-samples",
        "10",
        "--profile",
        str(tmp_path / "trace"),
        "--json",
        str(out),
    ]
    env = dict(
        os.environ, CUDA_VISIBLE_DEVICES="-1", TF_CPP_MIN_LOG_LEVEL="3", KERAS_RELAXEQ_CACHE=str(tmp_path / "cache")
    )
    proc = subprocess.run(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=str(tmp_path), timeout=TIMEOUT
    )
    log = proc.stdout.decode(errors="replace")[-4000:]
    assert proc.returncode == 0, log
    summary = json.loads(out.read_text())
    assert set(summary["profile"]) == {"plain", "relaxed"}
    for label, tables in summary["profile"].items():
        assert tables["total_ms"] > 0, label
        types = [k for k, _, _ in tables["by_type"]]
        assert "MatMul" in types, (label, types)
        # scopes name the model's layers (message / update tensor products), forward and gradient
        scopes = [k for k, _, _ in tables["by_scope"]]
        assert any("layer_0" in k for k in scopes), scopes
        assert any(k.startswith("grad: ") for k in scopes), scopes
    assert "op time per step" in log
