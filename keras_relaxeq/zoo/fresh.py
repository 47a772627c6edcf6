"""Loading a zoo SavedModel in a fresh Python process that never imports keras_relaxeq (as TF Serving would).

:class:`FreshProcessCheck` starts ``python -c`` (this interpreter) with an environment stripped of
``PYTHONPATH`` and the ``KERAS_RELAXEQ_*`` settings, in an empty working directory; the child imports
TensorFlow only, loads the extracted SavedModel with ``tf.saved_model.load``, calls ``serving_default`` on
the given inputs by keyword and reports the signature (no positional inputs, dtypes, shapes), the outputs
and whether any ``keras_relaxeq`` module was imported. :meth:`FreshProcessCheck.finish` compares that with
the signature loaded in this process: same inputs and outputs, same answers (float32 round-off).

The child's TensorFlow import takes seconds, so the process is started before the in-process checks and
collected after them (``relaxeq zoo verify``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["CHILD_CODE", "FreshProcessCheck", "valid_inputs"]

#: what the fresh process runs: argv = SavedModel directory, inputs (.npz), outputs (.npz)
CHILD_CODE = r"""
import json, sys
import numpy as np
import tensorflow as tf
path, inputs, outputs = sys.argv[1:4]
sig = tf.saved_model.load(path).signatures["serving_default"]
args, kwargs = sig.structured_input_signature
x = np.load(inputs)
out = sig(**{k: tf.constant(x[k]) for k in x.files})
np.savez(outputs, **{k: v.numpy() for k, v in out.items()})
print(json.dumps({
    "positional": len(args),
    "inputs": {k: [v.dtype.name, v.shape.as_list()] for k, v in kwargs.items()},
    "outputs": {k: [v.dtype.name, v.shape.as_list()] for k, v in sig.structured_outputs.items()},
    "keras_relaxeq_imported": sorted(m for m in sys.modules if m.split(".")[0] == "keras_relaxeq"),
}))
"""


def valid_inputs(entry, *, seed=0, batch=2) -> dict:
    """Standard-normal float32 inputs for every serving input of ``entry`` (``batch`` rows; a free axis
    gets the entry's ``num_points``, else 64); for an interatomic potential, random geometries of its
    molecule."""
    import numpy as np

    if entry.is_potential_model:  # geometries of the potential's own molecule
        from keras_relaxeq.testing import random_molecules

        positions, numbers = random_molecules(entry.molecule_atomic_numbers, batch, seed=seed)
        return {"positions": positions.astype(np.float32), "atomic_numbers": numbers}
    rng = np.random.default_rng(seed)
    feed = {}
    for key, spec in sorted(entry.input_signature.items()):
        dims = list(spec.get("shape") or [None])
        shape = [batch] + [(entry.num_points or 64) if d is None else int(d) for d in dims[1:]]
        feed[key] = rng.normal(size=shape).astype(spec.get("dtype", "float32"))
    return feed


class FreshProcessCheck:
    """The SavedModel at ``path`` loaded and called on ``feed`` in a fresh process (module notes)."""

    def __init__(self, path, feed: dict, *, timeout: float = 300.0):
        import numpy as np

        self.path, self.feed, self.timeout = Path(path), dict(feed), float(timeout)
        self.work = Path(tempfile.mkdtemp(prefix="relaxeq-fresh-"))
        np.savez(self.work / "inputs.npz", **self.feed)
        env = {k: v for k, v in os.environ.items() if not k.startswith("KERAS_RELAXEQ") and k != "PYTHONPATH"}
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD_CODE, str(self.path.resolve()), str(self.work / "inputs.npz"),
             str(self.work / "outputs.npz")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=self.work)

    def stop(self) -> None:
        """End the child if it still runs and remove the working directory."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()
        shutil.rmtree(self.work, ignore_errors=True)

    def finish(self, model, *, atol=1e-5, rtol=1e-5) -> str:
        """Wait for the child; compare with ``model`` (a :class:`~keras_relaxeq.zoo.loading.ServingModel` of
        the same artifact). Raises ``AssertionError`` with what differs; returns one line."""
        import numpy as np
        import tensorflow as tf

        try:
            try:
                stdout, stderr = self.proc.communicate(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"fresh process: loading {self.path} took over {self.timeout:.0f} s") from None
            if self.proc.returncode != 0:
                raise AssertionError(f"fresh process (TensorFlow only) failed to load or call {self.path}: "
                                     + (stderr.strip().splitlines() or ["no message"])[-1])
            info = json.loads(stdout.strip().splitlines()[-1])
            got = dict(np.load(self.work / "outputs.npz"))
        finally:
            self.stop()
        if info["keras_relaxeq_imported"]:
            raise AssertionError(f"fresh process imported {info['keras_relaxeq_imported'][:3]} to load the model")
        if info["positional"]:
            raise AssertionError(f"serving_default takes {info['positional']} positional inputs; TF Serving "
                                 "feeds inputs by name")
        here = {k: [v.dtype.name, v.shape.as_list()] for k, v in model.input_specs.items()}
        if info["inputs"] != here or sorted(info["outputs"]) != model.output_names:
            raise AssertionError(f"fresh process sees inputs {info['inputs']} and outputs {sorted(info['outputs'])}, "
                                 f"this process {here} and {model.output_names}")
        want = model.signature(**{k: tf.constant(v) for k, v in self.feed.items()})
        worst = 0.0
        for name, value in want.items():
            a, b = np.asarray(got[name], np.float64), value.numpy().astype(np.float64)
            if a.shape != b.shape:
                raise AssertionError(f"fresh process output {name!r} has shape {a.shape}, expected {b.shape}")
            diff = float(np.abs(a - b).max(initial=0.0))
            if not diff <= atol + rtol * float(np.abs(b).max(initial=0.0)):
                raise AssertionError(f"fresh process output {name!r} differs by {diff:.2e} from this process's")
            worst = max(worst, diff)
        shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in self.feed.items())
        return f"fresh process ok (TensorFlow only, no keras_relaxeq; {shapes} answered, max diff {worst:.1e})"
