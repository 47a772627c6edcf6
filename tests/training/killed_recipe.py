"""Runs ``recipes/segnn_nbody.py`` with its arguments and kills itself (SIGKILL) at the point named by
``KILL_AT`` (``<point>:<n>``, the n-th time the point is reached, from 1); used by test_kill_resume.py.

Points: ``pending`` (a backup's files written, its manifest not yet: the commit), ``committed``
(manifest written, the files still under their pending names), ``truncated`` (the weights file of a
backup half written), ``batch`` (after a training step), ``final`` (after ``fit``, while the
results are written).
"""

import importlib.util
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def die():
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install(point: str, n: int):
    import keras

    from keras_relaxeq.training import backup

    seen = {"count": 0}

    def reached() -> bool:
        seen["count"] += 1
        return seen["count"] == n

    write = backup._write_manifest
    if point == "pending":

        def patched(path, text):
            if path.endswith(backup.MANIFEST) and reached():
                die()
            write(path, text)

        backup._write_manifest = patched
    elif point == "committed":

        def patched(path, text):
            write(path, text)
            if path.endswith(backup.MANIFEST) and reached():
                die()

        backup._write_manifest = patched
    elif point == "truncated":
        save = keras.Model.save_weights

        def patched(self, filepath, *args, **kwargs):
            save(self, filepath, *args, **kwargs)
            if os.path.basename(str(filepath)).startswith(backup.PENDING) and reached():
                with open(filepath, "r+b") as f:
                    f.truncate(os.path.getsize(filepath) // 2)
                die()

        keras.Model.save_weights = patched
    elif point == "batch":

        def on_train_batch_end(self, batch, logs=None):
            if reached():
                die()

        backup.MultiWorkerBackupAndRestore.on_train_batch_end = on_train_batch_end
    elif point != "final":
        raise SystemExit(f"unknown KILL_AT point {point!r}")


def main(argv):
    spec = importlib.util.spec_from_file_location("segnn_nbody", ROOT / "recipes" / "segnn_nbody.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    kill_at = os.environ.get("KILL_AT")
    if kill_at:
        point, n = kill_at.split(":")
        install(point, int(n))
        if point == "final":

            def plot(*args, **kwargs):  # summary.json is written, history.png not yet
                die()

            recipe.plot_regression_history = plot
    recipe.main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
