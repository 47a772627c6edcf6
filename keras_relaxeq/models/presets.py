"""Pretrained models from the zoo as starting points (KerasHub ``from_preset`` / timm ``pretrained``).

    model = kr.models.vn_pointnet.from_preset("vn_pointnet_so3_modelnet40")   # as published
    model = kr.models.vn_pointnet.from_preset("vn_pointnet_so3_modelnet40", num_classes=10,
                                              relaxed=True)                    # to fine-tune
    model = kr.models.vn_pointnet(pretrained=True, num_classes=10)             # the same

:func:`from_preset` rebuilds the entry's architecture with the builder (``architecture.config``
of the catalogue entry, then your overrides), downloads and verifies the entry's ``.keras`` file
and copies its weights layer by layer (by name). With another ``num_classes`` the output layer is
new (freshly initialised); with ``relaxed=True`` every VN layer gets its relaxation branch back,
with the builder's branch initialiser (zeros for VN-PointNet and the demo classifier: the relaxed
model starts equal to the pretrained one; Glorot for VN-DGCNN), so ``model.fit`` with
``kr.ThetaScheduler`` and ``kr.project`` work as for a model trained from scratch.
"""

from __future__ import annotations

#: the zoo entry ``pretrained=True`` loads for each builder
DEFAULT_PRESETS = {
    "vn_pointnet": "vn_pointnet_so3_modelnet40",
    "vn_dgcnn": "vn_dgcnn_so3_modelnet40",
    "segnn": "segnn_o3_nbody",
}


def _branch_ids(model) -> set:
    """ids of the relaxation-branch variables and thetas of every relaxed layer of ``model``."""
    skip = set()
    for layer in model._flatten_layers(include_self=False, recursive=True):
        skip.update(id(v) for v in getattr(layer, "relaxation_variables", None) or [])
        theta = getattr(layer, "theta", None)
        if theta is not None and not isinstance(theta, (int, float)):
            skip.add(id(theta))
    return skip


def _weights_by_path(model) -> dict:
    """Every weight of ``model`` but the relaxation branches and thetas, by its path (without a
    leading model name, so a renamed model matches)."""
    skip = _branch_ids(model)
    out = {}
    for v in model.weights:
        if id(v) in skip:
            continue
        path = v.path
        if path.startswith(model.name + "/"):
            path = path[len(model.name) + 1 :]
        out[path] = v
    return out


def copy_pretrained_weights(source, target, *, new_head: bool = False) -> list[str]:
    """Copy every weight of ``source`` into the weight of ``target`` with the same path (the
    relaxation branches and thetas of ``target`` keep their initial values). With ``new_head`` the
    output layers' weights may differ in shape and keep their initialisation. Returns the paths
    of the weights left as initialised."""
    src, dst = _weights_by_path(source), _weights_by_path(target)
    heads = tuple(t._keras_history.operation.name + "/" for t in target.outputs) if new_head else ()
    missing = sorted(set(dst) - set(src))
    if missing:
        raise ValueError(
            f"The new model has weights {missing[:5]} that the pretrained model lacks; the preset's "
            "architecture and the builder disagree."
        )
    skipped = []
    for path, v in dst.items():
        if tuple(src[path].shape) != tuple(v.shape):
            if path.startswith(heads):
                skipped.append(path)
                continue
            raise ValueError(
                f"Weight {path!r}: pretrained shape {tuple(src[path].shape)} does not fit {tuple(v.shape)}."
            )
        v.assign(src[path])
    return skipped


def from_preset(
    builder: str,
    preset: str | None = None,
    *,
    version: int | None = None,
    num_classes=None,
    relaxed: bool = False,
    index=None,
    cache_dir=None,
    **overrides,
):
    """Build ``keras_relaxeq.models.<builder>`` with the weights of the zoo entry ``preset``.

    Args:
        builder: ``"vn_pointnet"``, ``"vn_dgcnn"``, ``"vn_classifier"`` or ``"segnn"``.
        preset: zoo name (default :data:`DEFAULT_PRESETS`); ``version``: its version (latest).
        num_classes: a new classification head with this many classes (freshly initialised);
            default: the entry's.
        relaxed: rebuild with relaxation branches (to fine-tune with constraint relaxation).
        overrides: further builder arguments (e.g. ``num_points=None`` for any point count,
            ``lambda_lie``, ``dropout``); the architecture's widths come from the entry.
    Returns an uncompiled ``RelaxedModel``.
    """
    from keras_relaxeq import zoo

    preset = preset or DEFAULT_PRESETS.get(builder)
    if preset is None:
        raise ValueError(f"{builder}: no default preset; pass a zoo name (zoo.list_models()).")
    entry = zoo.get_entry(preset, version, index=index)
    cls = entry.architecture.get("class", "")
    if cls != f"keras_relaxeq.models.{builder}":
        raise ValueError(
            f"Zoo entry {preset!r} is a {cls}, not keras_relaxeq.models.{builder}; load it with "
            f"keras_relaxeq.models.{cls.rsplit('.', 1)[-1]}.from_preset({preset!r})."
        )
    config = dict(entry.architecture.get("config") or {})
    new_head = num_classes is not None and int(num_classes) != config.get("num_classes")
    if num_classes is not None:
        if "num_classes" not in config:
            raise ValueError(f"{builder} has no classification head; num_classes does not apply.")
        config["num_classes"] = int(num_classes)
    config.update(overrides, relaxed=bool(relaxed))
    pretrained = zoo.load(preset, entry.version, as_keras=True, index=index, cache_dir=cache_dir, progress=False)
    model = _builder(builder)(**config)
    copy_pretrained_weights(pretrained, model, new_head=new_head)
    return model


#: builder functions by name, registered by :func:`attach_from_preset` when their module is imported
BUILDERS: dict = {}


def _builder(name):
    if name not in BUILDERS:  # a builder's module registers it on import (e.g. ``keras_relaxeq.models.vn_dgcnn``)
        import importlib

        importlib.import_module(f"keras_relaxeq.models.{name}")
    if name not in BUILDERS:
        raise ValueError(f"Unknown model builder {name!r}; known: {sorted(BUILDERS)}.")
    return BUILDERS[name]


def attach_from_preset(builder_fn):
    """Give a builder function ``builder.from_preset(preset=None, **kwargs)`` and register it by name."""
    name = builder_fn.__name__
    BUILDERS[name] = builder_fn

    def preset_loader(preset=None, **kwargs):
        return from_preset(name, preset, **kwargs)

    preset_loader.__doc__ = f"``from_preset({name!r}, preset, ...)``: {name} with a zoo entry's weights.\n\n" + (
        from_preset.__doc__ or ""
    )
    builder_fn.from_preset = preset_loader
    return builder_fn


__all__ = [
    "BUILDERS",
    "DEFAULT_PRESETS",
    "PRESET_OVERRIDES",
    "pretrained_model",
    "attach_from_preset",
    "copy_pretrained_weights",
    "from_preset",
]


#: builder arguments that a zoo preset's architecture may be loaded with (the others come from the entry)
PRESET_OVERRIDES = (
    "num_classes",
    "relaxed",
    "num_points",
    "lambda_lie",
    "lambda_proj",
    "penalty_scale",
    "relaxation_initializer",
    "relaxation_use_bias",
    "lie_method",
    "dropout",
    "name",
)


def pretrained_model(builder: str, pretrained, arguments: dict):
    """A builder's ``pretrained=`` path: :func:`from_preset` with the builder's own arguments that apply.

    ``pretrained`` is ``True`` (the builder's default preset) or a zoo name; ``arguments`` the builder's
    arguments (``locals()`` at its start).
    """
    overrides = {key: arguments[key] for key in PRESET_OVERRIDES if key in arguments}
    return from_preset(builder, None if pretrained is True else pretrained, **overrides)
