"""Argument parsing and input checks shared by the steerable layers (irreps, shapes, activations, initializers)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from keras_relaxeq.groups.irreps import Irreps
from keras_relaxeq.utils import set_untracked


def irreps_arg(value, arg, owner, allow_empty=False) -> Irreps:
    """Parse an irreps argument with an error naming the layer and the argument."""
    try:
        irreps = Irreps(value)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"{owner}: cannot parse {arg}={value!r} as Irreps ({err}). Use e3nn syntax such as '16x0e+8x1o'."
        ) from None
    if not allow_empty and irreps.dim == 0:
        raise ValueError(f"{owner}: {arg}={value!r} has dimension 0; it needs at least one irrep.")
    return irreps


def set_tensor_product_irreps(layer, irreps_in1, irreps_in2, irreps_out, owner):
    """Parse and set ``irreps_in1`` / ``irreps_in2`` (None: no second input) / ``irreps_out`` of a
    tensor-product layer (``irreps_out`` is required)."""
    if irreps_out is None:
        raise ValueError(f"{owner}: irreps_out is required.")
    set_untracked(layer, "irreps_in1", irreps_arg(irreps_in1, "irreps_in1", owner))
    set_untracked(layer, "irreps_in2", None if irreps_in2 is None else irreps_arg(irreps_in2, "irreps_in2", owner))
    set_untracked(layer, "irreps_out", irreps_arg(irreps_out, "irreps_out", owner))


def is_single_shape(shape) -> bool:
    """Whether ``shape`` is one shape (not a sequence of shapes)."""
    if isinstance(shape, tf.TensorShape):
        return True
    if not isinstance(shape, (tuple, list)):
        return False
    return all(s is None or isinstance(s, (int, np.integer)) for s in shape)


def check_feature_dim(layer, shape, irreps: Irreps, what: str):
    """Raise a ValueError naming ``layer`` unless ``shape`` is ``[batch, ..., irreps.dim]``."""
    shape = tuple(shape)
    if len(shape) < 2:
        raise ValueError(
            f"{type(layer).__name__} '{layer.name}': {what} must have shape [batch, ..., "
            f"{irreps.dim}] for irreps '{irreps}', got shape {list(shape)}."
        )
    if shape[-1] is not None and int(shape[-1]) != irreps.dim:
        raise ValueError(
            f"{type(layer).__name__} '{layer.name}': {what} has feature dimension {shape[-1]} "
            f"(shape {list(shape)}) but its irreps '{irreps}' have dimension {irreps.dim}."
        )


def activation_id(act):
    """The serializable form of an activation: its name, or Keras' serialization of a callable."""
    return act if isinstance(act, str) else keras.activations.serialize(act)


def serialize_initializer(init):
    """Keras' serialization of an initializer (None stays None)."""
    return None if init is None else keras.initializers.serialize(init)


__all__ = [
    "activation_id",
    "check_feature_dim",
    "irreps_arg",
    "is_single_shape",
    "serialize_initializer",
    "set_tensor_product_irreps",
]
