"""Equiformer's input embeddings: atom types to scalars, and the edge-degree embedding of the neighbourhood."""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_relaxeq.groups.irreps import Irreps
from keras_relaxeq.layers.equiformer.depthwise import DepthwiseTensorProduct
from keras_relaxeq.layers.equiformer.radial import RadialMLP
from keras_relaxeq.layers.steerable import O3Linear
from keras_relaxeq.layers.steerable.parsing import irreps_arg
from keras_relaxeq.utils import set_untracked

register = keras.saving.register_keras_serializable(package="keras_relaxeq")


@register
class AtomEmbedding(keras.layers.Layer):
    """Atomic numbers ``[B, A]`` (int, ``0 <= Z <= max_atomic_number``; 0 = padding) to node features
    ``[B, A, irreps_node.dim]``: a learned vector of ``0e`` scalars per element (Equiformer's one-hot ``Linear``),
    zeros in the ``l > 0`` blocks.  ``max_atomic_number=10`` covers H to Ne (every MD17 molecule: H, C, N, O)."""

    def __init__(self, irreps_node, max_atomic_number=10, **kwargs):
        super().__init__(**kwargs)
        owner = f"AtomEmbedding '{self.name}'"
        set_untracked(self, "irreps_node", irreps_arg(irreps_node, "irreps_node", owner))
        self.max_atomic_number = int(max_atomic_number)
        first_mul, first_ir = self.irreps_node[0]
        if not first_ir.is_scalar():
            raise ValueError(f"{owner}: irreps_node must start with 0e scalars, got '{self.irreps_node}'.")
        self.num_scalars = first_mul
        self.table = None

    def build(self, input_shape):
        self.table = self.add_weight(
            name="table",
            shape=(self.max_atomic_number + 1, self.num_scalars),
            initializer=keras.initializers.RandomNormal(stddev=1.0),
        )
        self.built = True

    def call(self, atomic_numbers):
        z = tf.cast(atomic_numbers, tf.int32)
        scalars = tf.gather(tf.cast(self.table, self.compute_dtype), z)
        rest = self.irreps_node.dim - self.num_scalars
        if rest == 0:
            return scalars
        zeros = tf.zeros(tf.concat([tf.shape(z), [rest]], 0), self.compute_dtype)
        return tf.concat([scalars, zeros], axis=-1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.irreps_node.dim,)

    def get_config(self):
        config = super().get_config()
        config.update(irreps_node=str(self.irreps_node), max_atomic_number=self.max_atomic_number)
        return config


@register
class EdgeDegreeEmbedding(keras.layers.Layer):
    """Equiformer's ``EdgeDegreeEmbeddingNetwork``: ``sum_j lin(DTP(1, sh_ij, radial(rbf_ij))) / avg_num_neighbors``.

    A constant ``mul x 0e`` input (``mul`` = the number of ``0e`` copies of ``irreps_node``) is multiplied with each
    edge's spherical harmonics under radial-MLP weights (:class:`DepthwiseTensorProduct`), mapped to
    ``irreps_node`` (:class:`O3Linear`) and summed over the neighbours: the first ``l > 0`` node features.
    Called on ``(sh [B, A, A, S], rbf [B, A, A, R], edge_weight [B, A, A])``; returns ``[B, A, irreps_node.dim]``.
    """

    def __init__(self, irreps_node, irreps_sh="1x0e+1x1o+1x2e", avg_num_neighbors=15.57, radial_hidden=(64, 64), **kw):
        super().__init__(**kw)
        owner = f"EdgeDegreeEmbedding '{self.name}'"
        set_untracked(self, "irreps_node", irreps_arg(irreps_node, "irreps_node", owner))
        set_untracked(self, "irreps_sh", irreps_arg(irreps_sh, "irreps_sh", owner))
        self.avg_num_neighbors = float(avg_num_neighbors)
        self.radial_hidden = tuple(int(h) for h in radial_hidden)
        set_untracked(self, "irreps_const", Irreps([(max(1, self.irreps_node.count("0e")), "0e")]))
        dtype = self.dtype_policy
        self.dtp = DepthwiseTensorProduct(self.irreps_const, self.irreps_sh, self.irreps_node, name="dtp", dtype=dtype)
        self.radial = RadialMLP(self.dtp.num_weights, self.radial_hidden, name="radial", dtype=dtype)
        self.lin = O3Linear(
            self.dtp.irreps_out, self.irreps_node, use_bias=False, relaxed=False, name="lin", dtype=dtype
        )

    def build(self, input_shape):
        sh_shape, rbf_shape, edge_shape = (tuple(s) for s in input_shape)
        self.radial.build((rbf_shape, edge_shape))
        self.lin.build(tuple(edge_shape) + (self.dtp.irreps_out.dim,))
        self.built = True

    def call(self, inputs):
        sh, rbf, edge_weight = (tf.cast(t, self.compute_dtype) for t in inputs)
        ones = tf.ones(tf.concat([tf.shape(edge_weight), [self.irreps_const.dim]], 0), self.compute_dtype)
        edges = self.lin(self.dtp((ones, sh, self.radial((rbf, edge_weight)))))
        return tf.reduce_sum(edges, axis=2) / self.avg_num_neighbors

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[2])[:2] + (self.irreps_node.dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            irreps_node=str(self.irreps_node),
            irreps_sh=str(self.irreps_sh),
            avg_num_neighbors=self.avg_num_neighbors,
            radial_hidden=list(self.radial_hidden),
        )
        return config


__all__ = ["AtomEmbedding", "EdgeDegreeEmbedding"]
