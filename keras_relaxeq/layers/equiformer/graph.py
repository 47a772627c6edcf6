"""Dense molecular graphs: relative vectors, distances and the neighbour mask of ``[B, A]`` atoms."""

from __future__ import annotations

import tensorflow as tf

from keras_relaxeq.layers.equiformer.radial import safe_norm


def dense_edges(positions, cutoff, neighbors=None, atom_mask=None):
    """``(vectors, distances, mask)`` of the dense graph ``[B, A, A]`` of edges ``j -> i``.

    ``vectors[b, i, j] = pos_j - pos_i`` ``[B, A, A, 3]``; ``distances`` their norms (finite gradients at 0);
    ``mask`` 1 where ``0 < distance < cutoff`` and both atoms are real (``atom_mask``), or ``neighbors`` (the
    given ``[B, A, A]`` mask, restricted to real atoms and the cutoff: the envelope is 0 beyond it anyway).
    """
    vectors = positions[:, None, :, :] - positions[:, :, None, :]
    distances = safe_norm(vectors)
    dtype = positions.dtype
    within = tf.cast(tf.logical_and(distances > 0, distances < cutoff), dtype)
    mask = within if neighbors is None else tf.cast(neighbors, dtype) * within
    if atom_mask is not None:
        m = tf.cast(atom_mask, dtype)
        mask = mask * m[:, :, None] * m[:, None, :]
    return vectors, distances, mask


__all__ = ["dense_edges"]
