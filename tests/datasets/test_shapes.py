"""The synthetic shape set used by the demo."""

import numpy as np
import pytest

from keras_relaxeq.datasets.shapes import CLASSES, make_shapes


def test_shapes_are_balanced_normalised_and_seeded():
    x, y = make_shapes(60, num_points=50, rotation="none", seed=1)
    assert x.shape == (60, 50, 3) and x.dtype == np.float32 and y.dtype == np.int32
    assert np.bincount(y, minlength=len(CLASSES)).tolist() == [10] * len(CLASSES)
    np.testing.assert_allclose(x.mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(x, axis=-1).max(axis=1), 1, atol=1e-5)
    x2, y2 = make_shapes(60, num_points=50, rotation="none", seed=1)
    np.testing.assert_array_equal(x, x2)
    assert not np.array_equal(x, make_shapes(60, num_points=50, rotation="none", seed=2)[0])


def test_rotation_preserves_the_cloud_up_to_an_orthogonal_map():
    x0, _ = make_shapes(12, num_points=40, rotation="none", seed=3)
    xr, _ = make_shapes(12, num_points=40, rotation="so3", seed=3)
    xz, _ = make_shapes(12, num_points=40, rotation="z", seed=3)
    # Pairwise distances are invariant; the clouds themselves moved.
    d = lambda a: np.linalg.norm(a[:, :, None] - a[:, None], axis=-1)  # noqa: E731
    np.testing.assert_allclose(d(xr), d(x0), atol=1e-5)
    assert np.abs(xr - x0).max() > 0.1
    np.testing.assert_allclose(xz[..., 2], x0[..., 2], atol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_samples"):
        make_shapes(0)
    with pytest.raises(ValueError, match="rotation"):
        make_shapes(4, rotation="x")
