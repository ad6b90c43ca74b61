"""Training losses beyond reconstruction: the AuxK dead-latent loss and robust decoder-bias init."""

from __future__ import annotations

import torch

from featurelens.dictionaries.selection import top_k
from featurelens.dictionaries.sparse_decode import topk_decode


def auxk_loss(
    dead_pre: torch.Tensor,
    dead: torch.Tensor,
    residual: torch.Tensor,
    W_dec: torch.Tensor,
    k_aux: int,
    variance: torch.Tensor | None = None,
) -> torch.Tensor:
    """AuxK (Gao et al. 2024): dead latents must reconstruct the main residual; a scalar.

    dead_pre [n, n_dead] pre-activations of the dead latents, whose indices are dead [n_dead];
    residual [n, d_out] = target - reconstruction (detached); W_dec [d_latent, d_out]. Normalised by
    the residual's variance so its scale is O(1): summed squared deviation from its mean, or ``variance``
    when given (a data-parallel rank passes the global batch's, so the ranks' losses add up).
    """
    values, picked = top_k(dead_pre, min(k_aux, dead.numel()))
    residual_hat = topk_decode(dead[picked], values.relu(), W_dec)
    if variance is None:
        variance = (residual - residual.mean(dim=0)).square().sum()
    total = variance.clamp_min(1e-12)
    return (residual_hat - residual).square().sum() / total


@torch.no_grad()
def geometric_median(points: torch.Tensor, iterations: int = 50, eps: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's estimate of the point [d] minimising the summed distance to points [n, d]."""
    median = points.mean(dim=0)
    for _ in range(iterations):
        weights = 1.0 / (points - median).norm(dim=1).clamp_min(eps)
        updated = (weights[:, None] * points).sum(0) / weights.sum()
        if (updated - median).norm() <= eps * median.norm().clamp_min(1.0):
            return updated
        median = updated
    return median
