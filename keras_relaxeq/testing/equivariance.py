"""``assert_equivariant`` / ``assert_invariant``: numerical equivariance checks.

Draws group elements, transforms the inputs and the outputs by their declared
representations and compares ``f(rho_in(g) x)`` with ``rho_out(g) f(x)``.
Groups: ``"SO3"`` (rotations), ``"O3"`` (rotations and reflections),
``"SE3"`` / ``"E3"``, the same with translations, which move the tensors
declared ``"position"`` (``x -> R x + t``) and leave ``"vector"`` ones
(velocities, differences) to the rotation alone, and ``"T3"`` (translations
only).  :func:`e3_equivariance_errors` measures an N-body position predictor
under rotations, a reflection and translations separately (the check of
``relaxeq zoo verify`` and ``relaxeq zoo publish``).  Representations are given as
a :class:`~keras_relaxeq.groups.Representation`, a name (``"vector"``,
``"position"``, ``"invariant"``) or e3nn-style irreps (``"1x0e+1x1o"``,
:class:`~keras_relaxeq.groups.Irreps`, features in e3nn's ``mul_ir`` layout).
Transforms and comparisons are done in float64; the function itself runs in
its own dtype.  Tolerances are keyed by the output dtype (as in e3nn), relative
to the scale of the outputs:

    max |f(g x) - g f(x)| <= atol + rtol * max |f(x)|
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_relaxeq.groups.irreps import Irrep, Irreps
from keras_relaxeq.groups.irreps_rep import IrrepsRep
from keras_relaxeq.groups.representations import Representation, TrivialRep, VectorFieldRep, as_representation
from keras_relaxeq.groups.so3 import random_rotations
from keras_relaxeq.testing.report import TOLERANCES, EquivarianceReport

#: groups of :func:`check_equivariance`; the last three include translations (``T3``: translations only)
GROUPS = ("SO3", "O3", "SE3", "E3", "T3")
TRANSLATION_GROUPS = ("SE3", "E3", "T3")
POSITION_NAMES = ("position", "positions", "point", "points")


class PositionRep(VectorFieldRep):
    """Points in space ``[..., 3]``: rotated like vectors and, in ``SE3`` / ``E3``, translated."""

    def __repr__(self):
        return "PositionRep()"


def _as_rep(rep) -> Representation:
    """A representation from a Representation, a name, or irreps (``"1x0e+1x1o"``, ``Irreps``, ``Irrep``)."""
    if isinstance(rep, Representation):
        return rep
    if isinstance(rep, (Irreps, Irrep)):
        return IrrepsRep(Irreps(rep))
    if isinstance(rep, str) and rep.strip().lower() in POSITION_NAMES:
        return PositionRep()
    try:
        return as_representation(rep)
    except ValueError:
        pass
    if isinstance(rep, str):
        try:
            return IrrepsRep(Irreps(rep))
        except ValueError:
            pass
    raise ValueError(
        f"Unknown representation {rep!r}: pass a keras_relaxeq.groups.Representation, 'vector', "
        "'position' (rotated and translated), 'invariant', or irreps such as '1x0e+1x1o'."
    )


def _is_leaf(rep) -> bool:
    return isinstance(rep, (str, Representation, Irreps, Irrep))


def _normalize_reps(reps):
    """The same nest with every leaf a :class:`Representation` (Irreps are tuples: not descended into)."""
    if _is_leaf(reps):
        return _as_rep(reps)
    if isinstance(reps, dict):
        return {k: _normalize_reps(v) for k, v in reps.items()}
    if isinstance(reps, (list, tuple)):
        return type(reps)(_normalize_reps(v) for v in reps)
    raise ValueError(
        f"Cannot use {reps!r} as a representation: pass a Representation, a name, irreps, or a "
        "list / dict of them matching the inputs."
    )


def _draw(group: str, batch: int, seed):
    if group == "T3":
        return tf.eye(3, batch_shape=[batch], dtype=tf.float64)
    rot = random_rotations(batch, seed=seed, dtype=tf.float64)
    if group in ("SO3", "SE3"):
        return rot
    if group in ("O3", "E3"):
        # Half of the draws are improper: -R (a rotation composed with inversion).
        signs = tf.where(tf.random.stateless_uniform([batch], seed=[seed[0], seed[1] + 7919]) < 0.5, -1.0, 1.0)
        return rot * tf.cast(signs, tf.float64)[:, None, None]
    raise ValueError(f"Unknown group {group!r}; use one of {GROUPS}.")


def _draw_translations(group: str, batch: int, seed, scale: float):
    """One translation ``[batch, 3]`` per batch element (None for SO3 / O3), of the size of the positions."""
    if group not in TRANSLATION_GROUPS:
        return None
    return scale * tf.random.stateless_normal([batch, 3], seed=[seed[0], seed[1] + 104729], dtype=tf.float64)


def _layer_reps(fn):
    # Layers with several inputs (e.g. a tensor product of features and attributes)
    # declare one representation per input.
    rep_in = getattr(fn, "equivariance_input_reps", None) or getattr(fn, "input_rep", None)
    rep_out = getattr(fn, "output_rep", None)
    return rep_in, rep_out


def _flat_reps(reps, values):
    flat_vals = tf.nest.flatten(values)
    flat_reps = [reps] if isinstance(reps, Representation) else tf.nest.flatten(reps)
    if len(flat_reps) == 1 and len(flat_vals) > 1 and isinstance(reps, Representation):
        flat_reps = flat_reps * len(flat_vals)  # one representation given for all tensors
    if len(flat_reps) != len(flat_vals):
        raise ValueError(f"{len(flat_vals)} tensors but {len(flat_reps)} representations were given.")
    return flat_reps, flat_vals


def _transform(reps, rotations, values, translations=None):
    flat_reps, flat_vals = _flat_reps(reps, values)
    out = []
    for rep, value in zip(flat_reps, flat_vals):
        moved = rep.transform(rotations, tf.cast(value, tf.float64))
        if translations is not None and isinstance(rep, PositionRep):
            moved += tf.reshape(translations, [-1] + [1] * (moved.shape.rank - 2) + [3])
        out.append(moved)
    return out


def _call(fn, inputs, training):
    try:
        return fn(inputs, training=training)
    except TypeError:
        return fn(inputs)


def check_equivariance(
    fn,
    inputs,
    input_reps=None,
    output_reps=None,
    group="SO3",
    num_samples=3,
    seed=0,
    atol=None,
    rtol=None,
    training=False,
) -> EquivarianceReport:
    """Measure the equivariance error of ``fn`` on ``inputs`` (see :func:`assert_equivariant`).

    ``group="C4"`` (any ``"CN"``): every element of the cyclic group on 2D grids, the representations being C_N
    field types (:func:`keras_relaxeq.testing.cyclic.check_cyclic_equivariance`; ``num_samples`` and ``seed``
    unused)."""
    if isinstance(group, str) and group[:1] == "C" and group[1:].isdigit():
        from keras_relaxeq.testing.cyclic import check_cyclic_equivariance

        return check_cyclic_equivariance(
            fn, inputs, input_reps, output_reps, group_order=int(group[1:]), atol=atol, rtol=rtol, training=training
        )
    if group not in GROUPS:
        raise ValueError(f"Unknown group {group!r}; use one of {GROUPS}.")
    layer_in, layer_out = _layer_reps(fn)
    input_reps = input_reps if input_reps is not None else layer_in
    output_reps = output_reps if output_reps is not None else layer_out
    if input_reps is None or output_reps is None:
        raise ValueError(
            "Pass input_reps and output_reps (e.g. 'vector' and '1x0e'), use check_invariance(fn, x) "
            "for invariant outputs, or pass a built keras_relaxeq layer that declares them."
        )
    input_reps, output_reps = _normalize_reps(input_reps), _normalize_reps(output_reps)
    flat_in_reps, flat_inputs = _flat_reps(input_reps, inputs)
    positions = [v for r, v in zip(flat_in_reps, flat_inputs) if isinstance(r, PositionRep)]
    if group in TRANSLATION_GROUPS and not positions:
        raise ValueError(
            f"group={group!r} translates the inputs declared 'position', and none is: declare the "
            "coordinates 'position' (velocities and other differences stay 'vector')."
        )
    # translations of the size of the positions, so that float32 keeps their effect resolvable
    shift_scale = max([float(np.sqrt(np.mean(np.square(np.asarray(v, np.float64))))) for v in positions] + [1.0])
    batch = int(flat_inputs[0].shape[0])
    in_dtype = flat_inputs[0].dtype
    outputs = _call(fn, inputs, training)
    out_dtype = tf.nest.flatten(outputs)[0].dtype
    default_atol, default_rtol = TOLERANCES.get(tf.as_dtype(out_dtype), TOLERANCES[tf.float32])
    atol = default_atol if atol is None else atol
    rtol = default_rtol if rtol is None else rtol

    errors, scale = [], 0.0
    for i in range(num_samples):
        rotations = _draw(group, batch, seed=[int(seed), i])
        translations = _draw_translations(group, batch, [int(seed), i], shift_scale)
        moved = _transform(input_reps, rotations, inputs, translations)
        moved = tf.nest.pack_sequence_as(inputs, [tf.cast(m, in_dtype) for m in moved])
        out_of_moved = [tf.cast(o, tf.float64) for o in tf.nest.flatten(_call(fn, moved, training))]
        moved_out = _transform(output_reps, rotations, outputs, translations)
        for a, b in zip(out_of_moved, moved_out):
            err = tf.abs(a - b)
            errors.append(err.numpy().ravel())
            scale = max(scale, float(tf.reduce_max(tf.abs(b))))
    errors = np.concatenate(errors)
    if not np.all(np.isfinite(errors)):
        raise AssertionError("Equivariance check produced NaN/Inf: the function's outputs are not finite.")
    return EquivarianceReport(
        float(errors.max()), float(errors.mean()), scale, float(atol), float(rtol), num_samples, group
    )


def check_invariance(
    fn, inputs, input_reps="vector", group="SO3", num_samples=3, seed=0, atol=None, rtol=None, training=False
) -> EquivarianceReport:
    """Measure ``max |fn(rho_in(g) x) - fn(x)|``: :func:`check_equivariance` with invariant outputs.

    The report of :func:`assert_invariant` without the assertion (``input_reps`` defaults to ``"vector"``).
    """
    return check_equivariance(fn, inputs, input_reps, TrivialRep(), group, num_samples, seed, atol, rtol, training)


def assert_equivariant(
    fn,
    inputs,
    input_reps=None,
    output_reps=None,
    group="SO3",
    num_samples=3,
    seed=0,
    atol=None,
    rtol=None,
    training=False,
) -> EquivarianceReport:
    """Assert ``fn(rho_in(g) x) == rho_out(g) fn(x)`` for random group elements ``g``.

    Args:
        fn: a callable or Keras layer/model.  A built keras_relaxeq layer
            declares its representations, so ``input_reps``/``output_reps`` may
            be omitted.
        inputs: a tensor or a nest of tensors with a leading batch axis; one
            group element is drawn per batch element.
        input_reps, output_reps: a :class:`~keras_relaxeq.groups.Representation`,
            ``"vector"`` (rotate the last axis of size 3), ``"position"`` (also
            translated in ``SE3`` / ``E3``), ``"invariant"``, irreps
            (``"1x0e+1x1o"`` or an :class:`~keras_relaxeq.groups.Irreps`), or a
            nest of these matching the inputs/outputs.
        group: ``"SO3"`` (rotations), ``"O3"`` (rotations and improper
            rotations), ``"SE3"`` / ``"E3"`` (the same and a translation per
            batch element, of the size of the ``"position"`` inputs), ``"T3"``
            (the translation alone).
        num_samples: how many independent draws.
        atol, rtol: override the dtype-keyed tolerances (:data:`TOLERANCES`).

    Returns:
        The :class:`EquivarianceReport` (max and mean error).

    Raises:
        AssertionError: with the max and mean error when the check fails.
    """
    report = check_equivariance(fn, inputs, input_reps, output_reps, group, num_samples, seed, atol, rtol, training)
    if not report.passed:
        raise AssertionError(f"Not equivariant: {report}")
    return report


def assert_invariant(
    fn, inputs, input_reps="vector", group="SO3", num_samples=3, seed=0, atol=None, rtol=None, training=False
) -> EquivarianceReport:
    """Assert ``fn(rho_in(g) x) == fn(x)``: :func:`assert_equivariant` with invariant outputs."""
    return assert_equivariant(fn, inputs, input_reps, TrivialRep(), group, num_samples, seed, atol, rtol, training)


def _orthogonal_moves(batch: int, num_rotations: int, seed) -> list:
    """``[(kind, Q [batch or 1, 3, 3])]``: ``num_rotations`` Haar-random rotations per system, one reflection (a
    random rotation composed with ``z -> -z``) and the identity (``"translation"``: the move is its translation
    alone), float64."""
    rots = random_rotations(batch * (num_rotations + 1), seed=seed, dtype=tf.float64).numpy()
    rots = rots.reshape(num_rotations + 1, batch, 3, 3)
    mirror = np.diag([1.0, 1.0, -1.0])
    moves = [("rotation", rots[r]) for r in range(num_rotations)]
    return moves + [("reflection", mirror @ rots[num_rotations]), ("translation", np.eye(3)[None])]


def e3_equivariance_errors(
    predict, loc, vel, charges, *, num_rotations: int = 2, seed: int = 0, translation_scale: float = 1.0
) -> dict:
    """E(3) equivariance of an N-body position predictor on the systems ``loc, vel, charges``.

    ``predict(loc, vel, charges)`` (float32 arrays ``[B, N, 3]``, ``[B, N, 3]``, ``[B, N, 1]``)
    returns the predicted positions ``[B, N, 3]``. Each system is moved by ``num_rotations``
    Haar-random rotations and one reflection (a random rotation composed with the mirror
    ``z -> -z``), each combined with a random translation ``t ~ N(0, translation_scale^2)`` of the
    positions (velocities rotate, charges are invariant), and by a translation alone; the
    error of a move ``x -> Q x + t`` is ``|predict(Q x + t) - (Q predict(x) + t)|``. Moves are
    applied in float64 and fed as float32. Returns the max / mean absolute error (overall and per
    kind of move: ``rotation_max_abs``, ``reflection_max_abs``, ``translation_max_abs``), the
    output scale ``max |Q predict(x) + t|`` and ``relative`` = max / scale.
    """
    loc, vel, charges = (np.asarray(a, np.float64) for a in (loc, vel, charges))
    b = len(loc)
    ref = np.asarray(predict(loc.astype(np.float32), vel.astype(np.float32), charges.astype(np.float32)), np.float64)
    moves = _orthogonal_moves(b, num_rotations, seed)
    rng = np.random.default_rng(seed)
    errors, scale = {}, 0.0
    for kind, q in moves:
        q = np.broadcast_to(q, (b, 3, 3))
        t = rng.normal(scale=translation_scale, size=(b, 1, 3))
        move = lambda x: np.einsum("bij,bnj->bni", q, x)  # noqa: E731  (x -> Q x per system)
        got = np.asarray(
            predict((move(loc) + t).astype(np.float32), move(vel).astype(np.float32), charges.astype(np.float32)),
            np.float64,
        )
        want = move(ref) + t
        errors.setdefault(kind, []).append(np.abs(got - want))
        scale = max(scale, float(np.abs(want).max()))
    by_kind = {k: np.concatenate([e.ravel() for e in v]) for k, v in errors.items()}
    every = np.concatenate(list(by_kind.values()))
    if not np.all(np.isfinite(every)):
        raise AssertionError("E(3) equivariance check: the predictions are not finite")
    out = {
        "max_abs": float(every.max()),
        "mean_abs": float(every.mean()),
        "scale": scale,
        "relative": float(every.max()) / max(scale, 1e-12),
        "num_systems": b,
        "num_rotations": int(num_rotations),
        "translation_scale": float(translation_scale),
    }
    out.update({f"{k}_max_abs": float(v.max()) for k, v in by_kind.items()})
    return out


def random_molecules(atomic_numbers, num_molecules: int = 4, *, seed: int = 0, min_distance: float = 0.9):
    """``(positions [B, A, 3] float64, atomic_numbers [B, A] int32)``: ``num_molecules`` random geometries of the
    molecule ``atomic_numbers`` (Gaussian, spread ``0.75 A^(1/3)`` Å; no two atoms closer than ``min_distance`` Å,
    by rejection sampling), for symmetry checks of potentials."""
    numbers = np.asarray(atomic_numbers, np.int32)
    rng = np.random.default_rng(seed)
    spread = 0.75 * len(numbers) ** (1 / 3)
    out = []
    while len(out) < num_molecules:
        x = rng.normal(scale=spread, size=(len(numbers), 3))
        d = np.linalg.norm(x[:, None] - x[None], axis=-1) + np.eye(len(numbers)) * 1e9
        if d.min() >= min_distance:
            out.append(x)
    return np.stack(out), np.tile(numbers, (num_molecules, 1))


def potential_symmetry_errors(
    predict,
    positions,
    atomic_numbers,
    *,
    num_rotations: int = 2,
    seed: int = 0,
    translation_scale: float = 1.0,
    energy_reference: float = 0.0,
) -> dict:
    """E(3) and permutation symmetry of an energy / force model on the molecules ``positions, atomic_numbers``.

    ``predict(positions, atomic_numbers)`` (float32 ``[B, A, 3]``, int32 ``[B, A]``) returns ``(energy [B],
    forces [B, A, 3])``.  Each molecule is moved by ``num_rotations`` Haar-random rotations and one reflection (a
    random rotation composed with ``z -> -z``), each with a random translation ``t ~ N(0, translation_scale^2)``,
    by a translation alone and by a random permutation of its atoms (positions and atomic numbers together).  The
    energy must not change; the forces must rotate with the molecule (``F(Q x + t) = Q F(x)``) and follow the
    permutation.  Moves are applied in float64 and fed as float32.

    Returns ``energy_max_abs`` and ``force_max_abs`` (overall and per kind of move: ``energy_rotation_max_abs``,
    ``force_permutation_max_abs``, ...), the scales ``energy_scale = max |E(x) - energy_reference|`` and
    ``force_scale = max |F(x)|``, and ``energy_relative`` / ``force_relative`` (error / scale).
    """
    x = np.asarray(positions, np.float64)
    z = np.asarray(atomic_numbers, np.int32)
    b, a = x.shape[:2]
    if z.shape != (b, a):
        z = np.broadcast_to(z, (b, a)).copy()

    def run(pos, numbers):
        energy, forces = predict(pos.astype(np.float32), numbers.astype(np.int32))
        return np.asarray(energy, np.float64), np.asarray(forces, np.float64)

    energy0, forces0 = run(x, z)
    moves = _orthogonal_moves(b, num_rotations, seed)
    rng = np.random.default_rng(seed)
    e_err, f_err = {}, {}
    for kind, q in moves:
        q = np.broadcast_to(q, (b, 3, 3))
        t = rng.normal(scale=translation_scale, size=(b, 1, 3))
        move = lambda v: np.einsum("bij,bnj->bni", q, v)  # noqa: E731  (v -> Q v per molecule)
        energy, forces = run(move(x) + t, z)
        e_err[kind] = np.abs(energy - energy0)
        f_err[kind] = np.abs(forces - move(forces0))
    perm = np.stack([rng.permutation(a) for _ in range(b)])
    take = lambda v: np.take_along_axis(v, perm.reshape((b, a) + (1,) * (v.ndim - 2)), axis=1)  # noqa: E731
    energy, forces = run(take(x), take(z))
    e_err["permutation"], f_err["permutation"] = np.abs(energy - energy0), np.abs(forces - take(forces0))
    every_e = np.concatenate([v.ravel() for v in e_err.values()])
    every_f = np.concatenate([v.ravel() for v in f_err.values()])
    if not (np.all(np.isfinite(every_e)) and np.all(np.isfinite(every_f))):
        raise AssertionError("symmetry check of the potential: the energies or forces are not finite")
    energy_scale = float(np.abs(energy0 - energy_reference).max())
    force_scale = float(np.abs(forces0).max())
    out = {
        "energy_max_abs": float(every_e.max()),
        "force_max_abs": float(every_f.max()),
        "energy_scale": energy_scale,
        "force_scale": force_scale,
        "energy_relative": float(every_e.max()) / max(energy_scale, 1e-12),
        "force_relative": float(every_f.max()) / max(force_scale, 1e-12),
        "num_molecules": int(b),
        "num_rotations": int(num_rotations),
        "translation_scale": float(translation_scale),
    }
    out.update({f"energy_{k}_max_abs": float(v.max()) for k, v in e_err.items()})
    out.update({f"force_{k}_max_abs": float(v.max()) for k, v in f_err.items()})
    return out
