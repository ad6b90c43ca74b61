"""Semi-NMF dictionary: activations as non-negative mixtures of signed directions (for MLP neurons).

Semi-nonnegative matrix factorisation (Ding, Li & Jordan 2010) writes activations x [n, d] as
codes [n, L] >= 0 times directions [L, d] of any sign. Shafran et al. (2025) apply it to MLP neuron
activations (``layers.N.mlp_neurons``): a direction is a signed pattern over neurons, a code says how much
of it a token uses, and adding or removing ``code_j * direction_j`` at the neurons is the causal test.

Here the directions are the decoder rows, kept at unit norm (the scale lives in the codes), and
:meth:`SemiNMFDictionary.encode` solves the codes' non-negative least squares for fixed directions:
``iterations`` accelerated projected-gradient steps in Gram form (c = x W^T [n, L] and G = W W^T [L, L],
cached while the decoder is unchanged, so a step is one [n, L] @ [L, L] product), then the ``k`` largest
codes of each row are kept and refitted on that support by exact coordinate descent (``k=None`` keeps
them all: the paper's codes are dense; its own sparsity is a winner-take-all mask on the directions).
An optional ``l1`` weight adds ``l1 * sum(codes)`` to the objective. ``b_dec`` stays 0 after fitting
because the paper factorises the raw activations (a constant offset is one more always-on direction); it
is still subtracted and added back, so a loaded dictionary with a bias stays consistent. ``W_enc`` and
``b_enc`` are unused; they stay so the weight file has the layout every dictionary shares.

Fitting is not done by gradient steps: :func:`semi_nmf_full_batch` is the paper's algorithm on one
in-memory matrix (the reference), and :mod:`featurelens.training.semi_nmf` the streaming fit over a store.
"""

from __future__ import annotations

from typing import Any

import torch

from featurelens.dictionaries.base import Dictionary, DictionaryError, TrainingOutput
from featurelens.dictionaries.selection import top_k
from featurelens.dictionaries.sparse_decode import dense_codes
from featurelens.dictionaries.topk import check_k

ITERATIONS = 50  # projected-gradient steps of encode
REFIT_SWEEPS = 10  # coordinate-descent sweeps over the kept k codes
KMEANS_ITERATIONS = 10


def nnls_gram(
    correlations: torch.Tensor, gram: torch.Tensor, lipschitz: float, iterations: int, l1: float = 0.0
) -> torch.Tensor:
    """Codes h [n, L] >= 0 minimising 0.5 h G h^T - (c - l1) h^T row by row (= 0.5 ||x - h W||^2 + l1 |h|_1
    up to a constant, with c = x W^T [n, L], G = W W^T [L, L], ``lipschitz`` >= the largest eigenvalue of G).

    FISTA (projected gradient with momentum); a row whose momentum points uphill restarts it
    (O'Donoghue & Candes 2015), which keeps the descent monotone enough on ill-conditioned Grams.
    """
    target = correlations - l1 if l1 else correlations
    step = 1.0 / max(lipschitz, 1e-12)
    h = target.new_zeros(target.shape)
    y, t = h, target.new_ones(target.shape[0], 1)
    for _ in range(iterations):
        gradient = torch.addmm(target, y, gram, alpha=1.0, beta=-1.0)  # y G - target
        h_next = torch.add(y, gradient, alpha=-step).clamp_min_(0.0)
        change = h_next.sub(h)
        uphill = (gradient * change).sum(dim=1, keepdim=True) > 0
        t = t.masked_fill(uphill, 1.0)
        t_next = (1 + (1 + 4 * t * t).sqrt()) / 2
        y = torch.addcmul(h_next, (t - 1) / t_next, change)
        h, t = h_next, t_next
    return h


def refit_support(
    correlations: torch.Tensor,
    gram: torch.Tensor,
    indices: torch.Tensor,
    values: torch.Tensor,
    sweeps: int,
    l1: float = 0.0,
) -> torch.Tensor:
    """Non-negative least squares restricted to each row's support: codes [n, k] for atoms ``indices``
    [n, k], by ``sweeps`` of exact coordinate descent started from ``values`` [n, k]."""
    c = correlations.gather(1, indices) - l1
    sub = gram[indices[:, :, None], indices[:, None, :]]  # [n, k, k]
    diagonal = sub.diagonal(dim1=1, dim2=2).clamp_min(1e-12)
    h = values.clone()
    for _ in range(sweeps):
        hg = torch.bmm(h[:, None, :], sub).squeeze(1)  # h G restricted [n, k], kept current below
        for j in range(h.shape[1]):
            updated = (h[:, j] + (c[:, j] - hg[:, j]) / diagonal[:, j]).clamp_min(0.0)
            hg.addcmul_((updated - h[:, j])[:, None], sub[:, j, :])
            h[:, j] = updated
    return h


def semi_nmf_objective(x: torch.Tensor, codes: torch.Tensor, directions: torch.Tensor) -> float:
    """||x - codes @ directions||_F^2 in float64 for x [n, d], codes [n, L], directions [L, d]."""
    residual = x.double() - codes.double() @ directions.double()
    return float(residual.square().sum())


def kmeans(
    x: torch.Tensor, n_clusters: int, iterations: int = KMEANS_ITERATIONS, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on rows of x [n, d] from ``n_clusters`` distinct random rows: (centroids [L, d],
    assignment [n]). An emptied cluster keeps its centroid."""
    if x.shape[0] < n_clusters:
        raise DictionaryError(
            f"semi-NMF is initialised by k-means on a sample of at least {n_clusters} rows (one per "
            f"feature); got {x.shape[0]} rows: use fewer features or more activations"
        )
    generator = torch.Generator().manual_seed(seed)
    centroids = x[torch.randperm(x.shape[0], generator=generator)[:n_clusters].to(x.device)].clone()
    assignment = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    for _ in range(iterations):
        distances = centroids.square().sum(1) - 2 * x @ centroids.T  # ||x||^2 is the same for every column
        assignment = distances.argmin(dim=1)
        counts = torch.bincount(assignment, minlength=n_clusters).to(x.dtype)
        sums = x.new_zeros(centroids.shape).index_add_(0, assignment, x)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
    return centroids, assignment


def unit_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows [L, d] rescaled to unit norm, their norms [L])."""
    norms = rows.norm(dim=1)
    return rows / norms.clamp_min(1e-12)[:, None], norms


def semi_nmf_full_batch(
    x: torch.Tensor, n_features: int, iterations: int = 500, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ding, Li & Jordan's semi-NMF of one in-memory matrix x [n, d] ~ codes [n, L] @ directions [L, d].

    Codes start from the k-means clusters (indicator + 0.2), then each of ``iterations`` alternates the
    exact least-squares directions F = (H^T H)^-1 H^T X with the multiplicative code update
    H <- H * sqrt(([X F^T]+ + H [F F^T]-) / ([X F^T]- + H [F F^T]+)), in float64. Returns
    (directions [L, d] with unit-norm rows, codes [n, L] >= 0) in x's dtype, the scale moved into the codes.
    """
    data = x.double()
    _, assignment = kmeans(data, n_features, seed=seed)
    codes = torch.nn.functional.one_hot(assignment, n_features).double() + 0.2
    eye = torch.eye(n_features, dtype=torch.float64, device=x.device)

    def directions_for(h: torch.Tensor) -> torch.Tensor:
        gram = h.T @ h
        return torch.linalg.solve(gram + 1e-10 * gram.trace() / n_features * eye, h.T @ data)

    for _ in range(iterations):
        f = directions_for(codes)
        xf, ff = data @ f.T, f @ f.T
        numerator = xf.clamp_min(0) + codes @ (-ff).clamp_min(0)
        denominator = (-xf).clamp_min(0) + codes @ ff.clamp_min(0)
        codes = codes * (numerator / denominator.clamp_min(1e-300)).sqrt()
    directions, norms = unit_rows(directions_for(codes))
    return directions.to(x.dtype), (codes * norms).to(x.dtype)


class SemiNMFDictionary(Dictionary):
    """Codes = the k largest non-negative least-squares codes of x over signed unit directions, refitted
    on their support; ``k=None`` keeps every code (dense semi-NMF, as in the paper)."""

    arch = "seminmf"

    def __init__(
        self,
        d_in: int,
        d_latent: int,
        *,
        k: int | None = 32,
        iterations: int = ITERATIONS,
        l1: float = 0.0,
        **kwargs: Any,
    ) -> None:
        if k is not None:
            check_k(k, d_latent)
        super().__init__(d_in, d_latent, **kwargs)
        if self.is_transcoder or self.W_skip is not None:
            raise DictionaryError(
                "arch 'seminmf' factorises the activations of one hook, without a skip connection; "
                f"got hook_in={self.hook_in!r} hook_out={self.hook_out!r} skip={self.W_skip is not None}"
            )
        if iterations < 1 or l1 < 0:
            raise DictionaryError(
                f"seminmf needs iterations >= 1 and l1 >= 0, got iterations={iterations} l1={l1}"
            )
        self.k, self.iterations, self.l1 = k, iterations, l1
        self._gram: tuple[tuple[Any, ...], torch.Tensor, float] | None = None

    def config(self) -> dict[str, Any]:
        return {**super().config(), "k": self.k, "iterations": self.iterations, "l1": self.l1}

    @torch.no_grad()
    def gram(self) -> tuple[torch.Tensor, float]:
        """(G = W_dec W_dec^T [L, L], its largest eigenvalue), cached until the decoder changes."""
        W = self.W_dec
        key = (W._version, W.data_ptr(), W.device, W.dtype, tuple(W.shape))
        if self._gram is None or self._gram[0] != key:
            gram = W.detach() @ W.detach().T
            top = float(torch.linalg.eigvalsh(gram.double())[-1])
            self._gram = (key, gram, top)
        return self._gram[1], self._gram[2]

    def pre_activation(self, x_scaled: torch.Tensor, latents: torch.Tensor | None = None) -> torch.Tensor:
        """Correlations [n, d_latent] (only ``latents`` if given) of the centred input with the directions."""
        atoms = self.W_dec if latents is None else self.W_dec[latents]
        return self.centred(x_scaled) @ atoms.T

    @torch.no_grad()
    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        gram, lipschitz = self.gram()
        codes = nnls_gram(pre, gram, lipschitz, self.iterations, self.l1)
        if self.k is None:
            return codes
        values, indices = top_k(codes, self.k)
        refitted = refit_support(pre, gram, indices, values, REFIT_SWEEPS, self.l1)
        return dense_codes(indices, refitted, self.d_latent)

    def training_forward(self, x_scaled: torch.Tensor, y_scaled: torch.Tensor) -> TrainingOutput:
        raise DictionaryError(
            "arch 'seminmf' is fitted by alternating least-squares passes over a store "
            "(featurelens train --acts ..., or featurelens.training.semi_nmf.fit_semi_nmf), "
            "not by gradient steps"
        )
