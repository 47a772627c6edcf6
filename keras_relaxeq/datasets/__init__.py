"""Readers, ``tf.data`` pipelines and simulators.

Submodules: ``keras_relaxeq.datasets.shapes`` (synthetic parametric point clouds for
the demo and tests), ``keras_relaxeq.datasets.modelnet40``,
``keras_relaxeq.datasets.nbody`` (charged N-body simulator),
``keras_relaxeq.datasets.smoke_plume`` (2D smoke plumes simulated with PhiFlow, the optional
``smoke`` extra; imported lazily when generating), ``keras_relaxeq.datasets.rmd17`` (revised MD17
molecules; TensorFlow imported when a pipeline is built).
"""

from keras_relaxeq.datasets.rmd17 import TargetScaler, load_rmd17, rmd17_dataset
from keras_relaxeq.datasets.smoke_plume import (
    load_smoke_plume,
    smoke_plume_config,
    smoke_plume_dataset,
)
