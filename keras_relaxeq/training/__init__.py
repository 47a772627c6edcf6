"""keras_relaxeq.training."""
