import hashlib
import os
import stat

import numpy as np
import pytest

from keras_relaxeq.utils import atomic_write, set_untracked, sha256_file


def test_sha256_file_matches_hashlib(tmp_path):
    data = os.urandom(3 * (1 << 20) + 17)  # several chunks and a partial one
    p = tmp_path / "blob"
    p.write_bytes(data)
    assert sha256_file(p) == hashlib.sha256(data).hexdigest()
    assert sha256_file(str(p), chunk_size=1000) == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("content", ["héllo\n", b"\x00\x01bytes"])
def test_atomic_write_text_and_bytes(tmp_path, content):
    p = tmp_path / "sub" / "f.txt"
    atomic_write(p, content)
    expected = content.encode() if isinstance(content, str) else content
    assert p.read_bytes() == expected
    assert os.listdir(p.parent) == ["f.txt"]


def test_atomic_write_callable_and_umask(tmp_path):
    old = os.umask(0o022)
    try:
        p = atomic_write(tmp_path / "a.npz", lambda f: np.savez(f, x=np.arange(3)), fsync=True)
    finally:
        os.umask(old)
    assert np.load(p)["x"].tolist() == [0, 1, 2]
    assert stat.S_IMODE(p.stat().st_mode) == 0o644  # not mkstemp's 0o600


def test_atomic_write_failure_keeps_old_file_and_no_temporary(tmp_path):
    p = tmp_path / "f"
    p.write_text("old")

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(p, boom)
    assert p.read_text() == "old"
    assert os.listdir(tmp_path) == ["f"]


def test_set_untracked_keeps_irreps():
    import keras

    from keras_relaxeq.groups.irreps import Irreps

    irreps = Irreps("2x0e+1x1o")
    layer = keras.layers.Layer()
    set_untracked(layer, "irreps", irreps)
    assert layer.irreps is irreps
    with pytest.raises(ValueError, match="Cannot interpret"):
        layer.tracked = irreps  # Keras' tracking rebuilds the tuple, which Irreps cannot parse
