"""``RelaxedModel``: a Keras model whose training loss includes the relaxation penalties.

Use it exactly like ``keras.Model`` (functional ``RelaxedModel(inputs, outputs)``
or subclassed); ``model.fit`` then adds

    lambda_lie * sqrt(LD) + lambda_proj * sqrt(N)        (times theta with penalty_scale="theta")

to the compiled loss, with ``LD`` and ``N`` summed over every relaxed layer of
the model (one square root over the whole network, docs/method.md section 4), and
logs ``lie_penalty`` = sqrt(LD) and ``projection_penalty`` = sqrt(N).  A training call
``model(x, training=True)`` attaches the sums it collected to its outputs, and ``compute_loss`` adds the
penalty of the call that produced its ``y_pred`` (also in custom training loops).

Under a ``tf.distribute`` strategy the per-replica sums are added across
replicas *before* the square root, so N replicas optimise the same objective as
one worker with the same global batch.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_relaxeq.layers.penalties import PenaltyCollector, collect_relaxation_penalties, safe_sqrt
from keras_relaxeq.layers.relaxation import relaxed_layers

PENALTY_SCALES = ("none", "theta")
#: attribute of the outputs of a training call that holds the call's :class:`PenaltyCollector`
_PENALTIES_ATTRIBUTE = "_keras_relaxeq_penalties"


def _attach_penalties(outputs, collector: PenaltyCollector) -> None:
    """Attach ``collector`` to every tensor of ``outputs`` (as Keras attaches ``_keras_mask``)."""
    for tensor in tf.nest.flatten(outputs):
        try:
            setattr(tensor, _PENALTIES_ATTRIBUTE, collector)
        except AttributeError:  # not a tensor (None, a Python number): nothing to attach to
            pass


def _attached_penalties(y_pred) -> PenaltyCollector | None:
    """The collector of the training call that produced ``y_pred``, or None."""
    for tensor in tf.nest.flatten(y_pred):
        collector = getattr(tensor, _PENALTIES_ATTRIBUTE, None)
        if collector is not None:
            return collector
    return None


class RelaxedTraining:
    """The training behaviour of :class:`RelaxedModel` as a mixin, for subclassed models:
    ``class MyModel(RelaxedTraining, keras.Model)``.

    Subclass this rather than ``RelaxedModel``: building a functional ``RelaxedModel(inputs, outputs)`` makes Keras
    put ``Functional`` into ``RelaxedModel``'s bases for good, after which a subclass of ``RelaxedModel`` that
    is not functional can no longer be constructed.  Arguments as :class:`RelaxedModel`.
    """

    def __init__(self, *args, lambda_lie=0.01, lambda_proj=0.01, penalty_scale="none", check_inputs=True, **kwargs):
        super().__init__(*args, **kwargs)
        if penalty_scale not in PENALTY_SCALES:
            raise ValueError(f"penalty_scale must be one of {PENALTY_SCALES}, got {penalty_scale!r}.")
        self.lambda_lie = float(lambda_lie)
        self.lambda_proj = float(lambda_proj)
        self.penalty_scale = penalty_scale
        self.check_inputs = bool(check_inputs)
        self.lie_penalty_tracker = keras.metrics.Mean(name="lie_penalty")
        self.projection_penalty_tracker = keras.metrics.Mean(name="projection_penalty")

    def __call__(self, *args, **kwargs):
        """The forward pass; with ``training=True`` it also collects the penalties of every relaxed layer and
        attaches them to the outputs, where :meth:`compute_loss` finds them in ``y_pred``.

        The outputs carry their own call's penalties, so every replica of a ``tf.distribute`` step (each traced
        in its own thread) and every custom loop (``y_pred = model(x, training=True)``, then
        ``model.compute_loss(..., y_pred=y_pred)``) adds exactly the penalties of the pass that made ``y_pred``.
        """
        if kwargs.get("training") is not True:
            return super().__call__(*args, **kwargs)
        with collect_relaxation_penalties() as collector:
            outputs = super().__call__(*args, **kwargs)
        _attach_penalties(outputs, collector)
        return outputs

    def _theta(self):
        for layer in relaxed_layers(self):
            if layer.theta is not None:
                return layer.theta
        return None

    def relaxation_penalty(self, collector):
        """``(penalty, sqrt(LD), sqrt(N))`` for the sums in ``collector``, global over replicas."""
        lie, proj = collector.totals(dtype=tf.float32)
        ctx = tf.distribute.get_replica_context()
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            lie, proj = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [lie, proj])
        lie_term = safe_sqrt(lie)
        proj_term = safe_sqrt(proj)
        penalty = self.lambda_lie * lie_term + self.lambda_proj * proj_term
        if self.penalty_scale == "theta":
            theta = self._theta()
            if theta is not None:
                penalty = tf.cast(theta, penalty.dtype) * penalty
        return penalty, lie_term, proj_term

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if training and self.check_inputs and x is not None and not self.jit_compile:
            for t in tf.nest.flatten(x):
                if isinstance(t, tf.Tensor) and t.dtype.is_floating:
                    tf.debugging.assert_all_finite(
                        t,
                        "keras_relaxeq: a training batch contains NaN or Inf input values; "
                        "clean or filter the data set (e.g. drop shapes with non-finite coordinates).",
                    )
        loss = super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)
        collector = _attached_penalties(y_pred) if training else None
        if collector is None or len(collector) == 0:
            return loss
        penalty, lie_term, proj_term = self.relaxation_penalty(collector)
        self.lie_penalty_tracker.update_state(lie_term)
        self.projection_penalty_tracker.update_state(proj_term)
        # Keras divides each replica's loss by the number of replicas and sums the gradients.
        num_replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if num_replicas > 1:
            penalty = penalty / num_replicas
        return loss + tf.cast(penalty, loss.dtype)

    def predict(self, x, *args, **kwargs):
        """``keras.Model.predict``, refusing on the host what its (XLA) predict function cannot:
        no samples at all, and NaN / Inf in array inputs (``InputCheck``'s run-time check does not
        survive XLA)."""
        import numpy as np

        arrays = [] if isinstance(x, tf.data.Dataset) else tf.nest.flatten(x)
        for a in arrays:
            if isinstance(a, (np.ndarray, tf.Tensor)) or hasattr(a, "__array__"):
                a = np.asarray(a)
                if a.ndim and a.shape[0] == 0:
                    raise ValueError(f"predict got 0 samples (input shape {a.shape}); pass at least one.")
                if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
                    raise ValueError(
                        "predict got NaN or Inf input values; remove or repair the non-finite entries first."
                    )
        return super().predict(x, *args, **kwargs)

    def test_step(self, data):
        logs = super().test_step(data)
        # Penalties are measured in training only; do not report empty trackers.
        for name in ("lie_penalty", "projection_penalty"):
            logs.pop(name, None)
        return logs

    def get_config(self):
        config = super().get_config()
        config.update(
            lambda_lie=self.lambda_lie,
            lambda_proj=self.lambda_proj,
            penalty_scale=self.penalty_scale,
            check_inputs=self.check_inputs,
        )
        return config


@keras.saving.register_keras_serializable(package="keras_relaxeq")
class RelaxedModel(RelaxedTraining, keras.Model):
    """A ``keras.Model`` that trains its relaxed layers with the Lie and projection penalties.

    Args:
        lambda_lie: weight of ``sqrt(LD)`` (published: 0.01 VN-PointNet/SEGNN,
            0.0005 VN-DGCNN).
        lambda_proj: weight of ``sqrt(N)``.
        penalty_scale: ``"none"`` or ``"theta"`` (multiply the penalty by the
            current theta, as the VN-DGCNN code does).
        check_inputs: assert that training inputs are finite (clear error on NaN).

    Use it functionally (``RelaxedModel(inputs, outputs)``); subclassed models mix in :class:`RelaxedTraining`.
    """
