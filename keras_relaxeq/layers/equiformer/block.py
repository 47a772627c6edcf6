"""One Equiformer block: ``x + attention(norm_1(x))``, then ``+ feed_forward(norm_2(.))``."""

from __future__ import annotations

import keras

from keras_relaxeq.layers.equiformer.attention import EquivariantGraphAttention
from keras_relaxeq.layers.equiformer.feed_forward import GatedFeedForward
from keras_relaxeq.layers.steerable import SteerableNorm
from keras_relaxeq.layers.steerable.parsing import irreps_arg
from keras_relaxeq.utils import set_untracked

register = keras.saving.register_keras_serializable(package="keras_relaxeq")


@register
class EquiformerBlock(keras.layers.Layer):
    """Equiformer's transformer block (pre-norm): equivariant layer norm (:class:`SteerableNorm`,
    ``mode="layer"``) -> :class:`EquivariantGraphAttention` -> residual -> layer norm -> :class:`GatedFeedForward`
    -> residual.  Called on ``(x [B, A, D], sh, rbf, edge_weight)`` (see the attention); returns the new ``x``.
    ``relaxation`` goes to the feed-forward network's output map."""

    def __init__(
        self,
        irreps_node,
        irreps_sh="1x0e+1x1o+1x2e",
        num_heads=4,
        ffn_multiplier=3.0,
        radial_hidden=(64, 64),
        relaxation=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        owner = f"EquiformerBlock '{self.name}'"
        set_untracked(self, "irreps_node", irreps_arg(irreps_node, "irreps_node", owner))
        self.irreps_sh_str = str(irreps_arg(irreps_sh, "irreps_sh", owner))
        self.num_heads = int(num_heads)
        self.ffn_multiplier = float(ffn_multiplier)
        self.radial_hidden = tuple(int(h) for h in radial_hidden)
        self.relaxation = dict(relaxation or {"relaxed": False})
        node, dtype = self.irreps_node, self.dtype_policy
        self.norm_1 = SteerableNorm(node, mode="layer", relaxed=False, name="norm_1", dtype=dtype)
        self.attention = EquivariantGraphAttention(
            node, self.irreps_sh_str, self.num_heads, self.radial_hidden, name="attention", dtype=dtype
        )
        self.norm_2 = SteerableNorm(node, mode="layer", relaxed=False, name="norm_2", dtype=dtype)
        self.feed_forward = GatedFeedForward(
            node, self.ffn_multiplier, relaxation=self.relaxation, name="feed_forward", dtype=dtype
        )

    def build(self, input_shape):
        x_shape = tuple(input_shape[0])
        self.norm_1.build(x_shape)
        self.attention.build(input_shape)
        self.norm_2.build(x_shape)
        self.feed_forward.build(x_shape)
        self.built = True

    def call(self, inputs, training=None):
        x, sh, rbf, edge_weight = inputs
        x = x + self.attention((self.norm_1(x), sh, rbf, edge_weight))
        return x + self.feed_forward(self.norm_2(x), training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def get_config(self):
        config = super().get_config()
        config.update(
            irreps_node=str(self.irreps_node),
            irreps_sh=self.irreps_sh_str,
            num_heads=self.num_heads,
            ffn_multiplier=self.ffn_multiplier,
            radial_hidden=list(self.radial_hidden),
            relaxation=self.relaxation,
        )
        return config


__all__ = ["EquiformerBlock"]
