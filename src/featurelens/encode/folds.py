"""Cross-validation folds for recordings in time: contiguous blocks, or whole groups (runs, stories,
documents), never shuffled rows, so no test row has its immediate neighbours in training.

A fold is a pair ``(train, test)`` of row-index arrays [n_train], [n_test].
"""

from __future__ import annotations

import itertools

import numpy as np

from featurelens.errors import EncodeError

Fold = tuple[np.ndarray, np.ndarray]


def blocked_folds(n_rows: int, n_folds: int) -> list[Fold]:
    """``n_folds`` contiguous test blocks of near-equal size, in row order; each trains on the rest."""
    if n_folds < 2:
        raise EncodeError(f"cross-validation needs at least 2 folds, got {n_folds}")
    if n_rows < 2 * n_folds:
        raise EncodeError(
            f"{n_rows} rows cannot fill {n_folds} folds (at least 2 rows per fold); "
            "use more rows or fewer folds"
        )
    edges = np.linspace(0, n_rows, n_folds + 1).round().astype(np.int64)
    rows = np.arange(n_rows)
    return [
        (np.concatenate([rows[:start], rows[stop:]]), rows[start:stop])
        for start, stop in itertools.pairwise(edges)
    ]


def grouped_folds(groups: np.ndarray, n_folds: int) -> list[Fold]:
    """Folds of whole groups: groups [n] (any labels) taken in order of first appearance and dealt, as
    contiguous runs of groups, to ``n_folds`` folds of near-equal row counts."""
    groups = np.asarray(groups)
    if n_folds < 2:
        raise EncodeError(f"cross-validation needs at least 2 folds, got {n_folds}")
    _, first, inverse, sizes = np.unique(groups, return_index=True, return_inverse=True, return_counts=True)
    if len(sizes) < n_folds:
        raise EncodeError(
            f"{len(sizes)} group(s) cannot fill {n_folds} folds of whole groups; "
            "give more groups or fewer folds"
        )
    order = np.argsort(first, kind="stable")  # groups in the order they appear
    starts = np.concatenate([[0], np.cumsum(sizes[order])[:-1]])
    fold_of_group = np.empty(len(sizes), dtype=np.int64)
    fold_of_group[order] = np.minimum(starts * n_folds // len(groups), n_folds - 1)
    used = np.unique(fold_of_group)
    if len(used) < n_folds:  # a few huge groups: fall back to one run of groups per fold, in order
        fold_of_group[order] = np.arange(len(sizes)) * n_folds // len(sizes)
    fold_of_row = fold_of_group[inverse.reshape(-1)]
    rows = np.arange(len(groups))
    return [(rows[fold_of_row != fold], rows[fold_of_row == fold]) for fold in range(n_folds)]


def make_folds(n_rows: int, n_folds: int, groups: np.ndarray | None = None) -> list[Fold]:
    """Grouped folds when ``groups`` [n_rows] is given, else contiguous blocks."""
    return grouped_folds(groups, n_folds) if groups is not None else blocked_folds(n_rows, n_folds)
