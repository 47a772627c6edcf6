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


def _anchors(markdown: str) -> set:
    """GitHub's heading anchors of a Markdown text (lower case, punctuation dropped, spaces to hyphens)."""
    headings = re.findall(r"^#{1,6} +(.+?) *$", re.sub(r"```.*?```", "", markdown, flags=re.S), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_relative_links_in_readme_and_docs_resolve():
    """Every relative link (and image) of README.md and docs/**/*.md names an existing file, and its
    #anchor a heading of that file."""
    root = README.parent
    broken = []
    for page in [README, *sorted((root / "docs").rglob("*.md"))]:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        text = re.sub(r"`[^`\n]*`", "", text)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.relative_to(root)}: {target}")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file.read_text()):
                broken.append(f"{page.relative_to(root)}: {target} (no such heading)")
    assert not broken, broken
