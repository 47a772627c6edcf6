"""Small helpers shared across the package (files, Keras attribute tracking).

Kept free of TensorFlow imports at module level so that the CLI and the zoo index stay light.
"""

from keras_relaxeq.utils.files import atomic_write, is_local_path, sha256_file
from keras_relaxeq.utils.tracking import set_untracked

__all__ = ["atomic_write", "is_local_path", "set_untracked", "sha256_file"]
