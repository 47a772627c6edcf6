"""keras_relaxeq.testing."""
