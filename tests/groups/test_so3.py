"""SO(3) generators, rotations and the vector representation."""

import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf

from keras_relaxeq.groups import (
    TrivialRep,
    VectorRep,
    axis_rotation,
    random_rotations,
    random_z_rotations,
    so3_generators,
    so3_generators_numpy,
    wigner_D,
)


def test_vector_generators_are_the_cross_product_matrices():
    L = so3_generators_numpy(1)
    v, w = np.random.default_rng(0).normal(size=(2, 3))
    for k in range(3):
        # L_k v = e_k x v
        np.testing.assert_allclose(L[k] @ v, np.cross(np.eye(3)[k], v), atol=1e-15)
    np.testing.assert_allclose(np.einsum("k,kij,j->i", w, L, v), np.cross(w, v), atol=1e-14)


@pytest.mark.parametrize("l", [0, 1, 2, 3])
def test_generators_commutation_and_casimir(l):
    g = so3_generators_numpy(l)
    assert g.shape == (3, 2 * l + 1, 2 * l + 1)
    for a, b, c in [(0, 1, 2), (1, 2, 0), (2, 0, 1)]:
        np.testing.assert_allclose(g[a] @ g[b] - g[b] @ g[a], g[c], atol=1e-12)
    np.testing.assert_allclose(-np.einsum("kij,kjl->il", g, g), l * (l + 1) * np.eye(2 * l + 1), atol=1e-12)
    np.testing.assert_allclose(g, -np.transpose(g, (0, 2, 1)), atol=1e-15)  # skew: orthogonal irreps


def test_exp_of_generator_is_axis_rotation_from_tensorflow_graphics():
    for k, axis in enumerate("xyz"):
        expected = axis_rotation(axis, 0.7, dtype=tf.float64).numpy()
        np.testing.assert_allclose(scipy.linalg.expm(0.7 * so3_generators_numpy(1)[k]), expected, atol=1e-12)


def test_degree_two_generators_act_on_quadratic_harmonics():
    L = so3_generators_numpy(1)
    G = so3_generators_numpy(2)
    s3 = np.sqrt(3)

    def y2(r):
        x, y, z = r
        return np.array([s3 * x * y, s3 * y * z, (3 * z * z - r @ r) / 2, s3 * x * z, s3 / 2 * (x * x - y * y)])

    rng = np.random.default_rng(1)
    w, r = rng.normal(size=(2, 3))
    rot = scipy.linalg.expm(np.einsum("k,kij->ij", w, L))
    d = scipy.linalg.expm(np.einsum("k,kij->ij", w, G))
    np.testing.assert_allclose(y2(rot @ r), d @ y2(r), atol=1e-12)
    np.testing.assert_allclose(wigner_D(2, rot[None]).numpy()[0], d, atol=1e-10)


def test_random_rotations_are_proper_orthogonal_and_seeded():
    r = random_rotations(64, seed=3, dtype=tf.float64).numpy()
    np.testing.assert_allclose(np.einsum("bij,bkj->bik", r, r), np.broadcast_to(np.eye(3), r.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-12)
    np.testing.assert_array_equal(r, random_rotations(64, seed=3, dtype=tf.float64).numpy())
    assert not np.allclose(r, random_rotations(64, seed=4, dtype=tf.float64).numpy())
    # Haar measure: E[R] = 0 (a biased sampler, e.g. uniform Euler angles, fails this).
    big = random_rotations(20000, seed=0, dtype=tf.float64).numpy()
    assert np.abs(big.mean(axis=0)).max() < 0.03
    z = random_z_rotations(8, seed=1, dtype=tf.float64).numpy()
    np.testing.assert_allclose(z[:, 2], np.broadcast_to([0, 0, 1], (8, 3)), atol=1e-12)


def test_vector_rep_structured_generators_match_dense():
    rep = VectorRep(4)
    v = tf.random.stateless_normal([5, 12], seed=[0, 1], dtype=tf.float64)
    dense = rep.generators(tf.float64)
    np.testing.assert_allclose(rep.apply_generators(v).numpy(), np.einsum("pj,kij->kpi", v, dense), atol=1e-13)
    np.testing.assert_allclose(
        rep.apply_generators(v, transpose=True).numpy(), np.einsum("pj,kji->kpi", v, dense), atol=1e-13
    )
    assert np.count_nonzero(TrivialRep(2, 3).generators_numpy()) == 0


def test_vector_rep_transform_per_sample_and_shared():
    x = tf.random.stateless_normal([3, 5, 2, 3], seed=[2, 2], dtype=tf.float64)
    r = random_rotations(3, seed=9, dtype=tf.float64)
    rep = VectorRep(2)
    per_sample = rep.transform(r, x).numpy()
    for b in range(3):
        np.testing.assert_allclose(per_sample[b], x.numpy()[b] @ r.numpy()[b].T, atol=1e-13)
    np.testing.assert_allclose(rep.transform(r[0], x).numpy(), x.numpy() @ r.numpy()[0].T, atol=1e-13)


def test_vector_rep_shape_check_names_expected_shape():
    with pytest.raises(ValueError, match=r"\[batch, \.\.\., 2, 3\]"):
        VectorRep(2).check((4, 10, 2, 4))
    with pytest.raises(ValueError, match="non-negative integer"):
        so3_generators(-1)
