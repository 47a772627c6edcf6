"""ProjectedValidation (projected metrics in the epoch logs, BN re-estimation) and plot_history."""

import csv

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_relaxeq as kr
from keras_relaxeq.models import vn_classifier
from keras_relaxeq.training.callbacks import ProjectedValidation, batchnorm_layers, plot_history, reestimate_batchnorm

NUM_POINTS = 16


def data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, NUM_POINTS, 3)).astype("float32")
    x[: n // 2] *= np.array([2.0, 1.0, 0.5], "float32")
    y = (np.arange(n) >= n // 2).astype("int32")
    return x, y


def small_model():
    model = vn_classifier(
        2,
        num_points=NUM_POINTS,
        channels=(4, 4, 4),
        k=4,
        relaxed=True,
        dropout=0.2,
        hidden_units=8,
        relaxation_initializer="glorot_uniform",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    keras.utils.set_random_seed(0)
    x, y = data(16, 0)
    xv, yv = data(8, 1)
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    val = tf.data.Dataset.from_tensor_slices((xv, yv)).batch(4)
    model = small_model()
    csv_path = tmp_path_factory.mktemp("cb") / "log.csv"
    cb = ProjectedValidation(val)
    history = model.fit(
        train,
        epochs=2,
        verbose=0,
        shuffle=False,
        callbacks=[kr.ThetaScheduler("triangle", epochs=2), cb, keras.callbacks.CSVLogger(str(csv_path))],
    )
    return dict(model=model, cb=cb, history=history.history, val=val, train=train, csv=csv_path)


def test_projected_metrics_in_logs_equal_direct_evaluation(trained):
    hist = trained["history"]
    assert len(hist["projected_val_accuracy"]) == 2
    assert len(hist["projected_val_loss"]) == 2
    plain = kr.project(trained["model"])
    assert not kr.has_relaxation_branches(plain)
    plain.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    direct = plain.evaluate(trained["val"], verbose=0, return_dict=True)
    np.testing.assert_allclose(hist["projected_val_loss"][-1], direct["loss"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(hist["projected_val_accuracy"][-1], direct["accuracy"], atol=1e-6)
    # theta ends at 0, so the relaxed model's val metrics equal the projected ones
    relaxed = trained["model"].evaluate(trained["val"], verbose=0, return_dict=True)
    np.testing.assert_allclose(relaxed["loss"], direct["loss"], rtol=1e-4, atol=1e-5)
    # written before CSVLogger ran, so it is in the CSV file
    with open(trained["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and "projected_val_accuracy" in rows[0]
    np.testing.assert_allclose(float(rows[-1]["projected_val_accuracy"]), direct["accuracy"], atol=1e-6)


def test_every_skips_epochs():
    cb = ProjectedValidation(None, every=3)
    cb.params = {"epochs": 10}
    logs = {}
    cb.on_epoch_end(0, logs)  # epoch 1: not a multiple of 3 -> nothing evaluated
    assert logs == {}
    with pytest.raises(ValueError):
        ProjectedValidation(None, bn_reestimate=2)  # needs bn_data


def test_bn_reestimation_changes_moving_stats(trained):
    plain = kr.project(trained["model"])
    bns = batchnorm_layers(plain)
    assert bns
    before = [bn.moving_mean.numpy().copy() for bn in bns]
    kernels = [w.numpy().copy() for w in plain.trainable_weights]
    used = reestimate_batchnorm(plain, trained["train"], num_batches=2)
    assert used == 2
    after = [bn.moving_mean.numpy() for bn in bns]
    assert any(not np.allclose(a, b) for a, b in zip(before, after))
    for w, k in zip(plain.trainable_weights, kernels):  # only BN statistics change
        np.testing.assert_array_equal(w.numpy(), k)
    assert all(bn.momentum == 0.9 for bn in bns)  # restored
    # cumulative mode over one repeated batch == the statistics of that batch
    x, _ = next(iter(trained["train"]))
    one = tf.data.Dataset.from_tensors(x).repeat(3)
    reestimate_batchnorm(plain, one)
    first = bns[0].moving_mean.numpy().copy()
    batch_mean_only = reestimate_batchnorm(plain, one, num_batches=1)
    assert batch_mean_only == 1
    np.testing.assert_allclose(bns[0].moving_mean.numpy(), first, rtol=1e-5, atol=1e-6)


def test_callback_with_bn_reestimation(trained):
    cb = trained["cb"]  # reuse its projected model and compiled evaluation
    cb.bn_reestimate, cb.bn_data = 1, trained["train"]
    try:
        res = cb.evaluate()
    finally:
        cb.bn_reestimate, cb.bn_data = None, None
    plain = kr.project(trained["model"])
    stats_plain = batchnorm_layers(plain)[0].moving_mean.numpy()
    stats_cb = batchnorm_layers(cb.projected)[0].moving_mean.numpy()
    assert not np.allclose(stats_plain, stats_cb)
    assert set(res) == {"projected_val_loss", "projected_val_accuracy"}
    # the source model's statistics are untouched
    np.testing.assert_array_equal(batchnorm_layers(trained["model"])[0].moving_mean.numpy(), stats_plain)


def test_plot_history_writes_png(tmp_path, trained):
    path = plot_history(trained["history"], tmp_path / "sub" / "history.png")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # CSV-like input with NA gaps and an epoch column
    path2 = plot_history(
        {
            "epoch": [0, 1, 2],
            "accuracy": ["0.1", "0.2", "0.3"],
            "projected_val_accuracy": ["NA", "0.2", "0.25"],
            "theta": [0, 1, 0],
        },
        tmp_path / "h2.png",
    )
    with open(path2, "rb") as f:
        assert f.read(4) == b"\x89PNG"
