"""model.fit with the penalties and the schedule; projection; saving; resume; distribution."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_relaxeq as kr
from keras_relaxeq.layers import VNLeakyReLU, VNLinear, VNMeanPool, VNStdFeature, collect_relaxation_penalties
from keras_relaxeq.models import vn_classifier

NUM_POINTS = 24


def data(n=16, seed=0, classes=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, NUM_POINTS, 3)).astype("float32")
    x[: n // 2] *= np.array([2.0, 1.0, 0.5], "float32")  # two shape families, rotation-invariant labels
    y = (np.arange(n) >= n // 2).astype("int32") % classes
    return x, y


def small_model(relaxed=True, **kwargs):
    kwargs.setdefault("relaxation_initializer", "glorot_uniform")
    return vn_classifier(
        3, num_points=NUM_POINTS, channels=(6, 8, 8), k=4, relaxed=relaxed, dropout=0.0, hidden_units=8, **kwargs
    )


def tiny_model(relaxed=True):
    """A fast-to-trace relaxed model for the training-loop plumbing tests."""
    inp = keras.Input((NUM_POINTS, 3))
    h = keras.layers.Reshape((-1, 1, 3))(inp)
    h = VNLinear(4, relaxed=relaxed, relaxation_initializer="glorot_uniform")(h)
    h = VNLeakyReLU(4, use_batchnorm=False, relaxed=relaxed, relaxation_initializer="glorot_uniform")(h)
    h = VNMeanPool()(h)
    h = keras.layers.Lambda(lambda t: tf.norm(t, axis=-1))(h)
    return kr.RelaxedModel(inp, keras.layers.Dense(3)(h))


def compile_(model, lr=1e-2):
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def test_fit_logs_penalties_and_theta_and_trains_branches():
    keras.utils.set_random_seed(0)
    x, y = data()
    model = compile_(small_model(relaxation_initializer="zeros"))
    history = model.fit(
        x, y, epochs=3, batch_size=8, verbose=0, validation_data=(x, y), callbacks=[kr.ThetaScheduler("triangle")]
    )
    h = history.history
    assert h["theta"] == [0.0, 1.0, 0.0]
    assert all(v >= 0 for v in h["lie_penalty"]) and h["projection_penalty"][-1] > 0
    assert "val_lie_penalty" not in h
    # Zero-initialised branches received gradients from the task loss while theta > 0.
    kernels = [l.relaxation_kernel.numpy() for l in kr.layers.relaxed_layers(model)]
    assert max(np.abs(k).max() for k in kernels) > 0
    assert kr.get_theta(model) == 0.0


def test_training_loss_is_task_plus_sqrt_penalties():
    keras.utils.set_random_seed(1)
    x, y = data(8)
    model = compile_(small_model(lambda_lie=0.3, lambda_proj=0.2, penalty_scale="theta"))
    model(x[:2])
    kr.set_theta(model, 0.5)
    xt, yt = tf.constant(x), tf.constant(y)
    y_pred = model(xt, training=True)
    loss = float(model.compute_loss(x=xt, y=yt, y_pred=y_pred, training=True))
    with collect_relaxation_penalties() as col:
        y_pred2 = model(xt, training=True)
    lie, proj = (float(v) for v in col.totals())
    task = float(keras.losses.SparseCategoricalCrossentropy(from_logits=True)(yt, y_pred2))
    assert lie > 0 and proj > 0
    np.testing.assert_allclose(loss, task + 0.5 * (0.3 * np.sqrt(lie) + 0.2 * np.sqrt(proj)), rtol=1e-5)
    # Without a training forward pass there is nothing to add.
    y_eval = model(xt)
    task_eval = float(keras.losses.SparseCategoricalCrossentropy(from_logits=True)(yt, y_eval))
    assert float(model.compute_loss(x=xt, y=yt, y_pred=y_eval, training=False)) == pytest.approx(task_eval, rel=1e-5)


def test_compute_loss_adds_the_penalties_of_the_call_that_made_y_pred():
    """A training call's outputs carry that call's penalties: a later training call does not change what
    ``compute_loss`` adds for them, outputs of an inference call carry none, and the same holds in a graph."""
    keras.utils.set_random_seed(4)
    x, y = data(8)
    model = compile_(tiny_model())
    xa, xb, ya = tf.constant(x[:4]), tf.constant(3.0 * x[4:]), tf.constant(y[:4])
    y_a = model(xa, training=True)
    loss_a = float(model.compute_loss(x=xa, y=ya, y_pred=y_a, training=True))
    task_a = float(keras.losses.SparseCategoricalCrossentropy(from_logits=True)(ya, y_a))
    assert loss_a > task_a
    model(xb, training=True)  # another batch in between
    assert float(model.compute_loss(x=xa, y=ya, y_pred=y_a, training=True)) == pytest.approx(loss_a, rel=1e-6)
    y_inference = model(xa)
    assert float(model.compute_loss(x=xa, y=ya, y_pred=y_inference, training=True)) == pytest.approx(task_a, rel=1e-5)

    @tf.function
    def graph_loss(x_in, y_in):
        return model.compute_loss(x=x_in, y=y_in, y_pred=model(x_in, training=True), training=True)

    assert float(graph_loss(xa, ya)) == pytest.approx(loss_a, rel=1e-5)


def _fit_tiny(jit_compile):
    keras.utils.set_random_seed(5)
    x, y = data(16)
    model = tiny_model()
    model.compile(
        optimizer=keras.optimizers.SGD(0.05),
        jit_compile=jit_compile,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = model.fit(x, y, epochs=2, batch_size=8, verbose=0, shuffle=False).history
    return history, model.get_weights(), model.jit_compile


def test_fit_with_and_without_xla_adds_the_same_penalties():
    eager, eager_weights, eager_jit = _fit_tiny(False)
    xla, xla_weights, xla_jit = _fit_tiny(True)
    assert (eager_jit, xla_jit) == (False, True)
    assert min(eager["lie_penalty"]) > 0 and min(eager["projection_penalty"]) > 0
    for key in ("loss", "lie_penalty", "projection_penalty"):
        np.testing.assert_allclose(xla[key], eager[key], rtol=1e-4, err_msg=key)
    for a, b in zip(eager_weights, xla_weights):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def test_project_equals_relaxed_at_theta_zero_and_matches_plain_param_count():
    keras.utils.set_random_seed(2)
    x, _ = data(6)
    model = small_model()
    model(x)
    for layer in kr.layers.relaxed_layers(model):  # non-zero branches everywhere
        layer.relaxation_bias.assign(tf.random.normal(layer.relaxation_bias.shape))
    kr.set_theta(model, 0.0)
    projected = kr.project(model)
    assert not kr.has_relaxation_branches(projected)
    assert kr.has_relaxation_branches(model)
    np.testing.assert_allclose(projected.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert projected.count_params() == small_model(relaxed=False).count_params()
    assert model.count_params() > projected.count_params()
    kr.set_theta(model, 1.0)
    assert np.abs(projected.predict(x, verbose=0) - model.predict(x, verbose=0)).max() > 1e-3


def test_projected_model_is_invariant_after_training_with_theta_one():
    keras.utils.set_random_seed(3)
    x, y = data(16)
    model = compile_(small_model(relaxation_initializer="zeros"), lr=3e-2)
    model.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[kr.ThetaScheduler("constant", value=1.0)])
    assert min(np.abs(l.relaxation_kernel.numpy()).max() for l in kr.layers.relaxed_layers(model)) > 0
    probe = tf.constant(x[:6])
    # The relaxed model at theta = 1 has broken the symmetry: the check can fail ...
    with pytest.raises(AssertionError, match="Not equivariant"):
        kr.testing.assert_invariant(model, probe)
    # ... and the projection restores it exactly (up to float32 error).
    report = kr.testing.assert_invariant(kr.project(model), probe, num_samples=4)
    assert report.max_error < 1e-4 * max(report.scale, 1.0)


def test_project_recurses_through_nested_models_and_containers():
    @keras.saving.register_keras_serializable(package="tests")
    class Block(keras.layers.Layer):  # a user container holding relaxed layers
        def __init__(self, channels, relaxed=True, **kwargs):
            super().__init__(**kwargs)
            self.channels, self.relaxed = channels, relaxed
            self.lin = VNLinear(channels, relaxed=relaxed, relaxation_initializer="ones", name="lin")
            self.act = VNLeakyReLU(channels, relaxed=relaxed, relaxation_initializer="ones", name="act")

        def build(self, input_shape):
            self.lin.build(input_shape)
            self.act.build(self.lin.compute_output_shape(input_shape))

        def call(self, x, training=None):
            return self.act(self.lin(x), training=training)

        def get_config(self):
            return {**super().get_config(), "channels": self.channels, "relaxed": self.relaxed}

    inner = keras.Sequential([keras.Input((10, 2, 3)), Block(4, name="block"), VNMeanPool(name="pool")], name="inner")
    inp = keras.Input((10, 2, 3))
    feats, _ = VNStdFeature(name="std", relaxation_initializer="ones")(inner(inp))
    out = keras.layers.Dense(2)(keras.layers.Flatten()(feats))
    model = kr.RelaxedModel(inp, out)
    x = tf.random.normal([3, 10, 2, 3])
    model(x)
    assert len(kr.layers.relaxed_layers(model)) == 3 + 5  # block: lin, feat, dir; std: 2 x (feat, dir) + lin
    kr.set_theta(model, 0.0)
    projected = kr.project(model)
    assert kr.layers.relaxed_layers(projected) == []
    np.testing.assert_allclose(projected(x).numpy(), model(x).numpy(), atol=1e-5)
    kr.testing.assert_invariant(projected, x)


def test_keras_save_load_keeps_theta_weights_and_penalty_config(tmp_path):
    x, _ = data(4)
    model = small_model(lambda_lie=0.05, penalty_scale="theta")
    model(x)
    kr.set_theta(model, 0.37)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, kr.RelaxedModel)
    assert loaded.lambda_lie == 0.05 and loaded.penalty_scale == "theta"
    assert kr.get_theta(loaded) == pytest.approx(0.37)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    projected = kr.project(loaded)
    projected.save(tmp_path / "p.keras")
    reloaded = keras.saving.load_model(tmp_path / "p.keras")
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), projected.predict(x, verbose=0), atol=1e-6)


class _Interrupt(keras.callbacks.Callback):
    def __init__(self, at_epoch):
        super().__init__()
        self.at_epoch = at_epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.at_epoch:
            raise RuntimeError("simulated kill")


def test_backup_and_restore_resumes_epoch_and_theta(tmp_path):
    keras.utils.set_random_seed(4)
    x, y = data(8)
    model = compile_(tiny_model())
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(RuntimeError, match="simulated kill"):
        model.fit(
            x, y, epochs=5, batch_size=8, verbose=0, callbacks=[_Interrupt(3), kr.ThetaScheduler("triangle"), backup]
        )
    assert kr.get_theta(model) == pytest.approx(1.0)  # epoch 2 of 5 ran last
    fresh = compile_(tiny_model())
    history = fresh.fit(x, y, epochs=5, batch_size=8, verbose=0, callbacks=[kr.ThetaScheduler("triangle"), backup])
    assert history.epoch == [3, 4]  # resumed after the three finished epochs
    assert history.history["theta"] == [0.5, 0.0]
    assert kr.get_theta(fresh) == 0.0


def test_nan_inputs_get_a_clear_error():
    x, y = data(8)
    x[3, 5, 1] = np.nan
    model = compile_(tiny_model())
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or Inf"):
        model.fit(x, y, epochs=1, batch_size=8, verbose=0)


DISTRIBUTED_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, keras_relaxeq as kr
    from keras_relaxeq.layers import VNLinear, VNLeakyReLU, VNMeanPool

    def build():
        keras.utils.set_random_seed(0)
        inp = keras.Input((12, 2, 3))
        relax = dict(relaxation_initializer="glorot_uniform")
        h = VNLinear(4, name="lin", **relax)(inp)
        h = VNLeakyReLU(4, use_batchnorm=False, name="act", **relax)(h)
        h = VNMeanPool(name="pool")(h)
        out = keras.layers.Dense(2)(keras.layers.Flatten()(keras.layers.Lambda(lambda t: tf.norm(t, axis=-1))(h)))
        m = kr.RelaxedModel(inp, out, lambda_lie=0.5, lambda_proj=0.5)
        m.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return m

    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 12, 2, 3)).astype("float32")
    y = rng.integers(0, 2, 16).astype("int32")
    results = {}
    for name, strategy in [("single", tf.distribute.get_strategy()),
                           ("mirrored", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))]:
        with strategy.scope():
            model = build()
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
        h = model.fit(ds, epochs=2, verbose=0, callbacks=[kr.ThetaScheduler("constant", value=0.5)])
        results[name] = {"replicas": strategy.num_replicas_in_sync,
                         "weights": [w.tolist() for w in model.get_weights()],
                         "lie": h.history["lie_penalty"], "proj": h.history["projection_penalty"],
                         "loss": h.history["loss"], "theta": kr.get_theta(model)}
    json.dump(results, sys.stdout)
""")


def test_mirrored_strategy_on_two_logical_cpus_matches_single_device(tmp_path):
    script = tmp_path / "dist.py"
    script.write_text(DISTRIBUTED_SCRIPT)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    single, mirrored = res["single"], res["mirrored"]
    assert mirrored["replicas"] == 2 and single["replicas"] == 1
    # Penalties are summed over the global batch before the square root, so both runs
    # optimise the same objective and end with the same weights.
    for a, b in zip(single["weights"], mirrored["weights"]):
        np.testing.assert_allclose(np.array(b), np.array(a), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(mirrored["lie"], single["lie"], rtol=1e-4)
    np.testing.assert_allclose(mirrored["proj"], single["proj"], rtol=1e-4)
    np.testing.assert_allclose(mirrored["loss"], single["loss"], rtol=1e-4)
    assert mirrored["theta"] == single["theta"] == 0.5
