"""The base of the package's equivariance checks: a group acting on a function's inputs and outputs.

A :class:`GroupAction` draws group elements, acts on a function's inputs and outputs and measures
``max |f(g x) - g f(x)|`` with :meth:`GroupAction.check`, returning an
:class:`~keras_relaxeq.testing.EquivarianceReport` with the tolerances of
:data:`~keras_relaxeq.testing.TOLERANCES` (keyed by the output dtype, relative to the output scale).
The actions themselves live in :mod:`.group_actions` (rotations, dilations) and :mod:`.cyclic` (C_N on grids).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_relaxeq.groups.cyclic import FieldType
from keras_relaxeq.testing.report import TOLERANCES, EquivarianceReport

__all__ = ["GroupAction", "call_function", "per_tensor"]


def call_function(fn, inputs, training):
    try:
        return fn(inputs, training=training)
    except TypeError:
        return fn(inputs)


def per_tensor(spec, values, what):
    """``spec`` repeated for every tensor of ``values`` when it is a single item, else the flat list."""
    flat_vals = tf.nest.flatten(values)
    if isinstance(spec, (list, tuple)) and not isinstance(spec, FieldType):
        flat = list(spec)
    else:
        flat = [spec] * len(flat_vals)
    if len(flat) != len(flat_vals):
        raise ValueError(f"{len(flat_vals)} {what} tensors but {len(flat)} specifications were given.")
    return flat, flat_vals


class GroupAction:
    """A group acting on inputs and outputs: subclasses define :meth:`elements`, :meth:`act_inputs`,
    :meth:`act_outputs` (or override :meth:`check`) and a ``name``."""

    name = "group"

    def elements(self, num_samples: int, seed: int) -> list:
        raise NotImplementedError

    def act_inputs(self, g, inputs):
        raise NotImplementedError

    def act_outputs(self, g, outputs):
        raise NotImplementedError

    def check(self, fn, inputs, num_samples=2, seed=0, atol=None, rtol=None, training=False) -> EquivarianceReport:
        """``max |fn(g x) - g fn(x)|`` over the drawn elements, compared in float64."""
        outputs = call_function(fn, inputs, training)
        out_dtype = tf.as_dtype(tf.nest.flatten(outputs)[0].dtype)
        default_atol, default_rtol = TOLERANCES.get(out_dtype, TOLERANCES[tf.float32])
        atol = default_atol if atol is None else atol
        rtol = default_rtol if rtol is None else rtol
        errors, scale = [], 0.0
        elements = self.elements(num_samples, seed)
        for g in elements:
            moved_in = self.act_inputs(g, inputs)
            out_of_moved = tf.nest.flatten(call_function(fn, moved_in, training))
            moved_out = tf.nest.flatten(self.act_outputs(g, outputs))
            for a, b in zip(out_of_moved, moved_out):
                a, b = (np.asarray(tf.cast(t, tf.float64)) for t in (a, b))
                errors.append(np.abs(a - b).ravel())
                scale = max(scale, float(np.abs(b).max(initial=0.0)))
        errors = np.concatenate(errors) if errors else np.zeros(1)
        if not np.all(np.isfinite(errors)):
            raise AssertionError(f"{self.name} equivariance check produced NaN/Inf: the outputs are not finite.")
        return EquivarianceReport(
            float(errors.max()), float(errors.mean()), scale, float(atol), float(rtol), len(elements), self.name
        )

    def __repr__(self):
        return f"{type(self).__name__}({self.name})"
