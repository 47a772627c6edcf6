"""Group math only (no Keras layers): SO(3) generators, rotations, representations, O(3) irreps, spherical
harmonics and Clebsch-Gordan coefficients; C_N on 2D grids."""

from keras_relaxeq.groups.clebsch_gordan import clebsch_gordan, clebsch_gordan_for_irreps
from keras_relaxeq.groups.cyclic import CyclicGroup, FibreRep, FieldType, equivariance_defect, rotate_grid
from keras_relaxeq.groups.cyclic_kernels import (
    FieldRep,
    equivariant_kernel_basis,
    invariant_vector_basis,
    transform_kernel,
)
from keras_relaxeq.groups.irreps import Irrep, Irreps, MulIrrep, as_irreps
from keras_relaxeq.groups.irreps_balance import (
    balanced_irreps,
    dimension_balanced_irreps,
    fully_connected_tp_num_weights,
    weight_balanced_irreps,
)
from keras_relaxeq.groups.irreps_layouts import LAYOUTS, check_layout, convert_layout, layout_permutation
from keras_relaxeq.groups.irreps_rep import IrrepsRep
from keras_relaxeq.groups.representations import (
    Representation,
    TrivialRep,
    VectorFieldRep,
    VectorRep,
    as_representation,
    equivariant_projection,
    lie_derivative_of_map,
    representation_degrees,
)
from keras_relaxeq.groups.so3 import (
    axis_rotation,
    random_quaternions,
    random_rotations,
    random_z_rotations,
    so3_generators,
    so3_generators_numpy,
    vector_generators,
    wigner_D,
)
from keras_relaxeq.groups.spherical_harmonics import spherical_harmonics, spherical_harmonics_coefficients
