"""Prompt sets for patching: aligned clean/corrupted pairs with the right and wrong answer token of each.

Built in: the indirect-object task (``ioi``): "When Mary and John went to the store, John gave a drink to"
→ " Mary". Corrupted prompts repeat the other name as subject ("..., Mary gave a drink to"), which flips
the answer, so the logit difference ``logit(IO) - logit(S)`` goes from positive to negative. From a file:
JSON lines ``{"clean": ..., "corrupt": ..., "correct": " Mary", "wrong": " John"}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from featurelens.intervene.components import LogitDifference
from featurelens.intervene.edits import InterventionError
from featurelens.intervene.records import read_records

IOI_PAIRS = (
    ("Mary", "John"),
    ("Tom", "James"),
    ("Anna", "Paul"),
    ("Sarah", "David"),
    ("Lisa", "Mark"),
    ("Kate", "Peter"),
    ("Alice", "Bob"),
    ("Emma", "Jack"),
)
IOI_PLACES = ("store", "park", "school", "beach", "office")
IOI_TEMPLATE = "When {a} and {b} went to the {place}, {subject} gave a drink to"
FIELDS = "clean, corrupt, correct, wrong"


@dataclass(frozen=True)
class PromptPairs:
    """Aligned prompts: ``clean`` and ``corrupt`` [n, seq] token ids, ``correct`` and ``wrong`` [n] answer
    token ids, and the texts they came from."""

    clean: torch.Tensor
    corrupt: torch.Tensor
    correct: torch.Tensor
    wrong: torch.Tensor
    texts: list[dict[str, str]]

    def __len__(self) -> int:
        return int(self.clean.shape[0])

    @property
    def metric(self) -> LogitDifference:
        return LogitDifference(self.correct, self.wrong)

    def subset(self, n: int) -> PromptPairs:
        """``n`` prompts spread evenly over the set (every name pair and order, when n allows)."""
        if n >= len(self):
            return self
        rows = torch.linspace(0, len(self) - 1, n).round().long()
        return PromptPairs(
            self.clean[rows],
            self.corrupt[rows],
            self.correct[rows],
            self.wrong[rows],
            [self.texts[int(i)] for i in rows],
        )


def ioi_texts() -> list[dict[str, str]]:
    """The 80 indirect-object prompts: 8 name pairs x 5 places x both orders."""
    texts = []
    for first, second in IOI_PAIRS:
        for place in IOI_PLACES:
            for io, subject in ((first, second), (second, first)):
                texts.append(
                    {
                        "clean": IOI_TEMPLATE.format(a=io, b=subject, place=place, subject=subject),
                        "corrupt": IOI_TEMPLATE.format(a=io, b=subject, place=place, subject=io),
                        "correct": f" {io}",
                        "wrong": f" {subject}",
                    }
                )
    return texts


def read_prompt_file(path: str | Path) -> list[dict[str, str]]:
    """Records of a JSON-lines prompt file, each with ``clean``, ``corrupt``, ``correct`` and ``wrong``."""
    return read_records(path, FIELDS.split(", "), "prompt file")


def _single_token(tokenizer: Any, text: str, where: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise InterventionError(
            f"the {where} answer {text!r} is {len(ids)} tokens; a metric token must be one"
        )
    return int(ids[0])


def tokenize_pairs(tokenizer: Any, texts: list[dict[str, str]]) -> PromptPairs:
    """Token ids of ``texts``; clean and corrupted prompts must have the same number of tokens, and all
    prompts the same length (patching aligns them position by position)."""
    clean = [tokenizer.encode(t["clean"]) for t in texts]
    corrupt = [tokenizer.encode(t["corrupt"]) for t in texts]
    for number, (a, b) in enumerate(zip(clean, corrupt, strict=True), start=1):
        if len(a) != len(b):
            raise InterventionError(
                f"prompt {number}: clean is {len(a)} tokens but corrupted is {len(b)}; they must align"
            )
    lengths = sorted({len(a) for a in clean})
    if len(lengths) > 1:
        raise InterventionError(f"prompts have {lengths} tokens; every prompt must have the same length")
    return PromptPairs(
        torch.tensor(clean),
        torch.tensor(corrupt),
        torch.tensor([_single_token(tokenizer, t["correct"], "correct") for t in texts]),
        torch.tensor([_single_token(tokenizer, t["wrong"], "wrong") for t in texts]),
        texts,
    )
