"""Which token (or previous token, or bigram) explains a unit's strong activations: coverage and lift.

A unit's strong activations are its ``top`` largest values above the firing threshold (kept exactly by
:class:`~featurelens.neurons.statistics.UnitStatistics`). For each unit the most common key among those rows
(the current token, the previous token, or the pair) gives

* **coverage**: the share of the unit's strong activations on that key, and
* **lift**: coverage divided by the key's frequency over all rows (how much likelier the key is among the
  unit's strong activations than in the text; 1 = no association).

A unit is token-, previous-token- or bigram-specific when coverage and lift both pass their thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class KeyExplanation:
    """Per unit [width]: the most common key among its strong activations (-1: none), its coverage and
    lift, and how many strong activations there were."""

    key: np.ndarray
    coverage: np.ndarray
    lift: np.ndarray
    support: np.ndarray


def column_modes(keys: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Most common valid value of each column of ``keys`` [m, width] (ties: the smallest), its count and the
    number of valid entries [width]; -1 and 0 where a column has no valid entry."""
    m, width = keys.shape
    if m == 0:
        empty = np.zeros(width, dtype=np.int64)
        return empty - 1, empty, empty
    sentinel = np.iinfo(np.int64).max
    masked = np.where(valid, keys.astype(np.int64), sentinel)
    ordered = np.sort(masked, axis=0)
    index = np.arange(m)[:, None]
    starts = np.ones_like(ordered, dtype=bool)
    starts[1:] = ordered[1:] != ordered[:-1]
    run_start = np.maximum.accumulate(np.where(starts, index, 0), axis=0)
    run_length = np.where(ordered != sentinel, index - run_start + 1, 0)
    best = run_length.argmax(0)  # the first row where the longest run ends: its value is the mode
    columns = np.arange(width)
    count = run_length[best, columns]
    mode = np.where(count > 0, ordered[best, columns], -1)
    return mode, count, valid.sum(0)


def explain_by_key(
    top_keys: np.ndarray, strong: np.ndarray, all_keys: np.ndarray, min_support: int
) -> KeyExplanation:
    """Coverage and lift of each unit's most common key among its strong activations.

    ``top_keys`` [m, width] are the keys of each unit's top rows and ``strong`` [m, width] which of them
    count (above the firing threshold, key known); ``all_keys`` [n_rows] are the keys of every row (-1:
    unknown), for the frequencies. Units with fewer than ``min_support`` strong activations get key -1.
    """
    mode, count, support = column_modes(top_keys, strong & (top_keys >= 0))
    known = all_keys[all_keys >= 0]
    values, occurrences = np.unique(known, return_counts=True)
    frequency = np.full(len(mode), np.nan)
    if len(values):
        found = np.clip(np.searchsorted(values, mode), 0, len(values) - 1)
        matched = (mode >= 0) & (values[found] == mode)
        frequency[matched] = occurrences[found[matched]] / len(known)
    enough = (support >= max(min_support, 1)) & (mode >= 0)
    coverage = np.where(enough, count / np.maximum(support, 1), np.nan)
    lift = np.where(enough, coverage / frequency, np.nan)
    return KeyExplanation(np.where(enough, mode, -1), coverage, lift, support)


def bigram_keys(previous: np.ndarray, tokens: np.ndarray, vocab: int) -> np.ndarray:
    """One int64 key per (previous token, token) pair; -1 where the previous token is unknown."""
    return np.where(previous >= 0, previous.astype(np.int64) * vocab + tokens, -1)
