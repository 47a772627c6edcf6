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

The forecaster's first layer is an :class:`~keras_relaxeq.models.checks.InputCheck` (``check_frames``): frames of
another shape (another number of frames, grid size or velocity components, a missing batch axis) and NaN / Inf
values are refused with a message saying what is expected, also where the static shape is unknown
(``tf.function`` with open shapes, ``tf.data``).
"""

from __future__ import annotations

import keras
import numpy as np

from keras_relaxeq.layers.group_conv import GroupConv2D, LiftingConv2D, ProjectionConv2D
from keras_relaxeq.layers.rsteer import RSteerConv2D
from keras_relaxeq.models.checks import InputCheck
from keras_relaxeq.training.model import RelaxedModel

ARMS = ("cnn", "equivariant", "relaxed", "rsteer", "rsteer_relaxed")
PUBLISHED_HIDDEN = 92

#: what the input check's messages say to do instead
FRAMES_HINT = (
    "Pass the last {t} velocity frames channels last, components (v_x, v_y), rows = y, one window per batch row "
    "(a single window needs a batch axis: frames[None])."
)

__all__ = [
    "ARMS",
    "FRAMES_HINT",
    "frames_check",
    "ShiftFrames",
    "StackFrames",
    "forecaster_of",
    "rollout_model",
    "rollout_rmse",
    "smoke_plume_forecaster",
    "step_model",
    "summed_frame_mse",
]


def smoke_plume_forecaster(
    arm="relaxed",
    input_frames=10,
    grid=64,
    hidden=PUBLISHED_HIDDEN,
    width=1.0,
    kernel_size=3,
    num_layers=5,
    alpha=1.0,
    relaxation_initializer="zeros",
    theta=1.0,
    lambda_lie=0.01,
    lambda_proj=0.01,
    name=None,
):
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
    frames, x = frames_as_channels(input_frames, grid, "vector_fields")
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
                return RSteerConv2D(
                    out_type, in_type=in_type, alpha=alpha, activation=activation, name=f"rsteer_{i}", **common
                )

            x = layer([["regular", fields]], "vector", 0, "relu")(x)
            for i in range(1, int(num_layers) - 1):
                x = layer([["regular", fields]], "regular", i, "relu")(x)
            outputs = layer("vector", "regular", int(num_layers) - 1, None)(x)
        else:
            x = LiftingConv2D(fields, in_type="vector", activation="relu", name="lifting", **common)(x)
            for i in range(1, int(num_layers) - 1):
                x = GroupConv2D(fields, activation="relu", name=f"group_conv_{i}", **common)(x)
            outputs = ProjectionConv2D("vector", name="velocity", **common)(x)
    return RelaxedModel(
        frames, outputs, lambda_lie=lambda_lie, lambda_proj=lambda_proj, name=name or f"smoke_plume_{arm}"
    )


def frames_check(input_frames=10, grid=64, name="check_frames") -> InputCheck:
    """The forecasters' :class:`InputCheck`: ``[batch, input_frames, grid, grid, 2]``, finite values."""
    t, n = int(input_frames), int(grid)
    return InputCheck(
        (t, n, n, 2),
        finite=True,
        input_name="frames",
        layout=f"[batch, {t}, {n}, {n}, 2] ({t} velocity frames of a {n}x{n} grid, components (v_x, v_y))",
        hint=FRAMES_HINT.format(t=t),
        name=name,
    )


def frames_as_channels(input_frames, grid, name):
    """The forecasters' input: ``frames`` ``[batch, T, H, W, 2]`` (checked: shape and finite values, a clear error
    otherwise) and the same frames as ``2 T`` channels ``[batch, H, W, 2 T]`` (frame-major, layer ``name``)."""
    frames = keras.Input((int(input_frames), int(grid), int(grid), 2), name="frames")
    x = frames_check(input_frames, grid)(frames)
    x = keras.layers.Permute((2, 3, 1, 4), name="frames_last")(x)
    return frames, keras.layers.Reshape((int(grid), int(grid), 2 * int(input_frames)), name=name)(x)


def step_model(model) -> keras.Model:
    """The one-step forecaster ``model`` as a plain functional ``keras.Model`` sharing its layers.

    :func:`rollout_model` calls it several times per batch; as a plain model it leaves the collection of the
    relaxation penalties to the rollout (a ``RelaxedModel``) that calls it.
    """
    if not hasattr(model, "_inputs_struct"):
        raise ValueError(f"step_model needs a functional model, got {type(model).__name__}.")
    return keras.Model(model.input, model.output, name=f"{model.name}_step")


@keras.saving.register_keras_serializable(package="keras_relaxeq")
class ShiftFrames(keras.layers.Layer):
    """``[frames [B, T, ...], new [B, ...]]`` -> ``[B, T, ...]``: drop the oldest frame, append ``new``."""

    def call(self, inputs):
        frames, new = inputs
        return keras.ops.concatenate([frames[:, 1:], keras.ops.expand_dims(new, 1)], axis=1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])


@keras.saving.register_keras_serializable(package="keras_relaxeq")
class StackFrames(keras.layers.Layer):
    """``[y_1, ..., y_k]`` each ``[B, ...]`` -> ``[B, k, ...]``."""

    def call(self, inputs):
        return keras.ops.stack(list(inputs), axis=1)

    def compute_output_shape(self, input_shape):
        first = tuple(input_shape[0])
        return (first[0], len(input_shape)) + first[1:]


def rollout_model(forecaster, steps=6, name=None) -> RelaxedModel:
    """Autoregressive training model: ``steps`` applications of the one-step ``forecaster``.

    Input ``frames [B, T, H, W, C]``; each step predicts ``[B, H, W, C]`` from the last ``T`` frames, then
    drops the oldest frame and appends the prediction.  Output ``[B, steps, H, W, C]``, so a loss on it
    compares the whole predicted sequence with the targets (the reference trains on 6 steps).  A functional
    :class:`RelaxedModel` with the forecaster's penalty weights; the forecaster is nested once (as a plain
    model, :func:`step_model`) and called ``steps`` times, so the penalties of every step are collected.
    ``project(rollout)`` projects the nested forecaster too; ``rollout.get_layer(<forecaster>_step)`` (or
    :func:`forecaster_of`) is the one-step model to export.
    """
    if int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps}.")
    step = step_model(forecaster)
    frames = keras.Input(tuple(forecaster.input_shape[1:]), name="frames")
    x, outputs = frames, []
    for i in range(int(steps)):
        y = step(x)
        outputs.append(y)
        if i + 1 < int(steps):
            x = ShiftFrames(name=f"shift_{i}")([x, y])
    sequence = StackFrames(name="rollout")(outputs)
    return RelaxedModel(
        frames,
        sequence,
        lambda_lie=getattr(forecaster, "lambda_lie", 0.01),
        lambda_proj=getattr(forecaster, "lambda_proj", 0.01),
        penalty_scale=getattr(forecaster, "penalty_scale", "none"),
        name=name or f"{forecaster.name}_rollout{int(steps)}",
    )


def forecaster_of(model) -> keras.Model:
    """The one-step forecaster nested in a :func:`rollout_model` (or ``model`` itself if it is one)."""
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(nested) == 1:
        return nested[0]
    if not nested and len(model.output.shape) == 4:
        return model
    raise ValueError(f"{model.name} is neither a one-step forecaster nor a rollout_model.")


@keras.saving.register_keras_serializable(package="keras_relaxeq")
def summed_frame_mse(y_true, y_pred):
    """Per window ``[B, k, H, W, C]``: the MSE of each predicted frame, summed over the ``k`` frames.

    The reference's training loss for autoregressive rollouts (``loss += MSE(frame_k)`` over the steps).
    """
    return keras.ops.sum(keras.ops.mean(keras.ops.square(y_true - y_pred), axis=(2, 3, 4)), axis=1)


def rollout_rmse(model, dataset, steps=None, *, progress=False):
    """RMSE of autoregressive rollouts of the one-step ``model`` on ``dataset`` of ``(frames, targets)``.

    ``model``: a one-step forecaster, a :func:`rollout_model` (its forecaster is used), or any callable
    ``frames [B, T, H, W, 2] -> next frame [B, H, W, 2]`` built from TensorFlow ops (e.g. the serving function
    of an exported SavedModel, which is how the zoo measures a published artifact).
    As the reference: per batch the MSE over every predicted frame, pixel and component; the RMSE is the
    square root of the mean of those per-batch MSEs.  Returns ``{"rmse": ..., "rmse_per_step": [...],
    "num_windows": ...}``; ``rmse_per_step[k]`` is the same RMSE of the ``k``-th predicted frame alone
    (the error growth along the rollout).  ``steps`` defaults to the targets' length.
    """
    import tensorflow as tf

    if isinstance(model, keras.Model):
        forecaster = forecaster_of(model)

        def one_step(x):
            return forecaster(x, training=False)

    elif callable(model):
        one_step = model
    else:
        raise TypeError(f"rollout_rmse needs a Keras forecaster or a callable frames -> next frame, got {model!r}.")

    @tf.function(reduce_retracing=True)
    def predict(frames, num_steps):
        x = frames
        outputs = tf.TensorArray(frames.dtype, size=num_steps)
        for k in tf.range(num_steps):
            y = one_step(x)
            outputs = outputs.write(k, y)
            x = tf.concat([x[:, 1:], y[:, None]], axis=1)
        return tf.transpose(outputs.stack(), [1, 0, 2, 3, 4])

    per_batch, per_step, windows = [], [], 0
    batches = dataset
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(dataset, desc="rollouts", unit="batch", leave=False)
    for frames, targets in batches:
        k = int(targets.shape[1]) if steps is None else int(steps)
        pred = predict(frames, tf.constant(k))
        sq = tf.square(tf.cast(pred, tf.float64) - tf.cast(targets[:, :k], tf.float64))
        per_batch.append(float(tf.reduce_mean(sq)))
        per_step.append(tf.reduce_mean(sq, axis=[0, 2, 3, 4]).numpy())
        windows += int(frames.shape[0])
    if not per_batch:
        raise ValueError("rollout_rmse: the data set is empty.")
    return {
        "rmse": float(np.sqrt(np.mean(per_batch))),
        "rmse_per_step": [float(v) for v in np.sqrt(np.mean(np.stack(per_step), axis=0))],
        "num_windows": windows,
    }
