"""Forecasters of the 2D smoke plume *scale* task: the next velocity frame from the previous ten, scale-equivariant.

:func:`smoke_plume_scale_forecaster` builds one arm of the scale comparison (issue 24) as a
:class:`~keras_relaxeq.training.model.RelaxedModel` with the same interface as the rotation forecasters of
:mod:`keras_relaxeq.models.smoke_plume` (``frames [batch, T, H, W, 2]`` -> next frame ``[batch, H, W, 2]``), so
``rollout_model``, ``rollout_rmse`` and ``recipes/smoke_plume.py`` use it unchanged.  The ``T`` frames become ``2 T``
image channels; under a dilation the grid is resampled and the velocity values are kept
(docs/scale_equivariance.md), so every channel is a scalar image.  Five layers (published: 64 hidden channels per
scale, kernel 5, scales ``(1, 1.5, 2, 2.5)``; ``width`` scales the channels), as the reference's
``Scale_SteerCNNs``:

* ``"cnn"``: plain ``Conv2D`` layers with ``hidden`` channels, ReLU;
* ``"equivariant"``: :class:`~keras_relaxeq.layers.scale_conv.ScaleLiftingConv2D` (images -> scale space) ->
  3 x :class:`~keras_relaxeq.layers.scale_conv.ScaleConv2D` -> ``ScaleConv2D`` to 2 channels, read at the finest
  scale (:class:`ScaleSlice`, the reference's last layer with ``scales=[1.0]``);
* ``"relaxed"``: the same with the method's branch ``theta * Conv2D`` on the lifting layer (the reference relaxes
  the first layer; there the branch never reached the output, here a test checks that it does);
* ``"rsteer"`` / ``"rsteer_relaxed"``: the RSteer scale layers (per-tap coefficients, smoothness ``alpha``), and
  RSteer with the relaxed lifting layer.

``project()`` drops the branch (``"relaxed"`` -> ``"equivariant"``, ``"rsteer_relaxed"`` -> ``"rsteer"``).
"""

from __future__ import annotations

import keras

from keras_relaxeq.layers.scale_conv import (
    RSteerScaleConv2D,
    RSteerScaleLiftingConv2D,
    ScaleConv2D,
    ScaleLiftingConv2D,
)
from keras_relaxeq.models.smoke_plume import frames_as_channels
from keras_relaxeq.training.model import RelaxedModel

ARMS = ("cnn", "equivariant", "relaxed", "rsteer", "rsteer_relaxed")
PUBLISHED_HIDDEN = 64
PUBLISHED_SCALES = (1.0, 1.5, 2.0, 2.5)

__all__ = ["ARMS", "PUBLISHED_HIDDEN", "PUBLISHED_SCALES", "ScaleSlice", "smoke_plume_scale_forecaster"]


@keras.saving.register_keras_serializable(package="keras_relaxeq")
class ScaleSlice(keras.layers.Layer):
    """Scale-space fields ``[B, H, W, S, C]`` -> the images ``[B, H, W, C]`` of one scale (``index``, default 0:
    the finest).  A dilation of the input moves the slices along the scale axis, so the finest slice of a
    scale-equivariant stack is the response at the scale of the output grid."""

    def __init__(self, index=0, **kwargs):
        super().__init__(**kwargs)
        self.index = int(index)

    def call(self, inputs):
        return inputs[..., self.index, :]

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-2]) + (input_shape[-1],)

    def get_config(self):
        config = super().get_config()
        config["index"] = self.index
        return config


def smoke_plume_scale_forecaster(
    arm="relaxed",
    input_frames=10,
    grid=64,
    hidden=PUBLISHED_HIDDEN,
    width=1.0,
    kernel_size=5,
    num_layers=5,
    scales=PUBLISHED_SCALES,
    alpha=1e-6,
    scale_penalty="step",
    relaxation_initializer="zeros",
    theta=1.0,
    lambda_lie=0.01,
    lambda_proj=0.01,
    name=None,
):
    """One arm of the smoke plume scale comparison (module notes) as a ``RelaxedModel``.

    Args:
        arm: one of :data:`ARMS`.
        input_frames: ``T`` input frames (10).
        grid: grid size ``H = W`` (64).
        hidden, width: ``max(1, round(hidden * width))`` channels per scale and layer (published 64).
        kernel_size: odd kernel size (5).
        num_layers: layers in all, >= 2 (5: lifting, three scale-space convs, the output conv).
        scales: the basis scales (published ``(1, 1.5, 2, 2.5)``).
        alpha: RSteer smoothness weight (published ``1e-6``).
        scale_penalty: the lifting branch's equivariance penalty, ``"step"``, ``"lie"`` or ``"subspace"``
            (:mod:`keras_relaxeq.layers.scale_conv`).
        relaxation_initializer, theta, lambda_lie, lambda_proj: the relaxed arms' branch initializer, initial theta
            and penalty weights.
    """
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {ARMS}, got {arm!r}.")
    if int(num_layers) < 2:
        raise ValueError(f"num_layers must be >= 2 (a lifting and an output layer), got {num_layers}.")
    channels = max(1, int(round(hidden * width)))
    k, n = int(kernel_size), int(num_layers)
    frames, x = frames_as_channels(input_frames, grid, "images")  # checked input, as the rotation forecasters
    if arm == "cnn":
        for i in range(n - 1):
            x = keras.layers.Conv2D(channels, k, padding="same", activation="relu", name=f"conv_{i}")(x)
        outputs = keras.layers.Conv2D(2, k, padding="same", name="velocity")(x)
    else:
        relaxed = arm.endswith("relaxed")
        rsteer = arm.startswith("rsteer")
        lift_cls = RSteerScaleLiftingConv2D if rsteer else ScaleLiftingConv2D
        conv_cls = RSteerScaleConv2D if rsteer else ScaleConv2D
        extra = {"alpha": alpha} if rsteer else {}
        x = lift_cls(
            channels,
            scales=scales,
            kernel_size=k,
            activation="relu",
            relaxed=relaxed,
            scale_penalty=scale_penalty,
            relaxation_initializer=relaxation_initializer,
            theta=theta,
            name="lifting",
            **extra,
        )(x)
        for i in range(1, n - 1):
            x = conv_cls(channels, scales=scales, kernel_size=k, activation="relu", name=f"scale_conv_{i}", **extra)(x)
        x = conv_cls(2, scales=scales, kernel_size=k, name="velocity_scales", **extra)(x)
        outputs = ScaleSlice(0, name="velocity")(x)
    return RelaxedModel(
        frames, outputs, lambda_lie=lambda_lie, lambda_proj=lambda_proj, name=name or f"smoke_plume_scale_{arm}"
    )
