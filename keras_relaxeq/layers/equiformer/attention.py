"""Equivariant graph attention with MLP attention and non-linear messages (Equiformer, Liao and Smidt 2023)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from keras_relaxeq.groups.irreps import Irreps
from keras_relaxeq.layers.equiformer.depthwise import DepthwiseTensorProduct
from keras_relaxeq.layers.equiformer.radial import RadialMLP
from keras_relaxeq.layers.steerable import Gate, O3Linear, gate_irreps
from keras_relaxeq.layers.steerable.parsing import irreps_arg
from keras_relaxeq.utils import set_untracked

register = keras.saving.register_keras_serializable(package="keras_relaxeq")


def head_irreps(irreps: Irreps, num_heads: int) -> Irreps:
    """Irreps of one attention head: ``ceil(mul / num_heads)`` copies of every irrep of ``irreps``."""
    return Irreps([(max(1, -(-mul // num_heads)), ir) for mul, ir in irreps if mul > 0])


def repeat_heads(irreps: Irreps, num_heads: int) -> Irreps:
    """``num_heads`` times every multiplicity: copy ``u`` of a block belongs to head ``u // mul_head``."""
    return Irreps([(mul * num_heads, ir) for mul, ir in irreps])


def head_of_feature(irreps_head: Irreps, num_heads: int) -> np.ndarray:
    """One-hot ``[num_heads, dim]`` of the head owning each feature of ``repeat_heads(irreps_head, num_heads)``."""
    heads = []
    for mul, ir in irreps_head:
        heads.append(np.repeat(np.arange(num_heads), mul * ir.dim))  # mul_ir: copies of head h are contiguous
    heads = np.concatenate(heads)
    return (heads[None, :] == np.arange(num_heads)[:, None]).astype(np.float64)


@register
class EquivariantGraphAttention(keras.layers.Layer):
    """Equiformer's equivariant graph attention on dense graphs, with MLP attention and non-linear messages.

    Called on ``(x [B, A, D], sh [B, A, A, S], rbf [B, A, A, R], edge_weight [B, A, A])`` where edge ``(i, j)``
    carries the spherical harmonics and radial basis of ``pos_j - pos_i`` and ``edge_weight`` is the neighbour
    mask times the cutoff envelope.  For every edge ``j -> i``:

    1. ``x_ij = lin_dst(x_i) + lin_src(x_j)`` (two :class:`O3Linear`);
    2. ``f_ij = lin_mid(DTP_1(x_ij, sh_ij, radial_1(rbf_ij)))``: a :class:`DepthwiseTensorProduct` with radial-MLP
       weights, then an :class:`O3Linear` to ``num_heads * c`` attention scalars and the input of a gate;
    3. attention logits ``a_h . LeakyReLU(f_ij^(0), 0.2)`` per head ``h`` (invariant: scalars only),
       normalised over the neighbours ``j`` by a softmax weighted by ``edge_weight`` (so a neighbour fades out
       smoothly at the cutoff);
    4. values (non-linear messages) ``v_ij = lin_value(DTP_2(Gate(f_ij), sh_ij, radial_2(rbf_ij)))``; the radial
       weights carry ``edge_weight`` and ``lin_value`` has no bias, so ``v_ij -> 0`` at the cutoff;
    5. ``out_i = proj(concat_h sum_j alpha_ijh v_ijh)`` (an :class:`O3Linear` back to ``irreps_node``).

    Heads: every irrep of ``irreps_node`` gets ``ceil(mul / num_heads)`` copies per head (:func:`head_irreps`);
    the ``0e`` copies of a head are its attention channels.  Every linear map is an :class:`O3Linear`, none
    relaxed.  Args: ``irreps_node``, ``irreps_sh``, ``num_heads``, ``radial_hidden`` (hidden widths of the two
    radial MLPs; their input width is that of ``rbf``).
    """

    def __init__(self, irreps_node, irreps_sh="1x0e+1x1o+1x2e", num_heads=4, radial_hidden=(64, 64), **kwargs):
        super().__init__(**kwargs)
        owner = f"EquivariantGraphAttention '{self.name}'"
        set_untracked(self, "irreps_node", irreps_arg(irreps_node, "irreps_node", owner))
        set_untracked(self, "irreps_sh", irreps_arg(irreps_sh, "irreps_sh", owner))
        self.num_heads = int(num_heads)
        if self.num_heads < 1:
            raise ValueError(f"{owner}: num_heads must be >= 1, got {num_heads}.")
        self.radial_hidden = tuple(int(h) for h in radial_hidden)
        node, sh, h = self.irreps_node, self.irreps_sh, self.num_heads
        per_head = head_irreps(node, h)
        scalars_per_head = max(1, per_head.count("0e"))
        set_untracked(self, "irreps_value", repeat_heads(per_head, h))
        set_untracked(self, "irreps_alpha", Irreps(f"{h * scalars_per_head}x0e"))
        scalars, gated, gate_in = gate_irreps(node)
        set_untracked(self, "irreps_gate_in", gate_in)
        self.alpha_channels = scalars_per_head
        set_untracked(self, "head_onehot", head_of_feature(per_head, h))
        cfg = dict(relaxed=False, dtype=self.dtype_policy)
        self.lin_dst = O3Linear(node, node, name="lin_dst", **cfg)
        self.lin_src = O3Linear(node, node, use_bias=False, name="lin_src", **cfg)
        self.dtp_1 = DepthwiseTensorProduct(node, sh, node, name="dtp_1", dtype=self.dtype_policy)
        self.radial_1 = RadialMLP(self.dtp_1.num_weights, self.radial_hidden, name="radial_1", dtype=self.dtype_policy)
        self.lin_mid = O3Linear(self.dtp_1.irreps_out, self.irreps_alpha + gate_in, name="lin_mid", **cfg)
        self.gate = Gate(scalars, gated, name="gate", **cfg)
        self.dtp_2 = DepthwiseTensorProduct(node, sh, node, name="dtp_2", dtype=self.dtype_policy)
        self.radial_2 = RadialMLP(self.dtp_2.num_weights, self.radial_hidden, name="radial_2", dtype=self.dtype_policy)
        # no bias: a value vanishes with its tensor-product weights at the cutoff (continuous energies)
        self.lin_value = O3Linear(self.dtp_2.irreps_out, self.irreps_value, use_bias=False, name="lin_value", **cfg)
        self.proj = O3Linear(self.irreps_value, node, name="proj", **cfg)
        self.alpha_dot = None

    def build(self, input_shape):
        x_shape, sh_shape, rbf_shape, _ = (tuple(s) for s in input_shape)
        b, a = x_shape[0], x_shape[1]
        edge = (b, a, a)
        self.lin_dst.build(x_shape)
        self.lin_src.build(x_shape)
        self.radial_1.build((rbf_shape, edge))
        self.radial_2.build((rbf_shape, edge))
        self.lin_mid.build(edge + (self.dtp_1.irreps_out.dim,))
        self.gate.build(edge + (self.irreps_gate_in.dim,))
        self.lin_value.build(edge + (self.dtp_2.irreps_out.dim,))
        self.proj.build((b, a, self.irreps_value.dim))
        self.alpha_dot = self.add_weight(
            name="alpha_dot",
            shape=(self.num_heads, self.alpha_channels),
            initializer=keras.initializers.RandomUniform(
                -1.0 / np.sqrt(self.alpha_channels), 1.0 / np.sqrt(self.alpha_channels)
            ),
        )
        self.built = True

    def attention_weights(self, logits, edge_weight):
        """``alpha_ijh = w_ij exp(l_ijh) / sum_k w_ik exp(l_ikh)``: a softmax over the neighbours weighted by
        ``edge_weight`` (0 for non-neighbours; a node without neighbours gets all-zero weights)."""
        w = edge_weight[..., None]
        shift = tf.stop_gradient(tf.reduce_max(logits, axis=2, keepdims=True))  # cancels in the ratio
        num = w * tf.exp(logits - shift)
        den = tf.reduce_sum(num, axis=2, keepdims=True)
        tiny = tf.cast(1e-30 if logits.dtype == tf.float64 else 1e-20, logits.dtype)
        return num / (den + tiny)

    def call(self, inputs):
        x, sh, rbf, edge_weight = (tf.cast(t, self.compute_dtype) for t in inputs)
        x_ij = self.lin_dst(x)[:, :, None, :] + self.lin_src(x)[:, None, :, :]  # [B, A, A, D]
        f = self.dtp_1((x_ij, sh, self.radial_1((rbf, edge_weight))))
        f = self.lin_mid(f)
        n_alpha = self.irreps_alpha.dim
        alpha_scalars, gate_input = f[..., :n_alpha], f[..., n_alpha:]
        shape = tf.shape(alpha_scalars)
        alpha_scalars = tf.reshape(
            tf.nn.leaky_relu(alpha_scalars, 0.2), tf.concat([shape[:-1], [self.num_heads, self.alpha_channels]], 0)
        )
        logits = tf.reduce_sum(alpha_scalars * tf.cast(self.alpha_dot, x.dtype), axis=-1)  # [B, A, A, H]
        alpha = self.attention_weights(logits, edge_weight)
        values = self.dtp_2((self.gate(gate_input), sh, self.radial_2((rbf, edge_weight))))
        values = self.lin_value(values)  # [B, A, A, Dv]
        alpha_features = tf.einsum("bijh,hd->bijd", alpha, tf.constant(self.head_onehot, x.dtype))
        out = tf.reduce_sum(alpha_features * values, axis=2)
        return self.proj(out)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def get_config(self):
        config = super().get_config()
        config.update(
            irreps_node=str(self.irreps_node),
            irreps_sh=str(self.irreps_sh),
            num_heads=self.num_heads,
            radial_hidden=list(self.radial_hidden),
        )
        return config


__all__ = ["EquivariantGraphAttention", "head_irreps", "head_of_feature", "repeat_heads"]
