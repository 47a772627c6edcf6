"""Steerable O(3) layers (SEGNN / e3nn building blocks) as relaxable Keras layers.

Features are steerable vectors ``[batch, ..., irreps.dim]`` laid out as an
:class:`~keras_relaxeq.groups.Irreps`: the ``(mul, irrep)`` blocks one after the other, and
inside a block copy-major (``layout="mul_ir"``, e3nn's, the default) or component-major
(``layout="ir_mul"``, as cuequivariance's ``ir_mul``; tensor products then need no transposes,
see :func:`~keras_relaxeq.groups.layout_permutation`).  Every layer takes ``layout=``; the
weights do not depend on it.  O(3) acts through :class:`~keras_relaxeq.groups.IrrepsRep`
(parity included, in the layer's layout).

Layers (mirroring github.com/RobDHess/Steerable-E3-GNN ``models/segnn`` and e3nn):

* :class:`O3Linear`: ``e3nn.o3.Linear``: weights only between equal irreps, path
  normalisation ``1/sqrt(fan_in)`` with ``N(0, 1)`` weights, biases on ``0e`` outputs.
* :class:`O3TensorProduct`: SEGNN's ``O3TensorProduct``: a weighted, fully connected
  tensor product ``x (x) attr -> out`` (``e3nn.o3.FullyConnectedTensorProduct``,
  ``"component"`` normalisation, all paths ``l1 (x) l2 -> l3`` with ``p3 = p1 p2``),
  learned (not MLP-conditioned) weights, SEGNN's ``tp_rescale`` initialisation and a
  bias on ``0e`` outputs.
* :class:`Gate`: ``e3nn.nn.Gate``: scalars through an activation (SiLU), extra ``0e``
  gate scalars through a sigmoid multiply the gated irreps.
* :class:`O3TensorProductGate`: SEGNN's ``O3TensorProductSwishGate``: a tensor product
  to ``irreps_out`` plus gate scalars, then the gate.
* :class:`SteerableNorm`: SEGNN's ``InstanceNorm`` (``mode="instance"``) and e3nn's
  ``BatchNorm`` (``mode="batch"``) on irreps.

Relaxation (docs/method.md section 2): every layer with a linear map or tensor product is a
:class:`~keras_relaxeq.layers.base.RelaxedEquivariantLayer`; its branch is
``theta * (W flat(x) + b)`` from ``irreps_in1`` to the layer's output irreps and acts on the
first input ``x`` only (not on the attributes): :meth:`IrrepsLayer.relaxation_inputs` picks it.
``input_rep`` is the representation of ``x``; ``attr_rep`` that of the attributes;
``equivariance_input_reps`` is the nest of input representations to pass to
:func:`keras_relaxeq.testing.assert_equivariant`.

Modules:

* :mod:`~keras_relaxeq.layers.steerable.linear`: :class:`O3Linear`;
* :mod:`~keras_relaxeq.layers.steerable.tensor_product`: :class:`O3TensorProduct`, :class:`O3TensorProductGate`;
* :mod:`~keras_relaxeq.layers.steerable.nonlinearities`: :class:`Gate`, :class:`SteerableNorm`, :func:`gate_irreps`;
* :mod:`~keras_relaxeq.layers.steerable.irreps_layer`: :class:`IrrepsLayer`, the shared base (inputs
  ``x`` and optional attributes, shape checks, the branch input);
* :mod:`~keras_relaxeq.layers.steerable.parsing`: argument parsing and checks;
* :mod:`~keras_relaxeq.layers.steerable.paths` and :mod:`~keras_relaxeq.layers.steerable.type_plan`: the
  precomputed index maps (below).

Implementation: :class:`O3Linear` assembles its dense ``[D_in, D_out]`` matrix per call by a
single gather + scatter from the flat weight vector (:class:`~keras_relaxeq.layers.steerable.paths.PathPlan`,
one :class:`~keras_relaxeq.layers.steerable.paths.Instruction` per path) and applies it with one matmul.
:class:`O3TensorProduct` works by irrep type (:class:`~keras_relaxeq.layers.steerable.type_plan.TypePlan`,
one :class:`~keras_relaxeq.layers.steerable.type_plan.TypePath` per triple of irrep types): blocks of equal
irreps are merged, the attributes are contracted with the Clebsch-Gordan tensors, and all path weights
into (or out of) a type are applied with one matmul, skipping the zeros of the dense
``[D1 D2, D_out]`` map (``dense_tensor()`` / ``tensor_product_dense`` keep the dense form as
a reference).  Index maps, CG coefficients and path normalisations are precomputed in NumPy;
no Python loop runs over samples or paths at call time.
"""

from keras_relaxeq.layers.steerable.irreps_layer import IrrepsLayer  # noqa: F401 (the base of the layers below)
from keras_relaxeq.layers.steerable.linear import O3Linear
from keras_relaxeq.layers.steerable.nonlinearities import (  # noqa: F401 (the NORM_* choices of SteerableNorm)
    NORM_MODES,
    NORM_NORMALIZATION,
    NORM_REDUCE,
    Gate,
    SteerableNorm,
    gate_irreps,
)
from keras_relaxeq.layers.steerable.tensor_product import RELAXATION_PLACEMENTS, O3TensorProduct, O3TensorProductGate

__all__ = [
    "O3Linear",
    "O3TensorProduct",
    "Gate",
    "O3TensorProductGate",
    "SteerableNorm",
    "gate_irreps",
    "RELAXATION_PLACEMENTS",
]
