"""Ridge regression for many targets at once, every alpha from one SVD of the training features.

With the centred training features X = U S Vᵀ, ridge with penalty alpha has weights
W(alpha) = V diag(s / (s² + alpha)) Uᵀ Y, so a whole grid of alphas costs one SVD and a product per alpha,
and each target can take its own alpha (the standard approach of himalaya and scikit-learn's ``RidgeCV``).

* :class:`FixedAlphaRidge` — ridge with a given alpha, one for all targets or one per target; equals
  scikit-learn's ``Ridge(alpha=...)`` (unpenalised intercept).
* :class:`RidgeEncoder` — ridge with a per-target alpha chosen from a grid on the training rows, then refit
  on all of them. ``cv`` says how the alpha is chosen:

  - an integer k (default 5): **inner cross-validation**, k contiguous blocks of the training rows (or of
    whole groups, when ``fit`` gets ``groups``); each target takes the alpha of the best mean validation R²
    over the k folds, as ``RidgeCV(cv=folds)`` / ``GridSearchCV(Ridge(), cv=folds)`` would per target;
  - a list of ``(train, test)`` index pairs: those inner folds;
  - ``"loo"``: exact **efficient leave-one-out** (no refits: the LOO residual is r / (1 - h) with h the
    hat matrix's diagonal), the smallest mean squared LOO error per target, as
    ``RidgeCV(alpha_per_target=True)`` with its default ``cv=None`` chooses. Fast, but it assumes rows are
    exchangeable: with time series prefer blocked folds.

Arrays in and out are numpy; the work is torch: the SVD in float64, the products over targets in the
targets' dtype (float64 input: float64 throughout; float32: float32 products, for speed), in chunks of
``target_chunk`` targets so memory stays bounded for 100k targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from featurelens.encode.folds import Fold, blocked_folds, grouped_folds
from featurelens.encode.paths import (
    LeaveOneOutPath,
    SplitPath,
    best_alpha_index,
    centred_svd,
    shrinkage,
    threads_for,
)
from featurelens.errors import EncodeError

DEFAULT_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-2, 5, 15))
TARGET_CHUNK = 4096


def as_2d(y: np.ndarray, what: str = "targets") -> np.ndarray:
    """``y`` [n] or [n, t] as [n, t]."""
    y = np.asarray(y)
    if y.ndim == 1:
        return y[:, None]
    if y.ndim != 2:
        raise EncodeError(f"{what} must be a [rows] or [rows, targets] array, got shape {y.shape}")
    return y


def check_xy(x: np.ndarray, y: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """``x`` [n, d] and ``y`` as [n, t], finite, with one target row per feature row."""
    x = np.asarray(x)
    if x.ndim != 2 or len(x) == 0 or x.shape[1] == 0:
        raise EncodeError(f"features must be a non-empty [rows, features] array, got shape {x.shape}")
    if y is not None:
        y = as_2d(y)
        if len(y) != len(x):
            raise EncodeError(f"{len(x)} feature rows but {len(y)} target rows; give one target row per row")
        if not np.isfinite(y).all():
            raise EncodeError("targets hold NaN or infinite values; drop those rows first")
    if not np.isfinite(x).all():
        raise EncodeError("features hold NaN or infinite values; drop those rows first")
    return x, y


def work_dtype(y: np.ndarray) -> torch.dtype:
    """float64 for float64 targets, else float32: the dtype of the products over targets."""
    return torch.float64 if np.asarray(y).dtype == np.float64 else torch.float32


def ridge_solve(
    x: np.ndarray,
    y: np.ndarray,
    alphas: np.ndarray,
    fit_intercept: bool = True,
    target_chunk: int = TARGET_CHUNK,
) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients [t, d] and intercepts [t] of ridge on ``x`` [n, d], ``y`` [n, t], target j with penalty
    ``alphas[j]`` (``alphas`` [t]); in ``y``'s dtype (float64 or float32)."""
    dtype = work_dtype(y)
    mean, u, s, vt = centred_svd(torch.from_numpy(np.asarray(x)), fit_intercept)
    f = shrinkage(s, torch.as_tensor(np.asarray(alphas, dtype=np.float64)))  # [k, t]
    ut, v = u.T.to(dtype), vt.T.to(dtype)
    coefs, intercepts = [], []
    for start in range(0, y.shape[1], target_chunk):
        part = torch.from_numpy(np.ascontiguousarray(y[:, start : start + target_chunk])).to(dtype)
        y_mean = part.mean(0) if fit_intercept else torch.zeros(part.shape[1], dtype=dtype)
        w = v @ (f[:, start : start + target_chunk].to(dtype) * (ut @ (part - y_mean)))  # [d, c]
        coefs.append(w.T)
        intercepts.append(y_mean - mean.to(dtype) @ w)
    return torch.cat(coefs).numpy(), torch.cat(intercepts).numpy()


def cv_path_scores(
    x: np.ndarray,
    y: np.ndarray,
    alphas: Sequence[float] | np.ndarray,
    folds: Sequence[Fold],
    fit_intercept: bool = True,
    target_chunk: int = TARGET_CHUNK,
) -> np.ndarray:
    """Mean validation R² over ``folds`` for every alpha and target: [len(alphas), t] (float64).

    Each fold's R² is scikit-learn's ``r2_score`` on that fold's rows (its own mean; a target constant on
    the validation rows scores 0 there, as scikit-learn's default ``force_finite`` does)."""
    dtype = work_dtype(y)
    grid = torch.as_tensor(np.asarray(alphas, dtype=np.float64))
    x_all = torch.from_numpy(np.asarray(x)).double()
    paths = [SplitPath.build(x_all, train, test, grid, fit_intercept, dtype) for train, test in folds]
    scores = torch.zeros(len(grid), y.shape[1], dtype=torch.float64)
    for start in range(0, y.shape[1], target_chunk):
        part = torch.from_numpy(np.ascontiguousarray(y[:, start : start + target_chunk])).to(dtype)
        scores[:, start : start + target_chunk] = sum(path.scores(part) for path in paths) / len(paths)
    return scores.numpy()


def loo_path_scores(
    x: np.ndarray,
    y: np.ndarray,
    alphas: Sequence[float] | np.ndarray,
    fit_intercept: bool = True,
    target_chunk: int = TARGET_CHUNK,
) -> np.ndarray:
    """Minus the mean squared leave-one-out error for every alpha and target: [len(alphas), t] (float64),
    exact and without refits (:class:`~featurelens.encode.paths.LeaveOneOutPath`)."""
    dtype = work_dtype(y)
    grid = torch.as_tensor(np.asarray(alphas, dtype=np.float64))
    path = LeaveOneOutPath.build(torch.from_numpy(np.asarray(x)), grid, fit_intercept, dtype)
    scores = torch.empty(len(grid), y.shape[1], dtype=torch.float64)
    for start in range(0, y.shape[1], target_chunk):
        part = torch.from_numpy(np.ascontiguousarray(y[:, start : start + target_chunk])).to(dtype)
        scores[:, start : start + target_chunk] = path.scores(part)
    return scores.numpy()


def r2_per_target(y: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """R² of each target column [t]: 1 - residual / total sum of squares; NaN for a constant target."""
    y, predicted = as_2d(y).astype(np.float64), as_2d(predicted).astype(np.float64)
    total = ((y - y.mean(0)) ** 2).sum(0)
    error = ((y - predicted) ** 2).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, 1 - error / total, np.nan)


def inner_folds(cv: int | str | Sequence[Fold], n_rows: int, groups: np.ndarray | None) -> list[Fold] | None:
    """The folds ``cv`` names for ``n_rows`` training rows (None: efficient leave-one-out)."""
    if isinstance(cv, str):
        if cv != "loo":
            raise EncodeError(
                f"cv must be a number of folds, a list of (train, test) folds or 'loo', got {cv!r}"
            )
        return None
    if isinstance(cv, int | np.integer):
        return grouped_folds(groups, int(cv)) if groups is not None else blocked_folds(n_rows, int(cv))
    return [(np.asarray(train), np.asarray(test)) for train, test in cv]


def check_alphas(alphas: Sequence[float]) -> np.ndarray:
    grid = np.asarray(alphas, dtype=np.float64).reshape(-1)
    if len(grid) == 0 or not (np.isfinite(grid) & (grid > 0)).all():
        raise EncodeError(f"alphas must be positive finite numbers, at least one, got {grid.tolist()}")
    return grid


class _LinearModel:
    """predict / score shared by the ridge estimators: ``coef_`` [t, d], ``intercept_`` [t]."""

    coef_: np.ndarray
    intercept_: np.ndarray

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predictions [n, t]."""
        x, _ = check_xy(x)
        if x.shape[1] != self.coef_.shape[1]:
            raise EncodeError(f"the model was fit on {self.coef_.shape[1]} features, got {x.shape[1]}")
        dtype = self.coef_.dtype
        return x.astype(dtype, copy=False) @ self.coef_.T + self.intercept_

    def score(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """R² of every target [t] on these rows (NaN for a target constant on them)."""
        _, y2 = check_xy(x, y)
        return r2_per_target(y2, self.predict(x))  # type: ignore[arg-type]


@dataclass
class FixedAlphaRidge(_LinearModel):
    """Ridge with a fixed ``alpha``: one number for every target, or one per target."""

    alpha: float | Sequence[float] = 1.0
    fit_intercept: bool = True
    target_chunk: int = TARGET_CHUNK
    coef_: np.ndarray = field(init=False, repr=False)
    intercept_: np.ndarray = field(init=False, repr=False)

    def fit(self, x: np.ndarray, y: np.ndarray) -> FixedAlphaRidge:
        x, y2 = check_xy(x, y)
        assert y2 is not None
        alphas = np.broadcast_to(np.asarray(self.alpha, dtype=np.float64), (y2.shape[1],)).copy()
        if not (np.isfinite(alphas) & (alphas >= 0)).all():
            raise EncodeError(f"alpha must be finite and >= 0, got {self.alpha}")
        self.coef_, self.intercept_ = ridge_solve(x, y2, alphas, self.fit_intercept, self.target_chunk)
        return self


@dataclass
class RidgeEncoder(_LinearModel):
    """Ridge with a per-target alpha chosen from ``alphas`` (see the module docstring for ``cv``).

    After ``fit``: ``best_alphas_`` [t], ``cv_scores_`` [len(alphas), t] (mean validation R², or minus the
    mean squared LOO error), ``coef_`` [t, d] and ``intercept_`` [t] refit on all rows.
    """

    alphas: Sequence[float] = DEFAULT_ALPHAS
    cv: int | str | Sequence[Fold] = 5
    fit_intercept: bool = True
    target_chunk: int = TARGET_CHUNK
    best_alphas_: np.ndarray = field(init=False, repr=False)
    cv_scores_: np.ndarray = field(init=False, repr=False)
    coef_: np.ndarray = field(init=False, repr=False)
    intercept_: np.ndarray = field(init=False, repr=False)

    def fit(self, x: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None) -> RidgeEncoder:
        """Choose each target's alpha on ``x`` [n, d], ``y`` [n, t], refit; ``groups`` [n] keeps whole groups
        in one inner fold."""
        x, y2 = check_xy(x, y)
        assert y2 is not None
        grid = check_alphas(self.alphas)
        folds = inner_folds(self.cv, len(x), groups)
        with threads_for(x.shape[0] * (x.shape[1] + y2.shape[1])):
            if folds is None:
                self.cv_scores_ = loo_path_scores(x, y2, grid, self.fit_intercept, self.target_chunk)
            else:
                self.cv_scores_ = cv_path_scores(x, y2, grid, folds, self.fit_intercept, self.target_chunk)
            self.best_alphas_ = grid[best_alpha_index(self.cv_scores_)]
            self.coef_, self.intercept_ = ridge_solve(
                x, y2, self.best_alphas_, self.fit_intercept, self.target_chunk
            )
        return self
