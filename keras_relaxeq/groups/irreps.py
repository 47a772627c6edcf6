"""Irreducible representations of O(3) and their direct sums: the irreps algebra.

An irrep of O(3) = SO(3) x {+1, -1} is labelled by a degree ``l >= 0`` and a
parity ``p = +1`` ("e", even) or ``p = -1`` ("o", odd).  An element
``g = s R`` with ``s = det g = +-1`` and ``R`` proper acts on the irrep
``(l, p)`` as ``(p if s == -1 else 1) * D_l(R)``, where ``D_l`` is
:func:`keras_relaxeq.groups.so3.wigner_D` (real basis of ``so3_generators(l)``:
degree 1 in Cartesian ``x, y, z`` order).  Vectors are ``1o`` (so ``-I`` acts
as ``-I``), pseudovectors such as angular momentum ``1e``.

A feature vector of type ``Irreps("32x0e+32x1o")`` has ``32 * 1 + 32 * 3``
entries, laid out like e3nn: the ``(mul, irrep)`` blocks one after the other,
and inside a block copy-major, ``offset + u * (2l + 1) + m``.

The string syntax, ``simplify``, ``sort``, ``slices`` and
``Irreps.spherical_harmonics`` follow ``e3nn.o3.Irreps`` (e3nn/o3/_irreps.py)
so that irreps strings from e3nn-based reference code (SEGNN, Equiformer)
can be used as they are.

This module holds the labels and their algebra (:class:`Irrep`, :class:`MulIrrep`,
:class:`Irreps`, :func:`as_irreps`).  The other irreps concerns live next to it:

* :mod:`keras_relaxeq.groups.o3_matrices`: the representation matrices (``D_from_matrix`` uses it);
* :mod:`keras_relaxeq.groups.irreps_rep`: :class:`IrrepsRep`, O(3) acting on features;
* :mod:`keras_relaxeq.groups.irreps_layouts`: feature layouts (``LAYOUTS``, ``check_layout``,
  ``layout_permutation``, ``convert_layout``);
* :mod:`keras_relaxeq.groups.irreps_balance`: SEGNN hidden irreps and tensor-product weight counts;
* :mod:`keras_relaxeq.groups.spherical_harmonics` and :mod:`keras_relaxeq.groups.clebsch_gordan`;
* :mod:`keras_relaxeq.groups.so3`: generators and Wigner matrices of SO(3).

All of them are importable from :mod:`keras_relaxeq.groups`.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator

import numpy as np

_PARITY_CHARS = {"e": 1, "o": -1}


class Irrep(tuple):
    """Irreducible representation ``(l, p)`` of O(3).

    ``Irrep(1, -1)``, ``Irrep("1o")``, ``Irrep((1, -1))`` and ``Irrep("1y")``
    (parity ``(-1)^l``, that of the spherical harmonics) are all the vector
    representation.  Irreps compare and sort as the tuple ``(l, p)``.
    """

    def __new__(cls, l: int | str | tuple | Irrep, p: int | None = None):
        if p is None:
            if isinstance(l, Irrep):
                return l
            if isinstance(l, str):
                name = l.strip()
                try:
                    degree = int(name[:-1])
                    char = name[-1]
                    parity = (-1) ** degree if char == "y" else _PARITY_CHARS[char]
                except (ValueError, KeyError, IndexError):
                    raise ValueError(
                        f"Cannot parse {l!r} as an O(3) irrep: expected '<l><e|o|y>', e.g. '0e', '1o', '2e'."
                    ) from None
                l, p = degree, parity
            elif isinstance(l, tuple) and len(l) == 2:
                l, p = l
            else:
                raise ValueError(f"Cannot interpret {l!r} as an O(3) irrep: pass (l, p), '1o', ...")
        if isinstance(l, (bool, np.bool_)) or not isinstance(l, (int, np.integer)) or l < 0:
            raise ValueError(f"The degree l of an irrep must be a non-negative integer, got {l!r}.")
        if p not in (1, -1):
            raise ValueError(f"The parity p of an irrep must be +1 or -1, got {p!r}.")
        return super().__new__(cls, (int(l), int(p)))

    @property
    def l(self) -> int:  # noqa: E743 - the standard name
        return self[0]

    @property
    def p(self) -> int:
        return self[1]

    @property
    def dim(self) -> int:
        return 2 * self.l + 1

    def is_scalar(self) -> bool:
        """``True`` for ``0e`` (invariant under all of O(3))."""
        return self.l == 0 and self.p == 1

    def __repr__(self) -> str:
        return f"{self.l}{'e' if self.p == 1 else 'o'}"

    __str__ = __repr__

    def __mul__(self, other) -> Iterator[Irrep]:
        """The irreps in the tensor product ``self (x) other``: ``|l1-l2| .. l1+l2`` with ``p1 p2``."""
        other = Irrep(other)
        p = self.p * other.p
        return iter([Irrep(l, p) for l in range(abs(self.l - other.l), self.l + other.l + 1)])

    def __rmul__(self, mul) -> Irreps:
        """``3 * Irrep("1o") == Irreps("3x1o")``."""
        if not isinstance(mul, (int, np.integer)):
            return NotImplemented
        return Irreps([(int(mul), self)])

    def __add__(self, other) -> Irreps:
        return Irreps(self) + Irreps(other)

    def D_from_matrix(self, matrices, dtype=None):
        """Matrix ``[..., 2l+1, 2l+1]`` of this irrep for O(3) matrices ``[..., 3, 3]`` (float64 by default)."""
        from keras_relaxeq.groups.o3_matrices import irrep_matrix, split_o3  # TensorFlow only when used

        return irrep_matrix(self, split_o3(matrices), dtype)

    def count(self, _value):  # tuple methods that make no sense here
        raise NotImplementedError

    def index(self, _value):
        raise NotImplementedError


class MulIrrep(tuple):
    """``mul`` copies of an irrep, ``(mul, ir)``; unpacks as ``mul, ir = mul_ir``."""

    def __new__(cls, mul, ir=None):
        if ir is None:
            mul, ir = mul
        if isinstance(mul, (bool, np.bool_)) or not isinstance(mul, (int, np.integer)) or mul < 0:
            raise ValueError(f"A multiplicity must be a non-negative integer, got {mul!r}.")
        return super().__new__(cls, (int(mul), Irrep(ir)))

    @property
    def mul(self) -> int:
        return self[0]

    @property
    def ir(self) -> Irrep:
        return self[1]

    @property
    def dim(self) -> int:
        return self.mul * self.ir.dim

    def __repr__(self) -> str:
        return f"{self.mul}x{self.ir}"

    __str__ = __repr__


SortResult = collections.namedtuple("SortResult", ["irreps", "p", "inv"])


class Irreps(tuple):
    """Direct sum of O(3) irreps, e.g. ``Irreps("32x0e+32x1o")``.

    Accepts a string (``"32x0e + 32x1o"``, ``"1x1o+1x0e"``, ``"0e"``, ``""``),
    an :class:`Irrep`, another ``Irreps``, or a list of ``(mul, irrep)`` pairs /
    irreps / irrep strings.  Iterating yields ``(mul, irrep)`` pairs
    (:class:`MulIrrep`).  ``str(Irreps(s))`` is the canonical form
    ``"32x0e+32x1o"`` and ``Irreps(str(irreps)) == irreps``.

    Equality is that of the list of ``(mul, irrep)`` (like e3nn: ``"2x0e"`` and
    ``"1x0e+1x0e"`` differ; compare ``.simplify()`` for "same action").  An
    ``Irreps`` also compares equal to a string that parses to it.
    """

    def __new__(cls, irreps=None):
        if isinstance(irreps, Irreps):
            return super().__new__(cls, irreps)
        out: list[MulIrrep] = []
        if irreps is None:
            pass
        elif isinstance(irreps, Irrep):
            out.append(MulIrrep(1, irreps))
        elif isinstance(irreps, str):
            text = irreps.strip()
            if text:
                for term in text.split("+"):
                    term = term.strip()
                    try:
                        if "x" in term:
                            mul, ir = term.split("x")
                            mul = int(mul)
                        else:
                            mul, ir = 1, term
                        out.append(MulIrrep(mul, Irrep(ir)))
                    except ValueError:
                        raise ValueError(
                            f"Cannot parse {irreps!r} as Irreps: the term {term!r} is not "
                            "of the form '<mul>x<l><e|o>' (e.g. '32x0e+32x1o')."
                        ) from None
        else:
            for item in irreps:
                if isinstance(item, MulIrrep):
                    out.append(item)
                elif isinstance(item, (str, Irrep)):
                    out.append(MulIrrep(1, Irrep(item)))
                elif isinstance(item, tuple) and len(item) == 2:
                    out.append(MulIrrep(item[0], Irrep(item[1])))
                else:
                    raise ValueError(f"Cannot interpret {item!r} as (mul, irrep).")
        return super().__new__(cls, out)

    # -- constructors -------------------------------------------------------------------------
    @staticmethod
    def spherical_harmonics(lmax: int, p: int = -1) -> Irreps:
        """``1x0e+1x1o+1x2e+...`` up to ``lmax`` (degree ``l`` has parity ``p ** l``)."""
        if p not in (1, -1):
            raise ValueError(f"p must be +1 or -1, got {p!r}.")
        return Irreps([(1, (l, p**l)) for l in range(int(lmax) + 1)])

    # -- sizes ----------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return sum(mul * ir.dim for mul, ir in self)

    @property
    def num_irreps(self) -> int:
        """Total multiplicity (number of irreps counted with multiplicity)."""
        return sum(mul for mul, _ in self)

    @property
    def ls(self) -> list[int]:
        return [ir.l for mul, ir in self for _ in range(mul)]

    @property
    def lmax(self) -> int:
        if not self.ls:
            raise ValueError("lmax of an empty Irreps is undefined.")
        return max(self.ls)

    def slices(self) -> list[slice]:
        """Slice of the feature axis holding each ``(mul, irrep)`` block."""
        out, start = [], 0
        for mul_ir in self:
            out.append(slice(start, start + mul_ir.dim))
            start += mul_ir.dim
        return out

    def count(self, ir) -> int:
        """Total multiplicity of ``ir``."""
        ir = Irrep(ir)
        return sum(mul for mul, other in self if other == ir)

    def index(self, _value):
        raise NotImplementedError

    def __contains__(self, ir) -> bool:
        ir = Irrep(ir)
        return any(other == ir for _, other in self)

    # -- manipulation ---------------------------------------------------------------------------
    def simplify(self) -> Irreps:
        """Merge neighbouring equal irreps and drop zero multiplicities (does not sort)."""
        out: list[list] = []
        for mul, ir in self:
            if mul == 0:
                continue
            if out and out[-1][1] == ir:
                out[-1][0] += mul
            else:
                out.append([mul, ir])
        return Irreps([(mul, ir) for mul, ir in out])

    def remove_zero_multiplicities(self) -> Irreps:
        return Irreps([(mul, ir) for mul, ir in self if mul > 0])

    def sort(self) -> SortResult:
        """Sort by ``(l, p)``; returns ``(irreps, p, inv)`` like e3nn.

        ``inv[i]`` is the old position of the new ``i``-th term, ``p`` its inverse.
        """
        order = sorted(range(len(self)), key=lambda i: (self[i].ir, i))
        inv = tuple(order)
        perm = [0] * len(inv)
        for new, old in enumerate(inv):
            perm[old] = new
        return SortResult(Irreps([self[i] for i in inv]), tuple(perm), inv)

    def __getitem__(self, i):
        item = super().__getitem__(i)
        return Irreps(item) if isinstance(i, slice) else item

    def __add__(self, other) -> Irreps:
        return Irreps(tuple(self) + tuple(Irreps(other)))

    def __radd__(self, other) -> Irreps:
        return Irreps(other) + self

    def __mul__(self, n) -> Irreps:
        """Repetition: ``Irreps("0e+1o") * 2 == Irreps("0e+1o+0e+1o")``."""
        if not isinstance(n, (int, np.integer)):
            return NotImplemented
        return Irreps(tuple(self) * int(n))

    __rmul__ = __mul__

    def __eq__(self, other) -> bool:
        if isinstance(other, (str, Irrep)):
            try:
                other = Irreps(other)
            except ValueError:
                return False
        if not isinstance(other, tuple):
            return NotImplemented
        return tuple(self) == tuple(Irreps(other))

    def __ne__(self, other) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return "+".join(str(mul_ir) for mul_ir in self)

    __str__ = __repr__

    # -- representation matrices ----------------------------------------------------------------
    def D_from_matrix(self, matrices, dtype=None):
        """Dense block-diagonal ``[..., dim, dim]`` for O(3) matrices ``[..., 3, 3]``."""
        from keras_relaxeq.groups.o3_matrices import irreps_matrix  # TensorFlow only when used

        return irreps_matrix(self, matrices, dtype=dtype)


def as_irreps(irreps_or_lmax) -> Irreps:
    """``int`` -> ``Irreps.spherical_harmonics(lmax)``; anything else -> ``Irreps(...)``."""
    if isinstance(irreps_or_lmax, (int, np.integer)) and not isinstance(irreps_or_lmax, bool):
        return Irreps.spherical_harmonics(int(irreps_or_lmax))
    return Irreps(irreps_or_lmax)


__all__ = ["Irrep", "MulIrrep", "Irreps", "SortResult", "as_irreps"]
