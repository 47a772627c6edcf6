"""Representations of SO(3) on feature tensors.

A representation describes how a rotation acts on the trailing *feature* axes
of a tensor ``[batch, ..., *feature_shape]`` (everything before the feature
axes, points, neighbours, is left alone).  It provides what generic code
needs:

* ``transform(rotations, x)``: the group action, one rotation per batch
  element (``[batch, 3, 3]``) or one for all (``[3, 3]``);
* ``generators()``: ``d rho(A_k)`` as dense ``[3, dim, dim]`` matrices acting
  on the flattened feature vector (``dim = prod(feature_shape)``, row-major);
* ``apply_generators(v)``: ``v @ G_k^T`` for all k at once on flattened
  features ``[..., dim]`` (``[3, ..., dim]`` out), using the structure of the
  representation instead of dense matrices.  This is what the penalties use.

Layers declare their input and output representations with these objects, so
penalties, ``assert_equivariant`` and projection need no per-layer code.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_relaxeq.groups.so3 import so3_generators_numpy


class Representation:
    """Base class; subclasses define ``feature_shape`` and the action."""

    #: trailing per-point feature shape, e.g. ``(channels, 3)``
    feature_shape: tuple = ()

    @property
    def dim(self) -> int:
        return int(np.prod(self.feature_shape)) if self.feature_shape else 1

    @property
    def feature_rank(self) -> int:
        return len(self.feature_shape)

    @property
    def is_trivial(self) -> bool:
        return False

    def generators_numpy(self) -> np.ndarray:
        raise NotImplementedError

    def generators(self, dtype=tf.float32) -> tf.Tensor:
        return tf.constant(self.generators_numpy(), dtype=dtype)

    def apply_generators(self, v, transpose: bool = False) -> tf.Tensor:
        """``v @ G_k^T`` (``v @ G_k`` with ``transpose``) for k = 0, 1, 2.

        ``v``: ``[..., dim]``; returns ``[3, ..., dim]``.
        """
        gens = self.generators(v.dtype)
        eq = "...j,kij->k...i" if not transpose else "...j,kji->k...i"
        return tf.einsum(eq, v, gens)

    def transform(self, rotations, x):
        raise NotImplementedError

    def check(self, shape, where: str = "input") -> None:
        """Raise a ValueError naming the expected shape if ``shape`` does not fit."""
        shape = tuple(shape)
        fs = self.feature_shape
        if len(shape) < len(fs) + 1:
            raise ValueError(f"Expected a {where} of shape [batch, ..., {', '.join(map(str, fs))}] "
                             f"for {self}, got a tensor of shape {list(shape)}.")
        tail = shape[len(shape) - len(fs):]
        for got, want in zip(tail, fs):
            if got is not None and want is not None and got != want:
                raise ValueError(f"Expected a {where} of shape [batch, ..., {', '.join(map(str, fs))}] "
                                 f"for {self}, got a tensor of shape {list(shape)}.")

    def __eq__(self, other):
        return type(self) is type(other) and self.feature_shape == other.feature_shape

    def __hash__(self):
        return hash((type(self).__name__, self.feature_shape))


class TrivialRep(Representation):
    """Invariant features: rotations act as the identity."""

    def __init__(self, *feature_shape: int):
        self.feature_shape = tuple(int(s) for s in feature_shape)

    @property
    def is_trivial(self) -> bool:
        return True

    def generators_numpy(self):
        return np.zeros((3, self.dim, self.dim))

    def apply_generators(self, v, transpose=False):
        return tf.zeros(tf.concat([[3], tf.shape(v)], 0), dtype=v.dtype)

    def transform(self, rotations, x):
        return x

    def __repr__(self):
        return f"TrivialRep{self.feature_shape}"


class VectorRep(Representation):
    """``channels`` copies of the 3-vector representation: features ``[..., channels, 3]``.

    The flattened feature vector is channel-major (``c * 3 + i``), so the
    generators are ``kron(I_channels, L_k)``.
    """

    def __init__(self, channels: int):
        self.channels = int(channels)
        self.feature_shape = (self.channels, 3)

    def generators_numpy(self):
        return np.stack([np.kron(np.eye(self.channels), g) for g in so3_generators_numpy(1)])

    def apply_generators(self, v, transpose=False):
        gens = tf.constant(so3_generators_numpy(1), dtype=v.dtype)
        shape = tf.shape(v)
        v3 = tf.reshape(v, tf.concat([shape[:-1], [self.channels, 3]], 0))
        eq = "...cj,kij->k...ci" if not transpose else "...cj,kji->k...ci"
        out = tf.einsum(eq, v3, gens)
        return tf.reshape(out, tf.concat([[3], shape], 0))

    def transform(self, rotations, x):
        rotations = tf.cast(rotations, x.dtype)
        if rotations.shape.rank == 2:
            return tf.einsum("...j,ij->...i", x, rotations)
        # One rotation per batch element: x [B, ..., 3], R [B, 3, 3].
        lead = x.shape.rank - 2
        r = tf.reshape(rotations, tf.concat([tf.shape(rotations)[:1], [1] * lead, [3, 3]], 0))
        return tf.reduce_sum(r * x[..., None, :], axis=-1)

    def __repr__(self):
        return f"VectorRep(channels={self.channels})"


class VectorFieldRep(VectorRep):
    """Vector features whose channel count is not fixed (for testing whole tensors).

    Acts on the last axis (size 3) of any tensor; ``generators`` need a channel
    count, so use ``VectorRep(channels)`` where flattening is involved.
    """

    def __init__(self):
        self.channels = None
        self.feature_shape = (3,)

    def generators_numpy(self):
        return so3_generators_numpy(1)

    def __repr__(self):
        return "VectorFieldRep()"


def as_representation(rep) -> Representation:
    """Accept a Representation or a short name: ``"vector"`` / ``"scalar"``."""
    if isinstance(rep, Representation):
        return rep
    if rep in ("vector", "vectors", "1"):
        return VectorFieldRep()
    if rep in ("scalar", "scalars", "invariant", "trivial", "0"):
        return TrivialRep()
    raise ValueError(f"Unknown representation {rep!r}: pass a keras_relaxeq.groups.Representation, "
                     "'vector' (rotate the last axis of size 3) or 'invariant'.")
