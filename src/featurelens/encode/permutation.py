"""Permutation nulls per target, without refitting: the held-out predictions stay fixed and the observed
test rows are shuffled against them, within each test fold, in blocks of ``block`` consecutive rows
(``block`` > 1 keeps the autocorrelation of a time series inside each block).

Why this is a valid null: a row's held-out prediction depends only on the training rows and its own
features, so if the targets carry no information about the features, the test rows of a fold are
exchangeable against their predictions. The statistic is the pooled held-out R² (1 - SSE / SST over every
row); the p-value of each target is (1 + #{null >= observed}) / (1 + P), with P seeded permutations that
every target shares.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from featurelens.errors import EncodeError


def distinct_permutations(test_folds: Sequence[np.ndarray], block: int) -> float:
    """log10 of the number of distinct block shuffles of the rows of ``test_folds``."""
    return sum(math.lgamma(math.ceil(len(fold) / block) + 1) for fold in test_folds) / math.log(10)


def check_permutation_count(test_folds: Sequence[np.ndarray], n_permutations: int, block: int) -> None:
    """Raise unless the rows of ``test_folds`` in blocks of ``block`` allow more distinct shuffles than
    ``n_permutations`` (else the smallest p-value could not reach 1 / (1 + P))."""
    if block < 1:
        raise EncodeError(f"the permutation block must be at least 1 row, got {block}")
    if n_permutations < 1:
        raise EncodeError(f"a permutation test needs at least 1 permutation, got {n_permutations}")
    log_count = distinct_permutations(test_folds, block)
    if log_count < math.log10(n_permutations + 1):
        n_rows = sum(len(fold) for fold in test_folds)
        raise EncodeError(
            f"{n_rows} rows in blocks of {block} allow only {10**log_count:.0f} distinct permutations, fewer "
            f"than the {n_permutations} asked; use more rows, a smaller block or fewer permutations"
        )


def block_permutations(
    test_folds: Sequence[np.ndarray], n_permutations: int, block: int = 1, seed: int = 0
) -> np.ndarray:
    """``n_permutations`` index maps [P, n] (n rows, all in some test fold): entry i of map p is the row
    whose observed value is set against row i's prediction; rows stay in their test fold."""
    check_permutation_count(test_folds, n_permutations, block)
    n = sum(len(fold) for fold in test_folds)
    rng = np.random.default_rng(seed)
    maps = np.empty((n_permutations, n), dtype=np.int64)
    for p in range(n_permutations):
        for fold in test_folds:
            fold = np.asarray(fold)
            blocks = [fold[i : i + block] for i in range(0, len(fold), block)]
            order = rng.permutation(len(blocks))
            maps[p, fold] = np.concatenate([blocks[b] for b in order])
    return maps


def permutation_pvalues(
    y: np.ndarray,
    predicted: np.ndarray,
    test_folds: Sequence[np.ndarray],
    n_permutations: int,
    block: int = 1,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Per-target p-values [t] of the pooled held-out R² of ``predicted`` [n, t] against ``y`` [n, t].

    Shuffling rows leaves SST and the sums of squares unchanged, so R² only moves with the cross term
    sum(y_perm * predicted): that is what is compared (exactly equivalent, and cheap). ``progress`` gets
    the number of permutations done. NaN for a constant target."""
    y, predicted = np.asarray(y, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
    maps = torch.from_numpy(block_permutations(test_folds, n_permutations, block, seed))
    exceed = torch.zeros(y.shape[1], dtype=torch.float64)
    targets = torch.from_numpy(y)
    predictions = torch.from_numpy(predicted)
    observed = (targets * predictions).sum(0)
    tolerance = 1e-10 * ((targets**2).sum(0) * (predictions**2).sum(0)).sqrt()  # sums in another order
    for p in range(n_permutations):
        null = (targets[maps[p]] * predictions).sum(0)
        exceed += (null >= observed - tolerance).double()
        if progress is not None:
            progress(p + 1)
    pvalues = ((1 + exceed) / (1 + n_permutations)).numpy()
    constant = ~(y.std(0) > 0)
    pvalues[constant] = np.nan
    return pvalues
