"""Irreducible representations of O(3) and their direct sums (steerable features).

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
"""

from __future__ import annotations

import collections
import functools
from typing import Iterator, List, Union

import numpy as np
import tensorflow as tf

from keras_relaxeq.groups.representations import Representation
from keras_relaxeq.groups.so3 import so3_generators_numpy, wigner_D

_PARITY_CHARS = {"e": 1, "o": -1}


class Irrep(tuple):
    """Irreducible representation ``(l, p)`` of O(3).

    ``Irrep(1, -1)``, ``Irrep("1o")``, ``Irrep((1, -1))`` and ``Irrep("1y")``
    (parity ``(-1)^l``, that of the spherical harmonics) are all the vector
    representation.  Irreps compare and sort as the tuple ``(l, p)``.
    """

    def __new__(cls, l: Union[int, str, tuple, "Irrep"], p: int | None = None):
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
                    raise ValueError(f"Cannot parse {l!r} as an O(3) irrep: expected '<l><e|o|y>', "
                                     "e.g. '0e', '1o', '2e'.") from None
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

    def __mul__(self, other) -> Iterator["Irrep"]:
        """The irreps in the tensor product ``self (x) other``: ``|l1-l2| .. l1+l2`` with ``p1 p2``."""
        other = Irrep(other)
        p = self.p * other.p
        return iter([Irrep(l, p) for l in range(abs(self.l - other.l), self.l + other.l + 1)])

    def __rmul__(self, mul) -> "Irreps":
        """``3 * Irrep("1o") == Irreps("3x1o")``."""
        if not isinstance(mul, (int, np.integer)):
            return NotImplemented
        return Irreps([(int(mul), self)])

    def __add__(self, other) -> "Irreps":
        return Irreps(self) + Irreps(other)

    def D_from_matrix(self, matrices, dtype=None) -> tf.Tensor:
        """Matrix ``[..., 2l+1, 2l+1]`` of this irrep for O(3) matrices ``[..., 3, 3]``."""
        return _irrep_matrix(self, _split_o3(matrices), dtype)

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
        out: List[MulIrrep] = []
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
                        raise ValueError(f"Cannot parse {irreps!r} as Irreps: the term {term!r} is not "
                                         "of the form '<mul>x<l><e|o>' (e.g. '32x0e+32x1o').") from None
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
    def spherical_harmonics(lmax: int, p: int = -1) -> "Irreps":
        """``1x0e+1x1o+1x2e+...`` up to ``lmax`` (degree ``l`` has parity ``p ** l``)."""
        if p not in (1, -1):
            raise ValueError(f"p must be +1 or -1, got {p!r}.")
        return Irreps([(1, (l, p ** l)) for l in range(int(lmax) + 1)])

    # -- sizes ----------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return sum(mul * ir.dim for mul, ir in self)

    @property
    def num_irreps(self) -> int:
        """Total multiplicity (number of irreps counted with multiplicity)."""
        return sum(mul for mul, _ in self)

    @property
    def ls(self) -> List[int]:
        return [ir.l for mul, ir in self for _ in range(mul)]

    @property
    def lmax(self) -> int:
        if not self.ls:
            raise ValueError("lmax of an empty Irreps is undefined.")
        return max(self.ls)

    def slices(self) -> List[slice]:
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
    def simplify(self) -> "Irreps":
        """Merge neighbouring equal irreps and drop zero multiplicities (does not sort)."""
        out: List[list] = []
        for mul, ir in self:
            if mul == 0:
                continue
            if out and out[-1][1] == ir:
                out[-1][0] += mul
            else:
                out.append([mul, ir])
        return Irreps([(mul, ir) for mul, ir in out])

    def remove_zero_multiplicities(self) -> "Irreps":
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

    def __add__(self, other) -> "Irreps":
        return Irreps(tuple(self) + tuple(Irreps(other)))

    def __radd__(self, other) -> "Irreps":
        return Irreps(other) + self

    def __mul__(self, n) -> "Irreps":
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
    def D_from_matrix(self, matrices, dtype=None) -> tf.Tensor:
        """Dense block-diagonal ``[..., dim, dim]`` for O(3) matrices ``[..., 3, 3]``."""
        return IrrepsRep(self).matrix(matrices, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# SEGNN hidden-irreps helpers
# ---------------------------------------------------------------------------------------------

def fully_connected_tp_num_weights(irreps_in1, irreps_in2, irreps_out) -> int:
    """Number of weights of a fully connected tensor product ``in1 (x) in2 -> out``.

    One ``mul1 x mul2 x mul_out`` weight block per path ``(ir1, ir2, ir_out)`` with
    ``ir_out`` in ``ir1 * ir2`` (triangle rule and ``p_out = p1 p2``): the
    ``weight_numel`` of ``e3nn.o3.FullyConnectedTensorProduct`` (``"uvw"`` paths).
    """
    in1, in2, out = Irreps(irreps_in1), Irreps(irreps_in2), Irreps(irreps_out)
    total = 0
    for mul1, ir1 in in1:
        for mul2, ir2 in in2:
            products = list(ir1 * ir2)
            for mul3, ir3 in out:
                if ir3 in products:
                    total += mul1 * mul2 * mul3
    return total


def dimension_balanced_irreps(lmax: int, vec_dim: int, sh_type: bool = True) -> Irreps:
    """Split a feature budget of ``vec_dim`` dimensions evenly over degrees ``0 .. lmax``.

    Mirrors ``BalancedIrreps(lmax, vec_dim, sh_type)`` of the SEGNN reference code
    (Brandstetter et al., ICLR 2022; github.com/RobDHess/Steerable-E3-GNN,
    ``models/balanced_irreps.py``): each irrep type gets ``int(vec_dim / (2l+1) / n_types)``
    copies and the remainder goes to the scalars, so the total dimension is ``vec_dim``.
    With ``sh_type`` the types are those of the spherical harmonics (``(l, (-1)^l)``),
    otherwise ``0e`` plus both parities of every ``l >= 1``.
    Example: ``dimension_balanced_irreps(1, 64) == Irreps("34x0e+10x1o")``.
    """
    types = [Irrep(0, 1)]
    for l in range(1, int(lmax) + 1):
        types += [Irrep(l, (-1) ** l)] if sh_type else [Irrep(l, 1), Irrep(l, -1)]
    copies = [int(vec_dim / ir.dim / len(types)) for ir in types]
    copies[0] += vec_dim - sum(n * ir.dim for n, ir in zip(copies, types))
    return Irreps(list(zip(copies, types)))


def weight_balanced_irreps(scalar_irreps, attr_irreps, sh: bool = True, lmax: int | None = None) -> Irreps:
    """Hidden irreps up to ``lmax`` whose tensor product has as many weights as a scalar layer.

    Mirrors ``WeightBalancedIrreps(irreps_in1_scalar, irreps_in2, sh, lmax)`` of the SEGNN
    reference code (github.com/RobDHess/Steerable-E3-GNN, ``models/balanced_irreps.py``):
    the smallest ``n`` such that the fully connected tensor product
    ``hidden (x) attr_irreps -> hidden`` has at least as many weights as
    ``scalar_irreps (x) 1x0e -> scalar_irreps``, where ``hidden`` is
    ``n`` copies of each spherical-harmonic irrep up to ``lmax`` (sorted, simplified) if
    ``sh``, else ``dimension_balanced_irreps(lmax, n)``.  ``lmax`` defaults to
    ``attr_irreps.lmax``.
    """
    scalar_irreps, attr_irreps = Irreps(scalar_irreps), Irreps(attr_irreps)
    if lmax is None:
        lmax = attr_irreps.lmax

    def hidden(n):
        if sh:
            return (Irreps.spherical_harmonics(lmax) * n).sort().irreps.simplify()
        return dimension_balanced_irreps(lmax, n)

    target = fully_connected_tp_num_weights(scalar_irreps, "1x0e", scalar_irreps)
    n = 1
    irreps = hidden(n)
    while fully_connected_tp_num_weights(irreps, attr_irreps, irreps) < target:
        n += 1
        irreps = hidden(n)
    return irreps


def balanced_irreps(num_scalars: int = 64, lmax: int = 1, balance: str = "weights",
                    attr_irreps=None, sh_type: bool = True) -> Irreps:
    """Hidden irreps of a SEGNN with the budget of ``num_scalars`` scalar channels.

    ``balance="weights"`` (the SEGNN default ``--subspace_type=weightbalanced``, used
    for the charged N-body runs with ``--hidden_features=64 --lmax_h=1 --lmax_attr=1``):
    :func:`weight_balanced_irreps` with ``attr_irreps`` (default
    ``Irreps.spherical_harmonics(lmax)``), giving ``32x0e+32x1o`` for 64 scalars and
    ``lmax = 1``.  ``balance="dimension"`` (``--subspace_type=balanced``):
    :func:`dimension_balanced_irreps`, total dimension ``num_scalars`` (``34x0e+10x1o``).
    """
    if balance in ("weights", "weight", "weightbalanced"):
        if attr_irreps is None:
            attr_irreps = Irreps.spherical_harmonics(lmax)
        return weight_balanced_irreps(Irreps([(int(num_scalars), "0e")]), attr_irreps, sh=sh_type,
                                      lmax=lmax)
    if balance in ("dimension", "dim", "balanced"):
        return dimension_balanced_irreps(lmax, int(num_scalars), sh_type=sh_type)
    raise ValueError(f"balance must be 'weights' or 'dimension', got {balance!r}.")


# ---------------------------------------------------------------------------------------------
# O(3) matrices and the representation on [..., irreps.dim] features
# ---------------------------------------------------------------------------------------------

def _split_o3(matrices):
    """``g -> (R, s)`` with ``s = sign(det g)`` and ``R = s g`` proper, both float64."""
    g = tf.cast(tf.convert_to_tensor(matrices), tf.float64)
    s = tf.where(tf.linalg.det(g) < 0, tf.constant(-1.0, tf.float64), tf.constant(1.0, tf.float64))
    return g * s[..., None, None], s


def _irrep_matrix(ir: Irrep, split, dtype=None, cache=None) -> tf.Tensor:
    """``(p if s == -1 else 1) * D_l(R)`` in float64 (or ``dtype``)."""
    proper, s = split
    if cache is not None and ir.l in cache:
        d = cache[ir.l]
    else:
        d = wigner_D(ir.l, proper, dtype=tf.float64)
        if cache is not None:
            cache[ir.l] = d
    if ir.p == -1:
        d = d * s[..., None, None]
    return tf.cast(d, dtype or tf.float64)


@functools.lru_cache(maxsize=None)
def _block_generators(l: int) -> np.ndarray:
    g = so3_generators_numpy(l)
    g.setflags(write=False)
    return g


#: feature layouts of a ``(mul, ir)`` block: copy-major ``"mul_ir"`` (e3nn, index ``u * d + i``) or
#: component-major ``"ir_mul"`` (cuequivariance's ``ir_mul``, index ``i * mul + u``)
LAYOUTS = ("mul_ir", "ir_mul")


def check_layout(layout, owner="layout") -> str:
    """``layout`` if it is one of :data:`LAYOUTS`, else a ValueError naming ``owner``."""
    if layout not in LAYOUTS:
        raise ValueError(f"{owner}: layout must be one of {LAYOUTS}, got {layout!r} ('mul_ir': e3nn's copy-major "
                         "blocks; 'ir_mul': component-major blocks, faster for tensor products).")
    return layout


def layout_permutation(irreps, layout) -> np.ndarray:
    """Index array ``perm`` with ``x_layout = x_mul_ir[..., perm]`` for features of ``irreps``.

    The blocks keep their order; only the inside of a block with ``l > 0`` and ``mul > 1``
    changes (``"ir_mul"``: entry ``i * mul + u`` is ``mul_ir`` entry ``u * d + i``).
    ``x_mul_ir = x_layout[..., argsort(perm)]``.
    """
    irreps = Irreps(irreps)
    check_layout(layout)
    perm = []
    for sl, (mul, ir) in zip(irreps.slices(), irreps):
        idx = np.arange(sl.start, sl.stop).reshape(mul, ir.dim)
        perm.append((idx.T if layout == "ir_mul" else idx).reshape(-1))
    return np.concatenate(perm).astype(np.int64) if perm else np.zeros(0, np.int64)


def convert_layout(x, irreps, source="mul_ir", target="ir_mul") -> tf.Tensor:
    """Features ``[..., irreps.dim]`` from layout ``source`` to ``target`` (a transpose per block)."""
    irreps = Irreps(irreps)
    check_layout(source, "convert_layout source")
    check_layout(target, "convert_layout target")
    x = tf.convert_to_tensor(x)
    if source == target:
        return x
    lead = tf.shape(x)[:-1]
    parts = []
    for sl, (mul, ir) in zip(irreps.slices(), irreps):
        block = x[..., sl]
        if mul > 1 and ir.dim > 1:
            shape = [mul, ir.dim] if source == "mul_ir" else [ir.dim, mul]
            block = tf.reshape(block, tf.concat([lead, shape], 0))
            block = tf.reshape(tf.linalg.matrix_transpose(block), tf.concat([lead, [mul * ir.dim]], 0))
        parts.append(block)
    if not parts:
        return x
    return parts[0] if len(parts) == 1 else tf.concat(parts, axis=-1)


class IrrepsRep(Representation):
    """O(3) acting on steerable features ``[..., irreps.dim]`` laid out as ``irreps``.

    ``layout``: ``"mul_ir"`` (default, e3nn: block ``(mul, ir)`` stored copy-major, entry
    ``u * d + i``) or ``"ir_mul"`` (component-major, entry ``i * mul + u``; see
    :func:`layout_permutation`).  Everything below holds in either layout.

    * ``generators_numpy()``: ``[3, dim, dim]``, block diagonal with
      ``kron(I_mul, so3_generators(l))`` per ``(mul, (l, p))`` block (``kron(G, I_mul)`` in
      ``"ir_mul"``).  Parity does not enter the Lie algebra.
    * ``apply_generators(v)``: the same, block by block (no dense ``dim x dim`` matrix).
    * ``transform(g, x)``: ``g`` is ``[3, 3]`` or one matrix per batch element
      ``[B, 3, 3]`` (``x`` is ``[B, ..., dim]``) and may be improper: ``g = s R`` acts on
      ``(l, p)`` as ``(p if s == -1 else 1) * wigner_D(l, R)``.  Features transform as
      ``x_block -> D x_block`` per copy (column-vector convention; for ``1o``
      this is ``x @ g^T`` exactly like :class:`VectorRep`).
    * ``matrix(g)``: the dense block-diagonal ``[..., dim, dim]``.
    """

    def __init__(self, irreps, layout="mul_ir"):
        self.irreps = Irreps(irreps)
        self.layout = check_layout(layout, "IrrepsRep")
        self.feature_shape = (self.irreps.dim,)

    @property
    def is_trivial(self) -> bool:
        return all(ir.is_scalar() for mul, ir in self.irreps if mul > 0)

    @property
    def _ir_mul(self) -> bool:
        return self.layout == "ir_mul"

    def generators_numpy(self) -> np.ndarray:
        dim = self.irreps.dim
        out = np.zeros((3, dim, dim))
        for sl, (mul, ir) in zip(self.irreps.slices(), self.irreps):
            if mul == 0 or ir.l == 0:
                continue
            g = _block_generators(ir.l)
            kron = (lambda k: np.kron(g[k], np.eye(mul))) if self._ir_mul else (lambda k: np.kron(np.eye(mul), g[k]))
            out[:, sl, sl] = np.stack([kron(k) for k in range(3)])
        return out

    def _blocks(self, x):
        """Split ``[..., dim]`` into ``(mul, ir, block)`` with blocks ``[..., mul, 2l+1]``
        (``"mul_ir"``) or ``[..., 2l+1, mul]`` (``"ir_mul"``)."""
        lead = tf.shape(x)[:-1]
        for sl, (mul, ir) in zip(self.irreps.slices(), self.irreps):
            if mul == 0:
                continue
            shape = [ir.dim, mul] if self._ir_mul else [mul, ir.dim]
            block = tf.reshape(x[..., sl], tf.concat([lead, shape], 0))
            yield mul, ir, block

    def _merge(self, blocks, lead):
        flat = [tf.reshape(b, tf.concat([lead, [mul * ir.dim]], 0)) for mul, ir, b in blocks]
        if not flat:
            raise ValueError("IrrepsRep with empty irreps has no features.")
        return flat[0] if len(flat) == 1 else tf.concat(flat, axis=-1)

    def apply_generators(self, v, transpose: bool = False) -> tf.Tensor:
        """``v @ G_k^T`` (``v @ G_k`` with ``transpose``), k = 0, 1, 2: ``[..., dim] -> [3, ..., dim]``."""
        v = tf.convert_to_tensor(v)
        if self._ir_mul:
            eq = "...jm,kij->k...im" if not transpose else "...jm,kji->k...im"
        else:
            eq = "...mj,kij->k...mi" if not transpose else "...mj,kji->k...mi"
        lead = tf.concat([[3], tf.shape(v)[:-1]], 0)
        out = []
        for mul, ir, block in self._blocks(v):
            if ir.l == 0:
                res = tf.zeros(tf.concat([[3], tf.shape(block)], 0), dtype=v.dtype)
            else:
                res = tf.einsum(eq, block, tf.constant(_block_generators(ir.l), dtype=v.dtype))
            out.append((mul, ir, res))
        return self._merge(out, lead)

    def matrix(self, rotations, dtype=None) -> tf.Tensor:
        """Dense block-diagonal representation matrix ``[..., dim, dim]`` of O(3) matrices ``[..., 3, 3]``."""
        rotations = tf.convert_to_tensor(rotations)
        out_dtype = dtype or (rotations.dtype if rotations.dtype.is_floating else tf.float64)
        split = _split_o3(rotations)
        batch = tf.shape(split[0])[:-2]
        cache: dict = {}
        dim = self.irreps.dim
        rows = []
        offset = 0
        eq = "uv,...ij->...iujv" if self._ir_mul else "uv,...ij->...uivj"
        for mul, ir in self.irreps:
            if mul == 0:
                continue
            d = _irrep_matrix(ir, split, tf.float64, cache)
            block = tf.einsum(eq, tf.eye(mul, dtype=tf.float64), d)
            block = tf.reshape(block, tf.concat([batch, [mul * ir.dim, mul * ir.dim]], 0))
            pad = [[0, 0]] * (block.shape.rank - 1) + [[offset, dim - offset - mul * ir.dim]]
            rows.append(tf.pad(block, pad))
            offset += mul * ir.dim
        return tf.cast(tf.concat(rows, axis=-2), out_dtype)

    def transform(self, rotations, x):
        x = tf.convert_to_tensor(x)
        rotations = tf.convert_to_tensor(rotations)
        if rotations.shape.rank not in (2, 3):
            raise ValueError(f"rotations must be [3, 3] or [batch, 3, 3], got shape {rotations.shape}.")
        batched = rotations.shape.rank == 3
        split = _split_o3(rotations)
        cache: dict = {}
        out = []
        for mul, ir, block in self._blocks(x):
            if ir.is_scalar():
                out.append((mul, ir, block))
                continue
            d = _irrep_matrix(ir, split, x.dtype, cache)
            if not batched:
                res = tf.einsum("...jm,ij->...im" if self._ir_mul else "...j,ij->...i", block, d)
            else:
                # block [B, ..., mul, d] ([B, ..., d, mul]); d [B, d, d] -> [B, 1, ..., 1, d, d]
                ones = [1] * (block.shape.rank - 3)
                d = tf.reshape(d, tf.concat([tf.shape(d)[:1], ones, [ir.dim, ir.dim]], 0))
                res = tf.linalg.matmul(d, block) if self._ir_mul else tf.linalg.matmul(block, d, transpose_b=True)
            out.append((mul, ir, res))
        return self._merge(out, tf.shape(x)[:-1])

    def __eq__(self, other):
        return type(self) is type(other) and self.irreps.simplify() == other.irreps.simplify() and \
            self.layout == other.layout

    def __hash__(self):
        return hash((type(self).__name__, tuple(self.irreps.simplify()), self.layout))

    def __repr__(self):
        return f"IrrepsRep('{self.irreps}')" if self.layout == "mul_ir" else \
            f"IrrepsRep('{self.irreps}', layout='{self.layout}')"


def as_irreps(irreps_or_lmax) -> Irreps:
    """``int`` -> ``Irreps.spherical_harmonics(lmax)``; anything else -> ``Irreps(...)``."""
    if isinstance(irreps_or_lmax, (int, np.integer)) and not isinstance(irreps_or_lmax, bool):
        return Irreps.spherical_harmonics(int(irreps_or_lmax))
    return Irreps(irreps_or_lmax)


__all__ = [
    "Irrep",
    "MulIrrep",
    "Irreps",
    "IrrepsRep",
    "LAYOUTS",
    "as_irreps",
    "check_layout",
    "convert_layout",
    "layout_permutation",
    "balanced_irreps",
    "dimension_balanced_irreps",
    "weight_balanced_irreps",
    "fully_connected_tp_num_weights",
]
