"""Real Clebsch-Gordan coefficients computed from the so3_generators constraint."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from keras_relaxeq.groups import (
    clebsch_gordan,
    clebsch_gordan_for_irreps,
    random_rotations,
    so3_generators_numpy,
    spherical_harmonics,
    wigner_D,
)

TRIPLES = [(l1, l2, l3) for l1, l2, l3 in itertools.product(range(3), repeat=3)]
ALLOWED = [t for t in TRIPLES if abs(t[0] - t[1]) <= t[2] <= t[0] + t[1]]
FORBIDDEN = [t for t in TRIPLES if t not in ALLOWED]


@pytest.fixture(scope="module")
def rotations_and_d():
    rots = random_rotations(5, seed=123, dtype=tf.float64)
    return rots.numpy(), {l: wigner_D(l, rots).numpy() for l in range(3)}


def test_allowed_and_forbidden_lists_are_what_we_think():
    assert len(TRIPLES) == 27 and len(ALLOWED) == 15 and (2, 0, 1) in FORBIDDEN and (1, 1, 1) in ALLOWED


@pytest.mark.parametrize("l1, l2, l3", ALLOWED)
def test_equivariance_float64(l1, l2, l3, rotations_and_d):
    c = clebsch_gordan(l1, l2, l3)
    assert c.dtype == np.float64 and c.shape == (2 * l1 + 1, 2 * l2 + 1, 2 * l3 + 1)
    np.testing.assert_allclose(np.linalg.norm(c), 1.0, atol=1e-13)
    _, d = rotations_and_d
    rng = np.random.default_rng(l1 * 9 + l2 * 3 + l3)
    x = rng.normal(size=(5, 2 * l1 + 1))
    y = rng.normal(size=(5, 2 * l2 + 1))
    lhs = np.einsum("ijk,bi,bj->bk", c, np.einsum("bij,bj->bi", d[l1], x), np.einsum("bij,bj->bi", d[l2], y))
    rhs = np.einsum("bkl,bl->bk", d[l3], np.einsum("ijk,bi,bj->bk", c, x, y))
    np.testing.assert_allclose(lhs, rhs, atol=1e-10)
    # and the infinitesimal constraint itself
    g1, g2, g3 = (so3_generators_numpy(l) for l in (l1, l2, l3))
    for a in range(3):
        res = (
            np.einsum("ai,ajk->ijk", g1[a], c) + np.einsum("bj,ibk->ijk", g2[a], c) - np.einsum("kl,ijl->ijk", g3[a], c)
        )
        np.testing.assert_allclose(res, 0, atol=1e-12)


def test_a_wrong_tensor_fails_the_equivariance_check(rotations_and_d):
    # guard against a vacuous check: a generic tensor is not equivariant
    _, d = rotations_and_d
    c = np.random.default_rng(0).normal(size=(5, 3, 5))
    x, y = np.ones(5), np.arange(3.0)
    lhs = np.einsum("ijk,i,j->k", c, d[2][0] @ x, d[1][0] @ y)
    rhs = d[2][0] @ np.einsum("ijk,i,j->k", c, x, y)
    assert np.abs(lhs - rhs).max() > 1e-3


@pytest.mark.parametrize("l1, l2, l3", FORBIDDEN + [(0, 0, 3), (3, 0, 1), (1, 3, 5)])
def test_forbidden_triples_are_zero(l1, l2, l3):
    c = clebsch_gordan(l1, l2, l3)
    assert c.shape == (2 * l1 + 1, 2 * l2 + 1, 2 * l3 + 1)
    assert np.all(c == 0)


def test_orthogonality_and_completeness():
    for l1, l2 in itertools.product(range(3), repeat=2):
        d12 = (2 * l1 + 1) * (2 * l2 + 1)
        total = np.zeros((d12, d12))
        for l3 in range(abs(l1 - l2), l1 + l2 + 1):
            c = clebsch_gordan(l1, l2, l3).reshape(d12, 2 * l3 + 1)
            # sum_ij C_ijk C_ijk' = delta_kk' / (2 l3 + 1)
            np.testing.assert_allclose(c.T @ c, np.eye(2 * l3 + 1) / (2 * l3 + 1), atol=1e-12)
            # different l3 are orthogonal
            for other in range(abs(l1 - l2), l3):
                c_other = clebsch_gordan(l1, l2, other).reshape(d12, -1)
                np.testing.assert_allclose(c.T @ c_other, 0, atol=1e-12)
            total += (2 * l3 + 1) * c @ c.T
        # l1 (x) l2 = sum of l3: the rescaled maps form an orthogonal change of basis
        np.testing.assert_allclose(total, np.eye(d12), atol=1e-12)


def test_known_values_and_sign_convention():
    np.testing.assert_allclose(clebsch_gordan(0, 0, 0), np.ones((1, 1, 1)))
    for l in range(3):
        d = 2 * l + 1
        np.testing.assert_allclose(clebsch_gordan(0, l, l)[0], np.eye(d) / np.sqrt(d), atol=1e-14)
        np.testing.assert_allclose(clebsch_gordan(l, 0, l)[:, 0], np.eye(d) / np.sqrt(d), atol=1e-14)
        np.testing.assert_allclose(clebsch_gordan(l, l, 0)[..., 0], np.eye(d) / np.sqrt(d), atol=1e-14)
    eps = np.zeros((3, 3, 3))
    for i, j, k in itertools.permutations(range(3)):
        eps[i, j, k] = np.linalg.det(np.eye(3)[[i, j, k]])
    np.testing.assert_allclose(clebsch_gordan(1, 1, 1), eps / np.sqrt(6), atol=1e-14)  # cross product
    # 1 (x) 1 -> 2 is the symmetric traceless part, matching the SH basis of degree 2:
    # sum_ij C_ijk r_i r_j is proportional to Y_2(r)
    r = np.random.default_rng(1).normal(size=(6, 3))
    y2 = spherical_harmonics(2, tf.constant(r), normalize=False).numpy()[:, 4:]
    quad = np.einsum("ijk,bi,bj->bk", clebsch_gordan(1, 1, 2), r, r)
    ratio = quad / y2
    # C_{xy,xy-component} = 1/sqrt(10) and Y_2 has sqrt(15) xy, so |ratio| = 2/sqrt(150); the sign
    # convention (C[0, 0, 2] > 0, i.e. x x -> "3z^2 - r^2" positive) makes it negative
    np.testing.assert_allclose(ratio, -2 / np.sqrt(150), rtol=1e-10)
    # first nonzero entry (row-major) is positive, for every allowed triple
    for t in ALLOWED + [(3, 2, 4), (2, 3, 3)]:
        flat = clebsch_gordan(*t).ravel()
        assert flat[np.flatnonzero(flat)[0]] > 0


def test_coupling_of_spherical_harmonics():
    # Y_l1(r) (x) Y_l2(r) -> l3 is again proportional to Y_l3(r) (or zero when l1+l2+l3 is odd)
    r = tf.constant(np.random.default_rng(2).normal(size=(8, 3)))
    y = spherical_harmonics(4, r).numpy()
    sl = {l: slice(l * l, (l + 1) ** 2) for l in range(5)}
    for l1, l2 in [(1, 1), (1, 2), (2, 2)]:
        for l3 in range(abs(l1 - l2), l1 + l2 + 1):
            coupled = np.einsum("ijk,bi,bj->bk", clebsch_gordan(l1, l2, l3), y[:, sl[l1]], y[:, sl[l2]])
            if (l1 + l2 + l3) % 2:
                np.testing.assert_allclose(coupled, 0, atol=1e-12)
            else:
                ratio = np.einsum("bk,bk->b", coupled, y[:, sl[l3]]) / (2 * l3 + 1)
                np.testing.assert_allclose(coupled, ratio[:, None] * y[:, sl[l3]], atol=1e-12)
                np.testing.assert_allclose(ratio, ratio[0], rtol=1e-10)
                assert abs(ratio[0]) > 1e-3


def test_cached_read_only_and_parity_wrapper():
    a = clebsch_gordan(1, 2, 2)
    assert clebsch_gordan(1, 2, 2) is a
    with pytest.raises(ValueError):
        a[0, 0, 0] = 1.0
    np.testing.assert_array_equal(clebsch_gordan_for_irreps("1o", "1o", "2e"), clebsch_gordan(1, 1, 2))
    assert np.all(clebsch_gordan_for_irreps("1o", "1o", "2o") == 0)
    np.testing.assert_array_equal(clebsch_gordan_for_irreps("1o", "1o", "1e"), clebsch_gordan(1, 1, 1))
    with pytest.raises(ValueError):
        clebsch_gordan(-1, 1, 1)
