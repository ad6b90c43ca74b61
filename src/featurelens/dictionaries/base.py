"""The `Dictionary` interface shared by every sparse dictionary (SAEs and transcoders).

A dictionary reads activations ``x`` [n, d_in] at ``hook_in`` and predicts ``y`` [n, d_out] at ``hook_out``
(the same hook and width for an SAE) through sparse codes [n, d_latent]:

    pre   = (x * input_scale - b_dec) @ W_enc + b_enc      (``b_dec`` is subtracted only by SAEs)
    codes = activate(pre)                                   (the architecture's sparsifying non-linearity)
    y_hat = (codes @ W_dec + b_dec [+ x * input_scale @ W_skip]) / output_scale

Training runs in the scaled space; :meth:`Dictionary.fold_scale_` rewrites the weights so both scales are 1
and saved weights always expect raw activations. Decoder rows are kept at unit norm.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from featurelens.errors import FeatureLensError

if TYPE_CHECKING:
    from featurelens.paths import RemotePath


class DictionaryError(FeatureLensError):
    """A dictionary config, weight file or hyper-parameter that cannot be used."""


@dataclass
class TrainingOutput:
    """What one training forward pass yields, in the scaled space.

    ``y_hat`` [n, d_out]; ``fired`` [d_latent] bool, latents active on at least one row; ``l0`` mean
    active latents per row; ``extra_loss`` the architecture's own loss terms beyond the main
    reconstruction (a sparsity penalty, nested-prefix reconstructions; 0 for TopK).
    """

    y_hat: torch.Tensor
    fired: torch.Tensor
    l0: torch.Tensor
    extra_loss: torch.Tensor


class Dictionary(nn.Module):
    """Base class: subclasses set ``arch`` and implement :meth:`activate` and :meth:`training_forward`."""

    arch: ClassVar[str] = ""
    sparsity_coefficient: float | None = None  # the penalty weight of relu/jumprelu; None = sparse by k
    encoder_dtype: torch.dtype = torch.float32  # precision of the training-time latent selection (TopK)
    needs_gradient: ClassVar[bool] = False  # training_forward takes gradient=, the loss gradient at hook_in
    input_scale: torch.Tensor
    output_scale: torch.Tensor

    def __init__(
        self,
        d_in: int,
        d_latent: int,
        *,
        hook_in: str = "",
        hook_out: str | None = None,
        d_out: int | None = None,
        skip: bool = False,
    ) -> None:
        super().__init__()
        if d_in < 1 or d_latent < 1 or (d_out is not None and d_out < 1):
            raise DictionaryError(
                f"widths must be positive, got d_in={d_in} d_latent={d_latent} d_out={d_out}"
            )
        self.d_in = d_in
        self.d_latent = d_latent
        self.d_out = d_out if d_out is not None else d_in
        self.hook_in = hook_in
        self.hook_out = hook_out if hook_out is not None else hook_in
        self.is_transcoder = self.hook_out != self.hook_in or self.d_out != self.d_in
        self.W_enc = nn.Parameter(torch.empty(d_in, d_latent))
        self.b_enc = nn.Parameter(torch.zeros(d_latent))
        self.W_dec = nn.Parameter(torch.empty(d_latent, self.d_out))
        self.b_dec = nn.Parameter(torch.zeros(self.d_out))
        self.W_skip = nn.Parameter(torch.zeros(d_in, self.d_out)) if skip else None
        self.register_buffer("input_scale", torch.tensor(1.0))
        self.register_buffer("output_scale", torch.tensor(1.0))
        self.reset_parameters(torch.Generator().manual_seed(0))

    # -- construction -----------------------------------------------------------------------------

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        """Random unit-norm decoder rows; encoder = decoder transpose (only possible when d_in == d_out)."""
        self.W_dec.copy_(torch.randn(self.d_latent, self.d_out, generator=generator))
        self.normalize_decoder_()
        if self.is_transcoder:
            self.W_enc.copy_(torch.randn(self.d_in, self.d_latent, generator=generator) / self.d_in**0.5)
        else:
            self.W_enc.copy_(self.W_dec.T)
        self.b_enc.zero_()
        self.b_dec.zero_()

    @classmethod
    def check_training_fits(
        cls, d_in: int, d_latent: int, d_out: int, batch_size: int, device: torch.device
    ) -> None:
        """Raise `DictionaryError` before anything is allocated if training this size cannot fit on
        ``device`` (architectures whose size a user can easily overshoot override; default: no check)."""

    def config(self) -> dict[str, Any]:
        """JSON-ready constructor arguments; subclasses add their hyper-parameters."""
        return {
            "arch": self.arch,
            "d_in": self.d_in,
            "d_latent": self.d_latent,
            "d_out": self.d_out,
            "hook_in": self.hook_in,
            "hook_out": self.hook_out,
            "skip": self.W_skip is not None,
        }

    # -- the interface ----------------------------------------------------------------------------

    def centred(self, x_scaled: torch.Tensor) -> torch.Tensor:
        """What the encoder multiplies: scaled inputs [n, d_in], less the decoder bias for an SAE."""
        return x_scaled if self.is_transcoder else x_scaled - self.b_dec

    def pre_activation(self, x_scaled: torch.Tensor, latents: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder pre-activations [n, d_latent] from scaled inputs [n, d_in] (only ``latents`` if given)."""
        if latents is None:
            return self.centred(x_scaled) @ self.W_enc + self.b_enc
        return self.centred(x_scaled) @ self.W_enc[:, latents] + self.b_enc[latents]

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """Inference non-linearity: pre-activations [n, d_latent] -> codes [n, d_latent]."""
        raise NotImplementedError

    def training_forward(self, x_scaled: torch.Tensor, y_scaled: torch.Tensor) -> TrainingOutput:
        """One training pass on scaled inputs [n, d_in] with scaled targets [n, d_out] (x for an SAE)."""
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Sparse codes [n, d_latent] of raw activations x [n, d_in]."""
        self._check_width(x, self.d_in)
        return self.activate(self.pre_activation(x * self.input_scale))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Reconstruction [n, d_out] from codes [n, d_latent], without the skip connection."""
        return (codes @ self.W_dec + self.b_dec) / self.output_scale

    def skip_term(self, x_scaled: torch.Tensor) -> torch.Tensor | float:
        """The linear skip path [n, d_out] in the scaled space (0 without a skip connection)."""
        return x_scaled @ self.W_skip if self.W_skip is not None else 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Prediction [n, d_out] of the output hook's activations from raw inputs x [n, d_in]."""
        return self.predict(x, self.encode(x))

    def predict(self, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """`forward` from raw inputs x [n, d_in] whose codes [n, d_latent] are already known."""
        return self.decode(codes) + self.skip_term(x * self.input_scale) / self.output_scale

    def _check_width(self, x: torch.Tensor, width: int) -> None:
        if x.ndim != 2 or x.shape[1] != width:
            raise DictionaryError(
                f"expected activations [n, {width}] for {self.hook_in!r}, got {list(x.shape)}"
            )

    # -- invariants -------------------------------------------------------------------------------

    def normalize_decoder_(self) -> None:
        """Rescale decoder rows to unit norm."""
        normalize_rows_(self.W_dec)

    def remove_parallel_decoder_grad_(self) -> None:
        """Drop the gradient component along each decoder row, so a step keeps rows near unit norm."""
        remove_parallel_grad_(self.W_dec)

    @torch.no_grad()
    def set_scales_(self, input_scale: float, output_scale: float) -> None:
        """Set the normalisation scalars (an SAE reads and writes one hook, so they must be equal)."""
        if not self.is_transcoder and input_scale != output_scale:
            raise DictionaryError(f"an SAE needs equal scales, got {input_scale} and {output_scale}")
        self.input_scale.fill_(input_scale)
        self.output_scale.fill_(output_scale)

    def revive_(self, dead: torch.Tensor, x_scaled: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """Re-initialise latents flagged ``dead`` [d_latent] bool from a batch: scaled inputs [n, d_in] and
        the reconstruction residual [n, d_out]; returns the indices revived (none: most families rely on
        AuxK instead, which the trainer applies to dead latents)."""
        return dead.new_zeros(0, dtype=torch.long)

    def scale_thresholds_(self, factor: float) -> None:
        """Multiply any pre-activation threshold by ``factor`` (architectures with thresholds override)."""

    @torch.no_grad()
    def fold_scale_(self) -> None:
        """Rewrite weights so input_scale = output_scale = 1 with identical outputs on raw inputs.

        Codes are divided by ``output_scale``, which leaves the decoder rows at unit norm and every
        TopK selection unchanged.
        """
        s_in, s_out = float(self.input_scale), float(self.output_scale)
        self.W_enc.mul_(s_in / s_out)
        self.b_enc.div_(s_out)
        self.b_dec.div_(s_out)
        if self.W_skip is not None:
            self.W_skip.mul_(s_in / s_out)
        self.scale_thresholds_(1.0 / s_out)
        self.input_scale.fill_(1.0)
        self.output_scale.fill_(1.0)

    # -- files ------------------------------------------------------------------------------------

    def save(self, path: str | Path, format: str = "featurelens") -> Path | RemotePath:
        """Write this dictionary under folder ``path`` (scales folded in); returns the folder written.

        ``format``: ``"featurelens"`` (``weights.safetensors`` + ``config.json`` in ``path``), ``"saelens"``
        (``cfg.json`` + ``sae_weights.safetensors`` in ``path``, loadable by SAELens' ``SAE.load_from_disk``)
        or ``"sparsify"`` (TopK only: ``path/<module>/cfg.json`` + ``sae.safetensors``, e.g. ``layers.6``).
        Architectures a format cannot express raise `DictionaryError`. ``path`` may be an fsspec URL: the
        folder is written locally, then uploaded with its config last.
        """
        from featurelens.dictionaries.formats import save_dictionary_folder

        folded = copy.deepcopy(self).cpu()
        folded.fold_scale_()
        return save_dictionary_folder(folded, path, format)

    @staticmethod
    def load(path: str | Path) -> Dictionary:
        """Load a featurelens, SAELens or sparsify dictionary folder (or a file in one), local or at a URL.

        The format is detected from the files the folder holds; only safetensors and JSON are read, and
        pickle-based files (``.pt``, ``.pth``, ``.bin``, ``.ckpt``) raise `DictionaryError` (from a URL
        they are not even downloaded).
        """
        from featurelens.dictionaries.formats import load_dictionary_folder

        return load_dictionary_folder(path)


@torch.no_grad()
def normalize_rows_(W_dec: torch.Tensor) -> None:
    """Rescale the rows of a decoder [d_latent, d_out] to unit norm, in place."""
    W_dec.div_(W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))


@torch.no_grad()
def remove_parallel_grad_(W_dec: torch.Tensor) -> None:
    """Drop the component of ``W_dec.grad`` [d_latent, d_out] along each row of the decoder, in place."""
    if W_dec.grad is not None:  # row dot products and an in-place update: no [d_latent, d_out] temporaries
        parallel = torch.linalg.vecdot(W_dec.grad, W_dec).unsqueeze(1)
        W_dec.grad.addcmul_(parallel, W_dec, value=-1)
