"""Centered kernel alignment (Kornblith et al. 2019, "Similarity of Neural Network Representations
Revisited"), debiased as in Song et al. 2012 / Nguyen et al. 2021.

CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) for Gram matrices K = x xᵀ, L = y yᵀ (or RBF kernels).
The plain (biased) HSIC estimator is inflated on few items: two independent random representations with
d = 1000 units and n = 50 items score CKA ≈ 0.95. The debiased estimator (the default everywhere here) is
an unbiased U-statistic of HSIC, centred on 0 for independent data at any d/n, and slightly negative values
are possible. Both are similarities in [0, 1] for the biased form, not metrics.

Linear CKA needs only per-unit sums, so :class:`~featurelens.compare.sums.CkaSums` accumulates them chunk by
chunk for every pair of two hook sets and gives the same value as the in-memory formula for data of any
length; :func:`linear_cka` is its one-pair case.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from featurelens.compare.measure import Measure, check_pair, permute_gram
from featurelens.compare.sums import CONSTANT_MESSAGE, CkaSums
from featurelens.errors import CompareError


def centered_gram(gram: torch.Tensor) -> torch.Tensor:
    """H K H for a Gram matrix K [n, n], H = I − 11ᵀ/n (rows and columns mean-centred)."""
    gram = gram - gram.mean(dim=0, keepdim=True)
    return gram - gram.mean(dim=1, keepdim=True)


def hsic_biased(k: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """The plug-in HSIC tr(KHMH) / (n−1)² of Gram matrices K, M [n, n] (Gretton et al. 2005)."""
    n = k.shape[0]
    return (centered_gram(k) * m).sum() / (n - 1) ** 2


def hsic_unbiased(k: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """The unbiased HSIC U-statistic of Gram matrices K, M [n, n] (Song et al. 2012; needs n ≥ 4)."""
    n = k.shape[0]
    k = k - torch.diag(torch.diagonal(k))
    m = m - torch.diag(torch.diagonal(m))
    k_rows, m_rows = k.sum(dim=1), m.sum(dim=1)
    trace = (k * m).sum()
    total = k_rows.sum() * m_rows.sum() / ((n - 1) * (n - 2))
    cross = 2.0 * (k_rows @ m_rows) / (n - 2)
    return (trace + total - cross) / (n * (n - 3))


def _cka(hsic_kl: torch.Tensor, hsic_kk: torch.Tensor, hsic_ll: torch.Tensor) -> float:
    denominator = torch.sqrt(hsic_kk * hsic_ll)
    if not bool(denominator > 0):
        raise CompareError(CONSTANT_MESSAGE)
    return float(hsic_kl / denominator)


@dataclass(frozen=True)
class GramState:
    """A representation prepared for kernel CKA: its Gram matrix [n, n] and its HSIC with itself."""

    gram: torch.Tensor
    self_hsic: torch.Tensor


def gram_state(gram: torch.Tensor, debiased: bool) -> GramState:
    """The Gram matrix [n, n] with its self-HSIC (rows are permuted together, so the self term is fixed)."""
    hsic = hsic_unbiased if debiased else hsic_biased
    return GramState(gram, hsic(gram, gram))


def rbf_gram(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """exp(−|xᵢ − xⱼ|² / (2 (σ·median distance)²)) for rows of x [n, d]: σ is relative to the median
    pairwise distance between distinct rows, as in Kornblith et al."""
    squared = torch.cdist(x, x).pow(2)
    rows, cols = torch.triu_indices(len(x), len(x), offset=1)
    distances = squared[rows, cols].sqrt()  # each pair once: the same median as both orders
    count = len(distances)
    low, high = distances.kthvalue((count - 1) // 2 + 1).values, distances.kthvalue(count // 2 + 1).values
    median = (low + high) / 2  # numpy's median of an even count
    if not bool(median > 0):
        raise CompareError("kernel CKA needs distinct rows: every pairwise distance is 0")
    return torch.exp(-squared / (2.0 * (sigma * median) ** 2))


def linear_cka(x: torch.Tensor, y: torch.Tensor, *, debiased: bool = True) -> float:
    """Linear CKA of x [n, dx] and y [n, dy] (float64): debiased by default, the plug-in form otherwise.

    From per-unit sums (cost n·dx·dy) when units are fewer than items, else from the n × n Gram matrices
    (cost n²·(dx + dy)); both give the same value.
    """
    x, y = check_pair(x, y, 4 if debiased else 2)
    if len(x) ** 2 < x.shape[1] * y.shape[1]:
        hsic = hsic_unbiased if debiased else hsic_biased
        k, m = x @ x.T, y @ y.T
        return _cka(hsic(k, m), hsic(k, k), hsic(m, m))
    sums = CkaSums.start({"x": x}, {"y": y})
    sums.add({"x": x}, {"y": y})
    value = float(sums.cka(debiased=debiased)[0, 0])
    if value != value:
        raise CompareError(CONSTANT_MESSAGE)
    return value


def kernel_cka(x: torch.Tensor, y: torch.Tensor, *, sigma: float = 0.8, debiased: bool = True) -> float:
    """RBF-kernel CKA of x [n, dx] and y [n, dy] with bandwidth ``sigma`` × the median distance."""
    x, y = check_pair(x, y, 4 if debiased else 2)
    measure = kernel_cka_measure(sigma=sigma, debiased=debiased)
    return float(measure.score(measure.prepare(x), measure.prepare(y)))


def _gram_score(debiased: bool):
    hsic = hsic_unbiased if debiased else hsic_biased

    def score(a: GramState, b: GramState) -> float:
        return _cka(hsic(a.gram, b.gram), a.self_hsic, b.self_hsic)

    return score


def _permute_state(state: GramState, order: torch.Tensor) -> GramState:
    return GramState(permute_gram(state.gram, order), state.self_hsic)


@dataclass(frozen=True)
class GramNulls:
    """A Gram matrix permuted P ways, ready to score against many others at once: ``grams`` [P, n·n]
    (diagonals zeroed for the debiased form), their row sums [P, n], total and self-HSIC."""

    grams: torch.Tensor
    row_sums: torch.Tensor
    total: torch.Tensor
    self_hsic: torch.Tensor


def _gram_nulls(debiased: bool):
    def permute_many(state: GramState, orders: torch.Tensor) -> GramNulls:
        gram = state.gram - torch.diag(torch.diagonal(state.gram)) if debiased else state.gram
        grams = permute_gram(gram, orders)
        return GramNulls(grams.flatten(1), grams.sum(dim=2), gram.sum(), state.self_hsic)

    def score_many(states: list[GramState], nulls: GramNulls) -> np.ndarray:
        n = states[0].gram.shape[0]
        own = torch.stack([state.self_hsic for state in states])[:, None]
        if debiased:
            k = torch.stack([state.gram - torch.diag(torch.diagonal(state.gram)) for state in states])
            k_rows = k.sum(dim=2)  # [A, n]
            trace = k.flatten(1) @ nulls.grams.T  # [A, P]: one product for every pair of state and null
            total = k_rows.sum(dim=1, keepdim=True) * nulls.total / ((n - 1) * (n - 2))
            cross = 2.0 * (k_rows @ nulls.row_sums.T) / (n - 2)
            hsic = (trace + total - cross) / (n * (n - 3))
        else:
            centred = torch.stack([centered_gram(state.gram) for state in states])
            hsic = centred.flatten(1) @ nulls.grams.T / (n - 1) ** 2
        return (hsic / torch.sqrt(own * nulls.self_hsic)).numpy()

    return permute_many, score_many


def linear_cka_measure(*, debiased: bool = True) -> Measure:
    """Linear CKA as a :class:`Measure` (its permutation null reorders the Gram matrix, O(n²) each)."""
    name = "cka" if debiased else "cka-biased"
    description = (
        "debiased linear CKA: similarity, about 0 for unrelated and 1 for identical representations up to "
        "rotation and scale; not a metric"
        if debiased
        else "biased (plug-in) linear CKA: similarity in [0, 1], inflated toward 1 when units outnumber "
        "items; not a metric"
    )
    return Measure(
        name=name,
        kind="similarity",
        metric=False,
        description=description,
        prepare=lambda x: gram_state(x @ x.T, debiased),
        permute=_permute_state,
        score=_gram_score(debiased),
        min_rows=4 if debiased else 2,
        options=(("debiased", debiased),),
        permute_many=_gram_nulls(debiased)[0],
        score_many=_gram_nulls(debiased)[1],
    )


def kernel_cka_measure(*, sigma: float = 0.8, debiased: bool = True) -> Measure:
    """RBF-kernel CKA as a :class:`Measure` (bandwidth ``sigma`` × the median pairwise distance)."""
    if not sigma > 0:
        raise CompareError(f"the RBF bandwidth sigma must be positive, got {sigma}")
    return Measure(
        name="kernel-cka",
        kind="similarity",
        metric=False,
        description=f"RBF-kernel CKA (sigma {sigma} x median distance, "
        f"{'debiased' if debiased else 'biased'}): similarity, 1 for identical representations up to "
        "rotation, scale and translation; not a metric",
        prepare=lambda x: gram_state(rbf_gram(x, sigma), debiased),
        permute=_permute_state,
        score=_gram_score(debiased),
        min_rows=4 if debiased else 2,
        options=(("sigma", sigma), ("debiased", debiased)),
        permute_many=_gram_nulls(debiased)[0],
        score_many=_gram_nulls(debiased)[1],
    )
