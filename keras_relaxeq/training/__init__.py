"""Theta schedules and callback, the model whose train step adds the penalties, and the
per-layer relaxation report."""

from keras_relaxeq.training.diagnostics import format_relaxation_report, relaxation_report
from keras_relaxeq.training.model import RelaxedModel
from keras_relaxeq.training.schedules import SCHEDULES, ThetaScheduler, get_schedule
