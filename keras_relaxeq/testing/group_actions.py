"""Group actions for equivariance checks beyond the rotation groups of :mod:`.equivariance`.

A :class:`~keras_relaxeq.testing.action.GroupAction` draws group elements, acts on a layer's inputs and
outputs and measures ``max |f(g x) - g f(x)|`` (:mod:`.action`).

* :class:`EuclideanAction`: ``"SO3"``, ``"O3"``, ``"SE3"``, ``"E3"`` on features declared by
  representations (vector-neuron ``[..., C, 3]``, irreps in either layout, ``"position"`` inputs
  translated by ``SE3`` / ``E3``); delegates to :func:`~keras_relaxeq.testing.check_equivariance`.
* :class:`~keras_relaxeq.testing.cyclic.CyclicGridAction` (re-exported here): ``C_N`` (``N`` in 1, 2, 4) on
  2D grids ``[..., H, W, C]``, the grid rotated and the channels transformed by a
  :class:`~keras_relaxeq.groups.FieldType`.
* :class:`ScaleAction`: the dilations ``x -> s^k x`` of the positive reals, with a degree ``k``
  per input and output (``1`` for coordinates and lengths, ``0`` for scale-free quantities).

:func:`as_group_action` turns the ``group=`` argument of
:func:`~keras_relaxeq.testing.run_layer_test` into one of these.
"""

from __future__ import annotations

import tensorflow as tf

from keras_relaxeq.testing.action import GroupAction, per_tensor
from keras_relaxeq.testing.cyclic import CyclicGridAction
from keras_relaxeq.testing.equivariance import GROUPS, check_equivariance
from keras_relaxeq.testing.report import EquivarianceReport

__all__ = [
    "CyclicGridAction",
    "EuclideanAction",
    "GroupAction",
    "ScaleAction",
    "as_group_action",
    "check_action_equivariance",
]


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
        return check_equivariance(
            fn,
            inputs,
            self.input_reps,
            self.output_reps,
            group=self.name,
            num_samples=num_samples,
            seed=seed,
            atol=atol,
            rtol=rtol,
            training=training,
        )


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
        flat_deg, flat_vals = per_tensor(degrees, values, what)
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
            raise ValueError(
                f"input_reps / output_reps go with a group name, not with {group!r}: the action declares how it acts."
            )
        return group
    if isinstance(group, str):
        return EuclideanAction(group, input_reps, output_reps)
    raise ValueError(
        f"Unknown group {group!r}: pass one of {GROUPS}, a CyclicGridAction(field_type) or a ScaleAction(...)."
    )


def check_action_equivariance(
    fn, inputs, group, input_reps=None, output_reps=None, num_samples=2, seed=0, atol=None, rtol=None, training=False
) -> EquivarianceReport:
    """The :class:`EquivarianceReport` of ``fn`` under ``group`` (a name or a :class:`GroupAction`)."""
    return as_group_action(group, input_reps, output_reps).check(fn, inputs, num_samples, seed, atol, rtol, training)
