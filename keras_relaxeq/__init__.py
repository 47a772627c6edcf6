"""keras_relaxeq: equivariant networks trained by constraint relaxation (Keras 3 / TensorFlow).

Quick tour::

    import keras_relaxeq as kr
    model = kr.RelaxedModel(inputs, outputs, lambda_lie=0.01, lambda_proj=0.01)
    model.compile(...)
    model.fit(data, epochs=E, callbacks=[kr.ThetaScheduler("triangle", epochs=E)])
    plain = kr.project(model)            # exactly equivariant
    kr.testing.assert_invariant(plain, points)
"""

from keras_relaxeq.version import __version__
# models too: importing the package registers every serializable class, so that
# keras.saving.load_model works after a plain ``import keras_relaxeq``
from keras_relaxeq import groups, layers, models, testing, training
from keras_relaxeq.export.projection import has_relaxation_branches, project
from keras_relaxeq.layers.base import (
    RelaxedEquivariantLayer,
    collect_relaxation_penalties,
    get_theta,
    set_theta,
)
from keras_relaxeq.training.model import RelaxedModel
from keras_relaxeq.training.schedules import ThetaScheduler
