"""Relaxed vs standard comparisons of the recipes: planning, training, run records, report and figures.

``recipes/compare.py`` is the command line; it defines the experiments (:class:`Experiment`) and
hands a :class:`Comparison` to :func:`run_comparison`.  The modules:

* :mod:`~keras_relaxeq.experiments.plan`: experiments, runs, their names and recipe commands;
* :mod:`~keras_relaxeq.experiments.runner`: training the runs (subprocesses, jobs, locks);
* :mod:`~keras_relaxeq.experiments.records`: reading run files, export and import of run records;
* :mod:`~keras_relaxeq.experiments.report`: statistics and the ``comparison*.md`` / ``.json`` tables;
* :mod:`~keras_relaxeq.experiments.plots`: the ``comparison*.png`` figures.

Nothing here imports TensorFlow or matplotlib at import time.
"""

from keras_relaxeq.experiments.plan import ARMS, Comparison, Experiment, Metric
from keras_relaxeq.experiments.records import RECORD_FILES, RESUME_STATE, export_runs, import_runs
from keras_relaxeq.experiments.report import aggregate, markdown
from keras_relaxeq.experiments.runner import run_comparison, train_one

__all__ = [
    "ARMS",
    "RECORD_FILES",
    "RESUME_STATE",
    "Comparison",
    "Experiment",
    "Metric",
    "aggregate",
    "export_runs",
    "import_runs",
    "markdown",
    "run_comparison",
    "train_one",
]
