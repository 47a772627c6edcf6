"""Former home of the N-body publisher, kept as an import path: see
:mod:`keras_relaxeq.zoo.publish.nbody`."""

from keras_relaxeq.zoo.publish.nbody import *  # noqa: F401,F403
from keras_relaxeq.zoo.publish.nbody import (  # noqa: F401  (not in __all__)
    DEFAULT_CITATION,
    PREPROCESSING,
    PUBLISHED,
    TASK,
    TRANSLATION_SCALE,
    _metrics,
    _predict,
)
