"""How well a dictionary reconstructs activations, accumulated in float64 over any number of batches."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from featurelens.dictionaries.base import Dictionary

DENSE_DENSITY = 0.1  # a latent firing on more than this fraction of tokens counts as dense


@dataclass(frozen=True)
class ReconstructionMetrics:
    """Reconstruction quality on ``n_tokens`` rows.

    ``fvu``: sum ||y - y_hat||^2 / sum ||y - mean(y)||^2 (0 = perfect, 1 = as good as the mean).
    ``l0``: mean active latents per row. ``dead_fraction`` / ``dense_fraction``: latents that never fire /
    fire on more than 10% of rows. ``cosine_similarity``: mean cos(y, y_hat) per row. ``l2_ratio``: mean
    ||y_hat|| / ||y|| per row, below 1 when the sparsity penalty shrinks the reconstruction.
    """

    n_tokens: int
    fvu: float
    l0: float
    dead_fraction: float
    dense_fraction: float
    cosine_similarity: float
    l2_ratio: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ReconstructionAccumulator:
    """Add batches with :meth:`update`; :meth:`result` gives the metrics over all of them."""

    def __init__(self, d_latent: int) -> None:
        self.n = 0
        self.sse = 0.0
        self.sum_y: torch.Tensor | None = None
        self.sum_sq_y = 0.0
        self.active = 0.0
        self.cosine = 0.0
        self.ratio = 0.0
        self.fire_counts = torch.zeros(d_latent, dtype=torch.float64)

    @torch.no_grad()
    def update(self, y: torch.Tensor, y_hat: torch.Tensor, codes: torch.Tensor) -> None:
        """Targets y [n, d], predictions y_hat [n, d], codes [n, d_latent]."""
        y, y_hat = y.double(), y_hat.double()
        fired = codes != 0
        self.n += y.shape[0]
        self.sse += float((y - y_hat).square().sum())
        self.sum_y = y.sum(0) if self.sum_y is None else self.sum_y + y.sum(0)
        self.sum_sq_y += float(y.square().sum())
        self.active += float(fired.sum())
        self.fire_counts += fired.sum(0).double().cpu()
        norms, hat_norms = y.norm(dim=1), y_hat.norm(dim=1)
        self.cosine += float(((y * y_hat).sum(1) / (norms * hat_norms).clamp_min(1e-12)).sum())
        self.ratio += float((hat_norms / norms.clamp_min(1e-12)).sum())

    def result(self) -> ReconstructionMetrics:
        n = max(self.n, 1)
        mean_sq = float(self.sum_y.square().sum()) / n if self.sum_y is not None else 0.0
        total = self.sum_sq_y - mean_sq
        density = self.fire_counts / n
        return ReconstructionMetrics(
            n_tokens=self.n,
            fvu=self.sse / total if total > 0 else float("nan"),
            l0=self.active / n,
            dead_fraction=float((self.fire_counts == 0).double().mean()),
            dense_fraction=float((density > DENSE_DENSITY).double().mean()),
            cosine_similarity=self.cosine / n,
            l2_ratio=self.ratio / n,
        )


@torch.no_grad()
def reconstruction_metrics(
    dictionary: Dictionary, batches: Iterable[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]
) -> ReconstructionMetrics:
    """Metrics of ``dictionary`` over batches of x [n, d_in] (SAE) or (x, y [n, d_out]) (transcoder)."""
    accumulator = ReconstructionAccumulator(dictionary.d_latent)
    device = dictionary.W_dec.device
    for batch in batches:
        x, y = batch if isinstance(batch, tuple) else (batch, batch)
        x, y = x.to(device).float(), y.to(device).float()
        codes = dictionary.encode(x)
        accumulator.update(y, dictionary.predict(x, codes), codes)
    return accumulator.result()
