"""BatchTopK SAE (Bussmann et al. 2024): keep the n*k largest activations of a whole batch of n rows.

Rows get a variable number of latents, k on average. Inference must not depend on the batch, so training
keeps a running estimate of the smallest activation the batch selection keeps and inference applies it as
a fixed threshold.
"""

from __future__ import annotations

from typing import Any

import torch

from featurelens.dictionaries.base import Dictionary, TrainingOutput
from featurelens.dictionaries.topk import check_k

THRESHOLD_MOMENTUM = 0.99


class BatchTopKDictionary(Dictionary):
    """Training: top n*k of relu(pre) over the batch; inference: pre where pre > learned ``threshold``."""

    arch = "batchtopk"
    threshold: torch.Tensor

    def __init__(self, d_in: int, d_latent: int, *, k: int = 32, **kwargs: Any) -> None:
        check_k(k, d_latent)
        super().__init__(d_in, d_latent, **kwargs)
        self.k = k
        self.register_buffer("threshold", torch.tensor(-1.0))  # < 0: not yet estimated

    def config(self) -> dict[str, Any]:
        return {**super().config(), "k": self.k}

    @torch.no_grad()
    def scale_thresholds_(self, factor: float) -> None:
        if self.threshold >= 0:
            self.threshold.mul_(factor)

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return pre * (pre > self.threshold.clamp_min(0.0))

    def batch_topk_codes(self, pre: torch.Tensor) -> torch.Tensor:
        """Codes [n, d_latent] keeping the n*k largest positive entries of pre [n, d_latent]."""
        flat = pre.relu().flatten()
        values, indices = flat.topk(min(self.k * pre.shape[0], flat.numel()), sorted=False)
        return torch.zeros_like(flat).scatter(0, indices, values).view_as(pre)

    def training_codes(self, pre: torch.Tensor) -> torch.Tensor:
        """Batch-TopK codes [n, d_latent] of pre [n, d_latent]; in training mode, update ``threshold``."""
        codes = self.batch_topk_codes(pre)
        active = codes > 0
        if self.training and active.any():
            with torch.no_grad():
                smallest = codes[active].min()
                first = self.threshold < 0
                blended = THRESHOLD_MOMENTUM * self.threshold + (1 - THRESHOLD_MOMENTUM) * smallest
                self.threshold.copy_(torch.where(first, smallest, blended))
        return codes

    def training_forward(self, x_scaled: torch.Tensor, y_scaled: torch.Tensor) -> TrainingOutput:
        pre = self.pre_activation(x_scaled)
        codes = self.training_codes(pre)
        active = codes > 0
        y_hat = codes @ self.W_dec + self.b_dec + self.skip_term(x_scaled)
        return TrainingOutput(y_hat, active.any(0), active.sum(1).float().mean(), pre.new_zeros(()))
