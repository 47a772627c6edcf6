"""The scale-equivariant convolution layers (module notes of :mod:`keras_relaxeq.layers.scale_conv`)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from keras_relaxeq.groups.scale import (
    DEFAULT_SCALES,
    ScaleFieldRep,
    basis_orders,
    check_scales,
    hermite_scale_basis,
    scale_pairs,
)
from keras_relaxeq.layers.base import RelaxedEquivariantLayer, build_conv_branch, report_branch_penalties
from keras_relaxeq.layers.rsteer import rsteer_smoothness
from keras_relaxeq.layers.scale_conv.penalties import (
    SCALE_PENALTIES,
    equivariant_kernel_residual,
    scale_lie_derivative_defect,
    scale_step_defect,
    scale_subspace_defect,
)
from keras_relaxeq.utils import set_untracked

register = keras.saving.register_keras_serializable(package="keras_relaxeq")

__all__ = [
    "RSteerScaleConv2D",
    "RSteerScaleLiftingConv2D",
    "ScaleConv2D",
    "ScaleLiftingConv2D",
    "ScalePooling",
]


# --------------------------------------------------------------------------- layers
class _ScaleConvBase(RelaxedEquivariantLayer):
    """Shared by the lifting and scale-space layers: the basis, coefficients, bias and activation."""

    per_tap = False

    def __init__(
        self,
        filters,
        scales=DEFAULT_SCALES,
        kernel_size=5,
        max_order=3,
        use_bias=True,
        activation=None,
        kernel_gain=2.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(filters) != filters or int(filters) < 1:
            raise ValueError(f"filters must be a positive integer, got {filters!r}.")
        self.filters = int(filters)
        self.scales = check_scales(scales)
        basis = hermite_scale_basis(self.scales, kernel_size, max_order)  # checks kernel_size and max_order
        self.kernel_size, self.max_order = int(kernel_size), int(max_order)
        set_untracked(self, "basis_numpy", basis)
        self.use_bias = bool(use_bias)
        self.activation = keras.activations.get(activation) if activation is not None else None
        self.kernel_gain = float(kernel_gain)

    @property
    def num_scales(self) -> int:
        return len(self.scales)

    @property
    def num_basis(self) -> int:
        return len(basis_orders(self.max_order))

    def _mixing(self) -> int:
        return 1

    def output_representation(self, input_shape):
        return ScaleFieldRep(self.filters, self.scales)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:3]) + (self.num_scales, self.filters)

    def build_equivariant(self, input_shape):
        c_in = self.input_rep.channels
        set_untracked(self, "in_channels", c_in)
        set_untracked(self, "built_input_shape", tuple(input_shape))
        shape = (self._mixing(), c_in, self.filters, self.num_basis)
        if self.per_tap:
            shape += (self.kernel_size, self.kernel_size)
        # the basis at the first scale is ~orthonormal: each output sums mixing * C_in * B unit-variance terms
        std = float(np.sqrt(self.kernel_gain / (self._mixing() * c_in * self.num_basis)))
        self.coefficients = self.add_weight(
            name="coefficients", shape=shape, initializer=keras.initializers.RandomNormal(stddev=std), autocast=False
        )
        self.bias = (
            self.add_weight(name="bias", shape=(self.filters,), initializer="zeros", autocast=False)
            if self.use_bias
            else None
        )

    def scale_kernels(self, dtype=None):
        """The kernels ``[mixing, k, k, C_in, S, C_out]``: entry ``[j, ..., s, :]`` maps input slice ``s + j``
        (the image, for lifting) to output slice ``s``."""
        dtype = dtype or self.compute_dtype
        basis = tf.constant(self.basis_numpy, dtype)  # [S, B, k, k]
        w = tf.cast(self.coefficients, dtype)
        eq = "jiobyx,sbyx->jyxiso" if self.per_tap else "jiob,sbyx->jyxiso"
        return tf.einsum(eq, w, basis)

    def call(self, inputs, training=None):
        outputs = super().call(inputs, training=training)  # E(x) + theta R(x)
        if training and self.per_tap and self.alpha:
            self.add_loss(self.alpha * tf.cast(self.smoothness_penalty(), tf.float32))
        return self.activation(outputs) if self.activation is not None else outputs

    def smoothness_penalty(self):
        """RSteer's ``mean |difference of neighbouring per-tap coefficients|`` (without ``alpha``)."""
        if not self.per_tap:
            raise AttributeError(f"{type(self).__name__} has no per-tap coefficients.")
        return rsteer_smoothness([tf.convert_to_tensor(self.coefficients)])

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "scales": list(self.scales),
                "kernel_size": self.kernel_size,
                "max_order": self.max_order,
                "use_bias": self.use_bias,
                "activation": keras.activations.serialize(self.activation) if self.activation is not None else None,
                "kernel_gain": self.kernel_gain,
            }
        )
        return config


@register
class ScaleLiftingConv2D(_ScaleConvBase):
    """Images ``[B, H, W, C_in]`` -> scale-space fields ``[B, H, W, S, filters]`` (SESN's Z2 -> H convolution).

    Args:
        filters: output channels per scale.
        scales: the increasing scales ``sigma`` of the basis (default ``(1, 1.5, 2, 2.5)``).
        kernel_size: odd size of every kernel (5; the basis is truncated to it at every scale).
        max_order: Hermite orders ``n + m <= max_order`` (3: ten basis functions).
        use_bias: one bias per output channel, shared by the scales.
        activation: pointwise activation after the (relaxed) convolution.
        kernel_gain: coefficients drawn ``N(0, gain / (C_in B))``.
        scale_penalty: ``"step"`` (default), ``"lie"`` or ``"subspace"``, the branch's equivariance penalty (module
            notes).
        scale_step: the integer grid step of ``"step"`` (2); ``scales`` must contain pairs ``sigma, step sigma``.
        **kwargs: relaxation settings of :class:`RelaxedEquivariantLayer` (``relaxed``, ``relaxation_initializer``,
            ``relaxation_use_bias``, ``theta``; the branch is a convolution) and Keras layer arguments.
    """

    def __init__(self, filters, scales=DEFAULT_SCALES, kernel_size=5, scale_penalty="step", scale_step=2, **kwargs):
        super().__init__(filters, scales=scales, kernel_size=kernel_size, **kwargs)
        if self.relaxation_branch != "linear" or self.relaxation_rank is not None:
            raise ValueError(
                f"{type(self).__name__}: the relaxation branch is a convolution; use relaxation_branch='linear' "
                "and relaxation_rank=None."
            )
        if scale_penalty not in SCALE_PENALTIES:
            raise ValueError(f"scale_penalty must be one of {SCALE_PENALTIES}, got {scale_penalty!r}.")
        if int(scale_step) != scale_step or int(scale_step) < 2:
            raise ValueError(f"scale_step must be an integer >= 2 (an exact grid step), got {scale_step!r}.")
        self.scale_penalty, self.scale_step = scale_penalty, int(scale_step)
        if self.relaxed and scale_penalty == "step" and not scale_pairs(self.scales, self.scale_step):
            raise ValueError(
                f"scale_penalty='step' compares slices sigma and {self.scale_step} sigma, but the scales "
                f"{self.scales} have no such pair: add one (e.g. 1 and {self.scale_step}) or use "
                "scale_penalty='subspace' or 'lie'."
            )
        self.relaxation_is_conv = True

    def input_representation(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                f"{type(self).__name__} '{self.name}' expects images [batch, H, W, C]; got shape {list(input_shape)}."
            )
        if input_shape[-1] is None:
            raise ValueError(f"{type(self).__name__} '{self.name}' needs a known number of input channels.")
        return ScaleFieldRep(input_shape[-1])

    def kernel_value(self, dtype=None):
        """The stacked kernel ``[k, k, C_in, S * C_out]`` (output channel ``s * C_out + o``)."""
        k = self.scale_kernels(dtype)[0]
        return tf.reshape(k, [self.kernel_size, self.kernel_size, self.in_channels, -1])

    def _to_scale_space(self, y):
        shape = tf.shape(y)
        return tf.reshape(y, tf.concat([shape[:3], [self.num_scales, self.filters]], 0))

    def equivariant_call(self, inputs, training=None):
        y = self._to_scale_space(tf.nn.conv2d(inputs, self.kernel_value(inputs.dtype), strides=1, padding="SAME"))
        if self.bias is not None:
            y = y + tf.cast(self.bias, y.dtype)
        return y

    # -- the convolution branch ----------------------------------------------------------
    def _build_branch(self, in_rep, out_rep):
        build_conv_branch(self, self.kernel_size, in_rep.dim, out_rep.dim)

    def relaxation_branch_fn(self, x):
        """The branch ``R(x) = conv(x, W_R) + b_R`` as scale-space fields ``[B, H, W, S, C_out]`` (dtype of ``x``)."""
        y = tf.nn.conv2d(x, tf.cast(self.relaxation_kernel, x.dtype), strides=1, padding="SAME")
        if self.relaxation_bias is not None:
            y = y + tf.cast(self.relaxation_bias, x.dtype)
        return self._to_scale_space(y)

    def branch(self, flat_x):
        raise NotImplementedError(
            f"{type(self).__name__}: the relaxation branch is a convolution of whole images; use relaxation_branch_fn."
        )

    def add_relaxation(self, inputs, outputs):
        """``outputs + theta * R(inputs)``; reports the penalties to the active collector."""
        contribution = tf.cast(self.theta, outputs.dtype) * self.relaxation_branch_fn(inputs)
        report_branch_penalties(self, inputs, lambda: (outputs, contribution), tf.reduce_prod(tf.shape(outputs)[:-1]))
        return outputs + contribution

    def branch_penalties(self, inputs, collector=None, method=None):
        """``(LD, N)`` of the branch on ``stop_gradient(inputs)`` in the variables' dtype: the step defect or the
        Lie derivative or the distance to the equivariant kernels (``method``: ``"step"`` / ``"lie"`` / ``"subspace"``,
        default ``scale_penalty``)."""
        method = method or self.scale_penalty
        if method not in SCALE_PENALTIES:
            raise ValueError(f"method must be one of {SCALE_PENALTIES}, got {method!r}.")
        x = tf.stop_gradient(tf.convert_to_tensor(inputs))
        variable_dtype = tf.as_dtype(self.variable_dtype)
        if x.dtype != variable_dtype:
            x = tf.cast(x, variable_dtype)
        if method == "subspace":
            if getattr(self, "_kernel_residual", None) is None:
                set_untracked(self, "_kernel_residual", equivariant_kernel_residual(self.basis_numpy))
            return scale_subspace_defect(
                self.relaxation_kernel, self.relaxation_bias, x, self._kernel_residual, self.num_scales
            )
        if method == "step":
            return scale_step_defect(self.relaxation_branch_fn, x, self.scales, self.scale_step, self.kernel_size // 2)
        return scale_lie_derivative_defect(self.relaxation_branch_fn, x, self.scales, margin=self.kernel_size // 2 + 1)

    def get_config(self):
        config = super().get_config()
        config.update(scale_penalty=self.scale_penalty, scale_step=self.scale_step)
        return config


@register
class ScaleConv2D(_ScaleConvBase):
    """Scale-space fields ``[B, H, W, S, C_in]`` -> ``[B, H, W, S, filters]`` (SESN's H -> H convolution).

    Args:
        filters, scales, kernel_size, max_order, use_bias, activation, kernel_gain: as
            :class:`ScaleLiftingConv2D`; ``scales`` must be the input's.
        scale_size: how many neighbouring input slices ``s .. s + scale_size - 1`` output slice ``s`` reads (1: none
            mixed).
        **kwargs: Keras layer arguments.  The layer is not relaxable (``relaxed`` must be False): the scale step
            of a scale-space input is exact only on geometric scale lists, so the relaxed layer of the scale
            models is the lifting layer.
    """

    def __init__(self, filters, scales=DEFAULT_SCALES, kernel_size=5, scale_size=1, relaxed=False, **kwargs):
        if relaxed:
            raise ValueError(
                f"{type(self).__name__} has no relaxation branch; relax the first layer (ScaleLiftingConv2D) "
                "and pass relaxed=False here."
            )
        super().__init__(filters, scales=scales, kernel_size=kernel_size, relaxed=False, **kwargs)
        if int(scale_size) != scale_size or not 1 <= int(scale_size) <= len(self.scales):
            raise ValueError(f"scale_size must be an integer in [1, {len(self.scales)}], got {scale_size!r}.")
        self.scale_size = int(scale_size)

    def _mixing(self) -> int:
        return self.scale_size

    def input_representation(self, input_shape):
        if len(input_shape) != 5 or input_shape[3] != self.num_scales or input_shape[-1] is None:
            raise ValueError(
                f"{type(self).__name__} '{self.name}' expects scale-space fields [batch, H, W, {self.num_scales}, C] "
                f"(scales {self.scales}); got shape {list(input_shape)}."
            )
        return ScaleFieldRep(input_shape[-1], self.scales)

    def kernel_value(self, dtype=None):
        """The block kernel ``[k, k, S * C_in, S * C_out]``: input ``(t, i)`` -> output ``(s, o)`` for ``t = s + j``."""
        dtype = dtype or self.compute_dtype
        kernels = self.scale_kernels(dtype)  # [J, k, k, C_in, S, C_out]
        n = self.num_scales
        shifts = np.stack([np.eye(n, k=-j) for j in range(self.scale_size)])  # [J, t, s]: 1 where t = s + j
        block = tf.einsum("jyxiso,jts->yxtiso", kernels, tf.constant(shifts, dtype))
        k = self.kernel_size
        return tf.reshape(block, [k, k, n * self.in_channels, n * self.filters])

    def equivariant_call(self, inputs, training=None):
        """One convolution per output slice ``s`` of the slices ``s .. s + scale_size - 1`` (zeros past the last),
        ``S * scale_size`` blocks instead of the ``S^2`` of :meth:`kernel_value` (same result)."""
        kernels = self.scale_kernels(inputs.dtype)  # [J, k, k, C_in, S, C_out]
        n, size, k = self.num_scales, self.scale_size, self.kernel_size
        if size > 1:
            pad = tf.zeros_like(inputs[..., :1, :])
            inputs = tf.concat([inputs] + [pad] * (size - 1), axis=3)
        shape = tf.shape(inputs)
        outputs = []
        for s in range(n):
            x_s = tf.reshape(inputs[..., s : s + size, :], tf.concat([shape[:3], [size * self.in_channels]], 0))
            w_s = tf.reshape(kernels[:, :, :, :, s, :], [size, k, k, self.in_channels, self.filters])
            w_s = tf.reshape(tf.transpose(w_s, [1, 2, 0, 3, 4]), [k, k, size * self.in_channels, self.filters])
            outputs.append(tf.nn.conv2d(x_s, w_s, strides=1, padding="SAME"))
        y = tf.stack(outputs, axis=3)
        if self.bias is not None:
            y = y + tf.cast(self.bias, y.dtype)
        return y

    def get_config(self):
        config = super().get_config()
        config["scale_size"] = self.scale_size
        return config


class _RSteerMixin:
    per_tap = True

    @classmethod
    def from_equivariant(cls, layer, **kwargs):
        """An RSteer layer with ``layer``'s coefficients constant over the taps (the same kernels), built."""
        config = layer.get_config()
        config.pop("name", None)
        config.update(kwargs)
        new = cls(**config)
        new.build(layer.built_input_shape)
        k = layer.kernel_size
        new.coefficients.assign(tf.tile(tf.convert_to_tensor(layer.coefficients)[..., None, None], [1, 1, 1, 1, k, k]))
        if layer.bias is not None:
            new.bias.assign(layer.bias)
        return new


@register
class RSteerScaleLiftingConv2D(_RSteerMixin, ScaleLiftingConv2D):
    """RSteer lifting layer: :class:`ScaleLiftingConv2D` with per-tap coefficients and the smoothness penalty
    ``alpha`` (default ``1e-6``); ``relaxed=True`` adds the convolution branch on top ("RSteer + ours")."""

    def __init__(self, filters, alpha=1e-6, **kwargs):
        super().__init__(filters, **kwargs)
        self.alpha = float(alpha)

    def get_config(self):
        return dict(super().get_config(), alpha=self.alpha)


@register
class RSteerScaleConv2D(_RSteerMixin, ScaleConv2D):
    """RSteer scale-space layer: :class:`ScaleConv2D` with per-tap coefficients and the smoothness penalty."""

    def __init__(self, filters, alpha=1e-6, **kwargs):
        super().__init__(filters, **kwargs)
        self.alpha = float(alpha)

    def get_config(self):
        return dict(super().get_config(), alpha=self.alpha)


@register
class ScalePooling(keras.layers.Layer):
    """Scale-space fields ``[B, H, W, S, C]`` -> images ``[B, H, W, C]``: the max (or mean) over the scales, so a
    dilation of the input (a shift along the scale axis) leaves the pooled value unchanged where no slice leaves
    the list."""

    def __init__(self, mode="max", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("max", "mean"):
            raise ValueError(f"mode must be 'max' or 'mean', got {mode!r}.")
        self.mode = mode

    def build(self, input_shape):
        if len(input_shape) != 5:
            raise ValueError(
                f"ScalePooling '{self.name}' expects scale-space fields [batch, H, W, S, C]; got {list(input_shape)}."
            )

    def call(self, inputs):
        return tf.reduce_max(inputs, axis=3) if self.mode == "max" else tf.reduce_mean(inputs, axis=3)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:3]) + (input_shape[4],)

    def get_config(self):
        return dict(super().get_config(), mode=self.mode)
