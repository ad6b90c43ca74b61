"""Folds for time series keep blocks and groups whole; FIR delays recover a planted lag and never reach
across a group boundary."""

from __future__ import annotations

import numpy as np
import pytest

from featurelens.encode import RidgeEncoder, blocked_folds, delay, delayed_weights, grouped_folds
from featurelens.errors import EncodeError


def test_blocked_folds_are_contiguous_and_cover_every_row_once() -> None:
    folds = blocked_folds(103, 5)
    tests = [test for _, test in folds]
    np.testing.assert_array_equal(np.concatenate(tests), np.arange(103))
    for train, test in folds:
        assert np.all(np.diff(test) == 1)  # one contiguous block
        assert set(train.tolist()) == set(range(103)) - set(test.tolist())
    assert max(map(len, tests)) - min(map(len, tests)) <= 1


def test_grouped_folds_never_split_a_group() -> None:
    rng = np.random.default_rng(0)
    groups = np.repeat(rng.permutation(12), rng.integers(3, 30, 12))
    folds = grouped_folds(groups, 4)
    np.testing.assert_array_equal(
        np.sort(np.concatenate([test for _, test in folds])), np.arange(len(groups))
    )
    for train, test in folds:
        assert not set(groups[train].tolist()) & set(groups[test].tolist())
    with pytest.raises(EncodeError, match="3 group"):
        grouped_folds(np.repeat([0, 1, 2], 10), 4)
    with pytest.raises(EncodeError, match="cannot fill 5 folds"):
        blocked_folds(9, 5)


def test_delays_shift_zero_fill_and_stop_at_group_boundaries() -> None:
    x = np.arange(1, 11, dtype=np.float64)[:, None]  # rows 1..10, one feature
    groups = np.array([0] * 5 + [1] * 5)
    out = delay(x, (0, 1, 2, -1), groups)
    np.testing.assert_array_equal(out[:, 0], x[:, 0])
    np.testing.assert_array_equal(out[:, 1], [0, 1, 2, 3, 4, 0, 6, 7, 8, 9])  # row 5 does not see row 4
    np.testing.assert_array_equal(out[:, 2], [0, 0, 1, 2, 3, 0, 0, 6, 7, 8])
    np.testing.assert_array_equal(out[:, 3], [2, 3, 4, 5, 0, 7, 8, 9, 10, 0])  # looking ahead stops too
    ungrouped = delay(x, (1,))
    np.testing.assert_array_equal(ungrouped[:, 0], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    with pytest.raises(EncodeError, match="distinct"):
        delay(x, (1, 1))


def test_fir_delays_recover_a_planted_lagged_response() -> None:
    """y(t) = x(t - 2) @ w + noise: the delay-2 weights carry the response, other delays nearly nothing."""
    rng = np.random.default_rng(1)
    n, d, t = 3000, 6, 4
    groups = np.repeat(np.arange(10), n // 10)
    x = rng.normal(size=(n, d))
    w = rng.normal(size=(d, t))
    lagged = delay(x, (2,), groups)
    y = lagged @ w + 0.5 * rng.normal(size=(n, t))
    delays = (0, 1, 2, 3, 4)
    model = RidgeEncoder(cv=5).fit(delay(x, delays, groups), y, groups)
    weights = delayed_weights(model.coef_, len(delays))  # [t, delays, d]
    energy = (weights**2).sum(2)  # [t, delays]
    assert np.all(energy.argmax(1) == delays.index(2))
    assert np.all(energy[:, 2] > 50 * np.delete(energy, 2, axis=1).max(1))
    for j in range(t):
        assert np.corrcoef(weights[j, 2], w[:, j])[0, 1] > 0.99
