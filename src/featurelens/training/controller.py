"""Reach a target L0 by steering the sparsity coefficient, so users never tune an L1 weight by hand."""

from __future__ import annotations

import math
from dataclasses import dataclass

GAIN = 0.05  # log-coefficient change per step at 100% relative L0 error


@dataclass
class L0Controller:
    """Integral control in log space: too many active latents raise the coefficient, too few lower it.

    ``update(l0)`` takes the batch's mean L0 and returns the coefficient for the next step.
    """

    target: float
    coefficient: float

    def update(self, l0: float) -> float:
        error = max(-1.0, min(1.0, (l0 - self.target) / self.target))
        self.coefficient *= math.exp(GAIN * error)
        return self.coefficient
