"""Readers, ``tf.data`` pipelines and simulators.

Submodules: ``keras_relaxeq.datasets.shapes`` (synthetic parametric point clouds for
the demo and tests), ``keras_relaxeq.datasets.modelnet40``,
``keras_relaxeq.datasets.nbody`` (charged N-body simulator).
"""
