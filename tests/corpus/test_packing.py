"""Tokenize-and-pack: exact rows and document ids for documents whose token ids are known in advance."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import numpy as np
import pytest
from transformers import PreTrainedTokenizerFast

from featurelens.corpus import pack_sequences
from featurelens.corpus.packing import TOKENIZE_BATCH_DOCS, separator_id
from featurelens.errors import CorpusError

BOS, EOS = 1, 2


def ids(tokenizer: Any, pieces: str) -> list[int]:
    """Vocabulary ids of whitespace-separated vocabulary entries, looked up directly (no encoding)."""
    vocab = tokenizer.get_vocab()
    return [vocab[piece] for piece in pieces.split()]


def rows(packed: list[Any]) -> tuple[list[list[int]], list[list[int]]]:
    return [row.tokens.tolist() for row in packed], [row.docs.tolist() for row in packed]


def test_rows_are_bos_document_runs_cut_into_seq_len(tiny_tokenizer: Any) -> None:
    # Every word below is a single entry of the tiny vocabulary, so each document's ids are known.
    documents = ["the in on", "", "x y", "   ", "an as re te en"]
    d0, d2, d4 = (ids(tiny_tokenizer, text) for text in ("the in on", "x y", "an as re te en"))
    assert tiny_tokenizer.bos_token_id == BOS and len(d0) == 3 and len(d2) == 2 and len(d4) == 5

    packed = list(pack_sequences(documents, tiny_tokenizer, seq_len=4))

    tokens, docs = rows(packed)
    # stream: BOS d0 | BOS d2 | BOS d4 = 4 + 3 + 6 = 13 tokens -> 3 rows of 4, the last token dropped.
    assert tokens == [[BOS, *d0], [BOS, *d2, BOS], d4[:4]]
    # empty documents 1 and 3 add no BOS but still count in the numbering
    assert docs == [[0, 0, 0, 0], [2, 2, 2, 4], [4, 4, 4, 4]]
    assert all(row.tokens.dtype == np.int64 and row.docs.dtype == np.int64 for row in packed)
    assert all(row.tokens.shape == row.docs.shape == (4,) for row in packed)


def test_long_document_spans_rows_without_a_new_separator(tiny_tokenizer: Any) -> None:
    text = "a b c d e f g h i j k"  # 11 single-letter tokens
    letters = ids(tiny_tokenizer, text)

    packed = list(pack_sequences([text], tiny_tokenizer, seq_len=3))

    tokens, docs = rows(packed)
    assert tokens == [[BOS, *letters[:2]], letters[2:5], letters[5:8], letters[8:11]]  # 12 tokens, no tail
    assert docs == [[0, 0, 0]] * 4


def test_incomplete_tail_is_dropped(tiny_tokenizer: Any) -> None:
    # 2 documents x (BOS + 3) = 8 tokens; seq_len 5 -> one row, 3 tokens dropped
    packed = list(pack_sequences(["the in on", "an as re"], tiny_tokenizer, seq_len=5))

    tokens, docs = rows(packed)
    assert tokens == [[BOS, *ids(tiny_tokenizer, "the in on"), BOS]]
    assert docs == [[0, 0, 0, 0, 1]]


def test_a_corpus_shorter_than_one_row_yields_nothing(tiny_tokenizer: Any) -> None:
    assert list(pack_sequences(["the in"], tiny_tokenizer, seq_len=4)) == []  # 3 tokens < 4


def test_document_ids_stay_aligned_across_tokenizer_batches(tiny_tokenizer: Any) -> None:
    n_docs = 2 * TOKENIZE_BATCH_DOCS + 7
    documents = ["x" if index % 3 else "" for index in range(n_docs)]
    x = ids(tiny_tokenizer, "x")[0]
    expected_tokens: list[int] = []
    expected_docs: list[int] = []
    for index, text in enumerate(documents):
        if text:
            expected_tokens += [BOS, x]
            expected_docs += [index, index]

    packed = list(pack_sequences(iter(documents), tiny_tokenizer, seq_len=8))

    n_kept = len(expected_tokens) // 8 * 8
    assert len(packed) == len(expected_tokens) // 8
    assert np.concatenate([row.tokens for row in packed]).tolist() == expected_tokens[:n_kept]
    assert np.concatenate([row.docs for row in packed]).tolist() == expected_docs[:n_kept]


def test_packing_streams_an_endless_corpus(tiny_tokenizer: Any) -> None:
    endless = itertools.cycle(["the in on"])

    first = list(itertools.islice(pack_sequences(endless, tiny_tokenizer, seq_len=6), 2))

    run = [BOS, *ids(tiny_tokenizer, "the in on")]
    assert [row.tokens.tolist() for row in first] == [run + run[:2], run[2:] + run]
    assert [row.docs.tolist() for row in first] == [[0, 0, 0, 0, 1, 1], [1, 1, 2, 2, 2, 2]]


@pytest.mark.parametrize("seq_len", [1, 0, -3])
def test_seq_len_below_two_is_refused(tiny_tokenizer: Any, seq_len: int) -> None:
    with pytest.raises(CorpusError) as info:
        next(pack_sequences(["the in on"], tiny_tokenizer, seq_len=seq_len))
    message = str(info.value)
    assert "\n" not in message
    assert "at least 2" in message and f"got {seq_len}" in message


@pytest.mark.parametrize("documents", [[], ["", "   ", "\n\t"]], ids=["no-documents", "only-blank"])
def test_corpus_without_tokens_is_refused(tiny_tokenizer: Any, documents: list[str]) -> None:
    with pytest.raises(CorpusError) as info:
        list(pack_sequences(documents, tiny_tokenizer, seq_len=4))
    message = str(info.value)
    assert "\n" not in message
    assert "no text" in message


def tokenizer_with(tiny_tokenizer: Any, **special: str) -> PreTrainedTokenizerFast:
    """The tiny tokenizer's vocabulary and merges with only the given special tokens declared."""
    backend = copy.deepcopy(tiny_tokenizer.backend_tokenizer)  # leave the session fixture untouched
    return PreTrainedTokenizerFast(tokenizer_object=backend, **special)


def test_tokenizer_without_bos_separates_documents_with_eos(tiny_tokenizer: Any) -> None:
    tokenizer = tokenizer_with(tiny_tokenizer, eos_token="</s>", unk_token="<unk>")
    assert tokenizer.bos_token_id is None and tokenizer.eos_token_id == EOS
    assert separator_id(tokenizer) == EOS

    packed = list(pack_sequences(["the in", "x y"], tokenizer, seq_len=6))

    tokens, docs = rows(packed)
    assert tokens == [[EOS, *ids(tiny_tokenizer, "the in"), EOS, *ids(tiny_tokenizer, "x y")]]
    assert docs == [[0, 0, 0, 1, 1, 1]]


def test_tokenizer_without_bos_or_eos_concatenates_documents(tiny_tokenizer: Any) -> None:
    tokenizer = tokenizer_with(tiny_tokenizer, unk_token="<unk>")
    assert separator_id(tokenizer) is None

    packed = list(pack_sequences(["the in", "", "x y"], tokenizer, seq_len=4))

    tokens, docs = rows(packed)
    assert tokens == [ids(tiny_tokenizer, "the in x y")]
    assert docs == [[0, 0, 2, 2]]
