"""``relaxeq zoo ...``: list, info, download, verify (hash, load, signature, invariance),
serve-config."""

import hashlib
import importlib.metadata
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import pytest

from keras_relaxeq import cli
from keras_relaxeq.export.serving import export_saved_model, pack_saved_model, read_models_config
from keras_relaxeq.zoo import registry

ENV_CACHE, ENV_URL, ENV_OFFLINE = ("KERAS_RELAXEQ_CACHE", "KERAS_RELAXEQ_ZOO_URL", "KERAS_RELAXEQ_OFFLINE")


def invariant_model():
    keras.utils.set_random_seed(0)
    points = keras.Input((None, 3), name="points")
    h = keras.layers.Dense(8, activation="tanh")(keras.ops.norm(points, axis=-1, keepdims=True))
    return keras.Model(points, keras.layers.Dense(4)(keras.ops.mean(h, axis=1)))


def plain_model():
    """Not rotation invariant: a dense head on the mean point."""
    keras.utils.set_random_seed(1)
    points = keras.Input((None, 3), name="points")
    h = keras.layers.Dense(16, activation="tanh")(keras.ops.mean(points, axis=1))
    h = keras.layers.Dense(16, activation="tanh")(keras.ops.concatenate([h, keras.ops.max(points, axis=1)], axis=-1))
    return keras.Model(points, keras.layers.Dense(4)(h))


def regressor():
    keras.utils.set_random_seed(2)
    x = keras.Input((None, 3), name="points")
    return keras.Model(x, keras.layers.Dense(3)(x))


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """A local mirror folder with three real packed SavedModels."""
    root = tmp_path_factory.mktemp("mirror")
    built = {}
    for name, make, outputs in [
        ("tiny_so3_toy", invariant_model, "classification"),
        ("plain_so3_toy", plain_model, "classification"),
        ("reg_o3_nbody", regressor, "regression"),
    ]:
        path = export_saved_model(make(), root / "export", name, 1, outputs=outputs, write_config=False)
        packed = pack_saved_model(path, root / "artifacts" / f"{name}-1.tar.gz")
        built[name] = {"file": f"artifacts/{name}-1.tar.gz", "size": packed.size, "sha256": packed.sha256}
    return root, built


def entry(name, art, task="point_cloud_classification", outputs=None):
    arch, group, dataset = name.split("_")
    return {
        "name": name,
        "version": 1,
        "arch": arch,
        "group": group,
        "dataset": dataset,
        "task": task,
        "architecture": {"class": "tests.Toy", "config": {}},
        "input": {
            "name": "points",
            "dtype": "float32",
            "shape": [None, None, 3],
            "preprocessing": "centre, unit sphere",
            "num_points": 64,
        },
        "outputs": outputs or {"logits": {}, "probabilities": {}, "class_id": {}},
        "artifact": dict(art),
        "metrics": [{"name": "accuracy", "value": 0.25, "split": "test", "protocol": "toy"}],
        "license": "Apache-2.0",
        "citation": "toy citation",
        "card": f"cards/{name}.md",
    }


@pytest.fixture
def env(tmp_path, monkeypatch, mirror):
    root, built = mirror
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv(ENV_CACHE, str(tmp_path / "cache"))
    for var in (ENV_URL, ENV_OFFLINE, registry.ENV_INDEX):
        monkeypatch.delenv(var, raising=False)

    def make_index(*entries):
        path = tmp_path / f"index{len(list(tmp_path.glob('index*.json')))}.json"
        path.write_text(json.dumps({"schema_version": 1, "base_url": str(root), "models": list(entries)}))
        return str(path)

    return {"built": built, "make_index": make_index, "cache": tmp_path / "cache", "tmp": tmp_path}


def run(*argv):
    out = io.StringIO()
    code = cli.main(list(argv), out=out)
    return code, out.getvalue()


def test_console_script_is_declared():
    eps = importlib.metadata.entry_points(group="console_scripts")
    assert any(ep.name == "relaxeq" and ep.value == "keras_relaxeq.cli:main" for ep in eps)


def test_usage_errors():
    assert cli.main([]) == 2
    assert cli.main(["zoo"]) == 2
    with pytest.raises(SystemExit) as info:
        cli.main(["zoo", "frobnicate"])
    assert info.value.code == 2


def test_shipped_catalogue_lists_and_verifies(env):
    code, out = run("zoo", "list")
    assert code == 0
    n = len(registry.list_models())
    assert ("No models" in out) == (n == 0)
    code, out = run("zoo", "verify", "--no-progress")  # CI: every real entry is checked
    assert code == 0, out
    if n == 0:
        assert "nothing to verify" in out


def test_empty_catalogue(env):
    index = env["make_index"]()
    assert run("zoo", "--index", index, "list") == (0, f"No models in the catalogue {index} yet.\n")
    code, out = run("zoo", "--index", index, "verify")
    assert code == 0 and "nothing to verify" in out
    code, out = run("zoo", "--index", index, "serve-config", "--base-dir", str(env["tmp"] / "s"))
    assert code == 0 and "No downloaded entries" in out
    assert not (env["tmp"] / "s" / "models.config").exists()
    code, out = run("zoo", "--index", index, "list", "--json")
    assert code == 0 and json.loads(out) == []


def test_list_info_and_unknown_name(env, capsys):
    b = env["built"]
    index = env["make_index"](
        entry("tiny_so3_toy", b["tiny_so3_toy"]),
        entry("reg_o3_nbody", b["reg_o3_nbody"], task="nbody_regression", outputs={"prediction": {}}),
    )
    code, out = run("zoo", "--index", index, "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "VERSION", "TASK", "SIZE", "METRIC"]
    assert [ln.split()[0] for ln in lines[1:]] == ["reg_o3_nbody", "tiny_so3_toy"]
    code, out = run("zoo", "--index", index, "info", "tiny_so3_toy")
    assert code == 0
    assert b["tiny_so3_toy"]["sha256"] in out and "accuracy = 0.25 (test, toy)" in out
    assert "preprocessing: centre, unit sphere" in out and "Apache-2.0" in out
    code, out = run("zoo", "--index", index, "info", "tiny_so3_toy", "--json")
    assert json.loads(out)["artifact"] == b["tiny_so3_toy"]

    capsys.readouterr()
    code, out = run("zoo", "--index", index, "info", "tiny_so3_tyo")
    err = capsys.readouterr().err
    assert code == 1 and out == ""
    assert "Did you mean 'tiny_so3_toy'" in err and "relaxeq zoo list" in err


def test_download_and_verify_good_entries(env):
    b = env["built"]
    index = env["make_index"](
        entry("tiny_so3_toy", b["tiny_so3_toy"]),
        entry("reg_o3_nbody", b["reg_o3_nbody"], task="nbody_regression", outputs={"prediction": {}}),
    )
    code, out = run("zoo", "--index", index, "download", "tiny_so3_toy", "--no-progress")
    path = Path(out.strip())
    assert code == 0 and path == env["cache"] / "zoo" / "tiny_so3_toy" / "1" / "saved_model"
    assert (path / "saved_model.pb").is_file()

    code, out = run("zoo", "--index", index, "verify", "--no-progress")
    assert code == 0, out
    lines = {ln.split()[1]: ln for ln in out.splitlines() if ln.startswith(("OK", "FAIL"))}
    assert lines["tiny_so3_toy"].startswith("OK") and "rotation invariance" in lines["tiny_so3_toy"]
    assert lines["reg_o3_nbody"].startswith("OK")
    assert "n/a for task nbody_regression" in lines["reg_o3_nbody"]
    assert "2/2 entries passed." in out
    # verify downloaded the second entry into the cache too
    assert (env["cache"] / "zoo" / "reg_o3_nbody" / "1" / "saved_model").is_dir()


def test_verify_detects_broken_entries(env):
    b = env["built"]
    wrong_hash = dict(b["tiny_so3_toy"], sha256=hashlib.sha256(b"other").hexdigest())
    index = env["make_index"](
        entry("plain_so3_toy", b["plain_so3_toy"]),  # not invariant
        entry("tiny_so3_toy", wrong_hash),  # wrong published hash
        entry("reg_o3_toy", b["reg_o3_nbody"]),  # classifier w/o logits
    )
    code, out = run("zoo", "--index", index, "verify", "--no-progress")
    assert code == 1
    lines = {ln.split()[1]: ln for ln in out.splitlines() if ln.startswith(("OK", "FAIL"))}
    assert lines["plain_so3_toy"].startswith("FAIL") and "rotation invariance" in lines["plain_so3_toy"]
    assert lines["tiny_so3_toy"].startswith("FAIL") and "HashMismatchError" in lines["tiny_so3_toy"]
    assert lines["reg_o3_toy"].startswith("FAIL") and "signature" in lines["reg_o3_toy"]
    assert "0/3 entries passed." in out
    # Selecting names verifies only those; unknown names are errors.
    code, out = run("zoo", "--index", index, "verify", "plain_so3_toy", "--no-progress")
    assert code == 1 and "0/1 entries passed." in out
    assert run("zoo", "--index", index, "verify", "nope_so3_toy")[0] == 1


def test_invariance_tolerance_is_meaningful(env):
    # With an absurd tolerance the non-invariant model passes, proving the check compares errors.
    index = env["make_index"](entry("plain_so3_toy", env["built"]["plain_so3_toy"]))
    code, out = run("zoo", "--index", index, "verify", "--no-progress", "--atol", "1e6")
    assert code == 0, out


def test_offline_download_error(env, capsys):
    index = env["make_index"](entry("tiny_so3_toy", env["built"]["tiny_so3_toy"]))
    code, _ = run(
        "zoo",
        "--index",
        index,
        "download",
        "tiny_so3_toy",
        "--offline",
        "--base-url",
        "http://127.0.0.1:9/zoo",
        "--no-progress",
    )
    err = capsys.readouterr().err
    assert code == 1 and "Offline mode" in err and ENV_CACHE in err


def test_serve_config(env):
    b = env["built"]
    index = env["make_index"](
        entry("tiny_so3_toy", b["tiny_so3_toy"]),
        entry("reg_o3_nbody", b["reg_o3_nbody"], task="nbody_regression", outputs={"prediction": {}}),
        entry("plain_so3_toy", b["plain_so3_toy"]),
    )
    for name in ("tiny_so3_toy", "reg_o3_nbody"):
        assert run("zoo", "--index", index, "download", name, "--no-progress")[0] == 0
    base = env["tmp"] / "serving"
    args = ("zoo", "--index", index, "serve-config", "--base-dir", str(base), "--model-base-path-prefix", "/models")
    code, out = run(*args)
    assert code == 0, out
    assert "skip  plain_so3_toy v1: not downloaded" in out
    for name in ("tiny_so3_toy", "reg_o3_nbody"):
        assert (base / name / "1" / "saved_model.pb").is_file()
        assert sorted(p.name for p in (base / name).iterdir()) == ["1"]
    assert not (base / "plain_so3_toy").exists()
    blocks = dict(read_models_config(base / "models.config"))
    assert sorted(blocks) == ["reg_o3_nbody", "tiny_so3_toy"]
    assert 'base_path: "/models/tiny_so3_toy"' in blocks["tiny_so3_toy"]
    assert "docker run" in out and "tensorflow/serving" in out

    # Idempotent; a modified served copy is reported instead of silently overwritten.
    assert run(*args)[0] == 0
    weights = next((base / "tiny_so3_toy" / "1" / "variables").glob("variables.data-*"))
    weights.write_bytes(b"\0" * weights.stat().st_size)
    assert run(*args)[0] == 1
    # The served copies are copies: the cache still verifies, without repairs.
    import warnings

    from keras_relaxeq.zoo import cached_path

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cached_path("tiny_so3_toy", index=index) == (env["cache"] / "zoo" / "tiny_so3_toy" / "1" / "saved_model")


def test_serve_config_downloads_the_named_entries(env, capsys):
    b = env["built"]
    index = env["make_index"](entry("tiny_so3_toy", b["tiny_so3_toy"]), entry("plain_so3_toy", b["plain_so3_toy"]))
    base = env["tmp"] / "serving_dl"
    code, out = run(
        "zoo",
        "--index",
        index,
        "serve-config",
        "tiny_so3_toy",
        "--download",
        "--no-progress",
        "--base-dir",
        str(base),
        "--model-base-path-prefix",
        "/models",
    )
    assert code == 0, out
    assert (base / "tiny_so3_toy" / "1" / "saved_model.pb").is_file() and not (base / "plain_so3_toy").exists()
    assert sorted(dict(read_models_config(base / "models.config"))) == ["tiny_so3_toy"]
    assert (env["cache"] / "zoo" / "tiny_so3_toy" / "1" / "saved_model" / "saved_model.pb").is_file()
    assert not (env["cache"] / "zoo" / "plain_so3_toy").exists()  # only the named entry was fetched
    # an unknown name is a typed error with the close match, and nothing is written
    code, _ = run("zoo", "--index", index, "serve-config", "tiny_so3_tyo", "--base-dir", str(env["tmp"] / "s2"))
    err = capsys.readouterr().err
    assert code == 1 and "tiny_so3_toy" in err and not (env["tmp"] / "s2").exists()


# ---------------------------------------------------------------------------------------------
# User errors: one line on stderr, non-zero exit, no traceback.
# ---------------------------------------------------------------------------------------------


def run_user_error(capsys, *argv):
    """Exit status and stderr of ``relaxeq argv`` run in-process (argparse exits via SystemExit)."""
    capsys.readouterr()
    try:
        code = cli.main(list(argv), out=io.StringIO())
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def assert_one_line(err):
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err and "version=None" not in err


@pytest.mark.parametrize(
    "case",
    [
        "cache_dir_is_a_file",
        "max_tries_0",
        "max_tries_env_abc",
        "verify_timeout_env",
        "base_dir_is_a_file",
        "num_points_0",
        "num_samples_0",
        "atol_negative",
        "version_7",
        "version_abc",
        "no_command",
        "index_not_utf8",
        "offline_env_garbage",
    ],
)
def test_user_errors_are_one_line(env, capsys, monkeypatch, case):
    index = env["make_index"](entry("tiny_so3_toy", env["built"]["tiny_so3_toy"]))
    a_file = env["tmp"] / "a_file"
    a_file.write_text("x")
    zoo = ("zoo", "--index", index)
    argv, want_code, words = {
        "cache_dir_is_a_file": (
            (*zoo, "download", "tiny_so3_toy", "--cache-dir", str(a_file)),
            1,
            "is a file, not a directory",
        ),
        "max_tries_0": ((*zoo, "download", "tiny_so3_toy", "--max-tries", "0"), 2, "--max-tries"),
        "max_tries_env_abc": ((*zoo, "download", "tiny_so3_toy", "--no-progress"), 1, "KERAS_RELAXEQ_MAX_TRIES='abc'"),
        "verify_timeout_env": ((*zoo, "verify", "--no-progress"), 1, "KERAS_RELAXEQ_TIMEOUT='0'"),
        "base_dir_is_a_file": (
            (*zoo, "serve-config", "--base-dir", str(a_file / "sub")),
            1,
            "is a file, not a directory",
        ),
        "num_points_0": ((*zoo, "verify", "--num-points", "0"), 2, "--num-points"),
        "num_samples_0": ((*zoo, "verify", "--num-samples", "0"), 2, "--num-samples"),
        "atol_negative": ((*zoo, "verify", "--atol", "-1"), 2, "--atol"),
        "version_7": (
            (*zoo, "info", "tiny_so3_toy", "--version", "7"),
            1,
            "no version 7; available versions: 1 (give no version for the latest",
        ),
        "version_abc": ((*zoo, "download", "tiny_so3_toy", "--version", "1; rm"), 2, "--version"),
        "no_command": ((), 2, "name a command"),
        "index_not_utf8": (("zoo", "--index", str(a_file), "list"), 1, "not UTF-8"),
        "offline_env_garbage": (
            (*zoo, "download", "tiny_so3_toy", "--no-progress"),
            1,
            "KERAS_RELAXEQ_OFFLINE='sometimes'",
        ),
    }[case]
    if case == "max_tries_env_abc":
        monkeypatch.setenv("KERAS_RELAXEQ_MAX_TRIES", "abc")
    if case == "verify_timeout_env":
        monkeypatch.setenv("KERAS_RELAXEQ_TIMEOUT", "0")
    if case == "index_not_utf8":
        a_file.write_bytes(b"\xff\xfe{}")
    if case == "offline_env_garbage":
        monkeypatch.setenv(ENV_OFFLINE, "sometimes")
    code, err = run_user_error(capsys, *argv)
    assert code == want_code
    assert_one_line(err)
    assert words in err
    assert not env["cache"].exists()  # nothing was downloaded


@pytest.mark.parametrize("garbage", [b"not a config at all\n", b"model_config_list { config {", b"\xff\xfe\x00"])
def test_serve_config_checks_models_config_before_copying(env, capsys, garbage):
    index = env["make_index"](entry("tiny_so3_toy", env["built"]["tiny_so3_toy"]))
    assert run("zoo", "--index", index, "download", "tiny_so3_toy", "--no-progress")[0] == 0
    base = env["tmp"] / "serving"
    base.mkdir()
    (base / "models.config").write_bytes(garbage)
    code, err = run_user_error(capsys, "zoo", "--index", index, "serve-config", "--base-dir", str(base))
    assert code == 1
    assert_one_line(err)
    assert "models.config cannot be updated" in err and "Nothing was copied" in err
    assert sorted(p.name for p in base.iterdir()) == ["models.config"]  # nothing copied in
    assert (base / "models.config").read_bytes() == garbage


def test_console_script_error_in_a_fresh_process(env):
    """The installed ``relaxeq`` script: a user error is one line, exit status 1."""
    script = shutil.which("relaxeq") or str(Path(sys.executable).parent / "relaxeq")
    a_file = env["tmp"] / "a_file"
    a_file.write_text("x")
    index = env["make_index"](entry("tiny_so3_toy", env["built"]["tiny_so3_toy"]))
    result = subprocess.run(
        [script, "zoo", "--index", index, "download", "tiny_so3_toy", "--cache-dir", str(a_file), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(cli.__file__).resolve().parents[1])},
    )
    assert result.returncode == 1 and result.stdout == ""
    assert_one_line(result.stderr)
    assert result.stderr.startswith("error: The model cache") and str(a_file) in result.stderr
