"""Ridge against scikit-learn (fixed alphas, per-target alpha choices by inner folds and by leave-one-out),
and the known answer of planted weights: held-out R² = s / (1 + s) at signal-to-noise s."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import Ridge, RidgeCV
from sklearn.model_selection import GridSearchCV

from featurelens.encode import FixedAlphaRidge, RidgeEncoder, blocked_folds, grouped_folds
from featurelens.errors import EncodeError

GRID = np.logspace(-2, 5, 15)


def data(n: int, d: int, t: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Offset, unevenly scaled features and targets of mixed signal-to-noise (alpha choices spread out)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * rng.uniform(0.5, 3, d) + 2.0
    noise = rng.normal(size=(n, t)) * np.geomspace(0.3, 30, t)
    return x, x @ rng.normal(size=(d, t)) + noise - 4.0


@pytest.mark.parametrize(("n", "d", "fit_intercept"), [(200, 30, True), (40, 80, True), (120, 20, False)])
def test_fixed_alpha_ridge_equals_scikit_learn(n: int, d: int, fit_intercept: bool) -> None:
    x, y = data(n, d, 6)
    for alpha in (3.0, np.array([0.01, 0.5, 10.0, 300.0, 1e4, 7.0])):  # one alpha, then one per target
        ours = FixedAlphaRidge(alpha, fit_intercept=fit_intercept).fit(x, y)
        reference = Ridge(alpha=alpha, fit_intercept=fit_intercept).fit(x, y)
        np.testing.assert_allclose(ours.coef_, reference.coef_, atol=1e-8, rtol=1e-8)
        np.testing.assert_allclose(ours.intercept_, reference.intercept_, atol=1e-8, rtol=1e-8)
        np.testing.assert_allclose(ours.predict(x), reference.predict(x), atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize(("n", "d"), [(200, 30), (40, 80)])
def test_leave_one_out_alphas_equal_ridge_cv(n: int, d: int) -> None:
    x, y = data(n, d, 8, seed=1)
    ours = RidgeEncoder(GRID, cv="loo").fit(x, y)
    reference = RidgeCV(alphas=GRID, alpha_per_target=True).fit(x, y)  # cv=None: efficient LOO, squared error
    np.testing.assert_array_equal(ours.best_alphas_, reference.alpha_)
    assert len(np.unique(ours.best_alphas_)) >= 3  # the check means something: the choices differ
    np.testing.assert_allclose(ours.coef_, reference.coef_, atol=1e-8, rtol=1e-8)
    np.testing.assert_allclose(ours.cv_scores_.max(0), reference.best_score_, rtol=1e-8)


def test_inner_fold_alphas_equal_ridge_cv_on_the_same_folds() -> None:
    """scikit-learn's RidgeCV refuses cv= with alpha_per_target=True, so each target is fit alone with
    RidgeCV(cv=folds): GridSearchCV over Ridge scored by mean R² over the folds, what RidgeEncoder does."""
    x, y = data(150, 25, 6, seed=2)
    groups = np.repeat(np.arange(15), 10)
    for folds in (blocked_folds(len(x), 5), grouped_folds(groups, 4)):
        ours = RidgeEncoder(GRID, cv=folds).fit(x, y)
        for j in range(y.shape[1]):
            reference = RidgeCV(alphas=GRID, cv=folds).fit(x, y[:, j])
            assert ours.best_alphas_[j] == reference.alpha_
            search = GridSearchCV(Ridge(), {"alpha": GRID}, cv=folds).fit(x, y[:, j])
            np.testing.assert_allclose(
                ours.cv_scores_[:, j], search.cv_results_["mean_test_score"], rtol=1e-8
            )
        assert len(np.unique(ours.best_alphas_)) >= 3
        np.testing.assert_allclose(ours.coef_, Ridge(alpha=ours.best_alphas_).fit(x, y).coef_, atol=1e-8)


def test_groups_make_grouped_inner_folds() -> None:
    x, y = data(150, 25, 4, seed=3)
    groups = np.repeat(np.arange(15), 10)
    by_groups = RidgeEncoder(GRID, cv=3).fit(x, y, groups)
    explicit = RidgeEncoder(GRID, cv=grouped_folds(groups, 3)).fit(x, y)
    np.testing.assert_array_equal(by_groups.cv_scores_, explicit.cv_scores_)


@pytest.mark.parametrize("snr", [0.25, 1.0, 4.0])
def test_planted_weights_give_r2_of_snr_over_one_plus_snr(snr: float) -> None:
    """Signal variance s, noise variance 1: the best possible R² is s / (1 + s). 4,000 training rows for 20
    features lose under 0.01 of it to estimation; 50,000 test rows keep the test set's own sampling error
    near 0.005. Held-out R² must be within 0.02 of s / (1 + s) and within 0.01 of the true weights' R²."""
    rng = np.random.default_rng(4)
    n_train, n_test, d, t = 4000, 50_000, 20, 5
    x = rng.normal(size=(n_train + n_test, d))
    w = rng.normal(size=(d, t))
    w *= np.sqrt(snr) / np.linalg.norm(w, axis=0)  # var(x @ w) = s per target
    y = x @ w + rng.normal(size=(len(x), t))
    model = RidgeEncoder(GRID, cv=5).fit(x[:n_train], y[:n_train])
    r2 = model.score(x[n_train:], y[n_train:])
    assert r2.shape == (t,)
    oracle = FixedAlphaRidge(0.0).fit(x[n_train:], y[n_train:])
    oracle.coef_, oracle.intercept_ = w.T, np.zeros(t)  # the true model
    np.testing.assert_allclose(r2, snr / (1 + snr), atol=0.02)
    assert np.all(r2 <= oracle.score(x[n_train:], y[n_train:]) + 0.002)
    np.testing.assert_allclose(r2, oracle.score(x[n_train:], y[n_train:]), atol=0.01)


def test_float32_targets_give_float32_products_close_to_float64() -> None:
    x, y = data(300, 40, 10, seed=5)
    single = RidgeEncoder(GRID).fit(x.astype(np.float32), y.astype(np.float32))
    double = RidgeEncoder(GRID).fit(x, y)
    assert single.coef_.dtype == np.float32
    np.testing.assert_allclose(single.predict(x), double.predict(x), rtol=1e-3, atol=1e-3)


def test_bad_input_is_refused() -> None:
    x, y = data(50, 5, 2)
    with pytest.raises(EncodeError, match="50 feature rows but 49 target rows"):
        RidgeEncoder().fit(x, y[:-1])
    y_nan = y.copy()
    y_nan[3, 1] = np.nan
    with pytest.raises(EncodeError, match="NaN"):
        RidgeEncoder().fit(x, y_nan)
    with pytest.raises(EncodeError, match="positive"):
        RidgeEncoder(alphas=(0.0, 1.0)).fit(x, y)
    with pytest.raises(EncodeError, match="cannot fill 30 folds"):
        RidgeEncoder(cv=30).fit(x, y)
    constant = RidgeEncoder().fit(x, np.column_stack([y[:, 0], np.full(50, 2.0)]))
    score = constant.score(x, np.column_stack([y[:, 0], np.full(50, 2.0)]))
    assert np.isfinite(score[0]) and np.isnan(score[1])  # a constant target: NaN, not a crash
    np.testing.assert_allclose(constant.predict(x)[:, 1], 2.0)
