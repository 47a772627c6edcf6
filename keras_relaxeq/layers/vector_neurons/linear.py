"""VN linear maps: ``vn_linear``, the fusion of relaxation branches with their maps, and ``VNLinear``."""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_relaxeq.layers.base import active_collector, linear_branch_penalties
from keras_relaxeq.layers.vector_neurons.common import _check_vector_shape, _torch_linear_init, _VectorLayer, register


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
    return [
        tf.reshape(tf.transpose(tf.reshape(part, [-1, 3, d]), [0, 2, 1]), tf.concat([lead, [d, 3]], 0))
        for part, d in zip(parts, widths)
    ]


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
    if not all(
        m is not None
        and m.relaxed
        and m.theta is not None
        and m.relaxation_branch == "linear"
        and not m.relaxation_low_rank
        for m in maps
    ):
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
        y = tf.reshape(tf.matmul(rows, kernel[: 3 * c]), tf.concat([lead, [sum(widths)]], 0))
        y_mean = tf.reshape(
            tf.matmul(tf.reshape(mean, [-1, 3 * c]), kernel[3 * c :]) + bias,
            tf.concat([tf.shape(mean)[:-2], [sum(widths)]], 0),
        )
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
                lie, proj = linear_branch_penalties(
                    m.relaxation_kernel, m.relaxation_bias, gram, m.input_rep, m.output_rep
                )
                collector.add(m, lie, proj, None)
    return outputs


@register
class VNLinear(_VectorLayer):
    """``V' = W V``: mixes channels of vector features, no bias (docs/method.md section 10).

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
        self.kernel = self.add_weight(name="kernel", shape=(c_in, self.channels), initializer=self.kernel_initializer)

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
        config.update(channels=self.channels, kernel_initializer=keras.initializers.serialize(self.kernel_initializer))
        return config
