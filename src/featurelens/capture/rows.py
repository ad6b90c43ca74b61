"""Aligned rows of several hooks with their token context, read from a store or computed live.

The neuron report and the probes read activations the same way: chunks of whole sequences, every hook's
activations for the same rows, and per row its token, the token before it, its position, its corpus
document and a running row id. Nothing here drops rows for their norm: the caller decides.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from featurelens.capture.live import live_rows
from featurelens.capture.store import ActivationStore
from featurelens.corpus import CorpusConfig
from featurelens.models import LanguageModel


@dataclass(frozen=True)
class Rows:
    """One chunk: ``acts`` maps hook -> float32 [n, width]; the rest are [n] arrays.

    ``previous`` is the token before each row in its sequence, or -1 where that token is not known (the
    first stored row of a sequence whose earlier positions were not kept); ``rows`` numbers the rows of the
    whole stream 0, 1, ... (for a store: the store's own row index).
    """

    acts: dict[str, torch.Tensor]
    tokens: np.ndarray
    previous: np.ndarray
    positions: np.ndarray
    docs: np.ndarray
    rows: np.ndarray


def sequence_ids(positions: np.ndarray) -> np.ndarray:
    """Sequence index [n] of stored rows: a new sequence starts wherever the position does not increase."""
    starts = np.ones(len(positions), dtype=bool)
    starts[1:] = positions[1:] <= positions[:-1]
    return np.cumsum(starts) - 1


def previous_tokens(tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The token before each stored row [n] when the store holds it (the row right before, one position
    earlier), else -1."""
    previous = np.full(len(tokens), -1, dtype=np.int32)
    if len(tokens) > 1:
        adjacent = positions[1:] == positions[:-1] + 1
        previous[1:] = np.where(adjacent, tokens[:-1], -1)
    return previous


def store_rows(
    store: ActivationStore, hooks: Sequence[str], n_tokens: int, chunk_tokens: int, first_row: int = 0
) -> Iterator[Rows]:
    """The first ``n_tokens`` rows of ``store`` at ``hooks``, in chunks of whole sequences of about
    ``chunk_tokens`` rows, starting at ``first_row`` (a chunk boundary of an earlier pass, to resume)."""
    arrays = {hook: store.activations(hook) for hook in hooks}
    n = min(n_tokens, store.n_tokens)
    positions = store.positions[:n]
    tokens = store.tokens[:n]
    docs = store.docs[:n]
    previous = previous_tokens(tokens, positions)
    starts = np.flatnonzero(np.diff(sequence_ids(positions), prepend=-1))
    first = first_row
    while first < n:
        later = starts[starts >= first + chunk_tokens]
        last = int(later[0]) if len(later) else n
        part = slice(first, last)
        yield Rows(
            {h: torch.from_numpy(np.ascontiguousarray(a[part], dtype=np.float32)) for h, a in arrays.items()},
            tokens[part],
            previous[part],
            positions[part],
            docs[part],
            np.arange(first, last),
        )
        first = last


def live_row_chunks(
    lm: LanguageModel,
    hooks: Sequence[str],
    corpus: CorpusConfig,
    *,
    seq_len: int,
    n_tokens: int,
    batch_size: int,
    skip_positions: int = 0,
    keep_special: bool = True,
    skip_sequences: int = 0,
    first_row: int = 0,
) -> Iterator[Rows]:
    """Every kept row of ``n_tokens`` tokens of ``corpus`` run through ``lm``, one chunk per forward pass
    (no row is dropped for its norm). To resume, ``skip_sequences`` packed sequences are passed over
    without running the model and rows are numbered from ``first_row``."""
    first = first_row
    for part in live_rows(
        lm,
        hooks,
        corpus,
        seq_len=seq_len,
        n_tokens=n_tokens,
        batch_size=batch_size,
        skip_positions=skip_positions,
        keep_special=keep_special,
        drop_outliers=False,
        skip_sequences=skip_sequences,
    ):
        n = len(part.tokens)
        yield Rows(
            {hook: torch.from_numpy(a) for hook, a in zip(hooks, part.activations, strict=True)},
            part.tokens,
            part.previous,
            part.positions.astype(np.int32),
            part.docs.astype(np.int32),
            np.arange(first, first + n),
        )
        first += n
