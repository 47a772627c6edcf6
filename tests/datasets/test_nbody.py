"""Tests of the charged N-body simulator and data pipeline."""

import numpy as np
import pytest
import tensorflow as tf

from keras_relaxeq.datasets import nbody


# --------------------------------------------------------------------------- #
# Independent reference: per trajectory, per step, [3, 5] layout, written
# after ChargedParticlesSim of the EGNN repository (only the global
# np.random is replaced by an explicit RandomState).
# --------------------------------------------------------------------------- #
class ReferenceChargedSim:
    def __init__(self, n_balls=5, box_size=5.0, loc_std=1.0, vel_norm=0.5, interaction_strength=1.0):
        self.n_balls = n_balls
        self.box_size = box_size
        self.loc_std = loc_std * (float(n_balls) / 5.0) ** (1 / 3)
        self.vel_norm = vel_norm
        self.interaction_strength = interaction_strength
        self._charge_types = np.array([-1.0, 0.0, 1.0])
        self._delta_T = 0.001
        self._max_F = 0.1 / self._delta_T
        self.dim = 3

    def _l2(self, A, B):
        A_norm = (A**2).sum(axis=1).reshape(A.shape[0], 1)
        B_norm = (B**2).sum(axis=1).reshape(1, B.shape[0])
        return A_norm + B_norm - 2 * A.dot(B.transpose())

    def _clamp(self, loc, vel):
        over = loc > self.box_size
        loc[over] = 2 * self.box_size - loc[over]
        vel[over] = -np.abs(vel[over])
        under = loc < -self.box_size
        loc[under] = -2 * self.box_size - loc[under]
        vel[under] = np.abs(vel[under])
        return loc, vel

    def _forces(self, loc_next, edges):
        n = self.n_balls
        l2_dist_power3 = np.power(self._l2(loc_next.transpose(), loc_next.transpose()), 3.0 / 2.0)
        forces_size = self.interaction_strength * edges / l2_dist_power3
        np.fill_diagonal(forces_size, 0)
        F = (
            forces_size.reshape(1, n, n)
            * np.concatenate(
                (
                    np.subtract.outer(loc_next[0, :], loc_next[0, :]).reshape(1, n, n),
                    np.subtract.outer(loc_next[1, :], loc_next[1, :]).reshape(1, n, n),
                    np.subtract.outer(loc_next[2, :], loc_next[2, :]).reshape(1, n, n),
                )
            )
        ).sum(axis=-1)
        F[F > self._max_F] = self._max_F
        F[F < -self._max_F] = -self._max_F
        return F

    def sample_trajectory(self, rs, T=5000, sample_freq=100, integrate=True):
        n = self.n_balls
        T_save = int(T / sample_freq - 1)
        counter = 0
        charges = rs.choice(self._charge_types, size=(self.n_balls, 1), p=[1.0 / 2, 0, 1.0 / 2])
        edges = charges.dot(charges.transpose())
        loc = np.zeros((T_save, self.dim, n))
        vel = np.zeros((T_save, self.dim, n))
        loc_next = rs.randn(self.dim, n) * self.loc_std
        vel_next = rs.randn(self.dim, n)
        v_norm = np.sqrt((vel_next**2).sum(axis=0)).reshape(1, -1)
        vel_next = vel_next * self.vel_norm / v_norm
        loc[0, :, :], vel[0, :, :] = self._clamp(loc_next, vel_next)
        if integrate:
            with np.errstate(divide="ignore", invalid="ignore"):
                vel_next += self._delta_T * self._forces(loc_next, edges)
                for i in range(1, T):
                    loc_next += self._delta_T * vel_next
                    if i % sample_freq == 0:
                        loc[counter, :, :], vel[counter, :, :] = loc_next, vel_next
                        counter += 1
                    vel_next += self._delta_T * self._forces(loc_next, edges)
        loc += rs.randn(T_save, self.dim, self.n_balls) * 0.0
        vel += rs.randn(T_save, self.dim, self.n_balls) * 0.0
        return loc, vel, edges, charges


def reference_trajectories(indices, seed=43):
    """{stream index: (loc [49,5,3], vel [49,5,3], charges [5,1])}; others only drawn."""
    sim, rs, out = ReferenceChargedSim(), np.random.RandomState(seed), {}
    for index in range(max(indices) + 1):
        loc, vel, _, charges = sim.sample_trajectory(rs, integrate=index in indices)
        if index in indices:
            out[index] = (loc.transpose(0, 2, 1), vel.transpose(0, 2, 1), charges)
    return out


@pytest.fixture(scope="module")
def train_reference():
    return reference_trajectories([0, 1, 2, 7, 8])


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("nbody_cache")


# --------------------------------------------------------------------------- #
# Simulator
# --------------------------------------------------------------------------- #
def test_simulate_matches_reference(train_reference):
    out = nbody.simulate_charged(3, seed=43)
    assert out["loc"].shape == out["vel"].shape == (3, 49, 5, 3)
    assert out["charges"].shape == (3, 5, 1)
    assert out["loc"].dtype == out["vel"].dtype == out["charges"].dtype == np.float64
    for i in range(3):
        ref_loc, ref_vel, ref_charges = train_reference[i]
        np.testing.assert_array_equal(out["charges"][i], ref_charges)
        np.testing.assert_allclose(out["loc"][i], ref_loc, rtol=0, atol=1e-10)
        np.testing.assert_allclose(out["vel"][i], ref_vel, rtol=0, atol=1e-10)
    # The particles actually move and the trajectories differ.
    assert np.abs(out["loc"][:, -1] - out["loc"][:, 0]).max() > 0.1
    assert np.abs(out["loc"][0] - out["loc"][1]).max() > 0.1


def test_simulate_start_offset_and_frames(train_reference):
    """Trajectories 7, 8 of the stream (draws of 0..6 consumed), frames 30 and 40 only."""
    out = nbody.simulate_charged(2, seed=43, start=7, frames=[30, 40])
    assert out["loc"].shape == (2, 2, 5, 3)
    for k, index in enumerate([7, 8]):
        ref_loc, ref_vel, ref_charges = train_reference[index]
        np.testing.assert_array_equal(out["charges"][k], ref_charges)
        np.testing.assert_allclose(out["loc"][k], ref_loc[[30, 40]], rtol=0, atol=1e-10)
        np.testing.assert_allclose(out["vel"][k], ref_vel[[30, 40]], rtol=0, atol=1e-10)


def test_integrate_given_initial_conditions():
    init = nbody.initial_conditions(3, seed=43, start=1)
    out = nbody.integrate_charged(init["loc"], init["vel"], init["charges"], frames=[0, 9], chunk_size=2)
    sim = nbody.simulate_charged(3, seed=43, start=1, frames=[0, 9])
    np.testing.assert_array_equal(out["loc"], sim["loc"])
    np.testing.assert_array_equal(out["vel"], sim["vel"])
    with pytest.raises(ValueError, match=r"Expected loc and vel of shape \[n, particles, 3\]"):
        nbody.integrate_charged(init["loc"][0], init["vel"][0], init["charges"][0])


def test_valid_and_test_splits_follow_training_stream(tmp_path):
    """valid[0] is trajectory 10,000 and test[0] trajectory 12,000 of the stream."""
    ref = reference_trajectories([10_000, 12_000])
    splits = nbody.generate_splits({"test": 1, "valid": 1}, frames=[30, 40], progress=False)
    assert list(splits) == ["valid", "test"]
    for split, index in [("valid", 10_000), ("test", 12_000)]:
        ref_loc, ref_vel, ref_charges = ref[index]
        np.testing.assert_array_equal(splits[split]["charges"][0], ref_charges)
        np.testing.assert_allclose(splits[split]["loc"][0], ref_loc[[30, 40]], rtol=0, atol=1e-10)
        np.testing.assert_allclose(splits[split]["vel"][0], ref_vel[[30, 40]], rtol=0, atol=1e-10)
    assert not np.allclose(splits["valid"]["loc"], splits["test"]["loc"])

    valid = nbody.load_nbody("valid", num_samples=1, cache_dir=tmp_path)
    np.testing.assert_allclose(valid["loc"][0], ref[10_000][0][30], rtol=0, atol=1e-10)
    np.testing.assert_allclose(valid["vel"][0], ref[10_000][1][30], rtol=0, atol=1e-10)
    np.testing.assert_allclose(valid["target"][0], ref[10_000][0][40], rtol=0, atol=1e-10)
    np.testing.assert_array_equal(valid["charges"][0], ref[10_000][2])


def test_initial_conditions():
    init = nbody.initial_conditions(50, seed=43, start=3)
    again = nbody.initial_conditions(47, seed=43, start=6)
    for key in ("loc", "vel", "charges"):
        np.testing.assert_array_equal(init[key][3:], again[key])
    np.testing.assert_allclose(np.linalg.norm(init["vel"], axis=-1), 0.5, rtol=1e-12)
    assert set(np.unique(init["charges"])) == {-1.0, 1.0}
    assert np.all(np.abs(init["loc"]) <= 5.0)
    other_seed = nbody.initial_conditions(50, seed=44, start=3)
    assert not np.allclose(init["loc"], other_seed["loc"])


def test_global_numpy_random_state_untouched():
    np.random.seed(123)
    before = np.random.get_state()
    nbody.simulate_charged(1, frames=[0])
    after = np.random.get_state()
    assert before[0] == after[0] and before[2:] == after[2:]
    np.testing.assert_array_equal(before[1], after[1])


def test_box_reflection_matches_reference():
    loc = np.array([[6.0, -7.0, 1.0, 5.0, -5.5], [0.0, 12.0, -2.0, -14.0, 3.0], [4.9, -4.9, 5.1, 0.0, 0.0]])
    vel = np.random.RandomState(0).randn(3, 5)
    # _prepare also rescales velocities to norm 0.5: start from such velocities.
    vel_half = vel * 0.5 / np.linalg.norm(vel, axis=0, keepdims=True)
    ref_loc, ref_vel = ReferenceChargedSim()._clamp(loc.copy(), vel_half.copy())
    got_loc, got_vel = nbody._prepare(loc[None], vel_half[None])
    np.testing.assert_allclose(got_loc[0], ref_loc, atol=1e-14)
    np.testing.assert_allclose(got_vel[0], ref_vel, atol=1e-14)
    assert got_loc[0, 0, 0] == 4.0 and got_loc[0, 0, 1] == -3.0 and got_vel[0, 0, 0] < 0 < got_vel[0, 0, 1]


@pytest.mark.parametrize("sign, grows", [(1.0, True), (-1.0, False)])
def test_like_charges_repel(sign, grows):
    loc = np.array([[[-0.5, 0.0, 0.0], [0.5, 0.0, 0.0]]])
    out = nbody.integrate_charged(loc, np.zeros_like(loc), np.array([[[1.0], [sign]]]), frames=[0])
    distance = np.linalg.norm(out["loc"][0, 0, 0] - out["loc"][0, 0, 1])
    assert (distance > 1.0) == grows
    assert abs(distance - 1.0) > 1e-3
    # Equal and opposite forces (no clipping at this distance): momentum stays zero.
    np.testing.assert_allclose(out["vel"][0, 0].sum(axis=0), 0.0, atol=1e-12)


# --------------------------------------------------------------------------- #
# Errors
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_num_trajectories(bad):
    with pytest.raises(ValueError, match="num_trajectories must be a positive integer"):
        nbody.simulate_charged(bad)


def test_bad_split_and_sizes(tmp_path):
    with pytest.raises(ValueError, match="Unknown split 'training'.*'train', 'valid' or 'test'"):
        nbody.load_nbody("training", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="Unknown split 'validation'"):
        nbody.generate_splits({"validation": 1})
    with pytest.raises(ValueError, match=r"num_samples=2001 exceeds the 2000 .*'valid'.*num_samples <= 2000"):
        nbody.load_nbody("valid", num_samples=2001, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="num_samples=10001 exceeds the 10000"):
        nbody.nbody_dataset("train", num_samples=10_001, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        nbody.nbody_dataset("test", batch_size=0, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="frames must lie in 0..48"):
        nbody.simulate_charged(1, frames=[49])
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- #
# Cache
# --------------------------------------------------------------------------- #
def test_load_nbody_caches_frames(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_RELAXEQ_CACHE", str(tmp_path))
    data = nbody.load_nbody("train", num_samples=4)
    assert set(data) == {"loc", "vel", "charges", "target"}
    assert data["loc"].shape == data["vel"].shape == data["target"].shape == (4, 5, 3)
    assert data["charges"].shape == (4, 5, 1)
    sim = nbody.simulate_charged(4, frames=[30, 40])
    np.testing.assert_array_equal(data["loc"], sim["loc"][:, 0])
    np.testing.assert_array_equal(data["vel"], sim["vel"][:, 0])
    np.testing.assert_array_equal(data["target"], sim["loc"][:, 1])
    np.testing.assert_array_equal(data["charges"], sim["charges"])

    files = sorted((tmp_path / "nbody").iterdir())
    assert [f.name for f in files] == ["charged5_seed43_splits10000-2000-2000_f30-40_v1_train_n4.npz"]

    def fail(*args, **kwargs):
        raise AssertionError("generated instead of reading the cache")

    monkeypatch.setattr(nbody, "generate_splits", fail)
    cached = nbody.load_nbody("train", num_samples=4)
    smaller = nbody.load_nbody("train", num_samples=2)  # prefix of the cached file
    for key in data:
        np.testing.assert_array_equal(cached[key], data[key])
        np.testing.assert_array_equal(smaller[key], data[key][:2])
    with pytest.raises(AssertionError, match="generated"):
        nbody.load_nbody("train", num_samples=5)
    with pytest.raises(AssertionError, match="generated"):
        nbody.load_nbody("train", num_samples=2, seed=44)
    with pytest.raises(AssertionError, match="generated"):
        nbody.load_nbody("test", num_samples=2)

    # A damaged file is regenerated (atomically: no temporary files remain).
    files[0].write_bytes(b"not an npz file")
    monkeypatch.undo()
    regenerated = nbody.load_nbody("train", num_samples=4, cache_dir=tmp_path / "nbody")
    for key in data:
        np.testing.assert_array_equal(regenerated[key], data[key])
    assert sorted(f.name for f in (tmp_path / "nbody").iterdir()) == [files[0].name]


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_RELAXEQ_CACHE", str(tmp_path / "root"))
    assert nbody.default_cache_dir() == tmp_path / "root" / "nbody"
    monkeypatch.delenv("KERAS_RELAXEQ_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert nbody.default_cache_dir() == tmp_path / ".keras" / "keras_relaxeq" / "nbody"


# --------------------------------------------------------------------------- #
# tf.data pipeline
# --------------------------------------------------------------------------- #
def _batches(ds):
    return [({k: v.numpy() for k, v in features.items()}, target.numpy()) for features, target in ds]


def test_dataset_structure_without_augmentation(cache_dir):
    data = nbody.load_nbody("train", num_samples=7, cache_dir=cache_dir)
    ds = nbody.nbody_dataset("train", batch_size=3, num_samples=7, shuffle=False, rotate=False, cache_dir=cache_dir)
    features_spec, target_spec = ds.element_spec
    assert set(features_spec) == {"loc", "vel", "charges"}
    assert features_spec["loc"].shape.as_list() == [None, 5, 3]
    assert features_spec["charges"].shape.as_list() == [None, 5, 1]
    assert target_spec.shape.as_list() == [None, 5, 3] and target_spec.dtype == tf.float32
    batches = _batches(ds)
    assert [len(t) for _, t in batches] == [3, 3, 1]
    for key in ("loc", "vel", "charges"):
        np.testing.assert_array_equal(np.concatenate([f[key] for f, _ in batches]), data[key].astype(np.float32))
    np.testing.assert_array_equal(np.concatenate([t for _, t in batches]), data["target"].astype(np.float32))


def _fit_rotation(x, y):
    """R with y = x @ R^T (least squares), and the residual."""
    rt, *_ = np.linalg.lstsq(x.reshape(-1, 3), y.reshape(-1, 3), rcond=None)
    return rt.T, np.abs(x.reshape(-1, 3) @ rt - y.reshape(-1, 3)).max()


def test_dataset_one_rotation_per_batch(cache_dir):
    kwargs = dict(split="train", batch_size=3, num_samples=7, shuffle=False, cache_dir=cache_dir)
    plain = _batches(nbody.nbody_dataset(rotate=False, **kwargs))
    rotated = _batches(nbody.nbody_dataset(rotate=True, seed=3, **kwargs))
    rotations = []
    for (f0, t0), (f1, t1) in zip(plain, rotated):
        np.testing.assert_array_equal(f1["charges"], f0["charges"])
        # One rotation fits loc, vel and target of every sample of the batch.
        x = np.concatenate([f0["loc"], f0["vel"], t0])
        y = np.concatenate([f1["loc"], f1["vel"], t1])
        rotation, residual = _fit_rotation(x, y)
        assert residual < 1e-5
        np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-5)
        assert np.linalg.det(rotation) == pytest.approx(1.0, abs=1e-5)
        assert np.abs(rotation - np.eye(3)).max() > 1e-2
        rotations.append(rotation)
    assert np.abs(rotations[0] - rotations[1]).max() > 1e-2


def test_dataset_deterministic_under_seed(cache_dir):
    def epochs(seed, shuffle=True):
        ds = nbody.nbody_dataset("train", batch_size=3, num_samples=7, shuffle=shuffle, seed=seed, cache_dir=cache_dir)
        return [_batches(ds) for _ in range(2)]

    def same(a, b):
        return all(
            np.array_equal(ta, tb) and all(np.array_equal(fa[k], fb[k]) for k in fa) for (fa, ta), (fb, tb) in zip(a, b)
        )

    first, second = epochs(5), epochs(5)
    assert same(first[0], second[0]) and same(first[1], second[1])
    assert not same(first[0], first[1])  # a new shuffle and new rotations each epoch
    assert not same(first[0], epochs(6)[0])

    # Shuffling permutes samples (compare rotation-invariant charges and norms).
    data = nbody.load_nbody("train", num_samples=7, cache_dir=cache_dir)

    def invariants(charges, loc):
        rows = np.concatenate([charges[..., 0], np.linalg.norm(loc, axis=-1)], axis=-1)
        return rows[np.argsort(rows[:, 5:].sum(axis=1))]

    got = invariants(
        np.concatenate([f["charges"] for f, _ in first[0]]), np.concatenate([f["loc"] for f, _ in first[0]])
    )
    np.testing.assert_allclose(got, invariants(data["charges"], data["loc"]), atol=1e-4)


def test_recipe_dataset_rotate_flag(cache_dir):
    """A run's ``config["rotate"]`` (``--no-rotate``) switches the per-batch rotations off in every
    split; runs recorded before the flag existed (no key) are rotated."""
    config = {"batch": 3, "train_samples": 7, "val_samples": 7, "test_samples": 7, "seed": 0}
    data = nbody.load_nbody("valid", num_samples=7, cache_dir=cache_dir)
    plain = _batches(nbody.recipe_dataset(dict(config, rotate=False), "valid", cache_dir=cache_dir))
    np.testing.assert_array_equal(np.concatenate([f["loc"] for f, _ in plain]), data["loc"].astype(np.float32))
    np.testing.assert_array_equal(np.concatenate([t for _, t in plain]), data["target"].astype(np.float32))
    rotated = _batches(nbody.recipe_dataset(config, "valid", cache_dir=cache_dir))
    _, residual = _fit_rotation(plain[0][0]["loc"], rotated[0][0]["loc"])
    assert residual < 1e-5 and np.abs(plain[0][0]["loc"] - rotated[0][0]["loc"]).max() > 1e-2
    # training: the same shuffled samples with or without rotations
    train_plain = _batches(nbody.recipe_dataset(dict(config, rotate=False), "train", cache_dir=cache_dir))
    train_rot = _batches(nbody.recipe_dataset(dict(config, rotate=True), "train", cache_dir=cache_dir))
    assert len(train_plain) == len(train_rot) == 2  # full batches only
    for (f0, _), (f1, _) in zip(train_plain, train_rot):
        np.testing.assert_array_equal(f0["charges"], f1["charges"])
        np.testing.assert_allclose(np.linalg.norm(f0["vel"], axis=-1), np.linalg.norm(f1["vel"], axis=-1), rtol=1e-5)
