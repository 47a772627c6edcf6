"""Equiformer energy / force model (models/equiformer.py) on a small random molecule, tiny width, 2 blocks.

* E(3): with O(3) irreps (``parity=True``) the energy is invariant and the forces equivariant under rotations,
  reflections and translations (float64, 1e-9 relative); with the published all-even labels (``parity=False``)
  under rotations and translations only, and a reflection changes the energy (that model is SE(3) only).
* permutations of the atoms permute the forces and leave the energy unchanged;
* forces = -dE/dpos against central finite differences of the energy (float64), with a negative control;
* the energy is continuous and the force vanishes as an atom crosses the cutoff;
* relaxed model: not equivariant at theta = 1 with a non-zero branch, ``project`` gives the equivariant model
  equal to the relaxed one at theta = 0, with the plain model's parameter count;
* ``.keras`` round trip, ``model.fit`` (nested tapes) lowers a force + energy loss, clear input errors.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_relaxeq as kr
from keras_relaxeq.layers.relaxation import relaxed_layers
from keras_relaxeq.models.equiformer import Equiformer, equiformer, node_irreps
from keras_relaxeq.testing import assert_equivariant, check_equivariance

TINY = dict(width=0.0625, num_blocks=2, num_rbf=8, radial_hidden=(8,), head_units=8, ffn_multiplier=2.0)
ATOMS = 7
OUT_REPS = {"energy": "invariant", "forces": "vector"}


def _molecule(batch=3, seed=0):
    rng = np.random.default_rng(seed)
    pos = rng.normal(size=(batch, ATOMS, 3)) * 1.1
    z = rng.choice([1, 6, 7, 8], size=(batch, ATOMS)).astype("int32")
    return pos, z


@pytest.fixture(scope="module")
def model64():
    keras.utils.set_random_seed(0)
    model = equiformer(dtype="float64", **TINY)
    pos, z = _molecule()
    model({"positions": pos, "atomic_numbers": z})
    return model


def _fn(model, z):
    return lambda p: model({"positions": p, "atomic_numbers": z})


def test_irreps_and_published_size():
    assert node_irreps() == "128x0e+64x1o+32x2e"
    assert node_irreps(parity=False) == "128x0e+64x1e+32x2e"
    assert node_irreps(0.25) == "32x0e+16x1o+8x2e"
    model = equiformer(width=0.0625, num_blocks=1)
    assert model.irreps_sh == "1x0e+1x1o+1x2e" and model.num_heads == 4 and model.num_rbf == 32
    assert model.cutoff == 5.0 and model.head_units == 32


def test_energy_invariant_forces_equivariant_under_e3(model64):
    pos, z = _molecule()
    out = model64({"positions": pos, "atomic_numbers": z})
    assert out["energy"].shape == (3,) and out["forces"].shape == (3, ATOMS, 3)
    report = assert_equivariant(_fn(model64, z), tf.constant(pos), "position", OUT_REPS, group="E3", num_samples=2)
    assert report.max_error < 1e-9 * max(report.scale, 1.0)
    # translations alone
    moved = model64({"positions": pos + np.array([3.0, -1.0, 2.0]), "atomic_numbers": z})
    np.testing.assert_allclose(moved["energy"].numpy(), out["energy"].numpy(), atol=1e-10)
    np.testing.assert_allclose(moved["forces"].numpy(), out["forces"].numpy(), atol=1e-10)


def test_published_parity_labels_are_se3_but_not_reflection_equivariant():
    keras.utils.set_random_seed(1)
    model = equiformer(parity=False, dtype="float64", **TINY)
    pos, z = _molecule()
    fn = _fn(model, z)
    assert_equivariant(fn, tf.constant(pos), "position", OUT_REPS, group="SE3", num_samples=1)
    report = check_equivariance(fn, tf.constant(pos), "position", OUT_REPS, group="E3", num_samples=1)
    assert not report.passed and report.max_error > 1e-6


def test_permutation_of_atoms(model64):
    pos, z = _molecule()
    perm = np.random.default_rng(3).permutation(ATOMS)
    out = model64({"positions": pos, "atomic_numbers": z})
    permuted = model64({"positions": pos[:, perm], "atomic_numbers": z[:, perm]})
    np.testing.assert_allclose(permuted["energy"].numpy(), out["energy"].numpy(), rtol=1e-12)
    np.testing.assert_allclose(permuted["forces"].numpy(), out["forces"].numpy()[:, perm], atol=1e-12)
    # negative control: permuting positions but not the elements changes the energy
    mixed = model64({"positions": pos[:, perm], "atomic_numbers": z})
    assert np.abs(mixed["energy"].numpy() - out["energy"].numpy()).max() > 1e-6


def _finite_difference_forces(model, pos, z, h=1e-5):
    """``-dE/dpos`` by central differences, all displacements of molecule 0 in one batch."""
    rows = []
    for a in range(ATOMS):
        for c in range(3):
            for s in (1.0, -1.0):
                p = pos[0].copy()
                p[a, c] += s * h
                rows.append(p)
    e = model({"positions": np.stack(rows), "atomic_numbers": np.repeat(z[:1], len(rows), 0)})["energy"].numpy()
    return -(e[0::2] - e[1::2]).reshape(ATOMS, 3) / (2 * h)


def test_forces_match_finite_differences(model64, monkeypatch):
    pos, z = _molecule()
    forces = model64({"positions": pos, "atomic_numbers": z})["forces"].numpy()[0]
    fd = _finite_difference_forces(model64, pos, z)
    scale = np.abs(forces).max()
    assert scale > 1e-3
    np.testing.assert_allclose(fd, forces, atol=1e-6 * scale)
    # negative control: a radial basis whose gradient is cut (a broken layer) gives forces that do not match
    basis = model64.radial_basis
    original = basis.call
    monkeypatch.setattr(basis, "call", lambda d: tf.stop_gradient(original(d)))
    broken = model64({"positions": pos, "atomic_numbers": z})["forces"].numpy()[0]
    assert np.abs(_finite_difference_forces(model64, pos, z) - broken).max() > 1e-3 * scale


def test_energy_continuous_and_force_vanishing_at_the_cutoff(model64):
    z = np.array([[6, 1, 8]], "int32")

    def run(d):
        p = np.array([[[0.0, 0, 0], [d, 0, 0], [-1.0, 0.5, 0.2]]])
        out = model64({"positions": p, "atomic_numbers": z})
        return out["energy"].numpy()[0], out["forces"].numpy()[0, 1]

    e_in, f_in = run(5.0 - 1e-3)
    e_out, f_out = run(5.0 + 1e-3)
    e_far, _ = run(5.0 - 0.5)
    assert abs(e_in - e_out) < 1e-8 < abs(e_far - e_out)
    assert np.abs(f_in).max() < 1e-6 and np.all(f_out == 0)


def test_relaxed_model_projection():
    keras.utils.set_random_seed(2)
    relaxation = {
        "relaxed": True,
        "relaxation_initializer": keras.initializers.serialize(keras.initializers.RandomNormal(stddev=0.2)),
    }
    small = dict(TINY, num_blocks=1)
    model = equiformer(relaxation=relaxation, dtype="float64", **small)
    pos, z = _molecule()
    x = {"positions": pos, "atomic_numbers": z}
    model(x)
    assert len(relaxed_layers(model)) == 1
    kr.set_theta(model, 1.0)
    bad = check_equivariance(_fn(model, z), tf.constant(pos), "position", OUT_REPS, group="SO3", num_samples=1)
    assert not bad.passed
    projected = kr.project(model)
    assert not relaxed_layers(projected)
    assert_equivariant(_fn(projected, z), tf.constant(pos), "position", OUT_REPS, group="E3", num_samples=1)
    plain = equiformer(dtype="float64", **small)
    plain(x)
    assert projected.count_params() == plain.count_params() < model.count_params()
    kr.set_theta(model, 0.0)
    np.testing.assert_allclose(projected(x)["energy"].numpy(), model(x)["energy"].numpy(), rtol=1e-12)
    np.testing.assert_allclose(projected(x)["forces"].numpy(), model(x)["forces"].numpy(), atol=1e-12)


def test_keras_file_round_trip(model64, tmp_path):
    pos, z = _molecule()
    x = {"positions": pos, "atomic_numbers": z}
    path = str(tmp_path / "equiformer.keras")
    model64.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, Equiformer) and loaded.get_config() == model64.get_config()
    for key in ("energy", "forces"):
        np.testing.assert_allclose(loaded(x)[key].numpy(), model64(x)[key].numpy(), rtol=1e-12, atol=1e-12)
    # the neighbour mask given explicitly gives the same result as the computed one
    d = np.linalg.norm(pos[:, :, None] - pos[:, None], axis=-1)
    nbr = ((d > 0) & (d < 5.0)).astype("float32")
    np.testing.assert_allclose(model64(dict(x, neighbors=nbr))["forces"].numpy(), model64(x)["forces"].numpy())


@pytest.mark.parametrize("run_eagerly", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_fit_lowers_an_energy_and_force_loss(run_eagerly):
    """``model.fit`` differentiates the force loss through the inner tape (eager here: tracing the second-order
    train step takes about a minute; the graph-mode step is the ``slow`` variant and the benchmark)."""
    keras.utils.set_random_seed(0)
    model = equiformer(**TINY)
    pos, z = _molecule(batch=8, seed=5)
    rng = np.random.default_rng(6)
    y = {"energy": rng.normal(size=(8,)).astype("float32"), "forces": rng.normal(size=(8, ATOMS, 3)).astype("float32")}
    x = {"positions": pos.astype("float32"), "atomic_numbers": z}
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2), loss={"energy": "mse", "forces": "mse"}, run_eagerly=run_eagerly
    )
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0).history["loss"]
    assert np.all(np.isfinite(history)) and history[-1] < 0.9 * history[0], history


def test_input_errors():
    model = equiformer(**TINY)
    pos, z = _molecule()
    with pytest.raises(ValueError, match="positions"):
        model(pos)
    with pytest.raises(ValueError, match=r"\[B, A, 3\]"):
        model({"positions": pos[..., :2], "atomic_numbers": z})
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_atomic_number"):
        model({"positions": pos, "atomic_numbers": z + 20})
    with pytest.raises(ValueError, match="num_blocks"):
        equiformer(num_blocks=0)


def test_position_mlp_relaxation_trains_with_its_penalty_and_projects():
    """The reference's branch (an MLP on features, element one-hot and centred positions, finite-rotation
    penalty): a training step reports the penalty, the branch breaks rotations but not translations, and the
    projection is the E(3)-equivariant model equal to the relaxed one at theta = 0."""
    keras.utils.set_random_seed(3)
    small = dict(TINY, num_blocks=1)
    relaxation = {
        "relaxed": True,
        "equivariance_penalty": "finite_rotation",
        "relaxation_initializer": "glorot_uniform",
    }
    model = equiformer(relaxation=relaxation, relaxation_kind="position_mlp", dtype="float64", **small)
    pos, z = _molecule()
    x = {"positions": pos, "atomic_numbers": z}
    y = {"energy": np.zeros(3), "forces": np.zeros((3, ATOMS, 3))}
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss={"energy": "mse", "forces": "mse"}, run_eagerly=True)
    logs = model.train_on_batch(x, y, return_dict=True)
    assert logs["lie_penalty"] > 0 and logs["projection_penalty"] > 0
    fn = _fn(model, z)
    assert not check_equivariance(fn, tf.constant(pos), "position", OUT_REPS, group="SO3", num_samples=1).passed
    shifted = model({"positions": pos + 2.0, "atomic_numbers": z})
    np.testing.assert_allclose(shifted["energy"].numpy(), model(x)["energy"].numpy(), rtol=1e-10)
    projected = kr.project(model)
    assert_equivariant(_fn(projected, z), tf.constant(pos), "position", OUT_REPS, group="E3", num_samples=1)
    kr.set_theta(model, 0.0)
    np.testing.assert_allclose(projected(x)["forces"].numpy(), model(x)["forces"].numpy(), atol=1e-12)


@pytest.mark.slow
def test_export_serves_energy_and_forces_without_the_package(tmp_path):
    """The force tape survives ``ExportArchive``: a fresh process without keras_relaxeq serves the same outputs."""
    import subprocess
    import sys

    model = equiformer(**dict(TINY, num_blocks=1))
    pos, z = _molecule(batch=2)
    x = {"positions": pos.astype("float32"), "atomic_numbers": z}
    ref = model(x)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serve",
        lambda positions, atomic_numbers: model({"positions": positions, "atomic_numbers": atomic_numbers}),
        input_signature=[
            tf.TensorSpec([None, None, 3], tf.float32, name="positions"),
            tf.TensorSpec([None, None], tf.int32, name="atomic_numbers"),
        ],
    )
    archive.write_out(str(tmp_path / "export"))
    np.savez(tmp_path / "x.npz", positions=x["positions"], atomic_numbers=z)
    code = (
        "import numpy as np, tensorflow as tf, sys\n"
        f"r = tf.saved_model.load({str(tmp_path / 'export')!r})\n"
        f"d = np.load({str(tmp_path / 'x.npz')!r})\n"
        "o = r.serve(tf.constant(d['positions']), tf.constant(d['atomic_numbers']))\n"
        "assert 'keras_relaxeq' not in sys.modules\n"
        f"np.savez({str(tmp_path / 'out.npz')!r}, energy=o['energy'].numpy(), forces=o['forces'].numpy())\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=600)
    out = np.load(tmp_path / "out.npz")
    np.testing.assert_allclose(out["energy"], ref["energy"].numpy(), rtol=1e-5)
    np.testing.assert_allclose(out["forces"], ref["forces"].numpy(), rtol=1e-4, atol=1e-6)


def test_builds_after_a_functional_relaxed_model():
    """A functional ``RelaxedModel(inputs, outputs)`` makes Keras inject ``Functional`` into ``RelaxedModel``'s bases;
    the Equiformer (a subclassed model with the ``RelaxedTraining`` mixin) must still build afterwards, whatever
    ran before it in the process."""
    inputs = keras.Input((3,))
    kr.RelaxedModel(inputs, keras.layers.Dense(2)(inputs))
    assert issubclass(kr.RelaxedModel, keras.src.models.functional.Functional)  # the injection happened
    model = equiformer(**TINY)
    pos, z = _molecule()
    out = model({"positions": pos, "atomic_numbers": z})
    assert out["energy"].shape == (pos.shape[0],) and hasattr(model, "relaxation_penalty")
