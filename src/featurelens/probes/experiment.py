"""A probing experiment: activations of one hook (or a dictionary's features), one or more targets,
cross-validation grouped by document, baselines beside every score, and a k-sparse sweep.

Per target and fold, on the training rows only: the dense probe, the k-sparse probes (units ranked on the
training rows, refit on the top k) for every k, a majority-class predictor and the dense probe refit on
shuffled training labels; all scored on the held-out fold. Classification is scored by balanced accuracy
(chance = 1 / classes whatever the class balance; plain accuracy is reported too), regression by R².
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from featurelens.errors import ProbeError
from featurelens.probes.estimators import (
    LogisticProbe,
    RidgeProbe,
    SparseProbe,
    balanced_accuracy,
    r_squared,
)
from featurelens.probes.folds import grouped_folds
from featurelens.probes.labels import Labels
from featurelens.probes.ranking import RANKINGS, rank_units, unit_scores


@dataclass(frozen=True)
class ProbeSettings:
    """How to probe: k values of the sparse sweep, the unit ranking, folds, regularisation, seed."""

    ks: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    ranking: str = "mean_diff"
    folds: int = 5
    C: float = 1.0
    alpha: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.ranking not in RANKINGS:
            raise ProbeError(f"unknown ranking {self.ranking!r}; accepted: {', '.join(RANKINGS)}")
        if not self.ks or min(self.ks) < 1:
            raise ProbeError(f"--k takes positive integers, got {self.ks}")
        if self.C <= 0 or self.alpha < 0:
            raise ProbeError(f"need C > 0 and alpha >= 0, got C={self.C}, alpha={self.alpha}")


@dataclass
class ProbeResult:
    """One target's cross-validated scores; ``scores`` maps a probe ("dense", "majority", "shuffled",
    "k=1", ...) to its per-fold scores; ``units`` ranks every unit on all labelled rows (best first) with
    its score; ``picked`` maps k to how many folds chose each unit."""

    name: str
    kind: str
    metric: str
    rows: int
    balance: dict[str, int]
    scores: dict[str, list[float]]
    accuracy: dict[str, list[float]]
    units: list[tuple[int, float]]
    picked: dict[int, dict[int, int]]
    skipped_folds: list[str] = field(default_factory=list)

    def mean(self, probe: str) -> float:
        values = self.scores.get(probe, [])
        return float(np.mean(values)) if values else float("nan")

    def summary(self) -> dict[str, Any]:
        """JSON-ready: means and standard deviations beside the per-fold numbers."""
        record = asdict(self)
        record["mean"] = {probe: self.mean(probe) for probe in self.scores}
        record["std"] = {probe: float(np.std(v)) if v else float("nan") for probe, v in self.scores.items()}
        record["picked"] = {str(k): {str(u): n for u, n in v.items()} for k, v in self.picked.items()}
        return record


def _dense(kind: str, settings: ProbeSettings) -> LogisticProbe | RidgeProbe:
    if kind == "classification":
        return LogisticProbe(C=settings.C, class_weight="balanced")
    return RidgeProbe(alpha=settings.alpha)


def cross_validate(x: np.ndarray, labels: Labels, groups: np.ndarray, settings: ProbeSettings) -> ProbeResult:
    """Grouped cross-validation of dense, k-sparse and baseline probes of ``labels`` on ``x`` [n, units].

    Rows where ``labels.keep`` is False are left out; ``groups`` [n] are the rows' documents.
    """
    if len(x) != len(labels.values) or len(groups) != len(x):
        raise ProbeError(f"{len(labels.values):,} labels and {len(groups):,} documents for {len(x):,} rows")
    width = x.shape[1]
    too_wide = [k for k in settings.ks if k > width]
    if too_wide:
        raise ProbeError(f"k = {too_wide[0]} exceeds the {width} units probed; give --k up to {width}")
    x, y, groups = x[labels.keep], labels.values[labels.keep], groups[labels.keep]
    classification = labels.kind == "classification"
    ranking = settings.ranking if classification else "correlation"
    rng = np.random.default_rng(settings.seed)
    scores: dict[str, list[float]] = {}
    accuracy: dict[str, list[float]] = {}
    picked: dict[int, dict[int, int]] = {k: {} for k in settings.ks}
    skipped: list[str] = []

    def record(probe: str, predicted: np.ndarray, truth: np.ndarray) -> None:
        if classification:
            scores.setdefault(probe, []).append(balanced_accuracy(truth, predicted))
            accuracy.setdefault(probe, []).append(float((predicted == truth).mean()))
        else:
            scores.setdefault(probe, []).append(r_squared(truth.astype(np.float64), predicted))

    for fold, test in enumerate(grouped_folds(groups, settings.folds, settings.seed)):
        train = np.setdiff1d(np.arange(len(y)), test, assume_unique=True)
        if classification and len(np.unique(y[train])) < 2:
            skipped.append(f"fold {fold}: one class only in its training rows")
            continue
        x_train, y_train, x_test, y_test = x[train], y[train], x[test], y[test]
        record("dense", _dense(labels.kind, settings).fit(x_train, y_train).predict(x_test), y_test)
        if classification:
            values, counts = np.unique(y_train, return_counts=True)
            record("majority", np.full(len(test), values[counts.argmax()], dtype=y.dtype), y_test)
        else:
            record("majority", np.full(len(test), float(np.mean(y_train))), y_test)
        shuffled = _dense(labels.kind, settings).fit(x_train, rng.permutation(y_train))
        record("shuffled", shuffled.predict(x_test), y_test)
        order = rank_units(x_train, y_train, ranking)
        for k in settings.ks:
            sparse = SparseProbe(k, ranking, _dense(labels.kind, settings)).fit(x_train, y_train, order)
            record(f"k={k}", sparse.predict(x_test), y_test)
            for unit in sparse.units_.tolist():
                picked[k][unit] = picked[k].get(unit, 0) + 1
    if not scores:
        raise ProbeError(
            f"target {labels.name!r}: no fold had two classes in its training rows ({skipped[0]})"
        )
    all_scores = unit_scores(x, y, ranking)
    top = np.argsort(-all_scores, kind="stable")[: max(settings.ks)]
    balance = {}
    if classification:
        balance = {str(v): int(c) for v, c in zip(*np.unique(y, return_counts=True), strict=True)}
    return ProbeResult(
        name=labels.name,
        kind=labels.kind,
        metric="balanced accuracy" if classification else "R²",
        rows=len(y),
        balance=balance,
        scores=scores,
        accuracy=accuracy,
        units=[(int(u), float(all_scores[u])) for u in top],
        picked=picked,
        skipped_folds=skipped,
    )
