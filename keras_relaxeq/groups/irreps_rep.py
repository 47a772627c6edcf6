"""O(3) acting on steerable features ``[..., irreps.dim]``: :class:`IrrepsRep` and the irrep matrices.

An element ``g = s R`` of O(3) (``s = det g``, ``R`` proper) acts on the irrep ``(l, p)`` as
``(p if s == -1 else 1) * wigner_D(l, R)`` (:func:`keras_relaxeq.groups.so3.wigner_D`); the Lie
algebra acts through ``so3_generators(l)`` (parity does not enter it).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_relaxeq.groups.irreps import Irreps
from keras_relaxeq.groups.irreps_layouts import check_layout
from keras_relaxeq.groups.o3_matrices import irrep_matrix, irreps_matrix, split_o3
from keras_relaxeq.groups.representations import Representation
from keras_relaxeq.groups.so3 import so3_generators_numpy


class IrrepsRep(Representation):
    """O(3) acting on steerable features ``[..., irreps.dim]`` laid out as ``irreps``.

    ``layout``: ``"mul_ir"`` (default, e3nn: block ``(mul, ir)`` stored copy-major, entry
    ``u * d + i``) or ``"ir_mul"`` (component-major, entry ``i * mul + u``; see
    :func:`layout_permutation`).  Everything below holds in either layout.

    * ``generators_numpy()``: ``[3, dim, dim]``, block diagonal with
      ``kron(I_mul, so3_generators(l))`` per ``(mul, (l, p))`` block (``kron(G, I_mul)`` in
      ``"ir_mul"``).  Parity does not enter the Lie algebra.
    * ``apply_generators(v)``: the same, block by block (no dense ``dim x dim`` matrix).
    * ``transform(g, x)``: ``g`` is ``[3, 3]`` or one matrix per batch element
      ``[B, 3, 3]`` (``x`` is ``[B, ..., dim]``) and may be improper: ``g = s R`` acts on
      ``(l, p)`` as ``(p if s == -1 else 1) * wigner_D(l, R)``.  Features transform as
      ``x_block -> D x_block`` per copy (column-vector convention; for ``1o``
      this is ``x @ g^T`` exactly like :class:`VectorRep`).
    * ``matrix(g)``: the dense block-diagonal ``[..., dim, dim]``.
    """

    def __init__(self, irreps, layout="mul_ir"):
        self.irreps = Irreps(irreps)
        self.layout = check_layout(layout, "IrrepsRep")
        self.feature_shape = (self.irreps.dim,)

    @property
    def is_trivial(self) -> bool:
        return all(ir.is_scalar() for mul, ir in self.irreps if mul > 0)

    @property
    def _ir_mul(self) -> bool:
        return self.layout == "ir_mul"

    def generators_numpy(self) -> np.ndarray:
        dim = self.irreps.dim
        out = np.zeros((3, dim, dim))
        for sl, (mul, ir) in zip(self.irreps.slices(), self.irreps):
            if mul == 0 or ir.l == 0:
                continue
            g = so3_generators_numpy(ir.l)
            kron = (lambda k: np.kron(g[k], np.eye(mul))) if self._ir_mul else (lambda k: np.kron(np.eye(mul), g[k]))
            out[:, sl, sl] = np.stack([kron(k) for k in range(3)])
        return out

    def _blocks(self, x):
        """Split ``[..., dim]`` into ``(mul, ir, block)`` with blocks ``[..., mul, 2l+1]``
        (``"mul_ir"``) or ``[..., 2l+1, mul]`` (``"ir_mul"``)."""
        lead = tf.shape(x)[:-1]
        for sl, (mul, ir) in zip(self.irreps.slices(), self.irreps):
            if mul == 0:
                continue
            shape = [ir.dim, mul] if self._ir_mul else [mul, ir.dim]
            block = tf.reshape(x[..., sl], tf.concat([lead, shape], 0))
            yield mul, ir, block

    def _merge(self, blocks, lead):
        flat = [tf.reshape(b, tf.concat([lead, [mul * ir.dim]], 0)) for mul, ir, b in blocks]
        if not flat:
            raise ValueError("IrrepsRep with empty irreps has no features.")
        return flat[0] if len(flat) == 1 else tf.concat(flat, axis=-1)

    def apply_generators(self, v, transpose: bool = False) -> tf.Tensor:
        """``v @ G_k^T`` (``v @ G_k`` with ``transpose``), k = 0, 1, 2: ``[..., dim] -> [3, ..., dim]``."""
        v = tf.convert_to_tensor(v)
        if self._ir_mul:
            eq = "...jm,kij->k...im" if not transpose else "...jm,kji->k...im"
        else:
            eq = "...mj,kij->k...mi" if not transpose else "...mj,kji->k...mi"
        lead = tf.concat([[3], tf.shape(v)[:-1]], 0)
        out = []
        for mul, ir, block in self._blocks(v):
            if ir.l == 0:
                res = tf.zeros(tf.concat([[3], tf.shape(block)], 0), dtype=v.dtype)
            else:
                res = tf.einsum(eq, block, tf.constant(so3_generators_numpy(ir.l), dtype=v.dtype))
            out.append((mul, ir, res))
        return self._merge(out, lead)

    def matrix(self, rotations, dtype=None) -> tf.Tensor:
        """Dense block-diagonal representation matrix ``[..., dim, dim]`` of O(3) matrices ``[..., 3, 3]``."""
        return irreps_matrix(self.irreps, rotations, dtype=dtype, ir_mul=self._ir_mul)

    def transform(self, rotations, x):
        x = tf.convert_to_tensor(x)
        rotations = tf.convert_to_tensor(rotations)
        if rotations.shape.rank not in (2, 3):
            raise ValueError(f"rotations must be [3, 3] or [batch, 3, 3], got shape {rotations.shape}.")
        batched = rotations.shape.rank == 3
        split = split_o3(rotations)
        cache: dict = {}
        out = []
        for mul, ir, block in self._blocks(x):
            if ir.is_scalar():
                out.append((mul, ir, block))
                continue
            d = irrep_matrix(ir, split, x.dtype, cache)
            if not batched:
                res = tf.einsum("...jm,ij->...im" if self._ir_mul else "...j,ij->...i", block, d)
            else:
                # block [B, ..., mul, d] ([B, ..., d, mul]); d [B, d, d] -> [B, 1, ..., 1, d, d]
                ones = [1] * (block.shape.rank - 3)
                d = tf.reshape(d, tf.concat([tf.shape(d)[:1], ones, [ir.dim, ir.dim]], 0))
                res = tf.linalg.matmul(d, block) if self._ir_mul else tf.linalg.matmul(block, d, transpose_b=True)
            out.append((mul, ir, res))
        return self._merge(out, tf.shape(x)[:-1])

    def __eq__(self, other):
        return (
            type(self) is type(other)
            and self.irreps.simplify() == other.irreps.simplify()
            and self.layout == other.layout
        )

    def __hash__(self):
        return hash((type(self).__name__, tuple(self.irreps.simplify()), self.layout))

    def __repr__(self):
        return (
            f"IrrepsRep('{self.irreps}')"
            if self.layout == "mul_ir"
            else f"IrrepsRep('{self.irreps}', layout='{self.layout}')"
        )


__all__ = ["IrrepsRep"]
