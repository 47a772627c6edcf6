"""``relaxeq`` command line: the model zoo.

    relaxeq zoo list [--all-versions] [--json]
    relaxeq zoo info NAME [--version V] [--card] [--json]
    relaxeq zoo download NAME [--version V] [--cache-dir DIR] [--base-url URL] [--offline]
    relaxeq zoo verify [NAME ...] [--atol A] [--rtol R] [...]   # hash, load, signature, symmetry, input checks
    relaxeq zoo serve-config --base-dir DIR [NAME ...] [--download] [--model-base-path-prefix /models] [--link]
    relaxeq zoo publish RUN_DIR [--name N] [--version V] [--model-file F] [--max-val-samples N]

Every ``zoo`` command takes ``--index PATH`` (default ``$KERAS_RELAXEQ_ZOO_INDEX`` or the
repository's ``zoo/index.json``). Exit status: 0 success, 1 a zoo error or a failed check,
2 usage error; every error is one line on stderr. ``--help``, ``list``, ``info``, ``download``
and ``serve-config`` do not import TensorFlow (``verify`` and ``publish`` load models).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (exit status 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_at_least(minimum: int):
    """An argparse ``type``: an integer ``>= minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _tolerance(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _add_fetch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", help="cache root (default $KERAS_RELAXEQ_CACHE or "
                                       "~/.keras/keras_relaxeq)")
    p.add_argument("--base-url", help="mirror: http(s) URL, file:// URL or local directory "
                                      "(default $KERAS_RELAXEQ_ZOO_URL, else the zoo/ folder)")
    p.add_argument("--offline", action="store_true", default=None,
                   help="no network access (also $KERAS_RELAXEQ_OFFLINE=1); cache and local "
                        "mirrors only")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar")
    p.add_argument("--max-tries", type=_positive_int, default=None,
                   help="tries per download for transient errors (default 5)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="relaxeq", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    zoo = sub.add_parser("zoo", help="model zoo: list, inspect, download, verify, serve")
    zoo.add_argument("--index", help="catalogue file (default $KERAS_RELAXEQ_ZOO_INDEX or "
                                     "zoo/index.json)")
    zsub = zoo.add_subparsers(dest="zoo_command")

    p = zsub.add_parser("list", help="list the published models")
    p.add_argument("--all-versions", action="store_true", help="one line per version")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = zsub.add_parser("info", help="show one entry (metadata, metrics, card)")
    p.add_argument("name")
    p.add_argument("--version", type=_positive_int, default=None,
                   help="version (default: the latest)")
    p.add_argument("--card", action="store_true", help="print the model card")
    p.add_argument("--json", action="store_true", help="print the raw catalogue entry")

    p = zsub.add_parser("download", help="download, verify and extract one entry")
    p.add_argument("name")
    p.add_argument("--version", type=_positive_int, default=None,
                   help="version (default: the latest)")
    _add_fetch_args(p)

    p = zsub.add_parser("verify", help="check hash, loading, serving signature, the symmetry "
                                       "(rotation invariance of point-cloud classifiers, E(3) "
                                       "equivariance of N-body models) and the serving input checks "
                                       "(mis-shaped and non-finite inputs refused)")
    p.add_argument("names", nargs="*", help="entries to check (default: all, every version)")
    _add_fetch_args(p)
    p.add_argument("--num-samples", type=_positive_int, default=4,
                   help="point clouds (classifiers) or N-body systems per check")
    p.add_argument("--num-points", type=_positive_int, default=None,
                   help="points per cloud (default: the entry's input.num_points, else 256)")
    p.add_argument("--atol", type=_tolerance, default=1e-4)
    p.add_argument("--rtol", type=_tolerance, default=1e-3,
                   help="tolerance on logits / predicted positions: |a-b| <= atol + rtol*max|a| "
                        "(float32)")
    p.add_argument("--seed", type=_non_negative_int, default=0)

    p = zsub.add_parser("serve-config", help="lay out downloaded entries for TF Serving and "
                                             "write models.config")
    p.add_argument("names", nargs="*", metavar="NAME",
                   help="entries to serve (default: every entry of the catalogue)")
    p.add_argument("--download", action="store_true",
                   help="download (and verify) the entries that are not in the cache yet")
    p.add_argument("--no-progress", action="store_true", help="no progress bar while downloading")
    p.add_argument("--base-dir", required=True, help="TF Serving model base directory")
    p.add_argument("--cache-dir", help="cache root to take the models from")
    p.add_argument("--model-base-path-prefix", default=None,
                   help="path of --base-dir as TF Serving sees it (e.g. /models in the docker "
                        "image); default: absolute --base-dir")
    p.add_argument("--link", action="store_true",
                   help="symlink versions to the cache instead of copying (not for docker "
                        "bind mounts)")

    p = zsub.add_parser("publish", help="publish a recipes/modelnet40.py or "
                                        "recipes/segnn_nbody.py run: export, pack, measure the "
                                        "artifact, write the card and the entry")
    from keras_relaxeq.zoo.publish import add_arguments

    add_arguments(p)
    return parser


# ---------------------------------------------------------------------------------------------
# Commands.
# ---------------------------------------------------------------------------------------------


def _fmt_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _headline_metric(entry) -> str:
    if not entry.metrics:
        return "-"
    m = entry.metrics[0]
    return f"{m['name']}={m['value']}"


def cmd_list(args, out) -> int:
    from keras_relaxeq.zoo import registry

    cat = registry.load_index(args.index)
    entries = sorted(cat.entries, key=lambda e: (e.name, e.version))
    if not args.all_versions:
        latest = {}
        for e in entries:
            latest[e.name] = e
        entries = list(latest.values())
    if args.json:
        print(json.dumps([{"name": e.name, "version": e.version, "task": e.task,
                           "size": e.artifact.size, "metrics": list(e.metrics)}
                          for e in entries], indent=2), file=out)
        return 0
    if not entries:
        print(f"No models in the catalogue {cat.path} yet.", file=out)
        return 0
    rows = [("NAME", "VERSION", "TASK", "SIZE", "METRIC")]
    rows += [(e.name, str(e.version), e.task, _fmt_size(e.artifact.size), _headline_metric(e))
             for e in entries]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip(), file=out)
    return 0


def cmd_info(args, out) -> int:
    from keras_relaxeq.zoo import registry

    cat = registry.load_index(args.index)
    e = cat.get(args.name, args.version)
    if args.json:
        print(json.dumps(e.to_dict(), indent=2), file=out)
        return 0
    lines = [
        f"{e.name} v{e.version} (versions: {', '.join(map(str, cat.versions(e.name)))})",
        f"  task:         {e.task}",
        f"  architecture: {e.architecture.get('class')} {json.dumps(e.architecture.get('config'))}",
        f"  group:        {e.group}    dataset: {e.dataset}",
        *[f"  input:        {k} {v.get('dtype')} {v.get('shape')}"
          for k, v in e.input_signature.items()],
        f"  preprocessing: {e.input.get('preprocessing')}",
        f"  outputs:      {', '.join(e.outputs)}",
        f"  artifact:     {e.artifact.file} ({_fmt_size(e.artifact.size)}, sha256 "
        f"{e.artifact.sha256})",
    ]
    for m in e.metrics:
        lines.append(f"  metric:       {m['name']} = {m['value']} ({m.get('split', '')}"
                     f"{', ' if m.get('split') else ''}{m['protocol']})")
    lines += [f"  license:      {e.license}", f"  citation:     {e.citation}"]
    if e.card:
        lines.append(f"  card:         {cat.root / e.card}")
    print("\n".join(lines), file=out)
    if args.card:
        print("", file=out)
        print(registry.model_card(e.name, e.version, index=args.index), file=out)
    return 0


def _fetch_kwargs(args) -> dict:
    return dict(cache_dir=args.cache_dir, base_url=args.base_url, offline=args.offline,
                progress=args.progress, max_tries=args.max_tries, index=args.index)


def cmd_download(args, out) -> int:
    from keras_relaxeq.zoo.download import download

    path = download(args.name, args.version, **_fetch_kwargs(args))
    print(path, file=out)
    return 0


def _check_signature(model, entry) -> list[str]:
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
    """Logits on random clouds vs. on randomly rotated copies: ``(ok, max_err, mean_err, tol)``."""
    import numpy as np
    import tensorflow as tf

    from keras_relaxeq.groups import random_rotations

    spec = model.input_specs[entry.input_name]
    shape = spec.shape.as_list()
    n = num_points or entry.input.get("num_points") or (shape[1] if len(shape) > 1 and shape[1]
                                                        else 256)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_samples, n, 3))
    x -= x.mean(axis=1, keepdims=True)
    x /= np.linalg.norm(x, axis=-1).max(axis=1)[:, None, None]  # centred, in the unit sphere
    rot = random_rotations(num_samples, seed=seed, dtype=tf.float64).numpy()
    xr = np.einsum("bij,bnj->bni", rot, x)  # rotate in float64
    a = model(x.astype(np.float32))["logits"].astype(np.float64)
    b = model(xr.astype(np.float32))["logits"].astype(np.float64)
    err = np.abs(a - b)
    tol = atol + rtol * float(np.abs(a).max())
    return bool(err.max() <= tol), float(err.max()), float(err.mean()), tol


def e3_equivariance_errors(predict, loc, vel, charges, *, num_rotations: int = 2, seed: int = 0,
                           translation_scale: float = 1.0) -> dict:
    """E(3) equivariance of an N-body position predictor on the systems ``loc, vel, charges``.

    ``predict(loc, vel, charges)`` (float32 arrays ``[B, N, 3]``, ``[B, N, 3]``, ``[B, N, 1]``)
    returns the predicted positions ``[B, N, 3]``. Each system is moved by ``num_rotations``
    Haar-random rotations and one reflection (a random rotation composed with the mirror
    ``z -> -z``), each combined with a random translation ``t ~ N(0, translation_scale^2)`` of the
    positions (velocities rotate, charges are invariant), and by a translation alone; the
    error of a move ``x -> Q x + t`` is ``|predict(Q x + t) - (Q predict(x) + t)|``. Moves are
    applied in float64 and fed as float32. Returns the max / mean absolute error (overall and per
    kind of move), the output scale ``max |Q predict(x) + t|`` and ``relative`` = max / scale.
    """
    import numpy as np
    import tensorflow as tf

    from keras_relaxeq.groups import random_rotations

    loc, vel, charges = (np.asarray(a, np.float64) for a in (loc, vel, charges))
    b = len(loc)
    ref = np.asarray(predict(loc.astype(np.float32), vel.astype(np.float32),
                             charges.astype(np.float32)), np.float64)
    rots = random_rotations(b * (num_rotations + 1), seed=seed, dtype=tf.float64).numpy()
    rots = rots.reshape(num_rotations + 1, b, 3, 3)
    mirror = np.diag([1.0, 1.0, -1.0])
    moves = [("rotation", rots[r]) for r in range(num_rotations)]
    moves += [("reflection", mirror @ rots[num_rotations]), ("translation", np.eye(3)[None])]
    rng = np.random.default_rng(seed)
    errors, scale = {}, 0.0
    for kind, q in moves:
        q = np.broadcast_to(q, (b, 3, 3))
        t = rng.normal(scale=translation_scale, size=(b, 1, 3))
        move = lambda x: np.einsum("bij,bnj->bni", q, x)  # noqa: E731  (x -> Q x per system)
        got = np.asarray(predict((move(loc) + t).astype(np.float32), move(vel).astype(np.float32),
                                 charges.astype(np.float32)), np.float64)
        want = move(ref) + t
        errors.setdefault(kind, []).append(np.abs(got - want))
        scale = max(scale, float(np.abs(want).max()))
    by_kind = {k: np.concatenate([e.ravel() for e in v]) for k, v in errors.items()}
    every = np.concatenate(list(by_kind.values()))
    if not np.all(np.isfinite(every)):
        raise AssertionError("E(3) equivariance check: the predictions are not finite")
    out = {"max_abs": float(every.max()), "mean_abs": float(every.mean()), "scale": scale,
           "relative": float(every.max()) / max(scale, 1e-12), "num_systems": b,
           "num_rotations": int(num_rotations), "translation_scale": float(translation_scale)}
    out.update({f"{k}_max_abs": float(v.max()) for k, v in by_kind.items()})
    return out


def _nbody_predict(model):
    """``predict(loc, vel, charges)`` of a :class:`ServingModel` of an N-body entry."""
    return lambda loc, vel, charges: model(loc=loc, vel=vel, charges=charges)["loc"]


def check_e3_equivariance(model, entry, *, num_samples=4, atol=1e-4, rtol=1e-3,
                          seed=0) -> tuple[bool, dict, float]:
    """E(3) equivariance of an N-body entry's predicted positions on synthetic systems (``loc``,
    ``vel`` standard normal, charges +-1): ``(ok, errors, tol)``, ``tol = atol + rtol * scale``."""
    import numpy as np

    n = entry.input_signature["loc"].get("shape", [None, None, 3])[1] or 5
    rng = np.random.default_rng(seed)
    loc = rng.normal(size=(num_samples, n, 3))
    vel = rng.normal(size=(num_samples, n, 3))
    charges = rng.choice([-1.0, 1.0], size=(num_samples, n, 1))
    errors = e3_equivariance_errors(_nbody_predict(model), loc, vel, charges, seed=seed)
    tol = atol + rtol * errors["scale"]
    return bool(errors["max_abs"] <= tol), errors, tol


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
    return None


def _guard_probe_inputs(model, entry, num_points=None, seed=0, batch=2) -> dict:
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

    good = _guard_probe_inputs(model, entry, num_points, seed)
    key = model.input_name
    probes = []
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


def cmd_verify(args, out) -> int:
    from keras_relaxeq.zoo import registry
    from keras_relaxeq.zoo.download import ServingModel, ensure_artifact

    cat = registry.load_index(args.index)
    if args.names:
        for n in args.names:
            cat.get(n)  # UnknownModelError with suggestions
        entries = [e for e in cat.entries if e.name in set(args.names)]
    else:
        entries = list(cat.entries)
    entries.sort(key=lambda e: (e.name, e.version))
    if not entries:
        print(f"No entries in the catalogue {cat.path}; nothing to verify.", file=out)
        return 0
    failures = 0
    for e in entries:
        label = f"{e.name} v{e.version}"
        steps = []
        try:
            path = ensure_artifact(e, e.artifact, catalogue=cat, cache_dir=args.cache_dir,
                                   base_url=args.base_url, offline=args.offline,
                                   progress=args.progress, max_tries=args.max_tries)
            steps.append("sha256 ok")
            model = ServingModel(path, e)
            steps.append("loads")
            problems = _check_signature(model, e)
            if problems:
                raise AssertionError("signature: " + "; ".join(problems))
            steps.append("signature ok")
            checked = check_symmetry(model, e, num_samples=args.num_samples,
                                     num_points=args.num_points, atol=args.atol, rtol=args.rtol,
                                     seed=args.seed)
            if checked is None:
                steps.append(f"invariance check n/a for task {e.task}")
            else:
                ok, detail = checked
                if not ok:
                    raise AssertionError(detail)
                steps.append(detail)
            if e.input_checks:
                ok, detail = check_input_guards(model, e, num_points=args.num_points, seed=args.seed)
                if not ok:
                    raise AssertionError(detail)
                steps.append(detail)
            else:
                steps.append("input checks n/a (published without)")
            print(f"OK    {label}: " + ", ".join(steps), file=out)
        except Exception as exc:  # report every entry, then fail
            failures += 1
            done = (", ".join(steps) + "; ") if steps else ""
            print(f"FAIL  {label}: {done}{type(exc).__name__}: {exc}", file=out)
    print(f"{len(entries) - failures}/{len(entries)} entries passed.", file=out)
    return 1 if failures else 0


def _check_serving_base(base: Path) -> None:
    """Before anything is copied: ``base`` (or an existing parent) is a directory, and an existing
    ``models.config`` in it can be parsed and updated."""
    from keras_relaxeq.export.serving import MODELS_CONFIG, read_models_config
    from keras_relaxeq.zoo.errors import ZooError

    for p in (base, *base.parents):
        if p.exists():
            if not p.is_dir():
                raise ZooError(f"--base-dir {base}: {p} is a file, not a directory; pass a "
                               "directory (created if missing).")
            break
    config = base / MODELS_CONFIG
    try:
        read_models_config(config)
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ZooError(f"{config} cannot be updated ({str(detail).rstrip('.')}); fix or remove it "
                       "and run again. Nothing was copied.") from None


def cmd_serve_config(args, out) -> int:
    from keras_relaxeq.export.serving import update_models_config
    from keras_relaxeq.zoo import registry
    from keras_relaxeq.zoo.download import (
        archive_manifest,
        cached_path,
        download,
        entry_cache_dir,
        tree_problems,
    )
    from keras_relaxeq.zoo.errors import ZooError

    cat = registry.load_index(args.index)
    base = Path(args.base_dir).expanduser()
    entries = sorted(cat.entries, key=lambda e: (e.name, e.version))
    if args.names:
        wanted = {cat.get(name).name for name in args.names}  # unknown names: typed error, close matches
        entries = [e for e in entries if e.name in wanted]
    _check_serving_base(base)
    prefix = args.model_base_path_prefix or str(base.resolve())
    served = {}
    for e in entries:
        src = cached_path(e.name, e.version, cache_dir=args.cache_dir, index=args.index)
        if src is None and args.download:
            src = download(e.name, e.version, cache_dir=args.cache_dir, index=args.index,
                           progress=not args.no_progress)
        if src is None:
            print(f"skip  {e.name} v{e.version}: not downloaded (relaxeq zoo download "
                  f"{e.name} --version {e.version}, or serve-config --download)", file=out)
            continue
        dest = base / e.name / str(e.version)
        if dest.exists() or dest.is_symlink():
            manifest = archive_manifest(entry_cache_dir(e, args.cache_dir) / e.artifact.basename)
            problems = tree_problems(dest, manifest)
            if problems:
                raise ZooError(f"{dest} exists and differs from the verified "
                               f"{e.name} v{e.version} ({'; '.join(problems[:3])}); "
                               "remove it and run again.")
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            if args.link:
                os.symlink(src.resolve(), dest, target_is_directory=True)
            else:
                tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{e.version}-", dir=dest.parent))
                try:
                    shutil.copytree(src, tmp / "v")  # copies: never share inodes with the cache
                    os.replace(tmp / "v", dest)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
        served[e.name] = prefix.rstrip("/") + "/" + e.name
        print(f"serve {e.name} v{e.version}: {dest}", file=out)
    if not served:
        print("No downloaded entries; models.config not written. Download some with "
              "`relaxeq zoo download NAME`, or add --download.", file=out)
        return 0
    config = update_models_config(base, served)
    print(f"wrote {config}", file=out)
    print("Serve with:\n  docker run -p 8501:8501 -v "
          f"{base.resolve()}:/models -t tensorflow/serving "
          "--model_config_file=/models/models.config"
          + ("" if args.model_base_path_prefix == "/models" else
             "\n  (write the config with --model-base-path-prefix /models for that mount)"),
          file=out)
    return 0


def cmd_publish(args, out) -> int:
    from keras_relaxeq.zoo.publish import run_from_args

    return run_from_args(args, out)


COMMANDS = {
    "list": cmd_list,
    "info": cmd_info,
    "download": cmd_download,
    "verify": cmd_verify,
    "serve-config": cmd_serve_config,
    "publish": cmd_publish,
}


def main(argv=None, out=None) -> int:
    """Entry point of the ``relaxeq`` console script; returns the exit status."""
    from keras_relaxeq.zoo.errors import ZooError

    out = out or sys.stdout
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "zoo" or not getattr(args, "zoo_command", None):
        print(f"relaxeq: error: name a command: relaxeq zoo {{{','.join(COMMANDS)}}} (see relaxeq "
              "--help)", file=sys.stderr)
        return 2
    try:
        if hasattr(args, "max_tries"):  # the fetching commands: bad settings fail once, up front
            from keras_relaxeq.zoo.download import RetryPolicy, is_offline

            is_offline(args.offline)
            RetryPolicy.resolve(args.max_tries)
        return COMMANDS[args.zoo_command](args, out)
    except ZooError as exc:
        message = str(exc)
    except OSError as exc:  # a path given by the user (or the disk) failed
        message = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    except KeyboardInterrupt:
        return 130
    print("error: " + " ".join(message.split()), file=sys.stderr)
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
