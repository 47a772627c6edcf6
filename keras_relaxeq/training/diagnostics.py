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

from keras_relaxeq.layers.penalties import collect_relaxation_penalties
from keras_relaxeq.layers.relaxation import get_theta, relaxed_layers
from keras_relaxeq.training.recipe import read_csv_history, truncate_epoch_log

#: the columns of a report row, in table order
COLUMNS = (
    "layer",
    "theta",
    "points",
    "equivariant_rms",
    "branch_rms",
    "relative",
    "r_rms",
    "lie_rms",
    "lie_over_r",
    "sqrt_ld",
    "sqrt_n",
)


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
        raise ValueError(
            f"{getattr(model, 'name', model)!r} has no relaxed layers (no relaxation branch to "
            "report on); build it with relaxed=True, or pass the relaxed model rather than a projected "
            "one."
        )
    sums, names = None, None
    seen = 0
    for x in _batches(data, num_batches):
        with collect_relaxation_penalties(record_activations=True) as collector:
            model(x, training=False)
        values = [
            (float(lie), float(proj), *(float(a) for a in act))
            for lie, proj, act in zip(collector.lie, collector.projection, collector.activations)
        ]
        if sums is None:
            names = [_layer_name(layer) for layer in collector.layers]
            sums = values
        else:
            if len(values) != len(sums):
                raise RuntimeError(
                    "relaxation_report: the model called a different number of relaxed branches on "
                    f"batch {seen} ({len(values)}) than on batch 0 ({len(sums)})."
                )
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
        "layer": name,
        "theta": theta,
        "points": points,
        "equivariant_rms": eq,
        "branch_rms": br,
        "relative": br / eq if eq > 0 else float("nan"),
        "r_rms": rms(proj),
        "lie_rms": rms(lie),
        "lie_over_r": math.sqrt(max(lie, 0.0) / proj) if proj > 0 else float("nan"),
        "sqrt_ld": math.sqrt(max(lie, 0.0)),
        "sqrt_n": math.sqrt(max(proj, 0.0)),
    }


def format_relaxation_report(rows: list[dict]) -> str:
    """A Markdown table of :func:`relaxation_report` rows."""
    header = (
        "layer",
        "points",
        "||E(x)|| rms",
        "||theta R(x)|| rms",
        "relative",
        "||R(x)|| rms",
        "||L R(x)|| rms",
        "sqrt(LD / N)",
    )
    keys = ("layer", "points", "equivariant_rms", "branch_rms", "relative", "r_rms", "lie_rms", "lie_over_r")
    theta = rows[0]["theta"] if rows else None
    lines = [
        f"theta = {theta:.4g}" if theta is not None else "theta: none",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
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
    run continues it; the rows of the epochs a resumed run trains again (from the first epoch of
    its ``fit`` on) are dropped when that epoch begins, so every epoch has its rows once.  Put it
    after ``ThetaScheduler`` in the callback list.  Only the chief of a multi-worker run should be
    given a shared ``path``.
    """

    def __init__(self, data, path, every: int = 10, num_batches: int = 2):
        super().__init__()
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}.")
        self.data = data
        self.path = Path(path)
        self.every = every
        self.num_batches = num_batches
        self._first_epoch = True

    def on_train_begin(self, logs=None):
        self._first_epoch = True

    def on_epoch_begin(self, epoch, logs=None):
        if self._first_epoch:  # a resumed fit starts at the restored epoch: its rows and later ones go
            self._first_epoch = False
            truncate_epoch_log(self.path, epoch)

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
    for an epoch logged twice (a file of an older version, from a resumed run) the last rows win."""
    history = read_csv_history(path, where=lambda row: row.get("layer") == layer)
    history.pop("layer", None)
    return history


# ----------------------------------------------------------------------------- gradients on the branches


def _branch_projection(layer, kernel):
    """The orthogonal projection of a branch kernel (or its gradient) onto the equivariant maps of ``layer``'s
    group: the Casimir projector for SO(3)/O(3) features, the group average for C_N field types (conv
    ``[k, k, C_in, C_out]`` or per-pixel ``[C_in, C_out]`` kernels)."""
    if getattr(layer.input_rep, "is_finite_group", False):
        from keras_relaxeq.groups.cyclic_kernels import project_kernel

        return project_kernel(kernel, layer.input_rep.field_type, layer.output_rep.field_type)
    from keras_relaxeq.groups.representations import equivariant_projection

    return equivariant_projection(kernel, layer.input_rep, layer.output_rep)


#: the columns of a :func:`branch_gradient_report` row
GRADIENT_COLUMNS = (
    "layer",
    "theta",
    "batches",
    "kernel_equivariant_share",
    "task_eq_norm",
    "task_ne_norm",
    "task_eq_coherence",
    "task_ne_coherence",
    "task_ne_noise_coherence",
    "penalty_eq_norm",
    "penalty_ne_norm",
)


def branch_gradient_report(model, data, loss=None, num_batches: int | None = 10) -> list[dict]:
    """Where do the task loss and the penalties push each linear branch kernel ``W``?

    Per batch ``b`` of ``data`` (``(x, y)`` tuples, e.g. the training pipeline with its random
    rotations) the gradients of the task loss ``loss(y, model(x))`` and of the model's penalty
    (``RelaxedModel.relaxation_penalty``, if it has one) with respect to every relaxed layer's
    ``relaxation_kernel`` are split by :func:`~keras_relaxeq.groups.equivariant_projection` (for C_N field
    types and conv branches the group average, :func:`~keras_relaxeq.groups.cyclic_kernels.project_kernel`) into
    the part along equivariant linear maps (``eq``: maps an equivariant layer may have; the
    projection drops them with the rest of the branch) and the non-equivariant rest (``ne``, what
    the relaxation adds).  At theta = 0 the task loss does not depend on the branches (its
    gradients are 0, the coherences NaN).
    One row per relaxed branch:

    * ``kernel_equivariant_share``: ``||P W|| / ||W||`` of the current kernel;
    * ``task_eq_norm`` / ``task_ne_norm``: the mean over batches of ``||P g_b||`` / ``||(1 - P) g_b||``;
    * ``task_eq_coherence`` / ``task_ne_coherence``: ``||mean_b part(g_b)|| / mean_b ||part(g_b)||``:
      1 when every batch pushes the same way, about ``1 / sqrt(batches)`` for independent noise.
      ``task_ne_noise_coherence`` ``sqrt(sum_b ||g_b||^2) / sum_b ||g_b||`` (non-equivariant part) is
      the exact value for zero-mean mutually orthogonal batch gradients (independent noise in many
      dimensions) with the measured norms: the noise level to compare ``task_ne_coherence`` with;
      For an equivariant model (equivariant branches; nearly so for branches small against the
      equivariant outputs) and rotation-invariant data, the expected task gradient has no
      non-equivariant part, so ``task_ne_coherence`` is at the noise level;
    * ``penalty_eq_norm`` / ``penalty_ne_norm``: the same means for the penalty's gradient (the Lie
      term only pushes on the ``ne`` part; the projection term on both).

    Args:
        model: a model with linear relaxed branches, e.g. a relaxed ``RelaxedModel``.
        data: a ``tf.data.Dataset`` of ``(inputs, targets)`` (further elements are ignored).
        loss: the task loss, a Keras loss (object or name) or ``callable(y_true, y_pred)``;
            default: the model's compiled loss.
        num_batches: batches to use (None: all of ``data``).
    """
    import numpy as np

    layers = relaxed_layers(model)
    if not layers:
        raise ValueError(f"{getattr(model, 'name', model)!r} has no relaxed layers; pass the relaxed model.")
    mlp = [_layer_name(l) for l in layers if getattr(l, "relaxation_branch", "linear") != "linear"]
    if mlp:
        raise ValueError(f"branch_gradient_report splits linear branches only; {mlp} have MLP branches.")
    if loss is None:
        loss = getattr(model, "loss", None)
        if loss is None:
            raise ValueError("branch_gradient_report: the model is not compiled with a loss; pass loss= (e.g. 'mse').")
    loss_fn = keras.losses.get(loss) if isinstance(loss, (str, dict)) else loss
    if not isinstance(data, tf.data.Dataset):
        raise TypeError("branch_gradient_report needs a tf.data.Dataset of (inputs, targets) batches.")
    has_penalty = hasattr(model, "relaxation_penalty")
    kernels = shapes = sums = norms = None
    seen = 0
    for batch in data:
        if num_batches is not None and seen >= num_batches:
            break
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError("branch_gradient_report: the dataset must yield (inputs, targets) tuples.")
        x, y = batch[0], batch[1]
        with tf.GradientTape(persistent=True) as tape:
            with collect_relaxation_penalties() as collector:
                y_pred = model(x, training=False)
            task = tf.reduce_mean(loss_fn(y, y_pred))
            penalty = model.relaxation_penalty(collector)[0] if has_penalty else None
        if kernels is None:  # the branches in call order, as in relaxation_report
            layers = list({id(l): l for l in collector.layers}.values())
            low_rank = [l.name for l in layers if getattr(l, "relaxation_low_rank", False)]
            if low_rank:
                raise ValueError(
                    f"branch_gradient_report splits the gradient of dense branch kernels; the "
                    f"branches of {low_rank} are low-rank (W = U V, relaxation_rank=...), whose "
                    "gradient is not a gradient of W. Build the model with relaxation_rank=None."
                )
            kernels = [l.relaxation_kernel for l in layers]
            shapes = [tuple(k.shape) for k in kernels]
            sums = {key: [np.zeros(s) for s in shapes] for key in ("task_eq", "task_ne")}
            norms = {key: [0.0] * len(kernels) for key in ("task_eq", "task_ne", "penalty_eq", "penalty_ne")}
            task_ne_sq = [0.0] * len(kernels)
        grads = {"task": tape.gradient(task, kernels)}
        if penalty is not None:
            grads["penalty"] = tape.gradient(penalty, kernels)
        del tape
        for i, layer in enumerate(layers):
            for kind, gs in grads.items():
                g = np.zeros(shapes[i]) if gs[i] is None else np.asarray(gs[i], np.float64)
                eq = _branch_projection(layer, g)
                ne = g - eq
                norms[f"{kind}_eq"][i] += float(np.linalg.norm(eq))
                norms[f"{kind}_ne"][i] += float(np.linalg.norm(ne))
                if kind == "task":
                    sums["task_eq"][i] += eq
                    sums["task_ne"][i] += ne
                    task_ne_sq[i] += float(np.sum(ne**2))
        seen += 1
    if not seen:
        raise ValueError("branch_gradient_report: the data yielded no batch.")
    theta = get_theta(model)
    rows = []
    for i, layer in enumerate(layers):
        w = np.asarray(kernels[i], np.float64)
        w_norm = float(np.linalg.norm(w))
        share = float(np.linalg.norm(_branch_projection(layer, w))) / w_norm if w_norm > 0 else float("nan")

        def coherence(key):
            mean_norm = norms[key][i] / seen
            return float(np.linalg.norm(sums[key][i] / seen)) / mean_norm if mean_norm > 0 else float("nan")

        rows.append(
            {
                "layer": _layer_name(layer),
                "theta": theta,
                "batches": seen,
                "kernel_equivariant_share": share,
                "task_eq_norm": norms["task_eq"][i] / seen,
                "task_ne_norm": norms["task_ne"][i] / seen,
                "task_eq_coherence": coherence("task_eq"),
                "task_ne_coherence": coherence("task_ne"),
                "task_ne_noise_coherence": math.sqrt(task_ne_sq[i]) / norms["task_ne"][i]
                if norms["task_ne"][i] > 0
                else float("nan"),
                "penalty_eq_norm": norms["penalty_eq"][i] / seen if has_penalty else float("nan"),
                "penalty_ne_norm": norms["penalty_ne"][i] / seen if has_penalty else float("nan"),
            }
        )
    return rows


def format_branch_gradient_report(rows: list[dict]) -> str:
    """A Markdown table of :func:`branch_gradient_report` rows."""
    header = (
        "layer",
        "||P W|| / ||W||",
        "task ||g_eq||",
        "task ||g_ne||",
        "coherence eq",
        "coherence ne",
        "noise level ne",
        "penalty ||g_eq||",
        "penalty ||g_ne||",
    )
    keys = GRADIENT_COLUMNS[3:]
    first = rows[0] if rows else {}
    theta = first.get("theta")
    batches = first.get("batches", 0)
    lines = [
        (f"theta = {theta:.4g}; " if theta is not None else "")
        + f"{batches} batches (coherence of independent noise: about 1 / sqrt({batches}) = "
        f"{1 / math.sqrt(batches) if batches else float('nan'):.3g})",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        lines.append("| " + " | ".join([str(row["layer"])] + [f"{row[k]:.3g}" for k in keys]) + " |")
    return "\n".join(lines)
