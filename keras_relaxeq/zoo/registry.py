"""The model-zoo catalogue: ``zoo/index.json`` and the model cards next to it.

The catalogue ships in the repository's top-level ``zoo/`` folder, located relative to the
package (``Path(keras_relaxeq.__file__).parents[1] / "zoo"``). Set ``KERAS_RELAXEQ_ZOO_INDEX`` to
the path of another ``index.json`` (or of a folder holding one) to use a different catalogue.
The schema is documented in ``zoo/README.md``; :func:`load_index` validates it.

Entries are immutable: a new artifact is a new integer version with a new sha256. Names are
``<arch>_<group>_<dataset>`` (lower case, ``[a-z0-9]`` words joined by ``_``): ``group`` and
``dataset`` are one word each, ``arch`` may have several (``vn_pointnet_so3_modelnet40``), so the
last two words of a name are always its group and data set.

The package does not ship ``zoo/``: it is found in the checkout next to the package (editable
installs, ``pip install -e .``). With a regular (non-editable) install point
``KERAS_RELAXEQ_ZOO_INDEX`` at a checkout's ``zoo/index.json`` (the artifacts are read from the
folder holding it) or set ``KERAS_RELAXEQ_ZOO_URL`` to a mirror.
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

from keras_relaxeq.zoo.errors import InvalidIndexError, UnknownModelError, ZooError

ENV_INDEX = "KERAS_RELAXEQ_ZOO_INDEX"
SCHEMA_VERSION = 1
INDEX_FILENAME = "index.json"

#: Tasks known to the tooling. ``relaxeq zoo verify`` checks rotation invariance of the logits
#: for ``INVARIANT_TASKS``, E(3) equivariance of the predicted positions for N-body entries
#: (task ``nbody_regression`` with the inputs ``NBODY_INPUTS`` and the output ``loc``) and C4
#: equivariance of the predicted frame for C4 field forecasters (task ``field_forecasting``, group
#: ``c4``, one input ``[batch, frames, H, W, 2]`` of vector fields, one output ``[batch, H, W, 2]``),
#: translation equivariance and the published scale-step error for scale field forecasters (the same
#: with group ``scale``)
#: and E(3) and permutation symmetry of energy and forces for interatomic potentials (task
#: ``interatomic_potential``, the inputs ``POTENTIAL_INPUTS``, the outputs ``energy`` and
#: ``forces``, and a ``molecule`` object listing its ``atomic_numbers``);
#: other entries get the hash / load / signature checks only.
TASKS = ("point_cloud_classification", "nbody_regression", "field_forecasting", "interatomic_potential",
         "regression", "other")
INVARIANT_TASKS = ("point_cloud_classification",)
#: serving inputs of an N-body model: positions, velocities (vectors), charges (invariant)
NBODY_INPUTS = ("loc", "vel", "charges")
#: serving inputs of an interatomic potential: positions (Å) and atomic numbers
POTENTIAL_INPUTS = ("positions", "atomic_numbers")

#: ``input.preprocess`` values: ``centre`` each cloud at its ``"mean"`` (or not: null), ``scale``
#: it into the ``"unit_sphere"`` (or not)
PREPROCESS_CENTRE = ("mean", None)
PREPROCESS_SCALE = ("unit_sphere", None)
#: ``input_checks`` an entry's serving function performs (``relaxeq zoo verify`` tests them):
#: ``"shape"`` (rank and fixed axes of every input), ``"finite"`` (no NaN / Inf), ``"composition"``
#: (an interatomic potential's atomic numbers are those of its molecule, in any order)
INPUT_CHECKS = ("shape", "finite", "composition")
#: the checks every family's serving function performs
BASIC_INPUT_CHECKS = ("shape", "finite")

_NAME_RE = re.compile(r"^[a-z0-9]+(_[a-z0-9]+){2,}$")
_WORD_RE = re.compile(r"^[a-z0-9]+$")
_ARCH_RE = re.compile(r"^[a-z0-9]+(_[a-z0-9]+)*$")  # arch may be several words: vn_pointnet
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def split_name(name: str) -> tuple[str, str, str]:
    """``(arch, group, dataset)`` of a zoo name: the last two words are group and data set."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"Invalid zoo name {name!r}: use '<arch>_<group>_<dataset>', three or "
                         "more lower-case [a-z0-9] words joined by '_' (e.g. "
                         "'vn_pointnet_so3_modelnet40').")
    arch, group, dataset = name.rsplit("_", 2)
    return arch, group, dataset


def default_zoo_dir() -> Path:
    """The repository's ``zoo/`` folder (``Path(keras_relaxeq.__file__).parents[1] / "zoo"``)."""
    import keras_relaxeq

    return Path(keras_relaxeq.__file__).resolve().parents[1] / "zoo"


def index_path(index=None) -> Path:
    """Resolve the catalogue file: argument, else ``$KERAS_RELAXEQ_ZOO_INDEX``, else the repo's."""
    raw = index if index is not None else os.environ.get(ENV_INDEX) or None
    path = Path(raw).expanduser() if raw is not None else default_zoo_dir() / INDEX_FILENAME
    if path.is_dir():
        path = path / INDEX_FILENAME
    return path


@dataclass(frozen=True)
class Artifact:
    """One published file: path relative to the mirror root, byte size, sha256 (hex)."""

    file: str
    size: int
    sha256: str
    format: str = "saved_model.tar.gz"

    @property
    def basename(self) -> str:
        return PurePosixPath(self.file).name


@dataclass(frozen=True)
class ZooEntry:
    """One published model version (see ``zoo/README.md`` for every field)."""

    name: str
    version: int
    arch: str
    group: str
    dataset: str
    task: str
    architecture: Mapping[str, Any]
    input: Mapping[str, Any]
    outputs: Mapping[str, Any]
    artifact: Artifact
    metrics: tuple
    license: str
    citation: str
    card: str | None = None
    keras_artifact: Artifact | None = None
    description: str = ""
    recipe: str | None = None
    inputs: Mapping[str, Any] | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    #: the catalogue folder (``labels`` and ``card`` are relative to it); set by ``parse_index``
    root: Path | None = field(default=None, repr=False, compare=False)

    @property
    def input_name(self) -> str:
        """The primary serving input (the one a positional argument of ``ServingModel`` feeds)."""
        return self.input.get("name", "points")

    @property
    def input_signature(self) -> dict:
        """Every serving input, ``{name: {"dtype", "shape", ...}}``: the entry's ``inputs`` for
        models with several inputs, else ``{input.name: input}``."""
        return dict(self.inputs) if self.inputs else {self.input_name: dict(self.input)}

    @property
    def is_invariant_classifier(self) -> bool:
        return self.task in INVARIANT_TASKS

    @property
    def is_nbody_model(self) -> bool:
        """An N-body regressor whose E(3) equivariance ``relaxeq zoo verify`` checks: task
        ``nbody_regression``, inputs ``loc``, ``vel``, ``charges`` and the output ``loc``."""
        return (self.task == "nbody_regression" and set(NBODY_INPUTS) <= set(self.input_signature)
                and "loc" in self.outputs)

    @property
    def is_potential_model(self) -> bool:
        """An interatomic potential whose E(3) and permutation symmetry ``relaxeq zoo verify`` checks:
        task ``interatomic_potential``, inputs ``positions`` and ``atomic_numbers``, outputs ``energy``
        and ``forces``, and the ``molecule``'s atomic numbers."""
        return (self.task == "interatomic_potential" and set(POTENTIAL_INPUTS) <= set(self.input_signature)
                and {"energy", "forces"} <= set(self.outputs) and bool(self.molecule_atomic_numbers))

    @property
    def molecule_atomic_numbers(self) -> tuple[int, ...] | None:
        """The atomic numbers of an interatomic potential's molecule (``molecule.atomic_numbers``)."""
        numbers = (self.raw.get("molecule") or {}).get("atomic_numbers")
        return None if not numbers else tuple(int(z) for z in numbers)

    @property
    def is_field_forecaster(self) -> bool:
        """A forecaster of 2D vector fields: task ``field_forecasting``, one input ``[batch, frames, H, H, 2]``,
        one output (the serving contract that ``relaxeq zoo verify`` checks for every group)."""
        shape = self.input.get("shape") or []
        return (self.task == "field_forecasting" and len(self.input_signature) == 1 and len(shape) == 5
                and shape[-1] == 2 and shape[2] is not None and shape[2] == shape[3] and len(self.outputs) == 1)

    @property
    def is_c4_field_forecaster(self) -> bool:
        """A field forecaster (:attr:`is_field_forecaster`) of group ``c4``: ``relaxeq zoo verify`` checks its C4
        equivariance."""
        return self.is_field_forecaster and self.group == "c4"

    @property
    def is_scale_field_forecaster(self) -> bool:
        """A field forecaster (:attr:`is_field_forecaster`) of group ``scale`` (SESN scale-equivariant layers):
        ``relaxeq zoo verify`` checks its translation equivariance away from the borders and its published
        scale-step error (``keras_relaxeq.zoo.verify_scale``)."""
        return self.is_field_forecaster and self.group == "scale"

    @property
    def input_checks(self) -> tuple[str, ...]:
        """What the serving function refuses (``"shape"``, ``"finite"``); empty for versions
        published before the checks existed."""
        return tuple(self.raw.get("input_checks") or ())

    @property
    def num_points(self) -> int | None:
        """Points per cloud the model was trained and evaluated with (``input.num_points``)."""
        n = self.input.get("num_points")
        return None if n is None else int(n)

    @property
    def preprocessing(self) -> dict:
        """The machine-readable preprocessing (``input.preprocess``): ``{"centre": "mean" | None,
        "scale": "unit_sphere" | None, "num_points": int | None}``; ``{}`` if the entry has none."""
        spec = dict(self.input.get("preprocess") or {})
        if spec and "num_points" not in spec:
            spec["num_points"] = self.num_points
        return spec

    @property
    def labels(self) -> tuple[str, ...] | None:
        """Class names in logit order (the entry's ``labels`` file), or None if it lists none."""
        rel = self.raw.get("labels")
        if not rel:
            return None
        path = (self.root or default_zoo_dir()) / rel
        try:
            names = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        except FileNotFoundError:
            raise ZooError(f"Label file {path} listed for {self.name!r} v{self.version} is missing; the "
                           "catalogue and zoo/ folder are out of sync (reinstall or report it).") from None
        classes = (self.outputs.get("logits") or {}).get("shape", [None, None])[-1]
        if classes is not None and len(names) != classes:
            raise ZooError(f"{path} lists {len(names)} labels but {self.name!r} v{self.version} has "
                           f"{classes} logits; fix the catalogue.")
        return tuple(names)

    def check_num_points(self, points, stacklevel: int = 2) -> bool:
        """Warn (``UserWarning``) when ``points [..., n, 3]`` has another point count than the
        entry's ``num_points``; return whether it matches (True if the entry records none)."""
        import warnings

        want = self.num_points
        shape = getattr(points, "shape", None)
        if want is None or shape is None or len(shape) < 2 or shape[-2] in (None, want):
            return True
        warnings.warn(f"{self.name} v{self.version} was trained and evaluated on {want} points per cloud, "
                      f"got {shape[-2]}: its answers change with the point count. Resample the clouds "
                      f"(entry.preprocess(points) draws {want} points) or check the accuracy at "
                      f"{shape[-2]} points yourself.", UserWarning, stacklevel=stacklevel + 1)
        return False

    def preprocess(self, points, *, num_points=None, seed=None):
        """The entry's preprocessing applied to raw clouds ``[n, 3]`` or ``[batch, n, 3]``.

        Each cloud is centred at its mean and scaled into the unit sphere (farthest point at
        distance 1) when the entry says so, then ``num_points`` points are drawn from it (the
        entry's, by default; without replacement, with replacement from a smaller cloud), as the
        recipes prepare their data. Returns float32 with the input's rank. Raises ``ValueError``
        for a last axis other than 3 or non-finite coordinates.
        """
        import numpy as np

        spec = self.preprocessing
        if not spec:
            raise ZooError(f"{self.name} v{self.version} records no machine-readable preprocessing "
                           "(input.preprocess); see its card: " + str(self.input.get("preprocessing")))
        x = np.asarray(points, dtype=np.float32)
        single = x.ndim == 2
        if single:
            x = x[None]
        if x.ndim != 3 or x.shape[-1] != 3 or x.shape[1] == 0:
            raise ValueError(f"{self.name}: points must have shape [n, 3] or [batch, n, 3] with n >= 1 "
                             f"(xyz only: drop normals or colours with points[..., :3]), got {np.shape(points)}.")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{self.name}: points contain NaN or Inf coordinates; remove them first.")
        if spec.get("centre") == "mean":
            x = x - x.mean(axis=1, keepdims=True, dtype=np.float64).astype(np.float32)
        if spec.get("scale") == "unit_sphere":
            from keras_relaxeq.datasets.modelnet40 import normalize_point_clouds

            x = normalize_point_clouds(x)
        n = num_points if num_points is not None else spec.get("num_points")
        if n is not None and int(n) != x.shape[1]:
            rng = np.random.default_rng(seed)
            n, have = int(n), x.shape[1]
            idx = np.stack([rng.choice(have, n, replace=have < n) for _ in range(len(x))])
            x = np.take_along_axis(x, idx[..., None], axis=1)
        return x[0] if single else x

    def to_dict(self) -> dict:
        return json.loads(json.dumps(self.raw))


@dataclass(frozen=True)
class Catalogue:
    """A parsed catalogue: its path, optional default base URL, and its entries."""

    path: Path
    entries: tuple
    base_url: str | None = None

    @property
    def root(self) -> Path:
        """The folder holding the index (cards are relative to it; it is the fallback mirror)."""
        return self.path.parent

    def names(self) -> list[str]:
        return sorted({e.name for e in self.entries})

    def versions(self, name: str) -> list[int]:
        return sorted(e.version for e in self.entries if e.name == name)

    def get(self, name: str, version: int | None = None) -> ZooEntry:
        candidates = [e for e in self.entries if e.name == name]
        if not candidates:
            raise UnknownModelError(name, self.names())
        if version is None:
            return max(candidates, key=lambda e: e.version)
        wanted = version if isinstance(version, int) and not isinstance(version, bool) else (
            int(version) if isinstance(version, str) and version.strip().isdecimal() else None)
        for e in candidates:
            if e.version == wanted:
                return e
        raise UnknownModelError(name, self.names(), version=version,
                                versions=self.versions(name))


def _fail(path, where, msg):
    raise InvalidIndexError(f"{path}: {where}: {msg}. Fix the catalogue (schema: zoo/README.md).")


def _require(d: Mapping, key: str, types, path, where):
    if key not in d:
        _fail(path, where, f"missing required field {key!r}")
    value = d[key]
    types_t = types if isinstance(types, tuple) else (types,)
    if not isinstance(value, types_t) or (isinstance(value, bool) and bool not in types_t):
        names = " or ".join(t.__name__ for t in types_t)
        _fail(path, where, f"field {key!r} must be {names}, got {type(value).__name__}")
    return value


def _safe_relpath(p: str, path, where, key) -> str:
    pp = PurePosixPath(p)
    if not p or pp.is_absolute() or ".." in pp.parts or "\\" in p or ":" in p:
        _fail(path, where, f"{key} must be a relative POSIX path without '..', got {p!r}")
    return str(pp)


def _parse_artifact(d, path, where) -> Artifact:
    if not isinstance(d, Mapping):
        _fail(path, where, "artifact must be an object")
    file = _safe_relpath(_require(d, "file", str, path, where), path, where, "artifact.file")
    size = _require(d, "size", int, path, where)
    if size <= 0:
        _fail(path, where, "artifact.size must be a positive byte count")
    sha = _require(d, "sha256", str, path, where).lower()
    if not _SHA256_RE.match(sha):
        _fail(path, where, "artifact.sha256 must be 64 hex digits")
    fmt = d.get("format", "saved_model.tar.gz")
    return Artifact(file=file, size=size, sha256=sha, format=fmt)


def _parse_tensor_spec(spec: Mapping, path, where, key) -> None:
    _require(spec, "dtype", str, path, f"{where}.{key}")
    shape = _require(spec, "shape", list, path, f"{where}.{key}")
    if not all(s is None or (isinstance(s, int) and s > 0) for s in shape):
        _fail(path, where, f"{key}.shape must be a list of positive ints or null")


def _parse_entry(d, path, i) -> ZooEntry:
    where = f"models[{i}]"
    if not isinstance(d, Mapping):
        _fail(path, where, "an entry must be an object")
    name = _require(d, "name", str, path, where)
    where = f"models[{i}] ({name})"
    if not _NAME_RE.match(name):
        _fail(path, where, "name must be '<arch>_<group>_<dataset>': three or more lower-case "
                           "[a-z0-9] words joined by '_'")
    version = _require(d, "version", int, path, where)
    if version < 1:
        _fail(path, where, "version must be an integer >= 1")
    arch = _require(d, "arch", str, path, where)
    group = _require(d, "group", str, path, where)
    dataset = _require(d, "dataset", str, path, where)
    if not _ARCH_RE.match(arch):
        _fail(path, where, f"arch must be [a-z0-9] words joined by '_', got {arch!r}")
    for key, word in (("group", group), ("dataset", dataset)):
        if not _WORD_RE.match(word):
            _fail(path, where, f"{key} must match [a-z0-9]+ (one word), got {word!r}")
    if name != f"{arch}_{group}_{dataset}":
        _fail(path, where, f"name must equal '<arch>_<group>_<dataset>' = "
                           f"{arch}_{group}_{dataset}")
    task = _require(d, "task", str, path, where)
    if task not in TASKS:
        _fail(path, where, f"task must be one of {TASKS}")
    architecture = _require(d, "architecture", dict, path, where)
    _require(architecture, "class", str, path, where + ".architecture")
    _require(architecture, "config", dict, path, where + ".architecture")
    inp = _require(d, "input", dict, path, where)
    _require(inp, "name", str, path, where + ".input")
    _parse_tensor_spec(inp, path, where, "input")
    _require(inp, "preprocessing", str, path, where + ".input")
    if inp.get("num_points") is not None and (not isinstance(inp["num_points"], int) or inp["num_points"] < 1):
        _fail(path, where, "input.num_points must be a positive int or null")
    prep = inp.get("preprocess")
    if prep is not None:
        if not isinstance(prep, dict):
            _fail(path, where, "input.preprocess must be an object {centre, scale, num_points}")
        for key, allowed in (("centre", PREPROCESS_CENTRE), ("scale", PREPROCESS_SCALE)):
            if prep.get(key) not in allowed:
                _fail(path, where, f"input.preprocess.{key} must be one of {allowed}, got {prep.get(key)!r}")
        n = prep.get("num_points")
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
            _fail(path, where, "input.preprocess.num_points must be a positive int or null")
    if d.get("labels") is not None:
        _safe_relpath(_require(d, "labels", str, path, where), path, where, "labels")
    checks = d.get("input_checks")
    if checks is not None and (not isinstance(checks, list) or not set(checks) <= set(INPUT_CHECKS)):
        _fail(path, where, f"input_checks must be a list of {INPUT_CHECKS}")
    molecule = d.get("molecule")
    if molecule is not None:
        numbers = molecule.get("atomic_numbers") if isinstance(molecule, dict) else None
        if (not isinstance(numbers, list) or not numbers
                or not all(isinstance(z, int) and not isinstance(z, bool) and 1 <= z <= 118 for z in numbers)):
            _fail(path, where, "molecule must be an object whose atomic_numbers is a non-empty list of ints 1..118")
    inputs = d.get("inputs")
    if inputs is not None:  # several serving inputs: {name: {dtype, shape}}, the primary among them
        if not isinstance(inputs, dict) or not inputs:
            _fail(path, where, "inputs must be a non-empty object {name: {dtype, shape}}")
        for key, spec in inputs.items():
            if not isinstance(spec, dict):
                _fail(path, where, f"inputs.{key} must be an object with dtype and shape")
            _parse_tensor_spec(spec, path, where, f"inputs.{key}")
        if inp["name"] not in inputs:
            _fail(path, where, f"input.name {inp['name']!r} must be one of inputs {sorted(inputs)}")
    outputs = _require(d, "outputs", dict, path, where)
    artifact = _parse_artifact(_require(d, "artifact", dict, path, where), path, where)
    keras_artifact = None
    if d.get("keras_artifact") is not None:
        keras_artifact = _parse_artifact(d["keras_artifact"], path, where + ".keras_artifact")
    metrics = _require(d, "metrics", list, path, where)
    for j, m in enumerate(metrics):
        w = f"{where}.metrics[{j}]"
        if not isinstance(m, dict):
            _fail(path, w, "a metric must be an object")
        _require(m, "name", str, path, w)
        _require(m, "value", (int, float), path, w)
        _require(m, "protocol", str, path, w)
    license_ = _require(d, "license", str, path, where)
    citation = _require(d, "citation", str, path, where)
    card = d.get("card")
    if card is not None:
        card = _safe_relpath(card, path, where, "card")
    return ZooEntry(
        name=name, version=version, arch=arch, group=group, dataset=dataset, task=task,
        architecture=architecture, input=inp, outputs=outputs, artifact=artifact,
        metrics=tuple(metrics), license=license_, citation=citation, card=card,
        keras_artifact=keras_artifact, description=d.get("description", ""),
        recipe=d.get("recipe"), inputs=inputs, raw=d, root=Path(path).parent,
    )


def parse_index(data: Any, path: Path | str = "<index>") -> Catalogue:
    """Validate a decoded ``index.json`` document and return a :class:`Catalogue`."""
    path = Path(path)
    if not isinstance(data, dict):
        _fail(path, "top level", "must be an object with a 'models' list")
    schema = data.get("schema_version", SCHEMA_VERSION)
    if schema != SCHEMA_VERSION:
        _fail(path, "schema_version", f"unsupported schema {schema!r} (this keras_relaxeq "
                                      f"reads {SCHEMA_VERSION}); upgrade keras_relaxeq")
    models = data.get("models")
    if not isinstance(models, list):
        _fail(path, "top level", "'models' must be a list")
    entries = tuple(_parse_entry(d, path, i) for i, d in enumerate(models))
    seen = set()
    for e in entries:
        if (e.name, e.version) in seen:
            _fail(path, e.name, f"version {e.version} is listed twice (artifacts are immutable: "
                                "publish a new version instead)")
        seen.add((e.name, e.version))
    base_url = data.get("base_url")
    if base_url is not None and not isinstance(base_url, str):
        _fail(path, "base_url", "must be a string or null")
    return Catalogue(path=path, entries=entries, base_url=base_url or None)


_cache: dict = {}
_cache_lock = threading.Lock()


def load_index(index=None) -> Catalogue:
    """Load and validate the catalogue (cached per path and modification time)."""
    path = index_path(index)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InvalidIndexError(
            f"Catalogue file {path} does not exist. Set {ENV_INDEX} to an index.json, or "
            "reinstall keras_relaxeq from a checkout that has the top-level zoo/ folder."
        ) from None
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidIndexError(f"Cannot read the catalogue {path}: {exc.strerror or exc}. Set "
                                f"{ENV_INDEX} (or --index) to a readable index.json.") from None
    except UnicodeDecodeError as exc:
        raise InvalidIndexError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                                "save the catalogue as UTF-8 JSON.") from None
    except RecursionError:
        raise InvalidIndexError(f"{path} is nested too deeply to be a catalogue; fix it (schema: "
                                "zoo/README.md).") from None
    except ValueError as exc:  # json.JSONDecodeError, or an integer too long to convert
        raise InvalidIndexError(f"{path} is not valid JSON: {exc}") from None
    cat = parse_index(data, path)
    with _cache_lock:
        _cache.clear()
        _cache[key] = cat
    return cat


def list_entries(index=None) -> list[ZooEntry]:
    """Every entry (all versions), sorted by name then version."""
    return sorted(load_index(index).entries, key=lambda e: (e.name, e.version))


def list_models(index=None) -> list[str]:
    """Sorted names of the published models (one name per model, whatever its versions)."""
    return load_index(index).names()


def get_entry(name: str, version: int | None = None, *, index=None) -> ZooEntry:
    """The entry ``name`` at ``version`` (latest when ``None``).

    Raises :class:`UnknownModelError` (with close-match suggestions) for an unknown name or version.
    """
    return load_index(index).get(name, version)


def card_path(name: str, version: int | None = None, *, index=None) -> Path:
    cat = load_index(index)
    entry = cat.get(name, version)
    if not entry.card:
        raise ZooError(f"Model {name!r} v{entry.version} has no model card listed in {cat.path}.")
    return cat.root / entry.card


def model_card(name: str, version: int | None = None, *, index=None) -> str:
    """The Markdown model card of ``name`` (latest version by default)."""
    path = card_path(name, version, index=index)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ZooError(f"Model card {path} listed for {name!r} is missing; the catalogue and "
                       "zoo/ folder are out of sync (reinstall or report it).") from None


__all__ = [
    "Artifact",
    "Catalogue",
    "ENV_INDEX",
    "BASIC_INPUT_CHECKS",
    "INPUT_CHECKS",
    "INVARIANT_TASKS",
    "NBODY_INPUTS",
    "POTENTIAL_INPUTS",
    "TASKS",
    "ZooEntry",
    "card_path",
    "default_zoo_dir",
    "get_entry",
    "index_path",
    "list_entries",
    "list_models",
    "load_index",
    "model_card",
    "parse_index",
    "split_name",
]
