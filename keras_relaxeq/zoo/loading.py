"""Loading a zoo entry: :class:`ServingModel` (the SavedModel's ``serving_default`` as a callable on
NumPy arrays) and :func:`load` (that, or the entry's ``.keras`` model); :func:`classify` (class names of
point clouds from a loaded classifier). TensorFlow is imported when a model is loaded, not with this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from keras_relaxeq.zoo.cache import ensure_artifact
from keras_relaxeq.zoo.errors import KerasFormatUnavailableError, ZooError
from keras_relaxeq.zoo.registry import ZooEntry, load_index


class ServingModel:
    """A loaded zoo SavedModel's ``serving_default`` signature as a plain callable.

    ``model(points)`` takes a ``[batch, points, 3]`` (or a single ``[points, 3]``) array and
    returns a dict of NumPy arrays (``logits``, ``probabilities``, ``class_id`` for classifiers).
    Models with several inputs take them by name or as one dict, e.g. an N-body model
    ``model(loc=..., vel=..., charges=...)`` or ``model({"loc": ..., "vel": ..., "charges": ...})``
    (``[batch, 5, 3]``, ``[batch, 5, 3]``, ``[batch, 5, 1]``, or one system without the batch
    axis), returning ``{"loc": predicted positions}``.
    ``model.signature`` is the raw concrete function, ``model.path`` the SavedModel directory.
    """

    def __init__(self, path: Path, entry: ZooEntry | None = None):
        import tensorflow as tf

        self.path = Path(path)
        self.entry = entry
        self._loaded = tf.saved_model.load(str(self.path))  # keeps the variables alive
        self.signature = self._loaded.signatures["serving_default"]
        _, kwargs = self.signature.structured_input_signature
        self.input_specs = dict(kwargs)
        self.output_names = sorted(self.signature.structured_outputs)
        if entry is not None and entry.input_name in self.input_specs:
            self.input_name = entry.input_name
        else:
            self.input_name = next(iter(self.input_specs))

    def __call__(self, points=None, **inputs) -> dict:
        import numpy as np
        import tensorflow as tf

        if isinstance(points, Mapping):
            inputs = {**points, **inputs}
        elif points is not None:
            inputs[self.input_name] = points
        unknown = set(inputs) - set(self.input_specs)
        if unknown or not inputs:
            raise TypeError(f"Inputs must be {sorted(self.input_specs)}; got {sorted(inputs)}.")
        missing = set(self.input_specs) - set(inputs)
        if missing:
            raise TypeError(f"Missing inputs {sorted(missing)}: this model takes "
                            f"{sorted(self.input_specs)}; pass them by name, e.g. "
                            f"model({', '.join(f'{k}=...' for k in sorted(self.input_specs))}).")
        squeeze = False
        feed = {}
        for key, value in inputs.items():
            spec = self.input_specs[key]
            t = tf.convert_to_tensor(np.asarray(value), dtype=spec.dtype)
            if spec.shape.rank is not None and t.shape.rank == spec.shape.rank - 1:
                t, squeeze = t[tf.newaxis], True
            if self.entry is not None and key == self.entry.input_name:
                self.entry.check_num_points(t)  # warns: the answers change with the point count
            feed[key] = t
        out = self.signature(**feed)
        return {k: (v.numpy()[0] if squeeze else v.numpy()) for k, v in out.items()}

    def __repr__(self):
        label = f"{self.entry.name} v{self.entry.version}" if self.entry else str(self.path)
        return f"<ServingModel {label}: inputs {sorted(self.input_specs)} -> {self.output_names}>"


def load(name: str, version: int | None = None, *, as_keras: bool = False, cache_dir=None,
         base_url=None, offline: bool | None = None, progress: bool = True, index=None,
         **download_kwargs):
    """Download (if needed), verify and load a zoo model.

    Returns a :class:`ServingModel` (callable on a ``points`` array, or on its named inputs for
    models with several, e.g. ``loc``, ``vel``, ``charges``; returns the output dict).
    ``as_keras=True`` returns a ``keras.Model`` loaded from the entry's ``.keras`` file, if the
    entry publishes one; otherwise :class:`KerasFormatUnavailableError` says what exists.  The
    model is not compiled (the file's training-time loss and empty optimizer state are not
    restored): call ``compile`` with your own optimizer and loss to fine-tune it.
    """
    cat = load_index(index)
    entry = cat.get(name, version)
    common = dict(catalogue=cat, cache_dir=cache_dir, base_url=base_url, offline=offline,
                  progress=progress, **download_kwargs)
    if as_keras:
        if entry.keras_artifact is None:
            raise KerasFormatUnavailableError(
                f"{entry.name} v{entry.version} publishes only a SavedModel "
                f"({entry.artifact.file}), no .keras file. Use load({entry.name!r}) for the "
                "serving callable, keras.layers.TFSMLayer(download(name), "
                "call_endpoint='serving_default') to use it inside a Keras model, or rebuild "
                f"the architecture ({entry.architecture.get('class')}) and retrain it with its "
                "recipe.")
        path = ensure_artifact(entry, entry.keras_artifact, extract=False, **common)
        return load_keras_file(entry, path)
    path = ensure_artifact(entry, entry.artifact, **common)
    return ServingModel(path, entry)


def load_keras_file(entry: ZooEntry, path):
    """The entry's ``.keras`` file at ``path`` as an uncompiled ``keras.Model``. The package imports its models
    lazily: the modules of the entry's Keras class and of its builder (``architecture.class``) are imported first,
    so the custom layers they register load."""
    import importlib

    import keras

    for name in (entry.architecture.get("keras_class"), entry.architecture.get("class")):
        module = (name or "").rpartition(".")[0]
        if module.startswith("keras_relaxeq."):
            importlib.import_module(module)
    return keras.saving.load_model(path, compile=False)


def classify(model, points, *, entry: ZooEntry | None = None, preprocess: bool = True, top_k: int = 1,
             seed=0):
    """Class names for point clouds, with the entry's preprocessing and labels.

    Args:
        model: what ``zoo.load(name)`` returns (a ``ServingModel``; its entry is used), or a
            Keras model (``zoo.load(name, as_keras=True)``) together with ``entry``.
        points: raw clouds ``[n, 3]`` or ``[batch, n, 3]``.
        preprocess: apply :meth:`ZooEntry.preprocess` (centre, scale, draw the entry's number of
            points with ``seed``). With ``False`` the clouds are fed as they are, and a point count
            other than the entry's gives a ``UserWarning``.
        top_k: 1 gives one name per cloud; more gives ``[(name, probability), ...]`` per cloud.

    Returns a list (one item per cloud; a single ``[n, 3]`` cloud gives a single item).
    """
    import numpy as np

    entry = entry if entry is not None else getattr(model, "entry", None)
    if entry is None:
        raise TypeError("classify needs the zoo entry: pass a model from zoo.load(name) or entry=zoo.get_entry(name).")
    labels = entry.labels
    if labels is None:
        raise ZooError(f"{entry.name} v{entry.version} lists no class labels (no 'labels' file in the catalogue).")
    x = np.asarray(points, dtype=np.float32)
    single = x.ndim == 2
    x = x[None] if single else x
    if preprocess:
        x = entry.preprocess(x, seed=seed)
    else:
        entry.check_num_points(x)
    if hasattr(model, "signature"):  # ServingModel
        probs = np.asarray(model(x)["probabilities"], np.float64)
    else:  # a Keras model returning logits
        logits = np.asarray(model.predict(x, verbose=0), np.float64)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
    order = np.argsort(-probs, axis=-1)[:, :max(1, int(top_k))]
    if top_k == 1:
        out = [labels[int(i[0])] for i in order]
    else:
        out = [[(labels[int(j)], float(p[j])) for j in i] for i, p in zip(order, probs)]
    return out[0] if single else out
