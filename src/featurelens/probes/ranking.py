"""Rank units by how well each alone separates the labels: the first step of a k-sparse probe.

Pure functions of x [n, units] and labels y [n]; every score is computed on the rows given (the training
fold only, so the ranking never sees held-out rows).

* ``mean_diff`` — |mean of the class − mean of the rest| / the unit's standard deviation, the largest over
  classes. The absolute value matters: a unit that is *lower* on the class separates it just as well.
* ``f_stat`` — the one-way ANOVA F statistic of the unit across classes (scikit-learn's ``f_classif``).
* ``correlation`` — |Pearson r| with a continuous target (the ranking of ``f_regression``).
"""

from __future__ import annotations

import numpy as np

from featurelens.errors import ProbeError

RANKINGS = ("mean_diff", "f_stat", "correlation")


def _class_sums(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per class of ``y``: labels [k], counts [k], sums [k, units] and sums of squares [k, units], summed in
    float64 without a float64 copy of ``x`` (rankings run on every training fold of large float32 data)."""
    labels, index = np.unique(y, return_inverse=True)
    counts = np.bincount(index, minlength=len(labels))
    sums = np.zeros((len(labels), x.shape[1]))
    squares = np.zeros((len(labels), x.shape[1]))
    for c in range(len(labels)):
        part = x[index == c]
        sums[c] = part.sum(0, dtype=np.float64)
        squares[c] = np.einsum("ij,ij->j", part, part, dtype=np.float64)
    return labels, counts, sums, squares


def mean_difference_scores(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[units] the largest standardised |class mean − rest mean| over classes."""
    _, counts, sums, squares = _class_sums(np.asarray(x), np.asarray(y))
    n = counts.sum()
    mean = sums.sum(0) / n
    variance = np.maximum(squares.sum(0) / n - mean**2, 0.0)
    std = np.where(variance > 0, np.sqrt(variance), np.inf)
    best = np.zeros(sums.shape[1])
    for c in range(len(counts)):
        rest = n - counts[c]
        if rest == 0:
            continue
        inside = sums[c] / counts[c]
        outside = (sums.sum(0) - sums[c]) / rest
        best = np.maximum(best, np.abs(inside - outside) / std)
    return best


def f_statistic_scores(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[units] one-way ANOVA F across the classes of ``y`` (0 where a unit is constant)."""
    _, counts, sums, squares = _class_sums(np.asarray(x), np.asarray(y))
    n, k = counts.sum(), len(counts)
    grand = sums.sum(0) / n
    means = sums / counts[:, None]
    between = (counts[:, None] * (means - grand) ** 2).sum(0)
    within = np.maximum((squares - sums * means).sum(0), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = (between / max(k - 1, 1)) / (within / max(n - k, 1))
    return np.nan_to_num(f, nan=0.0, posinf=np.finfo(np.float64).max)


def correlation_scores(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[units] |Pearson correlation| of each unit with the continuous target ``y``."""
    x = np.asarray(x)
    target = np.asarray(y, dtype=np.float64)
    yc = target - target.mean()
    n = len(target)
    mean = x.sum(0, dtype=np.float64) / n
    variance = np.maximum(np.einsum("ij,ij->j", x, x, dtype=np.float64) / n - mean**2, 0.0)
    covariance = (yc.astype(x.dtype) @ x).astype(np.float64) / n  # Σ (x - mean) yc = Σ x yc, as Σ yc = 0
    denominator = np.sqrt(variance * (yc**2).mean())
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.nan_to_num(np.abs(covariance) / denominator, nan=0.0)


def unit_scores(x: np.ndarray, y: np.ndarray, ranking: str) -> np.ndarray:
    """[units] the ``ranking`` score of every unit (higher separates better)."""
    scorers = {
        "mean_diff": mean_difference_scores,
        "f_stat": f_statistic_scores,
        "correlation": correlation_scores,
    }
    if ranking not in scorers:
        raise ProbeError(f"unknown ranking {ranking!r}; accepted: {', '.join(RANKINGS)}")
    return scorers[ranking](x, y)


def rank_units(x: np.ndarray, y: np.ndarray, ranking: str) -> np.ndarray:
    """Unit indices [units], best first (ties: the lower index first)."""
    return np.argsort(-unit_scores(x, y, ranking), kind="stable")
