"""Pooling of vector features over a points or neighbours axis: ``VNMeanPool`` and ``VNMaxPool``."""

from __future__ import annotations

import tensorflow as tf

from keras_relaxeq.layers.vector_neurons.common import _check_vector_shape, _VectorLayer, register
from keras_relaxeq.layers.vector_neurons.linear import VNLinear


def _pool_axis(layer, rank):
    axis = layer.axis if layer.axis >= 0 else rank + layer.axis
    if axis == 0 or axis >= rank - 2:
        raise ValueError(
            f"{type(layer).__name__} '{layer.name}' pools over axis {layer.axis}, which must be "
            f"a points/neighbours axis (not batch, channels or xyz) of the rank-{rank} input."
        )
    return axis


@register
class VNMeanPool(_VectorLayer):
    """Mean over a points (or neighbours) axis; default the axis just before ``[channels, 3]``."""

    has_relaxation_branch = False

    def __init__(self, axis=-3, keepdims=False, **kwargs):
        super().__init__(**kwargs)
        self.axis = int(axis)
        self.keepdims = bool(keepdims)

    def build_equivariant(self, input_shape):
        _pool_axis(self, len(input_shape))

    def equivariant_call(self, inputs, training=None):
        return tf.reduce_mean(inputs, axis=_pool_axis(self, inputs.shape.rank), keepdims=self.keepdims)

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        axis = _pool_axis(self, len(shape))
        if self.keepdims:
            shape[axis] = 1
        else:
            del shape[axis]
        return tuple(shape)

    def get_config(self):
        config = super().get_config()
        config.update(axis=self.axis, keepdims=self.keepdims)
        return config


@register
class VNMaxPool(_VectorLayer):
    """Max-pool by a learned direction: per channel, keep the vector with the largest ``<v, d>``.

    ``d = map_to_dir(x)`` is a VN linear map (relaxable).
    """

    has_relaxation_branch = False

    def __init__(self, axis=-3, keepdims=False, **kwargs):
        super().__init__(**kwargs)
        self.axis = int(axis)
        self.keepdims = bool(keepdims)
        self.map_to_dir = None

    def build_equivariant(self, input_shape):
        c_in = _check_vector_shape(self, input_shape)
        _pool_axis(self, len(input_shape))
        self.map_to_dir = VNLinear(c_in, name="map_to_dir", **self.sublayer_config())
        self.map_to_dir.build(input_shape)

    def call(self, inputs, training=None):
        axis = _pool_axis(self, inputs.shape.rank)
        d = self.map_to_dir(inputs)
        dot = tf.reduce_sum(inputs * d, axis=-1)  # [..., n, ..., C]
        n = tf.shape(inputs)[axis]
        select = tf.one_hot(tf.argmax(dot, axis=axis), n, axis=axis, dtype=inputs.dtype)
        return tf.reduce_sum(inputs * select[..., None], axis=axis, keepdims=self.keepdims)

    def compute_output_shape(self, input_shape):
        return VNMeanPool.compute_output_shape(self, input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(axis=self.axis, keepdims=self.keepdims)
        return config
