"""Equivariance checks for C_N acting on 2D grids: rot90 of the grid and the fibre matrices.

``check_cyclic_equivariance(fn, x, in_type, out_type)`` applies every group element ``g`` (default all of
``C_N``) to the input fields, ``fn(g.x)``, and compares with ``g.fn(x)`` in float64.  Layers of
:mod:`keras_relaxeq.layers.group_conv` declare their field types (``input_rep`` / ``output_rep``), so the types
may be omitted.  The error is relative to the output scale, as in :mod:`keras_relaxeq.testing.equivariance`:

    max |fn(g.x) - g.fn(x)| <= atol + rtol * max |fn(x)|
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_relaxeq.groups.cyclic import FieldType
from keras_relaxeq.groups.cyclic_kernels import FieldRep, parse_field_type
from keras_relaxeq.testing.report import TOLERANCES, EquivarianceReport

__all__ = ["assert_cyclic_equivariant", "check_cyclic_equivariance"]


def _as_type(t, fallback, group_order):
    if t is None:
        t = fallback
    if isinstance(t, FieldRep):
        return t.field_type
    if t is None:
        raise ValueError("Pass in_type and out_type (FieldType or fibre lists), or a built layer that declares them.")
    return parse_field_type(t, group_order)


def _call(fn, x, training):
    try:
        return fn(x, training=training)
    except TypeError:
        return fn(x)


def check_cyclic_equivariance(fn, inputs, in_type=None, out_type=None, elements=None, group_order=4, atol=None,
                              rtol=None, training=False) -> EquivarianceReport:
    """Measure ``max |fn(g.x) - g.fn(x)|`` over the group elements ``elements`` (default all but the identity)."""
    in_type = _as_type(in_type, getattr(fn, "input_rep", None), group_order)
    out_type = _as_type(out_type, getattr(fn, "output_rep", None), in_type.group.order)
    if not isinstance(in_type, FieldType) or in_type.group != out_type.group:
        raise ValueError(f"Input {in_type} and output {out_type} must be field types of one cyclic group.")
    elements = tuple(range(1, in_type.group.order)) if elements is None else tuple(elements)
    x = tf.convert_to_tensor(inputs)
    y = _call(fn, x, training)
    default_atol, default_rtol = TOLERANCES.get(tf.as_dtype(y.dtype), TOLERANCES[tf.float32])
    atol = default_atol if atol is None else atol
    rtol = default_rtol if rtol is None else rtol
    y64 = np.asarray(y, np.float64)
    x64 = np.asarray(x, np.float64)
    errors, scale = [], float(np.abs(y64).max(initial=0.0))
    for g in elements:
        moved = tf.constant(in_type.act(g, x64), dtype=x.dtype)
        out_of_moved = np.asarray(_call(fn, moved, training), np.float64)
        errors.append(np.abs(out_of_moved - out_type.act(g, y64)).ravel())
    errors = np.concatenate(errors) if errors else np.zeros(1)
    if not np.all(np.isfinite(errors)):
        raise AssertionError("Equivariance check produced NaN/Inf: the function's outputs are not finite.")
    return EquivarianceReport(float(errors.max()), float(errors.mean()), scale, float(atol), float(rtol),
                              len(elements), f"C{in_type.group.order}")


def assert_cyclic_equivariant(fn, inputs, in_type=None, out_type=None, elements=None, group_order=4, atol=None,
                              rtol=None, training=False) -> EquivarianceReport:
    """Assert ``fn(g.x) == g.fn(x)`` for the C_N elements (grid rotated, fibres transformed); returns the report."""
    report = check_cyclic_equivariance(fn, inputs, in_type, out_type, elements, group_order, atol, rtol, training)
    if not report.passed:
        raise AssertionError(f"Not equivariant: {report}")
    return report
