"""SEGNN for the charged N-body task (Brandstetter et al., ICLR 2022), relaxable.

Mirrors github.com/RobDHess/Steerable-E3-GNN (``models/segnn/segnn.py`` with
``task="node"``, ``nbody/train_nbody.py``'s ``O3Transform``, ``main.py``'s N-body irreps)
as used by the relaxation paper's N-body experiment (docs/method.md section 9):

* **Graph**: fully connected over the ``N`` particles without self loops
  (``N (N - 1)`` directed edges, 20 for 5 particles), built once from static index arrays;
  everything is vectorised over the batch (broadcasts, reshapes and sums; no gathers).
* **Node features** ``2x1o+1x0e``: ``(loc - centre of mass, vel, |vel|)``.  (The reference
  subtracts ``pos.mean(1)``, the mean over the *coordinates* of each particle, which is neither
  rotation- nor translation-equivariant; we subtract the mean over particles, as the paper
  intends.  ``centring="coordinates"`` reproduces the reference's features, for ablations only:
  that model is not equivariant.)
* **Edge attributes**: spherical harmonics up to ``lmax_attr`` (``normalization="integral"``,
  normalised vectors) of ``rel = loc_j - loc_i`` for the edge ``j -> i`` (PyG
  ``edge_index[0] = j`` sender, ``edge_index[1] = i`` receiver).
* **Node attributes**: the mean of the incoming edge attributes plus the spherical harmonics
  of the velocity, with the ``0e`` component set to 1 (the reference's ``catch_isolated_nodes``
  does ``node_attr[:, 0] = 1``).
* **Additional message features** ``2x0e``: ``(|rel|, q_i q_j)`` (the reference's order;
  ``squared_distance=True`` uses ``|rel|^2`` instead, EGNN's choice).
* **Embedding**: one :class:`O3TensorProduct` ``input (x) node_attr -> hidden``.
* **Layers** (:class:`SEGNNLayer`): messages ``m_ij = TPG2(TPG1([x_i, x_j, feats], a_ij), a_ij)``
  (two gated tensor products conditioned on the edge attributes), summed over ``j``;
  update ``x_i + TP2(TPG1([x_i, m_i], a_i), a_i)`` (first gated, conditioned on the node
  attributes, residual), then the optional instance norm.
* **Output**: ``O3TensorProductGate(hidden -> hidden)`` then ``O3TensorProduct(hidden -> 1x1o)``,
  both conditioned on the node attributes, added to the input positions.
* **Hidden irreps**: weight-balanced (``--subspace_type=weightbalanced``): for 64 scalars and
  ``lmax_hidden = lmax_attr = 1`` that is ``32x0e+32x1o``.

Relaxation (docs/method.md section 7): only the two node-update tensor products of every layer get a branch
(``update_layer_1``'s tensor product and ``update_layer_2``), initialised ``N(0, 1e-4)``;
every other tensor product is built with ``relaxed=False``.  ``2 * num_layers`` relaxed
layers in all.  The published N-body runs use ``--norm=none``, hence ``norm=None`` by default.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from keras_relaxeq.groups.irreps import Irreps
from keras_relaxeq.groups.irreps_balance import balanced_irreps
from keras_relaxeq.groups.irreps_layouts import check_layout, convert_layout
from keras_relaxeq.groups.spherical_harmonics import spherical_harmonics
from keras_relaxeq.layers.steerable import O3TensorProduct, O3TensorProductGate, SteerableNorm
from keras_relaxeq.models.checks import InputCheck
from keras_relaxeq.models.presets import attach_from_preset
from keras_relaxeq.training.model import RelaxedModel
from keras_relaxeq.utils import set_untracked

register = keras.saving.register_keras_serializable(package="keras_relaxeq")

#: Irreps of the N-body node features ``(loc - com, vel, |vel|)`` and of the output.
NBODY_INPUT_IRREPS = "2x1o+1x0e"
NBODY_OUTPUT_IRREPS = "1x1o"
NBODY_MESSAGE_IRREPS = "2x0e"
NORMS = (None, "instance")
NBODY_HINT = "One system per batch row, in simulator units; see keras_relaxeq.datasets.nbody."
#: node-feature centring: "mass" (equivariant) or "coordinates" (the reference code's, not equivariant)
CENTRINGS = ("mass", "coordinates")


def fully_connected_edges(num_nodes: int):
    """``(senders, receivers)`` of the complete directed graph without self loops (row-major)."""
    senders, receivers = [], []
    for i in range(num_nodes):
        for j in range(num_nodes):
            if i != j:
                senders.append(j)
                receivers.append(i)
    return np.asarray(senders, np.int32), np.asarray(receivers, np.int32)


def _incidence(receivers, num_nodes):
    """``A[n, e] = 1`` where edge ``e`` ends at node ``n`` (sum aggregation by one contraction)."""
    a = np.zeros((num_nodes, len(receivers)), np.float64)
    a[receivers, np.arange(len(receivers))] = 1.0
    return a


def _edge_endpoints(x, num_nodes):
    """``(x[:, receivers], x[:, senders])`` for :func:`fully_connected_edges` without gathers.

    The edges are row-major over ``(i, j != i)``: receivers repeat each node ``N - 1`` times
    (a broadcast), senders are the off-diagonal entries of the ``N x N`` grid ``x_j`` (dropping
    the first entry of the flattened grid and the last column of its ``[N - 1, N + 1]``
    reshape removes the diagonal).  Same values as the gathers; cheaper gradients (sums).
    """
    n = num_nodes
    x = tf.convert_to_tensor(x)
    batch, dim = tf.shape(x)[0], tf.shape(x)[2]
    x_i = tf.reshape(
        tf.broadcast_to(tf.expand_dims(x, 2), tf.stack([batch, n, n - 1, dim])), tf.stack([batch, n * (n - 1), dim])
    )
    grid = tf.reshape(
        tf.broadcast_to(tf.expand_dims(x, 1), tf.stack([batch, n, n, dim])), tf.stack([batch, n * n, dim])
    )
    grid = tf.reshape(tf.slice(grid, [0, 1, 0], [-1, n * n - 1, -1]), tf.stack([batch, n - 1, n + 1, dim]))
    x_j = tf.reshape(tf.slice(grid, [0, 0, 0, 0], [-1, -1, n, -1]), tf.stack([batch, n * (n - 1), dim]))
    return x_i, x_j


def _sum_incoming(edge_values, num_nodes):
    """Sum of ``[B, E, D]`` edge values over the incoming edges of every node (``[B, N, D]``).

    Edges of :func:`fully_connected_edges` are grouped by receiver (``N - 1`` consecutive edges
    each), so this is a reshape and a sum (the incidence-matrix contraction, without the zeros).
    """
    n = num_nodes
    shape = tf.shape(edge_values)
    return tf.reduce_sum(tf.reshape(edge_values, tf.stack([shape[0], n, n - 1, shape[2]])), axis=2)


@register
class NBodyGraphFeatures(keras.layers.Layer):
    """SEGNN's ``O3Transform`` on a fully connected graph, batched.

    Called on ``[loc, vel, charges]`` (``[B, N, 3]``, ``[B, N, 3]``, ``[B, N, 1]``); returns
    ``(x [B, N, 7], node_attr [B, N, A], edge_attr [B, E, A], edge_features [B, E, 2])`` with
    ``A = (lmax_attr + 1)^2`` and ``E = N (N - 1)`` (see the module docstring).  No weights.
    ``layout`` is the feature layout of ``x`` (``"mul_ir"`` or ``"ir_mul"``); the attributes
    (one copy per degree) and the edge features are the same in both.
    """

    def __init__(self, num_nodes=5, lmax_attr=1, squared_distance=False, centring="mass", layout="mul_ir", **kwargs):
        super().__init__(**kwargs)
        self.layout = check_layout(layout, f"NBodyGraphFeatures '{self.name}'")
        self.num_nodes = int(num_nodes)
        if self.num_nodes < 2:
            raise ValueError(f"NBodyGraphFeatures: num_nodes must be >= 2, got {num_nodes}.")
        if centring not in CENTRINGS:
            raise ValueError(
                f"NBodyGraphFeatures: centring must be one of {CENTRINGS}, got {centring!r} "
                "('mass': equivariant; 'coordinates': the reference's non-equivariant features)."
            )
        self.centring = centring
        self.lmax_attr = int(lmax_attr)
        self.squared_distance = bool(squared_distance)
        set_untracked(self, "attr_irreps", Irreps.spherical_harmonics(self.lmax_attr))
        self.senders, self.receivers = fully_connected_edges(self.num_nodes)
        self.num_edges = len(self.senders)
        self.incoming_mean = _incidence(self.receivers, self.num_nodes) / (self.num_nodes - 1)

    def call(self, inputs):
        loc, vel, charges = (tf.cast(t, self.compute_dtype) for t in inputs)
        dtype = loc.dtype
        loc_i = tf.gather(loc, self.receivers, axis=1)
        loc_j = tf.gather(loc, self.senders, axis=1)
        rel = loc_j - loc_i  # [B, E, 3]
        sq = tf.reduce_sum(tf.square(rel), axis=-1, keepdims=True)
        dist = sq if self.squared_distance else tf.sqrt(sq)
        q = charges[..., :1]
        prod_charges = tf.gather(q, self.senders, axis=1) * tf.gather(q, self.receivers, axis=1)
        edge_attr = spherical_harmonics(self.attr_irreps, rel, normalize=True, normalization="integral")
        vel_attr = spherical_harmonics(self.attr_irreps, vel, normalize=True, normalization="integral")
        node_attr = _sum_incoming(edge_attr * tf.cast(1.0 / (self.num_nodes - 1), dtype), self.num_nodes) + vel_attr
        node_attr = tf.concat([tf.ones_like(node_attr[..., :1]), node_attr[..., 1:]], axis=-1)
        # "mass": mean over the particles; "coordinates": the reference's pos.mean(1) on [B*N, 3]
        centred = loc - tf.reduce_mean(loc, axis=1 if self.centring == "mass" else 2, keepdims=True)
        speed = tf.sqrt(tf.reduce_sum(tf.square(vel), axis=-1, keepdims=True))
        x = convert_layout(tf.concat([centred, vel, speed], axis=-1), NBODY_INPUT_IRREPS, "mul_ir", self.layout)
        edge_features = tf.concat([dist, prod_charges], axis=-1)
        return x, node_attr, edge_attr, edge_features

    def compute_output_shape(self, input_shape):
        batch = input_shape[0][0]
        n, e, a = self.num_nodes, self.num_edges, self.attr_irreps.dim
        return (batch, n, 7), (batch, n, a), (batch, e, a), (batch, e, 2)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_nodes=self.num_nodes,
            lmax_attr=self.lmax_attr,
            squared_distance=self.squared_distance,
            centring=self.centring,
            layout=self.layout,
        )
        return config


@register
class SEGNNLayer(keras.layers.Layer):
    """One SEGNN message-passing layer on a fully connected graph (``SEGNNLayer`` of the reference).

    Called on ``[x, edge_attr, node_attr, edge_features]``: ``x [B, N, hidden.dim]``,
    ``edge_attr [B, E, attr.dim]``, ``node_attr [B, N, attr.dim]``,
    ``edge_features [B, E, message.dim]``; returns the new ``x``.

    Sublayers: ``message_layer_1``, ``message_layer_2`` (:class:`O3TensorProductGate`,
    conditioned on the edge attributes, never relaxed), ``update_layer_1``
    (:class:`O3TensorProductGate`) and ``update_layer_2`` (:class:`O3TensorProduct`),
    conditioned on the node attributes and relaxed when ``relaxed``; ``feature_norm``
    (:class:`SteerableNorm`, instance mode) when ``norm="instance"``.

    Args:
        hidden_irreps, attr_irreps, message_irreps: irreps of ``x``, of the (edge and node)
            attributes and of the additional message features.
        num_nodes: nodes per graph (the graph is complete, without self loops).
        norm: None or ``"instance"``.
        relaxed, relaxation_initializer, lie_method, theta: relaxation of the update layers.
        relaxation_placement: ``update_layer_1``'s branch before its gate (default, docs/method.md section 7)
            or ``"after_gate"`` (as the relaxation paper's released code).
        relaxation_use_bias: the branches' bias (the released code's branches have none).
        layout: feature layout of ``x`` and of every sublayer (``"mul_ir"`` or ``"ir_mul"``).
    """

    def __init__(
        self,
        hidden_irreps,
        attr_irreps="1x0e+1x1o",
        message_irreps=NBODY_MESSAGE_IRREPS,
        num_nodes=5,
        norm=None,
        relaxed=True,
        relaxation_initializer=None,
        lie_method="auto",
        theta=1.0,
        relaxation_placement="before_gate",
        relaxation_use_bias=True,
        layout="mul_ir",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.layout = check_layout(layout, f"SEGNNLayer '{self.name}'")
        if norm not in NORMS:
            raise ValueError(f"SEGNNLayer '{self.name}': norm must be one of {NORMS}, got {norm!r}.")
        set_untracked(self, "hidden_irreps", Irreps(hidden_irreps))
        set_untracked(self, "attr_irreps", Irreps(attr_irreps))
        set_untracked(self, "message_irreps", Irreps(message_irreps))
        self.num_nodes = int(num_nodes)
        self.norm = norm
        self.relaxed = bool(relaxed)
        if relaxation_initializer is None:
            relaxation_initializer = keras.initializers.RandomNormal(stddev=1e-4)
        self.relaxation_initializer = keras.initializers.get(relaxation_initializer)
        self.lie_method = lie_method
        self.theta = float(theta)
        self.relaxation_placement = relaxation_placement
        self.relaxation_use_bias = bool(relaxation_use_bias)
        self.senders, self.receivers = fully_connected_edges(self.num_nodes)
        self.incidence = _incidence(self.receivers, self.num_nodes)

        hidden, attr = self.hidden_irreps, self.attr_irreps
        message_in = (hidden + hidden + self.message_irreps).simplify()
        update_in = (hidden + hidden).simplify()
        plain = dict(relaxed=False, layout=self.layout, dtype=self.dtype_policy)
        relax = dict(
            relaxed=self.relaxed,
            relaxation_initializer=keras.initializers.serialize(self.relaxation_initializer),
            lie_method=lie_method,
            theta=self.theta,
            relaxation_use_bias=self.relaxation_use_bias,
            layout=self.layout,
            dtype=self.dtype_policy,
        )
        self.message_layer_1 = O3TensorProductGate(message_in, attr, hidden, name="message_layer_1", **plain)
        self.message_layer_2 = O3TensorProductGate(hidden, attr, hidden, name="message_layer_2", **plain)
        self.update_layer_1 = O3TensorProductGate(
            update_in, attr, hidden, name="update_layer_1", relaxation_placement=relaxation_placement, **relax
        )
        self.update_layer_2 = O3TensorProduct(hidden, attr, hidden, name="update_layer_2", **relax)
        self.feature_norm = (
            SteerableNorm(hidden, mode="instance", name="feature_norm", layout=self.layout, dtype=self.dtype_policy)
            if norm == "instance"
            else None
        )

    def build(self, input_shape):
        x_shape, edge_attr_shape, node_attr_shape, feat_shape = (tuple(s) for s in input_shape)
        batch = x_shape[0]
        e, n = len(self.senders), self.num_nodes
        msg_in = (batch, e, 2 * self.hidden_irreps.dim + self.message_irreps.dim)
        self.message_layer_1.build((msg_in, edge_attr_shape))
        self.message_layer_2.build(((batch, e, self.hidden_irreps.dim), edge_attr_shape))
        self.update_layer_1.build(((batch, n, 2 * self.hidden_irreps.dim), node_attr_shape))
        self.update_layer_2.build(((batch, n, self.hidden_irreps.dim), node_attr_shape))
        if self.feature_norm is not None:
            self.feature_norm.build((batch, n, self.hidden_irreps.dim))
        self.built = True

    def call(self, inputs, training=None):
        x, edge_attr, node_attr, edge_features = inputs
        dtype = self.compute_dtype
        x = tf.cast(x, dtype)
        x_i, x_j = _edge_endpoints(x, self.num_nodes)
        message = tf.concat([x_i, x_j, tf.cast(edge_features, dtype)], axis=-1)
        message = self.message_layer_1((message, edge_attr), training=training)
        message = self.message_layer_2((message, edge_attr), training=training)
        aggregated = _sum_incoming(message, self.num_nodes)  # sum over senders
        update = self.update_layer_1((tf.concat([x, aggregated], axis=-1), node_attr), training=training)
        update = self.update_layer_2((update, node_attr), training=training)
        x = x + update
        if self.feature_norm is not None:
            x = self.feature_norm(x, training=training)
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_irreps=str(self.hidden_irreps),
            attr_irreps=str(self.attr_irreps),
            message_irreps=str(self.message_irreps),
            num_nodes=self.num_nodes,
            norm=self.norm,
            relaxed=self.relaxed,
            relaxation_initializer=keras.initializers.serialize(self.relaxation_initializer),
            lie_method=self.lie_method,
            theta=self.theta,
            relaxation_placement=self.relaxation_placement,
            relaxation_use_bias=self.relaxation_use_bias,
            layout=self.layout,
        )
        return config


def segnn_hidden_irreps(hidden_features=64, lmax_hidden=1, lmax_attr=1, balance="weights") -> Irreps:
    """SEGNN's hidden irreps (``WeightBalancedIrreps(hidden_features x 0e, SH(lmax_attr), lmax=lmax_hidden)``)."""
    return balanced_irreps(
        int(hidden_features), int(lmax_hidden), balance=balance, attr_irreps=Irreps.spherical_harmonics(int(lmax_attr))
    )


@attach_from_preset
def segnn(
    num_layers=4,
    hidden_features=64,
    lmax_hidden=1,
    lmax_attr=1,
    relaxed=True,
    relaxation_initializer=None,
    lambda_lie=0.01,
    lambda_proj=0.01,
    norm=None,
    pool=None,
    num_nodes=5,
    balance="weights",
    squared_distance=False,
    centring="mass",
    lie_method="auto",
    penalty_scale="none",
    relaxation_placement="before_gate",
    relaxation_use_bias=True,
    layout="ir_mul",
    name="segnn_nbody",
):
    """SEGNN for the charged N-body task as a :class:`~keras_relaxeq.RelaxedModel`.

    Args:
        num_layers: message-passing layers (4 published).
        hidden_features: scalar budget of the weight-balanced hidden irreps (64 published:
            ``32x0e+32x1o``).
        lmax_hidden, lmax_attr: maximal degree of the hidden irreps and of the attributes (1, 1).
        relaxed: relaxation branches on the two node-update tensor products of every layer.
        relaxation_initializer: branch initializer (default ``RandomNormal(stddev=1e-4)``).
        lambda_lie, lambda_proj, penalty_scale: penalty weights (see ``RelaxedModel``).
        norm: None (published N-body runs, ``--norm=none``) or ``"instance"``.
        pool: must be None: N-body is a node-level task (the reference pools only for
            ``task="graph"``).
        num_nodes: particles per system (5).
        balance: ``"weights"`` (published) or ``"dimension"`` hidden irreps.
        squared_distance: use ``|rel|^2`` instead of ``|rel|`` as edge feature.
        centring: ``"mass"`` (positions relative to the centre of mass; E(3)-equivariant) or
            ``"coordinates"`` (the reference code's ``pos - pos.mean(1)``, each particle's position
            minus the mean of its own x, y, z: *not* equivariant, for reproducing the reference).
        lie_method: how the Lie derivative is computed.
        relaxation_placement, relaxation_use_bias: the first update's branch before its gate
            (default, docs/method.md section 7) or ``"after_gate"``, and the branches' bias; ``"after_gate"``
            without bias is the released code's branch placement (for comparisons).
        layout: feature layout inside the network: ``"ir_mul"`` (default; component-major blocks,
            the tensor products need no transposes: faster) or ``"mul_ir"`` (e3nn's).  Same
            function, same weights (``set_weights`` carries the equivariant weights across; a
            relaxation branch is a map in the layout, so branch kernels are permuted between the
            two, :func:`~keras_relaxeq.groups.layout_permutation`).  Models saved before this
            option existed load as ``"mul_ir"``.

    Inputs ``{"loc": [B, N, 3], "vel": [B, N, 3], "charges": [B, N, 1]}``; output the
    predicted positions ``[B, N, 3]`` (``loc`` + a ``1x1o`` prediction).
    """
    if pool is not None:
        raise ValueError(f"segnn: pool={pool!r}: the N-body model is a node-level task without pooling; use pool=None.")
    if norm not in NORMS:
        raise ValueError(f"segnn: norm must be one of {NORMS}, got {norm!r}.")
    if int(num_layers) < 1:
        raise ValueError(f"segnn: num_layers must be >= 1, got {num_layers}.")
    if relaxation_initializer is None:
        relaxation_initializer = keras.initializers.RandomNormal(stddev=1e-4)
    relaxation_initializer = keras.initializers.get(relaxation_initializer)
    hidden = segnn_hidden_irreps(hidden_features, lmax_hidden, lmax_attr, balance)
    attr = Irreps.spherical_harmonics(int(lmax_attr))
    n = int(num_nodes)

    loc = keras.Input((n, 3), name="loc")
    vel = keras.Input((n, 3), name="vel")
    charges = keras.Input((n, 1), name="charges")
    # wrong shapes (e.g. extra charge columns) and non-finite values: a clear error
    checked = [
        InputCheck(
            (n, dim), input_name=key, layout=f"[batch, {n}, {dim}] ({what})", hint=NBODY_HINT, name=f"check_{key}"
        )(t)
        for key, dim, what, t in (
            ("loc", 3, "positions", loc),
            ("vel", 3, "velocities", vel),
            ("charges", 1, "one charge per particle", charges),
        )
    ]
    x, node_attr, edge_attr, edge_features = NBodyGraphFeatures(
        num_nodes=n,
        lmax_attr=lmax_attr,
        squared_distance=squared_distance,
        centring=centring,
        layout=layout,
        name="graph_features",
    )(checked)
    x = O3TensorProduct(NBODY_INPUT_IRREPS, attr, hidden, relaxed=False, layout=layout, name="embedding")(
        (x, node_attr)
    )
    for i in range(int(num_layers)):
        x = SEGNNLayer(
            hidden,
            attr,
            NBODY_MESSAGE_IRREPS,
            num_nodes=n,
            norm=norm,
            relaxed=relaxed,
            relaxation_initializer=relaxation_initializer,
            lie_method=lie_method,
            relaxation_placement=relaxation_placement,
            relaxation_use_bias=relaxation_use_bias,
            layout=layout,
            name=f"layer_{i}",
        )([x, edge_attr, node_attr, edge_features])
    x = O3TensorProductGate(hidden, attr, hidden, relaxed=False, layout=layout, name="pre_pool1")((x, node_attr))
    delta = O3TensorProduct(hidden, attr, NBODY_OUTPUT_IRREPS, relaxed=False, layout=layout, name="pre_pool2")(
        (x, node_attr)
    )
    positions = keras.layers.Add(name="positions")([checked[0], delta])
    return RelaxedModel(
        {"loc": loc, "vel": vel, "charges": charges},
        positions,
        lambda_lie=lambda_lie,
        lambda_proj=lambda_proj,
        penalty_scale=penalty_scale,
        name=name,
    )


__all__ = ["segnn", "segnn_hidden_irreps", "SEGNNLayer", "NBodyGraphFeatures", "fully_connected_edges"]
