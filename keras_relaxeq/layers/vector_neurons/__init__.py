"""Vector Neurons (Deng et al., 2021) as relaxable Keras layers.

Features are lists of 3-vectors, ``[batch, points, channels, 3]`` (any number
of axes may stand between the batch and the channel axis, e.g. neighbours in
``[batch, points, k, channels, 3]``, or none for pooled features
``[batch, channels, 3]``).  Rotations act on the last axis.

Every VN linear map (``VNLinear`` and the ``map_to_feat`` / ``map_to_dir``
sublayers of the nonlinearity, pooling and invariant-frame layers) carries its
own relaxation branch when ``relaxed=True``.

Modules: :mod:`.linear` (VN linear maps, branch fusion, ``VNLinear``), :mod:`.batch_norm`
(``TorchBatchNormalization``, ``VNBatchNorm``), :mod:`.nonlinearities` (``VNLeakyReLU``),
:mod:`.pooling` (``VNMeanPool``, ``VNMaxPool``), :mod:`.invariants` (``VNStdFeature``),
:mod:`.graph` (kNN graph features) and :mod:`.common` (shape checks, ``[x, mean]`` helpers).
Every name is importable from this package.
"""

from keras_relaxeq.layers.vector_neurons.batch_norm import TorchBatchNormalization, VNBatchNorm
from keras_relaxeq.layers.vector_neurons.common import (
    EPS,
    _check_concat_mean_input,
    _check_vector_shape,
    _torch_linear_init,
    _VectorLayer,
    concat_mean_features,
    concat_mean_shape,
    register,
)
from keras_relaxeq.layers.vector_neurons.graph import VNGraphFeature, knn_graph_feature, knn_indices
from keras_relaxeq.layers.vector_neurons.invariants import VNStdFeature
from keras_relaxeq.layers.vector_neurons.linear import (
    _FUSION,
    VNLinear,
    can_fuse_branches,
    concat_mean_gram_statistics,
    fused_vn_maps,
    set_branch_fusion,
    vn_kernel_as_dense,
    vn_linear,
)
from keras_relaxeq.layers.vector_neurons.nonlinearities import VNLeakyReLU, vn_leaky_relu
from keras_relaxeq.layers.vector_neurons.pooling import VNMaxPool, VNMeanPool, _pool_axis

# The classes are documented, saved (the "module" of a .keras config) and pickled under this package's path.
for _cls in (
    _VectorLayer,
    VNLinear,
    TorchBatchNormalization,
    VNBatchNorm,
    VNLeakyReLU,
    VNMeanPool,
    VNMaxPool,
    VNStdFeature,
    VNGraphFeature,
):
    _cls.__module__ = __name__
del _cls

__all__ = [
    "EPS",
    "TorchBatchNormalization",
    "VNBatchNorm",
    "VNGraphFeature",
    "VNLeakyReLU",
    "VNLinear",
    "VNMaxPool",
    "VNMeanPool",
    "VNStdFeature",
    "can_fuse_branches",
    "concat_mean_features",
    "concat_mean_gram_statistics",
    "concat_mean_shape",
    "fused_vn_maps",
    "knn_graph_feature",
    "knn_indices",
    "set_branch_fusion",
    "vn_kernel_as_dense",
    "vn_leaky_relu",
    "vn_linear",
]
