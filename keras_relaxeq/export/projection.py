"""``project(model)``: drop every relaxation branch and return the exactly equivariant model.

The model is rebuilt from its config with every ``RelaxedEquivariantLayer``
constructed as ``relaxed=False`` (also layers created inside nested models and
custom containers, via :func:`keras_relaxeq.layers.base.plain_layers`), then
every weight except the branches' and ``theta`` is copied layer by layer.  The
result has exactly the parameters of the architecture built with
``relaxed=False`` and the outputs of the relaxed model at ``theta = 0``.

A functional ``RelaxedModel`` is returned as a plain functional ``keras.Model``
(its penalties have nothing left to act on), so a saved ``.keras`` file names
no model class of this package; its layers (vector neurons, steerable layers)
are still this package's, so ``import keras_relaxeq`` before
``keras.saving.load_model``.
"""

from __future__ import annotations

import keras

from keras_relaxeq.layers.base import RelaxedEquivariantLayer, plain_layers
from keras_relaxeq.layers.relaxation import relaxed_layers

#: registered names of the package's training models, returned as plain functional ``keras.Model`` by ``project``
RELAXED_MODEL_NAMES = ("keras_relaxeq>RelaxedModel",)


def has_relaxation_branches(model) -> bool:
    """True when ``model`` still contains a relaxation branch."""
    return bool(relaxed_layers(model))


def _unrelax_config(obj):
    if isinstance(obj, dict):
        out = {k: _unrelax_config(v) for k, v in obj.items()}
        if "relaxed" in out and isinstance(out.get("relaxed"), bool):
            out["relaxed"] = False
        return out
    if isinstance(obj, list):
        return [_unrelax_config(v) for v in obj]
    return obj


def _own_variables(layer):
    own = list(getattr(layer, "_trainable_variables", [])) + list(getattr(layer, "_non_trainable_variables", []))
    if isinstance(layer, RelaxedEquivariantLayer):
        skip = {id(v) for v in layer.relaxation_variables}
        if layer.theta is not None:
            skip.add(id(layer.theta))
        own = [v for v in own if id(v) not in skip]
    return own


def _layers(model):
    return list(model._flatten_layers(include_self=True, recursive=True))


def _is_relaxed_model(model) -> bool:
    return keras.saving.get_registered_name(type(model)) in RELAXED_MODEL_NAMES


def _same_kind(src, dst) -> bool:
    """Same class, or a functional ``RelaxedModel`` and its plain ``keras.Model`` (see :func:`project`)."""
    if type(src) is type(dst):
        return True
    return (
        _is_relaxed_model(src)
        and not _is_relaxed_model(dst)
        and isinstance(dst, keras.Model)
        and hasattr(dst, "_inputs_struct")
    )


def copy_equivariant_weights(source, target):
    """Copy every non-branch weight of ``source`` into the plain model ``target``, layer by layer."""
    src_layers, dst_layers = _layers(source), _layers(target)
    if len(src_layers) != len(dst_layers):
        raise ValueError(
            f"Cannot project: the rebuilt model has {len(dst_layers)} layers, the original "
            f"{len(src_layers)}. Does every custom layer implement get_config()?"
        )
    for src, dst in zip(src_layers, dst_layers):
        if not _same_kind(src, dst) or src.name != dst.name:
            raise ValueError(
                f"Cannot project: layer {src.name!r} ({type(src).__name__}) was rebuilt as "
                f"{dst.name!r} ({type(dst).__name__})."
            )
        src_vars = {v.name: v for v in _own_variables(src)}
        dst_vars = _own_variables(dst)
        if sorted(src_vars) != sorted(v.name for v in dst_vars):
            raise ValueError(
                f"Cannot project layer {src.name!r}: weights {sorted(src_vars)} do not match the "
                f"plain layer's {sorted(v.name for v in dst_vars)}."
            )
        for v in dst_vars:
            v.assign(src_vars[v.name])


def _as_plain_functional(model):
    """A functional ``RelaxedModel`` -> the same graph (same layer objects) as a plain ``keras.Model``."""
    if not _is_relaxed_model(model):
        return model
    if not hasattr(model, "_inputs_struct") or not hasattr(model, "_outputs_struct"):
        return model  # a subclassed model with its own call(): keep its class
    plain = keras.Model(model.input, model.output, name=model.name)
    compile_config = model.get_compile_config()
    if compile_config:
        plain.compile_from_config(compile_config)
    return plain


def project(model):
    """Return a new model with every relaxation branch removed (not multiplied by zero).

    Works for functional, sequential and serializable subclassed models, with
    relaxed layers at any depth.  The new model keeps the original's compile
    configuration when it had one, so ``project(model).evaluate(...)`` works.
    A functional ``RelaxedModel`` becomes a plain functional ``keras.Model``.
    """
    if not model.built:
        raise ValueError("project() needs a built model: call it on data (or build it) first.")
    config = keras.saving.serialize_keras_object(model)
    config = _unrelax_config(config)
    with plain_layers():
        plain = keras.saving.deserialize_keras_object(config)
    if not plain.built:
        build_config = model.get_build_config() if hasattr(model, "get_build_config") else None
        if build_config:
            plain.build_from_config(build_config)
        else:
            raise ValueError("project(): the rebuilt model is not built and the original has no build config.")
    copy_equivariant_weights(model, plain)
    if has_relaxation_branches(plain):  # pragma: no cover - defended by plain_layers()
        raise AssertionError("project() left a relaxation branch behind")
    return _as_plain_functional(plain)
