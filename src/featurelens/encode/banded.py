"""Banded ridge: one penalty per feature band (feature space), so a band that does not help a target is
shrunk away instead of adding noise to it (himalaya's ``BandedRidgeCV``, random-search solver).

The penalty is sum_b alpha_b ||w_b||². Write alpha_b = alpha / gamma_b with band scalings gamma on the
simplex: scaling band b's columns by sqrt(gamma_b) turns banded ridge into plain ridge with penalty alpha,
so every candidate gamma is solved exactly by the SVD path of :mod:`featurelens.encode.ridge`, every alpha of
the grid at once. The candidates are each band alone (the others left out: alpha_b = inf), all bands
equal, and ``n_candidates`` random points of the simplex (Dirichlet(1), seeded). Each target takes the
(gamma, alpha) of its best score, chosen as :class:`~featurelens.encode.ridge.RidgeEncoder` chooses
alpha (inner folds or efficient leave-one-out), then is refit on all rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from featurelens.encode.folds import Fold
from featurelens.encode.paths import threads_for
from featurelens.encode.ridge import (
    DEFAULT_ALPHAS,
    TARGET_CHUNK,
    _LinearModel,
    best_alpha_index,
    check_alphas,
    check_xy,
    cv_path_scores,
    inner_folds,
    loo_path_scores,
    ridge_solve,
)
from featurelens.errors import EncodeError


def band_columns(bands: Sequence[slice | Sequence[int] | np.ndarray], n_features: int) -> list[np.ndarray]:
    """Column indices of each band; the bands must split the ``n_features`` columns exactly."""
    columns = [
        np.arange(n_features)[b] if isinstance(b, slice) else np.asarray(b, dtype=np.int64) for b in bands
    ]
    if len(columns) == 0 or any(len(c) == 0 for c in columns):
        raise EncodeError("banded ridge needs at least one band, each of one column or more")
    every = np.concatenate(columns)
    if len(every) != n_features or not np.array_equal(np.sort(every), np.arange(n_features)):
        raise EncodeError(
            f"the bands must cover each of the {n_features} feature columns exactly once; "
            f"they cover {len(np.unique(every))} distinct columns in {len(every)} entries"
        )
    return columns


def band_scalings(n_bands: int, n_candidates: int, seed: int = 0) -> np.ndarray:
    """Candidate scalings [c, n_bands] on the simplex: each band alone, all equal, then random ones."""
    corners = np.eye(n_bands)
    if n_bands == 1:
        return corners
    equal = np.full((1, n_bands), 1.0 / n_bands)
    random = np.random.default_rng(seed).dirichlet(np.ones(n_bands), size=n_candidates)
    return np.concatenate([corners, equal, random])


def column_scale(gamma: np.ndarray, columns: Sequence[np.ndarray], n_features: int) -> np.ndarray:
    """Per feature column [n_features], sqrt(gamma_b) of its band."""
    scale = np.empty(n_features)
    for g, band in zip(gamma, columns, strict=True):
        scale[band] = np.sqrt(g)
    return scale


@dataclass
class BandedRidgeEncoder(_LinearModel):
    """Banded ridge with a per-target (band scalings, alpha), see the module docstring.

    After ``fit``: ``band_alphas_`` [t, bands] (alpha / gamma_b; inf where a band is left out),
    ``scalings_`` [t, bands] (gamma), ``best_alphas_`` [t] (alpha), ``cv_scores_`` [t] (the best score),
    ``coef_`` [t, d] in the original feature columns and ``intercept_`` [t].
    """

    bands: Sequence[slice | Sequence[int] | np.ndarray] = ()
    alphas: Sequence[float] = DEFAULT_ALPHAS
    n_candidates: int = 20
    cv: int | str | Sequence[Fold] = 5
    fit_intercept: bool = True
    seed: int = 0
    target_chunk: int = TARGET_CHUNK
    band_alphas_: np.ndarray = field(init=False, repr=False)
    scalings_: np.ndarray = field(init=False, repr=False)
    best_alphas_: np.ndarray = field(init=False, repr=False)
    cv_scores_: np.ndarray = field(init=False, repr=False)
    coef_: np.ndarray = field(init=False, repr=False)
    intercept_: np.ndarray = field(init=False, repr=False)

    def fit(self, x: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None) -> BandedRidgeEncoder:
        x, y2 = check_xy(x, y)
        assert y2 is not None
        with threads_for(x.shape[0] * (x.shape[1] + y2.shape[1])):
            return self._fit(x, y2, groups)

    def _fit(self, x: np.ndarray, y2: np.ndarray, groups: np.ndarray | None) -> BandedRidgeEncoder:
        grid = check_alphas(self.alphas)
        columns = band_columns(self.bands, x.shape[1])
        candidates = band_scalings(len(columns), self.n_candidates, self.seed)
        folds = inner_folds(self.cv, len(x), groups)
        n_targets = y2.shape[1]
        best_score = np.full(n_targets, -np.inf)
        best_candidate = np.zeros(n_targets, dtype=np.int64)
        best_alpha = np.full(n_targets, grid[0])
        for c, gamma in enumerate(candidates):
            scaled = x * column_scale(gamma, columns, x.shape[1])
            if folds is None:
                scores = loo_path_scores(scaled, y2, grid, self.fit_intercept, self.target_chunk)
            else:
                scores = cv_path_scores(scaled, y2, grid, folds, self.fit_intercept, self.target_chunk)
            index = best_alpha_index(scores)
            score = np.nan_to_num(scores[index, np.arange(n_targets)], nan=-np.inf)
            better = score > best_score
            best_score[better], best_candidate[better], best_alpha[better] = (
                score[better],
                c,
                grid[index[better]],
            )
        dtype = np.float64 if y2.dtype == np.float64 else np.float32
        self.coef_ = np.zeros((n_targets, x.shape[1]), dtype=dtype)
        self.intercept_ = np.zeros(n_targets, dtype=dtype)
        for c in np.unique(best_candidate):
            chosen = np.flatnonzero(best_candidate == c)
            scale = column_scale(candidates[c], columns, x.shape[1])
            coef, intercept = ridge_solve(
                x * scale, y2[:, chosen], best_alpha[chosen], self.fit_intercept, self.target_chunk
            )
            self.coef_[chosen], self.intercept_[chosen] = coef * scale.astype(dtype), intercept
        self.scalings_ = candidates[best_candidate]
        self.best_alphas_ = best_alpha
        self.cv_scores_ = best_score
        with np.errstate(divide="ignore"):
            self.band_alphas_ = best_alpha[:, None] / self.scalings_
        return self
