"""The result of an equivariance check and the default tolerances, shared by every checker of the package."""

from __future__ import annotations

import dataclasses

import tensorflow as tf

#: default (atol, rtol) by the dtype the function computes in
TOLERANCES = {
    tf.float16: (1e-2, 5e-2),
    tf.bfloat16: (1e-2, 5e-2),
    tf.float32: (1e-5, 1e-3),
    tf.float64: (1e-12, 1e-9),
}


@dataclasses.dataclass
class EquivarianceReport:
    """Result of an equivariance check."""

    max_error: float
    mean_error: float
    scale: float
    atol: float
    rtol: float
    num_samples: int
    group: str

    @property
    def passed(self) -> bool:
        return self.max_error <= self.atol + self.rtol * self.scale

    def __str__(self):
        return (
            f"{self.group} equivariance over {self.num_samples} draws: max error {self.max_error:.3e}, "
            f"mean error {self.mean_error:.3e} (output scale {self.scale:.3e}; allowed "
            f"{self.atol:.1e} + {self.rtol:.1e} * scale = {self.atol + self.rtol * self.scale:.3e})"
        )
