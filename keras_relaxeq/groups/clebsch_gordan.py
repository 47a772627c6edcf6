"""Real Clebsch-Gordan coefficients in the basis of ``so3_generators(l)``.

``C = clebsch_gordan(l1, l2, l3)`` (float64 NumPy ``[2l1+1, 2l2+1, 2l3+1]``) is the
equivariant bilinear map ``(x, y) -> z_k = sum_ij C_ijk x_i y_j`` from degrees
``l1 (x) l2`` to ``l3``:

    sum_ij C_ijk (D1 x)_i (D2 y)_j = (D3 sum_ij C_ij. x_i y_j)_k     for all R in SO(3),

``D_l = wigner_D(l, R)``.  It is computed numerically, not from tables, as the
null space of the infinitesimal constraint: with ``G^(l)_a = so3_generators(l)[a]``
and ``C`` flattened row-major over ``(i, j, k)``,

    (G1_a^T (x) I (x) I  +  I (x) G2_a^T (x) I  -  I (x) I (x) G3_a) vec(C) = 0,  a = x, y, z

(the generators are skew, so this is ``-(G1 (x) I (x) I + I (x) G2 (x) I + I (x) I (x) G3)``).
Since SO(3) is connected this is equivalent to the finite constraint; the solution
space is one-dimensional when ``|l1 - l2| <= l3 <= l1 + l2`` and zero otherwise.
Normalisation: unit Frobenius norm, hence ``sum_ij C_ijk C_ijk' = delta_kk' / (2l3+1)``;
sign: the first entry (row-major) that is not zero is positive.  Entries below
``1e-13`` (float noise where the exact value is 0) are set to 0.

For O(3) the parities follow the SO(3) coefficients: ``(l1, p1) (x) (l2, p2)`` contains
``(l3, p1 p2)``.  Odd ``l1 + l2 + l3`` is allowed (``clebsch_gordan(1, 1, 1)`` is the
cross product ``eps_ijk / sqrt 6``).
"""

from __future__ import annotations

import functools

import numpy as np

from keras_relaxeq.groups.irreps import Irrep
from keras_relaxeq.groups.so3 import so3_generators_numpy


def is_allowed(l1: int, l2: int, l3: int) -> bool:
    """Triangle rule ``|l1 - l2| <= l3 <= l1 + l2`` (non-negative degrees)."""
    return min(l1, l2, l3) >= 0 and abs(l1 - l2) <= l3 <= l1 + l2


@functools.cache
def clebsch_gordan(l1: int, l2: int, l3: int) -> np.ndarray:
    """Real CG tensor ``[2l1+1, 2l2+1, 2l3+1]`` (float64, read-only, cached); zeros if forbidden."""
    for l in (l1, l2, l3):
        if isinstance(l, bool) or int(l) != l or l < 0:
            raise ValueError(f"Degrees must be non-negative integers, got {(l1, l2, l3)}.")
    l1, l2, l3 = int(l1), int(l2), int(l3)
    d1, d2, d3 = 2 * l1 + 1, 2 * l2 + 1, 2 * l3 + 1
    if not is_allowed(l1, l2, l3):
        out = np.zeros((d1, d2, d3))
        out.setflags(write=False)
        return out
    g1, g2, g3 = (so3_generators_numpy(l) for l in (l1, l2, l3))
    i1, i2, i3 = np.eye(d1), np.eye(d2), np.eye(d3)
    gram = np.zeros((d1 * d2 * d3,) * 2)
    for a in range(3):
        m = np.kron(np.kron(g1[a].T, i2), i3) + np.kron(np.kron(i1, g2[a].T), i3) - np.kron(np.kron(i1, i2), g3[a])
        gram += m.T @ m
    evals, evecs = np.linalg.eigh(gram)
    scale = max(evals[-1], 1.0)
    if evals[0] > 1e-9 * scale or (len(evals) > 1 and evals[1] < 1e-6 * scale):  # pragma: no cover
        raise AssertionError(
            f"CG({l1}, {l2}, {l3}): null space is not one-dimensional (smallest eigenvalues {evals[:2]})"
        )
    c = evecs[:, 0]
    c = c / np.linalg.norm(c)
    c[np.abs(c) < 1e-13] = 0.0
    first = np.flatnonzero(np.abs(c) > 1e-10)[0]
    if c[first] < 0:
        c = -c
    out = c.reshape(d1, d2, d3)
    out.setflags(write=False)
    return out


def clebsch_gordan_for_irreps(ir1, ir2, ir3) -> np.ndarray:
    """CG for O(3) irreps: ``clebsch_gordan(l1, l2, l3)`` if ``p3 == p1 p2``, zeros otherwise."""
    ir1, ir2, ir3 = Irrep(ir1), Irrep(ir2), Irrep(ir3)
    if ir3.p != ir1.p * ir2.p:
        return np.zeros((ir1.dim, ir2.dim, ir3.dim))
    return clebsch_gordan(ir1.l, ir2.l, ir3.l)


__all__ = ["clebsch_gordan", "clebsch_gordan_for_irreps", "is_allowed"]
