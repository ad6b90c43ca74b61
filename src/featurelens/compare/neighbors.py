"""Nearest-neighbour alignment: mutual k-nearest neighbours and CKNNA (Huh, Cheung, Wang & Isola 2024,
"The Platonic Representation Hypothesis").

Both ask whether two representations of the same n items agree on which items are close, using each
item's k nearest neighbours by cosine similarity (the paper L2-normalises every row first), the item itself
excluded. Mutual kNN is the mean fraction of neighbours the two spaces share; CKNNA is centred kernel
alignment restricted to the pairs that are neighbours in both spaces. Both are invariant to rotating or
rescaling either space (not to translating it, since cosine similarity is measured from the origin).

Ties between equally similar neighbours go to the lower row index, so a permutation test on data with tied
similarities can differ slightly from shuffling the data and recomputing; continuous data has no ties.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from featurelens.compare.measure import Measure, check_pair, permute_gram
from featurelens.errors import CompareError


def unit_rows(x: torch.Tensor, name: str = "x") -> torch.Tensor:
    """The rows of ``x`` [n, d] scaled to unit length; a zero row has no direction and raises."""
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    zero = norms[:, 0] == 0
    if bool(zero.any()):
        rows = torch.nonzero(zero).flatten()
        raise CompareError(
            f"{name} has {len(rows)} all-zero rows (first: row {int(rows[0])}), which have no cosine "
            "similarity to anything; drop them from both representations first"
        )
    return x / norms


def cosine_similarities(x: torch.Tensor, name: str = "x") -> torch.Tensor:
    """The cosine similarity [n, n] between every pair of rows of ``x`` [n, d]."""
    unit = unit_rows(x, name)
    return (unit @ unit.T).clamp(-1.0, 1.0)


def check_k(k: int, n: int | None = None) -> None:
    """Raise unless 1 ≤ k (and k < n when the number of items n is known: an item has n − 1 others)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise CompareError(f"k (neighbours per item) must be an integer >= 1, got {k!r}")
    if n is not None and k >= n:
        raise CompareError(f"k (neighbours per item) must be below the number of items {n}, got {k}")


def _neighbours(similarities: torch.Tensor, k: int) -> torch.Tensor:
    """The k most similar other items [n, k] of each row of ``similarities`` [n, n], most similar first."""
    others = similarities.clone().fill_diagonal_(-math.inf)
    # Stable: among equal similarities the lower index comes first, the same on every run.
    return torch.sort(others, dim=1, descending=True, stable=True).indices[:, :k]


def knn_indices(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k nearest neighbours [n, k] (int64, most similar first) of each row of ``x`` [n, d] by cosine
    similarity, the row itself excluded; 1 ≤ k < n."""
    x = torch.as_tensor(x, dtype=torch.float64)
    check_k(k, x.shape[0])
    return _neighbours(cosine_similarities(x), k)


@dataclass(frozen=True)
class NeighbourState:
    """A representation prepared for mutual kNN: each item's neighbours [n, k] and the same as a boolean
    adjacency mask [n, n] (mask[i, j]: j is among i's neighbours)."""

    indices: torch.Tensor
    mask: torch.Tensor


def _adjacency(indices: torch.Tensor) -> torch.Tensor:
    n = indices.shape[0]
    return torch.zeros(n, n, dtype=torch.bool).scatter_(1, indices, True)


def neighbour_state(x: torch.Tensor, k: int) -> NeighbourState:
    """x [n, d] prepared for :func:`mutual_knn`."""
    check_k(k, x.shape[0])
    indices = _neighbours(cosine_similarities(x), k)
    return NeighbourState(indices, _adjacency(indices))


def permute_neighbours(state: NeighbourState, order: torch.Tensor) -> NeighbourState:
    """The state of x[order]: new item i is old item order[i], and its neighbours, old item numbers, are
    renumbered to their new positions (the inverse of ``order``)."""
    new_position = torch.empty_like(order)
    new_position[order] = torch.arange(len(order))
    return NeighbourState(new_position[state.indices[order]], permute_gram(state.mask, order))


def _mutual_knn_score(a: NeighbourState, b: NeighbourState) -> float:
    n, k = b.indices.shape
    return float(a.mask.gather(1, b.indices).sum()) / (n * k)


def mutual_knn(x: torch.Tensor, y: torch.Tensor, k: int = 10) -> float:
    """Mutual kNN alignment of x [n, dx] and y [n, dy]: the mean over items of |N_x(i) ∩ N_y(i)| / k,
    N(i) being item i's k nearest neighbours by cosine similarity (itself excluded), 1 ≤ k < n.

    1 when both spaces agree on every item's neighbours; about k / (n − 1) for unrelated data. Not a metric:
    1 − score is the mean size of the neighbour sets' symmetric difference over 2k, a pseudometric on
    neighbour graphs, and it is 0 for representations that share neighbour sets but not geometry.
    """
    check_k(k)
    x, y = check_pair(x, y)
    return _mutual_knn_score(neighbour_state(x, k), neighbour_state(y, k))


def mutual_knn_measure(k: int = 10) -> Measure:
    """Mutual kNN as a :class:`Measure`: prepare finds the neighbours once; a permutation renumbers them."""
    check_k(k)
    return Measure(
        name="mutual-knn",
        kind="similarity",
        metric=False,
        description=f"mutual k-nearest-neighbour alignment (k={k}, cosine): the mean fraction of each item's "
        f"{k} nearest neighbours that both representations share; similarity in [0, 1], about k/(n-1) for "
        "unrelated data; not a metric (different geometries with the same neighbour sets score 1)",
        prepare=lambda x: neighbour_state(x, k),
        permute=permute_neighbours,
        score=_mutual_knn_score,
        min_rows=k + 1,
        options=(("k", k),),
    )


@dataclass(frozen=True)
class CknnaState:
    """A representation prepared for CKNNA: its cosine kernel with each row's mean subtracted [n, n], its
    kNN adjacency mask [n, n], and its alignment with itself (unchanged when items are permuted)."""

    centred: torch.Tensor
    mask: torch.Tensor
    self_alignment: float


def cknna_state(x: torch.Tensor, k: int) -> CknnaState:
    """x [n, d] prepared for :func:`cknna`."""
    check_k(k, x.shape[0])
    kernel = cosine_similarities(x)
    mask = _adjacency(_neighbours(kernel, k))
    centred = kernel - kernel.mean(dim=1, keepdim=True)
    self_alignment = float((centred.square() * mask).sum())
    if not self_alignment > 0:
        raise CompareError(
            "CKNNA needs neighbours whose similarities differ from their row's mean; every item is equally "
            "similar to its neighbours and to all items (give items that differ)"
        )
    return CknnaState(centred, mask, self_alignment)


def _permute_cknna(state: CknnaState, order: torch.Tensor) -> CknnaState:
    # Row means move with their rows, so the row-centred kernel permutes like the kernel.
    return CknnaState(
        permute_gram(state.centred, order), permute_gram(state.mask, order), state.self_alignment
    )


def _cknna_score(a: CknnaState, b: CknnaState) -> float:
    both = a.mask & b.mask
    return float((a.centred * b.centred * both).sum()) / math.sqrt(a.self_alignment * b.self_alignment)


def cknna(x: torch.Tensor, y: torch.Tensor, k: int = 10) -> float:
    """CKNNA of x [n, dx] and y [n, dy] with k neighbours (1 ≤ k < n), as the paper defines it:

        Align(K, L) = Σᵢ Σⱼ α(i, j) (Kᵢⱼ − meanₗ Kᵢₗ)(Lᵢⱼ − meanₗ Lᵢₗ),
        CKNNA = Align(K, L) / sqrt(Align(K, K) Align(L, L)),

    with K, L the cosine kernels (rows L2-normalised), row means taken over all n items (i included), and
    α(i, j) = 1 when j ≠ i is among i's k nearest
    neighbours in both spaces (in Align(K, K) that is K's neighbours alone). By Cauchy–Schwarz it lies in
    [−1, 1]; 1 for the same geometry. Not a metric.

    The authors' code (platonic-rep, ``metrics.py``) differs: it scores the kNN-masked kernels with the
    unbiased HSIC estimator instead of the sum above, and its ``cknna`` fails when called with its own
    default ``topk=None`` because it compares ``topk < 2`` before replacing None (a TypeError). Here k is a
    required integer, validated before use.
    """
    check_k(k)
    x, y = check_pair(x, y)
    return _cknna_score(cknna_state(x, k), cknna_state(y, k))


def cknna_measure(k: int = 10) -> Measure:
    """CKNNA as a :class:`Measure`: prepare builds the centred kernel and neighbour mask once; each
    permutation reorders them (O(n²))."""
    check_k(k)
    return Measure(
        name="cknna",
        kind="similarity",
        metric=False,
        description=f"CKNNA (k={k}, cosine kernel): centred kernel alignment restricted to item pairs that "
        f"are among each other's {k} nearest neighbours in both representations; similarity in [-1, 1], "
        "1 for the same geometry; not a metric",
        prepare=lambda x: cknna_state(x, k),
        permute=_permute_cknna,
        score=_cknna_score,
        min_rows=k + 1,
        options=(("k", k),),
    )
