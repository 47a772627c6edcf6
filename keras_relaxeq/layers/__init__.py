"""keras_relaxeq.layers."""
