"""The relaxation penalties of the scale lifting layer: the exact grid-step defect and the Lie derivative along the
scaling generator (see :mod:`keras_relaxeq.layers.scale_conv` and docs/scale_equivariance.md)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_relaxeq.groups.scale import check_scales, downscale_grid, scale_pairs

__all__ = ["SCALE_PENALTIES", "scale_lie_derivative_defect", "scale_step_defect"]

SCALE_PENALTIES = ("step", "lie")


# --------------------------------------------------------------------------- penalties
def scale_step_defect(branch_fn, x, scales, factor: int = 2, margin: int = 0):
    """``(LD, N)`` of a branch ``images [B, H, W, C] -> scale space [B, H, W, S, C']`` for the grid step ``factor``:
    ``LD = sum_{(i, j)} ||D R(x)[..., j, :] - R(D x)[..., i, :]||^2`` over the pairs ``sigma_j = factor sigma_i``
    (:func:`~keras_relaxeq.groups.scale.scale_pairs`) and the coarse pixels at least ``margin`` from the border
    (the layers pass the kernel radius: nearer, the two grids pad different regions with zeros),
    ``N = ||R(x)||^2``, on ``stop_gradient(x)``."""
    pairs = scale_pairs(scales, factor)
    if not pairs:
        raise ValueError(
            f"No two of the scales {tuple(scales)} differ by the factor {factor}: the step defect needs pairs "
            f"sigma_j = {factor} sigma_i (e.g. 1 and 2), or use scale_penalty='lie'."
        )
    x = tf.stop_gradient(tf.convert_to_tensor(x))
    r = branch_fn(x)
    r_coarse = branch_fn(downscale_grid(x, factor))
    r_down = downscale_grid(r, factor)
    if margin:
        r_down, r_coarse = (t[:, margin:-margin, margin:-margin] for t in (r_down, r_coarse))
    lie = tf.add_n([tf.reduce_sum(tf.square(r_down[..., j, :] - r_coarse[..., i, :])) for i, j in pairs])
    return lie, tf.reduce_sum(tf.square(r))


def _log_scale_derivative(scales) -> np.ndarray:
    """``D`` ``[S, S]`` with ``(sigma d_sigma y)[s] = sum_t D[s, t] y[t]``: second-order finite differences on
    ``log sigma`` (non-uniform; one-sided at the ends)."""
    logs = np.log(np.asarray(check_scales(scales)))
    if len(logs) < 2:
        raise ValueError("the Lie derivative along the scales needs at least two scales.")
    return np.gradient(np.eye(len(logs)), logs, axis=0, edge_order=1)


def _radial_derivative(y, spatial_axes=(1, 2)):
    """``p . grad y`` with ``p`` measured from the grid centre, central differences (zero beyond the grid)."""
    out = 0.0
    for axis in spatial_axes:
        n = y.shape[axis]
        pad = [[0, 0]] * len(y.shape)
        pad[axis] = [1, 1]
        padded = tf.pad(y, pad)
        hi = tf.gather(padded, tf.range(2, n + 2), axis=axis)
        lo = tf.gather(padded, tf.range(0, n), axis=axis)
        coord = tf.cast(tf.range(n), y.dtype) - (n - 1) / 2.0
        shape = [1] * len(y.shape)
        shape[axis] = n
        out += tf.reshape(coord, shape) * (hi - lo) / 2.0
    return out


def scale_lie_derivative_defect(branch_fn, x, scales, margin: int = 0):
    """``(LD, N)`` with ``LD = ||J_R(x) v - dR||^2`` for the scaling generator (module notes): ``v = -p . grad x`` on
    the input grid, ``dR = -p . grad R(x) - sigma d_sigma R(x)`` on the output, compared on the pixels at least
    ``margin`` from the border (the finite differences and the kernel read zeros beyond it).  ``J_R v`` by
    forward-mode autodiff, so any branch works."""
    x = tf.stop_gradient(tf.convert_to_tensor(x))
    v = -_radial_derivative(x)
    with tf.autodiff.ForwardAccumulator(x, v) as acc:
        r = branch_fn(x)
    jv = acc.jvp(r)
    d = tf.constant(_log_scale_derivative(scales), r.dtype)
    d_r = -_radial_derivative(r) - tf.einsum("st,bhwtc->bhwsc", d, r)
    diff = jv - d_r
    if margin:
        diff = diff[:, margin:-margin, margin:-margin]
    return tf.reduce_sum(tf.square(diff)), tf.reduce_sum(tf.square(r))
