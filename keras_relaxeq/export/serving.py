"""SavedModel export for TF Serving (and, re-exported here, the ``models.config`` file of
:mod:`~keras_relaxeq.export.models_config` and the reproducible packing of
:mod:`~keras_relaxeq.export.packing`).

``export_saved_model`` writes ``<base_dir>/<name>/<version>/`` (``saved_model.pb`` +
``variables/``) through ``keras.export.ExportArchive``, with one named input (``points``,
``float32 [batch, points, 3]``) and dict outputs, under the endpoint ``serve`` aliased as
``serving_default``. Only projected models are served: a model that still has relaxation branches
is refused unless ``allow_relaxed=True``, in which case it is projected first
(``keras_relaxeq.export.projection.project``) and the projection is exported.

The artifact needs nothing but stock TensorFlow to load and serve::

    docker run -p 8501:8501 -v "$BASE_DIR:/models" -t tensorflow/serving \\
        --model_config_file=/models/models.config
    curl -d '{"instances": [[[0.1, 0.2, 0.3], ...]]}' \\
        http://localhost:8501/v1/models/<name>:predict       # row format
    curl -d '{"inputs": {"points": [[[0.1, 0.2, 0.3], ...]]}}' \\
        http://localhost:8501/v1/models/<name>:predict       # columnar format

(write the config with ``config_base_path="/models"`` for the container's paths; see
``zoo/README.md``).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from keras_relaxeq.export.models_config import (  # noqa: F401  (re-exported: this module's API)
    MODELS_CONFIG,
    _join_base,
    format_model_config,
    read_models_config,
    update_models_config,
)
from keras_relaxeq.export.packing import PackedArtifact, pack_saved_model  # noqa: F401  (re-exported)
from keras_relaxeq.utils import sha256_file  # noqa: F401  (re-exported)

DEFAULT_ENDPOINT = "serve"
SERVING_DEFAULT = "serving_default"

#: Ops that would tie a SavedModel to a Python process; never allowed in an export.
FORBIDDEN_OPS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc"})

_MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# ---------------------------------------------------------------------------------------------
# Output builders: model output -> dict of named serving outputs.
# ---------------------------------------------------------------------------------------------


def _single_output(y, wanted="logits"):
    if isinstance(y, Mapping):
        if wanted in y:
            return y[wanted]
        if len(y) == 1:
            return next(iter(y.values()))
        raise ValueError(
            f"Model returns a dict with keys {sorted(y)}; the classification "
            f"output builder needs a {wanted!r} key or a single output."
        )
    if isinstance(y, (list, tuple)):
        if len(y) == 1:
            return y[0]
        raise ValueError(f"Model returns {len(y)} outputs; pass outputs=<callable> to name them.")
    return y


def classification_outputs(y) -> dict:
    """``{"logits", "probabilities" (softmax), "class_id" (argmax, int64)}`` from class logits."""
    import tensorflow as tf

    logits = tf.convert_to_tensor(_single_output(y, "logits"))
    logits = tf.cast(logits, tf.float32)
    return {
        "logits": tf.identity(logits, name="logits"),
        "probabilities": tf.nn.softmax(logits, axis=-1, name="probabilities"),
        "class_id": tf.argmax(logits, axis=-1, output_type=tf.int64, name="class_id"),
    }


def regression_outputs(y) -> dict:
    """``{"prediction": y}``; a model that returns a dict keeps its own output names."""
    import tensorflow as tf

    if isinstance(y, Mapping):
        return {str(k): tf.identity(v) for k, v in y.items()}
    return {"prediction": tf.identity(_single_output(y, "prediction"), name="prediction")}


OUTPUT_BUILDERS: dict[str, Callable[[Any], Mapping[str, Any]]] = {
    "classification": classification_outputs,
    "regression": regression_outputs,
}


def register_output_builder(name: str, fn: Callable[[Any], Mapping[str, Any]]) -> None:
    """Make ``outputs=name`` available to :func:`export_saved_model`.

    ``fn`` maps the model output (inside a ``tf.function``; use stock TF ops only) to a dict of
    named tensors, which become the signature's output names.
    """
    OUTPUT_BUILDERS[name] = fn


def _resolve_outputs(outputs, num_classes_output):
    if outputs is None:
        outputs = "classification" if num_classes_output else "regression"
    if callable(outputs):
        return outputs
    try:
        return OUTPUT_BUILDERS[outputs]
    except KeyError:
        raise ValueError(
            f"Unknown outputs={outputs!r}; choose one of {sorted(OUTPUT_BUILDERS)} "
            "or pass a callable (see register_output_builder)."
        ) from None


# ---------------------------------------------------------------------------------------------
# Relaxation branches and projection.
# ---------------------------------------------------------------------------------------------


def _variables_named_relaxation(model) -> list[str]:
    found = []
    for v in getattr(model, "weights", []):
        path = getattr(v, "path", None) or getattr(v, "name", "")
        if "relaxation_kernel" in path:
            found.append(path)
    return found


def _projection_api():
    """``(has_relaxation_branches, project)``; ``project`` is None if the module is missing."""
    try:
        from keras_relaxeq.export.projection import has_relaxation_branches, project
    except ImportError:
        # Projection not available: a plain Keras model needs none. Still refuse models that
        # visibly carry relaxation weights (conventions: they are named ``relaxation_kernel``).
        return (lambda m: bool(_variables_named_relaxation(m))), None
    return has_relaxation_branches, project


def _ensure_projected(model, allow_relaxed: bool):
    has_branches, project = _projection_api()
    if not has_branches(model):
        return model
    if not allow_relaxed:
        names = _variables_named_relaxation(model)
        detail = f" (e.g. {', '.join(names[:3])})" if names else ""
        raise ValueError(
            f"Model {getattr(model, 'name', model)!r} still has relaxation branches{detail}. "
            "Serve projected models only: call keras_relaxeq.export.projection.project(model) "
            "and export the result, or pass allow_relaxed=True to have export_saved_model "
            "project it for you."
        )
    if project is None:
        raise RuntimeError(
            "The model has relaxation branches but keras_relaxeq.export.projection "
            "is not available to remove them; project the model first."
        )
    projected = project(model)
    if has_branches(projected):
        raise RuntimeError("project(model) returned a model that still has relaxation branches.")
    return projected


# ---------------------------------------------------------------------------------------------
# Input signature.
# ---------------------------------------------------------------------------------------------


def _model_input_shape(model):
    """Shape ``(None, ...)`` and dtype of a single-input Functional/Sequential model, or None."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if inputs and len(inputs) == 1:
        shape = tuple(inputs[0].shape)
        return (None,) + shape[1:], str(inputs[0].dtype)
    return None


def _as_spec(value, name, default_dtype="float32"):
    import tensorflow as tf

    if isinstance(value, tf.TensorSpec):
        return tf.TensorSpec(value.shape, value.dtype, name=name)
    shape = getattr(value, "shape", value)  # keras.InputSpec / KerasTensor / tuple
    dtype = getattr(value, "dtype", None) or default_dtype
    shape = [None] + [None if d is None else int(d) for d in list(shape)[1:]]
    return tf.TensorSpec(shape, tf.as_dtype(str(dtype).replace("tf.", "")), name=name)


def resolve_input_signature(model, input_name="points", input_signature=None, input_shape=None) -> dict:
    """``{name: tf.TensorSpec}`` for the serving signature (batch dimension always ``None``).

    Priority: ``input_signature`` (a spec, a shape, or a ``{name: spec-or-shape}`` dict for models
    with several inputs), then ``input_shape``, then the model's own single input (Functional and
    Sequential models: the number of points stays free when the model leaves it free), then
    ``[None, None, 3]`` (subclassed models: any batch, any number of points).
    """
    if isinstance(input_signature, Mapping):
        return {str(k): _as_spec(v, str(k)) for k, v in input_signature.items()}
    if input_signature is not None:
        return {input_name: _as_spec(input_signature, input_name)}
    if input_shape is not None:
        return {input_name: _as_spec(tuple(input_shape), input_name)}
    found = _model_input_shape(model)
    if found is not None:
        shape, dtype = found
        return {input_name: _as_spec(shape, input_name, dtype)}
    return {input_name: _as_spec((None, None, 3), input_name)}


# ---------------------------------------------------------------------------------------------
# Input checks inside the serving function.
# ---------------------------------------------------------------------------------------------

#: Ops that carry the input checks of an export with ``input_checks=True`` (see
#: :func:`guard_serving_inputs`); :func:`export_saved_model` refuses an export that lost them
#: (an XLA-compiled serving function would drop ``Assert`` and ``CheckNumerics``).
GUARD_OPS = frozenset({"Assert", "EnsureShape", "CheckNumerics"})


def _describe_shape(shape) -> str:
    dims = list(shape)
    return (
        "["
        + ", ".join(("batch" if i == 0 and d is None else ("?" if d is None else str(d))) for i, d in enumerate(dims))
        + "]"
    )


def guard_serving_inputs(inputs: Mapping, specs: Mapping, finite: bool = True) -> dict:
    """The serving inputs, checked at run time against their ``tf.TensorSpec`` (stock TF ops only).

    A served SavedModel does not enforce its signature's shapes (``tf.saved_model.load`` and TF
    Serving feed whatever arrives), so the model would silently reshape a ``[batch, N, 6]`` or a
    ``[1, 2, N, 3]`` tensor into another cloud. For every input this adds, in the graph:

    * an ``Assert`` on each fixed axis of the spec (message: the input's name, the expected shape,
      then the shape received);
    * ``EnsureShape`` to the spec (rank and fixed axes);
    * with ``finite=True`` and a floating dtype, ``CheckNumerics`` (NaN / Inf).

    A failed check makes the call fail with ``InvalidArgumentError`` (TF Serving: HTTP 400 /
    gRPC ``INVALID_ARGUMENT`` with that message); no output is returned. Must run in a graph that
    is not XLA-compiled (XLA drops ``Assert`` and ``CheckNumerics``).
    """
    import tensorflow as tf

    out = {}
    for name, spec in specs.items():
        x = inputs[name]
        want = tf.TensorShape(spec.shape)
        expected = _describe_shape(want) if want.rank is not None else "any"
        if want.rank is not None:
            fixed = [(i, d) for i, d in enumerate(want.as_list()) if d is not None]
            if fixed:
                shape = tf.shape(x)
                rank_ok = tf.equal(tf.size(shape), want.rank)
                # index only when the rank is right (a shorter tensor would fail the slice)
                padded = tf.concat([shape, tf.zeros([want.rank], tf.int32)], axis=0)
                dims_ok = tf.reduce_all(tf.stack([tf.equal(padded[i], d) for i, d in fixed]))
                check = tf.debugging.Assert(
                    tf.logical_and(rank_ok, dims_ok),
                    [
                        f"serving input {name} must have shape {expected} ({spec.dtype.name}, ? = any size); got shape",
                        shape,
                    ],
                    summarize=8,
                    name=f"check_{name}_shape",
                )
                with tf.control_dependencies([check]):
                    x = tf.identity(x)
            x = tf.ensure_shape(x, want, name=f"ensure_{name}_shape")
        if finite and x.dtype.is_floating:
            x = tf.debugging.check_numerics(
                x,
                f"serving input {name} contains NaN or Inf values; send finite values only",
                name=f"check_{name}_finite",
            )
        out[name] = x
    return out


def _fn_ops(function_def) -> set[str]:
    return {n.op for n in function_def.node_def}


def check_guards(export_dir, specs: Mapping, finite: bool = True) -> None:
    """Raise ``ValueError`` unless the SavedModel keeps the ops of :func:`guard_serving_inputs`.

    The ops must be in the graph of the function behind ``serving_default`` or in a function it
    calls (an XLA-compiled function, ``_XlaMustCompile``, would drop ``Assert``/``CheckNumerics``).
    """
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString((Path(export_dir) / "saved_model.pb").read_bytes())
    needed = {"EnsureShape"}
    if any(tf_spec.shape.rank and any(d is not None for d in tf_spec.shape.as_list()) for tf_spec in specs.values()):
        needed.add("Assert")
    if finite:
        needed.add("CheckNumerics")
    found, xla = set(), []
    for mg in sm.meta_graphs:
        for fn in mg.graph_def.library.function:
            found |= _fn_ops(fn)
            if fn.attr.get("_XlaMustCompile") is not None and fn.attr["_XlaMustCompile"].b:
                xla.append(fn.signature.name)
    missing = sorted(needed - found)
    if missing or xla:
        raise ValueError(
            f"SavedModel {export_dir}: the serving input checks are missing ops {missing}"
            + (f" (XLA-compiled functions {xla[:3]} drop Assert and CheckNumerics)" if xla else "")
            + "; export without jit_compile."
        )


# ---------------------------------------------------------------------------------------------
# Export.
# ---------------------------------------------------------------------------------------------


def list_ops(export_dir) -> set[str]:
    """Every op type used by the SavedModel's graphs and function library."""
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString((Path(export_dir) / "saved_model.pb").read_bytes())
    ops = set()
    for mg in sm.meta_graphs:
        ops.update(n.op for n in mg.graph_def.node)
        for fn in mg.graph_def.library.function:
            ops.update(n.op for n in fn.node_def)
    return ops


def check_stock_ops(export_dir) -> set[str]:
    """Raise ``ValueError`` if the SavedModel uses a Python op or an op unknown to stock TF."""
    from tensorflow.python.framework import op_def_registry

    ops = list_ops(export_dir)
    bad = sorted(o for o in ops if o in FORBIDDEN_OPS or op_def_registry.get(o) is None)
    if bad:
        raise ValueError(
            f"SavedModel {export_dir} uses non-stock ops {bad}; TF Serving cannot "
            "run them. Replace tf.py_function / custom ops with TF ops."
        )
    return ops


def export_saved_model(
    model,
    base_dir,
    name: str,
    version: int,
    *,
    allow_relaxed: bool = False,
    input_name: str = "points",
    num_classes_output: bool = True,
    outputs: str | Callable | None = None,
    input_signature=None,
    input_shape=None,
    overwrite: bool = False,
    write_config: bool = True,
    config_base_path: str | None = None,
    check_ops: bool = True,
    input_checks: bool = True,
    verbose: bool = False,
) -> Path:
    """Export ``model`` to ``<base_dir>/<name>/<version>/`` for TF Serving; return that path.

    Args:
        model: a built Keras model. If it still has relaxation branches it is refused unless
            ``allow_relaxed=True``, which projects it (``projection.project``) before export.
        base_dir: the TF Serving model base directory (holds ``models.config``).
        name: TF Serving model name (the zoo uses ``<arch>_<group>_<dataset>``).
        version: positive integer version; an existing version is never overwritten unless
            ``overwrite=True`` (published artifacts are immutable).
        input_name: name of the single serving input (``points``).
        num_classes_output: shorthand used when ``outputs`` is None: True -> the model returns
            class logits (``outputs="classification"``), False -> ``outputs="regression"``.
        outputs: ``"classification"`` (``logits``, ``probabilities``, ``class_id``),
            ``"regression"`` (``prediction``), a name given to :func:`register_output_builder`,
            or a callable ``model_output -> {name: tensor}``.
        input_signature / input_shape: override the input spec (see
            :func:`resolve_input_signature`); by default it comes from the model.
        write_config: add/replace this model's entry in ``<base_dir>/models.config``.
        config_base_path: directory that TF Serving will see in place of ``base_dir`` (e.g.
            ``"/models"`` inside the ``tensorflow/serving`` container); default: absolute
            ``base_dir``.
        check_ops: fail if the export uses ``tf.py_function`` or non-stock ops.
        input_checks: check every input inside the serving function
            (:func:`guard_serving_inputs`: rank and fixed axes of its spec, finite values); a
            mis-shaped or non-finite request then fails with ``InvalidArgumentError`` instead of
            returning a confident answer for a reshaped input. The export is refused if the
            checks' ops did not survive (:func:`check_guards`).
    """
    import keras

    if not _MODEL_NAME_RE.match(name):
        raise ValueError(f"Invalid model name {name!r}: use letters, digits, '_', '-', '.'.")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(
            f"version must be a positive integer, got {version!r} (TF Serving only "
            "loads integer-named version directories)."
        )
    build_outputs = _resolve_outputs(outputs, num_classes_output)
    model = _ensure_projected(model, allow_relaxed)
    specs = resolve_input_signature(model, input_name, input_signature, input_shape)
    single = next(iter(specs)) if len(specs) == 1 else None

    def serve(inputs):
        if input_checks:
            inputs = guard_serving_inputs(inputs, specs)
        x = inputs[single] if single is not None else dict(inputs)
        y = model(x, training=False)
        result = dict(build_outputs(y))
        if not result:
            raise ValueError("The output builder returned no outputs.")
        return result

    model_dir = Path(base_dir) / name
    final = model_dir / str(version)
    if final.exists() and not overwrite:
        raise FileExistsError(
            f"{final} already exists; published versions are immutable. Export "
            "a new version (or pass overwrite=True for a scratch directory)."
        )
    model_dir.mkdir(parents=True, exist_ok=True)
    # A non-integer directory name: TF Serving ignores it while it is being written.
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-export-{version}-", dir=model_dir))
    try:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(DEFAULT_ENDPOINT, serve, input_signature=[specs])
        archive.write_out(str(tmp / "sm"), verbose=verbose)
        if check_ops:
            check_stock_ops(tmp / "sm")
        if input_checks:
            check_guards(tmp / "sm", specs)
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".tmp-old-{version}-", dir=model_dir))
            os.replace(final, old / "v")
            os.replace(tmp / "sm", final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp / "sm", final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if write_config:
        prefix = config_base_path if config_base_path is not None else str(Path(base_dir).resolve())
        update_models_config(base_dir, {name: _join_base(prefix, name)})
    return final


__all__ = [
    "FORBIDDEN_OPS",
    "GUARD_OPS",
    "MODELS_CONFIG",
    "OUTPUT_BUILDERS",
    "PackedArtifact",
    "check_stock_ops",
    "classification_outputs",
    "export_saved_model",
    "check_guards",
    "format_model_config",
    "guard_serving_inputs",
    "list_ops",
    "pack_saved_model",
    "read_models_config",
    "register_output_builder",
    "regression_outputs",
    "resolve_input_signature",
    "sha256_file",
    "update_models_config",
]
