"""Architectures built from keras_relaxeq layers."""

from keras_relaxeq.models.vn_classifier import vn_classifier
