"""VN-DGCNN, the ModelNet40 classifier of the Vector Neurons paper, with relaxation branches.

Mirrors ``get_model`` of ``models/vn_dgcnn_cls.py`` in the Vector Neurons code
(FlyingGiraffe/vnn) with ``pooling='mean'``, in the layout ``[batch, points, channels, 3]``:

* four edge convolutions on a *dynamic* kNN graph (recomputed on the current features,
  ``get_graph_feature``: ``[x_j - x_i, x_i]``, 2 channels per input channel):
  ``conv1 (2 -> 64//3)``, ``conv2 (64//3*2 -> 64//3)``, ``conv3 (64//3*2 -> 128//3)``,
  ``conv4 (128//3*2 -> 256//3)``, each a ``VNLinearLeakyReLU`` followed by the mean over
  the neighbours;
* ``conv5``: ``VNLinearLeakyReLU(256//3 + 128//3 + 64//3*2, 1024//3, share_nonlinearity=True)``
  on the concatenation ``[x1, x2, x3, x4]``;
* concatenation with the mean over the points, ``VNStdFeature(1024//3*2,
  normalize_frame=False)``, the invariant features flattened per point and pooled over the
  points by max and by mean (``(1024//3)*12 = 4092`` features);
* the invariant head (plain Keras, never relaxed): ``linear1 512`` + BN + leaky ReLU 0.2 +
  dropout 0.5, ``linear2 256`` + BN + leaky ReLU 0.2 + dropout 0.5, ``linear3`` logits.

VN leaky-ReLU slope 0.2 everywhere (the VN-DGCNN default).

Parameter counts (width 1.0, 40 classes)
-----------------------------------------
``relaxed=False``: 2,899,830 trainable parameters, the PyTorch ``parameters()`` count of the
VN code's model (659,028 VN linear weights in 15 maps, 2,042 VN batch-norm ``gamma``/``beta``,
2,238,760 head parameters); ``count_params()`` = 2,903,408 adds the 3,578 batch-norm moving
statistics (buffers, not parameters, in PyTorch).  ``relaxed=True`` adds 9 x 659,028 =
5,931,252 branch kernel and 3 x 1,705 = 5,115 branch bias parameters (5,936,367 trainable),
plus 15 non-trainable ``theta`` scalars (``relaxation_use_bias=False`` drops the biases).

Branch initialisation: the paper initialises the VN-DGCNN branches with the framework
default; here that is Keras' default ``"glorot_uniform"`` (PyTorch's ``nn.Linear`` default
would be ``U(+-1/sqrt(fan_in))``: ``VarianceScaling(1/3, "fan_in", "uniform")``).  The
penalty is multiplied by theta (``penalty_scale="theta"``) as in the VN-DGCNN code.
"""

from __future__ import annotations

import keras

from keras_relaxeq.layers.vector_neurons import VNGraphFeature, VNLeakyReLU, VNMeanPool, VNStdFeature
from keras_relaxeq.models.checks import point_cloud_check
from keras_relaxeq.models.presets import attach_from_preset, pretrained_model
from keras_relaxeq.models.vn_pointnet import dense_units, dtype_policy_scope, vn_channels
from keras_relaxeq.training.model import RelaxedModel

PLAIN_TRAINABLE_PARAMETERS = 2_899_830
PLAIN_COUNT_PARAMS = 2_903_408
BRANCH_KERNEL_PARAMETERS = 5_931_252
BRANCH_BIAS_PARAMETERS = 5_115
NUM_RELAXED_MAPS = 15


@attach_from_preset
def vn_dgcnn(
    num_classes=40,
    num_points=None,
    k=20,
    relaxed=True,
    width=1.0,
    normalize_frame=False,
    lambda_lie=0.0005,
    lambda_proj=0.0005,
    penalty_scale="theta",
    relaxation_initializer="glorot_uniform",
    relaxation_use_bias=True,
    lie_method="auto",
    negative_slope=0.2,
    dropout=0.5,
    name="vn_dgcnn",
    pretrained=False,
    relaxation_rank=None,
    dtype=None,
):
    """Build VN-DGCNN (classification, mean pooling).

    Args:
        num_classes: number of logits (40 for ModelNet40).
        num_points: fixed number of points per cloud, or None for any (>= k).
        k: neighbours of every dynamic kNN graph (20 published).
        relaxed: add a relaxation branch to every VN linear map (the MLP head is plain).
        width: multiplies every VN channel count (before ``// 3``) and the head widths.
        normalize_frame: Gram-Schmidt frame in ``VNStdFeature`` (False as published).
        lambda_lie, lambda_proj: penalty weights (published 0.0005 each).
        penalty_scale: ``"theta"`` (published VN-DGCNN code) or ``"none"``.
        relaxation_initializer: branch kernel initializer (framework default).
        relaxation_use_bias: give each branch a bias ``b``.
        lie_method: how the Lie derivative is computed.
        negative_slope: VN leaky-ReLU slope (0.2); the head's leaky ReLU also uses 0.2.
        dropout: head dropout rate (0.5).
        pretrained: ``True`` (or a zoo name) builds the architecture of the zoo entry
            (``vn_dgcnn_so3_modelnet40`` by default: its width and ``k``, not this call's) with
            its weights, through ``vn_dgcnn.from_preset`` (``keras_relaxeq.models.presets``):
            ``num_classes`` other than the entry's gives a new head; ``relaxed=True`` (the
            default) re-enables the relaxation branches for fine-tuning.
        relaxation_rank: ``None`` (dense branch kernels) or ``r`` (low-rank branches ``W = U V``).
        dtype: Keras dtype policy of every layer (e.g. ``"mixed_bfloat16"``), or None for the global
            policy; the logits layer ``linear3`` is always float32.

    Input ``points [batch, num_points, 3]``; output logits ``[batch, num_classes]``.
    """
    if pretrained:
        return pretrained_model("vn_dgcnn", pretrained, locals())
    if dtype is not None:
        kwargs = dict(locals(), dtype=None)
        with dtype_policy_scope(dtype):
            return vn_dgcnn(**kwargs)
    c64, c128, c256, c1024 = (vn_channels(n, width) for n in (64, 128, 256, 1024))
    relax = dict(
        relaxed=relaxed,
        relaxation_initializer=relaxation_initializer,
        relaxation_use_bias=relaxation_use_bias,
        lie_method=lie_method,
        relaxation_rank=relaxation_rank,
    )
    block = dict(negative_slope=negative_slope, **relax)

    points = keras.Input((num_points, 3), name="points")
    x = point_cloud_check(num_points)(points)  # wrong rank / last axis, NaN: a clear error
    x = keras.layers.Reshape((-1, 1, 3), name="as_vectors")(x)
    features = []
    for i, channels in enumerate((c64, c64, c128, c256), start=1):
        x = VNGraphFeature(k=k, cross=False, name=f"graph{i}")(x)  # [B, N, k, 2C, 3]
        x = VNLeakyReLU(channels, name=f"conv{i}", **block)(x)
        x = VNMeanPool(axis=-3, name=f"pool{i}")(x)  # [B, N, C, 3]
        features.append(x)
    x = keras.layers.Concatenate(axis=-2, name="concat_features")(features)
    x = VNLeakyReLU(c1024, share_nonlinearity=True, name="conv5", **block)(x)
    # [x, mean over points of x] ([B, N, 2 c1024, 3]) projected without building the concatenation
    x, _ = VNStdFeature(
        normalize_frame=normalize_frame, negative_slope=negative_slope, concat_mean=True, name="std_feature", **relax
    )(x)
    x = keras.layers.Reshape((-1, 2 * c1024 * 3), name="invariants")(x)
    x_max = keras.layers.GlobalMaxPooling1D(name="max_points")(x)
    x_avg = keras.layers.GlobalAveragePooling1D(name="mean_points")(x)
    x = keras.layers.Concatenate(name="global_features")([x_max, x_avg])

    for i, units in enumerate((512, 256), start=1):
        x = keras.layers.Dense(dense_units(units, width), name=f"linear{i}")(x)
        x = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"bn{i}")(x)
        x = keras.layers.LeakyReLU(negative_slope=0.2, name=f"leaky_relu{i}")(x)
        x = keras.layers.Dropout(dropout, name=f"dropout{i}")(x)
    logits = keras.layers.Dense(num_classes, name="linear3", dtype="float32")(x)
    return RelaxedModel(
        points, logits, lambda_lie=lambda_lie, lambda_proj=lambda_proj, penalty_scale=penalty_scale, name=name
    )
