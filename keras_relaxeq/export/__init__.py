"""keras_relaxeq.export."""
