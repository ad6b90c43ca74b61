"""Two models with different tokenizers on the same text: rows where both tokenizations end a token at the
same character.

Each document is cut into windows of ``seq_len`` tokens of model a (at a's token boundaries); each window's
text is tokenized by both tokenizers on its own (with each one's separator token in front, as packing puts
it), both models run on it, and a row is kept wherever a token of a and a token of b end at the same
character: both models' representations of the same text prefix. Tokens that end inside the other
tokenizer's token have no partner and are left out; so is the first token of every window (no context).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from featurelens.corpus import CorpusConfig, documents
from featurelens.corpus.packing import separator_id
from featurelens.models import LanguageModel

ALIGNMENT = (
    "different tokenizers: rows where a token of each model ends at the same character of the same text "
    "(each window of text tokenized by both; tokens without a partner left out)"
)


def shared_ends(ends_a: Sequence[int], ends_b: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Indices into two token lists whose tokens end at the same character offset (given ``ends_*`` [n_*];
    -1 marks a token without text, e.g. a separator). Where several tokens end at one offset, the last."""
    last_a = {end: i for i, end in enumerate(ends_a) if end >= 0}
    last_b = {end: i for i, end in enumerate(ends_b) if end >= 0}
    common = sorted(set(last_a) & set(last_b))
    return (
        np.array([last_a[end] for end in common], dtype=np.int64),
        np.array([last_b[end] for end in common], dtype=np.int64),
    )


def _encoded(tokenizer: Any, text: str) -> tuple[list[int], list[int]]:
    """Token ids with the separator in front and each token's end offset (-1 for the separator)."""
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, ends = (
        list(encoding["input_ids"]),
        [end if end > start else -1 for start, end in encoding["offset_mapping"]],
    )
    separator = separator_id(tokenizer)
    if separator is not None:
        ids, ends = [separator, *ids], [-1, *ends]
    return ids, ends


def _windows(tokenizer: Any, text: str, seq_len: int) -> Iterator[str]:
    """Pieces of ``text`` of ``seq_len`` - 1 tokens of ``tokenizer`` each, cut at its token boundaries."""
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    for first in range(0, len(offsets), seq_len - 1):
        part = offsets[first : first + seq_len - 1]
        if len(part) > 1:
            yield text[part[0][0] : part[-1][1]]


def aligned_chunks(
    lm_a: LanguageModel,
    lm_b: LanguageModel,
    hooks_a: Sequence[str],
    hooks_b: Sequence[str],
    corpus: CorpusConfig,
    *,
    seq_len: int,
    n_tokens: int,
    chunk_rows: int = 2048,
) -> Iterator[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    """Chunks of about ``chunk_rows`` aligned rows (hook -> float32 [c, width] for each model), until
    ``n_tokens`` tokens of model a have been read (see the module docstring)."""
    parts_a: list[dict[str, torch.Tensor]] = []
    parts_b: list[dict[str, torch.Tensor]] = []
    held = read = 0
    for document in documents(corpus):
        for text in _windows(lm_a.tokenizer, document, seq_len):
            ids_a, ends_a = _encoded(lm_a.tokenizer, text)
            ids_b, ends_b = _encoded(lm_b.tokenizer, text)
            rows_a, rows_b = shared_ends(ends_a, ends_b)
            keep = rows_a > 0  # the first token of a window has no context
            rows_a, rows_b = rows_a[keep], rows_b[keep]
            read += len(ids_a)
            if len(rows_a):
                with torch.inference_mode():
                    acts_a = lm_a.capture(torch.tensor([ids_a]), hooks_a)
                    acts_b = lm_b.capture(torch.tensor([ids_b]), hooks_b)
                parts_a.append({h: acts_a[h][0, rows_a].float().cpu() for h in hooks_a})
                parts_b.append({h: acts_b[h][0, rows_b].float().cpu() for h in hooks_b})
                held += len(rows_a)
            if held >= chunk_rows or read >= n_tokens:
                if held:
                    yield _joined(parts_a), _joined(parts_b)
                parts_a, parts_b, held = [], [], 0
            if read >= n_tokens:
                return
    if held:
        yield _joined(parts_a), _joined(parts_b)


def _joined(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {hook: torch.cat([part[hook] for part in parts]) for hook in parts[0]}
