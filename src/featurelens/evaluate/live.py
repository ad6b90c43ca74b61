"""Evaluate a dictionary inside its model: reconstruction on held-out text, the spliced next-token loss."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
import torch

from featurelens.capture.run import special_token_ids, stored_positions
from featurelens.corpus import CorpusConfig, documents, pack_sequences
from featurelens.dictionaries.base import Dictionary, DictionaryError
from featurelens.errors import CorpusError
from featurelens.evaluate.reconstruction import ReconstructionAccumulator, ReconstructionMetrics
from featurelens.evaluate.spliced import SplicedLoss, SplicedRun
from featurelens.models import LanguageModel


@dataclass(frozen=True)
class Evaluation:
    """Reconstruction metrics and, when measured, the model's loss with the dictionary spliced in."""

    reconstruction: ReconstructionMetrics
    loss: SplicedLoss | None

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-ready metrics."""
        flat = self.reconstruction.to_dict()
        if self.loss is not None:
            flat.update(
                ce_clean=self.loss.clean,
                ce_spliced=self.loss.spliced,
                ce_zero_ablated=self.loss.zero_ablated,
                ce_loss_recovered=self.loss.ce_loss_recovered,
                kl_to_clean=self.loss.kl_to_clean,
            )
        return flat


def heldout_sequences(
    corpus: CorpusConfig, tokenizer: Any, seq_len: int, skip_sequences: int, n_tokens: int
) -> torch.Tensor:
    """Token ids [n, seq_len] of the packed sequences after the first ``skip_sequences`` (trained on)."""
    n_sequences = -(-n_tokens // seq_len)
    packed = islice(pack_sequences(documents(corpus), tokenizer, seq_len), skip_sequences, None)
    rows = [sequence.tokens for sequence in islice(packed, n_sequences)]
    if not rows:
        raise CorpusError(
            f"no held-out text: the corpus has no packed sequences after the {skip_sequences} used for "
            "training; capture fewer tokens or evaluate on another --corpus"
        )
    return torch.from_numpy(np.stack(rows)).long()


@torch.no_grad()
def evaluate_in_model(
    dictionary: Dictionary,
    lm: LanguageModel,
    sequences: torch.Tensor,
    *,
    batch_size: int = 8,
    skip_positions: int = 1,
    keep_special: bool = False,
    max_norm: dict[str, float] | None = None,
    with_loss: bool = True,
    on_tokens: Callable[[int], None] | None = None,
) -> Evaluation:
    """Run ``sequences`` [n, seq_len] through ``lm``; reconstruct ``dictionary.hook_out`` from its input hook.

    Positions a store would leave out (the first ``skip_positions``, special tokens unless
    ``keep_special``, and rows whose norm at a hook exceeds ``max_norm[hook]``, as training left them out)
    are neither measured nor replaced. The spliced loss replaces the output hook's activations by the
    dictionary's prediction from the clean input hook (which the replacement, being downstream, cannot
    change).
    """
    hooks = list(dict.fromkeys([dictionary.hook_in, dictionary.hook_out]))
    probe = lm.capture(torch.ones(1, 2, dtype=torch.long), hooks)  # unknown hooks fail here, in one line
    widths = {name: tensor.shape[-1] for name, tensor in probe.items()}
    for hook, width in ((dictionary.hook_in, dictionary.d_in), (dictionary.hook_out, dictionary.d_out)):
        if widths[hook] != width:
            raise DictionaryError(
                f"the dictionary expects width {width} at {hook!r}; the model has {widths[hook]}"
            )
    dictionary = dictionary.to(lm.device).eval()
    special = None if keep_special else special_token_ids(lm.tokenizer)
    accumulator = ReconstructionAccumulator(dictionary.d_latent)
    losses: list[tuple[int, SplicedLoss]] = []
    for first in range(0, len(sequences), batch_size):
        ids = sequences[first : first + batch_size].to(lm.device)
        mask = torch.from_numpy(stored_positions(ids.cpu().numpy(), skip_positions, special)).to(lm.device)
        # with the loss, one clean pass records the hooks and serves the spliced passes; without, the
        # forward stops at the last hook
        run = SplicedRun(lm, dictionary.hook_out, ids, record=hooks) if with_loss else None
        acts = run.acts if run is not None else lm.capture(ids, hooks)
        for hook, limit in (max_norm or {}).items():
            mask &= acts[hook].float().norm(dim=-1) <= limit
        x, y = acts[dictionary.hook_in][mask].float(), acts[dictionary.hook_out][mask].float()
        codes = dictionary.encode(x)
        y_hat = dictionary.predict(x, codes)
        accumulator.update(y, y_hat, codes)
        if run is not None:
            predicted = y_hat.to(acts[dictionary.hook_out].dtype)
            losses.append((len(ids), run.loss(_returning(predicted), mask)))
        if on_tokens is not None:
            on_tokens(int(ids.numel()))
    return Evaluation(accumulator.result(), _mean_loss(losses) if losses else None)


def _returning(rows: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """A "reconstruction" that ignores its input and returns precomputed rows [n, width]."""
    return lambda _acts: rows


def _mean_loss(parts: list[tuple[int, SplicedLoss]]) -> SplicedLoss:
    total = sum(weight for weight, _ in parts)

    def mean(field: str) -> float:
        return sum(weight * getattr(loss, field) for weight, loss in parts) / total

    return SplicedLoss(mean("clean"), mean("spliced"), mean("zero_ablated"), mean("kl_to_clean"))
