"""Synthetic activations built from a planted dictionary, and how well a decoder recovers it."""

from __future__ import annotations

from collections.abc import Iterator

import torch


def single_threaded() -> Iterator[None]:
    """Run with one intra-op thread, then restore: register with ``pytest.fixture(autouse=True, ...)``.

    Planted problems are too small to gain from threads; on a busy 2-core machine two threads spin against
    each other (tests/training: ~16 s with one thread, ~220 s with two while other work runs).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def planted_directions(n_features: int = 512, d: int = 64, seed: int = 1234) -> torch.Tensor:
    """Random unit directions [n_features, d]."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(n_features, d, generator=g)
    return directions / directions.norm(dim=1, keepdim=True)


def planted_codes(
    n_features: int,
    n_batches: int,
    batch_size: int,
    active: int = 4,
    seed: int = 4321,
    frequencies: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Sparse codes [batch_size, n_features]: ``active`` features per row, weights uniform in [0.5, 1.5].

    Features are drawn uniformly, or in proportion to ``frequencies`` [n_features] when given.
    """
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        if frequencies is None:
            indices = torch.rand(batch_size, n_features, generator=g).topk(active, dim=1).indices
        else:
            rows = frequencies.expand(batch_size, n_features)
            indices = torch.multinomial(rows, active, replacement=False, generator=g)
        weights = torch.rand(batch_size, active, generator=g) + 0.5
        batches.append(torch.zeros(batch_size, n_features).scatter(1, indices, weights))
    return batches


def zipf_frequencies(n_features: int, exponent: float = 1.0) -> torch.Tensor:
    """Feature frequencies [n_features] proportional to 1 / rank^exponent, most frequent first."""
    return torch.arange(1, n_features + 1, dtype=torch.float32) ** -exponent


def planted_batches(
    directions: torch.Tensor,
    n_batches: int,
    batch_size: int,
    active: int = 4,
    seed: int = 4321,
    frequencies: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Batches [batch_size, d]: each row a non-negative mix of ``active`` random planted directions."""
    codes = planted_codes(directions.shape[0], n_batches, batch_size, active, seed, frequencies)
    return [c @ directions for c in codes]


def mean_max_cosine(planted: torch.Tensor, learned: torch.Tensor) -> float:
    """For each planted direction [n, d], its best cosine with a learned decoder row [m, d], averaged."""
    planted = planted / planted.norm(dim=1, keepdim=True)
    learned = learned / learned.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return float((planted @ learned.T).max(dim=1).values.mean())
