"""The alpha path of one training set, kept: its SVD, so scoring every alpha of a grid for any targets
(and refitting at any per-target alpha) costs products only. Ridge fits build them once per fold; the
permutation null reuses them for every shuffle of the recordings.

* :class:`SplitPath` — one (train, validation) split: validation R² of every alpha.
* :class:`LeaveOneOutPath` — exact efficient leave-one-out on one training set: minus the mean squared LOO
  error of every alpha (H = 11ᵀ/n + U diag(s² / (s² + alpha)) Uᵀ, LOO residual r_i / (1 - H_ii)).

Tensors are float64 for the SVD; the products run in ``dtype`` (the targets' float32 or float64).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

SMALL_SVD = 4_000_000  # entries below which the SVD runs on one thread (threads spin and slow it 5x here)
SMALL_PRODUCTS = (
    2_000_000  # rows x (features + targets) below which fits run on one thread (30x on a busy box)
)


@contextmanager
def threads_for(entries: int) -> Iterator[None]:
    """One torch thread while a problem of ``entries`` is small (thread start-up and spinning dominate
    small products, worst when other processes hold the cores), the default thread count otherwise."""
    threads = torch.get_num_threads()
    if entries < SMALL_PRODUCTS:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def centred_svd(x: torch.Tensor, fit_intercept: bool) -> tuple[torch.Tensor, ...]:
    """Mean [d] (zeros without intercept) and the thin SVD U [n, k], s [k], Vᵀ [k, d] of the centred
    ``x`` [n, d], all float64."""
    x = x.double()
    mean = x.mean(0) if fit_intercept else torch.zeros(x.shape[1], dtype=torch.float64)
    threads = torch.get_num_threads()
    if x.numel() < SMALL_SVD:
        torch.set_num_threads(1)
    try:
        u, s, vt = torch.linalg.svd(x - mean, full_matrices=False)
    finally:
        torch.set_num_threads(threads)
    return mean, u, s, vt


def shrinkage(s: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """s / (s² + alpha) as [k, len(alphas)] (float64); 0 for singular values that are numerically 0."""
    s = s[:, None]
    kept = s > s.max() * max(s.shape[0], 1) * torch.finfo(torch.float64).eps
    return torch.where(kept, s / (s**2 + alphas[None, :]), torch.zeros_like(s))


@dataclass(frozen=True)
class SplitPath:
    """Rows ``train`` and validation rows ``test`` of some x; ``shrink`` [k, A]; ``test_v`` [n_test, k]."""

    train: torch.Tensor
    test: torch.Tensor
    u: torch.Tensor
    shrink: torch.Tensor
    test_v: torch.Tensor
    fit_intercept: bool

    @classmethod
    def build(
        cls,
        x: torch.Tensor,
        train: np.ndarray,
        test: np.ndarray,
        grid: torch.Tensor,
        fit_intercept: bool,
        dtype: torch.dtype,
    ) -> SplitPath:
        rows, held = torch.from_numpy(np.asarray(train)), torch.from_numpy(np.asarray(test))
        mean, u, s, vt = centred_svd(x[rows], fit_intercept)
        test_v = (x[held].double() - mean) @ vt.T
        return cls(rows, held, u.to(dtype), shrinkage(s, grid).to(dtype), test_v.to(dtype), fit_intercept)

    def _fit_parts(self, y_train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y_mean = y_train.mean(0) if self.fit_intercept else torch.zeros(y_train.shape[1], dtype=y_train.dtype)
        return y_mean, self.u.T @ (y_train - y_mean)

    def scores(self, y: torch.Tensor) -> torch.Tensor:
        """Validation R² [A, t] of every alpha for targets ``y`` [n, t] (rows of the same x); a target
        constant on the validation rows scores 0 there (scikit-learn's ``force_finite``)."""
        y_mean, uty = self._fit_parts(y[self.train])
        y_test = y[self.test]
        base = y_test - y_mean
        total = ((y_test - y_test.mean(0)) ** 2).sum(0).double()
        out = torch.empty(self.shrink.shape[1], y.shape[1], dtype=torch.float64)
        for a in range(self.shrink.shape[1]):
            error = ((base - self.test_v @ (self.shrink[:, a, None] * uty)) ** 2).sum(0).double()
            out[a] = torch.where(total > 0, 1 - error / total.clamp_min(1e-300), torch.zeros_like(total))
        return out

    def predict(self, y_train: torch.Tensor, alpha_index: torch.Tensor) -> torch.Tensor:
        """Validation predictions [n_test, t] of a fit on ``y_train`` [n_train, t] (the train rows),
        target j with alpha ``alpha_index[j]`` of the grid."""
        y_mean, uty = self._fit_parts(y_train)
        return self.test_v @ (self.shrink[:, alpha_index] * uty) + y_mean


@dataclass(frozen=True)
class LeaveOneOutPath:
    """``u`` [n, k], ``fraction`` s² / (s² + alpha) [k, A], ``inflation`` 1 / (1 - H_ii) [n, A]."""

    u: torch.Tensor
    fraction: torch.Tensor
    inflation: torch.Tensor
    fit_intercept: bool

    @classmethod
    def build(
        cls, x: torch.Tensor, grid: torch.Tensor, fit_intercept: bool, dtype: torch.dtype
    ) -> LeaveOneOutPath:
        _, u, s, _ = centred_svd(x, fit_intercept)
        fraction = s[:, None] * shrinkage(s, grid)
        leverage = (u**2) @ fraction + (1.0 / u.shape[0] if fit_intercept else 0.0)
        return cls(u.to(dtype), fraction.to(dtype), (1.0 / (1.0 - leverage)).to(dtype), fit_intercept)

    def scores(self, y: torch.Tensor) -> torch.Tensor:
        """Minus the mean squared LOO error [A, t] of every alpha for targets ``y`` [n, t]."""
        centred = y - y.mean(0) if self.fit_intercept else y
        uty = self.u.T @ centred
        out = torch.empty(self.fraction.shape[1], y.shape[1], dtype=torch.float64)
        for a in range(self.fraction.shape[1]):
            residual = (centred - self.u @ (self.fraction[:, a, None] * uty)) * self.inflation[:, a, None]
            out[a] = -(residual**2).mean(0).double()
        return out


def best_alpha_index(scores: np.ndarray | torch.Tensor) -> np.ndarray:
    """Per target [t], the index of the best score in [A, t]; ties and NaN: the first alpha of the grid."""
    return np.nan_to_num(np.asarray(scores), nan=-np.inf).argmax(0)
