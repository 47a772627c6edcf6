"""Smoke plume data: configurations, windows and splits, the cache, and the C4 symmetry of simulations.

The PhiFlow tests simulate a tiny set (16x16 grid, a few steps) in a temporary folder; the full
64x64 sets are never generated here.
"""

import importlib.util
import json

import numpy as np
import pytest

from keras_relaxeq.datasets import smoke_plume as sp
from keras_relaxeq.groups.cyclic import FieldType

HAS_PHIFLOW = importlib.util.find_spec("phi") is not None
needs_phiflow = pytest.mark.skipif(not HAS_PHIFLOW, reason="PhiFlow is not installed: pip install -e .[smoke]")

VECTOR = FieldType(4, ["vector"])


def _rotate_frames(data, k=1):
    """C4 action on stored frames ``[T, 2, H, W]`` (component first): via the channels-last field type."""
    x = np.moveaxis(data.astype(np.float64), 1, -1)
    for _ in range(k):
        x = VECTOR.act(1, x)
    return np.moveaxis(x, -1, 1)


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# --------------------------------------------------------------------------- configurations


def test_rotation_config_matches_the_reference_settings():
    config = sp.smoke_plume_config("rotation")
    assert len(config.simulations) == 36 and config.num_frames == 309
    assert len(config.train) == 25 and len(config.test_domain) == 10
    assert not set(config.train) & set(config.test_domain)
    assert set(s.name for s in config.simulations) - set(config.train) - set(config.test_domain) == {"32"}
    sim = config.simulation("6")  # k = 6 = 4 * 1 + 1 + 1: side 1, inflow on the right, buoyancy along -x
    assert sim.side == 1 and sim.inflow_center == (59.0, 32.0)
    np.testing.assert_allclose(sim.buoyancy, (-0.06, 0.0))
    np.testing.assert_allclose(config.simulation("3").buoyancy, (0.0, -0.033))  # side 2: 0.011 k
    # side s + 1 is side s turned a quarter counter-clockwise about the centre (32, 32)
    q = np.array([[0.0, -1.0], [1.0, 0.0]])
    for k in range(1, 36):
        a, b = config.simulation(str(k)), config.simulation(str(k + 1))
        if b.side == 0:
            continue
        np.testing.assert_allclose(q @ (np.array(a.inflow_center) - 32.0) + 32.0, b.inflow_center)
        direction = np.array(a.buoyancy) / np.linalg.norm(a.buoyancy)
        np.testing.assert_allclose(q @ direction, np.array(b.buoyancy) / np.linalg.norm(b.buoyancy), atol=1e-15)


def test_scale_config():
    config = sp.smoke_plume_config("scale")
    assert len(config.simulations) == 38 and len(config.train) == 28 and len(config.test_domain) == 10
    last = config.simulation("37")
    np.testing.assert_allclose(last.downsample, np.linspace(1, 5, 41)[37])
    assert last.resolution == int(64 * last.downsample) and last.velocity_dt == 0.5


def test_split_times_are_the_reference_ranges():
    assert list(sp.split_times("train")) == list(range(160))
    assert list(sp.split_times("val")) == list(range(160, 200))
    assert list(sp.split_times("test_future")) == list(range(200, 250))
    assert list(sp.split_times("test_domain")) == list(range(100))
    # the last target frame of every window exists in 309 frames
    assert 249 + 2 + 10 + 20 - 1 < 309
    with pytest.raises(ValueError, match="No window"):
        sp.split_times("train", num_frames=12)
    with pytest.raises(ValueError, match="Unknown split"):
        sp.split_times("test")


def test_default_data_dir_follows_the_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_RELAXEQ_CACHE", str(tmp_path))
    assert sp.default_data_dir("rotation") == tmp_path / "smoke_plume_rotation"
    assert sp.default_data_dir(sp.smoke_plume_config("rotation", sampling="centered")) == (
        tmp_path / "smoke_plume_rotation_centered"
    )


# --------------------------------------------------------------------------- windows on stand-in files


def _fake_config(resolution=8, num_steps=310):
    specs = tuple(
        sp.SimulationSpec(
            name=str(i),
            inflow_center=(4.0, 1.0),
            inflow_radius=1.0,
            buoyancy=(0.0, 0.01 * i),
            resolution=resolution,
            side=i % 4,
        )
        for i in range(1, 7)
    )
    return sp.SmokePlumeConfig(
        "fake",
        specs,
        train=("1", "2", "4", "5"),
        test_domain=("3", "6"),
        num_steps=num_steps,
        output_resolution=resolution,
    )


def _write_fake(config, folder):
    """Stand-in simulation files (no PhiFlow): frame t of simulation i holds 1000 i + t plus a pattern."""
    rng = np.random.default_rng(0)
    arrays = {}
    for spec in config.simulations:
        shape = (config.num_frames, 2, config.output_resolution, config.output_resolution)
        array = rng.normal(size=shape) + 1000 * int(spec.name) + np.arange(shape[0])[:, None, None, None]
        arrays[spec.name] = array.astype(np.float32)
        np.save(folder / f"sim_{spec.name}.npy", arrays[spec.name])
    return arrays


def test_windows_and_splits(tmp_path):
    config = _fake_config()
    arrays = _write_fake(config, tmp_path)
    expected_times = {
        "train": range(160),
        "val": range(160, 200),
        "test_future": range(200, 250),
        "test_domain": range(100),
    }
    for split, times in expected_times.items():
        ds = sp.smoke_plume_dataset(
            split, batch_size=256, config=config, data_dir=tmp_path, generate=False, with_params=True, shuffle=False
        )
        k = 6 if split in ("train", "val") else 20
        batches = list(ds)
        frames = np.concatenate([inputs["frames"].numpy() for inputs, _ in batches])
        target = np.concatenate([y.numpy() for _, y in batches])
        names = np.concatenate([inputs["simulation"].numpy() for inputs, _ in batches]).astype(str)
        start = np.concatenate([inputs["time"].numpy() for inputs, _ in batches])
        buoyancy = np.concatenate([inputs["buoyancy"].numpy() for inputs, _ in batches])
        side = np.concatenate([inputs["side"].numpy() for inputs, _ in batches])
        assert frames.shape[1:] == (10, 8, 8, 2) and target.shape[1:] == (k, 8, 8, 2)
        tasks = config.test_domain if split == "test_domain" else config.train
        assert sorted(zip(names, start)) == sorted((n, t) for n in tasks for t in times)
        for name in tasks:
            mask = names == name
            x, y = sp.smoke_plume_windows(arrays[name], start[mask], 10, k)
            np.testing.assert_array_equal(frames[mask], x)
            np.testing.assert_array_equal(target[mask], y)
            # inputs are frames t + 2 .. t + 11, targets t + 12 .. t + 11 + k, channels last
            t = start[mask]
            np.testing.assert_array_equal(frames[mask][:, 0, ..., 1], arrays[name][t + 2, 1])
            np.testing.assert_array_equal(frames[mask][:, -1, ..., 0], arrays[name][t + 11, 0])
            np.testing.assert_array_equal(target[mask][:, 0, ..., 0], arrays[name][t + 12, 0])
            np.testing.assert_array_equal(target[mask][:, -1, ..., 1], arrays[name][t + 11 + k, 1])
            spec = config.simulation(name)
            np.testing.assert_allclose(buoyancy[mask], np.broadcast_to(spec.buoyancy, (mask.sum(), 2)), rtol=1e-6)
            assert (side[mask] == spec.side).all()


def test_shuffle_is_seeded_and_plain_elements(tmp_path):
    config = _fake_config()
    _write_fake(config, tmp_path)

    def firsts(seed):
        ds = sp.smoke_plume_dataset(
            "train", batch_size=8, config=config, data_dir=tmp_path, generate=False, seed=seed, output_length=3
        )
        x, y = next(iter(ds))
        assert x.shape == (8, 10, 8, 8, 2) and y.shape == (8, 3, 8, 8, 2)
        return x.numpy()

    np.testing.assert_array_equal(firsts(1), firsts(1))
    assert not np.array_equal(firsts(1), firsts(2))


def test_missing_files_say_how_to_generate(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m keras_relaxeq.datasets.smoke_plume"):
        sp.smoke_plume_dataset("train", config=_fake_config(), data_dir=tmp_path, generate=False)


# --------------------------------------------------------------------------- PhiFlow

RES, STEPS = 16, 8


def _tiny_config(sampling):
    """The four inflow sides of the rotation set on a 16 grid, all with the same buoyancy magnitude."""
    specs = []
    base = sp.smoke_plume_config("rotation", resolution=RES)
    for side in range(4):
        ref = base.simulations[side]
        direction = np.array(ref.buoyancy) / np.linalg.norm(ref.buoyancy)
        specs.append(
            sp.SimulationSpec(
                name=f"s{side}",
                inflow_center=ref.inflow_center,
                inflow_radius=ref.inflow_radius,
                buoyancy=tuple(0.2 * direction),
                resolution=RES,
                side=side,
            )
        )
    return sp.SmokePlumeConfig(
        f"tiny_{sampling}",
        tuple(specs),
        train=("s0", "s1", "s2"),
        test_domain=("s3",),
        num_steps=STEPS,
        output_resolution=RES,
        sampling=sampling,
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    if not HAS_PHIFLOW:
        pytest.skip("PhiFlow is not installed: pip install -e .[smoke]")
    folder = tmp_path_factory.mktemp("smoke")
    config = _tiny_config("staggered")
    sp.generate_smoke_plume(config, folder, chunk_size=4, progress=False)
    return config, folder


@needs_phiflow
def test_generate_writes_files_and_manifest(tiny):
    config, folder = tiny
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["present"] == ["s0", "s1", "s2", "s3"] and manifest["config"]["num_steps"] == STEPS
    data = sp.load_smoke_plume(config, data_dir=folder, generate=False)
    for array in data.values():
        assert array.shape == (STEPS - 1, 2, RES, RES) and array.dtype == np.float32
        assert np.isfinite(array).all() and np.abs(array).max() > 1e-3  # the plume moves
    assert not list(folder.glob("*.tmp"))


@needs_phiflow
def test_resume_simulates_only_what_is_missing_or_broken(tiny, monkeypatch):
    config, folder = tiny
    calls = []

    def fake_simulate(specs, num_steps, **kwargs):
        calls.append([s.name for s in specs])
        return np.zeros((len(specs), num_steps - 1, 2, RES, RES), np.float32)

    monkeypatch.setattr(sp, "simulate_smoke_plume", fake_simulate)
    sp.generate_smoke_plume(config, folder, progress=False)
    assert calls == []  # everything is cached
    # a truncated file (as a killed writer without the atomic rename would leave) is not trusted
    broken = folder / "sim_s2.npy"
    saved = broken.read_bytes()
    try:
        broken.write_bytes(saved[: len(saved) // 2])
        sp.generate_smoke_plume(config, folder, progress=False)
        assert calls == [["s2"]]
        assert np.load(broken).shape == (STEPS - 1, 2, RES, RES)
    finally:
        broken.write_bytes(saved)


@needs_phiflow
def test_inflow_sides_are_quarter_turns_of_each_other(tiny):
    """Same buoyancy magnitude on each side: centred velocities are exact C4 images of each other; the
    staggered arrays (the reference's storage) are so only after a one-cell shift of the turned v_x."""
    config, folder = tiny
    stag = sp.load_smoke_plume(config, data_dir=folder, generate=False)
    centred = sp.simulate_smoke_plume(
        _tiny_config("centered").simulations[:2], STEPS, sampling="centered", progress=False
    )
    # float64 simulation stored in float32: relative differences of float32 rounding only
    assert _rel(_rotate_frames(centred[0]), centred[1]) < 1e-6
    for s in range(4):
        turned = _rotate_frames(stag[f"s{s}"])
        target = stag[f"s{(s + 1) % 4}"]
        raw = _rel(turned, target)
        assert raw > 0.05  # the staggered layout is not invariant under rot90 ...
        shifted = turned.copy()
        shifted[:, 0] = np.roll(turned[:, 0], 1, axis=-1)  # ... v_x faces move one cell after the turn
        assert _rel(shifted, target) < 1e-6


def test_tfds_builder_round_trip(tmp_path):
    import dataclasses

    import tensorflow_datasets as tfds

    from keras_relaxeq.datasets.smoke_plume_tfds import SmokePlume

    config = dataclasses.replace(_fake_config(num_steps=20), name="rotation")
    folder = tmp_path / "generated"
    folder.mkdir()
    arrays = _write_fake(config, folder)
    sp._write_manifest(folder, config, set(arrays))
    builder = SmokePlume(config="rotation", data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=str(folder), compute_stats=tfds.download.ComputeStatsMode.SKIP
        )
    )
    for split, names in (("train", config.train), ("test_domain", config.test_domain)):
        examples = list(tfds.as_numpy(builder.as_dataset(split=split)))
        assert sorted(ex["simulation"].decode() for ex in examples) == sorted(names)
        for ex in examples:
            name = ex["simulation"].decode()
            np.testing.assert_array_equal(ex["velocity"], np.moveaxis(arrays[name], 1, -1))
            np.testing.assert_allclose(ex["buoyancy"], config.simulation(name).buoyancy, rtol=1e-6)
            assert ex["side"] == config.simulation(name).side
    x, _ = sp.smoke_plume_windows(arrays["3"], [0], 10, 2)
    assert x.shape == (1, 10, 8, 8, 2)


def test_scale_downsampling_is_bilinear_with_aligned_corners():
    # F.interpolate(align_corners=True): output cell p samples the input at p (n_in - 1) / (n_out - 1); a linear
    # ramp is reproduced exactly, then divided by the factor (velocities in cells of the coarse grid)
    factor = 1.3
    rows, cols = np.meshgrid(np.arange(84.0), np.arange(84.0), indexing="ij")
    ramp = (0.5 * rows - 2.0 * cols + 1.0)[None, None]
    out = sp._downsample(ramp, factor)
    assert out.shape == (1, 1, 64, 64)
    pos = np.arange(64) * 83 / 63
    pr, pc = np.meshgrid(pos, pos, indexing="ij")
    np.testing.assert_allclose(out[0, 0], (0.5 * pr - 2.0 * pc + 1.0) / factor, atol=1e-10)


def test_missing_phiflow_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "phi", None)  # as if PhiFlow were not installed
    with pytest.raises(ImportError, match=r"pip install 'keras_relaxeq\[smoke\]'"):
        sp.simulate_smoke_plume(_fake_config().simulations[0], 4)


@needs_phiflow
def test_sparse_pressure_matrices_of_large_grids_keep_their_indices():
    """The scale set's grids above 215x215 cells have pressure matrices with more than 2^31 entries: phiml's NumPy
    backend cast their flat indices back to int32 (overflow, then 'index -2147483310 is out of bounds'); after the
    PhiFlow import of the generator they stay exact, and small matrices keep their index dtype."""
    from phiml.backend._numpy_backend import NumPyBackend

    from keras_relaxeq.datasets.smoke_plume_simulation import _import_phiflow

    _import_phiflow()
    backend = NumPyBackend()
    big = backend.ravel_multi_index(np.array([[46000, 89999]], np.int32), (90000, 90000))
    assert int(big[0]) == 46000 * 90000 + 89999 > np.iinfo(np.int32).max
    small = backend.ravel_multi_index(np.array([[3, 4]], np.int32), (64, 64))
    assert small.dtype == np.int32 and int(small[0]) == 3 * 64 + 4
