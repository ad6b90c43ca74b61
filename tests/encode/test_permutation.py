"""Permutation p-values per target: uniform under the null, 1 / (1 + P) for a planted signal, equal to the
count over whole cross-validations of shuffled recordings, reproducible by seed, and refused when too few
rows allow too few permutations."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.stats

from featurelens.encode import (
    EncodeSettings,
    block_permutations,
    cross_validate_encoding,
)
from featurelens.errors import EncodeError


def test_null_pvalues_are_uniform_and_planted_ones_are_small() -> None:
    """240 null targets (independent of the features) and 10 planted ones, through the whole pipeline."""
    rng = np.random.default_rng(0)
    n, d = 300, 8
    x = rng.normal(size=(n, d))
    null = rng.normal(size=(n, 240))
    planted = x @ rng.normal(size=(d, 10)) * 0.3 + rng.normal(size=(n, 10))
    settings = EncodeSettings(folds=5, permutations=199, seed=1, alphas=(0.1, 10.0, 1e3, 1e5))
    result = cross_validate_encoding(x, np.hstack([null, planted]), settings)
    assert result.pvalues is not None
    null_p, planted_p = result.pvalues[:240], result.pvalues[240:]
    assert scipy.stats.kstest(null_p, "uniform").pvalue > 0.01
    assert abs(np.mean(null_p < 0.05) - 0.05) < 0.04
    np.testing.assert_allclose(planted_p, 1 / 200)


def test_pvalues_equal_the_brute_force_count_and_repeat_by_seed() -> None:
    """Each null is the whole cross-validation (alpha choices included) redone on shuffled recordings."""
    rng = np.random.default_rng(1)
    n, d, t = 90, 4, 5
    x = rng.normal(size=(n, d))
    y = x @ rng.normal(size=(d, t)) * 0.2 + rng.normal(size=(n, t)) + 10
    settings = EncodeSettings(folds=3, inner_folds=3, alphas=(0.1, 10.0, 1e3), permutations=30, seed=3)
    result = cross_validate_encoding(x, y, settings)
    again = cross_validate_encoding(x, y, settings)
    assert result.pvalues is not None and again.pvalues is not None
    np.testing.assert_array_equal(result.pvalues, again.pvalues)
    maps = block_permutations(n, 30, seed=3)
    plain = dataclasses.replace(settings, permutations=0)
    null = np.stack([cross_validate_encoding(x, y[m], plain).raw_r2 for m in maps])
    np.testing.assert_allclose(result.pvalues, (1 + (null >= result.raw_r2 - 1e-9).sum(0)) / 31)


def test_blocks_stay_together_and_too_few_rows_are_refused() -> None:
    maps = block_permutations(10, 5, block=3, seed=0)
    for m in maps:
        np.testing.assert_array_equal(np.sort(m), np.arange(10))
        starts = [i for i in range(10) if m[i] % 3 == 0]
        for i in starts:
            length = min(3, 10 - m[i])  # the last block holds one row
            np.testing.assert_array_equal(m[i : i + length], np.arange(m[i], m[i] + length))
    with pytest.raises(EncodeError, match="only 24 distinct permutations, fewer than the 100 asked"):
        block_permutations(12, 100, block=3)  # 4 blocks: 4! = 24 orders
    x = np.random.default_rng(2).normal(size=(40, 3))
    with pytest.raises(EncodeError, match="distinct permutations"):
        cross_validate_encoding(x, x[:, :2], EncodeSettings(folds=2, permutations=50, permutation_block=10))
