"""Mutual kNN and CKNNA against float64 numpy references written here (loops over the definitions of Huh et
al. 2024), with known answers, invariances, exact permutation bookkeeping and the permutation null."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from featurelens.compare.measure import Measure, compare
from featurelens.compare.neighbors import (
    cknna,
    cknna_measure,
    knn_indices,
    mutual_knn,
    mutual_knn_measure,
)
from featurelens.errors import CompareError
from tests.compare.planted import rotate_and_scale, shared_latent


def reference_cosine(x: np.ndarray) -> np.ndarray:
    unit = x / np.sqrt((x**2).sum(axis=1, keepdims=True))
    return unit @ unit.T


def reference_knn(x: np.ndarray, k: int) -> list[set[int]]:
    sims = reference_cosine(x)
    out = []
    for i in range(len(x)):
        others = sorted((j for j in range(len(x)) if j != i), key=lambda j: -sims[i, j])
        out.append(set(others[:k]))
    return out


def reference_mutual_knn(x: np.ndarray, y: np.ndarray, k: int) -> float:
    nx, ny = reference_knn(x, k), reference_knn(y, k)
    return float(np.mean([len(a & b) / k for a, b in zip(nx, ny, strict=True)]))


def reference_cknna(x: np.ndarray, y: np.ndarray, k: int) -> float:
    """Σᵢⱼ α(i,j)(Kᵢⱼ − meanₗKᵢₗ)(Lᵢⱼ − meanₗLᵢₗ), normalised, α = neighbours in both (j ≠ i)."""
    kx, ky = reference_cosine(x), reference_cosine(y)
    nx, ny = reference_knn(x, k), reference_knn(y, k)

    def align(a: np.ndarray, b: np.ndarray, na: list[set[int]], nb: list[set[int]]) -> float:
        total = 0.0
        for i in range(len(a)):
            for j in na[i] & nb[i]:
                total += (a[i, j] - a[i].mean()) * (b[i, j] - b[i].mean())
        return total

    return align(kx, ky, nx, ny) / np.sqrt(align(kx, kx, nx, nx) * align(ky, ky, ny, ny))


def shared(rng: np.random.Generator, n: int, noise: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    return shared_latent(rng, n, 8, 6, latent=5, noise=noise)


def test_knn_indices_are_the_most_cosine_similar_other_rows() -> None:
    x = np.random.default_rng(0).normal(size=(25, 4))
    got = knn_indices(torch.tensor(x), 5).numpy()
    assert [set(row) for row in got] == reference_knn(x, 5)
    assert not (got == np.arange(25)[:, None]).any()
    sims = reference_cosine(x)
    assert all(np.all(np.diff(sims[i, got[i]]) <= 0) for i in range(25))  # most similar first
    # Cosine: scaling a row does not change who its neighbours are.
    scaled = x * np.random.default_rng(1).uniform(0.1, 10, size=(25, 1))
    assert np.array_equal(knn_indices(torch.tensor(scaled), 5).numpy(), got)


@pytest.mark.parametrize("k", [1, 3, 10])
def test_mutual_knn_and_cknna_match_the_references(k: int) -> None:
    x, y = shared(np.random.default_rng(2), 30, noise=1.0)
    assert mutual_knn(x, y, k) == pytest.approx(reference_mutual_knn(x, y, k), abs=1e-12)
    assert cknna(x, y, k) == pytest.approx(reference_cknna(x, y, k), abs=1e-10)
    assert mutual_knn_measure(k)(x, y) == mutual_knn(x, y, k)
    assert cknna_measure(k)(x, y) == pytest.approx(cknna(x, y, k), abs=1e-12)


def test_identical_rotated_and_rescaled_copies_score_one() -> None:
    rng = np.random.default_rng(3)
    x, y = shared(rng, 40, noise=1.0)
    for k in (1, 5, 39):
        assert mutual_knn(x, x, k) == 1.0
        assert cknna(x, x, k) == pytest.approx(1.0, abs=1e-12)
        copy = rotate_and_scale(rng, x, 7.5)
        assert mutual_knn(x, copy, k) == 1.0
        assert cknna(x, copy, k) == pytest.approx(1.0, abs=1e-10)
        # Rotating and rescaling either side leaves the score of an unrelated pair unchanged.
        assert mutual_knn(rotate_and_scale(rng, x, 0.2), y, k) == mutual_knn(x, y, k)
        assert cknna(x, rotate_and_scale(rng, y, 3.0), k) == pytest.approx(cknna(x, y, k), abs=1e-10)
    assert mutual_knn(x, y, 5) < 1 and cknna(x, y, 5) < 1


def test_cknna_is_a_correlation_in_minus_one_to_one() -> None:
    rng = np.random.default_rng(4)
    for _ in range(20):
        x, y = rng.normal(size=(15, 3)), rng.normal(size=(15, 3))
        assert -1 <= cknna(x, y, 4) <= 1
        assert cknna(x, y, 4) == pytest.approx(cknna(y, x, 4), abs=1e-12)


def test_independent_data_share_k_over_n_minus_one_of_their_neighbours() -> None:
    # Items are exchangeable, so each of y's k neighbours is one of x's k with probability k / (n − 1).
    rng = np.random.default_rng(5)
    n, k = 41, 4
    scores = [mutual_knn(rng.normal(size=(n, 6)), rng.normal(size=(n, 6)), k) for _ in range(200)]
    assert np.mean(scores) == pytest.approx(k / (n - 1), abs=0.008)
    assert np.mean([cknna(rng.normal(size=(n, 6)), rng.normal(size=(n, 6)), k) for _ in range(50)]) < 0.1


def test_one_minus_mutual_knn_is_only_a_pseudometric_so_not_a_metric() -> None:
    """1 − score = mean |N_x(i) Δ N_y(i)| / 2k: it obeys the triangle inequality (a symmetric-difference
    distance between neighbour sets), but it is 0 for representations with different geometry."""
    rng = np.random.default_rng(6)
    k = 3
    for _ in range(30):
        x, y, z = (rng.normal(size=(20, 4)) for _ in range(3))
        nx, ny = reference_knn(x, k), reference_knn(y, k)
        assert 1 - mutual_knn(x, y, k) == pytest.approx(
            np.mean([len(a ^ b) for a, b in zip(nx, ny, strict=True)]) / (2 * k)
        )
        assert 1 - mutual_knn(x, z, k) <= (1 - mutual_knn(x, y, k)) + (1 - mutual_knn(y, z, k)) + 1e-12
    # Six tight clusters of k + 1 items in different directions: every item's neighbours are its cluster
    # mates in both spaces, yet the two spaces' cosine similarities (which rotation and scaling keep) differ.
    clusters = np.repeat(np.arange(6), k + 1)
    x = rng.normal(size=(6, 8))[clusters] + 0.05 * rng.normal(size=(24, 8))
    y = rng.normal(size=(6, 5))[clusters] + 0.05 * rng.normal(size=(24, 5))
    assert mutual_knn(x, y, k) == 1.0
    assert np.abs(reference_cosine(x) - reference_cosine(y)).max() > 0.5
    assert cknna(x, y, k) < 0.99


@pytest.mark.parametrize("measure", [mutual_knn_measure(4), cknna_measure(4)])
def test_permuted_state_equals_the_state_of_the_permuted_data(measure: Measure) -> None:
    x, y = shared(np.random.default_rng(7), 30, noise=1.0)
    a, b = measure.prepare(torch.tensor(x)), measure.prepare(torch.tensor(y))
    for seed in range(5):
        order = torch.randperm(30, generator=torch.Generator().manual_seed(seed))
        permuted = measure.permute(b, order)
        fresh = measure.prepare(torch.tensor(y[order.numpy()]))
        assert torch.equal(permuted.mask, fresh.mask)
        if measure.name == "mutual-knn":
            assert torch.equal(permuted.indices, fresh.indices)  # same neighbours, same order
            assert measure.score(a, permuted) == measure.score(a, fresh)
        else:  # the kernel's row means are summed in another order: equal to rounding
            torch.testing.assert_close(permuted.centred, fresh.centred, rtol=0, atol=1e-15)
            assert measure.score(a, permuted) == pytest.approx(measure.score(a, fresh), abs=1e-14)


@pytest.mark.parametrize("measure", [mutual_knn_measure(3), cknna_measure(3)])
def test_p_values_small_for_shared_structure_and_uniform_under_independence(measure: Measure) -> None:
    rng = np.random.default_rng(8)
    x, y = shared(rng, 40)
    assert compare(x, y, measure, permutations=99, seed=1).p_value <= 0.02
    p_values = np.array(
        [
            compare(
                rng.normal(size=(20, 3)), rng.normal(size=(20, 4)), measure, permutations=99, seed=s
            ).p_value
            for s in range(150)
        ]
    )
    if measure.name == "cknna":
        assert stats.kstest(p_values, "uniform").pvalue > 0.01
    else:
        # Mutual kNN takes few distinct values (multiples of 1/nk), so ties with the null make its p-values
        # conservative rather than uniform: never smaller than uniform ones, and not much larger.
        assert stats.kstest(p_values, "uniform", alternative="greater").pvalue > 0.01
        assert 0.4 < p_values.mean() < 0.65


def test_measures_describe_themselves() -> None:
    for measure in (mutual_knn_measure(7), cknna_measure(7)):
        assert measure.kind == "similarity" and not measure.metric
        assert dict(measure.options) == {"k": 7}
        assert measure.min_rows == 8
        assert "k=7" in measure.description and "not a metric" in measure.description


def test_bad_k_and_zero_rows_fail_clearly() -> None:
    x = np.random.default_rng(9).normal(size=(6, 3))
    for k in (0, -1, True, 2.0):
        with pytest.raises(CompareError, match=r"k \(neighbours per item\) must be an integer >= 1"):
            mutual_knn(x, x, k)  # type: ignore[arg-type]
        with pytest.raises(CompareError, match="must be an integer"):
            cknna_measure(k)  # type: ignore[arg-type]
    with pytest.raises(CompareError, match="below the number of items 6, got 6"):
        cknna(x, x, 6)
    with pytest.raises(CompareError, match="below the number of items"):
        knn_indices(torch.tensor(x), 6)
    with pytest.raises(CompareError, match="at least 7 rows"):
        mutual_knn_measure(6)(x, x)
    zero = x.copy()
    zero[2] = 0
    with pytest.raises(CompareError, match=r"all-zero rows \(first: row 2\)"):
        mutual_knn(x, zero, 2)
