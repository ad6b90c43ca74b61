"""Procrustes and angular shape metrics against float64 numpy/scipy formulas, invariances and metric laws."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import linalg, stats

from featurelens.compare.measure import Measure, compare
from featurelens.compare.shape import (
    angular_shape_distance,
    orthogonal_procrustes,
    procrustes_distance,
    procrustes_measure,
    shape_measure,
)
from featurelens.errors import CompareError
from tests.compare.planted import shared_latent

ALPHAS = [0.0, 0.5, 1.0]


def centre(a: np.ndarray) -> np.ndarray:
    return a - a.mean(axis=0)


def reference_procrustes(x: np.ndarray, y: np.ndarray) -> float:
    """min over orthogonal R of ‖X − Y R‖_F by scipy's solver; X, Y centred and unit-norm (equal widths)."""
    xn, yn = centre(x) / np.linalg.norm(centre(x)), centre(y) / np.linalg.norm(centre(y))
    rotation, _ = linalg.orthogonal_procrustes(yn, xn)
    return float(np.linalg.norm(xn - yn @ rotation))


def reference_shape(x: np.ndarray, y: np.ndarray, alpha: float) -> float:
    """arccos(‖X̃ᵀỸ‖_* / ‖X̃‖‖Ỹ‖), X̃ = Xc (αI + (1−α)Σ)^(-1/2), Σ = XcᵀXc/n after scaling Xc to tr Σ = 1."""

    def whiten(a: np.ndarray) -> np.ndarray:
        ac = centre(a)
        ac = ac / np.sqrt(np.trace(ac.T @ ac) / len(a))
        values, vectors = np.linalg.eigh(alpha * np.eye(a.shape[1]) + (1 - alpha) * ac.T @ ac / len(a))
        return ac @ (vectors / np.sqrt(values)) @ vectors.T

    xw, yw = whiten(x), whiten(y)
    cosine = np.linalg.svd(xw.T @ yw, compute_uv=False).sum() / (np.linalg.norm(xw) * np.linalg.norm(yw))
    return float(np.arccos(np.clip(cosine, -1.0, 1.0)))


def reference_cca_rhos(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    qx, _ = np.linalg.qr(centre(x))
    qy, _ = np.linalg.qr(centre(y))
    return np.linalg.svd(qx.T @ qy, compute_uv=False)


def rotation(rng: np.random.Generator, d: int) -> np.ndarray:
    return stats.ortho_group.rvs(d, random_state=rng)


def related(
    rng: np.random.Generator, n: int, dx: int, dy: int, noise: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    return shared_latent(rng, n, dx, dy, latent=3, noise=noise)


@pytest.mark.parametrize(("n", "d"), [(50, 4), (30, 10), (8, 20)])
def test_procrustes_matches_scipy_and_the_nuclear_norm_formula(n: int, d: int) -> None:
    rng = np.random.default_rng(n)
    x, y = related(rng, n, d, d)
    assert procrustes_distance(x, y) == pytest.approx(reference_procrustes(x, y), abs=1e-10)
    xn, yn = centre(x) / np.linalg.norm(centre(x)), centre(y) / np.linalg.norm(centre(y))
    nuclear = np.linalg.svd(xn.T @ yn, compute_uv=False).sum()
    assert procrustes_distance(x, y) == pytest.approx(math.sqrt(2 - 2 * nuclear), abs=1e-10)
    assert procrustes_measure()(x, y) == pytest.approx(reference_procrustes(x, y), abs=1e-10)


def test_orthogonal_procrustes_matches_scipy_and_realises_the_distance() -> None:
    rng = np.random.default_rng(1)
    x, y = related(rng, 40, 5, 5)
    expected, _ = linalg.orthogonal_procrustes(centre(x), centre(y))
    q = orthogonal_procrustes(torch.tensor(x), torch.tensor(y)).numpy()
    np.testing.assert_allclose(q, expected, atol=1e-10)
    # Narrower x: Q [dx, dy] has orthonormal rows and x̂ Q − ŷ has exactly the Procrustes distance.
    x3, y6 = related(rng, 40, 3, 6)
    q = orthogonal_procrustes(torch.tensor(x3), torch.tensor(y6)).numpy()
    np.testing.assert_allclose(q @ q.T, np.eye(3), atol=1e-12)
    xn, yn = centre(x3) / np.linalg.norm(centre(x3)), centre(y6) / np.linalg.norm(centre(y6))
    assert np.linalg.norm(xn @ q - yn) == pytest.approx(procrustes_distance(x3, y6), abs=1e-10)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 0.9, 1.0])
def test_shape_distance_matches_the_partial_whitening_formula(alpha: float) -> None:
    rng = np.random.default_rng(2)
    x, y = related(rng, 60, 5, 7)
    x = x * np.array([5.0, 1.0, 0.3, 2.0, 1.0])
    assert angular_shape_distance(x, y, alpha) == pytest.approx(reference_shape(x, y, alpha), abs=1e-10)
    assert shape_measure(alpha)(x, y) == pytest.approx(reference_shape(x, y, alpha), abs=1e-10)


def test_alpha_one_is_angular_procrustes_and_alpha_zero_is_the_cca_angle() -> None:
    rng = np.random.default_rng(3)
    x, y = related(rng, 50, 4, 6)
    cosine = 1 - procrustes_distance(x, y) ** 2 / 2  # ‖X − YQ‖² = 2 − 2 cos for unit-norm X, Y
    assert angular_shape_distance(x, y, 1.0) == pytest.approx(math.acos(cosine), abs=1e-10)
    rhos = reference_cca_rhos(x, y)
    assert angular_shape_distance(x, y, 0.0) == pytest.approx(
        math.acos(rhos.sum() / math.sqrt(4 * 6)), abs=1e-10
    )


@pytest.mark.parametrize("alpha", ALPHAS)
def test_rotation_scaling_and_translation_give_zero(alpha: float) -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(30, 6)) * np.array([3.0, 2.0, 1.0, 1.0, 0.5, 0.2])
    moved = 7.5 * x @ rotation(rng, 6) + rng.normal(size=6) * 100
    assert angular_shape_distance(x, moved, alpha) == pytest.approx(0.0, abs=1e-6)
    assert procrustes_distance(x, moved) == pytest.approx(0.0, abs=1e-6)
    assert angular_shape_distance(x, x, alpha) == pytest.approx(0.0, abs=1e-6)


def test_only_full_whitening_forgives_an_invertible_linear_map() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(40, 5))
    stretched = x @ np.diag([10.0, 3.0, 1.0, 0.3, 0.1]) @ rotation(rng, 5) + 2.0
    mixed = x @ rng.normal(size=(5, 5))
    for y in (stretched, mixed):
        assert angular_shape_distance(x, y, 0.0) == pytest.approx(0.0, abs=1e-6)
        assert angular_shape_distance(x, y, 0.5) > 0.05
        assert angular_shape_distance(x, y, 1.0) > 0.1
        assert procrustes_distance(x, y) > 0.1


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_unequal_widths_equal_zero_padding(alpha: float) -> None:
    rng = np.random.default_rng(6)
    x, y = related(rng, 30, 6, 3)
    padded = np.column_stack([y, np.zeros((30, 3))])
    assert angular_shape_distance(x, y, alpha) == pytest.approx(reference_shape(x, padded, alpha), abs=1e-10)
    assert procrustes_distance(x, y) == pytest.approx(reference_procrustes(x, padded), abs=1e-10)
    # Full whitening cannot be referenced on a padded (singular) covariance; padding still changes nothing.
    assert angular_shape_distance(x, y, 0.0) == pytest.approx(
        angular_shape_distance(x, padded, 0.0), abs=1e-10
    )


def test_more_units_than_items_and_ranges() -> None:
    rng = np.random.default_rng(7)
    x, y = related(rng, 10, 40, 25)
    for alpha in ALPHAS:
        value = angular_shape_distance(x, y, alpha)
        assert 0.0 <= value <= math.pi / 2
    assert angular_shape_distance(x, y, 0.0) == pytest.approx(0.0, abs=1e-6)  # rank n − 1 on both sides
    assert angular_shape_distance(x, y, 1.0) == pytest.approx(
        reference_shape(x, np.column_stack([y, np.zeros((10, 15))]), 1.0), abs=1e-10
    )
    assert 0.0 <= procrustes_distance(x, -x) <= math.sqrt(2)


def test_symmetry_and_triangle_inequality_on_random_triples() -> None:
    rng = np.random.default_rng(8)
    measures = [procrustes_distance] + [
        lambda a, b, alpha=alpha: angular_shape_distance(a, b, alpha) for alpha in ALPHAS
    ]
    slack = 0
    for trial in range(120):
        n = 8
        widths = rng.integers(2, 6, size=3)
        base = rng.normal(size=(n, 3))
        # Half the triples share structure, so that some sides are short and the inequality is nearly tight.
        triple = [
            (base @ rng.normal(size=(3, d)) if trial % 2 else 0)
            + rng.normal(size=(n, d)) * rng.uniform(0.1, 1.0)
            for d in widths
        ]
        for distance in measures:
            dxy, dyz, dxz = (
                distance(triple[0], triple[1]),
                distance(triple[1], triple[2]),
                distance(triple[0], triple[2]),
            )
            assert distance(triple[1], triple[0]) == pytest.approx(dxy, abs=1e-12)
            assert dxz <= dxy + dyz + 1e-9
            slack = max(slack, dxz / (dxy + dyz))
    assert slack > 0.8  # the triples came close to equality, so a broken distance would have been caught


@pytest.mark.parametrize(
    "measure", [procrustes_measure(), shape_measure(0.0), shape_measure(0.5), shape_measure(1.0)]
)
def test_prepared_permutation_equals_permuting_the_data(measure: Measure) -> None:
    rng = np.random.default_rng(9)
    x, y = related(rng, 25, 4, 6)
    order = torch.randperm(25, generator=torch.Generator().manual_seed(0))
    a, b = measure.prepare(torch.tensor(x)), measure.prepare(torch.tensor(y))
    assert measure.score(a, measure.permute(b, order)) == pytest.approx(
        measure(x, y[order.numpy()]), abs=1e-10
    )


@pytest.mark.parametrize(
    "measure", [procrustes_measure(), shape_measure(0.0), shape_measure(0.5), shape_measure(1.0)]
)
def test_p_values_small_for_shared_structure_and_uniform_under_independence(measure: Measure) -> None:
    rng = np.random.default_rng(10)
    x, y = related(rng, 30, 3, 3, noise=0.3)
    assert compare(x, y, measure, permutations=99, seed=1).p_value <= 0.02
    p_values = [
        compare(
            rng.normal(size=(20, 3)), rng.normal(size=(20, 2)), measure, permutations=99, seed=seed
        ).p_value
        for seed in range(150)
    ]
    assert stats.kstest(p_values, "uniform").pvalue > 0.01


def test_measures_describe_themselves_and_bad_alpha_fails() -> None:
    assert procrustes_measure().kind == "distance" and procrustes_measure().metric
    assert dict(shape_measure(0.25).options) == {"alpha": 0.25}
    assert shape_measure().kind == "distance" and shape_measure().metric
    for measure in (procrustes_measure(), shape_measure(0.0)):
        assert "a metric" in measure.description and "zero-padded" in measure.description
    x = np.random.default_rng(11).normal(size=(10, 3))
    for alpha in (-0.1, 1.5, float("nan")):
        with pytest.raises(CompareError, match="alpha"):
            shape_measure(alpha)
        with pytest.raises(CompareError, match="alpha"):
            angular_shape_distance(x, x, alpha)
    with pytest.raises(CompareError, match="x is constant"):
        procrustes_distance(np.ones((10, 2)), x)
