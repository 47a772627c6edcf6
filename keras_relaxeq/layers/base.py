"""``RelaxedEquivariantLayer``: the base class of every relaxable layer.

A subclass declares its input and output representations and its equivariant
map.  With ``relaxed=True`` the base adds the relaxation branch of docs/method.md
section 2,

    f(x) = E(x) + theta * R(x),      R(x) = W flat(x) + b,

with ``W`` named ``relaxation_kernel`` and ``theta`` a non-trainable scalar
variable, and computes the two penalties of section 3 (the Lie derivative ``LD`` and the projection
error ``N``, :mod:`keras_relaxeq.layers.penalties`) on ``stop_gradient(x)``.

A low-rank branch (``relaxation_rank=r``) stores ``W = U V`` as its two factors ``U`` ``[D_in, r]``
(``relaxation_kernel_u``) and ``V`` ``[r, D_out]`` (``relaxation_kernel_v``) and never forms ``W``: the
branch is ``(x U) V + b`` and the penalties are computed through the factors.

Penalties are only computed while a penalty collector is active: inside
``RelaxedModel``'s training forward pass (which sums them over the model and
adds ``lambda_lie * sqrt(LD) + lambda_proj * sqrt(N)`` to the loss), or inside
``layer.relaxation_penalties(x)`` / ``collect_relaxation_penalties()``.

The penalty functions and collectors live in :mod:`keras_relaxeq.layers.penalties` (importable from this
module too); the model-level helpers (``relaxed_layers``, ``set_theta``, ``get_theta``, ``transfer_weights``)
in :mod:`keras_relaxeq.layers.relaxation`, which builds on this module.
"""

from __future__ import annotations

import contextlib
import threading

import keras
import tensorflow as tf

from keras_relaxeq.groups.representations import Representation
from keras_relaxeq.layers.penalties import (
    PenaltyCollector,
    _flatten_features,
    _tensor_ref,
    active_collector,
    autodiff_branch_penalties,
    collect_relaxation_penalties,
    direct_linear_branch_penalties,
    direct_low_rank_branch_penalties,
    gram_statistics,
    linear_branch_penalties,
    low_rank_branch_penalties,
    safe_sqrt,
)

__all__ = [
    "BRANCHES",
    "LIE_METHODS",
    "PenaltyCollector",
    "RelaxedEquivariantLayer",
    "active_collector",
    "autodiff_branch_penalties",
    "build_conv_branch",
    "report_branch_penalties",
    "collect_relaxation_penalties",
    "direct_linear_branch_penalties",
    "direct_low_rank_branch_penalties",
    "gram_statistics",
    "linear_branch_penalties",
    "low_rank_branch_penalties",
    "plain_layers",
    "safe_sqrt",
]

LIE_METHODS = ("auto", "closed_form", "direct", "jvp", "tape")
BRANCHES = ("linear", "mlp")


# Per-thread depth of nested ``plain_layers()`` contexts.
_BUILD = threading.local()


@contextlib.contextmanager
def plain_layers():
    """Inside this context every ``RelaxedEquivariantLayer`` is built with ``relaxed=False``.

    Used by ``project()`` to rebuild a model (including layers nested in
    custom containers) without relaxation branches.
    """
    _BUILD.force_plain = getattr(_BUILD, "force_plain", 0) + 1
    try:
        yield
    finally:
        _BUILD.force_plain -= 1


def build_conv_branch(layer, kernel_size: int, in_channels: int, out_channels: int):
    """The variables of a convolution branch ``theta * (conv(x, W_R) + b_R)`` on ``layer`` (convolution layers'
    ``_build_branch``): ``theta`` (non-trainable), ``relaxation_kernel`` ``[k, k, C_in, C_out]`` and, with
    ``relaxation_use_bias``, ``relaxation_bias`` ``[C_out]``."""
    k = int(kernel_size)
    layer.theta = layer.add_weight(
        name="theta",
        shape=(),
        trainable=False,
        autocast=False,
        initializer=keras.initializers.Constant(layer.initial_theta),
    )
    layer.relaxation_low_rank = False
    layer.relaxation_kernel = layer.add_weight(
        name="relaxation_kernel",
        shape=(k, k, in_channels, out_channels),
        initializer=layer.relaxation_initializer,
        autocast=False,
    )
    layer.relaxation_bias = (
        layer.add_weight(name="relaxation_bias", shape=(out_channels,), initializer="zeros", autocast=False)
        if layer.relaxation_use_bias
        else None
    )


def report_branch_penalties(layer, inputs, parts, rows):
    """Report ``layer``'s branch penalties for ``inputs`` to the active collector, if any (layers whose branch is not
    the base's per-row map, e.g. convolutions).  ``parts`` is a callable giving ``(E(x), theta R(x))``, evaluated
    only when the collector records activation sizes; ``rows`` counts their rows."""
    collector = active_collector()
    if collector is None:
        return
    lie, proj = layer.branch_penalties(inputs, collector=collector)
    activations = None
    if collector.record_activations:
        equivariant, contribution = parts()
        activations = (tf.reduce_sum(tf.square(equivariant)), tf.reduce_sum(tf.square(contribution)), rows)
    collector.add(layer, lie, proj, activations)


def _force_plain() -> bool:
    """True inside :func:`plain_layers`."""
    return getattr(_BUILD, "force_plain", 0) > 0


# --------------------------------------------------------------------------- the base layer
@keras.saving.register_keras_serializable(package="keras_relaxeq")
class RelaxedEquivariantLayer(keras.layers.Layer):
    """Base class of relaxable equivariant layers.

    Subclasses implement

    * ``input_representation(input_shape)`` and ``output_representation(input_shape)``
      returning :class:`keras_relaxeq.groups.Representation` objects,
    * ``build_equivariant(input_shape)`` creating the equivariant weights,
    * ``equivariant_call(inputs, training=None)``, the equivariant map ``E``,

    and may override ``relaxation_inputs(inputs)``, the tensor ``x`` the branch reads (default: the
    layer input; e.g. only the features of a layer called on ``(features, attributes)``).

    The base adds the relaxation branch ``theta * R(x)`` when ``relaxed=True``.
    Layers that are compositions of other relaxable layers (and have no linear
    map of their own) set ``has_relaxation_branch = False`` and override
    ``call``; their sublayers carry the branches.

    Args:
        relaxed: add the relaxation branch.  With ``False`` the layer has no
            branch weights and no ``theta`` at all.
        relaxation_initializer: initializer of ``relaxation_kernel`` (zeros for
            VN-PointNet, ``"glorot_uniform"``-like defaults for VN-DGCNN,
            ``RandomNormal(stddev=1e-4)`` for SEGNN).
        relaxation_use_bias: add the branch bias ``b`` (``relaxation_bias``).
        relaxation_branch: ``"linear"`` (``W flat(x) + b``) or ``"mlp"`` (a
            one-hidden-layer MLP; penalties by autodiff).
        relaxation_hidden_units: hidden width of the ``"mlp"`` branch.
        lie_method: ``"auto"`` (closed form for linear branches, JVP
            otherwise), ``"closed_form"``, ``"jvp"`` or ``"tape"``.
        theta: initial value of ``theta``.
        relaxation_rank: ``None`` (a dense ``[D_in, D_out]`` kernel) or ``r``: the linear branch's kernel
            is ``W = U V`` with ``U`` ``[D_in, r]`` (``relaxation_kernel_u``, initialised
            ``VarianceScaling(1, "fan_in")``, so ``x U`` has the scale of ``x``) and ``V`` ``[r, D_out]``
            (``relaxation_kernel_v``, initialised with ``relaxation_initializer``: zeros give ``W = 0`` at
            the start, and ``V`` still receives gradients through ``U``).  Branch and penalties are computed
            through the factors.  A layer with ``min(D_in, D_out) <= r`` keeps the dense kernel: a rank-``r``
            factorisation would be no restriction there and cost more.

    Mixed precision (``dtype="mixed_bfloat16"``): the branch runs in the compute dtype, while its
    variables and ``theta`` stay float32 and the penalties are computed in float32 (on the float32 cast
    of the layer's inputs and on the float32 variables).
    """

    has_relaxation_branch = True

    def __init__(
        self,
        relaxed=True,
        relaxation_initializer="zeros",
        relaxation_use_bias=True,
        relaxation_branch="linear",
        relaxation_hidden_units=64,
        lie_method="auto",
        theta=1.0,
        relaxation_rank=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if relaxation_branch not in BRANCHES:
            raise ValueError(f"relaxation_branch must be one of {BRANCHES}, got {relaxation_branch!r}.")
        if lie_method not in LIE_METHODS:
            raise ValueError(f"lie_method must be one of {LIE_METHODS}, got {lie_method!r}.")
        if lie_method in ("closed_form", "direct") and relaxation_branch != "linear":
            raise ValueError(
                f"lie_method={lie_method!r} needs relaxation_branch='linear'; "
                "use lie_method='jvp' or 'tape' for other branches."
            )
        if relaxation_rank is not None:
            if int(relaxation_rank) != relaxation_rank or int(relaxation_rank) < 1:
                raise ValueError(f"relaxation_rank must be None or an integer >= 1, got {relaxation_rank!r}.")
            if relaxation_branch != "linear":
                raise ValueError("relaxation_rank needs relaxation_branch='linear'.")
            relaxation_rank = int(relaxation_rank)
        self.relaxation_rank = relaxation_rank
        self.relaxation_low_rank = False  # set in build: rank given and < min(D_in, D_out)
        self.relaxed = bool(relaxed) and not _force_plain()
        self.relaxation_initializer = keras.initializers.get(relaxation_initializer)
        self.relaxation_use_bias = bool(relaxation_use_bias)
        self.relaxation_branch = relaxation_branch
        self.relaxation_hidden_units = int(relaxation_hidden_units)
        self.lie_method = lie_method
        self.initial_theta = float(theta)
        self.input_rep = None
        self.output_rep = None
        self.theta = None

    # -- hooks for subclasses -------------------------------------------------------
    def input_representation(self, input_shape) -> Representation:
        raise NotImplementedError

    def output_representation(self, input_shape) -> Representation:
        raise NotImplementedError

    def build_equivariant(self, input_shape):
        """Create the weights of the equivariant map (default: none)."""

    def equivariant_call(self, inputs, training=None):
        raise NotImplementedError

    def relaxation_inputs(self, inputs):
        """The tensor the relaxation branch reads, from the layer's call inputs (default: ``inputs``).

        It has the representation ``input_rep``.  :meth:`call` passes it to :meth:`add_relaxation`, and
        :meth:`branch_penalties` applies this hook to its own ``inputs`` first, so the hook must accept the
        tensor it returns and return that tensor unchanged.  Layers called on several tensors (features and
        attributes) return the one the branch maps.
        """
        return inputs

    # -- relaxation kwargs shared with sublayers --------------------------------------
    def relaxation_config(self) -> dict:
        """The constructor arguments a composite layer passes on to its sublayers."""
        return {
            "relaxed": self.relaxed,
            "relaxation_initializer": keras.initializers.serialize(self.relaxation_initializer),
            "relaxation_use_bias": self.relaxation_use_bias,
            "relaxation_branch": self.relaxation_branch,
            "relaxation_hidden_units": self.relaxation_hidden_units,
            "lie_method": self.lie_method,
            "theta": self.initial_theta,
            "relaxation_rank": self.relaxation_rank,
        }

    def sublayer_config(self) -> dict:
        """Constructor arguments for sublayers: the relaxation settings and this layer's dtype policy."""
        return dict(self.relaxation_config(), dtype=self.dtype_policy)

    # -- Keras API -------------------------------------------------------------------
    def build(self, input_shape):
        self.input_rep = self.input_representation(input_shape)
        self.input_rep.check(input_shape, where=f"input of {type(self).__name__} '{self.name}'")
        self.output_rep = self.output_representation(input_shape)
        self.build_equivariant(input_shape)
        if self.relaxed and self.has_relaxation_branch:
            self._build_branch(self.input_rep, self.output_rep)

    def _build_branch(self, in_rep: Representation, out_rep: Representation):
        d_in, d_out = in_rep.dim, out_rep.dim
        self.theta = self.add_weight(
            name="theta",
            shape=(),
            initializer=keras.initializers.Constant(self.initial_theta),
            trainable=False,
            autocast=False,
        )
        if self.relaxation_branch == "mlp":
            h = self.relaxation_hidden_units
            self.relaxation_hidden_kernel = self.add_weight(
                name="relaxation_hidden_kernel", shape=(d_in, h), initializer="glorot_uniform", autocast=False
            )
            self.relaxation_hidden_bias = self.add_weight(
                name="relaxation_hidden_bias", shape=(h,), initializer="zeros", autocast=False
            )
        else:
            h = d_in
        # The branch variables are not autocast: under a mixed policy the forward pass casts them to the
        # compute dtype and the penalties read them in their (float32) variable dtype.
        self.relaxation_low_rank = self.relaxation_rank is not None and self.relaxation_rank < min(d_in, d_out)
        if self.relaxation_low_rank:
            self.relaxation_kernel = None
            self.relaxation_kernel_u = self.add_weight(
                name="relaxation_kernel_u",
                shape=(d_in, self.relaxation_rank),
                autocast=False,
                initializer=keras.initializers.VarianceScaling(1.0, "fan_in", "truncated_normal"),
            )
            self.relaxation_kernel_v = self.add_weight(
                name="relaxation_kernel_v",
                shape=(self.relaxation_rank, d_out),
                autocast=False,
                initializer=self.relaxation_initializer,
            )
        else:
            self.relaxation_kernel = self.add_weight(
                name="relaxation_kernel", shape=(h, d_out), autocast=False, initializer=self.relaxation_initializer
            )
        self.relaxation_bias = (
            self.add_weight(name="relaxation_bias", shape=(d_out,), initializer="zeros", autocast=False)
            if self.relaxation_use_bias
            else None
        )

    def call(self, inputs, training=None):
        outputs = self.equivariant_call(inputs, training=training)
        if self.relaxed and self.has_relaxation_branch:
            outputs = self.add_relaxation(self.relaxation_inputs(inputs), outputs)
        return outputs

    # -- the branch ------------------------------------------------------------------
    @property
    def relaxation_variables(self):
        """The branch's variables (theta excluded); empty when not relaxed."""
        if not (self.relaxed and self.has_relaxation_branch) or self.theta is None:
            return []
        names = (
            "relaxation_hidden_kernel",
            "relaxation_hidden_bias",
            "relaxation_kernel",
            "relaxation_kernel_u",
            "relaxation_kernel_v",
            "relaxation_bias",
        )
        return [getattr(self, n) for n in names if getattr(self, n, None) is not None]

    def branch(self, flat_x):
        """``R(x)`` on flattened features ``[..., D_in] -> [..., D_out]`` (in the dtype of ``flat_x``)."""
        h = flat_x
        dtype = flat_x.dtype

        def var(v):
            return v if tf.as_dtype(v.dtype) == dtype else tf.cast(v, dtype)

        if self.relaxation_branch == "mlp":
            h = tf.nn.gelu(tf.matmul(h, var(self.relaxation_hidden_kernel)) + var(self.relaxation_hidden_bias))
        if self.relaxation_low_rank:
            y = tf.matmul(tf.matmul(h, var(self.relaxation_kernel_u)), var(self.relaxation_kernel_v))
        else:
            y = tf.matmul(h, var(self.relaxation_kernel))
        if self.relaxation_bias is not None:
            y = y + var(self.relaxation_bias)
        return y

    def relaxation_kernel_value(self):
        """The linear branch's kernel ``W`` ``[D_in, D_out]`` as a tensor (``U V`` for a low-rank branch)."""
        if self.relaxation_low_rank:
            return tf.matmul(self.relaxation_kernel_u, self.relaxation_kernel_v)
        return tf.convert_to_tensor(self.relaxation_kernel)

    def resolved_lie_method(self, inputs=None) -> str:
        """The method used for ``inputs``: ``"auto"`` picks, for linear branches, the Gram-matrix
        closed form for per-point features and the direct evaluation for pooled features (only a
        batch axis before the feature axes: fewer rows than input features); JVP otherwise."""
        if self.lie_method != "auto":
            return self.lie_method
        if self.relaxation_branch != "linear":
            return "jvp"
        if inputs is not None and inputs.shape.rank == self.input_rep.feature_rank + 1:
            return "direct"
        if self.relaxation_low_rank:
            # per row: the Gram matrix costs D_in^2, the direct evaluation through the factors 4 r (D_in + D_out)
            d_in, d_out = self.input_rep.dim, self.output_rep.dim
            if 4 * self.relaxation_rank * (d_in + d_out) < d_in * d_in:
                return "direct"
        return "closed_form"

    def add_relaxation(self, inputs, outputs):
        """Return ``outputs + theta * R(inputs)`` and report penalties to the active collector.

        ``inputs`` is what the branch reads (the result of :meth:`relaxation_inputs`)."""
        flat_x = _flatten_features(inputs, self.input_rep)
        r = self.branch(flat_x)
        contribution = tf.cast(self.theta, outputs.dtype) * tf.reshape(r, tf.shape(outputs))
        relaxed = outputs + contribution
        collector = active_collector()
        if collector is not None:
            lie, proj = self.branch_penalties(inputs, collector=collector)
            activations = None
            if collector.record_activations:
                activations = (
                    tf.reduce_sum(tf.square(outputs)),
                    tf.reduce_sum(tf.square(contribution)),
                    tf.shape(flat_x)[0],
                )
            collector.add(self, lie, proj, activations)
        return relaxed

    def branch_penalties(self, inputs, collector=None, method=None):
        """``(LD, N)`` of this layer's own branch for ``inputs`` (on ``stop_gradient``).

        ``inputs``: the layer's call inputs or the branch input (see :meth:`relaxation_inputs`).
        For finite-group field types (``input_rep.is_finite_group``) the Lie slot holds the generator defect
        ``sum_g ||g.R(x) - R(g.x)||^2`` (:mod:`keras_relaxeq.layers.finite_group_penalties`)."""
        inputs = self.relaxation_inputs(inputs)
        if getattr(self.input_rep, "is_finite_group", False):
            from keras_relaxeq.layers.finite_group_penalties import finite_group_branch_penalties

            return finite_group_branch_penalties(self, inputs, collector=collector, method=method)
        method = method or self.resolved_lie_method(inputs)
        flat_x = tf.stop_gradient(_flatten_features(inputs, self.input_rep))
        variable_dtype = tf.as_dtype(self.variable_dtype)
        if flat_x.dtype != variable_dtype:  # mixed precision: penalties in the variables' dtype (float32)
            flat_x = tf.cast(flat_x, variable_dtype)
        if method == "direct":
            if self.relaxation_branch != "linear":
                raise ValueError("The direct evaluation needs a linear branch.")
            if self.relaxation_low_rank:
                return direct_low_rank_branch_penalties(
                    self.relaxation_kernel_u,
                    self.relaxation_kernel_v,
                    self.relaxation_bias,
                    flat_x,
                    self.input_rep,
                    self.output_rep,
                )
            return direct_linear_branch_penalties(
                self.relaxation_kernel, self.relaxation_bias, flat_x, self.input_rep, self.output_rep
            )
        if method == "closed_form":
            if self.relaxation_branch != "linear":
                raise ValueError("The closed form needs a linear branch.")
            ref = _tensor_ref(inputs)
            gram = collector.gram(ref, flat_x) if collector is not None else gram_statistics(flat_x)
            if self.relaxation_low_rank:
                return low_rank_branch_penalties(
                    self.relaxation_kernel_u,
                    self.relaxation_kernel_v,
                    self.relaxation_bias,
                    gram,
                    self.input_rep,
                    self.output_rep,
                )
            return linear_branch_penalties(
                self.relaxation_kernel, self.relaxation_bias, gram, self.input_rep, self.output_rep
            )
        return autodiff_branch_penalties(self.branch, flat_x, self.input_rep, self.output_rep, method=method)

    def relaxation_penalties(self, inputs):
        """``(LD, N)``: summed squared Lie derivative and branch output for ``inputs``.

        Sums over every relaxed branch inside this layer (its own and its
        sublayers'), points and generators, before any square root.  Runs the
        layer in inference mode.
        """
        with collect_relaxation_penalties() as collector:
            self(inputs, training=False)
        return collector.totals(dtype=self.variable_dtype)  # float32 under a mixed policy

    # -- serialization ---------------------------------------------------------------
    def get_config(self):
        config = super().get_config()
        config.update(self.relaxation_config())
        return config
