"""Scale-equivariant steerable convolutions (layers/scale_conv.py): exact scale steps, measured errors, the relaxed
lifting layer (branch, step defect, Lie derivative, project()), RSteer, serialization."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_relaxeq.export.projection import project
from keras_relaxeq.layers import collect_relaxation_penalties, relaxed_layers, set_theta
from keras_relaxeq.layers.scale_conv import (
    RSteerScaleConv2D,
    RSteerScaleLiftingConv2D,
    ScaleConv2D,
    ScaleLiftingConv2D,
    ScalePooling,
    scale_step_defect,
)
from keras_relaxeq.testing import run_layer_test
from keras_relaxeq.testing.scale import (
    assert_relaxation_reaches_output,
    plane_wave_parameters,
    sample_plane_waves,
    scale_equivariance_error,
)

SCALES = (1.0, 1.5, 2.0, 2.5)
GEOMETRIC = tuple(2 ** (np.arange(4) / 2))  # 1, 1.41, 2, 2.83: factor 2 is a shift by two slices
PARAMS = plane_wave_parameters(np.random.default_rng(0), 2, max_frequency=0.25)


@pytest.fixture(autouse=True)
def seeded():
    """Every test draws its layers' initial weights from the same seed, whatever ran before it."""
    keras.utils.set_random_seed(0)


def images(shape, seed=0, dtype="float64"):
    return tf.constant(np.random.default_rng(seed).normal(size=shape), dtype)


# --------------------------------------------------------------------------- layers and serialization
@pytest.mark.parametrize(
    "cls, kwargs, shape, out",
    [
        (ScaleLiftingConv2D, {"filters": 3, "relaxed": False}, (2, 12, 12, 2), (2, 12, 12, 4, 3)),
        (ScaleLiftingConv2D, {"filters": 3, "activation": "relu"}, (2, 12, 12, 2), (2, 12, 12, 4, 3)),
        (ScaleConv2D, {"filters": 2, "scale_size": 2}, (2, 10, 10, 4, 3), (2, 10, 10, 4, 2)),
        (RSteerScaleLiftingConv2D, {"filters": 2, "alpha": 1e-3}, (2, 10, 10, 2), (2, 10, 10, 4, 2)),
        (RSteerScaleConv2D, {"filters": 2, "kernel_size": 3}, (2, 10, 10, 4, 3), (2, 10, 10, 4, 2)),
        (ScalePooling, {"mode": "mean"}, (2, 6, 6, 4, 3), (2, 6, 6, 3)),
    ],
)
def test_layers_build_call_and_round_trip(cls, kwargs, shape, out):
    """Shapes, get_config, serialize / deserialize and the .keras round trip (theta included)."""
    run_layer_test(
        cls, dict(kwargs, dtype="float64"), shape, expected_output_shape=out, group=False, check_relaxed=False
    )


def test_bad_arguments_say_what_to_do():
    with pytest.raises(ValueError, match="relax the first layer"):
        ScaleConv2D(2, relaxed=True)
    with pytest.raises(ValueError, match="no such pair.*subspace"):
        ScaleLiftingConv2D(2, scales=(1.0, 1.5), relaxed=True)
    ScaleLiftingConv2D(2, scales=(1.0, 1.5), relaxed=True, scale_penalty="lie")  # the Lie derivative needs no pair
    with pytest.raises(ValueError, match="scale_penalty"):
        ScaleLiftingConv2D(2, scale_penalty="rot90")
    with pytest.raises(ValueError, match="scale-space fields"):
        ScaleConv2D(2)(images((1, 8, 8, 3)))
    with pytest.raises(ValueError, match="expects images"):
        ScaleLiftingConv2D(2)(images((1, 8, 8, 4, 3)))
    with pytest.raises(ValueError, match="odd"):
        ScaleLiftingConv2D(2, kernel_size=4)


# --------------------------------------------------------------------------- equivariance
def test_lifting_is_exact_on_scale_shift_steps():
    """Band-limited input sampled at two resolutions, kernel wide enough not to truncate: the responses at sigma
    on the coarse grid are those at a sigma on the fine grid, for integer and non-integer steps in the list."""
    layer = ScaleLiftingConv2D(3, scales=SCALES, kernel_size=31, relaxed=False, dtype="float64")
    check = scale_equivariance_error(layer, PARAMS, SCALES, 2.0, 64, 31)
    assert check.pairs == [(0, 2)] and check.max_error < 1e-4  # sigma = 1 on the coarse grid: aliasing ~1e-5
    for factor, pairs in ((4 / 3, [(1, 2)]), (1.25, [(2, 3)]), (5 / 3, [(1, 3)])):
        check = scale_equivariance_error(layer, PARAMS, SCALES, factor, 81, 26)
        assert check.pairs == pairs and check.max_error < 1e-6, (factor, check.errors)  # truncation at 6 sigma
    # negative controls: slices that a dilation by 2 does not map onto each other, and RSteer's free taps
    wrong = scale_equivariance_error(layer, PARAMS, SCALES, 2.0, 64, 31, slice_pairs=[(0, 1), (1, 3)])
    assert min(wrong.errors.values()) > 0.05
    rsteer = RSteerScaleLiftingConv2D(3, scales=SCALES, kernel_size=31, relaxed=False, dtype="float64")
    assert scale_equivariance_error(rsteer, PARAMS, SCALES, 2.0, 64, 31).max_error > 0.05


def test_scale_space_layer_is_exact_on_a_geometric_scale_list():
    """Lifting then a scale-space conv mixing two slices: the step 2 shifts the slices by two."""
    lift = ScaleLiftingConv2D(3, scales=GEOMETRIC, kernel_size=33, relaxed=False, dtype="float64")
    conv = ScaleConv2D(2, scales=GEOMETRIC, kernel_size=33, scale_size=2, dtype="float64")
    for layer in (lift, conv):
        layer.build((None, None, None, 2) if layer is lift else (None, None, None, 4, 3))
        layer.bias.assign(np.random.default_rng(1).normal(size=layer.bias.shape))

    def net(x):
        return conv(lift(x))

    check = scale_equivariance_error(net, PARAMS, GEOMETRIC, 2.0, 150, 66, slice_pairs=[(0, 2)])
    assert check.max_error < 1e-4, check.errors
    # slice 1 reads slice 2 = 2 sqrt(2): its fine partner (slice 3) reads past the last scale (zero): not exact
    edge = scale_equivariance_error(net, PARAMS, GEOMETRIC, 2.0, 150, 66, slice_pairs=[(1, 3)])
    assert edge.max_error > 0.05


def test_measured_error_shrinks_with_the_kernel_size():
    """The documented approximation: kernel 5 truncates the larger scales (error tens of percent), 9 less,
    31 is exact to the aliasing of sigma = 1."""
    errors = []
    for k in (5, 9, 31):  # the mean over random layers: one layer's error depends on its draw
        draws = []
        for seed in range(4):
            keras.utils.set_random_seed(seed)
            layer = ScaleLiftingConv2D(2, scales=SCALES, kernel_size=k, relaxed=False, dtype="float64")
            draws.append(scale_equivariance_error(layer, PARAMS, SCALES, 2.0, 2 * k + 8, k).max_error)
        errors.append(float(np.mean(draws)))
    assert errors[0] > errors[1] > errors[2] and errors[0] > 0.1 and errors[2] < 1e-4, errors


def test_pooling_is_invariant_to_a_shift_along_the_scales():
    y = images((1, 4, 4, 4, 2))
    shifted = tf.concat([y[..., 1:, :], y[..., :1, :]], axis=3)
    np.testing.assert_allclose(ScalePooling()(shifted), ScalePooling()(y))
    np.testing.assert_allclose(ScalePooling()(y), tf.reduce_max(y, axis=3))


# --------------------------------------------------------------------------- the relaxed lifting layer
def _relaxed(kernel_size=5, scales=SCALES, seed=0, **kwargs):
    layer = ScaleLiftingConv2D(2, scales=scales, kernel_size=kernel_size, dtype="float64", **kwargs)
    x = images((2, 16, 16, 2), seed)
    layer(x)
    rng = np.random.default_rng(seed + 1)
    layer.relaxation_kernel.assign(rng.normal(size=layer.relaxation_kernel.shape))
    layer.relaxation_bias.assign(rng.normal(size=layer.relaxation_bias.shape))
    return layer, x


def _model(relaxed=True):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 2), dtype="float64")
    y = ScaleLiftingConv2D(3, activation="relu", relaxed=relaxed, dtype="float64", name="lift")(inputs)
    y = ScaleConv2D(3, scale_size=2, activation="relu", dtype="float64", name="conv")(y)
    y = ScalePooling(dtype="float64")(y)
    return keras.Model(inputs, keras.layers.Conv2D(2, 1, dtype="float64", name="head")(y))


def test_the_branch_changes_the_model_output_at_theta_one():
    """The reference's defect: its relaxed scale layer never reaches the output.  Here it must, and the task loss
    must train it."""
    model = _model()
    (lift,) = relaxed_layers(model)
    lift.relaxation_kernel.assign(np.random.default_rng(0).normal(size=lift.relaxation_kernel.shape))
    x = images((2, 16, 16, 2))
    set_theta(model, 0.0)
    y0 = model(x).numpy()
    set_theta(model, 1.0)
    y1 = model(x).numpy()
    assert np.abs(y1 - y0).max() > 1e-2 * np.abs(y0).max()
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(model(x)))
    grad = tape.gradient(loss, lift.relaxation_kernel)
    assert grad is not None and float(tf.reduce_max(tf.abs(grad))) > 0.0
    assert assert_relaxation_reaches_output(model, x)["lift"] > 1e-2


class _DeadBranch(ScaleLiftingConv2D):
    """The published scale model's defect: the branch is built (weights, theta) but never added to the output."""

    def call(self, inputs, training=None):
        outputs = self.equivariant_call(inputs, training=training)
        return self.activation(outputs) if self.activation is not None else outputs


def test_a_dead_branch_is_caught():
    x = images((1, 16, 16, 2))
    inputs = keras.Input((16, 16, 2), dtype="float64")
    live = ScaleLiftingConv2D(2, dtype="float64", name="live")
    dead = _DeadBranch(2, dtype="float64", name="dead")
    model = keras.Model(inputs, ScalePooling()(live(inputs)) + ScalePooling()(dead(inputs)))
    assert len(relaxed_layers(model)) == 2
    with pytest.raises(AssertionError, match=r"\['dead'\] does not change"):
        assert_relaxation_reaches_output(model, x)


def test_project_drops_the_branch_and_keeps_theta_zero_outputs():
    model = _model()
    (lift,) = relaxed_layers(model)
    lift.relaxation_kernel.assign(np.random.default_rng(0).normal(size=lift.relaxation_kernel.shape))
    x = images((2, 16, 16, 2))
    set_theta(model, 0.0)
    y0 = model(x).numpy()
    projected = project(model)
    assert not relaxed_layers(projected)
    np.testing.assert_allclose(projected(x).numpy(), y0, rtol=1e-12, atol=1e-12)
    assert projected.count_params() == _model(relaxed=False).count_params() < model.count_params()


def test_projected_model_is_exactly_equivariant_on_the_exact_step():
    """After projection the scale-space output of a relaxed model (trained branch removed) passes the exact check."""
    inputs = keras.Input((None, None, 2), dtype="float64")
    lift = ScaleLiftingConv2D(3, scales=GEOMETRIC, kernel_size=33, dtype="float64", name="lift")
    y = ScaleConv2D(2, scales=GEOMETRIC, kernel_size=33, scale_size=2, dtype="float64", name="conv")(lift(inputs))
    model = keras.Model(inputs, y)
    lift.relaxation_kernel.assign(np.random.default_rng(0).normal(size=lift.relaxation_kernel.shape))
    relaxed = scale_equivariance_error(model, PARAMS, GEOMETRIC, 2.0, 150, 66, slice_pairs=[(0, 2)])
    projected = project(model)
    exact = scale_equivariance_error(projected, PARAMS, GEOMETRIC, 2.0, 150, 66, slice_pairs=[(0, 2)])
    assert exact.max_error < 1e-4 < 0.05 < relaxed.max_error, (exact.errors, relaxed.errors)


def _numpy_conv_same(x, w):
    """Direct 'SAME' zero-padded convolution (cross-correlation, as tf.nn.conv2d) by loops over the taps."""
    b, h, wd, _ = x.shape
    k = w.shape[0]
    r = k // 2
    padded = np.pad(x, ((0, 0), (r, r), (r, r), (0, 0)))
    out = np.zeros((b, h, wd, w.shape[-1]))
    for dy in range(k):
        for dx in range(k):
            out += np.einsum("bhwi,io->bhwo", padded[:, dy : dy + h, dx : dx + wd], w[dy, dx])
    return out


def test_step_defect_matches_an_independent_computation():
    layer, x = _relaxed()
    lie, proj = (float(v) for v in layer.branch_penalties(x))
    w, bias = layer.relaxation_kernel.numpy(), layer.relaxation_bias.numpy()
    xn = x.numpy()

    def branch(v):
        return (_numpy_conv_same(v, w) + bias).reshape(v.shape[:3] + (4, 2))

    r, r_coarse = branch(xn), branch(xn[:, ::2, ::2])
    m = 2  # the kernel radius
    want = np.sum((r[:, ::2, ::2][:, m:-m, m:-m, 2] - r_coarse[:, m:-m, m:-m, 0]) ** 2)  # sigma 2 vs sigma 1
    np.testing.assert_allclose(lie, want, rtol=1e-10)
    np.testing.assert_allclose(proj, np.sum(r**2), rtol=1e-10)
    # the same through the collector, as in training (theta scales the branch, not its penalties)
    set_theta(layer, 0.3)
    with collect_relaxation_penalties() as collector:
        layer(x)
    np.testing.assert_allclose([float(v) for v in collector.totals(tf.float64)], [lie, proj], rtol=1e-10)


def test_step_defect_is_zero_on_an_equivariant_branch():
    """Branch = the layer's own equivariant kernel (untruncated), band-limited input: LD ~ round-off; a random branch
    and a random input (not band-limited) are the negative controls."""
    layer, _ = _relaxed(kernel_size=31)
    x = tf.constant(sample_plane_waves(PARAMS, 96, batch=2))
    random_lie = float(layer.branch_penalties(x)[0])
    layer.relaxation_kernel.assign(layer.kernel_value(tf.float64))
    layer.relaxation_bias.assign(np.tile(np.arange(2.0), 4))  # constant over the scales
    lie, proj = (float(v) for v in layer.branch_penalties(x))
    assert lie < 1e-12 * proj and random_lie > 1e-3 * proj
    noise_lie, noise_proj = (float(v) for v in layer.branch_penalties(images((2, 96, 96, 2))))
    assert noise_lie > 1e-6 * noise_proj  # aliasing of a white-noise input: the step is exact on smooth fields only
    # and the equivariant branch's defect is the layer's own: E and R agree
    np.testing.assert_allclose(layer.relaxation_branch_fn(x), layer.equivariant_call(x) + np.arange(2.0), atol=1e-12)


def _numpy_lie_derivative(layer, x, margin):
    """LD of the affine branch by hand: R_lin(-p . grad x) - (-p . grad R(x) - sigma d_sigma R(x)), central
    differences (zero beyond the grid), the non-uniform three-point formula on log sigma (one-sided at the ends)."""
    w, bias = layer.relaxation_kernel.numpy(), layer.relaxation_bias.numpy()

    def p_grad(y):
        out = np.zeros_like(y)
        for axis in (1, 2):
            n = y.shape[axis]
            pad = [(0, 0)] * y.ndim
            pad[axis] = (1, 1)
            yp = np.pad(y, pad)
            diff = (np.take(yp, np.arange(2, n + 2), axis) - np.take(yp, np.arange(n), axis)) / 2
            coord = np.arange(n) - (n - 1) / 2
            out += coord.reshape([-1 if a == axis else 1 for a in range(y.ndim)]) * diff
        return out

    r = (_numpy_conv_same(x, w) + bias).reshape(x.shape[:3] + (4, 2))
    jv = _numpy_conv_same(-p_grad(x), w).reshape(r.shape)
    logs = np.log(SCALES)
    d_sigma = np.zeros_like(r)
    d_sigma[..., 0, :] = (r[..., 1, :] - r[..., 0, :]) / (logs[1] - logs[0])
    d_sigma[..., -1, :] = (r[..., -1, :] - r[..., -2, :]) / (logs[-1] - logs[-2])
    for s in range(1, 3):
        h1, h2 = logs[s] - logs[s - 1], logs[s + 1] - logs[s]
        d_sigma[..., s, :] = (h1**2 * r[..., s + 1, :] - h2**2 * r[..., s - 1, :] + (h2**2 - h1**2) * r[..., s, :]) / (
            h1 * h2 * (h1 + h2)
        )
    diff = jv - (-p_grad(r) - d_sigma)
    return np.sum(diff[:, margin:-margin, margin:-margin] ** 2)


def test_lie_derivative_matches_an_independent_computation_and_is_small_on_an_equivariant_branch():
    layer, _ = _relaxed(kernel_size=31, scale_penalty="lie")
    x = tf.constant(sample_plane_waves(PARAMS, 96, batch=1))
    random_lie, _ = (float(v) for v in layer.branch_penalties(x))
    np.testing.assert_allclose(random_lie, _numpy_lie_derivative(layer, x.numpy(), 16), rtol=1e-9)
    layer.relaxation_kernel.assign(layer.kernel_value(tf.float64))
    layer.relaxation_bias.assign(np.zeros(8))
    lie, proj = (float(v) for v in layer.branch_penalties(x))
    step, _ = (float(v) for v in layer.branch_penalties(x, method="step"))
    # the finite differences along log sigma (4 scales) leave ~1e-3 of the output; the step is exact
    assert lie < 1e-2 * proj and lie < 1e-3 * random_lie and step < 1e-6 * lie
    with pytest.raises(ValueError, match="factor 3"):
        scale_step_defect(layer.relaxation_branch_fn, x, SCALES, 3)


# --------------------------------------------------------------------------- RSteer
def test_rsteer_with_constant_taps_is_the_sesn_layer_and_free_taps_are_penalised():
    x = images((2, 12, 12, 2))
    lift = ScaleLiftingConv2D(3, relaxed=False, dtype="float64")
    y = lift(x)
    lift.bias.assign(np.arange(3.0))
    y = lift(x)
    rs = RSteerScaleLiftingConv2D.from_equivariant(lift)
    assert rs.alpha == 1e-6 and not rs.relaxed
    np.testing.assert_allclose(rs(x), y, atol=1e-12)
    assert float(rs.smoothness_penalty()) == 0.0
    conv = ScaleConv2D(2, scale_size=2, dtype="float64")
    z = conv(y)
    rconv = RSteerScaleConv2D.from_equivariant(conv, alpha=0.5)
    np.testing.assert_allclose(rconv(y), z, atol=1e-12)
    rconv.coefficients.assign(np.random.default_rng(0).normal(size=rconv.coefficients.shape))
    c = rconv.coefficients.numpy()
    want = np.abs(np.diff(c.reshape(c.shape[:-2] + (-1,)), axis=-1)).mean()
    np.testing.assert_allclose(float(rconv.smoothness_penalty()), want, rtol=1e-12)
    rconv(y, training=False)
    assert not rconv.losses
    rconv(y, training=True)
    np.testing.assert_allclose(float(rconv.losses[0]), 0.5 * want, rtol=1e-6)


def test_rsteer_plus_relaxation_branch():
    """RSteer + ours: the relaxed RSteer lifting layer has the branch and the step defect; project() keeps RSteer."""
    layer = RSteerScaleLiftingConv2D(2, dtype="float64")
    x = images((1, 16, 16, 2))
    layer(x)
    layer.relaxation_kernel.assign(np.random.default_rng(0).normal(size=layer.relaxation_kernel.shape))
    y1 = layer(x)
    set_theta(layer, 0.0)
    assert np.abs(y1 - layer(x)).max() > 1e-3
    lie, proj = layer.relaxation_penalties(x)
    assert float(lie) > 0 and float(proj) > 0
    inputs = keras.Input((16, 16, 2), dtype="float64")
    model = keras.Model(inputs, layer(inputs))
    projected = project(model)
    assert isinstance(projected.layers[-1], RSteerScaleLiftingConv2D) and not relaxed_layers(projected)
    np.testing.assert_allclose(projected(x), layer(x), atol=1e-12)


def test_subspace_defect_is_zero_on_the_layers_kernels_and_matches_a_least_squares_projection():
    """At the published kernel size 5, where the step defect of the SESN kernels themselves is large."""
    layer, x = _relaxed(scale_penalty="subspace")
    w, bias = layer.relaxation_kernel.numpy(), layer.relaxation_bias.numpy()
    lie, proj = (float(v) for v in layer.branch_penalties(x))
    # independent: least-squares fit of every channel pair's kernels by the basis, residual convolved
    basis = layer.basis_numpy  # [S, B, k, k]
    psi = np.transpose(basis, (0, 2, 3, 1)).reshape(-1, basis.shape[1])
    w5 = w.reshape(5, 5, 2, 4, 2)
    flat = np.transpose(w5, (3, 0, 1, 2, 4)).reshape(4 * 25, -1)
    coef, *_ = np.linalg.lstsq(psi, flat, rcond=None)
    res = np.transpose((flat - psi @ coef).reshape(4, 5, 5, 2, 2), (1, 2, 3, 0, 4)).reshape(w.shape)
    b = bias.reshape(4, 2)
    want = np.sum((_numpy_conv_same(x.numpy(), res) + (b - b.mean(0)).ravel()) ** 2)
    np.testing.assert_allclose(lie, want, rtol=1e-9)
    np.testing.assert_allclose(proj, np.sum((_numpy_conv_same(x.numpy(), w) + bias) ** 2), rtol=1e-10)
    assert lie > 0.1 * proj  # a random branch is mostly outside the equivariant kernels
    # the layer's own kernel (and a scale-constant bias): zero to round-off
    layer.relaxation_kernel.assign(layer.kernel_value(tf.float64))
    layer.relaxation_bias.assign(np.tile([0.5, -1.0], 4))
    lie, proj = (float(v) for v in layer.branch_penalties(x))
    assert lie < 1e-24 * proj
    step, _ = (float(v) for v in layer.branch_penalties(x, method="step"))
    assert step > 1e-3 * proj  # the step defect of the same (equivariant-by-construction) kernel is not small


@pytest.mark.parametrize("penalty", ["step", "lie", "subspace"])
def test_fit_trains_the_branch_with_each_penalty(penalty):
    """In a compiled RelaxedModel train step (graph mode, float32) the penalties are finite and the branch moves."""
    from keras_relaxeq.training.model import RelaxedModel

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 2))
    y = ScaleLiftingConv2D(2, scale_penalty=penalty, activation="relu", name="lift")(inputs)
    outputs = keras.layers.Conv2D(2, 1)(ScalePooling()(y))
    model = RelaxedModel(inputs, outputs, lambda_lie=0.1, lambda_proj=0.1)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    x = np.random.default_rng(0).normal(size=(4, 16, 16, 2)).astype("float32")
    history = model.fit(x, x[..., ::-1], epochs=2, batch_size=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert history.history["lie_penalty"][-1] > 0.0 and history.history["projection_penalty"][-1] > 0.0
    assert float(tf.reduce_max(tf.abs(model.get_layer("lift").relaxation_kernel))) > 0.0  # zero-initialised


def test_velocity_magnitude_is_left_alone_by_the_action():
    """The action resamples the grid and keeps the vector values (docs/scale_equivariance.md).  A rescaling of the
    magnitudes (velocities in cells per step of a coarser grid) commutes only with bias-free, positively homogeneous
    stacks: checked here, with the biased stack as the negative control."""
    x = images((1, 12, 12, 2))
    for use_bias in (False, True):
        lift = ScaleLiftingConv2D(3, use_bias=use_bias, activation="relu", relaxed=False, dtype="float64")
        conv = ScaleConv2D(2, use_bias=use_bias, dtype="float64")
        lift(x)
        if use_bias:
            lift.bias.assign([0.5, -0.3, 0.2])
        y, y_half = conv(lift(x)), conv(lift(0.5 * x))
        error = float(tf.reduce_max(tf.abs(y_half - 0.5 * y)))
        assert (error < 1e-12) if not use_bias else (error > 1e-3)


@pytest.mark.parametrize("scale_size", [1, 2, 4])
def test_scale_conv_per_slice_convolutions_equal_the_block_kernel(scale_size):
    layer = ScaleConv2D(3, scale_size=scale_size, kernel_size=3, dtype="float64")
    x = images((2, 7, 7, 4, 2))
    y = layer(x)
    layer.bias.assign([0.1, -0.2, 0.3])
    y = layer(x)
    flat = tf.reshape(x, [2, 7, 7, 8])
    want = tf.reshape(tf.nn.conv2d(flat, layer.kernel_value(tf.float64), 1, "SAME"), [2, 7, 7, 4, 3]) + layer.bias
    np.testing.assert_allclose(y, want, atol=1e-12)
    # slice s reads slices s .. s + scale_size - 1 only: changing the last slice leaves the first outputs alone
    x2 = tf.concat([x[..., :3, :], 2 * x[..., 3:, :]], axis=3)
    changed = np.abs(layer(x2) - y).max(axis=(0, 1, 2, 4)) > 1e-9
    np.testing.assert_array_equal(changed, [s + scale_size - 1 >= 3 for s in range(4)])


def test_mixed_precision_runs_in_bfloat16_and_penalises_in_float32():
    x = tf.cast(images((1, 16, 16, 2)), tf.bfloat16)
    for penalty in ("step", "lie", "subspace"):
        layer = ScaleLiftingConv2D(2, dtype="mixed_bfloat16", scale_penalty=penalty)
        y = layer(x)
        assert y.dtype == tf.bfloat16 and layer.relaxation_kernel.dtype == "float32"
        layer.relaxation_kernel.assign(np.random.default_rng(1).normal(size=layer.relaxation_kernel.shape))
        lie, proj = layer.relaxation_penalties(x)
        assert lie.dtype == proj.dtype == tf.float32 and float(lie) > 0 and np.isfinite(float(proj))
    assert ScaleConv2D(2, dtype="mixed_bfloat16")(y).dtype == tf.bfloat16
