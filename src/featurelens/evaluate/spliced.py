"""The model's next-token loss with a reconstruction spliced in at a hook point (CE loss recovered, KL)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from featurelens.models import LanguageModel
from featurelens.models.tracing import run_with_replacement


@dataclass(frozen=True)
class SplicedLoss:
    """Mean next-token cross-entropy (nats/token): clean, spliced, zero-ablated; and KL(clean || spliced)."""

    clean: float
    spliced: float
    zero_ablated: float
    kl_to_clean: float

    @property
    def ce_loss_recovered(self) -> float:
        """1 when splicing costs nothing, 0 when it is as bad as zeroing the activation."""
        gap = self.zero_ablated - self.clean
        return (self.zero_ablated - self.spliced) / gap if gap else float("nan")


def next_token_loss(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of predicting token t+1 from logits [batch, seq, vocab] at t: [batch, seq - 1]."""
    predictions = logits[:, :-1].float()
    return F.cross_entropy(predictions.transpose(1, 2), input_ids[:, 1:], reduction="none")


def kl_divergence(reference_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(reference || other) per position, from logits [batch, seq, vocab]: [batch, seq]."""
    reference = F.log_softmax(reference_logits.float(), dim=-1)
    other = F.log_softmax(logits.float(), dim=-1)
    return (reference.exp() * (reference - other)).sum(-1)


def spliced_loss(
    lm: LanguageModel,
    hook: str,
    reconstruct: Callable[[torch.Tensor], torch.Tensor],
    input_ids: torch.Tensor,
    splice_mask: torch.Tensor | None = None,
) -> SplicedLoss:
    """Loss with ``reconstruct`` (acts [n, width] -> [n, width]) spliced in at ``hook``; ids [batch, seq].

    Only positions where ``splice_mask`` [batch, seq] is true are replaced (e.g. not the attention-sink
    position 0 that the store leaves out); the rest keep their clean activations.
    """
    point = lm.hook_point(hook)
    input_ids = input_ids.to(lm.device)
    mask = (splice_mask if splice_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)).to(
        lm.device
    )

    def splice(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        def edit(acts: torch.Tensor) -> torch.Tensor:
            edited = acts.clone()
            edited[mask] = fn(acts[mask]).to(acts.dtype)
            return edited

        return edit

    with torch.inference_mode():
        clean = lm.model(input_ids=input_ids).logits
    spliced = run_with_replacement(lm.model, point, splice(reconstruct), input_ids)
    zeroed = run_with_replacement(lm.model, point, splice(torch.zeros_like), input_ids)
    return SplicedLoss(
        clean=next_token_loss(clean, input_ids).mean().item(),
        spliced=next_token_loss(spliced, input_ids).mean().item(),
        zero_ablated=next_token_loss(zeroed, input_ids).mean().item(),
        kl_to_clean=kl_divergence(clean, spliced).mean().item(),
    )
