"""Shared pieces of the vector-neuron layers: shape checks, the vector-to-vector base layer, ``[x, mean]``."""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_relaxeq.groups.representations import VectorRep
from keras_relaxeq.layers.base import RelaxedEquivariantLayer

EPS = 1e-6

register = keras.saving.register_keras_serializable(package="keras_relaxeq")


def _check_vector_shape(layer, input_shape):
    input_shape = tuple(input_shape)
    if len(input_shape) < 3 or input_shape[-1] != 3:
        raise ValueError(
            f"{type(layer).__name__} '{layer.name}' expects vector features of shape "
            f"[batch, points, channels, 3] (or [batch, ..., channels, 3]); got shape {list(input_shape)}. "
            "Point clouds [batch, points, 3] become one-channel vector features with x[:, :, None, :]."
        )
    if input_shape[-2] is None:
        raise ValueError(
            f"{type(layer).__name__} '{layer.name}' needs a known channel axis (-2); got shape {list(input_shape)}."
        )
    return int(input_shape[-2])


def _torch_linear_init():
    """PyTorch's default ``nn.Linear`` init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as in the VN code."""
    return keras.initializers.VarianceScaling(scale=1.0 / 3.0, mode="fan_in", distribution="uniform")


def concat_mean_shape(input_shape):
    """Shape of ``[x, mean over points of x]`` (channels doubled)."""
    c = input_shape[-2]
    return tuple(input_shape[:-2]) + (None if c is None else 2 * c, 3)


def concat_mean_features(x, mean=None):
    """``[x, mean over the points axis (-3) of x]`` along the channel axis: ``[..., N, 2C, 3]``
    (``mean``: that mean with ``keepdims``, if the caller has it already)."""
    if mean is None:
        mean = tf.reduce_mean(x, axis=-3, keepdims=True)
    return tf.concat([x, tf.broadcast_to(mean, tf.shape(x))], axis=-2)


def _check_concat_mean_input(layer, input_shape):
    """``concat_mean`` averages over the points axis (-3): per-point features only."""
    if len(input_shape) < 4:
        raise ValueError(
            f"{type(layer).__name__} '{layer.name}' with concat_mean=True needs per-point features "
            f"[batch, points, channels, 3]; got shape {list(input_shape)}."
        )


class _VectorLayer(RelaxedEquivariantLayer):
    """Shared representation declarations for layers mapping vectors to vectors."""

    def input_representation(self, input_shape):
        return VectorRep(_check_vector_shape(self, input_shape))

    def output_representation(self, input_shape):
        return VectorRep(self.compute_output_shape(input_shape)[-2])
