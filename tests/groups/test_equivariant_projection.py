"""``equivariant_projection``: the orthogonal projection of linear maps onto the SO(3)-equivariant ones."""

import numpy as np
import pytest
import tensorflow as tf

from keras_relaxeq.groups import (
    IrrepsRep,
    TrivialRep,
    VectorRep,
    equivariant_projection,
    lie_derivative_of_map,
    random_rotations,
    representation_degrees,
)

IN_REP = IrrepsRep("2x0e+3x1o+1x2e+1x1e")
OUT_REP = IrrepsRep("1x0e+2x1o+2x2e+1x0o")


def schur_projection(w, in_irreps, out_irreps):
    """Independent reference: by Schur's lemma, an equivariant map between real SO(3) irreps of the same
    degree l is c * I (for any parities), and 0 between different degrees; the orthogonal projection of
    a block is (trace / d) I."""
    p = np.zeros_like(w)
    for sl_in, (mul_in, ir_in) in zip(in_irreps.slices(), in_irreps):
        for sl_out, (mul_out, ir_out) in zip(out_irreps.slices(), out_irreps):
            if ir_in.l != ir_out.l:
                continue
            d = ir_in.dim
            block = w[sl_in, sl_out].reshape(mul_in, d, mul_out, d)
            c = np.einsum("uiwi->uw", block) / d
            p[sl_in, sl_out] = np.einsum("uw,ij->uiwj", c, np.eye(d)).reshape(mul_in * d, mul_out * d)
    return p


def test_degrees():
    assert representation_degrees(IN_REP) == [0, 1, 2]
    assert representation_degrees(VectorRep(4)) == [1]
    assert representation_degrees(TrivialRep(5)) == [0]


def test_projection_matches_schur_and_is_equivariant():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(IN_REP.dim, OUT_REP.dim))
    p = equivariant_projection(w, IN_REP, OUT_REP)
    np.testing.assert_allclose(p, schur_projection(w, IN_REP.irreps, OUT_REP.irreps), atol=1e-12)
    assert np.abs(lie_derivative_of_map(p, IN_REP, OUT_REP)).max() < 1e-12
    assert np.abs(lie_derivative_of_map(w, IN_REP, OUT_REP)).max() > 0.1  # a random map is not equivariant
    # idempotent, and the remainder is orthogonal to every equivariant map
    np.testing.assert_allclose(equivariant_projection(p, IN_REP, OUT_REP), p, atol=1e-12)
    other = equivariant_projection(rng.normal(size=w.shape), IN_REP, OUT_REP)
    assert abs(np.sum((w - p) * other)) < 1e-10
    # equivariant under rotations: x rho_in(g)^T P == (x P) rho_out(g)^T
    x = tf.constant(rng.normal(size=(6, IN_REP.dim)))
    g = random_rotations(6, seed=1, dtype=tf.float64)
    lhs = IN_REP.transform(g, x).numpy() @ p
    rhs = OUT_REP.transform(g, tf.constant(x.numpy() @ p)).numpy()
    np.testing.assert_allclose(lhs, rhs, atol=1e-10)


def test_vector_and_trivial_representations():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(12, 9))
    p = equivariant_projection(w, VectorRep(4), VectorRep(3))
    # channel mixing only: kron(C, I_3) with C the mean of the 3 diagonal entries of each 3x3 block
    c = np.einsum("uiwi->uw", w.reshape(4, 3, 3, 3)) / 3
    np.testing.assert_allclose(p, np.kron(c, np.eye(3)), atol=1e-12)
    np.testing.assert_allclose(equivariant_projection(w[:5, :4], TrivialRep(5), TrivialRep(4)), w[:5, :4])
    # vectors -> scalars and scalars -> vectors: no equivariant linear map
    np.testing.assert_allclose(equivariant_projection(w[:, :2], VectorRep(4), TrivialRep(2)), 0.0, atol=1e-12)


def test_bad_shape():
    with pytest.raises(ValueError, match=r"expected \[12, 9\]"):
        equivariant_projection(np.zeros((9, 12)), VectorRep(4), VectorRep(3))
