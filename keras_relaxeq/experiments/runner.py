"""Training the runs of a comparison: one recipe subprocess per run, several at once, one per directory.

Every run resumes from its own backup, so running a comparison again after an interruption
continues where it stopped (finished runs are only re-aggregated).  ``jobs`` runs that many
trainings at once, each limited to ``threads`` TensorFlow threads.  A run directory is locked
(``.compare.lock``) while it trains: a second driver that reaches the same run skips it.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from keras_relaxeq.experiments.plan import (
    Comparison,
    baseline_values,
    command,
    epochs_of,
    jobs_of,
    output_stem,
    report_dir,
    run_name,
)
from keras_relaxeq.experiments.records import export_runs, import_runs, load_summary
from keras_relaxeq.experiments.report import aggregate


def train_one(args: Comparison, arm, seed, value, sweep_name, baseline=False) -> int:
    """Train (or resume) one run in a subprocess, output in its directory's ``stdout.log``; returns
    its exit code (0 as well when it had finished or another driver holds its lock)."""
    d = Path(args.output_dir) / run_name(arm, seed, sweep_name, value, baseline)
    tag = f"[{d.name}]"
    summary = load_summary(d)
    if summary and summary.get("epochs_run", 0) >= epochs_of(args):
        print(f"{tag} finished earlier", flush=True)
        return 0
    d.mkdir(parents=True, exist_ok=True)
    # one trainer per run directory: a sweep reuses the comparison's runs, and both may be started
    # from two shells; the lock goes with the process, so a killed driver leaves nothing stale
    lock = open(d / ".compare.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        print(
            f"{tag} skipped: another compare.py is training it (run this command again when it has "
            f"finished to aggregate it)",
            flush=True,
        )
        return 0
    try:
        env = dict(os.environ)
        if args.threads:
            n = str(args.threads)
            env.update(TF_NUM_INTRAOP_THREADS=n, TF_NUM_INTEROP_THREADS=n, OMP_NUM_THREADS=n)
        cmd = command(args, arm, seed, value, sweep_name, baseline)
        (d / "command.txt").write_text(" ".join(cmd) + "\n")
        print(f"{tag} start: {' '.join(cmd)}", flush=True)
        t0 = time.time()
        with open(d / "stdout.log", "a") as log:
            rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        print(f"{tag} exit {rc} after {(time.time() - t0) / 60:.1f} min (log: {d / 'stdout.log'})", flush=True)
        return rc
    finally:
        lock.close()


def train_all(args: Comparison) -> list:
    """Train every run of the comparison, ``jobs`` at a time; returns the jobs that failed."""
    jobs, sweep_name = jobs_of(args)
    base = baseline_values(args, sweep_name)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        codes = list(pool.map(lambda job: train_one(args, *job, sweep_name, job[2] in base), jobs))
    return [job for job, rc in zip(jobs, codes) if rc != 0]


def run_comparison(args: Comparison) -> dict:
    """Import (``import_from``), train (unless ``report_only``), report, export (``export``).

    Prints the report's tables; returns the report's content (with ``exported``, the rows of
    :func:`~keras_relaxeq.experiments.records.export_runs`, after an export).
    """
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.import_from:
        import_runs(args, args.import_from)
    if not args.report_only:
        failed = train_all(args)
        if failed:
            print(f"failed runs: {failed} (see their stdout.log); aggregating the others", file=sys.stderr)
    result = aggregate(args)
    stem = report_dir(args) / output_stem(result["sweep"])
    print(stem.with_suffix(".md").read_text())
    print(f"written: {stem}.json, {stem}.md, {stem}.png")
    if args.export:
        result["exported"] = export_runs(args, args.export)
    return result
