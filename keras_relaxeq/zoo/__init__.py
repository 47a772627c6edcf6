"""keras_relaxeq.zoo."""
