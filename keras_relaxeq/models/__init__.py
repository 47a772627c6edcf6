"""keras_relaxeq.models."""
