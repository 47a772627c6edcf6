"""keras_relaxeq: equivariant networks trained by constraint relaxation (Keras 3 / TensorFlow).

Quick tour::

    import keras_relaxeq as kr
    model = kr.RelaxedModel(inputs, outputs, lambda_lie=0.01, lambda_proj=0.01)
    model.compile(...)
    model.fit(data, epochs=E, callbacks=[kr.ThetaScheduler("triangle", epochs=E)])
    plain = kr.project(model)            # exactly equivariant
    kr.testing.assert_invariant(plain, points)

Subpackages and the names below are imported on first use (PEP 562), so that ``import
keras_relaxeq`` and the ``relaxeq zoo list|info`` commands do not load TensorFlow. The Keras
classes of the package are registered as soon as Keras and TensorFlow are both imported (now, if
they already are), so ``keras.saving.load_model`` works after a plain ``import keras_relaxeq``.
"""

import importlib

from keras_relaxeq.version import __version__

_SUBPACKAGES = ("datasets", "export", "groups", "layers", "models", "testing", "training", "zoo")
_NAMES = {
    "has_relaxation_branches": "keras_relaxeq.export.projection",
    "project": "keras_relaxeq.export.projection",
    "RelaxedEquivariantLayer": "keras_relaxeq.layers.base",
    "collect_relaxation_penalties": "keras_relaxeq.layers.penalties",
    "get_theta": "keras_relaxeq.layers.relaxation",
    "set_theta": "keras_relaxeq.layers.relaxation",
    "RelaxedModel": "keras_relaxeq.training.model",
    "ThetaScheduler": "keras_relaxeq.training.schedules",
}
#: imported to register every serializable class with Keras
_REGISTERING = ("groups", "layers", "models", "testing", "training", "export.projection")

__all__ = ["__version__", *_SUBPACKAGES, *_NAMES]


def __getattr__(name):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")  # also binds it in this module
    if name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


_ready: set = set()


def _register_keras_classes(module) -> None:
    """Post-import hook of ``keras`` and ``tensorflow``: once both have finished importing (each
    imports the other part-way, so one hook alone does not mean both are ready), import the
    modules that define the serializable classes."""
    _ready.add(module.__name__)
    if not {"keras", "tensorflow"} <= _ready:
        return
    try:
        for sub in _REGISTERING:
            importlib.import_module(f"{__name__}.{sub}")
    except Exception as exc:  # never break the user's `import keras`
        import warnings

        warnings.warn(
            f"keras_relaxeq could not register its Keras classes ({exc!r}); import "
            "keras_relaxeq.layers and keras_relaxeq.models before loading a model.",
            RuntimeWarning,
            stacklevel=2,
        )


def _install_registration_hooks() -> None:
    import wrapt

    for name in ("keras", "tensorflow"):
        wrapt.register_post_import_hook(_register_keras_classes, name)  # now if already imported


_install_registration_hooks()
