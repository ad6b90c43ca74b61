"""Reach a target L0 by steering the sparsity coefficient, so users never tune an L1 weight by hand."""

from __future__ import annotations

import math
from dataclasses import dataclass

# Log-coefficient change per step when the L0 is e times the target. The L0 follows the coefficient only
# as fast as Adam moves the weights (~lr per step), so a faster controller winds up: while the thresholds
# climb it keeps raising the coefficient, then overshoots far below the target and takes hundreds of steps
# to unwind (the huge gradients also leave Adam's second moments inflated). 0.01 suits lr ~1e-2; for a
# smaller lr pass about ``gain=lr``.
GAIN = 0.01


@dataclass
class L0Controller:
    """Integral control in log space: too many active latents raise the coefficient, too few lower it.

    ``update(l0)`` takes the batch's mean L0 and returns the coefficient for the next step: the
    coefficient is multiplied by ``(l0 / target) ** gain``, with the exponent's log-ratio clipped to
    [-1, 1]. ``coefficient`` is the whole state, so a run restored with it continues exactly.
    """

    target: float
    coefficient: float
    gain: float = GAIN

    def update(self, l0: float) -> float:
        error = max(-1.0, min(1.0, math.log(max(l0, 1e-6) / self.target)))
        self.coefficient *= math.exp(self.gain * error)
        return self.coefficient
