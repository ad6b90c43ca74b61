"""The codebook paper's second stage (optional): fine-tune the model with its codebook spliced in.

Tamkin, Taufeeque & Goodman (2023) train codebook features inside the network: the layer's output is
replaced by the codebook's (the sum of the k codes nearest by cosine) and the model learns to work from
it, with the language-model loss. The choice of codes has no gradient, so the model's layers below the
codebook get the gradient of its output as if the codebook were the identity (straight-through), the
codes get it through their sum, and a reconstruction term (the trainer's loss, on the codes only) keeps
them near the activations they replace.

Position 0 keeps its clean activation, as in `featurelens evaluate` and the activation store: its
attention-sink norm dwarfs every other row's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from featurelens.dictionaries.base import DictionaryError
from featurelens.dictionaries.codebook import CodebookDictionary
from featurelens.evaluate.spliced import next_token_loss
from featurelens.models import LanguageModel
from featurelens.models.tracing import HookError, replacing


@dataclass(frozen=True)
class FinetuneStep:
    """One step's losses: next-token cross-entropy (nats/token) with the codebook spliced in, and the
    codebook's reconstruction loss (mean squared error per dimension, in its normalised space)."""

    lm_loss: float
    reconstruction_loss: float


def finetune_with_codebook(
    lm: LanguageModel,
    codebook: CodebookDictionary,
    batches: Iterable[torch.Tensor],
    *,
    lr: float = 1e-4,
    reconstruction_coefficient: float = 1.0,
    train_model: bool = True,
) -> list[FinetuneStep]:
    """Fine-tune ``lm`` (in place; only the codebook when ``train_model`` is false) and ``codebook`` on
    token-id batches [batch, seq], one Adam step each, with the codebook spliced in at its hook.

    Loss = next-token cross-entropy + ``reconstruction_coefficient`` * the codebook's reconstruction
    loss. The codebook stays a codebook (unit directions, non-negative norms). Returns each step's losses.
    """
    if lr <= 0 or reconstruction_coefficient < 0:
        raise DictionaryError(
            f"lr must be > 0 and reconstruction_coefficient >= 0, got {lr} and {reconstruction_coefficient}"
        )
    point = lm.hook_point(codebook.hook_in)
    codebook.to(lm.device)
    lm.model.requires_grad_(train_model)
    parameters = [codebook.W_dec, codebook.code_norms]
    if train_model:
        parameters += list(lm.model.parameters())
    optimizer = torch.optim.Adam(parameters, lr=lr)
    reconstruction: list[torch.Tensor] = []

    def splice(acts: torch.Tensor) -> torch.Tensor:
        x = acts[:, 1:].reshape(-1, acts.shape[-1]).float()
        x_scaled = x * codebook.input_scale
        y_hat = codebook.training_forward(x_scaled, x_scaled).y_hat
        reconstruction.append((y_hat - x_scaled.detach()).square().mean())
        # Forward: the codebook's output. Backward: identity to the layers below, the sum to the codes.
        replaced = y_hat / codebook.output_scale + (x - x.detach())
        return torch.cat([acts[:, :1], replaced.reshape(acts[:, 1:].shape).to(acts.dtype)], dim=1)

    steps = []
    with torch.enable_grad():
        for input_ids in batches:
            input_ids = input_ids.to(lm.device)
            reconstruction.clear()
            with replacing(point, splice) as fired:
                logits = lm.model(input_ids=input_ids).logits
            if not fired:
                raise HookError(f"hook point {point.name} did not fire during the forward pass")
            lm_loss = next_token_loss(logits, input_ids).mean()
            loss = lm_loss + reconstruction_coefficient * reconstruction[0]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            codebook.remove_parallel_decoder_grad_()
            optimizer.step()
            codebook.normalize_decoder_()
            steps.append(FinetuneStep(float(lm_loss.detach()), float(reconstruction[0].detach())))
    return steps
