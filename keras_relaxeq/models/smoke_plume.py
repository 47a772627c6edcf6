"""Forecasters of the 2D smoke plume (rotation) task: the next velocity frame from the previous ten.

:func:`smoke_plume_forecaster` builds one of the compared arms as a
:class:`~keras_relaxeq.training.model.RelaxedModel` mapping ``frames`` ``[batch, T, H, W, 2]`` (``T = 10``
velocity frames, components ``(v_x, v_y)``, rows = y) to the next frame ``[batch, H, W, 2]``.  The frames become
``T`` C4 vector fields ``[batch, H, W, 2 T]`` (frame-major), and five layers follow (published: 92 regular
hidden fields, kernel 3; ``width`` scales the hidden fields):

* ``"cnn"``: plain ``Conv2D`` layers with ``4 x hidden`` channels (the regular fields' channel count), ReLU;
* ``"equivariant"``: :class:`LiftingConv2D` (vector -> regular) -> 3 x :class:`GroupConv2D` -> :class:`ProjectionConv2D`
  (regular -> one vector field), ReLU on the regular fields: exactly C4-equivariant;
* ``"relaxed"``: the same with the method's branch ``theta * Conv2D`` on every layer (projected: ``"equivariant"``);
* ``"rsteer"``: :class:`RSteerConv2D` layers (Wang, Walters, Yu 2022) with smoothness weight ``alpha``;
* ``"rsteer_relaxed"``: RSteer layers with the method's branch on top (projected: ``"rsteer"``).

C4 acts on the input by rotating every frame's grid and vector components; the output rotates likewise.
"""

from __future__ import annotations

import keras

from keras_relaxeq.layers.group_conv import GroupConv2D, LiftingConv2D, ProjectionConv2D
from keras_relaxeq.layers.rsteer import RSteerConv2D
from keras_relaxeq.training.model import RelaxedModel

ARMS = ("cnn", "equivariant", "relaxed", "rsteer", "rsteer_relaxed")
PUBLISHED_HIDDEN = 92

__all__ = ["ARMS", "smoke_plume_forecaster"]


def smoke_plume_forecaster(arm="relaxed", input_frames=10, grid=64, hidden=PUBLISHED_HIDDEN, width=1.0,
                           kernel_size=3, num_layers=5, alpha=1.0, relaxation_initializer="zeros", theta=1.0,
                           lambda_lie=0.01, lambda_proj=0.01, name=None):
    """One arm of the smoke plume rotation comparison (module notes) as a ``RelaxedModel``.

    Args:
        arm: one of :data:`ARMS`.
        input_frames: ``T`` input frames (10).
        grid: grid size ``H = W`` (64).
        hidden, width: ``max(1, round(hidden * width))`` regular hidden fields per layer (published 92).
        kernel_size: odd kernel size (3).
        num_layers: layers in all, >= 2 (5: lifting, three group convs, projection).
        alpha: RSteer smoothness weight (RSteer arms).
        relaxation_initializer, theta: the branches' kernel initializer and initial theta (relaxed arms).
        lambda_lie, lambda_proj: penalty weights of the relaxed arms (the Lie slot holds the C4 defect).
    """
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {ARMS}, got {arm!r}.")
    if int(num_layers) < 2:
        raise ValueError(f"num_layers must be >= 2 (a lifting and a projection layer), got {num_layers}.")
    fields = max(1, int(round(hidden * width)))
    frames = keras.Input((int(input_frames), int(grid), int(grid), 2), name="frames")
    x = keras.layers.Permute((2, 3, 1, 4), name="frames_last")(frames)
    x = keras.layers.Reshape((int(grid), int(grid), 2 * int(input_frames)), name="vector_fields")(x)
    k = int(kernel_size)
    if arm == "cnn":
        for i in range(int(num_layers) - 1):
            x = keras.layers.Conv2D(4 * fields, k, padding="same", activation="relu", name=f"conv_{i}")(x)
        outputs = keras.layers.Conv2D(2, k, padding="same", name="velocity")(x)
    else:
        relaxed = arm in ("relaxed", "rsteer_relaxed")
        common = dict(kernel_size=k, relaxed=relaxed, relaxation_initializer=relaxation_initializer, theta=theta)
        if arm.startswith("rsteer"):
            def layer(out_type, in_type, i, activation):
                return RSteerConv2D(out_type, in_type=in_type, alpha=alpha, activation=activation, name=f"rsteer_{i}",
                                    **common)
            x = layer([["regular", fields]], "vector", 0, "relu")(x)
            for i in range(1, int(num_layers) - 1):
                x = layer([["regular", fields]], "regular", i, "relu")(x)
            outputs = layer("vector", "regular", int(num_layers) - 1, None)(x)
        else:
            x = LiftingConv2D(fields, in_type="vector", activation="relu", name="lifting", **common)(x)
            for i in range(1, int(num_layers) - 1):
                x = GroupConv2D(fields, activation="relu", name=f"group_conv_{i}", **common)(x)
            outputs = ProjectionConv2D("vector", name="velocity", **common)(x)
    return RelaxedModel(frames, outputs, lambda_lie=lambda_lie, lambda_proj=lambda_proj,
                        name=name or f"smoke_plume_{arm}")
