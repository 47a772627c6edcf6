"""Run records: reading a run's files, and copying runs between machines (export and import).

A run's record is the small text files the report is made from (:data:`RECORD_FILES`); an
unfinished run also needs :data:`RESUME_STATE` to continue elsewhere.  An export copies each run
as one consistent snapshot; an import never overwrites training progress.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from keras_relaxeq.experiments.plan import Comparison, epochs_of, run_dirs

#: a run's record: the text files the report reads (``--export``)
RECORD_FILES = ("command.txt", "layout.txt", "summary.json", "log.csv", "relaxation.csv")
#: what an unfinished run needs besides its record to resume elsewhere (``--export-state``): the
#: backup, and the best projected model so far (model selection continues from it).  The relaxed
#: model at that epoch (``best_relaxed.keras``, several times larger: dense branches) stays behind.
RESUME_STATE = ("backup", "best_projected.keras")


def load_summary(d: Path):
    """The run's ``summary.json``, or None (not written yet, or unreadable)."""
    try:
        return json.loads((Path(d) / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def read_log(path: Path) -> dict:
    """Per-epoch columns of a run's ``log.csv`` (the recipes' reader: a resumed epoch counts once)."""
    from keras_relaxeq.training.recipe import read_csv_history

    return read_csv_history(path)


def read_relaxation(path: Path) -> dict:
    """The all-branch totals of a relaxed run's ``relaxation.csv`` (``RelaxationMonitor``), or {}."""
    from keras_relaxeq.training.diagnostics import read_relaxation_log

    return read_relaxation_log(path)


def _tree_stamp(path: Path):
    """(relative name, size, mtime) of every file under ``path``: equal twice means nothing wrote in between."""
    files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())
    return [(str(f.relative_to(path.parent)), f.stat().st_size, f.stat().st_mtime_ns) for f in files]


def _snapshot(src: Path, names, dst: Path, attempts: int = 20) -> list[str]:
    """Copy the items ``names`` of run directory ``src`` that exist into ``dst``, as one snapshot:
    a training writes its log every epoch and its backup every N epochs, so the copy is kept only
    if none of them changed while copying (else it is taken again).  Whatever ``dst`` held of
    :data:`RECORD_FILES` and :data:`RESUME_STATE` before is replaced, so an export never mixes
    files of two moments.  Returns the names copied."""
    from keras_relaxeq.training.recipe import remove_path

    tmp = dst.with_name(dst.name + ".partial")
    for _ in range(attempts):
        present = [n for n in names if (src / n).exists()]
        before = [_tree_stamp(src / n) for n in present]
        remove_path(tmp)
        tmp.mkdir(parents=True)
        for n in present:
            if (src / n).is_dir():
                shutil.copytree(src / n, tmp / n)
            else:
                shutil.copy2(src / n, tmp / n)
        if [n for n in names if (src / n).exists()] == present and [_tree_stamp(src / n) for n in present] == before:
            dst.mkdir(parents=True, exist_ok=True)
            for n in (*RECORD_FILES, *RESUME_STATE):
                remove_path(dst / n)
            for n in present:
                (tmp / n).rename(dst / n)
            remove_path(tmp)
            return present
        time.sleep(1.0)
    remove_path(tmp)
    raise SystemExit(f"--export: {src} kept changing while it was copied; pause or stop its training and retry")


def export_runs(args: Comparison, dest) -> list[dict]:
    """Copy each run's record (:data:`RECORD_FILES`) into ``dest/<run>``; with ``export_state``
    an unfinished run also takes its :data:`RESUME_STATE`.  Each run's copy is one consistent
    snapshot and replaces what an earlier export left (a finished run's, or one exported without
    ``export_state``, has no resume state).  Returns one row per run directory found."""
    rows = []
    for _, _, _, src in run_dirs(args):
        name, dst = src.name, Path(dest) / src.name
        if not src.is_dir():
            continue
        summary = load_summary(src)
        finished = bool(summary) and summary.get("epochs_run", 0) >= epochs_of(args)
        names = RECORD_FILES + (RESUME_STATE if args.export_state and not finished else ())
        copied = _snapshot(src, names, dst)
        rows.append({"run": name, "finished": finished, "files": copied})
        print(f"[{name}] exported to {dst}: {', '.join(copied)}", flush=True)
    return rows


def import_runs(args: Comparison, source) -> list[str]:
    """Copy the runs exported to ``source`` into ``output_dir``, except where a run already has
    a backup or a finished summary there (never overwrites training progress).  Returns their names."""
    imported = []
    for _, _, _, src in run_dirs(args, root=source):
        name, dst = src.name, Path(args.output_dir) / src.name
        if not src.is_dir():
            continue
        if (dst / "backup").exists() or load_summary(dst) is not None:
            print(f"[{name}] not imported: {dst} already has a backup or a summary", flush=True)
            continue
        shutil.copytree(src, dst, dirs_exist_ok=True)
        imported.append(name)
        print(f"[{name}] imported from {src}", flush=True)
    return imported
