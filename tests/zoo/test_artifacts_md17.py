"""Every interatomic potential of the repository's ``zoo/index.json`` (``equiformer_e3_md17<molecule>``) works as
published: ``saved_model_cli show`` lists the serving signature, the ``.keras`` file answers as the SavedModel, the
published test MAEs hold on real test frames, forces are minus the gradient of the energy (finite differences), and
the card lists the entry's metrics. With no such entry a single test checks that the catalogue has none.

``relaxeq zoo verify`` (sha256, loading, signature, E(3) and permutation symmetry, input checks, ``SignatureDef``, a
fresh TensorFlow-only process) is not repeated here: ``.ci/run`` runs it on every shipped entry (checked below), and
``tests/zoo/test_publish_md17.py`` checks that it runs each of those steps on a potential and fails a biased one.
Loading one of these SavedModels takes most of a minute (a 22,000-node graph: six blocks and their gradient), so
each load is paid once per entry, not once per test and once more in verify.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from keras_relaxeq.datasets.rmd17 import load_rmd17
from keras_relaxeq.zoo import registry
from keras_relaxeq.zoo.download import ensure_artifact, load
from keras_relaxeq.zoo.loading import ServingModel

REPO_INDEX = Path(__file__).resolve().parents[2] / "zoo" / "index.json"
BIN = Path(sys.executable).parent
KCAL_MOL_TO_MEV = 43.364


def _keys():
    entries = registry.load_index(REPO_INDEX).entries
    keys = sorted((e.name, e.version) for e in entries if e.is_potential_model)
    return [pytest.param(k, id=f"{k[0]}-v{k[1]}") for k in keys] or [pytest.param(None, id="no-entries")]


@pytest.mark.parametrize("key", _keys())
def test_shipped_potential(key, tmp_path):
    cat = registry.load_index(REPO_INDEX)
    if key is None:
        assert not [e for e in cat.entries if e.task == "interatomic_potential"]
        return
    e = cat.get(*key)
    path = ensure_artifact(e, e.artifact, catalogue=cat, cache_dir=tmp_path / "cache", progress=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERAS_RELAXEQ") and k != "PYTHONPATH"}
    cli = subprocess.run(
        [
            str(BIN / "saved_model_cli"),
            "show",
            "--dir",
            str(path),
            "--tag_set",
            "serve",
            "--signature_def",
            "serving_default",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert cli.returncode == 0, cli.stderr[-2000:]
    n = len(e.molecule_atomic_numbers)
    for name, dtype, shape in (
        ("positions", "DT_FLOAT", f"(-1, {n}, 3)"),
        ("atomic_numbers", "DT_INT32", f"(-1, {n})"),
    ):
        block = cli.stdout.split(f"inputs['{name}'] tensor_info:")[1].split("name:")[0]
        assert dtype in block and shape in block, (name, cli.stdout)
    assert "DT_DOUBLE" in cli.stdout.split("outputs['energy'] tensor_info:")[1].split("name:")[0]

    # real test frames: the published MAEs (on all 1,000) hold on the first 100; the .keras file answers alike
    mol = e.raw["molecule"]
    data = load_rmd17(mol["name"], "test", labels=mol["labels"])
    served = ServingModel(path, e)
    x = {"positions": data.positions[:100], "atomic_numbers": np.tile(data.atomic_numbers, (100, 1))}
    got = served(**x)
    metrics = {m["name"]: m["value"] for m in e.metrics}
    e_mae = np.abs(got["energy"] - data.energy[:100]).mean() * KCAL_MOL_TO_MEV
    f_mae = np.abs(got["forces"] - data.forces[:100]).mean() * KCAL_MOL_TO_MEV
    assert 0.5 * metrics["energy_mae_mev"] < e_mae < 2.0 * metrics["energy_mae_mev"], e_mae
    assert 0.5 * metrics["force_mae_mev_per_angstrom"] < f_mae < 2.0 * metrics["force_mae_mev_per_angstrom"], f_mae
    keras_model = load(e.name, e.version, as_keras=True, cache_dir=tmp_path / "cache", progress=False)
    k = keras_model({"positions": x["positions"][:8], "atomic_numbers": x["atomic_numbers"][:8]})
    mean = e.raw["targets"]["energy_mean"]
    np.testing.assert_allclose(np.asarray(k["energy"]) - mean, got["energy"][:8] - mean, atol=1e-3)
    np.testing.assert_allclose(np.asarray(k["forces"]), got["forces"][:8], atol=1e-3)

    # forces = -dE/dpos: central differences of the served energy (float64 output, float32 network) on one frame
    pos = data.positions[:1].astype(np.float64)
    h, rng = 1e-3, np.random.default_rng(0)
    for atom, axis in zip(rng.integers(0, n, 4), rng.integers(0, 3, 4)):
        step = np.zeros_like(pos)
        step[0, atom, axis] = h
        up = served(positions=(pos + step).astype(np.float32), atomic_numbers=x["atomic_numbers"][:1])["energy"][0]
        down = served(positions=(pos - step).astype(np.float32), atomic_numbers=x["atomic_numbers"][:1])["energy"][0]
        numeric = -(up - down) / (2 * h)
        assert abs(numeric - got["forces"][0, atom, axis]) < 0.05 + 0.02 * abs(numeric), (atom, axis, numeric)

    card = (REPO_INDEX.parent / e.card).read_text()
    for m in e.metrics:
        assert f"| `{m['name']}` | {m['value']} |" in card, m["name"]
    assert "## Limits" in card and e.artifact.sha256 in card


def test_ci_verifies_every_shipped_entry():
    """The symmetry, input-check and fresh-process checks of the shipped potentials run in CI through
    ``relaxeq zoo verify`` on the whole catalogue (no names: every entry)."""
    lines = [ln.split("#")[0].strip() for ln in (REPO_INDEX.parents[1] / ".ci" / "run").read_text().splitlines()]
    assert ".venv/bin/relaxeq zoo verify" in lines
