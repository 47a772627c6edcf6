"""Real spherical harmonics: basis = so3_generators(l), equivariance, parity, normalisation."""

import math

import numpy as np
import pytest
import tensorflow as tf

from keras_relaxeq.groups import (
    Irreps,
    random_rotations,
    so3_generators_numpy,
    spherical_harmonics,
    spherical_harmonics_coefficients,
    wigner_D,
)


def _expm_algebra(omega, gens):
    """Exact ``expm(omega . G)`` for skew ``G`` (Hermitian eigendecomposition)."""
    a = np.einsum("k,kij->ij", omega, gens)
    lam, vecs = np.linalg.eigh(1j * a)
    return (vecs @ np.diag(np.exp(-1j * lam)) @ vecs.conj().T).real


def _blocks(y, ls):
    out, start = [], 0
    for l in ls:
        out.append(y[..., start : start + 2 * l + 1])
        start += 2 * l + 1
    assert start == y.shape[-1]
    return out


def _vectors(n, seed):
    return np.random.default_rng(seed).normal(size=(n, 3))


def test_explicit_low_degrees_match_so3_docstring():
    r = _vectors(20, 0)
    r /= np.linalg.norm(r, axis=-1, keepdims=True)
    y = spherical_harmonics(2, tf.constant(r)).numpy()
    assert y.shape == (20, 9)
    x_, y_, z_ = r.T
    np.testing.assert_allclose(y[:, 0], 1.0, atol=1e-14)
    np.testing.assert_allclose(y[:, 1:4], math.sqrt(3) * r, atol=1e-14)  # Cartesian x, y, z
    s15 = math.sqrt(15)
    expected_l2 = np.stack(
        [s15 * x_ * y_, s15 * y_ * z_, math.sqrt(5) / 2 * (3 * z_**2 - 1), s15 * x_ * z_, s15 / 2 * (x_**2 - y_**2)], -1
    )
    np.testing.assert_allclose(y[:, 4:9], expected_l2, atol=1e-13)


def test_basis_is_intertwined_by_generators():
    # d/dt Y(exp(t L_k) r) |_0 = J_Y(r) L_k r = G_k Y(r): the basis carries so3_generators(l)
    r = tf.constant(_vectors(7, 1))
    vec_gens = so3_generators_numpy(1)
    for l in [1, 2, 3]:
        irreps = Irreps([(1, (l, (-1) ** l))])
        gens = so3_generators_numpy(l)
        for k in range(3):
            tangent = tf.constant(r.numpy() @ vec_gens[k].T)
            with tf.autodiff.ForwardAccumulator(r, tangent) as acc:
                y = spherical_harmonics(irreps, r, normalize=False)
            dy = acc.jvp(y).numpy()
            np.testing.assert_allclose(dy, y.numpy() @ gens[k].T, atol=1e-12)
            assert np.abs(dy).max() > 0.1


def test_equivariance_with_wigner_d():
    # Haar-random rotations, D from the package's wigner_D (l <= 2, where it is float64-exact)
    ls = [0, 1, 2]
    rots = random_rotations(6, seed=2, dtype=tf.float64)
    r = tf.constant(_vectors(6 * 5, 2).reshape(6, 5, 3))
    y = spherical_harmonics(2, r).numpy()
    y_rot = spherical_harmonics(2, tf.einsum("bij,bpj->bpi", rots, r)).numpy()
    for l, yl, yl_rot in zip(ls, _blocks(y, ls), _blocks(y_rot, ls)):
        d = wigner_D(l, rots).numpy()
        np.testing.assert_allclose(yl_rot, np.einsum("bij,bpj->bpi", d, yl), atol=1e-10)
        assert np.abs(yl_rot - yl).max() > 1e-2 or l == 0  # the rotation does act


def test_equivariance_higher_degrees():
    # all degrees up to 6 with D = expm(omega . G_l) computed exactly (wigner_D's
    # tf.linalg.expm is only ~1e-9 accurate in float64 for l >= 3)
    lmax = 6
    ls = list(range(lmax + 1))
    rng = np.random.default_rng(10)
    r = _vectors(8, 3)
    y = spherical_harmonics(lmax, tf.constant(r)).numpy()
    for _ in range(4):
        omega = rng.normal(size=3) * 1.5
        rot = _expm_algebra(omega, so3_generators_numpy(1))
        y_rot = spherical_harmonics(lmax, tf.constant(r @ rot.T)).numpy()
        for l, yl, yl_rot in zip(ls, _blocks(y, ls), _blocks(y_rot, ls)):
            d = _expm_algebra(omega, so3_generators_numpy(l))
            np.testing.assert_allclose(yl_rot, yl @ d.T, atol=1e-10)


def test_parity_and_homogeneity():
    lmax = 5
    ls = list(range(lmax + 1))
    r = tf.constant(_vectors(10, 3))
    y = spherical_harmonics(lmax, r).numpy()
    y_neg = spherical_harmonics(lmax, -r).numpy()
    for l, a, b in zip(ls, _blocks(y, ls), _blocks(y_neg, ls)):
        np.testing.assert_allclose(b, (-1) ** l * a, atol=1e-12)
        assert np.abs(a).max() > 0.1
    # normalize=False: homogeneous polynomials of degree l
    y1 = spherical_harmonics(lmax, r, normalize=False).numpy()
    y2 = spherical_harmonics(lmax, 2.5 * r, normalize=False).numpy()
    for l, a, b in zip(ls, _blocks(y1, ls), _blocks(y2, ls)):
        np.testing.assert_allclose(b, 2.5**l * a, rtol=1e-12, atol=1e-12)
    # normalize=True: depends on direction only
    np.testing.assert_allclose(spherical_harmonics(lmax, 3.0 * r).numpy(), y, atol=1e-12)


@pytest.mark.parametrize(
    "normalization, block_sq_norm",
    [
        ("component", lambda l: 2 * l + 1),
        ("norm", lambda l: 1.0),
        ("integral", lambda l: (2 * l + 1) / (4 * math.pi)),
    ],
)
def test_normalisation(normalization, block_sq_norm):
    ls = list(range(5))
    r = tf.constant(_vectors(50, 4))
    y = spherical_harmonics(4, r, normalization=normalization).numpy()
    for l, yl in zip(ls, _blocks(y, ls)):
        np.testing.assert_allclose(np.sum(yl**2, -1), block_sq_norm(l), rtol=1e-12)


def test_orthonormal_on_the_sphere():
    # exact quadrature: Gauss-Legendre in cos(theta) x uniform phi, exact to degree 2 lmax
    lmax = 4
    u, wu = np.polynomial.legendre.leggauss(lmax + 2)
    phi = 2 * np.pi * np.arange(2 * lmax + 3) / (2 * lmax + 3)
    uu, pp = np.meshgrid(u, phi, indexing="ij")
    s = np.sqrt(1 - uu**2)
    pts = np.stack([s * np.cos(pp), s * np.sin(pp), uu], -1).reshape(-1, 3)
    w = (wu[:, None] * np.full(phi.shape, 2 * np.pi / len(phi))[None]).reshape(-1)
    y = spherical_harmonics(lmax, tf.constant(pts), normalization="integral").numpy()
    gram = np.einsum("p,pi,pj->ij", w, y, y)
    np.testing.assert_allclose(gram, np.eye(y.shape[-1]), atol=1e-12)


def test_float32_and_shapes():
    r64 = tf.constant(_vectors(24, 5).reshape(2, 3, 4, 3))
    y64 = spherical_harmonics("1x0e+1x1o+1x2e", r64)
    y32 = spherical_harmonics(2, tf.cast(r64, tf.float32))
    assert y32.dtype == tf.float32 and y64.dtype == tf.float64
    assert y32.shape == (2, 3, 4, 9)
    np.testing.assert_allclose(y32.numpy(), y64.numpy(), atol=1e-5)
    # subsets and multiplicities of degrees, in the order given
    full = y64.numpy()
    sub = spherical_harmonics("1x1o+2x0e", r64).numpy()
    np.testing.assert_allclose(sub, np.concatenate([full[..., 1:4], full[..., :1], full[..., :1]], -1))
    only2 = spherical_harmonics("2e", r64).numpy()
    np.testing.assert_allclose(only2, full[..., 4:])
    # harmonics of a pseudovector (all parities +1) are accepted; mixed conventions are not
    np.testing.assert_allclose(spherical_harmonics("0e+1e", r64).numpy(), full[..., :4])
    for bad in ["1e+2o", "0e+1o+2o", "0o"]:
        with pytest.raises(ValueError):
            spherical_harmonics(bad, r64)
    with pytest.raises(ValueError):
        spherical_harmonics(1, r64, normalization="unit")


def test_safe_at_origin():
    r = tf.constant([[0.0, 0.0, 0.0], [1.0, 2.0, 2.0]], tf.float64)
    for normalize in [True, False]:
        with tf.GradientTape() as tape:
            tape.watch(r)
            y = spherical_harmonics(3, r, normalize=normalize)
            loss = tf.reduce_sum(y * tf.range(1, 17, dtype=tf.float64))
        grad = tape.gradient(loss, r).numpy()
        assert np.all(np.isfinite(y.numpy())) and np.all(np.isfinite(grad))
        np.testing.assert_allclose(y.numpy()[0], np.eye(16)[0], atol=0)  # only Y_0 at r = 0
        assert np.abs(grad[1]).max() > 0  # the non-degenerate row still has a gradient
    y32 = spherical_harmonics(2, tf.zeros([3, 3], tf.float32))
    np.testing.assert_array_equal(y32.numpy(), np.tile(np.eye(9)[0], (3, 1)))


def test_coefficients_are_harmonic_and_cached():
    # the Laplacian of each Y_l polynomial vanishes
    for l in range(1, 6):
        mons, c = spherical_harmonics_coefficients(l)
        lap = {}
        for (a, b, cc), coef in zip(mons, c.T):
            for axis, e in enumerate((a, b, cc)):
                if e >= 2:
                    m = [a, b, cc]
                    m[axis] -= 2
                    lap[tuple(m)] = lap.get(tuple(m), 0) + e * (e - 1) * coef
        assert all(np.abs(v).max() < 1e-11 for v in lap.values())
        c[:] = 0  # a copy: the cached coefficients are unaffected
    assert np.abs(spherical_harmonics_coefficients(2)[1]).max() > 1
