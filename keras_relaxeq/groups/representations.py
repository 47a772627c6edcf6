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
            raise ValueError(
                f"Expected a {where} of shape [batch, ..., {', '.join(map(str, fs))}] "
                f"for {self}, got a tensor of shape {list(shape)}."
            )
        tail = shape[len(shape) - len(fs) :]
        for got, want in zip(tail, fs):
            if got is not None and want is not None and got != want:
                raise ValueError(
                    f"Expected a {where} of shape [batch, ..., {', '.join(map(str, fs))}] "
                    f"for {self}, got a tensor of shape {list(shape)}."
                )

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
    raise ValueError(
        f"Unknown representation {rep!r}: pass a keras_relaxeq.groups.Representation, "
        "'vector' (rotate the last axis of size 3) or 'invariant'."
    )


# ----------------------------------------------------------------------------- equivariant linear maps


def representation_degrees(rep: Representation) -> list[int]:
    """The degrees ``l`` of the SO(3) irreps in ``rep``, from the eigenvalues ``l (l + 1)`` of its
    Casimir ``-sum_k G_k^2`` (dense generators; raises if they are not so(3) generators in the
    standard normalisation)."""
    gens = np.asarray(rep.generators_numpy(), np.float64)
    casimir = -np.einsum("kij,kjl->il", gens, gens)
    eig = np.linalg.eigvalsh((casimir + casimir.T) / 2.0)
    degrees = (np.sqrt(1.0 + 4.0 * np.maximum(eig, 0.0)) - 1.0) / 2.0
    rounded = np.rint(degrees)
    if np.abs(degrees - rounded).max(initial=0.0) > 1e-6:
        raise ValueError(
            f"{rep}: the Casimir eigenvalues are not of the form l (l + 1); are its generators "
            "so(3) generators with [G_x, G_y] = G_z?"
        )
    return sorted(set(int(l) for l in rounded))


def _map_lie_operators(in_rep: Representation, out_rep: Representation):
    """``(L, L^*)``: ``L(W)_k = G_in,k^T W - W G_out,k^T`` and its adjoint ``L^*(M) = sum_k G_in,k M_k - M_k G_out,k``
    (Frobenius inner product), on float64 arrays, with the dense generators computed once."""
    g_in = np.asarray(in_rep.generators_numpy(), np.float64)
    g_out = np.asarray(out_rep.generators_numpy(), np.float64)

    def lie(w):
        return np.einsum("kji,jo->kio", g_in, w) - np.einsum("io,kpo->kip", w, g_out)

    def adjoint(m):
        return np.einsum("kij,kjo->io", g_in, m) - np.einsum("kio,kop->ip", m, g_out)

    return lie, adjoint


def lie_derivative_of_map(kernel, in_rep: Representation, out_rep: Representation) -> np.ndarray:
    """``L_k(W) = G_in,k^T W - W G_out,k^T`` (``[3, D_in, D_out]``, float64) of the linear map
    ``x -> x W``: the map is SO(3)-equivariant iff all three vanish (the Lie derivative of
    docs/method.md section 3 of a linear branch, per unit input)."""
    return _map_lie_operators(in_rep, out_rep)[0](np.asarray(kernel, np.float64))


def equivariant_projection(kernel, in_rep: Representation, out_rep: Representation) -> np.ndarray:
    """Orthogonal (Frobenius) projection of the linear map ``x -> x W`` onto the SO(3)-equivariant maps.

    ``kernel``: ``[D_in, D_out]`` for flattened features of ``in_rep`` and ``out_rep``.  Returns
    ``P(W)`` (float64) with ``L_k(P(W)) = 0`` for k = 0, 1, 2 (:func:`lie_derivative_of_map`);
    ``W - P(W)`` is orthogonal to every equivariant map.  The equivariant maps are the kernel of
    ``A = sum_k L_k^* L_k``, the Casimir of ``in_rep (x) out_rep``, whose eigenvalues are ``L (L + 1)``
    for the degrees ``L <= l_in + l_out`` present; ``P = prod_{L >= 1} (1 - A / (L (L + 1)))``
    removes each of them exactly.  The Lie derivative does not see parity: for O(3) irreps a map
    between equal ``l`` and opposite parity counts as equivariant here, as it does for the penalty.
    """
    w = np.asarray(kernel, np.float64)
    if w.shape != (in_rep.dim, out_rep.dim):
        raise ValueError(
            f"kernel of shape {list(w.shape)} does not map {in_rep} (dim {in_rep.dim}) to "
            f"{out_rep} (dim {out_rep.dim}); expected [{in_rep.dim}, {out_rep.dim}]."
        )
    lie, adjoint = _map_lie_operators(in_rep, out_rep)
    top = max(representation_degrees(in_rep)) + max(representation_degrees(out_rep))
    p = w.copy()
    for degree in range(1, top + 1):
        p = p - adjoint(lie(p)) / float(degree * (degree + 1))  # A = L^* L, the Casimir
    residual = np.sqrt(np.sum(lie(p) ** 2))
    if residual > 1e-9 * max(np.sqrt(np.sum(w**2)), 1e-300):
        raise RuntimeError(
            f"equivariant_projection: the projected map still has a Lie derivative of norm "
            f"{residual:.3g} (kernel norm {np.sqrt(np.sum(w**2)):.3g})."
        )
    return p
