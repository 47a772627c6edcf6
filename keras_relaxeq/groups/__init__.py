"""Group math only (no Keras layers): SO(3) generators, rotations, representations."""

from keras_relaxeq.groups.representations import (
    Representation,
    TrivialRep,
    VectorFieldRep,
    VectorRep,
    as_representation,
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
