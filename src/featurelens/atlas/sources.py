"""Where the atlas reads activations: a capture store, or the model run live on a corpus.

Both yield :class:`RowChunk` s of whole sequences (about ``chunk_tokens`` rows each) holding only the rows a
dictionary is trained on: no position 0, no special tokens, no norm outliers (attention sinks).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from featurelens.capture.live import live_rows
from featurelens.capture.rows import sequence_ids
from featurelens.capture.store import ActivationStore
from featurelens.corpus import CorpusConfig
from featurelens.models import LanguageModel


@dataclass(frozen=True)
class RowChunk:
    """Activations float32 [n, width] with each row's token id, position and sequence id [n]."""

    acts: torch.Tensor
    tokens: np.ndarray
    positions: np.ndarray
    sequences: np.ndarray


def store_chunks(
    store: ActivationStore, hook: str, n_tokens: int, chunk_tokens: int, max_norm: float
) -> Iterator[RowChunk]:
    """The first ``n_tokens`` rows of ``store`` at ``hook``, rows with norm > ``max_norm`` left out."""
    n = min(n_tokens, store.n_tokens)
    positions = store.positions[:n]
    sequences = sequence_ids(positions)
    tokens = store.tokens[:n]
    typical = store.norms(hook)[:n] <= max_norm
    acts = store.activations(hook)
    starts = np.flatnonzero(np.diff(sequences, prepend=-1))
    first = 0
    while first < n:
        later = starts[starts >= first + chunk_tokens]
        last = int(later[0]) if len(later) else n
        keep = typical[first:last]
        yield RowChunk(
            torch.from_numpy(np.ascontiguousarray(acts[first:last][keep], dtype=np.float32)),
            tokens[first:last][keep],
            positions[first:last][keep],
            sequences[first:last][keep],
        )
        first = last


def live_chunks(
    lm: LanguageModel,
    hook: str,
    corpus: CorpusConfig,
    *,
    seq_len: int,
    n_tokens: int,
    chunk_tokens: int,
    batch_size: int,
    max_norm: float | None,
) -> Iterator[RowChunk]:
    """Rows of ``n_tokens`` tokens of ``corpus`` run through ``lm`` (see :func:`live_rows`)."""
    pending: list[RowChunk] = []
    limits = None if max_norm is None else [max_norm]
    for rows in live_rows(
        lm, [hook], corpus, seq_len=seq_len, n_tokens=n_tokens, batch_size=batch_size, limits=limits
    ):
        pending.append(
            RowChunk(torch.from_numpy(rows.activations[0]), rows.tokens, rows.positions, rows.sequences)
        )
        if sum(len(part.tokens) for part in pending) >= chunk_tokens:
            yield _joined(pending)
            pending = []
    if pending:
        yield _joined(pending)


def _joined(parts: list[RowChunk]) -> RowChunk:
    return RowChunk(
        torch.cat([p.acts for p in parts]),
        np.concatenate([p.tokens for p in parts]),
        np.concatenate([p.positions for p in parts]),
        np.concatenate([p.sequences for p in parts]),
    )
