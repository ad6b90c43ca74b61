"""Permutation nulls per target, by refitting: the recordings are shuffled in blocks of ``block`` rows
(``block`` > 1 keeps a time series' autocorrelation inside each block) and the whole cross-validation,
each target's alpha choice included, is redone on the shuffled recordings. The SVDs of every outer and
inner fold depend on the features alone and are kept, so each of the P nulls costs products only.

Why not shuffle test rows against fixed held-out predictions: with k folds every row is also a training
row of the other folds' models, and the alphas were chosen on the real recordings; both make that null too
narrow (measured here: null p-values far from uniform, KS p < 0.01). Refitting everything keeps the
statistic and its null the same procedure, so p-values are uniform under the null (tested).

The statistic is the pooled held-out R² (1 - SSE / SST over every row); the p-value of each target is
(1 + #{null >= observed}) / (1 + P), with P seeded permutations that every target shares.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from featurelens.encode.folds import Fold
from featurelens.encode.paths import LeaveOneOutPath, SplitPath, best_alpha_index, threads_for
from featurelens.errors import EncodeError


def distinct_permutations(n_rows: int, block: int) -> float:
    """log10 of the number of distinct shuffles of ``n_rows`` rows in blocks of ``block``."""
    return math.lgamma(math.ceil(n_rows / block) + 1) / math.log(10)


def check_permutation_count(n_rows: int, n_permutations: int, block: int) -> None:
    """Raise unless ``n_rows`` rows in blocks of ``block`` allow more distinct shuffles than
    ``n_permutations`` (else the smallest p-value could not reach 1 / (1 + P))."""
    if block < 1:
        raise EncodeError(f"the permutation block must be at least 1 row, got {block}")
    if n_permutations < 1:
        raise EncodeError(f"a permutation test needs at least 1 permutation, got {n_permutations}")
    log_count = distinct_permutations(n_rows, block)
    if log_count < math.log10(n_permutations + 1):
        raise EncodeError(
            f"{n_rows} rows in blocks of {block} allow only {10**log_count:.0f} distinct permutations, fewer "
            f"than the {n_permutations} asked; use more rows, a smaller block or fewer permutations"
        )


def block_permutations(n_rows: int, n_permutations: int, block: int = 1, seed: int = 0) -> np.ndarray:
    """``n_permutations`` row orders [P, n_rows]: the rows cut into consecutive blocks of ``block`` (the
    last may be shorter), the blocks shuffled, the order inside each kept."""
    check_permutation_count(n_rows, n_permutations, block)
    rng = np.random.default_rng(seed)
    starts = np.arange(0, n_rows, block)
    maps = np.empty((n_permutations, n_rows), dtype=np.int64)
    for p in range(n_permutations):
        maps[p] = np.concatenate(
            [np.arange(s, min(s + block, n_rows)) for s in starts[rng.permutation(len(starts))]]
        )
    return maps


@dataclass(frozen=True)
class FoldRefit:
    """One outer fold, ready to redo on any recordings: its training rows ``train`` and test rows ``test``
    (of y), the path of its (standardised) training set against its test rows, and the inner paths that
    choose each target's alpha (inner folds, or leave-one-out)."""

    train: torch.Tensor
    test: torch.Tensor
    outer: SplitPath
    inner: list[SplitPath] | LeaveOneOutPath

    @classmethod
    def build(
        cls,
        x_train: np.ndarray,
        x_test: np.ndarray,
        train: np.ndarray,
        test: np.ndarray,
        grid: np.ndarray,
        inner: list[Fold] | None,
    ) -> FoldRefit:
        """``inner`` folds index the training rows (None: leave-one-out)."""
        alphas = torch.from_numpy(np.asarray(grid, dtype=np.float64))
        both = torch.from_numpy(np.concatenate([x_train, x_test])).double()
        rows = np.arange(len(x_train))
        outer = SplitPath.build(both, rows, np.arange(len(x_train), len(both)), alphas, True, torch.float64)
        xt = both[: len(x_train)]
        paths: list[SplitPath] | LeaveOneOutPath = (
            LeaveOneOutPath.build(xt, alphas, True, torch.float64)
            if inner is None
            else [SplitPath.build(xt, a, b, alphas, True, torch.float64) for a, b in inner]
        )
        return cls(torch.from_numpy(np.asarray(train)), torch.from_numpy(np.asarray(test)), outer, paths)

    def predict(self, y: torch.Tensor) -> torch.Tensor:
        """Held-out predictions [n_test, t] for recordings ``y`` [n, t] (float64), alphas chosen afresh."""
        y_train = y[self.train]
        if isinstance(self.inner, LeaveOneOutPath):
            scores = self.inner.scores(y_train)
        else:
            scores = torch.stack([path.scores(y_train) for path in self.inner]).mean(0)
        best = torch.from_numpy(best_alpha_index(scores))
        return self.outer.predict(y_train, best)


def _pooled_r2(y: torch.Tensor, refits: Sequence[FoldRefit]) -> torch.Tensor:
    predicted = torch.zeros_like(y)
    for refit in refits:
        predicted[refit.test] = refit.predict(y)
    total = ((y - y.mean(0)) ** 2).sum(0)
    return 1 - ((y - predicted) ** 2).sum(0) / total.clamp_min(1e-300)


def permutation_pvalues(
    y: np.ndarray,
    refits: Sequence[FoldRefit],
    n_permutations: int,
    block: int = 1,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-target p-values [t] of the pooled held-out R² of ``refits`` on ``y`` [n, t], and the observed
    R² [t] they test (equal to the cross-validation's). ``progress`` gets the permutations done. NaN for a
    constant target."""
    maps = torch.from_numpy(block_permutations(len(y), n_permutations, block, seed))
    targets = torch.from_numpy(np.asarray(y, dtype=np.float64))
    exceed = torch.zeros(targets.shape[1], dtype=torch.float64)
    with threads_for(targets.shape[0] * (refits[0].outer.test_v.shape[1] + targets.shape[1])):
        observed = _pooled_r2(targets, refits)
        for p in range(n_permutations):
            null = _pooled_r2(targets[maps[p]], refits)
            exceed += (null >= observed - 1e-12).double()
            if progress is not None:
                progress(p + 1)
    pvalues = ((1 + exceed) / (1 + n_permutations)).numpy()
    pvalues[~(np.asarray(y).std(0) > 0)] = np.nan
    return pvalues, observed.numpy()
