"""``TorchBatchNormalization``: torch's ``nn.BatchNorm`` training statistics in a Keras layer."""

import keras
import numpy as np
import pytest

from keras_relaxeq.layers import TorchBatchNormalization, VNBatchNorm
from keras_relaxeq.testing import ScaleAction, run_layer_test


def numpy_batchnorm(x, gamma, beta, epsilon):
    x = x.astype("float64")
    mean, var = x.mean(axis=0), x.var(axis=0)
    return gamma * (x - mean) / np.sqrt(var + epsilon) + beta


@pytest.mark.parametrize("unbiased", [True, False])
def test_moving_variance_update(unbiased):
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, size=(12, 5)).astype("float32")  # 12 values per channel: n / (n - 1) = 1.09
    bn = TorchBatchNormalization(unbiased_moving_variance=unbiased)
    bn(x, training=True)
    x64 = x.astype("float64")
    variance = x64.var(axis=0, ddof=1 if unbiased else 0)  # torch: running_var from the unbiased estimate
    np.testing.assert_allclose(bn.moving_variance.numpy(), 0.9 * 1.0 + 0.1 * variance, rtol=1e-6)
    np.testing.assert_allclose(bn.moving_mean.numpy(), 0.1 * x64.mean(axis=0), rtol=1e-6)


def test_training_output_uses_biased_batch_variance_in_float64():
    rng = np.random.default_rng(1)
    # 10^5 values per channel far from 0 (as vector norms are): float32 sums lose ~1e-6 of the mean
    x = (1000.0 + rng.normal(size=(100_000, 2))).astype("float32")
    bn = TorchBatchNormalization()
    bn.build(x.shape)
    bn.gamma.assign([1.5, 0.5])
    bn.beta.assign([0.1, -0.2])
    got = bn(x, training=True).numpy()
    want = numpy_batchnorm(x, np.array([1.5, 0.5]), np.array([0.1, -0.2]), bn.epsilon)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)  # float32 rounding of the output only


def test_inference_and_float64_inputs():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(8, 3, 4))
    bn = TorchBatchNormalization(dtype="float64")
    out = bn(x, training=True).numpy()
    want = numpy_batchnorm(x.reshape(-1, 4), 1.0, 0.0, bn.epsilon).reshape(x.shape)
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(bn.moving_variance.numpy(), 0.9 + 0.1 * x.reshape(-1, 4).var(axis=0, ddof=1), rtol=1e-12)
    inference = bn(x, training=False).numpy()  # moving statistics
    mean, var = bn.moving_mean.numpy(), bn.moving_variance.numpy()
    np.testing.assert_allclose(inference, (x - mean) / np.sqrt(var + bn.epsilon), rtol=1e-12, atol=1e-12)


def test_config_round_trip_and_vn_batchnorm_uses_it():
    bn = TorchBatchNormalization(momentum=0.8, unbiased_moving_variance=False, float64_statistics=False)
    again = TorchBatchNormalization.from_config(bn.get_config())
    assert (again.momentum, again.unbiased_moving_variance, again.float64_statistics) == (0.8, False, False)
    restored = keras.layers.deserialize(keras.layers.serialize(bn))
    assert isinstance(restored, TorchBatchNormalization)
    assert isinstance(VNBatchNorm(relaxed=False).batchnorm, TorchBatchNormalization)
    with pytest.raises(ValueError, match="renorm"):
        TorchBatchNormalization(renorm=True)


@pytest.mark.parametrize("kwargs", [{}, dict(momentum=0.8, unbiased_moving_variance=False, float64_statistics=False)])
def test_run_layer_test(kwargs):
    """Build, call and the config / serialization / .keras round trips; in training mode the normalised output
    is scale-invariant (degree 1 -> 0, up to epsilon)."""
    result = run_layer_test(TorchBatchNormalization, kwargs, (12, 5), group=ScaleAction(1, 0), training=True)
    assert result.relaxed_layer is None and result.report.passed
    result = run_layer_test(VNBatchNorm, {}, (4, 6, 5, 3), group="O3", training=True)
    assert result.report.passed
