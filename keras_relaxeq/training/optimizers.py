"""Optimizers with PyTorch's *coupled* L2 regularisation (``weight_decay`` of ``torch.optim.Adam`` / ``SGD``).

PyTorch's ``Adam(weight_decay=l2)`` and ``SGD(weight_decay=l2)`` add ``l2 * w`` to the gradient
before the update (an L2 term ``l2 / 2 * ||w||^2`` in the loss, whose effect Adam then rescales per
coordinate); Keras' ``weight_decay=`` is the decoupled form (``w -= lr * wd * w``, AdamW).  The
published VN-PointNet / VN-DGCNN training uses the coupled form, so reproducing it needs these:

* :class:`AdamL2` -- ``torch.optim.Adam(lr, betas, eps, weight_decay=l2)``.  ``epsilon`` is added
  to ``sqrt(v_hat)`` after the bias correction, as torch does (Keras' ``Adam`` adds it before,
  which makes it ``1 / sqrt(1 - beta_2^t)`` times larger: 32x at the first step);
  ``torch_epsilon=False`` keeps the Keras placement.
* :class:`SGDL2` -- ``torch.optim.SGD(lr, momentum, weight_decay=l2, nesterov)`` with Keras' SGD
  update (with ``momentum`` Keras keeps ``lr`` inside the velocity, torch outside: identical for a
  constant learning rate).
* :class:`CoupledL2` -- the mixin: ``class MyOptimizer(CoupledL2, keras.optimizers.Nadam)`` adds
  the ``l2`` argument to any Keras optimizer.
* :func:`with_coupled_l2` -- the ``AdamL2`` / ``SGDL2`` with the settings of a given ``Adam`` / ``SGD``.

Which variables: like torch, every variable the optimizer updates (kernels, biases, batch-norm
``gamma``/``beta``, relaxation branches), since in Keras that is what a torch parameter is;
non-trainable variables (batch-norm moving statistics, ``theta``) are never updated by an optimizer.
``l2_exclude`` takes name patterns (``re.search`` on ``variable.path``, e.g.
``["gamma", "beta", "bias"]``) to leave out, as torch's parameter groups would.

The term is added in ``update_step``, i.e. after Keras' gradient clipping (torch users clip
before ``step()``, which then adds it) and inside the per-variable update that Keras runs under
``tf.function``/XLA and in each replica's ``tf.distribute`` update; the optimizers serialize
(``get_config`` / ``from_config``, ``.keras`` files).
"""

from __future__ import annotations

import re

import keras
from keras import ops

__all__ = ["CoupledL2", "AdamL2", "SGDL2", "with_coupled_l2"]

register = keras.saving.register_keras_serializable(package="keras_relaxeq")


def _constant(value, dtype):
    """A Python number as a tensor of ``dtype`` (``ops.cast`` would round it through float32 first)."""
    return ops.convert_to_tensor(value, dtype=dtype)


class CoupledL2:
    """Mixin adding ``gradient += l2 * variable`` before the optimizer's own update.

    Args (besides the base optimizer's):
        l2: the coefficient (torch's ``weight_decay``); 0 switches it off.
        l2_exclude: name patterns of variables without the term (``re.search`` on the variable's
            path, e.g. ``"conv1/map_to_feat/kernel"``, or its name).
    """

    def __init__(self, *args, l2=0.0, l2_exclude=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.l2 = float(l2)
        if self.l2 < 0:
            raise ValueError(f"l2 must be >= 0, got {l2}.")
        if isinstance(l2_exclude, str):
            l2_exclude = [l2_exclude]
        self.l2_exclude = [str(p) for p in (l2_exclude or [])]
        self._l2_exclude_patterns = [re.compile(p) for p in self.l2_exclude]

    def uses_l2(self, variable):
        """Whether ``variable`` gets the L2 term (decided once per variable, in Python)."""
        if self.l2 == 0.0:
            return False
        names = [getattr(variable, "path", None), getattr(variable, "name", None)]
        names = [n for n in names if n]
        return not any(p.search(n) for p in self._l2_exclude_patterns for n in names)

    def coupled_gradient(self, gradient, variable):
        """``gradient + l2 * variable`` (or ``gradient`` for an excluded variable), in the variable's dtype."""
        gradient = ops.cast(gradient, variable.dtype)
        if not self.uses_l2(variable):
            return gradient
        return ops.add(gradient, ops.multiply(_constant(self.l2, variable.dtype), variable))

    def update_step(self, gradient, variable, learning_rate):
        return super().update_step(self.coupled_gradient(gradient, variable), variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        config.update(l2=self.l2, l2_exclude=list(self.l2_exclude))
        return config


@register
class AdamL2(CoupledL2, keras.optimizers.Adam):
    """Adam with coupled L2 and torch's epsilon: ``torch.optim.Adam(lr, (beta_1, beta_2), epsilon, l2)``.

    Args:
        learning_rate, beta_1, beta_2, amsgrad, ...: as ``keras.optimizers.Adam``.
        epsilon: torch's ``eps`` (default 1e-8, torch's).
        l2, l2_exclude: see :class:`CoupledL2`.
        torch_epsilon: add ``epsilon`` to the bias-corrected ``sqrt(v_hat)`` (torch); ``False``: to
            ``sqrt(v)`` before the correction (Keras' ``Adam``).
    """

    def __init__(
        self,
        learning_rate=0.001,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        amsgrad=False,
        l2=0.0,
        l2_exclude=None,
        torch_epsilon=True,
        name="adam_l2",
        **kwargs,
    ):
        super().__init__(
            learning_rate=learning_rate,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            amsgrad=amsgrad,
            l2=l2,
            l2_exclude=l2_exclude,
            name=name,
            **kwargs,
        )
        self.torch_epsilon = bool(torch_epsilon)

    def update_step(self, gradient, variable, learning_rate):
        if not self.torch_epsilon:
            return super().update_step(gradient, variable, learning_rate)
        gradient = self.coupled_gradient(gradient, variable)
        # torch.optim.Adam: w -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        step = ops.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = _constant(self.beta_1, dtype), _constant(self.beta_2, dtype)
        correction_1 = 1 - ops.power(beta_1, step)
        correction_2 = 1 - ops.power(beta_2, step)
        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1 - beta_2))
        if self.amsgrad:
            v_hat = self._velocity_hats[index]
            self.assign(v_hat, ops.maximum(v_hat, v))
            v = v_hat
        denominator = ops.add(ops.divide(ops.sqrt(v), ops.sqrt(correction_2)), _constant(self.epsilon, dtype))
        self.assign_sub(variable, ops.divide(ops.multiply(m, ops.divide(lr, correction_1)), denominator))

    def get_config(self):
        config = super().get_config()
        config.update(torch_epsilon=self.torch_epsilon)
        return config


@register
class SGDL2(CoupledL2, keras.optimizers.SGD):
    """SGD (with optional momentum / Nesterov) and coupled L2: ``torch.optim.SGD(..., weight_decay=l2)``."""

    def __init__(
        self, learning_rate=0.01, momentum=0.0, nesterov=False, l2=0.0, l2_exclude=None, name="sgd_l2", **kwargs
    ):
        super().__init__(
            learning_rate=learning_rate,
            momentum=momentum,
            nesterov=nesterov,
            l2=l2,
            l2_exclude=l2_exclude,
            name=name,
            **kwargs,
        )


_COUPLED = {keras.optimizers.Adam: AdamL2, keras.optimizers.SGD: SGDL2}


def with_coupled_l2(optimizer, l2, l2_exclude=None, **overrides):
    """A new :class:`AdamL2` / :class:`SGDL2` with the configuration of ``optimizer`` and coupled ``l2``.

    ``optimizer``: a ``keras.optimizers.Adam`` or ``SGD`` instance or the strings ``"adam"`` /
    ``"sgd"``; its decoupled ``weight_decay`` must be unset.  An ``Adam`` keeps its own epsilon
    placement (``torch_epsilon=False``) unless ``overrides`` says otherwise.  Call before training
    (optimizer state is not copied).
    """
    optimizer = keras.optimizers.get(optimizer)
    target = _COUPLED.get(type(optimizer))
    if target is None:
        raise ValueError(
            f"with_coupled_l2 supports keras.optimizers.Adam and SGD, got {type(optimizer).__name__}; "
            "for another optimizer define class MyOptimizer(CoupledL2, <optimizer class>)."
        )
    config = optimizer.get_config()
    if config.get("weight_decay"):
        raise ValueError(
            f"{type(optimizer).__name__} has weight_decay={config['weight_decay']} (decoupled); "
            "unset it when adding the coupled L2 term, or both are applied."
        )
    config.pop("name", None)
    if target is AdamL2:
        config["torch_epsilon"] = False
    config.update(l2=l2, l2_exclude=l2_exclude, **overrides)
    return target.from_config(config)
