"""CCA, regularised CCA, SVCCA and PWCCA against float64 numpy formulas written here, with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from featurelens.compare.cca import (
    canonical_correlations,
    cca_measure,
    cca_similarity,
    pwcca,
    pwcca_measure,
    svcca,
    svcca_measure,
)
from featurelens.compare.measure import Measure, compare
from featurelens.errors import CompareError
from tests.compare.planted import shared_latent


def centre(a: np.ndarray) -> np.ndarray:
    return a - a.mean(axis=0)


def inv_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors / np.sqrt(values)) @ vectors.T


def reference_rhos(x: np.ndarray, y: np.ndarray, ridge: float = 0.0) -> np.ndarray:
    """√eig(Sxx⁻¹ Sxy Syy⁻¹ Syx), Sxx = XcᵀXc + ridge·tr(XcᵀXc)/dx·I (full-rank inputs, n > d)."""
    xc, yc = centre(x), centre(y)
    sxx, syy, sxy = xc.T @ xc, yc.T @ yc, xc.T @ yc
    sxx = sxx + ridge * np.trace(sxx) / x.shape[1] * np.eye(x.shape[1])
    syy = syy + ridge * np.trace(syy) / y.shape[1] * np.eye(y.shape[1])
    product = np.linalg.solve(sxx, sxy) @ np.linalg.solve(syy, sxy.T)
    squares = np.sort(np.linalg.eigvals(product).real)[::-1][: min(x.shape[1], y.shape[1])]
    return np.sqrt(np.clip(squares, 0.0, None))


def reference_svd_reduce(a: np.ndarray, k: int) -> np.ndarray:
    u, s, _ = np.linalg.svd(centre(a), full_matrices=False)
    return u[:, :k] * s[:k]


def reference_pwcca(x: np.ndarray, y: np.ndarray) -> float:
    """Σ αᵢρᵢ / Σ αᵢ with x's canonical variates hᵢ = Xc Sxx^(-1/2) uᵢ and αᵢ = Σⱼ |hᵢ·xⱼ| (Morcos et al.)."""
    xc, yc = centre(x), centre(y)
    wx, wy = inv_sqrt(xc.T @ xc), inv_sqrt(yc.T @ yc)
    u, rho, _ = np.linalg.svd(wx @ xc.T @ yc @ wy, full_matrices=False)
    variates = xc @ wx @ u  # [n, k], orthonormal columns
    weights = np.abs(variates.T @ xc).sum(axis=1)
    return float((weights * rho).sum() / weights.sum())


def draw(rng: np.random.Generator, n: int, *widths: int) -> list[np.ndarray]:
    return [rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, size=d) + rng.normal(size=d) for d in widths]


def shared(
    rng: np.random.Generator, n: int, dx: int, dy: int, noise: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    return shared_latent(rng, n, dx, dy, latent=2, noise=noise)


@pytest.mark.parametrize(("n", "dx", "dy"), [(200, 5, 7), (60, 8, 3), (40, 1, 4)])
def test_canonical_correlations_match_the_eigenvalue_formula(n: int, dx: int, dy: int) -> None:
    rng = np.random.default_rng(n + dx)
    x, y = shared(rng, n, dx, dy)
    rhos = canonical_correlations(torch.tensor(x), torch.tensor(y)).numpy()
    np.testing.assert_allclose(rhos, reference_rhos(x, y), atol=1e-10)
    assert cca_similarity(x, y) == pytest.approx(reference_rhos(x, y).mean(), abs=1e-10)


@pytest.mark.parametrize("ridge", [0.1, 1.0, 10.0])
def test_regularised_correlations_match_the_ridge_formula(ridge: float) -> None:
    rng = np.random.default_rng(1)
    x, y = shared(rng, 80, 6, 4)
    rhos = canonical_correlations(torch.tensor(x), torch.tensor(y), regularization=ridge).numpy()
    np.testing.assert_allclose(rhos, reference_rhos(x, y, ridge), atol=1e-10)
    assert cca_measure(ridge)(x, y) == pytest.approx(rhos.mean(), abs=1e-12)
    # The ridge only shrinks: every regularised correlation is below its unregularised one, and in [0, 1].
    assert np.all(rhos <= canonical_correlations(torch.tensor(x), torch.tensor(y)).numpy() + 1e-12)


def test_regularised_self_correlations_are_variance_over_variance_plus_ridge() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, 4)) * np.array([5.0, 2.0, 1.0, 0.1])
    s2 = np.linalg.svd(centre(x), compute_uv=False) ** 2
    expected = s2 / (s2 + 0.5 * s2.sum() / 4)
    rhos = canonical_correlations(torch.tensor(x), torch.tensor(x), regularization=0.5).numpy()
    np.testing.assert_allclose(rhos, expected, atol=1e-12)
    assert rhos.max() < 1.0  # a ridge (unlike shrinkage toward the mean variance) never scores above 1


def test_invertible_linear_map_and_translation_give_correlations_one() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(100, 6))
    mixed = x @ rng.normal(size=(6, 6)) + rng.normal(size=6) * 10
    np.testing.assert_allclose(
        canonical_correlations(torch.tensor(x), torch.tensor(mixed)).numpy(), 1.0, atol=1e-10
    )
    assert 1.0 - cca_similarity(x, mixed) == pytest.approx(0.0, abs=1e-10)
    assert svcca(x, mixed, keep=1.0) == pytest.approx(1.0, abs=1e-10)
    assert pwcca(x, mixed) == pytest.approx(1.0, abs=1e-10)
    # An invertible map of a subset still gives ones for the shared directions only.
    part = canonical_correlations(torch.tensor(x), torch.tensor(x[:, :3] @ rng.normal(size=(3, 3))))
    np.testing.assert_allclose(part.numpy(), 1.0, atol=1e-10)
    assert len(part) == 3


def test_planted_latent_gives_the_population_correlations() -> None:
    rng = np.random.default_rng(4)
    n, noise = 20000, np.array([0.5, 1.5])
    latent = rng.normal(size=(n, 2))
    x = np.column_stack([latent, rng.normal(size=(n, 2))]) @ rng.normal(size=(4, 4))
    y = np.column_stack([latent + noise * rng.normal(size=(n, 2)), rng.normal(size=(n, 1))]) @ rng.normal(
        size=(3, 3)
    )
    rhos = canonical_correlations(torch.tensor(x), torch.tensor(y)).numpy()
    np.testing.assert_allclose(rhos[:2], 1 / np.sqrt(1 + noise**2), atol=0.02)
    assert rhos[2] < 0.03


def test_first_correlation_agrees_with_scikit_learn() -> None:
    from sklearn.cross_decomposition import CCA

    rng = np.random.default_rng(5)
    x, y = shared(rng, 300, 4, 3)
    scores_x, scores_y = CCA(n_components=1, max_iter=5000, tol=1e-12).fit(x, y).transform(x, y)
    sklearn_rho = abs(np.corrcoef(scores_x[:, 0], scores_y[:, 0])[0, 1])
    assert float(canonical_correlations(torch.tensor(x), torch.tensor(y))[0]) == pytest.approx(
        sklearn_rho, abs=1e-4
    )


def test_rank_deficient_inputs_drop_null_directions() -> None:
    rng = np.random.default_rng(6)
    a, y = shared(rng, 40, 3, 4)
    # Repeated and combined columns add no direction: the answer is that of the independent columns.
    x = np.column_stack([a, a[:, 0], 2 * a[:, 1] - a[:, 2]])
    rhos = canonical_correlations(torch.tensor(x), torch.tensor(y)).numpy()
    np.testing.assert_allclose(rhos, reference_rhos(a, y), atol=1e-10)
    # More units than items: no crash; each side's rank is n − 1, so every centred direction is shared.
    wide_x, wide_y = rng.normal(size=(12, 50)), rng.normal(size=(12, 30))
    wide = canonical_correlations(torch.tensor(wide_x), torch.tensor(wide_y)).numpy()
    assert len(wide) == 11
    np.testing.assert_allclose(wide, 1.0, atol=1e-10)
    assert np.isfinite(pwcca(wide_x, wide_y)) and np.isfinite(svcca(wide_x, wide_y))


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.99, 2, 4])
def test_svcca_matches_reduce_then_cca(keep: float) -> None:
    rng = np.random.default_rng(7)
    x, y = shared(rng, 100, 8, 6, noise=0.3)
    x, y = x * np.linspace(1.0, 4.0, 8), y * np.linspace(4.0, 1.0, 6)

    def kept(a: np.ndarray) -> int:
        if isinstance(keep, int):
            return keep
        s2 = np.linalg.svd(centre(a), compute_uv=False) ** 2
        return int(np.searchsorted(np.cumsum(s2) / s2.sum(), keep) + 1)

    expected = reference_rhos(reference_svd_reduce(x, kept(x)), reference_svd_reduce(y, kept(y))).mean()
    assert svcca(x, y, keep=keep) == pytest.approx(expected, abs=1e-10)
    assert svcca_measure(keep)(x, y) == pytest.approx(expected, abs=1e-12)


def test_svcca_keeps_the_strong_directions_and_ignores_weak_noise() -> None:
    rng = np.random.default_rng(8)
    signal = rng.normal(size=(200, 3))
    x = np.column_stack([signal * 10, 0.01 * rng.normal(size=(200, 5))])
    y = np.column_stack([signal @ rng.normal(size=(3, 3)) * 10, 0.01 * rng.normal(size=(200, 5))])
    assert svcca(x, y, keep=0.99) == pytest.approx(1.0, abs=1e-6)
    assert cca_similarity(x, y) < 0.7  # plain CCA counts the 5 unrelated noise directions equally


def test_pwcca_matches_the_projection_weighted_formula_and_is_asymmetric() -> None:
    rng = np.random.default_rng(9)
    x, y = shared(rng, 120, 6, 4)
    x = x * np.array([4.0, 1.0, 1.0, 0.5, 0.2, 3.0])
    assert pwcca(x, y) == pytest.approx(reference_pwcca(x, y), abs=1e-10)
    assert pwcca(y, x) == pytest.approx(reference_pwcca(y, x), abs=1e-10)
    assert abs(pwcca(x, y) - pwcca(y, x)) > 1e-3
    assert pwcca_measure()(x, y) == pytest.approx(reference_pwcca(x, y), abs=1e-12)
    # Weighting favours the canonical directions that carry x: above the plain mean here.
    assert pwcca(x, y) > cca_similarity(x, y)


@pytest.mark.parametrize("measure", [cca_measure(), cca_measure(1.0), svcca_measure(0.9), pwcca_measure()])
def test_prepared_permutation_equals_permuting_the_data(measure: Measure) -> None:
    rng = np.random.default_rng(10)
    x, y = shared(rng, 30, 5, 4)
    order = torch.randperm(30, generator=torch.Generator().manual_seed(0))
    a, b = measure.prepare(torch.tensor(x)), measure.prepare(torch.tensor(y))
    assert measure.score(a, measure.permute(b, order)) == pytest.approx(
        measure(x, y[order.numpy()]), abs=1e-10
    )


@pytest.mark.parametrize("measure", [cca_measure(), cca_measure(1.0), svcca_measure(0.9), pwcca_measure()])
def test_p_values_small_for_shared_structure_and_uniform_under_independence(measure: Measure) -> None:
    rng = np.random.default_rng(11)
    x, y = shared(rng, 40, 3, 3, noise=0.5)
    assert compare(x, y, measure, permutations=99, seed=1).p_value <= 0.02
    p_values = [
        compare(*draw(rng, 20, 2, 3), measure, permutations=99, seed=seed).p_value for seed in range(150)
    ]
    assert stats.kstest(p_values, "uniform").pvalue > 0.01


def test_measures_describe_themselves() -> None:
    for measure, options in [
        (cca_measure(), {"regularization": 0.0}),
        (cca_measure(0.3), {"regularization": 0.3}),
        (svcca_measure(5), {"keep": 5}),
        (pwcca_measure(), {"weights_from": "x"}),
    ]:
        assert measure.kind == "similarity" and not measure.metric
        assert dict(measure.options) == options
        assert "similarity" in measure.description and "not a metric" in measure.description


def test_bad_options_and_constant_inputs_fail_clearly() -> None:
    x = np.random.default_rng(12).normal(size=(10, 3))
    with pytest.raises(CompareError, match="regularization"):
        cca_measure(-0.1)
    with pytest.raises(CompareError, match="regularization"):
        cca_similarity(x, x, regularization=float("nan"))
    for keep in (0.0, 1.5, 0, True, -2):
        with pytest.raises(CompareError, match="keep"):
            svcca(x, x, keep=keep)
    with pytest.raises(CompareError, match="y is constant"):
        cca_similarity(x, np.ones((10, 2)))
    with pytest.raises(CompareError, match="same items"):
        pwcca(x, x[:5])
