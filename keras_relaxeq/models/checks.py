"""``InputCheck``: the layer right after a model's ``keras.Input`` that refuses unusable inputs.

Keras' functional input spec already refuses a tensor whose *static* shape differs from the
model's ``keras.Input``; this layer also catches what that check cannot see, and says what to do:

* a wrong rank or a wrong fixed axis (e.g. ``[batch, points, 6]`` xyz + normals, or a rank-4
  batch ``[1, 2, N, 3]``) whose static shape is unknown (``tf.function`` traced with
  ``TensorSpec(shape=None)``, ``tf.data`` pipelines of unknown shape): a ``ValueError`` at trace
  time when the rank or axis is known then, else ``tf.ensure_shape`` at run time (an
  ``InvalidArgumentError`` naming the expected shape; ``EnsureShape`` also runs under XLA);
* NaN or Inf values (``finite=True``): ``tf.debugging.check_numerics`` raises
  ``InvalidArgumentError`` in eager calls (``model(x)``) and in graphs that are not
  XLA-compiled. XLA drops the check (it has no run-time errors), so ``RelaxedModel.predict`` also
  refuses non-finite array inputs on the host before running its (by default XLA-compiled)
  predict function.

The layer has no weights and returns its input unchanged.
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="keras_relaxeq")
class InputCheck(keras.layers.Layer):
    """Identity that checks the rank, the fixed axes and (optionally) the finiteness of an input.

    Args:
        shape: expected shape without the batch axis, ``None`` for a free axis (``(None, 3)``:
            any number of points, xyz).
        finite: refuse NaN / Inf values.
        input_name: the model input's name, used in the messages (``"points"``).
        layout: how the messages describe the expected shape (``"[batch, points, 3] (xyz)"``).
        hint: what to do instead, appended to the messages.
    """

    def __init__(self, shape, finite=True, input_name="points", layout=None, hint="", **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.expected = tuple(None if d is None else int(d) for d in shape)
        self.finite = bool(finite)
        self.input_name = str(input_name)
        self.layout = layout or "[batch, " + ", ".join("?" if d is None else str(d) for d in self.expected) + "]"
        self.hint = str(hint)
        self.supports_masking = True

    @property
    def full_shape(self):
        return (None,) + self.expected

    def _shape_error(self, got=None) -> str:
        hint = f" {self.hint}" if self.hint else ""
        if got is None:  # the shape follows in the Assert's data
            return f"Input {self.input_name} must have shape {self.layout}.{hint} Got shape:"
        return f"Input {self.input_name} must have shape {self.layout}, got shape {got}.{hint}"

    def call(self, x):
        x = tf.convert_to_tensor(x)
        static = x.shape
        if static.rank is not None:
            if static.rank != len(self.full_shape):
                raise ValueError(self._shape_error(tuple(static)))
            for want, got in zip(self.full_shape, static):
                if want is not None and got is not None and want != got:
                    raise ValueError(self._shape_error(tuple(static)))
            open_axes = [
                i for i, (want, got) in enumerate(zip(self.full_shape, static)) if want is not None and got is None
            ]
            if open_axes:  # this message where Assert runs (not under XLA), EnsureShape's everywhere
                shape = tf.shape(x)
                ok = tf.reduce_all(tf.stack([tf.equal(shape[i], self.full_shape[i]) for i in open_axes]))
                with tf.control_dependencies([tf.debugging.Assert(ok, [self._shape_error(), shape])]):
                    x = tf.identity(x)
        # run-time check of what the static shape leaves open (kept by XLA too)
        x = tf.ensure_shape(x, self.full_shape)
        if self.finite and x.dtype.is_floating:
            x = tf.debugging.check_numerics(
                x,
                f"Input {self.input_name} contains NaN or Inf values; remove or repair the non-finite "
                "entries before calling the model",
            )
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            shape=list(self.expected),
            finite=self.finite,
            input_name=self.input_name,
            layout=self.layout,
            hint=self.hint,
        )
        return config


#: messages of the point-cloud classifiers' input check
POINTS_LAYOUT = "[batch, points, 3] (float xyz coordinates)"
POINTS_HINT = (
    "Pass xyz only (drop normals or colours: points[..., :3]) with one cloud per batch row "
    "(a single cloud needs a batch axis: points[None])."
)


def point_cloud_check(num_points=None, name="check_points"):
    """The :class:`InputCheck` of the point-cloud classifiers (``[batch, num_points, 3]``, finite)."""
    return InputCheck(
        (num_points, 3), finite=True, input_name="points", layout=POINTS_LAYOUT, hint=POINTS_HINT, name=name
    )


__all__ = ["InputCheck", "point_cloud_check"]
