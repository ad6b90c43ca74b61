"""Matching-pursuit SAE: codes picked greedily over the decoder atoms instead of by an encoder matrix.

Matching pursuit (Mallat & Zhang 1993; as an SAE encoder, the "MP-SAE" of Costa et al. 2025) starts from the
centred input r = x - b_dec and, k times, picks the atom d_j [d] (a unit-norm decoder row) best correlated
with r, gives it the coefficient a_j = <r, d_j> (added up if picked again) and removes it: r <- r - a_j d_j.
Unlike TopK it explains away: once an atom is used, atoms that merely overlap with it lose the correlation
they borrowed from it, which matters when atoms are far from orthogonal.

Codes are kept non-negative like every other family here (the pick is the largest *positive* correlation;
a row stops early when none is left): the atlas, the web app and the planted tests read a feature as a
direction that is present or absent, and with |<r, d_j>| one atom would stand for both d_j and -d_j.

The selection runs in correlation space: with c = r D^T [n, d_latent] and G = D D^T, removing a_j d_j from r
changes c by -a_j G[j], an O(n d_latent) update per step instead of a fresh O(n d d_latent) product.
``W_enc`` and ``b_enc`` are unused; they stay so the weight file has the layout every dictionary shares.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from featurelens.dictionaries.base import Dictionary, DictionaryError, TrainingOutput
from featurelens.dictionaries.sparse_decode import sparse_decode, use_sparse_decoder
from featurelens.dictionaries.topk import check_k

PursuitStep = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # picked [n], coefficient [n], corr [n, L]


def incremental_pursuit(correlations: torch.Tensor, gram: torch.Tensor, k: int) -> Iterator[PursuitStep]:
    """Non-negative matching pursuit from correlations [n, d_latent] and atoms' Gram matrix [L, L].

    Yields, after each of ``k`` steps, (picked atom [n], its coefficient [n] >= 0, the residual's
    correlations [n, d_latent] with every atom), updated by -coefficient * gram[picked] only.
    """
    c = correlations
    for _ in range(k):
        best, picked = c.max(dim=1)
        coefficient = best.clamp_min(0.0)  # nothing positive left: this row stops (a no-op update)
        c = torch.addcmul(c, coefficient[:, None], gram[picked], value=-1.0)
        yield picked, coefficient, c


def direct_pursuit(residual: torch.Tensor, W_dec: torch.Tensor, k: int) -> Iterator[PursuitStep]:
    """The reference for :func:`incremental_pursuit`: r [n, d] updated explicitly, c = r W_dec^T recomputed.

    W_dec [d_latent, d] holds unit-norm atoms. Yields the same triples; O(n d d_latent) per step.
    """
    r = residual
    c = r @ W_dec.T
    for _ in range(k):
        best, picked = c.max(dim=1)
        coefficient = best.clamp_min(0.0)
        r = r - coefficient[:, None] * W_dec[picked]
        c = r @ W_dec.T
        yield picked, coefficient, c


CACHE_ELEMENTS = 1 << 17  # rows pursued together hold about this many correlations (512 KiB in float32)


def matching_pursuit(
    correlations: torch.Tensor, gram: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(atoms picked [n, k], coefficients [n, k] >= 0) of ``k`` steps of :func:`incremental_pursuit`.

    Rows are independent, so they are pursued in blocks whose correlations stay in the CPU's cache through
    all k steps (each step reads and rewrites the block).
    """
    rows = max(8, CACHE_ELEMENTS // max(1, correlations.shape[1]))
    picked, coefficients = [], []
    for block in correlations.split(rows):
        steps = list(incremental_pursuit(block, gram, k))
        picked.append(torch.stack([s[0] for s in steps], dim=1))
        coefficients.append(torch.stack([s[1] for s in steps], dim=1))
    return torch.cat(picked), torch.cat(coefficients)


def accumulate_codes(indices: torch.Tensor, values: torch.Tensor, d_latent: int) -> torch.Tensor:
    """Dense codes [n, d_latent] from [n, k] picks, summing an atom picked more than once."""
    return values.new_zeros(values.shape[0], d_latent).scatter_add(1, indices, values)


class MatchingPursuitDictionary(Dictionary):
    """Codes = k steps of non-negative matching pursuit over the decoder rows (SAEs only, no skip)."""

    arch = "mp"

    def __init__(self, d_in: int, d_latent: int, *, k: int = 32, **kwargs: Any) -> None:
        check_k(k, d_latent)
        super().__init__(d_in, d_latent, **kwargs)
        if self.is_transcoder or self.W_skip is not None:
            # The pursuit subtracts decoder atoms from the input itself, so both must live in one space.
            raise DictionaryError(
                "arch 'mp' (matching pursuit) works on one hook without a skip connection; "
                f"got hook_in={self.hook_in!r} hook_out={self.hook_out!r} skip={self.W_skip is not None}"
            )
        self.k = k
        self._gram: tuple[tuple[Any, ...], torch.Tensor] | None = None

    def config(self) -> dict[str, Any]:
        return {**super().config(), "k": self.k}

    @torch.no_grad()
    def gram(self) -> torch.Tensor:
        """G = W_dec W_dec^T [d_latent, d_latent], cached until the decoder changes (any in-place edit)."""
        W = self.W_dec
        key = (W._version, W.data_ptr(), W.device, W.dtype, tuple(W.shape))
        if self._gram is None or self._gram[0] != key:
            self._gram = (key, W.detach() @ W.detach().T)
        return self._gram[1]

    def pre_activation(self, x_scaled: torch.Tensor, latents: torch.Tensor | None = None) -> torch.Tensor:
        """Correlations [n, d_latent] (only ``latents`` if given) of the centred input with decoder atoms.

        This is where the pursuit starts; AuxK also reads it to give dead atoms a gradient.
        """
        atoms = self.W_dec if latents is None else self.W_dec[latents]
        return self.centred(x_scaled) @ atoms.T

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        indices, values = matching_pursuit(pre, self.gram(), self.k)
        return accumulate_codes(indices, values, self.d_latent)

    def training_forward(self, x_scaled: torch.Tensor, y_scaled: torch.Tensor) -> TrainingOutput:
        centred = self.centred(x_scaled)
        with torch.no_grad():  # the selection is not differentiable
            indices, picked_values = matching_pursuit(centred @ self.W_dec.T, self.gram(), self.k)
        kept = (picked_values > 0).to(centred.dtype)
        # Straight-through: replay the same picks with differentiable coefficients a = <r, d_j>, so the
        # gradient reaches the decoder, b_dec and x through every coefficient and residual update.
        residual, coefficients = centred, []
        for step in range(self.k):
            atom = self.W_dec[indices[:, step]]
            a = (residual * atom).sum(dim=1) * kept[:, step]
            residual = residual - a[:, None] * atom
            coefficients.append(a)
        values = torch.stack(coefficients, dim=1)
        # Not topk_decode: its dense path scatters, which would drop all but one pick of a re-picked atom.
        if use_sparse_decoder(self.k, self.d_latent):
            y_hat = sparse_decode(indices, values, self.W_dec) + self.b_dec  # embedding_bag sums repeats
        else:
            y_hat = accumulate_codes(indices, values, self.d_latent) @ self.W_dec + self.b_dec
        fired = torch.zeros(self.d_latent, dtype=torch.bool, device=indices.device)
        fired[indices[kept > 0]] = True
        return TrainingOutput(y_hat, fired, distinct_active(indices, kept > 0), values.new_zeros(()))


def distinct_active(indices: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Mean number of distinct atoms per row among picks [n, k] where ``kept`` [n, k] (an atom re-picked
    counts once), a float scalar."""
    ordered = indices.masked_fill(~kept, -1).sort(dim=1).values
    new = torch.cat([ordered[:, :1] >= 0, (ordered[:, 1:] != ordered[:, :-1]) & (ordered[:, 1:] >= 0)], 1)
    return new.sum(dim=1).float().mean()
