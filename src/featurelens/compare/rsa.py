"""Representational similarity analysis (Kriegeskorte, Mur & Bandettini 2008, "Representational similarity
analysis — connecting the branches of systems neuroscience").

Each representation x [n, d] is summarised by its representational dissimilarity matrix (RDM) [n, n]: how
unlike each pair of items is. Two representations are then compared through the upper triangles (the
m = n(n−1)/2 distinct pairs) of their RDMs, by Pearson correlation, Spearman correlation (Pearson of
average ranks) or Kendall's tau-a, so units never need to correspond and widths may differ.

Conventions follow rsatoolbox where it has one: "correlation" distance is 1 − Pearson r between two items'
patterns across units, and Kendall's tau-a divides by all m(m−1)/2 pairs of pairs (ties count as neither
concordant nor discordant). rsatoolbox's "euclidean" RDM is the *squared* Euclidean distance divided by the
number of units; here "euclidean" is the plain distance and "sqeuclidean" the squared one. Dividing by d
rescales every entry alike, so "sqeuclidean" gives the same RSA value as rsatoolbox's "euclidean" under
every comparison method here, and the rank methods cannot tell any of the three Euclidean variants apart.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from featurelens.compare.measure import Measure, check_pair, permute_gram
from featurelens.errors import CompareError

DISTANCES = ("correlation", "euclidean", "sqeuclidean")
METHODS = ("pearson", "spearman", "kendall")


def _check_choice(value: str, accepted: tuple[str, ...], what: str) -> None:
    if value not in accepted:
        raise CompareError(f"unknown RSA {what} {value!r}; accepted: {', '.join(accepted)}")


def rdm(x: torch.Tensor, distance: str = "correlation") -> torch.Tensor:
    """The representational dissimilarity matrix [n, n] of the rows (items) of ``x`` [n, d]; diagonal 0.

    ``distance``: "correlation" (1 − Pearson r between two rows; rows that are constant across units have
    no correlation and raise), "euclidean" (|xᵢ − xⱼ|) or "sqeuclidean" (|xᵢ − xⱼ|²; rsatoolbox's
    "euclidean" is this divided by d).
    """
    _check_choice(distance, DISTANCES, "distance")
    x = torch.as_tensor(x, dtype=torch.float64)
    if x.ndim != 2:
        raise CompareError(f"an RDM needs x as [items, units], got shape {tuple(x.shape)}")
    if distance == "correlation":
        spread = x.amax(dim=1) - x.amin(dim=1)
        # Relative, so that a constant row whose mean rounds (0.1 three times) still counts as constant.
        constant = spread <= 1e-12 * x.abs().amax(dim=1)
        if bool(constant.any()):
            rows = torch.nonzero(constant).flatten()
            raise CompareError(
                f"correlation distance needs rows that vary across units, but {len(rows)} rows are constant "
                f"(first: row {int(rows[0])}); use distance='euclidean' or drop them"
            )
        centred = x - x.mean(dim=1, keepdim=True)
        unit = centred / torch.linalg.vector_norm(centred, dim=1, keepdim=True)
        out = 1.0 - (unit @ unit.T).clamp(-1.0, 1.0)
    else:
        # The direct difference (not the Gram expansion) keeps small distances exact.
        out = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")
        if distance == "sqeuclidean":
            out = out.square()
    return out.fill_diagonal_(0.0)


@functools.lru_cache(maxsize=8)
def _triangle_indices(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Cached: a permutation test reads the triangle of the same size once per permutation.
    rows, cols = torch.triu_indices(n, n, offset=1)
    return rows, cols


def upper_triangle(matrix: torch.Tensor) -> torch.Tensor:
    """The m = n(n−1)/2 entries above the diagonal of ``matrix`` [n, n], row by row."""
    rows, cols = _triangle_indices(matrix.shape[0])
    return matrix[rows, cols]


def _tie_groups(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``values`` [m] sorted: (the sorting order, each sorted entry's tie group 0..g−1, each group's size)."""
    # numpy, not torch: torch's CPU sort is tens of times slower on these sizes (45k entries at n = 300).
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.ones(len(values), dtype=bool)
    starts[1:] = ordered[1:] != ordered[:-1]
    group = np.cumsum(starts) - 1
    return order, group, np.bincount(group)


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 1..m of ``values`` [m] (float64), tied values sharing their average rank (as scipy's
    rankdata)."""
    order, group, counts = _tie_groups(values.numpy(force=True))
    first = np.cumsum(counts) - counts
    ranks = np.empty(len(order), dtype=np.float64)
    ranks[order] = (first + (counts - 1) / 2.0 + 1.0)[group]
    return torch.from_numpy(ranks)


def dense_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 0..g−1 of ``values`` [m] (int64), equal values sharing one rank and no gaps."""
    order, group, _ = _tie_groups(values.numpy(force=True))
    ranks = np.empty(len(order), dtype=np.int64)
    ranks[order] = group
    return torch.from_numpy(ranks)


def _tied_pairs_sorted(ordered: np.ndarray) -> int:
    """How many pairs of entries of the sorted array ``ordered`` [m] are equal."""
    if len(ordered) == 0:
        return 0
    edges = np.flatnonzero(np.diff(ordered)) + 1
    runs = np.diff(np.concatenate(([0], edges, [len(ordered)])))
    return int((runs * (runs - 1) // 2).sum())


def strict_inversions(values: torch.Tensor | np.ndarray) -> int:
    """How many pairs i < j have values[i] > values[j], for non-negative integers ``values`` [m].

    A most-significant-bit-first radix pass: items are kept in groups that share their higher bits, in
    their original order within each group; a pair is an inversion exactly when, at the first bit where the
    two differ, the earlier item has a 1 and the later a 0, so each bit adds, for every 0, the 1s before it
    in its group, and then splits every group stably into its 0s and 1s. O(m) per bit, O(m log m) in all.
    """
    arranged = np.asarray(values, dtype=np.int64)
    m = len(arranged)
    if m < 2:
        return 0
    index = np.arange(m)
    group_start = np.zeros(m, dtype=np.int64)
    group_end = np.full(m, m, dtype=np.int64)
    total = 0
    for shift in reversed(range(max(int(arranged.max()).bit_length(), 1))):
        bit = (arranged >> shift) & 1
        ones_upto = np.concatenate(([0], np.cumsum(bit)))
        ones_before = ones_upto[index] - ones_upto[group_start]
        is_zero = bit == 0
        total += int(ones_before[is_zero].sum())
        zeros_in_group = (group_end - group_start) - (ones_upto[group_end] - ones_upto[group_start])
        new_position = np.where(is_zero, index - ones_before, group_start + zeros_in_group + ones_before)
        new_start = np.where(is_zero, group_start, group_start + zeros_in_group)
        new_end = np.where(is_zero, group_start + zeros_in_group, group_end)
        arranged_next = np.empty_like(arranged)
        arranged_next[new_position] = arranged
        group_start = np.empty_like(group_start)
        group_start[new_position] = new_start
        group_end = np.empty_like(group_end)
        group_end[new_position] = new_end
        arranged = arranged_next
    return total


def kendall_tau_a(a: torch.Tensor, b: torch.Tensor) -> float:
    """Kendall's tau-a of two vectors [m]: (concordant − discordant) / (m(m−1)/2) over all pairs of
    entries, a pair tied in either vector counting as neither (rsatoolbox's "tau-a").

    Costs O(m log m) (no m × m pair table): after sorting by (a, b) the discordant pairs are the strict
    inversions of b (:func:`strict_inversions`), and concordant + discordant = pairs − tied in a − tied in
    b + tied in both.
    """
    ra, rb = dense_ranks(a).numpy(), dense_ranks(b).numpy()
    return _tau_a(ra, rb, _tied_pairs_sorted(np.sort(ra)), _tied_pairs_sorted(np.sort(rb)))


def _tau_a(a: np.ndarray, b: np.ndarray, tied_a: int, tied_b: int) -> float:
    """tau-a of dense ranks ``a``, ``b`` [m] whose own tied pair counts are known."""
    m = len(a)
    pairs = m * (m - 1) // 2
    radix = int(b.max()) + 1
    keys = np.sort(a * radix + b)
    untied = pairs - tied_a - tied_b + _tied_pairs_sorted(keys)
    return (untied - 2 * strict_inversions(keys % radix)) / pairs


@dataclass(frozen=True)
class KendallState:
    """An RDM prepared for tau-a: the dense ranks [n, n] of its upper triangle placed back symmetrically
    (permuting items moves each pair's rank with the pair) and how many pairs of pairs tie."""

    ranks: torch.Tensor
    tied_pairs: int


def _symmetric(n: int, triangle: torch.Tensor) -> torch.Tensor:
    """The symmetric [n, n] matrix with ``triangle`` [m] above and below the diagonal, 0 on it."""
    out = torch.zeros(n, n, dtype=triangle.dtype)
    rows, cols = _triangle_indices(n)
    out[rows, cols] = triangle
    out[cols, rows] = triangle
    return out


def _standardised(n: int, triangle: torch.Tensor, what: str) -> torch.Tensor:
    """``triangle`` [m] centred and scaled to unit norm, placed symmetrically in [n, n]: the Pearson
    correlation of two triangles is then half the sum of the product of their matrices."""
    centred = triangle - triangle.mean()
    norm = torch.linalg.vector_norm(centred)
    if not bool(norm > 1e-12 * triangle.abs().max()):
        raise CompareError(
            f"the {what} has the same dissimilarity for every pair of items, so it correlates with nothing; "
            "give items that differ"
        )
    return _symmetric(n, centred / norm)


def rdm_state(matrix: torch.Tensor, method: str, what: str = "RDM") -> Any:
    """An RDM [n, n] prepared for :func:`compare_rdms` by ``method``: its triangle standardised (pearson),
    its average ranks standardised (spearman), or its dense ranks (kendall), kept as [n, n] so that
    ``permute_gram`` reorders items exactly as permuting the data first would."""
    _check_choice(method, METHODS, "method")
    n = matrix.shape[0]
    triangle = upper_triangle(matrix)
    if method == "pearson":
        return _standardised(n, triangle, what)
    if method == "spearman":
        return _standardised(n, average_ranks(triangle), what)
    ranks = dense_ranks(triangle)
    return KendallState(_symmetric(n, ranks), _tied_pairs_sorted(np.sort(ranks.numpy())))


def _score(a: Any, b: Any) -> float:
    if isinstance(a, KendallState):
        return _tau_a(
            upper_triangle(a.ranks).numpy(), upper_triangle(b.ranks).numpy(), a.tied_pairs, b.tied_pairs
        )
    # Both standardised with zero diagonals: each pair appears twice in the full product.
    return float((a * b).sum() / 2.0)


def _permute(state: Any, order: torch.Tensor) -> Any:
    if isinstance(state, KendallState):
        return KendallState(permute_gram(state.ranks, order), state.tied_pairs)
    return permute_gram(state, order)


def compare_rdms(a: torch.Tensor, b: torch.Tensor, method: str = "spearman") -> float:
    """The correlation of the upper triangles (diagonal excluded) of RDMs ``a`` and ``b`` [n, n], n ≥ 3.

    ``method``: "pearson"; "spearman" (Pearson of average ranks); "kendall" (Kendall's tau-a, see
    :func:`kendall_tau_a`: O(m log m) for m = n(n−1)/2 pairs, tens of milliseconds per score at
    n = 300). Only the upper triangles are read, so asymmetric matrices are compared on their upper halves.
    """
    _check_choice(method, METHODS, "method")
    a, b = (torch.as_tensor(t, dtype=torch.float64) for t in (a, b))
    for name, t in (("a", a), ("b", b)):
        if t.ndim != 2 or t.shape[0] != t.shape[1]:
            raise CompareError(f"RDM {name} must be square [items, items], got shape {tuple(t.shape)}")
    if a.shape != b.shape:
        raise CompareError(f"RDMs must describe the same items: a is {tuple(a.shape)}, b is {tuple(b.shape)}")
    if a.shape[0] < 3:
        raise CompareError(f"comparing RDMs needs at least 3 items (3 pairs), got {a.shape[0]}")
    return _score(rdm_state(a, method, "RDM a"), rdm_state(b, method, "RDM b"))


def rsa(x: torch.Tensor, y: torch.Tensor, distance: str = "correlation", method: str = "spearman") -> float:
    """RSA of x [n, dx] and y [n, dy]: :func:`compare_rdms` of their :func:`rdm` s."""
    _check_choice(distance, DISTANCES, "distance")
    _check_choice(method, METHODS, "method")
    x, y = check_pair(x, y, 3)
    return _score(
        rdm_state(rdm(x, distance), method, "RDM of x"), rdm_state(rdm(y, distance), method, "RDM of y")
    )


def rsa_measure(distance: str = "correlation", method: str = "spearman") -> Measure:
    """RSA as a :class:`Measure`: prepare builds the RDM (and ranks it) once; a permutation reorders the
    prepared matrix's rows and columns, and costs O(n²) (pearson, spearman) or O(m log m) with
    m = n(n−1)/2 (kendall)."""
    _check_choice(distance, DISTANCES, "distance")
    _check_choice(method, METHODS, "method")
    correlation = {"pearson": "Pearson r", "spearman": "Spearman rho", "kendall": "Kendall tau-a"}[method]
    return Measure(
        name="rsa",
        kind="similarity",
        metric=False,
        description=f"representational similarity analysis: {correlation} between the two representations' "
        f"{distance}-distance dissimilarity matrices (pairs above the diagonal); similarity in [-1, 1], "
        "1 when the item-by-item dissimilarities agree; not a metric",
        prepare=lambda x: rdm_state(rdm(x, distance), method),
        permute=_permute,
        score=_score,
        min_rows=3,
        options=(("distance", distance), ("method", method)),
    )
