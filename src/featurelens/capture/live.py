"""Activations computed as they are needed: the rows a capture would store, straight from the model.

Sequences are packed from the corpus exactly as `featurelens capture` packs them and run through the model
(which stops after the last hooked layer); by default position 0 and special tokens are left out as a capture
leaves them out, and rows whose norm exceeds an outlier limit (attention sinks) are dropped. The neuron report
keeps every row (``skip_positions=0, keep_special=True, drop_outliers=False``): it looks for the sinks.
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

    ``sequences`` is the index of each row's packed sequence in the corpus stream (0, 1, ...); ``docs``
    the corpus document each token came from; ``previous`` the token before it in its sequence (-1 at
    position 0); ``activations`` holds one float32 [n, width] array per hook.
    """

    tokens: np.ndarray
    positions: np.ndarray
    sequences: np.ndarray
    activations: list[np.ndarray]
    docs: np.ndarray
    previous: np.ndarray


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
) -> Iterator[LiveRows]:
    """Rows of ``ceil(n_tokens / seq_len)`` packed sequences, ``batch_size`` sequences per forward pass.

    ``limits`` are the per-hook norm limits above which rows are dropped; by default
    :data:`OUTLIER_MULTIPLE` x the median norm of the first forward pass, fixed from then on. With
    ``drop_outliers=False`` no row is dropped for its norm. The first ``skip_sequences`` packed sequences
    are passed over without running the model (a resumed pass).
    """
    n_sequences = math.ceil(n_tokens / seq_len)
    packed = islice(pack_sequences(documents(corpus), lm.tokenizer, seq_len), skip_sequences, n_sequences)
    special = None if keep_special else special_token_ids(lm.tokenizer)
    first_sequence = skip_sequences
    while chunk := list(islice(packed, batch_size)):
        tokens = np.stack([sequence.tokens for sequence in chunk])
        mask = stored_positions(tokens, skip_positions, special)
        acts = lm.capture(torch.from_numpy(tokens).long(), hooks)
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
            docs=docs[mask][keep],
            previous=previous[mask][keep].astype(np.int32),
        )
        first_sequence += len(chunk)
