"""The vector leaky ReLU and the VN linear + leaky-ReLU block ``VNLeakyReLU``."""

from __future__ import annotations

import tensorflow as tf

from keras_relaxeq.layers.vector_neurons.batch_norm import VNBatchNorm
from keras_relaxeq.layers.vector_neurons.common import (
    EPS,
    _check_concat_mean_input,
    _check_vector_shape,
    _VectorLayer,
    concat_mean_features,
    concat_mean_shape,
    register,
)
from keras_relaxeq.layers.vector_neurons.linear import VNLinear, can_fuse_branches, fused_vn_maps, vn_linear


def vn_leaky_relu(p, d, negative_slope):
    """Where ``<p, d> < 0`` remove from ``p`` its component along ``d``; mix with slope."""
    dot = tf.reduce_sum(p * d, axis=-1, keepdims=True)
    d_norm_sq = tf.reduce_sum(d * d, axis=-1, keepdims=True)
    negative = tf.cast(dot < 0, p.dtype)
    return p - (1.0 - negative_slope) * negative * (dot / (d_norm_sq + EPS)) * d


@register
class VNLeakyReLU(_VectorLayer):
    """The VN linear + leaky-ReLU block (``VNLinearLeakyReLU`` of the VN code).

    ``p = BN(map_to_feat(x))``, ``d = map_to_dir(x)`` (direction from the layer
    input), then the vector leaky ReLU.  Each map has its own relaxation branch.

    Args:
        channels: output channels of ``map_to_feat``.  ``None`` makes the layer
            the bare nonlinearity (``p = x``, only ``map_to_dir``).
        negative_slope: 0 for VN-PointNet, 0.2 for VN-DGCNN.
        share_nonlinearity: one direction for all channels.
        use_batchnorm: apply :class:`VNBatchNorm` to ``p``.
        concat_mean: the block's input is ``[x, mean over points of x]`` (``2C`` channels; both
            maps have ``2C`` input rows) without building that concatenation: the maps run on
            ``x`` and on the per-cloud mean and are added (half the matmul rows).  Relaxation
            branches see the concatenated features.  Needs a points axis (``axis=-3``).
    """

    has_relaxation_branch = False

    def __init__(
        self,
        channels=None,
        negative_slope=0.2,
        share_nonlinearity=False,
        use_batchnorm=True,
        concat_mean=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.concat_mean = bool(concat_mean)
        if self.concat_mean and channels is None:
            raise ValueError("VNLeakyReLU(concat_mean=True) needs channels (map_to_feat).")
        self.channels = None if channels is None else int(channels)
        self.negative_slope = float(negative_slope)
        self.share_nonlinearity = bool(share_nonlinearity)
        self.use_batchnorm = bool(use_batchnorm) and self.channels is not None
        relax = self.sublayer_config()
        self.map_to_feat = VNLinear(self.channels, name="map_to_feat", **relax) if self.channels else None
        self.batchnorm = VNBatchNorm(name="batchnorm", **relax) if self.use_batchnorm else None
        self.map_to_dir = None
        if self.channels is not None or self.share_nonlinearity:
            dir_channels = 1 if self.share_nonlinearity else self.channels
            self.map_to_dir = VNLinear(dir_channels, name="map_to_dir", **relax)

    def build_equivariant(self, input_shape):
        c_in = _check_vector_shape(self, input_shape)
        if self.concat_mean:
            _check_concat_mean_input(self, input_shape)
            input_shape = concat_mean_shape(input_shape)
        if self.map_to_dir is None:
            self.map_to_dir = VNLinear(c_in, name="map_to_dir", **self.sublayer_config())
        if self.map_to_feat is not None:
            self.map_to_feat.build(input_shape)
            feat_shape = self.map_to_feat.compute_output_shape(input_shape)
            if self.batchnorm is not None:
                self.batchnorm.build(feat_shape)
        self.map_to_dir.build(input_shape)

    def call(self, inputs, training=None):
        if self.map_to_feat is None:
            p, d = inputs, self.map_to_dir(inputs)
        elif can_fuse_branches([self.map_to_feat, self.map_to_dir], inputs, self.concat_mean):
            # both maps and both branches in one matmul of the rows with [kron(K, I_3) + theta W]
            mean = tf.reduce_mean(inputs, axis=-3, keepdims=True) if self.concat_mean else None
            p, d = fused_vn_maps([self.map_to_feat, self.map_to_dir], inputs, mean)
        else:
            # both maps read the same input: one matmul; each map's own branch (if any) on top
            kernels = [self.map_to_feat.kernel, self.map_to_dir.kernel]
            mean = None
            if self.concat_mean:
                c = inputs.shape[-2]
                mean = tf.reduce_mean(inputs, axis=-3, keepdims=True)
                p, d = vn_linear(inputs, [k[:c] for k in kernels])
                p_mean, d_mean = vn_linear(mean, [k[c:] for k in kernels])
                p, d = p + p_mean, d + d_mean
            else:
                p, d = vn_linear(inputs, kernels)
            if self.map_to_feat.relaxed or self.map_to_dir.relaxed:
                full = concat_mean_features(inputs, mean) if self.concat_mean else inputs
                if self.map_to_feat.relaxed:
                    p = self.map_to_feat.add_relaxation(full, p)
                if self.map_to_dir.relaxed:
                    d = self.map_to_dir.add_relaxation(full, d)
        if self.batchnorm is not None:
            p = self.batchnorm(p, training=training)
        return vn_leaky_relu(p, d, self.negative_slope)

    def compute_output_shape(self, input_shape):
        channels = self.channels if self.channels is not None else input_shape[-2]
        return tuple(input_shape[:-2]) + (channels, 3)

    def get_config(self):
        config = super().get_config()
        config.update(
            channels=self.channels,
            negative_slope=self.negative_slope,
            share_nonlinearity=self.share_nonlinearity,
            use_batchnorm=self.use_batchnorm,
            concat_mean=self.concat_mean,
        )
        return config
