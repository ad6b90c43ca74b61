"""Codebook features (Tamkin, Taufeeque & Goodman 2023): a layer's output is the sum of k codebook vectors.

Each token's activation x [d] is replaced by the sum of the k codes c_j [d] most similar to it by cosine,
cos(x, c_j) = <x, c_j> / (|x| |c_j|). The paper's codebook has no bias and no separate encoder: codes are
chosen by comparing x with the codes themselves, and the output carries no information beyond *which*
codes were chosen, so a code is a discrete feature that is on or off.

In the shared `Dictionary` layout a code is c_j = ``code_norms[j]`` * ``W_dec[j]``: a unit direction (the
base class keeps decoder rows at unit norm) times a per-code norm. |x| is common to every code of a row, so
the top k by cosine are the top k of <x, W_dec[j]>: the encoder is tied to the decoder, W_enc = W_dec^T
(``W_enc`` and ``b_enc`` stay in the weight file, unused, like matching pursuit's). A selected code's value
is its norm, so ``decode(encode(x))`` is exactly the sum of the selected c_j; ``b_dec`` is held at zero.

Training (the existing trainer, reconstruction loss): the selection is not differentiable; the gradient
reaches the selected codes' directions and norms through the sum. Codes that stop being selected get the
trainer's AuxK loss, and, as in the paper, are re-initialised to inputs (:meth:`revive_`): once a code
has gone unused for the run's ``dead_after_tokens``, it becomes the direction of one of the batch's
worst-reconstructed rows. The paper also fine-tunes the
model around its codebook with the language-model loss; that optional stage is
`featurelens.training.codebook_finetune.finetune_with_codebook`.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from featurelens.dictionaries.base import Dictionary, DictionaryError, TrainingOutput
from featurelens.dictionaries.selection import top_k
from featurelens.dictionaries.sparse_decode import dense_codes, topk_decode
from featurelens.dictionaries.topk import check_k

FLOAT_BYTES = 4
REVIVE_FRACTION = 0.01  # of the codes, at most, re-initialised per training step


def top_codes(x: torch.Tensor, directions: torch.Tensor, k: int, dtype: torch.dtype) -> torch.Tensor:
    """Indices [n, k] of the k code directions [n_codes, d] (unit rows) most cosine-similar to x [n, d].

    The [n, n_codes] similarity matrix is computed in ``dtype`` (bfloat16 only picks, it is never summed).
    """
    return top_k(x.to(dtype) @ directions.to(dtype).T, k)[1]


def available_memory(device: torch.device) -> int:
    """Bytes that can still be allocated on ``device``: free GPU memory, or the OS's MemAvailable."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _size(n_bytes: float) -> str:
    units = ["B", "KB", "MB", "GB", "TB"]
    while n_bytes >= 1024 and len(units) > 1:
        n_bytes, units = n_bytes / 1024, units[1:]
    return f"{n_bytes:,.1f} {units[0]}"


def check_memory(parts: dict[str, int], device: torch.device, what: str, lower: str) -> None:
    """Refuse ``what`` when the summed ``parts`` (name -> bytes) exceed what ``device`` has available."""
    needed, free = sum(parts.values()), available_memory(device)
    if needed > free:
        listed = ", ".join(f"{name} {_size(size)}" for name, size in parts.items())
        raise DictionaryError(
            f"{what} needs ~{_size(needed)} ({listed}) but {device.type} has {_size(free)} available; "
            f"lower {lower}"
        )


def weight_bytes(d: int, n_codes: int) -> int:
    """Bytes of a codebook's weights: W_enc and W_dec [d, n_codes] each, biases and code norms."""
    return FLOAT_BYTES * (2 * d * n_codes + 2 * n_codes + 2 * d)


class CodebookDictionary(Dictionary):
    """Codes = the norms of the k codes nearest to each row by cosine, zero elsewhere (SAEs only)."""

    arch = "codebook"
    code_norms: nn.Parameter

    def __init__(self, d_in: int, d_latent: int, *, k: int = 8, **kwargs: Any) -> None:
        check_k(k, d_latent)
        check_memory(
            {"weights": weight_bytes(d_in, d_latent)},
            torch.device("cpu"),
            f"a codebook of {d_latent:,} codes x {d_in:,} dims",
            "the number of codes (--expansion)",
        )
        self.k = k
        super().__init__(d_in, d_latent, **kwargs)
        if self.is_transcoder or self.W_skip is not None:
            # Codes are chosen by their cosine with the input itself, so input and output share one space.
            raise DictionaryError(
                "arch 'codebook' works on one hook without a skip connection; "
                f"got hook_in={self.hook_in!r} hook_out={self.hook_out!r} skip={self.W_skip is not None}"
            )
        self.b_dec.requires_grad_(False)  # the paper's codebook has no bias: the output is the codes' sum
        self.code_norms = nn.Parameter(torch.full((d_latent,), self._initial_norm()))

    def _initial_norm(self) -> float:
        # k codes of this norm add up to at most a row of the trainer's space (norm sqrt(d)) even when they
        # are near-parallel, as the k nearest codes to anisotropic activations (a shared mean direction) are.
        return float(self.d_out**0.5 / self.k)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        super().reset_parameters(generator)
        if hasattr(self, "code_norms"):  # the base constructor resets before the norms exist
            self.code_norms.fill_(self._initial_norm())

    def config(self) -> dict[str, Any]:
        return {**super().config(), "k": self.k}

    @classmethod
    def check_training_fits(
        cls, d_in: int, d_latent: int, d_out: int, batch_size: int, device: torch.device
    ) -> None:
        """Weights, W_dec's gradient and two Adam moments, and the [batch, codes] similarity matrix."""
        check_memory(
            {
                "weights": weight_bytes(d_in, d_latent),
                "gradient + Adam state": 3 * FLOAT_BYTES * d_latent * (d_out + 1),
                f"[{batch_size:,}, {d_latent:,}] similarities": FLOAT_BYTES * batch_size * d_latent,
            },
            device,
            f"training a codebook of {d_latent:,} codes x {d_in:,} dims",
            "--expansion (codes = expansion x width) or --batch-size",
        )

    def code_vectors(self) -> torch.Tensor:
        """The codebook [d_latent, d_out] in raw activation units: c_j = code_norms[j] * W_dec[j]."""
        return self.code_norms[:, None] * self.W_dec / self.output_scale

    # -- the interface ----------------------------------------------------------------------------

    def pre_activation(self, x_scaled: torch.Tensor, latents: torch.Tensor | None = None) -> torch.Tensor:
        """<x, W_dec[j]> [n, d_latent] (only ``latents`` if given): |x| times the cosine with each code.

        This ranks the codes; AuxK also reads it to give unused codes a gradient.
        """
        directions = self.W_dec if latents is None else self.W_dec[latents]
        return x_scaled @ directions.T

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        indices = top_k(pre, self.k)[1]
        return dense_codes(indices, self.code_norms[indices], self.d_latent)

    def training_forward(self, x_scaled: torch.Tensor, y_scaled: torch.Tensor) -> TrainingOutput:
        with torch.no_grad():  # the choice of codes is not differentiable
            indices = top_codes(x_scaled, self.W_dec, self.k, self.encoder_dtype)
        values = self.code_norms[indices]
        y_hat = topk_decode(indices, values, self.W_dec) + self.b_dec
        active = values.detach() > 0
        fired = torch.zeros(self.d_latent, dtype=torch.bool, device=indices.device)
        fired[indices[active]] = True
        return TrainingOutput(y_hat, fired, active.sum(1).float().mean(), values.new_zeros(()))

    @torch.no_grad()
    def revive_(self, dead: torch.Tensor, x_scaled: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """The paper's re-initialisation of unused codes to inputs, a few at a time: up to
        :data:`REVIVE_FRACTION` of the codes per step become the directions of the batch's worst-reconstructed
        rows (one row each), with the median norm of the codes in use; returns the revived codes' indices.

        Reviving every dead code at once would aim many at similar rows, which then pick several near-parallel
        copies and overshoot (k copies of one direction); a few per step lets the norms adapt in between.
        """
        limit = max(1, int(REVIVE_FRACTION * self.d_latent))
        codes = dead.nonzero().flatten()[: min(limit, x_scaled.shape[0])].to(x_scaled.device)
        if len(codes):
            rows = residual.norm(dim=1).topk(len(codes)).indices
            in_use = self.code_norms[~dead.to(self.code_norms.device)]
            norm = in_use.median() if len(in_use) else self.code_norms.new_tensor(self._initial_norm())
            self.W_dec[codes] = x_scaled[rows] / x_scaled[rows].norm(dim=1, keepdim=True).clamp_min(1e-8)
            self.code_norms[codes] = norm
        return codes

    # -- invariants -------------------------------------------------------------------------------

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Unit code directions and non-negative code norms (a negative norm would flip its direction)."""
        super().normalize_decoder_()
        if hasattr(self, "code_norms"):
            self.code_norms.clamp_(min=0.0)

    @torch.no_grad()
    def fold_scale_(self) -> None:
        """Codes are code norms, divided by ``output_scale`` like every code when the scales fold."""
        s_out = float(self.output_scale)
        super().fold_scale_()
        self.code_norms.div_(s_out)
