"""keras_relaxeq.datasets."""
