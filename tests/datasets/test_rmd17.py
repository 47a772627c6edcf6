"""Revised MD17: reader and its errors, the 950/50 split, standardisation, units, the tf.data pipeline
with its radius graph, the statistics command, the docs example and the TFDS builder.

The real files (split 01, 1,000 frames per file) are read from ``<repo>/../shared/data/rmd17``; the
error cases use tiny synthetic NPZ files in ``tmp_path``.
"""

import json
import os
import re
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.spatial.distance import cdist
from scipy.spatial.transform import Rotation

from keras_relaxeq.datasets import rmd17 as md

ROOT = Path(__file__).resolve().parents[2]
#: the shared data root: $KERAS_RELAXEQ_DATA when set (a git worktree has no <repo>/../shared), else the default
SHARED_ROOT = Path(os.environ.get(md.DATA_ENV_VAR) or md.DEFAULT_DATA_ROOT)
REAL_DIR = SHARED_ROOT / "rmd17"
DOCS = ROOT / "docs" / "rmd17.md"


@pytest.fixture(autouse=True)
def _no_data_env(monkeypatch):
    """No environment variable; the default data root is the shared one."""
    monkeypatch.delenv(md.DATA_ENV_VAR, raising=False)
    monkeypatch.setattr(md, "DEFAULT_DATA_ROOT", SHARED_ROOT)


def _raw(molecule, part="train"):
    with np.load(md.data_file(molecule, part, REAL_DIR)) as f:
        return {k: f[k] for k in f.files}


def _write_npz(folder, molecule="ethanol", part="train", frames=1000, **overrides):
    """A synthetic rMD17 file (random numbers of the right shapes) with ``overrides`` replacing keys
    (``None`` drops a key)."""
    rng = np.random.default_rng(1)
    atoms = md.MOLECULES[molecule]
    arrays = {
        "nuclear_charges": np.full([atoms], 6, np.uint8),
        "coords": rng.normal(size=[frames, atoms, 3]) * 2.0,
        "energies": rng.normal(size=[frames]) - 1000.0,
        "forces": rng.normal(size=[frames, atoms, 3]),
        "old_indices": np.arange(frames, dtype=np.int64) * 7,
        "old_energies": rng.normal(size=[frames]) - 1000.0,
        "old_forces": rng.normal(size=[frames, atoms, 3]),
    }
    for key, value in overrides.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"rmd17_{molecule}_{part}_01.npz"
    np.savez(path, **arrays)
    return path


# ----------------------------------------------------------------------------- real files


def test_molecule_list_matches_the_files():
    assert list(md.MOLECULES) == sorted(md.MOLECULES) and len(md.MOLECULES) == 10
    for molecule, atoms in md.MOLECULES.items():
        for labels in md.LABEL_SETS:
            data = md.load_rmd17(molecule, "test", labels)
            assert data.positions.shape == (1000, atoms, 3) and data.positions.dtype == np.float32
            assert data.atomic_numbers.shape == (atoms,) and data.atomic_numbers.dtype == np.int32
            assert data.energy.shape == (1000,) and data.energy.dtype == np.float64
            assert data.forces.shape == (1000, atoms, 3) and data.forces.dtype == np.float32
            assert set(np.unique(data.atomic_numbers)) <= {1, 6, 7, 8}
        # train_01 and test_01 are different frames of the original trajectory
        train = md.read_rmd17_file(md.data_file(molecule, "train"), molecule)
        assert len(set(train["old_indices"]) | set(data.md17_indices)) == 2000


def test_splits_are_the_seeded_rows_of_the_files():
    raw = _raw("aspirin")
    train = md.load_rmd17("aspirin", "train", "rmd17", REAL_DIR)
    val = md.load_rmd17("aspirin", "validation", "rmd17", SHARED_ROOT)
    assert len(train) == 950 and len(val) == 50 and train.split == "train" and val.split == "validation"
    rows = np.concatenate([train.frame_indices, val.frame_indices])
    assert np.array_equal(np.sort(rows), np.arange(1000))  # disjoint and complete
    perm = np.random.default_rng(0).permutation(1000)  # the documented recipe
    assert np.array_equal(train.frame_indices, np.sort(perm[:950]))
    for data in (train, val):
        r = data.frame_indices
        np.testing.assert_array_equal(data.positions, raw["coords"][r].astype(np.float32))
        np.testing.assert_array_equal(data.energy, raw["energies"][r])
        np.testing.assert_array_equal(data.forces, raw["forces"][r].astype(np.float32))
        np.testing.assert_array_equal(data.md17_indices, raw["old_indices"][r])
        assert not data.positions.flags.writeable
    # another seed is another split; the same seed the same one
    other = md.load_rmd17("aspirin", "validation", "rmd17", split_seed=1)
    assert not np.array_equal(other.frame_indices, val.frame_indices)
    assert np.array_equal(md.load_rmd17("aspirin", "validation", "rmd17").frame_indices, val.frame_indices)
    test = md.load_rmd17("aspirin", "test", "rmd17")
    assert np.array_equal(test.frame_indices, np.arange(1000)) and test.split == "test"


def test_label_sets_share_frames_but_not_labels():
    rmd, old = md.load_rmd17("ethanol", "train", "rmd17"), md.load_rmd17("ethanol", "train", "md17")
    np.testing.assert_array_equal(rmd.positions, old.positions)
    np.testing.assert_array_equal(old.energy, _raw("ethanol")["old_energies"][old.frame_indices])
    # the original MD17 forces are noisier: several kcal/mol/Å apart on average
    assert 1.0 < np.mean(np.abs(rmd.forces - old.forces)) < 6.0
    assert md.load_rmd17("ethanol").labels == "rmd17"


def test_data_dir_resolution(monkeypatch, tmp_path):
    assert md.resolve_data_dir() == REAL_DIR  # <repo>/../shared/data/rmd17
    assert md.resolve_data_dir(SHARED_ROOT) == REAL_DIR and md.resolve_data_dir(REAL_DIR) == REAL_DIR
    monkeypatch.setenv(md.DATA_ENV_VAR, str(SHARED_ROOT))
    assert md.resolve_data_dir() == REAL_DIR
    own = tmp_path / "root" / "rmd17"
    _write_npz(own)
    assert md.resolve_data_dir(tmp_path / "root") == own  # the argument wins over the variable
    monkeypatch.setenv(md.DATA_ENV_VAR, str(tmp_path / "root"))
    assert md.load_rmd17("ethanol", "validation").path.parent == own
    monkeypatch.setenv(md.DATA_ENV_VAR, str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=r"KERAS_RELAXEQ_DATA=.*empty.*wget https://"):
        md.resolve_data_dir()
    with pytest.raises(FileNotFoundError, match=r"data_dir=.*nowhere.*wget https://"):
        md.load_rmd17("ethanol", data_dir=tmp_path / "nowhere")
    monkeypatch.delenv(md.DATA_ENV_VAR)
    monkeypatch.setattr(md, "DEFAULT_DATA_ROOT", tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"rMD17 data not found.*wget https://"):
        md.load_rmd17("ethanol")


def test_missing_molecule_file_says_where_and_how(tmp_path):
    _write_npz(tmp_path, "ethanol", "train")
    with pytest.raises(FileNotFoundError, match=r"rmd17_ethanol_test_01\.npz is missing in .*wget .*test_01\.npz"):
        md.load_rmd17("ethanol", "test", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="rmd17_aspirin_train_01.npz is missing"):
        md.load_rmd17("aspirin", "train", data_dir=tmp_path)


def test_argument_errors():
    with pytest.raises(ValueError, match="Unknown rMD17 molecule 'water': choose one of aspirin, azobenzene"):
        md.load_rmd17("water")
    with pytest.raises(ValueError, match="Unknown label set 'dft'.*'rmd17'.*'md17'"):
        md.load_rmd17("ethanol", labels="dft")
    with pytest.raises(ValueError, match="Unknown split 'val'"):
        md.load_rmd17("ethanol", "val")
    with pytest.raises(ValueError, match="batch_size must be positive"):
        md.rmd17_dataset("ethanol", batch_size=0)
    with pytest.raises(ValueError, match="cutoff must be a positive number"):
        md.rmd17_dataset("ethanol", cutoff=0.0)
    with pytest.raises(TypeError, match="standardize must be True, False or a TargetScaler"):
        md.rmd17_dataset("ethanol", standardize="yes")


# ----------------------------------------------------------------------------- bad files


def test_synthetic_file_reads_and_splits(tmp_path):
    _write_npz(tmp_path)
    train = md.load_rmd17("ethanol", "train", "md17", tmp_path)
    val = md.load_rmd17("ethanol", "validation", "md17", tmp_path)
    assert len(train) == 950 and len(val) == 50 and not set(train.frame_indices) & set(val.frame_indices)
    np.testing.assert_array_equal(val.md17_indices, 7 * val.frame_indices)
    _write_npz(tmp_path / "short", frames=999)
    with pytest.raises(ValueError, match="has 999 frames.*needs at least 1000"):
        md.load_rmd17("ethanol", "train", data_dir=tmp_path / "short")
    assert len(md.load_rmd17("ethanol", "train", data_dir=tmp_path, split_seed=5)) == 950


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"coords": np.zeros([1000, 8, 3])}, r"'coords' must have shape \[frames, 9, 3\], got \(1000, 8, 3\)"),
        ({"nuclear_charges": np.ones([12], np.uint8)}, r"12 atoms, but ethanol has 9"),
        ({"forces": np.zeros([999, 9, 3])}, r"'forces' must have shape \(1000, 9, 3\), got \(999, 9, 3\)"),
        ({"energies": np.zeros([1000, 1])}, r"'energies' must have shape \(1000,\), got \(1000, 1\)"),
        ({"coords": np.zeros([1000, 27])}, r"'coords' must have shape \[frames, 9, 3\], got \(1000, 27\)"),
        ({"old_indices": None}, r"missing key\(s\) \['old_indices'\]"),
        ({"nuclear_charges": np.zeros([9], np.uint8)}, "atomic numbers 1..118"),
        ({"energies": np.full([1000], "x")}, r"'energies' must hold real numbers, got dtype <U1"),
        ({"old_indices": np.zeros([1000])}, r"'old_indices' must hold integers, got dtype float64"),
        ({"energies": np.where(np.arange(1000) == 4, np.nan, 1.0)}, r"'energies' has NaN/Inf values in 1 frame"),
    ],
)
def test_bad_files_are_rejected(tmp_path, overrides, message):
    _write_npz(tmp_path, **overrides)
    with pytest.raises(ValueError, match=message):
        md.load_rmd17("ethanol", "train", "rmd17", tmp_path)


def test_nan_frames_are_named(tmp_path):
    forces = np.zeros([1000, 9, 3])
    forces[[2, 7], 3, 1] = np.inf
    _write_npz(tmp_path, part="test", old_forces=forces)
    with pytest.raises(ValueError, match=r"'old_forces' has NaN/Inf values in 2 frame\(s\), the first at frame 2"):
        md.load_rmd17("ethanol", "test", "md17", tmp_path)
    _write_npz(tmp_path / "ok", part="test")  # negative control: the same file without the Inf reads
    assert len(md.load_rmd17("ethanol", "test", "md17", tmp_path / "ok")) == 1000
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "rmd17_ethanol_test_01.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="not a readable npz file"):
        md.load_rmd17("ethanol", "test", data_dir=tmp_path / "broken")


# ----------------------------------------------------------------------------- units and scaling


def test_units_and_maes():
    assert md.KCAL_MOL_TO_MEV == 43.364 and md.kcal_mol_to_mev(1.0) == pytest.approx(43.364)
    np.testing.assert_allclose(md.mev_to_kcal_mol(md.kcal_mol_to_mev(np.array([0.5, 2.0]))), [0.5, 2.0])
    e_true, f_true = np.array([-100.0, -101.0]), np.zeros([2, 3, 3])
    f_pred = f_true.copy()
    f_pred[0, 0] = [1.0, -1.0, 0.0]  # |err| summed 2 over 18 components
    assert md.mae_mev(e_true + [0.1, -0.3], e_true) == pytest.approx(0.2 * 43.364)
    assert md.mae_mev(f_pred, f_true) == pytest.approx(2.0 / 18.0 * 43.364)
    with pytest.raises(ValueError, match="shapes differ"):
        md.mae_mev(e_true, e_true[:1])
    scaler = md.TargetScaler(-1000.0, 2.0)
    assert scaler.mae_to_mev(0.5) == pytest.approx(43.364)  # 0.5 standardised units of 2 kcal/mol


def test_target_scaler_uses_training_frames_only():
    train = md.load_rmd17("toluene", "train", "md17")
    scaler = md.rmd17_target_scaler("toluene", "md17")
    assert scaler.scale_by == "energy_std" and (scaler.molecule, scaler.labels, scaler.split_seed) == (
        "toluene",
        "md17",
        0,
    )
    assert scaler.energy_mean == pytest.approx(np.mean(train.energy), abs=1e-9)
    assert scaler.scale == pytest.approx(np.std(train.energy, ddof=1), rel=1e-12)  # torch.std, as Equiformer
    rms = md.rmd17_target_scaler("toluene", "md17", scale_by="force_rms").scale
    assert rms == pytest.approx(np.sqrt(np.mean(train.forces.astype(np.float64) ** 2)), rel=1e-9)
    validation = md.load_rmd17("toluene", "validation", "md17")
    assert md.target_statistics(validation).energy_mean != scaler.energy_mean  # validation frames left out
    e = scaler.energy_to_standard(train.energy)
    f = scaler.forces_to_standard(train.forces.astype(np.float64))
    assert abs(np.mean(e)) < 1e-9 and np.std(e, ddof=1) == pytest.approx(1.0)
    np.testing.assert_allclose(f, train.forces.astype(np.float64) / scaler.scale, rtol=1e-12)
    back = scaler.unstandardize({"energy": e, "forces": f})
    np.testing.assert_allclose(back["energy"], train.energy, rtol=0, atol=1e-8)
    np.testing.assert_allclose(back["forces"], train.forces, rtol=1e-6)
    config = json.loads(json.dumps(scaler.get_config()))
    assert md.TargetScaler.from_config(config) == scaler
    with pytest.raises(ValueError, match="scale > 0"):
        md.TargetScaler(0.0, 0.0)
    with pytest.raises(ValueError, match="finite energy_mean"):
        md.TargetScaler(np.nan, 1.0)
    with pytest.raises(ValueError, match="scale_by must be one of"):
        md.rmd17_target_scaler("toluene", scale_by="energy_mad")


# ----------------------------------------------------------------------------- radius graph


def _numpy_graph(positions, cutoff):
    d = np.stack([cdist(p, p) for p in np.asarray(positions, np.float64)])
    return ((d > 0) & (d < cutoff)).astype(np.float32), d


def test_radius_graph_equals_scipy_and_is_symmetric():
    positions = md.load_rmd17("aspirin", "test").positions
    graph = md.radius_graph(positions, 5.0).numpy()
    want, dist = _numpy_graph(positions, 5.0)
    assert graph.shape == (1000, 21, 21) and graph.dtype == np.float32
    differ = graph != want
    assert np.all(np.abs(dist[differ] - 5.0) < 1e-5)  # only float32 rounding at the cutoff itself
    assert differ.sum() <= 4
    assert 0.5 < want.mean() < 0.9  # neither empty nor complete: the cutoff matters for aspirin
    np.testing.assert_array_equal(graph, np.swapaxes(graph, 1, 2))
    assert not np.diagonal(graph, axis1=1, axis2=2).any()
    # another cutoff is another graph: fewer edges at 3 Å, all pairs at 100 Å
    small = md.radius_graph(positions, 3.0).numpy()
    assert small.sum() < graph.sum() and np.all(small <= graph)
    complete = np.broadcast_to(1.0 - np.eye(21, dtype=np.float32), graph.shape)
    np.testing.assert_array_equal(md.radius_graph(positions, 100.0).numpy(), complete)


def test_radius_graph_is_invariant_to_rigid_motions():
    positions = md.load_rmd17("azobenzene", "validation").positions.astype(np.float64)
    rng = np.random.default_rng(0)
    rotations = Rotation.random(len(positions), random_state=1).as_matrix()
    moved = np.einsum("fij,faj->fai", rotations, positions) + rng.normal(size=[len(positions), 1, 3]) * 10.0
    _, dist = _numpy_graph(positions, 5.0)
    far_from_cutoff = np.abs(dist - 5.0) > 1e-3
    graph, graph_moved = md.radius_graph(positions, 5.0).numpy(), md.radius_graph(moved, 5.0).numpy()
    np.testing.assert_array_equal(graph[far_from_cutoff], graph_moved[far_from_cutoff])
    assert far_from_cutoff.mean() > 0.999
    # negative control: a frame scaled by 1.3 (not a rigid motion) has another graph
    assert not np.array_equal(md.radius_graph(positions * 1.3, 5.0).numpy(), graph)


# ----------------------------------------------------------------------------- pipeline


def _collect(ds):
    batches = list(ds)
    cat = {}
    for x, y in batches:
        for k, v in {**x, **y}.items():
            cat.setdefault(k, []).append(v.numpy())
    return len(batches), {k: np.concatenate(v) for k, v in cat.items()}


def test_pipeline_batches_and_targets():
    ds = md.rmd17_dataset("aspirin", "validation", batch_size=16)
    x_spec, y_spec = ds.element_spec
    assert sorted(x_spec) == ["atomic_numbers", "neighbors", "positions"] and sorted(y_spec) == ["energy", "forces"]
    assert x_spec["neighbors"].shape.as_list() == [None, 21, 21] and x_spec["atomic_numbers"].dtype == tf.int32
    n, got = _collect(ds)
    val = md.load_rmd17("aspirin", "validation")
    assert n == 4 and ds.cardinality().numpy() == 4  # 50 = 3 * 16 + 2: the remainder is kept
    np.testing.assert_array_equal(got["positions"], val.positions)  # validation is not shuffled
    np.testing.assert_array_equal(got["atomic_numbers"], np.tile(val.atomic_numbers, (50, 1)))
    np.testing.assert_array_equal(got["energy"], val.energy.astype(np.float32))
    np.testing.assert_array_equal(got["forces"], val.forces)
    np.testing.assert_array_equal(got["neighbors"], md.radius_graph(val.positions, 5.0).numpy())
    assert md.rmd17_dataset("aspirin", "validation", 16, drop_remainder=True).cardinality().numpy() == 3
    # the cutoff reaches the graph
    _, small = _collect(md.rmd17_dataset("aspirin", "validation", 16, cutoff=2.0))
    np.testing.assert_array_equal(small["neighbors"], md.radius_graph(val.positions, 2.0).numpy())
    assert small["neighbors"].sum() < got["neighbors"].sum()


def test_pipeline_without_graph_and_split_arguments():
    ds = md.rmd17_dataset("benzene", "validation", 50, cutoff=None)
    ((x, y),) = list(ds)
    assert sorted(x) == ["atomic_numbers", "positions"] and y["forces"].shape == (50, 12, 3)
    other = md.load_rmd17("benzene", "validation", split_seed=7)
    _, got = _collect(md.rmd17_dataset("benzene", "validation", 50, split_seed=7))
    np.testing.assert_array_equal(got["positions"], other.positions)  # split_seed reaches the pipeline
    with pytest.raises(TypeError, match="split_seed must be an integer"):
        md.split_indices(1000, split_seed=0.5)
    train, val = md.split_indices(1200, split_seed=0)
    assert len(train) == 950 and len(val) == 50 and len(np.union1d(train, val)) == 1000  # 200 frames unused


def test_pipeline_shuffle_is_seeded_and_reshuffles():
    ds = md.rmd17_dataset("ethanol", "train", batch_size=100, labels="rmd17", seed=3)
    first = np.concatenate([y["energy"].numpy() for _, y in ds])
    second = np.concatenate([y["energy"].numpy() for _, y in ds])
    train = md.load_rmd17("ethanol", "train", "rmd17")
    np.testing.assert_array_equal(np.sort(first), np.sort(train.energy.astype(np.float32)))  # every frame once
    assert not np.array_equal(first, train.energy.astype(np.float32)) and not np.array_equal(first, second)
    again = md.rmd17_dataset("ethanol", "train", batch_size=100, labels="rmd17", seed=3)
    np.testing.assert_array_equal(np.concatenate([y["energy"].numpy() for _, y in again]), first)
    other = md.rmd17_dataset("ethanol", "train", batch_size=100, labels="rmd17", seed=4)
    assert not np.array_equal(np.concatenate([y["energy"].numpy() for _, y in other]), first)
    test = md.rmd17_dataset("ethanol", "test", batch_size=100, shuffle=True)
    assert not np.array_equal(
        np.concatenate([y["energy"].numpy() for _, y in test]), md.load_rmd17("ethanol", "test").energy
    )


def test_pipeline_standardised_targets_use_the_training_scaler():
    scaler = md.rmd17_target_scaler("uracil", "md17")
    _, train = _collect(md.rmd17_dataset("uracil", "train", 256, labels="md17", standardize=True, shuffle=False))
    assert abs(train["energy"].mean()) < 1e-4 and np.std(train["energy"], ddof=1) == pytest.approx(1.0, rel=1e-4)
    _, test = _collect(md.rmd17_dataset("uracil", "test", 256, labels="md17", standardize=True))
    raw = md.load_rmd17("uracil", "test", "md17")
    e, f = scaler.energy_to_standard(raw.energy), scaler.forces_to_standard(raw.forces.astype(np.float64))
    np.testing.assert_allclose(test["energy"], e, rtol=0, atol=1e-6)  # float32 after the float64 shift
    np.testing.assert_allclose(test["forces"], f, rtol=1e-6, atol=1e-6)
    assert abs(test["energy"].mean()) > 1e-3  # the test frames are scaled with training statistics
    custom = md.TargetScaler(scaler.energy_mean + 1.0, 2.0, "custom")
    _, shifted = _collect(md.rmd17_dataset("uracil", "test", 256, labels="md17", standardize=custom))
    np.testing.assert_allclose(shifted["energy"], (raw.energy - scaler.energy_mean - 1.0) / 2.0, atol=1e-6)


def test_keras_model_with_two_outputs_trains_on_the_pipeline():
    keras.utils.set_random_seed(0)
    inputs = {
        "positions": keras.Input((9, 3), name="positions"),
        "atomic_numbers": keras.Input((9,), dtype="int32", name="atomic_numbers"),
        "neighbors": keras.Input((9, 9), name="neighbors"),
    }
    h = keras.layers.Dense(8, activation="tanh")(inputs["positions"])
    h = keras.layers.Concatenate()([h, keras.layers.Dot(axes=(2, 1))([inputs["neighbors"], h])])
    forces = keras.layers.Dense(3, name="forces")(h)
    energy = keras.layers.Flatten()(keras.layers.Dense(1)(keras.layers.GlobalAveragePooling1D()(h)))
    energy = keras.layers.Reshape((), name="energy")(energy)
    model = keras.Model(inputs, {"energy": energy, "forces": forces})
    model.compile(optimizer="adam", loss={"energy": "mae", "forces": "mae"})
    ds = md.rmd17_dataset("ethanol", "validation", 10, standardize=True)
    history = model.fit(ds, epochs=2, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"]).all() and history.history["loss"][-1] > 0
    pred = model.predict(ds, verbose=0)
    assert pred["energy"].shape == (50,) and pred["forces"].shape == (50, 9, 3)


# ----------------------------------------------------------------------------- command and docs


def test_statistics_command(capsys):
    assert md.main(["--stats", "--molecules", "benzene", "ethanol"]) == 0
    out = capsys.readouterr().out
    rows = {
        line.split("|")[1].strip(): line
        for line in out.splitlines()
        if line.startswith("| benzene") or line.startswith("| ethanol")
    }
    assert sorted(rows) == ["benzene", "ethanol"]
    cells = [c.strip() for c in rows["benzene"].strip("|").split("|")]
    rmd, old = md.rmd17_target_scaler("benzene", "rmd17"), md.rmd17_target_scaler("benzene", "md17")
    assert cells[1] == "12" and float(cells[2]) == pytest.approx(rmd.scale, abs=1e-3)
    assert float(cells[3]) == pytest.approx(old.scale, abs=1e-3)
    # ethanol spans less than 5 Å: its 5 Å graph is complete (8 neighbours per atom)
    assert [c.strip() for c in rows["ethanol"].strip("|").split("|")][-1] == "8.00"
    assert md.main(["--molecules", "uracil"]) == 0  # without --stats: a check of the files
    assert "all files valid" in capsys.readouterr().out


def test_docs_page_examples_run(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for block in blocks:
        exec(compile(block, str(DOCS), "exec"), namespace)
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("baseline", "|"))]
    assert len(printed) == 11  # the baseline line of the example and one table row per molecule
    text = DOCS.read_text()
    missing = [line for line in printed if line not in text]  # the page shows what its code prints now
    assert not missing, missing


def test_docs_statistics_table_matches_the_files():
    """The per-molecule rows in docs/rmd17.md are what the command prints now."""
    text = DOCS.read_text()
    for molecule in ("aspirin", "ethanol"):
        row = md._markdown([md.molecule_statistics(molecule)], md.DEFAULT_CUTOFF).splitlines()[-1]
        assert row in text, row


# ----------------------------------------------------------------------------- TFDS


def test_tfds_builder_matches_the_reader(tmp_path):
    import tensorflow_datasets as tfds

    from keras_relaxeq.datasets.rmd17_tfds import RMD17

    builder = RMD17(config="ethanol", data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=str(SHARED_ROOT), compute_stats=tfds.download.ComputeStatsMode.SKIP
        )
    )
    sizes = {split: builder.info.splits[split].num_examples for split in md.SPLITS}
    assert sizes == {"train": 950, "validation": 50, "test": 1000}
    for split in md.SPLITS:
        want = {labels: md.load_rmd17("ethanol", split, labels) for labels in md.LABEL_SETS}
        row_of = {int(r): i for i, r in enumerate(want["md17"].frame_indices)}
        seen = set()
        for ex in tfds.as_numpy(builder.as_dataset(split=split)):
            i = row_of[int(ex["frame_index"])]
            np.testing.assert_array_equal(ex["positions"], want["md17"].positions[i])
            np.testing.assert_array_equal(ex["atomic_numbers"], want["md17"].atomic_numbers)
            assert ex["md17_index"] == want["md17"].md17_indices[i]
            for labels in md.LABEL_SETS:
                assert ex[f"{labels}_energy"] == want[labels].energy[i]  # float64 kept
                np.testing.assert_array_equal(ex[f"{labels}_forces"], want[labels].forces[i])
            seen.add(i)
        assert len(seen) == sizes[split]
