"""kNN graph features of vector features: ``knn_indices``, ``knn_graph_feature`` and ``VNGraphFeature``."""

from __future__ import annotations

import tensorflow as tf

from keras_relaxeq.layers.vector_neurons.common import _VectorLayer, register


def knn_indices(features, k):
    """Indices ``[B, N, k]`` of the ``k`` nearest neighbours (self included) of each point.

    ``features``: ``[B, N, D]``; distances are Euclidean in feature space.
    """
    inner = tf.matmul(features, features, transpose_b=True)
    sq = tf.reduce_sum(tf.square(features), axis=-1)
    neg_dist = 2.0 * inner - sq[:, :, None] - sq[:, None, :]
    return tf.math.top_k(neg_dist, k=k).indices


def knn_graph_feature(x, k, cross=False, indices=None):
    """Edge features ``[x_j - x_i, x_i (, x_j x x_i)]`` over the kNN graph of vector features.

    Args:
        x: ``[B, N, C, 3]`` vector features.
        k: number of neighbours (the point itself included, as in the VN/DGCNN code).
        cross: append the cross product ``x_j x x_i`` (VN-PointNet's first layer).
        indices: precomputed ``[B, N, k]`` neighbour indices (else from ``x``).

    Returns:
        ``[B, N, k, 2C (or 3C), 3]``.
    """
    x = tf.convert_to_tensor(x)
    if x.shape.rank != 4 or x.shape[-1] != 3:
        raise ValueError(
            f"knn_graph_feature expects vector features [batch, points, channels, 3]; got shape {x.shape.as_list()}."
        )
    n_static = x.shape[1]
    if n_static is not None and k > n_static:
        raise ValueError(
            f"kNN with k={k} needs at least {k} points per cloud; got {n_static}. Use more points or a smaller k."
        )
    shape = tf.shape(x)
    if indices is None:
        flat = tf.reshape(x, [shape[0], shape[1], -1])
        # a run-time check only when the number of points is not static (checked above); XLA drops
        # Assert ops with a warning at every compilation
        checks = (
            []
            if n_static is not None
            else [
                tf.debugging.assert_greater_equal(
                    shape[1],
                    k,
                    message=f"kNN with k={k} needs at least {k} points per cloud; use more points or a smaller k.",
                )
            ]
        )
        with tf.control_dependencies(checks):
            # neighbours from float32 distances also under a mixed (bfloat16) policy
            indices = knn_indices(tf.cast(tf.stop_gradient(flat), tf.float32), k)
    neighbours = tf.gather(x, indices, batch_dims=1)  # [B, N, k, C, 3]
    centre = tf.broadcast_to(x[:, :, None], tf.shape(neighbours))
    parts = [neighbours - centre, centre]
    if cross:
        parts.append(tf.linalg.cross(neighbours, centre))
    return tf.concat(parts, axis=-2)


@register
class VNGraphFeature(_VectorLayer):
    """kNN graph features of vector features as a layer (no parameters): see :func:`knn_graph_feature`."""

    has_relaxation_branch = False

    def __init__(self, k=20, cross=False, **kwargs):
        super().__init__(**kwargs)
        if int(k) < 1:
            raise ValueError(f"VNGraphFeature needs k >= 1, got {k}.")
        self.k = int(k)
        self.cross = bool(cross)

    def build_equivariant(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                f"VNGraphFeature '{self.name}' expects [batch, points, channels, 3]; got shape {list(input_shape)}."
            )
        if input_shape[1] is not None and self.k > input_shape[1]:
            raise ValueError(
                f"VNGraphFeature '{self.name}': k={self.k} needs at least {self.k} points per "
                f"cloud, got {input_shape[1]}. Use more points or a smaller k."
            )

    def equivariant_call(self, inputs, training=None):
        return knn_graph_feature(inputs, self.k, cross=self.cross)

    def compute_output_shape(self, input_shape):
        factor = 3 if self.cross else 2
        return (input_shape[0], input_shape[1], self.k, factor * input_shape[2], 3)

    def get_config(self):
        config = super().get_config()
        config.update(k=self.k, cross=self.cross)
        return config
