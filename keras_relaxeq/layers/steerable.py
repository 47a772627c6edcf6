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

Relaxation (method.md section 2): every layer with a linear map or tensor product is a
:class:`~keras_relaxeq.layers.base.RelaxedEquivariantLayer`; its branch is
``theta * (W flat(x) + b)`` from ``irreps_in1`` to the layer's output irreps and acts on the
first input ``x`` only (not on the attributes).  ``input_rep`` is the representation of
``x``; ``attr_rep`` that of the attributes; ``equivariance_input_reps`` is the nest of
input representations to pass to :func:`keras_relaxeq.testing.assert_equivariant`.

Implementation: :class:`O3Linear` assembles its dense ``[D_in, D_out]`` matrix per call by a
single gather + scatter from the flat weight vector and applies it with one matmul.
:class:`O3TensorProduct` works by irrep type (:class:`_TypePlan`): blocks of equal irreps are
merged, the attributes are contracted with the Clebsch-Gordan tensors, and all path weights
into (or out of) a type are applied with one matmul, skipping the zeros of the dense
``[D1 D2, D_out]`` map (``dense_tensor()`` / ``tensor_product_dense`` keep the dense form as
a reference).  Index maps, CG coefficients and path normalisations are precomputed in NumPy;
no Python loop runs over samples or paths at call time.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from keras_relaxeq.groups.clebsch_gordan import clebsch_gordan_for_irreps
from keras_relaxeq.groups.irreps import Irreps, IrrepsRep, check_layout
from keras_relaxeq.layers.base import RelaxedEquivariantLayer

register = keras.saving.register_keras_serializable(package="keras_relaxeq")

NORM_MODES = ("instance", "batch")
NORM_REDUCE = ("mean", "max")
NORM_NORMALIZATION = ("component", "norm")


# --------------------------------------------------------------------------- helpers
def _irreps_arg(value, arg, owner, allow_empty=False) -> Irreps:
    """Parse an irreps argument with an error naming the layer and the argument."""
    try:
        irreps = Irreps(value)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{owner}: cannot parse {arg}={value!r} as Irreps ({err}). "
                         "Use e3nn syntax such as '16x0e+8x1o'.") from None
    if not allow_empty and irreps.dim == 0:
        raise ValueError(f"{owner}: {arg}={value!r} has dimension 0; it needs at least one irrep.")
    return irreps


def _untracked(layer, name, value):
    """Set an attribute without Keras' container tracking (which would rebuild ``Irreps`` tuples)."""
    object.__setattr__(layer, name, value)


def _tensor_product_irreps(layer, irreps_in1, irreps_in2, irreps_out, owner):
    """Parse and set ``irreps_in1`` / ``irreps_in2`` (None: no second input) / ``irreps_out`` of a
    tensor-product layer (``irreps_out`` is required)."""
    if irreps_out is None:
        raise ValueError(f"{owner}: irreps_out is required.")
    _untracked(layer, "irreps_in1", _irreps_arg(irreps_in1, "irreps_in1", owner))
    _untracked(layer, "irreps_in2", None if irreps_in2 is None else _irreps_arg(irreps_in2, "irreps_in2", owner))
    _untracked(layer, "irreps_out", _irreps_arg(irreps_out, "irreps_out", owner))


def _is_single_shape(shape) -> bool:
    if isinstance(shape, tf.TensorShape):
        return True
    if not isinstance(shape, (tuple, list)):
        return False
    return all(s is None or isinstance(s, (int, np.integer)) for s in shape)


def _check_dim(layer, shape, irreps: Irreps, what: str):
    shape = tuple(shape)
    if len(shape) < 2:
        raise ValueError(f"{type(layer).__name__} '{layer.name}': {what} must have shape [batch, ..., "
                         f"{irreps.dim}] for irreps '{irreps}', got shape {list(shape)}.")
    if shape[-1] is not None and int(shape[-1]) != irreps.dim:
        raise ValueError(f"{type(layer).__name__} '{layer.name}': {what} has feature dimension {shape[-1]} "
                         f"(shape {list(shape)}) but its irreps '{irreps}' have dimension {irreps.dim}.")


def _offsets(irreps: Irreps):
    out, start = [], 0
    for mul_ir in irreps:
        out.append(start)
        start += mul_ir.dim
    return out


def _in_block(u, i, mul, d, layout):
    """Position of copy ``u``, component ``i`` inside a ``(mul, ir)`` block of the given layout."""
    return i * mul + u if layout == "ir_mul" else u * d + i


def _scalar_positions(irreps: Irreps):
    """Feature indices of the ``0e`` components and the index of their ``(mul, ir)`` term."""
    pos, term = [], []
    for t, (off, (mul, ir)) in enumerate(zip(_offsets(irreps), irreps)):
        if ir.is_scalar():
            pos.extend(range(off, off + mul))
            term.extend([t] * mul)
    return np.asarray(pos, np.int64), np.asarray(term, np.int64)


class _PathPlan:
    """Precomputed index maps of a weighted bilinear map ``in1 (x) in2 -> out``.

    The dense map is ``T[a, b, c] = sum_paths coef * w[path, u, v, w] * C[i, j, k]`` with
    ``a = off1 + u d1 + i`` etc.; each entry of ``T`` belongs to at most one path, so
    ``T = scatter(positions, gather(kernel, weight_index) * values)``.

    ``kind="tp"``: all paths with ``ir_out`` in ``ir1 * ir2`` (Clebsch-Gordan, ``"uvw"``
    weights, e3nn ``FullyConnectedTensorProduct`` order).  ``kind="linear"``: ``in2`` is
    ``1x0e`` and only ``ir1 == ir_out`` paths with the identity (e3nn ``Linear``).

    ``normalization``: ``"segnn"`` (``coef = sqrt(2 l3 + 1)``, init bound
    ``1/sqrt(fan_in)``: SEGNN's ``tp_rescale=True``), ``"e3nn"`` (``coef = sqrt((2 l3 + 1) /
    fan_in)``: e3nn ``"component"``/``"element"``, used by ``tp_rescale=False``) or
    ``"linear"`` (``coef = 1/sqrt(fan_in)``, e3nn ``Linear``).

    ``layout``: the feature layout of ``in1``, ``in2`` and ``out`` (``"mul_ir"`` or ``"ir_mul"``,
    see :func:`~keras_relaxeq.groups.layout_permutation`); the weights do not depend on it.
    """

    def __init__(self, in1: Irreps, in2: Irreps, out: Irreps, kind: str, normalization: str,
                 layout: str = "mul_ir"):
        self.in1, self.in2, self.out = in1, in2, out
        self.layout = layout
        self.dims = (in1.dim, in2.dim, out.dim)
        instructions = []
        for i1, (mul1, ir1) in enumerate(in1):
            for i2, (mul2, ir2) in enumerate(in2):
                for io, (mulo, iro) in enumerate(out):
                    if mul1 * mul2 * mulo == 0:
                        continue
                    allowed = (ir1 == iro and ir2.is_scalar()) if kind == "linear" else iro in list(ir1 * ir2)
                    if allowed:
                        instructions.append((i1, i2, io))
        self.instructions = instructions
        fan_in = np.zeros(len(out), np.int64)
        for i1, i2, io in instructions:
            fan_in[io] += in1[i1].mul * in2[i2].mul
        self.fan_in = fan_in

        off1, off2, offo = _offsets(in1), _offsets(in2), _offsets(out)
        d1_all, d2_all, do_all = self.dims
        positions, windex, values, scales = [], [], [], []
        woff = 0
        self.path_slices = []
        self.path_coefs = []
        for i1, i2, io in instructions:
            (mul1, ir1), (mul2, ir2), (mulo, iro) = in1[i1], in2[i2], out[io]
            if kind == "linear":
                cg = np.eye(iro.dim)[:, None, :]
            else:
                cg = np.asarray(clebsch_gordan_for_irreps(ir1, ir2, iro))
            f = float(fan_in[io])
            if normalization == "segnn":
                coef, bound = math.sqrt(iro.dim), 1.0 / math.sqrt(f)
            elif normalization == "e3nn":
                coef, bound = math.sqrt(iro.dim / f), 1.0
            elif normalization == "linear":
                coef, bound = 1.0 / math.sqrt(f), 1.0
            else:  # pragma: no cover
                raise ValueError(normalization)
            self.path_coefs.append(coef)
            ii, jj, kk = np.nonzero(np.abs(cg) > 0)
            vals = cg[ii, jj, kk] * coef
            u, v, w = (g.reshape(-1, 1) for g in np.meshgrid(np.arange(mul1), np.arange(mul2), np.arange(mulo),
                                                                indexing="ij"))
            a = off1[i1] + _in_block(u, ii[None], mul1, ir1.dim, layout)
            b = off2[i2] + _in_block(v, jj[None], mul2, ir2.dim, layout)
            c = offo[io] + _in_block(w, kk[None], mulo, iro.dim, layout)
            positions.append(((a * d2_all + b) * do_all + c).reshape(-1))
            windex.append(np.broadcast_to(woff + (u * mul2 + v) * mulo + w, a.shape).reshape(-1))
            values.append(np.broadcast_to(vals[None], a.shape).reshape(-1))
            n = mul1 * mul2 * mulo
            scales.append(np.full(n, bound))
            self.path_slices.append(slice(woff, woff + n))
            woff += n
        self.weight_numel = woff
        cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)  # noqa: E731
        self.positions = cat(positions, np.int64)[:, None]
        self.windex = cat(windex, np.int64)
        self.values = cat(values, np.float64)
        self.init_scales = cat(scales, np.float64)
        self.bias_positions, bias_terms = _scalar_positions(out)
        self.bias_scales = np.array([1.0 / math.sqrt(max(fan_in[t], 1)) for t in bias_terms], np.float64)

    def dense(self, kernel, dtype):
        """The dense map ``[D1 * D2, D_out]`` (zeros when there is no path)."""
        d1, d2, do = self.dims
        if self.weight_numel == 0:
            return tf.zeros([d1 * d2, do], dtype)
        kernel = tf.cast(kernel, dtype)
        updates = tf.gather(kernel, self.windex) * tf.constant(self.values, dtype)
        flat = tf.scatter_nd(tf.constant(self.positions), updates, [d1 * d2 * do])
        return tf.reshape(flat, [d1 * d2, do])

    def dense_bias(self, bias, dtype):
        return tf.scatter_nd(tf.constant(self.bias_positions[:, None]), tf.cast(bias, dtype), [self.dims[2]])


def _type_blocks(irreps: Irreps):
    """Group the ``(mul, ir)`` blocks of ``irreps`` by irrep type (order of first appearance).

    Returns ``[(ir, [(block, mul, offset_within_type), ...], total_mul), ...]``.
    """
    groups = {}
    for b, (mul, ir) in enumerate(irreps):
        if mul == 0:
            continue
        entry = groups.setdefault(ir, [])
        entry.append((b, mul, sum(m for _, m, _ in entry)))
    return [(ir, blocks, sum(m for _, m, _ in blocks)) for ir, blocks in groups.items()]


class _TypePlan:
    """Fast evaluation of a ``kind="tp"`` :class:`_PathPlan` by irrep type (same map, far fewer FLOPs).

    The dense ``[D1 D2, D_out]`` map is mostly zeros (block structure, CG sparsity); this plan
    skips them.  Blocks of equal irreps are merged: ``X_t [N, d1, U]`` (copy index last) for
    ``x`` and ``A_t [N, V, d2]`` for the attributes.  Every type triple ``(t1, t2, t3)``
    carrying paths is evaluated in one of two orders, whichever costs less:

    * ``"Y"`` (weights first): ``Y = X_t1 @ W`` (one matmul per input type for all its "Y"
      triples), then mixed with ``M[n, v, i, k] = sum_j C_ijk A[n, v, j]``:
      ``out[n, k, w] += sum_{v,i} M[n, v, i, k] Y[n, i, (v, w)]``;
    * ``"Z"`` (attributes first): ``Z[n, k, (u, v)] = sum_i M[n, v, i, k] X[n, i, u]``, the Z of
      all such triples into an output type concatenated, then one matmul with ``W``.

    For ``l2 = 0`` attributes with ``l1 = l3`` (``C_i0k = c delta_ik``) the mixing is a
    multiplication by the attribute (``c`` is folded into ``W``).  The weight matrices are a
    permutation (one gather) of the flat kernel times the path normalisations.

    Layouts: with ``"ir_mul"`` features a block already is ``[N, d, mul]``, so ``X_t`` and the
    output need reshapes and concatenations only; ``"mul_ir"`` (e3nn) blocks are transposed on
    the way in and out.
    """

    def __init__(self, plan: "_PathPlan"):
        in1, in2, out = plan.in1, plan.in2, plan.out
        self.dims = plan.dims
        self.layout = plan.layout
        self.types1, self.types2, self.types_out = _type_blocks(in1), _type_blocks(in2), _type_blocks(out)
        self.block_dims1 = [mul * ir.dim for mul, ir in in1]
        self.block_dims2 = [mul * ir.dim for mul, ir in in2]
        pos1 = {b: (t, off) for t, (_, blocks, _) in enumerate(self.types1) for b, _, off in blocks}
        pos2 = {b: (t, off) for t, (_, blocks, _) in enumerate(self.types2) for b, _, off in blocks}
        poso = {b: (t, off) for t, (_, blocks, _) in enumerate(self.types_out) for b, _, off in blocks}
        # ---- type triples carrying paths (instruction order) and their evaluation order
        keys = []
        for i1, i2, io in plan.instructions:
            key = (pos1[i1][0], pos2[i2][0], poso[io][0])
            if key not in keys:
                keys.append(key)
        triples = []
        for t1, t2, to in keys:
            (ir1, _, u), (ir2, _, v), (iro, _, w) = self.types1[t1], self.types2[t2], self.types_out[to]
            cg = np.asarray(clebsch_gordan_for_irreps(ir1, ir2, iro), np.float64)  # [d1, d2, d3]
            d1, d3 = ir1.dim, iro.dim
            diag_c = cg[0, 0, 0] if (ir2.dim == 1 and v == 1 and ir1 == iro) else 0.0
            diag = diag_c != 0.0 and np.allclose(cg[:, 0, :], diag_c * np.eye(d1), atol=1e-13)
            mix_y = d3 * w if diag else d1 * d3 * v * w
            mix_z = d1 * u if diag else d1 * d3 * u * v
            cost_y, cost_z = u * v * w * d1 + mix_y, u * v * w * d3 + mix_z + d3 * u * v
            triples.append(dict(t1=t1, t2=t2, to=to, d1=d1, d2=ir2.dim, d3=d3, U=u, V=v, W=w, cg=cg,
                                diag=bool(diag), c=float(diag_c) if diag else 1.0,
                                mode="Y" if cost_y <= cost_z else "Z"))
        self.triples = triples
        # ---- attribute-side CG matrices (non-diagonal triples): M[n, v, (i, k)] = A[n, v, :] @ cg_mat
        self.m_cols = {}  # t2 -> [(triple index, width)]
        cg_mats = {}
        for n, t in enumerate(triples):
            if t["diag"]:
                continue
            self.m_cols.setdefault(t["t2"], []).append((n, t["d1"] * t["d3"]))
            cg_mats.setdefault(t["t2"], []).append(
                np.transpose(t["cg"], (1, 0, 2)).reshape(t["d2"], t["d1"] * t["d3"]))
        self.cg_mats = {t2: np.concatenate(m, axis=1) for t2, m in cg_mats.items()}
        # ---- weight matrices: "Y" per input type [U, sum V W], "Z" per output type [sum U V, W]
        mats = []  # (kind, type, rows, cols)
        self.y_cols, self.z_rows = {}, {}  # type -> [(triple index, start)]
        for n, t in enumerate(triples):
            if t["mode"] == "Y":
                entry = self.y_cols.setdefault(t["t1"], [])
                entry.append((n, sum(triples[m]["V"] * triples[m]["W"] for m, _ in entry)))
            else:
                entry = self.z_rows.setdefault(t["to"], [])
                entry.append((n, sum(triples[m]["U"] * triples[m]["V"] for m, _ in entry)))
        for t1, entry in self.y_cols.items():
            mats.append(("Y", t1, self.types1[t1][2], sum(triples[m]["V"] * triples[m]["W"] for m, _ in entry)))
        for to, entry in self.z_rows.items():
            mats.append(("Z", to, sum(triples[m]["U"] * triples[m]["V"] for m, _ in entry), self.types_out[to][2]))
        self.mats = mats
        index = {(k, t): np.full((r, c), -1, np.int64) for k, t, r, c in mats}
        scale = {(k, t): np.zeros((r, c), np.float64) for k, t, r, c in mats}
        start_of = {n: s for entry in list(self.y_cols.values()) + list(self.z_rows.values()) for n, s in entry}
        for (i1, i2, io), sl, coef in zip(plan.instructions, plan.path_slices, plan.path_coefs):
            (t1, off1), (t2, off2), (to, offo) = pos1[i1], pos2[i2], poso[io]
            n = keys.index((t1, t2, to))
            t = triples[n]
            mul1, mul2, mulo = in1[i1].mul, in2[i2].mul, out[io].mul
            u, v, w = np.meshgrid(np.arange(mul1), np.arange(mul2), np.arange(mulo), indexing="ij")
            if t["mode"] == "Y":
                key, rows, cols = ("Y", t1), off1 + u, start_of[n] + (off2 + v) * t["W"] + offo + w
            else:
                key, rows, cols = ("Z", to), start_of[n] + (off1 + u) * t["V"] + off2 + v, offo + w
            index[key][rows, cols] = sl.start + (u * mul2 + v) * mulo + w
            scale[key][rows, cols] = coef * t["c"]
        flat_index = np.concatenate([index[(k, t)].reshape(-1) for k, t, _, _ in mats]) if mats else \
            np.zeros(0, np.int64)
        self.w_sizes = [r * c for _, _, r, c in mats]
        self.w_pad = bool(np.any(flat_index < 0))  # entries no path reaches read a padded zero
        self.w_index = np.where(flat_index < 0, plan.weight_numel, flat_index)
        self.w_scale = np.concatenate([scale[(k, t)].reshape(-1) for k, t, _, _ in mats]) if mats else \
            np.zeros(0, np.float64)
        # ---- bias (the 0e output type receives the whole bias vector, in order) and output layout
        self.bias_type = next((to for to, (ir, _, _) in enumerate(self.types_out) if ir.is_scalar()), None)
        self.out_blocks = [(b, poso[b]) for b, (mul, _) in enumerate(out) if mul]
        self.out_identity = all(len(blocks) == 1 for _, blocks, _ in self.types_out) and \
            [poso[b][0] for b, _ in self.out_blocks] == list(range(len(self.types_out)))

    # -- call-time pieces -------------------------------------------------------------------
    @staticmethod
    def _by_type(x2, types, block_dims, copy_last, layout="mul_ir"):
        """``{t: [N, d, U]}`` (``copy_last``) or ``{t: [N, U, d]}`` from flat features ``[N, D]``."""
        nonzero = [d for d in block_dims if d]
        parts = tf.split(x2, nonzero, axis=-1) if len(nonzero) > 1 else [x2]
        part_of = dict(zip([b for b, d in enumerate(block_dims) if d], parts))
        result = {}
        for t, (ir, blocks, total) in enumerate(types):
            if ir.dim == 1:
                cat = [part_of[b] for b, _, _ in blocks]
                xt = cat[0] if len(cat) == 1 else tf.concat(cat, axis=-1)
                result[t] = tf.reshape(xt, [-1, 1, total] if copy_last else [-1, total, 1])
            elif layout == "ir_mul":
                cat = [tf.reshape(part_of[b], [-1, ir.dim, mul]) for b, mul, _ in blocks]
                xt = cat[0] if len(cat) == 1 else tf.concat(cat, axis=2)
                result[t] = xt if copy_last else tf.transpose(xt, [0, 2, 1])
            else:
                cat = [tf.reshape(part_of[b], [-1, mul, ir.dim]) for b, mul, _ in blocks]
                xt = cat[0] if len(cat) == 1 else tf.concat(cat, axis=1)
                result[t] = tf.transpose(xt, [0, 2, 1]) if copy_last else xt
        return result

    def weights(self, kernel, dtype):
        """``{(kind, type): matrix}`` of the "Y" and "Z" weight matrices."""
        if not self.mats:
            return {}
        kernel = tf.cast(kernel, dtype)
        if self.w_pad:
            kernel = tf.concat([kernel, tf.zeros([1], dtype)], 0)
        flat = tf.gather(kernel, self.w_index) * tf.constant(self.w_scale, dtype)
        pieces = tf.split(flat, self.w_sizes) if len(self.w_sizes) > 1 else [flat]
        return {(k, t): tf.reshape(p, [r, c]) for (k, t, r, c), p in zip(self.mats, pieces)}

    @staticmethod
    def _mix(m, t, tri, mode):
        """Contract ``t [N, d1, C]`` with the attribute-side ``m`` -> ``[N, d3, C']`` (see the class doc)."""
        d1, d3, v = tri["d1"], tri["d3"], tri["V"]
        if tri["diag"]:
            return t if m is None else tf.reshape(m, [-1, 1, 1]) * t
        if v == 1:
            if d1 == 1:
                return tf.reshape(m, [-1, d3, 1]) * t
            if d3 == 1:
                return tf.reduce_sum(tf.reshape(m, [-1, d1, 1]) * t, axis=1, keepdims=True)
            c = t.shape[-1]
            return tf.reduce_sum(tf.reshape(m, [-1, d1, d3, 1]) * tf.reshape(t, [-1, d1, 1, c]), axis=1)
        mt = tf.transpose(tf.reshape(m, [-1, v, d1, d3]), [0, 2, 3, 1])  # [N, d1, d3, V]
        if mode == "Y":  # t = Y [N, d1, V W] -> sum over i and v
            w = tri["W"]
            return tf.reduce_sum(tf.reshape(mt, [-1, d1, d3, v, 1]) * tf.reshape(t, [-1, d1, 1, v, w]), axis=[1, 3])
        u = tri["U"]  # t = X [N, d1, U] -> Z [N, d3, U V]
        z = tf.reduce_sum(tf.reshape(mt, [-1, d1, d3, 1, v]) * tf.reshape(t, [-1, d1, 1, u, 1]), axis=1)
        return tf.reshape(z, [-1, d3, u * v])

    def __call__(self, x2, a2, kernel, bias, dtype):
        """Tensor product of ``x2 [N, D1]`` and ``a2 [N, D2]`` (None: ``1x0e`` = 1), + bias, as ``[N, D_out]``."""
        n = tf.shape(x2)[0]
        xt = self._by_type(x2, self.types1, self.block_dims1, True, self.layout)  # {t1: [N, d1, U]}
        at = {} if a2 is None else self._by_type(a2, self.types2, self.block_dims2, False, self.layout)
        # attribute side: diagonal triples use A itself, the others M = A @ CG
        m_of = {}
        for k, tri in enumerate(self.triples):
            if tri["diag"]:
                m_of[k] = None if a2 is None else at[tri["t2"]]
        for t2, cols in self.m_cols.items():
            ir2, _, v = self.types2[t2]
            a = tf.reshape(at[t2], [-1, ir2.dim])
            cg = tf.constant(self.cg_mats[t2], dtype)
            m = tf.matmul(a, cg) if ir2.dim > 1 else a * cg
            m = tf.reshape(m, [-1, v * cg.shape[1]]) if v > 1 else m
            widths = [v * wd for _, wd in cols]
            if v > 1:  # [N, V, sum] -> per triple [N, V * width]
                m = tf.reshape(m, [-1, v, cg.shape[1]])
                pieces = tf.split(m, [wd for _, wd in cols], axis=-1) if len(cols) > 1 else [m]
                pieces = [tf.reshape(p, [-1, w]) for p, w in zip(pieces, widths)]
            else:
                pieces = tf.split(m, widths, axis=-1) if len(cols) > 1 else [m]
            for (k, _), p in zip(cols, pieces):
                m_of[k] = p
        ws = self.weights(kernel, dtype)
        contrib = {to: [] for to in range(len(self.types_out))}
        for t1, entry in self.y_cols.items():  # weights first
            d1, u = self.types1[t1][0].dim, self.types1[t1][2]
            wy = ws[("Y", t1)]
            y = tf.reshape(tf.matmul(tf.reshape(xt[t1], [-1, u]), wy), [-1, d1, wy.shape[1]])
            sizes = [self.triples[k]["V"] * self.triples[k]["W"] for k, _ in entry]
            pieces = tf.split(y, sizes, axis=-1) if len(sizes) > 1 else [y]
            for (k, _), p in zip(entry, pieces):
                tri = self.triples[k]
                contrib[tri["to"]].append(self._mix(m_of[k], p, tri, "Y"))
        for to, entry in self.z_rows.items():  # attributes first
            d3 = self.types_out[to][0].dim
            zs = [self._mix(m_of[k], xt[self.triples[k]["t1"]], self.triples[k], "Z") for k, _ in entry]
            z = zs[0] if len(zs) == 1 else tf.concat(zs, axis=-1)
            wz = ws[("Z", to)]
            contrib[to].append(tf.reshape(tf.matmul(tf.reshape(z, [-1, wz.shape[0]]), wz), [-1, d3, wz.shape[1]]))
        outs = []
        for to, (iro, _, mulo) in enumerate(self.types_out):
            parts = contrib[to]
            if parts:
                o = parts[0] if len(parts) == 1 else tf.add_n(parts)  # [N, d3, W]
            else:
                o = tf.zeros(tf.stack([n, iro.dim, mulo]), dtype)
            if bias is not None and to == self.bias_type:
                o = o + tf.cast(bias, dtype)
            if iro.dim == 1:
                outs.append(tf.reshape(o, [-1, mulo]))
            else:  # [N, W, d3] (mul_ir) or [N, d3, W] (ir_mul)
                outs.append(o if self.layout == "ir_mul" else tf.transpose(o, [0, 2, 1]))
        if self.out_identity:
            flat = [tf.reshape(o, [-1, ir.dim * mul]) for o, (ir, _, mul) in zip(outs, self.types_out)]
            return flat[0] if len(flat) == 1 else tf.concat(flat, axis=-1)
        split = {}
        for to, (iro, blocks, _) in enumerate(self.types_out):
            muls = [mul for _, mul, _ in blocks]
            axis = 2 if (self.layout == "ir_mul" and iro.dim > 1) else 1
            pieces = tf.split(outs[to], muls, axis=axis) if len(muls) > 1 else [outs[to]]
            for (b, mul, _), piece in zip(blocks, pieces):
                split[b] = tf.reshape(piece, [-1, mul * iro.dim])
        flat = [split[b] for b, _ in self.out_blocks]
        return flat[0] if len(flat) == 1 else tf.concat(flat, axis=-1)


def _scaled_uniform(scales):
    """Initializer ``U(-1, 1) * scales`` (per-element bounds, SEGNN's per-path init)."""
    scales = np.asarray(scales, np.float64)

    def init(shape, dtype=None):
        base = keras.initializers.RandomUniform(-1.0, 1.0)(shape, dtype=dtype)
        return base * tf.constant(scales, dtype=base.dtype)

    return init


def _serialize_initializer(init):
    return None if init is None else keras.initializers.serialize(init)


def _normalize2mom_constant(activation) -> float:
    """``1 / sqrt(E[f(z)^2])`` for ``z ~ N(0, 1)`` (e3nn ``normalize2mom``), by Gauss-Hermite quadrature."""
    z, w = np.polynomial.hermite_e.hermegauss(128)
    with tf.init_scope():
        fz = np.asarray(keras.ops.convert_to_numpy(activation(tf.constant(z, tf.float64))), np.float64)
    second = float(np.sum(w * fz ** 2) / math.sqrt(2.0 * math.pi))
    cst = 1.0 / math.sqrt(second)
    return 1.0 if abs(cst - 1.0) < 1e-4 else cst


def _is_odd(activation) -> bool:
    z = np.linspace(0.1, 3.0, 7)
    with tf.init_scope():
        fp = keras.ops.convert_to_numpy(activation(tf.constant(z, tf.float64)))
        fm = keras.ops.convert_to_numpy(activation(tf.constant(-z, tf.float64)))
    return bool(np.allclose(fm, -fp, atol=1e-9))


def _activation_id(act):
    return act if isinstance(act, str) else keras.activations.serialize(act)


class _IrrepsLayer(RelaxedEquivariantLayer):
    """Shared plumbing: one input ``x`` with ``irreps_in1`` and, optionally, attributes with ``irreps_in2``.

    With attributes the layer is called on ``(x, attr)``; the relaxation branch and
    ``input_rep`` concern ``x`` only.
    """

    _in1_attr = "irreps_in1"
    _in2_attr = None  # name of the attribute irreps, None for one-input layers
    _out_attr = "irreps_out"

    def __init__(self, layout="mul_ir", **kwargs):
        super().__init__(**kwargs)
        self.layout = check_layout(layout, f"{type(self).__name__} '{self.name}'")

    # -- irreps accessors --------------------------------------------------------------------
    def _irreps_x(self) -> Irreps:
        return getattr(self, self._in1_attr)

    def _irreps_attr(self):
        return getattr(self, self._in2_attr) if self._in2_attr else None

    def _has_attr_input(self) -> bool:
        return self._irreps_attr() is not None

    @property
    def attr_rep(self):
        """Representation of the attributes (second input), or None."""
        attr = self._irreps_attr()
        return None if attr is None else IrrepsRep(attr, self.layout)

    @property
    def equivariance_input_reps(self):
        """Input representations for ``assert_equivariant``: ``(rep_x, rep_attr)`` or ``rep_x``."""
        rep_x = IrrepsRep(self._irreps_x(), self.layout)
        return (rep_x, self.attr_rep) if self._has_attr_input() else rep_x

    def input_representation(self, input_shape):
        return IrrepsRep(self._irreps_x(), self.layout)

    def output_representation(self, input_shape):
        return IrrepsRep(getattr(self, self._out_attr), self.layout)

    # -- input handling ---------------------------------------------------------------------
    def _split_shapes(self, input_shape):
        if self._has_attr_input():
            if _is_single_shape(input_shape) or len(input_shape) != 2:
                raise ValueError(f"{type(self).__name__} '{self.name}' takes two inputs (x, attr) with irreps "
                                 f"'{self._irreps_x()}' and '{self._irreps_attr()}'; got input shape "
                                 f"{input_shape}.")
            x_shape, a_shape = (tuple(s) for s in input_shape)
            _check_dim(self, x_shape, self._irreps_x(), "input x")
            _check_dim(self, a_shape, self._irreps_attr(), "input attr")
            return x_shape, a_shape
        if not _is_single_shape(input_shape):
            raise ValueError(f"{type(self).__name__} '{self.name}' takes one input with irreps "
                             f"'{self._irreps_x()}' (it was built without irreps_in2); got input shapes "
                             f"{input_shape}.")
        x_shape = tuple(input_shape)
        _check_dim(self, x_shape, self._irreps_x(), "input")
        return x_shape, None

    def _split_inputs(self, inputs):
        """``(x, attr)`` cast to the compute dtype and broadcast to common leading axes."""
        if self._has_attr_input():
            if not isinstance(inputs, (tuple, list)) or len(inputs) != 2:
                raise ValueError(f"{type(self).__name__} '{self.name}' must be called on (x, attr).")
            x, attr = (tf.cast(t, self.compute_dtype) for t in inputs)
            if x.shape.rank != attr.shape.rank or x.shape[:-1] != attr.shape[:-1] \
                    or not x.shape[:-1].is_fully_defined():
                lead = tf.broadcast_dynamic_shape(tf.shape(x)[:-1], tf.shape(attr)[:-1])
                x = tf.broadcast_to(x, tf.concat([lead, tf.shape(x)[-1:]], 0))
                attr = tf.broadcast_to(attr, tf.concat([lead, tf.shape(attr)[-1:]], 0))
            return x, attr
        if isinstance(inputs, (tuple, list)):
            raise ValueError(f"{type(self).__name__} '{self.name}' takes one input tensor (it was built "
                             "without irreps_in2), got a sequence.")
        return tf.cast(inputs, self.compute_dtype), None

    def _x_of(self, inputs):
        return inputs[0] if isinstance(inputs, (tuple, list)) else inputs

    def build(self, input_shape):
        x_shape, attr_shape = self._split_shapes(input_shape)
        _untracked(self, "_full_input_shape", input_shape)
        _untracked(self, "_attr_shape", attr_shape)
        super().build(x_shape)

    def branch_penalties(self, inputs, collector=None, method=None):
        """``(LD, N)`` of the branch; ``inputs`` may be ``x`` or ``(x, attr)`` (only ``x`` is used)."""
        x = tf.cast(self._x_of(inputs), self.compute_dtype)
        return super().branch_penalties(x, collector=collector, method=method)

    def compute_output_shape(self, input_shape):
        x_shape, _ = self._split_shapes(input_shape)
        return tuple(x_shape[:-1]) + (getattr(self, self._out_attr).dim,)

    def get_config(self):
        config = super().get_config()
        config.update(layout=self.layout)
        return config


# --------------------------------------------------------------------------- O3Linear
@register
class O3Linear(_IrrepsLayer):
    """Equivariant linear map ``[..., irreps_in.dim] -> [..., irreps_out.dim]`` (``e3nn.o3.Linear``).

    One ``mul_in x mul_out`` weight block per pair of equal irreps (parity included),
    ``N(0, 1)`` weights scaled by ``1/sqrt(fan_in)`` (fan-in: total input multiplicity
    feeding that output block; e3nn ``path_normalization="element"``), and a bias on the
    ``0e`` outputs (zeros).  Output blocks without a matching input irrep are 0 (+ bias).

    Args:
        irreps_in, irreps_out: irreps (strings or ``Irreps``).
        use_bias: add a bias to the ``0e`` outputs.
        kernel_initializer: initializer of the flat kernel ``[weight_numel]``
            (default ``RandomNormal(stddev=1)``; the path normalisation is applied in the forward).
        bias_initializer: initializer of the ``0e`` bias (default zeros).
        **kwargs: relaxation arguments of :class:`RelaxedEquivariantLayer` (the branch maps
            ``irreps_in -> irreps_out``).
    """

    _in1_attr = "irreps_in"

    def __init__(self, irreps_in, irreps_out, use_bias=True, kernel_initializer=None, bias_initializer="zeros",
                 **kwargs):
        super().__init__(**kwargs)
        owner = f"O3Linear '{self.name}'"
        _untracked(self, "irreps_in", _irreps_arg(irreps_in, "irreps_in", owner))
        _untracked(self, "irreps_out", _irreps_arg(irreps_out, "irreps_out", owner))
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer if kernel_initializer is not None else keras.initializers.RandomNormal(stddev=1.0))
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.plan = _PathPlan(self.irreps_in, Irreps("1x0e"), self.irreps_out, "linear", "linear", self.layout)
        self.kernel = None
        self.bias = None

    @property
    def weight_numel(self) -> int:
        return self.plan.weight_numel

    def build_equivariant(self, input_shape):
        if self.plan.weight_numel:
            self.kernel = self.add_weight(name="kernel", shape=(self.plan.weight_numel,),
                                          initializer=self.kernel_initializer)
        if self.use_bias and len(self.plan.bias_positions):
            self.bias = self.add_weight(name="bias", shape=(len(self.plan.bias_positions),),
                                        initializer=self.bias_initializer)

    def dense_matrix(self):
        """The equivariant map as a dense ``[irreps_in.dim, irreps_out.dim]`` matrix (``y = x M + b``)."""
        return self.plan.dense(self.kernel, self.compute_dtype)

    def dense_bias(self):
        """The bias as a dense ``[irreps_out.dim]`` vector (zeros off the ``0e`` outputs)."""
        if self.bias is None:
            return tf.zeros([self.irreps_out.dim], self.compute_dtype)
        return self.plan.dense_bias(self.bias, self.compute_dtype)

    def equivariant_call(self, inputs, training=None):
        x, _ = self._split_inputs(inputs)
        out = tf.einsum("...a,ab->...b", x, self.dense_matrix())
        if self.bias is not None:
            out = out + self.dense_bias()
        return out

    def get_config(self):
        config = super().get_config()
        config.update(irreps_in=str(self.irreps_in), irreps_out=str(self.irreps_out), use_bias=self.use_bias,
                      kernel_initializer=_serialize_initializer(self.kernel_initializer),
                      bias_initializer=_serialize_initializer(self.bias_initializer))
        return config


# --------------------------------------------------------------------------- O3TensorProduct
@register
class O3TensorProduct(_IrrepsLayer):
    """Weighted fully connected tensor product ``x (x) attr -> out`` (SEGNN's ``O3TensorProduct``).

    ``out_c = sum_paths coef * sum_{u,v,w} W^path_{uvw} sum_{ij} C_ijk x_{u,i} attr_{v,j}`` over
    every path ``(l1, p1) (x) (l2, p2) -> (l3, p1 p2)`` with ``|l1 - l2| <= l3 <= l1 + l2``
    (``C = clebsch_gordan_for_irreps``; e3nn ``FullyConnectedTensorProduct`` with
    ``normalization="component"``), plus a bias on the ``0e`` outputs.

    Normalisation and initialisation follow SEGNN:

    * ``tp_rescale=True`` (default): weights ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` per output
      block (fan-in: ``sum mul1 * mul2`` over the paths into it) and ``coef = sqrt(2 l3 + 1)``,
      i.e. e3nn's normalised product divided by SEGNN's ``sqrt_k`` (torch ``nn.Linear``-like).
    * ``tp_rescale=False``: weights ``U(-1, 1)``, ``coef = sqrt((2 l3 + 1) / fan_in)`` (e3nn).
    * bias on ``0e`` outputs ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``.

    ``irreps_in2=None`` means SEGNN's "no attributes": ``attr = 1`` (``1x0e``) and the layer
    takes ``x`` alone.  Otherwise it is called on ``(x, attr)`` (leading axes broadcast).

    Relaxation: the branch ``theta (W flat(x) + b)`` maps ``irreps_in1 -> irreps_out`` and reads
    ``x`` only; ``input_rep`` is ``IrrepsRep(irreps_in1)``, ``attr_rep`` that of the attributes,
    ``equivariance_input_reps`` the pair for ``assert_equivariant``.  SEGNN's branch init is
    ``relaxation_initializer=keras.initializers.RandomNormal(stddev=1e-4)``.

    Args:
        irreps_in1: irreps of ``x``.
        irreps_in2: irreps of the attributes (e.g. spherical harmonics), or None.
        irreps_out: output irreps.
        use_bias: bias on the ``0e`` outputs.
        tp_rescale: SEGNN's rescaling (see above).
        kernel_initializer, bias_initializer: override the SEGNN initialisations (the flat kernel
            ``[weight_numel]`` is then initialised as given and still multiplied by ``coef``).
    """

    _in2_attr = "irreps_in2"

    def __init__(self, irreps_in1, irreps_in2=None, irreps_out=None, use_bias=True, tp_rescale=True,
                 kernel_initializer=None, bias_initializer=None, **kwargs):
        super().__init__(**kwargs)
        owner = f"{type(self).__name__} '{self.name}'"
        _tensor_product_irreps(self, irreps_in1, irreps_in2, irreps_out, owner)
        self.use_bias = bool(use_bias)
        self.tp_rescale = bool(tp_rescale)
        self.kernel_initializer = None if kernel_initializer is None else keras.initializers.get(kernel_initializer)
        self.bias_initializer = None if bias_initializer is None else keras.initializers.get(bias_initializer)
        in2 = self.irreps_in2 if self.irreps_in2 is not None else Irreps("1x0e")
        self.plan = _PathPlan(self.irreps_in1, in2, self.irreps_out, "tp", "segnn" if self.tp_rescale else "e3nn",
                              self.layout)
        _untracked(self, "type_plan", _TypePlan(self.plan))
        self.kernel = None
        self.bias = None

    @property
    def weight_numel(self) -> int:
        """Number of tensor-product weights (``weight_numel`` of e3nn's ``FullyConnectedTensorProduct``)."""
        return self.plan.weight_numel

    def build_equivariant(self, input_shape):
        if self.plan.weight_numel:
            init = self.kernel_initializer or _scaled_uniform(self.plan.init_scales)
            self.kernel = self.add_weight(name="kernel", shape=(self.plan.weight_numel,), initializer=init)
        if self.use_bias and len(self.plan.bias_positions):
            init = self.bias_initializer or _scaled_uniform(self.plan.bias_scales)
            self.bias = self.add_weight(name="bias", shape=(len(self.plan.bias_positions),), initializer=init)

    def dense_tensor(self):
        """The bilinear map as a dense ``[irreps_in1.dim, irreps_in2.dim, irreps_out.dim]`` tensor."""
        d1, d2, do = self.plan.dims
        return tf.reshape(self.plan.dense(self.kernel, self.compute_dtype), [d1, d2, do])

    def tensor_product(self, x, attr=None):
        """The weighted tensor product (+ bias) of broadcast ``x`` ``[..., d1]`` and ``attr`` ``[..., d2]``.

        Evaluated by irrep type (:class:`_TypePlan`); equal to ``outer(x, attr) @ dense_tensor() + bias``.
        """
        d1, d2, do = self.plan.dims
        lead = tf.shape(x)[:-1]
        x2 = tf.reshape(x, [-1, d1])
        a2 = None if attr is None else tf.reshape(attr, [-1, d2])
        out = self.type_plan(x2, a2, self.kernel, self.bias, self.compute_dtype)
        return tf.reshape(out, tf.concat([lead, [do]], 0))

    def tensor_product_dense(self, x, attr=None):
        """Reference evaluation through the dense ``[d1 * d2, d_out]`` map (slow; for tests)."""
        d1, d2, do = self.plan.dims
        dense = self.plan.dense(self.kernel, self.compute_dtype)  # [d1 * d2, do]
        lead = tf.shape(x)[:-1]
        x2 = tf.reshape(x, [-1, d1])
        if attr is None:  # attr = 1 (1x0e)
            out = tf.matmul(x2, dense)
        else:
            a2 = tf.reshape(attr, [-1, d2])
            outer = tf.reshape(x2[:, :, None] * a2[:, None, :], [-1, d1 * d2])
            out = tf.matmul(outer, dense)
        if self.bias is not None:
            out = out + self.plan.dense_bias(self.bias, self.compute_dtype)
        return tf.reshape(out, tf.concat([lead, [do]], 0))

    def equivariant_call(self, inputs, training=None):
        x, attr = self._split_inputs(inputs)
        return self.tensor_product(x, attr)

    def call(self, inputs, training=None):
        x, attr = self._split_inputs(inputs)
        outputs = self.tensor_product(x, attr)
        if self.relaxed and self.has_relaxation_branch:
            outputs = self.add_relaxation(x, outputs)
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(irreps_in1=str(self.irreps_in1),
                      irreps_in2=None if self.irreps_in2 is None else str(self.irreps_in2),
                      irreps_out=str(self.irreps_out), use_bias=self.use_bias, tp_rescale=self.tp_rescale,
                      kernel_initializer=_serialize_initializer(self.kernel_initializer),
                      bias_initializer=_serialize_initializer(self.bias_initializer))
        return config


# --------------------------------------------------------------------------- Gate
@register
class Gate(_IrrepsLayer):
    """Gate nonlinearity (``e3nn.nn.Gate``; SEGNN's ``O3SwishGate``).

    Input ``irreps_scalars + irreps_gates + irreps_gated`` with
    ``irreps_gates = f"{irreps_gated.num_irreps}x0e"``; output
    ``irreps_scalars + irreps_gated``:

        out = act(scalars)  (+)  gated_j * gate_act(gate_j)

    one gate scalar per gated irrep copy.  As in e3nn the activations are rescaled to unit
    second moment under ``N(0, 1)`` (``normalize2mom``) when ``normalize_activations``.
    ``irreps_scalars`` must be ``l = 0``; ``0o`` scalars need an odd activation (``tanh``),
    otherwise the layer would break parity.

    Args:
        irreps_scalars: scalars passed through ``scalar_activation`` (default SiLU).
        irreps_gated: irreps multiplied by the gates (any ``l``, any parity).
        scalar_activation, gate_activation: Keras activation names or callables.
        normalize_activations: e3nn's ``normalize2mom`` rescaling.
    """

    has_relaxation_branch = False
    _in1_attr = "irreps_in"

    def __init__(self, irreps_scalars, irreps_gated="", scalar_activation="silu", gate_activation="sigmoid",
                 normalize_activations=True, **kwargs):
        super().__init__(**kwargs)
        owner = f"Gate '{self.name}'"
        _untracked(self, "irreps_scalars", _irreps_arg(irreps_scalars, "irreps_scalars", owner, allow_empty=True))
        _untracked(self, "irreps_gated", _irreps_arg(irreps_gated, "irreps_gated", owner, allow_empty=True))
        if any(ir.l != 0 for mul, ir in self.irreps_scalars if mul):
            raise ValueError(f"{owner}: irreps_scalars must be scalars (l = 0), got '{self.irreps_scalars}'.")
        _untracked(self, "irreps_gates",
                   Irreps(f"{self.irreps_gated.num_irreps}x0e") if self.irreps_gated.num_irreps else Irreps(""))
        _untracked(self, "irreps_in",
                   (self.irreps_scalars + self.irreps_gates + self.irreps_gated).remove_zero_multiplicities())
        _untracked(self, "irreps_out", (self.irreps_scalars + self.irreps_gated).remove_zero_multiplicities())
        if self.irreps_in.dim == 0:
            raise ValueError(f"{owner}: no features (irreps_scalars and irreps_gated are both empty).")
        self.scalar_activation_id = _activation_id(scalar_activation)
        self.gate_activation_id = _activation_id(gate_activation)
        self.scalar_activation = keras.activations.get(scalar_activation)
        self.gate_activation = keras.activations.get(gate_activation)
        self.normalize_activations = bool(normalize_activations)
        if any(ir.p == -1 for mul, ir in self.irreps_scalars if mul) and not _is_odd(self.scalar_activation):
            raise ValueError(f"{owner}: odd scalars (0o) in irreps_scalars '{self.irreps_scalars}' need an odd "
                             f"scalar_activation (e.g. 'tanh') to stay O(3)-equivariant; "
                             f"{self.scalar_activation_id!r} is not odd. Gate them instead.")
        self.scalar_constant = (_normalize2mom_constant(self.scalar_activation)
                                if self.normalize_activations else 1.0)
        self.gate_constant = (_normalize2mom_constant(self.gate_activation)
                              if self.normalize_activations and self.irreps_gated.num_irreps else 1.0)

    def equivariant_call(self, inputs, training=None):
        x, _ = self._split_inputs(inputs)
        ns, ng, nd = self.irreps_scalars.dim, self.irreps_gates.dim, self.irreps_gated.dim
        # tf.split / reshapes rather than strided slices and a gather: their gradients are much cheaper
        sizes = [d for d in (ns, ng, nd) if d]
        pieces = iter(tf.split(x, sizes, axis=-1) if len(sizes) > 1 else [x])
        parts = []
        if ns:
            parts.append(self.scalar_activation(next(pieces)) * tf.cast(self.scalar_constant, x.dtype))
        if nd:
            gates = self.gate_activation(next(pieces)) * tf.cast(self.gate_constant, x.dtype)
            gated = next(pieces)
            lead = tf.shape(x)[:-1]
            blocks = [(mul, ir.dim) for mul, ir in self.irreps_gated if mul]
            gate_blocks = tf.split(gates, [m for m, _ in blocks], axis=-1) if len(blocks) > 1 else [gates]
            gated_blocks = tf.split(gated, [m * d for m, d in blocks], axis=-1) if len(blocks) > 1 else [gated]
            for (mul, d), g, f in zip(blocks, gate_blocks, gated_blocks):
                if d == 1:
                    parts.append(f * g)
                elif self.layout == "ir_mul":
                    prod = tf.reshape(f, [-1, d, mul]) * tf.reshape(g, [-1, 1, mul])
                    parts.append(tf.reshape(prod, tf.concat([lead, [mul * d]], 0)))
                else:
                    prod = tf.reshape(f, [-1, mul, d]) * tf.reshape(g, [-1, mul, 1])
                    parts.append(tf.reshape(prod, tf.concat([lead, [mul * d]], 0)))
        return parts[0] if len(parts) == 1 else tf.concat(parts, axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(irreps_scalars=str(self.irreps_scalars), irreps_gated=str(self.irreps_gated),
                      scalar_activation=self.scalar_activation_id, gate_activation=self.gate_activation_id,
                      normalize_activations=self.normalize_activations)
        return config


def gate_irreps(irreps_out):
    """SEGNN's split of ``irreps_out`` for a gated tensor product.

    Returns ``(irreps_scalars, irreps_gated, irreps_tp_out)``: the leading ``0e`` terms are the
    scalars (SEGNN assumes ``irreps_out[0]``), everything after is gated, and the tensor product
    must produce ``(scalars + gates + gated).simplify()`` with one ``0e`` gate per gated copy.
    """
    irreps_out = Irreps(irreps_out)
    n = 0
    while n < len(irreps_out) and irreps_out[n].ir.is_scalar():
        n += 1
    scalars, gated = irreps_out[:n], irreps_out[n:]
    gates = Irreps(f"{gated.num_irreps}x0e") if gated.num_irreps else Irreps("")
    return scalars, gated, (scalars + gates + gated).simplify()


# --------------------------------------------------------------------------- O3TensorProductGate
#: where :class:`O3TensorProductGate` adds its relaxation branch
RELAXATION_PLACEMENTS = ("before_gate", "after_gate")


@register
class O3TensorProductGate(_IrrepsLayer):
    """Tensor product then gate (SEGNN's ``O3TensorProductSwishGate``).

    The tensor product (sublayer ``tensor_product``, an :class:`O3TensorProduct`) maps
    ``x (x) attr`` to ``irreps_scalars + gates + irreps_gated`` (see :func:`gate_irreps`); the
    :class:`Gate` (sublayer ``gate``) returns ``irreps_out``.  When ``irreps_out`` has no gated
    irreps the gate is SEGNN's plain SiLU (no ``normalize2mom``), as in the reference code.

    Where the relaxation branch goes (``relaxation_placement``):

    * ``"before_gate"`` (default, method.md section 2): the tensor product carries the branch,
      ``gate(TP(x, attr) + theta R(x))``;
    * ``"after_gate"``: this layer carries it, ``gate(TP(x, attr)) + theta R(x)`` with
      ``R: irreps_in1 -> irreps_out`` (the relaxation paper's released SEGNN code adds its
      linear branch there; for comparisons).

    Args: as :class:`O3TensorProduct`, plus ``scalar_activation`` / ``gate_activation`` and
    ``relaxation_placement``.
    """

    has_relaxation_branch = False
    _in2_attr = "irreps_in2"

    def __init__(self, irreps_in1, irreps_in2=None, irreps_out=None, use_bias=True, tp_rescale=True,
                 scalar_activation="silu", gate_activation="sigmoid", relaxation_placement="before_gate", **kwargs):
        if relaxation_placement not in RELAXATION_PLACEMENTS:
            raise ValueError(f"O3TensorProductGate: relaxation_placement must be one of {RELAXATION_PLACEMENTS}, "
                             f"got {relaxation_placement!r}.")
        super().__init__(**kwargs)
        self.relaxation_placement = relaxation_placement
        # the branch is this layer's (after the gate) or the tensor product's (before it)
        self.has_relaxation_branch = relaxation_placement == "after_gate"
        owner = f"O3TensorProductGate '{self.name}'"
        _tensor_product_irreps(self, irreps_in1, irreps_in2, irreps_out, owner)
        self.use_bias = bool(use_bias)
        self.tp_rescale = bool(tp_rescale)
        self.scalar_activation = _activation_id(scalar_activation)
        self.gate_activation = _activation_id(gate_activation)
        scalars, gated, tp_out = gate_irreps(self.irreps_out)
        _untracked(self, "irreps_tp_out", tp_out)
        relax = self.sublayer_config()
        if self.has_relaxation_branch:
            relax["relaxed"] = False
        self.tensor_product = O3TensorProduct(self.irreps_in1, self.irreps_in2, tp_out, use_bias=self.use_bias,
                                              tp_rescale=self.tp_rescale, layout=self.layout, name="tensor_product",
                                              **relax)
        self.gate = Gate(scalars, gated, scalar_activation=self.scalar_activation,
                         gate_activation=self.gate_activation, normalize_activations=gated.num_irreps > 0,
                         layout=self.layout, name="gate", **relax)

    def build_equivariant(self, input_shape):
        if not self.tensor_product.built:
            self.tensor_product.build(self._full_input_shape)
        if not self.gate.built:
            self.gate.build(self.tensor_product.compute_output_shape(self._full_input_shape))

    def equivariant_call(self, inputs, training=None):
        """``gate(TP(x, attr))``, with the tensor product's own branch when placed before the gate."""
        return self.gate(self.tensor_product(inputs, training=training), training=training)

    def call(self, inputs, training=None):
        outputs = self.equivariant_call(inputs, training=training)
        if self.relaxed and self.has_relaxation_branch:
            outputs = self.add_relaxation(self._split_inputs(inputs)[0], outputs)
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(irreps_in1=str(self.irreps_in1),
                      irreps_in2=None if self.irreps_in2 is None else str(self.irreps_in2),
                      irreps_out=str(self.irreps_out), use_bias=self.use_bias, tp_rescale=self.tp_rescale,
                      scalar_activation=self.scalar_activation, gate_activation=self.gate_activation,
                      relaxation_placement=self.relaxation_placement)
        return config


# --------------------------------------------------------------------------- SteerableNorm
@register
class SteerableNorm(_IrrepsLayer):
    """Normalisation of steerable features (SEGNN ``InstanceNorm``, e3nn ``BatchNorm``).

    Per ``(mul, irrep)`` block, scalars are mean-centred, then every irrep copy is divided by
    ``sqrt(mean(|x|^2) + eps)`` (``normalization="component"``: ``|x|^2 / (2l + 1)``; ``"norm"``:
    ``|x|^2``), reduced by ``reduce`` (mean or max) over the statistics axes; with ``affine``
    each copy is multiplied by a learned ``weight`` and ``0e`` copies get a ``bias``.  Norms of
    irreps are O(3)-invariant, so the layer is equivariant.

    * ``mode="instance"``: statistics per sample over the axes between batch and features
      (``[batch, nodes, dim]``: per graph; inputs of rank >= 3).  Centres every ``l = 0`` block
      (as SEGNN; centring ``0o`` is equivariant too).
    * ``mode="batch"``: statistics over every axis but the features in training, running
      averages (``running_mean`` of the ``0e`` blocks, ``running_var`` of the squared norms)
      at inference (e3nn ``BatchNorm``; centres only ``0e``).  ``momentum`` follows the Keras
      convention: ``running = momentum * running + (1 - momentum) * batch`` (e3nn's 0.1 is 0.9).

    The bias goes to ``0e`` copies only (SEGNN adds it to every ``l = 0`` copy, which breaks
    parity for ``0o``).
    """

    has_relaxation_branch = False
    _in1_attr = "irreps"
    _out_attr = "irreps"

    def __init__(self, irreps, mode="instance", eps=1e-5, affine=True, reduce="mean", normalization="component",
                 momentum=0.9, **kwargs):
        super().__init__(**kwargs)
        owner = f"SteerableNorm '{self.name}'"
        _untracked(self, "irreps", _irreps_arg(irreps, "irreps", owner).remove_zero_multiplicities())
        for arg, value, allowed in (("mode", mode, NORM_MODES), ("reduce", reduce, NORM_REDUCE),
                                    ("normalization", normalization, NORM_NORMALIZATION)):
            if value not in allowed:
                raise ValueError(f"{owner}: {arg} must be one of {allowed}, got {value!r}.")
        self.mode = mode
        self.eps = float(eps)
        self.affine = bool(affine)
        self.reduce = reduce
        self.normalization = normalization
        self.momentum = float(momentum)
        self.num_scalar = sum(mul for mul, ir in self.irreps if ir.is_scalar())
        self.weight = self.bias = self.running_mean = self.running_var = None

    def build_equivariant(self, input_shape):
        if self.mode == "instance" and len(input_shape) < 3:
            raise ValueError(f"SteerableNorm '{self.name}' with mode='instance' normalises over the axes between "
                             f"batch and features and needs inputs [batch, nodes, ..., {self.irreps.dim}]; got "
                             f"shape {list(input_shape)}. Use mode='batch' for [batch, dim] inputs.")
        if self.affine:
            self.weight = self.add_weight(name="weight", shape=(self.irreps.num_irreps,), initializer="ones")
            if self.num_scalar:
                self.bias = self.add_weight(name="bias", shape=(self.num_scalar,), initializer="zeros")
        if self.mode == "batch":
            if self.num_scalar:
                self.running_mean = self.add_weight(name="running_mean", shape=(self.num_scalar,),
                                                    initializer="zeros", trainable=False)
            self.running_var = self.add_weight(name="running_var", shape=(self.irreps.num_irreps,),
                                               initializer="ones", trainable=False)

    def _reduce(self, t, axes):
        if self.reduce == "mean":
            return tf.reduce_mean(t, axis=axes)
        return tf.reduce_max(t, axis=axes)

    def equivariant_call(self, inputs, training=None):
        x, _ = self._split_inputs(inputs)
        rank = x.shape.rank
        lead = tf.shape(x)[:-1]
        batch_stats = self.mode == "batch" and bool(training)
        # statistic axes of the [..., mul, d] / [..., mul] views
        stat_axes = list(range(rank - 1)) if self.mode == "batch" else list(range(1, rank - 1))
        fields, new_means, new_vars = [], [], []
        iw = ib = 0
        ir_mul = self.layout == "ir_mul"
        comp = -2 if ir_mul else -1  # the component axis of a block view
        for sl, (mul, ir) in zip(self.irreps.slices(), self.irreps):
            f = tf.reshape(x[..., sl], tf.concat([lead, [ir.dim, mul] if ir_mul else [mul, ir.dim]], 0))
            per_copy = [1, mul] if ir_mul else [mul, 1]  # a [mul] vector broadcast over the components
            centre = ir.is_scalar() if self.mode == "batch" else ir.l == 0
            if centre:
                if self.mode == "instance" or batch_stats:
                    mean = tf.reduce_mean(f, axis=stat_axes, keepdims=True)
                    if batch_stats:
                        new_means.append(tf.reshape(mean, [mul]))
                else:
                    mean = tf.reshape(tf.cast(self.running_mean[ib:ib + mul], x.dtype), per_copy)
                f = f - mean
            sq = tf.reduce_sum(tf.square(f), axis=comp)  # [..., mul]
            if self.normalization == "component":
                sq = sq / ir.dim
            if self.mode == "instance" or batch_stats:
                var = self._reduce(sq, stat_axes)  # [B, mul] (instance) or [mul] (batch)
                if batch_stats:
                    new_vars.append(var)
                if self.mode == "instance":
                    var = tf.reshape(var, tf.concat([tf.shape(var)[:1], [1] * (rank - 2), [mul]], 0))
            else:
                var = tf.cast(self.running_var[iw:iw + mul], x.dtype)
            scale = tf.math.rsqrt(var + tf.cast(self.eps, x.dtype))
            if self.affine:
                scale = scale * tf.cast(self.weight[iw:iw + mul], x.dtype)
            f = f * tf.expand_dims(scale, comp)
            if self.affine and ir.is_scalar() and self.bias is not None:
                f = f + tf.reshape(tf.cast(self.bias[ib:ib + mul], x.dtype), per_copy)
            if ir.is_scalar():
                ib += mul
            iw += mul
            fields.append(tf.reshape(f, tf.concat([lead, [mul * ir.dim]], 0)))
        if batch_stats:
            m = tf.cast(self.momentum, self.running_var.dtype)
            if new_means:
                batch_mean = tf.cast(tf.concat(new_means, 0), self.running_mean.dtype)
                self.running_mean.assign(m * self.running_mean + (1.0 - m) * batch_mean)
            batch_var = tf.cast(tf.concat(new_vars, 0), self.running_var.dtype)
            self.running_var.assign(m * self.running_var + (1.0 - m) * batch_var)
        return fields[0] if len(fields) == 1 else tf.concat(fields, axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(irreps=str(self.irreps), mode=self.mode, eps=self.eps, affine=self.affine, reduce=self.reduce,
                      normalization=self.normalization, momentum=self.momentum)
        return config


__all__ = ["O3Linear", "O3TensorProduct", "Gate", "O3TensorProductGate", "SteerableNorm", "gate_irreps",
           "RELAXATION_PLACEMENTS"]
