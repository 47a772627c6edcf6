"""The README's Python examples run as written (in a temporary working directory)."""

import math
import re
import warnings
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KERAS_RELAXEQ_CACHE", str(tmp_path / "cache"))  # the simulated N-body samples
    namespace = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for block in blocks:  # later blocks use names from earlier ones (kr, np)
            exec(compile(block, str(README), "exec"), namespace)
    assert not [str(w.message) for w in caught if "ThetaScheduler" in str(w.message)]
    # the branches acted during training: the report has a finite sqrt(LD / N) for every branch
    rows = namespace["rows"]
    assert rows and all(math.isfinite(row["lie_over_r"]) and row["r_rms"] > 0 for row in rows)
    assert (tmp_path / "classifier.keras").exists()
    kr = namespace["kr"]
    assert not kr.has_relaxation_branches(namespace["plain"])
    assert kr.has_relaxation_branches(namespace["segnn"]) and not kr.has_relaxation_branches(namespace["plain_segnn"])
    assert list((tmp_path / "cache" / "nbody").glob("*.npz"))  # the example's data went to the cache
