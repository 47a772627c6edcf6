"""Projection to the exactly equivariant model, and SavedModel export for TF Serving."""

from keras_relaxeq.export.projection import copy_equivariant_weights, has_relaxation_branches, project
