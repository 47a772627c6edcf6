"""Real spherical harmonics in the basis of ``so3_generators(l)``.

``spherical_harmonics(irreps_or_lmax, vectors)`` returns ``[..., dim]`` with the
property ``Y_l(R r) = wigner_D(l, R) Y_l(r)`` for every rotation ``R``, in the
*package's* real basis (that of :func:`keras_relaxeq.groups.so3.so3_generators`):

* ``l = 0``: ``1``;
* ``l = 1``: ``sqrt(3) (x, y, z)`` (Cartesian order, ``D_1(R) = R``);
* ``l = 2``: ``sqrt(15) (xy, yz, (3z^2 - r^2) / (2 sqrt 3), xz, (x^2 - y^2) / 2)``;
* general ``l``: the harmonic polynomials of degree ``l`` that intertwine the
  action of the generators, computed once per degree (see below).

Normalisation (like e3nn): ``"component"`` (default) gives each degree's block a
squared norm ``2l + 1`` on unit vectors (each component has mean square 1 over
the sphere), ``"norm"`` a norm of 1, ``"integral"`` unit ``L2`` norm of every
component on the sphere (``component / sqrt(4 pi)``).  Note the basis differs
from e3nn's (e3nn orders ``l = 1`` as ``(y, z, x)`` and uses a y-up frame).

Construction.  Write ``Y_l(r) = C_l m_l(r)`` with ``m_l`` the monomials
``x^a y^b z^c`` (``a + b + c = l``).  Differentiating ``Y(exp(t L_k) r) =
D(exp(t L_k)) Y(r)`` at ``t = 0`` gives ``C_l A_k = G_k C_l`` where ``A_k`` is the
derivation of the monomials along the vector field ``L_k r`` and ``G_k =
so3_generators(l)[k]``.  Its solution space is one-dimensional (only the
harmonic part of the monomials carries the irrep ``l``, once), found in float64
as the null eigenvector of ``sum_k M_k^T M_k`` (``M_k`` the constraint on
``vec(C_l)``); the scale is fixed by the normalisation and the sign by making
the ``m = 0`` component (the one fixed by ``G_z``) positive at ``r = e_z``.
Evaluation is a polynomial in TensorFlow (float32 or float64), so gradients
exist everywhere; with ``normalize=True`` the zero vector maps to ``Y_0`` (the
constant) and zeros for ``l >= 1``, with finite (zero) gradients instead of NaN.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import tensorflow as tf

from keras_relaxeq.groups.irreps import Irreps, as_irreps
from keras_relaxeq.groups.so3 import so3_generators_numpy


def _monomials(l: int):
    """Exponents ``(a, b, c)`` with ``a + b + c = l``, a fixed order."""
    return tuple((a, b, l - a - b) for a in range(l, -1, -1) for b in range(l - a, -1, -1))


def _m0_index(l: int) -> int:
    """Index of the ``m = 0`` component (fixed by rotations about z)."""
    return 2 if l == 1 else l


@functools.cache
def _sh_coefficients(l: int) -> np.ndarray:
    """``C_l``, ``[2l+1, n_monomials]`` float64 with component normalisation."""
    mons = _monomials(l)
    index = {m: i for i, m in enumerate(mons)}
    n, d = len(mons), 2 * l + 1
    if l == 0:
        c = np.ones((1, 1))
        c.setflags(write=False)
        return c
    vec_gens = so3_generators_numpy(1)
    gens = so3_generators_numpy(l)
    gram = np.zeros((d * n, d * n))
    for k in range(3):
        # (A_k)_{alpha, beta}: d/dt m_alpha(exp(t L_k) r) = sum_beta A_{alpha beta} m_beta(r).
        a_k = np.zeros((n, n))
        for alpha, i_alpha in index.items():
            for i in range(3):
                if alpha[i] == 0:
                    continue
                for j in range(3):
                    if vec_gens[k, i, j] == 0:
                        continue
                    beta = list(alpha)
                    beta[i] -= 1
                    beta[j] += 1
                    a_k[i_alpha, index[tuple(beta)]] += vec_gens[k, i, j] * alpha[i]
        # vec(C A) - vec(G C) = (I (x) A^T - G (x) I) vec(C), row-major vec.
        m = np.kron(np.eye(d), a_k.T) - np.kron(gens[k], np.eye(n))
        gram += m.T @ m
    evals, evecs = np.linalg.eigh(gram)
    scale = max(evals[-1], 1.0)
    if evals[0] > 1e-9 * scale or evals[1] < 1e-6 * scale:  # pragma: no cover
        raise AssertionError(f"spherical harmonics of degree {l}: intertwiner space is not 1-dimensional")
    c = evecs[:, 0].reshape(d, n)
    # Scale: |Y_l(e_z)|^2 = 2l+1 (rotation invariant, hence on the whole unit sphere).
    y_ez = c[:, index[(0, 0, l)]]
    c = c * math.sqrt(2 * l + 1) / np.linalg.norm(y_ez)
    if c[_m0_index(l), index[(0, 0, l)]] < 0:
        c = -c
    c[np.abs(c) < 1e-13 * np.abs(c).max()] = 0.0
    c.setflags(write=False)
    return c


def spherical_harmonics_coefficients(l: int) -> tuple:
    """``(monomial exponents, C_l)``: ``Y_l(r) = C_l @ [x^a y^b z^c]`` (component normalisation)."""
    return _monomials(int(l)), _sh_coefficients(int(l)).copy()


def _ls_of(irreps: Irreps):
    """Degrees to evaluate, one per irrep copy; parities must be ``p0 ** l`` for one ``p0``."""
    present = [ir for mul, ir in irreps if mul > 0]
    if not any(all(ir.p == p0**ir.l for ir in present) for p0 in (-1, 1)):
        raise ValueError(
            f"Irreps {irreps} are not spherical-harmonic irreps: degree l must have "
            "parity (-1)^l for every l (harmonics of a vector) or +1 for every l "
            "(harmonics of a pseudovector)."
        )
    return [ir.l for mul, ir in irreps for _ in range(mul)]


def spherical_harmonics(irreps_or_lmax, vectors, normalize: bool = True, normalization: str = "component") -> tf.Tensor:
    """Real spherical harmonics of ``vectors`` ``[..., 3]``, output ``[..., irreps.dim]``.

    ``irreps_or_lmax``: an int ``lmax`` (all degrees ``0 .. lmax``, irreps
    ``1x0e+1x1o+...``), or irreps such as ``"1x0e+1x1o"`` / ``"2e"`` whose parities are
    all ``(-1)^l`` (or all ``+1``, harmonics of a pseudovector); multiplicities repeat a
    degree.  ``normalize``: project the vectors on the unit sphere first (the zero vector
    maps to ``Y_0`` only, with finite gradients); otherwise ``Y_l`` is homogeneous of
    degree ``l`` in ``r``.  ``normalization``: ``"component"``, ``"norm"`` or
    ``"integral"`` (see module docstring).  Computed in the dtype of ``vectors``
    (float32 or float64).
    """
    irreps = as_irreps(irreps_or_lmax)
    ls = _ls_of(irreps)
    if normalization not in ("component", "norm", "integral"):
        raise ValueError(f"normalization must be 'component', 'norm' or 'integral', got {normalization!r}.")
    vectors = tf.convert_to_tensor(vectors)
    if not vectors.dtype.is_floating:
        vectors = tf.cast(vectors, tf.float32)
    if vectors.shape.rank is not None and vectors.shape[-1] not in (None, 3):
        raise ValueError(f"spherical_harmonics expects vectors of shape [..., 3], got {vectors.shape}.")
    dtype = vectors.dtype
    if not ls:
        return tf.zeros(tf.concat([tf.shape(vectors)[:-1], [0]], 0), dtype=dtype)

    if normalize:
        sq = tf.reduce_sum(tf.square(vectors), axis=-1, keepdims=True)
        nonzero = sq > 0
        # The double where keeps the gradient finite at r = 0.
        safe = tf.where(nonzero, sq, tf.ones_like(sq))
        vectors = tf.where(nonzero, vectors * tf.math.rsqrt(safe), tf.zeros_like(vectors))

    lmax = max(ls)
    x, y, z = vectors[..., 0], vectors[..., 1], vectors[..., 2]
    powers = []
    for coord in (x, y, z):
        p = [tf.ones_like(coord)]
        for _ in range(lmax):
            p.append(p[-1] * coord)
        powers.append(p)

    per_degree = {}
    for l in sorted(set(ls)):
        c = _sh_coefficients(l)
        if normalization == "norm":
            c = c / math.sqrt(2 * l + 1)
        elif normalization == "integral":
            c = c / math.sqrt(4 * math.pi)
        mons = tf.stack([powers[0][a] * powers[1][b] * powers[2][cc] for a, b, cc in _monomials(l)], -1)
        per_degree[l] = tf.einsum("...n,mn->...m", mons, tf.constant(c, dtype=dtype))
    out = [per_degree[l] for l in ls]
    return out[0] if len(out) == 1 else tf.concat(out, axis=-1)


__all__ = ["spherical_harmonics", "spherical_harmonics_coefficients"]
