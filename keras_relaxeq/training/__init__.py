"""Theta schedules and callback, and the model whose train step adds the penalties."""

from keras_relaxeq.training.model import RelaxedModel
from keras_relaxeq.training.schedules import SCHEDULES, ThetaScheduler, get_schedule
