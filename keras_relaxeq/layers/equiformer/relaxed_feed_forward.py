"""The relaxed feed-forward network of a relaxed Equiformer block: the equivariant :class:`GatedFeedForward` plus a
non-linear branch that also reads the atom attributes and the absolute (centred) positions.

    out = FFN(x) + theta * fc2(GELU(fc1([x, attributes, positions])))

``fc1`` widens ``branch_multiplier`` (4) times, ``fc2`` starts small (``relaxation_initializer``, default Glorot
scaled by 0.01).  This is the base class's ``"mlp"`` branch
(:class:`~keras_relaxeq.layers.base.RelaxedEquivariantLayer`) on the concatenated input, whose representation is
``irreps_node + K x 0e + 1x1o`` (features, invariant attributes, positions as a vector), so the generic penalties apply:

* ``equivariance_penalty="lie"`` (default): the Lie derivative of the branch by forward-mode autodiff
  (``lie_method="jvp"``; ``"tape"`` for double backward), summed over the three generators;
* ``equivariance_penalty="finite_rotation"``: ``sum ||R(g x) - g R(x)||^2`` for a rotation ``g`` by
  ``rotation_degrees`` (5) about a random axis per atom (the reference's penalty), reported in the Lie slot of
  the penalty collector.  For small angles it approaches ``angle^2`` times the Lie derivative along that axis
  (``angle^2 / 3`` times ``LD`` on average over axes).

Both report ``N = sum ||R(x)||^2`` in the projection slot.  Centred positions make the branch translation
invariant; rotations and reflections act on them as on a ``1o`` vector.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from keras_relaxeq.groups.irreps import Irreps
from keras_relaxeq.groups.irreps_rep import IrrepsRep
from keras_relaxeq.layers.base import RelaxedEquivariantLayer
from keras_relaxeq.layers.equiformer.feed_forward import GatedFeedForward
from keras_relaxeq.layers.penalties import _flatten_features
from keras_relaxeq.layers.steerable.parsing import irreps_arg
from keras_relaxeq.utils import set_untracked

register = keras.saving.register_keras_serializable(package="keras_relaxeq")

EQUIVARIANCE_PENALTIES = ("lie", "finite_rotation")


def small_rotations(num, degrees, dtype, seed=None):
    """``num`` rotations by ``degrees`` about uniformly random axes (Rodrigues), ``[num, 3, 3]``."""
    shape = tf.stack([num, 3])
    axis = (
        tf.random.normal(shape, dtype=dtype) if seed is None else tf.random.stateless_normal(shape, seed, dtype=dtype)
    )
    axis = axis / tf.norm(axis, axis=-1, keepdims=True)
    zero = tf.zeros_like(axis[:, 0])
    x, y, z = axis[:, 0], axis[:, 1], axis[:, 2]
    k = tf.reshape(tf.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1), [-1, 3, 3])
    theta = math.radians(float(degrees))
    eye = tf.eye(3, dtype=dtype)[None]
    return eye + math.sin(theta) * k + (1.0 - math.cos(theta)) * tf.matmul(k, k)


def finite_rotation_penalty(branch_fn, flat_x, in_rep, out_rep, degrees=5.0, seed=None):
    """``(sum ||R(g x) - g R(x)||^2, sum ||R(x)||^2)`` over the rows of ``flat_x`` ``[P, D_in]``, one rotation by
    ``degrees`` about a random axis per row (``seed``: a stateless ``[2]`` seed for reproducible axes)."""
    x = tf.stop_gradient(flat_x)
    g = small_rotations(tf.shape(x)[0], degrees, x.dtype, seed)
    y = branch_fn(x)
    moved = branch_fn(tf.cast(in_rep.transform(g, x), x.dtype))
    return tf.reduce_sum(tf.square(moved - tf.cast(out_rep.transform(g, y), y.dtype))), tf.reduce_sum(tf.square(y))


@register
class RelaxedGatedFeedForward(RelaxedEquivariantLayer):
    """:class:`GatedFeedForward` with the position-aware non-linear relaxation branch (see the module docstring).

    Called on ``(x [B, A, D], attributes [B, A, K], positions [B, A, 3])`` with centred positions and invariant
    attributes (e.g. a one-hot of the element); returns ``[B, A, D]``.  ``relaxed=False`` (or ``project``) leaves
    the :class:`GatedFeedForward` alone.

    Args:
        irreps_node: irreps of ``x`` and of the output.
        num_attributes: ``K``.
        hidden_multiplier: width of the equivariant FFN's hidden irreps (3, Equiformer's).
        branch_multiplier: ``fc1`` width as a multiple of its input width (4).
        equivariance_penalty: ``"lie"`` or ``"finite_rotation"``; ``rotation_degrees`` for the latter.
        **kwargs: :class:`RelaxedEquivariantLayer` arguments (``relaxed``, ``theta``, ``lie_method``, ...); the
            branch is always ``"mlp"``.
    """

    def __init__(
        self,
        irreps_node,
        num_attributes,
        hidden_multiplier=3.0,
        branch_multiplier=4.0,
        equivariance_penalty="lie",
        rotation_degrees=5.0,
        relaxation_initializer=None,
        **kwargs,
    ):
        owner = f"RelaxedGatedFeedForward '{kwargs.get('name')}'"
        irreps_node = irreps_arg(irreps_node, "irreps_node", owner)
        num_attributes = int(num_attributes)
        d_in = irreps_node.dim + num_attributes + 3
        kwargs["relaxation_branch"] = "mlp"
        kwargs["relaxation_hidden_units"] = max(1, int(round(float(branch_multiplier) * d_in)))
        if kwargs.get("lie_method", "auto") == "auto":
            kwargs["lie_method"] = "jvp"
        if relaxation_initializer is None:
            relaxation_initializer = keras.initializers.VarianceScaling(1e-4, "fan_avg", "uniform")
        super().__init__(relaxation_initializer=relaxation_initializer, **kwargs)
        if equivariance_penalty not in EQUIVARIANCE_PENALTIES:
            raise ValueError(
                f"{owner}: equivariance_penalty must be one of {EQUIVARIANCE_PENALTIES}, got {equivariance_penalty!r}."
            )
        set_untracked(self, "irreps_node", irreps_node)
        self.num_attributes = num_attributes
        self.hidden_multiplier = float(hidden_multiplier)
        self.branch_multiplier = float(branch_multiplier)
        self.equivariance_penalty = equivariance_penalty
        self.rotation_degrees = float(rotation_degrees)
        set_untracked(self, "irreps_branch_in", irreps_node + Irreps(f"{num_attributes}x0e") + Irreps("1x1o"))
        self.feed_forward = GatedFeedForward(irreps_node, self.hidden_multiplier, name="ffn", dtype=self.dtype_policy)

    def input_representation(self, input_shape):
        return IrrepsRep(self.irreps_branch_in)

    def output_representation(self, input_shape):
        return IrrepsRep(self.irreps_node)

    def build(self, input_shape):
        x_shape = tuple(input_shape[0])
        self.feed_forward.build(x_shape)
        super().build(x_shape[:-1] + (self.irreps_branch_in.dim,))

    def equivariant_call(self, inputs, training=None):
        return self.feed_forward(inputs[0], training=training)

    def relaxation_inputs(self, inputs):
        if isinstance(inputs, (tuple, list)):
            x, attributes, positions = inputs
            dtype = self.compute_dtype
            return tf.concat([tf.cast(x, dtype), tf.cast(attributes, dtype), tf.cast(positions, dtype)], axis=-1)
        return inputs

    def branch_penalties(self, inputs, collector=None, method=None):
        if self.equivariance_penalty != "finite_rotation" or method in ("jvp", "tape"):
            return super().branch_penalties(inputs, collector=collector, method=method)
        flat_x = tf.stop_gradient(_flatten_features(self.relaxation_inputs(inputs), self.input_rep))
        flat_x = tf.cast(flat_x, self.variable_dtype)
        return finite_rotation_penalty(self.branch, flat_x, self.input_rep, self.output_rep, self.rotation_degrees)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def get_config(self):
        config = super().get_config()
        for key in ("relaxation_branch", "relaxation_hidden_units"):
            config.pop(key, None)
        config.update(
            irreps_node=str(self.irreps_node),
            num_attributes=self.num_attributes,
            hidden_multiplier=self.hidden_multiplier,
            branch_multiplier=self.branch_multiplier,
            equivariance_penalty=self.equivariance_penalty,
            rotation_degrees=self.rotation_degrees,
        )
        return config


__all__ = ["EQUIVARIANCE_PENALTIES", "RelaxedGatedFeedForward", "finite_rotation_penalty", "small_rotations"]
