"""Representation comparison: ``featurelens.compare`` vs the peer libraries that overlap, back to back.

Inputs: planted-structure data, x = z A + noise and y = z B + noise for a shared latent z [n, 16] (so the
two representations are related but not identical), float64, at a few sizes. Each measure is run through
featurelens and through a peer on the same arrays in one process (best of ``--repeats``, interleaved);
agreement is |featurelens - peer| and ratio = peer seconds / featurelens seconds (above 1: featurelens is
faster).

Peers (installed into the project venv, torch pinned, see requirements-peers.txt):

  ckatorch       linear / RBF CKA from n x n Gram matrices (Kornblith et al.'s centring, debiased or not)
  repsim         CKA (gretton / song estimators), CCA summaries, SVCCA, PWCCA (C++ core)
  rsatoolbox     RDMs (correlation distance) compared by spearman, corr (Pearson) and tau-a
  scikit-learn   CCA's first canonical pair (iterative NIPALS)
  scipy          orthogonal_procrustes for the Procrustes distance

Formula reimplementations (clone-only code, not on PyPI), transcribed here as the reference:

  netrep         Williams et al.'s LinearMetric (partial whitening ``whiten``, SVD alignment, angular score)
  platonic-rep   Huh et al.'s ``mutual_knn`` and the CKNNA of the paper (and of their code, which differs)
  Kornblith      google-research representation_similarity ``feature_space_linear_cka`` (O(n d^2), the
                 only per-pair CKA that fits 100k rows: the Gram-based peers need n^2 x 8 B = 80 GB there)
  Raghu          SVCCA: top singular directions explaining 99% of variance, then mean CCA

Also: a permutation test (featurelens ``compare(..., permutations=P)``, which prepares each side once and
reorders the prepared state, vs the naive loop a peer user writes: recompute the peer's measure on
y[perm] for every permutation, with the same permutation orders); and the headline layer map, debiased
linear CKA for every pair of the 30 ``layers.*.resid_post`` hooks of the bundled model over 100k tokens of a
store (featurelens ``CkaSums`` streamed over store chunks vs one per-pair call for each of the 465 pairs,
timed on a sample of pairs and extrapolated).

Run from the project venv::

    .venv/bin/python benchmarks/compare.py --quick   # small sizes, 50 permutations, synthetic map; < 1 min
    .venv/bin/python benchmarks/compare.py           # captures /tmp/bench-compare/acts first if missing
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from machine import cpu_name, load_average, matmul_peak_gflops, vector_flags, versions

PEERS = ("featurelens", "torch", "numpy", "scipy", "scikit-learn", "rsatoolbox", "ckatorch", "repsim")
STORE = Path("/tmp/bench-compare/acts")
LAYERS = 30
LATENT = 16
K_NEIGHBOURS = 10

# -- timing --------------------------------------------------------------------------------------------------


def best_of(
    calls: dict[str, Callable[[], Any]], repeats: int, warm_up: bool = True
) -> dict[str, tuple[float, Any]]:
    """Each call ``repeats`` times, interleaved (a, b, a, b: drifting load hits both); fastest kept."""
    best: dict[str, tuple[float, Any]] = {}
    if (
        warm_up and repeats == 1
    ):  # one untimed warm-up, so that first-call costs (imports, allocator) are not timed
        for call in calls.values():
            call()
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            result = call()
            seconds = time.perf_counter() - start
            if name not in best or seconds < best[name][0]:
                best[name] = (seconds, result)
    return best


def planted(n: int, d: int, seed: int, noise: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """x, y [n, d] float64 sharing a latent z [n, 16] through different random maps, plus noise."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, LATENT))
    x = z @ rng.standard_normal((LATENT, d)) + noise * rng.standard_normal((n, d))
    y = np.tanh(z @ rng.standard_normal((LATENT, d))) * 3 + noise * rng.standard_normal((n, d))
    return x, y


# -- formula reimplementations (clone-only peers) ------------------------------------------------------------


def kornblith_feature_space_cka(x: np.ndarray, y: np.ndarray, debiased: bool = True) -> float:
    """google-research/representation_similarity ``feature_space_linear_cka``, transcribed (numpy)."""

    def helper(xty: float, rows_x: np.ndarray, rows_y: np.ndarray, norm_x: float, norm_y: float, n: int):
        return xty - n / (n - 2.0) * rows_x.dot(rows_y) + norm_x * norm_y / ((n - 1) * (n - 2))

    x = x - x.mean(0, keepdims=True)
    y = y - y.mean(0, keepdims=True)
    similarity = np.linalg.norm(x.T @ y) ** 2
    normalization_x = np.linalg.norm(x.T @ x)
    normalization_y = np.linalg.norm(y.T @ y)
    if debiased:
        n = x.shape[0]
        rows_x, rows_y = np.einsum("ij,ij->i", x, x), np.einsum("ij,ij->i", y, y)
        norm_x, norm_y = rows_x.sum(), rows_y.sum()
        similarity = helper(similarity, rows_x, rows_y, norm_x, norm_y, n)
        normalization_x = np.sqrt(helper(normalization_x**2, rows_x, rows_x, norm_x, norm_x, n))
        normalization_y = np.sqrt(helper(normalization_y**2, rows_y, rows_y, norm_y, norm_y, n))
    return float(similarity / (normalization_x * normalization_y))


def song_unbiased_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Debiased linear CKA straight from Song et al. 2012's unbiased HSIC on n x n Gram matrices (float64)."""

    def hsic(k: np.ndarray, m: np.ndarray) -> float:
        n = len(k)
        k, m = k - np.diag(np.diag(k)), m - np.diag(np.diag(m))
        one_k, one_m = k.sum(1), m.sum(1)
        value = (k * m).sum() + one_k.sum() * one_m.sum() / ((n - 1) * (n - 2)) - 2 * one_k @ one_m / (n - 2)
        return value / (n * (n - 3))

    k, m = x @ x.T, y @ y.T
    return float(hsic(k, m) / math.sqrt(hsic(k, k) * hsic(m, m)))


def netrep_whiten(x: np.ndarray, alpha: float, eigval_tol: float = 1e-7) -> np.ndarray:
    """netrep.utils.whiten(x, alpha, preserve_variance=True), transcribed: x (centred) @ Z."""
    if alpha > 1 - eigval_tol:
        return x
    lam, v = np.linalg.eigh(x.T @ x)
    lam = np.maximum(lam, eigval_tol)
    d = alpha + (1 - alpha) * lam ** (-1 / 2)
    new_var = np.sum(alpha**2 * lam + 2 * alpha * (1 - alpha) * lam**0.5 + (1 - alpha) ** 2)
    d *= np.sqrt(np.sum(lam) / new_var)
    return x @ ((v * d[None, :]) @ v.T)


def netrep_angular(x: np.ndarray, y: np.ndarray, alpha: float) -> float:
    """netrep LinearMetric(alpha, score_method="angular").fit_score(x, y), transcribed (equal widths)."""
    xw = netrep_whiten(x - x.mean(0), alpha)
    yw = netrep_whiten(y - y.mean(0), alpha)
    u, _, vt = np.linalg.svd(xw.T @ yw)
    tx, ty = xw @ u, yw @ vt.T
    corr = np.dot(tx.ravel(), ty.ravel()) / (np.linalg.norm(tx) * np.linalg.norm(ty))
    return float(np.arccos(np.clip(corr, -1.0, 1.0)))


def scipy_procrustes(x: np.ndarray, y: np.ndarray) -> float:
    """min over orthogonal R of |X R - Y|_F for X, Y centred and unit-Frobenius (scipy's solver)."""
    from scipy.linalg import orthogonal_procrustes

    x = x - x.mean(0)
    y = y - y.mean(0)
    x, y = x / np.linalg.norm(x), y / np.linalg.norm(y)
    rotation, _ = orthogonal_procrustes(x, y)
    return float(np.linalg.norm(x @ rotation - y))


def platonic_neighbours(feats: torch.Tensor, k: int) -> torch.Tensor:
    """platonic-rep ``compute_nearest_neighbors``: top-k of feats @ feats.T with the diagonal at -1e8."""
    return (feats @ feats.T).fill_diagonal_(-1e8).argsort(dim=1, descending=True)[:, :k]


def platonic_mutual_knn(x: np.ndarray, y: np.ndarray, k: int) -> float:
    """platonic-rep ``mutual_knn`` on L2-normalised rows, transcribed."""
    a = torch.nn.functional.normalize(torch.from_numpy(x), dim=-1)
    b = torch.nn.functional.normalize(torch.from_numpy(y), dim=-1)
    knn_a, knn_b = platonic_neighbours(a, k), platonic_neighbours(b, k)
    n = len(knn_a)
    rows = torch.arange(n)[:, None]
    mask_a, mask_b = torch.zeros(n, n, dtype=a.dtype), torch.zeros(n, n, dtype=a.dtype)
    mask_a[rows, knn_a] = 1.0
    mask_b[rows, knn_b] = 1.0
    return float(((mask_a * mask_b).sum(dim=1) / k).mean())


def paper_cknna(x: np.ndarray, y: np.ndarray, k: int) -> float:
    """CKNNA as Huh et al. 2024 define it (eq. in sec. A): alignment of row-centred cosine kernels on the
    pairs that are mutual-kNN in both spaces, over the square roots of each space's own alignment."""

    def parts(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        unit = z / np.linalg.norm(z, axis=1, keepdims=True)
        kernel = unit @ unit.T
        others = kernel.copy()
        np.fill_diagonal(others, -np.inf)
        nearest = np.argsort(-others, axis=1, kind="stable")[:, :k]
        mask = np.zeros_like(kernel, dtype=bool)
        np.put_along_axis(mask, nearest, True, axis=1)
        return kernel - kernel.mean(1, keepdims=True), mask

    (ck, mk), (cl, ml) = parts(x), parts(y)
    align = (ck * cl * (mk & ml)).sum()
    return float(align / math.sqrt((ck * ck * mk).sum() * (cl * cl * ml).sum()))


def platonic_code_cknna(x: np.ndarray, y: np.ndarray, k: int) -> float:
    """platonic-rep ``metrics.cknna`` (unbiased=True) as their code computes it, transcribed: the unbiased
    HSIC of the kNN-masked kernels (not the paper's sum)."""

    def hsic_unbiased(k_: torch.Tensor, l_: torch.Tensor) -> torch.Tensor:
        m = k_.shape[0]
        kt, lt = k_.clone().fill_diagonal_(0), l_.clone().fill_diagonal_(0)
        value = (kt * lt.T).sum() + kt.sum() * lt.sum() / ((m - 1) * (m - 2)) - 2 * (kt @ lt).sum() / (m - 2)
        return value / (m * (m - 3))

    a = torch.nn.functional.normalize(torch.from_numpy(x), dim=-1)
    b = torch.nn.functional.normalize(torch.from_numpy(y), dim=-1)
    kk, ll = a @ a.T, b @ b.T
    n = len(kk)

    def similarity(k_: torch.Tensor, l_: torch.Tensor) -> torch.Tensor:
        top_k = torch.topk(k_.clone().fill_diagonal_(float("-inf")), k, dim=1).indices
        top_l = torch.topk(l_.clone().fill_diagonal_(float("-inf")), k, dim=1).indices
        mask = torch.zeros(n, n, dtype=k_.dtype).scatter_(1, top_k, 1) * torch.zeros(
            n, n, dtype=k_.dtype
        ).scatter_(1, top_l, 1)
        return hsic_unbiased(mask * k_, mask * l_)

    return float(similarity(kk, ll) / (torch.sqrt(similarity(kk, kk) * similarity(ll, ll)) + 1e-6))


def raghu_svcca(x: np.ndarray, y: np.ndarray, keep: float = 0.99) -> float:
    """SVCCA (Raghu et al. 2017): each side reduced to the fewest top singular directions explaining ``keep``
    of its variance, then the mean canonical correlation of the two reductions (float64 numpy)."""

    def reduce(z: np.ndarray) -> np.ndarray:
        u, s, _ = np.linalg.svd(z - z.mean(0), full_matrices=False)
        explained = np.cumsum(s**2) / np.sum(s**2)
        return u[:, : int(np.searchsorted(explained, keep)) + 1]

    return float(np.linalg.svd(reduce(x).T @ reduce(y), compute_uv=False).clip(0, 1).mean())


def sklearn_first_cca(x: np.ndarray, y: np.ndarray) -> float:
    """scikit-learn CCA(n_components=1): the correlation of the first pair of canonical scores."""
    from sklearn.cross_decomposition import CCA

    scores_x, scores_y = CCA(n_components=1, max_iter=2000, tol=1e-10).fit(x, y).transform(x, y)
    return float(np.corrcoef(scores_x[:, 0], scores_y[:, 0])[0, 1])


# -- the measure table ---------------------------------------------------------------------------------------

Case = tuple[str, str, Callable[[], float], Callable[[], float], str]  # measure, peer, fl, peer, note


def rsatoolbox_rsa(x: np.ndarray, y: np.ndarray, method: str) -> float:
    import rsatoolbox

    rdm_x = rsatoolbox.rdm.calc_rdm(rsatoolbox.data.Dataset(x), method="correlation")
    rdm_y = rsatoolbox.rdm.calc_rdm(rsatoolbox.data.Dataset(y), method="correlation")
    return float(rsatoolbox.rdm.compare(rdm_x, rdm_y, method=method)[0, 0])


def repsim_song_ratio(x: np.ndarray, y: np.ndarray) -> float:
    """Debiased CKA from repsim's own unbiased ("song") HSIC matrix, normalised consistently."""
    import repsim

    hsic = repsim.hsic([x, y], "linear", "song")
    return float(hsic[0, 1] / math.sqrt(hsic[0, 0] * hsic[1, 1]))


def ckatorch_cka(x: np.ndarray, y: np.ndarray, **options: Any) -> float:
    from ckatorch.core import cka_base

    return float(cka_base(torch.from_numpy(x), torch.from_numpy(y), **options))


def gram_cases(x: np.ndarray, y: np.ndarray) -> list[Case]:
    """Measures that any n, d allows: CKA, kernel CKA, RSA, Procrustes, shape (alpha 1), kNN measures."""
    import repsim

    from featurelens.compare.cka import kernel_cka, linear_cka
    from featurelens.compare.neighbors import cknna, mutual_knn
    from featurelens.compare.rsa import rsa
    from featurelens.compare.shape import angular_shape_distance, procrustes_distance

    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    k = K_NEIGHBOURS
    cases: list[Case] = [
        (
            "cka",
            "ckatorch unbiased",
            lambda: linear_cka(tx, ty),
            lambda: ckatorch_cka(x, y, unbiased=True),
            "",
        ),
        (
            "cka",
            "Kornblith feature-space",
            lambda: linear_cka(tx, ty),
            lambda: kornblith_feature_space_cka(x, y),
            "f",
        ),
        (
            "cka",
            "repsim linear song",
            lambda: linear_cka(tx, ty),
            lambda: repsim.cka([x, y], "linear", "song")[0, 1],
            "r",
        ),
        (
            "cka",
            "repsim hsic(song): xy / sqrt(xx yy)",
            lambda: linear_cka(tx, ty),
            lambda: repsim_song_ratio(x, y),
            "",
        ),
        (
            "cka",
            "Song 2012 U-stat, float64",
            lambda: linear_cka(tx, ty),
            lambda: song_unbiased_cka(x, y),
            "f",
        ),
        (
            "cka-biased",
            "repsim linear gretton",
            lambda: linear_cka(tx, ty, debiased=False),
            lambda: repsim.cka([x, y], "linear", "gretton")[0, 1],
            "",
        ),
        (
            "cka-biased",
            "ckatorch biased",
            lambda: linear_cka(tx, ty, debiased=False),
            lambda: ckatorch_cka(x, y, unbiased=False),
            "",
        ),
        (
            "kernel-cka s=0.8 biased",
            "ckatorch rbf threshold=0.8",
            lambda: kernel_cka(tx, ty, sigma=0.8, debiased=False),
            lambda: ckatorch_cka(x, y, kernel="rbf", threshold=0.8, unbiased=False),
            "m",
        ),
        (
            "kernel-cka s=0.8",
            "ckatorch rbf threshold=0.8 unbiased",
            lambda: kernel_cka(tx, ty, sigma=0.8),
            lambda: ckatorch_cka(x, y, kernel="rbf", threshold=0.8, unbiased=True),
            "m",
        ),
    ]
    for method, peer_method in (("spearman", "spearman"), ("pearson", "corr"), ("kendall", "tau-a")):
        cases.append(
            (
                f"rsa correlation/{method}",
                f"rsatoolbox {peer_method}",
                lambda method=method: rsa(tx, ty, "correlation", method),
                lambda peer_method=peer_method: rsatoolbox_rsa(x, y, peer_method),
                "",
            )
        )
    cases += [
        (
            "procrustes",
            "scipy orthogonal_procrustes",
            lambda: procrustes_distance(tx, ty),
            lambda: scipy_procrustes(x, y),
            "",
        ),
        (
            "shape alpha=1",
            "netrep LinearMetric",
            lambda: angular_shape_distance(tx, ty, 1.0),
            lambda: netrep_angular(x, y, 1.0),
            "f",
        ),
        (
            "shape alpha=0.5",
            "netrep LinearMetric",
            lambda: angular_shape_distance(tx, ty, 0.5),
            lambda: netrep_angular(x, y, 0.5),
            "fw",
        ),
        (
            f"mutual-knn k={k}",
            "platonic-rep mutual_knn",
            lambda: mutual_knn(tx, ty, k),
            lambda: platonic_mutual_knn(x, y, k),
            "f",
        ),
        (
            f"cknna k={k}",
            "paper formula, float64",
            lambda: cknna(tx, ty, k),
            lambda: paper_cknna(x, y, k),
            "f",
        ),
        (
            f"cknna k={k}",
            "platonic-rep code",
            lambda: cknna(tx, ty, k),
            lambda: platonic_code_cknna(x, y, k),
            "fc",
        ),
    ]
    return cases


def cca_cases(x: np.ndarray, y: np.ndarray) -> list[Case]:
    """Measures that need items well above units: CCA, SVCCA, PWCCA, shape alpha 0."""
    import repsim

    from featurelens.compare.cca import canonical_correlations, cca_similarity, pwcca, svcca
    from featurelens.compare.shape import angular_shape_distance

    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    return [
        (
            "cca (mean rho)",
            "repsim cca pillai",
            lambda: cca_similarity(tx, ty),
            lambda: repsim.cca([x, y], "pillai")[0, 1],
            "",
        ),
        (
            "cca mean rho^2",
            "repsim cca yanai",
            lambda: float((canonical_correlations(tx, ty) ** 2).mean()),
            lambda: repsim.cca([x, y], "yanai")[0, 1],
            "",
        ),
        (
            "cca first rho",
            "scikit-learn CCA(1)",
            lambda: float(canonical_correlations(tx, ty)[0]),
            lambda: sklearn_first_cca(x, y),
            "",
        ),
        ("svcca keep=0.99", "Raghu formula, float64", lambda: svcca(tx, ty), lambda: raghu_svcca(x, y), "f"),
        (
            "svcca keep=0.99",
            "repsim svcca pillai",
            lambda: svcca(tx, ty),
            lambda: repsim.svcca([x, y], "pillai")[0, 1],
            "s",
        ),
        (
            "pwcca (mean of x,y and y,x)",
            "repsim pwcca",
            lambda: (pwcca(tx, ty) + pwcca(ty, tx)) / 2,
            lambda: repsim.pwcca([x, y])[0, 1],
            "p",
        ),
        (
            "shape alpha=0",
            "netrep LinearMetric",
            lambda: angular_shape_distance(tx, ty, 0.0),
            lambda: netrep_angular(x, y, 0.0),
            "f",
        ),
    ]


NOTES = {
    "f": "peer is a formula transcribed into this script",
    "r": "repsim 0.1.5's cka(estimator='song') divides the unbiased HSIC(x, y) by the square root of the "
    "*biased* (gretton) self-HSICs: it equals hsic(song)[0,1] / sqrt(hsic(gretton)[0,0] hsic(gretton)[1,1]) "
    "to rounding, while its own hsic(song) normalised consistently (next row) matches featurelens and the "
    "float64 Song U-statistic: a repsim inconsistency, not a featurelens error",
    "m": "bandwidth: Kornblith/ckatorch take the median of squared distances incl. the zero diagonal; "
    "featurelens the median distance between distinct rows (a different, documented convention)",
    "w": "definitions differ for 0<alpha<1: netrep whitens by alpha + (1-alpha) lam^-1/2; featurelens by "
    "(alpha + (1-alpha) lam/tr)^-1/2 (both agree at alpha 0 and 1)",
    "c": "platonic-rep's code scores the masked kernels with unbiased HSIC, not the paper's sum "
    "(featurelens follows the paper; documented in neighbors.py)",
    "s": "repsim's SVCCA keeps far more directions than Raghu's 99%-variance rule (see the formula row)",
    "p": "repsim averages the two weightings; featurelens pwcca(x, y) weights by x only",
}


def measure_table(sizes: list[tuple[int, int]], cca_sizes: list[tuple[int, int]], repeats: int) -> list[str]:
    """Rows of the agreement-and-time table, with the notes they use."""
    lines = [
        "| measure | n x d | featurelens | peer | peer value | abs diff | fl s | peer s | ratio |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    used: set[str] = set()
    work = [(n, d, gram_cases) for n, d in sizes] + [(n, d, cca_cases) for n, d in cca_sizes]
    for n, d, cases_of in work:
        x, y = planted(n, d, seed=n + d, noise=3.0 if cases_of is gram_cases else 1.0)
        for measure, peer, fl_call, peer_call, note in cases_of(x, y):
            timings = best_of({"fl": fl_call, "peer": peer_call}, repeats)
            (fl_s, fl_value), (peer_s, peer_value) = timings["fl"], timings["peer"]
            fl_value, peer_value = float(fl_value), float(peer_value)
            mark = "".join(f"[{c}]" for c in note)
            used.update(note)
            lines.append(
                f"| {measure} | {n} x {d} | {fl_value:.10f} | {peer}{mark} | {peer_value:.10f} | "
                f"{abs(fl_value - peer_value):.1e} | {fl_s:.4f} | {peer_s:.4f} | {peer_s / fl_s:.2f}x |"
            )
    lines.append("")
    lines += [f"[{c}] {NOTES[c]}" for c in NOTES if c in used]
    return lines


# -- permutation tests ---------------------------------------------------------------------------------------


def permutation_table(n: int, d: int, permutations: int) -> list[str]:
    """featurelens ``compare`` with a null vs a naive peer loop over the same permutation orders."""
    from featurelens.compare.measure import compare, permutation_orders
    from featurelens.compare.registry import measure_from_spec

    x, y = planted(n, d, seed=7, noise=6.0)
    all_orders = permutation_orders(n, permutations, 0).numpy()

    def naive(
        score: Callable[[np.ndarray, np.ndarray], float], orders: np.ndarray
    ) -> tuple[float, float, float]:
        value = score(x, y)
        null = np.array([score(x, y[order]) for order in orders])
        tolerance = 1e-12 * max(abs(value), 1.0)
        return value, float(null.mean()), float((1 + (null >= value - tolerance).sum()) / (1 + len(null)))

    cases = [
        (
            "cka",
            "ckatorch cka_base(unbiased=True) per permutation",
            lambda a, b: ckatorch_cka(a, b, unbiased=True),
        ),
        (
            "rsa:method=spearman",
            "rsatoolbox calc_rdm + compare(spearman) per permutation",
            lambda a, b: rsatoolbox_rsa(a, b, "spearman"),
        ),
        (
            "rsa:method=kendall",
            "rsatoolbox calc_rdm + compare(tau-a) per permutation",
            lambda a, b: rsatoolbox_rsa(a, b, "tau-a"),
        ),
    ]
    lines = [
        f"Permutation test, n={n}, d={d}, permutations in brackets (same orders on both sides); the peer "
        "side is the naive loop a user writes with the peer (recompute the measure on y[perm] each time):",
        "",
        "| measure | peer loop | fl value / null mean / p | peer value / null mean / p | "
        "max abs diff | fl s | peer s | ratio |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for spec, peer, score in cases:
        measure = measure_from_spec(spec)
        # tau-a costs O(m log m), m = n(n-1)/2, per permutation on both sides: fewer of them
        shuffles = min(permutations, 100) if "kendall" in spec else permutations
        orders = all_orders[:shuffles]
        timings = best_of(
            {
                "fl": lambda m=measure, p=shuffles: compare(x, y, m, permutations=p, seed=0),
                "peer": lambda score=score, orders=orders: naive(score, orders),
            },
            1,
            warm_up=False,  # the measure table has already run both sides once
        )
        (fl_s, result), (peer_s, (value, null_mean, p_value)) = timings["fl"], timings["peer"]
        assert result.null_mean is not None and result.p_value is not None
        diff = max(abs(result.value - value), abs(result.null_mean - null_mean))
        lines.append(
            f"| {spec} ({shuffles}) | {peer} | "
            f"{result.value:.6f} / {result.null_mean:.6f} / {result.p_value:.4f} | "
            f"{value:.6f} / {null_mean:.6f} / {p_value:.4f} | {diff:.1e} | {fl_s:.2f} | {peer_s:.2f} | "
            f"{peer_s / fl_s:.1f}x |"
        )
    return lines


# -- the layer map -------------------------------------------------------------------------------------------


def map_flops(n: int, widths: list[int]) -> tuple[float, float]:
    """(FLOPs CkaSums' products do for a self map: the blocks on and right of the diagonal, 2 n w_i w_j each;
    the full map's 2 n (sum w)^2)."""
    upper = sum(wi * wj for i, wi in enumerate(widths) for wj in widths[i:])
    return 2.0 * n * upper, 2.0 * n * sum(widths) ** 2


def streamed_map(chunks: Callable[[], Any]) -> tuple[torch.Tensor, int]:
    """featurelens: debiased linear CKA [H, H] of every hook pair, streamed over ``chunks()``."""
    from featurelens.compare.sums import CkaSums

    sums = None
    for chunk in chunks():
        if sums is None:
            sums = CkaSums.start(chunk)
        sums.add(chunk)
    assert sums is not None
    return sums.cka(debiased=True), sums.n


def map_report(
    label: str,
    chunks: Callable[[], Any],
    load: Callable[[int], np.ndarray],  # hook index -> its rows [n, width] float32
    n: int,
    widths: list[int],
    pairs: list[tuple[int, int]],
    peak: float,
) -> list[str]:
    """Time the streamed map and per-pair Kornblith CKA on ``pairs`` (extrapolated to every i <= j pair)."""
    h = len(widths)
    start = time.perf_counter()
    cka_map, rows = streamed_map(chunks)
    fl_seconds = time.perf_counter() - start
    assert rows == n, (rows, n)
    done, full = map_flops(n, widths)
    per_pair: list[float] = []
    diffs: list[str] = []
    for i, j in pairs:
        start = time.perf_counter()
        x, y = load(i), load(j)  # a per-pair user loads both layers for every pair
        value = kornblith_feature_space_cka(x.astype(np.float64), y.astype(np.float64))
        per_pair.append(time.perf_counter() - start)
        del x, y
        diffs.append(
            f"({i},{j}) fl {float(cka_map[i, j]):.10f} peer {value:.10f} "
            f"diff {abs(float(cka_map[i, j]) - value):.1e}"
        )
    i, j = pairs[0]
    start = time.perf_counter()
    single = kornblith_feature_space_cka(load(i), load(j))
    single_seconds = time.perf_counter() - start
    all_pairs = h * (h + 1) // 2
    peer_seconds = float(np.mean(per_pair)) * all_pairs
    adjacent = np.array([float(cka_map[i, i + 1]) for i in range(h - 1)])
    return [
        f"Layer map: {label}",
        f"  featurelens CkaSums streamed over all {n:,} rows, {h} x {h} debiased CKA: {fl_seconds:.1f} s "
        f"(reading the chunks included); products {done / 1e9:,.0f} GFLOP (the blocks on and right of the "
        f"diagonal; the full map's n (sum w)^2 would be {full / 1e9:,.0f}) = {done / fl_seconds / 1e9:.1f} "
        f"GFLOP/s, {100 * done / fl_seconds / 1e9 / peak:.0f}% of the fp32 matmul peak",
        f"  per pair (Kornblith feature_space_linear_cka, float64, both layers loaded per pair): "
        f"{len(pairs)} sampled pairs, {np.mean(per_pair):.2f} s each (min {min(per_pair):.2f}, max "
        f"{max(per_pair):.2f}); extrapolated to all {all_pairs} pairs i <= j: {peer_seconds:,.0f} s "
        f"(EXTRAPOLATED, not run)",
        f"  the same per-pair call in float32 (the store's dtype, as loaded): {single_seconds:.2f} s for "
        f"({i},{j}), value {single:.10f} (|diff| to featurelens {abs(single - float(cka_map[i, j])):.1e}); "
        f"x {all_pairs} pairs = {single_seconds * all_pairs:,.0f} s (EXTRAPOLATED)",
        f"  ratio (per-pair float64 extrapolated / streamed): {peer_seconds / fl_seconds:.1f}x; float32: "
        f"{single_seconds * all_pairs / fl_seconds:.1f}x",
        "  agreement on the sampled pairs: " + "; ".join(diffs),
        f"  sanity: adjacent-layer CKA mean {adjacent.mean():.4f} (min {adjacent.min():.4f} at "
        f"{int(adjacent.argmin())}-{int(adjacent.argmin()) + 1}, max {adjacent.max():.4f}); first vs last "
        f"{float(cka_map[0, h - 1]):.4f}; diagonal max |1 - cka| "
        f"{float((torch.diagonal(cka_map) - 1).abs().max()):.1e}",
    ]


def synthetic_map(n: int, hooks: int, width: int, peak: float) -> list[str]:
    """The map benchmark on a synthetic drifting stack of ``hooks`` layers (no store): --quick."""
    rng = np.random.default_rng(3)
    layers = [rng.standard_normal((n, width)).astype(np.float32)]
    for _ in range(hooks - 1):
        mix = (
            np.eye(width, dtype=np.float32) + 0.3 * rng.standard_normal((width, width)).astype(np.float32) / 8
        )
        layers.append(np.tanh(layers[-1] @ mix) + 0.2 * rng.standard_normal((n, width)).astype(np.float32))
    step = 4096

    def chunks() -> Any:
        for start in range(0, n, step):
            yield {f"layer{h}": torch.from_numpy(layers[h][start : start + step]) for h in range(hooks)}

    pairs = [(0, 1), (0, hooks - 1), (hooks // 2, hooks // 2 + 1)]
    label = f"synthetic stack of {hooks} hooks x [{n:,}, {width}] float32 (no store, --quick)"
    return map_report(label, chunks, lambda h: layers[h], n, [width] * hooks, pairs, peak)


def store_map(tokens: int, peak: float) -> list[str]:
    """The headline: 30 x 30 debiased CKA over a store of the bundled model's resid_post (captured if
    missing)."""
    from featurelens.capture.rows import store_rows
    from featurelens.capture.store import ActivationStore

    hooks = [f"layers.{i}.resid_post" for i in range(LAYERS)]
    manifest = STORE / "manifest.json"
    if not manifest.exists() or not json.loads(manifest.read_text()).get("complete"):
        command = [str(Path(sys.executable).parent / "featurelens"), "capture", "--tokens", str(tokens)]
        command += [arg for hook in hooks for arg in ("--hook", hook)] + ["--out", str(STORE), "--overwrite"]
        print(f"# capturing the store once (minutes): {' '.join(command[:5])} --hook ... --out {STORE}")
        subprocess.run(command, check=True)
    store = ActivationStore.open(STORE)
    n = min(tokens, store.n_tokens)
    widths = [int(store.activations(h)[:1].shape[1]) for h in hooks]

    def chunks() -> Any:
        for part in store_rows(store, hooks, n, 4096):
            yield part.acts

    def load(i: int) -> np.ndarray:
        return np.asarray(store.activations(hooks[i])[:n], dtype=np.float32)

    pairs = [(0, 1), (10, 11), (14, 15), (28, 29), (0, LAYERS - 1), (5, 20)]
    label = (
        f"{LAYERS} x {LAYERS} layers.*.resid_post of the bundled SmolLM2-135M over {n:,} stored rows "
        f"({STORE}, every row: no outlier filter on either side)"
    )
    lines = map_report(label, chunks, load, n, widths, pairs, peak)
    outliers = {h: len(store.outlier_rows(hook)) for h, hook in enumerate(hooks)}
    lines.append(
        "  rows above 10x their hook's median norm in the store (massive activations; linear CKA over every "
        "row is dominated by them): "
        + ", ".join(f"layer {h}: {count}" for h, count in outliers.items() if count)
    )
    return lines + run_maps_report(tokens, peak, n)


def run_maps_report(tokens: int, peak: float, n: int) -> list[str]:
    """featurelens's user-facing job on the same store: ``run_maps`` with CKA only and no nulls, which leaves
    out rows above 10x a hook's median norm (limits from the first chunk) before the same streamed sums."""
    from featurelens.compare.maps import MapJob, run_maps

    job = MapJob(
        out="/tmp/bench-compare/map",
        acts=str(STORE),
        model_b=None,
        hooks=("layers.*.resid_post",),
        measures=("cka",),
        tokens=tokens,
        permutations=0,
    )
    start = time.perf_counter()
    result = run_maps(job)
    seconds = time.perf_counter() - start
    values = np.full((LAYERS, LAYERS), np.nan)
    for i, j, value in zip(result.cells["row"], result.cells["col"], result.cells["value"], strict=True):
        values[i, j] = value
    adjacent = np.array([values[i, i + 1] for i in range(LAYERS - 1)])
    rows = int(result.meta["rows"])
    done, _ = map_flops(rows, [576] * LAYERS)
    return [
        f"  run_maps(MapJob(acts=..., hooks=('layers.*.resid_post',), measures=('cka',), tokens={tokens:,}, "
        f"permutations=0)): {seconds:.1f} s for {rows:,} typical rows of {n:,} "
        f"({done / seconds / 1e9:.1f} GFLOP/s, {100 * done / seconds / 1e9 / peak:.0f}% of peak); "
        f"adjacent-layer CKA mean {adjacent.mean():.4f} (min {adjacent.min():.4f} at "
        f"{int(adjacent.argmin())}-{int(adjacent.argmin()) + 1}), first vs last {values[0, LAYERS - 1]:.4f}",
    ]


# -- main ----------------------------------------------------------------------------------------------------


def bias_curve(n: int = 50, repeats: int = 40) -> list[str]:
    """Mean debiased and biased linear CKA of independent Gaussian data [n, d] for d/n from 0.1 to 100:
    the null both estimators should give 0 on, with the standard error of each mean."""
    from featurelens.compare.cka import linear_cka

    rng = np.random.default_rng(0)
    lines = [
        f"CKA of independent data (n = {n}, {repeats} draws per width): debiased stays at 0, biased does not",
        "",
        "| d/n | d | debiased mean ± s.e. | biased mean ± s.e. |",
        "|---:|---:|---:|---:|",
    ]
    for ratio in (0.1, 0.3, 1, 3, 10, 30, 100):
        d = round(ratio * n)
        draws = [(rng.normal(size=(n, d)), rng.normal(size=(n, d))) for _ in range(repeats)]
        cells = []
        for debiased in (True, False):
            values = np.array([linear_cka(x, y, debiased=debiased) for x, y in draws])
            cells.append(f"{values.mean():+.4f} ± {values.std(ddof=1) / np.sqrt(repeats):.4f}")
        lines.append(f"| {ratio:g} | {d} | {cells[0]} | {cells[1]} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, 50 permutations, no store (<1 min)"
    )
    parser.add_argument("--repeats", type=int, help="timed runs of each call, best kept (3; --quick 1)")
    parser.add_argument("--permutations", type=int, help="permutations of the null timing (1000; --quick 50)")
    parser.add_argument("--tokens", type=int, default=100_000, help="store rows for the layer map (100000)")
    parser.add_argument("--no-map", action="store_true", help="skip the layer map")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    permutations = args.permutations or (50 if args.quick else 1000)
    sizes = [(150, 48)] if args.quick else [(500, 256), (500, 576)]
    cca_sizes = [(600, 24)] if args.quick else [(2000, 64), (4000, 128)]
    warnings.simplefilter("ignore")

    started = time.perf_counter()
    peak = matmul_peak_gflops()
    print(
        f"# {cpu_name()}, {os.cpu_count()} cores; {vector_flags()}, {torch.get_num_threads()} threads; "
        f"fp32 matmul peak {peak:.0f} GFLOP/s; load average {load_average():.1f}"
    )
    print(f"# {versions(PEERS)}")
    print(
        "# not installed: cka-pytorch (pulls torchvision 0.28 + lightning, which break CPU torch 2.13); "
        "torch-cka 0.21 installs but compares two nn.Modules over a DataLoader, not two arrays; netrep and "
        "platonic-rep are clone-only (formulas transcribed here)"
    )
    print(f"# planted data: x = z A + noise, y = 3 tanh(z B) + noise, z [n, {LATENT}]; float64 on both sides")
    print()
    for line in bias_curve(repeats=10 if args.quick else 40):
        print(line)
    print()
    for line in measure_table(sizes, cca_sizes, repeats):
        print(line)
    print()
    n_perm, d_perm = (150, 48) if args.quick else (500, 256)
    for line in permutation_table(n_perm, d_perm, permutations):
        print(line)
    print()
    if not args.no_map:
        peak = max(peak, matmul_peak_gflops())  # measured again: load at the start can depress it
        print(f"# fp32 matmul peak used for the map: {peak:.0f} GFLOP/s (best of two measurements)")
        lines = synthetic_map(16_384, 8, 96, peak) if args.quick else store_map(args.tokens, peak)
        for line in lines:
            print(line)
        print()
    print(
        f"# ratio = peer s / featurelens s (best of {repeats} for the measure table, 1 run otherwise); "
        f"load average now {load_average():.1f}; whole run {time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
