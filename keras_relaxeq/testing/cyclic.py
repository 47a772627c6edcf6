"""Equivariance checks for C_N acting on 2D grids: rot90 of the grid and the fibre matrices.

``check_cyclic_equivariance(fn, x, in_type, out_type)`` applies every group element ``g`` (default all of
``C_N``) to the input fields, ``fn(g.x)``, and compares with ``g.fn(x)`` in float64.  Layers of
:mod:`keras_relaxeq.layers.group_conv` declare their field types (``input_rep`` / ``output_rep``), so the types
may be omitted.  The error is relative to the output scale, as in :mod:`keras_relaxeq.testing.equivariance`:

    max |fn(g.x) - g.fn(x)| <= atol + rtol * max |fn(x)|
"""

from __future__ import annotations

import tensorflow as tf

from keras_relaxeq.groups.cyclic import CyclicGroup, FieldType
from keras_relaxeq.groups.cyclic_kernels import FieldRep, parse_field_type
from keras_relaxeq.testing.action import GroupAction, per_tensor
from keras_relaxeq.testing.report import EquivarianceReport

__all__ = ["CyclicGridAction", "assert_cyclic_equivariant", "check_cyclic_equivariance"]


def _as_type(t, fallback, group_order):
    if t is None:
        t = fallback
    if isinstance(t, FieldRep):
        return t.field_type
    if t is None:
        raise ValueError("Pass in_type and out_type (FieldType or fibre lists), or a built layer that declares them.")
    return parse_field_type(t, group_order)


class CyclicGridAction(GroupAction):
    """``C_N`` on fields ``[batch, ..., H, W, C]``: the grid turned by ``g`` and the channels by ``rho(g)``.

    ``input_types`` / ``output_types``: a :class:`~keras_relaxeq.groups.FieldType` (for every
    tensor) or a list of them (one per input / output tensor).  The elements checked are every
    non-identity element of ``C_N`` (``N`` in 1, 2, 4: the rotations that map a square grid onto itself),
    or ``elements``.
    """

    def __init__(self, input_types: FieldType, output_types: FieldType = None, elements=None):
        output_types = input_types if output_types is None else output_types
        types = [t for t in tf.nest.flatten([input_types, output_types]) if t is not None]
        if not types or not all(isinstance(t, FieldType) for t in types):
            raise TypeError("CyclicGridAction needs keras_relaxeq.groups.FieldType input and output types.")
        self.group: CyclicGroup = types[0].group
        if any(t.group != self.group for t in types):
            raise ValueError(f"The field types belong to different groups: {types}.")
        self.group.quarter_turns(1 % self.group.order)  # raises for N outside (1, 2, 4)
        self.input_types, self.output_types = input_types, output_types
        self.name = f"C{self.group.order}"
        self._elements = None if elements is None else tuple(elements)

    def elements(self, num_samples, seed):
        if self._elements is not None:
            return list(self._elements)
        return [g for g in self.group.elements() if g != self.group.identity] or [self.group.identity]

    def _act(self, types, g, values, what):
        flat_types, flat_vals = per_tensor(types, values, what)
        moved = [t.act(g, v) for t, v in zip(flat_types, flat_vals)]
        return tf.nest.pack_sequence_as(values, moved)

    def act_inputs(self, g, inputs):
        return self._act(self.input_types, g, inputs, "input")

    def act_outputs(self, g, outputs):
        return self._act(self.output_types, g, outputs, "output")


def check_cyclic_equivariance(
    fn, inputs, in_type=None, out_type=None, elements=None, group_order=4, atol=None, rtol=None, training=False
) -> EquivarianceReport:
    """Measure ``max |fn(g.x) - g.fn(x)|`` over the group elements ``elements`` (default all but the identity)."""
    in_type = _as_type(in_type, getattr(fn, "input_rep", None), group_order)
    out_type = _as_type(out_type, getattr(fn, "output_rep", None), in_type.group.order)
    if not isinstance(in_type, FieldType) or in_type.group != out_type.group:
        raise ValueError(f"Input {in_type} and output {out_type} must be field types of one cyclic group.")
    action = CyclicGridAction(in_type, out_type, elements=elements)
    return action.check(fn, inputs, atol=atol, rtol=rtol, training=training)


def assert_cyclic_equivariant(
    fn, inputs, in_type=None, out_type=None, elements=None, group_order=4, atol=None, rtol=None, training=False
) -> EquivarianceReport:
    """Assert ``fn(g.x) == g.fn(x)`` for the C_N elements (grid rotated, fibres transformed); returns the report."""
    report = check_cyclic_equivariance(fn, inputs, in_type, out_type, elements, group_order, atol, rtol, training)
    if not report.passed:
        raise AssertionError(f"Not equivariant: {report}")
    return report
