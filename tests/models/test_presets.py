"""``from_preset`` / ``pretrained=True``: zoo weights as a starting point, with a new head and the
relaxation branches back for fine-tuning."""

from pathlib import Path

import keras
import numpy as np
import pytest

import keras_relaxeq as kr
from keras_relaxeq import zoo
from keras_relaxeq.export import has_relaxation_branches

PRESET = "vn_pointnet_so3_modelnet40"
REPO_INDEX = Path(__file__).resolve().parents[2] / "zoo" / "index.json"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("KERAS_RELAXEQ_CACHE", str(tmp_path_factory.mktemp("cache")))
    mp.setenv("KERAS_RELAXEQ_ZOO_INDEX", str(REPO_INDEX))
    mp.delenv("KERAS_RELAXEQ_ZOO_URL", raising=False)
    published = zoo.load(PRESET, as_keras=True, progress=False)
    x = zoo.get_entry(PRESET).preprocess(np.random.default_rng(0).normal(size=(4, 400, 3)), seed=0)
    yield published, x
    mp.undo()


def features(model, x):
    """The head's input (after the last ReLU), the part a new head keeps."""
    return keras.Model(model.inputs, model.get_layer("relu2").output)(x, training=False).numpy()


def test_from_preset_reproduces_the_published_model(env):
    published, x = env
    model = kr.models.vn_pointnet.from_preset(PRESET)
    assert not has_relaxation_branches(model)
    want = published(x, training=False).numpy()
    got = model(x, training=False).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5 * max(1.0, np.abs(want).max()))


def test_pretrained_new_head_relaxed(env):
    published, x = env
    model = kr.models.vn_pointnet(pretrained=True, num_classes=10, num_points=None)
    assert has_relaxation_branches(model) and model.output.shape == (None, 10)
    # zero-initialised branches: the relaxed encoder starts equal to the pretrained one
    np.testing.assert_allclose(features(model, x), features(published, x), atol=1e-4)
    plain = kr.project(model)
    assert not has_relaxation_branches(plain) and plain.output.shape == (None, 10)
    np.testing.assert_allclose(features(plain, x), features(published, x), atol=1e-4)


@pytest.mark.slow
def test_pretrained_fine_tuning_trains_and_projects(env):
    _, x = env
    model = kr.models.vn_pointnet(pretrained=True, num_classes=10, num_points=None)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        jit_compile=False,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    y = np.arange(len(x)) % 10
    model.fit(x, y, epochs=1, batch_size=4, verbose=0, callbacks=[kr.ThetaScheduler("triangle")])
    plain = kr.project(model)
    assert not has_relaxation_branches(plain) and plain.output.shape == (None, 10)
    assert np.all(np.isfinite(plain.predict(x[:, :200], verbose=0)))  # any point count


def test_preset_of_another_architecture_refused(env):
    with pytest.raises(ValueError, match="is a keras_relaxeq.models.vn_pointnet, not keras_relaxeq.models.vn_dgcnn"):
        kr.models.vn_dgcnn.from_preset(PRESET)
