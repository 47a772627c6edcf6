"""keras_relaxeq.testing: representations given as names or irreps, invariance reports, E(3) with translations."""

import numpy as np
import pytest
import tensorflow as tf

from keras_relaxeq.groups import Irreps
from keras_relaxeq.testing import assert_equivariant, assert_invariant, check_equivariance, check_invariance


def vectors(*shape, seed=0):
    return tf.constant(np.random.default_rng(seed).normal(size=shape + (3,)), tf.float64)


def norm_and_vector(v):
    """``1x1o -> 1x0e+1x1o``: the length and the vector itself."""
    return tf.concat([tf.norm(v, axis=-1, keepdims=True), v], axis=-1)


def cross(inputs):
    return tf.linalg.cross(inputs[0], inputs[1])


@pytest.mark.parametrize("irreps_out", ["1x0e+1x1o", "0e + 1o", Irreps("1x0e+1x1o")])
def test_irreps_strings_and_objects_are_representations(irreps_out):
    v = vectors(6)
    report = assert_equivariant(norm_and_vector, v, "1x1o", irreps_out, group="O3")
    assert report.max_error < 1e-12
    # the same function with the blocks declared in the other order is not equivariant
    assert not check_equivariance(norm_and_vector, v, "1x1o", "1x1o+1x0e", group="O3").passed


def test_irreps_parity_is_checked_under_o3():
    a, b = vectors(6, seed=1), vectors(6, seed=2)
    assert_equivariant(cross, [a, b], ["1o", "1o"], "1x1e", group="O3")  # the cross product is a pseudovector
    assert_equivariant(cross, [a, b], ["1o", "1o"], "1x1o", group="SO3")  # rotations cannot tell them apart
    with pytest.raises(AssertionError, match="Not equivariant"):
        assert_equivariant(cross, [a, b], ["1o", "1o"], "1x1o", group="O3")


def test_unknown_representation_says_what_to_pass():
    with pytest.raises(ValueError, match=r"'vector', 'position' .*irreps such as '1x0e\+1x1o'"):
        check_equivariance(tf.identity, vectors(2), "spinor", "vector")


def test_check_invariance_needs_no_representations():
    x = vectors(4, 7)
    report = check_invariance(lambda t: tf.norm(t, axis=-1), x)
    assert report.passed and report.max_error < 1e-12 and report.num_samples == 3
    assert not check_invariance(lambda t: t[..., 0], x).passed
    with pytest.raises(ValueError, match=r"check_invariance\(fn, x\)"):
        check_equivariance(lambda t: tf.norm(t, axis=-1), x)


def centred(x):
    return x - tf.reduce_mean(x, axis=1, keepdims=True)


def test_e3_translates_positions_and_not_vectors():
    x = vectors(4, 5) + 10.0
    assert_equivariant(centred, x, "position", "vector", group="E3")  # differences of positions
    assert_equivariant(tf.identity, x, "position", "position", group="SE3")
    # a translation moves a position output: declared as a vector it fails, and 2x is no E(3) map
    assert not check_equivariance(tf.identity, x, "position", "vector", group="E3").passed
    assert check_equivariance(lambda t: 2.0 * t, x, "position", "position", group="O3").passed
    assert not check_equivariance(lambda t: 2.0 * t, x, "position", "position", group="E3").passed
    assert_invariant(lambda t: tf.norm(centred(t), axis=-1), x, "position", group="E3")


def test_e3_with_several_inputs_and_float32():
    loc, vel = tf.cast(vectors(3, 5, seed=3), tf.float32), tf.cast(vectors(3, 5, seed=4), tf.float32)
    charges = tf.constant(np.random.default_rng(5).choice([-1.0, 1.0], size=(3, 5, 1)), tf.float32)

    def step(inputs):
        return inputs["loc"] + 0.1 * inputs["charges"] * inputs["vel"]

    reps = {"loc": "position", "vel": "vector", "charges": "invariant"}
    report = assert_equivariant(step, {"loc": loc, "vel": vel, "charges": charges}, reps, "position", group="E3")
    assert report.group == "E3"
    bad = dict(reps, vel="position")  # a translated velocity moves the output by 0.1 t too much
    assert not check_equivariance(
        step, {"loc": loc, "vel": vel, "charges": charges}, bad, "position", group="E3"
    ).passed


def test_e3_without_a_position_input_is_an_error():
    with pytest.raises(ValueError, match="declare the coordinates 'position'"):
        check_equivariance(tf.identity, vectors(2), "vector", "vector", group="E3")
    with pytest.raises(ValueError, match="Unknown group"):
        check_equivariance(tf.identity, vectors(2), "vector", "vector", group="SE2")


def test_t3_translates_positions_only():
    x = vectors(4, 5) + 10.0
    assert_equivariant(centred, x, "position", "vector", group="T3")  # differences ignore translations

    def shifted(t):  # follows translations, not rotations: adds a scalar to every coordinate
        return t + tf.reduce_sum(centred(t) ** 2, axis=-1, keepdims=True)

    assert_equivariant(shifted, x, "position", "position", group="T3")
    assert not check_equivariance(shifted, x, "position", "position", group="E3").passed
    report = check_equivariance(tf.identity, x, "position", "vector", group="T3", num_samples=1)
    assert not report.passed and report.group == "T3"


def test_e3_equivariance_errors_by_kind_of_move():
    from keras_relaxeq.testing import e3_equivariance_errors

    rng = np.random.default_rng(0)
    loc, vel = rng.normal(size=(3, 5, 3)), rng.normal(size=(3, 5, 3))
    charges = rng.choice([-1.0, 1.0], size=(3, 5, 1))

    def step(loc, vel, charges):
        return loc + 0.1 * charges * vel

    errors = e3_equivariance_errors(step, loc, vel, charges, seed=1, translation_scale=2.0)
    assert errors["max_abs"] < 1e-5 and errors["num_systems"] == 3
    assert {"rotation_max_abs", "reflection_max_abs", "translation_max_abs"} <= set(errors)
    shifted = e3_equivariance_errors(
        lambda loc, vel, charges: loc - loc.mean(axis=1, keepdims=True), loc, vel, charges, translation_scale=2.0
    )
    assert shifted["translation_max_abs"] > 0.1  # a centred output does not follow the translation
