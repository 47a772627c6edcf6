"""The cyclic group C_N acting on 2D grids of features.

Group
-----
``C_N = {0, 1, ..., N - 1}`` under addition mod N; element ``g`` is the rotation by ``2 pi g / N``
counter-clockwise; the generating element is ``1``.

Grids and the axis convention
-----------------------------
Fields are tensors ``[..., H, W, C]`` (channels last, square grids ``H = W``).  The row index is
the coordinate ``y`` and the column index is ``x``: ``(x, y) = (column, row)``, with rows counted
upwards (plotted with ``origin="lower"``; this is how PhiFlow arrays ``[y, x]`` are laid out, see
:mod:`keras_relaxeq.datasets.smoke_plume`).  A quarter turn counter-clockwise about the centre
of the grid sends the cell ``(x, y)`` to ``(n - 1 - y, x)``, so the rotated field is

    (R x)[i, j] = x[n - 1 - j, i]     (``np.rot90(x, k=1, axes=(W, H))``).

The element ``g`` of ``C_N`` turns the grid by ``4 g / N`` quarter turns.  Only ``N`` in
``(1, 2, 4)`` can act exactly on a square grid (other angles do not map grid points to grid
points): for other ``N`` the fibre representations are available (:meth:`FieldType.act_fibre`),
the grid action raises an error.

Fibre representations
---------------------
The channels of a field are a direct sum of fibres, each transformed by ``rho(g)``:

* ``trivial`` (1 channel): ``rho(g) = 1`` (scalars: smoke density, pressure, speed);
* ``vector`` (2 channels ``(v_x, v_y)``): the rotation matrix ``[[cos, -sin], [sin, cos]]`` of
  angle ``2 pi g / N``, i.e. the frequency-1 irrep of SO(2) restricted to C_N (velocities);
  ``irrep(k)`` is the frequency-``k`` one;
* ``regular`` (N channels, indexed by the group): ``(rho(g) v)_h = v_{h - g}``, a cyclic shift
  of the N channels by ``g`` (hidden features of group convolutions).

The action on a field is ``act(g, x)[p] = rho(g) x[R_g^{-1} p]``: the grid is rotated and every
fibre transformed, e.g. a rotated velocity field is ``rot90`` of the grid *and* the 2x2 rotation
of its components.

Equivariance defect
-------------------
A finite group has no Lie algebra, so the relaxation penalty uses the exact defect over the
generating elements, ``sum_g || rho_out(g) f(x) - f(rho_in(g) x) ||^2``
(:func:`equivariance_defect`); it is zero for all ``x`` exactly when ``f`` is equivariant.

Everything accepts NumPy arrays (computed in NumPy) or TensorFlow tensors (computed with TF ops,
differentiable, usable inside ``tf.function``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

__all__ = [
    "CyclicGroup",
    "FibreRep",
    "FieldType",
    "GRID_ORDERS",
    "equivariance_defect",
    "rotate_grid",
]

#: orders N whose rotations map a square grid onto itself
GRID_ORDERS = (1, 2, 4)


def _check_order(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"The order N of the cyclic group must be a positive integer, got {n!r}.")
    return int(n)


class CyclicGroup:
    """``C_N``: elements ``0..N-1`` (rotations by ``2 pi g / N``), composition by addition mod N."""

    def __init__(self, n: int):
        self.order = _check_order(n)

    @property
    def identity(self) -> int:
        return 0

    def elements(self) -> tuple:
        return tuple(range(self.order))

    def generators(self) -> tuple:
        """The generating element(s): ``(1,)`` (none for the trivial group ``C_1``)."""
        return (1,) if self.order > 1 else ()

    def element(self, g) -> int:
        if isinstance(g, bool) or not isinstance(g, (int, np.integer)):
            raise TypeError(f"A C_{self.order} element is an integer (the number of 1/{self.order} turns), got {g!r}.")
        return int(g) % self.order

    def compose(self, a, b) -> int:
        return (self.element(a) + self.element(b)) % self.order

    def inverse(self, g) -> int:
        return (-self.element(g)) % self.order

    def angle(self, g) -> float:
        return 2.0 * np.pi * self.element(g) / self.order

    def quarter_turns(self, g) -> int:
        """Quarter turns of the grid for ``g``; raises for ``N`` outside ``(1, 2, 4)``."""
        if self.order not in GRID_ORDERS:
            raise ValueError(
                f"C_{self.order} cannot act exactly on a square grid (its rotations by "
                f"{360 / self.order:g} degrees do not map grid points to grid points); use N in "
                f"{GRID_ORDERS} for grid actions, or FieldType.act_fibre for the channels alone."
            )
        return (self.element(g) * 4 // self.order) % 4

    def __eq__(self, other):
        return isinstance(other, CyclicGroup) and other.order == self.order

    def __hash__(self):
        return hash(("CyclicGroup", self.order))

    def __repr__(self):
        return f"CyclicGroup({self.order})"


def _as_group(group) -> CyclicGroup:
    return group if isinstance(group, CyclicGroup) else CyclicGroup(group)


# --------------------------------------------------------------------------- #
# Fibre representations
# --------------------------------------------------------------------------- #
class FibreRep:
    """A representation of ``C_N`` on the channels of one fibre: ``"trivial"``, ``"irrep"`` (frequency
    ``k``; ``"vector"`` is ``k = 1``) or ``"regular"``."""

    def __init__(self, kind: str, group, frequency: int = 1):
        self.group = _as_group(group)
        if kind == "vector":
            kind, frequency = "irrep", 1
        if kind not in ("trivial", "irrep", "regular"):
            raise ValueError(
                f"Unknown fibre representation {kind!r}: choose 'trivial', 'vector', 'irrep' or 'regular'."
            )
        self.kind = kind
        self.frequency = int(frequency) if kind == "irrep" else 0

    @property
    def dim(self) -> int:
        return {"trivial": 1, "irrep": 2, "regular": self.group.order}[self.kind]

    def matrix(self, g) -> np.ndarray:
        """``rho(g)`` as a float64 ``[dim, dim]`` array (exact integers for N in (1, 2, 4))."""
        g = self.group.element(g)
        if self.kind == "trivial":
            return np.ones((1, 1))
        if self.kind == "regular":
            return np.roll(np.eye(self.group.order), g, axis=0)  # e_h -> e_{h+g}
        quarter = (4 * g * self.frequency) % (4 * self.group.order)
        if quarter % self.group.order == 0:  # a multiple of a quarter turn: exact entries
            c, s = [(1, 0), (0, 1), (-1, 0), (0, -1)][quarter // self.group.order]
        else:
            theta = self.frequency * self.group.angle(g)
            c, s = np.cos(theta), np.sin(theta)
        return np.array([[c, -s], [s, c]], dtype=np.float64)

    def __eq__(self, other):
        return isinstance(other, FibreRep) and (self.kind, self.frequency, self.group) == (
            other.kind,
            other.frequency,
            other.group,
        )

    def __hash__(self):
        return hash((self.kind, self.frequency, self.group))

    def __repr__(self):
        if self.kind == "irrep":
            return "vector" if self.frequency == 1 else f"irrep({self.frequency})"
        return self.kind


# --------------------------------------------------------------------------- #
# Grid rotation
# --------------------------------------------------------------------------- #
def _is_numpy(x) -> bool:
    return isinstance(x, (np.ndarray, np.generic))


def rotate_grid(x, quarter_turns: int):
    """Rotate the grid axes ``[..., H, W, C]`` of ``x`` by ``quarter_turns`` counter-clockwise quarter turns
    (``(x, y) = (column, row)``): ``rotate_grid(x, 1)[..., i, j, :] = x[..., n - 1 - j, i, :]``.  Channels are
    left alone."""
    k = int(quarter_turns) % 4
    rank = x.ndim if _is_numpy(x) else x.shape.rank
    if rank is None or rank < 3:
        raise ValueError(f"Expected a field of shape [..., H, W, C] (rank >= 3), got shape {list(np.shape(x))}.")
    if _is_numpy(x):
        return np.rot90(x, k=k, axes=(rank - 2, rank - 3))
    perm = list(range(rank - 3)) + [rank - 2, rank - 3, rank - 1]
    for _ in range(k):
        x = tf.transpose(tf.reverse(x, axis=[rank - 3]), perm)
    return x


def _check_square(x):
    shape = np.shape(x) if _is_numpy(x) else x.shape
    h, w = shape[-3], shape[-2]
    if h is not None and w is not None and h != w:
        raise ValueError(f"Quarter turns need a square grid; got H = {h}, W = {w} (shape {list(shape)}).")


# --------------------------------------------------------------------------- #
# Field types
# --------------------------------------------------------------------------- #
class FieldType:
    """A field on a 2D grid whose channels are a direct sum of C_N fibres.

    ``FieldType(4, ["vector"])`` is a velocity field; ``FieldType(4, ["regular"] * 8)`` eight regular
    fields (32 channels); ``a + b`` is the direct sum (channels of ``a`` first).  Channels are laid out
    fibre after fibre, in order.
    """

    def __init__(self, group, fibres: Sequence = ("trivial",)):
        self.group = _as_group(group)
        if isinstance(fibres, (str, FibreRep)):
            fibres = [fibres]
        self.fibres = tuple(f if isinstance(f, FibreRep) else FibreRep(f, self.group) for f in fibres)
        if not self.fibres:
            raise ValueError("A FieldType needs at least one fibre ('trivial', 'vector' or 'regular').")
        for f in self.fibres:
            if f.group != self.group:
                raise ValueError(f"Fibre {f} is a representation of {f.group}, not of {self.group}.")

    @classmethod
    def trivial(cls, group, multiplicity: int = 1) -> FieldType:
        return cls(group, ["trivial"] * multiplicity)

    @classmethod
    def vector(cls, group, multiplicity: int = 1) -> FieldType:
        return cls(group, ["vector"] * multiplicity)

    @classmethod
    def regular(cls, group, multiplicity: int = 1) -> FieldType:
        return cls(group, ["regular"] * multiplicity)

    @property
    def channels(self) -> int:
        return sum(f.dim for f in self.fibres)

    def generators(self) -> tuple:
        """The generating element(s) of the group: ``(1,)``."""
        return self.group.generators()

    def matrix(self, g) -> np.ndarray:
        """``rho(g)`` on the channels: the block-diagonal float64 ``[C, C]`` matrix of the fibres."""
        out = np.zeros((self.channels, self.channels))
        start = 0
        for f in self.fibres:
            out[start : start + f.dim, start : start + f.dim] = f.matrix(g)
            start += f.dim
        return out

    def _check_channels(self, x):
        c = (np.shape(x) if _is_numpy(x) else x.shape)[-1]
        if c is not None and c != self.channels:
            raise ValueError(
                f"{self} has {self.channels} channels, got a tensor of shape "
                f"{list(np.shape(x) if _is_numpy(x) else x.shape)} (channels last)."
            )

    def act_fibre(self, g, x):
        """``rho(g)`` applied to the channel axis (the last) only; any ``N``."""
        self._check_channels(x)
        m = self.matrix(g)
        if _is_numpy(x):
            return np.einsum("...j,ij->...i", x, m.astype(np.result_type(x.dtype, np.float32)))
        return tf.einsum("...j,ij->...i", x, tf.constant(m, dtype=x.dtype))

    def act(self, g, x):
        """The action on a field ``[..., H, W, C]``: rotate the grid by ``g`` and apply ``rho(g)`` to the channels.

        ``N`` must be 1, 2 or 4 (see the module notes)."""
        k = self.group.quarter_turns(g)
        self._check_channels(x)
        _check_square(x)
        return self.act_fibre(g, rotate_grid(x, k))

    def __add__(self, other: FieldType) -> FieldType:
        if not isinstance(other, FieldType) or other.group != self.group:
            raise ValueError(f"Only field types of the same group add up (direct sum); got {self} + {other}.")
        return FieldType(self.group, self.fibres + other.fibres)

    def __eq__(self, other):
        return isinstance(other, FieldType) and (self.group, self.fibres) == (other.group, other.fibres)

    def __hash__(self):
        return hash((self.group, self.fibres))

    def __repr__(self):
        parts, run = [], []
        for f in self.fibres + (None,):
            if run and f != run[-1]:
                parts.append(f"{len(run)}x{run[-1]}" if len(run) > 1 else repr(run[-1]))
                run = []
            run.append(f)
        return f"FieldType(C{self.group.order}: {' + '.join(parts)})"


def _as_field_type(t, group) -> FieldType:
    if isinstance(t, FieldType):
        return t
    return FieldType(group, t)


# --------------------------------------------------------------------------- #
# Equivariance defect
# --------------------------------------------------------------------------- #
def equivariance_defect(
    f, x, in_type: FieldType, out_type: FieldType = None, elements=None, *, per_element: bool = False
):
    """``sum_g || rho_out(g) f(x) - f(rho_in(g) x) ||^2``, summed over every entry (batch included).

    Parameters
    ----------
    f : callable
        A map of fields ``[..., H, W, C_in] -> [..., H', W', C_out]`` (a function, a Keras layer or model).
    x : array or tensor
        Input fields of ``in_type``.
    in_type, out_type : FieldType
        Field types of the input and the output (``out_type`` defaults to ``in_type``; a fibre list such as
        ``["trivial"]`` is read as a field type of ``in_type``'s group).
    elements : sequence of int, optional
        Group elements to sum over; default the generating element(s) (``(1,)``), which is zero exactly
        when ``f`` is equivariant to the whole group.
    per_element : bool
        Return the defect of each element (``[len(elements)]``) instead of their sum.

    Returns
    -------
    The defect as a NumPy float64 scalar for NumPy inputs (computed in float64), a TF scalar tensor
    (differentiable) for TF inputs.
    """
    if not isinstance(in_type, FieldType):
        raise TypeError(f"in_type must be a keras_relaxeq.groups.cyclic.FieldType, got {in_type!r}.")
    out_type = in_type if out_type is None else _as_field_type(out_type, in_type.group)
    if out_type.group != in_type.group:
        raise ValueError(f"Input and output field types belong to different groups: {in_type} and {out_type}.")
    elements = in_type.generators() if elements is None else tuple(elements)
    numpy = _is_numpy(x)
    if numpy:
        x = np.asarray(x, dtype=np.float64)
    y = f(x)
    terms = []
    for g in elements:
        diff = out_type.act(g, y) - f(in_type.act(g, x))
        terms.append(np.sum(np.square(diff)) if numpy else tf.reduce_sum(tf.square(diff)))
    if numpy:
        terms = np.asarray(terms, dtype=np.float64)
        return terms if per_element else np.float64(terms.sum())
    if not terms:
        zero = tf.zeros((), dtype=y.dtype)
        return tf.zeros((0,), dtype=y.dtype) if per_element else zero
    terms = tf.stack(terms)
    return terms if per_element else tf.reduce_sum(terms)
