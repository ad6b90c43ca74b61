"""`top_k` returns what torch.topk returns: the same columns on distinct values, the same values on ties."""

from __future__ import annotations

import pytest
import torch

from featurelens.dictionaries.selection import DIRECT, GROUP, top_k


def as_sets(values: torch.Tensor, indices: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Order-free forms: the sorted values of each row, and a [n, width] mask of the chosen columns."""
    chosen = torch.zeros(indices.shape[0], width, dtype=torch.bool).scatter_(1, indices, True)
    return values.sort(dim=1).values, chosen


@pytest.mark.parametrize(
    ("n", "width", "k"),
    [(64, 9216, 32), (50, 9219, 32), (33, 4096, 128), (20, 8 * 9216 + 5, 64), (9, 3000, 1), (5, 200, 7)],
)
def test_the_same_columns_and_values_as_torch_topk(n: int, width: int, k: int) -> None:
    rows = torch.randn(n, width, generator=torch.Generator().manual_seed(width + k))
    rows[:, -3:] += 4.0  # the tail beyond the last whole group holds winners
    expected_values, expected_indices = rows.topk(k, dim=1, sorted=False)
    values, indices = top_k(rows, k)
    assert values.shape == indices.shape == (n, k)
    assert torch.equal(rows.gather(1, indices), values)
    got, want = as_sets(values, indices, width), as_sets(expected_values, expected_indices, width)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_ties_give_the_same_values_at_distinct_columns() -> None:
    rows = torch.randint(0, 6, (40, 9216), generator=torch.Generator().manual_seed(0)).float()
    values, indices = top_k(rows, 32)
    assert torch.equal(values.sort(dim=1).values, rows.topk(32, dim=1).values.sort(dim=1).values)
    assert torch.equal(rows.gather(1, indices), values)
    assert all(len(set(row.tolist())) == 32 for row in indices)


def test_a_winner_hidden_behind_a_larger_group_maximum_is_found() -> None:
    """Two of the top k in one group: a pick by group maxima alone would miss the second."""
    width, k = 4 * GROUP * 4 * 8, 4
    rows = torch.zeros(1, width)
    groups = width // GROUP
    rows[0, [0, groups, 2 * groups, 3]] = torch.tensor([9.0, 8.0, 7.0, 6.0])  # 0, groups, 2*groups: group 0
    assert width > DIRECT
    _, indices = top_k(rows, k)
    assert sorted(indices[0].tolist()) == [0, 3, groups, 2 * groups]


def test_gradients_reach_the_chosen_entries_as_through_torch_topk() -> None:
    """AuxK takes a top k of dead pre-activations that need a gradient."""
    rows = torch.randn(16, 9216, generator=torch.Generator().manual_seed(1))
    weights = torch.randn(16, 9216, generator=torch.Generator().manual_seed(2))
    grads = []
    for select in (top_k, lambda v, k: v.topk(k, dim=1, sorted=False)):
        leaf = rows.clone().requires_grad_(True)
        values, indices = select(leaf, 288)
        (values * weights.gather(1, indices)).sum().backward()
        grads.append(leaf.grad)
    assert torch.equal(grads[0], grads[1]) and int((grads[0] != 0).sum()) == 16 * 288


def test_bfloat16_rows_as_codebook_selection_passes_them() -> None:
    rows = torch.randn(24, 9216, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    values, indices = top_k(rows, 32)
    assert values.dtype == torch.bfloat16
    assert torch.equal(values.sort(dim=1).values, rows.topk(32, dim=1).values.sort(dim=1).values)
    assert torch.equal(rows.gather(1, indices), values)
