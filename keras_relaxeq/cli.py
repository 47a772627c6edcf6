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

This module parses the arguments and prints listings; the work is done by ``keras_relaxeq.zoo``
(``verify``, ``serve``, ``publish``, ``cache``). Imports flow one way: cli -> zoo -> testing / export.
"""

from __future__ import annotations

import argparse
import json
import sys


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
    p.add_argument("--cache-dir", help="cache root (default $KERAS_RELAXEQ_CACHE or ~/.keras/keras_relaxeq)")
    p.add_argument(
        "--base-url",
        help="mirror: http(s) URL, file:// URL or local directory "
        "(default $KERAS_RELAXEQ_ZOO_URL, else the zoo/ folder)",
    )
    p.add_argument(
        "--offline",
        action="store_true",
        default=None,
        help="no network access (also $KERAS_RELAXEQ_OFFLINE=1); cache and local mirrors only",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument(
        "--max-tries", type=_positive_int, default=None, help="tries per download for transient errors (default 5)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="relaxeq", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    zoo = sub.add_parser("zoo", help="model zoo: list, inspect, download, verify, serve")
    zoo.add_argument("--index", help="catalogue file (default $KERAS_RELAXEQ_ZOO_INDEX or zoo/index.json)")
    zsub = zoo.add_subparsers(dest="zoo_command")

    p = zsub.add_parser("list", help="list the published models")
    p.add_argument("--all-versions", action="store_true", help="one line per version")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = zsub.add_parser("info", help="show one entry (metadata, metrics, card)")
    p.add_argument("name")
    p.add_argument("--version", type=_positive_int, default=None, help="version (default: the latest)")
    p.add_argument("--card", action="store_true", help="print the model card")
    p.add_argument("--json", action="store_true", help="print the raw catalogue entry")

    p = zsub.add_parser("download", help="download, verify and extract one entry")
    p.add_argument("name")
    p.add_argument("--version", type=_positive_int, default=None, help="version (default: the latest)")
    _add_fetch_args(p)

    p = zsub.add_parser(
        "verify",
        help="check hash, loading, serving signature, the symmetry "
        "(rotation invariance of point-cloud classifiers, E(3) "
        "equivariance of N-body models) and the serving input checks "
        "(mis-shaped and non-finite inputs refused)",
    )
    p.add_argument("names", nargs="*", help="entries to check (default: all, every version)")
    _add_fetch_args(p)
    p.add_argument(
        "--num-samples", type=_positive_int, default=4, help="point clouds (classifiers) or N-body systems per check"
    )
    p.add_argument(
        "--num-points",
        type=_positive_int,
        default=None,
        help="points per cloud (default: the entry's input.num_points, else 256)",
    )
    p.add_argument("--atol", type=_tolerance, default=1e-4)
    p.add_argument(
        "--rtol",
        type=_tolerance,
        default=1e-3,
        help="tolerance on logits / predicted positions: |a-b| <= atol + rtol*max|a| (float32)",
    )
    p.add_argument("--seed", type=_non_negative_int, default=0)

    p = zsub.add_parser("serve-config", help="lay out downloaded entries for TF Serving and write models.config")
    p.add_argument("names", nargs="*", metavar="NAME", help="entries to serve (default: every entry of the catalogue)")
    p.add_argument(
        "--download", action="store_true", help="download (and verify) the entries that are not in the cache yet"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar while downloading")
    p.add_argument("--base-dir", required=True, help="TF Serving model base directory")
    p.add_argument("--cache-dir", help="cache root to take the models from")
    p.add_argument(
        "--model-base-path-prefix",
        default=None,
        help="path of --base-dir as TF Serving sees it (e.g. /models in the docker "
        "image); default: absolute --base-dir",
    )
    p.add_argument(
        "--link",
        action="store_true",
        help="symlink versions to the cache instead of copying (not for docker bind mounts)",
    )

    p = zsub.add_parser(
        "publish",
        help="publish a recipes/modelnet40.py, recipes/segnn_nbody.py or "
        "recipes/smoke_plume.py run: export, pack, measure the "
        "artifact, write the card and the entry",
    )
    from keras_relaxeq.zoo.publish.command import add_arguments

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
        print(
            json.dumps(
                [
                    {
                        "name": e.name,
                        "version": e.version,
                        "task": e.task,
                        "size": e.artifact.size,
                        "metrics": list(e.metrics),
                    }
                    for e in entries
                ],
                indent=2,
            ),
            file=out,
        )
        return 0
    if not entries:
        print(f"No models in the catalogue {cat.path} yet.", file=out)
        return 0
    rows = [("NAME", "VERSION", "TASK", "SIZE", "METRIC")]
    rows += [(e.name, str(e.version), e.task, _fmt_size(e.artifact.size), _headline_metric(e)) for e in entries]
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
        *[f"  input:        {k} {v.get('dtype')} {v.get('shape')}" for k, v in e.input_signature.items()],
        f"  preprocessing: {e.input.get('preprocessing')}",
        f"  outputs:      {', '.join(e.outputs)}",
        f"  artifact:     {e.artifact.file} ({_fmt_size(e.artifact.size)}, sha256 {e.artifact.sha256})",
    ]
    for m in e.metrics:
        lines.append(
            f"  metric:       {m['name']} = {m['value']} ({m.get('split', '')}"
            f"{', ' if m.get('split') else ''}{m['protocol']})"
        )
    lines += [f"  license:      {e.license}", f"  citation:     {e.citation}"]
    if e.card:
        lines.append(f"  card:         {cat.root / e.card}")
    print("\n".join(lines), file=out)
    if args.card:
        print("", file=out)
        print(registry.model_card(e.name, e.version, index=args.index), file=out)
    return 0


def _fetch_kwargs(args, index: bool = True) -> dict:
    kwargs = dict(
        cache_dir=args.cache_dir,
        base_url=args.base_url,
        offline=args.offline,
        progress=args.progress,
        max_tries=args.max_tries,
    )
    return dict(kwargs, index=args.index) if index else kwargs


def cmd_download(args, out) -> int:
    from keras_relaxeq.zoo.cache import download

    path = download(args.name, args.version, **_fetch_kwargs(args))
    print(path, file=out)
    return 0


def cmd_verify(args, out) -> int:
    from keras_relaxeq.zoo.verify import verify_entries

    failures = verify_entries(
        args.names,
        index=args.index,
        out=out,
        **_fetch_kwargs(args, index=False),
        num_samples=args.num_samples,
        num_points=args.num_points,
        atol=args.atol,
        rtol=args.rtol,
        seed=args.seed,
    )
    return 1 if failures else 0


def cmd_serve_config(args, out) -> int:
    from keras_relaxeq.zoo.serve import serve_config

    return serve_config(
        args.names,
        base_dir=args.base_dir,
        out=out,
        index=args.index,
        cache_dir=args.cache_dir,
        fetch_missing=args.download,
        progress=not args.no_progress,
        model_base_path_prefix=args.model_base_path_prefix,
        link=args.link,
    )


def cmd_publish(args, out) -> int:
    from keras_relaxeq.zoo.publish.command import run_from_args

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
        print(
            f"relaxeq: error: name a command: relaxeq zoo {{{','.join(COMMANDS)}}} (see relaxeq --help)",
            file=sys.stderr,
        )
        return 2
    try:
        if hasattr(args, "max_tries"):  # the fetching commands: bad settings fail once, up front
            from keras_relaxeq.zoo.settings import RetryPolicy, is_offline

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


#: names that lived here before the zoo package owned them: ``name -> (module, name there)``
_MOVED = {
    "check_invariance": ("keras_relaxeq.zoo.verify", "check_invariance"),
    "check_e3_equivariance": ("keras_relaxeq.zoo.verify", "check_e3_equivariance"),
    "check_symmetry": ("keras_relaxeq.zoo.verify", "check_symmetry"),
    "check_input_guards": ("keras_relaxeq.zoo.verify", "check_input_guards"),
    "_check_signature": ("keras_relaxeq.zoo.verify", "check_signature"),
    "_guard_probe_inputs": ("keras_relaxeq.zoo.verify", "guard_probe_inputs"),
    "_check_serving_base": ("keras_relaxeq.zoo.serve", "check_serving_base"),
    "e3_equivariance_errors": ("keras_relaxeq.testing", "e3_equivariance_errors"),
}


def __getattr__(name):
    """The checks formerly defined here, imported on first use (they need TensorFlow)."""
    if name in _MOVED:
        import importlib

        module, attr = _MOVED[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
