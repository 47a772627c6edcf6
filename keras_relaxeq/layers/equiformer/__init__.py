"""Equiformer (Liao and Smidt, ICLR 2023) layers on dense molecular graphs, built from the steerable O(3) layers.

* :mod:`~keras_relaxeq.layers.equiformer.radial`: :class:`GaussianRadialBasis` (with the smooth cutoff
  envelope :func:`smooth_envelope`) and :class:`RadialMLP`;
* :mod:`~keras_relaxeq.layers.equiformer.depthwise`: :class:`DepthwiseTensorProduct` (per-edge weights);
* :mod:`~keras_relaxeq.layers.equiformer.attention`: :class:`EquivariantGraphAttention`;
* :mod:`~keras_relaxeq.layers.equiformer.feed_forward`: :class:`GatedFeedForward`;
* :mod:`~keras_relaxeq.layers.equiformer.block`: :class:`EquiformerBlock`;
* :mod:`~keras_relaxeq.layers.equiformer.relaxed_feed_forward`: :class:`RelaxedGatedFeedForward` (the
  position-aware non-linear relaxation branch, Lie-derivative or finite-rotation penalty);
* :mod:`~keras_relaxeq.layers.equiformer.embedding`: :class:`AtomEmbedding`, :class:`EdgeDegreeEmbedding`;
* :mod:`~keras_relaxeq.layers.equiformer.graph`: :func:`dense_edges`.

The equivariant layer norm is :class:`~keras_relaxeq.layers.steerable.SteerableNorm` with ``mode="layer"``.
Features use the ``"mul_ir"`` layout.  See docs/equiformer.md.
"""

from keras_relaxeq.layers.equiformer.attention import EquivariantGraphAttention
from keras_relaxeq.layers.equiformer.block import RELAXATION_KINDS, EquiformerBlock
from keras_relaxeq.layers.equiformer.depthwise import DepthwiseTensorProduct, depthwise_plan
from keras_relaxeq.layers.equiformer.embedding import AtomEmbedding, EdgeDegreeEmbedding
from keras_relaxeq.layers.equiformer.feed_forward import GatedFeedForward, scaled_irreps
from keras_relaxeq.layers.equiformer.graph import dense_edges
from keras_relaxeq.layers.equiformer.radial import GaussianRadialBasis, RadialMLP, safe_norm, smooth_envelope
from keras_relaxeq.layers.equiformer.relaxed_feed_forward import (
    EQUIVARIANCE_PENALTIES,
    RelaxedGatedFeedForward,
    finite_rotation_penalty,
    small_rotations,
)

__all__ = [
    "EQUIVARIANCE_PENALTIES",
    "RELAXATION_KINDS",
    "RelaxedGatedFeedForward",
    "finite_rotation_penalty",
    "small_rotations",
    "AtomEmbedding",
    "DepthwiseTensorProduct",
    "EdgeDegreeEmbedding",
    "EquiformerBlock",
    "EquivariantGraphAttention",
    "GatedFeedForward",
    "GaussianRadialBasis",
    "RadialMLP",
    "dense_edges",
    "depthwise_plan",
    "safe_norm",
    "scaled_irreps",
    "smooth_envelope",
]
