"""Equivariance checks shipped with the package, so users can test their own layers.

``run_layer_test`` runs a layer class through build, call, serialization, relaxation, projection and an
equivariance check under a group (``"SO3"``, ``"O3"``, ``"SE3"``, ``"E3"`` or a ``GroupAction``:
``CyclicGridAction`` for C_N on 2D grids, ``ScaleAction`` for dilations).
"""

from keras_relaxeq.testing.cyclic import assert_cyclic_equivariant, check_cyclic_equivariance
from keras_relaxeq.testing.equivariance import (
    GROUPS,
    PositionRep,
    assert_equivariant,
    assert_invariant,
    check_equivariance,
    check_invariance,
    e3_equivariance_errors,
    potential_symmetry_errors,
    random_molecules,
)
from keras_relaxeq.testing.group_actions import (
    CyclicGridAction,
    EuclideanAction,
    GroupAction,
    ScaleAction,
    as_group_action,
    check_action_equivariance,
)
from keras_relaxeq.testing.layer_test import LayerTestResult, run_layer_test
from keras_relaxeq.testing.report import TOLERANCES, EquivarianceReport
