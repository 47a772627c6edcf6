"""Scale-equivariant steerable convolutions (SESN) on 2D grids, the RSteer scale variant, and the relaxed lifting layer.

Features: images ``[batch, H, W, C]`` and scale-space fields ``[batch, H, W, S, C]``, one slice per scale of
``scales`` (default ``(1, 1.5, 2, 2.5)``).  Kernels are combinations of the multi-scale Hermite-Gaussian basis
``psi_b^sigma = sigma^-2 psi_b(. / sigma)`` of :func:`keras_relaxeq.groups.scale.hermite_scale_basis`, with one
coefficient per basis function shared by all scales, which is what makes the layers scale-equivariant
(:mod:`keras_relaxeq.groups.scale` for the action and where it is exact on a grid):

* :class:`ScaleLiftingConv2D`: images -> scale space, ``y[sigma] = conv(x, sum_b w_b psi_b^sigma) + bias``;
* :class:`ScaleConv2D`: scale space -> scale space, ``y[sigma_s] = sum_{j < scale_size} conv(x[sigma_{s+j}],
  sum_b w_{j,b} psi_b^{sigma_s}) + bias`` (slices beyond the last scale are zero, as in SESN; exact scale shifts
  need a geometric ``scales`` list when ``scale_size > 1``);
* :class:`ScalePooling`: scale space -> images, max (or mean) over the scales: scale-invariant pooling.

Pointwise activations and ``keras.layers.BatchNormalization(axis=-1)`` (statistics shared by the scales)
commute with the action.

RSteer (``RSteerScaleLiftingConv2D``, ``RSteerScaleConv2D``, Wang, Walters and Yu 2022): the coefficients vary
over the ``k x k`` kernel taps, ``W^sigma[d] = sum_b w_b[d] psi_b^sigma[d]``, exactly the SESN layer when they are
constant over the taps; ``alpha * mean |w_b[d_{j+1}] - w_b[d_j]|`` (raster-order neighbours,
:func:`keras_relaxeq.layers.rsteer.rsteer_smoothness`, default ``alpha = 1e-6`` as the reference scale model) is
added to the layer's losses in training.

Relaxation (``relaxed=True``, lifting layers only, docs/method.md section 2): the branch is an ordinary
convolution ``theta * (conv(x, W_R) + b_R)``, ``W_R`` ``[k, k, C_in, S * C_out]`` (``relaxation_kernel``) read as
``S`` slices of ``C_out`` channels, added before the activation, so it reaches the output whenever
``theta != 0`` (issue 24: in the paper's published scale code the relaxed first layer is built but never reaches
the output).  Penalties, on ``stop_gradient(x)``, ``N = ||R(x)||^2`` and ``LD`` one of
(:mod:`~keras_relaxeq.layers.scale_conv.penalties`):

* ``scale_penalty="step"`` (default): the defect of the exact integer grid step ``a = scale_step`` (2),
  ``LD = sum_{(i, j): sigma_j = a sigma_i} || D_a R(x)[sigma_j] - R(D_a x)[sigma_i] ||^2`` with
  ``D_a x = x[::a, ::a]``, over the coarse pixels at least a kernel radius from the border;
* ``scale_penalty="lie"``: the Lie derivative along the scaling generator,
  ``L R(x) = J_R(x) (-p . grad x) - (-p . grad R(x) - sigma d_sigma R(x))``, with central differences on the
  grid and on ``log sigma``;
* ``scale_penalty="subspace"``: ``||conv(x, W_R - P W_R) + b_R - mean_s b_R||^2``, the part of the branch outside
  the span of the layer's own equivariant kernels (``P`` the orthogonal projection onto it).

docs/scale_equivariance.md compares them with measurements: the step is the scale group's defect and vanishes on
an equivariant branch where the grid step is exact (untruncated kernels, smooth inputs); the Lie derivative never
vanishes exactly (finite differences over four scales); ``"subspace"`` is zero on every kernel of the layer's class
at any kernel size, which matters at the published kernel size 5, where the SESN kernels themselves are far from
step-equivariant.  ``project()`` drops the branch.
"""

from keras_relaxeq.layers.scale_conv.convs import (
    RSteerScaleConv2D,
    RSteerScaleLiftingConv2D,
    ScaleConv2D,
    ScaleLiftingConv2D,
    ScalePooling,
)
from keras_relaxeq.layers.scale_conv.penalties import (
    SCALE_PENALTIES,
    equivariant_kernel_residual,
    scale_lie_derivative_defect,
    scale_step_defect,
    scale_subspace_defect,
)

__all__ = [
    "SCALE_PENALTIES",
    "RSteerScaleConv2D",
    "RSteerScaleLiftingConv2D",
    "ScaleConv2D",
    "ScaleLiftingConv2D",
    "ScalePooling",
    "equivariant_kernel_residual",
    "scale_lie_derivative_defect",
    "scale_step_defect",
    "scale_subspace_defect",
]
