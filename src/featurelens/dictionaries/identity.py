"""The identity dictionary: a hook's own units (e.g. raw MLP neurons) seen through the `Dictionary` interface.

Latent i is unit i of ``hook``: encode and decode return their input unchanged, so everything built for
dictionary features (the atlas, its pages, later interventions) works on neurons too. Its codes are raw
activations and may be negative; tools that count firing treat only values > 0 as firing. It is not
trainable and is not saved: it is fully described by its hook and width.
"""

from __future__ import annotations

from pathlib import Path

import torch

from featurelens.dictionaries.base import Dictionary, DictionaryError


class IdentityDictionary(Dictionary):
    """Codes = activations of ``hook`` [n, width]; W_enc = W_dec = identity."""

    arch = "identity"

    def __init__(self, width: int, hook: str) -> None:
        super().__init__(width, width, hook_in=hook)
        with torch.no_grad():
            self.W_enc.copy_(torch.eye(width))
            self.W_dec.copy_(torch.eye(width))

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return pre

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self._check_width(x, self.d_in)
        return x

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return codes

    def save(self, path: str | Path, format: str = "featurelens") -> Path:
        raise DictionaryError("the identity dictionary has no weights to save; it is its hook and width")
