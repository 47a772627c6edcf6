"""Equivariance checks shipped with the package, so users can test their own layers."""

from keras_relaxeq.testing.equivariance import (
    GROUPS,
    TOLERANCES,
    EquivarianceReport,
    PositionRep,
    assert_equivariant,
    assert_invariant,
    check_equivariance,
    check_invariance,
    e3_equivariance_errors,
)
from keras_relaxeq.testing.cyclic import assert_cyclic_equivariant, check_cyclic_equivariance
