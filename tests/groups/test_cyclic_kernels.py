"""The kernel transform of C_N convolutions and the equivariant kernel basis (groups/cyclic_kernels.py)."""

import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf

from keras_relaxeq.groups.cyclic import FibreRep, FieldType
from keras_relaxeq.groups.cyclic_kernels import (
    equivariant_kernel_basis,
    field_type_spec,
    invariant_vector_basis,
    kernel_operator,
    parse_field_type,
    rotate_kernel,
    transform_kernel,
)

FIBRES = ["trivial", "vector", "regular", FibreRep("irrep", 4, frequency=2)]


def naive_conv(x, w):
    """Cross-correlation with zero "SAME" padding by explicit loops over taps, float64 ``[B, H, W, C]``."""
    k = w.shape[0]
    r = k // 2
    pad = np.pad(x, ((0, 0), (r, r), (r, r), (0, 0)))
    h, wd = x.shape[1:3]
    out = np.zeros(x.shape[:3] + (w.shape[-1],))
    for a in range(k):
        for b in range(k):
            out += pad[:, a : a + h, b : b + wd] @ w[a, b]
    return out


def naive_act(field_type, g, z):
    """The field action by per-cell loops: new[i, j] = rho(g) old[R^-1 (i, j)], one quarter turn
    new[i, j] = old[n - 1 - j, i]."""
    n = z.shape[1]
    out = np.empty_like(z)
    m = field_type.matrix(g)
    for i in range(n):
        for j in range(n):
            src = (i, j)
            for _ in range(field_type.group.quarter_turns(g)):
                src = (n - 1 - src[1], src[0])
            out[:, i, j] = z[:, src[0], src[1]] @ m.T
    return out


@pytest.mark.parametrize("k", [1, 3, 5])
def test_kernel_transform_intertwines_the_action(k):
    rng = np.random.default_rng(k)
    ti = FieldType(4, ["vector", "regular", "trivial"])
    to = FieldType(4, ["regular", FibreRep("irrep", 4, frequency=2), "vector"])
    w = rng.normal(size=(k, k, ti.channels, to.channels))
    x = rng.normal(size=(2, 7, 7, ti.channels))
    for g in range(4):
        lhs = naive_conv(naive_act(ti, g, x), w)
        rhs = naive_act(to, g, naive_conv(x, transform_kernel(w, g, ti, to)))
        np.testing.assert_allclose(lhs, rhs, atol=1e-12)


def test_rotate_kernel_numpy_and_tf_agree_and_compose():
    import tensorflow as tf

    w = np.random.default_rng(0).normal(size=(3, 3, 2, 5))
    for q in range(-2, 5):
        np.testing.assert_array_equal(rotate_kernel(tf.constant(w), q).numpy(), rotate_kernel(w, q))
    np.testing.assert_array_equal(rotate_kernel(rotate_kernel(w, 1), 3), w)


@pytest.mark.parametrize("fi", FIBRES)
@pytest.mark.parametrize("fo", FIBRES)
@pytest.mark.parametrize("k", [1, 3])
def test_basis_solves_the_constraint_and_spans_its_solutions(fi, fo, k):
    basis = equivariant_kernel_basis(fi, fo, k)
    fi, fo = (f if isinstance(f, FibreRep) else FibreRep(f, 4) for f in (fi, fo))
    op = kernel_operator(fi, fo, k)
    dim = op.shape[0]
    flat = basis.reshape(len(basis), dim)
    # orthonormal, and T_g B = B
    np.testing.assert_allclose(flat @ flat.T, np.eye(len(basis)), atol=1e-12)
    np.testing.assert_allclose(flat @ op.T, flat, atol=1e-12)
    # T is orthogonal and T^4 = 1, so the averaged projector is orthogonal; its trace (the character formula)
    # and the null space of T - 1 (SVD) give the dimension
    np.testing.assert_allclose(op @ op.T, np.eye(dim), atol=1e-12)
    np.testing.assert_allclose(np.linalg.matrix_power(op, 4), np.eye(dim), atol=1e-12)
    character = sum(np.trace(np.linalg.matrix_power(op, h)) for h in range(4)) / 4
    null = scipy.linalg.null_space(op - np.eye(dim))
    assert len(basis) == round(character) == null.shape[1]
    # same subspace: equal orthogonal projectors
    np.testing.assert_allclose(flat.T @ flat, null @ null.T, atol=1e-10)


def test_basis_dimensions_for_c4():
    # k = 3: the taps form the centre and two orbits of four; regular fibres are free.
    assert len(equivariant_kernel_basis("regular", "regular", 3)) == 36
    assert len(equivariant_kernel_basis("trivial", "regular", 3)) == 9
    assert len(equivariant_kernel_basis("vector", "regular", 3)) == 18
    assert len(equivariant_kernel_basis("regular", "vector", 3)) == 18
    assert len(equivariant_kernel_basis("trivial", "trivial", 3)) == 3  # isotropic stencils: centre, edges, corners
    assert len(equivariant_kernel_basis("trivial", "vector", 1)) == 0  # a point cannot point anywhere
    # exact entries: signed orbit sums of the standard basis (machine independent)
    b = equivariant_kernel_basis("vector", "regular", 3)
    assert set(np.round(np.abs(b[b != 0]) ** -2).astype(int).tolist()) <= {1, 2, 4}


def test_invariant_vectors():
    np.testing.assert_allclose(invariant_vector_basis("regular"), np.full((1, 4), 0.5), atol=1e-15)
    np.testing.assert_allclose(invariant_vector_basis("trivial"), [[1.0]])
    assert invariant_vector_basis("vector").shape == (0, 2)


def test_field_type_specs_round_trip():
    ft = FieldType(4, ["vector"] * 3 + ["regular", FibreRep("irrep", 4, frequency=2), "trivial", "trivial"])
    spec = field_type_spec(ft)
    assert spec == [["vector", 3], ["regular", 1], ["irrep(2)", 1], ["trivial", 2]]
    assert parse_field_type(spec, 4) == ft
    assert parse_field_type("vector") == FieldType(4, ["vector"])
    with pytest.raises(ValueError, match="odd"):
        equivariant_kernel_basis("regular", "regular", 2)


@pytest.mark.parametrize("fi,fo,k", [("regular", "regular", 3), ("vector", "regular", 3), ("regular", "vector", 5)])
def test_project_kernel_is_the_orthogonal_projection_onto_the_basis(fi, fo, k):
    """The group average equals the projection onto the span of the orthonormal basis, is idempotent, and its
    convolution is exactly equivariant with a zero defect penalty; the random kernel itself is not."""
    from keras_relaxeq.groups.cyclic_kernels import parse_field_type, project_kernel
    from keras_relaxeq.layers.finite_group_penalties import conv_branch_defect

    ti, to = parse_field_type(fi), parse_field_type(fo)
    rng = np.random.default_rng(5)
    w = rng.normal(size=(k, k, ti.channels, to.channels))
    p = project_kernel(w, ti, to)
    basis = equivariant_kernel_basis(fi, fo, k).reshape(-1, w.size)
    np.testing.assert_allclose(p.reshape(-1), basis.T @ (basis @ w.reshape(-1)), atol=1e-12)
    np.testing.assert_allclose(project_kernel(p, ti, to), p, atol=1e-12)
    assert 0.05 < np.linalg.norm(p) / np.linalg.norm(w) < 0.95
    x = tf.constant(rng.normal(size=(2, 7, 7, ti.channels)))
    lie, proj = conv_branch_defect(tf.constant(p), None, x, ti, to)
    assert float(lie) < 1e-20 * float(proj) and float(proj) > 0
    lie_w, _ = conv_branch_defect(tf.constant(w), None, x, ti, to)
    assert float(lie_w) > 1e-2 * float(proj)
    # a per-pixel map [C_in, C_out] is the 1 x 1 kernel
    dense = rng.normal(size=(ti.channels, to.channels))
    np.testing.assert_allclose(project_kernel(dense, ti, to), project_kernel(dense[None, None], ti, to)[0, 0])
    with pytest.raises(ValueError, match="field types"):
        project_kernel(w, ti, FieldType.regular(4, 2))
    with pytest.raises(ValueError, match="odd k"):
        project_kernel(w[:2, :2], ti, to)
