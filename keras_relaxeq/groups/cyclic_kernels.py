"""C_N-equivariant convolution kernels on 2D grids: the kernel transform and the equivariant basis.

Conventions are those of :mod:`keras_relaxeq.groups.cyclic` (fields ``[..., H, W, C]``, row = y,
column = x, ``act(g, x)[p] = rho(g) x[R_g^{-1} p]``).  A convolution is TensorFlow's
cross-correlation with an odd kernel ``W`` ``[k, k, C_in, C_out]`` and zero ``"SAME"`` padding::

    conv(x, W)[p] = sum_d x[p + d] W[d]          (rows: x[p] is a row vector of C_in channels)

Kernel transform
----------------
With ``A`` the linear part of ``R_g^{-1}`` on grid offsets, ``R_g^{-1}(p + d) = R_g^{-1} p + A d``, so

    conv(g.x, W)[p] = sum_d x[q + A d] rho_in(g)^T W[d]          (q = R_g^{-1} p)
                    = sum_d' x[q + d'] rho_in(g)^T W[A^{-1} d'],

and ``g.conv(x, W')[p] = sum_d' x[q + d'] W'[d'] rho_out(g)^T``.  Hence

    conv(g.x, W) = g.conv(x, T_g(W)),      T_g(W)[d] = rho_in(g)^T W[A^{-1} d] rho_out(g),

i.e. ``T_g(W)`` rotates the kernel's spatial axes by ``g^{-1}`` (``rotate_grid(W, -quarter_turns)``)
and conjugates every tap by the fibre matrices (:func:`transform_kernel`).  The padded grid of an
odd kernel is mapped onto itself by the rotation, so the identity holds at the borders too.  A conv
is equivariant iff ``T_g(W) = W`` for the generator (the kernel constraint), and its defect is a
single convolution, ``g.conv(x, W) - conv(g.x, W) = g.conv(x, W - T_g(W))``.

Equivariant basis
-----------------
``T`` is a representation of ``C_N`` on the kernel space by orthogonal maps (permutations of taps
times orthogonal fibre matrices), so the group average ``P = (1/N) sum_h T_h`` is the orthogonal
projector onto the solutions of the constraint.  :func:`equivariant_kernel_basis` builds ``P`` as a
matrix for one pair of fibres and orthonormalises its columns in index order (Gram-Schmidt, skipping
dependent ones).  For the grid orders ``N`` in ``(1, 2, 4)`` every ``T_h`` is a signed permutation, so
the columns of ``P`` are signed orbit sums and the basis is exact and machine independent (saved
coefficients mean the same kernels everywhere).  Its dimension is the character formula
``(1/N) sum_h tr(T_h)``, e.g. ``k^2 N`` for regular -> regular (36 for ``k = 3``, ``N = 4``).
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

from keras_relaxeq.groups.cyclic import FibreRep, FieldType, _is_numpy
from keras_relaxeq.groups.representations import Representation

__all__ = [
    "FieldRep",
    "equivariant_kernel_basis",
    "invariant_vector_basis",
    "kernel_operator",
    "parse_field_type",
    "field_type_spec",
    "project_kernel",
    "rotate_kernel",
    "transform_kernel",
]


# --------------------------------------------------------------------------- field types <-> config
def _fibre_name(f: FibreRep) -> str:
    return repr(f)  # "trivial", "vector", "irrep(k)", "regular"


def _parse_fibre(name, group) -> FibreRep:
    if isinstance(name, FibreRep):
        return name
    name = str(name).strip()
    if name.startswith("irrep(") and name.endswith(")"):
        return FibreRep("irrep", group, frequency=int(name[6:-1]))
    return FibreRep(name, group)


def parse_field_type(spec, group_order: int = 4) -> FieldType:
    """A :class:`FieldType` from itself, a fibre name (``"vector"``), a list of names, or a list of
    ``[name, multiplicity]`` runs (``[["vector", 10], ["trivial", 1]]``, the form :func:`field_type_spec`
    writes); names are ``"trivial"``, ``"vector"``, ``"irrep(k)"``, ``"regular"``."""
    if isinstance(spec, FieldType):
        return spec
    if isinstance(spec, (str, FibreRep)):
        spec = [spec]
    fibres = []
    for item in spec:
        if isinstance(item, (list, tuple)) and len(item) == 2 and not isinstance(item[1], str):
            fibres.extend([_parse_fibre(item[0], group_order)] * int(item[1]))
        else:
            fibres.append(_parse_fibre(item, group_order))
    return FieldType(group_order, fibres)


def field_type_spec(field_type: FieldType) -> list:
    """``[[name, multiplicity], ...]`` runs of the fibres (JSON-friendly; read back by :func:`parse_field_type`)."""
    runs = []
    for f in field_type.fibres:
        name = _fibre_name(f)
        if runs and runs[-1][0] == name:
            runs[-1][1] += 1
        else:
            runs.append([name, 1])
    return runs


# --------------------------------------------------------------------------- Representation wrapper
class FieldRep(Representation):
    """A C_N :class:`FieldType` as a layer :class:`Representation` of the per-pixel features ``[..., C]``.

    Finite groups have no Lie algebra: ``is_finite_group`` tells generic code (the penalties of
    :class:`~keras_relaxeq.layers.base.RelaxedEquivariantLayer`, ``assert_equivariant``) to use the
    group action ``act(g, x)`` on whole fields and the generating elements instead of generators.
    """

    is_finite_group = True

    def __init__(self, field_type: FieldType):
        if not isinstance(field_type, FieldType):
            raise TypeError(f"FieldRep wraps a keras_relaxeq.groups.cyclic.FieldType, got {field_type!r}.")
        self.field_type = field_type
        self.feature_shape = (field_type.channels,)

    @property
    def group(self):
        return self.field_type.group

    def elements(self) -> tuple:
        """The generating element(s) over which the defect penalty sums."""
        return self.field_type.generators()

    def act(self, g, x):
        """The action on fields ``[..., H, W, C]`` (grid and fibres)."""
        return self.field_type.act(g, x)

    def act_fibre(self, g, x):
        """The fibre action alone on per-pixel features ``[..., C]``."""
        return self.field_type.act_fibre(g, x)

    def generators_numpy(self):
        raise NotImplementedError(
            f"{self}: a finite group has no Lie algebra generators; use act(g, x) with the "
            "generating elements (elements())."
        )

    def apply_generators(self, v, transpose=False):
        return self.generators_numpy()

    def transform(self, rotations, x):
        raise NotImplementedError(f"{self} is acted on by C_{self.group.order} elements: use act(g, x).")

    def __eq__(self, other):
        return isinstance(other, FieldRep) and other.field_type == self.field_type

    def __hash__(self):
        return hash(("FieldRep", self.field_type))

    def __repr__(self):
        return f"FieldRep({self.field_type})"


# --------------------------------------------------------------------------- the kernel transform
def rotate_kernel(kernel, quarter_turns: int):
    """Rotate the spatial axes ``[k, k, ...]`` (the first two) of ``kernel`` counter-clockwise by
    ``quarter_turns`` with the grid convention of :func:`~keras_relaxeq.groups.cyclic.rotate_grid`."""
    q = int(quarter_turns) % 4
    if _is_numpy(kernel):
        return np.rot90(kernel, k=q, axes=(1, 0))
    rank = kernel.shape.rank
    perm = [1, 0] + list(range(2, rank))
    for _ in range(q):
        kernel = tf.transpose(tf.reverse(kernel, axis=[0]), perm)  # new[i, j] = old[n - 1 - j, i]
    return kernel


def transform_kernel(kernel, g, in_type: FieldType, out_type: FieldType):
    """``T_g(W)[d] = rho_in(g)^T W[A^{-1} d] rho_out(g)`` for ``W`` ``[k, k, C_in, C_out]`` (NumPy or TF):
    ``conv(g.x, W) = g.conv(x, T_g(W))`` (module notes)."""
    q = in_type.group.quarter_turns(g)
    w = rotate_kernel(kernel, -q)
    rho_in, rho_out = in_type.matrix(g), out_type.matrix(g)
    if _is_numpy(w):
        return np.einsum("ji,xyjp,po->xyio", rho_in, w, rho_out)
    dtype = w.dtype
    return tf.einsum("ji,xyjp,po->xyio", tf.constant(rho_in, dtype), w, tf.constant(rho_out, dtype))


def project_kernel(kernel, in_type: FieldType, out_type: FieldType) -> np.ndarray:
    """The orthogonal (Frobenius) projection of a kernel onto the C_N-equivariant kernels: the group average
    ``P(W) = (1/N) sum_h T_h(W)`` (module notes), float64.  ``kernel``: ``[k, k, C_in, C_out]`` (odd ``k``) or
    ``[C_in, C_out]`` for a per-pixel map ``x W`` (a ``1 x 1`` kernel).  ``W - P(W)`` is orthogonal to every
    equivariant kernel, and ``conv(x, P(W))`` is exactly equivariant."""
    w = np.asarray(kernel, np.float64)
    dense = w.ndim == 2
    if dense:
        w = w[None, None]
    if w.ndim != 4 or w.shape[0] != w.shape[1] or w.shape[0] % 2 == 0:
        raise ValueError(
            f"project_kernel: expected [k, k, C_in, C_out] with odd k or [C_in, C_out]; got {list(w.shape)}."
        )
    if w.shape[2:] != (in_type.channels, out_type.channels):
        raise ValueError(
            f"project_kernel: the kernel maps {w.shape[2]} to {w.shape[3]} channels, the field types "
            f"{in_type} -> {out_type} have {in_type.channels} -> {out_type.channels}."
        )
    p = sum(transform_kernel(w, h, in_type, out_type) for h in in_type.group.elements()) / in_type.group.order
    return p[0, 0] if dense else p


def kernel_operator(in_fibre: FibreRep, out_fibre: FibreRep, kernel_size: int, g=1) -> np.ndarray:
    """The matrix of ``T_g`` on ``vec(W)`` (row-major ``[k, k, a, b]``), float64 ``[D, D]``."""
    in_type, out_type = FieldType(in_fibre.group, [in_fibre]), FieldType(out_fibre.group, [out_fibre])
    dim = kernel_size * kernel_size * in_fibre.dim * out_fibre.dim
    eye = np.eye(dim).reshape(dim, kernel_size, kernel_size, in_fibre.dim, out_fibre.dim)
    cols = [transform_kernel(e, g, in_type, out_type).reshape(-1) for e in eye]
    return np.stack(cols, axis=1)


def _orthonormal_columns(p: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    """Gram-Schmidt of the columns of ``p`` in index order, skipping dependent ones: ``[r, D]`` rows."""
    basis = []
    for j in range(p.shape[1]):
        v = p[:, j].copy()
        for b in basis:
            v -= (b @ v) * b
        norm = np.linalg.norm(v)
        if norm > tol:
            basis.append(v / norm)
    return np.array(basis).reshape(len(basis), p.shape[0])


def _group_average(op: np.ndarray, order: int) -> np.ndarray:
    avg, power = np.zeros_like(op), np.eye(op.shape[0])
    for _ in range(order):
        avg += power
        power = op @ power
    return avg / order


@functools.cache
def _kernel_basis_cached(in_fibre: FibreRep, out_fibre: FibreRep, kernel_size: int) -> np.ndarray:
    op = kernel_operator(in_fibre, out_fibre, kernel_size)
    basis = _orthonormal_columns(_group_average(op, in_fibre.group.order))
    basis = basis.reshape(-1, kernel_size, kernel_size, in_fibre.dim, out_fibre.dim)
    basis.setflags(write=False)
    return basis


def equivariant_kernel_basis(in_fibre, out_fibre, kernel_size: int, group_order: int = 4) -> np.ndarray:
    """Orthonormal basis ``[n, k, k, a, b]`` (float64) of the kernels ``W`` with ``T_g(W) = W`` between one
    input fibre (``a`` channels) and one output fibre (``b`` channels); fibres are :class:`FibreRep` or
    names.  ``n`` may be 0 (e.g. trivial -> irrep(1) for ``k = 1``)."""
    if int(kernel_size) < 1 or int(kernel_size) % 2 == 0:
        raise ValueError(
            f"kernel_size must be odd (a centred kernel the rotation maps onto itself), got {kernel_size}."
        )
    in_fibre, out_fibre = _parse_fibre(in_fibre, group_order), _parse_fibre(out_fibre, group_order)
    if in_fibre.group != out_fibre.group:
        raise ValueError(f"Fibres of different groups: {in_fibre.group} and {out_fibre.group}.")
    return np.array(_kernel_basis_cached(in_fibre, out_fibre, int(kernel_size)))


def invariant_vector_basis(fibre, group_order: int = 4) -> np.ndarray:
    """Orthonormal basis ``[n, b]`` of the vectors ``v`` with ``rho(g) v = v`` (the equivariant biases of a
    fibre: one for trivial and regular fibres, none for ``irrep(k)``, ``k != 0 mod N``)."""
    fibre = _parse_fibre(fibre, group_order)
    avg = _group_average(fibre.matrix(1), fibre.group.order)
    return _orthonormal_columns(avg).reshape(-1, fibre.dim)
