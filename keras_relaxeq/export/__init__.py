"""Projection to the exactly equivariant model, and SavedModel export for TF Serving.

``project``, ``has_relaxation_branches`` and ``copy_equivariant_weights`` (from ``projection``)
are imported on first use, so that ``keras_relaxeq.export.serving`` (config files, packing) can
be used without loading TensorFlow.
"""

_PROJECTION = ("copy_equivariant_weights", "has_relaxation_branches", "project")
__all__ = list(_PROJECTION)


def __getattr__(name):
    if name in _PROJECTION:
        from keras_relaxeq.export import projection

        return getattr(projection, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
