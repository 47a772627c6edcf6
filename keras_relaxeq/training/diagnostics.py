"""How much is the relaxation doing?  Per-layer sizes of the branch, its Lie derivative and the
equivariant map it is added to.

``relaxation_report(model, data)`` runs the model in inference mode on one or more batches and
returns one row per relaxed branch (in call order), with every sum taken over all the points
(rows of the flattened features) of the batches seen:

* ``equivariant_rms`` ``sqrt(sum ||E(x)||^2 / P)``: the layer's equivariant output;
* ``branch_rms`` ``sqrt(sum ||theta R(x)||^2 / P)``: what the branch adds at the current theta;
* ``relative`` ``branch_rms / equivariant_rms``: 0 means the relaxed model is the projected one;
* ``r_rms`` ``sqrt(N / P)`` and ``lie_rms`` ``sqrt(LD / P)``: the branch ``R`` itself (theta not
  applied) and its Lie derivative, the quantities the two penalties act on;
* ``lie_over_r`` ``sqrt(LD / N)``: how far ``R`` is from an equivariant map relative to its own
  size (0 for an equivariant branch, independent of the branch's scale).

A final row ``"total"`` sums over layers (the ``sqrt(LD)`` and ``sqrt(N)`` that ``RelaxedModel``
puts in the loss are ``lie_rms`` and ``r_rms`` of that row times ``sqrt(P_total)``; they are also
given as ``sqrt_ld`` and ``sqrt_n``).  ``format_relaxation_report`` makes a Markdown table of it.

Example::

    import keras_relaxeq as kr
    rows = kr.training.relaxation_report(model, val_dataset, num_batches=4)
    print(kr.training.format_relaxation_report(rows))

During training, ``RelaxationMonitor(val_dataset, "relaxation.csv", every=10)`` appends the same
rows every 10 epochs (``read_relaxation_log`` reads them back).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import keras
import tensorflow as tf

from keras_relaxeq.layers.base import collect_relaxation_penalties, get_theta, relaxed_layers
from keras_relaxeq.training.recipe import read_csv_history

#: the columns of a report row, in table order
COLUMNS = ("layer", "theta", "points", "equivariant_rms", "branch_rms", "relative", "r_rms", "lie_rms", "lie_over_r",
           "sqrt_ld", "sqrt_n")


def _batches(data, num_batches):
    """Inputs of each batch: a ``tf.data.Dataset`` of ``x`` or ``(x, y[, w])``, or one batch ``x``."""
    if isinstance(data, tf.data.Dataset):
        for i, batch in enumerate(data):
            if num_batches is not None and i >= num_batches:
                return
            yield batch[0] if isinstance(batch, tuple) else batch
        return
    yield data


def _layer_name(layer) -> str:
    return getattr(layer, "path", None) or layer.name


def relaxation_report(model, data, num_batches: int | None = 1) -> list[dict]:
    """Per-branch sizes of the relaxation on ``data`` (see the module docstring).

    Args:
        model: a Keras model or layer with relaxed layers (e.g. a ``RelaxedModel``).
        data: one batch of inputs (tensor, array, dict, list), or a ``tf.data.Dataset`` yielding
            inputs or ``(inputs, targets)`` tuples.
        num_batches: how many batches of a dataset to use (None: all of it).

    Returns:
        A list of dicts with the keys :data:`COLUMNS`, one per relaxed branch in call order and a
        final ``"total"`` row.
    """
    if not relaxed_layers(model):
        raise ValueError(f"{getattr(model, 'name', model)!r} has no relaxed layers (no relaxation branch to "
                         "report on); build it with relaxed=True, or pass the relaxed model rather than a projected "
                         "one.")
    sums, names = None, None
    seen = 0
    for x in _batches(data, num_batches):
        with collect_relaxation_penalties(record_activations=True) as collector:
            model(x, training=False)
        values = [(float(lie), float(proj), *(float(a) for a in act))
                  for lie, proj, act in zip(collector.lie, collector.projection, collector.activations)]
        if sums is None:
            names = [_layer_name(layer) for layer in collector.layers]
            sums = values
        else:
            if len(values) != len(sums):
                raise RuntimeError("relaxation_report: the model called a different number of relaxed branches on "
                                   f"batch {seen} ({len(values)}) than on batch 0 ({len(sums)}).")
            sums = [tuple(a + b for a, b in zip(s, v)) for s, v in zip(sums, values)]
        seen += 1
    if not seen:
        raise ValueError("relaxation_report: the data yielded no batch.")
    theta = get_theta(model)  # a float, or None
    rows = [_row(name, theta, *s) for name, s in zip(names, sums)]
    total = tuple(sum(s[i] for s in sums) for i in range(5))
    rows.append(_row("total", theta, *total))
    return rows


def _row(name, theta, lie, proj, equivariant_sq, branch_sq, points) -> dict:
    points = int(points)
    rms = (lambda v: math.sqrt(max(v, 0.0) / points)) if points else (lambda v: float("nan"))
    eq, br = rms(equivariant_sq), rms(branch_sq)
    return {
        "layer": name, "theta": theta, "points": points,
        "equivariant_rms": eq, "branch_rms": br, "relative": br / eq if eq > 0 else float("nan"),
        "r_rms": rms(proj), "lie_rms": rms(lie),
        "lie_over_r": math.sqrt(max(lie, 0.0) / proj) if proj > 0 else float("nan"),
        "sqrt_ld": math.sqrt(max(lie, 0.0)), "sqrt_n": math.sqrt(max(proj, 0.0)),
    }


def format_relaxation_report(rows: list[dict]) -> str:
    """A Markdown table of :func:`relaxation_report` rows."""
    header = ("layer", "points", "||E(x)|| rms", "||theta R(x)|| rms", "relative", "||R(x)|| rms",
              "||L R(x)|| rms", "sqrt(LD / N)")
    keys = ("layer", "points", "equivariant_rms", "branch_rms", "relative", "r_rms", "lie_rms", "lie_over_r")
    theta = rows[0]["theta"] if rows else None
    lines = [f"theta = {theta:.4g}" if theta is not None else "theta: none", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [f"**{row['layer']}**" if row["layer"] == "total" else str(row["layer"]), str(row["points"])]
        cells += [f"{row[k]:.3g}" for k in keys[2:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- during training

#: the columns of the CSV that :class:`RelaxationMonitor` writes (one row per branch and epoch)
MONITOR_COLUMNS = ("epoch",) + COLUMNS


class RelaxationMonitor(keras.callbacks.Callback):
    """Writes :func:`relaxation_report` on ``data`` to a CSV file every ``every`` epochs (and after
    the last), at the epoch's theta: how large the branches are while they train.

    One row per branch and epoch plus the ``"total"`` row (columns :data:`MONITOR_COLUMNS`,
    ``epoch`` counted from 0 as in Keras' ``CSVLogger``).  The file is appended to, so a resumed
    run continues it; an epoch trained again after a resume is logged again, and
    :func:`read_relaxation_log` keeps its last rows.  Put it after ``ThetaScheduler`` in the
    callback list.  Only the chief of a multi-worker run should be given a shared ``path``.
    """

    def __init__(self, data, path, every: int = 10, num_batches: int = 2):
        super().__init__()
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}.")
        self.data = data
        self.path = Path(path)
        self.every = every
        self.num_batches = num_batches

    def on_epoch_end(self, epoch, logs=None):
        last = self.params.get("epochs") if self.params else None
        if (epoch + 1) % self.every and (last is None or epoch + 1 != last):
            return
        if not relaxed_layers(self.model):
            return
        rows = relaxation_report(self.model, self.data, num_batches=self.num_batches)
        new = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=MONITOR_COLUMNS)
            if new:
                writer.writeheader()
            for row in rows:
                writer.writerow(dict(row, epoch=epoch))


def read_relaxation_log(path, layer: str = "total") -> dict[str, list[float]]:
    """Columns of a :class:`RelaxationMonitor` CSV for one branch (default: the totals), by epoch;
    for an epoch logged twice (a resumed run) the last rows win."""
    history = read_csv_history(path, where=lambda row: row.get("layer") == layer)
    history.pop("layer", None)
    return history
