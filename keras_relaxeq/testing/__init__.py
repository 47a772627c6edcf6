"""Equivariance checks shipped with the package, so users can test their own layers."""

from keras_relaxeq.testing.equivariance import (
    TOLERANCES,
    EquivarianceReport,
    assert_equivariant,
    assert_invariant,
    check_equivariance,
)
