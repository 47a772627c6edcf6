"""C_N-equivariant (steerable) convolutions on 2D grids, relaxable: lifting, group and projection convs.

Features are fields ``[batch, H, W, C]`` whose channels are C_N fibres
(:class:`~keras_relaxeq.groups.cyclic.FieldType`): trivial scalars, ``vector`` / ``irrep(k)`` 2-vectors,
``regular`` N-channel group features.  A :class:`CyclicConv2D` maps one field type to another with a kernel
``W = sum_b c_b B_b`` in the orthonormal basis ``B_b`` of the solutions of the kernel constraint ``T_g(W) = W``
(:func:`~keras_relaxeq.groups.cyclic_kernels.equivariant_kernel_basis`), one coefficient per basis element and
pair of fibres, and a bias in the invariant vectors of the output fibres, so it is exactly equivariant:
``conv(g.x) = g.conv(x)`` with the grid rotated *and* the fibres transformed.  The named variants:

* :class:`LiftingConv2D`: scalar / vector input fields -> ``filters`` regular fields;
* :class:`GroupConv2D`: regular -> regular;
* :class:`ProjectionConv2D`: regular -> trivial / ``vector`` output fields (e.g. a velocity field).

Pointwise nonlinearities (``activation="relu"``, or a ``keras.layers.ReLU`` between layers) commute with the
action on trivial and regular fibres (it permutes pixels and the N channels of a regular field), so they are
allowed on those only; :class:`RegularBatchNorm` normalises regular fields per field and
:class:`GroupPooling` turns them into invariant scalar fields.  Each layer infers its input multiplicity from the
channels when ``in_type`` is one fibre name, so layers chain like ordinary convolutions.

Relaxation (``relaxed=True``, docs/method.md section 2 as in the paper's relaxed steerable CNN): the branch is an
ordinary convolution of the same kernel size, ``theta * (conv(x, W_R) + b_R)`` added before the activation,
with ``W_R`` ``[k, k, C_in, C_out]`` named ``relaxation_kernel``.  Its "Lie" penalty is the generator defect
``||g.R(x) - R(g.x)||^2`` (:mod:`keras_relaxeq.layers.finite_group_penalties`); ``project()`` drops the branch.
Both maps are convolutions of one size, so the layer computes ``E(x) + theta R(x)`` as a single convolution with
the kernel ``W_E + theta W_R`` (``fuse_relaxation``): a relaxed step then costs the plain step plus the penalty's
convolution, not three convolutions (``benchmarks/bench_smoke_plume.py`` measures both).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from keras_relaxeq.groups.cyclic import FibreRep, FieldType
from keras_relaxeq.groups.cyclic_kernels import (
    FieldRep,
    equivariant_kernel_basis,
    field_type_spec,
    invariant_vector_basis,
    parse_field_type,
)
from keras_relaxeq.layers.base import RelaxedEquivariantLayer, build_conv_branch, report_branch_penalties
from keras_relaxeq.utils import set_untracked

register = keras.saving.register_keras_serializable(package="keras_relaxeq")

__all__ = [
    "CyclicConv2D",
    "FieldKernelLayout",
    "GroupConv2D",
    "GroupPooling",
    "LiftingConv2D",
    "ProjectionConv2D",
    "RegularBatchNorm",
]

POINTWISE_FIBRES = ("trivial", "regular")


def _safe_name(fibre: FibreRep) -> str:
    return repr(fibre).replace("(", "").replace(")", "")


class FieldKernelLayout:
    """How a kernel between two field types is assembled from per-fibre-pair bases (NumPy, no weights).

    Fibres of one kind are gathered into blocks: ``groups_in`` / ``groups_out`` are ``(fibre, multiplicity)``
    in order of first appearance, and the kernel is built in this sorted layout (block ``(i, o)`` is
    ``[k, k, m_i a, m_o b]``) and then permuted to the field types' channel order.
    """

    def __init__(self, in_type: FieldType, out_type: FieldType, kernel_size: int):
        self.in_type, self.out_type, self.kernel_size = in_type, out_type, int(kernel_size)
        self.groups_in, perm_in = self._groups(in_type)
        self.groups_out, perm_out = self._groups(out_type)
        # field channel j sits at sorted position pos[j]
        self.pos_in = None if np.array_equal(perm_in, np.arange(len(perm_in))) else np.argsort(perm_in)
        self.pos_out = None if np.array_equal(perm_out, np.arange(len(perm_out))) else np.argsort(perm_out)
        self.bases = {}
        for i, (fi, _) in enumerate(self.groups_in):
            for o, (fo, _) in enumerate(self.groups_out):
                self.bases[i, o] = equivariant_kernel_basis(fi, fo, kernel_size)
        self.bias_bases = [invariant_vector_basis(fo) for fo, _ in self.groups_out]

    @staticmethod
    def _groups(field_type: FieldType):
        kinds, channels, start = {}, {}, 0
        for f in field_type.fibres:
            kinds.setdefault(f, 0)
            kinds[f] += 1
            channels.setdefault(f, []).extend(range(start, start + f.dim))
            start += f.dim
        order = list(kinds)
        return [(f, kinds[f]) for f in order], np.array([c for f in order for c in channels[f]], np.int64)

    def pairs(self):
        """``(i, o, name, basis_size)`` of the fibre-kind pairs with a non-empty basis."""
        out = []
        for (i, o), basis in self.bases.items():
            if len(basis):
                name = f"{_safe_name(self.groups_in[i][0])}_to_{_safe_name(self.groups_out[o][0])}"
                out.append((i, o, name, len(basis)))
        return out

    def fan_in(self, o: int) -> float:
        """Expected number of unit-variance terms per output channel of block column ``o`` per unit coefficient
        variance: ``sum_i m_i n_io / b_o`` (the basis is orthonormal)."""
        b = self.groups_out[o][0].dim
        return sum(m * len(self.bases[i, o]) for i, (_, m) in enumerate(self.groups_in)) / b

    def assemble(self, coefficients: dict, dtype, per_position: bool = False):
        """The kernel ``[k, k, C_in, C_out]`` from ``coefficients[(i, o)]``: ``[m_i, m_o, n]`` (one per basis element)
        or, with ``per_position``, ``[m_i, m_o, n, k, k]`` (a coefficient per basis element and kernel tap)."""
        k = self.kernel_size
        rows = []
        for i, (fi, mi) in enumerate(self.groups_in):
            cols = []
            for o, (fo, mo) in enumerate(self.groups_out):
                shape = [k, k, mi * fi.dim, mo * fo.dim]
                if (i, o) not in coefficients:
                    cols.append(tf.zeros(shape, dtype))
                    continue
                basis = tf.constant(self.bases[i, o], dtype)
                eq = "iobxy,bxypq->xyipoq" if per_position else "iob,bxypq->xyipoq"
                cols.append(tf.reshape(tf.einsum(eq, coefficients[i, o], basis), shape))
            rows.append(tf.concat(cols, axis=3) if len(cols) > 1 else cols[0])
        kernel = tf.concat(rows, axis=2) if len(rows) > 1 else rows[0]
        if self.pos_in is not None:
            kernel = tf.gather(kernel, self.pos_in, axis=2)
        if self.pos_out is not None:
            kernel = tf.gather(kernel, self.pos_out, axis=3)
        return kernel

    def assemble_bias(self, coefficients: dict, dtype):
        """The bias ``[C_out]`` from ``coefficients[o]`` ``[m_o, n_o]`` (zero for fibres without invariant vectors)."""
        parts = []
        for o, (fo, mo) in enumerate(self.groups_out):
            if o in coefficients:
                parts.append(tf.reshape(tf.matmul(coefficients[o], tf.constant(self.bias_bases[o], dtype)), [-1]))
            else:
                parts.append(tf.zeros([mo * fo.dim], dtype))
        bias = tf.concat(parts, axis=0) if len(parts) > 1 else parts[0]
        return bias if self.pos_out is None else tf.gather(bias, self.pos_out)


@register
class CyclicConv2D(RelaxedEquivariantLayer):
    """A C_N-equivariant convolution between field types, optionally relaxed.

    Args:
        out_type: the output field type: a :class:`FieldType`, a list of fibre names, or ``[name, count]`` runs
            (``[["regular", 8]]``); a single name is one fibre.
        in_type: the input field type; a single fibre name (default ``"regular"``) means "every fibre of this
            kind", its multiplicity read from the input channels.
        kernel_size: odd kernel size (``"SAME"`` zero padding, stride 1).
        group_order: ``N`` (1, 2 or 4 act on a grid).
        use_bias: an equivariant bias (one per trivial and per regular output fibre; none on vector fibres).
        activation: a pointwise activation after the (relaxed) conv; only for trivial / regular output fibres.
        kernel_gain: the coefficients are drawn ``N(0, gain / fan_in)`` (He for ``2``).
        **kwargs: relaxation settings of :class:`RelaxedEquivariantLayer` (``relaxed``, ``relaxation_initializer``,
            ``relaxation_use_bias``, ``lie_method``, ``theta``) and Keras layer arguments.  The branch is a conv
            (``relaxation_branch="linear"``, no ``relaxation_rank``).
    """

    #: compute ``E(x) + theta R(x)`` in one convolution (kernel ``W_E + theta W_R``) in training and inference;
    #: ``False`` evaluates the two convolutions separately (same values to float rounding; for comparisons).
    fuse_relaxation = True

    def __init__(
        self,
        out_type,
        in_type="regular",
        kernel_size=3,
        group_order=4,
        use_bias=True,
        activation=None,
        kernel_gain=2.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if self.relaxation_branch != "linear" or self.relaxation_rank is not None:
            raise ValueError(
                f"{type(self).__name__}: the relaxation branch is a convolution; use "
                "relaxation_branch='linear' and relaxation_rank=None."
            )
        if int(kernel_size) < 1 or int(kernel_size) % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size!r}.")
        self.group_order = int(group_order)
        self.out_type = parse_field_type(out_type, self.group_order)
        self.in_type_spec = in_type
        self.kernel_size = int(kernel_size)
        self.use_bias = bool(use_bias)
        self.activation = keras.activations.get(activation) if activation is not None else None
        if self.activation is not None:
            bad = [f for f in self.out_type.fibres if f.kind not in POINTWISE_FIBRES]
            if bad:
                raise ValueError(
                    f"{type(self).__name__}: a pointwise activation is equivariant on trivial and "
                    f"regular fibres only; the output {self.out_type} has {bad[0]!r} fibres."
                )
        self.kernel_gain = float(kernel_gain)
        self.in_type = None
        self.relaxation_is_conv = True

    # -- field types ------------------------------------------------------------------
    def _resolve_in_type(self, channels) -> FieldType:
        spec = self.in_type_spec
        if isinstance(spec, (str, FibreRep)):
            fibre = parse_field_type(spec, self.group_order).fibres[0]
            if channels is None or channels % fibre.dim:
                raise ValueError(
                    f"{type(self).__name__} '{self.name}': {channels} input channels are not a whole "
                    f"number of {fibre!r} fibres ({fibre.dim} channels each)."
                )
            return FieldType(self.group_order, [fibre] * (channels // fibre.dim))
        return parse_field_type(spec, self.group_order)

    def input_representation(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                f"{type(self).__name__} '{self.name}' expects fields [batch, H, W, C]; got shape {list(input_shape)}."
            )
        self.in_type = self._resolve_in_type(input_shape[-1])
        if self.in_type.group != self.out_type.group:
            raise ValueError(f"Input {self.in_type} and output {self.out_type} belong to different groups.")
        return FieldRep(self.in_type)

    def output_representation(self, input_shape):
        return FieldRep(self.out_type)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.out_type.channels,)

    # -- the equivariant map ------------------------------------------------------------
    def build_equivariant(self, input_shape):
        set_untracked(self, "built_input_shape", tuple(input_shape))
        set_untracked(self, "layout", FieldKernelLayout(self.in_type, self.out_type, self.kernel_size))
        set_untracked(self, "coefficients", {})  # (i, o) -> variable; the variables are tracked by add_weight
        for i, o, name, n in self.layout.pairs():
            std = float(np.sqrt(self.kernel_gain / max(self.layout.fan_in(o), 1.0)))
            self.coefficients[i, o] = self.add_weight(
                name=f"coefficients_{name}",
                shape=self.coefficient_shape(i, o, n),
                autocast=False,
                initializer=keras.initializers.RandomNormal(stddev=std),
            )  # cast where the kernel is assembled
        set_untracked(self, "bias_coefficients", {})
        if self.use_bias:
            for o, (fo, mo) in enumerate(self.layout.groups_out):
                n = len(self.layout.bias_bases[o])
                if n:
                    self.bias_coefficients[o] = self.add_weight(
                        name=f"bias_{_safe_name(fo)}", shape=(mo, n), initializer="zeros", autocast=False
                    )

    def coefficient_shape(self, i, o, n):
        """Shape of the coefficients of fibre-kind pair ``(i, o)`` with ``n`` basis kernels."""
        return (self.layout.groups_in[i][1], self.layout.groups_out[o][1], n)

    def kernel_value(self, dtype=None):
        """The equivariant kernel ``[k, k, C_in, C_out]``."""
        dtype = dtype or self.compute_dtype
        coeffs = {key: tf.cast(v, dtype) for key, v in self.coefficients.items()}
        return self.layout.assemble(coeffs, dtype)

    def bias_value(self, dtype=None):
        """The equivariant bias ``[C_out]`` (None without bias)."""
        if not self.use_bias:
            return None
        dtype = dtype or self.compute_dtype
        return self.layout.assemble_bias({k: tf.cast(v, dtype) for k, v in self.bias_coefficients.items()}, dtype)

    def equivariant_call(self, inputs, training=None):
        y = tf.nn.conv2d(inputs, self.kernel_value(inputs.dtype), strides=1, padding="SAME")
        if self.use_bias:
            y = y + self.bias_value(inputs.dtype)
        return y

    def call(self, inputs, training=None):
        if self.relaxed and self.has_relaxation_branch and self.fuse_relaxation:
            outputs = self._fused_relaxed_call(inputs)
        else:
            outputs = super().call(inputs, training=training)  # E(x) + theta R(x)
        return self.activation(outputs) if self.activation is not None else outputs

    def _fused_relaxed_call(self, inputs):
        """``E(x) + theta R(x)`` as one convolution with the kernel ``W_E + theta W_R`` (both maps are convolutions
        of the same size, so the sum is linear in the kernels); the penalties are those of :meth:`add_relaxation`."""
        dtype = inputs.dtype
        theta = tf.cast(self.theta, dtype)
        kernel = self.kernel_value(dtype) + theta * tf.cast(self.relaxation_kernel, dtype)
        outputs = tf.nn.conv2d(inputs, kernel, strides=1, padding="SAME")
        if self.use_bias:
            outputs = outputs + self.bias_value(dtype)
        if self.relaxation_bias is not None:
            outputs = outputs + theta * tf.cast(self.relaxation_bias, dtype)

        def parts():  # monitoring only: the two maps separately
            contribution = theta * self.relaxation_branch_fn(inputs)
            return outputs - contribution, contribution

        report_branch_penalties(self, inputs, parts, tf.reduce_prod(tf.shape(inputs)[:-1]))
        return outputs

    # -- the convolution branch ----------------------------------------------------------
    def _build_branch(self, in_rep, out_rep):
        build_conv_branch(self, self.kernel_size, in_rep.dim, out_rep.dim)

    def relaxation_branch_fn(self, x):
        """The branch ``R(x) = conv(x, W_R) + b_R`` on fields (in the dtype of ``x``)."""
        w = tf.cast(self.relaxation_kernel, x.dtype)
        y = tf.nn.conv2d(x, w, strides=1, padding="SAME")
        if self.relaxation_bias is not None:
            y = y + tf.cast(self.relaxation_bias, x.dtype)
        return y

    def branch(self, flat_x):  # the base's per-pixel branch does not exist here
        raise NotImplementedError(
            f"{type(self).__name__}: the relaxation branch is a convolution of whole fields; "
            "use relaxation_branch_fn(x)."
        )

    def add_relaxation(self, inputs, outputs):
        """``outputs + theta * R(inputs)``; reports the defect and projection penalties to the active collector."""
        contribution = tf.cast(self.theta, outputs.dtype) * self.relaxation_branch_fn(inputs)
        report_branch_penalties(self, inputs, lambda: (outputs, contribution), tf.reduce_prod(tf.shape(inputs)[:-1]))
        return outputs + contribution

    # -- serialization ---------------------------------------------------------------------
    def _type_config(self, value):
        return value if isinstance(value, str) else field_type_spec(parse_field_type(value, self.group_order))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "out_type": field_type_spec(self.out_type),
                "in_type": self._type_config(self.in_type_spec),
                "kernel_size": self.kernel_size,
                "group_order": self.group_order,
                "use_bias": self.use_bias,
                "activation": keras.activations.serialize(self.activation) if self.activation is not None else None,
                "kernel_gain": self.kernel_gain,
            }
        )
        return config


@register
class LiftingConv2D(CyclicConv2D):
    """Scalar / vector fields -> ``filters`` regular fields (``in_type`` one fibre name, multiplicity inferred, or a
    full field type, e.g. ``[["vector", 10]]`` for ten stacked velocity frames)."""

    def __init__(self, filters, in_type="vector", kernel_size=3, **kwargs):
        kwargs.pop("out_type", None)
        group_order = kwargs.get("group_order", 4)
        super().__init__(
            FieldType.regular(group_order, int(filters)), in_type=in_type, kernel_size=kernel_size, **kwargs
        )
        self.filters = int(filters)

    def get_config(self):
        config = super().get_config()
        config.pop("out_type")
        config["filters"] = self.filters
        return config


@register
class GroupConv2D(CyclicConv2D):
    """Regular fields -> ``filters`` regular fields (the group convolution of C_N on the grid)."""

    def __init__(self, filters, kernel_size=3, **kwargs):
        kwargs.pop("out_type", None)
        kwargs.pop("in_type", None)
        group_order = kwargs.get("group_order", 4)
        super().__init__(
            FieldType.regular(group_order, int(filters)), in_type="regular", kernel_size=kernel_size, **kwargs
        )
        self.filters = int(filters)

    def get_config(self):
        config = super().get_config()
        config.pop("out_type")
        config.pop("in_type")
        config["filters"] = self.filters
        return config


@register
class ProjectionConv2D(CyclicConv2D):
    """Regular fields -> output fields ``out_type`` (default one ``"vector"``: a velocity field; ``"trivial"`` for
    scalars; ``[["vector", 3]]`` for several)."""

    def __init__(self, out_type="vector", kernel_size=3, **kwargs):
        kwargs.pop("in_type", None)
        super().__init__(out_type, in_type="regular", kernel_size=kernel_size, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.pop("in_type")
        return config


def _regular_multiplicity(layer, input_shape, group_order):
    channels = input_shape[-1]
    if channels is None or channels % group_order:
        raise ValueError(
            f"{type(layer).__name__} '{layer.name}' expects regular C{group_order} fields (channels a "
            f"multiple of {group_order}); got shape {list(input_shape)}."
        )
    return channels // group_order


@register
class RegularBatchNorm(keras.layers.Layer):
    """Batch normalisation of regular C_N fields: one mean, variance, scale and offset per field, shared by its N
    channels (the action permutes them), so the layer is equivariant in training and inference
    (e2cnn's ``InnerBatchNorm``).  ``**kwargs`` go to ``keras.layers.BatchNormalization``."""

    def __init__(self, group_order=4, momentum=0.99, epsilon=1e-3, **kwargs):
        name = kwargs.pop("name", None)
        dtype = kwargs.pop("dtype", None)
        super().__init__(name=name, dtype=dtype)
        self.group_order = int(group_order)
        self.momentum, self.epsilon = float(momentum), float(epsilon)
        self.bn_kwargs = kwargs
        self.norm = keras.layers.BatchNormalization(
            axis=-2, momentum=momentum, epsilon=epsilon, dtype=dtype, name="batch_norm", **kwargs
        )

    def build(self, input_shape):
        m = _regular_multiplicity(self, input_shape, self.group_order)
        self.norm.build(tuple(input_shape[:-1]) + (m, self.group_order))

    def call(self, inputs, training=None):
        shape = tf.shape(inputs)
        fields = tf.reshape(inputs, tf.concat([shape[:-1], [-1, self.group_order]], 0))
        return tf.reshape(self.norm(fields, training=training), shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(group_order=self.group_order, momentum=self.momentum, epsilon=self.epsilon, **self.bn_kwargs)
        return config


@register
class GroupPooling(keras.layers.Layer):
    """Regular C_N fields -> trivial fields: the max (or mean) over the N channels of each field, invariant to
    their cyclic shift, so the result is a C_N-equivariant scalar field ``[batch, H, W, m]``."""

    def __init__(self, group_order=4, mode="max", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("max", "mean"):
            raise ValueError(f"mode must be 'max' or 'mean', got {mode!r}.")
        self.group_order, self.mode = int(group_order), mode

    def build(self, input_shape):
        _regular_multiplicity(self, input_shape, self.group_order)

    def call(self, inputs):
        shape = tf.shape(inputs)
        fields = tf.reshape(inputs, tf.concat([shape[:-1], [-1, self.group_order]], 0))
        return tf.reduce_max(fields, axis=-1) if self.mode == "max" else tf.reduce_mean(fields, axis=-1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (input_shape[-1] // self.group_order,)

    def get_config(self):
        config = super().get_config()
        config.update(group_order=self.group_order, mode=self.mode)
        return config
