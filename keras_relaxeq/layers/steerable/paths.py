"""Index maps of the weighted bilinear maps of the steerable layers: paths, weight layout, dense map.

A path is one :class:`Instruction` ``(i_in1, i_in2, i_out)`` (block indices, as in e3nn's
``Instruction``); :class:`PathPlan` enumerates them, fixes the order of the flat weight vector and the
path normalisations, and precomputes the gather/scatter maps of the dense ``[D1 D2, D_out]`` map.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from keras_relaxeq.groups.clebsch_gordan import clebsch_gordan_for_irreps
from keras_relaxeq.groups.irreps import Irreps


class Instruction(NamedTuple):
    """One path ``in1[i_in1] (x) in2[i_in2] -> out[i_out]`` of a :class:`PathPlan` (``(mul, ir)`` block indices).

    Its weights are a ``mul1 x mul2 x mul_out`` block (``"uvw"``) of the flat kernel.
    """

    i_in1: int
    i_in2: int
    i_out: int


def block_offsets(irreps: Irreps):
    """Start of every ``(mul, ir)`` block on the feature axis."""
    out, start = [], 0
    for mul_ir in irreps:
        out.append(start)
        start += mul_ir.dim
    return out


def in_block(u, i, mul, d, layout):
    """Position of copy ``u``, component ``i`` inside a ``(mul, ir)`` block of the given layout."""
    return i * mul + u if layout == "ir_mul" else u * d + i


def scalar_positions(irreps: Irreps):
    """Feature indices of the ``0e`` components and the index of their ``(mul, ir)`` term."""
    pos, term = [], []
    for t, (off, (mul, ir)) in enumerate(zip(block_offsets(irreps), irreps)):
        if ir.is_scalar():
            pos.extend(range(off, off + mul))
            term.extend([t] * mul)
    return np.asarray(pos, np.int64), np.asarray(term, np.int64)


class PathPlan:
    """Precomputed index maps of a weighted bilinear map ``in1 (x) in2 -> out``.

    The dense map is ``T[a, b, c] = sum_paths coef * w[path, u, v, w] * C[i, j, k]`` with
    ``a = off1 + u d1 + i`` etc.; each entry of ``T`` belongs to at most one path, so
    ``T = scatter(positions, gather(kernel, weight_index) * values)``.

    ``kind="tp"``: all paths with ``ir_out`` in ``ir1 * ir2`` (Clebsch-Gordan, ``"uvw"``
    weights, e3nn ``FullyConnectedTensorProduct`` order).  ``kind="linear"``: ``in2`` is
    ``1x0e`` and only ``ir1 == ir_out`` paths with the identity (e3nn ``Linear``).

    ``normalization``: ``"segnn"`` (``coef = sqrt(2 l3 + 1)``, init bound
    ``1/sqrt(fan_in)``: SEGNN's ``tp_rescale=True``), ``"e3nn"`` (``coef = sqrt((2 l3 + 1) /
    fan_in)``: e3nn ``"component"``/``"element"``, used by ``tp_rescale=False``) or
    ``"linear"`` (``coef = 1/sqrt(fan_in)``, e3nn ``Linear``).

    ``layout``: the feature layout of ``in1``, ``in2`` and ``out`` (``"mul_ir"`` or ``"ir_mul"``,
    see :func:`~keras_relaxeq.groups.layout_permutation`); the weights do not depend on it.

    Attributes: ``instructions`` (one :class:`Instruction` per path, in weight order), ``fan_in``
    (per output block), ``path_slices`` / ``path_coefs`` (each path's slice of the flat kernel and its
    normalisation ``coef``), ``weight_numel``, ``init_scales`` (per-weight init bound), the
    scatter maps ``positions`` / ``windex`` / ``values`` of the dense map, and ``bias_positions`` /
    ``bias_scales`` of the ``0e`` bias.
    """

    def __init__(self, in1: Irreps, in2: Irreps, out: Irreps, kind: str, normalization: str, layout: str = "mul_ir"):
        self.in1, self.in2, self.out = in1, in2, out
        self.layout = layout
        self.dims = (in1.dim, in2.dim, out.dim)
        instructions = []
        for i1, (mul1, ir1) in enumerate(in1):
            for i2, (mul2, ir2) in enumerate(in2):
                for io, (mulo, iro) in enumerate(out):
                    if mul1 * mul2 * mulo == 0:
                        continue
                    allowed = (ir1 == iro and ir2.is_scalar()) if kind == "linear" else iro in list(ir1 * ir2)
                    if allowed:
                        instructions.append(Instruction(i1, i2, io))
        self.instructions = instructions
        fan_in = np.zeros(len(out), np.int64)
        for i1, i2, io in instructions:
            fan_in[io] += in1[i1].mul * in2[i2].mul
        self.fan_in = fan_in

        off1, off2, offo = block_offsets(in1), block_offsets(in2), block_offsets(out)
        d1_all, d2_all, do_all = self.dims
        positions, windex, values, scales = [], [], [], []
        woff = 0
        self.path_slices = []
        self.path_coefs = []
        for i1, i2, io in instructions:
            (mul1, ir1), (mul2, ir2), (mulo, iro) = in1[i1], in2[i2], out[io]
            if kind == "linear":
                cg = np.eye(iro.dim)[:, None, :]
            else:
                cg = np.asarray(clebsch_gordan_for_irreps(ir1, ir2, iro))
            f = float(fan_in[io])
            if normalization == "segnn":
                coef, bound = math.sqrt(iro.dim), 1.0 / math.sqrt(f)
            elif normalization == "e3nn":
                coef, bound = math.sqrt(iro.dim / f), 1.0
            elif normalization == "linear":
                coef, bound = 1.0 / math.sqrt(f), 1.0
            else:  # pragma: no cover
                raise ValueError(normalization)
            self.path_coefs.append(coef)
            ii, jj, kk = np.nonzero(np.abs(cg) > 0)
            vals = cg[ii, jj, kk] * coef
            u, v, w = (
                g.reshape(-1, 1) for g in np.meshgrid(np.arange(mul1), np.arange(mul2), np.arange(mulo), indexing="ij")
            )
            a = off1[i1] + in_block(u, ii[None], mul1, ir1.dim, layout)
            b = off2[i2] + in_block(v, jj[None], mul2, ir2.dim, layout)
            c = offo[io] + in_block(w, kk[None], mulo, iro.dim, layout)
            positions.append(((a * d2_all + b) * do_all + c).reshape(-1))
            windex.append(np.broadcast_to(woff + (u * mul2 + v) * mulo + w, a.shape).reshape(-1))
            values.append(np.broadcast_to(vals[None], a.shape).reshape(-1))
            n = mul1 * mul2 * mulo
            scales.append(np.full(n, bound))
            self.path_slices.append(slice(woff, woff + n))
            woff += n
        self.weight_numel = woff
        cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)  # noqa: E731
        self.positions = cat(positions, np.int64)[:, None]
        self.windex = cat(windex, np.int64)
        self.values = cat(values, np.float64)
        self.init_scales = cat(scales, np.float64)
        self.bias_positions, bias_terms = scalar_positions(out)
        self.bias_scales = np.array([1.0 / math.sqrt(max(fan_in[t], 1)) for t in bias_terms], np.float64)

    def dense(self, kernel, dtype):
        """The dense map ``[D1 * D2, D_out]`` (zeros when there is no path)."""
        d1, d2, do = self.dims
        if self.weight_numel == 0:
            return tf.zeros([d1 * d2, do], dtype)
        kernel = tf.cast(kernel, dtype)
        updates = tf.gather(kernel, self.windex) * tf.constant(self.values, dtype)
        flat = tf.scatter_nd(tf.constant(self.positions), updates, [d1 * d2 * do])
        return tf.reshape(flat, [d1 * d2, do])

    def dense_bias(self, bias, dtype):
        """The ``0e`` bias scattered into a dense ``[D_out]`` vector."""
        return tf.scatter_nd(tf.constant(self.bias_positions[:, None]), tf.cast(bias, dtype), [self.dims[2]])


__all__ = ["Instruction", "PathPlan", "block_offsets", "in_block", "scalar_positions"]
