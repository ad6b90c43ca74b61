"""Noise ceilings from repeats of a known signal plus noise: both estimates recover the true reliability,
the true model normalises to 1, nothing is clipped, and an impossible ceiling is NaN with a reason."""

from __future__ import annotations

import numpy as np
import pytest

from featurelens.encode import (
    EncodeSettings,
    cross_validate_encoding,
    explainable_variance,
    normalised_scores,
    r2_per_target,
    split_half_reliability,
)
from featurelens.errors import EncodeError


def repeats_of(signal: np.ndarray, noise_sd: np.ndarray, repeats: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return signal[None] + rng.normal(size=(repeats, *signal.shape)) * noise_sd


def true_reliability(signal_var: np.ndarray, noise_sd: np.ndarray, repeats: int) -> np.ndarray:
    """Share of the repeat mean's variance that is signal: v / (v + sigma² / R)."""
    return signal_var / (signal_var + noise_sd**2 / repeats)


@pytest.mark.parametrize("repeats", [2, 4, 5])
def test_both_ceilings_recover_the_true_reliability(repeats: int) -> None:
    """100 targets per reliability level: the mean estimate is within 0.01 of the truth (unbiased; about 3.5
    standard errors), and the true model's mean R² against the repeat mean equals the mean ceiling within
    0.01 (normalised ≈ 1)."""
    rng = np.random.default_rng(repeats)
    n, t = 2000, 400
    noise_sd = np.repeat([0.5, 1.0, 2.0, 4.0], t // 4)
    signal = rng.normal(size=(n, t))
    y = repeats_of(signal, noise_sd, repeats, seed=100 + repeats)
    truth = true_reliability(np.ones(t), noise_sd, repeats)
    ev = explainable_variance(y)
    sh = split_half_reliability(y)
    assert np.all(ev <= 1) and np.all(sh <= 1)
    true_model_r2 = r2_per_target(y.mean(0), signal)
    for level in np.unique(noise_sd):
        chosen = noise_sd == level
        assert abs(ev[chosen].mean() - truth[chosen][0]) < 0.01
        assert abs(sh[chosen].mean() - truth[chosen][0]) < 0.01
        assert abs(true_model_r2[chosen].mean() - ev[chosen].mean()) < 0.01
        assert abs(true_model_r2[chosen].mean() - truth[chosen][0]) < 0.01


def test_pure_noise_ceilings_centre_on_zero_and_are_not_clipped() -> None:
    y = np.random.default_rng(1).normal(size=(4, 300, 400))  # no signal at all
    ev = explainable_variance(y)
    assert abs(ev.mean()) < 0.01  # bias-corrected: centred on 0, not on a positive floor
    assert (ev < 0).mean() > 0.3  # negative estimates kept
    raw = np.full(400, 0.01)
    normalised, reasons = normalised_scores(raw, ev)
    assert np.all(np.isnan(normalised[ev <= 0]))
    assert all("<= 0" in reasons[i] for i in np.flatnonzero(ev <= 0))
    np.testing.assert_allclose(normalised[ev > 0], 0.01 / ev[ev > 0])  # above 1 stays above 1
    assert (normalised[ev > 0] > 1).any()


def test_cross_validated_model_of_the_true_features_normalises_to_one() -> None:
    """Features that determine the signal exactly: raw R² is the ceiling (minus a little estimation), so
    normalised ≈ 1; raw, ceiling and normalised are reported separately."""
    rng = np.random.default_rng(2)
    n, d, t, repeats = 1500, 10, 30, 4
    x = rng.normal(size=(n, d))
    signal = x @ rng.normal(size=(d, t)) / np.sqrt(d)
    noise_sd = np.geomspace(0.5, 4, t)
    y = repeats_of(signal, noise_sd, repeats, seed=3)
    result = cross_validate_encoding(x, y, EncodeSettings(folds=5))
    assert result.repeats == repeats and result.ceiling is not None and result.normalised is not None
    truth = true_reliability(signal.var(0), noise_sd, repeats)
    np.testing.assert_allclose(result.ceiling, truth, atol=0.05)
    np.testing.assert_allclose(result.normalised, result.raw_r2 / result.ceiling)
    assert abs(np.median(result.normalised) - 1) < 0.03
    assert np.all(result.raw_r2 < result.ceiling + 0.05)
    rows = result.target_rows()
    assert {"raw_r2", "ceiling", "normalised", "explainable_variance", "split_half"} <= set(rows[0])


def test_one_repeat_and_constant_targets() -> None:
    x = np.random.default_rng(4).normal(size=(100, 3))
    with pytest.raises(EncodeError, match="repeats axis has length 1"):
        cross_validate_encoding(x, np.zeros((1, 100, 2)), EncodeSettings())
    with pytest.raises(EncodeError, match="at least 2 repeats"):
        explainable_variance(np.zeros((1, 100, 2)))
    y = repeats_of(x @ np.ones((3, 2)), np.ones(2), 3)
    y[:, :, 1] = 5.0  # a constant target
    result = cross_validate_encoding(x, y, EncodeSettings(permutations=20))
    assert np.isfinite(result.raw_r2[0]) and np.isnan(result.raw_r2[1])
    assert result.pvalues is not None and np.isnan(result.pvalues[1])
    assert result.normalised is not None and np.isnan(result.normalised[1])
    assert result.reasons[0] == "" and "constant" in result.reasons[1]
