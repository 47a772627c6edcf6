"""Rotation-invariant features by projection onto a learned equivariant frame: ``VNStdFeature``."""

from __future__ import annotations

import tensorflow as tf

from keras_relaxeq.groups.representations import TrivialRep, VectorRep
from keras_relaxeq.layers.base import RelaxedEquivariantLayer
from keras_relaxeq.layers.vector_neurons.common import EPS, _check_concat_mean_input, _check_vector_shape, register
from keras_relaxeq.layers.vector_neurons.linear import VNLinear
from keras_relaxeq.layers.vector_neurons.nonlinearities import VNLeakyReLU


@register
class VNStdFeature(RelaxedEquivariantLayer):
    """Rotation-invariant features by projection onto a learned equivariant frame.

    Two VN leaky-ReLU blocks (``C -> C/2 -> C/4``) and a VN linear map to 3 (or
    2, with ``normalize_frame``: Gram-Schmidt + cross product) frame vectors
    ``z``; returns ``(x_std, z)`` with ``x_std[..., c, k] = <x_c, z_k>``
    (invariant, ``[..., C, 3]``) and the frame ``z`` (``[..., 3, 3]``,
    equivariant).

    ``concat_mean=True`` projects ``[x, mean over points of x]`` (``2C`` channels, as
    VN-PointNet / VN-DGCNN do before this layer) without materialising the concatenation for
    the first block (see :class:`VNLeakyReLU`); same weights and outputs as the layer with
    ``concat_mean=False`` applied to the concatenated features.
    """

    has_relaxation_branch = False

    def __init__(
        self,
        normalize_frame=False,
        share_nonlinearity=False,
        negative_slope=0.2,
        use_batchnorm=True,
        concat_mean=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.concat_mean = bool(concat_mean)
        self.normalize_frame = bool(normalize_frame)
        self.share_nonlinearity = bool(share_nonlinearity)
        self.negative_slope = float(negative_slope)
        self.use_batchnorm = bool(use_batchnorm)

    def input_representation(self, input_shape):
        return VectorRep(_check_vector_shape(self, input_shape))

    def _channels(self, input_shape):
        """Channels of the features that are projected (doubled by ``concat_mean``)."""
        c = _check_vector_shape(self, input_shape)
        return 2 * c if self.concat_mean else c

    def output_representation(self, input_shape):
        return (TrivialRep(self._channels(input_shape), 3), VectorRep(3))

    def build(self, input_shape):
        if self.concat_mean:
            _check_concat_mean_input(self, input_shape)
        c = self._channels(input_shape)
        if c < 4:
            raise ValueError(
                f"VNStdFeature '{self.name}' needs at least 4 input channels (it maps C -> C/2 -> C/4); got {c}."
            )
        if self.normalize_frame and c < 8:
            raise ValueError(
                f"VNStdFeature '{self.name}' with normalize_frame=True needs at least 8 input channels "
                f"(C // 4 >= 2 vectors feed Gram-Schmidt); got {c}."
            )
        super().build(input_shape)

    def build_equivariant(self, input_shape):
        c = self._channels(input_shape)
        relax = self.sublayer_config()
        block = dict(
            negative_slope=self.negative_slope,
            share_nonlinearity=self.share_nonlinearity,
            use_batchnorm=self.use_batchnorm,
            **relax,
        )
        self.vn1 = VNLeakyReLU(c // 2, name="vn1", concat_mean=self.concat_mean, **block)
        self.vn2 = VNLeakyReLU(c // 4, name="vn2", **block)
        self.vn_lin = VNLinear(2 if self.normalize_frame else 3, name="vn_lin", **relax)
        self.vn1.build(input_shape)
        shape = self.vn1.compute_output_shape(input_shape)
        self.vn2.build(shape)
        self.vn_lin.build(self.vn2.compute_output_shape(shape))

    def call(self, inputs, training=None):
        z = self.vn_lin(self.vn2(self.vn1(inputs, training=training), training=training))
        if self.normalize_frame:
            v1, v2 = z[..., 0, :], z[..., 1, :]
            u1 = v1 / (tf.norm(v1, axis=-1, keepdims=True) + EPS)
            v2 = v2 - tf.reduce_sum(v2 * u1, axis=-1, keepdims=True) * u1
            u2 = v2 / (tf.norm(v2, axis=-1, keepdims=True) + EPS)
            u3 = tf.linalg.cross(u1, u2)
            z = tf.stack([u1, u2, u3], axis=-2)
        x_std = tf.matmul(inputs, z, transpose_b=True)  # [..., C, 3]: <x_c, z_k>
        if self.concat_mean:  # the mean channels: <mean_c, z_k>, broadcast over the points
            x_std_mean = tf.matmul(tf.reduce_mean(inputs, axis=-3, keepdims=True), z, transpose_b=True)
            x_std = tf.concat([x_std, x_std_mean], axis=-2)
        return x_std, z

    def compute_output_shape(self, input_shape):
        lead = tuple(input_shape[:-2])
        c = input_shape[-2]
        if self.concat_mean and c is not None:
            c = 2 * c
        return lead + (c, 3), lead + (3, 3)

    def get_config(self):
        config = super().get_config()
        config.update(
            normalize_frame=self.normalize_frame,
            share_nonlinearity=self.share_nonlinearity,
            negative_slope=self.negative_slope,
            use_batchnorm=self.use_batchnorm,
            concat_mean=self.concat_mean,
        )
        return config
