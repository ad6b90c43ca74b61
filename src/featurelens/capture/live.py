"""Activations computed as they are needed: the rows a capture would store, straight from the model.

Sequences are packed from the corpus exactly as `featurelens capture` packs them and run through the model
(which stops after the last hooked layer); by default position 0 and special tokens are left out as a capture
leaves them out, and rows whose norm exceeds an outlier limit (attention sinks) are dropped. The neuron report
keeps every row (``skip_positions=0, keep_special=True, drop_outliers=False``): it looks for the sinks.
Gradient-aware training also needs, per row, the gradient of the model's next-token loss with respect to
the hooked activation: with ``gradient_hook`` the same rows come from a full forward and backward pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice

import numpy as np
import torch

from featurelens.capture.run import special_token_ids, stored_positions
from featurelens.corpus import CorpusConfig, documents, pack_sequences
from featurelens.errors import HookError
from featurelens.models import LanguageModel
from featurelens.models.tracing import recording, replacing

OUTLIER_MULTIPLE = 10.0


@dataclass(frozen=True)
class LiveRows:
    """The kept rows of one forward pass; every array has the same rows [n].

    ``sequences`` is the index of each row's packed sequence in the corpus stream (0, 1, ...); ``docs``
    the corpus document each token came from; ``previous`` the token before it in its sequence (-1 at
    position 0); ``activations`` holds one float32 [n, width] array per hook; ``gradients`` float32
    [n, width] the loss gradient at the gradient hook, when one was asked for.
    """

    tokens: np.ndarray
    positions: np.ndarray
    sequences: np.ndarray
    activations: list[np.ndarray]
    docs: np.ndarray
    previous: np.ndarray
    gradients: np.ndarray | None = None


def loss_gradient(
    lm: LanguageModel, input_ids: torch.Tensor, hooks: Sequence[str], gradient_hook: str
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Activations [batch, seq, width] at ``hooks`` and the gradient [batch, seq, width] of the summed
    next-token cross-entropy of ``input_ids`` [batch, seq] with respect to ``gradient_hook``'s tensor.

    The sum (the mean CE times the number of predictions) gives every row the gradient of its own
    sequence's loss, whatever the number of sequences per pass. The hooked tensor enters the rest of the
    forward pass as a leaf, so the backward pass stops there and no weight gradient is computed.
    """
    from featurelens.evaluate.spliced import next_token_loss  # evaluate imports this module

    leaf: list[torch.Tensor] = []

    def as_leaf(acts: torch.Tensor) -> torch.Tensor:
        leaf.append(acts.detach().requires_grad_(True))
        return leaf[-1]

    ids = input_ids.to(lm.device)
    others = [lm.hook_point(hook) for hook in dict.fromkeys(hooks) if hook != gradient_hook]
    with torch.enable_grad(), replacing(lm.hook_point(gradient_hook), as_leaf), recording(others) as kept:
        logits = getattr(lm.model(input_ids=ids), "logits", None)
        if logits is None:
            raise HookError(f"the loss gradient needs a model with a language-model head; {lm.name} has none")
        if len(leaf) != 1:
            raise HookError(f"hook point {gradient_hook} fired {len(leaf)} times in one forward pass")
        (gradient,) = torch.autograd.grad(next_token_loss(logits, ids).sum(), leaf)
    acts = {hook: leaf[0].detach() if hook == gradient_hook else kept[hook].detach() for hook in hooks}
    return acts, gradient


def live_rows(
    lm: LanguageModel,
    hooks: Sequence[str],
    corpus: CorpusConfig,
    *,
    seq_len: int,
    n_tokens: int,
    batch_size: int = 8,
    limits: Sequence[float] | None = None,
    skip_positions: int = 1,
    keep_special: bool = False,
    drop_outliers: bool = True,
    skip_sequences: int = 0,
    gradient_hook: str | None = None,
) -> Iterator[LiveRows]:
    """Rows of ``ceil(n_tokens / seq_len)`` packed sequences, ``batch_size`` sequences per forward pass.

    ``limits`` are the per-hook norm limits above which rows are dropped; by default
    :data:`OUTLIER_MULTIPLE` x the median norm of the first forward pass, fixed from then on. With
    ``drop_outliers=False`` no row is dropped for its norm. The first ``skip_sequences`` packed sequences
    are passed over without running the model (a resumed pass). With ``gradient_hook`` each pass runs the
    whole model forward and backward (:func:`loss_gradient`) and the rows carry that hook's loss gradient.
    """
    n_sequences = math.ceil(n_tokens / seq_len)
    packed = islice(pack_sequences(documents(corpus), lm.tokenizer, seq_len), skip_sequences, n_sequences)
    special = None if keep_special else special_token_ids(lm.tokenizer)
    first_sequence = skip_sequences
    while chunk := list(islice(packed, batch_size)):
        tokens = np.stack([sequence.tokens for sequence in chunk])
        mask = stored_positions(tokens, skip_positions, special)
        ids = torch.from_numpy(tokens).long()
        gradient = None
        if gradient_hook is None:
            acts = lm.capture(ids, hooks)
        else:
            acts, gradient = loss_gradient(lm, ids, hooks, gradient_hook)
        if mask.all():  # every row kept (the neuron report): no masked copy of every hook's activations
            rows = [acts[hook].float().cpu().reshape(-1, acts[hook].shape[-1]) for hook in hooks]
        else:
            rows = [acts[hook].float().cpu()[torch.from_numpy(mask)] for hook in hooks]
        del acts
        if not drop_outliers:
            typical = torch.ones(len(rows[0]), dtype=torch.bool)
        else:
            if limits is None:
                limits = [OUTLIER_MULTIPLE * float(r.norm(dim=1).median()) for r in rows]
            norms_ok = [r.norm(dim=1) <= limit for r, limit in zip(rows, limits, strict=True)]
            typical = torch.stack(norms_ok).all(0)
        keep = typical.numpy()
        docs = np.stack([sequence.docs for sequence in chunk])
        previous = np.concatenate([np.full((len(chunk), 1), -1), tokens[:, :-1]], axis=1)
        positions = np.broadcast_to(np.arange(tokens.shape[1], dtype=np.int32), tokens.shape)
        sequences = np.broadcast_to(
            np.arange(first_sequence, first_sequence + len(chunk), dtype=np.int64)[:, None], tokens.shape
        )
        yield LiveRows(
            tokens=tokens[mask][keep].astype(np.int32),
            positions=positions[mask][keep],
            sequences=sequences[mask][keep],
            activations=[(r if keep.all() else r[typical]).numpy() for r in rows],
            gradients=None
            if gradient is None
            else gradient.float().cpu()[torch.from_numpy(mask)][typical].numpy(),
            docs=docs[mask][keep],
            previous=previous[mask][keep].astype(np.int32),
        )
        first_sequence += len(chunk)
