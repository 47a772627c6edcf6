"""Relaxation penalties for finite groups: the exact equivariance defect over the generating elements.

A finite group such as ``C_N`` has no Lie algebra, so for a layer whose input and output are
:class:`~keras_relaxeq.groups.cyclic_kernels.FieldRep` field types the "Lie" slot of the penalties
(``LD`` in :class:`~keras_relaxeq.layers.base.PenaltyCollector`, logged as ``lie_penalty``) holds the
generator defect of the branch ``R``, computed on ``stop_gradient(x)``,

    LD = sum_{g in generators} || g.R(x) - R(g.x) ||^2      (summed over batch, pixels, channels),

zero for every ``x`` exactly when ``R`` is equivariant; the projection slot keeps ``N = ||R(x)||^2``.

Two ways, which agree (tests):

* generic (any branch, :func:`generic_field_defect`): evaluate ``R`` on ``x`` and on ``g.x`` (grid rotated
  and fibres transformed) and compare with ``g.R(x)``.  For a per-pixel branch the rotation of the grid
  only permutes the pixels, so :func:`generic_pointwise_defect` acts on the fibres of the rows alone.
* closed forms for linear branches.  A per-pixel linear branch ``x W + b`` (the base layer's dense
  branch) has, pixel by pixel up to the permutation of the grid, ``R(g.x) - g.R(x) = x M_g + c_g`` with
  ``M_g = rho_in(g)^T W - W rho_out(g)^T`` and ``c_g = b - b rho_out(g)^T`` (rows), so
  ``LD = sum_g tr(M_g^T S M_g) + 2 s M_g c_g^T + P ||c_g||^2`` from the Gram statistics ``S = sum_p x_p^T x_p``,
  ``s = sum_p x_p`` (:func:`dense_branch_defect`), like the Lie closed form of the base layer.  A
  convolution branch ``conv(x, W) + b`` has ``conv(g.x, W) = g.conv(x, T_g(W))`` (the kernel transform of
  :mod:`keras_relaxeq.groups.cyclic_kernels`), so the defect is one convolution,
  ``LD = sum_g || conv(x, W - T_g(W)) + b - b rho_out(g) ||^2`` (rows, :func:`conv_branch_defect`).

The published relaxed steerable CNN code penalises ``||W - rot90(W)||`` on the branch kernel: it rotates
the kernel's spatial axes but leaves the fibres alone (the vector components, the cyclic shift of the
regular channels) and ignores the input, so it is not the equivariance condition (it is not zero on an
equivariant conv between vector or regular fields).  The defect here is exact.
"""

from __future__ import annotations

import tensorflow as tf

from keras_relaxeq.groups.cyclic import FieldType
from keras_relaxeq.groups.cyclic_kernels import transform_kernel

__all__ = [
    "conv_branch_defect",
    "dense_branch_defect",
    "direct_dense_branch_defect",
    "finite_group_branch_penalties",
    "generic_field_defect",
    "generic_pointwise_defect",
    "reference_rot90_penalty",
]


def _const(m, dtype):
    return tf.constant(m, dtype=dtype)


def dense_branch_defect(kernel, bias, gram, in_type: FieldType, out_type: FieldType):
    """Closed-form ``(LD, N)`` of the per-pixel branch ``x W + b`` from Gram statistics ``(S, s, P)``.

    With rows ``x``: ``R(g.x) - g.R(x)`` at a pixel is ``x M_g + c_g`` with ``M_g = rho_in(g)^T W - W rho_out(g)^T``
    and ``c_g = b - b rho_out(g)^T``; the grid rotation permutes pixels and drops out of the sum, so
    ``LD = sum_g tr(M_g^T S M_g) + 2 s M_g c_g^T + P ||c_g||^2`` and ``N = tr(W^T S W) + 2 s W b^T + P ||b||^2``.
    """
    s_mat, s_vec, count = gram
    w = tf.convert_to_tensor(kernel)
    dtype = w.dtype
    lie = tf.zeros((), dtype)
    for g in in_type.generators():
        m = tf.matmul(_const(in_type.matrix(g).T, dtype), w) - tf.matmul(w, _const(out_type.matrix(g).T, dtype))
        lie += tf.reduce_sum(tf.matmul(s_mat, m) * m)
        if bias is not None:
            c = bias - tf.linalg.matvec(_const(out_type.matrix(g), dtype), bias)
            lie += 2.0 * tf.reduce_sum(tf.linalg.matvec(m, s_vec, transpose_a=True) * c) + count * tf.reduce_sum(c * c)
    proj = tf.reduce_sum(tf.matmul(s_mat, w) * w)
    if bias is not None:
        proj += 2.0 * tf.reduce_sum(tf.linalg.matvec(w, s_vec, transpose_a=True) * bias) + count * tf.reduce_sum(
            bias * bias
        )
    return lie, proj


def direct_dense_branch_defect(kernel, bias, flat_x, in_type: FieldType, out_type: FieldType):
    """``(LD, N)`` of the per-pixel branch ``x W + b`` evaluated on the rows of ``flat_x`` ``[P, C_in]``."""
    return generic_pointwise_defect(
        lambda v: tf.matmul(v, kernel) + (0.0 if bias is None else bias), flat_x, in_type, out_type
    )


def generic_pointwise_defect(branch_fn, flat_x, in_type: FieldType, out_type: FieldType):
    """``(LD, N)`` of any per-pixel branch ``[P, C_in] -> [P, C_out]`` by evaluation:
    ``LD = sum_g ||R(rho_in(g) x) - rho_out(g) R(x)||^2`` over the rows (the grid rotation permutes rows)."""
    x = tf.stop_gradient(flat_x)
    r = branch_fn(x)
    lie = tf.zeros((), r.dtype)
    for g in in_type.generators():
        lie += tf.reduce_sum(tf.square(branch_fn(in_type.act_fibre(g, x)) - out_type.act_fibre(g, r)))
    return lie, tf.reduce_sum(tf.square(r))


def generic_field_defect(branch_fn, x, in_type: FieldType, out_type: FieldType):
    """``(LD, N)`` of any branch on fields ``[B, H, W, C_in] -> [B, H, W, C_out]`` by evaluation:
    ``LD = sum_g ||g.R(x) - R(g.x)||^2`` with the full action (grid rotation and fibres)."""
    x = tf.stop_gradient(x)
    r = branch_fn(x)
    lie = tf.zeros((), r.dtype)
    for g in in_type.generators():
        lie += tf.reduce_sum(tf.square(out_type.act(g, r) - branch_fn(in_type.act(g, x))))
    return lie, tf.reduce_sum(tf.square(r))


def conv_branch_defect(kernel, bias, x, in_type: FieldType, out_type: FieldType):
    """Closed-form ``(LD, N)`` of the convolution branch ``conv(x, W) + b`` (``W`` ``[k, k, C_in, C_out]``, odd
    ``k``, ``"SAME"`` zero padding) on fields ``x`` ``[B, H, W, C_in]``:
    ``LD = sum_g ||conv(x, W - T_g(W)) + b - b rho_out(g)||^2`` (rows; ``g`` acts isometrically, so
    ``||g.R(x) - R(g.x)|| = ||g^{-1}.(g.R(x) - R(g.x))||``), ``N = ||conv(x, W) + b||^2``, all in one
    convolution with the kernels side by side."""
    w = tf.convert_to_tensor(kernel)
    dtype = w.dtype
    x = tf.stop_gradient(tf.convert_to_tensor(x))
    gens = in_type.generators()
    kernels = [w] + [w - transform_kernel(w, g, in_type, out_type) for g in gens]
    y = tf.nn.conv2d(x, tf.concat(kernels, axis=-1), strides=1, padding="SAME")
    parts = tf.split(y, len(kernels), axis=-1)
    if bias is None:
        return tf.add_n([tf.reduce_sum(tf.square(p)) for p in parts[1:]] + [tf.zeros((), dtype)]), tf.reduce_sum(
            tf.square(parts[0])
        )
    lie = tf.zeros((), dtype)
    for g, part in zip(gens, parts[1:]):
        c = bias - tf.linalg.matvec(_const(out_type.matrix(g), dtype), bias, transpose_a=True)  # b - b rho_out(g)
        lie += tf.reduce_sum(tf.square(part + c))
    return lie, tf.reduce_sum(tf.square(parts[0] + bias))


def reference_rot90_penalty(kernel):
    """The published code's penalty ``||W - rot90(W)||^2`` on a conv kernel ``[k, k, C_in, C_out]``, for comparisons
    only: it turns the spatial axes and leaves the fibres alone, so it is not the equivariance condition
    (module notes); never used by the layers."""
    w = tf.convert_to_tensor(kernel)
    turned = tf.transpose(tf.reverse(w, axis=[0]), [1, 0, 2, 3])  # one quarter turn of the taps
    return tf.reduce_sum(tf.square(w - turned))


def finite_group_branch_penalties(layer, inputs, collector=None, method=None):
    """``(LD, N)`` of ``layer``'s branch when its representations are finite-group field types.

    Called by :meth:`RelaxedEquivariantLayer.branch_penalties`.  ``method`` (default ``layer.lie_method``):
    ``"auto"`` / ``"closed_form"`` use the closed forms for linear branches (Gram statistics for the per-pixel
    dense branch, one convolution for a convolution branch); ``"direct"``, ``"jvp"`` and ``"tape"`` (and any
    non-linear branch) evaluate the branch on the transformed input.
    """
    from keras_relaxeq.layers.penalties import _flatten_features, _tensor_ref, gram_statistics

    method = method or layer.lie_method
    in_type, out_type = layer.input_rep.field_type, layer.output_rep.field_type
    x = tf.stop_gradient(tf.convert_to_tensor(inputs))
    variable_dtype = tf.as_dtype(layer.variable_dtype)
    if x.dtype != variable_dtype:  # mixed precision: penalties in the variables' dtype
        x = tf.cast(x, variable_dtype)
    linear = layer.relaxation_branch == "linear"
    closed = linear and method in ("auto", "closed_form")
    conv_branch = getattr(layer, "relaxation_is_conv", False)
    if conv_branch:
        if closed:
            return conv_branch_defect(layer.relaxation_kernel, layer.relaxation_bias, x, in_type, out_type)
        return generic_field_defect(layer.relaxation_branch_fn, x, in_type, out_type)
    flat_x = _flatten_features(x, layer.input_rep)
    if closed:
        ref = _tensor_ref(inputs)
        gram = collector.gram(ref, flat_x) if collector is not None else gram_statistics(flat_x)
        return dense_branch_defect(layer.relaxation_kernel_value(), layer.relaxation_bias, gram, in_type, out_type)
    return generic_pointwise_defect(layer.branch, flat_x, in_type, out_type)
