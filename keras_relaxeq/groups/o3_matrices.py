"""Representation matrices of O(3) irreps and of direct sums of them (Wigner D times the parity sign).

The lowest layer of the irreps code: it knows irreps only as objects with ``l``, ``p`` and ``dim`` (and sums of
them as ``(mul, irrep)`` pairs), so the irreps algebra (:mod:`keras_relaxeq.groups.irreps`) and the
representation classes (:mod:`keras_relaxeq.groups.irreps_rep`) both build on it without importing each other
in a circle.
"""

from __future__ import annotations

import tensorflow as tf

from keras_relaxeq.groups.so3 import wigner_D


def split_o3(matrices):
    """``g -> (R, s)`` with ``s = sign(det g)`` and ``R = s g`` proper, both float64."""
    g = tf.cast(tf.convert_to_tensor(matrices), tf.float64)
    s = tf.where(tf.linalg.det(g) < 0, tf.constant(-1.0, tf.float64), tf.constant(1.0, tf.float64))
    return g * s[..., None, None], s


def irrep_matrix(ir, split, dtype=None, cache=None) -> tf.Tensor:
    """``(p if s == -1 else 1) * D_l(R)`` of the irrep ``ir`` (``ir.l``, ``ir.p``) for ``split = split_o3(g)``."""
    proper, s = split
    if cache is not None and ir.l in cache:
        d = cache[ir.l]
    else:
        d = wigner_D(ir.l, proper, dtype=tf.float64)
        if cache is not None:
            cache[ir.l] = d
    if ir.p == -1:
        d = d * s[..., None, None]
    return tf.cast(d, dtype or tf.float64)


def irreps_matrix(irreps, rotations, dtype=None, ir_mul: bool = False) -> tf.Tensor:
    """Dense block-diagonal matrix ``[..., dim, dim]`` of ``irreps`` (``(mul, irrep)`` pairs) for O(3) matrices.

    ``ir_mul``: the e3nn ``"ir_mul"`` layout (component-major within a block) instead of ``"mul_ir"``.
    """
    rotations = tf.convert_to_tensor(rotations)
    out_dtype = dtype or (rotations.dtype if rotations.dtype.is_floating else tf.float64)
    split = split_o3(rotations)
    batch = tf.shape(split[0])[:-2]
    cache: dict = {}
    dim = sum(mul * ir.dim for mul, ir in irreps)
    rows = []
    offset = 0
    eq = "uv,...ij->...iujv" if ir_mul else "uv,...ij->...uivj"
    for mul, ir in irreps:
        if mul == 0:
            continue
        d = irrep_matrix(ir, split, tf.float64, cache)
        block = tf.einsum(eq, tf.eye(mul, dtype=tf.float64), d)
        block = tf.reshape(block, tf.concat([batch, [mul * ir.dim, mul * ir.dim]], 0))
        pad = [[0, 0]] * (block.shape.rank - 1) + [[offset, dim - offset - mul * ir.dim]]
        rows.append(tf.pad(block, pad))
        offset += mul * ir.dim
    return tf.cast(tf.concat(rows, axis=-2), out_dtype)
