"""Base class of the steerable layers: irreps-typed inputs ``x`` and optional attributes, input checks."""

from __future__ import annotations

import tensorflow as tf

from keras_relaxeq.groups.irreps import Irreps
from keras_relaxeq.groups.irreps_layouts import check_layout
from keras_relaxeq.groups.irreps_rep import IrrepsRep
from keras_relaxeq.layers.base import RelaxedEquivariantLayer
from keras_relaxeq.layers.steerable.parsing import check_feature_dim, is_single_shape
from keras_relaxeq.utils import set_untracked


class IrrepsLayer(RelaxedEquivariantLayer):
    """Shared plumbing: one input ``x`` with ``irreps_in1`` and, optionally, attributes with ``irreps_in2``.

    With attributes the layer is called on ``(x, attr)``; the relaxation branch and
    ``input_rep`` concern ``x`` only (:meth:`relaxation_inputs`).  Subclasses name their irreps
    attributes with ``_in1_attr`` / ``_in2_attr`` / ``_out_attr`` and implement ``equivariant_call``.
    """

    _in1_attr = "irreps_in1"
    _in2_attr = None  # name of the attribute irreps, None for one-input layers
    _out_attr = "irreps_out"

    def __init__(self, layout="mul_ir", **kwargs):
        super().__init__(**kwargs)
        self.layout = check_layout(layout, f"{type(self).__name__} '{self.name}'")

    # -- irreps accessors --------------------------------------------------------------------
    def _irreps_x(self) -> Irreps:
        return getattr(self, self._in1_attr)

    def _irreps_attr(self):
        return getattr(self, self._in2_attr) if self._in2_attr else None

    def _has_attr_input(self) -> bool:
        return self._irreps_attr() is not None

    @property
    def attr_rep(self):
        """Representation of the attributes (second input), or None."""
        attr = self._irreps_attr()
        return None if attr is None else IrrepsRep(attr, self.layout)

    @property
    def equivariance_input_reps(self):
        """Input representations for ``assert_equivariant``: ``(rep_x, rep_attr)`` or ``rep_x``."""
        rep_x = IrrepsRep(self._irreps_x(), self.layout)
        return (rep_x, self.attr_rep) if self._has_attr_input() else rep_x

    def input_representation(self, input_shape):
        return IrrepsRep(self._irreps_x(), self.layout)

    def output_representation(self, input_shape):
        return IrrepsRep(getattr(self, self._out_attr), self.layout)

    # -- input handling ---------------------------------------------------------------------
    def _split_shapes(self, input_shape):
        if self._has_attr_input():
            if is_single_shape(input_shape) or len(input_shape) != 2:
                raise ValueError(
                    f"{type(self).__name__} '{self.name}' takes two inputs (x, attr) with irreps "
                    f"'{self._irreps_x()}' and '{self._irreps_attr()}'; got input shape "
                    f"{input_shape}."
                )
            x_shape, a_shape = (tuple(s) for s in input_shape)
            check_feature_dim(self, x_shape, self._irreps_x(), "input x")
            check_feature_dim(self, a_shape, self._irreps_attr(), "input attr")
            return x_shape, a_shape
        if not is_single_shape(input_shape):
            raise ValueError(
                f"{type(self).__name__} '{self.name}' takes one input with irreps "
                f"'{self._irreps_x()}' (it was built without irreps_in2); got input shapes "
                f"{input_shape}."
            )
        x_shape = tuple(input_shape)
        check_feature_dim(self, x_shape, self._irreps_x(), "input")
        return x_shape, None

    def _split_inputs(self, inputs):
        """``(x, attr)`` cast to the compute dtype and broadcast to common leading axes."""
        if self._has_attr_input():
            if not isinstance(inputs, (tuple, list)) or len(inputs) != 2:
                raise ValueError(f"{type(self).__name__} '{self.name}' must be called on (x, attr).")
            x, attr = (tf.cast(t, self.compute_dtype) for t in inputs)
            if (
                x.shape.rank != attr.shape.rank
                or x.shape[:-1] != attr.shape[:-1]
                or not x.shape[:-1].is_fully_defined()
            ):
                lead = tf.broadcast_dynamic_shape(tf.shape(x)[:-1], tf.shape(attr)[:-1])
                x = tf.broadcast_to(x, tf.concat([lead, tf.shape(x)[-1:]], 0))
                attr = tf.broadcast_to(attr, tf.concat([lead, tf.shape(attr)[-1:]], 0))
            return x, attr
        if isinstance(inputs, (tuple, list)):
            raise ValueError(
                f"{type(self).__name__} '{self.name}' takes one input tensor (it was built "
                "without irreps_in2), got a sequence."
            )
        return tf.cast(inputs, self.compute_dtype), None

    def build(self, input_shape):
        x_shape, attr_shape = self._split_shapes(input_shape)
        set_untracked(self, "_full_input_shape", input_shape)
        set_untracked(self, "_attr_shape", attr_shape)
        super().build(x_shape)

    def relaxation_inputs(self, inputs):
        """The branch reads ``x``: from ``(x, attr)`` the ``x`` of :meth:`_split_inputs` (cast, broadcast against
        ``attr``); a single tensor (``x`` itself) cast to the compute dtype."""
        if isinstance(inputs, (tuple, list)):
            return self._split_inputs(inputs)[0]
        return tf.cast(inputs, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        x_shape, _ = self._split_shapes(input_shape)
        return tuple(x_shape[:-1]) + (getattr(self, self._out_attr).dim,)

    def get_config(self):
        config = super().get_config()
        config.update(layout=self.layout)
        return config


__all__ = ["IrrepsLayer"]
