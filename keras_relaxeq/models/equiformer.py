"""Equiformer for molecular energies and forces (Liao and Smidt, ICLR 2023), relaxable.

An SE(3)/E(3)-equivariant graph attention transformer on dense molecular graphs (one molecule per batch row,
``A <= ~24`` atoms, every pair within the cutoff an edge), built from the package's O(3) irreps, spherical
harmonics and steerable layers (:mod:`keras_relaxeq.layers.equiformer`):

* **Inputs** (a dict): ``positions`` ``[B, A, 3]`` float (Å), ``atomic_numbers`` ``[B, A]`` int (``1..10``;
  0 marks a padding atom, which gets no edges, no energy and zero force) and optionally ``neighbors``
  ``[B, A, A]`` (1 where ``0 < d_ij < cutoff``; computed from the positions when absent).
* **Edges** ``j -> i``: spherical harmonics ``l <= lmax`` of ``pos_j - pos_i`` (``"component"`` normalisation)
  and ``num_rbf`` Gaussians times a smooth polynomial envelope (value, first and second derivative 0 at the
  cutoff, so forces are continuous).
* **Embedding**: a learned ``0e`` vector per element plus the edge-degree embedding (the first ``l > 0``
  features).
* **Blocks** (``num_blocks``): layer norm -> equivariant graph attention (MLP attention, non-linear messages,
  ``num_heads`` heads, depthwise tensor products with radial-MLP weights) -> residual -> layer norm -> gated
  feed-forward -> residual.
* **Output**: layer norm, ``O3Linear`` to ``head_units`` scalars, SiLU, ``Dense(1)``: atom energies, summed:
  ``energy = energy_scale * sum_i e_i + atom_energy_shift * (number of atoms)``; ``forces = -dE/dpos`` by a
  ``tf.GradientTape`` inside ``call`` (exactly conservative, and equivariant when the energy is invariant;
  nested tapes make ``model.fit`` on force losses work).

Node irreps at ``width=1``: ``128x0e+64x1o+32x2e`` (``parity=True``: true O(3) irreps, the model is
E(3)-equivariant: energy invariant under rotations, reflections and translations).  ``parity=False`` uses the
published labels ``128x0e+64x1e+32x2e`` with pseudovector spherical harmonics ``1x0e+1x1e+1x2e`` (every
triangle path allowed, as the reference MD17 configuration): SE(3)-equivariant only (the energy may change
under reflections).  ``width`` scales every multiplicity (and the hidden widths); see docs/equiformer.md.

Relaxation: ``relaxation={"relaxed": True, ...}`` (any
:class:`~keras_relaxeq.layers.base.RelaxedEquivariantLayer` argument, e.g. ``relaxation_branch="mlp"``) gives every
block's feed-forward output map a relaxation branch; ``relaxation_kind="position_mlp"`` instead adds the reference's
branch, an MLP that also reads the element one-hot and the centred positions
(:class:`~keras_relaxeq.layers.equiformer.RelaxedGatedFeedForward`).  The model is a
:class:`~keras_relaxeq.training.model.RelaxedTraining` model (``lambda_lie``, ``lambda_proj``), and
``keras_relaxeq.project`` removes the branches.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_relaxeq.groups.irreps import Irrep, Irreps
from keras_relaxeq.groups.spherical_harmonics import spherical_harmonics
from keras_relaxeq.layers.equiformer import (
    RELAXATION_KINDS,
    AtomEmbedding,
    EdgeDegreeEmbedding,
    EquiformerBlock,
    GaussianRadialBasis,
    dense_edges,
    smooth_envelope,
)
from keras_relaxeq.layers.steerable import O3Linear, SteerableNorm
from keras_relaxeq.training.model import RelaxedTraining
from keras_relaxeq.utils import set_untracked

register = keras.saving.register_keras_serializable(package="keras_relaxeq")

#: multiplicities of degrees 0, 1, 2 at the published size (Equiformer's MD17 ``irreps_node_embedding``)
PUBLISHED_MULTIPLICITIES = (128, 64, 32)
INPUT_HINT = (
    "Pass a dict {'positions': [B, A, 3] float (Å), 'atomic_numbers': [B, A] int (0 = padding), "
    "optionally 'neighbors': [B, A, A]}; one molecule per batch row."
)


def node_irreps(width=1.0, lmax=2, parity=True) -> Irreps:
    """``128x0e+64x1o+32x2e`` times ``width`` (at least 1 copy each); degree ``l > 2`` gets ``128 / 2^l``.
    ``parity=False``: every irrep even (the published labels, ``1e`` for degree 1)."""
    terms = []
    for l in range(int(lmax) + 1):
        base = PUBLISHED_MULTIPLICITIES[l] if l < len(PUBLISHED_MULTIPLICITIES) else 128 // 2**l
        p = (-1) ** l if parity else 1
        terms.append((max(1, int(round(base * float(width)))), Irrep(l, p)))
    return Irreps(terms)


@register
class Equiformer(RelaxedTraining, keras.Model):
    """Equiformer energy / force model (see the module docstring; build it with :func:`equiformer`).

    Called on a dict of ``positions``, ``atomic_numbers`` (and optionally ``neighbors``); returns
    ``{"energy": [B], "forces": [B, A, 3]}``.  :meth:`energy_and_features` gives the energy alone.
    """

    def __init__(
        self,
        width=1.0,
        num_blocks=6,
        lmax=2,
        num_heads=4,
        num_rbf=32,
        cutoff=5.0,
        parity=True,
        ffn_multiplier=3.0,
        radial_hidden=(64, 64),
        head_units=512,
        max_atomic_number=10,
        avg_num_neighbors=15.57,
        energy_scale=1.0,
        atom_energy_shift=0.0,
        relaxation=None,
        relaxation_kind="ffn_output",
        lambda_lie=0.01,
        lambda_proj=0.01,
        penalty_scale="none",
        **kwargs,
    ):
        super().__init__(lambda_lie=lambda_lie, lambda_proj=lambda_proj, penalty_scale=penalty_scale, **kwargs)
        if int(num_blocks) < 1 or int(lmax) < 0 or float(width) <= 0 or float(cutoff) <= 0:
            raise ValueError(
                f"Equiformer: need num_blocks >= 1, lmax >= 0, width > 0, cutoff > 0; got {num_blocks}, {lmax}, "
                f"{width}, {cutoff}."
            )
        self.width = float(width)
        self.num_blocks = int(num_blocks)
        self.lmax = int(lmax)
        self.num_heads = int(num_heads)
        self.num_rbf = int(num_rbf)
        self.cutoff = float(cutoff)
        self.parity = bool(parity)
        self.ffn_multiplier = float(ffn_multiplier)
        self.radial_hidden = tuple(int(h) for h in radial_hidden)
        self.head_units = int(head_units)
        self.max_atomic_number = int(max_atomic_number)
        self.avg_num_neighbors = float(avg_num_neighbors)
        self.energy_scale = float(energy_scale)
        self.atom_energy_shift = float(atom_energy_shift)
        self.relaxation = dict(relaxation or {"relaxed": False})
        if relaxation_kind not in RELAXATION_KINDS:
            raise ValueError(f"Equiformer: relaxation_kind must be one of {RELAXATION_KINDS}, got {relaxation_kind!r}.")
        self.relaxation_kind = relaxation_kind
        block_relaxation = dict(self.relaxation)
        if relaxation_kind == "position_mlp":
            block_relaxation.setdefault("num_attributes", self.max_atomic_number + 1)
        set_untracked(self, "irreps_node", node_irreps(self.width, self.lmax, self.parity))
        set_untracked(self, "irreps_sh", Irreps.spherical_harmonics(self.lmax, p=-1 if self.parity else 1))
        node, sh, dtype = self.irreps_node, str(self.irreps_sh), self.dtype_policy
        self.radial_basis = GaussianRadialBasis(self.num_rbf, self.cutoff, name="radial_basis", dtype=dtype)
        self.atom_embedding = AtomEmbedding(node, self.max_atomic_number, name="atom_embedding", dtype=dtype)
        self.edge_degree_embedding = EdgeDegreeEmbedding(
            node, sh, self.avg_num_neighbors, self.radial_hidden, name="edge_degree_embedding", dtype=dtype
        )
        self.blocks = [
            EquiformerBlock(
                node,
                sh,
                self.num_heads,
                self.ffn_multiplier,
                self.radial_hidden,
                relaxation=block_relaxation,
                relaxation_kind=relaxation_kind,
                name=f"block_{i}",
                dtype=dtype,
            )
            for i in range(self.num_blocks)
        ]
        self.final_norm = SteerableNorm(node, mode="layer", relaxed=False, name="final_norm", dtype=dtype)
        self.head_linear = O3Linear(node, f"{self.head_units}x0e", relaxed=False, name="head_linear", dtype=dtype)
        self.head_out = keras.layers.Dense(1, name="head_out", dtype=dtype)

    # -- inputs ----------------------------------------------------------------------------------------
    def _split_inputs(self, inputs):
        if not isinstance(inputs, dict) or "positions" not in inputs or "atomic_numbers" not in inputs:
            got = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
            raise ValueError(f"Equiformer: got {got}. {INPUT_HINT}")
        positions = tf.cast(inputs["positions"], self.compute_dtype)
        z = tf.cast(inputs["atomic_numbers"], tf.int32)
        if positions.shape.rank not in (None, 3) or (
            positions.shape.rank == 3 and positions.shape[-1] not in (None, 3)
        ):
            raise ValueError(f"Equiformer: positions must be [B, A, 3], got shape {positions.shape}. {INPUT_HINT}")
        if z.shape.rank not in (None, 2):
            raise ValueError(f"Equiformer: atomic_numbers must be [B, A], got shape {z.shape}. {INPUT_HINT}")
        return positions, z, inputs.get("neighbors")

    # -- the network -----------------------------------------------------------------------------------
    def atom_energies(self, positions, atomic_numbers, neighbors=None, training=None):
        """Per-atom energies ``[B, A]`` (before ``energy_scale``; 0 for padding atoms)."""
        atom_mask = atomic_numbers > 0
        vectors, distances, mask = dense_edges(positions, self.cutoff, neighbors, atom_mask)
        sh = spherical_harmonics(self.irreps_sh, vectors, normalize=True, normalization="component")
        rbf = self.radial_basis(distances)
        edge_weight = mask * smooth_envelope(distances, self.cutoff)
        x = self.atom_embedding(atomic_numbers) + self.edge_degree_embedding((sh, rbf, edge_weight))
        block_inputs = (sh, rbf, edge_weight)
        if self.relaxation_kind == "position_mlp":
            # the branch's extra inputs: the element one-hot and the positions relative to the centroid
            m = tf.cast(atom_mask, positions.dtype)[..., None]
            centroid = tf.reduce_sum(positions * m, axis=1, keepdims=True) / tf.maximum(
                tf.reduce_sum(m, axis=1, keepdims=True), 1.0
            )
            onehot = tf.one_hot(atomic_numbers, self.max_atomic_number + 1, dtype=positions.dtype)
            block_inputs += (onehot, (positions - centroid) * m)
        for block in self.blocks:
            x = block((x,) + block_inputs, training=training)
        x = self.final_norm(x)
        e = self.head_out(tf.nn.silu(self.head_linear(x)))[..., 0]
        return e * tf.cast(atom_mask, e.dtype)

    def energy(self, positions, atomic_numbers, neighbors=None, training=None):
        """Total energies ``[B]``."""
        e = self.atom_energies(positions, atomic_numbers, neighbors, training)
        num_atoms = tf.reduce_sum(tf.cast(atomic_numbers > 0, e.dtype), axis=-1)
        return self.energy_scale * tf.reduce_sum(e, axis=-1) + self.atom_energy_shift * num_atoms

    def build(self, input_shape=None):
        """Create every weight by one energy evaluation of a 2-atom molecule (the weights do not depend on the
        number of atoms)."""
        if self.built:
            return
        positions = tf.constant([[[0.0, 0.0, 0.0], [0.6, 0.7, 0.8]]], self.compute_dtype)
        self.energy(positions, tf.constant([[1, 1]], tf.int32))
        self.built = True

    def call(self, inputs, training=None):
        positions, z, neighbors = self._split_inputs(inputs)
        tf.debugging.assert_less_equal(
            tf.reduce_max(z),
            self.max_atomic_number,
            message=f"Equiformer: atomic numbers above max_atomic_number={self.max_atomic_number}; rebuild the "
            "model with a larger max_atomic_number.",
        )
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(positions)
            energy = self.energy(positions, z, neighbors, training=training)
        forces = -tape.gradient(energy, positions, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return {"energy": energy, "forces": forces}

    def get_config(self):
        config = super().get_config()
        for key in ("layers", "input_layers", "output_layers"):
            config.pop(key, None)
        config.update(
            width=self.width,
            num_blocks=self.num_blocks,
            lmax=self.lmax,
            num_heads=self.num_heads,
            num_rbf=self.num_rbf,
            cutoff=self.cutoff,
            parity=self.parity,
            ffn_multiplier=self.ffn_multiplier,
            radial_hidden=list(self.radial_hidden),
            head_units=self.head_units,
            max_atomic_number=self.max_atomic_number,
            avg_num_neighbors=self.avg_num_neighbors,
            energy_scale=self.energy_scale,
            atom_energy_shift=self.atom_energy_shift,
            relaxation=self.relaxation,
            relaxation_kind=self.relaxation_kind,
        )
        return config


def equiformer(
    width=1.0,
    num_blocks=6,
    lmax=2,
    num_heads=4,
    num_rbf=32,
    cutoff=5.0,
    parity=True,
    ffn_multiplier=3.0,
    radial_hidden=(64, 64),
    head_units=None,
    max_atomic_number=10,
    avg_num_neighbors=15.57,
    energy_scale=1.0,
    atom_energy_shift=0.0,
    relaxation=None,
    relaxation_kind="ffn_output",
    lambda_lie=0.01,
    lambda_proj=0.01,
    penalty_scale="none",
    dtype=None,
    name="equiformer",
):
    """Equiformer for MD17-style energies and forces, with the published defaults (6 blocks, ``128x0e+64x1o+32x2e``
    node irreps, ``lmax = 2``, 4 heads, 32 radial basis functions, cutoff 5 Å, feed-forward ``3x`` wider,
    radial MLPs ``[64, 64]``, output head 512 scalars).

    Args:
        width: multiplier of every multiplicity (``0.25``: ``32x0e+16x1o+8x2e``, a CPU size) and of the output
            head's width (``head_units=None``: ``512 * width``).
        parity: True: O(3) irreps (E(3)-equivariant); False: the published all-even labels (SE(3) only).
        max_atomic_number: size of the element table (10 covers H..Ne).
        avg_num_neighbors: normaliser of the edge-degree embedding (Equiformer's MD17 average degree).
        energy_scale, atom_energy_shift: output scaling (e.g. the training set's energy standard deviation and
            mean energy per atom).
        relaxation: relaxation arguments for every block's feed-forward network (None: not relaxed).
        relaxation_kind: ``"ffn_output"`` (the dict goes to the feed-forward output map, an ``O3Linear``) or
            ``"position_mlp"`` (the reference's branch: an MLP on ``[features, element one-hot, centred
            positions]``, :class:`~keras_relaxeq.layers.equiformer.RelaxedGatedFeedForward`; e.g.
            ``{"relaxed": True, "equivariance_penalty": "finite_rotation"}``).
        dtype: Keras dtype policy (``"float64"`` for finite-difference checks).

    Returns an unbuilt :class:`Equiformer`; it builds on its first call.
    """
    if head_units is None:
        head_units = max(1, int(round(512 * float(width))))
    return Equiformer(
        width=width,
        num_blocks=num_blocks,
        lmax=lmax,
        num_heads=num_heads,
        num_rbf=num_rbf,
        cutoff=cutoff,
        parity=parity,
        ffn_multiplier=ffn_multiplier,
        radial_hidden=radial_hidden,
        head_units=head_units,
        max_atomic_number=max_atomic_number,
        avg_num_neighbors=avg_num_neighbors,
        energy_scale=energy_scale,
        atom_energy_shift=atom_energy_shift,
        relaxation=relaxation,
        relaxation_kind=relaxation_kind,
        lambda_lie=lambda_lie,
        lambda_proj=lambda_proj,
        penalty_scale=penalty_scale,
        dtype=dtype,
        name=name,
    )


@register
def l2_mae(y_true, y_pred):
    """Equiformer's force loss per molecule: the mean over atoms of the Euclidean norm of the force error,
    ``mean_i ||F_pred_i - F_i||`` (``[B, A, 3] -> [B]``)."""
    return keras.ops.mean(keras.ops.sqrt(keras.ops.sum(keras.ops.square(y_pred - y_true), axis=-1) + 1e-12), axis=-1)


__all__ = ["Equiformer", "PUBLISHED_MULTIPLICITIES", "equiformer", "l2_mae", "node_irreps"]
