"""Relaxable equivariant layers: the base class and the layer families."""

from keras_relaxeq.layers.base import RelaxedEquivariantLayer, plain_layers
from keras_relaxeq.layers.group_conv import (
    CyclicConv2D,
    GroupConv2D,
    GroupPooling,
    LiftingConv2D,
    ProjectionConv2D,
    RegularBatchNorm,
)
from keras_relaxeq.layers.penalties import (
    PenaltyCollector,
    autodiff_branch_penalties,
    collect_relaxation_penalties,
    gram_statistics,
    linear_branch_penalties,
    safe_sqrt,
)
from keras_relaxeq.layers.relaxation import get_theta, relaxed_layers, set_theta, transfer_weights
from keras_relaxeq.layers.rsteer import RSteerConv2D
from keras_relaxeq.layers.scale_conv import (
    RSteerScaleConv2D,
    RSteerScaleLiftingConv2D,
    ScaleConv2D,
    ScaleLiftingConv2D,
    ScalePooling,
)
from keras_relaxeq.layers.steerable import (
    Gate,
    O3Linear,
    O3TensorProduct,
    O3TensorProductGate,
    SteerableNorm,
    gate_irreps,
)
from keras_relaxeq.layers.vector_neurons import (
    TorchBatchNormalization,
    VNBatchNorm,
    VNGraphFeature,
    VNLeakyReLU,
    VNLinear,
    VNMaxPool,
    VNMeanPool,
    VNStdFeature,
    knn_graph_feature,
    knn_indices,
)
