"""``RelaxedEquivariantLayer``: the base class of every relaxable layer.

A subclass declares its input and output representations and its equivariant
map.  With ``relaxed=True`` the base adds the relaxation branch of method.md
section 2,

    f(x) = E(x) + theta * R(x),      R(x) = W flat(x) + b,

with ``W`` named ``relaxation_kernel`` and ``theta`` a non-trainable scalar
variable, and computes the two penalties of section 3 on ``stop_gradient(x)``:

* Lie derivative  ``LD = sum_points sum_k || J_R(x) drho_in(A_k) x - drho_out(A_k) R(x) ||^2``
* projection error ``N = sum_points || R(x) ||^2``

The Lie derivative is computed either by autodiff for any branch
(forward-mode JVP with ``tf.autodiff.ForwardAccumulator``, or double-backward
with ``tf.GradientTape``) or, for the linear branch, by the closed form

    sum_p || x_p M_k - c_k ||^2 = tr(M_k^T S M_k) - 2 s M_k c_k^T + P ||c_k||^2

with ``M_k = G_in,k^T W - W G_out,k^T`` (row-vector convention, ``y = x W + b``),
``c_k = b G_out,k^T``, the Gram matrix ``S = sum_p x_p^T x_p`` and ``s = sum_p x_p``.

A low-rank branch (``relaxation_rank=r``) stores ``W = U V`` as its two factors ``U`` ``[D_in, r]``
(``relaxation_kernel_u``) and ``V`` ``[r, D_out]`` (``relaxation_kernel_v``) and never forms ``W``: the
branch is ``(x U) V + b``, the closed form uses ``M_k = (G_in,k^T U) V - U (V G_out,k^T)`` with ``S`` applied to
the factors only (:func:`low_rank_branch_penalties`), and the direct evaluation multiplies the rows by
``[U, G_in,k^T U]`` (:func:`direct_low_rank_branch_penalties`).

Penalties are only computed while a penalty collector is active: inside
``RelaxedModel``'s training forward pass (which sums them over the model and
adds ``lambda_lie * sqrt(LD) + lambda_proj * sqrt(N)`` to the loss), or inside
``layer.relaxation_penalties(x)`` / ``collect_relaxation_penalties()``.
"""

from __future__ import annotations

import contextlib
import threading

import keras
import tensorflow as tf

from keras_relaxeq.groups.representations import Representation

_STATE = threading.local()

LIE_METHODS = ("auto", "closed_form", "direct", "jvp", "tape")
BRANCHES = ("linear", "mlp")


# --------------------------------------------------------------------------- collectors
class PenaltyCollector:
    """Accumulates the (Lie, projection) penalty sums of one forward pass.

    With ``record_activations=True`` each branch also reports ``(sum ||E(x)||^2,
    sum ||theta R(x)||^2, P)``: the squared norms of the layer's equivariant output and of the
    branch's contribution, and the number of rows (points) they sum over
    (:func:`keras_relaxeq.training.diagnostics.relaxation_report`).
    """

    def __init__(self, record_activations: bool = False):
        self.lie = []
        self.projection = []
        self.layers = []
        self.record_activations = bool(record_activations)
        self.activations = []
        self._gram_cache = {}

    def add(self, layer, lie, projection, activations=None):
        self.layers.append(layer)
        self.lie.append(lie)
        self.projection.append(projection)
        self.activations.append(activations)

    def extend(self, other: "PenaltyCollector"):
        self.layers.extend(other.layers)
        self.lie.extend(other.lie)
        self.projection.extend(other.projection)
        self.activations.extend(other.activations)

    def __len__(self):
        return len(self.lie)

    def totals(self, dtype=tf.float32):
        """``(LD, N)`` summed over every branch seen, as scalars (0 when none)."""
        if not self.lie:
            zero = tf.zeros((), dtype)
            return zero, zero
        lie = tf.add_n([tf.cast(v, dtype) for v in self.lie])
        proj = tf.add_n([tf.cast(v, dtype) for v in self.projection])
        return lie, proj

    def gram(self, x_ref, flat_x):
        """Gram statistics ``(S, s, P)`` of ``flat_x``, shared by branches that read the same input."""
        key = x_ref
        if key is not None and key in self._gram_cache:
            return self._gram_cache[key]
        stats = gram_statistics(flat_x)
        if key is not None:
            self._gram_cache[key] = stats
        return stats


def _collector_stack():
    if not hasattr(_STATE, "collectors"):
        _STATE.collectors = []
    return _STATE.collectors


def active_collector():
    stack = _collector_stack()
    return stack[-1] if stack else None


@contextlib.contextmanager
def collect_relaxation_penalties(record_activations: bool = False):
    """Context manager: every relaxed branch called inside adds its penalties.

    Yields a :class:`PenaltyCollector`; ``collector.totals()`` gives ``(LD, N)``.
    Nested collectors also report to the enclosing one.  ``record_activations``: see
    :class:`PenaltyCollector`.
    """
    stack = _collector_stack()
    collector = PenaltyCollector(record_activations=record_activations)
    stack.append(collector)
    try:
        yield collector
    finally:
        stack.pop()
        if stack:
            stack[-1].extend(collector)


@contextlib.contextmanager
def plain_layers():
    """Inside this context every ``RelaxedEquivariantLayer`` is built with ``relaxed=False``.

    Used by ``project()`` to rebuild a model (including layers nested in
    custom containers) without relaxation branches.
    """
    _STATE.force_plain = getattr(_STATE, "force_plain", 0) + 1
    try:
        yield
    finally:
        _STATE.force_plain -= 1


def _force_plain() -> bool:
    return getattr(_STATE, "force_plain", 0) > 0


# --------------------------------------------------------------------------- math helpers
@tf.custom_gradient
def safe_sqrt(x):
    """``sqrt(max(x, 0))`` with a finite gradient at 0 (``0.5 / sqrt(max(x, 1e-12))``)."""
    x = tf.convert_to_tensor(x)
    y = tf.sqrt(tf.maximum(x, tf.zeros_like(x)))

    def grad(dy):
        return dy * 0.5 / tf.sqrt(tf.maximum(x, tf.cast(1e-12, x.dtype)))

    return y, grad


def gram_statistics(flat_x):
    """``S = X^T X``, ``s = sum_p x_p``, ``P`` for ``X = flat_x`` ``[P, D]``."""
    s_mat = tf.matmul(flat_x, flat_x, transpose_a=True)
    s_vec = tf.reduce_sum(flat_x, axis=0)
    count = tf.cast(tf.shape(flat_x)[0], flat_x.dtype)
    return s_mat, s_vec, count


def linear_branch_penalties(kernel, bias, gram, in_rep: Representation, out_rep: Representation):
    """Closed-form ``(LD, N)`` of the linear branch ``x W + b`` from Gram statistics.

    ``kernel``: ``[D_in, D_out]``; ``bias``: ``[D_out]`` or None; ``gram``: the
    output of :func:`gram_statistics` on the (stop-gradient) flattened inputs.
    """
    s_mat, s_vec, count = gram
    w = tf.convert_to_tensor(kernel)

    # Cost: the D_in^2 D_out products S B dominate.  All four quadratic forms share one
    # matmul, and the gradient reuses it: S is a Gram matrix (symmetric), so
    # d tr(B^T S B) / dB = 2 S B, which autodiff would recompute with four more
    # D_in^2 D_out matmuls (S^T (g B)).  The explicit M_k are kept on purpose:
    # expanding tr(M_k^T S M_k) into W-only terms (Casimir / sum_k G S G^T identities)
    # is algebraically equal but cancels catastrophically as W approaches an
    # equivariant map (float32 LD wrong by 100% at ||M|| ~ 1e-4 ||W||), exactly
    # where the penalty drives it.
    @tf.custom_gradient
    def quadratic_forms(s, blocks):
        """``q_j = tr(B_j^T S B_j)`` for the blocks ``B_j = blocks[:, j, :]`` (``[D_in, n, D_out]``)."""
        shape = tf.shape(blocks)
        flat = tf.reshape(blocks, [shape[0], -1])
        s_blocks = tf.reshape(tf.matmul(s, flat), shape)
        q = tf.reduce_sum(s_blocks * blocks, axis=[0, 2])

        def grad(dq):
            scale = dq[None, :, None]
            d_blocks = 2.0 * scale * s_blocks
            # Exact gradient w.r.t. S (sum_j dq_j B_j B_j^T); pruned from compiled graphs
            # when S comes from stop_gradient inputs, as in the penalties.
            d_s = tf.matmul(tf.reshape(scale * blocks, [shape[0], -1]), flat, transpose_b=True)
            return d_s, d_blocks

        return q, grad

    # M_k = G_in,k^T W - W G_out,k^T, built with the representations' structure, laid out
    # [D_in, k, D_out] so that [M_0 M_1 M_2 W] is one [D_in, 4 D_out] matrix.
    a = tf.transpose(in_rep.apply_generators(tf.transpose(w), transpose=True), [2, 0, 1])
    b = tf.transpose(out_rep.apply_generators(w), [1, 0, 2])
    m = a - b  # [D_in, 3, D_out]
    quad = quadratic_forms(s_mat, tf.concat([m, w[:, None, :]], axis=1))
    lie = tf.reduce_sum(quad[:3])  # sum_k tr(M_k^T S M_k)
    proj = quad[3]  # tr(W^T S W)
    if bias is not None:
        c = out_rep.apply_generators(bias)  # [3, D_out]
        s_m = tf.einsum("i,iko->ko", s_vec, m)
        lie = lie - 2.0 * tf.reduce_sum(s_m * c) + count * tf.reduce_sum(c * c)
        proj = proj + 2.0 * tf.reduce_sum(tf.linalg.matvec(w, s_vec, transpose_a=True) * bias) \
            + count * tf.reduce_sum(bias * bias)
    return lie, proj


def direct_linear_branch_penalties(kernel, bias, flat_x, in_rep: Representation, out_rep: Representation):
    """``(LD, N)`` of the linear branch evaluated directly on the rows of ``flat_x`` ``[P, D_in]``.

    Rows first: ``x M_k = (x G_in,k^T) W - (x W) G_out,k^T`` with the structured generator actions
    on the rows and one ``[4 P, D_in] x [D_in, D_out]`` product; the kernel-sized ``M_k`` is never
    built.  Cheaper than the Gram-matrix closed form when there are fewer rows than input features
    (pooled features: one row per sample), exact like it.
    """
    w = tf.convert_to_tensor(kernel)
    x = tf.convert_to_tensor(flat_x)
    p = tf.shape(x)[0]
    rows = tf.concat([x[None], in_rep.apply_generators(x)], axis=0)  # [4, P, D_in]: x, x G_in,k^T
    y = tf.reshape(tf.matmul(tf.reshape(rows, [-1, tf.shape(w)[0]]), w), [4, p, -1])
    r = y[0] if bias is None else y[0] + bias  # R(x) = x W + b
    lie_rows = y[1:] - out_rep.apply_generators(r)  # (x G_in,k^T) W - R(x) G_out,k^T
    return tf.reduce_sum(tf.square(lie_rows)), tf.reduce_sum(tf.square(r))


def _factor_generator_actions(u, v, in_rep: Representation, out_rep: Representation):
    """``(A, B)`` for ``W = U V``: ``A[k] = G_in,k^T U`` ``[3, D_in, r]`` and ``B[k] = V G_out,k^T`` ``[3, r, D_out]``,
    so that ``M_k = G_in,k^T W - W G_out,k^T = A[k] V - U B[k]``."""
    a = tf.transpose(in_rep.apply_generators(tf.transpose(u), transpose=True), [0, 2, 1])  # (U^T G_k)^T
    b = out_rep.apply_generators(v)
    return a, b


def low_rank_branch_penalties(u, v, bias, gram, in_rep: Representation, out_rep: Representation):
    """Closed-form ``(LD, N)`` of the low-rank branch ``x U V + b`` from Gram statistics, ``W = U V`` not formed.

    ``u``: ``[D_in, r]``; ``v``: ``[r, D_out]``; ``bias``: ``[D_out]`` or None; ``gram``: the output of
    :func:`gram_statistics`.  ``S`` is applied to the factors only (one ``[D_in, D_in] x [D_in, 4 r]``
    product for ``S U`` and ``S G_in,k^T U``), so the cost is ``O(D_in^2 r + D_in D_out r)`` instead of the
    dense form's ``O(D_in^2 D_out)``.  ``M_k = A_k V - U B_k`` and ``S M_k = (S A_k) V - (S U) B_k`` are built
    explicitly (``[D_in, D_out]`` each, ``O(D_in D_out r)``) and ``tr(M_k^T S M_k)`` summed entrywise: the
    expansion into factor-only ``r x r`` traces would be cheaper still but cancels catastrophically in float32
    as ``W`` approaches an equivariant map (see :func:`linear_branch_penalties`).  The projection term
    ``tr(V^T U^T S U V) = <U^T S U, V V^T>`` has no such cancellation and stays ``r x r``.
    """
    s_mat, s_vec, count = gram
    u = tf.convert_to_tensor(u)
    v = tf.convert_to_tensor(v)
    rank = tf.shape(u)[1]
    a, b = _factor_generator_actions(u, v, in_rep, out_rep)  # [3, D_in, r], [3, r, D_out]
    z = tf.concat([u[None], a], axis=0)  # [4, D_in, r]: U, A_0, A_1, A_2
    z_cols = tf.reshape(tf.transpose(z, [1, 0, 2]), [tf.shape(u)[0], -1])  # [D_in, 4 r]
    sz = tf.reshape(tf.matmul(s_mat, z_cols), [tf.shape(u)[0], 4, rank])  # [D_in, 4, r]
    s_u, s_a = sz[:, 0], tf.transpose(sz[:, 1:], [1, 0, 2])  # [D_in, r], [3, D_in, r]
    m = tf.matmul(a, v) - tf.matmul(u, b)  # [3, D_in, D_out] (u, v broadcast over k)
    s_m = tf.matmul(s_a, v) - tf.matmul(s_u, b)  # S M_k
    lie = tf.reduce_sum(m * s_m)
    proj = tf.reduce_sum(tf.matmul(u, s_u, transpose_a=True) * tf.matmul(v, v, transpose_b=True))
    if bias is not None:
        c = out_rep.apply_generators(bias)  # [3, D_out]
        sm_vec = tf.einsum("i,kio->ko", s_vec, m)  # s M_k
        lie = lie - 2.0 * tf.reduce_sum(sm_vec * c) + count * tf.reduce_sum(c * c)
        s_w = tf.linalg.matvec(v, tf.linalg.matvec(u, s_vec, transpose_a=True), transpose_a=True)  # s U V
        proj = proj + 2.0 * tf.reduce_sum(s_w * bias) + count * tf.reduce_sum(bias * bias)
    return lie, proj


def direct_low_rank_branch_penalties(u, v, bias, flat_x, in_rep: Representation, out_rep: Representation):
    """``(LD, N)`` of the low-rank branch ``x U V + b`` evaluated directly on the rows of ``flat_x`` ``[P, D_in]``.

    ``x M_k = (x G_in,k^T U) V - (x U V) G_out,k^T``: one ``[P, D_in] x [D_in, 4 r]`` product with the factor
    ``[U, G_in,k^T U]`` (the generators act on ``U``, not on the ``P`` rows) and one ``[4 P, r] x [r, D_out]``
    product; cost ``4 P r (D_in + D_out)``, no Gram matrix (which costs ``P D_in^2``).
    """
    u = tf.convert_to_tensor(u)
    v = tf.convert_to_tensor(v)
    x = tf.convert_to_tensor(flat_x)
    p, rank = tf.shape(x)[0], tf.shape(u)[1]
    a, _ = _factor_generator_actions(u, v, in_rep, out_rep)
    z_cols = tf.reshape(tf.transpose(tf.concat([u[None], a], axis=0), [1, 0, 2]), [tf.shape(u)[0], -1])
    h = tf.transpose(tf.reshape(tf.matmul(x, z_cols), [p, 4, rank]), [1, 0, 2])  # [4, P, r]: x U, x A_k
    y = tf.reshape(tf.matmul(tf.reshape(h, [-1, rank]), v), [4, p, -1])
    r = y[0] if bias is None else y[0] + bias
    lie_rows = y[1:] - out_rep.apply_generators(r)
    return tf.reduce_sum(tf.square(lie_rows)), tf.reduce_sum(tf.square(r))


def autodiff_branch_penalties(branch_fn, flat_x, in_rep: Representation, out_rep: Representation,
                              method: str = "jvp"):
    """``(LD, N)`` of any branch ``branch_fn: [P, D_in] -> [P, D_out]`` by autodiff.

    ``method="jvp"`` uses forward mode (``tf.autodiff.ForwardAccumulator``);
    ``method="tape"`` the double-backward trick with two ``tf.GradientTape``s.
    """
    x = tf.stop_gradient(flat_x)
    tangents = in_rep.apply_generators(x)  # [3, P, D_in] = x G_in,k^T
    xs = tf.tile(x[None], [3, 1, 1])
    if method == "jvp":
        with tf.autodiff.ForwardAccumulator(primals=xs, tangents=tangents) as acc:
            ys = branch_fn(xs)
        jvp = acc.jvp(ys)
    elif method == "tape":
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                inner.watch(xs)
                ys = branch_fn(xs)
            dummy = tf.zeros_like(ys)
            outer.watch(dummy)
            vjp = inner.gradient(ys, xs, output_gradients=dummy)  # J^T u, linear in u
            inner_product = tf.reduce_sum(vjp * tangents)
        jvp = outer.gradient(inner_product, dummy)  # d/du <J^T u, v> = J v
    else:
        raise ValueError(f"Unknown autodiff method {method!r}; use 'jvp' or 'tape'.")
    y = ys[0]
    rotated_out = out_rep.apply_generators(y)  # [3, P, D_out] = R(x) G_out,k^T
    lie = tf.reduce_sum(tf.square(jvp - rotated_out))
    proj = tf.reduce_sum(tf.square(y))
    return lie, proj


def _flatten_features(x, rep: Representation):
    return tf.reshape(x, [-1, rep.dim])


# --------------------------------------------------------------------------- the base layer
@keras.saving.register_keras_serializable(package="keras_relaxeq")
class RelaxedEquivariantLayer(keras.layers.Layer):
    """Base class of relaxable equivariant layers.

    Subclasses implement

    * ``input_representation(input_shape)`` and ``output_representation(input_shape)``
      returning :class:`keras_relaxeq.groups.Representation` objects,
    * ``build_equivariant(input_shape)`` creating the equivariant weights,
    * ``equivariant_call(inputs, training=None)``, the equivariant map ``E``,

    and may override ``relaxation_inputs(inputs)``, the tensor ``x`` the branch reads (default: the
    layer input; e.g. only the features of a layer called on ``(features, attributes)``).

    The base adds the relaxation branch ``theta * R(x)`` when ``relaxed=True``.
    Layers that are compositions of other relaxable layers (and have no linear
    map of their own) set ``has_relaxation_branch = False`` and override
    ``call``; their sublayers carry the branches.

    Args:
        relaxed: add the relaxation branch.  With ``False`` the layer has no
            branch weights and no ``theta`` at all.
        relaxation_initializer: initializer of ``relaxation_kernel`` (zeros for
            VN-PointNet, ``"glorot_uniform"``-like defaults for VN-DGCNN,
            ``RandomNormal(stddev=1e-4)`` for SEGNN).
        relaxation_use_bias: add the branch bias ``b`` (``relaxation_bias``).
        relaxation_branch: ``"linear"`` (``W flat(x) + b``) or ``"mlp"`` (a
            one-hidden-layer MLP; penalties by autodiff).
        relaxation_hidden_units: hidden width of the ``"mlp"`` branch.
        lie_method: ``"auto"`` (closed form for linear branches, JVP
            otherwise), ``"closed_form"``, ``"jvp"`` or ``"tape"``.
        theta: initial value of ``theta``.
        relaxation_rank: ``None`` (a dense ``[D_in, D_out]`` kernel) or ``r``: the linear branch's kernel
            is ``W = U V`` with ``U`` ``[D_in, r]`` (``relaxation_kernel_u``, initialised
            ``VarianceScaling(1, "fan_in")``, so ``x U`` has the scale of ``x``) and ``V`` ``[r, D_out]``
            (``relaxation_kernel_v``, initialised with ``relaxation_initializer``: zeros give ``W = 0`` at
            the start, and ``V`` still receives gradients through ``U``).  Branch and penalties are computed
            through the factors.  A layer with ``min(D_in, D_out) <= r`` keeps the dense kernel: a rank-``r``
            factorisation would be no restriction there and cost more.

    Mixed precision (``dtype="mixed_bfloat16"``): the branch runs in the compute dtype, while its
    variables and ``theta`` stay float32 and the penalties are computed in float32 (on the float32 cast
    of the layer's inputs and on the float32 variables).
    """

    has_relaxation_branch = True

    def __init__(self, relaxed=True, relaxation_initializer="zeros", relaxation_use_bias=True,
                 relaxation_branch="linear", relaxation_hidden_units=64, lie_method="auto",
                 theta=1.0, relaxation_rank=None, **kwargs):
        super().__init__(**kwargs)
        if relaxation_branch not in BRANCHES:
            raise ValueError(f"relaxation_branch must be one of {BRANCHES}, got {relaxation_branch!r}.")
        if lie_method not in LIE_METHODS:
            raise ValueError(f"lie_method must be one of {LIE_METHODS}, got {lie_method!r}.")
        if lie_method in ("closed_form", "direct") and relaxation_branch != "linear":
            raise ValueError(f"lie_method={lie_method!r} needs relaxation_branch='linear'; "
                             "use lie_method='jvp' or 'tape' for other branches.")
        if relaxation_rank is not None:
            if int(relaxation_rank) != relaxation_rank or int(relaxation_rank) < 1:
                raise ValueError(f"relaxation_rank must be None or an integer >= 1, got {relaxation_rank!r}.")
            if relaxation_branch != "linear":
                raise ValueError("relaxation_rank needs relaxation_branch='linear'.")
            relaxation_rank = int(relaxation_rank)
        self.relaxation_rank = relaxation_rank
        self.relaxation_low_rank = False  # set in build: rank given and < min(D_in, D_out)
        self.relaxed = bool(relaxed) and not _force_plain()
        self.relaxation_initializer = keras.initializers.get(relaxation_initializer)
        self.relaxation_use_bias = bool(relaxation_use_bias)
        self.relaxation_branch = relaxation_branch
        self.relaxation_hidden_units = int(relaxation_hidden_units)
        self.lie_method = lie_method
        self.initial_theta = float(theta)
        self.input_rep = None
        self.output_rep = None
        self.theta = None

    # -- hooks for subclasses -------------------------------------------------------
    def input_representation(self, input_shape) -> Representation:
        raise NotImplementedError

    def output_representation(self, input_shape) -> Representation:
        raise NotImplementedError

    def build_equivariant(self, input_shape):
        """Create the weights of the equivariant map (default: none)."""

    def equivariant_call(self, inputs, training=None):
        raise NotImplementedError

    def relaxation_inputs(self, inputs):
        """The tensor the relaxation branch reads, from the layer's call inputs (default: ``inputs``).

        It has the representation ``input_rep``.  :meth:`call` passes it to :meth:`add_relaxation`, and
        :meth:`branch_penalties` applies this hook to its own ``inputs`` first, so the hook must accept the
        tensor it returns and return that tensor unchanged.  Layers called on several tensors (features and
        attributes) return the one the branch maps.
        """
        return inputs

    # -- relaxation kwargs shared with sublayers --------------------------------------
    def relaxation_config(self) -> dict:
        """The constructor arguments a composite layer passes on to its sublayers."""
        return {
            "relaxed": self.relaxed,
            "relaxation_initializer": keras.initializers.serialize(self.relaxation_initializer),
            "relaxation_use_bias": self.relaxation_use_bias,
            "relaxation_branch": self.relaxation_branch,
            "relaxation_hidden_units": self.relaxation_hidden_units,
            "lie_method": self.lie_method,
            "theta": self.initial_theta,
            "relaxation_rank": self.relaxation_rank,
        }

    def sublayer_config(self) -> dict:
        """Constructor arguments for sublayers: the relaxation settings and this layer's dtype policy."""
        return dict(self.relaxation_config(), dtype=self.dtype_policy)

    # -- Keras API -------------------------------------------------------------------
    def build(self, input_shape):
        self.input_rep = self.input_representation(input_shape)
        self.input_rep.check(input_shape, where=f"input of {type(self).__name__} '{self.name}'")
        self.output_rep = self.output_representation(input_shape)
        self.build_equivariant(input_shape)
        if self.relaxed and self.has_relaxation_branch:
            self._build_branch(self.input_rep, self.output_rep)

    def _build_branch(self, in_rep: Representation, out_rep: Representation):
        d_in, d_out = in_rep.dim, out_rep.dim
        self.theta = self.add_weight(name="theta", shape=(),
                                     initializer=keras.initializers.Constant(self.initial_theta),
                                     trainable=False, autocast=False)
        if self.relaxation_branch == "mlp":
            h = self.relaxation_hidden_units
            self.relaxation_hidden_kernel = self.add_weight(
                name="relaxation_hidden_kernel", shape=(d_in, h), initializer="glorot_uniform", autocast=False)
            self.relaxation_hidden_bias = self.add_weight(
                name="relaxation_hidden_bias", shape=(h,), initializer="zeros", autocast=False)
        else:
            h = d_in
        # The branch variables are not autocast: under a mixed policy the forward pass casts them to the
        # compute dtype and the penalties read them in their (float32) variable dtype.
        self.relaxation_low_rank = self.relaxation_rank is not None and self.relaxation_rank < min(d_in, d_out)
        if self.relaxation_low_rank:
            self.relaxation_kernel = None
            self.relaxation_kernel_u = self.add_weight(
                name="relaxation_kernel_u", shape=(d_in, self.relaxation_rank), autocast=False,
                initializer=keras.initializers.VarianceScaling(1.0, "fan_in", "truncated_normal"))
            self.relaxation_kernel_v = self.add_weight(
                name="relaxation_kernel_v", shape=(self.relaxation_rank, d_out), autocast=False,
                initializer=self.relaxation_initializer)
        else:
            self.relaxation_kernel = self.add_weight(name="relaxation_kernel", shape=(h, d_out), autocast=False,
                                                     initializer=self.relaxation_initializer)
        self.relaxation_bias = (self.add_weight(name="relaxation_bias", shape=(d_out,), initializer="zeros",
                                                autocast=False)
                                if self.relaxation_use_bias else None)

    def call(self, inputs, training=None):
        outputs = self.equivariant_call(inputs, training=training)
        if self.relaxed and self.has_relaxation_branch:
            outputs = self.add_relaxation(self.relaxation_inputs(inputs), outputs)
        return outputs

    # -- the branch ------------------------------------------------------------------
    @property
    def relaxation_variables(self):
        """The branch's variables (theta excluded); empty when not relaxed."""
        if not (self.relaxed and self.has_relaxation_branch) or self.theta is None:
            return []
        names = ("relaxation_hidden_kernel", "relaxation_hidden_bias", "relaxation_kernel", "relaxation_kernel_u",
                 "relaxation_kernel_v", "relaxation_bias")
        return [getattr(self, n) for n in names if getattr(self, n, None) is not None]

    def branch(self, flat_x):
        """``R(x)`` on flattened features ``[..., D_in] -> [..., D_out]`` (in the dtype of ``flat_x``)."""
        h = flat_x
        dtype = flat_x.dtype

        def var(v):
            return v if tf.as_dtype(v.dtype) == dtype else tf.cast(v, dtype)

        if self.relaxation_branch == "mlp":
            h = tf.nn.gelu(tf.matmul(h, var(self.relaxation_hidden_kernel)) + var(self.relaxation_hidden_bias))
        if self.relaxation_low_rank:
            y = tf.matmul(tf.matmul(h, var(self.relaxation_kernel_u)), var(self.relaxation_kernel_v))
        else:
            y = tf.matmul(h, var(self.relaxation_kernel))
        if self.relaxation_bias is not None:
            y = y + var(self.relaxation_bias)
        return y

    def relaxation_kernel_value(self):
        """The linear branch's kernel ``W`` ``[D_in, D_out]`` as a tensor (``U V`` for a low-rank branch)."""
        if self.relaxation_low_rank:
            return tf.matmul(self.relaxation_kernel_u, self.relaxation_kernel_v)
        return tf.convert_to_tensor(self.relaxation_kernel)

    def resolved_lie_method(self, inputs=None) -> str:
        """The method used for ``inputs``: ``"auto"`` picks, for linear branches, the Gram-matrix
        closed form for per-point features and the direct evaluation for pooled features (only a
        batch axis before the feature axes: fewer rows than input features); JVP otherwise."""
        if self.lie_method != "auto":
            return self.lie_method
        if self.relaxation_branch != "linear":
            return "jvp"
        if inputs is not None and inputs.shape.rank == self.input_rep.feature_rank + 1:
            return "direct"
        if self.relaxation_low_rank:
            # per row: the Gram matrix costs D_in^2, the direct evaluation through the factors 4 r (D_in + D_out)
            d_in, d_out = self.input_rep.dim, self.output_rep.dim
            if 4 * self.relaxation_rank * (d_in + d_out) < d_in * d_in:
                return "direct"
        return "closed_form"

    def add_relaxation(self, inputs, outputs):
        """Return ``outputs + theta * R(inputs)`` and report penalties to the active collector.

        ``inputs`` is what the branch reads (the result of :meth:`relaxation_inputs`)."""
        flat_x = _flatten_features(inputs, self.input_rep)
        r = self.branch(flat_x)
        contribution = tf.cast(self.theta, outputs.dtype) * tf.reshape(r, tf.shape(outputs))
        relaxed = outputs + contribution
        collector = active_collector()
        if collector is not None:
            lie, proj = self.branch_penalties(inputs, collector=collector)
            activations = None
            if collector.record_activations:
                activations = (tf.reduce_sum(tf.square(outputs)), tf.reduce_sum(tf.square(contribution)),
                               tf.shape(flat_x)[0])
            collector.add(self, lie, proj, activations)
        return relaxed

    def branch_penalties(self, inputs, collector=None, method=None):
        """``(LD, N)`` of this layer's own branch for ``inputs`` (on ``stop_gradient``).

        ``inputs``: the layer's call inputs or the branch input (see :meth:`relaxation_inputs`).
        For finite-group field types (``input_rep.is_finite_group``) the Lie slot holds the generator defect
        ``sum_g ||g.R(x) - R(g.x)||^2`` (:mod:`keras_relaxeq.layers.finite_group_penalties`)."""
        inputs = self.relaxation_inputs(inputs)
        if getattr(self.input_rep, "is_finite_group", False):
            from keras_relaxeq.layers.finite_group_penalties import finite_group_branch_penalties

            return finite_group_branch_penalties(self, inputs, collector=collector, method=method)
        method = method or self.resolved_lie_method(inputs)
        flat_x = tf.stop_gradient(_flatten_features(inputs, self.input_rep))
        variable_dtype = tf.as_dtype(self.variable_dtype)
        if flat_x.dtype != variable_dtype:  # mixed precision: penalties in the variables' dtype (float32)
            flat_x = tf.cast(flat_x, variable_dtype)
        if method == "direct":
            if self.relaxation_branch != "linear":
                raise ValueError("The direct evaluation needs a linear branch.")
            if self.relaxation_low_rank:
                return direct_low_rank_branch_penalties(self.relaxation_kernel_u, self.relaxation_kernel_v,
                                                        self.relaxation_bias, flat_x, self.input_rep,
                                                        self.output_rep)
            return direct_linear_branch_penalties(self.relaxation_kernel, self.relaxation_bias, flat_x,
                                                  self.input_rep, self.output_rep)
        if method == "closed_form":
            if self.relaxation_branch != "linear":
                raise ValueError("The closed form needs a linear branch.")
            ref = _tensor_ref(inputs)
            gram = collector.gram(ref, flat_x) if collector is not None else gram_statistics(flat_x)
            if self.relaxation_low_rank:
                return low_rank_branch_penalties(self.relaxation_kernel_u, self.relaxation_kernel_v,
                                                 self.relaxation_bias, gram, self.input_rep, self.output_rep)
            return linear_branch_penalties(self.relaxation_kernel, self.relaxation_bias, gram,
                                           self.input_rep, self.output_rep)
        return autodiff_branch_penalties(self.branch, flat_x, self.input_rep, self.output_rep, method=method)

    def relaxation_penalties(self, inputs):
        """``(LD, N)``: summed squared Lie derivative and branch output for ``inputs``.

        Sums over every relaxed branch inside this layer (its own and its
        sublayers'), points and generators, before any square root.  Runs the
        layer in inference mode.
        """
        with collect_relaxation_penalties() as collector:
            self(inputs, training=False)
        return collector.totals(dtype=self.variable_dtype)  # float32 under a mixed policy

    # -- serialization ---------------------------------------------------------------
    def get_config(self):
        config = super().get_config()
        config.update(self.relaxation_config())
        return config


def _tensor_ref(x):
    try:
        return x.ref()
    except (AttributeError, TypeError):
        return None


def relaxed_layers(model_or_layer):
    """All relaxed layers with their own branch inside ``model_or_layer`` (itself included)."""
    layers = []
    seen = set()
    for layer in _walk_layers(model_or_layer):
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if isinstance(layer, RelaxedEquivariantLayer) and layer.relaxed and layer.has_relaxation_branch:
            layers.append(layer)
    return layers


def _walk_layers(root):
    if hasattr(root, "_flatten_layers"):
        return list(root._flatten_layers(include_self=True, recursive=True))
    return [root]


def _coordinate_index(source_rep, target_rep):
    """``idx`` with ``x_target = x_source[..., idx]``, or None when both use the same coordinates.

    Only steerable features have several coordinate systems (``IrrepsRep`` layouts ``mul_ir`` /
    ``ir_mul``); any other pair of representations must be equal.
    """
    import numpy as np

    from keras_relaxeq.groups.irreps_layouts import layout_permutation
    from keras_relaxeq.groups.irreps_rep import IrrepsRep

    if isinstance(source_rep, IrrepsRep) and isinstance(target_rep, IrrepsRep):
        if source_rep.irreps != target_rep.irreps:
            raise ValueError(f"transfer_weights: irreps {source_rep.irreps} and {target_rep.irreps} differ; "
                             "the two models must have the same architecture.")
        if source_rep.layout == target_rep.layout:
            return None
        return np.argsort(layout_permutation(source_rep.irreps, source_rep.layout))[
            layout_permutation(target_rep.irreps, target_rep.layout)]
    if source_rep != target_rep:
        raise ValueError(f"transfer_weights: representations {source_rep} and {target_rep} differ; the two "
                         "models must have the same architecture.")
    return None


def transfer_weights(source, target) -> int:
    """Copy every weight of ``source`` into ``target``, a model (or layer) of the same architecture
    whose steerable layers may use another feature layout (``layout="mul_ir"`` / ``"ir_mul"``).

    The equivariant weights do not depend on the layout, so ``set_weights`` carries them; a
    relaxation branch is a matrix in its layout's coordinates, so its kernel rows, kernel columns
    and bias are permuted into the target's (``set_weights`` alone would give the target a
    different, wrong, branch).  Theta is copied.  Returns the number of branches converted.

    >>> fast = kr.models.segnn(layout="ir_mul")           # doctest: +SKIP
    >>> kr.layers.transfer_weights(old_mul_ir_model, fast)  # doctest: +SKIP
    """
    source_layers, target_layers = relaxed_layers(source), relaxed_layers(target)
    if len(source_layers) != len(target_layers):
        raise ValueError(f"transfer_weights: {len(source_layers)} relaxed layers in the source, "
                         f"{len(target_layers)} in the target; build both models with the same architecture "
                         "(and both relaxed, or both not).")
    target.set_weights(source.get_weights())
    converted = 0
    for ls, lt in zip(source_layers, target_layers):
        idx_in = _coordinate_index(ls.input_rep, lt.input_rep)
        idx_out = _coordinate_index(ls.output_rep, lt.output_rep)
        if idx_in is None and idx_out is None:
            continue
        low_rank = lt.relaxation_low_rank
        first = lt.relaxation_hidden_kernel if lt.relaxation_branch == "mlp" else lt.relaxation_kernel
        if low_rank:
            first = lt.relaxation_kernel_u
        last = lt.relaxation_kernel_v if low_rank else lt.relaxation_kernel
        if idx_in is not None:  # rows: input coordinates
            first.assign(tf.gather(first, idx_in, axis=0))
        if idx_out is not None:  # columns and bias: output coordinates
            last.assign(tf.gather(last, idx_out, axis=1))
            if lt.relaxation_bias is not None:
                lt.relaxation_bias.assign(tf.gather(lt.relaxation_bias, idx_out))
        converted += 1
    return converted


def set_theta(model_or_layer, value) -> int:
    """Assign ``theta = value`` in every relaxed layer; returns how many were set."""
    layers = [l for l in relaxed_layers(model_or_layer) if l.theta is not None]
    for layer in layers:
        layer.theta.assign(value)
    return len(layers)


def get_theta(model_or_layer):
    """The current ``theta`` (of the first relaxed layer), or None when there is none."""
    for layer in relaxed_layers(model_or_layer):
        if layer.theta is not None:
            return float(keras.ops.convert_to_numpy(layer.theta))
    return None
