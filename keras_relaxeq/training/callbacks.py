"""``ProjectedValidation``: validate the *projected* model at each epoch end, and ``plot_history``.

The quantity to select a checkpoint on is the accuracy of the exactly equivariant
model ``project(model)`` (docs/method.md section 6), not of the relaxed model::

    callbacks = [
        ThetaScheduler("triangle", epochs=E),
        ProjectedValidation(val_ds),                       # writes projected_val_* into the logs
        keras.callbacks.ModelCheckpoint(path, monitor="projected_val_accuracy", mode="max",
                                        save_best_only=True),
        keras.callbacks.CSVLogger(csv_path),
        keras.callbacks.TensorBoard(log_dir),
    ]

Keras passes the same ``logs`` dict to every callback in list order, so
``ProjectedValidation`` (like ``ThetaScheduler``) must come *before* the callbacks that
read its keys (``ModelCheckpoint``, ``EarlyStopping``, ``CSVLogger``, ``TensorBoard``).
"""

from __future__ import annotations

import math
import os

import keras
import numpy as np
import tensorflow as tf

from keras_relaxeq.export.projection import copy_equivariant_weights, project

__all__ = ["ProjectedValidation", "WindowedEarlyStopping", "reestimate_batchnorm", "batchnorm_layers", "plot_history"]


def batchnorm_layers(model):
    """Every ``keras.layers.BatchNormalization`` of ``model`` at any depth."""
    return [
        l
        for l in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(l, keras.layers.BatchNormalization)
    ]


def _inputs_only(batch):
    if isinstance(batch, (tuple, list)):
        return batch[0]
    return batch


def reestimate_batchnorm(model, data, num_batches=None, momentum=None):
    """Recompute the moving statistics of every BatchNorm layer of ``model`` on ``data``.

    ``model`` is run in training mode (dropout switched off) over ``num_batches`` batches
    of ``data`` (batches ``x`` or ``(x, y, ...)``; all of them with ``None``); only the
    BatchNorm moving statistics change, no trainable weight is touched.

    * ``momentum=None`` (default): the moving mean / variance become the exact average of
      the per-batch statistics over the batches seen (PyTorch's ``momentum=None``
      cumulative average).  This forgets the statistics collected with the relaxation
      branch active.
    * ``momentum=m``: the usual exponential update ``moving = m * moving + (1 - m) * batch``
      starting from the current statistics.

    Returns the number of batches used (0 when the model has no BatchNorm layer).
    """
    bns = batchnorm_layers(model)
    if not bns:
        return 0
    dropouts = [
        l for l in model._flatten_layers(include_self=False, recursive=True) if isinstance(l, keras.layers.Dropout)
    ]
    saved_momentum = [bn.momentum for bn in bns]
    saved_rates = [d.rate for d in dropouts]
    cumulative = momentum is None
    for bn in bns:
        bn.momentum = 0.0 if cumulative else float(momentum)
    for d in dropouts:
        d.rate = 0.0

    @tf.function(reduce_retracing=True)
    def forward(x):
        model(x, training=True)
        return tf.constant(0)

    sums = [np.zeros(bn.moving_mean.shape, np.float64) for bn in bns]
    sq_sums = [np.zeros(bn.moving_variance.shape, np.float64) for bn in bns]
    used = 0
    try:
        for batch in data:
            if num_batches is not None and used >= num_batches:
                break
            forward(_inputs_only(batch))
            used += 1
            if cumulative:  # momentum 0: moving stats == this batch's stats
                for i, bn in enumerate(bns):
                    sums[i] += np.asarray(bn.moving_mean.numpy(), np.float64)
                    sq_sums[i] += np.asarray(bn.moving_variance.numpy(), np.float64)
        if used == 0:
            raise ValueError("reestimate_batchnorm: the data gave no batch.")
        if cumulative:
            for i, bn in enumerate(bns):
                bn.moving_mean.assign((sums[i] / used).astype(bn.moving_mean.dtype))
                bn.moving_variance.assign((sq_sums[i] / used).astype(bn.moving_variance.dtype))
    finally:
        for bn, m in zip(bns, saved_momentum):
            bn.momentum = m
        for d, r in zip(dropouts, saved_rates):
            d.rate = r
    return used


class ProjectedValidation(keras.callbacks.Callback):
    """At epoch end, evaluate ``project(model)`` on ``val_data`` and log the results.

    Writes ``{prefix}val_loss`` and ``{prefix}val_accuracy`` (every metric the projected
    model reports, with the prefix ``{prefix}val_``) into the epoch logs, so
    ``ModelCheckpoint(monitor="projected_val_accuracy", mode="max")``, ``EarlyStopping``,
    ``CSVLogger`` and ``TensorBoard`` see them.  **Put this callback before those in the
    callback list** (and after ``ThetaScheduler``).

    The projected model is built once with :func:`keras_relaxeq.project` and, on later
    epochs, refreshed by copying the equivariant weights into it, so evaluation is not
    retraced every epoch.  It is compiled with the training model's loss and
    ``metrics`` (default ``["accuracy"]``) unless ``loss`` / ``metrics`` are given.

    Args:
        val_data: validation data for ``evaluate`` (a ``tf.data.Dataset`` of ``(x, y)``).
            Select checkpoints on a validation split, never on the test set.
        every: evaluate every ``every`` epochs (and always on the last epoch).  On the
            other epochs nothing is written (CSVLogger then records ``NA``).
        prefix: key prefix (default ``"projected_"``).
        bn_reestimate: ``None`` (default, off) or the number of batches of ``bn_data`` over
            which the BatchNorm statistics of the projected model are re-estimated after
            projection (docs/method.md section 6), see :func:`reestimate_batchnorm`.
        bn_data: training batches for the re-estimation (no augmentation needed, but use
            the training distribution, e.g. the train split with random rotations).
        bn_momentum: ``None`` (exact average of the batch statistics) or an EMA momentum.
        loss, metrics: override the compile configuration of the projected model.
        loss_weights: weights of a multi-output ``loss`` (as ``compile``), so ``{prefix}val_loss`` is the
            training objective (e.g. energy and force terms of a force field).
        best_path: optional ``.keras`` path; the projected model is saved there whenever
            ``monitor`` improves (``best_epoch`` is then the 0-based epoch).
        monitor, mode, initial_best: the quantity for ``best_path`` (default
            ``{prefix}val_accuracy``), ``"max"`` (default) or ``"min"`` (e.g. a validation
            loss or RMSE), and the best value so far (for resumed runs).
        verbose: print the projected metrics.
    """

    def __init__(
        self,
        val_data,
        every=1,
        prefix="projected_",
        bn_reestimate=None,
        bn_data=None,
        bn_momentum=None,
        loss=None,
        metrics=None,
        loss_weights=None,
        best_path=None,
        monitor=None,
        mode="max",
        initial_best=None,
        verbose=0,
    ):
        super().__init__()
        if int(every) < 1:
            raise ValueError(f"every must be >= 1, got {every}.")
        if bn_reestimate is not None:
            if int(bn_reestimate) < 1:
                raise ValueError(f"bn_reestimate must be None or a number of batches >= 1, got {bn_reestimate}.")
            if bn_data is None:
                raise ValueError("bn_reestimate needs bn_data (training batches).")
        self.val_data = val_data
        self.every = int(every)
        self.prefix = str(prefix)
        self.bn_reestimate = None if bn_reestimate is None else int(bn_reestimate)
        self.bn_data = bn_data
        self.bn_momentum = bn_momentum
        self.loss = loss
        self.metrics_ = metrics
        self.loss_weights = loss_weights
        self.best_path = None if best_path is None else os.fspath(best_path)
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}.")
        self.monitor = monitor or f"{self.prefix}val_accuracy"
        self.mode = mode
        self.best = (-math.inf if mode == "max" else math.inf) if initial_best is None else float(initial_best)
        self.best_epoch = None
        self.verbose = int(verbose)
        self.projected = None
        self.last_results = None

    # -- the projected model ---------------------------------------------------------
    def _compile(self, projected):
        loss = self.loss if self.loss is not None else getattr(self.model, "loss", None)
        if loss is None:
            raise ValueError("ProjectedValidation: compile the model (or pass loss=...) first.")
        metrics = self.metrics_ if self.metrics_ is not None else ["accuracy"]
        projected.compile(loss=loss, loss_weights=self.loss_weights, metrics=metrics, jit_compile=False)

    def projected_model(self):
        """The current projection of ``self.model`` (BN re-estimated when enabled)."""
        if self.projected is None:
            self.projected = project(self.model)
            self._compile(self.projected)
        else:
            copy_equivariant_weights(self.model, self.projected)
        if self.bn_reestimate:
            reestimate_batchnorm(self.projected, self.bn_data, self.bn_reestimate, self.bn_momentum)
        return self.projected

    def evaluate(self):
        """``{prefix}val_<metric>`` of the current projection."""
        projected = self.projected_model()
        results = projected.evaluate(self.val_data, verbose=0, return_dict=True)
        self.last_results = {f"{self.prefix}val_{k}": float(v) for k, v in results.items()}
        return self.last_results

    def on_train_begin(self, logs=None):
        self.projected = None  # the model may have been rebuilt / restored

    def on_epoch_end(self, epoch, logs=None):
        total = (self.params or {}).get("epochs")
        last = total is not None and epoch + 1 >= total
        if (epoch + 1) % self.every != 0 and not last:
            return
        results = self.evaluate()
        if logs is not None:
            logs.update(results)
        if self.verbose:
            print(" - ".join(f"{k}: {v:.4f}" for k, v in results.items()))
        value = results.get(self.monitor)
        if value is None or not math.isfinite(value):
            return
        if (value > self.best) if self.mode == "max" else (value < self.best):
            self.best, self.best_epoch = value, epoch
            if self.best_path:
                self.projected.save(self.best_path)


class WindowedEarlyStopping(keras.callbacks.Callback):
    """Stop when the mean of the last ``window`` values of ``monitor`` no longer improves on the ``window`` before.

    The rule of Wang, Walters and Yu's smoke plume code: once more than ``min_epochs`` epochs have run, stop
    when ``mean(v[-w:]) >= mean(v[-2w:-w])`` (``mode="min"``; ``<=`` for ``"max"``).  Epochs without a value
    (validation every N epochs) are skipped.  ``initial_history``: the values of the epochs run before a
    resume (``log.csv``), so a resumed run stops where an unbroken one would.  ``stopped_epoch`` is the
    0-based epoch after which training stopped (None: it did not).
    """

    def __init__(self, monitor, window=5, min_epochs=100, mode="min", initial_history=()):
        super().__init__()
        if int(window) < 1 or int(min_epochs) < 0:
            raise ValueError(f"window must be >= 1 and min_epochs >= 0, got {window} and {min_epochs}.")
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}.")
        self.monitor, self.window, self.min_epochs, self.mode = monitor, int(window), int(min_epochs), mode
        self.history = [float(v) for v in initial_history]
        self.stopped_epoch = None

    def should_stop(self, epochs_run: int) -> bool:
        values = [v for v in self.history if math.isfinite(v)]
        w = self.window
        if epochs_run <= self.min_epochs or len(values) < 2 * w:
            return False
        recent, before = float(np.mean(values[-w:])), float(np.mean(values[-2 * w : -w]))
        return recent >= before if self.mode == "min" else recent <= before

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        self.history.append(float("nan") if value is None else float(value))
        if self.should_stop(epoch + 1):
            self.stopped_epoch = epoch
            self.model.stop_training = True


# ----------------------------------------------------------------------------- plotting


def _series(history, key):
    values = history.get(key)
    if values is None:
        return None
    out = []
    for v in values:
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            out.append(float("nan"))
    return np.asarray(out, dtype=float) if out else None


def plot_history(history_dict, path, title=None, metric="accuracy", ylabel=None):
    """Write a PNG of ``metric`` (train, val, projected val), theta and the penalties vs epoch.

    ``metric``: the logged name (``"accuracy"``; ``"loss"``, ``"rmse"`` ... are drawn on a log scale when
    positive); its keys are ``metric``, ``val_<metric>`` and ``projected_val_<metric>``.

    ``history_dict`` maps a metric name to per-epoch values (``History.history``, or the
    columns of a ``CSVLogger`` file; an ``"epoch"`` entry gives the x axis, 0-based).
    Missing keys are skipped; ``NaN`` / ``"NA"`` values are gaps.  Returns ``path``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    history = dict(history_dict or {})
    lengths = [len(v) for k, v in history.items() if k != "epoch" and hasattr(v, "__len__")]
    n = max(lengths) if lengths else 0
    epochs = _series(history, "epoch")
    x = (epochs + 1) if epochs is not None and len(epochs) == n else np.arange(1, n + 1)

    fig, axes = plt.subplots(3, 1, figsize=(7, 9), sharex=True)
    train_label = "train (relaxed, with penalty)" if metric == "loss" else "train"
    panels = [
        (
            axes[0],
            ylabel or metric,
            [(metric, train_label), (f"val_{metric}", "val (relaxed)"), (f"projected_val_{metric}", "val (projected)")],
        ),
        (axes[1], "theta", [("theta", "theta")]),
        (axes[2], "penalty", [("lie_penalty", "sqrt(Lie)"), ("projection_penalty", "sqrt(proj)")]),
    ]
    for ax, label_y, keys in panels:
        drawn = False
        for key, label in keys:
            y = _series(history, key)
            if y is None or len(y) != len(x):
                continue
            ok = np.isfinite(y)
            ax.plot(x[ok], y[ok], marker="." if len(x) < 50 else None, label=label)
            drawn = drawn or bool(ok.any())
        if (
            ax is axes[0]
            and metric != "accuracy"
            and drawn
            and all(np.all(np.asarray(line.get_ydata()) > 0) for line in ax.lines)
        ):
            ax.set_yscale("log")
        ax.set_ylabel(label_y)
        ax.grid(True, alpha=0.3)
        if drawn:
            ax.legend(loc="best", fontsize="small")
    axes[-1].set_xlabel("epoch")
    if title:
        axes[0].set_title(title)
    fig.tight_layout()
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
    return path
