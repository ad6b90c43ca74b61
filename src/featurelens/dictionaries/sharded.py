"""Latent sharding: a TopK dictionary too wide for one device, split by latents over a process group.

Rank r of R holds a contiguous slice of the latents (W_enc's columns, b_enc, W_dec's rows; sizes differ by at
most one when R does not divide d_latent); b_dec, W_skip and the scales are replicated. Every rank reads the
same rows x. A forward pass makes one all-gather and one all-reduce:

1. each rank takes the top-k of its own pre-activations: the global top-k of a row lies within the union of
   the per-rank top-ks, since a latent beaten by k others in its own slice is beaten by k others overall;
2. the ranks all-gather those candidate values [n, k] and each takes the global top-k of the R*k candidates,
   keeping the ones of its own candidates that survive;
3. each rank decodes its surviving values with its rows of W_dec; the partial reconstructions are summed.

Gradients: every rank computes the same loss of the same y_hat, so the sum's backward is the identity on
each rank's partial; the selection is not differentiable, so a value's gradient reaches only the rank that
owns its latent, through that rank's encoder columns. The encoder input (x - b_dec) feeds every slice, so
its gradient is summed over ranks in the backward pass: b_dec's (and x's) gradient is then the one-device
gradient on every rank, and replicated parameters stay identical across ranks with no further collective.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from featurelens import distributed
from featurelens.dictionaries.base import (
    Dictionary,
    DictionaryError,
    TrainingOutput,
    normalize_rows_,
    remove_parallel_grad_,
)
from featurelens.dictionaries.registry import build_dictionary
from featurelens.dictionaries.sparse_decode import topk_decode
from featurelens.dictionaries.sparse_encode import topk_encode
from featurelens.dictionaries.topk import TopKDictionary, topk_output
from featurelens.paths import RemotePath


class _SumGradientOverRanks(torch.autograd.Function):
    """Identity forward; the backward sums the gradient over ranks (an input that every slice reads)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return distributed.all_sum(grad.clone())


class _SumOverRanks(torch.autograd.Function):
    """Sum of every rank's partial over ranks; the backward is the identity (every rank has the same loss)."""

    @staticmethod
    def forward(ctx: Any, partial: torch.Tensor) -> torch.Tensor:
        return distributed.all_sum(partial.clone())

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad


def _fingerprint(dictionary: Dictionary) -> list[float]:
    """One number per tensor of ``dictionary``: ranks handed different weights disagree on it."""
    return [float(tensor.double().sum()) for tensor in dictionary.state_dict().values()]


class ShardedTopK(nn.Module):
    """This rank's slice of the latents of a `TopKDictionary`, in the current process group.

    Every rank passes the same dictionary (e.g. loaded from the same folder; checked) and the same inputs.
    :meth:`forward`, :meth:`encode` and :meth:`training_forward` equal the whole dictionary's, and so do
    the gradients after a backward pass of the same loss, up to floating-point summation order. Outside a
    process group it holds every latent and equals the dictionary outright.
    """

    input_scale: torch.Tensor
    output_scale: torch.Tensor

    def __init__(self, dictionary: Dictionary, device: torch.device | str | None = None) -> None:
        super().__init__()
        if type(dictionary) is not TopKDictionary:
            raise DictionaryError(f"latent sharding supports TopK dictionaries only, got {dictionary.arch!r}")
        distributed.check_same({**dictionary.config(), "weights": _fingerprint(dictionary)}, "dictionaries")
        self.world = distributed.current_world()
        self.whole_config = dictionary.config()
        self.d_latent, self.k = dictionary.d_latent, dictionary.k
        self.latents = distributed.slice_rows(self.d_latent, self.world)
        self.is_transcoder = dictionary.is_transcoder
        self.encoder_dtype = dictionary.encoder_dtype
        device = device or dictionary.W_enc.device

        def own(tensor: torch.Tensor) -> nn.Parameter:
            return nn.Parameter(tensor.detach().to(device, copy=True).contiguous())

        self.W_enc = own(dictionary.W_enc[:, self.latents])
        self.b_enc = own(dictionary.b_enc[self.latents])
        self.W_dec = own(dictionary.W_dec[self.latents])
        self.b_dec = own(dictionary.b_dec)
        self.W_skip = own(dictionary.W_skip) if dictionary.W_skip is not None else None
        self.register_buffer("input_scale", dictionary.input_scale.detach().to(device, copy=True))
        self.register_buffer("output_scale", dictionary.output_scale.detach().to(device, copy=True))

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str | None = None) -> ShardedTopK:
        """This rank's slice of the TopK dictionary saved in folder ``path`` (each rank reads it all once)."""
        return cls(Dictionary.load(path), device)

    # -- passes -------------------------------------------------------------------------------------

    def _local_topk(self, x_scaled: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """relu(top-k) values and global latent indices [n, min(k, local width)] of this rank's latents."""
        centred = x_scaled if self.is_transcoder else x_scaled - self.b_dec
        centred = _SumGradientOverRanks.apply(centred)
        k = min(self.k, self.W_enc.shape[1])
        values, indices = topk_encode(centred, self.W_enc, self.b_enc, k, dtype)
        return values, indices + self.latents.start

    def _select(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The global top-k of every rank's candidate ``values`` [n, k_r].

        Returns this rank's survivors (a mask [n, k_r]), the picks' positions [n, k] among all candidates
        [n, R*k] (rank r's at columns r*k .. r*k + k_r; a rank with fewer than k latents pads with -inf),
        and those candidates."""
        padded = values.detach().new_full((values.shape[0], self.k), -torch.inf)
        padded[:, : values.shape[1]] = values.detach()
        candidates = torch.cat(distributed.gather_same_shape(padded), dim=1)
        positions = candidates.topk(self.k, dim=1, sorted=False).indices
        chosen = torch.zeros_like(candidates, dtype=torch.bool).scatter_(1, positions, True)
        start = self.world.rank * self.k
        return chosen[:, start : start + values.shape[1]], positions, candidates

    def _reconstruct(
        self, x_scaled: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """y_hat [n, d_out] in the scaled space (without the skip path); this rank's kept values and their
        global indices [n, k_r] (values 0 where not selected); the selected values [n, k] of every rank."""
        values, indices = self._local_topk(x_scaled, dtype)
        mine, positions, candidates = self._select(values)
        kept = values * mine
        partial = topk_decode(indices - self.latents.start, kept, self.W_dec)
        y_hat = _SumOverRanks.apply(partial) + self.b_dec
        return y_hat, indices, kept, candidates.gather(1, positions)

    def skip_term(self, x_scaled: torch.Tensor) -> torch.Tensor | float:
        """The linear skip path [n, d_out] in the scaled space (0 without a skip connection)."""
        return x_scaled @ self.W_skip if self.W_skip is not None else 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Prediction [n, d_out] from raw inputs x [n, d_in] (the same on every rank), as the whole
        dictionary's `Dictionary.forward`."""
        x_scaled = x * self.input_scale
        y_hat = self._reconstruct(x_scaled, x.dtype)[0]
        return (y_hat + self.skip_term(x_scaled)) / self.output_scale

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole dictionary's codes of raw inputs x [n, d_in] as global latent indices and values [n, k]
        on every rank (`dense_codes` turns them into `Dictionary.encode`'s [n, d_latent])."""
        values, indices = self._local_topk(x * self.input_scale, x.dtype)
        padded = indices.new_zeros((indices.shape[0], self.k))
        padded[:, : indices.shape[1]] = indices
        _, positions, candidates = self._select(values)
        every_index = torch.cat(distributed.gather_same_shape(padded), dim=1)
        return every_index.gather(1, positions), candidates.gather(1, positions)

    def training_forward(self, x_scaled: torch.Tensor, y_scaled: torch.Tensor) -> TrainingOutput:
        """`TopKDictionary.training_forward` over the whole dictionary, except that ``fired`` [L_r] covers
        this rank's latents only; ``l0`` counts every rank's."""
        y_hat, indices, kept, selected = self._reconstruct(x_scaled, self.encoder_dtype)
        y_hat = y_hat + self.skip_term(x_scaled)
        output = topk_output(y_hat, indices - self.latents.start, kept, self.W_dec.shape[0])
        return dataclasses.replace(output, l0=(selected > 0).sum(1).float().mean())

    # -- invariants and files -----------------------------------------------------------------------

    def normalize_decoder_(self) -> None:
        """Rescale this rank's decoder rows to unit norm."""
        normalize_rows_(self.W_dec)

    def remove_parallel_decoder_grad_(self) -> None:
        """Drop the gradient component along each of this rank's decoder rows."""
        remove_parallel_grad_(self.W_dec)

    @torch.no_grad()
    def gather_full(self) -> TopKDictionary:
        """The whole dictionary, reassembled from every rank's slice (a collective: call it on every rank)."""
        whole = build_dictionary(self.whole_config)
        state = {
            "W_enc": distributed.gather_rows(self.W_enc.t().contiguous()).t(),
            "b_enc": distributed.gather_rows(self.b_enc),
            "W_dec": distributed.gather_rows(self.W_dec),
            "b_dec": self.b_dec,
            "input_scale": self.input_scale,
            "output_scale": self.output_scale,
        }
        if self.W_skip is not None:
            state["W_skip"] = self.W_skip
        whole.load_state_dict(state)
        whole.encoder_dtype = self.encoder_dtype
        assert isinstance(whole, TopKDictionary)
        return whole.to(self.W_enc.device)

    def save(self, path: str | Path, format: str = "featurelens") -> Path | RemotePath | None:
        """Reassemble the whole dictionary and save it from rank 0 (see `Dictionary.save`); every rank calls
        this, rank 0 gets the folder written, the others None."""
        whole = self.gather_full()
        return distributed.on_main(lambda: whole.save(path, format), DictionaryError)
