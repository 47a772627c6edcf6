"""Group actions for equivariance checks beyond the rotation groups of :mod:`.equivariance`.

A :class:`GroupAction` draws group elements, acts on a layer's inputs and outputs and measures
``max |f(g x) - g f(x)|`` with :meth:`GroupAction.check`, returning an
:class:`~keras_relaxeq.testing.EquivarianceReport` with the tolerances of
:data:`~keras_relaxeq.testing.TOLERANCES` (keyed by the output dtype, relative to the output scale).

* :class:`EuclideanAction`: ``"SO3"``, ``"O3"``, ``"SE3"``, ``"E3"`` on features declared by
  representations (vector-neuron ``[..., C, 3]``, irreps in either layout, ``"position"`` inputs
  translated by ``SE3`` / ``E3``); delegates to :func:`~keras_relaxeq.testing.check_equivariance`.
* :class:`CyclicGridAction`: ``C_N`` (``N`` in 1, 2, 4) on 2D grids ``[..., H, W, C]``, the grid
  rotated and the channels transformed by a :class:`~keras_relaxeq.groups.FieldType`.
* :class:`ScaleAction`: the dilations ``x -> s^k x`` of the positive reals, with a degree ``k``
  per input and output (``1`` for coordinates and lengths, ``0`` for scale-free quantities).

:func:`as_group_action` turns the ``group=`` argument of
:func:`~keras_relaxeq.testing.run_layer_test` into one of these.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_relaxeq.groups.cyclic import CyclicGroup, FieldType
from keras_relaxeq.testing.equivariance import GROUPS, TOLERANCES, EquivarianceReport, check_equivariance

__all__ = ["CyclicGridAction", "EuclideanAction", "GroupAction", "ScaleAction", "as_group_action",
           "check_action_equivariance"]


def _call(fn, inputs, training):
    try:
        return fn(inputs, training=training)
    except TypeError:
        return fn(inputs)


def _per_tensor(spec, values, what):
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
        outputs = _call(fn, inputs, training)
        out_dtype = tf.as_dtype(tf.nest.flatten(outputs)[0].dtype)
        default_atol, default_rtol = TOLERANCES.get(out_dtype, TOLERANCES[tf.float32])
        atol = default_atol if atol is None else atol
        rtol = default_rtol if rtol is None else rtol
        errors, scale = [], 0.0
        elements = self.elements(num_samples, seed)
        for g in elements:
            moved_in = self.act_inputs(g, inputs)
            out_of_moved = tf.nest.flatten(_call(fn, moved_in, training))
            moved_out = tf.nest.flatten(self.act_outputs(g, outputs))
            for a, b in zip(out_of_moved, moved_out):
                a, b = (np.asarray(tf.cast(t, tf.float64)) for t in (a, b))
                errors.append(np.abs(a - b).ravel())
                scale = max(scale, float(np.abs(b).max(initial=0.0)))
        errors = np.concatenate(errors) if errors else np.zeros(1)
        if not np.all(np.isfinite(errors)):
            raise AssertionError(f"{self.name} equivariance check produced NaN/Inf: the outputs are not finite.")
        return EquivarianceReport(float(errors.max()), float(errors.mean()), scale, float(atol), float(rtol),
                                  len(elements), self.name)

    def __repr__(self):
        return f"{type(self).__name__}({self.name})"


class EuclideanAction(GroupAction):
    """``SO3`` / ``O3`` / ``SE3`` / ``E3`` on inputs and outputs of declared representations.

    ``input_reps`` / ``output_reps``: as for :func:`~keras_relaxeq.testing.assert_equivariant`
    (a Representation, ``"vector"``, ``"position"``, ``"invariant"``, irreps, or a nest of them);
    ``None`` takes the representations a built keras_relaxeq layer declares.
    """

    def __init__(self, group="SO3", input_reps=None, output_reps=None):
        if group not in GROUPS:
            raise ValueError(f"Unknown group {group!r}; use one of {GROUPS}, a CyclicGridAction or a ScaleAction.")
        self.name = group
        self.input_reps = input_reps
        self.output_reps = output_reps

    def check(self, fn, inputs, num_samples=2, seed=0, atol=None, rtol=None, training=False) -> EquivarianceReport:
        return check_equivariance(fn, inputs, self.input_reps, self.output_reps, group=self.name,
                                  num_samples=num_samples, seed=seed, atol=atol, rtol=rtol, training=training)


class CyclicGridAction(GroupAction):
    """``C_N`` on fields ``[batch, ..., H, W, C]``: the grid turned by ``g`` and the channels by ``rho(g)``.

    ``input_types`` / ``output_types``: a :class:`~keras_relaxeq.groups.FieldType` (for every
    tensor) or a list of them (one per input / output tensor).  The elements checked are every
    non-identity element of ``C_N`` (``N`` in 1, 2, 4: the rotations that map a square grid onto itself).
    """

    def __init__(self, input_types: FieldType, output_types: FieldType = None):
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

    def elements(self, num_samples, seed):
        return [g for g in self.group.elements() if g != self.group.identity] or [self.group.identity]

    def _act(self, types, g, values, what):
        flat_types, flat_vals = _per_tensor(types, values, what)
        moved = [t.act(g, v) for t, v in zip(flat_types, flat_vals)]
        return tf.nest.pack_sequence_as(values, moved)

    def act_inputs(self, g, inputs):
        return self._act(self.input_types, g, inputs, "input")

    def act_outputs(self, g, outputs):
        return self._act(self.output_types, g, outputs, "output")


class ScaleAction(GroupAction):
    """Dilations ``s > 0`` acting as ``x -> s^k x``, with degree ``k`` per tensor.

    ``input_degrees`` / ``output_degrees``: a number for every tensor or a list (one per tensor);
    e.g. a map of coordinates to lengths has degrees ``1 -> 1``, to directions ``1 -> 0``.
    ``scales``: the elements checked (``num_samples`` of them, cycling).
    """

    def __init__(self, input_degrees=1.0, output_degrees=1.0, scales=(0.5, 2.0, 3.0)):
        if not scales or min(float(s) for s in scales) <= 0:
            raise ValueError(f"ScaleAction needs positive scales, got {scales!r}.")
        self.input_degrees, self.output_degrees = input_degrees, output_degrees
        self.scales = tuple(float(s) for s in scales)
        self.name = "scale"

    def elements(self, num_samples, seed):
        return [self.scales[(seed + i) % len(self.scales)] for i in range(max(1, int(num_samples)))]

    def _act(self, degrees, s, values, what):
        flat_deg, flat_vals = _per_tensor(degrees, values, what)
        moved = [tf.cast(float(s) ** float(k), tf.as_dtype(v.dtype)) * v for k, v in zip(flat_deg, flat_vals)]
        return tf.nest.pack_sequence_as(values, moved)

    def act_inputs(self, s, inputs):
        return self._act(self.input_degrees, s, inputs, "input")

    def act_outputs(self, s, outputs):
        return self._act(self.output_degrees, s, outputs, "output")


def as_group_action(group, input_reps=None, output_reps=None) -> GroupAction:
    """``group`` as a :class:`GroupAction`: a group name of :data:`~keras_relaxeq.testing.GROUPS`
    (with ``input_reps`` / ``output_reps``) or an action, returned as it is."""
    if isinstance(group, GroupAction):
        if input_reps is not None or output_reps is not None:
            raise ValueError(f"input_reps / output_reps go with a group name, not with {group!r}: the action "
                             "declares how it acts.")
        return group
    if isinstance(group, str):
        return EuclideanAction(group, input_reps, output_reps)
    raise ValueError(f"Unknown group {group!r}: pass one of {GROUPS}, a CyclicGridAction(field_type) or a "
                     "ScaleAction(...).")


def check_action_equivariance(fn, inputs, group, input_reps=None, output_reps=None, num_samples=2, seed=0,
                              atol=None, rtol=None, training=False) -> EquivarianceReport:
    """The :class:`EquivarianceReport` of ``fn`` under ``group`` (a name or a :class:`GroupAction`)."""
    return as_group_action(group, input_reps, output_reps).check(fn, inputs, num_samples, seed, atol, rtol, training)
