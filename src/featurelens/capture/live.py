"""Activations computed as they are needed: the rows a capture would store, straight from the model.

Sequences are packed from the corpus exactly as `featurelens capture` packs them and run through the model
(which stops after the last hooked layer); position 0 and special tokens are left out as a capture leaves
them out, and rows whose norm exceeds an outlier limit (attention sinks) are dropped.
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
from featurelens.models import LanguageModel

OUTLIER_MULTIPLE = 10.0


@dataclass(frozen=True)
class LiveRows:
    """The kept rows of one forward pass; every array has the same rows [n].

    ``sequences`` is the index of each row's packed sequence in the corpus stream (0, 1, ...);
    ``activations`` holds one float32 [n, width] array per hook.
    """

    tokens: np.ndarray
    positions: np.ndarray
    sequences: np.ndarray
    activations: list[np.ndarray]


def live_rows(
    lm: LanguageModel,
    hooks: Sequence[str],
    corpus: CorpusConfig,
    *,
    seq_len: int,
    n_tokens: int,
    batch_size: int = 8,
    limits: Sequence[float] | None = None,
) -> Iterator[LiveRows]:
    """Rows of ``ceil(n_tokens / seq_len)`` packed sequences, ``batch_size`` sequences per forward pass.

    ``limits`` are the per-hook norm limits above which rows are dropped; by default
    :data:`OUTLIER_MULTIPLE` x the median norm of the first forward pass, fixed from then on.
    """
    n_sequences = math.ceil(n_tokens / seq_len)
    packed = islice(pack_sequences(documents(corpus), lm.tokenizer, seq_len), n_sequences)
    special = special_token_ids(lm.tokenizer)
    first_sequence = 0
    while chunk := list(islice(packed, batch_size)):
        tokens = np.stack([sequence.tokens for sequence in chunk])
        mask = stored_positions(tokens, 1, special)
        acts = lm.capture(torch.from_numpy(tokens).long(), hooks)
        rows = [acts[hook].float().cpu()[torch.from_numpy(mask)] for hook in hooks]
        if limits is None:
            limits = [OUTLIER_MULTIPLE * float(r.norm(dim=1).median()) for r in rows]
        typical = torch.stack([r.norm(dim=1) <= limit for r, limit in zip(rows, limits, strict=True)]).all(0)
        keep = typical.numpy()
        positions = np.broadcast_to(np.arange(tokens.shape[1], dtype=np.int32), tokens.shape)
        sequences = np.broadcast_to(
            np.arange(first_sequence, first_sequence + len(chunk), dtype=np.int64)[:, None], tokens.shape
        )
        yield LiveRows(
            tokens=tokens[mask][keep].astype(np.int32),
            positions=positions[mask][keep],
            sequences=sequences[mask][keep],
            activations=[r[typical].numpy() for r in rows],
        )
        first_sequence += len(chunk)
