"""The position-aware relaxation branch of the Equiformer feed-forward network (RelaxedGatedFeedForward):
the plain map is equivariant, the branch is not, its Lie-derivative penalty (forward mode and double backward)
and the finite-rotation penalty agree with each other at small angles, and an equivariant map has zero
finite-rotation penalty (control)."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_relaxeq.groups import Irreps, IrrepsRep
from keras_relaxeq.layers.equiformer import RelaxedGatedFeedForward, finite_rotation_penalty, small_rotations
from keras_relaxeq.layers.penalties import collect_relaxation_penalties
from keras_relaxeq.testing import assert_equivariant, check_equivariance

NODE = "4x0e+2x1o+1x2e"
K = 3


def _inputs(seed=0, batch=2, atoms=5):
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.normal(size=(batch, atoms, Irreps(NODE).dim)))
    attrs = tf.constant(np.eye(K)[rng.integers(0, K, size=(batch, atoms))])
    pos = rng.normal(size=(batch, atoms, 3))
    return x, attrs, tf.constant(pos - pos.mean(1, keepdims=True))


def _layer(**kwargs):
    keras.utils.set_random_seed(0)
    kwargs.setdefault("relaxation_initializer", "glorot_uniform")
    layer = RelaxedGatedFeedForward(NODE, K, hidden_multiplier=2.0, dtype="float64", **kwargs)
    layer(_inputs())
    return layer


REPS = (IrrepsRep(NODE), "invariant", "vector")


def test_branch_shape_and_equivariance_of_the_plain_map():
    layer = _layer()
    d_in = Irreps(NODE).dim + K + 3
    assert layer.relaxation_hidden_kernel.shape == (d_in, 4 * d_in)
    assert layer.relaxation_kernel.shape == (4 * d_in, Irreps(NODE).dim)
    inputs = _inputs(1)
    assert not check_equivariance(layer, inputs, REPS, IrrepsRep(NODE), group="SO3").passed
    layer.theta.assign(0.0)
    assert_equivariant(layer, inputs, REPS, IrrepsRep(NODE), group="O3")
    plain = RelaxedGatedFeedForward(NODE, K, hidden_multiplier=2.0, relaxed=False, dtype="float64")
    plain(inputs)
    assert not plain.relaxation_variables and plain.count_params() == layer.feed_forward.count_params()
    # the default fc2 initialisation is small (Glorot times 0.01)
    small = RelaxedGatedFeedForward(NODE, K, dtype="float64")
    small(inputs)
    assert np.abs(small.relaxation_kernel.numpy()).max() < 0.01


def test_lie_penalty_jvp_tape_and_finite_rotation_agree():
    inputs = _inputs(2)
    lie_jvp, n_jvp = _layer(lie_method="jvp").branch_penalties(inputs)
    lie_tape, n_tape = _layer(lie_method="tape").branch_penalties(inputs)
    np.testing.assert_allclose(lie_tape.numpy(), lie_jvp.numpy(), rtol=1e-9)
    np.testing.assert_allclose(n_tape.numpy(), n_jvp.numpy(), rtol=1e-12)
    assert lie_jvp.numpy() > 0
    layer = _layer(equivariance_penalty="finite_rotation", rotation_degrees=1.0)
    with collect_relaxation_penalties() as collector:
        layer(inputs)
    finite, n = collector.totals(dtype=tf.float64)
    np.testing.assert_allclose(n.numpy(), n_jvp.numpy(), rtol=1e-12)
    # small angles: E||R(gx) - gR(x)||^2 ~ angle^2 / 3 * LD (random axes: about 10% sampling noise for 10 rows)
    ratio = finite.numpy() / (math.radians(1.0) ** 2 / 3 * lie_jvp.numpy())
    assert 0.5 < ratio < 2.0, ratio


def test_finite_rotation_penalty_control_and_rotations():
    g = small_rotations(6, 5.0, tf.float64, seed=[1, 2]).numpy()
    np.testing.assert_allclose(np.einsum("nij,nkj->nik", g, g), np.broadcast_to(np.eye(3), g.shape), atol=1e-12)
    angles = np.degrees(np.arccos((np.trace(g, axis1=1, axis2=2) - 1) / 2))
    np.testing.assert_allclose(angles, 5.0, rtol=1e-9)
    rep = IrrepsRep(NODE)
    x = tf.constant(np.random.default_rng(0).normal(size=(10, rep.dim)))
    equivariant = lambda v: 2.0 * v  # noqa: E731
    zero, n = finite_rotation_penalty(equivariant, x, rep, rep, 5.0, seed=[0, 1])
    assert zero.numpy() < 1e-20 and n.numpy() > 0
    not_equivariant = lambda v: v * tf.constant(np.linspace(0.5, 1.5, rep.dim))  # noqa: E731
    assert finite_rotation_penalty(not_equivariant, x, rep, rep, 5.0, seed=[0, 1])[0].numpy() > 1e-4


def test_config_round_trip_and_bad_penalty():
    layer = _layer(equivariance_penalty="finite_rotation")
    clone = RelaxedGatedFeedForward.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    with pytest.raises(ValueError, match="equivariance_penalty"):
        RelaxedGatedFeedForward(NODE, K, equivariance_penalty="dihedral")
