"""Model-level relaxation helpers: find the relaxed layers of a model, read and set their ``theta``, copy
weights between feature layouts (``plain_layers``, which builds layers without branches, lives with the layer
class in :mod:`keras_relaxeq.layers.base` and is importable from here too)."""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_relaxeq.layers.base import RelaxedEquivariantLayer, plain_layers  # noqa: F401 (plain_layers re-exported)


def relaxed_layers(model_or_layer):
    """All relaxed layers with their own branch inside ``model_or_layer`` (itself included)."""
    layers = []
    seen = set()
    for layer in _walk_layers(model_or_layer):
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if isinstance(layer, RelaxedEquivariantLayer) and layer.relaxed and layer.has_relaxation_branch:
            layers.append(layer)
    return layers


def _walk_layers(root):
    """Every layer inside ``root`` (itself included), recursively."""
    if hasattr(root, "_flatten_layers"):
        return list(root._flatten_layers(include_self=True, recursive=True))
    return [root]


def _coordinate_index(source_rep, target_rep):
    """``idx`` with ``x_target = x_source[..., idx]``, or None when both use the same coordinates.

    Only steerable features have several coordinate systems (``IrrepsRep`` layouts ``mul_ir`` /
    ``ir_mul``); any other pair of representations must be equal.
    """
    import numpy as np

    from keras_relaxeq.groups.irreps_layouts import layout_permutation
    from keras_relaxeq.groups.irreps_rep import IrrepsRep

    if isinstance(source_rep, IrrepsRep) and isinstance(target_rep, IrrepsRep):
        if source_rep.irreps != target_rep.irreps:
            raise ValueError(
                f"transfer_weights: irreps {source_rep.irreps} and {target_rep.irreps} differ; "
                "the two models must have the same architecture."
            )
        if source_rep.layout == target_rep.layout:
            return None
        return np.argsort(layout_permutation(source_rep.irreps, source_rep.layout))[
            layout_permutation(target_rep.irreps, target_rep.layout)
        ]
    if source_rep != target_rep:
        raise ValueError(
            f"transfer_weights: representations {source_rep} and {target_rep} differ; the two "
            "models must have the same architecture."
        )
    return None


def transfer_weights(source, target) -> int:
    """Copy every weight of ``source`` into ``target``, a model (or layer) of the same architecture
    whose steerable layers may use another feature layout (``layout="mul_ir"`` / ``"ir_mul"``).

    The equivariant weights do not depend on the layout, so ``set_weights`` carries them; a
    relaxation branch is a matrix in its layout's coordinates, so its kernel rows, kernel columns
    and bias are permuted into the target's (``set_weights`` alone would give the target a
    different, wrong, branch).  Theta is copied.  Returns the number of branches converted.

    >>> fast = kr.models.segnn(layout="ir_mul")           # doctest: +SKIP
    >>> kr.layers.transfer_weights(old_mul_ir_model, fast)  # doctest: +SKIP
    """
    source_layers, target_layers = relaxed_layers(source), relaxed_layers(target)
    if len(source_layers) != len(target_layers):
        raise ValueError(
            f"transfer_weights: {len(source_layers)} relaxed layers in the source, "
            f"{len(target_layers)} in the target; build both models with the same architecture "
            "(and both relaxed, or both not)."
        )
    target.set_weights(source.get_weights())
    converted = 0
    for ls, lt in zip(source_layers, target_layers):
        idx_in = _coordinate_index(ls.input_rep, lt.input_rep)
        idx_out = _coordinate_index(ls.output_rep, lt.output_rep)
        if idx_in is None and idx_out is None:
            continue
        low_rank = lt.relaxation_low_rank
        first = lt.relaxation_hidden_kernel if lt.relaxation_branch == "mlp" else lt.relaxation_kernel
        if low_rank:
            first = lt.relaxation_kernel_u
        last = lt.relaxation_kernel_v if low_rank else lt.relaxation_kernel
        if idx_in is not None:  # rows: input coordinates
            first.assign(tf.gather(first, idx_in, axis=0))
        if idx_out is not None:  # columns and bias: output coordinates
            last.assign(tf.gather(last, idx_out, axis=1))
            if lt.relaxation_bias is not None:
                lt.relaxation_bias.assign(tf.gather(lt.relaxation_bias, idx_out))
        converted += 1
    return converted


def set_theta(model_or_layer, value) -> int:
    """Assign ``theta = value`` in every relaxed layer; returns how many were set."""
    layers = [l for l in relaxed_layers(model_or_layer) if l.theta is not None]
    for layer in layers:
        layer.theta.assign(value)
    return len(layers)


def get_theta(model_or_layer):
    """The current ``theta`` (of the first relaxed layer), or None when there is none."""
    for layer in relaxed_layers(model_or_layer):
        if layer.theta is not None:
            return float(keras.ops.convert_to_numpy(layer.theta))
    return None
