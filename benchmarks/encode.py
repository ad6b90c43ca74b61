"""Encoding-model ridge: ``featurelens.encode.RidgeEncoder`` vs scikit-learn ``RidgeCV`` and himalaya
``RidgeCV`` on the same features, targets and folds.

Agreement (float64; n = 1,000 rows, d = 200 features, 2,000 targets of signal-to-noise 0.01..10, 15 alphas
log-spaced 1e-2..1e5; the first 800 rows fit, the last 200 score):

  loo       ``RidgeEncoder(cv="loo")`` vs ``sklearn RidgeCV(alphas, alpha_per_target=True)`` (its default
            cv=None: efficient leave-one-out, squared error). scikit-learn refuses ``cv=`` together with
            ``alpha_per_target=True``, so LOO is the criterion both can share.
  inner-cv  ``RidgeEncoder(cv=folds)`` vs ``himalaya RidgeCV(alphas, cv=folds, fit_intercept=True,
            solver_params={"score_func": r2_score})`` on the same 5 contiguous inner folds (himalaya's
            default criterion is the summed squared error; R² per fold is what RidgeEncoder and scikit-learn's
            GridSearchCV average, so it is set to match).

Reported: fraction of targets with the same alpha, max |ΔR²| of held-out R², seconds (best of 2) and the
ratio peer / featurelens (above 1: featurelens is faster).

Large (float32): ``RidgeEncoder(cv=5)`` for 100,000 targets on n = 2,000 rows, d = 576 features, 10 alphas,
targets in chunks of 4,096. The peers run on the first 10,000 targets and their time is scaled by 10 (said
in the table): on this 2-core machine, shared with other work, they would take many minutes at full size.

    .venv/bin/python benchmarks/encode.py            # about 5 minutes here
    .venv/bin/python benchmarks/encode.py --quick    # 20,000 targets in the large case
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from machine import cpu_name, load_average, matmul_peak_gflops, vector_flags, versions

GRID = np.logspace(-2, 5, 15)


def cpu_line(peak_gflops: float) -> str:
    import torch

    return (
        f"{cpu_name()}, {os.cpu_count()} cores; {vector_flags()}, {torch.get_num_threads()} threads; "
        f"fp32 matmul peak {peak_gflops:.0f} GFLOP/s; load average {load_average():.1f}"
    )


def timed(call: Callable[[], Any], repeats: int = 2) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = call()
        best = min(best, time.perf_counter() - start)
    return best, result


def planted(n: int, d: int, t: int, dtype: type, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features [n, d] and targets [n, t]: a rank-64 signal through the features, signal-to-noise log-spaced
    0.01..10 over the targets."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d), dtype=np.float32).astype(dtype)
    mix = rng.standard_normal((d, 64), dtype=np.float32) @ rng.standard_normal((64, t), dtype=np.float32)
    signal = (x.astype(np.float32) @ mix).astype(dtype)
    signal /= signal.std(0)
    snr = np.geomspace(0.01, 10, t).astype(dtype)
    noise = rng.standard_normal((n, t), dtype=np.float32).astype(dtype)
    return x, signal * np.sqrt(snr) + noise


def himalaya_ridge(alphas: np.ndarray, cv: Any) -> Any:
    from himalaya.ridge import RidgeCV as HimalayaRidgeCV
    from himalaya.scoring import r2_score

    return HimalayaRidgeCV(alphas=alphas, cv=cv, fit_intercept=True, solver_params={"score_func": r2_score})


def held_out_r2(coef: np.ndarray, intercept: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    from featurelens.encode import r2_per_target

    return r2_per_target(y, x @ np.asarray(coef).T + np.asarray(intercept))


def agreement(rows: list[tuple[str, ...]]) -> None:
    from sklearn.linear_model import RidgeCV

    from featurelens.encode import RidgeEncoder, blocked_folds

    x, y = planted(1000, 200, 2000, np.float64)
    xt, yt, xs, ys = x[:800], y[:800], x[800:], y[800:]
    ours_s, ours = timed(lambda: RidgeEncoder(GRID, cv="loo").fit(xt, yt))
    ref_s, ref = timed(lambda: RidgeCV(alphas=GRID, alpha_per_target=True).fit(xt, yt))
    delta = np.abs(
        held_out_r2(ours.coef_, ours.intercept_, xs, ys) - held_out_r2(ref.coef_, ref.intercept_, xs, ys)
    )
    same = np.mean(ours.best_alphas_ == ref.alpha_)
    rows.append(
        (
            "loo, 2,000 targets",
            "scikit-learn RidgeCV",
            f"{same:.4f}",
            f"{delta.max():.1e}",
            f"{ours_s:.2f}",
            f"{ref_s:.2f}",
            f"{ref_s / ours_s:.1f}x",
        )
    )
    folds = blocked_folds(800, 5)
    ours_s, ours = timed(lambda: RidgeEncoder(GRID, cv=folds).fit(xt, yt))
    try:
        peer_s, peer = timed(lambda: himalaya_ridge(GRID, folds).fit(xt, yt))
    except ImportError:
        rows.append(("inner-cv, 2,000 targets", "himalaya: not installed", "", "", f"{ours_s:.2f}", "", ""))
        return
    delta = np.abs(
        held_out_r2(ours.coef_, ours.intercept_, xs, ys)
        - held_out_r2(np.asarray(peer.coef_).T, np.asarray(peer.intercept_), xs, ys)
    )
    same = np.mean(np.isclose(ours.best_alphas_, np.asarray(peer.best_alphas_), rtol=1e-6))
    rows.append(
        (
            "inner-cv, 2,000 targets",
            "himalaya RidgeCV",
            f"{same:.4f}",
            f"{delta.max():.1e}",
            f"{ours_s:.2f}",
            f"{peer_s:.2f}",
            f"{peer_s / ours_s:.1f}x",
        )
    )


def large(rows: list[tuple[str, ...]], n_targets: int) -> None:
    from sklearn.linear_model import RidgeCV

    from featurelens.encode import RidgeEncoder, blocked_folds

    alphas = np.logspace(-1, 5, 10)
    x, y = planted(2000, 576, n_targets, np.float32, seed=1)
    folds = blocked_folds(2000, 5)
    start = time.perf_counter()
    full = RidgeEncoder(alphas, cv=folds).fit(x, y)
    ours_full = time.perf_counter() - start
    subset = 10_000
    scale = n_targets / subset
    ys = np.ascontiguousarray(y[:, :subset])
    del full
    ours_s, ours = timed(lambda: RidgeEncoder(alphas, cv=folds).fit(x, ys), repeats=1)
    rows.append(
        (f"inner-cv, {n_targets:,} targets", "featurelens (all targets)", "", "", f"{ours_full:.1f}", "", "")
    )
    try:
        peer_s, peer = timed(lambda: himalaya_ridge(alphas, folds).fit(x, ys), repeats=1)
        same = np.mean(np.isclose(ours.best_alphas_, np.asarray(peer.best_alphas_), rtol=1e-5))
        rows.append(
            (
                f"inner-cv, {n_targets:,} targets",
                f"himalaya RidgeCV (10,000 x {scale:g})",
                f"{same:.4f}",
                "",
                f"{ours_full:.1f}",
                f"{peer_s * scale:.1f}",
                f"{peer_s * scale / ours_full:.1f}x",
            )
        )
    except ImportError:
        rows.append(
            (
                f"inner-cv, {n_targets:,} targets",
                "himalaya: not installed",
                "",
                "",
                f"{ours_full:.1f}",
                "",
                "",
            )
        )
    loo_s, loo = timed(lambda: RidgeEncoder(alphas, cv="loo").fit(x, ys), repeats=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_s, ref = timed(lambda: RidgeCV(alphas=alphas, alpha_per_target=True).fit(x, ys), repeats=1)
    same = np.mean(np.isclose(loo.best_alphas_, ref.alpha_, rtol=1e-5))
    rows.append(
        (
            f"loo, 10,000 of {n_targets:,} targets",
            "scikit-learn RidgeCV",
            f"{same:.4f}",
            "",
            f"{loo_s:.1f}",
            f"{ref_s:.1f}",
            f"{ref_s / loo_s:.1f}x",
        )
    )
    rows.append(
        (
            f"inner-cv, 10,000 of {n_targets:,} targets",
            "featurelens (same subset)",
            "",
            "",
            f"{ours_s:.1f}",
            "",
            "",
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="20,000 targets in the large case")
    args = parser.parse_args()
    print(cpu_line(matmul_peak_gflops()))
    print(versions(("torch", "numpy", "scikit-learn", "himalaya")))
    rows: list[tuple[str, ...]] = []
    agreement(rows)
    large(rows, 20_000 if args.quick else 100_000)
    header = ("case", "peer", "same alpha", "max |dR2|", "featurelens s", "peer s", "peer / featurelens")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"load average after: {load_average():.1f}")


if __name__ == "__main__":
    main()
