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


def mean_difference_scores(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[units] the largest standardised |class mean − rest mean| over classes."""
    x = np.asarray(x, dtype=np.float64)
    std = x.std(0)
    std = np.where(std > 0, std, np.inf)
    best = np.zeros(x.shape[1])
    for label in np.unique(y):
        inside = y == label
        if inside.all():
            continue
        difference = np.abs(x[inside].mean(0) - x[~inside].mean(0)) / std
        best = np.maximum(best, difference)
        if len(np.unique(y)) == 2:
            break  # both classes give the same difference
    return best


def f_statistic_scores(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[units] one-way ANOVA F across the classes of ``y`` (0 where a unit is constant)."""
    x = np.asarray(x, dtype=np.float64)
    labels = np.unique(y)
    n, k = len(x), len(labels)
    grand = x.mean(0)
    between = np.zeros(x.shape[1])
    within = np.zeros(x.shape[1])
    for label in labels:
        part = x[y == label]
        mean = part.mean(0)
        between += len(part) * (mean - grand) ** 2
        within += ((part - mean) ** 2).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = (between / max(k - 1, 1)) / (within / max(n - k, 1))
    return np.nan_to_num(f, nan=0.0, posinf=np.finfo(np.float64).max)


def correlation_scores(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[units] |Pearson correlation| of each unit with the continuous target ``y``."""
    x = np.asarray(x, dtype=np.float64)
    xc = x - x.mean(0)
    yc = np.asarray(y, dtype=np.float64) - np.mean(y)
    denominator = np.sqrt((xc**2).sum(0) * (yc**2).sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.nan_to_num(np.abs(xc.T @ yc) / denominator, nan=0.0)


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
