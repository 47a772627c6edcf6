"""Fast evaluation of a tensor product by irrep type: blocks of equal irreps merged, one matmul per type.

:class:`TypePlan` evaluates the map of a ``kind="tp"`` :class:`~keras_relaxeq.layers.steerable.paths.PathPlan`
without building its dense ``[D1 D2, D_out]`` form.  Its per-type structure is described by small named
types: :class:`TypeBlock` / :class:`TypeGroup` (the blocks of one irrep type), :class:`TypePath` (all paths
between one triple of types and how they are evaluated) and :class:`WeightMatrix` (one matrix of the
permuted kernel).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from keras_relaxeq.groups.clebsch_gordan import clebsch_gordan_for_irreps
from keras_relaxeq.groups.irreps import Irrep, Irreps
from keras_relaxeq.layers.steerable.paths import PathPlan


class TypeBlock(NamedTuple):
    """One ``(mul, ir)`` block inside its :class:`TypeGroup`."""

    block: int  #: index of the block in the irreps
    mul: int  #: its multiplicity
    offset: int  #: index of its first copy among the copies of the type


class TypeGroup(NamedTuple):
    """The blocks of one irrep type, merged into ``mul`` copies (in block order)."""

    ir: Irrep
    blocks: list[TypeBlock]
    mul: int  #: total multiplicity of the type


def type_blocks(irreps: Irreps) -> list[TypeGroup]:
    """Group the ``(mul, ir)`` blocks of ``irreps`` by irrep type (order of first appearance; no empty blocks)."""
    groups = {}
    for b, (mul, ir) in enumerate(irreps):
        if mul == 0:
            continue
        entry = groups.setdefault(ir, [])
        entry.append(TypeBlock(b, mul, sum(blk.mul for blk in entry)))
    return [TypeGroup(ir, blocks, sum(blk.mul for blk in blocks)) for ir, blocks in groups.items()]


#: short keys accepted by ``TypePath[key]`` (the letters of the :class:`TypePlan` docs), with their fields
@dataclasses.dataclass(frozen=True, eq=False)
class TypePath:
    """All paths ``ir1 (x) ir2 -> ir_out`` between one triple of irrep types of a :class:`TypePlan`."""

    type1: int  #: index into ``TypePlan.types1`` (the types of ``x``)
    type2: int  #: index into ``TypePlan.types2`` (the types of the attributes)
    type_out: int  #: index into ``TypePlan.types_out``
    dim1: int  #: ``2 l1 + 1``
    dim2: int  #: ``2 l2 + 1``
    dim_out: int  #: ``2 l_out + 1``
    mul1: int  #: ``U``, total multiplicity of the ``x`` type
    mul2: int  #: ``V``, total multiplicity of the attribute type
    mul_out: int  #: ``W``, total multiplicity of the output type
    cg: np.ndarray  #: Clebsch-Gordan tensor ``[dim1, dim2, dim_out]`` (float64)
    #: ``C[i, 0, k] = diag_coef delta_ik`` with a single ``l = 0`` attribute copy and ``ir1 == ir_out``:
    #: the attribute side is a multiplication by the attribute
    diagonal: bool
    diag_coef: float  #: that ``c``, folded into the weights (1.0 when not ``diagonal``)
    #: evaluation order, whichever costs fewer multiply-adds: ``"Y"`` weights first, ``"Z"`` attributes first
    order: str


class WeightMatrix(NamedTuple):
    """One matrix of the permuted kernel: ``"Y"`` per ``x`` type ``[U, sum V W]``, ``"Z"`` per output type
    ``[sum U V, W]`` (sums over the type paths evaluated in that order)."""

    order: str  #: ``"Y"`` or ``"Z"``
    type: int  #: the ``x`` type (``"Y"``) or the output type (``"Z"``)
    rows: int
    cols: int


class TypePlan:
    """Fast evaluation of a ``kind="tp"`` :class:`PathPlan` by irrep type (same map, far fewer FLOPs).

    The dense ``[D1 D2, D_out]`` map is mostly zeros (block structure, CG sparsity); this plan
    skips them.  Blocks of equal irreps are merged: ``X_t [N, d1, U]`` (copy index last) for
    ``x`` and ``A_t [N, V, d2]`` for the attributes.  Every type triple ``(t1, t2, t3)``
    carrying paths (a :class:`TypePath`) is evaluated in one of two orders, whichever costs less:

    * ``"Y"`` (weights first): ``Y = X_t1 @ W`` (one matmul per input type for all its "Y"
      triples), then mixed with ``M[n, v, i, k] = sum_j C_ijk A[n, v, j]``:
      ``out[n, k, w] += sum_{v,i} M[n, v, i, k] Y[n, i, (v, w)]``;
    * ``"Z"`` (attributes first): ``Z[n, k, (u, v)] = sum_i M[n, v, i, k] X[n, i, u]``, the Z of
      all such triples into an output type concatenated, then one matmul with ``W``.

    For ``l2 = 0`` attributes with ``l1 = l3`` (``C_i0k = c delta_ik``) the mixing is a
    multiplication by the attribute (``c`` is folded into ``W``).  The weight matrices
    (:class:`WeightMatrix`) are a permutation (one gather) of the flat kernel times the path
    normalisations.

    Layouts: with ``"ir_mul"`` features a block already is ``[N, d, mul]``, so ``X_t`` and the
    output need reshapes and concatenations only; ``"mul_ir"`` (e3nn) blocks are transposed on
    the way in and out.

    Attributes: ``types1`` / ``types2`` / ``types_out`` (:class:`TypeGroup` lists), ``triples``
    (:class:`TypePath` list), ``mats`` (:class:`WeightMatrix` list), ``w_index`` / ``w_scale`` (the gather
    of the flat kernel into the matrices, ``weight_numel`` reading a padded zero) and the maps
    ``m_cols``, ``y_cols``, ``z_rows`` from a type to ``[(triple index, column or row start)]``.
    """

    def __init__(self, plan: PathPlan):
        in1, in2, out = plan.in1, plan.in2, plan.out
        self.dims = plan.dims
        self.layout = plan.layout
        self.types1, self.types2, self.types_out = type_blocks(in1), type_blocks(in2), type_blocks(out)
        self.block_dims1 = [mul * ir.dim for mul, ir in in1]
        self.block_dims2 = [mul * ir.dim for mul, ir in in2]
        pos1 = {b: (t, off) for t, group in enumerate(self.types1) for b, _, off in group.blocks}
        pos2 = {b: (t, off) for t, group in enumerate(self.types2) for b, _, off in group.blocks}
        poso = {b: (t, off) for t, group in enumerate(self.types_out) for b, _, off in group.blocks}
        # ---- type triples carrying paths (instruction order) and their evaluation order
        keys = []
        for i1, i2, io in plan.instructions:
            key = (pos1[i1][0], pos2[i2][0], poso[io][0])
            if key not in keys:
                keys.append(key)
        triples = []
        for t1, t2, to in keys:
            (ir1, _, u), (ir2, _, v), (iro, _, w) = self.types1[t1], self.types2[t2], self.types_out[to]
            cg = np.asarray(clebsch_gordan_for_irreps(ir1, ir2, iro), np.float64)  # [d1, d2, d3]
            d1, d3 = ir1.dim, iro.dim
            diag_c = cg[0, 0, 0] if (ir2.dim == 1 and v == 1 and ir1 == iro) else 0.0
            diag = diag_c != 0.0 and np.allclose(cg[:, 0, :], diag_c * np.eye(d1), atol=1e-13)
            mix_y = d3 * w if diag else d1 * d3 * v * w
            mix_z = d1 * u if diag else d1 * d3 * u * v
            cost_y, cost_z = u * v * w * d1 + mix_y, u * v * w * d3 + mix_z + d3 * u * v
            triples.append(
                TypePath(
                    type1=t1,
                    type2=t2,
                    type_out=to,
                    dim1=d1,
                    dim2=ir2.dim,
                    dim_out=d3,
                    mul1=u,
                    mul2=v,
                    mul_out=w,
                    cg=cg,
                    diagonal=bool(diag),
                    diag_coef=float(diag_c) if diag else 1.0,
                    order="Y" if cost_y <= cost_z else "Z",
                )
            )
        self.triples = triples
        # ---- attribute-side CG matrices (non-diagonal triples): M[n, v, (i, k)] = A[n, v, :] @ cg_mat
        self.m_cols = {}  # t2 -> [(triple index, width)]
        cg_mats = {}
        for n, t in enumerate(triples):
            if t.diagonal:
                continue
            self.m_cols.setdefault(t.type2, []).append((n, t.dim1 * t.dim_out))
            cg_mats.setdefault(t.type2, []).append(np.transpose(t.cg, (1, 0, 2)).reshape(t.dim2, t.dim1 * t.dim_out))
        self.cg_mats = {t2: np.concatenate(m, axis=1) for t2, m in cg_mats.items()}
        # ---- weight matrices: "Y" per input type [U, sum V W], "Z" per output type [sum U V, W]
        self.y_cols, self.z_rows = {}, {}  # type -> [(triple index, start)]
        for n, t in enumerate(triples):
            if t.order == "Y":
                entry = self.y_cols.setdefault(t.type1, [])
                entry.append((n, sum(triples[m].mul2 * triples[m].mul_out for m, _ in entry)))
            else:
                entry = self.z_rows.setdefault(t.type_out, [])
                entry.append((n, sum(triples[m].mul1 * triples[m].mul2 for m, _ in entry)))
        mats = []
        for t1, entry in self.y_cols.items():
            mats.append(
                WeightMatrix("Y", t1, self.types1[t1].mul, sum(triples[m].mul2 * triples[m].mul_out for m, _ in entry))
            )
        for to, entry in self.z_rows.items():
            mats.append(
                WeightMatrix("Z", to, sum(triples[m].mul1 * triples[m].mul2 for m, _ in entry), self.types_out[to].mul)
            )
        self.mats = mats
        index = {(k, t): np.full((r, c), -1, np.int64) for k, t, r, c in mats}
        scale = {(k, t): np.zeros((r, c), np.float64) for k, t, r, c in mats}
        start_of = {n: s for entry in list(self.y_cols.values()) + list(self.z_rows.values()) for n, s in entry}
        for (i1, i2, io), sl, coef in zip(plan.instructions, plan.path_slices, plan.path_coefs):
            (t1, off1), (t2, off2), (to, offo) = pos1[i1], pos2[i2], poso[io]
            n = keys.index((t1, t2, to))
            t = triples[n]
            mul1, mul2, mulo = in1[i1].mul, in2[i2].mul, out[io].mul
            u, v, w = np.meshgrid(np.arange(mul1), np.arange(mul2), np.arange(mulo), indexing="ij")
            if t.order == "Y":
                key, rows, cols = ("Y", t1), off1 + u, start_of[n] + (off2 + v) * t.mul_out + offo + w
            else:
                key, rows, cols = ("Z", to), start_of[n] + (off1 + u) * t.mul2 + off2 + v, offo + w
            index[key][rows, cols] = sl.start + (u * mul2 + v) * mulo + w
            scale[key][rows, cols] = coef * t.diag_coef
        flat_index = (
            np.concatenate([index[(k, t)].reshape(-1) for k, t, _, _ in mats]) if mats else np.zeros(0, np.int64)
        )
        self.w_sizes = [m.rows * m.cols for m in mats]
        self.w_pad = bool(np.any(flat_index < 0))  # entries no path reaches read a padded zero
        self.w_index = np.where(flat_index < 0, plan.weight_numel, flat_index)
        self.w_scale = (
            np.concatenate([scale[(k, t)].reshape(-1) for k, t, _, _ in mats]) if mats else np.zeros(0, np.float64)
        )
        # ---- bias (the 0e output type receives the whole bias vector, in order) and output layout
        self.bias_type = next((to for to, group in enumerate(self.types_out) if group.ir.is_scalar()), None)
        self.out_blocks = [(b, poso[b]) for b, (mul, _) in enumerate(out) if mul]
        self.out_identity = all(len(group.blocks) == 1 for group in self.types_out) and [
            poso[b][0] for b, _ in self.out_blocks
        ] == list(range(len(self.types_out)))

    # -- call-time pieces -------------------------------------------------------------------
    @staticmethod
    def _by_type(x2, types, block_dims, copy_last, layout="mul_ir"):
        """``{t: [N, d, U]}`` (``copy_last``) or ``{t: [N, U, d]}`` from flat features ``[N, D]``."""
        nonzero = [d for d in block_dims if d]
        parts = tf.split(x2, nonzero, axis=-1) if len(nonzero) > 1 else [x2]
        part_of = dict(zip([b for b, d in enumerate(block_dims) if d], parts))
        result = {}
        for t, (ir, blocks, total) in enumerate(types):
            if ir.dim == 1:
                cat = [part_of[b] for b, _, _ in blocks]
                xt = cat[0] if len(cat) == 1 else tf.concat(cat, axis=-1)
                result[t] = tf.reshape(xt, [-1, 1, total] if copy_last else [-1, total, 1])
            elif layout == "ir_mul":
                cat = [tf.reshape(part_of[b], [-1, ir.dim, mul]) for b, mul, _ in blocks]
                xt = cat[0] if len(cat) == 1 else tf.concat(cat, axis=2)
                result[t] = xt if copy_last else tf.transpose(xt, [0, 2, 1])
            else:
                cat = [tf.reshape(part_of[b], [-1, mul, ir.dim]) for b, mul, _ in blocks]
                xt = cat[0] if len(cat) == 1 else tf.concat(cat, axis=1)
                result[t] = tf.transpose(xt, [0, 2, 1]) if copy_last else xt
        return result

    def weights(self, kernel, dtype):
        """``{(order, type): matrix}`` of the "Y" and "Z" weight matrices (see :class:`WeightMatrix`)."""
        if not self.mats:
            return {}
        kernel = tf.cast(kernel, dtype)
        if self.w_pad:
            kernel = tf.concat([kernel, tf.zeros([1], dtype)], 0)
        flat = tf.gather(kernel, self.w_index) * tf.constant(self.w_scale, dtype)
        pieces = tf.split(flat, self.w_sizes) if len(self.w_sizes) > 1 else [flat]
        return {(k, t): tf.reshape(p, [r, c]) for (k, t, r, c), p in zip(self.mats, pieces)}

    @staticmethod
    def _mix(m, t, tri: TypePath, order):
        """Contract ``t [N, d1, C]`` with the attribute-side ``m`` -> ``[N, d3, C']`` (see the class doc)."""
        d1, d3, v = tri.dim1, tri.dim_out, tri.mul2
        if tri.diagonal:
            return t if m is None else tf.reshape(m, [-1, 1, 1]) * t
        if v == 1:
            if d1 == 1:
                return tf.reshape(m, [-1, d3, 1]) * t
            if d3 == 1:
                return tf.reduce_sum(tf.reshape(m, [-1, d1, 1]) * t, axis=1, keepdims=True)
            c = t.shape[-1]
            return tf.reduce_sum(tf.reshape(m, [-1, d1, d3, 1]) * tf.reshape(t, [-1, d1, 1, c]), axis=1)
        mt = tf.transpose(tf.reshape(m, [-1, v, d1, d3]), [0, 2, 3, 1])  # [N, d1, d3, V]
        if order == "Y":  # t = Y [N, d1, V W] -> sum over i and v
            w = tri.mul_out
            return tf.reduce_sum(tf.reshape(mt, [-1, d1, d3, v, 1]) * tf.reshape(t, [-1, d1, 1, v, w]), axis=[1, 3])
        u = tri.mul1  # t = X [N, d1, U] -> Z [N, d3, U V]
        z = tf.reduce_sum(tf.reshape(mt, [-1, d1, d3, 1, v]) * tf.reshape(t, [-1, d1, 1, u, 1]), axis=1)
        return tf.reshape(z, [-1, d3, u * v])

    def __call__(self, x2, a2, kernel, bias, dtype):
        """Tensor product of ``x2 [N, D1]`` and ``a2 [N, D2]`` (None: ``1x0e`` = 1), + bias, as ``[N, D_out]``."""
        n = tf.shape(x2)[0]
        xt = self._by_type(x2, self.types1, self.block_dims1, True, self.layout)  # {t1: [N, d1, U]}
        at = {} if a2 is None else self._by_type(a2, self.types2, self.block_dims2, False, self.layout)
        # attribute side: diagonal triples use A itself, the others M = A @ CG
        m_of = {}
        for k, tri in enumerate(self.triples):
            if tri.diagonal:
                m_of[k] = None if a2 is None else at[tri.type2]
        for t2, cols in self.m_cols.items():
            ir2, _, v = self.types2[t2]
            a = tf.reshape(at[t2], [-1, ir2.dim])
            cg = tf.constant(self.cg_mats[t2], dtype)
            m = tf.matmul(a, cg) if ir2.dim > 1 else a * cg
            m = tf.reshape(m, [-1, v * cg.shape[1]]) if v > 1 else m
            widths = [v * wd for _, wd in cols]
            if v > 1:  # [N, V, sum] -> per triple [N, V * width]
                m = tf.reshape(m, [-1, v, cg.shape[1]])
                pieces = tf.split(m, [wd for _, wd in cols], axis=-1) if len(cols) > 1 else [m]
                pieces = [tf.reshape(p, [-1, w]) for p, w in zip(pieces, widths)]
            else:
                pieces = tf.split(m, widths, axis=-1) if len(cols) > 1 else [m]
            for (k, _), p in zip(cols, pieces):
                m_of[k] = p
        ws = self.weights(kernel, dtype)
        contrib = {to: [] for to in range(len(self.types_out))}
        for t1, entry in self.y_cols.items():  # weights first
            d1, u = self.types1[t1].ir.dim, self.types1[t1].mul
            wy = ws[("Y", t1)]
            y = tf.reshape(tf.matmul(tf.reshape(xt[t1], [-1, u]), wy), [-1, d1, wy.shape[1]])
            sizes = [self.triples[k].mul2 * self.triples[k].mul_out for k, _ in entry]
            pieces = tf.split(y, sizes, axis=-1) if len(sizes) > 1 else [y]
            for (k, _), p in zip(entry, pieces):
                tri = self.triples[k]
                contrib[tri.type_out].append(self._mix(m_of[k], p, tri, "Y"))
        for to, entry in self.z_rows.items():  # attributes first
            d3 = self.types_out[to].ir.dim
            zs = [self._mix(m_of[k], xt[self.triples[k].type1], self.triples[k], "Z") for k, _ in entry]
            z = zs[0] if len(zs) == 1 else tf.concat(zs, axis=-1)
            wz = ws[("Z", to)]
            contrib[to].append(tf.reshape(tf.matmul(tf.reshape(z, [-1, wz.shape[0]]), wz), [-1, d3, wz.shape[1]]))
        outs = []
        for to, (iro, _, mulo) in enumerate(self.types_out):
            parts = contrib[to]
            if parts:
                o = parts[0] if len(parts) == 1 else tf.add_n(parts)  # [N, d3, W]
            else:
                o = tf.zeros(tf.stack([n, iro.dim, mulo]), dtype)
            if bias is not None and to == self.bias_type:
                o = o + tf.cast(bias, dtype)
            if iro.dim == 1:
                outs.append(tf.reshape(o, [-1, mulo]))
            else:  # [N, W, d3] (mul_ir) or [N, d3, W] (ir_mul)
                outs.append(o if self.layout == "ir_mul" else tf.transpose(o, [0, 2, 1]))
        if self.out_identity:
            flat = [tf.reshape(o, [-1, ir.dim * mul]) for o, (ir, _, mul) in zip(outs, self.types_out)]
            return flat[0] if len(flat) == 1 else tf.concat(flat, axis=-1)
        split = {}
        for to, (iro, blocks, _) in enumerate(self.types_out):
            muls = [mul for _, mul, _ in blocks]
            axis = 2 if (self.layout == "ir_mul" and iro.dim > 1) else 1
            pieces = tf.split(outs[to], muls, axis=axis) if len(muls) > 1 else [outs[to]]
            for (b, mul, _), piece in zip(blocks, pieces):
                split[b] = tf.reshape(piece, [-1, mul * iro.dim])
        flat = [split[b] for b, _ in self.out_blocks]
        return flat[0] if len(flat) == 1 else tf.concat(flat, axis=-1)


__all__ = ["TypeBlock", "TypeGroup", "TypePath", "TypePlan", "WeightMatrix", "type_blocks"]
