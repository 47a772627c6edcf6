"""Publishing a ``recipes/md17.py`` run (a tiny relaxed Equiformer of ethanol with random weights, projected) as an
interatomic potential entry, and ``relaxeq zoo verify`` on it: units, test MAEs on the real test_01 frames, E(3) and
permutation symmetry, the serving input checks (shape, finite, the molecule's atoms), the ``SignatureDef`` and a
fresh TensorFlow-only process.
"""

import importlib.util
import io
import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_relaxeq.datasets.rmd17 import load_rmd17, rmd17_target_scaler
from keras_relaxeq.export.projection import project
from keras_relaxeq.models.equiformer import equiformer
from keras_relaxeq.models.potential import MoleculePotential, formula, molecule_potential
from keras_relaxeq.zoo import registry
from keras_relaxeq.zoo.publish import PublishError, publish_run
from keras_relaxeq.zoo.verify import verify_entries

ROOT = Path(__file__).resolve().parents[2]
NAME = "equiformer_e3_md17ethanol"
ETHANOL = [6, 6, 8, 1, 1, 1, 1, 1, 1]


def load_recipe():
    spec = importlib.util.spec_from_file_location("recipe_md17_zoo", ROOT / "recipes" / "md17.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_run(root: Path, *, project_it=True):
    """A run folder as recipes/md17.py writes it: the config from the recipe's parser, a relaxed width-1/16
    one-block Equiformer (random weights, random branch) projected and saved as ``best_projected.keras``."""
    recipe = load_recipe()
    run = root / ("run" if project_it else "run_unprojected")
    args = ["--molecule", "ethanol", "--width", "0.0625", "--blocks", "1", "--epochs", "2", "--warmup-epochs", "1",
            "--output-dir", str(run)]
    cfg = recipe.resolve_config(recipe.build_parser().parse_args(args))
    keras.utils.set_random_seed(0)
    model = recipe.build_model(cfg)
    data = load_rmd17("ethanol", "test", labels="md17")
    model({"positions": data.positions[:2], "atomic_numbers": np.tile(data.atomic_numbers, (2, 1))})
    saved = project(model) if project_it else model
    run.mkdir()
    saved.save(run / "best_projected.keras")
    scaler = rmd17_target_scaler("ethanol", "md17")
    summary = {"recipe": "recipes/md17.py", "config": cfg, "molecule": "ethanol", "relaxed": True, "epochs_run": 2,
               "best_epoch": 2, "best_projected_val_loss": 1.0, "target_scaler": scaler.get_config(),
               "energy_mae_mev": 1.0, "force_mae_mev_per_angstrom": 2.0, "wall_time_seconds": 10.0}
    (run / "summary.json").write_text(json.dumps(summary))
    return run, summary, saved


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    root = tmp_path_factory.mktemp("md17_publish")
    run, summary, trained = make_run(root)
    messages = []
    entry = publish_run(run, zoo_dir=root / "zoo", seed=0, log=messages.append)
    return {"root": root, "run": run, "summary": summary, "entry": entry, "trained": trained,
            "messages": messages, "index": root / "zoo" / "index.json"}


def test_potential_gives_kcal_mol_and_refuses_other_molecules():
    data = load_rmd17("ethanol", "test", labels="md17")
    scaler = rmd17_target_scaler("ethanol", "md17")
    keras.utils.set_random_seed(1)
    model = equiformer(width=0.0625, num_blocks=1)
    potential = molecule_potential(model, data.atomic_numbers, scaler)
    assert formula(data.atomic_numbers) == "C2H6O" and potential.atomic_numbers == ETHANOL
    x = {"positions": data.positions[:3], "atomic_numbers": np.tile(data.atomic_numbers, (3, 1))}
    out, raw = potential(x), model(x)
    assert out["energy"].dtype == tf.float64
    want = np.asarray(raw["energy"], np.float64) * scaler.scale + scaler.energy_mean
    np.testing.assert_allclose(out["energy"].numpy(), want, rtol=0, atol=1e-9)
    np.testing.assert_allclose(out["forces"].numpy(), raw["forces"].numpy() * scaler.scale, rtol=1e-6)
    # forces = -dE/dpos in the published units too
    pos = tf.constant(data.positions[:1])
    with tf.GradientTape() as tape:
        tape.watch(pos)
        energy = potential({"positions": pos, "atomic_numbers": data.atomic_numbers[None]})["energy"]
    np.testing.assert_allclose(-tape.gradient(energy, pos).numpy(),
                               potential({"positions": pos, "atomic_numbers": data.atomic_numbers[None]})["forces"],
                               rtol=1e-4, atol=1e-4 * scaler.scale)
    with pytest.raises(tf.errors.InvalidArgumentError, match="Input atomic_numbers must list the atoms of ethanol"):
        potential(dict(x, atomic_numbers=np.ones((3, 9), np.int32)))
    with pytest.raises(ValueError, match=r"Input positions must have shape \[batch, 9, 3\]"):
        potential({"positions": data.positions[:3, :8], "atomic_numbers": x["atomic_numbers"][:, :8]})
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or Inf"):
        potential(dict(x, positions=np.full_like(data.positions[:3], np.nan)))
    # the atoms in another order: the same energy, the forces permuted with them
    perm = np.random.default_rng(0).permutation(9)
    moved = potential({"positions": x["positions"][:, perm], "atomic_numbers": x["atomic_numbers"][:, perm]})
    np.testing.assert_allclose(moved["energy"], out["energy"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(moved["forces"], out["forces"].numpy()[:, perm], atol=1e-4)
    with pytest.raises(ValueError, match="scale > 0"):
        MoleculePotential(model, ETHANOL, 0.0, -1.0)


def test_entry_fields_metrics_and_card(published):
    zoo = published["index"].parent
    e = registry.load_index(published["index"]).get(NAME)
    assert (e.version, e.arch, e.group, e.dataset, e.task) == (1, "equiformer", "e3", "md17ethanol",
                                                               "interatomic_potential")
    assert e.is_potential_model and not e.is_nbody_model and not e.is_c4_field_forecaster
    assert e.molecule_atomic_numbers == tuple(ETHANOL) and e.raw["molecule"]["formula"] == "C2H6O"
    assert e.input_checks == ("shape", "finite", "composition") and e.recipe == "recipes/md17.py"
    assert e.input_signature["positions"]["shape"] == [None, 9, 3]
    assert e.input_signature["atomic_numbers"]["dtype"] == "int32"
    assert e.outputs["energy"]["dtype"] == "float64"
    assert e.architecture["config"] == {"width": 0.0625, "num_blocks": 1}
    metrics = {m["name"]: m["value"] for m in e.metrics}
    assert set(metrics) == {"energy_mae_mev", "force_mae_mev_per_angstrom", "energy_symmetry_max_abs_kcal_mol",
                            "force_symmetry_max_abs", "keras_max_abs_diff"}
    # the test MAEs of the projected network recomputed independently from the data and the scaler
    data = load_rmd17("ethanol", "test", labels="md17")
    scaler = rmd17_target_scaler("ethanol", "md17")
    e_err, f_err = [], []
    for i in range(0, 1000, 100):
        out = published["trained"]({"positions": data.positions[i:i + 100],
                                    "atomic_numbers": np.tile(data.atomic_numbers, (100, 1))})
        e_err.append(np.abs(scaler.energy_from_standard(np.asarray(out["energy"], np.float64)) - data.energy[i:i + 100]))
        f_err.append(np.abs(np.asarray(out["forces"]) * scaler.scale - data.forces[i:i + 100]).ravel())
    assert metrics["energy_mae_mev"] == pytest.approx(np.concatenate(e_err).mean() * 43.364, rel=1e-4)
    assert metrics["force_mae_mev_per_angstrom"] == pytest.approx(np.concatenate(f_err).mean() * 43.364, rel=1e-4)
    assert metrics["energy_symmetry_max_abs_kcal_mol"] < 1e-2 and metrics["force_symmetry_max_abs"] < 1e-2
    card = (zoo / e.card).read_text()
    assert card.startswith(f"# {NAME} v1\n")
    assert "CPU protocol (docs/experiments/md17.md): width 0.0625, 2 epochs" in card
    assert "python recipes/md17.py --molecule ethanol --relaxed --seed 0 --output-dir runs/md17/ethanol_relaxed_seed0" \
        in card
    assert "2.2 meV / 3.1 meV/Å for ethanol at the full budget" in card
    assert f"published {NAME} v1" in published["messages"][-1]


def test_card_states_the_batches_per_epoch_of_a_run_that_saw_a_subset():
    """Aspirin's CPU protocol trains on 27 random batches per epoch: the card's budget and limits say so."""
    from keras_relaxeq.zoo.publish import md17

    recipe = load_recipe()
    args = ["--molecule", "aspirin", "--width", "0.25", "--epochs", "40", "--max-train-batches", "27"]
    cfg = recipe.resolve_config(recipe.build_parser().parse_args(args + ["--output-dir", "unused"]))
    summary = {"config": cfg, "epochs_run": 40, "best_epoch": 40, "wall_time_seconds": 10.0}
    z = [6] * 9 + [8] * 4 + [1] * 8
    entry = {"name": "equiformer_e3_md17aspirin", "version": 1, "molecule": {"atomic_numbers": z, "formula": "C9H8O4",
             "labels": "md17"}, "architecture": {"class": "keras_relaxeq.models.equiformer.equiformer",
             "config": {"width": 0.25, "num_blocks": 6}}, "targets": {"scale": 1.0, "energy_mean": -1.0},
             "metrics": [], "artifact": {"file": "a.tar.gz", "size": 1, "sha256": "0" * 64}, "license": "MIT",
             "citation": "c"}
    meas = {"symmetry": {"energy_max_abs": 1e-5, "force_max_abs": 1e-4, "force_scale": 100.0},
            "energy_mae_mev": 1.0, "force_mae_mev_per_angstrom": 2.0, "num_test": 1000}
    card = md17.render_card(entry, summary, meas, "python recipes/md17.py ...", "given", "best_projected.keras", 1)
    assert "batch 8, 27 random batches per epoch (216 of the 950 training frames, a new draw each epoch)" in card
    assert "A small CPU budget (width 0.25, 40 epochs of 27 batches)" in card
    cfg_all = dict(cfg, max_train_batches=None)
    card = md17.render_card(entry, dict(summary, config=cfg_all), meas, "cmd", "given", "best_projected.keras", 1)
    assert "random batches per epoch" not in card and "epochs of 27 batches" not in card


def test_verify_runs_every_check_on_the_entry(published, tmp_path):
    out = io.StringIO()
    failures = verify_entries(index=published["index"], out=out, cache_dir=tmp_path, progress=False)
    text = out.getvalue()
    assert failures == 0, text
    line = next(ln for ln in text.splitlines() if ln.startswith("OK"))
    for step in ("sha256 ok", "loads", "signature ok", "E(3) and permutation symmetry: energy max err",
                 "input checks ok (one atom fewer, 4 coordinates, extra leading axis, no batch axis, NaN, Inf, "
                 "another molecule's atomic numbers refused, naming the input)",
                 "SignatureDef ok (atomic_numbers (-1, 9); positions (-1, 9, 3); energy (-1,); forces (-1, 9, 3))",
                 "fresh process ok (TensorFlow only, no keras_relaxeq"):
        assert step in line, (step, line)


def test_the_symmetry_check_fails_a_potential_that_is_not_invariant(published):
    """The verify check can fail: a served function whose energy depends on the absolute orientation."""
    from keras_relaxeq.zoo.verify import check_potential_symmetry

    e = registry.load_index(published["index"]).get(NAME)

    class Biased:
        def __call__(self, positions, atomic_numbers):
            x = np.asarray(positions, np.float64)
            return {"energy": -97000.0 + x[..., 0].sum(-1), "forces": -np.broadcast_to([1.0, 0, 0], x.shape)}

    ok, errors, e_tol, _ = check_potential_symmetry(Biased(), e)
    assert not ok and errors["energy_rotation_max_abs"] > e_tol and errors["energy_permutation_max_abs"] < 1e-9


def test_publish_refuses_an_unprojected_model_and_missing_scaler(published, tmp_path):
    run, _, _ = make_run(tmp_path, project_it=False)
    with pytest.raises(PublishError, match="still has relaxation branches"):
        publish_run(run, zoo_dir=tmp_path / "zoo")
    plain = tmp_path / "no_scaler"
    plain.mkdir()
    summary = dict(published["summary"])
    del summary["target_scaler"]
    (plain / "summary.json").write_text(json.dumps(summary))
    (plain / "best_projected.keras").write_bytes((published["run"] / "best_projected.keras").read_bytes())
    with pytest.raises(PublishError, match="no target_scaler"):
        publish_run(plain, zoo_dir=tmp_path / "zoo")
    assert not (tmp_path / "zoo" / "index.json").exists()


def test_published_metrics_are_measured_again(published, tmp_path):
    from keras_relaxeq.zoo.publish.md17 import evaluate_entry

    rows = evaluate_entry(NAME, index=published["index"], cache_dir=tmp_path)
    for name in ("energy_mae_mev", "force_mae_mev_per_angstrom"):
        assert rows[name][1] == pytest.approx(rows[name][0], rel=1e-4)
