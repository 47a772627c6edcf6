"""Scale group math for scale-equivariant steerable CNNs (SESN, Sosnovik, Szmaja and Smeulders, ICLR 2020).

NumPy only (no Keras layers).  Conventions: images are ``[..., H, W, C]`` (rows = y), scale-space features
``[..., H, W, S, C]`` with one slice per scale ``sigma_s`` of a fixed, increasing list ``scales``.

The scale action.  A dilation by ``a > 0`` acts on an image ``f`` by ``(L_a f)(p) = f(p / a)`` (``a > 1``
enlarges the pattern) and on a scale-space feature by ``(L_a y)(p, sigma) = y(p / a, sigma / a)``.  Vector
fields (the smoke plume velocity) are acted on as stacks of scalar fields: the grid is resampled and the
vectors keep their magnitude and direction (an isotropic dilation does not turn them).  See
docs/scale_equivariance.md for the velocity units.

The kernel basis.  ``psi_b^sigma(p) = sigma^-2 psi_b(p / sigma)`` with the Hermite-Gaussian functions
``psi_{nm}(x, y) = He_n(x) He_m(y) exp(-(x^2 + y^2) / 2)`` (probabilists' Hermite polynomials, ``n + m <=
max_order``), each divided by one constant (its L2 norm at the first scale, on an untruncated grid) shared by
all scales.  The ``sigma^-2`` factor is what makes a convolution scale-equivariant in the continuum:
``conv(L_a f, psi^sigma) = L_a conv(f, psi^(sigma / a))``, so dilating the input by ``a`` moves the responses
along the scale axis from ``sigma / a`` to ``sigma``.

On a grid this holds up to three errors: the kernel is truncated to ``k x k`` taps (large for ``sigma`` near
``k / 2``), the sums over grid points are Riemann sums of the continuum integrals (aliasing, ~``exp(-2 pi^2
sigma^2)`` for a smooth input), and ``sigma * a`` must be one of the ``scales`` (a *scale-shift step*).  The exact
discrete step used by the tests and the defect penalty is the integer factor ``a = 2`` on inputs that are
sampled from the same smooth (band-limited) field at two resolutions: then the coarse grid is exactly
``D_2 x = x[::2, ::2]`` (:func:`downscale_grid`), with nothing interpolated.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.polynomial import hermite_e

from keras_relaxeq.groups.representations import Representation

__all__ = [
    "DEFAULT_SCALES",
    "ScaleFieldRep",
    "basis_orders",
    "check_scales",
    "downscale_grid",
    "hermite_scale_basis",
    "scale_pairs",
    "uniform_scale_shift",
]

#: the scales of the relaxed scale-equivariant smoke plume models (Wang et al. 2022, Pertigkiozoglou et al. 2024)
DEFAULT_SCALES = (1.0, 1.5, 2.0, 2.5)


def check_scales(scales) -> tuple:
    """``scales`` as a tuple of floats, checked: positive and strictly increasing."""
    try:
        out = tuple(float(s) for s in scales)
    except TypeError as err:
        raise ValueError(f"scales must be a sequence of positive numbers, got {scales!r}.") from err
    if not out or min(out) <= 0 or any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError(f"scales must be positive and strictly increasing, e.g. {DEFAULT_SCALES}; got {scales!r}.")
    return out


def basis_orders(max_order: int) -> list:
    """The Hermite orders ``(n, m)`` with ``n + m <= max_order`` (``(max_order + 1)(max_order + 2) / 2`` of them)."""
    if int(max_order) != max_order or max_order < 0:
        raise ValueError(f"max_order must be an integer >= 0, got {max_order!r}.")
    return [(n, t - n) for t in range(int(max_order) + 1) for n in range(t + 1)]


def _hermite_gaussian(n, m, ys, xs, sigma):
    cn = np.zeros(n + 1)
    cn[n] = 1.0
    cm = np.zeros(m + 1)
    cm[m] = 1.0
    y, x = ys[:, None] / sigma, xs[None, :] / sigma
    return hermite_e.hermeval(x, cm) * hermite_e.hermeval(y, cn) * np.exp(-(x**2 + y**2) / 2.0) / sigma**2


def hermite_scale_basis(scales, kernel_size: int, max_order: int = 3) -> np.ndarray:
    """The multi-scale kernel basis ``[S, B, k, k]``: ``psi_b^sigma`` sampled at the integer taps
    ``-(k // 2) .. k // 2`` (axes ``[y, x]``) for every ``sigma`` in ``scales`` and every order ``b`` of
    :func:`basis_orders`, normalised by one constant per ``b`` (module notes), float64."""
    scales = check_scales(scales)
    k = int(kernel_size)
    if k != kernel_size or k < 1 or k % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size!r}.")
    orders = basis_orders(max_order)
    taps = np.arange(k, dtype=np.float64) - k // 2
    # normalisation on a grid wide enough that the Gaussian is not truncated (shared by all scales)
    half = int(math.ceil(10 * scales[0] + 2 * max_order))
    wide = np.arange(-half, half + 1, dtype=np.float64)
    norms = [np.linalg.norm(_hermite_gaussian(n, m, wide, wide, scales[0])) for n, m in orders]
    basis = np.empty((len(scales), len(orders), k, k))
    for s, sigma in enumerate(scales):
        for b, (n, m) in enumerate(orders):
            basis[s, b] = _hermite_gaussian(n, m, taps, taps, sigma) / norms[b]
    return basis


def scale_pairs(scales, factor: float, rtol: float = 1e-9) -> list:
    """The index pairs ``(i, j)`` with ``scales[j] == factor * scales[i]``: the scale slices that a dilation by
    ``factor`` maps onto each other (output slice ``i`` of the coarse input is slice ``j`` of the fine one)."""
    scales = check_scales(scales)
    pairs = []
    for i, s in enumerate(scales):
        for j, t in enumerate(scales):
            if abs(t - factor * s) <= rtol * t:
                pairs.append((i, j))
    return pairs


def uniform_scale_shift(scales, factor: float, rtol: float = 1e-9):
    """``m`` if ``scales[i + m] == factor * scales[i]`` for every ``i`` with ``i + m`` in range (a geometric
    list, e.g. ``2 ** (arange(S) / 2)`` has ``m = 2`` for ``factor = 2``), else ``None``."""
    pairs = scale_pairs(scales, factor, rtol)
    if not pairs:
        return None
    shift = pairs[0][1] - pairs[0][0]
    n = len(check_scales(scales))
    if len(pairs) == n - shift and all(j - i == shift for i, j in pairs) and shift > 0:
        return shift
    return None


def downscale_grid(x, factor: int = 2):
    """``D_a x = x[..., ::a, ::a, :]`` on images ``[B, H, W, C]`` (axes 1 and 2): the same field sampled on a grid
    ``a`` times coarser, exact for a field that is smooth on the coarse grid.  NumPy or TF tensors; ``H`` and ``W``
    must be multiples of ``a`` (so that zero padding outside the grid maps to zero padding)."""
    a = int(factor)
    if a != factor or a < 1:
        raise ValueError(f"the exact grid step is an integer factor >= 1, got {factor!r}.")
    h, w = x.shape[1], x.shape[2]
    if (h is not None and h % a) or (w is not None and w % a):
        raise ValueError(f"downscaling by {a} needs H and W divisible by {a}; got a grid {h}x{w}.")
    return x[:, ::a, ::a]


class ScaleFieldRep(Representation):
    """A layer's input or output space under the scale action: ``channels`` scalar fields on the grid
    (``scales=None``, features ``[..., C]``) or scale-space fields (features ``[..., S, C]``, one slice per scale).

    The scale group is continuous, but a grid only carries its discrete steps: generic code reads
    ``is_scale_field`` and uses the layer's own scale-step defect rather than Lie-algebra generators.
    """

    is_scale_field = True

    def __init__(self, channels: int, scales=None):
        self.channels = int(channels)
        self.scales = None if scales is None else check_scales(scales)
        self.feature_shape = (self.channels,) if self.scales is None else (len(self.scales), self.channels)

    @property
    def is_scale_space(self) -> bool:
        return self.scales is not None

    def generators_numpy(self):
        raise NotImplementedError(
            f"{self}: the scale action resamples the grid, it has no matrix generator on per-pixel features; "
            "use the layer's scale-step defect (keras_relaxeq.layers.scale_conv)."
        )

    def apply_generators(self, v, transpose=False):
        return self.generators_numpy()

    def transform(self, rotations, x):
        raise NotImplementedError(f"{self} is acted on by dilations of the grid, not by rotations.")

    def __eq__(self, other):
        return isinstance(other, ScaleFieldRep) and (other.channels, other.scales) == (self.channels, self.scales)

    def __hash__(self):
        return hash(("ScaleFieldRep", self.channels, self.scales))

    def __repr__(self):
        return f"ScaleFieldRep(channels={self.channels}, scales={self.scales})"
