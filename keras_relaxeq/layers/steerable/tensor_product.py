"""Weighted tensor products of steerable features (SEGNN's ``O3TensorProduct`` and
``O3TensorProductSwishGate``) as relaxable Keras layers."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from keras_relaxeq.groups.irreps import Irreps
from keras_relaxeq.layers.steerable.irreps_layer import IrrepsLayer
from keras_relaxeq.layers.steerable.nonlinearities import Gate, gate_irreps
from keras_relaxeq.layers.steerable.parsing import activation_id, serialize_initializer, set_tensor_product_irreps
from keras_relaxeq.layers.steerable.paths import PathPlan
from keras_relaxeq.layers.steerable.type_plan import TypePlan
from keras_relaxeq.utils import set_untracked

register = keras.saving.register_keras_serializable(package="keras_relaxeq")


def scaled_uniform(scales):
    """Initializer ``U(-1, 1) * scales`` (per-element bounds, SEGNN's per-path init)."""
    scales = np.asarray(scales, np.float64)

    def init(shape, dtype=None):
        base = keras.initializers.RandomUniform(-1.0, 1.0)(shape, dtype=dtype)
        return base * tf.constant(scales, dtype=base.dtype)

    return init


# --------------------------------------------------------------------------- O3TensorProduct
@register
@register
class O3TensorProduct(IrrepsLayer):
    """Weighted fully connected tensor product ``x (x) attr -> out`` (SEGNN's ``O3TensorProduct``).

    ``out_c = sum_paths coef * sum_{u,v,w} W^path_{uvw} sum_{ij} C_ijk x_{u,i} attr_{v,j}`` over
    every path ``(l1, p1) (x) (l2, p2) -> (l3, p1 p2)`` with ``|l1 - l2| <= l3 <= l1 + l2``
    (``C = clebsch_gordan_for_irreps``; e3nn ``FullyConnectedTensorProduct`` with
    ``normalization="component"``), plus a bias on the ``0e`` outputs.

    Normalisation and initialisation follow SEGNN:

    * ``tp_rescale=True`` (default): weights ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` per output
      block (fan-in: ``sum mul1 * mul2`` over the paths into it) and ``coef = sqrt(2 l3 + 1)``,
      i.e. e3nn's normalised product divided by SEGNN's ``sqrt_k`` (torch ``nn.Linear``-like).
    * ``tp_rescale=False``: weights ``U(-1, 1)``, ``coef = sqrt((2 l3 + 1) / fan_in)`` (e3nn).
    * bias on ``0e`` outputs ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``.

    ``irreps_in2=None`` means SEGNN's "no attributes": ``attr = 1`` (``1x0e``) and the layer
    takes ``x`` alone.  Otherwise it is called on ``(x, attr)`` (leading axes broadcast).

    Relaxation: the branch ``theta (W flat(x) + b)`` maps ``irreps_in1 -> irreps_out`` and reads
    ``x`` only; ``input_rep`` is ``IrrepsRep(irreps_in1)``, ``attr_rep`` that of the attributes,
    ``equivariance_input_reps`` the pair for ``assert_equivariant``.  SEGNN's branch init is
    ``relaxation_initializer=keras.initializers.RandomNormal(stddev=1e-4)``.

    Args:
        irreps_in1: irreps of ``x``.
        irreps_in2: irreps of the attributes (e.g. spherical harmonics), or None.
        irreps_out: output irreps.
        use_bias: bias on the ``0e`` outputs.
        tp_rescale: SEGNN's rescaling (see above).
        kernel_initializer, bias_initializer: override the SEGNN initialisations (the flat kernel
            ``[weight_numel]`` is then initialised as given and still multiplied by ``coef``).
    """

    _in2_attr = "irreps_in2"

    def __init__(
        self,
        irreps_in1,
        irreps_in2=None,
        irreps_out=None,
        use_bias=True,
        tp_rescale=True,
        kernel_initializer=None,
        bias_initializer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        owner = f"{type(self).__name__} '{self.name}'"
        set_tensor_product_irreps(self, irreps_in1, irreps_in2, irreps_out, owner)
        self.use_bias = bool(use_bias)
        self.tp_rescale = bool(tp_rescale)
        self.kernel_initializer = None if kernel_initializer is None else keras.initializers.get(kernel_initializer)
        self.bias_initializer = None if bias_initializer is None else keras.initializers.get(bias_initializer)
        in2 = self.irreps_in2 if self.irreps_in2 is not None else Irreps("1x0e")
        self.plan = PathPlan(
            self.irreps_in1, in2, self.irreps_out, "tp", "segnn" if self.tp_rescale else "e3nn", self.layout
        )
        set_untracked(self, "type_plan", TypePlan(self.plan))
        self.kernel = None
        self.bias = None

    @property
    def weight_numel(self) -> int:
        """Number of tensor-product weights (``weight_numel`` of e3nn's ``FullyConnectedTensorProduct``)."""
        return self.plan.weight_numel

    def build_equivariant(self, input_shape):
        if self.plan.weight_numel:
            init = self.kernel_initializer or scaled_uniform(self.plan.init_scales)
            self.kernel = self.add_weight(name="kernel", shape=(self.plan.weight_numel,), initializer=init)
        if self.use_bias and len(self.plan.bias_positions):
            init = self.bias_initializer or scaled_uniform(self.plan.bias_scales)
            self.bias = self.add_weight(name="bias", shape=(len(self.plan.bias_positions),), initializer=init)

    def dense_tensor(self):
        """The bilinear map as a dense ``[irreps_in1.dim, irreps_in2.dim, irreps_out.dim]`` tensor."""
        d1, d2, do = self.plan.dims
        return tf.reshape(self.plan.dense(self.kernel, self.compute_dtype), [d1, d2, do])

    def tensor_product(self, x, attr=None):
        """The weighted tensor product (+ bias) of broadcast ``x`` ``[..., d1]`` and ``attr`` ``[..., d2]``.

        Evaluated by irrep type (:class:`TypePlan`); equal to ``outer(x, attr) @ dense_tensor() + bias``.
        """
        d1, d2, do = self.plan.dims
        lead = tf.shape(x)[:-1]
        x2 = tf.reshape(x, [-1, d1])
        a2 = None if attr is None else tf.reshape(attr, [-1, d2])
        out = self.type_plan(x2, a2, self.kernel, self.bias, self.compute_dtype)
        return tf.reshape(out, tf.concat([lead, [do]], 0))

    def tensor_product_dense(self, x, attr=None):
        """Reference evaluation through the dense ``[d1 * d2, d_out]`` map (slow; for tests)."""
        d1, d2, do = self.plan.dims
        dense = self.plan.dense(self.kernel, self.compute_dtype)  # [d1 * d2, do]
        lead = tf.shape(x)[:-1]
        x2 = tf.reshape(x, [-1, d1])
        if attr is None:  # attr = 1 (1x0e)
            out = tf.matmul(x2, dense)
        else:
            a2 = tf.reshape(attr, [-1, d2])
            outer = tf.reshape(x2[:, :, None] * a2[:, None, :], [-1, d1 * d2])
            out = tf.matmul(outer, dense)
        if self.bias is not None:
            out = out + self.plan.dense_bias(self.bias, self.compute_dtype)
        return tf.reshape(out, tf.concat([lead, [do]], 0))

    def equivariant_call(self, inputs, training=None):
        x, attr = self._split_inputs(inputs)
        return self.tensor_product(x, attr)

    def get_config(self):
        config = super().get_config()
        config.update(
            irreps_in1=str(self.irreps_in1),
            irreps_in2=None if self.irreps_in2 is None else str(self.irreps_in2),
            irreps_out=str(self.irreps_out),
            use_bias=self.use_bias,
            tp_rescale=self.tp_rescale,
            kernel_initializer=serialize_initializer(self.kernel_initializer),
            bias_initializer=serialize_initializer(self.bias_initializer),
        )
        return config


# --------------------------------------------------------------------------- O3TensorProductGate
#: where :class:`O3TensorProductGate` adds its relaxation branch
RELAXATION_PLACEMENTS = ("before_gate", "after_gate")


@register
class O3TensorProductGate(IrrepsLayer):
    """Tensor product then gate (SEGNN's ``O3TensorProductSwishGate``).

    The tensor product (sublayer ``tensor_product``, an :class:`O3TensorProduct`) maps
    ``x (x) attr`` to ``irreps_scalars + gates + irreps_gated`` (see :func:`gate_irreps`); the
    :class:`Gate` (sublayer ``gate``) returns ``irreps_out``.  When ``irreps_out`` has no gated
    irreps the gate is SEGNN's plain SiLU (no ``normalize2mom``), as in the reference code.

    Where the relaxation branch goes (``relaxation_placement``):

    * ``"before_gate"`` (default, docs/method.md section 7): the tensor product carries the branch,
      ``gate(TP(x, attr) + theta R(x))``;
    * ``"after_gate"``: this layer carries it, ``gate(TP(x, attr)) + theta R(x)`` with
      ``R: irreps_in1 -> irreps_out`` (the relaxation paper's released SEGNN code adds its
      linear branch there; for comparisons).

    Args: as :class:`O3TensorProduct`, plus ``scalar_activation`` / ``gate_activation`` and
    ``relaxation_placement``.
    """

    has_relaxation_branch = False
    _in2_attr = "irreps_in2"

    def __init__(
        self,
        irreps_in1,
        irreps_in2=None,
        irreps_out=None,
        use_bias=True,
        tp_rescale=True,
        scalar_activation="silu",
        gate_activation="sigmoid",
        relaxation_placement="before_gate",
        **kwargs,
    ):
        if relaxation_placement not in RELAXATION_PLACEMENTS:
            raise ValueError(
                f"O3TensorProductGate: relaxation_placement must be one of {RELAXATION_PLACEMENTS}, "
                f"got {relaxation_placement!r}."
            )
        super().__init__(**kwargs)
        self.relaxation_placement = relaxation_placement
        # the branch is this layer's (after the gate) or the tensor product's (before it)
        self.has_relaxation_branch = relaxation_placement == "after_gate"
        owner = f"O3TensorProductGate '{self.name}'"
        set_tensor_product_irreps(self, irreps_in1, irreps_in2, irreps_out, owner)
        self.use_bias = bool(use_bias)
        self.tp_rescale = bool(tp_rescale)
        self.scalar_activation = activation_id(scalar_activation)
        self.gate_activation = activation_id(gate_activation)
        scalars, gated, tp_out = gate_irreps(self.irreps_out)
        set_untracked(self, "irreps_tp_out", tp_out)
        relax = self.sublayer_config()
        if self.has_relaxation_branch:
            relax["relaxed"] = False
        self.tensor_product = O3TensorProduct(
            self.irreps_in1,
            self.irreps_in2,
            tp_out,
            use_bias=self.use_bias,
            tp_rescale=self.tp_rescale,
            layout=self.layout,
            name="tensor_product",
            **relax,
        )
        self.gate = Gate(
            scalars,
            gated,
            scalar_activation=self.scalar_activation,
            gate_activation=self.gate_activation,
            normalize_activations=gated.num_irreps > 0,
            layout=self.layout,
            name="gate",
            **relax,
        )

    def build_equivariant(self, input_shape):
        if not self.tensor_product.built:
            self.tensor_product.build(self._full_input_shape)
        if not self.gate.built:
            self.gate.build(self.tensor_product.compute_output_shape(self._full_input_shape))

    def equivariant_call(self, inputs, training=None):
        """``gate(TP(x, attr))``, with the tensor product's own branch when placed before the gate."""
        return self.gate(self.tensor_product(inputs, training=training), training=training)

    def get_config(self):
        config = super().get_config()
        config.update(
            irreps_in1=str(self.irreps_in1),
            irreps_in2=None if self.irreps_in2 is None else str(self.irreps_in2),
            irreps_out=str(self.irreps_out),
            use_bias=self.use_bias,
            tp_rescale=self.tp_rescale,
            scalar_activation=self.scalar_activation,
            gate_activation=self.gate_activation,
            relaxation_placement=self.relaxation_placement,
        )
        return config


__all__ = ["O3TensorProduct", "O3TensorProductGate", "RELAXATION_PLACEMENTS"]
