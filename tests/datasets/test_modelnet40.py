"""ModelNet40 readers, preprocessing, validation split, tf.data pipeline and TFDS builder."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import tensorflow as tf

from keras_relaxeq.datasets import modelnet40 as mn
from keras_relaxeq.groups.so3 import axis_rotation

SHARED_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data"
REAL_DIR = SHARED_ROOT / "modelnet40_aligned_1024"
N_TRAIN, N_POINTS = 9843, 1024


@pytest.fixture(autouse=True)
def _no_data_env(monkeypatch):
    monkeypatch.delenv(mn.DATA_ENV_VAR, raising=False)


@pytest.fixture(scope="module")
def raw():
    return mn.load_modelnet40("train", REAL_DIR, normalize=False)


@pytest.fixture(scope="module")
def real(raw):
    return mn.load_modelnet40("train", REAL_DIR)


def _write_hdf5_layout(root, splits, prefix="", class_names=mn.MODELNET40_CLASSES, ids=None):
    """Write a tiny modelnet40_ply_hdf5_2048-style folder; ``splits`` maps split -> (points, labels)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "shape_names.txt").write_text("\n".join(class_names) + "\n")
    for split, (points, labels) in splits.items():
        name = f"ply_data_{split}0.h5"
        with h5py.File(root / name, "w") as f:
            f["data"] = np.asarray(points, np.float32)
            f["label"] = np.asarray(labels, np.uint8).reshape(-1, 1)
        (root / f"{split}_files.txt").write_text(prefix + name + "\n")
        if ids is not None:
            (root / f"ply_data_{split}_0_id2file.json").write_text(json.dumps(ids[split]))
    return root


def _first_batch(ds):
    return [t.numpy() for t in next(iter(ds))]


# ----------------------------------------------------------------------------- readers


def test_reads_shared_training_split(raw):
    assert raw.layout == "hdf5" and raw.data_dir == REAL_DIR
    assert raw.points.shape == (N_TRAIN, N_POINTS, 3) and raw.points.dtype == np.float32
    assert raw.labels.shape == (N_TRAIN,) and raw.labels.dtype == np.int32
    assert raw.class_names == mn.MODELNET40_CLASSES
    assert np.array_equal(np.unique(raw.labels), np.arange(40))
    # The id2file records agree with the labels.
    assert len(raw.shape_ids) == N_TRAIN
    assert all(sid.split("/")[0] == raw.class_names[lbl] for sid, lbl in zip(raw.shape_ids, raw.labels))
    # The shared data are not centred: the loader has to do it.
    assert np.abs(raw.points.mean(axis=1)).max() > 0.05


def test_data_dir_resolution(monkeypatch, tmp_path):
    assert mn.resolve_data_dir() == REAL_DIR  # <repo>/../shared/data
    assert mn.resolve_data_dir(SHARED_ROOT) == REAL_DIR
    assert mn.resolve_data_dir(REAL_DIR) == REAL_DIR
    monkeypatch.setenv(mn.DATA_ENV_VAR, str(SHARED_ROOT))
    assert mn.resolve_data_dir() == REAL_DIR
    # The explicit argument wins over the environment variable.
    other = _write_hdf5_layout(tmp_path / "modelnet40_ply_hdf5_2048", {"train": (np.ones([2, 4, 3]), [0, 1])})
    assert mn.resolve_data_dir(tmp_path) == other


def test_missing_data_errors(monkeypatch, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="data_dir="):
        mn.resolve_data_dir(empty)
    with pytest.raises(FileNotFoundError, match="No ModelNet40 data"):
        mn.modelnet40_dataset(data_dir=tmp_path / "does_not_exist")
    monkeypatch.setenv(mn.DATA_ENV_VAR, str(empty))
    with pytest.raises(FileNotFoundError, match=mn.DATA_ENV_VAR):
        mn.resolve_data_dir()
    monkeypatch.delenv(mn.DATA_ENV_VAR)
    monkeypatch.setattr(mn, "DEFAULT_DATA_ROOT", tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="not found. Pass data_dir=.*KERAS_RELAXEQ_DATA"):
        mn.load_modelnet40()


def test_missing_test_split_is_a_clear_error():
    assert mn.available_splits(REAL_DIR) == ("train",)
    with pytest.raises(FileNotFoundError, match="split 'test' not found.*test_files.txt.*split='val'"):
        mn.load_modelnet40("test", REAL_DIR)
    with pytest.raises(FileNotFoundError, match="split 'test' not found"):
        mn.modelnet40_dataset("test", data_dir=REAL_DIR)


def test_hdf5_layout_any_point_count_and_prefixed_lists(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.normal(size=(5, 17, 3)).astype(np.float32), np.array([0, 3, 3, 39, 1])
    test = rng.normal(size=(2, 17, 3)).astype(np.float32), np.array([2, 5])
    ids = {"train": [f"c/c_{i}" for i in range(5)], "test": ["a/a_0", "b/b_1"]}
    root = _write_hdf5_layout(
        tmp_path / "modelnet40_ply_hdf5_2048",
        {"train": train, "test": test},
        prefix="data/modelnet40_ply_hdf5_2048/",
        ids=ids,
    )
    assert mn.available_splits(root) == ("train", "test")
    got = mn.read_modelnet40(root, "train")
    np.testing.assert_array_equal(got.points, train[0])
    np.testing.assert_array_equal(got.labels, train[1])
    assert got.labels.dtype == np.int32 and got.shape_ids == tuple(ids["train"])
    got = mn.load_modelnet40("test", tmp_path, normalize=False)  # parent folder resolves too
    np.testing.assert_array_equal(got.points, test[0])
    assert mn.read_modelnet40(root, "train", max_points=5).points.shape == (5, 5, 3)
    (root / "train_files.txt").write_text("data/modelnet40_ply_hdf5_2048/ply_data_train7.h5\n")
    with pytest.raises(FileNotFoundError, match="ply_data_train7.h5"):
        mn.read_modelnet40(root, "train")


def _write_text_layout(root, classes, per_class, n_points, rng):
    root.mkdir(parents=True)
    (root / "modelnet40_shape_names.txt").write_text("\n".join(classes) + "\n")
    expected = {}
    for cls in classes:
        (root / cls).mkdir()
        for i in range(1, per_class + 1):
            sid = f"{cls}_{i:04d}"
            rows = rng.uniform(-1, 1, size=(n_points, 6))
            np.savetxt(root / cls / f"{sid}.txt", rows, fmt="%.6f", delimiter=",")
            expected[sid] = np.round(rows[:, :3], 6).astype(np.float32)
    return expected


def test_text_layout_reader(tmp_path):
    classes = ["airplane", "chair", "night_stand"]
    root = tmp_path / "modelnet40_normal_resampled"
    expected = _write_text_layout(root, classes, per_class=3, n_points=40, rng=np.random.default_rng(1))
    train_ids = [f"{c}_{i:04d}" for c in classes for i in (1, 2)]
    test_ids = [f"{c}_0003" for c in classes]
    (root / "modelnet40_train.txt").write_text("\n".join(train_ids) + "\n")
    (root / "modelnet40_test.txt").write_text("\n".join(test_ids) + "\n")

    assert mn.resolve_data_dir(tmp_path) == root and mn.detect_layout(root) == "text"
    assert mn.available_splits(root) == ("train", "test")
    got = mn.read_modelnet40(root, "train")
    assert got.layout == "text" and got.class_names == tuple(classes)
    assert got.points.shape == (6, 40, 3) and got.points.dtype == np.float32
    np.testing.assert_array_equal(got.labels, [0, 0, 1, 1, 2, 2])
    assert got.shape_ids[4] == "night_stand/night_stand_0001"
    for sid, pts in zip(train_ids, got.points):
        np.testing.assert_allclose(pts, expected[sid], atol=1e-6)
    assert mn.read_modelnet40(root, "test", max_points=10).points.shape == (3, 10, 3)

    batches = list(
        mn.modelnet40_dataset(
            "test", num_points=20, batch_size=2, rotation="none", data_dir=tmp_path
        ).as_numpy_iterator()
    )
    assert [b[0].shape for b in batches] == [(2, 20, 3), (1, 20, 3)]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), [0, 1, 2])

    (root / "modelnet40_test.txt").write_text("chair_0009\n")
    with pytest.raises(FileNotFoundError, match="chair_0009"):
        mn.read_modelnet40(root, "test")


# ----------------------------------------------------------------------------- preprocessing


def test_normalisation_of_real_data(real, raw):
    assert np.abs(real.points.mean(axis=1)).max() < 1e-5
    radius = np.linalg.norm(real.points, axis=-1).max(axis=1)
    np.testing.assert_allclose(radius, 1.0, atol=1e-5)
    np.testing.assert_array_equal(real.labels, raw.labels)
    np.testing.assert_array_equal(real.points[:20], mn.normalize_point_clouds(raw.points[:20]))
    # The nearly degenerate shapes are scaled up too.
    raw_radius = np.linalg.norm(raw.points - raw.points.mean(1, keepdims=True), axis=-1).max(1)
    tiny = np.argsort(raw_radius)[:10]
    assert raw_radius[tiny].max() < 0.15
    np.testing.assert_allclose(radius[tiny], 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="read-only"):
        real.points[0, 0, 0] = 5.0  # the cache cannot be corrupted


def test_normalisation_degenerate_and_invariance():
    rng = np.random.default_rng(0)
    shape = rng.normal(size=(64, 3)).astype(np.float32)
    clouds = np.stack(
        [
            shape,
            shape * 1e-2 + np.float32([0.5, -0.2, 0.3]),  # same shape, scaled and moved
            np.full((64, 3), 3.0, np.float32),  # all points equal
            np.float32([1, 2, 3]) + 1e-12 * shape,  # extent below float32 resolution
        ]
    )
    out = mn.normalize_point_clouds(clouds)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[1], out[0], atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(out[0], axis=-1).max(), 1.0, atol=1e-6)
    np.testing.assert_array_equal(out[2], 0.0)
    assert np.linalg.norm(out[3], axis=-1).max() <= 1.0
    # A single cloud [P, 3] works too.
    np.testing.assert_allclose(mn.normalize_point_clouds(shape), out[0], atol=1e-6)


def test_non_finite_coordinates_are_rejected(tmp_path):
    clouds = np.random.default_rng(0).normal(size=(5, 8, 3)).astype(np.float32)
    clouds[2, 4, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN/Inf.*shape index 2\b"):
        mn.normalize_point_clouds(clouds)
    clouds[2, 4, 1] = 0.0
    clouds[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match=r"shape index 0\b"):
        mn.normalize_point_clouds(clouds)
    with pytest.raises(ValueError, match=r"shape index 0\b"):
        mn.normalize_point_clouds(clouds[0])  # a single cloud [P, 3]
    clouds[0, 0, 0] = 0.0
    clouds[3, 1, 2] = -np.inf
    root = _write_hdf5_layout(tmp_path / "bad", {"train": (clouds, [0, 1, 2, 3, 4])})
    with pytest.raises(ValueError, match=r"shape index 3\b.*split 'train'"):
        mn.load_modelnet40("train", root)
    with pytest.raises(ValueError, match=r"shape index 3\b"):
        mn.modelnet40_dataset("train", num_points=4, data_dir=root)


# ----------------------------------------------------------------------------- validation split


def test_stratified_validation_split(real):
    labels = real.labels
    train_idx, val_idx = mn.stratified_split(labels)
    assert np.intersect1d(train_idx, val_idx).size == 0
    np.testing.assert_array_equal(np.union1d(train_idx, val_idx), np.arange(N_TRAIN))
    assert np.all(np.diff(val_idx) > 0) and val_idx.dtype == np.int64
    counts = np.bincount(labels, minlength=40)
    np.testing.assert_array_equal(np.bincount(labels[val_idx], minlength=40), np.floor(0.2 * counts + 0.5).astype(int))
    assert abs(val_idx.size / N_TRAIN - 0.2) < 0.005
    again = mn.stratified_split(labels)
    np.testing.assert_array_equal(again[1], val_idx)
    other = mn.stratified_split(labels, seed=1)[1]
    assert not np.array_equal(other, val_idx)
    assert mn.stratified_split(labels, val_fraction=0.0)[1].size == 0
    # A class with a single shape stays in training.
    tr, va = mn.stratified_split([0, 0, 0, 0, 1], val_fraction=0.5)
    assert 4 in tr and va.size == 2
    with pytest.raises(ValueError, match="val_fraction"):
        mn.stratified_split(labels, val_fraction=1.0)


# ----------------------------------------------------------------------------- tf.data pipeline


def test_pipeline_shapes_dtypes_and_determinism():
    ds = mn.modelnet40_dataset(data_dir=REAL_DIR)
    points_spec, label_spec = ds.element_spec
    assert points_spec.shape.as_list() == [24, 300, 3] and points_spec.dtype == tf.float32
    assert label_spec.shape.as_list() == [24] and label_spec.dtype == tf.int32
    n_train = N_TRAIN - mn.stratified_split(mn.load_modelnet40("train", REAL_DIR).labels)[1].size
    assert len(ds) == n_train // 24  # known cardinality; the last partial batch is dropped
    first = _first_batch(ds)
    second_epoch = _first_batch(ds)
    assert np.isfinite(first[0]).all() and first[1].min() >= 0 and first[1].max() < 40
    twin = mn.modelnet40_dataset(data_dir=REAL_DIR)
    for a, b in zip(first, _first_batch(twin)):
        np.testing.assert_array_equal(a, b)
    # Each new iteration (epoch) draws new shapes/augmentations, reproducibly.
    assert not np.array_equal(first[0], second_epoch[0])
    np.testing.assert_array_equal(second_epoch[0], _first_batch(twin)[0])
    other = _first_batch(mn.modelnet40_dataset(data_dir=REAL_DIR, seed=1))
    assert not np.array_equal(first[0], other[0])
    assert not np.array_equal(first[1], other[1])


def test_val_pipeline_equals_normalised_subset(real):
    _, val_idx = mn.stratified_split(real.labels)
    ds = mn.modelnet40_dataset("val", batch_size=100, rotation="none", augment=False, data_dir=REAL_DIR)
    assert ds.element_spec[0].shape.as_list() == [None, 300, 3]
    batches = list(ds.as_numpy_iterator())
    labels = np.concatenate([b[1] for b in batches])
    np.testing.assert_array_equal(labels, real.labels[val_idx])  # every val shape, in order
    assert len(batches) == len(ds) == -(-val_idx.size // 100)
    assert batches[-1][0].shape[0] == val_idx.size % 100  # remainder kept
    points = batches[0][0]
    reordered = 0
    for k in range(20):
        ref = real.points[val_idx[k]]
        dist = np.linalg.norm(points[k][:, None, :] - ref[None], axis=-1)
        assert dist.min(axis=1).max() < 1e-6  # every output point is a point of the shape
        match = dist.argmin(axis=1)
        assert np.unique(match).size == 300  # drawn without replacement
        reordered += not np.array_equal(match, np.arange(300))
    assert reordered == 20  # a random subset, not the first 300 points
    np.testing.assert_array_equal(points, next(ds.as_numpy_iterator())[0])  # fixed for evaluation


def test_first_point_sampling_takes_the_first_points_every_epoch(real):
    # the reference PyTorch VN-PointNet trains on the first 300 points of each shape, always the same
    train_idx, _ = mn.stratified_split(real.labels)
    ds = mn.modelnet40_dataset(
        "train", batch_size=8, rotation="none", augment=False, shuffle=False, data_dir=REAL_DIR, point_sampling="first"
    )
    first, second = (next(iter(ds)) for _ in range(2))  # two epochs: training data is reseeded each epoch
    for k in range(8):
        np.testing.assert_allclose(first[0][k], real.points[train_idx[k]][:300], atol=1e-6)
    np.testing.assert_array_equal(first[0], second[0])
    with pytest.raises(ValueError, match="point_sampling"):
        mn.modelnet40_dataset("train", data_dir=REAL_DIR, point_sampling="fps")


def test_recipe_validation_dataset_is_the_runs_split_at_any_batch_size():
    """What ``relaxeq zoo publish`` measures on is the split the recipe validated on."""
    cfg = {
        "points": 64,
        "batch": 24,
        "rotation": "so3",
        "val_fraction": 0.2,
        "split_seed": 3,
        "seed": 5,
        "data_dir": "/nonexistent/run/machine/path",
    }  # the run's data_dir is not used
    run = mn.modelnet40_dataset(
        "val", num_points=64, batch_size=24, rotation="so3", data_dir=REAL_DIR, val_fraction=0.2, split_seed=3, seed=6
    )
    ref = [np.concatenate(t)[:100] for t in zip(*[(x, y) for x, y in run.take(5).as_numpy_iterator()])]
    for batch, rotation in ((24, None), (40, "so3")):
        ds = mn.recipe_validation_dataset(cfg, rotation=rotation, batch_size=batch, data_dir=REAL_DIR)
        got = [np.concatenate(t)[:100] for t in zip(*[(x, y) for x, y in ds.take(5).as_numpy_iterator()])]
        np.testing.assert_array_equal(got[1], ref[1])
        np.testing.assert_array_equal(got[0], ref[0])
    unrotated = mn.recipe_validation_dataset(cfg, rotation="none", data_dir=REAL_DIR)
    x, y = next(unrotated.as_numpy_iterator())
    np.testing.assert_array_equal(y, ref[1][:24])
    # the same subsets, not rotated: equal norms, different coordinates
    np.testing.assert_allclose(np.linalg.norm(x, axis=-1), np.linalg.norm(ref[0][:24], axis=-1), atol=1e-5)
    assert np.abs(x - ref[0][:24]).max() > 1e-2
    other_seed = mn.recipe_validation_dataset({**cfg, "seed": 6}, data_dir=REAL_DIR)
    assert not np.array_equal(next(other_seed.as_numpy_iterator())[0], ref[0][:24])


def _val_batch(rotation, **kw):
    kw = {"batch_size": 16, "augment": False, "data_dir": REAL_DIR, **kw}
    return mn.modelnet40_dataset("val", rotation=rotation, **kw).as_numpy_iterator().next()[0]


def test_so3_rotation_is_a_proper_rotation_per_sample():
    plain, rotated = _val_batch("none"), _val_batch("so3")
    np.testing.assert_allclose(np.linalg.norm(rotated, axis=-1), np.linalg.norm(plain, axis=-1), atol=1e-5)
    rots = []
    for x, y in zip(plain.astype(np.float64), rotated.astype(np.float64)):
        rot_t, *_ = np.linalg.lstsq(x, y, rcond=None)  # y = x @ R^T
        np.testing.assert_allclose(x @ rot_t, y, atol=1e-5)
        np.testing.assert_allclose(rot_t @ rot_t.T, np.eye(3), atol=1e-4)
        assert abs(np.linalg.det(rot_t) - 1.0) < 1e-4
        rots.append(rot_t)
    rots = np.stack(rots)
    assert np.abs(rots - np.eye(3)).max(axis=(1, 2)).min() > 1e-2
    assert np.abs(rots[1:] - rots[:1]).max() > 0.5  # a different rotation per sample
    assert not np.array_equal(rotated, _val_batch("so3", seed=3))


def test_rotation_acts_as_points_times_r_transpose():
    quarter_turn = axis_rotation("z", np.pi / 2)  # R e_x = e_y
    out = mn._rotate(tf.constant([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]]), quarter_turn).numpy()
    np.testing.assert_allclose(out, [[0.0, 1.0, 0.0], [0.0, 0.0, 2.0]], atol=1e-6)


def test_z_rotation_keeps_z():
    plain, rotated = _val_batch("none"), _val_batch("z")
    np.testing.assert_allclose(rotated[..., 2], plain[..., 2], atol=1e-6)
    np.testing.assert_allclose(
        np.linalg.norm(rotated[..., :2], axis=-1), np.linalg.norm(plain[..., :2], axis=-1), atol=1e-5
    )
    assert np.abs(rotated[..., :2] - plain[..., :2]).max() > 0.1


def test_training_augmentation():
    kw = {"rotation": "none", "batch_size": 32, "data_dir": REAL_DIR}
    plain = _first_batch(mn.modelnet40_dataset(augment=False, **kw))[0]
    aug = _first_batch(mn.modelnet40_dataset(**kw))[0]
    assert aug.shape == plain.shape and np.isfinite(aug).all()
    assert np.abs(aug - plain).max() > 0.05
    bound = (1.5 + 0.2 * np.sqrt(3)) * 1.25 + 0.1 * np.sqrt(3)
    assert np.linalg.norm(aug, axis=-1).max() <= bound
    assert np.linalg.norm(aug, axis=-1).max() > 1.05  # the scaling does act
    # Point dropout: dropped points repeat the first point.
    dropped = (np.abs(aug - aug[:, :1]).max(axis=-1) == 0).sum(axis=1) - 1
    assert (dropped > 0).mean() > 0.5
    assert dropped.max() < 0.9 * 300


def test_random_point_dropout():
    points = tf.random.stateless_normal([200, 3], seed=[0, 1])
    fractions = []
    for s in range(30):
        out = mn.random_point_dropout(points, seed=[s, 7]).numpy()
        assert out.shape == (200, 3)
        kept = np.all(out == points.numpy(), axis=1)
        first = np.all(out == points.numpy()[:1], axis=1)
        assert np.all(kept | first)
        fractions.append(1 - kept.mean())
        np.testing.assert_array_equal(out, mn.random_point_dropout(points, seed=[s, 7]).numpy())
    assert max(fractions) < 0.95 and 0.25 < np.mean(fractions) < 0.65  # E = 0.875 / 2


def test_pipeline_argument_errors():
    with pytest.raises(ValueError, match="num_points=2000 exceeds the 1024 points"):
        mn.modelnet40_dataset(num_points=2000, data_dir=REAL_DIR)
    with pytest.raises(ValueError, match="rotation"):
        mn.modelnet40_dataset(rotation="o3", data_dir=REAL_DIR)
    with pytest.raises(ValueError, match="split"):
        mn.modelnet40_dataset("validation", data_dir=REAL_DIR)
    with pytest.raises(ValueError, match="val_fraction"):
        mn.modelnet40_dataset("val", val_fraction=0.0, data_dir=REAL_DIR)


# ----------------------------------------------------------------------------- TFDS builder


def test_tfds_builder_round_trip(tmp_path, raw):
    import tensorflow_datasets as tfds

    from keras_relaxeq.datasets.modelnet40_tfds import ModelNet40

    picks = np.concatenate([np.flatnonzero(raw.labels == c)[:4] for c in range(40)])
    train_idx, test_idx = picks.reshape(40, 4)[:, :3].ravel(), picks.reshape(40, 4)[:, 3]
    splits = {
        "train": (raw.points[train_idx], raw.labels[train_idx]),
        "test": (raw.points[test_idx], raw.labels[test_idx]),
    }
    ids = {"train": [raw.shape_ids[i] for i in train_idx], "test": [raw.shape_ids[i] for i in test_idx]}
    manual = _write_hdf5_layout(tmp_path / "manual", splits, prefix="data/modelnet40_ply_hdf5_2048/", ids=ids)

    builder = ModelNet40(data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=str(manual), compute_stats=tfds.download.ComputeStatsMode.SKIP
        )
    )
    assert builder.info.features["label"].names == list(mn.MODELNET40_CLASSES)
    assert builder.info.splits["train"].num_examples == 120
    assert builder.info.splits["test"].num_examples == 40
    for split, (points, labels) in splits.items():
        expected = {sid: (p, l) for sid, p, l in zip(ids[split], points, labels)}
        seen = set()
        for ex in tfds.as_numpy(builder.as_dataset(split=split)):
            sid = ex["shape_id"].decode()
            p, l = expected[sid]
            assert ex["points"].dtype == np.float32 and ex["points"].shape == (N_POINTS, 3)
            np.testing.assert_array_equal(ex["points"], p)
            assert ex["label"] == l
            seen.add(sid)
        assert seen == set(expected)
    # supervised form
    points, label = next(iter(builder.as_dataset(split="test", as_supervised=True)))
    assert points.shape == (N_POINTS, 3) and label.dtype == tf.int64
