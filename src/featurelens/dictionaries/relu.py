"""ReLU SAE with an L1 penalty weighted by decoder row norms (Anthropic, April 2024 update)."""

from __future__ import annotations

from typing import Any

import torch

from featurelens.dictionaries.base import Dictionary, DictionaryError, TrainingOutput


class ReLUDictionary(Dictionary):
    """Codes = relu(pre); L1 penalty ``sparsity_coefficient`` * sum_i codes_i * ||W_dec[i]||, per row.

    ``sparsity_coefficient`` is the attribute a target-L0 controller steers during training.
    """

    arch = "relu"

    def __init__(self, d_in: int, d_latent: int, *, sparsity_coefficient: float = 1.0, **kwargs: Any) -> None:
        if sparsity_coefficient < 0:
            raise DictionaryError(f"sparsity_coefficient must be >= 0, got {sparsity_coefficient}")
        super().__init__(d_in, d_latent, **kwargs)
        self.sparsity_coefficient = sparsity_coefficient

    def config(self) -> dict[str, Any]:
        return {**super().config(), "sparsity_coefficient": self.sparsity_coefficient}

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return pre.relu()

    def training_forward(self, x_scaled: torch.Tensor, y_scaled: torch.Tensor) -> TrainingOutput:
        pre = self.pre_activation(x_scaled)
        codes = pre.relu()
        y_hat = codes @ self.W_dec + self.b_dec + self.skip_term(x_scaled)
        active = codes > 0
        l1 = (codes * self.W_dec.norm(dim=1)).sum(1).mean()
        return TrainingOutput(
            y_hat, active.any(0), active.sum(1).float().mean(), self.sparsity_coefficient * l1, pre
        )
