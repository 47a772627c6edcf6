"""Theta schedules and the ThetaScheduler callback."""

import numpy as np
import pytest

from keras_relaxeq.training.schedules import ThetaScheduler, cosine, decay, get_schedule, triangle


@pytest.mark.parametrize("epochs", [2, 5, 10, 11, 200])
def test_triangle_rises_then_ends_at_exactly_zero(epochs):
    values = [triangle(e, epochs) for e in range(epochs)]
    assert values[0] == 0.0 and values[-1] == 0.0
    assert max(values) == pytest.approx(1.0 if epochs % 2 == 1 else 1.0 - 1.0 / (epochs - 1))
    peak = int(np.argmax(values))  # first of the (one or two) top epochs
    rising, falling = np.diff(values[: peak + 1]), np.diff(values[peak + 1 :])
    assert np.all(rising > 0) and np.all(falling < 0)
    assert values[peak + 1] <= values[peak]


def test_triangle_values():
    np.testing.assert_allclose([triangle(e, 5) for e in range(5)], [0.0, 0.5, 1.0, 0.5, 0.0])
    assert triangle(0, 1) == 0.0


def test_decay_and_cosine_values():
    np.testing.assert_allclose([decay(e, 5) for e in range(5)], [1.0, 1.0, 1.0, 0.5, 0.0])
    np.testing.assert_allclose([cosine(e, 3) for e in range(3)], [1.0, 0.5, 0.0], atol=1e-12)
    assert get_schedule("constant", 10, value=0.1)(7) == 0.1


def test_callable_schedules_and_errors():
    assert get_schedule(lambda e: 0.5**e, 4)(2) == 0.25
    assert get_schedule(lambda e, n: e / n, 4)(2) == 0.5
    with pytest.raises(ValueError, match="Unknown theta schedule"):
        get_schedule("linear", 4)
    with pytest.raises(ValueError, match="Unknown theta schedule"):
        ThetaScheduler("linear")
    with pytest.raises(ValueError, match="epochs >= 1"):
        get_schedule("triangle", 0)


def test_per_step_theta_is_fractional_epoch():
    cb = ThetaScheduler("triangle", epochs=5, per_step=True)
    assert cb.theta_at(0.5) == pytest.approx(0.25)
    assert cb.theta_at(4) == 0.0


def _relaxed_model():
    import keras

    from keras_relaxeq.layers import VNLinear

    inputs = keras.Input((5, 1, 3))
    return keras.Model(inputs, VNLinear(2, relaxed=True)(inputs))


def _start(cb, epochs, steps=4):
    cb.set_model(_relaxed_model())
    cb.set_params({"epochs": epochs, "steps": steps, "verbose": 0})
    cb.on_train_begin()


@pytest.mark.parametrize(
    "schedule, epochs, kwargs",
    [
        ("triangle", 2, {}),
        ("triangle", 1, {"per_step": True}),
        ("decay", 1, {}),
        ("cosine", 1, {}),
        ("constant", 5, {"value": 0.0}),
        (lambda epoch: 0.0, 4, {}),
    ],
)
def test_schedule_that_is_zero_for_the_whole_run_warns(schedule, epochs, kwargs):
    with pytest.warns(UserWarning, match=f"theta is 0 for the whole {epochs}-epoch run"):
        _start(ThetaScheduler(schedule, **kwargs), epochs)


@pytest.mark.parametrize(
    "schedule, epochs, kwargs",
    [
        ("triangle", 3, {}),
        ("triangle", 2, {"per_step": True}),
        ("decay", 2, {}),
        ("constant", 1, {}),
        (lambda epoch: 0.0 if epoch < 3 else 0.5, 4, {}),
    ],
)
def test_schedule_that_acts_does_not_warn(schedule, epochs, kwargs, recwarn):
    _start(ThetaScheduler(schedule, **kwargs), epochs)
    assert not [w for w in recwarn if "theta is 0" in str(w.message)]


def test_per_step_triangle_over_two_epochs_reaches_one_in_the_first_epoch():
    cb = ThetaScheduler("triangle", per_step=True)
    _start(cb, epochs=2, steps=4)
    thetas = []
    for epoch in range(2):
        cb.on_epoch_begin(epoch)
        for batch in range(4):
            cb.on_train_batch_begin(batch)
            thetas.append(cb._layers[0].theta.numpy())
    np.testing.assert_allclose(thetas, [0.0, 0.5, 1.0, 0.5, 0.0, 0.0, 0.0, 0.0])
