"""Matryoshka BatchTopK SAE (Bussmann et al. 2025; Nabeshima 2024): nested prefixes of the latent list.

Codes come from one BatchTopK selection over all latents. Every prefix ``codes[:, :p]`` must reconstruct
the target on its own, so the first latents learn the broad features a small dictionary would keep and
later latents add detail instead of absorbing the early ones' directions. Inference is BatchTopK's:
a fixed learned threshold.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch

from featurelens.dictionaries.base import DictionaryError, TrainingOutput
from featurelens.dictionaries.batchtopk import BatchTopKDictionary

DEFAULT_LEVELS = 5  # default prefixes: d_latent / 16, / 8, / 4, / 2, d_latent


def default_prefixes(d_latent: int, levels: int = DEFAULT_LEVELS) -> list[int]:
    """Halving prefix sizes ending at ``d_latent``: [d_latent / 2^(levels-1), ..., d_latent / 2, d_latent]."""
    return sorted({max(1, d_latent >> halvings) for halvings in range(levels)})


def check_prefixes(prefixes: list[int], d_latent: int) -> None:
    """Reject prefix sizes that are not strictly increasing positive ints ending at ``d_latent``."""
    increasing = all(a < b for a, b in itertools.pairwise(prefixes))
    if not prefixes or prefixes[0] < 1 or not increasing or prefixes[-1] != d_latent:
        raise DictionaryError(
            f"prefixes must be strictly increasing positive sizes ending at d_latent={d_latent}, "
            f"got {prefixes}"
        )


class MatryoshkaDictionary(BatchTopKDictionary):
    """BatchTopK whose latent prefixes of sizes ``prefixes`` each reconstruct the target.

    ``extra_loss`` is the sum over prefixes shorter than d_latent of mean_rows(||y - y_hat_p||^2) / d_out,
    each weighted like the trainer's main (full-dictionary) reconstruction loss.
    """

    arch = "matryoshka"

    def __init__(
        self, d_in: int, d_latent: int, *, k: int = 32, prefixes: list[int] | None = None, **kwargs: Any
    ) -> None:
        prefixes = list(prefixes) if prefixes is not None else default_prefixes(d_latent)
        check_prefixes(prefixes, d_latent)
        super().__init__(d_in, d_latent, k=k, **kwargs)
        self.prefixes = prefixes

    def config(self) -> dict[str, Any]:
        return {**super().config(), "prefixes": self.prefixes}

    def training_forward(self, x_scaled: torch.Tensor, y_scaled: torch.Tensor) -> TrainingOutput:
        pre = self.pre_activation(x_scaled)
        codes = self.training_codes(pre)
        active = codes > 0
        y_hat = self.b_dec + self.skip_term(x_scaled)
        prefix_loss = pre.new_zeros(())
        for start, end in zip([0, *self.prefixes[:-1]], self.prefixes, strict=True):
            y_hat = y_hat + codes[:, start:end] @ self.W_dec[start:end]
            if end < self.d_latent:
                prefix_loss = prefix_loss + (y_scaled - y_hat).square().sum(1).mean() / self.d_out
        return TrainingOutput(y_hat, active.any(0), active.sum(1).float().mean(), prefix_loss)
