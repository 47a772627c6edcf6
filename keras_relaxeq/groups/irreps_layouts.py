"""Feature layouts of irreps blocks: copy-major ``"mul_ir"`` (e3nn) and component-major ``"ir_mul"``."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_relaxeq.groups.irreps import Irreps

#: feature layouts of a ``(mul, ir)`` block: copy-major ``"mul_ir"`` (e3nn, index ``u * d + i``) or
#: component-major ``"ir_mul"`` (cuequivariance's ``ir_mul``, index ``i * mul + u``)
LAYOUTS = ("mul_ir", "ir_mul")


def check_layout(layout, owner="layout") -> str:
    """``layout`` if it is one of :data:`LAYOUTS`, else a ValueError naming ``owner``."""
    if layout not in LAYOUTS:
        raise ValueError(
            f"{owner}: layout must be one of {LAYOUTS}, got {layout!r} ('mul_ir': e3nn's copy-major "
            "blocks; 'ir_mul': component-major blocks, faster for tensor products)."
        )
    return layout


def layout_permutation(irreps, layout) -> np.ndarray:
    """Index array ``perm`` with ``x_layout = x_mul_ir[..., perm]`` for features of ``irreps``.

    The blocks keep their order; only the inside of a block with ``l > 0`` and ``mul > 1``
    changes (``"ir_mul"``: entry ``i * mul + u`` is ``mul_ir`` entry ``u * d + i``).
    ``x_mul_ir = x_layout[..., argsort(perm)]``.
    """
    irreps = Irreps(irreps)
    check_layout(layout)
    perm = []
    for sl, (mul, ir) in zip(irreps.slices(), irreps):
        idx = np.arange(sl.start, sl.stop).reshape(mul, ir.dim)
        perm.append((idx.T if layout == "ir_mul" else idx).reshape(-1))
    return np.concatenate(perm).astype(np.int64) if perm else np.zeros(0, np.int64)


def convert_layout(x, irreps, source="mul_ir", target="ir_mul") -> tf.Tensor:
    """Features ``[..., irreps.dim]`` from layout ``source`` to ``target`` (a transpose per block)."""
    irreps = Irreps(irreps)
    check_layout(source, "convert_layout source")
    check_layout(target, "convert_layout target")
    x = tf.convert_to_tensor(x)
    if source == target:
        return x
    lead = tf.shape(x)[:-1]
    parts = []
    for sl, (mul, ir) in zip(irreps.slices(), irreps):
        block = x[..., sl]
        if mul > 1 and ir.dim > 1:
            shape = [mul, ir.dim] if source == "mul_ir" else [ir.dim, mul]
            block = tf.reshape(block, tf.concat([lead, shape], 0))
            block = tf.reshape(tf.linalg.matrix_transpose(block), tf.concat([lead, [mul * ir.dim]], 0))
        parts.append(block)
    if not parts:
        return x
    return parts[0] if len(parts) == 1 else tf.concat(parts, axis=-1)


__all__ = ["LAYOUTS", "check_layout", "convert_layout", "layout_permutation"]
