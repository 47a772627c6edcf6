"""Every artifact of the repository's ``zoo/index.json`` works without keras_relaxeq.

Per entry (parametrized): the verified archive is extracted (tarfile with the ``data`` filter)
and loaded with ``tf.saved_model.load`` in a fresh interpreter that never imports
keras_relaxeq; ``serving_default`` runs on real ModelNet40 validation shapes and on rotated
copies; the parent checks that the logits equal the published Keras model's and are rotation
invariant (tolerance of ``relaxeq zoo verify``), and ``saved_model_cli show`` lists the
signature. Entries with ``input_checks`` must refuse a mis-shaped and a non-finite input there.
N-body entries (``segnn_o3_nbody``) run on real N-body test systems and on copies
moved by a rotation or reflection and a translation: the predicted positions must equal the Keras
model's and move the same way (E(3) equivariance). With an empty catalogue a single test checks
that it parses and has no entries, and the same checker runs on entries published from tiny
models into temporary catalogues.
"""

import hashlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from keras_relaxeq.zoo import registry
from keras_relaxeq.zoo.download import ensure_artifact, load

REPO_ZOO = Path(__file__).resolve().parents[2] / "zoo"
REPO_INDEX = REPO_ZOO / "index.json"
BIN = Path(sys.executable).parent
NUM_SHAPES = 8
VERIFY_ATOL, VERIFY_RTOL = 1e-4, 1e-3  # `relaxeq zoo verify` defaults
PARITY_ATOL, PARITY_RTOL = 1e-5, 1e-4  # same graph and kernels; batch composition may differ

FRESH_PROCESS_CODE = r"""
import json, sys, tarfile, pathlib
import numpy as np
import tensorflow as tf
archive, dest, data, out_path = sys.argv[1:5]  # data: .npz, [calls, batch, ...] per input
dest = pathlib.Path(dest)
with tarfile.open(archive, "r:gz") as tar:
    for m in tar.getmembers():
        p = pathlib.PurePosixPath(m.name)
        assert not p.is_absolute() and ".." not in p.parts, m.name
        assert m.isfile() or m.isdir(), m.name
    tar.extractall(dest, filter="data")
obj = tf.saved_model.load(str(dest))
sig = obj.signatures["serving_default"]
args, kwargs = sig.structured_input_signature
x = np.load(data)  # e.g. points [2, shapes, points, 3]: the shapes, then rotated copies
calls = len(x[x.files[0]])
out = {k: np.stack([sig(**{n: tf.constant(x[n][i]) for n in x.files})[k].numpy()
                    for i in range(calls)]) for k in sig.structured_outputs}
np.savez(out_path, **out)
# entries with input checks: a mis-shaped or non-finite primary input must be refused
refused = {}
if len(sys.argv) > 5:
    key = sys.argv[5]
    good = {n: x[n][0] for n in x.files}
    bad = good[key].copy()
    bad.flat[1] = np.nan
    probes = {"last axis + 3": np.concatenate([good[key], good[key][..., :3]], axis=-1),
              "extra leading axis": good[key][None], "NaN": bad}
    for label, value in probes.items():
        try:
            sig(**{n: tf.constant(value if n == key else v) for n, v in good.items()})
            refused[label] = "answered"
        except tf.errors.InvalidArgumentError as exc:
            refused[label] = exc.message
assert "keras_relaxeq" not in sys.modules, "keras_relaxeq was imported"
print(json.dumps({
    "refused": refused,
    "positional": len(args),
    "inputs": {k: [v.dtype.name, v.shape.as_list()] for k, v in kwargs.items()},
    "outputs": {k: [v.dtype.name, v.shape.as_list()] for k, v in sig.structured_outputs.items()},
    "keras_relaxeq_imported": any(m.startswith("keras_relaxeq") for m in sys.modules),
}))
"""


def _catalogue_keys():
    """``[(name, version)]`` of the shipped catalogue; a placeholder when it is empty or broken
    (the test then checks that and fails on a broken catalogue instead of skipping)."""
    try:
        entries = registry.load_index(REPO_INDEX).entries
    except Exception:  # reported by test_repository_catalogue_parses
        return [pytest.param(None, id="catalogue-invalid")]
    # C4 field forecasters (steerable_cnn_c4_smokeplume) are checked by test_artifacts_smoke.py, interatomic
    # potentials (equiformer_e3_md17<molecule>) by test_artifacts_md17.py
    keys = sorted((e.name, e.version) for e in entries if not (e.is_c4_field_forecaster or e.is_potential_model))
    latest = {name: version for name, version in keys}
    # superseded versions (unchanged files, still hash-checked by test_repository_catalogue_parses and
    # verified by `relaxeq zoo verify` in tests/test_cli.py) run with the slow tests
    return [
        pytest.param(k, id=f"{k[0]}-v{k[1]}", marks=() if latest[k[0]] == k[1] else pytest.mark.slow) for k in keys
    ] or [pytest.param(None, id="no-entries")]


def validation_shapes(num_points: int) -> np.ndarray:
    """``[2, NUM_SHAPES, num_points, 3]``: real validation shapes (canonical pose), and the same
    shapes under Haar-random rotations (rotated in float64)."""
    import tensorflow as tf

    from keras_relaxeq.datasets.modelnet40 import modelnet40_dataset
    from keras_relaxeq.groups import random_rotations

    ds = modelnet40_dataset("val", num_points=num_points, batch_size=NUM_SHAPES, rotation="none", seed=123)
    x = np.asarray(next(iter(ds))[0], dtype=np.float64)
    rot = random_rotations(len(x), seed=7, dtype=tf.float64).numpy()
    xr = np.einsum("bij,bnj->bni", rot, x)
    return np.stack([x, xr]).astype(np.float32)


def nbody_systems(cache_dir: Path) -> tuple[dict, np.ndarray, np.ndarray]:
    """``(inputs, Q, t)``: ``loc``, ``vel``, ``charges`` ``[2, NUM_SHAPES, 5, .]``: real N-body
    test systems, then the same systems moved by ``x -> Q x + t`` (a Haar-random rotation, a
    reflection for every other system, a translation; velocities rotate only)."""
    import tensorflow as tf

    from keras_relaxeq.datasets.nbody import nbody_dataset
    from keras_relaxeq.groups import random_rotations

    ds = nbody_dataset(
        "test",
        batch_size=NUM_SHAPES,
        num_samples=NUM_SHAPES,
        shuffle=False,
        rotate=False,
        cache_dir=cache_dir,
        progress=False,
    )
    x = {k: np.asarray(v, np.float64) for k, v in next(iter(ds))[0].items()}
    q = random_rotations(NUM_SHAPES, seed=7, dtype=tf.float64).numpy()
    q[::2] = q[::2] @ np.diag([1.0, 1.0, -1.0])
    t = np.random.default_rng(7).normal(size=(NUM_SHAPES, 1, 3))
    move = lambda v: np.einsum("bij,bnj->bni", q, v)  # noqa: E731
    moved = {"loc": move(x["loc"]) + t, "vel": move(x["vel"]), "charges": x["charges"]}
    return {k: np.stack([x[k], moved[k]]).astype(np.float32) for k in x}, q, t


def check_entry(catalogue, entry, work: Path) -> dict:
    """Run every artifact check on ``entry`` of ``catalogue``; returns what was measured."""
    assert entry.task == "point_cloud_classification" or entry.is_nbody_model, (
        "only classifiers and N-body models are checked here"
    )
    assert entry.keras_artifact is not None, (
        f"{entry.name} v{entry.version} publishes no .keras file to compare with; publish "
        "entries with `relaxeq zoo publish`"
    )
    cache = work / "cache"
    archive = ensure_artifact(
        entry, entry.artifact, catalogue=catalogue, cache_dir=cache, extract=False, progress=False
    )  # verified against the sha256
    extracted = ensure_artifact(entry, entry.artifact, catalogue=catalogue, cache_dir=cache, progress=False)
    if entry.is_nbody_model:
        inputs, q, t = nbody_systems(work / "nbody")
    else:
        inputs = {"points": validation_shapes(int(entry.input.get("num_points") or 256))}
    np.savez(work / "x.npz", **inputs)

    env = {k: v for k, v in os.environ.items() if not k.startswith("KERAS_RELAXEQ") and k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    fresh = subprocess.Popen(
        [
            sys.executable,
            "-c",
            FRESH_PROCESS_CODE,
            str(archive),
            str(work / "fresh"),
            str(work / "x.npz"),
            str(work / "out.npz"),
        ]
        + ([entry.input_name] if entry.input_checks else []),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=work,
    )
    cli = subprocess.Popen(
        [
            str(BIN / "saved_model_cli"),
            "show",
            "--dir",
            str(extracted),
            "--tag_set",
            "serve",
            "--signature_def",
            "serving_default",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=work,
    )
    try:
        # meanwhile, in this process: the published Keras model on the same shapes
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            keras_model = load(
                entry.name, entry.version, as_keras=True, cache_dir=cache, index=catalogue.path, progress=False
            )
        # uncompiled: no warning about the file's (empty) training-time optimizer state
        assert not keras_model.compiled and not [w for w in caught if "optimizer" in str(w.message)]
        expected = np.stack(
            [
                keras_model.predict(
                    {k: v[i] for k, v in inputs.items()} if entry.is_nbody_model else inputs["points"][i], verbose=0
                )
                for i in range(2)
            ]
        )
        stdout, stderr = fresh.communicate(timeout=300)
        assert fresh.returncode == 0, stderr[-3000:]
        cli_out, cli_err = cli.communicate(timeout=300)
        assert cli.returncode == 0, cli_err[-3000:]
    finally:
        for proc in (fresh, cli):
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    info = json.loads(stdout.strip().splitlines()[-1])
    assert info["keras_relaxeq_imported"] is False
    assert info["positional"] == 0
    assert info["inputs"] == {k: ["float32", v["shape"]] for k, v in entry.input_signature.items()}
    if entry.input_checks:  # the serving function refuses bad inputs with a message naming the input
        assert set(info["refused"]) == {"last axis + 3", "extra leading axis", "NaN"}
        for label, message in info["refused"].items():
            assert f"serving input {entry.input_name} " in message, (label, message)
    if entry.is_nbody_model:
        return _check_nbody_outputs(info, np.load(work / "out.npz"), expected, q, t, cli_out)
    assert info["inputs"] == {entry.input_name: ["float32", [None, None, 3]]}
    assert set(info["outputs"]) == {"logits", "probabilities", "class_id"}
    assert info["outputs"]["class_id"][0] == "int64"
    out = np.load(work / "out.npz")
    logits = out["logits"].astype(np.float64)
    assert logits.shape == (2, NUM_SHAPES, 40)
    np.testing.assert_array_equal(out["class_id"], logits.argmax(-1))
    np.testing.assert_allclose(out["probabilities"].sum(-1), 1.0, rtol=1e-5)

    scale = float(np.abs(expected).max())
    parity = float(np.abs(logits - expected).max())
    assert parity <= PARITY_ATOL + PARITY_RTOL * scale, f"artifact vs Keras: {parity:.3e}"
    invariance = float(np.abs(logits[1] - logits[0]).max())
    tol = VERIFY_ATOL + VERIFY_RTOL * float(np.abs(logits[0]).max())
    assert invariance <= tol, f"rotation invariance error {invariance:.3e} > {tol:.1e}"

    assert f"inputs['{entry.input_name}'] tensor_info:" in cli_out
    block = cli_out.split(f"inputs['{entry.input_name}']")[1].split("outputs[")[0]
    assert "DT_FLOAT" in block and "(-1, -1, 3)" in block
    for name in ("logits", "probabilities", "class_id"):
        assert f"outputs['{name}']" in cli_out, name
    return {"parity": parity, "invariance": invariance, "tolerance": tol}


def _check_nbody_outputs(info, out, expected, q, t, cli_out) -> dict:
    assert info["outputs"] == {"loc": ["float32", [None, 5, 3]]}
    pred = out["loc"].astype(np.float64)
    assert pred.shape == (2, NUM_SHAPES, 5, 3)
    scale = float(np.abs(expected).max())
    parity = float(np.abs(pred - expected).max())
    assert parity <= PARITY_ATOL + PARITY_RTOL * scale, f"artifact vs Keras: {parity:.3e}"
    want = np.einsum("bij,bnj->bni", q, pred[0]) + t
    equivariance = float(np.abs(pred[1] - want).max())
    tol = VERIFY_ATOL + VERIFY_RTOL * float(np.abs(want).max())
    assert equivariance <= tol, f"E(3) equivariance error {equivariance:.3e} > {tol:.1e}"
    for name, shape in (("loc", "(-1, 5, 3)"), ("vel", "(-1, 5, 3)"), ("charges", "(-1, 5, 1)")):
        block = cli_out.split(f"inputs['{name}'] tensor_info:")[1].split("name:")[0]
        assert "DT_FLOAT" in block and shape in block, (name, block)
    assert "outputs['loc'] tensor_info:" in cli_out
    return {"parity": parity, "invariance": equivariance, "tolerance": tol}


def test_repository_catalogue_parses():
    cat = registry.load_index(REPO_INDEX)
    print(f"{REPO_INDEX}: {len(cat.entries)} entries")
    for e in cat.entries:  # local files are complete and match the catalogue
        assert e.card and (REPO_ZOO / e.card).is_file(), e.name
        if cat.base_url is None:
            for art in filter(None, (e.artifact, e.keras_artifact)):
                data = (REPO_ZOO / art.file).read_bytes()
                assert len(data) == art.size, art.file
                assert hashlib.sha256(data).hexdigest() == art.sha256, art.file


@pytest.mark.parametrize("key", _catalogue_keys())
def test_artifact(key, tmp_path):
    cat = registry.load_index(REPO_INDEX)  # a broken catalogue fails here
    if key is None:
        assert cat.entries == (), "the catalogue has entries but none were parametrized"
        return
    result = check_entry(cat, cat.get(*key), tmp_path)
    print(f"{key[0]} v{key[1]}: {result}")


def test_checker_on_a_freshly_published_entry(tmp_path):
    """The checker itself works (also while the shipped catalogue is still empty)."""
    import keras

    from keras_relaxeq.models import vn_classifier
    from keras_relaxeq.zoo.publish import publish_run

    run = tmp_path / "run"
    run.mkdir()
    keras.utils.set_random_seed(0)
    vn_classifier(40, num_points=32, channels=(2, 4, 8), k=4, hidden_units=8, relaxed=False).save(
        run / "best_projected.keras"
    )
    cfg = {
        "model": "vn_classifier",
        "points": 32,
        "k": 4,
        "width": 0.125,
        "epochs": 1,
        "seed": 0,
        "val_fraction": 0.2,
        "split_seed": 0,
        "relaxed": True,
        "schedule": "triangle",
        "rotation": "so3",
    }
    (run / "summary.json").write_text(json.dumps({"config": cfg, "epochs_run": 1}))
    publish_run(run, zoo_dir=tmp_path / "zoo", max_val_samples=8, num_rotations=1, invariance_samples=2)
    cat = registry.load_index(tmp_path / "zoo" / "index.json")
    (work := tmp_path / "work").mkdir()
    result = check_entry(cat, cat.get("vn_classifier_so3_modelnet40"), work)
    assert result["parity"] <= 1e-4 and result["invariance"] <= result["tolerance"]


def test_checker_on_a_freshly_published_nbody_entry(tmp_path, monkeypatch):
    """The checker on an N-body entry: an untrained plain SEGNN in a run directory laid out
    like ``recipes/segnn_nbody.py`` writes it (its config comes from the recipe's parser)."""
    import importlib.util

    import keras

    from keras_relaxeq.zoo.publish import publish_run

    monkeypatch.setenv("KERAS_RELAXEQ_CACHE", str(tmp_path / "cache"))
    spec = importlib.util.spec_from_file_location(
        "recipe_segnn_nbody_artifacts", REPO_ZOO.parent / "recipes" / "segnn_nbody.py"
    )
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    cfg = recipe.resolve_config(
        recipe.build_parser().parse_args(
            [
                "--no-relaxed",
                "--hidden",
                "8",
                "--layers",
                "1",
                "--epochs",
                "1",
                "--batch",
                "8",
                "--train-samples",
                "8",
                "--val-samples",
                "8",
                "--test-samples",
                "8",
            ]
        )
    )
    run = tmp_path / "run"
    run.mkdir()
    keras.utils.set_random_seed(0)
    recipe.build_model(cfg).save(run / "best_projected.keras")
    (run / "summary.json").write_text(json.dumps({"config": cfg, "epochs_run": 0}))
    publish_run(run, zoo_dir=tmp_path / "zoo", num_rotations=1, equivariance_samples=4)
    cat = registry.load_index(tmp_path / "zoo" / "index.json")
    (work := tmp_path / "work").mkdir()
    result = check_entry(cat, cat.get("segnn_o3_nbody"), work)
    assert result["parity"] <= 1e-4 and result["invariance"] <= result["tolerance"]
