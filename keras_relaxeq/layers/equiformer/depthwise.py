"""Depthwise tensor product with per-edge weights (Equiformer's ``DepthwiseTensorProduct``, e3nn ``"uvu"``)."""

from __future__ import annotations

import math
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from keras_relaxeq.groups.clebsch_gordan import clebsch_gordan_for_irreps
from keras_relaxeq.groups.irreps import Irrep, Irreps
from keras_relaxeq.groups.irreps_rep import IrrepsRep
from keras_relaxeq.groups.representations import TrivialRep
from keras_relaxeq.layers.steerable.parsing import irreps_arg
from keras_relaxeq.utils import set_untracked

register = keras.saving.register_keras_serializable(package="keras_relaxeq")


class DepthwisePath(NamedTuple):
    """One path ``x block (mul, ir1) (x) sh block ir2 -> output block``: ``mul`` weights, one per copy."""

    block_in: int  #: index of the input block
    block_sh: int  #: index of the spherical-harmonics block
    block_out: int  #: index of the output block
    weight_offset: int  #: first of its ``mul`` weights in the per-edge weight vector
    cg: np.ndarray  #: ``C [d1, d2, d3]`` times the path normalisation (float64)


def depthwise_plan(irreps_in: Irreps, irreps_sh: Irreps, irreps_filter: Irreps):
    """``(irreps_out, paths, num_weights)`` of a depthwise tensor product.

    Every input block ``(mul, ir1)`` and every spherical-harmonics irrep ``ir2`` give the output irreps ``ir3`` of
    ``ir1 (x) ir2`` (parity ``p1 p2``) that occur in ``irreps_filter``; the paths of one input block into one
    ``ir3`` (several ``ir2``) share an output block ``(mul, ir3)``.  Output blocks follow the input blocks, and
    inside a block the order of ``ir3`` in ``irreps_filter``.  Path normalisation (e3nn ``"component"``):
    ``sqrt((2 l3 + 1) / n)`` with ``n`` the number of paths into the block.
    """
    allowed = [ir for mul, ir in irreps_filter if mul > 0]
    targets = []  # (block_in, ir3, [block_sh ...])
    for b1, (mul1, ir1) in enumerate(irreps_in):
        if mul1 == 0:
            continue
        for ir3 in dict.fromkeys(allowed):
            shs = [b2 for b2, (mul2, ir2) in enumerate(irreps_sh) if mul2 and ir3 in list(ir1 * ir2)]
            if shs:
                targets.append((b1, Irrep(ir3), shs))
    irreps_out = Irreps([(irreps_in[b1].mul, ir3) for b1, ir3, _ in targets])
    paths, offset = [], 0
    for bo, (b1, ir3, shs) in enumerate(targets):
        mul1, ir1 = irreps_in[b1]
        coef = math.sqrt(ir3.dim / len(shs))
        for b2 in shs:
            cg = np.asarray(clebsch_gordan_for_irreps(ir1, irreps_sh[b2].ir, ir3)) * coef
            paths.append(DepthwisePath(b1, b2, bo, offset, cg))
            offset += mul1
    return irreps_out, paths, offset


@register
class DepthwiseTensorProduct(keras.layers.Layer):
    """``out[.., u, block] = sum_paths w[.., path, u] C (x[.., u] (x) sh)``: each copy ``u`` of an input irrep is
    multiplied with the edge's spherical harmonics and weighted by its own per-edge weight (no mixing of copies).

    Called on ``(x [..., irreps_in.dim], sh [..., irreps_sh.dim], weights [..., num_weights])`` with equal
    leading axes (edges); the weights are invariant (a radial MLP's output).  Features in the ``"mul_ir"``
    layout; spherical harmonics one copy per degree.  No trainable weights.  Output irreps: see
    :func:`depthwise_plan` (``irreps_filter`` selects the output irrep types, e.g. the node irreps).
    """

    def __init__(self, irreps_in, irreps_sh, irreps_filter, **kwargs):
        super().__init__(**kwargs)
        owner = f"DepthwiseTensorProduct '{self.name}'"
        set_untracked(self, "irreps_in", irreps_arg(irreps_in, "irreps_in", owner))
        set_untracked(self, "irreps_sh", irreps_arg(irreps_sh, "irreps_sh", owner))
        set_untracked(self, "irreps_filter", irreps_arg(irreps_filter, "irreps_filter", owner))
        if any(mul > 1 for mul, _ in self.irreps_sh):
            raise ValueError(f"{owner}: irreps_sh must have one copy per irrep, got '{self.irreps_sh}'.")
        out, paths, num_weights = depthwise_plan(self.irreps_in, self.irreps_sh, self.irreps_filter)
        if not paths:
            raise ValueError(
                f"{owner}: no path from '{self.irreps_in}' (x) '{self.irreps_sh}' into the irreps of "
                f"'{self.irreps_filter}'; check the parities."
            )
        set_untracked(self, "irreps_out", out)
        set_untracked(self, "paths", paths)
        self.num_weights = num_weights

    @property
    def equivariance_input_reps(self):
        """``(x, sh, weights)`` representations for :func:`keras_relaxeq.testing.assert_equivariant`."""
        return (IrrepsRep(self.irreps_in), IrrepsRep(self.irreps_sh), TrivialRep(self.num_weights))

    @property
    def output_rep(self):
        return IrrepsRep(self.irreps_out)

    def call(self, inputs):
        x, sh, w = (tf.cast(t, self.compute_dtype) for t in inputs)
        dtype = x.dtype
        lead = tf.shape(x)[:-1]
        x2 = tf.reshape(x, [-1, self.irreps_in.dim])
        sh2 = tf.reshape(sh, [-1, self.irreps_sh.dim])
        w2 = tf.reshape(w, [-1, self.num_weights])
        in_blocks = tf.split(x2, [m * ir.dim for m, ir in self.irreps_in], axis=-1)
        sh_blocks = tf.split(sh2, [ir.dim for _, ir in self.irreps_sh], axis=-1)
        out_blocks = [None] * len(self.irreps_out)
        for path in self.paths:
            mul, ir1 = self.irreps_in[path.block_in]
            xb = tf.reshape(in_blocks[path.block_in], [-1, mul, ir1.dim])
            d3 = path.cg.shape[2]
            # M[n, i, k] = sum_j C_ijk sh[n, j]: the edge's map from ir1 to ir3
            m = tf.einsum("nj,ijk->nik", sh_blocks[path.block_sh], tf.constant(path.cg, dtype))
            t = tf.matmul(xb, m) * w2[:, path.weight_offset : path.weight_offset + mul, None]  # [n, mul, d3]
            t = tf.reshape(t, [-1, mul * d3])
            out_blocks[path.block_out] = t if out_blocks[path.block_out] is None else out_blocks[path.block_out] + t
        out = tf.concat(out_blocks, axis=-1) if len(out_blocks) > 1 else out_blocks[0]
        return tf.reshape(out, tf.concat([lead, [self.irreps_out.dim]], 0))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0][:-1]) + (self.irreps_out.dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            irreps_in=str(self.irreps_in), irreps_sh=str(self.irreps_sh), irreps_filter=str(self.irreps_filter)
        )
        return config


__all__ = ["DepthwisePath", "DepthwiseTensorProduct", "depthwise_plan"]
