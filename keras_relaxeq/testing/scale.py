"""Scale-equivariance checks for the layers of :mod:`keras_relaxeq.layers.scale_conv`.

A dilation cannot be applied to an arbitrary image without interpolating it, so the checks start from a
*continuous* field, a sum of plane waves ``f(p) = sum_k a_k cos(omega_k . p + phi_k)`` (band-limited: the
frequencies stay below the Nyquist frequency of both grids), and sample it twice: on the fine grid
``p = m`` and on a grid ``a`` times coarser, ``p = a n`` (:func:`sample_plane_waves`).  The coarse image is then
exactly the dilated one (``L_{1/a}`` of the fine image, nothing interpolated), and a scale-equivariant map
``Phi`` must satisfy ``Phi(coarse)[n, sigma_i] = Phi(fine)[a n, sigma_j]`` wherever ``sigma_j = a sigma_i`` and
``a n`` is a fine grid point, away from the borders (zero padding differs between the grids).  For the integer
step ``a = 2`` the coarse image is ``fine[::2, ::2]``.

Vector fields (velocities) are checked as stacks of scalar fields: the grid is resampled and the vectors are
left as they are (docs/scale_equivariance.md).

:func:`scale_equivariance_error` measures ``max |Phi(coarse)[n, i] - Phi(fine)[a n, j]| / max |Phi(fine)[a n, j]|``
over the compared entries; ``python -m keras_relaxeq.testing.scale`` prints the table of
docs/scale_equivariance.md.
"""

from __future__ import annotations

import argparse
import dataclasses
from fractions import Fraction

import numpy as np
import tensorflow as tf

from keras_relaxeq.groups.scale import check_scales, scale_pairs

__all__ = [
    "ScaleCheck",
    "assert_relaxation_reaches_output",
    "plane_wave_parameters",
    "sample_plane_waves",
    "scale_equivariance_error",
    "trunk_scale_step_error",
]


def plane_wave_parameters(rng, channels: int, waves: int = 6, max_frequency: float = 0.25):
    """Random ``(omega [C, K, 2], phase [C, K], amplitude [C, K])`` with ``|omega| <= max_frequency`` (radians per
    fine-grid cell; below ``pi / a`` keeps the field band-limited on a grid ``a`` times coarser)."""
    radius = max_frequency * np.sqrt(rng.uniform(0.0, 1.0, size=(channels, waves)))
    angle = rng.uniform(0.0, 2 * np.pi, size=(channels, waves))
    omega = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=-1)
    return omega, rng.uniform(0.0, 2 * np.pi, size=(channels, waves)), rng.normal(size=(channels, waves))


def sample_plane_waves(params, size: int, spacing: float = 1.0, batch: int = 1) -> np.ndarray:
    """The field of :func:`plane_wave_parameters` sampled at ``p = spacing * (row, column)``, float64
    ``[batch, size, size, C]`` (the batch repeats the field with a shifted phase per element)."""
    omega, phase, amp = params
    coords = spacing * np.arange(int(size), dtype=np.float64)
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    out = []
    for b in range(int(batch)):
        arg = omega[..., 0][None, None] * yy[..., None, None] + omega[..., 1][None, None] * xx[..., None, None]
        out.append(np.sum(amp * np.cos(arg + phase + 0.7 * b), axis=-1))
    return np.stack(out)


@dataclasses.dataclass
class ScaleCheck:
    """Result of :func:`scale_equivariance_error`: the relative error per scale pair ``(i, j)``, its maximum,
    and how many output values were compared."""

    factor: float
    pairs: list
    errors: dict
    compared: int

    @property
    def max_error(self) -> float:
        return max(self.errors.values())


def _grid_factor(factor):
    frac = Fraction(factor).limit_denominator(12)
    if abs(float(frac) - factor) > 1e-9:
        raise ValueError(f"factor {factor} is not a ratio p / q with q <= 12: no coarse point lands on the fine grid.")
    return frac


def scale_equivariance_error(
    fn, params, scales, factor: float, fine_size: int, margin: int, batch: int = 1, slice_pairs=None
) -> ScaleCheck:
    """Compare ``fn`` on the plane-wave field sampled at spacing 1 and at spacing ``factor`` (module notes).

    ``fn`` maps images ``[B, H, W, C]`` to scale-space fields ``[B, H, W, S, C']`` (or images; then the single
    "scale" is compared with itself); ``margin``: fine-grid cells at each border left out (at least the receptive
    field radius); ``slice_pairs``: the ``(i, j)`` to compare (default: every ``sigma_j = factor sigma_i``).
    """
    scales = check_scales(scales)
    frac = _grid_factor(factor)
    coarse_size = int(np.floor((fine_size - 1) / float(frac))) + 1
    fine = tf.constant(sample_plane_waves(params, fine_size, 1.0, batch))
    coarse = tf.constant(sample_plane_waves(params, coarse_size, float(frac), batch))
    y_fine, y_coarse = np.asarray(fn(fine)), np.asarray(fn(coarse))
    if y_fine.ndim == 4:
        y_fine, y_coarse = y_fine[..., None, :], y_coarse[..., None, :]
        pairs = [(0, 0)]
    else:
        pairs = list(slice_pairs) if slice_pairs is not None else scale_pairs(scales, factor)
    if not pairs:
        raise ValueError(f"no two of the scales {scales} differ by the factor {factor}.")
    # coarse indices n with factor * n an integer fine index inside the margins
    n = np.arange(coarse_size)
    on_grid = (n * frac.numerator) % frac.denominator == 0
    m = n * frac.numerator // frac.denominator
    keep = on_grid & (m >= margin) & (m <= fine_size - 1 - margin)
    n_keep, m_keep = n[keep], m[keep]
    if not len(n_keep):
        raise ValueError("no compared point: use a larger grid or a smaller margin.")
    errors = {}
    for i, j in pairs:
        a = y_coarse[:, n_keep][:, :, n_keep][..., i, :]
        b = y_fine[:, m_keep][:, :, m_keep][..., j, :]
        errors[(i, j)] = float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))
    return ScaleCheck(float(factor), pairs, errors, int(len(n_keep) ** 2 * len(pairs) * batch))


def trunk_scale_step_error(forecaster, num_layers: int, kernel_size: int, seed: int = 0):
    """Scale-step error of a smoke plume scale forecaster's scale-space trunk
    (``keras_relaxeq.models.smoke_plume_scale``; what ``recipes/smoke_plume.py --symmetry scale`` reports and the
    zoo publishes): every layer after ``images`` up to ``velocity_scales`` (the last scale-space output, before the
    finest slice is read), run on a smooth random field (:func:`plane_wave_parameters` of ``seed``, one field per
    image channel) sampled at spacing 1 and 2, slices ``sigma = 1`` (coarse) against ``sigma = 2`` (fine), with a
    border margin of ``2 * num_layers * (kernel_size // 2)`` fine cells.  A :class:`ScaleCheck`, or None for a model
    without a scale axis (the plain CNN) or without ``sigma = 2`` among its scales."""
    names = [layer.name for layer in forecaster.layers]
    if "velocity_scales" not in names or "images" not in names:
        return None
    trunk = forecaster.layers[names.index("images") + 1 : names.index("velocity_scales") + 1]
    scales = trunk[0].scales
    if 2.0 not in scales:
        return None

    def run(x):
        for layer in trunk:
            x = layer(x, training=False)
        return x

    params = plane_wave_parameters(np.random.default_rng(seed), trunk[0].input.shape[-1])
    margin = int(num_layers) * (int(kernel_size) // 2) * 2
    return scale_equivariance_error(
        run, params, scales, 2.0, 2 * margin + 32, margin, slice_pairs=[(0, scales.index(2.0))]
    )


def assert_relaxation_reaches_output(model, inputs, rtol: float = 1e-3, seed: int = 0) -> dict:
    """Fail unless every relaxation branch of ``model`` changes its output: each relaxed layer in turn gets a random
    branch and ``theta = 1`` while every other ``theta`` is 0 (so one dead branch among live ones is caught, as the
    published scale model's, which is built but never called).  Returns ``{layer name: max |change| / max |y0|}``;
    the thetas are left at 0 and the branch weights random."""
    from keras_relaxeq.layers.relaxation import relaxed_layers, set_theta

    layers = relaxed_layers(model)
    if not layers:
        raise AssertionError("the model has no relaxation branch (was it built with relaxed=False, or projected?)")
    rng = np.random.default_rng(seed)
    set_theta(model, 0.0)
    y0 = np.asarray(model(inputs, training=False))
    scale = max(float(np.abs(y0).max()), 1e-30)
    changes = {}
    for layer in layers:
        for v in layer.relaxation_variables:
            v.assign(rng.normal(size=tuple(v.shape)).astype(v.dtype))
        layer.theta.assign(1.0)
        changes[layer.name] = float(np.abs(np.asarray(model(inputs, training=False)) - y0).max()) / scale
        layer.theta.assign(0.0)
    dead = [name for name, change in changes.items() if not change > rtol]
    if dead:
        raise AssertionError(
            f"the relaxation branch of {dead} does not change the model output at theta = 1: {changes}"
        )
    return changes


# --------------------------------------------------------------------------- the table of the docs
def _table(kernel_sizes=(5, 9, 41), seed=0):
    import keras

    from keras_relaxeq.layers.scale_conv import ScaleLiftingConv2D

    keras.utils.set_random_seed(seed)

    rng = np.random.default_rng(seed)
    params = plane_wave_parameters(rng, 2, max_frequency=0.25)
    scales = (1.0, 1.5, 2.0, 2.5)
    rows = []
    for k in kernel_sizes:
        layer = ScaleLiftingConv2D(3, scales=scales, kernel_size=k, relaxed=False, dtype="float64")
        for factor in (2.0, 1.5, 4 / 3, 1.25, 5 / 3, 2.5):
            frac = _grid_factor(factor)
            margin = int(np.ceil(float(frac) * (k // 2))) + 1
            fine = 2 * margin + 4 * frac.numerator + 1
            check = scale_equivariance_error(layer, params, scales, factor, fine, margin)
            for (i, j), err in check.errors.items():
                rows.append((k, f"{frac.numerator}/{frac.denominator}", scales[i], scales[j], err))
    return rows


def _penalty_table(kernel_sizes=(5, 9, 31), seed=0):
    """``LD / N`` of the step defect, the Lie derivative and the subspace distance for the branch set to the layer's
    own (equivariant) kernel and for a random branch, on a smooth (plane-wave) and a white-noise input."""
    import keras

    from keras_relaxeq.layers.scale_conv import ScaleLiftingConv2D

    keras.utils.set_random_seed(seed)

    rng = np.random.default_rng(seed)
    smooth = tf.constant(sample_plane_waves(plane_wave_parameters(rng, 2), 96))
    noise = tf.constant(rng.normal(size=(1, 96, 96, 2)))
    rows = []
    for k in kernel_sizes:
        layer = ScaleLiftingConv2D(3, kernel_size=k, relaxation_use_bias=False, dtype="float64")
        layer(smooth)
        random_kernel = rng.normal(size=tuple(layer.relaxation_kernel.shape))
        for branch in ("equivariant", "random"):
            layer.relaxation_kernel.assign(layer.kernel_value(tf.float64) if branch == "equivariant" else random_kernel)
            for name, x in (("smooth", smooth), ("noise", noise)):
                ratios = []
                for method in ("step", "lie", "subspace"):
                    lie, proj = layer.branch_penalties(x, method=method)
                    ratios.append(float(lie) / float(proj))
                rows.append((k, branch, name, *ratios))
    return rows


def _model_table(seed=0):
    """Exact-step (factor 2) error of lifting -> [ReLU] -> scale-space conv, the projected scale models' trunk."""
    import keras

    from keras_relaxeq.layers.scale_conv import ScaleConv2D, ScaleLiftingConv2D

    keras.utils.set_random_seed(seed)

    params = plane_wave_parameters(np.random.default_rng(seed), 2)
    geometric = tuple(2 ** (np.arange(4) / 2))
    rows = []
    for scales, k, pair in (((1.0, 1.5, 2.0, 2.5), 5, (0, 2)), (geometric, 5, (0, 2)), (geometric, 33, (0, 2))):
        keras_seed = np.random.default_rng(seed)
        lift = ScaleLiftingConv2D(3, scales=scales, kernel_size=k, relaxed=False, dtype="float64")
        conv = ScaleConv2D(2, scales=scales, kernel_size=k, scale_size=2 if scales == geometric else 1, dtype="float64")
        lift.build((None, None, None, 2))
        conv.build((None, None, None, len(scales), 3))
        lift.bias.assign(keras_seed.normal(size=3))
        for relu in (False, True):

            def net(x, relu=relu):
                y = lift(x)
                return conv(tf.nn.relu(y) if relu else y)

            margin = 4 * (k // 2) + 2
            check = scale_equivariance_error(net, params, scales, 2.0, 2 * margin + 16, margin, slice_pairs=[pair])
            rows.append((scales, k, conv.scale_size, relu, check.max_error))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Scale-equivariance errors and penalties (docs/scale_equivariance.md)."
    )
    parser.add_argument("--kernel-sizes", type=int, nargs="+", default=[5, 9, 41])
    parser.add_argument("--what", choices=("layer", "model", "penalties"), default="layer")
    args = parser.parse_args(argv)
    if args.what == "penalties":
        print("| kernel | branch | input | step LD / N | Lie LD / N | subspace LD / N |")
        print("|---|---|---|---|---|---|")
        for k, branch, name, step, lie, sub in _penalty_table((5, 9, 31)):
            print(f"| {k} | {branch} | {name} | {step:.1e} | {lie:.1e} | {sub:.1e} |")
        return 0
    if args.what == "model":
        print("| scales | kernel | scale_size | ReLU between | relative error (sigma 1 vs 2) |")
        print("|---|---|---|---|---|")
        for scales, k, size, relu, err in _model_table():
            print(f"| {', '.join(f'{s:.3g}' for s in scales)} | {k} | {size} | {'yes' if relu else 'no'} | {err:.1e} |")
        return 0
    print("| kernel | factor a | sigma (coarse) | a sigma (fine) | relative error |")
    print("|---|---|---|---|---|")
    for k, frac, s_i, s_j, err in _table(tuple(args.kernel_sizes)):
        print(f"| {k} | {frac} | {s_i:g} | {s_j:g} | {err:.1e} |")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
