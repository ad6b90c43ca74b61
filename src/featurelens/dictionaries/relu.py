"""ReLU SAE with an L1 penalty weighted by decoder row norms (Anthropic, April 2024 update).

The penalty is divided by d_out like the trainer's reconstruction loss (mean squared error per element),
so ``sparsity_coefficient`` is that update's lambda for inputs normalised to squared norm ~d_in, in any
width: a code of size f costs ``sparsity_coefficient * f`` of a row's summed squared error, which shrinks
an isolated feature's code by ``sparsity_coefficient / 2``.
"""

from __future__ import annotations

from typing import Any

import torch

from featurelens.dictionaries.base import Dictionary, DictionaryError, TrainingOutput


def dense_start_scale(d_in: int, d_latent: int) -> float:
    """Encoder scale at which a ReLU start decodes to about its input's norm: min(1, 2 d_in / d_latent).

    With unit encoder columns (the decoder transpose) about half of the latents fire on a row and
    their codes sum coherently: the reconstruction is ~d_latent / (2 d_in) times the input (8x at
    expansion 16). The resulting first gradients silence most latents under an L1 or L0 penalty
    before any of them has learned a direction; scaled down, all latents start alive and competing.
    """
    return min(1.0, 2 * d_in / d_latent)


class ReLUDictionary(Dictionary):
    """Codes = relu(pre); penalty ``sparsity_coefficient`` * mean_rows(sum_i codes_i ||W_dec[i]||) / d_out.

    ``sparsity_coefficient`` is the attribute a target-L0 controller steers during training.
    """

    arch = "relu"

    def __init__(self, d_in: int, d_latent: int, *, sparsity_coefficient: float = 1.0, **kwargs: Any) -> None:
        if sparsity_coefficient < 0:
            raise DictionaryError(f"sparsity_coefficient must be >= 0, got {sparsity_coefficient}")
        super().__init__(d_in, d_latent, **kwargs)
        self.sparsity_coefficient = sparsity_coefficient

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        super().reset_parameters(generator)
        self.W_enc.mul_(dense_start_scale(self.d_in, self.d_latent))

    def config(self) -> dict[str, Any]:
        return {**super().config(), "sparsity_coefficient": self.sparsity_coefficient}

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return pre.relu()

    def training_forward(self, x_scaled: torch.Tensor, y_scaled: torch.Tensor) -> TrainingOutput:
        pre = self.pre_activation(x_scaled)
        codes = pre.relu()
        y_hat = codes @ self.W_dec + self.b_dec + self.skip_term(x_scaled)
        active = codes > 0
        l1 = (codes * self.W_dec.norm(dim=1)).sum(1).mean() / self.d_out
        return TrainingOutput(
            y_hat, active.any(0), active.sum(1).float().mean(), self.sparsity_coefficient * l1
        )
