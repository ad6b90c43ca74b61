"""TopK SAE (Gao et al. 2024): keep the k largest ReLU pre-activations of each row."""

from __future__ import annotations

from typing import Any

import torch

from featurelens.dictionaries.base import Dictionary, DictionaryError, TrainingOutput
from featurelens.dictionaries.selection import top_k
from featurelens.dictionaries.sparse_decode import dense_codes, topk_decode, use_sparse_decoder
from featurelens.dictionaries.sparse_encode import topk_encode


def check_k(k: int, d_latent: int) -> None:
    """Reject a k that cannot select a strict subset of the latents."""
    if not 0 < k < d_latent:
        raise DictionaryError(f"k must be between 1 and d_latent - 1 = {d_latent - 1}, got {k}")


class TopKDictionary(Dictionary):
    """Codes = the k largest of relu(pre) per row; decoded sparsely when k << d_latent."""

    arch = "topk"

    def __init__(self, d_in: int, d_latent: int, *, k: int = 32, **kwargs: Any) -> None:
        check_k(k, d_latent)
        super().__init__(d_in, d_latent, **kwargs)
        self.k = k

    def config(self) -> dict[str, Any]:
        return {**super().config(), "k": self.k}

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        values, indices = top_k(pre, self.k)
        return dense_codes(indices, values.relu(), self.d_latent)

    def training_forward(self, x_scaled: torch.Tensor, y_scaled: torch.Tensor) -> TrainingOutput:
        if use_sparse_decoder(self.k, self.d_latent):  # sparse enough for sparse backward passes
            shift = None if self.is_transcoder else self.b_dec  # what centred() subtracts
            values, indices = topk_encode(x_scaled, self.W_enc, self.b_enc, self.k, self.encoder_dtype, shift)
        else:
            values, indices = top_k(self.pre_activation(x_scaled), self.k)
            values = values.relu()
        y_hat = topk_decode(indices, values, self.W_dec) + self.b_dec + self.skip_term(x_scaled)
        return topk_output(y_hat, indices, values, self.d_latent)


def topk_output(
    y_hat: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, d_latent: int
) -> TrainingOutput:
    """The training output of a reconstruction y_hat [n, d_out] from k picks per row (indices/values [n, k]):
    a latent fired where its value is positive; no extra loss."""
    active = values > 0
    fired = torch.zeros(d_latent, dtype=torch.bool, device=values.device)
    fired[indices[active]] = True
    return TrainingOutput(y_hat, fired, active.sum(1).float().mean(), values.new_zeros(()))
