"""SO(3): Lie-algebra generators, real irreducible representations, rotations.

Conventions (used everywhere in the package):

* The generators ``L_k`` (k = x, y, z) are the 3x3 skew matrices with
  ``(L_k)_ij = -eps_kij``, so ``expm(t * L_z)`` is the rotation by angle ``t``
  about the z axis, and ``[L_x, L_y] = L_z``.
* ``so3_generators(l)`` returns the generators of the real irreducible
  representation of degree ``l`` (dimension ``2l + 1``) in the basis of the
  real spherical harmonics ordered ``m = -l .. l``.  Degree 1 is reordered to
  Cartesian ``(x, y, z)`` so that ``so3_generators(1) == L`` exactly and the
  degree-1 representation of a rotation matrix ``R`` is ``R`` itself.  For
  degree 2 the basis is proportional to ``(xy, yz, 3z^2 - r^2, xz, x^2 - y^2)``.
* Rotation matrices act on column vectors; features store xyz on the last axis
  and are rotated as ``x @ R^T``.

Rotation utilities (random rotations, axis-angle conversions) use
``tensorflow_graphics.geometry.transformation``.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import tensorflow as tf
from tensorflow_graphics.geometry.transformation import axis_angle as tfg_axis_angle
from tensorflow_graphics.geometry.transformation import rotation_matrix_3d as tfg_rotation_matrix_3d

AXES = {"x": 0, "y": 1, "z": 2}


def _levi_civita() -> np.ndarray:
    eps = np.zeros((3, 3, 3))
    for perm in itertools.permutations(range(3)):
        eps[perm] = np.linalg.det(np.eye(3)[list(perm)])
    return eps


def _complex_angular_momentum(l: int) -> np.ndarray:
    """J_x, J_y, J_z of spin ``l`` in the basis |l, m>, m = -l..l."""
    m = np.arange(-l, l + 1)
    d = 2 * l + 1
    jz = np.diag(m).astype(complex)
    jp = np.zeros((d, d), complex)
    for i in range(d - 1):
        jp[i + 1, i] = np.sqrt(l * (l + 1) - m[i] * (m[i] + 1))
    jm = jp.conj().T
    return np.stack([(jp + jm) / 2, (jp - jm) / 2j, jz])


def _complex_to_real(l: int) -> np.ndarray:
    """Unitary change of basis from complex to real spherical harmonics."""
    d = 2 * l + 1
    q = np.zeros((d, d), complex)
    s = 1 / np.sqrt(2)
    for m in range(-l, l + 1):
        i = m + l
        if m < 0:
            q[i, l + m] = -1j * s
            q[i, l - m] = 1j * (-1) ** m * s
        elif m == 0:
            q[i, l] = 1
        else:
            q[i, l - m] = s
            q[i, l + m] = (-1) ** m * s
    return q


@functools.cache
def _so3_generators_np(l: int) -> np.ndarray:
    if l < 0 or int(l) != l:
        raise ValueError(f"The degree l of an SO(3) irrep must be a non-negative integer, got {l!r}.")
    if l == 0:
        return np.zeros((3, 1, 1))
    q = _complex_to_real(l)
    gens = q @ (-1j * _complex_angular_momentum(l)) @ q.conj().T
    if np.abs(gens.imag).max() > 1e-10:  # pragma: no cover - a bug in the construction above
        raise AssertionError("real SO(3) generators came out complex")
    gens = gens.real
    if l == 1:
        # Real-harmonic order (y, z, x) -> Cartesian (x, y, z).
        perm = [2, 0, 1]
        gens = gens[:, perm][:, :, perm]
    gens[np.abs(gens) < 1e-14] = 0.0
    gens.setflags(write=False)
    return gens


def so3_generators_numpy(l: int = 1) -> np.ndarray:
    """Generators ``[3, 2l+1, 2l+1]`` (float64 NumPy) of the real irrep of degree ``l``."""
    return _so3_generators_np(int(l)).copy()


def so3_generators(l: int = 1, dtype=tf.float32) -> tf.Tensor:
    """Generators ``[3, 2l+1, 2l+1]`` of the real SO(3) irrep of degree ``l``.

    ``so3_generators(1)`` are the skew matrices ``L_x, L_y, L_z`` acting on xyz
    vectors.  Every degree satisfies ``[G_x, G_y] = G_z`` (and cyclic) and the
    Casimir ``-sum_k G_k @ G_k = l (l + 1) I``.
    """
    return tf.constant(_so3_generators_np(int(l)), dtype=dtype)


def vector_generators(dtype=tf.float32) -> tf.Tensor:
    """``L_x, L_y, L_z``: the generators acting on 3-vectors, shape ``[3, 3, 3]``."""
    return so3_generators(1, dtype=dtype)


def _as_seed(seed) -> tf.Tensor:
    if isinstance(seed, (int, np.integer)):
        return tf.constant([int(seed), 0], dtype=tf.int64)
    seed = tf.convert_to_tensor(seed)
    if seed.shape.rank == 0:
        return tf.stack([tf.cast(seed, tf.int64), tf.constant(0, tf.int64)])
    return tf.cast(seed, tf.int64)


def random_quaternions(num: int, seed=None, dtype=tf.float32) -> tf.Tensor:
    """Unit quaternions ``[num, 4]`` (x, y, z, w) distributed uniformly on S^3.

    A normalised 4-D standard normal is uniform on the sphere, hence the rotation
    it represents is Haar-uniform on SO(3).  With ``seed`` (an int or a pair of
    ints) the draw is stateless and reproducible; without it, ``tf.random``'s
    global generator is used.
    """
    if seed is None:
        q = tf.random.normal([num, 4], dtype=tf.float64)
    else:
        q = tf.random.stateless_normal([num, 4], seed=_as_seed(seed), dtype=tf.float64)
    q = q / tf.norm(q, axis=-1, keepdims=True)
    return tf.cast(q, dtype)


def random_rotations(num: int, seed=None, dtype=tf.float32) -> tf.Tensor:
    """``num`` Haar-uniform random rotation matrices, shape ``[num, 3, 3]``."""
    q = random_quaternions(num, seed=seed, dtype=tf.float64)
    return tf.cast(tfg_rotation_matrix_3d.from_quaternion(q), dtype)


def random_z_rotations(num: int, seed=None, dtype=tf.float32) -> tf.Tensor:
    """``num`` rotations about the z axis with uniform angles, shape ``[num, 3, 3]``."""
    if seed is None:
        angle = tf.random.uniform([num, 1], 0.0, 2 * np.pi, dtype=tf.float64)
    else:
        angle = tf.random.stateless_uniform(
            [num, 1], seed=_as_seed(seed), minval=0.0, maxval=2 * np.pi, dtype=tf.float64
        )
    return axis_rotation("z", angle, dtype=dtype)


def axis_rotation(axis, angle, dtype=tf.float32) -> tf.Tensor:
    """Rotation(s) by ``angle`` about ``axis``.

    ``axis`` is ``"x"``, ``"y"``, ``"z"`` or a 3-vector (normalised here);
    ``angle`` a scalar or a tensor of shape ``[..., 1]`` (or ``[...]``).
    Returns ``[..., 3, 3]`` (``[3, 3]`` for a scalar angle).
    """
    angle = tf.convert_to_tensor(angle, dtype=tf.float64)
    if angle.shape.rank == 0:
        angle = angle[None]
    elif angle.shape[-1] != 1:
        angle = angle[..., None]
    if isinstance(axis, str):
        if axis not in AXES:
            raise ValueError(f"axis must be 'x', 'y', 'z' or a 3-vector, got {axis!r}.")
        axis = np.eye(3)[AXES[axis]]
    axis = tf.convert_to_tensor(axis, dtype=tf.float64)
    axis = axis / tf.norm(axis, axis=-1, keepdims=True)
    axis = tf.broadcast_to(axis, tf.concat([tf.shape(angle)[:-1], [3]], 0))
    rot = tfg_rotation_matrix_3d.from_axis_angle(axis, angle)
    return tf.cast(rot, dtype)


def wigner_D(l: int, rotations, dtype=None) -> tf.Tensor:
    """Matrix of the degree-``l`` real irrep for rotation matrices ``[..., 3, 3]``.

    Computed as ``expm(angle * sum_k axis_k G_k)`` from the axis-angle form of
    the rotation (tensorflow-graphics), in float64.  For ``l = 1`` this is the
    rotation matrix itself.
    """
    rotations = tf.convert_to_tensor(rotations)
    out_dtype = dtype or rotations.dtype
    rot = tf.cast(rotations, tf.float64)
    if l == 0:
        shape = tf.concat([tf.shape(rot)[:-2], [1, 1]], 0)
        return tf.ones(shape, dtype=out_dtype)
    if l == 1:
        return tf.cast(rot, out_dtype)
    axis, angle = tfg_axis_angle.from_rotation_matrix(rot)
    gens = so3_generators(l, dtype=tf.float64)
    algebra = tf.einsum("...k,kij->...ij", axis * angle, gens)
    return tf.cast(tf.linalg.expm(algebra), out_dtype)
