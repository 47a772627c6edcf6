"""VN-PointNet and VN-DGCNN (ModelNet40 models): parameter counts, projection, invariance, saving."""

import importlib

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_relaxeq as kr
from keras_relaxeq.groups.representations import TrivialRep
from keras_relaxeq.layers.relaxation import relaxed_layers

dgcnn_module = importlib.import_module("keras_relaxeq.models.vn_dgcnn")
pointnet_module = importlib.import_module("keras_relaxeq.models.vn_pointnet")
from keras_relaxeq.models.vn_dgcnn import vn_dgcnn  # noqa: E402
from keras_relaxeq.models.vn_pointnet import count_parameters, vn_pointnet  # noqa: E402

K = 8
SMALL = {
    # name: (builder, kwargs of a small model, number of relaxed VN linear maps)
    "pointnet": (vn_pointnet, dict(width=0.1, k=K, num_classes=5), 23),
    "dgcnn": (vn_dgcnn, dict(width=0.15, k=K, num_classes=5), 15),
}


@pytest.fixture(scope="module")
def shapes():
    from keras_relaxeq.datasets.modelnet40 import load_modelnet40

    data = load_modelnet40("train")  # the shared data must be there: a missing copy is a failure
    return tf.constant(np.asarray(data.points[:4, :64], np.float32))


@pytest.fixture(scope="module")
def trained(shapes):
    """Relaxed small models after one training step at theta = 1, so the branches are non-zero.

    SGD with clipped (bounded) updates: plain SGD steps on the zero-initialised VN-PointNet
    branches can blow the relaxed model's outputs up to non-finite values.
    """
    models = {}
    labels = np.random.default_rng(0).integers(0, 5, size=len(shapes))
    for name, (builder, kwargs, _) in SMALL.items():
        keras.utils.set_random_seed(1)
        model = builder(relaxed=True, **kwargs)
        assert kr.set_theta(model, 1.0) == SMALL[name][2]
        # Eager: tracing the penalised train step costs far more than one small step.
        model.compile(
            optimizer=keras.optimizers.SGD(0.05, clipvalue=1.0),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            run_eagerly=True,
        )
        history = model.fit(shapes, labels, batch_size=4, epochs=1, verbose=0)
        assert np.all(np.isfinite(history.history["loss"]))
        models[name] = model
    return models


@pytest.fixture(scope="module")
def projected(trained):
    return {name: kr.project(model) for name, model in trained.items()}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_projection_matches_plain_parameter_count(name, trained, projected):
    builder, kwargs, num_maps = SMALL[name]
    relaxed = trained[name]
    assert len(relaxed_layers(relaxed)) == num_maps
    plain = builder(relaxed=False, **kwargs)
    assert not kr.has_relaxation_branches(projected[name])
    assert count_parameters(projected[name]) == count_parameters(plain)
    assert relaxed.count_params() > plain.count_params()


@pytest.mark.parametrize("name", sorted(SMALL))
def test_projected_model_is_invariant_on_modelnet40(name, trained, projected, shapes):
    model = trained[name]
    for layer in relaxed_layers(model):  # training made the branches non-zero
        assert float(tf.reduce_max(tf.abs(layer.relaxation_kernel))) > 0.0
    logits = projected[name](shapes, training=False)
    assert logits.shape == (4, 5)
    kr.testing.assert_invariant(projected[name], shapes)
    # The relaxed model at theta = 0 computes the projected model.
    kr.set_theta(model, 0.0)
    try:
        np.testing.assert_allclose(model(shapes, training=False), logits, rtol=1e-4, atol=1e-5)
    finally:
        kr.set_theta(model, 1.0)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_relaxed_model_with_branches_is_not_invariant(name, trained, shapes):
    report = kr.testing.check_equivariance(trained[name], shapes, "vector", TrivialRep())
    assert not report.passed, str(report)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_keras_round_trip(name, trained, shapes, tmp_path):
    model = trained[name]
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, kr.RelaxedModel)
    assert kr.get_theta(loaded) == 1.0
    assert loaded.penalty_scale == model.penalty_scale
    np.testing.assert_allclose(loaded(shapes, training=False), model(shapes, training=False), rtol=1e-5, atol=1e-6)


def test_fixed_num_points_and_penalties(shapes):
    model = vn_dgcnn(num_points=64, width=0.1, k=K, num_classes=3)
    assert model.input_shape == (None, 64, 3)
    with kr.collect_relaxation_penalties() as collector:
        model(shapes, training=False)
    assert len(collector) == 15
    lie, proj = collector.totals()
    assert float(lie) > 0.0 and float(proj) > 0.0  # glorot branches: non-equivariant from the start


def test_full_width_parameter_counts():
    """Width 1.0: the published VN-PointNet count (see the module docstrings for the explanation)."""
    plain = vn_pointnet(relaxed=False)
    trainable, non_trainable, total = count_parameters(plain)
    assert trainable == pointnet_module.PUBLISHED_PLAIN_PARAMETERS == 1_972_745
    assert non_trainable == 4_726  # batch-norm moving statistics (PyTorch buffers)
    assert total == pointnet_module.PLAIN_COUNT_PARAMS == 1_977_471
    kernels = sum(
        9 * int(np.prod(layer.kernel.shape))
        for layer in plain._flatten_layers()
        if isinstance(layer, kr.layers.VNLinear)
    )
    assert kernels == pointnet_module.BRANCH_KERNEL_PARAMETERS == 7_005_123

    dgcnn = vn_dgcnn(relaxed=False)
    assert count_parameters(dgcnn) == (dgcnn_module.PLAIN_TRAINABLE_PARAMETERS, 3_578, dgcnn_module.PLAIN_COUNT_PARAMS)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_low_rank_branches_threaded_through_the_builders(name, shapes):
    """``relaxation_rank=r``: factor branches ``U [D_in, r]``, ``V [r, D_out]`` where ``r < min(D_in, D_out)``,
    dense kernels elsewhere; projection gives the plain model's parameters; the penalties are finite."""
    builder, kwargs, num_maps = SMALL[name]
    rank = 6 if name == "pointnet" else 4  # both: some maps low-rank, some with min(D_in, D_out) <= rank
    model = builder(relaxed=True, relaxation_rank=rank, relaxation_initializer="random_normal", **kwargs)
    plain = builder(relaxed=False, **kwargs)
    layers = relaxed_layers(model)
    assert len(layers) == num_maps
    expected_branch = 0
    for layer in layers:
        d_in, d_out = layer.input_rep.dim, layer.output_rep.dim
        assert layer.relaxation_low_rank == (rank < min(d_in, d_out))
        expected_branch += (rank * (d_in + d_out) if layer.relaxation_low_rank else d_in * d_out) + d_out
    assert any(l.relaxation_low_rank for l in layers) and not all(l.relaxation_low_rank for l in layers)
    trainable = count_parameters(model)[0]
    assert trainable == count_parameters(plain)[0] + expected_branch
    with kr.collect_relaxation_penalties() as collector:
        model(shapes, training=False)
    lie, proj = collector.totals()
    assert np.isfinite(float(lie)) and float(lie) > 0.0 and float(proj) > 0.0
    projected = kr.project(model)
    assert count_parameters(projected) == count_parameters(plain)
