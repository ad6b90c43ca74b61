"""Tokenize documents and pack them into fixed-length sequences, remembering where each token came from."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np

from featurelens.errors import CorpusError

TOKENIZE_BATCH_DOCS = 64


@dataclass(frozen=True)
class PackedSequence:
    """One packed row: ``tokens`` and ``docs`` (index of the source document), both int arrays [seq_len]."""

    tokens: np.ndarray
    docs: np.ndarray


def separator_id(tokenizer: Any) -> int | None:
    """The token put in front of every document: BOS if the tokenizer has one, else EOS, else none."""
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    return None


def _tokenized(documents: Iterable[str], tokenizer: Any) -> Iterator[list[int]]:
    docs = iter(documents)
    while batch := list(islice(docs, TOKENIZE_BATCH_DOCS)):
        yield from tokenizer(batch, add_special_tokens=False)["input_ids"]


def pack_sequences(documents: Iterable[str], tokenizer: Any, seq_len: int) -> Iterator[PackedSequence]:
    """Concatenate ``separator + document`` token runs and cut them into rows of ``seq_len`` tokens.

    Documents cross row boundaries (no padding, nothing dropped but the incomplete last row).
    Raises :class:`CorpusError` when the documents hold no tokens at all.
    """
    if seq_len < 2:
        raise CorpusError(f"sequence length must be at least 2 tokens, got {seq_len}")
    separator = separator_id(tokenizer)
    tokens: list[int] = []
    docs: list[int] = []
    any_tokens = False
    for doc_index, ids in enumerate(_tokenized(documents, tokenizer)):
        if not ids:
            continue
        any_tokens = True
        run = [separator, *ids] if separator is not None else ids
        tokens.extend(run)
        docs.extend([doc_index] * len(run))
        while len(tokens) >= seq_len:
            yield PackedSequence(np.asarray(tokens[:seq_len], np.int64), np.asarray(docs[:seq_len], np.int64))
            del tokens[:seq_len], docs[:seq_len]
    if not any_tokens:
        raise CorpusError("the corpus yielded no text to tokenize; point --corpus at non-empty files")
