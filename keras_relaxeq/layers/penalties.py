"""The relaxation penalties of docs/method.md section 3 and the collector that gathers them in a forward pass.

Each relaxed branch ``R(x)`` reports two sums over the (stop-gradient) rows ``x_p`` of its input:

* Lie derivative  ``LD = sum_points sum_k || J_R(x) drho_in(A_k) x - drho_out(A_k) R(x) ||^2``
* projection error ``N = sum_points || R(x) ||^2``

The Lie derivative is computed either by autodiff for any branch
(forward-mode JVP with ``tf.autodiff.ForwardAccumulator``, or double-backward
with ``tf.GradientTape``: :func:`autodiff_branch_penalties`) or, for the linear branch, by the closed form

    sum_p || x_p M_k - c_k ||^2 = tr(M_k^T S M_k) - 2 s M_k c_k^T + P ||c_k||^2

with ``M_k = G_in,k^T W - W G_out,k^T`` (row-vector convention, ``y = x W + b``),
``c_k = b G_out,k^T``, the Gram matrix ``S = sum_p x_p^T x_p`` and ``s = sum_p x_p``
(:func:`linear_branch_penalties`), or by evaluating ``x M_k`` on the rows directly
(:func:`direct_linear_branch_penalties`).  A low-rank branch ``W = U V`` has the same two forms through its
factors (:func:`low_rank_branch_penalties`, :func:`direct_low_rank_branch_penalties`).

Penalties are only computed while a :class:`PenaltyCollector` is active (:func:`active_collector`): inside
``RelaxedModel``'s training forward pass or inside :func:`collect_relaxation_penalties`.
"""

from __future__ import annotations

import contextlib
import threading

import tensorflow as tf

from keras_relaxeq.groups.representations import Representation

# The collectors of the calls under way, innermost last, one stack per thread.  Layers find the active
# collector here rather than through an argument because Keras passes nothing but ``training`` (and masks)
# down through nested functional, sequential and user-container calls.  Per-thread state is required, not an
# accident: ``tf.distribute.MirroredStrategy`` traces each replica's step in its own thread into one graph,
# so a collector shared by the threads (e.g. held by the model object) would mix the replicas' penalties.
# Keras' own call context (which carries ``training``) is thread-local for the same reason.
_STATE = threading.local()


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

    def extend(self, other: PenaltyCollector):
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
    """The innermost collector active in this thread, or None (penalties are then not computed)."""
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
        proj = (
            proj
            + 2.0 * tf.reduce_sum(tf.linalg.matvec(w, s_vec, transpose_a=True) * bias)
            + count * tf.reduce_sum(bias * bias)
        )
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


def autodiff_branch_penalties(branch_fn, flat_x, in_rep: Representation, out_rep: Representation, method: str = "jvp"):
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
    """``x`` as rows ``[P, rep.dim]`` of flattened features."""
    return tf.reshape(x, [-1, rep.dim])


def _tensor_ref(x):
    """A hashable reference to the tensor ``x`` (the key of the shared Gram statistics), or None."""
    try:
        return x.ref()
    except (AttributeError, TypeError):
        return None
