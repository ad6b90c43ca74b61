"""Noise ceilings from repeated presentations: how much of the variance of the response averaged over R
repeats is signal, i.e. the R² a perfect model of the signal would reach against that average.

Recordings are ``y_repeats`` [R, n, targets]: the same n stimuli presented R times.

* :func:`explainable_variance` — bias-corrected: signal variance = var(mean over repeats) - (mean
  within-stimulus noise variance) / R, as a fraction of var(mean over repeats). Unbiased for both terms
  (ddof = 1); below 0 where the repeats share no signal (kept, not clipped).
* :func:`split_half_reliability` — the correlation between the means of two halves of the repeats,
  averaged over splits, stepped up to R repeats by the Spearman-Brown formula m r / (1 + (m - 1) r) with
  m = R / half. Both estimate the same quantity under the classical model (signal + independent noise).

A ceiling is a fraction of variance (R² units), at most 1. :func:`normalised_scores` divides a raw R² by
it and says why where it cannot (a ceiling <= 0 or undefined): the result is NaN there, never clipped.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from featurelens.errors import EncodeError

CEILINGS = ("explainable-variance", "split-half")


def check_repeats(y_repeats: np.ndarray) -> np.ndarray:
    """``y_repeats`` as float64 [R, n, t] with R >= 2."""
    y = np.asarray(y_repeats, dtype=np.float64)
    if y.ndim == 2:
        y = y[:, :, None]
    if y.ndim != 3:
        raise EncodeError(f"repeated recordings must be [repeats, rows, targets], got shape {y.shape}")
    if y.shape[0] < 2:
        raise EncodeError(
            f"the repeats axis has length {y.shape[0]}: a noise ceiling needs at least 2 repeats of each row"
        )
    return y


def explainable_variance(y_repeats: np.ndarray) -> np.ndarray:
    """Fraction of the variance of the repeat mean that is signal, per target [t] (NaN: constant mean)."""
    y = check_repeats(y_repeats)
    repeats = y.shape[0]
    total = y.mean(0).var(0, ddof=1)
    noise = y.var(0, ddof=1).mean(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, 1 - noise / repeats / total, np.nan)


def split_half_reliability(y_repeats: np.ndarray, n_splits: int = 100, seed: int = 0) -> np.ndarray:
    """Spearman-Brown-corrected split-half reliability of the repeat mean, per target [t].

    Halves of R // 2 repeats each (one repeat sits out of each split when R is odd); every split when
    there are at most ``n_splits`` of them, else ``n_splits`` random ones (seeded). NaN where a half-mean is
    constant."""
    y = check_repeats(y_repeats)
    repeats = y.shape[0]
    half = repeats // 2
    splits = _splits(repeats, half, n_splits, seed)
    correlations = np.stack([_columnwise_correlation(y[a].mean(0), y[b].mean(0)) for a, b in splits])
    r = correlations.mean(0)
    m = repeats / half
    with np.errstate(divide="ignore", invalid="ignore"):
        return m * r / (1 + (m - 1) * r)


def _splits(repeats: int, half: int, n_splits: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """Disjoint pairs of ``half`` repeats: all of them (each unordered pair once) or a seeded sample."""
    everything = range(repeats)
    n_all = math.comb(repeats, half) * math.comb(repeats - half, half) // (2 if 2 * half == repeats else 1)
    if n_all <= n_splits:
        found: list[tuple[list[int], list[int]]] = []
        seen: set[frozenset[frozenset[int]]] = set()
        for a in itertools.combinations(everything, half):
            rest = [r for r in everything if r not in a]
            for b in itertools.combinations(rest, half):
                key = frozenset((frozenset(a), frozenset(b)))
                if key not in seen:
                    seen.add(key)
                    found.append((list(a), list(b)))
        return found
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_splits):
        order = rng.permutation(repeats)
        out.append((order[:half].tolist(), order[half : 2 * half].tolist()))
    return out


def _columnwise_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a - a.mean(0), b - b.mean(0)
    denominator = np.sqrt((a**2).sum(0) * (b**2).sum(0))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, (a * b).sum(0) / denominator, np.nan)


def noise_ceiling(y_repeats: np.ndarray, method: str = "explainable-variance", seed: int = 0) -> np.ndarray:
    """The ceiling ``method`` names (one of :data:`CEILINGS`), per target [t]."""
    if method == "explainable-variance":
        return explainable_variance(y_repeats)
    if method == "split-half":
        return split_half_reliability(y_repeats, seed=seed)
    raise EncodeError(f"unknown ceiling {method!r}; accepted: {', '.join(CEILINGS)}")


def normalised_scores(raw: np.ndarray, ceiling: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """raw / ceiling per target [t], NaN where the ceiling is not positive, with the reason for each NaN
    ("" where the score is defined). Neither value is clipped: noise can put a score above its ceiling."""
    raw, ceiling = np.asarray(raw, dtype=np.float64), np.asarray(ceiling, dtype=np.float64)
    usable = np.isfinite(ceiling) & (ceiling > 0) & np.isfinite(raw)
    with np.errstate(divide="ignore", invalid="ignore"):
        normalised = np.where(usable, raw / np.where(usable, ceiling, 1.0), np.nan)
    reasons = []
    for r, c in zip(raw.tolist(), ceiling.tolist(), strict=True):
        if not math.isfinite(c):
            reasons.append("no ceiling: the repeat mean is constant")
        elif c <= 0:
            reasons.append(f"ceiling {c:.3g} <= 0: the repeats share no measurable signal")
        elif not math.isfinite(r):
            reasons.append("no raw score")
        else:
            reasons.append("")
    return normalised, reasons
