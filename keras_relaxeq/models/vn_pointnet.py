"""VN-PointNet, the ModelNet40 classifier of the Vector Neurons paper, with relaxation branches.

Mirrors ``get_model`` of ``models/vn_pointnet_cls.py`` in the Vector Neurons code
(FlyingGiraffe/vnn) with ``PointNetEncoder(global_feat=True, feature_transform=True)``
and ``pooling='mean'``, in the layout ``[batch, points, channels, 3]``:

* ``graph``: kNN graph features with cross product (``get_graph_feature_cross``,
  ``k = 20``): ``[x_j - x_i, x_i, x_j x x_i]``, 3 vector channels per neighbour;
* ``conv_pos``: ``VNLinearLeakyReLU(3, 64//3)`` + mean over the neighbours;
* ``conv1``: ``VNLinearLeakyReLU(64//3, 64//3)``;
* ``fstn``: the vector ``STNkd(d=64//3)``: ``conv1 (d -> 64//3)``, ``conv2 (-> 128//3)``,
  ``conv3 (-> 1024//3)``, mean over the points, ``fc1 (-> 512//3)``, ``fc2 (-> 256//3)``
  and the VN linear ``fc3 (-> d)``.  As in the VN code its output ``[batch, d, 3]`` is
  *not* applied as a transform: it is repeated over the points and concatenated with the
  features (``torch.cat((x, x_global), 1)``), so ``conv2`` reads ``2 * 64//3`` channels;
* ``conv2``: ``VNLinearLeakyReLU(64//3*2, 128//3)``;
* ``conv3``: ``VNLinear(128//3, 1024//3)`` + ``VNBatchNorm`` (``bn3``);
* concatenation with the mean over the points, ``VNStdFeature(1024//3*2,
  normalize_frame=False, negative_slope=0)``, the invariant features flattened per point
  (``1024//3*2*3 = 2046``) and max-pooled over the points;
* the invariant head (plain Keras, never relaxed): ``fc1 512`` + BN + ReLU,
  ``fc2 256`` + dropout 0.4 + BN + ReLU (this order, as in the VN code), ``fc3`` logits.

Every batch norm (the VN ones and the head's) is :class:`TorchBatchNormalization`, torch's
``nn.BatchNorm`` (unbiased moving variance, float64 batch statistics), so that the model
trains as the reference does: ``keras_relaxeq.models.torch_port`` loads its checkpoints.

Every VN leaky ReLU has slope 0.  The model returns logits (the VN code returns
``log_softmax``; train with ``from_logits=True``).

Parameter counts (width 1.0, 40 classes; counted with :func:`count_parameters`)
------------------------------------------------------------------------------
``relaxed=False``:

* **1,972,745 trainable parameters** -- exactly the published VN-PointNet count
  (PyTorch ``sum(p.numel() for p in model.parameters())``): 778,347 VN linear weights
  (23 maps: ``conv_pos``, ``conv1``, ``conv2`` and the two ``VNStdFeature`` blocks have a
  feature and a direction map each, ``fstn`` 5 x 2 + ``fc3``, ``conv3`` and ``vn_lin`` one),
  3,190 VN batch-norm ``gamma``/``beta`` (1,595 vector channels), and the head
  (1,048,064 + 131,328 + 10,280 dense, 1,536 BN ``gamma``/``beta``).
* ``model.count_params()`` is **1,977,471**: Keras also counts the batch-norm moving
  means and variances (non-trainable; 2 x (1,595 + 768) = 4,726), which PyTorch keeps as
  buffers, not parameters.

``relaxed=True`` (``relaxation_use_bias=True``, the layers' default) adds
**7,013,742** trainable branch parameters (``count_params`` grows by 7,013,765: the
branches and 23 ``theta`` scalars):

* branch kernels ``W`` (``3 C_in x 3 C_out`` per VN linear map): 9 x 778,347 = **7,005,123**;
* branch biases ``b`` (``3 C_out``): 3 x 2,873 = **8,619**;
* one non-trainable ``theta`` per relaxed layer (23), not counted as trainable.

The published figure for the branches is 7,005,381 = 7,005,123 + 258.  So the kernels
match exactly (``W`` on the flattened ``3 C`` features of every VN linear map of the encoder,
STN included).  Our biases (8,619) are not in the published count: it seems to use
bias-free branches plus 258 further scalars that the reference paper does not break down.
Build with ``relaxation_use_bias=False`` to get exactly the kernels (7,005,123).
"""

from __future__ import annotations

import contextlib

import keras
import tensorflow as tf

from keras_relaxeq.layers.vector_neurons import (
    TorchBatchNormalization,
    VNBatchNorm,
    VNGraphFeature,
    VNLeakyReLU,
    VNLinear,
    VNMeanPool,
    VNStdFeature,
)
from keras_relaxeq.models.checks import point_cloud_check
from keras_relaxeq.models.presets import attach_from_preset, pretrained_model
from keras_relaxeq.training.model import RelaxedModel

#: Published parameter counts (width 1.0, 40 classes) and ours, see the module docstring.
PUBLISHED_PLAIN_PARAMETERS = 1_972_745
PUBLISHED_BRANCH_PARAMETERS = 7_005_381
PLAIN_TRAINABLE_PARAMETERS = 1_972_745
PLAIN_COUNT_PARAMS = 1_977_471
BRANCH_KERNEL_PARAMETERS = 7_005_123
BRANCH_BIAS_PARAMETERS = 8_619
NUM_RELAXED_MAPS = 23


@keras.saving.register_keras_serializable(package="keras_relaxeq")
class VNConcatGlobal(keras.layers.Layer):
    """``concat([x, broadcast(g)], channel axis)``: per-point vectors and a global feature.

    ``x``: ``[batch, points, C, 3]``; ``g``: ``[batch, C', 3]`` (repeated over the points)
    or ``[batch, points, C', 3]``.  Output ``[batch, points, C + C', 3]``.  No parameters;
    rotation-equivariant.
    """

    def call(self, inputs):
        x, g = inputs
        if g.shape.rank == x.shape.rank - 1:
            g = g[:, None]
        shape = tf.concat([tf.shape(x)[:-2], tf.shape(g)[-2:]], axis=0)
        return tf.concat([x, tf.broadcast_to(g, shape)], axis=-2)

    def compute_output_shape(self, input_shape):
        x_shape, g_shape = input_shape
        c = None if x_shape[-2] is None or g_shape[-2] is None else x_shape[-2] + g_shape[-2]
        return tuple(x_shape[:-2]) + (c, 3)


def vn_channels(n, width=1.0):
    """VN channel count of a published ``n`` (``n // 3``, e.g. 64 -> 21) at ``width``."""
    return max(1, int(round(n * float(width))) // 3)


def dense_units(n, width=1.0):
    """Units of an invariant (head) layer of published width ``n`` at ``width``."""
    return max(1, int(round(n * float(width))))


@contextlib.contextmanager
def dtype_policy_scope(policy):
    """Build the layers created inside under the Keras dtype policy ``policy`` (e.g. ``"mixed_bfloat16"``);
    ``None`` leaves the global policy as it is."""
    if policy is None:
        yield
        return
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def count_parameters(model):
    """``(trainable, non_trainable, count_params)`` of a built model."""
    trainable = sum(int(keras.ops.size(v)) for v in model.trainable_weights)
    non_trainable = sum(int(keras.ops.size(v)) for v in model.non_trainable_weights)
    return trainable, non_trainable, int(model.count_params())


@attach_from_preset
def vn_pointnet(
    num_classes=40,
    num_points=None,
    relaxed=True,
    width=1.0,
    k=20,
    normalize_frame=False,
    lambda_lie=0.01,
    lambda_proj=0.01,
    penalty_scale="none",
    relaxation_initializer="zeros",
    relaxation_use_bias=True,
    lie_method="auto",
    dropout=0.4,
    name="vn_pointnet",
    pretrained=False,
    relaxation_rank=None,
    dtype=None,
):
    """Build VN-PointNet (classification, ``feature_transform=True``, mean pooling).

    Args:
        num_classes: number of logits (40 for ModelNet40).
        num_points: fixed number of points per cloud, or None for any (>= k).
        relaxed: add a relaxation branch to every VN linear map of the encoder (the
            invariant MLP head is plain Keras).  ``False`` builds the plain VN-PointNet.
        width: multiplies every VN channel count (before ``// 3``) and the head widths;
            1.0 is the published model.
        k: neighbours of the first (graph) layer.
        normalize_frame: Gram-Schmidt frame in ``VNStdFeature`` (False as published).
        lambda_lie, lambda_proj, penalty_scale: penalty weights (see ``RelaxedModel``;
            published 0.01 / 0.01).
        relaxation_initializer: branch kernel initializer (zeros as published).
        relaxation_use_bias: give each branch a bias ``b``.
        lie_method: how the Lie derivative is computed (``"auto"``: closed form).
        dropout: head dropout rate (0.4).
        pretrained: ``True`` (or a zoo name) builds the architecture of the zoo entry
            (``vn_pointnet_so3_modelnet40`` by default: its width and ``k``, not this call's) with
            its weights, through ``vn_pointnet.from_preset`` (``keras_relaxeq.models.presets``):
            ``num_classes`` other than the entry's gives a new head; ``relaxed=True`` (the
            default) re-enables the relaxation branches for fine-tuning.
        relaxation_rank: ``None`` (dense branch kernels, as published) or ``r``: low-rank branches
            ``W = U V`` (see :class:`~keras_relaxeq.layers.RelaxedEquivariantLayer`).
        dtype: Keras dtype policy of every layer (e.g. ``"mixed_bfloat16"``), or None for the global
            policy.  The logits layer ``fc3`` is always float32; branch variables, ``theta``, the
            penalties and the batch-norm statistics stay float32 under a mixed policy.

    Input ``points [batch, num_points, 3]``; output logits ``[batch, num_classes]``.
    """
    if pretrained:
        return pretrained_model("vn_pointnet", pretrained, locals())
    if dtype is not None:
        kwargs = dict(locals(), dtype=None)
        with dtype_policy_scope(dtype):
            return vn_pointnet(**kwargs)
    c64, c128, c1024 = vn_channels(64, width), vn_channels(128, width), vn_channels(1024, width)
    c512, c256 = vn_channels(512, width), vn_channels(256, width)
    relax = dict(
        relaxed=relaxed,
        relaxation_initializer=relaxation_initializer,
        relaxation_use_bias=relaxation_use_bias,
        lie_method=lie_method,
        relaxation_rank=relaxation_rank,
    )
    block = dict(negative_slope=0.0, **relax)

    points = keras.Input((num_points, 3), name="points")
    x = point_cloud_check(num_points)(points)  # wrong rank / last axis, NaN: a clear error
    x = keras.layers.Reshape((-1, 1, 3), name="as_vectors")(x)
    x = VNGraphFeature(k=k, cross=True, name="graph")(x)  # [B, N, k, 3, 3]
    x = VNLeakyReLU(c64, name="conv_pos", **block)(x)
    x = VNMeanPool(axis=-3, name="pool_neighbours")(x)  # [B, N, c64, 3]
    x = VNLeakyReLU(c64, name="conv1", **block)(x)

    # Feature STN (STNkd, d = 64//3): its output is concatenated with the features.
    t = VNLeakyReLU(c64, name="fstn_conv1", **block)(x)
    t = VNLeakyReLU(c128, name="fstn_conv2", **block)(t)
    t = VNLeakyReLU(c1024, name="fstn_conv3", **block)(t)
    t = VNMeanPool(axis=-3, name="fstn_pool")(t)  # [B, c1024, 3]
    t = VNLeakyReLU(c512, name="fstn_fc1", **block)(t)
    t = VNLeakyReLU(c256, name="fstn_fc2", **block)(t)
    t = VNLinear(c64, name="fstn_fc3", **relax)(t)  # [B, c64, 3]
    x = VNConcatGlobal(name="concat_fstn")([x, t])  # [B, N, 2 c64, 3]

    x = VNLeakyReLU(c128, name="conv2", **block)(x)
    x = VNLinear(c1024, name="conv3", **relax)(x)
    x = VNBatchNorm(name="bn3", **relax)(x)
    # the invariant features of [x, mean over points of x] ([B, N, 2 c1024, 3]); concat_mean
    # computes the first block on x and on the mean (half the rows of the largest matmul)
    x, _ = VNStdFeature(
        normalize_frame=normalize_frame, negative_slope=0.0, concat_mean=True, name="std_feature", **relax
    )(x)
    x = keras.layers.Reshape((-1, 2 * c1024 * 3), name="invariants")(x)  # [B, N, 6 c1024]
    x = keras.layers.GlobalMaxPooling1D(name="max_points")(x)

    x = keras.layers.Dense(dense_units(512, width), name="fc1")(x)
    x = TorchBatchNormalization(momentum=0.9, epsilon=1e-5, name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.Dense(dense_units(256, width), name="fc2")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    x = TorchBatchNormalization(momentum=0.9, epsilon=1e-5, name="bn2")(x)
    x = keras.layers.ReLU(name="relu2")(x)
    logits = keras.layers.Dense(num_classes, name="fc3", dtype="float32")(x)
    return RelaxedModel(
        points, logits, lambda_lie=lambda_lie, lambda_proj=lambda_proj, penalty_scale=penalty_scale, name=name
    )
