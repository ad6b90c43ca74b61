"""Banded ridge: a band of pure noise gets a large alpha (or is left out), the signal band is recovered as
well as by ridge on that band alone, and better than one alpha for both bands."""

from __future__ import annotations

import numpy as np
import pytest

from featurelens.encode import BandedRidgeEncoder, FixedAlphaRidge, RidgeEncoder, band_scalings
from featurelens.errors import EncodeError


def test_a_noise_band_is_shrunk_away_and_the_signal_band_recovered() -> None:
    rng = np.random.default_rng(0)
    n, signal_width, noise_width, t = 900, 10, 120, 8
    x_signal, x_noise = rng.normal(size=(n, signal_width)), rng.normal(size=(n, noise_width))
    y = x_signal @ rng.normal(size=(signal_width, t)) / np.sqrt(signal_width) + rng.normal(size=(n, t))
    x = np.hstack([x_signal, x_noise])
    train, test = slice(0, 500), slice(500, None)
    bands = [slice(0, signal_width), slice(signal_width, None)]
    banded = BandedRidgeEncoder(bands, n_candidates=10).fit(x[train], y[train])
    assert banded.band_alphas_.shape == (t, 2)
    ratio = banded.band_alphas_[:, 1] / banded.band_alphas_[:, 0]
    assert np.all(ratio >= 100)  # noise band: alpha at least 100x the signal band's (inf: left out)
    scores = banded.score(x[test], y[test])
    alone = RidgeEncoder().fit(x_signal[train], y[train]).score(x_signal[test], y[test])
    together = RidgeEncoder().fit(x[train], y[train]).score(x[test], y[test])
    assert np.mean(scores) > np.mean(alone) - 0.02
    assert np.mean(scores) > np.mean(together) + 0.05
    weights = banded.coef_[:, :signal_width]
    assert np.abs(banded.coef_[:, signal_width:]).max() < 0.1 * np.abs(weights).max()


def test_banded_ridge_is_exact_ridge_for_its_chosen_band_alphas() -> None:
    """Each target's fit is the closed form with penalty sum_b alpha_b ||w_b||²: scaling band b by
    sqrt(alpha / alpha_b) and solving plain ridge with alpha gives the same weights."""
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(200, 12)), rng.normal(size=(200, 3)) + rng.normal(size=(200, 1))
    bands = [np.arange(0, 5), np.arange(5, 12)]
    model = BandedRidgeEncoder(bands, alphas=(1.0, 30.0), n_candidates=4, cv="loo").fit(x, y)
    for j in range(3):
        penalty = np.concatenate([np.full(5, model.band_alphas_[j, 0]), np.full(7, model.band_alphas_[j, 1])])
        kept = np.isfinite(penalty)
        xc, yc = x[:, kept] - x[:, kept].mean(0), y[:, j] - y[:, j].mean()
        expected = np.linalg.solve(xc.T @ xc + np.diag(penalty[kept]), xc.T @ yc)
        np.testing.assert_allclose(model.coef_[j, kept], expected, atol=1e-10)
        assert np.all(model.coef_[j, ~kept] == 0)


def test_band_checks_and_candidates() -> None:
    candidates = band_scalings(3, 5, seed=0)
    np.testing.assert_allclose(candidates.sum(1), 1.0)
    np.testing.assert_array_equal(candidates[:3], np.eye(3))
    x, y = np.random.default_rng(2).normal(size=(50, 6)), np.random.default_rng(3).normal(size=(50, 2))
    with pytest.raises(EncodeError, match="exactly once"):
        BandedRidgeEncoder([slice(0, 4), slice(3, 6)]).fit(x, y)
    with pytest.raises(EncodeError, match="exactly once"):
        BandedRidgeEncoder([slice(0, 4)]).fit(x, y)
    one_band = BandedRidgeEncoder([slice(0, 6)], cv="loo").fit(x, y)
    plain = RidgeEncoder(cv="loo").fit(x, y)
    np.testing.assert_allclose(one_band.coef_, plain.coef_, atol=1e-10)
    np.testing.assert_allclose(
        one_band.coef_, FixedAlphaRidge(plain.best_alphas_).fit(x, y).coef_, atol=1e-10
    )
