"""The scale smoke plume set: configuration at any base resolution, and a tiny PhiFlow generation (2 simulations,
a 16 grid, a few steps; the full set is never generated here)."""

import importlib.util
import json

import numpy as np
import pytest

from keras_relaxeq.datasets import smoke_plume as sp
from keras_relaxeq.datasets import smoke_plume_simulation as sim

HAS_PHIFLOW = importlib.util.find_spec("phi") is not None
needs_phiflow = pytest.mark.skipif(not HAS_PHIFLOW, reason="PhiFlow is not installed: pip install -e .[smoke]")

RES, STEPS = 16, 5


def test_scale_config_at_a_small_base_resolution_scales_every_length():
    full, small = sp.smoke_plume_config("scale"), sp.smoke_plume_config("scale", resolution=RES, num_steps=STEPS)
    assert small.name == "scale16" and small.output_resolution == RES and small.num_frames == STEPS - 1
    assert (small.train, small.test_domain) == (full.train, full.test_domain)
    assert len(small.train) == 28 and len(small.test_domain) == 10 and not set(small.train) & set(small.test_domain)
    factors = np.linspace(1, 5, 41)[:38]
    for spec, big, f in zip(small.simulations, full.simulations, factors):
        assert spec.downsample == big.downsample == pytest.approx(f)
        assert spec.resolution == int(RES * f) and big.resolution == int(64 * f)
        np.testing.assert_allclose(np.array(spec.inflow_center) * 64 / RES, big.inflow_center)
        np.testing.assert_allclose(spec.inflow_radius * 64 / RES, big.inflow_radius)
        assert spec.buoyancy == big.buoyancy and spec.velocity_dt == 0.5
    # the reference's full-size set is unchanged
    assert full.simulation("0").inflow_center == (32.0, 5.0) and full.output_resolution == 64
    with pytest.raises(ValueError, match="even integer"):
        sp.smoke_plume_config("scale", resolution=15)


def test_the_downsampled_grid_is_never_smaller_than_the_stored_one():
    """Cell-centred grids of int(64 f) cells give floor(int(64 f) / f) = 63 rows for most f; the stored grid is 64."""
    for f in np.linspace(1, 5, 41)[:38]:
        for h in (int(64 * f), int(64 * f) + 1):  # centred, staggered
            out = sim._downsample(np.zeros((1, h, h)), f, 64)
            assert out.shape[-1] >= 64
    # staggered sizes keep the reference's floor(H / f) exactly
    assert sim._downsample(np.zeros((1, 71, 71)), 1.1, 64).shape == (1, 64, 64)


@pytest.fixture(scope="module")
def tiny_scale(tmp_path_factory):
    if not HAS_PHIFLOW:
        pytest.skip("PhiFlow is not installed: pip install -e .[smoke]")
    folder = tmp_path_factory.mktemp("smoke_scale")
    config = sp.smoke_plume_config("scale", resolution=RES, num_steps=STEPS)
    sp.generate_smoke_plume(config, folder, names=["0", "10"], progress=False)  # f = 1 and f = 2
    return config, folder


@needs_phiflow
def test_generate_two_scale_simulations(tiny_scale):
    config, folder = tiny_scale
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["present"] == ["0", "10"] and manifest["config"]["name"] == "scale16"
    data = sp.load_smoke_plume(config, names=["0", "10"], data_dir=folder, generate=False)
    for array in data.values():
        assert array.shape == (STEPS - 1, 2, RES, RES) and array.dtype == np.float32
        assert np.isfinite(array).all() and np.abs(array).max() > 1e-4  # the plume moves
    # the same plume on a grid twice as fine, brought back to the base grid: similar, not identical
    a, b = data["0"][-1], data["10"][-1]
    assert 0.0 < np.linalg.norm(a - b) / np.linalg.norm(a) < 1.0
    with pytest.raises(FileNotFoundError, match="generate them with"):
        sp.load_smoke_plume(config, names=["1"], data_dir=folder, generate=False)


@needs_phiflow
def test_scale_generation_resumes(tiny_scale, monkeypatch):
    config, folder = tiny_scale
    calls = []

    def fake_simulate(specs, num_steps, **kwargs):
        calls.append([s.name for s in specs])
        return np.zeros((len(specs), num_steps - 1, 2, RES, RES), np.float32)

    monkeypatch.setattr(sp, "simulate_smoke_plume", fake_simulate)
    sp.generate_smoke_plume(config, folder, names=["0", "10", "1"], progress=False)
    assert calls == [["1"]]  # the two present files are kept; different grids are never batched together
    sp.generate_smoke_plume(config, folder, names=["0", "10", "1"], progress=False)
    assert calls == [["1"]]


@needs_phiflow
def test_command_line_generates_a_subset(tmp_path, capsys):
    assert (
        sp.main(
            ["--config", "scale", "--resolution", "8", "--num-steps", "3", "--names", "0", "--data-dir", str(tmp_path)]
        )
        == 0
    )
    assert (tmp_path / "sim_0.npy").exists() and np.load(tmp_path / "sim_0.npy").shape == (2, 2, 8, 8)
    assert "scale8" in capsys.readouterr().out


@needs_phiflow
def test_factorised_pressure_solve_gives_the_per_step_spsolve_frames(monkeypatch):
    """The generator factorises the constant pressure matrix once per simulation instead of letting spsolve
    factorise it every step: the frames are the same numbers (the same SuperLU, the same column ordering), and
    the factorisation happens once."""
    import contextlib

    import scipy.sparse.linalg

    config = sp.smoke_plume_config("scale", resolution=RES, num_steps=STEPS)
    spec = config.simulation("10")  # f = 2: a 32 grid
    factorisations = []
    splu = scipy.sparse.linalg.splu

    def counting_splu(matrix, *args, **kwargs):
        factorisations.append(matrix.shape)
        return splu(matrix, *args, **kwargs)

    monkeypatch.setattr(scipy.sparse.linalg, "splu", counting_splu)
    fast = sim.simulate_smoke_plume([spec], 8, progress=False, output_resolution=RES)
    # one factorisation for the 32x32 grid (PhiFlow adds a row and a column that fix the pressure's free constant)
    assert factorisations == [(32 * 32 + 1, 32 * 32 + 1)]
    monkeypatch.setattr(sim, "_factorized_pressure_solve", contextlib.nullcontext)
    slow = sim.simulate_smoke_plume([spec], 8, progress=False, output_resolution=RES)
    assert len(factorisations) == 1  # the per-step path never factorises through splu
    assert np.abs(slow).max() > 0.05  # a plume is moving
    np.testing.assert_array_equal(fast, slow)


@needs_phiflow
def test_factorised_pressure_solve_falls_back_and_restores_spsolve():
    """Inside the context only single right-hand sides of a known matrix are substituted; an exactly singular
    matrix, a batch of right-hand sides and solver options go to spsolve as before, and spsolve is put back."""
    import scipy.sparse as sparse
    from phiml.backend import _linalg

    original = _linalg.spsolve
    matrix = sparse.csr_matrix(np.array([[4.0, 1.0], [1.0, 3.0]]))
    singular = sparse.csr_matrix(np.array([[1.0, 1.0], [1.0, 1.0]]))
    rhs = np.array([1.0, 2.0])
    with sim._factorized_pressure_solve() as cache:
        assert _linalg.spsolve is not original
        np.testing.assert_allclose(_linalg.spsolve(matrix, rhs), np.linalg.solve(matrix.toarray(), rhs))
        np.testing.assert_allclose(_linalg.spsolve(matrix * 2.0, rhs), np.linalg.solve(2 * matrix.toarray(), rhs))
        assert len(cache) == 1  # one factorisation kept: the latest matrix
        with pytest.warns(sparse.linalg.MatrixRankWarning):
            assert np.isnan(_linalg.spsolve(singular, rhs)).all()  # spsolve's own answer
        both = np.stack([rhs, 2 * rhs], axis=1)
        np.testing.assert_allclose(_linalg.spsolve(matrix, both), np.linalg.solve(matrix.toarray(), both))
    assert _linalg.spsolve is original
