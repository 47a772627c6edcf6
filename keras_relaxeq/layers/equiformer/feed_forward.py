"""Equiformer's gated feed-forward network on irreps: ``O3Linear -> Gate -> O3Linear``."""

from __future__ import annotations

import keras

from keras_relaxeq.groups.irreps import Irreps
from keras_relaxeq.layers.steerable import Gate, O3Linear, gate_irreps
from keras_relaxeq.layers.steerable.parsing import irreps_arg
from keras_relaxeq.utils import set_untracked

register = keras.saving.register_keras_serializable(package="keras_relaxeq")


def scaled_irreps(irreps, factor: float) -> Irreps:
    """Every multiplicity times ``factor`` (rounded, at least 1)."""
    return Irreps([(max(1, int(round(mul * factor))), ir) for mul, ir in Irreps(irreps) if mul > 0])


@register
class GatedFeedForward(keras.layers.Layer):
    """``lin_out(Gate(lin_in(x)))`` with hidden irreps ``irreps_node`` times ``hidden_multiplier`` (Equiformer's
    ``FeedForwardNetwork``: ``128x0e+64x1e+32x2e -> 384x0e+192x1e+96x2e`` plus gates ``-> 128x0e+64x1e+32x2e``).

    Relaxation: ``relaxation`` (a dict of :class:`~keras_relaxeq.layers.base.RelaxedEquivariantLayer` arguments,
    e.g. ``{"relaxed": True, "relaxation_branch": "mlp"}``) is passed to ``lin_out``, the layer whose output is
    the block's feed-forward output; ``lin_in`` is never relaxed.  Without it nothing is relaxed.
    """

    def __init__(self, irreps_node, hidden_multiplier=3.0, relaxation=None, **kwargs):
        super().__init__(**kwargs)
        owner = f"GatedFeedForward '{self.name}'"
        set_untracked(self, "irreps_node", irreps_arg(irreps_node, "irreps_node", owner))
        self.hidden_multiplier = float(hidden_multiplier)
        self.relaxation = dict(relaxation or {"relaxed": False})
        hidden = scaled_irreps(self.irreps_node, self.hidden_multiplier)
        scalars, gated, gate_in = gate_irreps(hidden)
        set_untracked(self, "irreps_hidden", hidden)
        self.lin_in = O3Linear(self.irreps_node, gate_in, relaxed=False, name="lin_in", dtype=self.dtype_policy)
        self.gate = Gate(scalars, gated, relaxed=False, name="gate", dtype=self.dtype_policy)
        self.lin_out = O3Linear(hidden, self.irreps_node, name="lin_out", dtype=self.dtype_policy, **self.relaxation)

    def build(self, input_shape):
        lead = tuple(input_shape)[:-1]
        self.lin_in.build(tuple(input_shape))
        self.gate.build(lead + (self.gate.irreps_in.dim,))
        self.lin_out.build(lead + (self.irreps_hidden.dim,))
        self.built = True

    def call(self, x, training=None):
        return self.lin_out(self.gate(self.lin_in(x)), training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            irreps_node=str(self.irreps_node), hidden_multiplier=self.hidden_multiplier, relaxation=self.relaxation
        )
        return config


__all__ = ["GatedFeedForward", "scaled_irreps"]
