"""The scale group math (groups/scale.py): the multi-scale Hermite basis, scale pairs, the exact grid step."""

import numpy as np
import pytest
import tensorflow as tf

from keras_relaxeq.groups.scale import (
    ScaleFieldRep,
    basis_orders,
    check_scales,
    downscale_grid,
    hermite_scale_basis,
    scale_pairs,
    uniform_scale_shift,
)


def test_basis_shape_and_orders():
    assert basis_orders(0) == [(0, 0)]
    assert len(basis_orders(3)) == 10 and all(n + m <= 3 for n, m in basis_orders(3))
    basis = hermite_scale_basis((1.0, 1.5, 2.0, 2.5), 5, 3)
    assert basis.shape == (4, 10, 5, 5) and basis.dtype == np.float64
    # linearly independent at every scale, even truncated to 5 x 5 taps
    for s in range(4):
        assert np.linalg.matrix_rank(basis[s].reshape(10, -1)) == 10


def test_basis_is_the_dilation_of_one_function():
    """psi^(2 sigma)(2 p) = psi^sigma(p) / 4 at the taps: the sigma^-2 normalisation of the continuum."""
    basis = hermite_scale_basis((1.0, 2.0), 9, 3)
    np.testing.assert_allclose(basis[1][:, ::2, ::2], basis[0][:, 2:-2, 2:-2] / 4.0, rtol=1e-12, atol=1e-15)
    # negative control: without the dilation the two scales differ
    assert np.abs(basis[1][:, 2:-2, 2:-2] - basis[0][:, 2:-2, 2:-2] / 4.0).max() > 1e-2


def test_basis_parity_and_normalisation():
    basis = hermite_scale_basis((1.0,), 41, 2)
    for b, (n, m) in enumerate(basis_orders(2)):
        # He_n(-x) = (-1)^n He_n(x): odd orders flip under a reflection of the corresponding axis
        np.testing.assert_allclose(basis[0, b, ::-1, :], (-1) ** n * basis[0, b], atol=1e-15)
        np.testing.assert_allclose(basis[0, b, :, ::-1], (-1) ** m * basis[0, b], atol=1e-15)
        np.testing.assert_allclose(np.linalg.norm(basis[0, b]), 1.0, rtol=1e-9)  # unit norm at the first scale


def test_scale_pairs_and_uniform_shift():
    assert scale_pairs((1.0, 1.5, 2.0, 2.5), 2) == [(0, 2)]
    assert scale_pairs((1.0, 1.5, 2.0, 2.5), 1.25) == [(2, 3)]
    assert scale_pairs((1.0, 1.5, 2.0, 2.5), 3) == []
    assert uniform_scale_shift((1.0, 1.5, 2.0, 2.5), 2) is None
    geometric = tuple(2 ** (np.arange(5) / 2))
    assert uniform_scale_shift(geometric, 2) == 2
    assert scale_pairs(geometric, 2) == [(0, 2), (1, 3), (2, 4)]


def test_downscale_grid_and_errors():
    x = np.arange(2 * 4 * 6 * 1.0).reshape(2, 4, 6, 1)
    np.testing.assert_array_equal(downscale_grid(x, 2), x[:, ::2, ::2])
    np.testing.assert_array_equal(downscale_grid(tf.constant(x), 2).numpy(), x[:, ::2, ::2])
    with pytest.raises(ValueError, match="divisible by 2"):
        downscale_grid(np.zeros((1, 5, 4, 1)), 2)
    with pytest.raises(ValueError, match="integer factor"):
        downscale_grid(x, 1.5)
    with pytest.raises(ValueError, match="strictly increasing"):
        check_scales((2.0, 1.0))
    with pytest.raises(ValueError, match="odd"):
        hermite_scale_basis((1.0,), 4)


def test_scale_field_rep():
    rep = ScaleFieldRep(3, (1.0, 2.0))
    assert rep.feature_shape == (2, 3) and rep.dim == 6 and rep.is_scale_space
    assert ScaleFieldRep(3).feature_shape == (3,) and not ScaleFieldRep(3).is_scale_space
    assert rep == ScaleFieldRep(3, [1, 2]) and rep != ScaleFieldRep(3)
    with pytest.raises(NotImplementedError, match="scale-step defect"):
        rep.generators_numpy()
