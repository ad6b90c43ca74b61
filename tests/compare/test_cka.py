"""CKA and the permutation null: float64 reference formulas written here, invariances, the bias of the plug-in
estimator on independent data, streaming = in-memory, and p-values uniform under the null."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from featurelens.compare.cka import kernel_cka, kernel_cka_measure, linear_cka, linear_cka_measure
from featurelens.compare.maps import benjamini_hochberg
from featurelens.compare.measure import compare
from featurelens.compare.registry import MEASURES, measure_from_spec
from featurelens.compare.sums import CkaSums
from featurelens.errors import CompareError


def reference_hsic(k: np.ndarray, m: np.ndarray, debiased: bool) -> float:
    n = len(k)
    if not debiased:
        h = np.eye(n) - np.ones((n, n)) / n
        return float(np.trace(k @ h @ m @ h) / (n - 1) ** 2)
    k, m = k - np.diag(np.diag(k)), m - np.diag(np.diag(m))
    one = np.ones(n)
    return float(
        (
            np.trace(k @ m)
            + (one @ k @ one) * (one @ m @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * one @ k @ m @ one
        )
        / (n * (n - 3))
    )


def reference_cka(k: np.ndarray, m: np.ndarray, debiased: bool) -> float:
    return reference_hsic(k, m, debiased) / np.sqrt(
        reference_hsic(k, k, debiased) * reference_hsic(m, m, debiased)
    )


def rbf(x: np.ndarray, sigma: float) -> np.ndarray:
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    median = np.median(np.sqrt(d2[~np.eye(len(x), dtype=bool)]))
    return np.exp(-d2 / (2 * (sigma * median) ** 2))


def related(
    rng: np.random.Generator, n: int = 40, dx: int = 12, dy: int = 7
) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(size=(n, dx)) + 2.0
    return x, x @ rng.normal(size=(dx, dy)) + rng.normal(size=(n, dy))


@pytest.mark.parametrize("debiased", [True, False])
@pytest.mark.parametrize("shape", [(40, 12, 7), (20, 60, 90)])  # units fewer and more than items
def test_linear_cka_equals_the_float64_gram_formula(debiased: bool, shape: tuple[int, int, int]) -> None:
    x, y = related(np.random.default_rng(0), *shape)
    expected = reference_cka(x @ x.T, y @ y.T, debiased)
    assert linear_cka(x, y, debiased=debiased) == pytest.approx(expected, abs=1e-10)
    measure = linear_cka_measure(debiased=debiased)
    assert measure(torch.tensor(x), torch.tensor(y)) == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("debiased", [True, False])
def test_kernel_cka_equals_the_float64_rbf_formula(debiased: bool) -> None:
    x, y = related(np.random.default_rng(1))
    expected = reference_cka(rbf(x, 0.5), rbf(y, 0.5), debiased)
    assert kernel_cka(x, y, sigma=0.5, debiased=debiased) == pytest.approx(expected, abs=1e-10)


def test_cka_is_unchanged_by_rotation_isotropic_scaling_and_translation() -> None:
    rng = np.random.default_rng(2)
    x, y = related(rng)
    rotation, _ = np.linalg.qr(rng.normal(size=(7, 7)))
    moved = 3.7 * y @ rotation + rng.normal(size=7) * 10
    for measure in (linear_cka, kernel_cka):
        assert measure(x, moved) == pytest.approx(measure(x, y), abs=1e-10)
    assert linear_cka(x, y, debiased=False) == pytest.approx(linear_cka(x, moved, debiased=False), abs=1e-10)


def test_anisotropic_scaling_lowers_cka() -> None:
    x = np.random.default_rng(3).normal(size=(200, 10))
    stretched = x * np.array([10.0] + [1.0] * 9)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, stretched) < 0.9


def test_debiased_cka_is_centred_on_zero_for_independent_data_where_biased_cka_is_not() -> None:
    """d/n from 0.1 to 100 at n = 50: debiased within 3 standard errors of 0; biased rises toward 1."""
    rng = np.random.default_rng(4)
    n, repeats = 50, 20
    biased_means = []
    for d in (5, 50, 500, 5000):
        debiased = [linear_cka(rng.normal(size=(n, d)), rng.normal(size=(n, d))) for _ in range(repeats)]
        biased = [
            linear_cka(rng.normal(size=(n, d)), rng.normal(size=(n, d)), debiased=False)
            for _ in range(repeats)
        ]
        standard_error = np.std(debiased, ddof=1) / np.sqrt(repeats)
        assert abs(np.mean(debiased)) < 3 * standard_error + 1e-12, d
        biased_means.append(np.mean(biased))
    assert biased_means == sorted(biased_means)
    assert biased_means[0] > 3 * np.std(debiased)  # biased above 0 even at d/n = 0.1 ...
    assert biased_means[-1] > 0.9  # ... and ~0.95+ at d/n = 100 (Kornblith et al.'s warning)


@pytest.mark.parametrize("debiased", [True, False])
def test_streamed_sums_equal_the_in_memory_value_for_every_hook_pair(debiased: bool) -> None:
    rng = np.random.default_rng(5)
    a = {f"a{i}": torch.tensor(rng.normal(size=(230, 4 + i)) + i) for i in range(3)}
    a["a1"] = a["a0"] @ torch.tensor(rng.normal(size=(4, 5))) + 0.1 * a["a1"]
    b = {"b0": torch.tensor(rng.normal(size=(230, 6))), "b1": a["a2"] @ torch.tensor(rng.normal(size=(6, 3)))}
    same, cross = (
        CkaSums.start({k: v[:40] for k, v in a.items()}),
        CkaSums.start({k: v[:40] for k, v in a.items()}, {k: v[:40] for k, v in b.items()}),
    )
    for start in range(0, 230, 37):
        chunk_a = {k: v[start : start + 37] for k, v in a.items()}
        same.add(chunk_a)
        cross.add(chunk_a, {k: v[start : start + 37] for k, v in b.items()})
    within, between = same.cka(debiased=debiased), cross.cka(debiased=debiased)
    for i, x in enumerate(a.values()):
        for j, y in enumerate(a.values()):
            assert within[i, j] == pytest.approx(linear_cka(x, y, debiased=debiased), abs=1e-10)
        for j, y in enumerate(b.values()):
            assert between[i, j] == pytest.approx(linear_cka(x, y, debiased=debiased), abs=1e-10)


def test_float32_chunks_agree_to_float32_precision() -> None:
    rng = np.random.default_rng(6)
    x = rng.normal(size=(3000, 16)) * 5 + 40  # far from the origin: the shift keeps the sums small
    y = x @ rng.normal(size=(16, 8)) + rng.normal(size=(3000, 8))
    sums = CkaSums.start(
        {"x": torch.tensor(x[:500], dtype=torch.float32)}, {"y": torch.tensor(y[:500]).float()}
    )
    for start in range(0, 3000, 500):
        sums.add(
            {"x": torch.tensor(x[start : start + 500]).float()},
            {"y": torch.tensor(y[start : start + 500]).float()},
        )
    assert float(sums.cka()[0, 0]) == pytest.approx(linear_cka(x, y), abs=1e-5)


def test_permutation_p_values_are_uniform_under_the_null_and_small_for_shared_structure() -> None:
    rng = np.random.default_rng(7)
    measure = linear_cka_measure()
    p_values = [
        compare(rng.normal(size=(20, 5)), rng.normal(size=(20, 3)), measure, permutations=99, seed=s).p_value
        for s in range(150)
    ]
    assert stats.kstest(p_values, "uniform").pvalue > 0.01
    x, y = related(rng)
    planted = compare(x, y, measure, permutations=199, seed=0)
    assert planted.p_value == pytest.approx(1 / 200)
    assert abs(planted.null_mean) < 3 * planted.null_std  # the null of debiased CKA sits at 0


def test_batched_null_equals_one_permutation_at_a_time() -> None:
    x, y = related(np.random.default_rng(8))
    for measure in (linear_cka_measure(), linear_cka_measure(debiased=False), kernel_cka_measure()):
        a, b = measure.prepare(torch.tensor(x)), measure.prepare(torch.tensor(y))
        orders = torch.stack([torch.randperm(len(x)) for _ in range(10)])
        one_by_one = [measure.score(a, measure.permute(b, order)) for order in orders]
        np.testing.assert_allclose(
            measure.null_scores([a, b], measure.null_states(b, orders))[0], one_by_one, atol=1e-12
        )


def test_comparisons_are_reproducible_by_seed_and_say_what_they_are() -> None:
    x, y = related(np.random.default_rng(9))
    first = compare(
        x, y + 5 * np.random.default_rng(0).normal(size=y.shape), linear_cka_measure(), permutations=50
    )
    again = compare(
        x, y + 5 * np.random.default_rng(0).normal(size=y.shape), linear_cka_measure(), permutations=50
    )
    assert first == again
    assert (first.kind, first.metric, first.permutations) == ("similarity", False, 50)
    assert "not a metric" in first.description


@pytest.mark.parametrize(
    ("x", "y", "permutations", "message"),
    [
        (np.ones((10, 3)), np.ones((9, 3)), 0, "x has 10 rows, y has 9"),
        (np.full((10, 3), np.nan), np.ones((10, 3)), 0, "10 rows with NaN"),
        (
            np.random.default_rng(0).normal(size=(4, 3)),
            np.random.default_rng(1).normal(size=(4, 3)),
            10,
            "at least 5",
        ),
        (np.ones((10, 3)), np.random.default_rng(1).normal(size=(10, 3)), 0, "without variance"),
    ],
)
def test_bad_input_is_one_clear_error(x: np.ndarray, y: np.ndarray, permutations: int, message: str) -> None:
    with pytest.raises(CompareError, match=message):
        compare(x, y, linear_cka_measure(), permutations=permutations)


def test_measure_specs_name_their_options() -> None:
    assert measure_from_spec("kernel-cka:sigma=2").options == (("sigma", 2), ("debiased", True))
    assert measure_from_spec("cka-biased").name == "cka-biased"
    with pytest.raises(CompareError, match="unknown measure 'ckaa'; accepted: cka"):
        measure_from_spec("ckaa")
    with pytest.raises(CompareError, match="has no option 'width'"):
        measure_from_spec("kernel-cka:width=3")
    assert set(MEASURES) >= {"cka", "cka-biased", "kernel-cka"}


def test_benjamini_hochberg_equals_scipy() -> None:
    p = np.random.default_rng(10).uniform(size=200) ** 3
    p[5] = np.nan
    expected = stats.false_discovery_control(p[np.isfinite(p)]) <= 0.05
    significant = benjamini_hochberg(p, 0.05)
    assert not significant[5]
    np.testing.assert_array_equal(significant[np.isfinite(p)], expected)
