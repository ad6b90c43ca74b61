"""Gradient-aware TopK SAE (the g-SAE of Olmo et al. 2024, "Features that Make a Difference").

A TopK SAE keeps the k largest activations z = relu(pre) [n, d_latent] of a row, so a latent that the model
reads strongly but that fires weakly loses to a loud one the model ignores. The g-SAE keeps the k largest of

    score_j = z_j + beta * z_j * |<d_j, g>|          (the paper's z + beta z * |W_dec^T grad_x L|)

where g [d_in] is the gradient of the model's next-token loss with respect to the hooked activation and
d_j the latent's unit decoder row. z_j <d_j, g> is the first-order change of the loss when the latent's
contribution z_j d_j is scaled by a multiplier m_j at m_j = 1 (dL/dm_j, "activation x gradient"), so the
score adds the latent's attribution, in nats, to its activation; ``gradient_weight`` is beta. Only the
choice of latents uses the gradient: the kept codes are the activations z_j themselves, trained like TopK.

Scale: training runs in the scaled space x_s = x * input_scale, where the loss gradient is g / input_scale;
with it z_j <d_j, g_s> is the same attribution as on raw activations. The gradient comes from the model's
loss with the clean activations in place (one backward pass per forward, see
:func:`featurelens.capture.live.live_rows`), so training must run live from the model.

At inference there is no gradient (and none is needed to read features), so :meth:`activate` is the plain
TopK on activations (our reading of the paper: the gradient only enters the training-time choice; its full
method text was not at hand, only the score above); with g = 0, or |<d_j, g>| equal for every latent, the
score is a positive multiple of z and the g-SAE selection *is* TopK.
"""

from __future__ import annotations

from typing import Any

import torch

from featurelens.dictionaries.base import DictionaryError, TrainingOutput
from featurelens.dictionaries.selection import top_k
from featurelens.dictionaries.sparse_decode import topk_decode, use_sparse_decoder
from featurelens.dictionaries.sparse_encode import picked_encode
from featurelens.dictionaries.topk import TopKDictionary, topk_output


def needs_model_error(arch: str) -> DictionaryError:
    """The one error for training a gradient-aware ``arch`` on batches that carry no loss gradient."""
    return DictionaryError(
        f"gradient-aware training needs the model: arch {arch!r} picks latents by the gradient of the "
        "model's loss, which stored activations do not hold; use --model (live training)"
    )


def latent_attribution(codes: torch.Tensor, gradient: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """dL/dm_j = z_j <d_j, g>: codes z [n, d_latent], loss gradient g [n, d], decoder rows [d_latent, d]."""
    return codes * (gradient @ W_dec.T)


def gradient_scores(
    codes: torch.Tensor, gradient: torch.Tensor, W_dec: torch.Tensor, gradient_weight: float
) -> torch.Tensor:
    """Selection scores [n, d_latent]: activation plus ``gradient_weight`` x |attribution| (z >= 0)."""
    return codes + gradient_weight * latent_attribution(codes, gradient, W_dec).abs()


class GradientTopKDictionary(TopKDictionary):
    """TopK SAE whose training picks the k latents by activation + beta x |activation x gradient|."""

    arch = "gtopk"
    needs_gradient = True

    def __init__(self, d_in: int, d_latent: int, *, k: int = 32, gradient_weight: float = 1.0, **kwargs: Any):
        super().__init__(d_in, d_latent, k=k, **kwargs)
        if self.is_transcoder:
            # The loss gradient is taken at the hook the SAE reconstructs; a transcoder writes elsewhere.
            raise DictionaryError(
                f"arch 'gtopk' reconstructs the hook it reads; got hook_in={self.hook_in!r} "
                f"hook_out={self.hook_out!r}"
            )
        if not gradient_weight >= 0:
            raise DictionaryError(f"gradient_weight must be >= 0, got {gradient_weight}")
        self.gradient_weight = gradient_weight

    def config(self) -> dict[str, Any]:
        return {**super().config(), "gradient_weight": self.gradient_weight}

    def select(self, codes: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        """Indices [n, k] of the latents with the largest :func:`gradient_scores` (scaled space)."""
        scores = gradient_scores(codes, gradient, self.W_dec.detach(), self.gradient_weight)
        return top_k(scores, self.k)[1]

    def training_forward(
        self, x_scaled: torch.Tensor, y_scaled: torch.Tensor, gradient: torch.Tensor | None = None
    ) -> TrainingOutput:
        """``gradient`` [n, d_in]: the loss gradient with respect to the scaled inputs (g / input_scale)."""
        if gradient is None:
            raise needs_model_error(self.arch)
        if gradient.shape != x_scaled.shape:
            raise DictionaryError(
                f"the loss gradient must match the inputs {list(x_scaled.shape)}, got {list(gradient.shape)}"
            )
        sparse = use_sparse_decoder(self.k, self.d_latent)  # sparse enough for sparse backward passes
        with torch.set_grad_enabled(not sparse):
            pre = self.pre_activation(x_scaled)
        with torch.no_grad():  # the choice is not differentiable; the kept activations are
            indices = self.select(pre.detach().relu(), gradient.to(pre.dtype))
        if sparse:
            picked = pre.gather(1, indices)
            values = picked_encode(self.centred(x_scaled), self.W_enc, self.b_enc, picked, indices)
        else:
            values = pre.gather(1, indices).relu()
        y_hat = topk_decode(indices, values, self.W_dec) + self.b_dec + self.skip_term(x_scaled)
        return topk_output(y_hat, indices, values, self.d_latent)
