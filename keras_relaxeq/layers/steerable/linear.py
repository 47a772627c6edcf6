"""Irreps-typed equivariant linear map (``e3nn.o3.Linear``) as a relaxable Keras layer."""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_relaxeq.groups.irreps import Irreps
from keras_relaxeq.layers.steerable.irreps_layer import IrrepsLayer
from keras_relaxeq.layers.steerable.parsing import irreps_arg, serialize_initializer
from keras_relaxeq.layers.steerable.paths import PathPlan
from keras_relaxeq.utils import set_untracked

register = keras.saving.register_keras_serializable(package="keras_relaxeq")


@register
@register
class O3Linear(IrrepsLayer):
    """Equivariant linear map ``[..., irreps_in.dim] -> [..., irreps_out.dim]`` (``e3nn.o3.Linear``).

    One ``mul_in x mul_out`` weight block per pair of equal irreps (parity included),
    ``N(0, 1)`` weights scaled by ``1/sqrt(fan_in)`` (fan-in: total input multiplicity
    feeding that output block; e3nn ``path_normalization="element"``), and a bias on the
    ``0e`` outputs (zeros).  Output blocks without a matching input irrep are 0 (+ bias).

    Args:
        irreps_in, irreps_out: irreps (strings or ``Irreps``).
        use_bias: add a bias to the ``0e`` outputs.
        kernel_initializer: initializer of the flat kernel ``[weight_numel]``
            (default ``RandomNormal(stddev=1)``; the path normalisation is applied in the forward).
        bias_initializer: initializer of the ``0e`` bias (default zeros).
        **kwargs: relaxation arguments of :class:`RelaxedEquivariantLayer` (the branch maps
            ``irreps_in -> irreps_out``).
    """

    _in1_attr = "irreps_in"

    def __init__(
        self, irreps_in, irreps_out, use_bias=True, kernel_initializer=None, bias_initializer="zeros", **kwargs
    ):
        super().__init__(**kwargs)
        owner = f"O3Linear '{self.name}'"
        set_untracked(self, "irreps_in", irreps_arg(irreps_in, "irreps_in", owner))
        set_untracked(self, "irreps_out", irreps_arg(irreps_out, "irreps_out", owner))
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer if kernel_initializer is not None else keras.initializers.RandomNormal(stddev=1.0)
        )
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.plan = PathPlan(self.irreps_in, Irreps("1x0e"), self.irreps_out, "linear", "linear", self.layout)
        self.kernel = None
        self.bias = None

    @property
    def weight_numel(self) -> int:
        """Number of weights of the equivariant map (``weight_numel`` of e3nn's ``Linear``)."""
        return self.plan.weight_numel

    def build_equivariant(self, input_shape):
        if self.plan.weight_numel:
            self.kernel = self.add_weight(
                name="kernel", shape=(self.plan.weight_numel,), initializer=self.kernel_initializer
            )
        if self.use_bias and len(self.plan.bias_positions):
            self.bias = self.add_weight(
                name="bias", shape=(len(self.plan.bias_positions),), initializer=self.bias_initializer
            )

    def dense_matrix(self):
        """The equivariant map as a dense ``[irreps_in.dim, irreps_out.dim]`` matrix (``y = x M + b``)."""
        return self.plan.dense(self.kernel, self.compute_dtype)

    def dense_bias(self):
        """The bias as a dense ``[irreps_out.dim]`` vector (zeros off the ``0e`` outputs)."""
        if self.bias is None:
            return tf.zeros([self.irreps_out.dim], self.compute_dtype)
        return self.plan.dense_bias(self.bias, self.compute_dtype)

    def equivariant_call(self, inputs, training=None):
        x, _ = self._split_inputs(inputs)
        # a 2-D matmul rather than an einsum over "...": the einsum's gradient for the kernel materialises
        # [..., D_in, D_out] before summing (slow, and worse in second-order gradients)
        lead = tf.shape(x)[:-1]
        out = tf.matmul(tf.reshape(x, [-1, self.irreps_in.dim]), self.dense_matrix())
        if self.bias is not None:
            out = out + self.dense_bias()
        return tf.reshape(out, tf.concat([lead, [self.irreps_out.dim]], 0))

    def get_config(self):
        config = super().get_config()
        config.update(
            irreps_in=str(self.irreps_in),
            irreps_out=str(self.irreps_out),
            use_bias=self.use_bias,
            kernel_initializer=serialize_initializer(self.kernel_initializer),
            bias_initializer=serialize_initializer(self.bias_initializer),
        )
        return config


__all__ = ["O3Linear"]
