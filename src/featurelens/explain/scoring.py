"""Score an explanation on held-out examples: detection and fuzzing, balanced accuracy and AUROC.

* **detection**: for activating contexts (quantile samples the explainer did not see) and non-activating
  ones, does the explanation predict that the feature fires somewhere in the text?
* **fuzzing**: for each activating context, once with its truly active tokens marked and once with as many
  other tokens marked: are the marked tokens the ones the explanation describes?

A scorer returns P(yes) for each question. The ``keyword`` scorer needs no language model: it says yes
(1.0) when the text (detection) or every marked token (fuzzing) matches a pattern of the explanation (the
quoted ones before any "; promotes" clause): ``"B"`` matches the token B, ``"B" after "A"`` only a B right
after an A, ``any token after "A"`` whatever follows an A (tokens compared stripped; whitespace-only tokens
as ↵ / ␣). AUROC has a bootstrap interval.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from featurelens.atlas import Context
from featurelens.atlas.batch import ExampleBatch
from featurelens.explain.client import LanguageModelClient
from featurelens.explain.prompts import detection_messages, fuzzing_messages

BOOTSTRAP = 200
_QUOTED = r'"([^"]+)"|“([^”]+)”'
_PATTERN = re.compile(rf"(?:{_QUOTED}|(any token))(?:\s+after\s+(?:{_QUOTED}))?")
ANY, NEVER, PAD, UNKNOWN = -1, -2, -3, -4  # word ids: a pattern's wildcard, a word nowhere, no token, no text
DECOY_STREAM = 1  # the fuzzing decoys draw from their own random stream, apart from the bootstrap's


@dataclass(frozen=True)
class Score:
    """One scorer's verdict on one explanation: metrics over ``n`` questions (``n_positive`` of them true)."""

    balanced_accuracy: float
    auroc: float | None
    auroc_low: float | None
    auroc_high: float | None
    n: int
    n_positive: int


def _wins(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[n_pos, n_neg]: 1 where a positive outscores a negative, 0.5 on a tie, else 0."""
    pos, neg = scores[labels][:, None], scores[~labels][None, :]
    return (pos > neg) + 0.5 * (pos == neg)


def auroc(scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray) -> float | None:
    """Area under the ROC curve: the share of (positive, negative) pairs ranked right, ties counting half
    (exact, O(n_pos * n_neg), for the few dozen questions per feature); None without both classes."""
    y = np.asarray(labels, dtype=bool)
    if y.all() or not y.any():
        return None
    return float(_wins(np.asarray(scores, dtype=np.float64), y).mean())


def balanced_accuracy(
    scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray, threshold: float = 0.5
) -> float:
    """Mean of the true-positive and true-negative rates of ``score > threshold`` (a missing class: 0.5)."""
    s = np.asarray(scores, dtype=np.float64) > threshold
    y = np.asarray(labels, dtype=bool)
    n_pos = int(y.sum())
    true_positive = float(s[y].sum()) / n_pos if n_pos else 0.5
    true_negative = float(len(y) - n_pos - s[~y].sum()) / (len(y) - n_pos) if n_pos < len(y) else 0.5
    return (true_positive + true_negative) / 2


def _percentile(ascending: np.ndarray, q: float) -> float:
    """``np.percentile(ascending, q)`` (linear interpolation) of sorted values, without its overhead."""
    at = q / 100 * (len(ascending) - 1)
    low = int(at)
    high = min(low + 1, len(ascending) - 1)
    return float(ascending[low] + (ascending[high] - ascending[low]) * (at - low))


def score(scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray, seed: int = 0) -> Score:
    """Balanced accuracy, AUROC and its 95% bootstrap interval (:data:`BOOTSTRAP` resamples, all at once:
    a resample's AUROC is the pair-win matrix weighted by how often it drew each question)."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    n_positive = int(y.sum())
    area = low = high = None
    if 0 < n_positive < len(y):
        pair_wins = _wins(s, y)
        area = float(pair_wins.mean())
        picks = np.random.default_rng(seed).integers(0, len(s), (BOOTSTRAP, len(s)))
        offsets = (picks + len(s) * np.arange(BOOTSTRAP)[:, None]).ravel()
        drawn = (
            np.bincount(offsets, minlength=BOOTSTRAP * len(s)).reshape(BOOTSTRAP, len(s)).astype(np.float64)
        )
        pos, neg = drawn[:, y], drawn[:, ~y]
        pairs = pos.sum(1) * neg.sum(1)
        wins = ((pos @ pair_wins) * neg).sum(1)
        samples = np.sort(wins[pairs > 0] / pairs[pairs > 0])
        if len(samples):
            low, high = (_percentile(samples, q) for q in (2.5, 97.5))
    return Score(balanced_accuracy(s, y), area, low, high, len(y), n_positive)


class Pattern(NamedTuple):
    """What a keyword explanation says the feature fires on: a word (None: any token) right after a word
    (None: after anything)."""

    word: str | None
    after: str | None


def word(text: str) -> str:
    """A token as the keyword scorer compares it: stripped; whitespace alone as it looks (↵ per line break,
    ␣ per other character), so a line break can be named."""
    return text.strip() or "".join("↵" if c == "\n" else "␣" for c in text)


def patterns(explanation: str) -> list[Pattern]:
    """The patterns quoted in ``explanation`` before a "; promotes" clause: ``"B" after "A"`` (B right
    after A), ``any token after "A"``, and every other quoted token alone (case kept, stripped)."""
    head = explanation.split("; promotes")[0]
    found = []
    for match in _PATTERN.finditer(head):
        quoted, any_token, after = (
            match.group(1) or match.group(2),
            match.group(3),
            match.group(4) or match.group(5),
        )
        text, condition = (quoted or "").strip(), (after or "").strip()
        if text or (any_token and condition):
            found.append(Pattern(text or None, condition or None))
    return list(dict.fromkeys(found))


@dataclass(frozen=True)
class Words:
    """Token ids as integer word ids, one per distinct :func:`word` of an atlas's vocabulary."""

    texts: list[str]  # word id -> the word
    index: dict[str, int]  # the word -> word id
    of_token: np.ndarray  # [max token id + 1] word id; UNKNOWN for ids without a text

    @classmethod
    def of(cls, vocab: dict[int, str]) -> Words:
        index: dict[str, int] = {}
        of_token = np.full(max(vocab, default=-1) + 1, UNKNOWN, dtype=np.int64)
        for token, text in vocab.items():
            of_token[token] = index.setdefault(word(text), len(index))
        return cls(list(index), index, of_token)

    def tokens(self, ids: np.ndarray) -> np.ndarray:
        """Word ids of token ids (any shape); ids < 0 (padding) become PAD."""
        known = (ids >= 0) & (ids < len(self.of_token))
        looked = self.of_token[np.where(known, ids, 0)] if len(self.of_token) else np.zeros_like(ids)
        return np.where(known, looked, np.where(ids < 0, PAD, UNKNOWN))


def encode(explanations: Sequence[str], index: dict[str, int]) -> np.ndarray:
    """[F, P, 2] (word, after) ids of each explanation's :func:`patterns`: ANY where a pattern says any,
    NEVER for a word missing from ``index`` and for the padding up to the longest list."""
    found = [patterns(text) for text in explanations]
    out = np.full((len(found), max(map(len, found), default=0), 2), NEVER, dtype=np.int64)
    for i, listed in enumerate(found):
        for j, pattern in enumerate(listed):
            out[i, j] = [ANY if part is None else index.get(part, NEVER) for part in pattern]
    return out


def pattern_hits(encoded: np.ndarray, owner: np.ndarray, words: np.ndarray) -> np.ndarray:
    """[E, W] where a pattern of row e's explanation ``encoded[owner[e]]`` ([F, P, 2], see
    :func:`encode`) matches the window ``words`` [E, W] (PAD past its end)."""
    before = np.concatenate([np.full((len(words), 1), PAD), words[:, :-1]], axis=1)
    hits = np.zeros(words.shape, dtype=bool)
    for p in range(encoded.shape[1]):
        word_id, after = encoded[owner, p, 0][:, None], encoded[owner, p, 1][:, None]
        hits |= ((word_id == ANY) | (words == word_id)) & ((after == ANY) | (before == after))
    return np.asarray(hits & (words != PAD))


def context_words(contexts: Sequence[Context], index: dict[str, int]) -> np.ndarray:
    """[n, W] word ids of the contexts' tokens (PAD past each end); new words are added to ``index``."""
    out = np.full((len(contexts), max((len(c.tokens) for c in contexts), default=0)), PAD, dtype=np.int64)
    for i, context in enumerate(contexts):
        out[i, : len(context.tokens)] = [index.setdefault(word(t), len(index)) for t in context.tokens]
    return out


def context_activity(contexts: Sequence[Context], width: int) -> np.ndarray:
    """[n, W] True where a context's feature is active (activation > 0)."""
    out = np.zeros((len(contexts), width), dtype=bool)
    for i, context in enumerate(contexts):
        out[i, : len(context.activations)] = np.asarray(context.activations) > 0
    return out


def fuzzing_marks(
    active: np.ndarray, valid: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fuzzing questions of activating windows [n, W]: (marked positions [Q, W], label [Q], window [Q]).

    Each window once with its active tokens marked (True), then, if it has inactive ones, once with as many
    decoys drawn uniformly among them (False; all of them if fewer). One random key per window position in
    row order, so padding does not change the draw.
    """
    keys = np.full(active.shape, np.inf)
    keys[valid] = np.random.default_rng([DECOY_STREAM, seed]).random(int(valid.sum()))
    free = valid & ~active
    keys[~free] = np.inf
    wanted = np.minimum(active.sum(1), free.sum(1))
    kth = np.sort(keys, axis=1)[np.arange(len(keys)), np.maximum(wanted - 1, 0)] if keys.size else keys[:, 0]
    decoys = free & (keys <= kth[:, None]) & (wanted > 0)[:, None]  # the wanted smallest keys
    has_decoys = decoys.any(1)
    window = np.concatenate([np.arange(len(active)), np.flatnonzero(has_decoys)])
    order = np.argsort(window, kind="stable")  # each window's decoys right after its true question
    marks = np.concatenate([active, decoys[has_decoys]])[order]
    labels = np.concatenate([np.ones(len(active), bool), np.zeros(int(has_decoys.sum()), bool)])[order]
    return marks, labels, window[order]


Question = tuple[Context, set[int] | None]  # a context, and the marked positions (None: detection)
Ask = Callable[[str, list[Question]], list[float]]


def keyword_asker(explanation: str, questions: list[Question]) -> list[float]:
    """The LLM-free scorer (see the module docstring)."""
    index: dict[str, int] = {}
    words = context_words([context for context, _ in questions], index)
    encoded = encode([explanation], index)
    hits = pattern_hits(encoded, np.zeros(len(questions), dtype=np.int64), words)
    answers = []
    for row, (_, marked) in zip(hits, questions, strict=True):
        if marked is None:
            answers.append(float(row.any()))
        else:
            answers.append(float(bool(marked) and all(row[i] for i in marked)))
    return answers


def client_asker(client: LanguageModelClient) -> Ask:
    """Ask ``client`` the questions (batched where it can); P(yes) from its logits or logprobs."""

    def ask(explanation: str, questions: list[Question]) -> list[float]:
        prompts = [
            detection_messages(explanation, context)
            if marked is None
            else fuzzing_messages(explanation, context, marked)
            for context, marked in questions
        ]
        return [answer.p_yes for answer in client.yes_probabilities(prompts)]

    return ask


def detection(
    ask: Ask, explanation: str, activating: list[Context], silent: list[Context], seed: int
) -> Score:
    scores = ask(explanation, [(c, None) for c in activating + silent])
    return score(scores, [True] * len(activating) + [False] * len(silent), seed)


def fuzzing(ask: Ask, explanation: str, activating: list[Context], seed: int) -> Score:
    words = context_words(activating, {})
    active = context_activity(activating, words.shape[1])
    marks, labels, window = fuzzing_marks(active, words != PAD, seed)
    questions: list[Question] = [
        (activating[w], set(np.flatnonzero(m).tolist())) for m, w in zip(marks, window.tolist(), strict=True)
    ]
    return score(ask(explanation, questions), labels.tolist(), seed)


def keyword_scores(
    explanations: Sequence[str],
    batch: ExampleBatch,
    activating: np.ndarray,
    silent: np.ndarray,
    words: Words,
    seeds: Sequence[int],
) -> list[tuple[Score, Score]]:
    """Detection and fuzzing scores of the keyword scorer for every feature of ``batch`` at once: the
    explanation ``explanations[i]`` of feature ``batch.features[i]``, asked about its ``activating`` and
    ``silent`` [E] examples with seed ``seeds[i]``; the same answers as :func:`keyword_asker`."""
    window = words.tokens(batch.tokens)
    hits = pattern_hits(encode(explanations, words.index), batch.owner, window)
    found = np.asarray(hits.any(1))
    active: np.ndarray = np.greater(batch.activations, 0)
    bounds = batch.bounds()
    out = []
    for i, seed in enumerate(seeds):
        rows = np.arange(bounds[i], bounds[i + 1])
        held, quiet = rows[activating[rows]], rows[silent[rows]]
        labels = [True] * len(held) + [False] * len(quiet)
        detected = score(found[np.concatenate([held, quiet])], labels, seed)
        marks, fuzz_labels, which = fuzzing_marks(active[held], window[held] != PAD, seed)
        answers = marks.any(1) & ~(marks & ~hits[held][which]).any(1)
        out.append((detected, score(answers, fuzz_labels, seed)))
    return out
