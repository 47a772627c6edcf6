"""The relaxation penalties of the scale lifting layer: the exact grid-step defect, the Lie derivative along the
scaling generator, and the distance to the layer's equivariant kernels (see :mod:`keras_relaxeq.layers.scale_conv`
and docs/scale_equivariance.md, which compares them)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_relaxeq.groups.scale import check_scales, downscale_grid, scale_pairs

__all__ = [
    "SCALE_PENALTIES",
    "equivariant_kernel_residual",
    "scale_lie_derivative_defect",
    "scale_step_defect",
    "scale_subspace_defect",
]

SCALE_PENALTIES = ("step", "lie", "subspace")


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


def equivariant_kernel_residual(basis) -> np.ndarray:
    """``Q = I - P`` ``[S k k, S k k]`` for the basis ``[S, B, k, k]``: ``P`` projects the kernels of one input/output
    channel pair, ``(W^sigma_s)_s`` flattened as ``(s, y, x)``, orthogonally onto the span of the lifting layer's
    equivariant kernels ``(sum_b w_b psi_b^sigma_s)_s``."""
    basis = np.asarray(basis, np.float64)
    s, b, k, _ = basis.shape
    psi = np.transpose(basis, (0, 2, 3, 1)).reshape(s * k * k, b)  # columns: the basis functions at all scales
    q, _ = np.linalg.qr(psi)
    return np.eye(s * k * k) - q @ q.T


def scale_subspace_defect(kernel, bias, x, residual, num_scales: int):
    """``(LD, N)`` of the branch ``conv(x, W) + b`` (``W`` ``[k, k, C_in, S C_out]``, output channel ``s C_out + o``):
    ``LD = ||conv(x, W - P W) + b - mean_s b||^2``, the part of the branch outside the equivariant maps of the lifting
    layer (:func:`equivariant_kernel_residual`; the equivariant bias is constant over the scales), zero exactly for
    every kernel of the layer's class at any kernel size; ``N = ||conv(x, W) + b||^2``.  One convolution."""
    w = tf.convert_to_tensor(kernel)
    k, _, c_in, so = w.shape
    c_out = so // num_scales
    x = tf.stop_gradient(tf.convert_to_tensor(x))
    w6 = tf.reshape(w, [k, k, c_in, num_scales, c_out])
    flat = tf.reshape(tf.transpose(w6, [3, 0, 1, 2, 4]), [num_scales * k * k, c_in * c_out])
    res = tf.matmul(tf.constant(residual, w.dtype), flat)
    w_res = tf.reshape(tf.transpose(tf.reshape(res, [num_scales, k, k, c_in, c_out]), [1, 2, 3, 0, 4]), w.shape)
    y = tf.nn.conv2d(x, tf.concat([w, w_res], axis=-1), strides=1, padding="SAME")
    r, r_res = tf.split(y, 2, axis=-1)
    if bias is not None:
        b = tf.convert_to_tensor(bias)
        b_scales = tf.reshape(b, [num_scales, c_out])
        r = r + b
        r_res = r_res + tf.reshape(b_scales - tf.reduce_mean(b_scales, axis=0, keepdims=True), [-1])
    return tf.reduce_sum(tf.square(r_res)), tf.reduce_sum(tf.square(r))
