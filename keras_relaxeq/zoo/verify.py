"""Checks of a published zoo artifact: what ``relaxeq zoo verify`` runs and ``relaxeq zoo publish``
runs before it writes an entry.

For each entry: the archive's sha256 (``ensure_artifact``), loading its SavedModel
(:class:`~keras_relaxeq.zoo.loading.ServingModel`), the serving signature against the catalogue
(:func:`check_signature`), the symmetry (:func:`check_symmetry`: rotation invariance of a
classifier's logits, E(3) equivariance of an N-body model's positions, C4 equivariance of a field
forecaster's next frame, E(3) and permutation symmetry of an interatomic potential's energy and forces,
all measured with ``keras_relaxeq.testing``; for a scale field forecaster, whose scale equivariance is
approximate, translation equivariance away from the borders: :mod:`keras_relaxeq.zoo.verify_scale`) and the
serving input checks (:func:`check_input_guards`).
For field forecasters and interatomic potentials also, as TF Serving would see the artifact: the
``SignatureDef`` that ``saved_model_cli show`` prints (:func:`signature_def_specs`), and a fresh Python
process that loads the SavedModel with TensorFlow alone (never importing keras_relaxeq) and answers as
this one (:mod:`keras_relaxeq.zoo.fresh`). For scale field forecasters also the ``.keras`` file: it answers as
the SavedModel and its trunk's scale-step error is the published one (``verify_scale.check_keras_artifact``).
TensorFlow is imported only when a check runs.
"""

from __future__ import annotations

from keras_relaxeq.zoo.verify_scale import check_keras_artifact, check_translation_equivariance, field_forecaster_io

__all__ = ["C4_RELATIVE_TOLERANCE", "check_c4_equivariance", "check_e3_equivariance", "check_input_guards",
           "check_invariance", "check_potential_symmetry", "check_served", "check_signature", "check_signature_def",
           "check_symmetry", "guard_probe_inputs", "potential_probe_molecules", "signature_def_specs",
           "verify_entries"]

#: largest relative C4 equivariance error (max |f(g.x) - g.f(x)| / max |g.f(x)|) of a field forecaster
C4_RELATIVE_TOLERANCE = 1e-5


def check_signature(model, entry) -> list[str]:
    """How the serving signature of ``model`` differs from what ``entry`` promises (inputs'
    dtypes and shapes, outputs); empty when it matches."""
    problems = []
    several = len(entry.input_signature) > 1
    for name, want_spec in entry.input_signature.items():
        spec = model.input_specs.get(name)
        if spec is None:
            return [f"serving_default has no input {name!r} (inputs: {sorted(model.input_specs)})"]
        label = f"input {name!r}" if several else "input"
        if spec.dtype.name != want_spec.get("dtype", "float32"):
            problems.append(f"{label} dtype {spec.dtype.name}, catalogue says "
                            f"{want_spec['dtype']}")
        want = want_spec.get("shape")
        got = spec.shape.as_list() if spec.shape.rank is not None else None
        if want is not None and got is not None:
            # The batch axis is free; elsewhere the model must accept what the catalogue promises
            # (a free axis in the catalogue needs a free axis in the signature).
            if len(want) != len(got) or any(
                    (w is None and g is not None) or (w is not None and g is not None and w != g)
                    for w, g in list(zip(want, got))[1:]):
                problems.append(f"{label} shape {got}, catalogue says {want}")
    missing = sorted(set(entry.outputs) - set(model.output_names))
    if missing:
        problems.append(f"outputs {missing} missing (has {model.output_names})")
    if entry.task == "point_cloud_classification":
        need = {"logits", "probabilities", "class_id"} - set(model.output_names)
        if need:
            problems.append(f"classifier outputs {sorted(need)} missing")
    return problems


def check_invariance(model, entry, *, num_samples=4, num_points=None, atol=1e-4, rtol=1e-3,
                     seed=0) -> tuple[bool, float, float, float]:
    """Logits on random clouds vs. on randomly rotated copies: ``(ok, max_err, mean_err, tol)``.

    ``num_samples`` standard-normal clouds, centred and scaled into the unit sphere, one
    Haar-random rotation each (``keras_relaxeq.testing.check_invariance``, rotated in float64,
    fed as float32); ``tol = atol + rtol * max |logits|``.
    """
    import numpy as np

    from keras_relaxeq.testing import check_invariance as invariance_report

    spec = model.input_specs[entry.input_name]
    shape = spec.shape.as_list()
    n = num_points or entry.input.get("num_points") or (shape[1] if len(shape) > 1 and shape[1]
                                                        else 256)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_samples, n, 3))
    x -= x.mean(axis=1, keepdims=True)
    x /= np.linalg.norm(x, axis=-1).max(axis=1)[:, None, None]  # centred, in the unit sphere

    def logits(points):
        return model(np.asarray(points, np.float32))["logits"]

    report = invariance_report(logits, x, "vector", group="SO3", num_samples=1, seed=seed, atol=atol,
                               rtol=rtol)
    tol = report.atol + report.rtol * report.scale
    return bool(report.passed), report.max_error, report.mean_error, tol


def _nbody_predict(model):
    """``predict(loc, vel, charges)`` of a :class:`ServingModel` of an N-body entry."""
    return lambda loc, vel, charges: model(loc=loc, vel=vel, charges=charges)["loc"]


def check_e3_equivariance(model, entry, *, num_samples=4, atol=1e-4, rtol=1e-3,
                          seed=0) -> tuple[bool, dict, float]:
    """E(3) equivariance of an N-body entry's predicted positions on synthetic systems (``loc``,
    ``vel`` standard normal, charges +-1): ``(ok, errors, tol)``, ``tol = atol + rtol * scale``
    (``keras_relaxeq.testing.e3_equivariance_errors``)."""
    import numpy as np

    from keras_relaxeq.testing import e3_equivariance_errors

    n = entry.input_signature["loc"].get("shape", [None, None, 3])[1] or 5
    rng = np.random.default_rng(seed)
    loc = rng.normal(size=(num_samples, n, 3))
    vel = rng.normal(size=(num_samples, n, 3))
    charges = rng.choice([-1.0, 1.0], size=(num_samples, n, 1))
    errors = e3_equivariance_errors(_nbody_predict(model), loc, vel, charges, seed=seed)
    tol = atol + rtol * errors["scale"]
    return bool(errors["max_abs"] <= tol), errors, tol


def potential_probe_molecules(entry, *, num_molecules=4, seed=0):
    """``(positions [B, A, 3] float64, atomic_numbers [B, A] int32)``: random geometries of an interatomic
    potential's molecule (``keras_relaxeq.testing.random_molecules``)."""
    from keras_relaxeq.testing import random_molecules

    return random_molecules(entry.molecule_atomic_numbers, num_molecules, seed=seed)


def check_potential_symmetry(model, entry, *, num_samples=4, atol=1e-4, rtol=1e-3,
                             seed=0) -> tuple[bool, dict, float, float]:
    """E(3) and permutation symmetry of an interatomic potential's served energy and forces on random
    geometries of its molecule (:func:`potential_probe_molecules`; rotations, a reflection, translations and a
    permutation of the atoms: ``keras_relaxeq.testing.potential_symmetry_errors``). The energy may change by
    at most ``atol + rtol * max |E - energy_mean|`` (kcal/mol; the entry's ``targets.energy_mean``), the forces
    by ``atol + rtol * max |F|``. Returns ``(ok, errors, energy tol, force tol)``."""
    import numpy as np

    from keras_relaxeq.testing import potential_symmetry_errors

    positions, numbers = potential_probe_molecules(entry, num_molecules=num_samples, seed=seed)

    def predict(pos, z):
        out = model(positions=pos, atomic_numbers=z)
        return out["energy"], out["forces"]

    reference = float((entry.raw.get("targets") or {}).get("energy_mean", 0.0))
    errors = potential_symmetry_errors(predict, positions, numbers, seed=seed, energy_reference=reference)
    e_tol = atol + rtol * errors["energy_scale"]
    f_tol = atol + rtol * errors["force_scale"]
    ok = bool(errors["energy_max_abs"] <= e_tol and errors["force_max_abs"] <= f_tol
              and np.isfinite(errors["energy_scale"]) and errors["force_scale"] > 0)
    return ok, errors, e_tol, f_tol


def check_c4_equivariance(model, entry, *, num_samples=2, rtol=C4_RELATIVE_TOLERANCE,
                          seed=0) -> tuple[bool, float, object]:
    """C4 equivariance of a field forecaster's served next frame: ``num_samples`` standard-normal windows
    ``[frames, H, W, 2]``, each frame's grid and vector components turned by the three non-trivial quarter
    turns (``keras_relaxeq.testing.cyclic.check_cyclic_equivariance``, compared in float64); the output
    must turn the same way. Returns ``(ok, relative error, report)``: ``ok`` when the largest error is
    below ``rtol`` times the output scale."""
    import numpy as np
    import tensorflow as tf

    from keras_relaxeq.groups.cyclic import FieldType
    from keras_relaxeq.testing.cyclic import check_cyclic_equivariance

    key, out, dims = field_forecaster_io(entry)
    x = np.random.default_rng(seed).normal(size=[num_samples] + dims).astype(np.float32)

    def next_frame(frames):
        return model.signature(**{key: tf.cast(frames, tf.float32)})[out]

    vector = FieldType.vector(4)
    report = check_cyclic_equivariance(next_frame, tf.constant(x), vector, vector, atol=0.0, rtol=rtol)
    relative = report.max_error / max(report.scale, 1e-30)
    return bool(report.passed and report.scale > 0), relative, report


def check_symmetry(model, entry, *, num_samples=4, num_points=None, atol=1e-4, rtol=1e-3,
                   seed=0) -> tuple[bool, str] | None:
    """The symmetry check of ``relaxeq zoo verify`` for ``entry``: rotation invariance of a
    classifier's logits, E(3) equivariance of an N-body model's positions; ``(ok, detail)``, or
    ``None`` when the entry's task has no such check."""
    if entry.is_invariant_classifier:
        ok, mx, mean, tol = check_invariance(model, entry, num_samples=num_samples,
                                             num_points=num_points, atol=atol, rtol=rtol, seed=seed)
        return ok, f"rotation invariance max err {mx:.2e}, mean {mean:.2e} (tol {tol:.2e})"
    if entry.is_nbody_model:
        ok, err, tol = check_e3_equivariance(model, entry, num_samples=num_samples, atol=atol,
                                             rtol=rtol, seed=seed)
        return ok, (f"E(3) equivariance max err {err['max_abs']:.2e}, mean {err['mean_abs']:.2e} "
                    f"(tol {tol:.2e}; rotations {err['rotation_max_abs']:.2e}, reflection "
                    f"{err['reflection_max_abs']:.2e}, translation "
                    f"{err['translation_max_abs']:.2e})")
    if entry.is_potential_model:
        ok, err, e_tol, f_tol = check_potential_symmetry(model, entry, num_samples=num_samples, atol=atol,
                                                         rtol=rtol, seed=seed)
        return ok, (f"E(3) and permutation symmetry: energy max err {err['energy_max_abs']:.2e} kcal/mol (tol "
                    f"{e_tol:.2e}), forces max err {err['force_max_abs']:.2e} (tol {f_tol:.2e}; rotations "
                    f"{err['force_rotation_max_abs']:.2e}, reflection {err['force_reflection_max_abs']:.2e}, "
                    f"translation {err['force_translation_max_abs']:.2e}, permutation "
                    f"{err['force_permutation_max_abs']:.2e})")
    if entry.is_c4_field_forecaster:
        ok, relative, report = check_c4_equivariance(model, entry, num_samples=min(num_samples, 2), seed=seed)
        return ok, (f"C4 equivariance relative err {relative:.2e} (max {report.max_error:.2e}, output scale "
                    f"{report.scale:.2e}; tol {C4_RELATIVE_TOLERANCE:.0e} relative, quarter turns 1, 2, 3)")
    if entry.is_scale_field_forecaster:  # scale equivariance is approximate: see keras_relaxeq.zoo.verify_scale
        ok, _, detail = check_translation_equivariance(model, entry, num_samples=min(num_samples, 2), seed=seed)
        return ok, detail
    return None


def guard_probe_inputs(model, entry, num_points=None, seed=0, batch=2) -> dict:
    """Valid float32 inputs for every serving input (``batch`` rows; free axes: the entry's
    ``num_points``, else 64), standard normal."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = num_points or entry.num_points or 64
    feed = {}
    for key, spec in model.input_specs.items():
        dims = spec.shape.as_list()
        shape = [batch] + [n if d is None else d for d in dims[1:]]
        feed[key] = rng.normal(size=shape).astype(spec.dtype.as_numpy_dtype)
    return feed


def check_input_guards(model, entry, *, num_points=None, seed=0) -> tuple[bool, str]:
    """The serving function refuses what ``entry.input_checks`` promises: ``"shape"`` a last axis
    of 6 instead of 3 (xyz + normals) and an extra leading axis on the primary input,
    ``"finite"`` a NaN in it; each must fail with ``InvalidArgumentError`` (not answer).
    Returns ``(ok, detail)``."""
    import numpy as np
    import tensorflow as tf

    good = guard_probe_inputs(model, entry, num_points, seed)
    key = model.input_name
    probes = []
    if entry.is_field_forecaster:
        return _check_field_guards(model, entry, good, key)
    if entry.is_potential_model:
        return _check_potential_guards(model, entry)
    if "shape" in entry.input_checks:
        x = good[key]
        probes.append((f"{key} last axis {x.shape[-1] + 3}",
                       np.concatenate([x, x[..., :3]], axis=-1)))
        probes.append((f"{key} rank {x.ndim + 1}", x[None]))
    if "finite" in entry.input_checks:
        x = good[key].copy()
        x.flat[1] = np.nan
        probes.append((f"NaN in {key}", x))
    model.signature(**{k: tf.constant(v) for k, v in good.items()})  # the valid input is answered
    accepted = []
    for label, bad in probes:
        try:
            model.signature(**{k: tf.constant(bad if k == key else v) for k, v in good.items()})
        except tf.errors.InvalidArgumentError:
            continue
        accepted.append(label)
    if accepted:
        return False, f"the serving function answered invalid inputs ({', '.join(accepted)})"
    return True, f"input checks ok ({', '.join(label for label, _ in probes)} refused)"


def _check_field_guards(model, entry, good, key) -> tuple[bool, str]:
    """:func:`check_input_guards` for a field forecaster: another number of frames, another grid, three
    velocity components, an extra and a missing batch axis, NaN and Inf must each fail with an
    ``InvalidArgumentError`` whose message names the input (``serving input frames ...`` from the serving
    function, or ``Input frames ...`` from the model's own ``InputCheck``)."""
    import numpy as np
    import tensorflow as tf

    x = good[key]
    t, n = x.shape[1], x.shape[2]
    probes = []
    if "shape" in entry.input_checks:
        probes += [(f"{t - 1} frames", x[:, 1:]), (f"{n // 2}x{n // 2} grid", x[:, :, ::2, ::2]),
                   ("3 components", np.concatenate([x, x[..., :1]], axis=-1)),
                   ("extra leading axis", x[None]), ("no batch axis", x[0])]
    if "finite" in entry.input_checks:
        for label, value in (("NaN", np.nan), ("Inf", np.inf)):
            bad = x.copy()
            bad[-1, -1, n // 2, n // 2, 1] = value
            probes.append((label, bad))
    model.signature(**{key: tf.constant(x)})  # the valid input is answered
    # the serving function's check or the model's InputCheck must refuse each, naming the input
    accepted, unclear = _refusals(model, [(label, {key: bad}) for label, bad in probes], (key,))
    if accepted:
        return False, f"the serving function answered invalid inputs ({', '.join(accepted)})"
    if unclear:
        return False, f"refused without naming the input {key!r}: {'; '.join(unclear)}"
    return True, f"input checks ok ({', '.join(label for label, _ in probes)} refused, naming {key!r})"


def _refusals(model, probes, names) -> tuple[list[str], list[str]]:
    """Feed each ``(label, feed)`` of ``probes``: the labels answered, and those refused with an
    ``InvalidArgumentError`` that names none of ``names`` (``serving input X ...`` or ``Input X ...``)."""
    import tensorflow as tf

    accepted, unclear = [], []
    for label, feed in probes:
        try:
            model.signature(**{k: tf.constant(v) for k, v in feed.items()})
        except tf.errors.InvalidArgumentError as exc:
            if not any(f"serving input {n} " in exc.message or f"Input {n} " in exc.message for n in names):
                lines = [ln.strip() for ln in exc.message.splitlines() if ln.strip()]
                unclear.append(f"{label}: {(lines or [''])[-1][:120]}")
            continue
        accepted.append(label)
    return accepted, unclear


def _check_potential_guards(model, entry) -> tuple[bool, str]:
    """:func:`check_input_guards` for an interatomic potential: one atom fewer, 4 coordinates, an extra and a
    missing batch axis, NaN and Inf positions, and atomic numbers of another molecule must each fail with an
    ``InvalidArgumentError`` naming the input."""
    import numpy as np
    import tensorflow as tf

    positions, numbers = potential_probe_molecules(entry, num_molecules=2)
    good = {"positions": positions.astype(np.float32), "atomic_numbers": numbers}
    model.signature(**{k: tf.constant(v) for k, v in good.items()})  # the valid input is answered
    probes = []
    if "shape" in entry.input_checks:
        probes += [("one atom fewer", {"positions": positions[:, 1:].astype(np.float32),
                                       "atomic_numbers": numbers[:, 1:]}),
                   ("4 coordinates", dict(good, positions=np.concatenate(
                       [good["positions"], good["positions"][..., :1]], axis=-1))),
                   ("extra leading axis", {k: v[None] for k, v in good.items()}),
                   ("no batch axis", {k: v[0] for k, v in good.items()})]
    if "finite" in entry.input_checks:
        for label, value in (("NaN", np.nan), ("Inf", np.inf)):
            bad = good["positions"].copy()
            bad[-1, -1, 0] = value
            probes.append((label, dict(good, positions=bad)))
    if "composition" in entry.input_checks:
        other = numbers.copy()
        other[:, 0] = 1 if other[0, 0] != 1 else 6
        probes.append(("another molecule's atomic numbers", dict(good, atomic_numbers=other)))
    accepted, unclear = _refusals(model, probes, ("positions", "atomic_numbers"))
    if accepted:
        return False, f"the serving function answered invalid inputs ({', '.join(accepted)})"
    if unclear:
        return False, f"refused without naming the input: {'; '.join(unclear)}"
    return True, f"input checks ok ({', '.join(label for label, _ in probes)} refused, naming the input)"


def signature_def_specs(path) -> dict:
    """``{"inputs" | "outputs": {name: (dtype, shape)}}`` of ``serving_default`` in the SavedModel's
    ``saved_model.pb`` (tag ``serve``), read from the ``SignatureDef`` as ``saved_model_cli show`` prints
    it (``DT_FLOAT``, ``-1`` for a free axis)."""
    from pathlib import Path

    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString((Path(path) / "saved_model.pb").read_bytes())
    graphs = [mg for mg in sm.meta_graphs if "serve" in mg.meta_info_def.tags]
    if not graphs or "serving_default" not in graphs[0].signature_def:
        raise AssertionError(f"{path}: no MetaGraph tagged 'serve' with a serving_default SignatureDef")
    sig = graphs[0].signature_def["serving_default"]

    def spec(info):
        shape = None if info.tensor_shape.unknown_rank else [d.size for d in info.tensor_shape.dim]
        return types_pb2.DataType.Name(info.dtype), shape

    return {"inputs": {k: spec(v) for k, v in sig.inputs.items()},
            "outputs": {k: spec(v) for k, v in sig.outputs.items()}}


def check_signature_def(path, entry) -> str:
    """The ``SignatureDef`` (:func:`signature_def_specs`) against the entry's inputs and outputs (float32
    ``DT_FLOAT``; ``-1`` where the catalogue says ``null``). Raises ``AssertionError``; returns one line."""
    import tensorflow as tf
    from tensorflow.core.framework import types_pb2

    specs = signature_def_specs(path)
    for kind, want in (("inputs", entry.input_signature), ("outputs", entry.outputs)):
        if set(specs[kind]) != set(want):
            raise AssertionError(f"SignatureDef {kind} {sorted(specs[kind])}, catalogue says {sorted(want)}")
        for name, w in want.items():
            dtype, shape = specs[kind][name]
            wanted = [-1 if d is None else d for d in w.get("shape", [])]
            want_dtype = types_pb2.DataType.Name(tf.as_dtype(w.get("dtype", "float32")).as_datatype_enum)
            if dtype != want_dtype or (w.get("shape") and shape != wanted):
                raise AssertionError(f"SignatureDef {kind[:-1]} {name!r}: {dtype} {shape}, catalogue says "
                                     f"{w.get('dtype')} {wanted}")
    return "SignatureDef ok (" + "; ".join(
        f"{n} {tuple(specs[k][n][1])}" for k in ("inputs", "outputs") for n in sorted(specs[k])) + ")"


def check_served(model, entry, *, num_samples=4, num_points=None, atol=1e-4, rtol=1e-3, seed=0,
                 steps: list | None = None) -> list[str]:
    """Signature, symmetry and input checks of a loaded entry, in that order: appends each step
    passed (one line) to ``steps`` and returns it; raises ``AssertionError`` at the first failure."""
    steps = [] if steps is None else steps
    problems = check_signature(model, entry)
    if problems:
        raise AssertionError("signature: " + "; ".join(problems))
    steps.append("signature ok")
    checked = check_symmetry(model, entry, num_samples=num_samples, num_points=num_points, atol=atol,
                             rtol=rtol, seed=seed)
    if checked is None:
        steps.append(f"invariance check n/a for task {entry.task}")
    else:
        ok, detail = checked
        if not ok:
            raise AssertionError(detail)
        steps.append(detail)
    if entry.input_checks:
        ok, detail = check_input_guards(model, entry, num_points=num_points, seed=seed)
        if not ok:
            raise AssertionError(detail)
        steps.append(detail)
    else:
        steps.append("input checks n/a (published without)")
    return steps


def verify_entries(names=(), *, index=None, out, cache_dir=None, base_url=None, offline=None,
                   progress=True, max_tries=None, num_samples=4, num_points=None, atol=1e-4,
                   rtol=1e-3, seed=0) -> int:
    """Check every version of the entries ``names`` (default: the whole catalogue), one line per
    entry on ``out`` (``OK`` / ``FAIL`` with the steps passed), then a count; returns the number
    of failed entries. Unknown names raise ``UnknownModelError`` (with close matches)."""
    from keras_relaxeq.zoo import registry
    from keras_relaxeq.zoo.cache import ensure_artifact
    from keras_relaxeq.zoo.fresh import FreshProcessCheck, valid_inputs
    from keras_relaxeq.zoo.loading import ServingModel

    cat = registry.load_index(index)
    if names:
        for n in names:
            cat.get(n)  # UnknownModelError with suggestions
        entries = [e for e in cat.entries if e.name in set(names)]
    else:
        entries = list(cat.entries)
    entries.sort(key=lambda e: (e.name, e.version))
    if not entries:
        print(f"No entries in the catalogue {cat.path}; nothing to verify.", file=out)
        return 0
    failures = 0
    for e in entries:
        label = f"{e.name} v{e.version}"
        steps, fresh = [], None
        try:
            path = ensure_artifact(e, e.artifact, catalogue=cat, cache_dir=cache_dir,
                                   base_url=base_url, offline=offline, progress=progress,
                                   max_tries=max_tries)
            steps.append("sha256 ok")
            # started first: the child's TensorFlow import overlaps the checks here
            if e.is_field_forecaster or e.is_potential_model:
                fresh = FreshProcessCheck(path, valid_inputs(e, seed=seed))
            model = ServingModel(path, e)
            steps.append("loads")
            check_served(model, e, num_samples=num_samples, num_points=num_points, atol=atol,
                         rtol=rtol, seed=seed, steps=steps)
            if e.is_scale_field_forecaster:  # the .keras file: parity, the published scale-step error
                keras_path = None if e.keras_artifact is None else ensure_artifact(
                    e, e.keras_artifact, catalogue=cat, cache_dir=cache_dir, base_url=base_url, offline=offline,
                    progress=progress, max_tries=max_tries, extract=False)
                check_keras_artifact(model, e, keras_path, seed=seed, steps=steps)
            if fresh is not None:
                steps.append(check_signature_def(path, e))
                steps.append(fresh.finish(model))
            print(f"OK    {label}: " + ", ".join(steps), file=out)
        except Exception as exc:  # report every entry, then fail
            if fresh is not None:
                fresh.stop()
            failures += 1
            done = (", ".join(steps) + "; ") if steps else ""
            print(f"FAIL  {label}: {done}{type(exc).__name__}: {exc}", file=out)
    print(f"{len(entries) - failures}/{len(entries)} entries passed.", file=out)
    return failures
