"""RSA against float64 numpy references written here, scipy's correlations, a brute-force tau-a, known
invariances of the RDMs, and the permutation null."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from featurelens.compare.measure import compare
from featurelens.compare.rsa import (
    compare_rdms,
    kendall_tau_a,
    rdm,
    rsa,
    rsa_measure,
    strict_inversions,
    upper_triangle,
)
from featurelens.errors import CompareError


def reference_rdm(x: np.ndarray, distance: str) -> np.ndarray:
    n = len(x)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if distance == "correlation":
                a, b = x[i] - x[i].mean(), x[j] - x[j].mean()
                out[i, j] = 1.0 - a @ b / np.sqrt((a @ a) * (b @ b))
            else:
                squared = ((x[i] - x[j]) ** 2).sum()
                out[i, j] = squared if distance == "sqeuclidean" else np.sqrt(squared)
    np.fill_diagonal(out, 0.0)
    return out


def reference_ranks(v: np.ndarray) -> np.ndarray:
    """Average ranks 1..m, written as the definition: 1 + #smaller + (#equal − 1) / 2."""
    return np.array([1 + (v < a).sum() + ((v == a).sum() - 1) / 2 for a in v])


def reference_compare(a: np.ndarray, b: np.ndarray, method: str) -> float:
    rows, cols = np.triu_indices(len(a), k=1)
    ta, tb = a[rows, cols], b[rows, cols]
    if method == "kendall":
        return reference_tau_a(ta, tb)
    if method == "spearman":
        ta, tb = reference_ranks(ta), reference_ranks(tb)
    return float(np.corrcoef(ta, tb)[0, 1])


def reference_tau_a(a: np.ndarray, b: np.ndarray) -> float:
    m = len(a)
    total = 0.0
    for i in range(m):
        for j in range(i + 1, m):
            total += np.sign(a[i] - a[j]) * np.sign(b[i] - b[j])
    return total / (m * (m - 1) / 2)


def shared(rng: np.random.Generator, n: int, noise: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    latent = rng.normal(size=(n, 4))
    x = latent @ rng.normal(size=(4, 6)) + noise * rng.normal(size=(n, 6))
    y = latent @ rng.normal(size=(4, 5)) + noise * rng.normal(size=(n, 5))
    return x, y


@pytest.mark.parametrize("distance", ["correlation", "euclidean", "sqeuclidean"])
def test_rdm_matches_the_definition(distance: str) -> None:
    x = np.random.default_rng(0).normal(size=(15, 7)) * 3 + 1
    got = rdm(torch.tensor(x), distance).numpy()
    np.testing.assert_allclose(got, reference_rdm(x, distance), atol=1e-10, rtol=0)
    assert np.all(np.diag(got) == 0) and np.allclose(got, got.T, atol=0)


def test_correlation_rdm_is_one_minus_numpy_corrcoef_and_sqeuclidean_matches_rsatoolbox_up_to_scale() -> None:
    x = np.random.default_rng(1).normal(size=(12, 9))
    np.testing.assert_allclose(rdm(torch.tensor(x)).numpy(), 1 - np.corrcoef(x), atol=1e-10)
    # rsatoolbox's "euclidean": (|xi|² + |xj|² − 2 xi·xj) / units. Its RSA value equals ours on "sqeuclidean".
    squares = (x**2).sum(axis=1)
    rsatoolbox = (squares[:, None] + squares[None] - 2 * x @ x.T) / x.shape[1]
    y = np.random.default_rng(2).normal(size=(12, 4))
    other = rdm(torch.tensor(y), "sqeuclidean")
    for method in ("pearson", "spearman", "kendall"):
        assert compare_rdms(torch.tensor(rsatoolbox), other, method) == pytest.approx(
            rsa(x, y, "sqeuclidean", method), abs=1e-10
        )


@pytest.mark.parametrize("method", ["pearson", "spearman", "kendall"])
@pytest.mark.parametrize("ties", [False, True])
def test_compare_rdms_matches_the_reference(method: str, ties: bool) -> None:
    rng = np.random.default_rng(3)
    a, b = (reference_rdm(rng.normal(size=(14, 5)), "euclidean") for _ in range(2))
    if ties:  # rounding makes many pairs share a value
        a, b = np.round(a, 0), np.round(b * 2, 0)
    assert compare_rdms(torch.tensor(a), torch.tensor(b), method) == pytest.approx(
        reference_compare(a, b, method), abs=1e-10
    )


def test_pearson_and_spearman_agree_with_scipy_on_the_triangles() -> None:
    x, y = shared(np.random.default_rng(4), 25)
    ta = upper_triangle(rdm(torch.tensor(x))).numpy()
    tb = upper_triangle(rdm(torch.tensor(y))).numpy()
    assert rsa(x, y, method="pearson") == pytest.approx(stats.pearsonr(ta, tb)[0], abs=1e-10)
    assert rsa(x, y, method="spearman") == pytest.approx(stats.spearmanr(ta, tb)[0], abs=1e-10)
    # Without ties tau-b (scipy's default) is tau-a.
    assert rsa(x, y, method="kendall") == pytest.approx(stats.kendalltau(ta, tb)[0], abs=1e-10)


def test_tau_a_matches_the_double_loop_with_and_without_ties() -> None:
    rng = np.random.default_rng(5)
    for m in (2, 3, 17, 64, 151):
        for a, b in [
            (rng.normal(size=m), rng.normal(size=m)),
            (rng.integers(0, 4, m).astype(float), rng.integers(0, 3, m).astype(float)),
            (np.ones(m), rng.normal(size=m)),
        ]:
            got = kendall_tau_a(torch.tensor(a), torch.tensor(b))
            assert got == pytest.approx(reference_tau_a(a, b), abs=1e-12)
    # Ties count as neither: two all-tied-but-one vectors.
    assert kendall_tau_a(torch.tensor([0.0, 0.0, 1.0]), torch.tensor([0.0, 1.0, 1.0])) == pytest.approx(1 / 3)


def test_strict_inversions_count_every_out_of_order_pair() -> None:
    rng = np.random.default_rng(6)
    for m in (0, 1, 2, 5, 33, 100):
        v = rng.integers(0, max(m // 3, 1), m)
        brute = sum(int(v[i] > v[j]) for i in range(m) for j in range(i + 1, m))
        assert strict_inversions(v) == brute
    assert strict_inversions(np.arange(50)[::-1].copy()) == 50 * 49 // 2


def test_correlation_rdm_ignores_per_item_affine_maps_and_euclidean_ignores_rotation_and_shift() -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(20, 6))
    scaled = x * rng.uniform(0.2, 5.0, size=(20, 1)) + rng.normal(size=(20, 1))
    np.testing.assert_allclose(rdm(torch.tensor(scaled)).numpy(), rdm(torch.tensor(x)).numpy(), atol=1e-10)
    rotation = np.linalg.qr(rng.normal(size=(6, 6)))[0]
    moved = x @ rotation + rng.normal(size=6)
    for distance in ("euclidean", "sqeuclidean"):
        np.testing.assert_allclose(
            rdm(torch.tensor(moved), distance).numpy(), rdm(torch.tensor(x), distance).numpy(), atol=1e-10
        )
    # A negative scale flips an item's pattern: its correlations change sign, so the RDM changes.
    flipped = x.copy()
    flipped[0] *= -1
    assert not np.allclose(rdm(torch.tensor(flipped)).numpy(), rdm(torch.tensor(x)).numpy())


@pytest.mark.parametrize("method", ["pearson", "spearman", "kendall"])
def test_identical_representations_score_one_and_scores_are_symmetric(method: str) -> None:
    x, y = shared(np.random.default_rng(8), 18)
    assert rsa(x, x, method=method) == pytest.approx(1.0, abs=1e-12)
    assert rsa(x, y, method=method) == pytest.approx(rsa(y, x, method=method), abs=1e-12)
    assert rsa_measure(method=method)(x, y) == pytest.approx(rsa(x, y, method=method), abs=1e-12)


@pytest.mark.parametrize("distance", ["correlation", "euclidean"])
@pytest.mark.parametrize("method", ["pearson", "spearman", "kendall"])
def test_prepared_permutation_equals_permuting_the_data(distance: str, method: str) -> None:
    x, y = shared(np.random.default_rng(9), 30)
    y = np.round(y, 1)  # some tied dissimilarities, which ranks must carry with their pairs
    measure = rsa_measure(distance, method)
    a, b = measure.prepare(torch.tensor(x)), measure.prepare(torch.tensor(y))
    for seed in range(3):
        order = torch.randperm(30, generator=torch.Generator().manual_seed(seed))
        assert measure.score(a, measure.permute(b, order)) == pytest.approx(
            measure(x, y[order.numpy()]), abs=1e-12
        )


@pytest.mark.parametrize("method", ["pearson", "spearman", "kendall"])
def test_p_values_small_for_shared_structure_and_uniform_under_independence(method: str) -> None:
    rng = np.random.default_rng(10)
    measure = rsa_measure(method=method)
    x, y = shared(rng, 20)
    assert compare(x, y, measure, permutations=99, seed=1).p_value <= 0.02
    p_values = [
        compare(rng.normal(size=(10, 4)), rng.normal(size=(10, 3)), measure, permutations=99, seed=s).p_value
        for s in range(150)
    ]
    assert stats.kstest(p_values, "uniform").pvalue > 0.01


def test_measure_describes_itself() -> None:
    measure = rsa_measure("euclidean", "kendall")
    assert measure.kind == "similarity" and not measure.metric
    assert dict(measure.options) == {"distance": "euclidean", "method": "kendall"}
    assert "Kendall tau-a" in measure.description and "not a metric" in measure.description


def test_bad_inputs_fail_clearly() -> None:
    x = np.random.default_rng(11).normal(size=(6, 4))
    with pytest.raises(CompareError, match="unknown RSA distance 'cosine'"):
        rsa_measure("cosine")
    with pytest.raises(CompareError, match="unknown RSA method 'tau-b'"):
        rsa(x, x, method="tau-b")
    constant = x.copy()
    constant[3] = 0.1
    with pytest.raises(CompareError, match=r"rows are constant \(first: row 3\)"):
        rsa(x, constant)
    assert np.isfinite(rsa(x, constant, distance="euclidean"))  # Euclidean distance has no such limit
    with pytest.raises(CompareError, match="same dissimilarity for every pair"):
        compare_rdms(torch.ones(5, 5), torch.tensor(reference_rdm(x[:5], "euclidean")), "pearson")
    with pytest.raises(CompareError, match="square"):
        compare_rdms(torch.ones(5, 4), torch.ones(5, 4))
    with pytest.raises(CompareError, match="same items"):
        compare_rdms(torch.ones(5, 5), torch.ones(6, 6))
    with pytest.raises(CompareError, match="at least 3"):
        rsa(x[:2], x[:2])
