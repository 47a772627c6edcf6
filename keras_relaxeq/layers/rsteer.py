"""RSteer: the relaxed steerable convolution of Wang, Walters and Yu (ICML 2022), relaxable further.

An approximately equivariant baseline.  The kernel is built from the same equivariant basis ``B_b`` as
:class:`~keras_relaxeq.layers.group_conv.CyclicConv2D`, but its coefficients may differ from one kernel tap to
the next,

    W[d] = sum_b c_b[d] B_b[d],

so the layer is exactly equivariant when every ``c_b`` is constant over the taps ``d`` (then ``W`` is an
equivariant kernel) and only approximately otherwise.  RSteer's own penalty pulls the coefficients towards
constants:

    smoothness = mean | c_b[d_{j+1}] - c_b[d_j] |

over neighbouring taps in raster order of the ``k x k`` kernel (the published code's differences along the
flattened tap axis, row ends wrapping to the next row), over all coefficients; the layer adds
``alpha * smoothness`` to the model's losses (``layer.losses``, which ``Model.fit`` adds to the loss).  The
published training loop squares the model-level sum (an MSE against 0); :meth:`RSteerConv2D.smoothness_penalty`
gives the raw value for such variants.

Differences from the published layer: the bias is the equivariant one (one per regular field), where the
published bias is free per channel (not equivariant even with constant coefficients); the coefficients are
drawn independently per tap with the variance of the equivariant layer, as the published code does.

``relaxed=True`` adds the method's branch ``theta * conv(x, W_R)`` on top (the "RSteer + relaxation" arm), with
the generator-defect penalty; ``project()`` drops the branch and leaves the RSteer layer.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_relaxeq.groups.cyclic import FieldType
from keras_relaxeq.layers.group_conv import CyclicConv2D

register = keras.saving.register_keras_serializable(package="keras_relaxeq")

__all__ = ["RSteerConv2D", "rsteer_smoothness"]


def rsteer_smoothness(coefficients):
    """``mean |c[..., j + 1] - c[..., j]|`` over the raster-ordered taps of ``[..., k, k]`` coefficient tensors
    (a list, concatenated: the mean is over every difference of every tensor)."""
    diffs = []
    for c in coefficients:
        flat = tf.reshape(c, tf.concat([tf.shape(c)[:-2], [-1]], 0))
        diffs.append(tf.reshape(tf.abs(flat[..., 1:] - flat[..., :-1]), [-1]))
    if not diffs:
        return tf.zeros(())
    return tf.reduce_mean(tf.concat(diffs, axis=0))


@register
class RSteerConv2D(CyclicConv2D):
    """RSteer convolution between C_N field types: equivariant-basis coefficients that vary over the kernel taps.

    Args:
        out_type, in_type, kernel_size, group_order, use_bias, activation, kernel_gain: as
            :class:`~keras_relaxeq.layers.group_conv.CyclicConv2D` (e.g. ``out_type=[["regular", 8]]``,
            ``in_type="vector"`` for a lifting layer, ``out_type="vector"`` for the last layer).
        alpha: weight of the smoothness penalty added to ``layer.losses`` in training (0 turns it off).
        **kwargs: relaxation settings (``relaxed=True`` adds the conv branch) and Keras layer arguments.
    """

    def __init__(self, out_type, in_type="regular", kernel_size=3, alpha=1.0, **kwargs):
        super().__init__(out_type, in_type=in_type, kernel_size=kernel_size, **kwargs)
        self.alpha = float(alpha)

    def coefficient_shape(self, i, o, n):
        k = self.kernel_size
        return (self.layout.groups_in[i][1], self.layout.groups_out[o][1], n, k, k)

    def kernel_value(self, dtype=None):
        dtype = dtype or self.compute_dtype
        coeffs = {key: tf.cast(v, dtype) for key, v in self.coefficients.items()}
        return self.layout.assemble(coeffs, dtype, per_position=True)

    def smoothness_penalty(self):
        """``mean |difference of neighbouring coefficients|`` (module notes), without ``alpha``."""
        return rsteer_smoothness([tf.convert_to_tensor(v) for v in self.coefficients.values()])

    def call(self, inputs, training=None):
        outputs = super().call(inputs, training=training)
        if training and self.alpha:
            self.add_loss(self.alpha * tf.cast(self.smoothness_penalty(), tf.float32))
        return outputs

    @classmethod
    def from_equivariant(cls, layer: CyclicConv2D, **kwargs) -> RSteerConv2D:
        """An RSteer layer whose coefficients are ``layer``'s, constant over the taps (so the same kernel), built."""
        config = layer.get_config()
        for key in ("name", "filters"):
            config.pop(key, None)
        config["out_type"] = [list(r) for r in _spec(layer.out_type)]
        config["in_type"] = [list(r) for r in _spec(layer.in_type)]
        config.update(kwargs)
        new = cls(**config)
        new.build(layer.built_input_shape)
        k = layer.kernel_size
        for key, var in layer.coefficients.items():
            new.coefficients[key].assign(tf.tile(tf.convert_to_tensor(var)[..., None, None], [1, 1, 1, k, k]))
        for key, var in layer.bias_coefficients.items():
            new.bias_coefficients[key].assign(var)
        return new

    def get_config(self):
        config = super().get_config()
        config["alpha"] = self.alpha
        return config


def _spec(field_type: FieldType):
    from keras_relaxeq.groups.cyclic_kernels import field_type_spec

    return field_type_spec(field_type)
