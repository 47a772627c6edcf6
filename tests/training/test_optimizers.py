"""Coupled-L2 optimizers (torch's ``weight_decay``): the update rules against numpy transcriptions of
``torch.optim.Adam`` / ``SGD``, serialization, XLA and ``tf.distribute``."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_relaxeq.training import SGDL2, AdamL2, CoupledL2, with_coupled_l2

STEPS = 4
ADAM_LR, SGD_LR = 2.0**-10, 2.0**-5  # exact in float32 (the optimizers keep the rate in float32)


def torch_adam(w, grads, lr, l2, beta_1=0.9, beta_2=0.999, eps=1e-8):
    """``torch.optim.Adam(weight_decay=l2)`` (``_single_tensor_adam``), float64, one weight."""
    m, v = np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        g = g + l2 * w
        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g * g
        denom = np.sqrt(v) / np.sqrt(1 - beta_2**t) + eps
        w = w - lr / (1 - beta_1**t) * m / denom
    return w


def torch_sgd(w, grads, lr, l2, momentum=0.0, nesterov=False):
    """``torch.optim.SGD(momentum, weight_decay=l2, nesterov)``, float64, one weight."""
    buf = None
    for g in grads:
        g = g + l2 * w
        if momentum:
            buf = g if buf is None else momentum * buf + g
            g = g + momentum * buf if nesterov else buf
        w = w - lr * g
    return w


def apply_steps(optimizer, weights, grads):
    """Apply ``grads[t][i]`` to the variables made from ``weights`` with ``optimizer``; the final values."""
    variables = [keras.Variable(w, dtype=str(w.dtype), name=f"w{i}") for i, w in enumerate(weights)]
    for step in grads:
        optimizer.apply_gradients(zip([tf.constant(g) for g in step], variables))
    return [v.numpy() for v in variables]


def problem(seed=0, dtype="float64"):
    rng = np.random.default_rng(seed)
    weights = [rng.normal(size=(3, 4)).astype(dtype), rng.normal(size=(4,)).astype(dtype)]
    # gradient scales from 1e-9 (where the epsilon placement matters) to 1
    grads = [
        [rng.normal(size=w.shape).astype(dtype) * 10.0 ** rng.uniform(-9, 0, size=w.shape) for w in weights]
        for _ in range(STEPS)
    ]
    return weights, grads


@pytest.mark.parametrize("l2", [0.0, 1e-2])
def test_adam_l2_is_torch_adam_with_weight_decay(l2):
    weights, grads = problem()
    got = apply_steps(AdamL2(learning_rate=ADAM_LR, l2=l2), weights, grads)
    for i, w in enumerate(weights):
        want = torch_adam(w, [g[i] for g in grads], ADAM_LR, l2)
        np.testing.assert_allclose(got[i], want, rtol=1e-12, atol=1e-15)


def test_keras_epsilon_placement_is_keras_adam_plus_l2():
    weights, grads = problem(1)
    keras_adam = apply_steps(keras.optimizers.Adam(1e-3, epsilon=1e-7), weights, grads)
    no_l2 = apply_steps(AdamL2(1e-3, epsilon=1e-7, torch_epsilon=False), weights, grads)
    for a, b in zip(keras_adam, no_l2):
        np.testing.assert_array_equal(a, b)
    # with l2 it is Keras' Adam on grad + l2 * w: differs from plain Adam, and from the torch placement
    with_l2 = apply_steps(AdamL2(1e-3, epsilon=1e-7, torch_epsilon=False, l2=0.1), weights, grads)
    torch_like = apply_steps(AdamL2(1e-3, epsilon=1e-7, l2=0.1), weights, grads)
    assert not np.allclose(with_l2[0], keras_adam[0], rtol=0, atol=1e-9)
    assert not np.allclose(with_l2[0], torch_like[0], rtol=0, atol=1e-9)


@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.875, False), (0.875, True)])  # 0.875: exact in float32
def test_sgd_l2_is_torch_sgd_with_weight_decay(momentum, nesterov):
    weights, grads = problem(2)
    got = apply_steps(SGDL2(SGD_LR, momentum=momentum, nesterov=nesterov, l2=0.1), weights, grads)
    for i, w in enumerate(weights):
        want = torch_sgd(w, [g[i] for g in grads], SGD_LR, 0.1, momentum, nesterov)
        np.testing.assert_allclose(got[i], want, rtol=1e-12, atol=1e-14)


def test_l2_exclude_by_name():
    weights, grads = problem(3)
    optimizer = SGDL2(SGD_LR, l2=0.5, l2_exclude=["w1"])
    got = apply_steps(optimizer, weights, grads)
    np.testing.assert_allclose(got[0], torch_sgd(weights[0], [g[0] for g in grads], SGD_LR, 0.5), rtol=1e-12)
    np.testing.assert_allclose(got[1], torch_sgd(weights[1], [g[1] for g in grads], SGD_LR, 0.0), rtol=1e-12)


def test_config_round_trip_and_keras_file(tmp_path):
    optimizer = AdamL2(2e-3, l2=1e-4, l2_exclude=["gamma", "beta"], epsilon=1e-6, torch_epsilon=False)
    config = optimizer.get_config()
    again = AdamL2.from_config(config)
    assert again.get_config() == config
    assert (again.l2, again.l2_exclude, again.torch_epsilon) == (1e-4, ["gamma", "beta"], False)
    assert keras.optimizers.deserialize(keras.optimizers.serialize(SGDL2(0.1, momentum=0.5, l2=0.3))).l2 == 0.3

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(np.ones((4, 3)), np.zeros((4, 2)), verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.optimizer, AdamL2)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _fit_weights(jit_compile, optimizer):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5,))
    h = keras.layers.Dense(8, activation="tanh")(inputs)
    h = keras.layers.BatchNormalization()(h)
    model = keras.Model(inputs, keras.layers.Dense(1)(h))
    model.compile(optimizer=optimizer, loss="mse", jit_compile=jit_compile)
    rng = np.random.default_rng(0)
    model.fit(rng.normal(size=(32, 5)), rng.normal(size=(32, 1)), batch_size=8, epochs=2, verbose=0, shuffle=False)
    return [w.numpy() for w in model.trainable_weights]


def test_xla_fit_matches_eager_tf_function():
    plain = _fit_weights(False, AdamL2(1e-2, l2=0.1))
    xla = _fit_weights(True, AdamL2(1e-2, l2=0.1))
    without = _fit_weights(False, AdamL2(1e-2, l2=0.0))
    # XLA fuses differently: float32 rounding only (8 updates of size <= 1e-2)
    for a, b in zip(plain, xla):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert max(np.abs(a - b).max() for a, b in zip(plain, without)) > 1e-3  # the term does act


def test_with_coupled_l2_converts_adam_and_sgd():
    adam = with_coupled_l2(keras.optimizers.Adam(3e-3, beta_1=0.8, epsilon=1e-6), 1e-4)
    assert isinstance(adam, AdamL2)
    assert (adam.beta_1, adam.epsilon, adam.l2, adam.torch_epsilon) == (0.8, 1e-6, 1e-4, False)
    assert float(adam.learning_rate) == pytest.approx(3e-3)
    sgd = with_coupled_l2("sgd", 0.5, l2_exclude=["bias"])
    assert isinstance(sgd, SGDL2) and sgd.l2 == 0.5 and sgd.l2_exclude == ["bias"]
    with pytest.raises(ValueError, match="supports keras.optimizers.Adam and SGD"):
        with_coupled_l2(keras.optimizers.RMSprop(), 1e-4)
    with pytest.raises(ValueError, match="weight_decay"):
        with_coupled_l2(keras.optimizers.Adam(weight_decay=1e-4), 1e-4)
    with pytest.raises(ValueError, match="l2 must be >= 0"):
        AdamL2(l2=-1.0)


def test_mixin_on_another_optimizer():
    class RMSpropL2(CoupledL2, keras.optimizers.RMSprop):
        pass

    weights, grads = problem(4)
    zero_grads = [[np.zeros_like(g) for g in step] for step in grads]
    # with zero loss gradients only the L2 term drives the update, so the weights shrink
    got = apply_steps(RMSpropL2(1e-2, l2=1.0), weights, zero_grads)
    assert all(np.abs(g).sum() < np.abs(w).sum() for g, w in zip(got, weights))
    unchanged = apply_steps(keras.optimizers.RMSprop(1e-2), weights, zero_grads)
    for u, w in zip(unchanged, weights):
        np.testing.assert_array_equal(u, w)


DISTRIBUTED_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from keras_relaxeq.training import AdamL2

    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 5)).astype("float32")
    y = rng.normal(size=(16, 1)).astype("float32")
    results = {}
    for name, strategy in [("single", tf.distribute.get_strategy()),
                           ("mirrored", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))]:
        with strategy.scope():
            keras.utils.set_random_seed(0)
            inputs = keras.Input((5,))
            model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Dense(8, activation="tanh")(inputs)))
            model.compile(optimizer=AdamL2(1e-2, l2=0.5), loss="mse")
        model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(16), epochs=3, verbose=0)
        results[name] = [w.tolist() for w in model.get_weights()]
    json.dump(results, sys.stdout)
""")


def test_mirrored_strategy_matches_single_device(tmp_path):
    script = tmp_path / "dist.py"
    script.write_text(DISTRIBUTED_SCRIPT)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    single, mirrored = res["single"], res["mirrored"]
    for a, b in zip(single, mirrored):  # same global batch, gradients summed over replicas
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
