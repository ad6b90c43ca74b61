"""Score an explanation on held-out examples: detection and fuzzing, balanced accuracy and AUROC.

* **detection**: for activating contexts (quantile samples the explainer did not see) and non-activating
  ones, does the explanation predict that the feature fires somewhere in the text?
* **fuzzing**: for each activating context, once with its truly active tokens marked and once with as many
  other tokens marked: are the marked tokens the ones the explanation describes?

A scorer returns P(yes) for each question. The ``keyword`` scorer needs no language model: it says yes
(1.0) when the text (detection) or every marked token (fuzzing) matches a token quoted in the explanation
(for baseline phrases, the quoted tokens before "; promotes"). AUROC has a bootstrap interval.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from featurelens.atlas import Context
from featurelens.explain.client import LanguageModelClient
from featurelens.explain.prompts import detection_messages, fuzzing_messages

BOOTSTRAP = 200
_QUOTED = re.compile(r'"([^"]+)"|“([^”]+)”')


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


def balanced_accuracy(scores: Sequence[float], labels: Sequence[bool], threshold: float = 0.5) -> float:
    """Mean of the true-positive and true-negative rates of ``score > threshold`` (a missing class: 0.5)."""
    s = np.asarray(scores, dtype=np.float64) > threshold
    y = np.asarray(labels, dtype=bool)
    rates = [
        float((s[mask] == target).mean()) if mask.any() else 0.5 for mask, target in ((y, True), (~y, False))
    ]
    return float(np.mean(rates))


def score(scores: Sequence[float], labels: Sequence[bool], seed: int = 0) -> Score:
    """Balanced accuracy, AUROC and its 95% bootstrap interval (:data:`BOOTSTRAP` resamples, all at once:
    a resample's AUROC is the pair-win matrix weighted by how often it drew each question)."""
    area = auroc(scores, labels)
    low = high = None
    if area is not None:
        s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
        picks = np.random.default_rng(seed).integers(0, len(s), (BOOTSTRAP, len(s)))
        drawn = (picks[:, :, None] == np.arange(len(s))).sum(1).astype(np.float64)  # [B, n] draw counts
        pos, neg = drawn[:, y], drawn[:, ~y]
        pairs = pos.sum(1) * neg.sum(1)
        wins = np.einsum("bi,ij,bj->b", pos, _wins(s, y), neg)
        samples = wins[pairs > 0] / pairs[pairs > 0]
        if len(samples):
            low, high = (float(q) for q in np.percentile(samples, [2.5, 97.5]))
    return Score(balanced_accuracy(scores, labels), area, low, high, len(labels), int(sum(labels)))


def keywords(explanation: str) -> set[str]:
    """Tokens quoted in ``explanation`` (before a "; promotes" clause), stripped, case kept."""
    head = explanation.split("; promotes")[0]
    return {(a or b).strip() for a, b in _QUOTED.findall(head) if (a or b).strip()}


def active_positions(context: Context) -> set[int]:
    return {i for i, value in enumerate(context.activations) if value > 0}


def decoy_positions(context: Context, rng: random.Random) -> set[int]:
    """As many positions as are active, chosen among the inactive ones (all inactive if fewer)."""
    active = active_positions(context)
    others = [i for i in range(len(context.tokens)) if i not in active]
    return set(rng.sample(others, min(len(active), len(others))))


Question = tuple[Context, set[int] | None]  # a context, and the marked positions (None: detection)
Ask = Callable[[str, list[Question]], list[float]]


def keyword_asker(explanation: str, questions: list[Question]) -> list[float]:
    """The LLM-free scorer (see the module docstring)."""
    words = keywords(explanation)
    answers = []
    for context, marked in questions:
        tokens = [t.strip() for t in context.tokens]
        if marked is None:
            answers.append(float(any(t in words for t in tokens)))
        else:
            answers.append(float(bool(marked) and all(tokens[i] in words for i in marked)))
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
    rng = random.Random(seed)
    questions: list[Question] = []
    labels: list[bool] = []
    for context in activating:
        questions.append((context, active_positions(context)))
        labels.append(True)
        decoys = decoy_positions(context, rng)
        if decoys:
            questions.append((context, decoys))
            labels.append(False)
    return score(ask(explanation, questions), labels, seed)
