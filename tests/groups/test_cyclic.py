"""C_N on 2D grids: group laws, the grid / vector action against a continuous field, the defect."""

import numpy as np
import pytest
import tensorflow as tf

from keras_relaxeq.groups.cyclic import CyclicGroup, FibreRep, FieldType, equivariance_defect, rotate_grid


def _field_types(n):
    types = [
        FieldType(n, ["trivial"]),
        FieldType(n, ["vector"]),
        FieldType(n, ["regular"]),
        FieldType(n, ["vector", "regular", "trivial", "vector"]),
    ]
    if n == 4:
        types.append(FieldType(4, [FibreRep("irrep", 4, frequency=2), "vector"]))
    return types


@pytest.mark.parametrize("n", [1, 2, 3, 4, 6, 8])
def test_group_laws(n):
    group = CyclicGroup(n)
    assert group.elements() == tuple(range(n))
    assert group.generators() == ((1,) if n > 1 else ())
    for a in group.elements():
        assert group.compose(a, group.inverse(a)) == group.identity
        for b in group.elements():
            assert group.compose(a, b) == (a + b) % n
    g = group.generators()[0] if n > 1 else 0
    acc = group.identity
    for _ in range(n):
        acc = group.compose(acc, g)
    assert acc == group.identity


@pytest.mark.parametrize("n", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("kind", ["trivial", "vector", "regular"])
def test_fibre_matrices_are_a_representation(n, kind):
    rep = FibreRep(kind, n)
    eye = np.eye(rep.dim)
    np.testing.assert_allclose(rep.matrix(0), eye, atol=1e-12)
    np.testing.assert_allclose(np.linalg.matrix_power(rep.matrix(1), n), eye, atol=1e-12)  # g^N = e
    for a in range(n):
        np.testing.assert_allclose(rep.matrix(a).T @ rep.matrix(a), eye, atol=1e-12)  # orthogonal
        np.testing.assert_allclose(rep.matrix(a) @ rep.matrix((-a) % n), eye, atol=1e-12)  # inverse
        for b in range(n):
            np.testing.assert_allclose(rep.matrix(a) @ rep.matrix(b), rep.matrix((a + b) % n), atol=1e-12)


def test_regular_is_a_cyclic_shift_and_vector_a_rotation():
    v = np.arange(4.0)
    np.testing.assert_array_equal(FieldType(4, ["regular"]).act_fibre(1, v), [3.0, 0.0, 1.0, 2.0])
    np.testing.assert_array_equal(FieldType(4, ["vector"]).act_fibre(1, np.array([1.0, 0.0])), [0.0, 1.0])
    np.testing.assert_allclose(FibreRep("vector", 8).matrix(1), np.array([[1, -1], [1, 1]]) * np.sqrt(0.5), atol=1e-15)


@pytest.mark.parametrize("n", [1, 2, 4])
def test_field_action_group_laws(n):
    rng = np.random.default_rng(n)
    for ftype in _field_types(n):
        x = rng.normal(size=(2, 6, 6, ftype.channels))
        np.testing.assert_array_equal(ftype.act(0, x), x)
        y = x
        for _ in range(n):
            y = ftype.act(1, y)
        np.testing.assert_allclose(y, x, atol=1e-12, err_msg=str(ftype))  # g^N = e
        for a in range(n):
            np.testing.assert_allclose(ftype.act(ftype.group.inverse(a), ftype.act(a, x)), x, atol=1e-12)
            for b in range(n):
                np.testing.assert_allclose(ftype.act(a, ftype.act(b, x)), ftype.act((a + b) % n, x), atol=1e-12)


@pytest.mark.parametrize("n", [2, 4])
def test_numpy_and_tensorflow_actions_agree(n):
    rng = np.random.default_rng(0)
    for ftype in _field_types(n):
        x = rng.normal(size=(3, 5, 5, ftype.channels))
        for g in range(n):
            tf_out = ftype.act(g, tf.constant(x)).numpy()
            np.testing.assert_allclose(tf_out, ftype.act(g, x), atol=1e-12)


def test_rotate_grid_convention():
    # (x, y) = (column, row): the cell at x = 2, y = 0 of a 3x3 grid goes to x = 2, y = 2 (a quarter turn
    # counter-clockwise about the centre), the cell at x = 0, y = 0 to x = 2, y = 0.
    grid = np.zeros((3, 3, 1))
    grid[0, 2, 0] = 1.0  # row y = 0, column x = 2
    grid[0, 0, 0] = 2.0
    turned = rotate_grid(grid, 1)
    assert turned[2, 2, 0] == 1.0 and turned[0, 2, 0] == 2.0 and turned.sum() == 3.0


@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("size", [6, 7])
def test_vector_field_agrees_with_rotating_the_continuous_field(n, size):
    # u(p) = A p + b on cell centres p = (x, y) relative to the grid centre.  The rotated field is
    # (R u)(p) = Q u(Q^{-1} p) with Q the rotation by 2 pi / n; sampled on the grid it must equal act(1, u).
    rng = np.random.default_rng(size)
    a, b = rng.normal(size=(2, 2)), rng.normal(size=2)
    coords = np.arange(size) - (size - 1) / 2.0
    ys, xs = np.meshgrid(coords, coords, indexing="ij")  # row = y, column = x
    points = np.stack([xs, ys], axis=-1)  # [H, W, 2] = (x, y)

    def field(p):
        return p @ a.T + b

    theta = 2 * np.pi / n
    q = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    expected = field(points @ q) @ q.T  # Q^{-1} p = p @ Q for row vectors
    got = FieldType(n, ["vector"]).act(1, field(points))
    np.testing.assert_allclose(got, expected, atol=1e-12)
    # and a scalar field: (R s)(p) = s(Q^{-1} p)
    s = lambda p: p @ a[0] + b[0]  # noqa: E731
    np.testing.assert_allclose(
        FieldType(n, ["trivial"]).act(1, s(points)[..., None]), s(points @ q)[..., None], atol=1e-12
    )


def test_grid_action_refuses_orders_that_do_not_fit_a_grid():
    x = np.zeros((4, 4, 2))
    with pytest.raises(ValueError, match="cannot act exactly on a square grid"):
        FieldType(8, ["vector"]).act(1, x)
    with pytest.raises(ValueError, match="cannot act exactly on a square grid"):
        FieldType(3, ["trivial"]).act(1, x[..., :1])
    # the fibre action alone is fine for any N
    np.testing.assert_allclose(FieldType(8, ["vector"]).act_fibre(2, np.array([1.0, 0.0])), [0.0, 1.0], atol=1e-15)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="3 channels"):
        FieldType(4, ["vector", "trivial"]).act(1, np.zeros((4, 4, 2)))
    with pytest.raises(ValueError, match="square grid"):
        FieldType(4, ["trivial"]).act(1, np.zeros((4, 5, 1)))
    with pytest.raises(ValueError, match="Unknown fibre"):
        FieldType(4, ["spinor"])
    with pytest.raises(ValueError, match="positive integer"):
        CyclicGroup(0)


# --------------------------------------------------------------------------- defect


def _stencil_conv(kernel):
    """Per-channel 3x3 correlation with zero padding (NumPy), ``[B, H, W, C]``."""

    def f(x):
        pad = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        h, w = x.shape[1:3]
        return sum(kernel[i, j] * pad[:, i : i + h, j : j + w] for i in range(3) for j in range(3))

    return f


def _naive_defect(f, x, in_type, out_type, elements):
    """Independent computation: explicit loops over cells for the rotation and per-cell fibre matrices."""
    total = 0.0
    for g in elements:
        k = g * 4 // in_type.group.order

        def act(t, z):
            n = z.shape[1]
            out = np.empty_like(z)
            m = t.matrix(g)
            for i in range(n):
                for j in range(n):
                    src = (i, j)
                    for _ in range(k):  # one quarter turn: new[i, j] = old[n - 1 - j, i]
                        src = (n - 1 - src[1], src[0])
                    out[:, i, j] = z[:, src[0], src[1]] @ m.T
            return out

        total += float(((act(out_type, f(x)) - f(act(in_type, x))) ** 2).sum())
    return total


@pytest.mark.parametrize("n", [2, 4])
def test_defect_is_zero_for_equivariant_maps(n):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 8, 8, 2))
    vector, scalar = FieldType(n, ["vector"]), FieldType(n, ["trivial"])
    norm = lambda v: np.linalg.norm(v, axis=-1, keepdims=True)  # noqa: E731
    assert equivariance_defect(norm, x, vector, scalar) < 1e-20
    iso = np.array([[0.05, 0.2, 0.05], [0.2, -1.0, 0.2], [0.05, 0.2, 0.05]])  # isotropic: C4-invariant stencil
    assert equivariance_defect(_stencil_conv(iso), x, vector) < 1e-20
    # the same in TF, with its float32 default
    xt = tf.constant(x, tf.float32)
    d = equivariance_defect(lambda v: tf.norm(v, axis=-1, keepdims=True), xt, vector, scalar)
    assert d.dtype == tf.float32 and float(d) < 1e-9


@pytest.mark.parametrize("n", [2, 4])
def test_defect_of_a_non_equivariant_map_matches_a_naive_computation(n):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 7, 7, 2))
    vector = FieldType(n, ["vector"])
    # an upwind difference along x is not rotation-equivariant (not even for a half turn)
    asym = np.array([[0.0, 0.0, 0.0], [0.0, -1.0, 1.0], [0.0, 0.0, 0.0]])
    f = _stencil_conv(asym)
    got = equivariance_defect(f, x, vector)
    assert got > 1.0  # O(|x|^2): the field has ~100 entries of unit variance
    np.testing.assert_allclose(got, _naive_defect(f, x, vector, vector, (1,)), rtol=1e-12)
    every = equivariance_defect(f, x, vector, elements=range(n), per_element=True)
    assert every.shape == (n,) and every[0] == 0.0
    np.testing.assert_allclose(every, [_naive_defect(f, x, vector, vector, (g,)) for g in range(n)], rtol=1e-12)
    # regular fibres: a map mixing the N channels without respecting the shift
    regular = FieldType(n, ["regular"])
    w = rng.normal(size=(n, n))
    mix = lambda z: z @ w.T  # noqa: E731
    xr = rng.normal(size=(2, 5, 5, n))
    np.testing.assert_allclose(
        equivariance_defect(mix, xr, regular), _naive_defect(mix, xr, regular, regular, (1,)), rtol=1e-12
    )
    # a circulant mixing is equivariant for the regular representation
    circ = np.stack([np.roll(w[0], i) for i in range(n)])
    assert equivariance_defect(lambda z: z @ circ.T, xr, regular) < 1e-20


def test_tensorflow_defect_matches_numpy_and_is_differentiable():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 6, 6, 2))
    vector = FieldType(4, ["vector"])
    kernel = tf.Variable(rng.normal(size=(3, 3, 2, 2)))

    def conv_tf(z):
        return tf.nn.conv2d(z, kernel, strides=1, padding="SAME")

    def conv_np(z):
        pad = np.pad(z, ((0, 0), (1, 1), (1, 1), (0, 0)))
        return sum(pad[:, i : i + 6, j : j + 6] @ kernel.numpy()[i, j] for i in range(3) for j in range(3))

    with tf.GradientTape() as tape:
        d = equivariance_defect(conv_tf, tf.constant(x), vector)
    grad = tape.gradient(d, kernel)
    np.testing.assert_allclose(float(d), equivariance_defect(conv_np, x, vector), rtol=1e-10)
    assert grad is not None and float(tf.reduce_sum(grad**2)) > 0.0
