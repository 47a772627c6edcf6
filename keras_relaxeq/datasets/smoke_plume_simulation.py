"""2D smoke plume simulations (PhiFlow 3.4): the configurations of the rotation and scale sets and the solver.

:func:`smoke_plume_config` describes a set (its simulations, held-out tasks, steps, resolution, sampling);
:func:`simulate_smoke_plume` runs PhiFlow for a list of :class:`SimulationSpec` and returns the velocity
frames.  Caching, windows and ``tf.data`` pipelines are :mod:`keras_relaxeq.datasets.smoke_plume`, whose
module notes describe the sets, the conventions and the reference settings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import warnings

import numpy as np
from tqdm.auto import tqdm

__all__ = [
    "PHIFLOW_VERSION",
    "PhiFlowMissingError",
    "SimulationSpec",
    "SmokePlumeConfig",
    "simulate_smoke_plume",
    "smoke_plume_config",
]

PHIFLOW_VERSION = "3.4.0"

# Inflow sides of the rotation set on a 64 grid: centre and unit buoyancy direction; side s + 1 is
# side s turned a quarter counter-clockwise about (32, 32).
_SIDES = (
    ((32.0, 5.0), (0.0, 1.0)),
    ((59.0, 32.0), (-1.0, 0.0)),
    ((32.0, 59.0), (0.0, -1.0)),
    ((5.0, 32.0), (1.0, 0.0)),
)

# Reference task lists (PhiFlow/Rotation: simulation k on side j is task (k, j); Scale: index i).
_ROTATION_TRAIN = (27, 33, 3, 28, 9, 12, 22, 8, 30, 25, 16, 11, 23, 29, 36, 26, 1, 35, 19, 34, 4, 2, 7, 31, 17)
_ROTATION_TEST_DOMAIN = (6, 14, 15, 10, 18, 20, 24, 13, 21, 5)
_SCALE_TRAIN = (27, 9, 7, 11, 4, 26, 35, 2, 29, 10, 34, 12, 37, 28, 18, 24, 8, 14, 1, 31, 25, 0, 19, 15, 36, 3, 20, 13)
_SCALE_TEST_DOMAIN = (5, 30, 16, 23, 33, 6, 17, 22, 21, 32)


class PhiFlowMissingError(ImportError):
    """PhiFlow (the optional ``smoke`` extra) is needed to generate the data."""


# --------------------------------------------------------------------------- #
# Configurations
# --------------------------------------------------------------------------- #
@dataclasses.dataclass(frozen=True)
class SimulationSpec:
    """One simulation: where the smoke enters, how it is pushed, on which grid.

    Lengths are in cells of the simulation grid (``resolution`` cells a side, bounds
    ``[0, resolution]^2``); ``buoyancy`` is the force per unit smoke density ``(b_x, b_y)``.
    """

    name: str
    inflow_center: tuple
    inflow_radius: float
    buoyancy: tuple
    resolution: int = 64
    velocity_dt: float = 1.0
    smoke_dt: float = 1.0
    downsample: float = 1.0  # > 1: interpolate the velocity back to resolution / downsample, divide by it
    side: int = -1  # inflow side of the rotation set (-1: none)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class SmokePlumeConfig:
    """A data set: its simulations, the stored grid, and its split into training / held-out simulations."""

    name: str
    simulations: tuple
    train: tuple
    test_domain: tuple
    num_steps: int = 310
    output_resolution: int = 64
    sampling: str = "staggered"

    @property
    def num_frames(self) -> int:
        return self.num_steps - 1

    def simulation(self, name) -> SimulationSpec:
        for spec in self.simulations:
            if spec.name == str(name):
                return spec
        raise KeyError(
            f"No simulation {name!r} in the {self.name!r} smoke plume set; "
            f"names are {[s.name for s in self.simulations]}."
        )

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "num_steps": self.num_steps,
            "output_resolution": self.output_resolution,
            "sampling": self.sampling,
            "train": list(self.train),
            "test_domain": list(self.test_domain),
            "simulations": [s.to_json() for s in self.simulations],
        }


def _rotation_simulations(resolution: int = 64) -> tuple:
    scale = resolution / 64.0
    specs = []
    for i in range(9):
        for side in range(4):
            k = 4 * i + side + 1
            magnitude = 0.01 * k * (1.1 if side == 2 else 1.0)  # the reference's (0, -0.011) on side 2
            (cx, cy), (dx, dy) = _SIDES[side]
            specs.append(
                SimulationSpec(
                    name=str(k),
                    inflow_center=(cx * scale, cy * scale),
                    inflow_radius=5.0 * scale,
                    buoyancy=(dx * magnitude, dy * magnitude),
                    resolution=resolution,
                    side=side,
                )
            )
    return tuple(specs)


def _scale_simulations(resolution: int = 64) -> tuple:
    """The scale set on a base grid of ``resolution`` cells (64 in the reference): simulation ``i`` runs the same
    plume on a grid ``f_i`` times finer (inflow, radius and resolution times ``f_i``, buoyancy ``0.1 f_i`` cells per
    step squared) and is downsampled back to the base grid."""
    base = resolution / 64.0
    factors = np.linspace(1, 5, 41)[:38]
    return tuple(
        SimulationSpec(
            name=str(i),
            inflow_center=(resolution / 2.0 * f, 5.0 * base * f),
            inflow_radius=5.0 * base * f,
            buoyancy=(0.0, 0.1 * f),
            resolution=int(resolution * f),
            velocity_dt=0.5,
            downsample=float(f),
        )
        for i, f in enumerate(factors)
    )


def smoke_plume_config(
    name: str = "rotation", *, sampling: str = "staggered", num_steps: int = 310, resolution: int = 64
) -> SmokePlumeConfig:
    """The ``"rotation"`` (36 simulations) or ``"scale"`` (38) configuration.

    ``num_steps`` and ``resolution`` (the stored grid; inflow positions and radius scaled by ``resolution / 64``,
    and for ``"scale"`` the simulation grids ``int(resolution f)``) can be reduced for quick tests;
    ``sampling`` is ``"staggered"`` (as the reference) or ``"centered"`` (see the module notes).
    """
    if sampling not in ("staggered", "centered"):
        raise ValueError(
            f"sampling must be 'staggered' (PhiFlow's face values, as the reference) or 'centered' "
            f"(cell centres), got {sampling!r}."
        )
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 2:
        raise ValueError(f"num_steps must be an integer >= 2 (310 in the reference), got {num_steps!r}.")
    if resolution % 2 or resolution < 8:
        raise ValueError(f"resolution must be an even integer >= 8 (64 in the reference), got {resolution!r}.")
    if name == "rotation":
        return SmokePlumeConfig(
            "rotation" if resolution == 64 else f"rotation{resolution}",
            _rotation_simulations(resolution),
            tuple(map(str, _ROTATION_TRAIN)),
            tuple(map(str, _ROTATION_TEST_DOMAIN)),
            num_steps=int(num_steps),
            output_resolution=int(resolution),
            sampling=sampling,
        )
    if name == "scale":
        return SmokePlumeConfig(
            "scale" if resolution == 64 else f"scale{resolution}",
            _scale_simulations(int(resolution)),
            tuple(map(str, _SCALE_TRAIN)),
            tuple(map(str, _SCALE_TEST_DOMAIN)),
            num_steps=int(num_steps),
            output_resolution=int(resolution),
            sampling=sampling,
        )
    raise ValueError(f"Unknown smoke plume configuration {name!r}: choose 'rotation' or 'scale'.")


def _as_config(config) -> SmokePlumeConfig:
    if isinstance(config, SmokePlumeConfig):
        return config
    return smoke_plume_config(config)


# --------------------------------------------------------------------------- #
# Simulation (PhiFlow)
# --------------------------------------------------------------------------- #
def _import_phiflow():
    try:
        import phi
        from phi import flow
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise PhiFlowMissingError(
            f"Generating the smoke plume data needs PhiFlow {PHIFLOW_VERSION}: "
            f"pip install 'keras_relaxeq[smoke]' (or pip install phiflow=={PHIFLOW_VERSION})."
        ) from err
    if phi.__version__ != PHIFLOW_VERSION:
        warnings.warn(
            f"PhiFlow {phi.__version__} is installed; the smoke plume data is defined with "
            f"{PHIFLOW_VERSION} (pip install phiflow=={PHIFLOW_VERSION}).",
            stacklevel=3,
        )
    _widen_sparse_indices()
    return flow


def _widen_sparse_indices() -> None:
    """Let PhiFlow's pressure solve build its sparse matrix for grids above ~215x215 cells.

    phiml's NumPy backend casts the flat indices of a sparse matrix back to the (int32) index dtype after
    ``np.ravel_multi_index``; the pressure matrix of an ``n``-cell grid has ``n^2`` flat positions, which overflows
    int32 from ``n = 46,341`` (the scale set's grids of 216x216 and more: 14 of its 38 simulations fail with
    ``ValueError: index -2147483310 is out of bounds``).  This keeps the flat indices in int64 when they do not fit
    in the index dtype; the values are unchanged otherwise."""
    from phiml.backend._numpy_backend import NumPyBackend

    original = NumPyBackend.ravel_multi_index
    if getattr(original, "_keras_relaxeq_wide", False):
        return

    def ravel_multi_index(self, multi_index, shape, mode="undefined"):
        if np.prod(np.asarray(shape, np.float64)) < np.iinfo(np.asarray(multi_index).dtype).max:
            return original(self, multi_index, shape, mode)
        return original(self, np.asarray(multi_index, np.int64), shape, mode)

    ravel_multi_index._keras_relaxeq_wide = True
    NumPyBackend.ravel_multi_index = ravel_multi_index


@contextlib.contextmanager
def _factorized_pressure_solve():
    """Factorise the pressure matrix once per simulation instead of once per step.

    ``Solve("scipy-direct")`` calls ``scipy.sparse.linalg.spsolve``, which runs SuperLU's factorisation *and*
    substitution on every step; the pressure matrix of the closed box never changes, and the factorisation is 87% of
    a step at 192x192 (``benchmarks/bench_smoke_plume_generation.py``).  Inside this context PhiFlow's direct
    solves go through :func:`scipy.sparse.linalg.splu` (the same SuperLU with the same column ordering, COLAMD),
    factorised once per distinct matrix (keyed by its sparsity pattern and values) and then only substituted.
    Anything else (a batch of right-hand sides, solver options) is passed to ``spsolve`` unchanged, as is a matrix
    that SuperLU finds exactly singular."""
    from phiml.backend import _linalg
    from scipy.sparse import csc_matrix
    from scipy.sparse.linalg import splu

    original = _linalg.spsolve
    cache = {}

    def spsolve(matrix, rhs, *args, **kwargs):
        rhs = np.asarray(rhs)
        if args or kwargs or rhs.ndim != 1:
            return original(matrix, rhs, *args, **kwargs)
        csc = csc_matrix(matrix)
        digest = hashlib.sha1()
        for part in (csc.indptr, csc.indices, csc.data):
            digest.update(np.ascontiguousarray(part).tobytes())
        key = (csc.shape, csc.data.dtype.str, digest.hexdigest())
        if key not in cache:
            try:
                factor = splu(csc)
            except RuntimeError:  # exactly singular: let spsolve say so as before
                return original(matrix, rhs)
            cache.clear()  # one matrix per simulation grid; keep the memory of one factorisation
            cache[key] = factor
        return cache[key].solve(rhs.astype(csc.dtype, copy=False))

    _linalg.spsolve = spsolve
    try:
        yield cache
    finally:
        _linalg.spsolve = original


def _downsample(frames: np.ndarray, factor: float, min_size: int = 0) -> np.ndarray:
    """Bilinear resize of ``[..., H, W]`` by ``1 / factor`` with aligned corners (``F.interpolate``'s
    ``align_corners=True``), divided by ``factor`` (velocities in cells per step).  The output has
    ``floor(H / factor)`` rows (at least ``min_size``: cell-centred grids of ``int(64 f)`` cells give
    ``floor(int(64 f) / f) = 63`` rows for most ``f``; the staggered grids have one cell more and never need it)."""
    from scipy.ndimage import map_coordinates

    h, w = frames.shape[-2:]
    oh, ow = max(int(np.floor(h / factor)), int(min_size)), max(int(np.floor(w / factor)), int(min_size))
    ys = np.linspace(0, h - 1, oh) if oh > 1 else np.zeros(1)
    xs = np.linspace(0, w - 1, ow) if ow > 1 else np.zeros(1)
    grid = np.stack(np.meshgrid(ys, xs, indexing="ij"))
    flat = frames.reshape((-1, h, w))
    out = np.stack([map_coordinates(f, grid, order=1, mode="nearest") for f in flat])
    return out.reshape(frames.shape[:-2] + (oh, ow)) / factor


def simulate_smoke_plume(
    specs,
    num_steps: int = 310,
    *,
    sampling: str = "staggered",
    output_resolution=None,
    progress=None,
    desc: str = "smoke plume",
) -> np.ndarray:
    """Simulate smoke plumes with PhiFlow and return their velocity fields.

    Parameters
    ----------
    specs : SimulationSpec or sequence of SimulationSpec
        Simulations sharing ``resolution``, ``velocity_dt``, ``smoke_dt``, ``downsample`` and
        ``inflow_radius``; they are batched into one PhiFlow simulation.
    num_steps : int
        Time steps; the velocity after each step is kept and the first one dropped.
    sampling : {"staggered", "centered"}
        Face values as the reference (``staggered_tensor()`` cut to the grid) or cell centres.
    output_resolution : int, optional
        Cut the stored grid to this size after downsampling (64 for the scale set); default: the
        simulation resolution divided by ``downsample``.
    progress : bool, optional
        tqdm bar over the steps (default on).

    Returns
    -------
    np.ndarray
        float32 ``[simulation, num_steps - 1, 2, H, W]`` (component ``(v_x, v_y)``, rows = y).
    """
    if isinstance(specs, SimulationSpec):
        specs = [specs]
    specs = list(specs)
    if not specs:
        raise ValueError("simulate_smoke_plume needs at least one SimulationSpec.")
    shared = {(s.resolution, s.velocity_dt, s.smoke_dt, s.downsample, s.inflow_radius) for s in specs}
    if len(shared) != 1:
        raise ValueError(
            "Simulations batched together must share resolution, dt, downsample and inflow radius; "
            "simulate them in separate calls."
        )
    if sampling not in ("staggered", "centered"):
        raise ValueError(f"sampling must be 'staggered' or 'centered', got {sampling!r}.")
    flow = _import_phiflow()
    math, batch, channel, tensor = flow.math, flow.batch, flow.channel, flow.tensor
    spec = specs[0]
    res = int(spec.resolution)
    bounds = flow.Box(x=(0, res), y=(0, res))
    frames = []
    with math.NUMPY, math.precision(64), _factorized_pressure_solve():
        centers = tensor([s.inflow_center for s in specs], batch("sim"), channel(vector="x,y"))
        buoyancy = tensor([s.buoyancy for s in specs], batch("sim"), channel(vector="x,y"))
        smoke = flow.CenteredGrid(0, flow.extrapolation.BOUNDARY, bounds, x=res, y=res)
        velocity = flow.StaggeredGrid(0, flow.extrapolation.ZERO, bounds, x=res, y=res)
        inflow = flow.CenteredGrid(
            flow.Sphere(center=centers, radius=spec.inflow_radius), flow.extrapolation.BOUNDARY, bounds, x=res, y=res
        )
        solve = flow.Solve("scipy-direct", 1e-5, 0, rank_deficiency=1)
        show = True if progress is None else bool(progress)
        with (
            warnings.catch_warnings(),
            tqdm(total=num_steps, disable=not show, unit="step", desc=desc, leave=False) as bar,
        ):
            # The pressure matrix of a closed box is singular (pressure up to a constant); scipy-direct
            # handles it (rank_deficiency=1) but PhiFlow still warns, as SciPy does about the sparse format.
            warnings.filterwarnings("ignore", message="Rank deficiency")
            warnings.filterwarnings("ignore", message="spsolve requires A be CSC or CSR")
            for _ in range(num_steps):
                smoke = flow.advect.mac_cormack(smoke, velocity, dt=spec.smoke_dt) + inflow
                force = flow.resample(smoke * buoyancy, to=velocity)
                velocity = flow.advect.semi_lagrangian(velocity, velocity, dt=spec.velocity_dt) + force
                velocity, _ = flow.fluid.make_incompressible(velocity, (), solve)
                if sampling == "staggered":
                    values = velocity.staggered_tensor().numpy("sim,vector,y,x")
                else:
                    values = velocity.at_centers().values.numpy("sim,vector,y,x")
                frames.append(values.astype(np.float64, copy=False))
                bar.update(1)
    data = np.stack(frames[1:], axis=1)  # [sim, T, 2, H(+1), W(+1)]
    if spec.downsample != 1.0:
        data = _downsample(data, spec.downsample, output_resolution or 0)
    size = output_resolution or int(res / spec.downsample)
    return np.ascontiguousarray(data[..., :size, :size], dtype=np.float32)
