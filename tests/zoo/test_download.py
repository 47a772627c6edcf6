"""The zoo client against a real HTTP server on 127.0.0.1 (success, cache, corruption, truncation,
retries, offline, unsafe archives, read-only caches, permissions, stale temp files, bad settings)."""

import builtins
import errno
import hashlib
import http.server
import importlib
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_relaxeq.export.serving import export_saved_model, pack_saved_model
from keras_relaxeq.zoo import errors, registry

# `keras_relaxeq.zoo.download` the attribute is the function; the module is in sys.modules.
dl = importlib.import_module("keras_relaxeq.zoo.download")
fetching = importlib.import_module("keras_relaxeq.zoo.fetch")  # the fetch loop reads its LOG_INTERVAL

NAME = "tiny_so3_toy"
ARTIFACT = "artifacts/tiny_so3_toy/1/tiny_so3_toy-1.tar.gz"
NUM_CLASSES = 3


# ---------------------------------------------------------------------------------------------
# A controllable HTTP server.
# ---------------------------------------------------------------------------------------------


class ZooServer:
    """Serves ``files``; ``plan[path]`` is a list of actions used by successive requests:
    ``ok``, ``corrupt`` (one byte flipped), ``truncate`` (full Content-Length, half the body, then
    close), ``hang`` (sleep past the client's timeout), ``stall`` (half the body, then wait until
    the server is closed), or an HTTP status code such as ``500``."""

    def __init__(self):
        self.closing = threading.Event()
        self.files = {}
        self.plan = {}
        self.hits = Counter()
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                path = self.path.split("?")[0]
                with server.lock:
                    server.hits[path] += 1
                    actions = server.plan.get(path) or []
                    action = actions.pop(0) if actions else "ok"
                body = server.files.get(path)
                if body is None:
                    action = "404"
                if action.isdigit():
                    self.send_response(int(action))
                    if action in ("429", "503"):
                        self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", "0")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.close_connection = True
                    return
                if action == "hang":
                    time.sleep(1.0)
                    self.close_connection = True
                    return
                if action == "corrupt":
                    body = bytearray(body)
                    body[len(body) // 2] ^= 0xFF
                    body = bytes(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/gzip")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                if action in ("truncate", "stall"):
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    if action == "stall":
                        server.closing.wait(30)
                    self.close_connection = True
                    return
                self.wfile.write(body)
                self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def total_hits(self):
        return sum(self.hits.values())

    def close(self):
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = ZooServer()
    yield s
    s.close()


# ---------------------------------------------------------------------------------------------
# A real artifact and a temporary catalogue.
# ---------------------------------------------------------------------------------------------


def tiny_model():
    keras.utils.set_random_seed(0)
    points = keras.Input((None, 3), name="points")
    h = keras.layers.Dense(8, activation="relu")(keras.ops.norm(points, axis=-1, keepdims=True))
    return keras.Model(points, keras.layers.Dense(NUM_CLASSES)(keras.ops.mean(h, axis=1)))


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    root = tmp_path_factory.mktemp("artifact")
    model = tiny_model()
    path = export_saved_model(model, root / "export", NAME, 1, write_config=False)
    packed = pack_saved_model(path, root / "tiny.tar.gz")
    keras_file = root / "tiny.keras"
    model.save(keras_file)
    return {"model": model, "bytes": packed.path.read_bytes(), "sha256": packed.sha256,
            "size": packed.size, "keras_bytes": keras_file.read_bytes()}


def entry(name=NAME, version=1, file=ARTIFACT, data=b"", sha=None, size=None, **extra):
    arch, group, dataset = name.split("_")
    e = {
        "name": name, "version": version, "arch": arch, "group": group, "dataset": dataset,
        "task": "point_cloud_classification",
        "architecture": {"class": "tests.TinyModel", "config": {"num_classes": NUM_CLASSES}},
        "input": {"name": "points", "dtype": "float32", "shape": [None, None, 3],
                  "layout": "[batch, points, xyz]", "preprocessing": "none"},
        "outputs": {"logits": {}, "probabilities": {}, "class_id": {}},
        "artifact": {"file": file, "size": size if size is not None else len(data),
                     "sha256": sha or hashlib.sha256(data).hexdigest()},
        "metrics": [{"name": "accuracy", "value": 0.5, "protocol": "toy"}],
        "license": "Apache-2.0", "citation": "none",
    }
    e.update(extra)
    return e


@pytest.fixture
def zoo(tmp_path, monkeypatch, artifact, server):
    """A temporary catalogue + local mirror + HTTP mirror + empty cache; env isolated."""
    mirror = tmp_path / "zoo"
    (mirror / ARTIFACT).parent.mkdir(parents=True)
    (mirror / ARTIFACT).write_bytes(artifact["bytes"])
    index = mirror / "index.json"

    def write_index(*entries):
        index.write_text(json.dumps({"schema_version": 1, "models": list(entries)}))
        os.utime(index, ns=(time.time_ns(), time.time_ns()))

    write_index(entry(data=artifact["bytes"]))
    server.files["/" + ARTIFACT] = artifact["bytes"]
    cache = tmp_path / "cache"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv(dl.ENV_CACHE, str(cache))
    monkeypatch.setenv(registry.ENV_INDEX, str(index))
    monkeypatch.setenv(dl.ENV_RETRY_DELAY, "0.01")
    for var in (dl.ENV_URL, dl.ENV_OFFLINE, dl.ENV_MAX_TRIES, dl.ENV_TIMEOUT):
        monkeypatch.delenv(var, raising=False)
    return {"mirror": mirror, "index": index, "cache": cache, "write_index": write_index,
            "edir": cache / "zoo" / NAME / "1", "server": server}


def files_under(root):
    return sorted(p.relative_to(root).as_posix() for p in Path(root).rglob("*") if p.is_file())


def flip_byte(path, offset=None):
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if offset is None else offset] ^= 0xFF
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------------------------------------
# Tests.
# ---------------------------------------------------------------------------------------------


def test_download_success_layout_and_load(zoo, artifact, capsys):
    s = zoo["server"]
    path = dl.download(NAME, base_url=s.url, progress=True)
    assert path == zoo["edir"] / "saved_model"
    assert (path / "saved_model.pb").is_file()
    assert files_under(zoo["edir"]) == sorted(
        ["tiny_so3_toy-1.tar.gz"] + ["saved_model/" + f for f in files_under(path)])
    assert (zoo["edir"] / "tiny_so3_toy-1.tar.gz").read_bytes() == artifact["bytes"]
    assert s.hits["/" + ARTIFACT] == 1

    model = dl.load(NAME, base_url=s.url, progress=False)
    assert s.total_hits() == 1  # served from the cache
    x = np.random.default_rng(0).normal(size=(2, 11, 3)).astype(np.float32)
    out = model(x)
    assert sorted(out) == ["class_id", "logits", "probabilities"]
    np.testing.assert_allclose(out["logits"], artifact["model"].predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    single = model(x[0])  # one cloud without a batch axis
    np.testing.assert_allclose(single["logits"], out["logits"][0], rtol=1e-5, atol=1e-6)
    assert single["class_id"].shape == ()


def test_cache_hit_makes_no_request_but_is_reverified(zoo, artifact):
    s = zoo["server"]
    first = dl.download(NAME, base_url=s.url, progress=False)
    assert dl.download(NAME, base_url=s.url, progress=False) == first
    assert s.total_hits() == 1

    # Corrupt the cached archive: detected on the next use, deleted, fetched again.
    archive = zoo["edir"] / "tiny_so3_toy-1.tar.gz"
    flip_byte(archive)
    with pytest.warns(RuntimeWarning, match="corrupted"):
        dl.download(NAME, base_url=s.url, progress=False)
    assert s.total_hits() == 2
    assert archive.read_bytes() == artifact["bytes"]

    # Offline, the same corruption is an error and the bad file is removed.
    flip_byte(archive)
    with pytest.raises(errors.HashMismatchError, match=artifact["sha256"]) as info:
        dl.download(NAME, base_url=s.url, offline=True, progress=False)
    assert "deleted" in str(info.value)
    assert not archive.exists() and not (zoo["edir"] / "saved_model").exists()
    assert s.total_hits() == 2


def test_tampered_extraction_is_detected_and_repaired(zoo):
    s = zoo["server"]
    path = dl.download(NAME, base_url=s.url, progress=False)
    weights = next((path / "variables").glob("variables.data-*"))
    good = weights.read_bytes()
    flip_byte(weights, offset=0)
    (path / "extra.txt").write_text("not from the archive")
    with pytest.warns(RuntimeWarning, match="modified"):
        again = dl.download(NAME, base_url=s.url, progress=False)
    assert again == path
    assert weights.read_bytes() == good and not (path / "extra.txt").exists()
    assert s.total_hits() == 1  # repaired from the verified archive, no new download


def test_hash_mismatch_is_rejected_and_nothing_cached(zoo, artifact):
    s = zoo["server"]
    s.plan["/" + ARTIFACT] = ["corrupt"]
    with pytest.raises(errors.HashMismatchError) as info:
        dl.download(NAME, base_url=s.url, progress=False)
    msg = str(info.value)
    assert artifact["sha256"] in msg and "deleted" in msg and "report" in msg.lower()
    assert info.value.expected == artifact["sha256"] and info.value.got != artifact["sha256"]
    assert s.total_hits() == 1  # a mismatch is not retried
    assert files_under(zoo["cache"]) == []


def test_wrong_published_size_is_rejected_before_download(zoo, artifact):
    zoo["write_index"](entry(data=artifact["bytes"], size=artifact["size"] + 1))
    with pytest.raises(errors.HashMismatchError, match="announces"):
        dl.download(NAME, base_url=zoo["server"].url, progress=False)
    assert files_under(zoo["cache"]) == []


def test_truncated_transfer_is_retried(zoo):
    s = zoo["server"]
    s.plan["/" + ARTIFACT] = ["truncate"]
    path = dl.download(NAME, base_url=s.url, progress=False, max_tries=3)
    assert (path / "saved_model.pb").is_file()
    assert s.total_hits() == 2


def test_truncated_every_time_fails_and_leaves_nothing(zoo):
    s = zoo["server"]
    s.plan["/" + ARTIFACT] = ["truncate"] * 3
    with pytest.raises(errors.NetworkError) as info:
        dl.download(NAME, base_url=s.url, progress=False, max_tries=3)
    msg = str(info.value)
    assert s.url + "/" + ARTIFACT in msg and "3 tries" in msg and dl.ENV_URL in msg
    assert info.value.tries == 3 and info.value.url == s.url + "/" + ARTIFACT
    assert s.total_hits() == 3
    assert files_under(zoo["cache"]) == []


def test_server_errors_are_retried_with_backoff(zoo):
    s = zoo["server"]
    s.plan["/" + ARTIFACT] = ["500", "503", "429"]
    t0 = time.monotonic()
    path = dl.download(NAME, base_url=s.url, progress=False, max_tries=4, base_delay=0.05)
    assert (path / "saved_model.pb").is_file()
    assert s.total_hits() == 4
    assert time.monotonic() - t0 >= 0.05 + 0.1 + 0.2  # 0.05 * (1 + 2 + 4)


def test_persistent_server_error_gives_network_error(zoo):
    s = zoo["server"]
    s.plan["/" + ARTIFACT] = ["502"] * 10
    with pytest.raises(errors.NetworkError, match="after 2 tries.*HTTP 502"):
        dl.download(NAME, base_url=s.url, progress=False, max_tries=2)
    assert s.total_hits() == 2
    assert files_under(zoo["cache"]) == []


def test_max_tries_from_environment(zoo, monkeypatch):
    s = zoo["server"]
    s.plan["/" + ARTIFACT] = ["500"] * 10
    monkeypatch.setenv(dl.ENV_MAX_TRIES, "3")
    with pytest.raises(errors.NetworkError):
        dl.download(NAME, base_url=s.url, progress=False)
    assert s.total_hits() == 3


def test_not_found_is_not_retried(zoo):
    s = zoo["server"]
    s.files.clear()
    with pytest.raises(errors.DownloadError, match="404") as info:
        dl.download(NAME, base_url=s.url, progress=False, max_tries=5)
    assert not isinstance(info.value, errors.NetworkError)
    assert s.total_hits() == 1


def test_timeout_is_retried(zoo):
    s = zoo["server"]
    s.plan["/" + ARTIFACT] = ["hang"]
    path = dl.download(NAME, base_url=s.url, progress=False, timeout=0.3, max_tries=2)
    assert (path / "saved_model.pb").is_file()
    assert s.total_hits() == 2


def test_offline_mode(zoo, monkeypatch):
    s = zoo["server"]
    monkeypatch.setenv(dl.ENV_OFFLINE, "1")
    with pytest.raises(errors.OfflineError) as info:
        dl.download(NAME, base_url=s.url, progress=False)
    msg = str(info.value)
    assert dl.ENV_CACHE in msg and "relaxeq zoo download" in msg and dl.ENV_URL in msg
    assert s.total_hits() == 0 and files_under(zoo["cache"]) == []

    # A local mirror is allowed offline (here: the catalogue's own folder, the fallback).
    path = dl.download(NAME, progress=False)
    assert (path / "saved_model.pb").is_file()
    # The cache is used offline without touching the network.
    assert dl.download(NAME, base_url=s.url, progress=False) == path
    assert s.total_hits() == 0

    # offline=False overrides the environment.
    dl.download(NAME, base_url=s.url, progress=False, offline=False, cache_dir=zoo["cache"] / "b")
    assert s.total_hits() == 1


def test_mirror_resolution(zoo, artifact, monkeypatch, tmp_path):
    s = zoo["server"]
    monkeypatch.setenv(dl.ENV_URL, s.url)
    dl.download(NAME, progress=False)
    assert s.total_hits() == 1
    # An explicit base_url wins over the environment: a file:// URL to the local mirror.
    dl.download(NAME, progress=False, base_url=zoo["mirror"].as_uri(), cache_dir=tmp_path / "c2")
    assert s.total_hits() == 1
    # A local mirror with a bad copy is rejected like a network one.
    bad = tmp_path / "bad_mirror"
    (bad / ARTIFACT).parent.mkdir(parents=True)
    (bad / ARTIFACT).write_bytes(b"x" * artifact["size"])
    with pytest.raises(errors.HashMismatchError):
        dl.download(NAME, progress=False, base_url=str(bad), cache_dir=tmp_path / "c3")
    assert files_under(tmp_path / "c3") == []
    with pytest.raises(errors.DownloadError, match="has no"):
        dl.download(NAME, progress=False, base_url=str(tmp_path / "empty"),
                    cache_dir=tmp_path / "c4")


def test_unknown_model_suggests_close_match(zoo):
    with pytest.raises(errors.UnknownModelError) as info:
        dl.download("tiny_so3_tyo", base_url=zoo["server"].url)
    msg = str(info.value)
    assert "Did you mean 'tiny_so3_toy'" in msg and "relaxeq zoo list" in msg
    assert info.value.suggestions == [NAME]
    with pytest.raises(errors.UnknownModelError, match="no version 7.*available versions: 1"):
        dl.download(NAME, 7, base_url=zoo["server"].url)
    assert zoo["server"].total_hits() == 0


def evil_archive(kind, artifact):
    """A .tar.gz holding a real saved_model.pb plus one unsafe member."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        with tarfile.open(fileobj=io.BytesIO(artifact["bytes"]), mode="r:gz") as good:
            for m in good.getmembers():
                tar.addfile(m, good.extractfile(m) if m.isfile() else None)
        ti = tarfile.TarInfo()
        payload = b"owned"
        if kind == "dotdot":
            ti.name, ti.size = "variables/../../escaped.txt", len(payload)
        elif kind == "absolute":
            ti.name, ti.size = "/tmp/keras_relaxeq_escaped.txt", len(payload)
        elif kind == "symlink_escape":
            ti.name, ti.type, ti.linkname = "evil_link", tarfile.SYMTYPE, "../../../etc"
            payload = None
        elif kind == "symlink_absolute":
            ti.name, ti.type, ti.linkname = "evil_link", tarfile.SYMTYPE, "/etc/passwd"
            payload = None
        elif kind == "hardlink":
            ti.name, ti.type, ti.linkname = "evil_hard", tarfile.LNKTYPE, "../../outside"
            payload = None
        elif kind == "device":
            ti.name, ti.type, ti.devmajor, ti.devminor = "dev_null", tarfile.CHRTYPE, 1, 3
            payload = None
        tar.addfile(ti, io.BytesIO(payload) if payload else None)
    return buf.getvalue()


@pytest.mark.parametrize("kind, reason", [
    ("dotdot", r"'\.\.'"),
    ("absolute", "absolute path"),
    ("symlink_escape", "outside the target"),
    ("symlink_absolute", "outside the target"),
    ("hardlink", "outside the target"),
    ("device", "device"),
])
def test_unsafe_archives_are_rejected(zoo, artifact, kind, reason):
    data = evil_archive(kind, artifact)
    s = zoo["server"]
    s.files["/" + ARTIFACT] = data
    zoo["write_index"](entry(data=data))
    with pytest.raises(errors.UnsafeArchiveError, match=reason):
        dl.download(NAME, base_url=s.url, progress=False)
    assert files_under(zoo["cache"]) == []  # archive removed, nothing extracted
    assert not (zoo["cache"] / "zoo" / NAME / "escaped.txt").exists()
    assert not (zoo["edir"].parent / "escaped.txt").exists()
    assert not Path("/tmp/keras_relaxeq_escaped.txt").exists()


def test_links_inside_the_archive_are_rejected_too(tmp_path, artifact):
    src = tmp_path / "a.tar.gz"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        ti = tarfile.TarInfo("saved_model.pb")
        ti.size = 1
        tar.addfile(ti, io.BytesIO(b"x"))
        link = tarfile.TarInfo("alias.pb")
        link.type, link.linkname = tarfile.SYMTYPE, "saved_model.pb"
        tar.addfile(link)
    src.write_bytes(buf.getvalue())
    with pytest.raises(errors.UnsafeArchiveError, match="is a link"):
        dl.safe_extract(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["a.tar.gz"]


class DenyWrites:
    """Emulates a read-only file system under ``root`` (also for root, whom chmod does not stop):
    every write-like os / open call below ``root`` raises EROFS and is recorded. The directory is
    also chmod-ed read-only, which is what stops a non-root user."""

    def __init__(self, root):
        self.root = os.path.realpath(root)
        self.attempts = []

    def __enter__(self):
        chmod_read_only(self.root)
        self._mp = pytest.MonkeyPatch()
        write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
        for name in ("mkdir", "rmdir", "unlink", "remove", "replace", "rename", "symlink",
                     "link", "chmod", "utime"):
            self._mp.setattr(os, name, self._wrap(name, getattr(os, name)))
        real_open = os.open

        def guarded_open(path, flags, *args, **kwargs):
            if flags & write_flags:
                self._check("open", path, kwargs)
            return real_open(path, flags, *args, **kwargs)

        self._mp.setattr(os, "open", guarded_open)
        real_bopen = builtins.open

        def guarded_bopen(file, mode="r", *args, **kwargs):
            if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+"):
                self._check("open", file, {})
            return real_bopen(file, mode, *args, **kwargs)

        self._mp.setattr(builtins, "open", guarded_bopen)
        return self

    def __exit__(self, *exc):
        self._mp.undo()
        restore_write(self.root)

    def _check(self, op, path, kwargs):
        full = "" if isinstance(path, int) else os.path.realpath(os.fspath(path))
        if kwargs.get("dir_fd") is not None or full == self.root or full.startswith(
                self.root + os.sep):
            self.attempts.append((op, full))
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

    def _wrap(self, name, fn):
        def wrapped(path, *args, **kwargs):
            self._check(name, path, kwargs)
            if args and name in ("replace", "rename", "symlink", "link"):
                self._check(name, args[0], kwargs)
            return fn(path, *args, **kwargs)

        return wrapped


def chmod_read_only(root):
    for p in sorted(Path(root).rglob("*"), reverse=True) + [Path(root)]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def restore_write(root):
    for p in [Path(root)] + sorted(Path(root).rglob("*")):
        p.chmod(p.stat().st_mode | stat.S_IWUSR)


def test_read_only_prefilled_cache_is_used_without_writes(zoo, artifact):
    s = zoo["server"]
    dl.download(NAME, base_url=s.url, progress=False)
    with DenyWrites(zoo["cache"]) as guard:
        path = dl.download(NAME, base_url=s.url, progress=False)
        model = dl.load(NAME, base_url=s.url, progress=False, offline=True)
        assert dl.cached_path(NAME) == path
    assert guard.attempts == [] and s.total_hits() == 1
    assert path == zoo["edir"] / "saved_model"
    x = np.ones((1, 4, 3), np.float32)
    np.testing.assert_allclose(model(x)["logits"], artifact["model"].predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)

    # A damaged archive in a read-only cache cannot be repaired: a clear error, nothing written.
    flip_byte(zoo["edir"] / "tiny_so3_toy-1.tar.gz")
    with DenyWrites(zoo["cache"]) as guard:
        with pytest.raises(errors.HashMismatchError, match="read-only"):
            dl.download(NAME, base_url=s.url, progress=False)
    assert guard.attempts  # it tried to delete the bad file and was refused
    assert (zoo["edir"] / "tiny_so3_toy-1.tar.gz").exists() and s.total_hits() == 1


def test_read_only_empty_cache_gives_clear_error(zoo):
    cache = zoo["cache"]
    cache.mkdir()
    with DenyWrites(cache) as guard:
        with pytest.raises(errors.CacheError) as info:
            dl.download(NAME, base_url=zoo["server"].url, progress=False)
    msg = str(info.value)
    assert "pre-fill" in msg and dl.ENV_CACHE in msg and "relaxeq zoo download" in msg
    assert guard.attempts and zoo["server"].total_hits() == 0
    assert files_under(cache) == []


def test_as_keras(zoo, artifact):
    with pytest.raises(errors.KerasFormatUnavailableError, match="only a SavedModel") as info:
        dl.load(NAME, as_keras=True, progress=False)
    assert isinstance(info.value, NotImplementedError)
    assert "TFSMLayer" in str(info.value)

    keras_file = "artifacts/tiny_so3_toy/1/tiny_so3_toy-1.keras"
    (zoo["mirror"] / keras_file).write_bytes(artifact["keras_bytes"])
    data = artifact["keras_bytes"]
    zoo["write_index"](entry(data=artifact["bytes"], keras_artifact={
        "file": keras_file, "format": "keras", "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest()}))
    model = dl.load(NAME, as_keras=True, progress=False)
    assert isinstance(model, keras.Model)
    x = np.random.default_rng(3).normal(size=(2, 5, 3)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x, verbose=0),
                               artifact["model"].predict(x, verbose=0), rtol=1e-6)
    assert (zoo["edir"] / "tiny_so3_toy-1.keras").is_file()


def test_latest_version_is_default(zoo, artifact):
    other = ARTIFACT.replace("/1/", "/2/").replace("-1.", "-2.")
    (zoo["mirror"] / other).parent.mkdir(parents=True)
    (zoo["mirror"] / other).write_bytes(artifact["bytes"])
    zoo["write_index"](entry(data=artifact["bytes"]),
                       entry(version=2, file=other, data=artifact["bytes"]))
    assert dl.download(NAME, progress=False) == zoo["cache"] / "zoo" / NAME / "2" / "saved_model"
    assert dl.download(NAME, 1, progress=False) == zoo["edir"] / "saved_model"
    assert dl.cached_path(NAME, 2) is not None


# ---------------------------------------------------------------------------------------------
# Permissions, stale temporary files, size limits, paths in the way, settings, odd inputs.
# ---------------------------------------------------------------------------------------------

REPO = Path(dl.__file__).resolve().parents[2]


def modes_under(root):
    """``{relative path: permission bits}`` of ``root`` and everything below it."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): stat.S_IMODE(p.lstat().st_mode)
            for p in [root, *root.rglob("*")]}


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)],
                         ids=["umask022", "umask077"])
def test_cache_files_follow_the_umask(zoo, umask, mask, file_mode, dir_mode):
    umask(mask)
    path = dl.download(NAME, base_url=zoo["server"].url, progress=False)
    modes = modes_under(zoo["cache"])
    assert len(modes) > 8 and "zoo/tiny_so3_toy/1/tiny_so3_toy-1.tar.gz" in modes
    for rel, mode in modes.items():
        want = dir_mode if (zoo["cache"] / rel).is_dir() else file_mode
        assert mode == want, f"{rel}: {oct(mode)}, expected {oct(want)}"
    assert (path / "saved_model.pb").is_file()


def as_other_user(fn):
    """``(ok, output)`` of ``fn()`` run in a forked child as the unprivileged uid/gid 65534 when
    this process is root (whom permission bits do not stop; a fork, because the interpreter may lie
    under a directory that uid cannot enter), else as the current user (whom they do stop)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        status = 1
        try:
            os.close(read_fd)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            text, status = "\n".join(str(x) for x in fn()), 0
        except BaseException as exc:  # reported to the parent
            text = f"{type(exc).__name__}: {exc}"
        finally:
            os.write(write_fd, text.encode())
            os._exit(status)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        output = f.read().decode()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0, output


def test_read_only_shared_cache_is_readable_by_another_user(zoo, umask):
    """A cache filled by one user under umask 022, copied and made read-only with chmod, is
    verified and used offline by another user (uid 65534 when the tests run as root)."""
    shared = Path(tempfile.mkdtemp(prefix="relaxeq-shared-"))
    try:
        shared.chmod(0o755)
        umask(0o022)
        dl.download(NAME, base_url=zoo["server"].url, progress=False,
                    cache_dir=shared / "writable")
        shutil.copy(zoo["index"], shared / "index.json")
        (shared / "index.json").chmod(0o644)
        shutil.copytree(shared / "writable", shared / "ro")
        for p in [shared / "ro", *(shared / "ro").rglob("*")]:
            p.chmod(stat.S_IMODE(p.stat().st_mode) & ~0o222)  # chmod -R a-w
        before = modes_under(shared / "ro")
        ro, index = shared / "ro", shared / "index.json"
        ok, output = as_other_user(lambda: (
            dl.cached_path(NAME, cache_dir=ro, index=index),
            dl.download(NAME, cache_dir=ro, index=index, offline=True, progress=False)))
        assert ok, output
        want = str(ro / "zoo" / NAME / "1" / "saved_model")
        assert output.split() == [want, want]
        assert modes_under(ro) == before

        # A cache whose archive only its owner can read (as older versions wrote them): a
        # CacheError saying how to share it, not a PermissionError.
        (ro / "zoo" / NAME / "1" / "tiny_so3_toy-1.tar.gz").chmod(0o400)
        ok, output = as_other_user(lambda: [dl.cached_path(NAME, cache_dir=ro, index=index)])
        assert not ok and output.startswith("CacheError: ") and "chmod -R a+rX" in output
    finally:
        for p in [shared, *shared.rglob("*")]:
            if p.is_dir():
                p.chmod(0o755)
        shutil.rmtree(shared)


def age(path, seconds):
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_stale_temp_files_of_a_killed_download_are_removed(zoo):
    s = zoo["server"]
    s.plan["/" + ARTIFACT] = ["stall"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    code = f"from keras_relaxeq.zoo import download; download({NAME!r}, base_url={s.url!r}, progress=False)"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (list(zoo["edir"].glob(".tmp-download-*.part")) and s.total_hits()):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the download did not start"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    (killed,) = zoo["edir"].glob(".tmp-download-*.part")
    age(killed, dl.STALE_GRACE + 5)
    killed_extract = zoo["edir"] / ".tmp-extract-0123abcd"
    (killed_extract / "variables").mkdir(parents=True)
    age(killed_extract, dl.STALE_GRACE + 5)
    # In use by a live download (its lock is held): kept however old it is.
    live = zoo["edir"] / ".tmp-download-live.part"
    live.write_bytes(b"partial")
    age(live, 10 * dl.STALE_GRACE)
    # Too young to be judged (a download may be between creating and locking it): kept.
    young = zoo["edir"] / ".tmp-download-young.part"
    young.write_bytes(b"partial")
    unrelated = zoo["edir"] / "notes.part"
    unrelated.write_bytes(b"mine")
    age(unrelated, 10 * dl.STALE_GRACE)
    with open(live, "rb") as held:
        dl._lock(held.fileno())
        path = dl.download(NAME, base_url=s.url, progress=False)
        assert live.exists()
    assert (path / "saved_model.pb").is_file()
    assert not killed.exists() and not killed_extract.exists()
    assert young.exists() and unrelated.exists()
    assert sorted(p.name for p in zoo["edir"].iterdir()) == sorted(
        ["tiny_so3_toy-1.tar.gz", "saved_model", live.name, young.name, unrelated.name])


def bomb_archive(artifact, zeros):
    """The real SavedModel archive plus a file of ``zeros`` zero bytes (compresses ~1000:1)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        with tarfile.open(fileobj=io.BytesIO(artifact["bytes"]), mode="r:gz") as good:
            for m in good.getmembers():
                tar.addfile(m, good.extractfile(m) if m.isfile() else None)
        ti = tarfile.TarInfo("variables/padding.bin")
        ti.size = zeros
        tar.addfile(ti, io.BytesIO(bytes(zeros)))
    return buf.getvalue()


def test_extraction_is_capped_by_the_declared_size(zoo, artifact):
    data = bomb_archive(artifact, 16 << 20)
    expanded = sum(m.size for m in tarfile.open(fileobj=io.BytesIO(data), mode="r:gz"))
    assert expanded > dl.MAX_EXPANSION * len(data)  # the archive's declared size is len(data)
    s = zoo["server"]
    s.files["/" + ARTIFACT] = data
    zoo["write_index"](entry(data=data))
    with pytest.raises(errors.UnsafeArchiveError, match="expands to more than") as info:
        dl.download(NAME, base_url=s.url, progress=False)
    assert str(dl.MAX_EXPANSION * len(data)) in str(info.value)
    assert files_under(zoo["cache"]) == []  # archive removed, nothing extracted

    # Within the limit (the same padding, declared as part of a larger artifact): extracted.
    small = bomb_archive(artifact, 4096)
    out = zoo["cache"] / "ok"
    out.parent.mkdir(parents=True, exist_ok=True)
    (zoo["cache"] / "small.tar.gz").write_bytes(small)
    dl.safe_extract(zoo["cache"] / "small.tar.gz", out, max_bytes=64 * len(small))
    assert (out / "variables" / "padding.bin").stat().st_size == 4096
    with pytest.raises(errors.UnsafeArchiveError, match="more than 3 members"):
        dl.safe_extract(zoo["cache"] / "small.tar.gz", zoo["cache"] / "few", max_members=3)
    assert not (zoo["cache"] / "few").exists()


def test_a_directory_where_the_archive_belongs(zoo):
    blocker = zoo["edir"] / "tiny_so3_toy-1.tar.gz"
    (blocker / "inside").mkdir(parents=True)
    for call in (lambda: dl.download(NAME, base_url=zoo["server"].url, progress=False),
                 lambda: dl.cached_path(NAME)):
        with pytest.raises(errors.CacheError, match="in the way.*rm -r"):
            call()
    assert (blocker / "inside").is_dir() and zoo["server"].total_hits() == 0


@pytest.mark.parametrize("where", ["root", "entry"])
def test_a_file_where_the_cache_directory_belongs(zoo, where):
    blocker = zoo["cache"] if where == "root" else zoo["cache"] / "zoo" / NAME
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a directory")
    with pytest.raises(errors.CacheError, match=f"{blocker} is a file, not a directory"):
        dl.download(NAME, base_url=zoo["server"].url, progress=False)
    assert blocker.read_text() == "not a directory" and zoo["server"].total_hits() == 0


@pytest.mark.parametrize("var, value, words", [
    (dl.ENV_MAX_TRIES, "abc", "integer >= 1"),
    (dl.ENV_MAX_TRIES, "0", "integer >= 1"),
    (dl.ENV_MAX_TRIES, "2.5", "integer >= 1"),
    (dl.ENV_TIMEOUT, "-1", "number > 0"),
    (dl.ENV_TIMEOUT, "nan", "number > 0"),
    (dl.ENV_RETRY_DELAY, "soon", "number >= 0"),
    (dl.ENV_OFFLINE, "maybe", "set it to 1"),
])
def test_invalid_settings_are_zoo_errors(zoo, monkeypatch, var, value, words):
    monkeypatch.setenv(var, value)
    with pytest.raises(errors.InvalidSettingError, match=words) as info:
        dl.download(NAME, base_url=zoo["server"].url, progress=False)
    assert f"${var}={value!r}" in str(info.value)
    assert isinstance(info.value, ValueError) and zoo["server"].total_hits() == 0


def test_invalid_arguments_are_zoo_errors(zoo):
    for kwargs in ({"max_tries": 0}, {"max_tries": True}, {"timeout": 0}, {"base_delay": -1}):
        with pytest.raises(errors.InvalidSettingError, match=f"{next(iter(kwargs))}="):
            dl.download(NAME, base_url=zoo["server"].url, progress=False, **kwargs)
    assert zoo["server"].total_hits() == 0


@pytest.mark.parametrize("version", ["1; rm", "", 1.5, True, "-1"])
def test_odd_versions_are_unknown_versions(zoo, version):
    with pytest.raises(errors.UnknownModelError, match="available versions: 1") as info:
        dl.download(NAME, version, base_url=zoo["server"].url, progress=False)
    assert "version=None" not in str(info.value)
    assert zoo["server"].total_hits() == 0


@pytest.mark.parametrize("content, words", [
    (b'{"models": []}\xff', "not UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"schema_version": 1, "models": [], "x": ' + b"9" * 5000 + b"}", "not valid JSON"),
    (None, "Cannot read"),
])
def test_unreadable_catalogues_are_invalid_index_errors(zoo, content, words):
    index = zoo["index"]
    if content is None:  # a directory where the file should be
        index.unlink()
        (index / "index.json").mkdir(parents=True)
    else:
        index.write_bytes(content)
    with pytest.raises(errors.InvalidIndexError, match=words):
        dl.download(NAME, base_url=zoo["server"].url, progress=False)


def test_progress_in_logs_is_periodic_lines(tmp_path, capsys, monkeypatch):
    data = np.random.default_rng(0).bytes(5 * dl.CHUNK + 123)
    (tmp_path / "src.bin").write_bytes(data)
    art = registry.Artifact(file="src.bin", size=len(data), sha256=hashlib.sha256(data).hexdigest())
    monkeypatch.setattr(fetching, "LOG_INTERVAL", 0.0)  # a line per chunk
    capsys.readouterr()
    dl.fetch(dl.Source("local", str(tmp_path / "src.bin")), tmp_path / "dst.bin", art,
             policy=dl.RetryPolicy(), progress=True, desc="toy v1")
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert len(lines) >= 6 and all(ln.startswith("toy v1: ") for ln in lines)
    percents = [int(ln.split()[2].rstrip("%")) for ln in lines]
    assert percents[0] == 0 and percents[-1] == 100 and percents == sorted(percents)
    assert lines[-1].endswith(" done") and "/" in lines[-1]
    assert (tmp_path / "dst.bin").read_bytes() == data

    monkeypatch.setattr(fetching, "LOG_INTERVAL", 3600.0)  # only the first and the last line
    dl.fetch(dl.Source("local", str(tmp_path / "src.bin")), tmp_path / "dst2.bin", art,
             policy=dl.RetryPolicy(), progress=True, desc="toy v1")
    assert [ln.split()[2] for ln in capsys.readouterr().err.splitlines()] == ["0%", "100%"]
