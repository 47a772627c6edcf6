"""Batch normalisation as torch trains it (``TorchBatchNormalization``) and of vector norms (``VNBatchNorm``)."""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_relaxeq.layers.vector_neurons.common import EPS, _VectorLayer, register


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

    def __init__(self, momentum=0.9, epsilon=1e-5, unbiased_moving_variance=True, float64_statistics=True, **kwargs):
        if kwargs.get("renorm"):
            raise ValueError(
                "TorchBatchNormalization does not support renorm=True; use keras.layers.BatchNormalization."
            )
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
        self.moving_mean.assign(
            tf.cast(tf.cast(self.moving_mean, work) * momentum + mean * (1.0 - momentum), self.moving_mean.dtype)
        )
        self.moving_variance.assign(
            tf.cast(
                tf.cast(self.moving_variance, work) * momentum + moving_variance_update * (1.0 - momentum),
                self.moving_variance.dtype,
            )
        )
        gamma = tf.cast(self.gamma, work) if self.scale else None
        beta = tf.cast(self.beta, work) if self.center else None
        outputs = keras.ops.batch_normalization(
            x, mean, variance, axis=self.axis, offset=beta, scale=gamma, epsilon=self.epsilon
        )
        return tf.cast(outputs, self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(
            unbiased_moving_variance=self.unbiased_moving_variance, float64_statistics=self.float64_statistics
        )
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
        self.batchnorm = TorchBatchNormalization(
            axis=-1, momentum=self.momentum, epsilon=self.epsilon, dtype=self.dtype_policy, name="batchnorm"
        )

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
