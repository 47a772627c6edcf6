"""keras_relaxeq: equivariant networks trained by constraint relaxation."""

from keras_relaxeq.version import __version__
from keras_relaxeq import groups
