"""Radial features of the Equiformer edges: a Gaussian basis with a smooth cutoff envelope, and the radial MLP
that turns it into per-edge tensor-product weights."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

register = keras.saving.register_keras_serializable(package="keras_relaxeq")


def smooth_envelope(distances, cutoff, exponent=5):
    """DimeNet's polynomial envelope ``u(d / cutoff)``, zero beyond the cutoff.

    ``u(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2)`` with ``p = exponent``: ``u(0) = 1`` and
    ``u``, ``u'`` and ``u''`` vanish at ``x = 1``, so energies built from enveloped edge terms have continuous
    forces (and force derivatives) when an atom crosses the cutoff.
    """
    p = float(exponent)
    x = distances / tf.cast(cutoff, distances.dtype)
    inside = x < 1.0
    xs = tf.where(inside, x, tf.zeros_like(x))  # keeps the polynomial (and its gradients) finite outside
    poly = 1.0 - (p + 1) * (p + 2) / 2 * xs**p + p * (p + 2) * xs ** (p + 1) - p * (p + 1) / 2 * xs ** (p + 2)
    return tf.where(inside, poly, tf.zeros_like(poly))


def safe_norm(vectors, axis=-1):
    """``|v|`` with finite first and second derivatives at ``v = 0`` (value 0 there, gradient 0)."""
    sq = tf.reduce_sum(tf.square(vectors), axis=axis)
    nonzero = sq > 0
    return tf.where(nonzero, tf.sqrt(tf.where(nonzero, sq, tf.ones_like(sq))), tf.zeros_like(sq))


@register
class GaussianRadialBasis(keras.layers.Layer):
    """``num_basis`` Gaussians ``exp(-((d - mu_k) / sigma)^2 / 2)`` with centres evenly spaced on ``[0, cutoff]`` and
    ``sigma`` their spacing, times :func:`smooth_envelope`.  Input distances ``[...]``, output ``[..., num_basis]``.
    No weights (Equiformer's MD17 basis learns centres and widths; fixed ones keep the basis a pure function)."""

    def __init__(self, num_basis=32, cutoff=5.0, envelope_exponent=5, **kwargs):
        super().__init__(**kwargs)
        if int(num_basis) < 1 or float(cutoff) <= 0:
            raise ValueError(f"GaussianRadialBasis: need num_basis >= 1 and cutoff > 0, got {num_basis}, {cutoff}.")
        self.num_basis = int(num_basis)
        self.cutoff = float(cutoff)
        self.envelope_exponent = int(envelope_exponent)
        self.centres = np.linspace(0.0, self.cutoff, self.num_basis)
        self.width = self.cutoff / max(self.num_basis - 1, 1)

    def call(self, distances):
        d = tf.cast(distances, self.compute_dtype)
        mu = tf.constant(self.centres, d.dtype)
        gauss = tf.exp(-0.5 * tf.square((d[..., None] - mu) / self.width))
        return gauss * smooth_envelope(d, self.cutoff, self.envelope_exponent)[..., None]

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.num_basis,)

    def get_config(self):
        config = super().get_config()
        config.update(num_basis=self.num_basis, cutoff=self.cutoff, envelope_exponent=self.envelope_exponent)
        return config


@register
class RadialMLP(keras.layers.Layer):
    """Equiformer's ``RadialProfile``: ``Dense -> LayerNorm -> SiLU`` per hidden width, then a ``Dense`` to
    ``num_outputs`` per-edge weights.  Called on ``(radial_basis [..., R], edge_weight [...])``; the output is
    multiplied by ``edge_weight`` (mask times envelope), so the weights vanish smoothly at the cutoff."""

    def __init__(self, num_outputs, hidden_units=(64, 64), **kwargs):
        super().__init__(**kwargs)
        self.num_outputs = int(num_outputs)
        self.hidden_units = tuple(int(h) for h in hidden_units)
        self.hidden = []
        for i, h in enumerate(self.hidden_units):
            self.hidden.append(keras.layers.Dense(h, name=f"dense_{i}", dtype=self.dtype_policy))
            self.hidden.append(keras.layers.LayerNormalization(name=f"norm_{i}", dtype=self.dtype_policy))
        self.out = keras.layers.Dense(self.num_outputs, name="out", dtype=self.dtype_policy)

    def build(self, input_shape):
        shape = tuple(input_shape[0])
        for layer in self.hidden:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        self.out.build(shape)
        self.built = True

    def call(self, inputs):
        rbf, edge_weight = inputs
        h = tf.cast(rbf, self.compute_dtype)
        for i in range(0, len(self.hidden), 2):
            h = tf.nn.silu(self.hidden[i + 1](self.hidden[i](h)))
        return self.out(h) * tf.cast(edge_weight, h.dtype)[..., None]

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0][:-1]) + (self.num_outputs,)

    def get_config(self):
        config = super().get_config()
        config.update(num_outputs=self.num_outputs, hidden_units=list(self.hidden_units))
        return config


__all__ = ["GaussianRadialBasis", "RadialMLP", "safe_norm", "smooth_envelope"]
