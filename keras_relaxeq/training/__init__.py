"""Theta schedules and callback, the model whose train step adds the penalties, and the
per-layer relaxation report, optimizers with PyTorch's coupled L2 (`AdamL2`, `SGDL2`)."""

from keras_relaxeq.training.diagnostics import (
    RelaxationMonitor,
    branch_gradient_report,
    format_branch_gradient_report,
    format_relaxation_report,
    read_relaxation_log,
    relaxation_report,
)
from keras_relaxeq.training.model import RelaxedModel, RelaxedTraining
from keras_relaxeq.training.optimizers import SGDL2, AdamL2, CoupledL2, with_coupled_l2
from keras_relaxeq.training.schedules import SCHEDULES, ThetaScheduler, get_schedule
