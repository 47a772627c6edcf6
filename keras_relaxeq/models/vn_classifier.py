"""A small rotation-invariant vector-neuron point-cloud classifier.

A compact relative of VN-PointNet used by the demo and the tests: a kNN
graph layer with cross products, VN leaky-ReLU blocks, mean pooling, an
invariant ``VNStdFeature`` head and an ordinary (unrelaxed) MLP on the
invariant features.
"""

from __future__ import annotations

import keras

from keras_relaxeq.layers.vector_neurons import VNGraphFeature, VNLeakyReLU, VNMeanPool, VNStdFeature
from keras_relaxeq.models.checks import point_cloud_check
from keras_relaxeq.models.presets import attach_from_preset
from keras_relaxeq.training.model import RelaxedModel


@attach_from_preset
def vn_classifier(
    num_classes,
    num_points=None,
    channels=(16, 32, 64),
    k=10,
    relaxed=True,
    negative_slope=0.0,
    hidden_units=64,
    dropout=0.3,
    lambda_lie=0.01,
    lambda_proj=0.01,
    penalty_scale="none",
    relaxation_initializer="zeros",
    lie_method="auto",
    name="vn_classifier",
):
    """Build the classifier as a :class:`~keras_relaxeq.RelaxedModel`.

    Args:
        num_classes: number of classes (logits out).
        num_points: fixed number of points, or None for any.
        channels: vector channels of the three VN blocks.
        k: neighbours of the first (graph) layer.
        relaxed: add relaxation branches to every VN linear map of the encoder.
        negative_slope: VN leaky-ReLU slope (0 as in VN-PointNet).
        hidden_units, dropout: the invariant MLP head (not relaxed).
        lambda_lie, lambda_proj, penalty_scale: penalty weights (see RelaxedModel).
        relaxation_initializer: branch initializer (zeros as in VN-PointNet).
        lie_method: how the Lie derivative is computed.

    Input: points ``[batch, num_points, 3]``.  Output: logits ``[batch, num_classes]``.
    """
    if len(channels) != 3:
        raise ValueError(f"channels must have 3 entries, got {channels}.")
    c0, c1, c2 = (int(c) for c in channels)
    relax = dict(relaxed=relaxed, relaxation_initializer=relaxation_initializer, lie_method=lie_method)
    points = keras.Input((num_points, 3), name="points")
    x = point_cloud_check(num_points)(points)  # wrong rank / last axis, NaN: a clear error
    x = keras.layers.Reshape((-1, 1, 3), name="as_vectors")(x)
    x = VNGraphFeature(k=k, cross=True, name="graph")(x)
    x = VNLeakyReLU(c0, negative_slope=negative_slope, name="conv_pos", **relax)(x)
    x = VNMeanPool(axis=-3, name="pool_neighbours")(x)
    x = VNLeakyReLU(c1, negative_slope=negative_slope, name="conv1", **relax)(x)
    x = VNLeakyReLU(c2, negative_slope=negative_slope, name="conv2", **relax)(x)
    x = VNMeanPool(axis=-3, name="pool_points")(x)
    x, _ = VNStdFeature(negative_slope=negative_slope, name="std_feature", **relax)(x)
    x = keras.layers.Flatten(name="invariants")(x)
    x = keras.layers.Dense(hidden_units, activation="relu", name="head_dense")(x)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    logits = keras.layers.Dense(num_classes, name="logits")(x)
    return RelaxedModel(
        points, logits, lambda_lie=lambda_lie, lambda_proj=lambda_proj, penalty_scale=penalty_scale, name=name
    )
