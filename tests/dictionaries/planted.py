"""Synthetic activations built from a planted dictionary, and how well a decoder recovers it."""

from __future__ import annotations

import torch


def planted_directions(n_features: int = 512, d: int = 64, seed: int = 1234) -> torch.Tensor:
    """Random unit directions [n_features, d]."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(n_features, d, generator=g)
    return directions / directions.norm(dim=1, keepdim=True)


def planted_batches(
    directions: torch.Tensor, n_batches: int, batch_size: int, active: int = 4, seed: int = 4321
) -> list[torch.Tensor]:
    """Batches [batch_size, d]: each row a non-negative mix of ``active`` random planted directions."""
    g = torch.Generator().manual_seed(seed)
    n_features = directions.shape[0]
    batches = []
    for _ in range(n_batches):
        indices = torch.rand(batch_size, n_features, generator=g).topk(active, dim=1).indices
        weights = torch.rand(batch_size, active, generator=g) + 0.5
        codes = torch.zeros(batch_size, n_features).scatter(1, indices, weights)
        batches.append(codes @ directions)
    return batches


def mean_max_cosine(planted: torch.Tensor, learned: torch.Tensor) -> float:
    """For each planted direction [n, d], its best cosine with a learned decoder row [m, d], averaged."""
    planted = planted / planted.norm(dim=1, keepdim=True)
    learned = learned / learned.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return float((planted @ learned.T).max(dim=1).values.mean())
