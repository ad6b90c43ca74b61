"""Cross-validation folds grouped by document: every row of one text lands in the same fold, so no text is
seen in training and scored in testing (token rows of one document are far from independent)."""

from __future__ import annotations

import numpy as np

from featurelens.errors import ProbeError


def grouped_folds(groups: np.ndarray, n_folds: int, seed: int = 0) -> list[np.ndarray]:
    """Row indices of each of ``n_folds`` test folds; ``groups`` [n] is each row's document.

    Groups are shuffled (seeded), then each goes, largest first, to the fold with the fewest rows so far,
    so folds are near-equal in size.
    """
    groups = np.asarray(groups)
    labels, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    if n_folds < 2:
        raise ProbeError(f"cross-validation needs at least 2 folds, got {n_folds}")
    if len(labels) < n_folds:
        raise ProbeError(
            f"{len(labels)} document(s) cannot fill {n_folds} folds grouped by document; "
            "use more tokens or fewer --folds"
        )
    order = np.random.default_rng(seed).permutation(len(labels))
    order = order[np.argsort(-sizes[order], kind="stable")]
    fold_of_group = np.empty(len(labels), dtype=np.int64)
    filled = np.zeros(n_folds, dtype=np.int64)
    for group in order:
        fold = int(filled.argmin())
        fold_of_group[group] = fold
        filled[fold] += sizes[group]
    fold_of_row = fold_of_group[inverse]
    return [np.flatnonzero(fold_of_row == fold) for fold in range(n_folds)]
