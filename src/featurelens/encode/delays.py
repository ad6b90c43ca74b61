"""Finite-impulse-response delays: the response at row t is modelled from the features at t - k for every
delay k, so one linear model learns a response's time course (a haemodynamic lag, a slow behaviour).

Delayed copies are zero-filled where the earlier row does not exist, and never reach across a group
boundary (a run, a story): the first rows of each group see zeros, not the end of the previous group.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from featurelens.errors import EncodeError


def delay(
    x: np.ndarray, delays: Sequence[int] = (1, 2, 3, 4), groups: np.ndarray | None = None
) -> np.ndarray:
    """Shifted copies of ``x`` [n, d] side by side: [n, d * len(delays)], block j holding x[t - delays[j]].

    Negative delays look ahead (x[t + |k|]); delay 0 is ``x`` itself. Rows are in time order within each
    group; ``groups`` [n] labels contiguous runs, and no copy crosses from one run into the next.
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise EncodeError(f"delays need features as a [rows, features] array, got shape {x.shape}")
    if len(delays) == 0 or len(set(delays)) != len(delays):
        raise EncodeError(f"delays must be distinct integers, at least one, got {list(delays)}")
    n = len(x)
    run = _runs(groups, n)
    rows = np.arange(n)
    out = np.zeros((n, x.shape[1] * len(delays)), dtype=x.dtype)
    for j, k in enumerate(delays):
        source = rows - int(k)
        valid = (source >= 0) & (source < n)
        valid[valid] &= run[source[valid]] == run[valid]
        out[valid, j * x.shape[1] : (j + 1) * x.shape[1]] = x[source[valid]]
    return out


def _runs(groups: np.ndarray | None, n: int) -> np.ndarray:
    """Contiguous run index [n]: a new run wherever the group label changes."""
    if groups is None:
        return np.zeros(n, dtype=np.int64)
    groups = np.asarray(groups)
    if len(groups) != n:
        raise EncodeError(f"{len(groups)} group labels for {n} rows; give one group per row")
    changes = np.ones(n, dtype=bool)
    changes[1:] = groups[1:] != groups[:-1]
    return np.cumsum(changes) - 1


def delayed_weights(coef: np.ndarray, n_delays: int) -> np.ndarray:
    """Weights [targets, d * n_delays] of a model on :func:`delay`-ed features as [targets, n_delays, d]."""
    coef = np.asarray(coef)
    return coef.reshape(coef.shape[0], n_delays, coef.shape[1] // n_delays)


def delayed_bands(bands: Sequence[slice], n_features: int, n_delays: int) -> list[np.ndarray]:
    """Column indices of each feature band (slices of the ``n_features`` undelayed columns) once every
    delay's copy is stacked by :func:`delay`."""
    return [
        np.concatenate([np.arange(n_features)[band] + j * n_features for j in range(n_delays)])
        for band in bands
    ]
