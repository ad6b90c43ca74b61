"""A cross-validated encoding model end to end, on arrays: features -> recordings of any kind.

Per outer fold (contiguous blocks, or whole groups): features standardised with the training rows' mean
and spread, each target's alpha (and band scalings, for banded ridge) chosen on the training rows only
(inner folds of the same kind, or efficient leave-one-out), refit on them, the test rows predicted. Then,
per target:

* ``raw_r2`` — R² of the held-out predictions pooled over every row (1 - SSE / SST with the mean of all
  rows; ``fold_r2`` keeps each fold's own R²);
* ``ceiling`` — with repeated recordings [R, n, t] (the model is fit to their mean): the noise ceiling
  (:mod:`featurelens.encode.ceiling`), both estimates kept; ``normalised`` = raw / ceiling, NaN with a
  reason where the ceiling is not positive; nothing is clipped;
* ``pvalue`` — with ``permutations`` > 0, the permutation p-value of ``raw_r2``
  (:mod:`featurelens.encode.permutation`: the recordings shuffled in blocks and the whole
  cross-validation, alpha choices included, redone for each of the permutations; plain ridge only);
* ``reason`` — why any of these is NaN ("" when none is).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from featurelens.encode.banded import BandedRidgeEncoder
from featurelens.encode.ceiling import (
    CEILINGS,
    explainable_variance,
    normalised_scores,
    split_half_reliability,
)
from featurelens.encode.delays import delay, delayed_bands
from featurelens.encode.folds import make_folds
from featurelens.encode.permutation import FoldRefit, check_permutation_count, permutation_pvalues
from featurelens.encode.ridge import DEFAULT_ALPHAS, RidgeEncoder, check_alphas, inner_folds, r2_per_target
from featurelens.errors import EncodeError

ALPHA_SELECTIONS = ("inner-cv", "loo")
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class EncodeSettings:
    """How a model is fit and scored; the CLI maps its flags onto these fields one to one.

    ``bands`` are (start, stop) column ranges of the undelayed features (empty: plain ridge); with
    ``delays`` every delayed copy of a band's columns belongs to it. ``alpha_selection``: "inner-cv"
    (``inner_folds`` folds of the training rows, blocked or grouped like the outer ones) or "loo".
    """

    folds: int = 5
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    alpha_selection: str = "inner-cv"
    inner_folds: int = 5
    delays: tuple[int, ...] = ()
    bands: tuple[tuple[int, int], ...] = ()
    band_candidates: int = 20
    standardize: bool = True
    ceiling: str = "explainable-variance"
    permutations: int = 0
    permutation_block: int = 1
    seed: int = 0
    drop_nan: bool = False

    def __post_init__(self) -> None:
        check_alphas(self.alphas)
        if self.folds < 2 or self.inner_folds < 2:
            raise EncodeError(
                f"folds and inner folds must be at least 2, got {self.folds} and {self.inner_folds}"
            )
        if self.alpha_selection not in ALPHA_SELECTIONS:
            raise EncodeError(
                f"alpha selection {self.alpha_selection!r} is not one of {', '.join(ALPHA_SELECTIONS)}"
            )
        if self.ceiling not in CEILINGS:
            raise EncodeError(f"ceiling {self.ceiling!r} is not one of {', '.join(CEILINGS)}")
        if self.permutations < 0 or self.permutation_block < 1 or self.band_candidates < 0:
            raise EncodeError(
                "permutations and band candidates must be >= 0 and the permutation block >= 1, got "
                f"{self.permutations}, {self.band_candidates} and {self.permutation_block}"
            )
        if self.bands and self.permutations:
            raise EncodeError(
                "permutation nulls are for plain ridge: they redo every fold's alpha choice, which banded "
                "ridge's band search would make slow; drop --bands or --permutations"
            )
        if any(not 0 <= start < stop for start, stop in self.bands):
            raise EncodeError(
                f"bands must be ranges start:stop with 0 <= start < stop, got {list(self.bands)}"
            )


@dataclass
class EncodingResult:
    """Per target [t] (see the module docstring); per fold [F, t]; ``test_rows`` per fold."""

    names: list[str]
    raw_r2: np.ndarray
    fold_r2: np.ndarray
    alphas: np.ndarray
    reasons: list[str]
    test_rows: list[np.ndarray]
    rows: int
    dropped_rows: int
    settings: EncodeSettings
    band_alphas: np.ndarray | None = None  # [F, t, bands]
    repeats: int = 1
    ceiling: np.ndarray | None = None
    explainable_variance: np.ndarray | None = None
    split_half: np.ndarray | None = None
    normalised: np.ndarray | None = None
    pvalues: np.ndarray | None = None
    predictions: np.ndarray | None = field(default=None, repr=False)  # [n, t] held out

    def target_rows(self) -> list[dict[str, Any]]:
        """One dict per target: name, raw R², median chosen alpha, ceiling(s), normalised, p-value, reason."""
        n = len(self.names)
        columns: dict[str, Any] = {
            "target": self.names,
            "raw_r2": self.raw_r2,
            "alpha": np.median(self.alphas, axis=0),
            "ceiling": _or_nan(self.ceiling, n),
            "explainable_variance": _or_nan(self.explainable_variance, n),
            "split_half": _or_nan(self.split_half, n),
            "normalised": _or_nan(self.normalised, n),
            "pvalue": _or_nan(self.pvalues, n),
            "reason": self.reasons,
        }
        if self.band_alphas is not None:
            for b in range(self.band_alphas.shape[2]):
                columns[f"band{b}_alpha"] = np.median(self.band_alphas[:, :, b], axis=0)
        return [
            {
                key: _plain(value[i]) if not isinstance(value, list) else value[i]
                for key, value in columns.items()
            }
            for i in range(n)
        ]

    def summary(self) -> dict[str, Any]:
        """The run's counts and medians, for results.json beside the per-target list."""
        finite = self.raw_r2[np.isfinite(self.raw_r2)]
        out: dict[str, Any] = {
            "n_targets": len(self.names),
            "rows": self.rows,
            "dropped_rows": self.dropped_rows,
            "repeats": self.repeats,
            "fold_sizes": [len(rows) for rows in self.test_rows],
            "median_raw_r2": float(np.median(finite)) if len(finite) else float("nan"),
            "settings": asdict(self.settings),
        }
        if self.normalised is not None:
            usable = self.normalised[np.isfinite(self.normalised)]
            out["median_normalised"] = float(np.median(usable)) if len(usable) else float("nan")
        if self.pvalues is not None:
            out["significant_at_0.05"] = int(np.sum(self.pvalues < 0.05))
        return out


def _or_nan(values: np.ndarray | None, n: int) -> np.ndarray:
    return values if values is not None else np.full(n, np.nan)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _targets(y: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Targets [n, t] to fit (the repeat mean when ``y`` is [R, n, t]) and the repeats (or None)."""
    y = np.asarray(y)
    if not np.issubdtype(y.dtype, np.number):
        raise EncodeError(f"recordings must be numbers, got dtype {y.dtype}")
    if y.ndim == 1:
        return y[:, None], None
    if y.ndim == 2:
        return y, None
    if y.ndim == 3:
        if y.shape[0] < 2:
            raise EncodeError(
                "the repeats axis has length 1: no noise ceiling is possible from one presentation; "
                "give the recordings without a repeats axis, or at least 2 repeats"
            )
        return y.mean(0), y
    raise EncodeError(
        f"recordings must be [rows], [rows, targets] or [repeats, rows, targets], got {y.shape}"
    )


def nan_rows(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, str]:
    """Rows [n] holding a NaN or infinite value in ``x`` [n, d] or ``y`` ([n, t] or [R, n, t]), and a
    description of them for an error message."""
    bad_x = ~np.isfinite(x).all(1)
    bad_y = ~np.isfinite(y).all(-1)
    if y.ndim == 3:
        bad_y = bad_y.any(0)
    bad = bad_x | bad_y
    first = np.flatnonzero(bad)[:3].tolist()
    return bad, (
        f"{int(bad.sum())} of {len(bad)} rows hold NaN or infinite values (features: {int(bad_x.sum())}, "
        f"recordings: {int(bad_y.sum())}; first rows {first})"
    )


def cross_validate_encoding(
    x: np.ndarray,
    y: np.ndarray,
    settings: EncodeSettings,
    groups: np.ndarray | None = None,
    names: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> EncodingResult:
    """Fit and score an encoding model of ``y`` from ``x`` [n, d] (see the module docstring).

    ``y`` is [n], [n, t], or [R, n, t] with R repeated recordings (then the ceiling is measured and the
    model fit to their mean); ``groups`` [n] keeps runs/stories/documents whole in folds (and stops
    delays crossing them); ``progress(done, total, detail)`` is called per fold and per permutation.
    """
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[1] == 0 or not np.issubdtype(x.dtype, np.number):
        raise EncodeError(
            f"features must be a numeric [rows, features] array, got shape {x.shape} ({x.dtype})"
        )
    y_fit, y_repeats = _targets(y)
    if len(y_fit) != len(x):
        raise EncodeError(
            f"features have {len(x)} rows but recordings have {len(y_fit)}; "
            "give one recording row per feature row"
        )
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != (len(x),):
            raise EncodeError(f"{groups.size} group labels for {len(x)} rows; give one group per row")
    names = [str(n) for n in names] if names is not None else [str(j) for j in range(y_fit.shape[1])]
    if len(names) != y_fit.shape[1]:
        raise EncodeError(f"{len(names)} target names for {y_fit.shape[1]} targets")
    bad, description = nan_rows(x, y if np.asarray(y).ndim == 3 else y_fit)
    if bad.any() and not settings.drop_nan:
        raise EncodeError(f"{description}; fix them or pass --drop-nan (drop_nan=True) to leave them out")
    if settings.delays:
        x = delay(x, settings.delays, groups)
    bad, _ = nan_rows(x, y if np.asarray(y).ndim == 3 else y_fit)  # a delayed NaN spoils later rows too
    keep = ~bad
    x, y_fit = x[keep], y_fit[keep]
    y_repeats = y_repeats[:, keep] if y_repeats is not None else None
    groups = groups[keep] if groups is not None else None
    dtype = np.float32 if x.dtype == np.float32 and y_fit.dtype == np.float32 else np.float64
    x, y_fit = x.astype(dtype, copy=False), y_fit.astype(dtype, copy=False)

    folds = make_folds(len(x), settings.folds, groups)
    if settings.permutations:
        check_permutation_count(len(x), settings.permutations, settings.permutation_block)
    n_bands = len(settings.bands)
    if n_bands:
        n_features = x.shape[1] // max(len(settings.delays), 1)
        if max(stop for _, stop in settings.bands) > n_features:
            raise EncodeError(
                f"bands {list(settings.bands)} reach beyond the {n_features} feature columns; "
                f"accepted: ranges within 0:{n_features}"
            )
        columns = delayed_bands(
            [slice(a, b) for a, b in settings.bands], n_features, max(len(settings.delays), 1)
        )
    total = len(folds) + settings.permutations
    n_targets = y_fit.shape[1]
    predictions = np.zeros((len(x), n_targets), dtype=dtype)
    fold_r2 = np.empty((len(folds), n_targets))
    alphas = np.empty((len(folds), n_targets))
    band_alphas = np.empty((len(folds), n_targets, n_bands)) if n_bands else None
    cv: int | str = settings.inner_folds if settings.alpha_selection == "inner-cv" else "loo"
    refits: list[FoldRefit] = []
    for f, (train, test) in enumerate(folds):
        if progress is not None:
            progress(f, total, f"fold {f + 1}/{len(folds)}")
        x_train, x_test = _standardise(x[train], x[test], settings.standardize)
        fold_groups = groups[train] if groups is not None else None
        model: RidgeEncoder | BandedRidgeEncoder
        if n_bands:
            model = BandedRidgeEncoder(
                columns, settings.alphas, settings.band_candidates, cv, seed=settings.seed
            ).fit(x_train, y_fit[train], fold_groups)
            assert band_alphas is not None
            band_alphas[f] = model.band_alphas_
        else:
            model = RidgeEncoder(settings.alphas, cv).fit(x_train, y_fit[train], fold_groups)
            if settings.permutations:
                inner = inner_folds(cv, len(train), fold_groups)
                grid = check_alphas(settings.alphas)
                refits.append(FoldRefit.build(x_train, x_test, train, test, grid, inner))
        predictions[test] = model.predict(x_test)
        fold_r2[f] = r2_per_target(y_fit[test], predictions[test])
        alphas[f] = model.best_alphas_
    raw = r2_per_target(y_fit, predictions)
    constant = ~(np.asarray(y_fit, dtype=np.float64).std(0) > 0)
    reasons = ["constant target: R² is undefined" if c else "" for c in constant]
    result = EncodingResult(
        names=names,
        raw_r2=raw,
        fold_r2=fold_r2,
        alphas=alphas,
        reasons=reasons,
        test_rows=[test for _, test in folds],
        rows=len(x),
        dropped_rows=int(bad.sum()),
        settings=settings,
        band_alphas=band_alphas,
        predictions=predictions,
    )
    if y_repeats is not None:
        result.repeats = y_repeats.shape[0]
        result.explainable_variance = explainable_variance(y_repeats)
        result.split_half = split_half_reliability(y_repeats, seed=settings.seed)
        result.ceiling = (
            result.explainable_variance if settings.ceiling == "explainable-variance" else result.split_half
        )
        result.normalised, ceiling_reasons = normalised_scores(raw, result.ceiling)
        result.reasons = [r or c for r, c in zip(reasons, ceiling_reasons, strict=True)]
    if settings.permutations:
        done = len(folds)

        def permuted(p: int) -> None:
            if progress is not None and (p % 10 == 0 or p == settings.permutations):
                progress(done + p, total, "permutations")

        result.pvalues, _ = permutation_pvalues(
            y_fit, refits, settings.permutations, settings.permutation_block, settings.seed, permuted
        )
    if progress is not None:
        progress(total, total, "done")
    return result


def _standardise(train: np.ndarray, test: np.ndarray, standardize: bool) -> tuple[np.ndarray, np.ndarray]:
    """Both scaled by the training rows' mean and spread (a constant column keeps spread 1)."""
    if not standardize:
        return train, test
    mean = train.mean(0, dtype=np.float64)
    std = train.std(0, dtype=np.float64)
    std = np.where(std > 0, std, 1.0)
    return ((train - mean) / std).astype(train.dtype), ((test - mean) / std).astype(train.dtype)
