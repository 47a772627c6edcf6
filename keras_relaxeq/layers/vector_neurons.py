"""Vector Neurons (Deng et al., 2021) as relaxable Keras layers.

Features are lists of 3-vectors, ``[batch, points, channels, 3]`` (any number
of axes may stand between the batch and the channel axis, e.g. neighbours in
``[batch, points, k, channels, 3]``, or none for pooled features
``[batch, channels, 3]``).  Rotations act on the last axis.

Every VN linear map (``VNLinear`` and the ``map_to_feat`` / ``map_to_dir``
sublayers of the nonlinearity, pooling and invariant-frame layers) carries its
own relaxation branch when ``relaxed=True``.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_relaxeq.groups.representations import TrivialRep, VectorRep
from keras_relaxeq.layers.base import RelaxedEquivariantLayer, active_collector, linear_branch_penalties

EPS = 1e-6

register = keras.saving.register_keras_serializable(package="keras_relaxeq")


def _check_vector_shape(layer, input_shape):
    input_shape = tuple(input_shape)
    if len(input_shape) < 3 or input_shape[-1] != 3:
        raise ValueError(
            f"{type(layer).__name__} '{layer.name}' expects vector features of shape "
            f"[batch, points, channels, 3] (or [batch, ..., channels, 3]); got shape {list(input_shape)}. "
            "Point clouds [batch, points, 3] become one-channel vector features with x[:, :, None, :].")
    if input_shape[-2] is None:
        raise ValueError(f"{type(layer).__name__} '{layer.name}' needs a known channel axis (-2); "
                         f"got shape {list(input_shape)}.")
    return int(input_shape[-2])


def _torch_linear_init():
    """PyTorch's default ``nn.Linear`` init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as in the VN code."""
    return keras.initializers.VarianceScaling(scale=1.0 / 3.0, mode="fan_in", distribution="uniform")


def vn_linear(x, kernels):
    """Apply VN linear maps ``[..., C, 3] -> [..., D_k, 3]``, one per kernel ``[C, D_k]``, in one matmul.

    The features are transposed once to rows ``[3 * points, C]`` (xyz-major per point), multiplied
    by the concatenated kernels, split per kernel and transposed back.  Faster than
    ``einsum("...ci,cd->...di")`` on CPU (TF's einsum transposes around every product, and its
    kernel gradient with a ``...`` operand builds a per-point ``[C_in, C_out]`` outer product), and
    maps sharing an input (``map_to_feat``/``map_to_dir``) read it once:
    ``python benchmarks/bench_vn_models.py`` has the before/after numbers.
    """
    shape = tf.shape(x)
    c = x.shape[-2]
    rows = tf.reshape(tf.transpose(tf.reshape(x, [-1, c, 3]), [0, 2, 1]), [-1, c])
    widths = [int(k.shape[-1]) for k in kernels]
    y = tf.matmul(rows, kernels[0] if len(kernels) == 1 else tf.concat(kernels, axis=1))
    parts = [y] if len(kernels) == 1 else tf.split(y, widths, axis=1)
    lead = shape[:-2]
    return [tf.reshape(tf.transpose(tf.reshape(part, [-1, 3, d]), [0, 2, 1]), tf.concat([lead, [d, 3]], 0))
            for part, d in zip(parts, widths)]


def vn_kernel_as_dense(kernel):
    """The VN linear map ``[C_in, C_out]`` as a dense map of flattened features: ``kron(K, I_3)``
    ``[3 C_in, 3 C_out]`` (channel-major, ``c * 3 + i``, the layout of the relaxation branches)."""
    c_in, c_out = kernel.shape
    eye = tf.eye(3, dtype=kernel.dtype)
    return tf.reshape(kernel[:, None, :, None] * eye[None, :, None, :], [3 * c_in, 3 * c_out])


_FUSION = {"enabled": True}


def set_branch_fusion(enabled: bool) -> bool:
    """Turn the fusion of relaxation branches with their VN maps (:func:`fused_vn_maps`) on or off for the
    layers traced afterwards (on by default; off computes ``E(x)`` and ``theta R(x)`` apart, e.g. to compare
    speed).  Returns the previous setting."""
    previous = _FUSION["enabled"]
    _FUSION["enabled"] = bool(enabled)
    return previous


def can_fuse_branches(maps, inputs, concat_mean=False):
    """Whether :func:`fused_vn_maps` applies to the ``VNLinear`` maps ``maps`` reading ``inputs``.

    Each map needs a dense linear relaxation branch (not low-rank: fusing would form ``U V``); no
    activation recording may be active (it needs the equivariant output and the branch apart); with
    ``concat_mean`` the penalties must be the closed form (the direct and autodiff methods read the
    concatenated rows).
    """
    if not _FUSION["enabled"]:
        return False
    collector = active_collector()
    if collector is not None and collector.record_activations:
        return False
    if not all(m is not None and m.relaxed and m.theta is not None and m.relaxation_branch == "linear"
               and not m.relaxation_low_rank for m in maps):
        return False
    return not concat_mean or all(m.resolved_lie_method(inputs) == "closed_form" for m in maps)


def concat_mean_gram_statistics(flat_x, flat_mean, group_size):
    """Gram statistics ``(S, s, P)`` of the rows ``[x_p, m_g(p)]`` (per-point features next to the mean of their
    group of ``group_size`` points) from ``X = flat_x`` ``[P, D]`` and the means ``M = flat_mean`` ``[G, D]``.

    With ``sum_{p in g} x_p = N m_g``: ``S = [[X^T X, N M^T M], [N M^T M, N M^T M]]`` and
    ``s = [sum_p x_p, N sum_g m_g]``, a quarter of the ``P (2D)^2`` products of the concatenated rows.
    """
    n = tf.cast(group_size, flat_x.dtype)
    s_xx = tf.matmul(flat_x, flat_x, transpose_a=True)
    s_mm = n * tf.matmul(flat_mean, flat_mean, transpose_a=True)
    s_mat = tf.concat([tf.concat([s_xx, s_mm], axis=1), tf.concat([s_mm, s_mm], axis=1)], axis=0)
    s_vec = tf.concat([tf.reduce_sum(flat_x, axis=0), n * tf.reduce_sum(flat_mean, axis=0)], axis=0)
    count = tf.cast(tf.shape(flat_x)[0], flat_x.dtype)
    return s_mat, s_vec, count


def fused_vn_maps(maps, x, mean=None):
    """``E_j(x) + theta_j R_j(x)`` of the relaxed ``VNLinear`` maps ``maps`` that read the same input, as one matmul.

    Each map is the dense map of flattened features ``kron(K_j, I_3) + theta_j W_j`` (plus ``theta_j b_j``), so
    the equivariant map and the branch share one product of the rows ``[points, 3 C]`` with the concatenated
    effective kernels: 9 instead of 3 + 9 multiply-adds per ``(point, c_in, c_out)``, no transposes (the
    flattened layout is the feature layout), and one kernel gradient ``rows^T g`` for both (``dK_j`` is the sum
    of the diagonal ``3 x 3`` blocks).  With ``mean`` (``concat_mean``: the maps read ``[x, mean]``) the top
    rows of the kernels multiply ``x`` and the bottom rows the per-group mean, broadcast over the points, and the
    closed-form penalties use :func:`concat_mean_gram_statistics`.  Penalties are reported to the active
    collector as :meth:`RelaxedEquivariantLayer.add_relaxation` does.  Returns the outputs ``[..., C_j, 3]``.
    """
    dtype = x.dtype
    c = x.shape[-2]
    effective, biases = [], []
    for m in maps:
        theta = tf.cast(m.theta, dtype)
        w = tf.cast(m.relaxation_kernel, dtype)
        effective.append(vn_kernel_as_dense(tf.cast(m.kernel, dtype)) + theta * w)
        b = m.relaxation_bias
        biases.append(theta * tf.cast(b, dtype) if b is not None else tf.zeros([w.shape[1]], dtype))
    widths = [int(w.shape[1]) for w in effective]
    kernel = effective[0] if len(maps) == 1 else tf.concat(effective, axis=1)
    bias = biases[0] if len(maps) == 1 else tf.concat(biases, axis=0)
    lead = tf.shape(x)[:-2]
    rows = tf.reshape(x, [-1, 3 * c])
    if mean is None:
        y = tf.reshape(tf.matmul(rows, kernel) + bias, tf.concat([lead, [sum(widths)]], 0))
    else:
        y = tf.reshape(tf.matmul(rows, kernel[:3 * c]), tf.concat([lead, [sum(widths)]], 0))
        y_mean = tf.reshape(tf.matmul(tf.reshape(mean, [-1, 3 * c]), kernel[3 * c:]) + bias,
                            tf.concat([tf.shape(mean)[:-2], [sum(widths)]], 0))
        y = y + y_mean  # the mean's rows broadcast over the points axis
    parts = [y] if len(maps) == 1 else tf.split(y, widths, axis=-1)
    outputs = [tf.reshape(part, tf.concat([lead, [d // 3, 3]], 0)) for part, d in zip(parts, widths)]

    collector = active_collector()
    if collector is not None:
        if mean is None:
            for m in maps:
                lie, proj = m.branch_penalties(x, collector=collector)
                collector.add(m, lie, proj, None)
        else:
            variable_dtype = tf.as_dtype(maps[0].variable_dtype)
            flat_x = tf.cast(tf.stop_gradient(rows), variable_dtype)
            flat_mean = tf.cast(tf.stop_gradient(tf.reshape(mean, [-1, 3 * c])), variable_dtype)
            gram = concat_mean_gram_statistics(flat_x, flat_mean, tf.shape(x)[-3])
            for m in maps:
                lie, proj = linear_branch_penalties(m.relaxation_kernel, m.relaxation_bias, gram, m.input_rep,
                                                    m.output_rep)
                collector.add(m, lie, proj, None)
    return outputs


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
        raise ValueError(f"{type(layer).__name__} '{layer.name}' with concat_mean=True needs per-point features "
                         f"[batch, points, channels, 3]; got shape {list(input_shape)}.")


class _VectorLayer(RelaxedEquivariantLayer):
    """Shared representation declarations for layers mapping vectors to vectors."""

    def input_representation(self, input_shape):
        return VectorRep(_check_vector_shape(self, input_shape))

    def output_representation(self, input_shape):
        return VectorRep(self.compute_output_shape(input_shape)[-2])


@register
class VNLinear(_VectorLayer):
    """``V' = W V``: mixes channels of vector features, no bias (method.md section 7).

    Args:
        channels: output channels.
        kernel_initializer: initializer of the ``[C_in, C_out]`` kernel
            (default: PyTorch's ``nn.Linear`` default, as in the VN code).
        **kwargs: relaxation arguments of :class:`RelaxedEquivariantLayer`.
    """

    def __init__(self, channels, kernel_initializer=None, **kwargs):
        super().__init__(**kwargs)
        if int(channels) < 1:
            raise ValueError(f"VNLinear needs channels >= 1, got {channels}.")
        self.channels = int(channels)
        self.kernel_initializer = keras.initializers.get(kernel_initializer or _torch_linear_init())

    def build_equivariant(self, input_shape):
        c_in = _check_vector_shape(self, input_shape)
        self.kernel = self.add_weight(name="kernel", shape=(c_in, self.channels),
                                      initializer=self.kernel_initializer)

    def equivariant_call(self, inputs, training=None):
        return vn_linear(inputs, [self.kernel])[0]

    def call(self, inputs, training=None):
        if can_fuse_branches([self], inputs):
            return fused_vn_maps([self], inputs)[0]
        return super().call(inputs, training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-2]) + (self.channels, 3)

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels,
                      kernel_initializer=keras.initializers.serialize(self.kernel_initializer))
        return config


@register
class TorchBatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` that trains like ``torch.nn.BatchNorm*d`` on the CPU.

    Two differences from Keras' layer, both in training mode only:

    * the moving variance averages the *unbiased* batch variance (``n / (n - 1)`` times the
      biased one, which normalises the batch), as torch's ``running_var`` does; Keras averages
      the biased one.  With ``n`` values per channel (e.g. a batch of 12 pooled features) the
      moving variance, and every output of the model in inference mode, differ otherwise;
    * ``float64_statistics=True``: for float32 inputs the batch statistics and the normalisation
      are computed in float64 (torch's CPU kernels accumulate BN sums in double).  Summing
      ``10^4 .. 10^5`` values per channel in float32 costs ~1e-6 relative error, which the
      following VN layers amplify.  The cost is a cast of the layer input (not benchmarked yet).

    ``renorm`` and masks are not supported in training mode (Keras' layer is used with a mask).
    Inference mode is Keras' (moving statistics).  Defaults as torch: ``momentum=0.9`` (torch's
    0.1), ``epsilon=1e-5``.
    """

    def __init__(self, momentum=0.9, epsilon=1e-5, unbiased_moving_variance=True, float64_statistics=True,
                 **kwargs):
        if kwargs.get("renorm"):
            raise ValueError("TorchBatchNormalization does not support renorm=True; "
                             "use keras.layers.BatchNormalization.")
        super().__init__(momentum=momentum, epsilon=epsilon, **kwargs)
        self.unbiased_moving_variance = bool(unbiased_moving_variance)
        self.float64_statistics = bool(float64_statistics)

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or mask is not None:
            return super().call(inputs, training=training, mask=mask)
        dtype = keras.backend.result_type(inputs.dtype, "float32")
        work = "float64" if self.float64_statistics and dtype == "float32" else dtype
        x = tf.cast(inputs, work)
        mean, variance = keras.ops.moments(x, axes=self._reduction_axes, synchronized=self.synchronized)
        moving_variance_update = variance
        if self.unbiased_moving_variance:
            shape = tf.shape(x)
            count = tf.cast(tf.reduce_prod(tf.gather(shape, self._reduction_axes)), work)
            if self.synchronized:
                count *= tf.distribute.get_replica_context().num_replicas_in_sync
            moving_variance_update = variance * count / tf.maximum(count - 1.0, 1.0)
        momentum = tf.constant(self.momentum, dtype=work)  # (tf.cast would round it through float32)
        self.moving_mean.assign(tf.cast(tf.cast(self.moving_mean, work) * momentum + mean * (1.0 - momentum),
                                        self.moving_mean.dtype))
        self.moving_variance.assign(tf.cast(tf.cast(self.moving_variance, work) * momentum
                                            + moving_variance_update * (1.0 - momentum), self.moving_variance.dtype))
        gamma = tf.cast(self.gamma, work) if self.scale else None
        beta = tf.cast(self.beta, work) if self.center else None
        outputs = keras.ops.batch_normalization(x, mean, variance, axis=self.axis, offset=beta, scale=gamma,
                                                epsilon=self.epsilon)
        return tf.cast(outputs, self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(unbiased_moving_variance=self.unbiased_moving_variance,
                      float64_statistics=self.float64_statistics)
        return config


@register
class VNBatchNorm(_VectorLayer):
    """Batch-normalises the vector norms and keeps the directions (``eps`` 1e-6 on the norm).

    The norms go through :class:`TorchBatchNormalization` (the VN code's ``nn.BatchNorm``: unbiased
    moving variance, float64 batch statistics for float32 features).
    """

    has_relaxation_branch = False

    def __init__(self, momentum=0.9, epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.batchnorm = TorchBatchNormalization(axis=-1, momentum=self.momentum, epsilon=self.epsilon,
                                                 dtype=self.dtype_policy, name="batchnorm")

    def build_equivariant(self, input_shape):
        self.batchnorm.build(tuple(input_shape[:-1]))

    def equivariant_call(self, inputs, training=None):
        norm = tf.norm(inputs, axis=-1) + EPS
        norm_bn = self.batchnorm(norm, training=training)
        return inputs * (norm_bn / norm)[..., None]

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(momentum=self.momentum, epsilon=self.epsilon)
        return config


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

    def __init__(self, channels=None, negative_slope=0.2, share_nonlinearity=False, use_batchnorm=True,
                 concat_mean=False, **kwargs):
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
        config.update(channels=self.channels, negative_slope=self.negative_slope,
                      share_nonlinearity=self.share_nonlinearity, use_batchnorm=self.use_batchnorm,
                      concat_mean=self.concat_mean)
        return config


def _pool_axis(layer, rank):
    axis = layer.axis if layer.axis >= 0 else rank + layer.axis
    if axis == 0 or axis >= rank - 2:
        raise ValueError(f"{type(layer).__name__} '{layer.name}' pools over axis {layer.axis}, which must be "
                         f"a points/neighbours axis (not batch, channels or xyz) of the rank-{rank} input.")
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

    def __init__(self, normalize_frame=False, share_nonlinearity=False, negative_slope=0.2,
                 use_batchnorm=True, concat_mean=False, **kwargs):
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
            raise ValueError(f"VNStdFeature '{self.name}' needs at least 4 input channels (it maps C -> C/2 -> C/4); "
                             f"got {c}.")
        if self.normalize_frame and c < 8:
            raise ValueError(f"VNStdFeature '{self.name}' with normalize_frame=True needs at least 8 input channels "
                             f"(C // 4 >= 2 vectors feed Gram-Schmidt); got {c}.")
        super().build(input_shape)

    def build_equivariant(self, input_shape):
        c = self._channels(input_shape)
        relax = self.sublayer_config()
        block = dict(negative_slope=self.negative_slope, share_nonlinearity=self.share_nonlinearity,
                     use_batchnorm=self.use_batchnorm, **relax)
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
        config.update(normalize_frame=self.normalize_frame, share_nonlinearity=self.share_nonlinearity,
                      negative_slope=self.negative_slope, use_batchnorm=self.use_batchnorm,
                      concat_mean=self.concat_mean)
        return config


def knn_indices(features, k):
    """Indices ``[B, N, k]`` of the ``k`` nearest neighbours (self included) of each point.

    ``features``: ``[B, N, D]``; distances are Euclidean in feature space.
    """
    inner = tf.matmul(features, features, transpose_b=True)
    sq = tf.reduce_sum(tf.square(features), axis=-1)
    neg_dist = 2.0 * inner - sq[:, :, None] - sq[:, None, :]
    return tf.math.top_k(neg_dist, k=k).indices


def knn_graph_feature(x, k, cross=False, indices=None):
    """Edge features ``[x_j - x_i, x_i (, x_j x x_i)]`` over the kNN graph of vector features.

    Args:
        x: ``[B, N, C, 3]`` vector features.
        k: number of neighbours (the point itself included, as in the VN/DGCNN code).
        cross: append the cross product ``x_j x x_i`` (VN-PointNet's first layer).
        indices: precomputed ``[B, N, k]`` neighbour indices (else from ``x``).

    Returns:
        ``[B, N, k, 2C (or 3C), 3]``.
    """
    x = tf.convert_to_tensor(x)
    if x.shape.rank != 4 or x.shape[-1] != 3:
        raise ValueError(f"knn_graph_feature expects vector features [batch, points, channels, 3]; "
                         f"got shape {x.shape.as_list()}.")
    n_static = x.shape[1]
    if n_static is not None and k > n_static:
        raise ValueError(f"kNN with k={k} needs at least {k} points per cloud; got {n_static}. "
                         f"Use more points or a smaller k.")
    shape = tf.shape(x)
    if indices is None:
        flat = tf.reshape(x, [shape[0], shape[1], -1])
        # a run-time check only when the number of points is not static (checked above); XLA drops
        # Assert ops with a warning at every compilation
        checks = [] if n_static is not None else [tf.debugging.assert_greater_equal(
            shape[1], k, message=f"kNN with k={k} needs at least {k} points per cloud; "
                                 "use more points or a smaller k.")]
        with tf.control_dependencies(checks):
            # neighbours from float32 distances also under a mixed (bfloat16) policy
            indices = knn_indices(tf.cast(tf.stop_gradient(flat), tf.float32), k)
    neighbours = tf.gather(x, indices, batch_dims=1)  # [B, N, k, C, 3]
    centre = tf.broadcast_to(x[:, :, None], tf.shape(neighbours))
    parts = [neighbours - centre, centre]
    if cross:
        parts.append(tf.linalg.cross(neighbours, centre))
    return tf.concat(parts, axis=-2)


@register
class VNGraphFeature(_VectorLayer):
    """kNN graph features of vector features as a layer (no parameters): see :func:`knn_graph_feature`."""

    has_relaxation_branch = False

    def __init__(self, k=20, cross=False, **kwargs):
        super().__init__(**kwargs)
        if int(k) < 1:
            raise ValueError(f"VNGraphFeature needs k >= 1, got {k}.")
        self.k = int(k)
        self.cross = bool(cross)

    def build_equivariant(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(f"VNGraphFeature '{self.name}' expects [batch, points, channels, 3]; "
                             f"got shape {list(input_shape)}.")
        if input_shape[1] is not None and self.k > input_shape[1]:
            raise ValueError(f"VNGraphFeature '{self.name}': k={self.k} needs at least {self.k} points per "
                             f"cloud, got {input_shape[1]}. Use more points or a smaller k.")

    def equivariant_call(self, inputs, training=None):
        return knn_graph_feature(inputs, self.k, cross=self.cross)

    def compute_output_shape(self, input_shape):
        factor = 3 if self.cross else 2
        return (input_shape[0], input_shape[1], self.k, factor * input_shape[2], 3)

    def get_config(self):
        config = super().get_config()
        config.update(k=self.k, cross=self.cross)
        return config
