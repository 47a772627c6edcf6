"""Nonlinearities and normalisation of steerable features: :class:`Gate` (``e3nn.nn.Gate``) and
:class:`SteerableNorm` (SEGNN ``InstanceNorm``, e3nn ``BatchNorm``).  Neither has a relaxation branch."""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from keras_relaxeq.groups.irreps import Irreps
from keras_relaxeq.layers.steerable.irreps_layer import IrrepsLayer
from keras_relaxeq.layers.steerable.parsing import activation_id, irreps_arg
from keras_relaxeq.utils import set_untracked

register = keras.saving.register_keras_serializable(package="keras_relaxeq")

NORM_MODES = ("instance", "batch", "layer")
NORM_REDUCE = ("mean", "max")
NORM_NORMALIZATION = ("component", "norm")


def normalize2mom_constant(activation) -> float:
    """``1 / sqrt(E[f(z)^2])`` for ``z ~ N(0, 1)`` (e3nn ``normalize2mom``), by Gauss-Hermite quadrature."""
    z, w = np.polynomial.hermite_e.hermegauss(128)
    with tf.init_scope():
        fz = np.asarray(keras.ops.convert_to_numpy(activation(tf.constant(z, tf.float64))), np.float64)
    second = float(np.sum(w * fz**2) / math.sqrt(2.0 * math.pi))
    cst = 1.0 / math.sqrt(second)
    return 1.0 if abs(cst - 1.0) < 1e-4 else cst


def is_odd(activation) -> bool:
    """Whether ``activation(-z) == -activation(z)`` (checked on a few points, float64)."""
    z = np.linspace(0.1, 3.0, 7)
    with tf.init_scope():
        fp = keras.ops.convert_to_numpy(activation(tf.constant(z, tf.float64)))
        fm = keras.ops.convert_to_numpy(activation(tf.constant(-z, tf.float64)))
    return bool(np.allclose(fm, -fp, atol=1e-9))


# --------------------------------------------------------------------------- Gate
@register
@register
class Gate(IrrepsLayer):
    """Gate nonlinearity (``e3nn.nn.Gate``; SEGNN's ``O3SwishGate``).

    Input ``irreps_scalars + irreps_gates + irreps_gated`` with
    ``irreps_gates = f"{irreps_gated.num_irreps}x0e"``; output
    ``irreps_scalars + irreps_gated``:

        out = act(scalars)  (+)  gated_j * gate_act(gate_j)

    one gate scalar per gated irrep copy.  As in e3nn the activations are rescaled to unit
    second moment under ``N(0, 1)`` (``normalize2mom``) when ``normalize_activations``.
    ``irreps_scalars`` must be ``l = 0``; ``0o`` scalars need an odd activation (``tanh``),
    otherwise the layer would break parity.

    Args:
        irreps_scalars: scalars passed through ``scalar_activation`` (default SiLU).
        irreps_gated: irreps multiplied by the gates (any ``l``, any parity).
        scalar_activation, gate_activation: Keras activation names or callables.
        normalize_activations: e3nn's ``normalize2mom`` rescaling.
    """

    has_relaxation_branch = False
    _in1_attr = "irreps_in"

    def __init__(
        self,
        irreps_scalars,
        irreps_gated="",
        scalar_activation="silu",
        gate_activation="sigmoid",
        normalize_activations=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        owner = f"Gate '{self.name}'"
        set_untracked(self, "irreps_scalars", irreps_arg(irreps_scalars, "irreps_scalars", owner, allow_empty=True))
        set_untracked(self, "irreps_gated", irreps_arg(irreps_gated, "irreps_gated", owner, allow_empty=True))
        if any(ir.l != 0 for mul, ir in self.irreps_scalars if mul):
            raise ValueError(f"{owner}: irreps_scalars must be scalars (l = 0), got '{self.irreps_scalars}'.")
        set_untracked(
            self,
            "irreps_gates",
            Irreps(f"{self.irreps_gated.num_irreps}x0e") if self.irreps_gated.num_irreps else Irreps(""),
        )
        set_untracked(
            self,
            "irreps_in",
            (self.irreps_scalars + self.irreps_gates + self.irreps_gated).remove_zero_multiplicities(),
        )
        set_untracked(self, "irreps_out", (self.irreps_scalars + self.irreps_gated).remove_zero_multiplicities())
        if self.irreps_in.dim == 0:
            raise ValueError(f"{owner}: no features (irreps_scalars and irreps_gated are both empty).")
        self.scalar_activation_id = activation_id(scalar_activation)
        self.gate_activation_id = activation_id(gate_activation)
        self.scalar_activation = keras.activations.get(scalar_activation)
        self.gate_activation = keras.activations.get(gate_activation)
        self.normalize_activations = bool(normalize_activations)
        if any(ir.p == -1 for mul, ir in self.irreps_scalars if mul) and not is_odd(self.scalar_activation):
            raise ValueError(
                f"{owner}: odd scalars (0o) in irreps_scalars '{self.irreps_scalars}' need an odd "
                f"scalar_activation (e.g. 'tanh') to stay O(3)-equivariant; "
                f"{self.scalar_activation_id!r} is not odd. Gate them instead."
            )
        self.scalar_constant = normalize2mom_constant(self.scalar_activation) if self.normalize_activations else 1.0
        self.gate_constant = (
            normalize2mom_constant(self.gate_activation)
            if self.normalize_activations and self.irreps_gated.num_irreps
            else 1.0
        )

    def equivariant_call(self, inputs, training=None):
        x, _ = self._split_inputs(inputs)
        ns, ng, nd = self.irreps_scalars.dim, self.irreps_gates.dim, self.irreps_gated.dim
        # tf.split / reshapes rather than strided slices and a gather: their gradients are much cheaper
        sizes = [d for d in (ns, ng, nd) if d]
        pieces = iter(tf.split(x, sizes, axis=-1) if len(sizes) > 1 else [x])
        parts = []
        if ns:
            parts.append(self.scalar_activation(next(pieces)) * tf.cast(self.scalar_constant, x.dtype))
        if nd:
            gates = self.gate_activation(next(pieces)) * tf.cast(self.gate_constant, x.dtype)
            gated = next(pieces)
            lead = tf.shape(x)[:-1]
            blocks = [(mul, ir.dim) for mul, ir in self.irreps_gated if mul]
            gate_blocks = tf.split(gates, [m for m, _ in blocks], axis=-1) if len(blocks) > 1 else [gates]
            gated_blocks = tf.split(gated, [m * d for m, d in blocks], axis=-1) if len(blocks) > 1 else [gated]
            for (mul, d), g, f in zip(blocks, gate_blocks, gated_blocks):
                if d == 1:
                    parts.append(f * g)
                elif self.layout == "ir_mul":
                    prod = tf.reshape(f, [-1, d, mul]) * tf.reshape(g, [-1, 1, mul])
                    parts.append(tf.reshape(prod, tf.concat([lead, [mul * d]], 0)))
                else:
                    prod = tf.reshape(f, [-1, mul, d]) * tf.reshape(g, [-1, mul, 1])
                    parts.append(tf.reshape(prod, tf.concat([lead, [mul * d]], 0)))
        return parts[0] if len(parts) == 1 else tf.concat(parts, axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(
            irreps_scalars=str(self.irreps_scalars),
            irreps_gated=str(self.irreps_gated),
            scalar_activation=self.scalar_activation_id,
            gate_activation=self.gate_activation_id,
            normalize_activations=self.normalize_activations,
        )
        return config


def gate_irreps(irreps_out):
    """SEGNN's split of ``irreps_out`` for a gated tensor product.

    Returns ``(irreps_scalars, irreps_gated, irreps_tp_out)``: the leading ``0e`` terms are the
    scalars (SEGNN assumes ``irreps_out[0]``), everything after is gated, and the tensor product
    must produce ``(scalars + gates + gated).simplify()`` with one ``0e`` gate per gated copy.
    """
    irreps_out = Irreps(irreps_out)
    n = 0
    while n < len(irreps_out) and irreps_out[n].ir.is_scalar():
        n += 1
    scalars, gated = irreps_out[:n], irreps_out[n:]
    gates = Irreps(f"{gated.num_irreps}x0e") if gated.num_irreps else Irreps("")
    return scalars, gated, (scalars + gates + gated).simplify()


# --------------------------------------------------------------------------- SteerableNorm
@register
@register
class SteerableNorm(IrrepsLayer):
    """Normalisation of steerable features (SEGNN ``InstanceNorm``, e3nn ``BatchNorm``).

    Per ``(mul, irrep)`` block, scalars are mean-centred, then every irrep copy is divided by
    ``sqrt(mean(|x|^2) + eps)`` (``normalization="component"``: ``|x|^2 / (2l + 1)``; ``"norm"``:
    ``|x|^2``), reduced by ``reduce`` (mean or max) over the statistics axes; with ``affine``
    each copy is multiplied by a learned ``weight`` and ``0e`` copies get a ``bias``.  Norms of
    irreps are O(3)-invariant, so the layer is equivariant.

    * ``mode="instance"``: statistics per sample over the axes between batch and features
      (``[batch, nodes, dim]``: per graph; inputs of rank >= 3).  Centres every ``l = 0`` block
      (as SEGNN; centring ``0o`` is equivariant too).
    * ``mode="batch"``: statistics over every axis but the features in training, running
      averages (``running_mean`` of the ``0e`` blocks, ``running_var`` of the squared norms)
      at inference (e3nn ``BatchNorm``; centres only ``0e``).  ``momentum`` follows the Keras
      convention: ``running = momentum * running + (1 - momentum) * batch`` (e3nn's 0.1 is 0.9).
    * ``mode="layer"``: statistics per position over the copies of each block (Equiformer's
      ``EquivariantLayerNormV2``): ``l = 0`` blocks are centred over their copies, then every block is
      divided by the root mean square over its copies of ``|x|^2 / (2l + 1)`` (``"component"``).  Any rank
      >= 2; no coupling between samples or nodes.

    The bias goes to ``0e`` copies only (SEGNN adds it to every ``l = 0`` copy, which breaks
    parity for ``0o``).
    """

    has_relaxation_branch = False
    _in1_attr = "irreps"
    _out_attr = "irreps"

    def __init__(
        self,
        irreps,
        mode="instance",
        eps=1e-5,
        affine=True,
        reduce="mean",
        normalization="component",
        momentum=0.9,
        **kwargs,
    ):
        super().__init__(**kwargs)
        owner = f"SteerableNorm '{self.name}'"
        set_untracked(self, "irreps", irreps_arg(irreps, "irreps", owner).remove_zero_multiplicities())
        for arg, value, allowed in (
            ("mode", mode, NORM_MODES),
            ("reduce", reduce, NORM_REDUCE),
            ("normalization", normalization, NORM_NORMALIZATION),
        ):
            if value not in allowed:
                raise ValueError(f"{owner}: {arg} must be one of {allowed}, got {value!r}.")
        self.mode = mode
        self.eps = float(eps)
        self.affine = bool(affine)
        self.reduce = reduce
        self.normalization = normalization
        self.momentum = float(momentum)
        self.num_scalar = sum(mul for mul, ir in self.irreps if ir.is_scalar())
        self.weight = self.bias = self.running_mean = self.running_var = None

    def build_equivariant(self, input_shape):
        if self.mode == "instance" and len(input_shape) < 3:
            raise ValueError(
                f"SteerableNorm '{self.name}' with mode='instance' normalises over the axes between "
                f"batch and features and needs inputs [batch, nodes, ..., {self.irreps.dim}]; got "
                f"shape {list(input_shape)}. Use mode='batch' for [batch, dim] inputs."
            )
        if self.affine:
            self.weight = self.add_weight(name="weight", shape=(self.irreps.num_irreps,), initializer="ones")
            if self.num_scalar:
                self.bias = self.add_weight(name="bias", shape=(self.num_scalar,), initializer="zeros")
        if self.mode == "batch":
            if self.num_scalar:
                self.running_mean = self.add_weight(
                    name="running_mean", shape=(self.num_scalar,), initializer="zeros", trainable=False
                )
            self.running_var = self.add_weight(
                name="running_var", shape=(self.irreps.num_irreps,), initializer="ones", trainable=False
            )

    def _reduce(self, t, axes):
        if self.reduce == "mean":
            return tf.reduce_mean(t, axis=axes)
        return tf.reduce_max(t, axis=axes)

    def equivariant_call(self, inputs, training=None):
        x, _ = self._split_inputs(inputs)
        rank = x.shape.rank
        lead = tf.shape(x)[:-1]
        batch_stats = self.mode == "batch" and bool(training)
        # statistic axes of the [..., mul, d] / [..., mul] views
        stat_axes = list(range(rank - 1)) if self.mode == "batch" else list(range(1, rank - 1))
        if self.mode == "layer":
            return self._layer_norm(x, lead)
        fields, new_means, new_vars = [], [], []
        iw = ib = 0
        ir_mul = self.layout == "ir_mul"
        comp = -2 if ir_mul else -1  # the component axis of a block view
        for sl, (mul, ir) in zip(self.irreps.slices(), self.irreps):
            f = tf.reshape(x[..., sl], tf.concat([lead, [ir.dim, mul] if ir_mul else [mul, ir.dim]], 0))
            per_copy = [1, mul] if ir_mul else [mul, 1]  # a [mul] vector broadcast over the components
            centre = ir.is_scalar() if self.mode == "batch" else ir.l == 0
            if centre:
                if self.mode == "instance" or batch_stats:
                    mean = tf.reduce_mean(f, axis=stat_axes, keepdims=True)
                    if batch_stats:
                        new_means.append(tf.reshape(mean, [mul]))
                else:
                    mean = tf.reshape(tf.cast(self.running_mean[ib : ib + mul], x.dtype), per_copy)
                f = f - mean
            sq = tf.reduce_sum(tf.square(f), axis=comp)  # [..., mul]
            if self.normalization == "component":
                sq = sq / ir.dim
            if self.mode == "instance" or batch_stats:
                var = self._reduce(sq, stat_axes)  # [B, mul] (instance) or [mul] (batch)
                if batch_stats:
                    new_vars.append(var)
                if self.mode == "instance":
                    var = tf.reshape(var, tf.concat([tf.shape(var)[:1], [1] * (rank - 2), [mul]], 0))
            else:
                var = tf.cast(self.running_var[iw : iw + mul], x.dtype)
            scale = tf.math.rsqrt(var + tf.cast(self.eps, x.dtype))
            if self.affine:
                scale = scale * tf.cast(self.weight[iw : iw + mul], x.dtype)
            f = f * tf.expand_dims(scale, comp)
            if self.affine and ir.is_scalar() and self.bias is not None:
                f = f + tf.reshape(tf.cast(self.bias[ib : ib + mul], x.dtype), per_copy)
            if ir.is_scalar():
                ib += mul
            iw += mul
            fields.append(tf.reshape(f, tf.concat([lead, [mul * ir.dim]], 0)))
        if batch_stats:
            m = tf.cast(self.momentum, self.running_var.dtype)
            if new_means:
                batch_mean = tf.cast(tf.concat(new_means, 0), self.running_mean.dtype)
                self.running_mean.assign(m * self.running_mean + (1.0 - m) * batch_mean)
            batch_var = tf.cast(tf.concat(new_vars, 0), self.running_var.dtype)
            self.running_var.assign(m * self.running_var + (1.0 - m) * batch_var)
        return fields[0] if len(fields) == 1 else tf.concat(fields, axis=-1)

    def _layer_norm(self, x, lead):
        """``mode="layer"``: per position, statistics over the copies of each block."""
        fields = []
        iw = ib = 0
        ir_mul = self.layout == "ir_mul"
        comp, copies = (-2, -1) if ir_mul else (-1, -2)  # component and copy axes of a block view
        for sl, (mul, ir) in zip(self.irreps.slices(), self.irreps):
            f = tf.reshape(x[..., sl], tf.concat([lead, [ir.dim, mul] if ir_mul else [mul, ir.dim]], 0))
            if ir.l == 0:
                f = f - tf.reduce_mean(f, axis=copies, keepdims=True)
            sq = tf.reduce_sum(tf.square(f), axis=comp)  # [..., mul]
            if self.normalization == "component":
                sq = sq / ir.dim
            scale = tf.math.rsqrt(self._reduce(sq, [-1]) + tf.cast(self.eps, x.dtype))[..., None]  # [..., 1]
            if self.affine:
                scale = scale * tf.cast(self.weight[iw : iw + mul], x.dtype)
            f = f * tf.expand_dims(scale, comp)
            if self.affine and ir.is_scalar() and self.bias is not None:
                per_copy = [1, mul] if ir_mul else [mul, 1]
                f = f + tf.reshape(tf.cast(self.bias[ib : ib + mul], x.dtype), per_copy)
            if ir.is_scalar():
                ib += mul
            iw += mul
            fields.append(tf.reshape(f, tf.concat([lead, [mul * ir.dim]], 0)))
        return fields[0] if len(fields) == 1 else tf.concat(fields, axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(
            irreps=str(self.irreps),
            mode=self.mode,
            eps=self.eps,
            affine=self.affine,
            reduce=self.reduce,
            normalization=self.normalization,
            momentum=self.momentum,
        )
        return config


__all__ = ["Gate", "SteerableNorm", "gate_irreps", "NORM_MODES", "NORM_NORMALIZATION", "NORM_REDUCE"]
