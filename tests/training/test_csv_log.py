"""The recipes' log.csv: no val_* columns without validation; a resumed run keeps the file's columns."""

import csv

import keras

from keras_relaxeq.training.recipe import _csv_logger


def run(path, epochs_logs, start=0):
    logger = _csv_logger(keras)(str(path), append=True)
    logger.on_train_begin()
    for epoch, logs in enumerate(epochs_logs, start):
        logger.on_epoch_end(epoch, logs)
    logger.on_train_end()


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_no_validation_gives_no_val_columns(tmp_path):
    path = tmp_path / "log.csv"
    run(
        path,
        [
            {"loss": 1.0, "projected_val_loss": 2.0, "theta": 0.0},
            {"loss": 0.5, "projected_val_loss": 1.5, "theta": 1.0},
        ],
    )
    table = rows(path)
    assert list(table[0]) == ["epoch", "loss", "projected_val_loss", "theta"]
    assert [r["loss"] for r in table] == ["1.0", "0.5"]


def test_validation_columns_are_kept(tmp_path):
    path = tmp_path / "log.csv"
    run(path, [{"loss": 1.0, "val_loss": 3.0}])
    assert list(rows(path)[0]) == ["epoch", "loss", "val_loss"]


def test_resumed_run_appends_under_the_existing_header(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("epoch,loss,theta,val_loss,val_theta\n0,1.0,0.0,NA,NA\n")  # a log written with padded columns
    run(path, [{"theta": 0.5, "loss": 0.7}], start=1)
    table = rows(path)
    assert len(table) == 2 and list(table[1]) == ["epoch", "loss", "theta", "val_loss", "val_theta"]
    assert table[1] == {"epoch": "1", "loss": "0.7", "theta": "0.5", "val_loss": "NA", "val_theta": "NA"}
    run(path, [{"theta": 0.25, "loss": 0.6}], start=2)
    assert rows(path)[2]["theta"] == "0.25"
