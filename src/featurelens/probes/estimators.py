"""Probes as scikit-learn-style estimators: ``fit(x, y)``, ``predict(x)``, ``score(x, y)``, on arrays [n, d].

* :class:`LogisticProbe` — L2 logistic regression, the same objective as scikit-learn's
  ``LogisticRegression(C=C)`` (binary: one weight vector; more classes: multinomial), solved in float64 by
  L-BFGS. Features are standardised with the training mean and spread first (``standardize=True``), as a
  ``StandardScaler`` would, so ``C`` means the same on every hook.
* :class:`RidgeProbe` — ridge regression, scikit-learn's ``Ridge(alpha=alpha)`` (unpenalised intercept),
  solved exactly (primal or dual, whichever system is smaller).
* :class:`SparseProbe` — a k-sparse probe: rank units on the training rows (mean difference, F statistic,
  or correlation for regression: :mod:`featurelens.probes.ranking`), keep the top ``k``, refit the dense
  probe on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from featurelens.errors import ProbeError
from featurelens.probes.ranking import rank_units

SMALL_PROBLEM = 2_000_000  # entries of the data matrix below which L-BFGS runs on one thread


def fit_logistic(
    z: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    penalty: float,
    max_iter: int = 100,
    weight: torch.Tensor | None = None,
    tol: float = 1e-4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights [d, c] and bias [c] minimising mean (``weight``-ed) cross-entropy + ``penalty`` *
    ||weights||², in ``z``'s dtype (float64 for exact comparisons, float32 for speed); returned as float64.

    ``y`` [n] holds class indices 0..n_classes-1; two classes use one logit (c = 1, sigmoid), more use
    one per class (softmax). The bias is not penalised. ``weight`` [n] scales each row's loss. L-BFGS
    stops once no gradient component exceeds ``tol`` or after ``max_iter`` iterations.
    """
    z = z if z.dtype == torch.float32 else z.double()
    y = y.to(z.dtype) if n_classes == 2 else y.long()
    weight = weight.to(z.dtype) if weight is not None else None
    columns = 1 if n_classes == 2 else n_classes
    weights = torch.zeros(z.shape[1], columns, dtype=z.dtype, requires_grad=True)
    bias = torch.zeros(columns, dtype=z.dtype, requires_grad=True)
    optimiser = torch.optim.LBFGS(
        [weights, bias],
        max_iter=max_iter,
        tolerance_grad=tol,
        tolerance_change=1e-12 * tol,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def loss() -> torch.Tensor:
        optimiser.zero_grad()
        logits = z @ weights + bias
        if columns == 1:
            losses = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], y, reduction="none")
        else:
            losses = torch.nn.functional.cross_entropy(logits, y, reduction="none")
        value = (losses * weight).mean() if weight is not None else losses.mean()
        value = value + penalty * weights.pow(2).sum()
        value.backward()
        return value

    threads = torch.get_num_threads()
    if z.numel() < SMALL_PROBLEM:
        torch.set_num_threads(1)  # thread start-up dominates tiny products (k-sparse fits): 10x slower
    try:
        with torch.enable_grad():
            optimiser.step(loss)
    finally:
        torch.set_num_threads(threads)
    return weights.detach().double(), bias.detach().double()


@dataclass
class _Scaler:
    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, standardize: bool) -> _Scaler:
        if not standardize:
            return cls(np.zeros(x.shape[1]), np.ones(x.shape[1]))
        std = x.std(0)
        return cls(x.mean(0), np.where(std > 0, std, 1.0))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Standardised ``x``, float32 when ``x`` is (the solver's matrix products are memory-bound)."""
        x = np.asarray(x)
        dtype = np.float32 if x.dtype == np.float32 else np.float64
        return ((x - self.mean) / self.scale).astype(dtype, copy=False)


def _check_xy(x: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or len(x) == 0:
        raise ProbeError(f"probe inputs must be a non-empty [rows, units] array, got shape {x.shape}")
    if y is not None and len(y) != len(x):
        raise ProbeError(f"{len(y)} labels for {len(x)} rows; give one label per row")
    return x


@dataclass
class LogisticProbe:
    """L2 logistic regression (see the module docstring). ``classes_`` holds the sorted labels."""

    C: float = 1.0
    standardize: bool = True
    max_iter: int = 100
    tol: float = 1e-4
    class_weight: str | None = None  # "balanced": rows weighted n / (classes * n_class), as in scikit-learn
    classes_: np.ndarray = field(init=False, repr=False)
    coef_: np.ndarray = field(init=False, repr=False)
    intercept_: np.ndarray = field(init=False, repr=False)

    def fit(self, x: np.ndarray, y: np.ndarray) -> LogisticProbe:
        x = _check_xy(x, y)
        if self.C <= 0:
            raise ProbeError(f"C must be positive, got {self.C}")
        self.classes_, index = np.unique(np.asarray(y), return_inverse=True)
        if len(self.classes_) < 2:
            raise ProbeError(f"a classification probe needs two classes or more; every label is {y[0]!r}")
        self._scaler = _Scaler.fit(x, self.standardize)
        if self.class_weight not in (None, "balanced"):
            raise ProbeError(f"class_weight must be None or 'balanced', got {self.class_weight!r}")
        weight = None
        if self.class_weight == "balanced":
            counts = np.bincount(index)
            weight = torch.from_numpy(len(index) / (len(counts) * counts[index]))
        penalty = 1.0 / (2.0 * self.C * len(x))  # scikit-learn: C * sum(loss) + ||w||² / 2
        weights, bias = fit_logistic(
            torch.from_numpy(self._scaler(x)),
            torch.from_numpy(index),
            len(self.classes_),
            penalty,
            self.max_iter,
            weight,
            self.tol,
        )
        self.coef_, self.intercept_ = weights.numpy().T, bias.numpy()
        return self

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        """Logits [n] (two classes: of the second) or [n, classes]."""
        logits = self._scaler(_check_xy(x)) @ self.coef_.T + self.intercept_
        return logits[:, 0] if logits.shape[1] == 1 else logits

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        logits = self.decision_function(x)
        if logits.ndim == 1:
            p = 1.0 / (1.0 + np.exp(-logits))
            return np.stack([1 - p, p], axis=1)
        shifted = np.exp(logits - logits.max(1, keepdims=True))
        return shifted / shifted.sum(1, keepdims=True)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.classes_[self.predict_proba(x).argmax(1)]

    def score(self, x: np.ndarray, y: np.ndarray) -> float:
        """Accuracy."""
        return float((self.predict(x) == np.asarray(y)).mean())

    def balanced_score(self, x: np.ndarray, y: np.ndarray) -> float:
        """Balanced accuracy: the mean over classes of the share of its rows predicted right (chance 1/K)."""
        return balanced_accuracy(np.asarray(y), self.predict(x))


@dataclass
class RidgeProbe:
    """Ridge regression of a continuous target (see the module docstring)."""

    alpha: float = 1.0
    standardize: bool = True
    coef_: np.ndarray = field(init=False, repr=False)
    intercept_: float = field(init=False, repr=False)

    def fit(self, x: np.ndarray, y: np.ndarray) -> RidgeProbe:
        x = _check_xy(x, y)
        target = np.asarray(y, dtype=np.float64)
        if self.alpha < 0 or not np.isfinite(target).all():
            raise ProbeError("ridge needs alpha >= 0 and finite targets")
        self._scaler = _Scaler.fit(x, self.standardize)
        z = self._scaler(x)  # float32 for float32 input: the products below are the cost
        z_mean, y_mean = z.mean(0, dtype=np.float64), target.mean()
        zc, yc = z - z_mean.astype(z.dtype), (target - y_mean).astype(z.dtype)
        n, d = zc.shape
        if d <= n:
            gram = (zc.T @ zc).astype(np.float64) + self.alpha * np.eye(d)
            self.coef_ = np.linalg.solve(gram, (zc.T @ yc).astype(np.float64))
        else:
            gram = (zc @ zc.T).astype(np.float64) + self.alpha * np.eye(n)
            self.coef_ = (zc.T @ np.linalg.solve(gram, yc.astype(np.float64)).astype(z.dtype)).astype(
                np.float64
            )
        self.intercept_ = float(y_mean - z_mean @ self.coef_)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self._scaler(_check_xy(x)) @ self.coef_ + self.intercept_

    def score(self, x: np.ndarray, y: np.ndarray) -> float:
        """R² (1 - residual / total sum of squares)."""
        return r_squared(np.asarray(y, dtype=np.float64), self.predict(x))


def balanced_accuracy(y: np.ndarray, predicted: np.ndarray) -> float:
    """Mean per-class recall over the classes present in ``y``."""
    return float(np.mean([(predicted[y == label] == label).mean() for label in np.unique(y)]))


def r_squared(y: np.ndarray, predicted: np.ndarray) -> float:
    total = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - predicted) ** 2).sum()) / total if total > 0 else 0.0


@dataclass
class SparseProbe:
    """Rank units on the training rows by ``ranking``, keep the top ``k`` (``units_``), fit ``base`` on
    them. ``base`` is a :class:`LogisticProbe` or :class:`RidgeProbe` (its settings are reused)."""

    k: int
    ranking: str = "mean_diff"
    base: LogisticProbe | RidgeProbe = field(default_factory=LogisticProbe)
    units_: np.ndarray = field(init=False, repr=False)

    def fit(self, x: np.ndarray, y: np.ndarray, order: np.ndarray | None = None) -> SparseProbe:
        """Fit on the top ``k`` units; ``order`` [units] is a ranking already made on these rows (a sweep
        over k ranks once)."""
        x = _check_xy(x, y)
        if not 1 <= self.k <= x.shape[1]:
            raise ProbeError(f"k = {self.k} is outside 1..{x.shape[1]} (the number of units)")
        ranked = order if order is not None else rank_units(x, np.asarray(y), self.ranking)
        self.units_ = ranked[: self.k]
        self.base.fit(x[:, self.units_], y)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.base.predict(_check_xy(x)[:, self.units_])

    def score(self, x: np.ndarray, y: np.ndarray) -> float:
        return self.base.score(_check_xy(x)[:, self.units_], y)
