"""Relative representations against a float64 numpy reference written here, with their invariances, the
anchors left out of the mean, and the permutation null."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from featurelens.compare.measure import compare
from featurelens.compare.relative import (
    random_anchors,
    relative_measure,
    relative_representation,
    relative_similarity,
)
from featurelens.errors import CompareError
from tests.compare.planted import rotate_and_scale, shared_latent


def reference_relative(x: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    out = np.empty((len(x), len(anchors)))
    for i in range(len(x)):
        for j, a in enumerate(anchors):
            out[i, j] = x[i] @ x[a] / np.sqrt((x[i] @ x[i]) * (x[a] @ x[a]))
    return out


def reference_similarity(x: np.ndarray, y: np.ndarray, anchors: np.ndarray) -> float:
    rx, ry = reference_relative(x, anchors), reference_relative(y, anchors)
    kept = [i for i in range(len(x)) if i not in set(anchors.tolist())]
    return float(np.mean([rx[i] @ ry[i] / np.sqrt((rx[i] @ rx[i]) * (ry[i] @ ry[i])) for i in kept]))


def shared(rng: np.random.Generator, n: int, noise: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    return shared_latent(rng, n, 8, 6, latent=5, noise=noise)


def test_relative_representation_and_similarity_match_the_reference() -> None:
    rng = np.random.default_rng(0)
    x, y = shared(rng, 30, noise=1.0)
    anchors = np.array([3, 17, 0, 25, 9])
    got = relative_representation(torch.tensor(x), torch.tensor(anchors)).numpy()
    np.testing.assert_allclose(got, reference_relative(x, anchors), atol=1e-12, rtol=0)
    assert np.allclose(got[anchors, np.arange(5)], 1.0)  # each anchor is fully similar to itself
    value = relative_similarity(x, y, torch.tensor(anchors))
    assert value == pytest.approx(reference_similarity(x, y, anchors), abs=1e-12)


def test_anchors_are_left_out_of_the_mean() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(12, 3)), rng.normal(size=(12, 3))
    anchors = np.arange(5)
    rx, ry = reference_relative(x, anchors), reference_relative(y, anchors)
    cosines = (rx * ry).sum(1) / np.linalg.norm(rx, axis=1) / np.linalg.norm(ry, axis=1)
    value = relative_similarity(x, y, torch.tensor(anchors))
    assert value == pytest.approx(cosines[5:].mean(), abs=1e-12)
    # Including them would raise the score of unrelated data: anchor rows share a 1 in their own column.
    assert cosines[:5].mean() > cosines[5:].mean()
    assert cosines.mean() != pytest.approx(value, abs=1e-6)


def test_rotating_or_rescaling_either_space_changes_nothing() -> None:
    rng = np.random.default_rng(2)
    x, y = shared(rng, 40, noise=1.0)
    anchors = torch.tensor([1, 5, 8, 13, 21, 34])
    value = relative_similarity(x, y, anchors)
    assert relative_similarity(rotate_and_scale(rng, x, 0.1), y, anchors) == pytest.approx(value, abs=1e-12)
    assert relative_similarity(x, rotate_and_scale(rng, y, 40.0), anchors) == pytest.approx(value, abs=1e-12)
    assert relative_similarity(x, rotate_and_scale(rng, x, 3.0), anchors) == pytest.approx(1.0, abs=1e-12)
    # Translation moves every angle: not an invariance of cosine-based relative representations.
    assert relative_similarity(x, x + 5.0, anchors) < 0.999


def test_a_noisy_rotated_copy_scores_near_one_and_independent_data_near_zero() -> None:
    rng = np.random.default_rng(3)
    anchors = torch.arange(16)
    x, y = shared(rng, 100, noise=0.3)
    copy = rotate_and_scale(rng, x, 2.0) + 0.05 * rng.normal(size=x.shape)
    unrelated = [relative_similarity(rng.normal(size=(100, 20)), y, anchors) for _ in range(10)]
    assert relative_similarity(x, copy, anchors) > 0.98
    # A shared latent seen through two different linear maps distorts angles: in between.
    assert 0.3 < relative_similarity(x, y, anchors) < 0.9
    assert abs(np.mean(unrelated)) < 0.1


def test_measure_uses_seeded_anchors_and_keeps_them_under_permutation() -> None:
    rng = np.random.default_rng(4)
    x, y = shared(rng, 30, noise=1.0)
    measure = relative_measure(anchors=6, seed=5)
    anchors = random_anchors(30, 6, 5)
    assert torch.equal(anchors, random_anchors(30, 6, 5)) and len(torch.unique(anchors)) == 6
    assert measure(x, y) == pytest.approx(relative_similarity(x, y, anchors), abs=1e-12)
    a, b = measure.prepare(torch.tensor(x)), measure.prepare(torch.tensor(y))
    assert measure.score(a, measure.permute(b, torch.arange(30))) == measure.score(a, b)
    order = torch.randperm(30, generator=torch.Generator().manual_seed(0))
    permuted = measure.permute(b, order)
    # Row i of the permuted y is item order[i], still described against y's original anchor items.
    ry = reference_relative(y, anchors.numpy())
    expected = ry[order.numpy()] / np.linalg.norm(ry[order.numpy()], axis=1, keepdims=True)
    np.testing.assert_allclose(permuted.unit.numpy(), expected, atol=1e-12)
    rx = reference_relative(x, anchors.numpy())
    kept = [
        i for i in range(30) if i not in set(anchors.tolist()) and int(order[i]) not in set(anchors.tolist())
    ]
    cosines = [rx[i] @ expected[i] / np.linalg.norm(rx[i]) for i in kept]
    assert measure.score(a, permuted) == pytest.approx(np.mean(cosines), abs=1e-12)


def test_p_values_small_for_shared_structure_and_uniform_under_independence() -> None:
    rng = np.random.default_rng(5)
    measure = relative_measure(anchors=4, seed=0)
    x, y = shared(rng, 30)
    assert compare(x, y, measure, permutations=99, seed=1).p_value <= 0.02
    p_values = [
        compare(rng.normal(size=(15, 3)), rng.normal(size=(15, 4)), measure, permutations=99, seed=s).p_value
        for s in range(150)
    ]
    assert stats.kstest(p_values, "uniform").pvalue > 0.01


def test_measure_describes_itself() -> None:
    measure = relative_measure(anchors=8, seed=3)
    assert measure.kind == "similarity" and not measure.metric
    assert dict(measure.options) == {"anchors": 8, "seed": 3}
    assert measure.min_rows == 17
    assert "8 random shared anchor" in measure.description and "not a metric" in measure.description


def test_bad_anchors_fail_clearly() -> None:
    x = np.random.default_rng(6).normal(size=(8, 3))
    for anchors, message in [
        (torch.arange(8), "from 1 to 7"),
        (torch.tensor([], dtype=torch.long), "from 1 to 7"),
        (torch.tensor([1, 1]), "distinct"),
        (torch.tensor([0, 8]), r"in \[0, 8\)"),
        (torch.tensor([-1, 2]), r"in \[0, 8\)"),
        (torch.tensor([0.0, 1.0]), "integers"),
        (torch.tensor([[0, 1]]), "1-D"),
    ]:
        with pytest.raises(CompareError, match=message):
            relative_similarity(x, x, anchors)
    for anchors in (0, -3, True, 2.0):
        with pytest.raises(CompareError, match="anchors must be an integer >= 1"):
            relative_measure(anchors)  # type: ignore[arg-type]
    with pytest.raises(CompareError, match="fewer than half the items"):
        random_anchors(8, 4, 0)
    with pytest.raises(CompareError, match="at least 9 rows"):
        relative_measure(4)(x, x)
    zero = x.copy()
    zero[5] = 0
    with pytest.raises(CompareError, match=r"all-zero rows \(first: row 5\)"):
        relative_similarity(x, zero, torch.tensor([0, 1]))
