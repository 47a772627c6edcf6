"""One Equiformer block: ``x + attention(norm_1(x))``, then ``+ feed_forward(norm_2(.))``."""

from __future__ import annotations

import keras

from keras_relaxeq.layers.equiformer.attention import EquivariantGraphAttention
from keras_relaxeq.layers.equiformer.feed_forward import GatedFeedForward
from keras_relaxeq.layers.equiformer.relaxed_feed_forward import RelaxedGatedFeedForward
from keras_relaxeq.layers.steerable import SteerableNorm
from keras_relaxeq.layers.steerable.parsing import irreps_arg
from keras_relaxeq.utils import set_untracked

register = keras.saving.register_keras_serializable(package="keras_relaxeq")

#: where a block's relaxation branch goes (see :class:`EquiformerBlock`)
RELAXATION_KINDS = ("ffn_output", "position_mlp")


@register
class EquiformerBlock(keras.layers.Layer):
    """Equiformer's transformer block (pre-norm): equivariant layer norm (:class:`SteerableNorm`,
    ``mode="layer"``) -> :class:`EquivariantGraphAttention` -> residual -> layer norm -> :class:`GatedFeedForward`
    -> residual.  Called on ``(x [B, A, D], sh, rbf, edge_weight)`` (see the attention); returns the new ``x``.

    Relaxation (``relaxation``: a dict of relaxation arguments, None for none):

    * ``relaxation_kind="ffn_output"``: the dict goes to the feed-forward network's output map (an
      :class:`O3Linear`; e.g. ``{"relaxed": True}`` for a linear branch, ``"relaxation_branch": "mlp"``);
    * ``relaxation_kind="position_mlp"``: the feed-forward network is a :class:`RelaxedGatedFeedForward` (the
      dict gives its arguments, ``num_attributes`` required) and the block is called on
      ``(x, sh, rbf, edge_weight, attributes, centred_positions)``.
    """

    def __init__(
        self,
        irreps_node,
        irreps_sh="1x0e+1x1o+1x2e",
        num_heads=4,
        ffn_multiplier=3.0,
        radial_hidden=(64, 64),
        relaxation=None,
        relaxation_kind="ffn_output",
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
        if relaxation_kind not in RELAXATION_KINDS:
            raise ValueError(f"{owner}: relaxation_kind must be one of {RELAXATION_KINDS}, got {relaxation_kind!r}.")
        self.relaxation_kind = relaxation_kind
        node, dtype = self.irreps_node, self.dtype_policy
        self.norm_1 = SteerableNorm(node, mode="layer", relaxed=False, name="norm_1", dtype=dtype)
        self.attention = EquivariantGraphAttention(
            node, self.irreps_sh_str, self.num_heads, self.radial_hidden, name="attention", dtype=dtype
        )
        self.norm_2 = SteerableNorm(node, mode="layer", relaxed=False, name="norm_2", dtype=dtype)
        if relaxation_kind == "position_mlp":
            self.feed_forward = RelaxedGatedFeedForward(
                node, hidden_multiplier=self.ffn_multiplier, name="feed_forward", dtype=dtype, **self.relaxation
            )
        else:
            self.feed_forward = GatedFeedForward(
                node, self.ffn_multiplier, relaxation=self.relaxation, name="feed_forward", dtype=dtype
            )

    def build(self, input_shape):
        x_shape = tuple(input_shape[0])
        self.norm_1.build(x_shape)
        self.attention.build(tuple(input_shape)[:4])
        self.norm_2.build(x_shape)
        if self.relaxation_kind == "position_mlp":
            self.feed_forward.build((x_shape, tuple(input_shape[4]), tuple(input_shape[5])))
        else:
            self.feed_forward.build(x_shape)
        self.built = True

    def call(self, inputs, training=None):
        x, sh, rbf, edge_weight = inputs[:4]
        x = x + self.attention((self.norm_1(x), sh, rbf, edge_weight))
        if self.relaxation_kind == "position_mlp":
            if len(inputs) != 6:
                raise ValueError(
                    f"EquiformerBlock '{self.name}' with relaxation_kind='position_mlp' is called on "
                    "(x, sh, rbf, edge_weight, attributes, centred_positions)."
                )
            return x + self.feed_forward((self.norm_2(x), inputs[4], inputs[5]), training=training)
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
            relaxation_kind=self.relaxation_kind,
        )
        return config


__all__ = ["EquiformerBlock", "RELAXATION_KINDS"]
