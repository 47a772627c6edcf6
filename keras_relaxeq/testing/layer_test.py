"""``run_layer_test``: one call that builds, calls, serializes, relaxes, projects and checks a layer.

In the spirit of KerasHub's ``TestCase.run_layer_test``, for this package's layers and users' own::

    run_layer_test(VNLinear, {"channels": 5}, (2, 16, 4, 3))
    run_layer_test(O3Linear, {"irreps_in": "2x0e+1x1o", "irreps_out": "1x0e+2x1o", "dtype": "float64"},
                   (2, 5, 5), group="O3")

Stages (each failure is an ``AssertionError`` naming the stage and what broke):

1. build and call on ``input_data`` (or random normal inputs of ``input_shape``): finite outputs,
   ``expected_output_shape``, the symbolic (functional) output shape equal to the eager one;
2. serialization: every ``init_kwargs`` key is in ``get_config()``; ``from_config(get_config())``
   has the same config, weights and outputs; so do ``keras.saving.serialize_keras_object`` /
   ``deserialize_keras_object`` and a functional model saved to and loaded from a ``.keras`` file
   (``theta`` included);
3. relaxation (subclasses of :class:`~keras_relaxeq.layers.RelaxedEquivariantLayer` with a branch
   anywhere inside): with ``relaxed=True``, random branch weights and ``theta = 1`` the output
   differs from ``theta = 0``; ``project()`` of a model around the layer removes every branch and
   reproduces the ``theta = 0`` output, as does the ``relaxed=False`` layer with the same weights;
   the relaxation penalties of branches projected onto the equivariant maps are ~0;
4. equivariance of the plain layer under ``group`` (:mod:`.group_actions`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

from keras_relaxeq.groups.cyclic_kernels import transform_kernel
from keras_relaxeq.groups.representations import TrivialRep, equivariant_projection
from keras_relaxeq.layers.base import RelaxedEquivariantLayer
from keras_relaxeq.layers.relaxation import relaxed_layers, set_theta
from keras_relaxeq.testing.equivariance import TOLERANCES, EquivarianceReport
from keras_relaxeq.testing.group_actions import as_group_action

__all__ = ["LayerTestResult", "run_layer_test"]

#: weights given random values before the checks (the others keep their initialisation)
RANDOM_NORMAL_WEIGHTS = ("gamma", "beta", "moving_mean", "running_mean", "bias", "weight")
RANDOM_POSITIVE_WEIGHTS = ("moving_variance", "running_var")
#: ``LD <= PENALTY_RTOL[variable dtype] * N`` for branches projected onto the equivariant maps
PENALTY_RTOL = {tf.float16: 1e-6, tf.bfloat16: 1e-6, tf.float32: 1e-8, tf.float64: 1e-16}


@dataclasses.dataclass
class LayerTestResult:
    """What :func:`run_layer_test` built: the layer of ``init_kwargs`` and its outputs, the relaxed and plain
    layers and the projected model (``None`` without a relaxation branch), and the equivariance report."""

    layer: keras.layers.Layer
    inputs: object
    outputs: list
    relaxed_layer: keras.layers.Layer | None = None
    plain_layer: keras.layers.Layer | None = None
    projected_model: keras.Model | None = None
    report: EquivarianceReport | None = None


class _Stages:
    """Turns any failure inside ``stage(what)`` into an AssertionError naming the layer and the stage."""

    def __init__(self, layer_cls):
        self.owner = f"run_layer_test({getattr(layer_cls, '__name__', layer_cls)})"

    @contextlib.contextmanager
    def __call__(self, what):
        try:
            yield
        except AssertionError as err:
            raise AssertionError(f"{self.owner}: {what}: {err}") from err
        except Exception as err:  # noqa: BLE001 - every failure of the layer is reported as a test failure
            raise AssertionError(f"{self.owner}: {what} failed with {type(err).__name__}: {err}") from err


# --------------------------------------------------------------------------- inputs and comparisons
def _is_single_shape(shape) -> bool:
    return isinstance(shape, (tuple, list)) and all(isinstance(s, (int, np.integer)) or s is None for s in shape)


def _input_dtype(init_kwargs) -> str:
    dtype = init_kwargs.get("dtype")
    if dtype is None:
        return keras.config.floatx()
    return keras.dtype_policies.get(dtype).variable_dtype


def _make_inputs(input_shape, input_data, dtype, rng):
    if input_data is not None:
        return tf.nest.map_structure(tf.convert_to_tensor, input_data)
    if input_shape is None:
        raise ValueError("run_layer_test needs input_shape or input_data.")
    if _is_single_shape(input_shape):
        return tf.constant(rng.normal(size=tuple(input_shape)), dtype=dtype)
    return tuple(_make_inputs(s, None, dtype, rng) for s in input_shape)


def _call(layer, inputs, training=False):
    return layer(inputs, training=training)


def _numpy(values) -> list:
    return [np.asarray(keras.ops.convert_to_numpy(tf.cast(v, tf.float64))) for v in tf.nest.flatten(values)]


def _tolerance(outputs) -> float:
    """Absolute tolerance of "same computation" comparisons: the dtype's atol times the output scale."""
    dtype = tf.as_dtype(tf.nest.flatten(outputs)[0].dtype)
    atol = TOLERANCES.get(dtype, TOLERANCES[tf.float32])[0]
    scale = max([float(np.abs(o).max(initial=0.0)) for o in _numpy(outputs)] + [1.0])
    return atol * scale


def _max_difference(got, want) -> float:
    got, want = _numpy(got), _numpy(want)
    if len(got) != len(want):
        raise AssertionError(f"{len(got)} outputs instead of {len(want)}")
    diffs = []
    for a, b in zip(got, want):
        if a.shape != b.shape:
            raise AssertionError(f"output shape {list(a.shape)} instead of {list(b.shape)}")
        diffs.append(float(np.abs(a - b).max(initial=0.0)))
    return max(diffs)


def _assert_same(got, want, tol, what):
    err = _max_difference(got, want)
    if not err <= tol:
        raise AssertionError(f"{what}: outputs differ by {err:.3e} (allowed {tol:.1e})")


def _copy_weights(source, target):
    weights = source.get_weights()
    shapes = [tuple(w.shape) for w in target.get_weights()]
    if shapes != [tuple(w.shape) for w in weights]:
        raise AssertionError(f"weight shapes {shapes} differ from the original's {[tuple(w.shape) for w in weights]}")
    target.set_weights(weights)


# --------------------------------------------------------------------------- weights
def _randomize(layer, rng, branch_scale):
    """Random statistics / affine weights / biases, and random relaxation branches (theta kept)."""
    branch_ids = {id(v) for sub in relaxed_layers(layer) for v in sub.relaxation_variables}
    for w in layer.weights:
        short = w.path.split("/")[-1]
        if id(w) in branch_ids:
            w.assign(branch_scale * rng.normal(size=tuple(w.shape)))
        elif short in RANDOM_POSITIVE_WEIGHTS:
            w.assign(rng.uniform(0.5, 2.0, size=tuple(w.shape)))
        elif short in RANDOM_NORMAL_WEIGHTS:
            w.assign(rng.normal(size=tuple(w.shape)))


def _project_branches(layer) -> int:
    """Replace every linear branch by its projection onto the equivariant maps (dense maps: the Lie-algebra
    projection; C_N conv branches: the average of the kernel transform over the group); returns how many."""
    projected = 0
    for sub in relaxed_layers(layer):
        if sub.relaxation_branch != "linear" or sub.relaxation_low_rank:
            continue
        kernel = np.asarray(sub.relaxation_kernel.numpy(), np.float64)
        bias = None if sub.relaxation_bias is None else np.asarray(sub.relaxation_bias.numpy(), np.float64)
        if getattr(sub.input_rep, "is_finite_group", False):  # a C_N conv branch: average over the group
            ti, to = sub.input_rep.field_type, sub.output_rep.field_type
            elements = list(ti.group.elements())
            kernel = sum(transform_kernel(kernel, g, ti, to) for g in elements) / len(elements)
            if bias is not None:
                bias = sum(to.matrix(g) @ bias for g in elements) / len(elements)
        else:
            kernel = equivariant_projection(kernel, sub.input_rep, sub.output_rep)
            if bias is not None:
                bias = equivariant_projection(bias[None], TrivialRep(1), sub.output_rep)[0]
        sub.relaxation_kernel.assign(kernel)
        if bias is not None:
            sub.relaxation_bias.assign(bias)
        projected += 1
    return projected


def _functional_model(layer, x):
    """A functional model of ``layer`` on symbolic inputs shaped like ``x``; also returns the model's inputs."""
    flat = tf.nest.flatten(x)
    inputs = [keras.Input(shape=tuple(v.shape[1:]), dtype=v.dtype.name) for v in flat]
    outputs = layer(tf.nest.pack_sequence_as(x, inputs))
    model = keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs)
    return model, (list(flat) if len(flat) > 1 else flat[0])


# --------------------------------------------------------------------------- stages
def _check_build_and_call(layer, x, expected_output_shape, training):
    outputs = _call(layer, x, training=training)
    for o in _numpy(outputs):
        if not np.all(np.isfinite(o)):
            raise AssertionError("the outputs are not finite")
    if expected_output_shape is not None:
        got = [tuple(o.shape) for o in tf.nest.flatten(outputs)]
        want = (
            [tuple(expected_output_shape)]
            if _is_single_shape(expected_output_shape)
            else [tuple(s) for s in expected_output_shape]
        )
        if got != want:
            raise AssertionError(f"output shapes {got} instead of the expected {want}")
    return outputs


def _check_symbolic_shapes(layer, x, outputs):
    model, _ = _functional_model(layer, x)
    symbolic = [tuple(o.shape[1:]) for o in tf.nest.flatten(model.outputs)]
    eager = [tuple(o.shape[1:]) for o in tf.nest.flatten(outputs)]
    if symbolic != eager:
        raise AssertionError(
            f"the symbolic output shapes {symbolic} (compute_output_shape) differ from the "
            f"eager ones {eager} (batch axis left out)"
        )


def _check_config_keys(init_kwargs, config):
    missing = sorted(k for k in init_kwargs if k not in config)
    if missing:
        raise AssertionError(f"get_config() drops the constructor argument(s) {missing}")


def _check_serialization(layer_cls, layer, init_kwargs, x, stage):
    want = _call(layer, x)
    tol = _tolerance(want)
    with stage("get_config / from_config round trip"):
        config = layer.get_config()
        _check_config_keys(init_kwargs, config)
        json.dumps(keras.saving.serialize_keras_object(config))
        clone = layer_cls.from_config(config)
        if clone.get_config() != config:
            diff = sorted(
                k for k in set(config) | set(clone.get_config()) if config.get(k) != clone.get_config().get(k)
            )
            raise AssertionError(f"the clone's config differs in {diff}")
        _call(clone, x)
        _copy_weights(layer, clone)
        _assert_same(_call(clone, x), want, tol, "the clone with the original's weights")
    with stage("serialize_keras_object / deserialize_keras_object round trip"):
        restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
        if type(restored) is not type(layer):
            raise AssertionError(f"deserialized as {type(restored).__name__}, not {type(layer).__name__}")
        _call(restored, x)
        _copy_weights(layer, restored)
        _assert_same(_call(restored, x), want, tol, "the deserialized layer with the original's weights")
    with stage("save / load of a functional model in a .keras file"):
        model, model_x = _functional_model(layer, x)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "layer_test.keras")
            model.save(path)
            loaded = keras.saving.load_model(path)
        _assert_same(loaded(model_x, training=False), want, tol, "the loaded model")
        thetas = [float(sub.theta.numpy()) for sub in relaxed_layers(model)]
        loaded_thetas = [float(sub.theta.numpy()) for sub in relaxed_layers(loaded)]
        if thetas != loaded_thetas:
            raise AssertionError(f"theta {thetas} came back as {loaded_thetas}")


def _check_relaxation(layer_cls, init_kwargs, x, rng, branch_scale, stage):
    """The relaxed / plain / projected stages; returns ``(relaxed, plain, projected)`` or Nones."""
    from keras_relaxeq.export.projection import copy_equivariant_weights, project

    with stage("building the layer with relaxed=True"):
        relaxed = layer_cls(**dict(init_kwargs, relaxed=True))
        _call(relaxed, x)
    if not relaxed_layers(relaxed):
        return None, None, None
    _randomize(relaxed, rng, branch_scale)
    with stage("theta = 1 with a random relaxation branch"):
        set_theta(relaxed, 1.0)
        y1 = _call(relaxed, x)
        set_theta(relaxed, 0.0)
        y0 = _call(relaxed, x)
        tol = _tolerance(y0)
        if _max_difference(y1, y0) <= max(10.0 * tol, 1e-6):
            raise AssertionError(
                "the output at theta = 1 equals the output at theta = 0: the relaxation branch "
                "does not reach the output"
            )
    with stage("project() of a model around the relaxed layer at theta = 0"):
        model, model_x = _functional_model(relaxed, x)
        projected = project(model)
        left = relaxed_layers(projected)
        if left:
            raise AssertionError(f"project() left relaxation branches in {[l.name for l in left]}")
        _assert_same(
            projected(model_x, training=False),
            y0,
            tol,
            "the projected model's output and the relaxed layer's output at theta = 0",
        )
    with stage("the relaxed=False layer with the relaxed layer's equivariant weights"):
        plain = layer_cls(**dict(init_kwargs, relaxed=False, name=relaxed.name))  # copied by layer name
        _call(plain, x)
        if relaxed_layers(plain):
            raise AssertionError("relaxed=False built relaxation branches")
        copy_equivariant_weights(relaxed, plain)
        _assert_same(_call(plain, x), y0, tol, "the plain layer's output and the relaxed layer's at theta = 0")
    with stage("relaxation penalties of branches projected onto the equivariant maps"):
        if _project_branches(relaxed):
            set_theta(relaxed, 1.0)
            lie, proj = (float(v) for v in relaxed.relaxation_penalties(x))
            rtol = PENALTY_RTOL.get(tf.as_dtype(relaxed.variable_dtype), 1e-8)
            if not (np.isfinite(lie) and np.isfinite(proj) and abs(lie) <= rtol * proj):
                raise AssertionError(
                    f"Lie penalty {lie:.3e} of an equivariant branch is not ~0 (projection "
                    f"penalty {proj:.3e}, allowed {rtol:.0e} of it)"
                )
    return relaxed, plain, projected


def _declares_reps(layer) -> bool:
    return getattr(layer, "output_rep", None) is not None or getattr(layer, "equivariance_input_reps", None) is not None


def run_layer_test(
    layer_cls,
    init_kwargs=None,
    input_shape=None,
    *,
    group=None,
    input_reps=None,
    output_reps=None,
    input_data=None,
    expected_output_shape=None,
    check_relaxed=True,
    check_serialization=True,
    negative_control=False,
    training=False,
    num_samples=2,
    atol=None,
    rtol=None,
    seed=0,
    branch_scale=1.0,
) -> LayerTestResult:
    """Build, call, serialize, relax, project and check the equivariance of ``layer_cls(**init_kwargs)``.

    Args:
        layer_cls: a Keras layer class (a :class:`~keras_relaxeq.layers.RelaxedEquivariantLayer` gets the
            relaxation stages too).
        init_kwargs: constructor arguments (``dtype`` sets the inputs' dtype: the policy's variable dtype).
        input_shape: the input shape with its batch axis, or a tuple of shapes for several inputs
            (random normal inputs), unless ``input_data`` is given.
        group: ``"SO3"``, ``"O3"``, ``"SE3"``, ``"E3"`` (with ``input_reps`` / ``output_reps``, default the
            layer's declared representations), a :class:`~keras_relaxeq.testing.GroupAction`
            (``CyclicGridAction``, ``ScaleAction``), ``None``: ``"SO3"`` for layers that declare
            representations, no check otherwise; ``False``: no equivariance check.
        expected_output_shape: the output shape (or shapes) with the batch axis.
        check_relaxed, check_serialization: run those stages.
        negative_control: also require the relaxed layer at ``theta = 1`` with a random branch to fail
            the equivariance check.
        training: the mode of the equivariance check (the other stages run in inference mode).
        num_samples, atol, rtol: of the equivariance check (tolerances default by dtype).
        seed: of the random inputs and weights.
        branch_scale: standard deviation of the random branch weights.

    Returns:
        A :class:`LayerTestResult`.

    Raises:
        AssertionError: naming the stage that failed and what differed.
    """
    init_kwargs = dict(init_kwargs or {})
    stage = _Stages(layer_cls)
    rng = np.random.default_rng(seed)
    x = _make_inputs(input_shape, input_data, _input_dtype(init_kwargs), rng)

    with stage("build and call"):
        layer = layer_cls(**init_kwargs)
        _call(layer, x)
        _randomize(layer, rng, branch_scale)
        if relaxed_layers(layer):
            set_theta(layer, 0.37)  # a theta that only survives serialization if it is saved
        outputs = _check_build_and_call(layer, x, expected_output_shape, training=False)
    with stage("symbolic call in a functional model"):
        _check_symbolic_shapes(layer, x, outputs)
    if check_serialization:
        _check_serialization(layer_cls, layer, init_kwargs, x, stage)

    result = LayerTestResult(layer=layer, inputs=x, outputs=_numpy(outputs))
    checked = layer
    if check_relaxed and isinstance(layer, RelaxedEquivariantLayer):
        relaxed, plain, projected = _check_relaxation(layer_cls, init_kwargs, x, rng, branch_scale, stage)
        result.relaxed_layer, result.plain_layer, result.projected_model = relaxed, plain, projected
        checked = plain if plain is not None else layer

    if group is False or (group is None and not _declares_reps(checked)):
        return result
    action = as_group_action("SO3" if group is None else group, input_reps, output_reps)
    with stage(f"{action.name} equivariance of the {'relaxed=False ' if checked is not layer else ''}layer"):
        report = action.check(checked, x, num_samples=num_samples, seed=seed, atol=atol, rtol=rtol, training=training)
        if not report.passed:
            raise AssertionError(f"Not equivariant: {report}")
        if report.scale == 0.0:
            raise AssertionError("the outputs are all zero, so the equivariance check says nothing")
        result.report = report
    if negative_control and result.relaxed_layer is not None:
        with stage(f"{action.name} negative control (relaxed, theta = 1, random branch)"):
            relaxed = result.relaxed_layer
            _randomize(relaxed, np.random.default_rng(seed + 1), branch_scale)
            set_theta(relaxed, 1.0)
            bad = action.check(relaxed, x, num_samples=num_samples, seed=seed, atol=atol, rtol=rtol, training=training)
            if bad.passed:
                raise AssertionError(f"the relaxed layer at theta = 1 passed the check: {bad}")
    return result
