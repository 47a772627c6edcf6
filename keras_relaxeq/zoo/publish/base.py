"""What every recipe family's publisher shares: :class:`PublishError`, the :class:`RecipeRun` steps,
the checks on measured artifacts, the common parts of a model card, and writing into the zoo folder.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

from keras_relaxeq.utils import atomic_write
from keras_relaxeq.zoo import registry

DEFAULT_LICENSE = "Apache-2.0"
#: ``relaxeq zoo verify`` defaults (|a - b| <= atol + rtol * max|a|)
VERIFY_ATOL, VERIFY_RTOL = 1e-4, 1e-3
#: artifact logits vs. the Keras model's: same graph, same float32 kernels
PARITY_ATOL, PARITY_RTOL = 1e-5, 1e-4
#: recipe options that are not training settings (left out of a reconstructed command)
_NOT_OPTIONS = {"resume", "fresh", "cpu_replicas"}
_BOOLEAN_OPTIONAL = {"relaxed", "relaxed_val", "rotate", "branch_bias", "generate"}  # --x / --no-x


class PublishError(ValueError):
    """The run cannot be published (relaxed model, failed check, version already published...)."""


def recipe_command_from_config(cfg: dict, recipe: str = "recipes/modelnet40.py") -> str:
    """A ``recipe`` command line that sets every option of ``cfg`` explicitly (``--model``
    first when the config has one)."""
    parts = ["python", recipe] + (["--model", str(cfg["model"])] if "model" in cfg else [])
    for key, value in cfg.items():
        if key == "model" or key in _NOT_OPTIONS or value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            if key in _BOOLEAN_OPTIONAL:
                parts.append(flag if value else "--no-" + key.replace("_", "-"))
            elif value:
                parts.append(flag)
            continue
        parts += [flag, str(value)]
    return shlex.join(parts)


def _read_index(zoo_dir: Path) -> dict:
    path = zoo_dir / registry.INDEX_FILENAME
    if not path.is_file():
        return {"schema_version": registry.SCHEMA_VERSION, "base_url": None, "models": []}
    doc = json.loads(path.read_text(encoding="utf-8"))
    registry.parse_index(doc, path)  # refuse to extend a broken catalogue
    return doc


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (readers see the old file or the new one)."""
    atomic_write(path, text)


def move_into_place(src: Path, dest: Path) -> None:
    """Rename the staged file ``src`` to ``dest`` (same file system), readable by everyone."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dest)
    os.chmod(dest, 0o644)


def check_parity(meas: dict, what: str) -> None:
    """Refuse an artifact whose outputs differ from the Keras model's (``keras_max_abs_diff``
    beyond float32 round-off: same graph, same kernels)."""
    tol = PARITY_ATOL + PARITY_RTOL * meas["keras_scale"]
    if meas["keras_max_abs_diff"] > tol:
        raise PublishError(f"artifact {what} differ from the Keras model's by "
                           f"{meas['keras_max_abs_diff']:.3e} (> {tol:.1e}).")


def check_symmetry_error(error: float, scale: float, what: str) -> None:
    """Refuse an artifact whose measured symmetry error is beyond the tolerance of
    ``relaxeq zoo verify`` (``VERIFY_ATOL + VERIFY_RTOL * scale``)."""
    tol = VERIFY_ATOL + VERIFY_RTOL * scale
    if error > tol:
        raise PublishError(f"artifact {what}: max error {error:.3e} > {tol:.1e} (the tolerance "
                           "of relaxeq zoo verify).")


def keras_parity_metric(meas: dict, split: str, what: str, on: str) -> dict:
    """The ``keras_max_abs_diff`` metric: artifact ``what`` vs the Keras model's ``on`` data."""
    return {"name": "keras_max_abs_diff", "value": float(f"{meas['keras_max_abs_diff']:.3e}"),
            "split": split,
            "protocol": f"max |artifact {what} - Keras model {what}| on {on} (keras_artifact "
                        "loaded with keras.saving.load_model)"}


def _fmt(v, digits=4):
    return "n/a" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def _fmt_sci(v):
    """Errors near float32 round-off: ``2.2e-05``, not ``0.000022``."""
    return "n/a" if v is None else (f"{v:.1e}" if isinstance(v, float) else str(v))


def card_metrics_lines(entry: dict, summary: dict) -> list[str]:
    """The card's last training line (wall time, strategy) and its metrics section (``|`` in
    protocols escaped)."""
    hours = (summary.get("wall_time_seconds") or 0) / 3600
    this, run = summary.get("epochs_this_invocation"), summary.get("epochs_run")
    resumed = summary.get("resumed") or (this is not None and run is not None and int(this) < int(run))
    if resumed:  # the summary times only the invocation that finished the run
        wall = (f"wall time of the last invocation {hours:.2f} h ({summary.get('epochs_this_invocation')} of "
                f"{summary.get('epochs_run')} epochs; the run was resumed)")
    else:
        wall = f"wall time {hours:.2f} h"
    if summary.get("strategy") is not None:
        wall += f", strategy {summary.get('strategy')} ({summary.get('num_replicas')} replica(s))"
    return [f"- {wall}",
            "", "## Metrics of the published artifact", "",
            "Measured by `relaxeq zoo publish` on the packed SavedModel itself:", "",
            "| metric | value | protocol |", "| --- | --- | --- |"] + [
        f"| `{m['name']}` | {m['value']} | {m['protocol'].replace('|', chr(92) + '|')} |"
        for m in entry["metrics"]]


def card_command_lines(command: str, command_source: str) -> list[str]:
    """The card's recipe command block, saying where the command comes from."""
    return ["Recipe command" + (" (from the run's command.txt)" if command_source == "command.txt"
                                else f" ({command_source})") + ":",
            "", "```sh", command, "```"]


def card_closing_lines(entry: dict, limits: list[str], python_lines: list[str],
                       data_licence: str, verify_note: str = "") -> list[str]:
    """The card's Limits, Use (CLI, then ``python_lines`` between the imports and the ``.keras``
    loading), Files and Licence sections."""
    name, version = entry["name"], entry["version"]
    art, kart = entry["artifact"], entry.get("keras_artifact") or {}
    lines = ["## Limits", "", *[f"- {x}" for x in limits], "",
             "## Use", "", "```sh", f"relaxeq zoo download {name} --version {version}",
             f"relaxeq zoo verify {name}{verify_note}", "```", "",
             "```python", "import numpy as np, tensorflow as tf", "from keras_relaxeq import zoo",
             *python_lines,
             f"keras_model = zoo.load({name!r}, version={version}, as_keras=True)  # the .keras "
             "file", "```", "",
             "## Files", "",
             f"- SavedModel: `{art['file']}` ({art['size']:,} bytes, sha256 `{art['sha256']}`)"]
    if kart:
        lines.append(f"- Keras model: `{kart['file']}` ({kart['size']:,} bytes, sha256 "
                     f"`{kart['sha256']}`)")
    return lines + ["", "## Licence and citation", "",
                    f"Licence: {entry['license']}. {data_licence}", "",
                    f"Cite: {entry['citation']}.", ""]


class RecipeRun:
    """How the runs of one recipe are published; :func:`publish_run` drives these steps.

    A subclass sets :attr:`recipe` and implements :meth:`default_name`, :meth:`export`,
    :meth:`measure` (on the extracted artifact; raises :class:`PublishError` when a check fails),
    :meth:`entry_fields`, :meth:`render_card` and :meth:`report`. :attr:`only_options` names the
    :func:`publish_run` options that apply to this recipe's runs only.
    """

    recipe = ""
    default_citation = ""
    data_licence = ""
    only_options: tuple = ()
    #: what the family's serving function refuses (the entry's ``input_checks``)
    input_checks: tuple = registry.BASIC_INPUT_CHECKS
    #: the run's file published when ``publish_run`` gets no ``model_file``
    default_model_file = "best_projected.keras"

    def __init__(self, run_dir: Path, summary: dict, *, model_file: str, seed: int,
                 num_rotations: int, options: dict):
        self.run_dir, self.summary, self.model_file = run_dir, summary, model_file
        self.cfg = dict(summary["config"])
        self.seed, self.num_rotations, self.options = seed, num_rotations, options

    def default_name(self) -> str:
        raise NotImplementedError

    def prepare(self, model):
        """The model to publish, from the run's loaded (projected) model file; by default that model
        itself, and the ``.keras`` artifact is a copy of the file. A family that returns another
        model (e.g. rebuilt by the current builder) publishes that model saved as ``.keras``."""
        return model

    def export(self, model, export_dir: Path, name: str, version: int) -> Path:
        raise NotImplementedError

    def measure(self, signature, model) -> dict:
        raise NotImplementedError

    def entry_fields(self, model, meas: dict, params: int) -> dict:
        """``task, description, architecture, input[, inputs], outputs[, labels]`` and
        ``metrics``, ``training`` (recipe-specific numbers) of the catalogue entry."""
        raise NotImplementedError

    def render_card(self, entry: dict, meas: dict, command: str, source: str, params: int) -> str:
        raise NotImplementedError

    def report(self, meas: dict) -> str:
        raise NotImplementedError

    def write_extras(self, zoo_dir: Path) -> None:
        """Files besides the artifact, card and index (e.g. a label list)."""

    def check_staged(self, serving, entry, keras_file: Path) -> None:
        """The family's checks of ``relaxeq zoo verify`` beyond the signature, symmetry and input checks, run by
        :func:`publish_run` before anything is written: ``serving`` is the extracted SavedModel loaded, ``entry``
        the parsed entry, ``keras_file`` the staged ``.keras`` artifact. Raises :class:`PublishError`."""

    def training(self, command: str, **numbers) -> dict:
        """The entry's ``training`` object: the run, the command, epochs, then ``numbers``."""
        s = self.summary
        return {"run": self.run_dir.name, "model_file": self.model_file, "command": command,
                "epochs_run": s.get("epochs_run"), "epochs": self.cfg.get("epochs"),
                "best_epoch": s.get("best_epoch"), **numbers,
                "wall_time_seconds": s.get("wall_time_seconds")}

    def command(self, given=None) -> tuple[str, str]:
        """``(command, where it comes from)``: given, else the run's ``command.txt``, else one
        reconstructed from ``summary.json``."""
        if given is not None:
            return str(given), "as given to relaxeq zoo publish"
        if (self.run_dir / "command.txt").is_file():
            return (self.run_dir / "command.txt").read_text().strip(), "command.txt"
        return (recipe_command_from_config(self.cfg, self.recipe),
                "reconstructed from summary.json: every option explicit")


def print_measured_again(evaluate, **kwargs) -> int:
    """The ``python -m keras_relaxeq.zoo.publish.<family>`` commands: ``evaluate(**kwargs)`` (``{metric:
    (published, measured)}``) printed one metric a line; 1 with the error on a :class:`PublishError` or missing
    data, else 0."""
    try:
        rows = evaluate(**kwargs)
    except (PublishError, FileNotFoundError) as exc:
        print(f"error: {exc}")
        return 1
    width = max((len(metric) for metric in rows), default=0) + 2
    for metric, (published, measured) in rows.items():
        print(f"{metric:{width}s} published {published:<12g} measured {measured:g}")
    return 0
