"""Theta schedules (docs/method.md section 5) and the ``ThetaScheduler`` callback.

Every schedule is a function of the (possibly fractional) epoch ``t`` in
``[0, epochs - 1]`` alone, like ``LearningRateScheduler``, so a resumed run
gets the same theta.  ``triangle``, ``decay`` and ``cosine`` end at exactly 0
on the last epoch, so that the final relaxed model equals its projection.
"""

from __future__ import annotations

import inspect
import math
import warnings

import keras

from keras_relaxeq.layers.relaxation import relaxed_layers

SCHEDULES = ("triangle", "decay", "constant", "cosine")


def _last(epochs: int) -> float:
    if epochs < 1:
        raise ValueError(f"A theta schedule needs epochs >= 1, got {epochs}.")
    return float(epochs - 1)


def triangle(t: float, epochs: int) -> float:
    """0 -> 1 linearly over the first half, back to exactly 0 on the last epoch."""
    last = _last(epochs)
    if last == 0:
        return 0.0
    half = last / 2.0
    return max(0.0, 1.0 - abs(t - half) / half)


def decay(t: float, epochs: int) -> float:
    """1 for the first half, then linear to exactly 0 on the last epoch (the paper's text)."""
    last = _last(epochs)
    if last == 0:
        return 0.0
    half = last / 2.0
    if t <= half:
        return 1.0
    return max(0.0, (last - t) / (last - half))


def cosine(t: float, epochs: int) -> float:
    """Half cosine from 1 at epoch 0 to exactly 0 on the last epoch."""
    last = _last(epochs)
    if last == 0:
        return 0.0
    return 0.5 * (1.0 + math.cos(math.pi * min(max(t / last, 0.0), 1.0)))


def constant(t: float, epochs: int, value: float = 0.1) -> float:
    """A constant theta (ablation; the published runs without a schedule use 0.1)."""
    return float(value)


def get_schedule(schedule, epochs: int, value: float = 0.1):
    """Return ``f(t) -> theta`` for a schedule name or a callable.

    A callable may take ``(epoch)`` or ``(epoch, epochs)``.
    """
    if callable(schedule):
        try:
            n_args = len(inspect.signature(schedule).parameters)
        except (TypeError, ValueError):
            n_args = 1
        if n_args >= 2:
            return lambda t: float(schedule(t, epochs))
        return lambda t: float(schedule(t))
    if schedule == "constant":
        return lambda t: constant(t, epochs, value)
    table = {"triangle": triangle, "decay": decay, "cosine": cosine}
    if schedule not in table:
        raise ValueError(
            f"Unknown theta schedule {schedule!r}; use one of {SCHEDULES} or a callable f(epoch) / f(epoch, epochs)."
        )
    _last(epochs)
    fn = table[schedule]
    return lambda t: fn(t, epochs)


class ThetaScheduler(keras.callbacks.Callback):
    """Sets ``theta`` of every relaxed layer of the model from the epoch (or step).

    Args:
        schedule: ``"triangle"`` (default), ``"decay"``, ``"constant"``,
            ``"cosine"``, or a callable ``f(epoch)`` / ``f(epoch, epochs)``
            returning theta (``epoch`` may be fractional with ``per_step``).
        epochs: the length of the schedule; default: the ``epochs`` given to
            ``fit``.  Pass it explicitly when training in several ``fit`` calls.
        per_step: update theta at every batch (``epoch + batch / steps``).
        value: theta of the ``"constant"`` schedule.
        verbose: print theta at each epoch start.

    Place it before ``TensorBoard`` / ``CSVLogger`` in the callback list so
    that the ``theta`` it writes into the epoch logs is recorded.

    Warns at the start of ``fit`` when theta would be 0 over the whole
    schedule (e.g. ``"triangle"`` over 2 epochs without ``per_step``): the
    relaxation would then never act.
    """

    #: the most schedule points (epochs, or steps with ``per_step``) checked for an all-zero schedule
    MAX_CHECKED = 100_000

    def __init__(self, schedule="triangle", epochs=None, per_step=False, value=0.1, verbose=0):
        super().__init__()
        if not callable(schedule) and schedule not in SCHEDULES:
            raise ValueError(f"Unknown theta schedule {schedule!r}; use one of {SCHEDULES} or a callable.")
        self.schedule = schedule
        self.epochs = epochs
        self.per_step = bool(per_step)
        self.value = float(value)
        self.verbose = int(verbose)
        self._fn = None
        self._epoch = 0
        self._theta = None
        self._layers = None

    def theta_at(self, t: float) -> float:
        """Theta at (possibly fractional) epoch ``t``."""
        if self._fn is None:
            epochs = self.epochs or (self.params or {}).get("epochs")
            if not epochs:
                raise ValueError("ThetaScheduler needs the number of epochs: pass epochs=... .")
            self._fn = get_schedule(self.schedule, int(epochs), self.value)
        return float(self._fn(t))

    def _set(self, value: float):
        self._theta = value
        for layer in self._layers:
            layer.theta.assign(value)

    def on_train_begin(self, logs=None):
        self._fn = None
        self._layers = [l for l in relaxed_layers(self.model) if l.theta is not None]
        if not self._layers:
            warnings.warn(
                "ThetaScheduler: the model has no relaxed layers (relaxed=True); theta is not used.", stacklevel=2
            )
            return
        steps = (self.params or {}).get("steps")
        if self.per_step and not steps:
            warnings.warn(
                "ThetaScheduler(per_step=True): the number of steps per epoch is unknown; "
                "theta is updated per epoch instead.",
                stacklevel=2,
            )
        if not any(self.theta_at(t) != 0.0 for t in self._schedule_points(steps if self.per_step else None)):
            warnings.warn(self._always_zero_message(), stacklevel=2)

    def _schedule_points(self, steps):
        """Every epoch (or step, as fractional epochs) of the whole schedule, at most ``MAX_CHECKED`` points."""
        epochs = int(self.epochs or (self.params or {}).get("epochs"))
        per_epoch = max(1, min(int(steps or 1), self.MAX_CHECKED // epochs))
        return [e + b / per_epoch for e in range(epochs) for b in range(per_epoch)]

    def _always_zero_message(self) -> str:
        epochs = int(self.epochs or (self.params or {}).get("epochs"))
        name = self.schedule if isinstance(self.schedule, str) else getattr(self.schedule, "__name__", "callable")
        if self.schedule == "constant":
            advice = "pass value > 0"
        elif self.schedule in ("triangle", "decay", "cosine"):
            triangle_ = self.schedule == "triangle"
            ends = "the first and the last epoch" if triangle_ else "the last epoch"
            advice = f"'{name}' is 0 on {ends}: train for at least {3 if triangle_ else 2} epochs" + (
                ", or pass per_step=True" if not self.per_step and epochs >= 2 else ""
            )
        else:
            advice = "check the schedule"
        return (
            f"ThetaScheduler({name!r}): theta is 0 for the whole {epochs}-epoch run, so the relaxation branches "
            f"never act (lie_penalty and projection_penalty only regularise an unused branch); {advice}."
        )

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._set(self.theta_at(epoch))
        if self.verbose:
            print(f"\nEpoch {epoch + 1}: theta = {self._theta:.4f}")

    def on_train_batch_begin(self, batch, logs=None):
        steps = (self.params or {}).get("steps")
        if self.per_step and steps:
            self._set(self.theta_at(self._epoch + batch / steps))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self._theta is not None:
            logs["theta"] = self._theta
